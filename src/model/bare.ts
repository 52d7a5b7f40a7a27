/**
 * A device on its own, without a device model: what the CLI snapshots and restores. It carries
 * its identity, config space and VFIO state; nothing of a guest's view of it (that is the VMM's
 * `VfioPciDevice`). A snapshot taken by a device model (with a PCI_MODEL section) is refused
 * here, because its state is only whole with the model's part: restore it through the VMM.
 */
import { VfioError } from '../base/errors';
import type { VfioDevice } from '../kernel/device';
import type { Migration } from '../kernel/migration';
import type { TrackedRegion } from '../kernel/dirty/ranges';
import { checkRecordAgainst, recordOf, type DeviceRecord, type MigratableDevice, type ModelPlan } from './migratable';

export class BareDevice implements MigratableDevice {
  /**
   * @param device the open device (the caller keeps owning it)
   * @param id     the pairing key in snapshots (default: the device's name)
   */
  constructor(
    readonly device: VfioDevice,
    readonly id: string = device.name,
    readonly bufferSize?: number,
  ) {}

  get migration(): Migration | null {
    return this.device.migration;
  }

  record(): DeviceRecord {
    return recordOf(this.device, this.id, false);
  }

  /** A device on its own has no guest memory mapped: nothing for dirty tracking to cover. */
  dmaRegions(): TrackedRegion[] {
    return [];
  }

  checkRecord(saved: DeviceRecord): void {
    checkRecordAgainst(this.device, this.id, false, saved);
  }

  saveModel(): undefined {
    return undefined;
  }

  checkModel(saved: Buffer | undefined): ModelPlan {
    if (saved) {
      throw new VfioError(
        `${this.id}: the saved state was taken by a VMM's device model (it has a PCI_MODEL section: config shadow, BAR addresses, interrupts), ` +
          'and loading it into a device without that model would leave the guest-visible half behind; restore it through the VMM (VfioPciDevice)',
        { code: 'EVFIO_NEEDS_MODEL', device: this.id, step: 'load:check' },
      );
    }
    return { id: this.id };
  }

  applyModel(): void {}

  undoLoad(): void {}

  commitLoad(): void {}

  afterReset(): void {}
}

/**
 * What the migration engine (src/engine) needs of one device, whatever kind it is: its identity
 * record, the checks a destination makes before anything is touched, and the device-model steps
 * around its VFIO state. Two kinds implement it:
 *  - `VfioPciDevice` (./vfio-pci.ts): a device passed through to a guest by a VMM, whose model
 *    state (config shadow, MSI-X table, BAR addresses, interrupt mode) travels with it;
 *  - `BareDevice` (./bare.ts): a device on its own (the CLI's snapshot/restore): identity,
 *    config space and VFIO state only.
 * The engine owns the order (P2P, pause, save, load, resume, recovery); a device owns its checks
 * and its model.
 */
import { VfioError } from '../base/errors';
import type { VfioDevice } from '../kernel/device';
import type { Migration } from '../kernel/migration';
import type { TrackedRegion } from '../kernel/dirty/ranges';
import type { GuestIommu } from './host/types';
import { VFIO_PCI_ROM_REGION_INDEX } from '../kernel/uapi/vfio';
import { checkConfig, destinationConfig } from './pci/compare';
import type { FromDeviceOptions } from './pci/config-space';
import { describeIdentity, identityDiff, identityFromConfig, type DeviceIdentity } from './pci/identity';

/**
 * What a device-state stream carries about a device before its state: enough for a destination
 * to pair it (by `id`) and to decide, before touching anything, whether it can load it. The
 * snapshot file's DEVICE and CONFIG sections; the live stream's handshake.
 */
export interface DeviceRecord {
  /** The pairing key: the attach id in a VM (`nic0`), or the device's name for a bare device. */
  id: string;
  /** From the config space header. */
  identity: DeviceIdentity;
  /** VFIO_MIGRATION_* flags of the source device. */
  migrationFlags: number;
  /** The config space as the source device exposed it (VFIO config region; 256 or 4096 bytes). */
  config: Buffer;
  /**
   * The sizes in bytes of the source's BAR regions 0..5 and ROM (VFIO_DEVICE_GET_REGION_INFO; 0:
   * absent). Config bytes cannot show them (a BAR holds the guest's address; an absent BAR and a
   * 32-bit memory BAR both have zero type bits), so the destination compares them. Absent in a
   * snapshot file's record (the device model's section carries them there).
   */
  regions?: { barSizes: readonly number[]; romSize: number };
  /**
   * Whether the device's model state (saveModel(): a VfioPciDevice's config shadow, MSI-X table,
   * BARs and interrupt mode) follows its VFIO state. The live handshake carries it, so that a
   * destination of the other kind (a bare device for a model, a VfioPciDevice for a bare device)
   * refuses before the source pauses. Absent in a snapshot file's record (the file holds the
   * model itself, checked before the load) and from an older source: then not compared.
   */
  model?: boolean;
}

/** A device model's load plan, made by checkModel() before anything is touched. Opaque to the engine. */
export interface ModelPlan {
  readonly id: string;
}

export interface MigratableDevice {
  /** Unique within a VM: what streams pair saved devices by, and what errors and events name. */
  readonly id: string;
  readonly device: VfioDevice;
  /** The device's one migration object (`device.migration`); null when not migratable. */
  readonly migration: Migration | null;
  /** The guest's vIOMMU, when the device is in a VM that has one (Host.viommu). */
  readonly viommu?: GuestIommu;
  /** Transfer buffer size for the device's state, in bytes (default: the stream's). */
  readonly bufferSize?: number;

  /** This device's record, read now. */
  record(): DeviceRecord;
  /**
   * The memory the device may write by DMA, as IOVA ranges in bytes (guest RAM mapped for it):
   * what dirty tracking covers during a live migration. Empty when nothing is mapped.
   */
  dmaRegions(): TrackedRegion[];
  /**
   * Can state saved from `saved` be loaded into this device? Identity equal, the saved config
   * space equal to this device's under THIS device's masks (QEMU get_pci_config_device()), and
   * (when the record says) a model state coming exactly when this device has a model.
   * Touches nothing. Throws EVFIO_DEVICE_MISMATCH / EVFIO_CONFIG_MISMATCH (kind 'mismatch').
   */
  checkRecord(saved: DeviceRecord): void;
  /** The device model's state to save after the VFIO state ("config last"), or undefined (bare device). */
  saveModel(): Buffer | undefined;
  /**
   * Check a saved model state (undefined when the stream has none) against this device, before
   * it is applied: throws (kind 'mismatch', 'format' or 'unsupported') and touches nothing.
   */
  checkModel(saved: Buffer | undefined): ModelPlan;
  /**
   * After the VFIO state was loaded (the device is in RESUMING): the model from the plan — config
   * shadow, BARs back on the bus at the saved addresses without asking the allocator, PCI_COMMAND
   * pushed, VFIO_DEVICE_SET_IRQS re-armed. The device stays in RESUMING.
   */
  applyModel(plan: ModelPlan): void;
  /**
   * Before the reset that ends a failed or abandoned load: BARs off the bus, interrupts
   * disarmed, the model as it was before applyModel(). Never throws.
   */
  undoLoad(): void;
  /** The load was resumed: what undoLoad() would have restored is forgotten. */
  commitLoad(): void;
  /**
   * After a VFIO_DEVICE_RESET that recovery needed on a device that keeps running its guest:
   * replay what the reset wiped (PCI_COMMAND, the interrupt set-up). Never throws.
   */
  afterReset(): void;
}

/** The device's config space padded to a standard size (256 or 4096): mtty reports 255 bytes. */
export function rawConfig(dev: VfioDevice): Buffer {
  const cfg = dev.configSpace();
  const raw = Buffer.alloc(cfg.length > 256 ? 4096 : 256);
  cfg.copy(raw);
  return raw;
}

/** BAR0..5 and ROM sizes of the device (VFIO region sizes; 0 = absent). */
export function regionSizes(dev: VfioDevice): Required<Pick<FromDeviceOptions, 'barSizes' | 'romSize'>> {
  return { barSizes: [0, 1, 2, 3, 4, 5].map((i) => dev.regionSize(i)), romSize: dev.regionSize(VFIO_PCI_ROM_REGION_INDEX) };
}

/** The record of `dev` under `id`; `model`: a device model's state follows (DeviceRecord.model). */
export function recordOf(dev: VfioDevice, id: string, model: boolean): DeviceRecord {
  const config = rawConfig(dev);
  return { id, identity: identityFromConfig(config), migrationFlags: dev.migration?.flags ?? 0, config, regions: regionSizes(dev), model };
}

/**
 * The destination check both kinds of device make (MigratableDevice.checkRecord): identity, the
 * BAR and ROM sizes when the record has them (EVFIO_DEVICE_MISMATCH: mtty-1 and mtty-2 share an
 * identity and differ in BAR1 only), the saved config space under the destination's own masks,
 * then, when the record says, whether a model state follows against `model` (this device has
 * one: EVFIO_DEVICE_MISMATCH, the load could not be whole).
 */
export function checkRecordAgainst(dev: VfioDevice, id: string, model: boolean, saved: DeviceRecord, step = 'load:check'): void {
  const raw = rawConfig(dev);
  const mine = identityFromConfig(raw);
  const diff = identityDiff(saved.identity, mine);
  if (diff.length) {
    throw new VfioError(
      `${saved.id} (${describeIdentity(saved.identity)}) cannot be loaded into ${id} (${describeIdentity(mine)}): ${diff.join('; ')}`,
      { code: 'EVFIO_DEVICE_MISMATCH', device: id, step },
    );
  }
  const sizes = regionSizes(dev);
  if (saved.regions) {
    const name = (i: number): string => (i < 6 ? `BAR${i}` : 'ROM');
    const savedAll = [...saved.regions.barSizes, saved.regions.romSize];
    const mineAll = [...sizes.barSizes, sizes.romSize];
    const diff = mineAll.flatMap((m, i) => (savedAll[i] !== m ? [`${name(i)} ${savedAll[i] ? `${savedAll[i]} bytes` : 'absent'} on the source, ${m ? `${m} bytes` : 'absent'} here`] : []));
    if (diff.length) {
      throw new VfioError(`${saved.id} (${describeIdentity(saved.identity)}) cannot be loaded into ${id}: its regions differ: ${diff.join('; ')}`, {
        code: 'EVFIO_DEVICE_MISMATCH', device: id, step,
      });
    }
  }
  checkConfig(saved.config, destinationConfig(raw, sizes), { device: id, step });
  if (saved.model !== undefined && saved.model !== model) {
    const why = saved.model
      ? `the source sends ${saved.id}'s device-model state (a VMM's VfioPciDevice: config shadow, MSI-X table, BAR addresses, interrupts) and ${id} here has no device model (a bare device) to load it into, which would leave the guest-visible half behind: receive it through the VMM (VfioPciDevice)`
      : `the source sends no device-model state for ${saved.id} (a bare device, as \`vfio-pci migrate\` sends) and ${id} here is a VMM's VfioPciDevice, which needs it to restore the guest's view of the device (config shadow, BAR addresses, interrupts)`;
    throw new VfioError(`${saved.id} cannot be loaded into ${id}: ${why}`, { code: 'EVFIO_DEVICE_MISMATCH', device: id, step });
  }
}

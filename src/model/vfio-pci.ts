/**
 * The vfio-pci device model: the piece a TypeScript VMM plugs in to pass a VFIO device through
 * to a guest, and what the migration engine (src/engine) moves with the device's VFIO state.
 *
 * The VMM's PCI bus calls `configRead`/`configWrite` for the function's config space; BAR
 * accesses reach the device through the host bus (./bars.ts); interrupts are eventfds from the
 * host's router given to the kernel with SET_IRQS (./interrupts.ts). The VMM drives pause,
 * snapshot, restore, resume and live migration through a `MigrationCoordinator` (src/vm) over
 * its devices; this class implements the per-device part (MigratableDevice, ./migratable.ts):
 *
 *   attach() ─ [engine: pause, save (VFIO state, then saveModel())] ─ resume    (source)
 *   attach({ assignBars: false }) ─ [engine: checkRecord + checkModel before anything is
 *     touched, RUNNING → RESUMING, load the VFIO state, applyModel()] ─ resume      (destination)
 *
 * What a load guarantees, each step a fix for a way VMMs have broken restores:
 *  1. before the device is touched: identity, and the saved config space compared with the
 *     destination device under the DESTINATION's own masks (`(saved ^ current) & cmask & ~wmask
 *     & ~w1cmask`; a Vendor Specific capability's body is exempt, its 3-byte header is not),
 *     BAR and ROM sizes, and the MSI-X vector count;
 *  2. ONE RUNNING → RESUMING request, the VFIO state written, the device stays in RESUMING;
 *  3. applyModel(): the shadow from the saved state, BARs on the host bus at the saved
 *     addresses without asking the allocator again ("BAR already in use"), PCI_COMMAND pushed
 *     from the shadow to the device (a fresh device has bus mastering off: its command queue
 *     would wedge), VFIO_DEVICE_SET_IRQS re-armed for the enabled MSI/MSI-X vectors or INTx (the
 *     kernel keeps no interrupt set-up across migration: interrupts would stay silent).
 * `resume()` then takes the device to RUNNING; a failure anywhere until then undoes the model
 * and resets the device: it never runs half-loaded.
 */
import { EventEmitter } from 'eventemitter3';
import type { VfioDevice } from '../kernel/device';
import { VfioError } from '../base/errors';
import type { GuestIommu, Host } from './host/types';
import type { TrackedRegion } from '../kernel/dirty/ranges';
import type { Migration } from '../kernel/migration';
import { DEFAULT_BUFFER_SIZE } from '../kernel/stream';
import { ConfigSpace } from './pci/config-space';
import { checkConfig, destinationConfig } from './pci/compare';
import { MsixTable } from './pci/msix-table';
import { PCI_COMMAND } from './pci/regs';
import { VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_ROM_REGION_INDEX } from '../kernel/uapi/vfio';
import { BarMapper } from './bars';
import { InterruptWiring } from './interrupts';
import { checkRecordAgainst, rawConfig, recordOf, regionSizes, type DeviceRecord, type MigratableDevice, type ModelPlan } from './migratable';
import { decodeModelState, encodeModelState, type ModelState } from './model-state';
import { reportGuestError, type GuestError, type GuestErrorSink } from './guest-error';
import { logger } from '../base/log';

const log = logger('vfio-pci');

/** Events of a device model (migration events come from the engine: MigrationCoordinator). */
export interface VfioPciEvents {
  /** A guest config or BAR access that failed; the access itself never throws (./guest-error.ts). */
  'guest-error': (e: GuestError) => void;
}

export interface AttachOptions {
  /** Stable id used with the host (bus, allocator owners, interrupt routes) and in snapshots. Default: the device name. */
  id?: string;
  /**
   * Allocate BAR addresses from the host's allocator and program them (what firmware does).
   * Default true. Pass false on a restore destination: the addresses come from the snapshot.
   */
  assignBars?: boolean;
  /** Transfer buffer size for device state (default 1 MiB). */
  bufferSize?: number;
}

/** What checkModel() found and applyModel() applies. */
interface ModelLoad extends ModelPlan {
  model: ModelState;
  shadow: ConfigSpace;
}

export class VfioPciDevice extends EventEmitter<VfioPciEvents> implements MigratableDevice {
  private cfg: ConfigSpace;
  private msix?: MsixTable;
  /** The shadow and MSI-X table applyModel() replaced, for undoLoad(). */
  private preLoad?: { cfg: ConfigSpace; msix?: MsixTable };
  private readonly bars: BarMapper;
  private readonly irqs: InterruptWiring;
  private readonly cfgRegionSize: number;
  readonly bufferSize: number;
  private readonly dmaMapped = new Map<bigint, number>();
  /** Guest errors go out as 'guest-error' events. */
  private readonly report: GuestErrorSink = (e) => void this.emit('guest-error', e);

  private constructor(
    readonly device: VfioDevice,
    readonly host: Host,
    readonly id: string,
    opts: AttachOptions,
  ) {
    super();
    this.bufferSize = opts.bufferSize ?? DEFAULT_BUFFER_SIZE;
    this.cfgRegionSize = device.region(VFIO_PCI_CONFIG_REGION_INDEX).size;
    this.cfg = VfioPciDevice.shadowOf(device);
    this.msix = this.newMsixTable(this.cfg);
    this.bars = new BarMapper(device, host, id, () => this.cfg, () => this.msix, this.report);
    this.irqs = new InterruptWiring(device, host.interrupts, id, () => this.cfg, () => this.msix);
  }

  /**
   * Plug an open VFIO device into `host`. Reads the device's config space and region sizes,
   * builds the shadow, and (unless `assignBars` is false) gives every BAR an address from the
   * host's allocator. Nothing is mapped or armed until the guest enables decoding/interrupts.
   */
  static attach(device: VfioDevice, host: Host, opts: AttachOptions = {}): VfioPciDevice {
    const d = new VfioPciDevice(device, host, opts.id ?? device.name, opts);
    if (opts.assignBars ?? true) d.bars.assign();
    log('%s: attached (%s)', d.id, d.migration ? `migration ${d.migration.flagNames.join('|')}` : 'not migratable');
    return d;
  }

  private static shadowOf(device: VfioDevice): ConfigSpace {
    return ConfigSpace.fromDevice(rawConfig(device), regionSizes(device));
  }

  private newMsixTable(cfg: ConfigSpace, saved?: Buffer): MsixTable | undefined {
    const m = cfg.msix();
    if (!m) return undefined;
    const onChange = (vector: number): void => this.irqs.msixVectorChanged(vector);
    const table = saved ? MsixTable.deserialize(saved, onChange) : new MsixTable(m.tableSize, onChange);
    table.syncPending = () => this.irqs.collectPending(table);
    return table;
  }

  /** The config-space shadow (read-only use: write through configWrite). */
  get config(): ConfigSpace {
    return this.cfg;
  }

  /** BARs currently on the host bus. */
  get mappedBars(): ReturnType<BarMapper['mappings']> {
    return this.bars.mappings();
  }

  /** The interrupt index armed in the kernel now and its vector count. */
  get interrupts(): InterruptWiring['armed'] {
    return this.irqs.armed;
  }

  // ------------------------------------------------------------------ guest config access

  /**
   * A guest config read of 1, 2 or 4 bytes within one dword: emulated bytes from the shadow, the
   * rest from the device. Never throws: an invalid access reads all-ones, a failed device read
   * gives all-ones for the device's bytes; both are reported as 'guest-error'.
   */
  configRead(offset: number, size: number): number {
    const guest = { device: this.id, access: 'config-read', offset, size } as const;
    let emulated: boolean;
    try {
      emulated = this.cfg.isEmulated(offset, size);
    } catch (e) {
      reportGuestError(this.report, { ...guest, step: 'access', error: e });
      return size > 0 && size < 4 ? 2 ** (8 * size) - 1 : 0xffff_ffff;
    }
    if (emulated) return this.cfg.read(offset, size);
    const buf = Buffer.alloc(4);
    try {
      const n = Math.max(0, Math.min(size, this.cfgRegionSize - offset));
      if (n > 0) this.device.readConfig(offset, n).copy(buf);
    } catch (e) {
      buf.fill(0xff);
      reportGuestError(this.report, { ...guest, step: 'device', error: e });
    }
    return this.cfg.mergeRead(offset, size, buf.readUInt32LE(0));
  }

  /**
   * A guest config write. The shadow takes it first (src/pci/config-space.ts decides what is
   * emulated); every non-emulated byte is ALSO written to the device here, so the shadow and the
   * device agree and a snapshot records what the guest wrote — PCI_COMMAND above all. Then BARs
   * and interrupts follow the change. Never throws: an invalid access is dropped, and a failed
   * device write, BAR (un)mapping or interrupt set-up is reported as 'guest-error' while the
   * shadow keeps what the guest wrote (the next change tries the BARs and interrupts again).
   */
  configWrite(offset: number, size: number, value: number): void {
    const guest = { device: this.id, access: 'config-write', offset, size, value } as const;
    let result: ReturnType<ConfigSpace['write']>;
    try {
      result = this.cfg.write(offset, size, value);
    } catch (e) {
      reportGuestError(this.report, { ...guest, step: 'access', error: e });
      return;
    }
    const { passthrough, changed } = result;
    if (passthrough) {
      try {
        const b = Buffer.alloc(4);
        b.writeUInt32LE(passthrough.value >>> 0, 0);
        const n = Math.max(0, Math.min(passthrough.size, this.cfgRegionSize - passthrough.offset));
        if (n > 0) this.device.writeConfig(passthrough.offset, b.subarray(0, n));
      } catch (e) {
        reportGuestError(this.report, { ...guest, step: 'device', error: e });
      }
    }
    try {
      if (changed.command || changed.bars.length || this.bars.stale) this.bars.sync();
    } catch (e) {
      reportGuestError(this.report, { ...guest, step: 'bus', error: e });
    }
    try {
      if (changed.command || changed.msi || changed.msix || this.irqs.stale) this.irqs.sync();
    } catch (e) {
      reportGuestError(this.report, { ...guest, step: 'interrupts', error: e });
    }
  }

  // ------------------------------------------------------------------ migration (MigratableDevice)

  /** The device's one migration object (`device.migration`); null when not migratable (ENOTTY). */
  get migration(): Migration | null {
    return this.device.migration;
  }

  /** Identity, migration flags, the device's config space and region sizes, under this device's id; its model state follows (`model`). */
  record(): DeviceRecord {
    return recordOf(this.device, this.id, true);
  }

  /** The guest's vIOMMU (Host.viommu), if the VM has one. */
  get viommu(): GuestIommu | undefined {
    return this.host.viommu;
  }

  /**
   * The guest RAM mapped for this device's DMA (mapGuestMemory(): iova = guest physical
   * address), as the ranges dirty tracking covers; all of the host's guest memory when nothing
   * was mapped through this model yet (a VMM that maps DMA itself).
   */
  dmaRegions(): TrackedRegion[] {
    const mapped = [...this.dmaMapped].map(([iova, length]) => ({ iova, length: BigInt(length) }));
    if (mapped.length) return mapped;
    return (this.host.memory?.regions() ?? []).map((r) => ({ iova: r.gpa, length: BigInt(r.buffer.length) }));
  }

  /** See MigratableDevice.checkRecord: identity, regions, config under this device's own masks, and a model state announced. */
  checkRecord(saved: DeviceRecord): void {
    checkRecordAgainst(this.device, this.id, true, saved);
  }

  /**
   * The PCI_MODEL body (src/model/model-state.ts): the config shadow with its masks, the MSI-X
   * table, the BARs on the bus and the interrupt mode, as the guest left them. Taken after the
   * device stopped, after its VFIO state ("config last"): the guest may change them until then.
   */
  saveModel(): Buffer {
    return encodeModelState({
      id: this.id, config: this.cfg.serialize(), msixTable: this.msix?.serialize(), irqMode: this.irqs.armed.mode,
      bars: this.bars.mappings().map((m) => ({ bar: m.bar, space: m.space, size: m.size, address: m.address })),
    });
  }

  /**
   * Check a saved PCI_MODEL body against this device, touching nothing: it must be there (a
   * bare snapshot has none), decode, belong to this id, its config shadow must match this
   * device under this device's own masks, every BAR and the ROM must have the same size on both
   * sides (one present on one side only included), and its MSI-X table must have as many
   * vectors as this device's MSI-X capability (QSIZE + 1). Errors: EVFIO_BAD_SNAPSHOT (format),
   * EVFIO_CONFIG_MISMATCH / EVFIO_DEVICE_MISMATCH (mismatch).
   */
  checkModel(saved: Buffer | undefined): ModelLoad {
    const step = 'load:check-model';
    if (!saved) {
      throw new VfioError(`${this.id}: the saved state has no device-model part (PCI_MODEL; a bare 'vfio-pci snapshot'): it cannot restore a guest's view of the device`, {
        code: 'EVFIO_BAD_SNAPSHOT', kind: 'format', device: this.id, step,
      });
    }
    let model: ModelState;
    let shadow: ConfigSpace;
    try {
      model = decodeModelState(saved);
      shadow = ConfigSpace.deserialize(model.config);
    } catch (e) {
      throw e instanceof VfioError ? e.annotate({ device: this.id, step }) : e;
    }
    if (model.id !== this.id) {
      throw new VfioError(`the saved device model is ${model.id}'s, not ${this.id}'s`, { code: 'EVFIO_DEVICE_MISMATCH', device: this.id, step });
    }
    const sizes = regionSizes(this.device);
    checkConfig(shadow, destinationConfig(rawConfig(this.device), sizes), { device: this.id, step });
    this.checkBarSizes(shadow, sizes);
    const msix = shadow.msix();
    const vectors = model.msixTable ? MsixTable.deserialize(model.msixTable).size : 0;
    if ((msix?.tableSize ?? 0) !== vectors) {
      throw new VfioError(`${this.id}: the saved MSI-X table has ${vectors} vectors, the device's MSI-X capability ${msix?.tableSize ?? 0} (QSIZE + 1)`, {
        code: 'EVFIO_CONFIG_MISMATCH', device: this.id, step,
      });
    }
    return { id: this.id, model, shadow };
  }

  /** See MigratableDevice.applyModel. */
  applyModel(plan: ModelPlan): void {
    const { model, shadow } = plan as ModelLoad;
    this.preLoad ??= { cfg: this.cfg, msix: this.msix };
    this.bars.unmapAll();
    this.cfg = shadow;
    this.msix = this.newMsixTable(shadow, model.msixTable);
    this.bars.sync();
    this.pushCommand();
    this.irqs.rearm();
    log('%s: model applied; COMMAND 0x%s, irqs %o, BARs %o', this.id, this.cfg.command.toString(16), this.irqs.armed, this.bars.mappings());
  }

  /**
   * See MigratableDevice.undoLoad: BARs off the bus, interrupts disarmed, and the shadow (and
   * MSI-X table) back to what they were before applyModel(), so that the model agrees with the
   * reset device that follows (COMMAND 0, MSI-X off) and a later config write cannot put the
   * saved BARs back on the bus. A later load starts from there.
   */
  undoLoad(): void {
    this.bars.unmapAll();
    try {
      this.irqs.disarm();
    } catch (e) {
      log('%s: disarm while undoing a load failed (the reset clears it anyway): %o', this.id, e);
    }
    if (this.preLoad) {
      this.cfg = this.preLoad.cfg;
      this.msix = this.preLoad.msix;
      this.preLoad = undefined;
    }
  }

  /** See MigratableDevice.afterReset: PCI_COMMAND pushed from the shadow, interrupts re-armed. */
  afterReset(): void {
    try {
      this.pushCommand();
      this.irqs.rearm();
    } catch (e) {
      log('%s: restoring COMMAND/interrupts after reset failed: %o', this.id, e);
    }
  }

  /** A load is complete (the engine resumed the device): forget what undoLoad() would restore. */
  commitLoad(): void {
    this.preLoad = undefined;
  }

  /**
   * Map every region of the host's guest memory for device DMA at its guest physical address
   * (iova = gpa), through the device's IOMMU context, off the JS thread. Call after attach and
   * before the guest enables bus mastering; on a restore destination, before resume().
   * Errors: EVFIO_DMA_ALIGN, or the kernel's; regions mapped before a failure are unmapped.
   */
  async mapGuestMemory(): Promise<void> {
    const regions = this.host.memory?.regions() ?? [];
    try {
      for (const r of regions) {
        if (this.dmaMapped.has(r.gpa)) continue;
        await this.device.iommu.mapDma(r.gpa, r.buffer);
        this.dmaMapped.set(r.gpa, r.buffer.length);
      }
    } catch (e) {
      await this.unmapGuestMemory().catch(() => undefined);
      throw e instanceof VfioError ? e.annotate({ device: this.id, step: 'dma-map' }) : e;
    }
  }

  /** Undo mapGuestMemory(). (Closing the device's IOMMU context drops the mappings too.) */
  async unmapGuestMemory(): Promise<void> {
    for (const [gpa, length] of [...this.dmaMapped]) {
      this.dmaMapped.delete(gpa);
      await this.device.iommu.unmapDma(gpa, length);
    }
  }

  /** Guest memory ranges mapped for DMA now: gpa → length. */
  get dmaMappings(): ReadonlyMap<bigint, number> {
    return this.dmaMapped;
  }

  /** Write PCI_COMMAND from the shadow to the device. */
  pushCommand(): void {
    const b = Buffer.alloc(2);
    b.writeUInt16LE(this.cfg.command, 0);
    this.device.writeConfig(PCI_COMMAND, b);
  }

  /**
   * Take BARs off the bus, disarm interrupts, release BAR addresses if `release`. The VfioDevice
   * stays open (its owner closes it, which also ends any migration session).
   */
  detach(release = false): void {
    this.bars.unmapAll();
    try {
      this.irqs.disarm();
    } finally {
      if (release) this.bars.release();
      this.removeAllListeners();
    }
  }

  /** Every BAR slot (0-5) and the ROM the same size in the saved shadow and on this device, absent on both or present on both. */
  private checkBarSizes(saved: ConfigSpace, sizes: ReturnType<typeof regionSizes>): void {
    const savedSizes = new Map(saved.bars().map((b) => [b.index, b.size]));
    const bad: string[] = [];
    const have = [...sizes.barSizes, sizes.romSize];
    for (let index = 0; index <= VFIO_PCI_ROM_REGION_INDEX; index++) {
      const was = savedSizes.get(index) ?? 0;
      const name = index === VFIO_PCI_ROM_REGION_INDEX ? 'ROM' : `BAR${index}`;
      // The upper half of a saved 64-bit BAR is no BAR of its own; the region reports 0 for it.
      if (was !== have[index]) bad.push(`${name}: saved ${was ? `${was} bytes` : 'absent'}, device has ${have[index] ? `${have[index]} bytes` : 'none'}`);
    }
    if (bad.length) {
      throw new VfioError(`BAR layout of ${this.id} does not match the saved one: ${bad.join('; ')}`, {
        code: 'EVFIO_CONFIG_MISMATCH', device: this.id, step: 'load:check-bars',
      });
    }
  }
}

/**
 * The vfio-pci device model: the piece a TypeScript VMM plugs in to pass a VFIO device through
 * to a guest and to pause, snapshot, restore and resume it.
 *
 * The VMM's PCI bus calls `configRead`/`configWrite` for the function's config space; BAR
 * accesses reach the device through the host bus (./bars.ts); interrupts are eventfds from the
 * host's router given to the kernel with SET_IRQS (./interrupts.ts). The lifecycle:
 *
 *   attach() ─ pause() ─ snapshot(writer) ─ resume()            (source)
 *   attach({ assignBars: false }) ─ restore(reader) ─ resume()   (destination)
 *
 * Restore, in this order (each step a fix for a way VMMs have broken restores):
 *  1. compare the saved config space with the destination device under the saved masks
 *     (`(saved ^ current) & cmask & ~wmask & ~w1cmask`; a Vendor Specific capability's body is
 *     exempt, its 3-byte header is not) and the BAR sizes — before touching the device;
 *  2. rebuild the shadow from the snapshot and put the BARs on the host bus at the saved
 *     addresses, without asking the allocator again ("BAR already in use");
 *  3. ONE RUNNING → RESUMING request, write the state, stay in RESUMING;
 *  4. push PCI_COMMAND from the shadow to the device (a fresh device has bus mastering off:
 *     its command queue would wedge);
 *  5. re-arm VFIO_DEVICE_SET_IRQS for the enabled MSI/MSI-X vectors or INTx (the kernel keeps
 *     no interrupt set-up across migration: interrupts would stay silent).
 * `resume()` then takes the device to RUNNING.
 */
import { EventEmitter } from 'eventemitter3';
import type { VfioDevice } from '../kernel/device';
import { VfioError } from '../base/errors';
import type { Host } from './host/types';
import { Migration, type StateChange } from '../kernel/migration';
import { DEFAULT_BUFFER_SIZE } from '../kernel/stream';
import { loadStateSection, saveStateSection } from '../snapshot/state-io';
import { ConfigSpace } from './pci/config-space';
import { checkConfig } from './pci/compare';
import { MsixTable } from './pci/msix-table';
import { PCI_COMMAND } from './pci/regs';
import * as f from '../snapshot/format';
import type { DeviceSections, SnapshotReader } from '../snapshot/reader';
import type { SnapshotWriter } from '../snapshot/writer';
import { writeDeviceSections, type Progress } from '../vm/jobs';
import { MigState, migStateName, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_ROM_REGION_INDEX } from '../kernel/uapi/vfio';
import { BarMapper } from './bars';
import { InterruptWiring } from './interrupts';
import { decodeModelState, encodeModelState } from './model-state';
import { reportGuestError, type GuestError, type GuestErrorSink } from './guest-error';
import { logger } from '../base/log';

const log = logger('vfio-pci');

export interface VfioPciEvents {
  /** A migration state change, with the arcs the kernel walked. */
  state: (change: StateChange) => void;
  /** Bytes of device state moved so far. */
  progress: (p: Progress) => void;
  /** A failed step was recovered from; `reset` says whether VFIO_DEVICE_RESET was needed. */
  recovered: (r: { device: string; step: string; state: MigState; reset: boolean; error: VfioError }) => void;
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

/** The device's config space padded to a standard size (256 or 4096): mtty reports 255 bytes. */
function readRawConfig(dev: VfioDevice): Buffer {
  const cfg = dev.configSpace();
  const raw = Buffer.alloc(cfg.length > 256 ? 4096 : 256);
  cfg.copy(raw);
  return raw;
}

/** What precheck() found: the saved device-model state and config space, checked against this device. */
export interface RestoreCheck {
  model: ReturnType<typeof decodeModelState>;
  saved: ConfigSpace;
}

export class VfioPciDevice extends EventEmitter<VfioPciEvents> {
  private cfg: ConfigSpace;
  private msix?: MsixTable;
  /** The shadow and MSI-X table restore() replaced, for undoing it (undoRestore()). */
  private preRestore?: { cfg: ConfigSpace; msix?: MsixTable };
  private readonly bars: BarMapper;
  private readonly irqs: InterruptWiring;
  private readonly cfgRegionSize: number;
  private readonly bufferSize: number;
  private readonly dmaMapped = new Map<bigint, number>();
  /** Guest errors go out as 'guest-error' events. */
  private readonly report: GuestErrorSink = (e) => void this.emit('guest-error', e);
  /** null when the device does not support migration (VFIO_DEVICE_FEATURE_MIGRATION: ENOTTY). */
  readonly migration: Migration | null;

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
    this.migration = Migration.probe(device);
    this.migration?.on('state', (c) => this.emit('state', c));
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
    const barSizes = [0, 1, 2, 3, 4, 5].map((i) => device.regionSize(i));
    return ConfigSpace.fromDevice(readRawConfig(device), { barSizes, romSize: device.regionSize(VFIO_PCI_ROM_REGION_INDEX) });
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

  // ------------------------------------------------------------------ lifecycle

  /** Migration support, or an EVFIO_NOT_MIGRATABLE error naming the step. */
  requireMigration(step: string): Migration {
    if (!this.migration) {
      throw new VfioError(`device ${this.id} does not support VFIO migration: ${step} is not possible`, {
        code: 'EVFIO_NOT_MIGRATABLE', kind: 'unsupported', device: this.id, step,
      });
    }
    return this.migration;
  }

  /**
   * Move to `target`, recovering on failure: a recovery state first (`recoverTo`), then
   * VFIO_DEVICE_RESET; after a reset PCI_COMMAND is pushed and interrupts re-armed. The error
   * says which step failed and where the device was left.
   */
  async transition(target: MigState, step: string, recoverTo: MigState = MigState.RUNNING): Promise<void> {
    const mig = this.requireMigration(step);
    try {
      await mig.setState(target);
    } catch (e) {
      if (!(e instanceof VfioError) || e.kind === 'protocol') throw e;
      await this.recoverAfter(e, step, recoverTo);
      throw e;
    }
  }

  /** pause(): RUNNING → STOP (the kernel passes RUNNING_P2P on P2P devices). The coordinator quiesces several devices first. */
  pause(): Promise<void> {
    return this.transition(MigState.STOP, 'pause', MigState.RUNNING);
  }

  /** Quiesce for a multi-device pause: RUNNING → RUNNING_P2P (P2P devices only). */
  quiesce(): Promise<void> {
    return this.transition(MigState.RUNNING_P2P, 'quiesce', MigState.RUNNING);
  }

  /** resume(): → RUNNING from STOP, RUNNING_P2P or RESUMING. */
  resume(): Promise<void> {
    return this.transition(MigState.RUNNING, 'resume', MigState.RUNNING);
  }

  /**
   * snapshot(): with the device paused (STOP), write its sections into `writer` under device
   * index `index`: DEVICE (identity), CONFIG (raw device config), PCI_MODEL (shadow, MSI-X
   * table, BARs, interrupt mode) and DEVICE_STATE (STOP → STOP_COPY, data_fd drained to EOF,
   * → STOP). The device is left in STOP.
   */
  async snapshot(writer: SnapshotWriter, index: number): Promise<{ stateBytes: number }> {
    const mig = this.requireMigration('snapshot');
    const st = mig.getState();
    if (st !== MigState.STOP) {
      throw new VfioError(`snapshot needs the device paused (STOP), it is ${migStateName(st)}`, {
        code: 'EVFIO_NOT_PAUSED', kind: 'protocol', device: this.id, step: 'snapshot', deviceState: migStateName(st),
      });
    }
    await writeDeviceSections(writer, index, this.device.configSpace(), mig.flags, this.id);
    await writer.writeSection(f.SectionType.PCI_MODEL, index, encodeModelState({
      id: this.id, config: this.cfg.serialize(), msixTable: this.msix?.serialize(), irqMode: this.irqs.armed.mode,
      bars: this.bars.mappings().map((m) => ({ bar: m.bar, space: m.space, size: m.size, address: m.address })),
    }));
    await this.transition(MigState.STOP_COPY, 'snapshot:stop-copy', MigState.STOP);
    const expected = mig.dataSize();
    try {
      await writer.beginSection(f.SectionType.DEVICE_STATE, index);
      await saveStateSection(this.device.binding, mig.session!.fd, writer, {
        bufferSize: this.bufferSize, device: this.id,
        onProgress: (bytes) => this.emit('progress', { device: this.id, phase: 'save', bytes, expected }),
      });
      const { bytes } = await writer.endSection();
      await this.transition(MigState.STOP, 'snapshot:finish', MigState.STOP);
      return { stateBytes: bytes };
    } catch (e) {
      if (e instanceof VfioError && mig.getState() !== MigState.STOP) await this.recoverAfter(e, 'snapshot', MigState.STOP);
      throw e;
    }
  }

  /**
   * restore(): load device `entry` of a validated snapshot into this (freshly attached, with
   * `assignBars: false`) device, in the order given at the top of this file. The device is
   * left in RESUMING; call resume() to run it. Errors before step 3 leave the device untouched
   * (`deviceState` 'untouched'); later ones reset it to RUNNING, take the BARs off the bus,
   * disarm interrupts and put the shadow back as it was before the call. `checked`: what
   * precheck() returned for the same entry, when the caller ran it already (step 1 then reuses it).
   */
  async restore(reader: SnapshotReader, entry: DeviceSections, checked?: RestoreCheck): Promise<{ stateBytes: number }> {
    const mig = this.requireMigration('restore');
    // 1. compare, before touching anything
    const { model, saved } = checked ?? this.precheck(reader, entry);
    // 2. shadow and BARs from the snapshot; no allocation
    this.preRestore = { cfg: this.cfg, msix: this.msix };
    this.bars.unmapAll();
    this.cfg = saved;
    this.msix = this.newMsixTable(saved, model.msixTable);
    let step = 'restore:map-bars';
    try {
      this.bars.sync();
      // 3. one RUNNING → RESUMING request, then the stream
      step = 'restore:resuming';
      await mig.setState(MigState.RESUMING);
      step = 'restore:write';
      const total = entry.state!.chunks!.total;
      const { bytes } = await loadStateSection(this.device.binding, reader, entry.state!, mig.session!.fd, {
        bufferSize: this.bufferSize, device: this.id, onProgress: (b) => this.emit('progress', { device: this.id, phase: 'load', bytes: b, expected: total }),
      });
      mig.closeSession();
      // 4. PCI_COMMAND, 5. interrupts
      step = 'restore:command';
      this.pushCommand();
      step = 'restore:irqs';
      this.irqs.rearm();
      log('%s: restored %d bytes; RESUMING, COMMAND 0x%s, irqs %o', this.id, bytes, this.cfg.command.toString(16), this.irqs.armed);
      return { stateBytes: bytes };
    } catch (e) {
      this.undoRestore();
      let left = 'ERROR';
      try {
        left = migStateName(await mig.reset());
      } catch (re) {
        log('%s: reset after failed restore failed: %o', this.id, re);
      }
      if (e instanceof VfioError) {
        if (!e.step) e.step = step;
        e.annotate({ device: this.id, deviceState: left });
      }
      throw e;
    }
  }

  /**
   * Restore step 1 alone: check that device `entry` of the snapshot can be restored into this
   * device (sections present, saved config space against this device's under the saved masks,
   * BAR sizes). Touches nothing. Throws VfioError kind 'format' or 'mismatch'
   * (EVFIO_CONFIG_MISMATCH naming each offending offset and register), with `deviceState`
   * 'untouched'.
   */
  precheck(reader: SnapshotReader, entry: DeviceSections): RestoreCheck {
    try {
      return this.checkEntry(reader, entry);
    } catch (e) {
      // Nothing was done to the device yet: say so, as restore() documents ('untouched').
      if (e instanceof VfioError && e.deviceState === undefined) e.deviceState = 'untouched';
      throw e;
    }
  }

  private checkEntry(reader: SnapshotReader, entry: DeviceSections): RestoreCheck {
    if (!entry.model) throw f.formatError(`device ${entry.index} of ${reader.path} has no PCI_MODEL section (a bare 'vfio-pci snapshot'): restore it with 'vfio-pci restore'`);
    if (!entry.state) throw f.formatError(`device ${entry.index} of ${reader.path} has no DEVICE_STATE section`);
    const model = decodeModelState(entry.model);
    const saved = ConfigSpace.deserialize(model.config);
    checkConfig(saved, readRawConfig(this.device), { device: this.id, step: 'restore:check-config' });
    this.checkBarSizes(saved);
    return { model, saved };
  }

  /**
   * Undo a restore that succeeded on this device when another device of the VM failed: BARs
   * off the bus, interrupts disarmed, the shadow as before restore(), VFIO_DEVICE_RESET (→ RUNNING).
   */
  abortRestore(): Promise<MigState> {
    this.undoRestore();
    return this.requireMigration('restore:abort').reset();
  }

  /**
   * Before the reset that ends a failed or aborted restore: BARs off the bus, interrupts
   * disarmed, and the shadow (and MSI-X table) put back to what they were before restore(), so
   * that the model agrees with the reset device (COMMAND 0, MSI-X off) and a later config write
   * cannot put the snapshot's BARs back on the bus. A retry of restore() starts from there.
   */
  private undoRestore(): void {
    this.bars.unmapAll();
    try {
      this.irqs.disarm();
    } catch (e) {
      log('%s: disarm while undoing a restore failed (the reset clears it anyway): %o', this.id, e);
    }
    if (this.preRestore) {
      this.cfg = this.preRestore.cfg;
      this.msix = this.preRestore.msix;
      this.preRestore = undefined;
    }
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

  /** Take BARs off the bus, disarm interrupts, release BAR addresses if `release`, drop the migration session. The VfioDevice stays open. */
  detach(release = false): void {
    this.bars.unmapAll();
    try {
      this.irqs.disarm();
    } finally {
      if (release) this.bars.release();
      this.migration?.close();
      this.removeAllListeners();
    }
  }

  private checkBarSizes(saved: ConfigSpace): void {
    const bad: string[] = [];
    for (const b of saved.bars()) {
      // BarInfo.index is the VFIO region index: 0-5, and 6 (VFIO_PCI_ROM_REGION_INDEX) for the ROM.
      const have = this.device.regionSize(b.index);
      if (have !== b.size) bad.push(`BAR${b.kind === 'rom' ? ' ROM' : b.index}: saved ${b.size} bytes, device has ${have}`);
    }
    if (bad.length) {
      throw new VfioError(`BAR layout of ${this.id} does not match the snapshot: ${bad.join('; ')}`, {
        code: 'EVFIO_CONFIG_MISMATCH', kind: 'mismatch', device: this.id, step: 'restore:check-bars', deviceState: 'untouched',
      });
    }
  }

  private async recoverAfter(e: VfioError, step: string, recoverTo: MigState): Promise<void> {
    const mig = this.migration!;
    let result: { state: MigState; reset: boolean };
    try {
      result = await mig.recover(recoverTo);
    } catch (re) {
      log('%s: recovery after %s failed: %o', this.id, step, re);
      e.annotate({ step, deviceState: 'ERROR' });
      return;
    }
    if (result.reset) {
      // VFIO_DEVICE_RESET cleared PCI_COMMAND and the interrupt set-up in the device.
      try {
        this.pushCommand();
        this.irqs.rearm();
      } catch (re) {
        log('%s: restoring COMMAND/interrupts after reset failed: %o', this.id, re);
      }
    }
    e.annotate({ step, deviceState: migStateName(result.state) });
    this.emit('recovered', { device: this.id, step, state: result.state, reset: result.reset, error: e });
  }
}


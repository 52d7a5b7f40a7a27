/**
 * Snapshot and restore of devices on their own (no device model): the CLI's `snapshot` and
 * `restore` jobs, as thin callers of the migration engine (src/engine/engine.ts) over
 * `BareDevice`s and the snapshot file stream. The engine's rules apply: the P2P order, the
 * blockers (a device that is not migratable; several devices without P2P unless
 * `allowNonP2P`), pairing by id, checks before touching, recovery.
 *
 * Guarantees:
 *  - save: the file appears complete or not at all (src/snapshot/writer.ts); the devices are
 *    returned to the state they were in (or left in STOP with `leaveStopped`) before the file is
 *    made durable (fsync, rename, directory fsync), so their downtime is the state copy, not the
 *    disk's write-back; on failure or cancel, when no snapshot was written, each device is
 *    brought back where it was (`leaveStopped` too: it asks for STOP after a snapshot, and there
 *    is none), and the error's `deviceState` says where each one was left;
 *  - restore: the file is validated (every structure and checksum, the state chunks' excepted:
 *    each chunk's checksum is checked as it is loaded, before it reaches the device), and every
 *    device paired by id and checked (identity, config space under its own masks), before any
 *    device is touched; one RUNNING → RESUMING request per device; on any failure after that,
 *    every device is reset (VFIO_DEVICE_RESET → RUNNING) and never runs the loaded state.
 */
import { VfioError } from '../base/errors';
import { logger } from '../base/log';
import { MigrationEngine, type EngineEvents, type LoadResult, type SaveResult } from '../engine/engine';
import type { Progress } from '../engine/stream';
import type { StateChange } from '../kernel/migration';
import { VfioDevice } from '../kernel/device';
import { MigState, migStateName } from '../kernel/uapi/vfio';
import { BareDevice } from '../model/bare';
import { SnapshotFileSink, SnapshotFileSource, recordOfSections } from '../snapshot/file-stream';
import { SnapshotReader } from '../snapshot/reader';
import { SnapshotWriter, type WriterOptions } from '../snapshot/writer';

export type { Progress } from '../engine/stream';

const log = logger('jobs');

/** A device and the id it is saved under (default: its name). */
export type JobDevice = VfioDevice | { id: string; device: VfioDevice };

/** Options shared by saveSnapshot and restoreSnapshot. */
export interface JobOptions {
  /** Transfer buffer size in bytes (default 1 MiB); also the snapshot's chunk size on save. */
  bufferSize?: number;
  /** Called with the bytes moved per device. */
  onProgress?: (p: Progress) => void;
  /** Called for every migration state change (the arcs the kernel walks included); `device` is the id. */
  onState?: (c: StateChange) => void;
  /** Accept several migratable devices without P2P support (they are stopped one by one). */
  allowNonP2P?: boolean;
  /** Cancels the job: the transfer stops, and the devices are brought back (save) or reset (restore). */
  signal?: AbortSignal;
}

export interface SaveSnapshotOptions extends JobOptions, Pick<WriterOptions, 'noSync' | 'mode' | 'files'> {
  /**
   * Leave the devices in STOP after a successful save (default: back to the state they were in).
   * A save that fails or is cancelled writes no snapshot and brings them back regardless.
   */
  leaveStopped?: boolean;
}

export interface SaveSnapshotResult extends SaveResult {
  file: string;
}

export interface RestoreSnapshotOptions extends JobOptions {
  /** State to leave the devices in: RUNNING (default) or RESUMING (the caller resumes them). */
  finalState?: MigState.RUNNING | MigState.RESUMING;
  /**
   * Read every state chunk and check its checksum before any device is touched: one more read
   * of the whole file (default false: each chunk is checked as it is loaded, before it reaches
   * the device, so a corrupt chunk is found with the devices in RESUMING, and they are reset).
   */
  verify?: boolean;
}

function unitsOf(devices: readonly JobDevice[], bufferSize?: number): BareDevice[] {
  return devices.map((d) => (d instanceof VfioDevice ? new BareDevice(d, d.name, bufferSize) : new BareDevice(d.device, d.id, bufferSize)));
}

function engineFor(units: BareDevice[], opts: JobOptions): MigrationEngine {
  const engine = new MigrationEngine(units, { allowNonP2P: opts.allowNonP2P });
  const on = <K extends keyof EngineEvents>(ev: K, fn?: EngineEvents[K]): void => {
    if (fn) engine.on(ev, fn as never);
  };
  on('state', opts.onState);
  on('progress', opts.onProgress);
  return engine;
}

/**
 * Pause every device (all to RUNNING_P2P, then STOP, when they all have P2P), save each one's
 * identity, config space and STOP_COPY stream into `file`, return them to their previous
 * state (or leave them in STOP), and only then make the file durable. Errors: VfioError with
 * `deviceState` (every device); the file never appears.
 */
export async function saveSnapshot(devices: readonly JobDevice[], file: string, opts: SaveSnapshotOptions = {}): Promise<SaveSnapshotResult> {
  const units = unitsOf(devices, opts.bufferSize);
  const engine = engineFor(units, opts);
  // Blockers and the file are checked before any device is touched.
  engine.assertMigratable('snapshot');
  const keep = new Set(units.filter((u) => u.migration!.getState() === MigState.STOP).map((u) => u.id));
  let writer: SnapshotWriter;
  try {
    writer = await SnapshotWriter.create(file, { noSync: opts.noSync, mode: opts.mode, files: opts.files });
  } catch (e) {
    if (e instanceof VfioError) e.annotate({ deviceState: engine.describeDevices(false) });
    engine.dispose();
    throw e;
  }
  let resumed = false;
  try {
    opts.signal?.throwIfAborted();
    await engine.pause();
    const r = await engine.save(new SnapshotFileSink(writer), { signal: opts.signal });
    if (!opts.leaveStopped) await engine.resume({ keep });
    resumed = true;
    try {
      // A cancel up to the rename still leaves no file (the point of no return is the rename).
      await writer.commit(opts.signal);
    } catch (e) {
      const err = cancelled(e, 'snapshot:commit');
      if (err instanceof VfioError) err.annotate({ step: 'snapshot:commit', deviceState: engine.describeDevices(true) });
      throw err;
    }
    return { ...r, file };
  } catch (caught) {
    const e = cancelled(caught, 'snapshot:start');
    if (e instanceof VfioError && !e.deviceState) e.annotate({ deviceState: engine.describeDevices(false) });
    await writer.abort();
    if (!resumed) {
      // No snapshot: back to where they were (the engine left them in STOP, or RUNNING after a
      // failed pause), with leaveStopped too — STOP without a saved state serves nothing.
      try {
        await engine.resume({ keep });
      } catch (re) {
        if (e instanceof VfioError) e.message += `; resuming the devices failed too: ${(re as Error).message}`;
        if (e instanceof VfioError && re instanceof VfioError && re.deviceState) e.annotate({ deviceState: re.deviceState });
        throw e;
      }
      refreshOutcomes(e, units);
    }
    throw e;
  } finally {
    engine.dispose();
  }
}

/**
 * Restore devices from a snapshot file (or a reader already open, which stays its owner's),
 * paired by id. A single device given without an id pairs with a file that holds a single
 * device, whatever that device's saved id. Validates the file and checks every device before
 * touching any; one RUNNING → RESUMING request per device; the state loaded chunk by chunk, each
 * chunk's checksum checked before it reaches the device; then RUNNING (P2P order), or RESUMING
 * with `finalState`. A snapshot with device-model state (PCI_MODEL) is refused
 * (EVFIO_NEEDS_MODEL): restore it through the VMM's VfioPciDevice. On failure after a device was
 * touched, every device is reset (RUNNING) and the error's `deviceState` says so.
 */
export async function restoreSnapshot(devices: JobDevice | readonly JobDevice[], source: string | SnapshotReader, opts: RestoreSnapshotOptions = {}): Promise<LoadResult> {
  const list = Array.isArray(devices) ? (devices as readonly JobDevice[]) : [devices as JobDevice];
  const owned = typeof source === 'string';
  const reader = owned ? await SnapshotReader.open(source, { binding: deviceOf(list[0])?.binding }) : source;
  let engine: MigrationEngine | undefined;
  try {
    const stream = new SnapshotFileSource(reader);
    const saved = stream.devices();
    // One device, one saved device, no id given: they pair whatever the saved id.
    const units = list.length === 1 && list[0] instanceof VfioDevice && saved.length === 1
      ? [new BareDevice(list[0], saved[0].record.id, opts.bufferSize)]
      : unitsOf(list, opts.bufferSize);
    engine = engineFor(units, opts);
    if (opts.verify) {
      try {
        await verifyStateChunks(reader, opts.signal);
      } catch (e) {
        const err = cancelled(e, 'restore:verify');
        if (err instanceof VfioError) err.annotate({ step: 'restore:verify', deviceState: engine.describeDevices(false) });
        throw err;
      }
    }
    const r = await engine.load(stream, { signal: opts.signal });
    if ((opts.finalState ?? MigState.RUNNING) === MigState.RUNNING) await engine.resume();
    return r;
  } finally {
    engine?.dispose();
    if (owned) await reader.close();
  }
}

/** Every state chunk of the file read and its checksum checked (SnapshotReader.chunks), in file order. */
async function verifyStateChunks(reader: SnapshotReader, signal?: AbortSignal): Promise<void> {
  const t0 = performance.now();
  for (const d of reader.devices()) {
    if (!d.state) continue;
    signal?.throwIfAborted();
    for await (const _ of reader.chunks(d.state)) signal?.throwIfAborted();
  }
  log('%s: every state chunk verified in %s ms', reader.path, (performance.now() - t0).toFixed(1));
}

/** An abort of the job's signal (an AbortError) as the engine reports one: ECANCELED, kind 'cancelled'. */
function cancelled(e: unknown, step: string): unknown {
  if (e instanceof VfioError || (e as Error)?.name !== 'AbortError') return e;
  return new VfioError(`${step} cancelled`, { code: 'ECANCELED', kind: 'cancelled', step, cause: e });
}

/** Re-read the state of every device an error's `deviceState` lists (after they were brought back). */
function refreshOutcomes(e: unknown, units: readonly BareDevice[]): void {
  if (!(e instanceof VfioError) || !e.deviceState) return;
  e.annotate({
    deviceState: e.deviceState.map((o) => {
      const mig = units.find((u) => u.id === o.device)?.migration;
      return mig ? { ...o, state: migStateName(mig.stateOrError()) } : o;
    }),
  });
}

function deviceOf(d: JobDevice | undefined): VfioDevice | undefined {
  return d === undefined ? undefined : d instanceof VfioDevice ? d : d.device;
}

/** The ids saved in a snapshot's devices, in file order (for messages and the CLI). */
export function savedIds(reader: SnapshotReader): string[] {
  return reader.devices().map((d) => recordOfSections(d).id);
}

/**
 * Live migration for a VMM: the source's controller (`LiveMigration`) and the destination's job
 * (`receiveMigration`), on a migration engine (src/engine) and a frame link (./link.ts).
 *
 * The VMM owns RAM and vCPUs, so it decides when to switch over; the library owns the devices'
 * state and its stream, and says when the devices allow it:
 *  - `pending()`: per device the precopy bytes still to send (initial + dirty, from
 *    VFIO_MIG_GET_PRECOPY_INFO), the stop-copy bytes the switchover would move
 *    (VFIO_DEVICE_FEATURE_MIG_DATA_SIZE; a failing query counts as 100 GiB, never 0) and whether
 *    the destination still owes the switchover-ack; in total the bytes and the downtime they would
 *    cost at the bandwidth measured on the stream;
 *  - `switchoverReady` (and the `switchover-ready` event): the switchover-ack has arrived (QEMU's
 *    rule: the source may not stop before the destination has loaded the initial data) and the
 *    pending bytes fit the downtime limit at the measured bandwidth (QEMU's convergence test,
 *    migration/migration.c: pending < bandwidth × downtime limit; default limit 300 ms);
 *  - `iterate()` runs one precopy round, `switchover()` stops the devices and moves the rest,
 *    `run()` does both in a loop with the iteration and time limits, calling the VMM's
 *    `beforeSwitchover()` (stop the vCPUs) first; `cancel()` before the switchover sent END
 *    brings every device back to RUNNING with its state intact; after END it waits for the
 *    destination's answer instead (docs/live-protocol.md "After END").
 * Events: `state` (the engine's), `progress` (device, phase, bytes, pending, dirty pages),
 * `switchover-ready`, `iteration`, `dirty` (each dirty-page sync: per device one bitmap per
 * tracked range, for the VMM to OR into its KVM dirty log; src/engine/dirty.ts) and `downtime`
 * (ms from the first device leaving PRE_COPY to the last device's state sent). Setup warnings (a
 * relaxed vIOMMU blocker) are the engine's `warning` events, kept in `warnings`.
 *
 * Dirty tracking of the devices' DMA (EngineOptions.dirtyTracking) starts at setup, is synced
 * after every precopy round (iterate(); or whenever the VMM calls syncDirty()) and once more when
 * the devices have stopped in the switchover (the `dirty` event with `final`: the last pages the
 * VMM must send), and stops at the end or on cancel.
 */
import { EventEmitter } from 'eventemitter3';
import { VfioError } from '../base/errors';
import { logger } from '../base/log';
import type { MigrationEngine, LoadResult } from '../engine/engine';
import type { SaveSummary, SavedDevice } from '../engine/stream';
import type { DirtySummary, DirtySync } from '../engine/dirty';
import { UNKNOWN_SIZE, type DevicePending, type LiveSave, type SwitchoverResult } from '../engine/live-save';
import type { StateChange } from '../kernel/migration';
import { LiveSink, LiveSource, type LiveSinkOptions, type LiveSourceOptions } from './stream';
import type { FrameLink } from './link';
import { abortedError } from './errors';

const log = logger('live');

/** Default downtime limit: 300 ms (QEMU's default `downtime-limit`). */
export const DEFAULT_DOWNTIME_LIMIT_MS = 300;
/** Bandwidth assumed before the stream has measured one (bytes/s): 100 MiB/s, on the safe side. */
export const DEFAULT_BANDWIDTH = 100 * 2 ** 20;
/** A round must move at least this many bytes for its throughput to count as a measurement. */
const MIN_MEASURED_BYTES = 256 * 1024;

export interface MigrateOptions extends LiveSinkOptions {
  /** Device downtime the switchover may cost, in ms (default 300). */
  downtimeLimitMs?: number;
  /** Link bandwidth in bytes/s to assume until the stream has measured one (default 100 MiB/s). */
  bandwidth?: number;
  /** run(): most precopy rounds before giving up (default 100). */
  maxIterations?: number;
  /** run(): most ms of precopy before giving up (default: none). */
  maxTimeMs?: number;
  /** run(): what to do at the iteration or time limit without convergence: 'cancel' (default: EVFIO_NOT_CONVERGED, the source runs on) or 'switchover' (accept the longer downtime). */
  onLimit?: 'cancel' | 'switchover';
  /** run(): pause between rounds that sent nothing, in ms (default 20). */
  idleMs?: number;
  /** Postcopy is not possible with VFIO devices: true is refused (EVFIO_POSTCOPY). */
  postcopy?: boolean;
  signal?: AbortSignal;
}

/** Pending figures of the whole migration. */
export interface Pending {
  devices: Array<DevicePending & { switchoverAckPending: boolean }>;
  /** precopy + stop-copy bytes of every device: what a switchover now would have to move. */
  totalBytes: number;
  /** Bytes per second measured on the stream (or the assumed figure before a measurement). */
  bandwidth: number;
  /** totalBytes at that bandwidth, in ms. */
  estimatedDowntimeMs: number;
  /** The switchover-ack has arrived (or is not needed). */
  ackReceived: boolean;
  /** Ack received and estimatedDowntimeMs within the limit. */
  ready: boolean;
}

export interface MigrationProgress {
  device: string;
  phase: 'precopy' | 'stop-copy';
  /** Bytes of the device's state sent so far. */
  bytes: number;
}

export interface MigrationResult {
  /** Device downtime, ms. */
  downtimeMs: number;
  iterations: number;
  /** Bytes of device state sent in precopy and in the switchover, and in all. */
  precopyBytes: number;
  stopCopyBytes: number;
  totalBytes: number;
  devices: Array<{ id: string; precopyBytes: number; stopCopyBytes: number }>;
  /** The destination ran its devices (it said so in its ACCEPT and reported RESUMED). */
  destinationResumed: boolean;
  /** Dirty tracking: each device's method and ranges, and the dirty pages of every sync (the last is the final one). */
  dirty: DirtySummary;
}

export interface LiveMigrationEvents {
  state: (c: StateChange) => void;
  /**
   * Bytes sent of a device's state. `pending`: the figures of the last `pending()` check (made
   * after every round, on every switchover-ack, and by the VMM's own calls; absent before the
   * first), not queried again for each event. `dirtyPages`: pages the devices' DMA dirtied at the
   * last sync.
   */
  progress: (p: MigrationProgress & { pending?: Pending; dirtyPages?: number }) => void;
  'switchover-ready': (p: Pending) => void;
  /** A precopy round ended: bytes sent, the pending figures, and the dirty pages of its sync (when tracked). */
  iteration: (i: { iteration: number; bytes: number; pending: Pending; dirtyPages?: number }) => void;
  /** A dirty-page sync: the bitmaps are the VMM's (read-and-clear: they are not reported again). */
  dirty: (s: DirtySync) => void;
  downtime: (d: { ms: number }) => void;
  /**
   * The migration is being cancelled — by cancel(), a failed step, the destination's ERROR or a
   * lost connection in precopy, the relaxed vIOMMU rule — and every device goes back to RUNNING
   * with its state; the next call throws the reason.
   */
  cancelled: (c: { reason: unknown }) => void;
}

/** The source's side of one live migration. Made by `LiveMigration.start()`. */
export class LiveMigration extends EventEmitter<LiveMigrationEvents> {
  private iterations = 0;
  private bandwidth: number;
  private measured = false;
  private phase: 'precopy' | 'stop-copy' = 'precopy';
  private readyEmitted = false;
  private readonly unsub: Array<() => void> = [];
  private readonly startedAt = Date.now();
  private lastDirtyPages?: number;
  private lastPending?: Pending;

  private constructor(
    readonly engine: MigrationEngine,
    readonly sink: LiveSink,
    private readonly live: LiveSave,
    private readonly opts: MigrateOptions,
  ) {
    super();
    this.bandwidth = opts.bandwidth ?? DEFAULT_BANDWIDTH;
    const onState = (c: StateChange): void => void this.emit('state', c);
    const onProgress = (p: { device: string; bytes: number }): void => void this.emit('progress', { device: p.device, phase: this.phase, bytes: p.bytes, pending: this.lastPending, dirtyPages: this.lastDirtyPages });
    engine.on('state', onState);
    engine.on('progress', onProgress);
    const onAck = (): void => void this.checkReady();
    // The return path failed in precopy (the destination's ERROR, the connection lost): nothing
    // can go on, so the migration is cancelled at once (the source runs on), not at the VMM's
    // next call.
    const onFailed = (e: unknown): void => void this.live.cancel(e);
    sink.on('switchover-ack', onAck);
    sink.on('failed', onFailed);
    this.unsub.push(
      () => engine.off('state', onState), () => engine.off('progress', onProgress),
      () => sink.off('switchover-ack', onAck), () => sink.off('failed', onFailed),
    );
    if (opts.signal) {
      const onAbort = (): void => void this.cancel(abortedError('migrate', opts.signal!));
      opts.signal.addEventListener('abort', onAbort, { once: true });
      this.unsub.push(() => opts.signal?.removeEventListener('abort', onAbort));
    }
    // Whatever cancels (cancel(), a failed step, the return path, the vIOMMU rule): one `cancelled`
    // event, and every listener removed once the devices are back.
    live.onCancel((reason, done) => {
      this.emit('cancelled', { reason });
      void done.finally(() => this.cleanup());
    });
  }

  /** Remove every listener this migration added (on the engine, the sink, the signal). Idempotent. */
  private cleanup(): void {
    this.unsub.splice(0).forEach((u) => u());
  }

  /**
   * Start a live migration of `engine`'s devices over `link` — a connected link, or a function
   * that connects one, called once the options are checked (bad options never reach a peer) —:
   * the handshake (the destination checks every device and refuses before anything here is
   * touched), then every device with PRE_COPY to PRE_COPY. Errors: the options'
   * (checkMigrateOptions), the connection's, the destination's refusal (EVFIO_PEER_REFUSED, kind
   * 'mismatch' for incompatible devices), the engine's blockers, a failure of the return path
   * before this resolves (the destination's ERROR, a frame that breaks the protocol: the same
   * error a `cancelled` event would carry later); on any of them the devices run on as they
   * were, and the error's `deviceState` says so.
   */
  static async start(engine: MigrationEngine, connection: FrameLink | (() => Promise<FrameLink>), opts: MigrateOptions = {}): Promise<LiveMigration> {
    try {
      checkMigrateOptions(opts);
    } catch (e) {
      if (typeof connection !== 'function') await connection.close().catch(() => undefined);
      throw e;
    }
    const link = typeof connection === 'function' ? await engine.untouchedOnFailure(connection()) : connection;
    const sink = new LiveSink(link, { ...opts, stopCopyBytes: (i) => safeSize(engine.devices[i]) });
    const warnings: Array<{ code: string; devices: string[]; message: string }> = [];
    const onWarning = (w: { code: string; devices: string[]; message: string }): void => void warnings.push(w);
    engine.on('warning', onWarning);
    let live: LiveSave;
    try {
      live = await engine.beginLiveSave(sink);
    } catch (e) {
      await link.close().catch(() => undefined);
      throw e;
    } finally {
      engine.off('warning', onWarning);
    }
    const m = new LiveMigration(engine, sink, live, opts);
    m.warnings = warnings;
    if (opts.signal?.aborted) await m.cancel(abortedError('migrate', opts.signal));
    // The return path failed during the setup (the destination's ERROR or a bad frame right after
    // its ACCEPT), before this migration listened for it: it cannot go on, and the caller hears
    // it here rather than through an event it had no chance to listen for.
    const failed = sink.failed;
    if (failed !== undefined && m.state === 'precopy') {
      await m.cancel(failed);
      throw failed instanceof VfioError ? failed.annotate({ deviceState: engine.describeDevices(true) }) : failed;
    }
    return m;
  }

  /** What the setup warned about (a relaxed vIOMMU blocker), as the engine's `warning` events said it. */
  warnings: ReadonlyArray<{ code: string; devices: string[]; message: string }> = [];

  /** The downtime limit in ms. */
  get downtimeLimitMs(): number {
    return this.opts.downtimeLimitMs ?? DEFAULT_DOWNTIME_LIMIT_MS;
  }

  /** Whether the devices allow the switchover now: see Pending.ready. */
  get switchoverReady(): boolean {
    return this.pending().ready;
  }

  /** Where the migration stands: 'precopy', 'switchover', 'done', 'cancelled' or 'failed'. */
  get state(): LiveSave['state'] {
    return this.live.state;
  }

  /** The pending figures now (a few ioctls). */
  pending(): Pending {
    // The destination owes a SWITCHOVER_ACK when it took the feature and some device has precopy
    // data; a device whose driver reported REINIT owes its initial data again (issue: PRECOPY_INFOv2),
    // whether or not the ack of the earlier data has arrived.
    const live = this.live.pending();
    const ackNeeded = this.sink.usesSwitchoverAck && this.needsAck() && (!this.sink.switchoverAcked || live.some((p) => p.initialPending));
    const devices = live.map((p, i) => ({ ...p, switchoverAckPending: ackNeeded && this.engine.devices[i].migration!.supportsPreCopy }));
    const totalBytes = devices.reduce((a, d) => a + d.precopyBytes + d.stopCopyBytes, 0);
    const estimatedDowntimeMs = (totalBytes / this.bandwidth) * 1000;
    const ackReceived = !ackNeeded;
    this.lastPending = { devices, totalBytes, bandwidth: this.bandwidth, estimatedDowntimeMs, ackReceived, ready: ackReceived && estimatedDowntimeMs <= this.downtimeLimitMs };
    return this.lastPending;
  }

  /** Whether any device has precopy data, so that a switchover-ack is owed at all. */
  private needsAck(): boolean {
    return this.engine.devices.some((d) => d.migration?.supportsPreCopy);
  }

  private checkReady(): Pending {
    const p = this.pending();
    if (p.ready && !this.readyEmitted) {
      this.readyEmitted = true;
      log('switchover ready: %d bytes pending, ~%d ms at %d MiB/s', p.totalBytes, p.estimatedDowntimeMs.toFixed(1), (p.bandwidth / 2 ** 20).toFixed(0));
      this.emit('switchover-ready', p);
    } else if (!p.ready) {
      this.readyEmitted = false;
    }
    return p;
  }

  /**
   * One precopy round: every PRE_COPY device's data sent as far as it has any now. Updates the
   * bandwidth from the round (when it moved enough to measure). Resolves with the bytes sent and
   * the pending figures after it.
   */
  async iterate(): Promise<{ bytes: number; pending: Pending; dirty?: DirtySync }> {
    const t0 = performance.now();
    const r = await this.live.round({ signal: this.opts.signal });
    const secs = (performance.now() - t0) / 1000;
    const bytes = [...r.bytes.values()].reduce((a, b) => a + b, 0);
    if (bytes >= MIN_MEASURED_BYTES && secs > 0) {
      const bw = bytes / secs;
      this.bandwidth = this.measured ? 0.5 * this.bandwidth + 0.5 * bw : bw;
      this.measured = true;
    }
    this.iterations++;
    const dirty = this.live.tracksDirty ? await this.syncDirty() : undefined;
    const pending = this.checkReady();
    this.emit('iteration', { iteration: this.iterations, bytes, pending, dirtyPages: dirty?.pages });
    return { bytes, pending, dirty };
  }

  /**
   * Read and clear the pages the devices' DMA dirtied since the previous sync (iterate() calls it
   * after each round); emitted as `dirty`. A VMM whose RAM loop syncs KVM's log more often calls
   * it there. Errors: a failed report under onReportError 'fail' (the migration is cancelled and
   * the source runs on), EVFIO_BUSY while a round or the switchover runs.
   */
  async syncDirty(): Promise<DirtySync> {
    const s = await this.live.syncDirty();
    this.lastDirtyPages = s.pages;
    this.emit('dirty', s);
    return s;
  }

  /**
   * The switchover, once the VMM has stopped its vCPUs: see LiveSave.switchover(). Waits for
   * the destination's LOADED (and RESUMED when it announced it). The devices stay in STOP (their
   * state now lives on the destination): the VMM ends the source VM, or `engine.resume()` runs
   * them again. On failure every device runs again with its state intact, and the error says so;
   * except EVFIO_OUTCOME_UNKNOWN (silence after END from a destination that runs its devices
   * itself, before its RESUMED): they stay in STOP, to be resumed only if the destination does
   * not run them.
   * EVFIO_SWITCHOVER_ACK_PENDING while the switchover-ack is owed: nothing changes, iterate on.
   */
  async switchover(): Promise<MigrationResult> {
    if (this.live.state === 'precopy') {
      // The gate, checked once more now (PRECOPY_INFO asked again: a REINIT closes it).
      const p = this.pending();
      if (!p.ackReceived) {
        throw new VfioError('the destination has not acknowledged every device\'s initial data yet (switchover-ack; again after a REINIT): iterate until it has; the migration goes on', {
          code: 'EVFIO_SWITCHOVER_ACK_PENDING', step: 'migrate:switchover',
        });
      }
    }
    this.phase = 'stop-copy';
    let sw: SwitchoverResult;
    try {
      sw = await this.live.switchover({
        signal: this.opts.signal,
        onFinalDirty: (s) => {
          this.lastDirtyPages = s.pages;
          this.emit('dirty', s);
        },
      });
    } finally {
      if (this.live.state === 'done' || this.live.state === 'failed') this.cleanup();
    }
    this.emit('downtime', { ms: sw.downtimeMs });
    const precopyBytes = sw.devices.reduce((a, d) => a + d.precopyBytes, 0);
    const stopCopyBytes = sw.devices.reduce((a, d) => a + d.stopCopyBytes, 0);
    await this.sink.link.close().catch(() => undefined);
    return {
      downtimeMs: sw.downtimeMs, iterations: this.iterations, precopyBytes, stopCopyBytes, totalBytes: precopyBytes + stopCopyBytes,
      devices: sw.devices, destinationResumed: this.sink.destinationResumes, dirty: sw.dirty,
    };
  }

  /**
   * Iterate until the devices allow the switchover (or a limit), then call `beforeSwitchover`
   * (the VMM stops its vCPUs) and switch over. At the iteration or time limit without
   * convergence: cancel (EVFIO_NOT_CONVERGED, the devices run on) or, with onLimit
   * 'switchover', switch over anyway.
   */
  async run(beforeSwitchover?: () => Promise<void> | void): Promise<MigrationResult> {
    const maxIterations = this.opts.maxIterations ?? 100;
    for (;;) {
      await this.iterateUntilReady(maxIterations);
      // The gate once more before the VMM stops its vCPUs: a REINIT may have come since.
      if (this.pending().ackReceived) break;
    }
    await beforeSwitchover?.();
    return this.switchover();
  }

  /** run()'s precopy loop: until the devices allow the switchover, or a limit (then onLimit). */
  private async iterateUntilReady(maxIterations: number): Promise<void> {
    if (!this.live.hasPrecopy) {
      // No device has PRE_COPY: a round would move nothing and cannot shorten the switchover, so
      // no round is run and the downtime limit is not waited for (Cloud Hypervisor's stop-copy-only
      // case); the final dirty sync in the switchover reports every page since the start.
      const p = this.checkReady();
      log('no device has PRE_COPY: switching over with ~%d ms of device downtime estimated', p.estimatedDowntimeMs.toFixed(1));
      return;
    }
    for (;;) {
      const { bytes, pending } = await this.iterate();
      if (pending.ready) break;
      const overTime = this.opts.maxTimeMs !== undefined && Date.now() - this.startedAt >= this.opts.maxTimeMs;
      if (this.iterations >= maxIterations || overTime) {
        const why = overTime ? `${this.opts.maxTimeMs} ms` : `${maxIterations} iterations`;
        if (this.opts.onLimit === 'switchover' && pending.ackReceived) {
          log('no convergence after %s (~%d ms of downtime pending): switching over anyway', why, pending.estimatedDowntimeMs.toFixed(1));
          break;
        }
        const err = new VfioError(
          `the devices did not converge after ${why}: ${pending.totalBytes} bytes pending, ~${pending.estimatedDowntimeMs.toFixed(0)} ms of downtime at ${(pending.bandwidth / 2 ** 20).toFixed(1)} MiB/s against a limit of ${this.downtimeLimitMs} ms${pending.ackReceived ? '' : ', and no switchover-ack yet'}`,
          { code: 'EVFIO_NOT_CONVERGED', step: 'migrate:precopy' },
        );
        await this.cancel(err);
        throw err.annotate({ deviceState: this.engine.describeDevices(true) });
      }
      if (bytes === 0) await new Promise((r) => setTimeout(r, this.opts.idleMs ?? 20));
    }
  }

  /**
   * Give up: the destination is told, every device runs on with its state intact. Before END is
   * sent; after it, the destination's answer decides (see LiveSave.cancel()). Never throws.
   */
  async cancel(reason?: unknown): Promise<void> {
    await this.live.cancel(reason);
    this.cleanup();
  }
}

/**
 * Refuse options no migration can honour, before any connection is made: postcopy
 * (EVFIO_POSTCOPY: a VFIO device's state must be whole on the destination before it runs; QEMU
 * refuses it too) and limits that are not positive numbers (EVFIO_USAGE).
 */
export function checkMigrateOptions(opts: MigrateOptions): void {
  if (opts.postcopy) {
    throw new VfioError('postcopy migration is not possible with VFIO devices: their state must be complete on the destination before it runs (QEMU refuses it too)', {
      code: 'EVFIO_POSTCOPY', step: 'migrate',
    });
  }
  for (const [name, v] of [['downtimeLimitMs', opts.downtimeLimitMs], ['bandwidth', opts.bandwidth], ['maxIterations', opts.maxIterations], ['maxTimeMs', opts.maxTimeMs]] as const) {
    if (v !== undefined && !(typeof v === 'number' && v > 0 && Number.isFinite(v))) throw new VfioError(`${name} must be a positive number, not ${String(v)}`, { code: 'EVFIO_USAGE' });
  }
}

/** VFIO_DEVICE_FEATURE_MIG_DATA_SIZE of a device for the HELLO, or undefined. */
function safeSize(d: MigrationEngine['devices'][number]): number | undefined {
  try {
    return d.migration?.dataSize() ?? UNKNOWN_SIZE;
  } catch {
    return undefined;
  }
}

export interface IncomingOptions extends LiveSourceOptions {
  /** Run the devices once loaded, and report RESUMED to the source (what `vfio-pci incoming` does). */
  resume?: boolean;
  signal?: AbortSignal;
}

export interface IncomingResult extends LoadResult {
  /** The devices were run (`resume`). */
  resumed: boolean;
  /** What the source said the migration moved and cost (its END). */
  source: SaveSummary;
}

/**
 * The destination's side of one live migration over `link`: read the HELLO, pair the devices by
 * id and check each (identity, config space under this side's own masks) before anything is
 * touched — a refusal goes back to the source before it has paused — then one RUNNING →
 * RESUMING per device, ACCEPT, the state loaded as it arrives (each frame's checksum checked
 * before it reaches the device), the switchover-ack once every device's initial data is in, the
 * models applied (BARs, PCI_COMMAND, SET_IRQS) and LOADED. The devices stay in RESUMING unless
 * `resume`. A failure before LOADED, or in running them, resets every device (none runs) and
 * tells the source (ERROR; CANCEL when cancelled), which resumes; a LOADED that cannot be sent
 * resets them too and sends nothing. A RESUMED that cannot be sent leaves them running (the
 * source: EVFIO_OUTCOME_UNKNOWN).
 * `engineOf` may be a function of the source's devices (from its HELLO) that makes the engine:
 * the CLI pairs one unnamed device with a one-device source that way.
 */
export async function receiveMigration(
  engineOf: MigrationEngine | ((saved: readonly SavedDevice[]) => MigrationEngine),
  link: FrameLink,
  opts: IncomingOptions = {},
): Promise<IncomingResult> {
  const onAbort = (): void => link.abort(opts.signal?.reason);
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  let source: LiveSource | undefined;
  try {
    source = await LiveSource.open(link, { ...opts, resumes: opts.resume });
    let engine: MigrationEngine;
    try {
      engine = typeof engineOf === 'function' ? engineOf(source.devices()) : engineOf;
    } catch (e) {
      await source.abort(e);
      throw e;
    }
    const loaded = await engine.load(source, { signal: link.signal });
    try {
      await source.loaded(loaded.devices.map((d) => ({ id: d.id, bytes: d.stateBytes })));
    } catch (e) {
      // The source cannot know the load is complete, so it resumes its own devices: these must
      // never run with the state (every device reset, nothing mapped or armed).
      await engine.discardLoad('load:loaded');
      throw e;
    }
    if (!opts.resume) return { ...loaded, resumed: false, source: source.summary };
    try {
      await engine.resume();
    } catch (e) {
      await source.abort(e);
      throw e;
    }
    // The devices run. If RESUMED cannot be sent, the source sees the connection lost after LOADED
    // (EVFIO_OUTCOME_UNKNOWN) and leaves its devices stopped: no second copy runs.
    await source.resumedDevices().catch((e) => log('RESUMED not sent (%s): the source will not resume its devices', (e as Error).message));
    return { ...loaded, resumed: true, source: source.summary };
  } finally {
    opts.signal?.removeEventListener('abort', onAbort);
    await link.close().catch(() => undefined);
  }
}

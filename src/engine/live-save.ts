/**
 * A live save: the source half of a live migration, on the engine's devices, into a stream
 * (src/live). The VMM owns RAM and vCPUs and decides when to switch over; this object owns the
 * devices' migration states and what their data_fds hand out. Made by
 * `MigrationEngine.beginLiveSave()`, which has already sent the devices' records (the
 * destination's verdict came back) and taken every device with PRE_COPY to PRE_COPY.
 *
 * Rules (include/uapi/linux/vfio.h "VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE", "PRE_COPY",
 * "VFIO_MIG_GET_PRECOPY_INFO"; QEMU hw/vfio/migration.c vfio_save_iterate(),
 * vfio_state_pending_exact(), vfio_save_complete_precopy(); VFIO-NOTES "Live migration"):
 *  - a round reads what each PRE_COPY device has now: read() == 0 or ENOMSG is "nothing more for
 *    now", not the end;
 *  - pending per device: precopy = initial_bytes + dirty_bytes (VFIO_MIG_GET_PRECOPY_INFO),
 *    stop-copy = VFIO_DEVICE_FEATURE_MIG_DATA_SIZE less that; a failing query counts as
 *    UNKNOWN_SIZE (100 GiB, QEMU's default), never 0, so that a downtime limit is never broken
 *    on a guess;
 *  - the initial data of a device is sent once its `initial_bytes` reads 0 after a round
 *    (StateSink.initialSent); with PRECOPY_INFOv2 a REINIT flag means it must be sent again
 *    (StateSink.reinit);
 *  - switchover: every device to PRE_COPY_P2P (or RUNNING_P2P) before any goes to STOP_COPY
 *    (P2P devices); every device to STOP_COPY before any is drained (QEMU stops them all in its
 *    VM state change handler, then drains each in vfio_save_complete_precopy()), so that the
 *    final dirty-page sync comes when no device can DMA any more; each drained to its end, the
 *    models after all the states ("config last"), and STOP_COPY → STOP only after the data is
 *    out, so that it adds no downtime. The downtime is measured from the first device leaving
 *    PRE_COPY (or RUNNING) to the last device's state sent;
 *  - dirty tracking (./dirty.ts) runs from setup; syncDirty() reads it in precopy, the
 *    switchover makes the final sync and stops it; a cancel stops it;
 *  - cancel, until the switchover sends END: every device back to RUNNING with its state intact
 *    (PRE_COPY(_P2P) → RUNNING; STOP_COPY / STOP → RUNNING through RUNNING_P2P), the stream
 *    aborted (the destination resets its devices). A cancel from outside a running step (the
 *    VMM's signal, a vIOMMU mapping under viommu 'relaxed') is what that step, and every later
 *    call, throws. After END the destination's answer decides and cancel() only waits for it;
 *    EVFIO_OUTCOME_UNKNOWN (silence from a destination that runs its devices itself) leaves
 *    every device in STOP (docs/live-protocol.md "After END").
 */
import { VfioError } from '../base/errors';
import { logger } from '../base/log';
import type { DataSession } from '../kernel/migration';
import { MigState, VFIO_PRECOPY_INFO_REINIT } from '../kernel/uapi/vfio';
import type { MigratableDevice } from '../model/migratable';
import type { DataFdTarget, Progress, StateSink } from './stream';
import type { DirtySummary, DirtySync, DirtyTracker } from './dirty';

const log = logger('engine:live');

/** What a failing size query counts as, in bytes (QEMU's VFIO default stop-copy size: 100 GiB). */
export const UNKNOWN_SIZE = 100 * 2 ** 30;

/** One device's pending figures, in bytes. */
export interface DevicePending {
  /** The device's id. */
  device: string;
  /** PRE_COPY data the device has not handed over yet: initial + dirty (0 without PRE_COPY). */
  precopyBytes: number;
  /** Of which initial data (must be sent before the switchover-ack can come). */
  initialBytes: number;
  /** What the switchover would still have to move: MIG_DATA_SIZE less `precopyBytes` (UNKNOWN_SIZE when the query fails). */
  stopCopyBytes: number;
  /** Its initial data has not been sent completely yet (the switchover-ack cannot come before). */
  initialPending: boolean;
}

/** What one precopy round moved. */
export interface RoundResult {
  /** Bytes of state moved this round, per device id. */
  bytes: Map<string, number>;
  /** Pending after the round. */
  pending: DevicePending[];
}

/** What the switchover moved and cost. */
export interface SwitchoverResult {
  /** ms from the first device leaving PRE_COPY (or RUNNING) to the last device's state sent. */
  downtimeMs: number;
  devices: Array<{ id: string; precopyBytes: number; stopCopyBytes: number }>;
  /** The final dirty-page sync (after every device stopped), when anything was tracked. */
  finalDirty?: DirtySync;
  /** What dirty tracking did over the migration. */
  dirty: DirtySummary;
}

/** The engine's internals a live save uses (MigrationEngine.beginLiveSave() hands them over). */
export interface LiveSaveOps {
  readonly devices: readonly MigratableDevice[];
  readonly usesP2P: boolean;
  /** One state request on a device, recorded as touching it. */
  set(d: MigratableDevice, target: MigState): Promise<DataSession | undefined>;
  target(d: MigratableDevice, session: DataSession | undefined): DataFdTarget;
  /** Every device back to RUNNING (P2P order), recovering where a request fails. */
  returnToRunning(step: string): Promise<void>;
  /** `e` annotated with the step and every device's outcome. */
  fail(e: unknown, step: string): unknown;
  progress(p: Progress): void;
  /** The engine is free again. */
  release(ok: boolean): void;
  /** The devices' dirty-page tracking, started. */
  readonly dirty: DirtyTracker;
}

export interface LiveSaveRoundOptions {
  signal?: AbortSignal;
}

export interface SwitchoverOptions extends LiveSaveRoundOptions {
  /** The final dirty-page sync, as soon as every device is in STOP_COPY (the VMM can send RAM while the devices drain). */
  onFinalDirty?: (s: DirtySync) => void;
}

type Phase = 'precopy' | 'switchover' | 'done' | 'cancelled' | 'failed';

export class LiveSave {
  private phase: Phase = 'precopy';
  /** Devices in a PRE_COPY session, by index. */
  private readonly precopy = new Set<number>();
  private readonly sentPre = new Map<number, number>();
  private readonly initialDone = new Set<number>();
  private busy = false;
  private rounds = 0;
  /** Devices whose driver reported REINIT since the last round acted on it (the flag is reported once). */
  private readonly reinitSeen = new Set<number>();
  /** Why the save was cancelled (the first reason), and the cancel in progress. */
  private cancelReason?: unknown;
  private cancelling?: Promise<void>;
  /** Aborted by cancel(): the step in flight stops at its next state change or transfer. */
  private readonly ac = new AbortController();
  /** The step in flight (its work, not its clean-up): cancel() waits for it before undoing anything. */
  private inflight?: Promise<unknown>;
  /** The destination had every device's state when the connection was lost (EVFIO_OUTCOME_UNKNOWN): never undo. */
  private committed = false;
  /** The switchover sent END: from then on the destination's answer decides, not cancel(). */
  private pastEnd = false;
  /** ops.release() once. */
  private released = false;
  private readonly cancelListeners: Array<(reason: unknown, done: Promise<void>) => void> = [];

  /** @internal MigrationEngine.beginLiveSave() makes it. */
  constructor(
    private readonly ops: LiveSaveOps,
    readonly sink: StateSink,
    precopy: readonly number[],
  ) {
    for (const i of precopy) this.precopy.add(i);
    ops.dirty.watch((e) => void this.cancel(e));
  }

  /**
   * Tell `fn` when a cancel begins, whatever started it (cancel(), a failed step, the vIOMMU
   * rule), with the reason and the promise of the undo.
   */
  onCancel(fn: (reason: unknown, done: Promise<void>) => void): void {
    this.cancelListeners.push(fn);
  }

  /** Whether any device has PRE_COPY (otherwise rounds move nothing and cannot shorten the switchover). */
  get hasPrecopy(): boolean {
    return this.precopy.size > 0;
  }

  /** Whether any device's DMA is tracked or reported (some device has DMA memory). */
  get tracksDirty(): boolean {
    return this.ops.dirty.active;
  }

  /**
   * Read and clear the dirty pages the devices' DMA wrote since the previous sync (see
   * DirtyTracker.sync()). A failure under onReportError 'fail' cancels the save and throws.
   */
  async syncDirty(): Promise<DirtySync> {
    return this.step('precopy', 'migrate:dirty-sync', (signal) => {
      signal.throwIfAborted();
      return this.ops.dirty.sync();
    }, undefined);
  }

  /** 'precopy' until switchover() or cancel(); then 'done', 'cancelled' or 'failed'. */
  get state(): Phase {
    return this.phase;
  }

  /** Whether every PRE_COPY device's initial data has been sent (there is nothing to wait for otherwise). */
  get initialSent(): boolean {
    return [...this.precopy].every((i) => this.initialDone.has(i));
  }

  /**
   * The pending figures of every device now, in bytes (two ioctls per device:
   * VFIO_MIG_GET_PRECOPY_INFO and VFIO_DEVICE_FEATURE_MIG_DATA_SIZE). A device whose driver
   * reported REINIT (PRECOPY_INFOv2) has its initial data pending again at once: the switchover
   * gate closes as soon as the flag is seen, not only after the next round.
   */
  pending(): DevicePending[] {
    return this.ops.devices.map((d, i) => {
      const mig = d.migration!;
      let initialBytes = 0;
      let precopyBytes = 0;
      if (this.precopy.has(i) && this.phase === 'precopy') {
        try {
          const info = this.precopyInfo(i);
          initialBytes = info.initialBytes;
          precopyBytes = info.initialBytes + info.dirtyBytes;
        } catch (e) {
          log('%s: precopy info failed (%s): counted as %d bytes', d.id, (e as Error).message, UNKNOWN_SIZE);
          precopyBytes = UNKNOWN_SIZE;
        }
      }
      let stopCopyBytes: number;
      try {
        const size = mig.dataSize();
        stopCopyBytes = size === undefined ? UNKNOWN_SIZE : Math.max(0, size - precopyBytes);
      } catch (e) {
        log('%s: MIG_DATA_SIZE failed (%s): counted as %d bytes', d.id, (e as Error).message, UNKNOWN_SIZE);
        stopCopyBytes = UNKNOWN_SIZE;
      }
      return { device: d.id, precopyBytes, initialBytes, stopCopyBytes, initialPending: this.precopy.has(i) && (!this.initialDone.has(i) || this.reinitSeen.has(i)) };
    });
  }

  /**
   * One precopy round: every PRE_COPY device's data_fd read to its temporary end and sent; then
   * each device whose initial data is now all sent is announced (StateSink.initialSent), and one
   * whose driver reports REINIT (PRECOPY_INFOv2) is announced again (StateSink.reinit). A failure
   * cancels the whole save (every device back to RUNNING) and throws.
   */
  async round(opts: LiveSaveRoundOptions = {}): Promise<RoundResult> {
    return this.step('precopy', 'migrate:precopy', async (signal) => {
      const bytes = new Map<string, number>();
      for (const [i, d] of this.ops.devices.entries()) {
        if (!this.precopy.has(i)) continue;
        signal.throwIfAborted();
        const mig = d.migration!;
        const before = this.sentPre.get(i) ?? 0;
        const r = await this.sink.writeState(i, this.ops.target(d, mig.session), {
          precopy: true, signal,
          onProgress: (b) => this.ops.progress({ device: d.id, phase: 'save', bytes: before + b }),
        });
        this.sentPre.set(i, before + r.bytes);
        bytes.set(d.id, r.bytes);
        signal.throwIfAborted();
        const info = this.precopyInfo(i);
        if (this.reinitSeen.delete(i) && this.initialDone.has(i)) {
          // VFIO_PRECOPY_INFO_REINIT: new initial data; the switchover-ack must be earned again.
          this.initialDone.delete(i);
          await this.sink.reinit?.(i);
          log('%s: REINIT: new initial data (%d bytes)', d.id, info.initialBytes);
        }
        if (info.initialBytes === 0 && !this.initialDone.has(i)) {
          this.initialDone.add(i);
          await this.sink.initialSent?.(i);
          log('%s: initial data sent (%d bytes so far)', d.id, this.sentPre.get(i));
        }
      }
      this.rounds++;
      return { bytes, pending: this.pending() };
    }, undefined, opts.signal);
  }

  /**
   * The switchover, once the VMM has stopped its vCPUs: P2P quiesce, each device's stop-copy data
   * drained and sent, the models, STOP_COPY → STOP, and the sink finished (a live stream waits
   * for the destination's LOADED). The devices stay in STOP. A failure before the sink finished
   * cancels the whole save (every device back to RUNNING, state intact) and throws.
   */
  async switchover(opts: SwitchoverOptions = {}): Promise<SwitchoverResult> {
    return this.step('precopy', 'migrate:switchover', async (signal) => {
      this.phase = 'switchover';
      const { devices, usesP2P, dirty } = this.ops;
      const t0 = performance.now();
      if (usesP2P) {
        for (const [i, d] of devices.entries()) {
          signal.throwIfAborted();
          await this.ops.set(d, this.precopy.has(i) ? MigState.PRE_COPY_P2P : MigState.RUNNING_P2P);
        }
      }
      const sessions: Array<DataSession | undefined> = [];
      for (const d of devices) {
        signal.throwIfAborted();
        sessions.push(await this.ops.set(d, MigState.STOP_COPY));
      }
      let finalDirty: DirtySync | undefined;
      if (dirty.active) {
        signal.throwIfAborted();
        finalDirty = await dirty.sync(true);
        opts.onFinalDirty?.(finalDirty);
      }
      await dirty.stop();
      const stopCopy = new Map<number, number>();
      for (const [i, d] of devices.entries()) {
        signal.throwIfAborted();
        const session = sessions[i];
        const before = this.sentPre.get(i) ?? 0;
        const r = await this.sink.writeState(i, this.ops.target(d, session), {
          signal,
          onProgress: (b) => this.ops.progress({ device: d.id, phase: 'save', bytes: before + b }),
        });
        stopCopy.set(i, r.bytes);
        await this.sink.endState(i);
      }
      const downtimeMs = performance.now() - t0;
      for (const [i, d] of devices.entries()) {
        signal.throwIfAborted();
        const model = d.saveModel();
        if (model) await this.sink.writeModel(i, model);
      }
      for (const d of devices) {
        signal.throwIfAborted();
        await this.ops.set(d, MigState.STOP);
        d.migration!.closeSession();
      }
      signal.throwIfAborted();
      const sum = (m: Map<number, number>): number => [...m.values()].reduce((a, b) => a + b, 0);
      // From END on the destination may hold every device's state: a cancel() now waits for its
      // answer instead of undoing (LOADED: done; its ERROR or no answer: undone; the connection
      // lost after LOADED: EVFIO_OUTCOME_UNKNOWN, nothing undone).
      this.pastEnd = true;
      try {
        await this.sink.finish({ downtimeMs, iterations: this.rounds, precopyBytes: sum(this.sentPre), stopCopyBytes: sum(stopCopy) });
      } catch (e) {
        if (e instanceof VfioError && e.code === 'EVFIO_OUTCOME_UNKNOWN') this.committed = true;
        throw e;
      }
      log('switchover: device downtime %d ms', downtimeMs.toFixed(2));
      return {
        downtimeMs,
        devices: devices.map((d, i) => ({ id: d.id, precopyBytes: this.sentPre.get(i) ?? 0, stopCopyBytes: stopCopy.get(i) ?? 0 })),
        finalDirty,
        dirty: dirty.summary(),
      };
    }, 'done', opts.signal);
  }

  /**
   * Give up: before the switchover sent END, the stream aborted (a live destination resets its
   * devices) and every device back to RUNNING with its state intact; after END, nothing undone:
   * wait for the switchover in flight, whose result is the destination's answer. Idempotent;
   * never throws.
   */
  async cancel(reason: unknown = new VfioError('migration cancelled', { code: 'ECANCELED', kind: 'cancelled' })): Promise<void> {
    if (this.cancelling) return this.cancelling;
    if (this.phase === 'done' || this.phase === 'failed') return;
    if (this.pastEnd) {
      // END is out: the destination's answer decides (see switchover()).
      await this.inflight?.catch(() => undefined);
      return;
    }
    this.phase = 'cancelled';
    this.cancelReason = reason;
    this.ac.abort(reason);
    this.cancelling = (async () => {
      // The step in flight stops at its next state change or transfer; undo only after it.
      await this.inflight?.catch(() => undefined);
      await this.ops.dirty.stop();
      await this.sink.abort(reason);
      await this.ops.returnToRunning('migrate:cancel');
      for (const d of this.ops.devices) d.migration?.closeSession();
      this.release(false);
    })();
    for (const fn of this.cancelListeners) fn(reason, this.cancelling);
    return this.cancelling;
  }

  /** What the dirty tracking did so far. */
  dirtySummary(): DirtySummary {
    return this.ops.dirty.summary();
  }

  /**
   * VFIO_MIG_GET_PRECOPY_INFO of device `i`, remembering a REINIT flag (PRECOPY_INFOv2), which
   * the driver reports once: whichever of pending() and round() sees it, round() acts on it.
   */
  private precopyInfo(i: number): ReturnType<NonNullable<MigratableDevice['migration']>['precopyInfo']> {
    const info = this.ops.devices[i].migration!.precopyInfo();
    if ((info.flags ?? 0) & VFIO_PRECOPY_INFO_REINIT) this.reinitSeen.add(i);
    return info;
  }

  /** The engine freed, once. */
  private release(ok: boolean): void {
    if (this.released) return;
    this.released = true;
    this.ops.release(ok);
  }

  /**
   * Run one step in `from`, with a signal that the caller's `callerSignal` and cancel() abort.
   * On failure cancel everything and throw the annotated error; a cancel from outside that came
   * while the step ran is what it throws. After EVFIO_OUTCOME_UNKNOWN nothing is undone.
   */
  private async step<T>(from: Phase, step: string, fn: (signal: AbortSignal) => Promise<T>, then?: Phase, callerSignal?: AbortSignal): Promise<T> {
    if (this.cancelling && this.cancelReason instanceof VfioError && !this.busy) {
      await this.cancelling;
      throw this.ops.fail(this.cancelReason, step);
    }
    if (this.phase !== from || this.busy) {
      throw new VfioError(`${step}: the live save is ${this.busy ? 'busy' : `in ${this.phase}`}`, { code: 'EVFIO_BUSY', step });
    }
    this.busy = true;
    const signal = callerSignal ? AbortSignal.any([callerSignal, this.ac.signal]) : this.ac.signal;
    const work = fn(signal);
    this.inflight = work;
    try {
      const r = await work;
      // A cancel that came after the step's last check: the cancel undoes it.
      if (this.cancelling) throw this.cancelReason;
      if (then) {
        this.phase = then;
        this.release(true);
      }
      return r;
    } catch (e) {
      if (this.committed) {
        this.phase = 'failed';
        await this.sink.abort(e); // closes the connection; says nothing (LiveSink.abort)
        await this.ops.dirty.stop();
        for (const d of this.ops.devices) d.migration?.closeSession();
        this.release(false);
        throw this.ops.fail(e, step);
      }
      // The destination answered END with its ERROR (or END never went out): undo like any failure.
      this.pastEnd = false;
      // Cancelled from outside while this step ran: the cancel's reason is the error to report.
      const outside = this.cancelling !== undefined && this.cancelReason instanceof VfioError;
      const err = this.ops.fail(outside ? this.cancelReason : e, step);
      await this.cancel(err);
      if (!outside) this.phase = 'failed';
      throw this.ops.fail(err, step);
    } finally {
      this.busy = false;
      this.inflight = undefined;
    }
  }
}

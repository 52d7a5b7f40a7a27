/**
 * The migration engine: pause, save, load and resume for the devices of one VM, through a
 * device-state stream (./stream.ts: a snapshot file, or a live connection to another process).
 * The one orchestration of the library: `MigrationCoordinator`, `saveSnapshot`,
 * `restoreSnapshot` (src/vm) and the CLI are thin callers of it.
 *
 * Rules it keeps (each with its source):
 *  - P2P order (include/uapi/linux/vfio.h "VFIO_MIGRATION_P2P"; QEMU hw/vfio/migration.c
 *    vfio_vmstate_change_prepare()): a device in RUNNING_P2P no longer initiates DMA or
 *    interrupts to peers but still answers them, so with several devices all reach RUNNING_P2P
 *    before any goes to STOP, and on resume all leave STOP for RUNNING_P2P before any runs.
 *  - Blockers, reported before anything is touched: a device without migration support; several
 *    migratable devices of which one lacks P2P (the quiesce step cannot be done), unless the VMM
 *    passes `allowNonP2P` (QEMU's "multiple devices without P2P" migration blocker).
 *  - Pairing: a load pairs the stream's devices with the VM's by id (MigratableDevice.id, the
 *    saved DeviceRecord.id), never by position; a saved device without a destination, or a
 *    destination without saved state, is refused by name.
 *  - Checks before touching: every device's record (identity, config under its own masks) and,
 *    when the stream has it up front, its model, before the first device is asked anything.
 *  - One RUNNING → RESUMING request per device (the kernel walks RUNNING_P2P and STOP itself);
 *    the devices stay in RESUMING after a load until resume(): no STOP dwell (one VMM saw mlx5
 *    re-initialise its queues in STOP on top of the loaded state).
 *  - Recovery in one place (recoverDevice): a recovery state first, else VFIO_DEVICE_RESET
 *    (Migration.recover; QEMU vfio_migration_set_state()), then the device model's replay of what
 *    the reset wiped (PCI_COMMAND, interrupts). A load that fails — also at the RESUMING exit
 *    in resume(), where drivers validate the stream (mtty: EINVAL) — is undone on every device:
 *    model undone, VFIO_DEVICE_RESET, nothing armed, nothing mapped; a loaded device never runs.
 *  - Every error is a VfioError whose `deviceState` lists where each device of the VM was left.
 */
import { EventEmitter } from 'eventemitter3';
import { VfioError, type DeviceOutcome } from '../base/errors';
import { logger } from '../base/log';
import type { DataSession, StateChange } from '../kernel/migration';
import { DEFAULT_BUFFER_SIZE } from '../kernel/stream';
import { MigState, migStateName } from '../kernel/uapi/vfio';
import type { MigratableDevice, ModelPlan } from '../model/migratable';
import type { DataFdTarget, Progress, SavedDevice, StateSink, StateSource } from './stream';
import { LiveSave } from './live-save';
import { DirtyTracker, planDirtyTracking, type DirtyPlan, type DirtyTrackingOptions } from './dirty';

const log = logger('engine');

/** Something that prevents a migration, found before any device is touched. */
export interface Blocker {
  code: 'EVFIO_NOT_MIGRATABLE' | 'EVFIO_NO_P2P' | 'EVFIO_VIOMMU' | 'EVFIO_NO_DIRTY_TRACKING';
  /** Ids of the devices concerned. */
  devices: string[];
  message: string;
}

/** The engine's jobs, as its `phase` events name them. */
export type EnginePhase = 'pause' | 'save' | 'load' | 'resume' | 'migrate';

export interface EngineEvents {
  /** A migration state change of a device, with the arcs the kernel walked; `device` is the device's id. */
  state: (change: StateChange) => void;
  /** Bytes of a device's state moved. */
  progress: (p: Progress) => void;
  /** A blocker found (emitted before the job throws it). */
  blocker: (b: Blocker) => void;
  /** Something allowed that may still end the job (a relaxed vIOMMU blocker), said at setup. */
  warning: (w: Blocker) => void;
  /** A job began or ended (done or failed); `ms` is its duration, on the end event. */
  phase: (p: { phase: EnginePhase; done: boolean; ms?: number }) => void;
  /** A device was brought back after a failed step; `reset`: VFIO_DEVICE_RESET was needed. */
  recovered: (r: { device: string; step: string; state: MigState; reset: boolean }) => void;
}

export interface EngineOptions {
  /** Accept several migratable devices without P2P support (they are then stopped one by one). */
  allowNonP2P?: boolean;
  /**
   * Dirty-page tracking of the devices' DMA during a live migration (./dirty.ts): the method,
   * the policies for untracked devices and failed reports, and the vIOMMU rule. Checked by
   * blockers({ live: true }); bad values are EVFIO_USAGE.
   */
  dirtyTracking?: DirtyTrackingOptions;
}

export interface SaveOptions {
  /** Cancels the save: the transfer stops, the stream is aborted, the devices return to STOP. */
  signal?: AbortSignal;
}

export interface LoadOptions {
  /** Cancels the load: the transfer stops and every device is reset (it never runs). */
  signal?: AbortSignal;
}

export interface ResumeOptions {
  /** Ids of devices to leave where they are (a device that was in STOP before a snapshot). */
  keep?: ReadonlySet<string>;
}

/** What a save moved, per device in the engine's order. */
export interface SaveResult {
  devices: Array<{ id: string; stateBytes: number; configBytes: number }>;
}

/** What a load moved, per device in the engine's order. */
export interface LoadResult {
  devices: Array<{ id: string; stateBytes: number; from: string }>;
}

/** The devices one job touched and reset: what its error reports. */
class Job {
  readonly touched = new Set<MigratableDevice>();
  readonly reset = new Set<MigratableDevice>();
}

export class MigrationEngine extends EventEmitter<EngineEvents> {
  private busy: EnginePhase | undefined;
  /** Set by a successful load, until resume() runs the devices or the load is abandoned. */
  private loaded = false;
  private readonly unsubscribe: Array<() => void> = [];

  /**
   * @param devices the VM's devices, each with a unique id (EVFIO_DUPLICATE_ID otherwise)
   */
  constructor(
    readonly devices: readonly MigratableDevice[],
    private readonly opts: EngineOptions = {},
  ) {
    super();
    const seen = new Set<string>();
    for (const d of devices) {
      if (seen.has(d.id)) throw new VfioError(`two devices have the id ${d.id}: ids pair devices with their saved state and must be unique`, { code: 'EVFIO_DUPLICATE_ID', device: d.id });
      seen.add(d.id);
    }
    for (const d of devices) {
      const mig = d.migration;
      if (!mig) continue;
      const fn = (c: StateChange): void => {
        this.emit('state', { ...c, device: d.id });
      };
      mig.on('state', fn);
      this.unsubscribe.push(() => mig.off('state', fn));
    }
  }

  /** Stop forwarding the devices' events. The devices stay as they are. */
  dispose(): void {
    this.unsubscribe.splice(0).forEach((u) => u());
    this.removeAllListeners();
  }

  /** Whether the P2P quiesce step is used: more than one device and all support P2P. */
  get usesP2P(): boolean {
    return this.devices.length > 1 && this.devices.every((d) => d.migration?.supportsP2P);
  }

  /** True between a successful load() and the resume() that runs the devices. */
  get hasLoadedState(): boolean {
    return this.loaded;
  }

  /**
   * What prevents a snapshot or migration now (empty: nothing). With `live`, also what prevents
   * a live migration: dirty tracking's blockers (planDirtyTracking(): the vIOMMU rule, untracked
   * devices under 'block', a forced method a device lacks). Probes only; nothing is touched.
   */
  blockers(opts: { live?: boolean } = {}): Blocker[] {
    return this.check(opts.live ?? false).blockers;
  }

  /** The dirty-tracking plan a live migration would use now (see ./dirty.ts). */
  planDirtyTracking(): DirtyPlan {
    return planDirtyTracking(this.devices, this.opts.dirtyTracking);
  }

  private check(live: boolean): { blockers: Blocker[]; warnings: Blocker[]; dirty?: DirtyPlan } {
    const out: Blocker[] = [];
    const noMig = this.devices.filter((d) => !d.migration).map((d) => d.id);
    if (noMig.length) out.push({ code: 'EVFIO_NOT_MIGRATABLE', devices: noMig, message: `${noMig.join(', ')} cannot be migrated (no VFIO migration support)` });
    const mig = this.devices.filter((d) => d.migration);
    const noP2P = mig.filter((d) => !d.migration!.supportsP2P).map((d) => d.id);
    if (mig.length > 1 && noP2P.length && !this.opts.allowNonP2P) {
      out.push({
        code: 'EVFIO_NO_P2P', devices: noP2P,
        message: `several migratable devices, and ${noP2P.join(', ')} cannot quiesce peer-to-peer traffic (no VFIO_MIGRATION_P2P); pass allowNonP2P to accept`,
      });
    }
    if (!live) return { blockers: out, warnings: [] };
    const dirty = this.planDirtyTracking();
    return { blockers: [...out, ...dirty.blockers], warnings: dirty.warnings, dirty };
  }

  /**
   * Throw the blockers as one VfioError (kind 'unsupported', every device untouched), emitting
   * each; emit the warnings. With `live`, the live-migration checks too; returns their
   * dirty-tracking plan.
   */
  assertMigratable(step: string, live = false): DirtyPlan | undefined {
    const c = this.check(live);
    c.blockers.forEach((x) => this.emit('blocker', x));
    if (c.blockers.length) {
      const b = c.blockers;
      throw new VfioError(b.map((x) => x.message).join('; '), { code: b[0].code, step, device: b[0].devices.join(','), deviceState: this.outcomes(new Job()) });
    }
    c.warnings.forEach((w) => {
      log('warning: %s', w.message);
      this.emit('warning', w);
    });
    return c.dirty;
  }

  /**
   * Pause every device: all to RUNNING_P2P first (P2P), then all to STOP. Devices already in
   * STOP stay there; a device in another state (RESUMING, a saving state, ERROR) is refused
   * before anything is touched (EVFIO_BAD_TRANSITION). When one fails (it is recovered), the
   * devices already quiesced or stopped are brought back to RUNNING too, leaving STOP through
   * RUNNING_P2P: no half-paused VM.
   */
  pause(): Promise<void> {
    return this.exclusive('pause', async (job) => {
      this.assertMigratable('pause');
      const states = this.devices.map((d) => d.migration!.getState());
      const odd = this.devices.filter((_, i) => ![MigState.RUNNING, MigState.RUNNING_P2P, MigState.STOP].includes(states[i]));
      if (odd.length) {
        throw new VfioError(`pause needs running devices; ${odd.map((d) => `${d.id} is in ${migStateName(d.migration!.getState())}`).join(', ')}`, {
          code: 'EVFIO_BAD_TRANSITION', step: 'pause', deviceState: this.outcomes(job),
        });
      }
      try {
        if (this.usesP2P) for (const [i, d] of this.devices.entries()) if (states[i] === MigState.RUNNING) await this.set(job, d, MigState.RUNNING_P2P);
        for (const d of this.devices) await this.set(job, d, MigState.STOP);
      } catch (e) {
        await this.returnToRunning(job, [...job.touched], 'pause:undo');
        throw this.fail(e, job, 'pause');
      }
    });
  }

  /**
   * Run every device: all leave STOP (or RESUMING) for RUNNING_P2P first (P2P), then all go to
   * RUNNING. After a load, this is where drivers validate the loaded stream (the RESUMING exit):
   * if any device fails, the whole load is undone — every device's model undone and the device
   * reset, none runs with the loaded state. Otherwise a device that fails is recovered to
   * RUNNING and the others still run. `keep`: ids of devices to leave where they are.
   */
  resume(opts: ResumeOptions = {}): Promise<void> {
    return this.exclusive('resume', async (job) => {
      const which = this.devices.filter((d) => !opts.keep?.has(d.id) && d.migration);
      const afterLoad = this.loaded;
      try {
        if (this.usesP2P) for (const d of which) await this.set(job, d, MigState.RUNNING_P2P);
        for (const d of which) await this.set(job, d, MigState.RUNNING);
      } catch (e) {
        if (afterLoad) await this.abandonLoad(job);
        else await this.returnToRunning(job, which, 'resume');
        throw this.fail(e, job, 'resume');
      }
      if (afterLoad) {
        this.loaded = false;
        for (const d of this.devices) d.commitLoad();
      }
    });
  }

  /**
   * Save every device (all paused: STOP) into `sink`: the records, then device after device
   * STOP → STOP_COPY, its data_fd drained to the end of its state, → STOP, then every device's
   * model state. The devices stay in STOP. On failure the sink is aborted and the devices are
   * brought back to STOP; the error lists where each was left.
   */
  save(sink: StateSink, opts: SaveOptions = {}): Promise<SaveResult> {
    return this.exclusive('save', async (job) => {
      this.assertMigratable('save');
      const notStopped = this.devices.filter((d) => d.migration!.getState() !== MigState.STOP);
      if (notStopped.length) {
        throw new VfioError(`saving needs every device paused (STOP); ${notStopped.map((d) => `${d.id} is in ${migStateName(d.migration!.getState())}`).join(', ')}`, {
          code: 'EVFIO_NOT_PAUSED', step: 'save', deviceState: this.outcomes(job),
        });
      }
      const result: SaveResult = { devices: [] };
      try {
        opts.signal?.throwIfAborted();
        const records = this.devices.map((d) => d.record());
        await sink.begin(records);
        for (const [i, d] of this.devices.entries()) {
          const mig = d.migration!;
          const expected = mig.dataSize();
          const session = await this.set(job, d, MigState.STOP_COPY);
          const { bytes } = await sink.writeState(i, this.targetOf(d, session, 'save'), {
            signal: opts.signal,
            onProgress: (b) => this.emit('progress', { device: d.id, phase: 'save', bytes: b, expected }),
          });
          await sink.endState(i);
          await this.set(job, d, MigState.STOP);
          result.devices.push({ id: d.id, stateBytes: bytes, configBytes: records[i].config.length });
          log('%s: saved %d bytes of device state into %s', d.id, bytes, sink.name);
        }
        for (const [i, d] of this.devices.entries()) {
          const model = d.saveModel();
          if (model) await sink.writeModel(i, model);
        }
        await sink.finish();
      } catch (e) {
        await sink.abort(e);
        for (const d of job.touched) {
          if (d.migration!.knownState !== MigState.STOP) await this.recoverDevice(job, d, MigState.STOP, 'save');
          d.migration!.closeSession();
        }
        throw this.fail(e, job, 'save');
      }
      return result;
    });
  }

  /**
   * Load the VM's devices from `source`, paired by id. Everything that can be checked is checked
   * before any device is touched: the pairing, every device's record and (when the source has it
   * up front) model. Then one RUNNING → RESUMING request per device, the state loaded as the
   * source delivers it (each piece's checksum checked before it reaches the device), and each
   * device's model applied (BARs at the saved addresses, PCI_COMMAND pushed, interrupts
   * re-armed). The devices stay in RESUMING: resume() runs them. On failure every device is
   * reset and its model undone; the error lists where each was left.
   */
  load(source: StateSource, opts: LoadOptions = {}): Promise<LoadResult> {
    return this.exclusive('load', async (job) => {
      let pairs: Map<MigratableDevice, SavedDevice>;
      try {
        this.assertMigratable('load');
        pairs = this.pair(source);
      } catch (e) {
        await source.abort?.(e);
        throw e;
      }
      const plans = new Map<MigratableDevice, ModelPlan>();
      try {
        for (const [d, s] of pairs) {
          d.checkRecord(s.record);
          if (!s.modelLater) plans.set(d, d.checkModel(s.model));
        }
      } catch (e) {
        await source.abort?.(e);
        throw this.fail(e, job, 'load:check');
      }
      const targets = new Map<number, DataFdTarget>();
      let step = 'load:resuming';
      try {
        opts.signal?.throwIfAborted();
        for (const [d] of pairs) await this.clearLeftover(job, d);
        for (const [d, s] of pairs) {
          const session = await this.set(job, d, MigState.RESUMING);
          targets.set(s.index, this.targetOf(d, session, 'load'));
        }
        await source.ready?.();
        step = 'load:write';
        const byIndex = new Map([...pairs].map(([d, s]) => [s.index, { d, s }]));
        const loaded = await source.load({
          target: (index) => {
            const t = targets.get(index);
            if (!t) throw new VfioError(`${source.name}: state for a device index (${index}) it did not announce`, { code: 'EVFIO_BAD_SNAPSHOT', step });
            return t;
          },
          progress: (index, bytes) => {
            const p = byIndex.get(index);
            if (p) this.emit('progress', { device: p.d.id, phase: 'load', bytes, expected: p.s.stateBytes });
          },
        }, { signal: opts.signal });
        step = 'load:model';
        const result: LoadResult = { devices: [] };
        for (const [d, s] of pairs) {
          d.migration!.closeSession();
          const got = loaded.get(s.index);
          d.applyModel(plans.get(d) ?? d.checkModel(got?.model));
          result.devices.push({ id: d.id, stateBytes: got?.bytes ?? 0, from: s.record.id });
        }
        this.loaded = true;
        return result;
      } catch (e) {
        await this.abandonLoad(job);
        await source.abort?.(e);
        throw this.fail(e, job, step);
      }
    });
  }

  /**
   * Begin a live save into `sink` (src/live): the devices' records are sent first — a live
   * destination pairs and checks them and answers before anything here is touched, so that an
   * incompatible destination refuses while the VM runs on — then PRECOPY_INFOv2 is asked for
   * (ENOTTY: older semantics) and every device with PRE_COPY goes RUNNING → PRE_COPY. Devices
   * without PRE_COPY stay RUNNING until the switchover (stop-copy only). Dirty tracking of the
   * devices' DMA (EngineOptions.dirtyTracking, ./dirty.ts) starts after the destination accepted
   * and before the first device enters PRE_COPY; its blockers are checked with the others, before
   * anything is touched, and its warnings emitted (`warning`). The engine stays busy
   * until the LiveSave is switched over or cancelled. Every device must be RUNNING. On failure
   * the stream is aborted, every device returned to RUNNING, and the error thrown.
   */
  async beginLiveSave(sink: StateSink): Promise<LiveSave> {
    const end = this.begin('migrate');
    const job = new Job();
    let dirty: DirtyTracker | undefined;
    try {
      const plan = this.assertMigratable('migrate', true)!;
      const notRunning = this.devices.filter((d) => d.migration!.getState() !== MigState.RUNNING);
      if (notRunning.length) {
        throw new VfioError(`live migration needs running devices; ${notRunning.map((d) => `${d.id} is in ${migStateName(d.migration!.getState())}`).join(', ')}`, {
          code: 'EVFIO_BAD_TRANSITION', step: 'migrate',
        });
      }
      await sink.begin(this.devices.map((d) => d.record()));
      // Tracking runs before the first byte of state is read, so no DMA write goes unseen.
      dirty = new DirtyTracker(plan, this.devices);
      await dirty.start();
      const precopy: number[] = [];
      for (const [i, d] of this.devices.entries()) {
        if (!d.migration!.supportsPreCopy) continue;
        d.migration!.enablePrecopyInfoV2();
        await this.set(job, d, MigState.PRE_COPY);
        precopy.push(i);
      }
      return new LiveSave({
        devices: this.devices,
        usesP2P: this.usesP2P,
        set: (d, target) => this.set(job, d, target),
        target: (d, session) => this.targetOf(d, session, 'save'),
        returnToRunning: (step) => this.returnToRunning(job, [...this.devices], step),
        fail: (e, step) => this.fail(e, job, step),
        progress: (p) => this.emit('progress', p),
        release: end,
        dirty,
      }, sink, precopy);
    } catch (e) {
      await dirty?.stop();
      await sink.abort(e);
      await this.returnToRunning(job, [...job.touched], 'migrate:undo');
      for (const d of job.touched) d.migration!.closeSession();
      end(false, e);
      throw this.fail(e, job, 'migrate:setup');
    }
  }

  /**
   * The saved devices of `source` paired with this engine's by id, in this engine's order.
   * Throws EVFIO_DEVICE_MISMATCH naming the devices that do not pair, or EVFIO_BAD_SNAPSHOT for
   * a stream that names one id twice.
   */
  private pair(source: StateSource): Map<MigratableDevice, SavedDevice> {
    const saved = source.devices();
    const byId = new Map<string, SavedDevice>();
    for (const s of saved) {
      if (byId.has(s.record.id)) {
        throw new VfioError(`${source.name} holds two devices with the id ${s.record.id}`, { code: 'EVFIO_BAD_SNAPSHOT', step: 'load:pair', deviceState: this.outcomes(new Job()) });
      }
      byId.set(s.record.id, s);
    }
    const mine = new Set(this.devices.map((d) => d.id));
    const noState = this.devices.filter((d) => !byId.has(d.id)).map((d) => d.id);
    const noDevice = saved.filter((s) => !mine.has(s.record.id)).map((s) => s.record.id);
    if (noState.length || noDevice.length) {
      const parts = [
        noState.length ? `no saved state for ${noState.join(', ')}` : '',
        noDevice.length ? `no device for the saved ${noDevice.join(', ')}` : '',
      ].filter(Boolean);
      throw new VfioError(`${source.name} holds ${saved.map((s) => s.record.id).join(', ') || 'no device'}; the VM has ${[...mine].join(', ')}: ${parts.join('; ')}`, {
        code: 'EVFIO_DEVICE_MISMATCH', step: 'load:pair', deviceState: this.outcomes(new Job()),
      });
    }
    return new Map(this.devices.map((d) => [d, byId.get(d.id)!]));
  }

  /** Where `d`'s data_fd is, for a stream. */
  private targetOf(d: MigratableDevice, session: DataSession | undefined, what: 'save' | 'load'): DataFdTarget {
    if (!session || session.kind !== (what === 'save' ? 'save' : 'resume')) {
      throw new VfioError(`${d.id}: the ${what === 'save' ? 'STOP_COPY' : 'RESUMING'} request opened no data_fd`, { code: 'EVFIO_NO_SESSION', device: d.id });
    }
    return { binding: d.device.binding, fd: session.fd, device: d.id, bufferSize: d.bufferSize ?? DEFAULT_BUFFER_SIZE };
  }

  /** One state request on `d`, recorded as touching it. */
  private async set(job: Job, d: MigratableDevice, target: MigState): Promise<DataSession | undefined> {
    job.touched.add(d);
    return d.migration!.setState(target);
  }

  /**
   * A destination device left in RESUMING (a load that died: mtty keeps the state after the last
   * close, and asking for RESUMING again is "no change" to the kernel, with no data_fd) or in
   * ERROR is reset first (VFIO_DEVICE_RESET → RUNNING): its state is about to be replaced. Emits
   * `recovered`; a failing reset fails the load (which then resets every device).
   */
  private async clearLeftover(job: Job, d: MigratableDevice): Promise<void> {
    const st = d.migration!.stateOrError();
    if (st !== MigState.RESUMING && st !== MigState.ERROR) return;
    log('%s: found in %s before the load (left by an earlier one): resetting it first', d.id, migStateName(st));
    job.touched.add(d);
    job.reset.add(d);
    const now = await d.migration!.reset();
    d.afterReset();
    this.emit('recovered', { device: d.id, step: 'load:resuming', state: now, reset: true });
  }

  /**
   * Recovery, the one place: a plain SET to `target`, else VFIO_DEVICE_RESET (and `target`
   * from RUNNING), then the device model's replay of what a reset wiped. Never throws.
   */
  private async recoverDevice(job: Job, d: MigratableDevice, target: MigState, step: string): Promise<void> {
    try {
      const r = await d.migration!.recover(target);
      if (r.reset) {
        job.reset.add(d);
        d.afterReset();
      }
      this.emit('recovered', { device: d.id, step, state: r.state, reset: r.reset });
    } catch (e) {
      job.reset.add(d);
      log('%s: recovery after %s failed: %o', d.id, step, e);
    }
  }

  /** Back to RUNNING after a failed pause or resume; with P2P, out of STOP through RUNNING_P2P first. */
  private async returnToRunning(job: Job, which: MigratableDevice[], step: string): Promise<void> {
    const stopped = which.filter((d) => d.migration!.stateOrError() !== MigState.RUNNING);
    if (this.usesP2P) for (const d of stopped) await this.recoverDevice(job, d, MigState.RUNNING_P2P, step);
    for (const d of stopped) await this.recoverDevice(job, d, MigState.RUNNING, step);
  }

  /**
   * A failed or cancelled load: every device's model undone and, when it holds (part of) the
   * loaded state, the device reset (RUNNING, empty, nothing armed). After a complete load (a
   * failed resume) that is every device, also one that already reached RUNNING; during a load,
   * the devices it touched.
   */
  private async abandonLoad(job: Job): Promise<void> {
    const all = this.loaded;
    this.loaded = false;
    for (const d of this.devices) {
      d.undoLoad();
      if (!all && !job.touched.has(d)) continue;
      job.touched.add(d);
      try {
        await d.migration!.reset();
        job.reset.add(d);
      } catch (e) {
        log('%s: reset after a failed load failed: %o', d.id, e);
      }
    }
  }

  /**
   * Throw away a successful load that must not run (a live destination that could not tell the
   * source it loaded: the source resumes its own): every device's model undone and the device
   * reset (VFIO_DEVICE_RESET → RUNNING, nothing mapped or armed). A no-op without loaded state.
   */
  discardLoad(step = 'load:discard'): Promise<void> {
    if (!this.loaded) return Promise.resolve();
    return this.exclusive('load', async (job) => {
      log('discarding the loaded state of %s (%s)', this.devices.map((d) => d.id).join(', '), step);
      await this.abandonLoad(job);
    });
  }

  /**
   * `step`, a step before any device is touched (connecting to a peer, accepting a connection):
   * its VfioError, when it does not say already, says where every device is (untouched).
   */
  async untouchedOnFailure<T>(step: Promise<T>): Promise<T> {
    try {
      return await step;
    } catch (e) {
      if (e instanceof VfioError && !e.deviceState) e.annotate({ deviceState: this.describeDevices(false) });
      throw e;
    }
  }

  /**
   * Where every device is now (read back from the kernel), as an error's `deviceState` lists
   * it; `touched` says whether the caller's job had touched them.
   */
  describeDevices(touched: boolean): DeviceOutcome[] {
    const job = new Job();
    if (touched) this.devices.forEach((d) => job.touched.add(d));
    return this.outcomes(job);
  }

  /** Where every device is now, for an error. */
  private outcomes(job: Job): DeviceOutcome[] {
    return this.devices.map((d) => ({
      device: d.id,
      state: d.migration ? migStateName(job.touched.has(d) ? d.migration.stateOrError() : d.migration.knownState ?? d.migration.stateOrError()) : 'unknown',
      touched: job.touched.has(d),
      reset: job.reset.has(d),
    }));
  }

  /**
   * `e` with the step (when it has none) and every device's outcome. An abort (the job's
   * AbortSignal: a DOMException 'AbortError', or the signal's own reason) becomes a VfioError
   * ECANCELED of kind 'cancelled'.
   */
  private fail(e: unknown, job: Job, step: string): unknown {
    if (!(e instanceof VfioError) && (e as Error)?.name === 'AbortError') {
      e = new VfioError(`${step} cancelled`, { code: 'ECANCELED', kind: 'cancelled', step, cause: e });
    }
    if (e instanceof VfioError) {
      if (!e.step) e.step = step;
      e.annotate({ deviceState: this.outcomes(job) });
    }
    return e;
  }

  /**
   * Take the devices for one job: EVFIO_BUSY while another job has them, else its `phase` event.
   * Returns the job's end, which frees them, logs the outcome and emits the `phase` end event
   * with the duration, on success or failure: exclusive() calls it when its function settles, a
   * live save when it is switched over or cancelled (LiveSaveOps.release).
   */
  private begin(phase: EnginePhase): (ok: boolean, why?: unknown) => void {
    if (this.busy) {
      throw new VfioError(`cannot ${phase}: the VM's devices are busy with ${this.busy}`, { code: 'EVFIO_BUSY', step: phase });
    }
    this.busy = phase;
    const t0 = performance.now();
    this.emit('phase', { phase, done: false });
    return (ok, why) => {
      const ms = performance.now() - t0;
      this.busy = undefined;
      const ids = this.devices.map((d) => d.id).join(', ');
      if (ok) log('%s of %s: %d ms', phase, ids, ms.toFixed(1));
      else if (why === undefined) log('%s of %s ended after %d ms', phase, ids, ms.toFixed(1));
      else log('%s of %s failed after %d ms: %s', phase, ids, ms.toFixed(1), (why as Error)?.message ?? why);
      this.emit('phase', { phase, done: true, ms });
    };
  }

  /** Run one job at a time (begin()), ended when `fn` settles. */
  private async exclusive<T>(phase: EnginePhase, fn: (job: Job) => Promise<T>): Promise<T> {
    const end = this.begin(phase);
    let r: T;
    try {
      r = await fn(new Job());
    } catch (e) {
      end(false, e);
      throw e;
    }
    end(true);
    return r;
  }
}

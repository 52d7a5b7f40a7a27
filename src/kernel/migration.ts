/**
 * The VFIO migration v2 protocol on one device: probing, state changes, and ownership of the
 * data_fd of the current data-transfer session.
 *
 * Kernel rules followed here (include/uapi/linux/vfio.h "VFIO_DEVICE_FEATURE_MIGRATION",
 * "VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE"; drivers/vfio/vfio_main.c
 * vfio_ioctl_device_feature_migration(), vfio_ioctl_device_feature_mig_device_state()):
 *  - GET MIGRATION on a device without migration ops fails with ENOTTY (also on kernels
 *    without the feature): the device is not migratable; that is not an error.
 *  - One SET may ask for a state several arcs away; the kernel walks the arcs that
 *    vfio_mig_get_next_state() picks (mirrored by ./plan) and returns the data_fd of the last
 *    arc, or -1 when it opens no session (PRE_COPY(_P2P) → STOP_COPY keeps the current one).
 *  - A failed SET copies back the *requested* state and data_fd -1; the device may be anywhere
 *    on the path, including ERROR, so the real state is read back with GET.
 *  - A session (saving: PRE_COPY, PRE_COPY_P2P, STOP_COPY; or RESUMING) ends when the device
 *    leaves its group of states or is reset; its fd then fails (mtty: ENODEV) and is closed here.
 */
import { EventEmitter } from 'eventemitter3';
import { VfioError } from '../base/errors';
import type { Binding } from './binding/types';
import * as s from './uapi/structs';
import * as v from './uapi/vfio';
import { MigState, migStateName } from './uapi/vfio';
import { isSavingState, planTransition } from './plan';
import { logger } from '../base/log';

const log = logger('migration');

/** Which kind of data-transfer session a state belongs to, or undefined for none. */
export type SessionKind = 'save' | 'resume';

/** The session group of a state: saving states share one session, RESUMING has its own. */
export function sessionKindOf(state: MigState): SessionKind | undefined {
  if (isSavingState(state)) return 'save';
  if (state === MigState.RESUMING) return 'resume';
  return undefined;
}

/** The data_fd of a session; owned by the `Migration` that opened it. */
export interface DataSession {
  readonly kind: SessionKind;
  /** The data_fd (a stream: read/write, never pread/pwrite). -1 once closed. */
  readonly fd: number;
}

export interface StateChange {
  device: string;
  from: MigState;
  to: MigState;
  /** The single arcs the kernel walks for this request, per vfio_mig_get_next_state(). */
  arcs: Array<[MigState, MigState]>;
}

export interface MigrationEvents {
  /** Emitted after a successful SET, with the arcs walked. */
  state: (change: StateChange) => void;
  /** Emitted after a failed SET, with the state read back. */
  'state-error': (change: StateChange & { error: VfioError; actual: MigState }) => void;
  /** Emitted after every VFIO_DEVICE_RESET of the device (through any path): the device is in RUNNING, its session ended. */
  reset: (r: { device: string }) => void;
}

/**
 * What a Migration uses of its device: `VfioDevice` (./device.ts), which owns the Migration
 * (`VfioDevice.migration`). Named here so that the two modules do not import each other.
 */
export interface MigrationDevice {
  readonly name: string;
  readonly binding: Binding;
  /** The device's one migration object (`VfioDevice.migration`). */
  readonly migration: Migration | null;
  feature(feature: number, op: s.FeatureOp, payloadSize: number, payload?: Buffer): Buffer;
  ioctlAsync(request: number, arg?: Buffer | number, op?: string): Promise<number>;
  /** VFIO_DEVICE_RESET; tells the Migration (noteReset()). */
  reset(): Promise<void>;
}

/**
 * VFIO_DEVICE_FEATURE_MIGRATION (GET) on `device`: a new `Migration` for a migratable device,
 * or `null` when the kernel answers ENOTTY (device without migration support, or a kernel
 * before 5.18), logged at debug level only. Other errors are thrown. Called once per open
 * device by `VfioDevice.migration`, the device's one migration object: use that.
 * @internal
 */
export function probeMigration(device: MigrationDevice): Migration | null {
  let payload: Buffer;
  try {
    payload = device.feature(v.VFIO_DEVICE_FEATURE_MIGRATION, 'get', s.SIZEOF_FEATURE_MIGRATION);
  } catch (e) {
    if (e instanceof VfioError && e.code === 'ENOTTY') {
      log('%s: VFIO_DEVICE_FEATURE_MIGRATION → ENOTTY: not migratable', device.name);
      return null;
    }
    throw e;
  }
  const flags = Number(payload.readBigUInt64LE(0));
  log('%s: migration flags %s', device.name, v.flagNames(flags, v.MIGRATION_FLAG_NAMES).join('|'));
  return new Migration(device, flags, MIGRATION_TOKEN);
}

/** Keeps `new Migration()` to probeMigration(): one Migration per open device. */
const MIGRATION_TOKEN = Symbol('Migration');

/**
 * The migration state of one open device, and the only object that changes it: every state
 * change (SET), reset and session goes through it, so that its cached state is never stale. Get
 * it from `VfioDevice.migration` (or `Migration.probe(device)`, the same object).
 */
export class Migration extends EventEmitter<MigrationEvents> {
  private sessionFd = -1;
  private sessionKind: SessionKind | undefined;
  private cached: MigState | undefined;
  private v2 = false;

  constructor(
    readonly device: MigrationDevice,
    /** VFIO_MIGRATION_* bits the device reports. */
    readonly flags: number,
    token: symbol,
  ) {
    super();
    if (token !== MIGRATION_TOKEN) throw new TypeError('a Migration comes from VfioDevice.migration');
  }

  /**
   * The device's migration object (`device.migration`: probed once per open device with
   * VFIO_DEVICE_FEATURE_MIGRATION GET), or `null` when the device is not migratable (ENOTTY).
   */
  static probe(device: MigrationDevice): Migration | null {
    return device.migration;
  }

  /** Like probe(), but throws EVFIO_NOT_MIGRATABLE when the device does not support migration. */
  static require(device: MigrationDevice): Migration {
    const m = device.migration;
    if (!m) {
      throw new VfioError(`device ${device.name} does not support VFIO migration (VFIO_DEVICE_FEATURE_MIGRATION: ENOTTY)`, {
        code: 'EVFIO_NOT_MIGRATABLE', kind: 'unsupported', device: device.name,
      });
    }
    return m;
  }

  /** Flag names ('STOP_COPY', 'P2P', 'PRE_COPY'). */
  get flagNames(): string[] {
    return v.flagNames(this.flags, v.MIGRATION_FLAG_NAMES);
  }

  get supportsP2P(): boolean {
    return (this.flags & v.VFIO_MIGRATION_P2P) !== 0;
  }

  get supportsPreCopy(): boolean {
    return (this.flags & v.VFIO_MIGRATION_PRE_COPY) !== 0;
  }

  /** The current session, if any. */
  get session(): DataSession | undefined {
    return this.sessionFd >= 0 && this.sessionKind ? { kind: this.sessionKind, fd: this.sessionFd } : undefined;
  }

  /**
   * The state as last set or read, without asking the kernel (every change goes through this
   * object, so it is current); undefined before the first GET and after a reset.
   */
  get knownState(): MigState | undefined {
    return this.cached;
  }

  /** VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE (GET): the device's state now. */
  getState(): MigState {
    const p = this.device.feature(v.VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, 'get', s.SIZEOF_FEATURE_MIG_STATE);
    this.cached = p.readUInt32LE(0) as MigState;
    return this.cached;
  }

  /**
   * Move the device to `target` with ONE VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE SET; the kernel
   * walks the intermediate arcs. The request is checked first against the kernel's own rules
   * (./plan: EINVAL cases, and STOP_COPY → PRE_COPY(_P2P), which loops forever in unfixed
   * kernels, is refused without asking). Resolves to the session the request opened (or kept),
   * or undefined.
   *
   * Errors: `VfioError` from the kernel with `deviceState` set to the state read back after
   * the failure (the SET's copied-back state is the requested one, not the real one); the
   * planner's protocol errors (kind 'protocol') leave the device untouched.
   */
  async setState(target: MigState): Promise<DataSession | undefined> {
    const from = this.cached ?? this.getState();
    const { arcs } = planTransition(from, target, this.flags);
    if (arcs.length === 0) return this.session;
    const change: StateChange = { device: this.device.name, from, to: target, arcs };
    const b = s.encodeMigStateSet(target);
    try {
      // Off the JS thread: drivers save or load device state inside some arcs (mlx5 STOP_COPY).
      await this.device.ioctlAsync(v.VFIO_DEVICE_FEATURE, b, `VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE (SET ${migStateName(target)})`);
    } catch (e) {
      const actual = this.stateOrError();
      this.endSessionIfLeft([from, actual]);
      if (e instanceof VfioError) {
        e.annotate({
          step: `set-state ${migStateName(from)}→${migStateName(target)}`,
          deviceState: [{ device: this.device.name, state: migStateName(actual), touched: true, reset: false }],
        });
        this.emit('state-error', { ...change, error: e, actual });
      }
      throw e;
    }
    this.cached = target;
    const { dataFd } = s.decodeMigState(b);
    const path = [from, ...arcs.map(([, to]) => to)];
    if (dataFd >= 0) {
      this.closeSession();
      this.sessionFd = dataFd;
      this.sessionKind = sessionKindOf(target);
    } else {
      this.endSessionIfLeft(path);
    }
    log('%s: %s → %s via %s (data_fd %d)', this.device.name, migStateName(from), migStateName(target),
      path.map(migStateName).join('→'), dataFd);
    this.emit('state', change);
    return this.session;
  }

  /**
   * VFIO_DEVICE_FEATURE_MIG_DATA_SIZE (GET): the driver's estimate, in bytes, of the data a
   * STOP_COPY session would produce now (Linux 6.2+). Undefined when the driver does not
   * implement it (ENOTTY).
   */
  dataSize(): number | undefined {
    try {
      const p = this.device.feature(v.VFIO_DEVICE_FEATURE_MIG_DATA_SIZE, 'get', s.SIZEOF_FEATURE_MIG_DATA_SIZE);
      return Number(p.readBigUInt64LE(0));
    } catch (e) {
      if (e instanceof VfioError && e.code === 'ENOTTY') return undefined;
      throw e;
    }
  }

  /**
   * VFIO_MIG_GET_PRECOPY_INFO on the data_fd (only valid in PRE_COPY and PRE_COPY_P2P; the
   * kernel answers EINVAL elsewhere). `flags` is zeroed before the call: drivers echo it.
   */
  precopyInfo(): s.PrecopyInfo {
    const session = this.session;
    const st = this.cached ?? this.stateOrError();
    if (!session || session.kind !== 'save' || (st !== MigState.PRE_COPY && st !== MigState.PRE_COPY_P2P)) {
      throw new VfioError(`VFIO_MIG_GET_PRECOPY_INFO is valid only in PRE_COPY and PRE_COPY_P2P (the kernel answers EINVAL elsewhere); the device is in ${migStateName(st)}`, {
        code: 'EVFIO_NO_SESSION', device: this.device.name, op: 'VFIO_MIG_GET_PRECOPY_INFO',
      });
    }
    const b = s.encodePrecopyInfoQuery();
    try {
      this.device.binding.ioctl(session.fd, v.VFIO_MIG_GET_PRECOPY_INFO, b);
    } catch (e) {
      throw e instanceof VfioError ? e.annotate({ op: 'VFIO_MIG_GET_PRECOPY_INFO', device: this.device.name }) : e;
    }
    // Without the PRECOPY_INFOv2 opt-in drivers echo the caller's flags: ignore them.
    return { ...s.decodePrecopyInfo(b), flags: this.v2 ? s.precopyInfoFlags(b) : 0 };
  }

  /** Whether PRECOPY_INFOv2 is on (enablePrecopyInfoV2() succeeded). */
  get precopyInfoV2(): boolean {
    return this.v2;
  }

  /**
   * Opt in to PRECOPY_INFOv2 (VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2 = 12, SET with no payload;
   * Linux 7.1): afterwards precopyInfo()'s `flags` carry VFIO_PRECOPY_INFO_REINIT. Resolves
   * false when the kernel or driver answers ENOTTY (older semantics: flags are ignored); other
   * errors are thrown.
   */
  enablePrecopyInfoV2(): boolean {
    if (this.v2) return true;
    try {
      this.device.feature(v.VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOV2, 'set', 0);
    } catch (e) {
      if (e instanceof VfioError && e.code === 'ENOTTY') {
        log('%s: PRECOPY_INFOv2 → ENOTTY: older precopy-info semantics', this.device.name);
        return false;
      }
      throw e;
    }
    this.v2 = true;
    return true;
  }

  /**
   * VFIO_DEVICE_RESET (through `VfioDevice.reset()`, which tells this object): the way out of
   * ERROR, and out of a RESUMING whose stream was refused. Ends any session. Resolves to the
   * state read back (RUNNING on success). Off the JS thread.
   */
  async reset(): Promise<MigState> {
    await this.device.reset();
    const st = this.getState();
    log('%s: reset → %s', this.device.name, migStateName(st));
    return st;
  }

  /**
   * Called by `VfioDevice.reset()` after every VFIO_DEVICE_RESET, successful or not: the kernel
   * ended the session (vfio.h: a reset returns the device to RUNNING), so the data_fd is closed
   * and the cached state forgotten. Emits 'reset'.
   * @internal
   */
  noteReset(): void {
    this.closeSession();
    this.cached = undefined;
    this.emit('reset', { device: this.device.name });
  }

  /**
   * Bring the device to `target` (default RUNNING) after a failure: first a plain SET to the
   * recovery state, then, if that fails or the device is in ERROR, VFIO_DEVICE_RESET (which
   * lands in RUNNING) and, for another target, a SET from there. Resolves to where the device
   * ended and whether it was reset — after a reset the caller must restore what the reset
   * wiped (PCI_COMMAND, interrupts). Throws only when the reset itself fails.
   * (The QEMU approach: hw/vfio/migration.c vfio_migration_set_state().)
   */
  async recover(target: MigState = MigState.RUNNING): Promise<{ state: MigState; reset: boolean }> {
    const st = this.stateOrError();
    if (st === target) {
      this.closeSession();
      return { state: st, reset: false };
    }
    if (st !== MigState.ERROR) {
      try {
        await this.setState(target);
        this.closeSession();
        return { state: target, reset: false };
      } catch (e) {
        log('%s: recovery SET %s failed (%o); resetting', this.device.name, migStateName(target), e);
      }
    }
    let state = await this.reset();
    if (state !== target) {
      try {
        await this.setState(target);
        state = target;
      } catch (e) {
        log('%s: SET %s after reset failed: %o', this.device.name, migStateName(target), e);
        state = this.getState();
      }
    }
    this.closeSession();
    return { state, reset: true };
  }

  /** Close the current session's data_fd, if any. Idempotent. */
  closeSession(): void {
    if (this.sessionFd >= 0) {
      const fd = this.sessionFd;
      this.sessionFd = -1;
      this.sessionKind = undefined;
      try {
        this.device.binding.close(fd);
      } catch (e) {
        log('%s: close(data_fd %d) failed: %o', this.device.name, fd, e);
      }
    }
  }

  /** Called by `VfioDevice.close()`: the session's data_fd is closed and the listeners dropped. @internal */
  dispose(): void {
    this.closeSession();
    this.cached = undefined;
    this.removeAllListeners();
  }

  /**
   * The device's state read back (VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE GET), or ERROR when even
   * that fails (after a failed SET or recovery): never throws.
   */
  stateOrError(): MigState {
    try {
      return this.getState();
    } catch (e) {
      log('%s: GET state failed: %o', this.device.name, e);
      this.cached = undefined;
      return MigState.ERROR;
    }
  }

  /** Close the session if any state of `path` is outside its group. */
  private endSessionIfLeft(path: MigState[]): void {
    if (this.sessionFd >= 0 && path.some((st) => sessionKindOf(st) !== this.sessionKind)) this.closeSession();
  }
}

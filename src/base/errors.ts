import { constants as osConstants } from 'node:os';
import { kindOfCode, type ErrnoName, type VfioErrorCode, type VfioErrorKind } from './codes';

export type { VfioErrorCode, VfioErrorKind, EvfioCode, ErrnoName } from './codes';
export { EVFIO_CODES } from './codes';

/**
 * errno names by number, from Node's own table (linux values). Where two names share a number
 * (EAGAIN/EWOULDBLOCK, EDEADLK/EDEADLOCK) the first, which is also what the addon reports, wins.
 */
const ERRNO_NAMES: Map<number, string> = new Map();
for (const [name, num] of Object.entries(osConstants.errno)) if (!ERRNO_NAMES.has(num)) ERRNO_NAMES.set(num, name);
// Node lists ENOTSUP before EOPNOTSUPP (both 95 on Linux); the addon and the kernel say EOPNOTSUPP.
if (osConstants.errno.EOPNOTSUPP !== undefined) ERRNO_NAMES.set(osConstants.errno.EOPNOTSUPP, 'EOPNOTSUPP');

/**
 * The symbolic name of a positive errno value ('EINVAL' for 22), or `E<n>` when Node's table
 * does not know it (typed as an errno name all the same: the union covers Linux's table).
 */
export function errnoName(errno: number): ErrnoName {
  return (ERRNO_NAMES.get(errno) ?? `E${errno}`) as ErrnoName;
}

/** The positive errno value of a symbolic name ('EINVAL' → 22). */
export function errnoOf(name: ErrnoName): number {
  return osConstants.errno[name];
}

/**
 * Where one device was left by a failed call or job: the one shape of `VfioError.deviceState`,
 * a list with an entry per device the job involved.
 */
export interface DeviceOutcome {
  /** The device: its attach id in a VM (`nic0`), else its name (PCI address, UUID, `sim:...`). */
  device: string;
  /**
   * Its VFIO migration state read back after the failure ('RUNNING', 'STOP', ...; names of
   * `MigState`), or 'unknown' when even reading it failed.
   */
  state: string;
  /** False when the failing job had not touched the device yet (it is as it was before). */
  touched: boolean;
  /** True when VFIO_DEVICE_RESET was used to bring it there. */
  reset: boolean;
}

/** `nic0 RUNNING (reset)`, `nic1 RUNNING (untouched)`. */
export function describeOutcome(o: DeviceOutcome): string {
  return `${o.device} ${o.state}${o.reset ? ' (reset)' : o.touched ? '' : ' (untouched)'}`;
}

/**
 * Where the library's errors come from (`VfioErrorKind`, src/base/codes.ts): `syscall` errors
 * carry an errno; the others are refusals made in userspace before the kernel is asked
 * (`protocol`), a bad snapshot or stream (`format`), a device that does not match a snapshot
 * (`mismatch`), bad user input (`usage`), something the device does not support
 * (`unsupported`), a migration peer that failed or refused (`peer`) and a job cancelled by its
 * caller (`cancelled`).
 */
export interface VfioErrorInit {
  /** Symbolic code: an errno name ('EINVAL') for syscall errors, otherwise an `EVFIO_*` code (src/base/codes.ts). */
  code: VfioErrorCode;
  /** Default: the code's kind in the registry. */
  kind?: VfioErrorKind;
  /** Positive errno value for syscall errors. */
  errno?: number;
  /** The syscall that failed: 'open', 'ioctl', 'read', 'write', 'pread', 'pwrite', ... */
  syscall?: string;
  /** The ioctl or feature name ('VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE') or the library step. */
  op?: string;
  /** The step of a longer job ('save', 'load', 'restore:check-config', ...). */
  step?: string;
  /** The device (PCI address, mdev UUID, path or `sim:...`). */
  device?: string;
  /** The path that was opened, for open errors. */
  path?: string;
  /** Where each device involved was left, when known. */
  deviceState?: DeviceOutcome[];
  cause?: unknown;
}

/**
 * The one error class of the library. Every field is also a property, so callers branch on
 * `err.code`/`err.errno`, never on the message.
 */
export class VfioError extends Error {
  override name = 'VfioError';
  code: VfioErrorCode;
  kind: VfioErrorKind;
  errno?: number;
  syscall?: string;
  op?: string;
  step?: string;
  device?: string;
  path?: string;
  deviceState?: DeviceOutcome[];

  constructor(message: string, init: VfioErrorInit) {
    super(message, init.cause !== undefined ? { cause: init.cause } : undefined);
    this.code = init.code;
    this.kind = init.kind ?? kindOfCode(init.code);
    this.errno = init.errno;
    this.syscall = init.syscall;
    this.op = init.op;
    this.step = init.step;
    this.device = init.device;
    this.path = init.path;
    this.deviceState = init.deviceState;
  }

  /** Build a syscall error from a positive errno. The message names syscall, op and device. */
  static fromErrno(errno: number, init: Omit<VfioErrorInit, 'code' | 'errno' | 'kind'> = {}): VfioError {
    const code = errnoName(errno);
    const what = [init.syscall, init.op].filter(Boolean).join(' ');
    const where = init.device ? ` on ${init.device}` : init.path ? ` (${init.path})` : '';
    return new VfioError(`${what || 'syscall'} failed${where}: ${code}`, { ...init, code, errno });
  }

  /**
   * Add context as the error travels up: fields already set are kept (the innermost layer
   * knows best), missing ones are filled in; `deviceState` replaces the one before (the outer
   * layer knows where the devices ended). The message gains the device and where it was left.
   */
  annotate(ctx: Partial<Pick<VfioErrorInit, 'op' | 'step' | 'device' | 'deviceState' | 'path'>>): this {
    if (ctx.op && !this.op) this.op = ctx.op;
    if (ctx.step && !this.step) this.step = ctx.step;
    if (ctx.path && !this.path) this.path = ctx.path;
    if (ctx.device && !this.device) {
      this.device = ctx.device;
      if (!this.message.includes(ctx.device)) this.message += ` (device ${ctx.device})`;
    }
    if (ctx.deviceState !== undefined) {
      this.deviceState = ctx.deviceState;
      const left = ctx.deviceState;
      const text = left.length === 1 ? `; device left in ${left[0].state}${left[0].reset ? ' (reset)' : ''}` : `; devices left: ${left.map(describeOutcome).join(', ')}`;
      this.message = this.message.replace(/; (device left in|devices left:) .*$/, '') + text;
    }
    return this;
  }
}

/** True when `e` is a VfioError whose code is `code` (an errno name or EVFIO_* code). */
export function isVfioError(e: unknown, code?: VfioErrorCode): e is VfioError {
  return e instanceof VfioError && (code === undefined || e.code === code);
}

/**
 * A Node fs error (one with an errno and a code) as a VfioError of kind 'syscall' saying
 * `${what}: CODE`, with its errno, its syscall (else `init.syscall`), and `init`'s path and
 * step; anything else, a VfioError included, is returned unchanged.
 */
export function fsError(e: unknown, what: string, init: { syscall: string; path?: string; step?: string }): unknown {
  const err = e as NodeJS.ErrnoException;
  if (e instanceof VfioError || typeof err?.errno !== 'number' || !err.code) return e;
  return new VfioError(`${what}: ${err.code}`, {
    code: err.code as ErrnoName, errno: Math.abs(err.errno), syscall: err.syscall ?? init.syscall, path: init.path, step: init.step, cause: e,
  });
}

import { constants as osConstants } from 'node:os';

/**
 * errno names by number, from Node's own table (linux values). Where two names share a number
 * (EAGAIN/EWOULDBLOCK, EDEADLK/EDEADLOCK) the first, which is also what the addon reports, wins.
 */
const ERRNO_NAMES: Map<number, string> = new Map();
for (const [name, num] of Object.entries(osConstants.errno)) if (!ERRNO_NAMES.has(num)) ERRNO_NAMES.set(num, name);
// Node lists ENOTSUP before EOPNOTSUPP (both 95 on Linux); the addon and the kernel say EOPNOTSUPP.
if (osConstants.errno.EOPNOTSUPP !== undefined) ERRNO_NAMES.set(osConstants.errno.EOPNOTSUPP, 'EOPNOTSUPP');

/** The symbolic name of a positive errno value ('EINVAL' for 22), or `E<n>` when unknown. */
export function errnoName(errno: number): string {
  return ERRNO_NAMES.get(errno) ?? `E${errno}`;
}

/** The positive errno value of a symbolic name ('EINVAL' → 22). */
export function errnoOf(name: keyof typeof osConstants.errno): number {
  return osConstants.errno[name];
}

/**
 * Where the library's errors come from. `syscall` errors carry an errno; the others are
 * refusals made in userspace before the kernel is asked (`protocol`), a bad snapshot file
 * (`format`), a device that does not match a snapshot (`mismatch`), bad user input (`usage`),
 * and something the device does not support (`unsupported`).
 */
export type VfioErrorKind = 'syscall' | 'protocol' | 'format' | 'mismatch' | 'usage' | 'unsupported';

export interface VfioErrorInit {
  /** Symbolic code: an errno name ('EINVAL') for syscall errors, otherwise an `EVFIO_*` code. */
  code: string;
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
  /** The migration state the device was left in, when known (name, e.g. 'RUNNING'). */
  deviceState?: string;
  cause?: unknown;
}

/**
 * The one error class of the library. Every field is also a property, so callers branch on
 * `err.code`/`err.errno`, never on the message.
 */
export class VfioError extends Error {
  override name = 'VfioError';
  code: string;
  kind: VfioErrorKind;
  errno?: number;
  syscall?: string;
  op?: string;
  step?: string;
  device?: string;
  path?: string;
  deviceState?: string;

  constructor(message: string, init: VfioErrorInit) {
    super(message, init.cause !== undefined ? { cause: init.cause } : undefined);
    this.code = init.code;
    this.kind = init.kind ?? (init.errno !== undefined ? 'syscall' : 'protocol');
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
    return new VfioError(`${what || 'syscall'} failed${where}: ${code}`, { ...init, code, errno, kind: 'syscall' });
  }

  /**
   * Add context as the error travels up: fields already set are kept (the innermost layer
   * knows best), missing ones are filled in. The message gains the device and state.
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
      this.message = this.message.replace(/; device left in \S+$/, '') + `; device left in ${ctx.deviceState}`;
    }
    return this;
  }
}

/** True when `e` is a VfioError whose code is `code` (an errno name or EVFIO_* code). */
export function isVfioError(e: unknown, code?: string): e is VfioError {
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
    code: err.code, errno: Math.abs(err.errno), syscall: err.syscall ?? init.syscall, path: init.path, step: init.step, cause: e,
  });
}

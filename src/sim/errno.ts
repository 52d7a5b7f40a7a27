/**
 * How the simulated device fails a call: the way a real binding does, with a `VfioError` of kind
 * 'syscall' carrying the errno (src/errors.ts), so callers cannot tell the sim from the kernel.
 */
import { constants as osConstants } from 'node:os';
import { VfioError, errnoName } from '../base/errors';

export type ErrnoName = keyof typeof osConstants.errno;

/** Positive errno values used by the sim (Linux numbering, from Node's table). */
export const E = {
  EPERM: osConstants.errno.EPERM,
  ENOENT: osConstants.errno.ENOENT,
  EINTR: osConstants.errno.EINTR,
  EIO: osConstants.errno.EIO,
  EBADF: osConstants.errno.EBADF,
  EAGAIN: osConstants.errno.EAGAIN,
  ENOMEM: osConstants.errno.ENOMEM,
  EFAULT: osConstants.errno.EFAULT,
  EBUSY: osConstants.errno.EBUSY,
  EEXIST: osConstants.errno.EEXIST,
  ENODEV: osConstants.errno.ENODEV,
  EINVAL: osConstants.errno.EINVAL,
  ENOTTY: osConstants.errno.ENOTTY,
  ESPIPE: osConstants.errno.ESPIPE,
  ENOMSG: osConstants.errno.ENOMSG,
  E2BIG: osConstants.errno.E2BIG,
  EOVERFLOW: osConstants.errno.EOVERFLOW,
  EPIPE: osConstants.errno.EPIPE,
  ENOTSOCK: osConstants.errno.ENOTSOCK,
  EAFNOSUPPORT: osConstants.errno.EAFNOSUPPORT,
} as const;

/** Accept an errno as a number or a name ('EIO'). */
export function toErrno(e: number | ErrnoName): number {
  if (typeof e === 'number') {
    if (!Number.isInteger(e) || e <= 0) throw new RangeError(`errno must be a positive integer, got ${e}`);
    return e;
  }
  const n = osConstants.errno[e];
  if (n === undefined) throw new RangeError(`unknown errno name ${String(e)}`);
  return n;
}

/**
 * An errno raised inside the model. The binding turns it into a `VfioError` at the boundary,
 * where it knows the syscall and the device. `op` names the operation inside the model for the
 * debug log only: like the real bindings, the error leaves `op` to the caller, who knows which
 * feature or step it asked for.
 */
export class Errno extends Error {
  constructor(
    readonly errno: number,
    readonly op?: string,
  ) {
    super(op ? `${op}: ${errnoName(errno)}` : errnoName(errno));
  }
}

/** Throw `errno` from model code. */
export function raise(errno: number, op?: string): never {
  throw new Errno(errno, op);
}

/** The `VfioError` a real binding would throw for this failure. */
export function toVfioError(e: Errno, ctx: { syscall: string; device?: string }): VfioError {
  return VfioError.fromErrno(e.errno, { syscall: ctx.syscall, device: ctx.device });
}

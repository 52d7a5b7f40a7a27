import type { Binding } from './binding/types';
import { VfioError } from '../base/errors';
import { IOCTL_NAMES } from './uapi/vfio';
import { IOMMUFD_IOCTL_NAMES } from './uapi/iommufd';

/** The name of an ioctl request number, for error messages ('VFIO_DEVICE_FEATURE'). */
export function ioctlName(request: number): string {
  return IOCTL_NAMES.get(request) ?? IOMMUFD_IOCTL_NAMES.get(request) ?? `ioctl 0x${request.toString(16)}`;
}

/** Label a failed ioctl's error with the ioctl's name (or the caller's more precise `op`), device and step. */
function labelled(e: unknown, request: number, ctx: IoctlContext): unknown {
  if (!(e instanceof VfioError)) return e;
  const op = ctx.op ?? ioctlName(request);
  if (!e.op) e.message = e.message.replace(/^ioctl failed/, `ioctl ${op} failed`);
  return e.annotate({ op, device: ctx.device, step: ctx.step });
}

export interface IoctlContext {
  device: string;
  op?: string;
  step?: string;
}

/**
 * ioctl(2) through the binding, with the error annotated: `op` (the ioctl's name, or a more
 * precise name the caller gives, like the feature), and `device`.
 */
export function ioctl(binding: Binding, fd: number, request: number, arg: Buffer | number | undefined, ctx: IoctlContext): number {
  try {
    return binding.ioctl(fd, request, arg);
  } catch (e) {
    throw labelled(e, request, ctx);
  }
}

/** The same off the JS thread (binding.ioctlAsync), for requests that can take long. */
export async function ioctlAsync(binding: Binding, fd: number, request: number, arg: Buffer | number | undefined, ctx: IoctlContext): Promise<number> {
  try {
    return await binding.ioctlAsync(fd, request, arg);
  } catch (e) {
    throw labelled(e, request, ctx);
  }
}

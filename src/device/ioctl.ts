import type { Binding } from '../binding/types';
import { VfioError } from '../errors';
import { IOCTL_NAMES } from '../uapi/vfio';
import { IOMMUFD_IOCTL_NAMES } from '../uapi/iommufd';

/** The name of an ioctl request number, for error messages ('VFIO_DEVICE_FEATURE'). */
export function ioctlName(request: number): string {
  return IOCTL_NAMES.get(request) ?? IOMMUFD_IOCTL_NAMES.get(request) ?? `ioctl 0x${request.toString(16)}`;
}

/**
 * ioctl(2) through the binding, with the error annotated: `op` (the ioctl's name, or a more
 * precise name the caller gives, like the feature), and `device`.
 */
export function ioctl(
  binding: Binding,
  fd: number,
  request: number,
  arg: Buffer | number | undefined,
  ctx: { device: string; op?: string; step?: string },
): number {
  try {
    return binding.ioctl(fd, request, arg);
  } catch (e) {
    if (e instanceof VfioError) {
      const op = ctx.op ?? ioctlName(request);
      if (!e.op) e.message = e.message.replace(/^ioctl failed/, `ioctl ${op} failed`);
      throw e.annotate({ op, device: ctx.device, step: ctx.step });
    }
    throw e;
  }
}

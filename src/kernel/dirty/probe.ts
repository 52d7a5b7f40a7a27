/**
 * Whether a device has DMA logging, asked on a bare device fd (the iommufd open path asks before
 * a VfioDevice exists; ./logging.ts asks through one).
 */
import { VfioError } from '../../base/errors';
import type { Binding } from '../binding/types';
import { ioctl } from '../ioctl';
import * as s from '../uapi/structs';
import * as v from '../uapi/vfio';

/**
 * Does the device behind `fd` have DMA logging? PROBE | SET of DMA_LOGGING_START: 0 → yes,
 * ENOTTY → no; other errors propagate. For open paths that have an fd and no VfioDevice yet.
 */
export function hasDmaLogging(binding: Binding, fd: number, device: string): boolean {
  try {
    ioctl(binding, fd, v.VFIO_DEVICE_FEATURE, s.encodeFeature(v.VFIO_DEVICE_FEATURE_DMA_LOGGING_START, 'probe-set', 0), {
      device,
      op: 'VFIO_DEVICE_FEATURE_DMA_LOGGING_START (PROBE|SET)',
    });
    return true;
  } catch (e) {
    if (e instanceof VfioError && e.code === 'ENOTTY') return false;
    throw e;
  }
}


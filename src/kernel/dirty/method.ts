/**
 * Which dirty-tracking method a device offers, in QEMU's order of preference
 * (hw/vfio/container-base.c, hw/vfio/migration.c): its own DMA logging, else the host IOMMU's
 * dirty bits (a dirty-tracking HWPT on the iommufd path), else none.
 */
import type { VfioDevice } from '../device';
import { DmaLogging } from './logging';

/** How a device's DMA writes can be tracked. */
export type DirtyMethod = 'device' | 'iommu' | 'none';

/**
 * What `device` offers: 'device' (VFIO_DEVICE_FEATURE PROBE of DMA_LOGGING_START succeeds),
 * 'iommu' (it was opened with a dirty-tracking HWPT: OpenOptions.iommuDirtyTracking), or 'none'
 * with the reason (an mdev on iommufd has no HWPT of its own; the legacy container path has no
 * dirty tracking this library uses).
 */
export function dirtyMethodOf(device: VfioDevice): { method: DirtyMethod; reason?: string } {
  if (DmaLogging.of(device).probe()) return { method: 'device' };
  if (device.iommu.dirty) return { method: 'iommu' };
  const kind = device.iommu.kind;
  const reason =
    kind === 'legacy'
      ? 'no DMA logging, and the legacy container path has no IOMMU dirty tracking here'
      : kind === 'iommufd'
        ? 'no DMA logging, and no dirty-tracking IOMMU page table (an mdev has none; otherwise open with iommuDirtyTracking "auto" or "on")'
        : 'no DMA logging, and no IOMMU dirty tracking';
  return { method: 'none', reason };
}

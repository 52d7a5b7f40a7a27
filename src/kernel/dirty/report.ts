/**
 * What a dirty-page read returns, and what a failed one means: shared by device DMA logging
 * (./logging.ts) and IOMMU dirty tracking (./hwpt.ts).
 */
import { VfioError } from '../../base/errors';
import { DirtyBitmap } from './bitmap';

/**
 * The smallest page size a dirty bitmap may be read at: SZ_4K, the kernel's rule for DMA
 * logging reports (vfio_ioctl_device_feature_logging_report), applied to IOMMU reads too (the
 * page granularity of a VMM's KVM dirty log is never smaller).
 */
export const MIN_DIRTY_PAGE_SIZE = 4096;

/**
 * What a failed read of dirty pages means (the caller's policy; VFIO-NOTES "DMA logging": "any
 * error means treat the range as dirty or fail"):
 *  - 'throw' (default): the kernel's error propagates (a migration then fails, or retries);
 *  - 'all-dirty': every page of the requested range counts as dirty (correct, only more to
 *    send), and the error comes back in `ReportResult.error`.
 * Only the kernel's errors (kind 'syscall') are subject to it: a usage error (bad page size, a
 * range never started) always throws.
 */
export type ReportFailurePolicy = 'throw' | 'all-dirty';

/**
 * What to read: a bitmap to fill (reused across iterations), or a range and page size (bytes)
 * for a new one. Either way the page size is checked before any bitmap is made.
 */
export type DirtyTarget = DirtyBitmap | { iova: bigint; length: bigint; pageSize: number };

export interface ReportResult {
  /** The bitmap asked for, filled: the pages written since the previous (clearing) read. */
  bitmap: DirtyBitmap;
  /** With 'all-dirty': the kernel's error that made every page dirty. */
  error?: VfioError;
}

/** Apply `policy` to a failed read of `bitmap`: rethrow, or fill the bitmap and return the error. */
export function readFailure(e: unknown, bitmap: DirtyBitmap, policy: ReportFailurePolicy | undefined): ReportResult {
  if (policy !== 'all-dirty' || !(e instanceof VfioError) || e.kind !== 'syscall') throw e;
  bitmap.fill();
  return { bitmap, error: e };
}

/** The bitmap for `target`: itself, or a new one over its range (call after checking it). */
export function bitmapFor(target: DirtyTarget): DirtyBitmap {
  return target instanceof DirtyBitmap ? target : new DirtyBitmap(target.iova, target.length, target.pageSize);
}

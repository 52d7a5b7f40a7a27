/**
 * The IOVA ranges a device logs its DMA writes over (VFIO_DEVICE_FEATURE_DMA_LOGGING_START), as
 * pure functions: the kernel's argument rules predicted in userspace, and the ways a VMM turns
 * its RAM regions into few ranges. Addresses and lengths are bytes (bigint, u64).
 */
import type { DmaRange } from '../uapi/structs';

export type { DmaRange } from '../uapi/structs';

/**
 * Most ranges one START accepts: `LOG_MAX_RANGES` = PAGE_SIZE / sizeof(struct
 * vfio_device_feature_dma_logging_range) = 4096 / 16 (drivers/vfio/vfio_main.c: the ranges must
 * fit in one kernel page). Kernels with bigger pages accept more; 256 is what every kernel takes.
 */
export const DMA_LOGGING_MAX_RANGES = 256;

const U64 = 1n << 64n;
const U64_MASK = U64 - 1n;
const FOUR_GIB = 1n << 32n;

/**
 * What the kernel will answer to a START with these ranges: the errno of the first rule broken,
 * in the order vfio_ioctl_device_feature_logging_start() checks them, with the range's index.
 */
export interface RangeVerdict {
  errno: 'EINVAL' | 'E2BIG' | 'EOVERFLOW';
  /** The range that breaks the rule (absent for the count rules). */
  index?: number;
  /** What is wrong, for messages. */
  reason: string;
}

const hex = (v: bigint): string => `0x${v.toString(16)}`;

/**
 * Predict the kernel core's verdict on START (drivers/vfio/vfio_main.c,
 * `vfio_ioctl_device_feature_logging_start`, Linux 6.12), or `undefined` when it passes them
 * (the driver may still refuse). In order: no range → EINVAL; more than
 * {@link DMA_LOGGING_MAX_RANGES} → E2BIG; then range by range: iova or length not aligned to
 * `pageSize` (the kernel's IS_ALIGNED, a bit mask: `x & (pageSize - 1)`) → EINVAL;
 * `iova + length` past 2^64 → EOVERFLOW; overlapping an earlier range → EINVAL. The kernel does
 * not check `pageSize` itself (a driver may change it), nor refuse an empty range.
 */
export function checkLoggingRanges(ranges: readonly DmaRange[], pageSize: bigint): RangeVerdict | undefined {
  if (ranges.length === 0) return { errno: 'EINVAL', reason: 'no range (num_ranges 0)' };
  if (ranges.length > DMA_LOGGING_MAX_RANGES) {
    return { errno: 'E2BIG', reason: `${ranges.length} ranges, at most ${DMA_LOGGING_MAX_RANGES} (one kernel page of ranges)` };
  }
  const mask = (pageSize - 1n) & U64_MASK;
  const seen: Array<{ start: bigint; last: bigint }> = [];
  for (let i = 0; i < ranges.length; i++) {
    const { iova, length } = ranges[i];
    if ((iova & mask) !== 0n || (length & mask) !== 0n) {
      return { errno: 'EINVAL', index: i, reason: `range ${i} (iova ${hex(iova)}, length ${hex(length)}) is not aligned to the page size ${pageSize}` };
    }
    if (iova + length >= U64) {
      return { errno: 'EOVERFLOW', index: i, reason: `range ${i}: iova ${hex(iova)} + length ${hex(length)} overflows 64 bits` };
    }
    // The kernel's interval tree node: [iova, iova + length - 1] in u64 arithmetic.
    const node = { start: iova, last: (iova + length - 1n) & U64_MASK };
    const other = seen.findIndex((n) => n.start <= node.last && node.start <= n.last);
    if (other >= 0) {
      return { errno: 'EINVAL', index: i, reason: `range ${i} (${hex(iova)}+${hex(length)}) overlaps range ${other}` };
    }
    seen.push(node);
  }
  return undefined;
}

/** A region a device may write by DMA, as the VMM maps it. */
export interface TrackedRegion {
  /** IOVA (the guest physical address without a vIOMMU), bytes. */
  iova: bigint;
  /** Bytes. */
  length: bigint;
  /**
   * Device memory mapped for peer-to-peer DMA (another device's BAR), not RAM. QEMU gives BARs
   * above 4 GiB their own range: firmware may place the 64-bit PCI hole far above RAM.
   */
  deviceMemory?: boolean;
}

/** `[iova, iova + length)` widened to whole pages of `pageSize` (a power of two). */
function alignOut(r: TrackedRegion, pageSize: bigint): { start: bigint; end: bigint } {
  const start = r.iova - (r.iova % pageSize);
  const endRaw = r.iova + r.length;
  const end = endRaw % pageSize ? endRaw + pageSize - (endRaw % pageSize) : endRaw;
  return { start, end };
}

/** Sort and merge intervals that overlap (and, with `adjacent`, that touch). */
function mergeIntervals(list: Array<{ start: bigint; end: bigint }>, adjacent: boolean): DmaRange[] {
  const sorted = list.filter((r) => r.end > r.start).sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
  const out: Array<{ start: bigint; end: bigint }> = [];
  for (const r of sorted) {
    const last = out[out.length - 1];
    if (last && (r.start < last.end || (adjacent && r.start === last.end))) {
      if (r.end > last.end) last.end = r.end;
    } else {
      out.push({ ...r });
    }
  }
  return out.map((r) => ({ iova: r.start, length: r.end - r.start }));
}

/**
 * One range per region (Cloud Hypervisor's choice), widened to whole pages of `pageSize`,
 * sorted, with overlapping or touching regions merged: the exact set of pages the device may
 * write, as disjoint ranges. Empty regions are dropped.
 */
export function normaliseRanges(regions: readonly TrackedRegion[], pageSize: number): DmaRange[] {
  const ps = BigInt(pageSize);
  return mergeIntervals(
    regions.map((r) => alignOut(r, ps)),
    true,
  );
}

/**
 * QEMU's collapse (hw/vfio/listener.c, `vfio_dirty_tracking_update_range` and
 * `vfio_device_feature_dma_logging_start_create`): at most three ranges, each spanning from the
 * lowest to the highest address of its class — regions ending below 4 GiB (RAM and the 32-bit
 * PCI hole), the other RAM regions, and device memory starting at or above 4 GiB (the 64-bit PCI
 * hole). Holes between regions of a class are tracked too: fewer ranges for the device, a bitmap
 * that covers the holes. Regions are widened to whole pages first; should two classes overlap
 * (device memory between RAM regions above 4 GiB), they are merged, because the kernel refuses
 * overlapping ranges. Sorted by iova.
 */
export function collapseRanges(regions: readonly TrackedRegion[], pageSize: number): DmaRange[] {
  const ps = BigInt(pageSize);
  const buckets: Array<{ start: bigint; end: bigint } | undefined> = [undefined, undefined, undefined];
  for (const r of regions) {
    if (r.length <= 0n) continue;
    const a = alignOut(r, ps);
    const b = r.deviceMemory && a.start >= FOUR_GIB ? 2 : a.end <= FOUR_GIB ? 0 : 1;
    const cur = buckets[b];
    buckets[b] = cur ? { start: a.start < cur.start ? a.start : cur.start, end: a.end > cur.end ? a.end : cur.end } : a;
  }
  return mergeIntervals(
    buckets.filter((x): x is { start: bigint; end: bigint } => x !== undefined),
    false,
  );
}

/**
 * The ranges to log for `regions`: one per region ({@link normaliseRanges}) while there are at
 * most `maxRanges` of them, else QEMU's three ({@link collapseRanges}). `maxRanges` defaults to 3
 * (never more ranges than QEMU would give a driver); a driver with a lower limit of its own
 * merges ranges itself (mlx5 and pds call vfio_combine_iova_ranges()).
 */
export function loggingRanges(regions: readonly TrackedRegion[], opts: { pageSize: number; maxRanges?: number }): DmaRange[] {
  const exact = normaliseRanges(regions, opts.pageSize);
  return exact.length <= (opts.maxRanges ?? 3) ? exact : collapseRanges(regions, opts.pageSize);
}

/** True when `[iova, iova + length)` lies inside the union of `ranges`. */
export function rangeCovered(ranges: readonly DmaRange[], iova: bigint, length: bigint): boolean {
  let at = iova;
  const end = iova + length;
  const sorted = [...ranges].sort((a, b) => (a.iova < b.iova ? -1 : a.iova > b.iova ? 1 : 0));
  for (const r of sorted) {
    if (r.iova > at) break;
    if (r.iova + r.length > at) at = r.iova + r.length;
    if (at >= end) return true;
  }
  return at >= end;
}

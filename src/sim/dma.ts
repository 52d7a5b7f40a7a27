/**
 * DMA for the simulated device: the IOMMU domain its writes go through, and the two ways they
 * are tracked.
 *
 *  - `SimDmaSpace`: the IOVA → guest-memory mappings of one simulated IOMMU context (what
 *    IOMMU_IOAS_MAP / VFIO_IOMMU_MAP_DMA give a real device), holding the Buffers themselves so
 *    that the device really writes guest memory. A write that is not entirely inside writable
 *    mappings is an IOMMU fault: nothing is written. It also plays the host IOMMU's dirty
 *    tracking (a dirty bit per 4 KiB IOPTE while enabled), as `SimIommuDirty`, the sim's
 *    `IommuDirtyTracking`.
 *  - `SimDmaLog`: the device's own DMA logging (what mlx5's page tracker does): the pages its
 *    engine wrote inside the ranges given at START, at the driver's page size, read and cleared
 *    by REPORT.
 */
import { VfioError } from '../base/errors';
import { DirtyBitmap } from '../kernel/dirty/bitmap';
import { checkIommuRead, type IommuDirtyTracking } from '../kernel/dirty/hwpt';
import { bitmapFor, readFailure, type DirtyTarget, type ReportFailurePolicy, type ReportResult } from '../kernel/dirty/report';
import { E, raise } from './errno';

/** The IOPTE size of the simulated IOMMU (its dirty-bit granularity). */
export const SIM_IOMMU_PAGE = 4096;

interface Mapping {
  iova: bigint;
  buffer: Buffer;
  read: boolean;
  write: boolean;
}

export class SimDmaSpace {
  private readonly maps: Mapping[] = [];
  /** Dirty IOPTEs (iova / SIM_IOMMU_PAGE) while dirty tracking is on. */
  private readonly dirtyPages = new Set<number>();
  private tracking = false;

  /** Mappings as iova → length, for tests and `VfioPciDevice`-style bookkeeping. */
  get mappings(): ReadonlyMap<bigint, number> {
    return new Map(this.maps.map((m) => [m.iova, m.buffer.length]));
  }

  /** Add a mapping. EEXIST (as the kernel) when it overlaps one. Throws Errno. */
  map(iova: bigint, buffer: Buffer, access: { read?: boolean; write?: boolean } = {}): void {
    const end = iova + BigInt(buffer.length);
    if (this.maps.some((m) => iova < m.iova + BigInt(m.buffer.length) && m.iova < end)) raise(E.EEXIST);
    this.maps.push({ iova, buffer, read: access.read ?? true, write: access.write ?? true });
    this.maps.sort((a, b) => (a.iova < b.iova ? -1 : a.iova > b.iova ? 1 : 0));
  }

  /** Remove the mapping that starts at `iova`. ENOENT when there is none. Throws Errno. */
  unmap(iova: bigint): void {
    const i = this.maps.findIndex((m) => m.iova === iova);
    if (i < 0) raise(E.ENOENT);
    this.maps.splice(i, 1);
  }

  /** Drop every mapping (the context closed). */
  clear(): void {
    this.maps.length = 0;
    this.dirtyPages.clear();
    this.tracking = false;
  }

  /**
   * The pieces of guest memory `[iova, iova + length)` covers, or undefined when any byte is not
   * mapped with `need` access (an IOMMU fault).
   */
  private translate(iova: bigint, length: number, need: 'read' | 'write'): Array<{ buffer: Buffer; offset: number; length: number }> | undefined {
    const out: Array<{ buffer: Buffer; offset: number; length: number }> = [];
    let at = iova;
    let left = length;
    while (left > 0) {
      const m = this.maps.find((x) => at >= x.iova && at < x.iova + BigInt(x.buffer.length));
      if (!m || !m[need]) return undefined;
      const offset = Number(at - m.iova);
      const n = Math.min(left, m.buffer.length - offset);
      out.push({ buffer: m.buffer, offset, length: n });
      at += BigInt(n);
      left -= n;
    }
    return out;
  }

  /** A device write of `data` at `iova`: all of it, or nothing on a fault (returns false). */
  write(iova: bigint, data: Buffer): boolean {
    const pieces = this.translate(iova, data.length, 'write');
    if (!pieces) return false;
    let done = 0;
    for (const p of pieces) {
      data.copy(p.buffer, p.offset, done, done + p.length);
      done += p.length;
    }
    if (this.tracking && data.length > 0) {
      const page = BigInt(SIM_IOMMU_PAGE);
      const first = Number(iova / page);
      const last = Number((iova + BigInt(data.length) - 1n) / page);
      for (let p = first; p <= last; p++) this.dirtyPages.add(p);
    }
    return true;
  }

  /** A device read of `length` bytes at `iova`, or undefined on a fault. */
  read(iova: bigint, length: number): Buffer | undefined {
    const pieces = this.translate(iova, length, 'read');
    if (!pieces) return undefined;
    return Buffer.concat(pieces.map((p) => p.buffer.subarray(p.offset, p.offset + p.length)));
  }

  // ---------------------------------------------------------------- IOMMU dirty tracking

  /** Turn IOPTE dirty tracking on (bits cleared first, like iopt_set_dirty_tracking()) or off. */
  setDirtyTracking(on: boolean): void {
    if (on) this.dirtyPages.clear();
    this.tracking = on;
  }

  get dirtyTracking(): boolean {
    return this.tracking;
  }

  /** Set in `bitmap` the pages holding a dirty IOPTE of its range; clear those unless `noClear`. */
  readDirty(bitmap: DirtyBitmap, noClear: boolean): void {
    const page = BigInt(SIM_IOMMU_PAGE);
    for (const p of [...this.dirtyPages]) {
      const at = BigInt(p) * page;
      if (at + page <= bitmap.iova || at >= bitmap.end) continue;
      bitmap.markRange(at, page);
      if (!noClear) this.dirtyPages.delete(p);
    }
  }
}

/**
 * The simulated IOMMU's dirty tracking as `IommuDirtyTracking` (what `HwptDirtyTracker` is on
 * iommufd), with the same userspace checks. `failReads` makes the next reads fail with an errno
 * (a test hook).
 */
export class SimIommuDirty implements IommuDirtyTracking {
  private failures: number[] = [];

  constructor(
    readonly space: SimDmaSpace,
    readonly label: string,
  ) {}

  get enabled(): boolean {
    return this.space.dirtyTracking;
  }

  async enable(): Promise<void> {
    await Promise.resolve();
    this.space.setDirtyTracking(true);
  }

  async disable(): Promise<void> {
    await Promise.resolve();
    this.space.setDirtyTracking(false);
  }

  /** Make the next `times` reads fail with `errno` (test hook). */
  failReads(errno: number, times = 1): void {
    for (let i = 0; i < times; i++) this.failures.push(errno);
  }

  async read(target: DirtyTarget, opts: { noClear?: boolean; onError?: ReportFailurePolicy } = {}): Promise<ReportResult> {
    if (!this.enabled) {
      throw new VfioError('IOMMU dirty tracking is not enabled', { code: 'EVFIO_DIRTY_NOT_STARTED', kind: 'usage', device: this.label, op: 'IOMMU dirty bitmap' });
    }
    checkIommuRead(target, this.label);
    const bitmap = bitmapFor(target).zero();
    await Promise.resolve();
    const errno = this.failures.shift();
    if (errno !== undefined) {
      const e = VfioError.fromErrno(errno, { syscall: 'ioctl', op: 'IOMMU_HWPT_GET_DIRTY_BITMAP', device: this.label });
      return readFailure(e, bitmap, opts.onError);
    }
    this.space.readDirty(bitmap, opts.noClear ?? false);
    return { bitmap };
  }
}

/** An inclusive IOVA interval, as the kernel's interval tree holds ranges. */
export interface Interval {
  start: bigint;
  last: bigint;
}

/**
 * Merge sorted intervals down to `max` by joining the pair with the smallest gap, repeatedly (one
 * interval spanning all when `max` is 1): the port of vfio_combine_iova_ranges()
 * (drivers/vfio/vfio_main.c), which mlx5 and pds call when START gives more ranges than their
 * hardware tracks. The holes joined are tracked too.
 */
export function combineRanges(sorted: readonly Interval[], max: number): Interval[] {
  const out = sorted.map((r) => ({ ...r }));
  if (out.length <= max) return out;
  if (max <= 1) return [{ start: out[0].start, last: out[out.length - 1].last }];
  while (out.length > max) {
    let best = 1;
    for (let i = 2; i < out.length; i++) {
      if (out[i].start - out[i - 1].last < out[best].start - out[best - 1].last) best = i;
    }
    out[best - 1].last = out[best].last;
    out.splice(best, 1);
  }
  return out;
}

/** The device's DMA logging (the driver side of DMA_LOGGING_START / REPORT / STOP). */
export class SimDmaLog {
  /** Dirty pages: iova / pageSize. */
  private readonly dirty = new Set<number>();

  /**
   * @param ranges   what the device tracks (after combining to its range limit), sorted
   * @param pageSize the driver's page size, bytes
   */
  constructor(
    readonly ranges: readonly Interval[],
    readonly pageSize: number,
  ) {}

  /** The device wrote `[iova, iova + length)`: mark its pages that lie inside tracked ranges. */
  mark(iova: bigint, length: number): void {
    if (length <= 0) return;
    const last = iova + BigInt(length) - 1n;
    const ps = BigInt(this.pageSize);
    for (const r of this.ranges) {
      const a = iova > r.start ? iova : r.start;
      const b = last < r.last ? last : r.last;
      if (a > b) continue;
      for (let p = Number(a / ps), end = Number(b / ps); p <= end; p++) this.dirty.add(p);
    }
  }

  /** Pages marked and not yet reported (tests). */
  get pending(): number {
    return this.dirty.size;
  }

  /**
   * log_read_and_clear: every dirty page overlapping `bitmap`'s range sets the bits of the report
   * pages it covers (clipped to the range), and is cleared when the range holds all of it (a page
   * that straddles the range's edge stays dirty for the report of its other part).
   */
  readAndClear(bitmap: DirtyBitmap): void {
    const ps = BigInt(this.pageSize);
    for (const p of [...this.dirty]) {
      const at = BigInt(p) * ps;
      if (at + ps <= bitmap.iova || at >= bitmap.end) continue;
      bitmap.markRange(at, ps);
      if (at >= bitmap.iova && at + ps <= bitmap.end) this.dirty.delete(p);
    }
  }
}

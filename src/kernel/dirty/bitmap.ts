/**
 * `DirtyBitmap`: which pages of one IOVA range a device wrote, in the layout the kernel fills
 * (vfio.h "VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT", iommufd.h "IOMMU_HWPT_GET_DIRTY_BITMAP", both
 * through drivers/iommu/iommufd/iova_bitmap.c) and the layout of KVM's dirty log
 * (KVM_GET_DIRTY_LOG): bit k describes the page at `iova + k * pageSize`; it lives in u64 word
 * k / 64, bit k % 64, and the words are little-endian (the library runs on little-endian hosts
 * only, where the kernel's `unsigned long` bitmap is exactly this byte layout). So a VMM merges
 * a device's report into its KVM dirty log of the same range and page size with one OR.
 *
 * Units: `iova` and `length` are bytes (bigint: IOVAs are u64); `pageSize` is bytes per bit (a
 * power of two); page indexes and counts are numbers.
 */
import { VfioError } from '../../base/errors';
import { rangeError } from '../binding/args';

const MAX_U64 = (1n << 64n) - 1n;
/** The largest bitmap we allocate: 1 GiB of bits (8 Gi pages: 32 TiB at 4 KiB). */
const MAX_BITMAP_BYTES = 2 ** 30;

function usage(message: string): VfioError {
  return new VfioError(message, { code: 'EVFIO_DIRTY_BITMAP', kind: 'usage' });
}

/** True for 1, 2, 4, ... (a positive safe integer with one bit set). */
export function isPowerOfTwo(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && (BigInt(n) & (BigInt(n) - 1n)) === 0n;
}

/** Number of set bits of a 32-bit value. */
function popcount32(v: number): number {
  v = v - ((v >>> 1) & 0x55555555);
  v = (v & 0x33333333) + ((v >>> 2) & 0x33333333);
  return (((v + (v >>> 4)) & 0x0f0f0f0f) * 0x01010101) >>> 24;
}

/** A run of consecutive dirty pages. */
export interface DirtyRun {
  /** Index of the first page of the run (bit index). */
  first: number;
  /** Pages in the run. */
  count: number;
  /** Address of the first page: `bitmap.iova + first * pageSize`. */
  iova: bigint;
  /** Bytes: `count * pageSize`. */
  length: bigint;
}

export class DirtyBitmap {
  /** Number of pages (bits that mean something): ceil(length / pageSize). */
  readonly pages: number;
  /**
   * The bits: ceil(pages / 64) little-endian u64 words (a multiple of 8 bytes). Bits at and
   * beyond `pages` are zero unless someone outside wrote them. The kernel writes this memory
   * directly (its address goes into the ioctl).
   */
  readonly buffer: Buffer;

  /**
   * A bitmap of `[iova, iova + length)` at `pageSize` bytes per bit, all clean, or wrapping
   * `buffer` (a KVM dirty log of the same geometry, for instance; at least `bytesFor(length,
   * pageSize)` bytes, used in place). Throws EVFIO_DIRTY_BITMAP (usage) when `pageSize` is not a
   * power of two, `length` is 0, the range passes 2^64, or the bitmap would exceed 1 GiB.
   */
  constructor(
    readonly iova: bigint,
    readonly length: bigint,
    readonly pageSize: number,
    buffer?: Buffer,
  ) {
    if (typeof iova !== 'bigint' || typeof length !== 'bigint') throw usage('DirtyBitmap: iova and length are bigints (bytes)');
    if (!isPowerOfTwo(pageSize)) throw usage(`DirtyBitmap: page size ${pageSize} is not a power of two`);
    if (iova < 0n || length <= 0n || iova + length - 1n > MAX_U64) {
      throw usage(`DirtyBitmap: bad range iova 0x${iova.toString(16)} length 0x${length.toString(16)} (non-empty, within 2^64)`);
    }
    const bytes = DirtyBitmap.bytesFor(length, pageSize);
    this.pages = Number((length + BigInt(pageSize) - 1n) / BigInt(pageSize));
    if (buffer) {
      if (buffer.length < bytes) throw usage(`DirtyBitmap: the buffer has ${buffer.length} bytes, ${bytes} needed`);
      this.buffer = buffer.subarray(0, bytes);
    } else {
      this.buffer = Buffer.alloc(bytes);
    }
  }

  /**
   * Bytes of a bitmap over `length` bytes at `pageSize`: ceil(pages / 64) * 8, what the kernel
   * may write. Throws EVFIO_DIRTY_BITMAP beyond 1 GiB.
   */
  static bytesFor(length: bigint, pageSize: number): number {
    const pages = (length + BigInt(pageSize) - 1n) / BigInt(pageSize);
    const bytes = ((pages + 63n) / 64n) * 8n;
    if (bytes > BigInt(MAX_BITMAP_BYTES)) {
      throw usage(`DirtyBitmap: ${pages} pages of ${pageSize} bytes need a ${bytes}-byte bitmap; split the range (at most ${MAX_BITMAP_BYTES} bytes)`);
    }
    return Number(bytes);
  }

  /** The end of the range (exclusive): iova + length. */
  get end(): bigint {
    return this.iova + this.length;
  }

  /** Address of page `k`. */
  pageIova(k: number): bigint {
    return this.iova + BigInt(k) * BigInt(this.pageSize);
  }

  /** Is page `k` dirty? False outside 0 .. pages-1. */
  test(k: number): boolean {
    if (!Number.isInteger(k) || k < 0 || k >= this.pages) return false;
    return (this.buffer[k >>> 3] & (1 << (k & 7))) !== 0;
  }

  /** Mark page `k` dirty. RangeError (code ERR_OUT_OF_RANGE) outside 0 .. pages-1. */
  set(k: number): this {
    if (!Number.isInteger(k) || k < 0 || k >= this.pages) throw rangeError(`page ${k} is outside the bitmap (0..${this.pages - 1})`);
    this.buffer[k >>> 3] |= 1 << (k & 7);
    return this;
  }

  /**
   * Mark dirty every page that `[iova, iova + length)` touches, clipped to the bitmap (a write
   * of a few bytes dirties its whole page, as iova_bitmap_set() does). Returns the pages marked.
   */
  markRange(iova: bigint, length: bigint): number {
    const start = iova > this.iova ? iova : this.iova;
    const endEx = iova + length < this.end ? iova + length : this.end;
    if (length <= 0n || start >= endEx) return 0;
    const ps = BigInt(this.pageSize);
    const first = Number((start - this.iova) / ps);
    const last = Number((endEx - 1n - this.iova) / ps);
    this.setBits(first, last - first + 1);
    return last - first + 1;
  }

  /** Set `count` bits from `first` (in range), a byte at a time where whole bytes are covered. */
  private setBits(first: number, count: number): void {
    let k = first;
    const end = first + count;
    while (k < end && (k & 7) !== 0) this.buffer[k >>> 3] |= 1 << (k++ & 7);
    const wholeEnd = end - (end & 7);
    if (k < wholeEnd) {
      this.buffer.fill(0xff, k >>> 3, wholeEnd >>> 3);
      k = wholeEnd;
    }
    while (k < end) this.buffer[k >>> 3] |= 1 << (k++ & 7);
  }

  /** Mark every page dirty ("all dirty": the policy when a report failed). */
  fill(): this {
    this.buffer.fill(0);
    this.setBits(0, this.pages);
    return this;
  }

  /** Mark every page clean (before the kernel fills it: the kernel only sets bits). */
  zero(): this {
    this.buffer.fill(0);
    return this;
  }

  /** Number of dirty pages. */
  count(): number {
    let n = 0;
    const b = this.buffer;
    for (let off = 0; off < b.length; off += 4) {
      const w = b.readUInt32LE(off);
      if (w) n += popcount32(w);
    }
    return n;
  }

  /** No page dirty. */
  isClean(): boolean {
    const b = this.buffer;
    for (let off = 0; off < b.length; off += 4) if (b.readUInt32LE(off)) return false;
    return true;
  }

  /** The dirty pages' indexes, ascending (words of zeros are skipped 32 pages at a time). */
  *dirtyPages(): Generator<number> {
    const b = this.buffer;
    for (let off = 0; off < b.length; off += 4) {
      let w = b.readUInt32LE(off);
      while (w) {
        const bit = 31 - Math.clz32(w & -w);
        const k = off * 8 + bit;
        if (k >= this.pages) return;
        yield k;
        w &= w - 1;
      }
    }
  }

  /** The dirty pages as ascending runs of consecutive pages (what a VMM sends). */
  *runs(): Generator<DirtyRun> {
    let first = -1;
    let prev = -2;
    const ps = BigInt(this.pageSize);
    const run = (f: number, count: number): DirtyRun => ({ first: f, count, iova: this.pageIova(f), length: BigInt(count) * ps });
    for (const k of this.dirtyPages()) {
      if (k !== prev + 1) {
        if (first >= 0) yield run(first, prev - first + 1);
        first = k;
      }
      prev = k;
    }
    if (first >= 0) yield run(first, prev - first + 1);
  }

  /** The dirty pages' indexes as an array (tests, small bitmaps). */
  toArray(): number[] {
    return [...this.dirtyPages()];
  }

  /**
   * OR `other` into this bitmap: both must describe the same range at the same page size
   * (same iova, pageSize and pages); EVFIO_DIRTY_BITMAP otherwise. Returns this.
   */
  merge(other: DirtyBitmap): this {
    if (other.iova !== this.iova || other.pageSize !== this.pageSize || other.pages !== this.pages) {
      throw usage(
        `DirtyBitmap.merge: ranges differ (0x${this.iova.toString(16)}+${this.pages}×${this.pageSize} vs 0x${other.iova.toString(16)}+${other.pages}×${other.pageSize})`,
      );
    }
    const a = this.buffer;
    const b = other.buffer;
    for (let off = 0; off < a.length; off += 4) {
      const w = b.readUInt32LE(off);
      if (w) a.writeUInt32LE((a.readUInt32LE(off) | w) >>> 0, off);
    }
    return this;
  }

  /** A copy with its own buffer. */
  clone(): DirtyBitmap {
    return new DirtyBitmap(this.iova, this.length, this.pageSize, Buffer.from(this.buffer));
  }
}

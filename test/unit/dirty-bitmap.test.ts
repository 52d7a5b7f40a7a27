/**
 * DirtyBitmap (src/kernel/dirty/bitmap.ts): the kernel's and KVM's layout — bit k is page k, in
 * u64 word k / 64, bit k % 64, little-endian — and the operations a VMM needs on it.
 */
import { describe, expect, it } from 'vitest';
import { DirtyBitmap, isPowerOfTwo } from '../../src/kernel/dirty';
import { thrown } from '../helpers/errors';

const KiB = 1024n;

describe('DirtyBitmap layout', () => {
  it('bit k is page k: u64 word k / 64, bit k % 64, little-endian', () => {
    const b = new DirtyBitmap(0x10000n, 200n * 4n * KiB, 4096);
    expect(b.pages).toBe(200);
    expect(b.buffer.length).toBe(32); // ceil(200 / 64) = 4 words
    b.set(0).set(63).set(64).set(70).set(199);
    expect(b.buffer.readBigUInt64LE(0)).toBe((1n << 63n) | 1n);
    expect(b.buffer.readBigUInt64LE(8)).toBe((1n << 0n) | (1n << 6n));
    expect(b.buffer.readBigUInt64LE(24)).toBe(1n << (199n - 192n));
    // Byte view of the same: page 70 is byte 8, bit 6.
    expect(b.buffer[8]).toBe(0x41);
    expect(b.toArray()).toEqual([0, 63, 64, 70, 199]);
    expect(b.pageIova(70)).toBe(0x10000n + 70n * 4096n);
  });

  it('sizes: ceil(length / pageSize) pages, whole u64 words; a partial last page counts', () => {
    expect(new DirtyBitmap(0n, 4096n, 4096).buffer.length).toBe(8);
    expect(new DirtyBitmap(0n, 4097n, 4096).pages).toBe(2);
    expect(new DirtyBitmap(0n, 64n * 4096n, 4096).buffer.length).toBe(8);
    expect(new DirtyBitmap(0n, 65n * 4096n, 4096).buffer.length).toBe(16);
    expect(DirtyBitmap.bytesFor(1n << 40n, 4096)).toBe((1 << 28) / 8); // 1 TiB at 4 KiB: 32 MiB of bits
  });

  it('refuses bad geometry with a usage error', () => {
    for (const [iova, length, ps] of [
      [0n, 4096n, 1000],
      [0n, 4096n, 0],
      [0n, 0n, 4096],
      [-4096n, 4096n, 4096],
      [(1n << 64n) - 4096n, 8192n, 4096],
      [0n, 1n << 60n, 4096], // 2^48 pages: a 32 TiB bitmap
    ] as const) {
      expect(() => new DirtyBitmap(iova, length, ps), `${iova} ${length} ${ps}`).toThrow(expect.objectContaining({ code: 'EVFIO_DIRTY_BITMAP', kind: 'usage' }));
    }
    expect(() => new DirtyBitmap(0n, 4096n * 65n, 4096, Buffer.alloc(8))).toThrow(expect.objectContaining({ code: 'EVFIO_DIRTY_BITMAP' }));
    for (const k of [1, -1, 0.5]) {
      const e = thrown(() => new DirtyBitmap(0n, 4096n, 4096).set(k), RangeError);
      expect([e.message, (e as RangeError & { code?: string }).code]).toEqual([`page ${k} is outside the bitmap (0..0)`, 'ERR_OUT_OF_RANGE']);
    }
  });

  it('isPowerOfTwo', () => {
    expect([1, 2, 4096, 2 ** 40].every(isPowerOfTwo)).toBe(true);
    expect([0, 3, 1000, -4096, 4096.5, 2 ** 40 + 1].some(isPowerOfTwo)).toBe(false);
  });
});

describe('DirtyBitmap operations', () => {
  it('markRange dirties every page a byte range touches, clipped to the bitmap', () => {
    const b = new DirtyBitmap(0x100000n, 16n * 4096n, 4096);
    expect(b.markRange(0x100000n + 4095n, 2n)).toBe(2); // straddles pages 0 and 1
    expect(b.markRange(0x100000n + 5n * 4096n, 1n)).toBe(1);
    expect(b.markRange(0x0n, 0x100000n + 4096n)).toBe(1); // starts below: clipped to page 0
    expect(b.markRange(0x100000n + 15n * 4096n, 1n << 20n)).toBe(1); // runs past the end: page 15 only
    expect(b.markRange(0x200000n, 4096n)).toBe(0); // outside
    expect(b.markRange(0x100000n, 0n)).toBe(0);
    expect(b.toArray()).toEqual([0, 1, 5, 15]);
  });

  it('markRange over whole bytes and odd edges sets exactly those bits', () => {
    const b = new DirtyBitmap(0n, 200n * 4096n, 4096);
    b.markRange(3n * 4096n, 150n * 4096n); // pages 3 .. 152
    const want = Array.from({ length: 150 }, (_, i) => i + 3);
    expect(b.toArray()).toEqual(want);
    expect(b.count()).toBe(150);
  });

  it('fill() is "all dirty": every page, and no bit beyond the last page', () => {
    const b = new DirtyBitmap(0n, 70n * 4096n, 4096);
    b.fill();
    expect(b.count()).toBe(70);
    expect(b.buffer.readBigUInt64LE(0)).toBe((1n << 64n) - 1n);
    expect(b.buffer.readBigUInt64LE(8)).toBe((1n << 6n) - 1n);
    b.zero();
    expect(b.isClean()).toBe(true);
    expect(b.count()).toBe(0);
  });

  it('runs() groups consecutive pages, with addresses and byte lengths', () => {
    const b = new DirtyBitmap(0x8000_0000n, 300n * 4096n, 4096);
    for (const k of [0, 1, 2, 31, 32, 33, 100, 299]) b.set(k);
    expect([...b.runs()]).toEqual([
      { first: 0, count: 3, iova: 0x8000_0000n, length: 3n * 4096n },
      { first: 31, count: 3, iova: 0x8000_0000n + 31n * 4096n, length: 3n * 4096n },
      { first: 100, count: 1, iova: 0x8000_0000n + 100n * 4096n, length: 4096n },
      { first: 299, count: 1, iova: 0x8000_0000n + 299n * 4096n, length: 4096n },
    ]);
  });

  it('dirtyPages() ignores stray bits past the last page', () => {
    const b = new DirtyBitmap(0n, 3n * 4096n, 4096);
    b.buffer[0] = 0xff; // bits 3..7 are beyond page 2
    expect(b.toArray()).toEqual([0, 1, 2]);
    expect(b.test(5)).toBe(false);
  });

  it('merge() ORs a bitmap of the same range and page size, e.g. a KVM dirty log wrapped in place', () => {
    const device = new DirtyBitmap(0x4000_0000n, 128n * 4096n, 4096);
    device.set(1).set(64).set(127);
    const kvmLog = Buffer.alloc(16);
    kvmLog.writeBigUInt64LE(1n << 2n, 0); // KVM: page 2 dirty
    const kvm = new DirtyBitmap(0x4000_0000n, 128n * 4096n, 4096, kvmLog);
    kvm.merge(device);
    expect(kvm.toArray()).toEqual([1, 2, 64, 127]);
    expect(kvmLog.readBigUInt64LE(0)).toBe((1n << 1n) | (1n << 2n)); // in place
    expect(device.toArray()).toEqual([1, 64, 127]); // the source is untouched
  });

  it('merge() refuses another range or page size', () => {
    const a = new DirtyBitmap(0n, 64n * 4096n, 4096);
    expect(() => a.merge(new DirtyBitmap(4096n, 64n * 4096n, 4096))).toThrow(expect.objectContaining({ code: 'EVFIO_DIRTY_BITMAP' }));
    expect(() => a.merge(new DirtyBitmap(0n, 64n * 4096n, 8192))).toThrow(expect.objectContaining({ code: 'EVFIO_DIRTY_BITMAP' }));
    expect(() => a.merge(new DirtyBitmap(0n, 65n * 4096n, 4096))).toThrow(expect.objectContaining({ code: 'EVFIO_DIRTY_BITMAP' }));
  });

  it('clone() copies the bits into a buffer of its own', () => {
    const a = new DirtyBitmap(0n, 64n * 4096n, 4096).set(3);
    const c = a.clone().set(4);
    expect(a.toArray()).toEqual([3]);
    expect(c.toArray()).toEqual([3, 4]);
  });

  it('count() and dirtyPages() agree on random bitmaps', () => {
    let seed = 12345;
    const rnd = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff;
    for (let t = 0; t < 20; t++) {
      const pages = 1 + Math.floor(rnd() * 500);
      const b = new DirtyBitmap(0n, BigInt(pages) * 4096n, 4096);
      const want = new Set<number>();
      for (let i = 0; i < pages / 3; i++) {
        const k = Math.floor(rnd() * pages);
        b.set(k);
        want.add(k);
      }
      expect(b.toArray()).toEqual([...want].sort((x, y) => x - y));
      expect(b.count()).toBe(want.size);
    }
  });
});

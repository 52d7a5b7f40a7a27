/**
 * DMA logging ranges (src/kernel/dirty/ranges.ts): the kernel core's START rules predicted in
 * userspace (drivers/vfio/vfio_main.c vfio_ioctl_device_feature_logging_start, 6.12; the kernel
 * tier proves the same verdicts on mtty), and RAM regions turned into ranges (Cloud Hypervisor:
 * one per region; QEMU: at most three).
 */
import { describe, expect, it } from 'vitest';
import { DMA_LOGGING_MAX_RANGES, checkLoggingRanges, collapseRanges, loggingRanges, normaliseRanges, rangeCovered } from '../../src/kernel/dirty';

const G = 1n << 30n;
const M = 1n << 20n;
const P = 4096n;
const r = (iova: bigint, length: bigint) => ({ iova, length });

describe('checkLoggingRanges: the kernel verdicts', () => {
  it('passes disjoint aligned ranges', () => {
    expect(checkLoggingRanges([r(0n, 2n * P), r(4n * G, G)], P)).toBeUndefined();
    expect(checkLoggingRanges([r(2n * P, P), r(P, P)], P), 'touching, out of order').toBeUndefined();
    expect(checkLoggingRanges(Array.from({ length: 256 }, (_, i) => r(BigInt(i) * 2n * P, P)), P)).toBeUndefined();
  });

  it('no range → EINVAL; more than 256 → E2BIG, before any range is looked at', () => {
    expect(checkLoggingRanges([], P)).toMatchObject({ errno: 'EINVAL' });
    expect(DMA_LOGGING_MAX_RANGES).toBe(256);
    const many = Array.from({ length: 257 }, () => r(1n, 1n)); // each would be EINVAL too
    expect(checkLoggingRanges(many, P)).toMatchObject({ errno: 'E2BIG' });
  });

  it('iova or length not aligned to the page size → EINVAL, naming the range', () => {
    expect(checkLoggingRanges([r(0n, P), r(P * 3n + 512n, P)], P)).toMatchObject({ errno: 'EINVAL', index: 1 });
    expect(checkLoggingRanges([r(0n, P + 1n)], P)).toMatchObject({ errno: 'EINVAL', index: 0 });
    expect(checkLoggingRanges([r(0n, 2n * P)], 8192n), 'length 8 KiB at an 8 KiB page size').toBeUndefined();
    expect(checkLoggingRanges([r(P, P)], 8192n)).toMatchObject({ errno: 'EINVAL', index: 0 });
  });

  it('IS_ALIGNED is a mask: a page size that is not a power of two tests the low bits only', () => {
    // 0x3000 & (0x3000 - 1) = 0x2000: "not aligned" although 0x3000 % 0x3000 = 0.
    expect(checkLoggingRanges([r(0n, 0x3000n)], 0x3000n)).toMatchObject({ errno: 'EINVAL' });
    // page size 0: the mask is all ones, only zeros pass.
    expect(checkLoggingRanges([r(0n, 0n)], 0n)).toBeUndefined();
    expect(checkLoggingRanges([r(0n, P)], 0n)).toMatchObject({ errno: 'EINVAL' });
  });

  it('iova + length past 2^64 → EOVERFLOW (the last page of the space too: the sum is 2^64)', () => {
    expect(checkLoggingRanges([r((1n << 64n) - P, P)], P)).toMatchObject({ errno: 'EOVERFLOW', index: 0 });
    expect(checkLoggingRanges([r((1n << 64n) - 2n * P, P)], P)).toBeUndefined();
  });

  it('a range overlapping an earlier one → EINVAL at the later one', () => {
    expect(checkLoggingRanges([r(0n, 4n * P), r(8n * P, P), r(3n * P, 2n * P)], P)).toMatchObject({ errno: 'EINVAL', index: 2 });
    expect(checkLoggingRanges([r(G, G), r(0n, 2n * G)], P)).toMatchObject({ errno: 'EINVAL', index: 1 });
  });

  it('checks range by range in order: the first broken rule wins', () => {
    // Range 1 overflows, range 2 is misaligned: EOVERFLOW at 1.
    expect(checkLoggingRanges([r(0n, P), r((1n << 64n) - P, P), r(1n, P)], P)).toMatchObject({ errno: 'EOVERFLOW', index: 1 });
    // Misaligned and overflowing in one range: alignment is checked first.
    expect(checkLoggingRanges([r((1n << 64n) - P + 1n, P)], P)).toMatchObject({ errno: 'EINVAL', index: 0 });
  });
});

describe('ranges from RAM regions', () => {
  const pc = [
    { iova: 0n, length: 640n * 1024n }, // low RAM
    { iova: M, length: 2n * G - M }, // RAM below the 32-bit PCI hole
    { iova: 0xfee0_0000n, length: P, deviceMemory: true }, // a BAR in the 32-bit hole
    { iova: 4n * G, length: 6n * G }, // RAM above 4 GiB
    { iova: 64n * G, length: 256n * M, deviceMemory: true }, // a BAR in the 64-bit hole
    { iova: 32n * G, length: G }, // more RAM (hotplugged)
  ];

  it('normaliseRanges: one per region, widened to whole pages, sorted, touching ones merged', () => {
    expect(normaliseRanges([r(5000n, 100n), r(0n, 4096n), r(12288n, 4096n), r(8192n, 4096n)], 4096)).toEqual([r(0n, 16384n)]);
    expect(normaliseRanges(pc, 4096)).toEqual([
      r(0n, 640n * 1024n),
      r(M, 2n * G - M),
      r(0xfee0_0000n, P),
      r(4n * G, 6n * G),
      r(32n * G, G),
      r(64n * G, 256n * M),
    ]);
    expect(normaliseRanges([r(0n, 0n)], 4096)).toEqual([]);
  });

  it("collapseRanges: QEMU's three — below 4 GiB, RAM above, device memory above 4 GiB", () => {
    expect(collapseRanges(pc, 4096)).toEqual([r(0n, 0xfee0_0000n + P), r(4n * G, 29n * G), r(64n * G, 256n * M)]);
  });

  it('collapseRanges: a region crossing 4 GiB belongs to the upper class; classes that would overlap are merged', () => {
    expect(collapseRanges([r(0n, G), r(3n * G, 2n * G)], 4096)).toEqual([r(0n, G), r(3n * G, 2n * G)]);
    // A BAR placed between two RAM regions above 4 GiB: its range lies inside the RAM span.
    expect(collapseRanges([r(4n * G, G), r(8n * G, G), { iova: 6n * G, length: M, deviceMemory: true }], 4096)).toEqual([r(4n * G, 5n * G)]);
  });

  it('collapseRanges output always passes the kernel rules', () => {
    for (const ps of [4096, 65536, 2 * 1024 * 1024]) {
      const out = collapseRanges(pc, ps);
      expect(out.length).toBeLessThanOrEqual(3);
      expect(checkLoggingRanges(out, BigInt(ps)), `page size ${ps}`).toBeUndefined();
    }
  });

  it('loggingRanges: exact while few, collapsed beyond maxRanges', () => {
    expect(loggingRanges([r(0n, G), r(4n * G, G)], { pageSize: 4096 })).toEqual([r(0n, G), r(4n * G, G)]);
    expect(loggingRanges(pc, { pageSize: 4096 })).toEqual(collapseRanges(pc, 4096));
    expect(loggingRanges(pc, { pageSize: 4096, maxRanges: 256 })).toEqual(normaliseRanges(pc, 4096));
  });

  it('rangeCovered: inside the union of ranges, across touching ranges too', () => {
    const ranges = [r(0n, 4n * P), r(4n * P, 4n * P), r(16n * P, P)];
    expect(rangeCovered(ranges, P, 6n * P)).toBe(true);
    expect(rangeCovered(ranges, P, 8n * P)).toBe(false);
    expect(rangeCovered(ranges, 16n * P, P)).toBe(true);
    expect(rangeCovered(ranges, 15n * P, 2n * P)).toBe(false);
  });
});

/**
 * The sim's migration stream format (src/binding/sim/stream.ts): the on-demand data generator,
 * the header and the register trailer.
 */
import { describe, expect, it } from 'vitest';
import { simStream, SIM_PCI_ID } from '../../src/sim';

const { DataGenerator, encodeHeader, checkHeader, encodeTrailer, decodeTrailer, streamLength, HEADER_SIZE, TRAILER_SIZE, SCRATCH_SIZE } = simStream;

describe('data generator', () => {
  it('is deterministic and the same for any range split (unaligned offsets included)', () => {
    const g = new DataGenerator(99n);
    const whole = Buffer.alloc(10_000);
    g.fill(0, whole, 0, whole.length);
    expect(whole.equals(Buffer.alloc(10_000))).toBe(false);
    const again = Buffer.alloc(10_000);
    new DataGenerator(99n).fill(0, again, 0, again.length);
    expect(again.equals(whole)).toBe(true);
    for (const [off, len] of [[1, 7], [3, 1], [7, 9], [8, 8], [4093, 1000], [9999, 1]]) {
      const part = Buffer.alloc(len + 5, 0xaa);
      g.fill(off, part, 5, len);
      expect(part.subarray(0, 5).equals(Buffer.alloc(5, 0xaa))).toBe(true);
      expect(part.subarray(5).equals(whole.subarray(off, off + len))).toBe(true);
    }
  });

  it('spans pieces larger than its scratch buffer', () => {
    const g = new DataGenerator(5n);
    const big = Buffer.alloc(700_001);
    g.fill(3, big, 0, big.length);
    const probe = Buffer.alloc(16);
    g.fill(3 + 600_000, probe, 0, 16);
    expect(big.subarray(600_000, 600_016).equals(probe)).toBe(true);
    expect(g.mismatch(3, big, 0, big.length)).toBe(-1);
    big[650_000] ^= 1;
    expect(g.mismatch(3, big, 0, big.length)).toBe(650_003);
  });

  it('depends on the seed, word index and both seed halves, and matches word()', () => {
    const a = Buffer.alloc(64);
    const b = Buffer.alloc(64);
    new DataGenerator(1n).fill(0, a, 0, 64);
    new DataGenerator(1n + (1n << 32n)).fill(0, b, 0, 64);
    expect(a.equals(b)).toBe(false);
    const g = new DataGenerator(0xfedcba9876543210n);
    const w = Buffer.alloc(8);
    g.fill(8 * 12345, w, 0, 8);
    expect([w.readUInt32LE(0), w.readUInt32LE(4)]).toEqual(g.word(12345));
    // far offsets (beyond 32 GiB: the high half of the word index) work and differ
    const far = Buffer.alloc(8);
    g.fill(8 * (2 ** 32 + 12345), far, 0, 8);
    expect(far.equals(w)).toBe(false);
    expect([far.readUInt32LE(0), far.readUInt32LE(4)]).toEqual(g.word(2 ** 32 + 12345));
  });
});

describe('header and trailer', () => {
  it('encodes and checks the header', () => {
    const h = encodeHeader({ size: 4096, seed: 7n, pciId: SIM_PCI_ID });
    expect(h.length).toBe(HEADER_SIZE);
    expect(h.subarray(0, 8).toString('latin1')).toBe('VFSIMSTR');
    expect(checkHeader(h, { size: 4096, pciId: SIM_PCI_ID })).toEqual({
      major: 1, minor: 0, flags: 0, size: 4096, seed: 7n, pciId: SIM_PCI_ID, trailerSize: TRAILER_SIZE,
    });
    expect(streamLength(4096)).toBe(HEADER_SIZE + 4096 + TRAILER_SIZE);
  });

  it('names what is wrong with a bad header', () => {
    const good = encodeHeader({ size: 4096, seed: 7n, pciId: SIM_PCI_ID });
    const bad = (mutate: (b: Buffer) => void): string => {
      const b = Buffer.from(good);
      mutate(b);
      return checkHeader(b, { size: 4096, pciId: SIM_PCI_ID }) as string;
    };
    expect(bad((b) => (b[0] = 0))).toBe('bad magic');
    expect(bad((b) => b.writeUInt16LE(2, 8))).toMatch(/version 2.0/);
    expect(bad((b) => b.writeUInt16LE(1, 10))).toMatch(/version 1.1/);
    expect(bad((b) => (b[25] ^= 1))).toMatch(/checksum/);
    expect(checkHeader(good, { size: 8192, pciId: SIM_PCI_ID })).toMatch(/4096 data bytes/);
    expect(checkHeader(good, { size: 4096, pciId: 0x12345678 })).toMatch(/PCI id/);
    expect(checkHeader(good.subarray(0, 40), { size: 4096, pciId: SIM_PCI_ID })).toBe('short header');
  });

  it('round-trips the register trailer and detects damage', () => {
    const scratch = Buffer.alloc(SCRATCH_SIZE);
    scratch.write('abc', 100);
    const t = encodeTrailer({ control: 0xdeadbeef, irqCount: 3, scratch });
    expect(t.length).toBe(TRAILER_SIZE);
    expect(decodeTrailer(t)).toEqual({ control: 0xdeadbeef, irqCount: 3, scratch });
    const hurt = Buffer.from(t);
    hurt[200] ^= 4;
    expect(decodeTrailer(hurt)).toMatch(/checksum/);
    hurt[0] = 0;
    expect(decodeTrailer(hurt)).toMatch(/magic/);
  });
});

/**
 * The sim's migration stream format (src/sim/stream.ts): the on-demand data generator (with
 * block versions), block geometry, the version table, the header and the trailer.
 */
import { crc32 } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { simStream, SIM_PCI_ID } from '../../src/sim';

const {
  BlockGeometry, DataGenerator, VersionTable, encodeHeader, checkHeader, encodeTrailer, decodeTrailer, streamLength, defaultBlockSize,
  HEADER_SIZE, TRAILER_SIZE, SCRATCH_SIZE, RECORD_HEADER_SIZE,
} = simStream;
const EXPECT = { size: 4096, pciId: SIM_PCI_ID, blockSize: 1024 };

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

  it('every version of a word differs; version 0 is the default; fill, word and mismatch agree per version', () => {
    const g = new DataGenerator(77n);
    const v0 = Buffer.alloc(4096);
    g.fill(8192, v0, 0, 4096);
    const again = Buffer.alloc(4096);
    g.fill(8192, again, 0, 4096, 0);
    expect(again.equals(v0)).toBe(true);
    const seen = new Set([v0.toString('hex')]);
    for (const version of [1, 2, 3, 0xffffffff]) {
      const v = Buffer.alloc(4096);
      g.fill(8192, v, 0, 4096, version);
      seen.add(v.toString('hex'));
      expect([v.readUInt32LE(8), v.readUInt32LE(12)]).toEqual(g.word(1025, version));
      expect(g.mismatch(8192, v, 0, 4096, version)).toBe(-1);
      // A block at another version differs almost everywhere: the first word already.
      expect(g.mismatch(8192, v, 0, 4096, version - 1)).toBe(8192);
    }
    expect(seen.size).toBe(5);
  });
});

describe('block geometry and the version table', () => {
  it('splits data into blocks, the last one short; counts record bytes', () => {
    const g = new BlockGeometry(10_000, 4096);
    expect(g.blocks).toBe(3);
    expect([g.length(0), g.length(1), g.length(2)]).toEqual([4096, 4096, 10_000 - 8192]);
    expect(g.recordsLength(0, 3)).toBe(3 * RECORD_HEADER_SIZE + 10_000);
    expect(g.recordsLength(1, 3)).toBe(2 * RECORD_HEADER_SIZE + 10_000 - 4096);
    expect(g.recordsLength(2, 2)).toBe(0);
    expect(g.blockOf(8191)).toBe(1);
    expect(new BlockGeometry(0, 4096).blocks).toBe(0);
    expect(() => new BlockGeometry(4096, 1000)).toThrow(RangeError);
    expect(() => new BlockGeometry(4096, 4)).toThrow(RangeError);
  });

  it('default blocks are 4 KiB, doubled above 4 GiB to keep at most 2^20 of them', () => {
    expect(defaultBlockSize(0)).toBe(4096);
    expect(defaultBlockSize(2 ** 30)).toBe(4096);
    expect(defaultBlockSize(2 ** 32)).toBe(4096);
    expect(defaultBlockSize(2 ** 32 + 1)).toBe(8192);
    expect(defaultBlockSize(2 ** 40)).toBe(2 ** 20);
  });

  it('the version table starts at 0 without memory, sums and checksums what it holds', () => {
    const t = new VersionTable(1000);
    const zero = t.digest();
    expect(zero).toEqual({ versionSum: 0, tableCrc: crc32(Buffer.alloc(4000)) });
    expect(t.bump(7)).toBe(1);
    expect(t.bump(7)).toBe(2);
    t.set(999, 5);
    const want = Buffer.alloc(4000);
    want.writeUInt32LE(2, 28);
    want.writeUInt32LE(5, 3996);
    expect(t.digest()).toEqual({ versionSum: 7, tableCrc: crc32(want) });
    t.set(7, 0);
    expect(t.digest().versionSum).toBe(5);
    // The same versions reached another way give the same digest.
    const u = new VersionTable(1000);
    u.set(999, 5);
    expect(u.digest()).toEqual(t.digest());
  });
});

describe('header and trailer', () => {
  it('encodes and checks the header', () => {
    const h = encodeHeader({ size: 4096, seed: 7n, pciId: SIM_PCI_ID, blockSize: 1024 });
    expect(h.length).toBe(HEADER_SIZE);
    expect(h.subarray(0, 8).toString('latin1')).toBe('VFSIMSTR');
    expect(h.readUInt16LE(8)).toBe(2);
    expect(h.readUInt32LE(36)).toBe(1024);
    expect(h.readUInt32LE(44)).toBe(TRAILER_SIZE);
    expect(checkHeader(h, EXPECT)).toEqual({
      major: 2, minor: 0, flags: 0, size: 4096, seed: 7n, pciId: SIM_PCI_ID, blockSize: 1024, trailerSize: TRAILER_SIZE,
    });
    expect(TRAILER_SIZE).toBe(288);
    expect(streamLength(4096, 1024)).toBe(HEADER_SIZE + 4 * RECORD_HEADER_SIZE + 4096 + TRAILER_SIZE);
    expect(streamLength(4096)).toBe(HEADER_SIZE + RECORD_HEADER_SIZE + 4096 + TRAILER_SIZE);
  });

  it('names what is wrong with a bad header', () => {
    const good = encodeHeader({ size: 4096, seed: 7n, pciId: SIM_PCI_ID, blockSize: 1024 });
    const bad = (mutate: (b: Buffer) => void): string => {
      const b = Buffer.from(good);
      mutate(b);
      return checkHeader(b, EXPECT) as string;
    };
    expect(bad((b) => (b[0] = 0))).toBe('bad magic');
    expect(bad((b) => b.writeUInt16LE(1, 8))).toMatch(/version 1.0/); // the old format is refused
    expect(bad((b) => b.writeUInt16LE(3, 8))).toMatch(/version 3.0/);
    expect(bad((b) => b.writeUInt16LE(1, 10))).toMatch(/version 2.1/);
    expect(bad((b) => (b[25] ^= 1))).toMatch(/checksum/);
    expect(bad((b) => (b[37] ^= 1))).toMatch(/checksum/); // the block size is under the CRC
    expect(bad((b) => b.writeUInt32LE(272, 44))).toMatch(/trailer size 272/);
    expect(checkHeader(good, { ...EXPECT, size: 8192 })).toMatch(/4096 data bytes/);
    expect(checkHeader(good, { ...EXPECT, pciId: 0x12345678 })).toMatch(/PCI id/);
    expect(checkHeader(good, { ...EXPECT, blockSize: 4096 })).toMatch(/1024-byte blocks, device has 4096-byte blocks/);
    expect(checkHeader(good.subarray(0, 40), EXPECT)).toBe('short header');
  });

  it('round-trips the register trailer and detects damage', () => {
    const scratch = Buffer.alloc(SCRATCH_SIZE);
    scratch.write('abc', 100);
    const fields = { control: 0xdeadbeef, irqCount: 3, scratch, versionSum: 2 ** 40 + 3, tableCrc: 0x89abcdef };
    const t = encodeTrailer(fields);
    expect(t.length).toBe(TRAILER_SIZE);
    expect(t.readUInt32LE(0)).toBe(0xffffffff); // where a record's block index would be
    expect(t.subarray(4, 8).toString('latin1')).toBe('REGS');
    expect(decodeTrailer(t)).toEqual(fields);
    const hurt = Buffer.from(t);
    hurt[200] ^= 4;
    expect(decodeTrailer(hurt)).toMatch(/checksum/);
    hurt[281] ^= 4;
    hurt[200] ^= 4;
    expect(decodeTrailer(hurt)).toMatch(/checksum/);
    hurt[4] = 0;
    expect(decodeTrailer(hurt)).toMatch(/magic/);
    hurt[0] = 0;
    expect(decodeTrailer(hurt)).toMatch(/end marker/);
  });
});

/**
 * The checksums (src/kernel/pump/checksum.ts, addon/checksum.cc): every implementation the
 * addon has on this CPU gives what the JavaScript references give (the `crc-32` package's
 * CRC-32C, node:zlib's CRC-32), at every length and alignment, continued from any seed; the
 * standard check values; and the algorithm ids files record.
 */
import { describe, expect, it } from 'vitest';
import { NativeBinding } from '../../src/kernel/binding/native';
import {
  CHECKSUM_IDS, checksum, checksumById, checksumImplementation, jsChecksum, type ChecksumAlgorithm,
} from '../../src/kernel/pump/checksum';
import { pattern } from '../helpers/bytes';

const addon = new NativeBinding().addon;
const ALGS: ChecksumAlgorithm[] = ['crc32c', 'crc32'];

describe('checksums', () => {
  it('check values: "123456789" is 0xE3069283 (CRC-32C) and 0xCBF43926 (CRC-32); nothing is 0', () => {
    const s = Buffer.from('123456789');
    expect(jsChecksum.crc32c(s)).toBe(0xe3069283);
    expect(jsChecksum.crc32(s)).toBe(0xcbf43926);
    for (const alg of ALGS) {
      expect(checksum(alg, Buffer.alloc(0))).toBe(0);
      for (let i = 0; i < addon.checksumImplementations[alg].length; i++) {
        expect(addon.checksum(alg, s, 0, i), `${alg} ${addon.checksumImplementations[alg][i]}`).toBe(alg === 'crc32c' ? 0xe3069283 : 0xcbf43926);
        expect(addon.checksum(alg, Buffer.alloc(0), 0x1234, i)).toBe(0x1234);
      }
    }
  });

  for (const alg of ALGS) {
    it(`${alg}: every implementation of this CPU (${addon.checksumImplementations[alg].join(', ')}) agrees with JavaScript at every length, alignment and seed`, () => {
      const data = pattern(70_000, 77);
      const lengths: number[] = [];
      for (let n = 0; n < 70_000; n = n < 600 ? n + 1 : Math.floor(n * 1.3)) lengths.push(n);
      lengths.push(255, 256, 257, 511, 512, 513, 3 * 4096 - 1, 3 * 4096, 3 * 4096 + 1, 3 * 256, 65_536);
      for (let i = 0; i < addon.checksumImplementations[alg].length; i++) {
        const name = addon.checksumImplementations[alg][i];
        for (const n of lengths) {
          for (const off of [0, 1, 3, 7]) {
            if (off + n > data.length) continue;
            const view = data.subarray(off, off + n);
            const seed = (n * 2654435761) >>> 0;
            expect(addon.checksum(alg, view, seed, i), `${name} n=${n} off=${off}`).toBe(jsChecksum[alg](view, seed));
          }
        }
      }
    });

    it(`${alg}: the checksum of a + b continues the checksum of a; checksum() picks the addon for large inputs (${checksumImplementation(alg)})`, () => {
      const a = pattern(5000, 1);
      const b = pattern(3000, 2);
      const whole = Buffer.concat([a, b]);
      expect(checksum(alg, b, checksum(alg, a))).toBe(checksum(alg, whole));
      expect(checksum(alg, whole)).toBe(jsChecksum[alg](whole));
      expect(checksum(alg, new Uint8Array(whole))).toBe(jsChecksum[alg](whole));
      expect(checksumImplementation(alg)).toBe(`native:${addon.checksumImplementations[alg][0]}`);
    });
  }

  it('algorithm ids: 1 is CRC-32, 2 is CRC-32C; anything else is unknown', () => {
    expect(CHECKSUM_IDS).toEqual({ crc32: 1, crc32c: 2 });
    expect(checksumById(1)).toBe('crc32');
    expect(checksumById(2)).toBe('crc32c');
    for (const id of [0, 3, 0xffff]) expect(checksumById(id)).toBeUndefined();
  });
});

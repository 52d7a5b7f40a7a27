/**
 * The checksum algorithms of the pump's records (./types.ts) and of everything that records
 * which one it used (the snapshot file header, src/snapshot/format.ts; the live-migration
 * handshake), named and numbered in this one place.
 *
 *  - 'crc32c': CRC-32C, the Castagnoli polynomial 0x1EDC6F41 (reflected 0x82F63B78), as iSCSI,
 *    SCTP, ext4 and btrfs use it. The default: x86-64 (SSE4.2, and AVX-512 with VPCLMULQDQ) and
 *    ARMv8 compute it with their own instructions, at memory speed with nothing installed.
 *  - 'crc32': CRC-32, the IEEE 802.3 polynomial (reflected 0xEDB88320), as zlib's crc32()
 *    computes it. Snapshot files of format version 1 use it.
 *
 * Both with zlib's conventions: the checksum of nothing is 0, and passing a previous result as
 * `seed` continues it over more bytes (checksum(b, checksum(a)) === checksum(a + b)).
 *
 * In JavaScript: the native addon's implementation (addon/checksum.cc) when the addon loads,
 * for all but short inputs; otherwise CRC-32C from the `crc-32` package (SheetJS, `crc-32/crc32c`)
 * and CRC-32 from node:zlib.
 */
import { crc32 as zlibCrc32 } from 'node:zlib';
import * as CRC32C from 'crc-32/crc32c';
import { nativeAddon } from '../binding/native';

/** A checksum algorithm, by name. */
export type ChecksumAlgorithm = 'crc32c' | 'crc32';

/** The algorithm new data is checksummed with. */
export const DEFAULT_CHECKSUM: ChecksumAlgorithm = 'crc32c';

/**
 * The number each algorithm is recorded as (a u16 in the snapshot file header, the live
 * stream's handshake). Never renumbered; 0 is no algorithm.
 */
export const CHECKSUM_IDS: Readonly<Record<ChecksumAlgorithm, number>> = Object.freeze({ crc32: 1, crc32c: 2 });

/** Human names, for messages and `inspect`. */
export const CHECKSUM_TITLES: Readonly<Record<ChecksumAlgorithm, string>> = Object.freeze({
  crc32: 'CRC-32 (IEEE 802.3, zlib)',
  crc32c: 'CRC-32C (Castagnoli)',
});

/** The algorithm recorded as `id`, or undefined for a number this library does not know. */
export function checksumById(id: number): ChecksumAlgorithm | undefined {
  return (Object.keys(CHECKSUM_IDS) as ChecksumAlgorithm[]).find((a) => CHECKSUM_IDS[a] === id);
}

/** True for 'crc32c' and 'crc32'. */
export function isChecksumAlgorithm(v: unknown): v is ChecksumAlgorithm {
  return v === 'crc32c' || v === 'crc32';
}

/** Inputs shorter than this are checksummed in JavaScript even with the addon (a call costs ~0.1 µs). */
const NATIVE_MIN = 256;

/** The JavaScript implementations (also the reference the addon's are tested against). */
export const jsChecksum: Readonly<Record<ChecksumAlgorithm, (data: Uint8Array, seed?: number) => number>> = Object.freeze({
  crc32c: (data: Uint8Array, seed = 0) => CRC32C.buf(data, seed) >>> 0,
  crc32: (data: Uint8Array, seed = 0) => zlibCrc32(data, seed) >>> 0,
});

/**
 * The checksum `alg` of `data`, continued from `seed` (0 to start), as an unsigned 32-bit
 * integer. Synchronous; ~20-50 µs for 1 MiB with the addon, ~1 ms in JavaScript.
 */
export function checksum(alg: ChecksumAlgorithm, data: Uint8Array, seed = 0): number {
  const addon = data.length >= NATIVE_MIN ? nativeAddon() : undefined;
  if (addon) return addon.checksum(alg, Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength), seed);
  return jsChecksum[alg](data, seed);
}

/**
 * Which implementation computes `alg` for large inputs in this process: the addon's
 * (`native:avx512-vpclmulqdq`, `native:sse4.2`, `native:armv8-crc`, `native:table`,
 * `native:zlib`) or JavaScript's (`js:crc-32`, `js:zlib`).
 */
export function checksumImplementation(alg: ChecksumAlgorithm): string {
  const addon = nativeAddon();
  if (addon) return `native:${addon.checksumImplementations[alg][0]}`;
  return alg === 'crc32c' ? 'js:crc-32' : 'js:zlib';
}

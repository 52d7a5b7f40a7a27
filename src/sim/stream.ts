/**
 * The migration stream of the simulated device: what its data_fd yields in the saving states and
 * accepts in RESUMING. The user must treat it as opaque (uAPI, "VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE");
 * the layout is documented here for the sim's own verifier and for tests.
 *
 * ```
 * offset          size  field (all little-endian)
 * 0               8     magic, the ASCII bytes "VFSIMSTR"
 * 8               2     major version (1); a different major is refused
 * 10              2     minor version (0); a different minor is refused too (mtty's rule)
 * 12              4     flags, must be 0
 * 16              8     SIZE: bytes of device data that follow the header
 * 24              8     seed of the device data
 * 32              4     PCI vendor id (low 16 bits) and device id (high 16 bits), as config dword 0
 * 36              4     trailer size (272)
 * 40              4     CRC-32 (zlib) of bytes 0..39
 * 44              4     reserved, 0
 * 48              SIZE  device data: 8-byte words, word k = dataWord(seed, k) (see below)
 * 48+SIZE         272   trailer, the register block captured on entering STOP_COPY:
 *                         +0 "REGS", +4 CONTROL u32, +8 IRQ_COUNT u32, +12 SCRATCH[256],
 *                         +268 CRC-32 of trailer bytes 0..267
 * ```
 *
 * The register block sits at the end rather than in the header because the device keeps running
 * in PRE_COPY: the header and the first part of the data are served then, while registers may
 * still change; they are only final once the device stops (the same split real drivers make
 * between pre-copy and stop-copy data). The stream is the same whether or not PRE_COPY was used.
 *
 * Device data is never held in memory: any byte range is computed on demand from (seed, word
 * index) by a counter-based generator, so a multi-GiB device streams in bounded memory, and the
 * resuming side verifies incoming data the same way.
 */
import { endianness } from 'node:os';
import { crc32 } from 'node:zlib';

export const STREAM_MAGIC = Buffer.from('VFSIMSTR', 'latin1');
export const STREAM_VERSION_MAJOR = 1;
export const STREAM_VERSION_MINOR = 0;
export const HEADER_SIZE = 48;
export const TRAILER_MAGIC = Buffer.from('REGS', 'latin1');
/** Bytes of the scratch area in BAR0 that are part of the migrated state. */
export const SCRATCH_SIZE = 256;
export const TRAILER_SIZE = 12 + SCRATCH_SIZE + 4;

/** Total stream length for a device of `size` data bytes. */
export function streamLength(size: number): number {
  return HEADER_SIZE + size + TRAILER_SIZE;
}

export interface StreamHeader {
  major: number;
  minor: number;
  flags: number;
  /** Data bytes. */
  size: number;
  seed: bigint;
  /** vendor | device << 16. */
  pciId: number;
  trailerSize: number;
}

export function encodeHeader(h: Pick<StreamHeader, 'size' | 'seed' | 'pciId'>): Buffer {
  const b = Buffer.alloc(HEADER_SIZE);
  STREAM_MAGIC.copy(b, 0);
  b.writeUInt16LE(STREAM_VERSION_MAJOR, 8);
  b.writeUInt16LE(STREAM_VERSION_MINOR, 10);
  b.writeUInt32LE(0, 12);
  b.writeBigUInt64LE(BigInt(h.size), 16);
  b.writeBigUInt64LE(BigInt.asUintN(64, h.seed), 24);
  b.writeUInt32LE(h.pciId >>> 0, 32);
  b.writeUInt32LE(TRAILER_SIZE, 36);
  b.writeUInt32LE(crc32(b.subarray(0, 40)), 40);
  return b;
}

/**
 * Check a complete header against what this device expects. Returns the problem, or the decoded
 * header when it is acceptable.
 */
export function checkHeader(b: Buffer, expect: { size: number; pciId: number }): StreamHeader | string {
  if (b.length < HEADER_SIZE) return 'short header';
  if (!b.subarray(0, 8).equals(STREAM_MAGIC)) return 'bad magic';
  const h: StreamHeader = {
    major: b.readUInt16LE(8),
    minor: b.readUInt16LE(10),
    flags: b.readUInt32LE(12),
    size: Number(b.readBigUInt64LE(16)),
    seed: b.readBigUInt64LE(24),
    pciId: b.readUInt32LE(32),
    trailerSize: b.readUInt32LE(36),
  };
  if (h.major !== STREAM_VERSION_MAJOR || h.minor !== STREAM_VERSION_MINOR) return `unsupported version ${h.major}.${h.minor}`;
  if (b.readUInt32LE(40) !== crc32(b.subarray(0, 40))) return 'header checksum mismatch';
  if (h.flags !== 0) return `unknown header flags 0x${h.flags.toString(16)}`;
  if (b.readUInt32LE(44) !== 0) return 'reserved header field is not 0';
  if (h.trailerSize !== TRAILER_SIZE) return `trailer size ${h.trailerSize}, expected ${TRAILER_SIZE}`;
  if (h.pciId !== expect.pciId >>> 0) return `stream is for PCI id ${h.pciId.toString(16)}, device is ${(expect.pciId >>> 0).toString(16)}`;
  if (h.size !== expect.size) return `stream carries ${h.size} data bytes, device holds ${expect.size}`;
  return h;
}

/** The migrated register block (BAR0 CONTROL, IRQ_COUNT and the scratch area). */
export interface RegisterBlock {
  control: number;
  irqCount: number;
  /** SCRATCH_SIZE bytes. */
  scratch: Buffer;
}

export function encodeTrailer(r: RegisterBlock): Buffer {
  const b = Buffer.alloc(TRAILER_SIZE);
  TRAILER_MAGIC.copy(b, 0);
  b.writeUInt32LE(r.control >>> 0, 4);
  b.writeUInt32LE(r.irqCount >>> 0, 8);
  r.scratch.copy(b, 12, 0, SCRATCH_SIZE);
  b.writeUInt32LE(crc32(b.subarray(0, TRAILER_SIZE - 4)), TRAILER_SIZE - 4);
  return b;
}

export function decodeTrailer(b: Buffer): RegisterBlock | string {
  if (b.length < TRAILER_SIZE) return 'short trailer';
  if (!b.subarray(0, 4).equals(TRAILER_MAGIC)) return 'bad trailer magic';
  if (b.readUInt32LE(TRAILER_SIZE - 4) !== crc32(b.subarray(0, TRAILER_SIZE - 4))) return 'trailer checksum mismatch';
  return { control: b.readUInt32LE(4), irqCount: b.readUInt32LE(8), scratch: Buffer.from(b.subarray(12, 12 + SCRATCH_SIZE)) };
}

// ------------------------------------------------------------------------------------ data

const LITTLE_ENDIAN_HOST = endianness() === 'LE';
/** Bytes generated per step; bounds the generator's scratch memory. */
const PIECE = 256 * 1024;

/** murmur3's 32-bit finaliser: a bijection on u32 with good avalanche. */
function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/**
 * The device data of one seed, computed for any byte range on demand. Word k (bytes 8k..8k+7 of
 * the data part) is `lo | hi << 32` with
 *   lo = fmix32(kLo ^ a ^ imul(kHi, 0x9E3779B1)),  hi = fmix32(lo ^ b ^ imul(kLo, 0x27D4EB2D))
 * where kLo/kHi are the low/high 32 bits of k and a/b are fmix32 of the seed's low/high half
 * (with distinct constants mixed in), stored little-endian.
 */
export class DataGenerator {
  private readonly a: number;
  private readonly b: number;
  private scratch?: Buffer;

  constructor(readonly seed: bigint) {
    const s = BigInt.asUintN(64, seed);
    this.a = fmix32(Number(s & 0xffffffffn) ^ 0x5bd1e995);
    this.b = fmix32(Number(s >> 32n) ^ 0x1b873593);
  }

  /** The 8 bytes of word `k`, as [lo, hi]. */
  word(k: number): [number, number] {
    const kLo = k >>> 0;
    const kHi = Math.floor(k / 0x100000000) >>> 0;
    const lo = fmix32(kLo ^ this.a ^ Math.imul(kHi, 0x9e3779b1));
    const hi = fmix32(lo ^ this.b ^ Math.imul(kLo, 0x27d4eb2d));
    return [lo, hi];
  }

  /** Write data bytes [offset, offset + len) into `target` at `targetOff`. */
  fill(offset: number, target: Buffer, targetOff: number, len: number): void {
    while (len > 0) {
      const piece = Math.min(len, PIECE);
      const src = this.generate(offset, piece);
      src.copy(target, targetOff);
      offset += piece;
      targetOff += piece;
      len -= piece;
    }
  }

  /**
   * Compare `len` bytes of `src` at `srcOff` with data bytes [offset, offset + len). Returns -1
   * when equal, else the data offset of the first differing byte.
   */
  mismatch(offset: number, src: Buffer, srcOff: number, len: number): number {
    while (len > 0) {
      const piece = Math.min(len, PIECE);
      const want = this.generate(offset, piece);
      const got = src.subarray(srcOff, srcOff + piece);
      if (!want.equals(got)) {
        for (let i = 0; i < piece; i++) if (want[i] !== got[i]) return offset + i;
      }
      offset += piece;
      srcOff += piece;
      len -= piece;
    }
    return -1;
  }

  /** Data bytes [offset, offset + len), len <= PIECE, in a view of the scratch buffer. */
  private generate(offset: number, len: number): Buffer {
    const first = Math.floor(offset / 8);
    const skip = offset - first * 8;
    const words = Math.ceil((skip + len) / 8);
    this.scratch ??= Buffer.alloc(PIECE + 16);
    const buf = this.scratch;
    if (LITTLE_ENDIAN_HOST) {
      // The scratch Buffer is not pooled (Buffer.alloc of > 4 KiB), so its byteOffset is 8-aligned.
      const u32 = new Uint32Array(buf.buffer, buf.byteOffset, words * 2);
      const { a, b } = this;
      let k = first;
      for (let i = 0; i < words; i++, k++) {
        const kLo = k >>> 0;
        const kHi = k > 0xffffffff ? Math.floor(k / 0x100000000) >>> 0 : 0;
        const lo = fmix32(kLo ^ a ^ Math.imul(kHi, 0x9e3779b1));
        u32[2 * i] = lo;
        u32[2 * i + 1] = fmix32(lo ^ b ^ Math.imul(kLo, 0x27d4eb2d));
      }
    } else {
      for (let i = 0; i < words; i++) {
        const [lo, hi] = this.word(first + i);
        buf.writeUInt32LE(lo, 8 * i);
        buf.writeUInt32LE(hi, 8 * i + 4);
      }
    }
    return buf.subarray(skip, skip + len);
  }
}

/**
 * The migration stream of the simulated device: what its data_fd yields in the saving states and
 * accepts in RESUMING. The user must treat it as opaque (uAPI, "VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE");
 * the layout is documented here for the sim's own verifier and for tests.
 *
 * The device data is SIZE bytes split into N = ceil(SIZE / BLOCK) blocks (the last one may be
 * shorter). Each block has a version, bumped whenever the running device rewrites the block
 * (src/sim/data.ts); the bytes of block b at version v are computed, never stored (see "Data").
 * Like a real driver's stream (mlx5 sends its state in pieces, later pieces superseding earlier
 * ones), the stream is a sequence of block records: every block once (the initial data, in block
 * order), then blocks the device rewrote after they were sent, again, with their new version.
 *
 * ```
 * offset  size     field (all little-endian)
 * header, 48 bytes:
 * 0       8        magic, the ASCII bytes "VFSIMSTR"
 * 8       2        major version (2); a different major is refused
 * 10      2        minor version (0); a different minor is refused too (mtty's rule)
 * 12      4        flags, must be 0
 * 16      8        SIZE: bytes of device data
 * 24      8        seed of the device data
 * 32      4        PCI vendor id (low 16 bits) and device id (high 16 bits), as config dword 0
 * 36      4        BLOCK: bytes per block, a power of two from 8 to 2^30 (the device's own)
 * 40      4        CRC-32 (zlib) of bytes 0..39
 * 44      4        trailer size (288)
 * then records, one after the other, each:
 * +0      4        block index b, 0 <= b < N
 * +4      4        version v of the block
 * +8      len(b)   the block's bytes at version v; len(b) = min(BLOCK, SIZE - b * BLOCK)
 * then the trailer, 288 bytes, where the next record's block index would be:
 * +0      4        0xFFFFFFFF, the end marker (no block has this index)
 * +4      4        "REGS"
 * +8      4        CONTROL (BAR0), as the device stopped
 * +12     4        IRQ_COUNT
 * +16     256      SCRATCH
 * +272    8        sum of the final versions of all N blocks
 * +280    4        CRC-32 (zlib) of the final version table: N u32 LE, block 0 first
 * +284    4        CRC-32 (zlib) of trailer bytes 0..283
 * ```
 *
 * Rules of the record sequence, which the resuming side checks (src/sim/session.ts):
 *  - the first record of each block comes in block order: a record's index is at most the number
 *    of distinct blocks seen before it (so the initial data is blocks 0, 1, 2, ... with later
 *    records of already-sent blocks possibly in between);
 *  - a later record of a block supersedes the earlier one and must carry a greater version;
 *  - each record's bytes are those of (seed, block, version);
 *  - at the end marker every block has been sent, and the versions held, summed and checksummed,
 *    are the trailer's: a missing update, a stale block or a stream cut short is refused.
 *
 * A plain STOP_COPY save (no PRE_COPY) is header, blocks 0..N-1 once each, trailer:
 * `streamLength(SIZE, BLOCK)` = 48 + 8 N + SIZE + 288 bytes. In PRE_COPY the header and the
 * initial blocks come first, then records of blocks rewritten since they were sent; STOP_COPY
 * continues on the same fd with the blocks not sent yet, the blocks still dirty, and the trailer.
 * The register block and the version digest sit in the trailer because the device keeps running
 * (and changing them) until it stops.
 *
 * Version 1 (one copy of the data, no records, a 272-byte trailer) is not accepted: the sim
 * never kept streams of its own across versions, and a driver refuses a version it does not
 * speak (mtty: EINVAL at the RESUMING exit; here, as before, EFAULT on the header's write).
 *
 * Data: device data is never held in memory. Any byte range of a block is computed on demand
 * from (seed, version, word index) by a counter-based generator, so a multi-GiB device streams in
 * bounded memory, and the resuming side verifies incoming data the same way.
 */
import { endianness } from 'node:os';
import { crc32 } from 'node:zlib';

export const STREAM_MAGIC = Buffer.from('VFSIMSTR', 'latin1');
export const STREAM_VERSION_MAJOR = 2;
export const STREAM_VERSION_MINOR = 0;
export const HEADER_SIZE = 48;
/** Bytes before a record's block data: block index and version. */
export const RECORD_HEADER_SIZE = 8;
/** The block index that marks the trailer. */
export const END_MARKER = 0xffffffff;
export const TRAILER_MAGIC = Buffer.from('REGS', 'latin1');
/** Bytes of the scratch area in BAR0 that are part of the migrated state. */
export const SCRATCH_SIZE = 256;
export const TRAILER_SIZE = 16 + SCRATCH_SIZE + 16;
/** Smallest and largest block size. */
export const MIN_BLOCK_SIZE = 8;
export const MAX_BLOCK_SIZE = 2 ** 30;
/** Default block size: 4 KiB, or more for devices that would otherwise have more than MAX_DEFAULT_BLOCKS blocks. */
export const DEFAULT_BLOCK_SIZE = 4096;
/** Most blocks a device gets by default (its version table: 4 bytes per block, so 4 MiB). */
export const MAX_DEFAULT_BLOCKS = 2 ** 20;

/** The default block size of a device of `size` data bytes: 4 KiB, doubled until there are at most 2^20 blocks. */
export function defaultBlockSize(size: number): number {
  let b = DEFAULT_BLOCK_SIZE;
  while (Math.ceil(size / b) > MAX_DEFAULT_BLOCKS && b < MAX_BLOCK_SIZE) b *= 2;
  return b;
}

/** True for a usable block size: a power of two from 8 to 2^30. */
export function isBlockSize(n: number): boolean {
  return Number.isSafeInteger(n) && n >= MIN_BLOCK_SIZE && n <= MAX_BLOCK_SIZE && (n & (n - 1)) === 0;
}

/** How data bytes split into blocks. */
export class BlockGeometry {
  /** Number of blocks, N. */
  readonly blocks: number;

  constructor(
    /** Data bytes, SIZE. */
    readonly size: number,
    /** Bytes per block, BLOCK. */
    readonly blockSize: number,
  ) {
    if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`data size must be a non-negative integer, got ${size}`);
    if (!isBlockSize(blockSize)) throw new RangeError(`block size must be a power of two from ${MIN_BLOCK_SIZE} to 2^30, got ${blockSize}`);
    this.blocks = Math.ceil(size / blockSize);
    if (this.blocks >= END_MARKER) throw new RangeError(`${this.blocks} blocks of ${blockSize} bytes are too many for the stream's u32 block index`);
  }

  /** Data offset of block `b`. */
  start(b: number): number {
    return b * this.blockSize;
  }

  /** Bytes of block `b`. */
  length(b: number): number {
    return Math.min(this.blockSize, this.size - b * this.blockSize);
  }

  /** Stream bytes of one record of block `b` (record header + data). */
  recordLength(b: number): number {
    return RECORD_HEADER_SIZE + this.length(b);
  }

  /** Stream bytes of one record of each block in [first, end). */
  recordsLength(first: number, end: number): number {
    if (end <= first) return 0;
    return (end - first) * RECORD_HEADER_SIZE + Math.min(this.size, end * this.blockSize) - first * this.blockSize;
  }

  /** The block holding data byte `offset`. */
  blockOf(offset: number): number {
    return Math.floor(offset / this.blockSize);
  }
}

/** Length of a plain STOP_COPY stream (every block once) of `size` data bytes in blocks of `blockSize` (default: the device default). */
export function streamLength(size: number, blockSize = defaultBlockSize(size)): number {
  const g = new BlockGeometry(size, blockSize);
  return HEADER_SIZE + g.recordsLength(0, g.blocks) + TRAILER_SIZE;
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
  blockSize: number;
  trailerSize: number;
}

export function encodeHeader(h: Pick<StreamHeader, 'size' | 'seed' | 'pciId' | 'blockSize'>): Buffer {
  const b = Buffer.alloc(HEADER_SIZE);
  STREAM_MAGIC.copy(b, 0);
  b.writeUInt16LE(STREAM_VERSION_MAJOR, 8);
  b.writeUInt16LE(STREAM_VERSION_MINOR, 10);
  b.writeUInt32LE(0, 12);
  b.writeBigUInt64LE(BigInt(h.size), 16);
  b.writeBigUInt64LE(BigInt.asUintN(64, h.seed), 24);
  b.writeUInt32LE(h.pciId >>> 0, 32);
  b.writeUInt32LE(h.blockSize >>> 0, 36);
  b.writeUInt32LE(crc32(b.subarray(0, 40)), 40);
  b.writeUInt32LE(TRAILER_SIZE, 44);
  return b;
}

/**
 * Check a complete header against what this device expects. Returns the problem, or the decoded
 * header when it is acceptable.
 */
export function checkHeader(b: Buffer, expect: { size: number; pciId: number; blockSize: number }): StreamHeader | string {
  if (b.length < HEADER_SIZE) return 'short header';
  if (!b.subarray(0, 8).equals(STREAM_MAGIC)) return 'bad magic';
  const h: StreamHeader = {
    major: b.readUInt16LE(8),
    minor: b.readUInt16LE(10),
    flags: b.readUInt32LE(12),
    size: Number(b.readBigUInt64LE(16)),
    seed: b.readBigUInt64LE(24),
    pciId: b.readUInt32LE(32),
    blockSize: b.readUInt32LE(36),
    trailerSize: b.readUInt32LE(44),
  };
  if (h.major !== STREAM_VERSION_MAJOR || h.minor !== STREAM_VERSION_MINOR) return `unsupported version ${h.major}.${h.minor}`;
  if (b.readUInt32LE(40) !== crc32(b.subarray(0, 40))) return 'header checksum mismatch';
  if (h.flags !== 0) return `unknown header flags 0x${h.flags.toString(16)}`;
  if (h.trailerSize !== TRAILER_SIZE) return `trailer size ${h.trailerSize}, expected ${TRAILER_SIZE}`;
  if (h.pciId !== expect.pciId >>> 0) return `stream is for PCI id ${h.pciId.toString(16)}, device is ${(expect.pciId >>> 0).toString(16)}`;
  if (h.size !== expect.size) return `stream carries ${h.size} data bytes, device holds ${expect.size}`;
  if (h.blockSize !== expect.blockSize) return `stream has ${h.blockSize}-byte blocks, device has ${expect.blockSize}-byte blocks`;
  return h;
}

export function encodeRecordHeader(block: number, version: number): Buffer {
  const b = Buffer.alloc(RECORD_HEADER_SIZE);
  b.writeUInt32LE(block >>> 0, 0);
  b.writeUInt32LE(version >>> 0, 4);
  return b;
}

/** The migrated register block (BAR0 CONTROL, IRQ_COUNT and the scratch area). */
export interface RegisterBlock {
  control: number;
  irqCount: number;
  /** SCRATCH_SIZE bytes. */
  scratch: Buffer;
}

/** What identifies the final state of the device data: the versions of its blocks. */
export interface VersionDigest {
  /** Sum of the versions of every block. */
  versionSum: number;
  /** CRC-32 of the version table (N u32 LE). */
  tableCrc: number;
}

export interface Trailer extends RegisterBlock, VersionDigest {}

export function encodeTrailer(t: Trailer): Buffer {
  const b = Buffer.alloc(TRAILER_SIZE);
  b.writeUInt32LE(END_MARKER, 0);
  TRAILER_MAGIC.copy(b, 4);
  b.writeUInt32LE(t.control >>> 0, 8);
  b.writeUInt32LE(t.irqCount >>> 0, 12);
  t.scratch.copy(b, 16, 0, SCRATCH_SIZE);
  b.writeBigUInt64LE(BigInt(t.versionSum), 272);
  b.writeUInt32LE(t.tableCrc >>> 0, 280);
  b.writeUInt32LE(crc32(b.subarray(0, TRAILER_SIZE - 4)), TRAILER_SIZE - 4);
  return b;
}

export function decodeTrailer(b: Buffer): Trailer | string {
  if (b.length < TRAILER_SIZE) return 'short trailer';
  if (b.readUInt32LE(0) !== END_MARKER) return 'no end marker';
  if (!b.subarray(4, 8).equals(TRAILER_MAGIC)) return 'bad trailer magic';
  if (b.readUInt32LE(TRAILER_SIZE - 4) !== crc32(b.subarray(0, TRAILER_SIZE - 4))) return 'trailer checksum mismatch';
  return {
    control: b.readUInt32LE(8),
    irqCount: b.readUInt32LE(12),
    scratch: Buffer.from(b.subarray(16, 16 + SCRATCH_SIZE)),
    versionSum: Number(b.readBigUInt64LE(272)),
    tableCrc: b.readUInt32LE(280),
  };
}

/** One record of a stream, as {@link splitStream} finds it. */
export interface StreamRecord {
  block: number;
  version: number;
  /** Stream offset of the record's header; its data follows RECORD_HEADER_SIZE bytes later. */
  offset: number;
  /** Data bytes. */
  length: number;
}

/**
 * The framing of a whole stream held in memory, for tests and inspection: header, records and
 * trailer, without checking data or the sequence rules (the resuming side does). Throws a
 * RangeError naming the offset where the framing breaks.
 */
export function splitStream(b: Buffer): { header: StreamHeader; records: StreamRecord[]; trailer: Trailer } {
  const raw = b.subarray(0, HEADER_SIZE);
  const size = raw.length === HEADER_SIZE ? Number(raw.readBigUInt64LE(16)) : 0;
  const header = checkHeader(raw, { size, pciId: raw.length === HEADER_SIZE ? raw.readUInt32LE(32) : 0, blockSize: raw.length === HEADER_SIZE ? raw.readUInt32LE(36) : 0 });
  if (typeof header === 'string') throw new RangeError(`stream header: ${header}`);
  const g = new BlockGeometry(header.size, header.blockSize);
  const records: StreamRecord[] = [];
  let at = HEADER_SIZE;
  for (;;) {
    if (at + RECORD_HEADER_SIZE > b.length) throw new RangeError(`stream ends at ${b.length} inside a record header at ${at}`);
    const block = b.readUInt32LE(at);
    if (block === END_MARKER) break;
    if (block >= g.blocks) throw new RangeError(`record at ${at} is for block ${block} of ${g.blocks}`);
    const length = g.length(block);
    if (at + RECORD_HEADER_SIZE + length > b.length) throw new RangeError(`stream ends at ${b.length} inside the record at ${at}`);
    records.push({ block, version: b.readUInt32LE(at + 4), offset: at, length });
    at += RECORD_HEADER_SIZE + length;
  }
  if (at + TRAILER_SIZE !== b.length) throw new RangeError(`trailer at ${at} of ${TRAILER_SIZE} bytes, stream of ${b.length}`);
  const trailer = decodeTrailer(b.subarray(at));
  if (typeof trailer === 'string') throw new RangeError(`stream trailer: ${trailer}`);
  return { header, records, trailer };
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
 * The device data of one seed, computed for any byte range and block version on demand. Word k
 * (bytes 8k..8k+7 of the data) at version v is `lo | hi << 32` with
 *   lo = fmix32(kLo ^ a ^ imul(kHi, 0x9E3779B1)),  hi = fmix32(lo ^ b ^ imul(kLo, 0x27D4EB2D))
 * where kLo/kHi are the low/high 32 bits of k and
 *   a = fmix32(seedLo ^ 0x5BD1E995 ^ imul(v, 0xCC9E2D51)),  b = fmix32(seedHi ^ 0x1B873593 ^ imul(v, 0x85EBCA77)),
 * stored little-endian. Version 0 is the data a device starts with.
 */
export class DataGenerator {
  private readonly seedLo: number;
  private readonly seedHi: number;
  private scratch?: Buffer;
  private keyVersion = -1;
  private a = 0;
  private b = 0;

  constructor(readonly seed: bigint) {
    const s = BigInt.asUintN(64, seed);
    this.seedLo = Number(s & 0xffffffffn);
    this.seedHi = Number(s >> 32n);
  }

  /** The 8 bytes of word `k` at `version`, as [lo, hi]. */
  word(k: number, version = 0): [number, number] {
    this.keys(version);
    const kLo = k >>> 0;
    const kHi = Math.floor(k / 0x100000000) >>> 0;
    const lo = fmix32(kLo ^ this.a ^ Math.imul(kHi, 0x9e3779b1));
    const hi = fmix32(lo ^ this.b ^ Math.imul(kLo, 0x27d4eb2d));
    return [lo, hi];
  }

  /** Write data bytes [offset, offset + len) at `version` into `target` at `targetOff`. */
  fill(offset: number, target: Buffer, targetOff: number, len: number, version = 0): void {
    while (len > 0) {
      const piece = Math.min(len, PIECE);
      const src = this.generate(offset, piece, version);
      src.copy(target, targetOff);
      offset += piece;
      targetOff += piece;
      len -= piece;
    }
  }

  /**
   * Compare `len` bytes of `src` at `srcOff` with data bytes [offset, offset + len) at `version`.
   * Returns -1 when equal, else the data offset of the first differing byte.
   */
  mismatch(offset: number, src: Buffer, srcOff: number, len: number, version = 0): number {
    while (len > 0) {
      const piece = Math.min(len, PIECE);
      const want = this.generate(offset, piece, version);
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

  /** The word keys of `version`. */
  private keys(version: number): void {
    if (version === this.keyVersion) return;
    this.a = fmix32(this.seedLo ^ 0x5bd1e995 ^ Math.imul(version, 0xcc9e2d51));
    this.b = fmix32(this.seedHi ^ 0x1b873593 ^ Math.imul(version, 0x85ebca77));
    this.keyVersion = version;
  }

  /** Data bytes [offset, offset + len), len <= PIECE, in a view of the scratch buffer. */
  private generate(offset: number, len: number, version: number): Buffer {
    this.keys(version);
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
        const [lo, hi] = this.word(first + i, version);
        buf.writeUInt32LE(lo, 8 * i);
        buf.writeUInt32LE(hi, 8 * i + 4);
      }
    }
    return buf.subarray(skip, skip + len);
  }
}

// ------------------------------------------------------------------------------------ versions

/**
 * The version of every block: a u32 per block, allocated on the first version that is not 0 (a
 * device that never changed holds no table). Bounded memory: 4 bytes per block.
 */
export class VersionTable {
  private table?: Uint32Array;
  private sum = 0;

  constructor(readonly blocks: number) {}

  get(b: number): number {
    return this.table ? this.table[b] : 0;
  }

  /** Set block `b`'s version. */
  set(b: number, v: number): void {
    const old = this.get(b);
    if (old === v) return;
    this.table ??= new Uint32Array(this.blocks);
    this.table[b] = v >>> 0;
    this.sum += (v >>> 0) - old;
  }

  /** Bump block `b`'s version; returns the new one. */
  bump(b: number): number {
    const v = (this.get(b) + 1) >>> 0;
    this.set(b, v);
    return v;
  }

  /** The sum and the CRC-32 of the table (N u32 LE). */
  digest(): VersionDigest {
    return { versionSum: this.sum, tableCrc: this.crc() };
  }

  private crc(): number {
    const step = 16384; // u32 entries per piece: 64 KiB
    let crc = 0;
    if (!this.table) {
      const zeros = Buffer.alloc(Math.min(this.blocks, step) * 4);
      for (let i = 0; i < this.blocks; i += step) crc = crc32(zeros.subarray(0, Math.min(step, this.blocks - i) * 4), crc);
      return crc;
    }
    const t = this.table;
    if (LITTLE_ENDIAN_HOST) return crc32(Buffer.from(t.buffer, t.byteOffset, t.byteLength), 0);
    const piece = Buffer.alloc(Math.min(this.blocks, step) * 4);
    for (let i = 0; i < this.blocks; i += step) {
      const n = Math.min(step, this.blocks - i);
      for (let j = 0; j < n; j++) piece.writeUInt32LE(t[i + j], 4 * j);
      crc = crc32(piece.subarray(0, 4 * n), crc);
    }
    return crc;
  }
}

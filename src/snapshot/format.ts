/**
 * The snapshot container, format version 2 (and version 1, read): byte layout, constants and
 * codecs of its fixed parts. docs/snapshot-format.md is the byte-level reference; this file is
 * its code.
 *
 *   file header (32 B): magic, version, byte-order mark, length, created, checksum algorithm
 *   section*    : section header (32 B) + body
 *                 plain body   : `length` bytes, checksum in the header
 *                 chunked body : chunk* ([u32 length][u32 checksum][payload]) then an end chunk
 *                                ([u32 0][u32 checksum of the chunk table][u64 total payload bytes])
 *   END section : header (type 0) + 16-byte body: u64 offset of the END header,
 *                 u32 checksum of the file's skeleton, u32 number of sections before it
 *
 * Everything is little-endian. Every checksum but the version 2 file header's own is the
 * file's algorithm (src/kernel/pump/checksum.ts): CRC-32C (id 2) in the files this library
 * writes, CRC-32 (IEEE 802.3, zlib's; id 1) in version 1 files, which name none. The version 2
 * file header is always checked with CRC-32C, so that a damaged header is told apart from an
 * algorithm this library does not know.
 * The skeleton is every byte of the file before the END section except chunk payloads, which
 * their own checksum (part of the skeleton) covers: so the END checksum covers the whole file
 * transitively while each byte is hashed once. Chunks are the data pump's records with no
 * prefix (src/kernel/pump/types.ts).
 */
import { VfioError, type EvfioCode } from '../base/errors';
import type { DeviceIdentity } from '../model/pci/identity';
import { CHECKSUM_IDS, CHECKSUM_TITLES, checksum, checksumById, type ChecksumAlgorithm } from '../kernel/pump/checksum';

export { identityFromConfig, describeIdentity, identityDiff, type DeviceIdentity } from '../model/pci/identity';
export type { ChecksumAlgorithm } from '../kernel/pump/checksum';

export const MAGIC = Buffer.from('VFIOSNAP', 'latin1');
/** The version this library writes. */
export const FORMAT_VERSION = 2;
/** The versions it reads. */
export const READ_VERSIONS: readonly number[] = [1, 2];
/** Written as u16 LE: bytes FF FE. A big-endian writer would produce FE FF. */
export const ENDIAN_MARK = 0xfeff;
export const FILE_HEADER_SIZE = 32;
export const SECTION_HEADER_SIZE = 32;
export const CHUNK_HEADER_SIZE = 8;
export const END_CHUNK_SIZE = 16;
export const END_BODY_SIZE = 16;
/** Largest chunk payload a reader accepts (bounds a reader's memory). */
export const MAX_CHUNK = 16 << 20;
/** Largest plain section body a reader accepts. */
export const MAX_PLAIN_BODY = 16 << 20;
/** Device index of sections that belong to the whole file. */
export const FILE_WIDE = 0xffff;
/** The checksum algorithm of new files. */
export const DEFAULT_FILE_CHECKSUM: ChecksumAlgorithm = 'crc32c';
/** The algorithm of version 1 files (they do not name one). */
export const VERSION_1_CHECKSUM: ChecksumAlgorithm = 'crc32';

export const SECTION_FLAG_REQUIRED = 1 << 0;
export const SECTION_FLAG_CHUNKED = 1 << 1;
export const KNOWN_SECTION_FLAGS = SECTION_FLAG_REQUIRED | SECTION_FLAG_CHUNKED;

export enum SectionType {
  END = 0,
  /** Device identity and migration flags (plain, required). */
  DEVICE = 1,
  /** Raw PCI config space bytes as read from the device (plain, required). */
  CONFIG = 2,
  /** The VFIO migration stream of one saving session (chunked, required). */
  DEVICE_STATE = 3,
  /** The vfio-pci device model: config shadow and masks, BAR layout, interrupt state (plain). */
  PCI_MODEL = 4,
}
export function sectionTypeName(t: number): string {
  return SectionType[t] ?? `type ${t}`;
}

/** The checksum `alg` of `data`, continued from `prev`: every checksum of a file is one. */
export function sum(alg: ChecksumAlgorithm, data: Buffer, prev = 0): number {
  return checksum(alg, data, prev);
}

export function formatError(message: string, code: EvfioCode = 'EVFIO_BAD_SNAPSHOT'): VfioError {
  return new VfioError(message, { code, kind: 'format' });
}

// ---------------------------------------------------------------- file header
export interface FileHeader {
  version: number;
  /** ms since the epoch. */
  created: number;
  flags: number;
  /** The algorithm of every checksum of the file (but a version 2 header's own). */
  checksum: ChecksumAlgorithm;
}

/** The header of a new (version 2) file whose checksums are `alg`. */
export function encodeFileHeader(created: number, alg: ChecksumAlgorithm = DEFAULT_FILE_CHECKSUM): Buffer {
  const b = Buffer.alloc(FILE_HEADER_SIZE);
  MAGIC.copy(b, 0);
  b.writeUInt16LE(FORMAT_VERSION, 8);
  b.writeUInt16LE(ENDIAN_MARK, 10);
  b.writeUInt32LE(FILE_HEADER_SIZE, 12);
  b.writeBigUInt64LE(BigInt(created), 16);
  b.writeUInt16LE(CHECKSUM_IDS[alg], 24);
  b.writeUInt16LE(0, 26);
  b.writeUInt32LE(sum('crc32c', b.subarray(0, 28)), 28);
  return b;
}

/**
 * Decode and check a file header: the magic, then the version (before anything else: another
 * version may lay out or check its header otherwise), the byte-order mark, the header's own
 * checksum (version 1: CRC-32; version 2: CRC-32C), then the algorithm it names. Errors:
 * EVFIO_BAD_SNAPSHOT, EVFIO_SNAPSHOT_VERSION, EVFIO_SNAPSHOT_ALGORITHM.
 */
export function decodeFileHeader(b: Buffer): FileHeader {
  if (b.length < FILE_HEADER_SIZE) throw formatError(`not a snapshot: ${b.length} bytes, shorter than the 32-byte header`);
  if (!b.subarray(0, 8).equals(MAGIC)) throw formatError('not a snapshot: bad magic (expected "VFIOSNAP")');
  const version = b.readUInt16LE(8);
  if (!READ_VERSIONS.includes(version)) {
    throw formatError(
      `snapshot format version ${version} is not supported (this library reads versions ${READ_VERSIONS.join(' and ')}); ` +
        (version > FORMAT_VERSION ? 'it was written by a newer node-vfio-pci' : 'it predates the first released format'),
      'EVFIO_SNAPSHOT_VERSION',
    );
  }
  const mark = b.readUInt16LE(10);
  if (mark !== ENDIAN_MARK) throw formatError(`snapshot byte-order mark is 0x${mark.toString(16)}, expected 0xfeff (little-endian)`);
  if (b.readUInt32LE(28) !== sum(version === 1 ? 'crc32' : 'crc32c', b.subarray(0, 28))) throw formatError('snapshot header checksum mismatch');
  if (b.readUInt32LE(12) !== FILE_HEADER_SIZE) throw formatError(`snapshot header length ${b.readUInt32LE(12)} is not 32`);
  const created = Number(b.readBigUInt64LE(16));
  if (version === 1) return { version, created, flags: b.readUInt32LE(24), checksum: VERSION_1_CHECKSUM };
  const id = b.readUInt16LE(24);
  const alg = checksumById(id);
  if (!alg) {
    const known = (Object.keys(CHECKSUM_IDS) as ChecksumAlgorithm[]).map((a) => `${CHECKSUM_IDS[a]} ${CHECKSUM_TITLES[a]}`).join(', ');
    throw formatError(
      `snapshot checksum algorithm ${id} is not supported (this library knows ${known}); the file was written by a newer node-vfio-pci`,
      'EVFIO_SNAPSHOT_ALGORITHM',
    );
  }
  return { version, created, flags: b.readUInt16LE(26), checksum: alg };
}

// ---------------------------------------------------------------- section header
export interface SectionHeader {
  type: number;
  flags: number;
  device: number;
  /** Plain: body length. Chunked: 0 (the chunks say). */
  length: number;
  /** Plain: checksum of the body. Chunked: 0. */
  crc: number;
}

export function encodeSectionHeader(h: SectionHeader, alg: ChecksumAlgorithm): Buffer {
  const b = Buffer.alloc(SECTION_HEADER_SIZE);
  b.writeUInt32LE(h.type, 0);
  b.writeUInt16LE(h.flags, 4);
  b.writeUInt16LE(h.device, 6);
  b.writeBigUInt64LE(BigInt(h.length), 8);
  b.writeUInt32LE(h.crc >>> 0, 16);
  b.writeUInt32LE(sum(alg, b.subarray(0, 28)), 28);
  return b;
}

/** Decode and check a section header found at file offset `at`. */
export function decodeSectionHeader(b: Buffer, at: number, alg: ChecksumAlgorithm): SectionHeader {
  if (b.length < SECTION_HEADER_SIZE) throw formatError(`snapshot truncated: section header at ${at} is cut short`, 'EVFIO_SNAPSHOT_TRUNCATED');
  if (b.readUInt32LE(28) !== sum(alg, b.subarray(0, 28))) throw formatError(`section header checksum mismatch at offset ${at}`);
  const h: SectionHeader = {
    type: b.readUInt32LE(0),
    flags: b.readUInt16LE(4),
    device: b.readUInt16LE(6),
    length: Number(b.readBigUInt64LE(8)),
    crc: b.readUInt32LE(16),
  };
  if (b.readUInt32LE(20) !== 0 || b.readUInt32LE(24) !== 0) throw formatError(`section at ${at}: reserved fields are not zero`);
  if (h.flags & ~KNOWN_SECTION_FLAGS) {
    if (h.flags & SECTION_FLAG_REQUIRED) {
      throw formatError(`section ${sectionTypeName(h.type)} at ${at} uses unknown flags 0x${h.flags.toString(16)} and is required`, 'EVFIO_SNAPSHOT_UNSUPPORTED');
    }
  }
  if (h.flags & SECTION_FLAG_CHUNKED) {
    if (h.length !== 0 || h.crc !== 0) throw formatError(`chunked section at ${at} has a non-zero length or crc field`);
  } else if (h.length > MAX_PLAIN_BODY && h.type !== SectionType.END) {
    throw formatError(`section ${sectionTypeName(h.type)} at ${at} is ${h.length} bytes, over the ${MAX_PLAIN_BODY}-byte limit of plain sections`);
  }
  return h;
}

// ---------------------------------------------------------------- chunks
export function encodeChunkHeader(length: number, crc: number): Buffer {
  const b = Buffer.alloc(CHUNK_HEADER_SIZE);
  b.writeUInt32LE(length, 0);
  b.writeUInt32LE(crc >>> 0, 4);
  return b;
}

export function encodeEndChunk(tableCrc: number, total: number): Buffer {
  const b = Buffer.alloc(END_CHUNK_SIZE);
  b.writeUInt32LE(0, 0);
  b.writeUInt32LE(tableCrc >>> 0, 4);
  b.writeBigUInt64LE(BigInt(total), 8);
  return b;
}

// ---------------------------------------------------------------- END section
export interface EndBody {
  /** File offset of the END section header. */
  endOffset: number;
  /** Checksum of the skeleton before the END section. */
  skeletonCrc: number;
  sections: number;
}
export function encodeEndBody(e: EndBody): Buffer {
  const b = Buffer.alloc(END_BODY_SIZE);
  b.writeBigUInt64LE(BigInt(e.endOffset), 0);
  b.writeUInt32LE(e.skeletonCrc >>> 0, 8);
  b.writeUInt32LE(e.sections, 12);
  return b;
}
export function decodeEndBody(b: Buffer): EndBody {
  return { endOffset: Number(b.readBigUInt64LE(0)), skeletonCrc: b.readUInt32LE(8), sections: b.readUInt32LE(12) };
}

// ---------------------------------------------------------------- DEVICE section body
export interface DeviceRecord {
  identity: DeviceIdentity;
  /** VFIO_MIGRATION_* flags of the source device. */
  migrationFlags: number;
  /** The device spec on the source (informational). */
  name: string;
}

const DEVICE_FIXED = 24;
export function encodeDeviceRecord(r: DeviceRecord): Buffer {
  const name = Buffer.from(r.name, 'utf8').subarray(0, 0xffff);
  const b = Buffer.alloc(DEVICE_FIXED + name.length);
  const id = r.identity;
  b.writeUInt16LE(id.vendorId, 0);
  b.writeUInt16LE(id.deviceId, 2);
  b.writeUInt16LE(id.subsystemVendorId, 4);
  b.writeUInt16LE(id.subsystemId, 6);
  b.writeUInt32LE(id.classCode, 8);
  b.writeUInt8(id.revision, 12);
  b.writeUInt8(id.headerType, 13);
  b.writeUInt16LE(0, 14);
  b.writeUInt32LE(r.migrationFlags >>> 0, 16);
  b.writeUInt16LE(name.length, 20);
  b.writeUInt16LE(0, 22);
  name.copy(b, DEVICE_FIXED);
  return b;
}
export function decodeDeviceRecord(b: Buffer): DeviceRecord {
  if (b.length < DEVICE_FIXED) throw formatError(`DEVICE section is ${b.length} bytes, shorter than ${DEVICE_FIXED}`);
  const nameLen = b.readUInt16LE(20);
  if (b.length !== DEVICE_FIXED + nameLen) throw formatError(`DEVICE section length ${b.length} does not match its name length ${nameLen}`);
  return {
    identity: {
      vendorId: b.readUInt16LE(0),
      deviceId: b.readUInt16LE(2),
      subsystemVendorId: b.readUInt16LE(4),
      subsystemId: b.readUInt16LE(6),
      classCode: b.readUInt32LE(8),
      revision: b.readUInt8(12),
      headerType: b.readUInt8(13),
    },
    migrationFlags: b.readUInt32LE(16),
    name: b.subarray(DEVICE_FIXED).toString('utf8'),
  };
}

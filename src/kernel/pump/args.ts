/**
 * The argument checks of the pump contract (./types.ts, "Bad arguments throw synchronously"),
 * one set for both pumps: TypeError (code ERR_INVALID_ARG_TYPE) for a wrong type, RangeError
 * (code ERR_OUT_OF_RANGE) for a value out of range or options that do not fit together or in
 * the buffers. The result is the options normalized, as both pumps (and the addon) take them.
 */
import { availableParallelism } from 'node:os';
import { buffer as bufferArg, fd as fdArg, int as intArg, rangeError, typeError } from '../binding/args';
import { DEFAULT_CHECKSUM, isChecksumAlgorithm, type ChecksumAlgorithm } from './checksum';

export type PumpMode = 'copy' | 'write-records' | 'read-records';

/** Largest record prefix, and most running header checksums (include/vfio_pci_sys.h). */
export const MAX_PREFIX = 8;
export const MAX_SEEDS = 4;
/** Bytes of a record header after its prefix: u32 length, u32 checksum. */
export const RECORD_HEADER = 8;

const MAX_SAFE = Number.MAX_SAFE_INTEGER;
const U32 = 0xffffffff;

/** A pump call's arguments, checked. -1 where an option is absent. */
export interface PumpArgs {
  mode: PumpMode;
  src: number;
  dst: number;
  /** One or two distinct, non-empty Buffers. */
  buffers: Buffer[];
  checksum: ChecksumAlgorithm;
  limit: number;
  srcOffset: number;
  dstOffset: number;
  writeback: number;
  /** copy: `expectChecksum` given. */
  verify: boolean;
  expectChecksum: number;
  precopy: boolean;
  /** Records: the prefix (P bytes, copied). */
  prefix: Buffer;
  /** writeRecords: payload bytes per record. */
  recordSize: number;
  /** readRecords: the largest payload accepted (with the buffers' length). */
  maxRecord: number;
  /** readRecords: records to move at most. */
  records: number;
  /** readRecords: the first record's header, already read by the caller (P + 8 bytes, copied). */
  firstHeader?: Buffer;
  /** Records: the header checksum seeds. */
  seeds: number[];
  idleTimeoutMs: number;
  /** Two buffers given and used: read into one while the other is written (PumpCommonOptions.overlap, resolved). */
  overlap: boolean;
  signal?: AbortSignal;
}

const FN: Record<PumpMode, string> = { copy: 'copy', 'write-records': 'writeRecords', 'read-records': 'readRecords' };

/** The checks of one call, in this order: fds, buffers, then the options. */
export function pumpArgs(mode: PumpMode, src: unknown, dst: unknown, buffers: unknown, opts: unknown): PumpArgs {
  const fn = FN[mode];
  const a: PumpArgs = {
    mode,
    src: fdArg(fn, src, 'srcFd'),
    dst: fdArg(fn, dst, 'dstFd'),
    buffers: buffersArg(fn, buffers),
    checksum: DEFAULT_CHECKSUM,
    limit: -1,
    srcOffset: -1,
    dstOffset: -1,
    writeback: 0,
    verify: false,
    expectChecksum: 0,
    precopy: false,
    prefix: Buffer.alloc(0),
    recordSize: 0,
    maxRecord: U32,
    records: -1,
    seeds: [],
    idleTimeoutMs: -1,
    overlap: false,
  };
  if (opts === undefined && mode === 'copy') return withOverlap(a, undefined);
  if (typeof opts !== 'object' || opts === null) throw typeError(`${fn}: "options" must be an object`);
  const o = opts as Record<string, unknown>;
  if (o.checksum !== undefined) {
    if (typeof o.checksum !== 'string') throw typeError(`${fn}: "checksum" must be 'crc32c' or 'crc32'`);
    if (!isChecksumAlgorithm(o.checksum)) throw rangeError(`${fn}: "checksum" must be 'crc32c' or 'crc32'`);
    a.checksum = o.checksum;
  }
  if (o.srcOffset !== undefined) a.srcOffset = intArg(fn, 'srcOffset', o.srcOffset, 0, MAX_SAFE);
  if (o.dstOffset !== undefined) a.dstOffset = intArg(fn, 'dstOffset', o.dstOffset, 0, MAX_SAFE);
  if (o.writeback !== undefined) a.writeback = intArg(fn, 'writeback', o.writeback, 0, MAX_SAFE);
  if (o.idleTimeoutMs !== undefined) a.idleTimeoutMs = intArg(fn, 'idleTimeoutMs', o.idleTimeoutMs, 0, 0x7fffffff);
  if (o.signal !== undefined) {
    if (!(o.signal instanceof AbortSignal)) throw typeError(`${fn}: "signal" must be an AbortSignal`);
    a.signal = o.signal;
  }
  withOverlap(a, optionalBoolArg(fn, 'overlap', o.overlap));
  const room = Math.min(...a.buffers.map((b) => b.length));
  switch (mode) {
    case 'copy':
      if (o.limit !== undefined) a.limit = intArg(fn, 'limit', o.limit, 0, MAX_SAFE);
      if (o.expectChecksum !== undefined) {
        a.expectChecksum = intArg(fn, 'expectChecksum', o.expectChecksum, 0, U32);
        a.verify = true;
      }
      a.precopy = boolArg(fn, 'precopy', o.precopy);
      if (a.verify && (a.limit < 0 || a.limit > a.buffers[0].length)) {
        throw rangeError(`${fn}: "expectChecksum" needs "limit", at most the buffer length (${a.buffers[0].length})`);
      }
      break;
    case 'write-records':
      a.recordSize = intArg(fn, 'recordSize', o.recordSize, 1, 2 ** 30);
      a.prefix = prefixArg(fn, o.prefix);
      if (o.limit !== undefined) a.limit = intArg(fn, 'limit', o.limit, 0, MAX_SAFE);
      a.precopy = boolArg(fn, 'precopy', o.precopy);
      a.seeds = seedsArg(fn, o.headerChecksums);
      if (a.prefix.length + RECORD_HEADER + a.recordSize > room) {
        throw rangeError(`${fn}: "recordSize" needs buffers of at least ${a.prefix.length + RECORD_HEADER + a.recordSize} bytes (prefix, header and payload); the smallest has ${room}`);
      }
      break;
    case 'read-records':
      a.prefix = prefixArg(fn, o.prefix);
      if (o.maxRecord !== undefined) a.maxRecord = intArg(fn, 'maxRecord', o.maxRecord, 1, U32);
      if (o.records !== undefined) a.records = intArg(fn, 'records', o.records, 0, MAX_SAFE);
      a.seeds = seedsArg(fn, o.headerChecksums);
      if (o.firstHeader !== undefined) {
        const h = bufferArg(fn, o.firstHeader, 'firstHeader');
        if (a.records === 0) throw rangeError(`${fn}: "firstHeader" with "records" 0 would drop the header handed in`);
        if (h.length !== a.prefix.length + RECORD_HEADER) {
          throw rangeError(`${fn}: "firstHeader" must be a whole record header (${a.prefix.length + RECORD_HEADER} bytes: prefix, length, checksum), got ${h.length}`);
        }
        a.firstHeader = Buffer.from(h);
      }
      break;
  }
  return a;
}

function buffersArg(fn: string, v: unknown): Buffer[] {
  const list = Array.isArray(v) ? v : [v];
  if (list.length < 1 || list.length > 2) throw rangeError(`${fn}: "buffers" must be a Buffer or an array of 1 or 2 Buffers`);
  const bufs = list.map((b) => bufferArg(fn, b, 'buffers'));
  if (bufs.some((b) => b.length === 0)) throw rangeError(`${fn}: "buffers" must not be empty`);
  if (bufs.length === 2 && overlap(bufs[0], bufs[1])) throw rangeError(`${fn}: the two buffers must not overlap`);
  return bufs;
}

function overlap(a: Buffer, b: Buffer): boolean {
  return a.buffer === b.buffer && a.byteOffset < b.byteOffset + b.length && b.byteOffset < a.byteOffset + a.length;
}

/** Resolve `overlap`: only with two buffers; by default when the process may run on more than one CPU. */
function withOverlap(a: PumpArgs, asked: boolean | undefined): PumpArgs {
  a.overlap = a.buffers.length === 2 && (asked ?? availableParallelism() > 1);
  return a;
}

function boolArg(fn: string, name: string, v: unknown): boolean {
  return optionalBoolArg(fn, name, v) ?? false;
}

function optionalBoolArg(fn: string, name: string, v: unknown): boolean | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'boolean') throw typeError(`${fn}: "${name}" must be a boolean`);
  return v;
}

function prefixArg(fn: string, v: unknown): Buffer {
  if (v === undefined) return Buffer.alloc(0);
  if (!(v instanceof Uint8Array)) throw typeError(`${fn}: "prefix" must be a Buffer or Uint8Array`);
  if (v.length > MAX_PREFIX) throw rangeError(`${fn}: "prefix" is ${v.length} bytes, more than ${MAX_PREFIX}`);
  return Buffer.from(v); // a copy: the caller may change its own
}

function seedsArg(fn: string, v: unknown): number[] {
  if (v === undefined) return [];
  if (!Array.isArray(v)) throw typeError(`${fn}: "headerChecksums" must be an array`);
  if (v.length > MAX_SEEDS) throw rangeError(`${fn}: "headerChecksums" has ${v.length} seeds, more than ${MAX_SEEDS}`);
  return v.map((s) => intArg(fn, 'headerChecksums', s, 0, U32));
}

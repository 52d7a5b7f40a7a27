/**
 * Moving a device's migration stream between its data_fd and a snapshot file's DEVICE_STATE
 * section — the downtime-critical copy.
 *
 * A section's chunks are the data pump's records with no prefix (src/kernel/pump/types.ts), so
 * the pump moves a whole section in few calls and the bytes never pass through JavaScript
 * where a native pump serves the fds (`pumpFor`: the addon, a dedicated thread per call):
 *  - save: `writeRecords` drains the data_fd into chunks of `bufferSize` payload bytes, header and
 *    payload written together at the writer's position, continuing two header checksums (the
 *    section's chunk table and the file's skeleton); the writer (`framedStart()` /
 *    `commitFramed()`) accounts for them;
 *  - load: `readRecords` reads each chunk, checks its checksum and only then writes it to the
 *    data_fd, so a corrupted chunk never reaches the device; the end chunk is held to the chunk
 *    table and total here, before the device leaves RESUMING.
 * This layer owns the format's policy: the chunk size, the 16 MiB limit, the end chunk, which
 * header checksums to keep, and the file's checksum algorithm (the writer's and the reader's).
 *
 * Where a second CPU is free (os.availableParallelism() > 1, or `overlap`), the pump gets two
 * buffers and reads (and checksums) chunk N+1 while it writes chunk N: a restore then costs
 * about the longer of reading and writing, not their sum. Memory stays two chunks.
 *
 * A call costs ~0.1 ms of fixed overhead (thread, eventfd, ThreadSafeFunction), so a section is
 * split into calls of at most PUMP_CALL_BYTES: under 0.1 % overhead at any chunk size, and a
 * progress event at least that often.
 *
 * With `noPump`, or for a snapshot held in memory, the same format is produced and checked by
 * the JS loops of src/kernel/stream.ts over the reader and writer.
 */
import { availableParallelism } from 'node:os';
import type { Binding } from '../kernel/binding/types';
import { VfioError } from '../base/errors';
import { drainSession, feedSession, onDataFd, DEFAULT_BUFFER_SIZE } from '../kernel/stream';
import { pumpBuffers, pumpFor, type Pump, type PumpBuffers, type PumpError, type ReadRecordsResult, type WriteRecordsResult } from '../kernel/pump';
import { tableMismatch, type SnapshotReader, type SectionEntry } from './reader';
import type { SnapshotWriter } from './writer';
import { CHUNK_HEADER_SIZE, MAX_CHUNK } from './format';

/** Payload bytes one pump call moves at most (save and load): progress at least this often. */
export const PUMP_CALL_BYTES = 64 << 20;

/**
 * Saves into a file that will be made durable start its write-back every this many bytes
 * (the pump's `writeback`): the disk writes while the pump copies, instead of all of it in the
 * final fsync. On this project's test VM a durable 1 GiB save went from 0.82–0.92× the C
 * read/write + fsync loop to 1.1–1.35× (bench/README.md).
 */
export const WRITEBACK_BYTES = 32 << 20;

export interface StateIoOptions {
  /** Transfer buffer size, and the payload size of each chunk written (default 1 MiB). */
  bufferSize?: number;
  /** Bytes done so far: after each chunk (JS loops) or each pump call (at least every PUMP_CALL_BYTES). */
  onProgress?: (bytes: number) => void;
  /** Device name for errors. */
  device?: string;
  /** Use the JS loops of src/kernel/stream.ts instead of the pump (tests, benchmarks). */
  noPump?: boolean;
  /** Payload bytes one pump call moves at most, rounded down to whole chunks (default PUMP_CALL_BYTES; tests). */
  pumpCallBytes?: number;
  /** Save: the data_fd is a PRE_COPY session (0 or ENOMSG end this call "for now"). */
  precopy?: boolean;
  /**
   * Two buffers, reading the next chunk while the last one is written (default: when this
   * process may run on more than one CPU, os.availableParallelism() > 1).
   */
  overlap?: boolean;
  /** Cancels the copy: the pump rejects with code 'ECANCELED'. */
  signal?: AbortSignal;
  /** The pump to move the bytes with (default: `pumpFor(binding, fds)`, src/kernel/pump). */
  pump?: Pump;
}

/** Whether to give the pump two buffers. */
function overlapping(opts: StateIoOptions): boolean {
  return opts.overlap ?? availableParallelism() > 1;
}

/** One buffer of `size` bytes, or two; the first populated (src/kernel/pump/buffers.ts). */
async function buffers(size: number, two: boolean): Promise<PumpBuffers> {
  const { buffers: pair, ready } = pumpBuffers(size);
  await ready;
  return two ? pair : pair[0];
}

/**
 * A failed load pump's syscall error: on the file's side (pread/read) or the data_fd's, whose
 * bytes written so far (`total` before this call) are noted on it. Annotated with step and op.
 */
function loadFailure(e: unknown, reader: SnapshotReader, total: number, device: string | undefined): unknown {
  if (!(e instanceof VfioError)) return e;
  const fileSide = e.syscall === 'pread' || e.syscall === 'read';
  if (!fileSide) onDataFd(e, 'write', total + bytesDone(e));
  return e.annotate({ step: fileSide ? 'load:read' : 'load:write', device, op: fileSide ? `read of ${reader.path}` : 'data_fd write' });
}

/** A chunk whose checksum did not match, refused before any of it reached the device. */
function chunkCrcFailure(e: VfioError, reader: SnapshotReader, chunkAt: number, device: string | undefined): VfioError {
  e.code = 'EVFIO_SNAPSHOT_CHECKSUM'; // the reader's code for the same condition
  e.message = `${reader.path}: checksum mismatch in the chunk at file offset ${chunkAt}; nothing of it was written to the device`;
  return e.annotate({ step: 'load:verify', device, op: 'chunk checksum' });
}

/**
 * Drain `dataFd` (a STOP_COPY session) to EOF into the chunked section the writer has open.
 * Errors: VfioError with step 'save:read' (the data_fd failed) or 'save:write' (the file).
 */
export async function saveStateSection(binding: Binding, dataFd: number, writer: SnapshotWriter, opts: StateIoOptions = {}): Promise<{ bytes: number }> {
  const size = opts.bufferSize ?? DEFAULT_BUFFER_SIZE;
  if (opts.noPump) {
    const buf = Buffer.allocUnsafe(size);
    const r = await drainSession(binding, dataFd, (c) => {
      opts.signal?.throwIfAborted();
      return writer.writeChunk(c);
    }, { buffer: buf, device: opts.device, onProgress: opts.onProgress, precopy: opts.precopy });
    return { bytes: r.bytes };
  }
  const pump = opts.pump ?? pumpFor(binding, [dataFd, writer.fd]);
  const chunk = Math.min(size, MAX_CHUNK);
  // The pump gathers each chunk's payload after an 8-byte gap for its header.
  const bufs = await buffers(chunk + CHUNK_HEADER_SIZE, overlapping(opts));
  // Whole chunks per call, so that only the section's last chunk is short (as drainSession does).
  const limit = chunk * Math.max(1, Math.floor((opts.pumpCallBytes ?? PUMP_CALL_BYTES) / chunk));
  let total = 0;
  for (;;) {
    opts.signal?.throwIfAborted();
    const at = writer.framedStart();
    let r: WriteRecordsResult;
    try {
      r = await pump.writeRecords(dataFd, writer.fd, bufs, {
        recordSize: chunk,
        checksum: writer.checksum,
        headerChecksums: [at.tableCrc, at.skeletonCrc],
        dstOffset: at.offset,
        limit,
        precopy: opts.precopy,
        writeback: writer.durable ? WRITEBACK_BYTES : 0,
        signal: opts.signal,
      });
    } catch (e) {
      if (!(e instanceof VfioError)) throw e;
      const fileSide = e.syscall === 'pwrite' || e.syscall === 'write';
      if (!fileSide) onDataFd(e, 'read', total + bytesDone(e));
      throw e.annotate({ step: fileSide ? 'save:write' : 'save:read', device: opts.device, op: fileSide ? `write to ${writer.tempPath}` : 'data_fd read' });
    }
    writer.commitFramed({ bytes: r.bytes, chunks: r.records, written: r.written, tableCrc: r.headerChecksums[0], skeletonCrc: r.headerChecksums[1] });
    total += r.bytes;
    if (r.bytes) opts.onProgress?.(total);
    if (r.end !== 'limit') return { bytes: total };
  }
}

/**
 * Write the chunks of a DEVICE_STATE section to a RESUMING `dataFd`, each chunk's checksum
 * checked before it is written, and the chunk table and total after the last one. Errors:
 * VfioError with step 'load:read' (the file), 'load:write' (the data_fd) or kind 'format'
 * (EVFIO_SNAPSHOT_CHECKSUM: a corrupted chunk, not written, or a chunk table that does not
 * match, step 'load:verify'; the reader's errors for a file changed since it was validated).
 */
export async function loadStateSection(binding: Binding, reader: SnapshotReader, entry: SectionEntry, dataFd: number, opts: StateIoOptions = {}): Promise<{ bytes: number }> {
  const fileFd = reader.fd;
  const size = opts.bufferSize ?? DEFAULT_BUFFER_SIZE;
  if (opts.noPump || fileFd === undefined) {
    const buf = Buffer.allocUnsafe(size);
    return feedSession(binding, dataFd, reader.chunks(entry, buf), { device: opts.device, onProgress: opts.onProgress, signal: opts.signal });
  }
  if (!entry.chunks) throw new VfioError('not a chunked section', { code: 'EVFIO_WRITER_STATE', kind: 'usage' });
  const pump = opts.pump ?? pumpFor(binding, [fileFd, dataFd]);
  const count = entry.chunks.count;
  // A writer makes every chunk but the last one the same size: the first chunk sizes the
  // buffers. A later, longer chunk (another writer's) makes the pump refuse it before writing
  // any of it, and the rest goes chunk by chunk (pumpChunks), the buffer growing as needed.
  // CHUNK_HEADER_SIZE more: the pump reads the header that follows a payload with it (one
  // pread per chunk).
  const first = count > 0 ? firstChunkLength(binding, fileFd, entry.bodyAt) : 0;
  const room = Math.max(size, first) + CHUNK_HEADER_SIZE;
  const bufs = await buffers(room, overlapping(opts));
  const perCall = Math.max(1, Math.floor((opts.pumpCallBytes ?? PUMP_CALL_BYTES) / (first || room)));
  let pos = entry.bodyAt;
  let table = 0;
  let done = 0;
  let total = 0;
  while (done < count) {
    const records = Math.min(perCall, count - done);
    let r: ReadRecordsResult;
    try {
      r = await pump.readRecords(fileFd, dataFd, bufs, {
        srcOffset: pos, records, maxRecord: MAX_CHUNK, checksum: reader.checksum, headerChecksums: [table], signal: opts.signal,
      });
    } catch (e) {
      const err = e as PumpError;
      if (!(e instanceof VfioError) || e.kind !== 'format' || typeof err.recordOffset !== 'number') throw loadFailure(e, reader, total, opts.device);
      // A format refusal stops at a chunk boundary: the chunks before it reached the device.
      total += bytesDone(err);
      if (bytesDone(err)) opts.onProgress?.(total);
      if (err.code === 'EVFIO_CHECKSUM') throw chunkCrcFailure(err, reader, err.recordOffset, opts.device);
      // A length out of range, a file cut short: the file is not what the reader validated, or
      // holds a chunk longer than the buffer. The reader's own walk goes on from that chunk: it
      // says what changed (its errors, unchanged), or streams the rest.
      return { bytes: await pumpChunks(pump, reader, entry, dataFd, err.recordOffset, total, opts) };
    }
    pos += r.read;
    table = r.headerChecksums[0];
    done += r.records;
    total += r.bytes;
    if (r.bytes) opts.onProgress?.(total);
    if (r.end !== 'count') {
      // Fewer chunks than the reader found (an end chunk, or the end of the file, where a chunk
      // should be): the file changed since it was validated.
      throw reader.changed(entry, tableMismatch(pos)).annotate({ step: 'load:verify', device: opts.device, op: 'chunk table checksum' });
    }
  }
  // The reader's check (chunkHeaders), on the headers the pump read: dropped, reordered or
  // altered chunks since the file was validated are caught before the device leaves RESUMING.
  try {
    await reader.checkEndChunk(entry, pos, table, total);
  } catch (e) {
    throw e instanceof VfioError ? e.annotate({ step: 'load:verify', device: opts.device, op: 'chunk table checksum' }) : e;
  }
  return { bytes: total };
}

/**
 * The chunks of `entry` from the one whose header is at file offset `from` on, one pump call
 * each (`expectChecksum`), walked by the reader's `chunkHeaders()` (which re-reads every header,
 * holds them to what open() found and checks the end chunk). `total` bytes were written before.
 */
async function pumpChunks(pump: Pump, reader: SnapshotReader, entry: SectionEntry, dataFd: number, from: number, total: number, opts: StateIoOptions): Promise<number> {
  let buf = Buffer.allocUnsafe(opts.bufferSize ?? DEFAULT_BUFFER_SIZE);
  for await (const c of reader.chunkHeaders(entry)) {
    if (c.payloadAt - CHUNK_HEADER_SIZE < from) continue;
    if (c.length > buf.length) buf = Buffer.allocUnsafe(c.length);
    try {
      await pump.copy(reader.fd!, dataFd, buf, { limit: c.length, srcOffset: c.payloadAt, expectChecksum: c.crc, checksum: reader.checksum, signal: opts.signal });
    } catch (e) {
      if (e instanceof VfioError && e.kind === 'format') {
        if (e.code === 'EVFIO_CHECKSUM') throw chunkCrcFailure(e, reader, c.payloadAt - CHUNK_HEADER_SIZE, opts.device);
        if (e.code === 'EVFIO_TRUNCATED') e.code = 'EVFIO_SNAPSHOT_TRUNCATED'; // the reader's code for it
        throw e.annotate({ step: 'load:verify', device: opts.device, op: 'chunk checksum' });
      }
      throw loadFailure(e, reader, total, opts.device);
    }
    total += c.length;
    opts.onProgress?.(total);
  }
  return total;
}

/** The length field of the chunk header at `at`, when it is a plausible one (1 … MAX_CHUNK); else 0. */
function firstChunkLength(binding: Binding, fd: number, at: number): number {
  const head = Buffer.alloc(CHUNK_HEADER_SIZE);
  try {
    if (binding.pread(fd, head, at) !== head.length) return 0;
  } catch {
    return 0; // the pump reads it again and reports the failure
  }
  const len = head.readUInt32LE(0);
  return len >= 1 && len <= MAX_CHUNK ? len : 0;
}

/** Bytes a failed pump had moved (PumpError.bytesDone), 0 when unknown. */
function bytesDone(e: VfioError): number {
  const n = (e as VfioError & { bytesDone?: number }).bytesDone;
  return typeof n === 'number' ? n : 0;
}

/**
 * Moving a device's migration stream between its data_fd and a snapshot file's DEVICE_STATE
 * section — the downtime-critical copy.
 *
 * With a binding that has `pump` (the addon: a dedicated thread per call, one reused buffer,
 * crc32 computed on each chunk while it is in cache) the bytes never pass through JavaScript,
 * and the pump writes and reads the section's chunk framing itself (`frame`, see PumpFrame in
 * src/binding/types.ts), so that one call moves up to PUMP_CALL_BYTES of a section:
 *  - save: `frame: { mode: 'write' }` drains the data_fd into chunks of `bufferSize` payload
 *    bytes, header and payload written together at the writer's position; the writer
 *    (`framedStart()` / `commitFramed()`) accounts the chunks, the chunk table and skeleton crcs;
 *  - load: `frame: { mode: 'read' }` reads each chunk, checks its crc32 and only then writes it
 *    to the data_fd, so a corrupted chunk never reaches the device; the end chunk is checked
 *    against the chunk table and total here, before the device leaves RESUMING.
 * A call costs ~0.2 ms of fixed overhead (thread, eventfd, ThreadSafeFunction), so a section is
 * split into calls of at most PUMP_CALL_BYTES: under 0.1 % overhead at any chunk size, and a
 * progress event at least that often.
 *
 * Without `pump`, or for a snapshot held in memory, the same format is produced and checked by
 * the JS loops of src/migration/stream.ts.
 */
import type { Binding, PumpError, PumpFramedReadResult, PumpFramedWriteResult, PumpResult } from '../kernel/binding/types';
import { VfioError } from '../base/errors';
import { drainSession, feedSession, onDataFd, DEFAULT_BUFFER_SIZE } from '../kernel/stream';
import { tableMismatch, type SnapshotReader, type SectionEntry } from './reader';
import type { SnapshotWriter } from './writer';
import { CHUNK_HEADER_SIZE, END_CHUNK_SIZE, MAX_CHUNK } from './format';

/** Payload bytes one pump call moves at most (save and load): progress at least this often. */
export const PUMP_CALL_BYTES = 64 << 20;

/**
 * Saves into a file that will be made durable start its write-back every this many bytes
 * (PumpOptions.writeback): the disk writes while the pump copies, instead of all of it in the
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
  /** Force the JS loop even when the binding has a pump (tests, benchmarks). */
  noPump?: boolean;
  /** Payload bytes one pump call moves at most, rounded down to whole chunks (default PUMP_CALL_BYTES; tests). */
  pumpCallBytes?: number;
  /** Save: the data_fd is a PRE_COPY session (0 or ENOMSG end this call "for now"). */
  precopy?: boolean;
  /** Cancels the transfer (checked between pump calls and chunks). */
  signal?: AbortSignal;
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

/** A chunk whose crc32 did not match, refused before any of it reached the device. */
function chunkCrcFailure(e: VfioError, reader: SnapshotReader, chunkAt: number, device: string | undefined): VfioError {
  e.message = `${reader.path}: checksum mismatch in the chunk at file offset ${chunkAt}; nothing of it was written to the device`;
  return e.annotate({ step: 'load:verify', device, op: 'chunk crc32' });
}

/**
 * Drain `dataFd` (a STOP_COPY session) to EOF into the chunked section the writer has open.
 * Errors: VfioError with step 'save:read' (the data_fd failed) or 'save:write' (the file).
 */
export async function saveStateSection(binding: Binding, dataFd: number, writer: SnapshotWriter, opts: StateIoOptions = {}): Promise<{ bytes: number }> {
  const size = opts.bufferSize ?? DEFAULT_BUFFER_SIZE;
  if (!binding.pump || opts.noPump) {
    const buf = Buffer.allocUnsafe(size);
    const r = await drainSession(binding, dataFd, (c) => {
      opts.signal?.throwIfAborted();
      return writer.writeChunk(c);
    }, { buffer: buf, device: opts.device, onProgress: opts.onProgress, precopy: opts.precopy });
    return { bytes: r.bytes };
  }
  const chunk = Math.min(size, MAX_CHUNK);
  // The pump gathers each chunk's payload after an 8-byte gap for its header.
  const buf = Buffer.allocUnsafe(chunk + CHUNK_HEADER_SIZE);
  // Whole chunks per call, so that only the section's last chunk is short (as drainSession does).
  const limit = chunk * Math.max(1, Math.floor((opts.pumpCallBytes ?? PUMP_CALL_BYTES) / chunk));
  let total = 0;
  for (;;) {
    opts.signal?.throwIfAborted();
    const at = writer.framedStart();
    let r: PumpResult;
    try {
      r = await binding.pump(dataFd, writer.fd, buf, {
        frame: { mode: 'write', chunk, tableCrc: at.tableCrc, skeletonCrc: at.skeletonCrc },
        dstOffset: at.offset,
        limit,
        precopy: opts.precopy,
        writeback: writer.durable ? WRITEBACK_BYTES : 0,
      });
    } catch (e) {
      if (!(e instanceof VfioError)) throw e;
      const fileSide = e.syscall === 'pwrite' || e.syscall === 'write';
      if (!fileSide) onDataFd(e, 'read', total + bytesDone(e));
      throw e.annotate({ step: fileSide ? 'save:write' : 'save:read', device: opts.device, op: fileSide ? `write to ${writer.tempPath}` : 'data_fd read' });
    }
    writer.commitFramed(framedWrite(r));
    total += r.bytes;
    if (r.bytes) opts.onProgress?.(total);
    if (r.end !== 'limit') return { bytes: total };
  }
}

/**
 * Write the chunks of a DEVICE_STATE section to a RESUMING `dataFd`, each chunk's crc32 checked
 * before it is written, and the chunk table and total after the last one. Errors: VfioError with
 * step 'load:read' (the file), 'load:write' (the data_fd) or kind 'format' (EVFIO_CHECKSUM /
 * EVFIO_SNAPSHOT_CHECKSUM: a corrupted chunk, not written, or a chunk table that does not match;
 * step 'load:verify').
 */
export async function loadStateSection(binding: Binding, reader: SnapshotReader, entry: SectionEntry, dataFd: number, opts: StateIoOptions = {}): Promise<{ bytes: number }> {
  const fileFd = reader.fd;
  const size = opts.bufferSize ?? DEFAULT_BUFFER_SIZE;
  if (!binding.pump || opts.noPump || fileFd === undefined) {
    const buf = Buffer.allocUnsafe(size);
    return feedSession(binding, dataFd, reader.chunks(entry, buf), { device: opts.device, onProgress: opts.onProgress, signal: opts.signal });
  }
  if (!entry.chunks) throw new VfioError('not a chunked section', { code: 'EVFIO_WRITER_STATE', kind: 'usage' });
  const count = entry.chunks.count;
  // A writer makes every chunk but the last one the same size: the first chunk sizes the buffer.
  // A later, longer chunk (another writer's) makes the pump refuse it before writing any of it,
  // and the rest goes chunk by chunk (pumpChunks), the buffer growing as needed.
  // END_CHUNK_SIZE more: the pump reads the header that follows a payload with it (one pread per chunk).
  const first = count > 0 ? firstChunkLength(binding, fileFd, entry.bodyAt) : 0;
  const buf = Buffer.allocUnsafe(Math.max(size, first) + END_CHUNK_SIZE);
  const perCall = Math.max(1, Math.floor((opts.pumpCallBytes ?? PUMP_CALL_BYTES) / (first || buf.length)));
  let pos = entry.bodyAt;
  let table = 0;
  let done = 0;
  let total = 0;
  for (;;) {
    opts.signal?.throwIfAborted();
    const chunks = Math.min(perCall, count - done);
    const final = done + chunks === count;
    let r: PumpFramedReadResult;
    try {
      r = framedRead(await binding.pump(fileFd, dataFd, buf, { srcOffset: pos, frame: { mode: 'read', chunks, maxChunk: MAX_CHUNK, tableCrc: table, final } }));
    } catch (e) {
      const err = e as PumpError;
      if (!(e instanceof VfioError) || e.kind !== 'format' || typeof err.chunkOffset !== 'number') throw loadFailure(e, reader, total, opts.device);
      // A format refusal stops at a chunk boundary: the chunks before it reached the device.
      total += bytesDone(err);
      if (bytesDone(err)) opts.onProgress?.(total);
      if (err.code === 'EVFIO_SNAPSHOT_CHECKSUM') throw chunkCrcFailure(err, reader, err.chunkOffset, opts.device);
      // A length out of range, a missing end chunk, a file cut short: the file is not what the
      // reader validated, or holds a chunk longer than the buffer. The reader's own walk goes on
      // from that chunk: it says what changed (its errors, unchanged), or streams the rest.
      return { bytes: await pumpChunks(binding, reader, entry, dataFd, err.chunkOffset, total, opts) };
    }
    pos += CHUNK_HEADER_SIZE * r.chunks + r.bytes;
    table = r.tableCrc;
    done += r.chunks;
    total += r.bytes;
    if (r.bytes) opts.onProgress?.(total);
    if (final) {
      // The reader's check (chunkHeaders), on the headers the pump read: dropped, reordered or
      // altered chunks since the file was validated are caught before the device leaves RESUMING.
      if (r.endTableCrc !== table >>> 0 || r.endTotal !== total) {
        throw reader.changed(entry, tableMismatch(pos)).annotate({ step: 'load:verify', device: opts.device, op: 'chunk table crc32' });
      }
      return { bytes: total };
    }
  }
}

/**
 * The chunks of `entry` from the one whose header is at file offset `from` on, one pump call
 * each (`expectCrc`), walked by the reader's `chunkHeaders()` (which re-reads every header, holds
 * them to what open() found and checks the end chunk). `total` bytes were written before.
 */
async function pumpChunks(binding: Binding, reader: SnapshotReader, entry: SectionEntry, dataFd: number, from: number, total: number, opts: StateIoOptions): Promise<number> {
  let buf = Buffer.allocUnsafe(opts.bufferSize ?? DEFAULT_BUFFER_SIZE);
  for await (const c of reader.chunkHeaders(entry)) {
    if (c.payloadAt - CHUNK_HEADER_SIZE < from) continue;
    if (c.length > buf.length) buf = Buffer.allocUnsafe(c.length);
    try {
      await binding.pump!(reader.fd!, dataFd, buf, { limit: c.length, srcOffset: c.payloadAt, expectCrc: c.crc });
    } catch (e) {
      if (e instanceof VfioError && e.kind === 'format') {
        if (e.code !== 'EVFIO_CHECKSUM') throw e.annotate({ step: 'load:verify', device: opts.device, op: 'chunk crc32' });
        e.code = 'EVFIO_SNAPSHOT_CHECKSUM'; // the reader's code for the same condition
        throw chunkCrcFailure(e, reader, c.payloadAt - CHUNK_HEADER_SIZE, opts.device);
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

/** A framed write's result, checked: a binding that ignored `frame` would not say how it framed. */
function framedWrite(r: PumpResult): PumpFramedWriteResult {
  if (typeof r.chunks !== 'number' || typeof r.written !== 'number' || typeof r.tableCrc !== 'number' || typeof r.skeletonCrc !== 'number') {
    throw noFrame();
  }
  return r as PumpFramedWriteResult;
}

/** A framed read's result, checked likewise. */
function framedRead(r: PumpResult): PumpFramedReadResult {
  if (typeof r.chunks !== 'number' || typeof r.tableCrc !== 'number') throw noFrame();
  return r as PumpFramedReadResult;
}

function noFrame(): VfioError {
  return new VfioError("the binding's pump does not support frame (no chunk count in its result)", { code: 'EVFIO_PUMP_NO_FRAME', kind: 'unsupported' });
}

/** Bytes a failed pump had moved (PumpError.bytesDone), 0 when unknown. */
function bytesDone(e: VfioError): number {
  const n = (e as VfioError & { bytesDone?: number }).bytesDone;
  return typeof n === 'number' ? n : 0;
}

/**
 * Moving a device's migration stream between its data_fd and a snapshot file's DEVICE_STATE
 * section — the downtime-critical copy.
 *
 * With a binding that has `pump` (the addon: a dedicated thread per call, one reused buffer,
 * crc32 computed on each chunk while it is in cache) the bytes never pass through JavaScript:
 *  - save: each pump call reads the data_fd and pwrites up to CHUNK bytes straight into the file
 *    behind the chunk's header slot; the header (length, crc32) is written afterwards;
 *  - load: each chunk is pread into the buffer, its crc32 checked, and only then written to the
 *    data_fd (`expectCrc`): a corrupted chunk never reaches the device.
 * Without `pump`, or for a snapshot held in memory, the same format is produced and checked by
 * the JS loops of src/migration/stream.ts.
 */
import type { Binding, PumpResult } from '../binding/types';
import { VfioError } from '../errors';
import { drainSession, feedSession, onDataFd, DEFAULT_BUFFER_SIZE } from '../migration/stream';
import type { SnapshotReader, SectionEntry } from './reader';
import type { SnapshotWriter } from './writer';
import { MAX_CHUNK } from './format';

export interface StateIoOptions {
  /** Transfer buffer size, and the payload size of each chunk written (default 1 MiB). */
  bufferSize?: number;
  /** Bytes done so far, after each chunk. */
  onProgress?: (bytes: number) => void;
  /** Device name for errors. */
  device?: string;
  /** Force the JS loop even when the binding has a pump (tests, benchmarks). */
  noPump?: boolean;
}

function annotate(e: unknown, step: string, device: string | undefined, what: string): unknown {
  if (e instanceof VfioError) {
    if (!e.op) e.op = what;
    e.annotate({ step, device });
  }
  return e;
}

/**
 * Drain `dataFd` (a STOP_COPY session) to EOF into the chunked section the writer has open.
 * Errors: VfioError with step 'save:read' (the data_fd failed) or 'save:write' (the file).
 */
export async function saveStateSection(binding: Binding, dataFd: number, writer: SnapshotWriter, opts: StateIoOptions = {}): Promise<{ bytes: number }> {
  const buf = Buffer.allocUnsafe(opts.bufferSize ?? DEFAULT_BUFFER_SIZE);
  if (!binding.pump || opts.noPump) {
    const r = await drainSession(binding, dataFd, (c) => writer.writeChunk(c), { buffer: buf, device: opts.device, onProgress: opts.onProgress });
    return { bytes: r.bytes };
  }
  let total = 0;
  for (;;) {
    let r: PumpResult;
    try {
      r = await binding.pump(dataFd, writer.fd, buf, { limit: Math.min(buf.length, MAX_CHUNK), dstOffset: writer.payloadOffset() });
    } catch (e) {
      const fileSide = e instanceof VfioError && (e.syscall === 'pwrite' || e.syscall === 'write');
      if (!fileSide && e instanceof VfioError) onDataFd(e, 'read', total + bytesDone(e));
      throw annotate(e, fileSide ? 'save:write' : 'save:read', opts.device, fileSide ? `write to ${writer.tempPath}` : 'data_fd read');
    }
    await writer.commitChunk(r.bytes, r.crc32);
    total += r.bytes;
    if (r.bytes) opts.onProgress?.(total);
    if (r.end !== 'limit') return { bytes: total };
  }
}

/**
 * Write the chunks of a DEVICE_STATE section to a RESUMING `dataFd`, each chunk's crc32 checked
 * before it is written. Errors: VfioError with step 'load:read' (the file), 'load:write' (the
 * data_fd) or kind 'format' (EVFIO_CHECKSUM / EVFIO_SNAPSHOT_CHECKSUM: a corrupted chunk, not
 * written).
 */
export async function loadStateSection(binding: Binding, reader: SnapshotReader, entry: SectionEntry, dataFd: number, opts: StateIoOptions = {}): Promise<{ bytes: number }> {
  const fileFd = reader.fd;
  if (!binding.pump || opts.noPump || fileFd === undefined) {
    const buf = Buffer.allocUnsafe(opts.bufferSize ?? DEFAULT_BUFFER_SIZE);
    return feedSession(binding, dataFd, reader.chunks(entry, buf), { device: opts.device, onProgress: opts.onProgress });
  }
  let buf = Buffer.allocUnsafe(opts.bufferSize ?? DEFAULT_BUFFER_SIZE);
  let total = 0;
  for await (const c of reader.chunkHeaders(entry)) {
    if (c.length > buf.length) buf = Buffer.allocUnsafe(c.length);
    try {
      await binding.pump(fileFd, dataFd, buf, { limit: c.length, srcOffset: c.payloadAt, expectCrc: c.crc });
    } catch (e) {
      if (e instanceof VfioError && e.code === 'EVFIO_CHECKSUM') {
        e.code = 'EVFIO_SNAPSHOT_CHECKSUM'; // the reader's code for the same condition
        e.message = `${reader.path}: checksum mismatch in the chunk at file offset ${c.payloadAt - 8}; nothing of it was written to the device`;
        throw annotate(e, 'load:verify', opts.device, 'chunk crc32');
      }
      const fileSide = e instanceof VfioError && (e.syscall === 'pread' || e.syscall === 'read');
      if (!fileSide && e instanceof VfioError) onDataFd(e, 'write', total + bytesDone(e));
      throw annotate(e, fileSide ? 'load:read' : 'load:write', opts.device, fileSide ? `read of ${reader.path}` : 'data_fd write');
    }
    total += c.length;
    opts.onProgress?.(total);
  }
  return { bytes: total };
}

/** Bytes a failed pump had moved (PumpError.bytesDone), 0 when unknown. */
function bytesDone(e: VfioError): number {
  const n = (e as VfioError & { bytesDone?: number }).bytesDone;
  return typeof n === 'number' ? n : 0;
}

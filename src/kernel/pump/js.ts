/**
 * The JS pump: the pump contract (./types.ts) as a loop over any `Binding`'s calls, for the fds
 * no native pump serves — the koffi binding's (the addon could not load) and the simulated
 * device's virtual ones. The same results, ends and errors as the addon's vfio_pump
 * (addon/sys.cc); the contract suite holds both to them.
 *
 * How it does the syscalls:
 *  - streams: `binding.read` / `binding.write` (off the JS thread for real fds);
 *  - by position (`srcOffset` / `dstOffset`): `binding.pread` / `binding.pwrite`, which are
 *    synchronous, in slices of at most POSITIONAL_SLICE bytes with a turn of the event loop
 *    after each, so that no call holds the loop for long (a slice from the page cache takes
 *    tens of microseconds);
 *  - before each call on an fd that may wait forever (not a regular file or block device, or
 *    a virtual fd), `binding.poll` in slices of at most POLL_SLICE_MS, so that a pending pump
 *    holds no pool thread for long, the `signal` is seen within a slice, and `idleTimeoutMs`
 *    is kept. (A write into a blocking pipe or socket larger than the room there still waits
 *    inside write(2), on a pool thread, until the reader takes some: see ./types.ts.)
 *  - sockets: Node ignores SIGPIPE, so a write to a closed peer is EPIPE.
 * With two buffers (and `overlap`), the next block (or record) is read into one while the other
 * is written.
 */
import * as fs from 'node:fs';
import { VfioError, type EvfioCode } from '../../base/errors';
import { POLLIN, POLLOUT, type Binding } from '../binding/types';
import { pumpArgs, RECORD_HEADER, type PumpArgs } from './args';
import { checksum } from './checksum';
import type {
  CopyOptions, CopyResult, Pump, PumpBuffers, PumpError, ReadRecordsOptions, ReadRecordsResult, WriteRecordsOptions, WriteRecordsResult,
} from './types';

const EIO = 5;
const ENOMSG = 42;
const ETIMEDOUT = 110;
const ECANCELED = 125;
/** Longest single readiness wait: how long a pending pump may hold a pool thread, and how late it sees `signal`. */
export const POLL_SLICE_MS = 20;
/** Most bytes of one synchronous pread / pwrite. */
export const POSITIONAL_SLICE = 256 * 1024;

const immediate = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

const hex = (v: number): string => `0x${v.toString(16).padStart(8, '0')}`;

export class JsPump implements Pump {
  readonly name = 'js' as const;

  constructor(readonly binding: Binding) {}

  copy(src: number, dst: number, buffers: PumpBuffers, opts?: CopyOptions): Promise<CopyResult> {
    return run(this.binding, pumpArgs('copy', src, dst, buffers, opts)) as Promise<CopyResult>;
  }

  writeRecords(src: number, dst: number, buffers: PumpBuffers, opts: WriteRecordsOptions): Promise<WriteRecordsResult> {
    return run(this.binding, pumpArgs('write-records', src, dst, buffers, opts)) as Promise<WriteRecordsResult>;
  }

  readRecords(src: number, dst: number, buffers: PumpBuffers, opts: ReadRecordsOptions): Promise<ReadRecordsResult> {
    return run(this.binding, pumpArgs('read-records', src, dst, buffers, opts)) as Promise<ReadRecordsResult>;
  }
}

/** One produce step's output: bytes to write, and how the pump goes on after them. */
interface Segment {
  data?: Buffer;
  payload: number;
  /** A record's header (copied), for the running header checksums. */
  header?: Buffer;
  /** The pump ends after this segment's bytes, successfully. */
  end?: string;
  /** The pump fails after this segment's bytes are written. */
  after?: VfioError;
  /** readRecords, end 'header': the header handed back. */
  stop?: Buffer;
}

/** One end of the pump. */
interface Side {
  fd: number;
  /** File position, when read / written by position. */
  pos?: number;
  /** May wait indefinitely: polled before each call. */
  waits: boolean;
  /** The syscall its failures name. */
  syscall: string;
}

function side(fd: number, offset: number, read: boolean): Side {
  let st: fs.Stats | undefined;
  try {
    st = fs.fstatSync(fd);
  } catch {
    // A virtual fd (or a bad one: the syscall reports it).
  }
  const positional = offset >= 0;
  return {
    fd,
    pos: positional ? offset : undefined,
    waits: !(st && (st.isFile() || st.isBlockDevice())),
    syscall: read ? (positional ? 'pread' : 'read') : positional ? 'pwrite' : 'write',
  };
}

async function run(b: Binding, a: PumpArgs): Promise<CopyResult | WriteRecordsResult | ReadRecordsResult> {
  const src = side(a.src, a.srcOffset, true);
  // PRE_COPY's "no more data for now" comes from read(2) (0 or ENOMSG), at once, and a driver's
  // poll need not report it (mlx5, and the simulated device, signal new data only).
  if (a.precopy) src.waits = false;
  const dst = side(a.dst, a.dstOffset, false);
  const records = a.mode !== 'copy';
  const headerLen = a.prefix.length + RECORD_HEADER;
  // Offsets are src's. `taken` also counts a header the caller handed in (firstHeader), which is
  // not in src: that record's offset is where src starts.
  const start = a.srcOffset >= 0 ? a.srcOffset : 0;
  const skew = a.firstHeader?.length ?? 0;
  const offsetAt = (t: number): number => start + Math.max(0, t - skew);
  // An internal signal stops the reading side's waits when the writing side failed.
  const stopper = new AbortController();

  // ---- state: the reading side's
  let taken = 0; // bytes read (readRecords: of the records accepted)
  let crc = 0; // copy: of everything read
  let produced = 0; // readRecords
  // readRecords: the next header, read with the last payload (or given: firstHeader)
  let ahead: Buffer | undefined = a.firstHeader;
  let eofNext = false;
  // ---- the writing side's
  let written = 0;
  let payloadDone = 0;
  let recordsDone = 0;
  const sums = [...a.seeds];

  const formatError = (code: EvfioCode, message: string, extra: object = {}): VfioError =>
    Object.assign(new VfioError(message, { code, kind: 'format' }), extra);
  const sysError = (errno: number, s: Side, cause?: unknown): VfioError => VfioError.fromErrno(errno, { syscall: s.syscall, cause });

  /** Wait until `s` is ready for `events`, in slices; the signal and the idle timeout end it. */
  const ready = async (s: Side, events: number, stop?: AbortSignal): Promise<void> => {
    const deadline = a.idleTimeoutMs >= 0 ? performance.now() + a.idleTimeoutMs : Infinity;
    for (;;) {
      if (a.signal?.aborted) throw sysError(ECANCELED, s, a.signal.reason);
      if (stop?.aborted) throw sysError(ECANCELED, s);
      const left = deadline - performance.now();
      if (left <= 0) throw sysError(ETIMEDOUT, s);
      let r: number;
      try {
        r = await b.poll(s.fd, events, Math.max(1, Math.min(POLL_SLICE_MS, Math.ceil(left))));
      } catch (e) {
        if (e instanceof VfioError) e.syscall = s.syscall; // the side that waited
        throw e;
      }
      if (r !== 0) return;
    }
  };

  /** One read: the byte count, or 0 for "no data" (a read of 0, or ENOMSG with precopy). */
  const readSome = async (view: Buffer, stop?: AbortSignal): Promise<number> => {
    if (src.waits) await ready(src, POLLIN, stop);
    let n: number;
    try {
      if (src.pos === undefined) {
        n = await b.read(src.fd, view);
      } else {
        n = b.pread(src.fd, view.length > POSITIONAL_SLICE ? view.subarray(0, POSITIONAL_SLICE) : view, src.pos);
        await immediate();
      }
    } catch (e) {
      if (a.precopy && e instanceof VfioError && e.errno === ENOMSG) return 0;
      throw e;
    }
    if (src.pos !== undefined) src.pos += n;
    if (a.signal?.aborted) throw sysError(ECANCELED, src, a.signal.reason);
    return n;
  };

  /** Read up to `view.length` bytes, stopping early only at the end of the source. */
  const readFull = async (view: Buffer, stop?: AbortSignal): Promise<number> => {
    let got = 0;
    while (got < view.length) {
      const n = await readSome(view.subarray(got), stop);
      if (n === 0) break;
      got += n;
    }
    return got;
  };

  const writeAll = async (data: Buffer): Promise<void> => {
    for (let done = 0; done < data.length; ) {
      if (dst.waits) await ready(dst, POLLOUT);
      const view = data.subarray(done);
      let w: number;
      if (dst.pos === undefined) {
        w = await b.write(dst.fd, view);
      } else {
        w = b.pwrite(dst.fd, view.length > POSITIONAL_SLICE ? view.subarray(0, POSITIONAL_SLICE) : view, dst.pos);
        await immediate();
      }
      // No progress and no error: give up rather than spin.
      if (w === 0) throw sysError(EIO, dst);
      done += w;
      written += w;
      if (a.mode !== 'write-records') payloadDone += w;
      if (dst.pos !== undefined) dst.pos += w;
    }
  };

  // ---- the reading side: one step into `buf`
  const produceCopy = async (buf: Buffer, stop: AbortSignal): Promise<Segment> => {
    let want = buf.length;
    if (a.limit >= 0) {
      if (taken === a.limit) return { payload: 0, end: 'limit' };
      want = Math.min(want, a.limit - taken);
    }
    const n = await readSome(buf.subarray(0, want), stop);
    if (n === 0) return { payload: 0, end: a.precopy ? 'for-now' : 'eof' };
    const data = buf.subarray(0, n);
    crc = checksum(a.checksum, data, crc); // while it is fresh
    taken += n;
    return { data, payload: n };
  };

  const produceVerify = async (buf: Buffer, stop: AbortSignal): Promise<Segment> => {
    while (taken < a.limit) {
      const n = await readSome(buf.subarray(taken, a.limit), stop);
      if (n === 0) {
        throw formatError('EVFIO_TRUNCATED', `pump: the source ended after ${taken} of ${a.limit} bytes; nothing was written`);
      }
      crc = checksum(a.checksum, buf.subarray(taken, taken + n), crc);
      taken += n;
    }
    if (crc !== a.expectChecksum) {
      throw formatError('EVFIO_CHECKSUM', `pump: checksum mismatch over ${a.limit} bytes: expected ${hex(a.expectChecksum)}, got ${hex(crc)}; nothing was written`);
    }
    return { data: buf.subarray(0, a.limit), payload: a.limit, end: 'limit' };
  };

  const produceWriteRecord = async (buf: Buffer, stop: AbortSignal): Promise<Segment> => {
    let want = a.recordSize;
    if (a.limit >= 0) {
      if (taken === a.limit) return { payload: 0, end: 'limit' };
      want = Math.min(want, a.limit - taken);
    }
    let got = 0;
    let atEnd = false;
    let sum = 0;
    while (got < want) {
      const n = await readSome(buf.subarray(headerLen + got, headerLen + want), stop);
      if (n === 0) {
        atEnd = true;
        break;
      }
      sum = checksum(a.checksum, buf.subarray(headerLen + got, headerLen + got + n), sum);
      got += n;
      taken += n;
    }
    const seg: Segment = { payload: got };
    if (got > 0) {
      // Never an empty record: a length of 0 is a terminator.
      a.prefix.copy(buf, 0);
      buf.writeUInt32LE(got, a.prefix.length);
      buf.writeUInt32LE(sum, a.prefix.length + 4);
      seg.data = buf.subarray(0, headerLen + got);
      seg.header = Buffer.from(buf.subarray(0, headerLen));
    }
    if (atEnd) seg.end = a.precopy ? 'for-now' : 'eof';
    return seg;
  };

  const produceReadRecord = async (buf: Buffer, stop: AbortSignal): Promise<Segment> => {
    if (a.records >= 0 && produced === a.records) return { payload: 0, end: 'count' };
    if (eofNext) return { payload: 0, end: 'eof' };
    const at = offsetAt(taken);
    const atError = (e: VfioError): VfioError => Object.assign(e, { recordOffset: at });
    let head = ahead;
    ahead = undefined;
    if (!head) {
      head = Buffer.alloc(headerLen);
      let n: number;
      try {
        n = await readFull(head, stop);
      } catch (e) {
        throw e instanceof VfioError ? atError(e) : e;
      }
      if (n === 0) return { payload: 0, end: 'eof' };
      if (n < headerLen) throw atError(formatError('EVFIO_TRUNCATED', `pump: the source ends inside the record at offset ${at}`));
    }
    const len = head.readUInt32LE(a.prefix.length);
    if (len === 0 || !head.subarray(0, a.prefix.length).equals(a.prefix)) return { payload: 0, end: 'header', stop: head };
    const cap = Math.min(a.maxRecord, buf.length);
    if (len > cap) {
      throw atError(formatError('EVFIO_RECORD_LENGTH', `pump: the record at offset ${at} claims ${len} bytes, outside [1, ${cap}]`, { recordLength: len }));
    }
    const more = a.records < 0 || produced + 1 < a.records;
    const want = src.pos !== undefined && more && len + headerLen <= buf.length ? headerLen : 0;
    let got: number;
    try {
      got = await readFull(buf.subarray(0, len + want), stop);
    } catch (e) {
      throw e instanceof VfioError ? atError(e) : e;
    }
    if (got < len) throw atError(formatError('EVFIO_TRUNCATED', `pump: the source ends inside the record at offset ${at}`));
    const expected = head.readUInt32LE(a.prefix.length + 4);
    const actual = checksum(a.checksum, buf.subarray(0, len));
    if (actual !== expected) {
      throw atError(
        formatError(
          'EVFIO_CHECKSUM',
          `pump: checksum mismatch in the record at offset ${at} (${len} bytes): expected ${hex(expected)}, got ${hex(actual)}; nothing of it was written`,
        ),
      );
    }
    produced++;
    taken += headerLen + len;
    const seg: Segment = { data: buf.subarray(0, len), payload: len, header: head };
    const extra = got - len;
    if (want > 0 && extra === want) ahead = Buffer.from(buf.subarray(len, len + headerLen));
    else if (want > 0 && extra === 0) eofNext = true;
    else if (want > 0) {
      // The source ends inside the header that follows: this record is whole and goes out; the
      // failure is that header's.
      const next = offsetAt(taken);
      seg.after = Object.assign(formatError('EVFIO_TRUNCATED', `pump: the source ends inside the record at offset ${next}`), { recordOffset: next });
    }
    return seg;
  };

  const produce = async (buf: Buffer): Promise<Segment> => {
    const stop = stopper.signal;
    if (a.signal?.aborted) throw sysError(ECANCELED, src, a.signal.reason);
    switch (a.mode) {
      case 'write-records':
        return produceWriteRecord(buf, stop);
      case 'read-records':
        return produceReadRecord(buf, stop);
      default:
        return a.verify ? produceVerify(buf, stop) : produceCopy(buf, stop);
    }
  };

  // ---- the writing side
  const consume = async (seg: Segment): Promise<void> => {
    if (seg.data && seg.data.length > 0) {
      await writeAll(seg.data);
      if (seg.header) {
        if (a.mode === 'write-records') payloadDone += seg.payload;
        recordsDone++;
        for (let i = 0; i < sums.length; i++) sums[i] = checksum(a.checksum, seg.header, sums[i]);
      }
    }
  };

  const fail = (e: unknown): never => {
    if (e instanceof VfioError) Object.assign(e as PumpError, { bytesDone: payloadDone, bytesWritten: written });
    throw e;
  };

  const bufs = a.verify || !a.overlap ? [a.buffers[0]] : a.buffers;
  let last: Segment;
  try {
    let i = 0;
    let pending: Promise<Segment> | undefined = produce(bufs[0]);
    for (;;) {
      let seg: Segment;
      try {
        seg = await pending!;
      } catch (e) {
        return fail(e);
      }
      pending = undefined;
      const lastOne = seg.end !== undefined || seg.after !== undefined;
      // Two buffers: read the next step into the other one while this one is written.
      if (!lastOne && bufs.length === 2) {
        i ^= 1;
        pending = produce(bufs[i]);
        pending.catch(() => undefined); // surfaces when awaited, after this write
      }
      try {
        await consume(seg);
      } catch (e) {
        if (pending) {
          // Stop the reading side, and let it be done with its buffer before the caller has it back.
          stopper.abort();
          await pending.catch(() => undefined);
        }
        return fail(e);
      }
      if (seg.after) return fail(seg.after);
      if (lastOne) {
        last = seg;
        break;
      }
      pending ??= produce(bufs[0]);
    }
  } finally {
    stopper.abort();
  }
  const end = last.end!;
  switch (a.mode) {
    case 'copy':
      return { bytes: written, checksum: crc, end: end as CopyResult['end'] };
    case 'write-records':
      return { bytes: payloadDone, records: recordsDone, written, headerChecksums: sums, end: end as WriteRecordsResult['end'] };
    default: {
      const r: ReadRecordsResult = { bytes: written, records: recordsDone, read: taken, headerChecksums: sums, end: end as ReadRecordsResult['end'] };
      if (last.stop) r.header = last.stop;
      return r;
    }
  }
}

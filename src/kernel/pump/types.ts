import type { VfioError } from '../../base/errors';
import type { ChecksumAlgorithm } from './checksum';

/**
 * The data pump: moves bytes between two fds (a data_fd, a file, a pipe, a socket) without
 * passing them through JavaScript where it can, and writes or reads **checksummed records**.
 * It knows no file format: the snapshot file (src/snapshot) and the live-migration stream
 * (src/live) are built on its records, and own their policy (record sizes, limits, what ends a
 * section, which header checksums to keep).
 *
 *     record = [prefix: P bytes][u32 LE payload length n][u32 LE checksum of the payload][n bytes]
 *
 * P is fixed per call, 0 ≤ P ≤ 8 (`prefix`): the snapshot's chunks have none; the live stream's
 * DATA frames carry `[u8 type][u8 flags][u16 LE device index]`. A length of 0 is never written:
 * it marks a terminator (the snapshot's end chunk starts with a u32 0). The checksum is the
 * call's `checksum` algorithm (./checksum.ts; CRC-32C by default).
 *
 * Two implementations keep this contract, held to it by one suite (test/contract/pump-suite.ts):
 *  - the native pump (./native.ts): the addon (addon/sys.cc vfio_pump) on a dedicated thread per
 *    call, one or two reused buffers, never a copy through JavaScript; for real fds of a binding
 *    whose addon is loaded;
 *  - the JS pump (./js.ts): a loop over any `Binding`'s read/write/pread/pwrite/poll: koffi's
 *    real fds, the simulated device's virtual ones.
 * `pumpFor(binding, fds)` (./index.ts) picks one.
 *
 * Rules both keep:
 *  - EINTR is retried, EAGAIN on either side waited out with poll(2), short writes looped on; a
 *    write that makes no progress (returns 0) fails with EIO.
 *  - Sockets are written without raising SIGPIPE (native: send(2) with MSG_NOSIGNAL; JS: Node
 *    ignores SIGPIPE): a closed peer is EPIPE or ECONNRESET, a rejection like any other.
 *  - A record source that is not read by position (`srcOffset`) is never read past what the
 *    pump uses: the next bytes of a socket belong to the caller (the live stream reads its own
 *    control frames from it). By position, the pump may read a header ahead with a payload; the
 *    native pump also takes, from a stream socket, the next header's bytes that arrived with a
 *    payload (never more: a header that is not a record's is handed back whole, end 'header'),
 *    and checksums a payload piece by piece as it arrives. After a rejection the place in a
 *    socket source is unknown (up to one header may have been taken): the stream is not
 *    read on past a failed pump.
 *  - Waits on fds that can block forever (anything but a regular file or block device) are
 *    bounded by `idleTimeoutMs` and by `signal`. The native pump reopens a blocking pipe with
 *    O_NONBLOCK for itself, and sends to sockets with MSG_DONTWAIT, so that not even a write
 *    sleeps out of their reach; on such ends (and fds already O_NONBLOCK) it makes the call at
 *    once and polls only after EAGAIN, checking the signal once per step; it polls before each
 *    call only on an fd whose calls may sleep (a blocking data_fd or tty). The JS pump polls
 *    before each call; but a write larger than
 *    the room in a blocking pipe or socket, on a real fd (koffi), waits inside write(2) on the
 *    binding's thread pool until the peer reads, and so does the pump (the contract suite's
 *    `boundedWrites`).
 *  - A `precopy` source is read without polling it first: PRE_COPY's "no more data for now"
 *    comes from read(2) (0 or ENOMSG, at once), and a driver's poll need not report it. Without
 *    `precopy`, a PRE_COPY data_fd is waited on like any stream.
 *  - Bad arguments throw synchronously (TypeError / RangeError, codes ERR_INVALID_ARG_TYPE /
 *    ERR_OUT_OF_RANGE, the same messages from both: ./args.ts) and never reach the kernel.
 *  - Every rejection is a `PumpError`.
 */
export interface Pump {
  /** Which implementation this is. */
  readonly name: 'native' | 'js';

  /**
   * Copy `src` to `dst` until the end of `src` (read(2) returns 0), `limit` bytes, or PRE_COPY's
   * temporary end (`precopy`), checksumming the bytes as they pass (`checksum` of the result).
   * With `expectChecksum` (and a `limit` of at most the buffer's length), read all `limit`
   * bytes first and write them only if their checksum matches: how a restore keeps a corrupted
   * block away from a device.
   */
  copy(src: number, dst: number, buffers: PumpBuffers, opts?: CopyOptions): Promise<CopyResult>;

  /**
   * Read `src` (to its end, `limit` payload bytes, or PRE_COPY's temporary end with `precopy`)
   * and write it to `dst` as records of `recordSize` payload bytes (the last one may be
   * shorter; an empty source writes nothing), each header and payload with one write (looping
   * on short writes): `prefix`, length, checksum, payload. Every buffer must hold
   * P + 8 + recordSize bytes.
   *
   * Resolves with the records written and, continued from each seed of `headerChecksums`, the
   * running checksum of their headers (the snapshot keeps two: its chunk table and its skeleton).
   * A rejection's `bytesDone` counts the payload of the records written whole.
   */
  writeRecords(src: number, dst: number, buffers: PumpBuffers, opts: WriteRecordsOptions): Promise<WriteRecordsResult>;

  /**
   * Read records from `src` and write their payloads to `dst`: for each, read its header; stop
   * (end 'header', the header handed back in `header`, not counted) when its prefix is not
   * `prefix` or its length is 0; refuse a length over `maxRecord` or the buffer (code
   * 'EVFIO_RECORD_LENGTH'); read the payload, check its checksum (code 'EVFIO_CHECKSUM' on a
   * mismatch) and only then write it. Also stops after `records` records (end 'count', nothing
   * more read) or at the end of `src` between records (end 'eof'); the end of `src` inside a
   * record is code 'EVFIO_TRUNCATED'. Nothing of a refused record reaches `dst`.
   *
   * Resolves with the records moved, the bytes of `src` they took (`read`: with `srcOffset`,
   * the next header is at srcOffset + read) and the running header checksums. Format refusals
   * carry `recordOffset`: the source offset of the record's header (srcOffset + what was read
   * before it; from 0 without srcOffset).
   */
  readRecords(src: number, dst: number, buffers: PumpBuffers, opts: ReadRecordsOptions): Promise<ReadRecordsResult>;
}

/**
 * The buffer a pump reads into and writes from, reused for every read; or two, for a pump that
 * reads (and checksums) into one while it writes the other to `dst` (native: a second thread;
 * JS: a read and a write in flight at once), so that it costs about the longer of the two
 * sides, not their sum, where a core is free (`overlap`: by default when the process may run on
 * more than one CPU; otherwise only the first buffer is used). Kept alive until the promise
 * settles; not to be touched meanwhile. Not empty; two must be distinct.
 */
export type PumpBuffers = Buffer | readonly [Buffer] | readonly [Buffer, Buffer];

/** Options of every pump call. Integers are bytes unless said otherwise. */
export interface PumpCommonOptions {
  /** Checksum algorithm of the copy or of each record (default 'crc32c'). */
  checksum?: ChecksumAlgorithm;
  /**
   * Read `src` with pread(2) from this offset on, advancing, instead of read(2): a file read by
   * position (its fd offset is neither used nor moved). A stream fails with ESPIPE ('pread').
   */
  srcOffset?: number;
  /** Write `dst` with pwrite(2) from this offset on, advancing, instead of write(2). */
  dstOffset?: number;
  /**
   * With `dstOffset` and a regular file as `dst`: start the write-back of every `writeback`
   * bytes written (sync_file_range(2) SYNC_FILE_RANGE_WRITE), so that the disk writes while the
   * pump copies and a final fsync has little left. A hint: no byte or result changes, failures
   * are ignored, the JS pump does not act on it. 0 (default) is off.
   */
  writeback?: number;
  /** Cancels the pump: it rejects with code 'ECANCELED' (errno 125), on the side it was waiting on. */
  signal?: AbortSignal;
  /**
   * Milliseconds, ≥ 0: a wait for `src` or `dst` (a socket, a pipe, a data_fd: not a regular
   * file) that sees no readiness for this long fails with code 'ETIMEDOUT' (errno 110). Default:
   * wait as long as it takes.
   */
  idleTimeoutMs?: number;
  /**
   * With two buffers: read into one while the other is written (true), or use only the first
   * (false). Default: when this process may run on more than one CPU
   * (`os.availableParallelism() > 1`, its affinity mask). On one CPU the reading and writing
   * sides only take turns, and their hand-offs (a thread switch per block or record) cost more
   * than they save.
   */
  overlap?: boolean;
}

/** Options of `Pump.copy`. */
export interface CopyOptions extends PumpCommonOptions {
  /** Copy at most this many bytes: the pump ends with 'limit' once they are written. */
  limit?: number;
  /**
   * The checksum the `limit` bytes must have (`limit` ≤ the first buffer's length, required).
   * All of them are read first and written only if it matches: else code 'EVFIO_CHECKSUM', or
   * 'EVFIO_TRUNCATED' when `src` ends first; in both cases nothing reaches `dst`.
   */
  expectChecksum?: number;
  /**
   * `src` is a PRE_COPY data_fd: read(2) failing with ENOMSG (uAPI vfio.h, "no more data for
   * now") or returning 0 (mtty) ends the pump with 'for-now'. Without it, ENOMSG rejects.
   */
  precopy?: boolean;
}

/** Options of `Pump.writeRecords`. */
export interface WriteRecordsOptions extends PumpCommonOptions {
  /** Payload bytes per record, in [1, 2^30]. */
  recordSize: number;
  /** The P bytes written in front of every header (default none), 0 ≤ P ≤ 8. */
  prefix?: Uint8Array;
  /** Payload bytes to move at most: ends with 'limit'. */
  limit?: number;
  /** As CopyOptions.precopy: ends with 'for-now', after the records of what was there. */
  precopy?: boolean;
  /** Seeds of running checksums over the headers written (P + 8 bytes each), at most 4, each in [0, 2^32). */
  headerChecksums?: readonly number[];
}

/** Options of `Pump.readRecords`. */
export interface ReadRecordsOptions extends PumpCommonOptions {
  /** The prefix every record must start with (default none), 0 ≤ P ≤ 8: another one stops the pump. */
  prefix?: Uint8Array;
  /** The largest payload accepted, in [1, 2^32) (default: the buffer's length). */
  maxRecord?: number;
  /** Stop after this many records (default: no limit). */
  records?: number;
  /** Seeds of running checksums over the headers read (P + 8 bytes each), at most 4. */
  headerChecksums?: readonly number[];
  /**
   * The first record's header (P + 8 bytes), already read from `src` by the caller to learn what
   * comes next: the pump starts with that record's payload. It is taken as if read here (`read`
   * counts it; another prefix or a length of 0 ends the pump at once with end 'header').
   * Record offsets stay `src`'s (that record's is `srcOffset`, where its payload starts). Not
   * with `records` 0.
   */
  firstHeader?: Uint8Array;
}

/** Why a pump stopped. */
export type CopyEnd = 'eof' | 'limit' | 'for-now';
export type ReadRecordsEnd = 'eof' | 'count' | 'header';

export interface CopyResult {
  /** Bytes written to `dst` (all of them read from `src`). */
  bytes: number;
  /** Their checksum (the call's algorithm), unsigned. */
  checksum: number;
  /** 'eof' (read(2) returned 0), 'limit', or 'for-now' (precopy). */
  end: CopyEnd;
}

export interface WriteRecordsResult {
  /** Payload bytes written (= bytes read from `src`). */
  bytes: number;
  /** Records written. */
  records: number;
  /** Bytes written to `dst`, headers included: bytes + (P + 8) × records. */
  written: number;
  /** The running header checksums, one per seed of `headerChecksums`. */
  headerChecksums: number[];
  end: CopyEnd;
}

export interface ReadRecordsResult {
  /** Payload bytes written to `dst`. */
  bytes: number;
  /** Records moved. */
  records: number;
  /** Bytes of `src` those records took, headers included (not a handed-back header). */
  read: number;
  /** The running header checksums, one per seed of `headerChecksums`. */
  headerChecksums: number[];
  /** 'eof': `src` ended between records; 'count': `records` reached; 'header': see `header`. */
  end: ReadRecordsEnd;
  /** With end 'header': the P + 8 header bytes that stopped the pump (another prefix, or a length of 0). */
  header?: Buffer;
}

/**
 * How a pump rejects: a VfioError (src/base/errors.ts) with `bytesDone`, the bytes written to
 * `dst` before the failure (copy and readRecords: part of a block or record may be among them
 * after a failed write; writeRecords: the payload of the records written whole), and
 * `bytesWritten`, every byte written to `dst`, headers and a part-written record included
 * (exact: 0 means `dst` saw nothing of this call, e.g. a stream socket is still at a record
 * boundary). Syscall
 * failures have `syscall` 'read' / 'pread' (`src`) or 'write' / 'pwrite' (`dst`), including
 * 'ECANCELED' (`signal`) and 'ETIMEDOUT' (`idleTimeoutMs`). Refusals of kind 'format':
 * 'EVFIO_CHECKSUM', 'EVFIO_TRUNCATED', 'EVFIO_RECORD_LENGTH' (with `recordLength`); those of
 * readRecords with `recordOffset`.
 */
export type PumpError = VfioError & { bytesDone: number; bytesWritten: number; recordOffset?: number; recordLength?: number };

/**
 * A native record walk (the snapshot reader's fast validation: one pread(2) per header in C):
 * from `walk.pos`, pass over records whose header has `prefix`, a length in [1, maxRecord] and a
 * payload ending within `size`, for at most `maxHeaders` headers or about `budgetUs` µs,
 * continuing `walk.sums` over their headers. Stops without throwing at the first header it does
 * not take (a terminator, another prefix, one cut off or out of range, a read error), which the
 * caller reads and judges itself.
 */
export interface RecordWalk {
  /** File offset of the next header. */
  pos: number;
  /** Records passed. */
  count: number;
  /** Their payload bytes. */
  total: number;
  /** Running header checksums, continued from the caller's seeds. */
  sums: number[];
}

export interface RecordWalkOptions {
  prefix: Uint8Array;
  maxRecord: number;
  checksum: ChecksumAlgorithm;
  maxHeaders: number;
  /** About this many microseconds at most (checked every 16 headers); -1 or absent: no limit. */
  budgetUs?: number;
}

export type RecordWalker = (fd: number, walk: RecordWalk, size: number, opts: RecordWalkOptions) => RecordWalk & { taken: number };

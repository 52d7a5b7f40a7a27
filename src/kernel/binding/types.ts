import type { VfioError } from '../../base/errors';

/**
 * The device-access contract: the handful of syscalls the library needs, and nothing else.
 *
 * Three implementations share it and one contract suite (test/contract) runs against each:
 *  - `native`: the C++ N-API addon (addon/), the default;
 *  - `koffi`: the same calls through libc with koffi, for when the addon cannot load;
 *  - `sim`: the simulated device (src/binding/sim), which serves virtual fds for `sim:` devices
 *    and hands every other fd to a real binding.
 *
 * Rules every implementation keeps:
 *  - Every fd it creates is close-on-exec (O_CLOEXEC, EFD_CLOEXEC).
 *  - A failing call throws a `VfioError` (src/errors.ts) with `code` (errno name), `errno`
 *    (positive) and `syscall`; nothing is returned as -1.
 *  - Microsecond calls (ioctl, pread, pwrite, eventfd) are synchronous; `read`, `write` and
 *    `poll` on stream fds run off the JS thread and return promises. EINTR is retried inside.
 *  - Buffers passed to async calls are kept alive by the binding until the promise settles.
 *  - Bad arguments throw synchronously, also from the async calls: TypeError for a wrong type,
 *    RangeError for a value out of range (fd not in [0, 2^31), offset + length beyond the
 *    Buffer, negative file position). They never reach the kernel.
 */
export interface Binding {
  /** Which implementation this is. */
  readonly name: 'native' | 'koffi' | 'sim';

  /**
   * open(2). O_CLOEXEC is always added. `flags` are Linux O_* values (fs.constants); `mode`
   * (default 0o666, less the umask) applies when O_CREAT creates the file. Errors carry `path`.
   */
  open(path: string, flags: number, mode?: number): number;

  /** close(2). Throws EBADF for an fd that is not open. */
  close(fd: number): void;

  /**
   * ioctl(2). `arg` is a Buffer passed by pointer (the kernel may write into it), an integer
   * passed by value, or omitted (0). Returns the ioctl's non-negative return value.
   */
  ioctl(fd: number, request: number, arg?: Buffer | number): number;

  /**
   * ioctl(2) off the JS thread, for requests that can take long: VFIO_DEVICE_RESET (a function
   * level reset waits ~100 ms), VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE SET (drivers save or load
   * device state inside it), DMA map (pins pages). Same arguments and errors as `ioctl`; a Buffer
   * argument is kept alive until the promise settles and must not be touched meanwhile.
   */
  ioctlAsync(fd: number, request: number, arg?: Buffer | number): Promise<number>;

  /**
   * The process address of a Buffer's memory, for DMA mapping guest RAM (VFIO_IOMMU_MAP_DMA and
   * IOMMU_IOAS_MAP take a user virtual address). The caller keeps the Buffer alive while mapped.
   */
  bufferAddress(buf: Buffer): bigint;

  /** One pread(2) of `length` bytes (default buf.length) at `offset` into `buf`. May be short. */
  pread(fd: number, buf: Buffer, offset: number, length?: number): number;

  /** One pwrite(2) of `length` bytes (default buf.length) from `buf` at `offset`. May be short. */
  pwrite(fd: number, buf: Buffer, offset: number, length?: number): number;

  /**
   * Optional fast path of snapshot validation (SnapshotReader, src/snapshot/reader.ts; native
   * only): from `walk.pos`, pass over regular chunks — a whole header, a length in
   * [1, maxChunk], a payload that ends within `size` bytes of the file — reading only their
   * headers with pread(2), for at most `maxHeaders` headers or about `budgetUs` microseconds
   * (synchronous: a header costs ~1 µs from the page cache). Returns the walk advanced and how
   * many headers it took. Never throws on the file: it stops at the first header it does not
   * take (the end chunk, a header cut off, out of range or unreadable), which the caller reads
   * and judges itself. TypeError / RangeError for bad arguments.
   */
  walkChunks?(fd: number, walk: ChunkWalk, size: number, maxChunk: number, maxHeaders: number, budgetUs?: number): ChunkWalk & { taken: number };

  /**
   * One read(2) on a stream fd (data_fd, pipe, socket), off the JS thread. Resolves with the
   * byte count; 0 is end of file (or, in PRE_COPY, end of the data available for now).
   * EAGAIN on a non-blocking fd is waited out with poll(2).
   */
  read(fd: number, buf: Buffer, offset?: number, length?: number): Promise<number>;

  /** One write(2) on a stream fd, off the JS thread. Resolves with the bytes written (may be short). */
  write(fd: number, buf: Buffer, offset?: number, length?: number): Promise<number>;

  /**
   * pipe2(2) with O_CLOEXEC added; `flags` may add O_NONBLOCK or O_DIRECT. Returns
   * [readFd, writeFd]. For tests and for the simulated device's data_fd.
   */
  pipe(flags?: number): [number, number];

  /** eventfd(2) with EFD_CLOEXEC | EFD_NONBLOCK added. */
  eventfd(initval: number, flags?: number): number;

  /** Non-blocking read of an eventfd counter: the counter (and resets it), or 0n when it was 0. */
  eventfdRead(fd: number): bigint;

  /** Add `value` to an eventfd counter. */
  eventfdWrite(fd: number, value: bigint): void;

  /**
   * poll(2) one fd for `events` (POLLIN 1, POLLOUT 4), off the JS thread. Resolves with the
   * revents, or 0 on timeout. `timeoutMs` < 0 waits forever.
   */
  poll(fd: number, events: number, timeoutMs: number): Promise<number>;

  /**
   * The device-state stream: copy `srcFd` to `dstFd` through `buf` (data_fd → file on save,
   * file → data_fd on restore). `buf` is the one buffer used, its length (not 0) the chunk
   * size; it is kept alive until the promise settles. Off the JS thread, and off libuv's pool
   * too where the binding can (native: a dedicated thread per call), so that pending pumps never
   * hold up fs or other async work. EINTR is retried, EAGAIN on either side waited out with
   * poll(2), short writes looped on; the CRC-32 of each chunk is computed as it passes.
   *
   * Options (see PumpOptions): `limit` (stop after exactly that many bytes), `srcOffset` /
   * `dstOffset` (pread/pwrite from that offset, advancing, instead of read/write), `expectCrc`
   * (buffer the whole `limit` bytes and write them only if their CRC-32 matches), `precopy`
   * (ENOMSG and a read of 0 mean "no more data for now") and `frame` (write or read the chunk
   * framing of a snapshot section, so that one call moves a whole DEVICE_STATE section; see
   * PumpFrame). A number instead of the options is the older form of `limit`, -1 meaning none.
   *
   * Resolves with the bytes copied, their CRC-32 and why it stopped (PumpResult). Rejects with
   * a PumpError: a VfioError carrying `bytesDone`, the bytes that reached `dstFd` before the
   * failure. Syscall failures have `syscall` 'read' / 'pread' (source) or 'write' / 'pwrite'
   * (destination); `expectCrc` failures are kind 'format' with code 'EVFIO_CHECKSUM' or
   * 'EVFIO_SNAPSHOT_TRUNCATED', and nothing was written. Bad arguments throw synchronously
   * (TypeError / RangeError), including `expectCrc` without a `limit` of at most buf.length.
   * A framed pump resolves with more fields and rejects in more ways: see PumpFrameWrite and
   * PumpFrameRead.
   *
   * Optional: a binding without it leaves streaming to read/write.
   */
  pump?(srcFd: number, dstFd: number, buf: Buffer, opts?: PumpOptions | number): Promise<PumpResult>;

  // ---- sockets (the live-migration transport, src/live/) ----
  //
  // Sockets the library owns and drives itself: every one is close-on-exec and non-blocking, its
  // bytes move with `read` / `write` (off the JS thread) or the addon's pump, and its waits are
  // `poll` calls; libuv never reads it. Socket addresses are the bytes of a struct sockaddr_*
  // (a Buffer of 2 to 128 bytes, RangeError otherwise), built and decoded by
  // src/kernel/uapi/socket.ts. All of these are synchronous: none of them waits.
  //
  // A `write` to a socket (or pipe) whose reader is gone fails with EPIPE and never raises
  // SIGPIPE in the process, whatever its SIGPIPE disposition (native: blocked around the write;
  // koffi: send(2) with MSG_NOSIGNAL for sockets).

  /**
   * socket(2) with SOCK_CLOEXEC | SOCK_NONBLOCK added to `type`. `domain` AF_*, `type` SOCK_*,
   * `protocol` (default 0) as in socket(2); the values are in src/kernel/uapi/socket.ts.
   */
  socket(domain: number, type: number, protocol?: number): number;

  /** bind(2) to `addr` (struct sockaddr bytes). An AF_UNIX path that exists fails with EADDRINUSE. */
  bind(fd: number, addr: Buffer): void;

  /** listen(2); `backlog` in [0, 2^31) (the kernel caps it at net.core.somaxconn). */
  listen(fd: number, backlog: number): void;

  /**
   * accept4(2) with SOCK_CLOEXEC | SOCK_NONBLOCK: the connected socket's fd. Throws EAGAIN when
   * no connection is pending (wait with `poll(fd, POLLIN)`); accept(2) also reports errors of
   * the pending connection (ECONNABORTED, EPROTO, network errors), which callers skip.
   */
  accept(fd: number): number;

  /**
   * connect(2) on the non-blocking socket: true when connected at once (AF_UNIX), false when
   * the connection is in progress (EINPROGRESS): wait with `poll(fd, POLLOUT)` and read the
   * outcome with `getsockopt(fd, SOL_SOCKET, SO_ERROR)` (0, or the errno connect(2) would have
   * failed with, e.g. ECONNREFUSED). Throws at once for errors found at once (ECONNREFUSED and
   * ENOENT for AF_UNIX; EAGAIN when an AF_UNIX listener's backlog is full).
   */
  connect(fd: number, addr: Buffer): boolean;

  /**
   * getsockopt(2). Without `buf`: an int option (SO_ERROR, SO_TYPE, SO_SNDBUF, TCP_NODELAY, ...)
   * and its value is returned. With `buf` (non-empty): the option is written into it and the
   * length the kernel wrote is returned (SO_PEERCRED: struct ucred, 12 bytes).
   */
  getsockopt(fd: number, level: number, name: number, buf?: Buffer): number;

  /** setsockopt(2): `value` an int (in [-2^31, 2^31)), or a non-empty Buffer for struct options (SO_LINGER). */
  setsockopt(fd: number, level: number, name: number, value: number | Buffer): void;

  /** shutdown(2): `how` SHUT_RD 0, SHUT_WR 1, SHUT_RDWR 2 (RangeError otherwise). Wakes the fd's pending polls. */
  shutdown(fd: number, how: number): void;

  /** getsockname(2): the socket's own address (struct sockaddr bytes, as long as the kernel says). */
  getsockname(fd: number): Buffer;

  /** getpeername(2): the connected peer's address; ENOTCONN when there is none. */
  getpeername(fd: number): Buffer;
}

/** Where a walk over a chunked section's headers stands (Binding.walkChunks; docs/snapshot-format.md). */
export interface ChunkWalk {
  /** File offset of the next chunk header. */
  pos: number;
  /** Chunks passed. */
  count: number;
  /** Their payload bytes. */
  total: number;
  /** Running CRC-32 of the headers passed: the end chunk's chunk-table checksum. */
  tableCrc: number;
  /** The same headers added to the file skeleton's CRC-32 (the END section's checksum). */
  skeletonCrc: number;
}

/** Options of `Binding.pump`. Every field is optional; integers are bytes. */
export interface PumpOptions {
  /**
   * Copy exactly this many bytes, in [0, 2^53): the pump ends with 'limit' once they are
   * written, or earlier with 'eof' (or 'for-now') when the source ends first. Without it the
   * pump runs to the end of the source.
   */
  limit?: number;
  /**
   * Read the source with pread(2) from this offset on, advancing, instead of read(2): a
   * snapshot file is read by position and the fd's own file offset is neither used nor moved.
   * A data_fd is a stream and fails with ESPIPE (syscall 'pread').
   */
  srcOffset?: number;
  /** Write the destination with pwrite(2) from this offset on, advancing, instead of write(2). */
  dstOffset?: number;
  /**
   * Bytes, > 0: with `dstOffset` and a regular file as the destination, start the write-back
   * of every `writeback` bytes written (sync_file_range(2) SYNC_FILE_RANGE_WRITE), so that the
   * disk writes while the pump copies and a final fsync has little left to wait for. A hint:
   * it changes no byte and no result, its failures are ignored, and the koffi and simulated
   * bindings' JS loop does not act on it. Integer in [0, 2^53); 0 is off.
   */
  writeback?: number;
  /**
   * The CRC-32 (as `zlib.crc32()` computes it, unsigned) the `limit` bytes must have; `limit`
   * is then required and at most `buf.length`. The pump reads all `limit` bytes into `buf`
   * first and writes them to the destination only if their CRC-32 matches: otherwise it
   * rejects with code 'EVFIO_CHECKSUM' (kind 'format'), and with 'EVFIO_SNAPSHOT_TRUNCATED'
   * (kind 'format') when the source ends before `limit` bytes; in both cases nothing reaches
   * the destination (`bytesDone` 0). This is how a restore keeps a corrupted snapshot chunk
   * away from the device. On success `buf` holds the chunk.
   */
  expectCrc?: number;
  /**
   * The source is a PRE_COPY data_fd: a read(2) that fails with ENOMSG (uAPI vfio.h, "no more
   * data for now") or returns 0 (mtty) ends the pump with 'for-now' rather than 'eof' or an
   * error. Without it, ENOMSG rejects like any other errno.
   */
  precopy?: boolean;
  /**
   * Write (save) or read (restore) the chunk framing of a snapshot's chunked section instead of
   * copying plain bytes. Checked after the other options; TypeError / RangeError as below.
   */
  frame?: PumpFrame;
}

/**
 * The chunk framing a pump can write or read itself, so that one call moves a whole section
 * (docs/snapshot-format.md, "Chunked body"; src/snapshot/format.ts). Little-endian, CRC-32 as
 * zlib computes it:
 *
 *     chunk     = [u32 payload length n, ≥ 1][u32 CRC-32 of the payload][n payload bytes]
 *     end chunk = [u32 0][u32 CRC-32 over the 8-byte headers of all chunks][u64 total payload bytes]
 *
 * The pump keeps the running CRC-32s of the headers it writes or reads (the section's chunk
 * table and, on save, the file's skeleton, which covers every byte outside chunk payloads); the
 * snapshot code (src/snapshot/state-io.ts) owns the policy: chunk size, the 16 MiB limit, and
 * whether the end chunk agrees. The addon does it in addon/sys.cc (vfio_pump_frame); koffi and
 * sim in the JS loop `runPump` (src/binding/koffi.ts), with the same results and errors.
 */
export type PumpFrame = PumpFrameWrite | PumpFrameRead;

/**
 * Save: `pump(dataFd, fileFd, buf, { frame: { mode: 'write', chunk, tableCrc, skeletonCrc }, dstOffset })`.
 *
 * Reads the source to its end (or `limit` payload bytes, or PRE_COPY's temporary end with
 * `precopy`) and gathers each `chunk` bytes of payload into `buf` after an 8-byte gap (the last
 * chunk may be shorter; an empty chunk is never written, so an empty source writes nothing),
 * computes the payload's CRC-32, fills the header in front and writes header + payload with one
 * write (pwrite at the running `dstOffset`), looping on short writes. Resolves with a
 * PumpFramedWriteResult. `limit` counts payload bytes; `expectCrc` cannot be combined
 * (RangeError). A rejection's `bytesDone` counts the payload bytes of the chunks completely
 * written (header and payload); `syscall` tells the side that failed ('read' / 'pread' for the
 * source, 'write' / 'pwrite' for the destination).
 */
export interface PumpFrameWrite {
  mode: 'write';
  /** Payload bytes per chunk, in [1, 2^30]; `buf.length` must be at least `chunk + 8` (RangeError). */
  chunk: number;
  /** The section's chunk-table CRC-32 so far (default 0: the first call of a section), in [0, 2^32). */
  tableCrc?: number;
  /** The file's skeleton CRC-32 so far (default 0), in [0, 2^32). */
  skeletonCrc?: number;
}

/**
 * Restore: `pump(fileFd, dataFd, buf, { frame: { mode: 'read', maxChunk, chunks, tableCrc: 0 }, srcOffset })`
 * with `srcOffset` the file offset of the first chunk header (without it the source is read
 * with read(2) and offsets count from where it stood).
 *
 * For each of `chunks` chunks: reads the 8-byte header, checks 1 ≤ length ≤ min(maxChunk,
 * buf.length), reads the payload into `buf`, checks its CRC-32 and only then writes it all to
 * the destination (short writes looped on, EAGAIN waited out, EINTR retried). With `final`
 * (the default) it then reads the 16-byte end chunk, checks that its first u32 is 0, and
 * resolves with its fields (PumpFramedReadResult, end 'eof') for the caller to compare with
 * `tableCrc` and `bytes`; without, it resolves with 'limit' after the chunks. `limit`,
 * `expectCrc` and `precopy: true` cannot be combined (RangeError).
 *
 * Rejections, every one with `chunkOffset` (the source offset of the header of the chunk, or
 * end chunk, being handled) and `bytesDone` (payload bytes written to the destination; part of
 * a chunk only after a failed write): kind 'format' with code 'EVFIO_SNAPSHOT_CHECKSUM' (a
 * payload whose CRC-32 is not its header's: nothing of it was written), 'EVFIO_BAD_SNAPSHOT'
 * (a length outside the range, or no end chunk where the `chunks` end; `chunkLength` is the
 * u32 found; nothing of that chunk was written) or 'EVFIO_SNAPSHOT_TRUNCATED' (the source ends
 * inside a header, a payload or the end chunk); or a syscall failure ('read' / 'pread' for the
 * source, 'write' / 'pwrite' for the destination).
 */
export interface PumpFrameRead {
  mode: 'read';
  /** Chunks to move, in [0, 2^53) (the count the reader's validated walk found). */
  chunks: number;
  /** Largest payload accepted, in [1, 2^32) (default: no limit but `buf.length`). */
  maxChunk?: number;
  /** The chunk-table CRC-32 so far (default 0: the call starts at the section's first chunk), in [0, 2^32). */
  tableCrc?: number;
  /** Read the end chunk after the chunks (default true); false to go on in another call. */
  final?: boolean;
}

/** Why a pump stopped: the source's end (read(2) returned 0), the `limit`, or PRE_COPY's temporary end. */
export type PumpEnd = 'eof' | 'limit' | 'for-now';

/** What a pump copied. The framing fields are there exactly when `frame` was given. */
export interface PumpResult {
  /** Bytes read from the source and written to the destination (framed: payload bytes only). */
  bytes: number;
  /** CRC-32 (zlib polynomial, unsigned 32-bit) of those bytes. */
  crc32: number;
  /**
   * Why it stopped. Framed read: 'eof' after the end chunk (`final`), else 'limit'. Framed
   * write: as unframed, with `limit` counting payload bytes.
   */
  end: PumpEnd;
  /** Framed: chunks written to the destination. */
  chunks?: number;
  /** Framed write: bytes written to the destination, headers included (`bytes + 8 * chunks`). */
  written?: number;
  /** Framed: the chunk-table CRC-32, continued from `frame.tableCrc` over the headers written / read. */
  tableCrc?: number;
  /** Framed write: the skeleton CRC-32, continued from `frame.skeletonCrc` over the same headers. */
  skeletonCrc?: number;
  /** Framed read with `final`: the end chunk's chunk-table CRC-32. */
  endTableCrc?: number;
  /** Framed read with `final`: the end chunk's total payload bytes. */
  endTotal?: number;
}

/** The result of a framed write (PumpFrameWrite). */
export type PumpFramedWriteResult = PumpResult & { chunks: number; written: number; tableCrc: number; skeletonCrc: number };

/** The result of a framed read (PumpFrameRead); the end chunk's fields when it was `final`. */
export type PumpFramedReadResult = PumpResult & { chunks: number; tableCrc: number; endTableCrc?: number; endTotal?: number };

/**
 * How a pump rejects: a VfioError (src/errors.ts) with `bytesDone`, the bytes written to the
 * destination before the failure (part of a chunk may be among them; 0 for the `expectCrc`
 * refusals; framed: payload bytes, see PumpFrameWrite / PumpFrameRead). A framed read's
 * rejections also carry `chunkOffset`, and its 'EVFIO_BAD_SNAPSHOT' ones `chunkLength`.
 */
export type PumpError = VfioError & { bytesDone: number; chunkOffset?: number; chunkLength?: number };

/** poll(2) event bits (asm-generic/poll.h). */
export const POLLIN = 0x1;
export const POLLOUT = 0x4;
export const POLLERR = 0x8;
export const POLLHUP = 0x10;

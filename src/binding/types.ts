import type { VfioError } from '../errors';

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

  /** One pread(2) of `length` bytes (default buf.length) at `offset` into `buf`. May be short. */
  pread(fd: number, buf: Buffer, offset: number, length?: number): number;

  /** One pwrite(2) of `length` bytes (default buf.length) from `buf` at `offset`. May be short. */
  pwrite(fd: number, buf: Buffer, offset: number, length?: number): number;

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
   * (buffer the whole `limit` bytes and write them only if their CRC-32 matches) and `precopy`
   * (ENOMSG and a read of 0 mean "no more data for now"). A number instead of the options is
   * the older form of `limit`, -1 meaning none.
   *
   * Resolves with the bytes copied, their CRC-32 and why it stopped (PumpResult). Rejects with
   * a PumpError: a VfioError carrying `bytesDone`, the bytes that reached `dstFd` before the
   * failure. Syscall failures have `syscall` 'read' / 'pread' (source) or 'write' / 'pwrite'
   * (destination); `expectCrc` failures are kind 'format' with code 'EVFIO_CHECKSUM' or
   * 'EVFIO_SNAPSHOT_TRUNCATED', and nothing was written. Bad arguments throw synchronously
   * (TypeError / RangeError), including `expectCrc` without a `limit` of at most buf.length.
   *
   * Optional: a binding without it leaves streaming to read/write.
   */
  pump?(srcFd: number, dstFd: number, buf: Buffer, opts?: PumpOptions | number): Promise<PumpResult>;
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
}

/** Why a pump stopped: the source's end (read(2) returned 0), the `limit`, or PRE_COPY's temporary end. */
export type PumpEnd = 'eof' | 'limit' | 'for-now';

/** What a pump copied. */
export interface PumpResult {
  /** Bytes read from the source and written to the destination. */
  bytes: number;
  /** CRC-32 (zlib polynomial, unsigned 32-bit) of those bytes. */
  crc32: number;
  /** Why it stopped. */
  end: PumpEnd;
}

/**
 * How a pump rejects: a VfioError (src/errors.ts) with `bytesDone`, the bytes written to the
 * destination before the failure (part of a chunk may be among them; 0 for the `expectCrc`
 * refusals).
 */
export type PumpError = VfioError & { bytesDone: number };

/** poll(2) event bits (asm-generic/poll.h). */
export const POLLIN = 0x1;
export const POLLOUT = 0x4;
export const POLLERR = 0x8;
export const POLLHUP = 0x10;

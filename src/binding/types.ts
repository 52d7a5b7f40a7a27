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
   * Copy `srcFd` to `dstFd` through `buf` until read(2) returns 0 (end of file: for a data_fd,
   * the end of the device state) or, when `limit` >= 0, exactly `limit` bytes were copied;
   * `limit` -1 (the default) means no limit. This is the device-state stream: data_fd → file
   * on save, file → data_fd on load. Runs off the JS thread; `buf` is the one buffer used
   * (its length, not 0, is the chunk size) and is kept alive until the promise settles.
   * EINTR is retried, EAGAIN on either side waited out with poll(2), short writes looped on.
   *
   * Resolves with the bytes copied and the zlib CRC-32 (as `zlib.crc32()` computes it) of
   * those bytes. Rejects with a VfioError whose `syscall` is 'read' or 'write' for the side
   * that failed. Optional: a binding without it leaves streaming to read/write.
   */
  pump?(srcFd: number, dstFd: number, buf: Buffer, limit?: number): Promise<PumpResult>;
}

/** What a pump copied. */
export interface PumpResult {
  /** Bytes read from the source and written to the destination. */
  bytes: number;
  /** CRC-32 (zlib polynomial, unsigned 32-bit) of those bytes. */
  crc32: number;
}

/** poll(2) event bits (asm-generic/poll.h). */
export const POLLIN = 0x1;
export const POLLOUT = 0x4;
export const POLLERR = 0x8;
export const POLLHUP = 0x10;

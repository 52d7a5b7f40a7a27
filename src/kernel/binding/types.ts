/**
 * The device-access contract: the handful of syscalls the library needs, and nothing else.
 *
 * Three implementations share it and one contract suite (test/contract) runs against each:
 *  - `native`: the C++ N-API addon (addon/), the default;
 *  - `koffi`: the same calls through libc with koffi, for when the addon cannot load;
 *  - `sim`: the simulated device (src/sim), which serves virtual fds for `sim:` devices
 *    and hands every other fd to a real binding.
 *
 * It knows syscalls and nothing of the library's formats: moving a device's state between fds,
 * and the checksummed records it is stored and sent in, is the data pump's (src/kernel/pump),
 * built on these calls (the JS pump) or on the addon's own (the native pump).
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
   * Which binding does the syscalls on all of `fds` in the kernel, for work that is done beside
   * this contract on real fds (the data pump, src/kernel/pump: its native implementation needs
   * the addon of a native binding). A binding that wraps others answers for them: the simulated
   * device names its inner binding when none of `fds` is virtual, and undefined otherwise.
   * Absent (native, koffi): the binding itself.
   */
  kernelBinding?(fds: readonly number[]): Binding | undefined;

  // ---- sockets (the live-migration transport, src/live/) ----
  //
  // Sockets the library owns and drives itself: every one is close-on-exec and non-blocking, its
  // bytes move with `recvNow` / `sendNow` (on the JS thread, never sleeping), `read` / `write`
  // (off it) or the addon's pump, and its waits are `poll` calls; libuv never reads it. Socket addresses are the bytes of a struct sockaddr_*
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

  /**
   * One recv(2) into buf[offset, offset + length) with MSG_DONTWAIT, on the calling thread: it
   * never sleeps, whatever the socket's own mode, so the JS thread may call it. The bytes
   * received (0: the peer's orderly end), or -1 when there are none now (EAGAIN: wait for POLLIN
   * and call again). `offset` defaults to 0, `length` to what follows it. Errors: VfioError with
   * errno, syscall 'recv' (ENOTSOCK on a fd that is not a socket).
   */
  recvNow(fd: number, buf: Buffer, offset?: number, length?: number): number;

  /**
   * One send(2) from buf[offset, offset + length) with MSG_DONTWAIT | MSG_NOSIGNAL, on the
   * calling thread: never sleeps and never raises SIGPIPE. The bytes sent (may be short), or -1
   * when the socket buffer has no room now (EAGAIN: wait for POLLOUT). Errors: VfioError with
   * errno (EPIPE once the peer is gone), syscall 'send'.
   */
  sendNow(fd: number, buf: Buffer, offset?: number, length?: number): number;
}

/** poll(2) event bits (asm-generic/poll.h). */
export const POLLIN = 0x1;
export const POLLOUT = 0x4;
export const POLLERR = 0x8;
export const POLLHUP = 0x10;

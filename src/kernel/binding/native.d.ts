/**
 * The raw surface of the vfio_pci addon (addon/binding.cc), typed in one place.
 *
 * Ambient (no imports or exports), like node-pty's native.d.ts: src/binding/native.ts is the
 * only module that touches these types; everything else sees the `Binding` contract
 * (./types.ts). Units and errors are those of the contract: fds are integers in [0, 2^31),
 * sizes and offsets are bytes, wrong types throw TypeError and values out of range RangeError
 * (code ERR_INVALID_ARG_TYPE / ERR_OUT_OF_RANGE), and a failing syscall throws (or rejects
 * with) an instance of the class given to `setErrorClass`, built as
 * `new ErrorClass(message, { code, errno, syscall, path? })`.
 */
declare namespace VfioPciNative {
  /** RecordWalk of src/kernel/pump/types.ts. */
  interface RecordWalk {
    pos: number;
    count: number;
    total: number;
    sums: number[];
  }

  interface RecordWalkOptions {
    prefix: Buffer | Uint8Array;
    maxRecord: number;
    checksum: 'crc32c' | 'crc32';
    maxHeaders: number;
    budgetUs?: number;
  }

  /** What the addon passes to the error class: errno name, positive errno, syscall name. */
  interface SysErrorInit {
    code: string;
    errno: number;
    syscall: string;
    /** Set for open(2) errors. */
    path?: string;
  }

  /** What the addon passes for a refusal that is not a syscall failure (a pump checksum). */
  interface FormatErrorInit {
    code: string;
    kind: 'format';
  }

  type ErrorClass = new (message: string, init: SysErrorInit | FormatErrorInit) => Error;

  /**
   * The options of `pump`, as src/kernel/pump/args.ts normalizes and checks them (the addon
   * checks types and ranges again, and refuses what does not fit together with EINVAL).
   */
  interface PumpOptions {
    mode: 'copy' | 'write-records' | 'read-records';
    checksum?: 'crc32c' | 'crc32';
    limit?: number;
    srcOffset?: number;
    dstOffset?: number;
    writeback?: number;
    expectChecksum?: number;
    precopy?: boolean;
    /** With two buffers: read on a second thread while writing (default: when the thread may run on more than one CPU). */
    overlap?: boolean;
    prefix?: Buffer;
    recordSize?: number;
    maxRecord?: number;
    records?: number;
    /** readRecords: the first record's header, already read by the caller (prefix + 8 bytes). */
    firstHeader?: Buffer;
    headerChecksums?: number[];
    idleTimeoutMs?: number;
  }

  /** Every field of every mode (src/kernel/pump/types.ts picks those of its mode). */
  interface PumpResult {
    bytes: number;
    read: number;
    written: number;
    records: number;
    checksum: number;
    headerChecksums: number[];
    end: 'eof' | 'limit' | 'for-now' | 'count' | 'header';
    /** end 'header': the header that stopped a read of records. */
    header?: Buffer;
  }

  /** A started pump: its promise, and a function that cancels it (a no-op once it has ended). */
  interface PumpJob {
    promise: Promise<PumpResult>;
    cancel(): void;
  }

  interface Addon {
    /**
     * Hand the addon the class to build syscall errors with (VfioError). Per environment: the
     * main thread and each worker_thread set their own. Before it is set, errors are plain
     * Errors carrying the same code/errno/syscall properties.
     */
    setErrorClass(errorClass: ErrorClass): void;

    /** open(2) with O_CLOEXEC added; `mode` defaults to 0o666. */
    open(path: string, flags: number, mode?: number): number;
    /** close(2); EINTR counts as closed. */
    close(fd: number): void;
    /**
     * ioctl(2): a Buffer (non-empty) is passed by pointer, a number (safe integer, negative
     * values as two's complement) by value, undefined as 0. `request` is in [0, 2^32).
     */
    ioctl(fd: number, request: number, arg?: Buffer | number): number;
    /** ioctl(2) on the libuv thread pool; the Buffer is pinned until the promise settles. */
    ioctlAsync(fd: number, request: number, arg?: Buffer | number): Promise<number>;
    /**
     * The checksum of `buf` continued from `seed` (default 0), with implementation number
     * `implementation` of `checksumImplementations[algorithm]` (default 0, the fastest). On
     * the JS thread. RangeError for an implementation this CPU does not have.
     */
    checksum(algorithm: 'crc32c' | 'crc32', buf: Buffer, seed?: number, implementation?: number): number;
    /** The checksum implementations this CPU has, fastest (the one the pump uses) first. */
    readonly checksumImplementations: Readonly<{ crc32c: readonly string[]; crc32: readonly string[] }>;
    /** Address of the Buffer's memory. */
    bufferAddress(buf: Buffer): bigint;
    /** One pread(2) of `length` (default buf.length, at most buf.length) bytes at `position`. */
    pread(fd: number, buf: Buffer, position: number, length?: number): number;
    /** One pwrite(2) of `length` (default buf.length, at most buf.length) bytes at `position`. */
    pwrite(fd: number, buf: Buffer, position: number, length?: number): number;
    /** vfio_walk_records (include/vfio_pci_sys.h): the walk advanced, and the headers taken. */
    walkRecords(fd: number, walk: RecordWalk, size: number, opts: RecordWalkOptions): RecordWalk & { taken: number };
    /** pipe2(2) with O_CLOEXEC added: [readFd, writeFd]. */
    pipe(flags?: number): [number, number];
    /** eventfd(2) with EFD_CLOEXEC | EFD_NONBLOCK added; `initval` in [0, 2^32). */
    eventfd(initval: number, flags?: number): number;
    /** The counter (reset by the read), or 0n when it was 0. */
    eventfdRead(fd: number): bigint;
    /** Add `value` (in [0, 2^64)) to the counter. */
    eventfdWrite(fd: number, value: bigint): void;
    /** vfio_populate on the libuv thread pool: fault in the whole pages inside `buf`; its bytes are unchanged. */
    populate(buf: Buffer): Promise<void>;

    /**
     * One read(2) into buf[offset, offset + length) on the libuv thread pool; EINTR retried,
     * EAGAIN waited out with poll(2). `offset` defaults to 0, `length` to what follows it.
     */
    read(fd: number, buf: Buffer, offset?: number, length?: number): Promise<number>;
    /** One write(2) from buf[offset, offset + length), as `read`. May be short. */
    write(fd: number, buf: Buffer, offset?: number, length?: number): Promise<number>;
    /** poll(2) one fd: revents, or 0 on timeout; `timeoutMs` < 0 waits forever. */
    poll(fd: number, events: number, timeoutMs: number): Promise<number>;
    /**
     * vfio_pump (addon/sys.cc) on a dedicated thread (not the libuv pool), through one or two
     * buffers (two: a second thread reads while the first writes); semantics of the pump
     * contract (src/kernel/pump/types.ts). The promise rejects with an instance of the error
     * class carrying `bytesDone`: syscall 'read' / 'pread' / 'write' / 'pwrite', or kind
     * 'format' with code 'EVFIO_CHECKSUM' / 'EVFIO_TRUNCATED' / 'EVFIO_RECORD_LENGTH' (built as
     * `new ErrorClass(message, { code, kind: 'format' })`), read-records ones with
     * `recordOffset` (and `recordLength`). A worker_thread terminated during a pump cancels it
     * and drops the result.
     */
    pump(srcFd: number, dstFd: number, buffers: Buffer | Buffer[], options: PumpOptions): PumpJob;

    // ---- sockets: synchronous, errors thrown as by open(); addresses are struct sockaddr bytes (2 to 128) ----
    /** socket(2) with SOCK_CLOEXEC | SOCK_NONBLOCK added. */
    socket(domain: number, type: number, protocol?: number): number;
    bind(fd: number, addr: Buffer): void;
    listen(fd: number, backlog: number): void;
    /** accept4(2) with SOCK_CLOEXEC | SOCK_NONBLOCK; throws EAGAIN (syscall 'accept4') when none is pending. */
    accept(fd: number): number;
    /** true: connected; false: in progress (EINPROGRESS). */
    connect(fd: number, addr: Buffer): boolean;
    /** Without `buf`: the int option's value. With `buf`: the length written into it. */
    getsockopt(fd: number, level: number, name: number, buf?: Buffer): number;
    /** `value`: an int, or a non-empty Buffer. */
    setsockopt(fd: number, level: number, name: number, value: number | Buffer): void;
    /** `how` in [0, 2]. */
    shutdown(fd: number, how: number): void;
    /** One recv(2) with MSG_DONTWAIT on this thread: bytes (0: the peer's end), or -1 when none are there now. */
    recvNow(fd: number, buf: Buffer, offset?: number, length?: number): number;
    /** One send(2) with MSG_DONTWAIT | MSG_NOSIGNAL on this thread: bytes (may be short), or -1 when there is no room now. */
    sendNow(fd: number, buf: Buffer, offset?: number, length?: number): number;
    getsockname(fd: number): Buffer;
    getpeername(fd: number): Buffer;
  }
}

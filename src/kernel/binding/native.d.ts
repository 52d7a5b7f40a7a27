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
  /** ChunkWalk of ./types.ts. */
  interface ChunkWalk {
    pos: number;
    count: number;
    total: number;
    tableCrc: number;
    skeletonCrc: number;
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

  interface PumpOptions {
    /** Bytes to copy, in [0, 2^53); absent: to the end of the source. */
    limit?: number;
    /** pread(2) the source from this offset on (advancing), in [0, 2^53). */
    srcOffset?: number;
    /** pwrite(2) the destination from this offset on (advancing), in [0, 2^53). */
    dstOffset?: number;
    /** CRC-32 in [0, 2^32) the `limit` (required, <= buf.length) bytes must have before any is written. */
    expectCrc?: number;
    /** ENOMSG and a read of 0 end the pump with 'for-now'. */
    precopy?: boolean;
    /** Start the write-back of a regular-file destination every this many bytes, in [0, 2^53); 0: off. */
    writeback?: number;
    /** Write or read the chunk framing of a snapshot section (PumpFrame in src/binding/types.ts). */
    frame?: PumpFrameWrite | PumpFrameRead;
  }

  interface PumpFrameWrite {
    mode: 'write';
    /** Payload bytes per chunk, in [1, 2^30]; the buffer must hold chunk + 8 bytes. */
    chunk: number;
    /** Chunk-table and skeleton CRC-32s to continue, in [0, 2^32) (default 0). */
    tableCrc?: number;
    skeletonCrc?: number;
  }

  interface PumpFrameRead {
    mode: 'read';
    /** Chunks to move, in [0, 2^53). */
    chunks: number;
    /** Largest payload accepted, in [1, 2^32) (default: the buffer length). */
    maxChunk?: number;
    /** Chunk-table CRC-32 to continue, in [0, 2^32) (default 0). */
    tableCrc?: number;
    /** Read the end chunk after the chunks (default true). */
    final?: boolean;
  }

  interface PumpResult {
    /** Bytes copied from src to dst (framed: payload bytes). */
    bytes: number;
    /** zlib CRC-32 of those bytes, unsigned. */
    crc32: number;
    /** Why it stopped. */
    end: 'eof' | 'limit' | 'for-now';
    /** Framed: chunks written to dst. */
    chunks?: number;
    /** Framed write: bytes written to dst, headers included. */
    written?: number;
    /** Framed: the chunk-table CRC-32 continued over the headers written / read. */
    tableCrc?: number;
    /** Framed write: the skeleton CRC-32 continued over the same headers. */
    skeletonCrc?: number;
    /** Framed read with `final`: the end chunk's fields. */
    endTableCrc?: number;
    endTotal?: number;
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
    /** The pump's CRC-32: 'isa-l' (Intel ISA-L, PCLMULQDQ/AVX-512) when built with it, else 'zlib'. */
    readonly crc32Implementation: 'isa-l' | 'zlib';
    /** Address of the Buffer's memory. */
    bufferAddress(buf: Buffer): bigint;
    /** One pread(2) of `length` (default buf.length, at most buf.length) bytes at `position`. */
    pread(fd: number, buf: Buffer, position: number, length?: number): number;
    /** One pwrite(2) of `length` (default buf.length, at most buf.length) bytes at `position`. */
    pwrite(fd: number, buf: Buffer, position: number, length?: number): number;
    /** vfio_walk_chunks (include/vfio_pci_sys.h): the walk advanced, and the headers taken. */
    walkChunks(fd: number, walk: ChunkWalk, size: number, maxChunk: number, maxHeaders: number, budgetUs?: number): ChunkWalk & { taken: number };
    /** pipe2(2) with O_CLOEXEC added: [readFd, writeFd]. */
    pipe(flags?: number): [number, number];
    /** eventfd(2) with EFD_CLOEXEC | EFD_NONBLOCK added; `initval` in [0, 2^32). */
    eventfd(initval: number, flags?: number): number;
    /** The counter (reset by the read), or 0n when it was 0. */
    eventfdRead(fd: number): bigint;
    /** Add `value` (in [0, 2^64)) to the counter. */
    eventfdWrite(fd: number, value: bigint): void;

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
     * Copy src to dst through `buf` (non-empty) on a dedicated thread (not the libuv pool),
     * computing the CRC-32; semantics of the `Binding.pump` contract (src/binding/types.ts).
     * `options` may be a number, the limit (-1: none). Rejects with an instance of the error
     * class carrying `bytesDone`: syscall 'read' / 'pread' / 'write' / 'pwrite', or kind
     * 'format' with code 'EVFIO_CHECKSUM' / 'EVFIO_SNAPSHOT_TRUNCATED' (built as
     * `new ErrorClass(message, { code, kind: 'format' })`); a framed read also with
     * 'EVFIO_SNAPSHOT_CHECKSUM' / 'EVFIO_BAD_SNAPSHOT', and `chunkOffset` (and `chunkLength`)
     * on its errors. A worker_thread terminated during a pump cancels it and drops the result.
     */
    pump(srcFd: number, dstFd: number, buf: Buffer, options?: PumpOptions | number): Promise<PumpResult>;

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
    getsockname(fd: number): Buffer;
    getpeername(fd: number): Buffer;
  }
}

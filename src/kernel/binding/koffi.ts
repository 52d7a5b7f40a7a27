import { constants as fsc, fstatSync } from 'node:fs';
import { crc32 } from 'node:zlib';
import { VfioError, type VfioErrorCode } from '../../base/errors';
import {
  INT_MAX, SOCKADDR_MAX, buffer as bufferArg, fd as fdArg, int as intArg, optInt as optIntArg, rangeError, sockaddr as sockaddrArg, typeError,
  window as windowArg,
} from './args';
import type { Binding, PumpEnd, PumpError, PumpOptions, PumpResult } from './types';

/**
 * The `Binding` contract through libc with koffi: the fallback for when the native addon
 * (addon/) cannot be loaded. Same calls, same errors (VfioError with code/errno/syscall), same
 * argument checks (TypeError / RangeError) and the same pump results as the addon.
 *
 * How it keeps the contract:
 *  - Synchronous calls read errno with `koffi.errno()` right after the call.
 *  - read, write and poll run as koffi async calls on the libuv thread pool. errno is
 *    thread-local and koffi does not carry it back from the pool thread, so when an async
 *    read/write returns -1 the same call is re-issued once on the JS thread to learn errno:
 *    it returns at once in every case that can fail without waiting (bad fd, wrong direction,
 *    EINVAL, EPIPE, EAGAIN on a non-blocking fd, ...), and a write is capped at PIPE_BUF so a
 *    pipe that has room cannot block it. EAGAIN is then waited out with an async poll(2).
 *    (A blocking fd whose async call was interrupted by a signal, EINTR, is the one case where
 *    the re-issued call could wait on the JS thread; Node's signal handlers restart syscalls.)
 *  - A Buffer's memory stays alive until the promise settles: the pending transfer holds the
 *    window it reads or writes (it uses it again after the await), and with it the ArrayBuffer.
 *  - `pump` is a JS loop (`runPump`, also the simulated binding's) over the same async
 *    read/write, or pread/pwrite with `srcOffset`/`dstOffset`, with one reused Buffer and
 *    zlib.crc32, and the same results and errors as the addon. koffi cannot start a thread of
 *    its own, so its calls run on the libuv pool; to keep pending pumps from holding pool
 *    threads indefinitely (a pipe nobody writes to), a pump waits for an fd that is not a
 *    regular file or block device with poll(2) slices of PUMP_POLL_SLICE_MS before each call,
 *    letting queued fs work in between. (A blocking write into a pipe whose reader stalls
 *    midway can still hold one pool thread until the reader resumes.)
 */

// ---- Linux constants (asm-generic values; fs.constants has no O_CLOEXEC) ----

/** O_CLOEXEC / EFD_CLOEXEC (asm-generic/fcntl.h; x86, arm, arm64, riscv, loongarch). */
const O_CLOEXEC = 0o2000000;
/** EFD_NONBLOCK is O_NONBLOCK. */
const O_NONBLOCK = fsc.O_NONBLOCK;
const EINTR = 4;
const EAGAIN = 11;
const EIO = 5;
const ENOMSG = 42;
const EINPROGRESS = 115;
/** SOCK_CLOEXEC and SOCK_NONBLOCK are O_CLOEXEC and O_NONBLOCK (asm-generic). */
const SOCK_CLOEXEC = O_CLOEXEC;
const SOCK_NONBLOCK = O_NONBLOCK;
/** send(2) flags (linux/socket.h): no SIGPIPE for a peer that is gone; do not wait. */
const MSG_NOSIGNAL = 0x4000;
const MSG_DONTWAIT = 0x40;
/** A pipe write of at most PIPE_BUF bytes into a pipe that has room never blocks (pipe(7)). */
const PIPE_BUF = 4096;
const POLLIN = 0x1;
const POLLOUT = 0x4;
/** How long one readiness wait of a pump may hold a pool thread (see the file comment). */
const PUMP_POLL_SLICE_MS = 20;

// ---- libc ----

interface CFunction {
  (...args: unknown[]): unknown;
  async(...args: unknown[]): void;
}

interface Libc {
  open: CFunction;
  close: CFunction;
  ioctl: CFunction;
  pread: CFunction;
  pwrite: CFunction;
  read: CFunction;
  write: CFunction;
  pipe2: CFunction;
  eventfd: CFunction;
  poll: CFunction;
  // sockets
  socket: CFunction;
  bind: CFunction;
  listen: CFunction;
  accept4: CFunction;
  connect: CFunction;
  getsockopt: CFunction;
  setsockopt: CFunction;
  shutdown: CFunction;
  getsockname: CFunction;
  getpeername: CFunction;
  send: CFunction;
}

type Koffi = typeof import('koffi');

/** koffi itself, required on first use: importing this module loads no native code. */
let koffi: Koffi;
let libc: Libc | undefined;

/** Load koffi and libc and declare the calls, once per process (koffi types are process-wide). */
function loadLibc(): Libc {
  if (libc) return libc;
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  koffi = require('koffi') as Koffi;
  let lib: ReturnType<Koffi['load']> | undefined;
  let firstError: unknown;
  for (const name of ['libc.so.6', 'libc.so']) {
    try {
      lib = koffi.load(name);
      break;
    } catch (e) {
      firstError ??= e;
    }
  }
  if (!lib) throw firstError;
  // struct pollfd (poll.h): { int fd; short events; short revents; }, anonymous so that a
  // second module instance does not clash with a registered name.
  const pollfd = koffi.struct({ fd: 'int', events: 'short', revents: 'short' });
  const fn = (f: unknown): CFunction => f as CFunction;
  libc = {
    open: fn(lib.func('int open(const char *path, int flags, ...)')),
    close: fn(lib.func('int close(int fd)')),
    ioctl: fn(lib.func('int ioctl(int fd, unsigned long request, ...)')),
    pread: fn(lib.func('intptr_t pread64(int fd, void *buf, size_t count, int64_t offset)')),
    pwrite: fn(lib.func('intptr_t pwrite64(int fd, const void *buf, size_t count, int64_t offset)')),
    read: fn(lib.func('intptr_t read(int fd, void *buf, size_t count)')),
    write: fn(lib.func('intptr_t write(int fd, const void *buf, size_t count)')),
    pipe2: fn(lib.func('int pipe2(void *fds, int flags)')),
    eventfd: fn(lib.func('int eventfd(unsigned int initval, int flags)')),
    poll: fn(lib.func('poll', 'int', [koffi.inout(koffi.pointer(pollfd)), 'unsigned long', 'int'])),
    socket: fn(lib.func('int socket(int domain, int type, int protocol)')),
    bind: fn(lib.func('int bind(int fd, const void *addr, uint32_t len)')),
    listen: fn(lib.func('int listen(int fd, int backlog)')),
    accept4: fn(lib.func('int accept4(int fd, void *addr, void *len, int flags)')),
    connect: fn(lib.func('int connect(int fd, const void *addr, uint32_t len)')),
    getsockopt: fn(lib.func('int getsockopt(int fd, int level, int name, void *val, void *len)')),
    setsockopt: fn(lib.func('int setsockopt(int fd, int level, int name, const void *val, uint32_t len)')),
    shutdown: fn(lib.func('int shutdown(int fd, int how)')),
    getsockname: fn(lib.func('int getsockname(int fd, void *addr, void *len)')),
    getpeername: fn(lib.func('int getpeername(int fd, void *addr, void *len)')),
    send: fn(lib.func('intptr_t send(int fd, const void *buf, size_t count, int flags)')),
  };
  return libc;
}

function callAsync(f: CFunction, ...args: unknown[]): Promise<number> {
  return new Promise((resolve, reject) => {
    f.async(...args, (err: unknown, res: unknown) => (err ? reject(err) : resolve(Number(res))));
  });
}

// ---- errors and argument checks (the same messages and codes as addon/binding.cc) ----

function sysError(errno: number, syscall: string, path?: string): VfioError {
  return VfioError.fromErrno(errno, path !== undefined ? { syscall, path } : { syscall });
}

const MAX_SAFE = Number.MAX_SAFE_INTEGER;

// ---- the binding ----

/** The koffi implementation of the `Binding` contract (see the file comment). */
export class KoffiBinding implements Binding {
  readonly name = 'koffi' as const;
  private readonly c: Libc;

  /** Loads libc on first use; throws when koffi or libc cannot be loaded. */
  constructor() {
    this.c = loadLibc();
  }

  open(path: string, flags: number, mode?: number): number {
    if (typeof path !== 'string') throw typeError('open: "path" must be a string');
    if (path.includes('\0')) throw typeError('open: "path" must not contain NUL bytes');
    const f = intArg('open', 'flags', flags, 0, INT_MAX);
    const m = optIntArg('open', 'mode', mode, 0, 0o7777, 0o666);
    for (;;) {
      const fd = this.c.open(path, f | O_CLOEXEC, 'uint32_t', m) as number;
      if (fd >= 0) return fd;
      const e = koffi.errno();
      if (e !== EINTR) throw sysError(e, 'open', path);
    }
  }

  close(fd: number): void {
    fdArg('close', fd);
    if ((this.c.close(fd) as number) === 0) return;
    const e = koffi.errno();
    // Linux releases the fd before close() can be interrupted: EINTR means closed.
    if (e !== EINTR) throw sysError(e, 'close');
  }

  /**
   * Runs the ioctl on the JS thread: koffi cannot bring errno back from its thread pool, and a
   * failed ioctl (a migration state SET above all) must not be repeated to learn it. The koffi
   * binding is the fallback for when the addon cannot load; the addon runs these off-thread.
   */
  async ioctlAsync(fd: number, request: number, arg?: Buffer | number): Promise<number> {
    return this.ioctl(fd, request, arg);
  }

  bufferAddress(buf: Buffer): bigint {
    if (!Buffer.isBuffer(buf)) throw typeError('bufferAddress: "buffer" must be a Buffer');
    return BigInt(koffi.address(buf) as number | bigint);
  }

  ioctl(fd: number, request: number, arg?: Buffer | number): number {
    fdArg('ioctl', fd);
    intArg('ioctl', 'request', request, 0, 0xffffffff);
    let r: number;
    if (arg === undefined) {
      r = this.c.ioctl(fd, request, 'unsigned long', 0) as number;
    } else if (ArrayBuffer.isView(arg)) {
      if (arg.byteLength === 0) throw rangeError('ioctl: "arg" Buffer must not be empty');
      r = this.c.ioctl(fd, request, 'void *', arg) as number;
    } else if (typeof arg === 'number') {
      intArg('ioctl', 'arg', arg, -MAX_SAFE, MAX_SAFE);
      r = this.c.ioctl(fd, request, arg < 0 ? 'long' : 'unsigned long', arg) as number;
    } else {
      throw typeError('ioctl: "arg" must be a Buffer, a number or undefined');
    }
    if (r < 0) throw sysError(koffi.errno(), 'ioctl');
    return r;
  }

  pread(fd: number, buf: Buffer, offset: number, length?: number): number {
    return this.positional('pread', this.c.pread, fd, buf, offset, length);
  }

  pwrite(fd: number, buf: Buffer, offset: number, length?: number): number {
    return this.positional('pwrite', this.c.pwrite, fd, buf, offset, length);
  }

  private positional(fn: string, f: CFunction, fd: number, buf: Buffer, position: number, length?: number): number {
    fdArg(fn, fd);
    const b = bufferArg(fn, buf);
    const pos = intArg(fn, 'position', position, 0, MAX_SAFE);
    const len = optIntArg(fn, 'length', length, 0, b.length, b.length);
    for (;;) {
      const n = Number(f(fd, b, len, pos));
      if (n >= 0) return n;
      const e = koffi.errno();
      if (e !== EINTR) throw sysError(e, fn);
    }
  }

  pipe(flags?: number): [number, number] {
    const f = optIntArg('pipe', 'flags', flags, 0, INT_MAX, 0);
    const fds = new Int32Array(2);
    if ((this.c.pipe2(fds, f | O_CLOEXEC) as number) !== 0) throw sysError(koffi.errno(), 'pipe2');
    return [fds[0], fds[1]];
  }

  eventfd(initval: number, flags?: number): number {
    const v = intArg('eventfd', 'initval', initval, 0, 0xffffffff);
    const f = optIntArg('eventfd', 'flags', flags, 0, INT_MAX, 0);
    const fd = this.c.eventfd(v, f | O_CLOEXEC | O_NONBLOCK) as number;
    if (fd < 0) throw sysError(koffi.errno(), 'eventfd');
    return fd;
  }

  eventfdRead(fd: number): bigint {
    fdArg('eventfdRead', fd);
    const counter = new BigUint64Array(1); // host byte order, as the kernel writes it
    for (;;) {
      const n = Number(this.c.read(fd, counter, 8));
      if (n === 8) return counter[0];
      if (n >= 0) throw sysError(EIO /* an eventfd read is 8 bytes or an error */, 'read');
      const e = koffi.errno();
      if (e === EAGAIN) return 0n;
      if (e !== EINTR) throw sysError(e, 'read');
    }
  }

  eventfdWrite(fd: number, value: bigint): void {
    fdArg('eventfdWrite', fd);
    if (typeof value !== 'bigint') throw typeError('eventfdWrite: "value" must be a bigint');
    if (value < 0n || value > 0xffff_ffff_ffff_ffffn) {
      throw rangeError('eventfdWrite: "value" is out of range [0, 2^64 - 1]');
    }
    const counter = BigUint64Array.of(value);
    for (;;) {
      const n = Number(this.c.write(fd, counter, 8));
      if (n === 8) return;
      if (n >= 0) throw sysError(EIO, 'write');
      const e = koffi.errno();
      if (e !== EINTR) throw sysError(e, 'write');
    }
  }

  read(fd: number, buf: Buffer, offset?: number, length?: number): Promise<number> {
    fdArg('read', fd);
    const view = windowArg('read', bufferArg('read', buf), offset, length);
    return this.transfer('read', fd, view);
  }

  write(fd: number, buf: Buffer, offset?: number, length?: number): Promise<number> {
    fdArg('write', fd);
    const view = windowArg('write', bufferArg('write', buf), offset, length);
    return this.transfer('write', fd, view);
  }

  /**
   * One read(2)/write(2) of `view` off the JS thread, or pread(2)/pwrite(2) at `position` when
   * it is given; see the file comment for errno.
   */
  private async transfer(kind: 'read' | 'write', fd: number, view: Buffer, position?: number): Promise<number> {
    const positional = position !== undefined;
    // A socket is written with send(2) and MSG_NOSIGNAL: a peer that is gone is EPIPE, never a
    // SIGPIPE (the contract). A pipe's write(2) cannot avoid it: there, the process relies on
    // Node's ignoring SIGPIPE (the addon blocks it around its writes instead).
    const send = kind === 'write' && !positional && isSocket(fd);
    const f = kind === 'read' ? (positional ? this.c.pread : this.c.read) : positional ? this.c.pwrite : this.c.write;
    const call = (len: number): Promise<number> | number =>
      send ? callAsync(this.c.send, fd, view, len, MSG_NOSIGNAL) : positional ? callAsync(f, fd, view, len, position) : callAsync(f, fd, view, len);
    for (;;) {
      const n = await call(view.length);
      if (n >= 0) return n;
      // Learn errno by re-issuing the call here (it does not wait: see the file comment).
      const len = kind === 'write' ? Math.min(view.length, PIPE_BUF) : view.length;
      const again = Number(
        send ? this.c.send(fd, view, len, MSG_NOSIGNAL | MSG_DONTWAIT) : positional ? f(fd, view, len, position) : f(fd, view, len),
      );
      if (again >= 0) return again;
      const e = koffi.errno();
      if (e === EAGAIN) {
        await this.pollAsync(fd, kind === 'read' ? POLLIN : POLLOUT, -1);
      } else if (e !== EINTR) {
        throw sysError(e, positional ? `p${kind}` : kind);
      }
    }
  }

  /**
   * Wait until `fd` is ready for `events` (or reports an error or hangup, which the next call
   * tells) in poll(2) slices, so that no pool thread is held for long.
   */
  private async waitReady(fd: number, events: number): Promise<void> {
    while ((await this.pollAsync(fd, events, PUMP_POLL_SLICE_MS)) === 0);
  }

  poll(fd: number, events: number, timeoutMs: number): Promise<number> {
    fdArg('poll', fd);
    intArg('poll', 'events', events, 0, 0x7fff);
    const t = intArg('poll', 'timeoutMs', timeoutMs, -MAX_SAFE, MAX_SAFE);
    return this.pollAsync(fd, events, t < 0 ? -1 : Math.min(t, INT_MAX));
  }

  /** poll(2) one fd off the JS thread; EINTR retried with the time that remains. */
  private async pollAsync(fd: number, events: number, timeoutMs: number): Promise<number> {
    const deadline = timeoutMs < 0 ? -1 : performance.now() + timeoutMs;
    let wait = timeoutMs;
    for (;;) {
      const pfd = { fd, events, revents: 0 };
      const r = await callAsync(this.c.poll, pfd, 1, wait);
      if (r > 0) return pfd.revents;
      if (r === 0) return 0;
      // errno stayed on the pool thread: ask again without waiting, here.
      const now = { fd, events, revents: 0 };
      const r2 = this.c.poll(now, 1, 0) as number;
      if (r2 > 0) return now.revents;
      if (r2 < 0) {
        const e = koffi.errno();
        if (e !== EINTR) throw sysError(e, 'poll');
      }
      if (deadline >= 0) {
        wait = Math.max(0, Math.ceil(deadline - performance.now()));
        if (wait === 0) return 0;
      }
    }
  }

  pump(srcFd: number, dstFd: number, buf: Buffer, opts?: PumpOptions | number): Promise<PumpResult> {
    const a = pumpArgs('pump', srcFd, dstFd, buf, opts);
    const mayWait = (fd: number) => !isFileOrBlockDevice(fd);
    const srcWaits = mayWait(srcFd);
    const dstWaits = mayWait(dstFd);
    return runPump(
      {
        read: async (fd, view, position) => {
          if (srcWaits) await this.waitReady(fd, POLLIN);
          return this.transfer('read', fd, view, position);
        },
        write: async (fd, view, position) => {
          if (dstWaits) await this.waitReady(fd, POLLOUT);
          return this.transfer('write', fd, view, position);
        },
      },
      srcFd,
      dstFd,
      a.buf,
      a.options,
    );
  }

  // ---- sockets: synchronous calls on the JS thread (none of them waits: the sockets are non-blocking) ----

  socket(domain: number, type: number, protocol?: number): number {
    const d = intArg('socket', 'domain', domain, 0, INT_MAX);
    const t = intArg('socket', 'type', type, 0, INT_MAX);
    const p = optIntArg('socket', 'protocol', protocol, 0, INT_MAX, 0);
    const fd = this.c.socket(d, t | SOCK_CLOEXEC | SOCK_NONBLOCK, p) as number;
    if (fd < 0) throw sysError(koffi.errno(), 'socket');
    return fd;
  }

  bind(fd: number, addr: Buffer): void {
    fdArg('bind', fd);
    const a = sockaddrArg('bind', addr);
    if ((this.c.bind(fd, a, a.length) as number) !== 0) throw sysError(koffi.errno(), 'bind');
  }

  listen(fd: number, backlog: number): void {
    fdArg('listen', fd);
    const n = intArg('listen', 'backlog', backlog, 0, INT_MAX);
    if ((this.c.listen(fd, n) as number) !== 0) throw sysError(koffi.errno(), 'listen');
  }

  accept(fd: number): number {
    fdArg('accept', fd);
    for (;;) {
      const conn = this.c.accept4(fd, null, null, SOCK_CLOEXEC | SOCK_NONBLOCK) as number;
      if (conn >= 0) return conn;
      const e = koffi.errno();
      if (e !== EINTR) throw sysError(e, 'accept4');
    }
  }

  connect(fd: number, addr: Buffer): boolean {
    fdArg('connect', fd);
    const a = sockaddrArg('connect', addr);
    if ((this.c.connect(fd, a, a.length) as number) === 0) return true;
    const e = koffi.errno();
    // EINTR: the connection goes on in the background (POSIX), as with EINPROGRESS.
    if (e === EINPROGRESS || e === EINTR) return false;
    throw sysError(e, 'connect');
  }

  getsockopt(fd: number, level: number, name: number, buf?: Buffer): number {
    fdArg('getsockopt', fd);
    const lv = intArg('getsockopt', 'level', level, 0, INT_MAX);
    const nm = intArg('getsockopt', 'name', name, 0, INT_MAX);
    const val = buf === undefined ? Buffer.alloc(4) : bufferArg('getsockopt', buf);
    if (val.length === 0) throw rangeError('getsockopt: "buffer" must not be empty');
    const len = Uint32Array.of(val.length);
    if ((this.c.getsockopt(fd, lv, nm, val, len) as number) !== 0) throw sysError(koffi.errno(), 'getsockopt');
    return buf === undefined ? val.readInt32LE(0) : len[0];
  }

  setsockopt(fd: number, level: number, name: number, value: number | Buffer): void {
    fdArg('setsockopt', fd);
    const lv = intArg('setsockopt', 'level', level, 0, INT_MAX);
    const nm = intArg('setsockopt', 'name', name, 0, INT_MAX);
    let val: Buffer;
    if (typeof value === 'number') {
      val = Buffer.alloc(4);
      val.writeInt32LE(intArg('setsockopt', 'value', value, -0x80000000, INT_MAX), 0);
    } else if (Buffer.isBuffer(value)) {
      if (value.length === 0) throw rangeError('setsockopt: "value" Buffer must not be empty');
      val = value;
    } else {
      throw typeError('setsockopt: "value" must be a number or a Buffer');
    }
    if ((this.c.setsockopt(fd, lv, nm, val, val.length) as number) !== 0) throw sysError(koffi.errno(), 'setsockopt');
  }

  shutdown(fd: number, how: number): void {
    fdArg('shutdown', fd);
    const h = intArg('shutdown', 'how', how, 0, 2);
    if ((this.c.shutdown(fd, h) as number) !== 0) throw sysError(koffi.errno(), 'shutdown');
  }

  getsockname(fd: number): Buffer {
    return this.sockName('getsockname', this.c.getsockname, fd);
  }

  getpeername(fd: number): Buffer {
    return this.sockName('getpeername', this.c.getpeername, fd);
  }

  private sockName(fn: string, f: CFunction, fd: number): Buffer {
    fdArg(fn, fd);
    const addr = Buffer.alloc(SOCKADDR_MAX);
    const len = Uint32Array.of(SOCKADDR_MAX);
    if ((f(fd, addr, len) as number) !== 0) throw sysError(koffi.errno(), fn);
    return Buffer.from(addr.subarray(0, Math.min(len[0], SOCKADDR_MAX)));
  }
}

/** True for a socket (false for a bad fd: the syscall reports it). */
function isSocket(fd: number): boolean {
  try {
    return fstatSync(fd).isSocket();
  } catch {
    return false;
  }
}

/** True for a regular file or a block device: their reads and writes never wait indefinitely. */
function isFileOrBlockDevice(fd: number): boolean {
  try {
    const st = fstatSync(fd);
    return st.isFile() || st.isBlockDevice();
  } catch {
    return false; // a bad fd: the syscall reports it
  }
}

// ---- the JS pump (koffi, and the simulated binding for virtual fds) ----

/** `PumpOptions` after the checks: -1 where an option is absent. */
export interface PumpArgs {
  buf: Buffer;
  options: {
    limit: number;
    srcOffset: number;
    dstOffset: number;
    expectCrc: number;
    verify: boolean;
    precopy: boolean;
    /** `frame.mode`, 'none' without a frame. */
    frame: 'none' | 'write' | 'read';
    /** write: payload bytes per chunk. */
    chunk: number;
    /** read: the largest payload accepted (with buf.length). */
    maxChunk: number;
    /** read: chunks to move. */
    chunks: number;
    /** read: read the end chunk after them. */
    final: boolean;
    /** The chunk-table and (write) skeleton CRC-32s to continue. */
    tableCrc: number;
    skeletonCrc: number;
  };
}

/**
 * The argument checks of `Binding.pump`, in the addon's order and with its messages
 * (addon/binding.cc PumpOptionsArg): fds, a non-empty Buffer, then the options, which may be
 * undefined, an object, or a number (the older form: the limit, -1 meaning none).
 */
export function pumpArgs(fn: string, srcFd: unknown, dstFd: unknown, buf: unknown, opts: unknown): PumpArgs {
  fdArg(fn, srcFd, 'srcFd');
  fdArg(fn, dstFd, 'dstFd');
  const b = bufferArg(fn, buf);
  if (b.length === 0) throw rangeError(`${fn}: "buffer" must not be empty`);
  const o: PumpArgs['options'] = {
    limit: -1, srcOffset: -1, dstOffset: -1, expectCrc: 0, verify: false, precopy: false,
    frame: 'none', chunk: 0, maxChunk: 0xffffffff, chunks: 0, final: true, tableCrc: 0, skeletonCrc: 0,
  };
  if (opts === undefined) return { buf: b, options: o };
  if (typeof opts === 'number') {
    o.limit = intArg(fn, 'limit', opts, -1, MAX_SAFE);
    return { buf: b, options: o };
  }
  if (typeof opts !== 'object' || opts === null) throw typeError(`${fn}: "options" must be an object`);
  const { limit, srcOffset, dstOffset, expectCrc, precopy, frame, writeback } = opts as Record<string, unknown>;
  if (limit !== undefined) o.limit = intArg(fn, 'limit', limit, 0, MAX_SAFE);
  if (srcOffset !== undefined) o.srcOffset = intArg(fn, 'srcOffset', srcOffset, 0, MAX_SAFE);
  if (dstOffset !== undefined) o.dstOffset = intArg(fn, 'dstOffset', dstOffset, 0, MAX_SAFE);
  if (expectCrc !== undefined) {
    o.expectCrc = intArg(fn, 'expectCrc', expectCrc, 0, 0xffffffff);
    o.verify = true;
  }
  if (precopy !== undefined) {
    if (typeof precopy !== 'boolean') throw typeError(`${fn}: "precopy" must be a boolean`);
    o.precopy = precopy;
  }
  // A hint this loop does not act on (no sync_file_range here); checked like the addon does.
  if (writeback !== undefined) intArg(fn, 'writeback', writeback, 0, MAX_SAFE);
  if (o.verify && (o.limit < 0 || o.limit > b.length)) {
    throw rangeError(`${fn}: "expectCrc" needs "limit", at most the buffer length (${b.length})`);
  }
  if (frame !== undefined) frameArg(fn, frame, b.length, o);
  return { buf: b, options: o };
}

/** `options.frame`, after the other options: the addon's FrameArg (addon/binding.cc), same order and messages. */
function frameArg(fn: string, v: unknown, bufLength: number, o: PumpArgs['options']): void {
  if (typeof v !== 'object' || v === null) throw typeError(`${fn}: "frame" must be an object`);
  const f = v as Record<string, unknown>;
  const mode = typeof f.mode === 'string' ? f.mode : '';
  const crc = (key: string): number => (f[key] === undefined ? 0 : intArg(fn, `frame.${key}`, f[key], 0, 0xffffffff));
  if (mode === 'write') {
    o.frame = 'write';
    o.chunk = intArg(fn, 'frame.chunk', f.chunk, 1, 2 ** 30);
    o.tableCrc = crc('tableCrc');
    o.skeletonCrc = crc('skeletonCrc');
    if (o.verify) throw rangeError(`${fn}: "expectCrc" cannot be used with "frame"`);
    if (o.chunk + FRAME_HEADER > bufLength) {
      throw rangeError(`${fn}: "frame.chunk" needs a buffer of at least frame.chunk + 8 bytes (it has ${bufLength})`);
    }
  } else if (mode === 'read') {
    o.frame = 'read';
    o.chunks = intArg(fn, 'frame.chunks', f.chunks, 0, MAX_SAFE);
    if (f.maxChunk !== undefined) o.maxChunk = intArg(fn, 'frame.maxChunk', f.maxChunk, 1, 0xffffffff);
    o.tableCrc = crc('tableCrc');
    if (f.final !== undefined) {
      if (typeof f.final !== 'boolean') throw typeError(`${fn}: "frame.final" must be a boolean`);
      o.final = f.final;
    }
    if (o.verify || o.limit >= 0 || o.precopy) {
      throw rangeError(`${fn}: "limit", "expectCrc" and "precopy" cannot be used with frame mode 'read'`);
    }
  } else {
    throw typeError(`${fn}: "frame.mode" must be 'read' or 'write'`);
  }
}

/** Chunk framing (PumpFrame, docs/snapshot-format.md): an 8-byte chunk header, a 16-byte end chunk. */
const FRAME_HEADER = 8;
const FRAME_END = 16;

/**
 * The calls a JS pump is made of. Each does one read(2)/write(2) of `view` (pread/pwrite at
 * `position` when given) with EINTR and EAGAIN handled, resolves with the byte count, and
 * rejects with the VfioError of the syscall ('read', 'pread', 'write', 'pwrite').
 */
export interface PumpIo {
  read(fd: number, view: Buffer, position: number | undefined): Promise<number>;
  write(fd: number, view: Buffer, position: number | undefined): Promise<number>;
}

const hex = (v: number): string => `0x${v.toString(16).padStart(8, '0')}`;

/**
 * The pump of the `Binding` contract as a JS loop over `io`, with `buf` reused for every chunk:
 * the same results, ends and errors as addon/sys.cc vfio_pump, framing included. `a` comes
 * from `pumpArgs`.
 */
export async function runPump(io: PumpIo, src: number, dst: number, buf: Buffer, a: PumpArgs['options']): Promise<PumpResult> {
  let srcPos = a.srcOffset >= 0 ? a.srcOffset : undefined;
  let dstPos = a.dstOffset >= 0 ? a.dstOffset : undefined;
  /** Bytes written to the destination. */
  let written = 0;
  /** Bytes read from the source. */
  let read = 0;
  let crc = 0;
  // Framed: chunks done, the payload bytes of those chunks (write: what bytesDone reports), the
  // header CRC-32s, and (read) where the chunk being handled starts.
  let chunks = 0;
  let payload = 0;
  let tableCrc = a.tableCrc;
  let skeletonCrc = a.skeletonCrc;
  let chunkOffset = -1;

  const fail = (e: unknown): never => {
    if (e instanceof VfioError) {
      (e as PumpError).bytesDone = a.frame === 'write' ? payload : written;
      if (a.frame === 'read' && chunkOffset >= 0) (e as PumpError).chunkOffset = chunkOffset;
    }
    throw e;
  };
  /** One read: the byte count, or 0 for "no data" (a read of 0, or ENOMSG with precopy). */
  const readSome = async (view: Buffer): Promise<number> => {
    let n: number;
    try {
      n = await io.read(src, view, srcPos);
    } catch (e) {
      if (a.precopy && e instanceof VfioError && e.errno === ENOMSG) return 0;
      return fail(e);
    }
    if (srcPos !== undefined) srcPos += n;
    return n;
  };
  const writeAll = async (chunk: Buffer): Promise<void> => {
    for (let done = 0; done < chunk.length; ) {
      let w: number;
      try {
        w = await io.write(dst, chunk.subarray(done), dstPos);
      } catch (e) {
        return fail(e);
      }
      // No progress and no error: give up rather than spin.
      if (w === 0) return fail(VfioError.fromErrno(EIO, { syscall: dstPos !== undefined ? 'pwrite' : 'write' }));
      done += w;
      written += w;
      if (dstPos !== undefined) dstPos += w;
    }
  };
  const done = (end: PumpEnd): PumpResult => ({ bytes: written, crc32: crc, end });
  const formatError = (code: VfioErrorCode, message: string, extra: object = {}): VfioError =>
    Object.assign(new VfioError(message, { code, kind: 'format' }), extra);

  if (a.verify) {
    // Buffer the whole chunk, check it, and only then let it reach the destination.
    while (read < a.limit) {
      const n = await readSome(buf.subarray(read, a.limit));
      if (n === 0) {
        return fail(formatError('EVFIO_SNAPSHOT_TRUNCATED', `pump: the source ended after ${read} of ${a.limit} bytes; nothing was written`));
      }
      crc = crc32(buf.subarray(read, read + n), crc);
      read += n;
    }
    if (crc !== a.expectCrc) {
      return fail(
        formatError('EVFIO_CHECKSUM', `pump: CRC-32 mismatch over ${a.limit} bytes: expected ${hex(a.expectCrc)}, got ${hex(crc)}; nothing was written`),
      );
    }
    await writeAll(buf.subarray(0, a.limit));
    return done('limit');
  }

  if (a.frame === 'write') {
    // Each chunk is gathered at buf[8..] and goes out with its header in front, in one write.
    // (zlib.crc32 has no crc32_combine: the running crc32 is a second pass over each piece.)
    for (;;) {
      let want = a.chunk;
      if (a.limit >= 0) {
        if (read === a.limit) return { ...done('limit'), bytes: payload, chunks, written, tableCrc, skeletonCrc };
        want = Math.min(want, a.limit - read);
      }
      let got = 0;
      let atEnd = false;
      let chunkCrc = 0;
      while (got < want) {
        const n = await readSome(buf.subarray(FRAME_HEADER + got, FRAME_HEADER + want));
        if (n === 0) {
          atEnd = true;
          break;
        }
        const piece = buf.subarray(FRAME_HEADER + got, FRAME_HEADER + got + n);
        chunkCrc = crc32(piece, chunkCrc);
        crc = crc32(piece, crc);
        got += n;
        read += n;
      }
      if (got > 0) {
        // Never an empty chunk: a length of 0 marks the end chunk.
        buf.writeUInt32LE(got, 0);
        buf.writeUInt32LE(chunkCrc, 4);
        await writeAll(buf.subarray(0, FRAME_HEADER + got));
        const header = buf.subarray(0, FRAME_HEADER);
        tableCrc = crc32(header, tableCrc);
        skeletonCrc = crc32(header, skeletonCrc);
        payload += got;
        chunks++;
      }
      if (atEnd) return { ...done(a.precopy ? 'for-now' : 'eof'), bytes: payload, chunks, written, tableCrc, skeletonCrc };
    }
  }

  if (a.frame === 'read') {
    // Each payload is read whole into buf and checked before any of it reaches the destination.
    const cap = Math.min(a.maxChunk, buf.length);
    const base = a.srcOffset >= 0 ? a.srcOffset : 0;
    const head = Buffer.alloc(FRAME_END);
    const atEnd = (): boolean => chunks === a.chunks;
    const readExact = async (view: Buffer): Promise<void> => {
      let got = 0;
      while (got < view.length) {
        const n = await readSome(view.subarray(got));
        if (n === 0) break;
        got += n;
      }
      read += got;
      if (got < view.length) {
        fail(formatError('EVFIO_SNAPSHOT_TRUNCATED', `pump: the source ends inside the ${atEnd() ? 'end chunk' : 'chunk'} at offset ${chunkOffset}`));
      }
    };
    for (let i = 0; i < a.chunks; i++) {
      chunkOffset = base + read;
      const header = head.subarray(0, FRAME_HEADER);
      await readExact(header);
      const len = head.readUInt32LE(0);
      const want = head.readUInt32LE(4);
      if (len === 0 || len > cap) {
        fail(formatError('EVFIO_BAD_SNAPSHOT', `pump: the chunk at offset ${chunkOffset} claims ${len} bytes, outside [1, ${cap}]`, { chunkLength: len }));
      }
      const body = buf.subarray(0, len);
      await readExact(body);
      const got = crc32(body);
      if (got !== want) {
        fail(
          formatError(
            'EVFIO_SNAPSHOT_CHECKSUM',
            `pump: CRC-32 mismatch in the chunk at offset ${chunkOffset} (${len} bytes): expected ${hex(want)}, got ${hex(got)}; nothing of it was written`,
          ),
        );
      }
      await writeAll(body);
      crc = crc32(body, crc);
      chunks++;
      tableCrc = crc32(header, tableCrc);
    }
    const result = { ...done(a.final ? 'eof' : 'limit'), chunks, tableCrc };
    if (!a.final) return result;
    chunkOffset = base + read;
    await readExact(head);
    const marker = head.readUInt32LE(0);
    if (marker !== 0) {
      fail(
        formatError('EVFIO_BAD_SNAPSHOT', `pump: no end chunk at offset ${chunkOffset} after ${chunks} chunks (a chunk of ${marker} bytes starts there)`, {
          chunkLength: marker,
        }),
      );
    }
    return { ...result, endTableCrc: head.readUInt32LE(4), endTotal: Number(head.readBigUInt64LE(8)) };
  }

  for (;;) {
    let want = buf.length;
    if (a.limit >= 0) {
      if (read === a.limit) return done('limit');
      want = Math.min(want, a.limit - read);
    }
    const n = await readSome(buf.subarray(0, want));
    if (n === 0) return done(a.precopy ? 'for-now' : 'eof');
    const chunk = buf.subarray(0, n);
    crc = crc32(chunk, crc); // while the chunk is fresh
    read += n;
    await writeAll(chunk);
  }
}

import { constants as fsc, fstatSync } from 'node:fs';
import { VfioError } from '../../base/errors';
import {
  INT_MAX, SOCKADDR_MAX, buffer as bufferArg, fd as fdArg, int as intArg, optInt as optIntArg, rangeError, sockaddr as sockaddrArg, typeError,
  window as windowArg,
} from './args';
import type { Binding } from './types';

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
 *  - The data pump over koffi's fds is the JS pump (src/kernel/pump/js.ts) on these calls.
 */

// ---- Linux constants (asm-generic values; fs.constants has no O_CLOEXEC) ----

/** O_CLOEXEC / EFD_CLOEXEC (asm-generic/fcntl.h; x86, arm, arm64, riscv, loongarch). */
const O_CLOEXEC = 0o2000000;
/** EFD_NONBLOCK is O_NONBLOCK. */
const O_NONBLOCK = fsc.O_NONBLOCK;
const EINTR = 4;
const EAGAIN = 11;
const EIO = 5;
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
  recv: CFunction;
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
    recv: fn(lib.func('intptr_t recv(int fd, void *buf, size_t count, int flags)')),
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

  recvNow(fd: number, buf: Buffer, offset?: number, length?: number): number {
    fdArg('recvNow', fd);
    return this.socketNow('recv', this.c.recv, fd, windowArg('recvNow', bufferArg('recvNow', buf), offset, length), MSG_DONTWAIT);
  }

  sendNow(fd: number, buf: Buffer, offset?: number, length?: number): number {
    fdArg('sendNow', fd);
    return this.socketNow('send', this.c.send, fd, windowArg('sendNow', bufferArg('sendNow', buf), offset, length), MSG_DONTWAIT | MSG_NOSIGNAL);
  }

  /** recvNow / sendNow: one call that does not sleep, EINTR retried; -1 for EAGAIN. */
  private socketNow(syscall: string, f: CFunction, fd: number, view: Buffer, flags: number): number {
    for (;;) {
      const n = Number(f(fd, view, view.length, flags));
      if (n >= 0) return n;
      const e = koffi.errno();
      if (e === EAGAIN) return -1;
      if (e !== EINTR) throw sysError(e, syscall);
    }
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

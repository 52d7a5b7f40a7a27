/**
 * `SimBinding`: the `Binding` (src/binding/types.ts) that serves simulated vfio-pci devices at the
 * syscall level, so that everything above the binding — ioctl codecs, the migration core, the CLI
 * — runs unchanged on it. The idea is rust-vmm vfio-ioctls' swappable syscall layer and
 * serialport's binding-mock: a fake with the real contract plus test hooks.
 *
 * Virtual fds are numbers >= 2^24 (`VIRTUAL_FD_BASE`), beyond any real fd (the kernel's nr_open
 * ceiling is 2^20 by default), handed out in increasing order and never reused by one binding.
 * Any other fd goes to the inner real binding, so a snapshot file opened for real and a sim
 * data_fd mix freely. Kinds of virtual fd:
 *  - device fd: `open('sim...')`; see src/binding/sim/device.ts for what it answers;
 *  - data_fd: returned by a MIG_DEVICE_STATE SET; see src/binding/sim/session.ts;
 *  - eventfd and pipe ends: from `eventfd()` / `pipe()` when there is no inner binding (or
 *    `virtualFds` is set); with an inner binding these are real kernel objects, and the device
 *    signals a real eventfd through the inner binding's `eventfdWrite`.
 *
 * The data pump (src/kernel/pump) moves bytes between any mix of virtual and real fds with this
 * binding's read/write (the JS pump), or, when all of them are real, the inner binding's native
 * pump (`kernelBinding`).
 *
 * Device specs (src/binding/sim/spec.ts): `sim`, `sim:SIZE`, `sim:SIZE:seed=N:...`, `...#NAME`.
 * Each open of a spec makes a fresh device, unless the spec has a NAME already in this binding's
 * registry: then it opens that device again (EEXIST if the spec's explicit options contradict
 * it). `createDevice(name, options)` registers a device with any options before it is opened.
 *
 * Errors are `VfioError`s with `syscall`, `errno`, `code` and `device` (the spec), like the other
 * bindings; `op` is left to callers, who know which feature they asked for.
 */
import { VfioError } from '../base/errors';
import { logger } from '../base/log';
import { POLLERR, POLLHUP, POLLIN, POLLOUT, type Binding } from '../kernel/binding/types';
import { VFIO_MIG_GET_PRECOPY_INFO } from '../kernel/uapi/vfio';
import { SimDevice, type DeviceHost, type SimDeviceOptions } from './device';
import { E, Errno, raise, toVfioError } from './errno';
import * as A from '../kernel/binding/args';
import { EFD_SEMAPHORE, VirtualEventfd } from './eventfd';
import { VirtualPipe } from './pipe';
import type { ResumeSession, SaveSession, Session } from './session';
import { isSimPath, parseSimSpec, type ParsedSimSpec } from './spec';
import { UserMemory } from './memory';


const log = logger('sim');

/** First virtual fd number. */
export const VIRTUAL_FD_BASE = 1 << 24;
/** poll(2) revents for an fd that is not open. */
export const POLLNVAL = 0x20;
/** DEFAULT_POLLMASK of the kernel (EPOLLIN | EPOLLOUT | EPOLLRDNORM | EPOLLWRNORM) for files without poll. */
const DEFAULT_POLLMASK = 0x145;

export interface SimBindingOptions {
  /** Defaults for every device created from a spec (the spec's own options win). */
  defaults?: SimDeviceOptions;
  /** Make `eventfd()` and `pipe()` virtual even when there is an inner binding. */
  virtualFds?: boolean;
}

type VFile =
  | { kind: 'device'; device: SimDevice; pos: number }
  | { kind: 'save'; device: SimDevice; session: SaveSession }
  | { kind: 'resume'; device: SimDevice; session: ResumeSession }
  | { kind: 'eventfd'; efd: VirtualEventfd }
  | { kind: 'pipe-r'; pipe: VirtualPipe }
  | { kind: 'pipe-w'; pipe: VirtualPipe };

/** The device label of a file, for errors. */
function deviceOf(f: VFile): string | undefined {
  return 'device' in f ? f.device.label : undefined;
}

export class SimBinding implements Binding {
  readonly name = 'sim' as const;
  private readonly files = new Map<number, VFile>();
  private nextFd = VIRTUAL_FD_BASE;
  private serial = 0;
  private readonly named = new Map<string, SimDevice>();
  private readonly latestBySpec = new Map<string, SimDevice>();
  private readonly all: SimDevice[] = [];
  private readonly waiters = new Set<() => void>();
  private readonly host: DeviceHost;
  /** Process memory the simulated kernel may dereference (src/sim/memory.ts). */
  private readonly memory: UserMemory;

  /**
   * @param inner the real binding for every fd that is not virtual (optional: without it,
   *   non-sim paths fail with ENOENT and other fds with EBADF)
   */
  constructor(
    readonly inner?: Binding,
    readonly options: SimBindingOptions = {},
  ) {
    this.memory = new UserMemory(inner ? (buf) => inner.bufferAddress(buf) : undefined);
    this.host = {
      allocFd: (device, session) => this.alloc(session.kind === 'save' ? { kind: 'save', device, session } : { kind: 'resume', device, session }),
      wake: () => this.wake(),
      checkEventfd: (fd) => this.checkEventfd(fd),
      signal: (fd) => this.signalEventfd(fd),
      userMemory: (addr, length) => this.memory.view(addr, length) ?? raise(E.EFAULT),
    };
  }

  // ------------------------------------------------------------------ registry and hooks

  /** True when `fd` is in the virtual range (whether or not it is open). */
  static isVirtualFd(fd: number): boolean {
    return Number.isInteger(fd) && fd >= VIRTUAL_FD_BASE;
  }

  /**
   * Register a named device with explicit options, before anything opens it; `open('sim#NAME')`
   * (or any spec with that name) then reaches it. Throws when the name is taken.
   */
  createDevice(name: string, options: SimDeviceOptions = {}): SimDevice {
    if (!/^[A-Za-z0-9_.-]+$/.test(name)) throw new VfioError(`bad sim device name ${JSON.stringify(name)}`, { code: 'EVFIO_USAGE', kind: 'usage' });
    if (this.named.has(name)) throw new VfioError(`sim device ${name} already exists`, { code: 'EEXIST', kind: 'usage', device: `sim#${name}` });
    return this.makeDevice(`sim#${name}`, { ...this.options.defaults, ...options, name });
  }

  /**
   * The model behind a spec, name, or fd: a spec with a NAME or a bare name → that device; a spec
   * without a name → the latest device opened with exactly that spec; a number → the device that
   * owns that virtual fd (device fd or data_fd). Throws `EVFIO_NO_DEVICE` when there is none.
   */
  device(specOrNameOrFd: string | number): SimDevice {
    const d = this.findDevice(specOrNameOrFd);
    if (!d) throw new VfioError(`no sim device ${String(specOrNameOrFd)}`, { code: 'EVFIO_NO_DEVICE', kind: 'usage' });
    return d;
  }

  /** Every device this binding has created, oldest first. */
  devices(): readonly SimDevice[] {
    return this.all;
  }

  /** Virtual fds open now (devices, data_fds, eventfds), for leak tests. */
  openFdCount(): number {
    return this.files.size;
  }

  /** The open virtual fds with their kind, for leak reports. */
  openFds(): Array<{ fd: number; kind: VFile['kind']; device?: string }> {
    return [...this.files].map(([fd, f]) => ({ fd, kind: f.kind, device: deviceOf(f) }));
  }

  // ------------------------------------------------------------------ Binding

  open(path: string, flags: number, mode?: number): number {
    if (typeof path !== 'string') throw A.typeError('open: "path" must be a string');
    if (!isSimPath(path)) {
      if (this.inner) return this.inner.open(path, flags, mode);
      throw VfioError.fromErrno(E.ENOENT, { syscall: 'open', path });
    }
    A.int('open', 'flags', flags, 0, A.INT_MAX);
    A.optInt('open', 'mode', mode, 0, 0o7777, 0o666);
    const p = parseSimSpec(path);
    if (typeof p === 'string') {
      throw new VfioError(`open ${path}: ${p}`, { code: 'EINVAL', errno: E.EINVAL, kind: 'syscall', syscall: 'open', path, device: path });
    }
    let device = p.name !== undefined ? this.named.get(p.name) : undefined;
    if (device) {
      const clash = specClash(p, device);
      if (clash) {
        throw new VfioError(`open ${path}: sim device ${p.name} exists with ${clash}`, {
          code: 'EEXIST', errno: E.EEXIST, kind: 'syscall', syscall: 'open', path, device: path,
        });
      }
    } else {
      device = this.makeDevice(path, { ...this.options.defaults, ...specOptions(p) });
    }
    this.latestBySpec.set(path, device);
    const dev = device;
    try {
      dev.attach();
    } catch (e) {
      if (e instanceof Errno) throw VfioError.fromErrno(e.errno, { syscall: 'open', path, device: path });
      throw e;
    }
    return this.alloc({ kind: 'device', device: dev, pos: 0 });
  }

  close(fd: number): void {
    const f = this.virtual('close', fd);
    if (!f) return this.innerFor(fd, 'close').close(fd);
    this.files.delete(fd);
    switch (f.kind) {
      case 'device':
        f.device.detach();
        break;
      case 'save':
      case 'resume':
        f.device.dataFdClosed(f.session);
        break;
      case 'eventfd':
        break; // nothing refers to it once its number is gone
      case 'pipe-r':
        f.pipe.readerOpen = false;
        break;
      case 'pipe-w':
        f.pipe.writerOpen = false;
        break;
    }
    this.wake();
  }

  /**
   * The address of a Buffer's memory: the real one from the inner binding, or (without one) a
   * made-up address unique to its ArrayBuffer. Either way the buffer is remembered (weakly), so
   * that the simulated kernel can dereference pointers to it in ioctl structs (src/sim/memory.ts).
   */
  bufferAddress(buf: Buffer): bigint {
    return this.memory.address(A.buffer('bufferAddress', buf, 'buf'));
  }

  /** Virtual fds: the simulated device answers at once (on a later tick); real fds go to the inner binding. */
  async ioctlAsync(fd: number, request: number, arg?: Buffer | number): Promise<number> {
    if (!SimBinding.isVirtualFd(fd) && this.inner) return this.inner.ioctlAsync(fd, request, arg);
    await Promise.resolve();
    return this.ioctl(fd, request, arg);
  }

  ioctl(fd: number, request: number, arg?: Buffer | number): number {
    const f = this.virtual('ioctl', fd);
    if (!f) return this.innerFor(fd, 'ioctl').ioctl(fd, request, arg);
    A.int('ioctl', 'request', request, 0, 0xffffffff);
    if (arg !== undefined) {
      if (ArrayBuffer.isView(arg)) {
        if (arg.byteLength === 0) throw A.rangeError('ioctl: "arg" Buffer must not be empty');
        arg = A.buffer('ioctl', arg, 'arg');
      } else if (typeof arg === 'number') {
        A.int('ioctl', 'arg', arg, -Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER);
      } else {
        throw A.typeError('ioctl: "arg" must be a Buffer, a number or undefined');
      }
    }
    const a = arg;
    switch (f.kind) {
      case 'device':
        return this.guard('ioctl', f, () => f.device.ioctl(request, a));
      case 'save':
        return this.guard('ioctl', f, () => {
          if (request !== VFIO_MIG_GET_PRECOPY_INFO) raise(E.ENOTTY);
          f.device.precopyInfo(f.session, a);
          return 0;
        });
      default:
        // The resuming file, eventfds and pipes have no ioctls of their own.
        throw this.err(E.ENOTTY, 'ioctl', f);
    }
  }

  pread(fd: number, buf: Buffer, offset: number, length?: number): number {
    const f = this.virtual('pread', fd);
    if (!f) return this.innerFor(fd, 'pread').pread(fd, buf, offset, length);
    const { b, pos, len } = positional('pread', buf, offset, length);
    if (f.kind !== 'device') throw this.err(E.ESPIPE, 'pread', f);
    return this.guard('pread', f, () => f.device.regionIo('read', pos, b, 0, len));
  }

  pwrite(fd: number, buf: Buffer, offset: number, length?: number): number {
    const f = this.virtual('pwrite', fd);
    if (!f) return this.innerFor(fd, 'pwrite').pwrite(fd, buf, offset, length);
    const { b, pos, len } = positional('pwrite', buf, offset, length);
    if (f.kind !== 'device') throw this.err(E.ESPIPE, 'pwrite', f);
    return this.guard('pwrite', f, () => f.device.regionIo('write', pos, b, 0, len));
  }

  read(fd: number, buf: Buffer, offset?: number, length?: number): Promise<number> {
    if (!this.isVirtualArg('read', fd)) return this.innerFor(fd, 'read').read(fd, buf, offset, length);
    const view = A.window('read', A.buffer('read', buf), offset, length);
    return this.transfer('read', fd, view);
  }

  write(fd: number, buf: Buffer, offset?: number, length?: number): Promise<number> {
    if (!this.isVirtualArg('write', fd)) return this.innerFor(fd, 'write').write(fd, buf, offset, length);
    const view = A.window('write', A.buffer('write', buf), offset, length);
    return this.transfer('write', fd, view);
  }

  pipe(flags?: number): [number, number] {
    if (this.inner && !this.options.virtualFds) return this.inner.pipe(flags);
    A.optInt('pipe', 'flags', flags, 0, A.INT_MAX, 0);
    const pipe = new VirtualPipe(() => this.wake());
    return [this.alloc({ kind: 'pipe-r', pipe }), this.alloc({ kind: 'pipe-w', pipe })];
  }

  eventfd(initval: number, flags?: number): number {
    if (this.inner && !this.options.virtualFds) return this.inner.eventfd(initval, flags);
    const v = A.int('eventfd', 'initval', initval, 0, 0xffffffff);
    const fl = A.optInt('eventfd', 'flags', flags, 0, A.INT_MAX, 0);
    const efd = new VirtualEventfd(v, (fl & EFD_SEMAPHORE) !== 0, () => this.wake());
    return this.alloc({ kind: 'eventfd', efd });
  }

  eventfdRead(fd: number): bigint {
    const f = this.virtual('eventfdRead', fd);
    if (!f) return this.innerFor(fd, 'read').eventfdRead(fd);
    if (f.kind !== 'eventfd') throw this.err(E.EINVAL, 'read', f);
    return f.efd.take();
  }

  eventfdWrite(fd: number, value: bigint): void {
    const f = this.virtual('eventfdWrite', fd);
    if (!f) return this.innerFor(fd, 'write').eventfdWrite(fd, value);
    if (typeof value !== 'bigint') throw A.typeError('eventfdWrite: "value" must be a bigint');
    if (value < 0n || value > 0xffffffffffffffffn) throw A.rangeError('eventfdWrite: "value" is out of range [0, 2^64 - 1]');
    if (f.kind !== 'eventfd') throw this.err(E.EINVAL, 'write', f);
    this.guard('write', f, () => f.efd.add(value));
  }

  poll(fd: number, events: number, timeoutMs: number): Promise<number> {
    if (!this.isVirtualArg('poll', fd)) {
      if (this.inner) return this.inner.poll(fd, events, timeoutMs);
      A.fd('poll', fd);
      A.int('poll', 'events', events, 0, 0x7fff);
      A.int('poll', 'timeoutMs', timeoutMs, -Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER);
      return Promise.resolve(POLLNVAL);
    }
    A.int('poll', 'events', events, 0, 0x7fff);
    const t = A.int('poll', 'timeoutMs', timeoutMs, -Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER);
    return this.pollVirtual(fd, events, t);
  }

  /**
   * The inner binding when none of `fds` is virtual (it does the syscalls on them: the data
   * pump's native implementation then serves them, e.g. a device whose data_fd is a real pipe,
   * SimDeviceOptions.externalDataFd), else undefined: virtual fds are served by the JS pump over
   * this binding (src/kernel/pump).
   */
  kernelBinding(fds: readonly number[]): Binding | undefined {
    if (!this.inner || fds.some((fd) => SimBinding.isVirtualFd(fd))) return undefined;
    return this.inner.kernelBinding ? this.inner.kernelBinding(fds) : this.inner;
  }

  // ------------------------------------------------------------------ sockets
  //
  // The sim has no sockets of its own: socket() makes a real one with the inner binding, and the
  // socket calls on real fds go to it. A virtual fd (a device, a data_fd) is not a socket:
  // ENOTSOCK, after the same argument checks as the real bindings.

  socket(domain: number, type: number, protocol?: number): number {
    if (this.inner) return this.inner.socket(domain, type, protocol);
    A.int('socket', 'domain', domain, 0, A.INT_MAX);
    A.int('socket', 'type', type, 0, A.INT_MAX);
    A.optInt('socket', 'protocol', protocol, 0, A.INT_MAX, 0);
    throw VfioError.fromErrno(E.EAFNOSUPPORT, { syscall: 'socket' });
  }

  bind(fd: number, addr: Buffer): void {
    this.notSocket('bind', fd, () => A.sockaddr('bind', addr));
    return this.innerFor(fd, 'bind').bind(fd, addr);
  }

  listen(fd: number, backlog: number): void {
    this.notSocket('listen', fd, () => A.int('listen', 'backlog', backlog, 0, A.INT_MAX));
    return this.innerFor(fd, 'listen').listen(fd, backlog);
  }

  accept(fd: number): number {
    this.notSocket('accept', fd, () => undefined, 'accept4');
    return this.innerFor(fd, 'accept4').accept(fd);
  }

  connect(fd: number, addr: Buffer): boolean {
    this.notSocket('connect', fd, () => A.sockaddr('connect', addr));
    return this.innerFor(fd, 'connect').connect(fd, addr);
  }

  getsockopt(fd: number, level: number, name: number, buf?: Buffer): number {
    this.notSocket('getsockopt', fd, () => {
      A.int('getsockopt', 'level', level, 0, A.INT_MAX);
      A.int('getsockopt', 'name', name, 0, A.INT_MAX);
      if (buf !== undefined && A.buffer('getsockopt', buf).length === 0) throw A.rangeError('getsockopt: "buffer" must not be empty');
    });
    return this.innerFor(fd, 'getsockopt').getsockopt(fd, level, name, buf);
  }

  setsockopt(fd: number, level: number, name: number, value: number | Buffer): void {
    this.notSocket('setsockopt', fd, () => {
      A.int('setsockopt', 'level', level, 0, A.INT_MAX);
      A.int('setsockopt', 'name', name, 0, A.INT_MAX);
      if (typeof value === 'number') A.int('setsockopt', 'value', value, -0x80000000, A.INT_MAX);
      else if (!Buffer.isBuffer(value)) throw A.typeError('setsockopt: "value" must be a number or a Buffer');
      else if (value.length === 0) throw A.rangeError('setsockopt: "value" Buffer must not be empty');
    });
    return this.innerFor(fd, 'setsockopt').setsockopt(fd, level, name, value);
  }

  shutdown(fd: number, how: number): void {
    this.notSocket('shutdown', fd, () => A.int('shutdown', 'how', how, 0, 2));
    return this.innerFor(fd, 'shutdown').shutdown(fd, how);
  }

  getsockname(fd: number): Buffer {
    this.notSocket('getsockname', fd, () => undefined);
    return this.innerFor(fd, 'getsockname').getsockname(fd);
  }

  getpeername(fd: number): Buffer {
    this.notSocket('getpeername', fd, () => undefined);
    return this.innerFor(fd, 'getpeername').getpeername(fd);
  }

  recvNow(fd: number, buf: Buffer, offset?: number, length?: number): number {
    this.notSocket('recvNow', fd, () => A.window('recvNow', A.buffer('recvNow', buf), offset, length), 'recv');
    return this.innerFor(fd, 'recvNow').recvNow(fd, buf, offset, length);
  }

  sendNow(fd: number, buf: Buffer, offset?: number, length?: number): number {
    this.notSocket('sendNow', fd, () => A.window('sendNow', A.buffer('sendNow', buf), offset, length), 'send');
    return this.innerFor(fd, 'sendNow').sendNow(fd, buf, offset, length);
  }

  /**
   * For a virtual fd, or any fd without an inner binding: check the call's arguments (`check`),
   * as the real bindings do before the kernel sees the fd, then throw ENOTSOCK (EBADF when the fd
   * is not open, or is real and there is no inner binding). Returns for a real fd with an inner
   * binding, which the caller hands the call to.
   */
  private notSocket(fn: string, fd: number, check: () => unknown, syscall = fn): void {
    if (!SimBinding.isVirtualFd(fd) && this.inner) return;
    A.fd(fn, fd);
    check();
    const f = this.virtual(syscall, fd);
    if (!f) throw VfioError.fromErrno(E.EBADF, { syscall });
    throw this.err(E.ENOTSOCK, syscall, f);
  }

  // ------------------------------------------------------------------ internals

  /** Argument check of an fd for the async calls; true when it is in the virtual range. */
  private isVirtualArg(fn: string, fd: number): boolean {
    if (!SimBinding.isVirtualFd(fd)) return false;
    A.fd(fn, fd);
    return true;
  }

  /** One read(2)/write(2) on a virtual fd, completed on a later turn of the event loop. */
  private async transfer(kind: 'read' | 'write', fd: number, view: Buffer): Promise<number> {
    // Let the caller's code run first, as with a call completed on another thread.
    await new Promise<void>((resolve) => setImmediate(resolve));
    for (;;) {
      const f = this.files.get(fd);
      if (!f) throw VfioError.fromErrno(E.EBADF, { syscall: kind });
      const r = kind === 'read' ? this.readOnce(f, view) : this.writeOnce(f, view);
      if (r !== 'wait') return r;
      await this.waitChange(-1);
    }
  }

  /** A read on `f` now: the byte count, or 'wait' when it would block. Throws VfioError. */
  private readOnce(f: VFile, view: Buffer): number | 'wait' {
    switch (f.kind) {
      case 'save':
        return this.guard('read', f, () => {
          f.device.consume('read');
          return f.session.read(view, 0, view.length);
        });
      case 'device':
        return this.guard('read', f, () => {
          const n = f.device.regionIo('read', f.pos, view, 0, view.length);
          f.pos += n;
          return n;
        });
      case 'eventfd':
        if (view.length < 8) throw this.err(E.EINVAL, 'read', f);
        if (f.efd.value === 0n) return 'wait';
        view.writeBigUInt64LE(f.efd.take(), 0);
        return 8;
      case 'pipe-r':
        if (view.length === 0) return 0;
        if (f.pipe.available === 0) return f.pipe.writerOpen ? 'wait' : 0;
        return f.pipe.take(view, 0, view.length);
      default:
        // The resuming file is write-only (mtty_resume_device_data: O_WRONLY), the pipe's write end too.
        throw this.err(E.EBADF, 'read', f);
    }
  }

  /** A write on `f` now: the byte count, or 'wait' when it would block. Throws VfioError. */
  private writeOnce(f: VFile, view: Buffer): number | 'wait' {
    switch (f.kind) {
      case 'resume':
        return this.guard('write', f, () => {
          f.device.consume('write');
          return f.session.write(view, 0, view.length);
        });
      case 'device':
        return this.guard('write', f, () => {
          const n = f.device.regionIo('write', f.pos, view, 0, view.length);
          f.pos += n;
          return n;
        });
      case 'eventfd':
        if (view.length < 8) throw this.err(E.EINVAL, 'write', f);
        this.guard('write', f, () => f.efd.add(view.readBigUInt64LE(0)));
        return 8;
      case 'pipe-w': {
        if (view.length === 0) return 0;
        const n = this.guard('write', f, () => f.pipe.put(view, 0, view.length));
        return n === 0 ? 'wait' : n;
      }
      default:
        // The saving file is read-only (mtty_save_device_data: O_RDONLY), the pipe's read end too.
        throw this.err(E.EBADF, 'write', f);
    }
  }

  private async pollVirtual(fd: number, events: number, timeoutMs: number): Promise<number> {
    const deadline = timeoutMs < 0 ? Infinity : Date.now() + timeoutMs;
    for (;;) {
      const f = this.files.get(fd);
      if (!f) return POLLNVAL;
      const revents = this.pollMask(f) & (events | POLLERR | POLLHUP);
      if (revents) return revents;
      const left = deadline - Date.now();
      if (left <= 0) return 0;
      await this.waitChange(left);
    }
  }

  private makeDevice(label: string, options: SimDeviceOptions): SimDevice {
    const d = new SimDevice(this.host, label, ++this.serial, options);
    if (d.name !== undefined) this.named.set(d.name, d);
    this.all.push(d);
    log('created %s (serial %d, %d data bytes, seed %s)', label, d.serial, d.size, d.seed);
    return d;
  }

  private findDevice(key: string | number): SimDevice | undefined {
    if (typeof key === 'number') {
      const f = this.files.get(key);
      return f && 'device' in f ? f.device : undefined;
    }
    if (isSimPath(key)) {
      const p = parseSimSpec(key);
      if (typeof p !== 'string' && p.name !== undefined) return this.named.get(p.name);
      return this.latestBySpec.get(key);
    }
    return this.named.get(key);
  }

  private alloc(f: VFile): number {
    const fd = this.nextFd++;
    this.files.set(fd, f);
    return fd;
  }

  /** The open virtual file for `fd`; undefined for a non-virtual fd; EBADF for a virtual fd that is not open. */
  private virtual(fn: string, fd: number): VFile | undefined {
    if (!SimBinding.isVirtualFd(fd)) return undefined;
    A.fd(fn, fd);
    const f = this.files.get(fd);
    if (!f) throw VfioError.fromErrno(E.EBADF, { syscall: fn === 'eventfdRead' ? 'read' : fn === 'eventfdWrite' ? 'write' : fn });
    return f;
  }

  /** The inner binding for a non-virtual fd, or EBADF. */
  private innerFor(fd: number, syscall: string): Binding {
    if (this.inner) return this.inner;
    A.fd(syscall, fd);
    throw VfioError.fromErrno(E.EBADF, { syscall });
  }

  private err(errno: number, syscall: string, f: VFile): VfioError {
    return VfioError.fromErrno(errno, { syscall, device: deviceOf(f) });
  }

  /** Run model code; turn an Errno into the VfioError a real binding throws. */
  private guard<T>(syscall: string, f: VFile | undefined, fn: () => T): T {
    try {
      return fn();
    } catch (e) {
      if (e instanceof Errno) {
        if (e.op) log('%s failed in %s: %s', syscall, e.op, e.message);
        throw toVfioError(e, { syscall, device: f && deviceOf(f) });
      }
      throw e;
    }
  }

  private checkEventfd(fd: number): number {
    if (SimBinding.isVirtualFd(fd)) {
      const f = this.files.get(fd);
      if (!f) return E.EBADF;
      return f.kind === 'eventfd' ? 0 : E.EINVAL;
    }
    // A real fd: the sim cannot tell an eventfd from another file without side effects.
    return this.inner ? 0 : E.EBADF;
  }

  private signalEventfd(fd: number): boolean {
    if (SimBinding.isVirtualFd(fd)) {
      const f = this.files.get(fd);
      if (!f || f.kind !== 'eventfd') return false;
      try {
        f.efd.add(1n);
        return true;
      } catch {
        return false;
      }
    }
    try {
      this.inner?.eventfdWrite(fd, 1n);
      return this.inner !== undefined;
    } catch (e) {
      log('signalling eventfd %d failed: %s', fd, (e as Error).message);
      return false;
    }
  }

  private pollMask(f: VFile): number {
    switch (f.kind) {
      case 'device':
        return DEFAULT_POLLMASK;
      case 'save':
        return f.session.readable() ? POLLIN : 0;
      case 'resume':
        return POLLOUT;
      case 'eventfd':
        return (f.efd.value > 0n ? POLLIN : 0) | (f.efd.value < 0xfffffffffffffffen ? POLLOUT : 0);
      case 'pipe-r':
        return (f.pipe.available > 0 ? POLLIN : 0) | (f.pipe.writerOpen ? 0 : POLLHUP);
      case 'pipe-w':
        return f.pipe.readerOpen ? (f.pipe.room > 0 ? POLLOUT : 0) : POLLERR;
    }
  }

  private wake(): void {
    const ws = [...this.waiters];
    this.waiters.clear();
    for (const w of ws) w();
  }

  /** Resolve on the next wake() or after `timeoutMs` (< 0: no timeout). */
  private waitChange(timeoutMs: number): Promise<void> {
    return new Promise((resolve) => {
      let timer: NodeJS.Timeout | undefined;
      const done = (): void => {
        if (timer) clearTimeout(timer);
        this.waiters.delete(done);
        resolve();
      };
      this.waiters.add(done);
      if (timeoutMs >= 0 && Number.isFinite(timeoutMs)) timer = setTimeout(done, timeoutMs);
    });
  }
}

/** Device options a parsed spec sets. */
function specOptions(p: ParsedSimSpec): SimDeviceOptions {
  const o: SimDeviceOptions = {};
  if (p.name !== undefined) o.name = p.name;
  if (p.size !== undefined) o.size = p.size;
  if (p.seed !== undefined) o.seed = p.seed;
  if (p.migration !== undefined) o.migration = p.migration;
  if (p.migrationFlags !== undefined) o.migrationFlags = p.migrationFlags;
  if (p.precopyBytes !== undefined) o.precopyBytes = p.precopyBytes;
  if (p.blockSize !== undefined) o.blockSize = p.blockSize;
  if (p.churn !== undefined) o.churn = p.churn;
  if (p.precopyInfoV2 !== undefined) o.precopyInfoV2 = p.precopyInfoV2;
  if (p.precopyEnd !== undefined) o.precopyEnd = p.precopyEnd;
  if (p.maxRead !== undefined) o.maxRead = p.maxRead;
  if (p.maxWrite !== undefined) o.maxWrite = p.maxWrite;
  if (p.vscRevision !== undefined) o.vscRevision = p.vscRevision;
  if (p.vscLength !== undefined) o.vscLength = p.vscLength;
  if (p.deviceId !== undefined) o.deviceId = p.deviceId;
  if (p.busMaster !== undefined) o.busMaster = p.busMaster;
  if (p.dmaLogging !== undefined) o.dmaLogging = p.dmaLogging;
  if (p.dmaLoggingMaxRanges !== undefined) o.dmaLoggingMaxRanges = p.dmaLoggingMaxRanges;
  if (p.dmaLoggingPageSize !== undefined) o.dmaLoggingPageSize = p.dmaLoggingPageSize;
  if (p.dmaLoggingFailEvery !== undefined) o.dmaLoggingFailEvery = p.dmaLoggingFailEvery;
  if (p.msixAlloc !== undefined) o.msixAlloc = p.msixAlloc;
  return o;
}

/** The first explicit option of `p` that differs from `d`'s, described; undefined when none does. */
function specClash(p: ParsedSimSpec, d: SimDevice): string | undefined {
  const o = d.options;
  const given = specOptions(p);
  for (const key of Object.keys(given) as Array<keyof SimDeviceOptions>) {
    if (key === 'name') continue;
    const want = key === 'seed' ? BigInt(given.seed as bigint) : given[key];
    const have = o[key as keyof typeof o];
    if (want !== have) return `${key} ${String(have)} (spec asks for ${String(want)})`;
  }
  return undefined;
}

/** pread/pwrite arguments: the buffer, the file position and the length. */
function positional(fn: string, buf: unknown, position: unknown, length: unknown): { b: Buffer; pos: number; len: number } {
  const b = A.buffer(fn, buf);
  const pos = A.int(fn, 'position', position, 0, Number.MAX_SAFE_INTEGER);
  const len = A.optInt(fn, 'length', length, 0, b.length, b.length);
  return { b, pos, len };
}

export type { Session };

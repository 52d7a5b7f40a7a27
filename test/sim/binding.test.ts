/**
 * SimBinding as a `Binding` beyond the device: virtual eventfds and pipes when there is no real
 * binding, argument checks, and delegation of every non-virtual fd to the inner binding.
 */
import { describe, expect, it } from 'vitest';
import { SimBinding, VIRTUAL_FD_BASE, POLLNVAL } from '../../src/sim';
import { POLLHUP, POLLIN, POLLOUT, type Binding } from '../../src/kernel/binding/types';
import { rejection, thrown } from '../helpers/errors';

describe('virtual eventfds (no inner binding)', () => {
  it('count writes; a read returns and resets; EFD_SEMAPHORE counts down by one', () => {
    const b = new SimBinding();
    const e = b.eventfd(2);
    expect(e).toBeGreaterThanOrEqual(VIRTUAL_FD_BASE);
    b.eventfdWrite(e, 3n);
    expect(b.eventfdRead(e)).toBe(5n);
    expect(b.eventfdRead(e)).toBe(0n);
    const sem = b.eventfd(2, 1);
    expect([b.eventfdRead(sem), b.eventfdRead(sem), b.eventfdRead(sem)]).toEqual([1n, 1n, 0n]);
  });

  it('2^64-1 is EINVAL and overflowing the counter is EAGAIN', () => {
    const b = new SimBinding();
    const e = b.eventfd(0);
    expect(thrown(() => b.eventfdWrite(e, 0xffffffffffffffffn)).code).toBe('EINVAL');
    b.eventfdWrite(e, 0xfffffffffffffffen);
    expect(thrown(() => b.eventfdWrite(e, 1n)).code).toBe('EAGAIN');
    expect(() => b.eventfdWrite(e, -1n)).toThrow(RangeError);
  });

  it('read() of 8 bytes waits for a write; poll() reports POLLIN and POLLOUT', async () => {
    const b = new SimBinding();
    const e = b.eventfd(0);
    expect(await b.poll(e, POLLIN | POLLOUT, 0)).toBe(POLLOUT);
    const buf = Buffer.alloc(8);
    const reading = b.read(e, buf);
    setTimeout(() => b.eventfdWrite(e, 9n), 5);
    expect(await reading).toBe(8);
    expect(buf.readBigUInt64LE(0)).toBe(9n);
    expect((await rejection(b.read(e, Buffer.alloc(4)))).code).toBe('EINVAL');
    const w = Buffer.alloc(8);
    w.writeBigUInt64LE(4n);
    expect(await b.write(e, w)).toBe(8);
    expect(await b.poll(e, POLLIN, -1)).toBe(POLLIN);
  });
});

describe('virtual pipes (no inner binding)', () => {
  it('carry bytes in order, end with 0 once the writer closes, and report POLLHUP', async () => {
    const b = new SimBinding();
    const [r, w] = b.pipe();
    expect(await b.write(w, Buffer.from('hello '))).toBe(6);
    expect(await b.write(w, Buffer.from('world'))).toBe(5);
    const buf = Buffer.alloc(32);
    expect(await b.read(r, buf, 0, 8)).toBe(8);
    expect(await b.read(r, buf, 8)).toBe(3);
    expect(buf.toString('latin1', 0, 11)).toBe('hello world');
    const pending = b.read(r, buf);
    setTimeout(() => b.close(w), 5);
    expect(await pending).toBe(0);
    expect(await b.poll(r, POLLIN, 0)).toBe(POLLHUP);
    b.close(r);
    expect(b.openFdCount()).toBe(0);
  });

  it('a full pipe makes writes wait and be short; a closed reader is EPIPE; wrong direction EBADF', async () => {
    const b = new SimBinding();
    const [r, w] = b.pipe();
    expect(await b.write(w, Buffer.alloc(100_000))).toBe(65536);
    expect(await b.poll(w, POLLOUT, 0)).toBe(0);
    const writing = b.write(w, Buffer.alloc(10));
    await b.read(r, Buffer.alloc(4));
    expect(await writing).toBe(4);
    expect((await rejection(b.read(w, Buffer.alloc(1)))).code).toBe('EBADF');
    expect((await rejection(b.write(r, Buffer.alloc(1)))).code).toBe('EBADF');
    expect(thrown(() => b.pread(r, Buffer.alloc(1), 0)).code).toBe('ESPIPE');
    b.close(r);
    expect((await rejection(b.write(w, Buffer.alloc(1)))).code).toBe('EPIPE');
    b.close(w);
  });
});

describe('argument checks and unknown fds', () => {
  it('throws TypeError/RangeError synchronously, also from the async calls', () => {
    const b = new SimBinding();
    const fd = b.open('sim', 2);
    expect(() => b.read('x' as unknown as number, Buffer.alloc(1))).toThrow(TypeError);
    expect(() => b.read(-1, Buffer.alloc(1))).toThrow(RangeError);
    expect(() => b.read(fd, {} as Buffer)).toThrow(TypeError);
    expect(() => b.write(fd, Buffer.alloc(4), 5)).toThrow(RangeError);
    expect(() => b.poll(fd, 1, 1.5)).toThrow(RangeError);
    expect(() => b.ioctl(fd, -1)).toThrow(RangeError);
    expect(() => b.ioctl(fd, 1, 'x' as unknown as number)).toThrow(TypeError);
    expect(() => b.open(7 as unknown as string, 0)).toThrow(TypeError);
    expect(() => b.close(-1)).toThrow(RangeError);
    expect(() => b.eventfd(-1)).toThrow(RangeError);
  });

  it('without an inner binding, a real fd is EBADF and poll() answers POLLNVAL', async () => {
    const b = new SimBinding();
    expect(thrown(() => b.close(3)).code).toBe('EBADF');
    expect(thrown(() => b.ioctl(3, 0)).code).toBe('EBADF');
    expect(await b.poll(3, POLLIN, 0)).toBe(POLLNVAL);
    expect(await b.poll(VIRTUAL_FD_BASE + 12345, POLLIN, 0)).toBe(POLLNVAL);
    expect(thrown(() => b.close(VIRTUAL_FD_BASE + 12345)).code).toBe('EBADF');
  });
});

describe('delegation to the inner binding', () => {
  /** A recording stand-in for a real binding. */
  function recorder(): { inner: Binding; calls: string[] } {
    const calls: string[] = [];
    const rec = (name: string, ret: unknown) => (...args: unknown[]) => {
      calls.push(`${name}(${args.filter((a) => typeof a === 'number' || typeof a === 'string').join(',')})`);
      return ret;
    };
    const inner: Binding = {
      name: 'native',
      open: rec('open', 5) as Binding['open'],
      close: rec('close', undefined) as Binding['close'],
      ioctl: rec('ioctl', 0) as Binding['ioctl'],
      ioctlAsync: rec('ioctlAsync', Promise.resolve(0)) as Binding['ioctlAsync'],
      bufferAddress: rec('bufferAddress', 0n) as Binding['bufferAddress'],
      pread: rec('pread', 1) as Binding['pread'],
      pwrite: rec('pwrite', 1) as Binding['pwrite'],
      read: rec('read', Promise.resolve(0)) as Binding['read'],
      write: rec('write', Promise.resolve(1)) as Binding['write'],
      pipe: rec('pipe', [6, 7]) as Binding['pipe'],
      eventfd: rec('eventfd', 8) as Binding['eventfd'],
      eventfdRead: rec('eventfdRead', 0n) as Binding['eventfdRead'],
      eventfdWrite: rec('eventfdWrite', undefined) as Binding['eventfdWrite'],
      poll: rec('poll', Promise.resolve(1)) as Binding['poll'],
      socket: rec('socket', 9) as Binding['socket'],
      bind: rec('bind', undefined) as Binding['bind'],
      listen: rec('listen', undefined) as Binding['listen'],
      accept: rec('accept', 10) as Binding['accept'],
      connect: rec('connect', false) as Binding['connect'],
      getsockopt: rec('getsockopt', 0) as Binding['getsockopt'],
      setsockopt: rec('setsockopt', undefined) as Binding['setsockopt'],
      shutdown: rec('shutdown', undefined) as Binding['shutdown'],
      getsockname: rec('getsockname', Buffer.alloc(2)) as Binding['getsockname'],
      getpeername: rec('getpeername', Buffer.alloc(2)) as Binding['getpeername'],
      recvNow: rec('recvNow', -1) as Binding['recvNow'],
      sendNow: rec('sendNow', 1) as Binding['sendNow'],
    };
    return { inner, calls };
  }

  it('hands every non-sim path and real fd to the inner binding, untouched', async () => {
    const { inner, calls } = recorder();
    const b = new SimBinding(inner);
    expect(b.open('/tmp/x', 0, 0o600)).toBe(5);
    b.ioctl(5, 0x5401);
    await b.ioctlAsync(5, 0x5402);
    b.bufferAddress(Buffer.alloc(1));
    b.pread(5, Buffer.alloc(1), 9);
    b.pwrite(5, Buffer.alloc(1), 9);
    await b.read(5, Buffer.alloc(1));
    await b.write(5, Buffer.alloc(1));
    await b.poll(5, 1, 0);
    expect(b.pipe()).toEqual([6, 7]);
    expect(b.eventfd(0)).toBe(8);
    b.eventfdRead(8);
    b.eventfdWrite(8, 1n);
    b.close(5);
    expect(calls).toEqual([
      'open(/tmp/x,0,384)', 'ioctl(5,21505)', 'ioctlAsync(5,21506)', 'bufferAddress()', 'pread(5,9)', 'pwrite(5,9)', 'read(5)', 'write(5)', 'poll(5,1,0)',
      'pipe()', 'eventfd(0)', 'eventfdRead(8)', 'eventfdWrite(8)', 'close(5)',
    ]);
  });

  it('hands the socket calls on real fds to the inner binding; a virtual fd is ENOTSOCK after the argument checks', () => {
    const { inner, calls } = recorder();
    const b = new SimBinding(inner);
    const addr = Buffer.from([1, 0, 0x2f, 0]);
    expect(b.socket(1, 1)).toBe(9);
    b.bind(9, addr);
    b.listen(9, 4);
    expect(b.accept(9)).toBe(10);
    expect(b.connect(9, addr)).toBe(false);
    b.getsockopt(9, 1, 4);
    b.setsockopt(9, 6, 1, 1);
    b.shutdown(10, 2);
    b.getsockname(9);
    b.getpeername(10);
    expect(b.recvNow(10, Buffer.alloc(4), 1, 2)).toBe(-1);
    expect(b.sendNow(10, Buffer.alloc(4))).toBe(1);
    expect(calls).toEqual([
      'socket(1,1)', 'bind(9)', 'listen(9,4)', 'accept(9)', 'connect(9)', 'getsockopt(9,1,4)', 'setsockopt(9,6,1,1)', 'shutdown(10,2)',
      'getsockname(9)', 'getpeername(10)', 'recvNow(10,1,2)', 'sendNow(10)',
    ]);
    const dev = b.open('sim', 2);
    expect(thrown(() => b.getsockname(dev))).toMatchObject({ code: 'ENOTSOCK', syscall: 'getsockname' });
    expect(thrown(() => b.accept(dev))).toMatchObject({ code: 'ENOTSOCK', syscall: 'accept4' });
    expect(() => b.bind(dev, Buffer.alloc(1))).toThrow(RangeError);
    expect(() => b.shutdown(dev, 7)).toThrow(RangeError);
    expect(thrown(() => b.recvNow(dev, Buffer.alloc(4)))).toMatchObject({ code: 'ENOTSOCK', syscall: 'recv' });
    expect(() => b.sendNow(dev, Buffer.alloc(4), 5)).toThrow(RangeError);
    b.close(dev);
    expect(thrown(() => b.getsockname(dev))).toMatchObject({ code: 'EBADF', syscall: 'getsockname' });
    expect(calls).toHaveLength(12);
  });

  it('without an inner binding, socket() is EAFNOSUPPORT and a real fd EBADF', () => {
    const b = new SimBinding();
    expect(thrown(() => b.socket(1, 1))).toMatchObject({ code: 'EAFNOSUPPORT', syscall: 'socket' });
    expect(thrown(() => b.listen(3, 1))).toMatchObject({ code: 'EBADF', syscall: 'listen' });
    expect(() => b.socket(-1, 1)).toThrow(RangeError);
  });

  it('names the inner binding as the one that handles a set of fds in the kernel only when none is virtual', () => {
    const { inner } = recorder();
    const b = new SimBinding(inner);
    const dev = b.open('sim', 2);
    expect(b.kernelBinding([5, 6])).toBe(inner);
    expect(b.kernelBinding([])).toBe(inner);
    expect(b.kernelBinding([5, dev])).toBeUndefined();
    expect(new SimBinding().kernelBinding([5])).toBeUndefined();
    // A wrapped wrapper answers for its own inner binding.
    expect(new SimBinding(b).kernelBinding([5, 6])).toBe(inner);
    expect(new SimBinding(b).kernelBinding([dev])).toBeUndefined();
  });

  it('keeps eventfds and pipes virtual when asked to', () => {
    const { inner, calls } = recorder();
    const b = new SimBinding(inner, { virtualFds: true });
    expect(SimBinding.isVirtualFd(b.eventfd(0))).toBe(true);
    expect(b.pipe().every((fd) => SimBinding.isVirtualFd(fd))).toBe(true);
    expect(calls).toEqual([]);
  });

  it('applies binding-wide device defaults, which the spec overrides', () => {
    const b = new SimBinding(undefined, { defaults: { size: 1000, precopyEnd: 'enomsg' } });
    const a = b.open('sim', 2);
    const c = b.open('sim:2000:end=zero', 2);
    expect(b.device(a).options).toMatchObject({ size: 1000, precopyEnd: 'enomsg' });
    expect(b.device(c).options).toMatchObject({ size: 2000, precopyEnd: 'zero' });
  });
});

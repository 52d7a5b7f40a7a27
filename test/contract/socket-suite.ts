/**
 * The socket calls of the binding contract (src/kernel/binding/types.ts, "sockets"): one suite,
 * run against every binding by socket.contract.test.ts, over AF_UNIX (pathname and abstract
 * names) and TCP on the loopback (IPv4, and IPv6 where the host has ::1). Real kernel sockets
 * throughout; the simulated binding is held to the same rules through its inner binding. On the
 * purely virtual simulated kernel (`virtual`), which has no sockets, what remains is the socket
 * calls on its own fds (ENOTSOCK, EBADF) and the argument checks; every case that needs a socket
 * is skipped with the reason in its title.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { crc32 } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VfioError } from '../../src/base/errors';
import { POLLIN, POLLOUT, type Binding } from '../../src/kernel/binding/types';
import {
  AF_INET, AF_INET6, AF_UNIX, IPPROTO_TCP, SHUT_RDWR, SHUT_WR, SIZEOF_LINGER, SIZEOF_UCRED, SOCK_STREAM, SOL_SOCKET, SO_ACCEPTCONN, SO_DOMAIN,
  SO_ERROR, SO_LINGER, SO_PEERCRED, SO_REUSEADDR, SO_SNDBUF, SO_TYPE, TCP_NODELAY, decodeSockaddr, decodeUcred, encodeLinger, encodeSockaddr,
  type SockAddr,
} from '../../src/kernel/uapi/socket';
import { pattern } from '../helpers/bytes';
import { expectSyscallError, rejection, thrown } from '../helpers/errors';
import { O_CLOEXEC, fdFlags, openFdCount } from '../helpers/fds';
import { describeUnless, itUnless } from '../helpers/skip';
import { useTempDir } from '../helpers/temp-dir';
import { writeAll } from '../helpers/uapi';

const O_NONBLOCK = fs.constants.O_NONBLOCK;
const { errno: E } = os.constants;

/** A number far above any fd this process has open: a call that reached the kernel with it would fail EBADF. */
const NOT_OPEN = 1 << 20;

/** Whether the host can bind ::1 (an IPv6 loopback). */
function hasIpv6Loopback(b: Binding): string | undefined {
  let fd = -1;
  try {
    fd = b.socket(AF_INET6, SOCK_STREAM);
    b.bind(fd, encodeSockaddr({ family: 'ipv6', address: '::1', port: 0 }));
    return undefined;
  } catch (e) {
    return `no IPv6 loopback: ${(e as Error).message}`;
  } finally {
    if (fd >= 0) b.close(fd);
  }
}

type Kind = 'unix' | 'abstract' | 'tcp4' | 'tcp6';

export interface SocketContractOptions {
  /** The binding's fds are not the kernel's and it has no sockets (the purely virtual simulated kernel). */
  virtual?: boolean;
}

export function socketContract(name: string, create: () => Binding, opts: SocketContractOptions = {}): void {
  describe(`Binding contract, sockets: ${name}`, () => {
    let b: Binding;
    const tmp = useTempDir(`vfio-sock-${name}`);
    let serial = 0;
    const opened = new Set<number>();

    beforeAll(() => {
      b = create();
    });
    afterAll(() => {
      for (const fd of opened) {
        try {
          b.close(fd);
        } catch {
          /* closed by the test */
        }
      }
    });

    /** Why the cases that need a socket cannot run here (undefined: they can). */
    const noSockets = opts.virtual ? 'no sockets on a purely virtual binding' : undefined;
    /** A case that needs real sockets. */
    const itSockets = (title: string, fn: () => Promise<void> | void): void => itUnless(noSockets, title, fn);
    /** A group of cases that need real sockets. */
    const describeSockets = (title: string, fn: () => void): void => describeUnless(noSockets, title, fn);

    /** Track an fd so that a failing test does not leak it into the next. */
    const track = (fd: number): number => (opened.add(fd), fd);
    const close = (fd: number): void => {
      opened.delete(fd);
      b.close(fd);
    };

    const domainOf = (kind: Kind) => (kind === 'tcp4' ? AF_INET : kind === 'tcp6' ? AF_INET6 : AF_UNIX);

    /** A fresh address of `kind` to listen on (TCP: port 0, the kernel picks one). */
    function addressFor(kind: Kind): SockAddr {
      serial++;
      switch (kind) {
        case 'unix':
          return { family: 'unix', path: tmp.file(`s${serial}`) };
        case 'abstract':
          return { family: 'unix', abstract: `vfio-contract-${process.pid}-${name}-${serial}` };
        case 'tcp4':
          return { family: 'ipv4', address: '127.0.0.1', port: 0 };
        case 'tcp6':
          return { family: 'ipv6', address: '::1', port: 0 };
      }
    }

    /** A listening socket: its fd and its address as getsockname(2) says (the port filled in). */
    function listener(kind: Kind): { fd: number; addr: Buffer } {
      const fd = track(b.socket(domainOf(kind), SOCK_STREAM));
      if (kind.startsWith('tcp')) b.setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, 1);
      b.bind(fd, encodeSockaddr(addressFor(kind)));
      b.listen(fd, 16);
      return { fd, addr: b.getsockname(fd) };
    }

    /** Connect to `addr` the non-blocking way: connect, poll POLLOUT, read SO_ERROR. */
    async function connectTo(addr: Buffer): Promise<number> {
      const fd = track(b.socket(decodeFamily(addr), SOCK_STREAM));
      if (!b.connect(fd, addr)) {
        const revents = await b.poll(fd, POLLOUT, 5000);
        expect(revents & POLLOUT).toBe(POLLOUT);
        expect(b.getsockopt(fd, SOL_SOCKET, SO_ERROR)).toBe(0);
      }
      return fd;
    }

    /** Accept one connection, waiting for it with poll. */
    async function acceptFrom(lfd: number): Promise<number> {
      for (;;) {
        try {
          return track(b.accept(lfd));
        } catch (e) {
          if ((e as VfioError).code !== 'EAGAIN') throw e;
          expect(await b.poll(lfd, POLLIN, 5000)).not.toBe(0);
        }
      }
    }

    async function pair(kind: Kind): Promise<{ lfd: number; client: number; server: number; addr: Buffer }> {
      const { fd: lfd, addr } = listener(kind);
      const client = await connectTo(addr);
      const server = await acceptFrom(lfd);
      return { lfd, client, server, addr };
    }

    /** Read exactly n bytes. */
    async function readN(fd: number, n: number): Promise<Buffer> {
      const buf = Buffer.alloc(n);
      for (let got = 0; got < n; ) {
        const r = await b.read(fd, buf, got);
        if (r === 0) throw new Error(`EOF after ${got} of ${n} bytes`);
        got += r;
      }
      return buf;
    }

    itSockets('creates sockets close-on-exec and non-blocking, of the asked type and domain', () => {
      for (const domain of [AF_UNIX, AF_INET]) {
        const fd = track(b.socket(domain, SOCK_STREAM));
        expect(fdFlags(fd) & (O_CLOEXEC | O_NONBLOCK)).toBe(O_CLOEXEC | O_NONBLOCK);
        expect(b.getsockopt(fd, SOL_SOCKET, SO_TYPE)).toBe(SOCK_STREAM);
        expect(b.getsockopt(fd, SOL_SOCKET, SO_DOMAIN)).toBe(domain);
        expect(b.getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN)).toBe(0);
        close(fd);
      }
      expectSyscallError(thrown(() => b.socket(12345, SOCK_STREAM)), { code: 'EAFNOSUPPORT', syscall: 'socket' });
    });

    const kinds: Kind[] = ['unix', 'abstract', 'tcp4', 'tcp6'];
    for (const kind of kinds) {
      describeSockets(kind, () => {
        let skip: string | undefined;
        beforeAll(() => {
          skip = kind === 'tcp6' ? hasIpv6Loopback(b) : undefined;
        });

        it('listen, connect, accept: addresses, flags, and EAGAIN from accept when nobody waits', async (ctx) => {
          if (skip) return ctx.skip(skip);
          const { fd: lfd, addr } = listener(kind);
          expect(b.getsockopt(lfd, SOL_SOCKET, SO_ACCEPTCONN)).toBe(1);
          expectSyscallError(thrown(() => b.accept(lfd)), { code: 'EAGAIN', syscall: 'accept4' });
          const local = decodeSockaddr(addr);
          if (kind === 'unix') expect(local).toEqual({ family: 'unix', path: tmp.file(`s${serial}`) });
          if (kind === 'abstract') expect(local).toEqual({ family: 'unix', abstract: `vfio-contract-${process.pid}-${name}-${serial}` });
          if (kind === 'tcp4') expect(local).toMatchObject({ family: 'ipv4', address: '127.0.0.1' });
          if (kind === 'tcp6') expect(local).toMatchObject({ family: 'ipv6', address: '::1' });
          if (local.family === 'ipv4' || local.family === 'ipv6') expect(local.port).toBeGreaterThan(0);

          const client = await connectTo(addr);
          const server = await acceptFrom(lfd);
          for (const fd of [client, server]) expect(fdFlags(fd) & (O_CLOEXEC | O_NONBLOCK)).toBe(O_CLOEXEC | O_NONBLOCK);
          // Each end's peer is the other end.
          expect(decodeSockaddr(b.getpeername(client))).toEqual(local);
          expect(decodeSockaddr(b.getpeername(server))).toEqual(decodeSockaddr(b.getsockname(client)));
          if (kind === 'unix' || kind === 'abstract') expect(decodeSockaddr(b.getsockname(client))).toEqual({ family: 'unix' });
          expectSyscallError(thrown(() => b.getpeername(lfd)), { code: 'ENOTCONN', syscall: 'getpeername' });
          for (const fd of [client, server, lfd]) close(fd);
        });

        it('carries bytes both ways, 4 MiB with EAGAIN and short writes, then an orderly shutdown', async (ctx) => {
          if (skip) return ctx.skip(skip);
          const { lfd, client, server } = await pair(kind);
          await writeAll(b, client, Buffer.from('hello'));
          expect((await readN(server, 5)).toString()).toBe('hello');
          await writeAll(b, server, Buffer.from('world!'));
          expect((await readN(client, 6)).toString()).toBe('world!');

          const big = pattern(4 << 20, 7);
          const [, got] = await Promise.all([writeAll(b, client, big), readN(server, big.length)]);
          expect(crc32(got)).toBe(crc32(big));

          // shutdown(SHUT_WR): the other end reads what was sent, then 0; writing on is EPIPE.
          await writeAll(b, client, Buffer.from('tail'));
          b.shutdown(client, SHUT_WR);
          expect((await readN(server, 4)).toString()).toBe('tail');
          expect(await b.read(server, Buffer.alloc(8))).toBe(0);
          expectSyscallError(await rejection(b.write(client, Buffer.from('x'))), { code: 'EPIPE', syscall: 'write' });
          // The other direction still works.
          await writeAll(b, server, Buffer.from('back'));
          expect((await readN(client, 4)).toString()).toBe('back');
          for (const fd of [client, server, lfd]) close(fd);
        });

        it('a peer that closes: read 0, then writes fail with EPIPE (or ECONNRESET over TCP), never SIGPIPE', async (ctx) => {
          if (skip) return ctx.skip(skip);
          const { lfd, client, server } = await pair(kind);
          close(server);
          expect(await b.read(client, Buffer.alloc(16))).toBe(0);
          let err: unknown;
          // TCP may take a write or two before the peer's RST comes back.
          for (let i = 0; i < 100 && err === undefined; i++) {
            try {
              await b.write(client, Buffer.alloc(1024));
            } catch (e) {
              err = e;
            }
          }
          expect(err).toBeInstanceOf(VfioError);
          const code = (err as VfioError).code;
          expect(kind.startsWith('tcp') ? ['EPIPE', 'ECONNRESET'] : ['EPIPE']).toContain(code);
          expectSyscallError(err as VfioError, { code, syscall: 'write' });
          for (const fd of [client, lfd]) close(fd);
        });

        it('recvNow / sendNow: never wait (-1 for EAGAIN), windows, 0 at the peer\'s end, EPIPE without SIGPIPE', async (ctx) => {
          if (skip) return ctx.skip(skip);
          const { lfd, client, server } = await pair(kind);
          const buf = Buffer.alloc(64, 0x55);
          expect(b.recvNow(server, buf)).toBe(-1);
          expect(b.sendNow(client, Buffer.from('..hello..'), 2, 5)).toBe(5);
          expect(await b.poll(server, POLLIN, 5000)).toBe(POLLIN);
          expect(b.recvNow(server, buf, 10, 3)).toBe(3);
          expect(buf.subarray(9, 14).toString('latin1')).toBe('UhelU');
          expect(b.recvNow(server, buf, 20)).toBe(2);
          expect(buf.subarray(20, 22).toString()).toBe('lo');
          // Fill the send buffer: short sends, then -1, never a wait.
          const chunk = Buffer.alloc(1 << 20, 7);
          let sent = 0;
          let n = 0;
          const start = performance.now();
          while ((n = b.sendNow(client, chunk)) > 0) sent += n;
          expect(n).toBe(-1);
          expect(performance.now() - start).toBeLessThan(5000);
          expect(sent).toBeGreaterThan(0);
          let got = 0;
          while (got < sent) {
            const k = b.recvNow(server, chunk);
            if (k === -1) await b.poll(server, POLLIN, 5000);
            else got += k;
          }
          expect(got).toBe(sent);
          b.shutdown(client, SHUT_WR);
          expect(await b.poll(server, POLLIN, 5000)).not.toBe(0);
          expect(b.recvNow(server, buf)).toBe(0);
          close(server);
          let err: unknown;
          for (let i = 0; i < 100 && err === undefined; i++) {
            try {
              b.sendNow(client, Buffer.alloc(16));
              await sleep(1);
            } catch (e) {
              err = e;
            }
          }
          expectSyscallError(err as VfioError, { code: (err as VfioError).code, syscall: 'send' });
          expect(['EPIPE', 'ECONNRESET']).toContain((err as VfioError).code);
          for (const fd of [client, lfd]) close(fd);
        });

        it('shutdown(SHUT_RDWR) wakes a poll that waits on the socket', async (ctx) => {
          if (skip) return ctx.skip(skip);
          const { lfd, client, server } = await pair(kind);
          const waiting = b.poll(server, POLLIN, 10_000);
          setTimeout(() => b.shutdown(server, SHUT_RDWR), 30);
          const start = performance.now();
          expect(await waiting).not.toBe(0);
          expect(performance.now() - start).toBeLessThan(5000);
          expect(await b.read(server, Buffer.alloc(4))).toBe(0);
          for (const fd of [client, server, lfd]) close(fd);
        });
      });
    }

    describeSockets('refused connections', () => {
      it('TCP: a port nobody listens on refuses, at once or through SO_ERROR', async () => {
        // A port that was just free: bind it, note it, close it.
        const probe = track(b.socket(AF_INET, SOCK_STREAM));
        b.bind(probe, encodeSockaddr({ family: 'ipv4', address: '127.0.0.1', port: 0 }));
        const addr = b.getsockname(probe);
        close(probe);
        const fd = track(b.socket(AF_INET, SOCK_STREAM));
        let code: string;
        try {
          if (b.connect(fd, addr)) throw new Error('connected to a port nobody listens on');
          expect(await b.poll(fd, POLLOUT, 5000)).not.toBe(0);
          const so = b.getsockopt(fd, SOL_SOCKET, SO_ERROR);
          expect(so).toBe(E.ECONNREFUSED);
          code = 'ECONNREFUSED';
        } catch (e) {
          if (!(e instanceof VfioError)) throw e;
          code = expectSyscallError(e, { code: 'ECONNREFUSED', syscall: 'connect' }).code;
        }
        expect(code).toBe('ECONNREFUSED');
        close(fd);
      });

      it('AF_UNIX: ECONNREFUSED for a socket file nobody listens on, ENOENT for no file', () => {
        const { fd: lfd, addr } = listener('unix');
        close(lfd); // the file stays, nobody listens
        const fd = track(b.socket(AF_UNIX, SOCK_STREAM));
        expectSyscallError(thrown(() => b.connect(fd, addr)), { code: 'ECONNREFUSED', syscall: 'connect' });
        expectSyscallError(thrown(() => b.connect(fd, encodeSockaddr({ family: 'unix', path: tmp.file('nobody') }))), { code: 'ENOENT', syscall: 'connect' });
        close(fd);
      });

      it('bind: EADDRINUSE for an AF_UNIX path that exists and a TCP port in use', () => {
        const { fd: lfd, addr } = listener('unix');
        const again = track(b.socket(AF_UNIX, SOCK_STREAM));
        expectSyscallError(thrown(() => b.bind(again, addr)), { code: 'EADDRINUSE', syscall: 'bind' });
        const { fd: tfd, addr: taddr } = listener('tcp4');
        const tcp = track(b.socket(AF_INET, SOCK_STREAM));
        expectSyscallError(thrown(() => b.bind(tcp, taddr)), { code: 'EADDRINUSE', syscall: 'bind' });
        for (const fd of [lfd, again, tfd, tcp]) close(fd);
      });
    });

    describe('socket options', () => {
      itSockets('int options: TCP_NODELAY, SO_SNDBUF (the kernel doubles it), SO_ERROR', async () => {
        const { lfd, client, server } = await pair('tcp4');
        expect(b.getsockopt(client, IPPROTO_TCP, TCP_NODELAY)).toBe(0);
        b.setsockopt(client, IPPROTO_TCP, TCP_NODELAY, 1);
        expect(b.getsockopt(client, IPPROTO_TCP, TCP_NODELAY)).not.toBe(0);
        b.setsockopt(client, SOL_SOCKET, SO_SNDBUF, 65536);
        expect(b.getsockopt(client, SOL_SOCKET, SO_SNDBUF)).toBe(2 * 65536);
        expect(b.getsockopt(server, SOL_SOCKET, SO_ERROR)).toBe(0);
        for (const fd of [client, server, lfd]) close(fd);
      });

      itSockets('struct options by Buffer: SO_LINGER both ways, SO_PEERCRED on AF_UNIX', async () => {
        const { lfd, client, server } = await pair('unix');
        b.setsockopt(client, SOL_SOCKET, SO_LINGER, encodeLinger(true, 3));
        const linger = Buffer.alloc(SIZEOF_LINGER);
        expect(b.getsockopt(client, SOL_SOCKET, SO_LINGER, linger)).toBe(SIZEOF_LINGER);
        expect([linger.readInt32LE(0), linger.readInt32LE(4)]).toEqual([1, 3]);
        const cred = Buffer.alloc(64);
        expect(b.getsockopt(server, SOL_SOCKET, SO_PEERCRED, cred)).toBe(SIZEOF_UCRED);
        expect(decodeUcred(cred)).toEqual({ pid: process.pid, uid: process.getuid!(), gid: process.getgid!() });
        for (const fd of [client, server, lfd]) close(fd);
      });

      it('socket calls on an fd that is not a socket fail ENOTSOCK; on a closed one EBADF', () => {
        const efd = b.eventfd(0);
        try {
          expectSyscallError(thrown(() => b.getsockname(efd)), { code: 'ENOTSOCK', syscall: 'getsockname' });
          expectSyscallError(thrown(() => b.getsockopt(efd, SOL_SOCKET, SO_TYPE)), { code: 'ENOTSOCK', syscall: 'getsockopt' });
          expectSyscallError(thrown(() => b.shutdown(efd, SHUT_RDWR)), { code: 'ENOTSOCK', syscall: 'shutdown' });
          expectSyscallError(thrown(() => b.accept(efd)), { code: 'ENOTSOCK', syscall: 'accept4' });
          expectSyscallError(thrown(() => b.recvNow(efd, Buffer.alloc(8))), { code: 'ENOTSOCK', syscall: 'recv' });
          expectSyscallError(thrown(() => b.sendNow(efd, Buffer.alloc(8))), { code: 'ENOTSOCK', syscall: 'send' });
        } finally {
          b.close(efd);
        }
        expectSyscallError(thrown(() => b.getpeername(efd)), { code: 'EBADF', syscall: 'getpeername' });
        expectSyscallError(thrown(() => b.listen(efd, 1)), { code: 'EBADF', syscall: 'listen' });
      });
    });

    it('rejects bad arguments before the kernel: TypeError / RangeError even for an fd that is not open', () => {
      const addr = encodeSockaddr({ family: 'ipv4', address: '127.0.0.1', port: 1 });
      const cases: Array<[() => unknown, ErrorConstructor]> = [
        [() => b.socket(-1, SOCK_STREAM), RangeError],
        [() => b.socket(AF_UNIX, 'stream' as unknown as number), TypeError],
        [() => b.socket(AF_UNIX, SOCK_STREAM, 1.5), RangeError],
        [() => b.bind(NOT_OPEN, 'addr' as unknown as Buffer), TypeError],
        [() => b.bind(NOT_OPEN, Buffer.alloc(1)), RangeError],
        [() => b.bind(NOT_OPEN, Buffer.alloc(129)), RangeError],
        [() => b.bind(-1, addr), RangeError],
        [() => b.connect(NOT_OPEN, Buffer.alloc(0)), RangeError],
        [() => b.connect(NOT_OPEN, undefined as unknown as Buffer), TypeError],
        [() => b.listen(NOT_OPEN, -1), RangeError],
        [() => b.accept(-1), RangeError],
        [() => b.accept('3' as unknown as number), TypeError],
        [() => b.shutdown(NOT_OPEN, 3), RangeError],
        [() => b.getsockopt(NOT_OPEN, SOL_SOCKET, SO_TYPE, Buffer.alloc(0)), RangeError],
        [() => b.getsockopt(NOT_OPEN, -1, SO_TYPE), RangeError],
        [() => b.setsockopt(NOT_OPEN, SOL_SOCKET, SO_SNDBUF, 2 ** 31), RangeError],
        [() => b.setsockopt(NOT_OPEN, SOL_SOCKET, SO_SNDBUF, 'big' as unknown as number), TypeError],
        [() => b.setsockopt(NOT_OPEN, SOL_SOCKET, SO_LINGER, Buffer.alloc(0)), RangeError],
        [() => b.getsockname(2 ** 31), RangeError],
        [() => b.getpeername(0.5), RangeError],
        [() => b.recvNow(NOT_OPEN, 'x' as unknown as Buffer), TypeError],
        [() => b.recvNow(NOT_OPEN, Buffer.alloc(4), 5), RangeError],
        [() => b.sendNow(NOT_OPEN, Buffer.alloc(4), 0, 5), RangeError],
        [() => b.sendNow(-1, Buffer.alloc(4)), RangeError],
      ];
      for (const [call, type] of cases) {
        const e = thrown(call, Error, String(call));
        expect(e, String(call)).toBeInstanceOf(type);
        expect((e as { code?: string }).code).toBe(type === TypeError ? 'ERR_INVALID_ARG_TYPE' : 'ERR_OUT_OF_RANGE');
      }
      // The fd itself is the kernel's to judge.
      expectSyscallError(thrown(() => b.bind(NOT_OPEN, addr)), { code: 'EBADF', syscall: 'bind' });
    });

    itSockets('leaks no fds over many connections, refusals and failures, in every family', async () => {
      // Warm up whatever the binding opens once (koffi's libc, the sim's inner binding).
      close((await pair('unix')).lfd);
      for (const fd of [...opened]) close(fd);
      const before = openFdCount();
      for (let i = 0; i < 20; i++) {
        for (const kind of ['unix', 'abstract', 'tcp4'] as const) {
          const { lfd, client, server } = await pair(kind);
          await writeAll(b, client, Buffer.from('x'));
          await readN(server, 1);
          for (const fd of [client, server, lfd]) close(fd);
        }
        const fd = track(b.socket(AF_UNIX, SOCK_STREAM));
        expect(() => b.connect(fd, encodeSockaddr({ family: 'unix', path: tmp.file('nobody') }))).toThrow(VfioError);
        close(fd);
        expect(() => b.socket(12345, SOCK_STREAM)).toThrow(VfioError);
        expect(() => b.bind(NOT_OPEN, Buffer.alloc(1))).toThrow(RangeError);
      }
      expect(openFdCount()).toBe(before);
    });
  });
}

/** The family of a struct sockaddr's bytes (its first u16, little-endian). */
function decodeFamily(addr: Buffer): number {
  return addr.readUInt16LE(0);
}

/**
 * The binding contract suite: one set of tests, run against every implementation of
 * `Binding` (src/binding/types.ts). Each binding is added with one line in
 * binding.contract.test.ts:
 *
 *   bindingContract('native', () => new NativeBinding());
 *
 * Everything here runs on real kernel objects (temp files, pipes, eventfds, /dev/ptmx), so a
 * binding that wraps another (the simulated one hands real fds through) is held to the same
 * rules; and again on the purely virtual simulated kernel (`virtual`), whose pipes and eventfds
 * live in memory: there the cases that need kernel objects (files, fd flags, a pipe's kernel
 * ioctls, /dev/ptmx) are skipped, each with the reason in its title. Cases that need something
 * the host may lack are skipped the same way.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { beforeAll, describe, expect, it } from 'vitest';
import { VfioError } from '../../src/base/errors';
import { POLLHUP, POLLIN, POLLOUT, type Binding } from '../../src/kernel/binding/types';
import { pipeScope } from '../helpers/binding';
import { pattern } from '../helpers/bytes';
import { expectSyscallError, rejection, thrown } from '../helpers/errors';
import { O_CLOEXEC, fdFlags, isOpen, openFdCount } from '../helpers/fds';
import { describeUnless, itUnless } from '../helpers/skip';
import { useTempDir } from '../helpers/temp-dir';

// ---- Linux constants used below ----
const { O_RDONLY, O_WRONLY, O_RDWR, O_CREAT, O_EXCL, O_NONBLOCK, O_NOCTTY } = fs.constants;
const EFD_SEMAPHORE = 1;
const POLLNVAL = 0x20;
const FIONREAD = 0x541b;
const TCGETS = 0x5401;
const FIOCLEX = 0x5451;
const FIONCLEX = 0x5450;
const TIOCSPTLCK = 0x40045431; // _IOW('T', 0x31, int)
const TIOCGPTPEER = 0x5441; // _IO('T', 0x41): flags by value, returns a new fd (Linux 4.13)

export interface ContractOptions<B extends Binding> {
  /** Skip the whole suite, with this reason in its title. */
  skip?: string;
  /**
   * The binding's fds are not the kernel's (the purely virtual simulated kernel): the cases that
   * need kernel objects are skipped with the reason in their titles, and the leak cases count
   * the binding's own open fds with `countFds` (this process's /proc/self/fd never changes).
   */
  virtual?: { countFds: (b: B) => number };
}

/**
 * Register the contract suite for one binding: `name` is its `Binding.name`, then anything that
 * tells the run apart after a space. `create` is called once, before the tests.
 */
export function bindingContract<B extends Binding>(name: string, create: () => B, opts: ContractOptions<B> = {}): void {
  describeUnless(opts.skip, `Binding contract: ${name}`, () => {
    let b: B;
    const tmp = useTempDir(`vfio-contract-${name}`);

    beforeAll(() => {
      b = create();
    });

    /** Why a case that needs real kernel objects of some kind cannot run on this binding (undefined: it can). */
    const lacks = (what: string): string | undefined => (opts.virtual ? `${what} on a purely virtual binding` : undefined);
    const noFiles = lacks('no real files');
    const noFlags = lacks('no kernel fd flags (/proc/self/fdinfo)');
    /** Open fds: this process's, or the virtual binding's own. */
    const countFds = (): number => (opts.virtual ? opts.virtual.countFds(b) : openFdCount());

    const { withPipe, close } = pipeScope(() => b);

    it('reports its name', () => {
      expect(b.name).toBe(name.split(' ')[0]);
    });

    describe('open / close', () => {
      itUnless(noFiles, 'opens with O_CLOEXEC added and close releases the fd', () => {
        const file = tmp.file('cloexec');
        fs.writeFileSync(file, 'twelve bytes');
        const fd = b.open(file, O_RDONLY);
        expect(fd).toBeGreaterThan(2);
        expect(fdFlags(fd) & O_CLOEXEC).toBe(O_CLOEXEC);
        expect(fdFlags(fd) & 3).toBe(O_RDONLY);
        expect(fs.fstatSync(fd).size).toBe(12);
        b.close(fd);
        expect(isOpen(fd)).toBe(false);
      });

      itUnless(noFiles, 'passes flags and mode (O_CREAT | O_EXCL, mode 0o640)', () => {
        const file = tmp.file('created');
        const fd = b.open(file, O_WRONLY | O_CREAT | O_EXCL, 0o640);
        try {
          expect(fdFlags(fd) & 3).toBe(O_WRONLY);
          const umask = process.umask();
          expect(fs.statSync(file).mode & 0o777).toBe(0o640 & ~umask);
        } finally {
          b.close(fd);
        }
        expectSyscallError(thrown(() => b.open(file, O_WRONLY | O_CREAT | O_EXCL)), { code: 'EEXIST', errno: os.constants.errno.EEXIST, syscall: 'open', path: file });
      });

      it('throws ENOENT as a VfioError with the path', () => {
        const missing = tmp.file('does/not/exist');
        const err = expectSyscallError(thrown(() => b.open(missing, O_RDONLY)), {
          code: 'ENOENT',
          errno: 2,
          syscall: 'open',
          path: missing,
        });
        expect(err.message).toContain(missing);
      });

      it('throws EBADF when closing an fd that is not open', () => {
        const fd = b.eventfd(0);
        b.close(fd);
        expectSyscallError(thrown(() => b.close(fd)), { code: 'EBADF', errno: 9, syscall: 'close' });
      });

      itUnless(noFlags, 'creates pipes with O_CLOEXEC (and O_NONBLOCK when asked)', async () => {
        await withPipe(0, (r, w) => {
          expect(fdFlags(r) & (O_CLOEXEC | O_NONBLOCK | 3)).toBe(O_CLOEXEC | O_RDONLY);
          expect(fdFlags(w) & (O_CLOEXEC | O_NONBLOCK | 3)).toBe(O_CLOEXEC | O_WRONLY);
        });
        await withPipe(O_NONBLOCK, (r, w) => {
          expect(fdFlags(r) & (O_CLOEXEC | O_NONBLOCK)).toBe(O_CLOEXEC | O_NONBLOCK);
          expect(fdFlags(w) & (O_CLOEXEC | O_NONBLOCK)).toBe(O_CLOEXEC | O_NONBLOCK);
        });
      });

      itUnless(noFiles, 'leaks no fds over 1000 open/close cycles of a file', () => {
        const file = tmp.file('leak');
        fs.writeFileSync(file, 'x');
        const before = countFds();
        for (let i = 0; i < 1000; i++) b.close(b.open(file, O_RDONLY));
        expect(countFds()).toBe(before);
      });

      it('leaks no fds over pipes, eventfds and failed opens', () => {
        const before = countFds();
        for (let i = 0; i < 200; i++) {
          const [r, w] = b.pipe();
          b.close(r);
          b.close(w);
          b.close(b.eventfd(i));
          expect(() => b.open(tmp.file('missing'), O_RDONLY)).toThrow(VfioError);
        }
        expect(countFds()).toBe(before);
      });
    });

    describe('ioctl', () => {
      itUnless(lacks('no kernel pipes (FIONREAD is the kernel pipe\'s ioctl)'), 'passes a Buffer by pointer: FIONREAD on a pipe', async () => {
        await withPipe(0, async (r, w) => {
          expect(await b.write(w, Buffer.from('12345'))).toBe(5);
          const count = Buffer.alloc(4);
          expect(b.ioctl(r, FIONREAD, count)).toBe(0);
          expect(count.readInt32LE(0)).toBe(5);
        });
      });

      itUnless(noFiles, 'throws ENOTTY for a tty ioctl on a regular file', () => {
        const file = tmp.file('notty');
        fs.writeFileSync(file, '');
        const fd = b.open(file, O_RDONLY);
        try {
          expectSyscallError(thrown(() => b.ioctl(fd, TCGETS, Buffer.alloc(64))), {
            code: 'ENOTTY',
            errno: 25,
            syscall: 'ioctl',
          });
        } finally {
          b.close(fd);
        }
      });

      itUnless(noFlags, 'works without an argument: FIONCLEX / FIOCLEX toggle close-on-exec', () => {
        const fd = b.eventfd(0);
        try {
          expect(b.ioctl(fd, FIONCLEX)).toBe(0);
          expect(fdFlags(fd) & O_CLOEXEC).toBe(0);
          expect(b.ioctl(fd, FIOCLEX, 0)).toBe(0);
          expect(fdFlags(fd) & O_CLOEXEC).toBe(O_CLOEXEC);
        } finally {
          b.close(fd);
        }
      });

      const ptmxReason = noFiles ?? (() => {
        try {
          fs.closeSync(fs.openSync('/dev/ptmx', O_RDWR | O_NOCTTY));
          return undefined;
        } catch (e) {
          return `/dev/ptmx: ${(e as Error).message}`;
        }
      })();
      itUnless(
        ptmxReason,
        "passes an integer by value and returns the ioctl's value: TIOCGPTPEER",
        () => {
          const ptmx = b.open('/dev/ptmx', O_RDWR | O_NOCTTY);
          const peers: number[] = [];
          try {
            expect(b.ioctl(ptmx, TIOCSPTLCK, Buffer.alloc(4))).toBe(0); // unlock (int 0 by pointer)
            // The flags travel by value: with O_CLOEXEC the new fd has it, without it not.
            const withCloexec = b.ioctl(ptmx, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
            peers.push(withCloexec);
            expect(withCloexec).toBeGreaterThan(2);
            expect(isOpen(withCloexec)).toBe(true);
            expect(fdFlags(withCloexec) & (O_CLOEXEC | 3)).toBe(O_CLOEXEC | O_RDWR);
            const plain = b.ioctl(ptmx, TIOCGPTPEER, O_RDONLY | O_NOCTTY);
            peers.push(plain);
            expect(fdFlags(plain) & (O_CLOEXEC | 3)).toBe(O_RDONLY);
          } finally {
            for (const fd of peers) b.close(fd);
            b.close(ptmx);
          }
        },
      );

      it('throws EBADF on a closed fd', () => {
        const fd = b.eventfd(0);
        b.close(fd);
        expectSyscallError(thrown(() => b.ioctl(fd, FIONREAD, Buffer.alloc(4))), {
          code: 'EBADF',
          errno: 9,
          syscall: 'ioctl',
        });
      });
    });

    describe('pread / pwrite', () => {
      itUnless(noFiles, 'reads and writes at offsets, length defaulting to the buffer', () => {
        const file = tmp.file('rw');
        fs.writeFileSync(file, '');
        const fd = b.open(file, O_RDWR);
        try {
          expect(b.pwrite(fd, Buffer.from('hello'), 100)).toBe(5);
          expect(b.pwrite(fd, Buffer.from('ABCDEF'), 2, 3)).toBe(3); // only 'ABC'
          expect(fs.statSync(file).size).toBe(105);
          const disk = fs.readFileSync(file);
          expect(disk.subarray(100).toString()).toBe('hello');
          expect(disk.subarray(0, 5)).toEqual(Buffer.from([0, 0, 0x41, 0x42, 0x43]));

          const buf = Buffer.alloc(8, 0xee);
          expect(b.pread(fd, buf, 100, 5)).toBe(5);
          expect(buf).toEqual(Buffer.from([0x68, 0x65, 0x6c, 0x6c, 0x6f, 0xee, 0xee, 0xee]));
          expect(b.pread(fd, buf, 101)).toBe(4); // short: 4 bytes left before EOF
          expect(buf.subarray(0, 4).toString()).toBe('ello');
          expect(b.pread(fd, buf, 105)).toBe(0); // at EOF
          expect(b.pread(fd, buf, 1 << 40)).toBe(0); // far past EOF
        } finally {
          b.close(fd);
        }
      });

      itUnless(noFiles, 'does not move the file position', () => {
        const file = tmp.file('pos');
        fs.writeFileSync(file, 'abcdef');
        const fd = b.open(file, O_RDONLY);
        try {
          b.pread(fd, Buffer.alloc(3), 3);
          const head = Buffer.alloc(2);
          expect(fs.readSync(fd, head)).toBe(2);
          expect(head.toString()).toBe('ab');
        } finally {
          b.close(fd);
        }
      });

      it('throws ESPIPE on a pipe', async () => {
        await withPipe(0, (r, w) => {
          expectSyscallError(thrown(() => b.pread(r, Buffer.alloc(1), 0)), { code: 'ESPIPE', errno: 29, syscall: 'pread' });
          expectSyscallError(thrown(() => b.pwrite(w, Buffer.alloc(1), 0)), { code: 'ESPIPE', errno: 29, syscall: 'pwrite' });
        });
      });

      itUnless(noFiles, 'throws EBADF when writing a read-only fd', () => {
        const file = tmp.file('ro');
        fs.writeFileSync(file, 'ro');
        const fd = b.open(file, O_RDONLY);
        try {
          expectSyscallError(thrown(() => b.pwrite(fd, Buffer.from('x'), 0)), {
            code: 'EBADF',
            errno: 9,
            syscall: 'pwrite',
          });
        } finally {
          b.close(fd);
        }
      });

      it('rejects a length beyond the buffer and a negative position before the kernel', () => {
        const fd = b.eventfd(0);
        try {
          expect(() => b.pread(fd, Buffer.alloc(4), 0, 5)).toThrow(RangeError);
          expect(() => b.pwrite(fd, Buffer.alloc(4), -1)).toThrow(RangeError);
        } finally {
          b.close(fd);
        }
      });
    });

    describe('read / write (async)', () => {
      it('writes and reads a pipe, into a window of the buffer', async () => {
        await withPipe(0, async (r, w) => {
          expect(await b.write(w, Buffer.from('xxabcxx'), 2, 3)).toBe(3);
          const buf = Buffer.alloc(8, 0x2e); // '.'
          expect(await b.read(r, buf, 2, 5)).toBe(3);
          expect(buf.toString()).toBe('..abc...');
        });
      });

      it('resolves 0 at the end of a pipe whose writer closed', async () => {
        await withPipe(0, async (r, w) => {
          await b.write(w, Buffer.from('z'));
          close(w);
          const buf = Buffer.alloc(4);
          expect(await b.read(r, buf)).toBe(1);
          expect(await b.read(r, buf)).toBe(0);
        });
      });

      itUnless(noFiles, 'resolves 0 at the end of a file', async () => {
        const file = tmp.file('eof');
        fs.writeFileSync(file, '');
        const fd = b.open(file, O_RDONLY);
        try {
          expect(await b.read(fd, Buffer.alloc(16))).toBe(0);
        } finally {
          b.close(fd);
        }
      });

      it('does not block the event loop while it waits (blocking pipe)', async () => {
        await withPipe(0, async (r, w) => {
          let ticks = 0;
          const timer = setInterval(() => ticks++, 5);
          const pending = b.read(r, Buffer.alloc(16));
          await sleep(60);
          const ticksWhileBlocked = ticks;
          expect(await b.write(w, Buffer.from('late'))).toBe(4);
          const n = await pending;
          clearInterval(timer);
          expect(n).toBe(4);
          expect(ticksWhileBlocked).toBeGreaterThanOrEqual(3);
        });
      });

      it('waits out EAGAIN on a non-blocking pipe (read side)', async () => {
        await withPipe(O_NONBLOCK, async (r, w) => {
          const buf = Buffer.alloc(16);
          const start = performance.now();
          const pending = b.read(r, buf);
          setTimeout(() => void b.write(w, Buffer.from('after')), 40);
          expect(await pending).toBe(5);
          expect(performance.now() - start).toBeGreaterThanOrEqual(30);
          expect(buf.subarray(0, 5).toString()).toBe('after');
        });
      });

      it('waits out EAGAIN on a non-blocking pipe (write side) and may be short', async () => {
        await withPipe(O_NONBLOCK, async (r, w) => {
          const big = pattern(256 * 1024);
          const first = await b.write(w, big);
          expect(first).toBeGreaterThan(0);
          expect(first).toBeLessThan(big.length); // the pipe holds less: a short write
          let drained = false;
          const pending = b.write(w, big, first).then((n) => ({ n, drained }));
          await sleep(30);
          drained = true;
          const got = Buffer.alloc(first);
          let have = 0;
          while (have < first) have += await b.read(r, got, have, first - have);
          expect(got.equals(big.subarray(0, first))).toBe(true);
          const second = await pending;
          expect(second.drained).toBe(true); // it resolved only once there was room
          expect(second.n).toBeGreaterThan(0);
        });
      });

      it('rejects EBADF (closed fd, wrong direction) and EPIPE as VfioErrors', async () => {
        const fd = b.eventfd(0);
        b.close(fd);
        expectSyscallError(await rejection(b.read(fd, Buffer.alloc(8))), { code: 'EBADF', errno: 9, syscall: 'read' });
        await withPipe(0, async (r, w) => {
          expectSyscallError(await rejection(b.read(w, Buffer.alloc(8))), { code: 'EBADF', errno: 9, syscall: 'read' });
          expectSyscallError(await rejection(b.write(r, Buffer.alloc(8))), { code: 'EBADF', errno: 9, syscall: 'write' });
          close(r);
          expectSyscallError(await rejection(b.write(w, Buffer.alloc(8))), { code: 'EPIPE', errno: 32, syscall: 'write' });
        });
      });

      it('throws RangeError synchronously for a window outside the buffer', async () => {
        await withPipe(0, (r, w) => {
          expect(() => b.read(r, Buffer.alloc(4), 2, 3)).toThrow(RangeError);
          expect(() => b.read(r, Buffer.alloc(4), 5)).toThrow(RangeError);
          expect(() => b.write(w, Buffer.alloc(4), 0, 5)).toThrow(RangeError);
        });
      });
    });

    describe('eventfd', () => {
      itUnless(noFlags, 'creates eventfds close-on-exec and non-blocking', () => {
        const fd = b.eventfd(0);
        try {
          expect(fdFlags(fd) & (O_CLOEXEC | O_NONBLOCK)).toBe(O_CLOEXEC | O_NONBLOCK);
        } finally {
          b.close(fd);
        }
      });

      it('adds writes to the counter; a read returns and resets it, 0n when empty', () => {
        const fd = b.eventfd(0);
        try {
          b.eventfdWrite(fd, 3n);
          b.eventfdWrite(fd, 4n);
          expect(b.eventfdRead(fd)).toBe(7n);
          expect(b.eventfdRead(fd)).toBe(0n);
          b.eventfdWrite(fd, (1n << 40n) + 5n);
          expect(b.eventfdRead(fd)).toBe((1n << 40n) + 5n);
        } finally {
          b.close(fd);
        }
      });

      it('starts at initval and counts down by one with EFD_SEMAPHORE', () => {
        const fd = b.eventfd(2, EFD_SEMAPHORE);
        try {
          expect(b.eventfdRead(fd)).toBe(1n);
          expect(b.eventfdRead(fd)).toBe(1n);
          expect(b.eventfdRead(fd)).toBe(0n);
        } finally {
          b.close(fd);
        }
        const fd2 = b.eventfd(5);
        try {
          expect(b.eventfdRead(fd2)).toBe(5n);
        } finally {
          b.close(fd2);
        }
      });

      it('throws EINVAL for 2^64-1 and EAGAIN when the counter would overflow', () => {
        const fd = b.eventfd(0);
        try {
          expectSyscallError(thrown(() => b.eventfdWrite(fd, 0xffff_ffff_ffff_ffffn)), {
            code: 'EINVAL',
            errno: 22,
            syscall: 'write',
          });
          b.eventfdWrite(fd, 0xffff_ffff_ffff_fffen); // the maximum
          const err = thrown(() => b.eventfdWrite(fd, 1n));
          expect(err.errno).toBe(11);
          expect(err.syscall).toBe('write');
          // errno 11 has two names; src/errors.ts errnoName() currently says EWOULDBLOCK.
          expect(['EAGAIN', 'EWOULDBLOCK']).toContain(err.code);
          expect(b.eventfdRead(fd)).toBe(0xffff_ffff_ffff_fffen);
        } finally {
          b.close(fd);
        }
      });
    });

    describe('poll', () => {
      it('resolves 0 after the timeout when nothing is ready', async () => {
        const fd = b.eventfd(0);
        try {
          const start = performance.now();
          expect(await b.poll(fd, POLLIN, 50)).toBe(0);
          expect(performance.now() - start).toBeGreaterThanOrEqual(40);
          expect(await b.poll(fd, POLLIN, 0)).toBe(0);
        } finally {
          b.close(fd);
        }
      });

      it('resolves the revents when ready: POLLIN, POLLOUT', async () => {
        const fd = b.eventfd(0);
        try {
          b.eventfdWrite(fd, 1n);
          expect(await b.poll(fd, POLLIN, 1000)).toBe(POLLIN);
        } finally {
          b.close(fd);
        }
        await withPipe(0, async (_r, w) => {
          expect(await b.poll(w, POLLOUT, 1000)).toBe(POLLOUT);
        });
      });

      it('wakes up when data arrives, and waits forever for timeout < 0', async () => {
        await withPipe(0, async (r, w) => {
          const pending = b.poll(r, POLLIN, -1);
          setTimeout(() => void b.write(w, Buffer.from('!')), 30);
          expect(await pending).toBe(POLLIN);
        });
      });

      it('reports POLLHUP and POLLNVAL in revents rather than failing', async () => {
        await withPipe(0, async (r, w) => {
          close(w);
          expect((await b.poll(r, POLLIN, 1000)) & POLLHUP).toBe(POLLHUP);
        });
        const fd = b.eventfd(0);
        b.close(fd);
        expect(await b.poll(fd, POLLIN, 0)).toBe(POLLNVAL);
      });
    });
  });
}

/**
 * The binding contract suite: one set of tests, run against every implementation of
 * `Binding` (src/binding/types.ts). Each binding is added with one line in
 * binding.contract.test.ts:
 *
 *   bindingContract('native', () => new NativeBinding());
 *
 * Everything here runs on real kernel objects (temp files, pipes, eventfds, /dev/ptmx), so a
 * binding that wraps another (the simulated one hands real fds through) is held to the same
 * rules. Cases that need something the host may lack are skipped with the reason in the title.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { crc32 } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VfioError } from '../../src/base/errors';
import { POLLHUP, POLLIN, POLLOUT, type Binding } from '../../src/kernel/binding/types';
import { pattern } from '../helpers/bytes';

// ---- Linux constants used below ----
const { O_RDONLY, O_WRONLY, O_RDWR, O_CREAT, O_EXCL, O_NONBLOCK, O_NOCTTY } = fs.constants;
const O_CLOEXEC = 0o2000000;
const EFD_SEMAPHORE = 1;
const POLLNVAL = 0x20;
const FIONREAD = 0x541b;
const TCGETS = 0x5401;
const FIOCLEX = 0x5451;
const FIONCLEX = 0x5450;
const TIOCSPTLCK = 0x40045431; // _IOW('T', 0x31, int)
const TIOCGPTPEER = 0x5441; // _IO('T', 0x41): flags by value, returns a new fd (Linux 4.13)

// ---- helpers ----

/** Open flags of an fd, from /proc/self/fdinfo (octal). */
export function fdFlags(fd: number): number {
  const m = /^flags:\s*([0-7]+)$/m.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
  if (!m) throw new Error(`no flags in /proc/self/fdinfo/${fd}`);
  return parseInt(m[1], 8);
}

/** Number of open fds of this process. */
export function openFdCount(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

function isOpen(fd: number): boolean {
  return fs.existsSync(`/proc/self/fd/${fd}`);
}

interface SysErrorShape {
  code: string;
  errno: number;
  syscall: string;
  path?: string;
}

function expectSysError(e: unknown, want: SysErrorShape): VfioError {
  expect(e).toBeInstanceOf(VfioError);
  const err = e as VfioError;
  expect({ code: err.code, errno: err.errno, syscall: err.syscall, kind: err.kind }).toEqual({
    code: want.code,
    errno: want.errno,
    syscall: want.syscall,
    kind: 'syscall',
  });
  if (want.path !== undefined) expect(err.path).toBe(want.path);
  expect(err.message).toContain(want.code);
  return err;
}

function catchSync(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  throw new Error('expected a throw');
}

async function catchAsync(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (e) {
    return e;
  }
  throw new Error('expected a rejection');
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));


/**
 * Fill `block` with block number `i` of a long deterministic stream (cheap: 4 bytes a step).
 * Self-contained, so that its source text also runs in a worker.
 */
function fillBlock(block: Buffer, i: number): Buffer {
  for (let j = 0; j < block.length; j += 4) block.writeUInt32LE((Math.imul(j + 1, 2654435761) ^ Math.imul(i + 1, 0x9e3779b9)) >>> 0, j);
  return block;
}

export interface ContractOptions {
  /** Skip the whole suite, with this reason in its title. */
  skip?: string;
}

/**
 * Register the contract suite for one binding. `create` is called once, before the tests.
 */
export function bindingContract(name: string, create: () => Binding, opts: ContractOptions = {}): void {
  const title = `Binding contract: ${name}` + (opts.skip ? ` (skipped: ${opts.skip})` : '');
  describe.skipIf(opts.skip !== undefined)(title, () => {
    let b: Binding;
    let dir: string;
    const tmp = (file: string) => path.join(dir, file);

    beforeAll(() => {
      b = create();
      dir = fs.mkdtempSync(path.join(os.tmpdir(), `vfio-contract-${name}-`));
    });
    afterAll(() => {
      if (dir) fs.rmSync(dir, { recursive: true, force: true });
    });

    /** Run `fn` with a fresh pipe (closed afterwards, whichever ends are still open). */
    async function withPipe<T>(flags: number, fn: (r: number, w: number) => Promise<T> | T): Promise<T> {
      const [r, w] = b.pipe(flags);
      try {
        return await fn(r, w);
      } finally {
        for (const fd of [r, w]) if (isOpen(fd)) fs.closeSync(fd);
      }
    }

    it('reports its name', () => {
      expect(b.name).toBe(name);
    });

    describe('open / close', () => {
      it('opens with O_CLOEXEC added and close releases the fd', () => {
        const file = tmp('cloexec');
        fs.writeFileSync(file, 'twelve bytes');
        const fd = b.open(file, O_RDONLY);
        expect(fd).toBeGreaterThan(2);
        expect(fdFlags(fd) & O_CLOEXEC).toBe(O_CLOEXEC);
        expect(fdFlags(fd) & 3).toBe(O_RDONLY);
        expect(fs.fstatSync(fd).size).toBe(12);
        b.close(fd);
        expect(isOpen(fd)).toBe(false);
      });

      it('passes flags and mode (O_CREAT | O_EXCL, mode 0o640)', () => {
        const file = tmp('created');
        const fd = b.open(file, O_WRONLY | O_CREAT | O_EXCL, 0o640);
        try {
          expect(fdFlags(fd) & 3).toBe(O_WRONLY);
          const umask = process.umask();
          expect(fs.statSync(file).mode & 0o777).toBe(0o640 & ~umask);
        } finally {
          b.close(fd);
        }
        expectSysError(
          catchSync(() => b.open(file, O_WRONLY | O_CREAT | O_EXCL)),
          { code: 'EEXIST', errno: os.constants.errno.EEXIST, syscall: 'open', path: file },
        );
      });

      it('throws ENOENT as a VfioError with the path', () => {
        const missing = tmp('does/not/exist');
        const err = expectSysError(catchSync(() => b.open(missing, O_RDONLY)), {
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
        expectSysError(catchSync(() => b.close(fd)), { code: 'EBADF', errno: 9, syscall: 'close' });
      });

      it('creates pipes with O_CLOEXEC (and O_NONBLOCK when asked)', async () => {
        await withPipe(0, (r, w) => {
          expect(fdFlags(r) & (O_CLOEXEC | O_NONBLOCK | 3)).toBe(O_CLOEXEC | O_RDONLY);
          expect(fdFlags(w) & (O_CLOEXEC | O_NONBLOCK | 3)).toBe(O_CLOEXEC | O_WRONLY);
        });
        await withPipe(O_NONBLOCK, (r, w) => {
          expect(fdFlags(r) & (O_CLOEXEC | O_NONBLOCK)).toBe(O_CLOEXEC | O_NONBLOCK);
          expect(fdFlags(w) & (O_CLOEXEC | O_NONBLOCK)).toBe(O_CLOEXEC | O_NONBLOCK);
        });
      });

      it('leaks no fds over 1000 open/close cycles (and pipes, eventfds, failures)', () => {
        const file = tmp('leak');
        fs.writeFileSync(file, 'x');
        const before = openFdCount();
        for (let i = 0; i < 1000; i++) b.close(b.open(file, O_RDONLY));
        for (let i = 0; i < 200; i++) {
          const [r, w] = b.pipe();
          b.close(r);
          b.close(w);
          b.close(b.eventfd(i));
          expect(() => b.open(tmp('missing'), O_RDONLY)).toThrow(VfioError);
        }
        expect(openFdCount()).toBe(before);
      });
    });

    describe('ioctl', () => {
      it('passes a Buffer by pointer: FIONREAD on a pipe', async () => {
        await withPipe(0, async (r, w) => {
          expect(await b.write(w, Buffer.from('12345'))).toBe(5);
          const count = Buffer.alloc(4);
          expect(b.ioctl(r, FIONREAD, count)).toBe(0);
          expect(count.readInt32LE(0)).toBe(5);
        });
      });

      it('throws ENOTTY for a tty ioctl on a regular file', () => {
        const file = tmp('notty');
        fs.writeFileSync(file, '');
        const fd = b.open(file, O_RDONLY);
        try {
          expectSysError(catchSync(() => b.ioctl(fd, TCGETS, Buffer.alloc(64))), {
            code: 'ENOTTY',
            errno: 25,
            syscall: 'ioctl',
          });
        } finally {
          b.close(fd);
        }
      });

      it('works without an argument: FIONCLEX / FIOCLEX toggle close-on-exec', () => {
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

      const ptmxReason = (() => {
        try {
          fs.closeSync(fs.openSync('/dev/ptmx', O_RDWR | O_NOCTTY));
          return undefined;
        } catch (e) {
          return `/dev/ptmx: ${(e as Error).message}`;
        }
      })();
      it.skipIf(ptmxReason !== undefined)(
        `passes an integer by value and returns the ioctl's value: TIOCGPTPEER${ptmxReason ? ` (skipped: ${ptmxReason})` : ''}`,
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
        expectSysError(catchSync(() => b.ioctl(fd, FIONREAD, Buffer.alloc(4))), {
          code: 'EBADF',
          errno: 9,
          syscall: 'ioctl',
        });
      });
    });

    describe('pread / pwrite', () => {
      it('reads and writes at offsets, length defaulting to the buffer', () => {
        const file = tmp('rw');
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

      it('does not move the file position', () => {
        const file = tmp('pos');
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

      it('throws ESPIPE on a pipe and EBADF when writing a read-only fd', async () => {
        await withPipe(0, (r) => {
          expectSysError(catchSync(() => b.pread(r, Buffer.alloc(1), 0)), {
            code: 'ESPIPE',
            errno: 29,
            syscall: 'pread',
          });
        });
        const file = tmp('ro');
        fs.writeFileSync(file, 'ro');
        const fd = b.open(file, O_RDONLY);
        try {
          expectSysError(catchSync(() => b.pwrite(fd, Buffer.from('x'), 0)), {
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

      it('resolves 0 at end of file', async () => {
        await withPipe(0, async (r, w) => {
          await b.write(w, Buffer.from('z'));
          b.close(w);
          const buf = Buffer.alloc(4);
          expect(await b.read(r, buf)).toBe(1);
          expect(await b.read(r, buf)).toBe(0);
        });
        const file = tmp('eof');
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
          fs.writeSync(w, 'late');
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
          setTimeout(() => fs.writeSync(w, 'after'), 40);
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
          while (have < first) have += fs.readSync(r, got, have, first - have, null);
          expect(got.equals(big.subarray(0, first))).toBe(true);
          const second = await pending;
          expect(second.drained).toBe(true); // it resolved only once there was room
          expect(second.n).toBeGreaterThan(0);
        });
      });

      it('rejects EBADF (closed fd, wrong direction) and EPIPE as VfioErrors', async () => {
        const fd = b.eventfd(0);
        b.close(fd);
        expectSysError(await catchAsync(b.read(fd, Buffer.alloc(8))), { code: 'EBADF', errno: 9, syscall: 'read' });
        await withPipe(0, async (r, w) => {
          expectSysError(await catchAsync(b.read(w, Buffer.alloc(8))), { code: 'EBADF', errno: 9, syscall: 'read' });
          expectSysError(await catchAsync(b.write(r, Buffer.alloc(8))), { code: 'EBADF', errno: 9, syscall: 'write' });
          b.close(r);
          expectSysError(await catchAsync(b.write(w, Buffer.alloc(8))), { code: 'EPIPE', errno: 32, syscall: 'write' });
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
      it('adds writes to the counter; a read returns and resets it, 0n when empty', () => {
        const fd = b.eventfd(0);
        try {
          expect(fdFlags(fd) & (O_CLOEXEC | O_NONBLOCK)).toBe(O_CLOEXEC | O_NONBLOCK);
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
          expectSysError(catchSync(() => b.eventfdWrite(fd, 0xffff_ffff_ffff_ffffn)), {
            code: 'EINVAL',
            errno: 22,
            syscall: 'write',
          });
          b.eventfdWrite(fd, 0xffff_ffff_ffff_fffen); // the maximum
          const err = catchSync(() => b.eventfdWrite(fd, 1n)) as VfioError;
          expect(err).toBeInstanceOf(VfioError);
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
          setTimeout(() => fs.writeSync(w, '!'), 30);
          expect(await pending).toBe(POLLIN);
        });
      });

      it('reports POLLHUP and POLLNVAL in revents rather than failing', async () => {
        await withPipe(0, async (r, w) => {
          b.close(w);
          expect((await b.poll(r, POLLIN, 1000)) & POLLHUP).toBe(POLLHUP);
        });
        const fd = b.eventfd(0);
        b.close(fd);
        expect(await b.poll(fd, POLLIN, 0)).toBe(POLLNVAL);
      });
    });
  });
}

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
import { POLLHUP, POLLIN, POLLOUT, type Binding, type PumpError, type PumpOptions } from '../../src/kernel/binding/types';
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

    describe('pump', () => {
      const pumpReason = () => (b.pump ? undefined : 'binding has no pump');
      const pump = (src: number, dst: number, buf: Buffer, opts?: PumpOptions | number) => b.pump!(src, dst, buf, opts);

      /** Open a source file holding `data` and an empty destination file. */
      function files(label: string, data: Buffer): { src: number; dst: number; dstPath: string; close(): void } {
        const srcPath = tmp(`${label}.src`);
        const dstPath = tmp(`${label}.dst`);
        fs.writeFileSync(srcPath, data);
        fs.writeFileSync(dstPath, '');
        const src = b.open(srcPath, O_RDONLY);
        const dst = b.open(dstPath, O_WRONLY);
        return { src, dst, dstPath, close: () => [src, dst].forEach((fd) => b.close(fd)) };
      }

      /** Bytes waiting in a pipe (FIONREAD). */
      function pipeBytes(fd: number): number {
        const count = Buffer.alloc(4);
        b.ioctl(fd, FIONREAD, count);
        return count.readInt32LE(0);
      }

      function expectPumpError(e: unknown, want: { code: string; kind: string; bytesDone: number; syscall?: string }): PumpError {
        expect(e).toBeInstanceOf(VfioError);
        const err = e as PumpError;
        expect({ code: err.code, kind: err.kind, bytesDone: err.bytesDone, syscall: err.syscall }).toEqual({
          code: want.code,
          kind: want.kind,
          bytesDone: want.bytesDone,
          syscall: want.syscall,
        });
        return err;
      }

      it('writeback: a hint that changes no byte and no result, to a file or a pipe, plain or framed', async () => {
        if (pumpReason()) return;
        const data = pattern(3 * 65536 + 17, 9);
        for (const writeback of [0, 1, 4096, 65536, 2 ** 53 - 1]) {
          const f = files(`wb-${writeback}`, data);
          try {
            expect(await pump(f.src, f.dst, Buffer.alloc(8192), { dstOffset: 5, writeback })).toEqual({ bytes: data.length, crc32: crc32(data), end: 'eof' });
            expect(fs.readFileSync(f.dstPath).subarray(5).equals(data)).toBe(true);
          } finally {
            f.close();
          }
          const g = files(`wbf-${writeback}`, data);
          try {
            const r = await pump(g.src, g.dst, Buffer.alloc(8192 + 8), { dstOffset: 0, writeback, frame: { mode: 'write', chunk: 8192 } });
            expect(r).toMatchObject({ bytes: data.length, chunks: Math.ceil(data.length / 8192), end: 'eof' });
            expect(fs.statSync(g.dstPath).size).toBe(r.written);
          } finally {
            g.close();
          }
          // Not a regular file (nothing to write back): ignored.
          await withPipe(0, async (r, w) => {
            const src = b.open(tmp(`wb-${writeback}.src`), O_RDONLY);
            try {
              const small = data.subarray(0, 1000);
              expect(await pump(src, w, Buffer.alloc(512), { limit: small.length, writeback })).toEqual({ bytes: small.length, crc32: crc32(small), end: 'limit' });
              const got = Buffer.alloc(small.length);
              expect(fs.readSync(r, got)).toBe(small.length);
              expect(got.equals(small)).toBe(true);
            } finally {
              b.close(src);
            }
          });
        }
        const buf = Buffer.alloc(16);
        expect(() => pump(0, 1, buf, { writeback: -1 })).toThrow(RangeError);
        expect(() => pump(0, 1, buf, { writeback: 1.5 })).toThrow(RangeError);
        expect(() => pump(0, 1, buf, { writeback: '1' as never })).toThrow(TypeError);
      });

      it('copies a file exactly to its end, with zlib crc32 over the data', async () => {
        if (pumpReason()) return;
        const data = pattern(1024 * 1024 + 123);
        const f = files('whole', data);
        try {
          const res = await pump(f.src, f.dst, Buffer.alloc(64 * 1024));
          expect(res).toEqual({ bytes: data.length, crc32: crc32(data), end: 'eof' });
          expect(fs.readFileSync(f.dstPath).equals(data)).toBe(true);
        } finally {
          f.close();
        }
      });

      it("limit: stops after exactly that many bytes ('limit') and leaves the source positioned after them", async () => {
        if (pumpReason()) return;
        const data = pattern(5000, 99);
        const f = files('limit', data);
        try {
          const res = await pump(f.src, f.dst, Buffer.alloc(256), { limit: 1000 });
          expect(res).toEqual({ bytes: 1000, crc32: crc32(data.subarray(0, 1000)), end: 'limit' });
          expect(fs.readFileSync(f.dstPath).equals(data.subarray(0, 1000))).toBe(true);
          const next = Buffer.alloc(4);
          expect(fs.readSync(f.src, next)).toBe(4);
          expect(next).toEqual(data.subarray(1000, 1004));
          // limit 0 touches nothing and still ends with 'limit'.
          expect(await pump(f.src, f.dst, Buffer.alloc(256), { limit: 0 })).toEqual({ bytes: 0, crc32: 0, end: 'limit' });
          // A limit that is a multiple of the chunk size stops exactly, without an extra read.
          expect(await pump(f.src, f.dst, Buffer.alloc(100), { limit: 300 })).toEqual({
            bytes: 300,
            crc32: crc32(data.subarray(1004, 1304)),
            end: 'limit',
          });
        } finally {
          f.close();
        }
      });

      it("limit: ends with 'eof' when the source ends first", async () => {
        if (pumpReason()) return;
        const data = pattern(3000, 5);
        const f = files('limit-eof', data);
        try {
          expect(await pump(f.src, f.dst, Buffer.alloc(1024), { limit: 10_000 })).toEqual({
            bytes: 3000,
            crc32: crc32(data),
            end: 'eof',
          });
          expect(fs.readFileSync(f.dstPath).equals(data)).toBe(true);
        } finally {
          f.close();
        }
        // A stream too: the write end closed after 5 bytes.
        await withPipe(0, async (r, w) => {
          await withPipe(0, async (r2, w2) => {
            fs.writeSync(w, 'short');
            b.close(w);
            expect(await pump(r, w2, Buffer.alloc(64), { limit: 64 })).toEqual({
              bytes: 5,
              crc32: crc32(Buffer.from('short')),
              end: 'eof',
            });
            expect(pipeBytes(r2)).toBe(5);
          });
        });
      });

      it("returns 0 bytes, crc 0 and 'eof' for an empty source; the number form is the limit (-1: none)", async () => {
        if (pumpReason()) return;
        const f = files('empty', Buffer.alloc(0));
        try {
          expect(await pump(f.src, f.dst, Buffer.alloc(16))).toEqual({ bytes: 0, crc32: 0, end: 'eof' });
          expect(await pump(f.src, f.dst, Buffer.alloc(16), -1)).toEqual({ bytes: 0, crc32: 0, end: 'eof' });
          expect(await pump(f.src, f.dst, Buffer.alloc(16), {})).toEqual({ bytes: 0, crc32: 0, end: 'eof' });
        } finally {
          f.close();
        }
        const data = pattern(100, 8);
        const g = files('legacy-limit', data);
        try {
          expect(await pump(g.src, g.dst, Buffer.alloc(16), 40)).toEqual({ bytes: 40, crc32: crc32(data.subarray(0, 40)), end: 'limit' });
        } finally {
          g.close();
        }
      });

      it('srcOffset / dstOffset: pread and pwrite by position, advancing; the fds\' own offsets are untouched', async () => {
        if (pumpReason()) return;
        const data = pattern(10_000, 21);
        const srcPath = tmp('offsets.src');
        const dstPath = tmp('offsets.dst');
        fs.writeFileSync(srcPath, data);
        fs.writeFileSync(dstPath, '');
        const src = b.open(srcPath, O_RDONLY);
        const dst = b.open(dstPath, O_RDWR);
        try {
          expect(fs.readSync(src, Buffer.alloc(10))).toBe(10); // the fd's own offset is now 10
          // An odd chunk size, so the positions advance across several chunks.
          const res = await pump(src, dst, Buffer.alloc(777), { srcOffset: 3000, dstOffset: 100, limit: 5000 });
          expect(res).toEqual({ bytes: 5000, crc32: crc32(data.subarray(3000, 8000)), end: 'limit' });
          const out = fs.readFileSync(dstPath);
          expect(out.length).toBe(5100);
          expect(out.subarray(0, 100).equals(Buffer.alloc(100))).toBe(true);
          expect(out.subarray(100).equals(data.subarray(3000, 8000))).toBe(true);
          // Neither fd's offset moved: a read continues at 10, a write lands at 0.
          const next = Buffer.alloc(4);
          expect(fs.readSync(src, next)).toBe(4);
          expect(next.equals(data.subarray(10, 14))).toBe(true);
          fs.writeSync(dst, 'X');
          expect(fs.readFileSync(dstPath)[0]).toBe(0x58);
          // To the end of the file from an offset, and from past the end.
          expect(await pump(src, dst, Buffer.alloc(512), { srcOffset: 9000, dstOffset: 0 })).toEqual({
            bytes: 1000,
            crc32: crc32(data.subarray(9000)),
            end: 'eof',
          });
          expect(fs.readFileSync(dstPath).subarray(0, 1000).equals(data.subarray(9000))).toBe(true);
          expect(await pump(src, dst, Buffer.alloc(512), { srcOffset: 2 ** 40 })).toEqual({ bytes: 0, crc32: 0, end: 'eof' });
        } finally {
          b.close(src);
          b.close(dst);
        }
      });

      it("srcOffset / dstOffset on a pipe reject with ESPIPE, syscall 'pread' / 'pwrite'", async () => {
        if (pumpReason()) return;
        const f = files('espipe', pattern(100));
        try {
          await withPipe(0, async (r, w) => {
            fs.writeSync(w, 'abc');
            const readErr = expectSysError(await catchAsync(pump(r, f.dst, Buffer.alloc(64), { srcOffset: 0 })), {
              code: 'ESPIPE',
              errno: 29,
              syscall: 'pread',
            }) as PumpError;
            expect(readErr.bytesDone).toBe(0);
            const writeErr = expectSysError(await catchAsync(pump(f.src, w, Buffer.alloc(64), { dstOffset: 0 })), {
              code: 'ESPIPE',
              errno: 29,
              syscall: 'pwrite',
            }) as PumpError;
            expect(writeErr.bytesDone).toBe(0);
          });
        } finally {
          f.close();
        }
      });

      it('expectCrc matching: the whole chunk is read into buf, checked, then written', async () => {
        if (pumpReason()) return;
        const data = pattern(20_000, 31);
        const chunk = data.subarray(4000, 12_000);
        const f = files('crc-ok', data);
        try {
          const buf = Buffer.alloc(10_000);
          const res = await pump(f.src, f.dst, buf, { srcOffset: 4000, limit: chunk.length, expectCrc: crc32(chunk) });
          expect(res).toEqual({ bytes: chunk.length, crc32: crc32(chunk), end: 'limit' });
          expect(fs.readFileSync(f.dstPath).equals(chunk)).toBe(true);
          expect(buf.subarray(0, chunk.length).equals(chunk)).toBe(true); // buf holds the chunk
        } finally {
          f.close();
        }
        // From a stream, where the chunk arrives in pieces, into a pipe.
        await withPipe(0, async (r, w) => {
          const src = pattern(3000, 32);
          await withPipe(O_NONBLOCK, async (r2, w2) => {
            const pending = pump(r2, w, Buffer.alloc(3000), { limit: 3000, expectCrc: crc32(src) });
            for (let off = 0; off < src.length; off += 1000) {
              await sleep(5);
              fs.writeSync(w2, src, off, 1000);
            }
            expect(await pending).toEqual({ bytes: 3000, crc32: crc32(src), end: 'limit' });
          });
          const got = Buffer.alloc(3000);
          let n = 0;
          while (n < got.length) n += fs.readSync(r, got, n, got.length - n, null);
          expect(got.equals(src)).toBe(true);
        });
      });

      it("expectCrc mismatch: rejects EVFIO_CHECKSUM (kind 'format') and writes nothing", async () => {
        if (pumpReason()) return;
        const data = pattern(8192, 41);
        const good = crc32(data);
        const bad = (good ^ 0x00010000) >>> 0;
        const f = files('crc-bad', data);
        try {
          const err = expectPumpError(await catchAsync(pump(f.src, f.dst, Buffer.alloc(8192), { limit: 8192, expectCrc: bad })), {
            code: 'EVFIO_CHECKSUM',
            kind: 'format',
            bytesDone: 0,
          });
          expect(err.errno).toBeUndefined();
          expect(err.message).toContain('CRC-32 mismatch');
          expect(err.message).toContain(bad.toString(16).padStart(8, '0'));
          expect(err.message).toContain(good.toString(16).padStart(8, '0'));
          expect(fs.statSync(f.dstPath).size).toBe(0);
        } finally {
          f.close();
        }
        // Into a pipe (as into a RESUMING data_fd): not one byte arrives.
        await withPipe(0, async (r, w) => {
          const g = files('crc-bad-2', data);
          try {
            expectPumpError(await catchAsync(pump(g.src, w, Buffer.alloc(10_000), { srcOffset: 0, limit: 8192, expectCrc: bad })), {
              code: 'EVFIO_CHECKSUM',
              kind: 'format',
              bytesDone: 0,
            });
            expect(pipeBytes(r)).toBe(0);
            // The same chunk with the right checksum goes through.
            expect(await pump(g.src, w, Buffer.alloc(10_000), { srcOffset: 0, limit: 8192, expectCrc: good })).toEqual({
              bytes: 8192,
              crc32: good,
              end: 'limit',
            });
            expect(pipeBytes(r)).toBe(8192);
          } finally {
            g.close();
          }
        });
      });

      it("expectCrc with a source that ends early: rejects EVFIO_SNAPSHOT_TRUNCATED (kind 'format'), nothing written", async () => {
        if (pumpReason()) return;
        const data = pattern(1000, 51);
        const f = files('crc-short', data);
        try {
          const err = expectPumpError(
            await catchAsync(pump(f.src, f.dst, Buffer.alloc(4096), { limit: 4096, expectCrc: crc32(data) })),
            { code: 'EVFIO_SNAPSHOT_TRUNCATED', kind: 'format', bytesDone: 0 },
          );
          expect(err.message).toContain('after 1000 of 4096 bytes');
          expect(fs.statSync(f.dstPath).size).toBe(0);
        } finally {
          f.close();
        }
      });

      it("precopy: a read of 0 ends with 'for-now' (the write end of the pipe is closed), the limit still wins", async () => {
        if (pumpReason()) return;
        const data = pattern(3000, 61);
        const dstPath = tmp('precopy.dst');
        fs.writeFileSync(dstPath, '');
        const dst = b.open(dstPath, O_WRONLY);
        try {
          await withPipe(0, async (r, w) => {
            fs.writeSync(w, data);
            expect(await pump(r, dst, Buffer.alloc(1024), { precopy: true, limit: 1000 })).toEqual({
              bytes: 1000,
              crc32: crc32(data.subarray(0, 1000)),
              end: 'limit',
            });
            b.close(w);
            expect(await pump(r, dst, Buffer.alloc(1024), { precopy: true })).toEqual({
              bytes: 2000,
              crc32: crc32(data.subarray(1000)),
              end: 'for-now',
            });
            expect(await pump(r, dst, Buffer.alloc(1024), { precopy: true })).toEqual({ bytes: 0, crc32: 0, end: 'for-now' });
            expect(await pump(r, dst, Buffer.alloc(1024), { precopy: false })).toEqual({ bytes: 0, crc32: 0, end: 'eof' });
          });
          expect(fs.readFileSync(dstPath).equals(data)).toBe(true);
        } finally {
          b.close(dst);
        }
      });

      it('streams a non-blocking pipe to a file while a writer feeds it (EAGAIN on read)', async () => {
        if (pumpReason()) return;
        const data = pattern(200 * 1024, 7);
        const dstPath = tmp('from-pipe.dst');
        fs.writeFileSync(dstPath, '');
        const dst = b.open(dstPath, O_WRONLY);
        try {
          await withPipe(O_NONBLOCK, async (r, w) => {
            const pumping = pump(r, dst, Buffer.alloc(8192));
            for (let off = 0; off < data.length; ) {
              off += await b.write(w, data, off, Math.min(30_000, data.length - off));
              await sleep(2);
            }
            b.close(w);
            expect(await pumping).toEqual({ bytes: data.length, crc32: crc32(data), end: 'eof' });
          });
          expect(fs.readFileSync(dstPath).equals(data)).toBe(true);
        } finally {
          b.close(dst);
        }
      });

      it('streams a file into a non-blocking pipe with a slow reader (EAGAIN and short writes)', async () => {
        if (pumpReason()) return;
        const data = pattern(300 * 1024, 11);
        const srcPath = tmp('to-pipe.src');
        fs.writeFileSync(srcPath, data);
        const src = b.open(srcPath, O_RDONLY);
        try {
          await withPipe(O_NONBLOCK, async (r, w) => {
            const pumping = pump(src, w, Buffer.alloc(100 * 1024)); // chunks larger than the pipe
            const got: Buffer[] = [];
            let total = 0;
            const buf = Buffer.alloc(16 * 1024);
            while (total < data.length) {
              const n = await b.read(r, buf);
              expect(n).toBeGreaterThan(0);
              got.push(Buffer.from(buf.subarray(0, n)));
              total += n;
              await sleep(1);
            }
            expect(await pumping).toEqual({ bytes: data.length, crc32: crc32(data), end: 'eof' });
            expect(Buffer.concat(got).equals(data)).toBe(true);
          });
        } finally {
          b.close(src);
        }
      });

      it("rejects with syscall 'read' or 'write' for the side that failed, with bytesDone", async () => {
        if (pumpReason()) return;
        const data = pattern(10_000, 3);
        const f = files('errors', data);
        try {
          const closed = b.eventfd(0);
          b.close(closed);
          for (const [src, dst, syscall] of [
            [closed, f.dst, 'read'],
            [f.src, closed, 'write'],
            [f.src, f.src, 'write'], // a read-only destination
          ] as const) {
            const err = expectSysError(await catchAsync(pump(src, dst, Buffer.alloc(64))), { code: 'EBADF', errno: 9, syscall });
            expect((err as PumpError).bytesDone).toBe(0);
          }
          await withPipe(0, async (r, w) => {
            b.close(r);
            expectSysError(await catchAsync(pump(f.src, w, Buffer.alloc(64), { srcOffset: 0 })), {
              code: 'EPIPE',
              errno: 32,
              syscall: 'write',
            });
          });
        } finally {
          f.close();
        }
      });

      it('fails mid-stream when the reader goes away: EPIPE, with the bytes written so far in bytesDone', async () => {
        if (pumpReason()) return;
        const data = pattern(1024 * 1024, 13);
        const srcPath = tmp('midstream.src');
        fs.writeFileSync(srcPath, data);
        const src = b.open(srcPath, O_RDONLY);
        const [r, w] = b.pipe();
        try {
          const pumping = catchAsync(pump(src, w, Buffer.alloc(32 * 1024)));
          // Take 256 KiB, check it, then hang up.
          const got = Buffer.alloc(256 * 1024);
          let n = 0;
          while (n < got.length) n += await b.read(r, got, n);
          expect(got.equals(data.subarray(0, got.length))).toBe(true);
          b.close(r);
          const err = expectSysError(await pumping, { code: 'EPIPE', errno: 32, syscall: 'write' }) as PumpError;
          expect(err.bytesDone).toBeGreaterThanOrEqual(got.length);
          expect(err.bytesDone).toBeLessThan(data.length);
        } finally {
          b.close(src);
          b.close(w);
          if (isOpen(r)) b.close(r);
        }
      });

      it('carries 64 MiB through a pipe from a concurrent producer thread, with the same crc as zlib.crc32', async () => {
        if (pumpReason()) return;
        const blocks = 64;
        const [r, w] = b.pipe();
        const devNull = b.open('/dev/null', O_WRONLY);
        let expected = 0;
        const block = Buffer.alloc(1 << 20);
        for (let i = 0; i < blocks; i++) expected = crc32(fillBlock(block, i), expected);
        // The producer owns (and closes) the write end: that is the end of the stream.
        const producer = new Worker(
          `const { workerData } = require('node:worker_threads');
           const fs = require('node:fs');
           const fillBlock = ${fillBlock.toString()};
           const block = Buffer.alloc(1 << 20);
           for (let i = 0; i < workerData.blocks; i++) {
             fillBlock(block, i);
             for (let off = 0; off < block.length; ) off += fs.writeSync(workerData.fd, block, off);
           }
           fs.closeSync(workerData.fd);`,
          { eval: true, workerData: { fd: w, blocks } },
        );
        const exited = new Promise<number>((resolve, reject) => {
          producer.once('exit', resolve);
          producer.once('error', reject);
        });
        try {
          const res = await pump(r, devNull, Buffer.alloc(1 << 20));
          expect(res).toEqual({ bytes: blocks << 20, crc32: expected, end: 'eof' });
          expect(await exited).toBe(0);
        } finally {
          b.close(r);
          b.close(devNull);
        }
      }, 60_000);

      it('pending pumps do not hold up fs.promises work issued meanwhile', async () => {
        if (pumpReason()) return;
        const probe = tmp('probe.txt');
        fs.writeFileSync(probe, 'still served');
        const pipes = [0, 1, 2, 3].map(() => b.pipe()); // as many as libuv's default pool has threads
        const dst = b.open('/dev/null', O_WRONLY);
        try {
          const pumping = pipes.map(([r]) => pump(r, dst, Buffer.alloc(4096)));
          await sleep(50); // let them all start waiting
          const read = fs.promises.readFile(probe, 'utf8');
          const outcome = await Promise.race([read, sleep(5000).then(() => 'fs.promises.readFile starved')]);
          expect(outcome).toBe('still served');
          expect((await fs.promises.stat(probe)).size).toBe(12);
          pipes.forEach(([, w], i) => {
            fs.writeSync(w, 'x'.repeat(i + 1));
            b.close(w);
          });
          expect(await Promise.all(pumping)).toEqual(
            [1, 2, 3, 4].map((n) => ({ bytes: n, crc32: crc32(Buffer.from('x'.repeat(n))), end: 'eof' })),
          );
        } finally {
          for (const [r, w] of pipes) for (const fd of [r, w]) if (isOpen(fd)) b.close(fd);
          b.close(dst);
        }
      });

      it('leaks no fds over many pumps, successful or not', async () => {
        if (pumpReason()) return;
        const data = pattern(4096, 17);
        const f = files('fd-leak', data);
        try {
          const before = openFdCount();
          for (let i = 0; i < 100; i++) {
            await pump(f.src, f.dst, Buffer.alloc(1024), { srcOffset: 0, dstOffset: 0 });
            await catchAsync(pump(f.src, f.dst, Buffer.alloc(4096), { srcOffset: 0, limit: 4096, expectCrc: 1 }));
            await catchAsync(pump(f.src, f.src, Buffer.alloc(64), { srcOffset: 0 })); // read-only destination
          }
          expect(openFdCount()).toBe(before);
        } finally {
          f.close();
        }
      });

      it('rejects bad buffers and options synchronously', () => {
        if (pumpReason()) return;
        const buf = Buffer.alloc(8);
        const cases: Array<[string, () => unknown, typeof TypeError | typeof RangeError]> = [
          ['empty buffer', () => pump(0, 1, Buffer.alloc(0)), RangeError],
          ['buffer not a Buffer', () => pump(0, 1, 'x' as unknown as Buffer), TypeError],
          ['limit -2 (number form)', () => pump(0, 1, buf, -2), RangeError],
          ['options null', () => pump(0, 1, buf, null as unknown as PumpOptions), TypeError],
          ['options a string', () => pump(0, 1, buf, 'all' as unknown as PumpOptions), TypeError],
          ['limit -1 in options', () => pump(0, 1, buf, { limit: -1 }), RangeError],
          ['limit 2^53', () => pump(0, 1, buf, { limit: 2 ** 53 }), RangeError],
          ['limit as string', () => pump(0, 1, buf, { limit: '5' as unknown as number }), TypeError],
          ['negative srcOffset', () => pump(0, 1, buf, { srcOffset: -1 }), RangeError],
          ['fractional dstOffset', () => pump(0, 1, buf, { dstOffset: 1.5 }), RangeError],
          ['expectCrc without limit', () => pump(0, 1, buf, { expectCrc: 0 }), RangeError],
          ['expectCrc with limit > buffer', () => pump(0, 1, buf, { expectCrc: 0, limit: 9 }), RangeError],
          ['expectCrc >= 2^32', () => pump(0, 1, buf, { expectCrc: 2 ** 32, limit: 8 }), RangeError],
          ['expectCrc as string', () => pump(0, 1, buf, { expectCrc: '0' as unknown as number, limit: 8 }), TypeError],
          ['precopy not a boolean', () => pump(0, 1, buf, { precopy: 1 as unknown as boolean }), TypeError],
        ];
        for (const [what, call, ctor] of cases) {
          const e = catchSync(call);
          expect(e, what).toBeInstanceOf(ctor);
          expect((e as { code?: string }).code, what).toBe(ctor === TypeError ? 'ERR_INVALID_ARG_TYPE' : 'ERR_OUT_OF_RANGE');
        }
        // The boundaries themselves are accepted (the pumps then fail on fd 2^31-1, not on arguments).
        for (const opts of [{ expectCrc: 0xffffffff, limit: 8 }, { limit: 0, srcOffset: 0, dstOffset: 0, precopy: false }]) {
          const p = pump(2 ** 31 - 1, 2 ** 31 - 1, buf, opts);
          expect(p).toBeInstanceOf(Promise);
          p.catch(() => {});
        }
      });
    });

    describe('pump with frame (snapshot chunk framing, docs/snapshot-format.md)', () => {
      const pumpReason = () => (b.pump ? undefined : 'binding has no pump');
      const pump = (src: number, dst: number, buf: Buffer, opts?: PumpOptions | number) => b.pump!(src, dst, buf, opts);
      /** Chunk header and end chunk sizes of the format. */
      const HEAD = 8;
      const END = 16;

      interface Parsed {
        chunks: Array<{ at: number; length: number; crc: number; payload: Buffer }>;
        /** The 8-byte headers, in order: what the chunk-table crc covers. */
        headers: Buffer;
        /** Offset after the last chunk. */
        end: number;
      }

      /**
       * The test's own reading of chunks (independent of src/snapshot): from `at`, to the end of
       * `b` or to a length of 0. Each chunk must be whole.
       */
      function parseChunks(bytes: Buffer, at: number): Parsed {
        const chunks: Parsed['chunks'] = [];
        let pos = at;
        while (pos + HEAD <= bytes.length && bytes.readUInt32LE(pos) !== 0) {
          const length = bytes.readUInt32LE(pos);
          const payload = bytes.subarray(pos + HEAD, pos + HEAD + length);
          expect(payload.length, `chunk at ${pos} is whole`).toBe(length);
          chunks.push({ at: pos, length, crc: bytes.readUInt32LE(pos + 4), payload });
          pos += HEAD + length;
        }
        return { chunks, headers: Buffer.concat(chunks.map((c) => bytes.subarray(c.at, c.at + HEAD))), end: pos };
      }

      /** A chunked body made by the test: each payload as a chunk, then the end chunk (fields overridable). */
      function section(payloads: Buffer[], end: { table?: number; total?: number } = {}): { body: Buffer; table: number; total: number } {
        const parts: Buffer[] = [];
        let table = 0;
        let total = 0;
        for (const p of payloads) {
          const h = Buffer.alloc(HEAD);
          h.writeUInt32LE(p.length, 0);
          h.writeUInt32LE(crc32(p), 4);
          table = crc32(h, table);
          total += p.length;
          parts.push(h, p);
        }
        const e = Buffer.alloc(END);
        e.writeUInt32LE(end.table ?? table, 4);
        e.writeBigUInt64LE(BigInt(end.total ?? total), 8);
        parts.push(e);
        return { body: Buffer.concat(parts), table, total };
      }

      /** A file holding `bytes` (opened read-only) and an empty destination (write-only), closed by close(). */
      function fileAndDst(label: string, bytes: Buffer, dstInit: Buffer = Buffer.alloc(0)): { src: number; dst: number; dstPath: string; close(): void } {
        const srcPath = tmp(`${label}.src`);
        const dstPath = tmp(`${label}.dst`);
        fs.writeFileSync(srcPath, bytes);
        fs.writeFileSync(dstPath, dstInit);
        const src = b.open(srcPath, O_RDONLY);
        const dst = b.open(dstPath, O_WRONLY);
        return { src, dst, dstPath, close: () => [src, dst].forEach((fd) => b.close(fd)) };
      }

      const JUNK = Buffer.alloc(50, 0xee);
      const PAYLOADS = [pattern(1000, 31), pattern(4096, 32), pattern(1, 33), pattern(3000, 34)];
      /** File offset of chunk `i` of PAYLOADS in JUNK + section(PAYLOADS). */
      const chunkAt = (i: number) => JUNK.length + PAYLOADS.slice(0, i).reduce((n, p) => n + HEAD + p.length, 0);
      const sum = (ps: Buffer[]) => ps.reduce((n, p) => n + p.length, 0);

      function expectFrameError(e: unknown, want: { code: string; kind: string; bytesDone: number; chunkOffset?: number; chunkLength?: number; syscall?: string }): PumpError {
        expect(e).toBeInstanceOf(VfioError);
        const err = e as PumpError;
        expect({
          code: err.code,
          kind: err.kind,
          bytesDone: err.bytesDone,
          chunkOffset: err.chunkOffset,
          chunkLength: err.chunkLength,
          syscall: err.syscall,
        }).toEqual({ chunkOffset: undefined, chunkLength: undefined, syscall: undefined, ...want });
        return err;
      }

      it("write: chunks of exactly `chunk` payload bytes (the last one short) with [u32 len][u32 crc] in front, at dstOffset; crcs as zlib's", async () => {
        if (pumpReason()) return;
        const data = pattern(3 * 4096 + 123, 21);
        const before = Buffer.alloc(100, 0x78);
        const f = fileAndDst('fw-layout', data, before);
        try {
          const table0 = 0x01234567;
          const skeleton0 = 0x89abcdef;
          const res = await pump(f.src, f.dst, Buffer.alloc(4096 + HEAD), {
            frame: { mode: 'write', chunk: 4096, tableCrc: table0, skeletonCrc: skeleton0 },
            dstOffset: before.length,
          });
          const file = fs.readFileSync(f.dstPath);
          expect(file.length).toBe(before.length + data.length + 4 * HEAD);
          expect(file.subarray(0, before.length).equals(before)).toBe(true);
          const p = parseChunks(file, before.length);
          expect(p.end).toBe(file.length);
          expect(p.chunks.map((c) => c.length)).toEqual([4096, 4096, 4096, 123]);
          for (const c of p.chunks) expect(c.crc, `crc of the chunk at ${c.at}`).toBe(crc32(c.payload));
          expect(Buffer.concat(p.chunks.map((c) => c.payload)).equals(data)).toBe(true);
          expect(res).toEqual({
            bytes: data.length,
            crc32: crc32(data),
            end: 'eof',
            chunks: 4,
            written: data.length + 4 * HEAD,
            tableCrc: crc32(p.headers, table0),
            skeletonCrc: crc32(p.headers, skeleton0),
          });
          // The same bytes, read back by a framed read (with an end chunk the test appends).
          const end = Buffer.alloc(END);
          end.writeUInt32LE(crc32(p.headers), 4);
          end.writeBigUInt64LE(BigInt(data.length), 8);
          const g = fileAndDst('fw-layout-back', Buffer.concat([file, end]));
          try {
            const back = await pump(g.src, g.dst, Buffer.alloc(4096), { srcOffset: before.length, frame: { mode: 'read', chunks: 4 } });
            expect(back).toEqual({ bytes: data.length, crc32: crc32(data), end: 'eof', chunks: 4, tableCrc: crc32(p.headers), endTableCrc: crc32(p.headers), endTotal: data.length });
            expect(fs.readFileSync(g.dstPath).equals(data)).toBe(true);
          } finally {
            g.close();
          }
        } finally {
          f.close();
        }
      });

      it('write: an exact multiple of `chunk` has no short chunk and no empty one; an empty source writes nothing', async () => {
        if (pumpReason()) return;
        const data = pattern(2000, 22);
        const f = fileAndDst('fw-multiple', data);
        try {
          const res = await pump(f.src, f.dst, Buffer.alloc(1008), { frame: { mode: 'write', chunk: 1000 }, dstOffset: 0 });
          const file = fs.readFileSync(f.dstPath);
          const p = parseChunks(file, 0);
          expect(p.chunks.map((c) => c.length)).toEqual([1000, 1000]);
          expect(file.length).toBe(2016);
          expect(res).toMatchObject({ bytes: 2000, chunks: 2, written: 2016, end: 'eof', tableCrc: crc32(p.headers), skeletonCrc: crc32(p.headers) });
        } finally {
          f.close();
        }
        const e = fileAndDst('fw-empty', Buffer.alloc(0));
        try {
          // A larger buffer than needed is fine; the crcs come back as given.
          expect(await pump(e.src, e.dst, Buffer.alloc(4096), { frame: { mode: 'write', chunk: 100, tableCrc: 7, skeletonCrc: 9 }, dstOffset: 0 })).toEqual({
            bytes: 0,
            crc32: 0,
            end: 'eof',
            chunks: 0,
            written: 0,
            tableCrc: 7,
            skeletonCrc: 9,
          });
          expect(fs.statSync(e.dstPath).size).toBe(0);
        } finally {
          e.close();
        }
      });

      it('write: `limit` counts payload bytes; calls continued from the returned offsets and crcs write the same file as one call', async () => {
        if (pumpReason()) return;
        const data = pattern(10_000, 23);
        const whole = fileAndDst('fw-whole', data);
        const parts = fileAndDst('fw-parts', data);
        try {
          const one = await pump(whole.src, whole.dst, Buffer.alloc(1024 + HEAD), { frame: { mode: 'write', chunk: 1024 }, dstOffset: 0 });
          // The source is read with read(2): each call goes on where the last one stopped.
          let at = 0;
          let tableCrc = 0;
          let skeletonCrc = 0x5a5a5a5a;
          const ends: string[] = [];
          for (;;) {
            const r = await pump(parts.src, parts.dst, Buffer.alloc(1024 + HEAD), {
              frame: { mode: 'write', chunk: 1024, tableCrc, skeletonCrc },
              dstOffset: at,
              limit: 3 * 1024,
            });
            expect(r.written).toBe(r.bytes + HEAD * r.chunks!);
            at += r.written!;
            tableCrc = r.tableCrc!;
            skeletonCrc = r.skeletonCrc!;
            ends.push(`${r.end}:${r.bytes}:${r.chunks}`);
            if (r.end !== 'limit') break;
          }
          expect(ends).toEqual(['limit:3072:3', 'limit:3072:3', 'limit:3072:3', 'eof:784:1']);
          expect(fs.readFileSync(parts.dstPath).equals(fs.readFileSync(whole.dstPath))).toBe(true);
          expect(tableCrc).toBe(one.tableCrc);
          expect(skeletonCrc).toBe(crc32(parseChunks(fs.readFileSync(whole.dstPath), 0).headers, 0x5a5a5a5a));
          // A limit that ends inside a chunk makes that chunk short.
          const cut = fileAndDst('fw-cut', data);
          try {
            expect(await pump(cut.src, cut.dst, Buffer.alloc(1024 + HEAD), { frame: { mode: 'write', chunk: 1024 }, dstOffset: 0, limit: 1500 })).toMatchObject({
              bytes: 1500,
              chunks: 2,
              written: 1516,
              end: 'limit',
              crc32: crc32(data.subarray(0, 1500)),
            });
            expect(parseChunks(fs.readFileSync(cut.dstPath), 0).chunks.map((c) => c.length)).toEqual([1024, 476]);
          } finally {
            cut.close();
          }
        } finally {
          whole.close();
          parts.close();
        }
      });

      it('write: short reads from a non-blocking pipe are gathered into whole chunks', async () => {
        if (pumpReason()) return;
        await withPipe(O_NONBLOCK, async (r, w) => {
          const dstPath = tmp('fw-pipe.dst');
          fs.writeFileSync(dstPath, '');
          const dst = b.open(dstPath, O_WRONLY);
          try {
            const pumping = pump(r, dst, Buffer.alloc(2048 + HEAD), { frame: { mode: 'write', chunk: 2048 }, dstOffset: 0 });
            const sent: Buffer[] = [];
            for (let i = 0; i < 10; i++) {
              const piece = pattern(700, 100 + i);
              sent.push(piece);
              fs.writeSync(w, piece);
              await sleep(2);
            }
            b.close(w);
            const res = await pumping;
            const data = Buffer.concat(sent);
            const p = parseChunks(fs.readFileSync(dstPath), 0);
            expect(p.chunks.map((c) => c.length)).toEqual([2048, 2048, 2048, 856]);
            expect(Buffer.concat(p.chunks.map((c) => c.payload)).equals(data)).toBe(true);
            expect(res).toMatchObject({ bytes: 7000, crc32: crc32(data), chunks: 4, end: 'eof' });
          } finally {
            b.close(dst);
          }
        });
      });

      it("write: EPIPE mid-stream rejects with syscall 'write' and bytesDone = the payload of the chunks completely written", async () => {
        if (pumpReason()) return;
        const data = pattern(1024 * 1024, 24);
        const srcPath = tmp('fw-epipe.src');
        fs.writeFileSync(srcPath, data);
        const src = b.open(srcPath, O_RDONLY);
        const [r, w] = b.pipe();
        const chunk = 32 * 1024;
        try {
          const pumping = catchAsync(pump(src, w, Buffer.alloc(chunk + HEAD), { frame: { mode: 'write', chunk } }));
          const got = Buffer.alloc(256 * 1024);
          let n = 0;
          while (n < got.length) n += await b.read(r, got, n);
          // What the reader took is framed as it should be.
          const whole = Math.floor(got.length / (chunk + HEAD));
          const p = parseChunks(got.subarray(0, whole * (chunk + HEAD)), 0);
          expect(p.chunks.length).toBe(whole);
          expect(Buffer.concat(p.chunks.map((c) => c.payload)).equals(data.subarray(0, whole * chunk))).toBe(true);
          b.close(r);
          const err = expectSysError(await pumping, { code: 'EPIPE', errno: 32, syscall: 'write' }) as PumpError;
          expect(err.bytesDone % chunk).toBe(0);
          expect(err.bytesDone).toBeGreaterThanOrEqual(whole * chunk);
          expect(err.bytesDone).toBeLessThan(data.length);
          expect(err.chunkOffset).toBeUndefined();
        } finally {
          b.close(src);
          b.close(w);
          if (isOpen(r)) b.close(r);
        }
      });

      it('read: checks each chunk, writes its payload, and returns the chunk table with the end chunk; continued calls agree', async () => {
        if (pumpReason()) return;
        const sec = section(PAYLOADS);
        const all = Buffer.concat(PAYLOADS);
        const f = fileAndDst('fr-ok', Buffer.concat([JUNK, sec.body, Buffer.alloc(10, 0x33)]));
        try {
          const res = await pump(f.src, f.dst, Buffer.alloc(4096), { srcOffset: JUNK.length, frame: { mode: 'read', chunks: 4, maxChunk: 4096, tableCrc: 0 } });
          expect(res).toEqual({ bytes: all.length, crc32: crc32(all), end: 'eof', chunks: 4, tableCrc: sec.table, endTableCrc: sec.table, endTotal: all.length });
          expect(fs.readFileSync(f.dstPath).equals(all)).toBe(true);
        } finally {
          f.close();
        }
        const g = fileAndDst('fr-parts', Buffer.concat([JUNK, sec.body]));
        try {
          const first = await pump(g.src, g.dst, Buffer.alloc(4096), { srcOffset: chunkAt(0), frame: { mode: 'read', chunks: 2, final: false } });
          const header = (i: number) => sec.body.subarray(chunkAt(i) - JUNK.length, chunkAt(i) - JUNK.length + HEAD);
          expect(first).toEqual({ bytes: 5096, crc32: crc32(all.subarray(0, 5096)), end: 'limit', chunks: 2, tableCrc: crc32(Buffer.concat([header(0), header(1)])) });
          const rest = await pump(g.src, g.dst, Buffer.alloc(4096), { srcOffset: chunkAt(2), frame: { mode: 'read', chunks: 2, tableCrc: first.tableCrc } });
          expect(rest).toEqual({ bytes: 3001, crc32: crc32(all.subarray(5096)), end: 'eof', chunks: 2, tableCrc: sec.table, endTableCrc: sec.table, endTotal: all.length });
          expect(fs.readFileSync(g.dstPath).equals(all)).toBe(true);
        } finally {
          g.close();
        }
        // An empty section: only the end chunk.
        const e = fileAndDst('fr-empty', section([]).body);
        try {
          expect(await pump(e.src, e.dst, Buffer.alloc(16), { srcOffset: 0, frame: { mode: 'read', chunks: 0 } })).toEqual({
            bytes: 0,
            crc32: 0,
            end: 'eof',
            chunks: 0,
            tableCrc: 0,
            endTableCrc: 0,
            endTotal: 0,
          });
        } finally {
          e.close();
        }
        // The end chunk's fields are returned as they are: comparing them is the caller's job.
        const lying = fileAndDst('fr-lying', section(PAYLOADS, { table: 0xdeadbeef, total: 7 }).body);
        try {
          expect(await pump(lying.src, lying.dst, Buffer.alloc(4096), { srcOffset: 0, frame: { mode: 'read', chunks: 4 } })).toMatchObject({
            tableCrc: sec.table,
            endTableCrc: 0xdeadbeef,
            endTotal: 7,
          });
        } finally {
          lying.close();
        }
      });

      it('read: takes nothing from src past the last chunk of a call (or its end chunk), whatever room buf has', async () => {
        if (pumpReason()) return;
        const sec = section(PAYLOADS);
        const all = Buffer.concat(PAYLOADS);
        const TAIL = Buffer.from('bytes after the section');
        // A pipe cannot be read again: a pump that read ahead of what a call covers would lose
        // the next call's bytes. A buffer with room for a payload and the header after it too.
        for (const room of [0, HEAD, END, 64]) {
          await withPipe(0, async (r, w) => {
            fs.writeSync(w, Buffer.concat([sec.body, TAIL]));
            const out = tmp(`fr-pipe-${room}`);
            fs.writeFileSync(out, '');
            const dst = b.open(out, O_WRONLY);
            try {
              const buf = Buffer.alloc(4096 + room);
              const first = await pump(r, dst, buf, { frame: { mode: 'read', chunks: 2, final: false } });
              expect(first).toMatchObject({ bytes: 5096, chunks: 2, end: 'limit' });
              const rest = await pump(r, dst, buf, { frame: { mode: 'read', chunks: 2, tableCrc: first.tableCrc } });
              expect(rest).toMatchObject({ bytes: 3001, chunks: 2, end: 'eof', tableCrc: sec.table, endTableCrc: sec.table, endTotal: all.length });
              expect(fs.readFileSync(out).equals(all)).toBe(true);
              b.close(w);
              const left = Buffer.alloc(64);
              expect(left.subarray(0, fs.readSync(r, left)).equals(TAIL), `room ${room}`).toBe(true);
            } finally {
              b.close(dst);
            }
          });
        }
      });

      it("read: a chunk whose crc32 does not match rejects with 'EVFIO_SNAPSHOT_CHECKSUM' and nothing of it is written", async () => {
        if (pumpReason()) return;
        for (const [bad, damage] of [
          [2, 'payload'],
          [0, 'crc field'],
          [3, 'payload'],
        ] as const) {
          const bytes = Buffer.concat([JUNK, section(PAYLOADS).body]);
          if (damage === 'payload') bytes[chunkAt(bad) + HEAD + PAYLOADS[bad].length - 1] ^= 0x01;
          else bytes.writeUInt32LE(bytes.readUInt32LE(chunkAt(bad) + 4) ^ 0x80000000, chunkAt(bad) + 4);
          const f = fileAndDst(`fr-crc-${bad}`, bytes);
          try {
            const err = expectFrameError(await catchAsync(pump(f.src, f.dst, Buffer.alloc(4096), { srcOffset: JUNK.length, frame: { mode: 'read', chunks: 4 } })), {
              code: 'EVFIO_SNAPSHOT_CHECKSUM',
              kind: 'format',
              bytesDone: sum(PAYLOADS.slice(0, bad)),
              chunkOffset: chunkAt(bad),
            });
            expect(err.message).toContain(`offset ${chunkAt(bad)}`);
            expect(fs.readFileSync(f.dstPath).equals(Buffer.concat(PAYLOADS.slice(0, bad)))).toBe(true);
          } finally {
            f.close();
          }
        }
      });

      it("read: a length outside [1, min(maxChunk, buffer)] or a missing end chunk rejects with 'EVFIO_BAD_SNAPSHOT', nothing of that chunk written", async () => {
        if (pumpReason()) return;
        const bytes = Buffer.concat([JUNK, section(PAYLOADS).body]);
        const f = fileAndDst('fr-len', bytes);
        const run = async (buf: Buffer, frame: PumpOptions['frame']) => {
          fs.truncateSync(f.dstPath, 0);
          return catchAsync(pump(f.src, f.dst, buf, { srcOffset: JUNK.length, dstOffset: 0, frame }));
        };
        try {
          // Over maxChunk, then over the buffer: chunk 1 (4096 bytes).
          expectFrameError(await run(Buffer.alloc(4096), { mode: 'read', chunks: 4, maxChunk: 2048 }), {
            code: 'EVFIO_BAD_SNAPSHOT', kind: 'format', bytesDone: 1000, chunkOffset: chunkAt(1), chunkLength: 4096,
          });
          expect(fs.readFileSync(f.dstPath).equals(PAYLOADS[0])).toBe(true);
          expectFrameError(await run(Buffer.alloc(4095), { mode: 'read', chunks: 4 }), {
            code: 'EVFIO_BAD_SNAPSHOT', kind: 'format', bytesDone: 1000, chunkOffset: chunkAt(1), chunkLength: 4096,
          });
          // More chunks than there are: the end chunk's 0 is read as a length.
          expectFrameError(await run(Buffer.alloc(4096), { mode: 'read', chunks: 5 }), {
            code: 'EVFIO_BAD_SNAPSHOT', kind: 'format', bytesDone: sum(PAYLOADS), chunkOffset: chunkAt(4), chunkLength: 0,
          });
          expect(fs.readFileSync(f.dstPath).equals(Buffer.concat(PAYLOADS))).toBe(true);
          // Fewer: where the end chunk should be, a chunk starts.
          const err = expectFrameError(await run(Buffer.alloc(4096), { mode: 'read', chunks: 3 }), {
            code: 'EVFIO_BAD_SNAPSHOT', kind: 'format', bytesDone: 5097, chunkOffset: chunkAt(3), chunkLength: 3000,
          });
          expect(err.message).toMatch(/end chunk/);
        } finally {
          f.close();
        }
      });

      it("read: a source that ends inside a chunk or the end chunk rejects with 'EVFIO_SNAPSHOT_TRUNCATED'", async () => {
        if (pumpReason()) return;
        const body = section(PAYLOADS).body;
        for (const [cut, at, done] of [
          [chunkAt(1) + HEAD + 100, chunkAt(1), 1000], // inside chunk 1's payload
          [chunkAt(2) + 3, chunkAt(2), 5096], // inside chunk 2's header
          [JUNK.length + body.length - 4, chunkAt(4), sum(PAYLOADS)], // inside the end chunk
        ] as const) {
          const f = fileAndDst(`fr-cut-${cut}`, Buffer.concat([JUNK, body]).subarray(0, cut));
          try {
            const err = expectFrameError(await catchAsync(pump(f.src, f.dst, Buffer.alloc(4096), { srcOffset: JUNK.length, frame: { mode: 'read', chunks: 4 } })), {
              code: 'EVFIO_SNAPSHOT_TRUNCATED',
              kind: 'format',
              bytesDone: done,
              chunkOffset: at,
            });
            expect(err.message).toContain(`offset ${at}`);
            expect(fs.statSync(f.dstPath).size).toBe(done);
          } finally {
            f.close();
          }
        }
      });

      it("read: a destination that fails rejects with its syscall, bytesDone and chunkOffset", async () => {
        if (pumpReason()) return;
        const f = fileAndDst('fr-epipe', Buffer.concat([JUNK, section(PAYLOADS).body]));
        try {
          await withPipe(0, async (r, w) => {
            b.close(r);
            expectFrameError(await catchAsync(pump(f.src, w, Buffer.alloc(4096), { srcOffset: JUNK.length, frame: { mode: 'read', chunks: 4 } })), {
              code: 'EPIPE', kind: 'syscall', bytesDone: 0, chunkOffset: chunkAt(0), syscall: 'write',
            });
          });
          // And a source that is not readable: syscall 'pread'.
          expectFrameError(await catchAsync(pump(f.dst, f.dst, Buffer.alloc(4096), { srcOffset: 0, frame: { mode: 'read', chunks: 1 } })), {
            code: 'EBADF', kind: 'syscall', bytesDone: 0, chunkOffset: 0, syscall: 'pread',
          });
        } finally {
          f.close();
        }
      });

      it('leaks no fds over many framed pumps, successful or not', async () => {
        if (pumpReason()) return;
        const sec = Buffer.concat([JUNK, section(PAYLOADS).body]);
        const f = fileAndDst('frame-leak', sec);
        try {
          const before = openFdCount();
          for (let i = 0; i < 50; i++) {
            await pump(f.src, f.dst, Buffer.alloc(4096), { srcOffset: JUNK.length, frame: { mode: 'read', chunks: 4 } });
            await catchAsync(pump(f.src, f.dst, Buffer.alloc(4096), { srcOffset: 0, frame: { mode: 'read', chunks: 4 } }));
            await pump(f.src, f.dst, Buffer.alloc(1024), { srcOffset: 0, dstOffset: 0, frame: { mode: 'write', chunk: 1000 } });
            await catchAsync(pump(f.src, f.src, Buffer.alloc(1024), { srcOffset: 0, frame: { mode: 'write', chunk: 1000 } }));
          }
          expect(openFdCount()).toBe(before);
        } finally {
          f.close();
        }
      });

      it('rejects bad frame options synchronously, with the same messages in every binding', () => {
        if (pumpReason()) return;
        const buf = Buffer.alloc(16);
        const R = 'ERR_OUT_OF_RANGE';
        const T = 'ERR_INVALID_ARG_TYPE';
        const cases: Array<[PumpOptions, string, string]> = [
          [{ frame: null as unknown as PumpOptions['frame'] }, T, 'pump: "frame" must be an object'],
          [{ frame: 'write' as unknown as PumpOptions['frame'] }, T, 'pump: "frame" must be an object'],
          [{ frame: { mode: 'copy' } as unknown as PumpOptions['frame'] }, T, `pump: "frame.mode" must be 'read' or 'write'`],
          [{ frame: { mode: 'write' } as unknown as PumpOptions['frame'] }, T, 'pump: "frame.chunk" must be a number'],
          [{ frame: { mode: 'write', chunk: 0 } }, R, 'pump: "frame.chunk" is out of range [1, 1073741824]'],
          [{ frame: { mode: 'write', chunk: 2.5 } }, R, 'pump: "frame.chunk" must be an integer'],
          [{ frame: { mode: 'write', chunk: 9 } }, R, 'pump: "frame.chunk" needs a buffer of at least frame.chunk + 8 bytes (it has 16)'],
          [{ frame: { mode: 'write', chunk: 8, tableCrc: -1 } }, R, 'pump: "frame.tableCrc" is out of range [0, 4294967295]'],
          [{ frame: { mode: 'write', chunk: 8, skeletonCrc: 2 ** 32 } }, R, 'pump: "frame.skeletonCrc" is out of range [0, 4294967295]'],
          [{ frame: { mode: 'write', chunk: 8, tableCrc: '1' as unknown as number } }, T, 'pump: "frame.tableCrc" must be a number'],
          [{ frame: { mode: 'write', chunk: 8 }, expectCrc: 0, limit: 8 }, R, 'pump: "expectCrc" cannot be used with "frame"'],
          [{ frame: { mode: 'read' } as unknown as PumpOptions['frame'] }, T, 'pump: "frame.chunks" must be a number'],
          [{ frame: { mode: 'read', chunks: -1 } }, R, 'pump: "frame.chunks" is out of range [0, 9007199254740991]'],
          [{ frame: { mode: 'read', chunks: 1, maxChunk: 0 } }, R, 'pump: "frame.maxChunk" is out of range [1, 4294967295]'],
          [{ frame: { mode: 'read', chunks: 1, final: 1 as unknown as boolean } }, T, 'pump: "frame.final" must be a boolean'],
          [{ frame: { mode: 'read', chunks: 1 }, limit: 5 }, R, `pump: "limit", "expectCrc" and "precopy" cannot be used with frame mode 'read'`],
          [{ frame: { mode: 'read', chunks: 1 }, precopy: true }, R, `pump: "limit", "expectCrc" and "precopy" cannot be used with frame mode 'read'`],
          // The other options are checked first.
          [{ frame: { mode: 'read', chunks: 1 }, limit: -1 }, R, 'pump: "limit" is out of range [0, 9007199254740991]'],
        ];
        for (const [opts, code, message] of cases) {
          const e = catchSync(() => pump(0, 1, buf, opts)) as Error & { code?: string };
          const what = JSON.stringify(opts);
          expect(e, what).toBeInstanceOf(code === T ? TypeError : RangeError);
          expect({ code: e.code, message: e.message }, what).toEqual({ code, message });
        }
        // The boundaries themselves are accepted (the pumps then fail on fd 2^31-1, not on arguments).
        for (const opts of [
          { frame: { mode: 'write', chunk: 8, tableCrc: 0xffffffff, skeletonCrc: 0 }, limit: 0, precopy: true },
          { frame: { mode: 'read', chunks: 0, maxChunk: 0xffffffff, tableCrc: 0xffffffff, final: false }, precopy: false, srcOffset: 0 },
        ] as PumpOptions[]) {
          const p = pump(2 ** 31 - 1, 2 ** 31 - 1, buf, opts);
          expect(p).toBeInstanceOf(Promise);
          p.catch(() => {});
        }
      });
    });

    describe("walkChunks (optional: the snapshot reader's fast path)", () => {
      const HEAD = 8;
      /** `lead` bytes, chunk headers and payloads of `lengths`, an end chunk; and what a walk over them gives. */
      function chunked(lengths: number[], lead = 24): { bytes: Buffer; at: number[]; end: number; table: number; skeleton: number; total: number } {
        const parts: Buffer[] = [Buffer.alloc(lead, 0x5a)];
        const at: number[] = [];
        let pos = lead;
        let table = 0;
        let skeleton = 0x1234;
        for (const [i, n] of lengths.entries()) {
          const p = pattern(n, 40 + i);
          const h = Buffer.alloc(HEAD);
          h.writeUInt32LE(n, 0);
          h.writeUInt32LE(crc32(p), 4);
          table = crc32(h, table);
          skeleton = crc32(h, skeleton);
          parts.push(h, p);
          at.push(pos);
          pos += HEAD + n;
        }
        parts.push(Buffer.alloc(16));
        const total = lengths.reduce((a, n) => a + n, 0);
        return { bytes: Buffer.concat(parts), at, end: pos, table, skeleton, total };
      }
      const start = (pos: number) => ({ pos, count: 0, total: 0, tableCrc: 0, skeletonCrc: 0x1234 });
      function withFile<T>(label: string, bytes: Buffer, fn: (fd: number) => T, flags = O_RDONLY): T {
        const file = tmp(label);
        fs.writeFileSync(file, bytes);
        const fd = b.open(file, flags);
        try {
          return fn(fd);
        } finally {
          b.close(fd);
        }
      }

      it('passes over regular chunks and stops at the end chunk, with the CRCs of the headers it read', () => {
        if (!b.walkChunks) return;
        const c = chunked([100, 1, 4096, 77]);
        withFile('walk-ok', c.bytes, (fd) => {
          expect(b.walkChunks!(fd, start(c.at[0]), c.bytes.length, 4096, 1000)).toEqual({
            pos: c.end, count: 4, total: c.total, tableCrc: c.table, skeletonCrc: c.skeleton, taken: 4,
          });
          // At most maxHeaders at a time, and continued from where it stopped.
          const first = b.walkChunks!(fd, start(c.at[0]), c.bytes.length, 4096, 2);
          expect(first).toMatchObject({ pos: c.at[2], count: 2, taken: 2 });
          const { taken: _taken, ...rest } = first;
          expect(b.walkChunks!(fd, rest, c.bytes.length, 4096, 10)).toEqual({
            pos: c.end, count: 4, total: c.total, tableCrc: c.table, skeletonCrc: c.skeleton, taken: 2,
          });
          // At the end chunk: nothing to take.
          expect(b.walkChunks!(fd, start(c.end), c.bytes.length, 4096, 10)).toMatchObject({ pos: c.end, taken: 0 });
        });
      });

      it('stops, without throwing, at a header that is too long, cut off, past the size or unreadable', () => {
        if (!b.walkChunks) return;
        const c = chunked([100, 5000, 30]);
        withFile('walk-stop', c.bytes, (fd) => {
          // Chunk 1 is over maxChunk.
          expect(b.walkChunks!(fd, start(c.at[0]), c.bytes.length, 4096, 10)).toMatchObject({ pos: c.at[1], count: 1, total: 100, taken: 1 });
          // A size that ends inside chunk 2's payload, or inside its header.
          expect(b.walkChunks!(fd, start(c.at[0]), c.at[2] + HEAD + 29, 8192, 10)).toMatchObject({ pos: c.at[2], count: 2, taken: 2 });
          expect(b.walkChunks!(fd, start(c.at[0]), c.at[2] + 7, 8192, 10)).toMatchObject({ pos: c.at[2], count: 2, taken: 2 });
          // A size beyond the file (it shrank): the header read comes up short.
          expect(b.walkChunks!(fd, start(c.end + 100), c.bytes.length + 1000, 8192, 10)).toMatchObject({ pos: c.end + 100, taken: 0 });
          // maxHeaders 0 takes nothing.
          expect(b.walkChunks!(fd, start(c.at[0]), c.bytes.length, 8192, 0)).toMatchObject({ pos: c.at[0], taken: 0 });
        });
        // An fd that cannot be read: nothing taken and no throw (the caller's own read reports it).
        withFile('walk-wronly', c.bytes, (fd) => expect(b.walkChunks!(fd, start(c.at[0]), c.bytes.length, 8192, 10)).toMatchObject({ taken: 0 }), O_WRONLY);
      });

      it('stops within 16 headers of its time budget', () => {
        if (!b.walkChunks) return;
        const c = chunked(Array.from({ length: 100 }, () => 10));
        withFile('walk-budget', c.bytes, (fd) => {
          const w = b.walkChunks!(fd, start(c.at[0]), c.bytes.length, 8192, 1000, 0);
          expect(w.taken).toBe(16);
          expect(w.pos).toBe(c.at[16]);
          expect(b.walkChunks!(fd, start(c.at[0]), c.bytes.length, 8192, 1000, -1).taken).toBe(100);
        });
      });

      it('checks its arguments', () => {
        if (!b.walkChunks) return;
        expect(() => b.walkChunks!(-1, start(0), 0, 1, 1)).toThrow(RangeError);
        expect(() => b.walkChunks!(0, undefined as never, 0, 1, 1)).toThrow(TypeError);
        expect(() => b.walkChunks!(0, { ...start(0), pos: -1 }, 0, 1, 1)).toThrow(RangeError);
        expect(() => b.walkChunks!(0, { ...start(0), tableCrc: 2 ** 32 }, 0, 1, 1)).toThrow(RangeError);
        expect(() => b.walkChunks!(0, start(0), 0, 0, 1)).toThrow(RangeError);
        expect(() => b.walkChunks!(0, start(0), 0, 1, 1, -2)).toThrow(RangeError);
      });
    });
  });
}

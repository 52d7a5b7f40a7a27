/**
 * The pump contract suite (src/kernel/pump/types.ts): one set of tests, run against every pump
 * by pump.contract.test.ts — the native pump, and the JS pump over koffi, over the simulated
 * binding with real fds, and over the simulated binding with purely virtual fds.
 *
 * Cases that need what a binding lacks (real files, sockets) are skipped with the reason in
 * the title. Record layouts are built and parsed here, independently of src/snapshot.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { Worker } from 'node:worker_threads';
import { beforeAll, describe, expect, it } from 'vitest';
import type { VfioError } from '../../src/base/errors';
import type { Binding } from '../../src/kernel/binding/types';
import { jsChecksum, type ChecksumAlgorithm, type Pump, type PumpBuffers, type PumpError, type ReadRecordsOptions } from '../../src/kernel/pump';
import { pipeScope } from '../helpers/binding';
import { fillBlock, pattern } from '../helpers/bytes';
import { rejection, thrown } from '../helpers/errors';
import { openFdCount } from '../helpers/fds';
import { itUnless } from '../helpers/skip';
import { socketPair } from '../helpers/socket';
import { useTempDir } from '../helpers/temp-dir';
import { writeAll } from '../helpers/uapi';

const { O_RDONLY, O_WRONLY, O_RDWR, O_NONBLOCK } = fs.constants;
const crc32c = (b: Buffer, seed = 0) => jsChecksum.crc32c(b, seed);
const crc32 = (b: Buffer, seed = 0) => jsChecksum.crc32(b, seed);
/** Records as the contract lays them out: [prefix][u32 len][u32 checksum][payload]. */
function records(payloads: Buffer[], prefix: Buffer = Buffer.alloc(0), alg: ChecksumAlgorithm = 'crc32c'): { bytes: Buffer; headers: Buffer[] } {
  const parts: Buffer[] = [];
  const headers: Buffer[] = [];
  for (const p of payloads) {
    const h = Buffer.alloc(prefix.length + 8);
    prefix.copy(h);
    h.writeUInt32LE(p.length, prefix.length);
    h.writeUInt32LE(jsChecksum[alg](p), prefix.length + 4);
    headers.push(h);
    parts.push(h, p);
  }
  return { bytes: Buffer.concat(parts), headers };
}

/** The test's own reading of records from `at` (each must be whole) until the end or a terminator. */
function parseRecords(bytes: Buffer, at: number, prefixLen: number): Array<{ at: number; header: Buffer; payload: Buffer; sum: number }> {
  const out: Array<{ at: number; header: Buffer; payload: Buffer; sum: number }> = [];
  let pos = at;
  while (pos + prefixLen + 8 <= bytes.length && bytes.readUInt32LE(pos + prefixLen) !== 0) {
    const len = bytes.readUInt32LE(pos + prefixLen);
    const payload = bytes.subarray(pos + prefixLen + 8, pos + prefixLen + 8 + len);
    expect(payload.length, `record at ${pos} is whole`).toBe(len);
    out.push({ at: pos, header: bytes.subarray(pos, pos + prefixLen + 8), payload, sum: bytes.readUInt32LE(pos + prefixLen + 4) });
    pos += prefixLen + 8 + len;
  }
  return out;
}

const sumOver = (headers: Buffer[], seed = 0, alg: ChecksumAlgorithm = 'crc32c') => headers.reduce((s, h) => jsChecksum[alg](h, s), seed);

export interface PumpContractOptions<B extends Binding> {
  /** The binding opens real files (not a purely virtual simulated one). */
  files: boolean;
  /**
   * The binding's own count of its open fds, when they are not the kernel's (the purely virtual
   * simulated kernel; /proc/self/fd never moves there); default: this process's fds.
   */
  countFds?: (b: B) => number;
  /**
   * A write larger than the room in a blocking pipe never sleeps beyond `signal` and
   * `idleTimeoutMs` (the native pump; the JS pump's writes run on the binding's threads).
   */
  boundedWrites: boolean;
  /** Stream bytes for the long-haul case (the JS pumps are slower). */
  longHaulMiB: number;
}

/** Register the pump contract suite for one pump. `create` is called once, before the tests. */
export function pumpContract<B extends Binding>(name: string, create: () => { binding: B; pump: Pump }, opts: PumpContractOptions<B>): void {
  describe(`Pump contract: ${name}`, () => {
    let b: B;
    let p: Pump;
    const dir = useTempDir(`vfio-pump-${name}`);
    const tmp = (file: string) => dir.file(file);
    const noFiles = opts.files ? undefined : 'no real files on this binding';
    const countFds = (): number => (opts.countFds ? opts.countFds(b) : openFdCount());

    beforeAll(() => {
      ({ binding: b, pump: p } = create());
    });

    const itFiles = (title: string, fn: () => Promise<void> | void, timeout?: number): void => itUnless(noFiles, title, fn, timeout);
    const { withPipe, close } = pipeScope(() => b);

    /** Read exactly `n` bytes (or to the end) from a stream fd through the binding. */
    async function drain(fd: number, n: number): Promise<Buffer> {
      const out = Buffer.alloc(n);
      let got = 0;
      while (got < n) {
        const k = await b.read(fd, out, got, n - got);
        if (k === 0) break;
        got += k;
      }
      return out.subarray(0, got);
    }

    /** A source file holding `data` (read-only) and an empty destination (write-only). */
    function files(label: string, data: Buffer, dstInit: Buffer = Buffer.alloc(0)): { src: number; dst: number; dstPath: string; close(): void } {
      const srcPath = tmp(`${label}.src`);
      const dstPath = tmp(`${label}.dst`);
      fs.writeFileSync(srcPath, data);
      fs.writeFileSync(dstPath, dstInit);
      const src = b.open(srcPath, O_RDONLY);
      const dst = b.open(dstPath, O_WRONLY);
      return { src, dst, dstPath, close: () => [src, dst].forEach((fd) => b.close(fd)) };
    }

    function expectPumpError(e: VfioError, want: Partial<PumpError> & { code: string; bytesDone: number }): PumpError {
      const err = e as PumpError;
      const picked: Record<string, unknown> = {};
      for (const k of Object.keys(want)) picked[k] = (err as unknown as Record<string, unknown>)[k];
      expect(picked).toEqual(want);
      return err;
    }

    /** One buffer of `n` bytes, or two. */
    const bufs = (n: number, two: boolean): PumpBuffers => (two ? [Buffer.alloc(n), Buffer.alloc(n)] : Buffer.alloc(n));

    it('reports its name', () => {
      expect(p.name).toBe(name.startsWith('native') ? 'native' : 'js');
    });

    // ---------------------------------------------------------------- copy
    describe('copy', () => {
      for (const two of [false, true]) {
        const how = two ? ', two buffers' : '';
        itFiles(`copies a file to its end, with the CRC-32C of the data${how}`, async () => {
          const data = pattern(1024 * 1024 + 123);
          const f = files(`whole-${two}`, data);
          try {
            expect(await p.copy(f.src, f.dst, bufs(64 * 1024, two), { overlap: two })).toEqual({ bytes: data.length, checksum: crc32c(data), end: 'eof' });
            expect(fs.readFileSync(f.dstPath).equals(data)).toBe(true);
          } finally {
            f.close();
          }
        });

        it(`streams a pipe into a pipe while a writer feeds it and a reader takes it${how}`, async () => {
          const data = pattern(300 * 1024, 11);
          await withPipe(O_NONBLOCK, async (r1, w1) => {
            await withPipe(O_NONBLOCK, async (r2, w2) => {
              const pumping = p.copy(r1, w2, bufs(100 * 1024, two), { overlap: two }); // chunks larger than the pipe
              const fed = (async () => {
                for (let off = 0; off < data.length; off += 30_000) {
                  await writeAll(b, w1, data.subarray(off, off + 30_000));
                  await sleep(1);
                }
                close(w1);
              })();
              const got = await drain(r2, data.length);
              await fed;
              expect(await pumping).toEqual({ bytes: data.length, checksum: crc32c(data), end: 'eof' });
              expect(got.equals(data)).toBe(true);
            });
          });
        });
      }

      it('two buffers: overlap true reads every other block into the second one, false uses only the first, absent overlaps when the process may run on more than one CPU', async () => {
        const data = pattern(48 * 1024, 5); // fits a pipe: no reader needed while it is fed
        /** Copy `data` pipe to pipe with two 4 KiB buffers; whether the second one was used. */
        const secondUsed = (overlap: boolean | undefined): Promise<boolean> =>
          withPipe(0, async (r1, w1) =>
            withPipe(0, async (r2, w2) => {
              await writeAll(b, w1, data);
              close(w1);
              const first = Buffer.alloc(4096, 0xee);
              const second = Buffer.alloc(4096, 0xee);
              expect(await p.copy(r1, w2, [first, second], overlap === undefined ? {} : { overlap })).toEqual({ bytes: data.length, checksum: crc32c(data), end: 'eof' });
              close(w2);
              expect((await drain(r2, data.length + 1)).equals(data)).toBe(true);
              expect(first.every((x) => x === 0xee)).toBe(false);
              return !second.every((x) => x === 0xee);
            }),
          );
        expect(await secondUsed(true)).toBe(true);
        expect(await secondUsed(false)).toBe(false);
        expect(await secondUsed(undefined)).toBe(os.availableParallelism() > 1);
      });

      itFiles("checksum 'crc32' is zlib's CRC-32", async () => {
        const data = pattern(100_000, 3);
        const f = files('crc32', data);
        try {
          expect(await p.copy(f.src, f.dst, Buffer.alloc(7000), { checksum: 'crc32' })).toEqual({ bytes: data.length, checksum: crc32(data), end: 'eof' });
        } finally {
          f.close();
        }
      });

      itFiles("limit: stops after exactly that many bytes ('limit'), the source positioned after them; 0 touches nothing", async () => {
        const data = pattern(5000, 99);
        const f = files('limit', data);
        try {
          expect(await p.copy(f.src, f.dst, Buffer.alloc(256), { limit: 1000 })).toEqual({ bytes: 1000, checksum: crc32c(data.subarray(0, 1000)), end: 'limit' });
          expect(fs.readFileSync(f.dstPath).equals(data.subarray(0, 1000))).toBe(true);
          const next = Buffer.alloc(4);
          expect(fs.readSync(f.src, next)).toBe(4);
          expect(next).toEqual(data.subarray(1000, 1004));
          expect(await p.copy(f.src, f.dst, Buffer.alloc(256), { limit: 0 })).toEqual({ bytes: 0, checksum: 0, end: 'limit' });
          expect(await p.copy(f.src, f.dst, Buffer.alloc(100), { limit: 300 })).toEqual({ bytes: 300, checksum: crc32c(data.subarray(1004, 1304)), end: 'limit' });
        } finally {
          f.close();
        }
      });

      it("limit: ends with 'eof' when a stream ends first; an empty source gives 0, checksum 0", async () => {
        await withPipe(0, async (r, w) => {
          await withPipe(0, async (r2, w2) => {
            await writeAll(b, w, Buffer.from('short'));
            close(w);
            expect(await p.copy(r, w2, Buffer.alloc(64), { limit: 64 })).toEqual({ bytes: 5, checksum: crc32c(Buffer.from('short')), end: 'eof' });
            expect((await drain(r2, 5)).toString()).toBe('short');
            expect(await p.copy(r, w2, Buffer.alloc(64))).toEqual({ bytes: 0, checksum: 0, end: 'eof' });
          });
        });
      });

      itFiles("srcOffset / dstOffset: pread and pwrite by position, advancing; the fds' own offsets untouched", async () => {
        const data = pattern(10_000, 21);
        const srcPath = tmp('offsets.src');
        const dstPath = tmp('offsets.dst');
        fs.writeFileSync(srcPath, data);
        fs.writeFileSync(dstPath, '');
        const src = b.open(srcPath, O_RDONLY);
        const dst = b.open(dstPath, O_RDWR);
        try {
          expect(fs.readSync(src, Buffer.alloc(10))).toBe(10);
          expect(await p.copy(src, dst, Buffer.alloc(777), { srcOffset: 3000, dstOffset: 100, limit: 5000 })).toEqual({
            bytes: 5000, checksum: crc32c(data.subarray(3000, 8000)), end: 'limit',
          });
          const out = fs.readFileSync(dstPath);
          expect(out.length).toBe(5100);
          expect(out.subarray(100).equals(data.subarray(3000, 8000))).toBe(true);
          const next = Buffer.alloc(4);
          expect(fs.readSync(src, next)).toBe(4);
          expect(next.equals(data.subarray(10, 14))).toBe(true);
          expect(await p.copy(src, dst, Buffer.alloc(512), { srcOffset: 2 ** 40 })).toEqual({ bytes: 0, checksum: 0, end: 'eof' });
        } finally {
          b.close(src);
          b.close(dst);
        }
      });

      it("srcOffset / dstOffset on a pipe reject with ESPIPE, syscall 'pread' / 'pwrite', bytesDone 0", async () => {
        await withPipe(0, async (r, w) => {
          await withPipe(0, async (r2, w2) => {
            await writeAll(b, w, Buffer.from('abc'));
            expectPumpError(await rejection(p.copy(r, w2, Buffer.alloc(64), { srcOffset: 0 })), { code: 'ESPIPE', errno: 29, syscall: 'pread', bytesDone: 0 });
            expectPumpError(await rejection(p.copy(r, w2, Buffer.alloc(64), { dstOffset: 0 })), { code: 'ESPIPE', errno: 29, syscall: 'pwrite', bytesDone: 0 });
            void r2;
          });
        });
      });

      it('expectChecksum: a matching block goes through whole; a mismatch writes nothing (EVFIO_CHECKSUM); a short source is EVFIO_TRUNCATED', async () => {
        const data = pattern(3000, 32);
        await withPipe(0, async (r, w) => {
          await withPipe(O_NONBLOCK, async (r2, w2) => {
            // The block arrives in pieces.
            const pending = p.copy(r2, w, Buffer.alloc(3000), { limit: 3000, expectChecksum: crc32c(data) });
            for (let off = 0; off < data.length; off += 1000) {
              await sleep(3);
              await writeAll(b, w2, data.subarray(off, off + 1000));
            }
            expect(await pending).toEqual({ bytes: 3000, checksum: crc32c(data), end: 'limit' });
            expect((await drain(r, 3000)).equals(data)).toBe(true);
            // A mismatch: not one byte arrives.
            await writeAll(b, w2, data);
            const bad = (crc32c(data) ^ 0x10000) >>> 0;
            const err = expectPumpError(await rejection(p.copy(r2, w, Buffer.alloc(4000), { limit: 3000, expectChecksum: bad })), {
              code: 'EVFIO_CHECKSUM', kind: 'format', bytesDone: 0,
            });
            expect(err.message).toContain(bad.toString(16).padStart(8, '0'));
            expect(err.message).toContain(crc32c(data).toString(16).padStart(8, '0'));
            // The source ends before the limit.
            await writeAll(b, w2, data.subarray(0, 1000));
            close(w2);
            const short = expectPumpError(await rejection(p.copy(r2, w, Buffer.alloc(3000), { limit: 3000, expectChecksum: crc32c(data) })), {
              code: 'EVFIO_TRUNCATED', kind: 'format', bytesDone: 0,
            });
            expect(short.message).toContain('after 1000 of 3000 bytes');
            // Nothing of either reached the destination.
            close(w);
            expect((await drain(r, 10)).length).toBe(0);
          });
        });
      });

      it("precopy: a read of 0 ends with 'for-now', the limit still wins", async () => {
        const data = pattern(3000, 61);
        await withPipe(0, async (r, w) => {
          await withPipe(0, async (r2, w2) => {
            await writeAll(b, w, data);
            expect(await p.copy(r, w2, Buffer.alloc(1024), { precopy: true, limit: 1000 })).toEqual({ bytes: 1000, checksum: crc32c(data.subarray(0, 1000)), end: 'limit' });
            expect((await drain(r2, 1000)).equals(data.subarray(0, 1000))).toBe(true);
            close(w);
            const rest = p.copy(r, w2, Buffer.alloc(1024), { precopy: true });
            const got = await drain(r2, 2000);
            expect(await rest).toEqual({ bytes: 2000, checksum: crc32c(data.subarray(1000)), end: 'for-now' });
            expect(got.equals(data.subarray(1000))).toBe(true);
            expect(await p.copy(r, w2, Buffer.alloc(1024), { precopy: true })).toEqual({ bytes: 0, checksum: 0, end: 'for-now' });
            expect(await p.copy(r, w2, Buffer.alloc(1024))).toEqual({ bytes: 0, checksum: 0, end: 'eof' });
          });
        });
      });

      it("rejects with syscall 'read' or 'write' for the side that failed; EPIPE mid-stream with the bytes written so far", async () => {
        await withPipe(0, async (r, w) => {
          // A number that is not open (nothing is opened between here and the pumps).
          const closed = b.eventfd(0);
          b.close(closed);
          expectPumpError(await rejection(p.copy(closed, w, Buffer.alloc(64))), { code: 'EBADF', syscall: 'read', bytesDone: 0 });
          await writeAll(b, w, Buffer.from('x'));
          expectPumpError(await rejection(p.copy(r, closed, Buffer.alloc(64))), { code: 'EBADF', syscall: 'write', bytesDone: 0 });
        });
        const data = pattern(1024 * 1024, 13);
        await withPipe(0, async (r1, w1) => {
          await withPipe(0, async (r2, w2) => {
            const pumping = rejection(p.copy(r1, w2, Buffer.alloc(32 * 1024)));
            const fed = writeAll(b, w1, data).catch(() => undefined);
            const got = await drain(r2, 256 * 1024);
            expect(got.equals(data.subarray(0, got.length))).toBe(true);
            close(r2);
            const err = expectPumpError(await pumping, { code: 'EPIPE', errno: 32, syscall: 'write', bytesDone: (await pumping as PumpError).bytesDone });
            expect(err.bytesDone).toBeGreaterThanOrEqual(got.length);
            expect(err.bytesDone).toBeLessThan(data.length);
            close(r1); // the feeder's write, waiting for room, fails now
            await fed;
          });
        });
      });

      itFiles(`carries ${opts.longHaulMiB} MiB through a pipe from a producer thread, checksummed as the JS reference does`, async () => {
        const blocks = opts.longHaulMiB;
        const [r, w] = b.pipe();
        const devNull = b.open('/dev/null', O_WRONLY);
        let expected = 0;
        const block = Buffer.alloc(1 << 20);
        for (let i = 0; i < blocks; i++) expected = crc32c(fillBlock(block, i), expected);
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
          expect(await p.copy(r, devNull, [Buffer.alloc(1 << 20), Buffer.alloc(1 << 20)])).toEqual({ bytes: blocks << 20, checksum: expected, end: 'eof' });
          expect(await exited).toBe(0);
        } finally {
          b.close(r);
          b.close(devNull);
        }
      }, 60_000);

      itFiles('pending pumps do not hold up fs.promises work issued meanwhile', async () => {
        const probe = tmp('probe.txt');
        fs.writeFileSync(probe, 'still served');
        const pipes = [0, 1, 2, 3].map(() => b.pipe());
        const dst = b.open('/dev/null', O_WRONLY);
        try {
          const pumping = pipes.map(([r]) => p.copy(r, dst, Buffer.alloc(4096)));
          await sleep(50);
          const outcome = await Promise.race([fs.promises.readFile(probe, 'utf8'), sleep(5000).then(() => 'fs.promises.readFile starved')]);
          expect(outcome).toBe('still served');
          pipes.forEach(([, w], i) => {
            fs.writeSync(w, 'x'.repeat(i + 1));
            b.close(w);
          });
          expect(await Promise.all(pumping)).toEqual([1, 2, 3, 4].map((n) => ({ bytes: n, checksum: crc32c(Buffer.from('x'.repeat(n))), end: 'eof' })));
        } finally {
          for (const [r] of pipes) b.close(r);
          b.close(dst);
        }
      });

      itFiles('writeback: a hint that changes no byte and no result', async () => {
        const data = pattern(3 * 65536 + 17, 9);
        for (const writeback of [0, 1, 4096, 2 ** 53 - 1]) {
          const f = files(`wb-${writeback}`, data);
          try {
            expect(await p.copy(f.src, f.dst, Buffer.alloc(8192), { dstOffset: 5, writeback })).toEqual({ bytes: data.length, checksum: crc32c(data), end: 'eof' });
            expect(fs.readFileSync(f.dstPath).subarray(5).equals(data)).toBe(true);
          } finally {
            f.close();
          }
        }
      });
    });

    // ---------------------------------------------------------------- cancellation and timeouts
    describe('signal and idleTimeoutMs', () => {
      it('an AbortSignal cancels a pump waiting on a pipe: ECANCELED on the side that waited, with the reason as cause', async () => {
        await withPipe(0, async (r, w) => {
          await withPipe(0, async (r2, w2) => {
            const ac = new AbortController();
            const t0 = performance.now();
            const pending = rejection(p.copy(r, w2, Buffer.alloc(4096), { signal: ac.signal }));
            await sleep(30);
            const reason = new Error('stop');
            ac.abort(reason);
            const err = expectPumpError(await pending, { code: 'ECANCELED', errno: 125, syscall: 'read', bytesDone: 0, bytesWritten: 0 });
            expect(err.cause).toBe(reason);
            expect(performance.now() - t0).toBeLessThan(2000);
            // An already aborted signal: rejected at once, nothing read.
            await writeAll(b, w, Buffer.from('kept'));
            expectPumpError(await rejection(p.copy(r, w2, Buffer.alloc(64), { signal: ac.signal })), { code: 'ECANCELED', bytesDone: 0 });
            expect((await drain(r, 4)).toString()).toBe('kept');
            void r2;
          });
        });
      });

      itFiles('an AbortSignal cancels a file-to-file copy between blocks', async () => {
        const data = pattern(8 << 20, 5);
        const f = files('abort-file', data);
        try {
          const ac = new AbortController();
          const pending = rejection(p.copy(f.src, f.dst, Buffer.alloc(4096), { signal: ac.signal, srcOffset: 0, dstOffset: 0 }));
          await sleep(5);
          ac.abort();
          const err = (await pending) as PumpError;
          expect(err.code).toBe('ECANCELED');
          expect(err.bytesDone).toBeLessThan(data.length);
        } finally {
          f.close();
        }
      });

      it('idleTimeoutMs: a source that stays silent fails with ETIMEDOUT (read side) within a bounded time', async () => {
        await withPipe(0, async (r, w) => {
          await withPipe(0, async (r2, w2) => {
            const t0 = performance.now();
            expectPumpError(await rejection(p.copy(r, w2, Buffer.alloc(4096), { idleTimeoutMs: 50 })), { code: 'ETIMEDOUT', errno: 110, syscall: 'read', bytesDone: 0 });
            const took = performance.now() - t0;
            expect(took).toBeGreaterThanOrEqual(45);
            expect(took).toBeLessThan(2000);
            // Data that keeps coming is not idle (each piece well within the timeout).
            const pending = p.readRecords(r, w2, Buffer.alloc(100), { idleTimeoutMs: 1000, records: 3 });
            const { bytes } = records([pattern(10, 1), pattern(10, 2), pattern(10, 3)]);
            for (let off = 0; off < bytes.length; off += 6) {
              await sleep(20);
              await writeAll(b, w, bytes.subarray(off, off + 6));
            }
            expect(await pending).toMatchObject({ records: 3, end: 'count' });
          });
        });
      });

      itUnless(
        opts.boundedWrites ? undefined : "this pump writes on the binding's threads",
        'idleTimeoutMs: a reader that stalls makes a write into its (blocking) pipe fail with ETIMEDOUT',
        async () => {
          const data = pattern(4 << 20, 8);
          await withPipe(0, async (r, w) => {
            await withPipe(0, async (r2, w2) => {
              const pending = rejection(p.copy(r, w2, Buffer.alloc(1 << 20), { idleTimeoutMs: 100 }));
              const fed = writeAll(b, w, data).catch(() => undefined);
              const got = await drain(r2, 1000); // then nobody reads
              expect(got.length).toBe(1000);
              const err = expectPumpError(await pending, { code: 'ETIMEDOUT', syscall: 'write', bytesDone: (await pending as PumpError).bytesDone });
              expect(err.bytesDone).toBeGreaterThan(0);
              close(r);
              await fed;
            });
          });
        },
      );
    });

    // ---------------------------------------------------------------- records
    describe('writeRecords', () => {
      for (const [prefix, two] of [
        [Buffer.alloc(0), false],
        [Buffer.from([0x10, 0x00, 0x03, 0x00]), true],
      ] as const) {
        const how = `prefix of ${prefix.length} bytes${two ? ', two buffers' : ''}`;
        itFiles(`records of recordSize payload bytes (the last short), each [prefix][len][checksum] in front, at dstOffset; header checksums from their seeds (${how})`, async () => {
          const data = pattern(3 * 4096 + 123, 21);
          const before = Buffer.alloc(100, 0x78);
          const f = files(`wr-${prefix.length}-${two}`, data, before);
          try {
            const res = await p.writeRecords(f.src, f.dst, bufs(prefix.length + 8 + 4096, two), {
              overlap: two, recordSize: 4096, prefix, dstOffset: before.length, headerChecksums: [0x01234567, 0x89abcdef, 0],
            });
            const file = fs.readFileSync(f.dstPath);
            const hl = prefix.length + 8;
            expect(file.length).toBe(before.length + data.length + 4 * hl);
            expect(file.subarray(0, before.length).equals(before)).toBe(true);
            const recs = parseRecords(file, before.length, prefix.length);
            expect(recs.map((r) => r.payload.length)).toEqual([4096, 4096, 4096, 123]);
            for (const r of recs) {
              expect(r.header.subarray(0, prefix.length).equals(prefix)).toBe(true);
              expect(r.sum).toBe(crc32c(r.payload));
            }
            expect(Buffer.concat(recs.map((r) => r.payload)).equals(data)).toBe(true);
            const headers = recs.map((r) => r.header);
            expect(res).toEqual({
              bytes: data.length, records: 4, written: data.length + 4 * hl, end: 'eof',
              headerChecksums: [sumOver(headers, 0x01234567), sumOver(headers, 0x89abcdef), sumOver(headers)],
            });
          } finally {
            f.close();
          }
        });
      }

      itFiles("an exact multiple has no short record and no empty one; an empty source writes nothing; checksum 'crc32'", async () => {
        const data = pattern(2000, 22);
        const f = files('wr-multiple', data);
        try {
          const res = await p.writeRecords(f.src, f.dst, Buffer.alloc(1008), { recordSize: 1000, dstOffset: 0, checksum: 'crc32', headerChecksums: [0] });
          const recs = parseRecords(fs.readFileSync(f.dstPath), 0, 0);
          expect(recs.map((r) => r.payload.length)).toEqual([1000, 1000]);
          for (const r of recs) expect(r.sum).toBe(crc32(r.payload));
          expect(res).toEqual({ bytes: 2000, records: 2, written: 2016, end: 'eof', headerChecksums: [sumOver(recs.map((r) => r.header), 0, 'crc32')] });
        } finally {
          f.close();
        }
        const e = files('wr-empty', Buffer.alloc(0));
        try {
          expect(await p.writeRecords(e.src, e.dst, Buffer.alloc(4096), { recordSize: 100, dstOffset: 0, headerChecksums: [7, 9] })).toEqual({
            bytes: 0, records: 0, written: 0, end: 'eof', headerChecksums: [7, 9],
          });
          expect(fs.statSync(e.dstPath).size).toBe(0);
        } finally {
          e.close();
        }
      });

      itFiles('`limit` counts payload bytes; calls continued from the returned offsets and checksums write what one call writes', async () => {
        const data = pattern(10_000, 23);
        const whole = files('wr-whole', data);
        const parts = files('wr-parts', data);
        try {
          const one = await p.writeRecords(whole.src, whole.dst, Buffer.alloc(1032), { recordSize: 1024, dstOffset: 0, headerChecksums: [0] });
          let at = 0;
          let sum = 0;
          const ends: string[] = [];
          for (;;) {
            const r = await p.writeRecords(parts.src, parts.dst, Buffer.alloc(1032), { recordSize: 1024, dstOffset: at, limit: 3 * 1024, headerChecksums: [sum] });
            at += r.written;
            sum = r.headerChecksums[0];
            ends.push(`${r.end}:${r.bytes}:${r.records}`);
            if (r.end !== 'limit') break;
          }
          expect(ends).toEqual(['limit:3072:3', 'limit:3072:3', 'limit:3072:3', 'eof:784:1']);
          expect(fs.readFileSync(parts.dstPath).equals(fs.readFileSync(whole.dstPath))).toBe(true);
          expect(sum).toBe(one.headerChecksums[0]);
        } finally {
          whole.close();
          parts.close();
        }
      });

      it('short reads from a pipe are gathered into whole records; precopy ends with for-now, never with an empty record', async () => {
        await withPipe(O_NONBLOCK, async (r, w) => {
          await withPipe(0, async (r2, w2) => {
            const pumping = p.writeRecords(r, w2, Buffer.alloc(2048 + 8), { recordSize: 2048, precopy: true });
            const sent: Buffer[] = [];
            for (let i = 0; i < 10; i++) {
              sent.push(pattern(700, 100 + i));
              await writeAll(b, w, sent[i]);
              await sleep(2);
            }
            close(w);
            const data = Buffer.concat(sent);
            const out = await drain(r2, data.length + 4 * 8);
            const res = await pumping;
            const recs = parseRecords(out, 0, 0);
            expect(recs.map((x) => x.payload.length)).toEqual([2048, 2048, 2048, 856]);
            expect(Buffer.concat(recs.map((x) => x.payload)).equals(data)).toBe(true);
            expect(res).toMatchObject({ bytes: 7000, records: 4, end: 'for-now' });
            expect(await p.writeRecords(r, w2, Buffer.alloc(2056), { recordSize: 2048, precopy: true })).toEqual({ bytes: 0, records: 0, written: 0, end: 'for-now', headerChecksums: [] });
          });
        });
      });

      it("EPIPE mid-stream: syscall 'write', bytesDone = the payload of the records written whole", async () => {
        const chunk = 32 * 1024;
        const data = pattern(1024 * 1024, 24);
        await withPipe(0, async (r1, w1) => {
          await withPipe(0, async (r2, w2) => {
            const pumping = rejection(p.writeRecords(r1, w2, [Buffer.alloc(chunk + 8), Buffer.alloc(chunk + 8)], { recordSize: chunk }));
            const fed = writeAll(b, w1, data).catch(() => undefined);
            const got = await drain(r2, 256 * 1024);
            const whole = Math.floor(got.length / (chunk + 8));
            const recs = parseRecords(got.subarray(0, whole * (chunk + 8)), 0, 0);
            expect(Buffer.concat(recs.map((x) => x.payload)).equals(data.subarray(0, whole * chunk))).toBe(true);
            close(r2);
            const err = (await pumping) as PumpError;
            expect({ code: err.code, syscall: err.syscall }).toEqual({ code: 'EPIPE', syscall: 'write' });
            expect(err.bytesDone % chunk).toBe(0);
            expect(err.bytesDone).toBeGreaterThanOrEqual(whole * chunk);
            // Every byte that reached dst, headers and a part-written record included.
            expect(err.bytesWritten).toBeGreaterThanOrEqual(got.length);
            expect(err.bytesWritten).toBeGreaterThanOrEqual(err.bytesDone + (err.bytesDone / chunk) * 8);
            close(r1); // the feeder's write, waiting for room, fails now
            await fed;
          });
        });
      });
    });

    describe('readRecords', () => {
      const JUNK = Buffer.alloc(50, 0xee);
      const PAYLOADS = [pattern(1000, 31), pattern(4096, 32), pattern(1, 33), pattern(3000, 34)];
      const sum = (ps: Buffer[]) => ps.reduce((n, x) => n + x.length, 0);
      const TERMINATOR = Buffer.from([0, 0, 0, 0, 0xaa, 0xbb, 0xcc, 0xdd]);

      for (const [prefixLen, two] of [
        [0, false],
        [0, true],
        [4, false],
        [4, true],
      ] as const) {
        const prefix = Buffer.from([1, 0, 7, 0]).subarray(0, prefixLen);
        const how = `prefix of ${prefixLen} bytes${two ? ', two buffers' : ''}`;
        const hl = prefixLen + 8;
        const at = (i: number) => JUNK.length + PAYLOADS.slice(0, i).reduce((n, x) => n + hl + x.length, 0);

        itFiles(`moves checked payloads and stops at a terminator, handing it back; by position, continued calls agree (${how})`, async () => {
          const recs = records(PAYLOADS, prefix);
          const f = files(`rr-${prefixLen}-${two}`, Buffer.concat([JUNK, recs.bytes, TERMINATOR, Buffer.alloc(10, 0x33)]));
          try {
            const res = await p.readRecords(f.src, f.dst, bufs(4096 + hl, two), { overlap: two, prefix, srcOffset: JUNK.length, maxRecord: 4096, headerChecksums: [0, 5] });
            expect(res).toEqual({
              bytes: sum(PAYLOADS), records: 4, read: recs.bytes.length, end: 'header',
              headerChecksums: [sumOver(recs.headers), sumOver(recs.headers, 5)],
              header: prefixLen === 0 ? TERMINATOR : Buffer.concat([TERMINATOR, Buffer.alloc(10, 0x33)]).subarray(0, hl),
            });
            expect(fs.readFileSync(f.dstPath).equals(Buffer.concat(PAYLOADS))).toBe(true);
            // In two calls, by count.
            fs.truncateSync(f.dstPath, 0);
            const first = await p.readRecords(f.src, f.dst, bufs(4096 + hl, two), { overlap: two, prefix, srcOffset: at(0), records: 2, headerChecksums: [0], dstOffset: 0 });
            expect(first).toEqual({ bytes: 5096, records: 2, read: at(2) - at(0), end: 'count', headerChecksums: [sumOver(recs.headers.slice(0, 2))] });
            const rest = await p.readRecords(f.src, f.dst, bufs(4096 + hl, two), { overlap: two, prefix, srcOffset: at(2), records: 2, headerChecksums: first.headerChecksums, dstOffset: 5096 });
            expect(rest).toEqual({ bytes: 3001, records: 2, read: at(4) - at(2), end: 'count', headerChecksums: [sumOver(recs.headers)] });
            expect(fs.readFileSync(f.dstPath).equals(Buffer.concat(PAYLOADS))).toBe(true);
          } finally {
            f.close();
          }
        });

        itFiles(`firstHeader: the caller read the first header; the pump starts with that record's payload, checks it, counts the header in read (${how})`, async () => {
          const recs = records(PAYLOADS, prefix);
          // The source holds everything after the first header.
          const f = files(`rr-first-${prefixLen}-${two}`, Buffer.concat([recs.bytes.subarray(hl), TERMINATOR, Buffer.alloc(10, 0x33)]));
          try {
            const res = await p.readRecords(f.src, f.dst, bufs(4096 + hl, two), { overlap: two, prefix, srcOffset: 0, firstHeader: recs.headers[0], headerChecksums: [0] });
            expect(res).toMatchObject({ bytes: sum(PAYLOADS), records: 4, read: recs.bytes.length, end: 'header', headerChecksums: [sumOver(recs.headers)] });
            expect(fs.readFileSync(f.dstPath).equals(Buffer.concat(PAYLOADS))).toBe(true);
            // A given header whose payload does not match it: nothing is written.
            fs.truncateSync(f.dstPath, 0);
            const wrong = Buffer.from(recs.headers[0]);
            wrong.writeUInt32LE((wrong.readUInt32LE(prefixLen + 4) ^ 1) >>> 0, prefixLen + 4);
            expectPumpError(await rejection(p.readRecords(f.src, f.dst, bufs(4096 + hl, two), { overlap: two, prefix, srcOffset: 0, dstOffset: 0, firstHeader: wrong })), {
              code: 'EVFIO_CHECKSUM', bytesDone: 0, recordOffset: 0,
            });
            expect(fs.readFileSync(f.dstPath).length).toBe(0);
            // Offsets are the source's: the record after the given one starts right after its payload.
            const bad = Buffer.concat([recs.bytes.subarray(hl), TERMINATOR, Buffer.alloc(10, 0x33)]);
            bad[PAYLOADS[0].length + hl] ^= 0x01;
            const g = files(`rr-first-bad-${prefixLen}-${two}`, bad);
            try {
              expectPumpError(await rejection(p.readRecords(g.src, g.dst, bufs(4096 + hl, two), { overlap: two, prefix, srcOffset: 0, firstHeader: recs.headers[0] })), {
                code: 'EVFIO_CHECKSUM', bytesDone: PAYLOADS[0].length, recordOffset: PAYLOADS[0].length,
              });
            } finally {
              g.close();
            }
            await expect(Promise.resolve().then(() => p.readRecords(f.src, f.dst, bufs(4096 + hl, two), { prefix, records: 0, firstHeader: recs.headers[0] }))).rejects.toThrow(/firstHeader/);
            // A header of the wrong size is refused before anything moves.
            await expect(Promise.resolve().then(() => p.readRecords(f.src, f.dst, bufs(4096 + hl, two), { prefix, firstHeader: Buffer.alloc(hl + 1) }))).rejects.toThrow(/firstHeader/);
          } finally {
            f.close();
          }
        });

        itFiles(`a checksum mismatch rejects with EVFIO_CHECKSUM at the record's offset, the records before it written, nothing of it (${how})`, async () => {
          for (const bad of [0, 2, 3]) {
            const bytes = Buffer.concat([JUNK, records(PAYLOADS, prefix).bytes]);
            bytes[at(bad) + hl + PAYLOADS[bad].length - 1] ^= 0x01;
            const f = files(`rr-sum-${prefixLen}-${two}-${bad}`, bytes);
            try {
              const err = expectPumpError(await rejection(p.readRecords(f.src, f.dst, bufs(4096 + hl, two), { overlap: two, prefix, srcOffset: JUNK.length })), {
                code: 'EVFIO_CHECKSUM', kind: 'format', bytesDone: sum(PAYLOADS.slice(0, bad)), recordOffset: at(bad),
              });
              expect(err.message).toContain(`offset ${at(bad)}`);
              expect(fs.readFileSync(f.dstPath).equals(Buffer.concat(PAYLOADS.slice(0, bad)))).toBe(true);
            } finally {
              f.close();
            }
          }
        });

        itFiles(`a length over maxRecord or the buffer: EVFIO_RECORD_LENGTH with recordLength; a source cut inside a record or the header after: EVFIO_TRUNCATED; cut between records: 'eof' (${how})`, async () => {
          const body = records(PAYLOADS, prefix).bytes;
          const f = files(`rr-len-${prefixLen}-${two}`, Buffer.concat([JUNK, body]));
          try {
            expectPumpError(await rejection(p.readRecords(f.src, f.dst, bufs(4096 + hl, two), { overlap: two, prefix, srcOffset: JUNK.length, maxRecord: 2048 })), {
              code: 'EVFIO_RECORD_LENGTH', kind: 'format', bytesDone: 1000, recordOffset: at(1), recordLength: 4096,
            });
            fs.truncateSync(f.dstPath, 0);
            expectPumpError(await rejection(p.readRecords(f.src, f.dst, bufs(4095, two), { overlap: two, prefix, srcOffset: JUNK.length, dstOffset: 0 })), {
              code: 'EVFIO_RECORD_LENGTH', kind: 'format', bytesDone: 1000, recordOffset: at(1), recordLength: 4096,
            });
            // The whole body, then the end of the file between records.
            fs.truncateSync(f.dstPath, 0);
            expect(await p.readRecords(f.src, f.dst, bufs(4096 + hl, two), { overlap: two, prefix, srcOffset: JUNK.length, dstOffset: 0 })).toMatchObject({ records: 4, end: 'eof', bytes: sum(PAYLOADS) });
          } finally {
            f.close();
          }
          for (const [cut, recAt, done] of [
            [at(1) + hl + 100, at(1), 1000], // inside record 1's payload
            [at(2) + 3, at(2), 5096], // inside record 2's header
          ] as const) {
            const g = files(`rr-cut-${prefixLen}-${two}-${cut}`, Buffer.concat([JUNK, body]).subarray(0, cut));
            try {
              const err = expectPumpError(await rejection(p.readRecords(g.src, g.dst, bufs(4096 + hl, two), { overlap: two, prefix, srcOffset: JUNK.length })), {
                code: 'EVFIO_TRUNCATED', kind: 'format', bytesDone: done, recordOffset: recAt,
              });
              expect(err.message).toContain(`offset ${recAt}`);
              expect(fs.statSync(g.dstPath).size).toBe(done);
            } finally {
              g.close();
            }
          }
        });
      }

      it('from a stream: another prefix stops it and is handed back; nothing after it is read, by count neither', async () => {
        const prefix = Buffer.from([1, 0, 2, 0]);
        const recs = records(PAYLOADS.slice(0, 3), prefix);
        const control = Buffer.from([9, 0, 0, 0, 4, 0, 0, 0, 0x11, 0x22, 0x33, 0x44]);
        const after = Buffer.from('control body, then more');
        await withPipe(0, async (r, w) => {
          await withPipe(0, async (r2, w2) => {
            const fed = writeAll(b, w, Buffer.concat([recs.bytes, control, after]));
            const pumping = p.readRecords(r, w2, Buffer.alloc(4096 + 12), { prefix, headerChecksums: [0] });
            const out = await drain(r2, sum(PAYLOADS.slice(0, 3)));
            const res = await pumping;
            await fed;
            expect(res).toEqual({ bytes: sum(PAYLOADS.slice(0, 3)), records: 3, read: recs.bytes.length, end: 'header', header: control, headerChecksums: [sumOver(recs.headers)] });
            expect(out.equals(Buffer.concat(PAYLOADS.slice(0, 3)))).toBe(true);
            // What follows the handed-back header is still in the pipe.
            expect((await drain(r, after.length)).equals(after)).toBe(true);
            // By count: the record after the last one is not touched.
            await writeAll(b, w, recs.bytes);
            expect(await p.readRecords(r, w2, Buffer.alloc(4096 + 12), { prefix, records: 1 })).toMatchObject({ records: 1, end: 'count' });
            await drain(r2, PAYLOADS[0].length);
            expect((await drain(r, recs.bytes.length - 12 - PAYLOADS[0].length)).equals(recs.bytes.subarray(12 + PAYLOADS[0].length))).toBe(true);
          });
        });
      });

      itFiles("from a socket: the pump stops at a control frame and leaves the socket's next bytes to the caller; a closed peer is EPIPE, not SIGPIPE", async () => {
        const [s1, s2] = socketPair();
        const [r2, w2] = b.pipe();
        try {
          const prefix = Buffer.from([1, 0, 0, 0]);
          const recs = records([pattern(70_000, 1), pattern(5, 2)], prefix);
          const control = Buffer.from([2, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0]);
          const pumping = p.readRecords(s2, w2, [Buffer.alloc(70_012), Buffer.alloc(70_012)], { prefix, idleTimeoutMs: 5000 });
          const reading = drain(r2, 70_005);
          for (const part of [recs.bytes, control, Buffer.from('abc')]) fs.writeSync(s1, part);
          expect(await pumping).toMatchObject({ records: 2, end: 'header', header: control });
          expect((await reading).length).toBe(70_005);
          const rest = Buffer.alloc(3);
          expect(fs.readSync(s2, rest)).toBe(3);
          expect(rest.toString()).toBe('abc');
          // Writing records into a socket whose peer has gone.
          fs.closeSync(s1);
          const src = b.open('/dev/zero', O_RDONLY);
          try {
            const err = (await rejection(p.writeRecords(src, s2, Buffer.alloc(4096 + 12), { recordSize: 4096, prefix, limit: 1 << 20 }))) as PumpError;
            expect(['EPIPE', 'ECONNRESET']).toContain(err.code);
            expect(err.syscall).toBe('write');
          } finally {
            b.close(src);
          }
        } finally {
          for (const fd of [s2, r2, w2]) fs.closeSync(fd);
          try {
            fs.closeSync(s1);
          } catch {
            /* closed above */
          }
        }
      });

      itFiles('from a socket: a record goes out before the rest of the header after it arrives; that header, split anywhere, is put together', async () => {
        const prefix = Buffer.from([1, 0, 0, 0]);
        const payloads = [pattern(5000, 41), pattern(3000, 42), pattern(7, 43)];
        const recs = records(payloads, prefix);
        const control = Buffer.from([2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        const stream = Buffer.concat([recs.bytes, control, Buffer.from('xyz')]);
        // Cut inside the second record's header, inside the third's payload and the control header.
        const cuts = [5000 + 12 + 5, 5000 + 12 + 3000 + 12 + 11, 5000 + 12 + 3000 + 12 + 12 + 3, recs.bytes.length + 1, recs.bytes.length + 12];
        const [s1, s2] = socketPair();
        const [r2, w2] = b.pipe();
        try {
          const pumping = p.readRecords(s2, w2, [Buffer.alloc(8192 + 12), Buffer.alloc(8192 + 12)], { prefix, idleTimeoutMs: 5000 });
          let from = 0;
          let delivered = 0;
          for (const cut of [...cuts, stream.length]) {
            fs.writeSync(s1, stream.subarray(from, cut));
            // Every record whole in what was sent so far reaches the pipe before anything more is sent.
            let whole = 0;
            for (let i = 0, pos = 0; i < payloads.length; i++) {
              pos += 12 + payloads[i].length;
              if (pos <= cut) whole += payloads[i].length;
            }
            if (whole > delivered) {
              const got = await drain(r2, whole - delivered);
              expect(got.equals(Buffer.concat(payloads).subarray(delivered, whole))).toBe(true);
              delivered = whole;
            }
            from = cut;
          }
          expect(await pumping).toMatchObject({ records: 3, bytes: 5000 + 3000 + 7, end: 'header', header: control, read: recs.bytes.length });
          const rest = Buffer.alloc(8);
          expect(fs.readSync(s2, rest)).toBe(3);
          expect(rest.subarray(0, 3).toString()).toBe('xyz');
        } finally {
          for (const fd of [s1, s2, r2, w2]) fs.closeSync(fd);
        }
      });

      itFiles('from a socket: a damaged payload is EVFIO_CHECKSUM with nothing of it written; a peer gone inside the next header is EVFIO_TRUNCATED at its offset', async () => {
        const prefix = Buffer.from([1, 0, 0, 0]);
        const payloads = [pattern(4000, 51), pattern(4000, 52)];
        for (const damage of [true, false]) {
          const recs = records(payloads, prefix);
          if (damage) recs.bytes[12 + 4000 + 12 + 3999] ^= 0x10;
          const sent = damage ? recs.bytes : recs.bytes.subarray(0, 12 + 4000 + 7);
          const [s1, s2] = socketPair();
          const [r2, w2] = b.pipe();
          const open = new Set([s1, s2, r2, w2]);
          const shut = (fd: number): void => {
            if (open.delete(fd)) fs.closeSync(fd);
          };
          try {
            const pumping = p.readRecords(s2, w2, [Buffer.alloc(4096 + 12), Buffer.alloc(4096 + 12)], { prefix, idleTimeoutMs: 5000 });
            fs.writeSync(s1, sent);
            shut(s1);
            expectPumpError(await rejection(pumping), damage
              ? { code: 'EVFIO_CHECKSUM', kind: 'format', bytesDone: 4000, recordOffset: 12 + 4000 }
              : { code: 'EVFIO_TRUNCATED', bytesDone: 4000, recordOffset: 12 + 4000 });
            expect((await drain(r2, 4000)).equals(payloads[0])).toBe(true);
            shut(w2);
            const tail = Buffer.alloc(16);
            expect(fs.readSync(r2, tail)).toBe(0);
          } finally {
            for (const fd of [...open]) shut(fd);
          }
        }
      });

      itFiles('from a socket: by count, nothing of the record after the last one is taken; a payload that fills the buffer reads no header ahead', async () => {
        const prefix = Buffer.from([1, 0, 0, 0]);
        const payloads = [pattern(3000, 61), pattern(4096, 62), pattern(500, 63)];
        const recs = records(payloads, prefix);
        const [s1, s2] = socketPair();
        const [r2, w2] = b.pipe();
        try {
          fs.writeSync(s1, recs.bytes);
          // records: 1 takes the first record and not a byte of the second's header.
          expect(await p.readRecords(s2, w2, [Buffer.alloc(4096 + 12), Buffer.alloc(4096 + 12)], { prefix, records: 1, idleTimeoutMs: 5000 })).toMatchObject({ records: 1, end: 'count' });
          expect((await drain(r2, 3000)).equals(payloads[0])).toBe(true);
          // The second payload fills a 4096-byte buffer: no room to read its successor's header with it.
          expect(await p.readRecords(s2, w2, Buffer.alloc(4096), { prefix, records: 1, idleTimeoutMs: 5000 })).toMatchObject({ records: 1, end: 'count', bytes: 4096 });
          expect((await drain(r2, 4096)).equals(payloads[1])).toBe(true);
          // What is left on the socket is the third record, whole.
          const rest = Buffer.alloc(recs.bytes.length);
          expect(fs.readSync(s2, rest)).toBe(12 + 500);
          expect(rest.subarray(0, 12 + 500).equals(recs.bytes.subarray(recs.bytes.length - 512))).toBe(true);
        } finally {
          for (const fd of [s1, s2, r2, w2]) fs.closeSync(fd);
        }
      });

      itFiles('writes and reads back a stream of records through a socket', async () => {
        const [s1, s2] = socketPair();
        const data = pattern(3 << 20, 77);
        const srcPath = tmp('sock.src');
        const dstPath = tmp('sock.dst');
        fs.writeFileSync(srcPath, data);
        fs.writeFileSync(dstPath, '');
        const src = b.open(srcPath, O_RDONLY);
        const dst = b.open(dstPath, O_WRONLY);
        try {
          const prefix = Buffer.from([1, 0, 5, 0]);
          const sending = p.writeRecords(src, s1, [Buffer.alloc((1 << 20) + 12), Buffer.alloc((1 << 20) + 12)], { recordSize: 1 << 20, prefix, headerChecksums: [0] });
          const receiving = p.readRecords(s2, dst, [Buffer.alloc((1 << 20) + 12), Buffer.alloc((1 << 20) + 12)], { prefix, records: 3, headerChecksums: [0] });
          const [sent, received] = await Promise.all([sending, receiving]);
          expect(sent).toMatchObject({ records: 3, bytes: data.length });
          expect(received).toMatchObject({ records: 3, bytes: data.length, end: 'count', headerChecksums: sent.headerChecksums });
          expect(fs.readFileSync(dstPath).equals(data)).toBe(true);
        } finally {
          for (const fd of [src, dst]) b.close(fd);
          for (const fd of [s1, s2]) fs.closeSync(fd);
        }
      });
    });

    // ---------------------------------------------------------------- hygiene
    it('leaks no fds over many pumps, successful or not', async () => {
      const before = countFds();
      for (let i = 0; i < 30; i++) {
        await withPipe(0, async (r, w) => {
          await withPipe(0, async (r2, w2) => {
            await writeAll(b, w, records([pattern(100, i), pattern(50, i)]).bytes);
            close(w);
            expect(await p.readRecords(r, w2, [Buffer.alloc(200), Buffer.alloc(200)], { records: 1 })).toMatchObject({ records: 1 });
            expectPumpError(await rejection(p.copy(r, r, Buffer.alloc(64))), { code: 'EBADF', syscall: 'write', bytesDone: 0 }); // a read end as destination
            const ac = new AbortController();
            const pending = rejection(p.copy(r2, w2, Buffer.alloc(64), { signal: ac.signal }));
            ac.abort();
            await pending;
          });
        });
      }
      expect(countFds()).toBe(before);
    });

    it('rejects bad arguments synchronously, with the same messages from every pump', () => {
      const buf = Buffer.alloc(16);
      const R = 'ERR_OUT_OF_RANGE';
      const T = 'ERR_INVALID_ARG_TYPE';
      const cases: Array<[() => unknown, string, string]> = [
        [() => p.copy(-1, 1, buf), R, 'copy: "srcFd" is out of range [0, 2147483647]'],
        [() => p.copy(0, 1.5, buf), R, 'copy: "dstFd" must be an integer'],
        [() => p.copy(0, 1, Buffer.alloc(0)), R, 'copy: "buffers" must not be empty'],
        [() => p.copy(0, 1, 'x' as never), T, 'copy: "buffers" must be a Buffer'],
        [() => p.copy(0, 1, [] as never), R, 'copy: "buffers" must be a Buffer or an array of 1 or 2 Buffers'],
        [() => p.copy(0, 1, [buf, buf.subarray(8)] as never), R, 'copy: the two buffers must not overlap'],
        [() => p.copy(0, 1, buf, null as never), T, 'copy: "options" must be an object'],
        [() => p.copy(0, 1, buf, { limit: -1 }), R, 'copy: "limit" is out of range [0, 9007199254740991]'],
        [() => p.copy(0, 1, buf, { limit: '5' as never }), T, 'copy: "limit" must be a number'],
        [() => p.copy(0, 1, buf, { srcOffset: -1 }), R, 'copy: "srcOffset" is out of range [0, 9007199254740991]'],
        [() => p.copy(0, 1, buf, { expectChecksum: 0 }), R, 'copy: "expectChecksum" needs "limit", at most the buffer length (16)'],
        [() => p.copy(0, 1, buf, { expectChecksum: 2 ** 32, limit: 8 }), R, 'copy: "expectChecksum" is out of range [0, 4294967295]'],
        [() => p.copy(0, 1, buf, { precopy: 1 as never }), T, 'copy: "precopy" must be a boolean'],
        [() => p.copy(0, 1, buf, { overlap: 1 as never }), T, 'copy: "overlap" must be a boolean'],
        [() => p.readRecords(0, 1, buf, { overlap: 'yes' as never }), T, 'readRecords: "overlap" must be a boolean'],
        [() => p.copy(0, 1, buf, { checksum: 'md5' as never }), R, `copy: "checksum" must be 'crc32c' or 'crc32'`],
        [() => p.copy(0, 1, buf, { checksum: 1 as never }), T, `copy: "checksum" must be 'crc32c' or 'crc32'`],
        [() => p.copy(0, 1, buf, { signal: {} as never }), T, 'copy: "signal" must be an AbortSignal'],
        [() => p.copy(0, 1, buf, { idleTimeoutMs: -1 }), R, 'copy: "idleTimeoutMs" is out of range [0, 2147483647]'],
        [() => p.writeRecords(0, 1, buf, undefined as never), T, 'writeRecords: "options" must be an object'],
        [() => p.writeRecords(0, 1, buf, {} as never), T, 'writeRecords: "recordSize" must be a number'],
        [() => p.writeRecords(0, 1, buf, { recordSize: 0 }), R, 'writeRecords: "recordSize" is out of range [1, 1073741824]'],
        [() => p.writeRecords(0, 1, buf, { recordSize: 9 }), R, 'writeRecords: "recordSize" needs buffers of at least 17 bytes (prefix, header and payload); the smallest has 16'],
        [() => p.writeRecords(0, 1, [Buffer.alloc(20), Buffer.alloc(16)], { recordSize: 10 }), R, 'writeRecords: "recordSize" needs buffers of at least 18 bytes (prefix, header and payload); the smallest has 16'],
        [() => p.writeRecords(0, 1, buf, { recordSize: 4, prefix: Buffer.alloc(9) }), R, 'writeRecords: "prefix" is 9 bytes, more than 8'],
        [() => p.writeRecords(0, 1, buf, { recordSize: 4, prefix: 'ab' as never }), T, 'writeRecords: "prefix" must be a Buffer or Uint8Array'],
        [() => p.writeRecords(0, 1, buf, { recordSize: 4, headerChecksums: [1, 2, 3, 4, 5] }), R, 'writeRecords: "headerChecksums" has 5 seeds, more than 4'],
        [() => p.writeRecords(0, 1, buf, { recordSize: 4, headerChecksums: [-1] }), R, 'writeRecords: "headerChecksums" is out of range [0, 4294967295]'],
        [() => p.writeRecords(0, 1, buf, { recordSize: 4, headerChecksums: 5 as never }), T, 'writeRecords: "headerChecksums" must be an array'],
        [() => p.readRecords(0, 1, buf, { maxRecord: 0 }), R, 'readRecords: "maxRecord" is out of range [1, 4294967295]'],
        [() => p.readRecords(0, 1, buf, { records: -1 }), R, 'readRecords: "records" is out of range [0, 9007199254740991]'],
        [() => p.readRecords(0, 1, buf, { records: 1.5 } as ReadRecordsOptions), R, 'readRecords: "records" must be an integer'],
      ];
      for (const [call, code, message] of cases) {
        const e = thrown(call, Error, message) as Error & { code?: string };
        expect(e, message).toBeInstanceOf(code === T ? TypeError : RangeError);
        expect({ code: e.code, message: e.message }).toEqual({ code, message });
      }
    });
  });
}

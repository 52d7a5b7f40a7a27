/**
 * The vfio_pci addon itself: it loads (from node-gyp's and cmake-js's output), rejects abuse
 * with TypeError/RangeError without crashing, keeps Buffers alive while async work uses them,
 * builds errors from the class it is handed, and loads and works inside worker_threads.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import { Worker } from 'node:worker_threads';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VfioError } from '../../src/base/errors';
import { KoffiBinding } from '../../src/kernel/binding/koffi';
import { NATIVE_ADDON_FILES, NativeBinding, nativeAddonCandidates, packageRoot } from '../../src/kernel/binding/native';
import { POLLIN, type Binding } from '../../src/kernel/binding/types';
import { JsPump, NativePump, jsChecksum, type Pump } from '../../src/kernel/pump';
import { rejection, thrown } from '../helpers/errors';
import { useTempDir } from '../helpers/temp-dir';
import { itUnless } from '../helpers/skip';

const crc32c = (b: Buffer) => jsChecksum.crc32c(b);

const root = packageRoot();
const nodeRequire = createRequire(__filename);
const addonFile = nativeAddonCandidates(root)[0];

/** The raw addon (the same module instance NativeBinding loads). */
type RawAddon = Record<string, (...args: unknown[]) => unknown>;
function raw(file = addonFile): RawAddon {
  return nodeRequire(file) as RawAddon;
}

const tmp = useTempDir('vfio-addon');

/** The socket calls (native.d.ts "sockets"; exercised by test/contract/socket-suite.ts). */
const SOCKET_CALLS = ['accept', 'bind', 'connect', 'getpeername', 'getsockname', 'getsockopt', 'listen', 'recvNow', 'sendNow', 'setsockopt', 'shutdown', 'socket'];

describe('loading', () => {
  it('at least one build of the addon exists', () => {
    expect(addonFile, `none of ${NATIVE_ADDON_FILES.join(', ')} under ${root}`).toBeDefined();
  });

  it('exposes exactly the documented functions', () => {
    expect(Object.keys(raw()).sort()).toEqual(
      [
        ...SOCKET_CALLS,
        'bufferAddress',
        'checksum',
        'checksumImplementations',
        'close',
        'eventfd',
        'eventfdRead',
        'eventfdWrite',
        'ioctl',
        'ioctlAsync',
        'open',
        'pipe',
        'poll',
        'populate',
        'pread',
        'pump',
        'pwrite',
        'read',
        'setErrorClass',
        'walkRecords',
        'write',
      ].sort(),
    );
    for (const [k, f] of Object.entries(raw())) if (k !== 'checksumImplementations') expect(typeof f).toBe('function');
    // Every CPU has the portable implementations, last.
    const impls = raw().checksumImplementations as unknown as { crc32c: string[]; crc32: string[] };
    expect(impls.crc32c.at(-1)).toBe('table');
    expect(impls.crc32.at(-1)).toBe('zlib');
    expect(Object.isFrozen(impls)).toBe(true);
  });

  for (const rel of NATIVE_ADDON_FILES) {
    const file = path.join(root, rel);
    const present = fs.existsSync(file);
    itUnless(present ? undefined : 'not built', `${rel} loads and works`, async () => {
      const b = new NativeBinding(file);
      expect(b.file).toBe(file);
      const efd = b.eventfd(0);
      b.eventfdWrite(efd, 41n);
      b.eventfdWrite(efd, 1n);
      expect(b.eventfdRead(efd)).toBe(42n);
      b.close(efd);
      expect(thrown(() => b.close(efd))).toMatchObject({ code: 'EBADF', errno: 9, syscall: 'close' });

      const data = Buffer.from('the device state, more or less');
      const src = tmp.file(`${path.basename(path.dirname(path.dirname(rel)))}.src`);
      fs.writeFileSync(src, data);
      const [r, w] = b.pipe();
      const sfd = b.open(src, fs.constants.O_RDONLY);
      try {
        const res = await new NativePump(b.addon).copy(sfd, w, Buffer.alloc(7));
        expect(res).toEqual({ bytes: data.length, checksum: crc32c(data), end: 'eof' });
        const got = Buffer.alloc(64);
        expect(await b.read(r, got)).toBe(data.length);
        expect(got.subarray(0, data.length).equals(data)).toBe(true);
      } finally {
        for (const fd of [r, w, sfd]) b.close(fd);
      }
    });
  }
});

/** Calls that must throw `ctor` (with Node's code) before reaching the kernel. */
function abuseCases(fd: number): Array<[string, (b: Binding) => unknown, typeof TypeError | typeof RangeError]> {
  const a = (v: unknown) => v as never; // pass wrong types through the typed interface
  const buf = Buffer.alloc(10);
  return [
    ['open: path not a string', (b) => b.open(a(123), 0), TypeError],
    ['open: flags missing', (b) => b.open('/nonexistent', a(undefined)), TypeError],
    ['open: NUL in path', (b) => b.open('/tmp/a\0b', 0), TypeError],
    ['open: negative flags', (b) => b.open('/nonexistent', -1), RangeError],
    ['open: mode too large', (b) => b.open('/nonexistent', 0, 0o10000), RangeError],
    ['close: no fd', (b) => b.close(a(undefined)), TypeError],
    ['close: fd as string', (b) => b.close(a('3')), TypeError],
    ['close: negative fd', (b) => b.close(-1), RangeError],
    ['close: fd >= 2^31', (b) => b.close(2 ** 31), RangeError],
    ['close: fractional fd', (b) => b.close(1.5), RangeError],
    ['close: NaN', (b) => b.close(NaN), RangeError],
    ['close: Infinity', (b) => b.close(Infinity), RangeError],
    ['ioctl: negative request', (b) => b.ioctl(fd, -1), RangeError],
    ['ioctl: request >= 2^32', (b) => b.ioctl(fd, 2 ** 32), RangeError],
    ['ioctl: string arg', (b) => b.ioctl(fd, 0x541b, a('x')), TypeError],
    ['ioctl: object arg', (b) => b.ioctl(fd, 0x541b, a({})), TypeError],
    ['ioctl: empty Buffer', (b) => b.ioctl(fd, 0x541b, Buffer.alloc(0)), RangeError],
    ['ioctl: unsafe integer arg', (b) => b.ioctl(fd, 0x541b, 2 ** 60), RangeError],
    ['pread: not a Buffer', (b) => b.pread(fd, a('buf'), 0), TypeError],
    ['pread: negative position', (b) => b.pread(fd, buf, -1), RangeError],
    ['pread: position beyond 2^53', (b) => b.pread(fd, buf, 2 ** 53), RangeError],
    ['pread: length beyond the buffer', (b) => b.pread(fd, buf, 0, 11), RangeError],
    ['pread: huge length', (b) => b.pread(fd, buf, 0, 2 ** 40), RangeError],
    ['pwrite: length beyond the buffer', (b) => b.pwrite(fd, buf, 0, 11), RangeError],
    ['pwrite: null buffer', (b) => b.pwrite(fd, a(null), 0), TypeError],
    ['read: offset beyond the buffer', (b) => b.read(fd, buf, 11), RangeError],
    ['read: offset + length beyond the buffer', (b) => b.read(fd, buf, 8, 4), RangeError],
    ['read: huge length', (b) => b.read(fd, buf, 0, 2 ** 40), RangeError],
    ['read: negative offset', (b) => b.read(fd, buf, -1), RangeError],
    ['write: null buffer', (b) => b.write(fd, a(null)), TypeError],
    ['write: fd out of range', (b) => b.write(-5, buf), RangeError],
    ['eventfd: negative initval', (b) => b.eventfd(-1), RangeError],
    ['eventfd: initval >= 2^32', (b) => b.eventfd(2 ** 32), RangeError],
    ['eventfd: initval as string', (b) => b.eventfd(a('1')), TypeError],
    ['eventfdWrite: number instead of bigint', (b) => b.eventfdWrite(fd, a(5)), TypeError],
    ['eventfdWrite: negative bigint', (b) => b.eventfdWrite(fd, -1n), RangeError],
    ['eventfdWrite: bigint >= 2^64', (b) => b.eventfdWrite(fd, 2n ** 64n), RangeError],
    ['eventfdRead: fd as object', (b) => b.eventfdRead(a({})), TypeError],
    ['poll: events as string', (b) => b.poll(fd, a('x'), 0), TypeError],
    ['poll: events beyond a short', (b) => b.poll(fd, 0x10000, 0), RangeError],
    ['poll: fractional timeout', (b) => b.poll(fd, POLLIN, 1.5), RangeError],
    ['pipe: negative flags', (b) => b.pipe(-1), RangeError],
  ];
}

describe('abuse', () => {
  const bindings: Array<[string, () => Binding]> = [
    ['native', () => new NativeBinding()],
    ['koffi (same checks)', () => new KoffiBinding()],
  ];
  for (const [name, make] of bindings) {
    describe(name, () => {
      let b: Binding;
      let fd: number;
      beforeAll(() => {
        b = make();
        fd = b.eventfd(0);
      });
      afterAll(() => b.close(fd));

      it('throws TypeError / RangeError with Node codes, synchronously, and survives', async () => {
        for (const [what, call, ctor] of abuseCases(fd)) {
          const e = thrown(() => call(b), Error, what) as Error & { code?: string };
          expect(e, what).toBeInstanceOf(ctor);
          expect(e.code, what).toBe(
            ctor === TypeError ? 'ERR_INVALID_ARG_TYPE' : 'ERR_OUT_OF_RANGE',
          );
        }
        // Still alive and working.
        b.eventfdWrite(fd, 9n);
        expect(await b.poll(fd, POLLIN, 100)).toBe(POLLIN);
        expect(b.eventfdRead(fd)).toBe(9n);
      });
    });
  }

  it("the raw pump, walkRecords and checksum check their own arguments (TypeError / RangeError), whatever the caller's checks", () => {
    const addon = raw();
    const b = new NativeBinding();
    const fd = b.eventfd(0);
    const buf = Buffer.alloc(16);
    const cases: Array<[string, () => unknown, typeof TypeError | typeof RangeError]> = [
      ['pump: no options', () => addon.pump(fd, fd, buf), TypeError],
      ['pump: unknown mode', () => addon.pump(fd, fd, buf, { mode: 'both' }), TypeError],
      ['pump: empty buffer', () => addon.pump(fd, fd, Buffer.alloc(0), { mode: 'copy' }), RangeError],
      ['pump: three buffers', () => addon.pump(fd, fd, [buf, Buffer.alloc(1), Buffer.alloc(1)], { mode: 'copy' }), RangeError],
      ['pump: the same buffer twice', () => addon.pump(fd, fd, [buf, buf], { mode: 'copy' }), RangeError],
      ['pump: a string among the buffers', () => addon.pump(fd, fd, [buf, 'x'], { mode: 'copy' }), TypeError],
      ['pump: limit -1', () => addon.pump(fd, fd, buf, { mode: 'copy', limit: -1 }), RangeError],
      ['pump: checksum md5', () => addon.pump(fd, fd, buf, { mode: 'copy', checksum: 'md5' }), RangeError],
      ['pump: a prefix of 9 bytes', () => addon.pump(fd, fd, buf, { mode: 'read-records', prefix: Buffer.alloc(9) }), RangeError],
      ['pump: five seeds', () => addon.pump(fd, fd, buf, { mode: 'read-records', headerChecksums: [1, 2, 3, 4, 5] }), RangeError],
      ['pump: recordSize 0', () => addon.pump(fd, fd, buf, { mode: 'write-records', recordSize: 0 }), RangeError],
      ['pump: overlap not a boolean', () => addon.pump(fd, fd, buf, { mode: 'copy', overlap: 1 }), TypeError],
      ['walkRecords: walk null', () => addon.walkRecords(fd, null, 0, {}), TypeError],
      ['walkRecords: pos -1', () => addon.walkRecords(fd, { pos: -1, count: 0, total: 0, sums: [] }, 0, {}), RangeError],
      ['walkRecords: sums not an array', () => addon.walkRecords(fd, { pos: 0, count: 0, total: 0, sums: 1 }, 0, {}), TypeError],
      ['walkRecords: maxRecord 0', () => addon.walkRecords(fd, { pos: 0, count: 0, total: 0, sums: [] }, 0, { prefix: Buffer.alloc(0), maxRecord: 0, checksum: 'crc32c', maxHeaders: 1 }), RangeError],
      ['checksum: unknown algorithm', () => addon.checksum('adler32', buf), RangeError],
      ['checksum: not a Buffer', () => addon.checksum('crc32c', 'x'), TypeError],
      ['checksum: seed 2^32', () => addon.checksum('crc32c', buf, 2 ** 32), RangeError],
      ['checksum: no such implementation', () => addon.checksum('crc32c', buf, 0, 15), RangeError],
    ];
    try {
      for (const [what, call, ctor] of cases) expect(thrown(call, Error, what), what).toBeInstanceOf(ctor);
    } finally {
      b.close(fd);
    }
  });

  it('setErrorClass rejects a non-constructor and keeps the class it had', () => {
    const addon = raw();
    expect(() => addon.setErrorClass('VfioError')).toThrow(TypeError);
    const b = new NativeBinding();
    expect(() => b.close(2 ** 31 - 1)).toThrow(VfioError);
  });
});

describe('raw pump with two buffers and no overlap option (vfio_pump_options::overlap < 0)', () => {
  /**
   * A node process (under `prefix`, e.g. taskset) copies 48 KiB pipe to pipe through the raw
   * addon with two 4 KiB buffers and no `overlap`; prints whether the second buffer was used and
   * os.availableParallelism().
   */
  function probe(prefix: string[]): { secondUsed: boolean; cpus: number } {
    const script = `
      const addon = require(${JSON.stringify(addonFile)});
      (async () => {
        const data = Buffer.alloc(48 * 1024, 7);
        const [r1, w1] = addon.pipe();
        const [r2, w2] = addon.pipe();
        for (let off = 0; off < data.length; ) off += await addon.write(w1, data, off, data.length - off);
        addon.close(w1);
        const second = Buffer.alloc(4096, 0xee);
        const res = await addon.pump(r1, w2, [Buffer.alloc(4096), second], { mode: 'copy' }).promise;
        if (res.bytes !== data.length) throw new Error('copied ' + res.bytes);
        console.log(JSON.stringify({ secondUsed: !second.every((x) => x === 0xee), cpus: require('os').availableParallelism() }));
      })().catch((e) => { console.error(e); process.exit(1); });`;
    const cmd = [...prefix, process.execPath, '-e', script];
    const r = spawnSync(cmd[0], cmd.slice(1), { encoding: 'utf8', timeout: 30_000 });
    expect(r.status, r.stderr).toBe(0);
    return JSON.parse(r.stdout.trim()) as { secondUsed: boolean; cpus: number };
  }

  it('overlaps when the process may run on more than one CPU (as availableParallelism() says)', () => {
    const r = probe([]);
    expect(r.secondUsed).toBe(r.cpus > 1);
  });

  const taskset = spawnSync('taskset', ['-c', '0', 'true']).status === 0;
  it.skipIf(!taskset)(`pinned to one CPU (taskset -c 0), uses the first buffer only${taskset ? '' : ' (skipped: no taskset)'}`, () => {
    expect(probe(['taskset', '-c', '0'])).toEqual({ secondUsed: false, cpus: 1 });
  });
});

/**
 * Start an async call on a fresh 4 MiB Buffer and drop every strong reference to it. What must
 * stay alive is its memory, so the WeakRefs watch the ArrayBuffers (a binding may hold a view);
 * `control` is an equal Buffer nothing holds, to show the GC ran.
 */
function startOnFreshBuffer<T>(
  start: (buf: Buffer) => Promise<T>,
): { pending: Promise<T>; pinned: WeakRef<ArrayBuffer>; control: WeakRef<ArrayBuffer> } {
  const buf = Buffer.alloc(4 << 20);
  const other = Buffer.alloc(4 << 20);
  return {
    pending: start(buf),
    pinned: new WeakRef(buf.buffer as ArrayBuffer),
    control: new WeakRef(other.buffer as ArrayBuffer),
  };
}

/** The bindings whose async calls must pin their Buffers. */
const PINNING: Array<[string, () => Binding]> = [
  ['native', () => new NativeBinding()],
  ['koffi', () => new KoffiBinding()],
];

/** The pump of each binding of PINNING. */
const pumpOf = (b: Binding): Pump => (b instanceof NativeBinding ? new NativePump(b.addon) : new JsPump(b));

/** Two full GCs, each after a new macrotask (WeakRef targets are held until the creating job ends). */
async function collectGarbage(): Promise<void> {
  v8.setFlagsFromString('--expose-gc');
  const gc = vm.runInNewContext('gc') as () => void;
  await sleep(10);
  gc();
  await sleep(10);
  gc();
}

describe('async work keeps its Buffer alive', () => {
  it.each(PINNING)('%s: the memory of a Buffer only the pending read refers to survives a GC', async (_name, make) => {
    const b = make();
    const [r, w] = b.pipe();
    try {
      // Made in a plain function: a local of this async function could stay reachable from
      // its suspended frame and hide a missing pin.
      const { pending, pinned, control } = startOnFreshBuffer((buf) => b.read(r, buf));
      await collectGarbage();
      expect(control.deref()).toBeUndefined(); // the GC did run and collect what nothing holds
      expect(pinned.deref()).toBeDefined(); // held by the pending read
      fs.writeSync(w, 'pinned');
      expect(await pending).toBe(6);
      const memory = pinned.deref();
      expect(memory && Buffer.from(memory, 0, 6).toString()).toBe('pinned');
    } finally {
      b.close(r);
      b.close(w);
    }
  });
});

describe('pump keeps its Buffer alive', () => {
  it.each(PINNING)('%s: the memory of a Buffer only the pending pump refers to survives a GC', async (_name, make) => {
    const b = make();
    const [r, w] = b.pipe();
    const [r2, w2] = b.pipe();
    try {
      const { pending, pinned, control } = startOnFreshBuffer((buf) => pumpOf(b).copy(r, w2, buf));
      await collectGarbage();
      expect(control.deref()).toBeUndefined();
      expect(pinned.deref()).toBeDefined(); // held by the pending pump
      fs.writeSync(w, 'through the pinned buffer');
      b.close(w);
      expect(await pending).toEqual({ bytes: 25, checksum: crc32c(Buffer.from('through the pinned buffer')), end: 'eof' });
      const memory = pinned.deref();
      expect(memory && Buffer.from(memory, 0, 25).toString()).toBe('through the pinned buffer');
      const got = Buffer.alloc(32);
      expect(fs.readSync(r2, got)).toBe(25);
    } finally {
      for (const fd of [r, r2, w2]) b.close(fd);
    }
  });
});

/** Threads of this process named "vfio-pump" (the addon names its pump threads so). */
function pumpThreads(): number {
  let n = 0;
  for (const tid of fs.readdirSync('/proc/self/task')) {
    try {
      if (fs.readFileSync(`/proc/self/task/${tid}/comm`, 'utf8').trim() === 'vfio-pump') n++;
    } catch {
      // the thread exited while we looked
    }
  }
  return n;
}

/** Wait (up to `ms`) until `pumpThreads()` is `want`; returns the last count seen. */
async function pumpThreadsReach(want: number, ms = 2000): Promise<number> {
  const deadline = Date.now() + ms;
  let n = pumpThreads();
  while (n !== want && Date.now() < deadline) {
    await sleep(5);
    n = pumpThreads();
  }
  return n;
}

describe('pump threads', () => {
  it('runs each pump on its own "vfio-pump" thread, joined once the pump settles', async () => {
    const b = new NativeBinding();
    expect(pumpThreads()).toBe(0);
    const pipes = [b.pipe(), b.pipe(), b.pipe()];
    const dst = b.open('/dev/null', fs.constants.O_WRONLY);
    try {
      const p = new NativePump(b.addon);
      const pending = pipes.map(([r]) => p.copy(r, dst, Buffer.alloc(64)));
      expect(await pumpThreadsReach(3)).toBe(3);
      for (const [, w] of pipes) b.close(w);
      expect(await Promise.all(pending)).toEqual(pipes.map(() => ({ bytes: 0, checksum: 0, end: 'eof' })));
      expect(await pumpThreadsReach(0)).toBe(0);
      // With two buffers, a second thread reads while the first writes; both end with the pump.
      const [r, w] = b.pipe();
      try {
        const two = p.copy(r, dst, [Buffer.alloc(64), Buffer.alloc(64)]);
        expect(await pumpThreadsReach(2)).toBe(2);
        fs.writeSync(w, 'ab');
        b.close(w);
        expect(await two).toEqual({ bytes: 2, checksum: crc32c(Buffer.from('ab')), end: 'eof' });
        expect(await pumpThreadsReach(0)).toBe(0);
      } finally {
        b.close(r);
      }
    } finally {
      for (const [r] of pipes) b.close(r);
      b.close(dst);
    }
  });
});

describe('pump cancel', () => {
  it("the job's cancel() ends a waiting pump with ECANCELED; after the pump ended, and after the job was collected, it is a no-op", async () => {
    const addon = raw() as unknown as VfioPciNative.Addon;
    const b = new NativeBinding();
    const [r, w] = b.pipe();
    const dst = b.open('/dev/null', fs.constants.O_WRONLY);
    try {
      const job = addon.pump(r, dst, Buffer.alloc(64), { mode: 'copy' });
      await sleep(20);
      job.cancel();
      const e = await rejection(job.promise as Promise<unknown>);
      expect(e).toMatchObject({ code: 'ECANCELED', syscall: 'read', bytesDone: 0 });
      const done = addon.pump(r, dst, Buffer.alloc(64), { mode: 'copy', limit: 0 });
      expect(await done.promise).toMatchObject({ bytes: 0, end: 'limit' });
      done.cancel();
      done.cancel();
      const keep = done.cancel;
      await collectGarbage();
      keep();
      // No fd of a job outlives it.
      fs.writeSync(w, 'still a pipe');
      expect(fs.readSync(r, Buffer.alloc(32))).toBe(12);
    } finally {
      for (const fd of [r, w, dst]) b.close(fd);
    }
  });
});

describe('worker_threads', () => {
  /** CommonJS run in a worker: exercises the raw addon and posts back what it saw. */
  const workerCode = `
    const { parentPort, workerData } = require('node:worker_threads');
    const fs = require('node:fs');
    const addon = require(workerData.file);
    (async () => {
      const out = {};
      // Before setErrorClass: a plain Error with the fields.
      try { addon.close(2147483000); } catch (e) {
        out.plain = { isError: e instanceof Error, name: e.constructor.name, code: e.code, errno: e.errno, syscall: e.syscall };
      }
      class WorkerError extends Error {
        constructor(message, init) { super(message); Object.assign(this, init); }
      }
      addon.setErrorClass(WorkerError);
      try { addon.close(2147483000); } catch (e) {
        out.classed = { mine: e instanceof WorkerError, message: e.message, code: e.code };
      }
      const efd = addon.eventfd(0);
      addon.eventfdWrite(efd, 3n); addon.eventfdWrite(efd, 4n);
      out.counter = String(addon.eventfdRead(efd));
      addon.close(efd);
      const [r, w] = addon.pipe();
      const data = Buffer.alloc(workerData.size, workerData.id);
      fs.writeFileSync(workerData.src, data);
      const src = addon.open(workerData.src, fs.constants.O_RDONLY);
      const dstPath = workerData.src + '.dst';
      fs.writeFileSync(dstPath, '');
      const dst = addon.open(dstPath, fs.constants.O_WRONLY);
      out.pump = await addon.pump(src, dst, Buffer.alloc(4096), { mode: 'copy' }).promise;
      out.copied = fs.readFileSync(dstPath).equals(data);
      const n = await addon.write(w, Buffer.from('via pipe'));
      const got = Buffer.alloc(16);
      out.piped = [n, await addon.read(r, got), got.subarray(0, 8).toString()];
      out.poll = await addon.poll(r, 1, 20);
      for (const fd of [r, w, src, dst]) addon.close(fd);
      parentPort.postMessage(out);
    })().catch((e) => parentPort.postMessage({ failed: String(e && e.stack || e) }));
  `;

  function runWorker(id: number): Promise<Record<string, unknown>> {
    const src = tmp.file(`worker-${id}.bin`);
    const worker = new Worker(workerCode, { eval: true, workerData: { file: addonFile, id, src, size: 100_000 + id } });
    return new Promise((resolve, reject) => {
      worker.once('message', (m) => {
        void worker.terminate();
        resolve(m as Record<string, unknown>);
      });
      worker.once('error', reject);
    });
  }

  it('loads and works in several workers at once, with per-thread error classes', async () => {
    const results = await Promise.all([1, 2, 3].map(runWorker));
    results.forEach((out, i) => {
      const id = i + 1;
      expect(out.failed).toBeUndefined();
      expect(out.plain).toEqual({ isError: true, name: 'Error', code: 'EBADF', errno: 9, syscall: 'close' });
      expect(out.classed).toEqual({ mine: true, message: 'close failed: EBADF', code: 'EBADF' });
      expect(out.counter).toBe('7');
      expect(out.pump).toMatchObject({ bytes: 100_000 + id, checksum: crc32c(Buffer.alloc(100_000 + id, id)), end: 'eof' });
      expect(out.copied).toBe(true);
      expect(out.piped).toEqual([8, 8, 'via pipe']);
      expect(out.poll).toBe(0);
    });
    // The main thread's environment kept its own class.
    const b = new NativeBinding();
    expect(() => b.close(2 ** 31 - 2)).toThrow(VfioError);
  });

  it('survives a worker terminated while its async work is pending', async () => {
    const code = `
      const { parentPort, workerData } = require('node:worker_threads');
      const addon = require(workerData.file);
      const fd = addon.eventfd(0);
      addon.poll(fd, 1, 300).then(() => {});
      parentPort.postMessage(fd);
    `;
    const worker = new Worker(code, { eval: true, workerData: { file: addonFile } });
    const workerFd = await new Promise<number>((resolve) => worker.once('message', resolve));
    expect(await worker.terminate()).toBe(1);
    const b = new NativeBinding();
    b.close(workerFd); // fds are per process: the worker's eventfd outlives it
    const efd = b.eventfd(0);
    b.eventfdWrite(efd, 1n);
    expect(b.eventfdRead(efd)).toBe(1n);
    b.close(efd);
  });

  it('survives a worker terminated while pumps wait and copy: they are cancelled, joined, and dropped', async () => {
    const code = `
      const { parentPort, workerData } = require('node:worker_threads');
      const fs = require('node:fs');
      const addon = require(workerData.file);
      const [r, w] = addon.pipe();
      const sink = addon.open('/dev/null', fs.constants.O_WRONLY);
      const zero = addon.open('/dev/zero', fs.constants.O_RDONLY);
      const out = {};
      // One pump waits on a pipe nobody writes to; one copies /dev/zero to /dev/null for ever.
      addon.pump(r, sink, Buffer.alloc(1 << 20), { mode: 'copy' }).promise.then((v) => { out.waited = v; });
      addon.pump(zero, sink, [Buffer.alloc(1 << 20), Buffer.alloc(1 << 20)], { mode: 'copy' }).promise.then((v) => { out.copied = v; });
      parentPort.postMessage({ r, w, sink, zero });
    `;
    const b = new NativeBinding();
    const worker = new Worker(code, { eval: true, workerData: { file: addonFile } });
    const fds = await new Promise<{ r: number; w: number; sink: number; zero: number }>((resolve) => worker.once('message', resolve));
    try {
      expect(await pumpThreadsReach(3)).toBe(3); // the copying pump reads on a second thread
      await sleep(30); // the copying pump is well under way
      expect(await worker.terminate()).toBe(1);
      // Teardown cancelled both pumps and joined their threads before freeing the Buffers.
      expect(await pumpThreadsReach(0)).toBe(0);
      // The waiting pump is gone for good: it does not steal what is written now.
      fs.writeSync(fds.w, 'after');
      const got = Buffer.alloc(16);
      expect(fs.readSync(fds.r, got)).toBe(5);
      expect(got.subarray(0, 5).toString()).toBe('after');
      // And this thread's pumps still work.
      b.close(fds.w);
      expect(await new NativePump(b.addon).copy(fds.zero, fds.sink, Buffer.alloc(4096), { limit: 10_000 })).toEqual({
        bytes: 10_000,
        checksum: crc32c(Buffer.alloc(10_000)),
        end: 'limit',
      });
    } finally {
      for (const fd of [fds.r, fds.sink, fds.zero]) b.close(fd);
    }
  });

  it('survives a worker terminated while record pumps wait and copy: cancelled between records and in their waits', async () => {
    const code = `
      const { parentPort, workerData } = require('node:worker_threads');
      const fs = require('node:fs');
      const addon = require(workerData.file);
      const [r, w] = addon.pipe();
      const sink = addon.open('/dev/null', fs.constants.O_WRONLY);
      const zero = addon.open('/dev/zero', fs.constants.O_RDONLY);
      // A records read waits for a header nobody writes; a records write frames /dev/zero for ever.
      addon.pump(r, sink, Buffer.alloc(4096), { mode: 'read-records', records: 1 });
      addon.pump(zero, sink, Buffer.alloc((1 << 20) + 8), { mode: 'write-records', recordSize: 1 << 20 });
      parentPort.postMessage({ r, w, sink, zero });
    `;
    const b = new NativeBinding();
    const worker = new Worker(code, { eval: true, workerData: { file: addonFile } });
    const fds = await new Promise<{ r: number; w: number; sink: number; zero: number }>((resolve) => worker.once('message', resolve));
    try {
      expect(await pumpThreadsReach(2)).toBe(2);
      await sleep(30);
      expect(await worker.terminate()).toBe(1);
      expect(await pumpThreadsReach(0)).toBe(0);
      // The waiting records read is gone: it does not take what is written now.
      fs.writeSync(fds.w, 'after');
      const got = Buffer.alloc(16);
      expect(fs.readSync(fds.r, got)).toBe(5);
      // And this thread's record pumps still work.
      expect(await new NativePump(b.addon).writeRecords(fds.zero, fds.sink, Buffer.alloc(1008), { recordSize: 1000, limit: 2500, headerChecksums: [0] })).toEqual({
        bytes: 2500,
        end: 'limit',
        records: 3,
        written: 2524,
        headerChecksums: [expect.any(Number)],
      });
    } finally {
      for (const fd of [fds.r, fds.w, fds.sink, fds.zero]) b.close(fd);
    }
  });

  it('survives many workers terminated right after starting pumps', async () => {
    const code = `
      const { parentPort, workerData } = require('node:worker_threads');
      const fs = require('node:fs');
      const addon = require(workerData.file);
      const zero = addon.open('/dev/zero', fs.constants.O_RDONLY);
      const sink = addon.open('/dev/null', fs.constants.O_WRONLY);
      for (let i = 0; i < 4; i++) addon.pump(zero, sink, Buffer.alloc(65536), { mode: 'copy', limit: 1 << 30 });
      for (let i = 0; i < 2; i++) addon.pump(zero, sink, [Buffer.alloc(65536 + 8), Buffer.alloc(65536 + 8)], { mode: 'write-records', recordSize: 65536, limit: 1 << 30 });
      parentPort.postMessage([zero, sink]);
    `;
    const b = new NativeBinding();
    for (let round = 0; round < 5; round++) {
      const workers = [0, 1, 2].map(() => new Worker(code, { eval: true, workerData: { file: addonFile } }));
      const fds = await Promise.all(workers.map((wk) => new Promise<number[]>((resolve) => wk.once('message', resolve))));
      expect(await Promise.all(workers.map((wk) => wk.terminate()))).toEqual([1, 1, 1]);
      expect(await pumpThreadsReach(0)).toBe(0);
      for (const fd of fds.flat()) b.close(fd);
    }
  });
});

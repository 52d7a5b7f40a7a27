/**
 * The pump of the simulated binding on virtual fds (the JS loop it shares with koffi), where the
 * contract suite cannot reach: a PRE_COPY data_fd whose temporary end is ENOMSG (the uAPI's
 * wording) or a read of 0 (mtty's), and a RESUMING data_fd that must never see a corrupted
 * chunk. Real files come from the native binding the sim wraps.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { crc32 } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VfioError } from '../../src/base/errors';
import { KoffiBinding } from '../../src/kernel/binding/koffi';
import { NativeBinding } from '../../src/kernel/binding/native';
import { SimBinding, simStream } from '../../src/sim';
import type { PumpError } from '../../src/kernel/binding/types';
import * as s from '../../src/kernel/uapi/structs';
import * as v from '../../src/kernel/uapi/vfio';
import { MigState } from '../../src/kernel/uapi/vfio';

const { O_RDONLY, O_RDWR, O_CREAT, O_TRUNC } = fs.constants;
const ENOMSG = os.constants.errno.ENOMSG;
const HDR = simStream.HEADER_SIZE;
const TRL = simStream.TRAILER_SIZE;
const REC = simStream.RECORD_HEADER_SIZE;
/** Length of a plain stream (every block once, 4 KiB blocks) of `size` data bytes. */
const plain = (size: number): number => simStream.streamLength(size);

function setState(b: SimBinding, fd: number, state: number): number {
  const buf = s.encodeMigStateSet(state);
  b.ioctl(fd, v.VFIO_DEVICE_FEATURE, buf);
  return s.decodeMigState(buf).dataFd;
}

async function rejection(p: Promise<unknown>): Promise<PumpError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(VfioError);
    return e as PumpError;
  }
  throw new Error('expected a rejection');
}

let dir: string;
let b: SimBinding;
let serial = 0;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfio-sim-pump-'));
  b = new SimBinding(new NativeBinding());
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/** A fresh named sim device, opened. */
function device(opts: Parameters<SimBinding['createDevice']>[1]): number {
  const name = `pump${++serial}`;
  b.createDevice(name, opts);
  return b.open(`sim#${name}`, O_RDWR);
}

function output(name: string): { fd: number; file: string } {
  const file = path.join(dir, name);
  return { fd: b.open(file, O_RDWR | O_CREAT | O_TRUNC, 0o600), file };
}

describe('sim pump on a PRE_COPY data_fd', () => {
  it("precopy: ENOMSG (uAPI) ends the pump with 'for-now'; without precopy it rejects, with bytesDone", async () => {
    const dev = device({ size: 8192, precopyBytes: 4096, precopyEnd: 'enomsg', seed: 5 });
    const out = output('enomsg.bin');
    const dataFd = setState(b, dev, MigState.PRE_COPY);
    try {
      // Without precopy, ENOMSG is an ordinary read error, after everything available was copied.
      const err = await rejection(b.pump(dataFd, out.fd, Buffer.alloc(1000)));
      expect({ code: err.code, errno: err.errno, syscall: err.syscall, bytesDone: err.bytesDone }).toEqual({
        code: 'ENOMSG',
        errno: ENOMSG,
        syscall: 'read',
        bytesDone: HDR + REC + 4096, // the initial data: the header and block 0
      });
      // With precopy it is "no more data for now", again and again.
      expect(await b.pump(dataFd, out.fd, Buffer.alloc(1000), { precopy: true })).toEqual({ bytes: 0, crc32: 0, end: 'for-now' });
      // STOP_COPY on the same fd: the rest of the stream, to its permanent end.
      expect(setState(b, dev, MigState.STOP_COPY)).toBe(-1);
      const rest = await b.pump(dataFd, out.fd, Buffer.alloc(1000), { precopy: true });
      expect(rest.bytes).toBe(REC + 4096 + TRL);
      expect(rest.end).toBe('for-now'); // precopy reads 0 as "for now"; the caller knows it is STOP_COPY
      expect(await b.pump(dataFd, out.fd, Buffer.alloc(1000))).toEqual({ bytes: 0, crc32: 0, end: 'eof' });
      const saved = fs.readFileSync(out.file);
      expect(saved.length).toBe(plain(8192));
      expect(rest.crc32).toBe(crc32(saved.subarray(HDR + REC + 4096)));
    } finally {
      b.close(dataFd);
      b.close(out.fd);
      b.close(dev);
    }
  });

  it("precopy: a read of 0 (mtty) ends with 'for-now'; the limit still wins", async () => {
    const dev = device({ size: 4096, blockSize: 1024, precopyBytes: 2048, precopyEnd: 'zero', seed: 6 });
    const out = output('zero.bin');
    const dataFd = setState(b, dev, MigState.PRE_COPY);
    try {
      const first = await b.pump(dataFd, out.fd, Buffer.alloc(512), { precopy: true, limit: 100 });
      expect(first.end).toBe('limit');
      const second = await b.pump(dataFd, out.fd, Buffer.alloc(512), { precopy: true });
      expect(second).toEqual({ bytes: HDR + 2 * (REC + 1024) - 100, crc32: second.crc32, end: 'for-now' });
      expect(crc32(fs.readFileSync(out.file).subarray(100), 0)).toBe(second.crc32);
    } finally {
      b.close(dataFd);
      b.close(out.fd);
      b.close(dev);
    }
  });

  it("a data_fd is a stream: srcOffset rejects with ESPIPE, syscall 'pread'", async () => {
    const dev = device({ size: 4096 });
    const out = output('espipe.bin');
    const dataFd = setState(b, dev, MigState.STOP_COPY);
    try {
      const err = await rejection(b.pump(dataFd, out.fd, Buffer.alloc(512), { srcOffset: 0 }));
      expect({ code: err.code, syscall: err.syscall, bytesDone: err.bytesDone }).toEqual({ code: 'ESPIPE', syscall: 'pread', bytesDone: 0 });
    } finally {
      b.close(dataFd);
      b.close(out.fd);
      b.close(dev);
    }
  });
});

describe('sim pump into a RESUMING data_fd', () => {
  /** Save a device's STOP_COPY stream into a real file; returns its path and CRC. */
  async function saveStream(seed: number, size: number): Promise<{ file: string; crc: number; length: number }> {
    const dev = device({ size, seed });
    const out = output(`saved-${seed}.bin`);
    const dataFd = setState(b, dev, MigState.STOP_COPY);
    try {
      const res = await b.pump(dataFd, out.fd, Buffer.alloc(4096));
      expect(res.end).toBe('eof');
      return { file: out.file, crc: res.crc32, length: res.bytes };
    } finally {
      b.close(dataFd);
      b.close(out.fd);
      b.close(dev);
    }
  }

  it('expectCrc keeps a corrupted chunk away from the device; the good chunk then restores it', async () => {
    const saved = await saveStream(77, 6000);
    const corrupt = path.join(dir, 'corrupt.bin');
    const bytes = fs.readFileSync(saved.file);
    bytes[HDR + REC + 10] ^= 0x40; // one flipped bit in the device data
    fs.writeFileSync(corrupt, bytes);

    const target = device({ size: 6000 });
    const resumeFd = setState(b, target, MigState.RESUMING);
    const bad = b.open(corrupt, O_RDONLY);
    const good = b.open(saved.file, O_RDONLY);
    try {
      const buf = Buffer.alloc(saved.length);
      const err = await rejection(b.pump(bad, resumeFd, buf, { srcOffset: 0, limit: saved.length, expectCrc: saved.crc }));
      expect({ code: err.code, kind: err.kind, bytesDone: err.bytesDone }).toEqual({ code: 'EVFIO_CHECKSUM', kind: 'format', bytesDone: 0 });
      const truncated = await rejection(b.pump(good, resumeFd, buf, { srcOffset: 100, limit: saved.length, expectCrc: saved.crc }));
      expect({ code: truncated.code, kind: truncated.kind, bytesDone: truncated.bytesDone }).toEqual({
        code: 'EVFIO_SNAPSHOT_TRUNCATED',
        kind: 'format',
        bytesDone: 0,
      });
      // Nothing reached the device: the whole good stream still fits and validates.
      expect(await b.pump(good, resumeFd, buf, { srcOffset: 0, limit: saved.length, expectCrc: saved.crc })).toEqual({
        bytes: saved.length,
        crc32: saved.crc,
        end: 'limit',
      });
      expect(setState(b, target, MigState.RUNNING)).toBe(-1);
      expect(b.device(target).seed).toBe(77n);
    } finally {
      for (const fd of [bad, good, resumeFd, target]) b.close(fd);
    }
  });

  it('a stream pumped in limited pieces by position restores the device', async () => {
    const saved = await saveStream(78, 10_000);
    const target = device({ size: 10_000, maxWrite: 333 }); // short writes on the device side
    const resumeFd = setState(b, target, MigState.RESUMING);
    const src = b.open(saved.file, O_RDONLY);
    try {
      let crc = 0;
      for (let off = 0; off < saved.length; off += 4096) {
        const res = await b.pump(src, resumeFd, Buffer.alloc(1500), { srcOffset: off, limit: Math.min(4096, saved.length - off) });
        crc = crc32(fs.readFileSync(saved.file).subarray(off, off + res.bytes), crc);
      }
      expect(crc).toBe(saved.crc);
      expect(setState(b, target, MigState.RUNNING)).toBe(-1);
      expect(b.device(target).seed).toBe(78n);
    } finally {
      for (const fd of [src, resumeFd, target]) b.close(fd);
    }
  });
});

describe('sim pump with frame on virtual data_fds', () => {
  /** The chunks of a framed file (the test's own reading): payloads and the 8-byte headers. */
  function chunksOf(bytes: Buffer): { payloads: Buffer[]; headers: Buffer } {
    const payloads: Buffer[] = [];
    const headers: Buffer[] = [];
    for (let pos = 0; pos < bytes.length; ) {
      const len = bytes.readUInt32LE(pos);
      const payload = bytes.subarray(pos + 8, pos + 8 + len);
      expect(bytes.readUInt32LE(pos + 4)).toBe(crc32(payload));
      headers.push(bytes.subarray(pos, pos + 8));
      payloads.push(payload);
      pos += 8 + len;
    }
    return { payloads, headers: Buffer.concat(headers) };
  }

  /** Frame a device's STOP_COPY stream into a file (then an end chunk); returns its path, the stream, and the chunk table. */
  async function saveFramed(seed: number, size: number, chunk: number): Promise<{ file: string; stream: Buffer; table: number; count: number }> {
    const dev = device({ size, seed });
    const out = output(`framed-${seed}.bin`);
    const dataFd = setState(b, dev, MigState.STOP_COPY);
    try {
      const res = await b.pump(dataFd, out.fd, Buffer.alloc(chunk + 8), { frame: { mode: 'write', chunk }, dstOffset: 0 });
      const { payloads, headers } = chunksOf(fs.readFileSync(out.file));
      const stream = Buffer.concat(payloads);
      expect(payloads.slice(0, -1).every((p) => p.length === chunk)).toBe(true);
      expect(res).toEqual({
        bytes: plain(size),
        crc32: crc32(stream),
        end: 'eof',
        chunks: payloads.length,
        written: stream.length + 8 * payloads.length,
        tableCrc: crc32(headers),
        skeletonCrc: crc32(headers),
      });
      const end = Buffer.alloc(16);
      end.writeUInt32LE(res.tableCrc!, 4);
      end.writeBigUInt64LE(BigInt(res.bytes), 8);
      fs.appendFileSync(out.file, end);
      return { file: out.file, stream, table: res.tableCrc!, count: res.chunks! };
    } finally {
      b.close(dataFd);
      b.close(out.fd);
      b.close(dev);
    }
  }

  it('write frames a virtual STOP_COPY data_fd; read feeds the chunks to a RESUMING one (short device writes), which restores', async () => {
    const saved = await saveFramed(81, 20_000, 3000);
    const target = device({ size: 20_000, maxWrite: 777 });
    const resumeFd = setState(b, target, MigState.RESUMING);
    const src = b.open(saved.file, O_RDONLY);
    try {
      expect(await b.pump(src, resumeFd, Buffer.alloc(3000), { srcOffset: 0, frame: { mode: 'read', chunks: saved.count, maxChunk: 3000 } })).toEqual({
        bytes: saved.stream.length,
        crc32: crc32(saved.stream),
        end: 'eof',
        chunks: saved.count,
        tableCrc: saved.table,
        endTableCrc: saved.table,
        endTotal: saved.stream.length,
      });
      expect(setState(b, target, MigState.RUNNING)).toBe(-1);
      expect(b.device(target).seed).toBe(81n);
    } finally {
      for (const fd of [src, resumeFd, target]) b.close(fd);
    }
  });

  it('read keeps a corrupted chunk away from the device: the chunks before it arrived, none of it, and the rest restores', async () => {
    const saved = await saveFramed(82, 10_000, 4096);
    const bytes = fs.readFileSync(saved.file);
    const second = 8 + 4096; // file offset of chunk 1's header
    bytes[second + 8 + 5] ^= 0x10;
    const corrupt = path.join(dir, 'framed-corrupt.bin');
    fs.writeFileSync(corrupt, bytes);
    const target = device({ size: 10_000 });
    const resumeFd = setState(b, target, MigState.RESUMING);
    const bad = b.open(corrupt, O_RDONLY);
    const good = b.open(saved.file, O_RDONLY);
    try {
      const err = await rejection(b.pump(bad, resumeFd, Buffer.alloc(4096), { srcOffset: 0, frame: { mode: 'read', chunks: saved.count } }));
      expect({ code: err.code, kind: err.kind, bytesDone: err.bytesDone, chunkOffset: err.chunkOffset }).toEqual({
        code: 'EVFIO_SNAPSHOT_CHECKSUM',
        kind: 'format',
        bytesDone: 4096,
        chunkOffset: second,
      });
      // Chunk 0 reached the device and nothing of chunk 1: the good file from chunk 1 on completes the stream.
      const rest = await b.pump(good, resumeFd, Buffer.alloc(4096), {
        srcOffset: second,
        frame: { mode: 'read', chunks: saved.count - 1, tableCrc: crc32(bytes.subarray(0, 8)) },
      });
      expect(rest).toMatchObject({ bytes: saved.stream.length - 4096, tableCrc: saved.table, endTableCrc: saved.table, endTotal: saved.stream.length });
      expect(setState(b, target, MigState.RUNNING)).toBe(-1);
      expect(b.device(target).seed).toBe(82n);
    } finally {
      for (const fd of [bad, good, resumeFd, target]) b.close(fd);
    }
  });

  it("write with precopy: a PRE_COPY data_fd's ENOMSG ends with 'for-now' after whole chunks of what was there", async () => {
    const dev = device({ size: 8192, blockSize: 1024, precopyBytes: 5000, precopyEnd: 'enomsg', seed: 83 });
    const out = output('framed-precopy.bin');
    const dataFd = setState(b, dev, MigState.PRE_COPY);
    try {
      const res = await b.pump(dataFd, out.fd, Buffer.alloc(2048 + 8), { frame: { mode: 'write', chunk: 2048 }, dstOffset: 0, precopy: true });
      const { payloads } = chunksOf(fs.readFileSync(out.file));
      // The initial data: the header and the 5 blocks of 1 KiB holding the first 5000 bytes.
      const initial = HDR + 5 * (REC + 1024);
      expect(payloads.map((p) => p.length)).toEqual([2048, 2048, initial - 4096]);
      expect(res).toMatchObject({ bytes: initial, chunks: 3, written: initial + 24, end: 'for-now' });
      // Nothing more for now: no chunk at all, not an empty one.
      expect(await b.pump(dataFd, out.fd, Buffer.alloc(2048 + 8), { frame: { mode: 'write', chunk: 2048, tableCrc: 1, skeletonCrc: 2 }, dstOffset: res.written!, precopy: true })).toEqual({
        bytes: 0,
        crc32: 0,
        end: 'for-now',
        chunks: 0,
        written: 0,
        tableCrc: 1,
        skeletonCrc: 2,
      });
    } finally {
      b.close(dataFd);
      b.close(out.fd);
      b.close(dev);
    }
  });
});

describe('sim pump arguments', () => {
  it('checks virtual-fd pumps exactly as the native and koffi bindings do', () => {
    const dev = device({});
    const native = new NativeBinding();
    const koffi = new KoffiBinding();
    const buf = Buffer.alloc(8);
    const bad: unknown[] = [
      null, 'x', { limit: -1 }, { expectCrc: 1 }, { expectCrc: 1, limit: 9 }, { precopy: 'yes' }, { srcOffset: 0.5 }, -2,
      { frame: 1 }, { frame: { mode: 'both' } }, { frame: { mode: 'write', chunk: 1 } }, { frame: { mode: 'write' } },
      { frame: { mode: 'read', chunks: 1, final: 0 } }, { frame: { mode: 'read', chunks: 1 }, expectCrc: 0, limit: 1 },
    ];
    const thrown = (f: () => unknown) => {
      try {
        f();
      } catch (e) {
        return { ctor: (e as Error).constructor.name, message: (e as Error).message, code: (e as { code?: string }).code };
      }
      return undefined;
    };
    try {
      for (const opts of bad) {
        const want = thrown(() => native.pump(0, 1, buf, opts as never));
        expect(want, JSON.stringify(opts)).toBeDefined();
        expect(thrown(() => b.pump(dev, dev, buf, opts as never)), JSON.stringify(opts)).toEqual(want);
        expect(thrown(() => koffi.pump(0, 1, buf, opts as never)), JSON.stringify(opts)).toEqual(want);
      }
    } finally {
      b.close(dev);
    }
  });
});

describe('sim pump through its own virtual pipes', () => {
  it('copies between virtual fds with one reused buffer and the stream CRC', async () => {
    const sim = new SimBinding(undefined, { virtualFds: true });
    const [r, w] = sim.pipe();
    const dev = sim.open('sim:4096:seed=9', O_RDWR);
    const dataFd = setState(sim, dev, MigState.STOP_COPY);
    try {
      const pumping = sim.pump(dataFd, w, Buffer.alloc(700));
      const got: Buffer[] = [];
      const chunk = Buffer.alloc(1024);
      let total = 0;
      while (total < plain(4096)) {
        const n = await sim.read(r, chunk);
        got.push(Buffer.from(chunk.subarray(0, n)));
        total += n;
      }
      const res = await pumping;
      expect(res).toEqual({ bytes: plain(4096), crc32: crc32(Buffer.concat(got)), end: 'eof' });
      // The writer gone and the pipe empty: a read of 0, which precopy reports as 'for-now'.
      sim.close(w);
      const [r2, w2] = sim.pipe();
      expect(await sim.pump(r, w2, Buffer.alloc(8), { precopy: true })).toEqual({ bytes: 0, crc32: 0, end: 'for-now' });
      expect(await sim.pump(r, w2, Buffer.alloc(8))).toEqual({ bytes: 0, crc32: 0, end: 'eof' });
      sim.close(r2);
      // A closed virtual fd: EBADF on the side it is on, bytesDone 0.
      const err = await rejection(sim.pump(r2, w2, Buffer.alloc(8)));
      expect({ code: err.code, syscall: err.syscall, bytesDone: err.bytesDone }).toEqual({ code: 'EBADF', syscall: 'read', bytesDone: 0 });
      sim.close(w2);
    } finally {
      for (const fd of [dataFd, dev, r]) sim.close(fd);
    }
  });
});

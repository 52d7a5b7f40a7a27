/**
 * The data pump on the simulated device's virtual fds (the JS pump over SimBinding), where the
 * pump contract suite cannot reach: a PRE_COPY data_fd whose temporary end is ENOMSG (the uAPI's
 * wording) or a read of 0 (mtty's), and a RESUMING data_fd that must never see a corrupted
 * record. Real files come from the native binding the sim wraps; a set of fds that are all
 * real goes to the native pump.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import { beforeAll, describe, expect, it } from 'vitest';
import { NativeBinding } from '../../src/kernel/binding/native';
import { jsChecksum, pumpFor, type Pump, type PumpError } from '../../src/kernel/pump';
import { SimBinding, simStream } from '../../src/sim';
import { MigState } from '../../src/kernel/uapi/vfio';
import { rejection } from '../helpers/errors';
import { useTempDir } from '../helpers/temp-dir';
import { enterState } from '../helpers/uapi';

const { O_RDONLY, O_RDWR, O_CREAT, O_TRUNC } = fs.constants;
const ENOMSG = os.constants.errno.ENOMSG;
const HDR = simStream.HEADER_SIZE;
const TRL = simStream.TRAILER_SIZE;
const REC = simStream.RECORD_HEADER_SIZE;
/** Length of a plain stream (every block once, 4 KiB blocks) of `size` data bytes. */
const plain = (size: number): number => simStream.streamLength(size);
const crc32c = (b: Buffer, seed = 0) => jsChecksum.crc32c(b, seed);

/** The pump's error a call rejects with (its bytesDone, recordOffset). */
const pumpError = async (p: Promise<unknown>): Promise<PumpError> => (await rejection(p)) as PumpError;

const dir = useTempDir('vfio-sim-pump');
let b: SimBinding;
let serial = 0;
beforeAll(() => {
  b = new SimBinding(new NativeBinding());
});

/** The pump for these fds of `b`. */
const pump = (...fds: number[]): Pump => pumpFor(b, fds);

/** A fresh named sim device, opened. */
function device(opts: Parameters<SimBinding['createDevice']>[1]): number {
  const name = `pump${++serial}`;
  b.createDevice(name, opts);
  return b.open(`sim#${name}`, O_RDWR);
}

function output(name: string): { fd: number; file: string } {
  const file = dir.file(name);
  return { fd: b.open(file, O_RDWR | O_CREAT | O_TRUNC, 0o600), file };
}

describe('which pump serves which fds', () => {
  it('the JS pump for any virtual fd, the native pump when every fd is real', () => {
    const dev = device({});
    const out = output('which.bin');
    try {
      expect(pump(dev, out.fd).name).toBe('js');
      expect(pump(out.fd, dev).name).toBe('js');
      expect(pump(out.fd, out.fd).name).toBe('native');
      expect(pumpFor(new SimBinding(undefined, { virtualFds: true }), [3, 4]).name).toBe('js');
    } finally {
      b.close(out.fd);
      b.close(dev);
    }
  });
});

describe('pump on a PRE_COPY data_fd', () => {
  it("precopy: ENOMSG (uAPI) ends the copy with 'for-now'; without precopy the pump waits for data like on any stream", async () => {
    const dev = device({ size: 8192, precopyBytes: 4096, precopyEnd: 'enomsg', seed: 5 });
    const out = output('enomsg.bin');
    const dataFd = enterState(b, dev, MigState.PRE_COPY);
    try {
      const p = pump(dataFd, out.fd);
      // Without precopy: what there is, then a wait for more (the device's poll reports new
      // data only, as mlx5's does), here cut short by the idle timeout.
      const err = await pumpError(p.copy(dataFd, out.fd, Buffer.alloc(1000), { idleTimeoutMs: 50 }));
      expect({ code: err.code, syscall: err.syscall, bytesDone: err.bytesDone }).toEqual({ code: 'ETIMEDOUT', syscall: 'read', bytesDone: HDR + REC + 4096 }); // the initial data: the header and block 0
      // ... and a read there is ENOMSG, the uAPI's "no more data for now".
      const none = await pumpError(b.read(dataFd, Buffer.alloc(8)));
      expect({ code: none.code, errno: none.errno }).toEqual({ code: 'ENOMSG', errno: ENOMSG });
      expect(await p.copy(dataFd, out.fd, Buffer.alloc(1000), { precopy: true })).toEqual({ bytes: 0, checksum: 0, end: 'for-now' });
      expect(enterState(b, dev, MigState.STOP_COPY)).toBe(-1);
      const rest = await p.copy(dataFd, out.fd, Buffer.alloc(1000), { precopy: true });
      expect(rest.bytes).toBe(REC + 4096 + TRL);
      expect(rest.end).toBe('for-now'); // precopy reads 0 as "for now"; the caller knows it is STOP_COPY
      expect(await p.copy(dataFd, out.fd, Buffer.alloc(1000))).toEqual({ bytes: 0, checksum: 0, end: 'eof' });
      const saved = fs.readFileSync(out.file);
      expect(saved.length).toBe(plain(8192));
      expect(rest.checksum).toBe(crc32c(saved.subarray(HDR + REC + 4096)));
    } finally {
      b.close(dataFd);
      b.close(out.fd);
      b.close(dev);
    }
  });

  it("precopy: a read of 0 (mtty) ends with 'for-now'; the limit still wins", async () => {
    const dev = device({ size: 4096, blockSize: 1024, precopyBytes: 2048, precopyEnd: 'zero', seed: 6 });
    const out = output('zero.bin');
    const dataFd = enterState(b, dev, MigState.PRE_COPY);
    try {
      const p = pump(dataFd, out.fd);
      expect((await p.copy(dataFd, out.fd, Buffer.alloc(512), { precopy: true, limit: 100 })).end).toBe('limit');
      const second = await p.copy(dataFd, out.fd, Buffer.alloc(512), { precopy: true });
      expect(second).toEqual({ bytes: HDR + 2 * (REC + 1024) - 100, checksum: second.checksum, end: 'for-now' });
      expect(crc32c(fs.readFileSync(out.file).subarray(100))).toBe(second.checksum);
    } finally {
      b.close(dataFd);
      b.close(out.fd);
      b.close(dev);
    }
  });

  it("writeRecords with precopy: ENOMSG ends with 'for-now' after whole records of what was there, never an empty one", async () => {
    const dev = device({ size: 8192, blockSize: 1024, precopyBytes: 5000, precopyEnd: 'enomsg', seed: 83 });
    const out = output('records-precopy.bin');
    const dataFd = enterState(b, dev, MigState.PRE_COPY);
    try {
      const p = pump(dataFd, out.fd);
      const res = await p.writeRecords(dataFd, out.fd, Buffer.alloc(2048 + 8), { recordSize: 2048, dstOffset: 0, precopy: true });
      // The initial data: the header and the 5 blocks of 1 KiB holding the first 5000 bytes.
      const initial = HDR + 5 * (REC + 1024);
      expect(res).toMatchObject({ bytes: initial, records: 3, written: initial + 24, end: 'for-now' });
      expect(await p.writeRecords(dataFd, out.fd, Buffer.alloc(2048 + 8), { recordSize: 2048, dstOffset: res.written, precopy: true, headerChecksums: [1, 2] })).toEqual({
        bytes: 0, records: 0, written: 0, end: 'for-now', headerChecksums: [1, 2],
      });
    } finally {
      b.close(dataFd);
      b.close(out.fd);
      b.close(dev);
    }
  });

  it("a data_fd is a stream: srcOffset rejects with ESPIPE, syscall 'pread'", async () => {
    const dev = device({ size: 4096 });
    const out = output('espipe.bin');
    const dataFd = enterState(b, dev, MigState.STOP_COPY);
    try {
      const err = await pumpError(pump(dataFd, out.fd).copy(dataFd, out.fd, Buffer.alloc(512), { srcOffset: 0 }));
      expect({ code: err.code, syscall: err.syscall, bytesDone: err.bytesDone }).toEqual({ code: 'ESPIPE', syscall: 'pread', bytesDone: 0 });
    } finally {
      b.close(dataFd);
      b.close(out.fd);
      b.close(dev);
    }
  });
});

describe('pump into a RESUMING data_fd', () => {
  /** A device's STOP_COPY stream as records in a file (then a terminator): its path, the stream, the header checksum. */
  async function saveRecords(seed: number, size: number, chunk: number, two = false): Promise<{ file: string; stream: Buffer; sum: number; count: number }> {
    const dev = device({ size, seed });
    const out = output(`records-${seed}.bin`);
    const dataFd = enterState(b, dev, MigState.STOP_COPY);
    try {
      const bufs = two ? ([Buffer.alloc(chunk + 8), Buffer.alloc(chunk + 8)] as const) : Buffer.alloc(chunk + 8);
      const res = await pump(dataFd, out.fd).writeRecords(dataFd, out.fd, bufs, { recordSize: chunk, dstOffset: 0, headerChecksums: [0] });
      const bytes = fs.readFileSync(out.file);
      const payloads: Buffer[] = [];
      for (let pos = 0; pos < bytes.length; ) {
        const len = bytes.readUInt32LE(pos);
        const payload = bytes.subarray(pos + 8, pos + 8 + len);
        expect(bytes.readUInt32LE(pos + 4)).toBe(crc32c(payload));
        payloads.push(payload);
        pos += 8 + len;
      }
      expect(payloads.slice(0, -1).every((x) => x.length === chunk)).toBe(true);
      const stream = Buffer.concat(payloads);
      expect(res).toMatchObject({ bytes: plain(size), records: payloads.length, written: stream.length + 8 * payloads.length, end: 'eof' });
      fs.appendFileSync(out.file, Buffer.alloc(16)); // a terminator
      return { file: out.file, stream, sum: res.headerChecksums[0], count: res.records };
    } finally {
      b.close(dataFd);
      b.close(out.fd);
      b.close(dev);
    }
  }

  for (const two of [false, true]) {
    it(`writeRecords frames a STOP_COPY data_fd; readRecords feeds the payloads to a RESUMING one (short device writes), which restores${two ? ' (two buffers)' : ''}`, async () => {
      const saved = await saveRecords(81 + (two ? 10 : 0), 20_000, 3000, two);
      const target = device({ size: 20_000, maxWrite: 777 });
      const resumeFd = enterState(b, target, MigState.RESUMING);
      const src = b.open(saved.file, O_RDONLY);
      try {
        const bufs = two ? ([Buffer.alloc(3008), Buffer.alloc(3008)] as const) : Buffer.alloc(3008);
        const res = await pump(src, resumeFd).readRecords(src, resumeFd, bufs, { srcOffset: 0, maxRecord: 3000, headerChecksums: [0] });
        expect(res).toMatchObject({ bytes: saved.stream.length, records: saved.count, end: 'header', headerChecksums: [saved.sum] });
        expect(enterState(b, target, MigState.RUNNING)).toBe(-1);
        expect(b.device(target).seed).toBe(BigInt(81 + (two ? 10 : 0)));
      } finally {
        for (const fd of [src, resumeFd, target]) b.close(fd);
      }
    });
  }

  it('a corrupted record never reaches the device: the records before it do, none of it, and the rest then restores', async () => {
    const saved = await saveRecords(82, 10_000, 4096);
    const bytes = fs.readFileSync(saved.file);
    const second = 8 + 4096; // file offset of record 1's header
    bytes[second + 8 + 5] ^= 0x10;
    const corrupt = dir.file('records-corrupt.bin');
    fs.writeFileSync(corrupt, bytes);
    const target = device({ size: 10_000 });
    const resumeFd = enterState(b, target, MigState.RESUMING);
    const bad = b.open(corrupt, O_RDONLY);
    const good = b.open(saved.file, O_RDONLY);
    try {
      const err = await pumpError(pump(bad, resumeFd).readRecords(bad, resumeFd, Buffer.alloc(4104), { srcOffset: 0 }));
      expect({ code: err.code, kind: err.kind, bytesDone: err.bytesDone, recordOffset: err.recordOffset }).toEqual({
        code: 'EVFIO_CHECKSUM', kind: 'format', bytesDone: 4096, recordOffset: second,
      });
      const rest = await pump(good, resumeFd).readRecords(good, resumeFd, Buffer.alloc(4104), { srcOffset: second, headerChecksums: [crc32c(bytes.subarray(0, 8))] });
      expect(rest).toMatchObject({ bytes: saved.stream.length - 4096, headerChecksums: [saved.sum], end: 'header' });
      expect(enterState(b, target, MigState.RUNNING)).toBe(-1);
      expect(b.device(target).seed).toBe(82n);
    } finally {
      for (const fd of [bad, good, resumeFd, target]) b.close(fd);
    }
  });

  it('expectChecksum keeps a corrupted block away from the device; the good block then restores it', async () => {
    const dev = device({ size: 6000, seed: 77 });
    const out = output('saved-77.bin');
    const dataFd = enterState(b, dev, MigState.STOP_COPY);
    const saved = await pump(dataFd, out.fd).copy(dataFd, out.fd, Buffer.alloc(4096));
    b.close(dataFd);
    b.close(out.fd);
    b.close(dev);
    const bytes = fs.readFileSync(out.file);
    bytes[HDR + REC + 10] ^= 0x40; // one flipped bit in the device data
    const corrupt = dir.file('corrupt.bin');
    fs.writeFileSync(corrupt, bytes);
    const target = device({ size: 6000 });
    const resumeFd = enterState(b, target, MigState.RESUMING);
    const bad = b.open(corrupt, O_RDONLY);
    const good = b.open(out.file, O_RDONLY);
    try {
      const buf = Buffer.alloc(saved.bytes);
      const p = pump(bad, resumeFd);
      const err = await pumpError(p.copy(bad, resumeFd, buf, { srcOffset: 0, limit: saved.bytes, expectChecksum: saved.checksum }));
      expect({ code: err.code, kind: err.kind, bytesDone: err.bytesDone }).toEqual({ code: 'EVFIO_CHECKSUM', kind: 'format', bytesDone: 0 });
      const truncated = await pumpError(p.copy(good, resumeFd, buf, { srcOffset: 100, limit: saved.bytes, expectChecksum: saved.checksum }));
      expect({ code: truncated.code, kind: truncated.kind, bytesDone: truncated.bytesDone }).toEqual({ code: 'EVFIO_TRUNCATED', kind: 'format', bytesDone: 0 });
      expect(await p.copy(good, resumeFd, buf, { srcOffset: 0, limit: saved.bytes, expectChecksum: saved.checksum })).toEqual({ bytes: saved.bytes, checksum: saved.checksum, end: 'limit' });
      expect(enterState(b, target, MigState.RUNNING)).toBe(-1);
      expect(b.device(target).seed).toBe(77n);
    } finally {
      for (const fd of [bad, good, resumeFd, target]) b.close(fd);
    }
  });
});

describe('pump through purely virtual fds', () => {
  it('copies a virtual data_fd into a virtual pipe with one reused buffer, and its checksum', async () => {
    const sim = new SimBinding(undefined, { virtualFds: true });
    const [r, w] = sim.pipe();
    const dev = sim.open('sim:4096:seed=9', O_RDWR);
    const dataFd = enterState(sim, dev, MigState.STOP_COPY);
    const p = pumpFor(sim, [dataFd, w]);
    try {
      const pumping = p.copy(dataFd, w, Buffer.alloc(700));
      const got: Buffer[] = [];
      const chunk = Buffer.alloc(1024);
      let total = 0;
      while (total < plain(4096)) {
        const n = await sim.read(r, chunk);
        got.push(Buffer.from(chunk.subarray(0, n)));
        total += n;
      }
      expect(await pumping).toEqual({ bytes: plain(4096), checksum: crc32c(Buffer.concat(got)), end: 'eof' });
      sim.close(w);
      const [r2, w2] = sim.pipe();
      expect(await p.copy(r, w2, Buffer.alloc(8), { precopy: true })).toEqual({ bytes: 0, checksum: 0, end: 'for-now' });
      expect(await p.copy(r, w2, Buffer.alloc(8))).toEqual({ bytes: 0, checksum: 0, end: 'eof' });
      sim.close(r2);
      const err = await pumpError(p.copy(r2, w2, Buffer.alloc(8)));
      expect({ code: err.code, syscall: err.syscall, bytesDone: err.bytesDone }).toEqual({ code: 'EBADF', syscall: 'read', bytesDone: 0 });
      sim.close(w2);
    } finally {
      for (const fd of [dataFd, dev, r]) sim.close(fd);
    }
  });
});

/**
 * Raw VFIO calls over a `Binding`, below every layer of the library: encoded uAPI structs in,
 * ioctl / pread / pwrite / read / write out, as the kernel sees them. What the simulator's own
 * tests (test/sim) and the tests of the data pump on its fds drive a device with, so that what
 * they check is the device, not our migration code.
 */
import { expect } from 'vitest';
import { VfioError } from '../../src/base/errors';
import type { Binding } from '../../src/kernel/binding/types';
import * as s from '../../src/kernel/uapi/structs';
import * as v from '../../src/kernel/uapi/vfio';
import type { MigState } from '../../src/kernel/uapi/vfio';

// ---------------------------------------------------------------- VFIO_DEVICE_FEATURE

/** VFIO_DEVICE_FEATURE `id` with `op` and a payload of `size` bytes; returns the struct as the kernel left it. */
export function feature(b: Binding, fd: number, id: number, op: s.FeatureOp, size: number, payload?: Buffer): Buffer {
  const buf = s.encodeFeature(id, op, size, payload);
  b.ioctl(fd, v.VFIO_DEVICE_FEATURE, buf);
  return buf;
}

/** GET of MIG_DEVICE_STATE: the device's migration state. */
export function getState(b: Binding, fd: number): MigState {
  return s.decodeMigState(feature(b, fd, v.VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, 'get', 8)).deviceState as MigState;
}

/** What a SET of MIG_DEVICE_STATE copied back, and its error when it failed (the struct is copied back then too). */
export interface SetStateResult {
  deviceState: number;
  dataFd: number;
  error?: VfioError;
}

/** SET of MIG_DEVICE_STATE to `state`: the copied-back struct, with the VfioError when the SET failed. */
export function setState(b: Binding, fd: number, state: number): SetStateResult {
  const buf = s.encodeMigStateSet(state);
  try {
    b.ioctl(fd, v.VFIO_DEVICE_FEATURE, buf);
    return s.decodeMigState(buf);
  } catch (e) {
    if (!(e instanceof VfioError)) throw e;
    return { ...s.decodeMigState(buf), error: e };
  }
}

/** SET of MIG_DEVICE_STATE to `state`, which must succeed (throws its VfioError): the data_fd it opened, or -1. */
export function enterState(b: Binding, fd: number, state: number): number {
  const buf = s.encodeMigStateSet(state);
  b.ioctl(fd, v.VFIO_DEVICE_FEATURE, buf);
  return s.decodeMigState(buf).dataFd;
}

/** GET of MIG_DATA_SIZE: the bytes STOP_COPY would still produce. */
export function dataSize(b: Binding, fd: number): number {
  return s.decodeMigDataSize(feature(b, fd, v.VFIO_DEVICE_FEATURE_MIG_DATA_SIZE, 'get', 8));
}

/** VFIO_MIG_GET_PRECOPY_INFO on a saving data_fd, the struct's flags set to `flags` going in. */
export function precopyInfo(b: Binding, dataFd: number, flags = 0): { initialBytes: number; dirtyBytes: number; flags: number } {
  const q = s.encodePrecopyInfoQuery();
  q.writeUInt32LE(flags, 4);
  b.ioctl(dataFd, v.VFIO_MIG_GET_PRECOPY_INFO, q);
  return { ...s.decodePrecopyInfo(q), flags: q.readUInt32LE(4) };
}

/** VFIO_DEVICE_GET_IRQ_INFO of `index`. */
export function irqInfo(b: Binding, fd: number, index: number): s.IrqInfo {
  const q = s.encodeIrqInfoQuery(index);
  b.ioctl(fd, v.VFIO_DEVICE_GET_IRQ_INFO, q);
  return s.decodeIrqInfo(q);
}

// ---------------------------------------------------------------- regions (pread / pwrite at the vfio-pci file offset)

function readLE(b: Binding, fd: number, offset: number, size: 1 | 2 | 4): number {
  const buf = Buffer.alloc(size);
  expect(b.pread(fd, buf, offset), `pread of ${size} bytes at 0x${offset.toString(16)}`).toBe(size);
  return buf.readUIntLE(0, size);
}

function writeLE(b: Binding, fd: number, offset: number, size: 2 | 4, value: number): void {
  const buf = Buffer.alloc(size);
  buf.writeUIntLE(size === 2 ? value & 0xffff : value >>> 0, 0, size);
  expect(b.pwrite(fd, buf, offset), `pwrite of ${size} bytes at 0x${offset.toString(16)}`).toBe(size);
}

export const readU8 = (b: Binding, fd: number, offset: number): number => readLE(b, fd, offset, 1);
export const readU16 = (b: Binding, fd: number, offset: number): number => readLE(b, fd, offset, 2);
export const readU32 = (b: Binding, fd: number, offset: number): number => readLE(b, fd, offset, 4);
export const writeU16 = (b: Binding, fd: number, offset: number, value: number): void => writeLE(b, fd, offset, 2, value);
export const writeU32 = (b: Binding, fd: number, offset: number, value: number): void => writeLE(b, fd, offset, 4, value);

// ---------------------------------------------------------------- streams (data_fds, pipes, sockets)

/** read() in `chunk`-byte calls until one returns 0 (a data_fd's end, or PRE_COPY's temporary end); the bytes. */
export async function readToEnd(b: Binding, fd: number, chunk = 4096): Promise<Buffer> {
  const parts: Buffer[] = [];
  const buf = Buffer.alloc(chunk);
  for (;;) {
    const n = await b.read(fd, buf);
    if (n === 0) return Buffer.concat(parts);
    parts.push(Buffer.from(buf.subarray(0, n)));
  }
}

/** write() all of `data` in calls of at most `piece` bytes, looping on short writes (none may write 0). The write() count. */
export async function writeAll(b: Binding, fd: number, data: Buffer, piece = data.length): Promise<number> {
  let calls = 0;
  for (let off = 0; off < data.length; ) {
    const n = await b.write(fd, data, off, Math.min(piece, data.length - off));
    calls++;
    expect(n, `write() at ${off} of ${data.length}`).toBeGreaterThan(0);
    off += n;
  }
  return calls;
}

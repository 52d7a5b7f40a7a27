/**
 * The simulated device as a live-migration source and destination: device data that changes
 * while the device runs, PRE_COPY rounds that carry the changes, PRECOPY_INFO / MIG_DATA_SIZE
 * figures like a driver's, PRECOPY_INFOv2 and REINIT, and a resuming side that refuses any
 * stream whose final state is not the source's. Through the Binding (encoded structs,
 * read()/write() on data_fds) and through `Migration` (the kernel layer's owner of the state).
 */
import { describe, expect, it } from 'vitest';
import { VfioError } from '../../src/base/errors';
import { BAR0, SimBinding, openSimDevice, simStream } from '../../src/sim';
import { Churn } from '../../src/sim/data';
import type { Binding } from '../../src/kernel/binding/types';
import { drainSession, feedSession } from '../../src/kernel/stream';
import * as s from '../../src/kernel/uapi/structs';
import * as v from '../../src/kernel/uapi/vfio';
import { MigState } from '../../src/kernel/uapi/vfio';
import { le32 } from '../helpers/bytes';
import { dataSize, precopyInfo, readToEnd, readU32, setState, writeAll, type SetStateResult } from '../helpers/uapi';

const { RUNNING, STOP, STOP_COPY, RESUMING, PRE_COPY, PRE_COPY_P2P, RUNNING_P2P } = MigState;
const O_RDWR = 2;
const HDR = simStream.HEADER_SIZE;
const TRL = simStream.TRAILER_SIZE;
const REC = simStream.RECORD_HEADER_SIZE;
/** A record of one 4 KiB block. */
const R4K = REC + 4096;

// ---------------------------------------------------------------- helpers over the Binding

/** VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2 with `op`; the errno name, or 'ok'. */
function infoV2(b: Binding, fd: number, op: 'set' | 'get' | 'probe-set' = 'set', payload = 0): string {
  try {
    b.ioctl(fd, v.VFIO_DEVICE_FEATURE, s.encodeFeature(v.VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOV2, op, payload));
    return 'ok';
  } catch (e) {
    if (!(e instanceof VfioError)) throw e;
    return e.code;
  }
}

/** Records of a stream as [block, version]. */
function recordsOf(stream: Buffer): Array<[number, number]> {
  return simStream.splitStream(stream).records.map((r) => [r.block, r.version]);
}

/** Load `stream` into a fresh device of `spec`; returns the device fd and the RESUMING exit's result. */
async function load(b: SimBinding, spec: string, stream: Buffer, piece = 5000): Promise<{ fd: number; exit: SetStateResult }> {
  const fd = b.open(spec, O_RDWR);
  const r = setState(b, fd, RESUMING);
  expect(r.error).toBeUndefined();
  await writeAll(b, r.dataFd, stream, piece);
  const exit = setState(b, fd, STOP);
  b.close(r.dataFd);
  return { fd, exit };
}

/** Put recognisable state into a device's BAR0 registers. */
function scribble(b: Binding, fd: number, tag: number): void {
  b.pwrite(fd, le32(0xc0de0000 + tag), BAR0.CONTROL);
  b.pwrite(fd, Buffer.from(`scratch of round ${tag}`), BAR0.SCRATCH + 5);
}

/**
 * A live save of a 64 KiB device (16 blocks of 4 KiB, the first 4 initial data) whose data
 * changes between and during rounds; returns the whole stream and the source's final state.
 */
async function liveStream(b: SimBinding, name = 'src'): Promise<{ stream: Buffer; fd: number; rounds: Buffer[] }> {
  const fd = b.open(`sim:64KiB:seed=3:precopy=16KiB#${name}`, O_RDWR);
  const d = b.device(fd);
  const pre = setState(b, fd, PRE_COPY).dataFd;
  const rounds = [await readToEnd(b, pre, 3000)];
  d.dirtyData(0, 1); // block 0: sent, so dirty
  d.dirtyData(2 * 4096, 2 * 4096); // blocks 2 and 3
  d.dirtyData(9 * 4096 + 10, 1); // block 9: not sent yet, sent once at its new version
  scribble(b, fd, 1);
  rounds.push(await readToEnd(b, pre, 3000));
  d.touchBlocks(2); // block 2 again
  d.touchBlocks(0, 2); // blocks 0 and 1
  rounds.push(await readToEnd(b, pre, 3000));
  d.touchBlocks(3);
  scribble(b, fd, 2);
  expect(setState(b, fd, STOP_COPY).dataFd).toBe(-1);
  rounds.push(await readToEnd(b, pre, 3000));
  b.close(pre);
  return { stream: Buffer.concat(rounds), fd, rounds };
}

// ---------------------------------------------------------------- the data changes while the device runs

describe('device data that the running device changes', () => {
  it('rewrites give blocks new versions and new bytes; a stopped device changes nothing', () => {
    const b = new SimBinding();
    const fd = b.open('sim:64KiB:seed=11', O_RDWR);
    const d = b.device(fd);
    const before = d.readData(0, 65536);
    const digest0 = d.dataDigest();
    expect(digest0).toMatchObject({ seed: 11n, size: 65536, blockSize: 4096, blocks: 16, versionSum: 0 });
    expect(d.dirtyData(4095, 2)).toBe(2); // bytes across blocks 0 and 1
    expect([d.blockVersion(0), d.blockVersion(1), d.blockVersion(2)]).toEqual([1, 1, 0]);
    const after = d.readData(0, 65536);
    // Blocks 0 and 1 hold other bytes; the rest is untouched.
    expect(after.subarray(0, 4096).equals(before.subarray(0, 4096))).toBe(false);
    expect(after.subarray(4096, 8192).equals(before.subarray(4096, 8192))).toBe(false);
    expect(after.subarray(8192).equals(before.subarray(8192))).toBe(true);
    const g = new simStream.DataGenerator(11n);
    const want = Buffer.alloc(4096);
    g.fill(4096, want, 0, 4096, 1);
    expect(after.subarray(4096, 8192).equals(want)).toBe(true);
    expect(d.dataDigest().versionSum).toBe(2);

    // P2P states still run; STOP, STOP_COPY and RESUMING do not.
    setState(b, fd, RUNNING_P2P);
    expect(d.touchBlocks(5)).toBe(1);
    for (const st of [STOP, STOP_COPY, STOP, RESUMING]) {
      setState(b, fd, st);
      const frozen = d.dataDigest();
      expect(d.dirtyData(0, 65536), MigState[st]).toBe(0);
      expect(d.touchBlocks(0, 16)).toBe(0);
      expect(d.reinitialize()).toBe(0);
      b.pwrite(fd, le32(1), BAR0.TOUCH_DOORBELL);
      expect(d.dataDigest()).toEqual(frozen);
    }
  });

  it('BAR0: the guest rewrites blocks with TOUCH_BLOCK / TOUCH_DOORBELL; BLOCK_SIZE and DATA_GEN show the data', () => {
    const b = new SimBinding();
    const fd = b.open('sim:64KiB:block=1KiB', O_RDWR);
    const d = b.device(fd);
    expect(readU32(b, fd, BAR0.BLOCK_SIZE)).toBe(1024);
    expect(readU32(b, fd, BAR0.DATA_GEN_LO)).toBe(0);
    b.pwrite(fd, le32(60), BAR0.TOUCH_BLOCK);
    b.pwrite(fd, le32(10), BAR0.TOUCH_DOORBELL); // blocks 60..63: clipped at the last of 64
    expect([59, 60, 63].map((i) => d.blockVersion(i))).toEqual([0, 1, 1]);
    expect(readU32(b, fd, BAR0.DATA_GEN_LO)).toBe(4);
    expect(readU32(b, fd, BAR0.TOUCH_DOORBELL)).toBe(0); // write-only
    expect(readU32(b, fd, BAR0.TOUCH_BLOCK)).toBe(60);
    b.pwrite(fd, le32(0), BAR0.TOUCH_DOORBELL); // 0 blocks: nothing
    expect(d.dataDigest().versionSum).toBe(4);
    b.ioctl(fd, v.VFIO_DEVICE_RESET);
    // The data survives a reset; TOUCH_BLOCK does not.
    expect(readU32(b, fd, BAR0.TOUCH_BLOCK)).toBe(0);
    expect(readU32(b, fd, BAR0.DATA_GEN_LO)).toBe(4);
  });

  it('a churn rate rewrites blocks while the device runs, not while it is stopped', async () => {
    const b = new SimBinding();
    const fd = b.open('sim:4MiB:churn=64MiB/s', O_RDWR);
    const d = b.device(fd);
    await new Promise((r) => setTimeout(r, 30));
    // At least 30 ms at 64 MiB/s: at least 491 rewrites of 4 KiB blocks, picked among 1024.
    const first = d.dataDigest().versionSum;
    expect(first).toBeGreaterThanOrEqual(480);
    setState(b, fd, STOP);
    const frozen = d.dataDigest();
    await new Promise((r) => setTimeout(r, 30));
    expect(d.dataDigest()).toEqual(frozen);
    setState(b, fd, RUNNING);
    await new Promise((r) => setTimeout(r, 30));
    expect(d.dataDigest().versionSum - frozen.versionSum).toBeGreaterThanOrEqual(480);
    // A rate that would rewrite every block many times over rewrites each once.
    const small = b.open('sim:16KiB:churn=1GiB/s', O_RDWR);
    await new Promise((r) => setTimeout(r, 5));
    expect(b.device(small).dataDigest().versionSum).toBe(4);
  });

  it('Churn turns time into whole blocks, carries the rest, and counts only time spent running', () => {
    let t = 0;
    const c = new Churn(1000, 5n, () => t); // 1000 bytes/s
    t = 3000;
    expect(c.due(true, 1024)).toBe(2); // 3000 bytes: 2 blocks, 952 carried
    t = 3100;
    expect(c.due(true, 1024)).toBe(1); // 952 + 100
    t = 60_000;
    expect(c.due(false, 1024)).toBe(0); // stopped: the time does not count
    t = 60_500;
    expect(c.due(true, 1024)).toBe(0); // 28 + 500
    const picks = new Set(Array.from({ length: 200 }, () => c.pick(16)));
    expect([...picks].every((p) => p >= 0 && p < 16)).toBe(true);
    expect(picks.size).toBe(16);
  });

  it('the spec takes block, churn and infov2', async () => {
    const { parseSimSpec } = await import('../../src/sim');
    expect(parseSimSpec('sim:1MiB:block=512:churn=2MiB/s:infov2=on')).toMatchObject({ blockSize: 512, churn: 2 << 20, precopyInfoV2: true });
    expect(parseSimSpec('sim:churn=4096')).toMatchObject({ churn: 4096 });
    for (const bad of ['sim:block=1000', 'sim:block=4', 'sim:block=2GiB', 'sim:churn=fast', 'sim:infov2=yes']) expect(typeof parseSimSpec(bad), bad).toBe('string');
    const b = new SimBinding();
    expect(b.device(b.open('sim:1MiB:block=512:churn=1KiB:infov2=on', O_RDWR)).options).toMatchObject({ blockSize: 512, churn: 1024, precopyInfoV2: true });
    expect(b.device(b.open('sim:8GiB', O_RDWR)).options.blockSize).toBe(8192);
  });
});

// ---------------------------------------------------------------- PRE_COPY rounds

describe('PRE_COPY rounds carry the changes (through the Binding)', () => {
  it('initial data, then dirty blocks, then the temporary end; PRECOPY_INFO and MIG_DATA_SIZE follow', async () => {
    const b = new SimBinding();
    const fd = b.open('sim:64KiB:seed=3:precopy=16KiB#src', O_RDWR);
    const d = b.device(fd);
    const plain = simStream.streamLength(65536);
    expect(dataSize(b, fd)).toBe(plain);
    const pre = setState(b, fd, PRE_COPY).dataFd;
    // Initial data: the header and blocks 0..3. STOP_COPY would produce everything.
    expect(precopyInfo(b, pre)).toEqual({ initialBytes: HDR + 4 * R4K, dirtyBytes: 0, flags: 0 });
    expect(dataSize(b, fd)).toBe(plain);

    const r1 = await readToEnd(b, pre, 3000);
    expect(r1.length).toBe(HDR + 4 * R4K);
    expect(precopyInfo(b, pre)).toEqual({ initialBytes: 0, dirtyBytes: 0, flags: 0 });
    expect(dataSize(b, fd)).toBe(12 * R4K + TRL);

    // The device rewrites sent blocks (0, 2, 3) and one it has not sent (9): three are dirty.
    expect(d.dirtyData(0, 1) + d.dirtyData(2 * 4096, 8192) + d.dirtyData(9 * 4096, 1)).toBe(4);
    expect(precopyInfo(b, pre)).toEqual({ initialBytes: 0, dirtyBytes: 3 * R4K, flags: 0 });
    expect(d.session()?.figures).toMatchObject({ dirtyBlocks: 3, remaining: 15 * R4K + TRL });
    expect(dataSize(b, fd)).toBe(15 * R4K + TRL);
    // Rewriting a dirty block again does not make more to send.
    d.touchBlocks(0);
    expect(precopyInfo(b, pre).dirtyBytes).toBe(3 * R4K);

    // A round sends them, at their versions now; then nothing is left for PRE_COPY.
    const r2 = await readToEnd(b, pre, 1000);
    expect(r2.length).toBe(3 * R4K);
    expect([0, 1, 2].map((i) => [r2.readUInt32LE(i * R4K), r2.readUInt32LE(i * R4K + 4)])).toEqual([[0, 2], [2, 1], [3, 1]]);
    expect(precopyInfo(b, pre)).toEqual({ initialBytes: 0, dirtyBytes: 0, flags: 0 });
    expect(dataSize(b, fd)).toBe(12 * R4K + TRL);

    // A block rewritten while its record is being read is sent again.
    d.touchBlocks(1);
    const part = Buffer.alloc(100);
    expect(await b.read(pre, part)).toBe(100);
    d.touchBlocks(1);
    expect(precopyInfo(b, pre)).toEqual({ initialBytes: 0, dirtyBytes: R4K - 100 + R4K, flags: 0 });
    const r3 = Buffer.concat([part, await readToEnd(b, pre)]);
    expect([r3.readUInt32LE(4), r3.readUInt32LE(R4K + 4)]).toEqual([1, 2]);

    // STOP_COPY on the same fd: blocks 4..15 (9 at version 1), then the trailer.
    expect(setState(b, fd, STOP_COPY).dataFd).toBe(-1);
    expect(dataSize(b, fd)).toBe(12 * R4K + TRL);
    const r4 = await readToEnd(b, pre, 7000);
    expect(r4.length).toBe(12 * R4K + TRL);
    expect(dataSize(b, fd)).toBe(0);
    expect(await b.read(pre, Buffer.alloc(10))).toBe(0);

    const stream = Buffer.concat([r1, r2, r3, r4]);
    const { records, trailer } = simStream.splitStream(stream);
    expect(records.map((r) => `${r.block}@${r.version}`)).toEqual([
      '0@0', '1@0', '2@0', '3@0', // initial data
      '0@2', '2@1', '3@1', // round 2
      '1@1', '1@2', // round 3
      ...[4, 5, 6, 7, 8].map((i) => `${i}@0`), '9@1', ...[10, 11, 12, 13, 14, 15].map((i) => `${i}@0`),
    ]);
    expect(trailer).toMatchObject({ versionSum: d.dataDigest().versionSum, tableCrc: d.dataDigest().tableCrc });

    // The destination holds exactly the source's final data and registers.
    const { fd: dst, exit } = await load(b, 'sim:64KiB', stream);
    expect(exit.error).toBeUndefined();
    expect(b.device(dst).dataDigest()).toEqual(d.dataDigest());
    expect(b.device(dst).readData(0, 65536).equals(d.readData(0, 65536))).toBe(true);
    expect(b.device(dst).registers()).toEqual(d.registers());
  });

  it('several rounds with register and data changes, then stop-copy: the destination ends with the final state', async () => {
    const b = new SimBinding();
    const { stream, fd, rounds } = await liveStream(b);
    expect(rounds.map((r) => r.length)).toEqual([HDR + 4 * R4K, 3 * R4K, 3 * R4K, 12 * R4K + R4K + TRL]);
    const src = b.device(fd);
    const { fd: dst, exit } = await load(b, 'sim:64KiB', stream, 777);
    expect(exit.error).toBeUndefined();
    const got = b.device(dst);
    expect(got.dataDigest()).toEqual(src.dataDigest());
    expect(got.readData(0, 65536).equals(src.readData(0, 65536))).toBe(true);
    expect(got.registers()).toEqual(src.registers());
    expect(readU32(b, dst, BAR0.CONTROL)).toBe(0xc0de0002);
    // The restored device saves a plain stream of the same state: one record per block, in order.
    setState(b, dst, STOP);
    const again = await readToEnd(b, setState(b, dst, STOP_COPY).dataFd);
    expect(recordsOf(again)).toEqual([...Array(16).keys()].map((i) => [i, src.blockVersion(i)]));
    expect(again.length).toBe(simStream.streamLength(65536));
  });

  it('ENOMSG style: the temporary end after the dirty blocks is ENOMSG; poll wakes when a block becomes dirty', async () => {
    const b = new SimBinding();
    const fd = b.open('sim:16KiB:precopy=16KiB:end=enomsg', O_RDWR);
    const d = b.device(fd);
    const pre = setState(b, fd, PRE_COPY).dataFd;
    expect(await b.read(pre, Buffer.alloc(1 << 20))).toBe(HDR + 4 * R4K);
    await expect(b.read(pre, Buffer.alloc(10))).rejects.toMatchObject({ code: 'ENOMSG' });
    expect(await b.poll(pre, 1, 0)).toBe(0);
    const waiting = b.poll(pre, 1, -1);
    setTimeout(() => d.touchBlocks(3), 5);
    expect(await waiting).toBe(1);
    expect(await b.read(pre, Buffer.alloc(1 << 20))).toBe(R4K);
    await expect(b.read(pre, Buffer.alloc(10))).rejects.toMatchObject({ code: 'ENOMSG' });
  });

  it('plain STOP_COPY is unchanged: every block once, at its version, minimal; PRE_COPY without changes gives the same bytes', async () => {
    const b = new SimBinding();
    const fd = b.open('sim:40000:seed=8#plain', O_RDWR);
    const d = b.device(fd);
    d.touchBlocks(1, 3);
    d.touchBlocks(2);
    scribble(b, fd, 7);
    const pre = setState(b, fd, PRE_COPY).dataFd;
    const viaPrecopy = Buffer.concat([await readToEnd(b, pre), (setState(b, fd, STOP_COPY), await readToEnd(b, pre))]);
    setState(b, fd, STOP);
    const sc = setState(b, fd, STOP_COPY);
    expect(sc.dataFd).not.toBe(pre);
    const plain = await readToEnd(b, sc.dataFd, 999);
    expect(plain.length).toBe(simStream.streamLength(40000));
    expect(plain.length).toBe(HDR + 10 * REC + 40000 + TRL);
    expect(recordsOf(plain)).toEqual([[0, 0], [1, 1], [2, 2], [3, 1], [4, 0], [5, 0], [6, 0], [7, 0], [8, 0], [9, 0]]);
    expect(viaPrecopy.equals(plain)).toBe(true);
    const { fd: dst, exit } = await load(b, 'sim:40000', plain);
    expect(exit.error).toBeUndefined();
    expect(b.device(dst).dataDigest()).toEqual(d.dataDigest());
  });
});

// ---------------------------------------------------------------- refusals

describe('the resuming side refuses a stream whose final state is not the source\'s (EINVAL at the RESUMING exit)', () => {
  /** Rebuild a stream from its header, a choice of its records, and its trailer. */
  function rebuild(stream: Buffer, pick: (records: simStream.StreamRecord[]) => simStream.StreamRecord[], trailer?: Buffer): Buffer {
    const { records } = simStream.splitStream(stream);
    const parts = [stream.subarray(0, HDR), ...pick(records).map((r) => stream.subarray(r.offset, r.offset + REC + r.length))];
    return Buffer.concat([...parts, trailer ?? stream.subarray(stream.length - TRL)]);
  }

  async function refused(stream: Buffer, problem: RegExp): Promise<void> {
    const b = new SimBinding();
    const { fd, exit } = await load(b, 'sim:64KiB#dst', stream);
    const d = b.device(fd);
    expect(exit.error?.code).toBe('EINVAL');
    expect(d.session()?.problem).toMatch(problem);
    expect(d.state).toBe(RESUMING);
    // Nothing of the stream reached the device's state.
    expect(d.dataDigest()).toMatchObject({ seed: 1n, versionSum: 0 });
    expect(d.registers().control).toBe(0);
  }

  it('accepts the stream as it is (the control case)', async () => {
    const b = new SimBinding();
    const { stream } = await liveStream(b);
    const { exit } = await load(new SimBinding(), 'sim:64KiB', stream);
    expect(exit.error).toBeUndefined();
  });

  it('a missing update: a later record of a block left out', async () => {
    const { stream } = await liveStream(new SimBinding());
    // Drop the last record of block 2 (version 2): the destination keeps version 1.
    const bad = rebuild(stream, (rs) => rs.filter((r) => !(r.block === 2 && r.version === 2)));
    await refused(bad, /not the source's final state.*version sum/);
  });

  it('a stale block: an older record after a newer one, or the same one twice', async () => {
    const { stream } = await liveStream(new SimBinding());
    const swapped = rebuild(stream, (rs) => {
      const i = rs.findIndex((r) => r.block === 2 && r.version === 1);
      const j = rs.findIndex((r) => r.block === 2 && r.version === 2);
      const out = [...rs];
      [out[i], out[j]] = [out[j], out[i]];
      return out;
    });
    await refused(swapped, /stale record: block 2 at version 1 after version 2/);
    const twice = rebuild(stream, (rs) => [...rs, rs[rs.length - 1]]);
    await refused(twice, /stale record: block 3 at version 2 after version 2/);
  });

  it('a block skipped, a block never sent, a record for a block the device lacks', async () => {
    const { stream } = await liveStream(new SimBinding());
    await refused(rebuild(stream, (rs) => rs.filter((r) => !(r.block === 7))), /block 8 arrives before block 7 was sent/);
    await refused(rebuild(stream, (rs) => rs.filter((r) => r.block !== 15)), /blocks 15\.\.15 never sent/);
    const alien = Buffer.from(stream);
    alien.writeUInt32LE(16, HDR); // the first record's block index
    await refused(alien, /a record for block 16, the device has 16 blocks/);
  });

  it('wrong data, a tampered digest, a truncated stream', async () => {
    const { stream } = await liveStream(new SimBinding());
    const flipped = Buffer.from(stream);
    const { records } = simStream.splitStream(stream);
    const late = records[5]; // block 2 at version 1
    flipped[late.offset + REC + 100] ^= 1;
    await refused(flipped, /data offset 8292 \(block 2, version 1\)/);
    const versionBumped = Buffer.from(stream);
    versionBumped.writeUInt32LE(late.version + 7, late.offset + 4);
    await refused(versionBumped, /data offset 8192 \(block 2, version 8\)/);

    // A trailer that claims another final state, with a valid checksum of its own.
    const t = simStream.splitStream(stream).trailer;
    const lying = rebuild(stream, (rs) => rs, simStream.encodeTrailer({ ...t, versionSum: t.versionSum + 1 }));
    await refused(lying, /not the source's final state/);

    for (const cut of [stream.length - 1, stream.length - TRL, stream.length - TRL - 100, HDR + 5]) {
      await refused(stream.subarray(0, cut), /stream is short/);
    }
  });

  it('bytes past the trailer fail the whole write with ENOMEM, however the write is framed', async () => {
    const { stream } = await liveStream(new SimBinding());
    const b = new SimBinding();
    const fd = b.open('sim:64KiB', O_RDWR);
    const { dataFd } = setState(b, fd, RESUMING);
    const head = stream.length - 3 * R4K - TRL;
    await writeAll(b, dataFd, stream.subarray(0, head), 4096);
    // The rest of the stream and one byte more, in one write: refused whole, nothing taken.
    const extra = Buffer.concat([stream.subarray(head), Buffer.alloc(1)]);
    await expect(b.write(dataFd, extra)).rejects.toMatchObject({ code: 'ENOMEM' });
    expect(b.device(fd).session()?.pos).toBe(head);
    expect(await b.write(dataFd, stream, head, stream.length - head)).toBe(stream.length - head);
    expect(b.device(fd).session()?.total).toBe(stream.length);
    await expect(b.write(dataFd, Buffer.alloc(1))).rejects.toMatchObject({ code: 'ENOMEM' });
    expect(setState(b, fd, RUNNING).error).toBeUndefined();
  });
});

// ---------------------------------------------------------------- PRECOPY_INFOv2

describe('PRECOPY_INFOv2 (feature 12) and REINIT', () => {
  it('without it (6.12, mtty) the feature is ENOTTY and PRECOPY_INFO echoes the caller\'s flags, re-initialisation or not', async () => {
    const b = new SimBinding();
    const fd = b.open('sim:64KiB:precopy=16KiB', O_RDWR);
    expect(infoV2(b, fd)).toBe('ENOTTY');
    expect(infoV2(b, fd, 'probe-set')).toBe('ENOTTY');
    const pre = setState(b, fd, PRE_COPY).dataFd;
    await readToEnd(b, pre);
    // New initial data without the opt-in is dirty data: initial_bytes only goes down.
    expect(b.device(fd).reinitialize()).toBe(4);
    expect(precopyInfo(b, pre, 0x5a)).toEqual({ initialBytes: 0, dirtyBytes: 4 * R4K, flags: 0x5a });
    expect(b.device(fd).precopyInfoV2).toBe(false);
  });

  it('the kernel\'s checks: SET only (PROBE allowed), EINVAL without PRE_COPY; the opt-in lasts until release', () => {
    const b = new SimBinding();
    const fd = b.open('sim:infov2=on#v2', O_RDWR);
    expect(infoV2(b, fd, 'get', 8)).toBe('EINVAL');
    expect(infoV2(b, fd, 'probe-set')).toBe('ok');
    expect(b.device(fd).precopyInfoV2).toBe(false); // PROBE does not opt in
    expect(infoV2(b, fd, 'set', 16)).toBe('ok'); // any payload is ignored
    expect(b.device(fd).precopyInfoV2).toBe(true);
    b.ioctl(fd, v.VFIO_DEVICE_RESET);
    expect(b.device(fd).precopyInfoV2).toBe(true);
    b.close(fd);
    const again = b.open('sim#v2', O_RDWR);
    expect(b.device(again).precopyInfoV2).toBe(false);
    for (const spec of ['sim:infov2=on:mig=stop_copy+p2p', 'sim:infov2=on:mig=off']) expect(infoV2(b, b.open(spec, O_RDWR)), spec).toBe('EINVAL');
  });

  it('opted in: flags are the driver\'s (0, REINIT once); REINIT makes everything pending initial data, larger or smaller', async () => {
    const b = new SimBinding();
    const fd = b.open('sim:64KiB:precopy=16KiB:infov2=on', O_RDWR);
    const d = b.device(fd);
    expect(infoV2(b, fd)).toBe('ok');
    const pre = setState(b, fd, PRE_COPY).dataFd;
    expect(precopyInfo(b, pre, 0x5a)).toEqual({ initialBytes: HDR + 4 * R4K, dirtyBytes: 0, flags: 0 });
    const r1 = await readToEnd(b, pre);
    d.touchBlocks(1);
    expect(precopyInfo(b, pre)).toEqual({ initialBytes: 0, dirtyBytes: R4K, flags: 0 });

    // New initial data: the first 24 KiB (6 blocks) rewritten; what PRE_COPY holds is initial now:
    // blocks 0..3 again (1 was dirty already) and blocks 4, 5, not sent before.
    expect(d.reinitialize(24 * 1024)).toBe(6);
    expect(precopyInfo(b, pre, 0x5a)).toEqual({ initialBytes: 6 * R4K, dirtyBytes: 0, flags: v.VFIO_PRECOPY_INFO_REINIT });
    expect(precopyInfo(b, pre)).toEqual({ initialBytes: 6 * R4K, dirtyBytes: 0, flags: 0 }); // reported once
    d.touchBlocks(0); // dirty again while its new initial record waits: still one record
    d.touchBlocks(10); // not sent: not dirty
    expect(precopyInfo(b, pre)).toEqual({ initialBytes: 6 * R4K, dirtyBytes: 0, flags: 0 });
    const part = Buffer.alloc(R4K + 10);
    expect(await b.read(pre, part)).toBe(R4K + 10);
    expect(precopyInfo(b, pre)).toMatchObject({ initialBytes: 5 * R4K - 10, dirtyBytes: 0 });
    const r2 = Buffer.concat([part, await readToEnd(b, pre)]);
    expect(r2.length).toBe(6 * R4K);
    expect(precopyInfo(b, pre)).toEqual({ initialBytes: 0, dirtyBytes: 0, flags: 0 });
    d.touchBlocks(2);
    expect(precopyInfo(b, pre)).toEqual({ initialBytes: 0, dirtyBytes: R4K, flags: 0 });

    // Block 2 is dirty; once sent, a re-initialisation of block 0 alone is the new initial data.
    const r3 = await readToEnd(b, pre);
    expect(r3.length).toBe(R4K);
    expect(d.reinitialize(1)).toBe(1);
    expect(precopyInfo(b, pre)).toEqual({ initialBytes: R4K, dirtyBytes: 0, flags: v.VFIO_PRECOPY_INFO_REINIT });
    const r4 = await readToEnd(b, pre);

    setState(b, fd, PRE_COPY_P2P);
    expect(setState(b, fd, STOP_COPY).error).toBeUndefined();
    const stream = Buffer.concat([r1, r2, r3, r4, await readToEnd(b, pre)]);
    const { fd: dst, exit } = await load(b, 'sim:64KiB', stream);
    expect(exit.error).toBeUndefined();
    expect(b.device(dst).dataDigest()).toEqual(d.dataDigest());
  });

  it('a re-initialisation before the initial data is read can shrink initial_bytes', async () => {
    const b = new SimBinding();
    const fd = b.open('sim:64KiB:precopy=32KiB:infov2=on', O_RDWR);
    const d = b.device(fd);
    expect(infoV2(b, fd)).toBe('ok');
    const pre = setState(b, fd, PRE_COPY).dataFd;
    expect(precopyInfo(b, pre).initialBytes).toBe(HDR + 8 * R4K);
    expect(await b.read(pre, Buffer.alloc(HDR + 2 * R4K))).toBe(HDR + 2 * R4K);
    // Blocks 0, 1 (sent: dirty, so initial again) and 2 rewritten; blocks 3..7 leave the initial data.
    expect(d.reinitialize(3 * 4096)).toBe(3);
    expect(precopyInfo(b, pre)).toEqual({ initialBytes: 3 * R4K, dirtyBytes: 0, flags: v.VFIO_PRECOPY_INFO_REINIT });
    // STOP_COPY would still produce blocks 0, 1 (dirty) and 2..15, and the trailer.
    expect(dataSize(b, fd)).toBe(16 * R4K + TRL);
    // PRE_COPY now serves block 2 (the rest of the initial blocks) and the dirty blocks 0 and 1.
    const r = await readToEnd(b, pre);
    expect([0, 1, 2].map((i) => [r.readUInt32LE(i * R4K), r.readUInt32LE(i * R4K + 4)])).toEqual([[2, 1], [0, 1], [1, 1]]);
    expect(r.length).toBe(3 * R4K);
    expect(precopyInfo(b, pre)).toEqual({ initialBytes: 0, dirtyBytes: 0, flags: 0 });
  });
});

// ---------------------------------------------------------------- through Migration

describe('through Migration (the kernel layer)', () => {
  it('precopyInfo() and dataSize() follow the device; drain and feed move a changing state; PRECOPY_INFOv2 opt-in', async () => {
    const b = new SimBinding();
    const src = openSimDevice('sim:256KiB:seed=21:precopy=64KiB:infov2=on#msrc', b);
    const dst = openSimDevice('sim:256KiB#mdst', b);
    try {
      const m = src.migration!;
      const d = b.device('msrc');
      expect(m.enablePrecopyInfoV2()).toBe(true);
      expect(dst.migration!.enablePrecopyInfoV2()).toBe(false); // a device without it: older semantics
      await m.setState(PRE_COPY);
      await dst.migration!.setState(RESUMING);
      const toDst = async (): Promise<number> => {
        const r = await drainSession(b, m.session!.fd, async (c) => {
          await feedSession(b, dst.migration!.session!.fd, [Buffer.from(c)] as unknown as AsyncIterable<Buffer>);
        }, { precopy: true, buffer: Buffer.alloc(50_000) });
        expect(r.end).toBe('for-now');
        return r.bytes;
      };
      const pending = (): number => {
        const i = m.precopyInfo();
        return i.initialBytes + i.dirtyBytes;
      };
      expect(m.precopyInfo()).toEqual({ initialBytes: HDR + 16 * R4K, dirtyBytes: 0, flags: 0 });
      expect(await toDst()).toBe(HDR + 16 * R4K);
      expect(pending()).toBe(0);
      const stopCopy0 = m.dataSize()!;
      expect(stopCopy0).toBe(48 * R4K + TRL);
      // Rounds: pending grows when the device changes, shrinks to 0 when a round sends it.
      for (const [round, blocks] of [[1, [0, 5, 9]], [2, [5, 20, 30, 63]], [3, [1]]] as const) {
        for (const blk of blocks) d.touchBlocks(blk);
        const sent = blocks.filter((x) => x < 16).length;
        expect(pending(), `round ${round}`).toBe(sent * R4K);
        expect(m.dataSize()).toBe(stopCopy0 + sent * R4K);
        expect(await toDst()).toBe(sent * R4K);
        expect(pending()).toBe(0);
        expect(m.dataSize()).toBe(stopCopy0);
      }
      d.reinitialize(8 * 4096);
      expect(m.precopyInfo()).toEqual({ initialBytes: 8 * R4K, dirtyBytes: 0, flags: v.VFIO_PRECOPY_INFO_REINIT });
      expect(await toDst()).toBe(8 * R4K);
      d.setRegisters({ control: 0xfeed, irqCount: 9 });
      await m.setState(PRE_COPY_P2P);
      await m.setState(STOP_COPY);
      const r = await drainSession(b, m.session!.fd, async (c) => {
        await feedSession(b, dst.migration!.session!.fd, [Buffer.from(c)] as unknown as AsyncIterable<Buffer>);
      });
      expect(r).toEqual({ bytes: stopCopy0, end: 'eof' });
      await dst.migration!.setState(STOP);
      expect(b.device('mdst').dataDigest()).toEqual(d.dataDigest());
      expect(b.device('mdst').registers()).toEqual(d.registers());
    } finally {
      src.close();
      dst.close();
    }
  });
});

// ---------------------------------------------------------------- bounded memory

describe('large devices: bounded memory with changing data', () => {
  it('a 1 GiB device whose data changes between rounds migrates with no allocation proportional to the data', async () => {
    const GiB = 2 ** 30;
    const b = new SimBinding();
    const a = b.open('sim:1GiB:seed=99:precopy=1GiB', O_RDWR);
    const c = b.open('sim:1GiB', O_RDWR);
    const d = b.device(a);
    const blocks = GiB / 4096;
    // Before the save: 1/16 of the blocks rewritten (the version table is allocated: 1 MiB).
    for (let i = 0; i < blocks; i += 16) d.touchBlocks(i);
    const src = setState(b, a, PRE_COPY).dataFd;
    const dst = setState(b, c, RESUMING).dataFd;
    const buf = Buffer.alloc(1 << 20);
    const mem0 = process.memoryUsage();
    let peakRss = mem0.rss;
    let peakBuffers = mem0.arrayBuffers;
    const sample = (): void => {
      const m = process.memoryUsage();
      peakRss = Math.max(peakRss, m.rss);
      peakBuffers = Math.max(peakBuffers, m.arrayBuffers);
    };
    let total = 0;
    const pump = async (): Promise<number> => {
      let moved = 0;
      for (;;) {
        const n = await b.read(src, buf);
        if (n === 0) return moved;
        for (let off = 0; off < n; ) off += await b.write(dst, buf, off, n - off);
        moved += n;
        total += n;
        // While the initial data streams, the device keeps rewriting blocks already sent.
        if ((total & (64 * 1024 * 1024 - 1)) < n) {
          d.touchBlocks(Math.floor(total / 4096 / 2), 64);
          sample();
        }
      }
    };
    expect(await pump()).toBeGreaterThan(GiB);
    const dirtyAfterInitial = precopyInfo(b, src);
    expect(dirtyAfterInitial.initialBytes).toBe(0);
    // Rounds until nothing is dirty, the device rewriting a few hundred blocks each time.
    for (let round = 0; round < 3; round++) {
      for (let i = 0; i < 300; i++) d.touchBlocks((i * 7919 + round) % blocks);
      expect(precopyInfo(b, src).dirtyBytes).toBeGreaterThan(0);
      await pump();
      expect(precopyInfo(b, src).dirtyBytes).toBe(0);
    }
    setState(b, a, STOP_COPY);
    await pump();
    sample();
    expect(setState(b, c, STOP).error).toBeUndefined();
    expect(b.device(c).dataDigest()).toEqual(d.dataDigest());
    // A 1 GiB state held anywhere would add >= 1024 MiB: generation, verification, the version
    // tables (1 MiB each) and the dirty bitmap (32 KiB) stay far below.
    expect(peakBuffers - mem0.arrayBuffers).toBeLessThan(16 * 1024 * 1024);
    expect(peakRss - mem0.rss).toBeLessThan(96 * 1024 * 1024);
  }, 180_000);
});

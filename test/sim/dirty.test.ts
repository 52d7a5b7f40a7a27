/**
 * The simulated device's DMA engine and dirty tracking (src/sim/dma.ts, bar0.ts, device.ts),
 * driven through the library's dirty-tracking layer (src/kernel/dirty): the engine really writes
 * guest memory through the device's IOMMU context, DMA logging reports exactly the pages it
 * wrote, and the simulated kernel gives the kernel core's verdicts on bad arguments — the same
 * the library predicts (the kernel tier proves them on a real kernel).
 */
import { describe, expect, it } from 'vitest';
import { VfioError } from '../../src/base/errors';
import { DirtyBitmap, DmaLogging, checkLoggingRanges, type DmaRange } from '../../src/kernel/dirty';
import { reportRaw, startRaw, stopRaw } from '../../src/kernel/dirty/logging';
import type { VfioDevice } from '../../src/kernel/device';
import * as s from '../../src/kernel/uapi/structs';
import * as v from '../../src/kernel/uapi/vfio';
import { MigState } from '../../src/kernel/uapi/vfio';
import {
  BAR0,
  COMMAND_MASTER,
  DMA_MAX_LEN,
  DMA_STATUS_BAD_LENGTH,
  DMA_STATUS_DONE,
  DMA_STATUS_FAULT,
  SimBinding,
  combineRanges,
  openSimDevice,
  parseSimSpec,
  type SimDevice,
  type SimIommuDirty,
} from '../../src/sim';
import type { OpenOptions } from '../../src/kernel/open';
import { NativeBinding } from '../../src/kernel/binding/native';
import { ReferenceMemory } from '../../src/model/host/reference';
import { le32 } from '../helpers/bytes';
import { rejection } from '../helpers/errors';
import { enterState } from '../helpers/uapi';

const P = 4096;
const PN = 4096n;
const RAM = 0x1000_0000n; // guest RAM IOVA in these tests

interface Rig {
  b: SimBinding;
  dev: VfioDevice;
  sim: SimDevice;
  logging: DmaLogging;
}

function rig(spec = 'sim', opts: Pick<OpenOptions, 'iommuDirtyTracking'> = {}, b = new SimBinding()): Rig {
  const dev = openSimDevice(spec, b, opts);
  return { b, dev, sim: b.device(dev.fd), logging: DmaLogging.of(dev) };
}

/** `pages` pages of zeroed guest RAM mapped at `iova`. */
async function ram(dev: VfioDevice, iova: bigint, pages: number, access?: { read?: boolean; write?: boolean }): Promise<Buffer> {
  const buf = Buffer.alloc(pages * P);
  await dev.iommu.mapDma(iova, buf, access);
  return buf;
}

const reg = (dev: VfioDevice, off: number) => dev.readRegion(0, off, 4).readUInt32LE(0);

/** Program the DMA engine through BAR0 and ring its doorbell; returns DMA_STATUS. */
function dma(dev: VfioDevice, iova: bigint, length: number, pattern = 0xa5a5a5a5): number {
  dev.writeRegion(0, BAR0.DMA_ADDR_LO, le32(Number(iova & 0xffffffffn)));
  dev.writeRegion(0, BAR0.DMA_ADDR_HI, le32(Number(iova >> 32n)));
  dev.writeRegion(0, BAR0.DMA_LEN, le32(length));
  dev.writeRegion(0, BAR0.DMA_PATTERN, le32(pattern));
  dev.writeRegion(0, BAR0.DMA_DOORBELL, le32(1));
  return reg(dev, BAR0.DMA_STATUS);
}

/** The errno name a raw call fails with. */
async function errnoOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(VfioError);
    expect((e as VfioError).kind).toBe('syscall');
    return (e as VfioError).code;
  }
  return 'OK';
}

const range = (iova: bigint, length: bigint): DmaRange => ({ iova, length });

// ---------------------------------------------------------------- the DMA engine

describe('the DMA engine', () => {
  it('writes its pattern into guest memory at the IOVA, through the IOMMU mapping', async () => {
    const { dev } = rig();
    const mem = await ram(dev, RAM, 4);
    expect(dma(dev, RAM + 4096n + 10n, 7, 0x44332211)).toBe(DMA_STATUS_DONE);
    expect(mem.subarray(4096 + 10, 4096 + 17)).toEqual(Buffer.from([0x11, 0x22, 0x33, 0x44, 0x11, 0x22, 0x33]));
    expect(mem.subarray(0, 4096 + 10).every((x) => x === 0)).toBe(true);
    expect(mem.subarray(4096 + 17).every((x) => x === 0)).toBe(true);
    expect(reg(dev, BAR0.DMA_COUNT)).toBe(1);
    expect(dev.readRegion(0, BAR0.DMA_DOORBELL, 4).readUInt32LE(0)).toBe(0); // write-only
  });

  it('crosses adjacent mappings; any byte not mapped writable is an IOMMU fault and nothing is written', async () => {
    const { dev } = rig();
    const a = await ram(dev, RAM, 1);
    const b = await ram(dev, RAM + PN, 1);
    expect(dma(dev, RAM + PN - 2n, 4, 0x04030201)).toBe(DMA_STATUS_DONE);
    expect([...a.subarray(P - 2), ...b.subarray(0, 2)]).toEqual([1, 2, 3, 4]);
    // Runs past the second mapping: fault, and the first bytes are not written either.
    expect(dma(dev, RAM + 2n * PN - 2n, 4, 0xffffffff)).toBe(DMA_STATUS_FAULT);
    expect(b.subarray(P - 2).every((x) => x === 0)).toBe(true);
    const ro = await ram(dev, RAM + 8n * PN, 1, { write: false });
    expect(dma(dev, RAM + 8n * PN, 4)).toBe(DMA_STATUS_FAULT);
    expect(ro.every((x) => x === 0)).toBe(true);
    expect(reg(dev, BAR0.DMA_COUNT)).toBe(1);
  });

  it('refuses a length above 16 MiB; a length of 0 does nothing', async () => {
    const { dev } = rig();
    const mem = await ram(dev, RAM, 1);
    expect(dma(dev, RAM, DMA_MAX_LEN + 1)).toBe(DMA_STATUS_BAD_LENGTH);
    expect(dma(dev, RAM, 0)).toBe(DMA_STATUS_DONE);
    expect(mem.every((x) => x === 0)).toBe(true);
  });

  it('a stopped device neither takes DMA registers nor runs the engine (it must not change guest memory)', async () => {
    const { b, dev } = rig();
    const mem = await ram(dev, RAM, 1);
    enterState(b, dev.fd, MigState.STOP);
    expect(dma(dev, RAM, 16)).toBe(0);
    expect(mem.every((x) => x === 0)).toBe(true);
    expect(reg(dev, BAR0.DMA_LEN)).toBe(0);
    enterState(b, dev.fd, MigState.RUNNING);
    expect(dma(dev, RAM, 16)).toBe(DMA_STATUS_DONE);
  });

  it('master=required: with PCI_COMMAND.MASTER clear the transfer waits in the wedged queue, as doorbells do', async () => {
    const { dev, sim } = rig('sim:master=required');
    const mem = await ram(dev, RAM, 1);
    expect(dma(dev, RAM, 16)).toBe(0);
    expect(sim.queuePending).toBe(1);
    expect(mem.every((x) => x === 0)).toBe(true);
    dev.writeConfig(4, Buffer.from([COMMAND_MASTER, 0]));
    expect(dma(dev, RAM, 16)).toBe(0); // behind the wedged head
    expect(sim.queuePending).toBe(2);
    await dev.reset();
    dev.writeConfig(4, Buffer.from([COMMAND_MASTER, 0]));
    expect(dma(dev, RAM, 16, 0x01010101)).toBe(DMA_STATUS_DONE);
    expect(mem.subarray(0, 16).every((x) => x === 1)).toBe(true);
  });

  it('without an IOMMU context (closed) every transfer faults', async () => {
    const { b, dev, sim } = rig('sim#noctx');
    const mem = await ram(dev, RAM, 1);
    dev.iommu.close();
    expect(sim.dmaWrite(RAM, Buffer.alloc(4, 1))).toBe(false);
    expect(mem.every((x) => x === 0)).toBe(true);
    // A second open of the same device brings its own context.
    const again = openSimDevice('sim#noctx', b);
    const mem2 = await ram(again, RAM, 1);
    expect(sim.dmaWrite(RAM, Buffer.alloc(4, 1))).toBe(true);
    expect(mem2.readUInt32LE(0)).toBe(0x01010101);
  });
});

// ---------------------------------------------------------------- DMA logging

describe('device DMA logging', () => {
  it('probe: yes by default, no with dirty=off (ENOTTY)', () => {
    expect(rig().logging.probe()).toBe(true);
    expect(rig('sim:dirty=off').logging.probe()).toBe(false);
  });

  it('reports exactly the pages the engine wrote inside the ranges, then nothing (read-and-clear)', async () => {
    const { dev, sim, logging } = rig();
    await ram(dev, RAM, 64);
    await ram(dev, 0x1_0000_0000n, 16);
    const st = await logging.start([range(RAM, 64n * PN), range(0x1_0000_0000n, 16n * PN)]);
    expect(st).toMatchObject({ pageSize: 4096, requestedPageSize: 4096 });
    expect(sim.dmaLogging?.ranges.length).toBe(2);
    dma(dev, RAM + 3n * PN + 100n, 8);
    dma(dev, RAM + 10n * PN - 4n, 8); // straddles pages 9 and 10
    dma(dev, RAM + 40n * PN, 3 * P); // pages 40..42
    dma(dev, 0x1_0000_0000n + 15n * PN, 1);
    const [low, high] = await logging.reportAll();
    expect(low.bitmap.toArray()).toEqual([3, 9, 10, 40, 41, 42]);
    expect(high.bitmap.toArray()).toEqual([15]);
    expect(low.error).toBeUndefined();
    const again = await logging.report(new DirtyBitmap(RAM, 64n * PN, P));
    expect(again.bitmap.isClean()).toBe(true);
    dma(dev, RAM, 1);
    expect((await logging.report(new DirtyBitmap(RAM, 64n * PN, P))).bitmap.toArray()).toEqual([0]);
  });

  it('a report of part of a range returns and clears only that part', async () => {
    const { dev, logging } = rig();
    await ram(dev, RAM, 64);
    await logging.start([range(RAM, 64n * PN)]);
    dma(dev, RAM + 2n * PN, 1);
    dma(dev, RAM + 50n * PN, 1);
    expect((await logging.report(new DirtyBitmap(RAM + 32n * PN, 32n * PN, P))).bitmap.toArray()).toEqual([18]);
    expect((await logging.report(new DirtyBitmap(RAM, 64n * PN, P))).bitmap.toArray()).toEqual([2]);
  });

  it('writes outside the ranges are not logged; a report outside them is refused (it would say "clean")', async () => {
    const { dev, sim, logging } = rig();
    await ram(dev, RAM, 32);
    await logging.start([range(RAM, 16n * PN)]);
    dma(dev, RAM + 20n * PN, 64);
    expect(sim.dmaLogging?.pending).toBe(0);
    await expect(logging.report(new DirtyBitmap(RAM, 32n * PN, P))).rejects.toMatchObject({ code: 'EVFIO_DIRTY_UNTRACKED', kind: 'usage' });
  });

  it('the driver chooses the page size (dirtypage=64KiB): the kernel hands it back, and reports cover its pages', async () => {
    const { dev, logging } = rig('sim:dirtypage=64KiB');
    await ram(dev, RAM, 64);
    const st = await logging.start([range(RAM, 64n * PN)]);
    expect(st).toMatchObject({ pageSize: 65536, requestedPageSize: 4096 });
    dma(dev, RAM + 17n * PN + 8n, 4); // inside the second 64 KiB page
    // At 4 KiB: the 16 pages of that 64 KiB page. NO read-and-clear of the other page sizes' view:
    // the device's page is cleared by the first report.
    const fine = await logging.report(new DirtyBitmap(RAM, 64n * PN, P));
    expect(fine.bitmap.toArray()).toEqual(Array.from({ length: 16 }, (_, i) => 16 + i));
    dma(dev, RAM + 17n * PN + 8n, 4);
    const coarse = (await logging.reportAll())[0];
    expect(coarse.bitmap.pageSize).toBe(65536);
    expect(coarse.bitmap.toArray()).toEqual([1]);
  });

  it('without a driver page size the requested one is rounded down to a power of two (as mlx5 clamps)', async () => {
    const { dev } = rig();
    // 12288 is not a power of two: the kernel core's mask test still passes 0 and 16 KiB ranges.
    expect(await startRaw(dev, [range(0n, 0x4000n)], 12288n)).toBe(8192n);
    await stopRaw(dev);
    expect(await startRaw(dev, [range(0n, 0x10000n)], 65536n)).toBe(65536n);
  });

  it('a range limit (dirtyranges=2): START with more combines the closest ranges; the gap is tracked too', async () => {
    const { dev, sim, logging } = rig('sim:dirtyranges=2');
    await ram(dev, RAM, 64);
    await logging.start([range(RAM, 4n * PN), range(RAM + 8n * PN, 4n * PN), range(RAM + 48n * PN, 4n * PN)]);
    expect(sim.dmaLogging?.ranges).toEqual([
      { start: RAM, last: RAM + 12n * PN - 1n },
      { start: RAM + 48n * PN, last: RAM + 52n * PN - 1n },
    ]);
    dma(dev, RAM + 6n * PN, 1); // in the joined gap
    dma(dev, RAM + 30n * PN, 1); // in the big gap: not tracked
    expect(sim.dmaLogging?.pending).toBe(1);
    dma(dev, RAM + 49n * PN, 1);
    const results = await logging.reportAll();
    expect(results.map((r) => r.bitmap.toArray())).toEqual([[], [], [1]]);
  });

  it('combineRanges is vfio_combine_iova_ranges: smallest gap first, one range spans all', () => {
    const iv = (a: bigint, b: bigint) => ({ start: a, last: b });
    const list = [iv(0n, 9n), iv(20n, 29n), iv(35n, 39n), iv(100n, 109n)];
    expect(combineRanges(list, 3)).toEqual([iv(0n, 9n), iv(20n, 39n), iv(100n, 109n)]);
    expect(combineRanges(list, 2)).toEqual([iv(0n, 39n), iv(100n, 109n)]);
    expect(combineRanges(list, 1)).toEqual([iv(0n, 109n)]);
    expect(combineRanges(list, 8)).toEqual(list);
  });

  it('257 ranges: the library refuses first (naming E2BIG); the simulated kernel answers E2BIG', async () => {
    const { dev, logging } = rig();
    const many = Array.from({ length: 257 }, (_, i) => range(BigInt(i) * 2n * PN, PN));
    const e = await rejection(logging.start(many));
    expect(e).toMatchObject({ code: 'EVFIO_DIRTY_RANGES', kind: 'usage' });
    expect(e.message).toContain('E2BIG');
    expect(await errnoOf(startRaw(dev, many, PN))).toBe('E2BIG');
    expect(await errnoOf(startRaw(dev, many.slice(0, 256), PN))).toBe('OK');
  });

  it('the library predicts the simulated kernel verdict for every START rule, and refuses first', async () => {
    const cases: Array<[string, DmaRange[], bigint]> = [
      ['no range', [], PN],
      ['misaligned iova', [range(RAM + 512n, PN)], PN],
      ['misaligned length', [range(RAM, PN + 1n)], PN],
      ['overlap', [range(RAM, 4n * PN), range(RAM + 2n * PN, 4n * PN)], PN],
      ['overlap, earlier range later in the list', [range(RAM + 8n * PN, PN), range(RAM, 16n * PN)], PN],
      ['overflow', [range((1n << 64n) - PN, PN)], PN],
      ['fine', [range(RAM, PN), range(RAM + PN, PN)], PN],
    ];
    for (const [what, ranges, ps] of cases) {
      const { dev, logging } = rig();
      const predicted = checkLoggingRanges(ranges, ps)?.errno ?? 'OK';
      expect(await errnoOf(startRaw(dev, ranges, ps)), what).toBe(predicted);
      if (predicted !== 'OK') {
        await expect(logging.start(ranges, { pageSize: Number(ps) }), what).rejects.toMatchObject({ code: 'EVFIO_DIRTY_RANGES', kind: 'usage' });
      }
    }
  });

  it('REPORT rules: page size below 4 KiB or not a power of two is EINVAL (the library refuses first)', async () => {
    const { dev, logging } = rig();
    await logging.start([range(RAM, 64n * PN)]);
    for (const ps of [2048n, 12288n, 0n]) {
      expect(await errnoOf(reportRaw(dev, RAM, 64n * PN, ps, Buffer.alloc(64))), `page size ${ps}`).toBe('EINVAL');
    }
    expect(await errnoOf(reportRaw(dev, (1n << 64n) - PN, PN, PN, Buffer.alloc(8)))).toBe('EOVERFLOW');
    await expect(logging.report(new DirtyBitmap(RAM, 64n * PN, 2048))).rejects.toMatchObject({ code: 'EVFIO_DIRTY_PAGE_SIZE', kind: 'usage' });
    await expect(logging.report({ iova: RAM, length: 64n * PN, pageSize: 12288 })).rejects.toMatchObject({ code: 'EVFIO_DIRTY_PAGE_SIZE', kind: 'usage' });
    await expect(logging.report(new DirtyBitmap(RAM, 64n * PN, 8192))).resolves.toMatchObject({ bitmap: expect.any(DirtyBitmap) });
  });

  it('user pointers the simulated kernel cannot reach are EFAULT, as for copy_from_user()', async () => {
    const { dev, logging } = rig();
    const control = s.encodeDmaLoggingControl(PN, 1, 0xdead_0000n);
    const start = s.encodeFeature(v.VFIO_DEVICE_FEATURE_DMA_LOGGING_START, 'set', s.SIZEOF_DMA_LOGGING_CONTROL, control);
    expect(await errnoOf(dev.ioctlAsync(v.VFIO_DEVICE_FEATURE, start))).toBe('EFAULT');
    await logging.start([range(RAM, PN)]);
    const report = s.encodeFeature(
      v.VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
      'get',
      s.SIZEOF_DMA_LOGGING_REPORT,
      s.encodeDmaLoggingReport({ iova: RAM, length: PN, pageSize: PN, bitmapAddr: 0xdead_0000n }),
    );
    expect(await errnoOf(dev.ioctlAsync(v.VFIO_DEVICE_FEATURE, report))).toBe('EFAULT');
    // A payload shorter than the struct is EINVAL (vfio_check_feature), PROBE answers 0.
    const short = s.encodeFeature(v.VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT, 'get', 16);
    expect(await errnoOf(dev.ioctlAsync(v.VFIO_DEVICE_FEATURE, short))).toBe('EINVAL');
  });

  it('the driver (mlx5-like): START while logging → EINVAL, REPORT while not → EINVAL, STOP while not → 0; the library says so first', async () => {
    const { dev, logging } = rig();
    expect(await errnoOf(reportRaw(dev, RAM, PN, PN, Buffer.alloc(8)))).toBe('EINVAL');
    await expect(logging.report(new DirtyBitmap(RAM, PN, P))).rejects.toMatchObject({ code: 'EVFIO_DIRTY_NOT_STARTED' });
    expect(await errnoOf(stopRaw(dev))).toBe('OK');
    await logging.start([range(RAM, PN)]);
    expect(await errnoOf(startRaw(dev, [range(RAM, PN)], PN))).toBe('EINVAL');
    await expect(logging.start([range(RAM, PN)])).rejects.toMatchObject({ code: 'EVFIO_DIRTY_ACTIVE' });
    await logging.stop();
    expect(logging.active).toBeUndefined();
    await logging.stop(); // no-op
    await logging.start([range(RAM, 2n * PN)]); // again, after a stop
    expect(logging.active?.ranges).toEqual([range(RAM, 2n * PN)]);
  });

  it('a failed report: "throw" propagates the kernel error, "all-dirty" marks the whole range and returns the error', async () => {
    const { dev, logging } = rig('sim:dirtyfail=2');
    await ram(dev, RAM, 8);
    await logging.start([range(RAM, 8n * PN)]);
    dma(dev, RAM + PN, 1);
    expect((await logging.report(new DirtyBitmap(RAM, 8n * PN, P))).bitmap.toArray()).toEqual([1]);
    dma(dev, RAM + 2n * PN, 1);
    await expect(logging.report(new DirtyBitmap(RAM, 8n * PN, P))).rejects.toMatchObject({ code: 'EIO', kind: 'syscall' });
    // The failed report cleared nothing: the next one still has page 2.
    expect((await logging.report(new DirtyBitmap(RAM, 8n * PN, P))).bitmap.toArray()).toEqual([2]);
    const r = await logging.report(new DirtyBitmap(RAM, 8n * PN, P), { onError: 'all-dirty' });
    expect(r.error).toMatchObject({ code: 'EIO' });
    expect(r.bitmap.toArray()).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    // A usage error is never turned into "all dirty".
    await expect(logging.report(new DirtyBitmap(RAM, 8n * PN, 1024), { onError: 'all-dirty' })).rejects.toMatchObject({ code: 'EVFIO_DIRTY_PAGE_SIZE' });
  });

  it('injected report errors (test hook) follow the policy too', async () => {
    const { dev, sim, logging } = rig();
    await ram(dev, RAM, 2);
    await logging.start([range(RAM, 2n * PN)]);
    sim.injectError('DMA_LOGGING_REPORT', 'ENOMEM');
    const r = await logging.report(new DirtyBitmap(RAM, 2n * PN, P), { onError: 'all-dirty' });
    expect(r.error).toMatchObject({ code: 'ENOMEM', op: 'VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT (GET)' });
    expect(r.bitmap.count()).toBe(2);
  });

  it('releasing the device stops logging; a reset does not', async () => {
    const b = new SimBinding();
    const { dev, sim, logging } = rig('sim#rel', {}, b);
    await logging.start([range(RAM, PN)]);
    await dev.reset();
    expect(sim.dmaLogging).toBeDefined();
    dev.close();
    expect(sim.dmaLogging).toBeUndefined();
    const again = rig('sim#rel', {}, b);
    expect(again.sim).toBe(sim);
    expect(await errnoOf(reportRaw(again.dev, RAM, PN, PN, Buffer.alloc(8)))).toBe('EINVAL');
  });

  it('over a real inner binding: real addresses, and guest memory from ReferenceMemory, work the same', async () => {
    const real = new NativeBinding();
    const { dev, logging } = rig('sim', {}, new SimBinding(real));
    const region = new ReferenceMemory(real).add(RAM, 8 * P);
    await dev.iommu.mapDma(region.gpa, region.buffer);
    await logging.start([range(RAM, 8n * PN)]);
    expect(dma(dev, RAM + 3n * PN + 1n, 2, 0x0000beef)).toBe(DMA_STATUS_DONE);
    expect(region.buffer.readUInt16LE(3 * P + 1)).toBe(0xbeef);
    expect((await logging.report({ iova: RAM, length: 8n * PN, pageSize: P })).bitmap.toArray()).toEqual([3]);
    // The address the simulated kernel wrote through is the buffer's real one.
    const bitmap = new DirtyBitmap(RAM, 8n * PN, P);
    expect(dev.binding.bufferAddress(bitmap.buffer)).toBe(real.bufferAddress(bitmap.buffer));
  });

  it('a device without DMA logging answers ENOTTY to START', async () => {
    const { dev, logging } = rig('sim:dirty=off');
    await expect(logging.start([range(RAM, PN)])).rejects.toMatchObject({ code: 'ENOTTY', kind: 'syscall' });
    expect(logging.active).toBeUndefined();
    void dev;
  });
});

// ---------------------------------------------------------------- IOMMU dirty tracking

describe('IOMMU dirty tracking on the simulated IOMMU context', () => {
  it("'auto' gives it to a device without DMA logging only; 'on' always; 'off' (default) never", () => {
    expect(rig('sim:dirty=off', { iommuDirtyTracking: 'auto' }).dev.iommu.dirty).toBeDefined();
    expect(rig('sim', { iommuDirtyTracking: 'auto' }).dev.iommu.dirty).toBeUndefined();
    expect(rig('sim', { iommuDirtyTracking: 'on' }).dev.iommu.dirty).toBeDefined();
    expect(rig('sim:dirty=off').dev.iommu.dirty).toBeUndefined();
  });

  it('tracks the pages DMA wrote while enabled, read-and-clear unless NO_CLEAR', async () => {
    const { dev } = rig('sim:dirty=off', { iommuDirtyTracking: 'on' });
    const dirty = dev.iommu.dirty!;
    await ram(dev, RAM, 32);
    dma(dev, RAM, 4); // before enable: not tracked
    await dirty.enable();
    expect(dirty.enabled).toBe(true);
    dma(dev, RAM + 5n * PN, 2 * P); // pages 5, 6
    dma(dev, RAM + 31n * PN + 4095n, 1);
    const bm = () => new DirtyBitmap(RAM, 32n * PN, P);
    expect((await dirty.read(bm(), { noClear: true })).bitmap.toArray()).toEqual([5, 6, 31]);
    expect((await dirty.read(bm())).bitmap.toArray()).toEqual([5, 6, 31]);
    expect((await dirty.read(bm())).bitmap.isClean()).toBe(true);
    // Coarser reads cover the IOPTEs they contain.
    dma(dev, RAM + 9n * PN, 1);
    expect((await dirty.read(new DirtyBitmap(RAM, 32n * PN, 8 * P))).bitmap.toArray()).toEqual([1]);
    await dirty.disable();
    await expect(dirty.read(bm())).rejects.toMatchObject({ code: 'EVFIO_DIRTY_NOT_STARTED' });
  });

  it('enabling clears what was marked before (iopt_set_dirty_tracking clears first)', async () => {
    const { dev } = rig('sim:dirty=off', { iommuDirtyTracking: 'on' });
    const dirty = dev.iommu.dirty!;
    await ram(dev, RAM, 4);
    await dirty.enable();
    dma(dev, RAM, 1);
    await dirty.disable();
    await dirty.enable();
    expect((await dirty.read(new DirtyBitmap(RAM, 4n * PN, P))).bitmap.isClean()).toBe(true);
  });

  it('refuses page size 1000 and ranges not aligned to the page size before asking', async () => {
    const { dev } = rig('sim', { iommuDirtyTracking: 'on' });
    const dirty = dev.iommu.dirty!;
    await dirty.enable();
    await expect(dirty.read({ iova: 0n, length: 64_000n, pageSize: 1000 })).rejects.toMatchObject({ code: 'EVFIO_DIRTY_PAGE_SIZE', kind: 'usage' });
    await expect(dirty.read({ iova: RAM, length: 4n * PN, pageSize: 2048 })).rejects.toMatchObject({ code: 'EVFIO_DIRTY_PAGE_SIZE' });
    expect((await dirty.read({ iova: RAM, length: 4n * PN, pageSize: P })).bitmap.pages).toBe(4);
    await expect(dirty.read(new DirtyBitmap(RAM + 512n, 4n * PN, P))).rejects.toMatchObject({ code: 'EVFIO_DIRTY_RANGES' });
  });

  it('a failed read follows the policy', async () => {
    const { dev } = rig('sim:dirty=off', { iommuDirtyTracking: 'on' });
    const dirty = dev.iommu.dirty as SimIommuDirty;
    await dirty.enable();
    dirty.failReads(5, 2);
    await expect(dirty.read(new DirtyBitmap(RAM, 4n * PN, P))).rejects.toMatchObject({ code: 'EIO' });
    const r = await dirty.read(new DirtyBitmap(RAM, 4n * PN, P), { onError: 'all-dirty' });
    expect(r.error).toMatchObject({ code: 'EIO' });
    expect(r.bitmap.count()).toBe(4);
  });
});

describe('sim spec: dirty-tracking keys', () => {
  it('parses dirty, dirtyranges, dirtypage and dirtyfail', () => {
    expect(parseSimSpec('sim:dirty=off:dirtyranges=3:dirtypage=64KiB:dirtyfail=4')).toMatchObject({
      dmaLogging: false,
      dmaLoggingMaxRanges: 3,
      dmaLoggingPageSize: 65536,
      dmaLoggingFailEvery: 4,
    });
    for (const bad of ['sim:dirty=maybe', 'sim:dirtyranges=0', 'sim:dirtyranges=257', 'sim:dirtypage=1000', 'sim:dirtypage=2KiB', 'sim:dirtyfail=x']) {
      expect(typeof parseSimSpec(bad), bad).toBe('string');
    }
  });

  it('a named device opened again with a contradicting key is EEXIST', () => {
    const b = new SimBinding();
    b.open('sim:dirtypage=8KiB#n', 2);
    expect(() => b.open('sim:dirtypage=16KiB#n', 2)).toThrow(expect.objectContaining({ code: 'EEXIST' }));
  });
});

/**
 * Dirty-page tracking during a live migration (src/engine/dirty.ts through LiveMigration), on
 * simulated devices whose DMA engine really writes guest memory: device DMA logging and IOMMU
 * dirty tracking report exactly the pages the engine wrote; an untracked device is all dirty or
 * blocks; a failed report is all dirty or fails the migration; the vIOMMU blocker and its
 * relaxation, with the cancel on a guest mapping leaving the source running with its state.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { useTempDir } from '../helpers/temp-dir';
import { rejection } from '../helpers/errors';
import { MigrationCoordinator, type CoordinatorOptions } from '../../src/vm/coordinator';
import { listen, type Listener } from '../../src/live/listener';
import type { DirtySync } from '../../src/engine/dirty';
import type { Blocker } from '../../src/engine/engine';
import { DmaLogging } from '../../src/kernel/dirty/logging';
import { openDevice, type OpenOptions } from '../../src/kernel/open';
import { migStateName } from '../../src/kernel/uapi/vfio';
import { ReferenceViommu, type ReferenceHost } from '../../src/model/host/reference';
import { BareDevice } from '../../src/model/bare';
import { MigrationEngine } from '../../src/engine/engine';
import { BAR0, DMA_STATUS_DONE } from '../../src/sim';
import { Guest, MEM_MASTER, SECRET, attach, destination, dispose, makeEnv, newHost, simOf, type Env } from '../helpers/device-model';

const PAGE = 4096;
/** Guest RAM: 1 MiB below 4 GiB and 1 MiB above. */
const LOW = 0x0n;
const HIGH = 0x1_0000_0000n;
const RAM = 1 << 20;

const tmp = useTempDir('dirty', { each: true });
let env: Env;
/** The listener of the test's current migration (a listener accepts one migration). */
let listener: Listener;
const listeners: Listener[] = [];
async function newListener(): Promise<Listener> {
  listener = await listen(`unix:${tmp.file(`mig${listeners.length}.sock`)}`);
  listeners.push(listener);
  return listener;
}
beforeEach(async () => {
  env = makeEnv();
  await newListener();
});
afterEach(async () => {
  for (const l of listeners.splice(0)) await l.close();
  dispose(env);
});

interface Vm {
  g: Guest;
  host: ReferenceHost;
  vm: MigrationCoordinator;
}

/** A source VM: one booted device with guest RAM mapped for its DMA. */
async function sourceVm(spec: string, opts: CoordinatorOptions = {}, open: Pick<OpenOptions, 'iommuDirtyTracking'> = {}, withViommu = false): Promise<Vm> {
  const host = newHost(env);
  host.memory.add(LOW, RAM);
  host.memory.add(HIGH, RAM);
  if (withViommu) host.viommu = new ReferenceViommu();
  const dev = openDevice(spec, { binding: env.sim, ...open });
  env.cleanup.push(() => dev.close());
  const d = attach(env, dev, host, { id: 'a' });
  const g = new Guest(d, host);
  g.command(MEM_MASTER);
  g.setRegisters(0xc0de_0001, SECRET);
  await d.mapGuestMemory();
  return { g, host, vm: new MigrationCoordinator([d], opts) };
}

/** The guest has the device write `length` bytes of `pattern` at `iova` by DMA. */
function dma(g: Guest, iova: bigint, length: number, pattern = 0x5a5a5a5a): void {
  g.write32(BAR0.DMA_ADDR_LO, Number(iova & 0xffff_ffffn));
  g.write32(BAR0.DMA_ADDR_HI, Number(iova >> 32n));
  g.write32(BAR0.DMA_LEN, length);
  g.write32(BAR0.DMA_PATTERN, pattern);
  g.write32(BAR0.DMA_DOORBELL, 1);
  expect(g.read32(BAR0.DMA_STATUS)).toBe(DMA_STATUS_DONE);
}

/** The dirty pages of a sync as "range index:page" strings, per device. */
function pagesOf(s: DirtySync, device = 'a'): string[] {
  const d = s.devices.find((x) => x.device === device)!;
  return d.bitmaps.flatMap((b, i) => [...b.dirtyPages()].map((k) => `${i}:${k}`));
}

function incoming(spec: string, src: ReferenceHost): Promise<unknown> {
  const dst = destination(env, src, [{ spec, id: 'a' }]);
  const p = new MigrationCoordinator(dst.devices).incoming(listener, { resume: true });
  p.catch(() => undefined);
  return p;
}


describe('dirty tracking in a live migration', () => {
  it('device DMA logging: each sync reports exactly the pages the DMA engine wrote, the final sync after the devices stopped; logging stops at the end', async () => {
    const { g, host, vm } = await sourceVm('sim:64KiB');
    const dst = incoming('sim:64KiB', host);
    const mig = await vm.migrate(listener.uri);
    const logging = DmaLogging.of(g.d.device);
    expect(logging.active?.ranges).toEqual([{ iova: LOW, length: BigInt(RAM) }, { iova: HIGH, length: BigInt(RAM) }]);
    const syncs: DirtySync[] = [];
    const dirtyInProgress: Array<number | undefined> = [];
    mig.on('dirty', (s) => syncs.push(s));
    mig.on('iteration', (i) => dirtyInProgress.push(i.dirtyPages));

    dma(g, LOW + 3n * BigInt(PAGE), 3 * PAGE - 100); // pages 3, 4, 5 of the low range (a partial page counts)
    await mig.iterate();
    expect(pagesOf(syncs[0])).toEqual(['0:3', '0:4', '0:5']);
    expect(syncs[0].devices[0]).toMatchObject({ method: 'device', allDirty: false, pages: 3 });
    expect(host.memory.regions()[0].buffer.readUInt32LE(3 * PAGE)).toBe(0x5a5a5a5a); // really written
    await mig.iterate();
    expect(pagesOf(syncs[1])).toEqual([]); // read-and-clear: nothing new
    while (!mig.pending().ackReceived) await mig.iterate();
    dma(g, HIGH + 7n * BigInt(PAGE), 8);
    const result = await mig.switchover();
    expect(syncs.length).toBe(result.iterations + 1);
    const final = syncs[syncs.length - 1];
    expect(final.final).toBe(true);
    expect(pagesOf(final)).toEqual(['1:7']);
    expect(dirtyInProgress.slice(0, 2)).toEqual([3, 0]);
    expect(result.dirty.devices).toEqual([{ device: 'a', method: 'device', available: 'device', ranges: 2, pageSize: PAGE }]);
    expect(result.dirty.pagesPerSync).toEqual(syncs.map((s) => s.pages));
    expect(result.dirty.pagesPerSync[result.dirty.pagesPerSync.length - 1]).toBe(1);
    expect(logging.active).toBeUndefined();
    await dst;
  });

  it('the driver chooses the page size: bitmaps come at 64 KiB, as START handed back', async () => {
    const { g, host, vm } = await sourceVm('sim:64KiB:dirtypage=64KiB');
    const dst = incoming('sim:64KiB:dirtypage=64KiB', host);
    const mig = await vm.migrate(listener.uri);
    dma(g, LOW + 0x1_1000n, 16);
    const { dirty } = await mig.iterate();
    expect(dirty!.devices[0].bitmaps.map((b) => b.pageSize)).toEqual([65536, 65536]);
    expect(pagesOf(dirty!)).toEqual(['0:1']);
    const r = await mig.run();
    expect(r.dirty.devices[0].pageSize).toBe(65536);
    await dst;
  });

  it('IOMMU dirty tracking for a device without DMA logging: the same pages, by the host IOMMU', async () => {
    const { g, host, vm } = await sourceVm('sim:64KiB:dirty=off', {}, { iommuDirtyTracking: 'on' });
    expect(vm.planDirtyTracking().devices[0]).toMatchObject({ method: 'iommu', available: 'iommu' });
    const dst = incoming('sim:64KiB:dirty=off', host);
    const mig = await vm.migrate(listener.uri);
    expect(g.d.device.iommu.dirty!.enabled).toBe(true);
    dma(g, HIGH + 2n * BigInt(PAGE), 2 * PAGE);
    const { dirty } = await mig.iterate();
    expect(dirty!.devices[0].method).toBe('iommu');
    expect(pagesOf(dirty!)).toEqual(['1:2', '1:3']);
    const r = await mig.run();
    expect(r.dirty.devices[0].method).toBe('iommu');
    expect(g.d.device.iommu.dirty!.enabled).toBe(false);
    await dst;
  });

  it("no tracking at all: 'all-dirty' (default) reports all DMA memory at every sync; 'block' refuses before anything is touched", async () => {
    const { host, vm } = await sourceVm('sim:64KiB:dirty=off');
    const dst = incoming('sim:64KiB:dirty=off', host);
    const mig = await vm.migrate(listener.uri);
    const { dirty } = await mig.iterate();
    expect(dirty!.devices[0]).toMatchObject({ method: 'none', allDirty: true, pages: (2 * RAM) / PAGE });
    await mig.run();
    await dst;

    await newListener();
    const blocked = await sourceVm('sim:64KiB:dirty=off', { dirtyTracking: { untracked: 'block' } });
    const seen: Blocker[] = [];
    blocked.vm.on('blocker', (b) => seen.push(b));
    expect(blocked.vm.blockers()).toEqual([]); // a snapshot needs no tracking
    const e = await rejection(blocked.vm.migrate(listener.uri));
    expect(e.code).toBe('EVFIO_NO_DIRTY_TRACKING');
    expect(e.message).toMatch(/no DMA logging/);
    expect(seen.map((b) => b.code)).toEqual(['EVFIO_NO_DIRTY_TRACKING']);
    expect(e.deviceState).toEqual([{ device: 'a', state: 'RUNNING', touched: false, reset: false }]);
  });

  it("a failed report: 'all-dirty' counts the range dirty and says why; 'fail' cancels the migration, the source runs on", async () => {
    const a = await sourceVm('sim:64KiB:dirtyfail=1');
    const dst = incoming('sim:64KiB:dirtyfail=1', a.host);
    const mig = await a.vm.migrate(listener.uri);
    const { dirty } = await mig.iterate();
    expect(dirty!.devices[0]).toMatchObject({ method: 'device', allDirty: true, pages: (2 * RAM) / PAGE });
    expect(dirty!.devices[0].errors.map((x) => x.code)).toEqual(['EIO', 'EIO']);
    await mig.run();
    await dst;

    await newListener();
    const b = await sourceVm('sim:64KiB:dirtyfail=1', { dirtyTracking: { onReportError: 'fail' } });
    const dst2 = incoming('sim:64KiB:dirtyfail=1', b.host);
    const mig2 = await b.vm.migrate(listener.uri);
    const e = await rejection(mig2.iterate());
    expect(e.code).toBe('EIO');
    expect(e.step).toBe('migrate:dirty-sync');
    expect(migStateName(simOf(env, b.g.d).state)).toBe('RUNNING');
    expect(b.g.scratch(32)).toEqual(SECRET);
    expect(DmaLogging.of(b.g.d.device).active).toBeUndefined();
    const d2 = await rejection(dst2);
    expect(d2.code).toBe('EVFIO_PEER_FAILED');
    expect(d2.message).toMatch(/EIO/);
  });

  it('a vIOMMU with device DMA logging blocks by default; IOMMU dirty tracking is allowed with one', async () => {
    const { g, vm } = await sourceVm('sim:64KiB', {}, {}, true);
    const e = await rejection(vm.migrate(listener.uri));
    expect(e.code).toBe('EVFIO_VIOMMU');
    expect(e.message).toMatch(/vIOMMU/);
    expect(vm.blockers({ live: true }).map((b) => b.code)).toEqual(['EVFIO_VIOMMU']);
    expect(migStateName(simOf(env, g.d).state)).toBe('RUNNING');
    expect(DmaLogging.of(g.d.device).active).toBeUndefined();

    const ok = await sourceVm('sim:64KiB:dirty=off', {}, { iommuDirtyTracking: 'on' }, true);
    expect(ok.vm.blockers({ live: true })).toEqual([]);
  });

  it("viommu 'relaxed': a warning at setup; refused while the guest holds mappings; a mapping during the migration cancels it, the source runs on with its state", async () => {
    const opts: CoordinatorOptions = { dirtyTracking: { viommu: 'relaxed' } };
    const held = await sourceVm('sim:64KiB', opts, {}, true);
    held.host.viommu!.map(0x8000_0000n, 0x1000n);
    const dstHeld = incoming('sim:64KiB', held.host);
    const e1 = await rejection(held.vm.migrate(listener.uri));
    expect(e1.code).toBe('EVFIO_VIOMMU');
    expect(e1.message).toMatch(/cannot start.*1 vIOMMU DMA mapping/);
    expect(migStateName(simOf(env, held.g.d).state)).toBe('RUNNING');
    expect(DmaLogging.of(held.g.d.device).active).toBeUndefined();
    await rejection(dstHeld);

    await newListener();
    const { g, host, vm } = await sourceVm('sim:64KiB', opts, {}, true);
    const warnings: string[] = [];
    vm.on('warning', (w) => warnings.push(w.code));
    const dst = incoming('sim:64KiB', host);
    const mig = await vm.migrate(listener.uri);
    expect(warnings).toEqual(['EVFIO_VIOMMU']);
    expect(mig.warnings.map((w) => w.code)).toEqual(['EVFIO_VIOMMU']);
    await mig.iterate();
    host.viommu!.map(0x8000_0000n, 0x2000n);
    const e2 = await rejection(mig.iterate());
    expect(e2.code).toBe('EVFIO_VIOMMU');
    expect(e2.message).toMatch(/during the migration/);
    expect(e2.deviceState).toEqual([{ device: 'a', state: 'RUNNING', touched: true, reset: false }]);
    expect(mig.state).toBe('cancelled');
    expect(migStateName(simOf(env, g.d).state)).toBe('RUNNING');
    expect(g.scratch(32)).toEqual(SECRET);
    expect(DmaLogging.of(g.d.device).active).toBeUndefined();
    const d = await rejection(dst);
    expect(d.code).toBe('EVFIO_PEER_FAILED');
    expect(d.message).toMatch(/vIOMMU DMA mapping/);
  });

  it('a device with no guest memory mapped has nothing to track: no bitmaps, no blocker even with "block"', () => {
    const dev = openDevice('sim:64KiB:dirty=off', { binding: env.sim });
    env.cleanup.push(() => dev.close());
    const engine = new MigrationEngine([new BareDevice(dev, 'bare')], { dirtyTracking: { untracked: 'block' } });
    expect(engine.blockers({ live: true })).toEqual([]);
    expect(engine.planDirtyTracking().devices).toEqual([expect.objectContaining({ device: 'bare', method: 'none', available: 'none', ranges: [] })]);
  });

  it('many RAM regions collapse to QEMU\'s ranges; bad options are usage errors', async () => {
    const { vm, host } = await sourceVm('sim:64KiB');
    for (let i = 0; i < 4; i++) host.memory.add(0x2000_0000n + BigInt(i) * 0x20_0000n, PAGE);
    await (vm.devices[0]).mapGuestMemory();
    const plan = vm.planDirtyTracking();
    // Below 4 GiB one range from the lowest to the highest region, above 4 GiB another.
    expect(plan.devices[0].ranges).toEqual([{ iova: 0n, length: 0x2060_1000n }, { iova: HIGH, length: BigInt(RAM) }]);
    expect(() => new MigrationCoordinator([...vm.devices], { dirtyTracking: { pageSize: 1000 } }).planDirtyTracking()).toThrow(/power of two/);
  });
});

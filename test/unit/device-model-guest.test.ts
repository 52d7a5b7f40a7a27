/**
 * What a guest can do to the device model on a simulated device, and what it must not be able
 * to do (issue 8, section 6):
 *  - the BAR allocations follow the device, not the guest's BAR writes (6.1);
 *  - a masked MSI-X vector keeps a trigger in the kernel: what fires while it is masked shows in
 *    the PBA and is delivered on unmask; only the vector that changed is touched (6.2);
 *  - no guest access throws out of the config-space or BAR handlers: overlapping BARs are legal,
 *    and every failure is reported as a 'guest-error' event instead (6.5).
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { VfioError } from '../../src/base/errors';
import type { GuestError } from '../../src/model/guest-error';
import { ReferenceBus } from '../../src/model/host/reference';
import type { BarAccessHandler, BarMapping } from '../../src/model/host/types';
import type { VfioPciDevice } from '../../src/model/vfio-pci';
import { PCI_COMMAND, PCI_COMMAND_INTX_DISABLE } from '../../src/model/pci/regs';
import { BAR0, Guest, MEM_MASTER, SECRET, attach, bootedSource, destination, dispose, file, makeEnv, newHost, openSim, simOf, snapshotVm, type Env } from '../helpers/device-model';
import { MigrationCoordinator } from '../../src/vm/coordinator';
import * as uapi from '../../src/kernel/uapi/vfio';
import type { IrqSet } from '../../src/kernel/uapi/structs';

let env: Env;
beforeEach(() => {
  env = makeEnv();
});
afterEach(() => dispose(env));

describe('BAR allocations', () => {
  it('detach(true) frees what attach allocated, even after the guest moved the BAR; the same id attaches again', () => {
    const host = newHost(env);
    const d = attach(env, openSim(env, 'sim:4096'), host, { id: 'nic0' });
    const assigned = host.allocator.export();
    expect(assigned).toEqual([{ space: 'mmio', address: 0xe000_0000n, size: 4096, owner: 'nic0/bar0' }]);

    // The guest moves BAR0 elsewhere and turns decode on: the shadow and the bus say 0xd0000000.
    d.configWrite(0x10, 4, 0xd000_0000);
    new Guest(d, host).command(MEM_MASTER);
    expect(host.bus.find('nic0', 0)?.address).toBe(0xd000_0000n);

    d.detach(true);
    expect(host.allocator.export()).toEqual([]);
    expect(host.bus.mappings()).toEqual([]);

    // Before the fix: "nic0/bar0 already has mmio 0xe0000000+4096: allocated twice".
    const again = attach(env, openSim(env, 'sim:4096'), host, { id: 'nic0' });
    const [record] = host.allocator.export();
    expect(record).toMatchObject({ space: 'mmio', size: 4096, owner: 'nic0/bar0' });
    expect(again.configRead(0x10, 4)).toBe(Number(record.address));
  });

  it('detach(true) twice frees once; a destination attached without assignBars frees nothing it did not allocate', () => {
    const host = newHost(env);
    const d = attach(env, openSim(env, 'sim:4096'), host, { id: 'nic0' });
    const other = attach(env, openSim(env, 'sim:4096'), host, { id: 'nic1' });
    d.detach(true);
    d.detach(true);
    expect(host.allocator.export().map((a) => a.owner)).toEqual(['nic1/bar0']);
    const dst = attach(env, openSim(env, 'sim:4096'), host, { id: 'nic2', assignBars: false });
    dst.detach(true);
    expect(host.allocator.export().map((a) => a.owner)).toEqual(['nic1/bar0']);
    other.detach(true);
    expect(host.allocator.export()).toEqual([]);
  });
});

/** Every 'guest-error' the device emits. */
function errorsOf(d: VfioPciDevice): GuestError[] {
  const seen: GuestError[] = [];
  d.on('guest-error', (e) => seen.push(e));
  return seen;
}

/** A register of the device itself, bypassing the bus. */
const deviceReg = (d: VfioPciDevice, offset: number): number => d.device.readRegion(0, offset, 4).readUInt32LE(0);

describe('overlapping BARs (legal PCI: the guest may program them)', () => {
  it("a BAR moved onto another device's BAR does not throw: both are on the bus, the later wins, the earlier shows again when it leaves", () => {
    const host = newHost(env);
    const a = attach(env, openSim(env, 'sim:4096'), host, { id: 'nic0' });
    const b = attach(env, openSim(env, 'sim:4096'), host, { id: 'nic1' });
    const errors = [...[a, b].map(errorsOf)];
    new Guest(a, host).command(MEM_MASTER);
    new Guest(b, host).command(MEM_MASTER);
    const aAt = host.bus.find('nic0', 0)!.address;
    expect(host.bus.find('nic1', 0)!.address).toBe(aAt + 0x1000n);

    // Before the fix: EVFIO_ADDRESS_IN_USE out of configWrite, and nic1's BAR0 on the bus nowhere.
    b.configWrite(0x10, 4, Number(aAt));
    expect(b.configRead(0x10, 4)).toBe(Number(aAt));
    expect(b.mappedBars).toEqual([{ bar: 0, space: 'mmio', address: aAt, size: 4096 }]);
    expect(host.bus.overlaps().map(([x, y]) => [x.device, y.device])).toEqual([['nic0', 'nic1']]);
    host.bus.write('mmio', aAt + BigInt(BAR0.CONTROL), 4, 0x1111);
    expect([deviceReg(a, BAR0.CONTROL), deviceReg(b, BAR0.CONTROL)]).toEqual([0, 0x1111]);

    // nic1 moves on: nic0 answers at its address again.
    b.configWrite(0x10, 4, Number(aAt + 0x4000n));
    expect(host.bus.overlaps()).toEqual([]);
    host.bus.write('mmio', aAt + BigInt(BAR0.CONTROL), 4, 0x2222);
    expect([deviceReg(a, BAR0.CONTROL), deviceReg(b, BAR0.CONTROL)]).toEqual([0x2222, 0x1111]);
    expect(errors.flat()).toEqual([]);
  });

  it("a host bus that refuses overlaps: the refusal is a 'guest-error' (bus), the shadow keeps the guest's address, the BAR maps once moved to a free range", () => {
    const host = newHost(env);
    const strict = new ReferenceBus();
    const refusing = {
      map(m: BarMapping, h: BarAccessHandler): void {
        const o = strict.mappings().find((x) => x.space === m.space && m.address < x.address + BigInt(x.size) && x.address < m.address + BigInt(m.size));
        if (o) throw new Error(`${m.device} BAR${m.bar} overlaps ${o.device}`);
        strict.map(m, h);
      },
      unmap: (device: string, bar: number) => strict.unmap(device, bar),
    };
    const strictHost = { bus: refusing, allocator: host.allocator, interrupts: host.interrupts };
    const a = attach(env, openSim(env, 'sim:4096'), strictHost, { id: 'nic0' });
    const b = attach(env, openSim(env, 'sim:4096'), strictHost, { id: 'nic1' });
    const errors = errorsOf(b);
    a.configWrite(0x04, 2, MEM_MASTER);
    b.configWrite(0x04, 2, MEM_MASTER);
    const aAt = strict.find('nic0', 0)!.address;

    b.configWrite(0x10, 4, Number(aAt));
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatchObject({ device: 'nic1', access: 'config-write', offset: 0x10, size: 4, value: Number(aAt), step: 'bus' });
    expect(errors[0].error.message).toBe('nic1 BAR0 overlaps nic0');
    expect(b.configRead(0x10, 4)).toBe(Number(aAt));
    expect(b.mappedBars).toEqual([]);
    expect(strict.find('nic1', 0)).toBeUndefined();

    b.configWrite(0x10, 4, Number(aAt + 0x8000n));
    expect(errors).toHaveLength(1);
    expect(strict.find('nic1', 0)?.address).toBe(aAt + 0x8000n);
  });
});

describe("guest accesses never throw: failures are 'guest-error' events", () => {
  it('invalid config accesses: a read gives all-ones, a write is dropped', () => {
    const host = newHost(env);
    const d = attach(env, openSim(env, 'sim:4096'), host, { id: 'nic0' });
    const errors = errorsOf(d);
    const before = Buffer.from(d.config.bytes);
    expect(d.configRead(0x03, 4)).toBe(0xffff_ffff); // crosses a dword
    expect(d.configRead(0x1000, 2)).toBe(0xffff); // past the end
    expect(d.configRead(0x10, 3)).toBe(0xff_ffff); // 3 bytes
    d.configWrite(0x0e, 4, 0xffff_ffff);
    d.configWrite(-4, 4, 0);
    d.configWrite(0x10, 8, 0);
    expect(d.config.bytes.equals(before)).toBe(true);
    expect(errors.map((e) => [e.access, e.offset, e.size, e.step, (e.error as VfioError).code])).toEqual([
      ['config-read', 0x03, 4, 'access', 'EVFIO_CONFIG_ACCESS'],
      ['config-read', 0x1000, 2, 'access', 'EVFIO_CONFIG_ACCESS'],
      ['config-read', 0x10, 3, 'access', 'EVFIO_CONFIG_ACCESS'],
      ['config-write', 0x0e, 4, 'access', 'EVFIO_CONFIG_ACCESS'],
      ['config-write', -4, 4, 'access', 'EVFIO_CONFIG_ACCESS'],
      ['config-write', 0x10, 8, 'access', 'EVFIO_CONFIG_ACCESS'],
    ]);
  });

  it("the device's pread/pwrite failing: a read gives all-ones for the device's bytes, the shadow keeps the write", () => {
    const host = newHost(env);
    const d = attach(env, openSim(env, 'sim:4096'), host, { id: 'nic0' });
    const errors = errorsOf(d);
    const sim = simOf(env, d);
    sim.injectError('pread', 'EIO');
    expect(d.configRead(0x00, 4)).toBe(0xffff_ffff); // vendor/device come from the device
    expect(d.configRead(0x10, 4)).toBe(0xe000_0000); // BAR0 is emulated: no device read
    sim.injectError('pwrite', 'ENODEV');
    d.configWrite(0x04, 2, MEM_MASTER);
    expect(d.config.command).toBe(MEM_MASTER);
    expect(d.mappedBars).toHaveLength(1); // BARs follow the shadow all the same
    expect(errors.map((e) => [e.access, e.step, (e.error as VfioError).code])).toEqual([
      ['config-read', 'device', 'EIO'],
      ['config-write', 'device', 'ENODEV'],
    ]);
  });

  it('SET_IRQS failing when the guest enables MSI-X: reported, nothing armed; the next change arms', async () => {
    const host = newHost(env);
    const d = attach(env, openSim(env, 'sim:4096'), host, { id: 'nic0' });
    const g = new Guest(d, host);
    const errors = errorsOf(d);
    g.command(MEM_MASTER | PCI_COMMAND_INTX_DISABLE);
    expect(d.interrupts.mode).toBe('none');
    simOf(env, d).injectError('SET_IRQS', 'ENOSPC');
    g.enableMsix();
    expect(errors.map((e) => [e.access, e.step, (e.error as VfioError).code])).toEqual([['config-write', 'interrupts', 'ENOSPC']]);
    expect(d.interrupts.mode).toBe('none');
    expect(simOf(env, d).irqs().mode).toBe('none');
    expect(d.config.msix()!.enabled).toBe(true);
    g.programVector(0); // a table write through the bus: MSI-X is armed now
    expect(d.interrupts.mode).toBe('msix');
    g.ring(0);
    expect(await g.wait(0)).toBe(1);
    expect(errors).toHaveLength(1);
  });

  it('a disable the kernel refuses leaves the index armed (the model says so); the same write again retries', () => {
    const host = newHost(env);
    const d = attach(env, openSim(env, 'sim:4096'), host, { id: 'nic0' });
    const errors = errorsOf(d);
    d.configWrite(PCI_COMMAND, 2, MEM_MASTER);
    expect(d.interrupts.mode).toBe('intx');
    simOf(env, d).injectError('SET_IRQS', 'EIO');
    d.configWrite(PCI_COMMAND, 2, MEM_MASTER | PCI_COMMAND_INTX_DISABLE);
    expect(errors.map((e) => [e.step, (e.error as VfioError).code])).toEqual([['interrupts', 'EIO']]);
    expect([d.interrupts.mode, simOf(env, d).irqs().mode]).toEqual(['intx', 'intx']);
    d.configWrite(PCI_COMMAND, 2, MEM_MASTER | PCI_COMMAND_INTX_DISABLE); // no change in the shadow, but the wiring is stale
    expect([d.interrupts.mode, simOf(env, d).irqs().mode]).toEqual(['none', 'none']);
    expect(errors).toHaveLength(1);
  });

  it('BAR accesses: a bad MSI-X table or PBA access, a region access the device fails; a listener that throws does not escape', () => {
    const host = newHost(env);
    const d = attach(env, openSim(env, 'sim:4096'), host, { id: 'nic0' });
    const g = new Guest(d, host);
    const errors = errorsOf(d);
    d.on('guest-error', () => {
      throw new Error('a VMM listener that throws');
    });
    g.command(MEM_MASTER);
    const table = BigInt(BAR0.MSIX_TABLE);
    expect(host.bus.read('mmio', g.bar0 + table, 2)).toBe(0xffffn); // 2-byte table read
    host.bus.write('mmio', g.bar0 + table + 12n, 1, 0); // 1-byte write of vector control: dropped
    expect(d.config.msix() && g.read32(BAR0.MSIX_TABLE + 12)).toBe(1); // still masked
    host.bus.write('mmio', g.bar0 + BigInt(BAR0.MSIX_PBA), 4, 1); // PBA is read-only: dropped silently
    expect(host.bus.read('mmio', g.bar0 + BigInt(BAR0.MSIX_PBA) + 2n, 2)).toBe(0xffffn); // 2-byte PBA read
    simOf(env, d).injectError('pread', 'EIO');
    expect(g.read32(BAR0.ID)).toBe(0xffff_ffff);
    simOf(env, d).injectError('pwrite', 'EIO');
    g.write32(BAR0.CONTROL, 7);
    expect(errors.map((e) => [e.access, e.bar, e.offset, e.size, e.value, e.step, (e.error as VfioError).code])).toEqual([
      ['bar-read', 0, BAR0.MSIX_TABLE, 2, undefined, 'access', 'EVFIO_MSIX_ACCESS'],
      ['bar-write', 0, BAR0.MSIX_TABLE + 12, 1, 0, 'access', 'EVFIO_MSIX_ACCESS'],
      ['bar-read', 0, BAR0.MSIX_PBA + 2, 2, undefined, 'access', 'EVFIO_MSIX_ACCESS'],
      ['bar-read', 0, BAR0.ID, 4, undefined, 'device', 'EIO'],
      ['bar-write', 0, BAR0.CONTROL, 4, 7, 'device', 'EIO'],
    ]);
  });
});

/** The SET_IRQS calls the device serves from now on, as [index, start, count, data type] (its 'set-irqs' events). */
function setIrqsCalls(d: VfioPciDevice): () => Array<[number, number, number, string]> {
  const calls: Array<[number, number, number, string]> = [];
  const sim = simOf(env, d);
  const onSet = (set: IrqSet): void => void calls.push([set.index, set.start, set.count, set.flags & uapi.VFIO_IRQ_SET_DATA_NONE ? 'none' : 'eventfd']);
  sim.on('set-irqs', onSet);
  env.cleanup.push(() => sim.off('set-irqs', onSet));
  return () => [...calls];
}

const MSIX = uapi.VFIO_PCI_MSIX_IRQ_INDEX;

describe('MSI-X masking (QEMU vfio_msix_vector_release: keep a trigger, use the PBA)', () => {
  it('masking the top vector: the range stays, the vector keeps a trigger; what fires while masked sets its PBA bit and arrives on unmask, once', async () => {
    const g = bootedSource(env, 'sim:4096', { vectors: [0, 1, 2, 3] });
    const sim = simOf(env, g.d);
    expect(g.d.interrupts).toEqual({ mode: 'msix', vectors: 4 });
    const live = sim.irqs().vectors;
    const calls = setIrqsCalls(g.d);

    g.maskVector(3, true);
    // Before the fix: SET_IRQS [0, 3) re-issued, vector 3 left armed on the route fd the host had just closed.
    expect(calls()).toEqual([[MSIX, 3, 1, 'eventfd']]);
    expect(g.d.interrupts).toEqual({ mode: 'msix', vectors: 4 });
    const parked = sim.irqs().vectors;
    expect(parked.slice(0, 3)).toEqual(live.slice(0, 3));
    expect(parked[3]).not.toBeNull();
    expect(parked[3]).not.toBe(live[3]);

    g.ring(3);
    g.ring(3);
    expect(g.take(3)).toBe(0);
    expect(g.pba()).toBe(0b1000n);
    g.ring(1);
    expect(await g.wait(1)).toBe(1);

    g.maskVector(3, false);
    expect(calls()).toEqual([[MSIX, 3, 1, 'eventfd'], [MSIX, 3, 1, 'eventfd']]);
    expect(await g.wait(3)).toBe(1); // the two interrupts while masked: one pending bit, one delivery
    expect(g.pba()).toBe(0n);
    g.ring(3);
    expect(await g.wait(3)).toBe(1);
    expect(calls().filter(([, , , t]) => t === 'none')).toEqual([]);
  });

  it('the function mask (Message Control bit 14) masks every vector the same way, vector by vector', async () => {
    const g = bootedSource(env, 'sim:4096', { vectors: [0, 1, 2] });
    const calls = setIrqsCalls(g.d);
    g.functionMask(true);
    expect(calls()).toEqual([[MSIX, 0, 1, 'eventfd'], [MSIX, 1, 1, 'eventfd'], [MSIX, 2, 1, 'eventfd']]);
    for (const v of [0, 2]) g.ring(v);
    expect([g.take(0), g.take(1), g.take(2)]).toEqual([0, 0, 0]);
    expect(g.pba()).toBe(0b101n);
    g.maskVector(1, true); // masked twice over: nothing to do in the kernel
    expect(calls()).toHaveLength(3);

    g.functionMask(false);
    expect(calls().slice(3)).toEqual([[MSIX, 0, 1, 'eventfd'], [MSIX, 2, 1, 'eventfd']]);
    expect([await g.wait(0), await g.wait(2)]).toEqual([1, 1]);
    expect(g.take(1)).toBe(0);
    expect(g.pba()).toBe(0n);
    g.maskVector(1, false);
    g.ring(1);
    expect(await g.wait(1)).toBe(1);
  });

  it('only the vector that changed is touched; a new message on a live vector reaches the router without SET_IRQS when its fd stays', () => {
    const g = bootedSource(env, 'sim:4096', { vectors: [0, 1, 2, 3] });
    const calls = setIrqsCalls(g.d);
    g.maskVector(1, true);
    g.programVector(1, { address: 0xfee0_2000n, data: 0x77 });
    expect(calls()).toEqual([[MSIX, 1, 1, 'eventfd'], [MSIX, 1, 1, 'eventfd']]);
    expect(g.host.interrupts.message('nic0', 1)).toEqual({ address: 0xfee0_2000n, data: 0x77 });
    g.programVector(2, { address: 0xfee0_3000n, data: 0x99 }); // still unmasked
    expect(calls()).toHaveLength(2);
    expect(g.host.interrupts.message('nic0', 2)).toEqual({ address: 0xfee0_3000n, data: 0x99 });
  });

  it('NORESIZE (static MSI-X): a vector unmasked past the range grows it with one disable + enable; the masked ones between get a trigger', async () => {
    const g = bootedSource(env, 'sim:4096', { vectors: [0] });
    const calls = setIrqsCalls(g.d);
    g.programVector(5);
    expect(calls()).toEqual([[MSIX, 0, 0, 'none'], [MSIX, 0, 6, 'eventfd']]);
    expect(g.d.interrupts).toEqual({ mode: 'msix', vectors: 6 });
    const fds = simOf(env, g.d).irqs().vectors;
    expect(fds.every((fd) => fd !== null)).toBe(true);
    g.ring(3); // masked, inside the range: pending
    expect(g.pba()).toBe(0b1000n);
    for (const v of [5, 0]) {
      g.ring(v);
      expect(await g.wait(v)).toBe(1);
    }
  });

  it('dynamic MSI-X (no NORESIZE): a vector unmasked past the range is set alone; the vectors between stay without a trigger', async () => {
    const g = bootedSource(env, 'sim:4096:msixalloc=dynamic', { vectors: [0] });
    const calls = setIrqsCalls(g.d);
    const sim = simOf(env, g.d);
    g.programVector(5);
    expect(calls()).toEqual([[MSIX, 5, 1, 'eventfd']]);
    expect(g.d.interrupts).toEqual({ mode: 'msix', vectors: 6 });
    expect(sim.irqs().vectors.map((fd) => fd !== null)).toEqual([true, false, false, false, false, true]);
    g.ring(5);
    expect(await g.wait(5)).toBe(1);
    g.maskVector(5, true);
    g.ring(5);
    expect(g.pba()).toBe(0b10_0000n);
    g.maskVector(3, true); // never armed: nothing to do
    expect(calls()).toEqual([[MSIX, 5, 1, 'eventfd'], [MSIX, 5, 1, 'eventfd']]);
    g.maskVector(5, false);
    expect(await g.wait(5)).toBe(1);
  });

  it('a pending interrupt travels in the snapshot: the destination delivers it when the guest unmasks the vector', async () => {
    const src = bootedSource(env, 'sim:64KiB', { vectors: [0, 1] });
    src.maskVector(1, true);
    src.ring(1);
    const f = file(env);
    await snapshotVm([src.d], f);
    const { host, devices: [dst] } = destination(env, src.host, [{ spec: 'sim:64KiB' }]);
    const vm = new MigrationCoordinator([dst]);
    await vm.restore(f);
    await vm.resume();
    const g = new Guest(dst, host);
    expect(g.scratch(SECRET.length)).toEqual(SECRET);
    expect(g.pba()).toBe(0b10n);
    expect(g.take(1)).toBe(0);
    g.maskVector(1, false);
    expect(await g.wait(1)).toBe(1);
    expect(g.pba()).toBe(0n);
  });

  it('disabling MSI-X releases the routes and closes the parks; INTx comes back', () => {
    const g = bootedSource(env, 'sim:4096', { vectors: [0, 1] });
    g.maskVector(1, true);
    const cap = g.d.config.msix()!.offset;
    g.d.configWrite(cap + 2, 2, 0);
    expect(g.d.interrupts).toEqual({ mode: 'intx', vectors: 1 });
    expect(simOf(env, g.d).irqs().mode).toBe('intx');
    expect(g.host.interrupts.message('nic0', 0)).toBeUndefined();
  });
});

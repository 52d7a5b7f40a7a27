/**
 * The vfio-pci device model (src/device/vfio-pci.ts) on simulated devices that break the way
 * real hardware does (issue 3): the guest's flow on a source, snapshot/restore/resume into a
 * fresh destination, and one test per restore rule showing what goes wrong without it:
 *  - PCI_COMMAND pushed back to the device (a `master=required` device wedges its queue);
 *  - interrupts re-armed with SET_IRQS (a fresh device has none: silence);
 *  - BARs placed from the snapshot, never allocated again (the restored allocator refuses);
 *  - config space compared under the destination's own masks (VSC body may differ, its header and the ids may not).
 * The coordinator and failure recovery are in device-model-coordinator.test.ts, the fd count in
 * device-model-fds.test.ts, the sim options themselves in test/sim/device-model-support.test.ts.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BAR0_ID_VALUE, CAP_OFFSETS } from '../../src/sim';
import { MigrationCoordinator } from '../../src/vm/coordinator';
import { VfioPciDevice } from '../../src/model/vfio-pci';
import { ReferenceAllocator, type ReferenceHost } from '../../src/model/host/reference';
import type { AllocationRecord } from '../../src/model/host/types';
import type { ConfigMismatchError } from '../../src/model/pci/compare';
import { ConfigSpace } from '../../src/model/pci/config-space';
import { decodeModelState, encodeModelState } from '../../src/model/model-state';
import { SnapshotWriter } from '../../src/snapshot/writer';
import { SnapshotFileSink } from '../../src/snapshot/file-stream';
import type { StateSink } from '../../src/engine/stream';
import type { DeviceRecord } from '../../src/model/migratable';
import type { ModelState } from '../../src/model/model-state';
import { MsixTable } from '../../src/model/pci/msix-table';
import { MigState } from '../../src/kernel/uapi/vfio';
import {
  BAR0, Guest, MEM_MASTER, RecordingAllocator, SECRET, attach, bootedSource, destination, dispose, file, lossyBinding, makeEnv, newHost, openSim,
  rawCommand, simOf, snapshotVm, type Env,
} from '../helpers/device-model';
import { rejection } from '../helpers/errors';

const { RUNNING, RESUMING, STOP } = MigState;
/** Long enough for an interrupt that was raised synchronously to show; used where none must come. */
const NONE_MS = 100;

let env: Env;
beforeEach(() => {
  env = makeEnv();
});
afterEach(() => dispose(env));

/** The destination device was not touched: RUNNING, no migration arc or session, nothing on the bus or armed. */
function expectUntouched(d: VfioPciDevice, host: ReferenceHost): void {
  const s = simOf(env, d);
  expect(s.state).toBe(RUNNING);
  expect(s.arcLog).toEqual([]);
  expect(s.session()).toBeUndefined();
  expect(s.irqs().mode).toBe('none');
  expect(rawCommand(d)).toBe(0);
  expect(host.bus.mappings()).toEqual([]);
  expect(d.mappedBars).toEqual([]);
}

describe('guest flow on a source device', () => {
  it('attach assigns BAR0 from the allocator; sizing, COMMAND, MSI-X through the bus; the doorbell reaches the eventfd', async () => {
    const allocator = new RecordingAllocator();
    const host = newHost(env, allocator);
    const d = attach(env, openSim(env, 'sim:4096'), host, { id: 'nic0' });
    const sim = simOf(env, d);

    // Firmware's part: one BAR, 4 KiB of MMIO, at the allocator's first address, in the shadow.
    expect(allocator.calls.map(({ space, size, owner }) => [space, size, owner])).toEqual([['mmio', 4096, 'nic0/bar0']]);
    const addr = (allocator.calls[0].record as AllocationRecord).address;
    expect(addr).toBe(0xe000_0000n);
    expect(d.configRead(0x10, 4)).toBe(Number(addr));
    expect(host.bus.mappings()).toEqual([]); // decode is off

    // The guest sizes BAR0 and puts the address back.
    d.configWrite(0x10, 4, 0xffff_ffff);
    expect(d.configRead(0x10, 4)).toBe(0xffff_f000);
    expect(host.bus.mappings()).toEqual([]);
    d.configWrite(0x10, 4, Number(addr));
    expect(d.configRead(0x10, 4)).toBe(Number(addr));

    // Memory decode + bus mastering: BAR0 goes on the bus; COMMAND reaches the device and the shadow.
    const g = new Guest(d, host);
    g.command(MEM_MASTER);
    expect(host.bus.mappings()).toEqual([{ device: 'nic0', bar: 0, space: 'mmio', address: addr, size: 4096 }]);
    expect(rawCommand(d)).toBe(MEM_MASTER);
    expect(d.config.command).toBe(MEM_MASTER);
    expect(d.configRead(0x04, 2)).toBe(MEM_MASTER);
    expect(g.read32(BAR0.ID)).toBe(BAR0_ID_VALUE);

    // MSI-X: enable in config, program vector 0 in the (emulated) table through the bus.
    g.enableMsix();
    g.programVector(0, { address: 0xfee0_1000n, data: 0x41 });
    expect(d.interrupts).toEqual({ mode: 'msix', vectors: 1 });
    expect(host.interrupts.message('nic0', 0)).toEqual({ address: 0xfee0_1000n, data: 0x41 });
    expect(sim.irqs().mode).toBe('msix');
    expect(g.read32(0x800 + 12)).toBe(0); // the table reads back unmasked

    g.ring(0);
    expect(await g.wait(0)).toBe(1);
    expect(g.read32(BAR0.IRQ_COUNT)).toBe(1);
  });

  it('a vector unmasked after MSI-X was armed with fewer vectors fires too (NORESIZE: disable, re-enable larger)', async () => {
    const g = bootedSource(env, 'sim:4096', { vectors: [0] });
    expect(g.d.interrupts).toEqual({ mode: 'msix', vectors: 1 });
    g.programVector(3);
    expect(g.d.interrupts).toEqual({ mode: 'msix', vectors: 4 });
    g.ring(3);
    expect(await g.wait(3)).toBe(1);
    g.ring(0);
    expect(await g.wait(0)).toBe(1);
  });

  it('a guest that clears the function mask after unmasking several vectors gets them all', async () => {
    const host = newHost(env);
    const d = attach(env, openSim(env, 'sim:4096'), host);
    const g = new Guest(d, host);
    g.command(MEM_MASTER);
    // Linux: enable with the function masked, program the table, then unmask the function.
    const cap = d.config.msix()!.offset;
    d.configWrite(cap + 2, 2, 0xc000);
    for (const v of [0, 1, 2]) g.programVector(v);
    d.configWrite(cap + 2, 2, 0x8000);
    expect(d.interrupts).toEqual({ mode: 'msix', vectors: 3 });
    for (const v of [2, 0, 1]) {
      g.ring(v);
      expect(await g.wait(v)).toBe(1);
    }
  });
});

describe('snapshot on the source, restore into a fresh destination, resume', () => {
  it('BARs at the same addresses, PCI_COMMAND on the device, the re-armed eventfd fires, registers and data round-trip', async () => {
    const src = bootedSource(env, 'sim:64KiB');
    const srcSim = simOf(env, src.d);
    src.ring(0);
    expect(await src.wait(0)).toBe(1);
    const f = file(env);
    const vmA = await snapshotVm([src.d], f);
    expect(srcSim.state).toBe(STOP);

    const { host, devices: [dst] } = destination(env, src.host, [{ spec: 'sim:64KiB' }]);
    const dstSim = simOf(env, dst);
    expect(rawCommand(dst)).toBe(0); // a fresh device: no decode, no bus mastering
    expect(dstSim.seed).not.toBe(srcSim.seed);

    const vmB = new MigrationCoordinator([dst]);
    const { devices } = await vmB.restore(f);
    expect(devices).toEqual([{ id: 'nic0', from: 'nic0', stateBytes: dstSim.streamLength }]);
    expect(dstSim.state).toBe(RESUMING);
    expect(host.bus.mappings()).toEqual(src.host.bus.mappings());
    expect(host.bus.find('nic0', 0)!.address).toBe(0xe000_0000n);
    expect(rawCommand(dst)).toBe(MEM_MASTER);
    expect(rawCommand(dst)).toBe(rawCommand(src.d));
    expect(dst.interrupts).toEqual({ mode: 'msix', vectors: 1 });
    expect(dstSim.irqs().mode).toBe('msix');

    await vmB.resume();
    expect(dstSim.state).toBe(RUNNING);
    expect(dstSim.seed).toBe(srcSim.seed);
    const g = new Guest(dst, host);
    expect(g.scratch(SECRET.length)).toEqual(SECRET);
    expect(g.read32(BAR0.CONTROL)).toBe(0xc0de_0001);
    expect(g.read32(BAR0.IRQ_COUNT)).toBe(1);
    expect(host.interrupts.message('nic0', 0)).toEqual(src.host.interrupts.message('nic0', 0));
    g.ring(0);
    expect(await g.wait(0)).toBe(1);
    expect(g.read32(BAR0.IRQ_COUNT)).toBe(2);

    // The source resumes where it was.
    await vmA.resume();
    src.ring(0);
    expect(await src.wait(0)).toBe(1);
    expect(src.read32(BAR0.IRQ_COUNT)).toBe(2);
  });
});

describe('a destination that wedges its command queue without bus mastering (master=required)', () => {
  async function restored(breakIt: boolean): Promise<{ g: Guest; dst: VfioPciDevice }> {
    const src = bootedSource(env, 'sim:64KiB');
    const f = file(env);
    await snapshotVm([src.d], f);
    // breakIt: a VMM that forgets PCI_COMMAND after the load (its COMMAND writes during the restore never reach the device).
    let restoring = true;
    const binding = breakIt ? lossyBinding(env, 'command', () => restoring) : env.sim;
    const { host, devices: [dst] } = destination(env, src.host, [{ spec: 'sim:64KiB:master=required' }], { binding });
    const vm = new MigrationCoordinator([dst]);
    await vm.restore(f);
    restoring = false;
    await vm.resume();
    return { g: new Guest(dst, host), dst };
  }

  it('with PCI_COMMAND pushed after the load, the doorbell completes and interrupts', async () => {
    const { g, dst } = await restored(false);
    expect(rawCommand(dst)).toBe(MEM_MASTER);
    g.ring(0);
    expect(await g.wait(0)).toBe(1);
    expect(g.read32(BAR0.IRQ_COUNT)).toBe(1);
    expect(g.read32(BAR0.QUEUE_PENDING)).toBe(0);
  });

  it('without it the device has COMMAND 0 (not in the migration stream) and the doorbell wedges: no interrupt, IRQ_COUNT stays', async () => {
    const { g, dst } = await restored(true);
    const sim = simOf(env, dst);
    expect(rawCommand(dst)).toBe(0);
    expect(dst.config.command).toBe(MEM_MASTER); // the guest believes it is on
    g.ring(0);
    expect(g.read32(BAR0.QUEUE_PENDING)).toBe(1);
    expect(g.read32(BAR0.IRQ_COUNT)).toBe(0);
    expect(await g.wait(0, NONE_MS)).toBe(0);
    expect(sim.irqs().delivered).toBe(0);
    // Wedged for good: setting MASTER afterwards does not unstick the queue.
    g.command(MEM_MASTER);
    expect(rawCommand(dst)).toBe(MEM_MASTER);
    g.ring(0);
    expect(g.read32(BAR0.QUEUE_PENDING)).toBe(2);
    expect(await g.wait(0, NONE_MS)).toBe(0);
  });
});

describe('a destination whose interrupts stay silent unless SET_IRQS is issued again', () => {
  async function restored(breakIt: boolean): Promise<{ g: Guest; dst: VfioPciDevice }> {
    const src = bootedSource(env, 'sim:64KiB');
    const f = file(env);
    await snapshotVm([src.d], f);
    // breakIt: a VMM that forgets to re-arm interrupts after the load (its SET_IRQS never reach the device).
    const binding = breakIt ? lossyBinding(env, 'set-irqs') : env.sim;
    const { host, devices: [dst] } = destination(env, src.host, [{ spec: 'sim:64KiB' }], { binding });
    const vm = new MigrationCoordinator([dst]);
    await vm.restore(f);
    await vm.resume();
    return { g: new Guest(dst, host), dst };
  }

  it('re-armed: the doorbell reaches the destination router eventfd', async () => {
    const { g, dst } = await restored(false);
    g.ring(0);
    expect(await g.wait(0)).toBe(1);
    expect(simOf(env, dst).irqs().delivered).toBe(1);
  });

  it('not re-armed: the device completes the doorbell but nothing is signalled', async () => {
    const { g, dst } = await restored(true);
    const sim = simOf(env, dst);
    expect(dst.config.msix()!.enabled).toBe(true); // the guest's MSI-X is on
    expect(sim.irqs().mode).toBe('none'); // the kernel has nothing
    g.ring(0);
    expect(g.read32(BAR0.IRQ_COUNT)).toBe(1);
    expect(sim.irqs().delivered).toBe(0);
    expect(await g.wait(0, NONE_MS)).toBe(0);
  });
});

describe('a host allocator that refuses to register a BAR twice', () => {
  it('attach with assignBars on the restored allocator throws EVFIO_ADDRESS_IN_USE', async () => {
    const src = bootedSource(env, 'sim:64KiB');
    const host = newHost(env, ReferenceAllocator.from(src.host.allocator.export()));
    const dev = openSim(env, 'sim:64KiB');
    const err = await rejection(() => VfioPciDevice.attach(dev, host, { id: 'nic0' }));
    expect(err.code).toBe('EVFIO_ADDRESS_IN_USE');
    expect(err.message).toMatch(/nic0\/bar0 already has mmio 0xe0000000/);
    expect(host.bus.mappings()).toEqual([]);
  });

  it('restore with assignBars: false never calls allocate, and the allocator table stays the source one', async () => {
    const src = bootedSource(env, 'sim:64KiB');
    const f = file(env);
    await snapshotVm([src.d], f);
    const allocator = new RecordingAllocator(ReferenceAllocator.from(src.host.allocator.export()));
    const host = newHost(env, allocator);
    const dst = attach(env, openSim(env, 'sim:64KiB'), host, { id: 'nic0', assignBars: false });
    const vm = new MigrationCoordinator([dst]);
    await vm.restore(f);
    await vm.resume();
    expect(allocator.calls).toEqual([]);
    expect(host.allocator.export()).toEqual(src.host.allocator.export());
    expect(host.bus.find('nic0', 0)!.address).toBe(0xe000_0000n);
    const g = new Guest(dst, host);
    g.ring(0);
    expect(await g.wait(0)).toBe(1);
  });
});

/**
 * Pause `src`'s VM and save it into `f` with its records and model rewritten on their way into
 * the file, which the writer then seals with valid checksums: what a tampered or foreign file
 * looks like to a destination.
 */
async function snapshotTampered(src: VfioPciDevice, f: string, edit: { record?: (r: DeviceRecord) => DeviceRecord; model?: (m: ModelState) => ModelState }): Promise<void> {
  const vm = new MigrationCoordinator([src]);
  await vm.pause();
  const writer = await SnapshotWriter.create(f, { noSync: true });
  const sink = new SnapshotFileSink(writer);
  const tampering: StateSink = {
    name: sink.name,
    begin: (records) => sink.begin(records.map((r) => edit.record?.(r) ?? r)),
    writeState: (i, from, o) => sink.writeState(i, from, o),
    endState: (i) => sink.endState(i),
    writeModel: (i, body) => sink.writeModel(i, edit.model ? encodeModelState(edit.model(decodeModelState(body))) : body),
    finish: () => sink.finish(),
    abort: (r) => sink.abort(r),
  };
  await vm.save(tampering);
  await writer.commit();
  await vm.resume();
}

describe("config space on the destination (QEMU rule: the destination's masks, Vendor Specific body exempt)", () => {
  async function attempt(destSpec: string): Promise<{ dst: VfioPciDevice; host: ReferenceHost; run: () => Promise<void> }> {
    const src = bootedSource(env, 'sim:64KiB');
    const f = file(env);
    await snapshotVm([src.d], f);
    const { host, devices: [dst] } = destination(env, src.host, [{ spec: destSpec }]);
    const vm = new MigrationCoordinator([dst]);
    return { dst, host, run: async () => {
      await vm.restore(f);
      await vm.resume();
    } };
  }

  it('a VSC body that differs (vsc=2, another host driver) restores', async () => {
    const { dst, host, run } = await attempt('sim:64KiB:vsc=2');
    expect(dst.device.readConfig(CAP_OFFSETS.VNDR + 7, 1)[0]).toBe(2);
    await run();
    const g = new Guest(dst, host);
    expect(g.scratch(SECRET.length)).toEqual(SECRET);
    g.ring(0);
    expect(await g.wait(0)).toBe(1);
  });

  it('a VSC header that differs (vsclen=20) fails with EVFIO_CONFIG_MISMATCH naming the capability; the device is untouched', async () => {
    const { dst, host, run } = await attempt('sim:64KiB:vsclen=20');
    const err = (await rejection(run())) as ConfigMismatchError;
    expect(err.code).toBe('EVFIO_CONFIG_MISMATCH');
    expect(err.kind).toBe('mismatch');
    expect(err.step).toBe('load:check');
    expect(err.device).toBe('nic0');
    expect(err.deviceState).toEqual([{ device: 'nic0', state: 'RUNNING', touched: false, reset: false }]);
    expect(err.message).toContain('0xb2 Vendor Specific capability at 0xb0 header: saved 0x10, device 0x14');
    expect(err.mismatches).toEqual([{ offset: 0xb2, register: 'Vendor Specific capability at 0xb0 header', saved: 0x10, current: 0x14, mask: 0xff }]);
    expectUntouched(dst, host);
  });

  it('a device id that differs (devid=0x5f11) fails the identity check (EVFIO_DEVICE_MISMATCH) naming the field; the device is untouched', async () => {
    const { dst, host, run } = await attempt('sim:64KiB:devid=0x5f11');
    const err = await rejection(run());
    expect(err.code).toBe('EVFIO_DEVICE_MISMATCH');
    expect(err.deviceState).toEqual([{ device: 'nic0', state: 'RUNNING', touched: false, reset: false }]);
    expect(err.message).toContain('deviceId 0x5f10 ≠ 0x5f11');
    expectUntouched(dst, host);
  });

  it('masks stored in the snapshot are not trusted: a file re-sealed with cmask zeroed and identity rewritten is still refused', async () => {
    // The source's records and model rewritten on their way into the file, which the writer
    // then seals with valid checksums: DEVICE and CONFIG claim device id 0x5f11, and the
    // model's shadow has cmask zeroed (and wmask set) where the device id sits.
    const src = bootedSource(env, 'sim:64KiB');
    const f = file(env);
    await snapshotTampered(src.d, f, {
      record: (r) => {
        const config = Buffer.from(r.config);
        config.writeUInt16LE(0x5f11, 2);
        return { ...r, config, identity: { ...r.identity, deviceId: 0x5f11 } };
      },
      model: (m) => {
        const shadow = ConfigSpace.deserialize(m.config);
        shadow.cmask.fill(0, 2, 4);
        shadow.wmask.fill(0xff, 2, 4);
        return { ...m, config: shadow.serialize() };
      },
    });

    const { host, devices: [dst] } = destination(env, src.host, [{ spec: 'sim:64KiB:devid=0x5f11' }]);
    const vmB = new MigrationCoordinator([dst]);
    const err = (await rejection(vmB.restore(f))) as ConfigMismatchError;
    // The identity and raw config now agree with the destination: the model's shadow is what
    // gives it away, compared under the destination's own masks.
    expect(err.code).toBe('EVFIO_CONFIG_MISMATCH');
    expect(err.step).toBe('load:check-model');
    expect(err.mismatches.map((m) => [m.offset, m.register])).toEqual([[0x02, 'PCI_DEVICE_ID']]);
    expectUntouched(dst, host);
  });
});

describe('the device model part of a restore is checked before anything is touched', () => {
  it('a saved MSI-X table whose vector count is not the destination capability\'s (QSIZE + 1) is refused', async () => {
    const src = bootedSource(env, 'sim:64KiB');
    const f = file(env);
    const vectors = src.d.config.msix()!.tableSize;
    await snapshotTampered(src.d, f, { model: (m) => ({ ...m, msixTable: new MsixTable(vectors - 1).serialize() }) });
    const { host, devices: [dst] } = destination(env, src.host, [{ spec: 'sim:64KiB' }]);
    const err = await rejection(new MigrationCoordinator([dst]).restore(f));
    expect(err.code).toBe('EVFIO_CONFIG_MISMATCH');
    expect(err.message).toContain(`the saved MSI-X table has ${vectors - 1} vectors, the device's MSI-X capability ${vectors}`);
    expectUntouched(dst, host);
  });

  it('a BAR present on the destination but not in the saved layout is refused (sizes are compared both ways)', async () => {
    const src = bootedSource(env, 'sim:64KiB');
    const f = file(env);
    // The saved shadow as a device without BAR0 would have it.
    await snapshotTampered(src.d, f, {
      model: (m) => ({ ...m, bars: [], config: ConfigSpace.fromDevice(ConfigSpace.deserialize(m.config).bytes, { barSizes: [] }).serialize() }),
    });
    const { host, devices: [dst] } = destination(env, src.host, [{ spec: 'sim:64KiB' }]);
    const err = await rejection(new MigrationCoordinator([dst]).restore(f));
    expect(err.code).toBe('EVFIO_CONFIG_MISMATCH');
    expect(err.step).toBe('load:check-bars');
    expect(err.message).toMatch(/BAR0: saved absent, device has \d+ bytes/);
    expectUntouched(dst, host);
  });
});

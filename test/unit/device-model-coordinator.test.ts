/**
 * MigrationCoordinator (src/device/coordinator.ts) over several simulated devices: the order of
 * migration arcs across devices (P2P and not), the blockers, and recovery when a device fails
 * during pause, snapshot or restore. Arcs are recorded in one global order straight from the
 * devices (every SimDevice's 'arc' events), so what is checked is what the "kernel" executed.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import { simStream } from '../../src/sim';
import { MigrationCoordinator } from '../../src/vm/coordinator';
import type { VfioPciDevice } from '../../src/model/vfio-pci';
import type { StateChange } from '../../src/kernel/migration';
import { SnapshotReader } from '../../src/snapshot/reader';
import { SnapshotWriter } from '../../src/snapshot/writer';
import { MigState } from '../../src/kernel/uapi/vfio';
import {
  BAR0, Guest, MEM_MASTER, SECRET, bootedSource, destination, dispose, file, lossyBinding, makeEnv, newHost, rawCommand, recordArcs, simOf,
  snapshotVm, type Env,
} from '../helpers/device-model';
import { rejection, thrown } from '../helpers/errors';

const { RUNNING, RUNNING_P2P, STOP, STOP_COPY, RESUMING } = MigState;

let env: Env;
beforeEach(() => {
  env = makeEnv();
});
afterEach(() => dispose(env));

/** Two booted devices `a` and `b` on one source host. */
function twoDevices(specA: string, specB: string): { a: Guest; b: Guest } {
  const host = newHost(env);
  const a = bootedSource(env, specA, { id: 'a', host });
  const b = bootedSource(env, specB, { id: 'b', host });
  return { a, b };
}

describe('order of arcs across devices', () => {
  it('two P2P devices: both reach RUNNING_P2P before either stops; on resume both leave STOP for RUNNING_P2P before either runs', async () => {
    const { a, b } = twoDevices('sim:4096', 'sim:4096');
    const vm = new MigrationCoordinator([a.d, b.d]);
    expect(vm.usesP2P).toBe(true);
    const arcs = recordArcs(env, [a.d, b.d]);
    const events: StateChange[] = [];
    vm.on('state', (c) => events.push(c));

    await vm.pause();
    expect(arcs).toEqual(['a: RUNNING→RUNNING_P2P', 'b: RUNNING→RUNNING_P2P', 'a: RUNNING_P2P→STOP', 'b: RUNNING_P2P→STOP']);
    expect(events.map((e) => [e.from, e.to])).toEqual([[RUNNING, RUNNING_P2P], [RUNNING, RUNNING_P2P], [RUNNING_P2P, STOP], [RUNNING_P2P, STOP]]);

    arcs.length = 0;
    await vm.snapshot(file(env), { noSync: true });
    expect(arcs).toEqual(['a: STOP→STOP_COPY', 'a: STOP_COPY→STOP', 'b: STOP→STOP_COPY', 'b: STOP_COPY→STOP']);

    arcs.length = 0;
    await vm.resume();
    expect(arcs).toEqual(['a: STOP→RUNNING_P2P', 'b: STOP→RUNNING_P2P', 'a: RUNNING_P2P→RUNNING', 'b: RUNNING_P2P→RUNNING']);
  });

  it('two P2P destinations: restore, then resume passes RUNNING_P2P on both before either is RUNNING', async () => {
    const { a, b } = twoDevices('sim:4096', 'sim:4096');
    const f = file(env);
    await snapshotVm([a.d, b.d], f);
    const dst = destination(env, a.host, [{ spec: 'sim:4096', id: 'a' }, { spec: 'sim:4096', id: 'b' }]);
    const vm = new MigrationCoordinator(dst.devices);
    const arcs = recordArcs(env, dst.devices);
    await vm.restore(f);
    // ONE RUNNING → RESUMING request each; the kernel walks the P2P path.
    expect(arcs).toEqual([
      'a: RUNNING→RUNNING_P2P', 'a: RUNNING_P2P→STOP', 'a: STOP→RESUMING',
      'b: RUNNING→RUNNING_P2P', 'b: RUNNING_P2P→STOP', 'b: STOP→RESUMING',
    ]);
    arcs.length = 0;
    await vm.resume();
    const firstRunning = arcs.findIndex((x) => x.endsWith('→RUNNING'));
    const lastP2P = arcs.map((x) => x.endsWith('→RUNNING_P2P')).lastIndexOf(true);
    expect(arcs.filter((x) => x.endsWith('STOP→RUNNING_P2P'))).toEqual(['a: STOP→RUNNING_P2P', 'b: STOP→RUNNING_P2P']);
    expect(lastP2P).toBeLessThan(firstRunning);
    expect(arcs.slice(firstRunning)).toEqual(['a: RUNNING_P2P→RUNNING', 'b: RUNNING_P2P→RUNNING']);
    for (const d of dst.devices) {
      const g = new Guest(d, dst.host);
      expect(g.scratch(SECRET.length)).toEqual(SECRET);
      g.ring(0);
      expect(await g.wait(0)).toBe(1);
    }
  });

  it('non-P2P devices (mig=stop_copy) with allowNonP2P: each goes RUNNING→STOP and back directly', async () => {
    const { a, b } = twoDevices('sim:4096:mig=stop_copy', 'sim:4096:mig=stop_copy');
    const vm = new MigrationCoordinator([a.d, b.d], { allowNonP2P: true });
    expect(vm.usesP2P).toBe(false);
    expect(vm.blockers()).toEqual([]);
    const arcs = recordArcs(env, [a.d, b.d]);
    await vm.pause();
    expect(arcs).toEqual(['a: RUNNING→STOP', 'b: RUNNING→STOP']);
    arcs.length = 0;
    await vm.resume();
    expect(arcs).toEqual(['a: STOP→RUNNING', 'b: STOP→RUNNING']);
  });

  it('a P2P and a non-P2P device with allowNonP2P: no quiesce step; the P2P one passes RUNNING_P2P inside its own request', async () => {
    const { a, b } = twoDevices('sim:4096', 'sim:4096:mig=stop_copy');
    const vm = new MigrationCoordinator([a.d, b.d], { allowNonP2P: true });
    const arcs = recordArcs(env, [a.d, b.d]);
    await vm.pause();
    expect(arcs).toEqual(['a: RUNNING→RUNNING_P2P', 'a: RUNNING_P2P→STOP', 'b: RUNNING→STOP']);
  });
});

describe('blockers, reported before anything is touched', () => {
  it('several devices without P2P and no allowNonP2P: EVFIO_NO_P2P, no arc executed', async () => {
    const { a, b } = twoDevices('sim:4096', 'sim:4096:mig=stop_copy');
    const vm = new MigrationCoordinator([a.d, b.d]);
    const arcs = recordArcs(env, [a.d, b.d]);
    const blockers: unknown[] = [];
    vm.on('blocker', (x) => blockers.push(x));
    const err = await rejection(() => vm.pause());
    expect(err.code).toBe('EVFIO_NO_P2P');
    expect(err.kind).toBe('unsupported');
    expect(err.step).toBe('pause');
    expect(err.device).toBe('b');
    expect(blockers).toEqual([expect.objectContaining({ code: 'EVFIO_NO_P2P', devices: ['b'] })]);
    expect(arcs).toEqual([]);
    expect([simOf(env, a.d).state, simOf(env, b.d).state]).toEqual([RUNNING, RUNNING]);
    const snap = await rejection(vm.snapshot(file(env)));
    expect(snap.code).toBe('EVFIO_NO_P2P');
    expect(arcs).toEqual([]);
  });

  it('a device without migration support (mig=off): EVFIO_NOT_MIGRATABLE for snapshot, no file written, nothing touched', async () => {
    const { a, b } = twoDevices('sim:4096', 'sim:4096:mig=off');
    expect(b.d.migration).toBeNull();
    const vm = new MigrationCoordinator([a.d, b.d]);
    const arcs = recordArcs(env, [a.d]);
    const f = file(env);
    const err = await rejection(vm.snapshot(f));
    expect(err.code).toBe('EVFIO_NOT_MIGRATABLE');
    expect(err.step).toBe('save');
    expect(err.device).toBe('b');
    expect(err.deviceState).toEqual([
      { device: 'a', state: 'RUNNING', touched: false, reset: false },
      { device: 'b', state: 'unknown', touched: false, reset: false },
    ]);
    expect(fs.existsSync(f)).toBe(false);
    expect(fs.readdirSync(env.dir)).toEqual([]);
    expect((await rejection(() => vm.pause())).code).toBe('EVFIO_NOT_MIGRATABLE');
    expect(arcs).toEqual([]);
    expect(simOf(env, a.d).state).toBe(RUNNING);
    // The same for the device alone.
    expect((await rejection(() => new MigrationCoordinator([b.d]).pause())).code).toBe('EVFIO_NOT_MIGRATABLE');
  });
});

describe('recovery from failures', () => {
  it('a failing arc during pause: the device is recovered to RUNNING; the error names the step and the state left', async () => {
    const g = bootedSource(env, 'sim:4096');
    const sim = simOf(env, g.d);
    sim.failArc({ from: RUNNING_P2P, to: STOP }, 'EIO');
    const recovered: Array<{ step: string; state: MigState; reset: boolean }> = [];
    const vm = new MigrationCoordinator([g.d]);
    vm.on('recovered', (r) => recovered.push(r));
    const arcs = recordArcs(env, [g.d]);
    const err = await rejection(() => vm.pause());
    expect(err.code).toBe('EIO');
    expect(err.errno).toBe(5);
    expect(err.step).toBe('set-state RUNNING→STOP');
    expect(err.deviceState).toEqual([{ device: 'nic0', state: 'RUNNING', touched: true, reset: false }]);
    expect(err.message).toMatch(/device left in RUNNING$/);
    expect(recovered).toEqual([expect.objectContaining({ device: 'nic0', step: 'pause:undo', state: RUNNING, reset: false })]);
    expect(arcs).toEqual(['nic0: RUNNING→RUNNING_P2P', 'nic0: RUNNING_P2P→RUNNING']);
    expect(sim.state).toBe(RUNNING);
    g.ring(0);
    expect(await g.wait(0)).toBe(1);
  });

  it('two devices, the second fails to quiesce: the first is brought back to RUNNING too (no half-paused VM)', async () => {
    const { a, b } = twoDevices('sim:4096#a', 'sim:4096#b');
    simOf(env, b.d).failArc({ from: RUNNING, to: RUNNING_P2P }, 'EIO');
    const vm = new MigrationCoordinator([a.d, b.d]);
    const arcs = recordArcs(env, [a.d, b.d]);
    const err = await rejection(() => vm.pause());
    expect(err.device).toBe(b.d.device.name);
    expect(err.deviceState).toEqual([
      { device: 'a', state: 'RUNNING', touched: true, reset: false },
      { device: 'b', state: 'RUNNING', touched: true, reset: false },
    ]);
    expect([simOf(env, a.d).state, simOf(env, b.d).state]).toEqual([RUNNING, RUNNING]);
    expect(arcs).toEqual(['a: RUNNING→RUNNING_P2P', 'a: RUNNING_P2P→RUNNING']);
    // and a second attempt works
    await vm.pause();
    expect([simOf(env, a.d).state, simOf(env, b.d).state]).toEqual([STOP, STOP]);
  });

  it('a device that enters ERROR during pause: VFIO_DEVICE_RESET, then PCI_COMMAND pushed and interrupts re-armed', async () => {
    const g = bootedSource(env, 'sim:4096:master=required');
    const sim = simOf(env, g.d);
    // What the device serves from here on: resets, config writes, SET_IRQS.
    const calls: string[] = [];
    sim.on('reset', (how) => calls.push(`reset (${how})`));
    sim.on('config-write', (off, data) => calls.push(`writeConfig 0x${off.toString(16)}=0x${data.readUIntLE(0, data.length).toString(16)}`));
    sim.on('set-irqs', (set) => calls.push(`setIrqs ${set.index}`));
    const recovered: Array<{ reset: boolean; state: MigState }> = [];
    const vm = new MigrationCoordinator([g.d]);
    vm.on('recovered', (r) => recovered.push(r));

    sim.failArc({ to: STOP }, 'EIO', { enterError: true });
    const err = await rejection(() => vm.pause());
    expect(err.code).toBe('EIO');
    expect(err.deviceState).toEqual([{ device: 'nic0', state: 'RUNNING', touched: true, reset: true }]);
    expect(recovered).toEqual([expect.objectContaining({ reset: true, state: RUNNING })]);
    expect(calls).toEqual(['reset (VFIO_DEVICE_RESET)', `writeConfig 0x4=0x${MEM_MASTER.toString(16)}`, 'setIrqs 2']);
    expect(sim.state).toBe(RUNNING);
    expect(rawCommand(g.d)).toBe(MEM_MASTER);
    expect(g.read32(BAR0.IRQ_COUNT)).toBe(0); // the reset cleared the registers
    g.ring(0);
    expect(await g.wait(0)).toBe(1);
    expect(g.read32(BAR0.QUEUE_PENDING)).toBe(0);
  });

  it('(without the push after the reset the master=required device would wedge)', async () => {
    // A recovery that forgets PCI_COMMAND: from the pause on, COMMAND writes never reach the device.
    let forget = false;
    const g = bootedSource(env, 'sim:4096:master=required', { binding: lossyBinding(env, 'command', () => forget) });
    forget = true;
    simOf(env, g.d).failArc({ to: STOP }, 'EIO', { enterError: true });
    await rejection(() => new MigrationCoordinator([g.d]).pause());
    expect(rawCommand(g.d)).toBe(0);
    g.ring(0);
    expect(g.read32(BAR0.QUEUE_PENDING)).toBe(1);
    expect(await g.wait(0, 100)).toBe(0);
  });

  it('a failing read during snapshot: the device is back in STOP, no file, and a second snapshot works', async () => {
    const g = bootedSource(env, 'sim:64KiB');
    const sim = simOf(env, g.d);
    const vm = new MigrationCoordinator([g.d]);
    await vm.pause();
    sim.failDataFd({ after: 1000, errno: 'EIO', on: 'read' });
    const f = file(env);
    const err = await rejection(vm.snapshot(f, { noSync: true }));
    expect(err.code).toBe('EIO');
    expect(err.deviceState).toEqual([{ device: 'nic0', state: 'STOP', touched: true, reset: false }]);
    expect(sim.state).toBe(STOP);
    expect(fs.readdirSync(env.dir)).toEqual([]);
    await vm.snapshot(f, { noSync: true });
    expect(fs.existsSync(f)).toBe(true);
    await vm.resume();
    expect(sim.state).toBe(RUNNING);
  });
});

/**
 * Copy the snapshot `from` into `to` with the device-state byte `at` of device `id` flipped,
 * re-encoded with valid file checksums: only the device itself can refuse it.
 */
async function corruptSection(from: string, to: string, id: string, at: number): Promise<void> {
  const r = await SnapshotReader.open(from);
  const index = r.devices().find((d) => d.record.name === id)!.index;
  const w = await SnapshotWriter.create(to, { noSync: true });
  for (const sec of r.sections) {
    if (sec.chunks) {
      await w.beginSection(sec.header.type, sec.header.device);
      let pos = 0;
      for await (const chunk of r.chunks(sec)) {
        const copy = Buffer.from(chunk);
        if (sec.header.device === index && at >= pos && at < pos + copy.length) copy[at - pos] ^= 0xff;
        pos += copy.length;
        await w.writeChunk(copy);
      }
      await w.endSection();
    } else {
      await w.writeSection(sec.header.type, sec.header.device, r.body(sec));
    }
  }
  await w.commit();
  await r.close();
}

/** A snapshot of `src` (left running) whose device-state byte `at` is flipped, with valid file checksums. */
async function corruptedSnapshot(src: VfioPciDevice, to: string, at: number): Promise<void> {
  const good = `${to}.good`;
  await (await snapshotVm([src], good)).resume();
  await corruptSection(good, to, src.id, at);
  fs.rmSync(good);
}

describe('a failed restore', () => {
  /** The destination is as freshly attached: RUNNING, no session, nothing on the bus or armed, shadow reset. */
  function expectBackToFresh(d: VfioPciDevice, host: ReturnType<typeof destination>['host']): void {
    const sim = simOf(env, d);
    expect(sim.state).toBe(RUNNING);
    expect(sim.session()?.disabled ?? true).toBe(true);
    expect(sim.irqs().mode).toBe('none');
    expect(host.bus.mappings()).toEqual([]);
    expect(d.mappedBars).toEqual([]);
    expect(d.interrupts).toEqual({ mode: 'none', vectors: 0 });
    expect(d.config.command).toBe(0);
    expect(d.config.msix()!.enabled).toBe(false);
    expect(rawCommand(d)).toBe(0);
  }

  it('a stream the device refuses (bad header, valid file checksums): RUNNING, nothing on the bus; a retry with a good file works', async () => {
    const src = bootedSource(env, 'sim:64KiB');
    const bad = file(env, 'bad.vfiosnap');
    await corruptedSnapshot(src.d, bad, 0); // the stream's magic
    const { host, devices: [dst] } = destination(env, src.host, [{ spec: 'sim:64KiB' }]);
    const vm = new MigrationCoordinator([dst]);
    const err = await rejection(vm.restore(bad));
    expect(err.code).toBe('EFAULT');
    expect(err.step).toBe('load:write');
    expect(err.device).toBe(dst.device.name); // the VFIO device's own name (PCI address, UUID or spec)
    expect(err.deviceState).toEqual([{ device: 'nic0', state: 'RUNNING', touched: true, reset: true }]);
    expectBackToFresh(dst, host);

    const good = file(env, 'good.vfiosnap');
    await snapshotVm([src.d], good);
    await vm.restore(good);
    await vm.resume();
    const g = new Guest(dst, host);
    expect(g.scratch(SECRET.length)).toEqual(SECRET);
    g.ring(0);
    expect(await g.wait(0)).toBe(1);
  });

  it('an injected write error on the data_fd: RUNNING, nothing on the bus', async () => {
    const src = bootedSource(env, 'sim:64KiB');
    const f = file(env);
    await snapshotVm([src.d], f);
    const { host, devices: [dst] } = destination(env, src.host, [{ spec: 'sim:64KiB' }]);
    simOf(env, dst).failDataFd({ after: 4096, errno: 'EIO', on: 'write' });
    const err = await rejection(new MigrationCoordinator([dst]).restore(f));
    expect(err.code).toBe('EIO');
    expect(err.op).toBe('data_fd write');
    expect(err.deviceState).toEqual([{ device: 'nic0', state: 'RUNNING', touched: true, reset: true }]);
    expectBackToFresh(dst, host);
  });

  it('device data the driver accepts byte by byte but refuses at the RESUMING exit: the refusal comes from resume()', async () => {
    // The device model leaves RESUMING in resume() (QEMU's order), so this is where the driver's
    // final check (mtty: EINVAL at RESUMING → STOP) shows.
    const src = bootedSource(env, 'sim:64KiB');
    const f = file(env);
    await corruptedSnapshot(src.d, f, simStream.HEADER_SIZE + 100);
    const { devices: [dst] } = destination(env, src.host, [{ spec: 'sim:64KiB' }]);
    const vm = new MigrationCoordinator([dst]);
    await vm.restore(f);
    expect(simOf(env, dst).state).toBe(RESUMING);
    const err = await rejection(() => vm.resume());
    expect(err.code).toBe('EINVAL');
    expect(err.step).toMatch(/^set-state RESUMING→/);
    expect(err.deviceState).toEqual([{ device: 'nic0', state: 'RUNNING', touched: true, reset: true }]);
    expect(simOf(env, dst).state).toBe(RUNNING);
  });

  it('two devices, the second refused at the RESUMING exit in resume(): both reset, nothing armed, nothing mapped, neither runs the loaded state', async () => {
    // Without P2P (allowNonP2P) the first device reaches RUNNING before the second's RESUMING
    // exit fails: it must be undone too.
    const host = newHost(env);
    const a = bootedSource(env, 'sim:64KiB:mig=stop_copy', { id: 'a', host });
    const b = bootedSource(env, 'sim:64KiB:mig=stop_copy', { id: 'b', host });
    const f = file(env);
    const good = file(env, 'good.vfiosnap');
    await snapshotVm([a.d, b.d], good, { allowNonP2P: true });
    await corruptSection(good, f, 'b', simStream.HEADER_SIZE + 100);
    const dst = destination(env, host, [{ spec: 'sim:64KiB:mig=stop_copy', id: 'a' }, { spec: 'sim:64KiB:mig=stop_copy', id: 'b' }]);
    const [da, db] = dst.devices;
    const vm = new MigrationCoordinator(dst.devices, { allowNonP2P: true });
    await vm.restore(f);
    expect(dst.host.bus.mappings().length).toBe(2);
    const arcs = recordArcs(env, [da, db]);
    const err = await rejection(() => vm.resume());
    expect(err.code).toBe('EINVAL');
    expect(err.device).toBe(db.device.name);
    expect(arcs[0]).toBe('a: RESUMING→STOP'); // a had left RESUMING (and run) before b failed
    expect(err.deviceState).toEqual([
      { device: 'a', state: 'RUNNING', touched: true, reset: true },
      { device: 'b', state: 'RUNNING', touched: true, reset: true },
    ]);
    for (const d of [da, db]) expectBackToFresh(d, dst.host);
    // a was reset: the loaded registers are gone.
    expect(new Guest(da, dst.host).d.device.readRegion(0, BAR0.SCRATCH, 4).readUInt32LE(0)).not.toBe(SECRET.readUInt32LE(0));
  });

  it('two devices, the second fails: the first, already loaded, is reset too', async () => {
    const host = newHost(env);
    const a = bootedSource(env, 'sim:64KiB', { id: 'a', host });
    const b = bootedSource(env, 'sim:64KiB', { id: 'b', host });
    const f = file(env);
    await snapshotVm([a.d, b.d], f);
    const dst = destination(env, host, [{ spec: 'sim:64KiB#dst-a', id: 'a' }, { spec: 'sim:64KiB#dst-b', id: 'b' }]);
    const [da, db] = dst.devices;
    simOf(env, db).failDataFd({ after: 100, errno: 'EIO', on: 'write' });
    const arcs = recordArcs(env, [da, db]);
    const err = await rejection(new MigrationCoordinator(dst.devices).restore(f));
    expect(err.code).toBe('EIO');
    expect(err.device).toBe(db.device.name);
    expect(arcs.filter((x) => x.startsWith('a:'))).toEqual(['a: RUNNING→RUNNING_P2P', 'a: RUNNING_P2P→STOP', 'a: STOP→RESUMING']);
    for (const d of [da, db]) expectBackToFresh(d, dst.host);
    for (const d of [da, db]) expect(simOf(env, d).openFds).toBe(1); // the device fd; no data_fd left open
  });

  it('STOP_COPY is never left half-done: a source whose snapshot fails can still be resumed', async () => {
    const g = bootedSource(env, 'sim:64KiB');
    const vm = new MigrationCoordinator([g.d]);
    await vm.pause();
    simOf(env, g.d).failArc({ from: STOP_COPY, to: STOP }, 'EIO');
    const err = await rejection(vm.snapshot(file(env), { noSync: true }));
    expect(err.code).toBe('EIO');
    await vm.resume();
    expect(simOf(env, g.d).state).toBe(RUNNING);
    g.ring(0);
    expect(await g.wait(0)).toBe(1);
  });
});

describe('a restore pairs saved devices with the VM\'s by id', () => {
  /** Two source devices a and b with different scratch contents, snapshotted into one file. */
  async function twoSaved(): Promise<{ f: string; host: ReturnType<typeof newHost> }> {
    const host = newHost(env);
    const a = bootedSource(env, 'sim:4096', { id: 'a', host });
    const b = bootedSource(env, 'sim:4096', { id: 'b', host });
    a.setRegisters(0xaaaa_0001, Buffer.alloc(32, 0xaa));
    b.setRegisters(0xbbbb_0001, Buffer.alloc(32, 0xbb));
    const f = file(env);
    await snapshotVm([a.d, b.d], f);
    return { f, host };
  }

  it('a destination that lists its devices in another order gets each one its own state', async () => {
    const { f, host } = await twoSaved();
    const dst = destination(env, host, [{ spec: 'sim:4096', id: 'b' }, { spec: 'sim:4096', id: 'a' }]);
    const vm = new MigrationCoordinator(dst.devices);
    const r = await vm.restore(f);
    expect(r.devices.map((d) => [d.id, d.from])).toEqual([['b', 'b'], ['a', 'a']]);
    await vm.resume();
    const [db, da] = dst.devices;
    expect(new Guest(da, dst.host).scratch(32)).toEqual(Buffer.alloc(32, 0xaa));
    expect(new Guest(db, dst.host).scratch(32)).toEqual(Buffer.alloc(32, 0xbb));
  });

  it('a saved device without a destination, or a destination without saved state, is refused by name before anything is touched', async () => {
    const { f, host } = await twoSaved();
    const dst = destination(env, host, [{ spec: 'sim:4096', id: 'a' }, { spec: 'sim:4096', id: 'c' }]);
    const arcs = recordArcs(env, dst.devices);
    const err = await rejection(new MigrationCoordinator(dst.devices).restore(f));
    expect(err.code).toBe('EVFIO_DEVICE_MISMATCH');
    expect(err.message).toContain('no saved state for c');
    expect(err.message).toContain('no device for the saved b');
    expect(err.deviceState!.every((o) => !o.touched && o.state === 'RUNNING')).toBe(true);
    expect(arcs).toEqual([]);
    // One device fewer than the file: refused too, naming the one left over.
    const one = destination(env, host, [{ spec: 'sim:4096', id: 'a' }]);
    expect((await rejection(new MigrationCoordinator(one.devices).restore(f))).message).toContain('no device for the saved b');
  });

  it('two devices of a VM with one id are refused (EVFIO_DUPLICATE_ID)', () => {
    const a = bootedSource(env, 'sim:4096', { id: 'x' });
    const b = bootedSource(env, 'sim:4096', { id: 'x' });
    expect(thrown(() => new MigrationCoordinator([a.d, b.d])).code).toBe('EVFIO_DUPLICATE_ID');
  });
});

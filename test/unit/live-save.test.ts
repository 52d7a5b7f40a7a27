/**
 * The engine's live save (src/engine/live-save.ts) on simulated devices, through an in-memory
 * stream to a destination engine in the same process: precopy rounds, the initial-data marker,
 * the switchover's P2P order and downtime, the models last, STOP_COPY → STOP after the data, and
 * cancel returning every device to RUNNING with its state intact. The wire protocol and its
 * failures are in live-stream tests; here only the device side.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { MigrationCoordinator } from '../../src/vm/coordinator';
import { MigState, migStateName } from '../../src/kernel/uapi/vfio';
import type { LiveSave } from '../../src/engine/live-save';
import { simStream } from '../../src/sim';
import { MemoryStream } from '../helpers/memory-stream';
import { BAR0, Guest, SECRET, bootedSource, destination, dispose, makeEnv, newHost, recordArcs, simOf, type Env } from '../helpers/device-model';
import { rejection } from '../helpers/errors';

const { RUNNING, STOP, RESUMING, PRE_COPY } = MigState;

let env: Env;
beforeEach(() => {
  env = makeEnv();
});
afterEach(() => dispose(env));

async function twoSources(spec = 'sim:64KiB'): Promise<{ a: Guest; b: Guest; vm: MigrationCoordinator }> {
  const host = newHost(env);
  const a = bootedSource(env, spec, { id: 'a', host });
  const b = bootedSource(env, spec, { id: 'b', host });
  a.setRegisters(0xaaaa_0001, SECRET);
  b.setRegisters(0xbbbb_0001, Buffer.alloc(32, 0x3c));
  return { a, b, vm: new MigrationCoordinator([a.d, b.d]) };
}

describe('live save into a destination in the same process', () => {
  it('precopy rounds, the initial data marker, a P2P switchover, models last; the destination runs with the state', async () => {
    const { a, b, vm } = await twoSources();
    const stream = new MemoryStream();
    const order: string[] = [];
    vm.on('state', (c) => order.push(`${c.device}: ${migStateName(c.from)}→${migStateName(c.to)}`));
    const live = await vm.beginLiveSave(stream.sink);
    expect([simOf(env, a.d).state, simOf(env, b.d).state]).toEqual([PRE_COPY, PRE_COPY]);
    expect(live.initialSent).toBe(false);
    expect(live.pending().map((p) => p.initialPending)).toEqual([true, true]);

    const dst = destination(env, a.host, [{ spec: 'sim:64KiB', id: 'a' }, { spec: 'sim:64KiB', id: 'b' }]);
    const vmB = new MigrationCoordinator(dst.devices);
    const loading = vmB.load(stream.source());

    const r1 = await live.round();
    expect([...r1.bytes.values()].every((n) => n > 0)).toBe(true);
    expect(live.initialSent).toBe(true);
    expect(stream.log).toEqual(['initial 0', 'initial 1']);
    expect(r1.pending.every((p) => p.precopyBytes === 0 && !p.initialPending && p.stopCopyBytes > 0)).toBe(true);
    // A second round has nothing new (nothing changed the devices' data since).
    const r2 = await live.round();
    expect([...r2.bytes.values()]).toEqual([0, 0]);

    order.length = 0;
    const sw = await live.switchover();
    // P2P: both leave PRE_COPY for PRE_COPY_P2P before either goes to STOP_COPY; STOP after the data.
    expect(order).toEqual([
      'a: PRE_COPY→PRE_COPY_P2P', 'b: PRE_COPY→PRE_COPY_P2P',
      'a: PRE_COPY_P2P→STOP_COPY', 'b: PRE_COPY_P2P→STOP_COPY',
      'a: STOP_COPY→STOP', 'b: STOP_COPY→STOP',
    ]);
    expect(stream.log).toEqual(['initial 0', 'initial 1', 'end-state 0', 'end-state 1', 'model 0', 'model 1', 'end']);
    expect(sw.downtimeMs).toBeGreaterThan(0);
    expect(sw.devices.map((d) => d.id)).toEqual(['a', 'b']);
    for (const d of sw.devices) expect(d.precopyBytes + d.stopCopyBytes).toBe(simOf(env, a.d).streamLength);
    expect(live.state).toBe('done');
    expect([simOf(env, a.d).state, simOf(env, b.d).state]).toEqual([STOP, STOP]);

    const loaded = await loading;
    expect(loaded.devices.map((d) => [d.id, d.stateBytes])).toEqual([['a', simOf(env, a.d).streamLength], ['b', simOf(env, b.d).streamLength]]);
    expect(dst.devices.map((d) => simOf(env, d).state)).toEqual([RESUMING, RESUMING]);
    await vmB.resume();
    const [da, db] = dst.devices.map((d) => new Guest(d, dst.host));
    expect(da.scratch(32)).toEqual(SECRET);
    expect(db.scratch(32)).toEqual(Buffer.alloc(32, 0x3c));
    da.ring(0);
    expect(await da.wait(0)).toBe(1);
  });

  it('a destination that refuses the records: nothing on the source is touched', async () => {
    const { a, b, vm } = await twoSources();
    const stream = new MemoryStream();
    const arcs = recordArcs(env, [a.d, b.d]);
    stream.verdict = () => {
      throw Object.assign(new Error('refused'), { code: 'EVFIO_CONFIG_MISMATCH' });
    };
    await expect(vm.beginLiveSave(stream.sink)).rejects.toThrow('refused');
    expect(arcs).toEqual([]);
    expect(stream.log).toEqual(['abort']);
    // The engine is free again.
    await vm.pause();
    await vm.resume();
  });

  it('cancel in precopy and after a failed switchover: every device back to RUNNING with its state intact', async () => {
    const { a, b, vm } = await twoSources();
    const stream = new MemoryStream();
    const live = await vm.beginLiveSave(stream.sink);
    await live.round();
    await live.cancel();
    expect(live.state).toBe('cancelled');
    expect([simOf(env, a.d).state, simOf(env, b.d).state]).toEqual([RUNNING, RUNNING]);
    expect(a.scratch(32)).toEqual(SECRET);
    a.ring(0);
    expect(await a.wait(0)).toBe(1);
    expect(stream.log.at(-1)).toBe('abort');

    // Second attempt: the second device's stop-copy read fails mid-switchover.
    const again = await vm.beginLiveSave(new MemoryStream().sink);
    simOf(env, b.d).failDataFd({ after: simOf(env, b.d).streamLength - 100, errno: 'EIO', on: 'read' });
    const err = await rejection(again.switchover());
    expect(err.code).toBe('EIO');
    expect(again.state).toBe('failed');
    expect(err.deviceState?.map((o) => [o.device, o.state])).toEqual([['a', 'RUNNING'], ['b', 'RUNNING']]);
    expect([simOf(env, a.d).state, simOf(env, b.d).state]).toEqual([RUNNING, RUNNING]);
    expect(b.scratch(32)).toEqual(Buffer.alloc(32, 0x3c));
  });

  it('only one job at a time: a pause during a live save is refused (EVFIO_BUSY)', async () => {
    const { vm } = await twoSources();
    const live = await vm.beginLiveSave(new MemoryStream().sink);
    expect((await rejection(vm.pause())).code).toBe('EVFIO_BUSY');
    await live.cancel();
    await vm.pause();
    await vm.resume();
  });

  it('every job\'s phase ends, with its duration, on every path: a failed job, a live save refused at setup, one cancelled; the devices are free after each', async () => {
    const { vm } = await twoSources();
    const phases: string[] = [];
    vm.on('phase', (p) => phases.push(`${p.phase} ${p.done ? `end ${typeof p.ms}` : 'begin'}`));
    expect((await rejection(vm.save(new MemoryStream().sink))).code).toBe('EVFIO_NOT_PAUSED');
    const refusing = new MemoryStream();
    refusing.verdict = () => {
      throw new Error('the destination refuses');
    };
    expect((await rejection(vm.beginLiveSave(refusing.sink), Error)).message).toBe('the destination refuses');
    const live = await vm.beginLiveSave(new MemoryStream().sink);
    await live.cancel();
    await vm.pause();
    expect(phases).toEqual([
      'save begin', 'save end number',
      'migrate begin', 'migrate end number',
      'migrate begin', 'migrate end number',
      'pause begin', 'pause end number',
    ]);
  });
});

describe('live save of devices whose state changes while they run', () => {
  const HDR = simStream.HEADER_SIZE;
  const TRL = simStream.TRAILER_SIZE;
  /** One 4 KiB block's record in the simulated device's stream. */
  const R4K = simStream.RECORD_HEADER_SIZE + 4096;
  /** Initial data of a 64 KiB device with precopy=16KiB: the header and blocks 0..3. */
  const INITIAL = HDR + 4 * R4K;
  /** What its STOP_COPY adds when nothing is dirty: blocks 4..15 and the trailer. */
  const STOP_COPY_BYTES = 12 * R4K + TRL;

  function figures(live: LiveSave): number[][] {
    return live.pending().map((p) => [p.precopyBytes, p.initialBytes, p.stopCopyBytes]);
  }

  it('pending grows when the devices change state, shrinks when a round sends it; the destination ends with the final state', async () => {
    const { a, b, vm } = await twoSources('sim:64KiB:precopy=16KiB');
    const [sa, sb] = [simOf(env, a.d), simOf(env, b.d)];
    const stream = new MemoryStream();
    const live = await vm.beginLiveSave(stream.sink);
    const dst = destination(env, a.host, [{ spec: 'sim:64KiB', id: 'a' }, { spec: 'sim:64KiB', id: 'b' }]);
    const vmB = new MigrationCoordinator(dst.devices);
    const loading = vmB.load(stream.source());

    expect(figures(live)).toEqual([[INITIAL, INITIAL, STOP_COPY_BYTES], [INITIAL, INITIAL, STOP_COPY_BYTES]]);
    const r1 = await live.round();
    expect([...r1.bytes.values()]).toEqual([INITIAL, INITIAL]);
    expect(figures(live)).toEqual([[0, 0, STOP_COPY_BYTES], [0, 0, STOP_COPY_BYTES]]);

    // The devices change state while they run: the guest rewrites a's block 2 through BAR0, a's
    // workload blocks 0 and 1, b's block 3; b's block 10 is not sent yet (no precopy data).
    a.write32(BAR0.TOUCH_BLOCK, 2);
    a.write32(BAR0.TOUCH_DOORBELL, 1);
    sa.dirtyData(0, 8192);
    sb.touchBlocks(3);
    sb.touchBlocks(10);
    expect(figures(live)).toEqual([[3 * R4K, 0, STOP_COPY_BYTES], [R4K, 0, STOP_COPY_BYTES]]);
    const r2 = await live.round();
    expect([...r2.bytes.values()]).toEqual([3 * R4K, R4K]);
    expect(figures(live)).toEqual([[0, 0, STOP_COPY_BYTES], [0, 0, STOP_COPY_BYTES]]);
    expect([...(await live.round()).bytes.values()]).toEqual([0, 0]);

    // More changes, registers too; this time the switchover carries them.
    sa.touchBlocks(0);
    a.setRegisters(0xaaaa_0002, Buffer.alloc(32, 0x5e));
    expect(figures(live)).toEqual([[R4K, 0, STOP_COPY_BYTES], [0, 0, STOP_COPY_BYTES]]);
    const sw = await live.switchover();
    expect(sw.devices.map((d) => [d.precopyBytes, d.stopCopyBytes])).toEqual([
      [INITIAL + 3 * R4K, STOP_COPY_BYTES + R4K],
      [INITIAL + R4K, STOP_COPY_BYTES],
    ]);
    expect(stream.log).toEqual(['initial 0', 'initial 1', 'end-state 0', 'end-state 1', 'model 0', 'model 1', 'end']);

    const loaded = await loading;
    expect(loaded.devices.map((d) => d.stateBytes)).toEqual([INITIAL + 4 * R4K + STOP_COPY_BYTES, INITIAL + R4K + STOP_COPY_BYTES]);
    // The devices load the streams at the RESUMING exit, when the VMM resumes them.
    await vmB.resume();
    // Exactly the source's final state on the destination: data and registers.
    const [da, db] = dst.devices.map((d) => simOf(env, d));
    expect(da.dataDigest()).toEqual(sa.dataDigest());
    expect(db.dataDigest()).toEqual(sb.dataDigest());
    expect(sa.dataDigest().versionSum).toBe(4);
    expect(da.readData(0, 65536).equals(sa.readData(0, 65536))).toBe(true);
    expect(da.registers()).toEqual(sa.registers());
    expect(db.registers()).toEqual(sb.registers());
    const ga = new Guest(dst.devices[0], dst.host);
    expect(ga.scratch(32)).toEqual(Buffer.alloc(32, 0x5e));
    expect(ga.read32(BAR0.DATA_GEN_LO)).toBe(4);
  });

  it('PRECOPY_INFOv2: a device that re-initialises is announced again (REINIT), then its new initial data', async () => {
    const host = newHost(env);
    const a = bootedSource(env, 'sim:64KiB:precopy=16KiB:infov2=on', { id: 'a', host });
    const sa = simOf(env, a.d);
    const vm = new MigrationCoordinator([a.d]);
    const stream = new MemoryStream();
    const live = await vm.beginLiveSave(stream.sink);
    expect(sa.precopyInfoV2).toBe(true); // the engine opted in
    const dst = destination(env, host, [{ spec: 'sim:64KiB', id: 'a' }]);
    const vmB = new MigrationCoordinator(dst.devices);
    const loading = vmB.load(stream.source());

    await live.round();
    expect(live.initialSent).toBe(true);
    expect(stream.log).toEqual(['initial 0']);
    // New initial data: the first 8 blocks rewritten (0..3 sent: initial again; 4..7 join).
    expect(sa.reinitialize(8 * 4096)).toBe(8);
    // The VMM looks at the pending figures first: the driver reports REINIT once, to that call;
    // the next round must act on it all the same.
    expect(live.pending()[0].initialBytes).toBeGreaterThan(0);
    const r = await live.round();
    expect(r.bytes.get('a')).toBe(8 * R4K);
    expect(stream.log).toEqual(['initial 0', 'reinit 0', 'initial 0']);
    expect(live.initialSent).toBe(true);
    expect(figures(live)).toEqual([[0, 0, 8 * R4K + TRL]]);
    await live.switchover();
    await loading;
    await vmB.resume();
    expect(simOf(env, dst.devices[0]).dataDigest()).toEqual(sa.dataDigest());
  });

  it('an update lost on the way: the destination device refuses the stream at the RESUMING exit; nothing runs', async () => {
    const { a, vm } = await twoSources('sim:64KiB:precopy=16KiB');
    const stream = new MemoryStream();
    const live = await vm.beginLiveSave(stream.sink);
    const dst = destination(env, a.host, [{ spec: 'sim:64KiB', id: 'a' }, { spec: 'sim:64KiB', id: 'b' }]);
    const vmB = new MigrationCoordinator(dst.devices);
    const loading = vmB.load(stream.source());
    await live.round();
    simOf(env, a.d).touchBlocks(1);
    stream.tamper = (index, data) => (index === 0 ? undefined : data);
    expect((await live.round()).bytes.get('a')).toBe(R4K);
    stream.tamper = undefined;
    await live.switchover();
    await loading;
    // The RESUMING exit, when the VMM resumes, is where the device checks the final state.
    const err = await rejection(vmB.resume());
    expect(err.code).toBe('EINVAL');
    expect(err.step).toMatch(/RESUMING/);
    // The destination's devices were reset, never run with the state.
    expect(dst.devices.map((d) => simOf(env, d).state)).toEqual([RUNNING, RUNNING]);
    expect(simOf(env, dst.devices[0]).dataDigest().versionSum).toBe(0);
  });
});

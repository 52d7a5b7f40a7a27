/**
 * The engine's live save (src/engine/live-save.ts) on simulated devices, through an in-memory
 * stream to a destination engine in the same process: precopy rounds, the initial-data marker,
 * the switchover's P2P order and downtime, the models last, STOP_COPY → STOP after the data, and
 * cancel returning every device to RUNNING with its state intact. The wire protocol and its
 * failures are in live-stream tests; here only the device side.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { MigrationCoordinator } from '../../src/vm/coordinator';
import type { VfioPciDevice } from '../../src/model/vfio-pci';
import { MigState, migStateName } from '../../src/kernel/uapi/vfio';
import { MemoryStream } from '../helpers/memory-stream';
import { Guest, SECRET, bootedSource, destination, dispose, makeEnv, newHost, rejection, simOf, type Env } from './device-model-helpers';

const { RUNNING, STOP, RESUMING, PRE_COPY } = MigState;

let env: Env;
beforeEach(() => {
  env = makeEnv();
});
afterEach(() => dispose(env));

/** Every arc any of `devices` executes from now on, in order, as "id: FROM→TO" (the sims' own log). */
function arcsOf(devices: VfioPciDevice[]): () => string[] {
  const start = devices.map((d) => simOf(env, d).arcLog.length);
  const seen: string[] = [];
  // The engine emits in execution order; the sims' logs confirm each device's own sequence.
  return () => {
    seen.length = 0;
    devices.forEach((d, i) => simOf(env, d).arcLog.slice(start[i]).forEach(([a, b]) => seen.push(`${d.id}: ${migStateName(a)}→${migStateName(b)}`)));
    return seen;
  };
}

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
    // A second round has nothing new (the simulated device's precopy data is all initial data).
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
    const arcs = arcsOf([a.d, b.d]);
    stream.verdict = () => {
      throw Object.assign(new Error('refused'), { code: 'EVFIO_CONFIG_MISMATCH' });
    };
    await expect(vm.beginLiveSave(stream.sink)).rejects.toThrow('refused');
    expect(arcs()).toEqual([]);
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
});

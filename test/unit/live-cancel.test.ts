/**
 * Cancelling a live migration from every side and at every moment: cancel() while a precopy
 * round or the switchover is changing device states (the step in flight stops, then everything is
 * undone, once), the source's AbortSignal (the destination hears CANCEL), the destination's
 * AbortSignal (the source cancels itself at once), and the listeners a migration leaves behind.
 */
import { getEventListeners } from 'node:events';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { MigState, migStateName } from '../../src/kernel/uapi/vfio';
import { listen } from '../../src/live/listener';
import type { VfioPciDevice } from '../../src/model/vfio-pci';
import { MigrationCoordinator } from '../../src/vm/coordinator';
import type { Binding } from '../../src/kernel/binding/types';
import { intercept } from '../helpers/binding';
import { SECRET, bootedSource, destination, dispose, makeEnv, newHost, recordArcs, simOf, type Env, type Guest } from '../helpers/device-model';
import { rejection } from '../helpers/errors';
import { MemoryStream } from '../helpers/memory-stream';

let env: Env;
let sockDir: string;
beforeEach(() => {
  env = makeEnv();
  sockDir = fs.mkdtempSync(path.join(os.tmpdir(), 'live-cancel-'));
});
afterEach(() => {
  dispose(env);
  fs.rmSync(sockDir, { recursive: true, force: true });
});

function states(devs: VfioPciDevice[]): string[] {
  return devs.map((d) => migStateName(simOf(env, d).state));
}

/** `env.sim` with every ioctl issued off the JS thread taking `ms` (a driver slow to change state). */
function slowStateChanges(ms: number): Binding {
  const sim = env.sim;
  return intercept(sim, {
    ioctlAsync: async (fd, request, arg) => {
      await new Promise((r) => setTimeout(r, ms));
      return sim.ioctlAsync(fd, request, arg);
    },
  });
}

/** Three source devices, the middle one without PRE_COPY (it goes through RUNNING_P2P). */
function threeDevices(binding?: Binding): { guests: Guest[]; vm: MigrationCoordinator } {
  const host = newHost(env);
  const guests = [['a', 'sim:64KiB'], ['b', 'sim:64KiB:mig=stop_copy+p2p'], ['c', 'sim:64KiB']].map(([id, spec]) => bootedSource(env, spec, { id, host, binding }));
  guests[0].setRegisters(0xaaaa_0001, SECRET);
  return { guests, vm: new MigrationCoordinator(guests.map((g) => g.d)) };
}

/** A sink whose abort() takes `delayMs` (a slow peer): a cancel then overlaps the step longer. */
function slowAbortSink(ms: MemoryStream, delayMs: number): MemoryStream['sink'] {
  return {
    ...ms.sink,
    abort: async (r: unknown) => {
      if (delayMs) await new Promise((res) => setTimeout(res, delayMs));
      await ms.sink.abort(r);
    },
  };
}

describe('cancel() while a step is changing device states', () => {
  for (const trigger of [MigState.PRE_COPY_P2P, MigState.RUNNING_P2P, MigState.STOP_COPY, MigState.STOP]) {
    for (const [delayMs, slowMs] of [[0, 0], [5, 0], [0, 3]]) {
      it(`during the switchover, at the first arc to ${migStateName(trigger)} (abort takes ${delayMs} ms, each state change ${slowMs} ms): the switchover stops, every device runs with its state, nothing is finished`, async () => {
        const { guests, vm } = threeDevices(slowMs ? slowStateChanges(slowMs) : undefined);
        const ms = new MemoryStream();
        const live = await vm.beginLiveSave(slowAbortSink(ms, delayMs));
        await live.round();
        const arcs = recordArcs(env, guests.map((g) => g.d));
        let cancelling: Promise<void> | undefined;
        vm.on('state', (c) => {
          if (c.to === trigger && !cancelling) cancelling = live.cancel();
        });
        const sw = await rejection(live.switchover());
        expect(cancelling).toBeDefined();
        await cancelling;
        expect(sw.code).toBe('ECANCELED');
        expect(live.state).toBe('cancelled');
        expect(states(guests.map((g) => g.d))).toEqual(['RUNNING', 'RUNNING', 'RUNNING']);
        expect(guests[0].scratch(32)).toEqual(SECRET);
        expect(ms.log).toContain('abort');
        expect(ms.log).not.toContain('end');
        // Undone once, after the step stopped: each device that moved ended its arcs in RUNNING,
        // and no arc of the step ran after the undo began.
        for (const g of guests) expect(simOf(env, g.d).arcLog.at(-1)?.[1] ?? MigState.RUNNING).toBe(MigState.RUNNING);
        const firstRunning = arcs.findIndex((x) => x.endsWith('→RUNNING'));
        expect(firstRunning).toBeGreaterThanOrEqual(0);
        expect(arcs.slice(firstRunning).filter((x) => /→(STOP_COPY|PRE_COPY_P2P)$/.test(x))).toEqual([]);
        // The engine is free again: the VM can pause and resume.
        await vm.pause();
        await vm.resume();
      });
    }
  }

  it('during a precopy round, mid-transfer: the round stops, every device runs with its state', async () => {
    const host = newHost(env);
    const guests = [bootedSource(env, 'sim:1MiB:precopy=512KiB', { id: 'a', host }), bootedSource(env, 'sim:64KiB:mig=stop_copy+p2p', { id: 'b', host })];
    guests[0].setRegisters(0xaaaa_0001, SECRET);
    const vm = new MigrationCoordinator(guests.map((g) => g.d));
    const ms = new MemoryStream();
    const live = await vm.beginLiveSave(ms.sink);
    let cancelling: Promise<void> | undefined;
    vm.on('progress', (p) => {
      if (p.bytes > 0 && !cancelling) cancelling = live.cancel();
    });
    const err = await rejection(live.round());
    await cancelling;
    expect(err.code).toBe('ECANCELED');
    expect(live.state).toBe('cancelled');
    expect(states(guests.map((g) => g.d))).toEqual(['RUNNING', 'RUNNING']);
    expect(guests[0].scratch(32)).toEqual(SECRET);
    expect(ms.log).toEqual(['abort']);
    // A step asked for after the cancel says why it cannot run.
    expect((await rejection(live.switchover())).code).toBe('ECANCELED');
  });
});

describe('signals', () => {
  it("the source's AbortSignal in the middle of a precopy round: the destination still hears CANCEL (the return path's own end is not the peer's failure)", async () => {
    const host = newHost(env);
    const a = bootedSource(env, 'sim:4MiB', { id: 'a', host });
    const vm = new MigrationCoordinator([a.d]);
    const dst = destination(env, a.host, [{ spec: 'sim:4MiB', id: 'a' }]);
    const listener = await listen(`unix:${path.join(sockDir, 'r.sock')}`);
    try {
      const incoming = new MigrationCoordinator(dst.devices).incoming(listener);
      incoming.catch(() => undefined);
      const ac = new AbortController();
      const mig = await vm.migrate(listener.uri, { signal: ac.signal });
      // The abort comes while the round's transfer is in flight: the cancel waits for it, and the
      // return path, whose read the same signal ends, must not be taken for the peer failing.
      const round = mig.iterate();
      round.catch(() => undefined);
      ac.abort();
      const derr = await rejection(incoming);
      expect(derr.code).toBe('EVFIO_PEER_CANCELLED');
      expect((await rejection(round)).code).toBe('ECANCELED');
      await expect.poll(() => states([a.d]), { timeout: 2000 }).toEqual(['RUNNING']);
    } finally {
      await listener.close();
    }
  });

  it("the source's AbortSignal in precopy: the destination hears CANCEL (EVFIO_PEER_CANCELLED), the source runs on, one `cancelled` event", async () => {
    const host = newHost(env);
    const a = bootedSource(env, 'sim:256KiB', { id: 'a', host });
    const vm = new MigrationCoordinator([a.d]);
    const dst = destination(env, a.host, [{ spec: 'sim:256KiB', id: 'a' }]);
    const listener = await listen(`unix:${path.join(sockDir, 'm.sock')}`);
    try {
      const incoming = new MigrationCoordinator(dst.devices).incoming(listener);
      incoming.catch(() => undefined);
      const ac = new AbortController();
      const mig = await vm.migrate(listener.uri, { signal: ac.signal });
      const cancelled: unknown[] = [];
      mig.on('cancelled', (c) => cancelled.push(c.reason));
      await mig.iterate();
      ac.abort();
      const derr = await rejection(incoming);
      expect(derr.code).toBe('EVFIO_PEER_CANCELLED');
      expect(states(dst.devices)).toEqual(['RUNNING']);
      await expect.poll(() => states([a.d]), { timeout: 2000 }).toEqual(['RUNNING']);
      expect(mig.state).toBe('cancelled');
      expect(cancelled).toHaveLength(1);
      expect((await rejection(mig.iterate())).code).toBe('ECANCELED');
    } finally {
      await listener.close();
    }
  });

  it("the destination's AbortSignal while the source waits in precopy: the source hears CANCEL and cancels itself at once (event, devices RUNNING)", async () => {
    const host = newHost(env);
    const a = bootedSource(env, 'sim:256KiB', { id: 'a', host });
    a.setRegisters(0xaaaa_0001, SECRET);
    const vm = new MigrationCoordinator([a.d]);
    const dst = destination(env, a.host, [{ spec: 'sim:256KiB', id: 'a' }]);
    const listener = await listen(`unix:${path.join(sockDir, 'm.sock')}`);
    try {
      const ac = new AbortController();
      const incoming = new MigrationCoordinator(dst.devices).incoming(listener, { signal: ac.signal });
      incoming.catch(() => undefined);
      // A long peer timeout: only the destination's CANCEL can end this quickly.
      const mig = await vm.migrate(listener.uri, { peerTimeoutMs: 30_000 });
      const cancelled = new Promise<unknown>((r) => mig.once('cancelled', (c) => r(c.reason)));
      expect(states([a.d])).toEqual(['PRE_COPY']);
      ac.abort();
      expect((await rejection(incoming)).kind).toBe('cancelled');
      const reason = await cancelled;
      expect(reason).toMatchObject({ code: 'EVFIO_PEER_CANCELLED' });
      await expect.poll(() => states([a.d]), { timeout: 2000 }).toEqual(['RUNNING']);
      expect(mig.state).toBe('cancelled');
      expect(a.scratch(32)).toEqual(SECRET);
      expect((await rejection(mig.iterate())).code).toBe('EVFIO_PEER_CANCELLED');
    } finally {
      await listener.close();
    }
  });
});

describe('listeners', () => {
  it('a migration removes every listener it added (coordinator, signal) whether it failed, was cancelled or completed', async () => {
    const host = newHost(env);
    const a = bootedSource(env, 'sim:256KiB', { id: 'a', host });
    const vm = new MigrationCoordinator([a.d]);
    const counts = (): number[] => [vm.listenerCount('state'), vm.listenerCount('progress')];
    const before = counts();
    const ac = new AbortController();
    const signalListeners = (): number => getEventListeners(ac.signal, 'abort').length;
    const baseSignal = signalListeners();
    for (const how of ['fails', 'fails', 'cancelled', 'completes'] as const) {
      const dst = destination(env, a.host, [{ spec: 'sim:256KiB', id: 'a' }]);
      if (how === 'fails') simOf(env, dst.devices[0]).failDataFd({ after: 1000, errno: 'EIO', on: 'write' });
      const listener = await listen(`unix:${path.join(sockDir, `m-${how}-${counts().join('')}.sock`)}`);
      try {
        const incoming = new MigrationCoordinator(dst.devices).incoming(listener, { resume: true });
        incoming.catch(() => undefined);
        const mig = await vm.migrate(listener.uri, { signal: ac.signal });
        const progress: number[] = [];
        mig.on('progress', (p) => progress.push(p.bytes));
        if (how === 'fails') expect((await rejection(mig.run())).code).toBe('EVFIO_PEER_FAILED');
        else if (how === 'cancelled') await mig.cancel();
        else await mig.run();
        await incoming.catch(() => undefined);
        expect(counts()).toEqual(before);
        expect(signalListeners()).toBe(baseSignal);
        // The finished migration re-emits nothing of later jobs.
        const seen = progress.length;
        if (how !== 'completes') {
          await vm.pause();
          await vm.snapshot(path.join(sockDir, `s-${seen}.snap`), { noSync: true });
          await vm.resume();
          expect(progress.length).toBe(seen);
        }
      } finally {
        await listener.close();
      }
    }
  });
});

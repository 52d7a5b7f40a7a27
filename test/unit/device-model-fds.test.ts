/**
 * No fd leaks in the device model's lifecycle (STYLE rule 4): 50 cycles of attach, guest
 * set-up (eventfds from the router), pause + snapshot (a real file, a sim data_fd), restore into
 * a second device (another data_fd, re-armed eventfds), resume, interrupt, detach and close —
 * counting the real fds in /proc/self/fd and the SimBinding's virtual ones. Failed restores are
 * mixed in, since error paths are where fds leak.
 */
import * as fs from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { MigrationCoordinator } from '../../src/vm/coordinator';
import { Guest, SECRET, bootedSource, destination, dispose, file, makeEnv, simOf, snapshotVm, type Env } from '../helpers/device-model';
import { rejection } from '../helpers/errors';
import { openFdCount } from '../helpers/fds';

let env: Env;
beforeEach(() => {
  env = makeEnv();
});
afterEach(() => dispose(env));

const CYCLES = 50;

async function cycle(i: number): Promise<void> {
  const inner: Env = { ...env, cleanup: [] };
  try {
    const src = bootedSource(inner, 'sim:16KiB', { vectors: [0, 1] });
    const f = file(env, `cycle-${i}.vfiosnap`);
    const vmA = await snapshotVm([src.d], f);
    const { host, devices: [dst] } = destination(inner, src.host, [{ spec: 'sim:16KiB' }]);
    if (i % 5 === 4) {
      // every fifth cycle: a restore that fails half-way through the stream, then the retry
      simOf(inner, dst).failDataFd({ after: 2048, errno: 'EIO', on: 'write' });
      expect((await rejection(new MigrationCoordinator([dst]).restore(f))).code).toBe('EIO');
    }
    const vmB = new MigrationCoordinator([dst]);
    await vmB.restore(f);
    await vmB.resume();
    const g = new Guest(dst, host);
    expect(g.scratch(SECRET.length)).toEqual(SECRET);
    g.ring(1);
    expect(await g.wait(1)).toBe(1);
    await vmA.resume();
    fs.unlinkSync(f);
  } finally {
    dispose(inner);
  }
}

describe('fds across the lifecycle', () => {
  it(`${CYCLES} attach/snapshot/restore/detach cycles leave no real or virtual fd open`, async () => {
    await cycle(-1); // warm-up: lazily opened process-wide fds (the addon, libuv) are not leaks
    const real = openFdCount();
    const virtual = env.sim.openFdCount();
    expect(virtual).toBe(0);
    for (let i = 0; i < CYCLES; i++) {
      await cycle(i);
      expect(env.sim.openFds(), `cycle ${i}`).toEqual([]);
    }
    expect(openFdCount()).toBe(real);
    expect(env.sim.devices().every((d) => !d.isOpen && d.openFds === 0)).toBe(true);
    expect(env.sim.devices()).toHaveLength(2 * (CYCLES + 1));
  });
});

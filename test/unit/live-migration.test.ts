/**
 * Live migration between two VMs in one process (src/live/migration.ts through
 * MigrationCoordinator.migrate/incoming), over real sockets (unix and TCP loopback, the native
 * pump) and over a Node Duplex (the JS path), on simulated devices: the whole exchange, the
 * destination's early refusal, and the failures of either side in each phase.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { MigrationCoordinator } from '../../src/vm/coordinator';
import { listen, type Listener } from '../../src/live/listener';
import { MigState, migStateName } from '../../src/kernel/uapi/vfio';
import type { VfioPciDevice } from '../../src/model/vfio-pci';
import { Guest, SECRET, bootedSource, destination, dispose, makeEnv, newHost, simOf, type Env } from '../helpers/device-model';
import { rejection } from '../helpers/errors';

const { RUNNING, STOP, RESUMING } = MigState;

let env: Env;
let sockDir: string;
beforeEach(() => {
  env = makeEnv();
  sockDir = fs.mkdtempSync(path.join(os.tmpdir(), 'live-'));
});
afterEach(() => {
  dispose(env);
  fs.rmSync(sockDir, { recursive: true, force: true });
});

/** Two booted source devices a, b (distinct scratch contents) and their coordinator. */
function sourceVm(spec = 'sim:256KiB'): { a: Guest; b: Guest; vm: MigrationCoordinator } {
  const host = newHost(env);
  const a = bootedSource(env, spec, { id: 'a', host });
  const b = bootedSource(env, spec, { id: 'b', host });
  a.setRegisters(0xaaaa_0001, SECRET);
  b.setRegisters(0xbbbb_0001, Buffer.alloc(32, 0x3c));
  return { a, b, vm: new MigrationCoordinator([a.d, b.d]) };
}

function destVm(srcHost: Guest['host'], spec = 'sim:256KiB'): { devices: VfioPciDevice[]; host: Guest['host']; vm: MigrationCoordinator } {
  const dst = destination(env, srcHost, [{ spec, id: 'a' }, { spec, id: 'b' }]);
  return { ...dst, vm: new MigrationCoordinator(dst.devices) };
}

function states(devs: VfioPciDevice[]): string[] {
  return devs.map((d) => migStateName(simOf(env, d).state));
}

/** A promise whose rejection is handled now and looked at later. */
function later<T>(p: Promise<T>): Promise<T> {
  p.catch(() => undefined);
  return p;
}

async function listenUnix(): Promise<Listener> {
  return listen(`unix:${path.join(sockDir, 'mig.sock')}`);
}

describe('live migration between two coordinators', () => {
  for (const transport of ['unix', 'tcp'] as const) {
    it(`${transport}: precopy, switchover-ack, P2P switchover, models; the destination runs with the source's state`, async () => {
      const { a, b, vm } = sourceVm();
      const dst = destVm(a.host);
      const listener = await listen(transport === 'unix' ? `unix:${path.join(sockDir, 'mig.sock')}` : 'tcp:127.0.0.1:0');
      try {
        const incoming = dst.vm.incoming(listener, { resume: true });
        const events: string[] = [];
        const mig = await vm.migrate(listener.uri);
        mig.on('switchover-ready', () => events.push('switchover-ready'));
        mig.on('downtime', (d) => events.push(`downtime ${d.ms > 0}`));
        expect(states([a.d, b.d])).toEqual(['PRE_COPY', 'PRE_COPY']);
        expect(mig.pending().ackReceived).toBe(false);
        const stopped: string[] = [];
        const result = await mig.run(() => {
          stopped.push(...states([a.d, b.d]));
        });
        // The VMM's hook ran while the devices were still in PRE_COPY (they stop in switchover()).
        expect(stopped).toEqual(['PRE_COPY', 'PRE_COPY']);
        expect(events).toEqual(['switchover-ready', 'downtime true']);
        expect(result.iterations).toBeGreaterThanOrEqual(1);
        expect(result.downtimeMs).toBeGreaterThan(0);
        expect(result.destinationResumed).toBe(true);
        for (const d of result.devices) expect(d.precopyBytes + d.stopCopyBytes).toBe(simOf(env, a.d).streamLength);
        expect(states([a.d, b.d])).toEqual(['STOP', 'STOP']);
        const r = await incoming;
        expect(r.resumed).toBe(true);
        expect(r.devices.map((d) => d.id)).toEqual(['a', 'b']);
        expect(states(dst.devices)).toEqual(['RUNNING', 'RUNNING']);
        const [da, db] = dst.devices.map((d) => new Guest(d, dst.host));
        expect(da.scratch(32)).toEqual(SECRET);
        expect(db.scratch(32)).toEqual(Buffer.alloc(32, 0x3c));
        expect(dst.host.bus.mappings()).toEqual(a.host.bus.mappings());
        da.ring(0);
        expect(await da.wait(0)).toBe(1);
      } finally {
        await listener.close();
      }
    });
  }

  it('over a Duplex the VMM hands in (bytes through JavaScript): the same result', async () => {
    const { a, vm } = sourceVm('sim:64KiB');
    const dst = destVm(a.host, 'sim:64KiB');
    const sock = path.join(sockDir, 'duplex.sock');
    const server = net.createServer();
    await new Promise<void>((r) => server.listen(sock, r));
    try {
      const accepted = new Promise<net.Socket>((r) => server.once('connection', r));
      const client = net.connect(sock);
      await new Promise<void>((r) => client.once('connect', () => r()));
      const incoming = dst.vm.incoming(await accepted);
      const mig = await vm.migrate(client);
      await mig.run();
      const r = await incoming;
      expect(r.resumed).toBe(false);
      expect(states(dst.devices)).toEqual(['RESUMING', 'RESUMING']);
      await dst.vm.resume();
      expect(new Guest(dst.devices[0], dst.host).scratch(32)).toEqual(SECRET);
    } finally {
      server.close();
    }
  });

  it('an incompatible destination refuses before the source touches anything', async () => {
    const { a, b, vm } = sourceVm('sim:64KiB');
    const dst = destination(env, a.host, [{ spec: 'sim:64KiB', id: 'a' }, { spec: 'sim:64KiB:devid=0x5f11', id: 'b' }]);
    const listener = await listenUnix();
    try {
      const incoming = later(new MigrationCoordinator(dst.devices).incoming(listener));
      const arcsBefore = [a, b].map((g) => simOf(env, g.d).arcLog.length);
      const err = await rejection(vm.migrate(listener.uri));
      expect(err.code).toBe('EVFIO_PEER_REFUSED');
      expect(err.kind).toBe('mismatch');
      expect(err.message).toContain('deviceId 0x5f10 ≠ 0x5f11');
      expect([a, b].map((g) => simOf(env, g.d).arcLog.length)).toEqual(arcsBefore);
      expect(states([a.d, b.d])).toEqual(['RUNNING', 'RUNNING']);
      const derr = await rejection(incoming);
      expect(derr.code).toBe('EVFIO_DEVICE_MISMATCH');
      expect(states(dst.devices)).toEqual(['RUNNING', 'RUNNING']);
      expect(dst.devices.every((d) => simOf(env, d).arcLog.length === 0)).toBe(true);
    } finally {
      await listener.close();
    }
  });

  it('the source cancels in precopy: every source device runs on with its state, the destination resets its devices', async () => {
    const { a, b, vm } = sourceVm();
    const dst = destVm(a.host);
    const listener = await listenUnix();
    try {
      const incoming = later(dst.vm.incoming(listener));
      const mig = await vm.migrate(listener.uri);
      await mig.iterate();
      await mig.cancel();
      expect(mig.state).toBe('cancelled');
      expect(states([a.d, b.d])).toEqual(['RUNNING', 'RUNNING']);
      expect(a.scratch(32)).toEqual(SECRET);
      const derr = await rejection(incoming);
      expect(derr.code).toBe('EVFIO_PEER_CANCELLED');
      expect(states(dst.devices)).toEqual(['RUNNING', 'RUNNING']);
      expect(dst.devices.every((d) => simOf(env, d).arcLog.some(([, to]) => to === RESUMING))).toBe(true);
      expect(dst.host.bus.mappings()).toEqual([]);
      // The source can migrate again afterwards.
      await vm.pause();
      await vm.resume();
    } finally {
      await listener.close();
    }
  });

  it('the destination fails to load a frame: it resets its devices and says so; the source runs on', async () => {
    const { a, b, vm } = sourceVm();
    const dst = destVm(a.host);
    simOf(env, dst.devices[1]).failDataFd({ after: 1000, errno: 'EIO', on: 'write' });
    const listener = await listenUnix();
    try {
      const incoming = later(dst.vm.incoming(listener));
      const mig = await vm.migrate(listener.uri);
      const err = await rejection(mig.run());
      expect(err.code).toBe('EVFIO_PEER_FAILED');
      expect(err.message).toMatch(/EIO/);
      expect(states([a.d, b.d])).toEqual(['RUNNING', 'RUNNING']);
      expect(err.deviceState?.map((o) => o.state)).toEqual(['RUNNING', 'RUNNING']);
      const derr = await rejection(incoming);
      expect(derr.code).toBe('EIO');
      expect(states(dst.devices)).toEqual(['RUNNING', 'RUNNING']);
    } finally {
      await listener.close();
    }
  });

  it('a destination that vanishes (its connection closed mid-migration): the source fails within the peer timeout and runs on', async () => {
    const { a, b, vm } = sourceVm();
    const sock = path.join(sockDir, 'vanish.sock');
    const server = net.createServer((s) => {
      // Read the HELLO, answer nothing, then go away.
      s.once('data', () => setTimeout(() => s.destroy(), 50));
    });
    await new Promise<void>((r) => server.listen(sock, r));
    try {
      const t0 = Date.now();
      const err = await rejection(vm.migrate(`unix:${sock}`, { peerTimeoutMs: 2000 }));
      expect(['EVFIO_PEER_CLOSED', 'ECONNRESET', 'EPIPE']).toContain(err.code);
      expect(Date.now() - t0).toBeLessThan(2000);
      expect(states([a.d, b.d])).toEqual(['RUNNING', 'RUNNING']);
    } finally {
      server.close();
    }
  });

  it('a destination that stalls: the handshake fails with ETIMEDOUT within its bound, nothing touched', async () => {
    const { a, b, vm } = sourceVm('sim:64KiB');
    const sock = path.join(sockDir, 'stall.sock');
    const held: net.Socket[] = [];
    const server = net.createServer((s) => void held.push(s));
    await new Promise<void>((r) => server.listen(sock, r));
    try {
      const t0 = Date.now();
      const err = await rejection(vm.migrate(`unix:${sock}`, { handshakeTimeoutMs: 300 }));
      expect(err.code).toBe('ETIMEDOUT');
      expect(Date.now() - t0).toBeLessThan(3000);
      expect(states([a.d, b.d])).toEqual(['RUNNING', 'RUNNING']);
    } finally {
      held.forEach((s) => s.destroy());
      server.close();
    }
  });

  it('a source whose devices are not running gives up before its HELLO: the destination reports why (not a foreign peer), nothing touched on either side', async () => {
    const { a, b, vm } = sourceVm('sim:64KiB');
    const dst = destVm(a.host, 'sim:64KiB');
    await vm.pause();
    const listener = await listenUnix();
    try {
      const incoming = later(dst.vm.incoming(listener));
      const err = await rejection(vm.migrate(listener.uri));
      expect(err.code).toBe('EVFIO_BAD_TRANSITION');
      const derr = await rejection(incoming);
      // The source failed (it did not cancel): its ERROR says why, before any HELLO.
      expect(derr.code).toBe('EVFIO_PEER_FAILED');
      expect(derr.message).toMatch(/live migration needs running devices/);
      expect(states([a.d, b.d])).toEqual(['STOP', 'STOP']);
      expect(states(dst.devices)).toEqual(['RUNNING', 'RUNNING']);
    } finally {
      await listener.close();
    }
  });

  it('postcopy is refused with a clear error', async () => {
    const { vm } = sourceVm('sim:4KiB');
    const err = await rejection(vm.migrate('unix:/nonexistent', { postcopy: true }));
    expect(err.code).toBe('EVFIO_POSTCOPY');
    expect(err.message).toMatch(/postcopy/);
  });

  it('STOP after the switchover; the source can still be resumed by the VMM', async () => {
    const { a, b, vm } = sourceVm('sim:64KiB');
    const dst = destVm(a.host, 'sim:64KiB');
    const listener = await listenUnix();
    try {
      const incoming = later(dst.vm.incoming(listener));
      const mig = await vm.migrate(listener.uri);
      await mig.run();
      await incoming;
      expect(states([a.d, b.d])).toEqual(['STOP', 'STOP']);
      await vm.resume();
      expect(states([a.d, b.d])).toEqual(['RUNNING', 'RUNNING']);
      expect(simOf(env, a.d).state).toBe(RUNNING);
      void STOP;
    } finally {
      await listener.close();
    }
  });
});

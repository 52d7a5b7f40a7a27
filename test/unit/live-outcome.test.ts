/**
 * How a live migration ends, in the cases where the two sides could disagree: the destination
 * failing after LOADED, LOADED or RESUMED lost on the way (EVFIO_OUTCOME_UNKNOWN: the source
 * never resumes on a guess), a REINIT between a round and the switchover (the switchover-ack gate
 * closes again, and an ack for the earlier data is stale), and VMs whose devices have no
 * PRE_COPY (they switch over without iterating).
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { POLLIN } from '../../src/kernel/binding/types';
import { SHUT_RD } from '../../src/kernel/uapi/socket';
import { MigState, migStateName } from '../../src/kernel/uapi/vfio';
import { FRAME_HEADER_SIZE, FrameType, PROTOCOL_VERSION, WHOLE_STREAM, encodeAccept, encodeAckGeneration, encodeHeader } from '../../src/live/frames';
import { listen } from '../../src/live/listener';
import type { VfioPciDevice } from '../../src/model/vfio-pci';
import { MigrationCoordinator } from '../../src/vm/coordinator';
import { Guest, SECRET, bootedSource, destination, dispose, makeEnv, newHost, recordArcs, simOf, type Env } from '../helpers/device-model';
import { realBinding } from '../helpers/binding';
import { rejection } from '../helpers/errors';
import { socketPair } from '../helpers/socket';

let env: Env;
let sockDir: string;
beforeEach(() => {
  env = makeEnv();
  sockDir = fs.mkdtempSync(path.join(os.tmpdir(), 'live-outcome-'));
});
afterEach(() => {
  dispose(env);
  fs.rmSync(sockDir, { recursive: true, force: true });
});

function states(devs: VfioPciDevice[]): string[] {
  return devs.map((d) => migStateName(simOf(env, d).state));
}

/** Whether `chunk` is one whole-stream control frame of `type` (the link writes each in one piece). */
function isFrame(chunk: unknown, type: FrameType): boolean {
  return Buffer.isBuffer(chunk) && chunk.length >= FRAME_HEADER_SIZE && chunk[0] === type && chunk.readUInt16LE(2) === WHOLE_STREAM
    && chunk.length === FRAME_HEADER_SIZE + chunk.readUInt32LE(4);
}

/**
 * A connected pair of UNIX sockets, the destination's end with its writes of `type` frames
 * handed to `onFrame` (which decides what reaches the wire: call `forward()` to send it).
 */
async function interceptedPair(
  type: FrameType,
  onFrame: (forward: () => boolean, ends: { src: net.Socket; dst: net.Socket }) => boolean,
): Promise<{ src: net.Socket; dst: net.Socket; close: () => void }> {
  const sock = path.join(sockDir, `pair-${type}.sock`);
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(sock, r));
  const accepted = new Promise<net.Socket>((r) => server.once('connection', r));
  const src = net.connect(sock);
  await new Promise<void>((r) => src.once('connect', () => r()));
  const dst = await accepted;
  const write = dst.write.bind(dst) as (chunk: unknown, ...rest: unknown[]) => boolean;
  (dst as unknown as { write: typeof write }).write = (chunk, ...rest) => (isFrame(chunk, type) ? onFrame(() => write(chunk, ...rest), { src, dst }) : write(chunk, ...rest));
  return { src, dst, close: () => server.close() };
}

/** One source device with SECRET in its scratch, and a destination for it. */
function pair(spec = 'sim:64KiB'): { a: Guest; vm: MigrationCoordinator; dst: { devices: VfioPciDevice[]; host: Guest['host']; vm: MigrationCoordinator } } {
  const host = newHost(env);
  const a = bootedSource(env, spec, { id: 'a', host });
  a.setRegisters(0xaaaa_0001, SECRET);
  const d = destination(env, a.host, [{ spec, id: 'a' }]);
  return { a, vm: new MigrationCoordinator([a.d]), dst: { ...d, vm: new MigrationCoordinator(d.devices) } };
}

describe('after END: the destination decides, and silence is not a failure', () => {
  it('the destination fails to run its devices after LOADED: its ERROR reaches the source at once, which runs on', async () => {
    const { a, vm, dst } = pair();
    simOf(env, dst.devices[0]).failArc({ from: MigState.RESUMING }, 'EINVAL');
    const listener = await listen(`unix:${path.join(sockDir, 'm.sock')}`);
    try {
      const incoming = dst.vm.incoming(listener, { resume: true });
      incoming.catch(() => undefined);
      const mig = await vm.migrate(listener.uri); // the default 60 s bound on the wait after END
      const t0 = Date.now();
      const err = await rejection(mig.run());
      expect(Date.now() - t0).toBeLessThan(5000);
      expect(err.code).toBe('EVFIO_PEER_FAILED');
      expect(err.message).toMatch(/EINVAL/);
      expect(mig.state).toBe('failed');
      expect(states([a.d])).toEqual(['RUNNING']);
      expect(a.scratch(32)).toEqual(SECRET);
      expect((await rejection(incoming)).code).toBe('EINVAL');
      expect(states(dst.devices)).toEqual(['RUNNING']);
      expect(dst.vm.hasLoadedState).toBe(false);
    } finally {
      await listener.close();
    }
  });

  for (const resume of [true, false]) {
    it(`LOADED cannot be sent (destination ${resume ? 'runs its devices' : 'leaves them to its VMM'}): the destination discards the load; the source ${resume ? 'cannot know, and keeps its devices stopped (EVFIO_OUTCOME_UNKNOWN)' : 'runs on'}`, async () => {
      const { a, vm, dst } = pair();
      const link = await interceptedPair(FrameType.LOADED, (_forward, ends) => {
        ends.dst.destroy();
        ends.src.destroy();
        return false;
      });
      try {
        const incoming = dst.vm.incoming(link.dst, { resume });
        incoming.catch(() => undefined);
        const mig = await vm.migrate(link.src, { completeTimeoutMs: 2000 });
        const err = await rejection(mig.run());
        await rejection(incoming);
        expect(states(dst.devices)).toEqual(['RUNNING']);
        expect(dst.vm.hasLoadedState).toBe(false);
        expect(dst.host.bus.mappings()).toEqual([]);
        if (resume) {
          expect(err.code).toBe('EVFIO_OUTCOME_UNKNOWN');
          expect(err.message).toContain('resume them only if the destination did not');
          expect(states([a.d])).toEqual(['STOP']);
          expect(mig.state).toBe('failed');
          // A cancel now changes nothing: only the VMM, which can ask the destination, may resume.
          await mig.cancel();
          expect(states([a.d])).toEqual(['STOP']);
          await vm.resume();
          expect(a.scratch(32)).toEqual(SECRET);
        } else {
          expect(err.code).not.toBe('EVFIO_OUTCOME_UNKNOWN');
          expect(states([a.d])).toEqual(['RUNNING']);
          expect(a.scratch(32)).toEqual(SECRET);
        }
      } finally {
        link.close();
      }
    });
  }

  it('the connection is lost as the destination reports RESUMED: it runs the devices, the source keeps its own stopped (EVFIO_OUTCOME_UNKNOWN)', async () => {
    const { a, vm, dst } = pair();
    const link = await interceptedPair(FrameType.RESUMED, (_forward, ends) => {
      ends.dst.destroy();
      ends.src.destroy();
      return false;
    });
    try {
      const incoming = dst.vm.incoming(link.dst, { resume: true });
      incoming.catch(() => undefined);
      const mig = await vm.migrate(link.src);
      const err = await rejection(mig.run());
      expect(err.code).toBe('EVFIO_OUTCOME_UNKNOWN');
      expect(states([a.d])).toEqual(['STOP']);
      // The destination ran them (a lost RESUMED is only logged there).
      const r = await incoming;
      expect(r.resumed).toBe(true);
      expect(states(dst.devices)).toEqual(['RUNNING']);
      expect(new Guest(dst.devices[0], dst.host).scratch(32)).toEqual(SECRET);
    } finally {
      link.close();
    }
  });

  it('a destination that goes silent after LOADED (RESUMED never comes): EVFIO_OUTCOME_UNKNOWN at the complete timeout, the source stays stopped', async () => {
    const { a, vm, dst } = pair();
    const link = await interceptedPair(FrameType.RESUMED, () => true); // a write that never completes: the connection stays up, silent
    try {
      const incoming = dst.vm.incoming(link.dst, { resume: true, peerTimeoutMs: 1000 });
      incoming.catch(() => undefined);
      const mig = await vm.migrate(link.src, { completeTimeoutMs: 300 });
      const err = await rejection(mig.run());
      expect(err.code).toBe('EVFIO_OUTCOME_UNKNOWN');
      expect(err.message).toContain('and loaded it');
      expect((err.cause as { code?: string }).code).toBe('ETIMEDOUT');
      expect(states([a.d])).toEqual(['STOP']);
      expect((await incoming).resumed).toBe(true);
    } finally {
      link.dst.destroy();
      link.src.destroy();
      link.close();
    }
  });
});

describe('REINIT and the switchover-ack', () => {
  const spec = 'sim:64KiB:precopy=16KiB:infov2=on';

  it('a REINIT after the ack closes the gate: switchover() is refused (EVFIO_SWITCHOVER_ACK_PENDING) and the migration goes on; the next round resends, the new ack reopens it', async () => {
    const { a, vm, dst } = pair(spec);
    const listener = await listen(`unix:${path.join(sockDir, 'm.sock')}`);
    try {
      const incoming = dst.vm.incoming(listener, { resume: true });
      incoming.catch(() => undefined);
      const mig = await vm.migrate(listener.uri);
      await mig.iterate();
      await expect.poll(() => mig.pending().ackReceived, { timeout: 2000 }).toBe(true);
      simOf(env, a.d).reinitialize(8 * 4096);
      const p = mig.pending();
      expect(p.ackReceived).toBe(false);
      expect(p.ready).toBe(false);
      expect(p.devices[0].initialPending).toBe(true);
      const refused = await rejection(mig.switchover());
      expect(refused.code).toBe('EVFIO_SWITCHOVER_ACK_PENDING');
      expect(mig.state).toBe('precopy');
      expect(states([a.d])).toEqual(['PRE_COPY']);
      await mig.iterate();
      await expect.poll(() => mig.pending().ackReceived, { timeout: 2000 }).toBe(true);
      const result = await mig.switchover();
      expect(result.devices[0].precopyBytes).toBeGreaterThan(16 * 1024);
      expect((await incoming).resumed).toBe(true);
      expect(new Guest(dst.devices[0], dst.host).scratch(32)).toEqual(SECRET);
    } finally {
      await listener.close();
    }
  });

  it('an ack for the data before a REINIT, arriving after it, is stale and ignored: only the ack for the new data opens the gate', async () => {
    const { a, vm, dst } = pair(spec);
    let held: (() => boolean) | undefined;
    const link = await interceptedPair(FrameType.SWITCHOVER_ACK, (forward) => {
      if (held === undefined) {
        held = forward; // the first ack (generation 0) waits on the wire
        return true;
      }
      return forward();
    });
    try {
      const incoming = dst.vm.incoming(link.dst, { resume: true });
      incoming.catch(() => undefined);
      const mig = await vm.migrate(link.src);
      let acks = 0;
      mig.sink.on('switchover-ack', () => acks++);
      await mig.iterate();
      await expect.poll(() => held !== undefined, { timeout: 2000 }).toBe(true);
      simOf(env, a.d).reinitialize(8 * 4096);
      await mig.iterate(); // REINIT and the new initial data; the destination's second ack queues behind the first
      held!();
      await expect.poll(() => mig.pending().ackReceived, { timeout: 2000 }).toBe(true);
      await new Promise((r) => setTimeout(r, 50));
      expect(acks).toBe(1);
      await mig.run();
      expect((await incoming).resumed).toBe(true);
    } finally {
      link.close();
    }
  });
});

describe('devices without PRE_COPY', () => {
  it('a stop-copy-only device with 64 MiB of state migrates with the default options: no rounds, straight to the switchover', async () => {
    const specA = 'sim:64MiB:mig=stop_copy+p2p';
    const { a, vm, dst } = pair(specA);
    const listener = await listen(`unix:${path.join(sockDir, 'm.sock')}`);
    try {
      const incoming = dst.vm.incoming(listener, { resume: true });
      incoming.catch(() => undefined);
      const mig = await vm.migrate(listener.uri);
      const result = await mig.run();
      expect(result.iterations).toBe(0);
      expect(result.precopyBytes).toBe(0);
      expect(result.stopCopyBytes).toBe(simOf(env, a.d).streamLength);
      expect((await incoming).resumed).toBe(true);
      expect(new Guest(dst.devices[0], dst.host).scratch(32)).toEqual(SECRET);
    } finally {
      await listener.close();
    }
  }, 60_000);

  it('a VM mixing a PRE_COPY device and a stop-copy-only one: P2P quiesce takes each through its own P2P state, both arrive', async () => {
    const host = newHost(env);
    const a = bootedSource(env, 'sim:256KiB', { id: 'a', host });
    const b = bootedSource(env, 'sim:256KiB:mig=stop_copy+p2p', { id: 'b', host });
    a.setRegisters(0xaaaa_0001, SECRET);
    b.setRegisters(0xbbbb_0001, Buffer.alloc(32, 0x5a));
    const vm = new MigrationCoordinator([a.d, b.d]);
    const d = destination(env, host, [{ spec: 'sim:256KiB', id: 'a' }, { spec: 'sim:256KiB:mig=stop_copy+p2p', id: 'b' }]);
    const listener = await listen(`unix:${path.join(sockDir, 'm.sock')}`);
    try {
      const incoming = new MigrationCoordinator(d.devices).incoming(listener, { resume: true });
      incoming.catch(() => undefined);
      const arcs = recordArcs(env, [a.d, b.d]);
      const mig = await vm.migrate(listener.uri);
      const result = await mig.run();
      expect(result.iterations).toBeGreaterThanOrEqual(1);
      // Each through its own P2P state, both before either stops (the P2P rule).
      expect(arcs).toEqual([
        'a: RUNNING→PRE_COPY',
        'a: PRE_COPY→PRE_COPY_P2P', 'b: RUNNING→RUNNING_P2P',
        // RUNNING_P2P → STOP_COPY goes through STOP (vfio_mig_get_next_state).
        'a: PRE_COPY_P2P→STOP_COPY', 'b: RUNNING_P2P→STOP', 'b: STOP→STOP_COPY',
        'a: STOP_COPY→STOP', 'b: STOP_COPY→STOP',
      ]);
      expect((await incoming).resumed).toBe(true);
      expect(new Guest(d.devices[0], d.host).scratch(32)).toEqual(SECRET);
      expect(new Guest(d.devices[1], d.host).scratch(32)).toEqual(Buffer.alloc(32, 0x5a));
    } finally {
      await listener.close();
    }
  });
});

describe('a destination that breaks the protocol', () => {
  /** A raw destination: reads the HELLO, answers with `frames`, then stays connected. */
  async function rawDestination(frames: Array<{ type: FrameType; device?: number; payload?: Buffer }>): Promise<{ uri: string; close: () => void }> {
    const sock = path.join(sockDir, 'raw.sock');
    const conns: net.Socket[] = [];
    const server = net.createServer((s) => {
      conns.push(s);
      // All in one write: the frames reach the source together.
      s.once('data', () => void s.write(Buffer.concat(frames.flatMap((f) => [encodeHeader(f.type, f.device ?? WHOLE_STREAM, f.payload), f.payload ?? Buffer.alloc(0)]))));
    });
    await new Promise<void>((r) => server.listen(sock, r));
    return { uri: `unix:${sock}`, close: () => { conns.forEach((c) => c.destroy()); server.close(); } };
  }

  it('an ACCEPT of another protocol version: refused before any device is touched (EVFIO_PROTOCOL_VERSION)', async () => {
    const { a, vm } = pair();
    const arcs = recordArcs(env, [a.d]);
    const raw = await rawDestination([{ type: FrameType.ACCEPT, payload: encodeAccept({ version: PROTOCOL_VERSION + 1, features: [], resumes: false }) }]);
    try {
      const err = await rejection(vm.migrate(raw.uri));
      expect(err.code).toBe('EVFIO_PROTOCOL_VERSION');
      expect(arcs).toEqual([]);
      expect(states([a.d])).toEqual(['RUNNING']);
    } finally {
      raw.close();
    }
  });

  it('a return-path frame addressed to a device, right behind ACCEPT: migrate() rejects with the protocol error, the source runs on', async () => {
    const { a, vm } = pair();
    const raw = await rawDestination([
      { type: FrameType.ACCEPT, payload: encodeAccept({ version: PROTOCOL_VERSION, features: ['switchover-ack'], resumes: false }) },
      { type: FrameType.SWITCHOVER_ACK, device: 0, payload: encodeAckGeneration(0) },
    ]);
    try {
      // The return path meets the frame during the setup, before the caller could listen for a
      // `cancelled` event: migrate() itself rejects with it.
      const err = await rejection(vm.migrate(raw.uri));
      expect(err).toMatchObject({ code: 'EVFIO_PROTOCOL' });
      expect(err.message).toContain('for device 0');
      expect(err.deviceState).toEqual([expect.objectContaining({ state: 'RUNNING' })]);
      expect(states([a.d])).toEqual(['RUNNING']);
    } finally {
      raw.close();
    }
  });
});

describe('a peer that does not speak the protocol', () => {
  it('a source connecting to another kind of server (an SSH banner): EVFIO_PROTOCOL saying so, the device never left RUNNING', async () => {
    const { a, vm } = pair();
    const arcs = recordArcs(env, [a.d]);
    const sock = path.join(sockDir, 'ssh.sock');
    const conns: net.Socket[] = [];
    const server = net.createServer((s) => { conns.push(s); s.write('SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n'); });
    await new Promise<void>((r) => server.listen(sock, r));
    try {
      const err = await rejection(vm.migrate(`unix:${sock}`));
      expect(err.code).toBe('EVFIO_PROTOCOL');
      expect(err.message).toMatch(/does not speak node-vfio-pci-live \(expected ACCEPT or REFUSE; unknown frame type 83\)/);
      expect(arcs).toEqual([]);
      expect(states([a.d])).toEqual(['RUNNING']);
    } finally {
      conns.forEach((c) => c.destroy());
      server.close();
    }
  });

  it('a destination reached by another kind of client (an HTTP request): EVFIO_PROTOCOL saying so, before its devices are touched', async () => {
    const { dst } = pair();
    const arcs = recordArcs(env, dst.devices);
    const sock = path.join(sockDir, 'http.sock');
    const listener = await listen(`unix:${sock}`);
    try {
      const incoming = rejection(dst.vm.incoming(listener));
      const client = net.connect(sock);
      client.on('error', () => {});
      client.write('GET / HTTP/1.1\r\nHost: localhost\r\n\r\n');
      const err = await incoming;
      client.destroy();
      expect(err.code).toBe('EVFIO_PROTOCOL');
      expect(err.message).toMatch(/does not speak node-vfio-pci-live \(expected HELLO; unknown frame type 71\)/);
      expect(arcs).toEqual([]);
    } finally {
      await listener.close();
    }
  });
});

describe('a destination that stops reading and says nothing', () => {
  it('the source send it cuts short waits a while for its ERROR, but a cancel ends that wait at once', async (ctx) => {
    const b = realBinding();
    if (!b) return ctx.skip('no real binding');
    const { a, vm } = pair('sim:4MiB');
    const [s, d] = socketPair();
    /** Exactly `n` bytes from the destination's end. */
    const take = async (n: number): Promise<Buffer> => {
      const out = Buffer.alloc(n);
      for (let got = 0; got < n;) {
        const k = b.recvNow(d, out, got, n - got);
        if (k === -1) await b.poll(d, POLLIN, 5000);
        else if (k === 0) throw new Error('the source closed');
        else got += k;
      }
      return out;
    };
    try {
      const running = (async () => {
        const mig = await vm.migrate(s);
        const failed = mig.run();
        failed.catch(() => undefined);
        return { mig, failed };
      })();
      // The HELLO, an ACCEPT without features, then SHUT_RD: the source's DATA send fails with
      // EPIPE while this end stays connected and silent (no ERROR will come).
      const hello = await take(FRAME_HEADER_SIZE);
      await take(hello.readUInt32LE(4));
      const accept = encodeAccept({ version: PROTOCOL_VERSION, features: [], resumes: false });
      const frame = Buffer.concat([encodeHeader(FrameType.ACCEPT, WHOLE_STREAM, accept), accept]);
      expect(b.sendNow(d, frame)).toBe(frame.length);
      b.shutdown(d, SHUT_RD);
      const { mig, failed } = await running;
      // The send has failed by now and the source waits for the return path (RETURN_PATH_GRACE_MS).
      await new Promise((r) => setTimeout(r, 150));
      const t0 = performance.now();
      await mig.cancel();
      expect(performance.now() - t0).toBeLessThan(500);
      expect(['ECANCELED', 'EPIPE', 'ECONNRESET']).toContain((await rejection(failed)).code);
      expect(states([a.d])).toEqual(['RUNNING']);
    } finally {
      for (const fd of [s, d]) {
        try {
          fs.closeSync(fd);
        } catch {
          /* the source's channel closed its end */
        }
      }
    }
  });
});

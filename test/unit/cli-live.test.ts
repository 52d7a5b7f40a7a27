// `vfio-pci migrate` and `vfio-pci incoming` as a user runs them: two real processes over a unix
// socket and TCP loopback, on simulated devices (each process has its own), checked through
// --json and the exit status.
import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as net from 'node:net';
import * as path from 'node:path';
import { spawnCli, type Child } from '../helpers/cli-process';
import { makeTestPki, opensslMissing } from '../helpers/tls-certs';

let dir: string;
/** Every child started by a test, killed (if still running) after it. */
let children: Child[] = [];
const cli = (args: string[], env: Record<string, string> = {}): Child => {
  const c = spawnCli(args, { cwd: dir, env });
  children.push(c);
  return c;
};
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cli-live-'));
  children = [];
});
afterEach(() => {
  for (const c of children) if (c.proc.exitCode === null && c.proc.signalCode === null) c.proc.kill('SIGKILL');
  fs.rmSync(dir, { recursive: true, force: true });
});

/** A TCP port nobody listens on now. */
async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise((r) => srv.close(r));
  return port;
}

/** Start `incoming` and wait until it listens. */
async function incoming(uri: string, devices: string[], extra: string[] = ['--json']): Promise<Child> {
  const c = cli(['incoming', '--listen', uri, ...devices, ...extra], { DEBUG: 'vfio:live' });
  await c.waitErr(/listening on|waiting|listen/i).catch(() => undefined);
  // The listener exists once the socket file does (unix) or shortly after start (tcp).
  if (uri.startsWith('unix:')) for (let i = 0; i < 100 && !fs.existsSync(uri.slice(5)); i++) await new Promise((r) => setTimeout(r, 20));
  else await new Promise((r) => setTimeout(r, 300));
  return c;
}

describe('vfio-pci migrate / incoming', () => {
  it('two devices over a unix socket: both processes exit 0; the summary gives bytes, iterations and downtime', async () => {
    const sock = path.join(dir, 'mig.sock');
    const dst = await incoming(`unix:${sock}`, ['nic0=sim:1MiB:precopy=256KiB#d0', 'nic1=sim:1MiB:precopy=256KiB#d1']);
    // A generous downtime limit: convergence is not what this test is about, and a loaded machine
    // measures a low bandwidth from the simulator's JavaScript-made rounds.
    const src = cli(['migrate', '--to', `unix:${sock}`, 'nic0=sim:1MiB:precopy=256KiB#s0', 'nic1=sim:1MiB:precopy=256KiB#s1', '--downtime-limit', '5000', '--json']);
    const [s, d] = await Promise.all([src.exit, dst.exit]);
    expect(s.code, src.err()).toBe(0);
    expect(d.code, dst.err()).toBe(0);
    const sj = JSON.parse(src.out());
    expect(sj).toMatchObject({ ok: true, iterations: expect.any(Number), downtimeMs: expect.any(Number), totalBytes: expect.any(Number), destinationResumed: true });
    expect(sj.devices.map((x: { id: string; state: string }) => [x.id, x.state])).toEqual([['nic0', 'STOP'], ['nic1', 'STOP']]);
    expect(sj.precopyBytes).toBeGreaterThan(0);
    expect(sj.precopyBytes + sj.stopCopyBytes).toBe(sj.totalBytes);
    // Devices on their own have no guest memory mapped: nothing to track, and the method they offer is said.
    expect(sj.dirtyTracking).toEqual(['nic0', 'nic1'].map((device) => ({ device, method: 'none', available: 'device', ranges: 0, reason: expect.stringMatching(/no guest memory/) })));
    expect(sj.dirtyPagesPerSync).toEqual([]);
    const dj = JSON.parse(dst.out());
    expect(dj).toMatchObject({ ok: true, downtimeMs: sj.downtimeMs, iterations: sj.iterations, totalBytes: sj.totalBytes });
    expect(dj.devices.map((x: { from: string; state: string }) => [x.from, x.state])).toEqual([['nic0', 'RUNNING'], ['nic1', 'RUNNING']]);
    // P2P order on the source, as the kernel walked it.
    const arcs = (sj.transitions as Array<{ device: string; from: string; to: string }>).map((t) => `${t.device}:${t.from}→${t.to}`);
    const firstStopCopy = arcs.findIndex((a) => a.endsWith('→STOP_COPY'));
    expect(arcs.slice(0, firstStopCopy).filter((a) => a.endsWith('→PRE_COPY_P2P'))).toHaveLength(2);
  }, 30_000);

  it('one device over TCP loopback, text output: one summary line each', async () => {
    const uri = `tcp:127.0.0.1:${await freePort()}`;
    const dst = await incoming(uri, ['sim:256KiB#dst'], []);
    const src = cli(['migrate', '--to', uri, 'sim:256KiB#src', '--resume-source']);
    const [s, d] = await Promise.all([src.exit, dst.exit]);
    expect(s.code, src.err()).toBe(0);
    expect(d.code, dst.err()).toBe(0);
    expect(src.out()).toMatch(/^migrated 1 device to tcp:127\.0\.0\.1:\d+: .* precopy \/ .* stop-copy, \d+ iterations?, device downtime [\d.]+ ms; source devices RUNNING$/m);
    expect(dst.out()).toMatch(/^received 1 device: .* precopy \/ .* stop-copy, \d+ iterations?, device downtime [\d.]+ ms; sim:256KiB#src → sim:256KiB#dst RUNNING$/m);
  }, 30_000);

  it('an incompatible destination refuses before the source stops: both exit 1, the source device still RUNNING', async () => {
    const sock = path.join(dir, 'bad.sock');
    const dst = await incoming(`unix:${sock}`, ['sim:64KiB:devid=0x5f11#d']);
    const src = cli(['migrate', '--to', `unix:${sock}`, 'sim:64KiB#s', '--json']);
    const [s, d] = await Promise.all([src.exit, dst.exit]);
    expect(s.code).toBe(1);
    expect(d.code).toBe(1);
    const sj = JSON.parse(src.out());
    expect(sj.error).toMatchObject({ code: 'EVFIO_PEER_REFUSED', kind: 'mismatch' });
    expect(sj.error.deviceState).toEqual([{ device: 'sim:64KiB#s', state: 'RUNNING', touched: false, reset: false }]);
    expect(JSON.parse(dst.out()).error.code).toBe('EVFIO_DEVICE_MISMATCH');
  }, 30_000);

  it('a receiver killed mid-way: the source fails within its bound, its devices RUNNING; exit 1', async () => {
    const sock = path.join(dir, 'kill.sock');
    // A large device that churns: the precopy goes on long enough to kill the receiver in it.
    const dst = await incoming(`unix:${sock}`, ['sim:256MiB#d']);
    const src = cli(['migrate', '--to', `unix:${sock}`, 'sim:256MiB:churn=64MiB/s#s', '--json', '--max-iterations', '100000'], { DEBUG: 'vfio:live' });
    await dst.waitErr(/accepted|ACCEPT|load/).catch(() => undefined);
    await new Promise((r) => setTimeout(r, 300));
    dst.proc.kill('SIGKILL');
    const s = await src.exit;
    expect(s.code, src.err()).toBe(1);
    const sj = JSON.parse(src.out());
    expect(sj.error.deviceState).toEqual([expect.objectContaining({ state: 'RUNNING' })]);
    expect(['EVFIO_PEER_CLOSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT']).toContain(sj.error.code);
  }, 60_000);

  it.skipIf(opensslMissing() !== undefined)('TLS with mutual certificates on both commands; a source with a certificate from another CA is turned away', async () => {
    const pki = makeTestPki();
    try {
      const tls = (id: { cert: string; key: string; ca: string }): string[] => ['--tls-cert', id.cert, '--tls-key', id.key, '--tls-ca', id.ca];
      const uri = `tcp:127.0.0.1:${await freePort()}`;
      const dst = await incoming(uri, ['sim:64KiB#d'], ['--json', ...tls(pki.server)]);
      const rogue = cli(['migrate', '--to', uri, 'sim:64KiB#r', '--json', ...tls(pki.rogueClient)]);
      const r = await rogue.exit;
      expect(r.code).toBe(1);
      expect(JSON.parse(rogue.out()).error.deviceState).toEqual([expect.objectContaining({ state: 'RUNNING', touched: false })]);
      const src = cli(['migrate', '--to', uri, 'sim:64KiB#s', '--json', ...tls(pki.client)]);
      const [s, d] = await Promise.all([src.exit, dst.exit]);
      expect(s.code, src.err()).toBe(0);
      expect(d.code, dst.err()).toBe(0);
      expect(dst.err()).toMatch(/turned away/);
    } finally {
      pki.remove();
    }
  }, 60_000);

  it('usage: a URI of another scheme, a bad --downtime-limit, TLS options given by halves: exit 2 before anything is opened', async () => {
    for (const args of [
      ['migrate', '--to', 'http://x', 'sim'],
      ['migrate', '--to', 'unix:/x', '--downtime-limit', 'abc', 'sim'],
      ['incoming', '--listen', 'unix:/x', '--tls-cert', 'c.pem', 'sim'],
    ]) {
      const c = cli(args);
      const { code } = await c.exit;
      expect(code, `${args.join(' ')}: ${c.err()}`).toBe(2);
    }
  });
});

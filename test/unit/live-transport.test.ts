/**
 * The live-migration transport without TLS (src/live/): listener + connector in one process over
 * tcp: and unix: URIs, the one-connection rule, the channels' bounds (idle timeout, peer closed,
 * abort, close), the exposure warnings, VMM-provided connections, and fd counts. Runs on real
 * sockets with the native binding; the round trip also with koffi and the simulated binding.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { crc32 } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VfioError } from '../../src/base/errors';
import { KoffiBinding } from '../../src/kernel/binding/koffi';
import { pumpFor } from '../../src/kernel/pump';
import { NativeBinding } from '../../src/kernel/binding/native';
import type { Binding } from '../../src/kernel/binding/types';
import { AF_UNIX, SOCK_STREAM, encodeSockaddr } from '../../src/kernel/uapi/socket';
import { FdChannel, StreamChannel, connect, listen, openChannel, type Channel, type Listener } from '../../src/live';
import { canLend } from '../../src/live/channel';
import { FrameType, WHOLE_STREAM, encodeFrame } from '../../src/live/frames';
import { FrameLink } from '../../src/live/link';
import { itUnless } from '../helpers/skip';
import { SimBinding } from '../../src/sim';
import { pattern } from '../helpers/bytes';
import { socketPair } from '../helpers/socket';

const native = new NativeBinding();

function openFds(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

async function failure(p: Promise<unknown>): Promise<VfioError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(VfioError);
  return e as VfioError;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

let dir: string;
let serial = 0;
const sockPath = (): string => path.join(dir, `m${++serial}.sock`);
const abstractName = (): string => `@vfio-live-test-${process.pid}-${++serial}`;

const ipv6 = (() => {
  try {
    const fd = native.socket(10, SOCK_STREAM);
    try {
      native.bind(fd, encodeSockaddr({ family: 'ipv6', address: '::1', port: 0 }));
    } finally {
      native.close(fd);
    }
    return undefined;
  } catch (e) {
    return `no IPv6 loopback (${(e as Error).message})`;
  }
})();

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfio-live-'));
});
afterAll(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

/** Listen, connect and accept: the destination's and the source's channels. */
async function connected(uri: string, opts: { binding?: Binding; idleTimeoutMs?: number } = {}): Promise<{ listener: Listener; dst: Channel; src: Channel }> {
  const listener = await listen(uri, { binding: opts.binding ?? native, idleTimeoutMs: opts.idleTimeoutMs });
  const [dst, src] = await Promise.all([listener.accept({ timeoutMs: 5000 }), connect(listener.uri, { binding: opts.binding ?? native, idleTimeoutMs: opts.idleTimeoutMs })]);
  return { listener, dst, src };
}

describe('round trips in one process', () => {
  const uris: Array<[string, () => string, string | undefined]> = [
    ['tcp IPv4', () => 'tcp:127.0.0.1:0', undefined],
    ['tcp IPv6', () => 'tcp:[::1]:0', ipv6],
    ['tcp localhost (resolved)', () => 'tcp:localhost:0', undefined],
    ['unix path', () => `unix:${sockPath()}`, undefined],
    ['unix abstract', () => `unix:${abstractName()}`, undefined],
  ];
  const bindings: Array<[string, () => Binding]> = [
    ['native', () => native],
    ['koffi', () => new KoffiBinding()],
    ['sim', () => new SimBinding(native)],
  ];

  for (const [what, uri, skip] of uris) {
    // Every URI on the native binding; the other bindings on one URI of each family.
    for (const [bname, make] of bindings.filter(([n]) => n === 'native' || what === 'tcp IPv4' || what === 'unix path')) {
      it.skipIf(skip !== undefined)(
        `${what} (${bname}): bytes both ways, exact reads across writes, end, close; nothing left open${skip ? ` (skipped: ${skip})` : ''}`,
        async () => {
          const binding = make();
          const before = openFds();
          const { listener, dst, src } = await connected(uri(), { binding });
          expect(dst).toBeInstanceOf(FdChannel);
          expect(src).toBeInstanceOf(FdChannel);
          expect(dst.secure).toBe(false);
          expect(listener.warnings).toHaveLength(what === 'unix abstract' ? 1 : 0);
          if (listener.address.family === 'unix') expect(dst.peer).toBe(`unix peer pid ${process.pid} uid ${process.getuid!()}`);
          else expect(dst.peer).toMatch(/^tcp:(127\.0\.0\.1|\[::1\]):\d+$/);
          expect(src.peer).toBe(listener.uri);

          // Several writes read back with other boundaries: reads are exact and never read ahead.
          await src.writeAll(Buffer.from('HDR1'));
          await src.writeAll(Buffer.from('payload-one'));
          expect((await dst.readExactly(2)).toString()).toBe('HD');
          expect((await dst.readExactly(13)).toString()).toBe('R1payload-one');
          await dst.writeAll(Buffer.from('ack'));
          expect((await src.readExactly(3)).toString()).toBe('ack');

          // 3 MiB while the reader reads in pieces of odd sizes.
          const big = pattern(3 << 20, 11);
          const pieces: Buffer[] = [];
          const reader = (async () => {
            for (let got = 0; got < big.length; ) {
              const n = Math.min(big.length - got, 100_003);
              pieces.push(await dst.readExactly(n, { what: 'a piece' }));
              got += n;
            }
          })();
          await Promise.all([src.writeAll(big), reader]);
          expect(crc32(Buffer.concat(pieces))).toBe(crc32(big));

          // end(): the destination reads the end of the stream where it expected more.
          await src.end();
          const eof = await failure(dst.readExactly(8, { what: 'frame header' }));
          expect(eof.code).toBe('EVFIO_PEER_CLOSED');
          expect(eof.message).toContain('frame header');
          expect(eof.message).toContain('before any of its 8 bytes');
          // The other direction still works after end().
          await dst.writeAll(Buffer.from('bye'));
          expect((await src.readExactly(3)).toString()).toBe('bye');

          await Promise.all([src.close(), dst.close(), listener.close()]);
          await Promise.all([src.close(), dst.close(), listener.close()]); // idempotent
          expect(() => (src as FdChannel).fd).toThrow(expect.objectContaining({ code: 'EVFIO_CLOSED' }));
          await expect(src.readExactly(1)).rejects.toMatchObject({ code: 'EVFIO_CLOSED' });
          if (listener.address.family === 'unix' && listener.address.path) expect(fs.existsSync(listener.address.path)).toBe(false);
          expect(openFds()).toBe(before);
        },
      );
    }
  }
});

describe('the one-connection rule (no TLS)', () => {
  for (const [what, uri] of [
    ['tcp', () => 'tcp:127.0.0.1:0'],
    ['unix', () => `unix:${sockPath()}`],
  ] as const) {
    it(`${what}: a second peer is accepted and closed at once, reported, and logged`, async () => {
      const before = openFds();
      const { listener, dst, src } = await connected(uri());
      const events: unknown[] = [];
      listener.on('refused', (r) => events.push(r));
      // The intruder's connection is cut: its connect or its first read fails (a reset over TCP,
      // the end of the stream over unix).
      const e = await failure(connect(listener.uri, { binding: native }).then(async (intruder) => {
        try {
          await intruder.readExactly(1, { timeoutMs: 5000 });
        } finally {
          await intruder.close();
        }
      }));
      expect(['ECONNRESET', 'EVFIO_PEER_CLOSED']).toContain(e.code);
      while (listener.refusedCount === 0) await sleep(10);
      expect(listener.refusedCount).toBe(1);
      expect(listener.refused[0]).toMatchObject({ reason: 'second-peer' });
      expect(listener.refused[0].peer).toMatch(what === 'tcp' ? /^tcp:127\.0\.0\.1:\d+$/ : /^unix peer pid \d+/);
      expect(events).toEqual(listener.refused);
      // The migration's own connection is untouched.
      await src.writeAll(Buffer.from('still here'));
      expect((await dst.readExactly(10)).toString()).toBe('still here');
      await expect(listener.accept()).rejects.toMatchObject({ code: 'EVFIO_USAGE', message: expect.stringContaining('already accepted its one connection') });
      await Promise.all([src.close(), dst.close(), listener.close()]);
      expect(openFds()).toBe(before);
    });
  }

  it('two peers queued before accept(): the first is the migration, the second refused', async () => {
    const listener = await listen('tcp:127.0.0.1:0', { binding: native });
    const first = await connect(listener.uri, { binding: native });
    const second = await connect(listener.uri, { binding: native });
    const dst = await listener.accept();
    await first.writeAll(Buffer.from('1'));
    expect((await dst.readExactly(1)).toString()).toBe('1');
    await expect(second.readExactly(1)).rejects.toMatchObject({ code: expect.stringMatching(/ECONNRESET|EVFIO_PEER_CLOSED/) });
    expect(listener.refused.map((r) => r.reason)).toEqual(['second-peer']);
    await Promise.all([first.close(), second.close(), dst.close(), listener.close()]);
  });

  it('after close() nobody is accepted: later peers are refused by the kernel', async () => {
    const { listener, dst, src } = await connected('tcp:127.0.0.1:0');
    await listener.close();
    await expect(connect(listener.uri, { binding: native })).rejects.toMatchObject({ code: 'ECONNREFUSED', syscall: 'connect' });
    await Promise.all([src.close(), dst.close()]);
  });
});

describe('warnings about exposure without TLS', () => {
  it('warns for a non-loopback TCP address and an abstract socket, not for loopback or a socket file', async () => {
    const cases: Array<[string, RegExp | undefined]> = [
      ['tcp:0.0.0.0:0', /without TLS: any host that can reach this address/],
      ['tcp::0', /without TLS/],
      ['tcp:127.0.0.1:0', undefined],
      [`unix:${sockPath()}`, undefined],
      [`unix:${abstractName()}`, /abstract unix socket\) without TLS: any process in this network namespace/],
    ];
    if (!ipv6) cases.push(['tcp:[::]:0', /without TLS/], ['tcp:[::1]:0', undefined]);
    for (const [uri, warning] of cases) {
      const l = await listen(uri, { binding: native });
      try {
        if (warning) {
          expect(l.warnings).toHaveLength(1);
          expect(l.warnings[0]).toMatch(warning);
          expect(l.warnings[0]).toContain('--tls-cert');
        } else {
          expect([uri, l.warnings]).toEqual([uri, []]);
        }
      } finally {
        await l.close();
      }
    }
  });
});

type PairKind = 'fd tcp' | 'fd unix' | 'stream';

/** Two connected channels of a kind: `a` and `b`, and the peer ends' raw sockets for stream pairs. */
async function pair(kind: PairKind, idleTimeoutMs = 10_000): Promise<{ a: Channel; b: Channel; cleanup: () => Promise<void> }> {
  if (kind !== 'stream') {
    const { listener, dst, src } = await connected(kind === 'fd tcp' ? 'tcp:127.0.0.1:0' : `unix:${sockPath()}`, { idleTimeoutMs });
    await listener.close();
    return { a: dst, b: src, cleanup: async () => void (await Promise.all([dst.close(), src.close()])) };
  }
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const accepted = new Promise<net.Socket>((r) => server.once('connection', r));
  const client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
  await new Promise<void>((r) => client.once('connect', r));
  const sock = await accepted;
  server.close();
  const a = openChannel(sock, { idleTimeoutMs, peer: 'vmm stream a' });
  const b = openChannel(client, { idleTimeoutMs, peer: 'vmm stream b' });
  return { a, b, cleanup: async () => void (await Promise.all([a.close(), b.close()])) };
}

describe.each(['fd tcp', 'fd unix', 'stream'] as const)('channel bounds: %s', (kind) => {
  it('a peer that stops sending: ETIMEDOUT within the idle bound; with no byte taken the channel stays usable', async () => {
    const { a, b, cleanup } = await pair(kind, 250);
    const start = performance.now();
    const e = await failure(a.readExactly(4, { what: 'frame header' }));
    const took = performance.now() - start;
    expect(e).toMatchObject({ code: 'ETIMEDOUT', errno: os.constants.errno.ETIMEDOUT, kind: 'peer' });
    expect(e.message).toContain('frame header');
    expect(took).toBeGreaterThanOrEqual(240);
    expect(took).toBeLessThan(1500);
    // A per-call bound wins over the channel's.
    const t2 = performance.now();
    await expect(a.readExactly(4, { timeoutMs: 60 })).rejects.toMatchObject({ code: 'ETIMEDOUT' });
    expect(performance.now() - t2).toBeLessThan(240);
    await b.writeAll(Buffer.from('late'));
    expect((await a.readExactly(4)).toString()).toBe('late');
    await cleanup();
  });

  it('a stall in the middle of a read: ETIMEDOUT, and the channel is broken from then on', async () => {
    const { a, b, cleanup } = await pair(kind, 200);
    await b.writeAll(Buffer.from('abc'));
    const e = await failure(a.readExactly(8, { what: 'DATA header' }));
    expect(e.code).toBe('ETIMEDOUT');
    await b.writeAll(Buffer.from('defgh'));
    const broken = await failure(a.readExactly(5));
    expect(broken.code).toBe('EVFIO_CHANNEL_BROKEN');
    expect(broken.cause).toBe(e);
    await cleanup();
  });

  it('a peer that closes mid-read: EVFIO_PEER_CLOSED naming what was expected and how much came', async () => {
    const { a, b, cleanup } = await pair(kind);
    await b.writeAll(Buffer.from('xyz'));
    const pending = failure(a.readExactly(8, { what: 'DATA header' }));
    await sleep(30);
    await b.close();
    const e = await pending;
    expect(e).toMatchObject({ code: 'EVFIO_PEER_CLOSED', kind: 'peer' });
    expect(e.message).toMatch(/read DATA header from .*: the peer closed the connection after 3 of its 8 bytes/);
    await cleanup();
  });

  it('writing to a peer that went away fails (EPIPE / ECONNRESET / peer closed), never hangs, never kills the process', async () => {
    const { a, b, cleanup } = await pair(kind);
    await b.close();
    let e: VfioError | undefined;
    for (let i = 0; i < 50 && !e; i++) {
      e = await a.writeAll(Buffer.alloc(64 * 1024), { timeoutMs: 2000 }).then(
        () => undefined,
        (err: unknown) => err as VfioError,
      );
    }
    expect(e).toBeInstanceOf(VfioError);
    expect(['EPIPE', 'ECONNRESET', 'EVFIO_PEER_CLOSED', 'EVFIO_CHANNEL_BROKEN']).toContain(e!.code);
    await cleanup();
  });

  it('a peer that does not read: a large write times out instead of waiting forever', async () => {
    const { a, cleanup } = await pair(kind, 300);
    const start = performance.now();
    const e = await failure(a.writeAll(Buffer.alloc(64 << 20)));
    expect(e.code).toBe('ETIMEDOUT');
    expect(performance.now() - start).toBeLessThan(20_000);
    await expect(a.writeAll(Buffer.from('x'))).rejects.toMatchObject({ code: 'EVFIO_CHANNEL_BROKEN' });
    await cleanup();
  });

  itUnless(kind === 'stream' ? 'a Node stream has no fd to lend' : undefined, 'a loan whose borrower fails: the directions lent break, unless `intact` says it moved nothing', async () => {
    const { a, b, cleanup } = await pair(kind);
    if (!canLend(a)) throw new Error(`${kind}: expected a channel that lends its fd`);
    const failed = (): Promise<never> => Promise.reject(new VfioError('pump: cancelled', { code: 'ECANCELED' }));
    await expect(a.lend('write', failed, { intact: () => true })).rejects.toMatchObject({ code: 'ECANCELED' });
    await a.writeAll(Buffer.from('still'));
    expect((await b.readExactly(5)).toString()).toBe('still');
    await expect(a.lend('write', failed, { intact: () => false })).rejects.toMatchObject({ code: 'ECANCELED' });
    await expect(a.writeAll(Buffer.from('x'))).rejects.toMatchObject({ code: 'EVFIO_CHANNEL_BROKEN' });
    await b.writeAll(Buffer.from('reply'));
    expect((await a.readExactly(5)).toString()).toBe('reply');
    await cleanup();
  });

  it('a write cut short breaks only the writing direction of a socket (its peer can still answer); both of a Node stream', async () => {
    const { a, b, cleanup } = await pair(kind, 300);
    const e = await failure(a.writeAll(Buffer.alloc(64 << 20)));
    expect(e.code).toBe('ETIMEDOUT');
    await expect(a.writeAll(Buffer.from('x'))).rejects.toMatchObject({ code: 'EVFIO_CHANNEL_BROKEN' });
    await b.writeAll(Buffer.from('reply'));
    if (kind === 'stream') await expect(a.readExactly(5)).rejects.toMatchObject({ code: 'EVFIO_CHANNEL_BROKEN' });
    else expect((await a.readExactly(5)).toString()).toBe('reply');
    await cleanup();
  });

  it('AbortSignal: the call rejects with ECANCELED at once; the channel signal cancels every call', async () => {
    const { a, b, cleanup } = await pair(kind);
    const ac = new AbortController();
    const pending = failure(a.readExactly(4, { signal: ac.signal }));
    await sleep(20);
    const start = performance.now();
    ac.abort(new Error('migration cancelled'));
    const e = await pending;
    expect(performance.now() - start).toBeLessThan(50);
    expect(e).toMatchObject({ code: 'ECANCELED', errno: os.constants.errno.ECANCELED });
    expect(e.message).toContain('migration cancelled');
    await expect(a.writeAll(Buffer.from('x'), { signal: ac.signal })).rejects.toMatchObject({ code: 'ECANCELED' });
    // Nothing was taken: the channel goes on.
    await b.writeAll(Buffer.from('ok'));
    expect((await a.readExactly(2)).toString()).toBe('ok');
    await cleanup();
  });

  it('close() during a read: the read rejects EVFIO_CLOSED promptly; one read at a time', async () => {
    const { a, cleanup } = await pair(kind);
    const pending = failure(a.readExactly(4));
    await expect(a.readExactly(1)).rejects.toMatchObject({ code: 'EVFIO_USAGE', message: expect.stringContaining('another read') });
    await sleep(20);
    const start = performance.now();
    await a.close();
    expect(await pending).toMatchObject({ code: 'EVFIO_CLOSED' });
    expect(performance.now() - start).toBeLessThan(1000);
    expect(a.closed).toBe(true);
    await cleanup();
  });
});

describe('accept() and connect() bounds', () => {
  it('accept: ETIMEDOUT after timeoutMs, ECANCELED on abort, EVFIO_CLOSED on close(); accept() can be called again after a timeout', async () => {
    const before = openFds();
    const l = await listen(`unix:${sockPath()}`, { binding: native });
    const t0 = performance.now();
    await expect(l.accept({ timeoutMs: 150 })).rejects.toMatchObject({ code: 'ETIMEDOUT' });
    expect(performance.now() - t0).toBeGreaterThanOrEqual(145);
    const ac = new AbortController();
    const aborted = failure(l.accept({ signal: ac.signal }));
    await expect(l.accept()).rejects.toMatchObject({ code: 'EVFIO_USAGE' });
    setTimeout(() => ac.abort(), 30);
    expect(await aborted).toMatchObject({ code: 'ECANCELED' });
    const pending = failure(l.accept());
    await sleep(20);
    const t1 = performance.now();
    await l.close();
    expect(await pending).toMatchObject({ code: 'EVFIO_CLOSED' });
    expect(performance.now() - t1).toBeLessThan(1000);
    await expect(l.accept()).rejects.toMatchObject({ code: 'EVFIO_CLOSED' });
    expect(openFds()).toBe(before);
  });

  it('connect: ECONNREFUSED and ENOENT at once, ECANCELED and ETIMEDOUT while the name resolves; nothing left open', async () => {
    const before = openFds();
    const l = await listen('tcp:127.0.0.1:0', { binding: native });
    const uri = l.uri;
    await l.close();
    await expect(connect(uri, { binding: native })).rejects.toMatchObject({ code: 'ECONNREFUSED', op: `connect to ${uri}` });
    await expect(connect(`unix:${path.join(dir, 'nobody.sock')}`, { binding: native })).rejects.toMatchObject({ code: 'ENOENT' });
    const stalls = (() => undefined) as never;
    const ac = new AbortController();
    const p = connect('tcp:dst.invalid:4444', { binding: native, lookup: stalls, signal: ac.signal });
    setTimeout(() => ac.abort(), 20);
    await expect(p).rejects.toMatchObject({ code: 'ECANCELED' });
    await expect(connect('tcp:dst.invalid:4444', { binding: native, lookup: stalls, timeoutMs: 50 })).rejects.toMatchObject({ code: 'ETIMEDOUT' });
    await expect(connect('tcp:127.0.0.1:0', { binding: native })).rejects.toMatchObject({ code: 'EVFIO_USAGE' });
    expect(openFds()).toBe(before);
  });

  it('connect tries every address of a name: a refused first address falls through to the next', async () => {
    const l = await listen('tcp:127.0.0.1:0', { binding: native });
    const port = l.address.family === 'ipv4' ? l.address.port : 0;
    // 127.0.0.2 answers nothing on that port (refused); 127.0.0.1 listens.
    const lookup = ((_h: string, _o: unknown, cb: (e: null, a: Array<{ address: string; family: number }>) => void) =>
      cb(null, [{ address: '127.0.0.2', family: 4 }, { address: '127.0.0.1', family: 4 }])) as never;
    const [src, dst] = await Promise.all([connect(`tcp:dst.test:${port}`, { binding: native, lookup }), l.accept()]);
    await src.writeAll(Buffer.from('via second'));
    expect((await dst.readExactly(10)).toString()).toBe('via second');
    await Promise.all([src.close(), dst.close(), l.close()]);
  });
});

describe('the unix socket file', () => {
  it('close() removes the file it made, but not a file someone put there since', async () => {
    const p = sockPath();
    const l = await listen(`unix:${p}`, { binding: native });
    expect(fs.lstatSync(p).isSocket()).toBe(true);
    fs.unlinkSync(p);
    fs.writeFileSync(p, 'not ours');
    await l.close();
    expect(fs.readFileSync(p, 'utf8')).toBe('not ours');
    // Another socket bound at the same path since: a socket too, but not this listener's.
    const q = sockPath();
    const l2 = await listen(`unix:${q}`, { binding: native });
    fs.unlinkSync(q);
    const other = native.socket(AF_UNIX, SOCK_STREAM);
    native.bind(other, encodeSockaddr({ family: 'unix', path: q }));
    await l2.close();
    expect(fs.lstatSync(q).isSocket()).toBe(true);
    native.close(other);
  });

  it('a stale socket file (nobody listens) is replaced; a live one is EADDRINUSE; a regular file is EADDRINUSE', async () => {
    const p = sockPath();
    // A socket file left by a listener that died without cleaning up.
    const fd = native.socket(AF_UNIX, SOCK_STREAM);
    native.bind(fd, encodeSockaddr({ family: 'unix', path: p }));
    native.close(fd);
    expect(fs.lstatSync(p).isSocket()).toBe(true);
    const l = await listen(`unix:${p}`, { binding: native });
    await expect(listen(`unix:${p}`, { binding: native })).rejects.toMatchObject({ code: 'EADDRINUSE', message: expect.stringContaining('another process listens') });
    await l.close();
    const f = sockPath();
    fs.writeFileSync(f, 'data');
    await expect(listen(`unix:${f}`, { binding: native })).rejects.toMatchObject({ code: 'EADDRINUSE', message: expect.stringContaining('exists and is not a socket') });
    expect(fs.readFileSync(f, 'utf8')).toBe('data');
  });
});

describe('the fd channel hands its fd to others', () => {
  it("the fd works with plain Binding read/write from the peer's side, and lend() keeps the channel's own calls out of the way", async () => {
    const { a: dst, b: src, cleanup } = await pair('fd tcp');
    const srcFd = (src as FdChannel).fd;
    // The source writes with the binding directly; the destination's channel reads it exactly.
    expect(await native.write(srcFd, Buffer.from('raw bytes'))).toBe(9);
    expect((await dst.readExactly(9)).toString()).toBe('raw bytes');
    // The destination's fd read with the binding directly.
    await src.writeAll(Buffer.from('to the raw reader'));
    const buf = Buffer.alloc(17);
    for (let got = 0; got < 17; ) got += await native.read((dst as FdChannel).fd, buf, got);
    expect(buf.toString()).toBe('to the raw reader');

    // lend('write'): the channel's writes are refused meanwhile, its reads go on (full duplex).
    const fdSrc = src as FdChannel;
    let release!: () => void;
    const loan = fdSrc.lend('write', async (fd) => {
      await native.write(fd, Buffer.from('lent'));
      await new Promise<void>((r) => (release = r));
      return 'done';
    });
    await sleep(20);
    await expect(src.writeAll(Buffer.from('x'))).rejects.toMatchObject({ code: 'EVFIO_USAGE' });
    await dst.writeAll(Buffer.from('return path'));
    expect((await src.readExactly(11)).toString()).toBe('return path');
    release();
    expect(await loan).toBe('done');
    expect((await dst.readExactly(4)).toString()).toBe('lent');
    await src.writeAll(Buffer.from('mine again'));
    expect((await dst.readExactly(10)).toString()).toBe('mine again');
    await cleanup();
  });

  it('the native pump moves a pipe into the socket with no JavaScript copy; the peer reads it exactly', async () => {
    const { a: dst, b: src, cleanup } = await pair('fd unix');
    const data = pattern(2 << 20, 5);
    const [r, w] = native.pipe();
    const feeder = (async () => {
      for (let done = 0; done < data.length; ) done += await native.write(w, data, done);
      native.close(w);
    })();
    const moved = (src as FdChannel).lend('write', (fd) => pumpFor(native, [r, fd]).copy(r, fd, Buffer.alloc(256 * 1024), { checksum: 'crc32' }));
    const got = await dst.readExactly(data.length);
    const [result] = await Promise.all([moved, feeder]);
    native.close(r);
    expect(result).toMatchObject({ bytes: data.length, end: 'eof', checksum: crc32(data) });
    expect(crc32(got)).toBe(crc32(data));
    await cleanup();
  });

  it('close() during a loan shuts the socket down so that the borrower ends, then closes the fd', async () => {
    const { a: dst, b: src, cleanup } = await pair('fd unix');
    const fdSrc = src as FdChannel;
    const fd = fdSrc.fd;
    // A borrower writing until the socket refuses (the peer does not read).
    const loan = fdSrc.lend('write', async (lent) => {
      for (;;) await native.write(lent, Buffer.alloc(64 * 1024));
    });
    await sleep(50);
    await src.close();
    await expect(loan).rejects.toMatchObject({ code: 'EPIPE' });
    expect(fs.existsSync(`/proc/self/fd/${fd}`) && fd !== (dst as FdChannel).fd).toBe(false);
    await cleanup();
  });
});

describe('which channels lend their fd to the pump (canLend)', () => {
  it('an FdChannel does; a stream channel, and an \'fd\' channel of a VMM\'s without lend(), do not (their bytes pass through JavaScript)', async () => {
    const fd = await pair('fd unix');
    const stream = await pair('stream');
    try {
      expect([canLend(fd.a), canLend(fd.b), canLend(stream.a)]).toEqual([true, true, false]);
      const own: Channel = { kind: 'fd', peer: 'own', secure: false, closed: false, readExactly: fd.a.readExactly, readInto: fd.a.readInto, writeAll: fd.a.writeAll, end: fd.a.end, close: fd.a.close };
      expect(canLend(own)).toBe(false);
    } finally {
      await fd.cleanup();
      await stream.cleanup();
    }
  });
});

describe('connections the VMM hands in (openChannel)', () => {
  it('a connected socket fd becomes an FdChannel (non-blocking, close-on-exec), owned from then on', async () => {
    const before = openFds();
    const l = await listen(`unix:${sockPath()}`, { binding: native });
    const fd = native.socket(AF_UNIX, SOCK_STREAM);
    native.connect(fd, encodeSockaddr({ family: 'unix', path: l.address.family === 'unix' ? l.address.path! : '' }));
    native.ioctl(fd, 0x5450 /* FIONCLEX */); // as a VMM might hand it: inheritable
    const ch = openChannel(fd, { binding: native });
    const flags = parseInt(/^flags:\s*([0-7]+)$/m.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))![1], 8);
    expect(flags & (0o2000000 | fs.constants.O_NONBLOCK)).toBe(0o2000000 | fs.constants.O_NONBLOCK);
    const dst = await l.accept();
    await ch.writeAll(Buffer.from('vmm'));
    expect((await dst.readExactly(3)).toString()).toBe('vmm');
    await Promise.all([ch.close(), dst.close(), l.close()]);
    expect(openFds()).toBe(before);
  });

  it('refuses an fd that is not a connected stream socket', () => {
    const efd = native.eventfd(0);
    try {
      expect(() => openChannel(efd, { binding: native })).toThrow(expect.objectContaining({ code: 'EVFIO_USAGE', message: expect.stringContaining('not a socket') }));
    } finally {
      native.close(efd);
    }
    const s = native.socket(AF_UNIX, SOCK_STREAM);
    try {
      expect(() => openChannel(s, { binding: native })).toThrow(expect.objectContaining({ code: 'ENOTCONN' }));
    } finally {
      native.close(s);
    }
    expect(() => openChannel({} as never)).toThrow(expect.objectContaining({ code: 'EVFIO_USAGE' }));
  });

  it('a Duplex becomes a StreamChannel: exact reads with at most a highWaterMark buffered, however much the peer sends', async () => {
    const { a, b, cleanup } = await pair('stream');
    expect(a).toBeInstanceOf(StreamChannel);
    expect(a.kind).toBe('stream');
    const sock = (a as unknown as { stream: net.Socket }).stream;
    // The peer sends 16 MiB; the channel reads 16 bytes and waits.
    const big = pattern(16 << 20, 3);
    const sending = b.writeAll(big, { timeoutMs: 60_000 });
    expect((await a.readExactly(16)).equals(big.subarray(0, 16))).toBe(true);
    await sleep(200);
    expect(sock.readableLength).toBeLessThanOrEqual(sock.readableHighWaterMark + 256 * 1024);
    const rest = await a.readExactly(big.length - 16);
    await sending;
    expect(crc32(rest)).toBe(crc32(big.subarray(16)));
    await cleanup();
  });
});

describe('a peer process that vanishes', () => {
  it('killed mid-write: the read fails with EVFIO_PEER_CLOSED (or ECONNRESET) naming what was expected, within the bound', async () => {
    const p = sockPath();
    const l = await listen(`unix:${p}`, { binding: native, idleTimeoutMs: 10_000 });
    const child = spawn(process.execPath, [
      '-e',
      `const s = require('net').connect(${JSON.stringify(p)}, () => s.write(Buffer.alloc(5, 1), () => process.kill(process.pid, 'SIGKILL')));`,
    ]);
    const dst = await l.accept({ timeoutMs: 10_000 });
    const start = performance.now();
    const e = await failure(dst.readExactly(16, { what: 'DATA chunk' }));
    expect(['EVFIO_PEER_CLOSED', 'ECONNRESET']).toContain(e.code);
    expect(e.message).toContain('DATA chunk');
    expect(performance.now() - start).toBeLessThan(5000);
    await new Promise((r) => (child.exitCode !== null || child.signalCode !== null ? r(undefined) : child.once('exit', r)));
    expect(child.signalCode).toBe('SIGKILL');
    await Promise.all([dst.close(), l.close()]);
  });

  it('a peer that floods the socket (PINGs) does not starve the event loop: timers keep running while frames are read', async () => {
    const [a, b] = socketPair();
    const ping = encodeFrame(FrameType.PING, WHOLE_STREAM);
    // A worker writes PINGs as fast as the socket takes them for 1.5 s, then a CANCEL.
    const flood = new Worker(
      `const fs = require('fs'); const { workerData: w } = require('worker_threads');
       const end = Date.now() + 1500;
       while (Date.now() < end) fs.writeSync(w.fd, Buffer.from(w.block));
       fs.writeSync(w.fd, Buffer.from(w.last));`,
      { eval: true, workerData: { fd: b, block: Buffer.concat(Array.from({ length: 4096 }, () => ping)), last: encodeFrame(FrameType.CANCEL, WHOLE_STREAM) } },
    );
    const link = new FrameLink(new FdChannel(native, a, { peer: 'flood' }), { keepaliveMs: 0 });
    let last = performance.now();
    let maxLag = 0;
    const tick = setInterval(() => {
      const t = performance.now();
      maxLag = Math.max(maxLag, t - last);
      last = t;
    }, 10);
    try {
      const f = await link.readFrame();
      maxLag = Math.max(maxLag, performance.now() - last);
      expect(f.header.type).toBe(FrameType.CANCEL);
      // Without a turn for the loop every so many reads, the timer waited out the whole flood.
      expect(maxLag).toBeLessThan(300);
    } finally {
      clearInterval(tick);
      await flood.terminate();
      await link.close();
      fs.closeSync(b);
    }
  });

  it('a peer that closed with bytes unread: ECONNRESET on the read and EPIPE on the write, said in words, codes kept', async () => {
    const [a, b] = socketPair();
    const ch = new FdChannel(native, a, { peer: 'the test peer' });
    try {
      // b goes with ch's bytes unread: a's next read is ECONNRESET, its next write EPIPE.
      await ch.writeAll(Buffer.from('unread'));
      fs.closeSync(b);
      const r = await failure(ch.readExactly(12, { what: 'frame header' }));
      expect(r).toMatchObject({ code: 'ECONNRESET', errno: os.constants.errno.ECONNRESET });
      expect(r.message).toBe('read frame header from the test peer: the peer reset the connection (ECONNRESET): its process ended, or it closed the socket with bytes unread');
      const w = await failure(ch.writeAll(Buffer.from('more')));
      expect(w).toMatchObject({ code: 'EPIPE' });
      expect(w.message).toBe('write 4 bytes to the test peer: the peer had closed the connection (EPIPE)');
    } finally {
      await ch.close();
    }
  });
});

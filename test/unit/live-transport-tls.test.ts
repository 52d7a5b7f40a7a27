/**
 * The transport with TLS (src/live/tls.ts, listener.ts, connect.ts): mutual certificate
 * authentication through Node's tls module, with credentials made at test time by openssl
 * (test/helpers/tls-certs.ts). Covers the happy path over tcp: and unix:, every way a peer is
 * refused (no certificate, another CA's, a plain client, a stalled handshake), the client's
 * checks of the server (its CA, its name), credential errors before any connection, and fds.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import * as tls from 'node:tls';
import { crc32 } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VfioError } from '../../src/base/errors';
import { NativeBinding } from '../../src/kernel/binding/native';
import { StreamChannel, connect, listen, loadTlsCredentials, type Channel, type Listener, type RefusedPeer } from '../../src/live';
import { pattern } from '../helpers/bytes';
import { makeTestPki, opensslMissing, type TestPki } from '../helpers/tls-certs';

const native = new NativeBinding();
const missing = opensslMissing();
const openFds = (): number => fs.readdirSync('/proc/self/fd').length;
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function failure(p: Promise<unknown>): Promise<VfioError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(VfioError);
  return e as VfioError;
}

/** The next 'refused' report of a listener. */
function nextRefusal(l: Listener): Promise<RefusedPeer> {
  return new Promise((r) => l.once('refused', r));
}

describe.skipIf(missing !== undefined)(`TLS with mutual authentication${missing ? ` (skipped: ${missing})` : ''}`, () => {
  let pki: TestPki;
  let dir: string;
  beforeAll(() => {
    pki = makeTestPki();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfio-live-tls-'));
  });
  afterAll(() => {
    pki?.remove();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  for (const [what, uri] of [
    ['tcp', () => 'tcp:127.0.0.1:0'],
    ['tcp by name', () => 'tcp:localhost:0'],
    ['unix', () => `unix:${path.join(dir, 'tls.sock')}`],
  ] as const) {
    it(`${what}: both sides authenticated, bytes both ways, nothing left open`, async () => {
      const before = openFds();
      const l = await listen(uri(), { binding: native, tls: pki.server });
      expect(l.secure).toBe(true);
      const target = what === 'tcp by name' ? l.uri.replace(/^tcp:(127\.0\.0\.1|\[::1\])/, 'tcp:localhost') : l.uri;
      const [dst, src] = await Promise.all([l.accept({ timeoutMs: 10_000 }), connect(target, { binding: native, tls: pki.client })]);
      for (const ch of [dst, src]) {
        expect(ch).toBeInstanceOf(StreamChannel);
        expect(ch.secure).toBe(true);
      }
      expect(dst.peer).toContain('CN=vfio-source');
      expect(src.peer).toContain('CN=localhost');
      await src.writeAll(Buffer.from('handshake'));
      expect((await dst.readExactly(9)).toString()).toBe('handshake');
      const big = pattern(2 << 20, 9);
      const [, got] = await Promise.all([dst.writeAll(big), src.readExactly(big.length)]);
      expect(crc32(got)).toBe(crc32(big));
      // A peer that goes away mid-read over TLS: EVFIO_PEER_CLOSED, naming what was expected.
      await src.writeAll(Buffer.from('abc'));
      const pending = failure(dst.readExactly(8, { what: 'frame header' }));
      await sleep(20);
      await src.close();
      const e = await pending;
      expect(e.code).toBe('EVFIO_PEER_CLOSED');
      expect(e.message).toContain('after 3 of its 8 bytes');
      await Promise.all([dst.close(), l.close()]);
      expect(openFds()).toBe(before);
    });
  }

  it('no warning on a non-loopback address with TLS', async () => {
    const l = await listen('tcp:0.0.0.0:0', { binding: native, tls: pki.server });
    expect(l.warnings).toEqual([]);
    await l.close();
  });

  it('a client without a certificate is refused by TLS; the listener keeps waiting and then takes a genuine client', async () => {
    const before = openFds();
    const l = await listen('tcp:127.0.0.1:0', { binding: native, tls: pki.server });
    const accepting = l.accept({ timeoutMs: 10_000 });
    const port = l.address.family === 'ipv4' ? l.address.port : 0;
    const refusal = nextRefusal(l);
    // A TLS client that trusts the server but presents no certificate.
    const bare = tls.connect({ port, host: '127.0.0.1', ca: fs.readFileSync(pki.server.ca), minVersion: 'TLSv1.3' });
    const bareError = new Promise<NodeJS.ErrnoException>((r) => bare.on('error', r));
    bare.on('secureConnect', () => bare.write('let me in'));
    const r = await refusal;
    expect(r.reason).toBe('tls');
    expect(r.error?.code).toBe('EVFIO_TLS');
    expect(r.error?.message).toMatch(/certificate/i);
    expect((await bareError).code).toMatch(/CERTIFICATE_REQUIRED|ECONNRESET/);
    bare.destroy();
    // The place is still free.
    const src = await connect(l.uri, { binding: native, tls: pki.client });
    const dst = await accepting;
    await src.writeAll(Buffer.from('ok'));
    expect((await dst.readExactly(2)).toString()).toBe('ok');
    await Promise.all([src.close(), dst.close(), l.close()]);
    expect(openFds()).toBe(before);
  });

  it("a client whose certificate another CA signed is refused (its first read says so); the listener's accept times out", async () => {
    const before = openFds();
    const l = await listen(`unix:${path.join(dir, 'rogue.sock')}`, { binding: native, tls: pki.server });
    const accepting = failure(l.accept({ timeoutMs: 1500 }));
    const refusal = nextRefusal(l);
    // The rogue trusts the server's CA (so its own check passes) but holds a certificate of CA B.
    const rogue = await connect(l.uri, { binding: native, tls: { ...pki.rogueClient, ca: pki.server.ca } }).then(
      async (ch) => {
        try {
          return await failure(ch.readExactly(1, { timeoutMs: 5000 }));
        } finally {
          await ch.close();
        }
      },
      (e: unknown) => e as VfioError,
    );
    expect(['EVFIO_TLS', 'EVFIO_PEER_CLOSED', 'ECONNRESET']).toContain(rogue.code);
    const r = await refusal;
    expect(r).toMatchObject({ reason: 'tls' });
    expect(r.error?.message).toMatch(/not accepted|not authorized|UNABLE_TO_VERIFY|self.signed|certificate/i);
    expect((await accepting).code).toBe('ETIMEDOUT');
    await l.close();
    expect(openFds()).toBe(before);
  });

  it('a plain (non-TLS) client is refused by the TLS listener', async () => {
    const l = await listen('tcp:127.0.0.1:0', { binding: native, tls: pki.server });
    const accepting = failure(l.accept({ timeoutMs: 800 }));
    const refusal = nextRefusal(l);
    const plain = await connect(l.uri, { binding: native });
    await plain.writeAll(Buffer.from('GET / HTTP/1.0\r\n\r\n'));
    expect((await refusal).reason).toBe('tls');
    await expect(plain.readExactly(1)).rejects.toBeInstanceOf(VfioError);
    await plain.close();
    expect((await accepting).code).toBe('ETIMEDOUT');
    await l.close();
  });

  it('a peer that stalls its handshake is dropped after handshakeTimeoutMs and does not hold a genuine client back', async () => {
    const l = await listen('tcp:127.0.0.1:0', { binding: native, tls: pki.server, handshakeTimeoutMs: 400 });
    const accepting = l.accept({ timeoutMs: 10_000 });
    const port = l.address.family === 'ipv4' ? l.address.port : 0;
    const staller = net.connect(port, '127.0.0.1'); // connects, says nothing
    staller.on('error', () => undefined);
    await new Promise((r) => staller.once('connect', r));
    const refusal = nextRefusal(l);
    const start = performance.now();
    const src = await connect(l.uri, { binding: native, tls: pki.client });
    const dst = await accepting;
    expect(performance.now() - start).toBeLessThan(390); // not after the staller's timeout
    await src.writeAll(Buffer.from('first'));
    expect((await dst.readExactly(5)).toString()).toBe('first');
    const r = await refusal;
    expect(r.reason).toMatch(/tls|second-peer/);
    staller.destroy();
    await Promise.all([src.close(), dst.close(), l.close()]);
  });

  it('after the authenticated peer, even another authenticated client is refused', async () => {
    const l = await listen('tcp:127.0.0.1:0', { binding: native, tls: pki.server });
    const [dst, src] = await Promise.all([l.accept(), connect(l.uri, { binding: native, tls: pki.client })]);
    const e = await failure(
      connect(l.uri, { binding: native, tls: pki.client }).then(async (second: Channel) => {
        try {
          await second.readExactly(1, { timeoutMs: 5000 });
        } finally {
          await second.close();
        }
      }),
    );
    expect(['ECONNRESET', 'EVFIO_PEER_CLOSED', 'EVFIO_TLS']).toContain(e.code);
    expect(l.refused.map((r) => r.reason)).toContain('second-peer');
    await Promise.all([src.close(), dst.close(), l.close()]);
  });

  describe('the client checks the server', () => {
    it('refuses a server whose certificate another CA signed (EVFIO_TLS), leaving nothing open', async () => {
      const l = await listen('tcp:127.0.0.1:0', { binding: native, tls: { ...pki.rogueServer, ca: pki.client.ca } });
      const before = openFds();
      void l.accept({ timeoutMs: 3000 }).catch(() => undefined);
      const e = await failure(connect(l.uri, { binding: native, tls: pki.client }));
      expect(e.code).toBe('EVFIO_TLS');
      expect(e.message).toMatch(/certificate/i);
      await sleep(50);
      expect(openFds()).toBeLessThanOrEqual(before + 1); // the listener's side may still be closing
      await l.close();
    });

    it('refuses a server certificate for another name; accepts it when serverName says that name', async () => {
      const l = await listen('tcp:127.0.0.1:0', { binding: native, tls: pki.otherNameServer });
      const accepting = l.accept({ timeoutMs: 5000 });
      const e = await failure(connect(l.uri, { binding: native, tls: pki.client }));
      expect(e.code).toBe('EVFIO_TLS');
      expect(e.message).toMatch(/altnames|IP|does not match/i);
      const src = await connect(l.uri, { binding: native, tls: { ...pki.client, serverName: 'other.example' } });
      const dst = await accepting;
      await src.writeAll(Buffer.from('named'));
      expect((await dst.readExactly(5)).toString()).toBe('named');
      await Promise.all([src.close(), dst.close(), l.close()]);
    });

    it('over unix: without serverName any certificate of the CA is accepted; with one, the name is checked', async () => {
      const p = path.join(dir, 'names.sock');
      const l = await listen(`unix:${p}`, { binding: native, tls: pki.otherNameServer });
      const accepting = l.accept({ timeoutMs: 5000 });
      await expect(connect(`unix:${p}`, { binding: native, tls: { ...pki.client, serverName: 'localhost' } })).rejects.toMatchObject({ code: 'EVFIO_TLS' });
      const src = await connect(`unix:${p}`, { binding: native, tls: pki.client });
      const dst = await accepting;
      await src.writeAll(Buffer.from('u'));
      expect((await dst.readExactly(1)).toString()).toBe('u');
      await Promise.all([src.close(), dst.close(), l.close()]);
    });
  });

  describe('credentials are checked before any connection', () => {
    it('a missing or unreadable file: its fs error, with the path; no socket made, no file bound', async () => {
      const before = openFds();
      const p = path.join(dir, 'never.sock');
      const nofile = path.join(dir, 'missing.pem');
      const e = await failure(listen(`unix:${p}`, { binding: native, tls: { ...pki.server, key: nofile } }));
      expect(e).toMatchObject({ code: 'ENOENT', path: nofile, kind: 'syscall' });
      expect(e.message).toContain('--tls-key');
      expect(fs.existsSync(p)).toBe(false);
      const unreadable = path.join(dir, 'dir.pem');
      fs.mkdirSync(unreadable);
      await expect(connect('tcp:127.0.0.1:1', { binding: native, tls: { ...pki.client, cert: unreadable } })).rejects.toMatchObject({ code: 'EISDIR', path: unreadable });
      expect(openFds()).toBe(before);
    });

    it('a missing option, a file that is not PEM, or a key that is not the certificate\'s: EVFIO_TLS naming the flag', async () => {
      await expect(loadTlsCredentials({ cert: pki.client.cert, key: '', ca: pki.client.ca })).rejects.toMatchObject({ code: 'EVFIO_TLS', message: expect.stringContaining('--tls-key') });
      const junk = path.join(dir, 'junk.pem');
      fs.writeFileSync(junk, 'not a certificate\n');
      await expect(loadTlsCredentials({ ...pki.client, ca: junk })).rejects.toMatchObject({ code: 'EVFIO_TLS', kind: 'usage', message: expect.stringContaining('--tls-ca') });
      await expect(loadTlsCredentials({ ...pki.client, cert: junk })).rejects.toMatchObject({ code: 'EVFIO_TLS', message: expect.stringContaining('--tls-cert') });
      await expect(loadTlsCredentials({ ...pki.client, key: junk })).rejects.toMatchObject({ code: 'EVFIO_TLS', message: expect.stringContaining('--tls-key') });
      await expect(loadTlsCredentials({ ...pki.client, key: pki.server.key })).rejects.toMatchObject({
        code: 'EVFIO_TLS',
        message: expect.stringContaining('is not the key of'),
      });
      const ok = await loadTlsCredentials(pki.client);
      expect(ok.subject).toContain('CN=vfio-source');
    });
  });

  it('a TLS channel is bounded like the others: idle timeout, abort', async () => {
    const l = await listen('tcp:127.0.0.1:0', { binding: native, tls: pki.server, idleTimeoutMs: 200 });
    const [dst, src] = await Promise.all([l.accept(), connect(l.uri, { binding: native, tls: pki.client, idleTimeoutMs: 200 })]);
    await expect(dst.readExactly(4)).rejects.toMatchObject({ code: 'ETIMEDOUT' });
    const ac = new AbortController();
    const p = src.readExactly(4, { signal: ac.signal });
    ac.abort();
    await expect(p).rejects.toMatchObject({ code: 'ECANCELED' });
    await Promise.all([src.close(), dst.close(), l.close()]);
  });
});

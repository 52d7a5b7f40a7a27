/**
 * Transport URIs (src/live/uri.ts) and the socket address codec's refusals
 * (src/kernel/uapi/socket.ts): pure TypeScript, no sockets.
 */
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { VfioError } from '../../src/base/errors';
import { decodeSockaddr, encodeSockaddr, isLoopbackAddress } from '../../src/kernel/uapi/socket';
import { describeSockaddr, formatUri, parseUri, resolveTcp, type Lookup } from '../../src/live/uri';

function usage(fn: () => unknown): VfioError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(VfioError);
    expect((e as VfioError).code).toBe('EVFIO_USAGE');
    expect((e as VfioError).kind).toBe('usage');
    return e as VfioError;
  }
  throw new Error('expected a usage error');
}

describe('parseUri', () => {
  it('tcp: IPv4, bracketed IPv6 (numeric zone), host names; ports', () => {
    expect(parseUri('tcp:127.0.0.1:4444', 'connect')).toEqual({ kind: 'tcp', host: '127.0.0.1', port: 4444 });
    expect(parseUri('tcp:[::1]:1', 'connect')).toEqual({ kind: 'tcp', host: '::1', port: 1 });
    expect(parseUri('tcp:[fe80::1%2]:65535', 'connect')).toEqual({ kind: 'tcp', host: 'fe80::1%2', port: 65535 });
    expect(parseUri('tcp:dst-host.example.org:4444', 'connect')).toEqual({ kind: 'tcp', host: 'dst-host.example.org', port: 4444 });
    expect(parseUri('tcp:localhost:0', 'listen')).toEqual({ kind: 'tcp', host: 'localhost', port: 0 });
    expect(parseUri('tcp::4444', 'listen')).toEqual({ kind: 'tcp', host: '', port: 4444 });
  });

  it('unix: absolute paths (relative ones made absolute), abstract names', () => {
    expect(parseUri('unix:/run/vfio/mig.sock', 'listen')).toEqual({ kind: 'unix', path: '/run/vfio/mig.sock' });
    expect(parseUri('unix:mig.sock', 'connect')).toEqual({ kind: 'unix', path: path.resolve('mig.sock') });
    expect(parseUri('unix:./@odd', 'connect')).toEqual({ kind: 'unix', path: path.resolve('@odd') });
    expect(parseUri('unix:@vfio-mig', 'listen')).toEqual({ kind: 'unix', path: 'vfio-mig', abstract: true });
    expect(parseUri(`unix:/${'a'.repeat(106)}`, 'listen')).toMatchObject({ kind: 'unix' }); // 107 bytes: the most
  });

  it.each([
    ['tcp:127.0.0.1', 'expected tcp:HOST:PORT'],
    ['tcp:127.0.0.1:', 'is not a number'],
    ['tcp:127.0.0.1:65536', 'outside'],
    ['tcp:127.0.0.1:0', 'outside [1, 65535]'],
    ['tcp:127.0.0.1:-1', 'is not a number'],
    ['tcp:127.0.0.1:44a', 'is not a number'],
    ['tcp::4444', 'a host to connect to is missing'],
    ['tcp:::1:4444', 'brackets'],
    ['tcp:[::1:4444', 'has no ]'],
    ['tcp:[::1]4444', 'expected :PORT'],
    ['tcp:[127.0.0.1]:4444', 'not an IPv6 address'],
    ['tcp:[fe80::1%eth0]:4444', 'interface index'],
    ['tcp:127.1:4444', 'not an IPv4 address'],
    ['tcp:300.1.1.1:4444', 'not an IPv4 address'],
    ['tcp:bad_host!:4444', 'not a host name'],
    ['unix:', 'path is missing'],
    ['unix:@', 'abstract socket name is missing'],
    [`unix:/${'a'.repeat(107)}`, '108 bytes, more than the 107'],
    [`unix:@${'é'.repeat(54)}`, '108 bytes'],
    ['unix:/a\0b', 'NUL'],
    ['fd:3', 'openChannel'],
    ['exec:nc host 4444', 'openChannel'],
    ['rdma:host:4444', 'use tcp:HOST:PORT'],
    ['TCP:127.0.0.1:1', 'use tcp:HOST:PORT'],
    ['', 'use tcp:HOST:PORT'],
  ])('refuses %j (%s)', (uri, why) => {
    const e = usage(() => parseUri(uri, 'connect'));
    expect(e.message).toContain(why);
    expect(e.message).toContain(JSON.stringify(uri));
  });

  it('refuses a non-string', () => {
    usage(() => parseUri(42 as unknown as string, 'listen'));
  });

  it('formats URIs back canonically', () => {
    for (const uri of ['tcp:127.0.0.1:4444', 'tcp:[::1]:5', 'tcp:host.example:80', 'unix:/tmp/x.sock', 'unix:@name']) {
      expect(formatUri(parseUri(uri, 'connect'))).toBe(uri);
    }
  });
});

describe('resolveTcp', () => {
  it('takes literals as they are, 0.0.0.0 for an empty host, and every address of a name in the resolver order', async () => {
    const never: Lookup = () => {
      throw new Error('no lookup for literals');
    };
    expect(await resolveTcp({ kind: 'tcp', host: '10.1.2.3', port: 9 }, { lookup: never })).toEqual([{ family: 'ipv4', address: '10.1.2.3', port: 9 }]);
    expect(await resolveTcp({ kind: 'tcp', host: '::1', port: 9 }, { lookup: never })).toEqual([{ family: 'ipv6', address: '::1', port: 9 }]);
    expect(await resolveTcp({ kind: 'tcp', host: '', port: 9 }, { lookup: never })).toEqual([{ family: 'ipv4', address: '0.0.0.0', port: 9 }]);
    const lookup: Lookup = (host, _o, cb) => cb(null, [{ address: '::1', family: 6 }, { address: '127.0.0.1', family: 4 }]);
    expect(await resolveTcp({ kind: 'tcp', host: 'dst', port: 7 }, { lookup })).toEqual([
      { family: 'ipv6', address: '::1', port: 7 },
      { family: 'ipv4', address: '127.0.0.1', port: 7 },
    ]);
  });

  it('reports a name that does not resolve (EVFIO_RESOLVE), a stalled resolver (ETIMEDOUT) and an abort (ECANCELED)', async () => {
    const fails: Lookup = (_h, _o, cb) => cb(Object.assign(new Error('getaddrinfo ENOTFOUND nowhere'), { code: 'ENOTFOUND' }), []);
    await expect(resolveTcp({ kind: 'tcp', host: 'nowhere', port: 1 }, { lookup: fails })).rejects.toMatchObject({ code: 'EVFIO_RESOLVE', kind: 'usage' });
    const stalls: Lookup = () => undefined;
    await expect(resolveTcp({ kind: 'tcp', host: 'slow', port: 1 }, { lookup: stalls, timeoutMs: 50 })).rejects.toMatchObject({ code: 'ETIMEDOUT' });
    const ac = new AbortController();
    const p = resolveTcp({ kind: 'tcp', host: 'slow', port: 1 }, { lookup: stalls, signal: ac.signal });
    ac.abort(new Error('user cancelled'));
    await expect(p).rejects.toMatchObject({ code: 'ECANCELED', message: expect.stringContaining('user cancelled') });
  });

  it('resolves localhost with the real resolver', async () => {
    const a = await resolveTcp({ kind: 'tcp', host: 'localhost', port: 1 });
    expect(a.length).toBeGreaterThan(0);
    for (const x of a) expect(x.family === 'ipv4' || x.family === 'ipv6' ? isLoopbackAddress(x.address) : false).toBe(true);
  });
});

describe('socket address codec (src/kernel/uapi/socket.ts)', () => {
  it('round-trips every family and describes it as a URI', () => {
    const cases = [
      [{ family: 'ipv4', address: '10.0.0.2', port: 50412 }, 'tcp:10.0.0.2:50412'],
      [{ family: 'ipv6', address: '2001:db8::1', port: 80 }, 'tcp:[2001:db8::1]:80'],
      [{ family: 'ipv6', address: 'fe80::1', port: 80, scopeId: 3 }, 'tcp:[fe80::1%3]:80'],
      [{ family: 'unix', path: '/run/x' }, 'unix:/run/x'],
      [{ family: 'unix', abstract: 'x' }, 'unix:@x'],
      [{ family: 'unix' }, 'unix:'],
    ] as const;
    for (const [addr, uri] of cases) {
      expect(decodeSockaddr(encodeSockaddr(addr))).toEqual(addr);
      expect(describeSockaddr(addr)).toBe(uri);
    }
    // A zone in the text is the scope id.
    expect(decodeSockaddr(encodeSockaddr({ family: 'ipv6', address: 'fe80::1%7', port: 1 }))).toEqual({ family: 'ipv6', address: 'fe80::1', port: 1, scopeId: 7 });
    expect(decodeSockaddr(Buffer.from([0x11, 0, 1, 2]))).toEqual({ family: 'other', af: 17, bytes: Buffer.from([0x11, 0, 1, 2]) });
  });

  it('sizes AF_UNIX addresses as the kernel wants them: path + NUL, NUL + abstract name, family alone', () => {
    expect(encodeSockaddr({ family: 'unix', path: '/a' }).length).toBe(2 + 2 + 1);
    expect(encodeSockaddr({ family: 'unix', abstract: 'ab' }).length).toBe(2 + 1 + 2);
    expect(encodeSockaddr({ family: 'unix' }).length).toBe(2);
  });

  it.each([
    [{ family: 'ipv4', address: '::1', port: 1 }, 'not an IPv4 address'],
    [{ family: 'ipv4', address: '127.1', port: 1 }, 'not an IPv4 address'],
    [{ family: 'ipv4', address: '127.0.0.1', port: 65536 }, 'port'],
    [{ family: 'ipv4', address: '127.0.0.1', port: 1.5 }, 'port'],
    [{ family: 'ipv6', address: '1.2.3.4', port: 1 }, 'not an IPv6 address'],
    [{ family: 'ipv6', address: 'fe80::1%eth0', port: 1 }, 'interface index'],
    [{ family: 'ipv6', address: '::1', port: 1, flowinfo: -1 }, 'flowinfo'],
    [{ family: 'unix', path: '' }, 'must not be empty'],
    [{ family: 'unix', path: 'a\0b' }, 'NUL'],
    [{ family: 'unix', path: 'x'.repeat(108) }, 'more than 107'],
    [{ family: 'unix', abstract: 'x'.repeat(108) }, 'more than 107'],
    [{ family: 'unix', path: '/a', abstract: 'b' }, 'not both'],
    [{ family: 'other', af: 17, bytes: Buffer.alloc(2) }, 'cannot encode'],
  ] as const)('encode refuses %j (%s)', (addr, why) => {
    expect(() => encodeSockaddr(addr as never)).toThrow(RangeError);
    expect(() => encodeSockaddr(addr as never)).toThrow(why);
  });

  it('decode refuses a buffer too short for its family', () => {
    expect(() => decodeSockaddr(Buffer.alloc(1))).toThrow(RangeError);
    expect(() => decodeSockaddr(Buffer.from([10, 0, 0, 0]))).toThrow('sockaddr_in6 needs 28 bytes');
  });

  it('tells loopback addresses', () => {
    for (const a of ['127.0.0.1', '127.255.0.9', '::1', '::ffff:127.0.0.1']) expect([a, isLoopbackAddress(a)]).toEqual([a, true]);
    for (const a of ['0.0.0.0', '::', '10.0.0.1', '::ffff:10.0.0.1', 'fe80::1', 'localhost', '']) expect([a, isLoopbackAddress(a)]).toEqual([a, false]);
  });
});

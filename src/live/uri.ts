/**
 * Transport URIs, as QEMU writes them for `-incoming` and `migrate`:
 *
 *   tcp:HOST:PORT      HOST an IPv4 address (127.0.0.1), an IPv6 address in brackets ([::1],
 *                      [fe80::1%2] with a numeric zone) or a host name (resolved with
 *                      dns.lookup, every address tried in the resolver's order); PORT in
 *                      [1, 65535] (0 too when listening: the kernel picks a free port). Listening
 *                      with an empty HOST (tcp::4444) binds every IPv4 address (0.0.0.0).
 *   unix:PATH          an AF_UNIX socket file; a relative PATH is made absolute against the
 *                      current directory when the URI is parsed. At most 107 bytes (sun_path,
 *                      unix(7)); a file literally named '@x' is written unix:./@x.
 *   unix:@NAME         an AF_UNIX socket in the abstract namespace (Linux, unix(7)): no file,
 *                      gone with its last socket, reachable by every process in the network
 *                      namespace whatever its user (no file permissions apply).
 *
 * Anything else is a usage error (VfioError 'EVFIO_USAGE') that lists these forms.
 */
import { lookup as dnsLookup, type LookupAddress } from 'node:dns';
import * as path from 'node:path';
import ipaddr from 'ipaddr.js';
import { VfioError } from '../base/errors';
import type { SockAddr } from '../kernel/uapi/socket';
import { UNIX_PATH_MAX } from '../kernel/uapi/socket';
import { abortedError, timeoutError, usageError } from './errors';

/** A parsed transport URI. */
export type TransportUri =
  | { kind: 'tcp'; host: string; port: number }
  | { kind: 'unix'; path: string; abstract?: false }
  | { kind: 'unix'; path: string; abstract: true };

/** Whether the URI is for listening (port 0 and an empty host allowed) or connecting. */
export type UriRole = 'listen' | 'connect';

const FORMS = 'tcp:HOST:PORT, tcp:[IPV6]:PORT, unix:PATH or unix:@NAME';
const LABEL = '[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?';
const HOSTNAME = new RegExp(`^${LABEL}(?:\\.${LABEL})*\\.?$`);

function bad(uri: string, why: string): VfioError {
  return usageError(`bad transport URI ${JSON.stringify(uri)}: ${why}`);
}

/**
 * Parse `uri` (module comment). Throws VfioError 'EVFIO_USAGE' naming what is wrong.
 */
export function parseUri(uri: string, role: UriRole): TransportUri {
  if (typeof uri !== 'string') throw usageError(`a transport URI must be a string (${FORMS})`);
  if (uri.startsWith('tcp:')) return parseTcp(uri, uri.slice(4), role);
  if (uri.startsWith('unix:')) return parseUnix(uri, uri.slice(5));
  const scheme = /^([a-z0-9+.-]+):/i.exec(uri)?.[1];
  const hint =
    scheme === 'fd' || scheme === 'exec' || scheme === 'file'
      ? `; ${scheme}: is not supported: hand a connected socket fd or a Duplex stream to openChannel() instead`
      : '';
  throw bad(uri, `use ${FORMS}${hint}`);
}

function parseTcp(uri: string, rest: string, role: UriRole): TransportUri {
  let host: string;
  let portText: string;
  if (rest.startsWith('[')) {
    const close = rest.indexOf(']');
    if (close < 0) throw bad(uri, 'an IPv6 address opened with [ has no ]');
    host = rest.slice(1, close);
    if (rest[close + 1] !== ':') throw bad(uri, 'expected :PORT after the ]');
    portText = rest.slice(close + 2);
    if (!ipaddr.IPv6.isValid(host)) throw bad(uri, `${JSON.stringify(host)} is not an IPv6 address`);
    const zone = ipaddr.IPv6.parse(host).zoneId;
    if (zone !== undefined && !/^\d+$/.test(zone)) throw bad(uri, `IPv6 zone ${JSON.stringify(zone)}: give the interface index (fe80::1%2)`);
  } else {
    const colon = rest.lastIndexOf(':');
    if (colon < 0) throw bad(uri, `expected tcp:HOST:PORT`);
    host = rest.slice(0, colon);
    portText = rest.slice(colon + 1);
    if (host.includes(':')) throw bad(uri, 'write an IPv6 address in brackets: tcp:[::1]:PORT');
    if (host === '') {
      if (role === 'connect') throw bad(uri, 'a host to connect to is missing');
    } else if (!ipaddr.IPv4.isValidFourPartDecimal(host)) {
      if (/^[0-9.]+$/.test(host)) throw bad(uri, `${JSON.stringify(host)} is not an IPv4 address (a.b.c.d)`);
      if (host.length > 253 || !HOSTNAME.test(host)) throw bad(uri, `${JSON.stringify(host)} is not a host name or address`);
    }
  }
  if (!/^\d{1,5}$/.test(portText)) throw bad(uri, `the port ${JSON.stringify(portText)} is not a number in [${role === 'listen' ? 0 : 1}, 65535]`);
  const port = Number(portText);
  if (port > 65535 || (port === 0 && role === 'connect')) throw bad(uri, `the port ${port} is outside [${role === 'listen' ? 0 : 1}, 65535]`);
  return { kind: 'tcp', host, port };
}

function parseUnix(uri: string, rest: string): TransportUri {
  if (rest === '') throw bad(uri, 'the socket path is missing (unix:PATH)');
  if (rest.includes('\0')) throw bad(uri, 'a socket path cannot contain NUL');
  const abstract = rest.startsWith('@');
  const name = abstract ? rest.slice(1) : path.resolve(rest);
  if (abstract && name === '') throw bad(uri, 'the abstract socket name is missing (unix:@NAME)');
  const bytes = Buffer.byteLength(name, 'utf8');
  if (bytes > UNIX_PATH_MAX - 1) {
    const what = abstract ? 'abstract name' : rest === name ? 'socket path' : `socket path (${name})`;
    throw bad(uri, `the ${what} is ${bytes} bytes, more than the ${UNIX_PATH_MAX - 1} an AF_UNIX address holds`);
  }
  return abstract ? { kind: 'unix', path: name, abstract: true } : { kind: 'unix', path: name };
}

/** The URI of `u` (the canonical form: IPv6 in brackets, absolute unix paths). */
export function formatUri(u: TransportUri): string {
  if (u.kind === 'unix') return u.abstract ? `unix:@${u.path}` : `unix:${u.path}`;
  return `tcp:${u.host.includes(':') ? `[${u.host}]` : u.host}:${u.port}`;
}

/** A socket address as a URI ('tcp:127.0.0.1:4444', 'tcp:[::1]:4444', 'unix:/run/x', 'unix:@x', 'unix:' when unnamed). */
export function describeSockaddr(a: SockAddr): string {
  switch (a.family) {
    case 'ipv4':
      return `tcp:${a.address}:${a.port}`;
    case 'ipv6':
      return `tcp:[${a.address}${a.scopeId ? `%${a.scopeId}` : ''}]:${a.port}`;
    case 'unix':
      return a.abstract !== undefined ? `unix:@${a.abstract}` : `unix:${a.path ?? ''}`;
    case 'other':
      return `address family ${a.af}`;
  }
}

/** The socket address of a unix URI. */
export function unixSockaddr(u: Extract<TransportUri, { kind: 'unix' }>): SockAddr {
  return u.abstract ? { family: 'unix', abstract: u.path } : { family: 'unix', path: u.path };
}

/** dns.lookup's shape, injectable for tests. */
export type Lookup = (host: string, options: { all: true; verbatim: true }, cb: (err: NodeJS.ErrnoException | null, addresses: LookupAddress[]) => void) => void;

export interface ResolveOptions {
  lookup?: Lookup;
  signal?: AbortSignal;
  /** Milliseconds the resolution may take (default: the resolver's own bound). */
  timeoutMs?: number;
}

/**
 * The socket addresses of a tcp URI, in the order to try them: the literal itself, 0.0.0.0 for
 * an empty host, or what dns.lookup({ all: true, verbatim: true }) answers for a name. Throws
 * VfioError 'EVFIO_RESOLVE' (kind 'usage') when the name does not resolve, 'ETIMEDOUT' /
 * 'ECANCELED' when the timeout or signal cut the lookup short.
 */
export async function resolveTcp(u: Extract<TransportUri, { kind: 'tcp' }>, opts: ResolveOptions = {}): Promise<SockAddr[]> {
  const { host, port } = u;
  if (host === '') return [{ family: 'ipv4', address: '0.0.0.0', port }];
  if (ipaddr.IPv4.isValidFourPartDecimal(host)) return [{ family: 'ipv4', address: host, port }];
  if (ipaddr.IPv6.isValid(host)) return [{ family: 'ipv6', address: host, port }];
  const op = `resolve ${host}`;
  const lookup = opts.lookup ?? (dnsLookup as unknown as Lookup);
  const found = await new Promise<LookupAddress[]>((resolve, reject) => {
    let timer: NodeJS.Timeout | undefined;
    const onAbort = (): void => finish(abortedError(op, opts.signal!));
    const finish = (err: unknown, value?: LookupAddress[]): void => {
      if (timer) clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
      if (err) reject(err);
      else resolve(value!);
    };
    if (opts.signal?.aborted) return onAbort();
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    if (opts.timeoutMs !== undefined) timer = setTimeout(() => finish(timeoutError(op, opts.timeoutMs!)), opts.timeoutMs);
    lookup(host, { all: true, verbatim: true }, (err, addresses) => {
      if (err) finish(new VfioError(`${op}: ${err.code ?? err.message}`, { code: 'EVFIO_RESOLVE', kind: 'usage', op, cause: err }));
      else finish(undefined, addresses);
    });
  });
  if (found.length === 0) throw new VfioError(`${op}: no address`, { code: 'EVFIO_RESOLVE', kind: 'usage', op });
  return found.map((a) => (a.family === 6 ? { family: 'ipv6', address: a.address, port } : { family: 'ipv4', address: a.address, port }));
}

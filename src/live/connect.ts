/**
 * The source's side of the transport: connect to a URI, or wrap a connection a VMM hands in.
 */
import type { Duplex } from 'node:stream';
import { TLSSocket } from 'node:tls';
import { VfioError, errnoName } from '../base/errors';
import { logger } from '../base/log';
import { loadBinding } from '../kernel/binding';
import { POLLOUT, type Binding } from '../kernel/binding/types';
import { FIOCLEX, FIONBIO, SOCK_STREAM, SOL_SOCKET, SO_DOMAIN, SO_ERROR, SO_TYPE, encodeSockaddr, type SockAddr } from '../kernel/uapi/socket';
import { DEFAULT_IDLE_TIMEOUT_MS, FdChannel, StreamChannel, type Channel, type ChannelOptions } from './channel';
import { usageError } from './errors';
import { describePeer, domainOf, netSocketOf, tuneSocket, waitFd } from './socket';
import { clientHandshake, loadTlsCredentials, type TlsOptions } from './tls';
import { describeSockaddr, formatUri, parseUri, resolveTcp, unixSockaddr, type Lookup } from './uri';

const log = logger('live');

/** Default bound of connect(): 30 s for resolution, connection and TLS handshake together. */
export const DEFAULT_CONNECT_TIMEOUT_MS = 30_000;

export interface ConnectOptions {
  /** TLS with mutual authentication (src/live/tls.ts); the files are read and checked before connecting. */
  tls?: TlsOptions;
  /** The binding (default: loadBinding()). */
  binding?: Binding;
  /** Name resolution (default dns.lookup). */
  lookup?: Lookup;
  /** Milliseconds for the whole connect (default DEFAULT_CONNECT_TIMEOUT_MS); ETIMEDOUT after. */
  timeoutMs?: number;
  /** Cancels the connect (ECANCELED). Not kept by the channel: give `channelSignal` for that. */
  signal?: AbortSignal;
  /** The channel's idle timeout, ms (default DEFAULT_IDLE_TIMEOUT_MS); also TCP_USER_TIMEOUT. */
  idleTimeoutMs?: number;
  /** The channel's own signal (ChannelOptions.signal). */
  channelSignal?: AbortSignal;
}

function positive(name: string, v: number | undefined): void {
  if (v !== undefined && (!Number.isSafeInteger(v) || v <= 0)) throw usageError(`${name} must be a positive integer (ms), got ${String(v)}`);
}

/**
 * Connect to `uri` (src/live/uri.ts): each address of the host in turn, until one answers.
 * Resolves with an FdChannel (plain) or a `secure` StreamChannel (TLS, after the server's
 * certificate was verified). Throws: 'EVFIO_USAGE' (the URI), TLS credential errors (before any
 * connection), 'EVFIO_RESOLVE', the connect(2) errors (ECONNREFUSED, ENOENT for a unix path
 * nobody made, ENETUNREACH, ...; the first address's when all fail), 'EVFIO_TLS' for a failed
 * handshake, ETIMEDOUT, ECANCELED. Nothing stays open on failure.
 */
export async function connect(uri: string, opts: ConnectOptions = {}): Promise<Channel> {
  const u = parseUri(uri, 'connect');
  positive('timeoutMs', opts.timeoutMs);
  positive('idleTimeoutMs', opts.idleTimeoutMs);
  const creds = opts.tls ? await loadTlsCredentials(opts.tls) : undefined;
  const binding = opts.binding ?? loadBinding();
  const timeoutMs = opts.timeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
  const idleTimeoutMs = opts.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS;
  const deadline = performance.now() + timeoutMs;
  const signals = opts.signal ? [opts.signal] : [];
  const op = `connect to ${formatUri(u)}`;
  const left = (): number => Math.max(1, Math.ceil(deadline - performance.now()));

  const candidates: SockAddr[] =
    u.kind === 'tcp' ? await resolveTcp(u, { lookup: opts.lookup, signal: opts.signal, timeoutMs }) : [unixSockaddr(u)];
  let firstError: unknown;
  for (const addr of candidates) {
    let fd: number;
    try {
      fd = await connectOne(binding, addr, { op, deadline, timeoutMs, signals });
    } catch (e) {
      firstError ??= e;
      // A timeout or an abort ends the whole connect; a refused address lets the next one try.
      if (e instanceof VfioError && (e.code === 'ETIMEDOUT' || e.code === 'ECANCELED')) break;
      log('%s: %s', op, (e as Error).message);
      continue;
    }
    const peer = describePeer(binding, fd);
    tuneSocket(binding, fd, domainOf(addr), idleTimeoutMs);
    if (!creds) {
      log('%s: connected to %s', op, peer);
      return new FdChannel(binding, fd, { idleTimeoutMs, peer, signal: opts.channelSignal });
    }
    const raw = netSocketOf(fd); // Node owns the fd from here
    const t = await clientHandshake(raw, creds, u.kind === 'tcp' ? u.host : undefined, `${op}: TLS handshake with ${peer}`, left(), opts.signal);
    const cert = t.getPeerCertificate();
    const who = cert?.subject?.CN ? `${peer} (certificate CN=${cert.subject.CN})` : peer;
    log('%s: connected to %s over TLS', op, who);
    return new StreamChannel(t, { secure: true, peer: who, idleTimeoutMs, signal: opts.channelSignal });
  }
  throw firstError instanceof VfioError ? firstError.annotate({ op }) : firstError;
}

/**
 * One non-blocking connect(2): socket, connect, wait for POLLOUT, SO_ERROR. Returns the
 * connected fd; closes it on every failure. An AF_UNIX listener whose backlog is full (EAGAIN)
 * is tried again every 10 ms until the deadline.
 */
async function connectOne(
  binding: Binding,
  addr: SockAddr,
  w: { op: string; deadline: number; timeoutMs: number; signals: AbortSignal[] },
): Promise<number> {
  const bytes = encodeSockaddr(addr);
  const target = describeSockaddr(addr);
  // connect(2)'s own failures, with the address tried in the message.
  const failed = (errno: number, cause?: unknown): VfioError =>
    new VfioError(`${w.op}: connect(2) to ${target} failed: ${errnoName(errno)}`, { code: errnoName(errno), errno, syscall: 'connect', op: w.op, cause });
  const polls = new Set<Promise<unknown>>();
  const track = (p: Promise<unknown>): void => {
    polls.add(p);
    const forget = (): void => {
      polls.delete(p);
    };
    p.then(forget, forget);
  };
  const fd = binding.socket(domainOf(addr), SOCK_STREAM);
  try {
    for (;;) {
      let connected: boolean;
      try {
        connected = binding.connect(fd, bytes);
      } catch (e) {
        if (!(e instanceof VfioError) || e.errno === undefined) throw e;
        if (e.code !== 'EAGAIN' || performance.now() >= w.deadline) throw failed(e.errno, e);
        await new Promise((r) => setTimeout(r, 10));
        continue;
      }
      if (!connected) {
        await waitFd(binding, fd, POLLOUT, { ...w, track });
        const err = binding.getsockopt(fd, SOL_SOCKET, SO_ERROR);
        if (err !== 0) throw failed(err);
      }
      return fd;
    }
  } catch (e) {
    // A poll that an abort left running must end before the fd number can be reused.
    await Promise.allSettled([...polls]);
    binding.close(fd);
    throw e;
  }
}

export interface OpenChannelOptions extends ChannelOptions {
  /** The binding, for a socket fd (default: loadBinding()). */
  binding?: Binding;
  /** A Duplex: whether its peer is authenticated and the bytes encrypted (default: an authorized TLSSocket). */
  secure?: boolean;
}

/**
 * A channel over a connection the VMM already has, to carry the migration inside its own
 * channel:
 *  - a socket fd (a number): it must be a connected stream socket (EVFIO_USAGE otherwise; the
 *    getpeername(2) error, ENOTCONN, when it is not connected). The channel takes it over: it is
 *    made non-blocking and close-on-exec, TCP options are set as for connect(), and close()
 *    closes it. The VMM must not read, write or close it afterwards (nor let libuv do so: do not
 *    pass the fd of a net.Socket). An FdChannel: the native pump can use it.
 *  - a Duplex (a net.Socket, a TLS socket, an HTTP/2 stream, ...): a StreamChannel, bytes through
 *    JavaScript. The channel owns the stream (close() destroys it).
 */
export function openChannel(source: number | Duplex, opts: OpenChannelOptions = {}): Channel {
  if (typeof source === 'number') {
    const binding = opts.binding ?? loadBinding();
    const op = `open a channel on fd ${source}`;
    let type: number;
    try {
      type = binding.getsockopt(source, SOL_SOCKET, SO_TYPE);
    } catch (e) {
      if (e instanceof VfioError && e.code === 'ENOTSOCK') throw usageError(`${op}: not a socket`, e);
      throw e instanceof VfioError ? e.annotate({ op }) : e;
    }
    if (type !== SOCK_STREAM) throw usageError(`${op}: not a stream socket (SO_TYPE ${type})`);
    const peer = opts.peer ?? describePeer(binding, source);
    binding.getpeername(source); // ENOTCONN for a socket that is not connected
    binding.ioctl(source, FIONBIO, Buffer.from(Int32Array.of(1).buffer));
    binding.ioctl(source, FIOCLEX);
    const domain = binding.getsockopt(source, SOL_SOCKET, SO_DOMAIN);
    const idleTimeoutMs = opts.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS;
    tuneSocket(binding, source, domain, idleTimeoutMs);
    return new FdChannel(binding, source, { ...opts, idleTimeoutMs, peer });
  }
  if (typeof source !== 'object' || source === null || typeof source.read !== 'function' || typeof source.write !== 'function') {
    throw usageError('openChannel needs a connected socket fd or a Duplex stream');
  }
  const secure = opts.secure ?? (source instanceof TLSSocket && source.authorized);
  return new StreamChannel(source, { ...opts, secure, peer: opts.peer ?? 'stream' });
}

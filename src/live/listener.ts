/**
 * The destination's side of the transport: listen on a URI and accept exactly one migration
 * connection.
 *
 * One-connection rule (docs/live-transport.md):
 *  - Without TLS the first peer to connect is the migration's: accept() returns its channel.
 *    Every later peer, and any other peer already queued at that moment, is refused: accepted and
 *    closed at once (TCP: with a reset, SO_LINGER 0), reported in `refused` and as a 'refused'
 *    event, and logged on the `vfio:live` debug namespace. This goes on until close(), every
 *    REFUSE_INTERVAL_MS (a timer that does not keep the process alive); after close() the
 *    kernel refuses them (ECONNREFUSED).
 *  - With TLS only a peer whose certificate the CA signed can become the migration's: peers that
 *    fail the TLS handshake (no certificate, another CA's, a timeout) are refused by TLS itself,
 *    reported (reason 'tls') and do not take the place; up to 8 handshakes run at once, so a peer
 *    that stalls its handshake does not hold a genuine one back. Once one peer is authenticated,
 *    every other is refused as above.
 *  - Listening on a non-loopback address without TLS, or on an abstract unix socket without TLS,
 *    adds a warning to `warnings` (the CLI prints them): anyone who can reach the address could
 *    be the first peer and feed device state to this host's driver.
 *
 * Waits: accept() is bounded by `timeoutMs` (none by default: a destination waits for its source)
 * and cancelled by `signal` (ECANCELED) or close() (EVFIO_CLOSED); each TLS handshake by
 * `handshakeTimeoutMs`. close() stops the refusing, closes the listening socket, and removes the
 * unix socket file it created, if the path still holds that same socket (same device and inode):
 * a file that something else put there since is left alone. The accepted channel is the
 * caller's, and stays open.
 */
import { lstatSync, unlinkSync } from 'node:fs';
import { EventEmitter } from 'eventemitter3';
import { VfioError } from '../base/errors';
import { logger } from '../base/log';
import { loadBinding } from '../kernel/binding';
import { POLLIN, type Binding } from '../kernel/binding/types';
import {
  AF_UNIX, SHUT_RDWR, SOCK_STREAM, SOL_SOCKET, SO_LINGER, SO_REUSEADDR, decodeSockaddr, encodeLinger, encodeSockaddr, isLoopbackAddress,
  type SockAddr,
} from '../kernel/uapi/socket';
import { DEFAULT_IDLE_TIMEOUT_MS, FdChannel, StreamChannel, type Channel } from './channel';
import { abortedError, closedError, timeoutError, usageError } from './errors';
import { POLL_SLICE_MS, describePeer, domainOf, netSocketOf, tuneSocket, waitFd } from './socket';
import { loadTlsCredentials, serverHandshake, type TlsCredentials, type TlsOptions } from './tls';
import { describeSockaddr, parseUri, resolveTcp, unixSockaddr, type Lookup } from './uri';

const log = logger('live');

/** Default bound of a TLS handshake: 10 s. */
export const DEFAULT_HANDSHAKE_TIMEOUT_MS = 10_000;
/** TLS handshakes run at once while accepting; more peers are refused. */
export const MAX_CONCURRENT_HANDSHAKES = 8;
/**
 * How often the listener looks for peers to refuse once it has its connection: a non-blocking
 * accept(2) on a timer, so that refusing holds no thread while nobody knocks (a refused peer
 * waits in the backlog at most this long).
 */
export const REFUSE_INTERVAL_MS = 200;
/** Most refusals kept in `Listener.refused` (the count goes on). */
const MAX_REFUSED_KEPT = 100;
/** Errors of accept(2) that belong to the pending connection, not the listener (accept(2), "Error handling"). */
const TRANSIENT_ACCEPT = new Set(['EAGAIN', 'ECONNABORTED', 'EPROTO', 'ENETDOWN', 'ENOPROTOOPT', 'EHOSTDOWN', 'ENONET', 'EHOSTUNREACH', 'EOPNOTSUPP', 'ENETUNREACH', 'EINTR']);

export interface ListenOptions {
  /** TLS with mutual authentication (src/live/tls.ts); the files are read and checked before the socket is made. */
  tls?: TlsOptions;
  /** The binding (default: loadBinding()). */
  binding?: Binding;
  /** Name resolution (default dns.lookup). */
  lookup?: Lookup;
  /** listen(2) backlog (default 8). */
  backlog?: number;
  /** The accepted channel's idle timeout, ms (default DEFAULT_IDLE_TIMEOUT_MS); also TCP_USER_TIMEOUT. */
  idleTimeoutMs?: number;
  /** Bound of each TLS handshake, ms (default DEFAULT_HANDSHAKE_TIMEOUT_MS). */
  handshakeTimeoutMs?: number;
}

export interface AcceptOptions {
  /** Cancels the wait (ECANCELED). */
  signal?: AbortSignal;
  /** Milliseconds to wait for the migration's peer (default: no bound); ETIMEDOUT after. */
  timeoutMs?: number;
}

/** A peer the listener turned away. */
export interface RefusedPeer {
  /** Who ('tcp:10.0.0.9:51234', 'unix peer pid 42 uid 1000'). */
  peer: string;
  /** 'second-peer': the migration's connection was already taken; 'tls': it failed TLS authentication (or its handshake); 'busy': too many handshakes at once. */
  reason: 'second-peer' | 'tls' | 'busy';
  /** For 'tls': what went wrong. */
  error?: VfioError;
}

export interface ListenerEvents {
  refused: [RefusedPeer];
}

/**
 * Listen on `uri` (src/live/uri.ts) for one migration connection. Resolves once the socket
 * listens. Throws: 'EVFIO_USAGE' (the URI), the TLS credential errors of loadTlsCredentials,
 * 'EVFIO_RESOLVE', and the syscall errors of socket/bind/listen (EADDRINUSE when something
 * listens there already; EACCES ...). A stale unix socket file (one nobody listens on:
 * ECONNREFUSED) is replaced.
 */
export async function listen(uri: string, opts: ListenOptions = {}): Promise<Listener> {
  const u = parseUri(uri, 'listen');
  const backlog = opts.backlog ?? 8;
  if (!Number.isSafeInteger(backlog) || backlog < 1 || backlog > 0x7fffffff) throw usageError(`backlog must be a positive integer, got ${String(backlog)}`);
  for (const [name, v] of [['idleTimeoutMs', opts.idleTimeoutMs], ['handshakeTimeoutMs', opts.handshakeTimeoutMs]] as const) {
    if (v !== undefined && (!Number.isSafeInteger(v) || v <= 0)) throw usageError(`${name} must be a positive integer (ms), got ${String(v)}`);
  }
  const creds = opts.tls ? await loadTlsCredentials(opts.tls) : undefined;
  const binding = opts.binding ?? loadBinding();
  const candidates = u.kind === 'tcp' ? await resolveTcp(u, { lookup: opts.lookup }) : [unixSockaddr(u)];
  const op = `listen on ${uri}`;

  let firstError: unknown;
  for (const addr of candidates) {
    let fd = -1;
    try {
      fd = binding.socket(domainOf(addr), SOCK_STREAM);
      if (addr.family !== 'unix') binding.setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, 1);
      bindReplacingStale(binding, fd, addr);
      const owned = addr.family === 'unix' && addr.path !== undefined ? socketFileId(addr.path) : undefined;
      try {
        binding.listen(fd, backlog);
      } catch (e) {
        if (owned) removeOwnSocketFile(owned);
        throw e;
      }
      const local = decodeSockaddr(binding.getsockname(fd));
      return new Listener(binding, fd, local, owned, creds, opts);
    } catch (e) {
      if (fd >= 0) binding.close(fd);
      firstError ??= e;
      log('%s: %s failed: %s', op, describeSockaddr(addr), (e as Error).message);
    }
  }
  throw firstError instanceof VfioError ? firstError.annotate({ op }) : firstError;
}

/** A socket file's identity, to remove it on close only if it is still the one bound. */
interface SocketFileId {
  path: string;
  dev: number;
  ino: number;
}

function socketFileId(path: string): SocketFileId | undefined {
  try {
    const st = lstatSync(path);
    return st.isSocket() ? { path, dev: st.dev, ino: st.ino } : undefined;
  } catch {
    return undefined;
  }
}

function removeOwnSocketFile(id: SocketFileId): void {
  const now = socketFileId(id.path);
  if (!now || now.dev !== id.dev || now.ino !== id.ino) {
    log('not removing %s: it is no longer the socket this listener made', id.path);
    return;
  }
  try {
    unlinkSync(id.path);
  } catch (e) {
    log('removing %s: %s', id.path, (e as Error).message);
  }
}

/**
 * bind(2); for an AF_UNIX path that exists (EADDRINUSE), replace it if it is a socket nobody
 * listens on (a connect gets ECONNREFUSED: what a crashed destination leaves), once.
 */
function bindReplacingStale(binding: Binding, fd: number, addr: SockAddr): void {
  const bytes = encodeSockaddr(addr);
  try {
    binding.bind(fd, bytes);
    return;
  } catch (e) {
    if (!(e instanceof VfioError) || e.code !== 'EADDRINUSE' || addr.family !== 'unix' || addr.path === undefined) throw e;
    if (!socketFileId(addr.path)) {
      throw new VfioError(`bind ${addr.path}: EADDRINUSE (the path exists and is not a socket; it is left as it is)`, {
        code: 'EADDRINUSE', errno: e.errno, syscall: 'bind', path: addr.path, cause: e,
      });
    }
    const probe = binding.socket(AF_UNIX, SOCK_STREAM);
    let stale = false;
    try {
      binding.connect(probe, bytes);
    } catch (ce) {
      stale = ce instanceof VfioError && ce.code === 'ECONNREFUSED';
    } finally {
      binding.close(probe);
    }
    if (!stale) {
      throw new VfioError(`bind ${addr.path}: EADDRINUSE (another process listens on this socket)`, {
        code: 'EADDRINUSE', errno: e.errno, syscall: 'bind', path: addr.path, cause: e,
      });
    }
    log('replacing the stale socket file %s', addr.path);
    unlinkSync(addr.path);
    binding.bind(fd, bytes);
  }
}

/** A listening socket that accepts one migration connection (module comment). */
export class Listener extends EventEmitter<ListenerEvents> {
  /** The URI peers connect to (with the port the kernel picked for tcp:HOST:0). */
  readonly uri: string;
  /** Whether peers must pass TLS mutual authentication. */
  readonly secure: boolean;
  /** Warnings about this listener's exposure, for the CLI to print (module comment). */
  readonly warnings: readonly string[];
  /** The last refused peers (at most 100; `refusedCount` counts them all). */
  readonly refused: RefusedPeer[] = [];
  refusedCount = 0;

  private state: 'listening' | 'accepting' | 'accepted' = 'listening';
  private closing?: Promise<void>;
  private refuseTimer?: NodeJS.Timeout;
  private readonly inflight = new Set<Promise<unknown>>();
  private readonly idleTimeoutMs: number;
  private readonly handshakeTimeoutMs: number;

  /** @internal use listen() */
  constructor(
    private readonly binding: Binding,
    private readonly fd: number,
    /** The bound address. */
    readonly address: SockAddr,
    private readonly socketFile: SocketFileId | undefined,
    private readonly creds: TlsCredentials | undefined,
    opts: ListenOptions,
  ) {
    super();
    this.uri = describeSockaddr(address);
    this.secure = creds !== undefined;
    this.idleTimeoutMs = opts.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS;
    this.handshakeTimeoutMs = opts.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS;
    const warnings: string[] = [];
    if (!creds && (address.family === 'ipv4' || address.family === 'ipv6') && !isLoopbackAddress(address.address)) {
      warnings.push(
        `listening on ${this.uri} without TLS: any host that can reach this address can be the first to connect and feed device state to ` +
          `this host's driver; use --tls-cert, --tls-key and --tls-ca, or a loopback address or a unix: socket`,
      );
    }
    if (!creds && address.family === 'unix' && address.abstract !== undefined) {
      warnings.push(
        `listening on ${this.uri} (an abstract unix socket) without TLS: any process in this network namespace can connect, whatever its user; ` +
          `use --tls-cert, --tls-key and --tls-ca, or unix:PATH in a directory only the migration's users can reach`,
      );
    }
    this.warnings = warnings;
    for (const w of warnings) log('warning: %s', w);
    log('listening on %s%s', this.uri, this.secure ? ' (TLS, mutual authentication)' : '');
  }

  get closed(): boolean {
    return this.closing !== undefined;
  }

  /**
   * Wait for the migration's peer and return its channel: an FdChannel without TLS, a
   * StreamChannel (`secure`) with it. Once only: a second call is a usage error, as is a call
   * while one is pending; after a timeout or an abort, accept() may be called again. Throws
   * ETIMEDOUT, ECANCELED, EVFIO_CLOSED (close() during the wait), and accept(2) errors that
   * concern the listener itself (EMFILE ...).
   */
  async accept(opts: AcceptOptions = {}): Promise<Channel> {
    const op = `accept the migration connection on ${this.uri}`;
    if (this.closing) throw closedError('listener', op);
    if (this.state !== 'listening') {
      throw usageError(`${op}: ${this.state === 'accepted' ? 'this listener already accepted its one connection' : 'an accept() is already waiting'}`);
    }
    if (opts.timeoutMs !== undefined && (!Number.isSafeInteger(opts.timeoutMs) || opts.timeoutMs <= 0)) {
      throw usageError(`timeoutMs must be a positive integer (ms), got ${String(opts.timeoutMs)}`);
    }
    this.state = 'accepting';
    const w = {
      op,
      timeoutMs: opts.timeoutMs ?? 0,
      deadline: opts.timeoutMs === undefined ? Infinity : performance.now() + opts.timeoutMs,
      signals: opts.signal ? [opts.signal] : [],
    };
    try {
      const channel = this.creds ? await this.acceptTls(this.creds, w) : await this.acceptPlain(w);
      this.state = 'accepted';
      log('%s: accepted %s', this.uri, channel.peer);
      this.refuseOthers();
      return channel;
    } catch (e) {
      this.state = 'listening';
      if (this.closing && !(e instanceof VfioError && e.code === 'EVFIO_CLOSED')) throw closedError('listener', op);
      throw e;
    }
  }

  /** Close the listening socket (idempotent); see the module comment. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      try {
        this.binding.shutdown(this.fd, SHUT_RDWR); // wakes the polls on it
      } catch {
        /* not every kernel path supports it; the slices end anyway */
      }
      clearTimeout(this.refuseTimer);
      while (this.inflight.size > 0) await Promise.allSettled([...this.inflight]);
      this.binding.close(this.fd);
      if (this.socketFile) removeOwnSocketFile(this.socketFile);
      log('%s: listener closed (%d peers refused)', this.uri, this.refusedCount);
    })();
    return this.closing;
  }

  // ---------------------------------------------------------------------------- internals

  private track<T>(p: Promise<T>): Promise<T> {
    this.inflight.add(p);
    const forget = (): void => {
      this.inflight.delete(p);
    };
    p.then(forget, forget);
    return p;
  }

  /** One accept(2): the new fd, or undefined when none is pending (or it failed on its own). */
  private tryAccept(): number | undefined {
    try {
      return this.binding.accept(this.fd);
    } catch (e) {
      if (e instanceof VfioError && TRANSIENT_ACCEPT.has(e.code)) {
        if (e.code !== 'EAGAIN') log('%s: accept: %s (skipped)', this.uri, e.code);
        return undefined;
      }
      throw e;
    }
  }

  private stopError(op: string): Error | undefined {
    return this.closing ? closedError('listener', op) : undefined;
  }

  private async acceptPlain(w: { op: string; timeoutMs: number; deadline: number; signals: AbortSignal[] }): Promise<Channel> {
    for (;;) {
      const conn = this.tryAccept();
      if (conn !== undefined) return this.plainChannel(conn);
      await waitFd(this.binding, this.fd, POLLIN, { ...w, track: (p) => this.track(p), stop: () => this.stopError(w.op) });
    }
  }

  private plainChannel(conn: number): Channel {
    tuneSocket(this.binding, conn, domainOf(this.address), this.idleTimeoutMs);
    return new FdChannel(this.binding, conn, { idleTimeoutMs: this.idleTimeoutMs, peer: describePeer(this.binding, conn) });
  }

  /**
   * Accept peers and run their TLS handshakes side by side until one is authenticated; the
   * others are destroyed and reported.
   */
  private async acceptTls(creds: TlsCredentials, w: { op: string; timeoutMs: number; deadline: number; signals: AbortSignal[] }): Promise<Channel> {
    const handshakes = new Set<Promise<void>>();
    const stopHandshakes = new AbortController();
    let winner: Channel | undefined;
    let wake: () => void = () => undefined;
    let changed = new Promise<void>((r) => (wake = r));
    const rearm = (): void => {
      changed = new Promise<void>((r) => (wake = r));
    };
    let onAbort: () => void = () => undefined;
    const abortWait = new Promise<never>((_, reject) => {
      onAbort = () => reject(abortedError(w.op, w.signals.find((s) => s.aborted)!));
      for (const s of w.signals) s.addEventListener('abort', onAbort, { once: true });
    });
    abortWait.catch(() => undefined);
    let returned = false;
    try {
      for (;;) {
        if (winner) {
          returned = true;
          return winner;
        }
        const stopped = this.stopError(w.op);
        if (stopped) throw stopped;
        const fired = w.signals.find((s) => s.aborted);
        if (fired) throw abortedError(w.op, fired);
        const conn = this.tryAccept();
        if (conn !== undefined) {
          const peer = describePeer(this.binding, conn);
          if (handshakes.size >= MAX_CONCURRENT_HANDSHAKES) {
            this.refuse(conn, { peer, reason: 'busy' });
            continue;
          }
          const raw = netSocketOf(conn); // Node owns the fd from here
          const hs = serverHandshake(raw, creds, `TLS handshake with ${peer}`, this.handshakeTimeoutMs, stopHandshakes.signal).then(
            (t) => {
              if (winner || stopHandshakes.signal.aborted) {
                t.destroy();
                this.report({ peer, reason: 'second-peer' });
              } else {
                const cert = t.getPeerCertificate();
                const who = cert?.subject?.CN ? `${peer} (certificate CN=${cert.subject.CN})` : peer;
                winner = new StreamChannel(t, { secure: true, peer: who, idleTimeoutMs: this.idleTimeoutMs });
              }
            },
            (e: unknown) => this.report({ peer, reason: winner ? 'second-peer' : 'tls', error: e as VfioError }),
          );
          const tracked = hs.finally(() => {
            handshakes.delete(tracked);
            wake();
            rearm();
          });
          handshakes.add(tracked);
          continue;
        }
        const left = w.deadline === Infinity ? POLL_SLICE_MS : Math.ceil(w.deadline - performance.now());
        if (left <= 0) throw timeoutError(w.op, w.timeoutMs);
        const poll = this.track(this.binding.poll(this.fd, POLLIN, Math.min(POLL_SLICE_MS, left)));
        await Promise.race([poll, changed, abortWait]);
      }
    } finally {
      for (const s of w.signals) s.removeEventListener('abort', onAbort);
      stopHandshakes.abort(new Error(winner ? 'another peer was authenticated first' : 'accept ended'));
      await Promise.allSettled([...handshakes]);
      // A peer authenticated while the wait failed (timeout, abort, close): nobody takes its channel.
      if (winner && !returned) await winner.close();
    }
  }

  /** After the one connection: accept every further peer and close it at once, until close(). */
  private refuseOthers(): void {
    this.refuseTimer = undefined;
    if (this.closing) return;
    for (;;) {
      let conn: number | undefined;
      try {
        conn = this.tryAccept();
      } catch (e) {
        log('%s: accept while refusing: %s; no longer refusing', this.uri, (e as Error).message);
        return;
      }
      if (conn === undefined) break;
      this.refuse(conn, { peer: describePeer(this.binding, conn), reason: 'second-peer' });
    }
    this.refuseTimer = setTimeout(() => this.refuseOthers(), REFUSE_INTERVAL_MS);
    this.refuseTimer.unref();
  }

  /** Close a peer's fd at once (TCP: a reset, not a FIN) and report it. */
  private refuse(conn: number, r: RefusedPeer): void {
    if (this.address.family !== 'unix') {
      try {
        this.binding.setsockopt(conn, SOL_SOCKET, SO_LINGER, encodeLinger(true, 0));
      } catch {
        /* a plain close then */
      }
    }
    this.binding.close(conn);
    this.report(r);
  }

  private report(r: RefusedPeer): void {
    this.refusedCount++;
    this.refused.push(r);
    if (this.refused.length > MAX_REFUSED_KEPT) this.refused.shift();
    log('%s: refused %s (%s)%s', this.uri, r.peer, r.reason, r.error ? `: ${r.error.message}` : '');
    this.emit('refused', r);
  }
}

/**
 * Socket helpers shared by the listener and the connector: families, per-connection options,
 * peer descriptions, and the bounded poll wait.
 */
import { Socket } from 'node:net';
import { VfioError } from '../base/errors';
import { logger } from '../base/log';
import type { Binding } from '../kernel/binding/types';
import {
  AF_INET, AF_INET6, AF_UNIX, IPPROTO_TCP, SOL_SOCKET, SO_KEEPALIVE, SO_PEERCRED, SO_SNDBUF, SIZEOF_UCRED, TCP_KEEPCNT, TCP_KEEPIDLE, TCP_KEEPINTVL,
  TCP_NODELAY, TCP_USER_TIMEOUT, decodeSockaddr, decodeUcred, type SockAddr,
} from '../kernel/uapi/socket';
import { abortedError, timeoutError } from './errors';
import { describeSockaddr } from './uri';

const log = logger('live');

/**
 * Longest single poll(2) of a wait. Each slice holds a libuv pool thread (4 by default, shared
 * with fs and dns); between slices, queued work gets its turn. Aborts do not wait for the slice
 * to end; close() does, at most this long, unless a shutdown(2) wakes the poll first.
 */
export const POLL_SLICE_MS = 100;

/** The AF_* of an address. */
export function domainOf(a: SockAddr): number {
  return a.family === 'ipv4' ? AF_INET : a.family === 'ipv6' ? AF_INET6 : AF_UNIX;
}

/**
 * The send buffer asked for on a unix socket (SO_SNDBUF; the kernel doubles it and caps the
 * request at net.core.wmem_max). A unix stream's sender is charged for what the receiver has
 * not read yet, and the default (net.core.wmem_default, 208 KiB) holds less than two of the
 * pump's 1 MiB DATA frames, so each frame took several send(2)/poll(2) rounds and wake-ups.
 */
export const UNIX_SNDBUF = 2 * 1024 * 1024;

/**
 * Per-connection options by socket family: TCP as tuneTcp, a unix socket's SO_SNDBUF
 * (UNIX_SNDBUF). Failures are logged, not fatal.
 */
export function tuneSocket(binding: Binding, fd: number, domain: number, idleTimeoutMs: number): void {
  if (domain === AF_INET || domain === AF_INET6) return tuneTcp(binding, fd, idleTimeoutMs);
  if (domain !== AF_UNIX) return;
  try {
    binding.setsockopt(fd, SOL_SOCKET, SO_SNDBUF, UNIX_SNDBUF);
  } catch (e) {
    log('setsockopt SO_SNDBUF on fd %d: %s', fd, (e as Error).message);
  }
}

/**
 * Options of a connected TCP socket: TCP_NODELAY (the protocol's small control messages go out
 * at once), keepalive probes that find a vanished host within about the idle timeout
 * (TCP_KEEPIDLE = TCP_KEEPINTVL = idle/3 s, 3 probes), and TCP_USER_TIMEOUT = the idle timeout,
 * so that data left unacknowledged that long (a peer gone, or a zero window nobody opens) makes
 * the kernel drop the connection with ETIMEDOUT: this also bounds the native pump, which does
 * not know the channel's timeouts (tcp(7)). Failures are logged, not fatal.
 */
function tuneTcp(binding: Binding, fd: number, idleTimeoutMs: number): void {
  const probe = Math.max(1, Math.min(32767, Math.floor(idleTimeoutMs / 3000)));
  const opts: Array<[number, number, number, string]> = [
    [IPPROTO_TCP, TCP_NODELAY, 1, 'TCP_NODELAY'],
    [SOL_SOCKET, SO_KEEPALIVE, 1, 'SO_KEEPALIVE'],
    [IPPROTO_TCP, TCP_KEEPIDLE, probe, 'TCP_KEEPIDLE'],
    [IPPROTO_TCP, TCP_KEEPINTVL, probe, 'TCP_KEEPINTVL'],
    [IPPROTO_TCP, TCP_KEEPCNT, 3, 'TCP_KEEPCNT'],
    [IPPROTO_TCP, TCP_USER_TIMEOUT, Math.min(idleTimeoutMs, 0x7fffffff), 'TCP_USER_TIMEOUT'],
  ];
  for (const [level, name, value, label] of opts) {
    try {
      binding.setsockopt(fd, level, name, value);
    } catch (e) {
      log('setsockopt %s on fd %d: %s', label, fd, (e as Error).message);
    }
  }
}

/**
 * The peer of a connected socket, for messages: its address as a URI, or for an unnamed AF_UNIX
 * peer (the connecting side of a unix socket) its credentials ('unix peer pid 42 uid 1000',
 * SO_PEERCRED: the process that connected).
 */
export function describePeer(binding: Binding, fd: number): string {
  try {
    const a = decodeSockaddr(binding.getpeername(fd));
    if (a.family === 'unix' && a.path === undefined && a.abstract === undefined) {
      try {
        const buf = Buffer.alloc(SIZEOF_UCRED);
        binding.getsockopt(fd, SOL_SOCKET, SO_PEERCRED, buf);
        const c = decodeUcred(buf);
        return `unix peer pid ${c.pid} uid ${c.uid}`;
      } catch {
        /* no credentials: fall back to the address */
      }
    }
    return describeSockaddr(a);
  } catch (e) {
    return `fd ${fd} (${(e as VfioError).code ?? 'no peer'})`;
  }
}

/**
 * Wait until `fd` is ready for `events`, in poll slices of at most POLL_SLICE_MS: resolves with
 * the revents (which may be POLLERR / POLLHUP: the next call says what happened); ETIMEDOUT
 * (reported with `timeoutMs`) at `deadline` (performance.now() ms, Infinity for none), ECANCELED
 * when a signal fires (at once), and `stop()`'s error when it returns one between slices. Every
 * poll started is passed to `track` (its owner waits for it before closing the fd).
 */
export async function waitFd(
  binding: Binding,
  fd: number,
  events: number,
  w: { op: string; deadline: number; timeoutMs: number; signals: AbortSignal[]; track: (p: Promise<unknown>) => void; stop?: () => Error | undefined },
): Promise<number> {
  for (;;) {
    const stopped = w.stop?.();
    if (stopped) throw stopped;
    const fired = w.signals.find((s) => s.aborted);
    if (fired) throw abortedError(w.op, fired);
    const left = w.deadline === Infinity ? POLL_SLICE_MS : Math.ceil(w.deadline - performance.now());
    if (left <= 0) throw timeoutError(w.op, w.timeoutMs);
    const p = binding.poll(fd, events, Math.min(POLL_SLICE_MS, left));
    w.track(p);
    const revents = await raceSignals(p, w.signals, w.op);
    if (revents !== 0) return revents;
  }
}

function raceSignals<T>(p: Promise<T>, signals: AbortSignal[], op: string): Promise<T> {
  if (signals.length === 0) return p;
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => {
      off();
      reject(abortedError(op, signals.find((s) => s.aborted)!));
    };
    const off = (): void => signals.forEach((s) => s.removeEventListener('abort', onAbort));
    signals.forEach((s) => s.addEventListener('abort', onAbort, { once: true }));
    p.then(
      (v) => (off(), resolve(v)),
      (e: unknown) => (off(), reject(e)),
    );
  });
}

/**
 * Hand a connected socket fd over to Node (for TLS, whose bytes go through Node streams): the
 * net.Socket owns the fd from now on and closes it when destroyed.
 */
export function netSocketOf(fd: number): Socket {
  return new Socket({ fd, readable: true, writable: true });
}

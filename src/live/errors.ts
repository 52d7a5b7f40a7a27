/**
 * The transport's errors (VfioError, src/base/errors.ts), one maker per way a connection fails,
 * so that callers branch on `code`:
 *  - 'EVFIO_USAGE' (kind 'usage'): a URI or option the transport cannot use;
 *  - 'EVFIO_TLS' (kind 'usage'): TLS credentials that cannot be loaded or used, found before any
 *    connection; (kind 'peer'): a TLS handshake that failed or a peer that was not
 *    authenticated;
 *  - 'ETIMEDOUT' (kind 'peer', errno ETIMEDOUT): a wait passed its bound (idle timeout,
 *    connect or accept timeout, TLS handshake timeout);
 *  - 'ECANCELED' (kind 'cancelled', errno ECANCELED): an AbortSignal fired; `cause` is its reason;
 *  - 'EVFIO_PEER_CLOSED' (kind 'peer'): the peer ended the stream before the bytes a read
 *    expected (the message names what was expected and how much of it came);
 *  - 'EVFIO_CHANNEL_BROKEN' (kind 'peer'): a call on a channel whose byte stream lost its
 *    place (an earlier read or write failed after moving part of its bytes); `cause` is that failure;
 *  - 'EVFIO_CLOSED' (kind 'usage'): a call on a channel or listener that was closed;
 *  - 'EVFIO_TRANSPORT' (kind 'peer'): another failure of a Node stream (its code in the message);
 *  - syscall errors (kind 'syscall') as the binding or Node report them: ECONNREFUSED,
 *    ECONNRESET, EPIPE, EADDRINUSE, ...
 * Every error carries `op`: the transport step ('connect tcp:host:port', 'read frame header', ...).
 */
import { constants as osConstants } from 'node:os';
import { VfioError, type ErrnoName } from '../base/errors';

export function usageError(message: string, cause?: unknown): VfioError {
  return new VfioError(message, { code: 'EVFIO_USAGE', kind: 'usage', cause });
}

export function timeoutError(op: string, ms: number): VfioError {
  return new VfioError(`${op}: no progress for ${ms} ms (ETIMEDOUT)`, {
    code: 'ETIMEDOUT', errno: osConstants.errno.ETIMEDOUT, kind: 'peer', op,
  });
}

export function abortedError(op: string, signal: AbortSignal): VfioError {
  const reason: unknown = signal.reason;
  const why = reason instanceof Error ? reason.message : reason !== undefined ? String(reason) : 'aborted';
  return new VfioError(`${op}: cancelled (${why})`, {
    code: 'ECANCELED', errno: osConstants.errno.ECANCELED, kind: 'cancelled', op, cause: reason,
  });
}

export function peerClosedError(op: string, got: number, want: number): VfioError {
  const what = got === 0 ? 'before any of its' : `after ${got} of its`;
  return new VfioError(`${op}: the peer closed the connection ${what} ${want} bytes`, { code: 'EVFIO_PEER_CLOSED', op });
}

/**
 * What ECONNRESET and EPIPE on a connection mean, in words (the code and errno stay as they
 * are); undefined for other codes.
 */
export function peerGoneWords(code: string | undefined, peer = 'the peer'): string | undefined {
  if (code === 'ECONNRESET') return `${peer} reset the connection (ECONNRESET): its process ended, or it closed the socket with bytes unread`;
  if (code === 'EPIPE') return `${peer} had closed the connection (EPIPE)`;
  return undefined;
}

export function closedError(what: string, op: string): VfioError {
  return new VfioError(`${op}: the ${what} is closed`, { code: 'EVFIO_CLOSED', kind: 'usage', op });
}

export function brokenError(op: string, cause: unknown): VfioError {
  return new VfioError(`${op}: the channel lost its place in the stream after an earlier failure (${(cause as Error)?.message ?? String(cause)})`, {
    code: 'EVFIO_CHANNEL_BROKEN', op, cause,
  });
}

/**
 * A Node error (net, tls, fs) as a VfioError: errno errors keep their code and errno (kind
 * 'syscall'); others become 'EVFIO_TLS' (when `tls`) or 'EVFIO_TRANSPORT' (kind 'protocol'), with
 * Node's code in the message and the error as `cause`. A VfioError is annotated with `op` and
 * returned.
 */
export function fromNodeError(e: unknown, op: string, tls = false): VfioError {
  if (e instanceof VfioError) return e.annotate({ op });
  const err = e as NodeJS.ErrnoException;
  const code = typeof err?.code === 'string' ? err.code : undefined;
  const message = err instanceof Error ? err.message : String(e);
  if (typeof err?.errno === 'number' && code && /^E[A-Z0-9]+$/.test(code)) {
    return new VfioError(`${op}: ${code}`, { code: code as ErrnoName, errno: Math.abs(err.errno), syscall: err.syscall, op, cause: e });
  }
  if (tls) return new VfioError(`${op}: TLS: ${message}${code ? ` (${code})` : ''}`, { code: 'EVFIO_TLS', op, cause: e });
  return new VfioError(`${op}: ${message}${code ? ` (${code})` : ''}`, { code: 'EVFIO_TRANSPORT', op, cause: e });
}

/**
 * TLS with mutual certificate authentication for the transport, through Node's `tls` module, as
 * QEMU's tls-creds-x509 does for migration (`--tls-cert`, `--tls-key`, `--tls-ca` on both
 * commands): each side presents its certificate and accepts only a peer whose certificate chains
 * to the CA file. TLS 1.3 only (both ends are this library).
 *
 *  - Server (the listening destination): requests the client's certificate and rejects a client
 *    that sends none or one the CA did not sign; TLS itself refuses it during the handshake.
 *  - Client (the connecting source): checks the server's certificate against the CA and, for
 *    tcp: URIs, that it names the host of the URI (a DNS name or IP address in its
 *    subjectAltName, RFC 6125), or `serverName` when given. For unix: URIs only `serverName` is
 *    checked, when given; otherwise any certificate of the CA is accepted (the socket file's
 *    permissions say who can listen there).
 *
 * With TLS 1.3 the client finishes its handshake before the server has judged the client's
 * certificate: a client the server refuses learns it at its first read (EVFIO_TLS, "alert
 * certificate required" or similar).
 *
 * The bytes of a TLS connection go through Node streams (a JavaScript copy per chunk, and the
 * encryption): the native pump does not apply (docs/live-transport.md).
 */
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { isIP, type Socket } from 'node:net';
import * as tls from 'node:tls';
import { VfioError, fsError } from '../base/errors';
import { abortedError, fromNodeError, timeoutError } from './errors';

/** TLS credentials as the CLI passes them: PEM file paths. */
export interface TlsOptions {
  /** This side's certificate (PEM; may hold the chain after it): --tls-cert. */
  cert: string;
  /** Its private key (PEM, unencrypted): --tls-key. */
  key: string;
  /** The CA certificate(s) (PEM) that must have signed the peer's certificate: --tls-ca. */
  ca: string;
  /**
   * The name the server's certificate must carry (client side). Default: the host of a tcp:
   * URI; for unix: URIs, no name check unless given.
   */
  serverName?: string;
}

/** Loaded and checked credentials (loadTlsCredentials). */
export interface TlsCredentials {
  cert: Buffer;
  key: Buffer;
  ca: Buffer;
  serverName?: string;
  /** The subject of this side's certificate, for logs. */
  subject: string;
}

const FLAGS: Record<'cert' | 'key' | 'ca', string> = { cert: '--tls-cert', key: '--tls-key', ca: '--tls-ca' };

/** TLS 1.3 only: both ends are this library. */
const MIN_VERSION = 'TLSv1.3';

function tlsUsage(message: string, cause?: unknown): VfioError {
  return new VfioError(message, { code: 'EVFIO_TLS', kind: 'usage', op: 'tls', cause });
}

/**
 * Read and check the three files, before any connection: each must be readable (the fs error
 * otherwise: ENOENT, EACCES... with `path`), the certificate and CA must parse, and the key must
 * be the certificate's (VfioError 'EVFIO_TLS', kind 'usage', otherwise). Missing options are
 * 'EVFIO_USAGE'-like 'EVFIO_TLS' errors naming the flag.
 */
export async function loadTlsCredentials(opts: TlsOptions): Promise<TlsCredentials> {
  if (typeof opts !== 'object' || opts === null) throw tlsUsage('TLS needs --tls-cert, --tls-key and --tls-ca');
  const missing = (Object.keys(FLAGS) as Array<keyof typeof FLAGS>).filter((k) => typeof opts[k] !== 'string' || opts[k] === '');
  if (missing.length) throw tlsUsage(`TLS needs ${missing.map((k) => FLAGS[k]).join(', ')} (a PEM file path each)`);
  const read = async (k: keyof typeof FLAGS): Promise<Buffer> => {
    try {
      return await readFile(opts[k]);
    } catch (e) {
      const err = fsError(e, `cannot read ${FLAGS[k]} ${opts[k]}`, { syscall: 'open', path: opts[k], step: 'tls' });
      throw err instanceof VfioError ? err : tlsUsage(`cannot read ${FLAGS[k]} ${opts[k]}`, e);
    }
  };
  // Read together, reported in flag order: the first unreadable one, whichever failed first.
  const settled = await Promise.allSettled([read('cert'), read('key'), read('ca')]);
  const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
  const [cert, key, ca] = settled.map((r) => (r as PromiseFulfilledResult<Buffer>).value);
  let x509: X509Certificate;
  try {
    x509 = new X509Certificate(cert);
  } catch (e) {
    throw tlsUsage(`${FLAGS.cert} ${opts.cert}: not a PEM certificate (${(e as Error).message})`, e);
  }
  try {
    new X509Certificate(ca);
  } catch (e) {
    throw tlsUsage(`${FLAGS.ca} ${opts.ca}: not a PEM certificate (${(e as Error).message})`, e);
  }
  let matches: boolean;
  try {
    matches = x509.checkPrivateKey(createPrivateKey(key));
  } catch (e) {
    throw tlsUsage(`${FLAGS.key} ${opts.key}: not a usable PEM private key (${(e as Error).message})`, e);
  }
  if (!matches) throw tlsUsage(`${FLAGS.key} ${opts.key} is not the key of ${FLAGS.cert} ${opts.cert}`);
  try {
    tls.createSecureContext({ cert, key, ca, minVersion: MIN_VERSION });
  } catch (e) {
    throw tlsUsage(`TLS credentials ${opts.cert}, ${opts.key}, ${opts.ca}: ${(e as Error).message}`, e);
  }
  return { cert, key, ca, serverName: opts.serverName, subject: x509.subject.replace(/\n/g, ', ') };
}

/** A wait bounded by a timeout and a signal, settled once. */
function bounded<T>(op: string, timeoutMs: number, signal: AbortSignal | undefined, run: (done: (err: unknown, value?: T) => void) => () => void): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    let finished = false;
    let cleanup: (() => void) | undefined;
    const done = (err: unknown, value?: T): void => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      cleanup?.();
      if (err !== undefined) reject(err);
      else resolve(value as T);
    };
    const onAbort = (): void => done(abortedError(op, signal!));
    const timer = setTimeout(() => done(timeoutError(op, timeoutMs)), timeoutMs);
    if (signal?.aborted) return onAbort();
    signal?.addEventListener('abort', onAbort, { once: true });
    cleanup = run(done);
  });
}

/** What a refused TLS peer did wrong, for the listener's report. */
export interface TlsRefusal {
  error: VfioError;
}

/**
 * The server side of the handshake over a connected socket (the listener's accepted fd wrapped
 * in a net.Socket). Resolves with the TLS socket once the client's certificate was verified;
 * rejects with 'EVFIO_TLS' (kind 'protocol': no certificate, a certificate the CA did not sign,
 * a failed handshake), ETIMEDOUT or ECANCELED, after destroying the socket.
 *
 * Each handshake gets its own tls.Server (never listening: the socket is handed to it with
 * emit('connection')), so that its 'secureConnection' and 'tlsClientError' are this socket's.
 */
export function serverHandshake(raw: Socket, creds: TlsCredentials, op: string, timeoutMs: number, signal?: AbortSignal): Promise<tls.TLSSocket> {
  return bounded<tls.TLSSocket>(op, timeoutMs, signal, (done) => {
    const server = tls.createServer({
      cert: creds.cert,
      key: creds.key,
      ca: creds.ca,
      requestCert: true,
      rejectUnauthorized: true,
      minVersion: MIN_VERSION,
      handshakeTimeout: timeoutMs + 1000, // ours fires first, with the error we want
    });
    let socket: tls.TLSSocket | undefined;
    server.on('secureConnection', (t: tls.TLSSocket) => {
      socket = t;
      // rejectUnauthorized destroyed any client that was not authorized before this event.
      if (!t.authorized) return done(tlsRefused(op, `the client was not authorized (${String(t.authorizationError)})`));
      done(undefined, t);
    });
    server.on('tlsClientError', (err: Error, t: tls.TLSSocket) => {
      socket = t;
      const why = t.authorizationError ? `its certificate was not accepted: ${String(t.authorizationError)}` : err.message;
      done(tlsRefused(op, `the client was refused by TLS: ${why}`, err));
    });
    // When TLS refuses the client it destroys the connection, and the raw socket's 'close' can come
    // before the server's 'tlsClientError' that says why: let that one speak first.
    raw.once('close', () => setImmediate(() => done(tlsRefused(op, 'the connection closed during the TLS handshake'))));
    server.emit('connection', raw);
    return () => {
      server.removeAllListeners();
      if (!socket?.authorized || socket.destroyed) {
        socket?.destroy();
        raw.destroy();
      }
    };
  }).catch((e: unknown) => {
    raw.destroy();
    throw e;
  });
}

function tlsRefused(op: string, message: string, cause?: unknown): VfioError {
  return new VfioError(`${op}: ${message}`, { code: 'EVFIO_TLS', op, cause });
}

/**
 * The client side of the handshake over a connected socket. `host` is the tcp: URI's host
 * (checked against the server's certificate unless `creds.serverName` says another name), or
 * undefined for unix: URIs. Resolves with the TLS socket once the server's certificate was
 * verified; rejects with 'EVFIO_TLS' (kind 'protocol'), ETIMEDOUT or ECANCELED, after
 * destroying the socket.
 */
export function clientHandshake(raw: Socket, creds: TlsCredentials, host: string | undefined, op: string, timeoutMs: number, signal?: AbortSignal): Promise<tls.TLSSocket> {
  const name = creds.serverName ?? host;
  const options: tls.ConnectionOptions = {
    socket: raw,
    cert: creds.cert,
    key: creds.key,
    ca: creds.ca,
    rejectUnauthorized: true,
    minVersion: MIN_VERSION,
  };
  if (name === undefined) {
    // unix: without serverName: the CA's signature is the check (module comment).
    options.checkServerIdentity = () => undefined;
  } else if (isIP(name)) {
    options.host = name; // an IP address is checked against the IP entries of subjectAltName; no SNI (RFC 6066)
  } else {
    options.host = name;
    options.servername = name;
  }
  let socket: tls.TLSSocket | undefined;
  return bounded<tls.TLSSocket>(op, timeoutMs, signal, (done) => {
    socket = tls.connect(options);
    const t = socket;
    const onSecure = (): void => done(undefined, t);
    const onError = (e: Error): void => done(fromNodeError(e, `${op}: TLS handshake`, true));
    const onClose = (): void => done(tlsRefused(op, 'the server closed the connection during the TLS handshake'));
    t.once('secureConnect', onSecure);
    t.once('error', onError);
    t.once('close', onClose);
    return () => {
      t.off('secureConnect', onSecure);
      t.off('close', onClose);
      // Keep an 'error' listener until the channel takes the socket: an unhandled one would throw.
      t.off('error', onError);
      t.on('error', () => undefined);
    };
  }).catch((e: unknown) => {
    socket?.destroy();
    raw.destroy();
    throw e;
  });
}

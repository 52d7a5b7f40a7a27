/**
 * Options shared by `migrate` and `incoming`: the URI, TLS credentials and numbers, all checked
 * before any device is opened.
 */
import type { Command } from 'commander';
import { loadTlsCredentials, type TlsOptions } from '../../live/tls';
import { parseUri, type UriRole } from '../../live/uri';
import { VfioError } from '../../base/errors';
import { asUsage } from '../paths';
import { usageError } from '../report';

/** `uri` parsed as src/live/uri.ts does it (tcp:HOST:PORT, unix:PATH, unix:@NAME); a usage error naming `flag` otherwise. */
export function checkUri(uri: string, role: UriRole, flag: string): void {
  try {
    parseUri(uri, role);
  } catch (e) {
    if (e instanceof VfioError) e.message = `${flag}: ${e.message}`;
    throw e;
  }
}

/**
 * The TLS files read and checked now (src/live/tls.ts loadTlsCredentials: readable, PEM, the key
 * the certificate's), so that a typo is a usage error before any device is opened.
 */
export async function checkTls(tls: TlsOptions | undefined): Promise<void> {
  if (!tls) return;
  try {
    await loadTlsCredentials(tls);
  } catch (e) {
    throw asUsage(e);
  }
}

/** --tls-cert, --tls-key, --tls-ca: all three or none. */
export function addTlsOptions(cmd: Command): void {
  cmd
    .option('--tls-cert <file>', 'TLS: this side\'s certificate (PEM); with --tls-key and --tls-ca, mutual authentication')
    .option('--tls-key <file>', 'TLS: this side\'s private key (PEM)')
    .option('--tls-ca <file>', 'TLS: the CA certificate(s) the peer\'s certificate must be signed by (PEM)');
}

export function tlsOptions(opts: Record<string, unknown>): TlsOptions | undefined {
  const [cert, key, ca] = [opts.tlsCert, opts.tlsKey, opts.tlsCa] as Array<string | undefined>;
  if (cert === undefined && key === undefined && ca === undefined) return undefined;
  if (!cert || !key || !ca) throw usageError('TLS needs all of --tls-cert, --tls-key and --tls-ca (mutual certificate authentication)');
  return { cert, key, ca };
}

export function positiveInt(v: unknown, name: string): number {
  const n = Number(v);
  if (typeof v !== 'string' || !/^\d+$/.test(v) || !Number.isSafeInteger(n) || n <= 0) throw usageError(`${name} must be a positive integer, not '${String(v)}'`);
  return n;
}

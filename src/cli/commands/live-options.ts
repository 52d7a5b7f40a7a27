/** Options shared by `migrate` and `incoming`: TLS credentials and numbers. */
import type { Command } from 'commander';
import type { TlsOptions } from '../../live/tls';
import { usageError } from '../report';

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

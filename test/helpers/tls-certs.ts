/**
 * Throw-away X.509 credentials for the TLS tests, made at test time with the `openssl` command
 * (no private key is ever committed): two CAs, and under each a server and a client certificate.
 * EC P-256 keys, valid for two days. The server certificate names localhost, 127.0.0.1 and ::1.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

/** Why the TLS tests cannot run here, or undefined when `openssl` works. */
export function opensslMissing(): string | undefined {
  const r = spawnSync('openssl', ['version'], { encoding: 'utf8' });
  return r.error || r.status !== 0 ? `openssl not usable: ${r.error?.message ?? r.stderr}` : undefined;
}

/** Paths of one identity: certificate, key, and the CA that signed it. */
export interface Identity {
  cert: string;
  key: string;
  ca: string;
}

export interface TestPki {
  dir: string;
  /** CA "A" and its server and client (the migration's two sides). */
  server: Identity;
  client: Identity;
  /** A client certificate from another CA ("B"), with B as its CA. */
  rogueClient: Identity;
  /** A server certificate from CA B. */
  rogueServer: Identity;
  /** A server certificate from CA A for another name only (other.example). */
  otherNameServer: Identity;
  remove(): void;
}

function openssl(cwd: string, args: string[]): void {
  const r = spawnSync('openssl', args, { cwd, encoding: 'utf8' });
  if (r.error || r.status !== 0) throw new Error(`openssl ${args.join(' ')} failed: ${r.error?.message ?? r.stderr}`);
}

function makeCa(dir: string, name: string): void {
  openssl(dir, [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2',
    '-keyout', `${name}.key`, '-out', `${name}.crt`, '-subj', `/CN=vfio-test-${name}`,
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
  ]);
}

function makeLeaf(dir: string, ca: string, name: string, cn: string, ext: string): Identity {
  fs.writeFileSync(path.join(dir, `${name}.ext`), ext);
  openssl(dir, ['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${cn}`]);
  openssl(dir, [
    'x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}.crt`, '-CAkey', `${ca}.key`, '-CAcreateserial', '-days', '2',
    '-out', `${name}.crt`, '-extfile', `${name}.ext`,
  ]);
  return { cert: path.join(dir, `${name}.crt`), key: path.join(dir, `${name}.key`), ca: path.join(dir, `${ca}.crt`) };
}

const SERVER_EXT = 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\n';
const CLIENT_EXT = 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n';

/** Make the credentials in a new temporary directory (about 0.2 s). */
export function makeTestPki(): TestPki {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfio-pki-'));
  makeCa(dir, 'ca-a');
  makeCa(dir, 'ca-b');
  return {
    dir,
    server: makeLeaf(dir, 'ca-a', 'server', 'localhost', SERVER_EXT),
    client: makeLeaf(dir, 'ca-a', 'client', 'vfio-source', CLIENT_EXT),
    rogueClient: makeLeaf(dir, 'ca-b', 'rogue-client', 'vfio-source', CLIENT_EXT),
    rogueServer: makeLeaf(dir, 'ca-b', 'rogue-server', 'localhost', SERVER_EXT),
    otherNameServer: makeLeaf(dir, 'ca-a', 'other-server', 'other.example', SERVER_EXT.replace(/subjectAltName=.*/, 'subjectAltName=DNS:other.example')),
    remove: () => fs.rmSync(dir, { recursive: true, force: true }),
  };
}

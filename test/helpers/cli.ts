/** The `vfio-pci` command run in this process (src/cli/main.ts), as the unit tests drive it; test/helpers/cli-process.ts runs it as a child. */
import { PassThrough } from 'node:stream';
import { main } from '../../src/cli/main';

/** Run `vfio-pci ...argv`: its exit code and what it wrote to stdout and stderr. */
export async function runCli(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  const out = new PassThrough();
  const err = new PassThrough();
  let o = '';
  let e = '';
  out.on('data', (d) => (o += d));
  err.on('data', (d) => (e += d));
  const code = await main(argv, out, err);
  return { code, out: o, err: e };
}

/** The `vfio-pci` command as a user runs it: a real child process (bin/vfio-pci.js over dist/). */
import * as path from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';

export const ROOT = path.resolve(__dirname, '../..');
export const BIN = path.join(ROOT, 'bin/vfio-pci.js');

export interface Child {
  proc: ChildProcess;
  out: () => string;
  err: () => string;
  /** Resolves when stderr matches `re`. */
  waitErr: (re: RegExp) => Promise<void>;
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Start `vfio-pci ...args` in `cwd` with `env` added to this process's environment. */
export function spawnCli(args: string[], opts: { cwd: string; env?: Record<string, string> }): Child {
  const proc = spawn(process.execPath, [BIN, ...args], { cwd: opts.cwd, env: { ...process.env, ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  const waiters: Array<{ re: RegExp; resolve: () => void }> = [];
  proc.stdout!.on('data', (d) => (out += d));
  proc.stderr!.on('data', (d) => {
    err += d;
    for (const w of waiters.splice(0)) (w.re.test(err) ? w.resolve() : waiters.push(w));
  });
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => proc.on('close', (code, signal) => resolve({ code, signal })));
  return {
    proc,
    out: () => out,
    err: () => err,
    waitErr: (re) =>
      new Promise<void>((resolve, reject) => {
        if (re.test(err)) return resolve();
        waiters.push({ re, resolve });
        void exit.then(() => reject(new Error(`exited before stderr matched ${re}:\n${err}`)));
      }),
    exit,
  };
}

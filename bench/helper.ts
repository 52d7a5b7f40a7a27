/**
 * Pieces shared by the bench runner (./run.ts) and its case processes (./case.ts): the C
 * helper (./baseline.c) and its build, child processes on real fds, /proc/self/status.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

/** State bytes of the warm-up operations an ours case runs before its timed one (bench/case.ts). */
export const WARMUP_BYTES = 2 ** 20;

/** bench/baseline.c in the source tree (this file runs from dist/bench). */
export const BASELINE_SOURCE = path.resolve(__dirname, '../../bench/baseline.c');

/**
 * Compile baseline.c with `cc -O2` into a cache directory under os.tmpdir() keyed by the
 * source's hash, once; returns the executable's path. Throws with the compiler's output.
 */
export function buildBaseline(cc = process.env.CC ?? 'cc'): string {
  const src = fs.readFileSync(BASELINE_SOURCE);
  const hash = createHash('sha256').update(src).update(cc).digest('hex').slice(0, 16);
  const dir = path.join(os.tmpdir(), `node-vfio-pci-bench-${process.getuid?.() ?? 0}`);
  const exe = path.join(dir, `baseline-${hash}`);
  if (fs.existsSync(exe)) return exe;
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const tmp = `${exe}.${process.pid}.tmp`;
  const r = spawnSync(cc, ['-O2', '-Wall', '-Wextra', '-o', tmp, BASELINE_SOURCE], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cc} -O2 ${BASELINE_SOURCE} failed (${r.error?.message ?? `exit ${r.status}`}):\n${r.stderr}`);
  fs.renameSync(tmp, exe);
  return exe;
}

/** A started child with a promise of its end: exit code, and stderr when it was piped. */
export interface Child {
  proc: ChildProcess;
  done: Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>;
}

/**
 * Start `exe args` with the given stdio (integers are fds of this process, dup'ed into the child
 * by libuv; the caller closes its own copies). stderr is collected when it is 'pipe'.
 */
export function startChild(exe: string, args: string[], stdio: Array<number | 'ignore' | 'pipe' | 'inherit'>): Child {
  const proc = spawn(exe, args, { stdio });
  let stderr = '';
  proc.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const done = new Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>((resolve, reject) => {
    proc.once('error', reject);
    proc.once('close', (code, signal) => resolve({ code, signal, stderr }));
  });
  return { proc, done };
}

/** Wait for a child and throw unless it exited 0. */
export async function expectSuccess(c: Child, what: string): Promise<string> {
  const r = await c.done;
  if (r.code !== 0) throw new Error(`${what} failed (${r.signal ?? `exit ${r.code}`}): ${r.stderr.trim()}`);
  return r.stderr;
}

/** A field of /proc/self/status in KiB ("VmRSS", "VmHWM"); undefined when unreadable. */
export function statusKiB(field: 'VmRSS' | 'VmHWM'): number | undefined {
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(fs.readFileSync('/proc/self/status', 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Reset VmHWM to the current RSS (proc(5): writing 5 to clear_refs resets the peak RSS), so
 * that the peak read later is this case's. False when the kernel refused.
 */
export function resetPeakRss(): boolean {
  try {
    fs.writeFileSync('/proc/self/clear_refs', '5');
    return true;
  } catch {
    return false;
  }
}

/** `n` bytes as "64MiB", "1GiB", or a plain number. */
export function sizeName(n: number): string {
  for (const [unit, mul] of [['GiB', 2 ** 30], ['MiB', 2 ** 20], ['KiB', 2 ** 10]] as const) {
    if (n >= mul && n % mul === 0) return `${n / mul}${unit}`;
  }
  return String(n);
}

/** "64M", "64MiB", "1G", "4GiB", "65536" → bytes; undefined when unparsable. */
export function parseBytes(text: string): number | undefined {
  const m = /^(\d+)\s*([kmg]?)(i?b)?$/i.exec(text.trim());
  if (!m) return undefined;
  const mul = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30 }[m[2].toLowerCase() as '' | 'k' | 'm' | 'g'];
  const n = Number(m[1]) * mul;
  return Number.isSafeInteger(n) && n > 0 ? n : undefined;
}

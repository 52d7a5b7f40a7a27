/** The C compiler of the header tests (test/native/*-header.test.ts): $CC, else cc, gcc or clang. */
import { spawnSync } from 'node:child_process';

const CANDIDATES = [process.env.CC, 'cc', 'gcc', 'clang'].filter((c): c is string => !!c);

/** The first candidate that runs (`--version`), or undefined. */
export function findCompiler(): string | undefined {
  for (const c of CANDIDATES) {
    const r = spawnSync(c, ['--version'], { encoding: 'utf8' });
    if (!r.error && r.status === 0) return c;
  }
  return undefined;
}

/** Why the header tests are skipped when no compiler runs. */
export const NO_CC_REASON = `no C compiler found (tried ${[process.env.CC && `$CC=${process.env.CC}`, 'cc', 'gcc', 'clang'].filter(Boolean).join(', ')})`;

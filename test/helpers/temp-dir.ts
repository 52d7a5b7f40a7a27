/** A temporary directory for the tests of a file or a describe block, made before them and removed after them. */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach } from 'vitest';

export interface TempDir {
  /** The directory (only inside tests and hooks: it is made by a hook). */
  readonly path: string;
  /** A path in the directory: `names` joined below it. */
  file(...names: string[]): string;
}

/**
 * Register hooks that make a directory `os.tmpdir()/PREFIX-XXXXXX` and remove it with everything
 * in it: around all the tests of the enclosing file or describe (`each: false`, the default), or
 * a fresh one around each test (`each: true`).
 */
export function useTempDir(prefix: string, opts: { each?: boolean } = {}): TempDir {
  let dir: string | undefined;
  const make = (): void => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), `${prefix.replace(/[^\w.-]+/g, '-')}-`));
  };
  const remove = (): void => {
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
    dir = undefined;
  };
  if (opts.each) {
    beforeEach(make);
    afterEach(remove);
  } else {
    beforeAll(make);
    afterAll(remove);
  }
  const t: TempDir = {
    get path(): string {
      if (!dir) throw new Error(`the temporary directory ${prefix} exists only inside tests`);
      return dir;
    },
    file: (...names) => path.join(t.path, ...names),
  };
  return t;
}

/**
 * Where a snapshot may be written: checks made on the destination path before anything is
 * touched (SnapshotWriter.create(), so before any device is paused) and again just before the
 * rename that puts the file in place (SnapshotWriter.commit()).
 *
 * Rules:
 *  - Only a regular file is ever replaced. A directory, a character or block device
 *    (`/dev/sda`, `/dev/full`), a FIFO or a socket at the path is refused: rename(2) would
 *    replace the node itself with the snapshot (EVFIO_NOT_A_FILE, kind 'usage').
 *  - A symbolic link as the last component is refused too (EVFIO_NOT_A_FILE): rename(2) replaces
 *    the link, not what it points to, and following it would let a link planted in a shared
 *    directory redirect a root-run save onto any file. Give the path of the file itself.
 *    Links among the directories above it are followed as usual.
 *  - The directory must exist (ENOENT: "directory … does not exist") and be writable (EACCES,
 *    EROFS: the temporary file is created there).
 * Errors name the path as the caller gave it, never the writer's temporary file.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { VfioError, type ErrnoName } from '../base/errors';

/** What an lstat says a node is, for messages. */
function nodeKind(st: fs.Stats): string {
  if (st.isDirectory()) return 'a directory';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  if (st.isFIFO()) return 'a FIFO';
  if (st.isSocket()) return 'a socket';
  if (st.isSymbolicLink()) return 'a symbolic link';
  return 'not a regular file';
}

function sysError(e: unknown, message: string, file: string, syscall: string, step: string): VfioError {
  const err = e as NodeJS.ErrnoException;
  return new VfioError(message, {
    code: (err.code ?? 'EIO') as ErrnoName, errno: Math.abs(err.errno ?? 5), syscall: err.syscall ?? syscall, path: file, step, cause: e,
  });
}

/**
 * Check that `file` may receive a snapshot (rules above). Synchronous: a few stat calls.
 * Throws VfioError: EVFIO_NOT_A_FILE (usage) for a node that is not a regular file or a
 * symbolic link; ENOENT / ENOTDIR / EACCES / EROFS (syscall) for a directory that does not
 * exist, is not one, or is not writable. `step` is the errors' step (the commit passes its own).
 */
export function checkSnapshotTarget(file: string, step = 'snapshot:target'): void {
  const dir = path.dirname(file);
  let st: fs.Stats | undefined;
  try {
    st = fs.lstatSync(file);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') {
      st = undefined; // a new file, or a missing directory: looked at below
    } else if (code === 'ENOTDIR') {
      throw sysError(e, `cannot write snapshot ${file}: a component of ${dir} is not a directory`, file, 'lstat', step);
    } else {
      throw sysError(e, `cannot write snapshot ${file}: ${code}`, file, 'lstat', step);
    }
  }
  if (st && !st.isFile()) {
    const why = st.isSymbolicLink()
      ? 'it is a symbolic link (snapshots never follow or replace links: give the path of the file itself)'
      : `it is ${nodeKind(st)} (only a regular file is ever replaced)`;
    throw new VfioError(`refusing to write snapshot ${file}: ${why}`, { code: 'EVFIO_NOT_A_FILE', kind: 'usage', path: file, step });
  }
  let ds: fs.Stats;
  try {
    ds = fs.statSync(dir);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const what = code === 'ENOENT' ? 'does not exist' : code === 'ENOTDIR' ? 'is not a directory' : `cannot be looked at (${code})`;
    throw sysError(e, `cannot write snapshot ${file}: directory ${dir} ${what}`, file, 'stat', step);
  }
  if (!ds.isDirectory()) {
    throw new VfioError(`cannot write snapshot ${file}: ${dir} is not a directory`, { code: 'ENOTDIR', errno: 20, syscall: 'stat', path: file, step });
  }
  try {
    fs.accessSync(dir, fs.constants.W_OK | fs.constants.X_OK);
  } catch (e) {
    throw sysError(e, `cannot write snapshot ${file}: directory ${dir} is not writable (${(e as NodeJS.ErrnoException).code})`, file, 'access', step);
  }
}

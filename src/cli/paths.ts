/**
 * The CLI's file arguments — `snapshot -o FILE`, `restore -i FILE`, `inspect FILE` — checked in
 * one place, before any device is opened: opening a real device can already reset it (vfio-pci
 * does on the first open), and a job must not pause a device only to fail on its file.
 *
 * A path that cannot be used is a usage error (kind 'usage': exit 2) naming the path as given.
 * When the reason is the file system's, the error keeps its errno code (ENOENT, ENOTDIR, EACCES,
 * EROFS, ...), `errno`, `syscall` and `path`; otherwise its code is EVFIO_USAGE (an empty path,
 * a path that names a directory) or EVFIO_NOT_A_FILE (a directory, device node, FIFO, socket or,
 * for the output, a symbolic link at the path).
 *
 * The output's rules are the snapshot writer's (src/snapshot/target.ts), which checks them again
 * when it creates the file and just before the rename.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { VfioError, type ErrnoName } from '../base/errors';
import { checkSnapshotTarget } from '../snapshot/target';
import { usageError } from './report';

/** `e` made a usage error (exit 2) when it is a VfioError; its code, errno and path are kept. */
export function asUsage(e: unknown): unknown {
  if (e instanceof VfioError) e.kind = 'usage';
  return e;
}

/**
 * The snapshot file to write (`-o`). Refused: an empty path; a path that names a directory by
 * its spelling (a trailing `/`, a last component `.` or `..`: the writer would otherwise create
 * its temporary file beside it and fail only at the rename, after the whole copy); and what
 * src/snapshot/target.ts refuses — anything but a regular file or nothing at the path, a
 * directory that does not exist, is not one or is not writable — and a directory in which no
 * file can be created after all (a read-only or pseudo file system, also for root: a probe file
 * `.NAME.PID.probe` is created and removed at once).
 */
export function checkOutputFile(file: string, flag = '-o'): void {
  if (file === '') throw usageError(`${flag}: the path is empty; give the snapshot file's path (${flag} vm.vfiosnap)`);
  const base = path.basename(file);
  if (file.endsWith('/') || base === '.' || base === '..') {
    const dir = file.endsWith('/') ? file : `${file}/`;
    throw usageError(`${flag} ${file}: the path names a directory; give the snapshot file's path (${dir}vm.vfiosnap)`);
  }
  try {
    checkSnapshotTarget(file);
  } catch (e) {
    throw asUsage(e);
  }
  // access(2) says yes to root everywhere, and nothing of pseudo file systems (/sys, /proc): a
  // file created and removed at once, as the writer's temporary file will be, says it for sure.
  const dir = path.dirname(file);
  const probe = path.join(dir, `.${path.basename(file)}.${process.pid}.probe`);
  let fd: number;
  try {
    fd = fs.openSync(probe, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'EEXIST') return; // a name taken: the directory itself took files so far
    throw fsUsage(err, `cannot write snapshot ${file}: cannot create a file in directory ${dir} (${err.code})`, file, 'open');
  }
  fs.closeSync(fd);
  try {
    fs.unlinkSync(probe);
  } catch {
    /* removed by someone else meanwhile */
  }
}

/** What `st` is, for a message. */
function nodeKind(st: fs.Stats): string {
  if (st.isDirectory()) return 'a directory';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  if (st.isFIFO()) return 'a FIFO';
  if (st.isSocket()) return 'a socket';
  return 'not a regular file';
}

/**
 * A snapshot file to read (`restore -i`, `inspect FILE`): it must exist, be a regular file (a
 * symbolic link to one is followed) and be readable. `label` names the argument in the message
 * for an empty path ('-i', 'FILE').
 */
export function checkInputFile(file: string, label: string): void {
  if (file === '') throw usageError(`${label}: the path is empty; give the snapshot file's path`);
  let st: fs.Stats;
  try {
    st = fs.statSync(file);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    const why = err.code === 'ENOENT' ? 'no such file' : err.code === 'ENOTDIR' ? 'a component of the path is not a directory' : `cannot be looked at (${err.code})`;
    throw fsUsage(err, `cannot read snapshot ${file}: ${why}`, file, 'stat');
  }
  if (!st.isFile()) {
    throw new VfioError(`cannot read snapshot ${file}: it is ${nodeKind(st)}`, { code: 'EVFIO_NOT_A_FILE', kind: 'usage', path: file });
  }
  try {
    fs.accessSync(file, fs.constants.R_OK);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw fsUsage(err, `cannot read snapshot ${file}: not readable (${err.code})`, file, 'access');
  }
}

function fsUsage(err: NodeJS.ErrnoException, message: string, file: string, syscall: string): VfioError {
  return new VfioError(message, {
    code: (err.code ?? 'EIO') as ErrnoName, kind: 'usage', errno: Math.abs(err.errno ?? 5), syscall: err.syscall ?? syscall, path: file, cause: err,
  });
}

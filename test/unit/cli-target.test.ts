// `-o FILE` never replaces anything but a regular file, and says what is wrong (exit 2) before any
// device is opened: real device nodes (mknod), FIFOs (mkfifo), sockets, directories and symbolic
// links; directories that do not exist or are not directories.
import { describe, it, expect } from 'vitest';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { SnapshotWriter } from '../../src/snapshot/writer';
import { runCli } from '../helpers/cli';
import { rejection } from '../helpers/errors';
import { useTempDir } from '../helpers/temp-dir';
import { itUnless } from '../helpers/skip';

const tmp = useTempDir('cli-target', { each: true });

const isRoot = process.getuid?.() === 0;

/** What lstat says of `p`, to check that it is unchanged. */
function kind(p: string): string {
  const st = fs.lstatSync(p);
  return st.isSymbolicLink() ? 'link' : st.isCharacterDevice() ? `chr ${st.rdev}` : st.isBlockDevice() ? `blk ${st.rdev}` : st.isFIFO() ? 'fifo' : st.isSocket() ? 'sock' : st.isDirectory() ? 'dir' : `file ${st.size}`;
}

describe('snapshot -o: only a regular file is ever replaced', () => {
  itUnless(isRoot ? undefined : 'not running as root (mknod needs CAP_MKNOD)', 'a character device, a block device (mknod), a FIFO (mkfifo), a socket, a directory, a link: refused, untouched, before the device is opened', async () => {
    const targets: Array<[string, string]> = [];
    const chr = tmp.file('full');
    execFileSync('mknod', [chr, 'c', '1', '7']); // what /dev/full is
    targets.push([chr, 'a character device']);
    const blk = tmp.file('disk');
    execFileSync('mknod', [blk, 'b', '7', '250']); // a loop device number
    targets.push([blk, 'a block device']);
    const fifo = tmp.file('fifo');
    execFileSync('mkfifo', [fifo]);
    targets.push([fifo, 'a FIFO']);
    const sock = tmp.file('sock');
    const server = net.createServer();
    await new Promise<void>((res) => server.listen(sock, res));
    targets.push([sock, 'a socket']);
    const sub = tmp.file('sub');
    fs.mkdirSync(sub);
    targets.push([sub, 'a directory']);
    const real = tmp.file('real.vfiosnap');
    fs.writeFileSync(real, 'keep');
    const link = tmp.file('link.vfiosnap');
    fs.symlinkSync(real, link);
    targets.push([link, 'a symbolic link']);
    const dangling = tmp.file('dangling.vfiosnap');
    fs.symlinkSync(tmp.file('nowhere'), dangling);
    targets.push([dangling, 'a symbolic link']);
    try {
      for (const [target, what] of targets) {
        const before = kind(target);
        const r = await runCli('snapshot', 'sim:64KiB#tgt', '-o', target);
        expect(r.code, target).toBe(2);
        expect(r.err).toContain(`refusing to write snapshot ${target}: it is ${what}`);
        expect(r.err).toMatch(/code: EVFIO_NOT_A_FILE/);
        expect(r.err).not.toMatch(/devices left/); // never opened
        expect(r.out).toBe(''); // never paused
        expect(kind(target)).toBe(before);
        expect(fs.readdirSync(tmp.path).filter((f) => f.endsWith('.tmp'))).toEqual([]);
      }
      expect(fs.readFileSync(real, 'utf8')).toBe('keep');
    } finally {
      server.close();
    }
  });

  it('a directory that does not exist: a usage error (exit 2) naming the path as given, before the device is opened', async () => {
    const rel = path.relative(process.cwd(), tmp.file('nodir', 'x.vfiosnap'));
    const r = await runCli('snapshot', 'sim:64KiB#tgt2', '-o', rel, '--json');
    expect(r.code).toBe(2);
    const j = JSON.parse(r.out);
    expect(j.error).toMatchObject({ code: 'ENOENT', kind: 'usage', errno: 2, path: rel, step: 'snapshot:target' });
    expect(j.error.deviceState).toBeUndefined();
    expect(j.error.message).toBe(`cannot write snapshot ${rel}: directory ${path.dirname(rel)} does not exist`);
    expect(j.error.message).not.toMatch(/\.tmp/);
    expect(j.transitions).toBeUndefined();
  });

  it('a path through a regular file: ENOTDIR (exit 2), naming the path', async () => {
    fs.writeFileSync(tmp.file('f'), '');
    const target = tmp.file('f', 'x.vfiosnap');
    const r = await runCli('snapshot', 'sim:64KiB#tgt3', '-o', target);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/code: ENOTDIR/);
    expect(r.err).toContain(`cannot write snapshot ${target}`);
  });

  it('files are created 0600 whatever the umask, and a regular file is replaced (0600 too)', async () => {
    const file = tmp.file('m.vfiosnap');
    fs.writeFileSync(file, 'old', { mode: 0o644 });
    const old = process.umask(0);
    try {
      const r = await runCli('snapshot', 'sim:64KiB#tgt4', '-o', file, '-q');
      expect(r.code, r.err).toBe(0);
    } finally {
      process.umask(old);
    }
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    expect(fs.statSync(file).size).toBeGreaterThan(64 * 1024);
  });
});

describe('SnapshotWriter: the target is checked again before the rename', () => {
  it('a FIFO that appeared at the path meanwhile is not replaced; the temporary file is removed', async () => {
    const file = tmp.file('late.vfiosnap');
    const w = await SnapshotWriter.create(file, { noSync: true });
    execFileSync('mkfifo', [file]);
    expect((await rejection(w.commit())).code).toBe('EVFIO_NOT_A_FILE');
    expect(kind(file)).toBe('fifo');
    expect(fs.readdirSync(tmp.path)).toEqual(['late.vfiosnap']);
  });

  it('an aborted signal before the rename: nothing renamed, the temporary file removed', async () => {
    const file = tmp.file('sig.vfiosnap');
    const w = await SnapshotWriter.create(file, { noSync: true });
    const ac = new AbortController();
    ac.abort();
    expect((await rejection(w.commit(ac.signal), Error)).name).toBe('AbortError');
    expect(fs.readdirSync(tmp.path)).toEqual([]);
  });
});

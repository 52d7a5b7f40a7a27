// `-o FILE` never replaces anything but a regular file, and says what is wrong before any device
// is touched: real device nodes (mknod), FIFOs (mkfifo), sockets, directories and symbolic links.
import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { PassThrough } from 'node:stream';
import { main } from '../../src/cli/main';
import { SnapshotWriter } from '../../src/snapshot/writer';
import { isVfioError } from '../../src/base/errors';

async function run(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  const out = new PassThrough();
  const err = new PassThrough();
  let o = '';
  let e = '';
  out.on('data', (d) => (o += d));
  err.on('data', (d) => (e += d));
  const code = await main(argv, out, err);
  return { code, out: o, err: e };
}

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cli-target-'));
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

const isRoot = process.getuid?.() === 0;

/** What lstat says of `p`, to check that it is unchanged. */
function kind(p: string): string {
  const st = fs.lstatSync(p);
  return st.isSymbolicLink() ? 'link' : st.isCharacterDevice() ? `chr ${st.rdev}` : st.isBlockDevice() ? `blk ${st.rdev}` : st.isFIFO() ? 'fifo' : st.isSocket() ? 'sock' : st.isDirectory() ? 'dir' : `file ${st.size}`;
}

describe('snapshot -o: only a regular file is ever replaced', () => {
  it.skipIf(!isRoot)('a character device, a block device (mknod), a FIFO (mkfifo), a socket, a directory, a link: refused, untouched, before the device is', async () => {
    const targets: Array<[string, string]> = [];
    const chr = path.join(dir, 'full');
    execFileSync('mknod', [chr, 'c', '1', '7']); // what /dev/full is
    targets.push([chr, 'a character device']);
    const blk = path.join(dir, 'disk');
    execFileSync('mknod', [blk, 'b', '7', '250']); // a loop device number
    targets.push([blk, 'a block device']);
    const fifo = path.join(dir, 'fifo');
    execFileSync('mkfifo', [fifo]);
    targets.push([fifo, 'a FIFO']);
    const sock = path.join(dir, 'sock');
    const server = net.createServer();
    await new Promise<void>((res) => server.listen(sock, res));
    targets.push([sock, 'a socket']);
    const sub = path.join(dir, 'sub');
    fs.mkdirSync(sub);
    targets.push([sub, 'a directory']);
    const real = path.join(dir, 'real.vfiosnap');
    fs.writeFileSync(real, 'keep');
    const link = path.join(dir, 'link.vfiosnap');
    fs.symlinkSync(real, link);
    targets.push([link, 'a symbolic link']);
    const dangling = path.join(dir, 'dangling.vfiosnap');
    fs.symlinkSync(path.join(dir, 'nowhere'), dangling);
    targets.push([dangling, 'a symbolic link']);
    try {
      for (const [target, what] of targets) {
        const before = kind(target);
        const r = await run('snapshot', 'sim:64KiB#tgt', '-o', target);
        expect(r.code, target).toBe(2);
        expect(r.err).toContain(`refusing to write snapshot ${target}: it is ${what}`);
        expect(r.err).toMatch(/code: EVFIO_NOT_A_FILE/);
        expect(r.err).toMatch(/devices left: sim:64KiB#tgt RUNNING \(untouched\)/);
        expect(r.out).not.toMatch(/→ STOP/); // never paused
        expect(kind(target)).toBe(before);
        expect(fs.readdirSync(dir).filter((f) => f.endsWith('.tmp'))).toEqual([]);
      }
      expect(fs.readFileSync(real, 'utf8')).toBe('keep');
    } finally {
      server.close();
    }
  });

  it('a directory that does not exist: said so, naming the path as given, before the device is touched', async () => {
    const rel = path.relative(process.cwd(), path.join(dir, 'nodir', 'x.vfiosnap'));
    const r = await run('snapshot', 'sim:64KiB#tgt2', '-o', rel, '--json');
    expect(r.code).toBe(1);
    const j = JSON.parse(r.out);
    expect(j.error).toMatchObject({ code: 'ENOENT', errno: 2, path: rel, step: 'snapshot:target', deviceState: [{ state: 'RUNNING', touched: false }] });
    expect(j.error.message).toBe(`cannot write snapshot ${rel}: directory ${path.dirname(rel)} does not exist; device left in RUNNING`);
    expect(j.error.message).not.toMatch(/\.tmp/);
    expect(j.transitions).toBeUndefined();
  });

  it('a path through a regular file: ENOTDIR, naming the path', async () => {
    fs.writeFileSync(path.join(dir, 'f'), '');
    const target = path.join(dir, 'f', 'x.vfiosnap');
    const r = await run('snapshot', 'sim:64KiB#tgt3', '-o', target);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/code: ENOTDIR/);
    expect(r.err).toContain(`cannot write snapshot ${target}`);
  });

  it('files are created 0600 whatever the umask, and a regular file is replaced (0600 too)', async () => {
    const file = path.join(dir, 'm.vfiosnap');
    fs.writeFileSync(file, 'old', { mode: 0o644 });
    const old = process.umask(0);
    try {
      const r = await run('snapshot', 'sim:64KiB#tgt4', '-o', file, '-q');
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
    const file = path.join(dir, 'late.vfiosnap');
    const w = await SnapshotWriter.create(file, { noSync: true });
    execFileSync('mkfifo', [file]);
    const e = await w.commit().catch((x: unknown) => x);
    expect(isVfioError(e, 'EVFIO_NOT_A_FILE')).toBe(true);
    expect(kind(file)).toBe('fifo');
    expect(fs.readdirSync(dir)).toEqual(['late.vfiosnap']);
  });

  it('an aborted signal before the rename: nothing renamed, the temporary file removed', async () => {
    const file = path.join(dir, 'sig.vfiosnap');
    const w = await SnapshotWriter.create(file, { noSync: true });
    const ac = new AbortController();
    ac.abort();
    const e = await w.commit(ac.signal).catch((x: unknown) => x);
    expect((e as Error).name).toBe('AbortError');
    expect(fs.readdirSync(dir)).toEqual([]);
  });
});

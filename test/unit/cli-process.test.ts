// The `vfio-pci` command as a user runs it: a real child process (bin/vfio-pci.js over dist/),
// real signals, real pipes. Device states are the child's own (simulated devices live in its
// process), reported through --json: `deviceState` is read back from the device after cleanup.
import { describe, it, expect } from 'vitest';
import * as fs from 'node:fs';
import { spawnSync } from 'node:child_process';
import { BIN, spawnCli, type Child } from '../helpers/cli-process';
import { useTempDir } from '../helpers/temp-dir';
import { openDevice } from '../../src/kernel/open';
import { saveSnapshot } from '../../src/vm/jobs';

const dir = useTempDir('cli-proc', { each: true });
const cli = (args: string[], env: Record<string, string> = {}): Child => spawnCli(args, { cwd: dir.path, env });

/** DEBUG output of the migration layer: the line for a state change tells where the job is. */
const DEBUG_MIG = { DEBUG: 'vfio:migration' };

describe('signals during a job', () => {
  for (const [sig, status] of [['SIGINT', 130], ['SIGTERM', 143], ['SIGHUP', 129]] as const) {
    it(`${sig} during a 2 GiB snapshot: the copy stops, no file is left, the device runs; exit ${status}`, async () => {
      const c = cli(['snapshot', 'nic0=sim:2GiB#sig', '-o', 'big.vfiosnap', '--json'], DEBUG_MIG);
      await c.waitErr(/ STOP → STOP_COPY via /);
      await new Promise((r) => setTimeout(r, 100)); // some state copied: a temporary file exists
      expect(fs.readdirSync(dir.path).some((f) => f.endsWith('.tmp'))).toBe(true);
      c.proc.kill(sig);
      const { code } = await c.exit;
      expect(code, c.err()).toBe(status);
      expect(fs.readdirSync(dir.path)).toEqual([]); // neither the temporary file nor a snapshot
      const j = JSON.parse(c.out());
      expect(j).toMatchObject({
        ok: false, signal: sig,
        error: { code: 'ECANCELED', kind: 'cancelled', deviceState: [{ device: 'nic0', state: 'RUNNING', touched: true, reset: false }] },
      });
      expect(j.error.message).toMatch(new RegExp(`^cancelled by ${sig}: `));
      expect(c.err()).toContain(`vfio-pci snapshot: ${sig}: cancelling`);
      expect(c.err()).toMatch(/STOP_COPY → STOP via/); // the device left STOP_COPY
    });
  }

  it('a second signal while cleaning up changes nothing: still no file, the device runs, exit of the first', async () => {
    const c = cli(['snapshot', 'nic0=sim:2GiB#sig2', '-o', 'big.vfiosnap', '--json'], DEBUG_MIG);
    await c.waitErr(/ STOP → STOP_COPY via /);
    c.proc.kill('SIGINT');
    c.proc.kill('SIGTERM');
    const { code, signal } = await c.exit;
    // Sent back to back, the two may be handled in either order (Node dispatches them from its
    // signal pipe): the exit is the first handled one's, and the other changes nothing.
    const first = /: (SIGINT|SIGTERM): cancelling/.exec(c.err())?.[1];
    expect(first, c.err()).toBeDefined();
    expect({ code, signal }, c.err()).toEqual({ code: first === 'SIGINT' ? 130 : 143, signal: null });
    const second = first === 'SIGINT' ? 'SIGTERM' : 'SIGINT';
    // Usually the second lands while the first one's cleanup runs; on a loaded machine the cleanup
    // (a few ms) may be over first, and the process gone before it is handled.
    expect(c.err()).not.toMatch(new RegExp(`${second}: cancelling`));
    expect(fs.readdirSync(dir.path)).toEqual([]);
    expect(JSON.parse(c.out()).error.deviceState).toEqual([{ device: 'nic0', state: 'RUNNING', touched: true, reset: false }]);
  });

  it('SIGTERM during a restore: the load stops, the device is reset (RUNNING, not the partial state); exit 143', async () => {
    const file = dir.file('src.vfiosnap');
    const dev = openDevice('sim:512MiB#restore-src');
    try {
      await saveSnapshot([{ id: 'nic0', device: dev }], file, { noSync: true });
    } finally {
      dev.close();
    }
    const size = fs.statSync(file).size;
    // Short writes (64 KiB a write) make the load take a few seconds.
    const c = cli(['restore', 'nic0=sim:512MiB:maxwrite=64KiB#dst', '-i', file, '--json'], DEBUG_MIG);
    await c.waitErr(/ RUNNING → RESUMING via /);
    await new Promise((r) => setTimeout(r, 100));
    c.proc.kill('SIGTERM');
    const { code } = await c.exit;
    expect(code, c.err()).toBe(143);
    const j = JSON.parse(c.out());
    expect(j).toMatchObject({ ok: false, signal: 'SIGTERM', error: { code: 'ECANCELED', kind: 'cancelled', deviceState: [{ device: 'nic0', state: 'RUNNING', touched: true, reset: true }] } });
    expect(fs.statSync(file).size).toBe(size); // the snapshot is only read
  });

  it('SIGINT during the demo: its temporary directory is removed; exit 130', async () => {
    const tmp = dir.file('tmp');
    fs.mkdirSync(tmp);
    const c = cli(['demo', '--size', '2GiB', '--json'], { ...DEBUG_MIG, TMPDIR: tmp });
    await c.waitErr(/ STOP → STOP_COPY via /);
    c.proc.kill('SIGINT');
    const { code } = await c.exit;
    expect(code, c.err()).toBe(130);
    expect(JSON.parse(c.out()).error).toMatchObject({ code: 'ECANCELED', deviceState: [{ device: 'nic0', state: 'RUNNING' }] });
    expect(fs.readdirSync(tmp)).toEqual([]);
  });
});

describe('output can never end the job', () => {
  it('stdout and stderr closed before the first line: the snapshot is written, exit 0', async () => {
    const c = cli(['snapshot', 'sim:64MiB', '-o', 'p.vfiosnap']);
    c.proc.stdout!.destroy();
    c.proc.stderr!.destroy();
    const { code, signal } = await c.exit;
    expect(signal).toBeNull();
    expect(code).toBe(0);
    const i = spawnSync(process.execPath, [BIN, 'inspect', dir.file('p.vfiosnap'), '--json'], { encoding: 'utf8' });
    expect(i.status).toBe(0);
    expect(JSON.parse(i.stdout).ok).toBe(true);
  });

  it('`| head -1`: the first line is printed, the rest of the job goes on', () => {
    const r = spawnSync('bash', ['-c', `"${process.execPath}" "${BIN}" snapshot sim:64MiB -o p.vfiosnap | head -1; echo "status \${PIPESTATUS[*]}"`], { cwd: dir.path, encoding: 'utf8' });
    expect(r.stdout).toBe('snapshot of sim:64MiB → p.vfiosnap\nstatus 0 0\n');
    expect(r.stderr).toBe('');
    expect(fs.statSync(dir.file('p.vfiosnap')).size).toBeGreaterThan(64 << 20);
  });
});

describe('DEBUG=vfio:*', () => {
  it('shows every phase of a snapshot with its duration, and errors as they happen', () => {
    const r = spawnSync(process.execPath, [BIN, 'snapshot', 'sim:4MiB', '-o', 'd.vfiosnap', '-q'], { cwd: dir.path, encoding: 'utf8', env: { ...process.env, DEBUG: 'vfio:*' } });
    expect(r.status, r.stderr).toBe(0);
    for (const re of [/vfio:engine pause of sim:4MiB: [\d.]+ ms/, /vfio:engine save of sim:4MiB: [\d.]+ ms/, /vfio:engine resume of sim:4MiB: [\d.]+ ms/, /vfio:snapshot d\.vfiosnap: fsync [\d.]+ ms, rename [\d.]+ ms, directory fsync [\d.]+ ms/]) {
      expect(r.stderr).toMatch(re);
    }
    const bad = spawnSync(process.execPath, [BIN, 'snapshot', 'sim:4MiB', '-o', 'nodir/d.vfiosnap', '-q'], { cwd: dir.path, encoding: 'utf8', env: { ...process.env, DEBUG: 'vfio:*' } });
    expect(bad.status).toBe(2);
    expect(bad.stderr).toMatch(/vfio:cli snapshot failed: cannot write snapshot nodir\/d\.vfiosnap: directory nodir does not exist/);
  });
});

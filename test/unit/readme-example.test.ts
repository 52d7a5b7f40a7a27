import { describe, it, expect } from 'vitest';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';

const ROOT = path.resolve(__dirname, '../..');

/** The first ```js block after `heading` in README.md. */
function readmeBlock(heading: string): string | undefined {
  const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');
  const at = readme.indexOf(heading);
  expect(at).toBeGreaterThanOrEqual(0);
  return /```js\n([\s\S]*?)```/.exec(readme.slice(at))?.[1];
}

describe('README library example', () => {
  it('README shows examples/library.js verbatim', () => {
    expect(readmeBlock('## Library')).toBe(fs.readFileSync(path.join(ROOT, 'examples/library.js'), 'utf8'));
  });

  it('runs: the state listener sees every request saveSnapshot and restoreSnapshot make, and the state round-trips', () => {
    const r = spawnSync(process.execPath, [path.join(ROOT, 'examples/library.js'), 'sim:1MiB'], { encoding: 'utf8', cwd: ROOT });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout.split('\n').filter((l) => l.startsWith('  '))).toEqual([
      '  RUNNING -> STOP (2 arcs)', '  STOP -> STOP_COPY (1 arcs)', '  STOP_COPY -> STOP (1 arcs)', '  STOP -> RUNNING (2 arcs)',
      '  RUNNING -> RESUMING (3 arcs)', '  RESUMING -> RUNNING (3 arcs)',
    ]);
    expect(r.stdout).toMatch(/^saved (\d+) bytes of device state/m);
    const [, saved] = /^saved (\d+) bytes/m.exec(r.stdout)!;
    expect(r.stdout).toContain(`restored ${saved} bytes; now RUNNING`);
  });
});

describe('README VMM example', () => {
  it('README shows examples/vmm.js verbatim', () => {
    expect(readmeBlock('## Plugging the device model into a VMM')).toBe(fs.readFileSync(path.join(ROOT, 'examples/vmm.js'), 'utf8'));
  });

  it('runs: snapshot on the source, restore on the destination with BARs at the same address', () => {
    const r = spawnSync(process.execPath, [path.join(ROOT, 'examples/vmm.js')], { encoding: 'utf8', cwd: ROOT });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    // Events name the device by its attach id, not its spec.
    expect(r.stdout).toContain('nic0: RUNNING -> STOP');
    expect(r.stdout).toContain('nic0: STOP -> STOP_COPY');
    expect(r.stdout).not.toContain('sim:1MiB#src:');
    expect(r.stdout).toMatch(/address: 3758096384n/);
    expect(r.stdout).toMatch(/COMMAND: 6$/m);
  });
});

describe('README live migration example', () => {
  it('README shows examples/live.js verbatim', () => {
    expect(readmeBlock('## Live migration')).toBe(fs.readFileSync(path.join(ROOT, 'examples/live.js'), 'utf8'));
  });

  it('runs: the guest DMA shows in the first sync, a final sync after the stop, the destination runs', () => {
    const r = spawnSync(process.execPath, [path.join(ROOT, 'examples/live.js')], { encoding: 'utf8', cwd: ROOT });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^sync 1: nic0 dirtied 3 pages \(device\)$/m);
    expect(r.stdout).toMatch(/^final sync: nic0 dirtied \d+ pages \(device\)$/m);
    expect(r.stdout).toMatch(/^migrated: [1-9]\d* bytes precopy, [1-9]\d* stop-copy, [1-9]\d* iterations?, device downtime [\d.]+ ms; destination running$/m);
  });
});

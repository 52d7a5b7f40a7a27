import { describe, it, expect } from 'vitest';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';

const ROOT = path.resolve(__dirname, '../..');

describe('README VMM example', () => {
  it('README shows examples/vmm.js verbatim', () => {
    const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');
    const example = fs.readFileSync(path.join(ROOT, 'examples/vmm.js'), 'utf8');
    const section = readme.slice(readme.indexOf('## Plugging the device model into a VMM'));
    const block = /```js\n([\s\S]*?)```/.exec(section)?.[1];
    expect(block).toBe(example);
  });

  it('runs: snapshot on the source, restore on the destination with BARs at the same address', () => {
    const r = spawnSync(process.execPath, [path.join(ROOT, 'examples/vmm.js')], { encoding: 'utf8', cwd: ROOT });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toContain('sim:1MiB#src: RUNNING -> STOP');
    expect(r.stdout).toContain('sim:1MiB#src: STOP -> STOP_COPY');
    expect(r.stdout).toMatch(/address: 3758096384n/);
    expect(r.stdout).toMatch(/COMMAND: 6$/m);
  });
});

// The npm package as a user gets it: `npm pack` (of the dist/ that `npm test` has just built),
// its contents, then installed into an empty project (dependencies from npm's cache when it has
// them: --prefer-offline; the addon built by the package's install script) and run from there.
import { describe, it, expect, beforeAll } from 'vitest';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync, spawnSync } from 'node:child_process';
import { useTempDir } from '../helpers/temp-dir';

const ROOT = path.resolve(__dirname, '../..');
const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { name: string; version: string };

const tmp = useTempDir('vfio-pack');
let tarball: string;
let entries: string[];

beforeAll(() => {
  // --ignore-scripts: `prepare` (tsc) already ran as npm test's first step.
  const out = execFileSync('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', tmp.path], { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  tarball = tmp.file((JSON.parse(out) as Array<{ filename: string }>)[0].filename);
  entries = execFileSync('tar', ['-tzf', tarball], { encoding: 'utf8' }).split('\n').filter(Boolean).map((e) => e.replace(/^package\//, ''));
}, 120_000);

describe('npm package', () => {
  it('ships the license, docs and examples, no bench output, and source maps whose sources are shipped', () => {
    for (const f of ['LICENSE', 'README.md', 'package.json', 'bin/vfio-pci.js', 'dist/src/index.js', 'dist/src/index.d.ts', 'dist/src/sim/index.js', 'docs/snapshot-format.md', 'examples/library.js', 'examples/vmm.js', 'binding.gyp', 'addon/sources.txt']) {
      expect(entries, f).toContain(f);
    }
    expect(entries.filter((e) => e.startsWith('dist/bench') || e.startsWith('bench/') || e.startsWith('test/'))).toEqual([]);
    // Every file README links to is in the package.
    const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');
    for (const [, link] of readme.matchAll(/\]\(((?:docs|examples)\/[^)#]+)\)/g)) expect(entries, link).toContain(link);
    const maps = entries.filter((e) => e.endsWith('.map'));
    expect(maps.length).toBeGreaterThan(0);
    const dir = fs.mkdtempSync(tmp.file('x-'));
    execFileSync('tar', ['-xzf', tarball, '-C', dir]);
    for (const m of maps) {
      const map = JSON.parse(fs.readFileSync(path.join(dir, 'package', m), 'utf8')) as { sources: string[] };
      for (const s of map.sources) expect(entries, `${m} → ${s}`).toContain(path.posix.normalize(path.posix.join(path.posix.dirname(m), s)));
    }
  });

  it('installs into an empty project; `vfio-pci demo` and the example run from there', () => {
    const proj = fs.mkdtempSync(tmp.file('proj-'));
    fs.writeFileSync(path.join(proj, 'package.json'), JSON.stringify({ name: 'consumer', version: '1.0.0', private: true }));
    const inst = spawnSync('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', tarball], { cwd: proj, encoding: 'utf8' });
    expect(inst.status, inst.stderr).toBe(0);
    const installed = JSON.parse(fs.readFileSync(path.join(proj, 'node_modules', pkg.name, 'package.json'), 'utf8')) as { version: string };
    expect(installed.version).toBe(pkg.version);
    const demo = spawnSync(path.join(proj, 'node_modules/.bin/vfio-pci'), ['demo', '--size', '1MiB'], { cwd: proj, encoding: 'utf8' });
    expect(demo.status, demo.stderr).toBe(0);
    expect(demo.stdout).toMatch(/^done: destination registers match/m);
    const version = spawnSync(path.join(proj, 'node_modules/.bin/vfio-pci'), ['--version'], { cwd: proj, encoding: 'utf8' });
    expect(version.stdout).toBe(`${pkg.version}\n`);
    // The example requires the package by name, as a user's code does.
    const ex = spawnSync(process.execPath, [path.join(proj, 'node_modules', pkg.name, 'examples/library.js'), 'sim:1MiB'], { cwd: proj, encoding: 'utf8' });
    expect(ex.status, ex.stderr).toBe(0);
    expect(ex.stdout).toMatch(/restored \d+ bytes; now RUNNING/);
    // The addon was built by the package's install script (node-gyp), not found elsewhere.
    expect(fs.existsSync(path.join(proj, 'node_modules', pkg.name, 'build/Release/vfio_pci.node'))).toBe(true);
  }, 150_000);
});

/**
 * node-gyp (binding.gyp) and cmake-js (CMakeLists.txt) build the same sources: both read
 * addon/sources.txt, and where a build exists, it compiled exactly those files.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { packageRoot } from '../../src/kernel/binding/native';
import { itUnless } from '../helpers/skip';

const root = packageRoot();
const read = (rel: string) => fs.readFileSync(path.join(root, rel), 'utf8');

/** addon/sources.txt: one path per line; blank lines and # comments ignored. */
const sources = read('addon/sources.txt')
  .split('\n')
  .map((l) => l.trim())
  .filter((l) => l !== '' && !l.startsWith('#'));

/** Object files under `dir`, as source paths relative to the root (addon/x.cc). */
function compiled(dir: string, strip: RegExp): string[] {
  if (!fs.existsSync(dir)) return [];
  const out: string[] = [];
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (/\.o$/.test(e.name)) out.push(path.relative(dir, p).replace(strip, ''));
    }
  };
  walk(dir);
  return out.sort();
}

describe('build files', () => {
  it('addon/sources.txt lists every C++ source of addon/, and only existing files', () => {
    expect(sources.length).toBeGreaterThan(0);
    for (const s of sources) expect(fs.existsSync(path.join(root, s)), s).toBe(true);
    const onDisk = fs
      .readdirSync(path.join(root, 'addon'))
      .filter((f) => /\.(cc|cpp|c)$/.test(f))
      .map((f) => `addon/${f}`);
    expect([...sources].sort()).toEqual(onDisk.sort());
  });

  it('binding.gyp builds target vfio_pci from the same list', () => {
    const gyp = JSON.parse(read('binding.gyp')) as { targets: Array<{ target_name: string; sources: string[] }> };
    const target = gyp.targets.find((t) => t.target_name === 'vfio_pci');
    expect(target).toBeDefined();
    // `<!@(cat addon/sources.txt)` expands to the file's words; anything else is listed as is.
    const expanded = target!.sources.flatMap((s) => (s === '<!@(cat addon/sources.txt)' ? sources : [s]));
    expect([...expanded].sort()).toEqual([...sources].sort());
  });

  it('CMakeLists.txt builds target vfio_pci from the same list', () => {
    const cmake = read('CMakeLists.txt');
    expect(cmake).toMatch(/project\(vfio_pci\b/);
    expect(cmake).toMatch(/file\(STRINGS\s+"\$\{CMAKE_CURRENT_SOURCE_DIR\}\/addon\/sources\.txt"\s+VFIO_PCI_SOURCES\b/);
    expect(cmake).toMatch(/add_library\(\$\{PROJECT_NAME\}\s+SHARED\s+\$\{VFIO_PCI_SOURCES\}/);
    // No .cc listed directly besides the shared list.
    expect(cmake.match(/\baddon\/\w+\.cc\b/g) ?? []).toEqual([]);
  });

  it('both builds use the same N-API version and exception mode', () => {
    const gyp = read('binding.gyp');
    const cmake = read('CMakeLists.txt');
    for (const define of ['NAPI_VERSION=8', 'NAPI_CPP_EXCEPTIONS']) {
      expect(gyp).toContain(define);
      expect(cmake).toContain(define);
    }
  });

  const gypObjs = compiled(path.join(root, 'build/Release/obj.target/vfio_pci'), /\.o$/);
  itUnless(
    gypObjs.length ? undefined : 'no node-gyp build',
    'node-gyp compiled exactly those sources',
    () => {
      expect(gypObjs).toEqual(sources.map((s) => s.replace(/\.\w+$/, '')).sort());
    },
  );

  const cmakeObjs = compiled(path.join(root, 'build-cmake/CMakeFiles/vfio_pci.dir'), /\.o$/);
  itUnless(
    cmakeObjs.length ? undefined : 'no cmake-js build',
    'cmake-js compiled exactly those sources',
    () => {
      expect(cmakeObjs).toEqual([...sources].sort());
    },
  );
});

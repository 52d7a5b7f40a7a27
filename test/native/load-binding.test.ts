/**
 * loadBinding(): the addon when it loads, koffi when it does not (logged on vfio:binding).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { format } from 'node:util';
import createDebug from 'debug';
import { afterEach, describe, expect, it } from 'vitest';
import { defaultBindingFactories, loadBinding, type BindingFactories } from '../../src/kernel/binding';
import { packageRoot } from '../../src/kernel/binding/native';
import { thrown } from '../helpers/errors';
import { useTempDir } from '../helpers/temp-dir';

const failing = (message: string) => () => {
  throw new Error(message);
};

describe('loadBinding', () => {
  const tmp = useTempDir('pkgroot');
  const savedLog = createDebug.log;
  afterEach(() => {
    createDebug.log = savedLog;
    createDebug.disable();
  });

  function captureLog(): string[] {
    const lines: string[] = [];
    createDebug.enable('vfio:binding');
    createDebug.log = (...args: unknown[]) => {
      lines.push(format(...(args as [unknown, ...unknown[]])));
    };
    return lines;
  }

  it('loads the native addon by default, koffi when preferred', () => {
    expect(loadBinding().name).toBe('native');
    expect(loadBinding('native').name).toBe('native');
    expect(loadBinding('koffi').name).toBe('koffi');
  });

  it('falls back to koffi when the addon cannot load, and says so on vfio:binding', () => {
    const lines = captureLog();
    const factories: BindingFactories = { ...defaultBindingFactories, native: failing('addon not built') };
    const b = loadBinding(undefined, factories);
    expect(b.name).toBe('koffi');
    const fd = b.eventfd(3);
    expect(b.eventfdRead(fd)).toBe(3n);
    b.close(fd);
    expect(lines.join('\n')).toMatch(/vfio:binding native binding unavailable \(addon not built\); falling back/);
    expect(lines.join('\n')).toMatch(/vfio:binding using the koffi binding/);
  });

  it('an explicit choice is strict: it never silently becomes the other binding', () => {
    const factories: BindingFactories = { ...defaultBindingFactories, koffi: failing('no libc') };
    expect(() => loadBinding('koffi', factories)).toThrow(/no libc/);
    const noAddon: BindingFactories = { ...defaultBindingFactories, native: failing('not built') };
    expect(() => loadBinding('native', noAddon)).toThrow(expect.objectContaining({ code: 'EVFIO_NO_BINDING' }));
  });

  it('finds the addon from a copy that has only package.json, dist/ and build/ (no binding.gyp)', () => {
    const dir = tmp.path;
    fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ name: 'node-vfio-pci' }));
    const deep = path.join(dir, 'dist/src/binding');
    fs.mkdirSync(deep, { recursive: true });
    expect(packageRoot(deep)).toBe(dir);
    fs.writeFileSync(path.join(deep, 'package.json'), JSON.stringify({ name: 'something-else' }));
    expect(packageRoot(deep)).toBe(dir);
  });

  it('throws EVFIO_NO_BINDING (kind unsupported, with the first failure as cause) when none loads', () => {
    const factories: BindingFactories = { native: failing('addon not built'), koffi: failing('no koffi') };
    const err = thrown(() => loadBinding(undefined, factories));
    expect(err).toMatchObject({ code: 'EVFIO_NO_BINDING', kind: 'unsupported' });
    expect(err.message).toContain('native: addon not built; koffi: no koffi');
    expect((err.cause as Error).message).toBe('addon not built');
  });
});

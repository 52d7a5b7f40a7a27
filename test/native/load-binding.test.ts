/**
 * loadBinding(): the addon when it loads, koffi when it does not (logged on vfio:binding).
 */
import { format } from 'node:util';
import createDebug from 'debug';
import { afterEach, describe, expect, it } from 'vitest';
import { VfioError } from '../../src/errors';
import { defaultBindingFactories, loadBinding, type BindingFactories } from '../../src/binding';

const failing = (message: string) => () => {
  throw new Error(message);
};

describe('loadBinding', () => {
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

  it('tries the other binding when the preferred one fails', () => {
    const factories: BindingFactories = { ...defaultBindingFactories, koffi: failing('no libc') };
    expect(loadBinding('koffi', factories).name).toBe('native');
  });

  it('throws EVFIO_NO_BINDING (kind unsupported, with the first failure as cause) when none loads', () => {
    const factories: BindingFactories = { native: failing('addon not built'), koffi: failing('no koffi') };
    let err: unknown;
    try {
      loadBinding(undefined, factories);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(VfioError);
    expect(err).toMatchObject({ code: 'EVFIO_NO_BINDING', kind: 'unsupported' });
    expect((err as VfioError).message).toContain('native: addon not built; koffi: no koffi');
    expect(((err as VfioError).cause as Error).message).toBe('addon not built');
  });
});

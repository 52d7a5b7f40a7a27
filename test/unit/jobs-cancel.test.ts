// Cancelling saveSnapshot / restoreSnapshot through their AbortSignal at each step: no file is
// ever left half-written or in place, and the devices are back where they were.
import { describe, it, expect } from 'vitest';
import * as fs from 'node:fs';
import { openDevice } from '../../src/kernel/open';
import { MigState, migStateName } from '../../src/kernel/uapi/vfio';
import { restoreSnapshot, saveSnapshot } from '../../src/vm/jobs';
import { rejection } from '../helpers/errors';
import { useTempDir } from '../helpers/temp-dir';

const tmp = useTempDir('jobs-cancel', { each: true });

describe('saveSnapshot cancelled', () => {
  it('before it starts: no device touched, no file', async () => {
    const dev = openDevice('sim:64KiB');
    try {
      const ac = new AbortController();
      ac.abort();
      const e = await rejection(saveSnapshot([dev], tmp.file('a.vfiosnap'), { signal: ac.signal, noSync: true }));
      expect(e).toMatchObject({ code: 'ECANCELED', kind: 'cancelled', deviceState: [{ state: 'RUNNING', touched: false }] });
      expect(migStateName(dev.migration!.getState())).toBe('RUNNING');
      expect(fs.readdirSync(tmp.path)).toEqual([]);
    } finally {
      dev.close();
    }
  });

  it('after the copy, while the devices resume (before the rename): no file, the devices run', async () => {
    const dev = openDevice('sim:64KiB');
    try {
      const ac = new AbortController();
      const onState = (c: { from: MigState; to: MigState }): void => {
        if (c.from === MigState.STOP && c.to === MigState.RUNNING) ac.abort();
      };
      const e = await rejection(saveSnapshot([dev], tmp.file('b.vfiosnap'), { signal: ac.signal, onState, noSync: true }));
      expect(e).toMatchObject({ code: 'ECANCELED', kind: 'cancelled', step: 'snapshot:commit', deviceState: [{ state: 'RUNNING' }] });
      expect(migStateName(dev.migration!.getState())).toBe('RUNNING');
      expect(fs.readdirSync(tmp.path)).toEqual([]);
    } finally {
      dev.close();
    }
  });
});

describe('restoreSnapshot --verify cancelled', () => {
  it('during the verification pass: no device touched', async () => {
    const file = tmp.file('c.vfiosnap');
    const src = openDevice('sim:4MiB');
    const dst = openDevice('sim:4MiB');
    try {
      await saveSnapshot([src], file, { noSync: true, bufferSize: 64 << 10 });
      const ac = new AbortController();
      ac.abort();
      const e = await rejection(restoreSnapshot(dst, file, { verify: true, signal: ac.signal }));
      expect(e).toMatchObject({ code: 'ECANCELED', step: 'restore:verify', deviceState: [{ state: 'RUNNING', touched: false, reset: false }] });
    } finally {
      src.close();
      dst.close();
    }
  });
});

describe('cancelled mid-stream (between two pump calls)', () => {
  it('a save: ECANCELED, no file, the device back in RUNNING with its state', async () => {
    const dev = openDevice('sim:256MiB');
    try {
      const ac = new AbortController();
      let seen = 0;
      const e = await rejection(saveSnapshot([dev], tmp.file('m.vfiosnap'), {
        signal: ac.signal, noSync: true,
        onProgress: (p) => {
          seen = p.bytes;
          ac.abort();
        },
      }));
      expect(seen).toBeGreaterThan(0);
      expect(seen).toBeLessThan(256 << 20);
      expect(e).toMatchObject({ code: 'ECANCELED', kind: 'cancelled', deviceState: [{ state: 'RUNNING', touched: true, reset: false }] });
      expect(migStateName(dev.migration!.getState())).toBe('RUNNING');
      expect(fs.readdirSync(tmp.path)).toEqual([]);
    } finally {
      dev.close();
    }
  });

  it('a restore: ECANCELED, the device reset and never run with part of the state; the file untouched', async () => {
    const file = tmp.file('r.vfiosnap');
    const src = openDevice('sim:256MiB');
    const dst = openDevice('sim:256MiB');
    try {
      await saveSnapshot([src], file, { noSync: true });
      const size = fs.statSync(file).size;
      const ac = new AbortController();
      const states: string[] = [];
      const e = await rejection(restoreSnapshot(dst, file, {
        signal: ac.signal,
        onState: (c) => states.push(`${migStateName(c.from)}→${migStateName(c.to)}`),
        onProgress: () => ac.abort(),
      }));
      expect(e).toMatchObject({ code: 'ECANCELED', kind: 'cancelled', deviceState: [{ state: 'RUNNING', touched: true, reset: true }] });
      expect(states).toContain('RUNNING→RESUMING');
      expect(states).not.toContain('RESUMING→RUNNING'); // reset, not run
      expect(migStateName(dst.migration!.getState())).toBe('RUNNING');
      expect(fs.statSync(file).size).toBe(size);
    } finally {
      src.close();
      dst.close();
    }
  });
});

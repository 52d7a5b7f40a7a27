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

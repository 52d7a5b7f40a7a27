// A destination device left in RESUMING by a load that died (mtty keeps the state after the last
// close; the kernel tier pins that) is reset before the new load: asking for RESUMING again would
// be "no change" to the kernel, with no data_fd to load through.
import { describe, it, expect } from 'vitest';
import { openDevice } from '../../src/kernel/open';
import { MigState, migStateName } from '../../src/kernel/uapi/vfio';
import { restoreSnapshot, saveSnapshot } from '../../src/vm/jobs';
import { useTempDir } from '../helpers/temp-dir';

const tmp = useTempDir('leftover', { each: true });

describe('a load onto a device left in RESUMING', () => {
  it('resets it first, then loads: the state is the saved one and the device runs', async () => {
    const file = tmp.file('l.vfiosnap');
    const src = openDevice('sim:64KiB:seed=3');
    const dst = openDevice('sim:64KiB:seed=9');
    try {
      const saved = await saveSnapshot([src], file, { noSync: true });
      const left = await dst.migration!.setState(MigState.RESUMING); // a load that went no further
      expect(left?.fd).toBeGreaterThanOrEqual(0);
      const states: string[] = [];
      const r = await restoreSnapshot(dst, file, { onState: (c) => states.push(`${migStateName(c.from)}→${migStateName(c.to)}`) });
      expect(r.devices[0].stateBytes).toBe(saved.devices[0].stateBytes);
      expect(states).toEqual(['RUNNING→RESUMING', 'RESUMING→RUNNING']); // after the reset: one RESUMING request, then run
      expect(migStateName(dst.migration!.getState())).toBe('RUNNING');
    } finally {
      src.close();
      dst.close();
    }
  });
});

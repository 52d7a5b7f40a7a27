// The destination's record check (checkRecordAgainst): the region sizes, when the record has
// them, are compared before the config space, because config bytes cannot show a size; whether a
// model state follows, when the record says, against whether the destination has a model.
import { describe, it, expect } from 'vitest';
import { openDevice } from '../../src/kernel/open';
import { checkRecordAgainst, recordOf } from '../../src/model/migratable';
import { thrown } from '../helpers/errors';

describe('checkRecordAgainst with region sizes', () => {
  it('equal sizes pass; a BAR the source has and this device lacks (and the reverse) is refused by name; a record without sizes (a snapshot file) skips the compare', () => {
    const dev = openDevice('sim:64KiB');
    try {
      const rec = recordOf(dev, 'nic0', false);
      expect(rec.regions?.barSizes).toHaveLength(6);
      expect(() => checkRecordAgainst(dev, 'nic0', false, rec)).not.toThrow();
      const extra = { ...rec, regions: { barSizes: rec.regions!.barSizes.map((n, i) => (i === 1 ? 8 : n)), romSize: 0 } };
      const e = thrown(() => checkRecordAgainst(dev, 'nic0', false, extra));
      expect(e).toMatchObject({ code: 'EVFIO_DEVICE_MISMATCH', step: 'load:check' });
      expect(e.message).toMatch(/BAR1 8 bytes on the source, absent here/);
      const smaller = { ...rec, regions: { barSizes: rec.regions!.barSizes.map((n, i) => (i === 0 ? n / 2 : n)), romSize: 0 } };
      expect(() => checkRecordAgainst(dev, 'nic0', false, smaller)).toThrow(new RegExp(`BAR0 ${rec.regions!.barSizes[0] / 2} bytes on the source, ${rec.regions!.barSizes[0]} bytes here`));
      expect(() => checkRecordAgainst(dev, 'nic0', false, { ...extra, regions: undefined })).not.toThrow();
    } finally {
      dev.close();
    }
  });

  it('a record that announces a model state is refused by a device without a model, and the reverse, naming the device and the kind each side is; a record without the flag (a snapshot file) is not compared', () => {
    const dev = openDevice('sim:64KiB');
    try {
      const bare = recordOf(dev, 'nic0', false);
      const model = recordOf(dev, 'nic0', true);
      expect([bare.model, model.model]).toEqual([false, true]);
      expect(() => checkRecordAgainst(dev, 'nic0', true, model)).not.toThrow();
      expect(() => checkRecordAgainst(dev, 'nic0', false, bare)).not.toThrow();
      const toBare = thrown(() => checkRecordAgainst(dev, 'nic0', false, model));
      expect(toBare).toMatchObject({ code: 'EVFIO_DEVICE_MISMATCH', kind: 'mismatch', device: 'nic0', step: 'load:check' });
      expect(toBare.message).toMatch(/sends nic0's device-model state .* nic0 here has no device model/);
      const toModel = thrown(() => checkRecordAgainst(dev, 'nic0', true, bare));
      expect(toModel).toMatchObject({ code: 'EVFIO_DEVICE_MISMATCH', kind: 'mismatch', device: 'nic0', step: 'load:check' });
      expect(toModel.message).toMatch(/sends no device-model state for nic0 .* nic0 here is a VMM's VfioPciDevice/);
      expect(() => checkRecordAgainst(dev, 'nic0', true, { ...bare, model: undefined })).not.toThrow();
      expect(() => checkRecordAgainst(dev, 'nic0', false, { ...model, model: undefined })).not.toThrow();
    } finally {
      dev.close();
    }
  });
});

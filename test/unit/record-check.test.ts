// The destination's record check (checkRecordAgainst): the region sizes, when the record has
// them, are compared before the config space, because config bytes cannot show a size.
import { describe, it, expect } from 'vitest';
import { openDevice } from '../../src/kernel/open';
import { checkRecordAgainst, recordOf } from '../../src/model/migratable';
import { thrown } from '../helpers/errors';

describe('checkRecordAgainst with region sizes', () => {
  it('equal sizes pass; a BAR the source has and this device lacks (and the reverse) is refused by name; a record without sizes (a snapshot file) skips the compare', () => {
    const dev = openDevice('sim:64KiB');
    try {
      const rec = recordOf(dev, 'nic0');
      expect(rec.regions?.barSizes).toHaveLength(6);
      expect(() => checkRecordAgainst(dev, 'nic0', rec)).not.toThrow();
      const extra = { ...rec, regions: { barSizes: rec.regions!.barSizes.map((n, i) => (i === 1 ? 8 : n)), romSize: 0 } };
      const e = thrown(() => checkRecordAgainst(dev, 'nic0', extra));
      expect(e).toMatchObject({ code: 'EVFIO_DEVICE_MISMATCH', step: 'load:check' });
      expect(e.message).toMatch(/BAR1 8 bytes on the source, absent here/);
      const smaller = { ...rec, regions: { barSizes: rec.regions!.barSizes.map((n, i) => (i === 0 ? n / 2 : n)), romSize: 0 } };
      expect(() => checkRecordAgainst(dev, 'nic0', smaller)).toThrow(new RegExp(`BAR0 ${rec.regions!.barSizes[0] / 2} bytes on the source, ${rec.regions!.barSizes[0]} bytes here`));
      expect(() => checkRecordAgainst(dev, 'nic0', { ...extra, regions: undefined })).not.toThrow();
    } finally {
      dev.close();
    }
  });
});

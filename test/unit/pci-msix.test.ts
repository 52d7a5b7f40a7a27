import { describe, it, expect } from 'vitest';
import { MsixTable, type MsixChange, type MsixVectorState } from '../../src/model/pci/msix-table';
import { le32, le64 } from '../helpers/bytes';
import { thrown } from '../helpers/errors';

const read32 = (t: MsixTable, off: number): number => {
  const b = Buffer.alloc(4);
  t.readTable(off, b);
  return b.readUInt32LE();
};

function recorder(): { calls: Array<[number, MsixVectorState, MsixChange]>; fn: (v: number, s: MsixVectorState, c: MsixChange) => void } {
  const calls: Array<[number, MsixVectorState, MsixChange]> = [];
  return { calls, fn: (v, s, c) => void calls.push([v, s, c]) };
}


describe('MsixTable', () => {
  it('starts with every vector masked and a zero message', () => {
    const t = new MsixTable(3);
    expect(t.tableBytes).toBe(48);
    expect(t.pbaBytes).toBe(8);
    expect(t.vectors()).toEqual([0, 1, 2].map((index) => ({ index, address: 0n, data: 0, masked: true, pending: false })));
    expect(read32(t, 12)).toBe(1);
  });

  it('programs a vector with dword writes and notifies each change once', () => {
    const rec = recorder();
    const t = new MsixTable(4, rec.fn);
    t.writeTable(16 + 0, le32(0xfee01000));
    t.writeTable(16 + 4, le32(0x1));
    t.writeTable(16 + 8, le32(0x4021));
    t.writeTable(16 + 12, le32(0));
    expect(t.vector(1)).toEqual({ index: 1, address: 0x1fee01000n, data: 0x4021, masked: false, pending: false });
    expect(rec.calls.map(([v, , c]) => [v, c])).toEqual([
      [1, { address: true, data: false, mask: false }],
      [1, { address: true, data: false, mask: false }],
      [1, { address: false, data: true, mask: false }],
      [1, { address: false, data: false, mask: true }],
    ]);
    expect(rec.calls[3][1].masked).toBe(false);
    // Same values again: no notification.
    t.writeTable(16 + 8, le32(0x4021));
    t.writeTable(16 + 12, le32(0));
    expect(rec.calls).toHaveLength(4);
    expect(read32(t, 16)).toBe(0xfee01000);
    expect(read32(t, 20)).toBe(1);
  });

  it('handles qword accesses as one change per vector', () => {
    const rec = recorder();
    const t = new MsixTable(2, rec.fn);
    t.writeTable(0, le64(0x00000000fee00000n));
    t.writeTable(8, le64(0x0000000000000041n)); // data 0x41, vector control 0: unmask
    expect(rec.calls.map(([v, , c]) => [v, c])).toEqual([
      [0, { address: true, data: false, mask: false }],
      [0, { address: false, data: true, mask: true }],
    ]);
    const out = Buffer.alloc(8);
    t.readTable(8, out);
    expect(out.readBigUInt64LE()).toBe(0x41n);
    t.readTable(0, out);
    expect(out.readBigUInt64LE()).toBe(0xfee00000n);
  });

  it('keeps only the mask bit of vector control', () => {
    const t = new MsixTable(1);
    t.writeTable(12, le32(0xffffffff));
    expect(read32(t, 12)).toBe(1);
    t.writeTable(12, le32(0xfffffffe));
    expect(read32(t, 12)).toBe(0);
    expect(t.vector(0).masked).toBe(false);
  });

  it('reports pending bits through the read-only PBA', () => {
    const t = new MsixTable(70);
    expect(t.pbaBytes).toBe(16);
    t.setPending(0, true);
    t.setPending(65, true);
    t.setPending(69, true);
    t.setPending(69, false);
    const q = Buffer.alloc(8);
    t.readPba(0, q);
    expect(q.readBigUInt64LE()).toBe(1n);
    t.readPba(8, q);
    expect(q.readBigUInt64LE()).toBe(2n);
    const d = Buffer.alloc(4);
    t.readPba(8, d);
    expect(d.readUInt32LE()).toBe(2);
    t.writePba(0, le64(0n));
    expect(t.isPending(0)).toBe(true);
    expect(t.vector(65).pending).toBe(true);
    expect(t.vectors().filter((v) => v.pending).map((v) => v.index)).toEqual([0, 65]);
  });

  it('syncPending runs before the PBA is observed (a valid guest read, serialize), so its bits are current there', () => {
    const t = new MsixTable(4);
    let calls = 0;
    t.syncPending = () => {
      calls++;
      t.setPending(2, true);
    };
    const q = Buffer.alloc(8);
    t.readPba(0, q);
    expect([calls, q.readBigUInt64LE()]).toEqual([1, 4n]);
    expect(thrown(() => t.readPba(2, Buffer.alloc(2))).code).toBe('EVFIO_MSIX_ACCESS');
    expect(calls).toBe(1); // not for an access that is refused
    t.setPending(2, false);
    const saved = MsixTable.deserialize(t.serialize());
    expect([calls, saved.isPending(2)]).toEqual([2, true]);
    expect(t.isPending(2)).toBe(true);
    t.vectors(); // the model's own view does not call it
    expect(calls).toBe(2);
  });

  it('refuses accesses the spec does not allow', () => {
    const t = new MsixTable(2);
    expect(thrown(() => t.readTable(0, Buffer.alloc(2))).code).toBe('EVFIO_MSIX_ACCESS');
    expect(thrown(() => t.readTable(2, Buffer.alloc(4))).code).toBe('EVFIO_MSIX_ACCESS');
    expect(thrown(() => t.writeTable(4, Buffer.alloc(8))).code).toBe('EVFIO_MSIX_ACCESS');
    expect(thrown(() => t.writeTable(32, Buffer.alloc(4))).code).toBe('EVFIO_MSIX_ACCESS');
    expect(thrown(() => t.readPba(8, Buffer.alloc(4))).code).toBe('EVFIO_MSIX_ACCESS');
    expect(thrown(() => t.setPending(2, true)).code).toBe('EVFIO_MSIX_ACCESS');
    expect(t.isValidTableAccess(28, 4)).toBe(true);
    expect(t.isValidTableAccess(28, 8)).toBe(false);
    expect(t.isValidPbaAccess(0, 8)).toBe(true);
    expect(thrown(() => new MsixTable(0)).code).toBe('EVFIO_MSIX_SIZE');
    expect(thrown(() => new MsixTable(2049)).code).toBe('EVFIO_MSIX_SIZE');
    expect(new MsixTable(2048).pbaBytes).toBe(256);
  });

  it('round-trips through serialize/deserialize without notifications', () => {
    const t = new MsixTable(5);
    t.writeTable(32, le64(0xfee0100000000000n | 0x1234n));
    t.writeTable(40, le64(0x55n));
    t.setPending(4, true);
    const rec = recorder();
    const copy = MsixTable.deserialize(t.serialize(), rec.fn);
    expect(copy.vectors()).toEqual(t.vectors());
    expect(rec.calls).toEqual([]);
    copy.writeTable(44, le32(1));
    expect(rec.calls.map(([v, , c]) => [v, c])).toEqual([[2, { address: false, data: false, mask: true }]]);
    expect(copy.vector(2).address).toBe(0xfee0100000001234n);
  });

  it('rejects damaged serialized tables', () => {
    const good = new MsixTable(3).serialize();
    const magic = Buffer.from(good);
    magic[1] ^= 0xff;
    expect(thrown(() => MsixTable.deserialize(magic)).code).toBe('EVFIO_MSIX_FORMAT');
    expect(thrown(() => MsixTable.deserialize(good.subarray(0, good.length - 1))).code).toBe('EVFIO_MSIX_FORMAT');
    const version = Buffer.from(good);
    version.writeUInt16LE(9, 4);
    expect(thrown(() => MsixTable.deserialize(version)).code).toBe('EVFIO_MSIX_VERSION');
    const ctrl = Buffer.from(good);
    ctrl.writeUInt32LE(0x80000001, 16 + 12);
    expect(thrown(() => MsixTable.deserialize(ctrl)).code).toBe('EVFIO_MSIX_FORMAT');
    const pba = Buffer.from(good);
    pba[16 + 48] = 0x08; // vector 3 does not exist
    expect(thrown(() => MsixTable.deserialize(pba)).code).toBe('EVFIO_MSIX_FORMAT');
  });
});

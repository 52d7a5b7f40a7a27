import { describe, it, expect } from 'vitest';
import * as r from '../../src/model/pci/regs';
import { ConfigSpace } from '../../src/model/pci/config-space';
import { checkConfig, compareConfig, destinationConfig, type ConfigMismatchError, type DestinationConfig } from '../../src/model/pci/compare';
import { thrown } from '../helpers/errors';

/**
 * A device image: PM at 0x40, MSI (64-bit, masking) at 0x50, Vendor Specific (length 8)
 * at 0x68, MSI-X at 0x70; BAR0 a 16 KiB 32-bit memory BAR at a host address; optional
 * extended capabilities (AER at 0x100, DSN at 0x148) for 4096-byte images.
 */
function deviceImage(size: 256 | 4096 = 256): Buffer {
  const b = Buffer.alloc(size);
  b.writeUInt16LE(0x15b3, r.PCI_VENDOR_ID);
  b.writeUInt16LE(0x101e, r.PCI_DEVICE_ID);
  b.writeUInt16LE(r.PCI_STATUS_CAP_LIST, r.PCI_STATUS);
  b[r.PCI_REVISION_ID] = 0x02;
  b.writeUInt16LE(0x0200, r.PCI_CLASS_DEVICE);
  b.writeUInt32LE(0xfb000000, r.PCI_BASE_ADDRESS_0);
  b.writeUInt16LE(0x15b3, r.PCI_SUBSYSTEM_VENDOR_ID);
  b.writeUInt16LE(0x0051, r.PCI_SUBSYSTEM_ID);
  b[r.PCI_CAPABILITY_LIST] = 0x40;
  b[r.PCI_INTERRUPT_PIN] = 1;
  // PM
  b[0x40] = r.PCI_CAP_ID_PM;
  b[0x41] = 0x50;
  b.writeUInt16LE(0x0003, 0x42);
  // MSI, 64-bit with per-vector masking, 8 vectors capable
  b[0x50] = r.PCI_CAP_ID_MSI;
  b[0x51] = 0x68;
  b.writeUInt16LE(r.PCI_MSI_FLAGS_64BIT | r.PCI_MSI_FLAGS_MASKBIT | (3 << 1), 0x52);
  // Vendor specific, 8 bytes: header + a 5-byte vendor body
  b[0x68] = r.PCI_CAP_ID_VNDR;
  b[0x69] = 0x70;
  b[0x6a] = 0x08;
  b.write('v535.', 0x6b, 'latin1');
  // MSI-X, 32 vectors, table at BAR0 + 0, PBA at BAR0 + 0x2000
  b[0x70] = r.PCI_CAP_ID_MSIX;
  b[0x71] = 0x00;
  b.writeUInt16LE(31, 0x72);
  b.writeUInt32LE(0x0000, 0x74);
  b.writeUInt32LE(0x2000, 0x78);
  if (size === 4096) {
    b.writeUInt32LE((r.PCI_EXT_CAP_ID_ERR | (2 << 16) | (0x148 << 20)) >>> 0, 0x100);
    b.writeUInt32LE((r.PCI_EXT_CAP_ID_DSN | (1 << 16)) >>> 0, 0x148);
    b.writeUInt32LE(0x12345678, 0x14c);
  }
  return b;
}

function saved(size: 256 | 4096 = 256): ConfigSpace {
  return ConfigSpace.fromDevice(deviceImage(size), { barSizes: [0x4000] });
}

/** The destination side: `raw` as read from a device with BAR0 of 16 KiB, and its own masks. */
function dest(raw: Buffer): DestinationConfig {
  return destinationConfig(raw, { barSizes: [0x4000] });
}

/** The mismatch error `fn` (a checkConfig call) throws. */
const mismatch = (fn: () => void): ConfigMismatchError => thrown(fn) as ConfigMismatchError;

describe('compareConfig: QEMU load rule', () => {
  it('accepts an identical device', () => {
    const s = saved();
    expect(compareConfig(s, dest(deviceImage()))).toEqual([]);
    expect(() => checkConfig(s, dest(deviceImage()))).not.toThrow();
  });

  it('fails a different device id, naming PCI_DEVICE_ID at 0x02', () => {
    const cur = deviceImage();
    cur.writeUInt16LE(0x1017, r.PCI_DEVICE_ID);
    const list = compareConfig(saved(), dest(cur));
    expect(list).toEqual([{ offset: 0x02, register: 'PCI_DEVICE_ID', saved: 0x1e, current: 0x17, mask: 0xff }]);
    const err = mismatch(() => checkConfig(saved(), dest(cur), { device: '0000:3b:00.1' }));
    expect(err.code).toBe('EVFIO_CONFIG_MISMATCH');
    expect(err.kind).toBe('mismatch');
    expect(err.device).toBe('0000:3b:00.1');
    expect(err.step).toBe('restore:check-config');
    expect(err.message).toContain('0x02 PCI_DEVICE_ID');
    expect(err.message).toContain('0000:3b:00.1');
    expect(err.mismatches).toEqual(list);
  });

  it('accepts a Vendor Specific body that differs (NVIDIA vGPU across host drivers)', () => {
    const cur = deviceImage();
    cur.write('v550.', 0x6b, 'latin1');
    expect(compareConfig(saved(), dest(cur))).toEqual([]);
  });

  it('fails when the Vendor Specific header differs: id, next pointer or length', () => {
    const len = deviceImage();
    len[0x6a] = 0x0c;
    expect(compareConfig(saved(), dest(len))).toEqual([
      { offset: 0x6a, register: 'Vendor Specific capability at 0x68 header', saved: 0x08, current: 0x0c, mask: 0xff },
    ]);
    const next = deviceImage();
    next[0x69] = 0x00;
    expect(compareConfig(saved(), dest(next)).map((m) => [m.offset, m.register])).toEqual([[0x69, 'Vendor Specific capability at 0x68 header']]);
    const id = deviceImage();
    id[0x68] = 0x0a;
    expect(compareConfig(saved(), dest(id)).map((m) => m.offset)).toEqual([0x68]);
  });

  it('accepts differences in guest-writable bytes (interrupt line, cache line, COMMAND)', () => {
    const s = saved();
    s.write(r.PCI_INTERRUPT_LINE, 1, 0x0b);
    s.write(r.PCI_CACHE_LINE_SIZE, 1, 0x10);
    s.write(r.PCI_COMMAND, 2, 0x0506);
    const cur = deviceImage();
    cur[r.PCI_INTERRUPT_LINE] = 0xff;
    expect(compareConfig(s, dest(cur))).toEqual([]);
  });

  it('accepts a differing write-1-to-clear STATUS error bit but not CAP_LIST', () => {
    const cur = deviceImage();
    cur.writeUInt16LE(r.PCI_STATUS_CAP_LIST | r.PCI_STATUS_REC_MASTER_ABORT | r.PCI_STATUS_DETECTED_PARITY, r.PCI_STATUS);
    expect(compareConfig(saved(), dest(cur))).toEqual([]);
    const noCaps = deviceImage();
    noCaps.writeUInt16LE(0, r.PCI_STATUS);
    expect(compareConfig(saved(), dest(noCaps))).toEqual([
      { offset: r.PCI_STATUS, register: 'PCI_STATUS', saved: 0x10, current: 0x00, mask: 0x10 },
    ]);
  });

  it('accepts guest MSI/MSI-X programming and BAR addresses, fails their read-only bits', () => {
    const s = saved();
    s.write(r.PCI_BASE_ADDRESS_0, 4, 0xfe000000);
    s.write(0x54, 4, 0xfee00000);
    s.write(0x5c, 2, 0x41);
    s.write(0x52, 2, r.PCI_MSI_FLAGS_ENABLE | (3 << 4));
    s.write(0x72, 2, r.PCI_MSIX_FLAGS_ENABLE);
    // The destination reads back its host BAR address and a disabled MSI.
    expect(compareConfig(s, dest(deviceImage()))).toEqual([]);
    const no64 = deviceImage();
    no64.writeUInt16LE(r.PCI_MSI_FLAGS_MASKBIT | (3 << 1), 0x52);
    expect(compareConfig(s, dest(no64))).toEqual([
      { offset: 0x52, register: 'MSI capability at 0x50 +2', saved: 0x06 | 0x80 | 0x31, current: 0x06, mask: 0x8e },
    ]);
    const prefetch = deviceImage();
    prefetch[r.PCI_BASE_ADDRESS_0] |= r.PCI_BASE_ADDRESS_MEM_PREFETCH;
    expect(compareConfig(s, dest(prefetch)).map((m) => [m.offset, m.register])).toEqual([[0x10, 'PCI_BASE_ADDRESS_0']]);
    const smallerBar = deviceImage();
    smallerBar.writeUInt32LE(0xfb001000, r.PCI_BASE_ADDRESS_0); // address bit 12 set: BAR is at most 4 KiB
    expect(compareConfig(s, dest(smallerBar)).map((m) => m.offset)).toEqual([0x11]);
    const tableSize = deviceImage();
    tableSize.writeUInt16LE(15, 0x72);
    expect(compareConfig(s, dest(tableSize)).map((m) => m.register)).toEqual(['MSI-X capability at 0x70 +2']);
  });

  it('does not compare subsystem ids (QEMU pci_init_cmask leaves them out)', () => {
    const cur = deviceImage();
    cur.writeUInt16LE(0x0052, r.PCI_SUBSYSTEM_ID);
    expect(compareConfig(saved(), dest(cur))).toEqual([]);
  });

  it('fails class, revision and a changed capability layout', () => {
    const cls = deviceImage();
    cls[r.PCI_CLASS_DEVICE + 1] = 0x03;
    cls[r.PCI_REVISION_ID] = 0x03;
    expect(compareConfig(saved(), dest(cls)).map((m) => m.register)).toEqual(['PCI_REVISION_ID', 'PCI_CLASS_DEVICE']);
    // One more capability appended after MSI-X: seen at MSI-X's next pointer.
    const extra = deviceImage();
    extra[0x71] = 0x80;
    extra[0x80] = r.PCI_CAP_ID_EXP;
    // The destination's own masks cover its extra capability: seen at its header too.
    expect(compareConfig(saved(), dest(extra)).map((m) => [m.offset, m.register])).toEqual([
      [0x71, 'MSI-X capability at 0x70 header'],
      [0x80, 'PCI Express capability at 0x80 header'],
    ]);
    // The list starting elsewhere: seen at the capabilities pointer.
    const moved = deviceImage();
    moved[r.PCI_CAPABILITY_LIST] = 0x50;
    expect(compareConfig(saved(), dest(moved)).map((m) => m.register)).toEqual(['PCI_CAPABILITY_LIST']);
  });

  it('compares extended capabilities and names them', () => {
    const s = saved(4096);
    expect(compareConfig(s, dest(deviceImage(4096)))).toEqual([]);
    const cur = deviceImage(4096);
    cur.writeUInt32LE((r.PCI_EXT_CAP_ID_ERR | (1 << 16) | (0x148 << 20)) >>> 0, 0x100);
    cur.writeUInt32LE(0x9abcdef0, 0x14c);
    expect(compareConfig(s, dest(cur)).map((m) => [m.offset, m.register])).toEqual([
      [0x102, 'Advanced Error Reporting extended capability at 0x100 header'],
      [0x14c, 'Device Serial Number extended capability at 0x148 +4'],
      [0x14d, 'Device Serial Number extended capability at 0x148 +5'],
      [0x14e, 'Device Serial Number extended capability at 0x148 +6'],
      [0x14f, 'Device Serial Number extended capability at 0x148 +7'],
    ]);
  });

  it('reports a config space size mismatch', () => {
    const list = compareConfig(saved(4096), dest(deviceImage(256)));
    expect(list).toEqual([{ offset: 256, register: 'config space size', saved: 4096, current: 256, mask: 0 }]);
    expect(mismatch(() => checkConfig(saved(4096), dest(deviceImage(256)))).message).toContain('saved 4096 bytes, device 256');
  });

  it("uses the destination's own masks, never the saved ones (QEMU get_pci_config_device)", () => {
    const s = saved();
    s.write(r.PCI_INTERRUPT_LINE, 1, 0x0a);
    const cur = deviceImage();
    cur.writeUInt16LE(0x1017, r.PCI_DEVICE_ID);
    const expected = [{ offset: 0x02, register: 'PCI_DEVICE_ID', saved: 0x1e, current: 0x17, mask: 0xff }];
    expect(compareConfig(s, dest(cur))).toEqual(expected);
    // The bytes alone, a plain image or a serialised shadow: the same verdict.
    const plain = { bytes: Buffer.from(s.bytes), cmask: Buffer.from(s.cmask), wmask: Buffer.from(s.wmask), w1cmask: Buffer.from(s.w1cmask) };
    expect(compareConfig(plain, dest(cur))).toEqual(expected);
    expect(compareConfig(Buffer.from(s.bytes), dest(cur))).toEqual(expected);
    expect(compareConfig(ConfigSpace.deserialize(s.serialize()), dest(cur))).toEqual(expected);
    // A snapshot re-sealed with its cmask (and wmask) zeroed at the device id still fails: the
    // saved masks are not what decides.
    plain.cmask.fill(0, 2, 4);
    plain.wmask.fill(0xff, 2, 4);
    expect(compareConfig(plain, dest(cur))).toEqual(expected);
  });

  it('lists at most 16 mismatches in the message and keeps them all on the error', () => {
    const cur = deviceImage();
    cur.fill(0xee, 0x08, 0x0c); // revision and class
    cur.fill(0xee, 0x42, 0x48); // the PM body
    cur.fill(0xee, 0x74, 0x7c); // MSI-X table and PBA locations
    const err = mismatch(() => checkConfig(saved(), dest(cur)));
    expect(err.mismatches.length).toBe(18);
    expect(err.message).toContain('and 2 more');
    expect(err.message).toContain('0x42 Power Management capability at 0x40 +2');
  });
});

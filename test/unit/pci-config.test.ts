import { describe, it, expect } from 'vitest';
import { VfioError } from '../../src/base/errors';
import * as r from '../../src/model/pci/regs';
import { walkCapabilities, walkExtendedCapabilities, walkAllCapabilities } from '../../src/model/pci/capabilities';
import { ConfigSpace } from '../../src/model/pci/config-space';
import { expectVfioError } from '../helpers/errors';

/** Builds raw config space images the way a device would present them. */
class CfgBuilder {
  readonly b: Buffer;
  private link = r.PCI_CAPABILITY_LIST;
  private extLink = -1;

  constructor(size = 256) {
    this.b = Buffer.alloc(size);
    this.b.writeUInt16LE(0x1af4, r.PCI_VENDOR_ID);
    this.b.writeUInt16LE(0x10f1, r.PCI_DEVICE_ID);
    this.b[r.PCI_REVISION_ID] = 0x01;
    this.b.writeUInt16LE(0x0200, r.PCI_CLASS_DEVICE);
    this.b[r.PCI_INTERRUPT_PIN] = 1;
  }

  u16(at: number, v: number): this {
    this.b.writeUInt16LE(v, at);
    return this;
  }

  u32(at: number, v: number): this {
    this.b.writeUInt32LE(v >>> 0, at);
    return this;
  }

  /** Add a standard capability at `at`, linked after the previous one. */
  cap(at: number, id: number): this {
    this.b[this.link] = at;
    this.b[at] = id;
    this.b[at + 1] = 0;
    this.link = at + 1;
    this.b.writeUInt16LE(this.b.readUInt16LE(r.PCI_STATUS) | r.PCI_STATUS_CAP_LIST, r.PCI_STATUS);
    return this;
  }

  msi(at: number, o: { is64?: boolean; mask?: boolean; mmc?: number } = {}): this {
    this.cap(at, r.PCI_CAP_ID_MSI);
    let flags = (o.mmc ?? 0) << 1;
    if (o.is64) flags |= r.PCI_MSI_FLAGS_64BIT;
    if (o.mask) flags |= r.PCI_MSI_FLAGS_MASKBIT;
    return this.u16(at + 2, flags);
  }

  msix(at: number, o: { size: number; table: number; pba: number }): this {
    this.cap(at, r.PCI_CAP_ID_MSIX);
    return this.u16(at + 2, o.size - 1).u32(at + 4, o.table).u32(at + 8, o.pba);
  }

  pcie(at: number, version = 2): this {
    return this.cap(at, r.PCI_CAP_ID_EXP).u16(at + 2, version);
  }

  vsc(at: number, len: number, body = 0x5a): this {
    this.cap(at, r.PCI_CAP_ID_VNDR);
    this.b[at + 2] = len;
    this.b.fill(body, at + 3, at + len);
    return this;
  }

  ext(at: number, id: number, version = 1): this {
    if (this.extLink >= 0) {
      const h = this.b.readUInt32LE(this.extLink);
      this.b.writeUInt32LE(((h & 0x000fffff) | (at << 20)) >>> 0, this.extLink);
    }
    this.b.writeUInt32LE((id | (version << 16)) >>> 0, at);
    this.extLink = at;
    return this;
  }

  build(): Buffer {
    return Buffer.from(this.b);
  }
}

/** The device most tests use: PM, MSI (64-bit, masking, 4 vectors), MSI-X, PCIe v2, VSC. */
function standardDevice(size = 256): CfgBuilder {
  return new CfgBuilder(size)
    .cap(0x40, r.PCI_CAP_ID_PM)
    .msi(0x50, { is64: true, mask: true, mmc: 2 })
    .msix(0x70, { size: 16, table: 0x2000 | 0, pba: 0x3000 | 0 })
    .pcie(0x80)
    .vsc(0xc0, 0x14);
}

describe('capability walk', () => {
  it('walks a well-formed standard list with per-capability lengths', () => {
    const caps = walkCapabilities(standardDevice().build());
    expect(caps.map((c) => [c.id, c.offset, c.length])).toEqual([
      [r.PCI_CAP_ID_PM, 0x40, 8],
      [r.PCI_CAP_ID_MSI, 0x50, 0x18],
      [r.PCI_CAP_ID_MSIX, 0x70, 12],
      [r.PCI_CAP_ID_EXP, 0x80, 0x3c],
      [r.PCI_CAP_ID_VNDR, 0xc0, 0x14],
    ]);
    expect(caps.every((c) => !c.extended && !c.clamped)).toBe(true);
  });

  it('sizes MSI by its flags and PCIe by its version', () => {
    const size = (o: { is64?: boolean; mask?: boolean }): number => walkCapabilities(new CfgBuilder().msi(0x40, o).build())[0].length;
    expect(size({})).toBe(0x0a);
    expect(size({ is64: true })).toBe(0x0e);
    expect(size({ mask: true })).toBe(0x14);
    expect(size({ is64: true, mask: true })).toBe(0x18);
    expect(walkCapabilities(new CfgBuilder().pcie(0x40, 1).build())[0].length).toBe(0x14);
    expect(walkCapabilities(new CfgBuilder().pcie(0x40, 2).build())[0].length).toBe(0x3c);
  });

  it('sizes an unknown capability up to the next one, or to the end of the standard space', () => {
    const caps = walkCapabilities(new CfgBuilder().cap(0x60, 0x13).cap(0x48, 0x0d).cap(0xe0, 0x07).build());
    // List order is kept; lengths reach the next capability by offset, not by list order.
    expect(caps.map((c) => [c.offset, c.length])).toEqual([
      [0x60, 0xe0 - 0x60],
      [0x48, 0x60 - 0x48],
      [0xe0, 0x100 - 0xe0],
    ]);
  });

  it('returns nothing when STATUS lacks CAP_LIST, and masks the reserved pointer bits', () => {
    const b = new CfgBuilder().cap(0x40, r.PCI_CAP_ID_PM).build();
    b.writeUInt16LE(0, r.PCI_STATUS);
    expect(walkCapabilities(b)).toEqual([]);
    const c = new CfgBuilder().cap(0x40, r.PCI_CAP_ID_PM).build();
    c[r.PCI_CAPABILITY_LIST] = 0x43;
    expect(walkCapabilities(c).map((x) => x.offset)).toEqual([0x40]);
  });

  it('rejects loops with a typed error instead of hanging', () => {
    const self = new CfgBuilder().cap(0x40, r.PCI_CAP_ID_PM).build();
    self[0x41] = 0x40;
    expect(expectVfioError(() => walkCapabilities(self), 'EVFIO_BAD_CAP_LIST', 'format').message).toMatch(/loop/);
    const two = new CfgBuilder().cap(0x40, r.PCI_CAP_ID_PM).cap(0x60, r.PCI_CAP_ID_MSIX).build();
    two[0x61] = 0x40;
    expectVfioError(() => walkCapabilities(two), 'EVFIO_BAD_CAP_LIST', 'format');
  });

  it('rejects pointers into the header', () => {
    const first = new CfgBuilder().cap(0x40, r.PCI_CAP_ID_PM).build();
    first[r.PCI_CAPABILITY_LIST] = 0x20;
    expect(expectVfioError(() => walkCapabilities(first), 'EVFIO_BAD_CAP_LIST').message).toMatch(/header/);
    const later = new CfgBuilder().cap(0x40, r.PCI_CAP_ID_PM).build();
    later[0x41] = 0x10;
    expect(expectVfioError(() => walkCapabilities(later), 'EVFIO_BAD_CAP_LIST').message).toMatch(/0x40/);
  });

  it('rejects an all-ones image (a device that does not answer)', () => {
    expectVfioError(() => walkCapabilities(Buffer.alloc(256, 0xff)), 'EVFIO_BAD_CAP_LIST');
  });

  it('clamps a capability that runs past the end of the space or into the next one', () => {
    const b = new CfgBuilder().vsc(0xf0, 0x10).build();
    b[0xf2] = 0x40; // the length byte says 0x40 but only 0x10 bytes remain
    const caps = walkCapabilities(b);
    expect(caps[0]).toMatchObject({ offset: 0xf0, length: 0x10, clamped: true });
    const overlap = walkCapabilities(new CfgBuilder().msi(0x40, { is64: true, mask: true }).cap(0x50, r.PCI_CAP_ID_PM).build());
    expect(overlap[0]).toMatchObject({ id: r.PCI_CAP_ID_MSI, length: 0x10, clamped: true });
    // ConfigSpace refuses to emulate a cut MSI capability.
    expectVfioError(
      () => ConfigSpace.fromDevice(new CfgBuilder().msi(0x40, { is64: true, mask: true }).cap(0x50, r.PCI_CAP_ID_PM).build()),
      'EVFIO_CONFIG_HEADER',
      'unsupported',
    );
  });

  it('walks the extended list of a 4096-byte space', () => {
    const b = standardDevice(4096).ext(0x100, r.PCI_EXT_CAP_ID_ERR, 2).ext(0x148, r.PCI_EXT_CAP_ID_DSN).build();
    const ext = walkExtendedCapabilities(b);
    expect(ext.map((c) => [c.id, c.version, c.offset, c.length])).toEqual([
      [r.PCI_EXT_CAP_ID_ERR, 2, 0x100, 0x48],
      [r.PCI_EXT_CAP_ID_DSN, 1, 0x148, 0x1000 - 0x148],
    ]);
    expect(walkAllCapabilities(b)).toHaveLength(7);
    expect(walkExtendedCapabilities(standardDevice(256).build())).toEqual([]);
    expect(walkExtendedCapabilities(standardDevice(4096).build())).toEqual([]);
    expect(walkExtendedCapabilities(Buffer.alloc(4096, 0).fill(0xff, 0x100))).toEqual([]);
  });

  it('rejects extended loops and pointers below 0x100', () => {
    const loop = new CfgBuilder(4096).ext(0x100, 1).ext(0x200, 3).build();
    loop.writeUInt32LE((3 | (1 << 16) | (0x100 << 20)) >>> 0, 0x200);
    expect(expectVfioError(() => walkExtendedCapabilities(loop), 'EVFIO_BAD_CAP_LIST').message).toMatch(/loop/);
    const low = new CfgBuilder(4096).ext(0x100, 1).build();
    low.writeUInt32LE((1 | (1 << 16) | (0x40 << 20)) >>> 0, 0x100);
    expect(expectVfioError(() => walkExtendedCapabilities(low), 'EVFIO_BAD_CAP_LIST').message).toMatch(/below/);
  });

  it('never hangs or throws anything but VfioError on random images', () => {
    let seed = 12345;
    const rand = (): number => {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      return seed >>> 16;
    };
    let walked = 0;
    for (let i = 0; i < 2000; i++) {
      const b = Buffer.alloc(4096);
      for (let k = 0; k < b.length; k++) b[k] = rand() & 0xff;
      b[r.PCI_STATUS] |= r.PCI_STATUS_CAP_LIST;
      if (i % 2) b.fill(0, 0x100 + 64 * (i % 8)); // some images with short extended lists
      try {
        const caps = walkAllCapabilities(b);
        walked++;
        for (const c of caps) {
          expect(c.length).toBeGreaterThan(0);
          expect(c.offset + c.length).toBeLessThanOrEqual(c.extended ? 4096 : 256);
        }
      } catch (e) {
        expect(e).toBeInstanceOf(VfioError);
        expect((e as VfioError).code).toBe('EVFIO_BAD_CAP_LIST');
      }
    }
    expect(walked).toBeGreaterThan(0);
  });
});

describe('ConfigSpace masks', () => {
  const cs = ConfigSpace.fromDevice(standardDevice().build(), { barSizes: [0x1000] });

  it('compares identity, class, header type, CAP_LIST and the capability pointer (pci_init_cmask)', () => {
    for (const at of [0, 1, 2, 3, r.PCI_REVISION_ID, r.PCI_CLASS_PROG, 0x0a, 0x0b, r.PCI_HEADER_TYPE, r.PCI_CAPABILITY_LIST]) {
      expect(cs.cmask[at], `cmask at 0x${at.toString(16)}`).toBe(0xff);
    }
    expect(cs.cmask[r.PCI_STATUS]).toBe(r.PCI_STATUS_CAP_LIST);
    expect(cs.cmask[r.PCI_STATUS + 1]).toBe(0);
    expect(cs.cmask.readUInt16LE(r.PCI_COMMAND)).toBe(0);
    expect(cs.cmask.readUInt16LE(r.PCI_SUBSYSTEM_ID)).toBe(0);
    expect(cs.cmask[r.PCI_INTERRUPT_LINE]).toBe(0);
  });

  it('compares every capability byte except the Vendor Specific body', () => {
    expect([...cs.cmask.subarray(0x40, 0x48)].every((x) => x === 0xff)).toBe(true);
    expect([...cs.cmask.subarray(0x50, 0x68)].every((x) => x === 0xff)).toBe(true);
    expect([...cs.cmask.subarray(0x80, 0xbc)].every((x) => x === 0xff)).toBe(true);
    expect([...cs.cmask.subarray(0xc0, 0xc3)]).toEqual([0xff, 0xff, 0xff]);
    expect([...cs.cmask.subarray(0xc3, 0xd4)].every((x) => x === 0)).toBe(true);
    // Bytes outside any capability are neither compared nor read-only (pci_init_wmask).
    expect(cs.cmask[0x48]).toBe(0);
    expect(cs.wmask[0x48]).toBe(0xff);
    expect(cs.wmask[0x40]).toBe(0);
  });

  it('lets the guest write cache line, interrupt line and COMMAND IO/MEMORY/MASTER/SERR/INTX_DISABLE', () => {
    expect(cs.wmask[r.PCI_CACHE_LINE_SIZE]).toBe(0xff);
    expect(cs.wmask[r.PCI_INTERRUPT_LINE]).toBe(0xff);
    expect(cs.wmask.readUInt16LE(r.PCI_COMMAND)).toBe(0x0507);
    expect(cs.wmask[r.PCI_LATENCY_TIMER]).toBe(0);
    expect(cs.w1cmask.readUInt16LE(r.PCI_STATUS)).toBe(0xf900);
    expect(cs.wmask.readUInt16LE(r.PCI_STATUS)).toBe(0);
  });

  it('emulates BARs, ROM, MSI and MSI-X only', () => {
    expect(cs.isEmulated(r.PCI_BASE_ADDRESS_0, 4)).toBe(true);
    expect(cs.isEmulated(r.PCI_BASE_ADDRESS_5, 4)).toBe(true);
    expect(cs.isEmulated(r.PCI_ROM_ADDRESS, 4)).toBe(true);
    expect(cs.isEmulated(0x50, 4)).toBe(true);
    expect(cs.isEmulated(0x64, 4)).toBe(true);
    expect(cs.isEmulated(0x70, 4)).toBe(true);
    expect(cs.isEmulated(0x78, 4)).toBe(true);
    expect(cs.isEmulated(r.PCI_COMMAND, 2)).toBe(false);
    expect(cs.isEmulated(0x80, 4)).toBe(false);
    expect(cs.isEmulated(0x68, 4)).toBe(false);
  });

  it('merges device reads with the emulated bits', () => {
    cs.write(r.PCI_BASE_ADDRESS_0, 4, 0xfe000000);
    expect(cs.mergeRead(r.PCI_BASE_ADDRESS_0, 4, 0xdeadbeef)).toBe(0xfe000000);
    expect(cs.mergeRead(r.PCI_COMMAND, 2, 0x0406)).toBe(0x0406);
    expect(cs.mergeRead(r.PCI_INTERRUPT_LINE, 1, 0x0b)).toBe(0x0b);
  });

  it('refuses other header types and image sizes', () => {
    const bridge = standardDevice().build();
    bridge[r.PCI_HEADER_TYPE] = 1;
    expectVfioError(() => ConfigSpace.fromDevice(bridge), 'EVFIO_CONFIG_HEADER', 'unsupported');
    expectVfioError(() => ConfigSpace.fromDevice(Buffer.alloc(512)), 'EVFIO_CONFIG_SIZE', 'usage');
  });
});

describe('BARs', () => {
  it('sizes a 32-bit memory BAR with an all-ones write and keeps the host address out', () => {
    const raw = new CfgBuilder().u32(r.PCI_BASE_ADDRESS_0, 0xf7000000).build();
    const cs = ConfigSpace.fromDevice(raw, { barSizes: [0x1000] });
    expect(cs.read(r.PCI_BASE_ADDRESS_0, 4)).toBe(0);
    const w = cs.write(r.PCI_BASE_ADDRESS_0, 4, 0xffffffff);
    expect(w.passthrough).toBeNull();
    expect(w.changed.bars).toEqual([0]);
    expect(cs.read(r.PCI_BASE_ADDRESS_0, 4)).toBe(0xfffff000);
    expect(cs.bars()[0]).toMatchObject({ kind: 'mem32', size: 0x1000, mapped: false });
    cs.write(r.PCI_BASE_ADDRESS_0, 4, 0xfebf1234);
    expect(cs.read(r.PCI_BASE_ADDRESS_0, 4)).toBe(0xfebf1000);
    expect(cs.bars()[0]).toMatchObject({ index: 0, address: 0xfebf1000n, enabled: false, mapped: false, prefetchable: false });
    const c = cs.write(r.PCI_COMMAND, 2, r.PCI_COMMAND_MEMORY);
    expect(c.passthrough).toEqual({ offset: r.PCI_COMMAND, size: 2, value: r.PCI_COMMAND_MEMORY });
    expect(cs.bars()[0]).toMatchObject({ enabled: true, mapped: true });
  });

  it('sizes a 64-bit prefetchable BAR over both halves', () => {
    const flags = r.PCI_BASE_ADDRESS_MEM_TYPE_64 | r.PCI_BASE_ADDRESS_MEM_PREFETCH;
    const raw = new CfgBuilder().u32(r.PCI_BASE_ADDRESS_2, 0x80000000 | flags).u32(r.PCI_BASE_ADDRESS_3, 0x38).build();
    const cs = ConfigSpace.fromDevice(raw, { barSizes: [0, 0, 0x100000, 0] });
    expect(cs.read(r.PCI_BASE_ADDRESS_2, 4)).toBe(flags);
    expect(cs.read(r.PCI_BASE_ADDRESS_3, 4)).toBe(0);
    expect(cs.write(r.PCI_BASE_ADDRESS_2, 4, 0xffffffff).changed.bars).toEqual([2]);
    expect(cs.write(r.PCI_BASE_ADDRESS_3, 4, 0xffffffff).changed.bars).toEqual([2]);
    expect(cs.read(r.PCI_BASE_ADDRESS_2, 4)).toBe((0xfff00000 | flags) >>> 0);
    expect(cs.read(r.PCI_BASE_ADDRESS_3, 4)).toBe(0xffffffff);
    cs.write(r.PCI_BASE_ADDRESS_2, 4, 0x00100000);
    cs.write(r.PCI_BASE_ADDRESS_3, 4, 0x00000008);
    cs.write(r.PCI_COMMAND, 2, r.PCI_COMMAND_MEMORY);
    expect(cs.bars()).toEqual([
      { index: 2, kind: 'mem64', size: 0x100000, prefetchable: true, offset: 0x18, address: 0x800100000n, enabled: true, mapped: true },
    ]);
  });

  it('sizes a 64-bit BAR larger than 4 GiB (address bits only in the upper half)', () => {
    const raw = new CfgBuilder().u32(r.PCI_BASE_ADDRESS_0, r.PCI_BASE_ADDRESS_MEM_TYPE_64).build();
    const cs = ConfigSpace.fromDevice(raw, { barSizes: [2 ** 34] });
    cs.write(r.PCI_BASE_ADDRESS_0, 4, 0xffffffff);
    cs.write(r.PCI_BASE_ADDRESS_1, 4, 0xffffffff);
    expect(cs.read(r.PCI_BASE_ADDRESS_0, 4)).toBe(r.PCI_BASE_ADDRESS_MEM_TYPE_64);
    expect(cs.read(r.PCI_BASE_ADDRESS_1, 4)).toBe(0xfffffffc);
    expect(cs.bars()[0].size).toBe(2 ** 34);
  });

  it('sizes an I/O BAR', () => {
    const raw = new CfgBuilder().u32(r.PCI_BASE_ADDRESS_4, 0xc001).build();
    const cs = ConfigSpace.fromDevice(raw, { barSizes: [0, 0, 0, 0, 0x100] });
    expect(cs.read(r.PCI_BASE_ADDRESS_4, 4)).toBe(0x1);
    cs.write(r.PCI_BASE_ADDRESS_4, 4, 0xffffffff);
    expect(cs.read(r.PCI_BASE_ADDRESS_4, 4)).toBe(0xffffff01);
    cs.write(r.PCI_BASE_ADDRESS_4, 4, 0xe000);
    cs.write(r.PCI_COMMAND, 2, r.PCI_COMMAND_IO);
    expect(cs.bars()[0]).toMatchObject({ index: 4, kind: 'io', size: 0x100, address: 0xe000n, enabled: true, mapped: true, prefetchable: false });
  });

  it('sizes the ROM BAR and honours its enable bit', () => {
    const cs = ConfigSpace.fromDevice(new CfgBuilder().build(), { romSize: 0x10000 });
    cs.write(r.PCI_ROM_ADDRESS, 4, 0xfffffffe);
    expect(cs.read(r.PCI_ROM_ADDRESS, 4)).toBe(0xffff0000);
    cs.write(r.PCI_ROM_ADDRESS, 4, 0xffffffff);
    expect(cs.read(r.PCI_ROM_ADDRESS, 4)).toBe(0xffff0001);
    cs.write(r.PCI_ROM_ADDRESS, 4, 0xfeb00000);
    expect(cs.bars()[0]).toMatchObject({ index: 6, kind: 'rom', address: 0xfeb00000n, enabled: false });
    cs.write(r.PCI_ROM_ADDRESS, 4, 0xfeb00001);
    expect(cs.bars()[0].enabled).toBe(false); // COMMAND.MEMORY still off
    cs.write(r.PCI_COMMAND, 2, r.PCI_COMMAND_MEMORY);
    expect(cs.bars()[0]).toMatchObject({ enabled: true, mapped: true });
  });

  it('keeps absent BARs at zero and takes type bits from barFlags', () => {
    const cs = ConfigSpace.fromDevice(new CfgBuilder().build(), { barSizes: [0, 0x4000], barFlags: [0, r.PCI_BASE_ADDRESS_MEM_PREFETCH] });
    cs.write(r.PCI_BASE_ADDRESS_0, 4, 0xffffffff);
    expect(cs.read(r.PCI_BASE_ADDRESS_0, 4)).toBe(0);
    expect(cs.write(r.PCI_BASE_ADDRESS_0, 4, 0xffffffff).changed.bars).toEqual([]);
    cs.write(r.PCI_BASE_ADDRESS_1, 4, 0xffffffff);
    expect(cs.read(r.PCI_BASE_ADDRESS_1, 4)).toBe(0xffffc008);
    expect(cs.bars().map((b) => [b.index, b.prefetchable])).toEqual([[1, true]]);
  });

  it('rejects impossible BAR layouts', () => {
    const raw64 = new CfgBuilder().u32(r.PCI_BASE_ADDRESS_0, r.PCI_BASE_ADDRESS_MEM_TYPE_64).build();
    expectVfioError(() => ConfigSpace.fromDevice(raw64, { barSizes: [0x1000, 0x1000] }), 'EVFIO_CONFIG_BAR', 'usage');
    expectVfioError(() => ConfigSpace.fromDevice(new CfgBuilder().build(), { barSizes: [0x1800] }), 'EVFIO_CONFIG_BAR');
    expectVfioError(() => ConfigSpace.fromDevice(new CfgBuilder().build(), { barSizes: [8] }), 'EVFIO_CONFIG_BAR');
    expectVfioError(
      () => ConfigSpace.fromDevice(new CfgBuilder().build(), { barSizes: [0, 0, 0, 0, 0, 0x1000], barFlags: [0, 0, 0, 0, 0, 4] }),
      'EVFIO_CONFIG_BAR',
    );
    expectVfioError(() => ConfigSpace.fromDevice(new CfgBuilder().build(), { romSize: 0x400 }), 'EVFIO_CONFIG_BAR');
  });
});

describe('COMMAND and STATUS', () => {
  it('passes COMMAND writes through and mirrors them into the shadow', () => {
    const cs = ConfigSpace.fromDevice(standardDevice().build(), { barSizes: [0x1000] });
    const w = cs.write(r.PCI_COMMAND, 2, r.PCI_COMMAND_MEMORY | r.PCI_COMMAND_MASTER);
    expect(w.passthrough).toEqual({ offset: r.PCI_COMMAND, size: 2, value: 0x0006 });
    expect(w.changed.command).toEqual({ before: 0, after: 0x0006 });
    expect(cs.command).toBe(0x0006);
    // A snapshot records it: the bug where a restored device lost bus mastering.
    expect(ConfigSpace.deserialize(cs.serialize()).command).toBe(0x0006);
    // Bits outside wmask still reach the device but are not mirrored.
    const p = cs.write(r.PCI_COMMAND, 2, 0x0446);
    expect(p.passthrough?.value).toBe(0x0446);
    expect(cs.command).toBe(0x0406);
    // Writing the same value again changes nothing but is still passed through.
    const again = cs.write(r.PCI_COMMAND, 2, 0x0446);
    expect(again.changed.command).toBeNull();
    expect(again.passthrough).not.toBeNull();
  });

  it('passes a dword write of COMMAND+STATUS through whole', () => {
    const cs = ConfigSpace.fromDevice(standardDevice().build());
    const w = cs.write(r.PCI_COMMAND, 4, 0xf9000004);
    expect(w.passthrough).toEqual({ offset: r.PCI_COMMAND, size: 4, value: 0xf9000004 });
    expect(cs.command).toBe(r.PCI_COMMAND_MASTER);
    expect(cs.read(r.PCI_STATUS, 2)).toBe(r.PCI_STATUS_CAP_LIST);
  });

  it('clears STATUS error bits on write-1 and keeps the others', () => {
    const raw = standardDevice().build();
    raw.writeUInt16LE(r.PCI_STATUS_CAP_LIST | r.PCI_STATUS_REC_MASTER_ABORT | r.PCI_STATUS_PARITY | r.PCI_STATUS_66MHZ, r.PCI_STATUS);
    const cs = ConfigSpace.fromDevice(raw);
    cs.write(r.PCI_STATUS, 2, 0);
    expect(cs.read(r.PCI_STATUS, 2)).toBe(0x2130);
    const w = cs.write(r.PCI_STATUS, 2, r.PCI_STATUS_REC_MASTER_ABORT | r.PCI_STATUS_CAP_LIST | r.PCI_STATUS_66MHZ);
    expect(w.passthrough).toEqual({ offset: r.PCI_STATUS, size: 2, value: 0x2030 });
    expect(cs.read(r.PCI_STATUS, 2)).toBe(r.PCI_STATUS_CAP_LIST | r.PCI_STATUS_PARITY | r.PCI_STATUS_66MHZ);
    cs.write(r.PCI_STATUS + 1, 1, 0xff);
    expect(cs.read(r.PCI_STATUS, 2)).toBe(r.PCI_STATUS_CAP_LIST | r.PCI_STATUS_66MHZ);
  });

  it('mirrors the interrupt line and cache line size, not the interrupt pin', () => {
    const cs = ConfigSpace.fromDevice(standardDevice().build());
    expect(cs.write(r.PCI_INTERRUPT_LINE, 2, 0x050b).passthrough).toEqual({ offset: r.PCI_INTERRUPT_LINE, size: 2, value: 0x050b });
    expect(cs.read(r.PCI_INTERRUPT_LINE, 1)).toBe(0x0b);
    expect(cs.read(r.PCI_INTERRUPT_PIN, 1)).toBe(1);
    cs.write(r.PCI_CACHE_LINE_SIZE, 1, 0x10);
    expect(cs.read(r.PCI_CACHE_LINE_SIZE, 1)).toBe(0x10);
  });

  it('refuses accesses that are not 1, 2 or 4 bytes within one dword', () => {
    const cs = ConfigSpace.fromDevice(standardDevice().build());
    expectVfioError(() => cs.read(0, 3), 'EVFIO_CONFIG_ACCESS', 'usage');
    expectVfioError(() => cs.write(0x06, 4, 0), 'EVFIO_CONFIG_ACCESS');
    expectVfioError(() => cs.read(0xfe, 4), 'EVFIO_CONFIG_ACCESS');
    expectVfioError(() => cs.read(0x100, 1), 'EVFIO_CONFIG_ACCESS');
    expect(cs.read(0x05, 2)).toBe(0x1000); // unaligned but inside one dword: COMMAND hi, STATUS lo
  });
});

describe('MSI and MSI-X through config space', () => {
  it('enables MSI in the shadow without passing the write through', () => {
    const raw = standardDevice().build();
    raw.writeUInt16LE(raw.readUInt16LE(0x52) | r.PCI_MSI_FLAGS_ENABLE, 0x52); // stale enable from the device
    const cs = ConfigSpace.fromDevice(raw);
    expect(cs.msi()).toMatchObject({ offset: 0x50, enabled: false, is64: true, perVectorMask: true, vectorsCapable: 4, vectorsEnabled: 1 });
    expect(cs.write(0x54, 4, 0xfee00000).passthrough).toBeNull();
    cs.write(0x58, 4, 0x1);
    cs.write(0x5c, 2, 0x4040);
    cs.write(0x60, 4, 0xffffffff);
    const w = cs.write(0x52, 2, r.PCI_MSI_FLAGS_ENABLE | (2 << 4));
    expect(w.passthrough).toBeNull();
    expect(w.changed).toEqual({ command: null, bars: [], msi: true, msix: false });
    const msi = cs.msi()!;
    expect(msi).toMatchObject({ enabled: true, vectorsEnabled: 4, address: 0x1fee00000n, data: 0x4040, mask: 0xf });
    expect(msi.vectors.map((v) => [v.data, v.masked])).toEqual([
      [0x4040, true],
      [0x4041, true],
      [0x4042, true],
      [0x4043, true],
    ]);
    // Read-only parts of the capability stay: the flags' capable bits, the id and next pointer.
    expect(cs.read(0x52, 2) & (r.PCI_MSI_FLAGS_64BIT | r.PCI_MSI_FLAGS_MASKBIT | r.PCI_MSI_FLAGS_QMASK)).toBe(0x0184);
    cs.write(0x50, 2, 0);
    expect(cs.read(0x50, 2)).toBe(r.PCI_CAP_ID_MSI | (0x70 << 8));
  });

  it('cuts multiple message enable to the capable count (msi_write_config)', () => {
    const cs = ConfigSpace.fromDevice(standardDevice().build());
    cs.write(0x52, 2, r.PCI_MSI_FLAGS_ENABLE | (5 << 4));
    expect(cs.msi()!.vectorsEnabled).toBe(4);
    expect((cs.read(0x52, 2) & r.PCI_MSI_FLAGS_QSIZE) >> 4).toBe(2);
  });

  it('passes through the bytes after a short 32-bit MSI capability', () => {
    const cs = ConfigSpace.fromDevice(new CfgBuilder().msi(0x40).build());
    expect(cs.msi()).toMatchObject({ is64: false, perVectorMask: false });
    const w = cs.write(0x48, 4, 0xabcd1234);
    expect(w.passthrough).toEqual({ offset: 0x4a, size: 2, value: 0xabcd });
    expect(cs.msi()!.data).toBe(0x1234);
  });

  it('enables MSI-X and the function mask in the shadow; table size and locations are read-only', () => {
    const raw = standardDevice().build();
    raw.writeUInt16LE(15 | r.PCI_MSIX_FLAGS_ENABLE, 0x72);
    const cs = ConfigSpace.fromDevice(raw, { barSizes: [0x4000] });
    expect(cs.msix()).toEqual({
      offset: 0x70,
      enabled: false,
      functionMask: false,
      tableSize: 16,
      tableBir: 0,
      tableOffset: 0x2000,
      pbaBir: 0,
      pbaOffset: 0x3000,
    });
    const w = cs.write(0x72, 2, 0xffff);
    expect(w.passthrough).toBeNull();
    expect(w.changed.msix).toBe(true);
    expect(cs.msix()).toMatchObject({ enabled: true, functionMask: true, tableSize: 16 });
    cs.write(0x74, 4, 0xffffffff);
    expect(cs.msix()!.tableOffset).toBe(0x2000);
    expect(cs.write(0x72, 2, r.PCI_MSIX_FLAGS_ENABLE).changed.msix).toBe(true);
    expect(cs.msix()).toMatchObject({ enabled: true, functionMask: false });
  });

  it('passes writes to other capabilities through without mirroring read-only bytes', () => {
    const cs = ConfigSpace.fromDevice(standardDevice().build());
    const w = cs.write(0x88, 2, 0x2810); // PCIe Device Control
    expect(w.passthrough).toEqual({ offset: 0x88, size: 2, value: 0x2810 });
    expect(cs.read(0x88, 2)).toBe(0);
  });
});

describe('serialisation', () => {
  it('round-trips bytes, masks, BARs and capability state', () => {
    const raw = standardDevice(4096).ext(0x100, r.PCI_EXT_CAP_ID_ERR, 2).build();
    const cs = ConfigSpace.fromDevice(raw, {
      barSizes: [0x4000, 0x100000, 0, 0, 0x20],
      barFlags: [0, r.PCI_BASE_ADDRESS_MEM_TYPE_64 | r.PCI_BASE_ADDRESS_MEM_PREFETCH, 0, 0, r.PCI_BASE_ADDRESS_SPACE_IO],
      romSize: 0x8000,
    });
    cs.write(r.PCI_BASE_ADDRESS_0, 4, 0xfe000000);
    cs.write(r.PCI_BASE_ADDRESS_1, 4, 0x00200000);
    cs.write(r.PCI_BASE_ADDRESS_2, 4, 0x1);
    cs.write(r.PCI_COMMAND, 2, 0x0507);
    cs.write(0x52, 2, 1);
    cs.write(0x72, 2, 0xc000);
    const copy = ConfigSpace.deserialize(cs.serialize());
    expect(copy.size).toBe(4096);
    expect(copy.bytes.equals(cs.bytes)).toBe(true);
    expect(copy.wmask.equals(cs.wmask)).toBe(true);
    expect(copy.w1cmask.equals(cs.w1cmask)).toBe(true);
    expect(copy.cmask.equals(cs.cmask)).toBe(true);
    expect(copy.emulated.equals(cs.emulated)).toBe(true);
    expect(copy.bars()).toEqual(cs.bars());
    expect(copy.msi()).toEqual(cs.msi());
    expect(copy.msix()).toEqual(cs.msix());
    expect(copy.capabilities).toEqual(cs.capabilities);
    expect(copy.bars().map((b) => b.index)).toEqual([0, 1, 4, 6]);
    // The copy behaves like the original.
    expect(copy.write(r.PCI_BASE_ADDRESS_4, 4, 0xffffffff).passthrough).toBeNull();
    expect(copy.read(r.PCI_BASE_ADDRESS_4, 4)).toBe(0xffffffe1);
    // Extended capabilities are compared and read-only.
    expect(cs.cmask[0x100]).toBe(0xff);
    expect(cs.wmask[0x100]).toBe(0);
  });

  it('rejects damaged input with typed errors', () => {
    const good = ConfigSpace.fromDevice(standardDevice().build()).serialize();
    const magic = Buffer.from(good);
    magic[0] ^= 1;
    expectVfioError(() => ConfigSpace.deserialize(magic), 'EVFIO_CONFIG_FORMAT', 'format');
    expectVfioError(() => ConfigSpace.deserialize(good.subarray(0, good.length - 1)), 'EVFIO_CONFIG_FORMAT');
    expectVfioError(() => ConfigSpace.deserialize(good.subarray(0, 8)), 'EVFIO_CONFIG_FORMAT');
    const version = Buffer.from(good);
    version.writeUInt16LE(2, 4);
    expectVfioError(() => ConfigSpace.deserialize(version), 'EVFIO_CONFIG_VERSION', 'format');
    const kind = Buffer.from(good);
    kind[16 + 12] = 9;
    expectVfioError(() => ConfigSpace.deserialize(kind), 'EVFIO_CONFIG_FORMAT');
  });
});

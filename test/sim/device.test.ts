/**
 * The simulated device (src/binding/sim), seen only through the `Binding` interface: encoded
 * uAPI structs in, ioctl/pread/pwrite out, exactly as the library talks to the kernel. Each rule
 * asserted here is a kernel rule (source named in the test) or a documented property of the sim.
 */
import { describe, expect, it } from 'vitest';
import { VfioError } from '../../src/base/errors';
import { SimBinding, parseSimSpec, parseSize, formatSize, BAR0, SIM_VENDOR_ID, SIM_DEVICE_ID, CAP_OFFSETS, PCI } from '../../src/sim';
import * as s from '../../src/kernel/uapi/structs';
import * as v from '../../src/kernel/uapi/vfio';
import { MigState } from '../../src/kernel/uapi/vfio';
import { le32 } from '../helpers/bytes';
import { expectErrno, thrown } from '../helpers/errors';
import { arcsOf } from '../helpers/sim';
import { feature, getState, irqInfo, readU16, readU32, readU8, setState } from '../helpers/uapi';

const { RUNNING, STOP, STOP_COPY, RESUMING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P, ERROR } = MigState;
const O_RDWR = 2;
const REGION = (i: number) => i * 2 ** 40;
const CFG = REGION(v.VFIO_PCI_CONFIG_REGION_INDEX);

// ---------------------------------------------------------------- helpers over the Binding

function fresh(spec = 'sim'): { b: SimBinding; fd: number } {
  const b = new SimBinding();
  return { b, fd: b.open(spec, O_RDWR) };
}

// ---------------------------------------------------------------- spec grammar

describe('device spec grammar', () => {
  it('parses sizes with binary units', () => {
    expect(parseSize('4096')).toBe(4096);
    expect(parseSize('64KiB')).toBe(65536);
    expect(parseSize('1MiB')).toBe(1 << 20);
    expect(parseSize('1GiB')).toBe(2 ** 30);
    expect(parseSize('2g')).toBe(2 * 2 ** 30);
    expect(parseSize('1.5MiB')).toBeUndefined();
    expect(parseSize('12 parsecs')).toBeUndefined();
    expect(formatSize(65536)).toBe('64KiB');
    expect(formatSize(100)).toBe('100');
  });

  it('parses size, keys and a name', () => {
    expect(parseSimSpec('sim')).toEqual({ spec: 'sim' });
    expect(parseSimSpec('sim:1MiB:seed=0x10:mig=stop_copy+p2p:end=enomsg:maxwrite=4093#b')).toEqual({
      spec: 'sim:1MiB:seed=0x10:mig=stop_copy+p2p:end=enomsg:maxwrite=4093#b',
      name: 'b',
      size: 1 << 20,
      seed: 16n,
      migration: true,
      migrationFlags: v.VFIO_MIGRATION_STOP_COPY | v.VFIO_MIGRATION_P2P,
      precopyEnd: 'enomsg',
      maxWrite: 4093,
    });
    expect(parseSimSpec('sim#dst')).toEqual({ spec: 'sim#dst', name: 'dst' });
    expect(parseSimSpec('sim:mig=off')).toMatchObject({ migration: false });
  });

  it('rejects malformed specs with a reason', () => {
    expect(parseSimSpec('sim:msixalloc=dynamic')).toMatchObject({ msixAlloc: 'dynamic' });
    for (const bad of ['sim:', 'sim:12parsecs', 'sim:1MiB:colour=red', 'sim:seed=1:4096', 'sim#', 'sim#a b', 'sim:end=maybe', 'sim:seed=-1', 'sim:msixalloc=lazy']) {
      expect(typeof parseSimSpec(bad), bad).toBe('string');
    }
  });

  it('open() of a malformed spec throws EINVAL with the reason', () => {
    const b = new SimBinding();
    const e = expectErrno(() => b.open('sim:12parsecs', O_RDWR), 'EINVAL');
    expect(e.syscall).toBe('open');
    expect(e.message).toContain('bad size');
  });

  it('open() of a non-sim path without an inner binding is ENOENT', () => {
    const e = expectErrno(() => new SimBinding().open('/dev/vfio/devices/vfio0', O_RDWR), 'ENOENT');
    expect(e.path).toBe('/dev/vfio/devices/vfio0');
  });
});

// ---------------------------------------------------------------- registry, open and close

describe('open, close and the registry', () => {
  it('creates a fresh device for every open of an unnamed spec', () => {
    const b = new SimBinding();
    const a = b.open('sim', O_RDWR);
    const c = b.open('sim', O_RDWR);
    expect(a).toBeGreaterThanOrEqual(1 << 24);
    expect(c).not.toBe(a);
    expect(b.device(a)).not.toBe(b.device(c));
    expect(b.device(a).seed).not.toBe(b.device(c).seed);
    expect(b.device('sim')).toBe(b.device(c));
    expect(b.devices()).toHaveLength(2);
  });

  it('reopens a named device and refuses a spec that contradicts it (EEXIST)', () => {
    const b = new SimBinding();
    const fd1 = b.open('sim:1MiB#b', O_RDWR);
    const fd2 = b.open('sim:1MiB#b', O_RDWR);
    const fd3 = b.open('sim#b', O_RDWR);
    expect(b.device(fd1)).toBe(b.device(fd2));
    expect(b.device(fd3)).toBe(b.device('b'));
    expect(b.device('sim:4096#b')).toBe(b.device('b'));
    expect(b.device('b').size).toBe(1 << 20);
    expectErrno(() => b.open('sim:4096#b', O_RDWR), 'EEXIST');
    expect(b.device('b').openFds).toBe(3);
  });

  it('createDevice registers a device with options before it is opened', () => {
    const b = new SimBinding();
    const d = b.createDevice('nm', { migration: false, size: 128 });
    const fd = b.open('sim#nm', O_RDWR);
    expect(b.device(fd)).toBe(d);
    expect(() => b.createDevice('nm')).toThrow(/already exists/);
    expect(() => b.device('nope')).toThrow(VfioError);
  });

  it('close releases the device: state back to RUNNING, sessions end, triggers dropped', async () => {
    const b = new SimBinding();
    const fd = b.open('sim#r', O_RDWR);
    const efd = b.eventfd(0);
    b.ioctl(fd, v.VFIO_DEVICE_SET_IRQS, s.encodeIrqSet({ flags: v.VFIO_IRQ_SET_DATA_EVENTFD | v.VFIO_IRQ_SET_ACTION_TRIGGER, index: v.VFIO_PCI_MSIX_IRQ_INDEX, start: 0, count: 1, eventfds: [efd] }));
    const { dataFd } = setState(b, fd, STOP_COPY);
    expect(dataFd).toBeGreaterThan(0);
    b.close(fd);
    const d = b.device('r');
    expect(d.isOpen).toBe(false);
    expect(d.state).toBe(RUNNING);
    expect(d.irqs().mode).toBe('none');
    await expect(b.read(dataFd, Buffer.alloc(16))).rejects.toMatchObject({ code: 'ENODEV', syscall: 'read' });
    b.close(dataFd);
    const again = b.open('sim#r', O_RDWR);
    expect(getState(b, again)).toBe(RUNNING);
    b.close(again);
    b.close(efd);
    expect(b.openFdCount()).toBe(0);
  });

  it('keeps the device open until the last device fd closes', () => {
    const b = new SimBinding();
    const fd1 = b.open('sim#two', O_RDWR);
    const fd2 = b.open('sim#two', O_RDWR);
    setState(b, fd1, STOP);
    b.close(fd1);
    expect(getState(b, fd2)).toBe(STOP);
    b.close(fd2);
    expect(b.device('two').state).toBe(RUNNING);
  });

  it('close of a closed virtual fd is EBADF, and so is any call on it', async () => {
    const { b, fd } = fresh();
    b.close(fd);
    expectErrno(() => b.close(fd), 'EBADF');
    expectErrno(() => b.ioctl(fd, v.VFIO_DEVICE_RESET), 'EBADF');
    expectErrno(() => b.pread(fd, Buffer.alloc(4), 0), 'EBADF');
    await expect(b.read(fd, Buffer.alloc(4))).rejects.toMatchObject({ code: 'EBADF' });
    expect(await b.poll(fd, 1, 0)).toBe(0x20); // POLLNVAL
  });

  it('an injected open error fails the next open of a named device only', () => {
    const b = new SimBinding();
    b.createDevice('busy').injectError('open', 'EBUSY');
    expectErrno(() => b.open('sim#busy', O_RDWR), 'EBUSY');
    expect(b.device('busy').openFds).toBe(0);
    const fd = b.open('sim#busy', O_RDWR);
    expect(b.device('busy').openFds).toBe(1);
    b.close(fd);
  });
});

// ---------------------------------------------------------------- info ioctls

describe('VFIO_DEVICE_GET_INFO / GET_REGION_INFO / GET_IRQ_INFO', () => {
  it('GET_INFO: PCI | RESET, 9 regions, 5 irqs; argsz < 16 is EINVAL; copies min(argsz, 24)', () => {
    const { b, fd } = fresh();
    const q = s.encodeDeviceInfoQuery();
    expect(b.ioctl(fd, v.VFIO_DEVICE_GET_INFO, q)).toBe(0);
    expect(s.decodeDeviceInfo(q)).toEqual({ flags: v.VFIO_DEVICE_FLAGS_PCI | v.VFIO_DEVICE_FLAGS_RESET, numRegions: 9, numIrqs: 5, capOffset: 0 });
    const small = Buffer.alloc(24, 0xee);
    small.writeUInt32LE(16, 0);
    b.ioctl(fd, v.VFIO_DEVICE_GET_INFO, small);
    expect(small.readUInt32LE(12)).toBe(5);
    expect(small.readUInt32LE(16)).toBe(0xeeeeeeee); // beyond argsz: untouched
    const tiny = Buffer.alloc(24);
    tiny.writeUInt32LE(15, 0);
    expectErrno(() => b.ioctl(fd, v.VFIO_DEVICE_GET_INFO, tiny), 'EINVAL');
    expectErrno(() => b.ioctl(fd, v.VFIO_DEVICE_GET_INFO, Buffer.alloc(8)), 'EFAULT');
    expectErrno(() => b.ioctl(fd, v.VFIO_DEVICE_GET_INFO, 0), 'EFAULT');
  });

  it('GET_REGION_INFO: BAR0 4 KiB, CONFIG 4 KiB, empty BARs, VGA and index >= 9 EINVAL, argsz < 32 EINVAL', () => {
    const { b, fd } = fresh();
    const region = (i: number) => {
      const q = s.encodeRegionInfoQuery(i);
      b.ioctl(fd, v.VFIO_DEVICE_GET_REGION_INFO, q);
      return s.decodeRegionInfo(q);
    };
    const rw = v.VFIO_REGION_INFO_FLAG_READ | v.VFIO_REGION_INFO_FLAG_WRITE;
    expect(region(0)).toEqual({ index: 0, flags: rw, size: 4096, offset: 0, capOffset: 0 });
    expect(region(7)).toEqual({ index: 7, flags: rw, size: 4096, offset: REGION(7), capOffset: 0 });
    for (const i of [1, 2, 3, 4, 5, 6]) expect(region(i)).toEqual({ index: i, flags: 0, size: 0, offset: REGION(i), capOffset: 0 });
    expectErrno(() => region(8), 'EINVAL');
    expectErrno(() => region(9), 'EINVAL');
    const q = s.encodeRegionInfoQuery(0);
    q.writeUInt32LE(31, 0);
    expectErrno(() => b.ioctl(fd, v.VFIO_DEVICE_GET_REGION_INFO, q), 'EINVAL');
  });

  it('GET_REGION_INFO reports a 256-byte config region when asked', () => {
    const b = new SimBinding();
    b.createDevice('c256', { configSize: 256 });
    const fd = b.open('sim#c256', O_RDWR);
    const q = s.encodeRegionInfoQuery(7);
    b.ioctl(fd, v.VFIO_DEVICE_GET_REGION_INFO, q);
    expect(s.decodeRegionInfo(q).size).toBe(256);
  });

  it('GET_IRQ_INFO: INTx maskable/automasked, MSI 4, MSI-X 8, ERR 1, REQ 1; bad index/argsz EINVAL', () => {
    const { b, fd } = fresh();
    const irq = (i: number) => {
      const q = s.encodeIrqInfoQuery(i);
      b.ioctl(fd, v.VFIO_DEVICE_GET_IRQ_INFO, q);
      return s.decodeIrqInfo(q);
    };
    const { VFIO_IRQ_INFO_EVENTFD: EV, VFIO_IRQ_INFO_MASKABLE: MK, VFIO_IRQ_INFO_AUTOMASKED: AM, VFIO_IRQ_INFO_NORESIZE: NR } = v;
    expect(irq(0)).toEqual({ index: 0, flags: EV | MK | AM, count: 1 });
    expect(irq(1)).toEqual({ index: 1, flags: EV | NR, count: 4 });
    expect(irq(2)).toEqual({ index: 2, flags: EV | NR, count: 8 });
    expect(irq(3)).toEqual({ index: 3, flags: EV | NR, count: 1 });
    expect(irq(4)).toEqual({ index: 4, flags: EV | NR, count: 1 });
    expectErrno(() => irq(5), 'EINVAL');
    const q = s.encodeIrqInfoQuery(0);
    q.writeUInt32LE(15, 0);
    expectErrno(() => b.ioctl(fd, v.VFIO_DEVICE_GET_IRQ_INFO, q), 'EINVAL');
  });

  it('answers ENOTTY for ioctls a vfio-pci device fd does not have', () => {
    const { b, fd } = fresh();
    expectErrno(() => b.ioctl(fd, v.VFIO_GET_API_VERSION), 'ENOTTY');
    expectErrno(() => b.ioctl(fd, v.VFIO_DEVICE_IOEVENTFD, Buffer.alloc(32)), 'ENOTTY');
  });

  it('injected errors fail the next call at entry, then the device answers again', () => {
    const { b, fd } = fresh();
    b.device(fd).injectError('GET_INFO', 'EIO', 2);
    expectErrno(() => b.ioctl(fd, v.VFIO_DEVICE_GET_INFO, s.encodeDeviceInfoQuery()), 'EIO');
    expectErrno(() => b.ioctl(fd, v.VFIO_DEVICE_GET_INFO, s.encodeDeviceInfoQuery()), 'EIO');
    expect(b.ioctl(fd, v.VFIO_DEVICE_GET_INFO, s.encodeDeviceInfoQuery())).toBe(0);
  });
});

// ---------------------------------------------------------------- config space

describe('PCI config space (region 7)', () => {
  it('has the documented identity and a type 0 header with the capability list bit', () => {
    const { b, fd } = fresh();
    expect(readU16(b, fd, CFG + PCI.VENDOR_ID)).toBe(SIM_VENDOR_ID);
    expect(readU16(b, fd, CFG + PCI.DEVICE_ID)).toBe(SIM_DEVICE_ID);
    expect(readU32(b, fd, CFG + 0x08)).toBe(0x12000001); // class 12/00/00, revision 1
    expect(readU8(b, fd, CFG + PCI.HEADER_TYPE)).toBe(0);
    expect(readU16(b, fd, CFG + PCI.STATUS) & PCI.STATUS_CAP_LIST).toBe(PCI.STATUS_CAP_LIST);
    expect(readU8(b, fd, CFG + PCI.INTERRUPT_PIN)).toBe(1);
    expect(readU32(b, fd, CFG + 0x2c)).toBe(0x00011234);
  });

  it('chains MSI -> MSI-X -> PCI Express -> vendor specific, with sane bodies', () => {
    const { b, fd } = fresh();
    const ids: Array<[number, number]> = [];
    for (let p = readU8(b, fd, CFG + PCI.CAPABILITY_LIST); p; p = readU8(b, fd, CFG + p + 1)) {
      ids.push([p, readU8(b, fd, CFG + p)]);
      expect(ids.length).toBeLessThan(10);
    }
    expect(ids).toEqual([
      [CAP_OFFSETS.MSI, 0x05],
      [CAP_OFFSETS.MSIX, 0x11],
      [CAP_OFFSETS.EXP, 0x10],
      [CAP_OFFSETS.VNDR, 0x09],
    ]);
    // MSI: 64-bit, per-vector mask, 4 vectors (MMC = 2)
    expect(readU16(b, fd, CFG + CAP_OFFSETS.MSI + 2)).toBe(0x0184);
    // MSI-X: 8 entries, table at BAR0 0x800, PBA at BAR0 0xC00
    expect(readU16(b, fd, CFG + CAP_OFFSETS.MSIX + 2) & 0x7ff).toBe(7);
    expect(readU32(b, fd, CFG + CAP_OFFSETS.MSIX + 4)).toBe(BAR0.MSIX_TABLE);
    expect(readU32(b, fd, CFG + CAP_OFFSETS.MSIX + 8)).toBe(BAR0.MSIX_PBA);
    // PCIe v2 endpoint, FLR capable
    expect(readU16(b, fd, CFG + CAP_OFFSETS.EXP + 2)).toBe(0x0002);
    expect(readU32(b, fd, CFG + CAP_OFFSETS.EXP + 4) & (1 << 28)).toBe(1 << 28);
    // vendor specific: length 16, "SIM", version 1, revision 1
    const vsc = Buffer.alloc(16);
    b.pread(fd, vsc, CFG + CAP_OFFSETS.VNDR);
    expect(vsc[2]).toBe(16);
    expect(vsc.toString('latin1', 3, 6)).toBe('SIM');
    expect([vsc[6], vsc[7]]).toEqual([1, 1]);
    // extended space is empty
    expect(readU32(b, fd, CFG + 0x100)).toBe(0);
  });

  it('filters writes: BAR0 sizing, COMMAND bits, read-only ids, STATUS write-1-to-clear', () => {
    const { b, fd } = fresh();
    b.pwrite(fd, le32(0xffffffff), CFG + PCI.BASE_ADDRESS_0);
    expect(readU32(b, fd, CFG + PCI.BASE_ADDRESS_0)).toBe(0xfffff000);
    b.pwrite(fd, le32(0xffffffff), CFG + 0x14); // BAR1 absent
    expect(readU32(b, fd, CFG + 0x14)).toBe(0);
    b.pwrite(fd, le32(0xffffffff), CFG + PCI.VENDOR_ID);
    expect(readU32(b, fd, CFG)).toBe(0x5f101234);
    const cmd = Buffer.alloc(2);
    cmd.writeUInt16LE(0xffff);
    b.pwrite(fd, cmd, CFG + PCI.COMMAND);
    expect(readU16(b, fd, CFG + PCI.COMMAND)).toBe(0x0546);
    b.pwrite(fd, Buffer.from([0xff, 0xff]), CFG + PCI.STATUS);
    expect(readU16(b, fd, CFG + PCI.STATUS)).toBe(PCI.STATUS_CAP_LIST);
    // MSI: enable + MME writable, MMC and 64-bit bits not
    b.pwrite(fd, Buffer.from([0xff, 0xff]), CFG + CAP_OFFSETS.MSI + 2);
    expect(readU16(b, fd, CFG + CAP_OFFSETS.MSI + 2)).toBe(0x0184 | 0x0071);
    // MSI-X: enable and function mask only
    b.pwrite(fd, Buffer.from([0xff, 0xff]), CFG + CAP_OFFSETS.MSIX + 2);
    expect(readU16(b, fd, CFG + CAP_OFFSETS.MSIX + 2)).toBe(0xc007);
    // vendor capability is read-only
    b.pwrite(fd, Buffer.alloc(13, 0xaa), CFG + CAP_OFFSETS.VNDR + 3);
    expect(readU8(b, fd, CFG + CAP_OFFSETS.VNDR + 3)).toBe('S'.charCodeAt(0));
  });

  it('a PCIe "initiate FLR" write resets the device', () => {
    const { b, fd } = fresh();
    b.pwrite(fd, le32(0xabcd), BAR0.CONTROL);
    b.pwrite(fd, Buffer.from([0x06, 0x00]), CFG + PCI.COMMAND);
    setState(b, fd, STOP);
    const devctl = CFG + CAP_OFFSETS.EXP + 8;
    b.pwrite(fd, Buffer.from([0x10, 0xa8]), devctl); // bit 15 set
    expect(getState(b, fd)).toBe(RUNNING);
    expect(readU32(b, fd, BAR0.CONTROL)).toBe(0);
    expect(readU16(b, fd, CFG + PCI.COMMAND)).toBe(0);
    expect(readU16(b, fd, devctl) & 0x8000).toBe(0);
  });

  it('reads and writes any width; accesses past the end are short or EINVAL', () => {
    const { b, fd } = fresh();
    const all = Buffer.alloc(5000);
    expect(b.pread(fd, all, CFG)).toBe(4096);
    expect(all.readUInt16LE(0)).toBe(SIM_VENDOR_ID);
    expectErrno(() => b.pread(fd, Buffer.alloc(4), CFG + 4096), 'EINVAL');
    expect(b.pread(fd, Buffer.alloc(8), CFG + 4092)).toBe(4);
  });
});

// ---------------------------------------------------------------- BAR0

describe('BAR0 registers (region 0)', () => {
  it('reads identity, status, seed and size; CONTROL and SCRATCH are read/write', () => {
    const b = new SimBinding();
    const fd = b.open('sim:1MiB:seed=0x1122334455667788', O_RDWR);
    expect(readU32(b, fd, BAR0.ID)).toBe(0x4d495356);
    expect(readU32(b, fd, BAR0.VERSION)).toBe(0x00010001);
    expect(readU32(b, fd, BAR0.STATUS)).toBe(1 | (RUNNING << 8));
    expect(readU32(b, fd, BAR0.SEED_LO)).toBe(0x55667788);
    expect(readU32(b, fd, BAR0.SEED_HI)).toBe(0x11223344);
    expect(readU32(b, fd, BAR0.SIZE_LO)).toBe(1 << 20);
    b.pwrite(fd, le32(0xdeadbeef), BAR0.CONTROL);
    b.pwrite(fd, Buffer.from('hello, scratch'), BAR0.SCRATCH + 10);
    expect(readU32(b, fd, BAR0.CONTROL)).toBe(0xdeadbeef);
    const sc = Buffer.alloc(14);
    b.pread(fd, sc, BAR0.SCRATCH + 10);
    expect(sc.toString()).toBe('hello, scratch');
    b.pwrite(fd, le32(0x12345678), BAR0.ID);
    expect(readU32(b, fd, BAR0.ID)).toBe(0x4d495356);
    const r = b.device(fd).registers();
    expect(r.control).toBe(0xdeadbeef);
    expect(r.scratch.subarray(10, 24).toString()).toBe('hello, scratch');
    expect(r.seed).toBe(0x1122334455667788n);
  });

  it('drops register writes and doorbells while stopped; STATUS shows the state', () => {
    const { b, fd } = fresh();
    b.pwrite(fd, le32(1), BAR0.CONTROL);
    setState(b, fd, STOP);
    expect(readU32(b, fd, BAR0.STATUS)).toBe(STOP << 8);
    b.pwrite(fd, le32(2), BAR0.CONTROL);
    b.pwrite(fd, le32(0), BAR0.DOORBELL);
    expect(readU32(b, fd, BAR0.CONTROL)).toBe(1);
    expect(readU32(b, fd, BAR0.IRQ_COUNT)).toBe(0);
    b.device(fd).forceError();
    expect(readU32(b, fd, BAR0.STATUS)).toBe(2 | (ERROR << 8));
  });

  it('pread/pwrite of an empty BAR, the ROM, VGA or a region past the last is EINVAL', () => {
    const { b, fd } = fresh();
    for (const i of [1, 5, 6, 8, 9, 200]) {
      expectErrno(() => b.pread(fd, Buffer.alloc(4), REGION(i)), 'EINVAL');
      expectErrno(() => b.pwrite(fd, Buffer.alloc(4), REGION(i)), 'EINVAL');
    }
    expectErrno(() => b.pread(fd, Buffer.alloc(4), 4096), 'EINVAL');
    expect(b.pwrite(fd, Buffer.alloc(8), 4092)).toBe(4);
  });

  it('rejects bad arguments synchronously (TypeError/RangeError), before the device', () => {
    const { b, fd } = fresh();
    expect(() => b.pread(fd, Buffer.alloc(4), -1)).toThrow(RangeError);
    expect(() => b.pread(fd, Buffer.alloc(4), 0, 5)).toThrow(RangeError);
    expect(() => b.pread(fd, 'nope' as unknown as Buffer, 0)).toThrow(TypeError);
    expect(() => b.ioctl(fd, v.VFIO_DEVICE_GET_INFO, Buffer.alloc(0))).toThrow(RangeError);
    expect(() => b.read(fd, Buffer.alloc(4), 2, 3)).toThrow(RangeError);
  });

  it('a device fd read()/write() uses the file position like vfio_device_fops_read', async () => {
    const { b, fd } = fresh();
    const buf = Buffer.alloc(8);
    expect(await b.read(fd, buf)).toBe(8);
    expect(buf.readUInt32LE(0)).toBe(0x4d495356);
    expect(buf.readUInt32LE(4)).toBe(0x00010001);
  });
});

// ---------------------------------------------------------------- interrupts

describe('VFIO_DEVICE_SET_IRQS and interrupts', () => {
  const T = v.VFIO_IRQ_SET_ACTION_TRIGGER;
  const EVFD = v.VFIO_IRQ_SET_DATA_EVENTFD;
  const NONE = v.VFIO_IRQ_SET_DATA_NONE;
  const BOOL = v.VFIO_IRQ_SET_DATA_BOOL;
  const set = (b: SimBinding, fd: number, irq: s.IrqSet) => b.ioctl(fd, v.VFIO_DEVICE_SET_IRQS, s.encodeIrqSet(irq));

  it('arms MSI-X vectors; a doorbell signals the vector and counts', () => {
    const { b, fd } = fresh();
    const efds = [b.eventfd(0), b.eventfd(0), b.eventfd(0), b.eventfd(0)];
    expect(set(b, fd, { flags: EVFD | T, index: v.VFIO_PCI_MSIX_IRQ_INDEX, start: 0, count: 4, eventfds: efds })).toBe(0);
    expect(b.device(fd).irqs()).toMatchObject({ mode: 'msix', vectors: efds });
    b.pwrite(fd, le32(3), BAR0.DOORBELL);
    b.pwrite(fd, le32(3), BAR0.DOORBELL);
    b.pwrite(fd, le32(1), BAR0.DOORBELL);
    expect(b.eventfdRead(efds[3])).toBe(2n);
    expect(b.eventfdRead(efds[1])).toBe(1n);
    expect(b.eventfdRead(efds[0])).toBe(0n);
    expect(readU32(b, fd, BAR0.IRQ_COUNT)).toBe(3);
    expect(readU32(b, fd, BAR0.DOORBELL)).toBe(0);
    // a vector beyond those enabled is dropped (counted, not delivered)
    b.pwrite(fd, le32(6), BAR0.DOORBELL);
    expect(b.device(fd).irqs().delivered).toBe(3);
  });

  it('validates the header like vfio_set_irqs_validate_and_prepare()', () => {
    const { b, fd } = fresh();
    const efd = b.eventfd(0);
    const msix = v.VFIO_PCI_MSIX_IRQ_INDEX;
    const short = s.encodeIrqSet({ flags: NONE | T, index: msix, start: 0, count: 0 });
    short.writeUInt32LE(19, 0);
    expectErrno(() => b.ioctl(fd, v.VFIO_DEVICE_SET_IRQS, short), 'EINVAL');
    expectErrno(() => set(b, fd, { flags: EVFD | T, index: 5, start: 0, count: 1, eventfds: [efd] }), 'EINVAL');
    expectErrno(() => set(b, fd, { flags: EVFD | T, index: msix, start: 7, count: 2, eventfds: [efd, efd] }), 'EINVAL');
    expectErrno(() => set(b, fd, { flags: EVFD | T, index: msix, start: 8, count: 0 }), 'EINVAL');
    expectErrno(() => set(b, fd, { flags: EVFD | T | (1 << 6), index: msix, start: 0, count: 1, eventfds: [efd] }), 'EINVAL');
    expectErrno(() => set(b, fd, { flags: EVFD | BOOL | T, index: msix, start: 0, count: 1, eventfds: [efd] }), 'EINVAL');
    // argsz too small for count eventfds
    const few = s.encodeIrqSet({ flags: EVFD | T, index: msix, start: 0, count: 2, eventfds: [efd, efd] });
    few.writeUInt32LE(24, 0);
    expectErrno(() => b.ioctl(fd, v.VFIO_DEVICE_SET_IRQS, few), 'EINVAL');
    // argsz promises more data than the buffer holds: the copy from user memory faults
    const lie = s.encodeIrqSet({ flags: EVFD | T, index: msix, start: 0, count: 1, eventfds: [efd] });
    lie.writeUInt32LE(28, 0);
    lie.writeUInt32LE(2, 16);
    expectErrno(() => b.ioctl(fd, v.VFIO_DEVICE_SET_IRQS, lie), 'EFAULT');
    // MASK on MSI-X, two actions: ENOTTY
    expectErrno(() => set(b, fd, { flags: NONE | v.VFIO_IRQ_SET_ACTION_MASK, index: msix, start: 0, count: 1 }), 'ENOTTY');
    expectErrno(() => set(b, fd, { flags: NONE | T | v.VFIO_IRQ_SET_ACTION_UNMASK, index: v.VFIO_PCI_ERR_IRQ_INDEX, start: 0, count: 1 }), 'ENOTTY');
    expect(b.device(fd).irqs().mode).toBe('none');
  });

  it('checks eventfds: a closed fd is EBADF, a non-eventfd is EINVAL, -1 de-assigns', () => {
    const { b, fd } = fresh();
    const efd = b.eventfd(0);
    const closed = b.eventfd(0);
    b.close(closed);
    const msi = v.VFIO_PCI_MSI_IRQ_INDEX;
    expectErrno(() => set(b, fd, { flags: EVFD | T, index: msi, start: 0, count: 2, eventfds: [efd, closed] }), 'EBADF');
    expect(b.device(fd).irqs().mode).toBe('none'); // the failed enable was rolled back
    expectErrno(() => set(b, fd, { flags: EVFD | T, index: msi, start: 0, count: 1, eventfds: [fd] }), 'EINVAL');
    set(b, fd, { flags: EVFD | T, index: msi, start: 0, count: 2, eventfds: [efd, efd] });
    set(b, fd, { flags: EVFD | T, index: msi, start: 1, count: 1, eventfds: [-1] });
    expect(b.device(fd).irqs().vectors).toEqual([efd, null]);
    // only the vectors enabled first can be touched later
    expectErrno(() => set(b, fd, { flags: EVFD | T, index: msi, start: 2, count: 1, eventfds: [efd] }), 'EINVAL');
  });

  it('vfio_msi_set_vector_signal() (6.5+), NORESIZE: vector by vector; an fd beyond the enabled range is EINVAL and unsets the call\'s vectors up to it; -1 beyond is fine', () => {
    const { b, fd } = fresh();
    const msix = v.VFIO_PCI_MSIX_IRQ_INDEX;
    const e = [0, 1, 2, 3, 4].map(() => b.eventfd(0));
    expect(irqInfo(b, fd, msix).flags & v.VFIO_IRQ_INFO_NORESIZE).toBeTruthy();
    set(b, fd, { flags: EVFD | T, index: msix, start: 0, count: 3, eventfds: [e[0], e[1], e[2]] });
    // Vector 1 gets e3, vector 2 loses e2, then vector 3 is not allocated: EINVAL, vectors 1..3 left without a trigger.
    expectErrno(() => set(b, fd, { flags: EVFD | T, index: msix, start: 1, count: 3, eventfds: [e[3], -1, e[4]] }), 'EINVAL');
    expect(b.device(fd).irqs().vectors).toEqual([e[0], null, null]);
    // -1 past the enabled range touches nothing that exists: no error.
    set(b, fd, { flags: EVFD | T, index: msix, start: 1, count: 4, eventfds: [e[1], e[2], -1, -1] });
    expect(b.device(fd).irqs().vectors).toEqual([e[0], e[1], e[2]]);
    // Loopback over a range wider than the enabled one fires what is armed.
    set(b, fd, { flags: NONE | T, index: msix, start: 0, count: 8 });
    expect(e.map((x) => b.eventfdRead(x))).toEqual([1n, 1n, 1n, 0n, 0n]);
    // A device interrupt on a vector beyond the range is dropped.
    b.pwrite(fd, le32(5), BAR0.DOORBELL);
    expect(e.map((x) => b.eventfdRead(x))).toEqual([0n, 0n, 0n, 0n, 0n]);
  });

  it('msixalloc=dynamic (has_dyn_msix): MSI-X without NORESIZE allocates a vector beyond the enabled range on the spot; MSI stays NORESIZE', () => {
    const { b, fd } = fresh('sim:msixalloc=dynamic');
    const msix = v.VFIO_PCI_MSIX_IRQ_INDEX;
    expect(irqInfo(b, fd, msix).flags & v.VFIO_IRQ_INFO_NORESIZE).toBe(0);
    expect(irqInfo(b, fd, v.VFIO_PCI_MSI_IRQ_INDEX).flags & v.VFIO_IRQ_INFO_NORESIZE).toBeTruthy();
    const e0 = b.eventfd(0);
    const e5 = b.eventfd(0);
    set(b, fd, { flags: EVFD | T, index: msix, start: 0, count: 1, eventfds: [-1] }); // MSI-X on, no vector armed
    expect(b.device(fd).irqs()).toMatchObject({ mode: 'msix', vectors: [null] });
    set(b, fd, { flags: EVFD | T, index: msix, start: 5, count: 1, eventfds: [e5] });
    set(b, fd, { flags: EVFD | T, index: msix, start: 0, count: 1, eventfds: [e0] });
    expect(b.device(fd).irqs().vectors).toEqual([e0, null, null, null, null, e5]);
    for (const vec of [5, 3, 0]) b.pwrite(fd, le32(vec), BAR0.DOORBELL);
    expect([b.eventfdRead(e0), b.eventfdRead(e5)]).toEqual([1n, 1n]);
    expect(b.device(fd).irqs().delivered).toBe(2);
    // Past the index's count is still EINVAL (the header check).
    expectErrno(() => set(b, fd, { flags: EVFD | T, index: msix, start: 8, count: 1, eventfds: [e0] }), 'EINVAL');
  });

  it('INTx, MSI and MSI-X are exclusive; DATA_NONE|TRIGGER count 0 disables only the enabled one', () => {
    const { b, fd } = fresh();
    const efd = b.eventfd(0);
    set(b, fd, { flags: EVFD | T, index: v.VFIO_PCI_MSI_IRQ_INDEX, start: 0, count: 1, eventfds: [efd] });
    expectErrno(() => set(b, fd, { flags: EVFD | T, index: v.VFIO_PCI_MSIX_IRQ_INDEX, start: 0, count: 1, eventfds: [efd] }), 'EINVAL');
    expectErrno(() => set(b, fd, { flags: EVFD | T, index: v.VFIO_PCI_INTX_IRQ_INDEX, start: 0, count: 1, eventfds: [efd] }), 'EINVAL');
    expectErrno(() => set(b, fd, { flags: NONE | T, index: v.VFIO_PCI_MSIX_IRQ_INDEX, start: 0, count: 0 }), 'EINVAL');
    expect(set(b, fd, { flags: NONE | T, index: v.VFIO_PCI_MSI_IRQ_INDEX, start: 0, count: 0 })).toBe(0);
    expect(b.device(fd).irqs().mode).toBe('none');
    expect(set(b, fd, { flags: EVFD | T, index: v.VFIO_PCI_MSIX_IRQ_INDEX, start: 0, count: 1, eventfds: [efd] })).toBe(0);
  });

  it('loopback: DATA_NONE / DATA_BOOL with TRIGGER fire the armed eventfds', () => {
    const { b, fd } = fresh();
    const e0 = b.eventfd(0);
    const e1 = b.eventfd(0);
    set(b, fd, { flags: EVFD | T, index: v.VFIO_PCI_MSIX_IRQ_INDEX, start: 0, count: 2, eventfds: [e0, e1] });
    set(b, fd, { flags: NONE | T, index: v.VFIO_PCI_MSIX_IRQ_INDEX, start: 0, count: 2 });
    set(b, fd, { flags: BOOL | T, index: v.VFIO_PCI_MSIX_IRQ_INDEX, start: 0, count: 2, bools: [false, true] });
    expect([b.eventfdRead(e0), b.eventfdRead(e1)]).toEqual([1n, 2n]);
  });

  it('INTx is automasked; an interrupt while masked is delivered on UNMASK', () => {
    const { b, fd } = fresh();
    const efd = b.eventfd(0);
    const INTX = v.VFIO_PCI_INTX_IRQ_INDEX;
    expectErrno(() => set(b, fd, { flags: NONE | v.VFIO_IRQ_SET_ACTION_UNMASK, index: INTX, start: 0, count: 1 }), 'EINVAL');
    set(b, fd, { flags: EVFD | T, index: INTX, start: 0, count: 1, eventfds: [efd] });
    b.pwrite(fd, le32(0), BAR0.DOORBELL);
    b.pwrite(fd, le32(0), BAR0.DOORBELL);
    expect(b.eventfdRead(efd)).toBe(1n);
    expect(b.device(fd).irqs()).toMatchObject({ mode: 'intx', intxMasked: true, intxPending: true });
    set(b, fd, { flags: NONE | v.VFIO_IRQ_SET_ACTION_UNMASK, index: INTX, start: 0, count: 1 });
    expect(b.eventfdRead(efd)).toBe(1n);
    expectErrno(() => set(b, fd, { flags: EVFD | v.VFIO_IRQ_SET_ACTION_MASK, index: INTX, start: 0, count: 1, eventfds: [efd] }), 'ENOTTY');
    set(b, fd, { flags: NONE | T, index: INTX, start: 0, count: 0 });
    expect(b.device(fd).irqs().mode).toBe('none');
  });

  it('ERR and REQ take one eventfd each; releasing one that is not armed is EINVAL', () => {
    const { b, fd } = fresh();
    const efd = b.eventfd(0);
    for (const index of [v.VFIO_PCI_ERR_IRQ_INDEX, v.VFIO_PCI_REQ_IRQ_INDEX]) {
      expectErrno(() => set(b, fd, { flags: NONE | T, index, start: 0, count: 0 }), 'EINVAL');
      set(b, fd, { flags: EVFD | T, index, start: 0, count: 1, eventfds: [efd] });
    }
    expect(b.device(fd).raiseErr()).toBe(true);
    expect(b.device(fd).raiseReq()).toBe(true);
    expect(b.eventfdRead(efd)).toBe(2n);
    set(b, fd, { flags: NONE | T, index: v.VFIO_PCI_REQ_IRQ_INDEX, start: 0, count: 0 });
    expect(b.device(fd).raiseReq()).toBe(false);
  });

  it('a virtual eventfd can be waited for with poll() and read()', async () => {
    const { b, fd } = fresh();
    const efd = b.eventfd(0);
    set(b, fd, { flags: EVFD | T, index: v.VFIO_PCI_MSIX_IRQ_INDEX, start: 0, count: 1, eventfds: [efd] });
    expect(await b.poll(efd, 1, 10)).toBe(0);
    const waiting = b.poll(efd, 1, -1);
    setTimeout(() => b.pwrite(fd, le32(0), BAR0.DOORBELL), 5);
    expect(await waiting).toBe(1);
    const buf = Buffer.alloc(8);
    expect(await b.read(efd, buf)).toBe(8);
    expect(buf.readBigUInt64LE(0)).toBe(1n);
  });
});

// ---------------------------------------------------------------- VFIO_DEVICE_FEATURE

describe('VFIO_DEVICE_FEATURE validation (vfio_ioctl_device_feature, vfio_check_feature)', () => {
  const { GET, SET, PROBE } = { GET: v.VFIO_DEVICE_FEATURE_GET, SET: v.VFIO_DEVICE_FEATURE_SET, PROBE: v.VFIO_DEVICE_FEATURE_PROBE };
  const raw = (argsz: number, flags: number, len = Math.max(argsz, 16)) => {
    const buf = Buffer.alloc(len);
    buf.writeUInt32LE(argsz, 0);
    buf.writeUInt32LE(flags >>> 0, 4);
    return buf;
  };

  it('argsz < 8, unknown flag bits, GET with SET: EINVAL', () => {
    const { b, fd } = fresh();
    const MIG = v.VFIO_DEVICE_FEATURE_MIGRATION;
    expectErrno(() => b.ioctl(fd, v.VFIO_DEVICE_FEATURE, raw(7, GET | MIG)), 'EINVAL');
    expectErrno(() => b.ioctl(fd, v.VFIO_DEVICE_FEATURE, raw(16, GET | MIG | (1 << 19))), 'EINVAL');
    expectErrno(() => b.ioctl(fd, v.VFIO_DEVICE_FEATURE, raw(16, GET | SET | v.VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE)), 'EINVAL');
  });

  it('PROBE answers 0 for supported ops and EINVAL for the others', () => {
    const { b, fd } = fresh();
    expect(b.ioctl(fd, v.VFIO_DEVICE_FEATURE, raw(8, PROBE | GET | v.VFIO_DEVICE_FEATURE_MIGRATION))).toBe(0);
    expect(b.ioctl(fd, v.VFIO_DEVICE_FEATURE, raw(8, PROBE | GET | SET | v.VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE))).toBe(0);
    expect(b.ioctl(fd, v.VFIO_DEVICE_FEATURE, raw(8, PROBE | v.VFIO_DEVICE_FEATURE_MIG_DATA_SIZE))).toBe(0);
    expectErrno(() => b.ioctl(fd, v.VFIO_DEVICE_FEATURE, raw(8, PROBE | SET | v.VFIO_DEVICE_FEATURE_MIGRATION)), 'EINVAL');
    expectErrno(() => b.ioctl(fd, v.VFIO_DEVICE_FEATURE, raw(8, PROBE | SET | v.VFIO_DEVICE_FEATURE_MIG_DATA_SIZE)), 'EINVAL');
  });

  it('neither GET nor SET, or a payload shorter than the struct: EINVAL', () => {
    const { b, fd } = fresh();
    expectErrno(() => b.ioctl(fd, v.VFIO_DEVICE_FEATURE, raw(16, v.VFIO_DEVICE_FEATURE_MIGRATION)), 'EINVAL');
    expectErrno(() => b.ioctl(fd, v.VFIO_DEVICE_FEATURE, raw(15, GET | v.VFIO_DEVICE_FEATURE_MIGRATION)), 'EINVAL');
    expectErrno(() => b.ioctl(fd, v.VFIO_DEVICE_FEATURE, raw(12, GET | v.VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE)), 'EINVAL');
  });

  it('MIGRATION GET reports STOP_COPY | P2P | PRE_COPY by default, or the configured flags', () => {
    const { b, fd } = fresh();
    const out = feature(b, fd, v.VFIO_DEVICE_FEATURE_MIGRATION, 'get', 8);
    expect(s.decodeMigrationFlags(out)).toBe(7);
    const fd2 = b.open('sim:mig=stop_copy', O_RDWR);
    expect(s.decodeMigrationFlags(feature(b, fd2, v.VFIO_DEVICE_FEATURE_MIGRATION, 'get', 8))).toBe(1);
  });

  it('a device without migration answers ENOTTY to every migration feature, PROBE included', () => {
    const { b, fd } = fresh('sim:mig=off');
    for (const id of [v.VFIO_DEVICE_FEATURE_MIGRATION, v.VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, v.VFIO_DEVICE_FEATURE_MIG_DATA_SIZE]) {
      expectErrno(() => feature(b, fd, id, 'get', 8), 'ENOTTY');
      expectErrno(() => feature(b, fd, id, 'probe-get', 0), 'ENOTTY');
    }
  });

  it('without DMA logging (dirty=off) the logging features are ENOTTY, PROBE included; unknown features are ENOTTY', () => {
    const { b, fd } = fresh('sim:dirty=off');
    for (const [id, op] of [
      [v.VFIO_DEVICE_FEATURE_DMA_LOGGING_START, 'set'],
      [v.VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP, 'set'],
      [v.VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT, 'get'],
    ] as const) {
      expectErrno(() => feature(b, fd, id, op, 32), 'ENOTTY');
      expectErrno(() => feature(b, fd, id, `probe-${op}`, 0), 'ENOTTY');
    }
    // With logging (the default), PROBE answers 0 and the ops the feature lacks are EINVAL.
    const d = fresh();
    expect(() => feature(d.b, d.fd, v.VFIO_DEVICE_FEATURE_DMA_LOGGING_START, 'probe-set', 0)).not.toThrow();
    expectErrno(() => feature(d.b, d.fd, v.VFIO_DEVICE_FEATURE_DMA_LOGGING_START, 'probe-get', 0), 'EINVAL');
    expectErrno(() => feature(d.b, d.fd, v.VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT, 'set', 32), 'EINVAL');
    expectErrno(() => feature(b, fd, 42, 'get', 8), 'ENOTTY');
  });

  it('MIG_DATA_SIZE gives the exact length of a plain stream: 48 + 8 per block + size + 288', () => {
    const { b, fd } = fresh('sim:10000:block=4KiB');
    expect(s.decodeMigDataSize(feature(b, fd, v.VFIO_DEVICE_FEATURE_MIG_DATA_SIZE, 'get', 8))).toBe(48 + 3 * 8 + 10000 + 288);
    expect(b.device(fd).streamLength).toBe(48 + 3 * 8 + 10000 + 288);
  });
});

// ---------------------------------------------------------------- migration state machine

describe('MIG_DEVICE_STATE: the kernel arcs', () => {
  it('GET returns the state with data_fd -1', () => {
    const { b, fd } = fresh();
    const out = feature(b, fd, v.VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, 'get', 8, Buffer.from([9, 9, 9, 9, 9, 9, 9, 9]));
    expect(s.decodeMigState(out)).toEqual({ deviceState: RUNNING, dataFd: -1 });
  });

  it('walks every arc of a combination request, like vfio_mig_get_next_state()', () => {
    const { b, fd } = fresh();
    const d = b.device(fd);
    const arcs = arcsOf(d);
    expect(setState(b, fd, STOP)).toEqual({ deviceState: STOP, dataFd: -1 });
    expect(arcs.splice(0)).toEqual([[RUNNING, RUNNING_P2P], [RUNNING_P2P, STOP]]);
    const r = setState(b, fd, PRE_COPY);
    expect(r.dataFd).toBeGreaterThanOrEqual(1 << 24);
    expect(arcs.splice(0)).toEqual([[STOP, RUNNING_P2P], [RUNNING_P2P, RUNNING], [RUNNING, PRE_COPY]]);
    expect(setState(b, fd, STOP_COPY)).toEqual({ deviceState: STOP_COPY, dataFd: -1 });
    expect(arcs.splice(0)).toEqual([[PRE_COPY, PRE_COPY_P2P], [PRE_COPY_P2P, STOP_COPY]]);
    const res = setState(b, fd, RESUMING);
    expect(res.dataFd).toBeGreaterThan(r.dataFd);
    expect(arcs).toEqual([[STOP_COPY, STOP], [STOP, RESUMING]]);
    // The log holds the same arcs, oldest first.
    expect(d.arcLog.slice(-10)).toEqual([
      [RUNNING, RUNNING_P2P], [RUNNING_P2P, STOP], [STOP, RUNNING_P2P], [RUNNING_P2P, RUNNING], [RUNNING, PRE_COPY],
      [PRE_COPY, PRE_COPY_P2P], [PRE_COPY_P2P, STOP_COPY], [STOP_COPY, STOP], [STOP, RESUMING],
    ]);
  });

  it('skips the states a device lacks: STOP_COPY-only walks RUNNING -> STOP directly', () => {
    const { b, fd } = fresh('sim:mig=stop_copy');
    setState(b, fd, STOP_COPY);
    expect(b.device(fd).arcLog).toEqual([[RUNNING, STOP], [STOP, STOP_COPY]]);
    expect(setState(b, fd, RUNNING_P2P).error?.code).toBe('EINVAL');
    expect(setState(b, fd, PRE_COPY).error?.code).toBe('EINVAL');
    expect(getState(b, fd)).toBe(STOP_COPY);
  });

  it('a request to the current state is a no-op returning data_fd -1', () => {
    const { b, fd } = fresh();
    setState(b, fd, STOP_COPY);
    expect(setState(b, fd, STOP_COPY)).toEqual({ deviceState: STOP_COPY, dataFd: -1 });
  });

  it('rejects ERROR, unknown states and STOP_COPY -> PRE_COPY with EINVAL; copies back the request and -1', () => {
    const { b, fd } = fresh();
    for (const bad of [ERROR, 8, 42]) {
      const r = setState(b, fd, bad);
      expect(r.error?.code).toBe('EINVAL');
      expect(r.error?.syscall).toBe('ioctl');
      expect([r.deviceState, r.dataFd]).toEqual([bad, -1]);
      expect(getState(b, fd)).toBe(RUNNING);
    }
    setState(b, fd, STOP_COPY);
    for (const bad of [PRE_COPY, PRE_COPY_P2P]) {
      expect(setState(b, fd, bad)).toMatchObject({ deviceState: bad, dataFd: -1, error: { code: 'EINVAL' } });
      expect(getState(b, fd)).toBe(STOP_COPY);
    }
  });

  it('in ERROR every SET is EINVAL except ERROR itself (the drivers loop does nothing); RESET recovers', () => {
    const { b, fd } = fresh();
    b.device(fd).forceError();
    expect(getState(b, fd)).toBe(ERROR);
    for (const st of [RUNNING, STOP, STOP_COPY, RESUMING]) expect(setState(b, fd, st).error?.code).toBe('EINVAL');
    expect(setState(b, fd, ERROR)).toEqual({ deviceState: ERROR, dataFd: -1 });
    expect(b.ioctl(fd, v.VFIO_DEVICE_RESET)).toBe(0);
    expect(getState(b, fd)).toBe(RUNNING);
  });

  it('a failing arc leaves the device where that arc started, copies back the request and -1', () => {
    const { b, fd } = fresh();
    const d = b.device(fd);
    d.failArc({ from: STOP, to: STOP_COPY }, 'EIO');
    const r = setState(b, fd, STOP_COPY);
    expect(r).toMatchObject({ deviceState: STOP_COPY, dataFd: -1, error: { code: 'EIO' } });
    expect(getState(b, fd)).toBe(STOP);
    expect(d.openFds).toBe(1);
    // the fault is spent
    expect(setState(b, fd, STOP_COPY).dataFd).toBeGreaterThan(0);
  });

  it('a failing arc may leave the device in ERROR', () => {
    const { b, fd } = fresh();
    b.device(fd).failArc({ to: STOP }, 'EIO', { enterError: true });
    expect(setState(b, fd, STOP_COPY).error?.code).toBe('EIO');
    expect(getState(b, fd)).toBe(ERROR);
  });

  it('an injected driver error on SET copies back {requested, -1} and moves nothing', () => {
    const { b, fd } = fresh();
    b.device(fd).injectError('MIG_DEVICE_STATE_SET', 'ENOMEM');
    expect(setState(b, fd, STOP)).toMatchObject({ deviceState: STOP, dataFd: -1, error: { code: 'ENOMEM' } });
    expect(getState(b, fd)).toBe(RUNNING);
    b.device(fd).injectError('MIG_DEVICE_STATE_GET', 'EIO');
    expectErrno(() => getState(b, fd), 'EIO');
  });

  it('VFIO_DEVICE_RESET returns to RUNNING, ends the session and resets registers', async () => {
    const { b, fd } = fresh();
    b.pwrite(fd, le32(77), BAR0.CONTROL);
    const { dataFd } = setState(b, fd, STOP_COPY);
    expect(b.ioctl(fd, v.VFIO_DEVICE_RESET)).toBe(0);
    expect(getState(b, fd)).toBe(RUNNING);
    expect(readU32(b, fd, BAR0.CONTROL)).toBe(0);
    await expect(b.read(dataFd, Buffer.alloc(64))).rejects.toMatchObject({ code: 'ENODEV' });
    b.close(dataFd);
    expect(b.device(fd).openFds).toBe(1);
  });
});

// ---------------------------------------------------------------- events (test hooks)

describe('events: what the device reports it served', () => {
  it('arc, reset (ioctl and FLR), config-write and set-irqs, in the order served; nothing for a refused call', () => {
    const { b, fd } = fresh();
    const d = b.device(fd);
    const seen: string[] = [];
    d.on('arc', (from, to) => seen.push(`arc ${MigState[from]}->${MigState[to]}`));
    d.on('reset', (how) => seen.push(`reset ${how}`));
    d.on('config-write', (off, data) => seen.push(`config-write 0x${off.toString(16)} ${data.toString('hex')}`));
    d.on('set-irqs', (set) => seen.push(`set-irqs index ${set.index} start ${set.start} count ${set.count} flags 0x${set.flags.toString(16)}`));

    setState(b, fd, STOP);
    b.pwrite(fd, Buffer.from([0x06, 0x00]), CFG + PCI.COMMAND);
    b.pwrite(fd, le32(5), BAR0.CONTROL); // BAR0: not config space
    const efd = b.eventfd(0);
    const T = v.VFIO_IRQ_SET_ACTION_TRIGGER;
    b.ioctl(fd, v.VFIO_DEVICE_SET_IRQS, s.encodeIrqSet({ flags: v.VFIO_IRQ_SET_DATA_EVENTFD | T, index: v.VFIO_PCI_MSIX_IRQ_INDEX, start: 0, count: 1, eventfds: [efd] }));
    expectErrno(() => b.ioctl(fd, v.VFIO_DEVICE_SET_IRQS, s.encodeIrqSet({ flags: v.VFIO_IRQ_SET_DATA_NONE | T, index: 9, start: 0, count: 0 })), 'EINVAL');
    expect(b.ioctl(fd, v.VFIO_DEVICE_RESET)).toBe(0);
    b.pwrite(fd, Buffer.from([0x10, 0xa8]), CFG + CAP_OFFSETS.EXP + 8); // initiate FLR
    expect(setState(b, fd, ERROR).error?.code).toBe('EINVAL'); // refused before any arc
    d.failArc({ from: RUNNING_P2P, to: STOP }, 'EIO');
    expect(setState(b, fd, STOP).error?.code).toBe('EIO'); // the first arc is done, the second fails

    expect(seen).toEqual([
      'arc RUNNING->RUNNING_P2P',
      'arc RUNNING_P2P->STOP',
      'config-write 0x4 0600',
      `set-irqs index ${v.VFIO_PCI_MSIX_IRQ_INDEX} start 0 count 1 flags 0x${(v.VFIO_IRQ_SET_DATA_EVENTFD | T).toString(16)}`,
      'reset VFIO_DEVICE_RESET',
      'reset FLR',
      `config-write 0x${(CAP_OFFSETS.EXP + 8).toString(16)} 10a8`,
      'arc RUNNING->RUNNING_P2P',
    ]);
    b.close(efd);
  });
});

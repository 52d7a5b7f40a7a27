/**
 * The IOMMU dirty-tracking open path (src/kernel/iommu.ts, `iommuDirtyTracking`) and the HWPT
 * helpers (src/kernel/dirty/hwpt.ts), over a scripted stand-in for the kernel: which ioctls are
 * made, with which arguments, in which order, and what is refused before the kernel is asked.
 * The kernel tier runs the same HWPT code on the real iommufd mock domain; this covers the open
 * path, which no device in that guest can take (mdevs have no HWPT).
 */
import { describe, expect, it } from 'vitest';
import { VfioError } from '../../src/base/errors';
import type { Binding } from '../../src/kernel/binding/types';
import { DirtyBitmap, HwptDirtyTracker, readDirtyBitmap } from '../../src/kernel/dirty';
import { openIommufd, openLegacy, type IommuDirtyMode } from '../../src/kernel/iommu';
import type { ResolvedDevice } from '../../src/kernel/resolve';
import * as io from '../../src/kernel/uapi/iommufd';
import * as v from '../../src/kernel/uapi/vfio';

const ENOENT = 2;
const ENOTTY = 25;
const EOPNOTSUPP = 95;
const IOMMUFD = 10;
const DEVICE = 11;

interface Script {
  /** GET_HW_INFO: the capabilities, or an errno. */
  hwInfo?: number | { errno: number };
  /** The device answers the DMA logging PROBE (else ENOTTY). */
  dmaLogging?: boolean;
  /** SET_DIRTY_TRACKING fails with this errno. */
  setDirtyErrno?: number;
}

/** A Binding answering the iommufd open path's ioctls per `script`, recording every call. */
function kernel(script: Script = {}): { binding: Binding; calls: string[]; closed: number[] } {
  const calls: string[] = [];
  const closed: number[] = [];
  const fail = (errno: number): never => {
    throw VfioError.fromErrno(errno, { syscall: 'ioctl' });
  };
  const ioctl = (fd: number, req: number, arg?: Buffer | number): number => {
    const b = arg as Buffer;
    switch (req) {
      case io.IOMMU_IOAS_ALLOC:
        calls.push('IOAS_ALLOC');
        b.writeUInt32LE(2, 8);
        return 0;
      case v.VFIO_DEVICE_BIND_IOMMUFD:
        calls.push(`BIND iommufd=${b.readInt32LE(8)}`);
        b.writeUInt32LE(7, 12);
        return 0;
      case io.IOMMU_GET_HW_INFO: {
        calls.push(`GET_HW_INFO dev=${b.readUInt32LE(8)} size=${b.readUInt32LE(0)}`);
        const h = script.hwInfo ?? 0;
        if (typeof h === 'object') fail(h.errno);
        b.writeBigUInt64LE(BigInt(h as number), 32);
        return 0;
      }
      case v.VFIO_DEVICE_FEATURE:
        calls.push(`FEATURE 0x${b.readUInt32LE(4).toString(16)}`);
        if (!script.dmaLogging) fail(ENOTTY);
        return 0;
      case io.IOMMU_HWPT_ALLOC:
        calls.push(`HWPT_ALLOC flags=${b.readUInt32LE(4)} dev=${b.readUInt32LE(8)} pt=${b.readUInt32LE(12)}`);
        b.writeUInt32LE(9, 16);
        return 0;
      case v.VFIO_DEVICE_ATTACH_IOMMUFD_PT:
        calls.push(`ATTACH pt=${b.readUInt32LE(8)}`);
        return 0;
      case io.IOMMU_HWPT_SET_DIRTY_TRACKING:
        calls.push(`SET_DIRTY hwpt=${b.readUInt32LE(8)} flags=${b.readUInt32LE(4)}`);
        if (script.setDirtyErrno) fail(script.setDirtyErrno);
        return 0;
      case io.IOMMU_HWPT_GET_DIRTY_BITMAP:
        calls.push(`GET_DIRTY hwpt=${b.readUInt32LE(4)} flags=${b.readUInt32LE(8)} ps=${b.readBigUInt64LE(32)}`);
        return 0;
      default:
        calls.push(`ioctl 0x${req.toString(16)} on ${fd}`);
        return 0;
    }
  };
  const binding = {
    name: 'native',
    open: (path: string) => {
      calls.push(`open ${path}`);
      return path === '/dev/iommu' ? IOMMUFD : DEVICE;
    },
    close: (fd: number) => void closed.push(fd),
    ioctl,
    ioctlAsync: async (fd: number, req: number, arg?: Buffer | number) => ioctl(fd, req, arg),
    bufferAddress: () => 0x7000_0000n,
  } as unknown as Binding;
  return { binding, calls, closed };
}

const pci: ResolvedDevice = { spec: '0000:01:00.0', name: '0000:01:00.0', cdevPath: '/dev/vfio/devices/vfio0', group: { id: '5', path: '/dev/vfio/5' } };
const mdev: ResolvedDevice = { ...pci, spec: 'c0ffee00-0000-0000-0000-000000000001', mdev: true };
const CAP = io.IOMMU_HW_CAP_DIRTY_TRACKING;

function open(script: Script, mode: IommuDirtyMode | undefined, dev = pci) {
  const k = kernel(script);
  const r = openIommufd(k.binding, dev, mode ? { dirtyTracking: mode } : {});
  return { ...k, ...r };
}

describe('opening through iommufd with IOMMU dirty tracking', () => {
  it("'off' (the default) attaches to the IOAS, as before: no HW_INFO, no HWPT", () => {
    const { calls, ctx } = open({ hwInfo: CAP }, undefined);
    expect(calls).toEqual(['open /dev/iommu', 'IOAS_ALLOC', 'open /dev/vfio/devices/vfio0', `BIND iommufd=${IOMMUFD}`, 'ATTACH pt=2']);
    expect(ctx.hwptId).toBeUndefined();
    expect(ctx.dirty).toBeUndefined();
  });

  it("'auto': capable IOMMU, no DMA logging → a dirty HWPT over the IOAS, the device attached to it", async () => {
    const { calls, ctx } = open({ hwInfo: CAP }, 'auto');
    expect(calls.slice(4)).toEqual([
      `GET_HW_INFO dev=7 size=${io.SIZEOF_IOMMU_HW_INFO}`,
      `FEATURE 0x${(v.VFIO_DEVICE_FEATURE_PROBE | v.VFIO_DEVICE_FEATURE_SET | v.VFIO_DEVICE_FEATURE_DMA_LOGGING_START).toString(16)}`,
      `HWPT_ALLOC flags=${io.IOMMU_HWPT_ALLOC_DIRTY_TRACKING} dev=7 pt=2`,
      'ATTACH pt=9',
    ]);
    expect(ctx).toMatchObject({ kind: 'iommufd', ioasId: 2, devid: 7, hwptId: 9 });
    expect(ctx.dirty).toBeInstanceOf(HwptDirtyTracker);
    await ctx.dirty!.enable();
    expect(calls.at(-1)).toBe('SET_DIRTY hwpt=9 flags=1');
  });

  it("'auto': a device with DMA logging is tracked by itself: attached to the IOAS", () => {
    const { calls, ctx } = open({ hwInfo: CAP, dmaLogging: true }, 'auto');
    expect(calls.at(-1)).toBe('ATTACH pt=2');
    expect(calls.some((c) => c.startsWith('HWPT_ALLOC'))).toBe(false);
    expect(ctx.dirty).toBeUndefined();
  });

  it("'auto' without the capability, or on an emulated device (HW_INFO: ENOENT): attached to the IOAS", () => {
    expect(open({ hwInfo: 0 }, 'auto').calls.at(-1)).toBe('ATTACH pt=2');
    expect(open({ hwInfo: { errno: ENOENT } }, 'auto').calls.at(-1)).toBe('ATTACH pt=2');
    const m = open({ hwInfo: CAP }, 'auto', mdev);
    expect(m.calls.some((c) => c.startsWith('GET_HW_INFO'))).toBe(false);
    expect(m.ctx.dirty).toBeUndefined();
  });

  it("'on': a dirty HWPT even when the device has DMA logging", () => {
    const { calls, ctx } = open({ hwInfo: CAP, dmaLogging: true }, 'on');
    expect(calls.slice(-2)).toEqual([`HWPT_ALLOC flags=${io.IOMMU_HWPT_ALLOC_DIRTY_TRACKING} dev=7 pt=2`, 'ATTACH pt=9']);
    expect(ctx.dirty).toBeDefined();
  });

  it("'on' without the capability: EVFIO_NO_IOMMU_DIRTY, and everything opened is closed", () => {
    const k = kernel({ hwInfo: 0 });
    expect(() => openIommufd(k.binding, pci, { dirtyTracking: 'on' })).toThrow(expect.objectContaining({ code: 'EVFIO_NO_IOMMU_DIRTY', kind: 'unsupported' }));
    expect(k.closed.sort()).toEqual([IOMMUFD, DEVICE]);
    expect(k.calls.some((c) => c.startsWith('ATTACH'))).toBe(false);
  });

  it("'on' on an mdev, or on the legacy path: EVFIO_NO_HWPT before anything is opened", () => {
    for (const [fn, dev] of [[openIommufd, mdev], [openLegacy, pci]] as const) {
      const k = kernel({ hwInfo: CAP });
      let err: VfioError | undefined;
      try {
        fn(k.binding, dev, { dirtyTracking: 'on' });
      } catch (e) {
        err = e as VfioError;
      }
      expect(err).toMatchObject({ code: 'EVFIO_NO_HWPT', kind: 'unsupported', device: dev.spec });
      expect(err?.message).toMatch(/DMA logging/);
      expect(k.calls).toEqual([]);
    }
  });

  it("'on' on a device the kernel has no IOMMU device for (HW_INFO: ENOENT): EVFIO_NO_HWPT, all closed", () => {
    const k = kernel({ hwInfo: { errno: ENOENT } });
    expect(() => openIommufd(k.binding, pci, { dirtyTracking: 'on' })).toThrow(expect.objectContaining({ code: 'EVFIO_NO_HWPT' }));
    expect(k.closed.sort()).toEqual([IOMMUFD, DEVICE]);
  });
});

describe('HWPT dirty reads', () => {
  const ifd = (k: ReturnType<typeof kernel>) => ({ binding: k.binding, fd: IOMMUFD, label: 'dev' });

  it('refuses page sizes the kernel would take (1000) before asking; passes NO_CLEAR; zeroes the bitmap first', async () => {
    const k = kernel();
    const t = new HwptDirtyTracker(ifd(k), 9);
    await t.enable();
    await expect(t.read({ iova: 0n, length: 64_000n, pageSize: 1000 })).rejects.toMatchObject({ code: 'EVFIO_DIRTY_PAGE_SIZE' });
    expect(k.calls.some((c) => c.startsWith('GET_DIRTY'))).toBe(false);
    const stale = new DirtyBitmap(0n, 64n * 4096n, 4096).fill();
    await t.read(stale, { noClear: true });
    expect(k.calls.at(-1)).toBe(`GET_DIRTY hwpt=9 flags=${io.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR} ps=4096`);
    expect(stale.isClean()).toBe(true);
    await readDirtyBitmap(ifd(k), 9, stale);
    expect(k.calls.at(-1)).toBe('GET_DIRTY hwpt=9 flags=0 ps=4096');
  });

  it('EOPNOTSUPP from SET_DIRTY_TRACKING becomes EVFIO_NO_IOMMU_DIRTY, errno kept; the tracker stays off', async () => {
    const k = kernel({ setDirtyErrno: EOPNOTSUPP });
    const t = new HwptDirtyTracker(ifd(k), 4);
    await expect(t.enable()).rejects.toMatchObject({ code: 'EVFIO_NO_IOMMU_DIRTY', errno: EOPNOTSUPP, kind: 'unsupported' });
    expect(t.enabled).toBe(false);
    // The JS bindings name errno 95 as the addon and the kernel do.
    expect(VfioError.fromErrno(EOPNOTSUPP).code).toBe('EOPNOTSUPP');
    const other = kernel({ setDirtyErrno: ENOENT });
    await expect(new HwptDirtyTracker(ifd(other), 4).enable()).rejects.toMatchObject({ code: 'ENOENT', kind: 'syscall' });
  });
});

/**
 * IOMMU dirty tracking on the iommufd path (iommufd.h "IOMMU_GET_HW_INFO", "IOMMU_HWPT_ALLOC",
 * "IOMMU_HWPT_SET_DIRTY_TRACKING", "IOMMU_HWPT_GET_DIRTY_BITMAP"; Linux 6.7): the host IOMMU
 * sets a dirty bit in its page table entry when a device writes through it, for devices without
 * DMA logging of their own (hisi_acc, qat, virtio in 6.12). The device must be attached to a HWPT
 * (a hardware page table) allocated with IOMMU_HWPT_ALLOC_DIRTY_TRACKING over its IOAS.
 *
 * The functions here take an iommufd fd and object ids, not a VfioDevice: a VFIO device's
 * `dev_id` (VFIO_DEVICE_BIND_IOMMUFD's out_devid) and the iommufd selftest mock device's
 * `idev_id` (IOMMU_TEST_OP_MOCK_DOMAIN) are both device ids to them, so the same code runs on real
 * devices and in the kernel tier on the mock domain (test/kernel/guest/iommu-dirty.test.js).
 *
 * Kernel rules (drivers/iommu/iommufd/hw_pagetable.c, io_pagetable.c, 6.12): ALLOC with the dirty
 * flag on a device whose IOMMU lacks the capability → EOPNOTSUPP; SET_DIRTY_TRACKING on a HWPT
 * allocated without it → EOPNOTSUPP; GET_DIRTY_BITMAP needs a non-zero length, iova and length
 * aligned to the IOMMU page size and to `page_size`, unknown flags → EOPNOTSUPP, and it does NOT
 * require `page_size` to be a power of two (1000 is accepted and gives a bitmap at the wrong
 * granularity: iova_bitmap uses __ffs(page_size)), so the page size is checked here. Enabling
 * clears the dirty bits first (iopt_set_dirty_tracking). An emulated device (mdev) bound to
 * iommufd has an access object, not a device object: its id answers ENOENT to all of this.
 */
import { VfioError, errnoOf, type EvfioCode } from '../../base/errors';
import { logger } from '../../base/log';
import type { Binding } from '../binding/types';
import { ioctl, ioctlAsync } from '../ioctl';
import * as io from '../uapi/iommufd';
import { DirtyBitmap, isPowerOfTwo } from './bitmap';
import { MIN_DIRTY_PAGE_SIZE, bitmapFor, readFailure, type DirtyTarget, type ReportFailurePolicy, type ReportResult } from './report';

const log = logger('dirty');
const EOPNOTSUPP = errnoOf('EOPNOTSUPP');

/** An open iommufd (`/dev/iommu`) and how errors name its user. */
export interface Iommufd {
  binding: Binding;
  fd: number;
  /** The device (or test) named in errors. */
  label: string;
}

/** What GET_HW_INFO says, with the dirty-tracking capability decoded. */
export interface IommuHwInfo extends io.HwInfo {
  /** IOMMU_HW_CAP_DIRTY_TRACKING: a HWPT with IOMMU_HWPT_ALLOC_DIRTY_TRACKING can be attached. */
  dirtyTracking: boolean;
}

/**
 * IOMMU dirty tracking of one HWPT, as a VMM uses it during a migration. Implemented by
 * {@link HwptDirtyTracker} (iommufd) and by the simulator's IOMMU context.
 */
export interface IommuDirtyTracking {
  /** True between enable() and disable(). */
  readonly enabled: boolean;
  /** Start tracking; the IOMMU clears the dirty bits first. Off the JS thread. */
  enable(): Promise<void>;
  /** Stop tracking. */
  disable(): Promise<void>;
  /**
   * The dirty pages of `target`'s range at its page size into its bitmap (a new one for a plain
   * range; zeroed first), cleared in the IOMMU unless `noClear`. The page size must be a power of
   * two of at least 4 KiB and divide the range's iova and length (EVFIO_DIRTY_PAGE_SIZE,
   * EVFIO_DIRTY_RANGES), checked before the kernel is asked (6.12 accepts 1000);
   * EVFIO_DIRTY_NOT_STARTED while disabled. A failed read follows `onError` (default 'throw').
   */
  read(target: DirtyTarget, opts?: { noClear?: boolean; onError?: ReportFailurePolicy }): Promise<ReportResult>;
}

/**
 * IOMMU_GET_HW_INFO for device `devId` (flags 0, no driver data asked). ENOENT when `devId` is
 * not a device with an IOMMU (an mdev's id is an access object).
 */
export function getHwInfo(iommufd: Iommufd, devId: number): IommuHwInfo {
  const b = io.encodeHwInfo(devId);
  ioctl(iommufd.binding, iommufd.fd, io.IOMMU_GET_HW_INFO, b, { device: iommufd.label });
  const info = io.decodeHwInfo(b);
  return { ...info, dirtyTracking: (info.capabilities & BigInt(io.IOMMU_HW_CAP_DIRTY_TRACKING)) !== 0n };
}

/**
 * IOMMU_HWPT_ALLOC: a paging HWPT for device `devId` over IOAS `ioasId`, with
 * IOMMU_HWPT_ALLOC_DIRTY_TRACKING when `dirtyTracking`. Returns the HWPT id. The HWPT holds the
 * IOAS's mappings (present and future); the device uses it once attached to it
 * (VFIO_DEVICE_ATTACH_IOMMUFD_PT with this id). Kernel errors: EOPNOTSUPP (the IOMMU cannot track
 * dirty pages), ENOENT (no such device), EINVAL (no such IOAS).
 */
export function allocHwpt(iommufd: Iommufd, a: { devId: number; ioasId: number; dirtyTracking: boolean }): number {
  const b = io.encodeHwptAlloc({ flags: a.dirtyTracking ? io.IOMMU_HWPT_ALLOC_DIRTY_TRACKING : 0, devId: a.devId, ptId: a.ioasId });
  ioctl(iommufd.binding, iommufd.fd, io.IOMMU_HWPT_ALLOC, b, { device: iommufd.label });
  return io.decodeHwptAlloc(b).hwptId;
}

/** IOMMU_DESTROY of an iommufd object (a HWPT no device is attached to any more). */
export function destroyObject(iommufd: Iommufd, id: number): void {
  ioctl(iommufd.binding, iommufd.fd, io.IOMMU_DESTROY, io.encodeDestroy(id), { device: iommufd.label });
}

/**
 * IOMMU_HWPT_SET_DIRTY_TRACKING. EOPNOTSUPP from the kernel (a HWPT allocated without
 * IOMMU_HWPT_ALLOC_DIRTY_TRACKING) becomes EVFIO_NO_IOMMU_DIRTY (kind 'unsupported', errno
 * EOPNOTSUPP kept) saying so. Off the JS thread.
 */
export async function setDirtyTracking(iommufd: Iommufd, hwptId: number, enable: boolean): Promise<void> {
  try {
    await ioctlAsync(iommufd.binding, iommufd.fd, io.IOMMU_HWPT_SET_DIRTY_TRACKING, io.encodeHwptSetDirtyTracking(hwptId, enable), { device: iommufd.label });
  } catch (e) {
    if (e instanceof VfioError && e.errno === EOPNOTSUPP) {
      throw new VfioError(
        `HWPT ${hwptId} cannot track dirty pages (IOMMU_HWPT_SET_DIRTY_TRACKING: EOPNOTSUPP): it was allocated without IOMMU_HWPT_ALLOC_DIRTY_TRACKING; open the device with iommuDirtyTracking 'on', or use device DMA logging`,
        { code: 'EVFIO_NO_IOMMU_DIRTY', kind: 'unsupported', errno: e.errno, syscall: e.syscall, op: e.op, device: iommufd.label, cause: e },
      );
    }
    throw e;
  }
}

/**
 * IOMMU_HWPT_GET_DIRTY_BITMAP with no userspace checks: `[iova, iova + length)` at `pageSize`
 * into `buffer` (not zeroed), `flags` as given. For tests that want the kernel's verdict; use
 * {@link readDirtyBitmap} otherwise. Off the JS thread.
 */
export async function readDirtyBitmapRaw(iommufd: Iommufd, hwptId: number, g: { iova: bigint; length: bigint; pageSize: bigint; flags: number }, buffer: Buffer): Promise<void> {
  const data = iommufd.binding.bufferAddress(buffer);
  const b = io.encodeHwptGetDirtyBitmap({ hwptId, flags: g.flags, iova: g.iova, length: g.length, pageSize: g.pageSize, data });
  await ioctlAsync(iommufd.binding, iommufd.fd, io.IOMMU_HWPT_GET_DIRTY_BITMAP, b, { device: iommufd.label });
  void buffer; // reachable until the kernel is done with its address
}

function usage(code: EvfioCode, message: string, device: string): VfioError {
  return new VfioError(message, { code, kind: 'usage', device, op: 'IOMMU dirty bitmap' });
}

/**
 * Check a read of `bitmap` for what the kernel does not check (a power-of-two page size of at
 * least 4 KiB: EVFIO_DIRTY_PAGE_SIZE) and what it would refuse with a bare EINVAL (iova and
 * length not multiples of the page size: EVFIO_DIRTY_RANGES).
 */
export function checkIommuRead(bitmap: DirtyTarget, device: string): void {
  if (!isPowerOfTwo(bitmap.pageSize) || bitmap.pageSize < MIN_DIRTY_PAGE_SIZE) {
    throw usage(
      'EVFIO_DIRTY_PAGE_SIZE',
      `IOMMU dirty bitmap page size ${bitmap.pageSize} must be a power of two of at least ${MIN_DIRTY_PAGE_SIZE} bytes (the kernel does not check: a bitmap at another granularity would come back)`,
      device,
    );
  }
  const ps = BigInt(bitmap.pageSize);
  if (bitmap.iova % ps || bitmap.length % ps || bitmap.length <= 0n) {
    throw usage('EVFIO_DIRTY_RANGES', `IOMMU dirty bitmap range 0x${bitmap.iova.toString(16)}+0x${bitmap.length.toString(16)} is not aligned to its page size ${bitmap.pageSize}`, device);
  }
}

/**
 * Read the HWPT's dirty bits of `bitmap`'s range into `bitmap`: checked ({@link checkIommuRead}),
 * zeroed, then IOMMU_HWPT_GET_DIRTY_BITMAP (read-and-clear unless `noClear`).
 */
export async function readDirtyBitmap(iommufd: Iommufd, hwptId: number, bitmap: DirtyBitmap, opts: { noClear?: boolean } = {}): Promise<void> {
  checkIommuRead(bitmap, iommufd.label);
  bitmap.zero();
  await readDirtyBitmapRaw(
    iommufd,
    hwptId,
    { iova: bitmap.iova, length: bitmap.length, pageSize: BigInt(bitmap.pageSize), flags: opts.noClear ? io.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR : 0 },
    bitmap.buffer,
  );
}

/** {@link IommuDirtyTracking} of one iommufd HWPT allocated with IOMMU_HWPT_ALLOC_DIRTY_TRACKING. */
export class HwptDirtyTracker implements IommuDirtyTracking {
  private on = false;

  constructor(
    readonly iommufd: Iommufd,
    readonly hwptId: number,
  ) {}

  get enabled(): boolean {
    return this.on;
  }

  async enable(): Promise<void> {
    await setDirtyTracking(this.iommufd, this.hwptId, true);
    this.on = true;
    log('%s: IOMMU dirty tracking on (HWPT %d)', this.iommufd.label, this.hwptId);
  }

  async disable(): Promise<void> {
    this.on = false;
    await setDirtyTracking(this.iommufd, this.hwptId, false);
    log('%s: IOMMU dirty tracking off (HWPT %d)', this.iommufd.label, this.hwptId);
  }

  async read(target: DirtyTarget, opts: { noClear?: boolean; onError?: ReportFailurePolicy } = {}): Promise<ReportResult> {
    if (!this.on) throw usage('EVFIO_DIRTY_NOT_STARTED', `IOMMU dirty tracking is not enabled on HWPT ${this.hwptId}`, this.iommufd.label);
    checkIommuRead(target, this.iommufd.label);
    const bitmap = bitmapFor(target);
    try {
      await readDirtyBitmap(this.iommufd, this.hwptId, bitmap, opts);
      return { bitmap };
    } catch (e) {
      return readFailure(e, bitmap, opts.onError);
    }
  }
}

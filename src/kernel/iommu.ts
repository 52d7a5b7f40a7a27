/**
 * The two ways to give a VFIO device an IOMMU context (Documentation/driver-api/vfio.rst):
 *  - iommufd (Linux 6.6+): `/dev/iommu`, IOMMU_IOAS_ALLOC, then per device the cdev
 *    `/dev/vfio/devices/vfioN` + VFIO_DEVICE_BIND_IOMMUFD + VFIO_DEVICE_ATTACH_IOMMUFD_PT;
 *  - legacy: a container `/dev/vfio/vfio` (VFIO_SET_IOMMU type1v2) and the device's group
 *    `/dev/vfio/<group>` (VFIO_GROUP_SET_CONTAINER, VFIO_GROUP_GET_DEVICE_FD).
 * Each context owns its fds and closes them in order: device first (by the caller), then
 * group, then container or iommufd.
 *
 * IOMMU dirty tracking (option `dirtyTracking`, iommufd only; src/kernel/dirty/hwpt.ts): instead
 * of attaching the device to the IOAS, allocate a HWPT with IOMMU_HWPT_ALLOC_DIRTY_TRACKING over
 * the IOAS and attach the device to that (QEMU's iommufd_cdev_autodomains_get() does the same).
 * The context then carries the tracker in `dirty`. The default is unchanged: no HWPT of our own.
 */
import { constants as fsc } from 'node:fs';
import type { Binding } from './binding/types';
import { VfioError } from '../base/errors';
import * as io from './uapi/iommufd';
import * as s from './uapi/structs';
import * as v from './uapi/vfio';
import { ioctl, ioctlAsync } from './ioctl';
import type { ResolvedDevice } from './resolve';
import { HwptDirtyTracker, allocHwpt, getHwInfo, type IommuDirtyTracking } from './dirty/hwpt';
import { hasDmaLogging } from './dirty/probe';
import { logger } from '../base/log';

const log = logger('device');

export type IommuKind = 'iommufd' | 'legacy';

/** An open IOMMU context holding one device. */
export interface IommuContext {
  /** The open path; 'virtual' for a provider's device (src/sim) that has no kernel IOMMU context. */
  readonly kind: IommuKind | 'virtual';
  /**
   * Map `buffer` (guest RAM, page-aligned address and length) for device DMA at `iova`, off the
   * JS thread (the kernel pins every page). iommufd: IOMMU_IOAS_MAP with FIXED_IOVA; legacy:
   * VFIO_IOMMU_MAP_DMA (type1v2). Errors: EVFIO_DMA_ALIGN (usage) before the kernel is asked,
   * then the kernel's (EEXIST: overlap, ENOMEM/EPERM: pinning limits, RLIMIT_MEMLOCK).
   */
  mapDma(iova: bigint, buffer: Buffer, access?: { read?: boolean; write?: boolean }): Promise<void>;
  /** Undo a mapDma of `length` bytes at `iova`. */
  unmapDma(iova: bigint, length: number): Promise<void>;
  /**
   * IOMMU dirty tracking of the device's DMA, when the context was opened with it
   * (`dirtyTracking` 'on', or 'auto' and available); undefined otherwise.
   */
  readonly dirty?: IommuDirtyTracking;
  /** Close what the context owns (not the device fd). Idempotent. The kernel drops every mapping. */
  close(): void;
}

/** The page size DMA mappings are aligned to. */
export const DMA_PAGE = 4096;

/** Check DMA alignment; returns the buffer's address. */
export function dmaAddress(binding: Binding, iova: bigint, buffer: Buffer, device: string): bigint {
  const va = binding.bufferAddress(buffer);
  const page = BigInt(DMA_PAGE);
  if (iova % page || va % page || buffer.length % DMA_PAGE || buffer.length === 0) {
    throw new VfioError(`DMA mapping needs page-aligned iova, address and length (iova 0x${iova.toString(16)}, address 0x${va.toString(16)}, ${buffer.length} bytes)`, {
      code: 'EVFIO_DMA_ALIGN', kind: 'usage', device,
    });
  }
  return va;
}

/**
 * IOMMU dirty tracking at open (OpenOptions.iommuDirtyTracking):
 *  - 'off' (default): the device is attached to the IOAS; no dirty tracking;
 *  - 'auto': QEMU's rule: a dirty-tracking HWPT when the IOMMU reports
 *    IOMMU_HW_CAP_DIRTY_TRACKING and the device has no DMA logging of its own (a device with
 *    logging is better tracked by itself); otherwise as 'off'. Never fails for lack of it;
 *  - 'on': a dirty-tracking HWPT, or the open fails: EVFIO_NO_HWPT (an mdev or the legacy
 *    container path: no HWPT of its own; use device DMA logging or count all DMA-mapped memory
 *    dirty), EVFIO_NO_IOMMU_DIRTY (the IOMMU lacks the capability).
 */
export type IommuDirtyMode = 'off' | 'auto' | 'on';

/** An iommufd context, with the ids a caller (and the dirty-tracking code) needs. */
export interface IommufdContext extends IommuContext {
  readonly kind: 'iommufd';
  readonly ioasId: number;
  readonly iommufd: number;
  /** The device's id in the iommufd (VFIO_DEVICE_BIND_IOMMUFD out_devid). */
  readonly devid: number;
  /** The dirty-tracking HWPT the device is attached to, when there is one. */
  readonly hwptId?: number;
  readonly dirty?: IommuDirtyTracking;
}

function noHwpt(device: string, why: string): VfioError {
  return new VfioError(
    `${device} cannot use IOMMU dirty tracking: ${why}. Track its DMA with device DMA logging, or count all DMA-mapped memory dirty`,
    { code: 'EVFIO_NO_HWPT', kind: 'unsupported', device, op: 'IOMMU dirty tracking' },
  );
}

/**
 * Attach the bound device `devid` (fd `fd`) to its IOMMU page table per `mode`: the IOAS itself,
 * or a new dirty-tracking HWPT over it. Returns the HWPT id when one was made.
 */
function attachIommufd(binding: Binding, iommufd: number, fd: number, ioasId: number, devid: number, mode: IommuDirtyMode, dev: ResolvedDevice): number | undefined {
  const device = dev.spec;
  let hwptId: number | undefined;
  if (mode !== 'off' && !dev.mdev) {
    const ifd = { binding, fd: iommufd, label: device };
    let capable = false;
    try {
      capable = getHwInfo(ifd, devid).dirtyTracking;
    } catch (e) {
      // ENOENT: the id is not a device object (an emulated device bound through an access).
      if (!(e instanceof VfioError && e.code === 'ENOENT')) throw e;
      if (mode === 'on') throw noHwpt(device, 'the kernel has no IOMMU device for it (IOMMU_GET_HW_INFO: ENOENT; an emulated device)');
    }
    if (!capable && mode === 'on') {
      throw new VfioError(`${device}: its IOMMU cannot track dirty pages (IOMMU_GET_HW_INFO lacks IOMMU_HW_CAP_DIRTY_TRACKING)`, {
        code: 'EVFIO_NO_IOMMU_DIRTY', kind: 'unsupported', device, op: 'IOMMU dirty tracking',
      });
    }
    if (capable && (mode === 'on' || !hasDmaLogging(binding, fd, device))) {
      hwptId = allocHwpt(ifd, { devId: devid, ioasId, dirtyTracking: true });
    }
  }
  ioctl(binding, fd, v.VFIO_DEVICE_ATTACH_IOMMUFD_PT, s.encodeAttachIommufdPt(hwptId ?? ioasId), { device });
  return hwptId;
}

/** Close fds in order, ignoring errors of the later ones after a first failure is recorded. */
function closeAll(binding: Binding, fds: number[]): void {
  for (const fd of fds) {
    if (fd >= 0) {
      try {
        binding.close(fd);
      } catch (e) {
        log('close(%d) failed: %o', fd, e);
      }
    }
  }
}

/** Open a device through iommufd. Returns the device fd and the context; closes everything on failure. */
export function openIommufd(binding: Binding, dev: ResolvedDevice, opts: { dirtyTracking?: IommuDirtyMode } = {}): { fd: number; ctx: IommufdContext } {
  const mode = opts.dirtyTracking ?? 'off';
  if (mode === 'on' && dev.mdev) throw noHwpt(dev.spec, 'it is a mediated device (mdev): it has no IOMMU page table of its own');
  if (!dev.cdevPath) {
    throw new VfioError(`${dev.spec} has no VFIO cdev (/dev/vfio/devices/vfioN): the kernel is older than 6.6 or built without VFIO_DEVICE_CDEV; use --iommu legacy`, {
      code: 'EVFIO_NO_CDEV', kind: 'unsupported', device: dev.spec,
    });
  }
  const device = dev.spec;
  let iommufd = -1;
  let fd = -1;
  try {
    iommufd = binding.open('/dev/iommu', fsc.O_RDWR);
    const alloc = io.encodeIoasAlloc();
    ioctl(binding, iommufd, io.IOMMU_IOAS_ALLOC, alloc, { device });
    const { ioasId } = io.decodeIoasAlloc(alloc);
    fd = binding.open(dev.cdevPath, fsc.O_RDWR);
    const bind = s.encodeBindIommufd(iommufd);
    ioctl(binding, fd, v.VFIO_DEVICE_BIND_IOMMUFD, bind, { device });
    const { devid } = s.decodeBindIommufd(bind);
    const hwptId = attachIommufd(binding, iommufd, fd, ioasId, devid, mode, dev);
    log('%s: iommufd %d ioas %d devid %d%s, cdev %s fd %d', device, iommufd, ioasId, devid, hwptId !== undefined ? ` dirty-tracking hwpt ${hwptId}` : '', dev.cdevPath, fd);
    let open = true;
    const fdIommu = iommufd;
    const dirty = hwptId !== undefined ? new HwptDirtyTracker({ binding, fd: fdIommu, label: device }, hwptId) : undefined;
    return {
      fd,
      ctx: {
        kind: 'iommufd', ioasId, iommufd: fdIommu, devid, hwptId, dirty,
        async mapDma(iova, buffer, access = {}) {
          const va = dmaAddress(binding, iova, buffer, device);
          const flags = io.IOMMU_IOAS_MAP_FIXED_IOVA | (access.read ?? true ? io.IOMMU_IOAS_MAP_READABLE : 0) | (access.write ?? true ? io.IOMMU_IOAS_MAP_WRITEABLE : 0);
          await ioctlAsync(binding, fdIommu, io.IOMMU_IOAS_MAP, io.encodeIoasMap(ioasId, va, BigInt(buffer.length), iova, flags), { device });
        },
        async unmapDma(iova, length) {
          await ioctlAsync(binding, fdIommu, io.IOMMU_IOAS_UNMAP, io.encodeIoasUnmap(ioasId, iova, BigInt(length)), { device });
        },
        close() {
          if (open) closeAll(binding, [fdIommu]);
          open = false;
        },
      },
    };
  } catch (e) {
    closeAll(binding, [fd, iommufd]);
    throw e instanceof VfioError ? e.annotate({ device, step: 'open:iommufd' }) : e;
  }
}

/** Open a device through a legacy container and its group. Closes everything on failure. */
export function openLegacy(binding: Binding, dev: ResolvedDevice, opts: { dirtyTracking?: IommuDirtyMode } = {}): { fd: number; ctx: IommuContext & { container: number; group: number } } {
  if (opts.dirtyTracking === 'on') throw noHwpt(dev.spec, 'the legacy container path has no HWPT (use --iommu iommufd)');
  if (!dev.group) {
    throw new VfioError(`${dev.spec} has no IOMMU group; use --iommu iommufd`, { code: 'EVFIO_NO_GROUP', kind: 'unsupported', device: dev.spec });
  }
  const device = dev.spec;
  let container = -1;
  let group = -1;
  let fd = -1;
  try {
    container = binding.open('/dev/vfio/vfio', fsc.O_RDWR);
    const api = ioctl(binding, container, v.VFIO_GET_API_VERSION, undefined, { device });
    if (api !== v.VFIO_API_VERSION) {
      throw new VfioError(`unknown VFIO API version ${api}`, { code: 'EVFIO_API_VERSION', kind: 'unsupported', device });
    }
    if (!ioctl(binding, container, v.VFIO_CHECK_EXTENSION, v.VFIO_TYPE1v2_IOMMU, { device })) {
      throw new VfioError('the container does not support VFIO_TYPE1v2_IOMMU', { code: 'EVFIO_NO_TYPE1V2', kind: 'unsupported', device });
    }
    group = binding.open(dev.group.path, fsc.O_RDWR);
    const status = s.encodeGroupStatusQuery();
    ioctl(binding, group, v.VFIO_GROUP_GET_STATUS, status, { device });
    if (!(status.readUInt32LE(4) & v.VFIO_GROUP_FLAGS_VIABLE)) {
      throw new VfioError(`IOMMU group ${dev.group.id} is not viable: bind every device of the group to vfio-pci (or unbind it)`, {
        code: 'EVFIO_GROUP_NOT_VIABLE', kind: 'unsupported', device,
      });
    }
    const cfd = Buffer.alloc(4);
    cfd.writeInt32LE(container, 0);
    ioctl(binding, group, v.VFIO_GROUP_SET_CONTAINER, cfd, { device });
    ioctl(binding, container, v.VFIO_SET_IOMMU, v.VFIO_TYPE1v2_IOMMU, { device });
    fd = ioctl(binding, group, v.VFIO_GROUP_GET_DEVICE_FD, Buffer.from(`${dev.name}\0`), { device });
    log('%s: container %d group %s fd %d device fd %d', device, container, dev.group.id, group, fd);
    let open = true;
    const [c, g] = [container, group];
    return {
      fd,
      ctx: {
        kind: 'legacy', container: c, group: g,
        async mapDma(iova, buffer, access = {}) {
          const va = dmaAddress(binding, iova, buffer, device);
          const flags = (access.read ?? true ? s.VFIO_DMA_MAP_FLAG_READ : 0) | (access.write ?? true ? s.VFIO_DMA_MAP_FLAG_WRITE : 0);
          await ioctlAsync(binding, c, v.VFIO_IOMMU_MAP_DMA, s.encodeType1DmaMap(va, iova, BigInt(buffer.length), flags), { device, op: 'VFIO_IOMMU_MAP_DMA' });
        },
        async unmapDma(iova, length) {
          await ioctlAsync(binding, c, v.VFIO_IOMMU_UNMAP_DMA, s.encodeType1DmaUnmap(iova, BigInt(length)), { device, op: 'VFIO_IOMMU_UNMAP_DMA' });
        },
        close() {
          if (open) closeAll(binding, [g, c]);
          open = false;
        },
      },
    };
  } catch (e) {
    closeAll(binding, [fd, group, container]);
    throw e instanceof VfioError ? e.annotate({ device, step: 'open:legacy' }) : e;
  }
}

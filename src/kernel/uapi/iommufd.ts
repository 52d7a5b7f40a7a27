/**
 * The iommufd uAPI subset the library uses (include/uapi/linux/iommufd.h, Linux 6.12):
 * `IOMMUFD_TYPE` is ';' like VFIO, commands start at `IOMMUFD_CMD_BASE` 0x80, and every struct
 * begins with `u32 size`.
 */
import { IO, VFIO_TYPE } from './vfio';

export const IOMMUFD_TYPE = VFIO_TYPE;
export const IOMMUFD_CMD_BASE = 0x80;
export const IOMMU_DESTROY = IO(IOMMUFD_TYPE, IOMMUFD_CMD_BASE + 0);
export const IOMMU_IOAS_ALLOC = IO(IOMMUFD_TYPE, IOMMUFD_CMD_BASE + 1);
export const IOMMU_IOAS_ALLOW_IOVAS = IO(IOMMUFD_TYPE, IOMMUFD_CMD_BASE + 2);
export const IOMMU_IOAS_COPY = IO(IOMMUFD_TYPE, IOMMUFD_CMD_BASE + 3);
export const IOMMU_IOAS_IOVA_RANGES = IO(IOMMUFD_TYPE, IOMMUFD_CMD_BASE + 4);
export const IOMMU_IOAS_MAP = IO(IOMMUFD_TYPE, IOMMUFD_CMD_BASE + 5);
export const IOMMU_IOAS_UNMAP = IO(IOMMUFD_TYPE, IOMMUFD_CMD_BASE + 6);
/** Linux 6.6 (iommufd.h "IOMMU_HWPT_ALLOC", "IOMMU_GET_HW_INFO"). */
export const IOMMU_HWPT_ALLOC = IO(IOMMUFD_TYPE, IOMMUFD_CMD_BASE + 9);
export const IOMMU_GET_HW_INFO = IO(IOMMUFD_TYPE, IOMMUFD_CMD_BASE + 10);
/** Linux 6.7 (iommufd.h "IOMMU_HWPT_SET_DIRTY_TRACKING", "IOMMU_HWPT_GET_DIRTY_BITMAP"). */
export const IOMMU_HWPT_SET_DIRTY_TRACKING = IO(IOMMUFD_TYPE, IOMMUFD_CMD_BASE + 11);
export const IOMMU_HWPT_GET_DIRTY_BITMAP = IO(IOMMUFD_TYPE, IOMMUFD_CMD_BASE + 12);

export const IOMMUFD_IOCTL_NAMES: ReadonlyMap<number, string> = new Map([
  [IOMMU_DESTROY, 'IOMMU_DESTROY'],
  [IOMMU_IOAS_ALLOC, 'IOMMU_IOAS_ALLOC'],
  [IOMMU_IOAS_ALLOW_IOVAS, 'IOMMU_IOAS_ALLOW_IOVAS'],
  [IOMMU_IOAS_COPY, 'IOMMU_IOAS_COPY'],
  [IOMMU_IOAS_IOVA_RANGES, 'IOMMU_IOAS_IOVA_RANGES'],
  [IOMMU_IOAS_MAP, 'IOMMU_IOAS_MAP'],
  [IOMMU_IOAS_UNMAP, 'IOMMU_IOAS_UNMAP'],
  [IOMMU_HWPT_ALLOC, 'IOMMU_HWPT_ALLOC'],
  [IOMMU_GET_HW_INFO, 'IOMMU_GET_HW_INFO'],
  [IOMMU_HWPT_SET_DIRTY_TRACKING, 'IOMMU_HWPT_SET_DIRTY_TRACKING'],
  [IOMMU_HWPT_GET_DIRTY_BITMAP, 'IOMMU_HWPT_GET_DIRTY_BITMAP'],
]);

/** enum iommufd_ioas_map_flags */
export const IOMMU_IOAS_MAP_FIXED_IOVA = 1 << 0;
export const IOMMU_IOAS_MAP_WRITEABLE = 1 << 1;
export const IOMMU_IOAS_MAP_READABLE = 1 << 2;

/** struct iommu_destroy { u32 size, id; } */
export const SIZEOF_IOMMU_DESTROY = 8;
export function encodeDestroy(id: number): Buffer {
  const b = Buffer.alloc(SIZEOF_IOMMU_DESTROY);
  b.writeUInt32LE(SIZEOF_IOMMU_DESTROY, 0);
  b.writeUInt32LE(id, 4);
  return b;
}

/** struct iommu_ioas_alloc { u32 size, flags, out_ioas_id; } */
export const SIZEOF_IOMMU_IOAS_ALLOC = 12;
export function encodeIoasAlloc(): Buffer {
  const b = Buffer.alloc(SIZEOF_IOMMU_IOAS_ALLOC);
  b.writeUInt32LE(SIZEOF_IOMMU_IOAS_ALLOC, 0);
  return b;
}
export function decodeIoasAlloc(b: Buffer): { ioasId: number } {
  return { ioasId: b.readUInt32LE(8) };
}

/** struct iommu_ioas_map { u32 size, flags, ioas_id, __reserved; u64 user_va, length, iova; } */
export const SIZEOF_IOMMU_IOAS_MAP = 40;
export function encodeIoasMap(ioasId: number, userVa: bigint, length: bigint, iova: bigint, flags: number): Buffer {
  const b = Buffer.alloc(SIZEOF_IOMMU_IOAS_MAP);
  b.writeUInt32LE(SIZEOF_IOMMU_IOAS_MAP, 0);
  b.writeUInt32LE(flags, 4);
  b.writeUInt32LE(ioasId, 8);
  b.writeBigUInt64LE(userVa, 16);
  b.writeBigUInt64LE(length, 24);
  b.writeBigUInt64LE(iova, 32);
  return b;
}

/** struct iommu_ioas_unmap { u32 size, ioas_id; u64 iova, length; } */
export const SIZEOF_IOMMU_IOAS_UNMAP = 24;
export function encodeIoasUnmap(ioasId: number, iova: bigint, length: bigint): Buffer {
  const b = Buffer.alloc(SIZEOF_IOMMU_IOAS_UNMAP);
  b.writeUInt32LE(SIZEOF_IOMMU_IOAS_UNMAP, 0);
  b.writeUInt32LE(ioasId, 4);
  b.writeBigUInt64LE(iova, 8);
  b.writeBigUInt64LE(length, 16);
  return b;
}

// ---------------------------------------------------------------- HWPT and dirty tracking

/** enum iommufd_hwpt_alloc_flags: the HWPT must support dirty tracking (attach fails on an IOMMU that cannot). */
export const IOMMU_HWPT_ALLOC_DIRTY_TRACKING = 1 << 1;
/** enum iommu_hwpt_data_type: no driver-specific data (a plain paging HWPT over an IOAS). */
export const IOMMU_HWPT_DATA_NONE = 0;
/** enum iommu_hw_info_type: the IOMMU driver reports no driver-specific data. */
export const IOMMU_HW_INFO_TYPE_NONE = 0;
/** enum iommufd_hw_capabilities: the device's IOMMU can track dirty IOPTEs (bit 0 of out_capabilities). */
export const IOMMU_HW_CAP_DIRTY_TRACKING = 1 << 0;
/** enum iommufd_hwpt_set_dirty_tracking_flags: enable (set) or disable (clear). */
export const IOMMU_HWPT_DIRTY_TRACKING_ENABLE = 1;
/** enum iommufd_hwpt_get_dirty_bitmap_flags: read the dirty bits without clearing them. */
export const IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR = 1;

/**
 * struct iommu_hw_info { u32 size, flags, dev_id, data_len; u64 data_uptr; u32 out_data_type;
 * u8 out_max_pasid_log2, __reserved[3]; u64 out_capabilities; } (out_capabilities: Linux 6.7).
 * We pass data_len 0: the driver-specific data is not read, only the capabilities.
 */
export const SIZEOF_IOMMU_HW_INFO = 40;
export interface HwInfo {
  /** enum iommu_hw_info_type (0: none). */
  dataType: number;
  /** log2 of the PASIDs the device supports (0: none). */
  maxPasidLog2: number;
  /** IOMMU_HW_CAP_* bits. */
  capabilities: bigint;
}
export function encodeHwInfo(devId: number): Buffer {
  const b = Buffer.alloc(SIZEOF_IOMMU_HW_INFO);
  b.writeUInt32LE(SIZEOF_IOMMU_HW_INFO, 0);
  b.writeUInt32LE(devId, 8);
  return b;
}
export function decodeHwInfo(b: Buffer): HwInfo {
  return { dataType: b.readUInt32LE(24), maxPasidLog2: b.readUInt8(28), capabilities: b.readBigUInt64LE(32) };
}

/**
 * struct iommu_hwpt_alloc { u32 size, flags, dev_id, pt_id, out_hwpt_id, __reserved, data_type,
 * data_len; u64 data_uptr; u32 fault_id, __reserved2; } (fault_id: Linux 6.11; the kernel
 * accepts the shorter 6.6 size too). data_type NONE with data_len 0: a paging HWPT over `pt_id`.
 */
export const SIZEOF_IOMMU_HWPT_ALLOC = 48;
export function encodeHwptAlloc(a: { flags: number; devId: number; ptId: number }): Buffer {
  const b = Buffer.alloc(SIZEOF_IOMMU_HWPT_ALLOC);
  b.writeUInt32LE(SIZEOF_IOMMU_HWPT_ALLOC, 0);
  b.writeUInt32LE(a.flags >>> 0, 4);
  b.writeUInt32LE(a.devId, 8);
  b.writeUInt32LE(a.ptId, 12);
  b.writeUInt32LE(IOMMU_HWPT_DATA_NONE, 24);
  return b;
}
export function decodeHwptAlloc(b: Buffer): { hwptId: number } {
  return { hwptId: b.readUInt32LE(16) };
}

/** struct iommu_hwpt_set_dirty_tracking { u32 size, flags, hwpt_id, __reserved; } */
export const SIZEOF_IOMMU_HWPT_SET_DIRTY_TRACKING = 16;
export function encodeHwptSetDirtyTracking(hwptId: number, enable: boolean): Buffer {
  const b = Buffer.alloc(SIZEOF_IOMMU_HWPT_SET_DIRTY_TRACKING);
  b.writeUInt32LE(SIZEOF_IOMMU_HWPT_SET_DIRTY_TRACKING, 0);
  b.writeUInt32LE(enable ? IOMMU_HWPT_DIRTY_TRACKING_ENABLE : 0, 4);
  b.writeUInt32LE(hwptId, 8);
  return b;
}

/**
 * struct iommu_hwpt_get_dirty_bitmap { u32 size, hwpt_id, flags, __reserved; u64 iova, length,
 * page_size, data; }: `data` is the user address of the bitmap (bit k = page k, u64 words).
 */
export const SIZEOF_IOMMU_HWPT_GET_DIRTY_BITMAP = 48;
export function encodeHwptGetDirtyBitmap(g: { hwptId: number; flags: number; iova: bigint; length: bigint; pageSize: bigint; data: bigint }): Buffer {
  const b = Buffer.alloc(SIZEOF_IOMMU_HWPT_GET_DIRTY_BITMAP);
  b.writeUInt32LE(SIZEOF_IOMMU_HWPT_GET_DIRTY_BITMAP, 0);
  b.writeUInt32LE(g.hwptId, 4);
  b.writeUInt32LE(g.flags >>> 0, 8);
  b.writeBigUInt64LE(g.iova, 16);
  b.writeBigUInt64LE(g.length, 24);
  b.writeBigUInt64LE(g.pageSize, 32);
  b.writeBigUInt64LE(g.data, 40);
  return b;
}

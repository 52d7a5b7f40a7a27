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

export const IOMMUFD_IOCTL_NAMES: ReadonlyMap<number, string> = new Map([
  [IOMMU_DESTROY, 'IOMMU_DESTROY'],
  [IOMMU_IOAS_ALLOC, 'IOMMU_IOAS_ALLOC'],
  [IOMMU_IOAS_ALLOW_IOVAS, 'IOMMU_IOAS_ALLOW_IOVAS'],
  [IOMMU_IOAS_COPY, 'IOMMU_IOAS_COPY'],
  [IOMMU_IOAS_IOVA_RANGES, 'IOMMU_IOAS_IOVA_RANGES'],
  [IOMMU_IOAS_MAP, 'IOMMU_IOAS_MAP'],
  [IOMMU_IOAS_UNMAP, 'IOMMU_IOAS_UNMAP'],
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

/**
 * Encoders and decoders for the VFIO uAPI structs the library passes to ioctl(2)
 * (include/uapi/linux/vfio.h, Linux 6.12). All fields are host-endian in the kernel ABI; the
 * library runs on little-endian Linux hosts only (x86_64, aarch64), so LE accessors are used
 * explicitly everywhere. `SIZEOF_*` and `OFFSETOF_*` values are checked against the system
 * header by test/native/uapi-header.test.ts where that header has the struct.
 */
import { VFIO_DEVICE_FEATURE_GET, VFIO_DEVICE_FEATURE_PROBE, VFIO_DEVICE_FEATURE_SET } from './vfio';

// ---------------------------------------------------------------- struct vfio_device_info
/** struct vfio_device_info { u32 argsz, flags, num_regions, num_irqs, cap_offset, pad; } */
export const SIZEOF_DEVICE_INFO = 24;
export interface DeviceInfo {
  /** VFIO_DEVICE_FLAGS_* bits. */
  flags: number;
  numRegions: number;
  numIrqs: number;
  /** Offset of the first capability in the returned buffer, 0 when none. */
  capOffset: number;
}
export function encodeDeviceInfoQuery(argsz = SIZEOF_DEVICE_INFO): Buffer {
  const b = Buffer.alloc(Math.max(argsz, SIZEOF_DEVICE_INFO));
  b.writeUInt32LE(b.length, 0);
  return b;
}
export function decodeDeviceInfo(b: Buffer): DeviceInfo {
  return {
    flags: b.readUInt32LE(4),
    numRegions: b.readUInt32LE(8),
    numIrqs: b.readUInt32LE(12),
    capOffset: b.readUInt32LE(16),
  };
}
export function encodeDeviceInfo(b: Buffer, info: DeviceInfo): void {
  b.writeUInt32LE(info.flags >>> 0, 4);
  b.writeUInt32LE(info.numRegions, 8);
  b.writeUInt32LE(info.numIrqs, 12);
  b.writeUInt32LE(info.capOffset, 16);
}

// ---------------------------------------------------------------- struct vfio_region_info
/** struct vfio_region_info { u32 argsz, flags, index, cap_offset; u64 size, offset; } */
export const SIZEOF_REGION_INFO = 32;
export interface RegionInfo {
  index: number;
  /** VFIO_REGION_INFO_FLAG_* bits. */
  flags: number;
  /** Region size in bytes. */
  size: number;
  /** File offset of the region on the device fd (vfio-pci: index << 40). */
  offset: number;
  capOffset: number;
}
export function encodeRegionInfoQuery(index: number): Buffer {
  const b = Buffer.alloc(SIZEOF_REGION_INFO);
  b.writeUInt32LE(SIZEOF_REGION_INFO, 0);
  b.writeUInt32LE(index, 8);
  return b;
}
export function decodeRegionInfo(b: Buffer): RegionInfo {
  return {
    flags: b.readUInt32LE(4),
    index: b.readUInt32LE(8),
    capOffset: b.readUInt32LE(12),
    size: Number(b.readBigUInt64LE(16)),
    offset: Number(b.readBigUInt64LE(24)),
  };
}
export function encodeRegionInfo(b: Buffer, r: RegionInfo): void {
  b.writeUInt32LE(r.flags >>> 0, 4);
  b.writeUInt32LE(r.index, 8);
  b.writeUInt32LE(r.capOffset, 12);
  b.writeBigUInt64LE(BigInt(r.size), 16);
  b.writeBigUInt64LE(BigInt(r.offset), 24);
}

// ---------------------------------------------------------------- struct vfio_irq_info
/** struct vfio_irq_info { u32 argsz, flags, index, count; } */
export const SIZEOF_IRQ_INFO = 16;
export interface IrqInfo {
  index: number;
  /** VFIO_IRQ_INFO_* bits. */
  flags: number;
  /** Number of vectors (0 when the device does not have this interrupt). */
  count: number;
}
export function encodeIrqInfoQuery(index: number): Buffer {
  const b = Buffer.alloc(SIZEOF_IRQ_INFO);
  b.writeUInt32LE(SIZEOF_IRQ_INFO, 0);
  b.writeUInt32LE(index, 8);
  return b;
}
export function decodeIrqInfo(b: Buffer): IrqInfo {
  return { flags: b.readUInt32LE(4), index: b.readUInt32LE(8), count: b.readUInt32LE(12) };
}
export function encodeIrqInfo(b: Buffer, i: IrqInfo): void {
  b.writeUInt32LE(i.flags >>> 0, 4);
  b.writeUInt32LE(i.index, 8);
  b.writeUInt32LE(i.count, 12);
}

// ---------------------------------------------------------------- struct vfio_irq_set
/** struct vfio_irq_set { u32 argsz, flags, index, start, count; u8 data[]; } */
export const SIZEOF_IRQ_SET = 20;
export interface IrqSet {
  /** VFIO_IRQ_SET_DATA_* | VFIO_IRQ_SET_ACTION_* bits. */
  flags: number;
  index: number;
  start: number;
  count: number;
  /** DATA_EVENTFD: one fd per vector (-1 de-assigns). */
  eventfds?: number[];
  /** DATA_BOOL: one boolean per vector. */
  bools?: boolean[];
}
export function encodeIrqSet(s: IrqSet): Buffer {
  const dataLen = s.eventfds ? s.eventfds.length * 4 : s.bools ? s.bools.length : 0;
  const b = Buffer.alloc(SIZEOF_IRQ_SET + dataLen);
  b.writeUInt32LE(b.length, 0);
  b.writeUInt32LE(s.flags >>> 0, 4);
  b.writeUInt32LE(s.index, 8);
  b.writeUInt32LE(s.start, 12);
  b.writeUInt32LE(s.count, 16);
  s.eventfds?.forEach((fd, i) => b.writeInt32LE(fd, SIZEOF_IRQ_SET + 4 * i));
  s.bools?.forEach((v, i) => b.writeUInt8(v ? 1 : 0, SIZEOF_IRQ_SET + i));
  return b;
}
/** Decode the fixed part; the caller reads `data` per the DATA_* flag. */
export function decodeIrqSet(b: Buffer): IrqSet & { argsz: number; data: Buffer } {
  return {
    argsz: b.readUInt32LE(0),
    flags: b.readUInt32LE(4),
    index: b.readUInt32LE(8),
    start: b.readUInt32LE(12),
    count: b.readUInt32LE(16),
    data: b.subarray(SIZEOF_IRQ_SET),
  };
}

// ---------------------------------------------------------------- struct vfio_device_feature
/** struct vfio_device_feature { u32 argsz, flags; u8 data[]; } */
export const SIZEOF_DEVICE_FEATURE = 8;
export type FeatureOp = 'get' | 'set' | 'probe-get' | 'probe-set' | 'probe';
const OP_FLAGS: Record<FeatureOp, number> = {
  get: VFIO_DEVICE_FEATURE_GET,
  set: VFIO_DEVICE_FEATURE_SET,
  'probe-get': VFIO_DEVICE_FEATURE_PROBE | VFIO_DEVICE_FEATURE_GET,
  'probe-set': VFIO_DEVICE_FEATURE_PROBE | VFIO_DEVICE_FEATURE_SET,
  probe: VFIO_DEVICE_FEATURE_PROBE,
};
/** Header + payload of `payloadSize` bytes (copied from `payload` when given). */
export function encodeFeature(feature: number, op: FeatureOp, payloadSize: number, payload?: Buffer): Buffer {
  const b = Buffer.alloc(SIZEOF_DEVICE_FEATURE + payloadSize);
  b.writeUInt32LE(b.length, 0);
  b.writeUInt32LE((OP_FLAGS[op] | feature) >>> 0, 4);
  payload?.copy(b, SIZEOF_DEVICE_FEATURE, 0, payloadSize);
  return b;
}
export function decodeFeatureHeader(b: Buffer): { argsz: number; flags: number; payload: Buffer } {
  return { argsz: b.readUInt32LE(0), flags: b.readUInt32LE(4), payload: b.subarray(SIZEOF_DEVICE_FEATURE) };
}

/** struct vfio_device_feature_migration { u64 flags; } (VFIO_MIGRATION_* bits) */
export const SIZEOF_FEATURE_MIGRATION = 8;
/** struct vfio_device_feature_mig_state { u32 device_state; s32 data_fd; } */
export const SIZEOF_FEATURE_MIG_STATE = 8;
export const OFFSETOF_MIG_STATE_DATA_FD = 4;
/** struct vfio_device_feature_mig_data_size { u64 stop_copy_length; } */
export const SIZEOF_FEATURE_MIG_DATA_SIZE = 8;

export function encodeMigStateSet(state: number): Buffer {
  const b = encodeFeature(2 /* VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE */, 'set', SIZEOF_FEATURE_MIG_STATE);
  b.writeUInt32LE(state, SIZEOF_DEVICE_FEATURE);
  b.writeInt32LE(-1, SIZEOF_DEVICE_FEATURE + OFFSETOF_MIG_STATE_DATA_FD);
  return b;
}
export function decodeMigState(b: Buffer): { deviceState: number; dataFd: number } {
  return {
    deviceState: b.readUInt32LE(SIZEOF_DEVICE_FEATURE),
    dataFd: b.readInt32LE(SIZEOF_DEVICE_FEATURE + OFFSETOF_MIG_STATE_DATA_FD),
  };
}
/** The kernel's side of MIG_DEVICE_STATE: `device_state` and `data_fd` into a feature buffer. */
export function encodeMigState(b: Buffer, m: { deviceState: number; dataFd: number }): void {
  b.writeUInt32LE(m.deviceState >>> 0, SIZEOF_DEVICE_FEATURE);
  b.writeInt32LE(m.dataFd, SIZEOF_DEVICE_FEATURE + OFFSETOF_MIG_STATE_DATA_FD);
}
/** struct vfio_device_feature_migration in a feature buffer: the VFIO_MIGRATION_* flags. */
export function decodeMigrationFlags(b: Buffer): number {
  return Number(b.readBigUInt64LE(SIZEOF_DEVICE_FEATURE));
}
export function encodeMigrationFlags(b: Buffer, flags: number): void {
  b.writeBigUInt64LE(BigInt(flags >>> 0), SIZEOF_DEVICE_FEATURE);
}
/** struct vfio_device_feature_mig_data_size in a feature buffer: stop_copy_length in bytes. */
export function decodeMigDataSize(b: Buffer): number {
  return Number(b.readBigUInt64LE(SIZEOF_DEVICE_FEATURE));
}
export function encodeMigDataSize(b: Buffer, stopCopyLength: number): void {
  b.writeBigUInt64LE(BigInt(stopCopyLength), SIZEOF_DEVICE_FEATURE);
}

// ---------------------------------------------------------------- DMA logging payloads
/** struct vfio_device_feature_dma_logging_control { u64 page_size; u32 num_ranges, __reserved; u64 ranges; } */
export const SIZEOF_DMA_LOGGING_CONTROL = 24;
/** struct vfio_device_feature_dma_logging_range { u64 iova, length; } */
export const SIZEOF_DMA_LOGGING_RANGE = 16;
/** struct vfio_device_feature_dma_logging_report { u64 iova, length, page_size, bitmap; } */
export const SIZEOF_DMA_LOGGING_REPORT = 32;
export interface DmaRange {
  iova: bigint;
  length: bigint;
}
/** Encode the control payload; `rangesAddr` is the user address of the encoded ranges array. */
export function encodeDmaLoggingControl(pageSize: bigint, numRanges: number, rangesAddr: bigint): Buffer {
  const b = Buffer.alloc(SIZEOF_DMA_LOGGING_CONTROL);
  b.writeBigUInt64LE(pageSize, 0);
  b.writeUInt32LE(numRanges, 8);
  b.writeBigUInt64LE(rangesAddr, 16);
  return b;
}
export function encodeDmaLoggingRanges(ranges: readonly DmaRange[]): Buffer {
  const b = Buffer.alloc(ranges.length * SIZEOF_DMA_LOGGING_RANGE);
  ranges.forEach((r, i) => {
    b.writeBigUInt64LE(r.iova, i * SIZEOF_DMA_LOGGING_RANGE);
    b.writeBigUInt64LE(r.length, i * SIZEOF_DMA_LOGGING_RANGE + 8);
  });
  return b;
}
export function encodeDmaLoggingReport(r: DmaRange & { pageSize: bigint; bitmapAddr: bigint }): Buffer {
  const b = Buffer.alloc(SIZEOF_DMA_LOGGING_REPORT);
  b.writeBigUInt64LE(r.iova, 0);
  b.writeBigUInt64LE(r.length, 8);
  b.writeBigUInt64LE(r.pageSize, 16);
  b.writeBigUInt64LE(r.bitmapAddr, 24);
  return b;
}
/** The control payload as the kernel reads it (and copies it back, with the driver's page_size). */
export function decodeDmaLoggingControl(b: Buffer): { pageSize: bigint; numRanges: number; rangesAddr: bigint } {
  return { pageSize: b.readBigUInt64LE(0), numRanges: b.readUInt32LE(8), rangesAddr: b.readBigUInt64LE(16) };
}
/** `count` ranges from an encoded array (the caller checked that `b` holds them). */
export function decodeDmaLoggingRanges(b: Buffer, count: number): DmaRange[] {
  const out: DmaRange[] = [];
  for (let i = 0; i < count; i++) {
    out.push({ iova: b.readBigUInt64LE(i * SIZEOF_DMA_LOGGING_RANGE), length: b.readBigUInt64LE(i * SIZEOF_DMA_LOGGING_RANGE + 8) });
  }
  return out;
}
export function decodeDmaLoggingReport(b: Buffer): DmaRange & { pageSize: bigint; bitmapAddr: bigint } {
  return { iova: b.readBigUInt64LE(0), length: b.readBigUInt64LE(8), pageSize: b.readBigUInt64LE(16), bitmapAddr: b.readBigUInt64LE(24) };
}

// ---------------------------------------------------------------- struct vfio_precopy_info
/** struct vfio_precopy_info { u32 argsz, flags; u64 initial_bytes, dirty_bytes; } */
export const SIZEOF_PRECOPY_INFO = 24;
export interface PrecopyInfo {
  /** Bytes of the initial (must-transfer) precopy data still to be read. */
  initialBytes: number;
  /** Estimate of dirty state bytes since the last read. */
  dirtyBytes: number;
  /** The `flags` the driver returned (meaningful only after the PRECOPY_INFOv2 opt-in; else the echoed 0). */
  flags?: number;
}
/** flags are zeroed: some drivers echo them back (VFIO-NOTES "data_fd"). */
export function encodePrecopyInfoQuery(): Buffer {
  const b = Buffer.alloc(SIZEOF_PRECOPY_INFO);
  b.writeUInt32LE(SIZEOF_PRECOPY_INFO, 0);
  return b;
}
export function decodePrecopyInfo(b: Buffer): PrecopyInfo {
  return { initialBytes: Number(b.readBigUInt64LE(8)), dirtyBytes: Number(b.readBigUInt64LE(16)) };
}
/** The flags word of a VFIO_MIG_GET_PRECOPY_INFO answer. */
export function precopyInfoFlags(b: Buffer): number {
  return b.readUInt32LE(4);
}
export function encodePrecopyInfo(b: Buffer, p: PrecopyInfo): void {
  b.writeBigUInt64LE(BigInt(p.initialBytes), 8);
  b.writeBigUInt64LE(BigInt(p.dirtyBytes), 16);
}

// ---------------------------------------------------------------- group / container / cdev
/** struct vfio_group_status { u32 argsz, flags; } */
export const SIZEOF_GROUP_STATUS = 8;
export function encodeGroupStatusQuery(): Buffer {
  const b = Buffer.alloc(SIZEOF_GROUP_STATUS);
  b.writeUInt32LE(SIZEOF_GROUP_STATUS, 0);
  return b;
}

/** struct vfio_device_bind_iommufd { u32 argsz, flags; s32 iommufd; u32 out_devid; } */
export const SIZEOF_DEVICE_BIND_IOMMUFD = 16;
export function encodeBindIommufd(iommufd: number): Buffer {
  const b = Buffer.alloc(SIZEOF_DEVICE_BIND_IOMMUFD);
  b.writeUInt32LE(SIZEOF_DEVICE_BIND_IOMMUFD, 0);
  b.writeInt32LE(iommufd, 8);
  return b;
}
export function decodeBindIommufd(b: Buffer): { devid: number } {
  return { devid: b.readUInt32LE(12) };
}

/** struct vfio_device_attach_iommufd_pt { u32 argsz, flags, pt_id; } */
export const SIZEOF_DEVICE_ATTACH_IOMMUFD_PT = 12;
export function encodeAttachIommufdPt(ptId: number): Buffer {
  const b = Buffer.alloc(SIZEOF_DEVICE_ATTACH_IOMMUFD_PT);
  b.writeUInt32LE(SIZEOF_DEVICE_ATTACH_IOMMUFD_PT, 0);
  b.writeUInt32LE(ptId, 8);
  return b;
}

/** struct vfio_iommu_type1_dma_map { u32 argsz, flags; u64 vaddr, iova, size; } */
export const SIZEOF_IOMMU_TYPE1_DMA_MAP = 32;
export const VFIO_DMA_MAP_FLAG_READ = 1 << 0;
export const VFIO_DMA_MAP_FLAG_WRITE = 1 << 1;
export function encodeType1DmaMap(vaddr: bigint, iova: bigint, size: bigint, flags: number): Buffer {
  const b = Buffer.alloc(SIZEOF_IOMMU_TYPE1_DMA_MAP);
  b.writeUInt32LE(SIZEOF_IOMMU_TYPE1_DMA_MAP, 0);
  b.writeUInt32LE(flags, 4);
  b.writeBigUInt64LE(vaddr, 8);
  b.writeBigUInt64LE(iova, 16);
  b.writeBigUInt64LE(size, 24);
  return b;
}
/** struct vfio_iommu_type1_dma_unmap { u32 argsz, flags; u64 iova, size; } */
export const SIZEOF_IOMMU_TYPE1_DMA_UNMAP = 24;
export function encodeType1DmaUnmap(iova: bigint, size: bigint): Buffer {
  const b = Buffer.alloc(SIZEOF_IOMMU_TYPE1_DMA_UNMAP);
  b.writeUInt32LE(SIZEOF_IOMMU_TYPE1_DMA_UNMAP, 0);
  b.writeBigUInt64LE(iova, 8);
  b.writeBigUInt64LE(size, 16);
  return b;
}

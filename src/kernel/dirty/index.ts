/**
 * Device dirty-page tracking, the kernel layer: a typed dirty bitmap, device DMA logging
 * (VFIO_DEVICE_FEATURE_DMA_LOGGING_*), IOMMU dirty tracking (iommufd HWPT) and the range
 * arithmetic between a VMM's RAM regions and what the kernel accepts.
 */
export { DirtyBitmap, isPowerOfTwo, type DirtyRun } from './bitmap';
export { MIN_DIRTY_PAGE_SIZE, type DirtyTarget, type ReportFailurePolicy, type ReportResult } from './report';
export {
  DMA_LOGGING_MAX_RANGES,
  checkLoggingRanges,
  collapseRanges,
  loggingRanges,
  normaliseRanges,
  rangeCovered,
  type DmaRange,
  type RangeVerdict,
  type TrackedRegion,
} from './ranges';
export { DmaLogging, type LoggingState } from './logging';
export { hasDmaLogging } from './probe';
export { dirtyMethodOf, type DirtyMethod } from './method';
export {
  HwptDirtyTracker,
  allocHwpt,
  checkIommuRead,
  destroyObject,
  getHwInfo,
  readDirtyBitmap,
  setDirtyTracking,
  type Iommufd,
  type IommuDirtyTracking,
  type IommuHwInfo,
} from './hwpt';

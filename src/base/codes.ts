/**
 * Every error code of the library, in one registry. A `VfioError.code` is either the errno name
 * of a failed syscall ('EINVAL', 'ENOTTY', ...: Node's table of Linux errno names) or one of the
 * `EVFIO_*` codes below, each a refusal or failure decided in userspace. The registry gives each
 * code its kind and one line of meaning; `VfioErrorCode` is the union of both.
 */
import type { constants } from 'node:os';

/** Where an error comes from (VfioError.kind). */
export type VfioErrorKind = 'syscall' | 'protocol' | 'format' | 'mismatch' | 'usage' | 'unsupported' | 'peer' | 'cancelled';

export const EVFIO_CODES = {
  // usage: bad input from the caller
  EVFIO_USAGE: ['usage', 'a command line or API argument is wrong'],
  EVFIO_NO_DEVICE: ['usage', 'the spec names no VFIO device'],
  EVFIO_CLOSED: ['usage', 'the device was closed'],
  EVFIO_REGION_RANGE: ['usage', 'a region access lies outside the region'],
  EVFIO_REGION_ACCESS: ['usage', 'the region does not allow that access'],
  EVFIO_DMA_ALIGN: ['usage', 'a DMA mapping is not page aligned'],
  EVFIO_NOT_A_FILE: ['usage', 'a path that must be a regular file is something else'],
  EVFIO_DUPLICATE_ID: ['usage', 'two devices of one VM share an id'],
  EVFIO_WRITER_STATE: ['usage', 'a snapshot writer call out of order'],
  EVFIO_CONFIG_ACCESS: ['usage', 'a config-space access of a bad size or alignment'],
  EVFIO_MSIX_ACCESS: ['usage', 'an MSI-X table access of a bad size or alignment'],
  EVFIO_ADDRESS_IN_USE: ['usage', 'an address range is allocated already'],
  EVFIO_NO_MAPPING: ['usage', 'no mapping at that address'],
  EVFIO_DIRTY_RANGES: ['usage', 'DMA logging ranges the kernel would refuse (count, alignment, overlap, overflow)'],
  EVFIO_DIRTY_PAGE_SIZE: ['usage', 'a dirty-tracking page size that is not a power of two of at least 4 KiB'],
  EVFIO_DIRTY_BITMAP: ['usage', 'a dirty bitmap of the wrong size or range'],
  EVFIO_DIRTY_ACTIVE: ['usage', 'dirty tracking is already started'],
  EVFIO_DIRTY_NOT_STARTED: ['usage', 'dirty tracking is not started'],
  EVFIO_DIRTY_UNTRACKED: ['usage', 'a dirty report outside the tracked ranges (it would falsely say clean)'],
  // protocol: a request the kernel rules forbid, refused before the kernel is asked
  EVFIO_BAD_TRANSITION: ['protocol', 'the kernel would refuse this migration state change (EINVAL)'],
  EVFIO_UNSAFE_TRANSITION: ['protocol', 'a state change that hangs unfixed kernels'],
  EVFIO_NO_SESSION: ['protocol', 'no data_fd session of the needed kind is open'],
  EVFIO_NOT_PAUSED: ['protocol', 'the devices must be paused (STOP) first'],
  EVFIO_BUSY: ['protocol', 'another migration job is running on these devices'],
  // unsupported: the device, kernel or build cannot do it
  EVFIO_NOT_MIGRATABLE: ['unsupported', 'the device has no VFIO migration support'],
  EVFIO_NO_P2P: ['unsupported', 'several devices, and one cannot quiesce peer-to-peer traffic'],
  EVFIO_VIOMMU: ['unsupported', 'the guest has a vIOMMU and device DMA logging would track IOVAs, not guest RAM (or, relaxed, the guest mapped through it)'],
  EVFIO_NO_DIRTY_TRACKING: ['unsupported', 'a device cannot track the pages its DMA writes, and the policy refuses that'],
  EVFIO_NO_BINDING: ['unsupported', 'neither the addon nor koffi could be loaded'],
  EVFIO_NO_CDEV: ['unsupported', 'the device has no VFIO cdev (iommufd path)'],
  EVFIO_NO_GROUP: ['unsupported', 'the device has no IOMMU group (legacy path)'],
  EVFIO_NO_TYPE1V2: ['unsupported', 'the container lacks VFIO_TYPE1v2_IOMMU'],
  EVFIO_GROUP_NOT_VIABLE: ['unsupported', 'a device of the IOMMU group is bound to another driver'],
  EVFIO_API_VERSION: ['unsupported', 'unknown VFIO API version'],
  EVFIO_NEEDS_MODEL: ['unsupported', 'a device-model snapshot cannot be loaded into a bare device'],
  EVFIO_NO_HWPT: ['unsupported', 'the device has no IOMMU page table of its own (an mdev, or the legacy path)'],
  EVFIO_NO_IOMMU_DIRTY: ['unsupported', 'the IOMMU does not track dirty pages (no IOMMU_HW_CAP_DIRTY_TRACKING, or a HWPT without it)'],
  EVFIO_DEMO: ['unsupported', 'the demo device lacks what the demo needs'],
  // peer and transport: the other end of a live migration, and the connection to it
  EVFIO_PEER_CLOSED: ['peer', 'the peer closed the connection before the bytes expected'],
  EVFIO_CHANNEL_BROKEN: ['peer', 'the connection lost its place in the stream after an earlier failure'],
  EVFIO_TLS: ['peer', 'TLS credentials unusable, a TLS handshake failed, or a peer not authenticated'],
  EVFIO_TRANSPORT: ['peer', 'another failure of the connection'],
  EVFIO_RESOLVE: ['usage', 'a host name that does not resolve'],
  EVFIO_PEER_REFUSED: ['peer', 'the migration destination refused the devices before anything was touched'],
  EVFIO_PEER_FAILED: ['peer', 'the migration peer failed and said why'],
  EVFIO_PEER_CANCELLED: ['peer', 'the migration peer cancelled (the source, or a destination that ran none of its devices)'],
  EVFIO_OUTCOME_UNKNOWN: ['peer', 'the destination that runs its devices on its own had every device\'s state and went silent before it said it runs them: it may be running'],
  EVFIO_PROTOCOL: ['format', 'a live-migration frame the receiver cannot accept'],
  EVFIO_PROTOCOL_VERSION: ['format', 'a live-migration peer of another protocol or version'],
  EVFIO_NOT_CONVERGED: ['protocol', 'the devices did not converge within the iteration or time limit'],
  EVFIO_SWITCHOVER_ACK_PENDING: ['protocol', 'a switchover asked before the destination acknowledged the initial data (the migration goes on)'],
  EVFIO_POSTCOPY: ['unsupported', 'postcopy migration of VFIO devices'],
  // format: a snapshot or stream that is malformed
  EVFIO_BAD_SNAPSHOT: ['format', 'the snapshot file is malformed'],
  EVFIO_SNAPSHOT_VERSION: ['format', 'the snapshot format version is not readable here'],
  EVFIO_SNAPSHOT_UNSUPPORTED: ['format', 'a required section or feature is unknown to this reader'],
  EVFIO_SNAPSHOT_TRUNCATED: ['format', 'the snapshot ends early'],
  EVFIO_SNAPSHOT_CHECKSUM: ['format', 'a snapshot checksum does not match'],
  EVFIO_CHECKSUM: ['format', 'a checksum does not match'],
  EVFIO_TRUNCATED: ['format', 'a record source ended inside a record'],
  EVFIO_RECORD_LENGTH: ['format', 'a record longer than allowed'],
  EVFIO_SNAPSHOT_ALGORITHM: ['format', 'a snapshot recorded with a checksum algorithm this reader does not know'],
  EVFIO_CONFIG_FORMAT: ['format', 'a saved config-space image is malformed'],
  EVFIO_CONFIG_VERSION: ['format', 'a saved config-space image of an unknown version'],
  EVFIO_CONFIG_SIZE: ['format', 'a config space of an unsupported size'],
  EVFIO_CONFIG_HEADER: ['format', 'a config space with an unsupported header type'],
  EVFIO_CONFIG_BAR: ['format', 'a BAR layout that cannot be virtualised'],
  EVFIO_BAD_CAP_LIST: ['format', 'a malformed capability list'],
  EVFIO_MSIX_FORMAT: ['format', 'a saved MSI-X table is malformed'],
  EVFIO_MSIX_VERSION: ['format', 'a saved MSI-X table of an unknown version'],
  EVFIO_MSIX_SIZE: ['format', 'a saved MSI-X table of another size'],
  // mismatch: a saved device and a destination that do not fit
  EVFIO_DEVICE_MISMATCH: ['mismatch', 'the destination is another kind of device, or the devices do not pair up'],
  EVFIO_CONFIG_MISMATCH: ['mismatch', 'the destination config space or BAR layout differs'],
} as const satisfies Record<string, readonly [VfioErrorKind, string]>;

/** The library's own codes. */
export type EvfioCode = keyof typeof EVFIO_CODES;

/** Linux errno names ('EINVAL'), from Node's table. */
export type ErrnoName = keyof typeof constants.errno;

/** Every code a VfioError can carry. */
export type VfioErrorCode = EvfioCode | ErrnoName;

/**
 * The kind a code implies: the registry's for EVFIO_* codes, 'cancelled' for ECANCELED (a job
 * its caller cancelled, wherever the cancellation surfaced), 'syscall' for other errno names.
 */
export function kindOfCode(code: VfioErrorCode): VfioErrorKind {
  if (code === 'ECANCELED') return 'cancelled';
  return code in EVFIO_CODES ? EVFIO_CODES[code as EvfioCode][0] : 'syscall';
}

/**
 * Constants of the Linux VFIO uAPI (include/uapi/linux/vfio.h, Linux 6.12), carried here so
 * that an older system header (no PRE_COPY, no MIG_DATA_SIZE, no cdev) does not matter.
 * test/native/uapi-header.test.ts checks every value the host header does have against these.
 */

/** `VFIO_TYPE` (';') and `VFIO_BASE` (100): every VFIO ioctl is `_IO(VFIO_TYPE, VFIO_BASE + n)`. */
export const VFIO_TYPE = 0x3b;
export const VFIO_BASE = 100;

/** `_IO(type, nr)` of asm-generic/ioctl.h: no direction, no size. */
export function IO(type: number, nr: number): number {
  return ((type & 0xff) << 8) | (nr & 0xff);
}
const vfioIo = (n: number): number => IO(VFIO_TYPE, VFIO_BASE + n);

// ---- container / group / device ioctls (vfio.h "IOCTL" sections) ----
export const VFIO_GET_API_VERSION = vfioIo(0);
export const VFIO_CHECK_EXTENSION = vfioIo(1);
export const VFIO_SET_IOMMU = vfioIo(2);
export const VFIO_GROUP_GET_STATUS = vfioIo(3);
export const VFIO_GROUP_SET_CONTAINER = vfioIo(4);
export const VFIO_GROUP_UNSET_CONTAINER = vfioIo(5);
export const VFIO_GROUP_GET_DEVICE_FD = vfioIo(6);
export const VFIO_DEVICE_GET_INFO = vfioIo(7);
export const VFIO_DEVICE_GET_REGION_INFO = vfioIo(8);
export const VFIO_DEVICE_GET_IRQ_INFO = vfioIo(9);
export const VFIO_DEVICE_SET_IRQS = vfioIo(10);
export const VFIO_DEVICE_RESET = vfioIo(11);
export const VFIO_DEVICE_GET_PCI_HOT_RESET_INFO = vfioIo(12);
export const VFIO_DEVICE_PCI_HOT_RESET = vfioIo(13);
export const VFIO_DEVICE_QUERY_GFX_PLANE = vfioIo(14);
export const VFIO_DEVICE_GET_GFX_DMABUF = vfioIo(15);
export const VFIO_DEVICE_IOEVENTFD = vfioIo(16);
export const VFIO_DEVICE_FEATURE = vfioIo(17);
export const VFIO_DEVICE_BIND_IOMMUFD = vfioIo(18);
export const VFIO_DEVICE_ATTACH_IOMMUFD_PT = vfioIo(19);
export const VFIO_DEVICE_DETACH_IOMMUFD_PT = vfioIo(20);
/** On a migration data_fd, PRE_COPY states only (vfio.h "VFIO_MIG_GET_PRECOPY_INFO"). */
export const VFIO_MIG_GET_PRECOPY_INFO = vfioIo(21);
export const VFIO_IOMMU_GET_INFO = vfioIo(12);
export const VFIO_IOMMU_MAP_DMA = vfioIo(13);
export const VFIO_IOMMU_UNMAP_DMA = vfioIo(14);

/** Names of the ioctls, for error messages. Device-fd and data_fd ioctls share numbers with container ones, so this maps the device view. */
export const IOCTL_NAMES: ReadonlyMap<number, string> = new Map([
  [VFIO_GET_API_VERSION, 'VFIO_GET_API_VERSION'],
  [VFIO_CHECK_EXTENSION, 'VFIO_CHECK_EXTENSION'],
  [VFIO_SET_IOMMU, 'VFIO_SET_IOMMU'],
  [VFIO_GROUP_GET_STATUS, 'VFIO_GROUP_GET_STATUS'],
  [VFIO_GROUP_SET_CONTAINER, 'VFIO_GROUP_SET_CONTAINER'],
  [VFIO_GROUP_UNSET_CONTAINER, 'VFIO_GROUP_UNSET_CONTAINER'],
  [VFIO_GROUP_GET_DEVICE_FD, 'VFIO_GROUP_GET_DEVICE_FD'],
  [VFIO_DEVICE_GET_INFO, 'VFIO_DEVICE_GET_INFO'],
  [VFIO_DEVICE_GET_REGION_INFO, 'VFIO_DEVICE_GET_REGION_INFO'],
  [VFIO_DEVICE_GET_IRQ_INFO, 'VFIO_DEVICE_GET_IRQ_INFO'],
  [VFIO_DEVICE_SET_IRQS, 'VFIO_DEVICE_SET_IRQS'],
  [VFIO_DEVICE_RESET, 'VFIO_DEVICE_RESET'],
  [VFIO_DEVICE_FEATURE, 'VFIO_DEVICE_FEATURE'],
  [VFIO_DEVICE_BIND_IOMMUFD, 'VFIO_DEVICE_BIND_IOMMUFD'],
  [VFIO_DEVICE_ATTACH_IOMMUFD_PT, 'VFIO_DEVICE_ATTACH_IOMMUFD_PT'],
  [VFIO_DEVICE_DETACH_IOMMUFD_PT, 'VFIO_DEVICE_DETACH_IOMMUFD_PT'],
  [VFIO_MIG_GET_PRECOPY_INFO, 'VFIO_MIG_GET_PRECOPY_INFO'],
]);

export const VFIO_API_VERSION = 0;
/** VFIO_SET_IOMMU / VFIO_CHECK_EXTENSION values. */
export const VFIO_TYPE1_IOMMU = 1;
export const VFIO_TYPE1v2_IOMMU = 3;
export const VFIO_NOIOMMU_IOMMU = 8;

/** struct vfio_group_status flags. */
export const VFIO_GROUP_FLAGS_VIABLE = 1 << 0;
export const VFIO_GROUP_FLAGS_CONTAINER_SET = 1 << 1;

// ---- struct vfio_device_info flags ----
export const VFIO_DEVICE_FLAGS_RESET = 1 << 0;
export const VFIO_DEVICE_FLAGS_PCI = 1 << 1;
export const VFIO_DEVICE_FLAGS_PLATFORM = 1 << 2;
export const VFIO_DEVICE_FLAGS_AMBA = 1 << 3;
export const VFIO_DEVICE_FLAGS_CCW = 1 << 4;
export const VFIO_DEVICE_FLAGS_AP = 1 << 5;
export const VFIO_DEVICE_FLAGS_FSL_MC = 1 << 6;
export const VFIO_DEVICE_FLAGS_CAPS = 1 << 7;
export const VFIO_DEVICE_FLAGS_CDX = 1 << 8;
export const DEVICE_FLAG_NAMES: ReadonlyArray<readonly [number, string]> = [
  [VFIO_DEVICE_FLAGS_RESET, 'RESET'],
  [VFIO_DEVICE_FLAGS_PCI, 'PCI'],
  [VFIO_DEVICE_FLAGS_PLATFORM, 'PLATFORM'],
  [VFIO_DEVICE_FLAGS_AMBA, 'AMBA'],
  [VFIO_DEVICE_FLAGS_CCW, 'CCW'],
  [VFIO_DEVICE_FLAGS_AP, 'AP'],
  [VFIO_DEVICE_FLAGS_FSL_MC, 'FSL_MC'],
  [VFIO_DEVICE_FLAGS_CAPS, 'CAPS'],
  [VFIO_DEVICE_FLAGS_CDX, 'CDX'],
];

// ---- struct vfio_region_info flags ----
export const VFIO_REGION_INFO_FLAG_READ = 1 << 0;
export const VFIO_REGION_INFO_FLAG_WRITE = 1 << 1;
export const VFIO_REGION_INFO_FLAG_MMAP = 1 << 2;
export const VFIO_REGION_INFO_FLAG_CAPS = 1 << 3;
export const REGION_FLAG_NAMES: ReadonlyArray<readonly [number, string]> = [
  [VFIO_REGION_INFO_FLAG_READ, 'READ'],
  [VFIO_REGION_INFO_FLAG_WRITE, 'WRITE'],
  [VFIO_REGION_INFO_FLAG_MMAP, 'MMAP'],
  [VFIO_REGION_INFO_FLAG_CAPS, 'CAPS'],
];

// ---- struct vfio_irq_info flags ----
export const VFIO_IRQ_INFO_EVENTFD = 1 << 0;
export const VFIO_IRQ_INFO_MASKABLE = 1 << 1;
export const VFIO_IRQ_INFO_AUTOMASKED = 1 << 2;
export const VFIO_IRQ_INFO_NORESIZE = 1 << 3;
export const IRQ_FLAG_NAMES: ReadonlyArray<readonly [number, string]> = [
  [VFIO_IRQ_INFO_EVENTFD, 'EVENTFD'],
  [VFIO_IRQ_INFO_MASKABLE, 'MASKABLE'],
  [VFIO_IRQ_INFO_AUTOMASKED, 'AUTOMASKED'],
  [VFIO_IRQ_INFO_NORESIZE, 'NORESIZE'],
];

// ---- struct vfio_irq_set flags ----
export const VFIO_IRQ_SET_DATA_NONE = 1 << 0;
export const VFIO_IRQ_SET_DATA_BOOL = 1 << 1;
export const VFIO_IRQ_SET_DATA_EVENTFD = 1 << 2;
export const VFIO_IRQ_SET_ACTION_MASK = 1 << 3;
export const VFIO_IRQ_SET_ACTION_UNMASK = 1 << 4;
export const VFIO_IRQ_SET_ACTION_TRIGGER = 1 << 5;
export const VFIO_IRQ_SET_DATA_TYPE_MASK = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_DATA_EVENTFD;
export const VFIO_IRQ_SET_ACTION_TYPE_MASK =
  VFIO_IRQ_SET_ACTION_MASK | VFIO_IRQ_SET_ACTION_UNMASK | VFIO_IRQ_SET_ACTION_TRIGGER;

// ---- vfio-pci region and IRQ indexes ----
export const VFIO_PCI_BAR0_REGION_INDEX = 0;
export const VFIO_PCI_BAR1_REGION_INDEX = 1;
export const VFIO_PCI_BAR2_REGION_INDEX = 2;
export const VFIO_PCI_BAR3_REGION_INDEX = 3;
export const VFIO_PCI_BAR4_REGION_INDEX = 4;
export const VFIO_PCI_BAR5_REGION_INDEX = 5;
export const VFIO_PCI_ROM_REGION_INDEX = 6;
export const VFIO_PCI_CONFIG_REGION_INDEX = 7;
export const VFIO_PCI_VGA_REGION_INDEX = 8;
export const VFIO_PCI_NUM_REGIONS = 9;
export const PCI_REGION_NAMES = ['BAR0', 'BAR1', 'BAR2', 'BAR3', 'BAR4', 'BAR5', 'ROM', 'CONFIG', 'VGA'] as const;

export const VFIO_PCI_INTX_IRQ_INDEX = 0;
export const VFIO_PCI_MSI_IRQ_INDEX = 1;
export const VFIO_PCI_MSIX_IRQ_INDEX = 2;
export const VFIO_PCI_ERR_IRQ_INDEX = 3;
export const VFIO_PCI_REQ_IRQ_INDEX = 4;
export const VFIO_PCI_NUM_IRQS = 5;
export const PCI_IRQ_NAMES = ['INTX', 'MSI', 'MSIX', 'ERR', 'REQ'] as const;

/**
 * vfio-pci places region N at file offset `N << 40` (VFIO_PCI_OFFSET_SHIFT in
 * drivers/vfio/pci/vfio_pci_priv.h); userspace should use the offset GET_REGION_INFO returns,
 * this is only the expected layout.
 */
export const VFIO_PCI_OFFSET_SHIFT = 40;

// ---- VFIO_DEVICE_FEATURE (vfio.h "VFIO_DEVICE_FEATURE") ----
export const VFIO_DEVICE_FEATURE_MASK = 0xffff;
export const VFIO_DEVICE_FEATURE_GET = 1 << 16;
export const VFIO_DEVICE_FEATURE_SET = 1 << 17;
export const VFIO_DEVICE_FEATURE_PROBE = 1 << 18;

export const VFIO_DEVICE_FEATURE_PCI_VF_TOKEN = 0;
export const VFIO_DEVICE_FEATURE_MIGRATION = 1;
export const VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE = 2;
export const VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY = 3;
export const VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP = 4;
export const VFIO_DEVICE_FEATURE_LOW_POWER_EXIT = 5;
export const VFIO_DEVICE_FEATURE_DMA_LOGGING_START = 6;
export const VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP = 7;
export const VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT = 8;
export const VFIO_DEVICE_FEATURE_MIG_DATA_SIZE = 9;
export const VFIO_DEVICE_FEATURE_BUS_MASTER = 10;
/**
 * SET with no payload opts in to PRECOPY_INFOv2: the `flags` of VFIO_MIG_GET_PRECOPY_INFO become
 * meaningful (VFIO_PRECOPY_INFO_REINIT). Linux 7.1 (VFIO-NOTES "Live migration"); older kernels
 * and drivers without it (6.12, mtty) answer ENOTTY.
 */
export const VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOV2 = 12;
/** struct vfio_precopy_info flags, once PRECOPY_INFOv2 is on: new initial data appeared (initial_bytes may change either way, dirty_bytes reset). */
export const VFIO_PRECOPY_INFO_REINIT = 1 << 0;

export const FEATURE_NAMES: ReadonlyMap<number, string> = new Map([
  [VFIO_DEVICE_FEATURE_PCI_VF_TOKEN, 'VFIO_DEVICE_FEATURE_PCI_VF_TOKEN'],
  [VFIO_DEVICE_FEATURE_MIGRATION, 'VFIO_DEVICE_FEATURE_MIGRATION'],
  [VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, 'VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE'],
  [VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY, 'VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY'],
  [VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP, 'VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP'],
  [VFIO_DEVICE_FEATURE_LOW_POWER_EXIT, 'VFIO_DEVICE_FEATURE_LOW_POWER_EXIT'],
  [VFIO_DEVICE_FEATURE_DMA_LOGGING_START, 'VFIO_DEVICE_FEATURE_DMA_LOGGING_START'],
  [VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP, 'VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP'],
  [VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT, 'VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT'],
  [VFIO_DEVICE_FEATURE_MIG_DATA_SIZE, 'VFIO_DEVICE_FEATURE_MIG_DATA_SIZE'],
  [VFIO_DEVICE_FEATURE_BUS_MASTER, 'VFIO_DEVICE_FEATURE_BUS_MASTER'],
  [VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOV2, 'VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2'],
]);

/** struct vfio_device_feature_migration flags (vfio.h "VFIO_DEVICE_FEATURE_MIGRATION"). */
export const VFIO_MIGRATION_STOP_COPY = 1 << 0;
export const VFIO_MIGRATION_P2P = 1 << 1;
export const VFIO_MIGRATION_PRE_COPY = 1 << 2;
export const MIGRATION_FLAG_NAMES: ReadonlyArray<readonly [number, 'STOP_COPY' | 'P2P' | 'PRE_COPY']> = [
  [VFIO_MIGRATION_STOP_COPY, 'STOP_COPY'],
  [VFIO_MIGRATION_P2P, 'P2P'],
  [VFIO_MIGRATION_PRE_COPY, 'PRE_COPY'],
];

/**
 * enum vfio_device_mig_state (vfio.h). The numeric values are ABI: ERROR 0 … PRE_COPY_P2P 7.
 */
export enum MigState {
  ERROR = 0,
  STOP = 1,
  RUNNING = 2,
  STOP_COPY = 3,
  RESUMING = 4,
  RUNNING_P2P = 5,
  PRE_COPY = 6,
  PRE_COPY_P2P = 7,
}
export const MIG_STATE_COUNT = 8;
/** Every state, in numeric order. */
export const ALL_MIG_STATES: readonly MigState[] = [0, 1, 2, 3, 4, 5, 6, 7];

/** 'RUNNING' for 2; `UNKNOWN(42)` for values outside the enum. */
export function migStateName(s: number): string {
  return s >= 0 && s < MIG_STATE_COUNT ? MigState[s] : `UNKNOWN(${s})`;
}

/** Parse 'running', 'RUNNING', 'stop-copy', 'STOP_COPY' or '2' into a state. */
export function parseMigState(text: string): MigState | undefined {
  const t = text.trim().toUpperCase().replace(/-/g, '_');
  if (/^\d+$/.test(t)) {
    const n = Number(t);
    return n < MIG_STATE_COUNT ? (n as MigState) : undefined;
  }
  const v = (MigState as unknown as Record<string, number>)[t];
  return typeof v === 'number' ? (v as MigState) : undefined;
}

/** Names of the set bits of `flags` per `table`, plus `0x..` for unknown bits. */
export function flagNames(flags: number, table: ReadonlyArray<readonly [number, string]>): string[] {
  const out: string[] = [];
  let rest = flags >>> 0;
  for (const [bit, name] of table) {
    if (flags & bit) {
      out.push(name);
      rest &= ~bit >>> 0;
    }
  }
  if (rest) out.push(`0x${rest.toString(16)}`);
  return out;
}

// ---- DMA logging (vfio.h "VFIO_DEVICE_FEATURE_DMA_LOGGING_*") ----
/** Size of struct vfio_device_feature_dma_logging_range: iova u64, length u64. */
export const DMA_LOGGING_RANGE_SIZE = 16;

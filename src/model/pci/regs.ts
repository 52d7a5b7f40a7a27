/**
 * PCI configuration space registers, bits and capability layouts, named as in Linux's
 * include/uapi/linux/pci_regs.h (the values are the PCI Local Bus / PCI Express specification's;
 * the definitions here are our own). Offsets are bytes from the start of config space, or from
 * the start of a capability for the `PCI_MSI_*`, `PCI_MSIX_*`, `PCI_PM_*` and `PCI_EXP_*` ones.
 * All registers are little-endian.
 */

// ---- sizes
/** Conventional config space: the type 0 header (64 bytes) plus the standard capability area. */
export const PCI_CFG_SPACE_SIZE = 0x100;
/** PCI Express config space: conventional space plus the extended capability area. */
export const PCI_CFG_SPACE_EXP_SIZE = 0x1000;
/** Size of the type 0 header; standard capabilities live in [0x40, 0x100). */
export const PCI_STD_HEADER_SIZEOF = 0x40;

// ---- type 0 header
export const PCI_VENDOR_ID = 0x00; // 16 bits
export const PCI_DEVICE_ID = 0x02; // 16 bits
export const PCI_COMMAND = 0x04; // 16 bits
export const PCI_COMMAND_IO = 0x0001; // respond to I/O space accesses
export const PCI_COMMAND_MEMORY = 0x0002; // respond to memory space accesses
export const PCI_COMMAND_MASTER = 0x0004; // bus mastering (DMA)
export const PCI_COMMAND_SPECIAL = 0x0008;
export const PCI_COMMAND_INVALIDATE = 0x0010;
export const PCI_COMMAND_VGA_PALETTE = 0x0020;
export const PCI_COMMAND_PARITY = 0x0040;
export const PCI_COMMAND_WAIT = 0x0080;
export const PCI_COMMAND_SERR = 0x0100;
export const PCI_COMMAND_FAST_BACK = 0x0200;
export const PCI_COMMAND_INTX_DISABLE = 0x0400;

export const PCI_STATUS = 0x06; // 16 bits
export const PCI_STATUS_IMM_READY = 0x0001;
export const PCI_STATUS_INTERRUPT = 0x0008; // INTx asserted
export const PCI_STATUS_CAP_LIST = 0x0010; // capability list present (pointer at 0x34)
export const PCI_STATUS_66MHZ = 0x0020;
export const PCI_STATUS_UDF = 0x0040;
export const PCI_STATUS_FAST_BACK = 0x0080;
export const PCI_STATUS_PARITY = 0x0100; // master data parity error (RW1C)
export const PCI_STATUS_DEVSEL_MASK = 0x0600;
export const PCI_STATUS_SIG_TARGET_ABORT = 0x0800; // RW1C
export const PCI_STATUS_REC_TARGET_ABORT = 0x1000; // RW1C
export const PCI_STATUS_REC_MASTER_ABORT = 0x2000; // RW1C
export const PCI_STATUS_SIG_SYSTEM_ERROR = 0x4000; // RW1C
export const PCI_STATUS_DETECTED_PARITY = 0x8000; // RW1C
/** The write-1-to-clear error bits of STATUS (0xf900), as QEMU's pci_init_w1cmask() sets them. */
export const PCI_STATUS_ERROR_BITS =
  PCI_STATUS_PARITY |
  PCI_STATUS_SIG_TARGET_ABORT |
  PCI_STATUS_REC_TARGET_ABORT |
  PCI_STATUS_REC_MASTER_ABORT |
  PCI_STATUS_SIG_SYSTEM_ERROR |
  PCI_STATUS_DETECTED_PARITY;

export const PCI_REVISION_ID = 0x08;
export const PCI_CLASS_PROG = 0x09; // programming interface
export const PCI_CLASS_DEVICE = 0x0a; // 16 bits: sub-class (low byte), base class (high byte)
export const PCI_CACHE_LINE_SIZE = 0x0c;
export const PCI_LATENCY_TIMER = 0x0d;
export const PCI_HEADER_TYPE = 0x0e;
export const PCI_HEADER_TYPE_MASK = 0x7f;
export const PCI_HEADER_TYPE_NORMAL = 0;
export const PCI_HEADER_TYPE_BRIDGE = 1;
export const PCI_HEADER_TYPE_CARDBUS = 2;
export const PCI_HEADER_TYPE_MFD = 0x80; // multi-function device
export const PCI_BIST = 0x0f;

// ---- base address registers (type 0 header: six dwords 0x10..0x27)
export const PCI_BASE_ADDRESS_0 = 0x10;
export const PCI_BASE_ADDRESS_1 = 0x14;
export const PCI_BASE_ADDRESS_2 = 0x18;
export const PCI_BASE_ADDRESS_3 = 0x1c;
export const PCI_BASE_ADDRESS_4 = 0x20;
export const PCI_BASE_ADDRESS_5 = 0x24;
export const PCI_NUM_BARS = 6;
/** Offset of BAR `i` (0..5). */
export const pciBarOffset = (i: number): number => PCI_BASE_ADDRESS_0 + 4 * i;
export const PCI_BASE_ADDRESS_SPACE = 0x01; // 0 = memory, 1 = I/O
export const PCI_BASE_ADDRESS_SPACE_IO = 0x01;
export const PCI_BASE_ADDRESS_SPACE_MEMORY = 0x00;
export const PCI_BASE_ADDRESS_MEM_TYPE_MASK = 0x06;
export const PCI_BASE_ADDRESS_MEM_TYPE_32 = 0x00;
export const PCI_BASE_ADDRESS_MEM_TYPE_1M = 0x02; // below 1 MiB (obsolete)
export const PCI_BASE_ADDRESS_MEM_TYPE_64 = 0x04;
export const PCI_BASE_ADDRESS_MEM_PREFETCH = 0x08;
/** Address bits of a memory BAR's low dword (the low 4 bits are flags). */
export const PCI_BASE_ADDRESS_MEM_MASK = 0xfffffff0;
/** Address bits of an I/O BAR (the low 2 bits are flags). */
export const PCI_BASE_ADDRESS_IO_MASK = 0xfffffffc;

export const PCI_CARDBUS_CIS = 0x28;
export const PCI_SUBSYSTEM_VENDOR_ID = 0x2c;
export const PCI_SUBSYSTEM_ID = 0x2e;
export const PCI_ROM_ADDRESS = 0x30;
export const PCI_ROM_ADDRESS_ENABLE = 0x01;
export const PCI_ROM_ADDRESS_MASK = 0xfffff800;
/** Smallest expansion ROM: bits 10:1 of the ROM BAR are reserved, so 2 KiB. */
export const PCI_ROM_MIN_SIZE = 0x800;
export const PCI_CAPABILITY_LIST = 0x34; // offset of the first capability
export const PCI_INTERRUPT_LINE = 0x3c;
export const PCI_INTERRUPT_PIN = 0x3d;
export const PCI_MIN_GNT = 0x3e;
export const PCI_MAX_LAT = 0x3f;

// ---- standard capability list
export const PCI_CAP_LIST_ID = 0; // capability id byte
export const PCI_CAP_LIST_NEXT = 1; // next pointer byte (low 2 bits reserved)
export const PCI_CAP_FLAGS = 2;
export const PCI_CAP_SIZEOF = 4;

export const PCI_CAP_ID_PM = 0x01;
export const PCI_CAP_ID_AGP = 0x02;
export const PCI_CAP_ID_VPD = 0x03;
export const PCI_CAP_ID_SLOTID = 0x04;
export const PCI_CAP_ID_MSI = 0x05;
export const PCI_CAP_ID_CHSWP = 0x06;
export const PCI_CAP_ID_PCIX = 0x07;
export const PCI_CAP_ID_HT = 0x08;
export const PCI_CAP_ID_VNDR = 0x09;
export const PCI_CAP_ID_DBG = 0x0a;
export const PCI_CAP_ID_CCRC = 0x0b;
export const PCI_CAP_ID_SHPC = 0x0c;
export const PCI_CAP_ID_SSVID = 0x0d;
export const PCI_CAP_ID_AGP3 = 0x0e;
export const PCI_CAP_ID_SECDEV = 0x0f;
export const PCI_CAP_ID_EXP = 0x10;
export const PCI_CAP_ID_MSIX = 0x11;
export const PCI_CAP_ID_SATA = 0x12;
export const PCI_CAP_ID_AF = 0x13;
export const PCI_CAP_ID_EA = 0x14;

// ---- Power Management capability
export const PCI_PM_PMC = 2;
export const PCI_PM_CTRL = 4;
export const PCI_PM_SIZEOF = 8;

// ---- Vendor Specific capability: id, next, length byte, then the vendor's body
export const PCI_CAP_VNDR_LEN = 2;
/** Bytes of the vendor specific header (id, next, length) that stay compared on restore. */
export const PCI_CAP_VNDR_HEADER = 3;

// ---- MSI capability
export const PCI_MSI_FLAGS = 2; // 16 bits, "Message Control"
export const PCI_MSI_FLAGS_ENABLE = 0x0001;
export const PCI_MSI_FLAGS_QMASK = 0x000e; // multiple message capable, log2 of vectors
export const PCI_MSI_FLAGS_QSIZE = 0x0070; // multiple message enable, log2 of vectors
export const PCI_MSI_FLAGS_64BIT = 0x0080;
export const PCI_MSI_FLAGS_MASKBIT = 0x0100; // per-vector masking capable
export const PCI_MSI_RFU = 3;
export const PCI_MSI_ADDRESS_LO = 4;
export const PCI_MSI_ADDRESS_LO_MASK = 0xfffffffc;
export const PCI_MSI_ADDRESS_HI = 8; // 64-bit layouts only
export const PCI_MSI_DATA_32 = 8;
export const PCI_MSI_MASK_32 = 12;
export const PCI_MSI_PENDING_32 = 16;
export const PCI_MSI_DATA_64 = 12;
export const PCI_MSI_MASK_64 = 16;
export const PCI_MSI_PENDING_64 = 20;
/** MSI allows at most 32 vectors (QMASK/QSIZE values 0..5). */
export const PCI_MSI_VECTORS_MAX = 32;

/** The four MSI capability layouts, by the 64BIT and MASKBIT flags. Sizes as QEMU's msi_cap_sizeof(). */
export interface MsiLayout {
  is64: boolean;
  perVectorMask: boolean;
  /** Offsets from the capability start; `addressHi`, `mask` and `pending` are -1 when absent. */
  addressLo: number;
  addressHi: number;
  data: number;
  mask: number;
  pending: number;
  /** Capability length in bytes: 0x0a, 0x0e, 0x14 or 0x18. */
  size: number;
}

/** The MSI layout for a Message Control value. */
export function msiLayout(flags: number): MsiLayout {
  const is64 = (flags & PCI_MSI_FLAGS_64BIT) !== 0;
  const perVectorMask = (flags & PCI_MSI_FLAGS_MASKBIT) !== 0;
  const data = is64 ? PCI_MSI_DATA_64 : PCI_MSI_DATA_32;
  const mask = perVectorMask ? (is64 ? PCI_MSI_MASK_64 : PCI_MSI_MASK_32) : -1;
  const pending = perVectorMask ? (is64 ? PCI_MSI_PENDING_64 : PCI_MSI_PENDING_32) : -1;
  // Without masking the capability ends after the 16-bit data register; with it, after Pending Bits.
  const size = perVectorMask ? pending + 4 : data + 2;
  return {
    is64,
    perVectorMask,
    addressLo: PCI_MSI_ADDRESS_LO,
    addressHi: is64 ? PCI_MSI_ADDRESS_HI : -1,
    data,
    mask,
    pending,
    size,
  };
}

/** Vectors the function can request (Multiple Message Capable); reserved encodings count as 32. */
export function msiVectorsCapable(flags: number): number {
  return 1 << Math.min((flags & PCI_MSI_FLAGS_QMASK) >> 1, 5);
}

/** Vectors software enabled (Multiple Message Enable). */
export function msiVectorsEnabled(flags: number): number {
  return 1 << Math.min((flags & PCI_MSI_FLAGS_QSIZE) >> 4, 5);
}

// ---- MSI-X capability
export const PCI_MSIX_FLAGS = 2; // 16 bits, "Message Control"
export const PCI_MSIX_FLAGS_QSIZE = 0x07ff; // table size - 1
export const PCI_MSIX_FLAGS_MASKALL = 0x4000; // function mask
export const PCI_MSIX_FLAGS_ENABLE = 0x8000;
export const PCI_MSIX_TABLE = 4; // 32 bits: offset | BIR
export const PCI_MSIX_PBA = 8; // 32 bits: offset | BIR
export const PCI_MSIX_TABLE_BIR = 0x00000007;
export const PCI_MSIX_TABLE_OFFSET = 0xfffffff8;
export const PCI_MSIX_PBA_BIR = 0x00000007;
export const PCI_MSIX_PBA_OFFSET = 0xfffffff8;
export const PCI_CAP_MSIX_SIZEOF = 12;
/** MSI-X table entry: address low/high, data, vector control; 16 bytes each. */
export const PCI_MSIX_ENTRY_SIZE = 16;
export const PCI_MSIX_ENTRY_LOWER_ADDR = 0;
export const PCI_MSIX_ENTRY_UPPER_ADDR = 4;
export const PCI_MSIX_ENTRY_DATA = 8;
export const PCI_MSIX_ENTRY_VECTOR_CTRL = 12;
export const PCI_MSIX_ENTRY_CTRL_MASKBIT = 0x00000001;
/** At most 2048 table entries (QSIZE is 11 bits). */
export const PCI_MSIX_VECTORS_MAX = 2048;

// ---- PCI Express capability
export const PCI_EXP_FLAGS = 2; // 16 bits
export const PCI_EXP_FLAGS_VERS = 0x000f; // capability version
export const PCI_EXP_FLAGS_TYPE = 0x00f0; // device/port type
export const PCI_EXP_DEVCAP = 4;
export const PCI_EXP_DEVCTL = 8;
export const PCI_EXP_DEVSTA = 10;
/** Version 1 endpoint capability: up to and including Link Status. */
export const PCI_CAP_EXP_ENDPOINT_SIZEOF_V1 = 0x14;
/** Version 2 capability: through Slot Control 2 / Status 2. */
export const PCI_CAP_EXP_ENDPOINT_SIZEOF_V2 = 0x3c;

// ---- extended capabilities (PCI Express, offsets 0x100..0xfff)
export const PCI_EXT_CAP_START = 0x100;
/** Header dword: id in bits 15:0, version in 19:16, next pointer in 31:20 (dword aligned). */
export const pciExtCapId = (header: number): number => header & 0xffff;
export const pciExtCapVer = (header: number): number => (header >>> 16) & 0xf;
export const pciExtCapNext = (header: number): number => (header >>> 20) & 0xffc;
export const PCI_EXT_CAP_HEADER_SIZEOF = 4;

export const PCI_EXT_CAP_ID_ERR = 0x01;
export const PCI_EXT_CAP_ID_VC = 0x02;
export const PCI_EXT_CAP_ID_DSN = 0x03;
export const PCI_EXT_CAP_ID_PWR = 0x04;
export const PCI_EXT_CAP_ID_RCLD = 0x05;
export const PCI_EXT_CAP_ID_RCILC = 0x06;
export const PCI_EXT_CAP_ID_RCEC = 0x07;
export const PCI_EXT_CAP_ID_MFVC = 0x08;
export const PCI_EXT_CAP_ID_VC9 = 0x09;
export const PCI_EXT_CAP_ID_RCRB = 0x0a;
export const PCI_EXT_CAP_ID_VNDR = 0x0b;
export const PCI_EXT_CAP_ID_CAC = 0x0c;
export const PCI_EXT_CAP_ID_ACS = 0x0d;
export const PCI_EXT_CAP_ID_ARI = 0x0e;
export const PCI_EXT_CAP_ID_ATS = 0x0f;
export const PCI_EXT_CAP_ID_SRIOV = 0x10;
export const PCI_EXT_CAP_ID_MRIOV = 0x11;
export const PCI_EXT_CAP_ID_MCAST = 0x12;
export const PCI_EXT_CAP_ID_PRI = 0x13;
export const PCI_EXT_CAP_ID_AMD_XXX = 0x14;
export const PCI_EXT_CAP_ID_REBAR = 0x15;
export const PCI_EXT_CAP_ID_DPA = 0x16;
export const PCI_EXT_CAP_ID_TPH = 0x17;
export const PCI_EXT_CAP_ID_LTR = 0x18;
export const PCI_EXT_CAP_ID_SECPCI = 0x19;
export const PCI_EXT_CAP_ID_PMUX = 0x1a;
export const PCI_EXT_CAP_ID_PASID = 0x1b;
export const PCI_EXT_CAP_ID_DPC = 0x1d;
export const PCI_EXT_CAP_ID_L1SS = 0x1e;
export const PCI_EXT_CAP_ID_PTM = 0x1f;
export const PCI_EXT_CAP_ID_DVSEC = 0x23;
export const PCI_EXT_CAP_ID_DLF = 0x25;
export const PCI_EXT_CAP_ID_PL_16GT = 0x26;
export const PCI_EXT_CAP_ID_PL_32GT = 0x2a;
export const PCI_EXT_CAP_ID_DOE = 0x2e;

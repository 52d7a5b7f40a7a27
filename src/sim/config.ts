/**
 * PCI configuration space of the simulated device (vfio region 7), a type 0 header with a
 * capability list, as vfio-pci exposes it: little-endian, writes filtered through a write mask
 * and a write-1-to-clear mask, like real hardware plus vfio-pci's virtualisation.
 *
 * Identity (made up for the sim; 0x1234 is the unofficial "test" vendor id also used by QEMU's
 * edu device — no real product uses 0x1234:0x5f10):
 *   vendor 0x1234, device 0x5f10, revision 0x01, class 0x12 / 0x00 / 0x00 (processing
 *   accelerator), subsystem 0x1234:0x0001, header type 0, interrupt pin INTA.
 *
 * ```
 * 0x00  header: STATUS has CAPABILITIES_LIST, capabilities pointer 0x40, BAR0 = 4 KiB MMIO
 * 0x40  MSI (0x05):       64-bit, per-vector masking, N vectors (multiple message capable)
 * 0x58  MSI-X (0x11):     table of M entries at BAR0 + 0x800, PBA at BAR0 + 0xC00
 * 0x70  PCI Express (0x10): version 2, endpoint, FLR capable, 2.5 GT/s x1
 * 0xB0  Vendor specific (0x09): length 16, body "SIM" + version 1 + revision + 8 zero bytes
 *       (the length byte is an option, 8..80; longer bodies are zero-filled)
 * 0x100 extended space (4 KiB config only): empty (dword 0 = 0)
 * ```
 *
 * Writable (wmask): COMMAND bits MEMORY, MASTER, PARITY, SERR, INTX_DISABLE; cache line size;
 * BAR0 address bits 31:12 (so sizing reads back 0xFFFFF000); interrupt line; MSI enable, MME,
 * address, data and mask bits; MSI-X enable and function mask; PCIe device control (bit 15,
 * "initiate function level reset", reads 0 and resets the device) and link control bits.
 * Write-1-to-clear: STATUS error bits 15:11 and 8; PCIe device status bits 3:0.
 *
 * Options that make one device differ from another (restore tests): the device id (`deviceId`,
 * checked on restore), the VSC body revision (`vscRevision`, exempt from the check, QEMU's rule)
 * and the VSC length byte (`vscLength`, part of the checked 3-byte header).
 *
 * Config space is device state that is NOT in the migration stream (src/binding/sim/stream.ts):
 * a fresh or reset device has COMMAND 0 (no decode, no bus mastering) until someone writes it,
 * as with real devices; the VMM restores it from its own copy after a load.
 */

export const SIM_VENDOR_ID = 0x1234;
export const SIM_DEVICE_ID = 0x5f10;
export const SIM_SUBSYS_VENDOR_ID = 0x1234;
export const SIM_SUBSYS_ID = 0x0001;
export const SIM_REVISION = 0x01;
/** Class code (base, sub, prog-if): processing accelerator. */
export const SIM_CLASS = 0x120000;
/** Config dword 0: vendor | device << 16. */
export const SIM_PCI_ID = (SIM_VENDOR_ID | (SIM_DEVICE_ID << 16)) >>> 0;

/** Standard header offsets and bits (include/uapi/linux/pci_regs.h). */
export const PCI = {
  VENDOR_ID: 0x00,
  DEVICE_ID: 0x02,
  COMMAND: 0x04,
  STATUS: 0x06,
  REVISION_ID: 0x08,
  CLASS_PROG: 0x09,
  CLASS_DEVICE: 0x0a,
  CACHE_LINE_SIZE: 0x0c,
  LATENCY_TIMER: 0x0d,
  HEADER_TYPE: 0x0e,
  BASE_ADDRESS_0: 0x10,
  SUBSYSTEM_VENDOR_ID: 0x2c,
  SUBSYSTEM_ID: 0x2e,
  ROM_ADDRESS: 0x30,
  CAPABILITY_LIST: 0x34,
  INTERRUPT_LINE: 0x3c,
  INTERRUPT_PIN: 0x3d,
  STATUS_CAP_LIST: 0x10,
  CAP_ID_MSI: 0x05,
  CAP_ID_VNDR: 0x09,
  CAP_ID_EXP: 0x10,
  CAP_ID_MSIX: 0x11,
} as const;

/** Where the capabilities sit. */
export const CAP_OFFSETS = { MSI: 0x40, MSIX: 0x58, EXP: 0x70, VNDR: 0xb0 } as const;
/** Default length byte of the vendor-specific capability. */
export const VNDR_CAP_LENGTH = 16;
/** Range of the `vscLength` option: the body needs 5 bytes after the 3-byte header; the capability must end by 0x100. */
export const VSC_LENGTH_MIN = 8;
export const VSC_LENGTH_MAX = 0x100 - CAP_OFFSETS.VNDR;
/** PCI_COMMAND bus master enable (include/uapi/linux/pci_regs.h PCI_COMMAND_MASTER). */
export const COMMAND_MASTER = 0x0004;
const EXP_CAP_SIZE = 0x3c;
const MSI_CAP_SIZE = 0x18;
const MSIX_CAP_SIZE = 0x0c;
/** PCIe Device Control (cap + 8): bit 15 initiates a function level reset. */
const EXP_DEVCTL = 0x08;
const EXP_DEVCTL_BCR_FLR = 0x8000;

export interface ConfigOptions {
  /** 256 (conventional) or 4096 (PCIe extended space, the default). */
  size: 256 | 4096;
  /** MSI vectors, a power of two 1..32. */
  msiVectors: number;
  /** MSI-X table entries, 1..2048 (the sim's BAR0 layout allows 64). */
  msixVectors: number;
  /** Revision byte in the vendor-specific capability's body (QEMU lets the body differ on restore). */
  vscRevision: number;
  /** Length byte of the vendor-specific capability (VSC_LENGTH_MIN..VSC_LENGTH_MAX; header, compared on restore). */
  vscLength: number;
  /** PCI device id (vendor stays SIM_VENDOR_ID). */
  deviceId: number;
  /** BAR0 size in bytes (a power of two >= 16). */
  bar0Size: number;
  /** BAR0 offsets of the MSI-X table and PBA. */
  msixTableOffset: number;
  msixPbaOffset: number;
}

/** The power-on image of config space with its write masks. */
export interface ConfigImage {
  init: Buffer;
  wmask: Buffer;
  w1cmask: Buffer;
}

/** Build the config space image (values and masks) for `o`. */
export function buildConfig(o: ConfigOptions): ConfigImage {
  const init = Buffer.alloc(o.size);
  const wmask = Buffer.alloc(o.size);
  const w1cmask = Buffer.alloc(o.size);
  const w16 = (b: Buffer, off: number, v: number): void => void b.writeUInt16LE(v & 0xffff, off);
  const w32 = (b: Buffer, off: number, v: number): void => void b.writeUInt32LE(v >>> 0, off);

  // ---- type 0 header
  w16(init, PCI.VENDOR_ID, SIM_VENDOR_ID);
  w16(init, PCI.DEVICE_ID, o.deviceId);
  w16(wmask, PCI.COMMAND, 0x0002 | 0x0004 | 0x0040 | 0x0100 | 0x0400);
  w16(init, PCI.STATUS, PCI.STATUS_CAP_LIST);
  w16(w1cmask, PCI.STATUS, 0xf900);
  init[PCI.REVISION_ID] = SIM_REVISION;
  init[PCI.CLASS_PROG] = SIM_CLASS & 0xff;
  w16(init, PCI.CLASS_DEVICE, SIM_CLASS >>> 8);
  wmask[PCI.CACHE_LINE_SIZE] = 0xff;
  init[PCI.HEADER_TYPE] = 0x00;
  // BAR0: 32-bit memory, non-prefetchable (type bits 0); address bits above the size are writable.
  w32(wmask, PCI.BASE_ADDRESS_0, ~(o.bar0Size - 1) & 0xfffffff0);
  w16(init, PCI.SUBSYSTEM_VENDOR_ID, SIM_SUBSYS_VENDOR_ID);
  w16(init, PCI.SUBSYSTEM_ID, SIM_SUBSYS_ID);
  init[PCI.CAPABILITY_LIST] = CAP_OFFSETS.MSI;
  wmask[PCI.INTERRUPT_LINE] = 0xff;
  init[PCI.INTERRUPT_PIN] = 0x01;

  // ---- MSI: 64-bit address, per-vector masking
  {
    const c = CAP_OFFSETS.MSI;
    const mmc = Math.log2(o.msiVectors);
    init[c] = PCI.CAP_ID_MSI;
    init[c + 1] = CAP_OFFSETS.MSIX;
    w16(init, c + 2, (mmc << 1) | 0x0080 | 0x0100);
    w16(wmask, c + 2, 0x0001 | 0x0070);
    w32(wmask, c + 4, 0xfffffffc);
    w32(wmask, c + 8, 0xffffffff);
    w16(wmask, c + 0x0c, 0xffff);
    w32(wmask, c + 0x10, o.msiVectors === 32 ? 0xffffffff : (1 << o.msiVectors) - 1);
  }
  // ---- MSI-X
  {
    const c = CAP_OFFSETS.MSIX;
    init[c] = PCI.CAP_ID_MSIX;
    init[c + 1] = CAP_OFFSETS.EXP;
    w16(init, c + 2, o.msixVectors - 1);
    w16(wmask, c + 2, 0xc000);
    w32(init, c + 4, o.msixTableOffset | 0 /* BIR 0 */);
    w32(init, c + 8, o.msixPbaOffset | 0);
  }
  // ---- PCI Express, capability version 2, endpoint
  {
    const c = CAP_OFFSETS.EXP;
    init[c] = PCI.CAP_ID_EXP;
    init[c + 1] = CAP_OFFSETS.VNDR;
    w16(init, c + 2, 0x0002);
    w32(init, c + 4, 0x10008000); // DEVCAP: FLR capable, role-based error reporting, MPS 128
    w16(init, c + EXP_DEVCTL, 0x2810); // MRRS 512, no snoop, relaxed ordering
    w16(wmask, c + EXP_DEVCTL, 0x7fff);
    w16(w1cmask, c + 0x0a, 0x000f);
    w32(init, c + 0x0c, 0x00000011); // LNKCAP: 2.5 GT/s, x1
    w16(wmask, c + 0x10, 0x00c3);
    w16(init, c + 0x12, 0x0011); // LNKSTA: 2.5 GT/s, x1
    w32(init, c + 0x2c, 0x00000002); // LNKCAP2: 2.5 GT/s supported
    w16(init, c + 0x30, 0x0001);
  }
  // ---- Vendor specific
  {
    const c = CAP_OFFSETS.VNDR;
    init[c] = PCI.CAP_ID_VNDR;
    init[c + 1] = 0x00;
    init[c + 2] = o.vscLength;
    init.write('SIM', c + 3, 'latin1');
    init[c + 6] = 1;
    init[c + 7] = o.vscRevision & 0xff;
  }
  return { init, wmask, w1cmask };
}

/** Sizes of the capabilities, for tests that walk the list. */
export const CAP_SIZES: Readonly<Record<number, number>> = {
  [PCI.CAP_ID_MSI]: MSI_CAP_SIZE,
  [PCI.CAP_ID_MSIX]: MSIX_CAP_SIZE,
  [PCI.CAP_ID_EXP]: EXP_CAP_SIZE,
  [PCI.CAP_ID_VNDR]: VNDR_CAP_LENGTH,
};

/** Live config space: reads return the current bytes, writes go through the masks. */
export class ConfigSpace {
  private readonly bytes: Buffer;

  /** `onFlr` runs after a write that sets PCIe Device Control "initiate FLR". */
  constructor(
    private readonly image: ConfigImage,
    private readonly onFlr: () => void,
  ) {
    this.bytes = Buffer.from(image.init);
  }

  get size(): number {
    return this.bytes.length;
  }

  /** PCI_COMMAND now. */
  get command(): number {
    return this.bytes.readUInt16LE(PCI.COMMAND);
  }

  /** Power-on values: COMMAND 0 among them (VFIO_DEVICE_RESET, FLR, release). */
  reset(): void {
    this.image.init.copy(this.bytes);
  }

  /** A copy of the current bytes. */
  snapshot(): Buffer {
    return Buffer.from(this.bytes);
  }

  read(off: number, target: Buffer, targetOff: number, len: number): void {
    this.bytes.copy(target, targetOff, off, off + len);
  }

  write(off: number, src: Buffer, srcOff: number, len: number): void {
    const { wmask, w1cmask } = this.image;
    const flrByte = CAP_OFFSETS.EXP + EXP_DEVCTL + 1;
    let flr = false;
    for (let i = 0; i < len; i++) {
      const at = off + i;
      const v = src[srcOff + i];
      let cur = this.bytes[at];
      cur = (cur & ~wmask[at]) | (v & wmask[at]);
      cur &= ~(v & w1cmask[at]);
      this.bytes[at] = cur & 0xff;
      if (at === flrByte && v & (EXP_DEVCTL_BCR_FLR >> 8)) flr = true;
    }
    if (flr) this.onFlr();
  }
}

/**
 * The device model's shadow of a vfio-pci device's config space, with per-byte masks in QEMU's
 * terms (hw/pci/pci.c):
 *
 *  - `wmask`    bits the guest may write (anything else keeps its value);
 *  - `w1cmask`  write-1-to-clear bits (a guest 1 clears the bit, a 0 leaves it);
 *  - `cmask`    bits compared on restore against the destination device (see compare.ts);
 *  - `emulated` bits served from this shadow instead of the device (QEMU's
 *               `emulated_config_bits` in hw/vfio/pci.c).
 *
 * All four are byte arrays of the config size (256 or 4096). Pure: no device access. The device
 * model reads the device for non-emulated bits (`mergeRead`) and forwards the `passthrough`
 * part of guest writes (`write`).
 *
 * Defaults built by `ConfigSpace.fromDevice()` and where they come from:
 *
 * | mask | bytes | source |
 * | --- | --- | --- |
 * | cmask | vendor id, device id, revision, prog-if, class, header type, capabilities pointer (all bits); STATUS bit CAP_LIST | QEMU `pci_init_cmask()` |
 * | cmask | each present BAR's dword(s) and the ROM BAR when a ROM is exposed (the address bits are in wmask, so the type and size bits are what the rule checks) | QEMU `pci_register_bar()` |
 * | cmask | every byte of every standard and extended capability | QEMU `pci_add_capability()`, `pcie_add_capability()` |
 * | cmask | cleared from a Vendor Specific capability's +3 to its end (id, next and length stay checked) | QEMU `vfio_add_vendor_specific_cap()` |
 * | wmask | cache line size, interrupt line, COMMAND IO/MEMORY/MASTER/SERR/INTX_DISABLE (0x0507) | QEMU `pci_init_wmask()` |
 * | wmask | every byte from 0x40 to the end that is not part of a capability | QEMU `pci_init_wmask()` then `pci_add_capability()` (capabilities read-only by default) |
 * | wmask | BAR address bits `~(size - 1)` (64-bit BARs over both dwords), the ROM's address bits and enable bit | QEMU `pci_register_bar()` |
 * | wmask | MSI: control enable + multiple message enable, address (low bits 1:0 excepted), data, mask bits of the capable vectors | QEMU `msi_init()` |
 * | wmask | MSI-X: control enable + function mask | QEMU `msix_init()` |
 * | w1cmask | STATUS error bits 0xf900 | QEMU `pci_init_w1cmask()` |
 * | emulated | the six BARs and the ROM BAR; every byte of the MSI and MSI-X capabilities | QEMU hw/vfio/pci.c `vfio_pci_realize()` (`vfio_pci_config_setup()` in newer QEMU) for BARs and ROM, `vfio_msi_setup()`/`vfio_msix_setup()` for MSI and MSI-X |
 *
 * BAR sizes come from the caller (the VFIO region sizes), never from probing the device.
 */
import { VfioError, type EvfioCode } from '../../base/errors';
import * as r from './regs';
import { type Capability, walkAllCapabilities, findCapability } from './capabilities';
import { capabilityName } from './names';

export type BarKind = 'mem32' | 'mem64' | 'io' | 'rom';

/** One BAR as the guest sees it. Index 0..5, or 6 for the expansion ROM. */
export interface BarInfo {
  index: number;
  kind: BarKind;
  /** Size in bytes (a power of two). */
  size: number;
  prefetchable: boolean;
  /** Config offset of the BAR register (the low dword for 64-bit BARs). */
  offset: number;
  /** Guest address programmed in the shadow, address bits only. */
  address: bigint;
  /** Decoding enabled: COMMAND.MEMORY for memory BARs, COMMAND.IO for I/O, plus the ROM enable bit for the ROM. */
  enabled: boolean;
  /**
   * Enabled and at a usable address: non-zero and not wrapping past the top of the BAR's
   * address width (a BAR left holding the all-ones sizing pattern is not mapped; QEMU
   * `pci_bar_address()` applies the same rule).
   */
  mapped: boolean;
}

export interface FromDeviceOptions {
  /** Size of BAR0..5 in bytes, 0 = absent (the VFIO region sizes; the upper half of a 64-bit BAR is 0). Default all 0. */
  barSizes?: readonly number[];
  /** Size of the expansion ROM in bytes, 0 = none exposed. Default 0. */
  romSize?: number;
  /**
   * Type bits of BAR0..5 (PCI_BASE_ADDRESS_SPACE_IO, PCI_BASE_ADDRESS_MEM_TYPE_64,
   * PCI_BASE_ADDRESS_MEM_PREFETCH). Default: the low bits of the BAR in `raw`.
   */
  barFlags?: readonly number[];
}

/** A config access: `size` bytes (1..4, within one dword) at `offset`, value little-endian. */
export interface ConfigAccess {
  offset: number;
  size: number;
  value: number;
}

/** What a guest write changed in the shadow. */
export interface ConfigChanges {
  /** PCI_COMMAND before and after, when it changed (memory/I/O decode, bus mastering, INTx disable). */
  command: { before: number; after: number } | null;
  /** BARs whose register changed: 0..5 (a 64-bit BAR reports its low index), 6 for the ROM. */
  bars: number[];
  /** Any byte of the MSI capability changed (enable, vectors, address, data, mask). */
  msi: boolean;
  /** The MSI-X enable or function mask changed. */
  msix: boolean;
}

export interface ConfigWriteResult {
  /** The part of the write to forward to the device, or null when every byte is emulated. */
  passthrough: ConfigAccess | null;
  changed: ConfigChanges;
}

export interface MsiVector {
  vector: number;
  address: bigint;
  /** Message data of this vector: the programmed data with the vector number in its low bits. */
  data: number;
  masked: boolean;
}

export interface MsiState {
  /** Config offset of the capability. */
  offset: number;
  enabled: boolean;
  is64: boolean;
  perVectorMask: boolean;
  /** Multiple Message Capable, as a count (1..32). */
  vectorsCapable: number;
  /** Multiple Message Enable, as a count (1..32). */
  vectorsEnabled: number;
  address: bigint;
  data: number;
  /** Mask bits (0 without per-vector masking). */
  mask: number;
  /** Pending bits as last read from the device (device-owned; 0 without per-vector masking). */
  pending: number;
  /** One entry per enabled vector. */
  vectors: MsiVector[];
}

export interface MsixState {
  offset: number;
  enabled: boolean;
  functionMask: boolean;
  /** Number of table entries (1..2048). */
  tableSize: number;
  tableBir: number;
  tableOffset: number;
  pbaBir: number;
  pbaOffset: number;
}

/** Masks and bytes of a config space, as compare.ts needs them. */
export interface ConfigImage {
  bytes: Uint8Array;
  cmask: Uint8Array;
  wmask: Uint8Array;
  w1cmask: Uint8Array;
}

/** A BAR slot present in the layout: index 0..5, 6 = ROM. */
interface BarSlot {
  index: number;
  kind: BarKind;
  size: number;
  /** The type bits kept in the register's low bits (0 for the ROM). */
  flags: number;
}

const ROM_INDEX = 6;
const SERIAL_MAGIC = 0x47464350; // 'PCFG' little-endian
const SERIAL_VERSION = 1;
const SERIAL_HEADER = 16;
const SERIAL_BAR_ENTRY = 16;
const SERIAL_BARS = 7;

/** COMMAND bits the guest may change (QEMU pci_init_wmask(), SERR included as QEMU's default). */
export const COMMAND_WMASK =
  r.PCI_COMMAND_IO | r.PCI_COMMAND_MEMORY | r.PCI_COMMAND_MASTER | r.PCI_COMMAND_SERR | r.PCI_COMMAND_INTX_DISABLE;

function usage(message: string, code: EvfioCode = 'EVFIO_CONFIG_ACCESS'): VfioError {
  return new VfioError(message, { code, kind: 'usage' });
}

const isPow2 = (n: number): boolean => Number.isSafeInteger(n) && n > 0 && 2 ** Math.round(Math.log2(n)) === n;

export class ConfigSpace {
  /** The guest-visible shadow bytes. */
  readonly bytes: Buffer;
  readonly wmask: Buffer;
  readonly w1cmask: Buffer;
  readonly cmask: Buffer;
  readonly emulated: Buffer;
  /** Standard then extended capabilities of the shadow, as walked when it was built. */
  readonly capabilities: readonly Capability[];
  private readonly slots: readonly BarSlot[];
  private readonly msiCap: Capability | undefined;
  private readonly msixCap: Capability | undefined;

  private constructor(bytes: Buffer, wmask: Buffer, w1cmask: Buffer, cmask: Buffer, emulated: Buffer, slots: BarSlot[]) {
    this.bytes = bytes;
    this.wmask = wmask;
    this.w1cmask = w1cmask;
    this.cmask = cmask;
    this.emulated = emulated;
    this.slots = slots;
    this.capabilities = walkAllCapabilities(bytes);
    this.msiCap = findCapability(this.capabilities, r.PCI_CAP_ID_MSI);
    this.msixCap = findCapability(this.capabilities, r.PCI_CAP_ID_MSIX);
  }

  /**
   * Build the shadow from the device's config bytes (the VFIO config region, 256 or 4096
   * bytes) with the mask defaults of the module comment. Guest-owned state starts reset: BAR
   * addresses 0 with the type bits kept (the host's addresses mean nothing to the guest; QEMU
   * clears them in the same place it marks BARs emulated, then `pci_register_bar()` writes the
   * type), MSI enable and multiple message enable 0, MSI-X enable and function mask 0
   * (QEMU `msi_init()`, `msix_init()`).
   *
   * Errors (VfioError): `EVFIO_CONFIG_SIZE` (usage) for another image size; `EVFIO_CONFIG_BAR`
   * (usage) for a BAR size that is not a power of two, too small for its kind, or a 64-bit BAR
   * in slot 5 or with a non-zero size for its upper half; `EVFIO_CONFIG_HEADER` (unsupported)
   * for a header type other than 0 or an MSI/MSI-X capability that overlaps the next one;
   * `EVFIO_BAD_CAP_LIST` (format) for a malformed capability list.
   */
  static fromDevice(raw: Uint8Array, opts: FromDeviceOptions = {}): ConfigSpace {
    const size = raw.length;
    if (size !== r.PCI_CFG_SPACE_SIZE && size !== r.PCI_CFG_SPACE_EXP_SIZE) {
      throw usage(`config space image must be 256 or 4096 bytes, got ${size}`, 'EVFIO_CONFIG_SIZE');
    }
    const headerType = raw[r.PCI_HEADER_TYPE] & r.PCI_HEADER_TYPE_MASK;
    if (headerType !== r.PCI_HEADER_TYPE_NORMAL) {
      throw new VfioError(`header type ${headerType} is not supported (only type 0 endpoints)`, {
        code: 'EVFIO_CONFIG_HEADER',
        kind: 'unsupported',
      });
    }
    const caps = walkAllCapabilities(raw);
    const bytes = Buffer.from(raw);
    const wmask = Buffer.alloc(size);
    const w1cmask = Buffer.alloc(size);
    const cmask = Buffer.alloc(size);
    const emulated = Buffer.alloc(size);

    // ---- header: QEMU pci_init_cmask(), pci_init_wmask(), pci_init_w1cmask()
    cmask.writeUInt16LE(0xffff, r.PCI_VENDOR_ID);
    cmask.writeUInt16LE(0xffff, r.PCI_DEVICE_ID);
    cmask[r.PCI_STATUS] = r.PCI_STATUS_CAP_LIST;
    cmask[r.PCI_REVISION_ID] = 0xff;
    cmask[r.PCI_CLASS_PROG] = 0xff;
    cmask.writeUInt16LE(0xffff, r.PCI_CLASS_DEVICE);
    cmask[r.PCI_HEADER_TYPE] = 0xff;
    cmask[r.PCI_CAPABILITY_LIST] = 0xff;
    wmask[r.PCI_CACHE_LINE_SIZE] = 0xff;
    wmask[r.PCI_INTERRUPT_LINE] = 0xff;
    wmask.writeUInt16LE(COMMAND_WMASK, r.PCI_COMMAND);
    wmask.fill(0xff, r.PCI_STD_HEADER_SIZEOF, size);
    w1cmask.writeUInt16LE(r.PCI_STATUS_ERROR_BITS, r.PCI_STATUS);

    // ---- BARs: QEMU pci_register_bar(); all BAR registers are emulated (vfio_pci_realize()).
    emulated.fill(0xff, r.PCI_BASE_ADDRESS_0, r.PCI_BASE_ADDRESS_5 + 4);
    emulated.fill(0xff, r.PCI_ROM_ADDRESS, r.PCI_ROM_ADDRESS + 4);
    const slots = planBars(raw, opts);
    bytes.fill(0, r.PCI_BASE_ADDRESS_0, r.PCI_BASE_ADDRESS_5 + 4);
    bytes.fill(0, r.PCI_ROM_ADDRESS, r.PCI_ROM_ADDRESS + 4);
    for (const s of slots) {
      const at = barRegister(s.index);
      const addrMask = ~(BigInt(s.size) - 1n);
      if (s.kind === 'mem64') {
        bytes.writeBigUInt64LE(BigInt(s.flags), at);
        wmask.writeBigUInt64LE(BigInt.asUintN(64, addrMask & ~0xfn), at);
        cmask.writeBigUInt64LE(0xffffffffffffffffn, at);
      } else {
        const addrBits = s.kind === 'rom' ? r.PCI_ROM_ADDRESS_MASK : s.kind === 'io' ? r.PCI_BASE_ADDRESS_IO_MASK : r.PCI_BASE_ADDRESS_MEM_MASK;
        let wm = Number(BigInt.asUintN(32, addrMask)) & addrBits;
        if (s.kind === 'rom') wm |= r.PCI_ROM_ADDRESS_ENABLE;
        bytes.writeUInt32LE(s.flags >>> 0, at);
        wmask.writeUInt32LE(wm >>> 0, at);
        cmask.writeUInt32LE(0xffffffff, at);
      }
    }

    // ---- capabilities: QEMU pci_add_capability()/pcie_add_capability(): read-only, compared.
    for (const c of caps) {
      wmask.fill(0, c.offset, c.offset + c.length);
      cmask.fill(0xff, c.offset, c.offset + c.length);
    }
    for (const c of caps) {
      if (c.extended) continue;
      if (c.id === r.PCI_CAP_ID_VNDR && c.length > r.PCI_CAP_VNDR_HEADER) {
        // QEMU vfio_add_vendor_specific_cap(): the vendor body may differ across host drivers
        // (NVIDIA vGPU); the 3-byte header (id, next, length) stays compared.
        cmask.fill(0, c.offset + r.PCI_CAP_VNDR_HEADER, c.offset + c.length);
      }
    }
    const msi = findCapability(caps, r.PCI_CAP_ID_MSI);
    if (msi) {
      if (msi.clamped) throw overlapping(msi);
      setupMsi(msi.offset, bytes, wmask, emulated);
    }
    const msix = findCapability(caps, r.PCI_CAP_ID_MSIX);
    if (msix) {
      if (msix.clamped) throw overlapping(msix);
      // QEMU msix_init(): Message Control = table size - 1; enable and function mask writable.
      emulated.fill(0xff, msix.offset, msix.offset + r.PCI_CAP_MSIX_SIZEOF);
      const ctrl = bytes.readUInt16LE(msix.offset + r.PCI_MSIX_FLAGS);
      bytes.writeUInt16LE(ctrl & r.PCI_MSIX_FLAGS_QSIZE, msix.offset + r.PCI_MSIX_FLAGS);
      wmask.writeUInt16LE(r.PCI_MSIX_FLAGS_ENABLE | r.PCI_MSIX_FLAGS_MASKALL, msix.offset + r.PCI_MSIX_FLAGS);
    }
    return new ConfigSpace(bytes, wmask, w1cmask, cmask, emulated, slots);
  }

  /** 256 or 4096. */
  get size(): number {
    return this.bytes.length;
  }

  /** PCI_COMMAND as the guest last wrote it (the shadow). */
  get command(): number {
    return this.bytes.readUInt16LE(r.PCI_COMMAND);
  }

  /** True when a `size`-byte access at `offset` is one `read`/`write` accept. */
  isValidAccess(offset: number, size: number): boolean {
    return (
      (size === 1 || size === 2 || size === 4) &&
      Number.isInteger(offset) &&
      offset >= 0 &&
      offset + size <= this.size &&
      offset >> 2 === (offset + size - 1) >> 2
    );
  }

  /**
   * Read 1, 2 or 4 bytes (little-endian, unsigned) from the shadow. The access must stay
   * within one dword, as PCI config cycles do. Throws `EVFIO_CONFIG_ACCESS` (usage) otherwise.
   */
  read(offset: number, size: number): number {
    this.checkAccess(offset, size);
    return this.bytes.readUIntLE(offset, size);
  }

  /**
   * Combine a value read from the device with the shadow: emulated bits from the shadow, the
   * others from `deviceValue` (QEMU vfio_pci_read_config()).
   */
  mergeRead(offset: number, size: number, deviceValue: number): number {
    this.checkAccess(offset, size);
    let out = 0;
    for (let i = 0; i < size; i++) {
      const emu = this.emulated[offset + i];
      const dev = (deviceValue >>> (8 * i)) & 0xff;
      out |= ((this.bytes[offset + i] & emu) | (dev & ~emu & 0xff)) << (8 * i);
    }
    return out >>> 0;
  }

  /** True when every bit of the access is served from the shadow (no device read needed). */
  isEmulated(offset: number, size: number): boolean {
    this.checkAccess(offset, size);
    for (let i = 0; i < size; i++) if (this.emulated[offset + i] !== 0xff) return false;
    return true;
  }

  /**
   * Apply a guest config write to the shadow and say what to forward to the device.
   *
   * The rule of the product, decided here and nowhere else:
   *  - BARs (0x10-0x27), the ROM BAR (0x30) and the MSI and MSI-X capabilities are emulated:
   *    the write lands in the shadow only and is never passed to the device. BAR sizing (write
   *    all-ones, read back the size mask) therefore happens in the shadow; interrupts are
   *    programmed by the device model through SET_IRQS, not by config writes to the device.
   *  - Every other byte is passed through to the device AND mirrored into the shadow through
   *    `wmask`/`w1cmask` (QEMU vfio_pci_write_config() does both too). PCI_COMMAND above all:
   *    a snapshot serialises the shadow, so it must hold what the guest wrote. A VMM that
   *    forwarded COMMAND without mirroring it recorded COMMAND = 0 in its snapshots, and the
   *    device came back from restore without memory decode and bus mastering.
   *
   * Shadow update per byte (QEMU pci_default_write_config()):
   * `new = (old & ~wmask) | (val & wmask)`, then `new &= ~(val & w1cmask)`.
   * An MSI multiple message enable above the capable count is cut to it (QEMU msi_write_config()).
   *
   * `passthrough` carries the non-emulated bytes of the write with the guest's values, unmasked
   * (the device and the kernel's vfio-pci apply their own write rules), or null.
   * Throws `EVFIO_CONFIG_ACCESS` (usage) for an access that is not 1/2/4 bytes within one dword.
   */
  write(offset: number, size: number, value: number): ConfigWriteResult {
    this.checkAccess(offset, size);
    const commandBefore = this.command;
    const before = Buffer.from(this.bytes.subarray(offset, offset + size));
    for (let i = 0; i < size; i++) {
      const at = offset + i;
      const v = (value >>> (8 * i)) & 0xff;
      const wm = this.wmask[at];
      let b = (this.bytes[at] & ~wm) | (v & wm);
      b &= ~(v & this.w1cmask[at]);
      this.bytes[at] = b & 0xff;
    }
    if (this.msiCap && overlaps(offset, size, this.msiCap.offset + r.PCI_MSI_FLAGS, 2)) this.clampMsiVectors();

    const changed: ConfigChanges = { command: null, bars: [], msi: false, msix: false };
    const commandAfter = this.command;
    if (commandAfter !== commandBefore) changed.command = { before: commandBefore, after: commandAfter };
    for (let i = 0; i < size; i++) {
      const at = offset + i;
      if (this.bytes[at] === before[i]) continue;
      const bar = this.barIndexAt(at);
      if (bar !== undefined && !changed.bars.includes(bar)) changed.bars.push(bar);
      if (this.msiCap && inCap(this.msiCap, at)) changed.msi = true;
      if (this.msixCap && at >= this.msixCap.offset && at < this.msixCap.offset + r.PCI_CAP_MSIX_SIZEOF) changed.msix = true;
    }

    // Non-emulated bytes of an access within one dword are contiguous: emulated ranges start
    // dword-aligned (BARs, ROM, capability offsets), so inside a dword they form a prefix.
    let first = -1;
    let last = -1;
    for (let i = 0; i < size; i++) {
      if (this.emulated[offset + i] !== 0xff) {
        if (first < 0) first = i;
        last = i;
      }
    }
    let passthrough: ConfigAccess | null = null;
    if (first >= 0) {
      const n = last - first + 1;
      const v = n === 4 ? value >>> 0 : (value >>> (8 * first)) & (2 ** (8 * n) - 1);
      passthrough = { offset: offset + first, size: n, value: v >>> 0 };
    }
    return { passthrough, changed };
  }

  /** The BAR layout with guest addresses from the shadow. Absent BARs are not listed. */
  bars(): BarInfo[] {
    const cmd = this.command;
    return this.slots.map((s) => {
      const at = barRegister(s.index);
      const sizeMask = ~(BigInt(s.size) - 1n);
      let address: bigint;
      let enabled: boolean;
      let width: bigint;
      switch (s.kind) {
        case 'mem64':
          address = this.bytes.readBigUInt64LE(at) & sizeMask & ~0xfn;
          enabled = (cmd & r.PCI_COMMAND_MEMORY) !== 0;
          width = 1n << 64n;
          break;
        case 'mem32':
          address = BigInt((this.bytes.readUInt32LE(at) & r.PCI_BASE_ADDRESS_MEM_MASK) >>> 0) & sizeMask;
          enabled = (cmd & r.PCI_COMMAND_MEMORY) !== 0;
          width = 1n << 32n;
          break;
        case 'io':
          address = BigInt((this.bytes.readUInt32LE(at) & r.PCI_BASE_ADDRESS_IO_MASK) >>> 0) & sizeMask;
          enabled = (cmd & r.PCI_COMMAND_IO) !== 0;
          width = 1n << 32n;
          break;
        case 'rom': {
          const reg = this.bytes.readUInt32LE(at);
          address = BigInt((reg & r.PCI_ROM_ADDRESS_MASK) >>> 0) & sizeMask;
          enabled = (cmd & r.PCI_COMMAND_MEMORY) !== 0 && (reg & r.PCI_ROM_ADDRESS_ENABLE) !== 0;
          width = 1n << 32n;
          break;
        }
      }
      const mapped = enabled && address !== 0n && address + BigInt(s.size) < width;
      return {
        index: s.index,
        kind: s.kind,
        size: s.size,
        prefetchable: (s.flags & r.PCI_BASE_ADDRESS_MEM_PREFETCH) !== 0 && s.kind !== 'io',
        offset: at,
        address,
        enabled,
        mapped,
      };
    });
  }

  /** The MSI capability's state, or null when the device has none. */
  msi(): MsiState | null {
    const c = this.msiCap;
    if (!c) return null;
    const b = this.bytes;
    const flags = b.readUInt16LE(c.offset + r.PCI_MSI_FLAGS);
    const l = r.msiLayout(flags);
    const lo = b.readUInt32LE(c.offset + l.addressLo) & r.PCI_MSI_ADDRESS_LO_MASK;
    const hi = l.is64 ? b.readUInt32LE(c.offset + l.addressHi) : 0;
    const address = (BigInt(hi) << 32n) | BigInt(lo >>> 0);
    const data = b.readUInt16LE(c.offset + l.data);
    const mask = l.perVectorMask ? b.readUInt32LE(c.offset + l.mask) : 0;
    const pending = l.perVectorMask ? b.readUInt32LE(c.offset + l.pending) : 0;
    const enabledCount = Math.min(r.msiVectorsEnabled(flags), r.msiVectorsCapable(flags));
    const vectors: MsiVector[] = [];
    for (let v = 0; v < enabledCount; v++) {
      // Multiple message: the function puts the vector number in the low log2(count) data bits.
      vectors.push({ vector: v, address, data: (data & ~(enabledCount - 1)) | v, masked: ((mask >>> v) & 1) === 1 });
    }
    return {
      offset: c.offset,
      enabled: (flags & r.PCI_MSI_FLAGS_ENABLE) !== 0,
      is64: l.is64,
      perVectorMask: l.perVectorMask,
      vectorsCapable: r.msiVectorsCapable(flags),
      vectorsEnabled: enabledCount,
      address,
      data,
      mask: mask >>> 0,
      pending: pending >>> 0,
      vectors,
    };
  }

  /** The MSI-X capability's state, or null when the device has none. */
  msix(): MsixState | null {
    const c = this.msixCap;
    if (!c) return null;
    const ctrl = this.bytes.readUInt16LE(c.offset + r.PCI_MSIX_FLAGS);
    const table = this.bytes.readUInt32LE(c.offset + r.PCI_MSIX_TABLE);
    const pba = this.bytes.readUInt32LE(c.offset + r.PCI_MSIX_PBA);
    return {
      offset: c.offset,
      enabled: (ctrl & r.PCI_MSIX_FLAGS_ENABLE) !== 0,
      functionMask: (ctrl & r.PCI_MSIX_FLAGS_MASKALL) !== 0,
      tableSize: (ctrl & r.PCI_MSIX_FLAGS_QSIZE) + 1,
      tableBir: table & r.PCI_MSIX_TABLE_BIR,
      tableOffset: (table & r.PCI_MSIX_TABLE_OFFSET) >>> 0,
      pbaBir: pba & r.PCI_MSIX_PBA_BIR,
      pbaOffset: (pba & r.PCI_MSIX_PBA_OFFSET) >>> 0,
    };
  }

  /**
   * Serialise for a snapshot, little-endian, version 1:
   *
   * | offset | size | field |
   * | ---: | ---: | --- |
   * | 0 | 4 | magic `PCFG` |
   * | 4 | 2 | version (1) |
   * | 6 | 2 | number of BAR slots (7: BAR0..5, ROM) |
   * | 8 | 4 | config size N (256 or 4096) |
   * | 12 | 4 | reserved, 0 |
   * | 16 | 7 × 16 | per slot: u64 size (0 = absent), u32 flags (type bits), u8 kind (0 absent, 1 mem32, 2 mem64, 3 io, 4 rom), 3 reserved |
   * | 128 | 5 × N | bytes, wmask, w1cmask, cmask, emulated |
   */
  serialize(): Buffer {
    const n = this.size;
    const out = Buffer.alloc(SERIAL_HEADER + SERIAL_BARS * SERIAL_BAR_ENTRY + 5 * n);
    out.writeUInt32LE(SERIAL_MAGIC, 0);
    out.writeUInt16LE(SERIAL_VERSION, 4);
    out.writeUInt16LE(SERIAL_BARS, 6);
    out.writeUInt32LE(n, 8);
    for (const s of this.slots) {
      const at = SERIAL_HEADER + s.index * SERIAL_BAR_ENTRY;
      out.writeBigUInt64LE(BigInt(s.size), at);
      out.writeUInt32LE(s.flags >>> 0, at + 8);
      out[at + 12] = KIND_CODES.indexOf(s.kind);
    }
    let at = SERIAL_HEADER + SERIAL_BARS * SERIAL_BAR_ENTRY;
    for (const part of [this.bytes, this.wmask, this.w1cmask, this.cmask, this.emulated]) {
      part.copy(out, at);
      at += n;
    }
    return out;
  }

  /**
   * Decode `serialize()` output. Errors: VfioError kind 'format', `EVFIO_CONFIG_FORMAT` (bad
   * magic, size, length or BAR table) or `EVFIO_CONFIG_VERSION`; `EVFIO_BAD_CAP_LIST` when
   * the saved bytes hold a malformed capability list.
   */
  static deserialize(b: Uint8Array): ConfigSpace {
    const buf = Buffer.from(b.buffer, b.byteOffset, b.byteLength);
    const bad = (why: string): VfioError => new VfioError(`bad serialized config space: ${why}`, { code: 'EVFIO_CONFIG_FORMAT', kind: 'format' });
    if (buf.length < SERIAL_HEADER) throw bad(`${buf.length} bytes is shorter than the header`);
    if (buf.readUInt32LE(0) !== SERIAL_MAGIC) throw bad('wrong magic');
    const version = buf.readUInt16LE(4);
    if (version !== SERIAL_VERSION) {
      throw new VfioError(`serialized config space version ${version} is not supported (this library reads ${SERIAL_VERSION})`, {
        code: 'EVFIO_CONFIG_VERSION',
        kind: 'format',
      });
    }
    if (buf.readUInt16LE(6) !== SERIAL_BARS) throw bad(`expected ${SERIAL_BARS} BAR slots, found ${buf.readUInt16LE(6)}`);
    const n = buf.readUInt32LE(8);
    if (n !== r.PCI_CFG_SPACE_SIZE && n !== r.PCI_CFG_SPACE_EXP_SIZE) throw bad(`config size ${n}`);
    const want = SERIAL_HEADER + SERIAL_BARS * SERIAL_BAR_ENTRY + 5 * n;
    if (buf.length !== want) throw bad(`length ${buf.length}, expected ${want}`);
    const slots: BarSlot[] = [];
    for (let i = 0; i < SERIAL_BARS; i++) {
      const at = SERIAL_HEADER + i * SERIAL_BAR_ENTRY;
      const size = buf.readBigUInt64LE(at);
      const flags = buf.readUInt32LE(at + 8);
      const code = buf[at + 12];
      if (code === 0) {
        if (size !== 0n) throw bad(`absent BAR ${i} has a size`);
        continue;
      }
      const kind = KIND_CODES[code];
      if (!kind || kind === 'absent') throw bad(`BAR ${i} has unknown kind ${code}`);
      if ((kind === 'rom') !== (i === ROM_INDEX)) throw bad(`BAR ${i} cannot be of kind ${kind}`);
      if (kind === 'mem64' && i >= r.PCI_NUM_BARS - 1) throw bad(`64-bit BAR in slot ${i}`);
      if (size > BigInt(Number.MAX_SAFE_INTEGER) || !isPow2(Number(size))) throw bad(`BAR ${i} size ${size} is not a power of two`);
      slots.push({ index: i, kind, size: Number(size), flags });
    }
    const parts: Buffer[] = [];
    let at = SERIAL_HEADER + SERIAL_BARS * SERIAL_BAR_ENTRY;
    for (let k = 0; k < 5; k++) {
      parts.push(Buffer.from(buf.subarray(at, at + n)));
      at += n;
    }
    return new ConfigSpace(parts[0], parts[1], parts[2], parts[3], parts[4], slots);
  }

  /** Bytes and masks as compare.ts takes them. */
  image(): ConfigImage {
    return { bytes: this.bytes, cmask: this.cmask, wmask: this.wmask, w1cmask: this.w1cmask };
  }

  private checkAccess(offset: number, size: number): void {
    if (!this.isValidAccess(offset, size)) {
      throw usage(`config access of ${size} bytes at 0x${Number(offset).toString(16)} is not 1, 2 or 4 bytes within one dword of the ${this.size}-byte space`);
    }
  }

  /** The BAR slot (0..6) whose register holds byte `at`, if present. */
  private barIndexAt(at: number): number | undefined {
    for (const s of this.slots) {
      const start = barRegister(s.index);
      const len = s.kind === 'mem64' ? 8 : 4;
      if (at >= start && at < start + len) return s.index;
    }
    return undefined;
  }

  /** QEMU msi_write_config(): a Multiple Message Enable above Multiple Message Capable is cut to it. */
  private clampMsiVectors(): void {
    const at = this.msiCap!.offset + r.PCI_MSI_FLAGS;
    const flags = this.bytes.readUInt16LE(at);
    const capable = (flags & r.PCI_MSI_FLAGS_QMASK) >> 1;
    const enabled = (flags & r.PCI_MSI_FLAGS_QSIZE) >> 4;
    if (enabled > capable) this.bytes.writeUInt16LE((flags & ~r.PCI_MSI_FLAGS_QSIZE) | (capable << 4), at);
  }
}

const KIND_CODES = ['absent', 'mem32', 'mem64', 'io', 'rom'] as const;

function barRegister(index: number): number {
  return index === ROM_INDEX ? r.PCI_ROM_ADDRESS : r.pciBarOffset(index);
}

function overlaps(a: number, alen: number, b: number, blen: number): boolean {
  return a < b + blen && b < a + alen;
}

function inCap(c: Capability, at: number): boolean {
  return at >= c.offset && at < c.offset + c.length;
}

function overlapping(c: Capability): VfioError {
  return new VfioError(`${capabilityName(c.id)} capability at 0x${c.offset.toString(16)} overlaps the next capability`, {
    code: 'EVFIO_CONFIG_HEADER',
    kind: 'unsupported',
  });
}

/** QEMU msi_init(): enable and multiple message enable, address, data and the capable vectors' mask bits are writable. */
function setupMsi(pos: number, bytes: Buffer, wmask: Buffer, emulated: Buffer): void {
  const flags = bytes.readUInt16LE(pos + r.PCI_MSI_FLAGS);
  const l = r.msiLayout(flags);
  emulated.fill(0xff, pos, pos + l.size);
  bytes.writeUInt16LE(flags & ~(r.PCI_MSI_FLAGS_ENABLE | r.PCI_MSI_FLAGS_QSIZE), pos + r.PCI_MSI_FLAGS);
  wmask.writeUInt16LE(r.PCI_MSI_FLAGS_ENABLE | r.PCI_MSI_FLAGS_QSIZE, pos + r.PCI_MSI_FLAGS);
  wmask.writeUInt32LE(r.PCI_MSI_ADDRESS_LO_MASK, pos + l.addressLo);
  if (l.is64) wmask.writeUInt32LE(0xffffffff, pos + l.addressHi);
  wmask.writeUInt16LE(0xffff, pos + l.data);
  if (l.perVectorMask) {
    const n = r.msiVectorsCapable(flags);
    wmask.writeUInt32LE((0xffffffff >>> (r.PCI_MSI_VECTORS_MAX - n)) >>> 0, pos + l.mask);
  }
}

/** Validate the caller's BAR sizes and flags into slots. */
function planBars(raw: Uint8Array, opts: FromDeviceOptions): BarSlot[] {
  const sizes = opts.barSizes ?? [];
  if (sizes.length > r.PCI_NUM_BARS) throw usage(`barSizes has ${sizes.length} entries, at most 6`, 'EVFIO_CONFIG_BAR');
  const rawView = Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength);
  const slots: BarSlot[] = [];
  for (let i = 0; i < r.PCI_NUM_BARS; i++) {
    const size = sizes[i] ?? 0;
    if (size === 0) continue;
    const prev = slots[slots.length - 1];
    if (prev && prev.kind === 'mem64' && prev.index === i - 1) {
      throw usage(`BAR${i} is the upper half of 64-bit BAR${i - 1}; its size must be 0, got ${size}`, 'EVFIO_CONFIG_BAR');
    }
    const rawFlags = rawView.readUInt32LE(r.pciBarOffset(i));
    const flags =
      opts.barFlags?.[i] ??
      (rawFlags & r.PCI_BASE_ADDRESS_SPACE_IO ? r.PCI_BASE_ADDRESS_SPACE_IO : rawFlags & 0xf);
    const io = (flags & r.PCI_BASE_ADDRESS_SPACE_IO) !== 0;
    const kind: BarKind = io ? 'io' : (flags & r.PCI_BASE_ADDRESS_MEM_TYPE_MASK) === r.PCI_BASE_ADDRESS_MEM_TYPE_64 ? 'mem64' : 'mem32';
    const min = io ? 4 : 16;
    if (!isPow2(size) || size < min) {
      throw usage(`BAR${i} size ${size} must be a power of two of at least ${min} bytes`, 'EVFIO_CONFIG_BAR');
    }
    if (kind !== 'mem64' && size > 2 ** 31) {
      throw usage(`BAR${i} size ${size} does not fit a 32-bit BAR`, 'EVFIO_CONFIG_BAR');
    }
    if (kind === 'mem64' && i === r.PCI_NUM_BARS - 1) {
      throw usage('BAR5 cannot be a 64-bit BAR (it has no upper half)', 'EVFIO_CONFIG_BAR');
    }
    slots.push({ index: i, kind, size, flags: io ? r.PCI_BASE_ADDRESS_SPACE_IO : flags & 0xf });
  }
  const rom = opts.romSize ?? 0;
  if (rom !== 0) {
    if (!isPow2(rom) || rom < r.PCI_ROM_MIN_SIZE || rom > 2 ** 31) {
      throw usage(`ROM size ${rom} must be a power of two from 2 KiB to 2 GiB`, 'EVFIO_CONFIG_BAR');
    }
    slots.push({ index: ROM_INDEX, kind: 'rom', size: rom, flags: 0 });
  }
  return slots;
}

/**
 * Walking the standard (0x40..0xff) and extended (0x100..0xfff) capability lists of a config
 * space image. Pure functions over bytes; no device access.
 *
 * A malformed list never hangs the walk and never throws anything but a VfioError of kind
 * 'format' with code `EVFIO_BAD_CAP_LIST`: a pointer into the 64-byte header, an extended
 * pointer below 0x100, a pointer visited twice (a loop), a capability id 0xff (a config read
 * of a device that does not answer), more entries than fit.
 *
 * Lengths (what "the bytes of the capability" means for the cmask on restore):
 *  - MSI: by its Message Control flags (0x0a, 0x0e, 0x14 or 0x18; QEMU msi_cap_sizeof()).
 *  - MSI-X: 12 (PCI_CAP_MSIX_SIZEOF). Power Management: 8 (PCI_PM_SIZEOF).
 *  - PCI Express: 0x14 for capability version 1, 0x3c for version 2 and later (the sizes the
 *    kernel's vfio_cap_len() and QEMU's pcie_cap_v1_init()/pcie_cap_init() use).
 *  - Vendor Specific: its length byte at +2.
 *  - Any other standard capability: up to the next capability at a higher offset, or to the
 *    end of the standard space (QEMU hw/vfio/pci.c vfio_std_cap_max_size()).
 *  - Extended capabilities: up to the next extended capability at a higher offset, or to the
 *    end of config space (QEMU vfio_ext_cap_max_size()).
 * A length that would run into the next capability or past the end of its space is cut there
 * and the entry is marked `clamped` (the kernel's vfio_cap_init() warns about such overlaps
 * and carries on; we do the same and let the caller decide — ConfigSpace refuses a clamped
 * MSI or MSI-X capability because it emulates every register of those).
 */
import { VfioError } from '../../base/errors';
import * as r from './regs';
import { hex2 } from './names';

export interface Capability {
  /** Capability id: 8 bits for standard capabilities, 16 bits for extended ones. */
  id: number;
  /** Offset of the capability header in config space. */
  offset: number;
  /** Bytes the capability occupies from `offset` (see the module comment for the rules). */
  length: number;
  /** True for a PCI Express extended capability (offset >= 0x100). */
  extended: boolean;
  /** Extended capabilities: the 4-bit capability version of the header. */
  version?: number;
  /** The natural length was cut to avoid the next capability or the end of the space. */
  clamped?: boolean;
}

function capListError(message: string): VfioError {
  return new VfioError(`malformed capability list: ${message}`, { code: 'EVFIO_BAD_CAP_LIST', kind: 'format' });
}

function checkImage(config: Uint8Array): void {
  if (config.length < r.PCI_CFG_SPACE_SIZE) {
    throw new VfioError(`config space image of ${config.length} bytes is shorter than ${r.PCI_CFG_SPACE_SIZE}`, {
      code: 'EVFIO_CONFIG_SIZE',
      kind: 'usage',
    });
  }
}

const u16 = (b: Uint8Array, at: number): number => b[at] | (b[at + 1] << 8);
const u32 = (b: Uint8Array, at: number): number => (b[at] | (b[at + 1] << 8) | (b[at + 2] << 16) | (b[at + 3] << 24)) >>> 0;

/**
 * The standard capability list, in list order. Empty when STATUS lacks CAP_LIST (the bit
 * says whether the pointer at 0x34 is valid at all). Pointers are dword aligned by dropping
 * their two reserved low bits, as Linux's __pci_find_next_cap() does.
 */
export function walkCapabilities(config: Uint8Array): Capability[] {
  checkImage(config);
  if (!(u16(config, r.PCI_STATUS) & r.PCI_STATUS_CAP_LIST)) return [];
  const found: Array<{ id: number; offset: number }> = [];
  const seen = new Set<number>();
  // 48 dword slots exist in [0x40, 0x100): more entries than that is a loop by pigeonhole.
  const maxEntries = (r.PCI_CFG_SPACE_SIZE - r.PCI_STD_HEADER_SIZEOF) / 4;
  let from = r.PCI_CAPABILITY_LIST;
  let ptr = config[r.PCI_CAPABILITY_LIST] & ~3;
  while (ptr !== 0) {
    const where = from === r.PCI_CAPABILITY_LIST ? 'the capabilities pointer' : `the capability at 0x${hex2(from)}`;
    if (ptr < r.PCI_STD_HEADER_SIZEOF) {
      throw capListError(`${where} points to 0x${hex2(ptr)}, inside the 64-byte header`);
    }
    if (seen.has(ptr)) throw capListError(`${where} points back to 0x${hex2(ptr)} (a loop)`);
    if (found.length >= maxEntries) throw capListError(`more than ${maxEntries} capabilities`);
    const id = config[ptr + r.PCI_CAP_LIST_ID];
    if (id === 0xff) throw capListError(`capability id 0xff at 0x${hex2(ptr)} (device not responding?)`);
    seen.add(ptr);
    found.push({ id, offset: ptr });
    from = ptr;
    ptr = config[ptr + r.PCI_CAP_LIST_NEXT] & ~3;
  }
  const starts = found.map((c) => c.offset).sort((a, b) => a - b);
  return found.map(({ id, offset }) => {
    const following = starts.find((s) => s > offset) ?? r.PCI_CFG_SPACE_SIZE;
    const room = following - offset;
    const natural = naturalLength(config, id, offset, room);
    const length = Math.min(natural, room);
    return length < natural ? { id, offset, length, extended: false, clamped: true } : { id, offset, length, extended: false };
  });
}

/** The length a standard capability has by its own definition; `room` for unknown ones. */
function naturalLength(config: Uint8Array, id: number, offset: number, room: number): number {
  switch (id) {
    case r.PCI_CAP_ID_MSI:
      return r.msiLayout(u16(config, offset + r.PCI_MSI_FLAGS)).size;
    case r.PCI_CAP_ID_MSIX:
      return r.PCI_CAP_MSIX_SIZEOF;
    case r.PCI_CAP_ID_PM:
      return r.PCI_PM_SIZEOF;
    case r.PCI_CAP_ID_EXP:
      return (u16(config, offset + r.PCI_EXP_FLAGS) & r.PCI_EXP_FLAGS_VERS) === 1
        ? r.PCI_CAP_EXP_ENDPOINT_SIZEOF_V1
        : r.PCI_CAP_EXP_ENDPOINT_SIZEOF_V2;
    case r.PCI_CAP_ID_VNDR:
      // The length byte counts the whole capability, header included; below 3 is nonsense
      // and is read as "header only".
      return Math.max(config[offset + r.PCI_CAP_VNDR_LEN], r.PCI_CAP_VNDR_HEADER);
    default:
      return room;
  }
}

/**
 * The extended capability list (PCI Express config space of 4096 bytes), in list order.
 * Empty for a 256-byte image, and when the dword at 0x100 is 0 (no extended capabilities) or
 * all-ones (no extended config space behind the function).
 */
export function walkExtendedCapabilities(config: Uint8Array): Capability[] {
  checkImage(config);
  if (config.length < r.PCI_CFG_SPACE_EXP_SIZE) return [];
  const first = u32(config, r.PCI_EXT_CAP_START);
  if (first === 0 || first === 0xffffffff) return [];
  const found: Array<{ id: number; version: number; offset: number }> = [];
  const seen = new Set<number>();
  const maxEntries = (r.PCI_CFG_SPACE_EXP_SIZE - r.PCI_CFG_SPACE_SIZE) / 4;
  let from = -1;
  let pos = r.PCI_EXT_CAP_START;
  for (;;) {
    const where = `the extended capability at 0x${from.toString(16)}`;
    if (pos < r.PCI_EXT_CAP_START) {
      throw capListError(`${where} points to 0x${pos.toString(16)}, below the extended space at 0x100`);
    }
    if (seen.has(pos)) throw capListError(`${where} points back to 0x${pos.toString(16)} (a loop)`);
    if (found.length >= maxEntries) throw capListError(`more than ${maxEntries} extended capabilities`);
    const header = u32(config, pos);
    if (header === 0xffffffff) {
      throw capListError(`extended capability header 0xffffffff at 0x${pos.toString(16)} (device not responding?)`);
    }
    if (header === 0) break; // a zero header ends the list (Linux pci_find_next_ext_capability())
    seen.add(pos);
    found.push({ id: r.pciExtCapId(header), version: r.pciExtCapVer(header), offset: pos });
    const next = r.pciExtCapNext(header);
    if (next === 0) break;
    from = pos;
    pos = next;
  }
  const starts = found.map((c) => c.offset).sort((a, b) => a - b);
  return found.map(({ id, version, offset }) => {
    const following = starts.find((s) => s > offset) ?? r.PCI_CFG_SPACE_EXP_SIZE;
    return { id, offset, length: following - offset, extended: true, version };
  });
}

/** Standard then extended capabilities of `config`. */
export function walkAllCapabilities(config: Uint8Array): Capability[] {
  return [...walkCapabilities(config), ...walkExtendedCapabilities(config)];
}

/** The first standard capability with id `id`, if any. */
export function findCapability(caps: readonly Capability[], id: number): Capability | undefined {
  return caps.find((c) => !c.extended && c.id === id);
}

/** The first extended capability with id `id`, if any. */
export function findExtCapability(caps: readonly Capability[], id: number): Capability | undefined {
  return caps.find((c) => c.extended && c.id === id);
}

/** The capability whose bytes include `offset`, if any. */
export function capabilityAt(caps: readonly Capability[], offset: number): Capability | undefined {
  return caps.find((c) => offset >= c.offset && offset < c.offset + c.length);
}

/**
 * The restore-time check of config space: does the destination device match the saved one?
 *
 * QEMU's rule (hw/pci/pci.c get_pci_config_device(), VFIO-NOTES "Config space on restore"):
 * byte i fails when `(saved[i] ^ current[i]) & cmask[i] & ~wmask[i] & ~w1cmask[i]` is non-zero.
 * Compared are the bits the device defines and the guest cannot change: identity, class, header
 * type, the capability list, BAR type and size bits, every capability byte that is not guest
 * writable (the Vendor Specific body excepted). Guest-writable bits (wmask) and write-1-to-clear
 * bits (w1cmask) are state, not identity, and may differ.
 *
 * Which masks: the *destination's own*, built by ConfigSpace.fromDevice() from the
 * destination device's config bytes, as QEMU's get_pci_config_device() uses the loading device's
 * masks. Masks stored in a snapshot or sent by a source are never trusted: a file re-sealed with
 * its cmask zeroed would otherwise pass any device. The destination's capability layout must
 * match the source's too, and it is checked by the same rule: cmask covers the capabilities
 * pointer at 0x34, the STATUS CAP_LIST bit, and every capability header (id, next pointer; the
 * Vendor Specific length byte; the extended capability header dwords), so a capability moved,
 * added, removed or resized shows up as a mismatch at a pointer or header byte.
 */
import { VfioError } from '../../base/errors';
import * as r from './regs';
import { type Capability, capabilityAt, walkAllCapabilities } from './capabilities';
import { ConfigSpace, type ConfigImage, type FromDeviceOptions } from './config-space';
import { capabilityName, extCapabilityName, headerRegisterName, hex2 } from './names';

/** A saved config space: its bytes (the masks that may come with them are not used). */
export type SavedConfig = ConfigSpace | ConfigImage | Uint8Array;

/**
 * The destination side of the check: the config bytes read from the destination device now,
 * and the masks built from them by the same rules as the device model's (ConfigSpace.fromDevice).
 */
export interface DestinationConfig {
  raw: Uint8Array;
  masks: ConfigImage;
  capabilities: readonly Capability[];
}

/**
 * The destination of a restore, from its raw config bytes (256 or 4096; a shorter config region,
 * like mtty's 255 bytes, padded with zeros) and its BAR sizes. Errors as ConfigSpace.fromDevice().
 */
export function destinationConfig(raw: Uint8Array, opts: FromDeviceOptions = {}): DestinationConfig {
  const model = ConfigSpace.fromDevice(raw, opts);
  return { raw, masks: model.image(), capabilities: model.capabilities };
}

export interface ConfigMismatch {
  /** Config offset of the byte. For a size mismatch: the smaller of the two sizes. */
  offset: number;
  /** 'PCI_DEVICE_ID', 'MSI capability at 0x50 +2', 'Vendor Specific capability at 0x60 header', ... */
  register: string;
  /** Saved byte (for a size mismatch: the saved size in bytes). */
  saved: number;
  /** Byte read from the device (for a size mismatch: its size in bytes). */
  current: number;
  /** The bits compared at this offset: `cmask & ~wmask & ~w1cmask` (0 for a size mismatch). */
  mask: number;
}

/** A VfioError from checkConfig() carries the list. */
export type ConfigMismatchError = VfioError & { mismatches: ConfigMismatch[] };

/** How many mismatches checkConfig() spells out in its message. */
const MESSAGE_LIMIT = 16;

function bytesOf(saved: SavedConfig): Uint8Array {
  return saved instanceof Uint8Array ? saved : saved.bytes;
}

/**
 * Compare a saved config space with the destination device's by QEMU's rule, under the
 * destination's own masks. Returns one entry per failing byte, in offset order (empty: they
 * match). Images of different sizes (256 vs 4096) are compared over the common part and add one
 * 'config space size' entry.
 */
export function compareConfig(saved: SavedConfig, destination: DestinationConfig): ConfigMismatch[] {
  const s = bytesOf(saved);
  const { raw: cur, masks: m } = destination;
  const n = Math.min(s.length, cur.length, m.cmask.length, m.wmask.length, m.w1cmask.length);
  const caps = destination.capabilities.length ? destination.capabilities : capabilitiesOrNone(s);
  const out: ConfigMismatch[] = [];
  if (s.length !== cur.length) {
    out.push({ offset: n, register: 'config space size', saved: s.length, current: cur.length, mask: 0 });
  }
  for (let i = 0; i < n; i++) {
    const mask = m.cmask[i] & ~m.wmask[i] & ~m.w1cmask[i] & 0xff;
    if ((s[i] ^ cur[i]) & mask) {
      out.push({ offset: i, register: registerName(caps, i), saved: s[i], current: cur[i], mask });
    }
  }
  return out;
}

/**
 * compareConfig() that throws: a VfioError of kind 'mismatch', code `EVFIO_CONFIG_MISMATCH`,
 * whose message names each offending offset and register (the first 16) and whose
 * `mismatches` property holds the full list. `ctx` fills the error's device and step.
 */
export function checkConfig(
  saved: SavedConfig,
  destination: DestinationConfig,
  ctx: { device?: string; step?: string } = {},
): void {
  const list = compareConfig(saved, destination);
  if (list.length === 0) return;
  const shown = list.slice(0, MESSAGE_LIMIT).map(describeMismatch);
  const more = list.length > MESSAGE_LIMIT ? `; and ${list.length - MESSAGE_LIMIT} more` : '';
  const where = ctx.device ? ` of ${ctx.device}` : '';
  const err = new VfioError(
    `config space${where} does not match the saved one at ${list.length} byte${list.length === 1 ? '' : 's'}: ${shown.join('; ')}${more}`,
    { code: 'EVFIO_CONFIG_MISMATCH', kind: 'mismatch', device: ctx.device, step: ctx.step ?? 'restore:check-config' },
  ) as ConfigMismatchError;
  err.mismatches = list;
  throw err;
}

function describeMismatch(m: ConfigMismatch): string {
  if (m.register === 'config space size') return `config space size: saved ${m.saved} bytes, device ${m.current}`;
  return `0x${offsetHex(m.offset)} ${m.register}: saved 0x${hex2(m.saved)}, device 0x${hex2(m.current)} (compared bits 0x${hex2(m.mask)})`;
}

function offsetHex(offset: number): string {
  return offset < 0x100 ? hex2(offset) : offset.toString(16).padStart(3, '0');
}

function capabilitiesOrNone(bytes: Uint8Array): readonly Capability[] {
  try {
    return walkAllCapabilities(bytes);
  } catch {
    return []; // a malformed saved list only costs us the capability names
  }
}

/**
 * The name of the register holding byte `offset`: a pci_regs.h header name below 0x40, the
 * capability and the byte within it above ('MSI capability at 0x50 +2', 'Vendor Specific
 * capability at 0x60 header'), 'device-specific 0x48' or 'extended config 0x1f0' elsewhere.
 */
export function registerName(caps: readonly Capability[], offset: number): string {
  if (offset < r.PCI_STD_HEADER_SIZEOF) return headerRegisterName(offset);
  const c = capabilityAt(caps, offset);
  if (!c) {
    return offset < r.PCI_CFG_SPACE_SIZE ? `device-specific 0x${hex2(offset)}` : `extended config 0x${offset.toString(16)}`;
  }
  const rel = offset - c.offset;
  if (c.extended) {
    const name = `${extCapabilityName(c.id)} extended capability at 0x${c.offset.toString(16)}`;
    return rel < r.PCI_EXT_CAP_HEADER_SIZEOF ? `${name} header` : `${name} ${relText(rel)}`;
  }
  const name = `${capabilityName(c.id)} capability at 0x${hex2(c.offset)}`;
  const headerLen = c.id === r.PCI_CAP_ID_VNDR ? r.PCI_CAP_VNDR_HEADER : 2;
  return rel < headerLen ? `${name} header` : `${name} ${relText(rel)}`;
}

function relText(rel: number): string {
  return rel < 10 ? `+${rel}` : `+0x${rel.toString(16)}`;
}

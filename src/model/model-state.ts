/**
 * The PCI_MODEL section body (docs/snapshot-format.md): what the vfio-pci device model adds to
 * the device's own migration stream — the config-space shadow with its masks (which holds the
 * BAR addresses, PCI_COMMAND and the MSI capability as the guest programmed them), the
 * emulated MSI-X table, the BAR layout that was on the bus, and the interrupt mode.
 *
 * Layout, little-endian:
 *   u32 magic 'PMDL', u16 version 1, u16 flags (bit 0: MSI-X table present),
 *   u32 length + ConfigSpace.serialize(),
 *   u32 length + MsixTable.serialize() (length 0 when absent),
 *   u8 interrupt mode (0 none, 1 INTx, 2 MSI, 3 MSI-X), u8 BAR count, u16 reserved,
 *   per BAR: u8 index, u8 space (0 mmio, 1 pio), u16 reserved, u32 size, u64 address,
 *   u16 id length + UTF-8 device id.
 */
import { VfioError } from '../base/errors';
import type { AddressSpace } from './host/types';
import type { IrqMode } from './interrupts';

const MAGIC = 0x4c444d50; // 'PMDL'
const VERSION = 1;
const MODES: IrqMode[] = ['none', 'intx', 'msi', 'msix'];

export interface ModelState {
  id: string;
  config: Buffer;
  msixTable?: Buffer;
  irqMode: IrqMode;
  bars: Array<{ bar: number; space: AddressSpace; size: number; address: bigint }>;
}

function bad(why: string): VfioError {
  return new VfioError(`PCI_MODEL section: ${why}`, { code: 'EVFIO_BAD_SNAPSHOT', kind: 'format' });
}

export function encodeModelState(m: ModelState): Buffer {
  const id = Buffer.from(m.id, 'utf8');
  const msix = m.msixTable ?? Buffer.alloc(0);
  const b = Buffer.alloc(8 + 4 + m.config.length + 4 + msix.length + 4 + m.bars.length * 16 + 2 + id.length);
  let o = 0;
  o = b.writeUInt32LE(MAGIC, o);
  o = b.writeUInt16LE(VERSION, o);
  o = b.writeUInt16LE(m.msixTable ? 1 : 0, o);
  o = b.writeUInt32LE(m.config.length, o);
  o += m.config.copy(b, o);
  o = b.writeUInt32LE(msix.length, o);
  o += msix.copy(b, o);
  o = b.writeUInt8(MODES.indexOf(m.irqMode), o);
  o = b.writeUInt8(m.bars.length, o);
  o = b.writeUInt16LE(0, o);
  for (const bar of m.bars) {
    o = b.writeUInt8(bar.bar, o);
    o = b.writeUInt8(bar.space === 'pio' ? 1 : 0, o);
    o = b.writeUInt16LE(0, o);
    o = b.writeUInt32LE(bar.size, o);
    o = b.writeBigUInt64LE(bar.address, o);
  }
  o = b.writeUInt16LE(id.length, o);
  id.copy(b, o);
  return b;
}

export function decodeModelState(b: Buffer): ModelState {
  let o = 0;
  const need = (n: number): void => {
    if (o + n > b.length) throw bad(`truncated at byte ${o}`);
  };
  need(12);
  if (b.readUInt32LE(0) !== MAGIC) throw bad('bad magic');
  const version = b.readUInt16LE(4);
  if (version !== VERSION) throw bad(`version ${version} is not supported (this library reads ${VERSION})`);
  const hasMsix = (b.readUInt16LE(6) & 1) !== 0;
  o = 8;
  const cfgLen = b.readUInt32LE(o);
  o += 4;
  need(cfgLen);
  const config = Buffer.from(b.subarray(o, o + cfgLen));
  o += cfgLen;
  need(4);
  const msixLen = b.readUInt32LE(o);
  o += 4;
  need(msixLen);
  const msixTable = hasMsix ? Buffer.from(b.subarray(o, o + msixLen)) : undefined;
  o += msixLen;
  need(4);
  const mode = MODES[b.readUInt8(o)];
  if (!mode) throw bad(`unknown interrupt mode ${b.readUInt8(o)}`);
  const nBars = b.readUInt8(o + 1);
  o += 4;
  const bars: ModelState['bars'] = [];
  for (let i = 0; i < nBars; i++) {
    need(16);
    bars.push({ bar: b.readUInt8(o), space: b.readUInt8(o + 1) ? 'pio' : 'mmio', size: b.readUInt32LE(o + 4), address: b.readBigUInt64LE(o + 8) });
    o += 16;
  }
  need(2);
  const idLen = b.readUInt16LE(o);
  o += 2;
  need(idLen);
  const id = b.subarray(o, o + idLen).toString('utf8');
  if (o + idLen !== b.length) throw bad(`${b.length - o - idLen} trailing bytes`);
  return { id, config, msixTable, irqMode: mode, bars };
}

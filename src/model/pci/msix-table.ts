/**
 * An emulated MSI-X table and Pending Bit Array (PCI Local Bus spec, "MSI-X Table Structure").
 * The guest programs vectors here; the device model turns them into VFIO_DEVICE_SET_IRQS
 * (index VFIO_PCI_MSIX_IRQ_INDEX) and uses the PBA to remember interrupts that fired while a
 * vector was masked. Pure: no device access.
 *
 * Table entry `i` is 16 bytes at `i * 16`: message address low (+0), high (+4), data (+8),
 * vector control (+12, bit 0 = mask). Only the mask bit of vector control is kept; its other
 * bits read as 0. Entries start masked with a zero message, as after reset.
 * The PBA is one bit per vector in little-endian qwords (`ceil(n / 64) * 8` bytes), read-only to
 * the guest; `setPending()` is the device model's side, and `syncPending` lets it post the
 * interrupts it holds for masked vectors just before the PBA is read by the guest or serialised.
 *
 * Accesses are 4 or 8 bytes, naturally aligned, inside the structure (the spec allows nothing
 * else); anything else throws VfioError `EVFIO_MSIX_ACCESS` (kind 'usage'). A VMM that cannot
 * trust its guest to do this checks `isValidTableAccess()`/`isValidPbaAccess()` first and drops
 * the access, as QEMU's memory core does for msix_table_mmio_ops.
 */
import { VfioError } from '../../base/errors';
import * as r from './regs';

export interface MsixVectorState {
  index: number;
  /** Message address (64-bit). */
  address: bigint;
  /** Message data (32-bit). */
  data: number;
  masked: boolean;
  pending: boolean;
}

/** Which parts of a vector a guest write changed. */
export interface MsixChange {
  address: boolean;
  data: boolean;
  mask: boolean;
}

/**
 * Called once per vector whose address, data or mask bit a guest write changed (after the
 * write is applied), so the device model can re-arm SET_IRQS for it. A write that stores the
 * same values does not call it.
 */
export type MsixChangeListener = (vector: number, state: MsixVectorState, change: MsixChange) => void;

const SERIAL_MAGIC = 0x5458534d; // 'MSXT' little-endian
const SERIAL_VERSION = 1;
const SERIAL_HEADER = 16;

function accessError(what: string, offset: number, length: number, limit: number): VfioError {
  return new VfioError(
    `MSI-X ${what} access of ${length} bytes at 0x${Number(offset).toString(16)} is not a naturally aligned 4 or 8 byte access inside its ${limit} bytes`,
    { code: 'EVFIO_MSIX_ACCESS', kind: 'usage' },
  );
}

export class MsixTable {
  /** Number of vectors (table entries), 1..2048. */
  readonly size: number;
  /** The listener for guest changes; may be replaced at any time. */
  onChange: MsixChangeListener | undefined;
  /**
   * Called before the PBA is observed — a guest PBA read (a valid one), `serialize()` — so the
   * device model can bring the pending bits up to date with `setPending()`. May be replaced at
   * any time.
   */
  syncPending: (() => void) | undefined;
  private readonly table: Buffer;
  private readonly pba: Buffer;

  /** Throws `EVFIO_MSIX_SIZE` (usage) for a size outside 1..2048. */
  constructor(size: number, onChange?: MsixChangeListener) {
    if (!Number.isInteger(size) || size < 1 || size > r.PCI_MSIX_VECTORS_MAX) {
      throw new VfioError(`MSI-X table size ${size} is outside 1..${r.PCI_MSIX_VECTORS_MAX}`, { code: 'EVFIO_MSIX_SIZE', kind: 'usage' });
    }
    this.size = size;
    this.onChange = onChange;
    this.table = Buffer.alloc(size * r.PCI_MSIX_ENTRY_SIZE);
    this.pba = Buffer.alloc(Math.ceil(size / 64) * 8);
    this.reset();
  }

  /** Bytes of the table (16 per vector). */
  get tableBytes(): number {
    return this.table.length;
  }

  /** Bytes of the PBA (a qword per 64 vectors). */
  get pbaBytes(): number {
    return this.pba.length;
  }

  /** Every vector masked with a zero message, nothing pending (the reset state). No notifications. */
  reset(): void {
    this.table.fill(0);
    this.pba.fill(0);
    for (let i = 0; i < this.size; i++) {
      this.table.writeUInt32LE(r.PCI_MSIX_ENTRY_CTRL_MASKBIT, i * r.PCI_MSIX_ENTRY_SIZE + r.PCI_MSIX_ENTRY_VECTOR_CTRL);
    }
  }

  isValidTableAccess(offset: number, length: number): boolean {
    return validAccess(offset, length, this.table.length);
  }

  isValidPbaAccess(offset: number, length: number): boolean {
    return validAccess(offset, length, this.pba.length);
  }

  /** Guest read of the table: fills `out` (4 or 8 bytes) from `offset` (relative to the table start). */
  readTable(offset: number, out: Uint8Array): void {
    if (!this.isValidTableAccess(offset, out.length)) throw accessError('table', offset, out.length, this.table.length);
    out.set(this.table.subarray(offset, offset + out.length));
  }

  /**
   * Guest write of the table: `data` (4 or 8 bytes, little-endian) at `offset` (relative to
   * the table start). Calls `onChange` once per vector whose address, data or mask changed.
   */
  writeTable(offset: number, data: Uint8Array): void {
    if (!this.isValidTableAccess(offset, data.length)) throw accessError('table', offset, data.length, this.table.length);
    const first = Math.floor(offset / r.PCI_MSIX_ENTRY_SIZE);
    const last = Math.floor((offset + data.length - 1) / r.PCI_MSIX_ENTRY_SIZE);
    const before = [];
    for (let v = first; v <= last; v++) before.push(this.vector(v));
    this.table.set(data, offset);
    for (let v = first; v <= last; v++) {
      // Vector control: only the mask bit is implemented.
      const ctrl = v * r.PCI_MSIX_ENTRY_SIZE + r.PCI_MSIX_ENTRY_VECTOR_CTRL;
      this.table.writeUInt32LE(this.table.readUInt32LE(ctrl) & r.PCI_MSIX_ENTRY_CTRL_MASKBIT, ctrl);
    }
    for (let v = first; v <= last; v++) {
      const old = before[v - first];
      const now = this.vector(v);
      const change: MsixChange = { address: old.address !== now.address, data: old.data !== now.data, mask: old.masked !== now.masked };
      if ((change.address || change.data || change.mask) && this.onChange) this.onChange(v, now, change);
    }
  }

  /** Guest read of the PBA: fills `out` (4 or 8 bytes) from `offset` (relative to the PBA start), after `syncPending`. */
  readPba(offset: number, out: Uint8Array): void {
    if (!this.isValidPbaAccess(offset, out.length)) throw accessError('PBA', offset, out.length, this.pba.length);
    this.syncPending?.();
    out.set(this.pba.subarray(offset, offset + out.length));
  }

  /** Guest write of the PBA: validated, then ignored (the PBA is read-only). */
  writePba(offset: number, data: Uint8Array): void {
    if (!this.isValidPbaAccess(offset, data.length)) throw accessError('PBA', offset, data.length, this.pba.length);
  }

  /** The device model's side of the PBA: mark or clear vector `index` as pending. */
  setPending(index: number, pending: boolean): void {
    this.checkIndex(index);
    const byte = index >> 3;
    const bit = 1 << (index & 7);
    this.pba[byte] = pending ? this.pba[byte] | bit : this.pba[byte] & ~bit;
  }

  isPending(index: number): boolean {
    this.checkIndex(index);
    return (this.pba[index >> 3] & (1 << (index & 7))) !== 0;
  }

  /** One vector's state. */
  vector(index: number): MsixVectorState {
    this.checkIndex(index);
    const at = index * r.PCI_MSIX_ENTRY_SIZE;
    const lo = this.table.readUInt32LE(at + r.PCI_MSIX_ENTRY_LOWER_ADDR);
    const hi = this.table.readUInt32LE(at + r.PCI_MSIX_ENTRY_UPPER_ADDR);
    return {
      index,
      address: (BigInt(hi) << 32n) | BigInt(lo),
      data: this.table.readUInt32LE(at + r.PCI_MSIX_ENTRY_DATA),
      masked: (this.table.readUInt32LE(at + r.PCI_MSIX_ENTRY_VECTOR_CTRL) & r.PCI_MSIX_ENTRY_CTRL_MASKBIT) !== 0,
      pending: this.isPending(index),
    };
  }

  /** Every vector's state, index order. */
  vectors(): MsixVectorState[] {
    const out: MsixVectorState[] = [];
    for (let i = 0; i < this.size; i++) out.push(this.vector(i));
    return out;
  }

  /**
   * Serialise for a snapshot, little-endian, version 1: magic `MSXT` (4), version u16, reserved
   * u16, vector count u32, reserved u32, then the table (16 bytes per vector) and the PBA.
   */
  serialize(): Buffer {
    this.syncPending?.();
    const out = Buffer.alloc(SERIAL_HEADER + this.table.length + this.pba.length);
    out.writeUInt32LE(SERIAL_MAGIC, 0);
    out.writeUInt16LE(SERIAL_VERSION, 4);
    out.writeUInt32LE(this.size, 8);
    this.table.copy(out, SERIAL_HEADER);
    this.pba.copy(out, SERIAL_HEADER + this.table.length);
    return out;
  }

  /**
   * Decode `serialize()` output. No notifications are sent: the caller arms every vector from
   * `vectors()` after a restore. Errors: VfioError kind 'format', `EVFIO_MSIX_FORMAT` or
   * `EVFIO_MSIX_VERSION`.
   */
  static deserialize(b: Uint8Array, onChange?: MsixChangeListener): MsixTable {
    const buf = Buffer.from(b.buffer, b.byteOffset, b.byteLength);
    const bad = (why: string): VfioError => new VfioError(`bad serialized MSI-X table: ${why}`, { code: 'EVFIO_MSIX_FORMAT', kind: 'format' });
    if (buf.length < SERIAL_HEADER) throw bad(`${buf.length} bytes is shorter than the header`);
    if (buf.readUInt32LE(0) !== SERIAL_MAGIC) throw bad('wrong magic');
    const version = buf.readUInt16LE(4);
    if (version !== SERIAL_VERSION) {
      throw new VfioError(`serialized MSI-X table version ${version} is not supported (this library reads ${SERIAL_VERSION})`, {
        code: 'EVFIO_MSIX_VERSION',
        kind: 'format',
      });
    }
    const n = buf.readUInt32LE(8);
    if (n < 1 || n > r.PCI_MSIX_VECTORS_MAX) throw bad(`vector count ${n}`);
    const t = new MsixTable(n, onChange);
    const want = SERIAL_HEADER + t.table.length + t.pba.length;
    if (buf.length !== want) throw bad(`length ${buf.length}, expected ${want}`);
    buf.copy(t.table, 0, SERIAL_HEADER, SERIAL_HEADER + t.table.length);
    buf.copy(t.pba, 0, SERIAL_HEADER + t.table.length, want);
    for (let i = 0; i < n; i++) {
      const ctrl = i * r.PCI_MSIX_ENTRY_SIZE + r.PCI_MSIX_ENTRY_VECTOR_CTRL;
      if (t.table.readUInt32LE(ctrl) & ~r.PCI_MSIX_ENTRY_CTRL_MASKBIT) throw bad(`vector ${i} has reserved vector control bits set`);
    }
    const tail = n % 64;
    if (tail !== 0) {
      // Bits past the last vector must be clear.
      const lastQword = t.pba.readBigUInt64LE(t.pba.length - 8);
      if (lastQword >> BigInt(tail)) throw bad('pending bits set past the last vector');
    }
    return t;
  }

  private checkIndex(index: number): void {
    if (!Number.isInteger(index) || index < 0 || index >= this.size) {
      throw new VfioError(`MSI-X vector ${index} is outside 0..${this.size - 1}`, { code: 'EVFIO_MSIX_ACCESS', kind: 'usage' });
    }
  }
}

function validAccess(offset: number, length: number, limit: number): boolean {
  return (length === 4 || length === 8) && Number.isInteger(offset) && offset >= 0 && offset % length === 0 && offset + length <= limit;
}

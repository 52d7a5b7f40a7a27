/**
 * Placing the device's BARs in guest address space, and serving guest accesses to them.
 *
 * BARs are virtualised (src/pci/config-space.ts): the guest programs addresses into the
 * shadow, and `sync()` keeps the host bus in line with it — a BAR is on the bus exactly when the
 * shadow says it is mapped (decode enabled in COMMAND, a usable address). Accesses are
 * forwarded to the VFIO region with pread/pwrite, except the MSI-X table and PBA, which are
 * emulated wherever they sit in their BAR (the rest of that BAR still reaches the device:
 * QEMU hw/vfio/pci.c vfio_msix_setup() does the same with an overlapping memory region).
 *
 * Guest accesses never throw (./guest-error.ts): a failed access is reported to the VMM, a
 * read returns all-ones. `sync()` tries every BAR even when one fails, and throws the first
 * failure for the caller to report.
 *
 * The allocator is used only by `assign()`, once, when a device is first attached; restore
 * never allocates, it maps what the snapshot's shadow says. The allocation records the
 * allocator handed out are kept here, and `release()` gives exactly those back: the guest may
 * have moved a BAR since, and its shadow address is not an allocation.
 */
import type { VfioDevice } from '../kernel/device';
import type { AddressSpace, AllocationRecord, BarAccessHandler, Host } from './host/types';
import type { BarInfo, ConfigSpace, MsixState } from './pci/config-space';
import type { MsixTable } from './pci/msix-table';
import { reportGuestError, type GuestErrorSink, type GuestErrorStep } from './guest-error';
import { logger } from '../base/log';

const log = logger('bar');

interface Mapped {
  address: bigint;
  size: number;
  space: AddressSpace;
}

export class BarMapper {
  private readonly mapped = new Map<number, Mapped>();
  /** The last sync() could not bring the bus in line with the shadow (the next config write tries again). */
  stale = false;
  /** What assign() got from the allocator, until release() gives it back. */
  private allocations: AllocationRecord[] = [];

  constructor(
    private readonly dev: VfioDevice,
    private readonly host: Host,
    private readonly id: string,
    private readonly config: () => ConfigSpace,
    private readonly msixTable: () => MsixTable | undefined,
    private readonly report: GuestErrorSink,
  ) {}

  /**
   * Firmware's job on first attach: allocate an address for every BAR from the host's
   * allocator and program it into the shadow. Never called on restore.
   */
  assign(): void {
    const cfg = this.config();
    for (const bar of cfg.bars()) {
      if (bar.kind === 'rom') continue;
      const space: AddressSpace = bar.kind === 'io' ? 'pio' : 'mmio';
      const allocation = this.host.allocator.allocate(space, bar.size, `${this.id}/bar${bar.index}`);
      this.allocations.push(allocation);
      const addr = allocation.address;
      cfg.write(bar.offset, 4, Number(addr & 0xffff_ffffn));
      if (bar.kind === 'mem64') cfg.write(bar.offset + 4, 4, Number(addr >> 32n));
      log('%s: BAR%d %s %d bytes at 0x%s', this.id, bar.index, bar.kind, bar.size, addr.toString(16));
    }
  }

  /**
   * Give back what assign() allocated (device removed from the VM), once. A device attached
   * without assign() (a restore destination) holds no allocation: the VMM restored its
   * allocator's table and owns those entries.
   */
  release(): void {
    const held = this.allocations;
    this.allocations = [];
    for (const a of held) this.host.allocator.free(a);
  }

  /**
   * Map, move or unmap BARs so that the bus matches the shadow. Every BAR is tried; when the
   * bus refuses one, the others still follow the shadow, the refused one stays off the bus (a
   * later sync tries again) and the first error is thrown at the end.
   */
  sync(): void {
    const want = new Map<number, BarInfo>();
    for (const b of this.config().bars()) if (b.mapped && b.kind !== 'rom') want.set(b.index, b);
    let failure: unknown;
    for (const [index, m] of this.mapped) {
      const w = want.get(index);
      if (w && w.address === m.address) continue;
      try {
        this.host.bus.unmap(this.id, index);
        this.mapped.delete(index);
        log('%s: BAR%d unmapped from 0x%s', this.id, index, m.address.toString(16));
      } catch (e) {
        log('%s: BAR%d could not be unmapped from 0x%s: %o', this.id, index, m.address.toString(16), e);
        failure ??= e;
      }
    }
    for (const [index, b] of want) {
      if (this.mapped.has(index)) continue;
      const space: AddressSpace = b.kind === 'io' ? 'pio' : 'mmio';
      try {
        this.host.bus.map({ device: this.id, bar: index, space, address: b.address, size: b.size }, this.handler(index));
        this.mapped.set(index, { address: b.address, size: b.size, space });
        log('%s: BAR%d mapped at %s 0x%s', this.id, index, space, b.address.toString(16));
      } catch (e) {
        log('%s: BAR%d could not be mapped at %s 0x%s: %o', this.id, index, space, b.address.toString(16), e);
        failure ??= e;
      }
    }
    this.stale = failure !== undefined;
    if (this.stale) throw failure;
  }

  /** Take every BAR off the bus. */
  unmapAll(): void {
    for (const index of this.mapped.keys()) this.host.bus.unmap(this.id, index);
    this.mapped.clear();
  }

  /** The BAR layout as mapped now (for snapshots and tests). */
  mappings(): Array<{ bar: number } & Mapped> {
    return [...this.mapped].map(([bar, m]) => ({ bar, ...m }));
  }

  /**
   * Where an access of `len` bytes at `offset` in BAR `index` goes: the emulated MSI-X table or
   * PBA when it lies inside one (offsets relative to it), else the device region.
   */
  private target(index: number, offset: number, len: number): { table?: number; pba?: number } {
    const msix: MsixState | null = this.config().msix();
    if (!msix || !this.msixTable()) return {};
    const tableLen = msix.tableSize * 16;
    const pbaLen = Math.ceil(msix.tableSize / 64) * 8;
    if (msix.tableBir === index && offset >= msix.tableOffset && offset + len <= msix.tableOffset + tableLen) return { table: offset - msix.tableOffset };
    if (msix.pbaBir === index && offset >= msix.pbaOffset && offset + len <= msix.pbaOffset + pbaLen) return { pba: offset - msix.pbaOffset };
    return {};
  }

  /** The guest's accesses to BAR `index`; they never throw (module comment). */
  private handler(index: number): BarAccessHandler {
    const fail = (access: 'bar-read' | 'bar-write', offset: number, data: Buffer, step: GuestErrorStep, error: unknown): void => {
      const value = access !== 'bar-write' ? undefined : data.length === 8 ? data.readBigUInt64LE(0) : data.length >= 1 && data.length <= 6 ? data.readUIntLE(0, data.length) : undefined;
      reportGuestError(this.report, { device: this.id, access, bar: index, offset, size: data.length, value, step, error });
    };
    return {
      read: (offset, data) => {
        let step: GuestErrorStep = 'device';
        try {
          const t = this.target(index, offset, data.length);
          const table = this.msixTable()!;
          if (t.table !== undefined) {
            step = 'access';
            table.readTable(t.table, data);
          } else if (t.pba !== undefined) {
            // A valid PBA read can only fail in the interrupt wiring's pending-bit sync.
            step = table.isValidPbaAccess(t.pba, data.length) ? 'interrupts' : 'access';
            table.readPba(t.pba, data);
          } else {
            this.dev.readRegion(index, offset, data.length).copy(data);
          }
        } catch (e) {
          data.fill(0xff);
          fail('bar-read', offset, data, step, e);
        }
      },
      write: (offset, data) => {
        let step: GuestErrorStep = 'device';
        try {
          const t = this.target(index, offset, data.length);
          const table = this.msixTable()!;
          if (t.table !== undefined) {
            // A valid table write can only fail in the interrupt wiring (SET_IRQS, the router).
            step = table.isValidTableAccess(t.table, data.length) ? 'interrupts' : 'access';
            table.writeTable(t.table, data);
          } else if (t.pba !== undefined) {
            step = 'access';
            table.writePba(t.pba, data);
          } else {
            this.dev.writeRegion(index, offset, data);
          }
        } catch (e) {
          fail('bar-write', offset, data, step, e);
        }
      },
    };
  }
}

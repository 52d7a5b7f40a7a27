/**
 * A small reference host: the pieces of a VMM the device model plugs into, enough to run the
 * device model for real (tests, the demo, the kernel tier) and to show a VMM author what each
 * piece must do.
 *
 *  - `ReferenceBus`: BAR routing (overlapping BARs allowed: the latest mapping wins), and
 *    `access()` to play the guest's MMIO/port accesses;
 *  - `ReferenceAllocator`: naturally aligned BAR addresses; allocating twice for one owner
 *    throws, and its table can be exported and restored like a VMM's own state;
 *  - `ReferenceInterrupts`: eventfds per MSI vector and for INTx, with counters and waits;
 *  - `ReferenceMemory`: guest RAM as Buffers.
 */
import type { Binding } from '../../kernel/binding/types';
import { POLLIN } from '../../kernel/binding/types';
import { VfioError } from '../../base/errors';
import { logger } from '../../base/log';
import type {
  AddressAllocator, AddressSpace, AllocationRecord, BarAccessHandler, BarMapping, GuestIommu, GuestIommuMapping, GuestMemory, GuestMemoryRegion, Host, HostBus, InterruptRouter,
  MsiMessage,
} from './types';

export type { AllocationRecord };

function inUse(message: string): VfioError {
  return new VfioError(message, { code: 'EVFIO_ADDRESS_IN_USE', kind: 'usage' });
}

const log = logger('host');
const hex = (n: bigint): string => `0x${n.toString(16)}`;
const PAGE = 4096;

const overlapping = (a: BarMapping, b: BarMapping): boolean =>
  a.space === b.space && a.address < b.address + BigInt(b.size) && b.address < a.address + BigInt(a.size);

/**
 * BAR routing. Overlapping BARs are legal PCI (a guest may program two BARs to the same range,
 * and does while it sizes or moves them), so `map()` accepts them, and the bus decides like
 * QEMU's memory core does with region priorities: the LATEST mapping wins. A guest access goes
 * to the most recently mapped BAR that holds its first byte; where that BAR is unmapped or moved
 * away, the one it covered is reached again. `overlaps()` lists the pairs that overlap now.
 */
export class ReferenceBus implements HostBus {
  /** Oldest first. */
  private readonly maps: Array<{ m: BarMapping; h: BarAccessHandler }> = [];

  /** Throws EVFIO_ADDRESS_IN_USE only when this device's BAR is mapped already (unmap it first). */
  map(m: BarMapping, handler: BarAccessHandler): void {
    const same = this.maps.find(({ m: o }) => o.device === m.device && o.bar === m.bar);
    if (same) throw inUse(`${m.device} BAR${m.bar} is already mapped at ${hex(same.m.address)}`);
    for (const { m: o } of this.maps) {
      if (overlapping(m, o)) log('%s %s+%d for %s BAR%d covers %s BAR%d at %s+%d', m.space, hex(m.address), m.size, m.device, m.bar, o.device, o.bar, hex(o.address), o.size);
    }
    this.maps.push({ m: { ...m }, h: handler });
  }

  /** Pairs of mappings that overlap now, the one that wins (the later) second. */
  overlaps(): Array<[BarMapping, BarMapping]> {
    const out: Array<[BarMapping, BarMapping]> = [];
    for (let i = 0; i < this.maps.length; i++) {
      for (let j = i + 1; j < this.maps.length; j++) {
        if (overlapping(this.maps[i].m, this.maps[j].m)) out.push([{ ...this.maps[i].m }, { ...this.maps[j].m }]);
      }
    }
    return out;
  }

  unmap(device: string, bar: number): void {
    const i = this.maps.findIndex(({ m }) => m.device === device && m.bar === bar);
    if (i >= 0) this.maps.splice(i, 1);
  }

  /** Current mappings (copies). */
  mappings(): BarMapping[] {
    return this.maps.map(({ m }) => ({ ...m }));
  }

  /** Find the mapping of a device's BAR. */
  find(device: string, bar: number): BarMapping | undefined {
    return this.mappings().find((m) => m.device === device && m.bar === bar);
  }

  /**
   * A guest access: route `data` (1, 2, 4 or 8 bytes) to the latest mapping that holds
   * `address`. Throws EVFIO_NO_MAPPING when none does, or when the access runs past the end of
   * that mapping (a real VMM would return all-ones / ignore; this bus is for tests and tools).
   */
  access(space: AddressSpace, address: bigint, data: Buffer, write: boolean): void {
    for (let i = this.maps.length - 1; i >= 0; i--) {
      const { m, h } = this.maps[i];
      if (m.space !== space || address < m.address || address >= m.address + BigInt(m.size)) continue;
      if (address + BigInt(data.length) > m.address + BigInt(m.size)) break;
      const off = Number(address - m.address);
      if (write) h.write(off, data);
      else h.read(off, data);
      return;
    }
    throw new VfioError(`no BAR maps ${space} ${hex(address)}+${data.length}`, { code: 'EVFIO_NO_MAPPING', kind: 'usage' });
  }

  read(space: AddressSpace, address: bigint, size: 1 | 2 | 4 | 8): bigint {
    const b = Buffer.alloc(size);
    this.access(space, address, b, false);
    return b.readBigUInt64LE !== undefined && size === 8 ? b.readBigUInt64LE(0) : BigInt(b.readUIntLE(0, size));
  }

  write(space: AddressSpace, address: bigint, size: 1 | 2 | 4 | 8, value: bigint | number): void {
    const b = Buffer.alloc(size);
    if (size === 8) b.writeBigUInt64LE(BigInt(value));
    else b.writeUIntLE(Number(value), 0, size);
    this.access(space, address, b, true);
  }
}

export class ReferenceAllocator implements AddressAllocator {
  private readonly live: AllocationRecord[] = [];
  private readonly next: Record<AddressSpace, bigint>;

  /** MMIO from 0xe000_0000, ports from 0xc000 by default. */
  constructor(base: Partial<Record<AddressSpace, bigint>> = {}) {
    this.next = { mmio: base.mmio ?? 0xe000_0000n, pio: base.pio ?? 0xc000n };
  }

  allocate(space: AddressSpace, size: number, owner: string): AllocationRecord {
    if (!(size > 0 && (size & (size - 1)) === 0)) throw new RangeError(`BAR size ${size} is not a power of two`);
    const prev = this.live.find((a) => a.owner === owner);
    if (prev) throw inUse(`${owner} already has ${prev.space} ${hex(prev.address)}+${prev.size}: allocated twice`);
    const align = BigInt(size);
    let at = (this.next[space] + align - 1n) & ~(align - 1n);
    for (;;) {
      const clash = this.live.find((a) => a.space === space && at < a.address + BigInt(a.size) && a.address < at + align);
      if (!clash) break;
      at = (clash.address + BigInt(clash.size) + align - 1n) & ~(align - 1n);
    }
    const record = { space, address: at, size, owner };
    this.live.push(record);
    this.next[space] = at + align;
    return { ...record };
  }

  free(a: AllocationRecord): void {
    const i = this.live.findIndex((l) => l.space === a.space && l.address === a.address && l.size === a.size && l.owner === a.owner);
    if (i >= 0) this.live.splice(i, 1);
  }

  /** The allocation table, as a VMM would save it with its own state. */
  export(): AllocationRecord[] {
    return this.live.map((a) => ({ ...a }));
  }

  /** A VMM's restored allocator: every saved allocation is live again. */
  static from(records: readonly AllocationRecord[]): ReferenceAllocator {
    const a = new ReferenceAllocator();
    for (const r of records) {
      a.live.push({ ...r });
      if (r.address + BigInt(r.size) > a.next[r.space]) a.next[r.space] = r.address + BigInt(r.size);
    }
    return a;
  }
}

interface Route {
  fd: number;
  message?: MsiMessage;
  resample?: number;
}

/**
 * Interrupt routing through eventfds. Where a real VMM would register each eventfd as a KVM
 * irqfd, this one lets tests and tools count and wait for the interrupts the device raised.
 */
export class ReferenceInterrupts implements InterruptRouter {
  private readonly routes = new Map<string, Route>();

  constructor(private readonly binding: Binding) {}

  msiRoute(device: string, vector: number, message: MsiMessage): number {
    const key = `${device}/msi${vector}`;
    let r = this.routes.get(key);
    if (!r) {
      r = { fd: this.binding.eventfd(0) };
      this.routes.set(key, r);
    }
    r.message = { ...message };
    return r.fd;
  }

  releaseMsi(device: string, vector: number): void {
    this.drop(`${device}/msi${vector}`);
  }

  intxRoute(device: string, _pin: number): { trigger: number; resample: number } {
    const key = `${device}/intx`;
    let r = this.routes.get(key);
    if (!r) {
      r = { fd: this.binding.eventfd(0), resample: this.binding.eventfd(0) };
      this.routes.set(key, r);
    }
    return { trigger: r.fd, resample: r.resample! };
  }

  releaseIntx(device: string): void {
    this.drop(`${device}/intx`);
  }

  /** The MSI message last programmed for a vector. */
  message(device: string, vector: number): MsiMessage | undefined {
    return this.routes.get(`${device}/msi${vector}`)?.message;
  }

  /** Interrupts raised since the last call (reads and clears the eventfd counter). */
  take(device: string, vector: number | 'intx'): number {
    const r = this.routes.get(vector === 'intx' ? `${device}/intx` : `${device}/msi${vector}`);
    return r ? Number(this.binding.eventfdRead(r.fd)) : 0;
  }

  /** Wait up to `timeoutMs` for an interrupt; resolves to the count taken (0 on timeout). */
  async wait(device: string, vector: number | 'intx', timeoutMs: number): Promise<number> {
    const r = this.routes.get(vector === 'intx' ? `${device}/intx` : `${device}/msi${vector}`);
    if (!r) return 0;
    const rev = await this.binding.poll(r.fd, POLLIN, timeoutMs);
    return rev & POLLIN ? Number(this.binding.eventfdRead(r.fd)) : 0;
  }

  /** The guest's EOI for INTx: signal the resample eventfd. */
  eoi(device: string): void {
    const r = this.routes.get(`${device}/intx`);
    if (r?.resample !== undefined) this.binding.eventfdWrite(r.resample, 1n);
  }

  /** Close every eventfd. */
  close(): void {
    for (const key of [...this.routes.keys()]) this.drop(key);
  }

  private drop(key: string): void {
    const r = this.routes.get(key);
    if (!r) return;
    this.routes.delete(key);
    this.binding.close(r.fd);
    if (r.resample !== undefined) this.binding.close(r.resample);
  }
}

export class ReferenceMemory implements GuestMemory {
  private readonly list: GuestMemoryRegion[] = [];

  /** `binding` tells buffer addresses, so that regions can be page-aligned for DMA mapping. */
  constructor(private readonly binding?: Binding) {}

  /** Add `size` bytes of zeroed guest RAM at `gpa` (page-aligned when a binding was given). */
  add(gpa: bigint, size: number): GuestMemoryRegion {
    let buffer = Buffer.alloc(size);
    if (this.binding) {
      const raw = Buffer.alloc(size + PAGE);
      const mis = Number(this.binding.bufferAddress(raw) % BigInt(PAGE));
      buffer = raw.subarray(mis ? PAGE - mis : 0, (mis ? PAGE - mis : 0) + size);
    }
    const r = { gpa, buffer };
    this.list.push(r);
    return r;
  }
  regions(): readonly GuestMemoryRegion[] {
    return this.list;
  }
}

/** A vIOMMU the VMM (or a test) drives by hand: map() and unmap() stand for the guest's requests. */
export class ReferenceViommu implements GuestIommu {
  private readonly live = new Map<bigint, bigint>();
  private readonly listeners = new Set<(m: GuestIommuMapping) => void>();

  constructor(readonly present = true) {}

  mappings(): number {
    return this.live.size;
  }

  onChange(listener: (m: GuestIommuMapping) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** The guest maps `length` bytes at `iova`. */
  map(iova: bigint, length: bigint): void {
    this.live.set(iova, length);
    this.listeners.forEach((l) => l({ kind: 'map', iova, length }));
  }

  /** The guest unmaps what it mapped at `iova`. */
  unmap(iova: bigint): void {
    const length = this.live.get(iova);
    if (length === undefined) return;
    this.live.delete(iova);
    this.listeners.forEach((l) => l({ kind: 'unmap', iova, length }));
  }
}

/** The reference host: bus, allocator, interrupts and memory together (and a vIOMMU when given one). */
export class ReferenceHost implements Host {
  readonly bus = new ReferenceBus();
  readonly interrupts: ReferenceInterrupts;
  readonly memory: ReferenceMemory;
  allocator: ReferenceAllocator;
  viommu?: ReferenceViommu;

  constructor(binding: Binding, allocator: ReferenceAllocator = new ReferenceAllocator()) {
    this.interrupts = new ReferenceInterrupts(binding);
    this.memory = new ReferenceMemory(binding);
    this.allocator = allocator;
  }

  close(): void {
    this.interrupts.close();
  }
}

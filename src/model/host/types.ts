/**
 * What a VMM provides to the vfio-pci device model: the plug-in interface.
 *
 * A VMM implements `Host` (or starts from the reference host in ./reference.ts) and hands it to
 * `VfioPciDevice.attach()`. The device model then:
 *  - asks `allocator` for BAR addresses once, when it is first attached (the role firmware plays
 *    on real hardware) — never on restore, where the addresses come from the snapshot and the
 *    VMM's allocator state is restored by the VMM itself;
 *  - puts BARs on `bus` (and takes them off) as the guest programs BAR registers and the
 *    COMMAND decode bits, with a handler that forwards accesses to the device or emulates them
 *    (MSI-X table and PBA);
 *  - gets one eventfd per live (unmasked) MSI/MSI-X vector, and a trigger + resample eventfd
 *    pair for INTx, from `interrupts`, and gives them to the kernel with VFIO_DEVICE_SET_IRQS;
 *  - reports what a guest access could not do as VfioPciDevice's `guest-error` event: no guest
 *    access throws into the VMM (../guest-error.ts);
 *  - maps guest memory for device DMA through `memory` (if given).
 */

/** Memory or I/O port space. */
export type AddressSpace = 'mmio' | 'pio';

/**
 * Handler of guest accesses to one BAR. `offset` is from the BAR's start; `data` is 1, 2, 4 or 8
 * bytes, little-endian. Never throws: a failed read fills `data` with all-ones, a failed write is
 * dropped, and both are reported on the device model's `guest-error` event.
 */
export interface BarAccessHandler {
  read(offset: number, data: Buffer): void;
  write(offset: number, data: Buffer): void;
}

/** One BAR placed in guest address space. */
export interface BarMapping {
  /** The device's stable id (`VfioPciDevice.id`). */
  device: string;
  /** 0..5, or 6 for the expansion ROM. */
  bar: number;
  space: AddressSpace;
  /** Guest physical address (mmio) or port number (pio). */
  address: bigint;
  /** Bytes. */
  size: number;
}

export interface HostBus {
  /**
   * Route guest accesses to `[address, address + size)` to `handler`. Called when the guest
   * enables decoding or moves a BAR: the range may overlap another device's BAR, which is legal
   * PCI (QEMU accepts it too): which BAR an access then reaches is the bus's choice (the
   * reference bus: the latest mapping). A bus that throws anyway has the error reported as a
   * `guest-error` ('bus'); the BAR then stays off the bus until the guest's next BAR or COMMAND
   * write. The device model unmaps a BAR before it maps it again.
   */
  map(mapping: BarMapping, handler: BarAccessHandler): void;
  /** Stop routing a BAR. No-op when it is not mapped. */
  unmap(device: string, bar: number): void;
}

/** One range an allocator handed out. The device model keeps it and gives it back to `free()` as it came. */
export interface AllocationRecord {
  space: AddressSpace;
  /** Guest physical address (mmio) or port number (pio) of the range's start. */
  address: bigint;
  /** Bytes. */
  size: number;
  /** Who asked: `<device id>/bar<index>`. */
  owner: string;
}

export interface AddressAllocator {
  /**
   * Allocate `size` bytes (a power of two, naturally aligned) in `space` for `owner`. Throws a
   * VfioError (EVFIO_ADDRESS_IN_USE / EVFIO_ADDRESS_EXHAUSTED) when it cannot.
   */
  allocate(space: AddressSpace, size: number, owner: string): AllocationRecord;
  /**
   * Release a range `allocate()` returned. The device model frees what it was given, never
   * where the guest has since moved the BAR (the guest's BAR address is not an allocation).
   * Freeing a record that is not live is a no-op.
   */
  free(allocation: AllocationRecord): void;
}

/** An MSI message: what the guest programmed into the MSI capability or an MSI-X table entry. */
export interface MsiMessage {
  address: bigint;
  data: number;
}

export interface InterruptRouter {
  /**
   * An eventfd that injects `message` into the guest when signalled (KVM's irqfd on a real
   * VMM). Called again for the same vector when the guest reprograms it or its interrupt set-up
   * is brought up to date (the message may be unchanged); the router may return the same fd.
   * The router owns the fd. The device model also signals it itself, once, to deliver an MSI-X
   * interrupt that was pending while the vector was masked.
   */
  msiRoute(device: string, vector: number, message: MsiMessage): number;
  /**
   * The vector is no longer used: masked (an MSI-X vector then keeps a trigger of the device
   * model's own, which records what fires in the PBA), or MSI/MSI-X disabled.
   */
  releaseMsi(device: string, vector: number): void;
  /**
   * INTx: `trigger` asserts the line; the VMM signals `resample` when the guest has serviced
   * it (EOI), which the device model turns into VFIO's INTx unmask. The router owns both fds.
   */
  intxRoute(device: string, pin: number): { trigger: number; resample: number };
  releaseIntx(device: string): void;
}

/** One range of guest RAM. */
export interface GuestMemoryRegion {
  /** Guest physical address. */
  gpa: bigint;
  /** The memory backing it in this process. */
  buffer: Buffer;
}

export interface GuestMemory {
  regions(): readonly GuestMemoryRegion[];
}

/** A guest IOMMU mapping (IOVA → guest physical), as the VMM's vIOMMU reports it. */
export interface GuestIommuMapping {
  kind: 'map' | 'unmap';
  iova: bigint;
  length: bigint;
}

/**
 * The guest's view of an IOMMU (a vIOMMU: virtio-iommu, intel-iommu, ...), as far as migration
 * needs it. With a vIOMMU a device's DMA addresses are IOVAs, not guest physical addresses, so a
 * device's DMA log over RAM ranges says nothing reliable about RAM: migration is blocked when
 * device DMA logging would be used (QEMU's rule), unless the VMM relaxes it for a guest that
 * uses the vIOMMU only for interrupt remapping (no DMA mappings at all).
 */
export interface GuestIommu {
  /** The guest sees a vIOMMU. */
  readonly present: boolean;
  /** DMA mappings the guest holds now (0 for a guest using it for interrupt remapping only). */
  mappings(): number;
  /** Tell `listener` of every guest map and unmap; returns a function that stops telling it. */
  onChange(listener: (m: GuestIommuMapping) => void): () => void;
}

export interface Host {
  bus: HostBus;
  allocator: AddressAllocator;
  interrupts: InterruptRouter;
  memory?: GuestMemory;
  /** The guest's vIOMMU; absent: none. */
  viommu?: GuestIommu;
}

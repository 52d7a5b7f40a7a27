/**
 * BAR0 of the simulated device: a 4 KiB 32-bit non-prefetchable MMIO region (vfio region index 0)
 * with a few registers. Little-endian, any access width and alignment (vfio-pci splits accesses
 * into naturally aligned pieces; the model works per byte).
 *
 * ```
 * offset  name        access  meaning
 * 0x000   ID          RO      0x4D495356 ("VSIM" in memory)
 * 0x004   VERSION     RO      0x00010001 (1.1: the data registers from 0x04C)
 * 0x008   STATUS      RO      bit 0 running, bit 1 error, bits 15:8 migration state (enum value)
 * 0x00C   CONTROL     RW      free for the user; migrated
 * 0x010   DOORBELL    WO      writing V raises an interrupt: vector V of MSI-X or MSI, or INTx,
 *                             whichever SET_IRQS enabled; reads 0
 * 0x014   IRQ_COUNT   RO      doorbells accepted since reset; migrated
 * 0x018   SEED_LO/HI  RO      the seed of the device data (changes when a stream is restored)
 * 0x020   SIZE_LO/HI  RO      device data size in bytes
 * 0x028   QUEUE_PENDING RO    doorbells (of either kind) queued but never completed (see "bus
 *                             mastering"); not migrated, cleared by reset
 * 0x030   DMA_ADDR_LO/HI RW   the DMA engine's target IOVA (64 bits)
 * 0x038   DMA_LEN     RW      bytes to write, 0 .. 16 MiB (DMA_MAX_LEN)
 * 0x03C   DMA_PATTERN RW      the u32 written over and over (byte i of the transfer is byte i % 4
 *                             of the pattern, little-endian)
 * 0x040   DMA_DOORBELL WO     writing anything starts one transfer; reads 0
 * 0x044   DMA_STATUS  RO      result of the last transfer: bit 0 done, bit 1 IOMMU fault (some
 *                             byte not mapped writable: nothing was written), bit 2 bad length
 * 0x048   DMA_COUNT   RO      transfers done since reset
 * 0x04C   BLOCK_SIZE  RO      bytes per block of the device data (src/sim/data.ts)
 * 0x050   TOUCH_BLOCK RW      first block the touch doorbell rewrites
 * 0x054   TOUCH_DOORBELL WO   writing N rewrites N blocks of the device data from TOUCH_BLOCK
 *                             (clipped to the last block): each gets a new version, and a PRE_COPY
 *                             session sends it again if it was sent; reads 0
 * 0x058   DATA_GEN_LO/HI RO   the sum of the versions of all data blocks: moves with every block
 *                             rewrite; a restored device shows the source's
 * 0x100   SCRATCH     RW      256 bytes free for the user; migrated
 * 0x800   MSI-X table RW      8 entries of 16 bytes (the MSI-X capability points here)
 * 0xC00   MSI-X PBA   RO      pending bits, always 0
 * ```
 *
 * The DMA engine writes guest memory through the device's IOMMU context (src/sim/dma.ts), and
 * what it writes is what the device's DMA logging reports. Its registers, and TOUCH_BLOCK, are
 * not migrated and reset to 0. The device data itself is migrated (the stream's records).
 *
 * While the device is stopped (STOP, STOP_COPY, RESUMING, ERROR) it must not change its internal
 * state (uAPI, "RUNNING_P2P -> STOP"), nor guest memory: writes to CONTROL, SCRATCH and the DMA
 * registers and TOUCH_BLOCK are dropped and the doorbells are ignored, while the MSI-X table stays writable (the uAPI names MSI-X as something a stopped
 * device keeps serving). Writes never fail.
 *
 * Bus mastering (device option `busMaster: 'required'`, spec `master=required`): completing a
 * command means DMA and an MSI write (a DMA doorbell is a command too), which a PCI function may only issue with PCI_COMMAND.MASTER
 * set in its own config space. A doorbell rung while MASTER is clear cannot complete: it stays
 * in the queue (QUEUE_PENDING + 1), no interrupt is raised and IRQ_COUNT does not move. The queue
 * is then wedged, as a real command queue whose head never finished: later doorbells queue
 * behind it even once MASTER is set, until a function reset (VFIO_DEVICE_RESET, FLR, release).
 * This is what a restore that forgets to write PCI_COMMAND back meets: config space is not in
 * the migration stream, so the destination starts with COMMAND 0. With the default
 * (`'ignored'`) doorbells complete whatever COMMAND holds.
 */
import { SCRATCH_SIZE, type RegisterBlock } from './stream';

export const BAR0_SIZE = 4096;

export const BAR0 = {
  ID: 0x000,
  VERSION: 0x004,
  STATUS: 0x008,
  CONTROL: 0x00c,
  DOORBELL: 0x010,
  IRQ_COUNT: 0x014,
  SEED_LO: 0x018,
  SEED_HI: 0x01c,
  SIZE_LO: 0x020,
  SIZE_HI: 0x024,
  QUEUE_PENDING: 0x028,
  DMA_ADDR_LO: 0x030,
  DMA_ADDR_HI: 0x034,
  DMA_LEN: 0x038,
  DMA_PATTERN: 0x03c,
  DMA_DOORBELL: 0x040,
  DMA_STATUS: 0x044,
  DMA_COUNT: 0x048,
  BLOCK_SIZE: 0x04c,
  TOUCH_BLOCK: 0x050,
  TOUCH_DOORBELL: 0x054,
  DATA_GEN_LO: 0x058,
  DATA_GEN_HI: 0x05c,
  SCRATCH: 0x100,
  MSIX_TABLE: 0x800,
  MSIX_PBA: 0xc00,
} as const;

export const BAR0_ID_VALUE = 0x4d495356;
export const BAR0_VERSION_VALUE = 0x00010001;
export const STATUS_RUNNING = 1 << 0;
export const STATUS_ERROR = 1 << 1;
export const MSIX_ENTRY_SIZE = 16;
/** DMA_STATUS bits. */
export const DMA_STATUS_DONE = 1 << 0;
export const DMA_STATUS_FAULT = 1 << 1;
export const DMA_STATUS_BAD_LENGTH = 1 << 2;
/** The longest transfer the DMA engine does: 16 MiB. */
export const DMA_MAX_LEN = 16 << 20;

/** What BAR0 needs from the device. */
export interface Bar0Host {
  /** True in RUNNING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P. */
  running(): boolean;
  /** The STATUS register value. */
  status(): number;
  seed(): bigint;
  size(): number;
  /** Bytes per block of the device data. */
  blockSize(): number;
  /** Sum of the versions of all data blocks. */
  dataGeneration(): number;
  /** Rewrite `count` data blocks from `first` (the running device; clipped to the last block). */
  touch(first: number, count: number): void;
  /** A doorbell write of `value` while running. */
  doorbell(value: number): void;
  /** May the device master the bus now (PCI_COMMAND.MASTER set, or the device does not care)? */
  busMaster(): boolean;
  /** Write `length` bytes of `pattern` at `iova` through the IOMMU; false on an IOMMU fault. */
  dma(iova: bigint, length: number, pattern: number): boolean;
}

export class Bar0 {
  private readonly mem = Buffer.alloc(BAR0_SIZE);

  constructor(
    private readonly host: Bar0Host,
    readonly msixVectors: number,
  ) {
    this.reset();
  }

  /** Power-on / function-reset values. */
  reset(): void {
    this.mem.fill(0);
    this.mem.writeUInt32LE(BAR0_ID_VALUE, BAR0.ID);
    this.mem.writeUInt32LE(BAR0_VERSION_VALUE, BAR0.VERSION);
    // MSI-X table entries reset with the vector masked (PCI spec, MSI-X Vector Control bit 0).
    for (let i = 0; i < this.msixVectors; i++) this.mem.writeUInt32LE(1, BAR0.MSIX_TABLE + i * MSIX_ENTRY_SIZE + 12);
  }

  /** Read `len` bytes at `off` (caller clips to the region) into `target` at `targetOff`. */
  read(off: number, target: Buffer, targetOff: number, len: number): void {
    const seed = BigInt.asUintN(64, this.host.seed());
    this.mem.writeUInt32LE(this.host.status() >>> 0, BAR0.STATUS);
    this.mem.writeUInt32LE(Number(seed & 0xffffffffn), BAR0.SEED_LO);
    this.mem.writeUInt32LE(Number(seed >> 32n), BAR0.SEED_HI);
    const size = this.host.size();
    this.mem.writeUInt32LE(size % 0x100000000, BAR0.SIZE_LO);
    this.mem.writeUInt32LE(Math.floor(size / 0x100000000), BAR0.SIZE_HI);
    this.mem.writeUInt32LE(this.host.blockSize() >>> 0, BAR0.BLOCK_SIZE);
    const gen = this.host.dataGeneration();
    this.mem.writeUInt32LE(gen % 0x100000000, BAR0.DATA_GEN_LO);
    this.mem.writeUInt32LE(Math.floor(gen / 0x100000000) >>> 0, BAR0.DATA_GEN_HI);
    this.mem.copy(target, targetOff, off, off + len);
    // The doorbells are write-only and read back 0.
    for (let i = 0; i < len; i++) {
      const at = off + i;
      if (isDoorbell(at, BAR0.DOORBELL) || isDoorbell(at, BAR0.DMA_DOORBELL) || isDoorbell(at, BAR0.TOUCH_DOORBELL)) target[targetOff + i] = 0;
    }
  }

  /** Write `len` bytes of `src` at `srcOff` to BAR0 offset `off` (caller clips to the region). */
  write(off: number, src: Buffer, srcOff: number, len: number): void {
    const running = this.host.running();
    let doorbell = 0;
    let rang = false;
    let dmaRang = false;
    let touch = 0;
    let touchRang = false;
    for (let i = 0; i < len; i++) {
      const at = off + i;
      const v = src[srcOff + i];
      if (at >= BAR0.CONTROL && at < BAR0.CONTROL + 4) {
        if (running) this.mem[at] = v;
      } else if (at >= BAR0.DOORBELL && at < BAR0.DOORBELL + 4) {
        doorbell |= v << (8 * (at - BAR0.DOORBELL));
        rang = true;
      } else if (at >= BAR0.DMA_ADDR_LO && at < BAR0.DMA_DOORBELL) {
        if (running) this.mem[at] = v;
      } else if (at >= BAR0.DMA_DOORBELL && at < BAR0.DMA_DOORBELL + 4) {
        dmaRang = true;
      } else if (at >= BAR0.TOUCH_BLOCK && at < BAR0.TOUCH_BLOCK + 4) {
        if (running) this.mem[at] = v;
      } else if (isDoorbell(at, BAR0.TOUCH_DOORBELL)) {
        touch |= v << (8 * (at - BAR0.TOUCH_DOORBELL));
        touchRang = true;
      } else if (at >= BAR0.SCRATCH && at < BAR0.SCRATCH + SCRATCH_SIZE) {
        if (running) this.mem[at] = v;
      } else if (at >= BAR0.MSIX_TABLE && at < BAR0.MSIX_TABLE + this.msixVectors * MSIX_ENTRY_SIZE) {
        this.mem[at] = v;
      }
      // Everything else is read-only: the write is dropped.
    }
    if (rang && running && this.admit()) {
      const count = this.mem.readUInt32LE(BAR0.IRQ_COUNT);
      this.mem.writeUInt32LE((count + 1) >>> 0, BAR0.IRQ_COUNT);
      this.host.doorbell(doorbell >>> 0);
    }
    if (dmaRang && running && this.admit()) this.runDma();
    // Rewriting the device's own data is internal work, not DMA: no bus mastering needed.
    if (touchRang && running && touch !== 0) this.host.touch(this.mem.readUInt32LE(BAR0.TOUCH_BLOCK), touch >>> 0);
  }

  /**
   * May a command run now? Not while the queue is wedged or bus mastering is off: then it joins
   * the wedged queue (module comment, "Bus mastering").
   */
  private admit(): boolean {
    const pending = this.mem.readUInt32LE(BAR0.QUEUE_PENDING);
    if (pending === 0 && this.host.busMaster()) return true;
    this.mem.writeUInt32LE((pending + 1) >>> 0, BAR0.QUEUE_PENDING);
    return false;
  }

  /** One DMA transfer from the DMA registers. */
  private runDma(): void {
    const length = this.mem.readUInt32LE(BAR0.DMA_LEN);
    if (length > DMA_MAX_LEN) {
      this.mem.writeUInt32LE(DMA_STATUS_BAD_LENGTH, BAR0.DMA_STATUS);
      return;
    }
    const iova = (BigInt(this.mem.readUInt32LE(BAR0.DMA_ADDR_HI)) << 32n) | BigInt(this.mem.readUInt32LE(BAR0.DMA_ADDR_LO));
    const ok = this.host.dma(iova, length, this.mem.readUInt32LE(BAR0.DMA_PATTERN));
    this.mem.writeUInt32LE(ok ? DMA_STATUS_DONE : DMA_STATUS_FAULT, BAR0.DMA_STATUS);
    if (ok) this.mem.writeUInt32LE((this.mem.readUInt32LE(BAR0.DMA_COUNT) + 1) >>> 0, BAR0.DMA_COUNT);
  }

  /** Doorbells stuck in the wedged queue (QUEUE_PENDING). */
  get queuePending(): number {
    return this.mem.readUInt32LE(BAR0.QUEUE_PENDING);
  }

  /** The migrated registers (a copy). */
  registers(): RegisterBlock {
    return {
      control: this.mem.readUInt32LE(BAR0.CONTROL),
      irqCount: this.mem.readUInt32LE(BAR0.IRQ_COUNT),
      scratch: Buffer.from(this.mem.subarray(BAR0.SCRATCH, BAR0.SCRATCH + SCRATCH_SIZE)),
    };
  }

  /** Load migrated registers (RESUMING -> STOP, or a test hook). */
  load(r: Partial<RegisterBlock>): void {
    if (r.control !== undefined) this.mem.writeUInt32LE(r.control >>> 0, BAR0.CONTROL);
    if (r.irqCount !== undefined) this.mem.writeUInt32LE(r.irqCount >>> 0, BAR0.IRQ_COUNT);
    if (r.scratch !== undefined) {
      this.mem.fill(0, BAR0.SCRATCH, BAR0.SCRATCH + SCRATCH_SIZE);
      r.scratch.copy(this.mem, BAR0.SCRATCH, 0, Math.min(SCRATCH_SIZE, r.scratch.length));
    }
  }
}

/** Is byte `at` one of the 4 bytes of the doorbell register at `reg`? */
function isDoorbell(at: number, reg: number): boolean {
  return at >= reg && at < reg + 4;
}

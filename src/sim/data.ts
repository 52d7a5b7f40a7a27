/**
 * The data of the simulated device: SIZE bytes in blocks (src/sim/stream.ts, `BlockGeometry`),
 * each with a version that the running device bumps when it rewrites the block. The bytes of a
 * block are a function of (seed, block, version) (`DataGenerator`), so the device holds only its
 * version table (4 bytes per block, allocated on the first rewrite): a 1 GiB device in 4 KiB
 * blocks holds at most 1 MiB.
 *
 * What rewrites blocks (only while the device runs, see SimDevice):
 *  - a churn rate (bytes per second, spec `churn=RATE`), turned into block rewrites lazily, when
 *    the device is observed ({@link Churn});
 *  - the guest, through BAR0 TOUCH_BLOCK / TOUCH_DOORBELL (src/sim/bar0.ts);
 *  - test hooks (`SimDevice.dirtyData()`, `touchBlocks()`, `reinitialize()`).
 * Every rewrite is reported to `onRewrite`, which the device points at its saving session, so
 * that a block sent already is sent again (src/sim/session.ts).
 */
import { BlockGeometry, DataGenerator, VersionTable, type VersionDigest } from './stream';

/** What identifies the device data exactly: seed, layout and the versions of the blocks. */
export interface DataDigest extends VersionDigest {
  seed: bigint;
  size: number;
  blockSize: number;
  blocks: number;
}

export class DeviceData {
  readonly geometry: BlockGeometry;
  private versions: VersionTable;
  private gen: DataGenerator;
  /** Called after each block rewrite with the block index. */
  onRewrite?: (block: number) => void;

  constructor(
    private seedValue: bigint,
    size: number,
    blockSize: number,
  ) {
    this.geometry = new BlockGeometry(size, blockSize);
    this.versions = new VersionTable(this.geometry.blocks);
    this.gen = new DataGenerator(seedValue);
  }

  get seed(): bigint {
    return this.seedValue;
  }

  get blocks(): number {
    return this.geometry.blocks;
  }

  /** Block `b`'s version now. */
  version(b: number): number {
    return this.versions.get(b);
  }

  /** Rewrite block `b` (a new version). */
  rewrite(b: number): void {
    this.versions.bump(b);
    this.onRewrite?.(b);
  }

  /** Rewrite `count` blocks from `first`, clipped to the last block. Returns the blocks rewritten. */
  rewriteRange(first: number, count: number): number {
    if (!Number.isSafeInteger(first) || first < 0 || !Number.isSafeInteger(count)) {
      throw new RangeError(`blocks to rewrite: first and count must be integers, first >= 0 (got ${first}, ${count})`);
    }
    const end = Math.min(this.blocks, first + count);
    for (let b = first; b < end; b++) this.rewrite(b);
    return Math.max(0, end - first);
  }

  /** Rewrite the blocks holding data bytes [offset, offset + length). Returns the blocks rewritten. */
  rewriteBytes(offset: number, length: number): number {
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length)) {
      throw new RangeError(`bytes to rewrite: offset and length must be integers, offset >= 0 (got ${offset}, ${length})`);
    }
    if (length <= 0 || offset >= this.geometry.size) return 0;
    const first = this.geometry.blockOf(offset);
    const last = this.geometry.blockOf(Math.min(this.geometry.size, offset + length) - 1);
    return this.rewriteRange(first, last - first + 1);
  }

  /** Data bytes [offset, offset + len) as they are now, into `target` at `targetOff`. */
  read(offset: number, target: Buffer, targetOff: number, len: number): void {
    const g = this.geometry;
    while (len > 0) {
      const b = g.blockOf(offset);
      const n = Math.min(len, g.start(b) + g.length(b) - offset);
      this.gen.fill(offset, target, targetOff, n, this.versions.get(b));
      offset += n;
      targetOff += n;
      len -= n;
    }
  }

  digest(): DataDigest {
    return { seed: this.seedValue, size: this.geometry.size, blockSize: this.geometry.blockSize, blocks: this.blocks, ...this.versions.digest() };
  }

  /** Take a restored state: a seed and the version table a stream carried (RESUMING -> STOP). */
  adopt(seed: bigint, versions: VersionTable): void {
    if (versions.blocks !== this.blocks) throw new RangeError(`a version table of ${versions.blocks} blocks for data of ${this.blocks}`);
    this.seedValue = seed;
    this.gen = new DataGenerator(seed);
    this.versions = versions;
  }
}

/**
 * A churn rate turned into block rewrites on demand: `due()` says how many blocks the device
 * rewrote since the last call, given whether it ran in between (time in the stopped states does
 * not count). Blocks are picked by a xorshift generator seeded from the device's seed, uniformly:
 * hot blocks get rewritten again, as a real workload's do, so the dirty set converges.
 */
export class Churn {
  private last: number;
  private carry = 0;
  private rng: number;

  constructor(
    /** Bytes per second. */
    readonly rate: number,
    seed: bigint,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.last = now();
    this.rng = (Number(BigInt.asUintN(32, seed ^ (seed >> 32n))) ^ 0x9e3779b9) >>> 0 || 1;
  }

  /** Bytes rewritten since the last call (whole blocks of `blockSize`) when the device `ran`; the rest carries over. */
  due(ran: boolean, blockSize: number): number {
    const t = this.now();
    const dt = Math.max(0, t - this.last);
    this.last = t;
    if (!ran || this.rate <= 0) return 0;
    const bytes = this.carry + (this.rate * dt) / 1000;
    const blocks = Math.floor(bytes / blockSize);
    this.carry = bytes - blocks * blockSize;
    return blocks;
  }

  /** A block index in [0, blocks). */
  pick(blocks: number): number {
    let x = this.rng;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.rng = x >>> 0;
    return Math.floor((this.rng / 0x100000000) * blocks);
  }
}

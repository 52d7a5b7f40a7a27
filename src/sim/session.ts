/**
 * The two kinds of migration data_fd of the simulated device: a saving session (PRE_COPY,
 * PRE_COPY_P2P, STOP_COPY) that yields the stream of src/sim/stream.ts, and a resuming session
 * that takes it back. Semantics follow the kernel's sample and real drivers (samples/vfio-mdev/
 * mtty.c: mtty_save_read, mtty_precopy_ioctl, mtty_resume_write; drivers/vfio/pci/mlx5/main.c:
 * mlx5vf_precopy_ioctl, mlx5vf_save_read) and the uAPI text of vfio.h
 * ("VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE", "VFIO_MIG_GET_PRECOPY_INFO"):
 *
 *  - both are stream files: pread/pwrite fail with ESPIPE (the binding enforces it);
 *  - once the session has ended (the device left the saving group or RESUMING, was reset or
 *    released) every read/write fails with ENODEV;
 *  - saving, PRE_COPY(_P2P): read() serves the header and the initial data (a record of each of
 *    the first `initialBlocks` blocks, each at the version the block has when its record starts),
 *    then a record of each block rewritten after its record started (dirty blocks, at their
 *    version then), then a temporary end: read() returns 0 (mtty) or fails with ENOMSG (uAPI
 *    wording), per device option. A block rewritten while dirty is still sent once;
 *  - PRE_COPY(_P2P) -> STOP_COPY keeps the fd: it then serves the blocks not sent yet, the
 *    blocks still dirty, and the trailer (registers and the final version digest, taken as the
 *    device stopped); after it the end is permanent: 0, and 0 again on every later read. A
 *    session opened in STOP_COPY serves every block once, then the trailer;
 *  - VFIO_MIG_GET_PRECOPY_INFO: argsz < 24 → EINVAL, device not in PRE_COPY/PRE_COPY_P2P →
 *    EINVAL, session ended → ENODEV; initial_bytes = bytes of the initial data not yet read,
 *    dirty_bytes = the rest of what PRE_COPY can serve now (the dirty blocks' records, and what
 *    is left of a record being read). Without PRECOPY_INFOv2 the caller's flags are left as they
 *    were (drivers echo them); with it, `flags` is VFIO_PRECOPY_INFO_REINIT once after the device
 *    re-initialised, else 0;
 *  - re-initialisation (PRECOPY_INFOv2 only; mlx5's MIGRATION_INIT state): everything PRE_COPY
 *    can serve at that moment becomes initial data (initial_bytes may grow or shrink, dirty_bytes
 *    drops to 0), as mlx5 treats the bytes it holds when new initial data appears;
 *  - resuming: records are applied in order and each block's bytes are compared with the
 *    generator as they arrive (bounded memory: the incoming version table only); a write that
 *    would go past the end of the trailer fails whole with ENOMEM; the header is checked when its
 *    last byte arrives: a bad one fails that write with EFAULT, but the bytes count as written
 *    (mtty); any other problem is remembered, not reported, and the RESUMING exit (`finish`) then
 *    fails with EINVAL: a short stream, a bad header, a block out of order, a stale record, wrong
 *    data, a bad trailer, or a final state other than the trailer's.
 */
import { MigState, VFIO_PRECOPY_INFO_REINIT } from '../kernel/uapi/vfio';
import { SIZEOF_PRECOPY_INFO, encodePrecopyInfo } from '../kernel/uapi/structs';
import type { DeviceData } from './data';
import { E, raise } from './errno';
import {
  BlockGeometry,
  DataGenerator,
  END_MARKER,
  HEADER_SIZE,
  RECORD_HEADER_SIZE,
  TRAILER_SIZE,
  VersionTable,
  checkHeader,
  decodeTrailer,
  encodeHeader,
  encodeRecordHeader,
  encodeTrailer,
  type RegisterBlock,
  type StreamHeader,
  type Trailer,
} from './stream';

/** A fault armed on a data_fd: after `after` stream bytes, calls fail with `errno`. */
export interface DataFault {
  /** Stream offset at which the failure starts; a call crossing it is cut short there. */
  after: number;
  errno: number;
  /** Which side fails: reads of a saving fd, writes of a resuming fd, or both (default). */
  on?: 'read' | 'write' | 'any';
  /** Also put the device into ERROR when the failure hits (a device that broke mid-stream). */
  enterError?: boolean;
}

/** What a session needs from its device. */
export interface SessionHost {
  state(): MigState;
  /** The device failed mid-stream (a DataFault with enterError). */
  enterError(): void;
  /** Something a poll() may wait for changed. */
  wake(): void;
  /** What read() does at PRE_COPY's temporary end now (a device option a test may switch). */
  precopyEnd(): 'zero' | 'enomsg';
}

/** Fields shared by both session kinds. */
abstract class SessionBase {
  /** Stream bytes transferred so far (the file position). */
  pos = 0;
  /** Set when the session ended: every later call fails with ENODEV. */
  disabled = false;

  constructor(
    protected readonly host: SessionHost,
    public fault: DataFault | undefined,
  ) {}

  /** End the session (uAPI: leaving the saving group / RESUMING, reset, release). */
  disable(): void {
    if (this.disabled) return;
    this.disabled = true;
    this.host.wake();
  }

  /** Apply an armed fault to a transfer of `n` bytes at `pos`; returns the bytes allowed. */
  protected applyFault(n: number, side: 'read' | 'write'): number {
    const f = this.fault;
    if (!f || (f.on && f.on !== 'any' && f.on !== side)) return n;
    if (this.pos >= f.after) {
      if (f.enterError) this.host.enterError();
      raise(f.errno);
    }
    return Math.min(n, f.after - this.pos);
  }
}

export interface SaveOptions {
  pciId: number;
  /** Blocks whose records are the initial data served in PRE_COPY (clamped to the block count). */
  initialBlocks: number;
  /** Most bytes one read() returns (short reads); Infinity for no limit. */
  maxRead: number;
}

/** What a saving session holds now, in stream bytes (tests, MIG_DATA_SIZE, PRECOPY_INFO). */
export interface SaveFigures {
  /** Initial data not read yet (PRECOPY_INFO initial_bytes). */
  initialBytes: number;
  /** The rest of what PRE_COPY can serve now (PRECOPY_INFO dirty_bytes). */
  dirtyBytes: number;
  /** Blocks rewritten after they were sent and not sent again yet. */
  dirtyBlocks: number;
  /** Everything a STOP_COPY would still have to serve, trailer included (MIG_DATA_SIZE). */
  remaining: number;
}

/** One record or the trailer being served. */
interface Segment {
  /** Stream offsets of its first byte and one past its last. */
  start: number;
  end: number;
  /** The record header, or the whole trailer. */
  head: Buffer;
  /** Data offset of the block's first byte and its version (records). */
  dataStart: number;
  version: number;
}

/** A saving data_fd (PRE_COPY, PRE_COPY_P2P, STOP_COPY). */
export class SaveSession extends SessionBase {
  readonly kind = 'save' as const;
  private readonly header: Buffer;
  private readonly g: BlockGeometry;
  private readonly gen: DataGenerator;
  /** Next block of the initial pass; blocks below it have had a record started. */
  private next = 0;
  /** Where the initial pass stops for now: the initial blocks in PRE_COPY, every block in STOP_COPY. */
  private limit: number;
  /** Blocks rewritten after their record started: one bit per block, allocated on the first. */
  private dirty?: Uint32Array;
  private dirtyBlocks = 0;
  /** Stream bytes of the dirty blocks' records. */
  private dirtyBytes = 0;
  /** Where the search for the next dirty block starts. */
  private scan = 0;
  private seg?: Segment;
  private trailer?: Buffer;
  private trailerStarted = false;
  /** Stream offset where the initial data ends. */
  private initialEnd: number;
  /** A re-initialisation not reported yet (PRECOPY_INFOv2). */
  private reinitPending = false;

  /**
   * @param data the device's data, read live: a record's bytes are those of its block at the
   *   version the block had when the record started
   * @param stop the trailer's content when the session starts in STOP_COPY; undefined for
   *   PRE_COPY (it arrives with {@link enterStopCopy})
   */
  constructor(
    host: SessionHost,
    private readonly data: DeviceData,
    private readonly o: SaveOptions,
    stop: Trailer | undefined,
    fault: DataFault | undefined,
  ) {
    super(host, fault);
    this.g = data.geometry;
    this.header = encodeHeader({ size: this.g.size, seed: data.seed, pciId: o.pciId, blockSize: this.g.blockSize });
    this.gen = new DataGenerator(data.seed);
    this.limit = Math.max(0, Math.min(this.g.blocks, o.initialBlocks));
    this.initialEnd = HEADER_SIZE + this.g.recordsLength(0, this.limit);
    if (stop) this.enterStopCopy(stop);
  }

  /** True once the device stopped (STOP_COPY): the stream has a permanent end. */
  get stopCopy(): boolean {
    return this.trailer !== undefined;
  }

  /** The stream's length as it stands now: bytes read plus what is left to read. */
  get total(): number {
    return this.pos + this.figures().remaining;
  }

  /** End of the bytes readable now: everything left in STOP_COPY, what PRE_COPY holds now before. */
  get available(): number {
    return this.pos + (this.stopCopy ? this.figures().remaining : this.precopyPending());
  }

  /** PRE_COPY(_P2P) -> STOP_COPY: the device stopped; the rest of the stream follows on this fd. */
  enterStopCopy(t: Trailer): void {
    if (this.trailer) return;
    this.trailer = encodeTrailer(t);
    this.limit = this.g.blocks;
    this.host.wake();
  }

  /**
   * The device rewrote block `b`: if its record has started (it was sent, or is being sent), it
   * is dirty and will be sent again with its new version; if not, it will be sent once, as it is
   * when its turn comes.
   */
  rewritten(b: number): void {
    if (this.disabled || b >= this.next) return;
    this.dirty ??= new Uint32Array(Math.ceil(this.g.blocks / 32));
    const w = b >>> 5;
    const bit = 1 << (b & 31);
    if (this.dirty[w] & bit) return;
    this.dirty[w] |= bit;
    this.dirtyBlocks++;
    this.dirtyBytes += this.g.recordLength(b);
    if (this.dirtyBlocks === 1) this.host.wake();
  }

  /**
   * The device re-initialised (new initial data appeared, its blocks already rewritten): with
   * PRECOPY_INFOv2 (`v2`), everything PRE_COPY can serve now becomes initial data, the initial
   * blocks are the first `initialBlocks` (those not sent yet among them join), and the next
   * PRECOPY_INFO reports VFIO_PRECOPY_INFO_REINIT. Without it the new data is dirty data.
   */
  reinit(initialBlocks: number, v2: boolean): void {
    if (this.disabled || this.stopCopy || !v2) return;
    this.limit = Math.max(this.next, Math.min(this.g.blocks, initialBlocks));
    this.initialEnd = this.pos + this.precopyPending();
    this.reinitPending = true;
    this.host.wake();
  }

  /** One read(2). Throws Errno. */
  read(buf: Buffer, off: number, len: number): number {
    if (this.disabled) raise(E.ENODEV);
    if (len <= 0) return 0;
    if (!this.hasMore()) {
      if (!this.stopCopy && this.host.precopyEnd() === 'enomsg') raise(E.ENOMSG);
      return 0;
    }
    let n = Math.min(len, this.o.maxRead);
    n = this.applyFault(n, 'read');
    return this.serve(buf, off, n);
  }

  /** VFIO_MIG_GET_PRECOPY_INFO on this fd (mtty_precopy_ioctl(), mlx5vf_precopy_ioctl()). Throws Errno. */
  precopyInfo(arg: Buffer | number | undefined, v2: boolean): void {
    const op = 'VFIO_MIG_GET_PRECOPY_INFO';
    if (!Buffer.isBuffer(arg) || arg.length < SIZEOF_PRECOPY_INFO) raise(E.EFAULT, op);
    if (arg.readUInt32LE(0) < SIZEOF_PRECOPY_INFO) raise(E.EINVAL, op);
    const st = this.host.state();
    if (st !== MigState.PRE_COPY && st !== MigState.PRE_COPY_P2P) raise(E.EINVAL, op);
    if (this.disabled) raise(E.ENODEV, op);
    const f = this.figures();
    encodePrecopyInfo(arg, { initialBytes: f.initialBytes, dirtyBytes: f.dirtyBytes });
    if (v2) {
      arg.writeUInt32LE(this.reinitPending ? VFIO_PRECOPY_INFO_REINIT : 0, 4);
      this.reinitPending = false;
    }
  }

  /** The session's figures now. */
  figures(): SaveFigures {
    const pending = this.precopyPending();
    const initialBytes = this.stopCopy ? 0 : Math.max(0, Math.min(this.initialEnd - this.pos, pending));
    let remaining = this.inFlight() + this.g.recordsLength(this.next, this.g.blocks) + this.dirtyBytes;
    if (!this.trailerStarted) remaining += TRAILER_SIZE;
    return { initialBytes, dirtyBytes: this.stopCopy ? 0 : pending - initialBytes, dirtyBlocks: this.dirtyBlocks, remaining };
  }

  /** Readable now: data, the permanent end, or an error to report. */
  readable(): boolean {
    return this.disabled || this.stopCopy || this.hasMore();
  }

  /** What PRE_COPY can serve now: the rest of the header and of the current segment, the initial blocks not started, the dirty blocks. */
  private precopyPending(): number {
    return this.inFlight() + this.g.recordsLength(this.next, this.limit) + this.dirtyBytes;
  }

  /** Bytes left of the header and of the segment being served. */
  private inFlight(): number {
    let n = Math.max(0, HEADER_SIZE - this.pos);
    if (this.seg && this.pos < this.seg.end) n += this.seg.end - this.pos;
    return n;
  }

  /** Is there a byte to serve now? (No side effects.) */
  private hasMore(): boolean {
    return (
      this.pos < HEADER_SIZE ||
      (this.seg !== undefined && this.pos < this.seg.end) ||
      this.next < this.limit ||
      this.dirtyBlocks > 0 ||
      (this.trailer !== undefined && !this.trailerStarted)
    );
  }

  /** Copy up to `max` stream bytes into buf at off, starting records as needed; returns the count. */
  private serve(buf: Buffer, off: number, max: number): number {
    let done = 0;
    while (done < max) {
      let step: number;
      if (this.pos < HEADER_SIZE) {
        step = Math.min(max - done, HEADER_SIZE - this.pos);
        this.header.copy(buf, off + done, this.pos, this.pos + step);
      } else {
        if ((!this.seg || this.pos >= this.seg.end) && !this.startSegment()) break;
        const seg = this.seg as Segment;
        step = Math.min(max - done, seg.end - this.pos);
        let rel = this.pos - seg.start;
        let at = off + done;
        let left = step;
        if (rel < seg.head.length) {
          const n = Math.min(left, seg.head.length - rel);
          seg.head.copy(buf, at, rel, rel + n);
          rel += n;
          at += n;
          left -= n;
        }
        if (left > 0) this.gen.fill(seg.dataStart + rel - RECORD_HEADER_SIZE, buf, at, left, seg.version);
      }
      this.pos += step;
      done += step;
    }
    return done;
  }

  /** Start the next record (initial blocks first, then dirty ones) or the trailer; false when there is nothing now. */
  private startSegment(): boolean {
    let b: number;
    if (this.next < this.limit) {
      b = this.next++;
    } else if (this.dirtyBlocks > 0) {
      b = this.takeDirty();
    } else if (this.trailer && !this.trailerStarted) {
      this.trailerStarted = true;
      this.seg = { start: this.pos, end: this.pos + TRAILER_SIZE, head: this.trailer, dataStart: 0, version: 0 };
      return true;
    } else {
      return false;
    }
    const version = this.data.version(b);
    this.seg = { start: this.pos, end: this.pos + this.g.recordLength(b), head: encodeRecordHeader(b, version), dataStart: this.g.start(b), version };
    return true;
  }

  /** The next dirty block from the scan position (wrapping), taken out of the dirty set. */
  private takeDirty(): number {
    const bits = this.dirty as Uint32Array;
    const words = bits.length;
    let w = this.scan >>> 5;
    // The first word may hold bits below the scan position: mask them off on the first visit only.
    let word = bits[w] & (~0 << (this.scan & 31));
    for (let seen = 0; word === 0; seen++) {
      if (seen > words) throw new Error('sim: dirty count says a block is dirty but none is');
      w = (w + 1) % words;
      word = bits[w];
    }
    const b = w * 32 + (31 - Math.clz32(word & -word));
    bits[w] &= ~(1 << (b & 31));
    this.dirtyBlocks--;
    this.dirtyBytes -= this.g.recordLength(b);
    this.scan = b + 1 >= this.g.blocks ? 0 : b + 1;
    return b;
  }
}

export interface ResumeOptions {
  /** The device's data layout: the stream must have the same. */
  size: number;
  blockSize: number;
  pciId: number;
  /** Most bytes one write() accepts (short writes); Infinity for no limit. */
  maxWrite: number;
}

/** What a complete, valid stream restores. */
export interface Restored {
  seed: bigint;
  versions: VersionTable;
  regs: RegisterBlock;
}

type Phase = 'header' | 'record' | 'data' | 'trailer' | 'end' | 'lost';

/** A resuming data_fd (RESUMING). */
export class ResumeSession extends SessionBase {
  readonly kind = 'resume' as const;
  private phase: Phase = 'header';
  /** Bytes of the current unit (header, record header, block data, trailer) taken so far. */
  private fill = 0;
  private readonly headerBuf = Buffer.alloc(HEADER_SIZE);
  private readonly recordBuf = Buffer.alloc(RECORD_HEADER_SIZE);
  private readonly trailerBuf = Buffer.alloc(TRAILER_SIZE);
  private header?: StreamHeader;
  private readonly g: BlockGeometry;
  private gen?: DataGenerator;
  /** The incoming state: the version of each block received. */
  private versions: VersionTable;
  /** Blocks received at least once: blocks 0 .. seen-1. */
  private seen = 0;
  private cur = { block: 0, version: 0, length: 0 };
  /** The first problem found in the stream, if any. */
  problem?: string;
  /** The stream's length, once its trailer is complete. */
  total?: number;

  constructor(
    host: SessionHost,
    private readonly o: ResumeOptions,
    fault: DataFault | undefined,
  ) {
    super(host, fault);
    this.g = new BlockGeometry(o.size, o.blockSize);
    this.versions = new VersionTable(this.g.blocks);
  }

  /** One write(2). Throws Errno. */
  write(buf: Buffer, off: number, len: number): number {
    if (this.overruns(buf, off, len)) raise(E.ENOMEM);
    if (this.disabled) raise(E.ENODEV);
    if (len === 0) return 0;
    let n = Math.min(len, this.o.maxWrite);
    n = this.applyFault(n, 'write');
    const headerWasComplete = this.pos >= HEADER_SIZE;
    this.take(buf, off, n);
    this.pos += n;
    if (!headerWasComplete && this.pos >= HEADER_SIZE && !this.header) raise(E.EFAULT);
    return n;
  }

  /**
   * The RESUMING -> STOP arc: the stream must be complete and valid. Returns what it restores, or
   * throws EINVAL (the device stays in RESUMING).
   */
  finish(): Restored {
    const fail = (why: string): never => {
      this.problem ??= why;
      raise(E.EINVAL);
    };
    if (this.problem) raise(E.EINVAL);
    if (!this.header) fail(`stream is short: ${this.pos} bytes, no complete header`);
    if (this.phase !== 'end') fail(`stream is short: it stops after ${this.pos} bytes, inside ${this.phase === 'data' ? `the record of block ${this.cur.block}` : this.phase === 'trailer' ? 'its trailer' : 'a record header'}`);
    if (this.seen < this.g.blocks) fail(`stream ends with blocks ${this.seen}..${this.g.blocks - 1} never sent`);
    const t = decodeTrailer(this.trailerBuf);
    if (typeof t === 'string') return fail(t);
    const d = this.versions.digest();
    if (d.versionSum !== t.versionSum || d.tableCrc !== t.tableCrc) {
      fail(
        `the blocks received are not the source's final state: version sum ${d.versionSum} (source ${t.versionSum}), ` +
          `version table CRC ${d.tableCrc.toString(16)} (source ${t.tableCrc.toString(16)}); an update is missing or stale`,
      );
    }
    return { seed: (this.header as StreamHeader).seed, versions: this.versions, regs: { control: t.control, irqCount: t.irqCount, scratch: t.scratch } };
  }

  /** Process stream bytes [pos, pos + n) from buf at off. */
  private take(buf: Buffer, off: number, n: number): void {
    const end = off + n;
    let at = off;
    while (at < end) {
      let step: number;
      switch (this.phase) {
        case 'header':
          step = Math.min(end - at, HEADER_SIZE - this.fill);
          buf.copy(this.headerBuf, this.fill, at, at + step);
          this.fill += step;
          if (this.fill === HEADER_SIZE) this.headerDone();
          break;
        case 'record':
          step = Math.min(end - at, RECORD_HEADER_SIZE - this.fill);
          buf.copy(this.recordBuf, this.fill, at, at + step);
          this.fill += step;
          if (this.fill === RECORD_HEADER_SIZE) this.recordStarts();
          break;
        case 'data': {
          const c = this.cur;
          step = Math.min(end - at, c.length - this.fill);
          if (this.gen && !this.problem) {
            const bad = this.gen.mismatch(this.g.start(c.block) + this.fill, buf, at, step, c.version);
            if (bad >= 0) this.problem = `device data differs from the stream's seed at data offset ${bad} (block ${c.block}, version ${c.version})`;
          }
          this.fill += step;
          if (this.fill === c.length) {
            this.versions.set(c.block, c.version);
            this.phase = 'record';
            this.fill = 0;
          }
          break;
        }
        case 'trailer':
          step = Math.min(end - at, TRAILER_SIZE - this.fill);
          buf.copy(this.trailerBuf, this.fill, at, at + step);
          this.fill += step;
          if (this.fill === TRAILER_SIZE) {
            this.phase = 'end';
            this.total = this.pos + (at + step - off);
          }
          break;
        default:
          // 'lost' (framing lost after a problem) swallows the rest; 'end' never gets here (overruns()).
          step = end - at;
      }
      at += step;
    }
  }

  private headerDone(): void {
    const h = checkHeader(this.headerBuf, { size: this.o.size, pciId: this.o.pciId, blockSize: this.o.blockSize });
    this.fill = 0;
    if (typeof h === 'string') {
      this.problem ??= `bad stream header: ${h}`;
      this.phase = 'lost';
      return;
    }
    this.header = h;
    this.gen = new DataGenerator(h.seed);
    this.phase = 'record';
  }

  private recordStarts(): void {
    const block = this.recordBuf.readUInt32LE(0);
    const version = this.recordBuf.readUInt32LE(4);
    this.fill = 0;
    if (block === END_MARKER) {
      this.recordBuf.copy(this.trailerBuf, 0);
      this.fill = RECORD_HEADER_SIZE;
      this.phase = 'trailer';
      return;
    }
    if (block >= this.g.blocks) {
      this.problem ??= `a record for block ${block}, the device has ${this.g.blocks} blocks`;
      this.phase = 'lost';
      return;
    }
    if (block > this.seen) this.problem ??= `block ${block} arrives before block ${this.seen} was sent`;
    else if (block < this.seen && version <= this.versions.get(block)) {
      this.problem ??= `stale record: block ${block} at version ${version} after version ${this.versions.get(block)}`;
    }
    if (block === this.seen) this.seen++;
    this.cur = { block, version, length: this.g.length(block) };
    this.phase = 'data';
  }

  /**
   * Would `len` bytes at the current position run past the end of the stream (the trailer's last
   * byte)? Follows the framing without taking anything; a header or record header that cannot be
   * read stops the look-ahead (the write goes ahead and the problem is found by take()).
   */
  private overruns(buf: Buffer, off: number, len: number): boolean {
    if (this.phase === 'end') return len > 0;
    if (this.phase === 'lost') return false;
    let phase: Phase = this.phase;
    let fill = this.fill;
    let dataLength = this.cur.length;
    let at = 0;
    while (at < len) {
      const rest = len - at;
      switch (phase) {
        case 'header': {
          const need = HEADER_SIZE - fill;
          if (rest < need) return false;
          const h = Buffer.concat([this.headerBuf.subarray(0, fill), buf.subarray(off + at, off + at + need)]);
          if (typeof checkHeader(h, { size: this.o.size, pciId: this.o.pciId, blockSize: this.o.blockSize }) === 'string') return false;
          at += need;
          phase = 'record';
          fill = 0;
          break;
        }
        case 'record': {
          const need = RECORD_HEADER_SIZE - fill;
          if (rest < need) return false;
          const r = Buffer.concat([this.recordBuf.subarray(0, fill), buf.subarray(off + at, off + at + need)]);
          at += need;
          const block = r.readUInt32LE(0);
          if (block === END_MARKER) {
            phase = 'trailer';
            fill = RECORD_HEADER_SIZE;
          } else if (block >= this.g.blocks) {
            return false;
          } else {
            phase = 'data';
            fill = 0;
            dataLength = this.g.length(block);
          }
          break;
        }
        case 'data': {
          const step = Math.min(rest, dataLength - fill);
          at += step;
          fill += step;
          if (fill === dataLength) {
            phase = 'record';
            fill = 0;
          }
          break;
        }
        case 'trailer': {
          const need = TRAILER_SIZE - fill;
          return rest > need;
        }
        default:
          return false;
      }
    }
    return false;
  }
}

export type Session = SaveSession | ResumeSession;

/**
 * The two kinds of migration data_fd of the simulated device: a saving session (PRE_COPY,
 * PRE_COPY_P2P, STOP_COPY) that yields the stream of src/binding/sim/stream.ts, and a resuming
 * session that takes it back. Semantics follow the kernel's mtty sample driver
 * (samples/vfio-mdev/mtty.c: mtty_save_read, mtty_precopy_ioctl, mtty_resume_write) and the
 * uAPI text of vfio.h ("VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE", "VFIO_MIG_GET_PRECOPY_INFO"):
 *
 *  - both are stream files: pread/pwrite fail with ESPIPE (the binding enforces it);
 *  - once the session has ended (the device left the saving group or RESUMING, was reset or
 *    released) every read/write fails with ENODEV;
 *  - saving: in PRE_COPY the header and the first `precopyData` data bytes are available, then a
 *    temporary end: read() returns 0 (mtty) or fails with ENOMSG (uAPI wording), per device
 *    option. After PRE_COPY -> STOP_COPY the same fd yields the rest; in STOP_COPY the end is
 *    permanent: 0, and 0 again on every later read;
 *  - VFIO_MIG_GET_PRECOPY_INFO: argsz < 24 → EINVAL, device not in PRE_COPY/PRE_COPY_P2P →
 *    EINVAL, session ended → ENODEV; initial_bytes = precopy bytes not yet read, dirty_bytes = 0;
 *    the caller's flags are left as they were (drivers echo them);
 *  - resuming: a write that would go past the stream's length fails whole with ENOMEM; the header
 *    is checked when its last byte arrives: a bad one fails that write with EFAULT, but the bytes
 *    count as written (mtty); data is compared with the generator as it arrives (bounded memory)
 *    and a mismatch is remembered, not reported; the RESUMING exit (`finish`) then fails with
 *    EINVAL for a short, bad-header, bad-data or bad-trailer stream.
 */
import { MigState } from '../kernel/uapi/vfio';
import { SIZEOF_PRECOPY_INFO, encodePrecopyInfo } from '../kernel/uapi/structs';
import { E, raise } from './errno';
import {
  DataGenerator,
  HEADER_SIZE,
  TRAILER_SIZE,
  checkHeader,
  decodeTrailer,
  encodeHeader,
  encodeTrailer,
  streamLength,
  type RegisterBlock,
  type StreamHeader,
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
    readonly total: number,
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
  size: number;
  seed: bigint;
  pciId: number;
  /** Data bytes available in PRE_COPY after the header (clamped to size). */
  precopyData: number;
  /** Most bytes one read() returns (short reads); Infinity for no limit. */
  maxRead: number;
}

/** A saving data_fd (PRE_COPY, PRE_COPY_P2P, STOP_COPY). */
export class SaveSession extends SessionBase {
  readonly kind = 'save' as const;
  private readonly header: Buffer;
  private readonly gen: DataGenerator;
  private trailer?: Buffer;

  /**
   * @param regs the register block when the session starts in STOP_COPY; undefined for PRE_COPY
   *   (it arrives with {@link enterStopCopy}).
   */
  constructor(
    host: SessionHost,
    private readonly o: SaveOptions,
    regs: RegisterBlock | undefined,
    fault: DataFault | undefined,
  ) {
    super(host, streamLength(o.size), fault);
    this.header = encodeHeader({ size: o.size, seed: o.seed, pciId: o.pciId });
    this.gen = new DataGenerator(o.seed);
    if (regs) this.trailer = encodeTrailer(regs);
  }

  /** True once the whole stream is available (STOP_COPY). */
  get stopCopy(): boolean {
    return this.trailer !== undefined;
  }

  /** End of the bytes readable now: the precopy part in PRE_COPY, everything in STOP_COPY. */
  get available(): number {
    return this.stopCopy ? this.total : HEADER_SIZE + Math.min(this.o.precopyData, this.o.size);
  }

  /** PRE_COPY(_P2P) -> STOP_COPY: the device stopped; the rest of the stream follows on this fd. */
  enterStopCopy(regs: RegisterBlock): void {
    if (!this.trailer) this.trailer = encodeTrailer(regs);
    this.host.wake();
  }

  /** One read(2). Throws Errno. */
  read(buf: Buffer, off: number, len: number): number {
    if (this.disabled) raise(E.ENODEV);
    let n = Math.min(len, this.available - this.pos, this.o.maxRead);
    if (n <= 0) {
      if (len > 0 && !this.stopCopy && this.host.precopyEnd() === 'enomsg') raise(E.ENOMSG);
      return 0;
    }
    n = this.applyFault(n, 'read');
    this.copyOut(this.pos, buf, off, n);
    this.pos += n;
    return n;
  }

  /** VFIO_MIG_GET_PRECOPY_INFO on this fd (mtty_precopy_ioctl()). Throws Errno. */
  precopyInfo(arg: Buffer | number | undefined): void {
    const op = 'VFIO_MIG_GET_PRECOPY_INFO';
    if (!Buffer.isBuffer(arg) || arg.length < SIZEOF_PRECOPY_INFO) raise(E.EFAULT, op);
    if (arg.readUInt32LE(0) < SIZEOF_PRECOPY_INFO) raise(E.EINVAL, op);
    const st = this.host.state();
    if (st !== MigState.PRE_COPY && st !== MigState.PRE_COPY_P2P) raise(E.EINVAL, op);
    if (this.disabled) raise(E.ENODEV, op);
    const precopyEnd = HEADER_SIZE + Math.min(this.o.precopyData, this.o.size);
    encodePrecopyInfo(arg, { initialBytes: Math.max(0, precopyEnd - this.pos), dirtyBytes: 0 });
  }

  /** Readable now: data, the permanent end, or an error to report. */
  readable(): boolean {
    return this.disabled || this.stopCopy || this.pos < this.available;
  }

  /** Copy stream bytes [at, at + n) into buf at off. */
  private copyOut(at: number, buf: Buffer, off: number, n: number): void {
    const dataEnd = HEADER_SIZE + this.o.size;
    while (n > 0) {
      let step: number;
      if (at < HEADER_SIZE) {
        step = Math.min(n, HEADER_SIZE - at);
        this.header.copy(buf, off, at, at + step);
      } else if (at < dataEnd) {
        step = Math.min(n, dataEnd - at);
        this.gen.fill(at - HEADER_SIZE, buf, off, step);
      } else {
        step = n;
        // `available` guarantees the trailer exists when we get here.
        (this.trailer as Buffer).copy(buf, off, at - dataEnd, at - dataEnd + step);
      }
      at += step;
      off += step;
      n -= step;
    }
  }
}

export interface ResumeOptions {
  size: number;
  pciId: number;
  /** Most bytes one write() accepts (short writes); Infinity for no limit. */
  maxWrite: number;
}

/** What a complete, valid stream restores. */
export interface Restored {
  seed: bigint;
  regs: RegisterBlock;
}

/** A resuming data_fd (RESUMING). */
export class ResumeSession extends SessionBase {
  readonly kind = 'resume' as const;
  private readonly headerBuf = Buffer.alloc(HEADER_SIZE);
  private readonly trailerBuf = Buffer.alloc(TRAILER_SIZE);
  private header?: StreamHeader;
  private gen?: DataGenerator;
  /** The first problem found in the stream, if any. */
  problem?: string;

  constructor(
    host: SessionHost,
    private readonly o: ResumeOptions,
    fault: DataFault | undefined,
  ) {
    super(host, streamLength(o.size), fault);
  }

  /** One write(2). Throws Errno. */
  write(buf: Buffer, off: number, len: number): number {
    if (this.pos + len > this.total) raise(E.ENOMEM);
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
    if (this.problem) raise(E.EINVAL);
    if (this.pos < this.total || !this.header) {
      this.problem = `stream is short: ${this.pos} of ${this.total} bytes`;
      raise(E.EINVAL);
    }
    const regs = decodeTrailer(this.trailerBuf);
    if (typeof regs === 'string') {
      this.problem = regs;
      raise(E.EINVAL);
    }
    return { seed: this.header.seed, regs };
  }

  /** Process stream bytes [pos, pos + n) from buf at off. */
  private take(buf: Buffer, off: number, n: number): void {
    const dataEnd = HEADER_SIZE + this.o.size;
    let at = this.pos;
    while (n > 0) {
      let step: number;
      if (at < HEADER_SIZE) {
        step = Math.min(n, HEADER_SIZE - at);
        buf.copy(this.headerBuf, at, off, off + step);
        if (at + step === HEADER_SIZE) this.checkHeader();
      } else if (at < dataEnd) {
        step = Math.min(n, dataEnd - at);
        if (this.gen && !this.problem) {
          const bad = this.gen.mismatch(at - HEADER_SIZE, buf, off, step);
          if (bad >= 0) this.problem = `device data differs from the stream's seed at data offset ${bad}`;
        }
      } else {
        step = n;
        buf.copy(this.trailerBuf, at - dataEnd, off, off + step);
      }
      at += step;
      off += step;
      n -= step;
    }
  }

  private checkHeader(): void {
    const h = checkHeader(this.headerBuf, { size: this.o.size, pciId: this.o.pciId });
    if (typeof h === 'string') {
      this.problem ??= `bad stream header: ${h}`;
      return;
    }
    this.header = h;
    this.gen = new DataGenerator(h.seed);
  }
}

export type Session = SaveSession | ResumeSession;

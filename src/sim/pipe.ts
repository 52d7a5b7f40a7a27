/**
 * A virtual pipe, for `SimBinding.pipe()` when there is no inner binding: pipe(7) semantics in
 * memory. A bounded byte queue (64 KiB, Linux's default capacity); reading an empty pipe waits
 * for data, or returns 0 once every write end is closed; writing a full pipe waits for room and
 * may be short; writing with the read end closed fails with EPIPE.
 */
import { E, raise } from './errno';

export const PIPE_CAPACITY = 64 * 1024;

export class VirtualPipe {
  private readonly chunks: Buffer[] = [];
  private queued = 0;
  readerOpen = true;
  writerOpen = true;

  constructor(private readonly wake: () => void) {}

  get available(): number {
    return this.queued;
  }

  get room(): number {
    return PIPE_CAPACITY - this.queued;
  }

  /** Take up to `len` bytes into `buf` at `off`; 0 when empty (the caller waits or sees EOF). */
  take(buf: Buffer, off: number, len: number): number {
    let done = 0;
    while (done < len && this.chunks.length) {
      const c = this.chunks[0];
      const n = Math.min(c.length, len - done);
      c.copy(buf, off + done, 0, n);
      done += n;
      if (n === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(n);
    }
    this.queued -= done;
    if (done) this.wake();
    return done;
  }

  /** Queue up to `len` bytes of `buf` from `off`; 0 when full (the caller waits). EPIPE without a reader. */
  put(buf: Buffer, off: number, len: number): number {
    if (!this.readerOpen) raise(E.EPIPE);
    const n = Math.min(len, this.room);
    if (n > 0) {
      this.chunks.push(Buffer.from(buf.subarray(off, off + n)));
      this.queued += n;
      this.wake();
    }
    return n;
  }
}

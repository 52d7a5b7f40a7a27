/**
 * Byte channels of the live-migration transport: a connected, ordered, reliable byte stream with
 * exact reads, complete writes, a bound on every wait, and a close that releases everything.
 *
 * Two implementations:
 *  - `FdChannel`: a socket fd the library owns and drives through its Binding (plain TCP and
 *    unix sockets). Its transfers are `recvNow` / `sendNow` on the JS thread (recv(2) / send(2)
 *    with MSG_DONTWAIT: they never sleep, and a control frame costs no thread hop), and its
 *    waits, when the socket has nothing or no room, a `poll` off the JS thread; libuv never reads
 *    the fd. Its fd can be lent to the native pump
 *    (`lend`), which moves DATA between a data_fd and the socket on its own thread with no
 *    JavaScript copy per chunk.
 *  - `StreamChannel`: a Node Duplex (a TLS socket, or any stream a VMM hands in). Its bytes pass
 *    through JavaScript: one copy per chunk, by Node's stream machinery and by this class.
 *
 * Rules both keep:
 *  - `readExactly(n)` / `readInto(buf)` read exactly that many bytes and never more: nothing is
 *    read ahead, so the fd (or stream) can change hands between two reads.
 *  - Every wait has a bound: the call's `timeoutMs`, else the channel's `idleTimeoutMs` (default
 *    30 s), counted from the last progress. A peer that stalls fails the call with ETIMEDOUT; a
 *    peer that ends the stream early with EVFIO_PEER_CLOSED, naming what was being read.
 *  - Every call takes an AbortSignal (`signal`), besides the channel's own: an abort rejects the
 *    call at once with ECANCELED.
 *  - A read or write that fails after moving part of its bytes leaves that direction of the
 *    stream at an unknown place: it is broken, and later calls in it reject with
 *    EVFIO_CHANNEL_BROKEN. The other direction of a socket stays usable, so a peer's ERROR can
 *    still be read after a send it cut short; over a Node stream (TLS: one record layer for both
 *    directions) both break.
 *    A failure that moved nothing (a timeout before any byte) leaves the channel usable.
 *  - One read and one write may be in flight at the same time (full duplex); a second read while
 *    one is pending is a usage error.
 *  - `close()` is idempotent, ends pending calls (they reject with EVFIO_CLOSED), waits for what
 *    runs on other threads, and releases the fd or stream on every path.
 * Errors: src/live/errors.ts.
 */
import type { Duplex } from 'node:stream';
import { VfioError } from '../base/errors';
import { logger } from '../base/log';
import { POLLIN, POLLOUT, type Binding } from '../kernel/binding/types';
import { SHUT_RDWR, SHUT_WR } from '../kernel/uapi/socket';
import { abortedError, brokenError, closedError, fromNodeError, peerClosedError, peerGoneWords, timeoutError, usageError } from './errors';
import { waitFd } from './socket';

const log = logger('live');

/** Default bound of a wait without progress: 30 s. */
export const DEFAULT_IDLE_TIMEOUT_MS = 30_000;

export interface WaitOptions {
  /** Milliseconds without progress before the call fails with ETIMEDOUT (default: the channel's idleTimeoutMs). */
  timeoutMs?: number;
  /** Cancels the call (ECANCELED), besides the channel's own signal. */
  signal?: AbortSignal;
}

export interface ReadOptions extends WaitOptions {
  /** What the bytes are, for error messages ('frame header', 'DATA payload'). */
  what?: string;
}

export interface ChannelOptions {
  /** Bound of every wait without progress, in ms (default DEFAULT_IDLE_TIMEOUT_MS). */
  idleTimeoutMs?: number;
  /** Cancels every call of the channel (each rejects with ECANCELED); the channel stays open until close(). */
  signal?: AbortSignal;
  /** The peer, for messages (default: what the socket says, or 'peer'). */
  peer?: string;
}

/** A connected byte stream (the module comment has the rules). */
export interface Channel {
  /** 'fd': a socket the library drives (FdChannel); 'stream': a Node Duplex (StreamChannel). */
  readonly kind: 'fd' | 'stream';
  /** The peer, for messages and logs: a URI ('tcp:10.0.0.2:50412'), 'unix peer pid 42 uid 0', or as given. */
  readonly peer: string;
  /** Whether the bytes are encrypted and the peer authenticated by TLS (mutual certificates). */
  readonly secure: boolean;
  /** True once close() was called. */
  readonly closed: boolean;
  /** Read exactly `n` bytes into a new Buffer. */
  readExactly(n: number, opts?: ReadOptions): Promise<Buffer>;
  /** Fill `buf` exactly (its whole length). */
  readInto(buf: Buffer, opts?: ReadOptions): Promise<void>;
  /**
   * Write all of `buf`. When it resolves, the bytes are out of `buf` (the caller may reuse it).
   * When it rejects after starting, the writing direction is broken (a StreamChannel: both, and
   * its stream may still hold `buf`: close the channel before reusing it).
   */
  writeAll(buf: Buffer, opts?: WaitOptions): Promise<void>;
  /** End the writing direction (the peer reads the end of the stream after the bytes written); reading goes on. */
  end(opts?: WaitOptions): Promise<void>;
  /** Close the channel and release its fd or stream (idempotent). */
  close(): Promise<void>;
}

/**
 * A channel whose socket fd can be lent (FdChannel.lend): the native pump then moves DATA between
 * a data_fd and the socket on its own thread.
 */
export interface LendingChannel extends Channel {
  readonly kind: 'fd';
  lend<T>(dir: 'read' | 'write' | 'both', fn: (fd: number) => Promise<T>, opts?: LendOptions): Promise<T>;
}

/** Options of `LendingChannel.lend`. */
export interface LendOptions {
  /**
   * Says of a rejection of `fn` whether it moved nothing in the directions lent (a pump error
   * with `bytesWritten` 0, say): the channel then stays usable. Without it, every rejection
   * breaks them.
   */
  intact?: (e: unknown) => boolean;
}

/** Whether `ch` can lend its fd to the pump; otherwise the bytes pass through JavaScript. */
export function canLend(ch: Channel): ch is LendingChannel {
  return ch.kind === 'fd' && typeof (ch as Partial<LendingChannel>).lend === 'function';
}

function checkLength(op: string, n: unknown): number {
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) {
    throw Object.assign(new RangeError(`${op}: the length must be a non-negative safe integer, got ${String(n)}`), { code: 'ERR_OUT_OF_RANGE' });
  }
  return n;
}

function checkBuffer(op: string, buf: unknown): Buffer {
  if (!Buffer.isBuffer(buf)) throw Object.assign(new TypeError(`${op}: a Buffer is required`), { code: 'ERR_INVALID_ARG_TYPE' });
  return buf;
}

/** FdChannel: calls that found the socket ready, in a row, before the event loop gets a turn. */
const IMMEDIATE_CALLS_PER_TURN = 64;

/** How long StreamChannel.close() waits for the stream's 'close' event. */
const CLOSE_WAIT_MS = 5000;

/** Throw ECANCELED if any signal already fired. */
function checkSignals(signals: AbortSignal[], op: string): void {
  const fired = signals.find((s) => s.aborted);
  if (fired) throw abortedError(op, fired);
}

/** What a channel keeps about its two directions. */
abstract class ChannelBase {
  readonly idleTimeoutMs: number;
  protected readonly signal?: AbortSignal;
  private busy = { read: false, write: false };
  /**
   * Whether a direction can break alone: a socket's two directions are independent; a Node
   * stream's are not (TLS: one record layer for both).
   */
  protected abstract readonly separateDirections: boolean;
  /** The failure that broke each direction of the stream (see the module comment). */
  private broken: { read?: unknown; write?: unknown } = {};
  protected closing?: Promise<void>;

  constructor(
    readonly peer: string,
    opts: ChannelOptions,
  ) {
    const idle = opts.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS;
    if (!Number.isSafeInteger(idle) || idle <= 0) throw usageError(`idleTimeoutMs must be a positive integer (ms), got ${String(idle)}`);
    this.idleTimeoutMs = idle;
    this.signal = opts.signal;
  }

  get closed(): boolean {
    return this.closing !== undefined;
  }

  /** The channel's and the call's signals. */
  protected signals(opts: WaitOptions): AbortSignal[] {
    return [this.signal, opts.signal].filter((s): s is AbortSignal => s !== undefined);
  }

  protected timeoutOf(opts: WaitOptions): number {
    const t = opts.timeoutMs ?? this.idleTimeoutMs;
    if (!Number.isSafeInteger(t) || t <= 0) throw usageError(`timeoutMs must be a positive integer (ms), got ${String(t)}`);
    return t;
  }

  /** Take a direction for one call, or fail: closed, broken, already busy. */
  protected enter(dir: 'read' | 'write', op: string): void {
    if (this.closing) throw closedError('channel', op);
    if (this.broken[dir] !== undefined) throw brokenError(op, this.broken[dir]);
    if (this.busy[dir]) throw usageError(`${op}: another ${dir} is in progress on this channel`);
    this.busy[dir] = true;
  }

  protected leave(dir: 'read' | 'write'): void {
    this.busy[dir] = false;
  }

  /** Break direction `dir` (both, where they cannot break alone), unless broken already, with `err`. */
  protected breakDir(err: unknown, dir: 'read' | 'write'): void {
    for (const d of this.separateDirections ? [dir] : (['read', 'write'] as const)) {
      if (this.broken[d] !== undefined) continue;
      this.broken[d] = err;
      log('%s: channel broken (%s): %s', this.peer, d, (err as Error)?.message);
    }
  }

  /** The error to reject with; a failure after partial progress breaks direction `dir`. */
  protected failure(e: unknown, op: string, partial: boolean, dir: 'read' | 'write', tls = false): VfioError {
    // A binding's syscall error says only "recv failed: ECONNRESET": put the step in front, and
    // say in words that the peer went.
    if (e instanceof VfioError && e.op === undefined && e.kind === 'syscall') e.message = `${op}: ${peerGoneWords(e.code) ?? e.message}`;
    const err = e instanceof VfioError ? e.annotate({ op }) : fromNodeError(e, op, tls);
    if (this.closing && err.code !== 'EVFIO_CLOSED') {
      // close() ended the call: say so, keep what happened underneath as the cause.
      return new VfioError(`${op}: the channel was closed`, { code: 'EVFIO_CLOSED', kind: 'usage', op, cause: err });
    }
    if (partial) this.breakDir(err, dir);
    return err;
  }
}

// ------------------------------------------------------------------------------------- FdChannel

/**
 * A channel over a connected stream socket the library owns (see the module comment). Created by
 * listen()/connect() for plain tcp: and unix: URIs, or by openChannel() from a socket fd a VMM
 * hands over. The channel owns the fd from then on and closes it.
 */
export class FdChannel extends ChannelBase implements LendingChannel {
  readonly kind = 'fd' as const;
  protected readonly separateDirections = true;
  readonly secure = false;
  private fdValue: number;
  /** Binding calls running off the JS thread (and lent fds), which close() waits for. */
  private readonly inflight = new Set<Promise<unknown>>();
  /** recvNow / sendNow calls that moved bytes since the event loop last had a turn (pace()). */
  private immediate = 0;

  constructor(
    private readonly binding: Binding,
    fd: number,
    opts: ChannelOptions = {},
  ) {
    super(opts.peer ?? `fd ${fd}`, opts);
    this.fdValue = fd;
  }

  /**
   * The socket fd, for the native pump or for plain Binding read/write while the channel itself
   * is idle (prefer `lend`, which keeps the channel's own calls out of the way). EVFIO_CLOSED
   * after close().
   */
  get fd(): number {
    if (this.closing) throw closedError('channel', 'fd');
    return this.fdValue;
  }

  readExactly(n: number, opts: ReadOptions = {}): Promise<Buffer> {
    const len = checkLength('readExactly', n);
    const buf = Buffer.allocUnsafe(len);
    return this.readInto(buf, opts).then(() => buf);
  }

  async readInto(buf: Buffer, opts: ReadOptions = {}): Promise<void> {
    checkBuffer('readInto', buf);
    const op = `read ${opts.what ?? `${buf.length} bytes`} from ${this.peer}`;
    const timeoutMs = this.timeoutOf(opts);
    this.enter('read', op);
    let got = 0;
    try {
      while (got < buf.length) {
        // On this thread while bytes are there (recv with MSG_DONTWAIT never sleeps); poll(2) off
        // it only when none are.
        const n = this.now(op, opts, () => this.binding.recvNow(this.fdValue, buf, got, buf.length - got));
        if (n === -1) {
          await this.wait(POLLIN, op, opts, timeoutMs);
          continue;
        }
        if (n === 0) throw peerClosedError(op, got, buf.length);
        got += n;
        await this.pace();
      }
    } catch (e) {
      throw this.failure(e, op, got > 0, 'read');
    } finally {
      this.leave('read');
    }
  }

  async writeAll(buf: Buffer, opts: WaitOptions = {}): Promise<void> {
    checkBuffer('writeAll', buf);
    const op = `write ${buf.length} bytes to ${this.peer}`;
    const timeoutMs = this.timeoutOf(opts);
    this.enter('write', op);
    let done = 0;
    try {
      while (done < buf.length) {
        const n = this.now(op, opts, () => this.binding.sendNow(this.fdValue, buf, done, buf.length - done));
        if (n === -1) {
          await this.wait(POLLOUT, op, opts, timeoutMs);
          continue;
        }
        // send(2) of 0 on a stream socket: no progress and no error; do not spin.
        if (n === 0) throw VfioError.fromErrno(5 /* EIO */, { syscall: 'send', op });
        done += n;
        await this.pace();
      }
    } catch (e) {
      throw this.failure(e, op, done > 0, 'write');
    } finally {
      this.leave('write');
    }
  }

  async end(): Promise<void> {
    const op = `end the stream to ${this.peer}`;
    this.enter('write', op);
    try {
      this.binding.shutdown(this.fdValue, SHUT_WR);
    } catch (e) {
      throw this.failure(e, op, false, 'write');
    } finally {
      this.leave('write');
    }
  }

  /**
   * Lend the fd for one direction (or both) to `fn`, typically the native pump moving a DATA
   * frame between a data_fd and the socket. Meanwhile the channel's own calls in that direction
   * are refused (usage error); the other direction stays free (the return path can be read while
   * the pump writes). Resolves or rejects with what `fn` does; a rejection breaks the directions
   * lent (the stream's place in them is unknown), unless `opts.intact` says it moved nothing.
   * close() during a loan shuts the socket down, which makes a pump on it fail at once, and
   * waits for `fn` to settle before closing the fd: `fn` must settle once the socket is shut
   * down.
   */
  async lend<T>(dir: 'read' | 'write' | 'both', fn: (fd: number) => Promise<T>, opts: LendOptions = {}): Promise<T> {
    const op = `lend the fd (${dir}) of the channel to ${this.peer}`;
    const dirs: Array<'read' | 'write'> = dir === 'both' ? ['read', 'write'] : [dir];
    const taken: Array<'read' | 'write'> = [];
    try {
      for (const d of dirs) {
        this.enter(d, op);
        taken.push(d);
      }
      const p = Promise.resolve().then(() => fn(this.fdValue));
      this.inflight.add(p);
      try {
        return await p;
      } finally {
        this.inflight.delete(p);
      }
    } catch (e) {
      if (taken.length === dirs.length) {
        // fn failed: the bytes it moved are unknown to the channel.
        if (!this.closing && !opts.intact?.(e)) dirs.forEach((d) => this.breakDir(e, d));
      }
      throw e;
    } finally {
      for (const d of taken) this.leave(d);
    }
  }

  close(): Promise<void> {
    this.closing ??= (async () => {
      const fd = this.fdValue;
      // Wake every wait on the fd (polls return, a pump's next write fails) before anything else.
      try {
        this.binding.shutdown(fd, SHUT_RDWR);
      } catch {
        /* ENOTCONN: the peer already went, or it never connected */
      }
      while (this.inflight.size > 0) await Promise.allSettled([...this.inflight]);
      this.binding.close(fd);
      this.fdValue = -1;
      log('%s: channel closed', this.peer);
    })();
    return this.closing;
  }

  /**
   * Wait until the fd is ready for `events` (or reports an error or hang-up, which the next call
   * tells): ETIMEDOUT after `timeoutMs`, ECANCELED on abort (at once), EVFIO_CLOSED once close()
   * was called (src/live/socket.ts waitFd).
   */
  private async wait(events: number, op: string, opts: WaitOptions, timeoutMs: number): Promise<void> {
    await waitFd(this.binding, this.fdValue, events, {
      op,
      deadline: performance.now() + timeoutMs,
      timeoutMs,
      signals: this.signals(opts),
      track: (p) => this.track(p),
      stop: () => (this.closing ? closedError('channel', op) : undefined),
    });
  }

  /** A binding call that does not wait (recvNow / sendNow), unless closing or a signal fired. */
  private now(op: string, opts: WaitOptions, call: () => number): number {
    if (this.closing) throw closedError('channel', op);
    checkSignals(this.signals(opts), op);
    const n = call();
    if (n === -1) this.immediate = 0; // a wait follows: the event loop gets its turn there
    return n;
  }

  /**
   * After IMMEDIATE_CALLS_PER_TURN calls that moved bytes without waiting, give the event loop a
   * turn (setImmediate): a peer that keeps the socket full (a flood of PINGs) must not starve
   * the VMM's timers and other I/O, as a JS thread that only ever finds bytes ready would.
   */
  private async pace(): Promise<void> {
    if (++this.immediate < IMMEDIATE_CALLS_PER_TURN) return;
    this.immediate = 0;
    await new Promise<void>((resolve) => setImmediate(resolve));
  }

  /** Keep `p` in the set close() waits for, until it settles. */
  private track<T>(p: Promise<T>): Promise<T> {
    this.inflight.add(p);
    const forget = (): void => {
      this.inflight.delete(p);
    };
    p.then(forget, forget);
    return p;
  }
}

// --------------------------------------------------------------------------------- StreamChannel

export interface StreamChannelOptions extends ChannelOptions {
  /** The stream is a TLS socket whose peer was authenticated (sets `secure`; errors say 'TLS'). */
  secure?: boolean;
}

/**
 * A channel over a Node Duplex of bytes (not object mode): a TLS socket (listen/connect with
 * `tls`), or any connected stream a VMM hands to openChannel() to carry the migration inside its
 * own channel. The channel owns the stream from then on (close() destroys it); nothing else may
 * read it ('data' listeners would take bytes the channel's reads expect).
 *
 * Reads take the stream's chunks in paused mode and put back what a read did not ask for
 * (`unshift`), so at most the stream's highWaterMark plus one chunk is buffered, whatever the
 * size of a read. A write waits for the stream's callback, i.e. until the bytes were handed to
 * the layer below (the kernel, for a socket), so the caller may reuse its Buffer, and at most
 * one write's bytes are queued in JavaScript; the wait as a whole is bounded by the timeout.
 */
export class StreamChannel extends ChannelBase implements Channel {
  readonly kind = 'stream' as const;
  protected readonly separateDirections = false;
  readonly secure: boolean;
  /** The stream's first error; later calls reject with it. */
  private error: unknown;
  private ended = false;
  private closedStream = false;

  constructor(
    private readonly stream: Duplex,
    opts: StreamChannelOptions = {},
  ) {
    super(opts.peer ?? 'peer', opts);
    this.secure = opts.secure ?? false;
    // Without an 'error' listener a stream error would be thrown as an uncaught exception.
    stream.on('error', (e) => {
      this.error ??= e;
      log('%s: stream error: %s', this.peer, (e as Error).message);
    });
    stream.on('end', () => {
      this.ended = true;
    });
    stream.on('close', () => {
      this.closedStream = true;
    });
    if (stream.destroyed) this.closedStream = true;
    if (stream.readableEnded) this.ended = true;
  }

  readExactly(n: number, opts: ReadOptions = {}): Promise<Buffer> {
    const len = checkLength('readExactly', n);
    const buf = Buffer.allocUnsafe(len);
    return this.readInto(buf, opts).then(() => buf);
  }

  async readInto(buf: Buffer, opts: ReadOptions = {}): Promise<void> {
    checkBuffer('readInto', buf);
    const op = `read ${opts.what ?? `${buf.length} bytes`} from ${this.peer}`;
    const timeoutMs = this.timeoutOf(opts);
    this.enter('read', op);
    let got = 0;
    try {
      while (got < buf.length) {
        if (this.closing) throw closedError('channel', op);
        if (this.error !== undefined) throw this.error;
        const chunk = this.stream.read() as Buffer | string | null;
        if (chunk !== null) {
          const bytes = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
          const take = Math.min(bytes.length, buf.length - got);
          bytes.copy(buf, got, 0, take);
          got += take;
          // What this read did not ask for goes back, for the next read (nothing is read ahead).
          if (take < bytes.length) this.stream.unshift(bytes.subarray(take));
          continue;
        }
        if (this.ended || this.closedStream || this.stream.readableEnded) throw peerClosedError(op, got, buf.length);
        await this.waitEvent(['readable', 'end', 'close', 'error'], op, opts, timeoutMs);
      }
    } catch (e) {
      throw this.failure(e, op, got > 0, 'read', this.secure);
    } finally {
      this.leave('read');
    }
  }

  async writeAll(buf: Buffer, opts: WaitOptions = {}): Promise<void> {
    checkBuffer('writeAll', buf);
    const op = `write ${buf.length} bytes to ${this.peer}`;
    const timeoutMs = this.timeoutOf(opts);
    this.enter('write', op);
    let started = false;
    try {
      if (this.error !== undefined) throw this.error;
      if (this.closedStream || this.stream.writableEnded) throw new VfioError(`${op}: the stream is no longer writable`, { code: 'EPIPE', errno: 32, kind: 'peer', op });
      if (buf.length === 0) return;
      checkSignals(this.signals(opts), op);
      started = true;
      await this.settle(
        (done) => {
          this.stream.write(buf, (err) => done(err ?? undefined));
        },
        op,
        opts,
        timeoutMs,
        () => peerClosedError(op, 0, buf.length),
      );
    } catch (e) {
      throw this.failure(e, op, started, 'write', this.secure);
    } finally {
      this.leave('write');
    }
  }

  async end(opts: WaitOptions = {}): Promise<void> {
    const op = `end the stream to ${this.peer}`;
    const timeoutMs = this.timeoutOf(opts);
    this.enter('write', op);
    try {
      if (this.error !== undefined) throw this.error;
      const gone = (): VfioError => new VfioError(`${op}: the stream closed before its end was sent`, { code: 'EVFIO_PEER_CLOSED', op });
      if (this.closedStream) throw gone();
      await this.settle(
        (done) => {
          this.stream.end(() => done(undefined));
        },
        op,
        opts,
        timeoutMs,
        gone,
      );
    } catch (e) {
      throw this.failure(e, op, false, 'write', this.secure);
    } finally {
      this.leave('write');
    }
  }

  /**
   * Destroy the stream and wait for its 'close' (a socket's fd is closed by then), at most
   * CLOSE_WAIT_MS for a Duplex that does not emit 'close' (emitClose: false).
   */
  close(): Promise<void> {
    this.closing ??= new Promise<void>((resolve) => {
      if (this.closedStream) return resolve();
      const timer = setTimeout(() => {
        log('%s: the stream did not emit close within %d ms', this.peer, CLOSE_WAIT_MS);
        resolve();
      }, CLOSE_WAIT_MS);
      this.stream.once('close', () => {
        clearTimeout(timer);
        resolve();
      });
      this.stream.destroy();
    }).then(() => log('%s: channel closed', this.peer));
    return this.closing;
  }

  /**
   * Wait for one of `events` on the stream, or fail: ETIMEDOUT after `timeoutMs`, ECANCELED on
   * abort, EVFIO_CLOSED on close(). An 'error' event resolves too: the caller reads `this.error`.
   */
  private waitEvent(events: string[], op: string, opts: WaitOptions, timeoutMs: number): Promise<void> {
    return this.settle(
      (done) => {
        const fire = (): void => {
          for (const ev of events) this.stream.off(ev, fire);
          done(undefined);
        };
        for (const ev of events) this.stream.once(ev, fire);
        return () => {
          for (const ev of events) this.stream.off(ev, fire);
        };
      },
      op,
      opts,
      timeoutMs,
    );
  }

  /**
   * Run `start(done)` and wait for `done`, bounded by `timeoutMs`, the signals and close();
   * `start` may return a cleanup run however the wait ends. An error passed to `done` rejects.
   * When the stream closes under the wait: its error if it had one, EVFIO_CLOSED after close(),
   * else `closedByPeer()` when given (a write that can no longer complete), else the wait ends
   * and the caller looks at the stream.
   */
  private settle(
    start: (done: (err: unknown) => void) => (() => void) | void,
    op: string,
    opts: WaitOptions,
    timeoutMs: number,
    closedByPeer?: () => VfioError,
  ): Promise<void> {
    const signals = this.signals(opts);
    checkSignals(signals, op);
    return new Promise<void>((resolve, reject) => {
      let cleanup: (() => void) | void;
      let finished = false;
      const finish = (err: unknown): void => {
        if (finished) return;
        finished = true;
        clearTimeout(timer);
        signals.forEach((s) => s.removeEventListener('abort', onAbort));
        this.stream.off('close', onClose);
        cleanup?.();
        if (err !== undefined) reject(err);
        else resolve();
      };
      const onAbort = (): void => finish(abortedError(op, signals.find((s) => s.aborted)!));
      const onClose = (): void => {
        if (this.error !== undefined) finish(this.error);
        else if (this.closing) finish(closedError('channel', op));
        else if (closedByPeer) finish(closedByPeer());
        else finish(undefined);
      };
      const timer = setTimeout(() => finish(timeoutError(op, timeoutMs)), timeoutMs);
      signals.forEach((s) => s.addEventListener('abort', onAbort, { once: true }));
      this.stream.on('close', onClose);
      cleanup = start(finish);
    });
  }
}

/**
 * A frame link: the live stream's frames (./frames.ts) over a transport channel (./channel.ts),
 * for both ends of a migration.
 *
 *  - Writes go out one at a time, in order (a write lock): the control frames JavaScript writes
 *    and the DATA frames the pump writes never interleave.
 *  - DATA moves between a data_fd and the socket in the data pump (src/kernel/pump) where the
 *    channel is the library's own socket (FdChannel, lent to the pump for one direction): the
 *    pump frames (source) or unframes and checks (destination) the records on its own thread,
 *    with no JavaScript copy per frame. Over a Node stream (TLS, a VMM's Duplex) a JavaScript loop
 *    does the same, one copy per frame.
 *  - Keep-alive: a PING goes out whenever nothing was written for `keepaliveMs`; every read
 *    waits at most `peerTimeoutMs` (the channel's bound), so a peer that vanishes ends the
 *    migration within that time.
 *  - Every wait takes the link's AbortSignal (`abort()`): a failure found by the reading side
 *    (the peer's ERROR) stops a DATA transfer in flight on the writing side at once.
 */
import { VfioError } from '../base/errors';
import { logger } from '../base/log';
import { pumpBuffers, pumpFor, type PumpError } from '../kernel/pump';
import type { Duplex } from 'node:stream';
import type { DataFdTarget } from '../engine/stream';
import { canLend, type Channel } from './channel';
import { connect, openChannel } from './connect';
import type { Listener } from './listener';
import { peerGoneWords } from './errors';
import type { TlsOptions } from './tls';
import {
  FRAME_CHECKSUM, FRAME_HEADER_SIZE, FrameType, MAX_DATA, checkPayload, dataPrefix, decodeHeader, encodeFrame, encodeHeader, frameTypeName,
  type FrameHeader,
} from './frames';

const log = logger('live');

/** Default keep-alive interval: a PING after 1 s without a write. */
export const DEFAULT_KEEPALIVE_MS = 1000;
/** Default bound of every wait on the peer: 10 s without a byte (or without progress writing). */
export const DEFAULT_PEER_TIMEOUT_MS = 10_000;

export interface LinkOptions {
  keepaliveMs?: number;
  peerTimeoutMs?: number;
  /** Cancels everything on the link. */
  signal?: AbortSignal;
}

export interface Frame {
  header: FrameHeader;
  /** The payload, its checksum checked; empty when `unread` is set. */
  payload: Buffer;
  /**
   * The raw header of a DATA frame whose payload is still on the channel (readFrame with
   * `dataPayload: 'leave'`): receiveState() moves it with the rest of the run.
   */
  unread?: Buffer;
}

export class FrameLink {
  readonly keepaliveMs: number;
  readonly peerTimeoutMs: number;
  private readonly ac = new AbortController();
  /** The link's signal: the caller's and abort()'s. */
  readonly signal: AbortSignal;
  private writing: Promise<unknown> = Promise.resolve();
  private lastWrite = Date.now();
  private keepalive?: NodeJS.Timeout;
  /** Buffers the pump reuses (two: it reads one while it writes the other), and when the first is populated. */
  private pumpBuffers?: { buffers: [Buffer, Buffer]; ready: Promise<void> };
  /** A frame header the pump read and handed back, for the next readFrame(). */
  private pendingHeader?: Buffer;
  /** A frame the JS path of receiveState() read past its run of DATA, for the next readFrame(). */
  private unreadFrame?: Frame;
  bytesSent = 0;
  bytesReceived = 0;

  constructor(
    readonly channel: Channel,
    private readonly opts: LinkOptions,
  ) {
    this.keepaliveMs = opts.keepaliveMs ?? DEFAULT_KEEPALIVE_MS;
    this.peerTimeoutMs = opts.peerTimeoutMs ?? DEFAULT_PEER_TIMEOUT_MS;
    this.signal = opts.signal ? AbortSignal.any([opts.signal, this.ac.signal]) : this.ac.signal;
  }

  get peer(): string {
    return this.channel.peer;
  }

  /** Stop everything in flight on the link (each call rejects with ECANCELED; `reason` as the cause). */
  abort(reason: unknown): void {
    if (!this.ac.signal.aborted) this.ac.abort(reason);
  }

  /** Start sending PINGs when nothing was written for keepaliveMs. */
  startKeepalive(): void {
    if (this.keepalive || this.keepaliveMs <= 0) return;
    this.keepalive = setInterval(() => {
      if (Date.now() - this.lastWrite < this.keepaliveMs) return;
      this.lastWrite = Date.now();
      this.send(FrameType.PING, 0xffff).catch((e) => log('%s: PING failed: %s', this.peer, (e as Error).message));
    }, Math.max(10, Math.floor(this.keepaliveMs / 2)));
    this.keepalive.unref();
  }

  /** Close the channel (idempotent); stops the keep-alive. */
  async close(): Promise<void> {
    if (this.keepalive) clearInterval(this.keepalive);
    this.keepalive = undefined;
    await this.channel.close();
  }

  /** Run `fn` when the writes queued before it are done; later writes wait for it. */
  private exclusiveWrite<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.writing.then(fn, fn);
    this.writing = run.catch(() => undefined);
    return run.finally(() => {
      this.lastWrite = Date.now();
    });
  }

  /**
   * Send a last control frame (CANCEL, ERROR, REFUSE) even when the link's signal has fired (a
   * caller's cancel): after the writes in flight end, bounded by `timeoutMs` (default 1000), not
   * cancellable. Never throws: the peer may be gone. Nothing goes out when an interrupted
   * transfer broke the writing direction (EVFIO_CHANNEL_BROKEN: a failed sending pump, a
   * part-written frame); a failed receiving pump breaks only the reading one.
   */
  async farewell(type: FrameType, device: number, payload?: Buffer, timeoutMs = 1000): Promise<void> {
    const frame = encodeFrame(type, device, payload);
    const bound = AbortSignal.timeout(timeoutMs);
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      this.exclusiveWrite(async () => {
        await this.channel.writeAll(frame, { signal: bound, timeoutMs });
        this.bytesSent += frame.length;
      }),
      new Promise<void>((r) => {
        timer = setTimeout(r, timeoutMs);
        timer.unref();
      }),
    ]).catch((e) => log('%s: %s not sent: %s', this.peer, frameTypeName(type), (e as Error)?.message));
    clearTimeout(timer);
  }

  /** Send one control frame (header and payload in one write). */
  send(type: FrameType, device: number, payload?: Buffer): Promise<void> {
    const frame = encodeFrame(type, device, payload);
    return this.exclusiveWrite(async () => {
      await this.channel.writeAll(frame, { signal: this.signal, timeoutMs: this.peerTimeoutMs });
      this.bytesSent += frame.length;
    });
  }

  private async buffers(): Promise<[Buffer, Buffer]> {
    const { buffers, ready } = this.prepareData();
    await ready;
    return buffers;
  }

  /**
   * Make the buffers that DATA will move through and start faulting their pages in off the JS
   * thread (pumpBuffers), now rather than at the first DATA frame: both sides call it once the
   * handshake is done, so that the cost stays out of the switchover's downtime. Idempotent: the
   * same buffers every time.
   */
  prepareData(): { buffers: [Buffer, Buffer]; ready: Promise<void> } {
    return (this.pumpBuffers ??= pumpBuffers(FRAME_HEADER_SIZE + MAX_DATA));
  }

  /**
   * Send device `index`'s state from its data_fd as DATA frames of at most 1 MiB: to the end of
   * the state, or with `precopy` to PRE_COPY's temporary end (read() == 0 or ENOMSG). Resolves
   * with the state bytes sent.
   */
  sendState(index: number, from: DataFdTarget, opts: { precopy?: boolean; onProgress?: (bytes: number) => void; signal?: AbortSignal } = {}): Promise<{ bytes: number; end: 'eof' | 'for-now' }> {
    const signal = opts.signal ? AbortSignal.any([opts.signal, this.signal]) : this.signal;
    return this.exclusiveWrite(async () => {
      const recordSize = Math.min(MAX_DATA, from.bufferSize ?? MAX_DATA);
      if (canLend(this.channel)) {
        // A pump that failed before writing a byte (cancelled between frames, or its data_fd
        // read failed first) leaves the stream at a frame boundary: CANCEL or ERROR can follow.
        const intact = (e: unknown): boolean => e instanceof VfioError && (e as Partial<PumpError>).bytesWritten === 0;
        return this.channel.lend('write', async (sock) => {
          const pump = pumpFor(from.binding, [from.fd, sock]);
          try {
            const r = await pump.writeRecords(from.fd, sock, await this.buffers(), {
              recordSize, prefix: dataPrefix(index), checksum: FRAME_CHECKSUM, precopy: opts.precopy, signal, idleTimeoutMs: this.peerTimeoutMs,
            });
            this.bytesSent += r.written;
            if (r.bytes) opts.onProgress?.(r.bytes);
            return { bytes: r.bytes, end: r.end === 'for-now' ? 'for-now' : 'eof' };
          } catch (e) {
            throw stateError(e, from, 'send');
          }
        }, { intact });
      }
      return this.sendStateJs(index, from, recordSize, opts.precopy ?? false, signal, opts.onProgress);
    });
  }

  /** sendState() over a Node stream: read a piece of the data_fd, frame it, write it. */
  private async sendStateJs(index: number, from: DataFdTarget, recordSize: number, precopy: boolean, signal: AbortSignal, onProgress?: (n: number) => void): Promise<{ bytes: number; end: 'eof' | 'for-now' }> {
    const buf = (await this.buffers())[0];
    const payload = buf.subarray(FRAME_HEADER_SIZE, FRAME_HEADER_SIZE + recordSize);
    let total = 0;
    for (;;) {
      signal.throwIfAborted();
      let n: number;
      try {
        n = await from.binding.read(from.fd, payload, 0, recordSize);
      } catch (e) {
        if (precopy && e instanceof VfioError && e.code === 'ENOMSG') return { bytes: total, end: 'for-now' };
        throw stateError(e, from, 'send');
      }
      if (n === 0) return { bytes: total, end: precopy ? 'for-now' : 'eof' };
      encodeHeader(FrameType.DATA, index, payload.subarray(0, n)).copy(buf, 0);
      await this.channel.writeAll(buf.subarray(0, FRAME_HEADER_SIZE + n), { signal, timeoutMs: this.peerTimeoutMs });
      this.bytesSent += FRAME_HEADER_SIZE + n;
      total += n;
      onProgress?.(total);
    }
  }

  /**
   * Read the next frame (header, then payload, its checksum checked), PINGs skipped. Headers are
   * checked against `devices` (the stream's device count). A frame the link read ahead (the end
   * of a run of DATA) comes first. With `dataPayload: 'leave'`, a non-empty DATA frame's payload
   * is left on a channel the native pump can read (`unread`), for receiveState() to pump
   * straight into the device with the frames that follow it.
   */
  async readFrame(devices?: number, opts: { timeoutMs?: number; dataPayload?: 'leave' } = {}): Promise<Frame> {
    const ahead = this.unreadFrame;
    if (ahead) {
      this.unreadFrame = undefined;
      return ahead;
    }
    for (;;) {
      const raw = this.pendingHeader ?? (await this.channel.readExactly(FRAME_HEADER_SIZE, { signal: this.signal, timeoutMs: opts.timeoutMs ?? this.peerTimeoutMs, what: 'frame header' }));
      this.pendingHeader = undefined;
      const header = decodeHeader(raw, devices);
      if (opts.dataPayload === 'leave' && header.type === FrameType.DATA && header.length > 0 && canLend(this.channel)) {
        return { header, payload: Buffer.alloc(0), unread: Buffer.from(raw) }; // bytesReceived: the pump's `read` counts it
      }
      const payload = header.length
        ? await this.channel.readExactly(header.length, { signal: this.signal, timeoutMs: this.peerTimeoutMs, what: `${frameTypeName(header.type)} payload` })
        : Buffer.alloc(0);
      this.bytesReceived += FRAME_HEADER_SIZE + header.length;
      checkPayload(header, payload);
      if (header.type === FrameType.PING) continue;
      return { header, payload };
    }
  }

  /**
   * Device `first.header.device`'s DATA: write `first` (a DATA frame readFrame() returned) into
   * the data_fd, then every DATA frame of the same device that follows it, each frame's checksum
   * checked before any of it reaches the device, until another frame comes; that frame's header
   * is kept for the next readFrame(). When `first` is `unread`, the pump starts from its header.
   * Resolves with the state bytes written.
   */
  async receiveState(first: Frame, to: DataFdTarget, devices: number): Promise<number> {
    const index = first.header.device;
    let total = 0;
    if (!first.unread) {
      await writeAll(to, first.payload);
      total = first.payload.length;
    }
    if (canLend(this.channel)) { // always so when `first` is unread
      const r = await this.channel.lend('read', async (sock) => {
        const pump = pumpFor(to.binding, [sock, to.fd]);
        try {
          return await pump.readRecords(sock, to.fd, await this.buffers(), {
            prefix: dataPrefix(index), maxRecord: MAX_DATA, checksum: FRAME_CHECKSUM, signal: this.signal, idleTimeoutMs: this.peerTimeoutMs,
            firstHeader: first.unread,
          });
        } catch (e) {
          throw stateError(e, to, 'receive');
        }
      });
      this.bytesReceived += r.read;
      total += r.bytes;
      // The header the pump stopped at is judged (decodeHeader) by the next readFrame().
      if (r.end === 'header') this.pendingHeader = r.header;
      else if (r.end === 'eof') throw new VfioError(`${this.peer} closed the connection in the middle of ${to.device}'s state`, { code: 'EVFIO_PEER_CLOSED', device: to.device });
      return total;
    }
    for (;;) {
      const next = await this.readFrame(devices);
      if (next.header.type !== FrameType.DATA || next.header.device !== index) {
        this.unreadFrame = next;
        return total;
      }
      await writeAll(to, next.payload);
      total += next.payload.length;
    }
  }
}

/** Write all of `data` to a data_fd (short writes looped on). */
async function writeAll(to: DataFdTarget, data: Buffer): Promise<void> {
  let off = 0;
  while (off < data.length) {
    let n: number;
    try {
      n = await to.binding.write(to.fd, data, off, data.length - off);
    } catch (e) {
      throw stateError(e, to, 'receive');
    }
    if (n <= 0) throw new VfioError(`write to ${to.device}'s data_fd returned ${n}`, { code: 'EIO', errno: 5, syscall: 'write', device: to.device });
    off += n;
  }
}

/** A pump or data_fd failure, named by side: the data_fd's (the device) or the socket's (the peer). */
function stateError(e: unknown, t: DataFdTarget, dir: 'send' | 'receive'): unknown {
  if (!(e instanceof VfioError)) return e;
  const deviceSide = dir === 'send' ? e.syscall === 'read' || e.syscall === 'pread' : e.syscall === 'write' || e.syscall === 'pwrite';
  if (deviceSide) return e.annotate({ device: t.device, op: 'data_fd ' + (dir === 'send' ? 'read' : 'write'), step: dir === 'send' ? 'migrate:read' : 'load:write' });
  const op = dir === 'send' ? `send ${t.device}'s state` : `receive ${t.device}'s state`;
  const gone = e.kind === 'syscall' ? peerGoneWords(e.code, dir === 'send' ? 'the destination' : 'the source') : undefined;
  if (gone) e.message = `${op}: ${gone}`;
  return e.annotate({ op, step: dir === 'send' ? 'migrate:send' : 'load:receive' });
}

/** Where a migration's connection goes or comes from: a URI (`tcp:HOST:PORT`, `unix:PATH`), a connected socket fd, a Duplex, or a Channel. */
export type Endpoint = string | number | Duplex | Channel;

/** How a live migration's connection is made and kept. */
export interface LinkTransportOptions {
  /** TLS with mutual certificate authentication (URIs only). */
  tls?: TlsOptions;
  /** Bound of the connect, ms. */
  connectTimeoutMs?: number;
  /** Bound of the wait for the migration's connection on a Listener, ms (default: none). */
  acceptTimeoutMs?: number;
  /** A PING after this many ms without a write (default 1000). */
  keepaliveMs?: number;
  /** Every wait on the peer, ms without progress (default 10000). */
  peerTimeoutMs?: number;
  /** Cancels the connect and everything on the link. */
  signal?: AbortSignal;
}

function isChannel(v: unknown): v is Channel {
  return typeof v === 'object' && v !== null && typeof (v as Channel).readExactly === 'function' && typeof (v as Channel).writeAll === 'function';
}

function isListener(v: unknown): v is Listener {
  return typeof v === 'object' && v !== null && typeof (v as Listener).accept === 'function' && 'uri' in v;
}

async function channelTo(to: Endpoint, opts: LinkTransportOptions): Promise<Channel> {
  if (typeof to === 'string') return connect(to, { tls: opts.tls, timeoutMs: opts.connectTimeoutMs, signal: opts.signal, idleTimeoutMs: opts.peerTimeoutMs });
  if (isChannel(to)) return to;
  return openChannel(to, { idleTimeoutMs: opts.peerTimeoutMs });
}

/** The source's link: connect to `to` (a URI), or wrap the connection the VMM hands over. */
export async function connectLink(to: Endpoint, opts: LinkTransportOptions = {}): Promise<FrameLink> {
  return new FrameLink(await channelTo(to, opts), { keepaliveMs: opts.keepaliveMs, peerTimeoutMs: opts.peerTimeoutMs, signal: opts.signal });
}

/** The destination's link: the one connection `from` (a Listener) accepts, or the connection handed over. */
export async function acceptLink(from: Listener | Endpoint, opts: LinkTransportOptions = {}): Promise<FrameLink> {
  const channel = isListener(from) ? await from.accept({ signal: opts.signal, timeoutMs: opts.acceptTimeoutMs }) : await channelTo(from, opts);
  return new FrameLink(channel, { keepaliveMs: opts.keepaliveMs, peerTimeoutMs: opts.peerTimeoutMs, signal: opts.signal });
}

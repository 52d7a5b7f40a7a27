/**
 * The two ends of the live stream (docs/live-protocol.md) as the engine's device-state streams
 * (src/engine/stream.ts): `LiveSink` on the source (a StateSink whose begin() is the handshake and
 * whose finish() waits for the destination's LOADED), `LiveSource` on the destination (a
 * StateSource whose devices come from the HELLO, whose ready() answers ACCEPT and whose load()
 * writes DATA into the devices as it arrives).
 *
 * The source reads the return path in the background from the handshake on: SWITCHOVER_ACK,
 * LOADED, RESUMED, ERROR, the peer's keep-alives. A failure there (an ERROR, a bad frame, a
 * vanished or stalled destination) aborts whatever the source is writing at once, so that the
 * engine cancels and the devices run on; after END to a destination that runs its devices
 * itself, anything but its ERROR or CANCEL (a lost connection, a timeout) is
 * EVFIO_OUTCOME_UNKNOWN instead (the source devices stay stopped).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { EventEmitter } from 'eventemitter3';
import { VfioError } from '../base/errors';
import { logger } from '../base/log';
import type { DataFdTarget, LoadTargets, SaveSummary, SavedDevice, StateSink, StateSource, WriteStateOptions } from '../engine/stream';
import { VFIO_MIGRATION_PRE_COPY } from '../kernel/uapi/vfio';
import type { DeviceRecord } from '../model/migratable';
import {
  FEATURES, FRAME_CHECKSUM, FrameType, PROTOCOL_NAME, PROTOCOL_VERSION, WHOLE_STREAM, decodeAccept, decodeError, decodeHello, encodeAccept, encodeError,
  encodeHello, encodeJson, frameTypeName, peerError, protocolError, type Accept, type Hello,
  decodeAckGeneration, decodeLoaded, encodeAckGeneration, encodeLoaded, type Loaded,
} from './frames';
import type { FrameLink, Frame } from './link';

const log = logger('live');

/**
 * The destination had END (so every device's state) and runs its devices on its own, but went
 * silent before its RESUMED: it may be running them, so the source must not resume on a guess.
 */
function outcomeUnknown(e: unknown, peer: string, loaded: boolean): VfioError {
  return new VfioError(
    `${peer} was sent every device's state${loaded ? ' and loaded it' : ''}, then went silent before it said it runs the devices (${(e as Error)?.message ?? e}): it may be running them; the source devices stay in STOP — resume them only if the destination did not`,
    { code: 'EVFIO_OUTCOME_UNKNOWN', kind: 'peer', step: 'migrate:complete', cause: e },
  );
}

/** Whether `e` is the destination's own answer (its ERROR or refusal), not silence. */
function peerAnswered(e: unknown): boolean {
  return e instanceof VfioError && ['EVFIO_PEER_FAILED', 'EVFIO_PEER_CANCELLED', 'EVFIO_PEER_REFUSED', 'EVFIO_OUTCOME_UNKNOWN'].includes(e.code) || (e instanceof VfioError && e.kind === 'mismatch');
}

/** Default bound of the handshake (the destination's checks and RUNNING → RESUMING): 30 s. */
export const DEFAULT_HANDSHAKE_TIMEOUT_MS = 30_000;

/**
 * The peer's first frame (HELLO at the destination, ACCEPT or REFUSE at the source). A first
 * header that does not decode means the peer speaks something else (an SSH or HTTP server, a
 * stale listener): the error says so rather than naming a frame type that was never sent.
 */
async function firstFrame(link: FrameLink, expecting: string, timeoutMs: number): Promise<Frame> {
  try {
    return await link.readFrame(undefined, { timeoutMs });
  } catch (e) {
    if (e instanceof VfioError && e.code === 'EVFIO_PROTOCOL' && e.step === 'live:frame') {
      throw new VfioError(`${link.peer} does not speak ${PROTOCOL_NAME} (expected ${expecting}; ${e.message}): is it a vfio-pci migrate/incoming, or a VMM using this library?`, {
        code: 'EVFIO_PROTOCOL', step: 'live:handshake', cause: e,
      });
    }
    throw e;
  }
}
/** Default bound of the wait for LOADED (and RESUMED) after END: 60 s. */
export const DEFAULT_COMPLETE_TIMEOUT_MS = 60_000;

/** How long a source whose send the connection cut short waits for the destination's ERROR, ms. */
export const RETURN_PATH_GRACE_MS = 1_000;

/** A send that failed because the connection went (reset, closed, a direction broken by it). */
function connectionLost(e: unknown): boolean {
  if (!(e instanceof VfioError)) return false;
  const codes = ['EPIPE', 'ECONNRESET', 'EVFIO_PEER_CLOSED', 'EVFIO_CHANNEL_BROKEN'];
  return codes.includes(e.code) || (e.cause instanceof VfioError && codes.includes(e.cause.code));
}

export interface LiveSinkEvents {
  /** The destination acknowledged every device's initial data (SWITCHOVER_ACK). */
  'switchover-ack': () => void;
  /** The return path failed before the end (the destination's ERROR, or the connection): the migration cannot go on. */
  failed: (e: unknown) => void;
}

export interface LiveSinkOptions {
  /** Offer the switchover-ack (default true). */
  switchoverAck?: boolean;
  /** How long the destination may take to answer the HELLO (ACCEPT or REFUSE), ms (default 30000: its checks and RUNNING → RESUMING). */
  handshakeTimeoutMs?: number;
  /** How long the destination may take after END to report LOADED (and RESUMED when it announced it), ms (default 60000). */
  completeTimeoutMs?: number;
  /** Stop-copy estimates per device index for the HELLO (informational). */
  stopCopyBytes?: (index: number) => number | undefined;
}

/** The source's end. */
export class LiveSink extends EventEmitter<LiveSinkEvents> implements StateSink {
  private accept?: Accept;
  private records: readonly DeviceRecord[] = [];
  private readonly sent = new Map<number, number>();
  private ack = false;
  /** REINIT frames sent: a SWITCHOVER_ACK counts for this generation only. */
  private reinitsSent = 0;
  private loaded?: Loaded;
  private resumed = false;
  /** The return path's failure: the peer's ERROR, or the link's. */
  private failure?: unknown;
  private reader?: Promise<void>;
  private waiters: Array<() => void> = [];
  private finished = false;
  /** abort() ran: the return path's end is ours, not a failure. */
  private closing = false;

  constructor(
    readonly link: FrameLink,
    private readonly opts: LiveSinkOptions = {},
  ) {
    super();
  }

  get name(): string {
    return this.link.peer;
  }

  /** Whether the destination takes the switchover-ack (ACCEPT), so that the source waits for it. */
  get usesSwitchoverAck(): boolean {
    return this.accept?.features.includes('switchover-ack') ?? false;
  }

  /** Whether the destination's SWITCHOVER_ACK arrived (and no REINIT since). */
  get switchoverAcked(): boolean {
    return this.ack;
  }

  /** Whether the destination said it runs its devices when loaded (ACCEPT `resumes`). */
  get destinationResumes(): boolean {
    return this.accept?.resumes ?? false;
  }

  /** The return path's failure, once there is one. */
  get failed(): unknown {
    return this.failure;
  }

  /** HELLO with the records, then ACCEPT (the destination checked them, its devices are in RESUMING) or REFUSE. */
  async begin(records: readonly DeviceRecord[]): Promise<void> {
    this.records = records;
    const hello: Hello = {
      version: PROTOCOL_VERSION, checksum: FRAME_CHECKSUM,
      features: this.opts.switchoverAck === false ? [] : [...FEATURES],
      keepaliveMs: this.link.keepaliveMs,
      devices: records.map((r, i) => ({ ...r, precopy: (r.migrationFlags & VFIO_MIGRATION_PRE_COPY) !== 0, stopCopyBytes: this.opts.stopCopyBytes?.(i) })),
    };
    await this.link.send(FrameType.HELLO, WHOLE_STREAM, encodeHello(hello));
    this.link.startKeepalive();
    const f = await firstFrame(this.link, 'ACCEPT or REFUSE', this.opts.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS);
    if (f.header.type === FrameType.REFUSE || f.header.type === FrameType.ERROR) {
      throw peerError(decodeError(f.payload, frameTypeName(f.header.type)), f.header.type === FrameType.REFUSE, this.name);
    }
    if (f.header.type !== FrameType.ACCEPT) throw protocolError(`expected ACCEPT or REFUSE from ${this.name}, got ${frameTypeName(f.header.type)}`);
    this.accept = decodeAccept(f.payload);
    if (this.accept.version !== PROTOCOL_VERSION) {
      throw protocolError(`${this.name} accepted with protocol version ${this.accept.version}, this source speaks ${PROTOCOL_VERSION}`, 'EVFIO_PROTOCOL_VERSION');
    }
    log('%s accepted %d devices (features %s, resumes %s)', this.name, records.length, this.accept.features.join(',') || '-', this.accept.resumes);
    this.reader = this.readReturnPath();
    this.link.prepareData();
  }

  /** The return path, until LOADED (and RESUMED when announced) or a failure. */
  private async readReturnPath(): Promise<void> {
    try {
      for (;;) {
        // Before END the destination has nothing to say but keep-alives: its silence is bounded
        // by the peer timeout all the same, since it PINGs.
        const f = await this.link.readFrame();
        if (f.header.device !== WHOLE_STREAM) throw protocolError(`${frameTypeName(f.header.type)} frame for device ${f.header.device} from the destination ${this.name}: its frames belong to the whole stream`);
        switch (f.header.type) {
          case FrameType.SWITCHOVER_ACK: {
            const gen = decodeAckGeneration(f.payload);
            if (gen !== this.reinitsSent) {
              log('%s: a switchover-ack for %d REINITs, %d sent: stale, ignored', this.name, gen, this.reinitsSent);
              break;
            }
            this.ack = true;
            log('%s: switchover-ack', this.name);
            this.emit('switchover-ack');
            break;
          }
          case FrameType.LOADED:
            this.loaded = decodeLoaded(f.payload);
            if (!this.destinationResumes) return;
            break;
          case FrameType.RESUMED:
            this.resumed = true;
            return;
          case FrameType.ERROR:
            throw peerError(decodeError(f.payload, 'ERROR'), false, this.name);
          case FrameType.CANCEL:
            throw new VfioError(`${this.name} cancelled the migration (its devices were not run)`, { code: 'EVFIO_PEER_CANCELLED', step: 'migrate' });
          default:
            throw protocolError(`unexpected ${frameTypeName(f.header.type)} frame from the destination ${this.name}`);
        }
        this.wake();
      }
    } catch (e) {
      // Our own end of the return path is not the destination failing: abort() closing it, or
      // the link's signal (the caller's cancel) ending its read. The cancel then still tells the
      // destination (CANCEL), which a failure recorded here would keep it from doing.
      if (this.closing || (this.link.signal.aborted && e instanceof VfioError && e.kind === 'cancelled')) return;
      this.failure = this.afterEnd(e);
      log('%s: return path failed: %s', this.name, (this.failure as Error)?.message);
      this.link.abort(this.failure);
      this.emit('failed', this.failure);
    } finally {
      this.wake();
    }
  }

  /**
   * A failure once END is out to a destination that runs its devices on its own: only its ERROR
   * says it did not run them; a lost connection or a timeout leaves the outcome unknown.
   */
  private afterEnd(e: unknown): unknown {
    return this.finished && this.destinationResumes && !this.resumed && !peerAnswered(e) ? outcomeUnknown(e, this.name, this.loaded !== undefined) : e;
  }

  private wake(): void {
    this.waiters.splice(0).forEach((w) => w());
  }

  /** Throw the return path's failure, if any. */
  private check(): void {
    if (this.failure) throw this.failure;
  }

  /**
   * A link abort caused by the return path shows as the peer's error, not as ECANCELED. A send
   * that the connection cut short (the destination failed, sent its ERROR and closed) waits up
   * to RETURN_PATH_GRACE_MS for the return path to read what the destination said, so that the
   * source reports the destination's error rather than only "connection reset". The wait ends
   * at once when `signal` or the link's signal fires (a cancel need not wait for it).
   */
  private async rethrow(e: unknown, signal?: AbortSignal): Promise<never> {
    const signals = [signal, this.link.signal].filter((s): s is AbortSignal => s !== undefined);
    if (!this.failure && this.reader && connectionLost(e) && !signals.some((s) => s.aborted)) {
      const settled = new AbortController(); // ends the grace timer once the reader has won
      const grace = sleep(RETURN_PATH_GRACE_MS, undefined, { signal: AbortSignal.any([...signals, settled.signal]) }).catch(() => undefined);
      await Promise.race([this.reader, grace]);
      settled.abort();
    }
    if (this.failure && e !== this.failure) throw this.failure;
    throw e;
  }

  async writeState(index: number, from: DataFdTarget, opts: WriteStateOptions = {}): Promise<{ bytes: number; end: 'eof' | 'for-now' }> {
    this.check();
    try {
      const before = this.sent.get(index) ?? 0;
      const r = await this.link.sendState(index, from, { precopy: opts.precopy, signal: opts.signal, onProgress: (b) => opts.onProgress?.(b) });
      this.sent.set(index, before + r.bytes);
      return r;
    } catch (e) {
      return await this.rethrow(e, opts.signal);
    }
  }

  async endState(index: number): Promise<void> {
    this.check();
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(this.sent.get(index) ?? 0));
    await this.link.send(FrameType.STATE_END, index, b).catch((e) => this.rethrow(e));
  }

  async initialSent(index: number): Promise<void> {
    this.check();
    await this.link.send(FrameType.INITIAL_SENT, index).catch((e) => this.rethrow(e));
  }

  async reinit(index: number): Promise<void> {
    this.check();
    this.ack = false;
    this.reinitsSent++;
    await this.link.send(FrameType.REINIT, index).catch((e) => this.rethrow(e));
  }

  async writeModel(index: number, body: Buffer): Promise<void> {
    this.check();
    await this.link.send(FrameType.MODEL, index, body).catch((e) => this.rethrow(e));
  }

  /** END, then wait for LOADED (and RESUMED, when the destination said it resumes) or ERROR. */
  async finish(summary: SaveSummary = {}): Promise<void> {
    this.check();
    await this.link.send(FrameType.END, WHOLE_STREAM, encodeJson(summary)).catch((e) => this.rethrow(e));
    this.finished = true;
    const deadline = Date.now() + (this.opts.completeTimeoutMs ?? DEFAULT_COMPLETE_TIMEOUT_MS);
    while (!(this.loaded && (this.resumed || !this.destinationResumes))) {
      if (this.failure) throw this.afterEnd(this.failure);
      const left = deadline - Date.now();
      if (left <= 0) {
        const what = this.loaded ? 'that it runs its devices' : 'the load';
        throw this.afterEnd(new VfioError(`${this.name} did not report ${what} within ${this.opts.completeTimeoutMs ?? DEFAULT_COMPLETE_TIMEOUT_MS} ms`, { code: 'ETIMEDOUT', errno: 110, kind: 'peer', step: 'migrate:complete' }));
      }
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    await this.reader;
  }

  /** What the destination reported in LOADED. */
  get loadedReport(): Loaded | undefined {
    return this.loaded;
  }

  /**
   * Tell the destination, best effort (FrameLink.farewell()), and close: ERROR with the reason
   * when the source failed (a VfioError of another kind than 'cancelled': the destination's error
   * then says why), CANCEL when it was cancelled, nothing when the return path had failed (the
   * destination's ERROR, a bad frame, the connection). Never throws.
   */
  async abort(reason: unknown): Promise<void> {
    log('%s: aborting (%s)', this.name, (reason as Error)?.message ?? reason);
    this.closing = true;
    // After END to a destination that runs its devices, nothing is said: it may run them already,
    // and a word now could only make it drop a good copy (see afterEnd()).
    if (!this.failure && !(this.finished && this.destinationResumes)) {
      const failed = reason instanceof VfioError && reason.kind !== 'cancelled';
      await (failed ? this.link.farewell(FrameType.ERROR, WHOLE_STREAM, encodeError(reason)) : this.link.farewell(FrameType.CANCEL, WHOLE_STREAM));
    }
    this.link.abort(reason);
    await this.link.close().catch(() => undefined);
    await this.reader?.catch(() => undefined);
  }
}

export interface LiveSourceOptions {
  /** The destination runs its devices as soon as they are loaded and reports RESUMED. */
  resumes?: boolean;
  /** Take the switchover-ack the source offers (default true). */
  switchoverAck?: boolean;
  /** How long the source may take to send its HELLO after connecting, ms (default 30000). */
  handshakeTimeoutMs?: number;
}

/** The destination's end. */
export class LiveSource implements StateSource {
  private readonly precopy: Set<number>;
  private readonly initial = new Set<number>();
  private ackSent = false;
  /** REINIT frames received (the generation a SWITCHOVER_ACK acknowledges). */
  private reinits = 0;
  private accepted = false;
  private readonly ackFeature: boolean;
  private ended = false;
  /** What the source's END said it moved and cost. */
  summary: SaveSummary = {};

  private constructor(
    readonly link: FrameLink,
    readonly hello: Hello,
    private readonly opts: LiveSourceOptions,
  ) {
    this.precopy = new Set(hello.devices.flatMap((d, i) => (d.precopy ? [i] : [])));
    this.ackFeature = opts.switchoverAck !== false && hello.features.includes('switchover-ack');
  }

  /**
   * Read the source's HELLO. A malformed or foreign HELLO is answered with REFUSE and thrown
   * (EVFIO_PROTOCOL / EVFIO_PROTOCOL_VERSION). A source that gave up before its HELLO sends
   * ERROR with its reason (e.g. its devices were not running: EVFIO_PEER_FAILED saying so), or
   * CANCEL when it was cancelled (EVFIO_PEER_CANCELLED).
   */
  static async open(link: FrameLink, opts: LiveSourceOptions = {}): Promise<LiveSource> {
    let hello: Hello;
    try {
      const f = await firstFrame(link, 'HELLO', opts.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS);
      if (f.header.type === FrameType.CANCEL) throw new VfioError(`${link.peer} cancelled the migration before its HELLO`, { code: 'EVFIO_PEER_CANCELLED', step: 'load' });
      if (f.header.type === FrameType.ERROR) throw peerError(decodeError(f.payload, 'ERROR'), false, link.peer);
      if (f.header.type !== FrameType.HELLO) throw protocolError(`expected HELLO, got ${frameTypeName(f.header.type)}: not a migration source`);
      hello = decodeHello(f.payload);
    } catch (e) {
      // A source that said it gave up hears nothing more; otherwise REFUSE with the reason, even
      // when this side's own signal fired (farewell).
      const sourceLeft = e instanceof VfioError && (e.code === 'EVFIO_PEER_CANCELLED' || e.code === 'EVFIO_PEER_FAILED');
      if (!sourceLeft) await link.farewell(FrameType.REFUSE, WHOLE_STREAM, encodeError(e));
      throw e;
    }
    link.startKeepalive();
    return new LiveSource(link, hello, opts);
  }

  get name(): string {
    return this.link.peer;
  }

  devices(): SavedDevice[] {
    return this.hello.devices.map((d, index) => ({ index, record: d, modelLater: true, stateBytes: d.stopCopyBytes }));
  }

  async ready(): Promise<void> {
    const features = this.ackFeature ? ['switchover-ack'] : [];
    await this.link.send(FrameType.ACCEPT, WHOLE_STREAM, encodeAccept({ version: PROTOCOL_VERSION, features, resumes: this.opts.resumes ?? false }));
    this.accepted = true;
    this.link.prepareData();
  }

  async load(targets: LoadTargets): Promise<Map<number, { model?: Buffer; bytes: number }>> {
    const n = this.hello.devices.length;
    const out = new Map<number, { model?: Buffer; bytes: number }>(this.hello.devices.map((_, i) => [i, { bytes: 0 }]));
    const stateEnded = new Set<number>();
    for (;;) {
      // A DATA frame comes back with its payload still on the socket (`unread`), for the pump. A
      // check below that throws before receiveState() leaves it there: the load then fails, and
      // the link is aborted and closed without another read.
      const f: Frame = await this.link.readFrame(n, { dataPayload: 'leave' });
      const { type, device } = f.header;
      const perDevice = (): { model?: Buffer; bytes: number } => {
        if (device === WHOLE_STREAM) throw protocolError(`${frameTypeName(type)} frame without a device`);
        if (stateEnded.has(device) && type !== FrameType.MODEL) throw protocolError(`${frameTypeName(type)} frame for device ${device} after its STATE_END`);
        return out.get(device)!;
      };
      switch (type) {
        case FrameType.DATA: {
          const o = perDevice();
          o.bytes += await this.link.receiveState(f, targets.target(device), n);
          targets.progress(device, o.bytes);
          break;
        }
        case FrameType.INITIAL_SENT:
          perDevice();
          this.initial.add(device);
          await this.maybeAck();
          break;
        case FrameType.REINIT:
          perDevice();
          this.initial.delete(device);
          this.ackSent = false;
          this.reinits++;
          break;
        case FrameType.STATE_END: {
          const o = perDevice();
          const total = f.payload.length === 8 ? Number(f.payload.readBigUInt64LE(0)) : -1;
          if (total !== o.bytes) throw protocolError(`device ${device}: STATE_END says ${total} bytes, ${o.bytes} arrived`);
          stateEnded.add(device);
          break;
        }
        case FrameType.MODEL:
          if (device === WHOLE_STREAM || !stateEnded.has(device)) throw protocolError(`MODEL frame for device ${device} before its STATE_END`);
          out.get(device)!.model = f.payload;
          break;
        case FrameType.END:
          if (stateEnded.size !== n) throw protocolError(`END before every device's STATE_END (${stateEnded.size} of ${n})`);
          this.summary = decodeSummary(f.payload);
          this.ended = true;
          return out;
        case FrameType.CANCEL:
          throw new VfioError(`${this.name} cancelled the migration`, { code: 'EVFIO_PEER_CANCELLED', step: 'load' });
        case FrameType.ERROR:
          throw peerError(decodeError(f.payload, 'ERROR'), false, this.name);
        default:
          throw protocolError(`unexpected ${frameTypeName(type)} frame from the source ${this.name}`);
      }
    }
  }

  /**
   * SWITCHOVER_ACK once every precopy device's initial data is in (again, after a REINIT). A
   * failure to send it (the source gone) is left to the reads, which then say why: a CANCEL or
   * the source's ERROR already on its way, or the end of the connection.
   */
  private async maybeAck(): Promise<void> {
    if (!this.ackFeature || this.ackSent) return;
    if ([...this.precopy].every((i) => this.initial.has(i))) {
      this.ackSent = true;
      await this.link.send(FrameType.SWITCHOVER_ACK, WHOLE_STREAM, encodeAckGeneration(this.reinits)).catch((e) => log('%s: SWITCHOVER_ACK not sent: %s', this.name, (e as Error).message));
    }
  }

  /** The load is complete and every model applied: LOADED. */
  async loaded(devices: Array<{ id: string; bytes: number }>): Promise<void> {
    await this.link.send(FrameType.LOADED, WHOLE_STREAM, encodeLoaded({ devices }));
  }

  /** The devices run: RESUMED. */
  async resumedDevices(): Promise<void> {
    await this.link.send(FrameType.RESUMED, WHOLE_STREAM);
  }

  /**
   * Tell the source, best effort: REFUSE with the reason before ACCEPT; after it CANCEL when the
   * destination was cancelled (kind 'cancelled'; the source sees EVFIO_PEER_CANCELLED), else ERROR
   * with the reason (EVFIO_PEER_FAILED). Sent only while no device here runs. Never throws.
   */
  async abort(reason: unknown): Promise<void> {
    // Cancelled by its VMM (its signal, Ctrl-C): CANCEL, as the source does; else its reason.
    const cancelled = reason instanceof VfioError ? reason.kind === 'cancelled' : (reason as Error)?.name === 'AbortError';
    const type = !this.accepted ? FrameType.REFUSE : cancelled ? FrameType.CANCEL : FrameType.ERROR;
    log('%s: %s (%s)', this.name, frameTypeName(type), (reason as Error)?.message ?? reason);
    await this.link.farewell(type, WHOLE_STREAM, type === FrameType.CANCEL ? undefined : encodeError(reason));
  }

  /** Whether the END frame arrived. */
  get complete(): boolean {
    return this.ended;
  }
}

/** END's payload: the numbers it has (anything else ignored). */
function decodeSummary(b: Buffer): SaveSummary {
  try {
    const o = JSON.parse(b.toString('utf8')) as Record<string, unknown>;
    const num = (v: unknown): number | undefined => (typeof v === 'number' && Number.isFinite(v) && v >= 0 ? v : undefined);
    return { downtimeMs: num(o.downtimeMs), iterations: num(o.iterations), precopyBytes: num(o.precopyBytes), stopCopyBytes: num(o.stopCopyBytes) };
  } catch {
    throw protocolError('END: not JSON');
  }
}

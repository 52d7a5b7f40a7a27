/**
 * An in-memory device-state stream for engine tests: a StateSink whose writes a StateSource
 * replays as they come, in one process, with no transport in between. The sink reads data_fds
 * with the kernel layer's JS loop (drainSession), the source writes them with feedSession.
 */
import type { Binding } from '../../src/kernel/binding/types';
import { drainSession, feedSession } from '../../src/kernel/stream';
import type { DataFdTarget, LoadTargets, SavedDevice, StateSink, StateSource, WriteStateOptions } from '../../src/engine/stream';
import type { DeviceRecord } from '../../src/model/migratable';

type Item =
  | { kind: 'data'; index: number; data: Buffer }
  | { kind: 'initial'; index: number }
  | { kind: 'reinit'; index: number }
  | { kind: 'end-state'; index: number }
  | { kind: 'model'; index: number; body: Buffer }
  | { kind: 'end' }
  | { kind: 'abort'; reason: unknown };

export class MemoryStream {
  private readonly items: Item[] = [];
  private wake?: () => void;
  records?: readonly DeviceRecord[];
  /** What the sink was told, in order (for assertions): 'initial 0', 'end-state 1', 'model 0', ... */
  readonly log: string[] = [];
  /** Set by the source's abort(). */
  destinationAborted?: unknown;
  /** Called by the sink's begin(): throw to refuse (a destination's verdict). */
  verdict?: (records: readonly DeviceRecord[]) => void;
  /**
   * Called with each chunk of device state the sink takes (device index, a copy of the bytes):
   * return the bytes to pass on, or undefined to drop them (a lost update on the way).
   */
  tamper?: (index: number, data: Buffer) => Buffer | undefined;

  private push(i: Item): void {
    this.items.push(i);
    if (i.kind !== 'data') this.log.push(`${i.kind}${'index' in i ? ` ${i.index}` : ''}`);
    this.wake?.();
  }

  private async next(): Promise<Item> {
    while (this.items.length === 0) await new Promise<void>((r) => (this.wake = r));
    return this.items.shift()!;
  }

  readonly sink: StateSink = {
    name: 'memory',
    begin: async (records) => {
      this.verdict?.(records);
      this.records = records;
    },
    writeState: async (index: number, from: DataFdTarget, opts: WriteStateOptions = {}) => {
      const r = await drainSession(from.binding, from.fd, async (c) => {
        opts.signal?.throwIfAborted(); // as a transport stops between chunks
        const data = this.tamper ? this.tamper(index, Buffer.from(c)) : Buffer.from(c);
        if (data) this.push({ kind: 'data', index, data });
      }, {
        precopy: opts.precopy, device: from.device, onProgress: opts.onProgress,
      });
      return { bytes: r.bytes, end: r.end };
    },
    endState: async (index) => this.push({ kind: 'end-state', index }),
    initialSent: async (index) => this.push({ kind: 'initial', index }),
    reinit: async (index) => this.push({ kind: 'reinit', index }),
    writeModel: async (index, body) => this.push({ kind: 'model', index, body: Buffer.from(body) }),
    finish: async () => this.push({ kind: 'end' }),
    abort: async (reason) => this.push({ kind: 'abort', reason }),
  };

  /** The destination's side, once the sink's begin() ran. */
  source(): StateSource {
    const records = this.records!;
    return {
      name: 'memory',
      devices: (): SavedDevice[] => records.map((record, index) => ({ index, record, modelLater: true })),
      abort: async (reason) => {
        this.destinationAborted = reason;
      },
      load: async (targets: LoadTargets) => {
        const out = new Map<number, { model?: Buffer; bytes: number }>(records.map((_, i) => [i, { bytes: 0 }]));
        for (;;) {
          const it = await this.next();
          if (it.kind === 'end') return out;
          if (it.kind === 'abort') throw Object.assign(new Error('the source aborted'), { reason: it.reason });
          if (it.kind === 'data') {
            const t = targets.target(it.index);
            await feedSession(t.binding as Binding, t.fd, [it.data] as unknown as AsyncIterable<Buffer>, { device: t.device });
            const o = out.get(it.index)!;
            o.bytes += it.data.length;
            targets.progress(it.index, o.bytes);
          }
          if (it.kind === 'model') out.get(it.index)!.model = it.body;
        }
      },
    };
  }
}

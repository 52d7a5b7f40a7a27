/**
 * The CLI's two output streams, made harmless: output can never end a job.
 *
 * A closed stdout or stderr (`vfio-pci snapshot … | head -1`, a terminal that went away) makes
 * the next write fail with EPIPE, which Node reports as an 'error' event on the stream; without
 * a listener that event kills the process — in the middle of a snapshot. `Output` listens, marks
 * the stream closed, and drops every later write: the output ends, the work goes on, and the
 * exit status is the job's. (SIGPIPE is ignored by Node, so the write fails instead.)
 */
import type { Writable } from 'node:stream';

/** Streams already guarded, with their state (one listener per stream, however many Outputs). */
const guarded = new WeakMap<NodeJS.WritableStream, { closed: boolean; error?: unknown }>();

function guard(stream: NodeJS.WritableStream): { closed: boolean; error?: unknown } {
  let g = guarded.get(stream);
  if (!g) {
    const state: { closed: boolean; error?: unknown } = { closed: false };
    g = state;
    guarded.set(stream, state);
    // Never removed: an EPIPE can still arrive for a write flushed after the command ended.
    stream.on('error', (e: unknown) => {
      state.closed = true;
      state.error = e;
    });
  }
  return g;
}

export class Output {
  private readonly state: { closed: boolean; error?: unknown };

  constructor(readonly stream: NodeJS.WritableStream) {
    this.state = guard(stream);
  }

  /** True once a write failed or the stream was ended or destroyed: later writes are dropped. */
  get closed(): boolean {
    const s = this.stream as Writable;
    if (!this.state.closed && (s.destroyed || s.writableEnded)) this.state.closed = true;
    return this.state.closed;
  }

  /** A terminal that is still open (a progress bar may be drawn on it). */
  get isTTY(): boolean {
    return (this.stream as NodeJS.WriteStream).isTTY === true && !this.closed;
  }

  /** Terminal columns, when known. */
  get columns(): number | undefined {
    return (this.stream as NodeJS.WriteStream).columns;
  }

  /** Write `text`, or nothing when the stream is closed. Never throws. */
  write(text: string): void {
    if (this.closed) return;
    try {
      this.stream.write(text);
    } catch (e) {
      this.state.closed = true;
      this.state.error = e;
    }
  }
}

/**
 * The CLI's progress display for device-state transfers: a cli-progress bar on stderr, only when
 * stderr is a terminal (piped or redirected output gets no bar frames at all), and only for a
 * transfer still running after one second (short ones print nothing; the command prints the
 * total). A bar starts at the bytes already moved, never at 0 %.
 *
 * Lines printed while a bar is shown go through the bar library's own way of printing above
 * the bar (MultiBar.log: the bar is cleared, the lines written, the bar drawn again below them),
 * so state lines and bar never garble each other on one terminal. `log()` says whether it took
 * the line; when no bar is shown the caller writes it itself.
 */
import { MultiBar, Presets, type SingleBar } from 'cli-progress';
import type { Progress } from '../vm/jobs';
import type { Output } from './output';

/** A transfer shorter than this shows no bar. */
export const SHOW_AFTER_MS = 1000;

export class ProgressDisplay {
  private multi?: MultiBar;
  private bar?: SingleBar;
  private key = '';
  private started = Date.now();
  /** The first report of the current transfer: the rate is measured from it. */
  private base = { at: performance.now(), bytes: 0 };
  private stopped = false;

  /**
   * @param err where the bar is drawn (stderr); nothing is drawn unless it is a terminal
   * @param enabled false for `--quiet`
   */
  constructor(
    private readonly err: Output,
    private readonly enabled = true,
    private readonly showAfterMs = SHOW_AFTER_MS,
  ) {}

  /** True when a bar is on screen. */
  get active(): boolean {
    return this.multi !== undefined;
  }

  /** Report `p`; a new device/phase ends the bar before and starts a new one. */
  update(p: Progress): void {
    if (!this.enabled || this.stopped) return;
    if (!this.err.isTTY) {
      this.end();
      return;
    }
    const key = `${p.phase} ${p.device}`;
    if (key !== this.key) {
      this.end();
      this.key = key;
      this.started = Date.now();
      this.base = { at: performance.now(), bytes: p.bytes };
    }
    const total = p.expected !== undefined && p.expected >= p.bytes ? p.expected : p.bytes;
    if (!this.multi) {
      if (Date.now() - this.started < this.showAfterMs) return;
      this.multi = new MultiBar(
        {
          stream: this.err.stream as NodeJS.WriteStream,
          format: `  ${p.phase} ${p.device} [{bar}] {percentage}% {done}/{all} MiB {rate} MiB/s`,
          hideCursor: true,
          gracefulExit: false, // signals are the CLI's (src/cli/signals.ts), which stops the bar
          noTTYOutput: false,
          etaBuffer: 20,
        },
        Presets.shades_classic,
      );
      this.bar = this.multi.create(total, p.bytes, this.payload(p));
      return;
    }
    this.bar!.setTotal(total);
    this.bar!.update(p.bytes, this.payload(p));
  }

  /** Print `line` above the bar when one is shown; false when none is (the caller prints it). */
  log(line: string): boolean {
    if (!this.multi || this.err.closed) return false;
    this.multi.log(line.endsWith('\n') ? line : line + '\n');
    return true;
  }

  /** Finish the current bar, if one is shown (lines logged above it are flushed first). */
  end(): void {
    const m = this.multi;
    if (!m) return;
    this.multi = undefined;
    this.bar = undefined;
    try {
      m.update(); // flushes the lines logged since the last redraw
      m.stop();
    } catch {
      /* a closed terminal: nothing to finish */
    }
  }

  /** End the bar for good: later updates draw nothing (a cancelled job). */
  stop(): void {
    this.end();
    this.stopped = true;
  }

  private payload(p: Progress): Record<string, string> {
    const mib = (n: number): string => (n / 1048576).toFixed(1);
    const secs = (performance.now() - this.base.at) / 1000;
    const moved = p.bytes - this.base.bytes;
    return { done: mib(p.bytes), all: mib(p.expected ?? p.bytes), rate: secs > 0.05 && moved > 0 ? mib(moved / secs) : '-' };
  }
}

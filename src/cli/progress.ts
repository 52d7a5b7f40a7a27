/**
 * The CLI's progress display for device-state transfers, drawn with cli-progress on stderr.
 * A bar appears only for a transfer still running after one second (short ones print nothing);
 * the total is printed by the command itself.
 */
import { SingleBar, Presets } from 'cli-progress';
import type { Progress } from '../vm/jobs';

const SHOW_AFTER_MS = 1000;

export class ProgressDisplay {
  private bar?: SingleBar;
  private key = '';
  private started = Date.now();

  constructor(
    private readonly stream: NodeJS.WritableStream,
    private readonly enabled = true,
  ) {}

  /** Report `p`; a new device/phase starts a new bar. */
  update(p: Progress): void {
    if (!this.enabled) return;
    const key = `${p.phase} ${p.device}`;
    if (key !== this.key) {
      this.stop();
      this.key = key;
      this.started = Date.now();
    }
    if (!this.bar) {
      if (Date.now() - this.started < SHOW_AFTER_MS) return;
      this.bar = new SingleBar(
        {
          stream: this.stream as NodeJS.WriteStream,
          format: `  ${p.phase} ${p.device} [{bar}] {percentage}% {done}/{all} MiB {rate} MiB/s`,
          hideCursor: true,
          noTTYOutput: true,
          notTTYSchedule: 1000,
          etaBuffer: 20,
        },
        Presets.shades_classic,
      );
      this.bar.start(p.expected ?? p.bytes, 0, this.payload(p));
    }
    if (p.expected === undefined || p.bytes > p.expected) this.bar.setTotal(p.bytes);
    this.bar.update(p.bytes, this.payload(p));
  }

  /** Finish the current bar, if one is shown. */
  stop(): void {
    this.bar?.stop();
    this.bar = undefined;
  }

  private payload(p: Progress): Record<string, string> {
    const mib = (n: number): string => (n / 1048576).toFixed(1);
    const secs = Math.max((Date.now() - this.started) / 1000, 0.001);
    return { done: mib(p.bytes), all: mib(p.expected ?? p.bytes), rate: mib(p.bytes / secs) };
  }
}

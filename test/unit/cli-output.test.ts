// The CLI's output pieces: the progress bar and the state lines on one terminal (checked on an
// emulated screen), no bar off a terminal, signals, and the driver-refused-state explanation.
import { describe, it, expect } from 'vitest';
import { EventEmitter } from 'node:events';
import { Writable } from 'node:stream';
import { CommandContext } from '../../src/cli/command';
import { Output } from '../../src/cli/output';
import { ProgressDisplay } from '../../src/cli/progress';
import { SignalScope } from '../../src/cli/signals';
import { explainRefusedState, exitCodeOf } from '../../src/cli/report';
import { VfioError } from '../../src/base/errors';
import { MigState } from '../../src/kernel/uapi/vfio';

/**
 * A terminal for what cli-progress and readline write: printable text, \r, \n and the CSI
 * sequences they use (cursor up/down/column, erase in line, erase below, cursor visibility).
 */
class Screen extends Writable {
  readonly isTTY = true;
  readonly columns = 120;
  readonly rows = 40;
  lines: string[] = [''];
  raw = '';
  private row = 0;
  private col = 0;

  override _write(chunk: Buffer, _enc: BufferEncoding, done: () => void): void {
    const s = chunk.toString();
    this.raw += s;
    for (let i = 0; i < s.length; i++) {
      const ch = s[i];
      if (ch === '\x1b' && s[i + 1] === '[') {
        const m = /^\x1b\[(\??)(\d*)([A-Za-z])/.exec(s.slice(i));
        if (!m) throw new Error(`unknown escape ${JSON.stringify(s.slice(i, i + 8))}`);
        i += m[0].length - 1;
        const n = m[2] === '' ? undefined : Number(m[2]);
        if (m[1] === '?') continue; // cursor shown/hidden
        switch (m[3]) {
          case 'A': this.row = Math.max(0, this.row - (n ?? 1)); break;
          case 'B': this.row += n ?? 1; break;
          case 'C': this.col += n ?? 1; break;
          case 'D': this.col = Math.max(0, this.col - (n ?? 1)); break;
          case 'G': this.col = (n ?? 1) - 1; break;
          case 'K': this.erase(n ?? 0); break;
          case 'J': this.erase(0); this.lines.length = this.row + 1; break;
          default: throw new Error(`unhandled CSI ${m[0]}`);
        }
        continue;
      }
      if (ch === '\r') this.col = 0;
      else if (ch === '\n') {
        this.row++;
        this.col = 0;
      } else {
        const line = (this.lines[this.row] ?? '').padEnd(this.col);
        this.lines[this.row] = line.slice(0, this.col) + ch + line.slice(this.col + 1);
        this.col++;
      }
      while (this.lines.length <= this.row) this.lines.push('');
    }
    done();
  }

  private erase(mode: number): void {
    const line = this.lines[this.row] ?? '';
    this.lines[this.row] = mode === 2 ? '' : line.slice(0, this.col);
  }

  /** The screen's text, trailing blank lines dropped. */
  text(): string[] {
    const l = this.lines.map((x) => x.trimEnd());
    while (l.length && l[l.length - 1] === '') l.pop();
    return l;
  }
}

const GiB = 1 << 30;
const change = (from: MigState, to: MigState) => ({ device: 'nic0', from, to, arcs: [[from, to]] as Array<[MigState, MigState]> });

describe('progress bar and state lines on one terminal', () => {
  it('lines are printed above the bar, whole; the first frame shows the bytes already moved', async () => {
    const screen = new Screen();
    const out = new Output(screen);
    const ctx0 = new CommandContext('snapshot', out, out, { progressAfterMs: 0 }, new AbortController().signal);
    ctx0.say('snapshot of nic0 → vm.vfiosnap');
    ctx0.onState(change(MigState.RUNNING, MigState.STOP));
    ctx0.onProgress({ device: 'nic0', phase: 'save', bytes: 448 << 20, expected: GiB });
    await new Promise((r) => setTimeout(r, 150)); // the bar's first redraw
    const first = screen.raw;
    expect(first).toMatch(/\[[^\]]+\] 43% 448\.0\/1024\.0 MiB - MiB\/s/);
    expect(first).not.toMatch(/ 0% /);
    for (let mib = 512; mib <= 1024; mib += 128) {
      ctx0.onProgress({ device: 'nic0', phase: 'save', bytes: mib << 20, expected: GiB });
      if (mib === 768) ctx0.onState(change(MigState.STOP, MigState.STOP_COPY)); // a line while the bar is shown
      await new Promise((r) => setTimeout(r, 120)); // the bar's redraw timer runs
    }
    ctx0.endProgress();
    ctx0.onState(change(MigState.STOP_COPY, MigState.STOP));
    ctx0.say('wrote vm.vfiosnap');
    await ctx0.close();
    const text = screen.text();
    expect(text[0]).toBe('snapshot of nic0 → vm.vfiosnap');
    expect(text[1]).toBe('  nic0: RUNNING → STOP  [RUNNING→STOP]');
    expect(text[2]).toBe('  nic0: STOP → STOP_COPY  [STOP→STOP_COPY]');
    expect(text[3]).toMatch(/^ {2}save nic0 \[█+\] 100% 1024\.0\/1024\.0 MiB [\d.]+ MiB\/s$/);
    expect(text[4]).toBe('  nic0: STOP_COPY → STOP  [STOP_COPY→STOP]');
    expect(text[5]).toBe('wrote vm.vfiosnap');
    expect(text).toHaveLength(6);
  });

  it('no bar when stderr is not a terminal; no bar for --quiet', () => {
    let written = '';
    const sink = new Writable({
      write: (c: Buffer, _e, done) => {
        written += c.toString();
        done();
      },
    });
    const d = new ProgressDisplay(new Output(sink), true, 0);
    for (let i = 1; i <= 4; i++) d.update({ device: 'nic0', phase: 'save', bytes: i << 20, expected: 4 << 20 });
    expect(d.active).toBe(false);
    d.end();
    expect(written).toBe('');
    const screen = new Screen();
    const q = new ProgressDisplay(new Output(screen), false, 0);
    q.update({ device: 'nic0', phase: 'save', bytes: 1, expected: 2 });
    q.end();
    expect(screen.raw).toBe('');
  });

  it('a closed stderr stops the bar instead of writing to it', () => {
    const screen = new Screen();
    const out = new Output(screen);
    const d = new ProgressDisplay(out, true, 0);
    d.update({ device: 'nic0', phase: 'load', bytes: 1, expected: 2 });
    expect(d.active).toBe(true);
    screen.destroy();
    d.update({ device: 'nic0', phase: 'load', bytes: 2, expected: 2 });
    expect(d.active).toBe(false);
    expect(out.closed).toBe(true);
    out.write('dropped'); // no throw, nothing written
    expect(screen.raw).not.toContain('dropped');
  });
});

describe('SignalScope', () => {
  it('the first signal aborts the job and sets the exit status; later ones are only reported', () => {
    const src = new EventEmitter();
    const seen: Array<[string, number]> = [];
    const s = new SignalScope((sig, n) => seen.push([sig, n]), src as never).install();
    expect(src.listenerCount('SIGINT') + src.listenerCount('SIGTERM') + src.listenerCount('SIGHUP')).toBe(3);
    expect(s.signal.aborted).toBe(false);
    src.emit('SIGTERM');
    expect(s.signal.aborted).toBe(true);
    expect(s.exitCode).toBe(143);
    src.emit('SIGINT');
    expect(s.exitCode).toBe(143);
    expect(seen).toEqual([['SIGTERM', 1], ['SIGINT', 2]]);
    // After a signal the handlers stay to the end: one more on the way out must not kill the process.
    s.dispose();
    expect(src.listenerCount('SIGINT') + src.listenerCount('SIGTERM') + src.listenerCount('SIGHUP')).toBe(3);
    src.emit('SIGHUP');
    expect(seen).toEqual([['SIGTERM', 1], ['SIGINT', 2], ['SIGHUP', 3]]);
  });

  it('a job that ends without a signal gives the default actions back', () => {
    const src = new EventEmitter();
    const s = new SignalScope(() => undefined, src as never).install();
    s.dispose();
    expect(src.listenerCount('SIGINT') + src.listenerCount('SIGTERM') + src.listenerCount('SIGHUP')).toBe(0);
  });
});

describe('explainRefusedState', () => {
  it('a driver failing the RESUMING exit (EINVAL) is said to refuse the saved state; code and errno kept', () => {
    const e = VfioError.fromErrno(22, { syscall: 'ioctl', op: 'VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE (SET RUNNING)', device: 'nic0' });
    e.annotate({ step: 'set-state RESUMING→RUNNING' });
    const x = explainRefusedState(e) as VfioError;
    expect(x).toBe(e);
    expect(x.message).toMatch(/^the destination driver refused the saved state when the device left RESUMING \(a different device type, firmware or driver version\?\): ioctl/);
    expect(x).toMatchObject({ code: 'EINVAL', errno: 22, syscall: 'ioctl', kind: 'syscall' });
    expect(exitCodeOf(x)).toBe(1);
  });

  it('other failures are left as they are', () => {
    const other = VfioError.fromErrno(22, { syscall: 'ioctl', op: 'X' });
    other.annotate({ step: 'set-state RUNNING→STOP' });
    const before = other.message;
    expect((explainRefusedState(other) as VfioError).message).toBe(before);
    const readSide = VfioError.fromErrno(5, { syscall: 'pread' });
    readSide.annotate({ step: 'load:read' });
    expect((explainRefusedState(readSide) as VfioError).message).toBe('pread failed: EIO');
  });
});

/**
 * One bench case in its own process (bench/run.ts starts one per measurement, pinned to a CPU),
 * so that its peak RSS is its own. Argument: a CaseSpec as JSON. Prints one CaseResult as JSON
 * on the last line of stdout and exits 0 (a case that fails reports ok: false).
 *
 * Every case moves `bytes` bytes of the pattern bench/baseline.c produces:
 *  - save: a `baseline produce` process writes them into a pipe (the device's data_fd of a
 *    STOP_COPY session) and the case copies the pipe into `file`;
 *  - restore: the case copies `file` into a pipe whose reader, `baseline consume`, checks the
 *    count (and with `check`, the bytes): the device taking a RESUMING stream.
 * The clock starts before the device side (producer / consumer) is spawned and stops once the
 * copy is done and the device side has exited.
 *
 * Cases:
 *  - c-save / c-restore: `baseline copy` (plain read/write loop, same buffer size as ours); the
 *    copy process is started before the clock and, for restore, released by a gate byte.
 *  - ours-save / ours-restore: saveSnapshot() / restoreSnapshot() (src/snapshot/jobs.ts) on a
 *    simulated device whose `externalDataFd` hook hands the pipe out as its data_fd: planner,
 *    SET, pump, writer, fsync + rename, all as the product runs them.
 *  - b64-save / b64-restore: the same device and session, the stream read into memory, base64 in
 *    a JSON object, the file written whole; and back.
 */
import * as fs from 'node:fs';
import { promisify } from 'node:util';
import { loadBinding } from '../src/kernel/binding';
import type { Binding } from '../src/kernel/binding/types';
import { SimBinding, simStream } from '../src/sim';
import { openSimDevice } from '../src/sim/provider';
import type { VfioDevice } from '../src/kernel/device';
import { Migration } from '../src/kernel/migration';
import { restoreSnapshot, saveSnapshot } from '../src/vm/jobs';
import { MigState } from '../src/kernel/uapi/vfio';
import { expectSuccess, resetPeakRss, startChild, statusKiB, type Child } from './helper';

export type CaseKind = 'c-save' | 'c-restore' | 'ours-save' | 'ours-restore' | 'b64-save' | 'b64-restore';

export interface CaseSpec {
  kind: CaseKind;
  /** Stream bytes. */
  bytes: number;
  /** Written by a save, read by a restore. */
  file: string;
  /** The compiled bench/baseline.c. */
  exe: string;
  /** Saves: fsync the file (ours: the writer's fsync + directory fsync; C: fsync(2)). */
  sync: boolean;
  /** F_SETPIPE_SZ the device side asks for (0: leave the pipe at the kernel default). */
  pipeSize: number;
  /** Buffer of `baseline copy` (c-save / c-restore). */
  bufferSize: number;
  /** The consumer compares the bytes with the pattern (not only the count). */
  check: boolean;
  /** b64-restore: when `file` does not exist, build it first (untimed) by streaming base64. */
  prepare?: boolean;
  /** ours: SaveOptions/RestoreOptions.bufferSize (default: the product's default). */
  oursBuffer?: number;
}

export interface CaseResult {
  ok: boolean;
  /** "CODE: message" of the failure. */
  error?: string;
  seconds?: number;
  /**
   * CPU time over the same interval of this process (all threads) and of its waited-for children
   * (producer / consumer / copy), from /proc/self/stat: what the case cost the one CPU.
   */
  cpuSeconds?: number;
  /** RSS of the copying process when the clock started (KiB). */
  rssBaseKiB?: number;
  /** Its peak RSS over the case (KiB; VmHWM, reset at the start when the kernel allows). */
  rssPeakKiB?: number;
  /** False when VmHWM could not be reset: the peak may predate the case. */
  peakReset?: boolean;
  note?: string;
}

function describe(e: unknown): string {
  const err = e as { code?: string; name?: string; message?: string };
  const tag = err?.code ?? err?.name;
  return `${tag ? `${tag}: ` : ''}${(err?.message ?? String(e)).split('\n')[0]}`;
}

function now(): number {
  return Number(process.hrtime.bigint()) / 1e9;
}

/** utime + stime + cutime + cstime of /proc/self/stat, in seconds (proc(5): fields 14-17). */
function cpuNow(): number {
  const stat = fs.readFileSync('/proc/self/stat', 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // f[0] is field 3 (state): fields 14..17 are f[11..14].
  return (Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])) / CLOCK_TICKS;
}

/** sysconf(_SC_CLK_TCK): 100 on every Linux architecture Node runs on. */
const CLOCK_TICKS = 100;

// ------------------------------------------------------------------ C baseline

async function cSave(s: CaseSpec, real: Binding): Promise<CaseResult> {
  const [r, w] = real.pipe();
  let copy: Child;
  try {
    copy = startChild(s.exe, ['copy', String(s.bufferSize), '-', s.file, ...(s.sync ? ['--fsync'] : [])], [r, 'ignore', 'pipe']);
    await new Promise((res) => copy.proc.once('spawn', res));
  } finally {
    real.close(r);
  }
  const c0 = cpuNow();
  const t0 = now();
  let producer: Child;
  try {
    producer = startChild(s.exe, produceArgs(s), ['ignore', w, 'inherit']);
  } finally {
    real.close(w);
  }
  const [report] = await Promise.all([expectSuccess(copy, 'baseline copy'), expectSuccess(producer, 'producer')]);
  const t1 = now();
  return cResult(report, s.bytes, t1 - t0, cpuNow() - c0);
}

async function cRestore(s: CaseSpec, real: Binding): Promise<CaseResult> {
  const [r, w] = real.pipe();
  const [gr, gw] = real.pipe();
  let copy: Child;
  try {
    copy = startChild(s.exe, ['copy', String(s.bufferSize), s.file, '-', '--gate', '0'], [gr, w, 'pipe']);
    await new Promise((res) => copy.proc.once('spawn', res));
  } finally {
    real.close(gr);
    real.close(w);
  }
  const c0 = cpuNow();
  const t0 = now();
  let consumer: Child;
  try {
    consumer = startChild(s.exe, consumeArgs(s), [r, 'ignore', 'pipe']);
  } finally {
    real.close(r);
  }
  fs.writeSync(gw, 'g');
  real.close(gw);
  const [report] = await Promise.all([expectSuccess(copy, 'baseline copy'), expectSuccess(consumer, 'consumer')]);
  const t1 = now();
  return cResult(report, s.bytes, t1 - t0, cpuNow() - c0);
}

function cResult(stderr: string, bytes: number, seconds: number, cpuSeconds: number): CaseResult {
  const line = stderr.trim().split('\n').pop() ?? '';
  const rep = JSON.parse(line) as { bytes: number; rssStartKiB: number; hwmKiB: number };
  if (rep.bytes !== bytes) return { ok: false, error: `baseline copy moved ${rep.bytes} bytes, expected ${bytes}` };
  return { ok: true, seconds, cpuSeconds, rssBaseKiB: rep.rssStartKiB, rssPeakKiB: rep.hwmKiB, peakReset: true };
}

function produceArgs(s: CaseSpec): string[] {
  return ['produce', String(s.bytes), '--pipe-size', String(s.pipeSize)];
}

function consumeArgs(s: CaseSpec): string[] {
  return ['consume', String(s.bytes), '--pipe-size', String(s.pipeSize), ...(s.check ? ['--check'] : [])];
}

// ------------------------------------------------------------------ the simulated device with a real data_fd

/**
 * A sim device whose STOP_COPY / RESUMING data_fd is a real pipe with the bench's producer or
 * consumer on the other end (SimDeviceOptions.externalDataFd), opened with openDevice().
 */
function openPipedDevice(s: CaseSpec, real: Binding): { dev: VfioDevice; sides: Child[] } {
  const sides: Child[] = [];
  const overhead = simStream.streamLength(0);
  if (s.bytes < overhead) throw new RangeError(`the bench needs at least ${overhead} bytes (the sim stream's header and trailer)`);
  const sim = new SimBinding(real, {
    defaults: {
      // MIG_DATA_SIZE (48 + size + 272) then equals the bytes the producer writes.
      size: s.bytes - overhead,
      externalDataFd: {
        save: () => {
          const [r, w] = real.pipe();
          try {
            sides.push(startChild(s.exe, produceArgs(s), ['ignore', w, 'inherit']));
          } catch (e) {
            real.close(r);
            throw e;
          } finally {
            real.close(w);
          }
          return r;
        },
        resume: () => {
          const [r, w] = real.pipe();
          try {
            sides.push(startChild(s.exe, consumeArgs(s), [r, 'ignore', 'pipe']));
          } catch (e) {
            real.close(w);
            throw e;
          } finally {
            real.close(r);
          }
          return w;
        },
      },
    },
  });
  return { dev: openSimDevice('sim', sim), sides };
}

async function sidesDone(sides: Child[], what: string): Promise<void> {
  if (sides.length !== 1) throw new Error(`expected one ${what} process, the device started ${sides.length}`);
  await expectSuccess(sides[0], what);
}

interface Clock {
  t0: number;
  c0: number;
  base: number | undefined;
  reset: boolean;
}

function startClock(): Clock {
  const reset = resetPeakRss();
  return { base: statusKiB('VmRSS'), reset, c0: cpuNow(), t0: now() };
}

function stopClock(c: Clock): CaseResult {
  const seconds = now() - c.t0;
  return { ok: true, seconds, cpuSeconds: cpuNow() - c.c0, rssBaseKiB: c.base, rssPeakKiB: statusKiB('VmHWM'), peakReset: c.reset };
}

async function oursSave(s: CaseSpec, real: Binding): Promise<CaseResult> {
  const { dev, sides } = openPipedDevice(s, real);
  try {
    const clock = startClock();
    const r = await saveSnapshot([dev], s.file, { noSync: !s.sync, bufferSize: s.oursBuffer });
    await sidesDone(sides, 'producer');
    const res = stopClock(clock);
    if (r.devices[0].stateBytes !== s.bytes) return { ok: false, error: `saved ${r.devices[0].stateBytes} state bytes, expected ${s.bytes}` };
    return res;
  } finally {
    dev.close();
  }
}

async function oursRestore(s: CaseSpec, real: Binding): Promise<CaseResult> {
  const { dev, sides } = openPipedDevice(s, real);
  try {
    const clock = startClock();
    const r = await restoreSnapshot(dev, s.file, { bufferSize: s.oursBuffer });
    await sidesDone(sides, 'consumer');
    const res = stopClock(clock);
    const got = r.devices[0]?.stateBytes;
    if (got !== s.bytes) return { ok: false, error: `restored ${got} bytes, expected ${s.bytes}` };
    return res;
  } finally {
    dev.close();
  }
}

// ------------------------------------------------------------------ base64 in JSON

const fsWrite = promisify(fs.write);

async function writeWhole(file: string, data: string | Buffer, sync: boolean): Promise<void> {
  const fh = await fs.promises.open(file, 'w');
  try {
    await fh.writeFile(data);
    if (sync) await fh.sync();
  } finally {
    await fh.close();
  }
}

async function b64Save(s: CaseSpec, real: Binding): Promise<CaseResult> {
  const { dev, sides } = openPipedDevice(s, real);
  const mig = Migration.require(dev);
  const clock = startClock();
  try {
    await mig.setState(MigState.STOP);
    const session = await mig.setState(MigState.STOP_COPY);
    if (!session) throw new Error('STOP_COPY opened no data_fd');
    const chunks: Buffer[] = [];
    for await (const c of fs.createReadStream('', { fd: session.fd, autoClose: false, highWaterMark: s.bufferSize })) chunks.push(c as Buffer);
    const state = Buffer.concat(chunks);
    chunks.length = 0;
    const json = JSON.stringify({ state: state.toString('base64') });
    await writeWhole(s.file, json, s.sync);
    await mig.setState(MigState.RUNNING);
    mig.closeSession();
    await sidesDone(sides, 'producer');
    return stopClock(clock);
  } catch (e) {
    return { ...failed(e, clock), note: `after ${(now() - clock.t0).toFixed(1)} s` };
  } finally {
    await mig.recover(MigState.RUNNING);
    dev.close();
    await Promise.allSettled(sides.map((c) => c.done));
  }
}

async function b64Restore(s: CaseSpec, real: Binding): Promise<CaseResult> {
  let note: string | undefined;
  if (!fs.existsSync(s.file)) {
    if (!s.prepare) return { ok: false, error: `${s.file} does not exist` };
    await streamJson(s, real);
    note = 'file built by streaming (untimed): base64 save cannot make it at this size';
  }
  const { dev, sides } = openPipedDevice(s, real);
  const mig = Migration.require(dev);
  const clock = startClock();
  try {
    const text = await fs.promises.readFile(s.file, 'utf8');
    const state = Buffer.from((JSON.parse(text) as { state: string }).state, 'base64');
    const session = await mig.setState(MigState.RESUMING);
    if (!session) throw new Error('RESUMING opened no data_fd');
    let off = 0;
    while (off < state.length) off += (await fsWrite(session.fd, state, off, state.length - off)).bytesWritten;
    await mig.setState(MigState.RUNNING);
    mig.closeSession();
    await sidesDone(sides, 'consumer');
    return { ...stopClock(clock), note };
  } catch (e) {
    return { ...failed(e, clock), note: [note, `after ${(now() - clock.t0).toFixed(1)} s`].filter(Boolean).join('; ') };
  } finally {
    await mig.recover(MigState.RUNNING);
    dev.close();
    await Promise.allSettled(sides.map((c) => c.done));
  }
}

function failed(e: unknown, clock: Clock): CaseResult {
  return { ok: false, error: describe(e), rssBaseKiB: clock.base, rssPeakKiB: statusKiB('VmHWM'), peakReset: clock.reset };
}

/**
 * Write the JSON file base64-save would have written, without ever holding the state or its
 * base64 in one string: `{"state":"` + base64 of the producer's bytes, 3-byte aligned pieces +
 * `"}`. Untimed preparation for attempting base64 restore beyond base64 save's limit.
 */
async function streamJson(s: CaseSpec, real: Binding): Promise<void> {
  const [r, w] = real.pipe();
  let producer: Child;
  try {
    producer = startChild(s.exe, ['produce', String(s.bytes)], ['ignore', w, 'inherit']);
  } finally {
    real.close(w);
  }
  const out = await fs.promises.open(s.file, 'w');
  try {
    await out.write('{"state":"');
    let carry = Buffer.alloc(0);
    for await (const c of fs.createReadStream('', { fd: r, highWaterMark: 3 << 20 })) {
      const data = carry.length ? Buffer.concat([carry, c as Buffer]) : (c as Buffer);
      const whole = data.length - (data.length % 3);
      await out.write(data.toString('base64', 0, whole));
      carry = Buffer.from(data.subarray(whole));
    }
    await out.write(`${carry.toString('base64')}"}`);
  } finally {
    await out.close();
  }
  await expectSuccess(producer, 'producer');
}

// ------------------------------------------------------------------ main

async function main(): Promise<void> {
  const spec = JSON.parse(process.argv[2] ?? '') as CaseSpec;
  const real = loadBinding();
  const run: Record<CaseKind, (s: CaseSpec, b: Binding) => Promise<CaseResult>> = {
    'c-save': cSave,
    'c-restore': cRestore,
    'ours-save': oursSave,
    'ours-restore': oursRestore,
    'b64-save': b64Save,
    'b64-restore': b64Restore,
  };
  let result: CaseResult;
  try {
    result = await run[spec.kind](spec, real);
  } catch (e) {
    result = { ok: false, error: describe(e) };
  }
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

void main();

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
 *
 * Live migration (`transport` tcp or unix), the device sides started before the clock (the
 * device has its state ready; the consumer waits for it), the clock stopping when the
 * destination's consumer has checked the count:
 *  - c-live: `baseline produce` → pipe → `baseline copy BUF - ADDR` (read() → send()) → socket →
 *    `baseline copy BUF listen:ADDR -` (recv() → write()) → pipe → `baseline consume`;
 *  - ours-live: `migrateDevices()` (src/vm/live-jobs.ts) of a sim device without PRE_COPY
 *    (STOP_COPY | P2P) whose STOP_COPY data_fd is the producer's pipe, to a destination process
 *    (ours-live-dest: `receiveDevices()` with `resume`) whose RESUMING data_fd is the consumer's
 *    pipe: handshake, P2P states, the pump framing and checksumming DATA frames on the source
 *    and checking them on the destination, LOADED and RESUMED. The downtime is the stop-copy
 *    transfer itself;
 *  - ours-live-precopy: the same over the sim's own data_fds (no producer or consumer): PRE_COPY
 *    rounds, then the switchover. The sim makes (source) and checks (destination) its stream in
 *    JavaScript, which bounds this case: it shows precopy at size, not the transport's speed.
 *
 * ours cases first run two untimed 1 MiB operations of the same kind in the same process (not
 * with `cold`): the first one's extra time over the second one's is `firstCallMs`, what a
 * fresh process pays once (V8 compiling the library's and the simulator's code on first use);
 * the timed run then measures the steady state, as the C process is started before the clock.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { promisify } from 'node:util';
import { loadBinding } from '../src/kernel/binding';
import { POLLIN, type Binding } from '../src/kernel/binding/types';
import { SimBinding, simStream } from '../src/sim';
import { openSimDevice } from '../src/sim/provider';
import type { VfioDevice } from '../src/kernel/device';
import { Migration } from '../src/kernel/migration';
import { restoreSnapshot, saveSnapshot } from '../src/vm/jobs';
import { MigState, VFIO_MIGRATION_P2P, VFIO_MIGRATION_STOP_COPY } from '../src/kernel/uapi/vfio';
import { migrateDevices, receiveDevices } from '../src/vm/live-jobs';
import { listen } from '../src/live/listener';
import { expectSuccess, resetPeakRss, startChild, statusKiB, WARMUP_BYTES, type Child } from './helper';

export type CaseKind =
  | 'c-save'
  | 'c-restore'
  | 'ours-save'
  | 'ours-restore'
  | 'b64-save'
  | 'b64-restore'
  | 'c-live'
  | 'ours-live'
  | 'ours-live-precopy'
  | 'ours-live-dest';

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
  /** ours: no warm-up before the timed run (the first call in a fresh process is timed). */
  cold?: boolean;
  /** ours-restore: a snapshot of WARMUP_BYTES for the warm-up restores (made by the runner). */
  warmFile?: string;
  /** Live cases: the socket kind (tcp: 127.0.0.1, a port the kernel picks; unix: a path in `sockDir`). */
  transport?: 'tcp' | 'unix';
  sockDir?: string;
  /** ours-live-dest: the migrations to receive, in order (state bytes each), and whether over the sim's own data. */
  runs?: number[];
  simData?: boolean;
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
  /** ours: how much longer the first call in the fresh process took than the second (ms; WARMUP_BYTES each). */
  firstCallMs?: number;
  /** Live: device downtime (ms), bytes moved in precopy and in the switchover, precopy rounds. */
  downtimeMs?: number;
  precopyBytes?: number;
  stopCopyBytes?: number;
  iterations?: number;
  /** Live: state bytes moved (precopy + stop-copy; with the sim's own data, its stream's headers included). */
  streamBytes?: number;
  /** Live: the destination's (ours) or receiving copy's (C) RSS at the start and peak (KiB). */
  peerRssBaseKiB?: number;
  peerRssPeakKiB?: number;
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
  // s.bytes: the stream the producer writes / the consumer expects.
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

/**
 * Run `op` (an operation on WARMUP_BYTES) twice, untimed for the case: the first call's extra
 * time over the second's, in ms (what the fresh process paid once).
 */
async function warmUp(op: () => Promise<CaseResult>): Promise<number> {
  const first = await op();
  if (!first.ok) throw new Error(`warm-up failed: ${first.error}`);
  const second = await op();
  if (!second.ok) throw new Error(`warm-up failed: ${second.error}`);
  return (first.seconds! - second.seconds!) * 1000;
}

async function oursSave(s: CaseSpec, real: Binding): Promise<CaseResult> {
  let firstCallMs: number | undefined;
  if (!s.cold) {
    const warm = `${s.file}.warm`;
    firstCallMs = await warmUp(() => saveOnce({ ...s, bytes: WARMUP_BYTES, check: false, file: warm }, real));
    fs.rmSync(warm, { force: true });
  }
  return { ...(await saveOnce(s, real)), firstCallMs };
}

async function saveOnce(s: CaseSpec, real: Binding): Promise<CaseResult> {
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
  let firstCallMs: number | undefined;
  if (!s.cold) {
    if (!s.warmFile) throw new Error('ours-restore needs warmFile (a snapshot of WARMUP_BYTES) unless cold');
    firstCallMs = await warmUp(() => restoreOnce({ ...s, bytes: WARMUP_BYTES, check: false, file: s.warmFile! }, real));
  }
  return { ...(await restoreOnce(s, real)), firstCallMs };
}

async function restoreOnce(s: CaseSpec, real: Binding): Promise<CaseResult> {
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

// ------------------------------------------------------------------ live migration

/** ours-live: a device without PRE_COPY, so that the whole state moves in the switchover. */
const STOP_COPY_ONLY = VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P;
const MiB = 2 ** 20;

/** ours-live-precopy: the downtime limit (ms) given to the migration. */
export const PRECOPY_DOWNTIME_LIMIT_MS = 10_000;

/** ours-live-precopy: the state left for the switchover (min(64 MiB, half)); the rest is precopy data. */
export function precopyDataBytes(bytes: number): number {
  return bytes - Math.min(64 * MiB, Math.floor(bytes / 16) * 8);
}

/** utime + stime of this process alone (all its threads), seconds: /proc/self/stat fields 14, 15. */
function selfCpuNow(): number {
  const stat = fs.readFileSync('/proc/self/stat', 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / CLOCK_TICKS;
}

/**
 * A device-side process, running once this resolves: a producer writing `bytes` into a pipe
 * (`fd`: its read end; resolves once the first bytes are in the pipe: the device has its state
 * ready) or a consumer reading one (`fd`: its write end; resolves once it runs).
 */
async function startSide(s: CaseSpec, real: Binding, kind: 'produce' | 'consume', bytes: number, check: boolean): Promise<{ fd: number; child: Child }> {
  const [r, w] = real.pipe();
  const mine = kind === 'produce' ? r : w;
  const theirs = kind === 'produce' ? w : r;
  let child: Child;
  try {
    const args = kind === 'produce' ? produceArgs({ ...s, bytes }) : consumeArgs({ ...s, bytes, check });
    child = startChild(s.exe, args, kind === 'produce' ? ['ignore', theirs, 'inherit'] : [theirs, 'ignore', 'pipe']);
  } catch (e) {
    real.close(mine);
    throw e;
  } finally {
    real.close(theirs);
  }
  try {
    await new Promise((res, rej) => {
      child.proc.once('spawn', res);
      child.proc.once('error', rej);
    });
    if (kind === 'produce' && !((await real.poll(mine, POLLIN, 10_000)) & POLLIN)) throw new Error('the producer wrote nothing for 10 s');
  } catch (e) {
    real.close(mine);
    throw e;
  }
  return { fd: mine, child };
}

/**
 * The sim device of one live run. With a `side`, a device without PRE_COPY whose STOP_COPY
 * (source) or RESUMING (destination) data_fd is `side.fd`, handed out once (MIG_DATA_SIZE then
 * equals `bytes`, the producer's stream); without, a device with PRE_COPY over its own data
 * (`bytes` of data, precopyDataBytes of it initial data). `release()` closes the fd if the
 * device never took it.
 */
function liveDevice(real: Binding, bytes: number, side?: { kind: 'save' | 'resume'; fd: number }): { dev: VfioDevice; release(): void } {
  let taken = false;
  const hand = (): number => {
    if (taken) throw new Error('the bench hands out one data_fd per device');
    taken = true;
    return side!.fd;
  };
  const sim = new SimBinding(real, {
    defaults: side
      ? { size: bytes - simStream.streamLength(0), migrationFlags: STOP_COPY_ONLY, externalDataFd: { [side.kind]: hand } }
      : { size: bytes, precopyBytes: precopyDataBytes(bytes) },
  });
  return {
    dev: openSimDevice('sim', sim),
    release: () => {
      if (side && !taken) {
        taken = true;
        real.close(side.fd);
      }
    },
  };
}

function liveUri(s: CaseSpec, name: string): string {
  if (s.transport === 'unix') {
    if (!s.sockDir) throw new Error('a unix transport needs sockDir');
    return `unix:${path.join(s.sockDir, `${name}-${process.pid}.sock`)}`;
  }
  return 'tcp:127.0.0.1:0';
}

/** One JSON object per line from a child's stdout. */
function jsonLines(stream: NodeJS.ReadableStream): () => Promise<Record<string, unknown>> {
  const it = createInterface({ input: stream })[Symbol.asyncIterator]();
  return async () => {
    const r = await it.next();
    if (r.done) throw new Error('the destination process ended early');
    return JSON.parse(r.value as string) as Record<string, unknown>;
  };
}

/**
 * ours-live / ours-live-precopy, the source: starts the destination process (ours-live-dest,
 * pinned like this one), then for each run (two warm-ups of WARMUP_BYTES unless `cold`, then
 * `bytes`) waits for its listener, starts the producer, opens the device, and times
 * migrateDevices() until the destination reports its consumer done.
 */
async function oursLive(s: CaseSpec, real: Binding): Promise<CaseResult> {
  const simData = s.kind === 'ours-live-precopy';
  const runs = s.cold ? [s.bytes] : [WARMUP_BYTES, WARMUP_BYTES, s.bytes];
  const destSpec: CaseSpec = { ...s, kind: 'ours-live-dest', runs, simData };
  const dest = spawn(process.execPath, [__filename, JSON.stringify(destSpec)], { stdio: ['ignore', 'pipe', 'inherit'] });
  const exited = new Promise<number | null>((resolve) => dest.once('close', (code) => resolve(code)));
  const next = jsonLines(dest.stdout!);
  try {
    const results: CaseResult[] = [];
    for (const [i, bytes] of runs.entries()) {
      const r = await liveRun(s, real, next, bytes, simData, i === runs.length - 1 && s.check);
      if (!r.ok) return r;
      results.push(r);
    }
    const last = results[results.length - 1];
    return s.cold ? last : { ...last, firstCallMs: (results[0].seconds! - results[1].seconds!) * 1000 };
  } finally {
    if (dest.exitCode === null) dest.kill();
    await exited;
  }
}

async function liveRun(
  s: CaseSpec, real: Binding, next: () => Promise<Record<string, unknown>>, bytes: number, simData: boolean, check: boolean,
): Promise<CaseResult> {
  const ready = await next();
  if (typeof ready.ready !== 'string') return { ok: false, error: `destination: ${String(ready.error ?? JSON.stringify(ready))}` };
  const producer = simData ? undefined : await startSide(s, real, 'produce', bytes, check);
  const { dev, release } = liveDevice(real, bytes, producer && { kind: 'save', fd: producer.fd });
  try {
    const clock = startClock();
    const cpu0 = selfCpuNow();
    // Stop-copy only: switch over at once, whatever the estimate. Precopy: once the initial data
    // is in (the switchover-ack) and the rest fits PRECOPY_DOWNTIME_LIMIT_MS at the measured rate:
    // the sim's JavaScript data is too slow for the product's default of 300 ms at these sizes.
    const r = await migrateDevices([dev], ready.ready, { downtimeLimitMs: simData ? PRECOPY_DOWNTIME_LIMIT_MS : 3_600_000 });
    const done = await next();
    const res = stopClock(clock);
    const cpuSeconds = selfCpuNow() - cpu0 + Number(done.cpuSeconds ?? 0);
    if (producer) await expectSuccess(producer.child, 'producer');
    if (done.ok !== true) return { ok: false, error: `destination: ${String(done.error)}` };
    if (!simData && (r.stopCopyBytes !== bytes || done.bytes !== bytes)) {
      return { ok: false, error: `moved ${r.stopCopyBytes} stop-copy bytes, the destination loaded ${String(done.bytes)}, expected ${bytes}` };
    }
    if (done.bytes !== r.totalBytes) return { ok: false, error: `sent ${r.totalBytes} bytes, the destination loaded ${String(done.bytes)}` };
    return {
      ...res, cpuSeconds, downtimeMs: r.downtimeMs, precopyBytes: r.precopyBytes, stopCopyBytes: r.stopCopyBytes, iterations: r.iterations,
      streamBytes: r.totalBytes, peerRssBaseKiB: done.rssBaseKiB as number, peerRssPeakKiB: done.rssPeakKiB as number,
    };
  } finally {
    release();
    dev.close();
  }
}

/**
 * ours-live-dest: for each of `runs`, start the consumer, open the device, listen, print
 * {"ready": URI}, receive one migration (receiveDevices with `resume`), wait for the consumer,
 * print {"ok": true, "bytes", "cpuSeconds", "rssBaseKiB", "rssPeakKiB"} (or {"ok": false, "error"}).
 */
async function oursLiveDest(s: CaseSpec, real: Binding): Promise<CaseResult> {
  const say = (o: object): void => void process.stdout.write(`${JSON.stringify(o)}\n`);
  const runs = s.runs ?? [s.bytes];
  for (const [i, bytes] of runs.entries()) {
    const consumer = s.simData ? undefined : await startSide(s, real, 'consume', bytes, i === runs.length - 1 && s.check);
    const { dev, release } = liveDevice(real, bytes, consumer && { kind: 'resume', fd: consumer.fd });
    try {
      const listener = await listen(liveUri(s, `dest-${i}`));
      try {
        const reset = resetPeakRss();
        const base = statusKiB('VmRSS');
        const cpu0 = selfCpuNow();
        say({ ready: listener.uri });
        const r = await receiveDevices([dev], listener, { resume: true });
        if (consumer) await expectSuccess(consumer.child, 'consumer');
        say({ ok: true, bytes: r.devices[0]?.stateBytes, cpuSeconds: selfCpuNow() - cpu0, rssBaseKiB: base, rssPeakKiB: statusKiB('VmHWM'), peakReset: reset });
      } finally {
        await listener.close();
      }
    } catch (e) {
      say({ ok: false, error: describe(e) });
      return { ok: false, error: describe(e) };
    } finally {
      release();
      dev.close();
    }
  }
  return { ok: true };
}

/**
 * c-live: producer → pipe → `baseline copy BUF - ADDR` (read → send) → socket → `baseline copy
 * BUF listen:ADDR -` (recv → write) → pipe → consumer. Everything is started before the clock;
 * the sender waits for a gate byte. CPU s: the two copy processes' own (getrusage).
 */
async function cLive(s: CaseSpec, real: Binding): Promise<CaseResult> {
  const consumer = await startSide(s, real, 'consume', s.bytes, s.check);
  const [rr, rw] = real.pipe();
  let receiver: Child;
  try {
    receiver = startChild(s.exe, ['copy', String(s.bufferSize), `listen:${liveUri(s, 'c-live')}`, '-', '--ready', '3'], ['ignore', consumer.fd, 'pipe', rw]);
  } finally {
    real.close(consumer.fd);
    real.close(rw);
  }
  let uri = '';
  try {
    const buf = Buffer.alloc(256);
    for (;;) {
      const n = fs.readSync(rr, buf, 0, buf.length, null); // untimed: blocks until the receiver listens
      if (n === 0) break;
      uri += buf.toString('utf8', 0, n);
    }
  } finally {
    real.close(rr);
  }
  uri = uri.trim();
  if (!/^(tcp|unix):/.test(uri)) throw new Error(`the receiving copy did not listen: ${(await receiver.done).stderr.trim()}`);
  const producer = await startSide(s, real, 'produce', s.bytes, false);
  const [gr, gw] = real.pipe();
  let sender: Child;
  try {
    sender = startChild(s.exe, ['copy', String(s.bufferSize), '-', uri, '--gate', '3'], [producer.fd, 'ignore', 'pipe', gr]);
    await new Promise((res) => sender.proc.once('spawn', res));
  } finally {
    real.close(producer.fd);
    real.close(gr);
  }
  const t0 = now();
  fs.writeSync(gw, 'g');
  real.close(gw);
  const [sent, received] = await Promise.all([
    expectSuccess(sender, 'sending copy'), expectSuccess(receiver, 'receiving copy'), expectSuccess(consumer.child, 'consumer'), expectSuccess(producer.child, 'producer'),
  ]);
  const seconds = now() - t0;
  const rep = (stderr: string): { bytes: number; rssStartKiB: number; hwmKiB: number; cpuUs: number } => JSON.parse(stderr.trim().split('\n').pop() ?? '');
  const a = rep(sent);
  const b = rep(received);
  if (a.bytes !== s.bytes || b.bytes !== s.bytes) return { ok: false, error: `the copies moved ${a.bytes} and ${b.bytes} bytes, expected ${s.bytes}` };
  return {
    ok: true, seconds, cpuSeconds: (a.cpuUs + b.cpuUs) / 1e6, rssBaseKiB: a.rssStartKiB, rssPeakKiB: a.hwmKiB, peakReset: true,
    peerRssBaseKiB: b.rssStartKiB, peerRssPeakKiB: b.hwmKiB,
  };
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
    'c-live': cLive,
    'ours-live': oursLive,
    'ours-live-precopy': oursLive,
    'ours-live-dest': oursLiveDest,
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

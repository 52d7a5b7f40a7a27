/**
 * `npm run bench`: device-state save and restore throughput (issue 4, item 5), and live
 * migration between two processes over loopback TCP and a UNIX socket (issue 9, item 8), side
 * by side with C loops, on the simulated device with producer / consumer processes on its
 * data_fd. See bench/README.md.
 *
 *   node dist/bench/run.js [--quick] [--sizes 64M,256M,1G,4G] [--reps 3] [--buffer BYTES]
 *                          [--pipe-size 1048576] [--cpus one,two] [--cpu 0 | --no-pin]
 *                          [--tmpdir DIR] [--no-nosync] [--cold]
 *                          [--no-live | --live-only] [--transports tcp,unix] [--precopy-max 1G]
 *
 * Each measurement runs in a fresh process (./case.ts), pinned to one CPU with taskset, and
 * again with two CPUs (where ours overlaps reading and checksumming with writing); a table for
 * each, with the median of --reps runs. Nothing is asserted: the targets are reported.
 */
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DEFAULT_BUFFER_SIZE } from '../src/kernel/stream';
import { SnapshotReader } from '../src/snapshot/reader';
import { buildBaseline, parseBytes, sizeName, WARMUP_BYTES } from './helper';
import type { CaseKind, CaseResult, CaseSpec } from './case';

const MiB = 2 ** 20;
const GiB = 2 ** 30;
/** Base64 of more than this many bytes is longer than V8's string limit (2^29 - 24 characters). */
const BASE64_LIMIT = Math.floor(((2 ** 29 - 24) / 4) * 3);

interface Args {
  sizes: number[];
  /** Passed to ours as bufferSize (and used by the C save loop); undefined: the product default. */
  buffer: number | undefined;
  reps: number;
  pipeSize: number;
  cpu: number | undefined;
  /** The CPU configurations to run: pinned to one CPU, and/or two CPUs. */
  cpus: Array<'one' | 'two'>;
  tmpdir: string;
  nosync: boolean;
  /** ours cases without their warm-up: the first call in a fresh process is timed. */
  cold: boolean;
  /** Save/restore cases, live cases. */
  saveRestore: boolean;
  live: boolean;
  transports: Array<'tcp' | 'unix'>;
  /** The precopy live case (the sim's own data, made in JavaScript) runs at sizes up to this. */
  precopyMax: number;
}

function usage(msg?: string): never {
  if (msg) console.error(`bench: ${msg}`);
  (msg ? console.error : console.log)(
    'usage: npm run bench -- [--quick] [--sizes 64M,256M,1G,4G] [--reps N] [--buffer BYTES] [--pipe-size BYTES] [--cpus one,two] [--cpu N | --no-pin] ' +
      '[--tmpdir DIR] [--no-nosync] [--cold] [--no-live | --live-only] [--transports tcp,unix] [--precopy-max SIZE]\n' +
      '(bench/README.md says what each case and column is)',
  );
  process.exit(msg ? 2 : 0);
}

function parseArgs(argv: string[]): Args {
  const a: Args = {
    sizes: [64 * MiB, 256 * MiB, GiB, 4 * GiB], buffer: undefined, reps: 3, pipeSize: MiB, cpu: 0, cpus: ['one', 'two'], tmpdir: os.tmpdir(), nosync: true,
    cold: false, saveRestore: true, live: true, transports: ['tcp', 'unix'], precopyMax: GiB,
  };
  for (let i = 0; i < argv.length; i++) {
    const next = (): string => argv[++i] ?? usage(`${argv[i - 1]} needs a value`);
    switch (argv[i]) {
      case '--quick':
        a.sizes = [64 * MiB];
        break;
      case '--sizes':
        a.sizes = next().split(',').map((t) => parseBytes(t) ?? usage(`bad size ${t}`));
        break;
      case '--buffer':
        a.buffer = parseBytes(next()) ?? usage('bad --buffer');
        break;
      case '--reps':
        a.reps = Number(next());
        if (!Number.isInteger(a.reps) || a.reps < 1) usage('--reps must be a positive integer');
        break;
      case '--pipe-size':
        a.pipeSize = parseBytes(next()) ?? 0;
        break;
      case '--cpu':
        a.cpu = Number(next());
        break;
      case '--no-pin':
        a.cpu = undefined;
        break;
      case '--cpus':
        a.cpus = next().split(',').map((c) => (c === 'one' || c === 'two' ? c : usage(`--cpus takes one, two or one,two (not ${c})`)));
        break;
      case '--tmpdir':
        a.tmpdir = next();
        break;
      case '--no-nosync':
        a.nosync = false;
        break;
      case '--cold':
        a.cold = true;
        break;
      case '--no-live':
        a.live = false;
        break;
      case '--live-only':
        a.saveRestore = false;
        break;
      case '--transports':
        a.transports = next().split(',').map((t) => (t === 'tcp' || t === 'unix' ? t : usage(`--transports takes tcp, unix or tcp,unix (not ${t})`)));
        break;
      case '--precopy-max':
        a.precopyMax = parseBytes(next()) ?? usage('bad --precopy-max');
        break;
      case '--help':
      case '-h':
        usage();
      // falls through (usage() exits)
      default:
        usage(`unknown argument ${argv[i]}`);
    }
  }
  return a;
}

// ------------------------------------------------------------------ running cases

const CASE_SCRIPT = path.join(__dirname, 'case.js');

/** Run one case in a fresh (pinned) node process; its CaseResult. */
function runCase(spec: CaseSpec, pin: string[]): Promise<CaseResult> {
  return new Promise((resolve) => {
    const cmd = [...pin, process.execPath, CASE_SCRIPT, JSON.stringify(spec)];
    const p = spawn(cmd[0], cmd.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, DEBUG: '' } });
    let out = '';
    let err = '';
    p.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    p.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    p.once('close', (code, signal) => {
      const line = out.trim().split('\n').pop() ?? '';
      try {
        resolve(JSON.parse(line) as CaseResult);
      } catch {
        resolve({ ok: false, error: `case process ${signal ?? `exit ${code}`}: ${(err.trim() || out.trim()).split('\n').slice(-3).join(' | ')}` });
      }
    });
  });
}

// ------------------------------------------------------------------ results

type RowKey =
  | 'c-save'
  | 'ours-save'
  | 'b64-save'
  | 'c-save-nosync'
  | 'ours-save-nosync'
  | 'b64-save-nosync'
  | 'c-restore'
  | 'ours-restore'
  | 'b64-restore';

const ROWS: Array<{ key: RowKey; label: string; baseline: RowKey; nosync?: boolean }> = [
  { key: 'c-save', label: 'C save', baseline: 'c-save' },
  { key: 'ours-save', label: 'ours save', baseline: 'c-save' },
  { key: 'b64-save', label: 'base64 save', baseline: 'c-save' },
  { key: 'c-save-nosync', label: 'C save, no fsync', baseline: 'c-save-nosync', nosync: true },
  { key: 'ours-save-nosync', label: 'ours save, noSync', baseline: 'c-save-nosync', nosync: true },
  { key: 'b64-save-nosync', label: 'base64 save, no fsync', baseline: 'c-save-nosync', nosync: true },
  { key: 'c-restore', label: 'C restore', baseline: 'c-restore' },
  { key: 'ours-restore', label: 'ours restore', baseline: 'c-restore' },
  { key: 'b64-restore', label: 'base64 restore', baseline: 'c-restore' },
];

/** One successful run of a cell. */
interface Sample extends CaseResult {
  /** The round it was measured in (C and ours of one round ran back to back). */
  round: number;
  seconds: number;
}

class Cell {
  samples: Sample[] = [];
  error?: string;
  note?: string;
  notRun?: string;

  /** @param bytes the state bytes of every run (a live case with the sim's own data reports its own stream bytes) */
  constructor(readonly bytes: number) {}

  /** Bytes per second of one sample. */
  rate(s: Sample): number {
    return (s.streamBytes ?? this.bytes) / s.seconds;
  }

  add(r: CaseResult, round: number): void {
    if (r.ok && r.seconds !== undefined) this.samples.push({ ...r, round, seconds: r.seconds });
    else this.error ??= `${r.error ?? 'failed'}${r.rssPeakKiB ? ` (peak RSS ${mib(r.rssPeakKiB * 1024)} MiB)` : ''}`;
    if (r.note) this.note = r.note;
  }

  get failed(): boolean {
    return this.error !== undefined;
  }

  /** MiB/s of the samples. */
  mibps(): { median: number; min: number; max: number } | undefined {
    if (!this.samples.length) return undefined;
    const rates = this.samples.map((s) => this.rate(s) / MiB);
    return { median: median(rates), min: Math.min(...rates), max: Math.max(...rates) };
  }

  /**
   * Median over the rounds of (this rate / `base`'s rate in the same round): C and ours of a
   * round ran back to back, so load that comes and goes hits both.
   */
  pairedRatio(base: Cell, by: 'time' | 'cpu' = 'time'): number | undefined {
    const ratios: number[] = [];
    for (const s of this.samples) {
      const b = base.samples.find((x) => x.round === s.round);
      if (!b) continue;
      // Rates, not times: a live case with the sim's own data moves a few more bytes (its stream's headers).
      if (by === 'time') ratios.push(this.rate(s) / base.rate(b));
      else if (s.cpuSeconds && b.cpuSeconds) ratios.push(b.cpuSeconds / s.cpuSeconds);
    }
    return ratios.length ? median(ratios) : undefined;
  }

  /**
   * Fastest run over the baseline's fastest run (rates). Other load on the machine only ever
   * slows a run down, so the best of each is the nearest to what the copy itself costs.
   */
  bestRatio(base: Cell): number | undefined {
    if (!this.samples.length || !base.samples.length) return undefined;
    const best = (c: Cell): number => Math.max(...c.samples.map((s) => c.rate(s)));
    return best(this) / best(base);
  }

  /** Median CPU seconds of the case's processes. */
  cpu(): number | undefined {
    const c = this.samples.map((s) => s.cpuSeconds).filter((x): x is number => x !== undefined);
    return c.length ? median(c) : undefined;
  }

  /** Largest peak-above-base over the samples, KiB: of the case process (live: the source / sending copy), or of the live destination / receiving copy. */
  rssAbove(which: 'self' | 'peer' = 'self'): { above: number; base: number } | undefined {
    const pick = (s: Sample): [number | undefined, number | undefined] => (which === 'self' ? [s.rssBaseKiB, s.rssPeakKiB] : [s.peerRssBaseKiB, s.peerRssPeakKiB]);
    const withRss = this.samples.map(pick).filter((p): p is [number, number] => p[0] !== undefined && p[1] !== undefined);
    if (!withRss.length) return undefined;
    const worst = withRss.reduce((a, b) => (b[1] - b[0] > a[1] - a[0] ? b : a));
    return { above: worst[1] - worst[0], base: worst[0] };
  }

  /** Median (min, max) of a numeric field over the samples. */
  stat(field: 'downtimeMs' | 'firstCallMs' | 'stopCopyBytes' | 'precopyBytes' | 'iterations'): { median: number; min: number; max: number } | undefined {
    const xs = this.samples.map((s) => s[field]).filter((x): x is number => typeof x === 'number');
    return xs.length ? { median: median(xs), min: Math.min(...xs), max: Math.max(...xs) } : undefined;
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

function mib(bytes: number, digits = 0): string {
  return (bytes / MiB).toFixed(digits);
}

// ------------------------------------------------------------------ environment

function fsTypeName(type: number): string {
  const names: Record<number, string> = { 0xef53: 'ext4', 0x01021994: 'tmpfs', 0x58465342: 'xfs', 0x9123683e: 'btrfs', 0x794c7630: 'overlayfs', 0x6969: 'nfs', 0x65735546: 'fuse' };
  return names[type] ?? `0x${type.toString(16)}`;
}

/**
 * How the case processes run: `one` pins them to CPU `cpu` (taskset -c N), `two` gives them
 * CPUs 0 and 1 (taskset -c 0,1, or no pinning on a machine of two CPUs). `cpu` undefined
 * (--no-pin): no pinning at all.
 */
function pinning(cpus: 'one' | 'two', cpu: number | undefined): { prefix: string[]; text: string; title: string } {
  if (cpu === undefined) return { prefix: [], text: 'not pinned (--no-pin)', title: 'not pinned' };
  const list = cpus === 'one' ? String(cpu) : '0,1';
  const probe = spawnSync('taskset', ['-c', list, 'true']);
  if (probe.error || probe.status !== 0) {
    return { prefix: [], text: `NOT pinned: taskset -c ${list} unavailable (${probe.error?.message ?? probe.stderr.toString().trim()})`, title: 'not pinned' };
  }
  const title = cpus === 'one' ? `one CPU (taskset -c ${list})` : `two CPUs (taskset -c ${list})`;
  return { prefix: ['taskset', '-c', list], text: `${title}: every case process and its producer/consumer/copy children`, title };
}

/**
 * The checksum the pump uses, measured on one CPU: the addon's implementation (the fastest this
 * CPU has) over 1 MiB in cache, in MiB/s, in a fresh pinned process. Also the implementations
 * of the addon and the JavaScript fallback.
 */
function checksumRate(pin: string[]): { rate: number; impl: string; js: number } | undefined {
  const pumpPath = JSON.stringify(path.resolve(__dirname, '../src/kernel/pump'));
  const code = `const p=require(${pumpPath});const buf=require('crypto').randomBytes(1<<20);
const time=(f,n)=>{for(let i=0;i<20;i++)f();const t=process.hrtime.bigint();for(let i=0;i<n;i++)f();return n/(Number(process.hrtime.bigint()-t)/1e9)};
const rate=time(()=>p.checksum('crc32c',buf),4000);const js=time(()=>p.jsChecksum.crc32c(buf),100);
console.log(rate+' '+js+' '+p.checksumImplementation('crc32c'))`;
  const cmd = [...pin, process.execPath, '-e', code];
  const rates: number[] = [];
  const jsRates: number[] = [];
  let impl = '?';
  for (let i = 0; i < 3; i++) {
    const r = spawnSync(cmd[0], cmd.slice(1), { encoding: 'utf8' });
    if (r.status === 0) {
      const [rate, js, name] = r.stdout.trim().split(' ');
      rates.push(Number(rate));
      jsRates.push(Number(js));
      impl = name;
    }
  }
  return rates.length ? { rate: median(rates), impl, js: median(jsRates) } : undefined;
}

function loadAverage(): string {
  return os.loadavg().map((x) => x.toFixed(2)).join(' ');
}

/** Which path saveSnapshot/restoreSnapshot take, read from the built module that streams a snapshot's state (jobs → engine → file-stream). */
function oursPath(): string {
  try {
    const src = fs.readFileSync(require.resolve('../src/snapshot/file-stream'), 'utf8');
    return src.includes('saveStateSection') && src.includes('loadStateSection')
      ? 'the data pump (src/snapshot/state-io.ts over src/kernel/pump: native, a dedicated thread per call, CRC-32C per chunk; two buffers, reading while writing, when the process may use 2 CPUs)'
      : 'JS loop (drainSession/feedSession through binding.read/write + writer.writeChunk, checksums in JS): src/snapshot/file-stream.ts does not use state-io.ts in this build';
  } catch (e) {
    return `unknown (${(e as Error).message})`;
  }
}

/** Payload length of the first chunk of the DEVICE_STATE section of a snapshot file. */
async function firstChunkLength(file: string): Promise<number> {
  const r = await SnapshotReader.open(file);
  try {
    const st = r.devices()[0]?.state;
    if (!st) throw new Error(`${file} has no DEVICE_STATE section`);
    const b = Buffer.alloc(4);
    const fd = fs.openSync(file, 'r');
    try {
      fs.readSync(fd, b, 0, 4, st.bodyAt);
    } finally {
      fs.closeSync(fd);
    }
    return b.readUInt32LE(0);
  } finally {
    await r.close();
  }
}

// ------------------------------------------------------------------ live migration

interface LiveRow {
  key: string;
  label: string;
  kind: CaseKind;
  transport: 'tcp' | 'unix';
  /** The C row it is compared with. */
  baseline: string;
}

/** The live rows: per transport a C copy pair and ours (stop-copy, external data); then ours with precopy over the sim's own data. */
function liveRows(args: Args, bytes: number): LiveRow[] {
  const rows: LiveRow[] = [];
  for (const t of args.transports) {
    rows.push({ key: `c-live-${t}`, label: `C, ${t} (read>send, recv>write)`, kind: 'c-live', transport: t, baseline: `c-live-${t}` });
    rows.push({ key: `ours-live-${t}`, label: `ours, ${t}, stop-copy`, kind: 'ours-live', transport: t, baseline: `c-live-${t}` });
  }
  if (bytes <= args.precopyMax) {
    const t = args.transports.includes('unix') ? 'unix' : args.transports[0];
    rows.push({ key: 'ours-live-precopy', label: `ours, ${t}, precopy, sim data`, kind: 'ours-live-precopy', transport: t, baseline: `c-live-${t}` });
  }
  return rows;
}

/** Every size, every live case, in one CPU configuration; then its table. */
async function runLive(args: Args, exe: string, dir: string, pin: { prefix: string[]; title: string }, crc: number | undefined): Promise<void> {
  const results = new Map<number, { rows: LiveRow[]; cells: Map<string, Cell> }>();
  const bufferSize = args.buffer ?? DEFAULT_BUFFER_SIZE;
  let checked = false;
  for (const bytes of args.sizes) {
    const name = sizeName(bytes);
    const rows = liveRows(args, bytes);
    const cells = new Map(rows.map((r) => [r.key, new Cell(bytes)]));
    results.set(bytes, { rows, cells });
    console.log(`[${name}] live migration (load average ${loadAverage()})`);
    const reps = checked ? args.reps : args.reps + 1;
    for (let rep = 0; rep < reps; rep++) {
      // The first round of the run is a warm-up whose consumers also check every byte: not recorded.
      const check = !checked && rep === 0;
      const run = async (row: LiveRow): Promise<void> => {
        const spec: CaseSpec = {
          kind: row.kind, bytes, file: '', exe, sync: false, pipeSize: args.pipeSize, bufferSize, check, oursBuffer: args.buffer, cold: args.cold,
          transport: row.transport, sockDir: dir,
        };
        const r = await runCase(spec, pin.prefix);
        if (!check || !r.ok) cells.get(row.key)!.add(r, rep);
        const extra = r.ok && r.downtimeMs !== undefined ? `, downtime ${r.downtimeMs.toFixed(1)} ms` : '';
        process.stdout.write(`  ${row.key}${check ? ' (check)' : ''}: ${r.ok ? `${((r.streamBytes ?? bytes) / MiB / r.seconds!).toFixed(0)} MiB/s${extra}` : `FAILED ${r.error}`}\n`);
      };
      for (const t of args.transports) {
        const c = rows.find((r) => r.key === `c-live-${t}`)!;
        const o = rows.find((r) => r.key === `ours-live-${t}`)!;
        // C and ours alternate which goes first.
        for (const row of rep % 2 === 0 ? [c, o] : [o, c]) await run(row);
      }
      const pre = rows.find((r) => r.kind === 'ours-live-precopy');
      if (pre) await run(pre);
    }
    checked = true;
  }
  console.log(`\n${pin.title}, live migration (load average at the end ${loadAverage()}):`);
  printLiveTable(results, crc);
}

function printLiveTable(results: Map<number, { rows: LiveRow[]; cells: Map<string, Cell> }>, crc: number | undefined): void {
  const lines: string[][] = [[
    'size', 'case', 'MiB/s median (min-max)', 'x C', 'x C best', 'CPU s', 'x C by CPU', 'downtime ms (min-max)', 'stop-copy / precopy MiB', 'peak RSS - base src / dst (MiB)', '1st call', 'targets',
  ]];
  const notes: string[] = [];
  const f = (x: number | undefined, d = 2): string => (x === undefined ? '' : x.toFixed(d));
  for (const [bytes, { rows, cells }] of results) {
    const name = sizeName(bytes);
    for (const [i, row] of rows.entries()) {
      const cell = cells.get(row.key)!;
      const base = cells.get(row.baseline)!;
      const r = cell.mibps();
      const speed = cell.failed ? `fails: ${cell.error!.split(':')[0]} (see notes)` : r ? `${r.median.toFixed(0)} (${r.min.toFixed(0)}-${r.max.toFixed(0)})` : '-';
      if (cell.failed) notes.push(`${name} ${row.label} fails: ${cell.error}`);
      const dt = cell.stat('downtimeMs');
      const sc = cell.stat('stopCopyBytes');
      const pc = cell.stat('precopyBytes');
      const rss = (w: 'self' | 'peer'): string => {
        const x = cell.rssAbove(w);
        return x ? `${x.above >= 0 ? '+' : ''}${(x.above / 1024).toFixed(1)}` : '?';
      };
      const first = cell.stat('firstCallMs');
      lines.push([
        i === 0 ? name : '', row.label, speed, row.kind === 'c-live' ? f(1) : f(cell.pairedRatio(base)), row.kind === 'c-live' ? f(1) : f(cell.bestRatio(base)),
        f(cell.cpu()), row.kind === 'c-live' ? f(1) : f(cell.pairedRatio(base, 'cpu')),
        dt ? `${dt.median.toFixed(1)} (${dt.min.toFixed(1)}-${dt.max.toFixed(1)})` : '',
        sc ? `${mib(sc.median, 1)} / ${mib(pc?.median ?? 0, 1)}` : '',
        cell.samples.length ? `${rss('self')} / ${rss('peer')}` : '',
        first ? `+${first.median.toFixed(1)} ms` : '',
        liveTargets(row, bytes, cell, base, crc),
      ]);
    }
    lines.push([]);
  }
  const widths = lines[0].map((_, i) => Math.max(...lines.map((l) => (l[i] ?? '').length)));
  console.log('');
  for (const l of lines) console.log(l.length ? l.map((c, i) => (i === l.length - 1 ? c : c.padEnd(widths[i]))).join('  ').trimEnd() : '');
  notes.push('C rows: CPU s = the two copy processes\' own (getrusage); ours: the source and destination processes\' own (all threads). Producer and consumer are not counted in either.');
  notes.push('downtime bound = stop-copy bytes / the C loop\'s median rate on the same socket kind + 10 ms (issue 9); the precopy row\'s data is made and checked by the simulator in JavaScript: not a transport figure.');
  for (const n of notes) console.log(`note: ${n}`);
}

/** Issue 9's targets for one live row (reported, not asserted). */
function liveTargets(row: LiveRow, bytes: number, cell: Cell, base: Cell, crc: number | undefined): string {
  if (row.kind === 'c-live') return '';
  if (cell.failed) return 'FAIL (ours failed)';
  const out: string[] = [];
  const verdict = (ok: boolean): string => (ok ? 'PASS' : 'FAIL');
  const x = cell.pairedRatio(base);
  if (row.kind === 'ours-live' && x !== undefined) out.push(`>=0.95x C ${verdict(x >= 0.95)}`);
  const dt = cell.stat('downtimeMs');
  const sc = cell.stat('stopCopyBytes');
  const cRate = base.mibps();
  if (dt && sc && cRate) {
    const bound = (sc.median / (cRate.median * MiB)) * 1000 + 10;
    out.push(`downtime <= ${bound.toFixed(1)} ms ${row.kind === 'ours-live' ? verdict(dt.median <= bound) : `${verdict(dt.median <= bound)} (sim data)`}`);
  }
  const worst = Math.max(cell.rssAbove('self')?.above ?? 0, cell.rssAbove('peer')?.above ?? 0);
  if (cell.samples.length) out.push(`RSS<=+64MiB ${verdict(worst <= 64 * 1024)}${bytes >= 4 * GiB ? '' : ' (target at 4GiB)'}`);
  // Two checksum passes over every byte (the source's, the destination's check) that the C loops do not make.
  if (row.kind === 'ours-live' && crc && cRate) out.push(`checksum ceiling (1 CPU) ${(1 / (1 + (2 * cRate.median) / crc)).toFixed(2)}x`);
  if (row.kind === 'ours-live-precopy') {
    const it = cell.stat('iterations');
    if (it) out.push(`${it.median} precopy rounds`);
  }
  return out.join('; ');
}

// ------------------------------------------------------------------ main

/** sync(1): write back every dirty page and wait for it (untimed, between cases). */
function syncDisks(): void {
  spawnSync('sync', [], { stdio: 'ignore' });
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const started = Date.now();
  const exe = buildBaseline();
  fs.mkdirSync(args.tmpdir, { recursive: true });
  const dir = fs.mkdtempSync(path.join(args.tmpdir, 'vfio-bench-'));
  const cleanup = (): void => fs.rmSync(dir, { recursive: true, force: true });
  process.once('SIGINT', () => {
    cleanup();
    process.exit(130);
  });
  process.once('exit', cleanup);

  const st = fs.statfsSync(dir);
  let pipeMax = '?';
  try {
    pipeMax = fs.readFileSync('/proc/sys/fs/pipe-max-size', 'utf8').trim();
  } catch {
    /* not Linux */
  }
  console.log('node-vfio-pci bench: device-state save/restore and live migration on the simulated device, data_fd = a real pipe fed by a producer / drained by a consumer process');
  console.log(`  node ${process.version}, ${os.cpus()[0]?.model ?? 'cpu?'} x${os.cpus().length}, ${mib(os.totalmem())} MiB RAM (${mib(os.freemem())} MiB free)`);
  console.log(`  CPU configurations: ${args.cpus.map((c) => pinning(c, args.cpu).text).join('; ')}`);
  console.log(`  ours: saveSnapshot()/restoreSnapshot() on openDevice('sim') with externalDataFd; stream via ${oursPath()}`);
  if (args.live) {
    console.log(
      `  live: migrateDevices() → receiveDevices() between two processes over ${args.transports.join(' and ')} (loopback TCP 127.0.0.1 / a UNIX socket in the temp dir), ` +
        'a sim device without PRE_COPY whose data_fds are the producer\'s / consumer\'s pipes (the whole state moves in the switchover: downtime = stop-copy transfer); ' +
        'C: baseline copy read()→send() and recv()→write() between the same producer and consumer; producer and consumer started before the clock',
    );
    console.log(`  live, precopy: a sim device with PRE_COPY over its own data_fds (data made and checked in JavaScript), up to ${sizeName(args.precopyMax)}`);
  }
  console.log(
    args.cold
      ? '  --cold: ours cases time the first call in their fresh process'
      : `  ours cases run two untimed ${sizeName(WARMUP_BYTES)} operations of their kind first; "1st call +ms" = the first one's extra time over the second's (once per fresh process)`,
  );
  console.log(`  files in ${dir} (${fsTypeName(st.type)}, ${mib(st.bavail * st.bsize)} MiB available); restores read files just written (page cache warm for every case)`);
  console.log(`  pipe: F_SETPIPE_SZ ${args.pipeSize || 'none (kernel default 64 KiB)'} by the producer/consumer (pipe-max-size ${pipeMax}); C helper ${exe}`);
  const crcInfo = checksumRate(pinning('one', args.cpu).prefix);
  const crc = crcInfo?.rate;
  console.log(
    `  checksum: CRC-32C, ${crcInfo?.impl ?? '?'} (what the pump uses, with only npm install): ${crc ? `${crc.toFixed(0)} MiB/s on one CPU (1 MiB in cache)` : 'unavailable'}` +
      (crcInfo ? `; the JS fallback (crc-32 package): ${crcInfo.js.toFixed(0)} MiB/s` : ''),
  );
  console.log(`  median of ${args.reps} runs per cell; x C = median over the rounds of (ours MiB/s / C MiB/s of the same round, run back to back);`);
  console.log('  x C best = fastest ours / fastest C (other load only slows a run: the best of each is nearest to its own cost);');
  console.log('  CPU s = CPU seconds of all the case\'s processes (median); x C by CPU = the same ratio by CPU seconds (robust to other load, blind to I/O waits);');
  console.log('  RSS = peak (VmHWM, reset at the start) minus VmRSS at the start, worst run; for C it is the copy process\'s own');
  console.log(`  load average at start: ${loadAverage()} (${os.cpus().length} CPUs; other work on the pinned CPU slows every case)`);
  console.log('');
  // The snapshot the ours restores warm up on (untimed, made once).
  const warmFile = path.join(dir, `warm-${sizeName(WARMUP_BYTES)}.snap`);
  if (args.saveRestore && !args.cold) {
    const r = await runCase({ kind: 'ours-save', bytes: WARMUP_BYTES, file: warmFile, exe, sync: false, pipeSize: args.pipeSize, bufferSize: MiB, check: false, cold: true }, []);
    if (!r.ok) throw new Error(`making ${warmFile} failed: ${r.error}`);
  }
  for (const cpus of args.cpus) {
    const pin = pinning(cpus, args.cpu);
    console.log(`=== ${pin.title} (load average ${loadAverage()})`);
    if (args.saveRestore) await runAll(args, exe, dir, pin, crc, warmFile);
    if (args.live) await runLive(args, exe, dir, pin, crc);
  }
  console.log(`\nload average at end: ${loadAverage()}; total time ${((Date.now() - started) / 1000).toFixed(0)} s`);
}

/** Every size, every case, in one CPU configuration; then its table. */
async function runAll(args: Args, exe: string, dir: string, pin: { prefix: string[]; title: string }, crc: number | undefined, warmFile: string): Promise<void> {
  const saveBuffer = args.buffer ?? DEFAULT_BUFFER_SIZE;
  const results = new Map<number, Map<RowKey, Cell>>();
  const skipped: string[] = [];
  const restoreBuffers = new Map<number, number>();
  let checked = false;

  for (const bytes of args.sizes) {
    const name = sizeName(bytes);
    // Disk: C file + ours file + one more (no-fsync output, or the JSON at 4/3 the size), and slack.
    const needDisk = bytes * 3.4 + GiB;
    const freeDisk = fs.statfsSync(dir).bavail * fs.statfsSync(dir).bsize;
    if (freeDisk < needDisk) {
      skipped.push(`${name}: skipped, needs ~${mib(needDisk)} MiB free disk in ${dir}, ${mib(freeDisk)} MiB available`);
      console.log(`[${name}] ${skipped[skipped.length - 1]}`);
      continue;
    }
    // Memory: the restores read from the page cache; ours and C need little memory themselves.
    if (os.freemem() < bytes * 1.2 + 512 * MiB) {
      skipped.push(`${name}: skipped, needs ~${mib(bytes * 1.2 + 512 * MiB)} MiB free memory, ${mib(os.freemem())} MiB free`);
      console.log(`[${name}] ${skipped[skipped.length - 1]}`);
      continue;
    }
    const cells = new Map<RowKey, Cell>(ROWS.map((r) => [r.key, new Cell(bytes)]));
    results.set(bytes, cells);
    const files = {
      c: path.join(dir, `c-${name}.raw`),
      ours: path.join(dir, `ours-${name}.snap`),
      tmp: path.join(dir, `nosync-${name}`),
      json: path.join(dir, `b64-${name}.json`),
    };
    // base64 beyond its limit fails after holding the whole state twice: attempt it when memory allows.
    const b64Need = bytes * 2.2 + 512 * MiB;
    const b64Expected = bytes <= BASE64_LIMIT;
    const b64Possible = b64Expected || os.freemem() > b64Need;
    if (!b64Possible) {
      const why = `not attempted: needs ~${mib(b64Need)} MiB free memory to reach its failure, ${mib(os.freemem())} MiB free`;
      cells.get('b64-save')!.notRun = why;
      cells.get('b64-restore')!.notRun = why;
    }
    let restoreBuffer = saveBuffer;
    const spec = (kind: CaseKind, file: string, extra: Partial<CaseSpec> = {}): CaseSpec => ({
      kind, bytes, file, exe, sync: true, pipeSize: args.pipeSize, bufferSize: saveBuffer, check: false, oursBuffer: args.buffer, cold: args.cold, warmFile, ...extra,
    });
    let round = 0;
    const run = async (key: RowKey, s: CaseSpec, record = true): Promise<CaseResult> => {
      // Every save starts on an idle disk (untimed): its output file from the round before is
      // removed and everything dirty is written back first. Otherwise the blocks freed by
      // overwriting (C's O_TRUNC) or renaming over (ours) the old file, and the write-back of
      // earlier cases, land inside whichever case comes next and swing the fsync'd rows.
      if (s.kind.endsWith('-save')) {
        fs.rmSync(s.file, { force: true });
        syncDisks();
      }
      const r = await runCase(s, pin.prefix);
      // Failures count whenever they happen (a failed content check in the warm-up round too).
      if (record || !r.ok) cells.get(key)!.add(r, round);
      process.stdout.write(`  ${key}${record ? '' : ' (check)'}: ${r.ok ? `${(bytes / MiB / r.seconds!).toFixed(0)} MiB/s` : `FAILED ${r.error}`}\n`);
      return r;
    };
    const pair = async (first: boolean, a: () => Promise<unknown>, b: () => Promise<unknown>): Promise<void> => {
      if (first) {
        await a();
        await b();
      } else {
        await b();
        await a();
      }
    };

    console.log(`[${name}] ${bytes} bytes (load average ${loadAverage()})`);
    const reps = checked ? args.reps : args.reps + 1;
    for (let rep = 0; rep < reps; rep++) {
      round = rep;
      // The first round of the run is a warm-up that also checks every byte: not recorded.
      const check = !checked && rep === 0;
      const record = !check;
      const cFirst = rep % 2 === 0;
      await pair(cFirst, () => run('c-save', spec('c-save', files.c, { check }), record), () => run('ours-save', spec('ours-save', files.ours, { check }), record));
      if (rep === 0) {
        restoreBuffer = Math.max(saveBuffer, await firstChunkLength(files.ours));
        restoreBuffers.set(bytes, restoreBuffer);
      }
      if (args.nosync) {
        await pair(
          cFirst,
          async () => {
            await run('c-save-nosync', spec('c-save', files.tmp, { sync: false }), record);
            fs.rmSync(files.tmp, { force: true });
          },
          async () => {
            await run('ours-save-nosync', spec('ours-save', files.tmp, { sync: false }), record);
            fs.rmSync(files.tmp, { force: true });
          },
        );
      }
      await pair(
        cFirst,
        () => run('c-restore', spec('c-restore', files.c, { check, bufferSize: restoreBuffer }), record),
        () => run('ours-restore', spec('ours-restore', files.ours, { check }), record),
      );
      const b64s = cells.get('b64-save')!;
      const b64n = cells.get('b64-save-nosync')!;
      const b64r = cells.get('b64-restore')!;
      // A base64 case that failed once fails every time: attempted once, not repeated.
      if (args.nosync && b64Possible && !b64n.failed) {
        await run('b64-save-nosync', spec('b64-save', files.tmp, { sync: false }), record);
        fs.rmSync(files.tmp, { force: true });
      }
      if (b64Possible && !b64s.failed) await run('b64-save', spec('b64-save', files.json, { check }), record);
      if (b64Possible && !b64r.failed) {
        await run('b64-restore', spec('b64-restore', files.json, { check, prepare: true }), record);
      }
      fs.rmSync(files.json, { force: true });
    }
    checked = true;
    for (const f of Object.values(files)) fs.rmSync(f, { force: true });
  }

  console.log(`\n${pin.title}, save and restore (load average at the end ${loadAverage()}):`);
  printTable(results, restoreBuffers, saveBuffer, crc);
  for (const s of skipped) console.log(`skipped: ${s}`);
}

function printTable(results: Map<number, Map<RowKey, Cell>>, restoreBuffers: Map<number, number>, saveBuffer: number, crc: number | undefined): void {
  const lines: string[][] = [['size', 'case', 'MiB/s median (min-max)', 'x C', 'x C best', 'CPU s', 'x C by CPU', 'peak RSS - base (base MiB)', '1st call', 'targets']];
  const notes: string[] = [];
  for (const [bytes, cells] of results) {
    const name = sizeName(bytes);
    const rate = (k: RowKey): number | undefined => cells.get(k)!.mibps()?.median;
    for (const row of ROWS) {
      const cell = cells.get(row.key)!;
      if (row.nosync && !cell.samples.length && !cell.failed) continue;
      const r = cell.mibps();
      const base = rate(row.baseline);
      const rss = cell.rssAbove();
      let speed: string;
      if (cell.notRun) {
        speed = 'not attempted (see notes)';
        notes.push(`${name} ${row.label}: ${cell.notRun}`);
      } else if (cell.failed) {
        speed = `fails: ${cell.error!.split(':')[0]} (see notes)`;
        notes.push(`${name} ${row.label} fails: ${cell.error}`);
      } else {
        speed = r ? `${r.median.toFixed(0)} (${r.min.toFixed(0)}-${r.max.toFixed(0)})` : '-';
      }
      const baseCell = cells.get(row.baseline)!;
      const paired = cell.pairedRatio(baseCell);
      const ratio = paired !== undefined ? paired.toFixed(2) : '';
      const best = cell.bestRatio(baseCell);
      const byCpu = cell.pairedRatio(baseCell, 'cpu');
      const cpu = cell.cpu();
      const rssText = rss ? `${rss.above >= 0 ? '+' : ''}${(rss.above / 1024).toFixed(1)} MiB (${(rss.base / 1024).toFixed(0)})` : '';
      let t = targets(row.key, bytes, cells);
      // What the checksum allows on one CPU: the C loop's time plus one checksum pass over every byte.
      if (crc && base && row.key.startsWith('ours')) t += `; checksum ceiling (1 CPU) ${(1 / (1 + base / crc)).toFixed(2)}x`;
      const first = cell.stat('firstCallMs');
      lines.push([
        row.key === 'c-save' ? name : '', row.label, speed, ratio, best !== undefined ? best.toFixed(2) : '', cpu !== undefined ? cpu.toFixed(2) : '',
        byCpu !== undefined ? byCpu.toFixed(2) : '', rssText, first ? `+${first.median.toFixed(1)} ms` : '', t,
      ]);
      if (cell.note) notes.push(`${name} ${row.label}: ${cell.note}`);
    }
    lines.push([]);
    notes.push(`${name}: C save buffer ${sizeName(saveBuffer)}, C restore buffer ${sizeName(restoreBuffers.get(bytes) ?? saveBuffer)} (= ours: pump buffer on save, chunk-sized buffer on restore)`);
  }
  const widths = lines[0].map((_, i) => Math.max(...lines.map((l) => (l[i] ?? '').length)));
  console.log('');
  for (const l of lines) console.log(l.length ? l.map((c, i) => (i === l.length - 1 ? c : c.padEnd(widths[i]))).join('  ').trimEnd() : '');
  for (const n of notes) console.log(`note: ${n}`);
}

/** The issue's targets for one row, evaluated (reported, not asserted). */
function targets(key: RowKey, bytes: number, cells: Map<RowKey, Cell>): string {
  const out: string[] = [];
  const verdict = (ok: boolean): string => (ok ? 'PASS' : 'FAIL');
  const oursRow = (k: RowKey, c: RowKey): void => {
    const cell = cells.get(k)!;
    if (cell.failed) {
      out.push('FAIL (ours failed)');
      return;
    }
    const x = cell.pairedRatio(cells.get(c)!);
    if (x !== undefined) out.push(`>=0.95x C ${verdict(x >= 0.95)}`);
    const rss = cell.rssAbove();
    if (rss) out.push(`RSS<=+64MiB ${verdict(rss.above <= 64 * 1024)}${bytes >= GiB ? '' : ' (target at >=1GiB)'}`);
  };
  const b64Row = (k: RowKey, ours: RowKey): void => {
    const cell = cells.get(k)!;
    const o = cells.get(ours)!;
    if (cell.failed || cell.notRun) {
      out.push(`ours works where base64 ${cell.notRun ? 'cannot run' : 'fails'}: ${verdict(o.samples.length > 0 && !o.failed)}`);
      return;
    }
    const x = o.pairedRatio(cell);
    if (x !== undefined) {
      out.push(`ours ${x.toFixed(1)}x base64${bytes === 256 * MiB ? ` (>=15x ${verdict(x >= 15)})` : ''}`);
    }
  };
  switch (key) {
    case 'ours-save':
      oursRow(key, 'c-save');
      break;
    case 'ours-save-nosync':
      oursRow(key, 'c-save-nosync');
      break;
    case 'ours-restore':
      oursRow(key, 'c-restore');
      break;
    case 'b64-save':
      b64Row(key, 'ours-save');
      break;
    case 'b64-save-nosync':
      b64Row(key, 'ours-save-nosync');
      break;
    case 'b64-restore':
      b64Row(key, 'ours-restore');
      break;
    default:
      break;
  }
  return out.join('; ');
}

void main().catch((e) => {
  console.error(e);
  process.exit(1);
});

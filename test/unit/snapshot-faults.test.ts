/**
 * Issue 4, "nothing lost": fault injection in the save and restore jobs (saveSnapshot /
 * restoreSnapshot, and the device model's MigrationCoordinator.snapshot / restore).
 *
 * Faults:
 *  - the snapshot file's writes fail mid-stream (EIO), or the disk fills up (ENOSPC): injected
 *    in the writer's file calls (WriterOptions.files, what it opens, writes, fsyncs and renames
 *    with) and, for a job that streams its state into the file with the data pump (the JS pump
 *    over the device's binding: `Binding.pwrite` / `Binding.write`), in a wrapper of that
 *    binding — one byte budget over both, so the fault hits whichever path the job takes; plus
 *    a real ENOSPC on a 512 KiB tmpfs when the test runs as root and can mount one;
 *  - the device's data_fd fails mid-read (save) or mid-write (restore): SimDevice.failDataFd;
 *  - a corrupted chunk in the snapshot (restore).
 * After each: the destination file does not exist (or a file that was there is unchanged), no
 * `.NAME.*.tmp` is left, the VfioError names the step and the errno/code, and the device is
 * back where it was (RUNNING, or STOP when it was paused; leaveStopped too: it applies to a
 * snapshot that is written) with no data_fd open;
 * a restore that touched the device reset it to RUNNING and says so in `deviceState`.
 */
import { describe, it, expect, afterAll, beforeEach, afterEach } from 'vitest';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { SimBinding, type SimDevice } from '../../src/sim';
import type { Binding } from '../../src/kernel/binding/types';
import type { VfioDevice } from '../../src/kernel/device';
import { openDevice } from '../../src/kernel/open';
import { MigrationCoordinator } from '../../src/vm/coordinator';
import { VfioPciDevice } from '../../src/model/vfio-pci';
import { ReferenceHost } from '../../src/model/host/reference';
import { VfioError, errnoOf } from '../../src/base/errors';
import { Migration } from '../../src/kernel/migration';
import { restoreSnapshot, saveSnapshot } from '../../src/vm/jobs';
import { SnapshotReader } from '../../src/snapshot/reader';
import type { WriterFile, WriterFiles } from '../../src/snapshot/writer';
import * as f from '../../src/snapshot/format';
import { MigState } from '../../src/kernel/uapi/vfio';
import { intercept, realBinding } from '../helpers/binding';
import { rejection } from '../helpers/errors';
import { openFdCount } from '../helpers/fds';
import { itUnless } from '../helpers/skip';

const { RUNNING, STOP } = MigState;

// ------------------------------------------------------------------ file-write faults
/** Fail writes to snapshot files once `after` bytes have been written (a write crossing the mark is cut short). */
class FileFault {
  written = 0;
  hits = 0;
  constructor(
    readonly code: 'EIO' | 'ENOSPC',
    readonly after: number,
  ) {}
  get errno(): number {
    return errnoOf(this.code);
  }
  /** Bytes still allowed; throws (counting a hit) when none are. */
  allow(len: number, fail: () => Error): number {
    const left = this.after - this.written;
    if (left <= 0 && len > 0) {
      this.hits++;
      throw fail();
    }
    return Math.min(len, left);
  }
  nodeError(syscall: string): NodeJS.ErrnoException {
    return Object.assign(new Error(`${this.code}: injected fault, ${syscall}`), { code: this.code, errno: -this.errno, syscall });
  }
}
let fault: FileFault | undefined;

/** The writer's file calls in order ('open P', 'fsync P', 'rename A -> B'), for the fsync-before-rename test. */
let events: string[] = [];

/** The snapshot writer's temporary files: `.NAME.PID.RANDOM.tmp`. */
const isTemp = (p: string): boolean => /^\..+\.\d+\.[0-9a-f]+\.tmp$/.test(path.basename(p));

/** An open file of the writer's: its calls traced, its writes to a temporary file drawing on `fault`'s budget. */
function tracedFile(p: string, fh: fs.promises.FileHandle): WriterFile {
  return {
    fd: fh.fd,
    chmod: (mode) => fh.chmod(mode),
    close: () => fh.close(),
    sync: async () => {
      events.push(`fsync ${p}`);
      await fh.sync();
    },
    write: async (buf, off, len, pos) => {
      if (!fault || !isTemp(p)) return fh.write(buf, off, len, pos);
      const n = fault.allow(len, () => fault!.nodeError('write'));
      const r = await fh.write(buf, off, n, pos);
      fault.written += r.bytesWritten;
      return r;
    },
  };
}

/** The writer's file calls for every save here (`files` in its options): node:fs/promises, traced and with `fault`. */
const files: WriterFiles = {
  open: async (p, flags, mode) => {
    const fh = await fs.promises.open(p, flags, mode);
    events.push(`open ${p}`);
    return tracedFile(p, fh);
  },
  rename: async (from, to) => {
    events.push(`rename ${from} -> ${to}`);
    await fs.promises.rename(from, to);
  },
  unlink: (p) => fs.promises.unlink(p),
};

/**
 * The device's binding with file-side faults: `write` and `pwrite` to a real fd draw on the
 * same budget as the writer's file writes (a job that streams state with the data pump writes
 * the file through the binding, not through the writer's calls: the data_fd is virtual, so the
 * JS pump over this binding serves it).
 */
function faultyBinding(inner: SimBinding): Binding {
  const fileSide = (fd: number): boolean => fault !== undefined && !SimBinding.isVirtualFd(fd);
  return intercept(inner, {
    write: async (fd: number, buf: Buffer, offset?: number, length?: number): Promise<number> => {
      if (!fileSide(fd)) return inner.write(fd, buf, offset, length);
      const len = length ?? buf.length - (offset ?? 0);
      const n = fault!.allow(len, () => VfioError.fromErrno(fault!.errno, { syscall: 'write' }));
      const done = await inner.write(fd, buf, offset, n);
      fault!.written += done;
      return done;
    },
    pwrite: (fd: number, buf: Buffer, position: number, length?: number): number => {
      if (!fileSide(fd)) return inner.pwrite(fd, buf, position, length);
      const len = length ?? buf.length;
      const n = fault!.allow(len, () => VfioError.fromErrno(fault!.errno, { syscall: 'pwrite' }));
      const done = inner.pwrite(fd, buf, position, n);
      fault!.written += done;
      return done;
    },
  });
}

// ------------------------------------------------------------------ set-up
const real = realBinding();

interface Env {
  sim: SimBinding;
  binding: Binding;
  dir: string;
  opened: VfioDevice[];
  hosts: ReferenceHost[];
  models: VfioPciDevice[];
}
let env: Env;

beforeEach(() => {
  const sim = new SimBinding(real);
  env = { sim, binding: faultyBinding(sim), dir: fs.mkdtempSync(path.join(os.tmpdir(), 'snapfault-')), opened: [], hosts: [], models: [] };
  events = [];
});
afterEach(() => {
  fault = undefined;
  for (const m of env.models) m.detach();
  for (const d of env.opened) d.close();
  for (const h of env.hosts) h.close();
  expect(env.sim.openFdCount(), JSON.stringify(env.sim.openFds())).toBe(0);
  fs.rmSync(env.dir, { recursive: true, force: true });
});

/** A named sim device (its model and the open VfioDevice). */
function sim(name: string, spec = 'sim:64KiB'): { sd: SimDevice; dev: VfioDevice } {
  const dev = openDevice(`${spec}#${name}`, { binding: env.binding });
  env.opened.push(dev);
  return { sd: env.sim.device(name), dev };
}

function leftovers(dir: string): string[] {
  return fs.readdirSync(dir).filter((n) => isTemp(n));
}

/** The device is in `state`, with no data_fd open and no live session. */
function expectSettled(sd: SimDevice, state: MigState): void {
  expect(MigState[sd.state]).toBe(MigState[state]);
  expect(sd.openFds, 'only the device fd is open').toBe(1);
  const s = sd.session();
  expect(s === undefined || s.disabled, 'no live migration session').toBe(true);
}

/** The destination path after a failed save: absent, or the file that was there, unchanged; no temporary file. */
function expectNothingWritten(file: string, previous: Buffer | undefined): void {
  if (previous) expect(fs.readFileSync(file).equals(previous), 'the existing file is untouched').toBe(true);
  else expect(fs.existsSync(file), `${file} must not exist`).toBe(false);
  expect(leftovers(path.dirname(file))).toEqual([]);
}

const OLD = Buffer.from('an older snapshot that must survive a failed save\n');

// ------------------------------------------------------------------ save
type SaveFault =
  | { name: string; kind: 'file'; code: 'EIO' | 'ENOSPC'; after: number }
  | { name: string; kind: 'data_fd'; code: 'ENODEV' | 'EIO'; after: number; enterError?: boolean };

const SAVE_FAULTS: SaveFault[] = [
  { name: 'a file write failing with EIO mid-stream', kind: 'file', code: 'EIO', after: 20_000 },
  { name: 'a full disk (injected ENOSPC) mid-stream', kind: 'file', code: 'ENOSPC', after: 20_000 },
  { name: 'a full disk before the first byte (ENOSPC on the header)', kind: 'file', code: 'ENOSPC', after: 0 },
  { name: 'a data_fd read failing with ENODEV mid-stream', kind: 'data_fd', code: 'ENODEV', after: 10_000 },
  { name: 'a data_fd read failing with EIO, the device going to ERROR', kind: 'data_fd', code: 'EIO', after: 10_000, enterError: true },
];

/** Arm `fl` for the next save from `sd`. */
function arm(fl: SaveFault, sd: SimDevice): void {
  if (fl.kind === 'file') fault = new FileFault(fl.code, fl.after);
  else sd.failDataFd({ after: fl.after, errno: fl.code, on: 'read', enterError: fl.enterError });
}

/** The fault fired: check its code, errno, syscall and step on the error. */
function expectFaultError(e: VfioError, fl: SaveFault): void {
  expect(e.code).toBe(fl.code);
  expect(e.errno).toBe(errnoOf(fl.code));
  if (fl.kind === 'file') {
    expect(fault!.hits).toBeGreaterThan(0);
    expect(['write', 'pwrite']).toContain(e.syscall);
    expect(e.step).toMatch(/^(snapshot|save):write$/);
  } else {
    expect(e.syscall).toBe('read');
    expect(e.step).toBe('save:read');
  }
}

describe('saveSnapshot: a failure leaves no file and the devices where they were', () => {
  for (const fl of SAVE_FAULTS) {
    for (const variant of [
      { before: RUNNING, leaveStopped: false, existing: false },
      { before: RUNNING, leaveStopped: true, existing: true },
      { before: STOP, leaveStopped: false, existing: true },
    ]) {
      // No snapshot is written, so the device goes back where it was, leaveStopped or not.
      const after = variant.before;
      it(`${fl.name}: from ${MigState[variant.before]}${variant.leaveStopped ? ' with leaveStopped' : ''}${variant.existing ? ', over an existing file' : ''} → ${MigState[after]}`, async () => {
        const { sd, dev } = sim('src');
        if (variant.before === STOP) await Migration.require(dev).setState(STOP);
        const file = path.join(env.dir, 'vm.vfiosnap');
        if (variant.existing) fs.writeFileSync(file, OLD);
        arm(fl, sd);
        const e = await rejection(saveSnapshot([dev], file, { bufferSize: 4096, noSync: true, leaveStopped: variant.leaveStopped, files }));
        expectFaultError(e, fl);
        expect(e.deviceState?.map((o) => [o.device, o.state])).toEqual([['sim:64KiB#src', MigState[after]]]);
        expect(e.message).toMatch(new RegExp(`device left in ${MigState[after]}( \\(reset\\))?$`));
        expectNothingWritten(file, variant.existing ? OLD : undefined);
        expectSettled(sd, after);
      });
    }
  }

  it('with two devices, a fault in the second one\'s stream brings both back to RUNNING', async () => {
    const a = sim('a');
    const b = sim('b', 'sim:32KiB');
    const file = path.join(env.dir, 'two.vfiosnap');
    b.sd.failDataFd({ after: 5000, errno: 'ENODEV', on: 'read' });
    const e = await rejection(saveSnapshot([a.dev, b.dev], file, { bufferSize: 4096, noSync: true, files }));
    expect(e).toMatchObject({ code: 'ENODEV', step: 'save:read', syscall: 'read' });
    expect(e.message).toMatch(/devices left: sim:64KiB#a RUNNING, sim:32KiB#b RUNNING/);
    expectNothingWritten(file, undefined);
    expectSettled(a.sd, RUNNING);
    expectSettled(b.sd, RUNNING);
    // Both were stopped before either was saved (all quiesced first): the arcs show it.
    expect(a.sd.arcLog.some(([, to]) => to === STOP)).toBe(true);
  });

  it('writes the temporary file in the destination directory and fsyncs it before the rename', async () => {
    const { sd, dev } = sim('src');
    const file = path.join(env.dir, 'durable.vfiosnap');
    events = [];
    await saveSnapshot([dev], file, { bufferSize: 8192, onState: (c) => events.push(`state ${MigState[c.to]}`), files });
    const tmpOpen = events.find((ev) => ev.startsWith('open ') && isTemp(ev.slice(5)));
    expect(tmpOpen, events.join('\n')).toBeDefined();
    const tmp = tmpOpen!.slice(5);
    expect(path.dirname(tmp)).toBe(path.dirname(path.resolve(file)));
    expect(path.basename(tmp).startsWith('.durable.vfiosnap.')).toBe(true);
    const fsync = events.indexOf(`fsync ${tmp}`);
    const rename = events.indexOf(`rename ${tmp} -> ${file}`);
    expect(fsync, events.join('\n')).toBeGreaterThanOrEqual(0);
    expect(rename, events.join('\n')).toBeGreaterThan(fsync);
    // ...and the directory is fsynced after the rename, so that the rename itself is durable.
    expect(events.slice(rename + 1).some((ev) => ev === `fsync ${path.dirname(path.resolve(file))}`), events.join('\n')).toBe(true);
    expect(leftovers(env.dir)).toEqual([]);
    expectSettled(sd, RUNNING);
    // The device runs again before the file is made durable: its downtime is the state copy,
    // not the disk's write-back.
    const running = events.lastIndexOf('state RUNNING');
    expect(running, events.join('\n')).toBeGreaterThan(events.indexOf('state STOP'));
    expect(running, events.join('\n')).toBeLessThan(fsync);
    const r = await SnapshotReader.open(file);
    expect(r.devices()[0].state!.chunks!.total).toBe(sd.streamLength);
    await r.close();
  });

  it('a commit that fails after the device runs again: no file, no temporary, the device RUNNING and the error says so', async () => {
    const { sd, dev } = sim('src');
    // A directory appears at the destination while the device resumes: the commit's last check
    // before the rename refuses it (only a regular file is ever replaced).
    const file = path.join(env.dir, 'occupied.vfiosnap');
    const occupy = (c: { to: number }): void => {
      if (c.to !== RUNNING || fs.existsSync(file)) return;
      fs.mkdirSync(file);
      fs.writeFileSync(path.join(file, 'keep'), 'x');
    };
    try {
      const e = await rejection(saveSnapshot([dev], file, { bufferSize: 8192, onState: occupy, files }));
      expect(e.step).toBe('snapshot:commit');
      expect(e.code).toBe('EVFIO_NOT_A_FILE');
      expect(e.message).toMatch(/device left in RUNNING$/);
      expect(leftovers(env.dir)).toEqual([]);
      expect(fs.readdirSync(file)).toEqual(['keep']);
      expectSettled(sd, RUNNING);
    } finally {
      fs.rmSync(file, { recursive: true });
    }
  });
});

// ------------------------------------------------------------------ real ENOSPC
/** Mount a 512 KiB tmpfs (root only); the reason when that is not possible. */
function mountSmallTmpfs(): { dir?: string; reason?: string } {
  if (process.platform !== 'linux') return { reason: 'not Linux' };
  if (process.getuid?.() !== 0) return { reason: 'not running as root (mount needs CAP_SYS_ADMIN)' };
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'snapfault-tmpfs-'));
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=512k', 'tmpfs', dir], { stdio: 'pipe' });
    return { dir };
  } catch (e) {
    fs.rmdirSync(dir);
    return { reason: `mount -t tmpfs failed: ${String((e as { stderr?: Buffer }).stderr ?? e).trim()}` };
  }
}
const tmpfs = mountSmallTmpfs();
afterAll(() => {
  if (tmpfs.dir) {
    execFileSync('umount', [tmpfs.dir]);
    fs.rmdirSync(tmpfs.dir);
  }
});

describe('saveSnapshot on a full disk (real ENOSPC)', () => {
  itUnless(tmpfs.reason, 'a 1 MiB state on a 512 KiB tmpfs: ENOSPC, no file, device RUNNING', async () => {
    const { sd, dev } = sim('big', 'sim:1MiB');
    const file = path.join(tmpfs.dir!, 'vm.vfiosnap');
    fs.writeFileSync(file, OLD);
    const e = await rejection(saveSnapshot([dev], file, { bufferSize: 64 * 1024 }));
    expect(e.code).toBe('ENOSPC');
    expect(e.errno).toBe(errnoOf('ENOSPC'));
    expect(['write', 'pwrite']).toContain(e.syscall);
    expect(e.step).toMatch(/^(snapshot|save):write$/);
    expect(e.deviceState?.map((o) => o.state)).toEqual(['RUNNING']);
    expectNothingWritten(file, OLD);
    expectSettled(sd, RUNNING);
    // The space is given back: a small device fits now.
    const small = sim('small', 'sim:4KiB');
    await saveSnapshot([small.dev], path.join(tmpfs.dir!, 'small.vfiosnap'), {});
    fs.rmSync(path.join(tmpfs.dir!, 'small.vfiosnap'));
  });
  if (tmpfs.reason) console.log(`snapshot-faults: real ENOSPC case skipped: ${tmpfs.reason}`);
});

// ------------------------------------------------------------------ restore
/** Save `src` (64 KiB state, 4 KiB chunks) into a file; returns its path. */
async function saved(name = 'src.vfiosnap'): Promise<{ file: string; seed: bigint }> {
  const { sd, dev } = sim('origin');
  const file = path.join(env.dir, name);
  await saveSnapshot([dev], file, { bufferSize: 4096, noSync: true, files });
  return { file, seed: sd.seed };
}

/** A copy of `file` with the payload of chunk `n` of its DEVICE_STATE section damaged (chunk crc left as it was). */
async function withBadChunk(file: string, n: number): Promise<string> {
  const r = await SnapshotReader.open(file);
  const entry = r.devices()[0].state!;
  await r.close();
  const b = fs.readFileSync(file);
  let pos = entry.bodyAt;
  for (let i = 0; i < n; i++) pos += f.CHUNK_HEADER_SIZE + b.readUInt32LE(pos);
  b[pos + f.CHUNK_HEADER_SIZE + 17] ^= 0x40;
  const out = file.replace(/\.vfiosnap$/, `.bad${n}.vfiosnap`);
  fs.writeFileSync(out, b);
  return out;
}

describe('restoreSnapshot: a failure after the device was touched resets it to RUNNING', () => {
  it('a data_fd write failing with EIO mid-stream', async () => {
    const { file } = await saved();
    const { sd, dev } = sim('dst');
    sd.failDataFd({ after: 9000, errno: 'EIO', on: 'write' });
    const e = await rejection(restoreSnapshot(dev, file, { bufferSize: 4096 }));
    expect(e).toMatchObject({ code: 'EIO', errno: errnoOf('EIO'), syscall: 'write', step: 'load:write', deviceState: [expect.objectContaining({ state: 'RUNNING', touched: true })] });
    expect(e.message).toMatch(/device left in RUNNING \(reset\)$/);
    expect(sd.arcLog.some(([, to]) => to === MigState.RESUMING)).toBe(true);
    expectSettled(sd, RUNNING);
  });

  it('an injected write error on the first write', async () => {
    const { file } = await saved();
    const { sd, dev } = sim('dst');
    sd.injectError('write', 'EIO');
    const e = await rejection(restoreSnapshot(dev, file, { bufferSize: 4096 }));
    expect(e).toMatchObject({ code: 'EIO', step: 'load:write', deviceState: [expect.objectContaining({ state: 'RUNNING', touched: true })] });
    expectSettled(sd, RUNNING);
  });

  it('a data_fd that dies with ENODEV and the device going to ERROR', async () => {
    const { file } = await saved();
    const { sd, dev } = sim('dst');
    sd.failDataFd({ after: 20_000, errno: 'ENODEV', on: 'write', enterError: true });
    const e = await rejection(restoreSnapshot(dev, file, { bufferSize: 4096 }));
    expect(e).toMatchObject({ code: 'ENODEV', step: 'load:write', deviceState: [expect.objectContaining({ state: 'RUNNING', touched: true })] });
    expectSettled(sd, RUNNING);
  });

  for (const n of [0, 5]) {
    it(`a corrupted chunk (chunk ${n}): refused before it reaches the device, then reset`, async () => {
      const { file } = await saved();
      const bad = await withBadChunk(file, n);
      const { sd, dev } = sim('dst');
      const seedBefore = sd.seed;
      let reached = 0;
      const e = await rejection(restoreSnapshot(dev, bad, { bufferSize: 4096, onProgress: (p) => (reached = p.bytes) }));
      expect(['EVFIO_SNAPSHOT_CHECKSUM', 'EVFIO_CHECKSUM']).toContain(e.code);
      expect(e.kind).toBe('format');
      expect(e.step).toMatch(/^(restore:write|load:verify)$/);
      expect(e.deviceState?.map((o) => o.state)).toEqual(['RUNNING']);
      expect(e.message).toMatch(/device left in RUNNING \(reset\)$/);
      // Only the chunks before the bad one reached the device.
      expect(reached).toBe(n * 4096);
      expect(sd.arcLog.some(([, to]) => to === MigState.RESUMING)).toBe(true);
      expect(sd.seed).toBe(seedBefore);
      expectSettled(sd, RUNNING);
    });
  }

  it('a file that changes under an open reader is caught while streaming, and the device reset', async () => {
    const { file } = await saved();
    const reader = await SnapshotReader.open(file);
    // Rewrite one chunk in place with a consistent crc: only the chunk table can tell.
    const entry = reader.devices()[0].state!;
    const b = fs.readFileSync(file);
    const at = entry.bodyAt + 2 * (f.CHUNK_HEADER_SIZE + 4096);
    const payload = b.subarray(at + f.CHUNK_HEADER_SIZE, at + f.CHUNK_HEADER_SIZE + 4096);
    payload[100] ^= 1;
    b.writeUInt32LE(f.sum(reader.checksum, payload), at + 4);
    const fd = fs.openSync(file, 'r+');
    fs.writeSync(fd, b.subarray(at, at + f.CHUNK_HEADER_SIZE + 4096), 0, f.CHUNK_HEADER_SIZE + 4096, at);
    fs.closeSync(fd);
    const { sd, dev } = sim('dst');
    const e = await rejection(restoreSnapshot(dev, reader, { bufferSize: 4096 }));
    await reader.close();
    // Every chunk's own crc holds; the chunk table (checked after the last chunk, before the
    // RESUMING exit) does not.
    expect(e).toMatchObject({ kind: 'format', code: 'EVFIO_SNAPSHOT_CHECKSUM', deviceState: [expect.objectContaining({ state: 'RUNNING', touched: true })] });
    expect(e.message).toMatch(/chunk table/);
    expectSettled(sd, RUNNING);
  });

  it('a device without migration support: refused, and the snapshot file is closed again', async () => {
    const { file } = await saved();
    const { sd, dev } = sim('nomig', 'sim:64KiB:mig=off');
    const before = openFdCount();
    const e = await rejection(restoreSnapshot(dev, file));
    expect(e).toMatchObject({ code: 'EVFIO_NOT_MIGRATABLE', kind: 'unsupported' });
    expect(openFdCount()).toBe(before);
    expect(MigState[sd.state]).toBe('RUNNING');
  });

  it('a snapshot of another device is refused before the device is touched', async () => {
    const { file } = await saved();
    const { sd, dev } = sim('other', 'sim:64KiB:devid=0x5f11');
    const e = await rejection(restoreSnapshot(dev, file));
    expect(e).toMatchObject({ code: 'EVFIO_DEVICE_MISMATCH', kind: 'mismatch', step: 'load:check', deviceState: [{ device: 'sim:64KiB#origin', state: 'RUNNING', touched: false, reset: false }] });
    expect(sd.arcLog).toEqual([]);
    expectSettled(sd, RUNNING);
  });
});

// ------------------------------------------------------------------ the device model
describe('MigrationCoordinator: snapshot and restore under faults', () => {
  /** A VM of one device model; `id` is the attach id (a restore pairs by it), `name` the sim device's. */
  function vm(name: string, spec = 'sim:64KiB', assignBars = true, id = name): { sd: SimDevice; model: VfioPciDevice; coord: MigrationCoordinator } {
    const { sd, dev } = sim(name, spec);
    const host = new ReferenceHost(env.binding);
    env.hosts.push(host);
    const model = VfioPciDevice.attach(dev, host, { id, assignBars, bufferSize: 4096 });
    env.models.push(model);
    return { sd, model, coord: new MigrationCoordinator([model]) };
  }

  /** File offset where a device-model snapshot's state stream starts (PCI_MODEL and config come first). */
  async function streamOffset(): Promise<number> {
    const { coord } = vm('probe');
    await coord.pause();
    const probe = path.join(env.dir, 'probe.vfiosnap');
    await coord.snapshot(probe, { noSync: true, files });
    await coord.resume();
    const r = await SnapshotReader.open(probe);
    const at = r.devices()[0].state!.bodyAt;
    await r.close();
    fs.rmSync(probe);
    return at;
  }

  for (const fl of [SAVE_FAULTS[0], SAVE_FAULTS[1], SAVE_FAULTS[3]]) {
    it(`snapshot with ${fl.name}: no file, device back in STOP`, async () => {
      // File faults strike inside the state stream (the device is in STOP_COPY then).
      const after = fl.kind === 'file' ? (await streamOffset()) + 10_000 : fl.after;
      const { sd, coord } = vm('nic');
      await coord.pause();
      const file = path.join(env.dir, 'vm.vfiosnap');
      fs.writeFileSync(file, OLD);
      arm({ ...fl, after }, sd);
      const e = await rejection(coord.snapshot(file, { noSync: true, files }));
      expectFaultError(e, fl);
      expect(e.deviceState?.map((o) => o.state)).toEqual(['STOP']);
      expectNothingWritten(file, OLD);
      expectSettled(sd, STOP);
      await coord.resume();
      expectSettled(sd, RUNNING);
    });
  }

  it('snapshot with a file write failing before the stream (device still in STOP): no file, device in STOP', async () => {
    const { sd, coord } = vm('nic');
    await coord.pause();
    const file = path.join(env.dir, 'vm.vfiosnap');
    fault = new FileFault('EIO', 100);
    const e = await rejection(coord.snapshot(file, { noSync: true, files }));
    expect(e).toMatchObject({ code: 'EIO', errno: errnoOf('EIO') });
    expect(e.step).toMatch(/^(snapshot|save):write$/);
    expectNothingWritten(file, undefined);
    expectSettled(sd, STOP);
  });

  async function vmSnapshot(): Promise<string> {
    const { coord } = vm('vm-src');
    await coord.pause();
    const file = path.join(env.dir, 'vm.vfiosnap');
    await coord.snapshot(file, { noSync: true, files });
    await coord.resume();
    return file;
  }

  it('restore with a data_fd write failing mid-stream: device reset to RUNNING', async () => {
    const file = await vmSnapshot();
    const { sd, coord } = vm('vm-dst', 'sim:64KiB', false, 'vm-src');
    sd.failDataFd({ after: 7000, errno: 'EIO', on: 'write' });
    const e = await rejection(coord.restore(file));
    expect(e).toMatchObject({ code: 'EIO', errno: errnoOf('EIO'), step: 'load:write', deviceState: [expect.objectContaining({ state: 'RUNNING', touched: true })] });
    expectSettled(sd, RUNNING);
  });

  it('restore with a corrupted chunk: refused, device reset to RUNNING', async () => {
    const file = await vmSnapshot();
    const bad = await withBadChunk(file, 3);
    const { sd, coord } = vm('vm-dst', 'sim:64KiB', false, 'vm-src');
    const e = await rejection(coord.restore(bad));
    expect(['EVFIO_SNAPSHOT_CHECKSUM', 'EVFIO_CHECKSUM']).toContain(e.code);
    expect(e.step).toMatch(/^(restore:write|load:verify)$/);
    expect(e.deviceState?.map((o) => o.state)).toEqual(['RUNNING']);
    expectSettled(sd, RUNNING);
  });
});

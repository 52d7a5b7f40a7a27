// The `vfio-pci` command against a new user trying to break it: paths and URIs that cannot be
// used are usage errors found before any device is opened, `help` of an unknown command, usage
// errors with --json, what each command says when a signal cancels it (and that it is so), the
// notes of a failed migrate and of a snapshot whose commit a signal meets.
import { describe, it, expect, vi, afterEach } from 'vitest';
import { EventEmitter } from 'node:events';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import { main } from '../../src/cli/main';
import { openDevice } from '../../src/kernel/open';
import { saveSnapshot } from '../../src/vm/jobs';
import { runCli } from '../helpers/cli';
import { useTempDir } from '../helpers/temp-dir';

const tmp = useTempDir('cli-usage', { each: true });

/** One JSON object on stdout. */
const json = (out: string): Record<string, any> => JSON.parse(out);

/**
 * Run `vfio-pci ...argv` in this process with a signal source of its own: once the command
 * handles signals and `when(out, err)` holds (asked after every write and every 10 ms), `sig` is
 * delivered, as if sent to the process.
 */
function runWithSignal(argv: string[], sig: 'SIGINT' | 'SIGTERM' | 'SIGHUP', when: (out: string, err: string) => boolean) {
  const signals = new EventEmitter();
  const out = new PassThrough();
  const err = new PassThrough();
  let o = '';
  let e = '';
  let sent = false;
  const check = (): void => {
    if (!sent && signals.listenerCount(sig) > 0 && when(o, e)) {
      sent = true;
      signals.emit(sig);
    }
  };
  out.on('data', (d) => {
    o += d;
    check();
  });
  err.on('data', (d) => {
    e += d;
    check();
  });
  const poll = setInterval(check, 10);
  const done = main(argv, out, err, { signals: signals as never }).then((code) => {
    clearInterval(poll);
    return { code, out: o, err: e, sent };
  });
  return { done };
}

describe('paths: usage errors (exit 2) before any device is opened', () => {
  // A device spec that cannot be opened: had it been opened first, its error would be the one printed.
  const NODEV = 'nonsense-device';

  it("-o '', -o DIR/ (existing or not), -o . : named, exit 2, no device opened", async () => {
    fs.mkdirSync(tmp.file('sub'));
    const cases: Array<[string, RegExp]> = [
      ['', /^vfio-pci snapshot: -o: the path is empty; give the snapshot file's path/],
      [`${tmp.file('sub')}/`, /-o .*\/sub\/: the path names a directory; give the snapshot file's path \(.*\/sub\/vm\.vfiosnap\)/],
      [`${tmp.file('nodir')}/`, /-o .*\/nodir\/: the path names a directory/],
      [`${tmp.file('sub')}/..`, /the path names a directory/],
    ];
    for (const [o, msg] of cases) {
      const r = await runCli('snapshot', NODEV, '-o', o);
      expect(r.code, o).toBe(2);
      expect(r.err, o).toMatch(msg);
      expect(r.err).not.toMatch(/cannot resolve device/);
      expect(r.out).toBe('');
    }
    expect(fs.readdirSync(tmp.path)).toEqual(['sub']); // nothing created, not even the missing directory's temporary file
  });

  it('-o DIR/ with a device: the device is never paused (it was: the whole copy, then ENOTDIR at the rename)', async () => {
    const r = await runCli('snapshot', 'sim:64KiB#usage-slash', '-o', `${tmp.file('later')}/`, '--json');
    expect(r.code).toBe(2);
    expect(json(r.out)).toMatchObject({ ok: false, error: { code: 'EVFIO_USAGE', kind: 'usage' } });
    expect(json(r.out).transitions).toBeUndefined();
    expect(fs.readdirSync(tmp.path)).toEqual([]);
  });

  it('a directory that is missing, not a directory, or where no file can be created: exit 2, the code and path kept', async () => {
    fs.writeFileSync(tmp.file('plain'), '');
    const unwritable = process.getuid?.() === 0 ? '/sys' : tmp.file('ro'); // root writes anywhere access(2) is asked; sysfs takes no new file
    if (unwritable !== '/sys') fs.mkdirSync(unwritable, { mode: 0o555 });
    const cases: Array<[string, string, RegExp]> = [
      [tmp.file('nodir', 'x.vfiosnap'), 'ENOENT', /directory .*nodir does not exist$/],
      [tmp.file('plain', 'x.vfiosnap'), 'ENOTDIR', /is not a directory$/],
      [path.join(unwritable, 'x.vfiosnap'), 'EACCES', /(is not writable|cannot create a file in directory .*) \(EACCES\)$/],
    ];
    for (const [o, code, msg] of cases) {
      const r = await runCli('snapshot', NODEV, '-o', o, '--json');
      expect(r.code, o).toBe(2);
      const j = json(r.out);
      expect(j.error, o).toMatchObject({ code, kind: 'usage', path: o });
      expect(j.error.message).toMatch(msg);
      expect(j.error.deviceState).toBeUndefined();
      expect(r.err).toContain(`vfio-pci snapshot: ${j.error.message}`);
    }
  });

  it("restore -i '', a missing file, a directory; inspect '' and a missing file: exit 2 before any device is opened", async () => {
    const cases: Array<[string[], RegExp]> = [
      [['restore', NODEV, '-i', ''], /^vfio-pci restore: -i: the path is empty/],
      [['restore', NODEV, '-i', tmp.file('none.vfiosnap')], /cannot read snapshot .*none\.vfiosnap: no such file/],
      [['restore', NODEV, '-i', tmp.path], /cannot read snapshot .*: it is a directory/],
      [['inspect', ''], /^vfio-pci inspect: FILE: the path is empty/],
      [['inspect', tmp.file('none.vfiosnap')], /cannot read snapshot .*none\.vfiosnap: no such file/],
    ];
    for (const [argv, msg] of cases) {
      const r = await runCli(...argv);
      expect(r.code, argv.join(' ')).toBe(2);
      expect(r.err, argv.join(' ')).toMatch(msg);
      expect(r.out).toBe('');
    }
  });

  it('migrate --to / incoming --listen: a malformed URI or unreadable TLS files are found before any device is opened', async () => {
    const cases: Array<[string[], RegExp]> = [
      [['migrate', '--to', 'tcp:', NODEV], /--to: bad transport URI "tcp:": expected tcp:HOST:PORT/],
      [['migrate', '--to', 'tcp:host:99999', NODEV], /--to: bad transport URI .*the port 99999 is outside/],
      [['migrate', '--to', 'tcp::4444', NODEV], /a host to connect to is missing/],
      [['incoming', '--listen', 'unix:', NODEV], /--listen: bad transport URI "unix:": the socket path is missing/],
      [['incoming', '--listen', 'tcp:1.2.3.4', NODEV], /--listen: bad transport URI/],
      [['migrate', '--to', 'tcp:127.0.0.1:1', '--tls-cert', 'c.pem', '--tls-key', 'k.pem', '--tls-ca', 'ca.pem', NODEV], /cannot read --tls-cert c\.pem: ENOENT/],
    ];
    for (const [argv, msg] of cases) {
      const r = await runCli(...argv);
      expect(r.code, argv.join(' ')).toBe(2);
      expect(r.err, argv.join(' ')).toMatch(msg);
      expect(r.err).not.toMatch(/cannot resolve device/);
    }
  });
});

describe('a device given twice', () => {
  it('is refused before any is opened (it was paused and saved twice under two ids)', async () => {
    for (const argv of [
      ['snapshot', 'x=sim:4KiB#usage-dup', 'y=sim:4KiB#usage-dup', '-o', tmp.file('dup.vfiosnap')],
      ['restore', 'x=sim:4KiB#usage-dup', 'y=sim:8KiB#usage-dup', '-i', __filename],
      ['migrate', '--to', 'unix:/nowhere.sock', 'sim#usage-dup', 'b=sim:64KiB#usage-dup'],
    ]) {
      const r = await runCli(...argv);
      expect(r.code, argv.join(' ')).toBe(2);
      expect(r.err, argv.join(' ')).toMatch(/^vfio-pci \w+: '.*#usage-dup' and '.*#usage-dup' are the same device \(the simulated device #usage-dup\): give each device once/);
      expect(r.out).toBe('');
    }
    expect(fs.readdirSync(tmp.path)).toEqual([]);
    // Unnamed simulated devices are a fresh device each.
    expect((await runCli('snapshot', 'x=sim:4KiB', 'y=sim:4KiB', '-o', tmp.file('two.vfiosnap'), '-q')).code).toBe(0);
  });
});

describe('help and usage errors', () => {
  it('help of an unknown command is an error (exit 2) that names it, not the global help', async () => {
    const r = await runCli('help', 'nosuch');
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/^vfio-pci help: unknown command 'nosuch'\n/);
    expect(r.err).not.toMatch(/Commands:/);
    expect(r.out).toBe('');
    expect((await runCli('help', 'inspect')).out).toMatch(/^Usage: vfio-pci inspect/);
  });

  it('an option that takes a value, given twice, is refused (commander would keep the last silently)', async () => {
    const file = tmp.file('twice.vfiosnap');
    for (const [argv, msg] of [
      [['snapshot', 'sim:4KiB#usage-twice', '-o', file, '-o', tmp.file('other.vfiosnap')], /--output is given twice \('.*twice\.vfiosnap', then '.*other\.vfiosnap'\): give it once/],
      [['demo', '--size', '4GiB', '--size', '1MiB'], /--size is given twice \('4GiB', then '1MiB'\)/],
      [['info', 'sim', '--iommu', 'legacy', '--iommu', 'iommufd'], /--iommu is given twice/],
      [['migrate', '--to', 'unix:/a', '--to', 'unix:/b', 'sim'], /--to is given twice/],
    ] as const) {
      const r = await runCli(...argv);
      expect(r.code, argv.join(' ')).toBe(2);
      expect(r.err, argv.join(' ')).toMatch(msg);
    }
    expect(fs.readdirSync(tmp.path)).toEqual([]);
    // Flags may be repeated; a value option given once is as before.
    expect((await runCli('snapshot', 'sim:4KiB#usage-twice', '-o', file, '-q', '-q', '--json', '--json')).code).toBe(0);
  });

  it('demo --size larger than TMPDIR can hold is refused before it starts (it filled the disk, then failed)', async () => {
    const r = await runCli('demo', '--size', '1000TiB');
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/^vfio-pci demo: --size 1000TiB: the demo writes a snapshot of about that size in .*, which has .* free\n/);
    expect(r.out).toBe('');
  });

  it('with --json a usage error is one object on stdout and still the message on stderr', async () => {
    for (const [argv, msg] of [
      [['info', 'sim', '--index', '3', '--json'], /^vfio-pci info: unknown option '--index'/],
      [['snapshot', 'sim', '--json'], /^vfio-pci snapshot: required option '-o, --output <file>' not specified/],
      [['restore', 'sim', '-i', '', '--json'], /^vfio-pci restore: -i: the path is empty/],
    ] as const) {
      const r = await runCli(...argv);
      expect(r.code, argv.join(' ')).toBe(2);
      expect(r.err, argv.join(' ')).toMatch(msg);
      expect(json(r.out)).toMatchObject({ ok: false, error: { kind: 'usage' } });
    }
  });
});

describe('what a signal does, said when it arrives, and so', () => {
  it('snapshot: no snapshot is written and the devices return to their state, with --leave-stopped too (it applies to a written snapshot)', async () => {
    const file = tmp.file('s.vfiosnap');
    const a = runWithSignal(['snapshot', 'nic0=sim:256MiB#usage-sig-snap', '-o', file], 'SIGINT', (o) => /STOP → STOP_COPY/.test(o));
    const ra = await a.done;
    expect(ra.sent).toBe(true);
    expect(ra.code, ra.err).toBe(130);
    expect(ra.err).toContain(`vfio-pci snapshot: SIGINT: cancelling: the copy stops and the temporary file is removed: no snapshot is written, ${file} stays as it was`);
    expect(ra.err).toContain('the devices return to the state they were in');
    expect(ra.err).toMatch(/devices left: nic0 RUNNING\n/);
    expect(ra.err).toContain(`no snapshot was written: ${file} is as it was`);
    expect(fs.readdirSync(tmp.path)).toEqual([]);

    const b = runWithSignal(['snapshot', 'nic0=sim:256MiB#usage-sig-snap2', '-o', file, '--leave-stopped'], 'SIGTERM', (o) => /STOP → STOP_COPY/.test(o));
    const rb = await b.done;
    expect(rb.code, rb.err).toBe(143);
    expect(rb.err).toContain('the devices return to the state they were in (--leave-stopped applies only to a snapshot that is written)');
    expect(rb.err).toMatch(/devices left: nic0 RUNNING\n/);
    expect(fs.readdirSync(tmp.path)).toEqual([]);
  });

  it('restore: the devices in RESUMING are reset; during --verify they are left untouched', async () => {
    const file = tmp.file('r.vfiosnap');
    const dev = openDevice('sim:256MiB#usage-restore-src');
    try {
      await saveSnapshot([{ id: 'nic0', device: dev }], file, { noSync: true });
    } finally {
      dev.close();
    }
    const a = runWithSignal(['restore', 'nic0=sim:256MiB:maxwrite=64KiB#usage-restore-a', '-i', file], 'SIGTERM', (o) => /→ RESUMING/.test(o));
    const ra = await a.done;
    expect(ra.code, ra.err).toBe(143);
    expect(ra.err).toContain('vfio-pci restore: SIGTERM: cancelling: the load stops; every device already in RESUMING is reset (VFIO_DEVICE_RESET → RUNNING: none runs the partial state)');
    expect(ra.err).toContain(`${file} is only read`);
    expect(ra.err).toMatch(/devices left: nic0 RUNNING \(reset\)\n/);

    const b = runWithSignal(['restore', 'nic0=sim:256MiB#usage-restore-b', '-i', file, '--verify'], 'SIGHUP', (o) => /verifying every chunk first/.test(o));
    const rb = await b.done;
    expect(rb.code, rb.err).toBe(129);
    expect(rb.err).toContain('one not yet touched is left as it was (as all are during --verify)');
    expect(rb.err).toMatch(/code: ECANCELED\n/);
    expect(rb.err).toMatch(/devices left: nic0 RUNNING \(untouched\)\n/);
    expect(rb.out).not.toMatch(/→ RESUMING/);
  });

  it('incoming while it waits: listening stops, the devices untouched; migrate in precopy: the source runs on, the destination resets', async () => {
    const sock = tmp.file('w.sock');
    const w = runWithSignal(['incoming', '--listen', `unix:${sock}`, 'sim:64KiB#usage-wait', '--json'], 'SIGINT', () => fs.existsSync(sock));
    const rw = await w.done;
    expect(rw.code, rw.err).toBe(130);
    expect(rw.err).toContain('vfio-pci incoming: SIGINT: cancelling: before a migration arrives, listening stops and the devices are left untouched');
    expect(json(rw.out).error).toMatchObject({ code: 'ECANCELED', deviceState: [{ state: 'RUNNING', touched: false }] });
    expect(fs.existsSync(sock)).toBe(false);

    const sock2 = tmp.file('m.sock');
    const inc = runCli('incoming', '--listen', `unix:${sock2}`, 'sim:64MiB#usage-mig-dst', '--json', '--timeout', '20000');
    for (let i = 0; i < 200 && !fs.existsSync(sock2); i++) await new Promise((r) => setTimeout(r, 10));
    const m = runWithSignal(['migrate', '--to', `unix:${sock2}`, 'sim:64MiB:churn=64MiB/s#usage-mig-src', '--max-iterations', '100000'], 'SIGINT', (o) => /→ PRE_COPY/.test(o));
    const rm = await m.done;
    expect(rm.code, rm.err).toBe(130);
    expect(rm.err).toContain("vfio-pci migrate: SIGINT: cancelling: until every device's state is sent, the migration stops, the destination is told (CANCEL, or sees the connection end) and resets its devices, and these run on with their state");
    expect(rm.err).toMatch(/devices left: sim:64MiB:churn=64MiB\/s#usage-mig-src RUNNING\n/);
    expect(rm.err).toMatch(/the source devices run on with their state; the destination/);
    const ri = await inc;
    expect(ri.code).toBe(1);
    // CANCEL, unless the signal cut a DATA frame short: then the connection ends mid-frame.
    expect(['EVFIO_PEER_CANCELLED', 'EVFIO_PEER_CLOSED']).toContain(json(ri.out).error.code);
    expect(json(ri.out).error.deviceState).toEqual([expect.objectContaining({ state: 'RUNNING', touched: true, reset: true })]);
  }, 30_000);
});

describe('migrate: the note says the destination reset its devices only when it had some to reset', () => {
  it('no destination, or one that refuses before anything is touched: no such note', async () => {
    const r = await runCli('migrate', '--to', `unix:${tmp.file('none.sock')}`, 'sim:64KiB#usage-nodst', '--json');
    expect(r.code).toBe(1);
    expect(json(r.out).error.deviceState).toEqual([{ device: 'sim:64KiB#usage-nodst', state: 'RUNNING', touched: false, reset: false }]);
    expect(json(r.out).notes).toBeUndefined();
    expect(r.err).not.toMatch(/destination reset/);

    const sock = tmp.file('refuse.sock');
    const inc = runCli('incoming', '--listen', `unix:${sock}`, 'sim:64KiB:devid=0x5f11#usage-refuse-dst', '--json', '--timeout', '10000');
    for (let i = 0; i < 200 && !fs.existsSync(sock); i++) await new Promise((r) => setTimeout(r, 10));
    const m = await runCli('migrate', '--to', `unix:${sock}`, 'sim:64KiB#usage-refuse-src', '--json');
    expect(m.code).toBe(1);
    expect(json(m.out).error).toMatchObject({ code: 'EVFIO_PEER_REFUSED', deviceState: [{ touched: false }] });
    expect(json(m.out).notes).toBeUndefined();
    expect((await inc).code).toBe(1);
  });

  it('a destination whose driver refuses the stream after it began: the note says it reset its devices', async () => {
    const sock = tmp.file('efault.sock');
    const inc = runCli('incoming', '--listen', `unix:${sock}`, 'sim:8KiB#usage-efault-dst', '--json', '--timeout', '10000');
    for (let i = 0; i < 200 && !fs.existsSync(sock); i++) await new Promise((r) => setTimeout(r, 10));
    const m = await runCli('migrate', '--to', `unix:${sock}`, 'sim:4KiB#usage-efault-src', '--json');
    expect(m.code).toBe(1);
    expect(json(m.out).error).toMatchObject({ code: 'EVFIO_PEER_FAILED', deviceState: [{ state: 'RUNNING', touched: true }] });
    expect(json(m.out).notes).toEqual(['the source devices run on with their state; the destination reset its devices']);
    expect(json((await inc).out).error).toMatchObject({ code: 'EFAULT', deviceState: [{ reset: true }] });
  });
});

describe('snapshot: a signal or a failure during the commit gets the note that is true', () => {
  // The commit's two fsyncs (the file's, then its directory's after the rename) through the
  // FileHandle prototype that fs.promises.open returns: `onSync(n)` runs at the n-th call.
  async function onSync(fn: (n: number) => void | Promise<void>): Promise<void> {
    const fh = await fs.promises.open(tmp.file('.probe'), 'w');
    const proto = Object.getPrototypeOf(fh) as { sync: () => Promise<void> };
    await fh.close();
    fs.unlinkSync(tmp.file('.probe'));
    const real = proto.sync;
    let n = 0;
    vi.spyOn(proto, 'sync').mockImplementation(async function (this: unknown) {
      await fn(++n);
      return real.call(this);
    });
  }
  afterEach(() => {
    vi.restoreAllMocks();
  });

  it('a signal during the file fsync (before the rename): no snapshot written, the temporary file removed', async () => {
    const file = tmp.file('c.vfiosnap');
    const signals = new EventEmitter();
    await onSync((n) => {
      if (n === 1) signals.emit('SIGINT');
    });
    const out = new PassThrough();
    const err = new PassThrough();
    let o = '';
    let e = '';
    out.on('data', (d) => (o += d));
    err.on('data', (d) => (e += d));
    const code = await main(['snapshot', 'sim:64KiB#usage-commit-a', '-o', file, '--json'], out, err, { signals: signals as never });
    expect(code, e).toBe(130);
    const j = json(o);
    expect(j).toMatchObject({ ok: false, signal: 'SIGINT', error: { code: 'ECANCELED', step: 'snapshot:commit' } });
    expect(j.notes).toEqual([`no snapshot was written: ${file} is as it was`]);
    expect(e).toContain(`no snapshot was written: ${file} is as it was`);
    expect(fs.readdirSync(tmp.path)).toEqual([]);
  });

  it('a signal during the directory fsync (after the rename): the snapshot completes, exit still the signal\'s', async () => {
    const file = tmp.file('d.vfiosnap');
    const signals = new EventEmitter();
    await onSync((n) => {
      if (n === 2) signals.emit('SIGTERM');
    });
    const out = new PassThrough();
    const err = new PassThrough();
    let o = '';
    let e = '';
    out.on('data', (d) => (o += d));
    err.on('data', (d) => (e += d));
    const code = await main(['snapshot', 'sim:64KiB#usage-commit-b', '-o', file, '--json'], out, err, { signals: signals as never });
    expect(code, e).toBe(143);
    expect(json(o)).toMatchObject({ ok: true, signal: 'SIGTERM', file });
    expect(e).toContain('vfio-pci snapshot: SIGTERM came after the last step that could be cancelled: the snapshot completed');
    expect(fs.readdirSync(tmp.path)).toEqual(['d.vfiosnap']);
  });

  it('the directory fsync failing after the rename: the note says the snapshot was written', async () => {
    const file = tmp.file('e.vfiosnap');
    fs.writeFileSync(file, 'old');
    await onSync((n) => {
      if (n === 2) throw Object.assign(new Error('EIO: i/o error, fsync'), { code: 'EIO', errno: -5, syscall: 'fsync' });
    });
    const r = await runCli('snapshot', 'sim:64KiB#usage-commit-c', '-o', file, '--json');
    expect(r.code).toBe(1);
    const j = json(r.out);
    expect(j.error).toMatchObject({ code: 'EIO', step: 'snapshot:commit' });
    expect(j.notes).toEqual([`the snapshot was written: ${file} is complete, but its directory could not be made durable (a crash may lose it)`]);
    expect(fs.statSync(file).size).toBeGreaterThan(64 * 1024);
  });
});

import { describe, it, expect } from 'vitest';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import { SnapshotReader } from '../../src/snapshot/reader';
import { SnapshotWriter } from '../../src/snapshot/writer';
import { getDefaultBinding, openDevice } from '../../src/kernel/open';
import { ReferenceHost } from '../../src/model/host/reference';
import { VfioPciDevice } from '../../src/model/vfio-pci';
import { MigrationCoordinator } from '../../src/vm/coordinator';
import { MigState } from '../../src/kernel/uapi/vfio';
import { runCli } from '../helpers/cli';
import { useTempDir } from '../helpers/temp-dir';

const tmp = useTempDir('cli', { each: true });

describe('vfio-pci CLI', () => {
  it('info --json has the documented shape', async () => {
    const r = await runCli('info', 'sim:1MiB#cli-info', '--json');
    expect(r.code).toBe(0);
    const j = JSON.parse(r.out);
    expect(j.migration).toEqual({ flags: ['STOP_COPY', 'P2P', 'PRE_COPY'], state: 'RUNNING', dataSize: expect.any(Number) });
    expect(j.regions.find((x: { name: string }) => x.name === 'CONFIG')).toMatchObject({ index: 7, offset: 7 * 2 ** 40 });
    expect(j.irqs.map((i: { name: string }) => i.name)).toEqual(['INTX', 'MSI', 'MSIX', 'ERR', 'REQ']);
    expect(j).toMatchObject({ dirtyTracking: 'device', dmaLoggingPageSize: 4096 });
  });

  it('info says how DMA writes are tracked: the driver-chosen logging page size, or none and why', async () => {
    const coarse = JSON.parse((await runCli('info', 'sim:dirtypage=2MiB#cli-dirty', '--json')).out);
    expect(coarse).toMatchObject({ dirtyTracking: 'device', dmaLoggingPageSize: 2 ** 21 });
    const none = await runCli('info', 'sim:dirty=off#cli-nodirty');
    expect(none.out).toMatch(/^ {2}dirty +none \(no DMA logging/m);
    const j = JSON.parse((await runCli('info', 'sim:dirty=off#cli-nodirty2', '--json')).out);
    expect(j).toMatchObject({ dirtyTracking: 'none', dmaLoggingPageSize: null, dirtyTrackingReason: expect.stringMatching(/no DMA logging/) });
  });

  it('info on a non-migratable device says so', async () => {
    const r = await runCli('info', 'sim:mig=off#cli-nomig');
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/migration +not supported/);
  });

  it('snapshot then restore in the same format, with arcs printed; inspect --json lists it', async () => {
    const file = tmp.file('a.vfiosnap');
    const s = await runCli('snapshot', 'sim:64KiB#cli-a', '-o', file);
    expect(s.code).toBe(0);
    expect(s.out).toMatch(/RUNNING → STOP {2}\[RUNNING→RUNNING_P2P, RUNNING_P2P→STOP\]/);
    expect(s.out).toMatch(/STOP → RUNNING/);
    const r = await runCli('restore', 'sim:64KiB#cli-b', '-i', file);
    expect(r.code, r.err).toBe(0);
    expect(r.out).toMatch(/now RUNNING/);
    const i = await runCli('inspect', file, '--json');
    expect(i.code).toBe(0);
    const j = JSON.parse(i.out);
    expect(j.ok).toBe(true);
    expect(j.devices).toHaveLength(1);
    expect(j.sections.map((x: { type: string }) => x.type)).toEqual(['DEVICE', 'CONFIG', 'DEVICE_STATE']);
  });

  it('restore of a file of another format version is refused with a clear message and exit 1', async () => {
    const file = tmp.file('v.vfiosnap');
    expect((await runCli('snapshot', 'sim:4KiB#cli-v', '-o', file, '-q')).code).toBe(0);
    const b = fs.readFileSync(file);
    b.writeUInt16LE(3, 8);
    b.writeUInt32LE(zlib.crc32(b.subarray(0, 28)) >>> 0, 28);
    fs.writeFileSync(file, b);
    const r = await runCli('restore', 'sim:4KiB#cli-w', '-i', file);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/format version 3 is not supported .*newer node-vfio-pci/);
    expect(r.err).toMatch(/code: EVFIO_SNAPSHOT_VERSION/);
  });

  it('usage errors exit 2', async () => {
    expect((await runCli()).code).toBe(2);
    expect((await runCli('frobnicate')).code).toBe(2);
    expect((await runCli('snapshot', 'sim')).code).toBe(2);
    expect((await runCli('info', 'sim', '--iommu', 'magic')).code).toBe(2);
    expect((await runCli('info', 'nonsense-device')).code).toBe(2);
  });

  it('snapshot of several devices without P2P is blocked (EVFIO_NO_P2P) before any is touched, unless --allow-non-p2p', async () => {
    const file = tmp.file('np.vfiosnap');
    const r = await runCli('snapshot', 'sim:4KiB:mig=stop_copy#np-a', 'sim:4KiB:mig=stop_copy#np-b', '-o', file);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/code: EVFIO_NO_P2P/);
    expect(r.err).toMatch(/devices left: sim:4KiB:mig=stop_copy#np-a RUNNING \(untouched\), sim:4KiB:mig=stop_copy#np-b RUNNING \(untouched\)/);
    expect(r.out).not.toMatch(/RUNNING →/); // no state change was made
    expect(fs.readdirSync(tmp.path)).toEqual([]);
    const ok = await runCli('snapshot', 'sim:4KiB:mig=stop_copy#np-a', 'sim:4KiB:mig=stop_copy#np-b', '-o', file, '--allow-non-p2p');
    expect(ok.code, ok.err).toBe(0);
    expect(ok.out).toMatch(/np-a: RUNNING → STOP {2}\[RUNNING→STOP\]/);
  });

  it('restore pairs devices by ID=, whatever their order, and refuses ids that do not pair', async () => {
    const file = tmp.file('ids.vfiosnap');
    expect((await runCli('snapshot', 'nic0=sim:4KiB:seed=1#ids-a', 'nic1=sim:4KiB:seed=2#ids-b', '-o', file, '-q')).code).toBe(0);
    const r = await runCli('restore', 'nic1=sim:4KiB#ids-d', 'nic0=sim:4KiB#ids-c', '-i', file);
    expect(r.code, r.err).toBe(0);
    expect(r.out).toMatch(/nic1 → sim:4KiB#ids-d: .* loaded; now RUNNING/);
    expect(r.out).toMatch(/nic0 → sim:4KiB#ids-c: .* loaded; now RUNNING/);
    const info = JSON.parse((await runCli('info', 'sim:4KiB#ids-d', '--json')).out);
    expect(info.migration.state).toBe('RUNNING');
    const bad = await runCli('restore', 'nic0=sim:4KiB#ids-e', 'nic2=sim:4KiB#ids-f', '-i', file);
    expect(bad.code).toBe(1);
    expect(bad.err).toMatch(/no saved state for nic2; no device for the saved nic1/);
    expect(bad.err).toMatch(/code: EVFIO_DEVICE_MISMATCH/);
    // Without ids, one DEVICE pairs only with a one-device snapshot.
    const one = await runCli('restore', 'sim:4KiB#ids-g', '-i', file);
    expect(one.code).toBe(1);
    expect(one.err).toMatch(/no saved state for sim:4KiB#ids-g/);
  });

  it('restore of a device-model snapshot (PCI_MODEL) is refused, the device untouched (EVFIO_NEEDS_MODEL)', async () => {
    const file = tmp.file('vm.vfiosnap');
    const host = new ReferenceHost(getDefaultBinding());
    const dev = openDevice('sim:4KiB#model-src');
    const nic = VfioPciDevice.attach(dev, host, { id: 'nic0' });
    try {
      const vm = new MigrationCoordinator([nic]);
      await vm.pause();
      await vm.snapshot(file, { noSync: true });
      await vm.resume();
    } finally {
      nic.detach();
      dev.close();
      host.close();
    }
    const r = await runCli('restore', 'nic0=sim:4KiB#model-dst', '-i', file);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/code: EVFIO_NEEDS_MODEL/);
    expect(r.err).toMatch(/PCI_MODEL/);
    expect(r.err).toMatch(/devices left: nic0 RUNNING \(untouched\)/);
    expect(r.out).not.toMatch(/RUNNING →/);
  });

  it('demo runs the whole cycle on the device model', async () => {
    const r = await runCli('demo', '--size', '1MiB');
    expect(r.code, r.err).toBe(0);
    expect(r.out).toMatch(/RUNNING → RESUMING {2}\[RUNNING→RUNNING_P2P, RUNNING_P2P→STOP, STOP→RESUMING\]/);
    expect(r.out).toMatch(/PCI_COMMAND 0x6 pushed, MSIX re-armed/);
    expect(r.out).toMatch(/done: destination registers match/);
  });
});

describe('vfio-pci CLI: a conventional command line', () => {
  it('--help lists every command; help CMD and CMD --help show that command only (exit 0)', async () => {
    const top = await runCli('--help');
    expect(top.code).toBe(0);
    for (const c of ['info', 'snapshot', 'restore', 'inspect', 'demo', 'help']) expect(top.out).toMatch(new RegExp(`^  ${c} `, 'm'));
    expect(top.out).toMatch(/Exit status: 0 success, 1 failure, 2 usage error/);
    for (const argv of [['help', 'restore'], ['restore', '--help'], ['restore', '-h']]) {
      const r = await runCli(...argv);
      expect(r.code, argv.join(' ')).toBe(0);
      expect(r.out).toMatch(/^Usage: vfio-pci restore \[options\] <devices\.\.\.>/);
      expect(r.out).toMatch(/-i, --input <file>/);
      expect(r.out).toMatch(/--verify/);
      expect(r.out).not.toMatch(/Commands:/);
    }
    const snap = await runCli('help', 'snapshot');
    expect(snap.out).toMatch(/--leave-stopped/);
    expect(snap.out).toMatch(/Whether they are still in STOP\s+after vfio-pci exits/);
    expect((await runCli('help')).code).toBe(0);
  });

  it('--version prints the package version', async () => {
    const r = await runCli('--version');
    expect(r.code).toBe(0);
    expect(r.out).toBe(`${JSON.parse(fs.readFileSync(path.join(__dirname, '../../package.json'), 'utf8')).version}\n`);
  });

  it("options that are not a command's are refused with exit 2, naming the option, without EVFIO_USAGE noise", async () => {
    const cases: Array<[string[], RegExp]> = [
      [['info', 'sim', '--index', '3'], /unknown option '--index'/],
      [['inspect', 'x.vfiosnap', '--iommu', 'legacy'], /unknown option '--iommu'/],
      [['demo', '-o', 'x'], /unknown option '-o'/],
      [['snapshot', 'sim', '-o', 'x', '--verify'], /unknown option '--verify'/],
      [['restore', 'sim', '-i', 'x', '--leave-stopped'], /unknown option '--leave-stopped'/],
      [['snapshot', 'sim'], /required option '-o, --output <file>' not specified/],
      [['info', 'sim', '--iommu', 'magic'], /'magic' is invalid\. Allowed choices are iommufd, legacy/],
      [['info'], /missing required argument 'device'/],
      [['info', 'sim', 'sim'], /too many arguments/],
      [['frobnicate'], /unknown command 'frobnicate'/],
    ];
    for (const [argv, msg] of cases) {
      const r = await runCli(...argv);
      expect(r.code, argv.join(' ')).toBe(2);
      expect(r.err, argv.join(' ')).toMatch(msg);
      expect(r.err).toMatch(/^vfio-pci/);
      expect(r.err).not.toMatch(/EVFIO_USAGE|code:/);
      expect(r.out).toBe('');
    }
  });

  it('no command prints the help on stderr and exits 2', async () => {
    const r = await runCli();
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/Commands:/);
  });

  it('a malformed sim spec is a usage error that says what is wrong, not the simulated kernel\'s EINVAL', async () => {
    for (const [spec, why] of [['sim:abc', /bad size "abc"/], ['sim:1MiB:colour=red', /unknown sim spec key "colour"/], ['nic0=sim#bad name', /bad device name/]] as const) {
      const r = await runCli('info', spec);
      expect(r.code, spec).toBe(2);
      expect(r.err).toMatch(/is not a valid simulated-device spec/);
      expect(r.err).toMatch(why);
      expect(r.err).not.toMatch(/EINVAL|syscall/);
    }
  });

  it('info shows PCI identity, driver, IOMMU group and migration; --json has the same fields', async () => {
    const r = await runCli('info', 'sim:1MiB:devid=0x5f11#cli-id');
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^ {2}pci {8}1234:5f11 rev 01, subsystem 1234:\w{4}, class 120000$/m);
    expect(r.out).toMatch(/^ {2}driver {5}- \(simulated device\)$/m);
    expect(r.out).toMatch(/^ {2}iommu {6}none: a simulated device \(sim\), no IOMMU group or cdev$/m);
    expect(r.out).toMatch(/^ {2}migration {2}STOP_COPY\|P2P\|PRE_COPY, state RUNNING, stop-copy size \d+ bytes$/m);
    const j = JSON.parse((await runCli('info', 'sim:1MiB:devid=0x5f11#cli-id', '--json')).out);
    expect(j).toMatchObject({
      ok: true, device: 'sim:1MiB:devid=0x5f11#cli-id', iommu: 'virtual',
      pci: { id: '1234:5f11', vendor: '1234', deviceId: '5f11', class: '120000', revision: '01', subsystem: expect.stringMatching(/^1234:[0-9a-f]{4}$/) },
      driver: null, iommuGroup: null, groupFile: null, cdev: null, sysfs: null, simulated: 'sim',
      migration: { flags: ['STOP_COPY', 'P2P', 'PRE_COPY'], state: 'RUNNING' },
    });
  });
});

describe('vfio-pci CLI: --json on every command', () => {
  /** stdout must be exactly one JSON object. */
  function one(out: string): Record<string, any> {
    const j = JSON.parse(out);
    expect(typeof j).toBe('object');
    return j;
  }

  it('snapshot, restore, inspect, demo: one object with ok, the result and the state changes', async () => {
    const file = tmp.file('j.vfiosnap');
    const s = await runCli('snapshot', 'nic0=sim:64KiB#json-a', '-o', file, '--json');
    expect(s.code, s.err).toBe(0);
    const sj = one(s.out);
    expect(sj).toMatchObject({ ok: true, file, devices: [{ id: 'nic0', device: 'sim:64KiB#json-a', stateBytes: expect.any(Number), configBytes: 4096, state: 'RUNNING' }] });
    expect(sj.transitions.map((t: { from: string; to: string }) => `${t.from}>${t.to}`)).toEqual(['RUNNING>STOP', 'STOP>STOP_COPY', 'STOP_COPY>STOP', 'STOP>RUNNING']);
    expect(sj.transitions[0].path).toEqual(['RUNNING', 'RUNNING_P2P', 'STOP']);
    const r = await runCli('restore', 'nic0=sim:64KiB#json-b', '-i', file, '--json');
    expect(r.code, r.err).toBe(0);
    expect(one(r.out)).toMatchObject({ ok: true, file, devices: [{ id: 'nic0', from: 'nic0', device: 'sim:64KiB#json-b', state: 'RUNNING', stateBytes: sj.devices[0].stateBytes }] });
    const i = one((await runCli('inspect', file, '--json')).out);
    expect(i).toMatchObject({ ok: true, file, devices: [{ name: 'nic0' }] });
    const d = await runCli('demo', '--size', '1MiB', '--json'); // the demo's named devices are 1 MiB in this process already
    expect(d.code, d.err).toBe(0);
    expect(one(d.out)).toMatchObject({ ok: true, stateBytes: expect.any(Number), interrupts: { source: expect.any(Number), destination: expect.any(Number) } });
  });

  it('an error is one object with the VfioError fields, deviceState included (exit 1)', async () => {
    const r = await runCli('snapshot', 'sim:4KiB:mig=stop_copy#jnp-a', 'sim:4KiB:mig=stop_copy#jnp-b', '-o', tmp.file('x.vfiosnap'), '--json');
    expect(r.code).toBe(1);
    const j = one(r.out);
    expect(j.ok).toBe(false);
    expect(j.error).toMatchObject({
      code: 'EVFIO_NO_P2P', kind: 'unsupported', step: 'snapshot', message: expect.stringMatching(/cannot quiesce peer-to-peer traffic/),
      deviceState: [
        { device: 'sim:4KiB:mig=stop_copy#jnp-a', state: 'RUNNING', touched: false, reset: false },
        { device: 'sim:4KiB:mig=stop_copy#jnp-b', state: 'RUNNING', touched: false, reset: false },
      ],
    });
    expect(j.notes).toEqual([expect.stringMatching(/no snapshot was written/)]);
  });

  it('a usage error is one object too (exit 2)', async () => {
    for (const argv of [['info', 'sim', '--index', '3', '--json'], ['info', 'sim:abc', '--json'], ['info', 'nonsense-device', '--json']]) {
      const r = await runCli(...argv);
      expect(r.code, argv.join(' ')).toBe(2);
      const j = one(r.out);
      expect(j).toMatchObject({ ok: false, error: { kind: 'usage', code: expect.stringMatching(/^EVFIO_(USAGE|NO_DEVICE)$/), message: expect.any(String) } });
    }
  });

  it('migrate of a device left in STOP: refused before its HELLO, the note does not claim it runs on; incoming reports why', async () => {
    const sock = `unix:${tmp.file('stopped.sock')}`;
    // Held open in STOP here (the simulator, like vfio-pci, puts a released device back in RUNNING).
    const held = openDevice('sim:64KiB#cli-stopped');
    await held.migration!.setState(MigState.STOP);
    const inc = runCli('incoming', '--listen', sock, 'sim:64KiB#cli-stopped-dst', '--json', '--timeout', '10000');
    for (let i = 0; i < 200 && !fs.existsSync(sock.slice(5)); i++) await new Promise((r) => setTimeout(r, 10));
    const mig = await runCli('migrate', '--to', sock, 'sim:64KiB#cli-stopped', '--json');
    expect(mig.code).toBe(1);
    const mj = one(mig.out);
    expect(mj.error).toMatchObject({ code: 'EVFIO_BAD_TRANSITION', deviceState: [{ device: 'sim:64KiB#cli-stopped', state: 'STOP', touched: false }] });
    expect(mj.notes).toBeUndefined();
    const ij = one((await inc).out);
    expect(ij.error).toMatchObject({ code: 'EVFIO_PEER_FAILED', message: expect.stringMatching(/live migration needs running devices/) });
    expect(held.migration!.getState()).toBe(MigState.STOP);
    held.close();
  });

  it('inspect of a bad file: ok false and the first problem, exit 1', async () => {
    const file = tmp.file('bad.vfiosnap');
    fs.writeFileSync(file, Buffer.alloc(100));
    const r = await runCli('inspect', file, '--json');
    expect(r.code).toBe(1);
    expect(one(r.out)).toMatchObject({ ok: false, error: { code: expect.stringMatching(/^EVFIO_/) } });
  });
});

describe('vfio-pci restore: what is checked when', () => {
  /** A one-device snapshot of `spec` with a payload byte of its state flipped (its checksum no longer matches). */
  async function corrupted(spec: string): Promise<string> {
    const file = tmp.file('c.vfiosnap');
    expect((await runCli('snapshot', spec, '-o', file, '-q')).code).toBe(0);
    const b = fs.readFileSync(file);
    b[Math.floor(b.length / 2)] ^= 0xff; // in the middle of the 1 MiB state: a chunk's payload
    fs.writeFileSync(file, b);
    return file;
  }

  it('a corrupt state chunk is found as it is loaded: the device was in RESUMING and is reset', async () => {
    const file = await corrupted('sim:1MiB#vf-a');
    const r = await runCli('restore', 'sim:1MiB#vf-b', '-i', file, '--json');
    expect(r.code).toBe(1);
    const j = JSON.parse(r.out);
    expect(j.error).toMatchObject({ code: 'EVFIO_SNAPSHOT_CHECKSUM', kind: 'format', deviceState: [{ state: 'RUNNING', touched: true, reset: true }] });
    expect(j.error.message).toMatch(/nothing of it was written to the device/);
    expect(JSON.parse((await runCli('info', 'sim:1MiB#vf-b', '--json')).out).migration.state).toBe('RUNNING');
  });

  it('--verify finds it before any device is touched', async () => {
    const file = await corrupted('sim:1MiB#vf-c');
    const r = await runCli('restore', 'sim:1MiB#vf-d', '-i', file, '--verify');
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/code: EVFIO_SNAPSHOT_CHECKSUM/);
    expect(r.err).toMatch(/step: restore:verify/);
    expect(r.err).toMatch(/devices left: sim:1MiB#vf-c RUNNING \(untouched\)/);
    expect(r.out).not.toMatch(/→ RESUMING/);
    // A good file restores with --verify.
    const good = tmp.file('g.vfiosnap');
    expect((await runCli('snapshot', 'sim:1MiB#vf-e', '-o', good, '-q')).code).toBe(0);
    expect((await runCli('restore', 'sim:1MiB#vf-f', '-i', good, '--verify', '-q')).code).toBe(0);
  });

  it('a driver refusing the saved state (EFAULT / ENOMEM on the data_fd write) is said so, errno and code kept', async () => {
    const small = tmp.file('small.vfiosnap');
    const long = tmp.file('long.vfiosnap');
    expect((await runCli('snapshot', 'sim:4KiB#rf-a', '-o', small, '-q')).code).toBe(0);
    // The same stream with 100 bytes after its end, in a file whose own checksums hold.
    const r0 = await SnapshotReader.open(small);
    const w = await SnapshotWriter.create(long, { noSync: true });
    for (const sec of r0.sections) {
      if (!sec.chunks) {
        await w.writeSection(sec.header.type, sec.header.device, r0.body(sec));
        continue;
      }
      await w.beginSection(sec.header.type, sec.header.device);
      for await (const c of r0.chunks(sec)) await w.writeChunk(Buffer.from(c));
      await w.writeChunk(Buffer.alloc(100, 0xab));
      await w.endSection();
    }
    await w.commit();
    await r0.close();
    // The simulated driver checks the stream's header against its own device (its state size:
    // EFAULT), and refuses bytes past the stream's end (ENOMEM), as mtty does.
    for (const [into, file, code, errno] of [['sim:8KiB#rf-c', small, 'EFAULT', 14], ['sim:4KiB#rf-d', long, 'ENOMEM', 12]] as const) {
      const r = await runCli('restore', into, '-i', file, '--json');
      expect(r.code).toBe(1);
      const j = JSON.parse(r.out);
      expect(j.error).toMatchObject({ code, errno, syscall: 'write', step: 'load:write', op: 'data_fd write' });
      expect(j.error.message).toMatch(/^the destination driver refused the saved state while it was being written \(a different device type, firmware or driver version\?\): write on data_fd failed/);
      expect(r.err).toMatch(new RegExp(`code: ${code}\\n  errno: ${errno}`));
    }
  });
});

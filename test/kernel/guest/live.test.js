// Live migration (issue 9) on the real kernel: two processes in the guest, over loopback TCP and
// a unix socket, on mtty mdevs (VFIO migration v2 with PRE_COPY and P2P). `vfio-pci incoming`
// and `vfio-pci migrate` as users run them; where the source must stay in precopy long enough
// to lose its destination, a source that never converges (live-source.js, the same job).
//
// mtty facts used (../shared/kernel-vfio/README.md): PRE_COPY hands out the 24-byte header
// (initial_bytes=24), STOP_COPY the remaining 36 bytes per port (72 for mtty-2); the state
// survives close and reopen of the device, so the parent programs and checks it between the
// children's opens.
'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const os = require('node:os');
const fs = require('node:fs');
const { ROOT, lib, programUart, uartRegs, drainFifo, freshMdev, loopbackUp, spawnNode } = require('./helpers');

const { openDevice } = lib('kernel/open');
const { MigState, migStateName } = lib('kernel/uapi/vfio');
const s = lib('kernel/uapi/structs');
const v = lib('kernel/uapi/vfio');
const { recordOf, rawConfig, regionSizes } = lib('model/migratable');
const { saveSnapshot, restoreSnapshot } = lib('vm/jobs');
const { compareConfig, destinationConfig } = lib('model/pci/compare');
const { VfioPciDevice } = lib('model/vfio-pci');
const { ReferenceHost } = lib('model/host/reference');
const { MigrationCoordinator } = lib('vm/coordinator');
const { listen } = lib('live');

test.before(loopbackUp);

const TRANSPORTS = [
  { name: 'loopback TCP', tag: 'tcp', uri: () => 'tcp:127.0.0.1:0' },
  { name: 'a unix socket', tag: 'unix', uri: (what) => `unix:/tmp/live-${what}.sock` },
];
/** Bound of each test: a hang fails it with the children's output instead of the harness timeout. */
const TIMEOUT = { timeout: 120_000 };

const vfioPci = (args, env) => spawnNode([path.join(ROOT, 'bin/vfio-pci.js'), ...args], env);

/** `vfio-pci incoming --listen URI ...devices --json`, once it listens; `uri` is where (the port of tcp:...:0 resolved). */
async function incoming(uri, devices) {
  const c = vfioPci(['incoming', '--listen', uri, ...devices, '--json'], { DEBUG: 'vfio:live,vfio:migration' });
  const m = await c.waitErr(/listening on (\S+)/);
  return Object.assign(c, { uri: m[1] });
}

/** Open `uuid` for a moment: its migration state name and UART registers. */
function look(uuid) {
  const d = openDevice(uuid);
  try {
    return { state: migStateName(d.migration.getState()), regs: uartRegs(d) };
  } finally {
    d.close();
  }
}
function program(uuid, seed, text) {
  const d = openDevice(uuid);
  try {
    programUart(d, seed, text);
    return uartRegs(d);
  } finally {
    d.close();
  }
}
/** Pop `text`.length + 1 bytes of each port's loopback FIFO (destructive). */
function fifo(uuid, text) {
  const d = openDevice(uuid);
  try {
    return drainFifo(d, text.length + 1);
  } finally {
    d.close();
  }
}
const portTexts = (text) => [`${text}0`, `${text}1`];

/** Run `fn(mdevs)` on fresh mdevs of `types`; the children are stopped and the mdevs removed after. */
async function withMdevs(types, fn) {
  const mdevs = [];
  const children = [];
  try {
    for (const t of types) mdevs.push(freshMdev(t));
    return await fn(mdevs.map((m) => m.uuid), (c) => (children.push(c), c));
  } finally {
    // A child still holding a device would make its removal wait.
    await Promise.all(children.map((c) => c.stop()));
    for (const m of mdevs) m.remove();
  }
}

/** The state changes a process logged (DEBUG=vfio:migration), as 'FROM → TO'. */
const stateLines = (stderr) => [...stderr.matchAll(/ vfio:migration \S+: (\S+ → \S+) via /g)].map((m) => m[1]);
const arcs = (transitions) => transitions.map((t) => `${t.device}:${t.from}>${t.to}`);

for (const t of TRANSPORTS) {
  test(`over ${t.name}: two devices migrate together; PRE_COPY carries each one's 24 initial bytes before the switchover, both reach PRE_COPY_P2P before any STOP_COPY, the destination runs with the source's registers and FIFO`, TIMEOUT, async () => {
    await withMdevs(['mtty-2', 'mtty-2', 'mtty-2', 'mtty-2'], async ([s0, s1, d0, d1], child) => {
      const texts = [`nic0-${t.tag}`, `nic1-${t.tag}`];
      const regs = [program(s0, 0x40, texts[0]), program(s1, 0x60, texts[1])];
      const dst = child(await incoming(t.uri('pair'), [`nic0=${d0}`, `nic1=${d1}`]));
      const src = child(vfioPci(['migrate', '--to', dst.uri, `nic0=${s0}`, `nic1=${s1}`, '--json'], { DEBUG: 'vfio:engine:live,vfio:live,vfio:migration' }));
      const [se, de] = await Promise.all([src.exit, dst.exit]);
      assert.equal(se.code, 0, `migrate: ${src.err()}`);
      assert.equal(de.code, 0, `incoming: ${dst.err()}`);
      const sj = JSON.parse(src.out());
      const dj = JSON.parse(dst.out());

      // PRE_COPY moved mtty's header (initial_bytes=24) per device, the switchover the rest.
      assert.deepEqual(sj.devices.map((d) => [d.id, d.precopyBytes, d.stopCopyBytes, d.state]), [['nic0', 24, 72, 'STOP'], ['nic1', 24, 72, 'STOP']]);
      assert.deepEqual([sj.precopyBytes, sj.stopCopyBytes, sj.totalBytes], [48, 144, 192]);
      assert.equal(sj.destinationResumed, true);
      assert.ok(sj.iterations >= 1);
      assert.deepEqual([dj.precopyBytes, dj.stopCopyBytes, dj.totalBytes, dj.iterations], [48, 144, 192, sj.iterations]);
      assert.deepEqual(dj.devices.map((d) => [d.from, d.device, d.stateBytes, d.state]), [['nic0', d0, 96, 'RUNNING'], ['nic1', d1, 96, 'RUNNING']]);
      // ... and before the switchover: in the source's own log, each device's initial data was
      // sent, then the destination acknowledged loading it, and only then did a device leave PRE_COPY.
      const log = src.err().split('\n');
      const at = (re) => log.findIndex((l) => re.test(l));
      const ack = at(/ vfio:live \S+: switchover-ack$/);
      const leave = at(/ vfio:migration \S+: PRE_COPY → /);
      for (const id of ['nic0', 'nic1']) {
        const sent = at(new RegExp(` vfio:engine:live ${id}: initial data sent \\(24 bytes so far\\)$`));
        assert.ok(sent >= 0 && sent < ack, `${id}: initial data sent (line ${sent}) before the switchover-ack (line ${ack})`);
      }
      assert.ok(ack >= 0 && ack < leave, `switchover-ack (line ${ack}) before any device left PRE_COPY (line ${leave})`);

      // P2P: every device quiesced (PRE_COPY_P2P) before any stops (STOP_COPY), each request one
      // arc of the kernel's state machine; STOP only after every device's data was sent.
      assert.deepEqual(arcs(sj.transitions), [
        'nic0:RUNNING>PRE_COPY', 'nic1:RUNNING>PRE_COPY',
        'nic0:PRE_COPY>PRE_COPY_P2P', 'nic1:PRE_COPY>PRE_COPY_P2P',
        'nic0:PRE_COPY_P2P>STOP_COPY', 'nic1:PRE_COPY_P2P>STOP_COPY',
        'nic0:STOP_COPY>STOP', 'nic1:STOP_COPY>STOP',
      ]);
      for (const x of sj.transitions) assert.deepEqual(x.path, [x.from, x.to], `${x.device}: ${x.path.join('→')} is one arc`);
      assert.deepEqual(arcs(dj.transitions).slice(0, 2), ['nic0:RUNNING>RESUMING', 'nic1:RUNNING>RESUMING']);

      // The destination devices run with the source's state; the source devices stay in STOP.
      for (const [i, d] of [d0, d1].entries()) {
        assert.deepEqual(look(d), { state: 'RUNNING', regs: regs[i] }, `destination nic${i}`);
        assert.deepEqual(fifo(d, texts[i]), portTexts(texts[i]), `destination nic${i} FIFO`);
      }
      assert.deepEqual([look(s0).state, look(s1).state], ['STOP', 'STOP']);
    });
  });

  test(`over ${t.name}: a receiver killed (SIGKILL) while the source is in precopy leaves the source device RUNNING with its registers and FIFO; the receiver's device stays in RESUMING, and the next load into it resets it first`, TIMEOUT, async () => {
    await withMdevs(['mtty-2', 'mtty-2'], async ([sd, dd], child) => {
      const text = `kill-${t.tag}`;
      const regs = program(sd, 0x24, text);
      const dst = child(await incoming(t.uri('kill'), [`dev0=${dd}`]));
      const src = child(spawnNode([path.join(__dirname, 'live-source.js'), dst.uri, `dev0=${sd}`]));
      // Mid-way: handshake done, the destination in RESUMING with the initial data loaded (its
      // SWITCHOVER_ACK arrived), the source in PRE_COPY and iterating, not converging.
      const acked = JSON.parse((await src.waitOut(/^\{"event":"acked".*$/m))[0]);
      assert.deepEqual(acked.states, ['PRE_COPY']);
      assert.equal(acked.pending.ackReceived, true);
      assert.equal(acked.pending.ready, false);
      await dst.waitErr(/ vfio:migration \S+: RUNNING → RESUMING /, 5000);

      const killedAt = Date.now();
      dst.proc.kill('SIGKILL');
      assert.equal((await dst.exit).signal, 'SIGKILL');
      const se = await src.exit;
      const ms = Date.now() - killedAt;
      assert.equal(se.code, 1, src.err());
      const end = JSON.parse(src.out().trim().split('\n').pop());
      assert.equal(end.event, 'end');
      // The source saw the connection end (it did not wait for its 10 s peer timeout).
      assert.ok(['EVFIO_PEER_CLOSED', 'ECONNRESET', 'EPIPE'].includes(end.error.code), JSON.stringify(end.error));
      assert.ok(ms < 8000, `the source gave up ${ms} ms after the kill`);
      assert.deepEqual(end.error.deviceState, [{ device: 'dev0', state: 'RUNNING', touched: true, reset: false }]);
      // Never stopped: PRE_COPY straight back to RUNNING (no P2P, no STOP_COPY), no reset.
      assert.deepEqual(end.transitions, ['dev0:RUNNING>PRE_COPY', 'dev0:PRE_COPY>RUNNING']);
      assert.deepEqual(end.states, ['RUNNING']);
      assert.deepEqual(look(sd), { state: 'RUNNING', regs });
      assert.deepEqual(fifo(sd, text), portTexts(text));

      // Nothing reset the killed receiver's device: mtty keeps it in RESUMING after the last
      // close. Asking for RESUMING again is "no change" to the kernel (success, no data_fd), so a
      // new load could not start from there: the engine resets such a device first, and the
      // next load into it works.
      const d = openDevice(dd);
      try {
        assert.equal(d.migration.getState(), MigState.RESUMING);
        const b = s.encodeMigStateSet(MigState.RESUMING);
        d.ioctl(v.VFIO_DEVICE_FEATURE, b);
        assert.equal(s.decodeMigState(b).dataFd, -1);
      } finally {
        d.close();
      }
      const file = path.join(os.tmpdir(), `live-leftover-${process.pid}.vfiosnap`);
      try {
        const again = openDevice(dd);
        const from = openDevice(sd);
        try {
          await saveSnapshot([from], file, { noSync: true });
          const recovered = [];
          const r = await restoreSnapshot(again, file, { onState: (c) => recovered.push(`${migStateName(c.from)}>${migStateName(c.to)}`) });
          assert.equal(r.devices[0].stateBytes, 96);
          assert.deepEqual(recovered, ['RUNNING>RESUMING', 'RESUMING>RUNNING']);
          assert.equal(again.migration.getState(), MigState.RUNNING);
        } finally {
          again.close();
          from.close();
        }
      } finally {
        fs.rmSync(file, { force: true });
      }
    });
  });

  test(`over ${t.name}: an mtty-1 destination for an mtty-2 source is refused in the handshake (same identity, config spaces equal under mtty-1's masks, but BAR1 is 8 bytes on the source and absent here): the source device never leaves RUNNING`, TIMEOUT, async () => {
    await withMdevs(['mtty-2', 'mtty-1'], async ([sd, dd], child) => {
      // Why config bytes alone cannot tell them apart: the identity is the same (4348:3253,
      // class 070002), the raw config spaces differ only at 0x14 (BAR1: an I/O BAR on mtty-2,
      // absent on mtty-1), and the destination's masks compare only its present BARs (QEMU's
      // pci_register_bar() rule). So the HELLO carries the region sizes, and they differ.
      const src = openDevice(sd);
      const dst = openDevice(dd);
      try {
        const rec = recordOf(src, 'dev0');
        const mine = rawConfig(dst);
        assert.deepEqual(rec.identity, recordOf(dst, 'dev0').identity);
        const differ = [...rec.config.keys()].filter((i) => rec.config[i] !== mine[i]);
        assert.deepEqual(differ, [0x14]);
        assert.deepEqual(compareConfig(rec.config, destinationConfig(mine, regionSizes(dst))), []);
        assert.deepEqual([rec.regions.barSizes[1], dst.regionSize(1)], [8, 0]);
      } finally {
        src.close();
        dst.close();
      }
      const text = `mix-${t.tag}`;
      const regs = program(sd, 0x5a, text);
      const inc = child(await incoming(t.uri('mix'), [`dev0=${dd}`]));
      const mig = child(vfioPci(['migrate', '--to', inc.uri, `dev0=${sd}`, '--json'], { DEBUG: 'vfio:migration' }));
      const [se, de] = await Promise.all([mig.exit, inc.exit]);
      assert.equal(se.code, 1, mig.err());
      assert.equal(de.code, 1, inc.err());
      const dj = JSON.parse(inc.out());
      assert.equal(dj.error.code, 'EVFIO_DEVICE_MISMATCH');
      assert.match(dj.error.message, /BAR1 8 bytes on the source, absent here/);
      assert.deepEqual(dj.error.deviceState, [{ device: 'dev0', state: 'RUNNING', touched: false, reset: false }]);
      const sj = JSON.parse(mig.out());
      assert.deepEqual([sj.error.code, sj.error.kind], ['EVFIO_PEER_REFUSED', 'mismatch']);
      assert.deepEqual(sj.error.deviceState, [{ device: 'dev0', state: 'RUNNING', touched: false, reset: false }]);
      assert.deepEqual(stateLines(mig.err()), [], 'no state request on the source device');
      assert.deepEqual(look(sd), { state: 'RUNNING', regs });
      assert.deepEqual(fifo(sd, text), portTexts(text));
      assert.equal(look(dd).state, 'RUNNING');
    });
  });
}

test('over a unix socket: an mtty-2 destination for an mtty-1 source is refused in the handshake (BAR1 present here, absent on the source): the source device never leaves RUNNING', TIMEOUT, async () => {
  await withMdevs(['mtty-1', 'mtty-2'], async ([sd, dd], child) => {
    const text = 'rev';
    const regs = program(sd, 0x77, text);
    const inc = child(await incoming('unix:/tmp/live-rev.sock', [`dev0=${dd}`]));
    const mig = child(vfioPci(['migrate', '--to', inc.uri, `dev0=${sd}`, '--json'], { DEBUG: 'vfio:migration' }));
    const [se, de] = await Promise.all([mig.exit, inc.exit]);
    assert.equal(se.code, 1, mig.err());
    assert.equal(de.code, 1, inc.err());
    const dj = JSON.parse(inc.out());
    assert.equal(dj.error.code, 'EVFIO_DEVICE_MISMATCH');
    assert.match(dj.error.message, /BAR1 absent on the source, 8 bytes here/);
    assert.deepEqual(dj.error.deviceState, [{ device: 'dev0', state: 'RUNNING', touched: false, reset: false }]);
    const sj = JSON.parse(mig.out());
    assert.deepEqual([sj.error.code, sj.error.kind], ['EVFIO_PEER_REFUSED', 'mismatch']);
    assert.deepEqual(sj.error.deviceState, [{ device: 'dev0', state: 'RUNNING', touched: false, reset: false }]);
    assert.deepEqual(stateLines(mig.err()), [], 'no state request on the source device');
    assert.deepEqual(look(sd), { state: 'RUNNING', regs });
    assert.deepEqual(fifo(sd, text), [`${text}0`]);
  });
});

// Cancels by signal. The source is live-source.js (migrateDevices, the job `vfio-pci migrate`
// runs, held in precopy; SIGINT aborts its AbortSignal), the destination `vfio-pci incoming`
// (SIGINT: the CLI's own handling, exit 130). The cancelled side tells its peer CANCEL; the peer
// reports EVFIO_PEER_CANCELLED; the source device runs on with its registers and FIFO, the
// destination device is reset.
for (const side of ['source', 'destination']) {
  test(`over a unix socket: SIGINT to the ${side} in precopy: the other side hears CANCEL (EVFIO_PEER_CANCELLED); the source device RUNNING with its registers, the destination's reset`, TIMEOUT, async () => {
    await withMdevs(['mtty-2', 'mtty-2'], async ([sd, dd], child) => {
      const text = `sig-${side.slice(0, 3)}`; // with the port digit within mtty's FIFO trigger level
      const regs = program(sd, 0x31, text);
      const dst = child(await incoming(`unix:/tmp/live-sig-${side}.sock`, [`dev0=${dd}`]));
      const src = child(spawnNode([path.join(__dirname, 'live-source.js'), dst.uri, `dev0=${sd}`]));
      await src.waitOut(/^\{"event":"acked".*$/m);
      await dst.waitErr(/ vfio:migration \S+: RUNNING → RESUMING /, 5000);
      (side === 'source' ? src : dst).proc.kill('SIGINT');
      const [se, de] = await Promise.all([src.exit, dst.exit]);
      assert.equal(se.code, 1, src.err());
      const end = JSON.parse(src.out().trim().split('\n').pop());
      if (side === 'source') {
        assert.equal(end.error.code, 'ECANCELED', src.out());
        assert.equal(de.code, 1, dst.err());
        assert.equal(JSON.parse(dst.out()).error.code, 'EVFIO_PEER_CANCELLED', dst.out());
      } else {
        assert.equal(de.code, 130, dst.err());
        assert.equal(end.error.code, 'EVFIO_PEER_CANCELLED', src.out());
      }
      assert.deepEqual(end.transitions, ['dev0:RUNNING>PRE_COPY', 'dev0:PRE_COPY>RUNNING']);
      assert.deepEqual(look(sd), { state: 'RUNNING', regs });
      assert.deepEqual(fifo(sd, text), portTexts(text));
      assert.equal(look(dd).state, 'RUNNING');
    });
  });
}

test('over a unix socket: a source killed (SIGKILL) in precopy: the destination sees the connection end at once, resets its device and exits 1', TIMEOUT, async () => {
  await withMdevs(['mtty-2', 'mtty-2'], async ([sd, dd], child) => {
    program(sd, 0x42, 'gone');
    const dst = child(await incoming('unix:/tmp/live-srckill.sock', [`dev0=${dd}`]));
    const src = child(spawnNode([path.join(__dirname, 'live-source.js'), dst.uri, `dev0=${sd}`]));
    await src.waitOut(/^\{"event":"acked".*$/m);
    await dst.waitErr(/ vfio:migration \S+: RUNNING → RESUMING /, 5000);
    const killedAt = Date.now();
    src.proc.kill('SIGKILL');
    const de = await dst.exit;
    const ms = Date.now() - killedAt;
    assert.equal(de.code, 1, dst.err());
    const code = JSON.parse(dst.out()).error.code;
    assert.ok(['EVFIO_PEER_CLOSED', 'ECONNRESET'].includes(code), dst.out());
    assert.ok(ms < 8000, `the destination gave up ${ms} ms after the kill`);
    // Reset by the destination's cleanup: mtty alone would keep it in RESUMING (above).
    assert.equal(look(dd).state, 'RUNNING');
  });
});

/** A VMM's side in this process: `uuid` attached as a VfioPciDevice `dev0` to a reference host with 2 MiB of guest RAM. */
function modelVm(uuid, opts) {
  const dev = openDevice(uuid);
  const host = new ReferenceHost(dev.binding);
  host.memory.add(0n, 2 << 20);
  const d = VfioPciDevice.attach(dev, host, { id: 'dev0', ...opts });
  const vm = new MigrationCoordinator([d]);
  const transitions = [];
  vm.on('state', (c) => transitions.push(`${c.device}:${migStateName(c.from)}>${migStateName(c.to)}`));
  return { dev, d, vm, transitions, close: () => { d.detach(); dev.close(); host.close(); } };
}

test('over a unix socket: a VMM\'s VfioPciDevice source and a bare `vfio-pci incoming` refuse each other in the handshake (the HELLO says a model state follows): the source device never leaves RUNNING', TIMEOUT, async () => {
  await withMdevs(['mtty-2', 'mtty-2'], async ([sd, dd], child) => {
    const src = modelVm(sd);
    try {
      src.d.configWrite(4, 2, 0x5); // I/O decode + bus mastering
      programUart(src.dev, 0x21, 'mdl');
      const regs = uartRegs(src.dev);
      const inc = child(await incoming('unix:/tmp/live-model.sock', [`dev0=${dd}`]));
      const err = await src.vm.migrate(inc.uri).then(() => assert.fail('the migration started'), (e) => e);
      assert.deepEqual([err.code, err.kind], ['EVFIO_PEER_REFUSED', 'mismatch'], err.message);
      assert.match(err.message, /the source sends dev0's device-model state .* no device model .*EVFIO_DEVICE_MISMATCH/);
      assert.deepEqual(err.deviceState, [{ device: 'dev0', state: 'RUNNING', touched: false, reset: false }]);
      assert.deepEqual(src.transitions, [], 'no state request on the source device');
      assert.equal(migStateName(src.d.migration.getState()), 'RUNNING');
      assert.deepEqual(uartRegs(src.dev), regs);
      const de = await inc.exit;
      assert.equal(de.code, 1, inc.err());
      const dj = JSON.parse(inc.out());
      assert.equal(dj.error.code, 'EVFIO_DEVICE_MISMATCH');
      assert.match(dj.error.message, /dev0 here has no device model \(a bare device\)/);
      assert.deepEqual(dj.error.deviceState, [{ device: 'dev0', state: 'RUNNING', touched: false, reset: false }]);
      assert.equal(look(dd).state, 'RUNNING');
    } finally {
      src.close();
    }
  });
});

test('over a unix socket: a bare `vfio-pci migrate` source and a VMM\'s VfioPciDevice destination refuse each other in the handshake (the HELLO says no model state follows): the source device never leaves RUNNING', TIMEOUT, async () => {
  await withMdevs(['mtty-2', 'mtty-2'], async ([sd, dd], child) => {
    const text = 'bare';
    const regs = program(sd, 0x42, text);
    const dst = modelVm(dd, { assignBars: false });
    const listener = await listen('unix:/tmp/live-bare.sock');
    try {
      const received = dst.vm.incoming(listener).then(() => assert.fail('the load went on'), (e) => e);
      const mig = child(vfioPci(['migrate', '--to', listener.uri, `dev0=${sd}`, '--json'], { DEBUG: 'vfio:migration' }));
      const se = await mig.exit;
      assert.equal(se.code, 1, mig.err());
      const sj = JSON.parse(mig.out());
      assert.deepEqual([sj.error.code, sj.error.kind], ['EVFIO_PEER_REFUSED', 'mismatch']);
      assert.match(sj.error.message, /the source sends no device-model state for dev0 .* VfioPciDevice/);
      assert.deepEqual(sj.error.deviceState, [{ device: 'dev0', state: 'RUNNING', touched: false, reset: false }]);
      assert.deepEqual(stateLines(mig.err()), [], 'no state request on the source device');
      assert.deepEqual(look(sd), { state: 'RUNNING', regs });
      assert.deepEqual(fifo(sd, text), portTexts(text));
      const derr = await received;
      assert.equal(derr.code, 'EVFIO_DEVICE_MISMATCH', derr.message);
      assert.match(derr.message, /needs it to restore the guest's view/);
      assert.deepEqual(derr.deviceState, [{ device: 'dev0', state: 'RUNNING', touched: false, reset: false }]);
      assert.deepEqual(dst.transitions, [], 'no state request on the destination device');
    } finally {
      await listener.close();
      dst.close();
    }
  });
});

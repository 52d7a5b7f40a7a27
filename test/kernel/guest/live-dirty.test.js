// Dirty tracking during a live migration between two processes, on mtty (whose DMA-logging ops
// are no-ops in 6.12, so the VFIO core's argument checks are what answers): the source's library
// STARTs device DMA logging over the guest RAM ranges before PRE_COPY, REPORTs at every
// iteration and once more after the devices stopped, and STOPs at the end; the kernel accepts
// every call. With the relaxed vIOMMU rule, a guest mapping made mid-way cancels the migration:
// the source device is RUNNING on the kernel's word, the destination process exits non-zero with
// the reason, and logging is stopped.
'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const os = require('node:os');
const { spawn } = require('node:child_process');
const { lib, freshMdev, programUart, uartRegs, ROOT } = require('./helpers');

const { openDevice } = lib('kernel/open');
const { NativeBinding } = lib('kernel/binding/native');
const { DmaLogging } = lib('kernel/dirty');
const { MigState, migStateName } = lib('kernel/uapi/vfio');
const { ReferenceHost, ReferenceViommu } = lib('model/host/reference');
const { VfioPciDevice } = lib('model/vfio-pci');
const { MigrationCoordinator } = lib('vm/coordinator');

const binding = new NativeBinding();
const ID = 'tty0';
const RAM = 2 << 20;

/** The destination: another process that receives one migration into a fresh mtty and runs it. */
function destinationProcess(uri, uuid) {
  const script = `
    const lib = (p) => require(${JSON.stringify(path.join(ROOT, 'dist/src'))} + '/' + p);
    const { openDevice } = lib('kernel/open');
    const { NativeBinding } = lib('kernel/binding/native');
    const { ReferenceHost } = lib('model/host/reference');
    const { VfioPciDevice } = lib('model/vfio-pci');
    const { MigrationCoordinator } = lib('vm/coordinator');
    const { listen } = lib('live');
    (async () => {
      const binding = new NativeBinding();
      const dev = openDevice(${JSON.stringify(uuid)}, { binding });
      const host = new ReferenceHost(binding);
      const d = VfioPciDevice.attach(dev, host, { id: ${JSON.stringify(ID)}, assignBars: false });
      const l = await listen(${JSON.stringify(uri)});
      process.stdout.write('listening\\n');
      try {
        const r = await new MigrationCoordinator([d]).incoming(l, { resume: true });
        process.stdout.write(JSON.stringify({ resumed: r.resumed, bytes: r.devices[0].stateBytes }) + '\\n');
      } finally {
        await l.close();
        d.detach();
        dev.close();
      }
    })().catch((e) => { process.stdout.write(JSON.stringify({ code: e.code, message: e.message }) + '\\n'); process.exit(1); });`;
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  const listening = new Promise((resolve) => child.stdout.on('data', (d) => {
    out += d;
    if (out.includes('listening\n')) resolve();
  }));
  const exit = new Promise((resolve) => child.on('exit', (code) => resolve({ code, last: JSON.parse(out.trim().split('\n').pop()) })));
  return { listening, exit };
}

/** A source VM: an mtty attached to a reference host with 2 x 2 MiB of guest RAM (and a vIOMMU when asked). */
function sourceVm(uuid, viommu) {
  const dev = openDevice(uuid, { binding });
  const host = new ReferenceHost(binding);
  host.memory.add(0n, RAM);
  host.memory.add(1n << 32n, RAM);
  if (viommu) host.viommu = new ReferenceViommu();
  const d = VfioPciDevice.attach(dev, host, { id: ID });
  d.configWrite(4, 2, 0x5); // I/O decode + bus mastering
  programUart(dev, 0x33, 'dirty');
  return { dev, host, d, close: () => { d.detach(); dev.close(); } };
}

test('live migration between two processes: DMA logging STARTed over the RAM ranges, REPORTed every iteration and after the stop, STOPped at the end', async () => {
  const a = freshMdev();
  const b = freshMdev();
  const uri = `unix:${path.join(os.tmpdir(), `vfio-live-dirty-${process.pid}.sock`)}`;
  const dst = destinationProcess(uri, b.uuid);
  const src = sourceVm(a.uuid, false);
  try {
    await dst.listening;
    const vm = new MigrationCoordinator([src.d]);
    assert.deepEqual(vm.planDirtyTracking().devices.map((p) => [p.method, p.ranges.length]), [['device', 2]]);
    const mig = await vm.migrate(uri);
    const logging = DmaLogging.of(src.dev).active;
    assert.deepEqual(logging.ranges, [{ iova: 0n, length: BigInt(RAM) }, { iova: 1n << 32n, length: BigInt(RAM) }]);
    assert.equal(logging.pageSize, 4096, 'mtty hands back the page size asked');
    const syncs = [];
    mig.on('dirty', (s) => syncs.push(s));
    const r = await mig.run();
    assert.equal(syncs.length, r.iterations + 1, 'one report per iteration, and the final one');
    assert.equal(syncs.at(-1).final, true);
    for (const s of syncs) {
      assert.deepEqual(s.devices.map((x) => [x.method, x.bitmaps.length, x.errors.length, x.allDirty]), [['device', 2, 0, false]]);
      assert.equal(s.pages, 0, "mtty's report is a no-op: the kernel leaves the bitmap clean");
    }
    assert.deepEqual(r.dirty.devices, [{ device: ID, method: 'device', available: 'device', ranges: 2, pageSize: 4096 }]);
    assert.equal(DmaLogging.of(src.dev).active, undefined, 'STOPped');
    assert.equal(migStateName(src.d.migration.getState()), 'STOP');
    const done = await dst.exit;
    assert.equal(done.code, 0, JSON.stringify(done.last));
    assert.equal(done.last.resumed, true);
    // Logging can be started again: the kernel took the STOP (mlx5 refuses a second START otherwise).
    await DmaLogging.of(src.dev).start([{ iova: 0n, length: 4096n }]);
    await DmaLogging.of(src.dev).stop();
  } finally {
    src.close();
    a.remove();
    b.remove();
  }
});

test('relaxed vIOMMU: a guest mapping mid-way cancels the migration; the source device RUNNING with its registers, logging stopped, the destination told why', async () => {
  const a = freshMdev();
  const b = freshMdev();
  const uri = `unix:${path.join(os.tmpdir(), `vfio-live-viommu-${process.pid}.sock`)}`;
  const dst = destinationProcess(uri, b.uuid);
  const src = sourceVm(a.uuid, true);
  try {
    await dst.listening;
    const before = uartRegs(src.dev);
    const blocked = new MigrationCoordinator([src.d]);
    assert.deepEqual(blocked.blockers({ live: true }).map((x) => x.code), ['EVFIO_VIOMMU']);
    const vm = new MigrationCoordinator([src.d], { dirtyTracking: { viommu: 'relaxed' } });
    const warnings = [];
    vm.on('warning', (w) => warnings.push(w.code));
    const mig = await vm.migrate(uri);
    assert.deepEqual(warnings, ['EVFIO_VIOMMU']);
    await mig.iterate();
    src.host.viommu.map(0x8000_0000n, 0x1000n);
    await assert.rejects(mig.iterate(), (e) => e.code === 'EVFIO_VIOMMU' && /during the migration/.test(e.message));
    assert.equal(src.d.migration.getState(), MigState.RUNNING, 'the kernel says RUNNING');
    assert.deepEqual(uartRegs(src.dev), before);
    assert.equal(DmaLogging.of(src.dev).active, undefined);
    const done = await dst.exit;
    assert.notEqual(done.code, 0);
    assert.equal(done.last.code, 'EVFIO_PEER_FAILED');
    assert.match(done.last.message, /vIOMMU DMA mapping/);
  } finally {
    src.close();
    a.remove();
    b.remove();
  }
});

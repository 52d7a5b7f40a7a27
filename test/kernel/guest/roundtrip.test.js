// Issue 2 acceptance: for each open path, program mtty A, `vfio-pci snapshot A` and
// `vfio-pci restore B` in two separate processes, and check B's registers and FIFO equal A's.
'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const { lib, MDEVS, programUart, uartRegs, drainFifo, cli } = require('./helpers');

const { openDevice } = lib('kernel/open');
const { Migration } = lib('kernel/migration');

const PATHS = [
  { iommu: 'iommufd', a: 0, b: 1 },
  { iommu: 'legacy', a: 2, b: 3 },
];

for (const { iommu, a, b } of PATHS) {
  for (const binding of ['native', 'koffi']) {
    test(`${iommu}/${binding}: CLI snapshot of A and restore into B in separate processes round-trips registers and FIFO`, () => {
      const file = `/tmp/rt-${iommu}-${binding}.vfiosnap`;
      const A = MDEVS[a];
      const B = MDEVS[b];
      const seed = binding === 'native' ? 0x5a : 0x3c;
      const text = `${iommu}-${binding}`;
      const src = openDevice(A, { iommu });
      programUart(src, seed, text);
      const srcRegs = uartRegs(src);
      src.close();

      const snap = cli('snapshot', A, '-o', file, '--iommu', iommu, '--binding', binding);
      assert.equal(snap.status, 0, `snapshot failed: ${snap.stderr}`);
      assert.match(snap.stdout, /RUNNING → STOP/);
      assert.match(snap.stdout, /: 96 bytes of device state, 256 bytes of config space/);

      const rest = cli('restore', B, '-i', file, '--iommu', iommu, '--binding', binding);
      assert.equal(rest.status, 0, `restore failed: ${rest.stderr}`);
      assert.match(rest.stdout, /RUNNING → RESUMING/);
      assert.match(rest.stdout, /now RUNNING/);

      const dst = openDevice(B, { iommu });
      try {
        assert.equal(Migration.require(dst).getState(), 2 /* RUNNING */);
        assert.deepEqual(uartRegs(dst), srcRegs, 'destination registers equal the source registers');
        const fifo = drainFifo(dst, text.length + 1);
        assert.deepEqual(fifo, srcRegs.map((_, p) => `${text}${p}`), 'destination FIFO holds the source bytes');
      } finally {
        dst.close();
      }
      // the source went back to RUNNING and still has its FIFO
      const again = openDevice(A, { iommu });
      try {
        assert.equal(Migration.require(again).getState(), 2);
        assert.deepEqual(drainFifo(again, text.length + 1), srcRegs.map((_, p) => `${text}${p}`));
      } finally {
        again.close();
      }
    });
  }
}

test('info --json reports the mtty migration flags and regions', () => {
  const r = cli('info', MDEVS[0], '--json');
  assert.equal(r.status, 0, r.stderr);
  const j = JSON.parse(r.stdout);
  assert.deepEqual(j.migration.flags, ['STOP_COPY', 'P2P', 'PRE_COPY']);
  assert.equal(j.migration.state, 'RUNNING');
  assert.equal(j.migration.dataSize, 96);
  assert.equal(j.regions.find((x) => x.name === 'BAR0').size, 8);
  assert.equal(j.regions.find((x) => x.name === 'CONFIG').offset, 7 * 2 ** 40);
  assert.ok(j.irqs.length >= 1);
});

test('snapshot --leave-stopped leaves the device in STOP; restore of a missing file is a usage error (exit 2) before the device is opened', async () => {
  const file = '/tmp/stopped.vfiosnap';
  const r = cli('snapshot', MDEVS[0], '-o', file, '--leave-stopped');
  assert.equal(r.status, 0, r.stderr);
  const d = openDevice(MDEVS[0]);
  try {
    const m = Migration.require(d);
    assert.equal(m.getState(), 1 /* STOP */);
    await m.setState(2);
  } finally {
    d.close();
  }
  const bad = cli('restore', MDEVS[1], '-i', '/tmp/does-not-exist');
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /^vfio-pci restore: cannot read snapshot \/tmp\/does-not-exist: no such file\n {2}code: ENOENT\n/);
  assert.doesNotMatch(bad.stderr, /devices left/);
});

test('a snapshot of another format version (older or newer) is refused with a clear message; the device is untouched', () => {
  const zlib = require('node:zlib');
  const fs = require('node:fs');
  const good = '/tmp/version-good.vfiosnap';
  assert.equal(cli('snapshot', MDEVS[0], '-o', good).status, 0);
  const dev = openDevice(MDEVS[1]);
  programUart(dev, 0x42, 'ver');
  const before = uartRegs(dev);
  dev.close();
  for (const [version, why] of [[0, /predates the first released format/], [3, /written by a newer node-vfio-pci/]]) {
    const b = fs.readFileSync(good);
    b.writeUInt16LE(version, 8);
    b.writeUInt32LE(zlib.crc32(b.subarray(0, 28)) >>> 0, 28);
    const file = `/tmp/version-${version}.vfiosnap`;
    fs.writeFileSync(file, b);
    const r = cli('restore', MDEVS[1], '-i', file);
    assert.equal(r.status, 1);
    assert.match(r.stderr, new RegExp(`format version ${version} is not supported`));
    assert.match(r.stderr, why);
    assert.match(r.stderr, /code: EVFIO_SNAPSHOT_VERSION/);
  }
  const after = openDevice(MDEVS[1]);
  try {
    assert.equal(Migration.require(after).getState(), 2);
    assert.deepEqual(uartRegs(after), before);
  } finally {
    after.close();
  }
});

test('the default binding in the guest is the native addon (koffi is only the fallback)', () => {
  const { getDefaultBinding } = lib('kernel/open');
  assert.equal(getDefaultBinding().name, 'native');
});

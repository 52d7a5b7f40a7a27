// The CLI on a real kernel device (mtty): info's sysfs side (driver, IOMMU group, cdev) and
// what --leave-stopped leaves behind once vfio-pci has exited and closed the device.
'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const { MDEVS, cli } = require('./helpers');

test('info: PCI identity from config space, driver, IOMMU group and cdev from sysfs; text and --json agree', () => {
  const dev = MDEVS[0];
  const r = cli('info', dev, '--json');
  assert.equal(r.status, 0, r.stderr);
  const j = JSON.parse(r.stdout);
  assert.equal(j.ok, true);
  assert.equal(j.device, dev);
  assert.equal(j.driver, 'mtty');
  assert.equal(j.simulated, null);
  assert.match(j.iommuGroup, /^\d+$/);
  assert.equal(fs.realpathSync(`/sys/bus/mdev/devices/${dev}/iommu_group`).split('/').pop(), j.iommuGroup);
  assert.match(j.groupFile, /^\/dev\/vfio\/(noiommu-)?\d+$/);
  assert.match(j.cdev, /^\/dev\/vfio\/devices\/vfio\d+$/);
  assert.equal(j.sysfs, fs.realpathSync(`/sys/bus/mdev/devices/${dev}`));
  assert.match(j.pci.id, /^[0-9a-f]{4}:[0-9a-f]{4}$/);
  assert.ok(j.migration.flags.includes('STOP_COPY'));
  const t = cli('info', dev);
  assert.equal(t.status, 0, t.stderr);
  assert.match(t.stdout, new RegExp(`^  pci {8}${j.pci.id} rev ${j.pci.revision}, subsystem ${j.pci.subsystem}, class ${j.pci.class}$`, 'm'));
  assert.match(t.stdout, /^  driver {5}mtty$/m);
  assert.match(t.stdout, new RegExp(`^  iommu {6}group ${j.iommuGroup} \\(${j.groupFile}\\), cdev ${j.cdev}; opened through iommufd$`, 'm'));
});

test('--leave-stopped: mtty keeps the device in STOP after vfio-pci exits; a restore runs it again with the saved state', () => {
  const dev = MDEVS[1];
  const s = cli('snapshot', dev, '-o', '/tmp/ls.vfiosnap', '--leave-stopped', '--json');
  assert.equal(s.status, 0, s.stderr);
  assert.equal(JSON.parse(s.stdout).devices[0].state, 'STOP');
  // A new process, a new open: the driver kept the state (README: it depends on the driver).
  const i = cli('info', dev, '--json');
  assert.equal(i.status, 0, i.stderr);
  assert.equal(JSON.parse(i.stdout).migration.state, 'STOP');
  const r = cli('restore', dev, '-i', '/tmp/ls.vfiosnap', '--json');
  assert.equal(r.status, 0, r.stderr);
  assert.equal(JSON.parse(r.stdout).devices[0].state, 'RUNNING');
  assert.deepEqual(JSON.parse(r.stdout).transitions[0].path, ['STOP', 'RESUMING']);
});

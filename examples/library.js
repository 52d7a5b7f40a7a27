// Save a device's state to a snapshot file and restore it, watching the migration state machine.
// Run: node examples/library.js [DEVICE] (default: a simulated device with 64 MiB of state).
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { openDevice, migStateName, saveSnapshot, restoreSnapshot } = require('node-vfio-pci');
require('node-vfio-pci/sim').registerSimulator(); // let openDevice() open simulated devices ('sim:...')

async function main(spec = 'sim:64MiB') {
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'vfio-')), 'dev0.vfiosnap');
  const dev = openDevice(spec); // a PCI address, an mdev UUID, a /dev/vfio/devices/vfioN, or 'sim:...'
  try {
    const mig = dev.migration; // the device's one migration object; null when not migratable (ENOTTY)
    if (!mig) throw new Error(`${spec} does not support VFIO migration`);
    console.log(`${dev.name}: migration ${mig.flagNames.join('|')}, state ${migStateName(mig.getState())}`);
    mig.on('state', (c) => console.log(`  ${migStateName(c.from)} -> ${migStateName(c.to)} (${c.arcs.length} arcs)`));

    const saved = await saveSnapshot([dev], file); // pause, STOP_COPY into the file, resume, fsync + rename
    console.log(`saved ${saved.devices[0].stateBytes} bytes of device state to ${file}`);
    const loaded = await restoreSnapshot(dev, file); // checks first, then RUNNING -> RESUMING, load, RUNNING
    console.log(`restored ${loaded.devices[0].stateBytes} bytes; now ${migStateName(mig.getState())}`);
  } finally {
    dev.close();
    fs.rmSync(path.dirname(file), { recursive: true, force: true });
  }
}

main(...process.argv.slice(2)).catch((e) => {
  console.error(e);
  process.exitCode = 1;
});

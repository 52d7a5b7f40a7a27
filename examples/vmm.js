// Plugging the vfio-pci device model into a VMM: here the reference host stands in for the VMM's
// bus, BAR allocator and interrupt router. Run: node examples/vmm.js [SOURCE DESTINATION] (default: two simulated devices).
const {
  openDevice, VfioPciDevice, MigrationCoordinator, ReferenceHost, ReferenceAllocator, getDefaultBinding, migStateName,
} = require('node-vfio-pci');
require('node-vfio-pci/sim').registerSimulator(); // let openDevice() open simulated devices ('sim:...')

async function main(src = 'sim:1MiB#src', dst = 'sim:1MiB#dst') {
  // Source VM: attach the device; BARs get addresses from the host's allocator.
  const host = new ReferenceHost(getDefaultBinding());
  const nic = VfioPciDevice.attach(openDevice(src), host, { id: 'nic0' });
  nic.configWrite(0x04, 2, 0x0006); // the guest: memory decode + bus mastering (BAR0 goes on the bus)

  // Pause and snapshot the VM's devices.
  const vm = new MigrationCoordinator([nic]);
  vm.on('state', (c) => console.log(`${c.device}: ${migStateName(c.from)} -> ${migStateName(c.to)}`));
  await vm.pause();
  await vm.snapshot('/tmp/vm.vfiosnap');
  await vm.resume();

  // Destination VM: the VMM restores its own allocator, attaches WITHOUT allocating BARs,
  // restores (device left in RESUMING), then resumes.
  const host2 = new ReferenceHost(getDefaultBinding(), ReferenceAllocator.from(host.allocator.export()));
  const nic2 = VfioPciDevice.attach(openDevice(dst), host2, { id: 'nic0', assignBars: false });
  const vm2 = new MigrationCoordinator([nic2]);
  await vm2.restore('/tmp/vm.vfiosnap');
  await vm2.resume();
  console.log('destination BARs:', host2.bus.mappings(), 'COMMAND:', nic2.configRead(0x04, 2).toString(16));

  for (const d of [nic, nic2]) { d.detach(); d.device.close(); }
  host.close(); host2.close();
}

main(...process.argv.slice(2)).catch((e) => { console.error(e); process.exitCode = 1; });

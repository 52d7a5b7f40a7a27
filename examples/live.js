// Live migration of a VM's device between two coordinators, with the device's DMA tracked: the
// VMM owns RAM and vCPUs, so it iterates, ORs each dirty bitmap into its own dirty log, and
// decides when to switch over. Both VMs run in this process over a unix socket here; across
// hosts, the destination calls incoming() on a listener of its own and the source migrates to
// its tcp: URI (with TLS). Run: node examples/live.js
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { openDevice, VfioPciDevice, MigrationCoordinator, ReferenceHost, listen, getDefaultBinding } = require('node-vfio-pci');
const sim = require('node-vfio-pci/sim');
sim.registerSimulator(); // let openDevice() open simulated devices ('sim:...')

/** The guest has the simulated device write `length` bytes at guest address `gpa` by DMA (its BAR0 DMA engine). */
function guestDma(host, gpa, length) {
  const bar0 = host.bus.find('nic0', 0).address;
  const w = (reg, v) => host.bus.write('mmio', bar0 + BigInt(reg), 4, v);
  w(sim.BAR0.DMA_ADDR_LO, Number(gpa & 0xffffffffn));
  w(sim.BAR0.DMA_ADDR_HI, Number(gpa >> 32n));
  w(sim.BAR0.DMA_LEN, length);
  w(sim.BAR0.DMA_PATTERN, 0x5a5a5a5a);
  w(sim.BAR0.DMA_DOORBELL, 1);
}

async function main() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfio-live-'));
  // Source VM: 4 MiB of guest RAM mapped for the device's DMA; the device's state changes while it runs.
  const host = new ReferenceHost(getDefaultBinding());
  host.memory.add(0n, 4 << 20);
  const nic = VfioPciDevice.attach(openDevice('sim:1MiB:churn=8MiB/s#src'), host, { id: 'nic0' });
  nic.configWrite(0x04, 2, 0x0006); // the guest: memory decode + bus mastering
  await nic.mapGuestMemory();

  // Destination VM: attached without allocating BARs; it waits for one migration.
  const host2 = new ReferenceHost(getDefaultBinding());
  const nic2 = VfioPciDevice.attach(openDevice('sim:1MiB:churn=8MiB/s#dst'), host2, { id: 'nic0', assignBars: false });
  const listener = await listen(`unix:${path.join(dir, 'mig.sock')}`);
  const incoming = new MigrationCoordinator([nic2]).incoming(listener, { resume: true });

  const vm = new MigrationCoordinator([nic], { dirtyTracking: { untracked: 'block' } });
  const mig = await vm.migrate(listener.uri, { downtimeLimitMs: 300 }); // destination checked the device; it is in PRE_COPY
  guestDma(host, 0x10000n, 3 * 4096); // the guest keeps running: its device writes RAM
  mig.on('dirty', (s) => {
    // A VMM ORs each bitmap into its KVM dirty log of the same range and page size, then sends those pages.
    for (const d of s.devices) console.log(`${s.final ? 'final sync' : `sync ${s.sync}`}: ${d.device} dirtied ${d.pages} pages (${d.method})`);
  });
  mig.on('switchover-ready', (p) => console.log(`switchover ready: ${p.totalBytes} bytes pending, ~${p.estimatedDowntimeMs.toFixed(1)} ms`));
  const result = await mig.run(async () => {
    // The VMM stops its vCPUs here; the devices stop in the switchover that follows.
  });
  const r = await incoming;
  console.log(`migrated: ${result.precopyBytes} bytes precopy, ${result.stopCopyBytes} stop-copy, ${result.iterations} iterations, device downtime ${result.downtimeMs.toFixed(1)} ms; destination ${r.resumed ? 'running' : 'loaded'}`);

  await listener.close();
  for (const d of [nic, nic2]) { d.detach(); d.device.close(); }
  host.close(); host2.close();
  fs.rmSync(dir, { recursive: true, force: true });
}

main().catch((e) => { console.error(e); process.exitCode = 1; });

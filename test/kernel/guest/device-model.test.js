// Issue 3 on the real kernel: the vfio-pci device model attached to the reference host, driven
// the way a guest would (config space, then BAR accesses through the host bus), snapshotted on
// one mtty device and restored into another.
//
// mtty facts (read off Linux 6.12 here): its config space has no capability list, so a guest
// cannot enable MSI through config space — mtty's interrupt is INTx (pin A), which the device
// model wires with VFIO_DEVICE_SET_IRQS like MSI. The config region is 255 bytes, BAR0/BAR1 are
// 8-byte I/O BARs, and mtty drops writes to PCI_COMMAND (it always reads 0x0001).
// mtty raises INTx when a byte lands in the RX FIFO (loopback of TX) and the FIFO count reaches
// the trigger level while IER.RDI is set.
'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const { lib, MDEVS, UART } = require('./helpers');

const { openDevice, getDefaultBinding } = lib('kernel/open');
const { VfioPciDevice } = lib('model/vfio-pci');
const { MigrationCoordinator } = lib('vm/coordinator');
const { ReferenceHost, ReferenceAllocator } = lib('model/host/reference');
const { MigState } = lib('kernel/uapi/vfio');

const ID = 'uart0';
const PCI_COMMAND = 0x04;
const BAR0 = 0x10;

function port(host, bar) {
  const m = host.bus.find(ID, bar);
  assert.ok(m, `BAR${bar} is on the bus`);
  return m.address;
}
const out = (host, bar, reg, v) => host.bus.write('pio', port(host, bar) + BigInt(reg), 1, v);
const inb = (host, bar, reg) => Number(host.bus.read('pio', port(host, bar) + BigInt(reg), 1));

for (const iommu of ['iommufd', 'legacy']) {
  test(`${iommu}: device model — guest programs BARs, INTx fires, snapshot, restore into a second mtty, re-armed interrupt fires`, async () => {
    const [srcSpec, dstSpec] = iommu === 'iommufd' ? [MDEVS[0], MDEVS[1]] : [MDEVS[2], MDEVS[3]];
    const binding = getDefaultBinding();
    const file = `/tmp/model-${iommu}.vfiosnap`;

    // ---- source: attach, the guest sizes BAR0, enables I/O decode + bus mastering
    const hostA = new ReferenceHost(binding);
    const devA = openDevice(srcSpec, { iommu });
    const A = VfioPciDevice.attach(devA, hostA, { id: ID });
    try {
      // mtty comes out of reset with I/O decode on (COMMAND 0x0001): the guest turns it off first.
      A.configWrite(PCI_COMMAND, 2, 0);
      assert.equal(hostA.bus.mappings().length, 0, 'nothing mapped while decode is off');
      const assigned = A.configRead(BAR0, 4);
      assert.equal(assigned & 1, 1, 'BAR0 is an I/O BAR');
      A.configWrite(BAR0, 4, 0xffffffff);
      assert.equal(A.configRead(BAR0, 4) >>> 0, 0xfffffff9, 'BAR0 sizes as 8 bytes of I/O');
      A.configWrite(BAR0, 4, assigned);
      A.configWrite(PCI_COMMAND, 2, 0x0005); // I/O + bus master
      assert.equal(A.config.command, 0x0005, 'the shadow mirrors the COMMAND write');
      assert.deepEqual(hostA.bus.mappings().map((m) => [m.bar, m.space, m.size]), [[0, 'pio', 8], [1, 'pio', 8]]);
      assert.equal(A.interrupts.mode, 'intx');

      // ---- traffic raises an interrupt on the source
      out(hostA, 0, UART.FCR, 0x01); // FIFO on, trigger level 1
      out(hostA, 0, UART.IER, 0x01); // RX data interrupt
      out(hostA, 0, UART.TX, 0x41);
      assert.ok((await hostA.interrupts.wait(ID, 'intx', 3000)) >= 1, 'INTx fired on the source');
      out(hostA, 0, UART.SCR, 0x5c);
      out(hostA, 0, UART.LCR, 0x03);
      for (const c of Buffer.from('BCD')) out(hostA, 0, UART.TX, c);
      const srcCommand = A.configRead(PCI_COMMAND, 2);
      const srcRegs = ['IER', 'LCR', 'SCR'].map((r) => inb(hostA, 0, UART[r]));

      // ---- pause, snapshot, resume the source
      const coordA = new MigrationCoordinator([A]);
      const arcs = [];
      coordA.on('state', (c) => arcs.push(`${MigState[c.from]}→${MigState[c.to]}`));
      await coordA.pause();
      await coordA.snapshot(file, { noSync: true });
      await coordA.resume();
      assert.deepEqual(arcs, ['RUNNING→STOP', 'STOP→STOP_COPY', 'STOP_COPY→STOP', 'STOP→RUNNING']);

      // ---- destination: the VMM restored its allocator; the device model must not allocate
      const hostB = new ReferenceHost(binding, ReferenceAllocator.from(hostA.allocator.export()));
      const devB = openDevice(dstSpec, { iommu });
      const B = VfioPciDevice.attach(devB, hostB, { id: ID, assignBars: false });
      try {
        const coordB = new MigrationCoordinator([B]);
        await coordB.restore(file);
        assert.equal(B.migration.getState(), MigState.RESUMING, 'restore stays in RESUMING');
        assert.deepEqual(hostB.bus.mappings(), hostA.bus.mappings(), 'BARs on the destination bus at the saved addresses');
        assert.equal(B.config.command, 0x0005, 'shadow COMMAND restored');
        assert.equal(B.configRead(PCI_COMMAND, 2), srcCommand, 'PCI_COMMAND reads back as it was');
        assert.equal(B.interrupts.mode, 'intx', 'INTx re-armed with SET_IRQS');
        await coordB.resume();
        assert.equal(B.migration.getState(), MigState.RUNNING);

        assert.deepEqual(['IER', 'LCR', 'SCR'].map((r) => inb(hostB, 0, UART[r])), srcRegs, 'UART registers restored');
        const fifo = [];
        while (inb(hostB, 0, UART.LSR) & 1) fifo.push(inb(hostB, 0, UART.TX));
        assert.equal(Buffer.from(fifo).toString('latin1'), 'ABCD', 'RX FIFO restored');
        hostB.interrupts.take(ID, 'intx');
        out(hostB, 0, UART.TX, 0x45); // count 1 == trigger level 1 again
        assert.ok((await hostB.interrupts.wait(ID, 'intx', 3000)) >= 1, 'INTx fired on the destination through the re-armed eventfd');
      } finally {
        B.detach();
        devB.close();
        hostB.close();
      }
    } finally {
      A.detach();
      devA.close();
      hostA.close();
    }
  });
}

for (const iommu of ['iommufd', 'legacy']) {
  test(`${iommu}: guest memory is DMA-mapped through the device's IOMMU context (the kernel refuses an overlap until unmapped)`, async () => {
    const binding = getDefaultBinding();
    const host = new ReferenceHost(binding);
    const low = host.memory.add(0n, 1 << 20);
    host.memory.add(0x1_0000_0000n, 64 << 10);
    const dev = openDevice(iommu === 'iommufd' ? MDEVS[0] : MDEVS[2], { iommu });
    const d = VfioPciDevice.attach(dev, host, { id: 'dma0' });
    try {
      await d.mapGuestMemory();
      assert.deepEqual([...d.dmaMappings], [[0n, 1 << 20], [0x1_0000_0000n, 64 << 10]]);
      await assert.rejects(dev.iommu.mapDma(0n, low.buffer.subarray(0, 4096)), (e) => e.code === 'EEXIST');
      await assert.rejects(dev.iommu.mapDma(0x2000n, low.buffer.subarray(1, 4097)), (e) => e.code === 'EVFIO_DMA_ALIGN');
      await d.unmapGuestMemory();
      assert.equal(d.dmaMappings.size, 0);
      await dev.iommu.mapDma(0n, low.buffer.subarray(0, 4096)); // free again
      await dev.iommu.unmapDma(0n, 4096);
    } finally {
      d.detach();
      dev.close();
      host.close();
    }
  });
}

import { describe, it, expect } from 'vitest';
import { NativeBinding } from '../../src/kernel/binding/native';
import { SimBinding } from '../../src/sim';
import { openDevice } from '../../src/kernel/open';
import { VfioPciDevice } from '../../src/model/vfio-pci';
import { ReferenceHost } from '../../src/model/host/reference';

describe('DMA mapping of guest memory', () => {
  it('reference guest memory is page-aligned, and mapGuestMemory maps every region at its gpa', async () => {
    const real = new NativeBinding();
    const sim = new SimBinding(real);
    const host = new ReferenceHost(real);
    const a = host.memory.add(0n, 3 * 4096);
    host.memory.add(0x8000_0000n, 4096);
    expect(real.bufferAddress(a.buffer) % 4096n).toBe(0n);
    expect(a.buffer.length).toBe(3 * 4096);
    const dev = openDevice('sim:4KiB#dma', { binding: sim });
    const d = VfioPciDevice.attach(dev, host, { id: 'dma' });
    try {
      await d.mapGuestMemory();
      expect([...d.dmaMappings]).toEqual([[0n, 3 * 4096], [0x8000_0000n, 4096]]);
      await d.mapGuestMemory(); // idempotent
      await expect(dev.iommu.mapDma(4096n, a.buffer.subarray(0, 4096))).rejects.toMatchObject({ code: 'EEXIST' });
      await expect(dev.iommu.mapDma(0x10000n, a.buffer.subarray(8, 4104))).rejects.toMatchObject({ code: 'EVFIO_DMA_ALIGN', kind: 'usage' });
      await d.unmapGuestMemory();
      expect(d.dmaMappings.size).toBe(0);
    } finally {
      d.detach();
      dev.close();
      host.close();
    }
  });

  it('a failure part-way unmaps what was mapped and names the step', async () => {
    const real = new NativeBinding();
    const host = new ReferenceHost(real);
    host.memory.add(0n, 4096);
    const bad = host.memory.add(0x10000n, 4096);
    (bad as { buffer: Buffer }).buffer = bad.buffer.subarray(0, 100); // not a whole page
    const dev = openDevice('sim:4KiB#dma2', { binding: new SimBinding(real) });
    const d = VfioPciDevice.attach(dev, host, { id: 'dma2' });
    try {
      await expect(d.mapGuestMemory()).rejects.toMatchObject({ code: 'EVFIO_DMA_ALIGN', step: 'dma-map' });
      expect(d.dmaMappings.size).toBe(0);
      await dev.iommu.mapDma(0n, host.memory.regions()[0].buffer); // the first region was unmapped again
    } finally {
      d.detach();
      dev.close();
      host.close();
    }
  });
});

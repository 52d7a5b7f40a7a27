/** `vfio-pci info`: what a device reports, as a plain object (the --json shape) and as text. */
import type { VfioDevice } from '../kernel/device';
import { Migration } from '../kernel/migration';
import * as v from '../kernel/uapi/vfio';

export interface DeviceDescription {
  device: string;
  iommu: string;
  flags: string[];
  regions: Array<{ index: number; name: string; size: number; offset: number; flags: string[] }>;
  irqs: Array<{ index: number; name: string; count: number; flags: string[] }>;
  /** null when the device is not migratable (VFIO_DEVICE_FEATURE_MIGRATION → ENOTTY). */
  migration: { flags: string[]; state: string; dataSize?: number } | null;
}

export function describeDevice(dev: VfioDevice): DeviceDescription {
  const info = dev.info();
  const pci = (info.flags & v.VFIO_DEVICE_FLAGS_PCI) !== 0;
  const mig = Migration.probe(dev);
  return {
    device: dev.name,
    iommu: dev.iommu.kind,
    flags: v.flagNames(info.flags, v.DEVICE_FLAG_NAMES),
    regions: dev.regions().map((r) => ({
      index: r.index,
      name: pci ? (v.PCI_REGION_NAMES[r.index] ?? `region${r.index}`) : `region${r.index}`,
      size: r.size,
      offset: r.offset,
      flags: v.flagNames(r.flags, v.REGION_FLAG_NAMES),
    })),
    irqs: dev.irqs().map((i) => ({
      index: i.index,
      name: pci ? (v.PCI_IRQ_NAMES[i.index] ?? `irq${i.index}`) : `irq${i.index}`,
      count: i.count,
      flags: v.flagNames(i.flags, v.IRQ_FLAG_NAMES),
    })),
    migration: mig ? { flags: mig.flagNames, state: v.migStateName(mig.getState()), dataSize: mig.dataSize() } : null,
  };
}

export function formatDeviceInfo(d: DeviceDescription): string {
  const lines = [`device ${d.device} (${d.iommu}): flags ${d.flags.join('|') || '-'}`, 'regions:'];
  for (const r of d.regions) {
    if (r.size === 0) continue;
    lines.push(`  ${String(r.index).padStart(2)} ${r.name.padEnd(6)} size 0x${r.size.toString(16).padEnd(8)} offset 0x${r.offset.toString(16)}  ${r.flags.join('|')}`);
  }
  lines.push('irqs:');
  for (const i of d.irqs) lines.push(`  ${String(i.index).padStart(2)} ${i.name.padEnd(5)} count ${String(i.count).padEnd(4)} ${i.flags.join('|')}`);
  if (d.migration) {
    const size = d.migration.dataSize !== undefined ? `, stop-copy size ${d.migration.dataSize} bytes` : '';
    lines.push(`migration: ${d.migration.flags.join('|')}, state ${d.migration.state}${size}`);
  } else {
    lines.push('migration: not supported');
  }
  return lines.join('\n') + '\n';
}

/**
 * `vfio-pci info DEVICE`: what a device is and reports — PCI identity (vendor:device, subsystem,
 * class, revision, from its config space), the driver it is bound to, its IOMMU group, VFIO cdev
 * or group file and sysfs node (src/kernel/resolve.ts; a simulated device has none of these),
 * the IOMMU path it was opened with, device flags, regions, IRQs, migration flags and state, and
 * how its DMA writes can be tracked for a live migration (device DMA logging, the IOMMU's dirty
 * bits, or none) with the page size the driver logs at. The text and the --json object carry the
 * same fields.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Command } from 'commander';
import type { VfioDevice } from '../../kernel/device';
import { Migration } from '../../kernel/migration';
import { DmaLogging, dirtyMethodOf, type DirtyMethod } from '../../kernel/dirty';
import { VfioError } from '../../base/errors';
import { providerFor } from '../../kernel/open';
import { resolveDevice } from '../../kernel/resolve';
import * as v from '../../kernel/uapi/vfio';
import { identityFromConfig } from '../../model/pci/identity';
import { addCommonOptions, type CliCommand } from '../command';
import { openOptions, parseDeviceArg, withDevices } from '../devices';

export interface DeviceDescription {
  device: string;
  /** The IOMMU path it was opened with: iommufd, legacy, or virtual (a simulated device). */
  iommu: string;
  /** PCI identity from config space, hex strings: vendor:device `1234:5f10`, class `120000`. */
  pci: { id: string; vendor: string; deviceId: string; subsystem: string; class: string; revision: string };
  /** The kernel driver bound to it (vfio-pci, mlx5_vfio_pci, mtty, ...); null when unknown (simulated). */
  driver: string | null;
  /** Its sysfs node, IOMMU group number and files; null where the device has none. */
  sysfs: string | null;
  iommuGroup: string | null;
  groupFile: string | null;
  cdev: string | null;
  /** The provider serving it when it is not a kernel device ('sim'), else null. */
  simulated: string | null;
  flags: string[];
  regions: Array<{ index: number; name: string; size: number; offset: number; flags: string[] }>;
  irqs: Array<{ index: number; name: string; count: number; flags: string[] }>;
  /** null when the device is not migratable (VFIO_DEVICE_FEATURE_MIGRATION → ENOTTY). */
  migration: { flags: string[]; state: string; dataSize?: number } | null;
  /** How its DMA writes can be tracked during a live migration (src/kernel/dirty/method.ts). */
  dirtyTracking: DirtyMethod;
  /** Why there is no better method, when 'none'. */
  dirtyTrackingReason?: string;
  /**
   * With 'device': the page size in bytes the driver logs at when asked for 4 KiB (learnt by a
   * DMA_LOGGING_START over one page and a STOP; the driver may change it); null when unknown.
   */
  dmaLoggingPageSize: number | null;
}

const hex = (n: number, w: number): string => n.toString(16).padStart(w, '0');

/** The sysfs side of a kernel device: driver, group, cdev (none for a provider's device). */
function sysfsSide(dev: VfioDevice): Pick<DeviceDescription, 'driver' | 'sysfs' | 'iommuGroup' | 'groupFile' | 'cdev' | 'simulated'> {
  const provider = providerFor(dev.name);
  const none = { driver: null, sysfs: null, iommuGroup: null, groupFile: null, cdev: null };
  if (provider) return { ...none, simulated: provider.name };
  let r;
  try {
    r = resolveDevice(dev.name);
  } catch {
    return { ...none, simulated: null };
  }
  let driver: string | null = null;
  if (r.sysfsPath) {
    try {
      driver = path.basename(fs.readlinkSync(path.join(r.sysfsPath, 'driver')));
    } catch {
      driver = null;
    }
  }
  return { driver, sysfs: r.sysfsPath ?? null, iommuGroup: r.group?.id ?? null, groupFile: r.group?.path ?? null, cdev: r.cdevPath ?? null, simulated: null };
}

/** The page size the driver logs at, by a START/STOP over one page; null when it fails. */
async function loggingPageSize(dev: VfioDevice): Promise<number | null> {
  try {
    return await DmaLogging.of(dev).probePageSize();
  } catch (e) {
    if (!(e instanceof VfioError)) throw e;
    return null;
  }
}

export async function describeDevice(dev: VfioDevice): Promise<DeviceDescription> {
  const dirty = dirtyMethodOf(dev);
  const info = dev.info();
  const pci = (info.flags & v.VFIO_DEVICE_FLAGS_PCI) !== 0;
  const mig = Migration.probe(dev);
  const id = identityFromConfig(dev.readConfig(0, 64));
  return {
    device: dev.name,
    iommu: dev.iommu.kind,
    pci: {
      id: `${hex(id.vendorId, 4)}:${hex(id.deviceId, 4)}`,
      vendor: hex(id.vendorId, 4),
      deviceId: hex(id.deviceId, 4),
      subsystem: `${hex(id.subsystemVendorId, 4)}:${hex(id.subsystemId, 4)}`,
      class: hex(id.classCode, 6),
      revision: hex(id.revision, 2),
    },
    ...sysfsSide(dev),
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
    dirtyTracking: dirty.method,
    ...(dirty.reason ? { dirtyTrackingReason: dirty.reason } : {}),
    dmaLoggingPageSize: dirty.method === 'device' ? await loggingPageSize(dev) : null,
  };
}

export function formatDeviceInfo(d: DeviceDescription): string {
  const iommu = d.simulated
    ? `none: a simulated device (${d.simulated}), no IOMMU group or cdev`
    : [d.iommuGroup !== null ? `group ${d.iommuGroup} (${d.groupFile})` : 'no group', d.cdev ? `cdev ${d.cdev}` : 'no cdev'].join(', ');
  const lines = [
    `device ${d.device}`,
    `  pci        ${d.pci.id} rev ${d.pci.revision}, subsystem ${d.pci.subsystem}, class ${d.pci.class}`,
    `  driver     ${d.driver ?? (d.simulated ? '- (simulated device)' : '- (unknown)')}`,
    `  iommu      ${iommu}${d.simulated ? '' : `; opened through ${d.iommu}`}`,
  ];
  if (d.sysfs) lines.push(`  sysfs      ${d.sysfs}`);
  if (d.migration) {
    const size = d.migration.dataSize !== undefined ? `, stop-copy size ${d.migration.dataSize} bytes` : '';
    lines.push(`  migration  ${d.migration.flags.join('|')}, state ${d.migration.state}${size}`);
  } else {
    lines.push('  migration  not supported (no VFIO migration: cannot be snapshotted)');
  }
  const dirty =
    d.dirtyTracking === 'device'
      ? `device DMA logging${d.dmaLoggingPageSize !== null ? `, ${d.dmaLoggingPageSize}-byte pages` : ''}`
      : d.dirtyTracking === 'iommu'
        ? 'IOMMU dirty tracking (a dirty-tracking HWPT)'
        : `none (${d.dirtyTrackingReason})`;
  lines.push(`  dirty      ${dirty}`);
  lines.push(`  flags      ${d.flags.join('|') || '-'}`, 'regions:');
  for (const r of d.regions) {
    if (r.size === 0) continue;
    lines.push(`  ${String(r.index).padStart(2)} ${r.name.padEnd(6)} size 0x${r.size.toString(16).padEnd(8)} offset 0x${r.offset.toString(16)}  ${r.flags.join('|')}`);
  }
  lines.push('irqs:');
  for (const i of d.irqs) lines.push(`  ${String(i.index).padStart(2)} ${i.name.padEnd(5)} count ${String(i.count).padEnd(4)} ${i.flags.join('|')}`);
  return lines.join('\n') + '\n';
}

export const infoCommand: CliCommand = {
  name: 'info',
  summary: 'what a device is: PCI identity, driver, IOMMU group, regions, IRQs, migration flags and state, dirty tracking',
  define(cmd: Command) {
    cmd.argument('<device>', 'a PCI address, mdev UUID, sysfs path, /dev/vfio/devices/vfioN, or a sim spec');
    addCommonOptions(cmd, { devices: true });
  },
  async run(ctx, [device], opts) {
    const arg = parseDeviceArg(device as string);
    return withDevices([arg.spec], openOptions(opts), async ([dev]) => {
      const d = await describeDevice(dev);
      ctx.print(formatDeviceInfo(d));
      return { json: { ...d } };
    });
  },
};

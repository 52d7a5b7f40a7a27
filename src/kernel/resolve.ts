/**
 * Turning what a user types into the files VFIO needs: a PCI address (`0000:01:00.0` or
 * `01:00.0`), an mdev UUID, a sysfs device path, or a cdev path (`/dev/vfio/devices/vfioN`),
 * into the device's sysfs node, its VFIO cdev and its IOMMU group.
 *
 * Sources: Documentation/driver-api/vfio.rst ("VFIO device cdev", "Groups, Devices, and
 * IOMMUs"): a bound device has `<sysfs>/vfio-dev/vfioN` (cdev, Linux 6.6+) and
 * `<sysfs>/iommu_group` → `/sys/kernel/iommu_groups/N` (group file `/dev/vfio/N`, or
 * `/dev/vfio/noiommu-N` in no-IOMMU mode).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { VfioError } from '../base/errors';

export interface ResolvedDevice {
  /** What the user asked for, as given. */
  spec: string;
  /** The device's name as VFIO_GROUP_GET_DEVICE_FD wants it: PCI address or mdev UUID. */
  name: string;
  /** Canonical sysfs node, or undefined when opened by cdev path without sysfs. */
  sysfsPath?: string;
  /** `/dev/vfio/devices/vfioN` when the kernel exposes a cdev for it. */
  cdevPath?: string;
  /** IOMMU group number and its file, when the device has a group. */
  group?: { id: string; path: string };
  /** A mediated device (`<sysfs>/mdev_type` exists): no IOMMU page table of its own. */
  mdev?: boolean;
}

const PCI_ADDR = /^(?:([0-9a-f]{4,}):)?([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])$/i;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** Roots of the files looked at; tests point them at a fake tree. */
export interface SysfsRoots {
  sys: string;
  dev: string;
}
const DEFAULT_ROOTS: SysfsRoots = { sys: '/sys', dev: '/dev' };

/** Normalise `1:0.0`-style input: `01:00.0` → `0000:01:00.0`. Returns undefined when not a PCI address. */
export function normalisePciAddress(text: string): string | undefined {
  const m = PCI_ADDR.exec(text);
  if (!m) return undefined;
  return `${(m[1] ?? '0000').toLowerCase().padStart(4, '0')}:${m[2].toLowerCase()}:${m[3].toLowerCase()}.${m[4]}`;
}

export function isMdevUuid(text: string): boolean {
  return UUID.test(text);
}

function usage(spec: string, why: string): VfioError {
  return new VfioError(`cannot resolve device '${spec}': ${why}`, { code: 'EVFIO_NO_DEVICE', kind: 'usage', device: spec });
}

function exists(p: string): boolean {
  try {
    fs.accessSync(p);
    return true;
  } catch {
    return false;
  }
}

/** The sysfs node a spec names, or a usage error saying what was looked for. */
function sysfsNodeOf(spec: string, roots: SysfsRoots): string {
  const pci = normalisePciAddress(spec);
  const candidates: string[] = [];
  if (pci) candidates.push(path.join(roots.sys, 'bus/pci/devices', pci));
  else if (isMdevUuid(spec)) candidates.push(path.join(roots.sys, 'bus/mdev/devices', spec.toLowerCase()));
  else if (spec.startsWith('/')) candidates.push(spec);
  else throw usage(spec, 'expected a PCI address (0000:01:00.0), an mdev UUID, a sysfs path or /dev/vfio/devices/vfioN');
  for (const c of candidates) {
    if (exists(c)) return fs.realpathSync(c);
  }
  throw usage(spec, `no such device (looked at ${candidates.join(', ')})`);
}

/** The sysfs node of cdev `/dev/vfio/devices/vfioN`, through /sys/class/vfio-dev/vfioN/device. */
function sysfsOfCdev(cdev: string, roots: SysfsRoots): string | undefined {
  const link = path.join(roots.sys, 'class/vfio-dev', path.basename(cdev), 'device');
  return exists(link) ? fs.realpathSync(link) : undefined;
}

/**
 * Resolve a device spec to its sysfs node, cdev and group. Throws a `VfioError` (kind 'usage',
 * code 'EVFIO_NO_DEVICE') when the device does not exist or is not bound to a VFIO driver.
 */
export function resolveDevice(spec: string, roots: SysfsRoots = DEFAULT_ROOTS): ResolvedDevice {
  let sysfsPath: string | undefined;
  if (spec.startsWith(path.join(roots.dev, 'vfio/devices') + '/')) {
    if (!exists(spec)) throw usage(spec, 'no such cdev');
    sysfsPath = sysfsOfCdev(spec, roots);
    if (!sysfsPath) return { spec, name: path.basename(spec), cdevPath: spec };
  } else {
    sysfsPath = sysfsNodeOf(spec, roots);
  }
  const name = path.basename(sysfsPath);
  const out: ResolvedDevice = { spec, name, sysfsPath };
  if (exists(path.join(sysfsPath, 'mdev_type'))) out.mdev = true;

  const vfioDev = path.join(sysfsPath, 'vfio-dev');
  if (exists(vfioDev)) {
    const entry = fs.readdirSync(vfioDev).find((e) => /^vfio\d+$/.test(e));
    if (entry) out.cdevPath = path.join(roots.dev, 'vfio/devices', entry);
  }
  const groupLink = path.join(sysfsPath, 'iommu_group');
  if (exists(groupLink)) {
    const id = path.basename(fs.realpathSync(groupLink));
    const plain = path.join(roots.dev, 'vfio', id);
    const noiommu = path.join(roots.dev, 'vfio', `noiommu-${id}`);
    out.group = { id, path: exists(plain) || !exists(noiommu) ? plain : noiommu };
  }
  if (!out.cdevPath && !out.group) {
    throw usage(spec, `${sysfsPath} has neither a vfio-dev cdev nor an iommu_group: is it bound to a VFIO driver (vfio-pci, an mdev driver)?`);
  }
  return out;
}

/**
 * `openDevice(spec)`: from a device spec to an open `VfioDevice`.
 *
 * Specs: a PCI address (`0000:01:00.0`), an mdev UUID, a sysfs path, a cdev path
 * (`/dev/vfio/devices/vfioN`), or a spec a registered provider serves (the simulated device's
 * `sim`, `sim:SIZE`, once src/sim's `registerSimulator()` ran). The IOMMU path is `iommufd` when the device has a cdev and /dev/iommu
 * exists, else `legacy`, unless the caller picks one.
 */
import * as fs from 'node:fs';
import type { Binding } from './binding/types';
import { loadBinding } from './binding';
import { VfioDevice } from './device';
import { openIommufd, openLegacy, type IommuDirtyMode, type IommuKind } from './iommu';
import { resolveDevice, type SysfsRoots } from './resolve';

export interface OpenOptions {
  /**
   * The binding for real devices (default: the addon, or koffi when it cannot load). A device
   * provider (`registerDeviceProvider`) gets it too and may serve its devices through it.
   */
  binding?: Binding;
  /** Which IOMMU path to use for real devices; default iommufd when available. */
  iommu?: IommuKind;
  /**
   * IOMMU dirty tracking (src/kernel/iommu.ts `IommuDirtyMode`): 'off' (default), 'auto' (a
   * dirty-tracking HWPT when the IOMMU can and the device has no DMA logging), 'on' (or fail:
   * EVFIO_NO_HWPT, EVFIO_NO_IOMMU_DIRTY). The tracker is then `device.iommu.dirty`.
   */
  iommuDirtyTracking?: IommuDirtyMode;
  /** sysfs and /dev roots (tests). */
  roots?: SysfsRoots;
}

/**
 * A source of devices besides the kernel's VFIO devices, consulted by `openDevice()` before the
 * kernel: the simulated device (src/sim) registers one for `sim` specs. The kernel layer never
 * imports a provider; the CLI, tests and VMMs register the ones they want.
 */
export interface DeviceProvider {
  /** A short name for logs ('sim'). */
  readonly name: string;
  /** Whether this provider serves `spec`. */
  handles(spec: string): boolean;
  /** Open `spec`. Same errors and guarantees as `openDevice()`. */
  open(spec: string, opts: OpenOptions): VfioDevice;
}

const providers: DeviceProvider[] = [];

/**
 * Add a device provider (idempotent for the same object). Returns a function that removes it.
 * Providers are asked in the order they were registered.
 */
export function registerDeviceProvider(provider: DeviceProvider): () => void {
  if (!providers.includes(provider)) providers.push(provider);
  return () => {
    const i = providers.indexOf(provider);
    if (i >= 0) providers.splice(i, 1);
  };
}

/** The registered provider that serves `spec`, if any. */
export function providerFor(spec: string): DeviceProvider | undefined {
  return providers.find((p) => p.handles(spec));
}

let defaultBinding: Binding | undefined;

/** The process-wide real binding (addon, else koffi), loaded on first use. */
export function getDefaultBinding(): Binding {
  // Loaded on first use, so that importing the library never loads native code by itself.
  if (!defaultBinding) defaultBinding = loadBinding();
  return defaultBinding;
}

/**
 * Open a device: a registered provider's (`registerDeviceProvider`) when one serves the spec,
 * else the kernel's VFIO device. Throws `VfioError`: kind 'usage' (EVFIO_NO_DEVICE) when the
 * spec names no VFIO device, 'unsupported' when the chosen IOMMU path is not available for it,
 * 'syscall' when the kernel refuses (EBUSY: opened elsewhere; EPERM/EACCES: permissions).
 * Nothing stays open on failure.
 */
export function openDevice(spec: string, opts: OpenOptions = {}): VfioDevice {
  const provider = providerFor(spec);
  if (provider) return provider.open(spec, opts);
  const binding = opts.binding ?? getDefaultBinding();
  const dev = resolveDevice(spec, opts.roots);
  const kind = opts.iommu ?? (dev.cdevPath && fs.existsSync('/dev/iommu') ? 'iommufd' : 'legacy');
  const dirty = { dirtyTracking: opts.iommuDirtyTracking };
  const { fd, ctx } = kind === 'iommufd' ? openIommufd(binding, dev, dirty) : openLegacy(binding, dev, dirty);
  return new VfioDevice(binding, spec, fd, ctx);
}

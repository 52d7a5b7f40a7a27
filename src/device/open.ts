/**
 * `openDevice(spec)`: from a device spec to an open `VfioDevice`.
 *
 * Specs: a PCI address (`0000:01:00.0`), an mdev UUID, a sysfs path, a cdev path
 * (`/dev/vfio/devices/vfioN`), or a simulated device (`sim`, `sim:SIZE`, see
 * src/binding/sim). The IOMMU path is `iommufd` when the device has a cdev and /dev/iommu
 * exists, else `legacy`, unless the caller picks one.
 */
import * as fs from 'node:fs';
import type { Binding } from '../binding/types';
import { loadBinding } from '../binding';
import { SimBinding } from '../binding/sim';
import { VfioDevice } from './device';
import { dmaAddress, openIommufd, openLegacy, type IommuContext, type IommuKind } from './iommu';
import { VfioError } from '../errors';
import { resolveDevice, type SysfsRoots } from './resolve';

export interface OpenOptions {
  /** The binding for real devices (default: the addon, or koffi when it cannot load). */
  binding?: Binding;
  /** The binding that serves `sim:` specs (default: one shared SimBinding over `binding`). */
  simBinding?: Binding;
  /** Which IOMMU path to use for real devices; default iommufd when available. */
  iommu?: IommuKind;
  /** sysfs and /dev roots (tests). */
  roots?: SysfsRoots;
}

/** True for specs served by the simulated device. */
export function isSimSpec(spec: string): boolean {
  return spec === 'sim' || spec.startsWith('sim:') || spec.startsWith('sim#');
}

/**
 * The simulated device's IOMMU context: it does no DMA, so mappings are only checked (alignment,
 * overlap) and recorded, the way the kernel would refuse them.
 */
function simContext(binding: Binding, device: string): IommuContext & { mappings: Map<bigint, number> } {
  const mappings = new Map<bigint, number>();
  return {
    kind: 'sim',
    mappings,
    async mapDma(iova, buffer) {
      dmaAddress(binding, iova, buffer, device);
      for (const [at, len] of mappings) {
        if (iova < at + BigInt(len) && at < iova + BigInt(buffer.length)) throw VfioError.fromErrno(17, { syscall: 'ioctl', op: 'DMA map', device });
      }
      mappings.set(iova, buffer.length);
    },
    async unmapDma(iova) {
      if (!mappings.delete(iova)) throw VfioError.fromErrno(2, { syscall: 'ioctl', op: 'DMA unmap', device });
    },
    close() {
      mappings.clear();
    },
  };
}

let defaultBinding: Binding | undefined;
let defaultSim: Binding | undefined;

/** The process-wide real binding (addon, else koffi), loaded on first use. */
export function getDefaultBinding(): Binding {
  // Loaded on first use, so that importing the library never loads native code by itself.
  if (!defaultBinding) defaultBinding = loadBinding();
  return defaultBinding;
}

/** The process-wide simulated-device binding, delegating real fds to the default binding. */
export function getDefaultSimBinding(): Binding {
  if (!defaultSim) defaultSim = new SimBinding(getDefaultBinding());
  return defaultSim;
}

/**
 * Open a device. Throws `VfioError`: kind 'usage' (EVFIO_NO_DEVICE) when the spec names no
 * VFIO device, 'unsupported' when the chosen IOMMU path is not available for it, 'syscall' when
 * the kernel refuses (EBUSY: opened elsewhere; EPERM/EACCES: permissions). Nothing stays open
 * on failure.
 */
export function openDevice(spec: string, opts: OpenOptions = {}): VfioDevice {
  if (isSimSpec(spec)) {
    const binding = opts.simBinding ?? getDefaultSimBinding();
    return new VfioDevice(binding, spec, binding.open(spec, fs.constants.O_RDWR), simContext(binding, spec));
  }
  const binding = opts.binding ?? getDefaultBinding();
  const dev = resolveDevice(spec, opts.roots);
  const kind = opts.iommu ?? (dev.cdevPath && fs.existsSync('/dev/iommu') ? 'iommufd' : 'legacy');
  const { fd, ctx } = kind === 'iommufd' ? openIommufd(binding, dev) : openLegacy(binding, dev);
  return new VfioDevice(binding, spec, fd, ctx);
}

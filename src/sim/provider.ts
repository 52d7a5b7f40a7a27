/**
 * The simulated device as a device provider (src/kernel/open.ts `registerDeviceProvider`):
 * after `registerSimulator()`, `openDevice('sim:64MiB')` opens a simulated vfio-pci device. The
 * kernel layer never imports this module; the CLI, the tests and VMMs that want simulated
 * devices (demos, their own tests) register it.
 */
import * as fs from 'node:fs';
import { VfioError } from '../base/errors';
import type { Binding } from '../kernel/binding/types';
import { VfioDevice } from '../kernel/device';
import { dmaAddress, type IommuContext } from '../kernel/iommu';
import { getDefaultBinding, registerDeviceProvider, type DeviceProvider, type OpenOptions } from '../kernel/open';
import { SimBinding } from './binding';
import { isSimPath } from './spec';

/**
 * The simulated device's IOMMU context: it does no DMA, so mappings are only checked (alignment,
 * overlap) and recorded, the way the kernel would refuse them.
 */
export function simIommuContext(binding: Binding, device: string): IommuContext & { mappings: Map<bigint, number> } {
  const mappings = new Map<bigint, number>();
  return {
    kind: 'virtual',
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

/** One SimBinding per real binding it delegates to (the default one, or the caller's). */
const simBindings = new WeakMap<Binding, SimBinding>();

/** The process-wide SimBinding over `inner` (default: the default real binding). */
export function defaultSimBinding(inner: Binding = getDefaultBinding()): SimBinding {
  let b = simBindings.get(inner);
  if (!b) simBindings.set(inner, (b = new SimBinding(inner)));
  return b;
}

/**
 * Open a simulated device through `binding` (a SimBinding), as `openDevice()` does for the
 * specs the simulator serves. Tests use it with a SimBinding of their own.
 */
export function openSimDevice(spec: string, binding: SimBinding = defaultSimBinding()): VfioDevice {
  return new VfioDevice(binding, spec, binding.open(spec, fs.constants.O_RDWR), simIommuContext(binding, spec));
}

/**
 * The provider: `sim`, `sim:...` and `sim#...` specs (src/sim/spec.ts). `OpenOptions.binding`,
 * when given, is either a SimBinding to open the device in, or the real binding the simulator's
 * real fds go through.
 */
export const simulatorProvider: DeviceProvider = {
  name: 'sim',
  handles: isSimPath,
  open(spec: string, opts: OpenOptions): VfioDevice {
    const b = opts.binding;
    return openSimDevice(spec, b instanceof SimBinding ? b : defaultSimBinding(b));
  },
};

/** Let `openDevice()` open simulated devices (`sim`, `sim:SIZE`, ...). Idempotent; returns the undo. */
export function registerSimulator(): () => void {
  return registerDeviceProvider(simulatorProvider);
}

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
import type { SimDevice } from './device';
import { SimDmaSpace, SimIommuDirty } from './dma';
import { Errno } from './errno';
import { isSimPath } from './spec';

/**
 * The simulated device's IOMMU context: mappings are checked (alignment, overlap) the way the
 * kernel would refuse them, and kept with their Buffers in a `SimDmaSpace` that the device's DMA
 * engine writes through (src/sim/dma.ts). With `dirty`, the context also has the simulated
 * IOMMU's dirty tracking (`IommuContext.dirty`), as a dirty-tracking HWPT would give.
 */
export function simIommuContext(
  binding: Binding,
  device: string,
  opts: { sim?: SimDevice; dirty?: boolean } = {},
): IommuContext & { space: SimDmaSpace; mappings: ReadonlyMap<bigint, number>; dirty?: SimIommuDirty } {
  const space = new SimDmaSpace();
  opts.sim?.attachDma(space);
  const errno = (e: unknown, op: string): unknown => (e instanceof Errno ? VfioError.fromErrno(e.errno, { syscall: 'ioctl', op, device }) : e);
  return {
    kind: 'virtual',
    space,
    get mappings() {
      return space.mappings;
    },
    dirty: opts.dirty ? new SimIommuDirty(space, device) : undefined,
    async mapDma(iova, buffer, access = {}) {
      dmaAddress(binding, iova, buffer, device);
      try {
        space.map(iova, buffer, access);
      } catch (e) {
        throw errno(e, 'DMA map');
      }
    },
    async unmapDma(iova) {
      try {
        space.unmap(iova);
      } catch (e) {
        throw errno(e, 'DMA unmap');
      }
    },
    close() {
      opts.sim?.detachDma(space);
      space.clear();
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
export function openSimDevice(spec: string, binding: SimBinding = defaultSimBinding(), opts: Pick<OpenOptions, 'iommuDirtyTracking'> = {}): VfioDevice {
  const fd = binding.open(spec, fs.constants.O_RDWR);
  const sim = binding.device(fd);
  const mode = opts.iommuDirtyTracking ?? 'off';
  // 'auto' as on iommufd: IOMMU tracking only for a device without DMA logging of its own.
  const dirty = mode === 'on' || (mode === 'auto' && !sim.options.dmaLogging);
  return new VfioDevice(binding, spec, fd, simIommuContext(binding, spec, { sim, dirty }));
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
    return openSimDevice(spec, b instanceof SimBinding ? b : defaultSimBinding(b), opts);
  },
};

/** Let `openDevice()` open simulated devices (`sim`, `sim:SIZE`, ...). Idempotent; returns the undo. */
export function registerSimulator(): () => void {
  return registerDeviceProvider(simulatorProvider);
}

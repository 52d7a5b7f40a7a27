/** Device arguments of the CLI: `[ID=]DEVICE`, checked before anything is opened, and opened together. */
import type { Binding } from '../kernel/binding/types';
import { loadBinding } from '../kernel/binding';
import type { VfioDevice } from '../kernel/device';
import { getDefaultBinding, openDevice, type OpenOptions } from '../kernel/open';
import { isSimPath, parseSimSpec } from '../sim/spec';
import { usageError } from './report';

/** A device argument: the id it is saved under / paired by, and its spec. */
export interface DeviceArg {
  id?: string;
  spec: string;
}

/**
 * `[ID=]DEVICE`: the id a device is saved under (and paired by on restore), then its spec. An
 * id is letters, digits, `_`, `.` and `-`; without one the id is the spec itself. (A spec such
 * as `sim:seed=7` holds an `=` too, but what stands before it is no id.) A simulated-device spec
 * is parsed here, so that a typo is a usage error naming what is wrong (src/sim/spec.ts), not
 * the simulated kernel's EINVAL.
 */
export function parseDeviceArg(arg: string): DeviceArg {
  const m = /^([A-Za-z0-9_.-]+)=(.+)$/.exec(arg);
  const d: DeviceArg = m ? { id: m[1], spec: m[2] } : { spec: arg };
  if (isSimPath(d.spec)) {
    const p = parseSimSpec(d.spec);
    if (typeof p === 'string') throw usageError(`'${d.spec}' is not a valid simulated-device spec: ${p} (README "Simulated devices")`);
  }
  return d;
}

/** OpenOptions from the common --iommu / --binding options (commander checked their values). */
export function openOptions(opts: Record<string, unknown>): OpenOptions {
  const o: OpenOptions = {};
  if (opts.iommu === 'iommufd' || opts.iommu === 'legacy') o.iommu = opts.iommu;
  if (opts.binding === 'native' || opts.binding === 'koffi') o.binding = loadBinding(opts.binding);
  return o;
}

/** The default binding (native, else koffi) for reading files faster; none when neither loads. */
export function anyBinding(): Binding | undefined {
  try {
    return getDefaultBinding();
  } catch {
    return undefined;
  }
}

/** Open every spec (all or none), run `fn`, close them in reverse order whatever happens. */
export async function withDevices<T>(specs: readonly string[], opts: OpenOptions, fn: (devs: VfioDevice[]) => Promise<T>): Promise<T> {
  const devs: VfioDevice[] = [];
  const closeAll = (): void => {
    for (const d of devs.reverse()) {
      try {
        d.close();
      } catch {
        /* the job's own error, if any, is what is reported */
      }
    }
  };
  try {
    for (const s of specs) devs.push(openDevice(s, opts));
  } catch (e) {
    closeAll();
    throw e;
  }
  try {
    return await fn(devs);
  } finally {
    closeAll();
  }
}

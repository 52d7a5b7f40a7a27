/** Device arguments of the CLI: `[ID=]DEVICE`, checked before anything is opened, and opened together. */
import type { Binding } from '../kernel/binding/types';
import { loadBinding } from '../kernel/binding';
import type { VfioDevice } from '../kernel/device';
import { getDefaultBinding, openDevice, providerFor, type OpenOptions } from '../kernel/open';
import { resolveDevice } from '../kernel/resolve';
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

/**
 * What tells the device a spec names from the others: a simulated device's NAME (one without a
 * NAME is a fresh device at every open), a kernel device's sysfs node (or cdev), whatever the
 * spelling (0000:01:00.0, its sysfs path, /dev/vfio/devices/vfioN); undefined when it names a
 * new device, none (opening it says why) or another provider's.
 */
function deviceKey(spec: string): string | undefined {
  if (isSimPath(spec)) {
    const p = parseSimSpec(spec);
    return typeof p === 'string' || p.name === undefined ? undefined : `the simulated device #${p.name}`;
  }
  if (providerFor(spec)) return undefined; // another provider's: its own rules
  try {
    const r = resolveDevice(spec);
    return r.sysfsPath ?? r.cdevPath ?? spec;
  } catch {
    return undefined;
  }
}

/**
 * Refuse a device given twice (exit 2): it would be paused twice and saved twice under two ids,
 * or loaded twice.
 */
function assertDistinct(specs: readonly string[]): void {
  const seen = new Map<string, string>();
  for (const s of specs) {
    const k = deviceKey(s);
    if (k === undefined) continue;
    const first = seen.get(k);
    if (first !== undefined) throw usageError(`'${first}' and '${s}' are the same device (${k}): give each device once`);
    seen.set(k, s);
  }
}

/**
 * Open every spec (all or none; a device given twice is refused first), run `fn`, close them in
 * reverse order whatever happens.
 */
export async function withDevices<T>(specs: readonly string[], opts: OpenOptions, fn: (devs: VfioDevice[]) => Promise<T>): Promise<T> {
  assertDistinct(specs);
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

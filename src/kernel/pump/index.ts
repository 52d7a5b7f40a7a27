/**
 * The data pump (./types.ts): which implementation serves which fds, and the module's exports.
 *
 *   const pump = pumpFor(binding, [src, dst]);
 *   await pump.readRecords(src, dst, buf, { srcOffset, records, maxRecord });
 *
 * The native pump when the binding that handles all of the fds is the native one (its addon
 * loaded); the JS pump over `binding` otherwise (koffi's real fds; a simulated device's virtual
 * ones). A binding that wraps others says which one handles a set of fds with
 * `Binding.kernelBinding` (the simulated device: its inner binding, when none is virtual), so a
 * simulated device whose data_fd is a real pipe (SimDeviceOptions.externalDataFd, the bench's)
 * goes through the native pump.
 */
import type { Binding } from '../binding/types';
import { NativeBinding } from '../binding/native';
import { JsPump } from './js';
import { NativePump } from './native';
import type { Pump, RecordWalker } from './types';

export type * from './types';
export { populate, pumpBuffers } from './buffers';
export { JsPump } from './js';
export { NativePump } from './native';
export {
  checksum, checksumById, checksumImplementation, CHECKSUM_IDS, CHECKSUM_TITLES, DEFAULT_CHECKSUM, isChecksumAlgorithm, jsChecksum,
  type ChecksumAlgorithm,
} from './checksum';

const nativePumps = new WeakMap<NativeBinding, NativePump>();
const jsPumps = new WeakMap<Binding, JsPump>();

/** The binding that handles all of `fds` in the kernel: see Binding.kernelBinding. */
function kernelBindingOf(binding: Binding, fds: readonly number[]): Binding | undefined {
  return binding.kernelBinding ? binding.kernelBinding(fds) : binding;
}

/** The native pump of a binding whose addon is loaded, or undefined. */
function nativePumpOf(binding: Binding | undefined): NativePump | undefined {
  if (!(binding instanceof NativeBinding)) return undefined;
  let p = nativePumps.get(binding);
  if (!p) {
    p = new NativePump(binding.addon);
    nativePumps.set(binding, p);
  }
  return p;
}

/** The pump that serves `fds` (all the fds of the call: source and destination) of `binding`. */
export function pumpFor(binding: Binding, fds: readonly number[]): Pump {
  const native = nativePumpOf(kernelBindingOf(binding, fds));
  if (native) return native;
  let p = jsPumps.get(binding);
  if (!p) {
    p = new JsPump(binding);
    jsPumps.set(binding, p);
  }
  return p;
}

/**
 * The native record walk for a file `fd` of `binding` (the snapshot reader's fast path), or
 * undefined when no native pump serves it: the reader then reads the headers itself.
 */
export function recordWalkerFor(binding: Binding, fd: number): RecordWalker | undefined {
  const native = nativePumpOf(kernelBindingOf(binding, [fd]));
  return native ? native.walkRecords.bind(native) : undefined;
}

/**
 * Buffers for the pump (./types.ts PumpBuffers), with their pages faulted in before the
 * transfer rather than one page fault at a time in the middle of it.
 */
import { nativeAddon } from '../binding/native';

/** The page size every Linux architecture Node runs on has at least; only a stride here. */
const PAGE = 4096;

/**
 * Fault in the pages of `buf` now, for writing: with the addon one madvise(2)
 * MADV_POPULATE_WRITE (Linux 5.14; vfio_populate in include/vfio_pci_sys.h falls back to a write
 * per page), else a write per page from JavaScript. The bytes are unchanged. A fresh 1 MiB
 * buffer costs 256 page faults on its first use; populated, the kernel maps them in one call
 * (measured here: about half the time, bench/README.md).
 */
export function populate(buf: Buffer): void {
  const addon = nativeAddon();
  if (addon) return addon.populate(buf);
  for (let i = 0; i < buf.length; i += PAGE) buf[i] = buf[i];
}

/**
 * Two pump buffers of `size` bytes (the pump uses the second only where it runs a reading
 * thread beside the writing one: several CPUs), the first populated at once (populate()); the
 * second faults in as it is used, on the reading thread.
 */
export function pumpBuffers(size: number): [Buffer, Buffer] {
  const first = Buffer.allocUnsafe(size);
  populate(first);
  return [first, Buffer.allocUnsafe(size)];
}

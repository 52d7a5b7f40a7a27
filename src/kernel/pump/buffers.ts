/**
 * Buffers for the pump (./types.ts PumpBuffers), with their pages faulted in before the
 * transfer rather than one page fault at a time in the middle of it.
 */
import { nativeAddon } from '../binding/native';

/** The page size every Linux architecture Node runs on has at least; only a stride here. */
const PAGE = 4096;

/**
 * Fault in the pages of `buf`, for writing: with the addon one madvise(2) MADV_POPULATE_WRITE
 * (Linux 5.14; vfio_populate in include/vfio_pci_sys.h falls back to a write per page) on the
 * libuv thread pool, so that page zeroing stays off the JS thread; without it, a write per page
 * here. The bytes are unchanged; nothing else may write `buf` until the promise resolves (the
 * fallbacks write each page's first byte back). A fresh 1 MiB buffer costs 256 page faults on
 * its first use; populated, the kernel maps them in one call (about half the time here).
 * Never rejects: a buffer left unpopulated only faults in later.
 */
export async function populate(buf: Buffer): Promise<void> {
  const addon = nativeAddon();
  if (addon) return addon.populate(buf).catch(() => undefined);
  for (let i = 0; i < buf.length; i += PAGE) buf[i] = buf[i];
}

/**
 * Two pump buffers of `size` bytes (the pump uses the second only where it runs a reading
 * thread beside the writing one: several CPUs), and `ready`, which resolves once the first is
 * populated (populate()); the second faults in as it is used, on the reading thread. Use the
 * buffers once `ready` has resolved.
 */
export function pumpBuffers(size: number): { buffers: [Buffer, Buffer]; ready: Promise<void> } {
  const first = Buffer.allocUnsafe(size);
  return { buffers: [first, Buffer.allocUnsafe(size)], ready: populate(first) };
}

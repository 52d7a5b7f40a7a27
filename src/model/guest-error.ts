/**
 * What the device model does when a guest access cannot be carried out.
 *
 * A VMM calls the config-space handlers (`VfioPciDevice.configRead/configWrite`) and the BAR
 * handlers (`HostBus.map()`'s handler) on its vCPU path, with offsets, sizes and values the guest
 * chose: nothing a guest does may throw out of them. A failure is logged (debug namespace
 * `vfio:guest`) and reported to the VMM as a `GuestError` on VfioPciDevice's `guest-error`
 * event; the access completes as real hardware would complete a failed one: a read returns
 * all-ones for the bytes that could not be read, a write is dropped where it could not be done,
 * and the model's state (the config shadow, the MSI-X table) keeps what the guest wrote.
 */
import { logger } from '../base/log';

const log = logger('guest');

/** The guest access that went wrong. */
export type GuestAccess = 'config-read' | 'config-write' | 'bar-read' | 'bar-write';

/**
 * The part of it that failed:
 *  - `access`: the access itself is invalid (size, alignment or range: e.g. a 2-byte MSI-X table
 *    access, a config access crossing a dword); it is dropped, a read returns all-ones;
 *  - `device`: the device's config or region read/write (pread/pwrite) failed; a read returns
 *    all-ones for the device's bytes;
 *  - `bus`: the host bus refused to map a BAR (or to unmap one); the BAR stays off the bus until
 *    the next config write that changes BARs or COMMAND tries again;
 *  - `interrupts`: VFIO_DEVICE_SET_IRQS or the host's interrupt router failed; the next change
 *    of the guest's interrupt set-up tries again.
 */
export type GuestErrorStep = 'access' | 'device' | 'bus' | 'interrupts';

export interface GuestError {
  /** The device's id (`VfioPciDevice.id`). */
  device: string;
  access: GuestAccess;
  /** BAR index (0..5) for BAR accesses. */
  bar?: number;
  /** Byte offset in config space, or from the BAR's start. */
  offset: number;
  /** Bytes accessed (what the guest asked for, valid or not). */
  size: number;
  /** The value written (config writes: the guest's value; BAR writes: the bytes, little-endian). */
  value?: number | bigint;
  step: GuestErrorStep;
  /** What was thrown: a VfioError from the library, or the host's own error from its bus or router. */
  error: Error;
}

/** Where guest errors go (VfioPciDevice emits them as `guest-error`). */
export type GuestErrorSink = (e: GuestError) => void;

/**
 * Log `e` and give it to `sink`. Never throws: a sink (a VMM's event listener) that throws is
 * logged and ignored, since the caller is a guest access.
 */
export function reportGuestError(sink: GuestErrorSink, e: Omit<GuestError, 'error'> & { error: unknown }): void {
  const error = e.error instanceof Error ? e.error : new Error(String(e.error));
  const where = e.bar !== undefined ? `BAR${e.bar}+0x${e.offset.toString(16)}` : `0x${e.offset.toString(16)}`;
  log('%s: %s of %d bytes at %s failed (%s): %s', e.device, e.access, e.size, where, e.step, error.message);
  try {
    sink({ ...e, error });
  } catch (le) {
    log('%s: a guest-error listener threw: %o', e.device, le);
  }
}

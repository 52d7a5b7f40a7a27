/**
 * Moving the bytes of a migration session: draining a saving data_fd, feeding a RESUMING one.
 *
 * data_fd rules (include/uapi/linux/vfio.h "VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE", "PRE_COPY";
 * shared/kernel-vfio/README.md):
 *  - it is a stream: read(2)/write(2) only (pread → ESPIPE);
 *  - STOP_COPY: read until 0; 0 is the end and stays the end;
 *  - PRE_COPY / PRE_COPY_P2P: the end of the data available *now* is reported as ENOMSG (the
 *    uAPI's wording) or as read() == 0 (mtty): both mean "nothing more for now", not the end;
 *  - RESUMING: the exact bytes of one saving session, in any segmentation; writes may be short;
 *    any write error is fatal for the session.
 * Reads and writes go through the binding, which runs them off the JS thread; one reused
 * buffer bounds memory whatever the state's size.
 */
import type { Binding } from './binding/types';
import { VfioError } from '../base/errors';

/** Default transfer buffer: 1 MiB. */
export const DEFAULT_BUFFER_SIZE = 1 << 20;

export interface DrainOptions {
  /** PRE_COPY: stop at the temporary end (0 or ENOMSG) instead of treating 0 as EOF. */
  precopy?: boolean;
  /** Reused transfer buffer (default: a new one of DEFAULT_BUFFER_SIZE). */
  buffer?: Buffer;
  /** Called after each chunk with the total bytes so far. */
  onProgress?: (bytes: number) => void;
  /** Device name for errors. */
  device?: string;
}

export interface DrainResult {
  bytes: number;
  /** 'eof': the session's data is complete (STOP_COPY). 'for-now': PRE_COPY's temporary end. */
  end: 'eof' | 'for-now';
}

/**
 * Read the data_fd until its end, handing full buffers (and the last partial one) to `sink`.
 * The Buffer passed to `sink` is a view of the reused buffer: the sink must be done with it
 * when its promise settles. Errors are `VfioError`s with step 'save:read' and the device.
 */
export async function drainSession(
  binding: Binding,
  fd: number,
  sink: (chunk: Buffer) => Promise<void>,
  opts: DrainOptions = {},
): Promise<DrainResult> {
  const buf = opts.buffer ?? Buffer.allocUnsafe(DEFAULT_BUFFER_SIZE);
  let total = 0;
  for (;;) {
    let filled = 0;
    let end: DrainResult['end'] | undefined;
    while (filled < buf.length) {
      let n: number;
      try {
        n = await binding.read(fd, buf, filled, buf.length - filled);
      } catch (e) {
        if (opts.precopy && e instanceof VfioError && e.code === 'ENOMSG') {
          end = 'for-now';
          break;
        }
        throw e instanceof VfioError ? onDataFd(e, 'read', total + filled).annotate({ step: 'save:read', device: opts.device }) : e;
      }
      if (n === 0) {
        end = opts.precopy ? 'for-now' : 'eof';
        break;
      }
      filled += n;
    }
    if (filled > 0) {
      await sink(buf.subarray(0, filled));
      total += filled;
      opts.onProgress?.(total);
    }
    if (end) return { bytes: total, end };
  }
}

/**
 * Write every chunk of `source` to a RESUMING data_fd, looping on short writes. Errors are
 * `VfioError`s with step 'load:write'; the caller must then reset the device (a driver may
 * have kept part of the bytes).
 */
export async function feedSession(
  binding: Binding,
  fd: number,
  source: AsyncIterable<Buffer>,
  opts: { onProgress?: (bytes: number) => void; device?: string; signal?: AbortSignal } = {},
): Promise<{ bytes: number }> {
  let total = 0;
  for await (const chunk of source) {
    opts.signal?.throwIfAborted();
    let off = 0;
    while (off < chunk.length) {
      let n: number;
      try {
        n = await binding.write(fd, chunk, off, chunk.length - off);
      } catch (e) {
        throw e instanceof VfioError ? onDataFd(e, 'write', total + off).annotate({ step: 'load:write', device: opts.device }) : e;
      }
      if (n <= 0) {
        throw new VfioError(`write to data_fd returned ${n} after ${total + off} bytes`, {
          code: 'EIO', errno: 5, syscall: 'write', step: 'load:write', device: opts.device,
        });
      }
      off += n;
    }
    total += chunk.length;
    opts.onProgress?.(total);
  }
  return { bytes: total };
}

/** Say in the message that the failing read/write was on the data_fd, and after how many bytes. */
export function onDataFd(e: VfioError, what: 'read' | 'write', at: number): VfioError {
  if (!e.op) {
    e.op = `data_fd ${what}`;
    e.message = e.message.replace(new RegExp(`^${what} failed`), `${what} on data_fd failed after ${at} bytes`);
  }
  return e;
}

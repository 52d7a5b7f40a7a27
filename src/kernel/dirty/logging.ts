/**
 * Device DMA logging (vfio.h "VFIO_DEVICE_FEATURE_DMA_LOGGING_START / STOP / REPORT", Linux 6.1):
 * the device itself records which pages it wrote, over IOVA ranges fixed at START, and reports
 * them per range as a bitmap that is read-and-cleared. Drivers with logging ops in 6.12: mlx5, pds
 * and mtty (mtty's are no-ops, so the kernel core's argument checks are real and no bit is set).
 *
 * One `DmaLogging` per open device (`DmaLogging.of(device)`), owning whether logging runs, over
 * which ranges and at which page size. The ranges are fixed at START: to change them, stop and
 * start again, which loses the dirty state gathered so far (VFIO-NOTES "DMA logging").
 *
 * Every kernel rule is also checked here first, so that a bad argument is a usage error naming
 * the problem, not a bare EINVAL; `checkLoggingRanges` (./ranges.ts) is that prediction.
 */
import { VfioError, type EvfioCode } from '../../base/errors';
import { logger } from '../../base/log';
import type { VfioDevice } from '../device';
import { hasDmaLogging } from './probe';
import * as s from '../uapi/structs';
import * as v from '../uapi/vfio';
import { isPowerOfTwo } from './bitmap';
import { checkLoggingRanges, rangeCovered, type DmaRange } from './ranges';
import { MIN_DIRTY_PAGE_SIZE, bitmapFor, readFailure, type DirtyTarget, type ReportFailurePolicy, type ReportResult } from './report';

const log = logger('dirty');

/** Logging as it runs. */
export interface LoggingState {
  /** The ranges given to START, in the order given (bytes). */
  readonly ranges: readonly DmaRange[];
  /** The page size the driver logs at: what the kernel handed back (the driver may change it). */
  readonly pageSize: number;
  /** The page size START asked for. */
  readonly requestedPageSize: number;
}

function usage(code: EvfioCode, message: string, device: string, op: string): VfioError {
  return new VfioError(message, { code, kind: 'usage', device, op });
}

function checkPageSize(pageSize: number, device: string, op: string): void {
  if (!isPowerOfTwo(pageSize) || pageSize < MIN_DIRTY_PAGE_SIZE) {
    throw usage(
      'EVFIO_DIRTY_PAGE_SIZE',
      `DMA logging page size ${pageSize} must be a power of two of at least ${MIN_DIRTY_PAGE_SIZE} bytes (the kernel answers EINVAL to a report otherwise)`,
      device,
      op,
    );
  }
}

const instances = new WeakMap<VfioDevice, DmaLogging>();

export class DmaLogging {
  private probed?: boolean;
  private state?: LoggingState;

  private constructor(readonly device: VfioDevice) {}

  /** The one DmaLogging of `device` (created on first use). */
  static of(device: VfioDevice): DmaLogging {
    let l = instances.get(device);
    if (!l) instances.set(device, (l = new DmaLogging(device)));
    return l;
  }

  /**
   * Does the device have DMA logging? VFIO_DEVICE_FEATURE PROBE | SET of DMA_LOGGING_START:
   * 0 → yes, ENOTTY → no (no log ops; also every kernel before 6.1). Other errors propagate.
   * Asked once per device.
   */
  probe(): boolean {
    if (this.probed === undefined) this.probed = hasDmaLogging(this.device.binding, this.device.fd, this.device.name);
    return this.probed;
  }

  /** The running logging, or undefined when stopped. */
  get active(): LoggingState | undefined {
    return this.state;
  }

  /**
   * START logging over `ranges` (bytes; see `loggingRanges()` in ./ranges.ts to build them from
   * RAM regions) at `pageSize` bytes (default 4096; a power of two of at least 4 KiB). Resolves
   * with the state, whose `pageSize` is the one the driver chose. Off the JS thread (drivers
   * allocate trackers in it).
   *
   * Errors, before the kernel is asked: EVFIO_DIRTY_ACTIVE (already started: stop first),
   * EVFIO_DIRTY_PAGE_SIZE, EVFIO_DIRTY_RANGES (an empty range, or a kernel rule broken:
   * `checkLoggingRanges()`, the message names the errno it prevents). Then the kernel's: ENOTTY
   * (no DMA logging), the driver's (mlx5: EINVAL while another START is active, ENOMEM...).
   */
  async start(ranges: readonly DmaRange[], opts: { pageSize?: number } = {}): Promise<LoggingState> {
    const device = this.device.name;
    const op = 'DMA logging start';
    if (this.state) throw usage('EVFIO_DIRTY_ACTIVE', 'DMA logging is already started on this device: stop it first (its ranges are fixed at START)', device, op);
    const pageSize = opts.pageSize ?? MIN_DIRTY_PAGE_SIZE;
    checkPageSize(pageSize, device, op);
    const empty = ranges.findIndex((r) => r.length <= 0n);
    if (empty >= 0) throw usage('EVFIO_DIRTY_RANGES', `DMA logging range ${empty} is empty`, device, op);
    const verdict = checkLoggingRanges(ranges, BigInt(pageSize));
    if (verdict) throw usage('EVFIO_DIRTY_RANGES', `bad DMA logging ranges: ${verdict.reason} (the kernel would answer ${verdict.errno})`, device, op);

    const returned = await startRaw(this.device, ranges, BigInt(pageSize));
    const driverPageSize = Number(returned);
    if (!isPowerOfTwo(driverPageSize)) {
      // A driver bug; logging runs, but reports at its page size would be refused.
      await stopRaw(this.device).catch(() => undefined);
      throw new VfioError(`the driver changed the DMA logging page size to ${returned}, not a power of two; logging stopped`, {
        code: 'EVFIO_DIRTY_PAGE_SIZE', kind: 'protocol', device, op,
      });
    }
    this.state = Object.freeze({ ranges: Object.freeze(ranges.map((r) => ({ ...r }))), pageSize: driverPageSize, requestedPageSize: pageSize });
    log('%s: DMA logging started over %d ranges at %d bytes/page (asked %d)', device, ranges.length, driverPageSize, pageSize);
    return this.state;
  }

  /**
   * The page size the driver logs at when asked for `pageSize` (default 4096): START over one
   * page at IOVA 0, then STOP. For diagnostics (`vfio-pci info`): the driver may change the page
   * size (vfio.h "DMA_LOGGING_START": "the driver may change it"), and only START tells.
   * EVFIO_DIRTY_ACTIVE while logging runs; the kernel's errors otherwise (ENOTTY: no logging).
   */
  async probePageSize(pageSize = MIN_DIRTY_PAGE_SIZE): Promise<number> {
    const st = await this.start([{ iova: 0n, length: BigInt(pageSize) }], { pageSize });
    await this.stop();
    return st.pageSize;
  }

  /**
   * REPORT the dirty pages of `target`'s range at its page size into its bitmap (a new one for a
   * plain range; zeroed first either way: the kernel only sets bits), and clear them in the
   * device. The range must lie inside the started ranges (EVFIO_DIRTY_UNTRACKED: outside, the
   * device logs nothing and the bitmap would say "clean" falsely); the page size must be a power
   * of two of at least 4 KiB (EVFIO_DIRTY_PAGE_SIZE; the kernel's rule).
   * EVFIO_DIRTY_NOT_STARTED before start(). A failed REPORT follows `onError` (default 'throw';
   * see {@link ReportFailurePolicy}). Off the JS thread.
   */
  async report(target: DirtyTarget, opts: { onError?: ReportFailurePolicy } = {}): Promise<ReportResult> {
    const device = this.device.name;
    const op = 'DMA logging report';
    const st = this.state;
    if (!st) throw usage('EVFIO_DIRTY_NOT_STARTED', 'DMA logging is not started on this device', device, op);
    checkPageSize(target.pageSize, device, op);
    if (target.length <= 0n) throw usage('EVFIO_DIRTY_RANGES', 'an empty range has nothing to report', device, op);
    if (!rangeCovered(st.ranges, target.iova, target.length)) {
      throw usage(
        'EVFIO_DIRTY_UNTRACKED',
        `the range 0x${target.iova.toString(16)}+0x${target.length.toString(16)} is not inside the logged ranges: the device does not log it`,
        device,
        op,
      );
    }
    const bitmap = bitmapFor(target).zero();
    try {
      await reportRaw(this.device, bitmap.iova, bitmap.length, BigInt(bitmap.pageSize), bitmap.buffer);
      return { bitmap };
    } catch (e) {
      const r = readFailure(e, bitmap, opts.onError);
      log('%s: report of 0x%s+0x%s failed (%s): counted as all dirty', device, bitmap.iova.toString(16), bitmap.length.toString(16), r.error?.code);
      return r;
    }
  }

  /**
   * Report every started range at the logging page size (or `pageSize`), one fresh bitmap per
   * range, in the order of the ranges.
   */
  async reportAll(opts: { pageSize?: number; onError?: ReportFailurePolicy } = {}): Promise<ReportResult[]> {
    const st = this.state;
    if (!st) throw usage('EVFIO_DIRTY_NOT_STARTED', 'DMA logging is not started on this device', this.device.name, 'DMA logging report');
    const out: ReportResult[] = [];
    for (const r of st.ranges) out.push(await this.report({ iova: r.iova, length: r.length, pageSize: opts.pageSize ?? st.pageSize }, opts));
    return out;
  }

  /**
   * STOP logging. A no-op when not started. The state is dropped even when the kernel fails
   * (the error propagates): the dirty state is then unknown, and a new start() begins afresh.
   * Releasing the device (closing its last fd) stops logging in the driver too.
   */
  async stop(): Promise<void> {
    if (!this.state) return;
    this.state = undefined;
    await stopRaw(this.device);
    log('%s: DMA logging stopped', this.device.name);
  }
}

// ------------------------------------------------------------------ the raw ioctls

/** Keep `x` reachable until here (buffers whose address the kernel dereferences). */
function keepAlive(...x: unknown[]): void {
  void x;
}

/**
 * SET DMA_LOGGING_START with no userspace checks: the ranges as given, at `pageSize`. Resolves
 * with the page size the kernel copied back. For tests that want the kernel's own verdict; use
 * `DmaLogging.start()` otherwise.
 */
export async function startRaw(device: VfioDevice, ranges: readonly DmaRange[], pageSize: bigint): Promise<bigint> {
  const rangesBuf = ranges.length ? s.encodeDmaLoggingRanges(ranges) : Buffer.alloc(8);
  const addr = device.binding.bufferAddress(rangesBuf);
  const b = s.encodeFeature(v.VFIO_DEVICE_FEATURE_DMA_LOGGING_START, 'set', s.SIZEOF_DMA_LOGGING_CONTROL, s.encodeDmaLoggingControl(pageSize, ranges.length, addr));
  await device.ioctlAsync(v.VFIO_DEVICE_FEATURE, b, 'VFIO_DEVICE_FEATURE_DMA_LOGGING_START (SET)');
  keepAlive(rangesBuf);
  return s.decodeDmaLoggingControl(b.subarray(s.SIZEOF_DEVICE_FEATURE)).pageSize;
}

/**
 * GET DMA_LOGGING_REPORT of `[iova, iova + length)` at `pageSize` into `buffer`, with no
 * userspace checks and without zeroing `buffer` first. For tests that want the kernel's own
 * verdict; use `DmaLogging.report()` otherwise.
 */
export async function reportRaw(device: VfioDevice, iova: bigint, length: bigint, pageSize: bigint, buffer: Buffer): Promise<void> {
  const addr = device.binding.bufferAddress(buffer);
  const payload = s.encodeDmaLoggingReport({ iova, length, pageSize, bitmapAddr: addr });
  const b = s.encodeFeature(v.VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT, 'get', s.SIZEOF_DMA_LOGGING_REPORT, payload);
  await device.ioctlAsync(v.VFIO_DEVICE_FEATURE, b, 'VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT (GET)');
  keepAlive(buffer);
}

/** SET DMA_LOGGING_STOP (no payload). */
export async function stopRaw(device: VfioDevice): Promise<void> {
  const b = s.encodeFeature(v.VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP, 'set', 0);
  await device.ioctlAsync(v.VFIO_DEVICE_FEATURE, b, 'VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP (SET)');
}

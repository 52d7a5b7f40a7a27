/// <reference path="../binding/native.d.ts" />
/**
 * The native pump: the pump contract (./types.ts) through the addon's vfio_pump
 * (addon/sys.cc; N-API glue in addon/binding.cc): a dedicated thread per call (and a second one
 * that reads while the first writes, with two buffers), the bytes never passing through
 * JavaScript. Arguments are checked here (./args.ts, the same checks as the JS pump); an
 * AbortSignal is wired to the job's cancel eventfd.
 */
import { VfioError } from '../../base/errors';
import { pumpArgs, type PumpArgs } from './args';
import type {
  CopyOptions, CopyResult, Pump, PumpBuffers, ReadRecordsOptions, ReadRecordsResult, RecordWalk, RecordWalkOptions, WriteRecordsOptions,
  WriteRecordsResult,
} from './types';

const ECANCELED = 125;

export class NativePump implements Pump {
  readonly name = 'native' as const;

  /** @param addon the loaded addon (NativeBinding.addon, or nativeAddon()) */
  constructor(private readonly addon: VfioPciNative.Addon) {}

  // Arguments are checked synchronously (pumpArgs throws before any promise exists).
  copy(src: number, dst: number, buffers: PumpBuffers, opts?: CopyOptions): Promise<CopyResult> {
    return this.run(pumpArgs('copy', src, dst, buffers, opts)).then((r) => ({ bytes: r.bytes, checksum: r.checksum, end: r.end as CopyResult['end'] }));
  }

  writeRecords(src: number, dst: number, buffers: PumpBuffers, opts: WriteRecordsOptions): Promise<WriteRecordsResult> {
    return this.run(pumpArgs('write-records', src, dst, buffers, opts)).then((r) => ({
      bytes: r.bytes, records: r.records, written: r.written, headerChecksums: r.headerChecksums, end: r.end as WriteRecordsResult['end'],
    }));
  }

  readRecords(src: number, dst: number, buffers: PumpBuffers, opts: ReadRecordsOptions): Promise<ReadRecordsResult> {
    return this.run(pumpArgs('read-records', src, dst, buffers, opts)).then((r) => {
      const out: ReadRecordsResult = { bytes: r.bytes, records: r.records, read: r.read, headerChecksums: r.headerChecksums, end: r.end as ReadRecordsResult['end'] };
      if (r.header) out.header = r.header;
      return out;
    });
  }

  /** vfio_walk_records: see RecordWalker (./types.ts). */
  walkRecords(fd: number, walk: RecordWalk, size: number, opts: RecordWalkOptions): RecordWalk & { taken: number } {
    return this.addon.walkRecords(fd, walk, size, opts);
  }

  private run(a: PumpArgs): Promise<VfioPciNative.PumpResult> {
    const signal = a.signal;
    if (signal?.aborted) {
      const e = VfioError.fromErrno(ECANCELED, { syscall: a.srcOffset >= 0 ? 'pread' : 'read', cause: signal.reason });
      return Promise.reject(Object.assign(e, { bytesDone: 0, bytesWritten: 0 }));
    }
    const options: VfioPciNative.PumpOptions = { mode: a.mode, checksum: a.checksum };
    if (a.limit >= 0) options.limit = a.limit;
    if (a.srcOffset >= 0) options.srcOffset = a.srcOffset;
    if (a.dstOffset >= 0) options.dstOffset = a.dstOffset;
    if (a.writeback > 0) options.writeback = a.writeback;
    if (a.verify) options.expectChecksum = a.expectChecksum;
    if (a.precopy) options.precopy = true;
    options.overlap = a.overlap;
    if (a.mode !== 'copy') {
      options.prefix = a.prefix;
      options.headerChecksums = a.seeds;
    }
    if (a.mode === 'write-records') options.recordSize = a.recordSize;
    if (a.mode === 'read-records') {
      options.maxRecord = a.maxRecord;
      if (a.records >= 0) options.records = a.records;
      if (a.firstHeader) options.firstHeader = a.firstHeader;
    }
    if (a.idleTimeoutMs >= 0) options.idleTimeoutMs = a.idleTimeoutMs;
    const job = this.addon.pump(a.src, a.dst, a.buffers, options);
    if (!signal) return job.promise;
    const onAbort = (): void => job.cancel();
    signal.addEventListener('abort', onAbort, { once: true });
    return job.promise.then(
      (r) => {
        signal.removeEventListener('abort', onAbort);
        return r;
      },
      (e: unknown) => {
        signal.removeEventListener('abort', onAbort);
        if (signal.aborted && e instanceof VfioError && e.errno === ECANCELED && e.cause === undefined) {
          Object.defineProperty(e, 'cause', { value: signal.reason, configurable: true, writable: true });
        }
        throw e;
      },
    );
  }
}

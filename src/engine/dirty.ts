/**
 * Dirty-page tracking of the devices' DMA during a live migration: which method each device uses,
 * what blocks a migration, and the tracker that runs from setup to switchover.
 *
 * A passed-through device writes guest RAM by DMA, behind KVM's dirty log; a VMM that migrates
 * RAM without those writes sends stale pages. So each sync hands the VMM, per device, one
 * `DirtyBitmap` per tracked range (the KVM dirty-log layout: it ORs them into its own log).
 *
 * Methods, in QEMU's order of preference (hw/vfio/container-base.c, hw/vfio/migration.c):
 *  - 'device': the device's own DMA logging (vfio.h VFIO_DEVICE_FEATURE_DMA_LOGGING_*, Linux
 *    6.1), over ranges built from the device's DMA regions (collapsed to at most 256, the
 *    kernel's limit, as QEMU collapses them), at the page size the driver hands back;
 *  - 'iommu': the host IOMMU's dirty bits (iommufd.h IOMMU_HWPT_SET_DIRTY_TRACKING /
 *    GET_DIRTY_BITMAP, Linux 6.7), when the device was opened with a dirty-tracking HWPT;
 *  - 'none': neither (an mdev on iommufd has no HWPT; the legacy container path has no dirty
 *    tracking this library uses). Policy `untracked`: 'all-dirty' (every sync reports all the
 *    device's DMA memory dirty: correct, only more RAM to send) or 'block'.
 * A device with no DMA regions (nothing mapped: a BareDevice) has nothing to track.
 *
 * The vIOMMU rule (QEMU since December 2025; Cloud Hypervisor refuses any vIOMMU): with a vIOMMU
 * the device's DMA addresses are IOVAs, not guest physical addresses, so a device DMA log over
 * RAM ranges says nothing reliable about RAM. Migration is blocked (EVFIO_VIOMMU) when a device
 * with a vIOMMU would use DMA logging. IOMMU dirty tracking (by IOVA in the host IOMMU) is
 * allowed. `viommu: 'relaxed'` (QEMU's proposed x-migration-iommu-pt, for a guest that uses the
 * vIOMMU for interrupt remapping only) turns the blocker into a warning; tracking then refuses to
 * start while the guest holds vIOMMU mappings, and a mapping made during the migration cancels it
 * (the source runs on, state intact).
 */
import { VfioError } from '../base/errors';
import { logger } from '../base/log';
import { DirtyBitmap } from '../kernel/dirty/bitmap';
import { DmaLogging } from '../kernel/dirty/logging';
import { dirtyMethodOf, type DirtyMethod } from '../kernel/dirty/method';
import { DMA_LOGGING_MAX_RANGES, loggingRanges, normaliseRanges, type DmaRange } from '../kernel/dirty/ranges';
import { MIN_DIRTY_PAGE_SIZE, type ReportFailurePolicy, type ReportResult } from '../kernel/dirty/report';
import type { GuestIommu } from '../model/host/types';
import type { MigratableDevice } from '../model/migratable';

const log = logger('dirty');

export type { DirtyMethod };

export interface DirtyTrackingOptions {
  /**
   * 'auto' (default): device DMA logging, else IOMMU dirty tracking, else none. A forced
   * method the device lacks is a blocker (EVFIO_NO_DIRTY_TRACKING); 'none' tracks nothing (the
   * `untracked` policy applies).
   */
  method?: 'auto' | DirtyMethod;
  /**
   * A device with DMA memory and no tracking: 'all-dirty' (default: each sync reports all of its
   * DMA memory dirty) or 'block' (a blocker, EVFIO_NO_DIRTY_TRACKING).
   */
  untracked?: 'all-dirty' | 'block';
  /**
   * A failed report (DMA_LOGGING_REPORT or GET_DIRTY_BITMAP): 'all-dirty' (default: the range
   * counts as all dirty, and the error is in the sync) or 'fail' (the migration is cancelled,
   * the source runs on). VFIO-NOTES "DMA logging": "any error means treat the range as dirty or
   * fail".
   */
  onReportError?: 'all-dirty' | 'fail';
  /** Bytes per bitmap bit asked of DMA logging and used for reads: a power of two ≥ 4096 (default 4096). */
  pageSize?: number;
  /**
   * One DMA logging range per region while there are at most this many regions, else QEMU's
   * collapse to at most three (`loggingRanges()`); default 3, at most 256 (PAGE_SIZE / 16, the
   * kernel's limit: vfio_ioctl_device_feature_logging_start()).
   */
  maxRanges?: number;
  /**
   * 'block' (default): a vIOMMU with device DMA logging blocks the migration (EVFIO_VIOMMU).
   * 'relaxed': a warning instead; start refuses while vIOMMU mappings exist and a new mapping
   * cancels the migration.
   */
  viommu?: 'block' | 'relaxed';
}

/** The plan for one device. */
export interface DevicePlan {
  device: string;
  /** The method that will run ('none' also for a device with nothing to track). */
  method: DirtyMethod;
  /** What the device offers, whatever is chosen. */
  available: DirtyMethod;
  /** The ranges tracked: DMA logging's ranges, or the regions read (bytes). Empty: nothing mapped. */
  ranges: DmaRange[];
  /** Why the method is not the preferred one, or why the device is not tracked. */
  reason?: string;
  /** The guest's vIOMMU, when the device's VM has one. */
  viommu?: GuestIommu;
}

/** Something the plan refuses (a Blocker of the engine) or warns about. */
export interface DirtyFinding {
  code: 'EVFIO_VIOMMU' | 'EVFIO_NO_DIRTY_TRACKING';
  devices: string[];
  message: string;
}

export interface DirtyPlan {
  devices: DevicePlan[];
  blockers: DirtyFinding[];
  warnings: DirtyFinding[];
  opts: Required<Omit<DirtyTrackingOptions, 'maxRanges'>> & { maxRanges: number };
}

/** One device's part of a sync. */
export interface DeviceDirty {
  device: string;
  method: DirtyMethod;
  /** One bitmap per tracked range, in the plan's order; bit k = page `iova + k * pageSize`. */
  bitmaps: DirtyBitmap[];
  /** Dirty pages in all of them. */
  pages: number;
  /** Every page counted dirty: an untracked device, or a failed report under 'all-dirty'. */
  allDirty: boolean;
  /** The reports that failed and were counted all dirty. */
  errors: VfioError[];
}

/** What one sync found (read-and-clear: the pages written since the previous sync). */
export interface DirtySync {
  /** 1 for the first sync. */
  sync: number;
  /** The sync after the devices stopped (no DMA after it). */
  final: boolean;
  devices: DeviceDirty[];
  /** Dirty pages of every device. */
  pages: number;
}

/** What tracking did over a whole migration. */
export interface DirtySummary {
  /** Per device: the method used, the one it offers, the ranges tracked, their page size (bytes), and why not better. */
  devices: Array<{ device: string; method: DirtyMethod; available: DirtyMethod; ranges: number; pageSize?: number; reason?: string }>;
  /** Dirty pages per sync, in order (the last is the final sync when the migration completed). */
  pagesPerSync: number[];
}

function resolveOptions(o: DirtyTrackingOptions = {}): DirtyPlan['opts'] {
  const pageSize = o.pageSize ?? MIN_DIRTY_PAGE_SIZE;
  const maxRanges = o.maxRanges ?? 3;
  const bad = (what: string): VfioError => new VfioError(`dirtyTracking.${what}`, { code: 'EVFIO_USAGE', kind: 'usage', step: 'migrate' });
  if (!Number.isSafeInteger(pageSize) || pageSize < MIN_DIRTY_PAGE_SIZE || (pageSize & (pageSize - 1)) !== 0) throw bad(`pageSize must be a power of two of at least ${MIN_DIRTY_PAGE_SIZE}, not ${pageSize}`);
  if (!Number.isSafeInteger(maxRanges) || maxRanges < 1 || maxRanges > DMA_LOGGING_MAX_RANGES) throw bad(`maxRanges must be 1..${DMA_LOGGING_MAX_RANGES}, not ${maxRanges}`);
  const pick = <T extends string>(name: string, v: T | undefined, allowed: readonly T[], dflt: T): T => {
    if (v === undefined) return dflt;
    if (!allowed.includes(v)) throw bad(`${name} must be one of ${allowed.join(', ')}, not ${String(v)}`);
    return v;
  };
  return {
    method: pick('method', o.method, ['auto', 'device', 'iommu', 'none'], 'auto'),
    untracked: pick('untracked', o.untracked, ['all-dirty', 'block'], 'all-dirty'),
    onReportError: pick('onReportError', o.onReportError, ['all-dirty', 'fail'], 'all-dirty'),
    viommu: pick('viommu', o.viommu, ['block', 'relaxed'], 'block'),
    pageSize,
    maxRanges,
  };
}

/** What the device offers (dirtyMethodOf(), src/kernel/dirty/method.ts). */
export function availableMethod(d: MigratableDevice): { method: DirtyMethod; reason?: string } {
  return dirtyMethodOf(d.device);
}

/**
 * Decide each device's method and find what blocks a live migration, before anything is
 * touched (probes only: VFIO_DEVICE_FEATURE PROBE of DMA_LOGGING_START). Throws EVFIO_USAGE for
 * bad options.
 */
export function planDirtyTracking(devices: readonly MigratableDevice[], options?: DirtyTrackingOptions): DirtyPlan {
  const opts = resolveOptions(options);
  const plans: DevicePlan[] = [];
  const viommuDevices: string[] = [];
  const untracked: string[] = [];
  const forced: string[] = [];
  for (const d of devices) {
    const regions = d.dmaRegions();
    const avail = availableMethod(d);
    const viommu = d.viommu?.present ? d.viommu : undefined;
    let method: DirtyMethod = opts.method === 'auto' ? avail.method : opts.method;
    let reason = opts.method === 'auto' ? avail.reason : opts.method === 'none' ? 'dirty tracking turned off (method "none")' : undefined;
    if (!regions.length) {
      plans.push({ device: d.id, method: 'none', available: avail.method, ranges: [], reason: 'no guest memory is mapped for its DMA: nothing to track', viommu });
      continue;
    }
    if (opts.method !== 'auto' && opts.method !== 'none' && avail.method !== opts.method && !(opts.method === 'iommu' && d.device.iommu.dirty)) {
      forced.push(d.id);
      reason = `method "${opts.method}" asked, but the device has ${avail.method === 'none' ? 'neither' : `only "${avail.method}"`}`;
      method = 'none';
    }
    const ranges = method === 'device' ? loggingRanges(regions, { pageSize: opts.pageSize, maxRanges: opts.maxRanges }) : normaliseRanges(regions, opts.pageSize);
    if (method === 'none' && !forced.includes(d.id) && opts.untracked === 'block') untracked.push(d.id);
    if (method === 'device' && viommu) viommuDevices.push(d.id);
    plans.push({ device: d.id, method, available: avail.method, ranges, reason, viommu });
  }

  const blockers: DirtyFinding[] = [];
  const warnings: DirtyFinding[] = [];
  if (forced.length) {
    blockers.push({
      code: 'EVFIO_NO_DIRTY_TRACKING', devices: forced,
      message: `${forced.join(', ')} cannot track dirty pages by method "${opts.method}" (${plans.find((p) => p.device === forced[0])!.reason})`,
    });
  }
  if (untracked.length) {
    blockers.push({
      code: 'EVFIO_NO_DIRTY_TRACKING', devices: untracked,
      message: `${untracked.join(', ')} cannot track the pages its DMA writes (${plans.find((p) => p.device === untracked[0])!.reason}); untracked "block" refuses the migration ("all-dirty" would send all its DMA memory at every sync)`,
    });
  }
  if (viommuDevices.length) {
    const finding: DirtyFinding = {
      code: 'EVFIO_VIOMMU', devices: viommuDevices,
      message: opts.viommu === 'relaxed'
        ? `${viommuDevices.join(', ')}: the guest has a vIOMMU and device DMA logging is used; allowed for a guest that uses it for interrupt remapping only (viommu "relaxed"): the migration will not start while the guest holds vIOMMU mappings, and is cancelled if it makes one`
        : `${viommuDevices.join(', ')}: the guest has a vIOMMU, and device DMA logging would track IOVAs, not guest RAM (QEMU's vIOMMU migration blocker); use IOMMU dirty tracking, or viommu "relaxed" for a guest that uses the vIOMMU for interrupt remapping only`,
    };
    (opts.viommu === 'relaxed' ? warnings : blockers).push(finding);
  }
  return { devices: plans, blockers, warnings, opts };
}

/**
 * Dirty tracking of one live migration, per a plan: started before the devices enter PRE_COPY,
 * synced after each precopy round and once after the devices stopped, stopped at the end or on
 * cancel. Made by the engine's live save; a VMM sees its syncs as `dirty` events.
 */
export class DirtyTracker {
  private started: Array<{ plan: DevicePlan; pageSize: number }> = [];
  /** The page size each device's bitmaps come at (the driver's, for DMA logging), kept after stop. */
  private readonly pageSizes = new Map<string, number>();
  private readonly unsubscribe: Array<() => void> = [];
  private syncs = 0;
  private readonly pagesPerSync: number[] = [];

  constructor(
    readonly plan: DirtyPlan,
    private readonly devices: readonly MigratableDevice[],
  ) {}

  /** Whether anything is tracked or reported at all (a device with ranges). */
  get active(): boolean {
    return this.plan.devices.some((p) => p.ranges.length > 0);
  }

  /** The vIOMMUs whose mappings would falsify a device's DMA log (allowed by viommu 'relaxed'). */
  private relaxedViommus(): Set<GuestIommu> {
    const out = new Set<GuestIommu>();
    for (const p of this.plan.devices) if (p.method === 'device' && p.viommu && p.ranges.length) out.add(p.viommu);
    return out;
  }

  /** EVFIO_VIOMMU naming the devices of `v`, when the guest holds mappings through it. */
  private viommuInUse(v: GuestIommu, step: string, wrap: (m: string) => string): VfioError | undefined {
    const n = v.mappings();
    if (n <= 0) return undefined;
    const devs = this.plan.devices.filter((p) => p.viommu === v && p.method === 'device').map((p) => p.device);
    return new VfioError(
      wrap(`the guest holds ${n} vIOMMU DMA mapping(s), so device DMA logging of ${devs.join(', ')} would track IOVAs, not guest RAM (viommu "relaxed" allows a vIOMMU used for interrupt remapping only)`),
      { code: 'EVFIO_VIOMMU', step, device: devs.join(',') },
    );
  }

  /**
   * Start every device's tracking: DMA_LOGGING_START over its ranges, or IOMMU dirty tracking on.
   * With viommu 'relaxed' and a device on DMA logging: refused (EVFIO_VIOMMU) while the guest
   * holds vIOMMU mappings. On a failure what was started is stopped again, and the error thrown.
   */
  async start(): Promise<void> {
    for (const v of this.relaxedViommus()) {
      const err = this.viommuInUse(v, 'migrate:dirty-start', (m) => `dirty tracking cannot start: ${m}`);
      if (err) throw err;
    }
    try {
      for (const [i, p] of this.plan.devices.entries()) {
        if (!p.ranges.length || p.method === 'none') continue;
        const d = this.devices[i];
        if (p.method === 'device') {
          const st = await DmaLogging.of(d.device).start(p.ranges, { pageSize: this.plan.opts.pageSize });
          this.started.push({ plan: p, pageSize: st.pageSize });
          this.pageSizes.set(p.device, st.pageSize);
        } else {
          await d.device.iommu.dirty!.enable();
          this.started.push({ plan: p, pageSize: this.plan.opts.pageSize });
          this.pageSizes.set(p.device, this.plan.opts.pageSize);
        }
      }
    } catch (e) {
      await this.stop();
      throw e instanceof VfioError ? e.annotate({ step: 'migrate:dirty-start' }) : e;
    }
  }

  /**
   * Watch the relaxed vIOMMUs from now on: `onViolation` gets EVFIO_VIOMMU for the first mapping
   * the guest makes (at once when it made one since start()). Ends with stop().
   */
  watch(onViolation: (e: VfioError) => void): void {
    let told = false;
    const tell = (e: VfioError): void => {
      if (told) return;
      told = true;
      log('%s', e.message);
      onViolation(e);
    };
    for (const v of this.relaxedViommus()) {
      const now = this.viommuInUse(v, 'migrate:precopy', (m) => `${m}; migration cancelled`);
      if (now) {
        tell(now);
        return;
      }
      const off = v.onChange((m) => {
        if (m.kind !== 'map') return;
        const err = new VfioError(
          `the guest made a vIOMMU DMA mapping (iova 0x${m.iova.toString(16)}, ${m.length} bytes) during the migration: device DMA logging no longer describes guest RAM; migration cancelled`,
          { code: 'EVFIO_VIOMMU', step: 'migrate:precopy' },
        );
        tell(err);
      });
      this.unsubscribe.push(off);
    }
  }

  /** The page size of device `id`'s bitmaps (the driver's, for DMA logging). */
  pageSizeOf(id: string): number | undefined {
    return this.pageSizes.get(id);
  }

  /**
   * Read and clear every device's dirty pages: one bitmap per tracked range. An untracked
   * device's bitmaps are all dirty. A failed report follows `onReportError`. Off the JS thread
   * for the kernel reads.
   */
  async sync(final = false): Promise<DirtySync> {
    const policy: ReportFailurePolicy = this.plan.opts.onReportError === 'fail' ? 'throw' : 'all-dirty';
    const devices: DeviceDirty[] = [];
    for (const [i, p] of this.plan.devices.entries()) {
      if (!p.ranges.length) continue;
      const started = this.started.find((s) => s.plan === p);
      let results: ReportResult[];
      if (!started) {
        results = p.ranges.map((r) => ({ bitmap: new DirtyBitmap(r.iova, r.length, this.plan.opts.pageSize).fill() }));
      } else if (p.method === 'device') {
        results = await DmaLogging.of(this.devices[i].device).reportAll({ onError: policy });
      } else {
        results = [];
        for (const r of p.ranges) results.push(await this.devices[i].device.iommu.dirty!.read({ iova: r.iova, length: r.length, pageSize: started.pageSize }, { onError: policy }));
      }
      const errors = results.flatMap((r) => (r.error ? [r.error] : []));
      const bitmaps = results.map((r) => r.bitmap);
      devices.push({ device: p.device, method: p.method, bitmaps, pages: bitmaps.reduce((a, b) => a + b.count(), 0), allDirty: !started || errors.length > 0, errors });
    }
    const pages = devices.reduce((a, d) => a + d.pages, 0);
    this.pagesPerSync.push(pages);
    return { sync: ++this.syncs, final, devices, pages };
  }

  /** Stop tracking everywhere it runs. Never throws (a failure is logged: releasing the device stops it too). */
  async stop(): Promise<void> {
    this.unsubscribe.splice(0).forEach((u) => u());
    for (const s of this.started.splice(0)) {
      const d = this.devices[this.plan.devices.indexOf(s.plan)];
      try {
        if (s.plan.method === 'device') await DmaLogging.of(d.device).stop();
        else await d.device.iommu.dirty!.disable();
      } catch (e) {
        log('%s: stopping dirty tracking failed: %s', s.plan.device, (e as Error).message);
      }
    }
  }

  summary(): DirtySummary {
    return {
      devices: this.plan.devices.map((p) => ({
        device: p.device, method: p.method, available: p.available, ranges: p.ranges.length,
        ...(p.ranges.length ? { pageSize: this.pageSizeOf(p.device) ?? this.plan.opts.pageSize } : {}),
        ...(p.reason ? { reason: p.reason } : {}),
      })),
      pagesPerSync: [...this.pagesPerSync],
    };
  }
}

/**
 * The simulated migratable vfio-pci device: the model behind a `sim:` device fd. It answers the
 * device ioctls with the kernel's validation and walks migration states arc by arc with the
 * port of vfio_mig_get_next_state() in src/migration/plan.ts, like every in-tree driver's
 * `migration_set_state` loop (mtty_set_state(), mlx5vf_pci_set_device_state()).
 *
 * What it is, seen through the Binding:
 *  - VFIO_DEVICE_GET_INFO: flags PCI | RESET, 9 regions, 5 IRQ indexes (vfio_pci_ioctl_get_info():
 *    argsz < 16 → EINVAL; copies back min(argsz, 24) bytes).
 *  - VFIO_DEVICE_GET_REGION_INFO (argsz < 32 or index >= 9 → EINVAL; offset = index << 40):
 *    BAR0 4 KiB MMIO read/write (src/binding/sim/bar0.ts), BAR1-5 and ROM size 0, CONFIG 4 KiB (or
 *    256) read/write (src/binding/sim/config.ts), VGA → EINVAL (no VGA, as vfio-pci answers).
 *    No region is mmap-able. pread/pwrite on the device fd reach BAR0 and CONFIG; an access
 *    starting past a region's end, or in an empty region, is EINVAL; one crossing the end is short.
 *  - VFIO_DEVICE_GET_IRQ_INFO / SET_IRQS: src/binding/sim/irq.ts (INTx 1, MSI 4, MSI-X 8, ERR 1, REQ 1).
 *  - VFIO_DEVICE_RESET: migration state RUNNING, any migration session ends (its fd: ENODEV),
 *    BAR0 registers and config space back to power-on values (PCI_COMMAND 0, a wedged command
 *    queue emptied); IRQ wiring and the device data (seed and block versions) stay. Works in every state, ERROR included. Writing PCIe Device Control "initiate
 *    FLR" in config space does the same.
 *  - VFIO_DEVICE_FEATURE (vfio_ioctl_device_feature() and vfio_check_feature()): argsz < 8,
 *    unknown flag bits, or GET with SET without PROBE → EINVAL; then per feature: MIGRATION (GET),
 *    MIG_DEVICE_STATE (GET, SET), MIG_DATA_SIZE (GET) — ENOTTY on a device built with
 *    `migration: false`, before any other check, PROBE included; an op the feature lacks → EINVAL;
 *    PROBE → 0; neither GET nor SET → EINVAL; payload shorter than the feature's struct → EINVAL.
 *    MIG_PRECOPY_INFOv2 (12): ENOTTY unless the device is built with `precopyInfoV2` (a 7.1
 *    kernel); then EINVAL for a device without PRE_COPY, SET only (PROBE allowed), any payload;
 *    the opt-in lasts until the device is released.
 *    DMA_LOGGING_START / STOP / REPORT: see "DMA and DMA logging" below; other ids → ENOTTY
 *    (vfio-pci's default).
 *  - MIG_DEVICE_STATE SET: the arcs are walked one by one; the state moves after each successful
 *    arc. The struct is copied back with the *requested* state and data_fd = the new fd or -1,
 *    also on failure (then with -1), which leaves the device where the failing arc started. The
 *    request is EINVAL when vfio_mig_get_next_state() rejects it (ERROR, unknown states, states
 *    the flags lack, STOP_COPY -> PRE_COPY(_P2P), any SET while in ERROR except ERROR itself,
 *    which like the kernel's loop is a no-op returning 0).
 *  - Arc effects (as mtty_step_state()): entering a saving state from outside the group opens a
 *    saving session and returns its fd; PRE_COPY(_P2P) -> STOP_COPY keeps the session (captures
 *    the registers and the version digest, the rest of the stream follows) and returns no fd;
 *    leaving the group ends the session; STOP -> RESUMING opens a resuming session and returns its
 *    fd; RESUMING -> STOP loads the stream and fails with EINVAL, staying in RESUMING, when it is
 *    short or bad (src/sim/session.ts).
 *  - MIG_DATA_SIZE: what STOP_COPY would still produce, exactly, as things stand: the rest of the
 *    current saving session (blocks not sent, dirty blocks, trailer), or a whole plain stream.
 *
 * Device data that changes while the device runs (src/sim/data.ts): SIZE bytes in blocks, each
 * with a version the running device bumps when it rewrites the block — through the churn rate
 * (`churn`), BAR0's touch doorbell, or the test hooks `dirtyData()`, `touchBlocks()` and
 * `reinitialize()`. "Running" is RUNNING, RUNNING_P2P, PRE_COPY and PRE_COPY_P2P; a stopped device
 * changes nothing. A block a PRE_COPY session has sent and the device then rewrites is dirty:
 * PRECOPY_INFO counts it in dirty_bytes and the session sends it again (src/sim/session.ts).
 *  - Releasing the device (last device fd closed) ends the sessions, drops every IRQ trigger,
 *    resets registers and config, and puts the device back in RUNNING, as vfio-pci does
 *    (vfio_pci_core_disable() resets the function). mtty does not: its migration state (STOP,
 *    RESUMING) survives the last close (the kernel tier pins it). The device data (seed)
 *    survives, like memory contents would in a model where only the function is reset.
 *
 * DMA and DMA logging:
 *  - The DMA engine (BAR0 DMA_* registers, src/sim/bar0.ts; or the `dmaWrite()` test hook) writes
 *    guest memory through the IOMMU context the device was opened with (src/sim/dma.ts
 *    `SimDmaSpace`, attached by src/sim/provider.ts). No context, or a byte not mapped writable:
 *    an IOMMU fault, nothing written.
 *  - DMA logging (option `dmaLogging`, default on; spec `dirty=off` removes it): the kernel core's
 *    checks of vfio_ioctl_device_feature_logging_start() / _report() / _stop() first (no logging
 *    ops → ENOTTY before anything, PROBE included; vfio_check_feature(): START and STOP are
 *    SET-only, REPORT GET-only, payload shorter than the struct → EINVAL; START: 0 ranges →
 *    EINVAL, more than 256 → E2BIG, then range by range as read from user memory (EFAULT if the
 *    pointer is not a buffer the binding has seen): iova or length not aligned to page_size →
 *    EINVAL, iova + length overflowing → EOVERFLOW, overlapping an earlier range → EINVAL; the
 *    control struct is copied back with the driver's page_size. REPORT: page_size < 4096 or not a
 *    power of two → EINVAL, iova + length overflowing → EOVERFLOW, the bitmap not in user memory
 *    → EFAULT; length 0 → 0 with nothing done (mtty on 6.12 answers 0)).
 *  - Then the driver, modelled on mlx5's page tracker: START while logging → EINVAL, REPORT while
 *    not logging → EINVAL, STOP while not logging → 0. More ranges than `dmaLoggingMaxRanges` are
 *    combined, smallest gaps first (vfio_combine_iova_ranges(), as mlx5 and pds do): the holes are
 *    tracked too. The page size is `dmaLoggingPageSize` when set (the driver's choice), else the
 *    requested one rounded down to a power of two within [4 KiB, 1 GiB] (mlx5 clamps to its
 *    limits). Logging marks exactly the pages the DMA engine wrote inside the tracked ranges, at
 *    that page size; REPORT sets the report-size pages each covers and clears it (read-and-clear).
 *    Every `dmaLoggingFailEvery`-th REPORT fails with EIO (mlx5: a tracker error). Releasing the
 *    device stops logging; a reset does not (mlx5 keeps its tracker across resets).
 */
import { EventEmitter } from 'eventemitter3';
import { logger } from '../base/log';
import { isRejection, isSavingState, nextState } from '../kernel/plan';
import {
  SIZEOF_DEVICE_FEATURE,
  SIZEOF_DEVICE_INFO,
  SIZEOF_DMA_LOGGING_CONTROL,
  SIZEOF_DMA_LOGGING_RANGE,
  SIZEOF_DMA_LOGGING_REPORT,
  SIZEOF_FEATURE_MIG_DATA_SIZE,
  SIZEOF_FEATURE_MIG_STATE,
  SIZEOF_FEATURE_MIGRATION,
  SIZEOF_IRQ_INFO,
  SIZEOF_REGION_INFO,
  decodeDmaLoggingControl,
  decodeIrqSet,
  decodeDmaLoggingRanges,
  decodeDmaLoggingReport,
  encodeDeviceInfo,
  encodeDmaLoggingControl,
  encodeIrqInfo,
  encodeMigDataSize,
  encodeMigState,
  encodeMigrationFlags,
  encodeRegionInfo,
  type IrqSet,
} from '../kernel/uapi/structs';
import {
  MigState,
  VFIO_DEVICE_FEATURE,
  VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
  VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
  VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP,
  VFIO_DEVICE_FEATURE_GET,
  VFIO_DEVICE_FEATURE_MASK,
  VFIO_DEVICE_FEATURE_MIGRATION,
  VFIO_DEVICE_FEATURE_MIG_DATA_SIZE,
  VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
  VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOV2,
  VFIO_DEVICE_FEATURE_PROBE,
  VFIO_DEVICE_FEATURE_SET,
  VFIO_DEVICE_FLAGS_PCI,
  VFIO_DEVICE_FLAGS_RESET,
  VFIO_DEVICE_GET_INFO,
  VFIO_DEVICE_GET_IRQ_INFO,
  VFIO_DEVICE_GET_REGION_INFO,
  VFIO_DEVICE_RESET,
  VFIO_DEVICE_SET_IRQS,
  VFIO_MIGRATION_P2P,
  VFIO_MIGRATION_PRE_COPY,
  VFIO_MIGRATION_STOP_COPY,
  VFIO_PCI_BAR0_REGION_INDEX,
  VFIO_PCI_CONFIG_REGION_INDEX,
  VFIO_PCI_ERR_IRQ_INDEX,
  VFIO_PCI_INTX_IRQ_INDEX,
  VFIO_PCI_MSIX_IRQ_INDEX,
  VFIO_PCI_MSI_IRQ_INDEX,
  VFIO_PCI_NUM_IRQS,
  VFIO_PCI_NUM_REGIONS,
  VFIO_PCI_OFFSET_SHIFT,
  VFIO_PCI_REQ_IRQ_INDEX,
  VFIO_PCI_VGA_REGION_INDEX,
  VFIO_REGION_INFO_FLAG_READ,
  VFIO_REGION_INFO_FLAG_WRITE,
  migStateName,
} from '../kernel/uapi/vfio';
import { BAR0, BAR0_SIZE, Bar0, STATUS_ERROR, STATUS_RUNNING } from './bar0';
import { DirtyBitmap } from '../kernel/dirty/bitmap';
import { SimDmaLog, combineRanges, type Interval, type SimDmaSpace } from './dma';
import { COMMAND_MASTER, ConfigSpace, SIM_DEVICE_ID, SIM_VENDOR_ID, VNDR_CAP_LENGTH, VSC_LENGTH_MAX, VSC_LENGTH_MIN, buildConfig } from './config';
import { E, raise, toErrno, type ErrnoName } from './errno';
import { IrqModel, type IrqHost, type IrqSnapshot } from './irq';
import { Churn, DeviceData, type DataDigest } from './data';
import { ResumeSession, SaveSession, type DataFault, type SaveFigures, type Session, type SessionHost } from './session';
import { defaultBlockSize, isBlockSize, streamLength, type RegisterBlock, type Trailer } from './stream';

const log = logger('sim');

/** Default device data size: 64 KiB. */
export const DEFAULT_SIM_SIZE = 64 * 1024;
/** Default migration flags: STOP_COPY | P2P | PRE_COPY, like mtty. */
export const DEFAULT_SIM_MIGRATION_FLAGS = VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY;
const REGION_STRIDE = 2 ** VFIO_PCI_OFFSET_SHIFT;
/** LOG_MAX_RANGES of drivers/vfio/vfio_main.c on 4 KiB pages. */
const LOG_MAX_RANGES = 256;
const U64 = 1n << 64n;
const MSIX_TABLE_OFFSET = BAR0.MSIX_TABLE;
const MSIX_PBA_OFFSET = BAR0.MSIX_PBA;

/** How a simulated device is built. Every field is optional. */
export interface SimDeviceOptions {
  /** Registry name (`sim:...#NAME`); unnamed devices are not reachable by a later open. */
  name?: string;
  /** Device data bytes in the migration stream (default 64 KiB). Any size: data is generated on demand. */
  size?: number;
  /** Seed of the device data (default: the device's serial number in its binding, 1, 2, ...). */
  seed?: bigint | number;
  /** `false`: a device without migration support; the migration features answer ENOTTY. */
  migration?: boolean;
  /** VFIO_DEVICE_FEATURE_MIGRATION flags; must include STOP_COPY (default STOP_COPY | P2P | PRE_COPY). */
  migrationFlags?: number;
  /**
   * The initial data of PRE_COPY: the blocks holding the first `precopyBytes` data bytes (rounded
   * up to whole blocks) are sent in PRE_COPY before anything else; the other blocks come in
   * STOP_COPY (default: half the data, 8-byte aligned). 0: PRE_COPY serves the header only.
   */
  precopyBytes?: number;
  /**
   * Bytes per block of the device data: a power of two from 8 to 2^30 (default 4 KiB, larger for
   * devices over 4 GiB so that there are at most 2^20 blocks). A block is what the device
   * rewrites and re-sends as a whole; streams only load into a device with the same block size.
   */
  blockSize?: number;
  /**
   * Bytes per second the running device rewrites (RUNNING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P),
   * in whole blocks picked at random; default 0. For demos and benchmarks; tests use
   * {@link SimDevice.dirtyData} and friends, which are deterministic.
   */
  churn?: number;
  /**
   * The kernel and driver have PRECOPY_INFOv2 (VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOV2, Linux
   * 7.1): the feature can be SET to opt in, and then PRECOPY_INFO reports REINIT. Default false:
   * the feature answers ENOTTY, as on 6.12 and with mtty.
   */
  precopyInfoV2?: boolean;
  /** What read() does at PRE_COPY's temporary end: 'zero' (return 0, mtty; default) or 'enomsg' (fail with ENOMSG, uAPI). */
  precopyEnd?: 'zero' | 'enomsg';
  /** Most bytes one read() of a data_fd returns (default: no limit). */
  maxRead?: number;
  /** Most bytes one write() of a data_fd accepts, to exercise callers' short-write loops (default: no limit). */
  maxWrite?: number;
  /** Config region size: 4096 (default, PCIe) or 256. */
  configSize?: 256 | 4096;
  /** MSI vectors, a power of two 1..32 (default 4). */
  msiVectors?: number;
  /** MSI-X vectors 1..64 (default 8; the table lives in BAR0 at 0x800, the PBA at 0xC00). */
  msixVectors?: number;
  /** Revision byte of the vendor-specific capability's body (default 1). */
  vscRevision?: number;
  /** Length byte of the vendor-specific capability, 8..80 (default 16). */
  vscLength?: number;
  /** PCI device id (default SIM_DEVICE_ID, 0x5f10). The stream header carries it: a stream only loads into a device with the same id. */
  deviceId?: number;
  /**
   * 'required': doorbells rung while the device's PCI_COMMAND.MASTER is clear wedge the command
   * queue (src/binding/sim/bar0.ts, "Bus mastering"), as on real hardware. 'ignored' (default):
   * doorbells complete whatever COMMAND holds.
   */
  busMaster?: 'required' | 'ignored';
  /** `false`: no DMA logging (the DMA_LOGGING features answer ENOTTY, as without log ops). Default true. */
  dmaLogging?: boolean;
  /** Ranges the device's tracker holds, 1..256 (default 256): more are combined at START. */
  dmaLoggingMaxRanges?: number;
  /** The page size the driver logs at, a power of two of at least 4096, whatever START asks (default: START's, clamped). */
  dmaLoggingPageSize?: number;
  /** Every N-th DMA_LOGGING_REPORT fails with EIO (default 0: none). */
  dmaLoggingFailEvery?: number;
  /**
   * MSI-X vector allocation (src/sim/irq.ts): 'static' (default) reports VFIO_IRQ_INFO_NORESIZE
   * and refuses a trigger for a vector beyond those enabled first, as vfio-pci does without
   * dynamic MSI-X; 'dynamic' allocates such a vector on the spot (kernel 6.5+, `has_dyn_msix`).
   */
  msixAlloc?: 'static' | 'dynamic';
  /**
   * Hand out a REAL fd as the data_fd of STOP_COPY and RESUMING sessions (benchmarks: bench/;
   * see {@link ExternalDataFd}). Not settable from a spec string.
   */
  externalDataFd?: ExternalDataFd;
}

/**
 * A source/sink of the migration stream outside the simulator: when a session opens, the
 * device asks for a real fd and returns it as data_fd instead of a virtual one, so that the
 * bytes move through the kernel (a pipe fed by a producer process, say) and the real binding's
 * `pump` — the path a real device takes. Each function gets the device label and the length of
 * a plain stream of the sim's (`streamLength`: 48 + 8 per block + size + 288 bytes, what
 * MIG_DATA_SIZE reports before a session) and returns an open fd, or throws (the arc then
 * fails, the device stays where it was, nothing is opened).
 *
 * What stays the sim's: the state machine, the arcs, the session rules of the SET (one session
 * per group, a new fd per session, MIG_DATA_SIZE). What does not:
 *  - `save` is asked only for a saving session that opens directly in STOP_COPY (STOP →
 *    STOP_COPY). A session opened in PRE_COPY keeps its virtual fd: a plain pipe cannot give
 *    PRE_COPY's temporary end.
 *  - `resume` is asked on STOP → RESUMING. RESUMING → STOP then skips the sim's stream
 *    validation (the sim never sees the bytes): the device keeps its data seed and registers,
 *    and whoever reads the other end checks the bytes.
 *  - The fd belongs to whoever receives data_fd and is closed with the binding like any
 *    data_fd (it goes to the inner, real binding). The sim does not see its reads, writes or
 *    close: no ENODEV after the session ends, no `failDataFd` / injected read-write errors, and
 *    it is not counted in `openFds`. Without a function for a kind, that kind stays virtual.
 */
export interface ExternalDataFd {
  save?(info: { device: string; streamBytes: number }): number;
  resume?(info: { device: string; streamBytes: number }): number;
}

/** Options after defaults, as the device uses them. */
export interface ResolvedSimDeviceOptions {
  name?: string;
  size: number;
  seed: bigint;
  migration: boolean;
  migrationFlags: number;
  precopyBytes: number;
  blockSize: number;
  churn: number;
  precopyInfoV2: boolean;
  precopyEnd: 'zero' | 'enomsg';
  maxRead: number;
  maxWrite: number;
  configSize: 256 | 4096;
  msiVectors: number;
  msixVectors: number;
  vscRevision: number;
  vscLength: number;
  deviceId: number;
  busMaster: 'required' | 'ignored';
  dmaLogging: boolean;
  dmaLoggingMaxRanges: number;
  dmaLoggingPageSize?: number;
  dmaLoggingFailEvery: number;
  msixAlloc: 'static' | 'dynamic';
  externalDataFd?: ExternalDataFd;
}

/**
 * Operations a test can make fail with {@link SimDevice.injectError}. The ioctl names fail the
 * ioctl at its entry, before any check or effect. The feature names fail inside the feature's
 * handler after the core's validation, like a driver error: 'MIG_DEVICE_STATE_SET' still copies
 * back the requested state and data_fd -1, and leaves the state unchanged. 'read'/'write' fail
 * the next read()/write() on any data_fd of the device, 'pread'/'pwrite' the next region access,
 * 'open' the next open of a named device.
 */
export type SimOp =
  | 'GET_INFO'
  | 'GET_REGION_INFO'
  | 'GET_IRQ_INFO'
  | 'SET_IRQS'
  | 'RESET'
  | 'FEATURE'
  | 'MIGRATION'
  | 'MIG_DEVICE_STATE_GET'
  | 'MIG_DEVICE_STATE_SET'
  | 'MIG_DATA_SIZE'
  | 'PRECOPY_INFO'
  | 'pread'
  | 'pwrite'
  | 'read'
  | 'write'
  | 'open'
  | 'DMA_LOGGING_START'
  | 'DMA_LOGGING_STOP'
  | 'DMA_LOGGING_REPORT';

/** What the device needs from its binding. */
export interface DeviceHost extends IrqHost {
  /** Give a new data session an fd. */
  allocFd(device: SimDevice, session: Session): number;
  /** Something poll() may wait for changed. */
  wake(): void;
  /**
   * `length` bytes of process memory at user address `addr` (copy_from_user / copy_to_user of a
   * pointer in an ioctl struct). Throws Errno EFAULT when the binding cannot reach them.
   */
  userMemory(addr: bigint, length: number): Buffer;
}

/** The migrated registers plus the read-only identity of the device data, for tests. */
export interface SimRegisters extends RegisterBlock {
  seed: bigint;
  size: number;
}

/**
 * What a simulated device reports as it serves calls, for tests that check what the "kernel"
 * executed (serialport's binding-mock has such hooks): `sim.on('arc', (from, to) => ...)`. Each
 * is emitted once the call or step succeeded, in the order the device served them, and before
 * the call returns; a listener must not throw or call into the device.
 */
export interface SimDeviceEvents {
  /** One arc of the migration state machine was executed (a SET of MIG_DEVICE_STATE may walk several). */
  arc: (from: MigState, to: MigState) => void;
  /** The device was reset: by VFIO_DEVICE_RESET, or by a function-level reset written to config space. */
  reset: (how: 'VFIO_DEVICE_RESET' | 'FLR') => void;
  /** A write to config space reached the device: its offset in the config region and a copy of the bytes. */
  'config-write': (offset: number, data: Buffer) => void;
  /** VFIO_DEVICE_SET_IRQS was accepted: the struct's header (flags, index, start, count). */
  'set-irqs': (set: IrqSet) => void;
}

/** A view of the current data session, for tests. */
export interface SessionInfo {
  kind: 'save' | 'resume';
  /** Stream bytes transferred. */
  pos: number;
  /** The stream's length: as it stands now (saving), or once its trailer is in (resuming). */
  total?: number;
  /** Saving only: end of the bytes readable now. */
  available?: number;
  /** Saving only: what the session holds (PRECOPY_INFO's figures, dirty blocks, what STOP_COPY would still serve). */
  figures?: SaveFigures;
  disabled: boolean;
  /** Resuming only: the first problem found in the incoming stream. */
  problem?: string;
  /** The data_fd is a real fd from `externalDataFd` (the sim does not see its bytes). */
  external?: boolean;
}

function resolveOptions(o: SimDeviceOptions, serial: number): ResolvedSimDeviceOptions {
  const size = o.size ?? DEFAULT_SIM_SIZE;
  if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`sim device size must be a non-negative integer, got ${size}`);
  const flags = o.migrationFlags ?? DEFAULT_SIM_MIGRATION_FLAGS;
  const known = VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY;
  if (!(flags & VFIO_MIGRATION_STOP_COPY) || flags & ~known) {
    // vfio_pci_core_register_device() refuses a migration driver without STOP_COPY.
    throw new RangeError(`sim migration flags must include STOP_COPY and only STOP_COPY|P2P|PRE_COPY, got 0x${flags.toString(16)}`);
  }
  const msi = o.msiVectors ?? 4;
  if (![1, 2, 4, 8, 16, 32].includes(msi)) throw new RangeError(`msiVectors must be a power of two 1..32, got ${msi}`);
  const msix = o.msixVectors ?? 8;
  if (!Number.isInteger(msix) || msix < 1 || msix > 64) throw new RangeError(`msixVectors must be 1..64 (the table must fit below the PBA), got ${msix}`);
  const seed = BigInt(o.seed ?? serial);
  if (seed < 0n || seed >= 1n << 64n) throw new RangeError(`seed must fit in 64 bits, got ${seed}`);
  const positive = (v: number | undefined, what: string): number => {
    if (v === undefined) return Infinity;
    if (!Number.isInteger(v) || v < 1) throw new RangeError(`${what} must be a positive integer, got ${v}`);
    return v;
  };
  const vscRevision = o.vscRevision ?? 1;
  if (!Number.isInteger(vscRevision) || vscRevision < 0 || vscRevision > 255) throw new RangeError(`vscRevision must be 0..255, got ${vscRevision}`);
  const vscLength = o.vscLength ?? VNDR_CAP_LENGTH;
  if (!Number.isInteger(vscLength) || vscLength < VSC_LENGTH_MIN || vscLength > VSC_LENGTH_MAX) {
    throw new RangeError(`vscLength must be ${VSC_LENGTH_MIN}..${VSC_LENGTH_MAX}, got ${vscLength}`);
  }
  const deviceId = o.deviceId ?? SIM_DEVICE_ID;
  if (!Number.isInteger(deviceId) || deviceId < 0 || deviceId > 0xffff) throw new RangeError(`deviceId must be a 16-bit number, got ${deviceId}`);
  const busMaster = o.busMaster ?? 'ignored';
  if (busMaster !== 'required' && busMaster !== 'ignored') throw new RangeError(`busMaster must be 'required' or 'ignored', got ${String(busMaster)}`);
  const maxRanges = o.dmaLoggingMaxRanges ?? LOG_MAX_RANGES;
  if (!Number.isInteger(maxRanges) || maxRanges < 1 || maxRanges > LOG_MAX_RANGES) throw new RangeError(`dmaLoggingMaxRanges must be 1..${LOG_MAX_RANGES}, got ${maxRanges}`);
  const page = o.dmaLoggingPageSize;
  if (page !== undefined && !(Number.isSafeInteger(page) && page >= 4096 && (page & (page - 1)) === 0 && page <= 2 ** 30)) {
    throw new RangeError(`dmaLoggingPageSize must be a power of two from 4096 to 1 GiB, got ${page}`);
  }
  const blockSize = o.blockSize ?? defaultBlockSize(size);
  if (!isBlockSize(blockSize)) throw new RangeError(`blockSize must be a power of two from 8 to 2^30, got ${blockSize}`);
  const churn = o.churn ?? 0;
  if (!(Number.isFinite(churn) && churn >= 0)) throw new RangeError(`churn must be a non-negative number of bytes per second, got ${churn}`);
  const failEvery = o.dmaLoggingFailEvery ?? 0;
  if (!Number.isInteger(failEvery) || failEvery < 0) throw new RangeError(`dmaLoggingFailEvery must be a non-negative integer, got ${failEvery}`);
  const msixAlloc = o.msixAlloc ?? 'static';
  if (msixAlloc !== 'static' && msixAlloc !== 'dynamic') throw new RangeError(`msixAlloc must be 'static' or 'dynamic', got ${String(msixAlloc)}`);
  return {
    name: o.name,
    size,
    seed,
    migration: o.migration ?? true,
    migrationFlags: flags,
    precopyBytes: Math.min(size, o.precopyBytes ?? Math.floor(size / 16) * 8),
    blockSize,
    churn,
    precopyInfoV2: o.precopyInfoV2 ?? false,
    precopyEnd: o.precopyEnd ?? 'zero',
    maxRead: positive(o.maxRead, 'maxRead'),
    maxWrite: positive(o.maxWrite, 'maxWrite'),
    configSize: o.configSize ?? 4096,
    msiVectors: msi,
    msixVectors: msix,
    vscRevision,
    vscLength,
    deviceId,
    busMaster,
    dmaLogging: o.dmaLogging ?? true,
    dmaLoggingMaxRanges: maxRanges,
    dmaLoggingPageSize: page,
    dmaLoggingFailEvery: failEvery,
    msixAlloc,
    externalDataFd: o.externalDataFd,
  };
}

/**
 * The model of one simulated device. Tests reach it with `SimBinding.device(...)`, and follow
 * what it serves through its events ({@link SimDeviceEvents}).
 */
export class SimDevice extends EventEmitter<SimDeviceEvents> {
  readonly options: Readonly<ResolvedSimDeviceOptions>;
  /** The device's serial number in its binding (1, 2, ...). */
  readonly serial: number;
  /** The last 256 arcs executed (arcLog). */
  private readonly arcs: Array<[MigState, MigState]> = [];

  private mig = MigState.RUNNING;
  /** The device data: seed and block versions (src/sim/data.ts). */
  private readonly data: DeviceData;
  private readonly churn?: Churn;
  /** The user opted in to PRECOPY_INFOv2 (until the device is released). */
  private infoV2 = false;
  private readonly bar0: Bar0;
  private readonly cfg: ConfigSpace;
  private readonly irq: IrqModel;
  /** IOMMU contexts the device was opened with; DMA goes through the latest. */
  private readonly dmaSpaces: SimDmaSpace[] = [];
  private dmaLog?: SimDmaLog;
  private reports = 0;
  private saving?: SaveSession;
  private resuming?: ResumeSession;
  private deviceFds = 0;
  private readonly openDataFds = new Set<Session>();
  /** Sessions whose data_fd is a real fd from `externalDataFd`, with that fd. */
  private readonly externalFds = new Map<Session, number>();
  private readonly injections = new Map<SimOp, { errno: number; times: number }>();
  private readonly arcFaults: Array<{ from?: MigState; to?: MigState; errno: number; enterError: boolean }> = [];
  private pendingFault?: DataFault;
  private precopyEndMode: 'zero' | 'enomsg';

  /**
   * @param label what errors call the device (the spec it was opened with)
   */
  constructor(
    private readonly host: DeviceHost,
    readonly label: string,
    serial: number,
    options: SimDeviceOptions = {},
  ) {
    super();
    this.serial = serial;
    this.options = Object.freeze(resolveOptions(options, serial));
    this.data = new DeviceData(this.options.seed, this.options.size, this.options.blockSize);
    this.data.onRewrite = (b) => this.saving?.rewritten(b);
    if (this.options.churn > 0) this.churn = new Churn(this.options.churn, this.options.seed);
    this.precopyEndMode = this.options.precopyEnd;
    this.bar0 = new Bar0(
      {
        running: () => this.isRunning(),
        status: () => (this.isRunning() ? STATUS_RUNNING : 0) | (this.mig === MigState.ERROR ? STATUS_ERROR : 0) | (this.mig << 8),
        seed: () => this.data.seed,
        size: () => this.options.size,
        blockSize: () => this.options.blockSize,
        dataGeneration: () => this.data.digest().versionSum,
        touch: (first, count) => void this.data.rewriteRange(first, count),
        doorbell: (v) => void this.irq.raise(v),
        busMaster: () => this.options.busMaster === 'ignored' || (this.cfg.command & COMMAND_MASTER) !== 0,
        dma: (iova, length, pattern) => {
          const data = Buffer.alloc(length);
          const p = Buffer.alloc(4);
          p.writeUInt32LE(pattern >>> 0, 0);
          for (let i = 0; i < length; i += 4) p.copy(data, i, 0, Math.min(4, length - i));
          return this.dmaWrite(iova, data);
        },
      },
      this.options.msixVectors,
    );
    this.cfg = new ConfigSpace(
      buildConfig({
        size: this.options.configSize,
        msiVectors: this.options.msiVectors,
        msixVectors: this.options.msixVectors,
        vscRevision: this.options.vscRevision,
        vscLength: this.options.vscLength,
        deviceId: this.options.deviceId,
        bar0Size: BAR0_SIZE,
        msixTableOffset: MSIX_TABLE_OFFSET,
        msixPbaOffset: MSIX_PBA_OFFSET,
      }),
      () => this.functionReset('FLR'),
    );
    const counts = [];
    counts[VFIO_PCI_INTX_IRQ_INDEX] = 1;
    counts[VFIO_PCI_MSI_IRQ_INDEX] = this.options.msiVectors;
    counts[VFIO_PCI_MSIX_IRQ_INDEX] = this.options.msixVectors;
    counts[VFIO_PCI_ERR_IRQ_INDEX] = 1;
    counts[VFIO_PCI_REQ_IRQ_INDEX] = 1;
    this.irq = new IrqModel(host, counts, { msixDynamic: this.options.msixAlloc === 'dynamic' });
  }

  // ------------------------------------------------------------------ state for tests

  get name(): string | undefined {
    return this.options.name;
  }

  /**
   * Every arc executed, oldest first (the last 256), for tests that check the kernel's path; the
   * 'arc' event reports each as it happens (to record from a point on).
   */
  get arcLog(): ReadonlyArray<readonly [MigState, MigState]> {
    return this.arcs;
  }

  /** The current migration state. */
  get state(): MigState {
    return this.mig;
  }

  /** The seed of the device data now (changes when a stream is restored). */
  get seed(): bigint {
    return this.data.seed;
  }

  get size(): number {
    return this.options.size;
  }

  /** Config dword 0 (vendor | device << 16), as the stream header carries it. */
  get pciId(): number {
    return (SIM_VENDOR_ID | (this.options.deviceId << 16)) >>> 0;
  }

  /**
   * DMA logging as the driver runs it: the tracked ranges (after combining), the page size, and
   * the pages written but not yet reported; undefined when not logging.
   */
  get dmaLogging(): { ranges: readonly Interval[]; pageSize: number; pending: number } | undefined {
    const l = this.dmaLog;
    return l && { ranges: l.ranges, pageSize: l.pageSize, pending: l.pending };
  }

  /** The IOMMU context DMA goes through now (the latest attached), if any. */
  get dmaSpace(): SimDmaSpace | undefined {
    return this.dmaSpaces[this.dmaSpaces.length - 1];
  }

  /** An IOMMU context was opened for this device: DMA goes through it from now on. */
  attachDma(space: SimDmaSpace): void {
    this.dmaSpaces.push(space);
  }

  /** The IOMMU context closed. */
  detachDma(space: SimDmaSpace): void {
    const i = this.dmaSpaces.lastIndexOf(space);
    if (i >= 0) this.dmaSpaces.splice(i, 1);
  }

  /**
   * A device write of `data` at `iova`, as the DMA engine makes it (through the IOMMU context,
   * logged by DMA logging), whatever the state: the engine's doorbell is what the device state
   * and bus mastering gate. False on an IOMMU fault (nothing written, nothing logged).
   */
  dmaWrite(iova: bigint, data: Buffer): boolean {
    const space = this.dmaSpace;
    if (!space || !space.write(iova, data)) return false;
    this.dmaLog?.mark(iova, data.length);
    return true;
  }

  /** Doorbells stuck in a wedged command queue (BAR0 QUEUE_PENDING; `busMaster: 'required'`). */
  get queuePending(): number {
    return this.bar0.queuePending;
  }

  /** Length of a plain STOP_COPY stream of this device (every block once): 48 + 8 blocks + size + 288. */
  get streamLength(): number {
    return streamLength(this.options.size, this.options.blockSize);
  }

  /** True while at least one device fd is open. */
  get isOpen(): boolean {
    return this.deviceFds > 0;
  }

  /** Open fds of this device: device fds plus data_fds not yet closed (leak tests). */
  get openFds(): number {
    return this.deviceFds + this.openDataFds.size;
  }

  /** The migrated registers, with the data seed and size. */
  registers(): SimRegisters {
    return { ...this.bar0.registers(), seed: this.data.seed, size: this.options.size };
  }

  /** Set migrated registers directly (whatever the state). `scratch` shorter than 256 bytes is zero-padded. */
  setRegisters(r: Partial<RegisterBlock>): void {
    this.bar0.load(r);
  }

  /** A copy of config space. */
  config(): Buffer {
    return this.cfg.snapshot();
  }

  /** The IRQ wiring. */
  irqs(): IrqSnapshot {
    return this.irq.snapshot();
  }

  /** The current (or last ended but not replaced) data session. */
  session(): SessionInfo | undefined {
    const s = this.saving ?? this.resuming;
    if (!s) return undefined;
    const external = this.externalFds.has(s) || undefined;
    this.catchUp();
    return s.kind === 'save'
      ? { kind: 'save', pos: s.pos, total: s.total, available: s.available, figures: s.figures(), disabled: s.disabled, external }
      : { kind: 'resume', pos: s.pos, total: s.total, disabled: s.disabled, problem: s.problem, external };
  }

  // ------------------------------------------------------------------ test hooks

  /** Make the next `times` calls of `op` fail with `errno` (see {@link SimOp}). */
  injectError(op: SimOp, errno: number | ErrnoName, times = 1): void {
    this.injections.set(op, { errno: toErrno(errno), times });
  }

  /** Remove every injected error, arc fault and pending data fault. */
  clearFaults(): void {
    this.injections.clear();
    this.arcFaults.length = 0;
    this.pendingFault = undefined;
  }

  /**
   * Make the next arc `from -> to` (either end may be left out to match any) fail with `errno`.
   * The device stays where the arc started, or goes to ERROR with `enterError` (a driver whose
   * hardware failed mid-transition).
   */
  failArc(arc: { from?: MigState; to?: MigState }, errno: number | ErrnoName, opts: { enterError?: boolean } = {}): void {
    this.arcFaults.push({ ...arc, errno: toErrno(errno), enterError: opts.enterError ?? false });
  }

  /**
   * Make a data_fd fail with `errno` once `after` stream bytes have gone through it (a call that
   * crosses the mark is cut short there). Applies to the current session if there is one, else to
   * the next one created.
   */
  failDataFd(fault: Omit<DataFault, 'errno'> & { errno: number | ErrnoName }): void {
    const f: DataFault = { ...fault, errno: toErrno(fault.errno) };
    const cur = this.saving ?? this.resuming;
    if (cur && !cur.disabled) cur.fault = f;
    else this.pendingFault = f;
  }

  /** Put the device into ERROR (a device that failed): sessions end, only a reset leaves it. */
  forceError(): void {
    this.enterError();
  }

  /** Switch PRE_COPY's temporary end between read() == 0 (mtty) and ENOMSG (uAPI). */
  setPrecopyEnd(mode: 'zero' | 'enomsg'): void {
    this.precopyEndMode = mode;
  }

  // ------------------------------------------------------------------ the device data

  /**
   * The device data now: seed, layout and the digest of the block versions. Two devices with
   * equal digests hold the same data: what a migration must reproduce.
   */
  dataDigest(): DataDigest {
    this.catchUp();
    return this.data.digest();
  }

  /** Data bytes [offset, offset + length) as the device holds them now (clipped to the data). */
  readData(offset: number, length: number): Buffer {
    this.catchUp();
    const at = Math.max(0, Math.min(offset, this.options.size));
    const n = Math.max(0, Math.min(length, this.options.size - at));
    const out = Buffer.alloc(n);
    this.data.read(at, out, 0, n);
    return out;
  }

  /** Block `b`'s version now (0 until the device first rewrites it). */
  blockVersion(b: number): number {
    this.catchUp();
    return this.data.version(b);
  }

  /**
   * The running device rewrites the blocks holding data bytes [offset, offset + length) (clipped
   * to the data): each gets a new version, and one that a PRE_COPY session has sent already is
   * dirty and will be sent again. A stopped device (STOP, STOP_COPY, RESUMING, ERROR) changes
   * nothing (uAPI, "RUNNING_P2P -> STOP": it must not change its internal state) and 0 is
   * returned. Returns the number of blocks rewritten.
   */
  dirtyData(offset: number, length: number): number {
    if (!this.isRunning()) return 0;
    this.catchUp();
    return this.data.rewriteBytes(offset, length);
  }

  /** {@link dirtyData} by block: rewrite `count` blocks from block `first` (clipped). Returns the blocks rewritten. */
  touchBlocks(first: number, count = 1): number {
    if (!this.isRunning()) return 0;
    this.catchUp();
    return this.data.rewriteRange(first, count);
  }

  /**
   * The running device re-initialises (a reconfiguration, say): the blocks holding the first
   * `bytes` data bytes (default: the precopy size) get new versions, and in a PRE_COPY session
   * with PRECOPY_INFOv2 opted in, new initial data appears: everything PRE_COPY can serve now
   * counts as initial data and the next PRECOPY_INFO reports VFIO_PRECOPY_INFO_REINIT (mlx5's
   * behaviour on MIGRATION_INIT). Without the opt-in the rewritten blocks are ordinary dirty
   * data. Nothing happens while the device is stopped (returns 0). Returns the blocks rewritten.
   */
  reinitialize(bytes = this.options.precopyBytes): number {
    if (!this.isRunning()) return 0;
    this.catchUp();
    const blocks = Math.ceil(Math.max(0, bytes) / this.options.blockSize);
    const n = this.data.rewriteRange(0, blocks);
    this.saving?.reinit(blocks, this.infoV2);
    return n;
  }

  /** Whether the user opted in to PRECOPY_INFOv2 (the feature's SET; cleared when the device is released). */
  get precopyInfoV2(): boolean {
    return this.infoV2;
  }

  /** Raise vector `vector` as a doorbell would (whatever the state). True when an eventfd was signalled. */
  raise(vector = 0): boolean {
    return this.irq.raise(vector);
  }

  /** Signal the ERR eventfd (AER). */
  raiseErr(): boolean {
    return this.irq.raiseErr();
  }

  /** Signal the REQ eventfd (the host wants the device back). */
  raiseReq(): boolean {
    return this.irq.raiseReq();
  }

  // ------------------------------------------------------------------ binding entry points

  /** A device fd was opened on this device. */
  attach(): void {
    this.consume('open');
    this.deviceFds++;
  }

  /** A device fd was closed; the last one releases the device. */
  detach(): void {
    if (this.deviceFds <= 0) return;
    this.deviceFds--;
    if (this.deviceFds === 0) this.release();
  }

  /** A data_fd of this device was closed. */
  dataFdClosed(s: Session): void {
    this.openDataFds.delete(s);
  }

  /** Injected failure of a data_fd read/write/ioctl, if armed. */
  consume(op: SimOp): void {
    const inj = this.injections.get(op);
    if (!inj) return;
    if (--inj.times <= 0) this.injections.delete(op);
    log('%s: injected %s on %s', this.label, op, inj.errno);
    raise(inj.errno);
  }

  /** VFIO_MIG_GET_PRECOPY_INFO on one of this device's saving data_fds. Throws Errno. */
  precopyInfo(session: SaveSession, arg: Buffer | number | undefined): void {
    this.consume('PRECOPY_INFO');
    // The driver asks the device what changed (mlx5 queries it here): the churn becomes dirty blocks now.
    this.catchUp();
    session.precopyInfo(arg, this.infoV2);
  }

  /** ioctl(2) on a device fd. Throws Errno. */
  ioctl(request: number, arg: Buffer | number | undefined): number {
    switch (request) {
      case VFIO_DEVICE_GET_INFO:
        this.consume('GET_INFO');
        return this.getInfo(arg);
      case VFIO_DEVICE_GET_REGION_INFO:
        this.consume('GET_REGION_INFO');
        return this.getRegionInfo(arg);
      case VFIO_DEVICE_GET_IRQ_INFO:
        this.consume('GET_IRQ_INFO');
        return this.getIrqInfo(arg);
      case VFIO_DEVICE_SET_IRQS: {
        this.consume('SET_IRQS');
        const set = struct(arg);
        this.irq.setIrqs(set);
        const { flags, index, start, count } = decodeIrqSet(set);
        this.emit('set-irqs', { flags, index, start, count });
        return 0;
      }
      case VFIO_DEVICE_RESET:
        this.consume('RESET');
        this.functionReset('VFIO_DEVICE_RESET');
        return 0;
      case VFIO_DEVICE_FEATURE:
        this.consume('FEATURE');
        return this.feature(arg);
      default:
        // vfio_pci_core_ioctl()'s default; also container/group ioctls sent to a device fd.
        raise(E.ENOTTY);
    }
  }

  /** pread/pwrite on the device fd at vfio-pci file offset `offset`. Throws Errno. */
  regionIo(kind: 'read' | 'write', offset: number, buf: Buffer, bufOff: number, len: number): number {
    this.consume(kind === 'read' ? 'pread' : 'pwrite');
    this.catchUp();
    if (!Number.isSafeInteger(offset) || offset < 0) raise(E.EINVAL);
    const index = Math.floor(offset / REGION_STRIDE);
    const at = offset - index * REGION_STRIDE;
    let size: number;
    if (index === VFIO_PCI_BAR0_REGION_INDEX) size = BAR0_SIZE;
    else if (index === VFIO_PCI_CONFIG_REGION_INDEX) size = this.cfg.size;
    else raise(E.EINVAL);
    if (at >= size) raise(E.EINVAL);
    const n = Math.min(len, size - at);
    if (n <= 0) return 0;
    if (index === VFIO_PCI_BAR0_REGION_INDEX) {
      if (kind === 'read') this.bar0.read(at, buf, bufOff, n);
      else this.bar0.write(at, buf, bufOff, n);
    } else if (kind === 'read') this.cfg.read(at, buf, bufOff, n);
    else {
      this.cfg.write(at, buf, bufOff, n);
      if (this.listenerCount('config-write')) this.emit('config-write', at, Buffer.from(buf.subarray(bufOff, bufOff + n)));
    }
    return n;
  }

  // ------------------------------------------------------------------ device ioctls

  private getInfo(arg: Buffer | number | undefined): number {
    const b = struct(arg, 16);
    const argsz = b.readUInt32LE(0);
    if (argsz < 16) raise(E.EINVAL);
    const n = Math.min(argsz, SIZEOF_DEVICE_INFO);
    need(b, n);
    const out = Buffer.alloc(SIZEOF_DEVICE_INFO);
    b.copy(out, 0, 0, 4);
    encodeDeviceInfo(out, {
      flags: VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET,
      numRegions: VFIO_PCI_NUM_REGIONS,
      numIrqs: VFIO_PCI_NUM_IRQS,
      capOffset: 0,
    });
    out.copy(b, 0, 0, n);
    return 0;
  }

  private getRegionInfo(arg: Buffer | number | undefined): number {
    const b = struct(arg, SIZEOF_REGION_INFO);
    if (b.readUInt32LE(0) < SIZEOF_REGION_INFO) raise(E.EINVAL);
    const index = b.readUInt32LE(8);
    if (index >= VFIO_PCI_NUM_REGIONS || index === VFIO_PCI_VGA_REGION_INDEX) raise(E.EINVAL);
    let size = 0;
    let flags = 0;
    if (index === VFIO_PCI_BAR0_REGION_INDEX) {
      size = BAR0_SIZE;
      flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
    } else if (index === VFIO_PCI_CONFIG_REGION_INDEX) {
      size = this.cfg.size;
      flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
    }
    encodeRegionInfo(b, { index, flags, size, offset: index * REGION_STRIDE, capOffset: 0 });
    return 0;
  }

  private getIrqInfo(arg: Buffer | number | undefined): number {
    const b = struct(arg, SIZEOF_IRQ_INFO);
    if (b.readUInt32LE(0) < SIZEOF_IRQ_INFO) raise(E.EINVAL);
    const index = b.readUInt32LE(8);
    if (index >= VFIO_PCI_NUM_IRQS) raise(E.EINVAL);
    encodeIrqInfo(b, this.irq.info(index));
    return 0;
  }

  // ------------------------------------------------------------------ VFIO_DEVICE_FEATURE

  private feature(arg: Buffer | number | undefined): number {
    const b = struct(arg, SIZEOF_DEVICE_FEATURE);
    const argsz = b.readUInt32LE(0);
    const flags = b.readUInt32LE(4);
    if (argsz < SIZEOF_DEVICE_FEATURE) raise(E.EINVAL);
    const known = VFIO_DEVICE_FEATURE_MASK | VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_PROBE;
    if (flags & ~known) raise(E.EINVAL);
    const get = (flags & VFIO_DEVICE_FEATURE_GET) !== 0;
    const set = (flags & VFIO_DEVICE_FEATURE_SET) !== 0;
    const probe = (flags & VFIO_DEVICE_FEATURE_PROBE) !== 0;
    if (!probe && get && set) raise(E.EINVAL);
    const payloadSize = argsz - SIZEOF_DEVICE_FEATURE;

    /** vfio_check_feature(): 1 = go on, 0 = PROBE answered. */
    const check = (ops: number, minsz: number): boolean => {
      if ((flags & (VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET)) & ~ops) raise(E.EINVAL);
      if (probe) return false;
      if (!get && !set) raise(E.EINVAL);
      if (payloadSize < minsz) raise(E.EINVAL);
      return true;
    };

    switch (flags & VFIO_DEVICE_FEATURE_MASK) {
      case VFIO_DEVICE_FEATURE_MIGRATION: {
        if (!this.options.migration) raise(E.ENOTTY);
        if (!check(VFIO_DEVICE_FEATURE_GET, SIZEOF_FEATURE_MIGRATION)) return 0;
        this.consume('MIGRATION');
        need(b, SIZEOF_DEVICE_FEATURE + SIZEOF_FEATURE_MIGRATION);
        encodeMigrationFlags(b, this.options.migrationFlags);
        return 0;
      }
      case VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE: {
        if (!this.options.migration) raise(E.ENOTTY);
        if (!check(VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET, SIZEOF_FEATURE_MIG_STATE)) return 0;
        need(b, SIZEOF_DEVICE_FEATURE + SIZEOF_FEATURE_MIG_STATE);
        if (get) {
          this.consume('MIG_DEVICE_STATE_GET');
          encodeMigState(b, { deviceState: this.mig, dataFd: -1 });
          return 0;
        }
        return this.setState(b);
      }
      case VFIO_DEVICE_FEATURE_MIG_DATA_SIZE: {
        if (!this.options.migration) raise(E.ENOTTY);
        if (!check(VFIO_DEVICE_FEATURE_GET, SIZEOF_FEATURE_MIG_DATA_SIZE)) return 0;
        this.consume('MIG_DATA_SIZE');
        need(b, SIZEOF_DEVICE_FEATURE + SIZEOF_FEATURE_MIG_DATA_SIZE);
        this.catchUp();
        encodeMigDataSize(b, this.remainingStream());
        return 0;
      }
      case VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOV2: {
        // A kernel without the feature (6.12) answers ENOTTY, as for any id it does not know. One
        // with it (vfio_ioctl_device_feature_migration_precopy_info_v2()) refuses a device without
        // PRE_COPY with EINVAL, takes SET (PROBE included) with any payload, and keeps the opt-in
        // until the device is closed (vfio_pci_core_close_device()).
        if (!this.options.precopyInfoV2) raise(E.ENOTTY);
        if (!this.options.migration || !(this.options.migrationFlags & VFIO_MIGRATION_PRE_COPY)) raise(E.EINVAL);
        if (!check(VFIO_DEVICE_FEATURE_SET, 0)) return 0;
        this.infoV2 = true;
        return 0;
      }
      case VFIO_DEVICE_FEATURE_DMA_LOGGING_START: {
        // No log_ops: the kernel answers ENOTTY before looking at anything else.
        if (!this.options.dmaLogging) raise(E.ENOTTY);
        if (!check(VFIO_DEVICE_FEATURE_SET, SIZEOF_DMA_LOGGING_CONTROL)) return 0;
        need(b, SIZEOF_DEVICE_FEATURE + SIZEOF_DMA_LOGGING_CONTROL);
        return this.loggingStart(b.subarray(SIZEOF_DEVICE_FEATURE, SIZEOF_DEVICE_FEATURE + SIZEOF_DMA_LOGGING_CONTROL));
      }
      case VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP: {
        if (!this.options.dmaLogging) raise(E.ENOTTY);
        if (!check(VFIO_DEVICE_FEATURE_SET, 0)) return 0;
        this.consume('DMA_LOGGING_STOP');
        if (this.dmaLog) log('%s: DMA logging stopped', this.label);
        this.dmaLog = undefined;
        return 0;
      }
      case VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT: {
        if (!this.options.dmaLogging) raise(E.ENOTTY);
        if (!check(VFIO_DEVICE_FEATURE_GET, SIZEOF_DMA_LOGGING_REPORT)) return 0;
        need(b, SIZEOF_DEVICE_FEATURE + SIZEOF_DMA_LOGGING_REPORT);
        return this.loggingReport(b.subarray(SIZEOF_DEVICE_FEATURE));
      }
      default:
        raise(E.ENOTTY);
    }
  }

  /** DMA_LOGGING_START with `control` (the payload, written back): the core's checks, then the driver. */
  private loggingStart(control: Buffer): number {
    const c = decodeDmaLoggingControl(control);
    if (c.numRanges === 0) raise(E.EINVAL);
    if (c.numRanges > LOG_MAX_RANGES) raise(E.E2BIG);
    const mask = (c.pageSize - 1n) & (U64 - 1n); // IS_ALIGNED() is a mask test
    const nodes: Interval[] = [];
    for (let i = 0; i < c.numRanges; i++) {
      const one = this.host.userMemory(c.rangesAddr + BigInt(i * SIZEOF_DMA_LOGGING_RANGE), SIZEOF_DMA_LOGGING_RANGE);
      const [r] = decodeDmaLoggingRanges(one, 1);
      if (r.iova & mask || r.length & mask) raise(E.EINVAL);
      if (r.iova + r.length >= U64) raise(E.EOVERFLOW);
      const node = { start: r.iova, last: (r.iova + r.length - 1n) & (U64 - 1n) };
      if (nodes.some((n) => n.start <= node.last && node.start <= n.last)) raise(E.EINVAL);
      nodes.push(node);
    }
    // The driver (mlx5's log_start).
    if (this.dmaLog) raise(E.EINVAL);
    this.consume('DMA_LOGGING_START');
    const pageSize = this.options.dmaLoggingPageSize ?? clampPageSize(c.pageSize);
    const tracked = combineRanges(
      nodes.sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0)),
      this.options.dmaLoggingMaxRanges,
    );
    this.dmaLog = new SimDmaLog(tracked, pageSize);
    this.reports = 0;
    encodeDmaLoggingControl(BigInt(pageSize), c.numRanges, c.rangesAddr).copy(control);
    log('%s: DMA logging started: %d ranges (%d tracked) at %d bytes/page', this.label, c.numRanges, tracked.length, pageSize);
    return 0;
  }

  /** DMA_LOGGING_REPORT of `payload`: the core's checks, the user bitmap, then the driver. */
  private loggingReport(payload: Buffer): number {
    const r = decodeDmaLoggingReport(payload);
    if (r.pageSize < 4096n || (r.pageSize & (r.pageSize - 1n)) !== 0n) raise(E.EINVAL);
    if (r.iova + r.length >= U64) raise(E.EOVERFLOW);
    if (r.length === 0n) return 0;
    const pages = (r.length + r.pageSize - 1n) / r.pageSize;
    const bytes = ((pages + 63n) / 64n) * 8n;
    if (bytes > 1n << 30n) raise(E.ENOMEM);
    const view = this.host.userMemory(r.bitmapAddr, Number(bytes));
    // The driver (mlx5's log_read_and_clear).
    if (!this.dmaLog) raise(E.EINVAL);
    this.consume('DMA_LOGGING_REPORT');
    this.reports++;
    if (this.options.dmaLoggingFailEvery && this.reports % this.options.dmaLoggingFailEvery === 0) raise(E.EIO);
    this.dmaLog.readAndClear(new DirtyBitmap(r.iova, r.length, Number(r.pageSize), view));
    return 0;
  }

  /**
   * MIG_DATA_SIZE: what a STOP_COPY would still produce: the rest of the current saving session
   * (blocks not sent, dirty blocks, trailer), or a whole plain stream.
   */
  private remainingStream(): number {
    const s = this.saving;
    if (s && !s.disabled) return s.figures().remaining;
    return this.streamLength;
  }

  /** SET of MIG_DEVICE_STATE: walk, then copy back {requested state, data_fd}. */
  private setState(b: Buffer): number {
    const target = b.readUInt32LE(SIZEOF_DEVICE_FEATURE);
    let dataFd = -1;
    let failure: unknown;
    try {
      this.consume('MIG_DEVICE_STATE_SET');
      const file = this.walk(target);
      if (file) {
        const external = this.externalFds.get(file);
        if (external !== undefined) {
          dataFd = external;
        } else {
          dataFd = this.host.allocFd(this, file);
          this.openDataFds.add(file);
        }
      }
    } catch (e) {
      failure = e;
    }
    encodeMigState(b, { deviceState: target, dataFd });
    if (failure !== undefined) throw failure;
    return 0;
  }

  /** The drivers' loop: one vfio_mig_get_next_state() and one arc at a time. */
  private walk(target: number): Session | undefined {
    // Whatever the device did in the state it leaves happened before the arcs.
    this.catchUp();
    let file: Session | undefined;
    while (this.mig !== target) {
      const next = nextState(this.mig, target as MigState, this.options.migrationFlags);
      if (isRejection(next)) {
        log('%s: %s -> %s rejected: %s', this.label, migStateName(this.mig), migStateName(target), next.detail);
        raise(next.errno);
      }
      file = this.step(this.mig, next);
      this.arcs.push([this.mig, next]);
      if (this.arcs.length > 256) this.arcs.shift();
      log('%s: arc %s -> %s', this.label, migStateName(this.mig), migStateName(next));
      const from = this.mig;
      this.mig = next;
      this.emit('arc', from, next);
    }
    return file;
  }

  /** Execute one arc. Returns the session whose fd the arc hands out, if any. Throws Errno. */
  private step(cur: MigState, next: MigState): Session | undefined {
    const fault = this.arcFaults.findIndex((f) => (f.from === undefined || f.from === cur) && (f.to === undefined || f.to === next));
    if (fault >= 0) {
      const f = this.arcFaults.splice(fault, 1)[0];
      if (f.enterError) this.enterError();
      raise(f.errno);
    }
    if (cur === MigState.RESUMING) {
      // RESUMING -> STOP: load the state; a short or bad stream fails and the device stays.
      // An external data_fd's bytes never reached the sim: nothing to check or load.
      const r = this.resuming as ResumeSession;
      if (!this.externalFds.has(r)) {
        const restored = r.finish();
        this.data.adopt(restored.seed, restored.versions);
        this.bar0.load(restored.regs);
      }
      this.endSessions();
      return undefined;
    }
    if (next === MigState.RESUMING) {
      const external = this.externalFd('resume');
      this.endSessions();
      this.resuming = new ResumeSession(
        this.sessionHost(),
        { size: this.options.size, blockSize: this.options.blockSize, pciId: this.pciId, maxWrite: this.options.maxWrite },
        this.takePendingFault(),
      );
      if (external !== undefined) this.externalFds.set(this.resuming, external);
      return this.resuming;
    }
    const fromSaving = isSavingState(cur);
    const toSaving = isSavingState(next);
    if (fromSaving && toSaving) {
      // PRE_COPY <-> PRE_COPY_P2P: nothing; PRE_COPY(_P2P) -> STOP_COPY: same session, device stopped.
      if (next === MigState.STOP_COPY) this.saving?.enterStopCopy(this.finalState());
      return undefined;
    }
    if (fromSaving) {
      this.endSessions();
      return undefined;
    }
    if (toSaving) {
      const external = next === MigState.STOP_COPY ? this.externalFd('save') : undefined;
      this.endSessions();
      this.saving = new SaveSession(
        this.sessionHost(),
        this.data,
        {
          pciId: this.pciId,
          initialBlocks: Math.ceil(this.options.precopyBytes / this.options.blockSize),
          maxRead: this.options.maxRead,
        },
        next === MigState.STOP_COPY ? this.finalState() : undefined,
        this.takePendingFault(),
      );
      if (external !== undefined) this.externalFds.set(this.saving, external);
      return this.saving;
    }
    // RUNNING <-> RUNNING_P2P <-> STOP (and RUNNING <-> STOP without P2P): the device starts or
    // stops; BAR0 reads the state live.
    return undefined;
  }

  /** The trailer of a stream, as the device stops: the migrated registers and the version digest. */
  private finalState(): Trailer {
    const { control, irqCount, scratch } = this.bar0.registers();
    const { versionSum, tableCrc } = this.data.digest();
    return { control, irqCount, scratch, versionSum, tableCrc };
  }

  /**
   * The churn rate turned into block rewrites for the time since the last look, if the device
   * ran (every state change looks first, so the state now is the state then). Called where the
   * device is observed: BAR0 and config accesses, PRECOPY_INFO, MIG_DATA_SIZE, state changes and
   * test hooks; not on data_fd reads, so that a PRE_COPY read loop reaches its temporary end
   * (mlx5 too produces new precopy data when PRECOPY_INFO asks the device, not while reading).
   */
  private catchUp(): void {
    const c = this.churn;
    if (!c) return;
    const n = c.due(this.isRunning(), this.options.blockSize);
    const blocks = this.data.blocks;
    if (n === 0 || blocks === 0) return;
    if (n >= 4 * blocks) {
      this.data.rewriteRange(0, blocks);
      return;
    }
    for (let i = 0; i < n; i++) this.data.rewrite(c.pick(blocks));
  }

  private sessionHost(): SessionHost {
    return {
      state: () => this.mig,
      enterError: () => this.enterError(),
      wake: () => this.host.wake(),
      precopyEnd: () => this.precopyEndMode,
    };
  }

  /** The real fd `externalDataFd` gives for a new session of `kind`, or undefined (virtual). */
  private externalFd(kind: 'save' | 'resume'): number | undefined {
    const fn = this.options.externalDataFd?.[kind];
    if (!fn) return undefined;
    const fd = fn({ device: this.label, streamBytes: this.streamLength });
    if (!Number.isInteger(fd) || fd < 0) throw new RangeError(`externalDataFd.${kind}() must return an open fd, got ${String(fd)}`);
    return fd;
  }

  private takePendingFault(): DataFault | undefined {
    const f = this.pendingFault;
    this.pendingFault = undefined;
    return f;
  }

  // ------------------------------------------------------------------ lifecycle

  /**
   * The device operates: RUNNING and PRE_COPY, and the P2P states, where it only may not initiate
   * P2P DMA but still runs (uAPI, "RUNNING -> RUNNING_P2P"). In STOP, STOP_COPY, RESUMING and
   * ERROR it must not change its internal state (uAPI, "RUNNING_P2P -> STOP").
   */
  private isRunning(): boolean {
    return (
      this.mig === MigState.RUNNING ||
      this.mig === MigState.RUNNING_P2P ||
      this.mig === MigState.PRE_COPY ||
      this.mig === MigState.PRE_COPY_P2P
    );
  }

  private enterError(): void {
    log('%s: -> ERROR', this.label);
    this.mig = MigState.ERROR;
    this.endSessions();
  }

  /** End the data sessions: their fds now fail with ENODEV. */
  private endSessions(): void {
    this.saving?.disable();
    this.resuming?.disable();
    this.externalFds.clear();
    this.saving = undefined;
    this.resuming = undefined;
  }

  /** VFIO_DEVICE_RESET / FLR: back to RUNNING with power-on registers and config. */
  private functionReset(why: 'VFIO_DEVICE_RESET' | 'FLR'): void {
    log('%s: reset (%s) from %s', this.label, why, migStateName(this.mig));
    this.endSessions();
    this.mig = MigState.RUNNING;
    this.bar0.reset();
    this.cfg.reset();
    this.host.wake();
    this.emit('reset', why);
  }

  /** The last device fd closed. */
  private release(): void {
    log('%s: released', this.label);
    this.endSessions();
    this.irq.disableAll();
    this.dmaLog = undefined;
    this.infoV2 = false;
    this.mig = MigState.RUNNING;
    this.bar0.reset();
    this.cfg.reset();
    this.host.wake();
  }
}

/** mlx5's choice of a page size: the request rounded down to a power of two, within [4 KiB, 1 GiB]. */
function clampPageSize(requested: bigint): number {
  let log2 = 0;
  for (let v = requested; v > 1n; v >>= 1n) log2++;
  return 2 ** Math.min(30, Math.max(12, log2));
}

/** The ioctl argument as a struct buffer of at least `min` bytes (copy_from_user: EFAULT otherwise). */
function struct(arg: Buffer | number | undefined, min = 0): Buffer {
  if (!Buffer.isBuffer(arg)) raise(E.EFAULT);
  need(arg, min);
  return arg;
}

function need(b: Buffer, n: number): void {
  if (b.length < n) raise(E.EFAULT);
}

/**
 * node-vfio-pci: a vfio-pci device model with VFIO migration v2 for TypeScript VMMs.
 *
 * The public API, by layer (each a folder of src/; imports only point down, checked by
 * dependency-cruiser, .dependency-cruiser.cjs):
 *
 *  - base/      errors: `VfioError` (one class; `code` from one registry, `EVFIO_CODES`)
 *  - kernel/    the kernel's VFIO device: `openDevice()` → `VfioDevice` (regions, IRQs, config
 *               space, reset, DMA mapping through its IOMMU context), its one `Migration`
 *               (`device.migration`: the migration v2 state machine, port of the kernel's
 *               vfio_mig_get_next_state(), sessions and data_fd), the syscall `Binding`
 *  - model/     what a VMM plugs in: `VfioPciDevice` (config-space shadow with QEMU's masks,
 *               virtualised BARs, MSI/MSI-X/INTx wiring) over a `Host` the VMM implements
 *               (`ReferenceHost` is a complete small one); `BareDevice` for a device on its own
 *  - engine/    the one migration engine: pause / save / load / resume of a VM's devices with
 *               the P2P order, blockers, pairing by id, checks before touching and recovery,
 *               through a device-state stream (`StateSink` / `StateSource`); the live save
 *               (PRE_COPY rounds, pending, switchover) and dirty-page tracking of device DMA
 *  - snapshot/  the snapshot file format (docs/snapshot-format.md) and its streams
 *  - live/      live migration between processes or hosts: the wire protocol
 *               (docs/live-protocol.md), its transport (docs/live-transport.md: tcp, unix, TLS,
 *               a VMM's own channel), `LiveMigration` (the source) and `receiveMigration()`
 *  - vm/        `MigrationCoordinator` (the engine over a VM's `VfioPciDevice`s, with snapshot
 *               files and live migration), `saveSnapshot()` / `restoreSnapshot()` /
 *               `migrateDevices()` / `receiveDevices()` (the CLI's jobs on bare devices)
 *
 * The simulated device (a test double and demo device) is `node-vfio-pci/sim`:
 * `require('node-vfio-pci/sim').registerSimulator()` lets `openDevice('sim:64MiB')` open one.
 */
export {
  VfioError, isVfioError, errnoName, describeOutcome, EVFIO_CODES,
  type VfioErrorInit, type VfioErrorKind, type VfioErrorCode, type EvfioCode, type ErrnoName, type DeviceOutcome,
} from './base/errors';

// ---- kernel: opening devices, the device, its migration state machine
export type { Binding } from './kernel/binding/types';
export { loadBinding } from './kernel/binding';
export { openDevice, getDefaultBinding, registerDeviceProvider, type OpenOptions, type DeviceProvider } from './kernel/open';
export { VfioDevice } from './kernel/device';
export type { IommuContext, IommuKind, IommuDirtyMode, IommufdContext } from './kernel/iommu';
export {
  DirtyBitmap, DmaLogging, HwptDirtyTracker, loggingRanges, checkLoggingRanges, DMA_LOGGING_MAX_RANGES, MIN_DIRTY_PAGE_SIZE,
  type DirtyRun, type DirtyTarget, type DmaRange, type IommuDirtyTracking, type LoggingState, type RangeVerdict,
  type ReportFailurePolicy, type ReportResult, type TrackedRegion, dirtyMethodOf, type DirtyMethod,
} from './kernel/dirty';
export { Migration, type DataSession, type SessionKind, type StateChange, type MigrationEvents } from './kernel/migration';
export { planTransition } from './kernel/plan';
export { MigState, migStateName, parseMigState } from './kernel/uapi/vfio';
export * as uapi from './kernel/uapi/vfio';

// ---- model: the device model a VMM plugs in, and the host it plugs into
export { VfioPciDevice, type AttachOptions, type VfioPciEvents } from './model/vfio-pci';
export type { GuestError, GuestAccess, GuestErrorStep } from './model/guest-error';
export { BareDevice } from './model/bare';
export type { MigratableDevice, DeviceRecord, ModelPlan } from './model/migratable';
export * from './model/host/types';
export { ReferenceHost, ReferenceBus, ReferenceAllocator, ReferenceInterrupts, ReferenceMemory, ReferenceViommu, type AllocationRecord } from './model/host/reference';
export * as pci from './model/pci';

// ---- engine: the one orchestration, and the stream interface it writes to and reads from
export {
  MigrationEngine,
  type Blocker, type EngineEvents, type EngineOptions, type EnginePhase, type SaveOptions, type LoadOptions, type ResumeOptions, type SaveResult, type LoadResult,
} from './engine/engine';
export type { StateSink, StateSource, SavedDevice, LoadTargets, DataFdTarget, WriteStateOptions, Progress, SaveSummary } from './engine/stream';
export { LiveSave, UNKNOWN_SIZE, type DevicePending, type RoundResult, type SwitchoverResult, type SwitchoverOptions } from './engine/live-save';
export {
  planDirtyTracking, DirtyTracker,
  type DirtyTrackingOptions, type DirtyPlan, type DevicePlan, type DirtyFinding, type DirtySync, type DeviceDirty, type DirtySummary,
} from './engine/dirty';

// ---- live: the wire protocol's two ends, and the transport under them
export {
  LiveMigration, receiveMigration, checkMigrateOptions, DEFAULT_DOWNTIME_LIMIT_MS, DEFAULT_BANDWIDTH,
  type MigrateOptions, type IncomingOptions, type IncomingResult, type MigrationResult, type MigrationProgress, type Pending, type LiveMigrationEvents,
} from './live/migration';
export { FrameLink, connectLink, acceptLink, type Endpoint, type LinkTransportOptions, type LinkOptions } from './live/link';
export { LiveSink, LiveSource, type LiveSinkOptions, type LiveSourceOptions } from './live/stream';
export {
  listen, Listener, connect, openChannel, parseUri, formatUri, loadTlsCredentials, FdChannel, StreamChannel,
  type Channel, type ListenOptions, type AcceptOptions, type RefusedPeer, type ConnectOptions, type TlsOptions, type TlsCredentials, type TransportUri,
} from './live';

// ---- snapshot files
export { SnapshotWriter, type WriterOptions, type WriterFiles, type WriterFile } from './snapshot/writer';
export { SnapshotReader, type DeviceSections } from './snapshot/reader';
export { SnapshotFileSink, SnapshotFileSource } from './snapshot/file-stream';
export { inspectSnapshot, type Inspection } from './snapshot/inspect';

// ---- vm: the VMM's coordinator, and the CLI's jobs
export { MigrationCoordinator, type CoordinatorOptions } from './vm/coordinator';
export {
  saveSnapshot, restoreSnapshot,
  type JobDevice, type JobOptions, type SaveSnapshotOptions, type SaveSnapshotResult, type RestoreSnapshotOptions,
} from './vm/jobs';
export { migrateDevices, receiveDevices, type MigrateJobOptions, type ReceiveJobOptions } from './vm/live-jobs';

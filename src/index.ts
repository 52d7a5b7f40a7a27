/**
 * node-vfio-pci: a vfio-pci device model with VFIO migration v2 for TypeScript VMMs.
 *
 * Layers (each folder one job):
 *  - uapi/       kernel uAPI constants and struct codecs (vfio.h, iommufd.h)
 *  - binding/    the syscall contract and its implementations: native addon, koffi, simulated device
 *  - device/     opening devices (iommufd or group/container) and typed device access
 *  - migration/  the migration v2 state machine (kernel planner port), sessions, data_fd streaming
 *  - snapshot/   the snapshot file format, its reader/writer and the save/restore jobs
 *  - cli/        the `vfio-pci` command
 */
export { VfioError, isVfioError, errnoName, type VfioErrorInit, type VfioErrorKind } from './errors';
export type { Binding } from './binding/types';
export { VfioDevice } from './device/device';
export { openDevice, isSimSpec, getDefaultBinding, getDefaultSimBinding, type OpenOptions } from './device/open';
export { loadBinding } from './binding';
export { resolveDevice, type ResolvedDevice } from './device/resolve';
export type { IommuContext, IommuKind } from './device/iommu';
export { Migration, sessionKindOf, type DataSession, type StateChange, type MigrationEvents } from './migration/migration';
export { planTransition, nextState, legalFlagSets, isSavingState } from './migration/plan';
export { drainSession, feedSession, DEFAULT_BUFFER_SIZE } from './migration/stream';
export { saveSnapshot, restoreSnapshot, checkIdentity, type SaveOptions, type RestoreOptions, type Progress } from './snapshot/jobs';
export { SnapshotReader } from './snapshot/reader';
export { SnapshotWriter } from './snapshot/writer';
export { inspectSnapshot } from './snapshot/inspect';
export * as uapi from './uapi/vfio';
export * as structs from './uapi/structs';
export * as iommufd from './uapi/iommufd';
export { MigState, migStateName, parseMigState } from './uapi/vfio';
export * as pci from './pci';
export { VfioPciDevice, type AttachOptions, type VfioPciEvents } from './device/vfio-pci';
export { MigrationCoordinator, type Blocker, type CoordinatorOptions, type CoordinatorEvents } from './device/coordinator';
export * from './host/types';
export { ReferenceHost, ReferenceBus, ReferenceAllocator, ReferenceInterrupts, ReferenceMemory, type AllocationRecord } from './host/reference';

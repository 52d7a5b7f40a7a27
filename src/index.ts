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
export { VfioError, isVfioError, errnoName, type VfioErrorInit, type VfioErrorKind } from './base/errors';
export type { Binding } from './kernel/binding/types';
export { VfioDevice } from './kernel/device';
export { openDevice, getDefaultBinding, registerDeviceProvider, type OpenOptions, type DeviceProvider } from './kernel/open';
export { loadBinding } from './kernel/binding';
export { resolveDevice, type ResolvedDevice } from './kernel/resolve';
export type { IommuContext, IommuKind } from './kernel/iommu';
export { Migration, sessionKindOf, type DataSession, type StateChange, type MigrationEvents } from './kernel/migration';
export { planTransition, nextState, legalFlagSets, isSavingState } from './kernel/plan';
export { drainSession, feedSession, DEFAULT_BUFFER_SIZE } from './kernel/stream';
export { saveSnapshot, restoreSnapshot, checkIdentity, type SaveOptions, type RestoreOptions, type Progress } from './vm/jobs';
export { SnapshotReader } from './snapshot/reader';
export { SnapshotWriter } from './snapshot/writer';
export { inspectSnapshot } from './snapshot/inspect';
export * as uapi from './kernel/uapi/vfio';
export * as structs from './kernel/uapi/structs';
export * as iommufd from './kernel/uapi/iommufd';
export { MigState, migStateName, parseMigState } from './kernel/uapi/vfio';
export * as pci from './model/pci';
export { VfioPciDevice, type AttachOptions, type VfioPciEvents } from './model/vfio-pci';
export type { GuestError, GuestAccess, GuestErrorStep } from './model/guest-error';
export { MigrationCoordinator, type Blocker, type CoordinatorOptions, type CoordinatorEvents } from './vm/coordinator';
export * from './model/host/types';
export { ReferenceHost, ReferenceBus, ReferenceAllocator, ReferenceInterrupts, ReferenceMemory, type AllocationRecord } from './model/host/reference';

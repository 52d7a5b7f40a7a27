/**
 * src/pci: the pure (no I/O) PCI config-space layer of the device model.
 *  - regs.ts          register offsets, bits and capability layouts (pci_regs.h names)
 *  - capabilities.ts  walking the standard and extended capability lists
 *  - config-space.ts  the config shadow with wmask/w1cmask/cmask/emulated masks
 *  - compare.ts       QEMU's restore-time config comparison
 *  - msix-table.ts    the emulated MSI-X table and PBA
 *  - names.ts         register and capability names for messages
 */
export * as regs from './regs';
export {
  type Capability,
  walkCapabilities,
  walkExtendedCapabilities,
  walkAllCapabilities,
  findCapability,
  findExtCapability,
  capabilityAt,
} from './capabilities';
export {
  ConfigSpace,
  COMMAND_WMASK,
  type BarKind,
  type BarInfo,
  type FromDeviceOptions,
  type ConfigAccess,
  type ConfigChanges,
  type ConfigWriteResult,
  type ConfigImage,
  type MsiState,
  type MsiVector,
  type MsixState,
} from './config-space';
export { compareConfig, checkConfig, destinationConfig, registerName, type ConfigMismatch, type ConfigMismatchError, type SavedConfig, type DestinationConfig } from './compare';
export { MsixTable, type MsixVectorState, type MsixChange, type MsixChangeListener } from './msix-table';
export { capabilityName, extCapabilityName, headerRegisterName } from './names';

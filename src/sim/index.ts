/**
 * The simulated vfio-pci device: a model of the kernel's VFIO uAPI and of a migratable driver,
 * served at the syscall level (`SimBinding`), so that everything above the binding runs on it
 * unchanged. A test double and a demo device: the product's open path never imports it; call
 * `registerSimulator()` to let `openDevice()` open `sim` specs.
 */
export { SimBinding, VIRTUAL_FD_BASE, POLLNVAL, type SimBindingOptions, type Session } from './binding';
export { registerSimulator, openSimDevice, defaultSimBinding, simulatorProvider, simIommuContext } from './provider';
export { SimDevice, DEFAULT_SIM_SIZE, DEFAULT_SIM_MIGRATION_FLAGS } from './device';
export type { SimDeviceOptions, ResolvedSimDeviceOptions, SimDeviceEvents, SimOp, SimRegisters, SessionInfo, ExternalDataFd } from './device';
export type { DataFault, SaveFigures } from './session';
export type { DataDigest } from './data';
export type { IrqSnapshot, IrqMode } from './irq';
export { isSimPath, parseSimSpec, parseSize, formatSize, type ParsedSimSpec } from './spec';
export * as simStream from './stream';
export {
  BAR0,
  BAR0_SIZE,
  BAR0_ID_VALUE,
  BAR0_VERSION_VALUE,
  STATUS_RUNNING,
  STATUS_ERROR,
  DMA_STATUS_DONE,
  DMA_STATUS_FAULT,
  DMA_STATUS_BAD_LENGTH,
  DMA_MAX_LEN,
} from './bar0';
export { SimDmaSpace, SimIommuDirty, SimDmaLog, combineRanges, SIM_IOMMU_PAGE, type Interval } from './dma';
export {
  SIM_VENDOR_ID,
  SIM_DEVICE_ID,
  SIM_SUBSYS_VENDOR_ID,
  SIM_SUBSYS_ID,
  SIM_CLASS,
  SIM_REVISION,
  SIM_PCI_ID,
  CAP_OFFSETS,
  PCI,
  VNDR_CAP_LENGTH,
  COMMAND_MASTER,
} from './config';

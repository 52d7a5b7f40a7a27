/**
 * Human names of PCI config registers and capabilities, for error messages and inspection
 * output. Header register names are the pci_regs.h constant names ('PCI_DEVICE_ID').
 */
import * as r from './regs';

const STD_CAP_NAMES: ReadonlyMap<number, string> = new Map([
  [r.PCI_CAP_ID_PM, 'Power Management'],
  [r.PCI_CAP_ID_AGP, 'AGP'],
  [r.PCI_CAP_ID_VPD, 'VPD'],
  [r.PCI_CAP_ID_SLOTID, 'Slot Identification'],
  [r.PCI_CAP_ID_MSI, 'MSI'],
  [r.PCI_CAP_ID_CHSWP, 'CompactPCI Hot Swap'],
  [r.PCI_CAP_ID_PCIX, 'PCI-X'],
  [r.PCI_CAP_ID_HT, 'HyperTransport'],
  [r.PCI_CAP_ID_VNDR, 'Vendor Specific'],
  [r.PCI_CAP_ID_DBG, 'Debug Port'],
  [r.PCI_CAP_ID_CCRC, 'CompactPCI Central Resource Control'],
  [r.PCI_CAP_ID_SHPC, 'PCI Standard Hot-Plug Controller'],
  [r.PCI_CAP_ID_SSVID, 'Bridge Subsystem Vendor ID'],
  [r.PCI_CAP_ID_AGP3, 'AGP 8x'],
  [r.PCI_CAP_ID_SECDEV, 'Secure Device'],
  [r.PCI_CAP_ID_EXP, 'PCI Express'],
  [r.PCI_CAP_ID_MSIX, 'MSI-X'],
  [r.PCI_CAP_ID_SATA, 'SATA Data/Index Configuration'],
  [r.PCI_CAP_ID_AF, 'Advanced Features'],
  [r.PCI_CAP_ID_EA, 'Enhanced Allocation'],
]);

const EXT_CAP_NAMES: ReadonlyMap<number, string> = new Map([
  [0, 'Null'],
  [r.PCI_EXT_CAP_ID_ERR, 'Advanced Error Reporting'],
  [r.PCI_EXT_CAP_ID_VC, 'Virtual Channel'],
  [r.PCI_EXT_CAP_ID_DSN, 'Device Serial Number'],
  [r.PCI_EXT_CAP_ID_PWR, 'Power Budgeting'],
  [r.PCI_EXT_CAP_ID_RCLD, 'Root Complex Link Declaration'],
  [r.PCI_EXT_CAP_ID_RCILC, 'Root Complex Internal Link Control'],
  [r.PCI_EXT_CAP_ID_RCEC, 'Root Complex Event Collector Endpoint Association'],
  [r.PCI_EXT_CAP_ID_MFVC, 'Multi-Function Virtual Channel'],
  [r.PCI_EXT_CAP_ID_VC9, 'Virtual Channel (MFVC present)'],
  [r.PCI_EXT_CAP_ID_RCRB, 'Root Complex Register Block'],
  [r.PCI_EXT_CAP_ID_VNDR, 'Vendor Specific'],
  [r.PCI_EXT_CAP_ID_CAC, 'Config Access Correlation'],
  [r.PCI_EXT_CAP_ID_ACS, 'Access Control Services'],
  [r.PCI_EXT_CAP_ID_ARI, 'Alternative Routing-ID Interpretation'],
  [r.PCI_EXT_CAP_ID_ATS, 'Address Translation Services'],
  [r.PCI_EXT_CAP_ID_SRIOV, 'SR-IOV'],
  [r.PCI_EXT_CAP_ID_MRIOV, 'MR-IOV'],
  [r.PCI_EXT_CAP_ID_MCAST, 'Multicast'],
  [r.PCI_EXT_CAP_ID_PRI, 'Page Request Interface'],
  [r.PCI_EXT_CAP_ID_REBAR, 'Resizable BAR'],
  [r.PCI_EXT_CAP_ID_DPA, 'Dynamic Power Allocation'],
  [r.PCI_EXT_CAP_ID_TPH, 'TPH Requester'],
  [r.PCI_EXT_CAP_ID_LTR, 'Latency Tolerance Reporting'],
  [r.PCI_EXT_CAP_ID_SECPCI, 'Secondary PCI Express'],
  [r.PCI_EXT_CAP_ID_PMUX, 'Protocol Multiplexing'],
  [r.PCI_EXT_CAP_ID_PASID, 'PASID'],
  [r.PCI_EXT_CAP_ID_DPC, 'Downstream Port Containment'],
  [r.PCI_EXT_CAP_ID_L1SS, 'L1 PM Substates'],
  [r.PCI_EXT_CAP_ID_PTM, 'Precision Time Measurement'],
  [r.PCI_EXT_CAP_ID_DVSEC, 'Designated Vendor-Specific'],
  [r.PCI_EXT_CAP_ID_DLF, 'Data Link Feature'],
  [r.PCI_EXT_CAP_ID_PL_16GT, 'Physical Layer 16.0 GT/s'],
  [r.PCI_EXT_CAP_ID_PL_32GT, 'Physical Layer 32.0 GT/s'],
  [r.PCI_EXT_CAP_ID_DOE, 'Data Object Exchange'],
]);

/** 'MSI' for 0x05, 'capability 0x42' for an id we do not know. */
export function capabilityName(id: number): string {
  return STD_CAP_NAMES.get(id) ?? `capability 0x${hex2(id)}`;
}

/** 'Advanced Error Reporting' for 0x0001, 'extended capability 0x0042' when unknown. */
export function extCapabilityName(id: number): string {
  return EXT_CAP_NAMES.get(id) ?? `extended capability 0x${id.toString(16).padStart(4, '0')}`;
}

/** [first offset, size, name] of the type 0 header registers. */
const HEADER_REGISTERS: ReadonlyArray<readonly [number, number, string]> = [
  [r.PCI_VENDOR_ID, 2, 'PCI_VENDOR_ID'],
  [r.PCI_DEVICE_ID, 2, 'PCI_DEVICE_ID'],
  [r.PCI_COMMAND, 2, 'PCI_COMMAND'],
  [r.PCI_STATUS, 2, 'PCI_STATUS'],
  [r.PCI_REVISION_ID, 1, 'PCI_REVISION_ID'],
  [r.PCI_CLASS_PROG, 1, 'PCI_CLASS_PROG'],
  [r.PCI_CLASS_DEVICE, 2, 'PCI_CLASS_DEVICE'],
  [r.PCI_CACHE_LINE_SIZE, 1, 'PCI_CACHE_LINE_SIZE'],
  [r.PCI_LATENCY_TIMER, 1, 'PCI_LATENCY_TIMER'],
  [r.PCI_HEADER_TYPE, 1, 'PCI_HEADER_TYPE'],
  [r.PCI_BIST, 1, 'PCI_BIST'],
  [r.PCI_BASE_ADDRESS_0, 4, 'PCI_BASE_ADDRESS_0'],
  [r.PCI_BASE_ADDRESS_1, 4, 'PCI_BASE_ADDRESS_1'],
  [r.PCI_BASE_ADDRESS_2, 4, 'PCI_BASE_ADDRESS_2'],
  [r.PCI_BASE_ADDRESS_3, 4, 'PCI_BASE_ADDRESS_3'],
  [r.PCI_BASE_ADDRESS_4, 4, 'PCI_BASE_ADDRESS_4'],
  [r.PCI_BASE_ADDRESS_5, 4, 'PCI_BASE_ADDRESS_5'],
  [r.PCI_CARDBUS_CIS, 4, 'PCI_CARDBUS_CIS'],
  [r.PCI_SUBSYSTEM_VENDOR_ID, 2, 'PCI_SUBSYSTEM_VENDOR_ID'],
  [r.PCI_SUBSYSTEM_ID, 2, 'PCI_SUBSYSTEM_ID'],
  [r.PCI_ROM_ADDRESS, 4, 'PCI_ROM_ADDRESS'],
  [r.PCI_CAPABILITY_LIST, 1, 'PCI_CAPABILITY_LIST'],
  [0x35, 7, 'reserved'],
  [r.PCI_INTERRUPT_LINE, 1, 'PCI_INTERRUPT_LINE'],
  [r.PCI_INTERRUPT_PIN, 1, 'PCI_INTERRUPT_PIN'],
  [r.PCI_MIN_GNT, 1, 'PCI_MIN_GNT'],
  [r.PCI_MAX_LAT, 1, 'PCI_MAX_LAT'],
];

/** The pci_regs.h name of the type 0 header register holding byte `offset` (< 0x40). */
export function headerRegisterName(offset: number): string {
  for (const [at, size, name] of HEADER_REGISTERS) {
    if (offset >= at && offset < at + size) return name;
  }
  return `header 0x${hex2(offset)}`;
}

export function hex2(n: number): string {
  return n.toString(16).padStart(2, '0');
}

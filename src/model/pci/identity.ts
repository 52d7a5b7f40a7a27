/**
 * The identity of a PCI function: what a restore or a migration destination must match before
 * anything else is compared (PCI Local Bus spec 6.2.1, the type 0 header).
 */

/** Identity of a PCI function, from its config space header. */
export interface DeviceIdentity {
  vendorId: number;
  deviceId: number;
  subsystemVendorId: number;
  subsystemId: number;
  revision: number;
  /** class code: base << 16 | sub << 8 | prog-if */
  classCode: number;
  headerType: number;
}

/** Identity from raw config-space bytes (at least 64). */
export function identityFromConfig(cfg: Buffer): DeviceIdentity {
  return {
    vendorId: cfg.readUInt16LE(0x00),
    deviceId: cfg.readUInt16LE(0x02),
    revision: cfg.readUInt8(0x08),
    classCode: cfg.readUInt8(0x09) | (cfg.readUInt8(0x0a) << 8) | (cfg.readUInt8(0x0b) << 16),
    headerType: cfg.readUInt8(0x0e),
    subsystemVendorId: (cfg.readUInt8(0x0e) & 0x7f) === 0 ? cfg.readUInt16LE(0x2c) : 0,
    subsystemId: (cfg.readUInt8(0x0e) & 0x7f) === 0 ? cfg.readUInt16LE(0x2e) : 0,
  };
}

/** `vvvv:dddd rev rr class cccccc`. */
export function describeIdentity(id: DeviceIdentity): string {
  const h = (n: number, w: number): string => n.toString(16).padStart(w, '0');
  return `${h(id.vendorId, 4)}:${h(id.deviceId, 4)} rev ${h(id.revision, 2)} class ${h(id.classCode, 6)}`;
}

/** Field-by-field difference of two identities, empty when equal. */
export function identityDiff(a: DeviceIdentity, b: DeviceIdentity): string[] {
  return (Object.keys(a) as (keyof DeviceIdentity)[])
    .filter((k) => a[k] !== b[k])
    .map((k) => `${k} 0x${a[k].toString(16)} ≠ 0x${b[k].toString(16)}`);
}


/**
 * The live-migration stream's frames (docs/live-protocol.md is the byte-level reference; this
 * file is its code): the 12-byte header, the frame types and their payload limits, and the JSON
 * payloads of the handshake and of errors.
 *
 *   header = [u8 type][u8 flags = 0][u16 LE device][u32 LE payload length][u32 LE CRC-32C of the payload]
 *
 * DATA frames are also the data pump's records (src/kernel/pump/types.ts) with the 4-byte prefix
 * [type, flags, device]: the pump writes and reads them without JavaScript touching the bytes.
 */
import { VfioError, type DeviceOutcome, type EvfioCode, type VfioErrorCode, type VfioErrorKind } from '../base/errors';
import { checksum, type ChecksumAlgorithm } from '../kernel/pump/checksum';
import type { DeviceRecord } from '../model/migratable';
import type { DeviceIdentity } from '../model/pci/identity';

export const PROTOCOL_NAME = 'node-vfio-pci-live';
export const PROTOCOL_VERSION = 1;
/** The checksum of every frame's payload. */
export const FRAME_CHECKSUM: ChecksumAlgorithm = 'crc32c';
export const FRAME_HEADER_SIZE = 12;
/** The device index of frames that belong to the whole stream. */
export const WHOLE_STREAM = 0xffff;
/** Largest DATA payload: 1 MiB. */
export const MAX_DATA = 1 << 20;
/** Largest MODEL payload: 16 MiB (a PCI_MODEL body is a few KiB). */
export const MAX_MODEL = 16 << 20;
/** Largest payload of the other types. */
export const MAX_CONTROL = 1 << 20;

export enum FrameType {
  HELLO = 1,
  ACCEPT = 2,
  REFUSE = 3,
  DATA = 4,
  INITIAL_SENT = 5,
  REINIT = 6,
  STATE_END = 7,
  MODEL = 8,
  END = 9,
  SWITCHOVER_ACK = 10,
  LOADED = 11,
  RESUMED = 12,
  ERROR = 13,
  CANCEL = 14,
  PING = 15,
}

export function frameTypeName(t: number): string {
  return FrameType[t] ?? `type ${t}`;
}

/** Payload limit of a frame type. */
export function maxPayload(t: FrameType): number {
  return t === FrameType.DATA ? MAX_DATA : t === FrameType.MODEL ? MAX_MODEL : MAX_CONTROL;
}

export interface FrameHeader {
  type: FrameType;
  flags: number;
  device: number;
  length: number;
  checksum: number;
}

/** A protocol error: a frame the receiver cannot accept (kind 'format', code EVFIO_PROTOCOL). */
export function protocolError(message: string, code: EvfioCode = 'EVFIO_PROTOCOL'): VfioError {
  return new VfioError(message, { code, step: 'live:frame' });
}

/** The 12-byte header of a frame carrying `payload`. */
export function encodeHeader(type: FrameType, device: number, payload: Uint8Array = EMPTY): Buffer {
  const b = Buffer.alloc(FRAME_HEADER_SIZE);
  b.writeUInt8(type, 0);
  b.writeUInt8(0, 1);
  b.writeUInt16LE(device, 2);
  b.writeUInt32LE(payload.length, 4);
  b.writeUInt32LE(payload.length ? checksum(FRAME_CHECKSUM, payload) : 0, 8);
  return b;
}

const EMPTY = Buffer.alloc(0);

/** A whole frame: header and payload in one Buffer. */
export function encodeFrame(type: FrameType, device: number, payload: Uint8Array = EMPTY): Buffer {
  return Buffer.concat([encodeHeader(type, device, payload), payload]);
}

/**
 * Decode and check a header: a known type, flags 0, a payload within its type's limit, a device
 * index below `devices` (or WHOLE_STREAM). Throws EVFIO_PROTOCOL.
 */
export function decodeHeader(b: Buffer, devices?: number): FrameHeader {
  if (b.length < FRAME_HEADER_SIZE) throw protocolError(`a frame header is 12 bytes, got ${b.length}`);
  const h: FrameHeader = { type: b.readUInt8(0), flags: b.readUInt8(1), device: b.readUInt16LE(2), length: b.readUInt32LE(4), checksum: b.readUInt32LE(8) };
  if (!(h.type in FrameType) || typeof FrameType[h.type] !== 'string') throw protocolError(`unknown frame type ${h.type}`);
  if (h.flags !== 0) throw protocolError(`${frameTypeName(h.type)} frame with flags 0x${h.flags.toString(16)} (none are defined)`);
  if (h.length > maxPayload(h.type)) throw protocolError(`${frameTypeName(h.type)} frame of ${h.length} bytes, over its ${maxPayload(h.type)}-byte limit`);
  if (devices !== undefined && h.device !== WHOLE_STREAM && h.device >= devices) {
    throw protocolError(`${frameTypeName(h.type)} frame for device ${h.device}; the stream has ${devices}`);
  }
  return h;
}

/** Check a payload against its header's checksum (EVFIO_CHECKSUM). */
export function checkPayload(h: FrameHeader, payload: Buffer): void {
  const got = payload.length ? checksum(FRAME_CHECKSUM, payload) : 0;
  if (got !== h.checksum) {
    throw new VfioError(`${frameTypeName(h.type)} frame: payload checksum 0x${got.toString(16)}, header says 0x${h.checksum.toString(16)}`, {
      code: 'EVFIO_CHECKSUM', step: 'live:frame',
    });
  }
}

/** The pump's record prefix of device `index`'s DATA frames: [type, flags, u16 device]. */
export function dataPrefix(index: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt8(FrameType.DATA, 0);
  b.writeUInt16LE(index, 2);
  return b;
}

// ------------------------------------------------------------------ JSON payloads

export function encodeJson(v: unknown): Buffer {
  return Buffer.from(JSON.stringify(v), 'utf8');
}

function decodeJson(b: Buffer, what: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(b.toString('utf8'));
  } catch (e) {
    throw protocolError(`${what}: not JSON (${(e as Error).message})`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw protocolError(`${what}: not a JSON object`);
  return v as Record<string, unknown>;
}

function need<T>(o: Record<string, unknown>, key: string, check: (v: unknown) => v is T, what: string): T {
  const v = o[key];
  if (!check(v)) throw protocolError(`${what}: member "${key}" is missing or malformed`);
  return v;
}

const isNum = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
const isStr = (v: unknown): v is string => typeof v === 'string';
const isBool = (v: unknown): v is boolean => typeof v === 'boolean';
const isStrArray = (v: unknown): v is string[] => Array.isArray(v) && v.every(isStr);
const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** What the source offers. */
export type Feature = 'switchover-ack';
export const FEATURES: readonly Feature[] = ['switchover-ack'];

/** A device as HELLO describes it. */
export interface HelloDevice extends DeviceRecord {
  /** The device has PRE_COPY: it will send precopy data and an INITIAL_SENT. */
  precopy: boolean;
  /** The source's estimate of its stop-copy bytes (VFIO_DEVICE_FEATURE_MIG_DATA_SIZE). */
  stopCopyBytes?: number;
}

export interface Hello {
  version: number;
  checksum: string;
  features: string[];
  keepaliveMs: number;
  devices: HelloDevice[];
}

/** HELLO's optional `regions` (BAR0..5 and ROM sizes); absent from an older source. */
function decodeRegions(v: unknown, what: string): HelloDevice['regions'] {
  if (v === undefined) return undefined;
  const size = (n: unknown): n is number => isNum(n) && Number.isSafeInteger(n) && n >= 0;
  if (!isObj(v) || !Array.isArray(v.barSizes) || v.barSizes.length !== 6 || !v.barSizes.every(size) || !size(v.romSize)) {
    throw protocolError(`${what}: regions must be { barSizes: 6 sizes, romSize }`);
  }
  return { barSizes: v.barSizes as number[], romSize: v.romSize };
}

/** LOADED's payload: what the destination loaded, per device. */
export interface Loaded {
  devices: Array<{ id: string; bytes: number }>;
}

export function encodeLoaded(l: Loaded): Buffer {
  return encodeJson(l);
}

export function decodeLoaded(b: Buffer): Loaded {
  const o = decodeJson(b, 'LOADED');
  const devs = need(o, 'devices', (v): v is unknown[] => Array.isArray(v), 'LOADED');
  return {
    devices: devs.map((d, i) => {
      if (!isObj(d)) throw protocolError(`LOADED device ${i}: not an object`);
      return { id: need(d, 'id', isStr, `LOADED device ${i}`), bytes: need(d, 'bytes', isNum, `LOADED device ${i}`) };
    }),
  };
}

/**
 * SWITCHOVER_ACK's payload: the number of REINIT frames the destination had received when it
 * acknowledged (u32 LE; empty means 0). The source takes an ack only for the REINITs it sent, so an
 * ack already on its way when the source sent another REINIT does not open the gate.
 */
export function encodeAckGeneration(reinits: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(reinits >>> 0);
  return b;
}

export function decodeAckGeneration(b: Buffer): number {
  return b.length >= 4 ? b.readUInt32LE(0) : 0;
}

export function encodeHello(h: Hello): Buffer {
  return encodeJson({
    protocol: PROTOCOL_NAME, version: h.version, checksum: h.checksum, features: h.features, keepaliveMs: h.keepaliveMs,
    devices: h.devices.map((d) => ({
      id: d.id, migrationFlags: d.migrationFlags, precopy: d.precopy, stopCopyBytes: d.stopCopyBytes, identity: d.identity, config: d.config.toString('base64'),
      ...(d.regions ? { regions: d.regions } : {}),
      ...(d.model !== undefined ? { model: d.model } : {}),
    })),
  });
}

const IDENTITY_KEYS: ReadonlyArray<keyof DeviceIdentity> = ['vendorId', 'deviceId', 'subsystemVendorId', 'subsystemId', 'revision', 'classCode', 'headerType'];

/**
 * Decode a HELLO. A HELLO of another protocol or version is refused with
 * EVFIO_PROTOCOL_VERSION (the destination answers REFUSE with it).
 */
export function decodeHello(b: Buffer): Hello {
  const o = decodeJson(b, 'HELLO');
  if (o.protocol !== PROTOCOL_NAME) throw protocolError(`not a node-vfio-pci migration stream (protocol ${JSON.stringify(o.protocol)})`, 'EVFIO_PROTOCOL_VERSION');
  const version = need(o, 'version', isNum, 'HELLO');
  if (version !== PROTOCOL_VERSION) {
    throw protocolError(`migration protocol version ${version} is not supported (this library speaks version ${PROTOCOL_VERSION}); ${version > PROTOCOL_VERSION ? 'the source runs a newer node-vfio-pci' : 'the source runs an older node-vfio-pci'}`, 'EVFIO_PROTOCOL_VERSION');
  }
  const cs = need(o, 'checksum', isStr, 'HELLO');
  if (cs !== FRAME_CHECKSUM) throw protocolError(`HELLO: checksum algorithm ${JSON.stringify(cs)} is not supported (crc32c)`, 'EVFIO_PROTOCOL_VERSION');
  const devs = need(o, 'devices', (v): v is unknown[] => Array.isArray(v), 'HELLO');
  if (devs.length === 0 || devs.length >= WHOLE_STREAM) throw protocolError(`HELLO: ${devs.length} devices`);
  const devices = devs.map((d, i): HelloDevice => {
    const what = `HELLO device ${i}`;
    if (!isObj(d)) throw protocolError(`${what}: not an object`);
    const idObj = need(d, 'identity', isObj, what);
    const identity = Object.fromEntries(IDENTITY_KEYS.map((k) => [k, need(idObj, k, isNum, `${what} identity`)])) as unknown as DeviceIdentity;
    const config = Buffer.from(need(d, 'config', isStr, what), 'base64');
    if (config.length !== 256 && config.length !== 4096) throw protocolError(`${what}: a config space of ${config.length} bytes (256 or 4096)`);
    return {
      id: need(d, 'id', isStr, what),
      migrationFlags: need(d, 'migrationFlags', isNum, what),
      precopy: need(d, 'precopy', isBool, what),
      stopCopyBytes: isNum(d.stopCopyBytes) ? d.stopCopyBytes : undefined,
      identity,
      config,
      regions: decodeRegions(d.regions, what),
      // Optional (absent from an older source: not compared), but a boolean when present.
      model: d.model === undefined ? undefined : need(d, 'model', isBool, what),
    };
  });
  return {
    version, checksum: cs,
    features: isStrArray(o.features) ? o.features : [],
    keepaliveMs: isNum(o.keepaliveMs) ? o.keepaliveMs : 1000,
    devices,
  };
}

export interface Accept {
  version: number;
  features: string[];
  /** The destination runs its devices as soon as they are loaded and reports RESUMED. */
  resumes: boolean;
}

export function encodeAccept(a: Accept): Buffer {
  return encodeJson(a);
}

export function decodeAccept(b: Buffer): Accept {
  const o = decodeJson(b, 'ACCEPT');
  return { version: need(o, 'version', isNum, 'ACCEPT'), features: isStrArray(o.features) ? o.features : [], resumes: o.resumes === true };
}

/** The fields of a VfioError as REFUSE and ERROR carry them. */
export interface ErrorInfo {
  code: string;
  kind: string;
  message: string;
  device?: string;
  step?: string;
  errno?: number;
  deviceState?: DeviceOutcome[];
}

export function encodeError(e: unknown): Buffer {
  const err = e instanceof VfioError ? e : undefined;
  const info: ErrorInfo = err
    ? { code: err.code, kind: err.kind, message: err.message, device: err.device, step: err.step, errno: err.errno, deviceState: err.deviceState }
    : { code: 'EVFIO_PEER_FAILED', kind: 'peer', message: (e as Error)?.message ?? String(e) };
  return encodeJson(info);
}

export function decodeError(b: Buffer, what: string): ErrorInfo {
  const o = decodeJson(b, what);
  return {
    code: isStr(o.code) ? o.code : 'EVFIO_PEER_FAILED',
    kind: isStr(o.kind) ? o.kind : 'peer',
    message: isStr(o.message) ? o.message : '(no message)',
    device: isStr(o.device) ? o.device : undefined,
    step: isStr(o.step) ? o.step : undefined,
    errno: isNum(o.errno) ? o.errno : undefined,
    deviceState: Array.isArray(o.deviceState) ? (o.deviceState as DeviceOutcome[]) : undefined,
  };
}

/**
 * The peer's error as one of ours: code EVFIO_PEER_REFUSED (a REFUSE: the destination found the
 * devices incompatible before anything was touched; kind 'mismatch' when it was a mismatch) or
 * EVFIO_PEER_FAILED (an ERROR), the peer's code, message, device and step in the message and in
 * `peer`.
 */
export function peerError(info: ErrorInfo, refused: boolean, peer: string): VfioError & { peer: ErrorInfo } {
  const code: VfioErrorCode = refused ? 'EVFIO_PEER_REFUSED' : 'EVFIO_PEER_FAILED';
  const kind: VfioErrorKind = refused && info.kind === 'mismatch' ? 'mismatch' : 'peer';
  const e = new VfioError(`${peer} ${refused ? 'refused the migration' : 'failed'}: ${info.message} (${info.code}${info.step ? `, step ${info.step}` : ''})`, {
    code, kind, device: info.device, step: refused ? 'migrate:handshake' : undefined,
  }) as VfioError & { peer: ErrorInfo };
  e.peer = info;
  return e;
}

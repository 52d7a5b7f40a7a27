/**
 * Argument checks of the Binding contract (src/binding/types.ts, "Bad arguments throw
 * synchronously"): TypeError (code ERR_INVALID_ARG_TYPE) for a wrong type, RangeError (code
 * ERR_OUT_OF_RANGE) for a value out of range, with the messages of the addon's checks
 * (addon/binding.cc). The koffi binding applies them to every call, the sim to calls on virtual
 * fds (calls it delegates are checked by the inner binding), so a caller that passes garbage
 * fails the same way on every binding.
 */

export const INT_MAX = 0x7fffffff;

export function typeError(message: string): TypeError {
  return Object.assign(new TypeError(message), { code: 'ERR_INVALID_ARG_TYPE' });
}

export function rangeError(message: string): RangeError {
  return Object.assign(new RangeError(message), { code: 'ERR_OUT_OF_RANGE' });
}

/** An integer in [min, max]. */
export function int(fn: string, name: string, v: unknown, min: number, max: number): number {
  if (typeof v !== 'number') throw typeError(`${fn}: "${name}" must be a number`);
  if (!Number.isInteger(v)) throw rangeError(`${fn}: "${name}" must be an integer`);
  if (v < min || v > max) throw rangeError(`${fn}: "${name}" is out of range [${min}, ${max}]`);
  return v;
}

/** Like {@link int}, `dflt` when undefined. */
export function optInt(fn: string, name: string, v: unknown, min: number, max: number, dflt: number): number {
  return v === undefined ? dflt : int(fn, name, v, min, max);
}

/** An fd number: an integer in [0, 2^31). */
export function fd(fn: string, v: unknown, name = 'fd'): number {
  return int(fn, name, v, 0, INT_MAX);
}

/** A Buffer, or another ArrayBufferView seen as bytes. */
export function buffer(fn: string, v: unknown, name = 'buffer'): Buffer {
  if (!ArrayBuffer.isView(v)) throw typeError(`${fn}: "${name}" must be a Buffer`);
  return Buffer.isBuffer(v) ? v : Buffer.from(v.buffer, v.byteOffset, v.byteLength);
}

/** The window buf[offset, offset + length); offset defaults to 0, length to the rest. */
export function window(fn: string, buf: Buffer, offset: unknown, length: unknown): Buffer {
  const off = optInt(fn, 'offset', offset, 0, buf.length, 0);
  const len = optInt(fn, 'length', length, 0, buf.length - off, buf.length - off);
  return buf.subarray(off, off + len);
}

/** sizeof(struct sockaddr_storage): the largest socket address. */
export const SOCKADDR_MAX = 128;

/** A socket address: a Buffer holding a struct sockaddr_*, 2 (the family alone) to 128 bytes. */
export function sockaddr(fn: string, v: unknown, name = 'addr'): Buffer {
  const b = buffer(fn, v, name);
  if (b.length < 2 || b.length > SOCKADDR_MAX) throw rangeError(`${fn}: "${name}" must be 2 to 128 bytes (a struct sockaddr)`);
  return b;
}

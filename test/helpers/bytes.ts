/** Deterministic pseudo-random bytes (xorshift32), so failures reproduce. */
export function pattern(n: number, seed = 0x1234567): Buffer {
  const b = Buffer.alloc(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    b[i] = x & 0xff;
  }
  return b;
}

/** `v` as 2 little-endian bytes. */
export function le16(v: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16LE(v & 0xffff);
  return b;
}

/** `v` as 4 little-endian bytes (taken modulo 2^32, so -1 is 0xffffffff). */
export function le32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v >>> 0);
  return b;
}

/** `v` as 8 little-endian bytes. */
export function le64(v: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt.asUintN(64, v));
  return b;
}

/**
 * Fill `block` with block number `i` of a long deterministic stream (cheap: 4 bytes a step), and
 * return it. Self-contained, so that its source text also runs in a worker (`${fillBlock}`).
 */
export function fillBlock(block: Buffer, i: number): Buffer {
  for (let j = 0; j < block.length; j += 4) block.writeUInt32LE((Math.imul(j + 1, 2654435761) ^ Math.imul(i + 1, 0x9e3779b9)) >>> 0, j);
  return block;
}

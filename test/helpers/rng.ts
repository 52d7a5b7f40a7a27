/** Seeded pseudo-random numbers for the fuzz tests (test/unit/*-fuzz.test.ts): a failure names its seed and case, which reproduce it. */
/** A counter passed through murmur3's 32-bit finaliser: tiny, fast, and good enough for fuzzing. */
export function mix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}
export class Rng {
  private state: number;
  constructor(seed: number) {
    this.state = mix32(seed ^ 0x6a09e667);
  }
  u32(): number {
    this.state = (this.state + 0x9e3779b9) >>> 0;
    return mix32(this.state);
  }
  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor((this.u32() / 0x100000000) * n);
  }
  /** Integer in [lo, hi]. */
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }
  chance(p: number): boolean {
    return this.u32() / 0x100000000 < p;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)];
  }
  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) b[i] = this.u32() & 0xff;
    return b;
  }
  /** Pick a name by weight. */
  weighted<T extends string>(table: ReadonlyArray<readonly [T, number]>): T {
    let total = 0;
    for (const [, w] of table) total += w;
    let x = this.int(total);
    for (const [k, w] of table) {
      if (x < w) return k;
      x -= w;
    }
    return table[0][0];
  }
}

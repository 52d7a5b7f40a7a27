/**
 * The process memory the simulated kernel may dereference: some ioctls carry user pointers
 * (DMA_LOGGING_START's array of ranges, DMA_LOGGING_REPORT's bitmap), which a real kernel reads
 * with copy_from_user() and writes with copy_to_user(). The sim can only reach memory it has
 * seen: every Buffer whose address went through `SimBinding.bufferAddress()` (how the library
 * builds such pointers) is remembered, weakly, by its ArrayBuffer; an address outside all of them
 * is EFAULT, as an unmapped user address is for the kernel.
 *
 * With an inner real binding, addresses are the real ones (so a sim pointer and a real pointer
 * agree); without one, each ArrayBuffer gets a made-up, page-aligned range of its own.
 */
const PAGE = 4096n;
/** Where made-up addresses start (a user-space-looking address, far from 0). */
const SYNTHETIC_BASE = 0x7e00_0000_0000n;

interface Entry {
  base: bigint;
  size: number;
  ref: WeakRef<ArrayBufferLike>;
}

export class UserMemory {
  private readonly bases = new WeakMap<ArrayBufferLike, bigint>();
  private entries: Entry[] = [];
  private pruneAt = 256;
  private nextSynthetic = SYNTHETIC_BASE;

  /** @param realAddress the inner binding's `bufferAddress`, when there is one */
  constructor(private readonly realAddress?: (buf: Buffer) => bigint) {}

  /** The address of `buf`'s first byte; remembers its memory for {@link view}. */
  address(buf: Buffer): bigint {
    const ab = buf.buffer;
    let base = this.bases.get(ab);
    if (base === undefined) {
      if (this.realAddress) {
        base = this.realAddress(buf) - BigInt(buf.byteOffset);
      } else {
        base = this.nextSynthetic;
        const pages = (BigInt(ab.byteLength) + PAGE - 1n) / PAGE;
        this.nextSynthetic += (pages + 1n) * PAGE; // a guard page between buffers
      }
      this.bases.set(ab, base);
      this.entries.push({ base, size: ab.byteLength, ref: new WeakRef(ab) });
      if (this.entries.length >= this.pruneAt) {
        this.entries = this.entries.filter((e) => e.ref.deref() !== undefined);
        this.pruneAt = Math.max(256, 2 * this.entries.length);
      }
    }
    return base + BigInt(buf.byteOffset);
  }

  /**
   * A view of `length` bytes at user address `addr`, or undefined when they are not all inside
   * one remembered, still living buffer (the caller answers EFAULT). Writes to the view reach the
   * caller's Buffer.
   */
  view(addr: bigint, length: number): Buffer | undefined {
    for (let i = this.entries.length - 1; i >= 0; i--) {
      const e = this.entries[i];
      if (addr < e.base || addr + BigInt(length) > e.base + BigInt(e.size)) continue;
      const ab = e.ref.deref();
      if (!ab) continue;
      return Buffer.from(ab as ArrayBuffer, Number(addr - e.base), length);
    }
    return undefined;
  }
}

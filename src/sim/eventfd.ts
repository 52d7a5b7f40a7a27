/**
 * A virtual eventfd, for a SimBinding that has no real binding to create eventfds with (unit
 * tests without the addon) or that is told to keep them virtual. Semantics of eventfd(2): a u64
 * counter; reading returns it and resets it to 0 (EFD_SEMAPHORE: returns 1 and decrements);
 * writing adds; the counter never exceeds 0xfffffffffffffffe (a write that would is EAGAIN on a
 * non-blocking eventfd, which the binding's are).
 */
import { E, raise } from './errno';

export const EFD_SEMAPHORE = 1;
const EFD_MAX = 0xfffffffffffffffen;

export class VirtualEventfd {
  private counter: bigint;

  constructor(
    initval: number,
    readonly semaphore: boolean,
    private readonly wake: () => void,
  ) {
    if (!Number.isInteger(initval) || initval < 0 || initval > 0xffffffff) raise(E.EINVAL);
    this.counter = BigInt(initval);
  }

  get value(): bigint {
    return this.counter;
  }

  /** Add `v` (eventfd write). */
  add(v: bigint): void {
    if (v < 0n || v === 0xffffffffffffffffn || v > EFD_MAX) raise(E.EINVAL);
    if (this.counter + v > EFD_MAX) raise(E.EAGAIN);
    this.counter += v;
    if (v > 0n) this.wake();
  }

  /** Take the counter (eventfd read); 0n when it is 0. */
  take(): bigint {
    if (this.counter === 0n) return 0n;
    if (this.semaphore) {
      this.counter -= 1n;
      return 1n;
    }
    const v = this.counter;
    this.counter = 0n;
    this.wake();
    return v;
  }
}

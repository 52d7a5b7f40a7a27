/**
 * Cases that cannot run everywhere (a binding without real files, a host without IPv6 or a C
 * compiler) are skipped with the reason in their title, never silently, as serialport's
 * bindings-cpp suite does for hardware cases.
 */
import { describe, it } from 'vitest';

/** ` (skipped: REASON)` when there is a reason, else nothing. */
export const skippedBecause = (reason: string | undefined): string => (reason ? ` (skipped: ${reason})` : '');

/** A case that runs unless `reason` says why it cannot here; then it is skipped with the reason in its title. */
export function itUnless(reason: string | undefined, title: string, fn: () => Promise<void> | void, timeout?: number): void {
  it.skipIf(reason !== undefined)(`${title}${skippedBecause(reason)}`, fn, timeout);
}

/** A group of cases that runs unless `reason` says why it cannot here; then it is skipped with the reason in its title. */
export function describeUnless(reason: string | undefined, title: string, fn: () => void): void {
  describe.skipIf(reason !== undefined)(`${title}${skippedBecause(reason)}`, fn);
}

/**
 * Pump buffers (src/kernel/pump/buffers.ts): populate() makes a fresh buffer's pages resident
 * at once, without changing its bytes; pumpBuffers() populates the first of its two.
 */
import * as fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { populate, pumpBuffers } from '../../src/kernel/pump';
import { realBinding } from '../helpers/binding';
import { pattern } from '../helpers/bytes';

const binding = realBinding();

/** Resident KiB of the mapping that holds `buf` (/proc/self/smaps). */
function residentKiB(buf: Buffer): number {
  const at = binding!.bufferAddress(buf);
  let inside = false;
  for (const line of fs.readFileSync('/proc/self/smaps', 'utf8').split('\n')) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) /.exec(line);
    if (m) inside = BigInt(`0x${m[1]}`) <= at && at < BigInt(`0x${m[2]}`);
    else if (inside && line.startsWith('Rss:')) return Number(/(\d+)/.exec(line)![1]);
  }
  throw new Error('no mapping holds the buffer');
}

// 48 MiB: above glibc's largest mmap threshold, so each buffer is a fresh mapping of its own.
const SIZE = 48 << 20;

describe.skipIf(!binding)('pump buffers', () => {
  it('populate() makes the pages of a fresh buffer resident, bytes unchanged', () => {
    const buf = Buffer.allocUnsafe(SIZE);
    expect(residentKiB(buf)).toBeLessThan(1024);
    populate(buf);
    expect(residentKiB(buf)).toBeGreaterThanOrEqual((SIZE >> 10) - 8);
    const small = pattern(3 * 4096 + 100, 9);
    const copy = Buffer.from(small);
    populate(small);
    expect(small.equals(copy)).toBe(true);
    populate(Buffer.alloc(0));
  });

  it('pumpBuffers(): two buffers of the size, the first resident at once, the second not yet', () => {
    const [a, b] = pumpBuffers(SIZE);
    expect([a.length, b.length]).toEqual([SIZE, SIZE]);
    expect(residentKiB(a)).toBeGreaterThanOrEqual((SIZE >> 10) - 8);
    expect(residentKiB(b)).toBeLessThan(1024);
  });
});

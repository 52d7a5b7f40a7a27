/**
 * Pump buffers (src/kernel/pump/buffers.ts): populate() makes a fresh buffer's pages resident
 * (off the JS thread), without changing its bytes; pumpBuffers() populates the first of its two.
 */
import * as fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { populate, pumpBuffers } from '../../src/kernel/pump';
import { realBinding } from '../helpers/binding';
import { pattern } from '../helpers/bytes';

const binding = realBinding();

/**
 * Resident KiB of the whole pages inside `buf`: the "present" bit (63) of each page's
 * /proc/self/pagemap entry (readable without privilege; only the frame numbers are hidden).
 */
function residentKiB(buf: Buffer): number {
  const at = binding!.bufferAddress(buf);
  const first = (at + 4095n) / 4096n;
  const end = (at + BigInt(buf.length)) / 4096n;
  if (end <= first) return 0;
  const entries = Buffer.alloc(Number(end - first) * 8);
  const fd = fs.openSync('/proc/self/pagemap', 'r');
  try {
    fs.readSync(fd, entries, 0, entries.length, Number(first * 8n));
  } finally {
    fs.closeSync(fd);
  }
  let present = 0;
  for (let i = 0; i < entries.length; i += 8) if (entries.readBigUInt64LE(i) >> 63n) present++;
  return present * 4;
}

// 48 MiB: above glibc's largest mmap threshold, so each buffer is fresh memory, never touched.
const SIZE = 48 << 20;

describe.skipIf(!binding)('pump buffers', () => {
  it('populate() makes the pages of a fresh buffer resident off the JS thread, bytes unchanged', async () => {
    const buf = Buffer.allocUnsafe(SIZE);
    expect(residentKiB(buf)).toBeLessThan(1024);
    const done = populate(buf);
    expect(done).toBeInstanceOf(Promise);
    await done;
    expect(residentKiB(buf)).toBeGreaterThanOrEqual((SIZE >> 10) - 8);
    const small = pattern(3 * 4096 + 100, 9);
    const copy = Buffer.from(small);
    await populate(small);
    expect(small.equals(copy)).toBe(true);
    await populate(Buffer.alloc(0));
  });

  it('pumpBuffers(): two buffers of the size; once ready, the first is resident, the second not yet', async () => {
    const { buffers: [a, b], ready } = pumpBuffers(SIZE);
    expect([a.length, b.length]).toEqual([SIZE, SIZE]);
    await ready;
    expect(residentKiB(a)).toBeGreaterThanOrEqual((SIZE >> 10) - 8);
    expect(residentKiB(b)).toBeLessThan(1024);
  });
});

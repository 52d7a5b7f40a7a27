import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import { PassThrough } from 'node:stream';
import { main } from '../../src/cli/main';

async function run(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  const out = new PassThrough();
  const err = new PassThrough();
  let o = '';
  let e = '';
  out.on('data', (d) => (o += d));
  err.on('data', (d) => (e += d));
  const code = await main(argv, out, err);
  return { code, out: o, err: e };
}

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cli-'));
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

describe('vfio-pci CLI', () => {
  it('info --json has the documented shape', async () => {
    const r = await run('info', 'sim:1MiB#cli-info', '--json');
    expect(r.code).toBe(0);
    const j = JSON.parse(r.out);
    expect(j.migration).toEqual({ flags: ['STOP_COPY', 'P2P', 'PRE_COPY'], state: 'RUNNING', dataSize: expect.any(Number) });
    expect(j.regions.find((x: { name: string }) => x.name === 'CONFIG')).toMatchObject({ index: 7, offset: 7 * 2 ** 40 });
    expect(j.irqs.map((i: { name: string }) => i.name)).toEqual(['INTX', 'MSI', 'MSIX', 'ERR', 'REQ']);
  });

  it('info on a non-migratable device says so', async () => {
    const r = await run('info', 'sim:mig=off#cli-nomig');
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/migration: not supported/);
  });

  it('snapshot then restore in the same format, with arcs printed; inspect --json lists it', async () => {
    const file = path.join(dir, 'a.vfiosnap');
    const s = await run('snapshot', 'sim:64KiB#cli-a', '-o', file);
    expect(s.code).toBe(0);
    expect(s.out).toMatch(/RUNNING → STOP {2}\[RUNNING→RUNNING_P2P, RUNNING_P2P→STOP\]/);
    expect(s.out).toMatch(/STOP → RUNNING/);
    const r = await run('restore', 'sim:64KiB#cli-b', '-i', file);
    expect(r.code, r.err).toBe(0);
    expect(r.out).toMatch(/now RUNNING/);
    const i = await run('inspect', file, '--json');
    expect(i.code).toBe(0);
    const j = JSON.parse(i.out);
    expect(j.ok).toBe(true);
    expect(j.devices).toHaveLength(1);
    expect(j.sections.map((x: { type: string }) => x.type)).toEqual(['DEVICE', 'CONFIG', 'DEVICE_STATE']);
  });

  it('restore of a file of another format version is refused with a clear message and exit 1', async () => {
    const file = path.join(dir, 'v.vfiosnap');
    expect((await run('snapshot', 'sim:4KiB#cli-v', '-o', file, '-q')).code).toBe(0);
    const b = fs.readFileSync(file);
    b.writeUInt16LE(3, 8);
    b.writeUInt32LE(zlib.crc32(b.subarray(0, 28)) >>> 0, 28);
    fs.writeFileSync(file, b);
    const r = await run('restore', 'sim:4KiB#cli-w', '-i', file);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/format version 3 is not supported .*newer node-vfio-pci/);
    expect(r.err).toMatch(/code: EVFIO_SNAPSHOT_VERSION/);
  });

  it('usage errors exit 2', async () => {
    expect((await run()).code).toBe(2);
    expect((await run('frobnicate')).code).toBe(2);
    expect((await run('snapshot', 'sim')).code).toBe(2);
    expect((await run('info', 'sim', '--iommu', 'magic')).code).toBe(2);
    expect((await run('info', 'nonsense-device')).code).toBe(2);
  });

  it('demo runs the whole cycle on the device model', async () => {
    const r = await run('demo', '--size', '1MiB');
    expect(r.code, r.err).toBe(0);
    expect(r.out).toMatch(/RUNNING → RESUMING {2}\[RUNNING→RUNNING_P2P, RUNNING_P2P→STOP, STOP→RESUMING\]/);
    expect(r.out).toMatch(/PCI_COMMAND 0x6 pushed, MSIX re-armed/);
    expect(r.out).toMatch(/done: destination registers match/);
  });
});

import { describe, it, expect } from 'vitest';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import { SnapshotWriter } from '../../src/snapshot/writer';
import { SnapshotReader, type ReaderBinding } from '../../src/snapshot/reader';
import { loadBinding } from '../../src/kernel/binding';
import * as f from '../../src/snapshot/format';
import { inspectSnapshot } from '../../src/snapshot/inspect';
import type { VfioError } from '../../src/base/errors';
import { jsChecksum } from '../../src/kernel/pump/checksum';
import { SimBinding } from '../../src/sim';
import { openSimDevice } from '../../src/sim/provider';
import { restoreSnapshot } from '../../src/vm/jobs';
import { rejection } from '../helpers/errors';
import { useTempDir } from '../helpers/temp-dir';

const crc32c = (b: Buffer) => jsChecksum.crc32c(b);
/** A snapshot of format version 1 (CRC-32), written by the version 1 writer: test/fixtures/README.md. */
const V1_FIXTURE = path.join(__dirname, '../fixtures/snapshot-v1.vfiosnap');

const tmp = useTempDir('snapfmt', { each: true });

function config(vendor = 0x1b36, device = 0x0010): Buffer {
  const c = Buffer.alloc(256);
  c.writeUInt16LE(vendor, 0);
  c.writeUInt16LE(device, 2);
  c[8] = 0x02; // revision
  c[9] = 0x01; c[10] = 0x80; c[11] = 0xff; // class ff8001
  c.writeUInt16LE(0x1af4, 0x2c);
  c.writeUInt16LE(0x1100, 0x2e);
  return c;
}

async function writeSample(file: string, stream: Buffer[], devices = 1): Promise<void> {
  const w = await SnapshotWriter.create(file, { noSync: true, created: 1_700_000_000_000 });
  for (let i = 0; i < devices; i++) {
    const cfg = config(0x1b36, 0x10 + i);
    await w.writeSection(f.SectionType.DEVICE, i, f.encodeDeviceRecord({ identity: f.identityFromConfig(cfg), migrationFlags: 7, name: `dev${i}` }));
    await w.writeSection(f.SectionType.CONFIG, i, cfg);
    await w.beginSection(f.SectionType.DEVICE_STATE, i);
    for (const c of stream) await w.writeChunk(c);
    await w.endSection();
  }
  await w.commit();
}

async function readStream(r: SnapshotReader, index = 0): Promise<Buffer> {
  const d = r.devices().find((x) => x.index === index)!;
  const parts: Buffer[] = [];
  for await (const c of r.chunks(d.state!, Buffer.alloc(7))) parts.push(Buffer.from(c));
  return Buffer.concat(parts);
}

/** The VfioError of opening `file` and reading its first device's state (the reader closed either way). */
async function openErr(file: string): Promise<VfioError> {
  let r: SnapshotReader | undefined;
  try {
    return await rejection(async () => {
      r = await SnapshotReader.open(file);
      await readStream(r);
    });
  } finally {
    await r?.close();
  }
}

describe('snapshot format v2', () => {
  it('round-trips devices, config space and a chunked state stream', async () => {
    const file = tmp.file('s.snap');
    const chunks = [Buffer.from('hello '), Buffer.alloc(100_000, 0xab), Buffer.from('world')];
    await writeSample(file, chunks, 2);
    const r = await SnapshotReader.open(file);
    expect(r.header).toEqual({ version: 2, created: 1_700_000_000_000, flags: 0, checksum: 'crc32c' });
    const devs = r.devices();
    expect(devs.map((d) => d.record.name)).toEqual(['dev0', 'dev1']);
    expect(devs[1].record.identity).toMatchObject({ vendorId: 0x1b36, deviceId: 0x11, revision: 2, classCode: 0xff8001, subsystemVendorId: 0x1af4, subsystemId: 0x1100 });
    expect(devs[0].config.equals(config(0x1b36, 0x10))).toBe(true);
    expect(devs[0].state!.chunks).toEqual({ count: 3, total: 100_011 });
    expect((await readStream(r, 1)).equals(Buffer.concat(chunks))).toBe(true);
    await r.close();
  });

  it('lays the file header out as documented (magic, version 2, LE mark, algorithm, CRC-32C)', async () => {
    const file = tmp.file('h.snap');
    await writeSample(file, [Buffer.from('x')]);
    const b = fs.readFileSync(file);
    expect(b.subarray(0, 8).toString('latin1')).toBe('VFIOSNAP');
    expect([b[8], b[9], b[10], b[11]]).toEqual([2, 0, 0xff, 0xfe]);
    expect(b.readUInt32LE(12)).toBe(32);
    expect(b.readUInt16LE(24)).toBe(2); // CRC-32C
    expect(b.readUInt16LE(26)).toBe(0);
    expect(b.readUInt32LE(28)).toBe(crc32c(b.subarray(0, 28)));
    // Every other checksum is the file's algorithm: the first section header's own, here.
    expect(b.readUInt32LE(32 + 28)).toBe(crc32c(b.subarray(32, 32 + 28)));
    // the END section is the last 48 bytes and points at itself
    const endAt = b.length - 48;
    expect(b.readUInt32LE(endAt)).toBe(0);
    expect(Number(b.readBigUInt64LE(endAt + 32))).toBe(endAt);
  });

  it('leaves no file behind when aborted, and never a temporary one', async () => {
    const file = tmp.file('a.snap');
    const w = await SnapshotWriter.create(file, { noSync: true });
    await w.beginSection(f.SectionType.DEVICE_STATE, 0);
    await w.writeChunk(Buffer.alloc(10));
    await w.abort();
    expect(fs.readdirSync(tmp.path)).toEqual([]);
  });

  it('does not replace an existing file until commit', async () => {
    const file = tmp.file('keep.snap');
    fs.writeFileSync(file, 'old');
    const w = await SnapshotWriter.create(file, { noSync: true });
    await w.writeSection(f.SectionType.CONFIG, 0, Buffer.alloc(64));
    expect(fs.readFileSync(file, 'utf8')).toBe('old');
    await w.abort();
    expect(fs.readFileSync(file, 'utf8')).toBe('old');
  });

  it('refuses a bad magic, another version, a big-endian mark, and a bad header crc', async () => {
    const file = tmp.file('v.snap');
    await writeSample(file, [Buffer.from('abc')]);
    const orig = fs.readFileSync(file);
    const patch = (fn: (b: Buffer) => void, fixCrc = true): void => {
      const b = Buffer.from(orig);
      fn(b);
      if (fixCrc) b.writeUInt32LE(crc32c(b.subarray(0, 28)), 28);
      fs.writeFileSync(file, b);
    };
    patch((b) => b.write('NOTASNAP', 0, 'latin1'));
    expect((await openErr(file)).message).toMatch(/bad magic/);
    // The version is judged before the header's checksum: another version may check it otherwise.
    patch((b) => b.writeUInt16LE(3, 8), false);
    const v3 = await openErr(file);
    expect(v3.code).toBe('EVFIO_SNAPSHOT_VERSION');
    expect(v3.message).toMatch(/version 3 is not supported \(this library reads versions 1 and 2\); .*newer node-vfio-pci/);
    patch((b) => b.writeUInt16LE(0, 8));
    expect((await openErr(file)).message).toMatch(/version 0 is not supported .*predates the first released format/);
    // A version 2 header checked with CRC-32 (version 1's) is damaged.
    patch((b) => b.writeUInt32LE(zlib.crc32(b.subarray(0, 28)) >>> 0, 28), false);
    expect((await openErr(file)).message).toMatch(/header checksum/);
    patch((b) => b.writeUInt16BE(0xfeff, 10));
    expect((await openErr(file)).message).toMatch(/byte-order mark/);
    patch((b) => (b[20] ^= 1), false);
    expect((await openErr(file)).message).toMatch(/header checksum/);
  });

  it('refuses a checksum algorithm it does not know, with its own code, only when the header is intact', async () => {
    const file = tmp.file('alg.snap');
    await writeSample(file, [Buffer.from('abc')]);
    const orig = fs.readFileSync(file);
    for (const id of [0, 3, 0xffff]) {
      const b = Buffer.from(orig);
      b.writeUInt16LE(id, 24);
      b.writeUInt32LE(crc32c(b.subarray(0, 28)), 28);
      fs.writeFileSync(file, b);
      const e = await openErr(file);
      expect({ code: e.code, kind: e.kind }).toEqual({ code: 'EVFIO_SNAPSHOT_ALGORITHM', kind: 'format' });
      expect(e.message).toContain(`checksum algorithm ${id} is not supported`);
      expect(e.message).toMatch(/1 CRC-32 .*, 2 CRC-32C/);
      // The same field damaged without the header checksum following: a damaged header.
      b.writeUInt32LE(orig.readUInt32LE(28), 28);
      fs.writeFileSync(file, b);
      expect((await openErr(file)).message).toMatch(/header checksum/);
    }
  });

  it("writes CRC-32 files too when asked ('crc32', algorithm 1), which read back alike", async () => {
    const file = tmp.file('crc32.snap');
    const w = await SnapshotWriter.create(file, { noSync: true, checksum: 'crc32' });
    await w.beginSection(f.SectionType.DEVICE_STATE, 0);
    await w.writeChunk(Buffer.from('payload'));
    await w.endSection();
    await w.commit();
    const b = fs.readFileSync(file);
    expect(b.readUInt16LE(24)).toBe(1);
    expect(b.readUInt32LE(28)).toBe(crc32c(b.subarray(0, 28))); // the version 2 header's own: always CRC-32C
    const r = await SnapshotReader.open(file);
    expect(r.checksum).toBe('crc32');
    const chunk = r.sections[0].bodyAt;
    expect(b.readUInt32LE(chunk + 4)).toBe(zlib.crc32(Buffer.from('payload')) >>> 0);
    await r.close();
  });

  describe('version 1 files (CRC-32), as the version 1 writer made them', () => {
    it('validate, inspect, and stream their state, every CRC-32 checked', async () => {
      const r = await SnapshotReader.open(V1_FIXTURE);
      try {
        expect(r.header).toMatchObject({ version: 1, flags: 0, checksum: 'crc32' });
        const [d] = r.devices();
        expect(d.record.name).toBe('sim:10000:seed=4242#v1fixture');
        expect(d.state!.chunks).toEqual({ count: 3, total: 10360 });
        const parts: Buffer[] = [];
        for await (const c of r.chunks(d.state!)) parts.push(Buffer.from(c));
        expect(Buffer.concat(parts).length).toBe(10360);
      } finally {
        await r.close();
      }
      const i = await inspectSnapshot(V1_FIXTURE);
      expect({ ok: i.ok, version: i.version, checksum: i.checksum }).toEqual({ ok: true, version: 1, checksum: 'crc32' });
    });

    for (const [how, inner] of [
      ['the native pump', () => loadBinding('native')],
      ['the JS pump (koffi)', () => loadBinding('koffi')],
    ] as const) {
      it(`restore into a device through ${how}, and a damaged one is refused`, async () => {
        const sim = new SimBinding(inner());
        const dev = openSimDevice('sim:10000#v1into', sim);
        try {
          expect((await restoreSnapshot(dev, V1_FIXTURE)).devices.map((d) => d.stateBytes)).toEqual([10360]);
          expect(sim.device('v1into').seed).toBe(4242n);
        } finally {
          dev.close();
        }
        // One bit flipped in the last chunk's payload: its CRC-32 no longer holds.
        const bad = tmp.file('v1-bad.vfiosnap');
        const b = fs.readFileSync(V1_FIXTURE);
        b[b.length - 48 - 16 - 10] ^= 0x20;
        fs.writeFileSync(bad, b);
        const dev2 = openSimDevice('sim:10000#v1bad', sim);
        try {
          expect(await rejection(restoreSnapshot(dev2, bad))).toMatchObject({ code: 'EVFIO_SNAPSHOT_CHECKSUM', kind: 'format' });
        } finally {
          dev2.close();
        }
      });
    }
  });

  it('detects every truncation with a typed error', async () => {
    const file = tmp.file('t.snap');
    await writeSample(file, [Buffer.alloc(300, 1), Buffer.alloc(200, 2)]);
    const orig = fs.readFileSync(file);
    for (let len = 0; len < orig.length; len += 7) {
      fs.writeFileSync(file, orig.subarray(0, len));
      const e = await openErr(file);
      expect(e.kind).toBe('format');
      expect(['EVFIO_SNAPSHOT_TRUNCATED', 'EVFIO_BAD_SNAPSHOT']).toContain(e.code);
    }
  });

  it('reports a file it cannot open or read as a syscall error naming the file, with fs or with the addon, and refuses what is not a regular file', async () => {
    const bindings: Array<[string, ReaderBinding | undefined]> = [['fs', undefined]];
    try {
      bindings.push(['addon', loadBinding('native')]);
    } catch {
      // no addon here: the fs path alone
    }
    for (const [how, binding] of bindings) {
      const missing = await rejection(SnapshotReader.open(tmp.file('missing.snap'), { binding }));
      expect(missing, how).toMatchObject({ code: 'ENOENT', kind: 'syscall', syscall: 'open', path: tmp.file('missing.snap'), step: 'snapshot:open' });
      // A read that fails (the fd closed under the reader): the same words through fs and the addon.
      const file = tmp.file(`readable-${how}.snap`);
      await writeSample(file, [Buffer.alloc(300, 1), Buffer.alloc(200, 2)]);
      const r = await SnapshotReader.open(file, { binding });
      const state = r.devices()[0].state!;
      fs.closeSync(r.fd!);
      const failed = await rejection(async () => {
        for await (const _ of r.chunkHeaders(state)) void _;
      });
      await r.close();
      expect(failed, how).toMatchObject({ code: 'EBADF', kind: 'syscall', path: file });
      expect(failed.message, how).toBe(`reading snapshot ${file} at offset ${state.bodyAt} failed: EBADF`);
      // Not a regular file: refused at once. A FIFO with no writer must not block the open (and the event loop).
      const fifo = tmp.file(`fifo-${how}`);
      execFileSync('mkfifo', [fifo]);
      for (const p of [fifo, tmp.path, '/dev/null']) {
        const e = await rejection(SnapshotReader.open(p, { binding }));
        expect(e, `${how} ${p}`).toMatchObject({ code: 'EVFIO_NOT_A_FILE', kind: 'usage', path: p, step: 'snapshot:open' });
      }
    }
  });

  it('detects a flipped bit anywhere in the file', async () => {
    const file = tmp.file('b.snap');
    await writeSample(file, [Buffer.alloc(64, 1), Buffer.alloc(64, 2)]);
    const orig = fs.readFileSync(file);
    for (let i = 0; i < orig.length; i++) {
      const b = Buffer.from(orig);
      b[i] ^= 0x10;
      fs.writeFileSync(file, b);
      const e = await openErr(file);
      expect(e.kind, `offset ${i}`).toBe('format');
    }
  });

  it('detects swapped chunks through the chunk table checksum', async () => {
    const file = tmp.file('swap.snap');
    await writeSample(file, [Buffer.alloc(16, 1), Buffer.alloc(16, 2)]);
    const b = fs.readFileSync(file);
    const first = b.indexOf(Buffer.alloc(16, 1));
    const second = b.indexOf(Buffer.alloc(16, 2));
    const c1 = Buffer.from(b.subarray(first - 8, first + 16));
    const c2 = Buffer.from(b.subarray(second - 8, second + 16));
    c2.copy(b, first - 8);
    c1.copy(b, second - 8);
    fs.writeFileSync(file, b);
    expect((await openErr(file)).code).toBe('EVFIO_SNAPSHOT_CHECKSUM');
  });

  it('skips unknown optional sections and refuses unknown required ones', async () => {
    const file = tmp.file('u.snap');
    const w = await SnapshotWriter.create(file, { noSync: true });
    const cfg = config();
    await w.writeSection(f.SectionType.DEVICE, 0, f.encodeDeviceRecord({ identity: f.identityFromConfig(cfg), migrationFlags: 1, name: 'd' }));
    await w.writeSection(f.SectionType.CONFIG, 0, cfg);
    await w.writeSection(99 as f.SectionType, 0, Buffer.from('future optional data'), false);
    await w.beginSection(f.SectionType.DEVICE_STATE, 0);
    await w.writeChunk(Buffer.from('state'));
    await w.endSection();
    await w.commit();
    const r = await SnapshotReader.open(file);
    expect(r.sections.find((s) => s.header.type === 99)?.unknown).toBe(true);
    expect((await readStream(r)).toString()).toBe('state');
    await r.close();

    const file2 = tmp.file('u2.snap');
    const w2 = await SnapshotWriter.create(file2, { noSync: true });
    await w2.writeSection(99 as f.SectionType, 0, Buffer.from('future required data'), true);
    await w2.commit();
    const e = await openErr(file2);
    expect(e.code).toBe('EVFIO_SNAPSHOT_UNSUPPORTED');
    expect(e.message).toMatch(/unknown type 99/);
  });

  it('inspect reports sections, devices and checksum status', async () => {
    const file = tmp.file('i.snap');
    await writeSample(file, [Buffer.alloc(1000, 3)], 2);
    const res = await inspectSnapshot(file);
    expect(res.ok).toBe(true);
    expect(res.devices.map((d) => [d.index, d.stateBytes, d.identity])).toEqual([
      [0, 1000, '1b36:0010 rev 02 class ff8001'],
      [1, 1000, '1b36:0011 rev 02 class ff8001'],
    ]);
    expect(res.sections.filter((s) => s.type === 'DEVICE_STATE').every((s) => s.checksum === 'ok')).toBe(true);
    const b = fs.readFileSync(file);
    b[b.indexOf(Buffer.alloc(1000, 3)) + 500] = 4;
    fs.writeFileSync(file, b);
    const bad = await inspectSnapshot(file);
    expect(bad.ok).toBe(false);
    expect(bad.error?.code).toBe('EVFIO_SNAPSHOT_CHECKSUM');
  });
});

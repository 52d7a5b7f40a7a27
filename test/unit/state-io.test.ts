/**
 * src/snapshot/state-io.ts with the data pump: a DEVICE_STATE section moves in pump calls
 * (`writeRecords` / `readRecords`) of at most `pumpCallBytes`, and gives the same file, the same
 * bytes and the same errors as the JS loops (`noPump`). Run on the native binding (the native
 * pump), koffi (the JS pump over libc) and the sim (the JS pump over a virtual data_fd), each
 * with one buffer and with two.
 */
import * as fs from 'node:fs';
import { beforeAll, describe, expect, it } from 'vitest';
import { KoffiBinding } from '../../src/kernel/binding/koffi';
import { NativeBinding } from '../../src/kernel/binding/native';
import { SimBinding } from '../../src/sim';
import type { Binding } from '../../src/kernel/binding/types';
import { pumpFor, type Pump } from '../../src/kernel/pump';
import { VfioError } from '../../src/base/errors';
import * as f from '../../src/snapshot/format';
import { SnapshotReader } from '../../src/snapshot/reader';
import { loadStateSection, saveStateSection, type StateIoOptions } from '../../src/snapshot/state-io';
import { SnapshotWriter } from '../../src/snapshot/writer';
import { MigState } from '../../src/kernel/uapi/vfio';
import { pattern } from '../helpers/bytes';
import { useTempDir } from '../helpers/temp-dir';
import { enterState } from '../helpers/uapi';

const { O_RDONLY, O_WRONLY, O_RDWR } = fs.constants;
const CREATED = 1_700_000_000_000;

const dir = useTempDir('state-io');
let serial = 0;
const tmp = (name: string) => dir.file(`${++serial}-${name}`);


interface PumpCall {
  method: 'copy' | 'writeRecords' | 'readRecords';
  opts: Record<string, unknown>;
}

/** The pump `binding` gets (pumpFor), with its calls recorded (options as given): pass it as `opts.pump`. */
function counting(binding: Binding): { pump: Pump; calls: PumpCall[] } {
  const calls: PumpCall[] = [];
  const pump: Pump = {
    get name() {
      return pumpFor(binding, []).name;
    },
    copy: (src, dst, bufs, opts) => {
      calls.push({ method: 'copy', opts: { ...opts } });
      return pumpFor(binding, [src, dst]).copy(src, dst, bufs, opts);
    },
    writeRecords: (src, dst, bufs, opts) => {
      calls.push({ method: 'writeRecords', opts: { ...opts } });
      return pumpFor(binding, [src, dst]).writeRecords(src, dst, bufs, opts);
    },
    readRecords: (src, dst, bufs, opts) => {
      calls.push({ method: 'readRecords', opts: { ...opts } });
      return pumpFor(binding, [src, dst]).readRecords(src, dst, bufs, opts);
    },
  };
  return { pump, calls };
}

/** A snapshot with one DEVICE_STATE section saved from `source` (an fd to read to its end). */
async function save(binding: Binding, source: number, opts: StateIoOptions): Promise<{ file: string; bytes: number; progress: number[] }> {
  const file = tmp('state.vfiosnap');
  const writer = await SnapshotWriter.create(file, { noSync: true, created: CREATED });
  const progress: number[] = [];
  try {
    await writer.beginSection(f.SectionType.DEVICE_STATE, 0);
    const { bytes } = await saveStateSection(binding, source, writer, { ...opts, onProgress: (n) => progress.push(n) });
    expect(await writer.endSection()).toMatchObject({ bytes });
    await writer.commit();
    return { file, bytes, progress };
  } catch (e) {
    await writer.abort();
    throw e;
  }
}

/** A snapshot whose DEVICE_STATE section has chunks with these payloads, written by the JS writer. */
async function snapshotOf(payloads: Buffer[]): Promise<string> {
  const file = tmp('made.vfiosnap');
  const writer = await SnapshotWriter.create(file, { noSync: true, created: CREATED });
  await writer.beginSection(f.SectionType.DEVICE_STATE, 0);
  for (const p of payloads) await writer.writeChunk(p);
  await writer.endSection();
  await writer.commit();
  return file;
}

/** Load `file`'s DEVICE_STATE section into a new file; its bytes, the progress and the outcome. */
async function load(binding: Binding, file: string, opts: StateIoOptions, change?: (file: string, entry: ReturnType<SnapshotReader['devices']>[0]['state'] & object) => void) {
  const reader = await SnapshotReader.open(file);
  const out = tmp('loaded.bin');
  fs.writeFileSync(out, '');
  const fd = binding.open(out, O_WRONLY);
  const progress: number[] = [];
  try {
    const entry = reader.sections.find((e) => e.header.type === f.SectionType.DEVICE_STATE)!;
    change?.(file, entry);
    let error: VfioError | undefined;
    try {
      const { bytes } = await loadStateSection(binding, reader, entry, fd, { ...opts, onProgress: (n) => progress.push(n) });
      expect(bytes).toBe(fs.statSync(out).size);
    } catch (e) {
      if (!(e instanceof VfioError)) throw e;
      error = e;
    }
    return { data: fs.readFileSync(out), progress, error };
  } finally {
    binding.close(fd);
    await reader.close();
  }
}

const bindings: Array<[string, () => Binding, boolean]> = [
  ['native', () => new NativeBinding(), false],
  ['native', () => new NativeBinding(), true],
  ['koffi', () => new KoffiBinding(), false],
  ['koffi', () => new KoffiBinding(), true],
];

for (const [name, make, overlap] of bindings) {
  describe(`state-io with the ${name} pump, ${overlap ? 'two buffers' : 'one buffer'}`, () => {
    let b: Binding;
    beforeAll(() => {
      b = make();
    });
    /** `save` and `load` of this describe: its buffers. */
    const saveHere = (binding: Binding, source: number, opts: StateIoOptions) => save(binding, source, { overlap, ...opts });
    const loadHere = (binding: Binding, file: string, opts: StateIoOptions, change?: Parameters<typeof load>[3]) => load(binding, file, { overlap, ...opts }, change);

    it('save: framed calls of at most pumpCallBytes, progress after each, the same file as the JS loop', async () => {
      const data = pattern(100_000, 7);
      const src = tmp('src.bin');
      fs.writeFileSync(src, data);
      const { pump, calls } = counting(b);
      const fd = b.open(src, O_RDONLY);
      let pumped: Awaited<ReturnType<typeof save>>;
      try {
        pumped = await saveHere(b, fd, { bufferSize: 4096, pumpCallBytes: 5 * 4096 + 100, pump });
      } finally {
        b.close(fd);
      }
      expect(pumped.bytes).toBe(data.length);
      expect(calls.map((c) => [c.method, c.opts.limit, c.opts.recordSize])).toEqual(Array(5).fill(['writeRecords', 5 * 4096, 4096]));
      expect(pumped.progress).toEqual([20480, 40960, 61440, 81920, 100_000]);
      const fd2 = b.open(src, O_RDONLY);
      let js: Awaited<ReturnType<typeof save>>;
      try {
        js = await saveHere(b, fd2, { bufferSize: 4096, noPump: true });
      } finally {
        b.close(fd2);
      }
      expect(fs.readFileSync(pumped.file).equals(fs.readFileSync(js.file))).toBe(true);
      // ... which the reader validates (skeleton and chunk-table crcs included).
      const r = await SnapshotReader.open(pumped.file);
      expect(r.sections[0].chunks).toEqual({ count: 25, total: data.length });
      await r.close();
    });

    it('save: an empty source makes a section with no chunk (only the end chunk)', async () => {
      const src = tmp('empty.bin');
      fs.writeFileSync(src, '');
      const fd = b.open(src, O_RDONLY);
      try {
        const { file, bytes, progress } = await saveHere(b, fd, { bufferSize: 4096 });
        expect({ bytes, progress }).toEqual({ bytes: 0, progress: [] });
        const r = await SnapshotReader.open(file);
        expect(r.sections[0].chunks).toEqual({ count: 0, total: 0 });
        expect((await loadHere(b, file, {})).data.length).toBe(0);
        await r.close();
      } finally {
        b.close(fd);
      }
    });

    it('load: framed calls of whole chunks, sized by the first chunk; the same bytes as the JS loop', async () => {
      const data = pattern(70_000, 8);
      const src = tmp('src.bin');
      fs.writeFileSync(src, data);
      const fd = b.open(src, O_RDONLY);
      let file: string;
      try {
        file = (await saveHere(b, fd, { bufferSize: 8192 })).file;
      } finally {
        b.close(fd);
      }
      const { pump, calls } = counting(b);
      // A buffer smaller than the file's chunks: the first chunk's length sizes it.
      const got = await loadHere(b, file, { bufferSize: 1000, pumpCallBytes: 3 * 8192, pump });
      expect(got.error).toBeUndefined();
      expect(got.data.equals(data)).toBe(true);
      expect(calls.map((c) => [c.method, c.opts.records])).toEqual([
        ['readRecords', 3],
        ['readRecords', 3],
        ['readRecords', 3],
      ]);
      expect(got.progress).toEqual([24576, 49152, 70_000]);
      expect((await loadHere(b, file, { noPump: true })).data.equals(data)).toBe(true);
    });

    it('load: a chunk longer than the first (another writer) falls back to chunk-by-chunk calls and restores', async () => {
      const payloads = [pattern(100, 1), pattern(300, 2), pattern(5000, 3), pattern(20, 4)];
      const file = await snapshotOf(payloads);
      const { pump, calls } = counting(b);
      const got = await loadHere(b, file, { bufferSize: 64, pump });
      expect(got.error).toBeUndefined();
      expect(got.data.equals(Buffer.concat(payloads))).toBe(true);
      // The records call stopped before chunk 1 (300 > the buffer sized by the 100-byte first
      // chunk); the rest went one by one.
      expect(calls.map((c) => (c.method === 'readRecords' ? 'records' : c.opts.limit))).toEqual(['records', 300, 5000, 20]);
      expect(got.progress).toEqual([100, 400, 5400, 5420]);
    });

    describe('load: the errors of the JS loop (the reader\'s) for a file changed after it was validated', () => {
      const payloads = [pattern(4096, 11), pattern(4096, 12), pattern(4096, 13), pattern(4096, 14), pattern(1000, 15)];
      /** File offset of chunk i's header. */
      const chunkAt = (entry: { bodyAt: number }, i: number) => entry.bodyAt + i * (f.CHUNK_HEADER_SIZE + 4096);
      const edit = (file: string, at: number, bytes: Buffer) => {
        const fd = fs.openSync(file, 'r+');
        fs.writeSync(fd, bytes, 0, bytes.length, at);
        fs.closeSync(fd);
      };
      const cases: Array<[string, (file: string, entry: { bodyAt: number }) => void, { code: string; sameMessage: boolean; progress: number[] }]> = [
        [
          'a flipped bit in chunk 2',
          (file, e) => {
            const at = chunkAt(e, 2) + f.CHUNK_HEADER_SIZE + 99;
            edit(file, at, Buffer.from([fs.readFileSync(file)[at] ^ 4]));
          },
          { code: 'EVFIO_SNAPSHOT_CHECKSUM', sameMessage: false, progress: [4096, 8192] },
        ],
        [
          'chunk 1 rewritten with a matching crc: only the chunk table tells',
          (file, e) => {
            const payload = Buffer.from(payloads[1]);
            payload[7] ^= 1;
            const head = Buffer.alloc(8);
            head.writeUInt32LE(payload.length, 0);
            head.writeUInt32LE(f.sum('crc32c', payload), 4);
            edit(file, chunkAt(e, 1), Buffer.concat([head, payload]));
          },
          { code: 'EVFIO_SNAPSHOT_CHECKSUM', sameMessage: true, progress: [4096, 8192, 12288, 16384, 17384] },
        ],
        [
          'chunk 3 claiming more than 16 MiB',
          (file, e) => edit(file, chunkAt(e, 3), Buffer.from([0, 0, 0, 2])),
          { code: 'EVFIO_SNAPSHOT_CHECKSUM', sameMessage: true, progress: [4096, 8192, 12288] },
        ],
        [
          'an end chunk that is not one any more',
          (file, e) => edit(file, chunkAt(e, 4) + f.CHUNK_HEADER_SIZE + 1000, Buffer.from([1])),
          { code: 'EVFIO_SNAPSHOT_CHECKSUM', sameMessage: true, progress: [4096, 8192, 12288, 16384, 17384] },
        ],
        [
          'a file cut inside chunk 3',
          (file, e) => fs.truncateSync(file, chunkAt(e, 3) + 100),
          { code: 'EVFIO_SNAPSHOT_TRUNCATED', sameMessage: false, progress: [4096, 8192, 12288] },
        ],
      ];
      for (const [what, change, want] of cases) {
        it(what, async () => {
          const pristine = await snapshotOf(payloads);
          // Both runs read a copy under the same name: the messages name the file.
          const name = tmp('changed.vfiosnap');
          const copy = () => {
            fs.copyFileSync(pristine, name);
            return name;
          };
          const pumped = await loadHere(b, copy(), { bufferSize: 4096 }, change);
          const js = await loadHere(b, copy(), { bufferSize: 4096, noPump: true }, change);
          for (const r of [pumped, js]) {
            expect(r.error, 'an error').toBeInstanceOf(VfioError);
            expect({ code: r.error!.code, kind: r.error!.kind }).toEqual({ code: want.code, kind: 'format' });
            // Only whole chunks that were checked reached the destination, and the last progress
            // event says how much (the JS loop reports each chunk, the pump each call).
            expect(r.progress.at(-1)).toBe(want.progress.at(-1));
            expect(r.data.length).toBe(want.progress.at(-1) ?? 0);
          }
          expect(js.progress).toEqual(want.progress);
          expect(pumped.data.equals(js.data)).toBe(true);
          if (want.sameMessage) expect(pumped.error!.message).toBe(js.error!.message);
        });
      }
    });
  });
}

describe('state-io on the sim (the JS pump over a virtual data_fd)', () => {
  it('saves a STOP_COPY stream in records calls and restores it into a RESUMING device; the pump is the JS one', async () => {
    const sim = new SimBinding(new NativeBinding());
    sim.createDevice('src', { size: 50_000, seed: 0x51n });
    sim.createDevice('dst', { size: 50_000, seed: 0x99n });
    const src = sim.open('sim#src', O_RDWR);
    const dst = sim.open('sim#dst', O_RDWR);
    const { pump, calls } = counting(sim);
    try {
      const out = enterState(sim, src, MigState.STOP_COPY);
      expect(pumpFor(sim, [out, 3]).name).toBe('js');
      let saved: Awaited<ReturnType<typeof save>>;
      try {
        saved = await save(sim, out, { bufferSize: 4096, pumpCallBytes: 16_384, pump });
      } finally {
        sim.close(out);
      }
      expect(saved.bytes).toBe(sim.device('src').streamLength);
      expect(calls.every((c) => c.method === 'writeRecords' && c.opts.limit === 16_384)).toBe(true);
      expect(calls.length).toBe(Math.ceil(saved.bytes / 16_384) + (saved.bytes % 16_384 === 0 ? 1 : 0));
      calls.length = 0;
      const reader = await SnapshotReader.open(saved.file);
      const into = enterState(sim, dst, MigState.RESUMING);
      try {
        const entry = reader.sections[0];
        const progress: number[] = [];
        expect(await loadStateSection(sim, reader, entry, into, { bufferSize: 4096, pumpCallBytes: 16_384, onProgress: (n) => progress.push(n), pump })).toEqual({ bytes: saved.bytes });
        expect(calls.every((c) => c.method === 'readRecords')).toBe(true);
        expect(progress.at(-1)).toBe(saved.bytes);
      } finally {
        sim.close(into);
        await reader.close();
      }
      expect(enterState(sim, dst, MigState.RUNNING)).toBe(-1);
      expect(sim.device('dst').seed).toBe(0x51n);
    } finally {
      sim.close(src);
      sim.close(dst);
    }
  });
});

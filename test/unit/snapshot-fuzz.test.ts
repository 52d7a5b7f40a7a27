/**
 * Issue 4, "nothing lost": seeded, reproducible fuzzing of snapshot restore. Valid snapshot
 * files are made from simulated devices, then mutated (raw byte damage, and structural changes
 * re-sealed with valid checksums so that they get past the container's checks and reach the
 * reader's logic or the device). Every case opens the mutant from memory and restores it into a
 * fresh simulated device, and must end in one of:
 *  - a VfioError of kind format / mismatch / syscall / protocol, the device RUNNING (reset if it
 *    was touched, untouched otherwise), no data_fd left open;
 *  - a successful restore whose device state (data seed, migrated registers) is the source's.
 * Never a crash (any other exception), a hang (per-case deadline), a runaway loop (a cap on
 * binding calls per case), or a device outside RUNNING.
 *
 * Environment: FUZZ_CASES (default 100000), FUZZ_SEED (default below), FUZZ_ONLY=N runs case N
 * alone and prints what it did. A failure names the seed and case to reproduce it.
 */
import { describe, expect, it, beforeAll } from 'vitest';
import * as fs from 'node:fs';
import { SimBinding, simStream, type SimDevice, type SimDeviceOptions } from '../../src/sim';
import type { Binding } from '../../src/kernel/binding/types';
import { openDevice } from '../../src/kernel/open';
import { VfioError, type VfioErrorKind } from '../../src/base/errors';
import * as f from '../../src/snapshot/format';
import { CHECKSUM_IDS, checksumById } from '../../src/kernel/pump/checksum';
import { SnapshotReader, type SnapshotSource } from '../../src/snapshot/reader';
import { restoreSnapshot, saveSnapshot } from '../../src/vm/jobs';
import { MigState } from '../../src/kernel/uapi/vfio';
import { realBinding } from '../helpers/binding';
import { Rng, mix32 } from '../helpers/rng';
import { useTempDir } from '../helpers/temp-dir';

const CASES = Number(process.env.FUZZ_CASES ?? 100_000);
const SEED = Number(process.env.FUZZ_SEED ?? 0x5eed4) >>> 0;
const ONLY = process.env.FUZZ_ONLY !== undefined ? Number(process.env.FUZZ_ONLY) : undefined;
/** Binding calls one restore may make (the biggest valid case needs a few dozen). */
const CALL_CAP = 5_000;
/** Positional reads of the snapshot one case may make (a valid file needs a few dozen). */
const READ_CAP = 20_000;
/** Every this many cases, the mutant is also validated from a file, which must give the same verdict. */
const FILE_CHECK_EVERY = 97;
/** Wall-clock limit of one case. */
const CASE_DEADLINE_MS = 5_000;
const ALLOWED_KINDS = new Set<VfioErrorKind>(['format', 'mismatch', 'syscall', 'protocol']);

// ------------------------------------------------------------------ the file as a model
interface MChunk {
  data: Buffer;
  /** Length field as written, when it lies about `data`. */
  len?: number;
  /** crc32 field as written, when wrong. */
  crc?: number;
}
interface MSection {
  type: number;
  flags: number;
  device: number;
  /** Plain body. */
  body?: Buffer;
  /** Chunked body. */
  chunks?: MChunk[];
  /** Overrides of header fields (plain length and crc, reserved u32 at 20). */
  length?: number;
  bodyCrc?: number;
  reserved?: number;
  /** Overrides of the end chunk. */
  endTable?: number;
  endTotal?: number;
  endMarker?: number;
}
interface Model {
  created: number;
  version: number;
  /** Checksum algorithm id of the header (CHECKSUM_IDS); every checksum is sealed with it (CRC-32C when unknown). */
  algorithm: number;
  mark: number;
  headerLen: number;
  flags: number;
  sections: MSection[];
  noEnd?: boolean;
  endOffset?: number;
  endSkeleton?: number;
  endSections?: number;
  endType?: number;
  trailing?: Buffer;
}
interface Layout {
  /** [start, end) of every chunk payload. */
  payloads: Array<[number, number]>;
  /** File offsets of chunk headers. */
  chunkHeaders: number[];
  sectionHeaders: number[];
}

/** Serialise a model, computing every checksum the model does not override. */
function seal(m: Model): { buf: Buffer; layout: Layout } {
  const parts: Buffer[] = [];
  const layout: Layout = { payloads: [], chunkHeaders: [], sectionHeaders: [] };
  let pos = 0;
  let skeleton = 0;
  const alg = checksumById(m.algorithm) ?? 'crc32c';
  const crc = (b: Buffer, prev = 0): number => f.sum(alg, b, prev);
  const put = (b: Buffer, inSkeleton: boolean): void => {
    parts.push(b);
    pos += b.length;
    if (inSkeleton) skeleton = crc(b, skeleton);
  };
  const h = f.encodeFileHeader(m.created);
  h.writeUInt16LE(m.version, 8);
  h.writeUInt16LE(m.mark, 10);
  h.writeUInt32LE(m.headerLen >>> 0, 12);
  h.writeUInt16LE(m.algorithm, 24);
  h.writeUInt16LE(m.flags & 0xffff, 26);
  // The header's own checksum is CRC-32C in version 2 (CRC-32 in version 1).
  h.writeUInt32LE(f.sum(m.version === 1 ? 'crc32' : 'crc32c', h.subarray(0, 28)), 28);
  put(h, true);
  for (const s of m.sections) {
    layout.sectionHeaders.push(pos);
    const sh = f.encodeSectionHeader({
      type: s.type,
      flags: s.flags,
      device: s.device,
      length: s.chunks ? (s.length ?? 0) : (s.length ?? s.body!.length),
      crc: s.chunks ? (s.bodyCrc ?? 0) : (s.bodyCrc ?? crc(s.body!)),
    }, alg);
    if (s.reserved !== undefined) {
      sh.writeUInt32LE(s.reserved >>> 0, 20);
      sh.writeUInt32LE(crc(sh.subarray(0, 28)), 28);
    }
    put(sh, true);
    if (s.chunks) {
      let table = 0;
      let total = 0;
      for (const c of s.chunks) {
        const len = c.len ?? c.data.length;
        const ch = f.encodeChunkHeader(len, c.crc ?? crc(c.data));
        layout.chunkHeaders.push(pos);
        put(ch, true);
        table = crc(ch, table);
        total += len;
        layout.payloads.push([pos, pos + c.data.length]);
        put(c.data, false);
      }
      const end = f.encodeEndChunk(s.endTable ?? table, s.endTotal ?? total);
      if (s.endMarker !== undefined) end.writeUInt32LE(s.endMarker >>> 0, 0);
      put(end, true);
    } else {
      put(s.body!, true);
    }
  }
  if (!m.noEnd) {
    const body = f.encodeEndBody({ endOffset: m.endOffset ?? pos, skeletonCrc: m.endSkeleton ?? skeleton, sections: m.endSections ?? m.sections.length });
    put(f.encodeSectionHeader({ type: m.endType ?? f.SectionType.END, flags: f.SECTION_FLAG_REQUIRED, device: f.FILE_WIDE, length: body.length, crc: crc(body) }, alg), false);
    put(body, false);
  }
  if (m.trailing) put(m.trailing, false);
  return { buf: Buffer.concat(parts), layout };
}

/** The model of a valid file, read with the reader under test (the base files are valid). */
async function parse(buf: Buffer): Promise<Model> {
  const r = await SnapshotReader.fromBuffer(buf, 'base');
  const sections: MSection[] = [];
  for (const s of r.sections) {
    const { type, flags, device } = s.header;
    if (s.chunks) {
      const chunks: MChunk[] = [];
      for await (const c of r.chunks(s, Buffer.alloc(64))) chunks.push({ data: Buffer.from(c) });
      sections.push({ type, flags, device, chunks });
    } else {
      sections.push({ type, flags, device, body: Buffer.from(r.body(s)) });
    }
  }
  await r.close();
  return {
    created: r.header.created, version: r.header.version, algorithm: CHECKSUM_IDS[r.checksum], mark: f.ENDIAN_MARK, headerLen: f.FILE_HEADER_SIZE, flags: r.header.flags, sections,
  };
}

function cloneModel(m: Model): Model {
  return { ...m, sections: m.sections.map((s) => ({ ...s, chunks: s.chunks?.map((c) => ({ ...c })) })) };
}

// ------------------------------------------------------------------ mutations
/** One random edit of a byte string (never in place). */
function mutateBytes(rng: Rng, b: Buffer, within?: [number, number]): { out: Buffer; what: string } {
  const lo = Math.max(0, Math.min(within?.[0] ?? 0, b.length));
  const hi = Math.max(lo, Math.min(within?.[1] ?? b.length, b.length));
  const at = (): number => (hi > lo ? rng.range(lo, hi - 1) : lo);
  const out = Buffer.from(b);
  switch (rng.weighted([['flip', 4], ['set', 3], ['overwrite', 2], ['insert', 2], ['delete', 2], ['truncate', 2], ['dup', 1]] as const)) {
    case 'flip': {
      const n = rng.range(1, 4);
      const where: number[] = [];
      for (let i = 0; i < n && out.length; i++) {
        const p = at();
        out[p] ^= 1 << rng.int(8);
        where.push(p);
      }
      return { out, what: `flip@${where.join(',')}` };
    }
    case 'set': {
      if (!out.length) return { out, what: 'set(empty)' };
      const p = at();
      const v = rng.pick([0x00, 0xff, 0x7f, 0x80, 0x01, rng.int(256)]);
      out[p] = v;
      return { out, what: `set@${p}=${v}` };
    }
    case 'overwrite': {
      if (!out.length) return { out, what: 'overwrite(empty)' };
      const p = at();
      const n = Math.min(rng.range(1, 64), out.length - p);
      rng.bytes(n).copy(out, p);
      return { out, what: `overwrite@${p}+${n}` };
    }
    case 'insert': {
      const p = hi > lo ? rng.range(lo, hi) : lo;
      const n = rng.pick([1, 2, 4, 8, rng.range(1, 300)]);
      return { out: Buffer.concat([b.subarray(0, p), rng.bytes(n), b.subarray(p)]), what: `insert@${p}+${n}` };
    }
    case 'delete': {
      const p = at();
      const n = Math.min(rng.pick([1, 2, 4, 8, rng.range(1, 300)]), b.length - p);
      return { out: Buffer.concat([b.subarray(0, p), b.subarray(p + n)]), what: `delete@${p}+${n}` };
    }
    case 'truncate': {
      const p = hi > lo ? rng.range(lo, hi) : lo;
      return { out: Buffer.from(b.subarray(0, p)), what: `truncate@${p}` };
    }
    case 'dup': {
      const p = at();
      const n = Math.min(rng.range(1, 128), b.length - p);
      const q = hi > lo ? rng.range(lo, hi) : lo;
      const piece = b.subarray(p, p + n);
      return { out: Buffer.concat([b.subarray(0, q), piece, b.subarray(q)]), what: `dup@${p}+${n}->${q}` };
    }
  }
}

/** Split `data` into chunks of `size` (the last shorter). */
function split(data: Buffer, size: number): MChunk[] {
  const out: MChunk[] = [];
  for (let p = 0; p < data.length; p += size) out.push({ data: data.subarray(p, p + size) });
  return out;
}

const SIM_HEADER = simStream.HEADER_SIZE;
const SIM_TRAILER = simStream.TRAILER_SIZE;

type Structural =
  | 'payload' | 'chunk-crc' | 'chunk-len' | 'empty-chunk' | 'swap-chunks' | 'drop-chunk' | 'dup-chunk' | 'resegment' | 'end-chunk'
  | 'dup-section' | 'drop-section' | 'swap-sections' | 'section-type' | 'section-flags' | 'section-device' | 'section-reserved'
  | 'plain-length' | 'body' | 'add-unknown' | 'header' | 'end' | 'cross-device';

const STRUCTURAL: ReadonlyArray<readonly [Structural, number]> = [
  ['payload', 18], ['chunk-crc', 3], ['chunk-len', 3], ['empty-chunk', 1], ['swap-chunks', 2], ['drop-chunk', 2], ['dup-chunk', 2],
  ['resegment', 3], ['end-chunk', 1], ['dup-section', 2], ['drop-section', 2], ['swap-sections', 2], ['section-type', 2],
  ['section-flags', 3], ['section-device', 2], ['section-reserved', 1], ['plain-length', 1], ['body', 4], ['add-unknown', 2],
  ['header', 3], ['end', 2], ['cross-device', 2],
];

function stateSection(m: Model, rng: Rng): MSection | undefined {
  const xs = m.sections.filter((s) => s.chunks && s.chunks.length > 0);
  return xs.length ? rng.pick(xs) : undefined;
}

/** Apply one structural mutation; checksums are recomputed by seal() unless the mutation overrides them. */
function mutateStructure(rng: Rng, m: Model, kind: Structural): string {
  const secs = m.sections;
  switch (kind) {
    case 'payload': {
      // The device's own stream, damaged with valid snapshot checksums: only the device can tell.
      const s = stateSection(m, rng);
      if (!s) return 'payload(none)';
      const data = Buffer.concat(s.chunks!.map((c) => c.data));
      const region = rng.weighted([['header', 2], ['data', 3], ['trailer', 3], ['any', 1]] as const);
      const bounds: Record<typeof region, [number, number]> = {
        header: [0, SIM_HEADER],
        data: [SIM_HEADER, data.length - SIM_TRAILER],
        trailer: [data.length - SIM_TRAILER, data.length],
        any: [0, data.length],
      };
      const { out, what } = mutateBytes(rng, data, bounds[region]);
      s.chunks = split(out, s.chunks![0].data.length || 1);
      return `payload:${region}:${what}`;
    }
    case 'chunk-crc': {
      const s = stateSection(m, rng);
      if (!s) return 'chunk-crc(none)';
      const c = rng.pick(s.chunks!);
      c.crc = (f.sum('crc32c', c.data) ^ (1 << rng.int(32))) >>> 0;
      return 'chunk-crc';
    }
    case 'chunk-len': {
      const s = stateSection(m, rng);
      if (!s) return 'chunk-len(none)';
      const c = rng.pick(s.chunks!);
      c.len = rng.pick([c.data.length + 1, c.data.length - 1, c.data.length + 8, 0, 1, rng.u32(), f.MAX_CHUNK + 1, c.data.length * 2]) >>> 0;
      return `chunk-len=${c.len}`;
    }
    case 'empty-chunk': {
      const s = stateSection(m, rng);
      if (!s) return 'empty-chunk(none)';
      s.chunks!.splice(rng.int(s.chunks!.length + 1), 0, { data: Buffer.alloc(0) });
      return 'empty-chunk';
    }
    case 'swap-chunks': {
      const s = stateSection(m, rng);
      if (!s || s.chunks!.length < 2) return 'swap-chunks(none)';
      const i = rng.int(s.chunks!.length);
      const j = (i + 1 + rng.int(s.chunks!.length - 1)) % s.chunks!.length;
      [s.chunks![i], s.chunks![j]] = [s.chunks![j], s.chunks![i]];
      return `swap-chunks ${i}<->${j}`;
    }
    case 'drop-chunk': {
      const s = stateSection(m, rng);
      if (!s) return 'drop-chunk(none)';
      const i = rng.int(s.chunks!.length);
      s.chunks!.splice(i, 1);
      return `drop-chunk ${i}`;
    }
    case 'dup-chunk': {
      const s = stateSection(m, rng);
      if (!s) return 'dup-chunk(none)';
      const i = rng.int(s.chunks!.length);
      s.chunks!.splice(rng.int(s.chunks!.length + 1), 0, { ...s.chunks![i] });
      return `dup-chunk ${i}`;
    }
    case 'resegment': {
      // Same bytes, other chunk boundaries: a valid file.
      const s = stateSection(m, rng);
      if (!s) return 'resegment(none)';
      const data = Buffer.concat(s.chunks!.map((c) => c.data));
      const chunks: MChunk[] = [];
      for (let p = 0; p < data.length; ) {
        const n = Math.min(rng.pick([1, 7, 48, 100, 512, 4096, rng.range(1, 2000)]), data.length - p);
        chunks.push({ data: data.subarray(p, p + n) });
        p += n;
      }
      s.chunks = chunks;
      return `resegment into ${chunks.length}`;
    }
    case 'end-chunk': {
      const s = stateSection(m, rng);
      if (!s) return 'end-chunk(none)';
      const which = rng.int(3);
      if (which === 0) s.endTable = rng.u32();
      else if (which === 1) s.endTotal = rng.pick([0, 1, rng.u32(), 2 ** 40]);
      else s.endMarker = rng.pick([1, rng.u32()]);
      return `end-chunk field ${which}`;
    }
    case 'dup-section': {
      const i = rng.int(secs.length);
      secs.splice(rng.int(secs.length + 1), 0, { ...secs[i], chunks: secs[i].chunks?.map((c) => ({ ...c })) });
      return `dup-section ${i}`;
    }
    case 'drop-section': {
      const i = rng.int(secs.length);
      secs.splice(i, 1);
      return `drop-section ${i}`;
    }
    case 'swap-sections': {
      if (secs.length < 2) return 'swap-sections(none)';
      const i = rng.int(secs.length);
      const j = (i + 1 + rng.int(secs.length - 1)) % secs.length;
      [secs[i], secs[j]] = [secs[j], secs[i]];
      return `swap-sections ${i}<->${j}`;
    }
    case 'section-type': {
      const s = rng.pick(secs);
      s.type = rng.pick([0, 1, 2, 3, 4, 5, 99, 0xffff, rng.u32()]) >>> 0;
      return `section-type=${s.type}`;
    }
    case 'section-flags': {
      const s = rng.pick(secs);
      s.flags = rng.pick([
        s.flags ^ f.SECTION_FLAG_REQUIRED,
        s.flags ^ f.SECTION_FLAG_CHUNKED,
        s.flags | 0x4,
        (s.flags | 0x8000) & ~f.SECTION_FLAG_REQUIRED,
        rng.int(0x10000),
      ]);
      return `section-flags=0x${s.flags.toString(16)}`;
    }
    case 'section-device': {
      const s = rng.pick(secs);
      s.device = rng.pick([0, 1, 2, f.FILE_WIDE, rng.int(0x10000)]);
      return `section-device=${s.device}`;
    }
    case 'section-reserved': {
      rng.pick(secs).reserved = rng.pick([1, 0x80000000, rng.u32() | 1]);
      return 'section-reserved';
    }
    case 'plain-length': {
      const plain = secs.filter((s) => s.body);
      if (!plain.length) return 'plain-length(none)';
      const s = rng.pick(plain);
      s.length = rng.pick([s.body!.length + 1, s.body!.length - 1, 0, rng.u32(), 2 ** 40, f.MAX_PLAIN_BODY + 1]);
      if (s.length < 0) s.length = 0;
      return `plain-length=${s.length}`;
    }
    case 'body': {
      const plain = secs.filter((s) => s.body);
      if (!plain.length) return 'body(none)';
      const s = rng.pick(plain);
      const { out, what } = mutateBytes(rng, s.body!, s.type === f.SectionType.CONFIG ? [0, 64] : undefined);
      s.body = out;
      return `body(${f.sectionTypeName(s.type)}):${what}`;
    }
    case 'add-unknown': {
      const required = rng.chance(0.3);
      const chunked = rng.chance(0.4);
      const type = rng.pick([5, 99, 0x1234]);
      const flags = (required ? f.SECTION_FLAG_REQUIRED : 0) | (chunked ? f.SECTION_FLAG_CHUNKED : 0);
      const body = rng.bytes(rng.range(0, 100));
      secs.splice(rng.int(secs.length + 1), 0, chunked
        ? { type, flags, device: rng.pick([0, f.FILE_WIDE]), chunks: body.length ? split(body, 33) : [] }
        : { type, flags, device: rng.pick([0, f.FILE_WIDE]), body });
      return `add-unknown type ${type}${required ? ' required' : ''}${chunked ? ' chunked' : ''}`;
    }
    case 'header': {
      switch (rng.int(6)) {
        case 0:
          m.version = rng.pick([0, 1, 3, 0xffff, rng.int(0x10000)]);
          return `version=${m.version}`;
        case 1:
          m.flags = rng.pick([1, 0x8000, rng.int(0x10000)]);
          return `file-flags=0x${m.flags.toString(16)}`;
        case 5:
          // 1 (CRC-32) re-seals a valid file with the other algorithm; the rest are unknown.
          m.algorithm = rng.pick([0, 1, 3, 0xffff, rng.int(0x10000)]);
          return `algorithm=${m.algorithm}`;
        case 2:
          m.mark = rng.pick([0xfffe, 0, rng.int(0x10000)]);
          return `mark=0x${m.mark.toString(16)}`;
        case 3:
          m.headerLen = rng.pick([0, 31, 33, 64, rng.u32()]) >>> 0;
          return `header-len=${m.headerLen}`;
        default:
          m.created = rng.pick([0, 1, Number.MAX_SAFE_INTEGER, rng.u32()]);
          return `created=${m.created}`;
      }
    }
    case 'end': {
      switch (rng.int(6)) {
        case 0:
          m.noEnd = true;
          return 'no-end';
        case 1:
          m.endSections = rng.pick([0, secs.length + 1, secs.length - 1, rng.u32()]) >>> 0;
          return `end-sections=${m.endSections}`;
        case 2:
          m.endOffset = rng.pick([0, 32, rng.u32()]);
          return `end-offset=${m.endOffset}`;
        case 3:
          m.endSkeleton = rng.u32();
          return 'end-skeleton';
        case 4:
          m.endType = rng.pick([1, 3, 99]);
          return `end-type=${m.endType}`;
        default:
          m.trailing = rng.bytes(rng.range(1, 64));
          return `trailing+${m.trailing.length}`;
      }
    }
    case 'cross-device': {
      // Swap which device two sections of the same type belong to (2-device files).
      const byType = new Map<number, MSection[]>();
      for (const s of secs) if (s.device !== f.FILE_WIDE) byType.set(s.type, [...(byType.get(s.type) ?? []), s]);
      const pairs = [...byType.values()].filter((xs) => xs.length >= 2 && xs[0].device !== xs[1].device);
      if (!pairs.length) return 'cross-device(none)';
      const [a, b] = rng.pick(pairs);
      [a.device, b.device] = [b.device, a.device];
      return `cross-device type ${f.sectionTypeName(a.type)}`;
    }
  }
}

/** Build one mutant of `base` for case `rng`; returns the bytes and a description. */
function mutant(rng: Rng, base: Base): { buf: Buffer; what: string } {
  const mode = rng.weighted([['raw', 30], ['structural', 60], ['raw-chunk-header', 5], ['both', 5]] as const);
  if (mode === 'raw') {
    const { out, what } = mutateBytes(rng, base.bytes);
    return { buf: out, what: `raw:${what}` };
  }
  if (mode === 'raw-chunk-header') {
    // A chunk header's length field changed in place (checksums not recomputed).
    const at = rng.pick(base.layout.chunkHeaders);
    const out = Buffer.from(base.bytes);
    const len = out.readUInt32LE(at);
    const v = rng.pick([len + 1, len - 1, 0, len * 2, rng.u32(), 0xffffffff]) >>> 0;
    out.writeUInt32LE(v, at);
    return { buf: out, what: `raw-chunk-len@${at}=${v}` };
  }
  const m = cloneModel(base.model);
  const kinds = [rng.weighted(STRUCTURAL)];
  if (rng.chance(0.1)) kinds.push(rng.weighted(STRUCTURAL));
  const whats = kinds.map((k) => mutateStructure(rng, m, k));
  let { buf } = seal(m);
  if (mode === 'both') {
    const r = mutateBytes(rng, buf);
    buf = r.out;
    whats.push(`raw:${r.what}`);
  }
  return { buf, what: whats.join(' + ') };
}

// ------------------------------------------------------------------ base files
interface Target {
  /** Device index in the file. */
  index: number;
  /** The id it was saved under (the source device's name). */
  id: string;
  options: SimDeviceOptions;
  /** The source's state after saving: what a correct restore reproduces. */
  expect: { seed: bigint; control: number; irqCount: number; scratch: Buffer };
}
interface Base {
  name: string;
  bytes: Buffer;
  model: Model;
  layout: Layout;
  targets: Target[];
}

const dir = useTempDir('snapfuzz');
const bases: Base[] = [];

/** Save devices made with `opts` into one file (chunks of `bufferSize`), with distinctive registers. */
async function makeBase(name: string, opts: SimDeviceOptions[], bufferSize?: number): Promise<Base> {
  const sim = new SimBinding(realBinding());
  const devs = opts.map((o, i) => {
    const sd = sim.createDevice(`${name}-src${i}`, o);
    const dev = openDevice(`sim#${name}-src${i}`, { binding: sim });
    const scratch = Buffer.alloc(256);
    for (let k = 0; k < 256; k++) scratch[k] = (k * 7 + i * 31 + 3) & 0xff;
    sd.setRegisters({ control: 0xc0de0000 + i, irqCount: 40 + i, scratch });
    return { sd, dev };
  });
  const file = dir.file(`${name}.vfiosnap`);
  await saveSnapshot(devs.map((d) => d.dev), file, { bufferSize, noSync: true });
  const bytes = fs.readFileSync(file);
  const targets = devs.map(({ sd }, index): Target => {
    const r = sd.registers();
    return { index, id: `sim#${name}-src${index}`, options: opts[index], expect: { seed: r.seed, control: r.control, irqCount: r.irqCount, scratch: Buffer.from(r.scratch) } };
  });
  devs.forEach((d) => d.dev.close());
  const model = await parse(bytes);
  const sealed = seal(model);
  // The test's own serialiser reproduces the writer's file exactly: mutants differ only where meant.
  expect(sealed.buf.equals(bytes), `${name}: seal(parse(file)) reproduces the file`).toBe(true);
  return { name, bytes, model, layout: sealed.layout, targets };
}

// ------------------------------------------------------------------ one case
interface Outcome {
  key: string;
  touched: boolean;
  ok: boolean;
}

/**
 * The mutant in memory, as SnapshotReader.fromBuffer reads it, with a cap on reads: a reader
 * loop that stopped advancing would spin on promises that resolve at once, starving the
 * per-case timer, so it is stopped here instead.
 */
function cappedSource(data: Buffer, cap: number): SnapshotSource {
  let reads = 0;
  return {
    size: data.length,
    async read(buf: Buffer, pos: number): Promise<number> {
      if (++reads > cap) throw new Error(`more than ${cap} reads of the snapshot in one case: a reader loop that does not advance`);
      return pos >= data.length ? 0 : data.copy(buf, 0, pos, Math.min(data.length, pos + buf.length));
    },
    async close(): Promise<void> {},
  };
}

/** Validation verdict of a reader factory: 'ok' or the error code. */
async function verdict(open: () => Promise<SnapshotReader>): Promise<string> {
  try {
    const r = await open();
    await r.close();
    return 'ok';
  } catch (e) {
    return e instanceof VfioError ? `${e.kind}:${e.code}` : `not a VfioError: ${String(e)}`;
  }
}

/** A binding that delegates to `inner` and fails (with a plain Error: a test failure) after `cap` calls. */
function capped(inner: Binding, cap: number): Binding {
  let calls = 0;
  return new Proxy(inner, {
    get(target, key) {
      const v = Reflect.get(target, key, target) as unknown;
      if (typeof v !== 'function') return v;
      return (...args: unknown[]) => {
        if (++calls > cap) throw new Error(`more than ${cap} binding calls in one case: a runaway loop`);
        return (v as (...a: unknown[]) => unknown).apply(target, args);
      };
    },
  });
}

function withDeadline<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no outcome after ${ms} ms (hang)`)), ms);
  });
  return Promise.race([p, deadline]).finally(() => clearTimeout(timer));
}

const DEST_SCRATCH = Buffer.alloc(256, 0x5a);

async function runCase(caseNo: number): Promise<Outcome & { what: string }> {
  const rng = new Rng(mix32(SEED ^ Math.imul(caseNo + 1, 0x9e3779b1)));
  const base = rng.pick(bases);
  const { buf, what } = mutant(rng, base);
  const label = `seed 0x${SEED.toString(16)} case ${caseNo} (${base.name}, ${what})`;

  // One destination per saved device, paired by the saved id, as a VM restores them all.
  const sim = new SimBinding(realBinding());
  const binding = capped(sim, CALL_CAP);
  const dsts = base.targets.map((t, i) => {
    const sd: SimDevice = sim.createDevice(`dst${i}`, { ...t.options, seed: 0xdead_beefn });
    const dev = openDevice(`sim#dst${i}`, { binding });
    sd.setRegisters({ control: 0x11, irqCount: 3, scratch: DEST_SCRATCH });
    return { t, sd, dev, before: sd.registers() };
  });
  let error: unknown;
  try {
    await withDeadline(
      (async () => {
        const reader = await SnapshotReader.fromSource(cappedSource(buf, READ_CAP), `case-${caseNo}`);
        try {
          await restoreSnapshot(dsts.map((d) => ({ id: d.t.id, device: d.dev })), reader, { bufferSize: rng.pick([16, 100, 4096, 65536]) });
        } finally {
          await reader.close();
        }
      })(),
      CASE_DEADLINE_MS,
      label,
    );
  } catch (e) {
    error = e;
  }

  const touched = dsts.some((d) => d.sd.arcLog.length > 0);
  const fail = (why: string): never => {
    throw new Error(`${label}: ${why}${error ? `\n  error: ${(error as Error).stack}` : ''}`);
  };
  for (const { t, sd } of dsts) {
    if (sd.state !== MigState.RUNNING) fail(`device ${t.id} left in ${MigState[sd.state]}`);
    if (sd.openFds !== 1) fail(`${sd.openFds - 1} data_fd(s) of ${t.id} left open`);
    const s = sd.session();
    if (s && !s.disabled) fail(`a ${s.kind} session of ${t.id} is still live`);
  }
  let key: string;
  if (error === undefined) {
    if (!touched) fail('restore succeeded without touching the devices');
    for (const { t, sd } of dsts) {
      const r = sd.registers();
      if (r.seed !== t.expect.seed) fail(`restore succeeded but ${t.id}'s data seed is ${r.seed}, not ${t.expect.seed}`);
      if (r.control !== t.expect.control || r.irqCount !== t.expect.irqCount || !r.scratch.equals(t.expect.scratch)) {
        fail(`restore succeeded but ${t.id}'s registers differ from the source`);
      }
    }
    key = 'ok';
  } else {
    if (!(error instanceof VfioError)) fail('not a VfioError');
    const e = error as VfioError;
    if (!ALLOWED_KINDS.has(e.kind)) fail(`error kind ${e.kind}`);
    for (const { t, sd, before } of dsts) {
      if (sd.arcLog.length > 0) {
        const left = e.deviceState?.find((o) => o.device === t.id);
        if (left?.state !== 'RUNNING' || !left.touched) fail(`touched device ${t.id}, but the error says ${JSON.stringify(left)}`);
      } else {
        const r = sd.registers();
        if (r.seed !== before.seed || r.control !== before.control || !r.scratch.equals(before.scratch)) fail(`untouched device ${t.id} changed`);
      }
    }
    key = `${e.kind}:${e.code}@${e.step ?? '-'}`;
    // A damaged device stream in a snapshot whose own checksums hold gets past every check of
    // the container: only the device can refuse it (a write error, or EINVAL at the RESUMING
    // exit), and then the devices are reset.
    if (/^payload:[^+]*$/.test(what) && !(touched && e.kind === 'syscall' && ['EINVAL', 'EFAULT', 'ENOMEM'].includes(e.code))) {
      fail(`a damaged device stream with valid snapshot checksums ended in ${key}, not in a refusal by the device`);
    }
  }
  dsts.forEach((d) => d.dev.close());
  if (sim.openFdCount() !== 0) fail(`${sim.openFdCount()} virtual fds leaked: ${JSON.stringify(sim.openFds())}`);
  if (caseNo % FILE_CHECK_EVERY === 0) {
    // The file source (header reads with fs.readSync, or with the addon's pread) and the
    // in-memory one share the validation: same verdict.
    const file = dir.file('mutant.vfiosnap');
    fs.writeFileSync(file, buf);
    const fromFile = await verdict(() => SnapshotReader.open(file));
    const fromMemory = await verdict(() => SnapshotReader.fromBuffer(buf, 'mutant'));
    if (fromFile !== fromMemory) fail(`validation differs: file ${fromFile}, memory ${fromMemory}`);
    const real = realBinding();
    const fromPread = real ? await verdict(() => SnapshotReader.open(file, { binding: real })) : fromFile;
    if (fromPread !== fromFile) fail(`validation differs: file with the binding's pread ${fromPread}, with fs.readSync ${fromFile}`);
  }
  return { key, touched, ok: error === undefined, what };
}

// ------------------------------------------------------------------ the tests
beforeAll(async () => {
  bases.push(await makeBase('s256', [{ size: 256, seed: 0x1111n, configSize: 256 }]));
  bases.push(await makeBase('s4k-one-chunk', [{ size: 4096, seed: 0x2222n, configSize: 256 }]));
  bases.push(await makeBase('s4k-1000', [{ size: 4096, seed: 0x2223n, configSize: 256 }], 1000));
  bases.push(await makeBase('s4k-256', [{ size: 4096, seed: 0x2224n }], 256));
  bases.push(await makeBase('two-devices', [{ size: 256, seed: 0x3333n, configSize: 256 }, { size: 1024, seed: 0x4444n, configSize: 256, deviceId: 0x5f11 }], 300));
});

describe('snapshot fuzzing: every mutant ends in a typed error or a correct restore', () => {
  it('restores every unmutated base file', async () => {
    for (const b of bases) {
      const sim = new SimBinding(realBinding());
      const dsts = b.targets.map((t, i) => ({ t, sd: sim.createDevice(`dst${i}`, { ...t.options, seed: 0xdead_beefn }), dev: openDevice(`sim#dst${i}`, { binding: sim }) }));
      const pairs = dsts.map((d) => ({ id: d.t.id, device: d.dev }));
      // The same file through both sources: the file path and the in-memory path.
      const file = dir.file(`${b.name}.vfiosnap`);
      await restoreSnapshot(pairs, file);
      for (const { t, sd } of dsts) {
        expect(sd.seed).toBe(t.expect.seed);
        sd.setRegisters({ control: 0, irqCount: 0, scratch: Buffer.alloc(256) });
      }
      const reader = await SnapshotReader.fromBuffer(b.bytes, b.name);
      await restoreSnapshot(pairs, reader);
      await reader.close();
      for (const { t, sd, dev } of dsts) {
        expect(sd.registers()).toMatchObject({ seed: t.expect.seed, control: t.expect.control, irqCount: t.expect.irqCount });
        expect(sd.registers().scratch.equals(t.expect.scratch)).toBe(true);
        dev.close();
      }
      expect(sim.openFdCount()).toBe(0);
    }
  });

  it(`${ONLY !== undefined ? `case ${ONLY}` : `${CASES} seeded mutants`} (FUZZ_SEED=0x${SEED.toString(16)})`, async () => {
    const started = Date.now();
    const dist = new Map<string, number>();
    let touched = 0;
    let ok = 0;
    let finishEinval = 0;
    const first = ONLY ?? 0;
    const last = ONLY !== undefined ? ONLY + 1 : CASES;
    for (let i = first; i < last; i++) {
      const o = await runCase(i);
      if (ONLY !== undefined) console.log(`case ${i}: ${o.what} -> ${o.key}${o.touched ? ' (device touched)' : ''}`);
      dist.set(o.key, (dist.get(o.key) ?? 0) + 1);
      if (o.touched) touched++;
      if (o.ok) ok++;
      if (/^syscall:EINVAL@set-state RESUMING→/.test(o.key)) finishEinval++;
    }
    const n = last - first;
    const secs = (Date.now() - started) / 1000;
    const rows = [...dist].sort((a, b) => b[1] - a[1]).map(([k, c]) => `  ${String(c).padStart(7)}  ${((100 * c) / n).toFixed(2).padStart(6)}%  ${k}`);
    console.log(
      `snapshot fuzz: seed 0x${SEED.toString(16)}, ${n} cases in ${secs.toFixed(1)} s; ` +
        `${touched} reached the device (${((100 * touched) / n).toFixed(1)}%), ${ok} restored correctly, ` +
        `${finishEinval} refused by the device at the RESUMING exit (EINVAL) and reset\n${rows.join('\n')}`,
    );
    if (ONLY === undefined && n >= 1000) {
      // The fuzzer is not only hitting the container checks: many mutants get to the device...
      expect(touched / n).toBeGreaterThan(0.15);
      // ...where the driver refuses damaged streams at the RESUMING exit, then the device is reset.
      expect(finishEinval / n).toBeGreaterThan(0.03);
      expect(ok).toBeGreaterThan(0);
    }
  }, 600_000);
});

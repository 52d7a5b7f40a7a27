/**
 * Reading and validating a snapshot file (format: ./format.ts, docs/snapshot-format.md).
 *
 * `SnapshotReader.open()` checks everything that can be checked without reading the state
 * streams' payloads: the file header, every section header, every plain body's checksum, the
 * chain of chunk headers of every chunked section (lengths within the file, the end chunk's
 * total and chunk-table crc), the END section and the skeleton checksum over all of it, and that
 * every required section is of a known type. Chunk payloads are checked as they are streamed
 * (`chunks()`): each chunk's checksum is verified before the chunk is handed out, so a corrupted
 * chunk never reaches a device.
 *
 * Any malformed input ends in a `VfioError` of kind 'format' — never a crash or a hang: every
 * loop advances through the file and every length is bounded by the file size and MAX_CHUNK.
 *
 * The bytes come from a `SnapshotSource` (a size and positional reads): a file (`open()`) or a
 * Buffer already in memory (`fromBuffer()`, for tests and fuzzing). Both go through the same
 * validation and streaming code. A file opened with a binding (`open(file, { binding })`, as
 * restore does with the device's) reads its headers through it, and lets the native pump pass
 * over runs of regular chunk headers (its record walk, src/kernel/pump); every header the fast
 * path does not take — the end chunk, anything malformed — is judged here, so the verdicts are
 * the same (the fuzz test compares them).
 *
 * Every checksum is the file's algorithm (FileHeader.checksum): CRC-32C in version 2 files, or
 * whatever their header names; CRC-32 in version 1 files.
 */
import * as fs from 'node:fs';
import type { Binding } from '../kernel/binding/types';
import { recordWalkerFor } from '../kernel/pump';
import { VfioError, fsError, type ErrnoName } from '../base/errors';
import { DEFAULT_BUFFER_SIZE } from '../kernel/stream';
import * as f from './format';

/**
 * Where a reader's bytes come from: `size` bytes, read by position. `read` fills `buf` from
 * offset `pos` on and resolves with the bytes read, fewer only at the end (0 past it).
 * `readSync`, when the source has it, does the same without waiting: the reader uses it for
 * small reads (the file header, section and chunk headers, plain bodies up to 64 KiB), which a
 * file serves from the page cache in ~1 µs while an awaited read costs a thread-pool round trip
 * (~70 µs) and a few microtasks. Validating a 1 GiB snapshot reads 1024 chunk headers.
 */
export interface SnapshotSource {
  readonly size: number;
  read(buf: Buffer, pos: number): Promise<number>;
  readSync?(buf: Buffer, pos: number): number;
  /**
   * Pass over regular chunks from `walk.pos` (the native pump's record walk: whole headers,
   * lengths in [1, maxChunk], payloads within the source), without waiting longer than about a
   * millisecond; stops at the first header it does not take, for the reader to judge.
   */
  walkChunks?(walk: ChunkWalk, maxChunk: number, alg: f.ChecksumAlgorithm): ChunkWalk & { taken: number };
  close(): Promise<void>;
  /** The file descriptor when the source is a file (for a pump reading it by position). */
  readonly fd?: number;
}

/** Where a walk over a chunked section's headers stands (SnapshotSource.walkChunks). */
export interface ChunkWalk {
  /** File offset of the next chunk header. */
  pos: number;
  /** Chunks passed. */
  count: number;
  /** Their payload bytes. */
  total: number;
  /** Running checksum of the headers passed: the end chunk's chunk-table checksum. */
  tableCrc: number;
  /** The same headers added to the file skeleton's checksum (the END section's). */
  skeletonCrc: number;
}

const NO_PREFIX = Buffer.alloc(0);

/**
 * A snapshot file opened read-only (close-on-exec, as Node opens every file). With a binding,
 * header reads go through its pread (~1 µs a call even before the JIT has warmed up, against
 * 5–10 µs for fs.readSync in a fresh process) and runs of chunk headers through the native
 * pump's record walk when it serves the binding (1024 headers, a 1 GiB state, in ~0.5 ms).
 */
class FileSource implements SnapshotSource {
  readonly walkChunks?: (walk: ChunkWalk, maxChunk: number, alg: f.ChecksumAlgorithm) => ChunkWalk & { taken: number };
  private closed = false;

  private constructor(
    readonly fd: number,
    readonly size: number,
    private readonly binding?: ReaderBinding,
  ) {
    const walk = binding && recordWalkerFor(binding, fd);
    if (walk) {
      this.walkChunks = (w, maxChunk, alg) => {
        const r = walk(fd, { pos: w.pos, count: w.count, total: w.total, sums: [w.tableCrc, w.skeletonCrc] }, size, {
          prefix: NO_PREFIX, maxRecord: maxChunk, checksum: alg, maxHeaders: WALK_MAX_HEADERS, budgetUs: WALK_BUDGET_US,
        });
        return { pos: r.pos, count: r.count, total: r.total, tableCrc: r.sums[0], skeletonCrc: r.sums[1], taken: r.taken };
      };
    }
  }

  /**
   * open(2) and fstat(2), synchronously (a regular file only: EVFIO_NOT_A_FILE for anything
   * else): microseconds on a local file, where the thread pool's
   * round trips (and, in a fresh process, starting its threads) cost milliseconds before a
   * restore can begin. The header reads that follow are synchronous too.
   */
  static open(file: string, binding?: ReaderBinding): FileSource {
    let fd: number | undefined;
    let syscall = 'open';
    try {
      // O_NONBLOCK: a FIFO would otherwise block the open until a writer came; it is refused
      // below like every other file that cannot be read by position.
      fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
      syscall = 'fstat';
      const st = fs.fstatSync(fd);
      if (!st.isFile()) {
        throw new VfioError(`snapshot ${file} is not a regular file`, { code: 'EVFIO_NOT_A_FILE', kind: 'usage', path: file, step: 'snapshot:open' });
      }
      return new FileSource(fd, st.size, binding);
    } catch (e) {
      if (fd !== undefined) fs.closeSync(fd);
      if (e instanceof VfioError) throw e;
      const err = e as NodeJS.ErrnoException;
      throw new VfioError(`cannot ${syscall} snapshot ${file}: ${err.code}`, {
        code: (err.code ?? 'EIO') as ErrnoName, errno: Math.abs(err.errno ?? 5), syscall, path: file, kind: 'syscall', step: 'snapshot:open', cause: e,
      });
    }
  }

  async read(buf: Buffer, pos: number): Promise<number> {
    let off = 0;
    while (off < buf.length) {
      const n = await fsRead(this.fd, buf, off, buf.length - off, pos + off);
      if (n === 0) break;
      off += n;
    }
    return off;
  }

  readSync(buf: Buffer, pos: number): number {
    let off = 0;
    while (off < buf.length) {
      const n = this.binding ? this.binding.pread(this.fd, off === 0 ? buf : buf.subarray(off), pos + off) : fs.readSync(this.fd, buf, off, buf.length - off, pos + off);
      if (n === 0) break;
      off += n;
    }
    return off;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    fs.closeSync(this.fd);
  }
}

/** fs.read with a promise: the bytes read. */
function fsRead(fd: number, buf: Buffer, off: number, len: number, pos: number): Promise<number> {
  return new Promise((resolve, reject) => fs.read(fd, buf, off, len, pos, (e, n) => (e ? reject(e) : resolve(n))));
}

/** The binding a reader may read headers with (src/kernel/binding/types.ts). */
export type ReaderBinding = Binding;

/** Options of SnapshotReader.open. */
export interface OpenOptions {
  /**
   * Read headers with this binding (e.g. the device's): its pread, and the native pump's record
   * walk when that serves it. Default: fs.readSync. The verdict is the same either way.
   */
  binding?: ReaderBinding;
}

/** Plain bodies up to this size are read synchronously, like headers. */
const SMALL_BODY = 64 * 1024;

/** One record walk takes at most this many headers, or runs about this long. */
const WALK_MAX_HEADERS = 4096;
const WALK_BUDGET_US = 1000;

/**
 * Small reads done synchronously in a row before the event loop gets a turn: ~1 µs each from
 * the page cache, so a run holds the loop for well under a millisecond.
 */
const YIELD_EVERY = 256;

/** A snapshot in memory. The Buffer is not copied: it must not change while the reader is open. */
class BufferSource implements SnapshotSource {
  constructor(private readonly data: Buffer) {}

  get size(): number {
    return this.data.length;
  }

  async read(buf: Buffer, pos: number): Promise<number> {
    return this.readSync(buf, pos);
  }

  readSync(buf: Buffer, pos: number): number {
    return pos >= this.data.length ? 0 : this.data.copy(buf, 0, pos, Math.min(this.data.length, pos + buf.length));
  }

  async close(): Promise<void> {}
}

export interface SectionEntry {
  header: f.SectionHeader;
  /** File offset of the section header. */
  at: number;
  /** File offset of the body (first chunk for chunked sections). */
  bodyAt: number;
  /** Chunked sections: number of chunks and total payload bytes. */
  chunks?: { count: number; total: number };
  /** True when the type is unknown to this reader (only possible for optional sections). */
  unknown: boolean;
}

export interface DeviceSections {
  index: number;
  record: f.DeviceRecord;
  config: Buffer;
  state?: SectionEntry;
  model?: Buffer;
}

const KNOWN_TYPES = new Set<number>([f.SectionType.DEVICE, f.SectionType.CONFIG, f.SectionType.DEVICE_STATE, f.SectionType.PCI_MODEL]);

export class SnapshotReader {
  readonly sections: SectionEntry[] = [];
  private readonly plain = new Map<SectionEntry, Buffer>();
  header!: f.FileHeader;
  size = 0;

  private constructor(
    /** The file's path, or the name given to an in-memory snapshot (used in messages). */
    readonly path: string,
    private readonly source: SnapshotSource,
  ) {}

  /**
   * Open and validate a snapshot file. Errors: VfioError kind 'format' (EVFIO_BAD_SNAPSHOT,
   * EVFIO_SNAPSHOT_TRUNCATED, EVFIO_SNAPSHOT_CHECKSUM, EVFIO_SNAPSHOT_VERSION,
   * EVFIO_SNAPSHOT_UNSUPPORTED) or kind 'syscall' (open, fstat, read).
   */
  static async open(file: string, opts: OpenOptions = {}): Promise<SnapshotReader> {
    return SnapshotReader.fromSource(FileSource.open(file, opts.binding), file, { isPath: true });
  }

  /** Validate the snapshot held in `data` (not copied: leave it unchanged while the reader is in use). Errors as open(). */
  static async fromBuffer(data: Buffer, name = '<memory>'): Promise<SnapshotReader> {
    return SnapshotReader.fromSource(new BufferSource(data), name);
  }

  /**
   * Validate the snapshot `source` holds. The reader owns the source: close() closes it, and so
   * does a failed validation. `name` is used in messages (and as the errors' `path` with `isPath`).
   */
  static async fromSource(source: SnapshotSource, name: string, opts: { isPath?: boolean } = {}): Promise<SnapshotReader> {
    const r = new SnapshotReader(name, source);
    try {
      await r.validate();
    } catch (e) {
      await r.close();
      if (e instanceof VfioError) e.annotate({ path: opts.isPath ? name : undefined, step: 'snapshot:validate' });
      if (e instanceof VfioError && !e.message.includes(name)) e.message = `${name}: ${e.message}`;
      throw e;
    }
    return r;
  }

  /** The file descriptor of a file-backed reader (undefined in memory), for a pump reading by position. */
  get fd(): number | undefined {
    return this.source.fd;
  }

  /** The algorithm of every checksum in the file (from its header; CRC-32 for version 1). */
  get checksum(): f.ChecksumAlgorithm {
    return this.header.checksum;
  }

  /** Body of a plain section (validated at open). */
  body(entry: SectionEntry): Buffer {
    const b = this.plain.get(entry);
    if (!b) throw new VfioError(`section at ${entry.at} is not a plain section`, { code: 'EVFIO_WRITER_STATE', kind: 'usage' });
    return b;
  }

  /** The sections of each device, by device index, with DEVICE and CONFIG decoded. */
  devices(): DeviceSections[] {
    const by = new Map<number, Partial<DeviceSections> & { index: number }>();
    for (const s of this.sections) {
      if (s.header.device === f.FILE_WIDE || s.unknown) continue;
      const d = by.get(s.header.device) ?? { index: s.header.device };
      by.set(s.header.device, d);
      const dup = (what: string): VfioError => f.formatError(`device ${s.header.device} has two ${what} sections`);
      switch (s.header.type) {
        case f.SectionType.DEVICE:
          if (d.record) throw dup('DEVICE');
          d.record = f.decodeDeviceRecord(this.body(s));
          break;
        case f.SectionType.CONFIG:
          if (d.config) throw dup('CONFIG');
          d.config = this.body(s);
          break;
        case f.SectionType.DEVICE_STATE:
          if (d.state) throw dup('DEVICE_STATE');
          d.state = s;
          break;
        case f.SectionType.PCI_MODEL:
          if (d.model) throw dup('PCI_MODEL');
          d.model = this.body(s);
          break;
      }
    }
    const out: DeviceSections[] = [];
    for (const d of [...by.values()].sort((a, b) => a.index - b.index)) {
      if (!d.record) throw f.formatError(`device ${d.index} has no DEVICE section`);
      if (!d.config || d.config.length < 64) throw f.formatError(`device ${d.index} has no CONFIG section of at least 64 bytes`);
      out.push(d as DeviceSections);
    }
    return out;
  }

  /**
   * Stream the payload of a chunked section, chunk by chunk, into `buf` (reused; each yielded
   * Buffer is a view of it, valid until the next iteration). Each chunk's checksum is checked
   * before it is yielded; the chunk table crc and total at the end. The chunk headers are read
   * again and held to what open() found (lengths within the file, the same count), so a file
   * changed since open() cannot make the reader over-allocate or run past the section. A
   * mismatch throws EVFIO_SNAPSHOT_CHECKSUM naming the chunk's offset.
   */
  async *chunks(entry: SectionEntry, buf: Buffer = Buffer.allocUnsafe(DEFAULT_BUFFER_SIZE)): AsyncGenerator<Buffer> {
    for await (const c of this.chunkHeaders(entry)) {
      if (c.length > buf.length) buf = Buffer.allocUnsafe(c.length);
      const view = buf.subarray(0, c.length);
      await this.readExact(view, c.payloadAt);
      if (f.sum(this.checksum, view) !== c.crc) throw this.changed(entry, `checksum mismatch in chunk ${c.index} (file offset ${c.payloadAt - f.CHUNK_HEADER_SIZE})`);
      yield view;
    }
  }

  /**
   * Walk the chunk headers of a chunked section, re-reading them from the source (a file may
   * change after it was validated): each length is checked against the file and MAX_CHUNK, and
   * after the last chunk the end chunk's table checksum and total are verified — so a consumer
   * that writes each chunk somewhere (a pump with `expectChecksum`) learns of lost, reordered
   * or altered chunks before the device leaves RESUMING. Payloads are not read here.
   */
  async *chunkHeaders(entry: SectionEntry): AsyncGenerator<{ index: number; payloadAt: number; length: number; crc: number }> {
    if (!entry.chunks) throw new VfioError('not a chunked section', { code: 'EVFIO_WRITER_STATE', kind: 'usage' });
    let pos = entry.bodyAt;
    let table = 0;
    let total = 0;
    const hdr = Buffer.alloc(f.END_CHUNK_SIZE);
    const head = hdr.subarray(0, f.CHUNK_HEADER_SIZE);
    for (let i = 0; i < entry.chunks.count; i++) {
      const wait = this.readSmall(head, pos);
      if (wait) await wait;
      const len = hdr.readUInt32LE(0);
      const crc = hdr.readUInt32LE(4);
      if (len === 0 || len > f.MAX_CHUNK || pos + f.CHUNK_HEADER_SIZE + len > this.size) {
        throw this.changed(entry, `chunk ${i} (file offset ${pos}) changed since the file was opened`);
      }
      table = f.sum(this.checksum, head, table);
      total += len;
      yield { index: i, payloadAt: pos + f.CHUNK_HEADER_SIZE, length: len, crc };
      pos += f.CHUNK_HEADER_SIZE + len;
    }
    await this.checkEndChunk(entry, pos, table, total);
  }

  /**
   * Read the end chunk of `entry` at file offset `pos` again and hold it to the chunk table
   * checksum and total of the chunks streamed before it: EVFIO_SNAPSHOT_CHECKSUM (this.changed)
   * when the file no longer says so (chunks lost, reordered or altered since it was validated).
   */
  async checkEndChunk(entry: SectionEntry, pos: number, table: number, total: number): Promise<void> {
    const hdr = Buffer.alloc(f.END_CHUNK_SIZE);
    if (pos + f.END_CHUNK_SIZE > this.size) throw this.changed(entry, tableMismatch(pos));
    await this.readSmall(hdr, pos);
    if (hdr.readUInt32LE(0) !== 0 || hdr.readUInt32LE(4) !== table >>> 0 || Number(hdr.readBigUInt64LE(8)) !== total) {
      throw this.changed(entry, tableMismatch(pos));
    }
  }

  /** The error for a file that is not what open() validated: `what`, in `entry`'s section. */
  changed(entry: SectionEntry, what: string): VfioError {
    return new VfioError(`${this.path}: ${what} of the ${f.sectionTypeName(entry.header.type)} section`, {
      code: 'EVFIO_SNAPSHOT_CHECKSUM', kind: 'format', path: this.path,
    });
  }

  async close(): Promise<void> {
    await this.source.close().catch(() => undefined);
  }

  // ------------------------------------------------------------------ validation
  private async validate(): Promise<void> {
    this.size = this.source.size;
    const head = Buffer.alloc(f.FILE_HEADER_SIZE);
    const n = this.source.readSync ? this.readNow(head, 0) : await this.readAt(head, 0);
    this.header = f.decodeFileHeader(head.subarray(0, n));
    const alg = this.checksum;
    let skeleton = f.sum(alg, head);
    let pos = f.FILE_HEADER_SIZE;
    const sh = Buffer.alloc(f.SECTION_HEADER_SIZE);
    for (;;) {
      if (pos + f.SECTION_HEADER_SIZE > this.size) throw truncated(`the file ends at ${this.size} before an END section`);
      await this.readSmall(sh, pos);
      const header = f.decodeSectionHeader(sh, pos, alg);
      if (header.type === f.SectionType.END) {
        await this.checkEnd(header, pos, skeleton);
        return;
      }
      skeleton = f.sum(alg, sh, skeleton);
      // An optional section with reserved flag bits is skipped like one of an unknown type.
      const unknown = !KNOWN_TYPES.has(header.type) || (header.flags & ~f.KNOWN_SECTION_FLAGS) !== 0;
      if (unknown && header.flags & f.SECTION_FLAG_REQUIRED) {
        throw f.formatError(`required section of unknown type ${header.type} at offset ${pos}: this snapshot needs a newer node-vfio-pci`, 'EVFIO_SNAPSHOT_UNSUPPORTED');
      }
      const chunked = (header.flags & f.SECTION_FLAG_CHUNKED) !== 0;
      // A known type has one body kind: DEVICE_STATE is chunked, the others are plain.
      if (!unknown && chunked !== (header.type === f.SectionType.DEVICE_STATE)) {
        throw f.formatError(`section ${f.sectionTypeName(header.type)} at offset ${pos} is ${chunked ? 'chunked' : 'plain'}; it must be ${chunked ? 'plain' : 'chunked'}`);
      }
      const entry: SectionEntry = { header, at: pos, bodyAt: pos + f.SECTION_HEADER_SIZE, unknown };
      if (chunked) {
        const walked = await this.walkChunks(entry.bodyAt, skeleton);
        entry.chunks = { count: walked.count, total: walked.total };
        skeleton = walked.skeleton;
        pos = walked.end;
      } else {
        if (entry.bodyAt + header.length > this.size) throw truncated(`section ${f.sectionTypeName(header.type)} at ${pos} needs ${header.length} bytes`);
        const body = Buffer.alloc(header.length);
        // Plain bodies are small (DEVICE, CONFIG, PCI_MODEL: at most a few KiB): read like headers.
        if (header.length <= SMALL_BODY) await this.readSmall(body, entry.bodyAt);
        else await this.readExact(body, entry.bodyAt);
        if (f.sum(alg, body) !== header.crc) {
          throw new VfioError(`checksum mismatch in the ${f.sectionTypeName(header.type)} section at offset ${pos}`, { code: 'EVFIO_SNAPSHOT_CHECKSUM', kind: 'format' });
        }
        skeleton = f.sum(alg, body, skeleton);
        if (!unknown) this.plain.set(entry, body);
        pos = entry.bodyAt + header.length;
      }
      this.sections.push(entry);
    }
  }

  private async walkChunks(start: number, skeleton: number): Promise<{ count: number; total: number; end: number; skeleton: number }> {
    const alg = this.checksum;
    const hdr = Buffer.alloc(f.END_CHUNK_SIZE);
    const h = hdr.subarray(0, f.CHUNK_HEADER_SIZE);
    let pos = start;
    let table = 0;
    let total = 0;
    let count = 0;
    for (;;) {
      if (this.source.walkChunks) {
        // The source's fast path passes over the regular chunks; the loop below judges the
        // header it stopped at (the end chunk, a bad one, or one past its time budget).
        const w = this.source.walkChunks({ pos, count, total, tableCrc: table, skeletonCrc: skeleton }, f.MAX_CHUNK, alg);
        if (w.taken > 0) {
          ({ pos, count, total } = w);
          table = w.tableCrc;
          skeleton = w.skeletonCrc;
          await new Promise<void>((resolve) => setImmediate(resolve));
        }
      }
      if (pos + f.CHUNK_HEADER_SIZE > this.size) throw truncated(`a chunk header at ${pos} is cut off`);
      const wait = this.readSmall(h, pos);
      if (wait) await wait;
      const len = hdr.readUInt32LE(0);
      if (len === 0) {
        if (pos + f.END_CHUNK_SIZE > this.size) throw truncated(`the end chunk at ${pos} is cut off`);
        await this.readSmall(hdr, pos);
        skeleton = f.sum(alg, hdr, skeleton);
        if (hdr.readUInt32LE(4) !== table >>> 0 || Number(hdr.readBigUInt64LE(8)) !== total) {
          throw new VfioError(tableMismatch(pos), { code: 'EVFIO_SNAPSHOT_CHECKSUM', kind: 'format' });
        }
        return { count, total, end: pos + f.END_CHUNK_SIZE, skeleton };
      }
      if (len > f.MAX_CHUNK) throw f.formatError(`chunk at ${pos} claims ${len} bytes, over the ${f.MAX_CHUNK}-byte limit`);
      if (pos + f.CHUNK_HEADER_SIZE + len > this.size) throw truncated(`chunk at ${pos} needs ${len} bytes`);
      table = f.sum(alg, h, table);
      skeleton = f.sum(alg, h, skeleton);
      total += len;
      count++;
      pos += f.CHUNK_HEADER_SIZE + len;
    }
  }

  private async checkEnd(header: f.SectionHeader, at: number, skeleton: number): Promise<void> {
    if (header.length !== f.END_BODY_SIZE || header.flags & f.SECTION_FLAG_CHUNKED) throw f.formatError(`END section at ${at} is malformed`);
    const bodyAt = at + f.SECTION_HEADER_SIZE;
    if (bodyAt + f.END_BODY_SIZE > this.size) throw truncated('the END section is cut off');
    const body = Buffer.alloc(f.END_BODY_SIZE);
    await this.readSmall(body, bodyAt);
    if (f.sum(this.checksum, body) !== header.crc) throw f.formatError('END section checksum mismatch');
    const end = f.decodeEndBody(body);
    if (end.endOffset !== at || end.sections !== this.sections.length) {
      throw f.formatError(`END section says ${end.sections} sections ending at ${end.endOffset}, found ${this.sections.length} ending at ${at}`);
    }
    if (end.skeletonCrc !== skeleton >>> 0) {
      throw new VfioError('whole-file checksum mismatch (END section)', { code: 'EVFIO_SNAPSHOT_CHECKSUM', kind: 'format' });
    }
    if (bodyAt + f.END_BODY_SIZE !== this.size) {
      throw f.formatError(`${this.size - bodyAt - f.END_BODY_SIZE} unexpected bytes after the END section`);
    }
  }

  private async readAt(b: Buffer, pos: number): Promise<number> {
    try {
      return await this.source.read(b, pos);
    } catch (e) {
      throw this.readError(e, pos);
    }
  }

  private async readExact(b: Buffer, pos: number): Promise<void> {
    expectWhole(b, pos, await this.readAt(b, pos));
  }

  /**
   * Read a header (or a plain body of at most SMALL_BODY bytes) whole: synchronously when the
   * source can (SnapshotSource.readSync), the event loop getting a turn every YIELD_EVERY reads. Returns a
   * promise only when the caller has to wait, so a walk over many headers runs as a plain loop.
   */
  private readSmall(b: Buffer, pos: number): Promise<void> | undefined {
    if (!this.source.readSync) return this.readExact(b, pos);
    expectWhole(b, pos, this.readNow(b, pos));
    if (++this.smallReads % YIELD_EVERY === 0) return new Promise<void>((resolve) => setImmediate(resolve));
    return undefined;
  }

  private smallReads = 0;

  /** source.readSync, its failure as readAt's. */
  private readNow(b: Buffer, pos: number): number {
    try {
      return this.source.readSync!(b, pos);
    } catch (e) {
      throw this.readError(e, pos);
    }
  }

  /** A failed read as a VfioError of kind 'syscall' (errors that already are VfioErrors pass). */
  private readError(e: unknown, pos: number): unknown {
    const what = `reading snapshot ${this.path} at offset ${pos} failed`;
    if (e instanceof VfioError && e.kind === 'syscall' && e.syscall && !e.path) {
      // A binding's pread failing: the same words as fs's, with its syscall and errno.
      e.message = `${what}: ${e.code}`;
      return e.annotate({ path: this.path });
    }
    return fsError(e, what, { syscall: 'read', path: this.path });
  }
}

/** What an end chunk at `pos` whose chunk-table checksum or total does not match says. */
export function tableMismatch(pos: number): string {
  return `chunk table checksum or total mismatch at offset ${pos} (chunks lost, reordered or altered)`;
}

/** A read of `n` bytes into `b` at `pos` that had to fill it: EVFIO_SNAPSHOT_TRUNCATED when short. */
function expectWhole(b: Buffer, pos: number, n: number): void {
  if (n !== b.length) throw truncated(`expected ${b.length} bytes at offset ${pos}, got ${n}`);
}

function truncated(why: string): VfioError {
  return f.formatError(`snapshot truncated: ${why}`, 'EVFIO_SNAPSHOT_TRUNCATED');
}

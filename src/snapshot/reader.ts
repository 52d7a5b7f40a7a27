/**
 * Reading and validating a snapshot file (format: ./format.ts, docs/snapshot-format.md).
 *
 * `SnapshotReader.open()` checks everything that can be checked without reading the state
 * streams' payloads: the file header, every section header, every plain body's crc32, the
 * chain of chunk headers of every chunked section (lengths within the file, the end chunk's
 * total and chunk-table crc), the END section and the skeleton crc32 over all of it, and that
 * every required section is of a known type. Chunk payloads are checked as they are streamed
 * (`chunks()`): each chunk's crc32 is verified before the chunk is handed out, so a corrupted
 * chunk never reaches a device.
 *
 * Any malformed input ends in a `VfioError` of kind 'format' — never a crash or a hang: every
 * loop advances through the file and every length is bounded by the file size and MAX_CHUNK.
 */
import * as fs from 'node:fs';
import { VfioError } from '../errors';
import * as f from './format';

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
    readonly path: string,
    private readonly fh: fs.promises.FileHandle,
  ) {}

  /** Open and validate a snapshot. Errors: VfioError kind 'format' (EVFIO_BAD_SNAPSHOT, EVFIO_SNAPSHOT_TRUNCATED, EVFIO_SNAPSHOT_VERSION, EVFIO_SNAPSHOT_UNSUPPORTED) or an open error. */
  static async open(file: string): Promise<SnapshotReader> {
    let fh: fs.promises.FileHandle;
    try {
      fh = await fs.promises.open(file, fs.constants.O_RDONLY);
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      throw new VfioError(`cannot open snapshot ${file}: ${err.code}`, {
        code: err.code ?? 'EIO', errno: Math.abs(err.errno ?? 5), syscall: 'open', path: file, kind: 'syscall', cause: e,
      });
    }
    const r = new SnapshotReader(file, fh);
    try {
      await r.validate();
    } catch (e) {
      await r.close();
      if (e instanceof VfioError) e.annotate({ path: file, step: 'snapshot:validate' });
      if (e instanceof VfioError && !e.message.includes(file)) e.message = `${file}: ${e.message}`;
      throw e;
    }
    return r;
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
   * Buffer is a view of it, valid until the next iteration). Each chunk's crc32 is checked
   * before it is yielded; the chunk table crc and total at the end. A mismatch throws
   * EVFIO_SNAPSHOT_CHECKSUM naming the chunk's offset.
   */
  async *chunks(entry: SectionEntry, buf: Buffer = Buffer.allocUnsafe(f.DEFAULT_CHUNK)): AsyncGenerator<Buffer> {
    if (!entry.chunks) throw new VfioError('not a chunked section', { code: 'EVFIO_WRITER_STATE', kind: 'usage' });
    let pos = entry.bodyAt;
    const hdr = Buffer.alloc(f.CHUNK_HEADER_SIZE);
    for (let i = 0; i < entry.chunks.count; i++) {
      await this.readExact(hdr, pos);
      const len = hdr.readUInt32LE(0);
      const crc = hdr.readUInt32LE(4);
      if (len > buf.length) buf = Buffer.allocUnsafe(len);
      const view = buf.subarray(0, len);
      await this.readExact(view, pos + f.CHUNK_HEADER_SIZE);
      if (f.crc32(view) !== crc) {
        throw new VfioError(`${this.path}: checksum mismatch in chunk ${i} of the ${f.sectionTypeName(entry.header.type)} section (file offset ${pos})`, {
          code: 'EVFIO_SNAPSHOT_CHECKSUM', kind: 'format', path: this.path,
        });
      }
      pos += f.CHUNK_HEADER_SIZE + len;
      yield view;
    }
  }

  async close(): Promise<void> {
    await this.fh.close().catch(() => undefined);
  }

  // ------------------------------------------------------------------ validation
  private async validate(): Promise<void> {
    this.size = (await this.fh.stat()).size;
    const head = Buffer.alloc(f.FILE_HEADER_SIZE);
    const n = await this.readAt(head, 0);
    this.header = f.decodeFileHeader(head.subarray(0, n));
    let skeleton = f.crc32(head);
    let pos = f.FILE_HEADER_SIZE;
    const sh = Buffer.alloc(f.SECTION_HEADER_SIZE);
    for (;;) {
      if (pos + f.SECTION_HEADER_SIZE > this.size) throw truncated(`the file ends at ${this.size} before an END section`);
      await this.readExact(sh, pos);
      const header = f.decodeSectionHeader(sh, pos);
      if (header.type === f.SectionType.END) {
        await this.checkEnd(header, pos, skeleton);
        return;
      }
      skeleton = f.crc32(sh, skeleton);
      // An optional section with reserved flag bits is skipped like one of an unknown type.
      const unknown = !KNOWN_TYPES.has(header.type) || (header.flags & ~f.KNOWN_SECTION_FLAGS) !== 0;
      if (unknown && header.flags & f.SECTION_FLAG_REQUIRED) {
        throw f.formatError(`required section of unknown type ${header.type} at offset ${pos}: this snapshot needs a newer node-vfio-pci`, 'EVFIO_SNAPSHOT_UNSUPPORTED');
      }
      const entry: SectionEntry = { header, at: pos, bodyAt: pos + f.SECTION_HEADER_SIZE, unknown };
      if (header.flags & f.SECTION_FLAG_CHUNKED) {
        const walked = await this.walkChunks(entry.bodyAt, skeleton);
        entry.chunks = { count: walked.count, total: walked.total };
        skeleton = walked.skeleton;
        pos = walked.end;
      } else {
        if (entry.bodyAt + header.length > this.size) throw truncated(`section ${f.sectionTypeName(header.type)} at ${pos} needs ${header.length} bytes`);
        const body = Buffer.alloc(header.length);
        await this.readExact(body, entry.bodyAt);
        if (f.crc32(body) !== header.crc) {
          throw new VfioError(`checksum mismatch in the ${f.sectionTypeName(header.type)} section at offset ${pos}`, { code: 'EVFIO_SNAPSHOT_CHECKSUM', kind: 'format' });
        }
        skeleton = f.crc32(body, skeleton);
        if (!unknown) this.plain.set(entry, body);
        pos = entry.bodyAt + header.length;
      }
      this.sections.push(entry);
    }
  }

  private async walkChunks(start: number, skeleton: number): Promise<{ count: number; total: number; end: number; skeleton: number }> {
    const hdr = Buffer.alloc(f.END_CHUNK_SIZE);
    let pos = start;
    let table = 0;
    let total = 0;
    let count = 0;
    for (;;) {
      if (pos + f.CHUNK_HEADER_SIZE > this.size) throw truncated(`a chunk header at ${pos} is cut off`);
      await this.readExact(hdr.subarray(0, f.CHUNK_HEADER_SIZE), pos);
      const len = hdr.readUInt32LE(0);
      if (len === 0) {
        if (pos + f.END_CHUNK_SIZE > this.size) throw truncated(`the end chunk at ${pos} is cut off`);
        await this.readExact(hdr, pos);
        skeleton = f.crc32(hdr, skeleton);
        if (hdr.readUInt32LE(4) !== table >>> 0 || Number(hdr.readBigUInt64LE(8)) !== total) {
          throw new VfioError(`chunk table checksum or total mismatch at offset ${pos} (chunks lost, reordered or altered)`, { code: 'EVFIO_SNAPSHOT_CHECKSUM', kind: 'format' });
        }
        return { count, total, end: pos + f.END_CHUNK_SIZE, skeleton };
      }
      if (len > f.MAX_CHUNK) throw f.formatError(`chunk at ${pos} claims ${len} bytes, over the ${f.MAX_CHUNK}-byte limit`);
      if (pos + f.CHUNK_HEADER_SIZE + len > this.size) throw truncated(`chunk at ${pos} needs ${len} bytes`);
      const h = hdr.subarray(0, f.CHUNK_HEADER_SIZE);
      table = f.crc32(h, table);
      skeleton = f.crc32(h, skeleton);
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
    await this.readExact(body, bodyAt);
    if (f.crc32(body) !== header.crc) throw f.formatError('END section checksum mismatch');
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
    let off = 0;
    while (off < b.length) {
      const { bytesRead } = await this.fh.read(b, off, b.length - off, pos + off);
      if (bytesRead === 0) break;
      off += bytesRead;
    }
    return off;
  }

  private async readExact(b: Buffer, pos: number): Promise<void> {
    const n = await this.readAt(b, pos);
    if (n !== b.length) throw truncated(`expected ${b.length} bytes at offset ${pos}, got ${n}`);
  }
}

function truncated(why: string): VfioError {
  return f.formatError(`snapshot truncated: ${why}`, 'EVFIO_SNAPSHOT_TRUNCATED');
}

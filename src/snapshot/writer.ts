/**
 * Writing a snapshot file so that nothing is ever half-written: the file is built under a
 * temporary name in the destination directory, fsynced, renamed over the destination, and the
 * directory fsynced (the rename is durable). `abort()` (and any failure inside `commit()`)
 * removes the temporary file; the destination is untouched until the rename.
 *
 * All writes are positional (pwrite at the writer's own position; the fd's offset is unused),
 * so the chunks of a section can be written straight into the file by the data pump
 * (`Pump.writeRecords`, src/kernel/pump) from `framedStart()` on and then accounted with
 * `commitFramed()`: the writer stays the only owner of its position and checksums.
 *
 * Files are written in format version 2 with CRC-32C (or `checksum`), named in the header.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { VfioError, fsError } from '../base/errors';
import * as f from './format';
import { checkSnapshotTarget } from './target';
import { logger } from '../base/log';

const log = logger('snapshot');

export interface WriterOptions {
  /** ms since the epoch recorded in the header (default: now). */
  created?: number;
  /** Skip the fsyncs (tests on tmpfs). Default false. */
  noSync?: boolean;
  /**
   * Permission bits of the file, whatever the umask (default 0o600: device state is guest data —
   * framebuffers, NIC queues, keys — and libvirt writes its save images 0600 too).
   */
  mode?: number;
  /** The checksum algorithm of the file (default 'crc32c'), recorded in its header. */
  checksum?: f.ChecksumAlgorithm;
  /**
   * The file calls the writer makes (default: node:fs/promises). For tests that trace them (the
   * order of fsync and rename) or make them fail (EIO, ENOSPC); see {@link WriterFiles}.
   */
  files?: WriterFiles;
}

/**
 * The file-system calls of a writer, a narrow view of node:fs/promises: `open` of the temporary
 * file (O_WRONLY | O_CREAT | O_EXCL, mode 0o600) and of its directory for the fsync after the
 * rename (O_RDONLY | O_DIRECTORY), `rename` over the destination, `unlink` of the temporary file.
 * Errors are Node's (`code`, `errno`, `syscall`), which the writer turns into VfioErrors.
 */
export interface WriterFiles {
  open(path: string, flags: number, mode?: number): Promise<WriterFile>;
  rename(from: string, to: string): Promise<void>;
  unlink(path: string): Promise<void>;
}

/** What the writer does with an open file: the part of fs.promises.FileHandle it uses. */
export interface WriterFile {
  readonly fd: number;
  chmod(mode: number): Promise<void>;
  /** pwrite(2) of `length` bytes of `buffer` from `offset` at file position `position`; may be short. */
  write(buffer: Buffer, offset: number, length: number, position: number): Promise<{ bytesWritten: number }>;
  sync(): Promise<void>;
  close(): Promise<void>;
}

const nodeFiles: WriterFiles = {
  open: (p, flags, mode) => fs.promises.open(p, flags, mode),
  rename: (from, to) => fs.promises.rename(from, to),
  unlink: (p) => fs.promises.unlink(p),
};

/** A Node fs error of `op` on `file` as a VfioError (errors.ts fsError); anything else unchanged. */
function ioError(e: unknown, op: string, file: string, step = 'snapshot:write'): unknown {
  return fsError(e, `${op} of snapshot ${file} failed`, { syscall: op, path: file, step });
}

export class SnapshotWriter {
  private pos = 0;
  private skeleton = 0;
  private sections = 0;
  private chunked?: { table: number; total: number; count: number; headerAt: number };
  private done = false;

  private constructor(
    readonly finalPath: string,
    readonly tempPath: string,
    private readonly fh: WriterFile,
    private readonly opts: WriterOptions,
    private readonly files: WriterFiles,
  ) {}

  /**
   * Create the temporary file next to `finalPath` and write the file header. `finalPath` is
   * checked first (./target.ts): only a regular file is ever replaced, never a link, and its
   * directory must exist and be writable.
   */
  static async create(finalPath: string, opts: WriterOptions = {}): Promise<SnapshotWriter> {
    checkSnapshotTarget(finalPath);
    const dir = path.dirname(path.resolve(finalPath));
    const tempPath = path.join(dir, `.${path.basename(finalPath)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
    const files = opts.files ?? nodeFiles;
    let fh: WriterFile;
    try {
      // Node opens every file with O_CLOEXEC.
      fh = await files.open(tempPath, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
    } catch (e) {
      throw ioError(e, 'open', tempPath);
    }
    try {
      // The umask only narrows open()'s mode: fchmod sets exactly the one asked for.
      await fh.chmod(opts.mode ?? 0o600);
    } catch (e) {
      await fh.close().catch(() => undefined);
      await files.unlink(tempPath).catch(() => undefined);
      throw ioError(e, 'fchmod', tempPath);
    }
    const w = new SnapshotWriter(finalPath, tempPath, fh, opts, files);
    try {
      await w.put(f.encodeFileHeader(opts.created ?? Date.now(), w.checksum), true);
    } catch (e) {
      await w.abort();
      throw e;
    }
    return w;
  }

  /** The checksum algorithm of every checksum in the file (a pump writing chunks uses it too). */
  get checksum(): f.ChecksumAlgorithm {
    return this.opts.checksum ?? f.DEFAULT_FILE_CHECKSUM;
  }

  /** The temporary file's fd (for a pump writing chunks). */
  get fd(): number {
    return this.fh.fd;
  }

  /** True when commit() makes the file durable (fsync of the file and its directory): not `noSync`. */
  get durable(): boolean {
    return !this.opts.noSync;
  }

  /** Bytes written so far. */
  get bytesWritten(): number {
    return this.pos;
  }

  /** Write a plain section: header with the body's length and checksum, then the body. */
  async writeSection(type: f.SectionType, device: number, body: Buffer, required = true): Promise<void> {
    this.assertOpen(false);
    const flags = required ? f.SECTION_FLAG_REQUIRED : 0;
    await this.put(f.encodeSectionHeader({ type, flags, device, length: body.length, crc: f.sum(this.checksum, body) }, this.checksum), true);
    await this.put(body, true);
    this.sections++;
  }

  /** Start a chunked section; then `writeChunk()` (or `beginChunk()`/`endChunk()`) and `endSection()`. */
  async beginSection(type: f.SectionType, device: number, required = true): Promise<void> {
    this.assertOpen(false);
    const flags = (required ? f.SECTION_FLAG_REQUIRED : 0) | f.SECTION_FLAG_CHUNKED;
    const headerAt = this.pos;
    await this.put(f.encodeSectionHeader({ type, flags, device, length: 0, crc: 0 }, this.checksum), true);
    this.chunked = { table: 0, total: 0, count: 0, headerAt };
  }

  /** Append one chunk whose payload is `data` (not kept after the promise settles). Empty data is skipped. */
  async writeChunk(data: Buffer): Promise<void> {
    if (data.length === 0) return;
    const crc = f.sum(this.checksum, data);
    const hdr = this.chunkHeader(data.length, crc);
    await this.put(hdr, true);
    await this.put(data, false);
  }

  /**
   * Where a pump writes the next chunks of the open chunked section (`Pump.writeRecords`, no
   * prefix, the writer's `checksum`), and the running checksums it continues over their 8-byte
   * headers: `offset` (the file offset of the next chunk header: the pump's `dstOffset`),
   * `tableCrc` (the section's chunk table so far) and `skeletonCrc` (the file's skeleton so
   * far). Nothing else may write until `commitFramed()`.
   */
  framedStart(): { offset: number; tableCrc: number; skeletonCrc: number } {
    this.assertOpen(true);
    return { offset: this.pos, tableCrc: this.chunked!.table, skeletonCrc: this.skeleton };
  }

  /**
   * Account the chunks a pump wrote from `framedStart()` on: the position advances by
   * `written`, the section's total by `bytes` and its chunk count by `chunks`; the chunk-table
   * and skeleton checksums become the pump's. A result whose sizes do not
   * add up (`written` ≠ `bytes` + 8 × `chunks`, or more chunks than payload bytes) is refused
   * (EVFIO_WRITER_STATE) and nothing changes.
   */
  commitFramed(r: { bytes: number; chunks: number; written: number; tableCrc: number; skeletonCrc: number }): void {
    this.assertOpen(true);
    if (r.written !== r.bytes + f.CHUNK_HEADER_SIZE * r.chunks || r.chunks > r.bytes || (r.bytes > 0 && r.chunks === 0)) {
      throw new VfioError(`framed write of ${r.chunks} chunks, ${r.bytes} payload bytes and ${r.written} bytes in all does not add up`, {
        code: 'EVFIO_WRITER_STATE', kind: 'usage',
      });
    }
    const c = this.chunked!;
    c.table = r.tableCrc >>> 0;
    c.total += r.bytes;
    c.count += r.chunks;
    this.skeleton = r.skeletonCrc >>> 0;
    this.pos += r.written;
  }

  /** Finish the current chunked section with its end chunk: its payload bytes and chunk count. */
  async endSection(): Promise<{ bytes: number; chunks: number }> {
    this.assertOpen(true);
    const c = this.chunked!;
    this.chunked = undefined;
    await this.put(f.encodeEndChunk(c.table, c.total), true);
    this.sections++;
    return { bytes: c.total, chunks: c.count };
  }

  /**
   * Write the END section, fsync, rename over the destination, fsync the directory. On any
   * failure the temporary file is removed and the error rethrown. `signal`, aborted before the
   * rename, cancels the commit the same way (its AbortError rethrown, nothing renamed).
   */
  async commit(signal?: AbortSignal): Promise<void> {
    this.assertOpen(false);
    try {
      const endAt = this.pos;
      const body = f.encodeEndBody({ endOffset: endAt, skeletonCrc: this.skeleton, sections: this.sections });
      await this.put(
        f.encodeSectionHeader({ type: f.SectionType.END, flags: f.SECTION_FLAG_REQUIRED, device: f.FILE_WIDE, length: body.length, crc: f.sum(this.checksum, body) }, this.checksum),
        false,
      );
      await this.put(body, false);
      const t0 = performance.now();
      if (!this.opts.noSync) await this.fh.sync();
      await this.fh.close();
      this.done = true;
      const t1 = performance.now();
      signal?.throwIfAborted();
      checkSnapshotTarget(this.finalPath, 'snapshot:commit'); // nothing but a regular file appeared there meanwhile
      await this.files.rename(this.tempPath, this.finalPath);
      const t2 = performance.now();
      if (!this.opts.noSync) await syncDir(this.files, path.dirname(path.resolve(this.finalPath)));
      log('%s: fsync %s ms, rename %s ms, directory fsync %s ms (%d bytes)', this.finalPath, (t1 - t0).toFixed(1), (t2 - t1).toFixed(1), (performance.now() - t2).toFixed(1), this.pos);
    } catch (e) {
      log('commit of %s failed: %s', this.finalPath, (e as Error)?.message ?? e);
      await this.abort();
      throw ioError(e, 'commit', this.tempPath, 'snapshot:commit');
    }
  }

  /** Close and remove the temporary file. Idempotent; never throws. */
  async abort(): Promise<void> {
    if (!this.done) {
      this.done = true;
      await this.fh.close().catch(() => undefined);
    }
    await this.files.unlink(this.tempPath).catch(() => undefined);
  }

  private chunkHeader(length: number, crc: number): Buffer {
    this.assertOpen(true);
    if (length > f.MAX_CHUNK) throw new RangeError(`chunk of ${length} bytes is over the ${f.MAX_CHUNK}-byte limit`);
    const hdr = f.encodeChunkHeader(length, crc);
    const c = this.chunked!;
    c.table = f.sum(this.checksum, hdr, c.table);
    c.total += length;
    c.count++;
    return hdr;
  }

  private assertOpen(inChunked: boolean): void {
    if (this.done) throw new VfioError('snapshot writer is closed', { code: 'EVFIO_CLOSED', kind: 'usage' });
    if (inChunked !== (this.chunked !== undefined)) {
      throw new VfioError(inChunked ? 'no chunked section is open' : 'a chunked section is still open', { code: 'EVFIO_WRITER_STATE', kind: 'usage' });
    }
  }

  /** Append `b` at the writer's position; `skeleton` says whether it counts towards the END checksum. */
  private async put(b: Buffer, skeleton: boolean): Promise<void> {
    let off = 0;
    try {
      while (off < b.length) {
        const { bytesWritten } = await this.fh.write(b, off, b.length - off, this.pos + off);
        off += bytesWritten;
      }
    } catch (e) {
      throw ioError(e, 'write', this.tempPath);
    }
    if (skeleton) this.skeleton = f.sum(this.checksum, b, this.skeleton);
    this.pos += b.length;
  }
}

async function syncDir(files: WriterFiles, dir: string): Promise<void> {
  const d = await files.open(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
  try {
    await d.sync();
  } finally {
    await d.close();
  }
}

/** `vfio-pci inspect`: what a snapshot file holds, and whether every checksum holds. */
import { VfioError } from '../base/errors';
import * as f from './format';
import { SnapshotReader, type OpenOptions } from './reader';
import { flagNames, MIGRATION_FLAG_NAMES } from '../kernel/uapi/vfio';
import { CHECKSUM_TITLES, isChecksumAlgorithm } from '../kernel/pump/checksum';

export interface Inspection {
  file: string;
  ok: boolean;
  /** The first problem found, when not ok. */
  error?: { code: string; message: string };
  version?: number;
  /** The checksum algorithm of the file ('crc32c', 'crc32'). */
  checksum?: string;
  created?: string;
  size?: number;
  sections: Array<{ offset: number; type: string; device: number | null; required: boolean; chunked: boolean; bytes: number; chunks?: number; checksum: 'ok' | 'bad' | 'unchecked' }>;
  devices: Array<{ index: number; name: string; identity: string; migrationFlags: string[]; configBytes: number; stateBytes: number }>;
}

/**
 * Validate `file` fully (every chunk's checksum too) and describe it. Never throws for a bad file.
 * `opts.binding`: read headers through it (SnapshotReader.open); the verdict is the same.
 */
export async function inspectSnapshot(file: string, opts: OpenOptions = {}): Promise<Inspection> {
  const res: Inspection = { file, ok: false, sections: [], devices: [] };
  let reader: SnapshotReader | undefined;
  try {
    reader = await SnapshotReader.open(file, opts);
    res.version = reader.header.version;
    res.checksum = reader.checksum;
    res.created = new Date(reader.header.created).toISOString();
    res.size = reader.size;
    for (const s of reader.sections) {
      res.sections.push({
        offset: s.at,
        type: f.sectionTypeName(s.header.type),
        device: s.header.device === f.FILE_WIDE ? null : s.header.device,
        required: (s.header.flags & f.SECTION_FLAG_REQUIRED) !== 0,
        chunked: s.chunks !== undefined,
        bytes: s.chunks ? s.chunks.total : s.header.length,
        chunks: s.chunks?.count,
        checksum: s.chunks ? 'unchecked' : 'ok',
      });
    }
    for (const d of reader.devices()) {
      res.devices.push({
        index: d.index,
        name: d.record.name,
        identity: f.describeIdentity(d.record.identity),
        migrationFlags: flagNames(d.record.migrationFlags, MIGRATION_FLAG_NAMES),
        configBytes: d.config.length,
        stateBytes: d.state?.chunks?.total ?? 0,
      });
    }
    for (const [i, s] of reader.sections.entries()) {
      if (!s.chunks) continue;
      res.sections[i].checksum = 'bad';
      for await (const _ of reader.chunks(s)) void _;
      res.sections[i].checksum = 'ok';
    }
    res.ok = true;
  } catch (e) {
    if (!(e instanceof VfioError)) throw e;
    res.error = { code: e.code, message: e.message };
  } finally {
    await reader?.close();
  }
  return res;
}

export function formatInspection(r: Inspection): string {
  const lines = [`${r.file}: ${r.ok ? 'OK' : `INVALID (${r.error?.code})`}`];
  if (r.version !== undefined) {
    const alg = r.checksum && isChecksumAlgorithm(r.checksum) ? CHECKSUM_TITLES[r.checksum] : r.checksum;
    lines.push(`  format version ${r.version}, checksums ${alg}, created ${r.created}, ${r.size} bytes`);
  }
  for (const s of r.sections) {
    const chunks = s.chunks !== undefined ? `, ${s.chunks} chunks` : '';
    lines.push(`  @${s.offset} ${s.type.padEnd(12)} device ${s.device ?? '-'} ${s.required ? 'required' : 'optional'} ${s.bytes} bytes${chunks}  checksum ${s.checksum}`);
  }
  for (const d of r.devices) {
    lines.push(`  device ${d.index}: ${d.name} ${d.identity}, migration ${d.migrationFlags.join('|')}, config ${d.configBytes} B, state ${d.stateBytes} B`);
  }
  if (!r.ok && r.error) lines.push(`  error: ${r.error.message}`);
  return lines.join('\n') + '\n';
}

/**
 * The snapshot file as a device-state stream (src/engine/stream.ts): `SnapshotFileSink` writes a
 * save into a SnapshotWriter, `SnapshotFileSource` loads from a validated SnapshotReader.
 *
 * Sections written (docs/snapshot-format.md), device i being the engine's device i:
 *   DEVICE i, CONFIG i         for every device, first (StateSink.begin)
 *   DEVICE_STATE i             the device's saving session, chunked (writeState … endState)
 *   PCI_MODEL i                the device model's state, last (writeModel)
 * A reader takes the sections in any order. The DEVICE record's name field holds the device's
 * id, which a load pairs devices by.
 */
import { VfioError } from '../base/errors';
import type { DataFdTarget, LoadTargets, SavedDevice, StateSink, StateSource, WriteStateOptions } from '../engine/stream';
import type { DeviceRecord } from '../model/migratable';
import { identityFromConfig } from '../model/pci/identity';
import * as f from './format';
import type { DeviceSections, SnapshotReader } from './reader';
import { loadStateSection, saveStateSection } from './state-io';
import type { SnapshotWriter } from './writer';
import { logger } from '../base/log';

const log = logger('snapshot');

/** A save into a snapshot file. The writer stays its creator's: it commits (or aborts) it. */
export class SnapshotFileSink implements StateSink {
  private open?: number;

  constructor(readonly writer: SnapshotWriter) {}

  get name(): string {
    return this.writer.finalPath;
  }

  async begin(records: readonly DeviceRecord[]): Promise<void> {
    for (const [i, r] of records.entries()) {
      await this.writer.writeSection(f.SectionType.DEVICE, i, f.encodeDeviceRecord({ identity: r.identity, migrationFlags: r.migrationFlags, name: r.id }));
      await this.writer.writeSection(f.SectionType.CONFIG, i, r.config);
    }
  }

  async writeState(index: number, from: DataFdTarget, opts: WriteStateOptions = {}): Promise<{ bytes: number; end: 'eof' | 'for-now' }> {
    if (this.open !== index) {
      if (this.open !== undefined) throw new VfioError(`state of device ${this.open} is still open`, { code: 'EVFIO_WRITER_STATE' });
      await this.writer.beginSection(f.SectionType.DEVICE_STATE, index);
      this.open = index;
    }
    const { bytes } = await saveStateSection(from.binding, from.fd, this.writer, { bufferSize: from.bufferSize, device: from.device, onProgress: opts.onProgress, signal: opts.signal, precopy: opts.precopy });
    return { bytes, end: opts.precopy ? 'for-now' : 'eof' };
  }

  async endState(index: number): Promise<void> {
    if (this.open !== index) throw new VfioError(`no state section of device ${index} is open`, { code: 'EVFIO_WRITER_STATE' });
    this.open = undefined;
    await this.writer.endSection();
  }

  async writeModel(index: number, body: Buffer): Promise<void> {
    await this.writer.writeSection(f.SectionType.PCI_MODEL, index, body);
  }

  async finish(): Promise<void> {}

  async abort(reason: unknown): Promise<void> {
    log('abandoning %s: %s', this.writer.tempPath, (reason as Error)?.message ?? reason);
    await this.writer.abort();
  }
}

/** The record a DEVICE + CONFIG section pair describes. */
export function recordOfSections(d: DeviceSections): DeviceRecord {
  return { id: d.record.name, identity: d.record.identity, migrationFlags: d.record.migrationFlags, config: d.config };
}

/** A load from a validated snapshot file. The reader stays its opener's: it closes it. */
export class SnapshotFileSource implements StateSource {
  private readonly entries: DeviceSections[];

  constructor(readonly reader: SnapshotReader) {
    this.entries = reader.devices();
    for (const d of this.entries) {
      if (!d.state?.chunks) throw f.formatError(`${reader.path}: device ${d.index} (${d.record.name}) has no DEVICE_STATE section`);
      // The identity in DEVICE must be that of the CONFIG it comes with.
      const cfg = f.identityDiff(d.record.identity, identityFromConfig(d.config));
      if (cfg.length) throw f.formatError(`${reader.path}: device ${d.index}: the DEVICE record disagrees with its CONFIG section (${cfg.join('; ')})`);
    }
  }

  get name(): string {
    return this.reader.path;
  }

  devices(): SavedDevice[] {
    return this.entries.map((d) => ({ index: d.index, record: recordOfSections(d), model: d.model, stateBytes: d.state!.chunks!.total }));
  }

  async load(targets: LoadTargets, opts: { signal?: AbortSignal } = {}): Promise<Map<number, { model?: Buffer; bytes: number }>> {
    const out = new Map<number, { model?: Buffer; bytes: number }>();
    for (const d of this.entries) {
      const t = targets.target(d.index);
      const { bytes } = await loadStateSection(t.binding, this.reader, d.state!, t.fd, {
        bufferSize: t.bufferSize, device: t.device, onProgress: (b) => targets.progress(d.index, b), signal: opts.signal,
      });
      out.set(d.index, { model: d.model, bytes });
    }
    return out;
  }
}

/**
 * `MigrationCoordinator`: what a VMM uses to pause, snapshot, restore and resume the VFIO devices
 * of one VM — the migration engine (src/engine/engine.ts, where the rules are: P2P order,
 * blockers, pairing by id, checks before touching, recovery) over its `VfioPciDevice`s, plus the
 * snapshot file as the stream. `save(sink)` / `load(source)` take any device-state stream.
 */
import { MigrationEngine, type EngineOptions, type LoadOptions, type LoadResult, type SaveOptions, type SaveResult } from '../engine/engine';
import type { VfioPciDevice } from '../model/vfio-pci';
import { SnapshotFileSink, SnapshotFileSource } from '../snapshot/file-stream';
import { SnapshotReader } from '../snapshot/reader';
import { SnapshotWriter, type WriterOptions } from '../snapshot/writer';

export type CoordinatorOptions = EngineOptions;

export class MigrationCoordinator extends MigrationEngine {
  /**
   * @param devices the VM's device models, each with a unique attach id (events, errors and
   *   snapshots name them by it; a restore pairs them with the saved devices by it)
   */
  constructor(
    override readonly devices: readonly VfioPciDevice[],
    opts: CoordinatorOptions = {},
  ) {
    super(devices, opts);
  }

  /**
   * Save every (paused) device into the snapshot file `file`: it appears complete, durable
   * (fsync, rename, directory fsync) or not at all. The devices stay in STOP. Errors as
   * `save()`, plus the file's (`open`, `write`, `fsync`, `rename`, with its path).
   */
  async snapshot(file: string, opts: WriterOptions & SaveOptions = {}): Promise<SaveResult & { file: string }> {
    const writer = await SnapshotWriter.create(file, opts);
    try {
      const r = await this.save(new SnapshotFileSink(writer), opts);
      await writer.commit();
      return { ...r, file };
    } catch (e) {
      await writer.abort();
      throw e;
    }
  }

  /**
   * Restore the VM's devices (each freshly attached with `assignBars: false`) from the snapshot
   * file `file`, paired by id. The file is validated (structure and every checksum but the
   * state chunks', which are checked as each chunk is loaded, before it reaches the device), and
   * every device checked, before any is touched. The devices are left in RESUMING; `resume()`
   * runs them. Errors as `load()`, plus the file's.
   */
  async restore(file: string, opts: LoadOptions = {}): Promise<LoadResult> {
    const reader = await SnapshotReader.open(file, { binding: this.devices[0]?.device.binding });
    try {
      return await this.load(new SnapshotFileSource(reader), opts);
    } finally {
      await reader.close();
    }
  }
}

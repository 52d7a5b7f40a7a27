/**
 * `MigrationCoordinator`: what a VMM uses to pause, snapshot, restore, resume and live-migrate
 * the VFIO devices of one VM — the migration engine (src/engine/engine.ts, where the rules are:
 * P2P order, blockers, pairing by id, checks before touching, recovery) over its
 * `VfioPciDevice`s, with the snapshot file (snapshot/restore) and the live stream
 * (migrate/incoming) as the device-state streams. `save(sink)` / `load(source)` take any stream.
 */
import { MigrationEngine, type EngineOptions, type LoadOptions, type LoadResult, type SaveOptions, type SaveResult } from '../engine/engine';
import { acceptLink, connectLink, type Endpoint, type LinkTransportOptions } from '../live/link';
import type { Listener } from '../live/listener';
import { LiveMigration, receiveMigration, type IncomingOptions, type IncomingResult, type MigrateOptions } from '../live/migration';
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
   * Start a live migration of the VM's devices to `to`: a `tcp:HOST:PORT` or `unix:PATH` URI
   * (with `tls` for mutual certificate authentication), a connected socket fd the VMM hands
   * over, a Duplex (the VMM's own migration channel; bytes then pass through JavaScript), or a
   * transport Channel. Resolves once the destination has accepted the devices (it checks them
   * before the source touches anything) and every device with PRE_COPY is in PRE_COPY: the VMM
   * then iterates (`iterate()`, `pending()`, the `switchover-ready` event) and switches over, or
   * calls `run()`. See src/live/migration.ts. Errors: the destination's refusal
   * (EVFIO_PEER_REFUSED), the connection's, the engine's blockers, the destination's ERROR or a
   * protocol error on the return path before this resolves (later ones cancel the migration:
   * the `cancelled` event); the devices run on.
   */
  async migrate(to: Endpoint, opts: MigrateOptions & LinkTransportOptions = {}): Promise<LiveMigration> {
    return LiveMigration.start(this, () => connectLink(to, opts), opts);
  }

  /**
   * Receive a live migration into the VM's devices (each freshly attached with `assignBars:
   * false`) from `from`: a Listener (the one connection it accepts), or a connection as for
   * migrate(). Resolves when every device holds the migrated state with its model applied, in
   * RESUMING (or running, with `resume`); LOADED has then been written to the source. A failure
   * before the devices run resets every device, tells the source when it still can (ERROR, or
   * CANCEL for a cancel; the source then resumes its own) and throws; docs/live-protocol.md
   * "Failure: who sends what" has each case, and "After END" the ones the source cannot know.
   */
  async incoming(from: Listener | Endpoint, opts: IncomingOptions & LinkTransportOptions = {}): Promise<IncomingResult> {
    return receiveMigration(this, await this.untouchedOnFailure(acceptLink(from, opts)), opts);
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


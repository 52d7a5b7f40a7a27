/**
 * Live migration of devices on their own (no device model): the CLI's `migrate` and `incoming`
 * jobs, thin callers of the migration engine over `BareDevice`s and the live stream
 * (src/live/migration.ts, docs/live-protocol.md). A VMM migrates its VfioPciDevices with
 * `MigrationCoordinator.migrate()` / `incoming()` instead, which carries their device-model state.
 */
import { MigrationEngine } from '../engine/engine';
import { BareDevice } from '../model/bare';
import { acceptLink, connectLink, type Endpoint, type FrameLink, type LinkTransportOptions } from '../live/link';
import type { Listener } from '../live/listener';
import { LiveMigration, receiveMigration, type IncomingOptions, type IncomingResult, type MigrateOptions, type MigrationResult } from '../live/migration';
import type { JobDevice, JobOptions } from './jobs';
import { VfioDevice } from '../kernel/device';

export interface MigrateJobOptions extends MigrateOptions, LinkTransportOptions, Pick<JobOptions, 'onState' | 'onProgress' | 'allowNonP2P' | 'bufferSize'> {
  /** After a successful migration, run the source devices again instead of leaving them in STOP. */
  resumeSource?: boolean;
  /** Called with the migration once it started (for its events, or to cancel it). */
  onStart?: (m: LiveMigration) => void;
  /** Called before the switchover (the VMM would stop its vCPUs here). */
  beforeSwitchover?: () => Promise<void> | void;
}

export interface ReceiveJobOptions extends IncomingOptions, LinkTransportOptions, Pick<JobOptions, 'onState' | 'onProgress' | 'allowNonP2P' | 'bufferSize'> {}

function engineOf(devices: readonly JobDevice[], opts: Pick<JobOptions, 'onState' | 'onProgress' | 'allowNonP2P' | 'bufferSize'>): MigrationEngine {
  const units = devices.map((d) => (d instanceof VfioDevice ? new BareDevice(d, d.name, opts.bufferSize) : new BareDevice(d.device, d.id, opts.bufferSize)));
  const engine = new MigrationEngine(units, { allowNonP2P: opts.allowNonP2P });
  if (opts.onState) engine.on('state', opts.onState);
  if (opts.onProgress) engine.on('progress', opts.onProgress);
  return engine;
}

/**
 * Migrate `devices` live to `to` and run the precopy loop to the switchover (LiveMigration.run()).
 * On success the devices stay in STOP (their state now lives on the destination) unless
 * `resumeSource`. On any failure they run again with their state intact, and the error's
 * `deviceState` says so.
 */
export async function migrateDevices(devices: readonly JobDevice[], to: Endpoint, opts: MigrateJobOptions = {}): Promise<MigrationResult> {
  const engine = engineOf(devices, opts);
  try {
    engine.assertMigratable('migrate');
    const m = await LiveMigration.start(engine, () => connectLink(to, opts), opts);
    opts.onStart?.(m);
    const r = await m.run(opts.beforeSwitchover);
    if (opts.resumeSource) await engine.resume();
    return r;
  } finally {
    engine.dispose();
  }
}

/**
 * Receive a live migration into `devices` from `from` (a Listener: the one connection it
 * accepts; or a connection). Resolves when the devices hold the migrated state (RESUMING, or
 * RUNNING with `resume`). Any failure resets every device and tells the source.
 */
export async function receiveDevices(devices: readonly JobDevice[], from: Listener | Endpoint, opts: ReceiveJobOptions = {}): Promise<IncomingResult> {
  // The devices' ids are known only from the HELLO (see below): until then an engine of their
  // own names says where they are, should the connection fail.
  const untouched = engineOf(devices, {});
  let link: FrameLink;
  try {
    link = await untouched.untouchedOnFailure(acceptLink(from, opts));
  } finally {
    untouched.dispose();
  }
  let engine: MigrationEngine | undefined;
  try {
    return await receiveMigration((saved) => {
      // One device given without an id pairs with a one-device source, whatever its id.
      const list = devices.length === 1 && devices[0] instanceof VfioDevice && saved.length === 1 ? [{ id: saved[0].record.id, device: devices[0] }] : devices;
      engine = engineOf(list, opts);
      return engine;
    }, link, opts);
  } finally {
    engine?.dispose();
  }
}

/**
 * Whole-device jobs on snapshot files: save devices' state into one file, restore a device
 * from one. These are the bare-migration jobs (config space is recorded, not replayed); the
 * vfio-pci device model (src/device) builds its lifecycle hooks on the same pieces.
 *
 * Guarantees:
 *  - save: the file appears complete or not at all (./writer); on failure each device is
 *    brought back to the state it was in before (Migration.recover), and the error says
 *    where it was left;
 *  - restore: the file is validated and the destination's identity checked *before* the
 *    device is touched; each state chunk's crc32 is verified before it is written; on any
 *    failure after the device was touched, it is reset (VFIO_DEVICE_RESET → RUNNING).
 */
import { VfioError } from '../base/errors';
import type { VfioDevice } from '../kernel/device';
import { Migration } from '../kernel/migration';
import { loadStateSection, saveStateSection } from '../snapshot/state-io';
import { MigState, migStateName } from '../kernel/uapi/vfio';
import * as f from '../snapshot/format';
import { SnapshotReader, type DeviceSections, type OpenOptions } from '../snapshot/reader';
import { SnapshotWriter } from '../snapshot/writer';
import { logger } from '../base/log';

const log = logger('snapshot');

export interface Progress {
  device: string;
  phase: 'save' | 'load';
  bytes: number;
  /** Expected total (VFIO_DEVICE_FEATURE_MIG_DATA_SIZE on save, the file's total on load). */
  expected?: number;
}

export interface SaveOptions {
  /** Leave the devices in STOP after saving (default: back to the state they were in). */
  leaveStopped?: boolean;
  bufferSize?: number;
  onProgress?: (p: Progress) => void;
  /** Called for every migration state change (arcs included). */
  onState?: (c: { device: string; from: MigState; to: MigState; arcs: Array<[MigState, MigState]> }) => void;
  /** Skip fsync (tests). */
  noSync?: boolean;
}

export interface SaveResult {
  file: string;
  devices: Array<{ name: string; stateBytes: number; configBytes: number }>;
}

/**
 * Write a device's DEVICE (identity from its config space, migration flags, name) and CONFIG
 * (the config space as read) sections under device index `index`.
 */
export async function writeDeviceSections(writer: SnapshotWriter, index: number, config: Buffer, migrationFlags: number, name: string): Promise<void> {
  await writer.writeSection(f.SectionType.DEVICE, index, f.encodeDeviceRecord({ identity: f.identityFromConfig(config), migrationFlags, name }));
  await writer.writeSection(f.SectionType.CONFIG, index, config);
}

/**
 * Pause every device (→ STOP; the kernel passes RUNNING_P2P on P2P devices), save each one's
 * STOP_COPY stream and config space into `file`, return them to their previous state (or leave
 * them in STOP), and only then make the file durable (fsync, rename, directory fsync): the
 * devices' downtime is the state copy, not the disk's write-back. All devices are quiesced
 * before any is saved. On failure the file is removed and the devices are returned to where
 * they were; the error's message lists where each one was left.
 */
export async function saveSnapshot(devices: VfioDevice[], file: string, opts: SaveOptions = {}): Promise<SaveResult> {
  const migs = devices.map((d) => Migration.require(d));
  const before = migs.map((m) => m.getState());
  const unsub = migs.map((m) => {
    const fn = (c: Parameters<NonNullable<SaveOptions['onState']>>[0]): void => opts.onState?.(c);
    m.on('state', fn);
    return () => m.off('state', fn);
  });
  const result: SaveResult = { file, devices: [] };
  let writer: SnapshotWriter | undefined;
  let step = 'create';
  try {
    writer = await SnapshotWriter.create(file, { noSync: opts.noSync });
    step = 'pause';
    // Quiesce every device before saving any: with P2P all reach RUNNING_P2P first.
    if (throughP2P(migs)) for (const m of migs) await m.setState(MigState.RUNNING_P2P);
    for (const m of migs) await m.setState(MigState.STOP);
    for (const [i, m] of migs.entries()) {
      const dev = m.device;
      step = `save ${dev.name}`;
      const config = dev.configSpace();
      await writeDeviceSections(writer, i, config, m.flags, dev.name);
      const expected = m.dataSize();
      const session = await m.setState(MigState.STOP_COPY);
      if (!session) throw new VfioError('STOP_COPY opened no data_fd', { code: 'EVFIO_NO_SESSION', kind: 'protocol', device: dev.name });
      await writer.beginSection(f.SectionType.DEVICE_STATE, i);
      await saveStateSection(dev.binding, session.fd, writer, {
        bufferSize: opts.bufferSize, device: dev.name, onProgress: (bytes) => opts.onProgress?.({ device: dev.name, phase: 'save', bytes, expected }),
      });
      const { bytes } = await writer.endSection();
      await m.setState(MigState.STOP);
      result.devices.push({ name: dev.name, stateBytes: bytes, configBytes: config.length });
      log('%s: saved %d bytes of device state', dev.name, bytes);
    }
    step = 'resume';
    if (!opts.leaveStopped) await returnTo(migs, before);
    step = 'commit';
    await writer.commit();
    return result;
  } catch (e) {
    await writer?.abort();
    // No file could be created: the devices were not touched and stay as they are.
    const untouched = step === 'create';
    const left: string[] = [];
    for (const [i, m] of migs.entries()) {
      left.push(`${m.device.name}: ${migStateName(untouched ? before[i] : await safeRecover(m, opts.leaveStopped ? MigState.STOP : before[i]))}`);
    }
    throw annotateAll(e, `snapshot:${step}`, left);
  } finally {
    unsub.forEach((u) => u());
    migs.forEach((m) => m.closeSession());
  }
}

/** Several devices that all support P2P pass RUNNING_P2P together on the way to and from STOP. */
function throughP2P(migs: Migration[]): boolean {
  return migs.length > 1 && migs.every((m) => m.supportsP2P);
}

/** Leave STOP for the previous states; with P2P, all leave STOP for RUNNING_P2P before any runs. */
async function returnTo(migs: Migration[], states: MigState[]): Promise<void> {
  if (throughP2P(migs)) {
    for (const [i, m] of migs.entries()) if (states[i] === MigState.RUNNING) await m.setState(MigState.RUNNING_P2P);
  }
  for (const [i, m] of migs.entries()) await m.setState(states[i]);
}

async function safeRecover(m: Migration, target: MigState): Promise<MigState> {
  try {
    return (await m.recover(target)).state;
  } catch (e) {
    log('%s: recovery failed: %o', m.device.name, e);
    return m.stateOrError();
  }
}

function annotateAll(e: unknown, step: string, left: string[]): unknown {
  if (e instanceof VfioError) {
    if (!e.step) e.step = step;
    e.message += ` [devices left: ${left.join(', ')}]`;
    e.deviceState = left.length === 1 ? left[0].replace(/^.*: /, '') : left.join(', ');
  }
  return e;
}

export interface RestoreOptions {
  /** Which device of the file to restore (its index; default 0). */
  index?: number;
  /** State to leave the device in: RUNNING (CLI default) or RESUMING (the VMM resumes it later). */
  finalState?: MigState.RUNNING | MigState.RESUMING | MigState.STOP;
  bufferSize?: number;
  onProgress?: (p: Progress) => void;
  onState?: SaveOptions['onState'];
  /** Accept a destination whose identity differs (dangerous; for tests of driver-side checks). */
  skipIdentityCheck?: boolean;
}

/** Check that `dev` is the kind of device the snapshot's device section describes. */
export function checkIdentity(dev: VfioDevice, rec: f.DeviceRecord): void {
  const cfg = dev.readConfig(0, 64);
  const diff = f.identityDiff(rec.identity, f.identityFromConfig(cfg));
  if (diff.length) {
    throw new VfioError(
      `snapshot of ${f.describeIdentity(rec.identity)} cannot be restored into ${dev.name} (${f.describeIdentity(f.identityFromConfig(cfg))}): ${diff.join('; ')}`,
      { code: 'EVFIO_DEVICE_MISMATCH', kind: 'mismatch', device: dev.name, step: 'restore:identity', deviceState: 'untouched' },
    );
  }
}

/**
 * Open and validate a snapshot (or take a reader already open), returning the reader and the
 * chosen device's sections. A reader opened here is closed again when this fails; one passed
 * in stays with its owner.
 */
export async function openSnapshot(source: string | SnapshotReader, index = 0, opts: OpenOptions = {}): Promise<{ reader: SnapshotReader; entry: DeviceSections }> {
  const owned = typeof source === 'string';
  const reader = owned ? await SnapshotReader.open(source, opts) : source;
  try {
    const entry = reader.devices().find((d) => d.index === index);
    if (!entry?.state?.chunks) throw f.formatError(`${reader.path} has no device ${index} with a DEVICE_STATE section`);
    return { reader, entry };
  } catch (e) {
    if (owned) await reader.close();
    if (e instanceof VfioError) e.annotate({ step: 'snapshot:validate', path: owned ? source : undefined });
    throw e;
  }
}

/**
 * Restore one device from a snapshot file (or a reader already open, which stays open for its
 * owner): validate, check identity, ONE RUNNING→RESUMING request, write the verified stream,
 * then leave RESUMING for `finalState` (default RUNNING). On failure after the device was
 * touched, the device is reset to RUNNING and the error's deviceState says so.
 */
export async function restoreSnapshot(dev: VfioDevice, source: string | SnapshotReader, opts: RestoreOptions = {}): Promise<{ bytes: number }> {
  const { reader, entry } = await openSnapshot(source, opts.index ?? 0, { binding: dev.binding });
  const owned = typeof source === 'string';
  let mig: Migration;
  try {
    mig = Migration.require(dev);
  } catch (e) {
    if (owned) await reader.close();
    throw e;
  }
  const fn = (c: Parameters<NonNullable<SaveOptions['onState']>>[0]): void => opts.onState?.(c);
  mig.on('state', fn);
  let touched = false;
  let step = 'restore:identity';
  try {
    if (!opts.skipIdentityCheck) checkIdentity(dev, entry.record);
    step = 'restore:resuming';
    touched = true;
    const session = await mig.setState(MigState.RESUMING);
    if (!session) throw new VfioError('RESUMING opened no data_fd', { code: 'EVFIO_NO_SESSION', kind: 'protocol', device: dev.name });
    step = 'restore:write';
    const expected = entry.state!.chunks!.total;
    const { bytes } = await loadStateSection(dev.binding, reader, entry.state!, session.fd, {
      bufferSize: opts.bufferSize, device: dev.name, onProgress: (b) => opts.onProgress?.({ device: dev.name, phase: 'load', bytes: b, expected }),
    });
    step = 'restore:finish';
    const final = opts.finalState ?? MigState.RUNNING;
    if (final !== MigState.RESUMING) await mig.setState(final);
    return { bytes };
  } catch (e) {
    if (touched) {
      let left: MigState;
      try {
        left = await mig.reset();
      } catch (re) {
        log('%s: reset after failed restore failed: %o', dev.name, re);
        left = MigState.ERROR;
      }
      if (e instanceof VfioError) {
        if (!e.step) e.step = step;
        e.annotate({ deviceState: migStateName(left) });
        e.message += left === MigState.RUNNING ? ' (device was reset to RUNNING)' : '';
      }
    }
    throw e;
  } finally {
    mig.off('state', fn);
    mig.closeSession();
    if (owned) await reader.close();
  }
}

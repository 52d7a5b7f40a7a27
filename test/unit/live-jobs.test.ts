/**
 * The entry points of a live migration — MigrationCoordinator.migrate / incoming (a VMM's) and
 * migrateDevices / receiveDevices (the CLI's, bare devices) — around the connection: the options
 * refused before any connection is made, a connection that fails saying every device is
 * untouched, and no listener left behind on the devices' Migration objects, whatever the end.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { MigrationCoordinator } from '../../src/vm/coordinator';
import { migrateDevices, receiveDevices } from '../../src/vm/live-jobs';
import { listen, type Listener } from '../../src/live/listener';
import type { MigrateOptions } from '../../src/live/migration';
import type { VfioDevice } from '../../src/kernel/device';
import { bootedSource, dispose, makeEnv, openSim, type Env } from '../helpers/device-model';
import { rejection } from '../helpers/errors';

const SPEC = 'sim:64KiB';
const UNTOUCHED = [{ device: 'nic0', state: 'RUNNING', touched: false, reset: false }];

let env: Env;
let dir: string;
beforeEach(() => {
  env = makeEnv();
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'live-jobs-'));
  env.cleanup.push(() => fs.rmSync(dir, { recursive: true, force: true }));
});
afterEach(() => dispose(env));

/** A unix URI nobody listens on: connecting to it fails with ENOENT. */
const nowhere = (): string => `unix:${path.join(dir, 'nobody.sock')}`;

/** The source entry points, each over one device `nic0`. */
const sources: Array<[string, (env: Env) => (to: string, opts?: MigrateOptions) => Promise<unknown>]> = [
  ['MigrationCoordinator.migrate', (e) => {
    const vm = new MigrationCoordinator([bootedSource(e, SPEC).d]);
    return (to, opts) => vm.migrate(to, opts);
  }],
  ['migrateDevices', (e) => {
    const device = openSim(e, SPEC);
    return (to, opts) => migrateDevices([{ id: 'nic0', device }], to, opts);
  }],
];

describe.each(sources)('%s', (_, make) => {
  it('refuses options no migration can honour before connecting (not ENOENT from the connection)', async () => {
    const migrate = make(env);
    expect(await rejection(migrate(nowhere(), { postcopy: true }))).toMatchObject({ code: 'EVFIO_POSTCOPY' });
    const usage = await rejection(migrate(nowhere(), { maxIterations: 0 }));
    expect(usage).toMatchObject({ code: 'EVFIO_USAGE' });
    expect(usage.message).toBe('maxIterations must be a positive number, not 0');
  });

  it('a connection that fails says every device is untouched', async () => {
    const migrate = make(env);
    expect(await rejection(migrate(nowhere()))).toMatchObject({ code: 'ENOENT', deviceState: UNTOUCHED });
  });
});

describe('no listener left on the devices', () => {
  /** Listeners on each device's Migration (the engines forward its `state` events). */
  const listeners = (devs: VfioDevice[]): number[] => devs.map((d) => d.migration!.listenerCount('state'));

  it('receiveDevices and migrateDevices, after a migration, a refusal and a failed accept: every count back where it was', async () => {
    const src = openSim(env, SPEC);
    const dst = openSim(env, SPEC);
    const other = openSim(env, 'sim:64KiB:devid=0x5f11');
    const baseline = listeners([src, dst, other]);
    const sock = `unix:${path.join(dir, 'mig.sock')}`;

    // A whole migration.
    let listener: Listener = await listen(sock);
    const received = receiveDevices([{ id: 'nic0', device: dst }], listener, { resume: true });
    await migrateDevices([{ id: 'nic0', device: src }], listener.uri, { resumeSource: true });
    await received;
    await listener.close();
    expect(listeners([src, dst, other])).toEqual(baseline);

    // A destination that refuses (another device id): both sides fail in the handshake.
    listener = await listen(sock);
    const refusing = receiveDevices([{ id: 'nic0', device: other }], listener);
    refusing.catch(() => undefined);
    expect((await rejection(migrateDevices([{ id: 'nic0', device: src }], listener.uri))).code).toBe('EVFIO_PEER_REFUSED');
    expect((await rejection(refusing)).code).toBe('EVFIO_DEVICE_MISMATCH');
    await listener.close();
    expect(listeners([src, dst, other])).toEqual(baseline);

    // An accept that fails (cancelled before any peer came): untouched, and nothing left.
    listener = await listen(sock);
    const failed = await rejection(receiveDevices([{ id: 'nic0', device: dst }], listener, { signal: AbortSignal.abort() }));
    expect(failed).toMatchObject({ code: 'ECANCELED', deviceState: UNTOUCHED });
    await listener.close();
    expect(listeners([src, dst, other])).toEqual(baseline);
  });

  it('MigrationCoordinator.incoming, after a failed accept, says every device is untouched', async () => {
    const vm = new MigrationCoordinator([bootedSource(env, SPEC).d]);
    const listener = await listen(`unix:${path.join(dir, 'mig.sock')}`);
    try {
      expect(await rejection(vm.incoming(listener, { signal: AbortSignal.abort() }))).toMatchObject({ code: 'ECANCELED', deviceState: UNTOUCHED });
    } finally {
      await listener.close();
    }
  });
});

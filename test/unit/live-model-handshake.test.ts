/**
 * Whether a device's model state will follow is part of the live handshake (HELLO `model`): a
 * VMM's VfioPciDevice and a bare device (`vfio-pci migrate` / `incoming`: migrateDevices,
 * receiveDevices) cannot take each other's state, and the destination says so in its answer to
 * the HELLO — before the source has touched a device — not after END, when the source has
 * already stopped. Both directions, over a unix socket, on simulated devices.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { MigrationCoordinator } from '../../src/vm/coordinator';
import { migrateDevices, receiveDevices } from '../../src/vm/live-jobs';
import { listen, type Listener } from '../../src/live/listener';
import { migStateName } from '../../src/kernel/uapi/vfio';
import { FRAME_CHECKSUM, PROTOCOL_VERSION, decodeHello, encodeHello, type HelloDevice } from '../../src/live/frames';
import { recordOf } from '../../src/model/migratable';
import { bootedSource, destination, dispose, makeEnv, newHost, openSim, simOf, type Env } from '../helpers/device-model';
import { rejection, thrown } from '../helpers/errors';

const SPEC = 'sim:64KiB';
const UNTOUCHED = [{ device: 'nic0', state: 'RUNNING', touched: false, reset: false }];

let env: Env;
let listener: Listener;
beforeEach(async () => {
  env = makeEnv();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'live-model-'));
  env.cleanup.push(() => fs.rmSync(dir, { recursive: true, force: true }));
  listener = await listen(`unix:${path.join(dir, 'mig.sock')}`);
});
afterEach(async () => {
  await listener.close();
  dispose(env);
});

/** A promise whose rejection is handled now and looked at later. */
function later<T>(p: Promise<T>): Promise<T> {
  p.catch(() => undefined);
  return p;
}

describe('the model flag in the HELLO', () => {
  it('a VfioPciDevice source and a bare destination: refused in the handshake; the source device never left RUNNING, the destination was not touched', async () => {
    const src = bootedSource(env, SPEC);
    const srcSim = simOf(env, src.d);
    const dstDev = openSim(env, SPEC);
    const incoming = later(receiveDevices([{ id: 'nic0', device: dstDev }], listener));
    const arcsBefore = srcSim.arcLog.length;

    const err = await rejection(new MigrationCoordinator([src.d]).migrate(listener.uri));
    expect(err).toMatchObject({ code: 'EVFIO_PEER_REFUSED', kind: 'mismatch', device: 'nic0', step: 'migrate:handshake', deviceState: UNTOUCHED });
    expect(err.message).toMatch(/refused the migration: nic0 cannot be loaded into nic0: the source sends nic0's device-model state .* no device model .*\(EVFIO_DEVICE_MISMATCH, step load:check\)/);
    expect(srcSim.arcLog.length).toBe(arcsBefore);
    expect(migStateName(srcSim.state)).toBe('RUNNING');

    const derr = await rejection(incoming);
    expect(derr).toMatchObject({ code: 'EVFIO_DEVICE_MISMATCH', kind: 'mismatch', device: 'nic0', step: 'load:check', deviceState: UNTOUCHED });
    expect(derr.message).toMatch(/no device model \(a bare device\)/);
    expect(simOf(env, dstDev).arcLog).toEqual([]);
  });

  it('a bare source (vfio-pci migrate) and a VfioPciDevice destination: refused in the handshake; the source device never left RUNNING, the destination was not touched', async () => {
    const srcDev = openSim(env, SPEC);
    const srcSim = simOf(env, srcDev);
    const dst = destination(env, newHost(env), [{ spec: SPEC, id: 'nic0' }]);
    const incoming = later(new MigrationCoordinator(dst.devices).incoming(listener));

    const err = await rejection(migrateDevices([{ id: 'nic0', device: srcDev }], listener.uri));
    expect(err).toMatchObject({ code: 'EVFIO_PEER_REFUSED', kind: 'mismatch', device: 'nic0', step: 'migrate:handshake', deviceState: UNTOUCHED });
    expect(err.message).toMatch(/the source sends no device-model state for nic0 .* nic0 here is a VMM's VfioPciDevice.*\(EVFIO_DEVICE_MISMATCH, step load:check\)/);
    expect(srcSim.arcLog).toEqual([]);
    expect(migStateName(srcSim.state)).toBe('RUNNING');

    const derr = await rejection(incoming);
    expect(derr).toMatchObject({ code: 'EVFIO_DEVICE_MISMATCH', kind: 'mismatch', device: 'nic0', step: 'load:check', deviceState: UNTOUCHED });
    expect(derr.message).toMatch(/needs it to restore the guest's view/);
    expect(simOf(env, dst.devices[0]).arcLog).toEqual([]);
    expect(dst.host.bus.mappings()).toEqual([]);
  });

  it('devices of the same kind still migrate: bare to bare', async () => {
    const srcDev = openSim(env, SPEC);
    const dstDev = openSim(env, SPEC);
    const incoming = receiveDevices([{ id: 'nic0', device: dstDev }], listener, { resume: true });
    const r = await migrateDevices([{ id: 'nic0', device: srcDev }], listener.uri);
    expect(r.devices.map((d) => d.id)).toEqual(['nic0']);
    expect((await incoming).resumed).toBe(true);
    expect([srcDev, dstDev].map((d) => migStateName(simOf(env, d).state))).toEqual(['STOP', 'RUNNING']);
  });
});

describe('HELLO `model` on the wire', () => {
  const hello = (devices: HelloDevice[]): Buffer => encodeHello({ version: PROTOCOL_VERSION, checksum: FRAME_CHECKSUM, features: [], keepaliveMs: 1000, devices });
  const withModel = (b: Buffer, model: unknown): Buffer => {
    const o = JSON.parse(b.toString('utf8')) as { devices: Array<Record<string, unknown>> };
    o.devices[0].model = model;
    return Buffer.from(JSON.stringify(o));
  };

  it('travels as sent; absent (an older source) decodes as undefined, which is not compared; anything but a boolean is EVFIO_PROTOCOL', () => {
    const dev = openSim(env, SPEC);
    for (const model of [true, false]) {
      const b = hello([{ ...recordOf(dev, 'nic0', model), precopy: true }]);
      expect(JSON.parse(b.toString('utf8')).devices[0].model).toBe(model);
      expect(decodeHello(b).devices[0].model).toBe(model);
    }
    const old = hello([{ ...recordOf(dev, 'nic0', true), model: undefined, precopy: true }]);
    expect('model' in JSON.parse(old.toString('utf8')).devices[0]).toBe(false);
    expect(decodeHello(old).devices[0].model).toBeUndefined();
    const e = thrown(() => decodeHello(withModel(old, 'yes')));
    expect(e).toMatchObject({ code: 'EVFIO_PROTOCOL' });
    expect(e.message).toBe('HELLO device 0: member "model" is missing or malformed');
  });
});

/**
 * `Migration` (src/kernel/migration.ts), the one owner of a device's migration state, on the
 * simulated device: one object per open device, every state change and reset through it so that
 * its cached state is never stale, and its refusals before the kernel is asked.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SimBinding, openSimDevice } from '../../src/sim';
import type { VfioDevice } from '../../src/kernel/device';
import { Migration } from '../../src/kernel/migration';
import { getDefaultBinding } from '../../src/kernel/open';
import { MigState } from '../../src/kernel/uapi/vfio';
import * as v_ from '../../src/kernel/uapi/vfio';
import { saveSnapshot } from '../../src/vm/jobs';
import { rejection, thrown } from '../helpers/errors';
import { useTempDir } from '../helpers/temp-dir';

const { RUNNING, STOP, STOP_COPY, PRE_COPY } = MigState;
const tmp = useTempDir('mig');

let sim: SimBinding;
let dev: VfioDevice;
/** ioctl requests the device made, in order (feature ioctls as `FEATURE <flags>`). */
let ioctls: string[];
beforeEach(() => {
  sim = new SimBinding(getDefaultBinding(), { virtualFds: true });
  ioctls = [];
  // The device's binding records its ioctls (a wrapper, not a patch of the simulator).
  const recording = new Proxy(sim, {
    get(target, key) {
      const v = Reflect.get(target, key, target) as unknown;
      if (key !== 'ioctl' && key !== 'ioctlAsync') return typeof v === 'function' ? v.bind(target) : v;
      return (fd: number, request: number, arg?: Buffer | number) => {
        ioctls.push(request === v_.VFIO_DEVICE_FEATURE && Buffer.isBuffer(arg) ? `FEATURE 0x${arg.readUInt32LE(4).toString(16)}` : `0x${request.toString(16)}`);
        return (v as (...a: unknown[]) => unknown).call(target, fd, request, arg);
      };
    },
  });
  dev = openSimDevice('sim:64KiB#m', recording);
});
afterEach(() => dev.close());

describe('one Migration per open device', () => {
  it('device.migration, Migration.probe and Migration.require are the same object, probed once', () => {
    const getMigration = `FEATURE 0x${(v_.VFIO_DEVICE_FEATURE_GET | v_.VFIO_DEVICE_FEATURE_MIGRATION).toString(16)}`;
    const m = dev.migration!;
    expect(Migration.probe(dev)).toBe(m);
    expect(Migration.require(dev)).toBe(m);
    expect(dev.migration).toBe(m);
    expect(ioctls.filter((x) => x === getMigration)).toHaveLength(1);
  });

  it('new Migration() is refused: a device has exactly one', () => {
    expect(() => new Migration(dev, 7, Symbol('Migration'))).toThrow(TypeError);
  });

  it('a listener on device.migration sees the requests saveSnapshot makes', async () => {
    const seen: string[] = [];
    dev.migration!.on('state', (c) => seen.push(`${MigState[c.from]}→${MigState[c.to]}`));
    await saveSnapshot([dev], tmp.file('s.vfiosnap'), { noSync: true });
    expect(seen).toEqual(['RUNNING→STOP', 'STOP→STOP_COPY', 'STOP_COPY→STOP', 'STOP→RUNNING']);
  });
});

describe('the cached state follows every path that changes the device', () => {
  it('STOP_COPY, then the public VfioDevice.reset(), then PRE_COPY: legal from RUNNING, and allowed', async () => {
    const m = dev.migration!;
    const resets: string[] = [];
    m.on('reset', (r) => resets.push(r.device));
    const session = await m.setState(STOP_COPY);
    expect(session?.kind).toBe('save');
    await dev.reset(); // not through the Migration: it must still know
    expect(resets).toEqual(['sim:64KiB#m']);
    expect(m.session).toBeUndefined(); // the reset ended the session, and its fd is closed
    expect(sim.device(dev.fd).openFds).toBe(1);
    expect(m.knownState).toBeUndefined();
    const pre = await m.setState(PRE_COPY);
    expect(pre?.kind).toBe('save');
    expect(m.getState()).toBe(PRE_COPY);
    await m.setState(RUNNING);
  });

  it('(a planner that trusted a stale STOP_COPY would refuse STOP_COPY → PRE_COPY)', async () => {
    const m = dev.migration!;
    await m.setState(STOP_COPY);
    expect((await rejection(m.setState(PRE_COPY))).code).toBe('EVFIO_UNSAFE_TRANSITION');
    await m.setState(STOP);
  });
});

describe('refusals before the kernel is asked', () => {
  it('precopyInfo() needs PRE_COPY or PRE_COPY_P2P: refused in a STOP_COPY session (the kernel would answer EINVAL)', async () => {
    const m = dev.migration!;
    await m.setState(PRE_COPY);
    expect(m.precopyInfo().initialBytes).toBeGreaterThanOrEqual(0);
    await m.setState(STOP_COPY);
    const calls = ioctls.length;
    const err = thrown(() => m.precopyInfo());
    expect(err.code).toBe('EVFIO_NO_SESSION');
    expect(err.message).toContain('STOP_COPY');
    expect(ioctls.length).toBe(calls);
    await m.setState(STOP);
  });
});

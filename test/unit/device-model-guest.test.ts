/**
 * What a guest can do to the device model on a simulated device, and what it must not be able
 * to do: the BAR allocations follow the device, not the guest's BAR writes (issue 8, 6.1).
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Guest, MEM_MASTER, attach, dispose, makeEnv, newHost, openSim, type Env } from './device-model-helpers';

let env: Env;
beforeEach(() => {
  env = makeEnv();
});
afterEach(() => dispose(env));

describe('BAR allocations', () => {
  it('detach(true) frees what attach allocated, even after the guest moved the BAR; the same id attaches again', () => {
    const host = newHost(env);
    const d = attach(env, openSim(env, 'sim:4096'), host, { id: 'nic0' });
    const assigned = host.allocator.export();
    expect(assigned).toEqual([{ space: 'mmio', address: 0xe000_0000n, size: 4096, owner: 'nic0/bar0' }]);

    // The guest moves BAR0 elsewhere and turns decode on: the shadow and the bus say 0xd0000000.
    d.configWrite(0x10, 4, 0xd000_0000);
    new Guest(d, host).command(MEM_MASTER);
    expect(host.bus.find('nic0', 0)?.address).toBe(0xd000_0000n);

    d.detach(true);
    expect(host.allocator.export()).toEqual([]);
    expect(host.bus.mappings()).toEqual([]);

    // Before the fix: "nic0/bar0 already has mmio 0xe0000000+4096: allocated twice".
    const again = attach(env, openSim(env, 'sim:4096'), host, { id: 'nic0' });
    const [record] = host.allocator.export();
    expect(record).toMatchObject({ space: 'mmio', size: 4096, owner: 'nic0/bar0' });
    expect(again.configRead(0x10, 4)).toBe(Number(record.address));
  });

  it('detach(true) twice frees once; a destination attached without assignBars frees nothing it did not allocate', () => {
    const host = newHost(env);
    const d = attach(env, openSim(env, 'sim:4096'), host, { id: 'nic0' });
    const other = attach(env, openSim(env, 'sim:4096'), host, { id: 'nic1' });
    d.detach(true);
    d.detach(true);
    expect(host.allocator.export().map((a) => a.owner)).toEqual(['nic1/bar0']);
    const dst = attach(env, openSim(env, 'sim:4096'), host, { id: 'nic2', assignBars: false });
    dst.detach(true);
    expect(host.allocator.export().map((a) => a.owner)).toEqual(['nic1/bar0']);
    other.detach(true);
    expect(host.allocator.export()).toEqual([]);
  });
});

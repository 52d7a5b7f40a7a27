/** What a simulated device executed, recorded from its events (src/sim/device.ts SimDeviceEvents). */
import type { SimDevice } from '../../src/sim';
import type { MigState } from '../../src/kernel/uapi/vfio';

/** The arcs `sim` executes from now on, as [from, to] in order (its 'arc' events); empty the array to start again. */
export function arcsOf(sim: SimDevice): Array<[MigState, MigState]> {
  const arcs: Array<[MigState, MigState]> = [];
  sim.on('arc', (from, to) => void arcs.push([from, to]));
  return arcs;
}

/** How the CLI prints things. */
import type { StateChange } from '../kernel/migration';
import { migStateName } from '../kernel/uapi/vfio';

/** `  dev: RUNNING → STOP  [RUNNING→RUNNING_P2P, RUNNING_P2P→STOP]`: a request and the arcs the kernel walked. */
export function formatStateChange(c: Pick<StateChange, 'device' | 'from' | 'to' | 'arcs'>): string {
  return `  ${c.device}: ${migStateName(c.from)} → ${migStateName(c.to)}  [${c.arcs.map(([a, b]) => `${migStateName(a)}→${migStateName(b)}`).join(', ')}]`;
}

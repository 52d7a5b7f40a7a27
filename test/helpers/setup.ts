// vitest setup (every test file): `sim` specs open simulated devices, as in the CLI.
import { registerSimulator } from '../../src/sim/provider';

registerSimulator();

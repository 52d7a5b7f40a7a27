/**
 * The pump contract (test/contract/pump-suite.ts), once per pump: the native one, and the JS one
 * over koffi, over the simulated binding with real fds, and over the simulated binding with
 * purely virtual fds. Add a pump with one line.
 */
import { KoffiBinding } from '../../src/kernel/binding/koffi';
import { NativeBinding } from '../../src/kernel/binding/native';
import { JsPump, pumpFor } from '../../src/kernel/pump';
import { SimBinding } from '../../src/sim';
import { pumpContract } from './pump-suite';

pumpContract(
  'native',
  () => {
    const binding = new NativeBinding();
    return { binding, pump: pumpFor(binding, [0, 1]) };
  },
  { files: true, boundedWrites: true, longHaulMiB: 64 },
);
pumpContract(
  'js over koffi',
  () => {
    const binding = new KoffiBinding();
    return { binding, pump: new JsPump(binding) };
  },
  { files: true, boundedWrites: false, longHaulMiB: 16 },
);
pumpContract(
  'js over sim (real fds)',
  () => {
    const binding = new SimBinding(new NativeBinding());
    return { binding, pump: new JsPump(binding) };
  },
  { files: true, boundedWrites: false, longHaulMiB: 16 },
);
pumpContract(
  'js over sim (virtual fds)',
  () => {
    const binding = new SimBinding(undefined, { virtualFds: true });
    return { binding, pump: new JsPump(binding) };
  },
  { files: false, boundedWrites: true, longHaulMiB: 0, countFds: (b) => b.openFdCount() },
);

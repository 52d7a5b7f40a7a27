/**
 * The binding contract (test/contract/suite.ts), once per binding. Add a binding with one line.
 */
import { KoffiBinding } from '../../src/kernel/binding/koffi';
import { NativeBinding } from '../../src/kernel/binding/native';
import { SimBinding } from '../../src/sim';
import { bindingContract } from './suite';

bindingContract('native', () => new NativeBinding());
bindingContract('koffi', () => new KoffiBinding());
bindingContract('sim', () => new SimBinding(new NativeBinding()));
bindingContract('sim (virtual fds)', () => new SimBinding(undefined, { virtualFds: true }), { virtual: { countFds: (b) => b.openFdCount() } });

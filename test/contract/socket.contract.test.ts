/**
 * The socket calls of the binding contract (test/contract/socket-suite.ts), once per binding.
 */
import { KoffiBinding } from '../../src/kernel/binding/koffi';
import { NativeBinding } from '../../src/kernel/binding/native';
import { SimBinding } from '../../src/sim';
import { socketContract } from './socket-suite';

socketContract('native', () => new NativeBinding());
socketContract('koffi', () => new KoffiBinding());
socketContract('sim', () => new SimBinding(new NativeBinding()));
socketContract('sim (virtual fds)', () => new SimBinding(undefined, { virtualFds: true }), { virtual: true });

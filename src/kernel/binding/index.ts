import { VfioError } from '../../base/errors';
import { logger } from '../../base/log';
import { KoffiBinding } from './koffi';
import { NativeBinding } from './native';
import type { Binding } from './types';

export type { Binding } from './types';
export { POLLERR, POLLHUP, POLLIN, POLLOUT } from './types';

const log = logger('binding');

/** The real (kernel) bindings, in the default order of preference. */
export type RealBindingName = 'native' | 'koffi';

/** How each real binding is made; `loadBinding` takes another table in tests. */
export type BindingFactories = Record<RealBindingName, () => Binding>;

export const defaultBindingFactories: Readonly<BindingFactories> = {
  native: () => new NativeBinding(),
  koffi: () => new KoffiBinding(),
};

/**
 * The binding to the kernel. Without `only`: the native addon, or koffi when the addon cannot
 * be loaded (not built, wrong ABI, ...), the fallback logged on the `vfio:binding` debug
 * namespace. With `only` ('native' or 'koffi', e.g. the CLI's --binding): that binding or an
 * error — an explicit choice never silently becomes the other one.
 *
 * Throws a VfioError (code 'EVFIO_NO_BINDING', kind 'unsupported', `cause` the first failure)
 * when none loads. `factories` replaces how the bindings are made (tests).
 */
export function loadBinding(
  only?: RealBindingName,
  factories: Readonly<BindingFactories> = defaultBindingFactories,
): Binding {
  const order: RealBindingName[] = only ? [only] : ['native', 'koffi'];
  const failures: string[] = [];
  let firstError: unknown;
  for (const name of order) {
    try {
      const binding = factories[name]();
      log('using the %s binding', name);
      return binding;
    } catch (e) {
      firstError ??= e;
      const reason = e instanceof Error ? e.message : String(e);
      failures.push(`${name}: ${reason}`);
      log('%s binding unavailable (%s)%s', name, reason, name === order[order.length - 1] ? '' : '; falling back');
    }
  }
  throw new VfioError(`no binding could be loaded (${failures.join('; ')})`, {
    code: 'EVFIO_NO_BINDING',
    kind: 'unsupported',
    cause: firstError,
  });
}

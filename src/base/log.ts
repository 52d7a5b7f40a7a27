import createDebug from 'debug';

/**
 * Logging through `debug` namespaces, one per area (`vfio:migration`, `vfio:device`, ...):
 * quiet by default, `DEBUG=vfio:*` turns everything on.
 */
export function logger(area: string): createDebug.Debugger {
  return createDebug(`vfio:${area}`);
}

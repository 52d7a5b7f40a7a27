/**
 * A test's own syscall layer: `inner` with some calls replaced (faults injected, calls dropped or
 * recorded), the way rust-vmm swaps its syscall layer under test. The library takes its Binding
 * as a parameter (openDevice's `binding`, the hosts'), so this is where a test steps in, rather
 * than replacing methods of the library's objects.
 */
import { loadBinding } from '../../src/kernel/binding';
import type { Binding } from '../../src/kernel/binding/types';

/**
 * `inner` but for the calls in `overrides`; every other property is `inner`'s (methods bound to
 * it), and `instanceof` sees `inner`'s class. An override calls `inner` itself for what it passes on.
 */
export function intercept<B extends Binding>(inner: B, overrides: Partial<Binding>): B {
  return new Proxy(inner, {
    get(target, key) {
      if (Object.prototype.hasOwnProperty.call(overrides, key)) return overrides[key as keyof Binding];
      const v = Reflect.get(target, key, target) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
}

/** The real binding (the addon, else koffi), or undefined where neither loads: the tests that need one skip, saying so. */
export function realBinding(): Binding | undefined {
  try {
    return loadBinding();
  } catch {
    return undefined;
  }
}

/** The pipes of a test over a binding: see pipeScope(). */
export interface PipeScope {
  /** Run `fn` with a fresh pipe (pipe2 `flags`); afterwards both ends are closed, but for those `close` closed. */
  withPipe<T>(flags: number, fn: (r: number, w: number) => Promise<T> | T): Promise<T>;
  /** Close an end `withPipe` made, once (the clean-up then leaves it alone); other fds are not touched. */
  close(fd: number): void;
}

/** Pipes made with the binding `binding()` returns (a suite's, made in a hook), closed through it on every path. */
export function pipeScope(binding: () => Binding): PipeScope {
  const opened = new Set<number>();
  const close = (fd: number): void => {
    if (opened.delete(fd)) binding().close(fd);
  };
  return {
    close,
    async withPipe(flags, fn) {
      const [r, w] = binding().pipe(flags);
      opened.add(r);
      opened.add(w);
      try {
        return await fn(r, w);
      } finally {
        close(r);
        close(w);
      }
    },
  };
}

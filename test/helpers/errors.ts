/**
 * The error a call throws or a promise rejects with, for tests that then look at it: each fails
 * the test when nothing is thrown, and rethrows an error of another class as it is (its own
 * message and stack say more than "expected a VfioError").
 */
import * as os from 'node:os';
import { expect } from 'vitest';
import { VfioError } from '../../src/base/errors';

type ErrorClass<E extends Error> = abstract new (...args: never[]) => E;

/**
 * The error `fn` throws synchronously: a VfioError, or an instance of `type`. A call that returns
 * a promise instead of throwing fails the test (its rejection is caught, not left unhandled);
 * `label` names the case in that failure.
 */
export function thrown(fn: () => unknown): VfioError;
export function thrown<E extends Error>(fn: () => unknown, type: ErrorClass<E>, label?: string): E;
export function thrown(fn: () => unknown, type: ErrorClass<Error> = VfioError, label?: string): Error {
  let result: unknown;
  try {
    result = fn();
  } catch (e) {
    if (e instanceof type) return e;
    throw e;
  }
  if (result instanceof Promise) result.catch(() => undefined);
  throw new Error(`${label ? `${label}: ` : ''}expected a synchronous throw of ${type.name}, ${result instanceof Promise ? 'got a promise' : 'nothing was thrown'}`);
}

/** The VfioError (or instance of `type`) that `p`, or the promise `p()` returns, rejects with; `p()` may also throw. */
export async function rejection(p: Promise<unknown> | (() => unknown)): Promise<VfioError>;
export async function rejection<E extends Error>(p: Promise<unknown> | (() => unknown), type: ErrorClass<E>): Promise<E>;
export async function rejection(p: Promise<unknown> | (() => unknown), type: ErrorClass<Error> = VfioError): Promise<Error> {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    if (e instanceof type) return e;
    throw e;
  }
  throw new Error(`expected a rejection with ${type.name}, got success`);
}

/** The VfioError `fn` throws, which must have `code` (and `kind`, when given). */
export function expectVfioError(fn: () => unknown, code: string, kind?: string): VfioError {
  const e = thrown(fn);
  expect(kind === undefined ? { code: e.code } : { code: e.code, kind: e.kind }).toEqual(kind === undefined ? { code } : { code, kind });
  return e;
}

/** What a failed syscall's VfioError must say. `errno` defaults to Node's number for `code`. */
export interface SyscallErrorShape {
  code: string;
  /** The syscall (unchecked when left out). */
  syscall?: string;
  errno?: number;
  /** The path the call was given (open). */
  path?: string;
}

/**
 * `e` is a binding's syscall error: kind 'syscall' with `code`, `errno` and `syscall` as given,
 * the errno name in its message, and the path when one is given. Returns `e`.
 */
export function expectSyscallError(e: VfioError, want: SyscallErrorShape): VfioError {
  expectErrnoOf(e, want);
  if (want.path !== undefined) expect(e.path).toBe(want.path);
  expect(e.message).toContain(want.code);
  return e;
}

/**
 * The syscall error `fn` throws: kind 'syscall', errno name `code` with Node's number for it, and
 * from `syscall` when given (its message is the thrower's to word).
 */
export function expectErrno(fn: () => unknown, code: string, syscall?: string): VfioError {
  return expectErrnoOf(thrown(fn), { code, syscall });
}

function expectErrnoOf(e: VfioError, want: SyscallErrorShape): VfioError {
  const errno = want.errno ?? os.constants.errno[want.code as keyof typeof os.constants.errno];
  expect(errno, `errno of ${want.code}`).toBeTypeOf('number');
  const syscall = want.syscall ?? e.syscall;
  expect({ code: e.code, errno: e.errno, syscall: e.syscall, kind: e.kind }).toEqual({ code: want.code, errno, syscall, kind: 'syscall' });
  return e;
}

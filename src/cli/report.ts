/**
 * How the CLI reports errors: as text on stderr, and with `--json` as one object on stdout, with
 * the same fields (VfioError's: code, kind, errno, syscall, op, step, device, path, and
 * deviceState — where each device was left).
 */
import { VfioError, describeOutcome, type DeviceOutcome } from '../base/errors';
import type { StateChange } from '../kernel/migration';
import { migStateName } from '../kernel/uapi/vfio';

/** Exit statuses (README "Exit status"); signals add 129 / 130 / 143 (./signals.ts). */
export const EXIT = {
  /** The command did what it was asked. */
  OK: 0,
  /** It failed: the message says why and where each device was left. */
  FAILED: 1,
  /** The command line is wrong, or names no such device / a path that cannot be used. */
  USAGE: 2,
} as const;

/** A usage error of the CLI (bad argument or option value): exit 2, printed without fields. */
export function usageError(message: string): VfioError {
  return new VfioError(message, { code: 'EVFIO_USAGE', kind: 'usage' });
}

/** The exit status an error calls for: 2 for usage errors (kind 'usage'), else 1. */
export function exitCodeOf(e: unknown): number {
  return e instanceof VfioError && e.kind === 'usage' ? EXIT.USAGE : EXIT.FAILED;
}

/** An error as the JSON object `--json` prints (`{ ok: false, error: … }` holds it). */
export interface ErrorJson {
  message: string;
  code: string;
  kind: string;
  errno?: number;
  syscall?: string;
  op?: string;
  step?: string;
  device?: string;
  path?: string;
  deviceState?: DeviceOutcome[];
}

export function errorJson(e: unknown): ErrorJson {
  if (e instanceof VfioError) {
    const o: ErrorJson = { message: e.message, code: e.code, kind: e.kind };
    for (const k of ['errno', 'syscall', 'op', 'step', 'device', 'path', 'deviceState'] as const) {
      if (e[k] !== undefined) (o as unknown as Record<string, unknown>)[k] = e[k];
    }
    return o;
  }
  return { message: String((e as Error)?.message ?? e), code: 'EVFIO_INTERNAL', kind: 'internal' };
}

/**
 * An error as text: `vfio-pci CMD: message`, then its fields one per line. A plain usage error
 * (EVFIO_USAGE) is the message and a pointer to the command's help, nothing more; an error that
 * is not a VfioError is a bug, printed with its stack.
 */
export function formatError(command: string, e: unknown, notes: readonly string[] = []): string {
  const prog = command ? `vfio-pci ${command}` : 'vfio-pci';
  if (!(e instanceof VfioError)) return `${prog}: internal error: ${(e as Error)?.stack ?? e}\n`;
  const lines = [`${prog}: ${e.message}`];
  if (e.code === 'EVFIO_USAGE') {
    lines.push(`(see 'vfio-pci help${command ? ' ' + command : ''}')`);
    return lines.join('\n') + '\n';
  }
  const fields: Array<[string, unknown]> = [
    ['code', e.code], ['errno', e.errno], ['syscall', e.syscall], ['op', e.op], ['step', e.step],
    ['device', e.device], ['path', e.path], ['devices left', e.deviceState?.map(describeOutcome).join(', ')],
  ];
  for (const [k, v] of fields) if (v !== undefined) lines.push(`  ${k}: ${v}`);
  for (const n of notes) lines.push(`  ${n}`);
  return lines.join('\n') + '\n';
}

/** errnos with which drivers refuse a saved stream (mtty: EFAULT or ENOMEM on the write, EINVAL at the RESUMING exit). */
const REFUSAL_ERRNOS = new Set(['EFAULT', 'ENOMEM', 'EINVAL', 'EIO', 'EPROTO', 'EBADMSG']);

/**
 * A load failure that is the destination driver refusing the saved state — a data_fd write
 * failing (step load:write) or the RESUMING exit failing (set-state RESUMING→…) with one of the
 * errnos drivers use for a stream they do not accept — gets a message that says so; its code,
 * errno and every other field are kept. Anything else is returned unchanged.
 */
export function explainRefusedState(e: unknown): unknown {
  if (!(e instanceof VfioError) || e.kind !== 'syscall' || !REFUSAL_ERRNOS.has(e.code)) return e;
  const onWrite = e.step === 'load:write' && e.op === 'data_fd write';
  const atExit = /^set-state RESUMING→/.test(e.step ?? '');
  if (!onWrite && !atExit) return e;
  const where = onWrite ? 'while it was being written' : 'when the device left RESUMING';
  e.message = `the destination driver refused the saved state ${where} (a different device type, firmware or driver version?): ${e.message}`;
  return e;
}

/** `  dev: RUNNING → STOP  [RUNNING→RUNNING_P2P, RUNNING_P2P→STOP]`: a request and the arcs the kernel walked. */
export function formatStateChange(c: Pick<StateChange, 'device' | 'from' | 'to' | 'arcs'>): string {
  return `  ${c.device}: ${migStateName(c.from)} → ${migStateName(c.to)}  [${c.arcs.map(([a, b]) => `${migStateName(a)}→${migStateName(b)}`).join(', ')}]`;
}

/** A state change as `--json` lists it: `path` is every state the kernel walked, `from` first. */
export function stateChangeJson(c: Pick<StateChange, 'device' | 'from' | 'to' | 'arcs'>): { device: string; from: string; to: string; path: string[] } {
  return { device: c.device, from: migStateName(c.from), to: migStateName(c.to), path: [c.from, ...c.arcs.map(([, b]) => b)].map(migStateName) };
}

/** `1.50 MiB (1572864 bytes)`. */
export function fmtBytes(n: number): string {
  if (n < 1024) return `${n} bytes`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = -1;
  do {
    v /= 1024;
    u++;
  } while (v >= 1024 && u < units.length - 1);
  return `${v.toFixed(v < 10 ? 2 : 1)} ${units[u]} (${n} bytes)`;
}

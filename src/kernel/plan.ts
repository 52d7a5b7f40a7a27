/**
 * Migration state-transition planning: a port of the Linux kernel's `vfio_mig_get_next_state()`
 * (drivers/vfio/vfio_main.c, unchanged in substance from 6.2 through 6.12), plus the userspace
 * refusals this library adds on top of it.
 *
 * How the kernel plans a SET of VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE: the core ioctl hands the
 * requested state to the driver's `migration_set_state`, and every in-tree driver (mlx5, hisi_acc,
 * pds, qat, virtio, mtty, vfio-ap, …) runs the same loop under its state mutex:
 *
 *   while (requested != current) {
 *     err = vfio_mig_get_next_state(dev, current, requested, &next); if (err) fail;
 *     execute the single arc current -> next; current = next;
 *   }
 *
 * So a request is a sequence of single arcs, each chosen by one call of the kernel function.
 * {@link nextState} is that one call; {@link planTransition} is the loop.
 *
 * The arcs and rules are those of the uAPI comment above `enum vfio_device_mig_state` in
 * include/uapi/linux/vfio.h (the "device migration Finite State Machine" block that follows
 * VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE): combination transitions take the shortest path, and
 * saving-group states (PRE_COPY, PRE_COPY_P2P, STOP_COPY) are never interior states of a path —
 * except that a path that both starts and ends in the saving group may move inside it
 * (PRE_COPY -> PRE_COPY_P2P -> STOP_COPY, listed in the kernel's own comment), because moving
 * within the group keeps the same data transfer session.
 */

import { VfioError } from '../base/errors';
import {
  MIG_STATE_COUNT,
  MIGRATION_FLAG_NAMES,
  MigState,
  VFIO_MIGRATION_P2P,
  VFIO_MIGRATION_PRE_COPY,
  VFIO_MIGRATION_STOP_COPY,
  flagNames,
  migStateName,
} from './uapi/vfio';

/** errno EINVAL (linux), what the kernel returns for every rejection modelled here. */
const EINVAL = 22;

/** `~0U`: the flag requirement the kernel gives ERROR, so that no device "supports" ERROR. */
const ALL_FLAGS = 0xffffffff;

const {
  ERROR: E,
  STOP,
  RUNNING,
  STOP_COPY,
  RESUMING,
  RUNNING_P2P: R_P2P,
  PRE_COPY,
  PRE_COPY_P2P: PC_P2P,
} = MigState;

/**
 * `vfio_from_fsm_table[cur][new]` of vfio_mig_get_next_state() (drivers/vfio/vfio_main.c): the
 * next state on the way from `cur` to `new` when every optional state is supported. Rows are the
 * current state, columns the requested state, both in numeric enum order:
 * ERROR, STOP, RUNNING, STOP_COPY, RESUMING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P.
 * An ERROR entry means "not permitted" (ERROR row and column; STOP_COPY -> PRE_COPY(_P2P)).
 */
const NEXT_TABLE: ReadonlyArray<ReadonlyArray<MigState>> = [
  /* ERROR        */ [E, E, E, E, E, E, E, E],
  /* STOP         */ [E, STOP, R_P2P, STOP_COPY, RESUMING, R_P2P, R_P2P, R_P2P],
  /* RUNNING      */ [E, R_P2P, RUNNING, R_P2P, R_P2P, R_P2P, PRE_COPY, R_P2P],
  /* STOP_COPY    */ [E, STOP, STOP, STOP_COPY, STOP, STOP, E, E],
  /* RESUMING     */ [E, STOP, STOP, STOP, RESUMING, STOP, STOP, STOP],
  /* RUNNING_P2P  */ [E, STOP, RUNNING, STOP, STOP, R_P2P, RUNNING, PC_P2P],
  /* PRE_COPY     */ [E, RUNNING, RUNNING, PC_P2P, RUNNING, RUNNING, PRE_COPY, PC_P2P],
  /* PRE_COPY_P2P */ [E, R_P2P, R_P2P, STOP_COPY, R_P2P, R_P2P, PRE_COPY, PC_P2P],
];

/**
 * `state_flags_table[state]` of vfio_mig_get_next_state(): the migration flags a device must
 * report for `state` to be usable. ERROR requires `~0U`, i.e. it is never usable.
 */
const REQUIRED_FLAGS: ReadonlyArray<number> = [
  /* ERROR        */ ALL_FLAGS,
  /* STOP         */ VFIO_MIGRATION_STOP_COPY,
  /* RUNNING      */ VFIO_MIGRATION_STOP_COPY,
  /* STOP_COPY    */ VFIO_MIGRATION_STOP_COPY,
  /* RESUMING     */ VFIO_MIGRATION_STOP_COPY,
  /* RUNNING_P2P  */ VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P,
  /* PRE_COPY     */ VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_PRE_COPY,
  /* PRE_COPY_P2P */ VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY,
];

/** True for an integer in the enum's range (the kernel's `>= ARRAY_SIZE(vfio_from_fsm_table)` test). */
function inRange(s: number): s is MigState {
  return Number.isInteger(s) && s >= 0 && s < MIG_STATE_COUNT;
}

/** The kernel's support test `(state_flags_table[s] & migration_flags) == state_flags_table[s]`, on u32s. */
function supported(s: MigState, flags: number): boolean {
  const need = REQUIRED_FLAGS[s] >>> 0;
  return ((need & flags) >>> 0) === need;
}

/** Flag names joined for messages: 'STOP_COPY|P2P', or 'none'. */
function describeFlags(flags: number): string {
  const names = flagNames(flags >>> 0, MIGRATION_FLAG_NAMES);
  return names.length ? names.join('|') : 'none';
}

/** Why vfio_mig_get_next_state() fails. */
export type PlanRejectionReason =
  /** `cur_fsm` out of range or not supported by the flags (ERROR always is): a WARN_ON in the kernel. */
  | 'cur-invalid'
  /** `new_fsm` out of range or not supported by the flags (ERROR always is). */
  | 'target-invalid'
  /** The table maps the request to ERROR: STOP_COPY -> PRE_COPY or PRE_COPY_P2P. */
  | 'blocked-arc';

/**
 * A failed vfio_mig_get_next_state() call. The kernel returns -EINVAL for all of them; `*next_fsm`
 * is left untouched for the first two reasons and set to ERROR for a blocked arc, but no driver
 * moves the device on a failure, so the device stays where it was.
 */
export interface PlanRejection {
  readonly rejected: true;
  readonly reason: PlanRejectionReason;
  /** Positive errno the kernel returns: always 22 (EINVAL). */
  readonly errno: number;
  /**
   * The kernel checks `cur_fsm` inside WARN_ON(): a rejected current state (in particular a SET
   * while the device is in ERROR, on drivers that do not guard against it) prints a kernel
   * warning with a backtrace, and panics a host booted with panic_on_warn.
   */
  readonly kernelWarns: boolean;
  /**
   * Kernels without the skip-loop fix (every release from 6.2, including 6.12) never return from
   * this call: the loop that skips unsupported states treats the ERROR sentinel as an unsupported
   * state and spins on `vfio_from_fsm_table[ERROR][new] == ERROR` forever, holding the driver's
   * state mutex. Fixed kernels return -EINVAL. See {@link refuseUnsafe}.
   */
  readonly hangsUnfixedKernel: boolean;
  /** Human-readable explanation. */
  readonly detail: string;
}

/** True when `r` is a {@link PlanRejection} rather than a state. */
export function isRejection(r: MigState | PlanRejection): r is PlanRejection {
  return typeof r === 'object' && r !== null && r.rejected === true;
}

/**
 * One call of the kernel's `vfio_mig_get_next_state(device, cur, target, &next)`
 * (drivers/vfio/vfio_main.c), ported step for step:
 *
 * 1. `cur` out of range, or not supported by `migrationFlags` → -EINVAL under WARN_ON
 *    (`reason: 'cur-invalid'`). ERROR requires `~0U` so `cur === ERROR` lands here.
 * 2. `target` out of range, or not supported → -EINVAL (`'target-invalid'`); this covers
 *    `target === ERROR` and optional states the device lacks.
 * 3. `next = table[cur][target]`; while `next` is not supported, `next = table[next][target]`
 *    (unsupported optional states are skipped: the driver sees a direct arc).
 * 4. `next === ERROR` → -EINVAL (`'blocked-arc'`: STOP_COPY -> PRE_COPY / PRE_COPY_P2P). Here the
 *    port follows fixed kernels and stops the loop at ERROR; an unfixed kernel never gets to step
 *    4, which the rejection reports as `hangsUnfixedKernel`.
 *
 * `cur === target` (allowed) returns `cur`, like the kernel; drivers never make that call.
 *
 * @param cur the device's current state (any number; values outside the enum are rejected)
 * @param target the requested end state
 * @param migrationFlags the device's VFIO_DEVICE_FEATURE_MIGRATION flags, taken as a u32
 * @returns the next state to step to, or a {@link PlanRejection}
 */
export function nextState(cur: MigState, target: MigState, migrationFlags: number): MigState | PlanRejection {
  const flags = migrationFlags >>> 0;
  if (!inRange(cur) || !supported(cur, flags)) {
    return {
      rejected: true,
      reason: 'cur-invalid',
      errno: EINVAL,
      kernelWarns: true,
      hangsUnfixedKernel: false,
      detail: !inRange(cur)
        ? `current state ${migStateName(cur)} is not a migration state`
        : cur === MigState.ERROR
          ? 'the device is in ERROR; only VFIO_DEVICE_RESET leaves it'
          : `current state ${migStateName(cur)} is not supported by migration flags ${describeFlags(flags)}`,
    };
  }
  if (!inRange(target) || !supported(target, flags)) {
    return {
      rejected: true,
      reason: 'target-invalid',
      errno: EINVAL,
      kernelWarns: false,
      hangsUnfixedKernel: false,
      detail: !inRange(target)
        ? `requested state ${migStateName(target)} is not a migration state`
        : target === MigState.ERROR
          ? 'ERROR cannot be requested'
          : `requested state ${migStateName(target)} is not supported by migration flags ${describeFlags(flags)}`,
    };
  }
  let next = NEXT_TABLE[cur][target];
  // The kernel's skip loop, with the fix's `next != ERROR` guard. Over all u32 flag values the
  // walk visits each state at most once before reaching a supported one (the tests check every
  // combination of the defined bits), so the bound is only a safety net.
  for (let steps = 0; next !== MigState.ERROR && !supported(next, flags); steps++) {
    if (steps >= MIG_STATE_COUNT) throw new Error(`vfio_mig_get_next_state port: skip loop does not terminate`);
    next = NEXT_TABLE[next][target];
  }
  if (next === MigState.ERROR) {
    return {
      rejected: true,
      reason: 'blocked-arc',
      errno: EINVAL,
      kernelWarns: false,
      // Unfixed kernels evaluate the skip test on ERROR itself, which fails unless flags are ~0U.
      hangsUnfixedKernel: !supported(MigState.ERROR, flags),
      detail: `${migStateName(cur)} -> ${migStateName(target)} is not a permitted transition`,
    };
  }
  return next;
}

/** The result of {@link planTransition}. */
export interface TransitionPlan {
  /**
   * The single arcs the kernel executes, in order, as `[from, to]` pairs; the first starts at
   * `cur`, each next one starts where the previous ended, the last ends at `target`. Empty when
   * `cur === target`.
   */
  arcs: Array<[MigState, MigState]>;
}

/**
 * Throws `VfioError { kind: 'protocol', code: 'EVFIO_UNSAFE_TRANSITION', errno: 22 }` for a
 * request that hangs unfixed kernels: the ones where vfio_mig_get_next_state()'s skip loop reaches
 * its ERROR sentinel (see {@link PlanRejection.hangsUnfixedKernel}). For every flag set a device
 * can report, these are exactly STOP_COPY -> PRE_COPY on a PRE_COPY device and
 * STOP_COPY -> PRE_COPY_P2P on a PRE_COPY + P2P device. On a device lacking the requested state
 * the kernel rejects it cleanly before the loop, so it is left to {@link planTransition}'s
 * `EVFIO_BAD_TRANSITION`. Fixed kernels would return EINVAL; errno 22 says so.
 */
export function refuseUnsafe(cur: MigState, target: MigState, migrationFlags: number): void {
  const r = nextState(cur, target, migrationFlags);
  if (isRejection(r) && r.hangsUnfixedKernel) {
    throw new VfioError(
      `refusing migration transition ${migStateName(cur)} -> ${migStateName(target)} ` +
        `(migration flags ${describeFlags(migrationFlags)}): the arc is not permitted and kernels ` +
        `without the vfio_mig_get_next_state() loop fix hang on it`,
      { code: 'EVFIO_UNSAFE_TRANSITION', kind: 'protocol', errno: EINVAL, op: 'VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE' },
    );
  }
}

/**
 * Plan a SET of VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE from `cur` to `target` the way the kernel
 * executes it: the drivers' `while (new != cur)` loop around vfio_mig_get_next_state().
 *
 * Checks, in order:
 * 1. {@link refuseUnsafe}: throws `EVFIO_UNSAFE_TRANSITION` for the requests that hang unfixed
 *    kernels (STOP_COPY -> PRE_COPY(_P2P) on a device supporting the target).
 * 2. Both ends are validated even when `cur === target`: an out-of-range or unsupported state,
 *    `cur === ERROR` or `target === ERROR` throws `EVFIO_BAD_TRANSITION`. The kernel itself
 *    skips the call when `cur === target` (so SET ERROR while in ERROR returns 0 on mlx5/mtty-style
 *    drivers and EIO on pds); we refuse it anyway, since ERROR "cannot be specified as a device
 *    state" (uAPI) and an unsupported current state means the caller's bookkeeping is wrong.
 * 3. `cur === target` → `{ arcs: [] }`.
 * 4. Otherwise the arcs of repeated {@link nextState} calls. A rejection there (a blocked arc)
 *    throws `EVFIO_BAD_TRANSITION`.
 *
 * Every `EVFIO_BAD_TRANSITION` is a `VfioError` with `kind: 'protocol'` and `errno: 22` (the
 * kernel's -EINVAL); the message names both states and the flags.
 *
 * @param cur the device's current state
 * @param target the requested end state
 * @param migrationFlags the device's VFIO_DEVICE_FEATURE_MIGRATION flags (u32)
 */
export function planTransition(cur: MigState, target: MigState, migrationFlags: number): TransitionPlan {
  refuseUnsafe(cur, target, migrationFlags);
  const fail = (detail: string): VfioError =>
    new VfioError(
      `invalid migration transition ${migStateName(cur)} -> ${migStateName(target)} ` +
        `(migration flags ${describeFlags(migrationFlags)}): ${detail}`,
      { code: 'EVFIO_BAD_TRANSITION', kind: 'protocol', errno: EINVAL, op: 'VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE' },
    );
  // nextState(x, x) validates both ends (the table's diagonal maps a supported x to itself).
  const ends = [nextState(cur, cur, migrationFlags), nextState(target, target, migrationFlags)];
  for (const r of ends) if (isRejection(r)) throw fail(r.detail);

  const arcs: Array<[MigState, MigState]> = [];
  let at = cur;
  while (at !== target) {
    const next = nextState(at, target, migrationFlags);
    if (isRejection(next)) throw fail(next.detail);
    // No path of the table is longer than 4 arcs; more means a broken port, not a bad request.
    if (arcs.length >= MIG_STATE_COUNT) throw new Error('planTransition: no progress toward the target');
    arcs.push([at, next]);
    at = next;
  }
  return { arcs };
}

/**
 * The migration flag sets a migratable device can report, in increasing order:
 * STOP_COPY, STOP_COPY|P2P, STOP_COPY|PRE_COPY, STOP_COPY|P2P|PRE_COPY.
 * VFIO_MIGRATION_STOP_COPY is mandatory (uAPI, VFIO_DEVICE_FEATURE_MIGRATION: "at least
 * VFIO_MIGRATION_STOP_COPY must be set"; vfio_pci_core_register_device() in
 * drivers/vfio/pci/vfio_pci_core.c refuses a device with mig_ops but no STOP_COPY); P2P and
 * PRE_COPY are independent options (state_flags_table gives PRE_COPY_P2P the need for both).
 */
export function legalFlagSets(): number[] {
  const out: number[] = [];
  for (const p2p of [0, VFIO_MIGRATION_P2P])
    for (const pre of [0, VFIO_MIGRATION_PRE_COPY]) out.push(VFIO_MIGRATION_STOP_COPY | p2p | pre);
  return out.sort((a, b) => a - b);
}

/** True when `flags` (a u32) is one of {@link legalFlagSets}: STOP_COPY set, no unknown bits. */
export function isLegalFlagSet(flags: number): boolean {
  return legalFlagSets().includes(flags);
}

/** The migration flags a state needs (`state_flags_table`); `0xffffffff` for ERROR, `undefined` out of range. */
export function requiredFlags(s: MigState): number | undefined {
  return inRange(s) ? REQUIRED_FLAGS[s] >>> 0 : undefined;
}

/** True when a device with `migrationFlags` supports `s` as a SET target (never ERROR). */
export function stateAllowed(s: MigState, migrationFlags: number): boolean {
  return inRange(s) && supported(s, migrationFlags >>> 0);
}

/**
 * The states a device with `migrationFlags` may be asked to enter, in numeric order. For a legal
 * flag set: STOP, RUNNING, STOP_COPY, RESUMING always; RUNNING_P2P with P2P; PRE_COPY with
 * PRE_COPY; PRE_COPY_P2P with both. ERROR is never included (kernel: `state_flags_table[ERROR]
 * = ~0U`). Empty without STOP_COPY.
 */
export function statesAllowed(migrationFlags: number): MigState[] {
  const out: MigState[] = [];
  for (let s = 0; s < MIG_STATE_COUNT; s++) if (stateAllowed(s, migrationFlags)) out.push(s);
  return out;
}

/** The saving group (uAPI): PRE_COPY, PRE_COPY_P2P and STOP_COPY share one data_fd session. */
export const SAVING_STATES: ReadonlySet<MigState> = new Set([MigState.PRE_COPY, MigState.PRE_COPY_P2P, MigState.STOP_COPY]);

/** True for PRE_COPY, PRE_COPY_P2P and STOP_COPY. */
export function isSavingState(s: MigState): boolean {
  return SAVING_STATES.has(s);
}

/**
 * States in which the device initiates no new peer-to-peer DMA (uAPI, "P2P quiescent state"):
 * RUNNING_P2P and PRE_COPY_P2P by definition, and STOP, STOP_COPY and RESUMING, where the device
 * does no DMA at all. Every device of a multi-device user must be in one of these before any of
 * them is stopped, so that no device is hit by P2P DMA while stopped.
 */
export const P2P_QUIESCED_STATES: ReadonlySet<MigState> = new Set([
  MigState.STOP,
  MigState.STOP_COPY,
  MigState.RESUMING,
  MigState.RUNNING_P2P,
  MigState.PRE_COPY_P2P,
]);

/** True when `s` is in {@link P2P_QUIESCED_STATES}. */
export function isP2pQuiesced(s: MigState): boolean {
  return P2P_QUIESCED_STATES.has(s);
}

/**
 * The state to park a running device in while the other devices of the same user are quiesced:
 * RUNNING_P2P for a RUNNING device, PRE_COPY_P2P for a PRE_COPY device, on a P2P device; `cur`
 * when it is already quiesced; `undefined` when the device lacks P2P (it can only be stopped),
 * or when `cur` is ERROR or not supported by the flags.
 */
export function p2pQuiesceState(cur: MigState, migrationFlags: number): MigState | undefined {
  if (cur === MigState.ERROR || !stateAllowed(cur, migrationFlags)) return undefined;
  if (isP2pQuiesced(cur)) return cur;
  const target = cur === MigState.PRE_COPY ? MigState.PRE_COPY_P2P : MigState.RUNNING_P2P;
  return stateAllowed(target, migrationFlags) ? target : undefined;
}

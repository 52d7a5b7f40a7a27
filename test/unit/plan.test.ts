import { describe, it, expect } from 'vitest';
import {
  MigState,
  ALL_MIG_STATES,
  VFIO_MIGRATION_P2P,
  VFIO_MIGRATION_PRE_COPY,
  VFIO_MIGRATION_STOP_COPY,
  migStateName,
} from '../../src/kernel/uapi/vfio';
import {
  isLegalFlagSet,
  isP2pQuiesced,
  isRejection,
  isSavingState,
  legalFlagSets,
  nextState,
  p2pQuiesceState,
  planTransition,
  refuseUnsafe,
  requiredFlags,
  stateAllowed,
  statesAllowed,
} from '../../src/kernel/plan';
import { thrown } from '../helpers/errors';

const {
  ERROR,
  STOP,
  RUNNING,
  STOP_COPY,
  RESUMING,
  RUNNING_P2P,
  PRE_COPY,
  PRE_COPY_P2P,
} = MigState;

const SC = VFIO_MIGRATION_STOP_COPY;
const P2P = VFIO_MIGRATION_P2P;
const PRE = VFIO_MIGRATION_PRE_COPY;
const ALL = SC | P2P | PRE;
const FLAG_SETS: ReadonlyArray<readonly [string, number]> = [
  ['STOP_COPY', SC],
  ['STOP_COPY|P2P', SC | P2P],
  ['STOP_COPY|PRE_COPY', SC | PRE],
  ['STOP_COPY|P2P|PRE_COPY', ALL],
];

// ---------------------------------------------------------------------------------------------
// Independent oracle, written from the uAPI comment above `enum vfio_device_mig_state` in
// include/uapi/linux/vfio.h — not from the kernel's next-state table.
// ---------------------------------------------------------------------------------------------

/** The single arcs the uAPI comment defines ("The driver implements the following behavior for the FSM arcs"). */
const UAPI_ARCS: ReadonlyArray<readonly [MigState, MigState]> = [
  [RUNNING_P2P, STOP],
  [STOP_COPY, STOP],
  [RESUMING, STOP],
  [PRE_COPY, RUNNING],
  [RUNNING_P2P, RUNNING],
  [PRE_COPY_P2P, RUNNING_P2P],
  [RUNNING, RUNNING_P2P],
  [STOP, RUNNING_P2P],
  [RUNNING, PRE_COPY],
  [RUNNING_P2P, PRE_COPY_P2P],
  [STOP, STOP_COPY],
  [PRE_COPY, PRE_COPY_P2P],
  [PRE_COPY_P2P, PRE_COPY],
  [PRE_COPY_P2P, STOP_COPY],
  [STOP, RESUMING],
];

/**
 * States usable with a flag set, per the uAPI: "5 states to support VFIO_MIGRATION_STOP_COPY"
 * (ERROR among them, but "ERROR cannot be specified as a device state"), RUNNING_P2P with P2P,
 * PRE_COPY with PRE_COPY, PRE_COPY_P2P with both.
 */
function oracleAllowed(s: MigState, flags: number): boolean {
  switch (s) {
    case STOP:
    case RUNNING:
    case STOP_COPY:
    case RESUMING:
      return (flags & SC) !== 0;
    case RUNNING_P2P:
      return (flags & SC) !== 0 && (flags & P2P) !== 0;
    case PRE_COPY:
      return (flags & SC) !== 0 && (flags & PRE) !== 0;
    case PRE_COPY_P2P:
      return (flags & SC) !== 0 && (flags & P2P) !== 0 && (flags & PRE) !== 0;
    default:
      return false;
  }
}

/**
 * The arcs legal on a device with `flags`. Without P2P, "the states behave as though the device
 * was fully running if not supported": RUNNING_P2P collapses onto RUNNING and PRE_COPY_P2P onto
 * PRE_COPY (so RUNNING_P2P -> STOP becomes RUNNING -> STOP, PRE_COPY_P2P -> STOP_COPY becomes
 * PRE_COPY -> STOP_COPY). "Arcs touching PRE_COPY and PRE_COPY_P2P are removed if support for
 * PRE_COPY is not present."
 */
function oracleArcs(flags: number): Set<string> {
  const collapse = (s: MigState): MigState =>
    flags & P2P ? s : s === RUNNING_P2P ? RUNNING : s === PRE_COPY_P2P ? PRE_COPY : s;
  const out = new Set<string>();
  for (const [a, b] of UAPI_ARCS) {
    const [x, y] = [collapse(a), collapse(b)];
    if (x === y) continue;
    if (!oracleAllowed(x, flags) || !oracleAllowed(y, flags)) continue;
    out.add(key(x, y));
  }
  return out;
}

const key = (a: MigState, b: MigState): string => `${migStateName(a)}->${migStateName(b)}`;
const SAVING = new Set<MigState>([PRE_COPY, PRE_COPY_P2P, STOP_COPY]);

/**
 * Shortest path length over the oracle arcs (uAPI: "Select the shortest path"; "The path cannot
 * have saving group states as interior arcs, only starting/end states" — relaxed when both ends
 * are in the saving group, where the session is shared). `undefined` when unreachable.
 */
function oracleShortest(from: MigState, to: MigState, flags: number): number | undefined {
  const arcs = [...oracleArcs(flags)].map((k) => k.split('->').map((n) => MigState[n as keyof typeof MigState]));
  const interiorOk = (s: MigState): boolean => !SAVING.has(s) || (SAVING.has(from) && SAVING.has(to));
  const dist = new Map<MigState, number>([[from, 0]]);
  const queue: MigState[] = [from];
  while (queue.length) {
    const s = queue.shift()!;
    if (s === to) return dist.get(s);
    if (s !== from && !interiorOk(s)) continue;
    for (const [a, b] of arcs) {
      if (a === s && !dist.has(b)) {
        dist.set(b, dist.get(s)! + 1);
        queue.push(b);
      }
    }
  }
  return undefined;
}

/** Rejections per the uAPI: ERROR either end, an end the flags do not allow, the two blocked arcs. */
function oracleRejects(from: MigState, to: MigState, flags: number): boolean {
  if (from === ERROR || to === ERROR) return true;
  if (!oracleAllowed(from, flags) || !oracleAllowed(to, flags)) return true;
  return from === STOP_COPY && (to === PRE_COPY || to === PRE_COPY_P2P);
}

/** The states visited by a plan: from, each arc's end. */
function pathOf(from: MigState, arcs: Array<[MigState, MigState]>): MigState[] {
  return [from, ...arcs.map(([, b]) => b)];
}

function plannedPath(from: MigState, to: MigState, flags: number): MigState[] {
  return pathOf(from, planTransition(from, to, flags).arcs);
}

// ---------------------------------------------------------------------------------------------

describe('legalFlagSets / statesAllowed', () => {
  it('lists the four combinations with STOP_COPY', () => {
    expect(legalFlagSets()).toEqual([SC, SC | P2P, SC | PRE, ALL]);
    for (const f of legalFlagSets()) expect(isLegalFlagSet(f)).toBe(true);
    for (const f of [0, P2P, PRE, P2P | PRE, SC | 8, 0xffffffff]) expect(isLegalFlagSet(f)).toBe(false);
  });

  it('allows the states the uAPI lists for each flag set, never ERROR', () => {
    for (let flags = 0; flags < 8; flags++) {
      const expected = ALL_MIG_STATES.filter((s) => oracleAllowed(s, flags));
      expect(statesAllowed(flags)).toEqual(expected);
      for (const s of ALL_MIG_STATES) expect(stateAllowed(s, flags)).toBe(oracleAllowed(s, flags));
    }
    expect(statesAllowed(SC)).toEqual([STOP, RUNNING, STOP_COPY, RESUMING]);
    expect(statesAllowed(ALL)).toEqual([STOP, RUNNING, STOP_COPY, RESUMING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P]);
    expect(stateAllowed(8 as MigState, ALL)).toBe(false);
    expect(stateAllowed(-1 as MigState, ALL)).toBe(false);
  });

  it('reports the kernel state_flags_table', () => {
    expect(requiredFlags(ERROR)).toBe(0xffffffff);
    expect(requiredFlags(RUNNING)).toBe(SC);
    expect(requiredFlags(RUNNING_P2P)).toBe(SC | P2P);
    expect(requiredFlags(PRE_COPY)).toBe(SC | PRE);
    expect(requiredFlags(PRE_COPY_P2P)).toBe(ALL);
    expect(requiredFlags(9 as MigState)).toBeUndefined();
  });
});

describe('state helpers', () => {
  it('isSavingState is the saving group', () => {
    expect(ALL_MIG_STATES.filter(isSavingState)).toEqual([STOP_COPY, PRE_COPY, PRE_COPY_P2P]);
  });

  it('isP2pQuiesced / p2pQuiesceState', () => {
    expect(ALL_MIG_STATES.filter(isP2pQuiesced)).toEqual([STOP, STOP_COPY, RESUMING, RUNNING_P2P, PRE_COPY_P2P]);
    expect(p2pQuiesceState(RUNNING, SC | P2P)).toBe(RUNNING_P2P);
    expect(p2pQuiesceState(PRE_COPY, ALL)).toBe(PRE_COPY_P2P);
    expect(p2pQuiesceState(STOP, SC)).toBe(STOP);
    expect(p2pQuiesceState(RUNNING, SC)).toBeUndefined();
    expect(p2pQuiesceState(PRE_COPY, SC | PRE)).toBeUndefined();
    expect(p2pQuiesceState(ERROR, ALL)).toBeUndefined();
  });
});

describe('every (from, to) pair under every legal flag set', () => {
  for (const [flagName, flags] of FLAG_SETS) {
    describe(flagName, () => {
      const legal = oracleArcs(flags);
      for (const from of ALL_MIG_STATES) {
        for (const to of ALL_MIG_STATES) {
          it(`${migStateName(from)} -> ${migStateName(to)}`, () => {
            if (oracleRejects(from, to, flags)) {
              const e = thrown(() => planTransition(from, to, flags));
              expect(e.kind).toBe('protocol');
              expect(e.errno).toBe(22);
              expect(['EVFIO_BAD_TRANSITION', 'EVFIO_UNSAFE_TRANSITION']).toContain(e.code);
              expect(e.message).toContain(migStateName(from));
              expect(e.message).toContain(migStateName(to));
              expect(e.message).toContain(flagName);
              return;
            }
            const { arcs } = planTransition(from, to, flags);
            const path = pathOf(from, arcs);
            // (a) starts at from, ends at to, arcs chain
            expect(path[0]).toBe(from);
            expect(path[path.length - 1]).toBe(to);
            if (from === to) expect(arcs).toEqual([]);
            for (let i = 1; i < arcs.length; i++) expect(arcs[i][0]).toBe(arcs[i - 1][1]);
            // (b) only states the flags allow
            for (const s of path) expect(oracleAllowed(s, flags)).toBe(true);
            // (c) no saving state in the interior, unless the whole path is inside the saving group
            const interior = path.slice(1, -1);
            if (!(SAVING.has(from) && SAVING.has(to))) {
              for (const s of interior) expect(SAVING.has(s), `${path.map(migStateName).join(' -> ')}`).toBe(false);
            } else {
              for (const s of interior) expect(SAVING.has(s)).toBe(true);
            }
            // no state repeats
            expect(new Set(path).size).toBe(path.length);
            // (d) each arc is a legal single arc of the uAPI
            for (const [a, b] of arcs) expect(legal.has(key(a, b)), key(a, b)).toBe(true);
            // shortest path, as the uAPI requires
            expect(arcs.length).toBe(oracleShortest(from, to, flags));
            // nextState agrees with the first arc
            if (from !== to) expect(nextState(from, to, flags)).toBe(arcs[0][1]);
          });
        }
      }
    });
  }

  it('uses exactly the arcs the kernel comment says a driver must implement', () => {
    // From the comment above vfio_from_fsm_table (drivers/vfio/vfio_main.c).
    const base = ['RESUMING->STOP', 'STOP->RESUMING', 'STOP->STOP_COPY', 'STOP_COPY->STOP'];
    const p2p = ['RUNNING->RUNNING_P2P', 'RUNNING_P2P->RUNNING', 'RUNNING_P2P->STOP', 'STOP->RUNNING_P2P'];
    const noP2p = ['RUNNING->STOP', 'STOP->RUNNING'];
    const pre = ['RUNNING->PRE_COPY', 'PRE_COPY->RUNNING', 'PRE_COPY->STOP_COPY'];
    const preP2p = [
      'PRE_COPY->RUNNING',
      'PRE_COPY->PRE_COPY_P2P',
      'PRE_COPY_P2P->PRE_COPY',
      'PRE_COPY_P2P->RUNNING_P2P',
      'PRE_COPY_P2P->STOP_COPY',
      'RUNNING->PRE_COPY',
      'RUNNING_P2P->PRE_COPY_P2P',
    ];
    for (const [, flags] of FLAG_SETS) {
      const expected = new Set([
        ...base,
        ...(flags & P2P ? p2p : noP2p),
        ...(flags & PRE ? (flags & P2P ? preP2p : pre) : []),
      ]);
      const used = new Set<string>();
      for (const from of ALL_MIG_STATES)
        for (const to of ALL_MIG_STATES) {
          if (oracleRejects(from, to, flags)) continue;
          for (const [a, b] of planTransition(from, to, flags).arcs) used.add(key(a, b));
        }
      expect([...used].sort()).toEqual([...expected].sort());
      // and they are all legal uAPI arcs
      expect([...used].every((k) => oracleArcs(flags).has(k))).toBe(true);
    }
  });
});

describe('explicit paths', () => {
  const p = (...s: MigState[]): MigState[] => s;

  it('all combination transitions the kernel comment lists (every optional feature supported)', () => {
    // Copied state-for-state from the comment above vfio_from_fsm_table.
    const combos: MigState[][] = [
      p(PRE_COPY, PRE_COPY_P2P, STOP_COPY),
      p(PRE_COPY, RUNNING, RUNNING_P2P),
      p(PRE_COPY, RUNNING, RUNNING_P2P, STOP),
      p(PRE_COPY, RUNNING, RUNNING_P2P, STOP, RESUMING),
      p(PRE_COPY_P2P, RUNNING_P2P, RUNNING),
      p(PRE_COPY_P2P, RUNNING_P2P, STOP),
      p(PRE_COPY_P2P, RUNNING_P2P, STOP, RESUMING),
      p(RESUMING, STOP, RUNNING_P2P),
      p(RESUMING, STOP, RUNNING_P2P, PRE_COPY_P2P),
      p(RESUMING, STOP, RUNNING_P2P, RUNNING),
      p(RESUMING, STOP, RUNNING_P2P, RUNNING, PRE_COPY),
      p(RESUMING, STOP, STOP_COPY),
      p(RUNNING, RUNNING_P2P, PRE_COPY_P2P),
      p(RUNNING, RUNNING_P2P, STOP),
      p(RUNNING, RUNNING_P2P, STOP, RESUMING),
      p(RUNNING, RUNNING_P2P, STOP, STOP_COPY),
      p(RUNNING_P2P, RUNNING, PRE_COPY),
      p(RUNNING_P2P, STOP, RESUMING),
      p(RUNNING_P2P, STOP, STOP_COPY),
      p(STOP, RUNNING_P2P, PRE_COPY_P2P),
      p(STOP, RUNNING_P2P, RUNNING),
      p(STOP, RUNNING_P2P, RUNNING, PRE_COPY),
      p(STOP_COPY, STOP, RESUMING),
      p(STOP_COPY, STOP, RUNNING_P2P),
      p(STOP_COPY, STOP, RUNNING_P2P, RUNNING),
    ];
    for (const path of combos) expect(plannedPath(path[0], path[path.length - 1], ALL)).toEqual(path);

    // Together with the 15 single arcs that is every permitted pair of distinct states.
    const covered = new Set(combos.map((c) => key(c[0], c[c.length - 1])));
    for (const [a, b] of UAPI_ARCS) {
      expect(plannedPath(a, b, ALL)).toEqual([a, b]);
      covered.add(key(a, b));
    }
    let permitted = 0;
    for (const a of ALL_MIG_STATES)
      for (const b of ALL_MIG_STATES) if (a !== b && !oracleRejects(a, b, ALL)) permitted++;
    expect(covered.size).toBe(permitted);
    expect(permitted).toBe(40);
  });

  it('with P2P', () => {
    expect(plannedPath(RUNNING, STOP_COPY, SC | P2P)).toEqual(p(RUNNING, RUNNING_P2P, STOP, STOP_COPY));
    expect(plannedPath(RUNNING, RESUMING, SC | P2P)).toEqual(p(RUNNING, RUNNING_P2P, STOP, RESUMING));
    expect(plannedPath(RUNNING, STOP, SC | P2P)).toEqual(p(RUNNING, RUNNING_P2P, STOP));
    expect(plannedPath(STOP_COPY, RUNNING, SC | P2P)).toEqual(p(STOP_COPY, STOP, RUNNING_P2P, RUNNING));
    expect(plannedPath(RESUMING, RUNNING, SC | P2P)).toEqual(p(RESUMING, STOP, RUNNING_P2P, RUNNING));
  });

  it('without P2P the skipped RUNNING_P2P leaves direct arcs', () => {
    expect(plannedPath(RUNNING, STOP, SC)).toEqual(p(RUNNING, STOP));
    expect(plannedPath(STOP, RUNNING, SC)).toEqual(p(STOP, RUNNING));
    expect(plannedPath(RUNNING, STOP_COPY, SC)).toEqual(p(RUNNING, STOP, STOP_COPY));
    expect(plannedPath(RUNNING, RESUMING, SC)).toEqual(p(RUNNING, STOP, RESUMING));
    expect(plannedPath(STOP_COPY, RUNNING, SC)).toEqual(p(STOP_COPY, STOP, RUNNING));
    expect(plannedPath(RESUMING, RUNNING, SC)).toEqual(p(RESUMING, STOP, RUNNING));
    expect(plannedPath(STOP_COPY, RESUMING, SC)).toEqual(p(STOP_COPY, STOP, RESUMING));
  });

  it('PRE_COPY without P2P', () => {
    expect(plannedPath(PRE_COPY, STOP_COPY, SC | PRE)).toEqual(p(PRE_COPY, STOP_COPY));
    expect(plannedPath(PRE_COPY, STOP, SC | PRE)).toEqual(p(PRE_COPY, RUNNING, STOP));
    expect(plannedPath(STOP, PRE_COPY, SC | PRE)).toEqual(p(STOP, RUNNING, PRE_COPY));
    expect(plannedPath(RESUMING, PRE_COPY, SC | PRE)).toEqual(p(RESUMING, STOP, RUNNING, PRE_COPY));
    expect(plannedPath(PRE_COPY, RESUMING, SC | PRE)).toEqual(p(PRE_COPY, RUNNING, STOP, RESUMING));
  });

  it('PRE_COPY with P2P goes through PRE_COPY_P2P to STOP_COPY', () => {
    expect(plannedPath(PRE_COPY, STOP_COPY, ALL)).toEqual(p(PRE_COPY, PRE_COPY_P2P, STOP_COPY));
    expect(plannedPath(PRE_COPY_P2P, STOP_COPY, ALL)).toEqual(p(PRE_COPY_P2P, STOP_COPY));
    expect(plannedPath(RUNNING, PRE_COPY, ALL)).toEqual(p(RUNNING, PRE_COPY));
  });

  it('same state: no arcs', () => {
    for (const [, flags] of FLAG_SETS)
      for (const s of statesAllowed(flags)) expect(planTransition(s, s, flags)).toEqual({ arcs: [] });
  });
});

describe('nextState (the kernel function)', () => {
  it('returns cur for cur == target (table diagonal)', () => {
    for (const s of statesAllowed(ALL)) expect(nextState(s, s, ALL)).toBe(s);
  });

  it('rejects from ERROR with the WARN_ON path', () => {
    for (const to of ALL_MIG_STATES) {
      const r = nextState(ERROR, to, ALL);
      expect(isRejection(r)).toBe(true);
      if (!isRejection(r)) continue;
      expect(r.reason).toBe('cur-invalid');
      expect(r.errno).toBe(22);
      expect(r.kernelWarns).toBe(true);
      expect(r.hangsUnfixedKernel).toBe(false);
    }
  });

  it('rejects ERROR, out-of-range and unsupported targets', () => {
    for (const to of [ERROR, 8, -1, 2.5, 0x100] as MigState[]) {
      const r = nextState(RUNNING, to, ALL);
      expect(isRejection(r) && r.reason).toBe('target-invalid');
      expect(isRejection(r) && r.kernelWarns).toBe(false);
    }
    for (const to of [RUNNING_P2P, PRE_COPY, PRE_COPY_P2P]) {
      const r = nextState(RUNNING, to, SC);
      expect(isRejection(r) && r.reason).toBe('target-invalid');
    }
  });

  it('rejects out-of-range and unsupported current states', () => {
    for (const cur of [8, -1, 1.5]) expect(isRejection(nextState(cur as MigState, RUNNING, ALL))).toBe(true);
    const r = nextState(RUNNING_P2P, RUNNING, SC);
    expect(isRejection(r) && r.reason).toBe('cur-invalid');
  });

  it('flags a missing STOP_COPY as an unsupported current state', () => {
    for (const flags of [0, P2P, PRE, P2P | PRE]) {
      const r = nextState(RUNNING, STOP, flags);
      expect(isRejection(r) && r.reason).toBe('cur-invalid');
    }
  });

  it('blocks STOP_COPY -> PRE_COPY(_P2P) and marks the unfixed-kernel hang', () => {
    for (const [to, flags] of [
      [PRE_COPY, SC | PRE],
      [PRE_COPY, ALL],
      [PRE_COPY_P2P, ALL],
    ] as const) {
      const r = nextState(STOP_COPY, to, flags);
      expect(isRejection(r)).toBe(true);
      if (!isRejection(r)) continue;
      expect(r.reason).toBe('blocked-arc');
      expect(r.errno).toBe(22);
      expect(r.hangsUnfixedKernel).toBe(true);
    }
    // Without the target's flags the kernel rejects before the loop: no hang.
    const clean = nextState(STOP_COPY, PRE_COPY, SC | P2P);
    expect(isRejection(clean) && clean.reason).toBe('target-invalid');
    expect(isRejection(clean) && clean.hangsUnfixedKernel).toBe(false);
  });

  it('hangs an unfixed kernel only on the two blocked arcs', () => {
    for (const [, flags] of FLAG_SETS)
      for (const from of ALL_MIG_STATES)
        for (const to of ALL_MIG_STATES) {
          const r = nextState(from, to, flags);
          const hangs = isRejection(r) && r.hangsUnfixedKernel;
          expect(hangs, `${key(from, to)} ${flags}`).toBe(
            from === STOP_COPY && (to === PRE_COPY || to === PRE_COPY_P2P) && oracleAllowed(to, flags),
          );
        }
  });

  it('terminates for every value of the defined flag bits, with or without unknown bits', () => {
    for (let low = 0; low < 8; low++)
      for (const high of [0, 0xfffffff8])
        for (const from of ALL_MIG_STATES)
          for (const to of ALL_MIG_STATES) expect(() => nextState(from, to, (high | low) >>> 0)).not.toThrow();
  });

  it('ignores unknown flag bits like the kernel subset test does', () => {
    for (const from of ALL_MIG_STATES)
      for (const to of ALL_MIG_STATES) {
        const a = nextState(from, to, SC | P2P);
        const b = nextState(from, to, SC | P2P | 0x100);
        expect(isRejection(a) ? a.reason : a).toEqual(isRejection(b) ? b.reason : b);
      }
  });
});

describe('unsafe STOP_COPY -> PRE_COPY(_P2P)', () => {
  it('refuses before any kernel call, with EVFIO_UNSAFE_TRANSITION', () => {
    for (const [to, flags] of [
      [PRE_COPY, SC | PRE],
      [PRE_COPY, ALL],
      [PRE_COPY_P2P, ALL],
    ] as const) {
      for (const fn of [() => refuseUnsafe(STOP_COPY, to, flags), () => planTransition(STOP_COPY, to, flags)]) {
        const e = thrown(fn);
        expect(e.code).toBe('EVFIO_UNSAFE_TRANSITION');
        expect(e.kind).toBe('protocol');
        expect(e.errno).toBe(22);
        expect(e.message).toContain('STOP_COPY');
        expect(e.message).toContain(migStateName(to));
      }
    }
  });

  it('is a plain bad transition where the target is unsupported', () => {
    expect(thrown(() => planTransition(STOP_COPY, PRE_COPY, SC | P2P)).code).toBe('EVFIO_BAD_TRANSITION');
    expect(thrown(() => planTransition(STOP_COPY, PRE_COPY_P2P, SC | PRE)).code).toBe('EVFIO_BAD_TRANSITION');
    expect(() => refuseUnsafe(STOP_COPY, PRE_COPY, SC | P2P)).not.toThrow();
  });

  it('lets every other request through refuseUnsafe', () => {
    for (const [, flags] of FLAG_SETS)
      for (const from of ALL_MIG_STATES)
        for (const to of ALL_MIG_STATES)
          if (!(from === STOP_COPY && SAVING.has(to) && to !== STOP_COPY))
            expect(() => refuseUnsafe(from, to, flags)).not.toThrow();
  });
});

describe('planTransition errors', () => {
  it('EVFIO_BAD_TRANSITION with errno 22 names from, to and flags', () => {
    const e = thrown(() => planTransition(RUNNING, ERROR, SC | P2P));
    expect(e.code).toBe('EVFIO_BAD_TRANSITION');
    expect(e.kind).toBe('protocol');
    expect(e.errno).toBe(22);
    expect(e.message).toContain('RUNNING -> ERROR');
    expect(e.message).toContain('STOP_COPY|P2P');
  });

  it('refuses ERROR -> ERROR and unsupported same-state requests', () => {
    expect(thrown(() => planTransition(ERROR, ERROR, ALL)).code).toBe('EVFIO_BAD_TRANSITION');
    expect(thrown(() => planTransition(PRE_COPY, PRE_COPY, SC)).code).toBe('EVFIO_BAD_TRANSITION');
  });

  it('refuses out-of-range states', () => {
    expect(thrown(() => planTransition(RUNNING, 8 as MigState, ALL)).message).toContain('UNKNOWN(8)');
    expect(thrown(() => planTransition(42 as MigState, RUNNING, ALL)).message).toContain('UNKNOWN(42)');
  });
});

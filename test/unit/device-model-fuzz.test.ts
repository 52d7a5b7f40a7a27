/**
 * Issue 8, 6.5: a guest can never throw out of the config-space or BAR handlers, and whatever it
 * writes, the model stays consistent. Seeded, reproducible: each case attaches a simulated device
 * next to a second one on the same reference host and plays random guest accesses — config
 * writes and reads at random offsets and sizes over the whole config space (valid or not), biased
 * towards the registers that move things (BARs, COMMAND, MSI and MSI-X control, the MSI message
 * and mask bits), with values that overlap the other device's BAR; and BAR accesses through the
 * bus (the MSI-X table and PBA included). After every access:
 *  - nothing was thrown (the reference bus's own EVFIO_NO_MAPPING for an address nothing maps is
 *    the only error, and it comes from the bus, not from a handler);
 *  - the shadow kept its masks: read-only bits never changed, write-1-to-clear bits never got set;
 *  - the device's BARs on the bus are exactly the shadow's mapped BARs, at the shadow's addresses,
 *    and the other device's BAR never moved;
 *  - the armed interrupt mode is the shadow's (MSI-X, else MSI, else INTx unless disabled), in the
 *    model and in the simulated kernel alike;
 *  - every MSI and MSI-X vector behaves: the device raising a live vector signals the host route
 *    once; raising a masked MSI-X vector signals nothing and sets its PBA bit when the kernel holds
 *    a trigger for it (on a NORESIZE index every vector of the enabled range has one), and the
 *    interrupt arrives when the vector is unmasked (checked when a later step unmasks it);
 *  - no 'guest-error' but invalid accesses (the reference host refuses nothing).
 *
 * Half the cases run on a device that allocates MSI-X vectors dynamically (no NORESIZE).
 * Environment: FUZZ_CASES (default 40), FUZZ_STEPS (default 250), FUZZ_SEED, FUZZ_ONLY=N (case N
 * alone); a failure names the seed, case and step, and the accesses that led there.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { VfioError } from '../../src/base/errors';
import type { GuestError } from '../../src/model/guest-error';
import type { ReferenceHost } from '../../src/model/host/reference';
import type { VfioPciDevice } from '../../src/model/vfio-pci';
import type { ConfigSpace } from '../../src/model/pci/config-space';
import * as r from '../../src/model/pci/regs';
import { BAR0, attach, dispose, makeEnv, newHost, openSim, simOf, type Env } from '../helpers/device-model';
import { Rng, mix32 } from '../helpers/rng';

const CASES = Number(process.env.FUZZ_CASES ?? 40);
const STEPS = Number(process.env.FUZZ_STEPS ?? 250);
const SEED = Number(process.env.FUZZ_SEED ?? 0x9e57) >>> 0;
const ONLY = process.env.FUZZ_ONLY !== undefined ? Number(process.env.FUZZ_ONLY) : undefined;

let env: Env;
beforeEach(() => {
  env = makeEnv();
});
afterEach(() => dispose(env));

/** How often the checks met the states that matter, so that the fuzz cannot go vacuous. */
const seen = { msixLive: 0, msixParked: 0, pendingDelivered: 0, msiLive: 0, overlaps: 0 };

interface Case {
  rng: Rng;
  dynamic: boolean;
  /** MSI-X vectors whose interrupt is pending (raised while masked), to arrive on unmask. */
  pending: Set<number>;
  host: ReferenceHost;
  d: VfioPciDevice;
  other: VfioPciDevice;
  otherAt: bigint;
  initial: Buffer;
  errors: GuestError[];
}

/** Registers a guest writes to move things, as [offset, size] (sim layout: MSI at 0x40, MSI-X at 0x58). */
function hotRegisters(cfg: ConfigSpace): Array<[number, number]> {
  const msi = cfg.msi()!.offset;
  const msix = cfg.msix()!.offset;
  return [
    [r.PCI_COMMAND, 2], [r.PCI_COMMAND, 4], [r.PCI_STATUS, 2], [r.PCI_BASE_ADDRESS_0, 4], [r.PCI_BASE_ADDRESS_0 + 2, 2],
    [r.PCI_BASE_ADDRESS_0 + 4, 4], [r.PCI_ROM_ADDRESS, 4], [r.PCI_INTERRUPT_LINE, 1],
    [msi + r.PCI_MSI_FLAGS, 2], [msi, 4], [msi + 4, 4], [msi + 8, 4], [msi + 12, 2], [msi + 16, 4], [msi + 16, 1],
    [msix + r.PCI_MSIX_FLAGS, 2], [msix, 4], [msix + 3, 1],
  ];
}

function value(c: Case, size: number): number {
  const { rng } = c;
  switch (rng.int(8)) {
    case 0:
      return 0xffff_ffff;
    case 1:
      return 0;
    case 2:
      return Number(c.otherAt) + rng.pick([0, 0x800, 0x1000]); // onto the other device's BAR
    case 3:
      return rng.pick([0x0006, 0x0002, 0x0406, 0x0007, 0x0000]); // COMMAND-like
    case 4:
      return rng.pick([0x8000, 0xc000, 0x4000, 0x0000, 0x0001, 0x0081, 0x00a1, 0x0021]) << (rng.chance(0.5) ? 16 : 0); // MSI/MSI-X control
    default:
      return size === 4 ? rng.u32() : rng.int(2 ** (8 * size));
  }
}

/** A config access: hot registers half the time, else anywhere (sizes 1/2/4, sometimes invalid). */
function access(c: Case): [number, number] {
  const { rng } = c;
  if (rng.chance(0.5)) return rng.pick(hotRegisters(c.d.config));
  const size = rng.chance(0.9) ? rng.pick([1, 2, 4]) : rng.pick([0, 3, 8]);
  const offset = rng.chance(0.9) ? rng.int(c.d.config.size) & ~(rng.chance(0.8) ? size - 1 : 0) : rng.pick([-1, c.d.config.size, c.d.config.size - 2]);
  return [offset, size];
}

/** A guest access to BAR0 through the bus, where BAR0 is mapped now (else nothing). */
function barAccess(c: Case): string {
  const { rng, host, d } = c;
  const at = host.bus.find(d.id, 0)?.address;
  if (at === undefined) return 'bar: not mapped';
  const size = rng.pick([1, 2, 4, 4, 4, 8] as const);
  const region = rng.pick(['table', 'table', 'pba', 'regs']);
  const base = region === 'table' ? BAR0.MSIX_TABLE : region === 'pba' ? BAR0.MSIX_PBA : rng.pick([BAR0.CONTROL, BAR0.SCRATCH, BAR0.ID, BAR0.DOORBELL]);
  const span = region === 'table' ? 8 * 16 : region === 'pba' ? 8 : 4;
  let offset = base + rng.int(span);
  if (rng.chance(0.85)) offset &= ~(size - 1);
  if (region === 'table' && size === 4 && rng.chance(0.5)) offset = base + rng.int(8) * 16 + 12; // a vector control dword
  const write = rng.chance(0.7);
  const data = Buffer.alloc(size);
  if (write) {
    if (region === 'table' && (offset & 15) === 12 && size === 4) data.writeUInt32LE(rng.int(2)); // mask / unmask
    else if (region === 'regs' && offset === BAR0.DOORBELL) data.writeUIntLE(rng.int(10), 0, Math.min(size, 4));
    else data.set(rng.bytes(size));
  }
  try {
    host.bus.access('mmio', at + BigInt(offset), data, write);
  } catch (e) {
    // The reference bus's own verdict on an access running past the end of the latest mapping.
    if (!(e instanceof VfioError && e.code === 'EVFIO_NO_MAPPING')) throw e;
  }
  return `bar ${write ? 'write' : 'read'} ${size}@0x${offset.toString(16)}${write ? `=${data.toString('hex')}` : ''}`;
}

/** The interrupt mode the shadow asks for. */
function expectedMode(cfg: ConfigSpace): string {
  if (cfg.msix()?.enabled) return 'msix';
  if (cfg.msi()?.enabled) return 'msi';
  return cfg.read(r.PCI_INTERRUPT_PIN, 1) !== 0 && (cfg.command & r.PCI_COMMAND_INTX_DISABLE) === 0 ? 'intx' : 'none';
}

function check(c: Case): void {
  const cfg = c.d.config;
  // Masks: read-only bits as they were, write-1-to-clear bits never set.
  for (let i = 0; i < cfg.size; i++) {
    const ro = ~(cfg.wmask[i] | cfg.w1cmask[i]) & 0xff;
    if ((cfg.bytes[i] ^ c.initial[i]) & ro) throw new Error(`read-only bits of config byte 0x${i.toString(16)} changed: 0x${c.initial[i].toString(16)} → 0x${cfg.bytes[i].toString(16)}`);
    if (cfg.bytes[i] & cfg.w1cmask[i] & ~c.initial[i]) throw new Error(`write-1-to-clear bits of config byte 0x${i.toString(16)} got set`);
  }
  // BARs: the bus holds exactly the shadow's mapped BARs.
  const want = cfg.bars().filter((b) => b.mapped && b.kind !== 'rom').map((b) => ({ bar: b.index, space: b.kind === 'io' ? 'pio' : 'mmio', address: b.address, size: b.size }));
  const onBus = c.host.bus.mappings().filter((m) => m.device === c.d.id).map(({ bar, space, address, size }) => ({ bar, space, address, size }));
  expect(onBus).toEqual(want);
  expect(c.d.mappedBars).toEqual(want);
  expect(c.host.bus.find(c.other.id, 0)?.address).toBe(c.otherAt);
  // Interrupts: the shadow's mode, in the model and in the kernel.
  const mode = expectedMode(cfg);
  expect(c.d.interrupts.mode).toBe(mode);
  expect(simOf(env, c.d).irqs().mode).toBe(mode);
  checkVectors(c, mode);
  if (c.host.bus.overlaps().length) seen.overlaps++;
  // Only invalid accesses are reported on this host.
  const other = c.errors.filter((e) => e.step !== 'access');
  if (other.length) throw new Error(`unexpected guest-error: ${other[0].step}: ${other[0].error.message}`);
}

/** The device raises `vector`, as its doorbell does (not through the bus: the BAR may be off it). */
function raise(c: Case, vector: number): void {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(vector);
  c.d.device.writeRegion(0, BAR0.DOORBELL, b);
}

/** The PBA through the bus (null when BAR0 is not on the bus). */
function pba(c: Case): bigint | null {
  const at = c.host.bus.find(c.d.id, 0)?.address;
  const m = c.d.config.msix()!;
  return at === undefined ? null : c.host.bus.read('mmio', at + BigInt(m.pbaOffset), 8);
}

function checkVectors(c: Case, mode: string): void {
  const { d, host } = c;
  const id = d.id;
  if (mode !== 'msix') c.pending.clear(); // MSI-X off: what was pending is not ours to check any more
  if (mode === 'msi') {
    for (const vec of d.config.msi()!.vectors) {
      host.interrupts.take(id, vec.vector);
      raise(c, vec.vector);
      expect(host.interrupts.take(id, vec.vector), `MSI vector ${vec.vector}`).toBe(vec.masked ? 0 : 1);
      if (!vec.masked) seen.msiLive++;
    }
    return;
  }
  if (mode !== 'msix') return;
  const msix = d.config.msix()!;
  const kernel = simOf(env, d).irqs().vectors;
  const range = d.interrupts.vectors;
  expect(kernel).toHaveLength(range);
  if (!c.dynamic) expect(kernel.every((fd) => fd !== null), 'NORESIZE: every vector of the range has a trigger').toBe(true);
  for (let i = 0; i < msix.tableSize; i++) {
    const at = c.host.bus.find(id, 0)?.address;
    const ctrl = at === undefined ? null : Number(host.bus.read('mmio', at + BigInt(msix.tableOffset + i * 16 + 12), 4));
    if (ctrl === null) {
      // The table is out of the guest's reach (and the check's): an unmask the check does not
      // see may deliver, and a mask release the route, before the next look.
      c.pending.clear();
      return;
    }
    const masked = msix.functionMask || (ctrl & 1) === 1;
    const delivered = host.interrupts.take(id, i);
    if (c.pending.delete(i)) {
      // Raised while masked: it arrived when a later step unmasked the vector (or waits still).
      if (masked) c.pending.add(i);
      else {
        expect(delivered, `MSI-X vector ${i}: the interrupt pending while masked arrives on unmask`).toBe(1);
        seen.pendingDelivered++;
      }
    }
    raise(c, i);
    const got = host.interrupts.take(id, i);
    const bit = ((pba(c) ?? 0n) >> BigInt(i)) & 1n;
    if (!masked) {
      expect([got, bit], `MSI-X vector ${i} live`).toEqual([1, 0n]);
      seen.msixLive++;
    } else if (i < range && kernel[i] !== null) {
      expect([got, bit], `MSI-X vector ${i} masked with a trigger`).toEqual([0, 1n]);
      c.pending.add(i);
      seen.msixParked++;
    } else {
      expect(got, `MSI-X vector ${i} masked, no trigger`).toBe(0);
    }
  }
}

function step(c: Case): string {
  const { rng, d } = c;
  const kind = rng.weighted([['write', 6], ['read', 2], ['bar', 4], ['msix', 2]] as const);
  if (kind === 'bar') return barAccess(c);
  if (kind === 'msix') {
    // What a driver does most: MSI-X on with the function mask set or clear.
    const ctrl = rng.pick([r.PCI_MSIX_FLAGS_ENABLE, r.PCI_MSIX_FLAGS_ENABLE, r.PCI_MSIX_FLAGS_ENABLE | r.PCI_MSIX_FLAGS_MASKALL, 0]);
    d.configWrite(d.config.msix()!.offset + r.PCI_MSIX_FLAGS, 2, ctrl);
    return `MSI-X control 0x${ctrl.toString(16)}`;
  }
  const [offset, size] = access(c);
  if (kind === 'read') {
    const got = d.configRead(offset, size);
    if (!Number.isInteger(got) || got < 0 || got > 0xffff_ffff) throw new Error(`configRead returned ${got}`);
    if (d.config.isValidAccess(offset, size) && d.config.isEmulated(offset, size)) expect(got).toBe(d.config.read(offset, size));
    return `read ${size}@0x${offset.toString(16)}`;
  }
  const v = value(c, size);
  d.configWrite(offset, size, v);
  return `write ${size}@0x${offset.toString(16)}=0x${(v >>> 0).toString(16)}`;
}

describe('random guest accesses (seeded)', () => {
  it(`${CASES} cases of ${STEPS} accesses: nothing throws, the model stays consistent`, () => {
    for (let n = ONLY ?? 0; n < (ONLY !== undefined ? ONLY + 1 : CASES); n++) {
      const rng = new Rng(mix32(SEED ^ Math.imul(n + 1, 0x9e3779b1)));
      const dynamic = n % 2 === 1;
      const host = newHost(env);
      const other = attach(env, openSim(env, 'sim:4096'), host, { id: 'nic1' });
      const d = attach(env, openSim(env, dynamic ? 'sim:4096:msixalloc=dynamic' : 'sim:4096'), host, { id: 'nic0' });
      other.configWrite(r.PCI_COMMAND, 2, r.PCI_COMMAND_MEMORY);
      d.configWrite(r.PCI_COMMAND, 2, r.PCI_COMMAND_MEMORY); // nothing is armed or mapped before the guest's first COMMAND write
      const c: Case = { rng, dynamic, pending: new Set(), host, d, other, otherAt: host.bus.find('nic1', 0)!.address, initial: Buffer.from(d.config.bytes), errors: [] };
      d.on('guest-error', (e) => c.errors.push(e));
      const trail: string[] = [];
      for (let s = 0; s < STEPS; s++) {
        try {
          trail.push(step(c));
          check(c);
        } catch (e) {
          throw new Error(`seed 0x${SEED.toString(16)} case ${n} step ${s}: ${(e as Error).message}\nlast accesses:\n  ${trail.slice(-40).join('\n  ')}`, { cause: e });
        }
      }
      d.detach();
      other.detach();
    }
    // Each state that matters was met, so that the checks above were not vacuous (the defaults meet each dozens of times or more).
    if (ONLY === undefined && CASES * STEPS >= 10_000) for (const [what, n] of Object.entries(seen)) expect(n, what).toBeGreaterThanOrEqual(10);
  }, Math.max(30_000, CASES * STEPS * 2));
});

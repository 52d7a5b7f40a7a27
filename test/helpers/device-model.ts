/**
 * Shared set-up of the tests of the device model and what drives it (test/unit/device-model*,
 * live-*): simulated devices behind a SimBinding over the native addon (real eventfds, real
 * snapshot files), the reference host, and the guest's side of the story — config writes, MMIO
 * through the host bus, waiting for interrupts on the router's eventfds. What the simulated
 * devices executed is read from their events (SimDevice 'arc', 'reset', ...); a VMM's calls that
 * should go missing are dropped in a binding of the test's (`lossyBinding`).
 *
 * Everything opened through an `Env` is closed by `dispose()`, newest first, so a failing test
 * does not leak into the next one.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { NativeBinding } from '../../src/kernel/binding/native';
import type { Binding } from '../../src/kernel/binding/types';
import { BAR0, SimBinding, type SimDevice } from '../../src/sim';
import type { VfioDevice } from '../../src/kernel/device';
import { openDevice } from '../../src/kernel/open';
import { VFIO_DEVICE_SET_IRQS, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_OFFSET_SHIFT, migStateName, type MigState } from '../../src/kernel/uapi/vfio';
import { MigrationCoordinator, type CoordinatorOptions } from '../../src/vm/coordinator';
import { VfioPciDevice, type AttachOptions } from '../../src/model/vfio-pci';
import { ReferenceAllocator, ReferenceHost } from '../../src/model/host/reference';
import type { AddressSpace, AllocationRecord, Host } from '../../src/model/host/types';
import { PCI_COMMAND, PCI_COMMAND_MASTER, PCI_COMMAND_MEMORY, PCI_MSIX_FLAGS, PCI_MSIX_FLAGS_ENABLE, PCI_MSIX_FLAGS_MASKALL } from '../../src/model/pci/regs';
import { intercept } from './binding';

export { BAR0 };
export const MEM_MASTER = PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
/** How long a test waits for an interrupt that must come. */
export const IRQ_WAIT_MS = 2000;

export interface Env {
  native: NativeBinding;
  sim: SimBinding;
  /** A fresh temporary directory for snapshot files. */
  dir: string;
  cleanup: Array<() => void>;
}

export function makeEnv(): Env {
  const native = new NativeBinding();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfio-devmodel-'));
  return { native, sim: new SimBinding(native), dir, cleanup: [() => fs.rmSync(dir, { recursive: true, force: true })] };
}

/** Run every clean-up, newest first; errors are ignored (best effort after a failed test). */
export function dispose(env: Env): void {
  for (const fn of env.cleanup.reverse()) {
    try {
      fn();
    } catch {
      /* best effort */
    }
  }
  env.cleanup.length = 0;
}

export function file(env: Env, name = 'vm.vfiosnap'): string {
  return path.join(env.dir, name);
}

/** Open a sim device (closed by dispose()), through `binding` when given (a wrapper of `env.sim`, see lossyBinding()). */
export function openSim(env: Env, spec: string, binding: Binding = env.sim): VfioDevice {
  const dev = openDevice(spec, { binding });
  env.cleanup.push(() => dev.close());
  return dev;
}

/** A reference host whose eventfds are real (closed by dispose()). */
export function newHost(env: Env, allocator?: ReferenceAllocator): ReferenceHost {
  const host = new ReferenceHost(env.sim, allocator);
  env.cleanup.push(() => host.close());
  return host;
}

/**
 * A reference allocator that records the allocate() calls made on it (the host's allocator is
 * the VMM's to give); it delegates to `inner`, a fresh one or a VMM's restored one.
 */
export class RecordingAllocator extends ReferenceAllocator {
  readonly calls: Array<{ space: AddressSpace; size: number; owner: string; record?: AllocationRecord }> = [];

  constructor(private readonly inner = new ReferenceAllocator()) {
    super();
  }

  override allocate(space: AddressSpace, size: number, owner: string): AllocationRecord {
    const call: (typeof this.calls)[number] = { space, size, owner };
    this.calls.push(call);
    call.record = this.inner.allocate(space, size, owner);
    return call.record;
  }

  override free(a: AllocationRecord): void {
    this.inner.free(a);
  }

  override export(): AllocationRecord[] {
    return this.inner.export();
  }
}

/** vfio-pci file offset of the config region (VFIO_PCI_INDEX_TO_OFFSET). */
const CONFIG_REGION = VFIO_PCI_CONFIG_REGION_INDEX * 2 ** VFIO_PCI_OFFSET_SHIFT;

/**
 * `env.sim` with one kind of a VMM's calls lost on the way to the device while `lose()` says so
 * (they return as if done): 'command', config writes that cover PCI_COMMAND (a VMM that forgets to
 * push COMMAND); 'set-irqs', VFIO_DEVICE_SET_IRQS (a VMM that forgets to arm interrupts). Open
 * the devices of the test with it (openSim, bootedSource and destination take a binding).
 */
export function lossyBinding(env: Env, what: 'command' | 'set-irqs', lose: () => boolean = () => true): Binding {
  const sim = env.sim;
  return intercept(sim, what === 'command'
    ? {
      pwrite: (fd, buf, position, length) => {
        const n = length ?? buf.length;
        const at = CONFIG_REGION + PCI_COMMAND;
        return lose() && position <= at && at < position + n ? n : sim.pwrite(fd, buf, position, length);
      },
    }
    : {
      ioctl: (fd, request, arg) => (lose() && request === VFIO_DEVICE_SET_IRQS ? 0 : sim.ioctl(fd, request, arg)),
    });
}

/**
 * "id: FROM→TO" for every arc the simulated devices behind `devices` execute from now on, in the
 * order they execute them (their 'arc' events; listeners removed by dispose()).
 */
export function recordArcs(env: Env, devices: Array<VfioPciDevice | VfioDevice>): string[] {
  const out: string[] = [];
  for (const d of devices) {
    const id = d instanceof VfioPciDevice ? d.id : d.name;
    const sim = simOf(env, d);
    const onArc = (from: MigState, to: MigState): void => void out.push(`${id}: ${migStateName(from)}→${migStateName(to)}`);
    sim.on('arc', onArc);
    env.cleanup.push(() => sim.off('arc', onArc));
  }
  return out;
}

/** Attach (detached by dispose()). */
export function attach(env: Env, dev: VfioDevice, host: Host, opts: AttachOptions = {}): VfioPciDevice {
  const d = VfioPciDevice.attach(dev, host, opts);
  env.cleanup.push(() => d.detach());
  return d;
}

/** The simulated device behind a device model. */
export function simOf(env: Env, d: VfioPciDevice | VfioDevice): SimDevice {
  const dev = d instanceof VfioPciDevice ? d.device : d;
  return env.sim.device(dev.fd);
}

/** PCI_COMMAND as the device itself holds it (a raw config read, not the shadow). */
export function rawCommand(d: VfioPciDevice | VfioDevice): number {
  const dev = d instanceof VfioPciDevice ? d.device : d;
  return dev.readConfig(PCI_COMMAND, 2).readUInt16LE(0);
}

// ------------------------------------------------------------------ the guest

/** The guest's view of one device on one host. */
export class Guest {
  constructor(
    readonly d: VfioPciDevice,
    readonly host: ReferenceHost,
  ) {}

  /** Where BAR0 is on the host bus now (throws when it is not mapped). */
  get bar0(): bigint {
    const m = this.host.bus.find(this.d.id, 0);
    if (!m) throw new Error(`${this.d.id}: BAR0 is not on the bus`);
    return m.address;
  }

  command(value: number): void {
    this.d.configWrite(PCI_COMMAND, 2, value);
  }

  /** Set MSI-X enable in the capability's Message Control (the guest's config write). */
  enableMsix(): void {
    const cap = this.d.config.msix()!.offset;
    const ctrl = this.d.configRead(cap + PCI_MSIX_FLAGS, 2);
    this.d.configWrite(cap + PCI_MSIX_FLAGS, 2, ctrl | PCI_MSIX_FLAGS_ENABLE);
  }

  /** Program and unmask MSI-X table entry `vector` through BAR0 on the bus, dword by dword. */
  programVector(vector: number, message = { address: 0xfee0_0000n + BigInt(vector << 12), data: 0x40 + vector }): void {
    const m = this.d.config.msix()!;
    const at = this.bar0 + BigInt(m.tableOffset + vector * 16);
    this.host.bus.write('mmio', at, 4, Number(message.address & 0xffff_ffffn));
    this.host.bus.write('mmio', at + 4n, 4, Number(message.address >> 32n));
    this.host.bus.write('mmio', at + 8n, 4, message.data);
    this.host.bus.write('mmio', at + 12n, 4, 0); // vector control: unmasked
  }

  /** Set or clear the mask bit of MSI-X table entry `vector` (its vector control dword). */
  maskVector(vector: number, masked: boolean): void {
    const m = this.d.config.msix()!;
    this.host.bus.write('mmio', this.bar0 + BigInt(m.tableOffset + vector * 16 + 12), 4, masked ? 1 : 0);
  }

  /** Set or clear the MSI-X function mask (Message Control bit 14), MSI-X staying enabled. */
  functionMask(masked: boolean): void {
    const cap = this.d.config.msix()!.offset;
    this.d.configWrite(cap + PCI_MSIX_FLAGS, 2, PCI_MSIX_FLAGS_ENABLE | (masked ? PCI_MSIX_FLAGS_MASKALL : 0));
  }

  /** The first PBA qword as the guest reads it through the bus: bit n = vector n pending. */
  pba(): bigint {
    const m = this.d.config.msix()!;
    return this.host.bus.read('mmio', this.bar0 + BigInt(m.pbaOffset), 8);
  }

  read32(offset: number): number {
    return Number(this.host.bus.read('mmio', this.bar0 + BigInt(offset), 4));
  }

  write32(offset: number, value: number): void {
    this.host.bus.write('mmio', this.bar0 + BigInt(offset), 4, value);
  }

  /** Ring the doorbell for `vector`. */
  ring(vector = 0): void {
    this.write32(BAR0.DOORBELL, vector);
  }

  /** Interrupts already delivered to the router's eventfd for `vector` (non-blocking). */
  take(vector = 0): number {
    return this.host.interrupts.take(this.d.id, vector);
  }

  wait(vector = 0, ms = IRQ_WAIT_MS): Promise<number> {
    return this.host.interrupts.wait(this.d.id, vector, ms);
  }

  /** Fill SCRATCH with `bytes` and CONTROL with `control`. */
  setRegisters(control: number, bytes: Buffer): void {
    this.write32(BAR0.CONTROL, control);
    for (let i = 0; i < bytes.length; i += 4) this.write32(BAR0.SCRATCH + i, bytes.readUInt32LE(i));
  }

  scratch(length: number): Buffer {
    const b = Buffer.alloc(length);
    for (let i = 0; i < length; i += 4) b.writeUInt32LE(this.read32(BAR0.SCRATCH + i), i);
    return b;
  }
}

/**
 * A source VM with one device the guest has brought up: memory decode + bus mastering, MSI-X
 * enabled with `vectors` programmed and unmasked, CONTROL and SCRATCH written.
 */
export function bootedSource(env: Env, spec: string, opts: { id?: string; vectors?: number[]; host?: ReferenceHost; binding?: Binding } = {}): Guest {
  const host = opts.host ?? newHost(env);
  const d = attach(env, openSim(env, spec, opts.binding), host, { id: opts.id ?? 'nic0' });
  const g = new Guest(d, host);
  g.command(MEM_MASTER);
  g.enableMsix();
  for (const v of opts.vectors ?? [0]) g.programVector(v);
  g.setRegisters(0xc0de_0001, SECRET);
  return g;
}

/** 32 bytes (the guest writes dwords). */
export const SECRET = Buffer.from('migrated scratch 0123456789abcde');

/** Pause the source VM, snapshot it to `file`, and leave it paused. */
export async function snapshotVm(sources: VfioPciDevice[], to: string, opts: CoordinatorOptions = {}): Promise<MigrationCoordinator> {
  const vm = new MigrationCoordinator(sources, opts);
  await vm.pause();
  await vm.snapshot(to, { noSync: true });
  return vm;
}

/**
 * A destination VM as a VMM builds it: its allocator restored from the source's export, each
 * device attached without BAR assignment.
 */
export function destination(
  env: Env,
  source: ReferenceHost,
  specs: Array<{ spec: string; id?: string }>,
  opts: { binding?: Binding } = {},
): { host: ReferenceHost; devices: VfioPciDevice[] } {
  const host = newHost(env, ReferenceAllocator.from(source.allocator.export()));
  const devices = specs.map(({ spec, id }) => attach(env, openSim(env, spec, opts.binding), host, { id: id ?? 'nic0', assignBars: false }));
  return { host, devices };
}

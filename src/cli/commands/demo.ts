/**
 * `vfio-pci demo`: the whole VMM cycle on two simulated devices, through the device model and
 * the reference host, printing every state-machine arc and the bytes moved:
 *
 *   attach → the "guest" enables decoding, bus mastering and MSI-X, writes device registers,
 *   rings a doorbell (an interrupt arrives) → pause → snapshot → restore into a second device
 *   (attached without allocating BARs, on a host whose allocator was restored) → resume →
 *   the registers are there and a doorbell interrupt arrives through the re-armed eventfd.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Command } from 'commander';
import { getDefaultBinding } from '../../kernel/open';
import { defaultSimBinding, openSimDevice } from '../../sim/provider';
import { formatSize, parseSize } from '../../sim/spec';
import { VfioPciDevice } from '../../model/vfio-pci';
import { MigrationCoordinator } from '../../vm/coordinator';
import { ReferenceAllocator, ReferenceHost } from '../../model/host/reference';
import type { Binding } from '../../kernel/binding/types';
import type { StateChange } from '../../kernel/migration';
import { VfioError } from '../../base/errors';
import { PCI_COMMAND, PCI_COMMAND_MASTER, PCI_COMMAND_MEMORY } from '../../model/pci/regs';
import type { Progress } from '../../vm/jobs';
import { addCommonOptions, type CliCommand } from '../command';
import { openOptions } from '../devices';
import { fmtBytes, usageError } from '../report';

/** BAR0 registers of the simulated device (src/binding/sim/bar0.ts). */
const SIM_DOORBELL = 0x010;
const SIM_SCRATCH = 0x100;

export interface DemoOptions {
  size: string;
  binding?: Binding;
  say: (line: string) => void;
  /** Every state change, `device` being 'source' or 'destination'. */
  onState: (c: StateChange) => void;
  progress: (p: Progress) => void;
  /** Cancels the snapshot or restore under way; the demo's devices and files are cleaned up. */
  signal?: AbortSignal;
}

/** What the demo moved. */
export interface DemoResult {
  source: string;
  destination: string;
  stateBytes: number;
  fileBytes: number;
  interrupts: { source: number; destination: number };
}

/** Run the demo; resolves when the destination runs with the source's state, throws otherwise. */
export async function runDemo(opts: DemoOptions): Promise<DemoResult> {
  const { say } = opts;
  const real = opts.binding ?? getDefaultBinding();
  const simBinding = defaultSimBinding(real);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfio-pci-demo-'));
  const file = path.join(dir, 'vm.vfiosnap');
  const cleanup: Array<() => void> = [() => fs.rmSync(dir, { recursive: true, force: true })];
  try {
    // ---------------------------------------------------------------- source VM
    const hostA = new ReferenceHost(real);
    cleanup.unshift(() => hostA.close());
    const devA = openSimDevice(`sim:${opts.size}#demo-source`, simBinding);
    cleanup.unshift(() => devA.close());
    const A = VfioPciDevice.attach(devA, hostA, { id: 'nic0' });
    cleanup.unshift(() => A.detach());
    say(`source: ${devA.name} attached as nic0; BARs ${A.config.bars().filter((b) => b.kind !== 'rom').map((b) => `BAR${b.index}@0x${b.address.toString(16)}`).join(' ')}`);

    // The guest: decode + bus mastering, MSI-X on, vector 0 programmed and unmasked.
    A.configWrite(PCI_COMMAND, 2, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
    const msix = A.config.msix();
    if (!msix) throw new VfioError('the simulated device has no MSI-X capability', { code: 'EVFIO_DEMO', kind: 'unsupported' });
    A.configWrite(msix.offset + 2, 2, 0x8000 | (msix.tableSize - 1));
    const bar0 = hostA.bus.find('nic0', 0)!.address;
    const entry = bar0 + BigInt(msix.tableOffset);
    hostA.bus.write('mmio', entry, 8, 0xfee0_0000n);
    hostA.bus.write('mmio', entry + 8n, 4, 0x4041);
    hostA.bus.write('mmio', entry + 12n, 4, 0); // unmask
    const secret = Buffer.from('state carried across the migration');
    secret.forEach((c, i) => hostA.bus.write('mmio', bar0 + BigInt(SIM_SCRATCH + i), 1, c));
    hostA.bus.write('mmio', bar0 + BigInt(SIM_DOORBELL), 4, 0);
    const irqA = await hostA.interrupts.wait('nic0', 0, 2000);
    say(`guest: COMMAND=0x${A.config.command.toString(16)}, MSI-X on (${A.interrupts.vectors} vector armed), doorbell → ${irqA} interrupt(s) on vector 0`);

    // ---------------------------------------------------------------- pause + snapshot
    const vmA = new MigrationCoordinator([A]);
    vmA.on('state', (c) => opts.onState({ ...c, device: 'source' }));
    vmA.on('progress', opts.progress);
    say('pause:');
    await vmA.pause();
    say('snapshot:');
    let snap;
    try {
      snap = await vmA.snapshot(file, { signal: opts.signal });
    } catch (e) {
      // The VMM's part after a failed or cancelled snapshot: the paused source runs again.
      await vmA.resume().catch(() => undefined);
      if (e instanceof VfioError) e.annotate({ deviceState: vmA.describeDevices(true) });
      throw e;
    }
    say(`  ${snap.devices[0].stateBytes} bytes of device state; file ${fs.statSync(file).size} bytes`);

    // ---------------------------------------------------------------- destination VM
    const hostB = new ReferenceHost(real, ReferenceAllocator.from(hostA.allocator.export()));
    cleanup.unshift(() => hostB.close());
    const devB = openSimDevice(`sim:${opts.size}#demo-destination`, simBinding);
    cleanup.unshift(() => devB.close());
    const B = VfioPciDevice.attach(devB, hostB, { id: 'nic0', assignBars: false });
    cleanup.unshift(() => B.detach());
    const vmB = new MigrationCoordinator([B]);
    vmB.on('state', (c) => opts.onState({ ...c, device: 'destination' }));
    vmB.on('progress', opts.progress);
    say(`restore into ${devB.name} (stays in RESUMING):`);
    const res = await vmB.restore(file, { signal: opts.signal });
    say(`  ${res.devices[0].stateBytes} bytes loaded; BARs mapped at the saved addresses (${B.mappedBars.map((m) => `BAR${m.bar}@0x${m.address.toString(16)}`).join(' ')}), PCI_COMMAND 0x${B.configRead(PCI_COMMAND, 2).toString(16)} pushed, ${B.interrupts.mode.toUpperCase()} re-armed`);
    say('resume:');
    await vmB.resume();

    // ---------------------------------------------------------------- check
    const barB = hostB.bus.find('nic0', 0)!.address;
    const got = Buffer.alloc(secret.length);
    for (let i = 0; i < got.length; i++) got[i] = Number(hostB.bus.read('mmio', barB + BigInt(SIM_SCRATCH + i), 1));
    hostB.bus.write('mmio', barB + BigInt(SIM_DOORBELL), 4, 0);
    const irqB = await hostB.interrupts.wait('nic0', 0, 2000);
    if (!got.equals(secret) || irqB < 1) {
      throw new VfioError(`destination check failed: registers ${got.equals(secret) ? 'ok' : 'differ'}, interrupts ${irqB}`, { code: 'EVFIO_DEMO', kind: 'protocol' });
    }
    say('source resumes:');
    await vmA.resume();
    say(`done: destination registers match ("${got.toString()}"), doorbell → ${irqB} interrupt(s) through the re-armed eventfd`);
    return {
      source: devA.name, destination: devB.name, stateBytes: res.devices[0].stateBytes, fileBytes: fs.statSync(file).size,
      interrupts: { source: irqA, destination: irqB },
    };
  } finally {
    for (const fn of cleanup) {
      try {
        fn();
      } catch {
        /* best effort */
      }
    }
  }
}

export const demoCommand: CliCommand = {
  name: 'demo',
  summary: 'attach → guest I/O → pause → snapshot → restore → resume, on two simulated devices',
  cancel: () =>
    'a snapshot under way stops and the source runs again; a restore under way stops and the destination is reset ' +
    '(a signal before the snapshot stops it as it starts; one after the restore lets the demo finish); then the demo\'s ' +
    'simulated devices are closed and its temporary directory removed',
  define(cmd: Command) {
    cmd.option('--size <size>', 'device state size of the simulated devices (4096, 64KiB, 1GiB, ...)', '16MiB');
    addCommonOptions(cmd, { binding: true });
    cmd.addHelpText('after', `
Runs the whole VMM cycle on two simulated devices through the device model and the reference
host, printing every migration state change: no hardware, root or kernel module needed. The
snapshot (about --size bytes) goes to a temporary directory in TMPDIR that is removed at the end;
a size the file system there cannot hold is refused.`);
  },
  async run(ctx, _args, opts) {
    const size = parseSize(String(opts.size));
    if (size === undefined || size === 0) throw usageError(`--size ${String(opts.size)}: expected a size such as 4096, 64KiB, 16MiB or 1GiB`);
    // The snapshot goes to the temporary directory: one that cannot hold it would fill up first.
    const tmp = os.tmpdir();
    const st = fs.statfsSync(tmp);
    const free = st.bavail * st.bsize;
    if (size > free) throw usageError(`--size ${String(opts.size)}: the demo writes a snapshot of about that size in ${tmp}, which has ${fmtBytes(free)} free`);
    const res = await runDemo({
      size: formatSize(size), binding: openOptions(opts).binding, signal: ctx.signal, onState: ctx.onState, progress: ctx.onProgress,
      say: (l) => {
        ctx.endProgress();
        ctx.say(l);
      },
    });
    return { json: { ...res, transitions: ctx.transitions } };
  },
};

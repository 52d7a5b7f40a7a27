/**
 * `vfio-pci`: the library's jobs from a shell.
 *
 *   vfio-pci info DEVICE [--json]
 *   vfio-pci snapshot DEVICE... -o FILE [--leave-stopped]
 *   vfio-pci restore DEVICE -i FILE [--index N]
 *   vfio-pci inspect FILE [--json]
 *   vfio-pci demo [--size SIZE]
 *
 * Common options: --iommu iommufd|legacy, --binding native|koffi, --quiet.
 * Exit status: 0 success, 1 failure (message on stderr, with the state the device was left
 * in), 2 usage error.
 */
import { parseArgs } from 'node:util';
import { VfioError, describeOutcome } from '../base/errors';
import { commands, type CommandContext } from './commands';
import { registerSimulator } from '../sim/provider';

const USAGE = `usage: vfio-pci <command> [options]

commands:
  info DEVICE [--json]                       device, region, IRQ and migration info
  snapshot [ID=]DEVICE... -o FILE [--leave-stopped] [--allow-non-p2p]
                                             pause, save state + config space, resume
  restore [ID=]DEVICE... -i FILE [--allow-non-p2p]
                                             load a snapshot into the devices (paired by ID) and run them
  inspect FILE [--json]                      list a snapshot's sections and check them
  demo [--size SIZE]                         pause → snapshot → restore → resume on simulated devices

DEVICE: a PCI address (0000:01:00.0), an mdev UUID, a sysfs path,
        /dev/vfio/devices/vfioN, or a simulated device: sim, sim:SIZE (e.g. sim:1GiB)
ID:     the name a device is saved under and paired by on restore (default: the DEVICE
        as given); restoring a one-device snapshot into one DEVICE needs none

options:
  --iommu iommufd|legacy    how to open real devices (default: iommufd when available)
  --binding native|koffi    syscall binding (default: native addon, koffi if it cannot load)
  -q, --quiet               print only errors
  -h, --help
`;

export async function main(argv: string[], out: NodeJS.WritableStream = process.stdout, err: NodeJS.WritableStream = process.stderr): Promise<number> {
  registerSimulator();
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        json: { type: 'boolean' },
        output: { type: 'string', short: 'o' },
        input: { type: 'string', short: 'i' },
        'leave-stopped': { type: 'boolean' },
        'allow-non-p2p': { type: 'boolean' },
        iommu: { type: 'string' },
        binding: { type: 'string' },
        size: { type: 'string' },
        quiet: { type: 'boolean', short: 'q' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (e) {
    err.write(`vfio-pci: ${(e as Error).message}\n\n${USAGE}`);
    return 2;
  }
  const [name, ...args] = parsed.positionals;
  if (parsed.values.help || !name) {
    (parsed.values.help ? out : err).write(USAGE);
    return parsed.values.help ? 0 : 2;
  }
  const cmd = commands[name];
  if (!cmd) {
    err.write(`vfio-pci: unknown command '${name}'\n\n${USAGE}`);
    return 2;
  }
  const ctx: CommandContext = { args, opts: parsed.values, out, err };
  try {
    return await cmd(ctx);
  } catch (e) {
    if (e instanceof VfioError) {
      err.write(`vfio-pci ${name}: ${e.message}\n`);
      const fields = [
        ['code', e.code], ['errno', e.errno], ['syscall', e.syscall], ['op', e.op], ['step', e.step],
        ['device', e.device], ['devices left', e.deviceState?.map(describeOutcome).join(', ')],
      ].filter(([, v]) => v !== undefined);
      err.write(fields.map(([k, v]) => `  ${k}: ${v}`).join('\n') + '\n');
      return e.kind === 'usage' ? 2 : 1;
    }
    err.write(`vfio-pci ${name}: ${(e as Error)?.stack ?? e}\n`);
    return 1;
  }
}

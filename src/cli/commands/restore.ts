/**
 * `vfio-pci restore [ID=]DEVICE... -i FILE`: load a snapshot into the devices, paired by id, and
 * run them (src/vm/jobs.ts restoreSnapshot). FILE is checked (../paths.ts) before any device
 * is opened. Cancellable: a signal stops the load and resets the devices it had put in RESUMING
 * (they never run a partial state).
 */
import type { Command } from 'commander';
import { restoreSnapshot } from '../../vm/jobs';
import { migStateName } from '../../kernel/uapi/vfio';
import { addCommonOptions, type CliCommand } from '../command';
import { openOptions, parseDeviceArg, withDevices } from '../devices';
import { checkInputFile } from '../paths';
import { explainRefusedState, fmtBytes } from '../report';

export const restoreCommand: CliCommand = {
  name: 'restore',
  summary: 'load a snapshot into the devices (paired by ID) and run them',
  cancel: (opts) =>
    `the load stops; every device already in RESUMING is reset (VFIO_DEVICE_RESET → RUNNING: none runs the partial state), ` +
    `one not yet touched is left as it was${opts.verify ? ' (as all are during --verify)' : ''}; ${String(opts.input)} is only read ` +
    `(a signal once the state is loaded lets the restore complete)`,
  define(cmd: Command) {
    cmd
      .argument('<devices...>', '[ID=]DEVICE: the destination devices, paired with the saved ones by ID')
      .requiredOption('-i, --input <file>', 'the snapshot file')
      .option('--verify', 'read the whole file and check every state chunk\'s checksum before touching any device (one more read of the file)')
      .option('--allow-non-p2p', 'accept several devices of which one lacks P2P');
    addCommonOptions(cmd, { devices: true });
    cmd.addHelpText('after', `
Before any device is touched, restore checks the file's structure — the header, every section
header, the checksum of every section but the state chunks (device records, config space),
every chunk header with the chunk table's checksum, and the END section with the checksum over
all headers — then pairs the saved devices with the given ones by ID (a one-device snapshot
restores into one DEVICE given without ID) and compares each one's identity and config space.
Each state chunk's checksum is checked as the chunk is read, before it is written to the device:
a corrupt chunk stops the restore with the devices in RESUMING, and they are reset. --verify
checks every chunk first, before any device is touched, at the cost of reading the file twice.

Then one RUNNING → RESUMING request per device, the state is written, and the devices run. The
driver checks the state as it arrives and when the device leaves RESUMING: a refusal (EFAULT,
ENOMEM, EINVAL) usually means another device type, firmware or driver version. On any failure
every device is reset (VFIO_DEVICE_RESET → RUNNING) and none runs the partial state.

SIGINT, SIGTERM or SIGHUP cancels: the load stops, the devices already in RESUMING are reset
(none runs the partial state; before that, as during --verify, they are left untouched), and
vfio-pci exits 130, 143 or 129. A signal once the whole state is loaded lets the restore
complete; the exit status is still the signal's.

Examples:
  vfio-pci restore 0000:3b:00.1 -i nic.vfiosnap
  vfio-pci restore gpu0=0000:af:00.0 nic0=0000:3b:00.1 -i vm.vfiosnap --verify`);
  },
  async run(ctx, [devices], opts) {
    const file = opts.input as string;
    const args = (devices as string[]).map(parseDeviceArg);
    checkInputFile(file, '-i');
    return withDevices(args.map((a) => a.spec), openOptions(opts), async (devs) => {
      const jobDevs = devs.map((device, i) => (args[i].id ? { id: args[i].id!, device } : device));
      ctx.say(`restore ${file} → ${(devices as string[]).join(', ')}${opts.verify ? ' (verifying every chunk first)' : ''}`);
      let res;
      try {
        res = await restoreSnapshot(jobDevs, file, { allowNonP2P: opts.allowNonP2p === true, verify: opts.verify === true, onState: ctx.onState, onProgress: ctx.onProgress, signal: ctx.signal });
      } catch (e) {
        throw explainRefusedState(e);
      }
      ctx.endProgress();
      const out = res.devices.map((d, i) => ({ ...d, device: devs[i].name, state: migStateName(devs[i].migration!.getState()) }));
      for (const d of out) ctx.say(`  ${d.from} → ${d.device}: ${fmtBytes(d.stateBytes)} of device state loaded; now ${d.state}`);
      return { json: { file, devices: out, transitions: ctx.transitions } };
    });
  },
};

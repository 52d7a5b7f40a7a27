/**
 * `vfio-pci snapshot [ID=]DEVICE... -o FILE`: pause the devices, save their state into FILE,
 * return them to where they were (src/vm/jobs.ts saveSnapshot). FILE appears complete or not at
 * all; only a regular file is ever replaced (src/snapshot/target.ts), checked (../paths.ts)
 * before any device is opened. Cancellable: a signal stops the copy, removes the temporary file
 * and returns the devices to the state they were in (leaves them in STOP with --leave-stopped).
 */
import * as fs from 'node:fs';
import type { Command } from 'commander';
import { VfioError } from '../../base/errors';
import { saveSnapshot } from '../../vm/jobs';
import { migStateName } from '../../kernel/uapi/vfio';
import { addCommonOptions, type CliCommand } from '../command';
import { openOptions, parseDeviceArg, withDevices } from '../devices';
import { checkOutputFile } from '../paths';
import { fmtBytes } from '../report';

/** The regular file at `file` now (device and inode), or undefined: tells whether the commit's rename happened. */
function fileAt(file: string): string | undefined {
  try {
    const st = fs.lstatSync(file);
    return st.isFile() ? `${st.dev}:${st.ino}` : undefined;
  } catch {
    return undefined;
  }
}

export const snapshotCommand: CliCommand = {
  name: 'snapshot',
  summary: 'pause the devices, save their state and config space into FILE, resume them',
  cancel: (opts) =>
    `the copy stops and the temporary file is removed: no snapshot is written, ${String(opts.output)} stays as it was ` +
    `(a signal after the rename lets the snapshot complete); the devices return to the state they were in` +
    (opts.leaveStopped ? ' (--leave-stopped applies only to a snapshot that is written)' : ''),
  define(cmd: Command) {
    cmd
      .argument('<devices...>', '[ID=]DEVICE: the devices, each saved under ID (default: DEVICE as given)')
      .requiredOption('-o, --output <file>', 'the snapshot file (a new file, or a regular file to replace; written 0600)')
      .option('--leave-stopped', 'leave the devices paused in STOP after the save instead of returning them to their previous state')
      .option('--allow-non-p2p', 'accept several devices of which one lacks P2P (they are then stopped one by one)');
    addCommonOptions(cmd, { devices: true });
    cmd.addHelpText('after', `
The devices are paused (with several P2P devices, all reach RUNNING_P2P before any stops), each
one's identity, config space and STOP_COPY stream saved into FILE, and then returned to the state
they were in. FILE is written under a temporary name in its directory, made durable (fsync) and
renamed into place: it appears complete or not at all. Only a regular file is ever replaced: a
directory, device node, FIFO, socket or symbolic link at FILE is refused before any device is
touched, as is a directory that does not exist or is not writable. Files are created 0600.

--leave-stopped keeps the devices in STOP, their state as saved, so that they do nothing after
the snapshot (e.g. before their state is restored elsewhere). Whether they are still in STOP
after vfio-pci exits and closes them is the driver's choice: mtty keeps the state across close
and open; a driver may also reset a device on its last close or next open (info shows the
state). A later restore runs them again (STOP → RESUMING → RUNNING).

SIGINT, SIGTERM or SIGHUP cancels: the copy stops, the temporary file is removed (no snapshot
is written), the devices return to the state they were in (--leave-stopped too: it applies only
to a snapshot that is written), and vfio-pci exits 130, 143 or 129. A signal after the rename lets the
snapshot complete; the exit status is still the signal's.

Examples:
  vfio-pci snapshot 0000:3b:00.1 -o nic.vfiosnap
  vfio-pci snapshot nic0=0000:3b:00.1 gpu0=0000:af:00.0 -o vm.vfiosnap
  vfio-pci snapshot sim:1GiB -o /tmp/sim.vfiosnap`);
  },
  async run(ctx, [devices], opts) {
    const file = opts.output as string;
    const args = (devices as string[]).map(parseDeviceArg);
    checkOutputFile(file);
    const before = fileAt(file);
    return withDevices(args.map((a) => a.spec), openOptions(opts), async (devs) => {
      const jobDevs = devs.map((device, i) => ({ id: args[i].id ?? device.name, device }));
      ctx.say(`snapshot of ${jobDevs.map((d) => (d.id === d.device.name ? d.id : `${d.id}=${d.device.name}`)).join(', ')} → ${file}`);
      let res;
      try {
        res = await saveSnapshot(jobDevs, file, {
          leaveStopped: opts.leaveStopped === true, allowNonP2P: opts.allowNonP2p === true, onState: ctx.onState, onProgress: ctx.onProgress, signal: ctx.signal,
        });
      } catch (e) {
        // Up to the rename nothing is at FILE; after it (a failed directory fsync) the snapshot is.
        const now = e instanceof VfioError && e.step === 'snapshot:commit' ? fileAt(file) : before;
        const renamed = now !== undefined && now !== before;
        ctx.note(renamed
          ? `the snapshot was written: ${file} is complete, but its directory could not be made durable (a crash may lose it)`
          : `no snapshot was written: ${file} is as it was`);
        throw e;
      }
      ctx.endProgress();
      const out = res.devices.map((d) => {
        const dev = jobDevs.find((j) => j.id === d.id)!.device;
        return { ...d, device: dev.name, state: migStateName(dev.migration!.getState()) };
      });
      for (const d of out) ctx.say(`  ${d.id}: ${fmtBytes(d.stateBytes)} of device state, ${d.configBytes} bytes of config space; now ${d.state}`);
      ctx.say(`wrote ${file}${opts.leaveStopped ? ' (devices left in STOP)' : ''}`);
      return { json: { file, devices: out, transitions: ctx.transitions } };
    });
  },
};

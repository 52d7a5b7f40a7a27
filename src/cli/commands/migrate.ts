/**
 * `vfio-pci migrate --to URI [ID=]DEVICE...`: live-migrate devices to a `vfio-pci incoming` on
 * another host or process (src/vm/live-jobs.ts migrateDevices; docs/live-protocol.md). PRE_COPY
 * rounds until the devices' pending state fits the downtime limit at the measured bandwidth and
 * the destination has acknowledged the initial data, then the switchover. The URI, the numbers
 * and the TLS files are checked before any device is opened. Cancellable: before the last
 * device's state is sent, a signal stops the migration, the destination resets its devices and
 * these run on with their state; after that it ends the wait for the destination's answer
 * (EVFIO_OUTCOME_UNKNOWN: these stay in STOP).
 */
import type { Command } from 'commander';
import { Option } from 'commander';
import { VfioError } from '../../base/errors';
import { migStateName } from '../../kernel/uapi/vfio';
import { migrateDevices } from '../../vm/live-jobs';
import { addCommonOptions, type CliCommand } from '../command';
import { openOptions, parseDeviceArg, withDevices } from '../devices';
import { fmtBytes } from '../report';
import { addTlsOptions, checkTls, checkUri, positiveInt, tlsOptions } from './live-options';
import { logger } from '../../base/log';

const log = logger('cli');

export const migrateCommand: CliCommand = {
  name: 'migrate',
  summary: 'live-migrate the devices to a `vfio-pci incoming` at URI',
  cancel: () =>
    'until every device\'s state is sent, the migration stops, the destination is told (CANCEL, or sees the connection ' +
    'end) and resets its devices, and these run on with their state; after that, the wait for the destination\'s answer ' +
    'ends: these stay in STOP and whether the destination runs the devices is unknown (EVFIO_OUTCOME_UNKNOWN: ask it ' +
    'before resuming these)',
  define(cmd: Command) {
    cmd
      .argument('<devices...>', '[ID=]DEVICE: the devices, each migrated under ID (default: DEVICE as given)')
      .requiredOption('--to <uri>', 'where the destination listens: tcp:HOST:PORT or unix:PATH')
      .addOption(new Option('--downtime-limit <ms>', 'device downtime the switchover may cost, in ms').default('300'))
      .option('--max-iterations <n>', 'precopy rounds before giving up without convergence (default 100)')
      .option('--switchover-anyway', 'at the iteration limit, switch over even if the downtime limit would be broken')
      .option('--resume-source', 'run the source devices again after a successful migration (default: leave them in STOP)')
      .option('--allow-non-p2p', 'accept several devices of which one lacks P2P');
    addTlsOptions(cmd);
    addCommonOptions(cmd, { devices: true });
    cmd.addHelpText('after', `
The destination's \`vfio-pci incoming\` checks each device's identity and config space against
its own before the source touches anything, and refuses an incompatible device then. Devices
with PRE_COPY send their state while they run; the switchover (each device to PRE_COPY_P2P or
RUNNING_P2P, then STOP_COPY, the rest of its state, STOP) comes once the destination has loaded
the initial data and the pending state fits the downtime limit at the bandwidth measured on the
connection. On success the source devices stay in STOP (their state now lives on the
destination) unless --resume-source. On any failure — the destination refusing or failing, the
connection lost or stalled, a signal — the destination resets its devices, these run on with
their state intact, and vfio-pci exits non-zero. Once every device's state is sent, only the
destination's answer decides: if it cannot be heard (the connection lost, a signal), the source
devices stay in STOP and the outcome is unknown (EVFIO_OUTCOME_UNKNOWN): ask the destination
(what its vfio-pci incoming reported) before running them again.

SIGINT, SIGTERM or SIGHUP cancels as a failure does (exit 130, 143 or 129).

Without TLS the bytes are plain and the destination takes the first connection: use
--tls-cert/--tls-key/--tls-ca (mutual certificates) across hosts.

Examples:
  vfio-pci migrate --to tcp:10.0.0.2:4444 0000:3b:00.1
  vfio-pci migrate --to unix:/run/vfio-mig.sock nic0=0000:3b:00.1 gpu0=0000:af:00.0`);
  },
  async run(ctx, [devices], opts) {
    const to = opts.to as string;
    const downtimeLimitMs = positiveInt(opts.downtimeLimit, '--downtime-limit');
    const maxIterations = opts.maxIterations === undefined ? undefined : positiveInt(opts.maxIterations, '--max-iterations');
    const tls = tlsOptions(opts);
    checkUri(to, 'connect', '--to');
    await checkTls(tls);
    const args = (devices as string[]).map(parseDeviceArg);
    return withDevices(args.map((a) => a.spec), openOptions(opts), async (devs) => {
      const jobDevs = devs.map((device, i) => ({ id: args[i].id ?? device.name, device }));
      ctx.say(`migrate ${jobDevs.map((d) => (d.id === d.device.name ? d.id : `${d.id}=${d.device.name}`)).join(', ')} → ${to}${tls ? ' (TLS)' : ''}`);
      let res;
      try {
        res = await migrateDevices(jobDevs, to, {
          downtimeLimitMs, maxIterations, onLimit: opts.switchoverAnyway ? 'switchover' : 'cancel', resumeSource: opts.resumeSource === true,
          allowNonP2P: opts.allowNonP2p === true, tls, signal: ctx.signal, onState: ctx.onState,
          onStart: (m) => {
            m.on('progress', (p) => ctx.onProgress({ device: p.device, phase: 'save', bytes: p.bytes }));
            m.on('iteration', (i) => log(`iteration ${i.iteration}: ${i.bytes} bytes; pending ${i.pending.totalBytes} bytes, ~${i.pending.estimatedDowntimeMs.toFixed(1)} ms${i.pending.ackReceived ? '' : ', waiting for the switchover-ack'}`));
            m.on('switchover-ready', (p) => ctx.say(`  switchover ready: ${fmtBytes(p.totalBytes)} pending, ~${p.estimatedDowntimeMs.toFixed(1)} ms at ${(p.bandwidth / 2 ** 20).toFixed(0)} MiB/s`));
          },
        });
      } catch (e) {
        // Only when it is so: a device left in STOP (refused, or after END) does not run on; and
        // the destination has devices to reset only once the source touched its own (after ACCEPT).
        if (e instanceof VfioError && e.deviceState?.length && e.deviceState.every((d) => d.state === 'RUNNING') && e.deviceState.some((d) => d.touched)) {
          ctx.note(e.code === 'EVFIO_PEER_FAILED' || e.code === 'EVFIO_PEER_CANCELLED'
            ? 'the source devices run on with their state; the destination reset its devices'
            : 'the source devices run on with their state; the destination does not run the partial state (vfio-pci incoming resets its devices)');
        }
        throw e;
      }
      ctx.endProgress();
      const out = res.devices.map((d) => {
        const dev = jobDevs.find((j) => j.id === d.id)!.device;
        return { ...d, device: dev.name, state: migStateName(dev.migration!.getState()) };
      });
      for (const d of res.dirty.devices) {
        if (d.method === 'none') ctx.say(`  ${d.device}: dirty tracking none (${d.reason ?? 'untracked'}; it offers ${d.available === 'none' ? 'nothing' : d.available === 'device' ? 'device DMA logging' : 'IOMMU dirty tracking'})`);
      }
      ctx.print(`migrated ${out.length} device${out.length === 1 ? '' : 's'} to ${to}: ${fmtBytes(res.precopyBytes)} precopy / ${fmtBytes(res.stopCopyBytes)} stop-copy, ${res.iterations} iteration${res.iterations === 1 ? '' : 's'}, device downtime ${res.downtimeMs.toFixed(1)} ms; source devices ${out.map((d) => d.state).join(', ')}`);
      return {
        json: {
          to, downtimeMs: res.downtimeMs, iterations: res.iterations, totalBytes: res.totalBytes, precopyBytes: res.precopyBytes, stopCopyBytes: res.stopCopyBytes,
          destinationResumed: res.destinationResumed, devices: out, transitions: ctx.transitions,
          // Per device the dirty-tracking method used (and offered); the dirty pages of each sync: one per iteration, then the final one.
          dirtyTracking: res.dirty.devices, dirtyPagesPerSync: res.dirty.pagesPerSync,
        },
      };
    });
  },
};

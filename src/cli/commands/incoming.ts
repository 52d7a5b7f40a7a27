/**
 * `vfio-pci incoming --listen URI [ID=]DEVICE...`: wait for one live migration, load it into the
 * devices (paired by ID) and run them (src/vm/live-jobs.ts receiveDevices;
 * docs/live-protocol.md). The URI, the numbers and the TLS files are checked, and the listener
 * opened, before any device is. Cancellable: a signal stops the wait or the load, the devices are
 * reset (they never run a partial state) and the source is told, so that it resumes its own.
 */
import type { Command } from 'commander';
import { Option } from 'commander';
import { listen } from '../../live/listener';
import { migStateName } from '../../kernel/uapi/vfio';
import { receiveDevices } from '../../vm/live-jobs';
import { addCommonOptions, type CliCommand } from '../command';
import { openOptions, parseDeviceArg, withDevices } from '../devices';
import { explainRefusedState, fmtBytes } from '../report';
import { addTlsOptions, checkTls, checkUri, positiveInt, tlsOptions } from './live-options';

export const incomingCommand: CliCommand = {
  name: 'incoming',
  summary: 'wait for one live migration at URI, load it into the devices and run them',
  cancel: () =>
    'before a migration arrives, listening stops and the devices are left untouched; during the load, every device ' +
    'already in RESUMING is reset (none runs a partial state) and the source is told (CANCEL, or sees the connection ' +
    'end) and runs its own on; once the state is loaded the devices run and the migration completes',
  define(cmd: Command) {
    cmd
      .argument('<devices...>', '[ID=]DEVICE: the destination devices, paired with the source\'s by ID')
      .requiredOption('--listen <uri>', 'where to listen: tcp:HOST:PORT or unix:PATH')
      .addOption(new Option('--timeout <ms>', 'give up when no migration arrives within this many ms (default: wait)'))
      .option('--allow-non-p2p', 'accept several devices of which one lacks P2P');
    addTlsOptions(cmd);
    addCommonOptions(cmd, { devices: true });
    cmd.addHelpText('after', `
Listens at URI and takes exactly one migration connection (without TLS any later peer is turned
away; with --tls-cert/--tls-key/--tls-ca only a peer with a certificate from that CA). Before
any device is touched, the source's devices are paired with the given ones by ID (one device
given without ID pairs with a one-device source) and each one's identity and config space are
compared with the source's under this device's own masks: an incompatible device is refused
then, and the source runs on. Then one RUNNING → RESUMING request per device, the state loaded
as it arrives (each frame's checksum checked before it reaches the device), and once the source
has switched over, the devices run. On any failure every device is reset (none runs a partial
state), the source is told and resumes its own, and vfio-pci exits non-zero.

SIGINT, SIGTERM or SIGHUP cancels (exit 130, 143 or 129): before a migration arrives, listening
stops and the devices are left untouched; during the load, as on a failure, every device is
reset and the source runs on. Once the whole state is loaded and LOADED sent, the devices run
and the migration completes; the exit status is still the signal's.

Listening on a non-loopback address without TLS prints a warning: anyone who can reach it can
feed device state to this host's driver.

Examples:
  vfio-pci incoming --listen tcp:0.0.0.0:4444 --tls-cert me.pem --tls-key me.key --tls-ca ca.pem 0000:5e:00.1
  vfio-pci incoming --listen unix:/run/vfio-mig.sock nic0=0000:5e:00.1 gpu0=0000:d8:00.0`);
  },
  async run(ctx, [devices], opts) {
    const uri = opts.listen as string;
    checkUri(uri, 'listen', '--listen');
    const timeoutMs = opts.timeout === undefined ? undefined : positiveInt(opts.timeout, '--timeout');
    const tls = tlsOptions(opts);
    await checkTls(tls);
    const args = (devices as string[]).map(parseDeviceArg);
    // Listening first: an address in use or not this host's fails before any device is opened.
    const listener = await listen(uri, { tls });
    ctx.onCleanup(() => listener.close());
    for (const w of listener.warnings) ctx.warn(`vfio-pci incoming: warning: ${w}`);
    listener.on('refused', (p) => ctx.warn(`vfio-pci incoming: turned away ${p.peer} (${p.reason}${p.error ? `: ${p.error.message}` : ''})`));
    return withDevices(args.map((a) => a.spec), openOptions(opts), async (devs) => {
      const jobDevs = devs.map((device, i) => (args[i].id ? { id: args[i].id!, device } : device));
      ctx.say(`waiting for a migration on ${listener.uri}${tls ? ' (TLS)' : ''} → ${(devices as string[]).join(', ')}`);
      let res;
      try {
        res = await receiveDevices(jobDevs, listener, {
          resume: true, allowNonP2P: opts.allowNonP2p === true, acceptTimeoutMs: timeoutMs, signal: ctx.signal, onState: ctx.onState, onProgress: ctx.onProgress,
        });
      } catch (e) {
        throw explainRefusedState(e);
      }
      ctx.endProgress();
      const out = res.devices.map((d, i) => ({ ...d, device: devs[i].name, state: migStateName(devs[i].migration!.getState()) }));
      const total = out.reduce((a, d) => a + d.stateBytes, 0);
      const src = res.source;
      ctx.print(
        `received ${out.length} device${out.length === 1 ? '' : 's'}: ${fmtBytes(src.precopyBytes ?? 0)} precopy / ${fmtBytes(src.stopCopyBytes ?? total)} stop-copy, ` +
          `${src.iterations ?? 0} iteration${src.iterations === 1 ? '' : 's'}, device downtime ${(src.downtimeMs ?? 0).toFixed(1)} ms; ${out.map((d) => `${d.from} → ${d.device} ${d.state}`).join(', ')}`,
      );
      return {
        json: {
          listen: listener.uri, downtimeMs: src.downtimeMs, iterations: src.iterations, totalBytes: total, precopyBytes: src.precopyBytes, stopCopyBytes: src.stopCopyBytes,
          devices: out, transitions: ctx.transitions,
        },
      };
    });
  },
};

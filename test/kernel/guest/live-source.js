// A live-migration source that stays in precopy (for live.test.js): the CLI's own job
// (migrateDevices, whose run() loop `vfio-pci migrate` uses) with a downtime limit of 1 ms and an
// assumed bandwidth of 1 byte/s, so that the devices' pending state never fits the limit and
// run() keeps iterating — as a source does whose device state is too large or too busy to
// converge yet. mtty never moves the 256 KiB a round needs to measure the link, so the assumed
// figure stays. Whatever ends the migration (the destination vanishing, SIGINT: a cancel through
// the job's AbortSignal) is reported.
//
// Usage: node live-source.js URI ID=DEVICE...
// Prints JSON lines on stdout:
//   {"event":"acked","states":[...],"pending":{...}}  once the destination has loaded the initial
//                                                     data (SWITCHOVER_ACK), the devices in PRE_COPY
//   {"event":"end","ok":false,"error":{...},"transitions":[...],"states":[...]}  at the end (exit 1)
'use strict';
const { lib } = require('./helpers');

const { migrateDevices } = lib('vm/live-jobs');
const { openDevice } = lib('kernel/open');
const { migStateName } = lib('kernel/uapi/vfio');

const [uri, ...specs] = process.argv.slice(2);
const say = (o) => process.stdout.write(`${JSON.stringify(o)}\n`);

(async () => {
  const devs = specs.map((spec) => {
    const [id, name] = spec.split('=');
    return { id, device: openDevice(name) };
  });
  const states = () => devs.map((d) => migStateName(d.device.migration.getState()));
  const transitions = [];
  try {
    // SIGINT cancels through the job's AbortSignal (what the CLI's signal handling does).
    const ac = new AbortController();
    process.once('SIGINT', () => ac.abort());
    const r = await migrateDevices(devs, uri, {
      downtimeLimitMs: 1, bandwidth: 1, maxIterations: 1e9, idleMs: 50, signal: ac.signal,
      onState: (c) => transitions.push(`${c.device}:${migStateName(c.from)}>${migStateName(c.to)}`),
      onStart: (m) => {
        const acked = () => say({ event: 'acked', states: states(), pending: m.pending() });
        if (m.sink.switchoverAcked) acked();
        else m.sink.once('switchover-ack', acked);
      },
    });
    say({ event: 'end', ok: true, result: r, transitions, states: states() });
  } catch (e) {
    const error = { code: e.code, step: e.step, message: e.message, deviceState: e.deviceState };
    say({ event: 'end', ok: false, error, transitions, states: states() });
    process.exitCode = 1;
  } finally {
    for (const d of devs) d.device.close();
  }
})();

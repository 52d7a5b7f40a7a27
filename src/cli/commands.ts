/** The CLI's commands. Each takes parsed arguments and returns an exit status. */
import * as os from 'node:os';
import * as path from 'node:path';
import * as fs from 'node:fs';
import { VfioError } from '../base/errors';
import { getDefaultBinding, openDevice, type OpenOptions } from '../kernel/open';
import type { Binding } from '../kernel/binding/types';
import { loadBinding } from '../kernel/binding';
import type { VfioDevice } from '../kernel/device';
import { saveSnapshot, restoreSnapshot, type Progress } from '../vm/jobs';
import { inspectSnapshot, formatInspection } from '../snapshot/inspect';
import { MigState, migStateName } from '../kernel/uapi/vfio';
import { describeDevice, formatDeviceInfo } from './info';
import { runDemo } from './demo';
import { formatStateChange } from './format';
import { ProgressDisplay } from './progress';

export interface CommandContext {
  args: string[];
  opts: {
    json?: boolean;
    output?: string;
    input?: string;
    'leave-stopped'?: boolean;
    'allow-non-p2p'?: boolean;
    iommu?: string;
    binding?: string;
    size?: string;
    quiet?: boolean;
  };
  out: NodeJS.WritableStream;
  err: NodeJS.WritableStream;
}

type Command = (ctx: CommandContext) => Promise<number>;

function usage(message: string): VfioError {
  return new VfioError(message, { code: 'EVFIO_USAGE', kind: 'usage' });
}

function openOptions(ctx: CommandContext): OpenOptions {
  const o: OpenOptions = {};
  if (ctx.opts.iommu !== undefined) {
    if (ctx.opts.iommu !== 'iommufd' && ctx.opts.iommu !== 'legacy') throw usage(`--iommu must be iommufd or legacy, not '${ctx.opts.iommu}'`);
    o.iommu = ctx.opts.iommu;
  }
  if (ctx.opts.binding !== undefined) {
    if (ctx.opts.binding !== 'native' && ctx.opts.binding !== 'koffi') throw usage(`--binding must be native or koffi, not '${ctx.opts.binding}'`);
    o.binding = loadBinding(ctx.opts.binding);
  }
  return o;
}

/** The default binding (native, else koffi) for reading files faster; none when neither loads. */
function anyBinding(): Binding | undefined {
  try {
    return getDefaultBinding();
  } catch {
    return undefined;
  }
}

function withDevices<T>(specs: string[], opts: OpenOptions, fn: (devs: VfioDevice[]) => Promise<T>): Promise<T> {
  const devs: VfioDevice[] = [];
  const closeAll = (): void => devs.reverse().forEach((d) => d.close());
  try {
    for (const s of specs) devs.push(openDevice(s, opts));
  } catch (e) {
    closeAll();
    throw e;
  }
  return fn(devs).finally(closeAll);
}

function say(ctx: CommandContext, line: string): void {
  if (!ctx.opts.quiet) ctx.out.write(line + '\n');
}

function arcLogger(ctx: CommandContext) {
  return (c: Parameters<typeof formatStateChange>[0]): void => say(ctx, formatStateChange(c));
}

/** A progress callback drawing a bar on stderr for transfers over a second; `done()` ends it. */
function progressPrinter(ctx: CommandContext): ((p: Progress) => void) & { done(): void } {
  const display = new ProgressDisplay(ctx.err, !ctx.opts.quiet);
  return Object.assign((p: Progress) => display.update(p), { done: () => display.stop() });
}

export function fmtBytes(n: number): string {
  if (n < 1024) return `${n} bytes`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = -1;
  do {
    v /= 1024;
    u++;
  } while (v >= 1024 && u < units.length - 1);
  return `${v.toFixed(v < 10 ? 2 : 1)} ${units[u]} (${n} bytes)`;
}

const info: Command = async (ctx) => {
  if (ctx.args.length !== 1) throw usage('info takes one DEVICE');
  return withDevices(ctx.args, openOptions(ctx), async ([dev]) => {
    const d = describeDevice(dev);
    ctx.out.write(ctx.opts.json ? JSON.stringify(d, null, 2) + '\n' : formatDeviceInfo(d));
    return 0;
  });
};

/**
 * `[ID=]DEVICE`: the id a device is saved under (and paired by on restore), then its spec. An
 * id is letters, digits, `_`, `.` and `-`; without one the id is the spec itself. (A spec such
 * as `sim:seed=7` holds an `=` too, but what stands before it is no id.)
 */
export function parseDeviceArg(arg: string): { id?: string; spec: string } {
  const m = /^([A-Za-z0-9_.-]+)=(.+)$/.exec(arg);
  return m ? { id: m[1], spec: m[2] } : { spec: arg };
}

const snapshot: Command = async (ctx) => {
  if (ctx.args.length < 1) throw usage('snapshot takes at least one DEVICE');
  if (!ctx.opts.output) throw usage('snapshot needs -o FILE');
  const file = ctx.opts.output;
  const args = ctx.args.map(parseDeviceArg);
  return withDevices(args.map((a) => a.spec), openOptions(ctx), async (devs) => {
    const jobDevs = devs.map((device, i) => ({ id: args[i].id ?? device.name, device }));
    say(ctx, `snapshot of ${jobDevs.map((d) => (d.id === d.device.name ? d.id : `${d.id}=${d.device.name}`)).join(', ')} → ${file}`);
    const progress = progressPrinter(ctx);
    const res = await saveSnapshot(jobDevs, file, {
      leaveStopped: ctx.opts['leave-stopped'], allowNonP2P: ctx.opts['allow-non-p2p'], onState: arcLogger(ctx), onProgress: progress,
    }).finally(progress.done);
    for (const d of res.devices) say(ctx, `  ${d.id}: ${fmtBytes(d.stateBytes)} of device state, ${d.configBytes} bytes of config space`);
    say(ctx, `wrote ${file}${ctx.opts['leave-stopped'] ? ' (devices left in STOP)' : ''}`);
    return 0;
  });
};

const restore: Command = async (ctx) => {
  if (ctx.args.length < 1) throw usage('restore takes at least one [ID=]DEVICE');
  if (!ctx.opts.input) throw usage('restore needs -i FILE');
  const file = ctx.opts.input;
  const args = ctx.args.map(parseDeviceArg);
  return withDevices(args.map((a) => a.spec), openOptions(ctx), async (devs) => {
    const jobDevs = devs.map((device, i) => (args[i].id ? { id: args[i].id!, device } : device));
    say(ctx, `restore ${file} → ${ctx.args.join(', ')}`);
    const progress = progressPrinter(ctx);
    const res = await restoreSnapshot(jobDevs, file, { allowNonP2P: ctx.opts['allow-non-p2p'], onState: arcLogger(ctx), onProgress: progress }).finally(progress.done);
    for (const [i, d] of res.devices.entries()) {
      say(ctx, `  ${d.from} → ${devs[i].name}: ${fmtBytes(d.stateBytes)} of device state loaded; now ${migStateName(devs[i].migration!.getState())}`);
    }
    return 0;
  });
};

const inspect: Command = async (ctx) => {
  if (ctx.args.length !== 1) throw usage('inspect takes one FILE');
  const res = await inspectSnapshot(ctx.args[0], { binding: openOptions(ctx).binding ?? anyBinding() });
  ctx.out.write(ctx.opts.json ? JSON.stringify(res, null, 2) + '\n' : formatInspection(res));
  return res.ok ? 0 : 1;
};

const demo: Command = async (ctx) => {
  const o = openOptions(ctx);
  const progress = progressPrinter(ctx);
  const line = (l: string): void => {
    progress.done();
    say(ctx, l);
  };
  await runDemo({ size: ctx.opts.size ?? '16MiB', binding: o.binding, say: line, progress }).finally(progress.done);
  return 0;
};

export const commands: Record<string, Command> = { info, snapshot, restore, inspect, demo };

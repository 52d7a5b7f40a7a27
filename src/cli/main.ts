/**
 * `vfio-pci`: the library's jobs from a shell.
 *
 * How the CLI is put together (to add a command, e.g. `migrate` or `incoming`, write one module
 * in commands/ and list it in COMMANDS below; nothing else changes):
 *
 *  - commands/*.ts   one `CliCommand` each (command.ts): `define(cmd)` declares its arguments,
 *                    options (`addCommonOptions` adds --json, --quiet and, for device commands,
 *                    --iommu/--binding) and help text on a commander Command; `run(ctx, args,
 *                    opts)` does the work and resolves with `{ json, exitCode? }`; `cancel(opts)`
 *                    marks a job that signals cancel, and says what cancelling it does.
 *  - main.ts         builds the commander program from COMMANDS (per-command help, `help CMD`,
 *                    --version, unknown options and commands refused with exit 2), runs the
 *                    chosen command, and prints its result or error: text on stdout/stderr, or
 *                    with --json one object on stdout — `{ ok: true, ...json }` or `{ ok: false,
 *                    error: { message, code, kind, errno, syscall, op, step, device, path,
 *                    deviceState }, notes?, signal? }` (report.ts); an error's text goes to
 *                    stderr with --json too.
 *  - command.ts      `CommandContext`, what a command works with: `say()` (state lines; above
 *                    the progress bar, dropped with --json/--quiet), `print()` (a text result),
 *                    `onState` / `onProgress` (give them to a job), `signal` (the job's
 *                    AbortSignal), `note()` (a line for the failure report), `onCleanup()`.
 *  - signals.ts      one SignalScope per cancellable command: the first SIGINT/SIGTERM/SIGHUP
 *                    aborts `ctx.signal` (the library then cleans up: no temporary file, devices
 *                    back) and prints the command's `cancel` text, later ones only say the
 *                    cleanup is under way; exit 128 + signal.
 *  - paths.ts        the file arguments (-o, -i, inspect's FILE), checked before any device is
 *                    opened: a path that cannot be used is a usage error.
 *  - output.ts       stdout/stderr wrapped so that EPIPE or a closed stream ends the output,
 *                    never the job.
 *  - progress.ts     the bar (cli-progress, stderr, terminals only; lines printed above it).
 *  - devices.ts      `[ID=]DEVICE` parsing (sim specs checked here), opening, closing.
 *  - report.ts       exit codes, error text and JSON, the driver-refused-state explanation.
 *
 * Exit status: 0 success; 1 failure (message on stderr with where each device was left);
 * 2 usage (bad command line, no such device, a path that cannot be used); 129 / 130 / 143
 * after SIGHUP / SIGINT / SIGTERM (the job cancelled and cleaned up, or completed if the signal
 * came too late to cancel it: the message says which).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Command, CommanderError } from 'commander';
import { logger } from '../base/log';
import { registerSimulator } from '../sim/provider';
import { CommandContext, refuseRepeats, type CliCommand } from './command';
import { demoCommand } from './commands/demo';
import { incomingCommand } from './commands/incoming';
import { migrateCommand } from './commands/migrate';
import { infoCommand } from './commands/info';
import { inspectCommand } from './commands/inspect';
import { restoreCommand } from './commands/restore';
import { snapshotCommand } from './commands/snapshot';
import { Output } from './output';
import { EXIT, errorJson, exitCodeOf, formatError } from './report';
import { SignalScope, type SignalSource } from './signals';
import { VfioError } from '../base/errors';

const log = logger('cli');

/** The commands, in the order `vfio-pci --help` lists them. */
export const COMMANDS: readonly CliCommand[] = [infoCommand, snapshotCommand, restoreCommand, migrateCommand, incomingCommand, inspectCommand, demoCommand];

const PROGRAM_HELP = `
DEVICE: a PCI address (0000:01:00.0), an mdev UUID, a sysfs path, /dev/vfio/devices/vfioN, or a
        simulated device: sim, sim:SIZE, sim:SIZE:KEY=VALUE...#NAME (README "Simulated devices")
ID=:    the name a device is saved under and paired by on restore (default: DEVICE as given)

Exit status: 0 success, 1 failure, 2 usage error (bad arguments, no such device, unusable
path), 129/130/143 after SIGHUP/SIGINT/SIGTERM (the job cancelled and cleaned up).
Logging: DEBUG=vfio:* prints every phase with its duration.`;

/** The package's version, from the package.json above this file (src/ or dist/src/). */
function packageVersion(): string {
  for (let dir = __dirname; ; dir = path.dirname(dir)) {
    try {
      const pkg = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'node-vfio-pci' && pkg.version) return pkg.version;
    } catch {
      /* not here */
    }
    if (path.dirname(dir) === dir) return 'unknown';
  }
}

export interface MainOptions {
  /** Where signals come from (default: process). */
  signals?: SignalSource;
}

/**
 * Run the command line `argv` (without node and the script). Resolves with the exit status;
 * never rejects for a failed command (the error is printed).
 */
export async function main(
  argv: string[],
  out: NodeJS.WritableStream = process.stdout,
  err: NodeJS.WritableStream = process.stderr,
  opts: MainOptions = {},
): Promise<number> {
  registerSimulator();
  const io = { out: new Output(out), err: new Output(err) };
  const wantsJson = argv.includes('--json');
  let current = '';
  let exit: number = EXIT.OK;
  const program = new Command('vfio-pci')
    .description('Pause, snapshot, restore and live-migrate VFIO PCI devices (VFIO migration v2), on real or simulated devices.')
    .version(packageVersion(), '-V, --version', 'print the version')
    .helpOption('-h, --help', 'show help (vfio-pci help COMMAND: a command\'s help)')
    .helpCommand(false) // commander's own shows the global help for `help nosuch`: ours, below
    .configureOutput({
      writeOut: (s) => io.out.write(s),
      writeErr: (s) => io.err.write(s),
      // The message goes to stderr with --json too (the JSON object is stdout's).
      outputError: (s, write) => write(`vfio-pci${current ? ' ' + current : ''}: ${s.replace(/^error: /, '')}`),
    })
    .exitOverride()
    .showHelpAfterError("(see 'vfio-pci --help')")
    .addHelpText('after', PROGRAM_HELP);
  program.hook('preSubcommand', (_, sub) => {
    current = sub.name();
  });
  for (const c of COMMANDS) {
    const cmd = program.command(c.name).description(c.summary).showHelpAfterError(`(see 'vfio-pci help ${c.name}')`);
    c.define(cmd);
    refuseRepeats(cmd);
    cmd.action(async (...a: unknown[]) => {
      const self = a[a.length - 1] as Command;
      exit = await runCommand(c, self.processedArgs as unknown[], self.opts(), io, opts.signals);
    });
  }
  program
    .command('help [command]')
    .description("show a command's help")
    .action((name: string | undefined) => {
      // Each of these throws a CommanderError (exitOverride): exit 0 for help, 2 for the error.
      if (name === undefined) return program.help();
      const cmd = program.commands.find((c) => c.name() === name);
      if (!cmd) return program.error(`unknown command '${name}'`, { code: 'commander.unknownCommand', exitCode: EXIT.USAGE });
      return cmd.help();
    });
  try {
    await program.parseAsync(argv, { from: 'user' });
  } catch (e) {
    if (!(e instanceof CommanderError)) throw e;
    if (e.exitCode === 0) return EXIT.OK; // --help, help, --version
    if (wantsJson) {
      const error = { message: e.message.replace(/^error: /, ''), code: 'EVFIO_USAGE', kind: 'usage' };
      io.out.write(JSON.stringify({ ok: false, error }, null, 2) + '\n');
    }
    return EXIT.USAGE;
  }
  return exit;
}

/** Run one command: its signals, its output, its result or error; resolves with the exit status. */
async function runCommand(c: CliCommand, args: unknown[], opts: Record<string, unknown>, io: { out: Output; err: Output }, signals?: SignalSource): Promise<number> {
  const json = opts.json === true;
  let ctx: CommandContext | undefined;
  const scope = c.cancel
    ? new SignalScope((sig, n) => {
        ctx?.endProgress(true);
        io.err.write(n === 1
          ? `\nvfio-pci ${c.name}: ${sig}: cancelling: ${c.cancel!(opts)}\n`
          : `vfio-pci ${c.name}: ${sig}${sig === scope?.received ? ' again' : ` after ${scope?.received}`}: still cleaning up; waiting for it to finish\n`);
      }, signals).install()
    : undefined;
  ctx = new CommandContext(c.name, io.out, io.err, opts, scope?.signal ?? new AbortController().signal);
  let code: number;
  const signalField = (): Record<string, unknown> => (scope?.received ? { signal: scope.received } : {});
  try {
    const r = await c.run(ctx, args, opts);
    code = r.exitCode ?? EXIT.OK;
    ctx.endProgress(true);
    if (scope?.received) io.err.write(`vfio-pci ${c.name}: ${scope.received} came after the last step that could be cancelled: the ${c.name} completed\n`);
    if (json) io.out.write(JSON.stringify({ ok: code === EXIT.OK, ...signalField(), ...r.json }, null, 2) + '\n');
  } catch (e) {
    ctx.endProgress(true);
    log('%s failed: %s', c.name, (e as Error)?.message ?? e);
    code = exitCodeOf(e);
    if (scope?.received && e instanceof VfioError && e.kind === 'cancelled') e.message = `cancelled by ${scope.received}: ${e.message}`;
    io.err.write(formatError(c.name, e, ctx.notes));
    if (json) {
      const notes = ctx.notes.length ? { notes: ctx.notes } : {};
      io.out.write(JSON.stringify({ ok: false, ...signalField(), error: errorJson(e), ...notes }, null, 2) + '\n');
    }
  } finally {
    await ctx.close();
    scope?.dispose();
  }
  return scope?.exitCode ?? code;
}

/**
 * What a command module provides (`CliCommand`) and what it gets to work with
 * (`CommandContext`): the two shapes every command of src/cli/commands/ shares. See main.ts for
 * how they fit together.
 */
import * as fs from 'node:fs';
import { InvalidArgumentError, Option, type Command } from 'commander';
import type { StateChange } from '../kernel/migration';
import type { Progress } from '../vm/jobs';
import type { Output } from './output';
import { ProgressDisplay } from './progress';
import { formatStateChange, stateChangeJson } from './report';

/** What a command resolves with: its `--json` object (printed as `{ ok, ...json }`) and exit status. */
export interface CommandResult {
  /** Default 0; 1 for a command that ran and found something wrong (inspect of a bad file). */
  exitCode?: number;
  json: Record<string, unknown>;
}

/** One command: a module of src/cli/commands/. */
export interface CliCommand {
  name: string;
  /** One line for the command list of `vfio-pci --help`. */
  summary: string;
  /**
   * Declare the command's arguments, options and help text on its commander `Command`
   * (common options: `addCommonOptions`). Options not declared are refused (exit 2).
   */
  define(cmd: Command): void;
  /**
   * Present on a job that SIGINT / SIGTERM / SIGHUP cancel through `ctx.signal` (./signals.ts):
   * what cancelling this command does, given its options — what happens to its file and its
   * devices, phase by phase where that differs. Printed when the first signal arrives
   * (`vfio-pci CMD: SIGINT: cancelling: …`), so it must say what the code does; the report that
   * follows says where each device was actually left. Commands without it are short and
   * read-only: a signal ends them the default way.
   */
  cancel?: (opts: Record<string, unknown>) => string;
  /**
   * Do the work. `args` are commander's processed arguments in declaration order, `opts` its
   * options (camelCase). Throw a VfioError to fail (usage errors: report.ts usageError).
   */
  run(ctx: CommandContext, args: unknown[], opts: Record<string, unknown>): Promise<CommandResult>;
}

/** Options every command takes; `devices` adds the ones for opening real devices. */
export function addCommonOptions(cmd: Command, which: { devices?: boolean; binding?: boolean } = {}): Command {
  if (which.devices) cmd.addOption(new Option('--iommu <path>', 'how to open real devices (default: iommufd when the device has a cdev and /dev/iommu exists)').choices(['iommufd', 'legacy']));
  if (which.devices || which.binding) cmd.addOption(new Option('--binding <name>', 'syscall binding (default: the native addon, koffi if it cannot load)').choices(['native', 'koffi']));
  cmd.option('--json', 'print one JSON object on stdout (the result, or the error with its fields)');
  cmd.option('-q, --quiet', 'print only the result and errors: no state lines, no progress bar');
  return cmd;
}

/**
 * Refuse an option that takes a value when it is given twice (commander keeps the last one:
 * `snapshot … -o a -o b` would write b, `demo --size 4GiB --size 1MiB` run 1 MiB, silently).
 * Call once the command's options are declared; the command is parsed once (main() builds a
 * new program per call).
 */
export function refuseRepeats(cmd: Command): void {
  for (const opt of cmd.options) {
    if (!(opt.required || opt.optional) || opt.variadic) continue;
    const inner = opt.parseArg;
    let given: string | undefined;
    opt.parseArg = <T>(value: string, previous: T): T => {
      if (given !== undefined) throw new InvalidArgumentError(`${opt.long ?? opt.short} is given twice ('${given}', then '${value}'): give it once`);
      given = value;
      return inner ? inner(value, previous) : (value as T);
    };
  }
}

/** Whether two outputs are the same terminal (a line on one would garble a bar on the other). */
function sameTerminal(a: Output, b: Output): boolean {
  if (a.stream === b.stream) return true;
  if (!a.isTTY || !b.isTTY) return false;
  const fa = (a.stream as { fd?: number }).fd;
  const fb = (b.stream as { fd?: number }).fd;
  if (typeof fa !== 'number' || typeof fb !== 'number') return true;
  try {
    return fs.fstatSync(fa).rdev === fs.fstatSync(fb).rdev;
  } catch {
    return true;
  }
}

/**
 * What a running command uses: its output (text, or JSON only), the job's AbortSignal, the
 * progress display, the state-change printer, notes for a failure, and cleanup hooks.
 */
export class CommandContext {
  readonly json: boolean;
  readonly quiet: boolean;
  /** Every state change of the job, for `--json` (`transitions`). */
  readonly transitions: ReturnType<typeof stateChangeJson>[] = [];
  /** Lines added to the report of a failure (`notes` in JSON). */
  readonly notes: string[] = [];
  private readonly display: ProgressDisplay;
  private readonly cleanups: Array<() => void | Promise<void>> = [];
  private readonly shareTerminal: boolean;

  constructor(
    readonly command: string,
    readonly out: Output,
    readonly err: Output,
    opts: { json?: boolean; quiet?: boolean; progressAfterMs?: number },
    /** Aborted by the first SIGINT / SIGTERM / SIGHUP when the command has a `cancel`. */
    readonly signal: AbortSignal,
  ) {
    this.json = opts.json === true;
    this.quiet = opts.quiet === true;
    this.display = new ProgressDisplay(err, !this.quiet, opts.progressAfterMs);
    this.shareTerminal = sameTerminal(out, err);
  }

  /** The command's text result (info's table, inspect's listing); nothing with --json. */
  print(text: string): void {
    if (this.json) return;
    this.line(this.out, text.endsWith('\n') ? text.slice(0, -1) : text);
  }

  /** A line about what is happening; nothing with --json or --quiet. */
  say(line: string): void {
    if (this.json || this.quiet) return;
    this.line(this.out, line);
  }

  /** A line on stderr, above the progress bar when one is shown (also with --json and --quiet). */
  warn(line: string): void {
    if (!this.display.log(line)) this.err.write(line + '\n');
  }

  /** Every migration state change: printed as a line, and kept for --json. */
  readonly onState = (c: StateChange): void => {
    this.transitions.push(stateChangeJson(c));
    this.say(formatStateChange(c));
  };

  /** Transfer progress: drawn as a bar on a terminal (./progress.ts). */
  readonly onProgress = (p: Progress): void => {
    this.display.update(p);
  };

  /** End the progress bar now (before a final summary, or when the job is cancelled). */
  endProgress(forGood = false): void {
    if (forGood) this.display.stop();
    else this.display.end();
  }

  /** Add a line to the report if the command fails. */
  note(line: string): void {
    this.notes.push(line);
  }

  /** Run `fn` when the command ends, however it ends (last registered, first run). */
  onCleanup(fn: () => void | Promise<void>): void {
    this.cleanups.push(fn);
  }

  /** End the progress display and run the cleanup hooks. Never throws. */
  async close(): Promise<void> {
    this.display.stop();
    while (this.cleanups.length) {
      try {
        await this.cleanups.pop()!();
      } catch {
        /* best effort: the command's own error, if any, is what is reported */
      }
    }
  }

  private line(out: Output, line: string): void {
    if (out === this.out && this.shareTerminal && this.display.log(line)) return;
    out.write(line + '\n');
  }
}

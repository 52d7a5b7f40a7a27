/** `vfio-pci inspect FILE`: a snapshot's sections and devices, every checksum checked (src/snapshot/inspect.ts). */
import type { Command } from 'commander';
import { inspectSnapshot, formatInspection } from '../../snapshot/inspect';
import { addCommonOptions, type CliCommand } from '../command';
import { anyBinding, openOptions } from '../devices';
import { checkInputFile } from '../paths';
import { EXIT } from '../report';

export const inspectCommand: CliCommand = {
  name: 'inspect',
  summary: "list a snapshot's sections and devices and check every checksum",
  define(cmd: Command) {
    cmd.argument('<file>', 'a snapshot file');
    addCommonOptions(cmd, { binding: true });
    cmd.addHelpText('after', `
Reads the whole file: every section, every state chunk's checksum. Exits 0 when the file is
valid, 1 when it is not (the first problem is printed; with --json, "ok": false and "error"),
2 when FILE cannot be read at all (no such file, not a regular file, not readable).`);
  },
  async run(ctx, [file], opts) {
    checkInputFile(file as string, 'FILE');
    const res = await inspectSnapshot(file as string, { binding: openOptions(opts).binding ?? anyBinding() });
    ctx.print(formatInspection(res));
    const { ok, ...rest } = res;
    return { exitCode: ok ? EXIT.OK : EXIT.FAILED, json: rest };
  },
};

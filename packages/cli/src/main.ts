/**
 * `rotor`: one command with consistent subcommands. Every subcommand has --help; --json for scripting;
 * errors print `error: <CODE>: <message>` on stderr and exit with the code from errors.ts.
 */
import { CliError, errorCode, exitCodeFor, ExitCode } from './errors.ts';
import { deviceCommand } from './device.ts';
import { factoryCommand } from './factory.ts';
import { manifestCommand } from './manifest.ts';
import { auditCommand, serverCommand } from './server.ts';
import type { Command } from './command.ts';

const COMMANDS: readonly Command[] = [
  manifestCommand,
  factoryCommand,
  serverCommand,
  deviceCommand,
  auditCommand,
];

const USAGE = `rotor — secure firmware lifecycle for device fleets

usage: rotor <command> [options]

commands:
${COMMANDS.map((c) => `  ${c.name.padEnd(10)} ${c.summary}`).join('\n')}

Run 'rotor <command> --help' for a command's options.

exit codes: 0 ok, 1 internal error, 2 usage, 3 invalid input, 4 verification refused,
            5 unsupported, 6 I/O error, 7 decryption failed
`;

export async function run(argv: readonly string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(USAGE);
    return name === undefined ? ExitCode.usage : ExitCode.ok;
  }
  if (name === '--version') {
    process.stdout.write('rotor 0.1.0\n');
    return ExitCode.ok;
  }
  const cmd = COMMANDS.find((c) => c.name === name);
  if (cmd === undefined) {
    process.stderr.write(`error: CLI_USAGE: unknown command '${name}'\n\n${USAGE}`);
    return ExitCode.usage;
  }
  try {
    return await cmd.run(rest);
  } catch (e) {
    const code = errorCode(e);
    const message = e instanceof Error ? e.message : String(e);
    process.stderr.write(`error: ${code ?? 'INTERNAL'}: ${message}\n`);
    if (code === undefined && e instanceof Error && process.env.ROTOR_DEBUG)
      process.stderr.write(`${e.stack ?? ''}\n`);
    return exitCodeFor(code);
  }
}

export { CliError };

if (import.meta.main) {
  process.exitCode = await run(process.argv.slice(2));
}

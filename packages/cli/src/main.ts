/**
 * `rotor`: one command with consistent subcommands. Every subcommand has --help; --json for scripting;
 * errors print `error: <CODE>: <message>` on stderr and exit with the code from errors.ts.
 */
import { CliError, errorCode, exitCodeFor, ExitCode } from './errors.ts';
import { demoCommand } from './demo/index.ts';
import { deviceCommand } from './device.ts';
import { factoryCommand } from './factory.ts';
import { fleetCommand } from './fleet.ts';
import { manifestCommand } from './manifest.ts';
import { auditCommand, serverCommand } from './server.ts';
import { startCommand } from './start.ts';
import { releaseCommand } from './release.ts';
import { rolloutCommand } from './rollout.ts';
import { moduleCommand, revocationCommand } from './module.ts';
import { tokenCommand } from './token.ts';
import type { Command } from './command.ts';

const COMMANDS: readonly Command[] = [
  manifestCommand,
  factoryCommand,
  releaseCommand,
  rolloutCommand,
  {
    ...deviceCommand,
    summary: 'devices: list, show, disable, enable, attest, rotate-rot, quarantine; run an agent',
  },
  fleetCommand,
  moduleCommand,
  revocationCommand,
  tokenCommand,
  serverCommand,
  auditCommand,
  demoCommand,
  startCommand,
];

const USAGE = `rotor — secure firmware lifecycle for device fleets

usage: rotor <command> [options]

commands:
${COMMANDS.map((c) => `  ${c.name.padEnd(10)} ${c.summary}`).join('\n')}

Run 'rotor <command> --help' for a command's subcommands, 'rotor <command> <subcommand> --help' for its options.
Commands that talk to the server take --server URL (ROTOR_SERVER), --token-file FILE (ROTOR_TOKEN_FILE or
ROTOR_TOKEN) and --ca FILE (ROTOR_CA_FILE); --json prints JSON for scripts. NO_COLOR turns colors off.

exit codes (stable):
  0 ok
  1 internal error (a bug, or a server error: HTTP 5xx)
  2 usage (unknown command or flag, missing option)
  3 invalid input (malformed file; HTTP 400/404: no such resource)
  4 refused (verification failed; HTTP 409/422: not in this state; rollout paused or cancelled)
  5 unsupported
  6 I/O error (file, network)
  7 decryption failed
  8 denied (HTTP 401: bad or missing token; 403: the token's role may not do this)
`;

export async function run(argv: readonly string[]): Promise<number> {
  const [name, ...rest] = argv;
  // `rotor help X [Y]` is `rotor X [Y] --help`.
  if (name === 'help' && rest.length > 0) return run([...rest, '--help']);
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
    process.stderr.write(
      `error: CLI_USAGE: unknown ${name.startsWith('-') ? 'option' : 'command'} '${name}'\n\n${USAGE}`,
    );
    return ExitCode.usage;
  }
  try {
    return await cmd.run(rest);
  } catch (e) {
    const code = errorCode(e);
    const message = e instanceof Error ? e.message : String(e);
    process.stderr.write(`error: ${code ?? 'INTERNAL'}: ${message}\n`);
    if (e instanceof CliError && e.usage !== undefined) process.stderr.write(`\n${e.usage}`);
    else if (exitCodeFor(code) === ExitCode.usage)
      process.stderr.write(`Run 'rotor ${name} --help' for usage.\n`);
    if (code === undefined && e instanceof Error && process.env.ROTOR_DEBUG)
      process.stderr.write(`${e.stack ?? ''}\n`);
    return exitCodeFor(code);
  }
}

export { CliError };

if (import.meta.main) {
  process.exitCode = await run(process.argv.slice(2));
}

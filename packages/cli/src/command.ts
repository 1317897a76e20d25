import { parseArgs, type ParseArgsConfig } from 'node:util';
import { CliError, ExitCode } from './errors.ts';

export interface Command {
  readonly name: string;
  readonly summary: string;
  run(argv: readonly string[]): Promise<number>;
}

export interface Subcommand {
  readonly name: string;
  readonly summary: string;
  readonly usage: string;
  readonly options: NonNullable<ParseArgsConfig['options']>;
  run(args: { values: Record<string, unknown>; positionals: string[] }): Promise<number>;
}

/**
 * Dispatches `rotor <group> <sub> ...` with --help at both levels (`rotor G --help`, `rotor G S --help`, exit 0);
 * an unknown subcommand or flag is a usage error (exit 2) that prints the relevant usage on stderr.
 */
export function group(name: string, summary: string, subs: readonly Subcommand[]): Command {
  const usage = `usage: rotor ${name} <subcommand> [options]

${summary}

subcommands:
${subs.map((s) => `  ${s.name.padEnd(12)} ${s.summary}`).join('\n')}

Run 'rotor ${name} <subcommand> --help' for its options.
`;
  return {
    name,
    summary,
    async run(argv) {
      const [subName, ...rest] = argv;
      if (subName === undefined || subName === '--help' || subName === '-h' || subName === 'help') {
        (subName === undefined ? process.stderr : process.stdout).write(usage);
        return subName === undefined ? ExitCode.usage : ExitCode.ok;
      }
      const sub = subs.find((s) => s.name === subName);
      if (sub === undefined)
        throw new CliError('CLI_USAGE', `unknown subcommand 'rotor ${name} ${subName}'`, { usage });
      const subUsage = `usage: rotor ${name} ${sub.usage}\n`;
      if (rest.includes('--help') || rest.includes('-h')) {
        process.stdout.write(subUsage);
        return ExitCode.ok;
      }
      let parsed;
      try {
        parsed = parseArgs({ args: rest, options: sub.options, allowPositionals: true, strict: true });
      } catch (e) {
        throw new CliError('CLI_USAGE', e instanceof Error ? e.message : String(e), { usage: subUsage });
      }
      try {
        return await sub.run({ values: parsed.values, positionals: parsed.positionals });
      } catch (e) {
        // A usage error raised by the subcommand itself (missing or malformed option) shows its usage too.
        if (e instanceof CliError && e.code === 'CLI_USAGE' && e.usage === undefined)
          throw new CliError('CLI_USAGE', e.message, { usage: subUsage, cause: e });
        throw e;
      }
    },
  };
}

/**
 * Whether to color output written to `stream` (default stdout): never when NO_COLOR is set to a non-empty value
 * (https://no-color.org) or the stream is not a terminal.
 */
export function useColor(stream: NodeJS.WriteStream = process.stdout): boolean {
  return !process.env.NO_COLOR && (stream.isTTY as boolean | undefined) === true;
}

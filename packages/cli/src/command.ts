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

/** Dispatches `rotor <group> <sub> ...` with --help at both levels. */
export function group(name: string, summary: string, subs: readonly Subcommand[]): Command {
  const usage = `usage: rotor ${name} <subcommand> [options]\n\nsubcommands:\n${subs
    .map((s) => `  ${s.name.padEnd(10)} ${s.summary}`)
    .join('\n')}\n`;
  return {
    name,
    summary,
    async run(argv) {
      const [subName, ...rest] = argv;
      if (subName === undefined || subName === '--help' || subName === '-h') {
        process.stdout.write(usage);
        return subName === undefined ? ExitCode.usage : ExitCode.ok;
      }
      const sub = subs.find((s) => s.name === subName);
      if (sub === undefined) throw new CliError('CLI_USAGE', `unknown subcommand 'rotor ${name} ${subName}'`);
      if (rest.includes('--help') || rest.includes('-h')) {
        process.stdout.write(`usage: rotor ${name} ${sub.usage}\n`);
        return ExitCode.ok;
      }
      let parsed;
      try {
        parsed = parseArgs({ args: rest, options: sub.options, allowPositionals: true, strict: true });
      } catch (e) {
        throw new CliError('CLI_USAGE', e instanceof Error ? e.message : String(e));
      }
      return sub.run({ values: parsed.values, positionals: parsed.positionals });
    },
  };
}

/** Whether to color output: never when NO_COLOR is set (https://no-color.org) or stdout is not a TTY. */
export function useColor(): boolean {
  return !process.env.NO_COLOR && process.stdout.isTTY;
}

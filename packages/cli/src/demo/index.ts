/** `rotor demo`: the whole story in one run (demo.ts). */
import { parseArgs } from 'node:util';
import type { Command } from '../command.ts';
import { CliError, ExitCode } from '../errors.ts';
import { demoMain } from './demo.ts';

const USAGE = `usage: rotor demo [--devices N] [--dir DIR] [--json] [--keep] [--partial]

Runs the whole story, narrated step by step: the factory provisions N devices (default 12) → an author builds and
signs firmware 1.1 → the operator approves it → a rollout runs (canary, then everyone) → devices download, install,
reboot and confirm → a device loses power mid-install and recovers → a bad build rolls back on its canary and the
rollout pauses → attestation → root-of-trust rotation → capability modules → a table of the fleet.

The fleet server runs as a child process ('rotor server' on ephemeral ports), the devices in another (the fleet
simulator, storage on disk); this process drives the operator API. Each step checks its outcome.

  --devices N   fleet size (2 … 200, default 12)
  --dir DIR     keep everything in DIR (data directory, server and device logs, device storage)
  --keep        keep the temporary run directory (default: removed at the end)
  --json        no narration; one JSON document (steps, devices, rollouts) at the end
  --partial     exit 0 when every step that could run succeeded, even if a piece of the story is not there yet

Exit 0: the story happened as told; 1: a step failed or (without --partial) could not run.`;

export const demoCommand: Command = {
  name: 'demo',
  summary: 'the whole story in one run: factory, release, rollout, recovery, fleet table',
  async run(argv) {
    if (argv.includes('--help') || argv.includes('-h')) {
      process.stdout.write(`${USAGE}\n`);
      return ExitCode.ok;
    }
    let values;
    try {
      values = parseArgs({
        args: [...argv],
        options: {
          devices: { type: 'string' },
          dir: { type: 'string' },
          json: { type: 'boolean' },
          keep: { type: 'boolean' },
          partial: { type: 'boolean' },
        },
        strict: true,
        allowPositionals: false,
      }).values;
    } catch (e) {
      throw new CliError('CLI_USAGE', e instanceof Error ? e.message : String(e));
    }
    const devices = Number(values.devices ?? '12');
    return demoMain({
      devices,
      dir: values.dir,
      json: values.json === true,
      keep: values.keep === true,
      partial: values.partial === true,
    });
  },
};

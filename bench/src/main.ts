/**
 * `npm run bench -- <name> [--quick]`, `npm run bench -- --list`, `npm run bench -- --all [--quick]`.
 * Each benchmark prints a table and, as its last line, one JSON object {"bench": name, ...figures}.
 */
import { parseArgs } from 'node:util';
import { table, type Benchmark } from './harness.ts';
import { enclaveBench } from './benches/enclave.ts';
import { manifestBench } from './benches/manifest.ts';
import { payloadBench } from './benches/payload.ts';
import { powercutBench } from './benches/powercut.ts';
import { provisionBench } from './benches/provision.ts';
import { rolloutBench } from './benches/rollout.ts';
import { attestBench } from './benches/attest.ts';
import { keydeliveryBench } from './benches/keydelivery.ts';
import { checkinBench } from './benches/checkin.ts';
import { modulesBench } from './benches/modules.ts';
import { fleetBench } from './benches/fleet.ts';

const BENCHES: readonly Benchmark[] = [
  manifestBench,
  enclaveBench,
  powercutBench,
  payloadBench,
  rolloutBench,
  attestBench,
  keydeliveryBench,
  checkinBench,
  provisionBench,
  modulesBench,
  fleetBench,
];

async function main(): Promise<number> {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      list: { type: 'boolean' },
      all: { type: 'boolean' },
      quick: { type: 'boolean' },
      help: { type: 'boolean' },
    },
  });
  if (values.help || (!values.list && !values.all && positionals.length === 0)) {
    console.log('usage: npm run bench -- <name>... [--quick] | --all [--quick] | --list');
    return values.help ? 0 : 2;
  }
  if (values.list) {
    for (const b of BENCHES) console.log(`${b.name.padEnd(14)} ${b.description}`);
    return 0;
  }
  const chosen = values.all ? BENCHES : positionals.map((n) => BENCHES.find((b) => b.name === n) ?? n);
  for (const b of chosen) {
    if (typeof b === 'string') {
      console.error(`unknown benchmark: ${b} (npm run bench -- --list)`);
      return 2;
    }
  }
  for (const b of chosen as Benchmark[]) {
    const quick = values.quick ?? false;
    console.log(`# ${b.name}${quick ? ' (quick mode: figures not meaningful)' : ''}: ${b.description}`);
    const { rows, figures } = await b.run({ quick, log: (l) => process.stderr.write(`${l}\n`) });
    console.log(table(rows));
    console.log(JSON.stringify({ bench: b.name, quick, ...figures }));
  }
  return 0;
}

process.exitCode = await main();

/**
 * `rotor fleet simulate`: N simulated devices — the real device agent and status tracker client, as `rotor device
 * run` runs them — against a running server (operator API to register them, device API over mutual TLS, MQTT push),
 * until SIGINT/SIGTERM. See src/fleet/ for the library (and `rotor demo`, `npm run bench -- fleet` on top of it).
 */
import { resolve } from 'node:path';
import { Worker } from 'node:worker_threads';
import { group, useColor, type Command, type Subcommand } from './command.ts';
import { CliError, ExitCode } from './errors.ts';
import { json, out, readTextInput } from './io.ts';
import { anchorOf } from './fleet/release.ts';
import { FleetSimulator, type FleetOptions } from './fleet/simulator.ts';
import { DEVICE_STATES } from './fleet/device.ts';
import type { WorkerMessage } from './fleet/worker.ts';

function num(v: unknown, flag: string, min: number, max: number, integer = false): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isFinite(n) || n < min || n > max || (integer && !Number.isInteger(n)))
    throw new CliError('CLI_USAGE', `--${flag}: a ${integer ? 'whole ' : ''}number in [${min}, ${max}]`);
  return n;
}

const COLOR: Record<string, string> = {
  idle: '0',
  downloading: '36',
  installing: '34',
  confirmed: '32',
  failed: '31',
  'rolled-back': '33',
  offline: '2',
};

function line(counts: Record<string, number>, total: number, seconds: number, color: boolean): string {
  const parts = DEVICE_STATES.map((s) => {
    const t = `${s} ${counts[s] ?? 0}`;
    return color ? `\x1b[${COLOR[s] ?? '0'}m${t}\x1b[0m` : t;
  });
  return `${total} devices | ${parts.join('  ')} | ${Math.round(seconds)} s`;
}

const simulate: Subcommand = {
  name: 'simulate',
  summary: 'run N simulated devices against a running server',
  usage: `simulate --devices N --server URL --device-url URL --token-file F [--mqtt URL] [--ca FILE]
         [--operator-key FILE] [--author-key FILE] [--storage memory|DIR] [--offline 0.05]
         [--power-cuts 0.01] [--slow-link BPS] [--clock-skew S] [--workers K] [--group G]
         [--name-prefix P] [--reports all|outcomes] [--json]

Registers N devices through the operator API at --server (or ROTOR_SERVER; token from --token-file, or
ROTOR_TOKEN_FILE / ROTOR_TOKEN; operator or admin role; --ca or ROTOR_CA_FILE),
each with a software P-256 identity and a self-signed client certificate, then runs each device's agent and
status tracker against the device API at --device-url (mutual TLS; --ca: the server's CA) with push nudges
from --mqtt. Devices trust the simulated factory keys plus --operator-key (the server's operator public key)
and --author-key (the release author's): without them the server's releases are refused by the devices.
--storage DIR keeps each device's flash and identity in DIR/<name>/ (a re-run reuses them: registration is
idempotent); default memory. Realism: --offline fraction of devices start offline and join later;
--power-cuts fraction lose power during their next install (memory storage); --slow-link bytes/s per
device; --clock-skew S draws each device's skew from [-S, S] seconds. --workers K splits the fleet over K
worker threads. Prints a progress line on stderr when it is a terminal; exits 0 on SIGINT/SIGTERM with a summary (--json: JSON).`,
  options: {
    devices: { type: 'string' },
    server: { type: 'string' },
    'device-url': { type: 'string' },
    'token-file': { type: 'string' },
    mqtt: { type: 'string' },
    ca: { type: 'string' },
    'operator-key': { type: 'string' },
    'author-key': { type: 'string' },
    storage: { type: 'string' },
    offline: { type: 'string' },
    'power-cuts': { type: 'string' },
    'slow-link': { type: 'string' },
    'clock-skew': { type: 'string' },
    workers: { type: 'string' },
    group: { type: 'string' },
    'name-prefix': { type: 'string' },
    reports: { type: 'string' },
    json: { type: 'boolean' },
  },
  async run({ values }) {
    const devices = num(values.devices, 'devices', 1, 1_000_000, true);
    // The operator commands' conventions: ROTOR_SERVER, ROTOR_TOKEN_FILE / ROTOR_TOKEN, ROTOR_CA_FILE.
    const env = process.env;
    const server = (values.server as string | undefined) ?? env.ROTOR_SERVER;
    const deviceUrl = values['device-url'] as string | undefined;
    const tokenFile = (values['token-file'] as string | undefined) ?? env.ROTOR_TOKEN_FILE;
    const envToken = env.ROTOR_TOKEN === '' ? undefined : env.ROTOR_TOKEN;
    if (devices === undefined || server === undefined || deviceUrl === undefined)
      throw new CliError('CLI_USAGE', '--devices, --server and --device-url are required');
    if (tokenFile === undefined && envToken === undefined)
      throw new CliError('CLI_USAGE', '--token-file (or ROTOR_TOKEN_FILE / ROTOR_TOKEN) is required');
    const token = tokenFile !== undefined ? readTextInput(tokenFile, 'token file').trim() : envToken!;
    const caFile = (values.ca as string | undefined) ?? env.ROTOR_CA_FILE;
    const anchors = [];
    const opKey = values['operator-key'] as string | undefined;
    if (opKey !== undefined)
      anchors.push(anchorOf('fleet-operator', 'operator', readTextInput(opKey, 'operator key')));
    const auKey = values['author-key'] as string | undefined;
    if (auKey !== undefined)
      anchors.push(anchorOf('release-author', 'author', readTextInput(auKey, 'author key')));
    const storage = (values.storage as string | undefined) ?? 'memory';
    const reports = (values.reports as string | undefined) ?? 'all';
    if (reports !== 'all' && reports !== 'outcomes')
      throw new CliError('CLI_USAGE', '--reports: all or outcomes');
    const workers = num(values.workers, 'workers', 1, 64, true) ?? 1;
    const mqttUrl = values.mqtt as string | undefined;
    const slow = num(values['slow-link'], 'slow-link', 1, 1e12);
    const base: FleetOptions = {
      devices,
      operatorUrl: server,
      token,
      deviceUrl,
      ...(caFile === undefined ? {} : { ca: readTextInput(caFile, 'CA') }),
      ...(mqttUrl === undefined ? {} : { mqttUrl }),
      storage: storage === 'memory' ? 'memory' : { dir: resolve(storage) },
      anchors,
      offline: num(values.offline, 'offline', 0, 1) ?? 0,
      powerCuts: num(values['power-cuts'], 'power-cuts', 0, 1) ?? 0,
      ...(slow === undefined ? {} : { slowLinkBps: slow }),
      clockSkewS: num(values['clock-skew'], 'clock-skew', 0, 10 * 365 * 86_400) ?? 0,
      group: (values.group as string | undefined) ?? 'simulated',
      namePrefix: (values['name-prefix'] as string | undefined) ?? 'sim-',
      reports,
      ...(values.json === true
        ? {}
        : {
            onSetup: (phase: 'register' | 'boot', done: number, total: number) => {
              process.stderr.write(
                `fleet: ${phase === 'register' ? 'registered' : 'powered on'} ${done}/${total}\n`,
              );
            },
          }),
    };
    const asJson = values.json === true;
    // Progress goes to stderr (stdout stays the summary), redrawn only on a terminal.
    const tty = process.stderr.isTTY && !asJson;
    const color = useColor() && process.stderr.isTTY;
    const t0 = Date.now();
    // Listening before the fleet starts: a signal during setup stops it as soon as it is up.
    const signal = new Promise<string>((res) => {
      process.once('SIGINT', () => {
        res('SIGINT');
      });
      process.once('SIGTERM', () => {
        res('SIGTERM');
      });
    });

    // One simulator here, or one per worker thread over a slice of the fleet.
    const slices: { counts: Record<string, number>; powerCuts: number; errors: number }[] = [];
    let local: FleetSimulator | undefined;
    const threads: Worker[] = [];
    const finished: Promise<void>[] = [];
    if (workers === 1) local = await FleetSimulator.start(base);
    else {
      const per = Math.ceil(devices / workers);
      const plain: FleetOptions = { ...base };
      delete (plain as { onSetup?: unknown }).onSetup;
      const ready: Promise<void>[] = [];
      for (let w = 0; w < workers && w * per < devices; w++) {
        const slice = { counts: {}, powerCuts: 0, errors: 0 };
        slices.push(slice);
        const worker = new Worker(new URL('./fleet/worker.ts', import.meta.url), {
          // workerData is structured-cloned: functions (the setup progress callback) stay here.
          workerData: { ...plain, devices: Math.min(per, devices - w * per), firstIndex: w * per },
        });
        threads.push(worker);
        let done: () => void = () => undefined;
        finished.push(
          new Promise<void>((r) => {
            done = r;
          }),
        );
        ready.push(
          new Promise<void>((res, rej) => {
            worker.on('message', (m: WorkerMessage) => {
              if (m.type === 'ready') res();
              else if (m.type === 'failed') rej(new CliError('CLI_SERVER', `worker ${w}: ${m.message}`));
              else {
                // The counts before stopping are the summary's (stopped devices all count as offline).
                if (m.type === 'counts') slice.counts = m.counts;
                slice.powerCuts = m.powerCuts;
                slice.errors = m.errors;
                if (m.type === 'stopped') done();
              }
            });
            worker.on('error', (e) => {
              rej(e instanceof Error ? e : new Error(String(e)));
              done();
            });
            worker.on('exit', () => {
              done();
            });
          }),
        );
      }
      try {
        await Promise.all(ready);
      } catch (e) {
        for (const t of threads) await t.terminate();
        throw e;
      }
    }
    const snapshot = (): { counts: Record<string, number>; powerCuts: number; errors: number } => {
      if (local !== undefined) {
        let powerCuts = 0;
        let errors = 0;
        for (const d of local.devices) {
          powerCuts += d.powerCuts;
          errors += d.errors;
        }
        return { counts: local.counts(), powerCuts, errors };
      }
      const counts: Record<string, number> = {};
      for (const s of slices)
        for (const [k, v] of Object.entries(s.counts)) if (k !== 'total') counts[k] = (counts[k] ?? 0) + v;
      return {
        counts,
        powerCuts: slices.reduce((a, s) => a + s.powerCuts, 0),
        errors: slices.reduce((a, s) => a + s.errors, 0),
      };
    };
    if (!asJson) out(`fleet: ${devices} devices registered and running against ${deviceUrl}`);
    const progress = tty
      ? setInterval(() => {
          process.stderr.write(
            `\r${line(snapshot().counts, devices, (Date.now() - t0) / 1000, color)}\x1b[K`,
          );
        }, 500)
      : undefined;
    const sig = await signal;
    if (progress !== undefined) clearInterval(progress);
    const counts = snapshot().counts;
    if (local !== undefined) await local.stop();
    else {
      for (const t of threads) t.postMessage('stop');
      await Promise.all(finished);
    }
    const sum = { ...snapshot(), counts };
    const seconds = Math.round((Date.now() - t0) / 100) / 10;
    if (asJson) json({ devices, seconds, signal: sig, ...sum });
    else {
      if (tty) process.stderr.write('\n');
      out(`stopped (${sig}) after ${seconds} s: ${line(sum.counts, devices, seconds, color)}`);
      out(`power cuts ${sum.powerCuts}, tracker errors ${sum.errors}`);
    }
    return ExitCode.ok;
  },
};

export const fleetCommand: Command = group('fleet', 'simulate a fleet of devices against a server', [
  simulate,
]);

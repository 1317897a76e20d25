/**
 * Child processes of the demo: the fleet server (`rotor server …`, its addresses read from its startup log line) and
 * the factory devices (factory-fleet-child.ts, JSON lines on stdout, commands on stdin). Their output goes to log files in
 * the run directory; a child that exits early fails the step that waits on it with its last log lines.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, readFileSync, type WriteStream } from 'node:fs';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { CliError } from '../errors.ts';

const MAIN = fileURLToPath(new URL('../main.ts', import.meta.url));
const FACTORY_FLEET_CHILD = fileURLToPath(new URL('./factory-fleet-child.ts', import.meta.url));

/** A free TCP port on 127.0.0.1 (for the embedded MQTT broker, whose bound port the server does not log). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      const port = a !== null && typeof a === 'object' ? a.port : 0;
      s.close(() => {
        resolve(port);
      });
    });
  });
}

function tail(path: string, lines = 15): string {
  try {
    return readFileSync(path, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '';
  }
}

/** Resolves when the child exits (code, or the signal's name). */
function exited(child: ChildProcess): Promise<string> {
  return new Promise((resolve) => {
    if (child.exitCode !== null) resolve(String(child.exitCode));
    else
      child.once('exit', (code, signal) => {
        resolve(code === null ? (signal ?? 'killed') : String(code));
      });
  });
}

async function stopChild(child: ChildProcess, graceMs: number): Promise<string> {
  if (child.exitCode !== null || child.signalCode !== null) return String(child.exitCode ?? child.signalCode);
  const done = exited(child);
  child.kill('SIGTERM');
  const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
  const r = await done;
  clearTimeout(t);
  return r;
}

export interface ServerProcess {
  readonly child: ChildProcess;
  readonly pid: number;
  readonly operatorUrl: string;
  readonly deviceUrl: string;
  readonly mqttUrl: string;
  readonly log: string;
  stop(): Promise<string>;
}

/**
 * Starts `rotor server <args>` (the same `rotor` entry point) as a child and waits for its "rotor server started"
 * log line (pino JSON) naming the addresses it bound.
 */
export async function startServerProcess(
  args: readonly string[],
  opts: { env: Record<string, string>; log: string; mqttPort: number; timeoutMs?: number },
): Promise<ServerProcess> {
  const out: WriteStream = createWriteStream(opts.log, { flags: 'a' });
  const child = spawn(process.execPath, [MAIN, 'server', ...args], {
    env: { ...process.env, ...opts.env, NO_COLOR: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stderr.pipe(out, { end: false });
  const lines = createInterface({ input: child.stdout });
  const ready = new Promise<{ operatorUrl: string; deviceUrl: string }>((resolve, reject) => {
    const t = setTimeout(() => {
      reject(new CliError('CLI_IO', `the server did not start in time; log ${opts.log}:\n${tail(opts.log)}`));
    }, opts.timeoutMs ?? 60_000);
    lines.on('line', (line) => {
      out.write(`${line}\n`);
      if (!line.includes('rotor server started')) return;
      try {
        const j = JSON.parse(line) as { operatorUrl?: unknown; deviceUrl?: unknown };
        if (typeof j.operatorUrl === 'string' && typeof j.deviceUrl === 'string') {
          clearTimeout(t);
          resolve({ operatorUrl: j.operatorUrl, deviceUrl: j.deviceUrl });
        }
      } catch {
        // not the JSON line we look for
      }
    });
    void exited(child).then((code) => {
      clearTimeout(t);
      reject(new CliError('CLI_IO', `the server exited (${code}); log ${opts.log}:\n${tail(opts.log)}`));
    });
  });
  let urls: { operatorUrl: string; deviceUrl: string };
  try {
    urls = await ready;
  } catch (e) {
    await stopChild(child, 2000);
    throw e;
  }
  // Pino logs the listener's own address; devices and clients use the loopback name the certificate covers.
  const loop = (u: string): string => u.replace('://[::1]', '://127.0.0.1');
  return {
    child,
    pid: child.pid ?? 0,
    operatorUrl: loop(urls.operatorUrl),
    deviceUrl: loop(urls.deviceUrl),
    mqttUrl: `mqtts://127.0.0.1:${opts.mqttPort}`,
    log: opts.log,
    stop: async () => {
      const r = await stopChild(child, 10_000);
      out.end();
      return r;
    },
  };
}

/** A message from the fleet child (one JSON object per stdout line). */
export type FleetMessage = { readonly type: string } & Record<string, unknown>;

export interface FleetProcess {
  readonly child: ChildProcess;
  readonly pid: number;
  /** Every message received so far (in order). */
  readonly messages: FleetMessage[];
  /** Waits for the first message (from now on, or already received when `past`) that `pred` accepts. */
  next(
    pred: (m: FleetMessage) => boolean,
    what: string,
    timeoutMs?: number,
    past?: boolean,
  ): Promise<FleetMessage>;
  send(cmd: Record<string, unknown>): void;
  /** Pulls the plug: SIGKILL, no shutdown of any kind (what was not durable on disk is lost). */
  powerCut(): Promise<string>;
  stop(): Promise<string>;
  readonly log: string;
}

/** Starts the device process (factory devices of a batch) with its options (JSON in argv[2]). */
export function startFleetProcess(options: Record<string, unknown>, log: string): FleetProcess {
  const out = createWriteStream(log, { flags: 'a' });
  const child = spawn(process.execPath, [FACTORY_FLEET_CHILD, JSON.stringify(options)], {
    env: { ...process.env, NO_COLOR: '1' },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  child.stderr.pipe(out, { end: false });
  const messages: FleetMessage[] = [];
  const waiters = new Set<(m: FleetMessage | undefined) => void>();
  let exitCode: string | undefined;
  createInterface({ input: child.stdout }).on('line', (line) => {
    out.write(`${line}\n`);
    let m: FleetMessage;
    try {
      m = JSON.parse(line) as FleetMessage;
    } catch {
      return;
    }
    if (typeof m.type !== 'string') return;
    messages.push(m);
    for (const w of [...waiters]) w(m);
  });
  void exited(child).then((code) => {
    exitCode = code;
    for (const w of [...waiters]) w(undefined);
  });
  return {
    child,
    pid: child.pid ?? 0,
    messages,
    log,
    next(pred, what, timeoutMs = 60_000, past = false) {
      if (past) {
        const found = messages.find(pred);
        if (found !== undefined) return Promise.resolve(found);
      }
      return new Promise((resolve, reject) => {
        const fail = (why: string): void => {
          waiters.delete(w);
          clearTimeout(t);
          reject(new CliError('CLI_IO', `fleet: ${why} waiting for ${what}; log ${log}:\n${tail(log)}`));
        };
        const w = (m: FleetMessage | undefined): void => {
          if (m === undefined) fail(`the fleet process exited (${exitCode ?? '?'})`);
          else if (pred(m)) {
            waiters.delete(w);
            clearTimeout(t);
            resolve(m);
          }
        };
        const t = setTimeout(() => {
          fail('timed out');
        }, timeoutMs);
        if (exitCode !== undefined) fail(`the fleet process exited (${exitCode})`);
        else waiters.add(w);
      });
    },
    send(cmd) {
      child.stdin.write(`${JSON.stringify(cmd)}\n`);
    },
    async powerCut() {
      const done = exited(child);
      child.kill('SIGKILL');
      const r = await done;
      out.end();
      return r;
    },
    async stop() {
      child.stdin.end();
      const r = await stopChild(child, 15_000);
      out.end();
      return r;
    },
  };
}

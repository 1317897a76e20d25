/**
 * The sandbox worker: one WebAssembly instance of one capability module in its own worker_thread (own V8 isolate,
 * heap capped by the parent's resourceLimits), reached only by messages. The module sees its own linear memory
 * (whose maximum the manager checked statically) and exactly the host functions listed in the load message; there
 * is no other way out (no WASI, no filesystem, no network).
 *
 * Progress for the parent's watchdog (a SharedArrayBuffer, Int32Array):
 *   [0] incremented when a unit of work starts (instantiate + health check, or one call);
 *   [1] 1 while WebAssembly code runs, 0 otherwise.
 * The parent terminates the worker when [1] stays 1 with [0] unchanged past the time limit: a runaway call cannot
 * be interrupted from inside, so the whole worker goes.
 *
 * Module ABI 1: exports `memory`, `io_ptr() -> i32`, `io_cap() -> i32`, `process(len i32) -> i32`: the host writes
 * the input at io_ptr, calls process(len), and reads the output (length = result) at io_ptr; a negative result is
 * an error status of the module.
 *
 * Messages are produced by the manager (trusted code); their content stems from the module, so the parent validates
 * every reply.
 */
import { randomBytes } from 'node:crypto';
import { parentPort } from 'node:worker_threads';
import { HOST_MODULE, LOG_MAX_LINE, LOG_MAX_LINES } from './host.ts';

interface LoadMsg {
  readonly t: 'load';
  readonly module: WebAssembly.Module;
  readonly imports: readonly string[];
  readonly ioBytes: number;
  readonly selfTest: { readonly input: Uint8Array; readonly output: Uint8Array } | undefined;
  readonly progress: SharedArrayBuffer;
}
/** A batch of calls, packed: input i is data[offset_i, offset_i + lens[i]). */
interface CallMsg {
  readonly t: 'call';
  readonly lens: Int32Array;
  readonly data: Uint8Array;
}
interface ResetMsg {
  readonly t: 'reset';
}
type InMsg = LoadMsg | CallMsg | ResetMsg;

/** Result codes of a packed batch reply. */
const R_OK = 0;
const R_STATUS = 1;
const R_TRAP = 2;
const R_ABORTED = 3;

interface Instance {
  readonly memory: WebAssembly.Memory;
  readonly ioPtr: number;
  readonly ioCap: number;
  readonly process: (len: number) => number;
}

const port = parentPort;
if (port === null) throw new Error('the sandbox runs as a worker');

let progress = new Int32Array(new SharedArrayBuffer(8));
let inst: Instance | undefined;
let logs: string[] = [];
let memoryRef: WebAssembly.Memory | undefined;
const utf8 = new TextDecoder('utf-8', { fatal: false });

function enter(): void {
  Atomics.add(progress, 0, 1);
  Atomics.store(progress, 1, 1);
}
function leave(): void {
  Atomics.store(progress, 1, 0);
}

function hostFunctions(names: readonly string[]): Record<string, (...a: number[]) => number | undefined> {
  const all: Record<string, (...a: number[]) => number | undefined> = {
    log: (ptr = 0, len = 0) => {
      const mem = memoryRef;
      if (mem === undefined || logs.length >= LOG_MAX_LINES) return undefined;
      const n = Math.max(0, Math.min(len, LOG_MAX_LINE));
      const start = ptr >>> 0;
      if (start + n > mem.buffer.byteLength) throw new WebAssembly.RuntimeError('log: out of bounds');
      logs.push(utf8.decode(new Uint8Array(mem.buffer, start, n)));
      return undefined;
    },
    now_ms: () => performance.now(),
    random_u32: () => randomBytes(4).readInt32LE(0),
  };
  const out: Record<string, (...a: number[]) => number | undefined> = {};
  for (const key of names) {
    const name = key.slice(HOST_MODULE.length + 1);
    const f = all[name];
    if (!key.startsWith(`${HOST_MODULE}.`) || f === undefined) throw new Error(`no host function ${key}`);
    out[name] = f;
  }
  return out;
}

function message(e: unknown): string {
  return (e instanceof Error ? `${e.name}: ${e.message}` : String(e)).slice(0, 200);
}

type RunResult = { r: 'ok'; output: Uint8Array } | { r: 'status'; status: number };

function runOne(i: Instance, input: Uint8Array): RunResult {
  if (input.length > i.ioCap) return { r: 'status', status: -1 };
  new Uint8Array(i.memory.buffer, i.ioPtr, input.length).set(input);
  enter();
  let n: number;
  try {
    n = i.process(input.length);
  } finally {
    leave();
  }
  if (n < 0) return { r: 'status', status: n };
  if (n > i.ioCap) throw new WebAssembly.RuntimeError(`output length ${n} exceeds io_cap ${i.ioCap}`);
  return { r: 'ok', output: new Uint8Array(i.memory.buffer, i.ioPtr, n).slice() };
}

function load(m: LoadMsg): void {
  progress = new Int32Array(m.progress);
  logs = [];
  enter();
  try {
    const instance = new WebAssembly.Instance(m.module, { [HOST_MODULE]: hostFunctions(m.imports) });
    const ex = instance.exports;
    const memory = ex['memory'];
    const ioPtrF = ex['io_ptr'];
    const ioCapF = ex['io_cap'];
    const processF = ex['process'];
    if (
      !(memory instanceof WebAssembly.Memory) ||
      typeof ioPtrF !== 'function' ||
      typeof ioCapF !== 'function' ||
      typeof processF !== 'function'
    ) {
      throw new Error('ABI: exports memory, io_ptr, io_cap, process required');
    }
    memoryRef = memory;
    const ioPtr = (ioPtrF as () => number)() >>> 0;
    const ioCap = Math.min((ioCapF as () => number)() >>> 0, m.ioBytes);
    if (ioPtr + ioCap > memory.buffer.byteLength) throw new Error('ABI: the I/O buffer lies outside memory');
    const i: Instance = { memory, ioPtr, ioCap, process: processF as (len: number) => number };
    leave();
    // Health check: the signed self-test vector, else an empty input must not fail.
    const input = m.selfTest?.input ?? new Uint8Array(0);
    const res = runOne(i, input);
    if (res.r !== 'ok') throw new Error(`health check: status ${res.status}`);
    if (m.selfTest !== undefined && Buffer.compare(res.output, m.selfTest.output) !== 0) {
      throw new Error('health check: self-test output differs from the signed vector');
    }
    inst = i;
    port!.postMessage({ t: 'loaded', ioCap, logs: takeLogs() });
  } catch (e) {
    leave();
    inst = undefined;
    memoryRef = undefined;
    port!.postMessage({ t: 'load-failed', message: message(e), logs: takeLogs() });
  }
}

function takeLogs(): string[] {
  const l = logs;
  logs = [];
  return l;
}

/**
 * Runs a batch. Reply, packed: codes[i] (R_*), vals[i] (output length or status), data = the outputs one after the
 * other, trap = the message of the trap that ended the batch, if any.
 */
function calls(m: CallMsg): void {
  const n = m.lens.length;
  const codes = new Int32Array(n);
  const vals = new Int32Array(n);
  const outputs: Uint8Array[] = [];
  let total = 0;
  let trap: string | undefined;
  let off = 0;
  for (let k = 0; k < n; k++) {
    const len = m.lens[k]!;
    const input = m.data.subarray(off, off + len);
    off += len;
    if (trap !== undefined || inst === undefined) {
      codes[k] = R_ABORTED;
      continue;
    }
    try {
      const r = runOne(inst, input);
      if (r.r === 'ok') {
        codes[k] = R_OK;
        vals[k] = r.output.length;
        outputs.push(r.output);
        total += r.output.length;
      } else {
        codes[k] = R_STATUS;
        vals[k] = r.status;
      }
    } catch (e) {
      // A trap leaves the instance in an unknown state: nothing more runs on it (the parent rolls back).
      codes[k] = R_TRAP;
      trap = message(e);
      inst = undefined;
    }
  }
  const data = new Uint8Array(total);
  let at = 0;
  for (const o of outputs) {
    data.set(o, at);
    at += o.length;
  }
  const memoryBytes = memoryRef?.buffer.byteLength ?? 0;
  port!.postMessage({ t: 'results', codes, vals, data, trap, logs: takeLogs(), memoryBytes }, [
    codes.buffer,
    vals.buffer,
    data.buffer,
  ]);
}

port.on('message', (m: InMsg) => {
  if (m.t === 'load') load(m);
  else if (m.t === 'call') calls(m);
  else {
    inst = undefined;
    memoryRef = undefined;
    logs = [];
    port.postMessage({ t: 'reset' });
  }
});

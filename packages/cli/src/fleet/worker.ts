/**
 * A worker thread of `rotor fleet simulate --workers K`: runs a FleetSimulator over its slice of the fleet
 * (device names from `firstIndex`), posts its counts twice a second, and on 'stop' stops its devices and posts a
 * final summary. Options arrive as workerData (plain data: the anchors' key bytes are structured-cloned).
 */
import { parentPort, workerData } from 'node:worker_threads';
import { FleetSimulator, type FleetOptions } from './simulator.ts';

export type WorkerMessage =
  | {
      readonly type: 'counts';
      readonly counts: Record<string, number>;
      readonly powerCuts: number;
      readonly errors: number;
    }
  | { readonly type: 'ready' }
  | { readonly type: 'failed'; readonly message: string }
  | {
      readonly type: 'stopped';
      readonly counts: Record<string, number>;
      readonly powerCuts: number;
      readonly errors: number;
    };

const port = parentPort;
if (port === null) throw new Error('fleet worker: not in a worker thread');
const opts = workerData as FleetOptions;

function tally(f: FleetSimulator): { powerCuts: number; errors: number } {
  let powerCuts = 0;
  let errors = 0;
  for (const d of f.devices) {
    powerCuts += d.powerCuts;
    errors += d.errors;
  }
  return { powerCuts, errors };
}

let fleet: FleetSimulator | undefined;
try {
  fleet = await FleetSimulator.start(opts);
  port.postMessage({ type: 'ready' } satisfies WorkerMessage);
} catch (e) {
  port.postMessage({
    type: 'failed',
    message: e instanceof Error ? e.message : String(e),
  } satisfies WorkerMessage);
  port.close();
}
if (fleet !== undefined) {
  const f = fleet;
  const timer = setInterval(() => {
    port.postMessage({ type: 'counts', counts: f.counts(), ...tally(f) } satisfies WorkerMessage);
  }, 500);
  port.on('message', (m: unknown) => {
    if (m !== 'stop') return;
    clearInterval(timer);
    void f.stop().then(() => {
      port.postMessage({ type: 'stopped', counts: f.counts(), ...tally(f) } satisfies WorkerMessage);
      port.close();
    });
  });
}

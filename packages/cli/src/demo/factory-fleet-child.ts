/**
 * The demo's device process: the factory devices of a batch (factory-fleet.ts) in a process of their own. Options
 * come as JSON in argv[2]; it speaks JSON lines:
 *   out: {type:'ready', devices}, transition, attestation, device-error, {type:'snapshot', devices}, stopped
 *   in:  {cmd:'snapshot'}, {cmd:'nudge'}, {cmd:'stop'}
 *   capability modules (with options.capabilities):
 *        {cmd:'capability', name, indexes?} → {type:'capability', name, outcomes}   every device asks for it now
 *        {cmd:'sync-capabilities', index}  → {type:'capabilities-synced', index, result | error}
 *        {cmd:'load-start', name} → {type:'load-started'} once every device answered a few calls
 *        {cmd:'load-stop'} → {type:'load', results}
 * SIGTERM/SIGINT or stdin closing stop every tracker, then every enclave, and exit 0.
 */
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { FactoryFleet, type FactoryFleetOptions } from './factory-fleet.ts';

const emit = (m: Record<string, unknown>): void => {
  process.stdout.write(
    `${JSON.stringify(m, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v))}\n`,
  );
};

const message = (e: unknown): string => (e instanceof Error ? e.message : String(e));

async function main(): Promise<void> {
  const o = JSON.parse(process.argv[2] ?? '{}') as Omit<FactoryFleetOptions, 'token'> & { tokenFile: string };
  const token = readFileSync(o.tokenFile, 'utf8').trim();
  const fleet = await FactoryFleet.start({ ...o, token }, (e) => {
    emit(e);
  });
  emit({
    type: 'ready',
    devices: fleet.devices.map((r) => ({ index: r.index, name: r.name, serverId: r.serverId })),
  });
  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopping ??= (async () => {
      const last = await fleet.snapshot().catch(() => []);
      await fleet.stop();
      emit({ type: 'snapshot', final: true, devices: last });
      emit({ type: 'stopped' });
    })());
  createInterface({ input: process.stdin })
    .on('line', (line) => {
      let cmd: { cmd?: unknown; name?: unknown; index?: unknown; indexes?: unknown };
      try {
        cmd = JSON.parse(line) as typeof cmd;
      } catch {
        return;
      }
      if (cmd.cmd === 'snapshot')
        void fleet.snapshot().then((devices) => {
          emit({ type: 'snapshot', devices });
        });
      else if (cmd.cmd === 'nudge') fleet.nudgeAll();
      else if (cmd.cmd === 'capability' && typeof cmd.name === 'string') {
        const name = cmd.name;
        const indexes = Array.isArray(cmd.indexes)
          ? cmd.indexes.filter((x) => typeof x === 'number')
          : undefined;
        void fleet.capability(name, indexes).then(
          (outcomes) => {
            emit({ type: 'capability', name, outcomes });
          },
          (e: unknown) => {
            emit({ type: 'capability', name, error: message(e) });
          },
        );
      } else if (cmd.cmd === 'sync-capabilities' && typeof cmd.index === 'number') {
        const index = cmd.index;
        void fleet.syncCapabilities(index).then(
          (result) => {
            emit({ type: 'capabilities-synced', index, result });
          },
          (e: unknown) => {
            emit({ type: 'capabilities-synced', index, error: message(e) });
          },
        );
      } else if (cmd.cmd === 'load-start' && typeof cmd.name === 'string')
        void fleet.startLoad(cmd.name).then(
          () => {
            emit({ type: 'load-started' });
          },
          (e: unknown) => {
            emit({ type: 'load-started', error: message(e) });
          },
        );
      else if (cmd.cmd === 'load-stop')
        void fleet.stopLoad().then((results) => {
          emit({ type: 'load', results });
        });
      else if (cmd.cmd === 'stop') void stop().then(() => process.exit(0));
    })
    .on('close', () => {
      void stop().then(() => process.exit(0));
    });
  for (const sig of ['SIGTERM', 'SIGINT'] as const)
    process.once(sig, () => {
      void stop().then(() => process.exit(0));
    });
}

main().catch((e: unknown) => {
  emit({ type: 'error', fatal: true, message: e instanceof Error ? e.message : String(e) });
  process.exit(1);
});

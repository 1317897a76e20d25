/**
 * The demo's device process: the fleet simulator (real DeviceAgent + StatusTracker per device, real HTTPS + MQTT to
 * the server, storage on disk) in a process of its own. Options come as JSON in argv[2]; it speaks JSON lines:
 *   out: {type:'ready', devices}, {type:'transition', …}, {type:'snapshot', devices}, {type:'error', message},
 *        {type:'stopped'}
 *   in:  {cmd:'snapshot'}, {cmd:'nudge'}, {cmd:'stop'}
 * SIGTERM/SIGINT or stdin closing stop the fleet (every device's tracker, then its storage) and exit 0.
 */
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { agentAnchorsOf } from '../factory-device.ts';
import { FleetSimulator } from '../fleet/simulator.ts';

export interface FleetChildOptions {
  readonly devices: number;
  readonly operatorUrl: string;
  readonly tokenFile: string;
  readonly deviceUrl: string;
  readonly mqttUrl?: string;
  readonly caFile: string;
  readonly storageDir: string;
  readonly authorPubPem: string;
  readonly operatorPubPem: string;
  readonly powerCut?: readonly number[];
  readonly failHealth?: readonly number[];
  readonly group?: string;
  readonly namePrefix?: string;
  readonly checkinMs?: number;
}

const emit = (m: Record<string, unknown>): void => {
  process.stdout.write(
    `${JSON.stringify(m, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v))}\n`,
  );
};

async function main(): Promise<void> {
  const o = JSON.parse(process.argv[2] ?? '{}') as FleetChildOptions;
  const token = readFileSync(o.tokenFile, 'utf8').trim();
  const ca = readFileSync(o.caFile, 'utf8');
  const anchors = agentAnchorsOf({
    authorKeyPem: o.authorPubPem,
    operatorKeyPem: o.operatorPubPem,
    serverTlsCaPem: ca,
    factoryCaPem: '',
  });
  const fleet = await FleetSimulator.start({
    devices: o.devices,
    operatorUrl: o.operatorUrl,
    token,
    deviceUrl: o.deviceUrl,
    ca,
    ...(o.mqttUrl === undefined ? {} : { mqttUrl: o.mqttUrl }),
    storage: { dir: o.storageDir },
    anchors,
    group: o.group ?? 'demo',
    namePrefix: o.namePrefix ?? 'dev-',
    tags: ['demo'],
    faults: { powerCutDuringInstall: o.powerCut ?? [], failHealthCheck: o.failHealth ?? [] },
    interval: { defaultMs: o.checkinMs ?? 2000, minMs: 500, maxMs: o.checkinMs ?? 2000 },
    startSpreadMs: 500,
    enclave: true,
  });
  fleet.on('transition', (t) => {
    emit({
      type: 'transition',
      index: t.index,
      name: t.name,
      serverId: t.serverId,
      from: t.from,
      to: t.to,
      record:
        t.record === undefined
          ? undefined
          : { state: t.record.state, sequence: t.record.sequence, reason: t.record.reason },
    });
  });
  fleet.on('error', (e) => {
    emit({ type: 'error', message: e.message });
  });
  emit({
    type: 'ready',
    devices: fleet.devices.map((d) => ({ index: d.index, name: d.name, serverId: d.serverId })),
  });
  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopping ??= (async () => {
      await fleet.stop();
      emit({ type: 'snapshot', final: true, devices: await fleet.snapshot().catch(() => []) });
      emit({ type: 'stopped' });
    })());
  createInterface({ input: process.stdin })
    .on('line', (line) => {
      let cmd: { cmd?: unknown };
      try {
        cmd = JSON.parse(line) as { cmd?: unknown };
      } catch {
        return;
      }
      if (cmd.cmd === 'snapshot')
        void fleet.snapshot().then((devices) => {
          emit({ type: 'snapshot', devices });
        });
      else if (cmd.cmd === 'nudge') fleet.nudgeAll();
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

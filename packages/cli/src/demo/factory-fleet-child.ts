/**
 * The demo's device process for factory devices: every device `rotor factory provision` made (its fuse and flash
 * under the factory's devices/<batch>/ directory) runs here with the real device code — its enclave (identity,
 * agreement, report and RoT keys, sealed under its fuse), its agent on its flash, a status tracker client that
 * authenticates with RFC 3820 proxy certificates signed by the enclave's identity key (the server checks them against
 * the factory CA), the attester (RoT chain reports, rotation on the verifier's request, EAT evidence after each
 * update). Same JSON-lines protocol as fleet-child.ts:
 *   out: ready, transition, attestation, snapshot, error, stopped;  in: {cmd:'snapshot'|'nudge'|'stop'}
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { sim, StatusTracker, type TrackerEvent } from '@rotor/device';
import type { EvidenceClaims } from '@rotor/trust';
// The attester is not exported by @rotor/device's index yet (asked for in the integration report).
import { Attester, type AttestingEnvironment } from '../../../device/src/attest/attester.ts';
import { openFactoryDevice, type FactoryDevice } from '../factory-device.ts';

export interface FactoryFleetOptions {
  /** The batch directory (factory/devices/<batch>). */
  readonly dir: string;
  readonly deviceUrl: string;
  readonly mqttUrl?: string;
  readonly operatorUrl: string;
  readonly tokenFile: string;
  readonly checkinMs?: number;
}

const emit = (m: Record<string, unknown>): void => {
  process.stdout.write(
    `${JSON.stringify(m, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v))}\n`,
  );
};

interface Running {
  readonly index: number;
  readonly name: string;
  serverId: string | undefined;
  readonly d: FactoryDevice;
  readonly tracker: StatusTracker;
  reported: { state: string; sequence: string } | undefined;
  attestations: number;
  lastAttestation: string | undefined;
}

function environment(d: FactoryDevice): AttestingEnvironment {
  const core = d.core;
  return {
    getChain: () => {
      const c = core.chain;
      return c === null ? Promise.reject(new Error('no RoT chain')) : Promise.resolve(c);
    },
    rotateRoT: async () => {
      await core.rotateRoT({});
      const c = core.chain;
      if (c === null) throw new Error('no RoT chain');
      return c;
    },
    attest: async (challenge, claims) => (await core.attest({ challenge, claims })).token,
    ueid: () => Promise.resolve(core.ueid),
  };
}

/** Measurements of what the device booted: each image's SHA-256 as installed (RFC 9783-shaped components). */
function measure(d: FactoryDevice): () => Promise<EvidenceClaims> {
  return () => {
    const b = d.agent.booted;
    if (b === undefined) return Promise.reject(new Error('not booted'));
    return Promise.resolve({
      oemid: new Uint8Array([0x00, 0x1a, 0x2b]),
      hwmodel: new TextEncoder().encode(sim.CLASS),
      swversion: String(b.record.sequence),
      oemboot: true,
      dbgstat: 3,
      uptime: Math.floor(process.uptime()),
      components: b.record.images.map((img) => ({
        type: 'fw',
        digest: img.sha256,
        version: String(b.record.sequence),
        signer: new Uint8Array(32).fill(1),
      })),
    });
  };
}

async function main(): Promise<void> {
  const o = JSON.parse(process.argv[2] ?? '{}') as FactoryFleetOptions;
  const token = readFileSync(o.tokenFile, 'utf8').trim();
  const names = readdirSync(o.dir)
    .filter((n) => /^[0-9]{6}$/.test(n))
    .sort();
  const devices: Running[] = [];
  const every = o.checkinMs ?? 1000;
  for (const [index, n] of names.entries()) {
    let dev: Running | undefined = undefined;
    const d: FactoryDevice = await openFactoryDevice({
      dir: join(o.dir, n),
      agent: {
        // The simulated firmware's health check: the image the device booted starts with "OK" (sim.isHealthy).
        healthCheck: async (b) => {
          const img = b.record.images[0];
          if (img === undefined) return false;
          return sim.isHealthy(await d.agent.flash.readAll(b.bank, img.component, img.size, img.chunkSize));
        },
      },
    });
    const onEvent = (e: TrackerEvent): void => {
      const r = dev;
      if (r === undefined) return;
      if (e.kind === 'transition')
        emit({
          type: 'transition',
          index,
          name: r.name,
          serverId: r.serverId,
          to: e.record.state,
          record: { state: e.record.state, sequence: e.record.sequence, reason: e.record.reason },
        });
      else if (e.kind === 'delivered' && ['confirmed', 'failed', 'rolled-back'].includes(e.record.state))
        r.reported = { state: e.record.state, sequence: e.record.sequence.toString() };
      else if (e.kind === 'attestation') {
        const oc = e.outcome as unknown as Record<string, unknown>;
        if (oc.attested !== undefined) {
          r.attestations++;
          r.lastAttestation = JSON.stringify(oc.attested);
        }
        emit({ type: 'attestation', index, name: r.name, outcome: oc });
      } else if (e.kind === 'error')
        emit({ type: 'device-error', index, where: e.where, message: e.error.message });
    };
    const tracker = new StatusTracker({
      agent: d.agent,
      server: d.server(o.deviceUrl, { timeoutMs: 30_000 }),
      ...(o.mqttUrl === undefined ? {} : { mqtt: { url: o.mqttUrl, identity: d.credential } }),
      interval: { defaultMs: every, minMs: Math.min(500, every), maxMs: every },
      pushGapMs: 0,
      fetch: { retries: 3, backoffMs: 50, deadlineMs: 120_000 },
      fallbackSource: 'none',
      attester: new Attester(environment(d), measure(d)),
      onEvent,
    });
    dev = {
      index,
      name: d.deviceId,
      serverId: undefined,
      d,
      tracker,
      reported: undefined,
      attestations: 0,
      lastAttestation: undefined,
    };
    devices.push(dev);
  }
  // The server's ids of these devices (registered by the factory under their UEID URN).
  const res = await fetch(`${o.operatorUrl}/v1/devices?limit=1000&tag=factory`, {
    headers: { authorization: `Bearer ${token}` },
  });
  const list = (await res.json()) as { items?: { id: string; name: string }[] };
  for (const r of devices) r.serverId = list.items?.find((x) => x.name === r.name)?.id;
  for (const r of devices) await r.tracker.start();
  emit({
    type: 'ready',
    devices: devices.map((r) => ({ index: r.index, name: r.name, serverId: r.serverId })),
  });

  const snapshot = async (): Promise<Record<string, unknown>[]> =>
    Promise.all(
      devices.map(async (r) => {
        let flash: Record<string, unknown> | undefined;
        try {
          const st = await r.d.agent.status();
          flash = {
            bank: st.bank,
            sequence: st.sequence.toString(),
            trial: st.trial,
            updating: st.updating,
          };
        } catch {
          flash = undefined;
        }
        const chain = r.d.core.chain;
        return {
          index: r.index,
          name: r.name,
          serverId: r.serverId,
          state: r.reported?.state ?? 'idle',
          powerCuts: 0,
          reported: r.reported,
          flash,
          attestations: r.attestations,
          lastAttestation: r.lastAttestation,
          rotIndex: chain === null ? undefined : chain.records.length - 1,
        };
      }),
    );
  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopping ??= (async () => {
      for (const r of devices) await r.tracker.stop().catch(() => undefined);
      emit({ type: 'snapshot', final: true, devices: await snapshot().catch(() => []) });
      for (const r of devices) await r.d.close().catch(() => undefined);
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
        void snapshot().then((d) => {
          emit({ type: 'snapshot', devices: d });
        });
      else if (cmd.cmd === 'nudge') for (const r of devices) void r.tracker.cycle().catch(() => undefined);
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

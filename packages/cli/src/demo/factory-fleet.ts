/**
 * Factory devices running together in one process — every device `rotor factory provision` made (its fuse and flash
 * under the factory's devices/<batch>/ directory) with the real device code: its enclave (identity, agreement, report
 * and RoT keys, sealed under its fuse), its agent on its flash, a status tracker client that authenticates with
 * RFC 3820 proxy certificates signed by the enclave's identity key (a server with the factory CA as --device-ca
 * checks them), and the attester (RoT chain reports, rotation on the verifier's request, EAT evidence after each
 * update). Used by `rotor start` (in process) and by the demo's device process (factory-fleet-child.ts).
 */
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import {
  Attester,
  CapabilityManager,
  enclaveArchiveSealer,
  nodeFs,
  SandboxPool,
  sim,
  StatusTracker,
  type AttestingEnvironment,
  type CapabilityEvent,
  type TrackerEvent,
} from '@rotor/device';
import type { EvidenceClaims } from '@rotor/trust';
import {
  AGREEMENT_KEY_ID,
  bootedClaims,
  enclaveKeyAgreement,
  openFactoryDevice,
  type FactoryDevice,
} from '../factory-device.ts';
import {
  callLoad,
  capabilityProvisioning,
  CAPABILITY_VENDOR,
  fetchCapabilityKeys,
  type CapabilityKeysInfo,
  type LoadResult,
} from './capabilities.ts';

export interface FactoryFleetOptions {
  /** The batch directory (factory/devices/<batch>). */
  readonly dir: string;
  readonly deviceUrl: string;
  readonly mqttUrl?: string;
  /** Operator API and a token that may list devices: to learn the server's ids of the devices. */
  readonly operatorUrl: string;
  readonly token: string;
  readonly checkinMs?: number;
  /** Server CA (PEM) when it is not the one in the devices' bundles. */
  readonly ca?: string;
  /**
   * Give every device a CapabilityManager (issue 8): storage under its flash directory (`capabilities/`), archives
   * sealed by its enclave, module keys unwrapped by the enclave's agreement key, the server's capability authority
   * as manifest and revocation authority, wired into its tracker. Needs the server's capability keys and a
   * capability manifest for the devices' group (capabilities.ts: provisioning on first power-on).
   */
  readonly capabilities?: boolean;
}

export type FleetEvent =
  | {
      readonly type: 'transition';
      readonly index: number;
      readonly name: string;
      readonly serverId: string | undefined;
      readonly to: string;
      readonly record: { state: string; sequence: bigint; reason: string | undefined };
    }
  | { readonly type: 'attestation'; readonly index: number; readonly name: string; readonly outcome: unknown }
  | { readonly type: 'module'; readonly index: number; readonly name: string; readonly event: string }
  | {
      readonly type: 'device-error';
      readonly index: number;
      readonly where: string;
      readonly message: string;
    };

export interface FleetDeviceSnapshot {
  readonly index: number;
  readonly name: string;
  readonly serverId: string | undefined;
  readonly state: string;
  readonly powerCuts: number;
  readonly reported: { state: string; sequence: string } | undefined;
  readonly flash: { bank: string; sequence: string; trial: boolean; updating: boolean } | undefined;
  readonly attestations: number;
  readonly lastAttestation: string | undefined;
  readonly rotIndex: number | undefined;
  /** Capability modules (when the fleet runs a CapabilityManager per device): active version and archives. */
  readonly modules: readonly { name: string; version: string; archives: string[] }[] | undefined;
  /** The device's capability events so far, oldest first, as 'installed filter 1.0.0' etc. */
  readonly moduleEvents: readonly string[];
}

interface Running {
  readonly index: number;
  readonly name: string;
  serverId: string | undefined;
  readonly d: FactoryDevice;
  readonly tracker: StatusTracker;
  reported: { state: string; sequence: string } | undefined;
  /** What the device is doing, from its last transition (idle before any). */
  state: string;
  attestations: number;
  lastAttestation: string | undefined;
  readonly manager: CapabilityManager | undefined;
  readonly moduleEvents: string[];
}

function moduleEvent(e: CapabilityEvent): string | undefined {
  if (e.type === 'installed') return `installed ${e.name} ${e.version}`;
  if (e.type === 'unloaded') return `unloaded ${e.name} ${e.version} (${e.reason})`;
  if (e.type === 'rolled-back') return `rolled back ${e.name} ${e.from} → ${e.to ?? 'none'}`;
  return undefined;
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
    return Promise.resolve(
      bootedClaims(b, {
        oemid: new Uint8Array([0x00, 0x1a, 0x2b]),
        hwmodel: new TextEncoder().encode(sim.CLASS),
        signer: new Uint8Array(32).fill(1),
      }),
    );
  };
}

export class FactoryFleet {
  readonly devices: readonly Running[];
  readonly #onEvent: (e: FleetEvent) => void;
  /** Warm sandboxes shared by the devices' capability managers (one worker_thread each). */
  #pool: SandboxPool | undefined;
  #load: ReturnType<typeof callLoad> | undefined;

  private constructor(devices: Running[], onEvent: (e: FleetEvent) => void) {
    this.devices = devices;
    this.#onEvent = onEvent;
  }

  /** Opens every device of the batch directory and starts its tracker. */
  static async start(
    o: FactoryFleetOptions,
    onEvent: (e: FleetEvent) => void = () => undefined,
  ): Promise<FactoryFleet> {
    const names = readdirSync(o.dir)
      .filter((n) => /^[0-9]{6}$/.test(n))
      .sort();
    const devices: Running[] = [];
    const fleet = new FactoryFleet(devices, onEvent);
    const every = o.checkinMs ?? 1000;
    let keys: Promise<CapabilityKeysInfo> | undefined;
    const capabilityKeys = (): Promise<CapabilityKeysInfo> =>
      (keys ??= fetchCapabilityKeys(o.operatorUrl, o.token));
    try {
      for (const [index, n] of names.entries()) {
        let dev: Running | undefined = undefined;
        const d: FactoryDevice = await openFactoryDevice({
          dir: join(o.dir, n),
          agent: {
            // The simulated firmware's health check: the booted image starts with "OK" (sim.isHealthy).
            healthCheck: async (b) => {
              const img = b.record.images[0];
              if (img === undefined) return false;
              return sim.isHealthy(
                await d.agent.flash.readAll(b.bank, img.component, img.size, img.chunkSize),
              );
            },
          },
        });
        const event = (e: TrackerEvent): void => {
          const r = dev;
          if (r === undefined) return;
          if (e.kind === 'transition') {
            r.state = e.record.state;
            onEvent({
              type: 'transition',
              index,
              name: r.name,
              serverId: r.serverId,
              to: e.record.state,
              record: { state: e.record.state, sequence: e.record.sequence, reason: e.record.reason },
            });
          } else if (
            e.kind === 'delivered' &&
            ['confirmed', 'failed', 'rolled-back'].includes(e.record.state)
          )
            r.reported = { state: e.record.state, sequence: e.record.sequence.toString() };
          else if (e.kind === 'attestation') {
            const oc = e.outcome as unknown as Record<string, unknown>;
            if (oc.attested !== undefined) {
              r.attestations++;
              r.lastAttestation = JSON.stringify(oc.attested);
            }
            onEvent({ type: 'attestation', index, name: r.name, outcome: oc });
          } else if (e.kind === 'error')
            onEvent({ type: 'device-error', index, where: e.where, message: e.error.message });
        };
        let manager: CapabilityManager | undefined;
        const moduleEvents: string[] = [];
        if (o.capabilities === true)
          try {
            const ca = o.ca ?? d.serverCa;
            const prov = await capabilityProvisioning(join(o.dir, n), capabilityKeys, {
              url: o.deviceUrl,
              identity: d.credential,
              ...(ca === undefined ? {} : { ca }),
            });
            fleet.#pool ??= new SandboxPool({ spare: 1 });
            manager = await CapabilityManager.open({
              fs: nodeFs(join(o.dir, n, 'flash')),
              dir: 'capabilities',
              // The firmware version of the image booted now, 1.0 until then (the tracker powers the agent on: it
              // sets the agent's payload source first, so that an interrupted update resumes through it).
              device: {
                vendorDomain: CAPABILITY_VENDOR,
                deviceClass: sim.CLASS,
                get firmwareVersion(): [number, number, number] {
                  const seq = Number(d.agent.booted?.record.sequence ?? 100n);
                  return [Math.floor(seq / 100), seq % 100, 0];
                },
              },
              keys: { agreements: [enclaveKeyAgreement(d.core, AGREEMENT_KEY_ID)] },
              manifestAuthorities: [prov.authority],
              revocationAuthorities: [prov.authority],
              initialCapabilityManifest: prov.manifest,
              pool: fleet.#pool,
              // Archives sealed under the enclave's device-unique sealing key (SealData / UnsealData).
              sealer: enclaveArchiveSealer({
                sealData: (label, data) => Promise.resolve(d.core.sealData({ label, data }).sealed),
                unsealData: (label, sealed) => Promise.resolve(d.core.unsealData({ label, sealed }).data),
              }),
              onEvent: (e) => {
                const m = moduleEvent(e);
                if (m === undefined) return;
                moduleEvents.push(m);
                onEvent({ type: 'module', index, name: d.deviceId, event: m });
              },
            });
          } catch (e) {
            await d.close().catch(() => undefined);
            throw e;
          }
        const tracker = new StatusTracker({
          agent: d.agent,
          server: d.server(o.deviceUrl, { timeoutMs: 30_000, ...(o.ca === undefined ? {} : { ca: o.ca }) }),
          ...(o.mqttUrl === undefined
            ? {}
            : {
                mqtt: { url: o.mqttUrl, identity: d.credential, ...(o.ca === undefined ? {} : { ca: o.ca }) },
              }),
          interval: { defaultMs: every, minMs: Math.min(500, every), maxMs: every },
          pushGapMs: 0,
          fetch: { retries: 3, backoffMs: 50, deadlineMs: 120_000 },
          fallbackSource: 'none',
          attester: new Attester(environment(d), measure(d)),
          ...(manager === undefined ? {} : { capabilities: manager }),
          ...(d.trust === undefined ? {} : { trust: d.trust }),
          onEvent: event,
        });
        dev = {
          index,
          name: d.deviceId,
          serverId: undefined,
          d,
          tracker,
          reported: undefined,
          state: 'idle',
          attestations: 0,
          lastAttestation: undefined,
          manager,
          moduleEvents,
        };
        devices.push(dev);
      }
      // The server's ids of these devices (registered by the factory under their UEID URN).
      const res = await fetch(`${o.operatorUrl}/v1/devices?limit=1000&tag=factory`, {
        headers: { authorization: `Bearer ${o.token}` },
      });
      const list = (await res.json()) as { items?: { id: string; name: string }[] };
      for (const r of devices) r.serverId = list.items?.find((x) => x.name === r.name)?.id;
      for (const r of devices) await r.tracker.start();
    } catch (e) {
      await fleet.stop();
      throw e;
    }
    return fleet;
  }

  /** Devices per state (of their last transition; 'idle' before any). */
  counts(): Record<string, number> {
    const c: Record<string, number> = {};
    for (const r of this.devices) c[r.state] = (c[r.state] ?? 0) + 1;
    return c;
  }

  /** Every device's state, read from its flash. */
  snapshot(): Promise<FleetDeviceSnapshot[]> {
    return Promise.all(
      this.devices.map(async (r): Promise<FleetDeviceSnapshot> => {
        let flash: FleetDeviceSnapshot['flash'];
        try {
          const st = await r.d.agent.status();
          flash = { bank: st.bank, sequence: st.sequence.toString(), trial: st.trial, updating: st.updating };
        } catch {
          flash = undefined;
        }
        const chain = r.d.core.chain;
        return {
          index: r.index,
          name: r.name,
          serverId: r.serverId,
          state: r.reported?.state ?? r.state,
          powerCuts: 0,
          reported: r.reported,
          flash,
          attestations: r.attestations,
          lastAttestation: r.lastAttestation,
          rotIndex: chain === null ? undefined : chain.records.length - 1,
          modules: r.manager?.status().map((m) => ({
            name: m.name,
            version: m.version,
            archives: m.archives.map((a) => a.version),
          })),
          moduleEvents: [...r.moduleEvents],
        };
      }),
    );
  }

  nudgeAll(): void {
    for (const r of this.devices) void r.tracker.cycle().catch(() => undefined);
  }

  #managed(indexes?: readonly number[]): (Running & { manager: CapabilityManager })[] {
    return this.devices.filter(
      (r): r is Running & { manager: CapabilityManager } =>
        r.manager !== undefined && (indexes === undefined || indexes.includes(r.index)),
    );
  }

  /**
   * Each device (all, or those of `indexes`) asks the capability server for `name` now (as a push of the rollout
   * would make it): query, fetch, install, signed report (the tracker's capability client).
   */
  async capability(
    name: string,
    indexes?: readonly number[],
  ): Promise<({ index: number } & Awaited<ReturnType<StatusTracker['capability']>>)[]> {
    return Promise.all(
      this.#managed(indexes).map(async (r) => ({ index: r.index, ...(await r.tracker.capability(name)) })),
    );
  }

  /** A device applies the newest revocation list and capability manifest now, and delivers its module reports. */
  async syncCapabilities(index: number): Promise<{ revoked: string[]; unauthorized: string[] }> {
    const r = this.#managed([index])[0];
    if (r === undefined) throw new Error(`device ${index} runs no capability manager`);
    const out = await r.tracker.syncCapabilities();
    await r.tracker.flushCapabilityReports();
    return out;
  }

  /** Starts continuous calls to `name` on every device with a manager; resolves once each answered a few. */
  async startLoad(name: string): Promise<void> {
    if (this.#load !== undefined) throw new Error('a call load is running');
    this.#load = callLoad(this.#managed(), name);
    await this.#load.ready;
  }

  async stopLoad(): Promise<LoadResult[]> {
    const l = this.#load;
    this.#load = undefined;
    return l === undefined ? [] : l.stop();
  }

  /** Stops every tracker and call load, then every capability manager, then closes every enclave. */
  async stop(): Promise<void> {
    await this.stopLoad().catch(() => undefined);
    for (const r of this.devices) await r.tracker.stop().catch(() => undefined);
    for (const r of this.devices) await r.manager?.close().catch(() => undefined);
    await this.#pool?.close().catch(() => undefined);
    for (const r of this.devices) await r.d.close().catch(() => undefined);
  }
}

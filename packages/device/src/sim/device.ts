/**
 * Simulation helpers — devices: a provisioned agent over SimulatedFs (in-memory storage with deterministic power
 * cuts), payloads served from memory, and the power-cut arming that counts across the agent's own reboots.
 */
import { DeviceAgent, type AgentConfig } from '../agent/agent.ts';
import { memorySource, type ByteSource } from '../fetch/source.ts';
import { SimulatedFs } from '../storage/sim.ts';
import { identity, image, isHealthy, keys, release, URI } from './release.ts';

/**
 * Arms a power cut `n` mutating operations from now, counting across the clean reboots the agent performs
 * itself (SimulatedFs.reboot() resets its counter): the sweep reaches the trial boot and the confirm too.
 */
export class CutArm {
  readonly fs: SimulatedFs;
  #remaining: number | undefined;
  #base = 0;

  constructor(fs: SimulatedFs) {
    this.fs = fs;
  }

  arm(n: number): void {
    this.#base = this.fs.ops;
    this.#remaining = n;
    this.fs.cutPowerAt(this.#base + n);
  }

  /** A clean reboot initiated by the agent. */
  reboot(): void {
    const used = this.fs.ops - this.#base;
    this.fs.reboot();
    this.#base = 0;
    if (this.#remaining !== undefined) {
      this.#remaining -= used;
      if (this.#remaining >= 0) this.fs.cutPowerAt(this.#remaining);
    }
  }

  disarm(): void {
    this.#remaining = undefined;
  }
}

export interface SimDevice {
  readonly arm: CutArm;
  readonly fs: SimulatedFs;
  readonly agent: DeviceAgent;
  readonly resources: Map<string, Uint8Array>;
}

/** The simulated health check: the booted image starts with "OK". */
export function healthCheckOf(get: () => DeviceAgent): AgentConfig['healthCheck'] {
  return async (b) => {
    const img = b.record.images[0];
    if (img === undefined) return false;
    const bytes = await get().flash.readAll(b.bank, img.component, img.size, img.chunkSize);
    return isHealthy(bytes);
  };
}

export function newAgent(
  fs: SimulatedFs,
  resources: Map<string, Uint8Array>,
  extra: Partial<AgentConfig> & { source?: ByteSource } = {},
  arm?: CutArm,
): DeviceAgent {
  const agent: DeviceAgent = new DeviceAgent({
    fs,
    chunkSize: 1024,
    checkpointEvery: 2,
    fetch: { source: extra.source ?? memorySource(resources), retries: 2, backoffMs: 1, deadlineMs: 10_000 },
    keys: { agreements: [keys().agreement] },
    onReboot: () => {
      if (arm === undefined) fs.reboot();
      else arm.reboot();
    },
    healthCheck: healthCheckOf(() => agent),
    ...extra,
  });
  return agent;
}

/** A provisioned, powered-on device running firmware v1 (3000 bytes) with a recovery image. */
export async function provisioned(
  extra: Partial<AgentConfig> & { source?: ByteSource } = {},
): Promise<SimDevice> {
  const fs = new SimulatedFs();
  const arm = new CutArm(fs);
  const resources = new Map<string, Uint8Array>();
  const agent = newAgent(fs, resources, extra, arm);
  const r1 = await release({ seq: 1, image: image(1, 3000), uri: URI('v1') });
  const r0 = await release({ seq: 1, image: image(0, 1500), uri: URI('recovery') });
  resources.set(URI('v1'), r1.payload);
  resources.set(URI('recovery'), r0.payload);
  await agent.provision({
    identity: identity(1024 * 1024),
    anchors: keys().anchors,
    firmware: r1.envelope,
    recovery: r0.envelope,
  });
  fs.reboot();
  await agent.powerOn();
  return { arm, fs, agent, resources };
}

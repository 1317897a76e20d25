/**
 * The boot stage with capability modules (seed 000 §1: "the boot stage verifies the OS image and every active
 * module before running them"; issue 8): the agent's boot verifies and selects the OS image first (boot/boot.ts:
 * signature, digest, anti-rollback of the firmware bank), and only then is the capability manager opened, which
 * verifies every active module again from storage (signature under the capability manifest in force, authorization,
 * revocation, decryption with the device key, image digest) and every archive (signature, revocation, seal, digest)
 * before anything runs. A tampered or revoked module is refused: its capability falls back to a verified archive or
 * stays unloaded, and the device runs on.
 */
import type { DeviceAgent } from '../agent/agent.ts';
import type { BootResult } from '../boot/boot.ts';
import { CapabilityManager, type CapabilityManagerOptions } from './manager.ts';

export interface DeviceBoot {
  readonly booted: BootResult;
  readonly manager: CapabilityManager;
}

/** Boots the OS image (unless the agent is already up), then opens the capability manager. */
export async function bootWithCapabilities(
  agent: DeviceAgent,
  options: CapabilityManagerOptions,
): Promise<DeviceBoot> {
  const booted = agent.booted ?? (await agent.powerOn());
  const manager = await CapabilityManager.open(options);
  return { booted, manager };
}

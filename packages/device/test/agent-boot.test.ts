/**
 * The boot stage against flash tampered with while the device is off (RFC 9019 §4.1: the bootloader verifies the
 * image it is about to invoke, every boot, and never invokes an unverified one).
 */
import { describe, expect, it } from 'vitest';
import type { DeviceAgent } from '../src/agent/agent.ts';
import type { BankId } from '../src/flash/flash.ts';
import type { SimulatedFs } from '../src/storage/sim.ts';
import { FW, image, newAgent, provisioned, release, URI } from './agent-fixture.ts';

/** Flips one byte of the first chunk of the firmware image in `bank`, durably (an attacker with flash access). */
async function tamper(fs: SimulatedFs, agent: DeviceAgent, bank: BankId): Promise<void> {
  const path = `${agent.flash.dir(bank, FW)}/00000000`;
  const data = await fs.read(path);
  if (data === undefined) throw new Error(`no chunk at ${path}`);
  data[100]! ^= 0x01;
  await fs.write(path, data);
  await fs.fsync(path);
}

async function rebootFresh(
  fs: SimulatedFs,
  resources: Map<string, Uint8Array>,
): Promise<{ agent: DeviceAgent; boot: Awaited<ReturnType<DeviceAgent['powerOn']>> }> {
  fs.reboot();
  const agent = newAgent(fs, resources);
  return { agent, boot: await agent.powerOn() };
}

describe('verified boot over tampered flash', () => {
  it('a tampered active bank whose fallback is older than the anti-rollback counter boots the recovery image', async () => {
    const { agent, fs, resources } = await provisioned();
    const r2 = await release({ seq: 2, image: image(2, 5000), uri: URI('v2') });
    resources.set(URI('v2'), r2.payload);
    expect(await agent.update(r2.envelope)).toMatchObject({ ok: true, bank: 'b', confirmed: true });
    await tamper(fs, agent, 'b');
    const { agent: after, boot } = await rebootFresh(fs, resources);
    expect(boot.bank).toBe('r');
    expect(boot.event).toBe('recovery');
    // b: its image no longer matches (digest); a: v1 is below the counter (2) — never booted.
    expect(boot.skipped.map((s) => s.bank)).toEqual(['b', 'a']);
    expect(boot.skipped[1]?.reason).toMatch(/anti-rollback/);
    expect((await after.outbox.pending()).at(-1)).toMatchObject({
      state: 'failed',
      reason: 'NO_BOOTABLE_IMAGE',
    });
    // The counter is not lowered by booting recovery.
    expect([...(await after.nv.counters()).values()]).toContain(2n);
  });

  it('a tampered trial bank is not booted: the device reverts to the previous bank', async () => {
    const { fs, resources } = await provisioned();
    const r2 = await release({ seq: 2, image: image(2, 5000), uri: URI('v2') });
    resources.set(URI('v2'), r2.payload);
    // Install, then stop right at the reboot into the trial: the trial bank is committed, not yet booted.
    const installOnly = newAgent(fs, resources, {
      onReboot: () => {
        throw Object.assign(new Error('stop at reboot'), { stop: true });
      },
    });
    await installOnly.powerOn();
    await expect(installOnly.update(r2.envelope)).rejects.toMatchObject({ stop: true });
    expect((await installOnly.nv.boot())?.trial?.bank).toBe('b');
    await tamper(fs, installOnly, 'b');
    const { agent: b } = await rebootFresh(fs, resources);
    expect(await b.status()).toMatchObject({ bank: 'a', sequence: 1n, trial: false });
    expect((await b.outbox.pending()).map((t) => t.state)).toContain('rolled-back');
    expect([...(await b.nv.counters()).values()]).not.toContain(2n);
  });

  it('when no bank and no recovery image verifies, nothing is invoked (NO_BOOTABLE_IMAGE)', async () => {
    const { agent, fs, resources } = await provisioned();
    await tamper(fs, agent, 'a');
    await tamper(fs, agent, 'r');
    fs.reboot();
    const fresh = newAgent(fs, resources);
    await expect(fresh.powerOn()).rejects.toMatchObject({ code: 'NO_BOOTABLE_IMAGE' });
    expect(fresh.booted).toBeUndefined();
  });

  it('a tampered active bank with an intact recovery image boots recovery, and a later update installs', async () => {
    const { agent, fs, resources } = await provisioned();
    await tamper(fs, agent, 'a');
    const { agent: after, boot } = await rebootFresh(fs, resources);
    expect(boot).toMatchObject({ bank: 'r', event: 'recovery' });
    const r2 = await release({ seq: 2, image: image(2, 5000), uri: URI('v2') });
    resources.set(URI('v2'), r2.payload);
    // From recovery the update goes to the active (damaged) bank's slot.
    expect(await after.update(r2.envelope)).toMatchObject({ ok: true, confirmed: true });
    expect(await after.status()).toMatchObject({ sequence: 2n, trial: false });
  });
});

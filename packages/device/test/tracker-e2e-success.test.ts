/**
 * The success path end to end against a real fleet server (packages/server in process, PGlite, mutual-TLS device
 * listener): the device is registered with its real key-agreement key; the author uploads and the operator approves
 * (the server encrypts the payload once and wraps the content key per device, draft-ietf-suit-firmware-encryption
 * §4), rolls out; the device checks in, fetches its operator-signed envelope (a dependent of the author's envelope,
 * draft-ietf-suit-trust-domains §5), downloads the ciphertext over the Range endpoint, decrypts it with its own
 * key, installs, reboots, confirms, and reports every transition. The rollout counts exactly one success.
 *
 * The device requires both parties (RFC 9019 §4): the operator's signature on the dependent and the author's on
 * the dependency (TD §5/§6) — the chain is verified again on every boot from what the bank stores.
 * A second device, registered with another key, cannot use the first's envelope (RFC 9019 §3 confidentiality).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateAgreementKey, softwareKeyAgreement } from '@rotor/cose';
import { FIRMWARE_KEY } from '../src/boot/boot.ts';
import { componentKey } from '../src/flash/flash.ts';
import type { TrackerEvent } from '../src/tracker/tracker.ts';
import {
  deviceDir,
  registerDevice,
  rollout,
  rolloutCounts,
  startFleet,
  trackerFor,
  type Fleet,
} from './tracker-fixture.ts';

describe('status tracker against the fleet server: success', () => {
  let fleet: Fleet;
  beforeAll(async () => {
    fleet = await startFleet();
  });
  afterAll(async () => {
    await fleet.close();
  });

  it('installs, reboots, confirms and reports every transition; the rollout counts one success', async () => {
    const dev = await registerDevice(fleet, 'tracker-success');
    // Default identity: required roles author + operator; anchors: the author's key and the fleet operator's.
    const d = await deviceDir(
      { reportSigner: dev.reportSigner },
      { anchors: [{ ...fleet.operatorAnchor, name: 'fleet-operator' }] },
    );
    const events: TrackerEvent[] = [];
    const t = trackerFor(fleet, d.agent, dev, { events });
    const other = generateAgreementKey('P-256');
    const dev2 = await registerDevice(fleet, 'tracker-other', { agreementKey: other.publicKey });
    const d2 = await deviceDir(
      { reportSigner: dev2.reportSigner, keys: { agreements: [softwareKeyAgreement(other.privateKey)] } },
      { anchors: [{ ...fleet.operatorAnchor, name: 'fleet-operator' }] },
    );
    const t2 = trackerFor(fleet, d2.agent, dev2);
    try {
      await d.agent.powerOn();
      const ro = await rollout(fleet, dev.id, 2);
      const out = await t.cycle();
      expect(out.error).toBeUndefined();
      expect(out.checkin).toMatchObject({ action: 'update', rolloutId: ro.rolloutId });
      expect(out.update).toMatchObject({ ok: true, bank: 'b', sequence: 2n, confirmed: true });
      expect(await d.agent.status()).toMatchObject({
        bank: 'b',
        sequence: 2n,
        trial: false,
        updating: false,
      });
      expect((await d.agent.status()).counters.get(componentKey(FIRMWARE_KEY))).toBe(2n);
      // The payload came over the network (the server's Range endpoint), not from memory.
      expect(d.agent.stats.attempts).toBeGreaterThan(0);

      // Every transition was delivered, signed, in order; the rollout counts exactly one success.
      expect(out.pending).toBe(0);
      const delivered = events.filter((e) => e.kind === 'delivered').map((e) => e.record.state);
      expect(delivered).toEqual([
        'downloading',
        'downloaded',
        'installing',
        'installed',
        'rebooting',
        'confirmed',
      ]);
      expect(await rolloutCounts(fleet, ro.rolloutId)).toMatchObject({ total: 1, succeeded: 1, failed: 0 });
      const hist = (await fleet.operator.get(`/v1/devices/${dev.id}/events`)).json() as {
        items: { kind: string; details: Record<string, unknown> }[];
      };
      expect(hist.items.filter((e) => e.kind === 'report').map((e) => e.details.transition)).toEqual(
        delivered,
      );

      // Boot-time verification: a restarted device verifies the stored chain (dependent + dependency) again.
      const agent = d.restart();
      const booted = await agent.powerOn();
      expect(booted).toMatchObject({ bank: 'b', trial: false, event: 'none', skipped: [] });

      // Another device (another key-agreement key) cannot use the first device's envelope: the content key is
      // wrapped for the first device only.
      const env1 = (await agent.nv.bank('b'))!.envelope;
      await d2.agent.powerOn();
      const r2 = await d2.agent.update(env1);
      expect(r2).toMatchObject({ ok: false, code: 'PAYLOAD_DECRYPT_FAILED' });
      expect(await d2.agent.status()).toMatchObject({
        bank: 'a',
        sequence: 1n,
        trial: false,
        updating: false,
      });
    } finally {
      await t.stop();
      await t2.stop();
      d.remove();
      d2.remove();
    }
  });
});

/**
 * Push: an MQTT nudge on rotor/v1/devices/<id>/notify triggers an immediate check-in (RFC 9019 §3), a malformed one
 * is ignored, and an unreachable broker does not stop polling. Runs against this machine's Mosquitto
 * (127.0.0.1:1883, anonymous; a unique device id per run keeps topics apart). The server's embedded broker (mqtts,
 * client-certificate authentication) is exercised once the server side lands.
 */
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:net';
import mqtt from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encode } from '@rotor/cose';
import { StatusTracker, type TrackerEvent } from '../src/tracker/tracker.ts';
import { selfSignedCert, type TestCert } from '../../server/test/helpers.ts';
import { deviceDir, until, type DeviceDir } from './tracker-fixture.ts';
import { Stub } from './tracker-stub.ts';

const BROKER = process.env.ROTOR_TEST_MQTT_URL ?? 'mqtt://127.0.0.1:1883';

async function closedPort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const a = s.address();
  await new Promise<void>((r) =>
    s.close(() => {
      r();
    }),
  );
  return a !== null && typeof a === 'object' ? a.port : 1;
}

describe('push notifications over MQTT', () => {
  let stub: Stub;
  let cert: TestCert;
  let d: DeviceDir;
  beforeAll(async () => {
    stub = await Stub.start();
    cert = await selfSignedCert('push-device');
    d = await deviceDir();
    await d.agent.powerOn();
  });
  afterAll(async () => {
    await stub.close();
    d.remove();
  });

  const tracker = (mqttUrl: string, events: TrackerEvent[], deviceId?: string): StatusTracker =>
    new StatusTracker({
      agent: d.agent,
      server: { url: stub.url, identity: { cert: cert.certPem, key: cert.keyPem }, ca: stub.cert.certPem },
      mqtt: { url: mqttUrl, minBackoffMs: 50, maxBackoffMs: 200 },
      ...(deviceId === undefined ? {} : { deviceId }),
      interval: { defaultMs: 3_600_000 },
      pushGapMs: 0,
      fallbackSource: 'none',
      onEvent: (e) => events.push(e),
    });

  it('a nudge triggers an immediate check-in; a malformed one is ignored', async () => {
    const deviceId = `t-${randomBytes(8).toString('hex')}`;
    const topic = `rotor/v1/devices/${deviceId}/notify`;
    const events: TrackerEvent[] = [];
    const t = tracker(BROKER, events, deviceId);
    const pub = await mqtt.connectAsync(BROKER, {
      clientId: `rotor-test-pub-${deviceId}`,
      reconnectPeriod: 0,
    });
    try {
      await t.start();
      // Connected and subscribed: the connection itself asks for a check-in (nudges sent while offline are lost).
      await until(() => events.some((e) => e.kind === 'push' && e.why === 'connected'), 'the subscription');
      await until(() => t.pushCheckins >= 1, 'the check-in after connecting');
      const before = t.pushCheckins;
      await pub.publishAsync(topic, Buffer.from(encode(new Map([[1, 'install']]))), { qos: 1 });
      await until(() => (t.push?.malformed ?? 0) >= 1, 'the malformed push');
      expect(t.pushCheckins).toBe(before);
      await pub.publishAsync(topic, Buffer.from(encode(new Map([[1, 'checkin']]))), { qos: 1 });
      await until(() => t.pushCheckins > before, 'the pushed check-in');
      expect(t.push?.received).toBeGreaterThanOrEqual(1);
      expect(events.filter((e) => e.kind === 'checkin' && e.why === 'push').length).toBeGreaterThan(0);
    } finally {
      await pub.endAsync();
      await t.stop();
    }
  });

  it('keeps polling when the broker is unreachable (device id from /d/v1/self)', async () => {
    const events: TrackerEvent[] = [];
    const t = tracker(`mqtt://127.0.0.1:${await closedPort()}`, events);
    try {
      await t.start();
      await until(() => events.some((e) => e.kind === 'error' && e.where === 'push'), 'a broker error');
      expect(t.push?.topic).toBe('rotor/v1/devices/stub-device/notify');
      expect(t.push?.connected).toBe(false);
      const out = await t.cycle();
      expect(out.error).toBeUndefined();
      expect(out.checkin).toMatchObject({ action: 'none' });
    } finally {
      await t.stop();
    }
  });
});

/**
 * MQTT push (docs/protocol.md): through the embedded broker (MQTT over TLS, devices authenticated by their client
 * certificate; a device cannot subscribe to another device's topic nor publish) and through this machine's
 * Mosquitto (MQTT_URL, unique topic prefix per run).
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import mqtt, { type MqttClient } from 'mqtt';
import { decode, generateAgreementKey, type CborMap } from '@rotor/cose';
import { notifyTopic, type Principal } from '../src/index.ts';
import { selfSignedCert, type TestCert } from './helpers.ts';
import { authorKeyPair, sha256hex, signedRelease, startFixture, type Fixture } from './fixtures.ts';

const ADMIN: Principal = { kind: 'operator', tokenId: 't-admin', name: 'admin', role: 'admin' };
const OPERATOR: Principal = { kind: 'operator', tokenId: 't-op', name: 'op', role: 'operator' };
const AUTHOR: Principal = { kind: 'operator', tokenId: 't-author', name: 'author', role: 'author' };

/** Resolves with the next message on `client`, or rejects after `ms` (a liveness bound, not a timing assertion). */
function nextMessage(client: MqttClient, ms = 20_000): Promise<{ topic: string; payload: Buffer }> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      reject(new Error('no message'));
    }, ms);
    client.once('message', (topic, payload) => {
      clearTimeout(timer);
      resolve({ topic, payload });
    });
  });
}

async function approvedRelease(f: Fixture, tag: string): Promise<string> {
  const s = f.server.services;
  const k = authorKeyPair();
  await s.authorKeys.create(ADMIN, { name: `push-${tag}`, alg: 'ES256', publicKeyPem: k.publicKeyPem });
  const image = randomBytes(512);
  await s.payloads.upload(AUTHOR, sha256hex(image), image);
  const rel = await s.releases.upload(AUTHOR, await signedRelease(k.privateKey, image, 1));
  await s.rollouts.approve(OPERATOR, rel.id);
  return rel.id;
}

/** The entries of the CBOR map in a notification payload. */
const entriesOf = (payload: Buffer): unknown[] => [...(decode(new Uint8Array(payload)) as CborMap).entries];

const kaPem = (): string =>
  generateAgreementKey('X25519').publicKey.export({ type: 'spki', format: 'pem' }).toString();

describe('push through the embedded broker (MQTT over TLS)', () => {
  let f: Fixture;
  let certA: TestCert;
  let certB: TestCert;
  let idA: string;
  let idB: string;
  const clients: MqttClient[] = [];
  const connect = (cert: TestCert | undefined, clientId: string): Promise<MqttClient> =>
    mqtt
      .connectAsync(f.server.mqttUrl!, {
        clientId,
        ca: f.serverCert.certPem,
        ...(cert === undefined ? {} : { cert: cert.certPem, key: cert.keyPem }),
        reconnectPeriod: 0,
        connectTimeout: 10_000,
      })
      .then((c) => {
        clients.push(c);
        return c;
      });

  beforeAll(async () => {
    f = await startFixture('pglite');
    certA = await selfSignedCert('push-a');
    certB = await selfSignedCert('push-b');
    const s = f.server.services;
    idA = (
      await s.devices.create(ADMIN, {
        name: 'push-a',
        certificatePem: certA.certPem,
        group: 'push',
        keyAgreementKeyPem: kaPem(),
      })
    ).id;
    idB = (
      await s.devices.create(ADMIN, {
        name: 'push-b',
        certificatePem: certB.certPem,
        group: 'push-b',
        keyAgreementKeyPem: kaPem(),
      })
    ).id;
  });
  afterAll(async () => {
    for (const c of clients) await c.endAsync(true).catch(() => undefined);
    await f.close();
  });

  it('refuses unknown certificates, missing certificates and a client id that is not the device id', async () => {
    expect(f.server.mqttUrl).toMatch(/^mqtts:\/\/127\.0\.0\.1:\d+$/);
    const stranger = await selfSignedCert('push-stranger');
    await expect(connect(stranger, 'stranger')).rejects.toThrow();
    await expect(connect(undefined, idA)).rejects.toThrow();
    await expect(connect(certA, idB)).rejects.toThrow(); // A posing as B's session
  });

  it('a device subscribes to its own topic only, cannot publish, and gets {1: "checkin"} when it has work', async () => {
    const prefix = f.server.config.mqttTopicPrefix;
    const a = await connect(certA, idA);
    const granted = await a.subscribeAsync(notifyTopic(prefix, idA), { qos: 1 });
    expect(granted[0]!.qos).toBe(1);
    const b = await connect(certB, idB);
    // B asks for A's topic and for a wildcard: both refused (SUBACK 0x80)
    for (const topic of [notifyTopic(prefix, idA), `${prefix}/devices/+/notify`]) {
      const granted = await b.subscribeAsync(topic, { qos: 1 }).then(
        (g) => g.map((x) => x.qos),
        (e: unknown) => (e as { packet?: { granted?: number[] } }).packet?.granted,
      );
      expect(granted).toEqual([128]);
    }
    // A device's publish is refused: the broker drops the connection and A gets nothing from B
    const msg = nextMessage(a); // the first message A gets must be the server's, not B's
    const closed = new Promise<void>((resolve) =>
      b.once('close', () => {
        resolve();
      }),
    );
    b.publish(notifyTopic(prefix, idA), Buffer.from('spoof'), { qos: 0 });
    await closed;

    const releaseId = await approvedRelease(f, 'embedded');
    await f.server.services.rollouts.create(OPERATOR, {
      name: 'push',
      releaseId,
      target: { group: 'push' },
      phases: [{ percent: 100, successThreshold: 1, failureThreshold: 1, timeoutMs: 60_000 }],
    });
    const m = await msg;
    expect(m.topic).toBe(notifyTopic(prefix, idA));
    expect(entriesOf(m.payload)).toEqual([[1, 'checkin']]);
  });
});

describe('push through Mosquitto (MQTT_URL)', () => {
  let f: Fixture;
  let watcher: MqttClient;
  const prefix = `rotor-test-${randomBytes(6).toString('hex')}/v1`;
  beforeAll(async () => {
    f = await startFixture('pglite', {
      env: {
        MQTT_URL: process.env.ROTOR_TEST_MQTT_URL ?? 'mqtt://127.0.0.1:1883',
        ROTOR_MQTT_TOPIC_PREFIX: prefix,
      },
    });
    watcher = await mqtt.connectAsync(process.env.ROTOR_TEST_MQTT_URL ?? 'mqtt://127.0.0.1:1883', {
      reconnectPeriod: 0,
    });
  });
  afterAll(async () => {
    await watcher.endAsync(true);
    await f.close();
  });

  it('publishes a nudge for every device with work', async () => {
    expect(f.server.mqttUrl).toBeUndefined();
    await watcher.subscribeAsync(`${prefix}/devices/+/notify`, { qos: 1 });
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) {
      ids.push(
        (
          await f.server.services.devices.create(ADMIN, {
            name: `mosq-${i}`,
            certSha256: randomBytes(32).toString('hex'),
            group: 'mosq',
            keyAgreementKeyPem: kaPem(),
          })
        ).id,
      );
    }
    const got = new Promise<Map<string, Buffer>>((resolve, reject) => {
      const seen = new Map<string, Buffer>();
      const timer = setTimeout(() => {
        reject(new Error(`only ${seen.size} notifications`));
      }, 30_000);
      watcher.on('message', (topic, payload) => {
        seen.set(topic, payload);
        if (seen.size === ids.length) {
          clearTimeout(timer);
          resolve(seen);
        }
      });
    });
    const releaseId = await approvedRelease(f, 'mosquitto');
    await f.server.services.rollouts.create(OPERATOR, {
      name: 'mosq',
      releaseId,
      target: { group: 'mosq' },
      phases: [{ percent: 100, successThreshold: 1, failureThreshold: 1, timeoutMs: 60_000 }],
    });
    const seen = await got;
    expect([...seen.keys()].sort()).toEqual(ids.map((id) => notifyTopic(prefix, id)).sort());
    for (const p of seen.values()) expect(entriesOf(p)).toEqual([[1, 'checkin']]);
  });
});

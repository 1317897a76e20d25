/**
 * The embedded MQTT broker with RFC 3820 proxy client certificates (push.ts on device-tls.ts), on PGlite: a factory
 * device whose identity key never leaves its enclave connects with a proxy credential ([proxy, device cert]) and
 * receives its push nudge; the device listener's rules hold per connection before anything is subscribed — a proxy
 * of an unregistered device, an expired proxy, one not signed by the device key and one whose device certificate
 * is not of the device CA are refused (CONNACK 5); a proxy device still subscribes to its own topic only.
 */
import 'reflect-metadata';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decode, type CborMap } from '@rotor/cose';
import {
  loadConfig,
  notifyTopic,
  openDatabase,
  startEmbeddedBroker,
  startServer,
  type RotorServer,
} from '../src/index.ts';
import { selfSignedCert, type TestCert } from './helpers.ts';
import { createTestPki, forgeProxy as proxyCredential, type TestPki } from './proxy-pki.ts';

const ADMIN = `admin_${randomBytes(16).toString('hex')}`;
let dir: string;
let pki: TestPki;
let server: RotorServer;
let serverCert: TestCert;
const clients: MqttClient[] = [];

async function register(d: { pem: string; deviceId: string }): Promise<string> {
  const res = await fetch(new URL('/v1/devices', server.operatorUrl), {
    method: 'POST',
    headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' },
    body: JSON.stringify({ name: d.deviceId, certificatePem: d.pem }),
  });
  expect(res.status).toBe(201);
  return ((await res.json()) as { id: string }).id;
}

async function connect(cred: { cert: string; key: string }, clientId: string): Promise<MqttClient> {
  const c = await mqtt.connectAsync(server.mqttUrl!, {
    clientId,
    ca: serverCert.certPem,
    cert: cred.cert,
    key: cred.key,
    protocolVersion: 4,
    reconnectPeriod: 0,
    connectTimeout: 10_000,
  });
  clients.push(c);
  return c;
}

/** The CONNACK return code of a refused connection (MQTT 3.1.1 §3.2.2.3: 5 = not authorized). */
async function refusedWith(cred: { cert: string; key: string }, clientId: string): Promise<unknown> {
  const c = mqtt.connect(server.mqttUrl!, {
    clientId,
    ca: serverCert.certPem,
    cert: cred.cert,
    key: cred.key,
    protocolVersion: 4,
    reconnectPeriod: 0,
    connectTimeout: 10_000,
  });
  clients.push(c);
  return new Promise((resolve) => {
    c.once('connect', () => {
      resolve('connected');
    });
    c.once('error', (e) => {
      resolve((e as { code?: unknown }).code);
    });
    c.once('close', () => {
      resolve('closed');
    });
  });
}

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

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'rotor-push-proxy-'));
  mkdirSync(join(dir, 'data'));
  pki = await createTestPki('Push proxy');
  serverCert = await selfSignedCert('localhost', { server: true });
  writeFileSync(join(dir, 'server.crt'), serverCert.certPem);
  writeFileSync(join(dir, 'server.key'), serverCert.keyPem);
  writeFileSync(join(dir, 'device-ca.pem'), pki.caPem);
  const config = loadConfig({
    argv: [
      '--port',
      '0',
      '--device-port',
      '0',
      '--mqtt-port',
      '0',
      '--mqtt-host',
      '127.0.0.1',
      '--log-level',
      'silent',
    ],
    env: {
      ROTOR_ADMIN_TOKEN: ADMIN,
      ROTOR_DATA_DIR: join(dir, 'data'),
      ROTOR_TLS_CERT_FILE: join(dir, 'server.crt'),
      ROTOR_TLS_KEY_FILE: join(dir, 'server.key'),
      ROTOR_DEVICE_CA_FILE: join(dir, 'device-ca.pem'),
    },
  });
  server = await startServer(config, { db: await openDatabase({}) });
});

afterAll(async () => {
  await Promise.all(clients.map((c) => c.endAsync(true).catch(() => undefined)));
  await server.close();
  await server.db.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('embedded MQTT broker: RFC 3820 proxy client certificates', () => {
  it('a registered device with a proxy credential subscribes to its own topic and receives the nudge', async () => {
    const d = await pki.softwareDevice();
    const id = await register(d);
    const c = await connect(await proxyCredential(d), `rotor-${id}`);
    const granted = await c.subscribeAsync(notifyTopic('rotor/v1', id), { qos: 1 });
    expect(granted.map((g) => g.qos)).toEqual([1]);
    const msg = nextMessage(c);
    await server.notifier!.notify([id]);
    const m = await msg;
    expect(m.topic).toBe(notifyTopic('rotor/v1', id));
    expect([...(decode(new Uint8Array(m.payload)) as CborMap).entries]).toEqual([[1, 'checkin']]);
  });

  it("a proxy device cannot subscribe to another device's topic nor take its client identifier", async () => {
    const a = await pki.softwareDevice();
    const b = await pki.softwareDevice();
    const idA = await register(a);
    const idB = await register(b);
    const c = await connect(await proxyCredential(a), idA);
    const granted = await c.subscribeAsync(notifyTopic('rotor/v1', idB), { qos: 1 }).then(
      (g) => g.map((x) => x.qos),
      (e: unknown) => (e as { packet?: { granted?: number[] } }).packet?.granted,
    );
    expect(granted).toEqual([128]);
    expect(await refusedWith(await proxyCredential(a), `rotor-${idB}`)).toBe(5);
  });

  it('refuses before any subscription: unregistered, expired, not signed by the device key, foreign CA', async () => {
    const stray = await pki.softwareDevice();
    expect(await refusedWith(await proxyCredential(stray), 'rotor-stray')).toBe(5);

    const d = await pki.softwareDevice();
    const id = await register(d);
    const expired = await proxyCredential(d, {
      notBefore: new Date(Date.now() - 3 * 3600_000),
      notAfter: new Date(Date.now() - 3600_000),
    });
    expect(await refusedWith(expired, `rotor-${id}`)).toBe(5);
    const other = generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey;
    // Refused with CONNACK 5, or the connection dropped before it: never connected.
    expect([5, 'closed']).toContain(
      await refusedWith(await proxyCredential(d, { signingKey: other }), `rotor-${id}`),
    );

    // A device certificate of another CA, registered: the proxy's issuer must chain to the device CA.
    const foreign = await (await createTestPki('Foreign')).softwareDevice();
    const fid = await register(foreign);
    expect([5, 'closed']).toContain(await refusedWith(await proxyCredential(foreign), `rotor-${fid}`));

    // The good credential of the same device still connects.
    const c = await connect(await proxyCredential(d), `rotor-${id}`);
    expect(c.connected).toBe(true);
  });
});

describe('embedded broker: a connection does not outlive its proxy', () => {
  it('delivers while the proxy is valid; once it has expired, the nudge is withheld and the client closed', async () => {
    let clock = Date.now();
    const d = await pki.softwareDevice();
    const broker = await startEmbeddedBroker({
      host: '127.0.0.1',
      port: 0,
      prefix: 'rotor/v1',
      tls: { cert: serverCert.certPem, key: serverCert.keyPem, ca: pki.caPem },
      authenticateDevice: () => Promise.resolve({ kind: 'device', deviceId: 'dev-1', name: 'dev-1' }),
      now: () => clock,
    });
    const c = await mqtt.connectAsync(broker.url!, {
      clientId: 'rotor-dev-1',
      ca: serverCert.certPem,
      ...(await proxyCredential(d, {
        notBefore: new Date(clock - 60_000),
        notAfter: new Date(clock + 3600_000),
      })),
      protocolVersion: 4,
      reconnectPeriod: 0,
      connectTimeout: 10_000,
    });
    try {
      await c.subscribeAsync(notifyTopic('rotor/v1', 'dev-1'), { qos: 1 });
      const first = nextMessage(c);
      await broker.notify(['dev-1']);
      expect((await first).topic).toBe(notifyTopic('rotor/v1', 'dev-1'));

      const received: string[] = [];
      c.on('message', (topic) => received.push(topic));
      const closed = new Promise<void>((resolve) =>
        c.once('close', () => {
          resolve();
        }),
      );
      clock += 2 * 3600_000;
      await broker.notify(['dev-1']);
      await closed;
      expect(received).toEqual([]);
    } finally {
      await c.endAsync(true).catch(() => undefined);
      await broker.close();
    }
  });
});

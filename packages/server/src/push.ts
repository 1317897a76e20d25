/**
 * MQTT push (RFC 9019 §3: the status tracker may notify devices that an update is available; the device then
 * polls over its authenticated channel). The protocol is in docs/protocol.md:
 *   topic   `<prefix>/devices/<deviceId>/notify` (prefix default `rotor/v1`)
 *   payload CBOR map {1: "checkin"} — a nudge only, no secrets, no state: the device checks in over mutual TLS.
 *
 * Embedded broker (default, aedes) on an MQTT-over-TLS listener that authenticates devices by their client
 * certificate against the same fingerprint registry as the device API, with the device listener's rules for RFC 3820
 * proxy client certificates (device-tls.ts). A device may subscribe to its own notify
 * topic only (anything else is granted 0x80, MQTT 3.1.1 §3.9.3 / 5.0 §3.9.3), its client identifier must be
 * `<deviceId>` or `rotor-<deviceId>` (no session takeover of another device), and no client may publish: only the server publishes,
 * in-process. External broker (MQTT_URL): the server is a client that publishes with QoS 1; the broker's own ACLs
 * must restrict devices to their topics.
 */
import { createServer as createTlsServer, type Server as TlsServer, type TLSSocket } from 'node:tls';
import type { AddressInfo } from 'node:net';
import { Aedes, type Client } from 'aedes';
import mqtt from 'mqtt';
import { encode } from '@rotor/cose';
import type { Principal } from './auth.ts';
import type { Db } from './db/db.ts';
import { createDeviceTls, deviceTlsServerOptions } from './device-tls.ts';

/** The notification payload: CBOR {1: "checkin"} (docs/protocol.md). */
export const NOTIFY_PAYLOAD: Uint8Array = encode(new Map([[1, 'checkin']]));

export const notifyTopic = (prefix: string, deviceId: string): string =>
  `${prefix}/devices/${deviceId}/notify`;

export interface Notifier {
  /** Publishes a nudge to each device (best effort; a device that misses it finds the work on its next poll). */
  notify(deviceIds: readonly string[]): Promise<void>;
  close(): Promise<void>;
  /** The embedded broker's listener, e.g. mqtts://127.0.0.1:8883 (undefined for an external broker). */
  readonly url: string | undefined;
}

export interface EmbeddedBrokerOptions {
  readonly host: string;
  readonly port: number;
  readonly prefix: string;
  readonly tls: { cert: string; key: string; ca?: string | undefined };
  /** Identifies a device by its client certificate (DER); throws when unknown or disabled. */
  readonly authenticateDevice: (certDer: Uint8Array) => Promise<Principal>;
  /** Clock for proxy certificate validity, ms (tests). */
  readonly now?: () => number;
}

/** Device ids are server-generated UUIDs or similar; anything with MQTT wildcards or separators is refused. */
const SAFE_ID = /^[A-Za-z0-9._:-]{1,128}$/;

export async function startEmbeddedBroker(opts: EmbeddedBrokerOptions): Promise<Notifier> {
  const devices = new WeakMap<Client, string>();
  const deviceTls = createDeviceTls({
    deviceCa: opts.tls.ca,
    ...(opts.now === undefined ? {} : { now: opts.now }),
  });
  const broker = await Aedes.createBroker({
    // MQTT 3.1.1 §3.1.4 / 5.0 §3.1.4: the server may refuse a connection (return code 5 / reason 0x87).
    authenticate: (client, _username, _password, done) => {
      const refuse = (): void => {
        done(Object.assign(new Error('not authorized'), { returnCode: 5 as const }), false);
      };
      // The same per-connection rules as the device listener (device-tls.ts, docs/protocol.md §1.1): a plain
      // certificate must have been authorized by OpenSSL against the device CA; an RFC 3820 proxy certificate is
      // checked against the issuer presented after it (RFC 3820 §4.1 path validation, lifetime, device key
      // signature) and stands for that device certificate, which the registry then looks up. Decided here, before
      // the client may subscribe (MQTT 3.1.1 §3.1.4: authentication precedes every other packet).
      let raw: Uint8Array;
      try {
        raw = deviceTls.certificate(client.conn as Partial<TLSSocket>);
      } catch {
        refuse();
        return;
      }
      opts.authenticateDevice(raw).then(
        (p) => {
          // The client identifier must name the device (`<deviceId>` or `rotor-<deviceId>`): a device cannot take
          // over another device's session (MQTT 3.1.1 §3.1.4: a new connection with the same id closes the old).
          if (p.kind !== 'device' || (client.id !== p.deviceId && client.id !== `rotor-${p.deviceId}`)) {
            refuse();
            return;
          }
          devices.set(client, p.deviceId);
          done(null, true);
        },
        () => {
          refuse();
        },
      );
    },
    // Only the device's own notify topic, exactly (no wildcards): anything else is a failed subscription (0x80).
    authorizeSubscribe: (client, sub, done) => {
      const id = devices.get(client);
      done(null, id !== undefined && sub.topic === notifyTopic(opts.prefix, id) ? sub : null);
    },
    // A proxy credential's validity is re-checked at every delivery (createDeviceTls re-checks per call, as the
    // device listener does per request, docs/protocol.md §1.1): a connection that outlived its proxy gets nothing
    // more and is closed; the device reconnects with its renewed credential.
    authorizeForward: (client, packet) => {
      try {
        deviceTls.certificate(client.conn as Partial<TLSSocket>);
        return packet;
      } catch {
        setImmediate(() => {
          client.close();
        });
        return null;
      }
    },
    // Nobody but the server publishes (client null = in-process publish).
    authorizePublish: (client, _packet, done) => {
      done(client === null ? null : new Error('devices may not publish'));
    },
  });
  const server: TlsServer = createTlsServer(
    {
      cert: opts.tls.cert,
      key: opts.tls.key,
      // rejectUnauthorized false: OpenSSL refuses proxy certificates (RFC 3820) without X509_V_FLAG_ALLOW_PROXY_CERTS,
      // which Node cannot set; every connection is decided in `authenticate` instead (createDeviceTls).
      ...deviceTlsServerOptions(opts.tls.ca),
      minVersion: 'TLSv1.2',
    },
    (socket) => {
      broker.handle(socket);
    },
  );
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const addr = server.address() as AddressInfo;
  const payload = Buffer.from(NOTIFY_PAYLOAD);
  return {
    url: `mqtts://${addr.address}:${addr.port}`,
    async notify(ids) {
      for (const id of ids) {
        if (!SAFE_ID.test(id)) continue;
        await new Promise<void>((resolve) => {
          broker.publish(
            {
              cmd: 'publish',
              topic: notifyTopic(opts.prefix, id),
              payload,
              qos: 1,
              retain: false,
              dup: false,
            },
            () => {
              resolve();
            },
          );
        });
      }
    },
    async close() {
      await new Promise<void>((resolve) => {
        server.close(() => {
          resolve();
        });
        for (const c of Object.values((broker as unknown as { clients: Record<string, Client> }).clients))
          c.close();
      });
      await new Promise<void>((resolve) => {
        broker.close(() => {
          resolve();
        });
      });
    },
  };
}

/** A publisher on an external broker (MQTT_URL), e.g. Mosquitto. */
export async function connectExternalBroker(url: string, prefix: string): Promise<Notifier> {
  const client = await mqtt.connectAsync(url, {
    clientId: `rotor-server-${process.pid}-${Math.random().toString(16).slice(2, 10)}`,
    clean: true,
    reconnectPeriod: 1000,
    connectTimeout: 10_000,
  });
  const payload = Buffer.from(NOTIFY_PAYLOAD);
  return {
    url: undefined,
    async notify(ids) {
      for (const id of ids) {
        if (!SAFE_ID.test(id)) continue;
        await client.publishAsync(notifyTopic(prefix, id), payload, { qos: 1, retain: false });
      }
    },
    async close() {
      await client.endAsync();
    },
  };
}

/** Page size when notifying the devices of a large rollout. */
const PAGE = 5000;

/**
 * Notifies the devices of a rollout that have work now: active, still pending, in a phase the rollout has
 * reached. Runs after the change committed; failures are the caller's to log (devices poll anyway).
 */
export async function notifyRollout(db: Db, notifier: Notifier, rolloutId: string): Promise<number> {
  let after = '';
  let n = 0;
  for (;;) {
    const rows = await db.query<{ device_id: string }>(
      `SELECT rd.device_id FROM rollout_devices rd JOIN rollouts r ON r.id = rd.rollout_id
       WHERE rd.rollout_id = $1 AND rd.active AND rd.state = 'pending' AND r.state = 'active'
         AND rd.phase <= r.current_phase AND rd.device_id > $2
       ORDER BY rd.device_id LIMIT $3`,
      [rolloutId, after, PAGE],
    );
    if (rows.length === 0) return n;
    await notifier.notify(rows.map((r) => r.device_id));
    n += rows.length;
    after = rows[rows.length - 1]!.device_id;
  }
}

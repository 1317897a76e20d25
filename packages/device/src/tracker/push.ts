/**
 * Push notifications over MQTT (RFC 9019 §3: the status tracker may notify the device that an update is
 * available; the device then asks — the nudge carries no instruction). Topic `rotor/v1/devices/<deviceId>/notify`,
 * payload the CBOR map {1: "checkin"} (protocol.ts). The embedded broker authenticates the device by its TLS client
 * certificate on an MQTT-over-TLS listener (mqtts://, RFC 8446 §4.4.2); an external broker may be plain mqtt://.
 *
 * Reconnects with exponential backoff and full jitter (capped); every (re)connection also asks for a check-in, since
 * nudges sent while the device was offline are lost (clean session). A broker that is unreachable only delays
 * pushes: the tracker keeps polling at its interval.
 */
import { randomInt } from 'node:crypto';
import mqtt from 'mqtt';
import type { MqttClient } from 'mqtt';
import { DeviceError } from '../errors.ts';
import type { TlsIdentity } from './http.ts';
import { notifyTopic, parsePush } from './protocol.ts';

export interface PushOptions {
  /** mqtt://host:port or mqtts://host:port. */
  readonly url: string;
  readonly deviceId: string;
  /** Client certificate for an mqtts:// broker that authenticates devices by certificate. */
  readonly identity?: TlsIdentity;
  readonly ca?: string | readonly string[];
  /** Called for every valid nudge and after every (re)connection. */
  readonly onNudge: (why: 'push' | 'connected') => void;
  /** Called with what went wrong (a malformed push, a connection error); informational. */
  readonly onError?: (e: Error) => void;
  readonly minBackoffMs?: number;
  readonly maxBackoffMs?: number;
  readonly clientId?: string;
}

export class PushListener {
  readonly topic: string;
  readonly #o: PushOptions;
  #client: MqttClient | undefined;
  #timer: NodeJS.Timeout | undefined;
  #attempt = 0;
  #stopped = false;
  /** Valid nudges received. */
  received = 0;
  /** Pushes refused as malformed. */
  malformed = 0;
  connected = false;

  constructor(o: PushOptions) {
    let url: URL;
    try {
      url = new URL(o.url);
    } catch {
      throw new DeviceError('TRACKER_PROTOCOL', `invalid MQTT URL ${JSON.stringify(o.url)}`);
    }
    if (url.protocol !== 'mqtt:' && url.protocol !== 'mqtts:')
      throw new DeviceError(
        'TRACKER_PROTOCOL',
        `the push broker URL must be mqtt:// or mqtts:// (got ${url.protocol})`,
      );
    this.topic = notifyTopic(o.deviceId);
    this.#o = o;
  }

  start(): void {
    if (this.#client !== undefined || this.#stopped) return;
    const o = this.#o;
    const tls = o.url.startsWith('mqtts:');
    const client = mqtt.connect(o.url, {
      clientId: o.clientId ?? `rotor-${o.deviceId}`,
      clean: true,
      protocolVersion: 4,
      keepalive: 60,
      connectTimeout: 10_000,
      reconnectPeriod: 0, // reconnection is ours: exponential backoff with jitter
      ...(tls && o.identity !== undefined ? { cert: o.identity.cert, key: o.identity.key } : {}),
      ...(tls && o.ca !== undefined ? { ca: typeof o.ca === 'string' ? o.ca : [...o.ca] } : {}),
      ...(tls ? { rejectUnauthorized: true } : {}),
    });
    this.#client = client;
    client.on('connect', () => {
      this.#attempt = 0;
      this.connected = true;
      client.subscribe(this.topic, { qos: 1 }, (err, granted) => {
        if (err instanceof Error) {
          o.onError?.(err);
          return;
        }
        // A broker that refuses the subscription (ACL) answers 128 (MQTT 3.1.1 §3.9.3).
        if (granted?.some((g) => g.qos === 128) === true) {
          o.onError?.(
            new DeviceError('TRACKER_REFUSED', `the broker refused the subscription to ${this.topic}`),
          );
          return;
        }
        o.onNudge('connected');
      });
    });
    client.on('message', (topic, payload) => {
      if (topic !== this.topic) return;
      try {
        parsePush(new Uint8Array(payload.buffer, payload.byteOffset, payload.length));
      } catch (e) {
        this.malformed++;
        o.onError?.(e instanceof Error ? e : new Error(String(e)));
        return;
      }
      this.received++;
      o.onNudge('push');
    });
    client.on('error', (e) => {
      o.onError?.(e);
    });
    client.on('close', () => {
      this.connected = false;
      this.#schedule();
    });
  }

  #schedule(): void {
    if (this.#stopped || this.#timer !== undefined) return;
    const min = this.#o.minBackoffMs ?? 1000;
    const max = this.#o.maxBackoffMs ?? 5 * 60_000;
    const cap = Math.min(max, min * 2 ** Math.min(this.#attempt, 20));
    this.#attempt++;
    const delay = randomInt(Math.floor(cap / 2), Math.max(Math.floor(cap / 2) + 1, cap));
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      if (!this.#stopped) this.#client?.reconnect();
    }, delay);
    this.#timer.unref();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    const c = this.#client;
    this.#client = undefined;
    if (c !== undefined) await c.endAsync(true);
  }
}

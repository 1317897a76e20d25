/**
 * The device side of the status tracker protocol (RFC 9019 §3 status tracker; the server's device API under
 * /d/v1 and its MQTT nudge). Every decoder here takes untrusted bytes, bounds them, validates every member it uses
 * and fails with a typed DeviceError (TRACKER_PROTOCOL / PUSH_MALFORMED); nothing is cast.
 *
 * Check-in (POST /d/v1/checkin → application/json):
 *   { action: "none" }
 *   { action: "update", rolloutId, releaseId, envelopeUrl: "/d/v1/…", payloadUrls: ["/d/v1/payloads/<sha256>"…] }
 *   optional on both: checkinIntervalS — the interval the server wants until the next poll (clamped by the device);
 *   trust: { anchors, revocation } — the newest trust-anchor statement and revocation-list versions the server
 *   holds (issue 7 pull: the device fetches what is newer than its own).
 * Members the device does not know are ignored (the API evolves by adding members), but a known member of the
 * wrong type or shape refuses the whole response.
 *
 * Push (MQTT, topic rotor/v1/devices/<deviceId>/notify): a CBOR map {1: "checkin"} — a nudge only.
 */
import { CborMap, decode } from '@rotor/cose';
import { DeviceError } from '../errors.ts';

/** Largest check-in response body the device reads. */
export const MAX_CHECKIN_BYTES = 16 * 1024;
/** Largest problem document the device reads. */
export const MAX_PROBLEM_BYTES = 8 * 1024;
/** Largest push payload the device decodes. */
export const MAX_PUSH_BYTES = 256;
/** Most payload URLs one assignment may name. */
export const MAX_PAYLOAD_URLS = 64;

/** The newest trust-anchor statement and revocation-list versions the server holds (0: none). */
export interface CheckinTrust {
  readonly anchors: number;
  readonly revocation: number;
}

export type CheckinResult =
  | {
      readonly action: 'none';
      readonly intervalS: number | undefined;
      readonly trust?: CheckinTrust | undefined;
    }
  | {
      readonly action: 'update';
      readonly intervalS: number | undefined;
      readonly trust?: CheckinTrust | undefined;
      readonly rolloutId: string;
      readonly releaseId: string;
      /** A path on the server's origin. */
      readonly envelopeUrl: string;
      /** Paths of the release's payloads; the sha256 each names. */
      readonly payloads: readonly { readonly path: string; readonly sha256: string }[];
    };

const ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const PATH = /^\/d\/v1\/[A-Za-z0-9._~/-]{1,512}$/;
const PAYLOAD_PATH = /^\/d\/v1\/payloads\/([0-9a-f]{64})$/;

function bad(msg: string): DeviceError {
  return new DeviceError('TRACKER_PROTOCOL', `check-in response: ${msg}`);
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function str(o: Record<string, unknown>, k: string, re: RegExp): string {
  const v = o[k];
  if (typeof v !== 'string' || !re.test(v)) throw bad(`${k} is missing or malformed`);
  return v;
}

function serverPath(v: string, what: string): string {
  if (v.includes('..') || v.includes('//')) throw bad(`${what} is not a plain server path`);
  return v;
}

/** Parses a JSON body strictly enough: UTF-8, one object, bounded. */
export function parseJsonObject(body: Uint8Array, max: number, what: string): Record<string, unknown> {
  if (body.length > max)
    throw new DeviceError('TRACKER_PROTOCOL', `${what}: ${body.length} bytes exceed ${max}`);
  let v: unknown;
  try {
    v = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(body));
  } catch (e) {
    throw new DeviceError('TRACKER_PROTOCOL', `${what}: not JSON`, { cause: e });
  }
  if (!isRecord(v)) throw new DeviceError('TRACKER_PROTOCOL', `${what}: not a JSON object`);
  if (Object.keys(v).length > 32) throw new DeviceError('TRACKER_PROTOCOL', `${what}: too many members`);
  return v;
}

/** Validates a check-in response (RFC 9019 §3: the status tracker tells the device what to do next). */
export function parseCheckin(body: Uint8Array): CheckinResult {
  const o = parseJsonObject(body, MAX_CHECKIN_BYTES, 'check-in response');
  let intervalS: number | undefined;
  if (o.checkinIntervalS !== undefined) {
    const v = o.checkinIntervalS;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > 366 * 86_400)
      throw bad('checkinIntervalS must be an integer number of seconds');
    intervalS = v;
  }
  let trust: CheckinTrust | undefined;
  if (o.trust !== undefined) {
    const t = o.trust;
    const v = (x: unknown): x is number =>
      typeof x === 'number' && Number.isInteger(x) && x >= 0 && x <= 2_147_483_647;
    if (!isRecord(t) || !v(t.anchors) || !v(t.revocation))
      throw bad('trust must be {anchors, revocation} non-negative integer versions');
    trust = { anchors: t.anchors, revocation: t.revocation };
  }
  if (o.action === 'none') return { action: 'none', intervalS, trust };
  if (o.action !== 'update') throw bad('action must be "none" or "update"');
  const rolloutId = str(o, 'rolloutId', ID);
  const releaseId = str(o, 'releaseId', ID);
  const envelopeUrl = serverPath(str(o, 'envelopeUrl', PATH), 'envelopeUrl');
  const urls = o.payloadUrls ?? [];
  if (!Array.isArray(urls) || urls.length > MAX_PAYLOAD_URLS) throw bad('payloadUrls must be a short array');
  const payloads = (urls as unknown[]).map((u, i) => {
    const m = typeof u === 'string' ? PAYLOAD_PATH.exec(u) : null;
    if (m === null) throw bad(`payloadUrls[${i}] is not /d/v1/payloads/<sha256>`);
    return { path: m[0], sha256: m[1]! };
  });
  return { action: 'update', intervalS, trust, rolloutId, releaseId, envelopeUrl, payloads };
}

/** The stable code of an RFC 9457 problem document, when the body is one (else undefined). */
export function problemCode(contentType: string | undefined, body: Uint8Array): string | undefined {
  if (contentType !== 'application/problem+json' && contentType !== 'application/json') return undefined;
  try {
    const o = parseJsonObject(body, MAX_PROBLEM_BYTES, 'problem');
    const c = o.code;
    return typeof c === 'string' && /^[A-Z][A-Z0-9_]{0,63}$/.test(c) ? c : undefined;
  } catch {
    return undefined;
  }
}

/** The device's server-side id from GET /d/v1/self (for its push topic). */
export function parseSelf(body: Uint8Array): { id: string } {
  const o = parseJsonObject(body, MAX_CHECKIN_BYTES, '/d/v1/self');
  const id = o.id;
  if (typeof id !== 'string' || !ID.test(id)) throw new DeviceError('TRACKER_PROTOCOL', '/d/v1/self: bad id');
  return { id };
}

/** The MQTT topic a device's nudges arrive on (`rotor/v1/devices/<deviceId>/notify`). */
export function notifyTopic(deviceId: string): string {
  if (!ID.test(deviceId))
    throw new DeviceError('TRACKER_PROTOCOL', `device id ${JSON.stringify(deviceId)} is not topic-safe`);
  return `rotor/v1/devices/${deviceId}/notify`;
}

/** The push payload: a CBOR map {1: "checkin"}, strictly decoded (canonical, no trailing bytes). */
export function parsePush(payload: Uint8Array): 'checkin' {
  if (payload.length > MAX_PUSH_BYTES)
    throw new DeviceError('PUSH_MALFORMED', `push of ${payload.length} bytes exceeds ${MAX_PUSH_BYTES}`);
  let v: unknown;
  try {
    v = decode(payload, { maxSize: MAX_PUSH_BYTES, maxDepth: 2 });
  } catch (e) {
    throw new DeviceError('PUSH_MALFORMED', 'push is not canonical CBOR', { cause: e });
  }
  // Other members may be added later (a nudge only ever asks for a check-in); key 1 must say so.
  if (!(v instanceof CborMap) || v.get(1) !== 'checkin')
    throw new DeviceError('PUSH_MALFORMED', 'push is not {1: "checkin"}');
  return 'checkin';
}

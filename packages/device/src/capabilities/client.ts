/**
 * The device's capability client (seed 000 steps 3–7; issue 8 "the device fetches it over the same mutually
 * authenticated channel as firmware"): the status tracker's half of capability modules. Over the tracker's
 * mutual-TLS client (tracker/http.ts) it
 *
 *  - asks the capability server for a capability with the device's identity (its client certificate), firmware
 *    version and device class (`POST /d/v1/capabilities/query`, seed 000 step 3), installs the dependencies the
 *    answer names first, fetches the module ciphertext from the server (`payloadUrl`, same channel, step 4) and
 *    hands envelope and ciphertext to the CapabilityManager, which verifies everything itself (steps 5–6);
 *  - refreshes the signed module revocation list and capability manifest (step 7; seed 000 §1 "updatable");
 *  - reports every outcome as a SUIT report (draft-ietf-suit-report §4) naming the module envelope by its SUIT
 *    digest, signed with the device's report key (§5): installed, failed (refused with the manager's typed code),
 *    reverted (stopped after a fault and rolled back), unloaded (revoked, no longer authorized, on request).
 *
 * Reports are kept in the tracker's AtomicStore until the server answers 2xx (or refuses one for good: a 4xx other
 * than 401/403/408/429), oldest first, so outcomes survive restarts and outages (at-least-once, as firmware
 * reports). Everything the server sends is untrusted: answers are bounded and validated before use, references stay
 * on the server's origin, and only the manager's verification decides what runs.
 */
import { asArray, asBytes, decode, encode, type Signer } from '@rotor/cose';
import { decodeEnvelope, decodeReport, encodeReport, ReportReason, type SuitReport } from '@rotor/suit';
import {
  CAPABILITY_MANIFEST_CONTENT_TYPE,
  CAPABILITY_MANIFEST_MAX_BYTES,
  formatModuleVersion,
  isCapabilityName,
  isTrustError,
  REVOCATION_CONTENT_TYPE,
  REVOCATION_MAX_BYTES,
} from '@rotor/trust';
import { DeviceError, isDeviceError } from '../errors.ts';
import type { AtomicStore } from '../storage/atomic.ts';
import type { TrackerHttp } from '../tracker/http.ts';
import { problemCode } from '../tracker/protocol.ts';
import { encodeForDelivery, ROTOR_REPORT_KEY } from '../tracker/report.ts';
import type { CapabilityEvent, CapabilityManager } from './manager.ts';

export const CAPABILITY_REPORTS_BLOB = 'capability-reports';
/** Rollout offers this device refused (and reported `failed`): never tried again (issue 8 "once"). */
export const CAPABILITY_OFFERS_DONE_BLOB = 'capability-offers-done';
const MAX_PENDING = 256;
const MAX_DONE = 256;
/** Most offers the server sends in one answer (server MAX_MODULE_OFFERS). */
export const MAX_OFFERS = 16;
const ID = /^[A-Za-z0-9_-]{1,64}$/;
const MAX_ANSWER = 8 * 1024 * 1024;
const MAX_DEPENDENCY_DEPTH = 8;
const PAYLOAD_PATH = /^\/d\/v1\/capabilities\/payloads\/[0-9a-f]{64}$/;

export type ModuleTransition = 'installed' | 'failed' | 'reverted' | 'unloaded';

export type CapabilityOutcome =
  | {
      readonly ok: true;
      readonly name: string;
      readonly version: string;
      readonly digest: string;
      /** Dependencies installed first, in order. */
      readonly dependencies: readonly string[];
    }
  | { readonly ok: false; readonly name: string; readonly code: string; readonly message: string };

export type CapabilityClientEvent =
  | { readonly kind: 'report-queued'; readonly name: string; readonly transition: ModuleTransition }
  | { readonly kind: 'report-delivered'; readonly transition: string; readonly status: number }
  | { readonly kind: 'report-dropped'; readonly status: number; readonly code: string | undefined }
  | {
      /** A module rollout's offer the device acted on without asking (issue 8 "roll modules out like firmware"). */
      readonly kind: 'offer';
      readonly rolloutId: string;
      readonly moduleId: string;
      readonly name: string;
      readonly version: string;
      readonly outcome: CapabilityOutcome;
    }
  | { readonly kind: 'error'; readonly error: DeviceError };

export interface CapabilityClientOptions {
  readonly http: TrackerHttp;
  readonly manager: CapabilityManager;
  /** Where undelivered reports wait (the tracker's store). */
  readonly store: () => Promise<AtomicStore>;
  /** The device's report signer (undefined: bare SUIT reports over mutual TLS, report §5). */
  readonly signer: () => Signer | undefined;
  readonly onEvent?: (e: CapabilityClientEvent) => void;
}

interface Answer {
  readonly name: string;
  readonly version: string;
  readonly envelope: Uint8Array;
  readonly payloadUrl: string;
  readonly requires: readonly { name: string; version: string }[];
}

function protocolError(what: string): DeviceError {
  return new DeviceError('TRACKER_PROTOCOL', `capability answer: ${what}`);
}

/** Strict reading of a query answer (routes.ts queryAnswer): bounded, typed, server paths only. */
export function parseCapabilityAnswer(body: Uint8Array, maxEnvelope: number): Answer {
  let o: unknown;
  try {
    o = JSON.parse(Buffer.from(body).toString('utf8'));
  } catch {
    throw protocolError('not JSON');
  }
  if (typeof o !== 'object' || o === null || Array.isArray(o)) throw protocolError('not an object');
  const r = o as Record<string, unknown>;
  const text = (k: string, max: number): string => {
    const v = r[k];
    if (typeof v !== 'string' || v.length > max) throw protocolError(`${k} is not a string of ≤ ${max}`);
    return v;
  };
  const name = text('name', 64);
  if (!isCapabilityName(name)) throw protocolError('name is not a capability name');
  const version = text('version', 32);
  const b64 = text('envelope', Math.ceil((maxEnvelope * 4) / 3) + 4);
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(b64)) throw protocolError('envelope is not base64');
  const envelope = new Uint8Array(Buffer.from(b64, 'base64'));
  const payloadUrl = text('payloadUrl', 128);
  if (!PAYLOAD_PATH.test(payloadUrl)) throw protocolError('payloadUrl is not a module payload path');
  const req = r.requires;
  if (!Array.isArray(req) || req.length > 64) throw protocolError('requires is not a list of ≤ 64');
  const requires = req.map((x: unknown) => {
    const d = x as Record<string, unknown> | null;
    if (
      typeof d !== 'object' ||
      d === null ||
      typeof d.name !== 'string' ||
      !isCapabilityName(d.name) ||
      typeof d.version !== 'string' ||
      d.version.length > 32
    )
      throw protocolError('requires[] is not {name, version}');
    return { name: d.name, version: d.version };
  });
  return { name, version, envelope, payloadUrl, requires };
}

/** A module rollout's offer (server `POST /d/v1/capabilities/offers`). */
export interface ModuleOffer {
  readonly rolloutId: string;
  readonly moduleId: string;
  readonly name: string;
  readonly version: string;
}

/** Strict reading of an offers answer (routes.ts offersAnswer): bounded, typed. */
export function parseOffers(body: Uint8Array): { offers: ModuleOffer[]; more: boolean } {
  let o: unknown;
  try {
    o = JSON.parse(Buffer.from(body).toString('utf8'));
  } catch {
    throw protocolError('offers: not JSON');
  }
  if (typeof o !== 'object' || o === null || Array.isArray(o)) throw protocolError('offers: not an object');
  const r = o as Record<string, unknown>;
  if (!Array.isArray(r.offers) || r.offers.length > MAX_OFFERS)
    throw protocolError(`offers is not a list of ≤ ${MAX_OFFERS}`);
  if (typeof r.more !== 'boolean') throw protocolError('offers: more is not a boolean');
  const offers = r.offers.map((x: unknown): ModuleOffer => {
    const d = x as Record<string, unknown> | null;
    if (
      typeof d !== 'object' ||
      d === null ||
      typeof d.rolloutId !== 'string' ||
      !ID.test(d.rolloutId) ||
      typeof d.moduleId !== 'string' ||
      !ID.test(d.moduleId) ||
      typeof d.name !== 'string' ||
      !isCapabilityName(d.name) ||
      typeof d.version !== 'string' ||
      d.version.length > 32
    )
      throw protocolError('offers[] is not {rolloutId, moduleId, name, version}');
    return { rolloutId: d.rolloutId, moduleId: d.moduleId, name: d.name, version: d.version };
  });
  return { offers, more: r.more };
}

const hexBytes = (h: string): Uint8Array => new Uint8Array(Buffer.from(h, 'hex'));

/** The SUIT report of a module transition (report §4; Rotor members -257/-258/-259 as tracker/report.ts). */
export function moduleReport(
  envelopeDigest: Uint8Array,
  transition: ModuleTransition,
  reason?: string,
  detail?: string,
): SuitReport {
  const ext = new Map<number, unknown>([[ROTOR_REPORT_KEY.transition, transition]]);
  if (reason !== undefined) ext.set(ROTOR_REPORT_KEY.reason, reason.slice(0, 64));
  if (detail !== undefined && detail !== '') ext.set(ROTOR_REPORT_KEY.detail, detail.slice(0, 256));
  const ok = transition === 'installed' || transition === 'unloaded';
  return {
    reference: { uri: undefined, digest: { alg: -16, bytes: envelopeDigest } },
    records: [],
    result: ok
      ? true
      : {
          code: -1,
          // MF §8.4.6: the install (failed) or invoke (reverted: the module faulted while running) sequence.
          record: {
            manifestId: [],
            manifestSection: transition === 'failed' ? 17 : 9,
            sectionOffset: 0,
            componentIndex: 0,
            properties: new Map(),
          },
          reason: ReportReason.operationFailed,
        },
    extensions: ext,
  };
}

export class CapabilityClient {
  readonly #o: CapabilityClientOptions;
  #tail: Promise<unknown> = Promise.resolve();
  readonly #unsubscribe: () => void;
  /** Offers the server refused to hand over (4xx) in this run: not asked again until a restart. */
  readonly #refused = new Set<string>();

  constructor(o: CapabilityClientOptions) {
    this.#o = o;
    this.#unsubscribe = o.manager.subscribe((e) => {
      this.#onManagerEvent(e);
    });
  }

  close(): void {
    this.#unsubscribe();
  }

  #emit(e: CapabilityClientEvent): void {
    try {
      this.#o.onEvent?.(e);
    } catch {
      // an observer's failure is not the client's
    }
  }

  /** Outcomes the manager reaches on its own (faults, revocation) are reported too. */
  #onManagerEvent(e: CapabilityEvent): void {
    if (e.type === 'rolled-back')
      this.#queue(
        e.name,
        hexBytes(e.fromEnvelopeDigest),
        'reverted',
        'CAP_FAULT',
        `${e.from} → ${e.to ?? 'none'}`,
      );
    else if (e.type === 'unloaded' && e.envelopeDigest !== undefined)
      this.#queue(e.name, hexBytes(e.envelopeDigest), 'unloaded', `CAP_UNLOADED_${e.reason.toUpperCase()}`);
  }

  #queue(name: string, digest: Uint8Array, t: ModuleTransition, reason?: string, detail?: string): void {
    const report = encodeReport(moduleReport(digest, t, reason, detail));
    this.#serial(async () => {
      const store = await this.#o.store();
      const pending = await this.#pending(store);
      pending.push(report);
      await store.put(CAPABILITY_REPORTS_BLOB, encode(pending.slice(-MAX_PENDING)));
      this.#emit({ kind: 'report-queued', name, transition: t });
    }).catch((err: unknown) => {
      this.#emit({ kind: 'error', error: asError(err) });
    });
  }

  #serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#tail.then(fn);
    this.#tail = run.catch(() => undefined);
    return run;
  }

  async #pending(store: AtomicStore): Promise<Uint8Array[]> {
    const b = await store.get(CAPABILITY_REPORTS_BLOB);
    if (b === undefined) return [];
    try {
      return asArray(decode(b, { maxSize: 16 * 1024 * 1024, maxDepth: 2 }), 'reports', {
        max: MAX_PENDING,
      }).map((x, i) => asBytes(x, `reports[${i}]`, { max: 64 * 1024 }));
    } catch {
      return []; // a corrupt queue loses reports, never blocks the device
    }
  }

  #refusal(what: string, status: number, contentType: string | undefined, body: Uint8Array): DeviceError {
    const code = problemCode(contentType, body);
    const text = `${what}: HTTP ${status}${code === undefined ? '' : ` ${code}`}`;
    if (status >= 500 || status === 429 || status === 408)
      return new DeviceError('TRACKER_UNREACHABLE', text);
    return new DeviceError('TRACKER_REFUSED', text);
  }

  /**
   * Asks the server for `name` and installs what it offers (dependencies first). Server trouble and refusals by
   * the manager come back as `{ok: false, code}`; the manager's refusals are also reported to the server.
   */
  async request(name: string): Promise<CapabilityOutcome> {
    const deps: string[] = [];
    try {
      const out = await this.#request(name, 0, deps);
      await this.flush().catch(() => undefined);
      return out;
    } catch (e) {
      await this.flush().catch(() => undefined);
      const err = asError(e);
      return { ok: false, name, code: err.code, message: err.message };
    }
  }

  async #request(name: string, depth: number, deps: string[], moduleId?: string): Promise<CapabilityOutcome> {
    const m = this.#o.manager;
    const dev = m.device;
    const installed = m.status().map((s) => ({ name: s.name, version: s.version }));
    const res = await this.#o.http.request('POST', '/d/v1/capabilities/query', {
      body: new TextEncoder().encode(
        JSON.stringify({
          capability: name,
          firmwareVersion: formatModuleVersion(dev.firmwareVersion),
          deviceClass: dev.deviceClass,
          ...(installed.length === 0 ? {} : { installed }),
          ...(moduleId === undefined ? {} : { moduleId }),
        }),
      ),
      contentType: 'application/json',
      accept: 'application/json',
      maxBody: MAX_ANSWER,
    });
    if (res.status !== 200) throw this.#refusal(`capability ${name}`, res.status, res.contentType, res.body);
    const a = parseCapabilityAnswer(res.body, m.policy.maxEnvelopeBytes);
    if (a.name !== name) throw protocolError(`asked for ${name}, answered ${a.name}`);
    const running = m.status().find((s) => s.name === name);
    // The SUIT digest names this envelope in reports (report §4); the manager authenticates it before any use.
    let envelopeDigest: Uint8Array | undefined;
    try {
      envelopeDigest = decodeEnvelope(a.envelope, { maxSize: m.policy.maxEnvelopeBytes }).digest.bytes;
    } catch {
      envelopeDigest = undefined; // the manager refuses it with the reason; nothing the server could match
    }
    for (const d of a.requires) {
      if (m.status().some((s) => s.name === d.name && s.version === d.version)) continue;
      if (depth >= MAX_DEPENDENCY_DEPTH)
        throw new DeviceError('CAP_DEPENDENCY', 'dependencies nest too deep');
      const sub = await this.#request(d.name, depth + 1, deps);
      if (!sub.ok) {
        // A dependency the device refused (reported itself) fails this module too; transport trouble does not.
        if (!isReportedRefusal(sub.code))
          throw new DeviceError(
            sub.code === 'TRACKER_REFUSED' ? 'TRACKER_REFUSED' : 'TRACKER_UNREACHABLE',
            `dependency ${d.name}: ${sub.code}: ${sub.message}`,
          );
        const err = new DeviceError('CAP_DEPENDENCY', `dependency ${d.name}: ${sub.code}`);
        if (envelopeDigest !== undefined) this.#queue(name, envelopeDigest, 'failed', err.code, err.message);
        throw err;
      }
    }
    if (running !== undefined && envelopeDigest !== undefined) {
      // The same module already runs (the server re-signs per query: compare by module digest via the version).
      if (running.version === a.version) {
        return { ok: true, name, version: running.version, digest: running.digest, dependencies: [...deps] };
      }
    }
    const payload = await this.#o.http.request('GET', a.payloadUrl, {
      accept: 'application/octet-stream',
      maxBody: m.policy.maxModuleBytes + 1024,
    });
    if (payload.status !== 200)
      throw this.#refusal(`module payload ${name}`, payload.status, payload.contentType, payload.body);
    try {
      const r = await m.install(a.envelope, { payloads: new Map([[a.payloadUrl, payload.body]]) });
      if (envelopeDigest !== undefined) this.#queue(name, envelopeDigest, 'installed');
      if (depth > 0) deps.push(name);
      return { ok: true, name, version: r.version, digest: r.digest, dependencies: [...deps] };
    } catch (e) {
      const err = asError(e);
      if (envelopeDigest !== undefined && isReportedRefusal(err.code))
        this.#queue(name, envelopeDigest, 'failed', err.code, err.message);
      throw err;
    }
  }

  /**
   * Seed 000 step 7 and §1 "updatable": fetches the newest module revocation list and the device's capability
   * manifest and applies each when it is newer (the manager verifies signature, version and expiry, and unloads
   * at once what they take away). A list or manifest the device already holds is not an error.
   */
  async sync(): Promise<{ revoked: string[]; unauthorized: string[] }> {
    const m = this.#o.manager;
    const out = { revoked: [] as string[], unauthorized: [] as string[] };
    // Each body is bounded by what its verifier accepts.
    const get = async (path: string, type: string, maxBody: number): Promise<Uint8Array | undefined> => {
      const r = await this.#o.http.request('GET', path, { accept: type, maxBody });
      if (r.status === 404) return undefined;
      if (r.status !== 200) throw this.#refusal(path, r.status, r.contentType, r.body);
      return r.body;
    };
    const notNewer = (e: unknown): boolean =>
      isDeviceError(e) && isTrustError(e.cause) && e.cause.code.endsWith('ROLLBACK');
    const rev = await get('/d/v1/capabilities/revocations', REVOCATION_CONTENT_TYPE, REVOCATION_MAX_BYTES);
    if (rev !== undefined) {
      try {
        out.revoked = (await m.applyRevocationList(rev)).unloaded;
      } catch (e) {
        if (!notNewer(e)) throw e;
      }
    }
    const man = await get(
      '/d/v1/capabilities/manifest',
      CAPABILITY_MANIFEST_CONTENT_TYPE,
      CAPABILITY_MANIFEST_MAX_BYTES,
    );
    if (man !== undefined) {
      try {
        out.unauthorized = (await m.updateCapabilityManifest(man)).unloaded;
      } catch (e) {
        if (!notNewer(e)) throw e;
      }
    }
    await this.flush().catch(() => undefined);
    return out;
  }

  /**
   * Issue 8 "operators roll modules out like firmware (targets, phases)": asks the server which module rollouts
   * offer this device a module it does not run yet (`POST /d/v1/capabilities/offers`; the server applies targets,
   * phases, pause and cancel) and installs each exactly as `request` does — the pinned module's envelope
   * (`query` with its `moduleId`), dependencies first, the ciphertext over the same mutual-TLS client, the
   * CapabilityManager deciding. A module the manager refuses (incompatible firmware, not authorized by the
   * capability manifest, …) is reported `failed` with the manager's code and remembered, so it is tried once;
   * transport trouble stops the round (the next cycle tries again).
   */
  async applyOffers(): Promise<{ offer: ModuleOffer; outcome: CapabilityOutcome }[]> {
    const m = this.#o.manager;
    const installed = m.status().map((s) => ({ name: s.name, version: s.version }));
    const res = await this.#o.http.request('POST', '/d/v1/capabilities/offers', {
      body: new TextEncoder().encode(JSON.stringify(installed.length === 0 ? {} : { installed })),
      contentType: 'application/json',
      accept: 'application/json',
      maxBody: 64 * 1024,
    });
    if (res.status === 404) return []; // a server without module rollout offers
    if (res.status !== 200) throw this.#refusal('capability offers', res.status, res.contentType, res.body);
    const { offers } = parseOffers(res.body);
    const store = await this.#o.store();
    const done = await this.#done(store);
    const out: { offer: ModuleOffer; outcome: CapabilityOutcome }[] = [];
    for (const offer of offers) {
      const key = `${offer.rolloutId}/${offer.moduleId}`;
      if (done.includes(key) || this.#refused.has(key)) continue;
      // An earlier offer of this round may have installed it as a dependency.
      if (m.status().some((s) => s.name === offer.name && s.version === offer.version)) continue;
      let outcome: CapabilityOutcome;
      try {
        outcome = await this.#request(offer.name, 0, [], offer.moduleId);
      } catch (e) {
        const err = asError(e);
        outcome = { ok: false, name: offer.name, code: err.code, message: err.message };
      }
      out.push({ offer, outcome });
      this.#emit({ kind: 'offer', ...offer, outcome });
      if (outcome.ok) continue;
      if (isReportedRefusal(outcome.code)) {
        done.push(key);
        const keep = encode(done.slice(-MAX_DONE));
        // Behind the queued report's write (one writer of the store at a time).
        await this.#serial(() => store.put(CAPABILITY_OFFERS_DONE_BLOB, keep));
      } else if (outcome.code === 'TRACKER_REFUSED') this.#refused.add(key);
      else break; // unreachable, busy, protocol: the next cycle tries again
    }
    return out;
  }

  async #done(store: AtomicStore): Promise<string[]> {
    const b = await store.get(CAPABILITY_OFFERS_DONE_BLOB);
    if (b === undefined) return [];
    try {
      return asArray(decode(b, { maxSize: 64 * 1024, maxDepth: 2 }), 'offers done', { max: MAX_DONE }).map(
        (x) => {
          if (typeof x !== 'string' || x.length > 160) throw new Error('not a key');
          return x;
        },
      );
    } catch {
      return []; // a corrupt record retries an offer once more, never blocks the device
    }
  }

  /**
   * sync(), applyOffers() and flush() for the tracker's cycle: never throws (server trouble is an `error` event;
   * the next cycle tries again), so capability upkeep cannot fail a firmware check-in. The manifest and revocation
   * list come first: a module is installed under the newest authorization.
   */
  async syncQuietly(): Promise<void> {
    try {
      await this.sync();
    } catch (e) {
      this.#emit({ kind: 'error', error: asError(e) });
    }
    try {
      await this.applyOffers();
    } catch (e) {
      this.#emit({ kind: 'error', error: asError(e) });
    }
    await this.flush().catch((e: unknown) => {
      this.#emit({ kind: 'error', error: asError(e) });
    });
  }

  /** Delivers queued reports, oldest first; stops at the first transient failure (order is kept). */
  flush(): Promise<{ delivered: number; remaining: number }> {
    return this.#serial(async () => {
      const store = await this.#o.store();
      const pending = await this.#pending(store);
      let done = 0;
      let delivered = 0;
      try {
        for (const plain of pending) {
          const report = decodeReport(plain);
          const signer = this.#o.signer();
          const enc = await encodeForDelivery(report, signer);
          const res = await this.#o.http.request('POST', '/d/v1/capabilities/reports', {
            body: enc.bytes,
            contentType: enc.contentType,
            accept: 'application/json',
            maxBody: 16 * 1024,
          });
          if (
            res.status === 401 ||
            res.status === 403 ||
            res.status === 408 ||
            res.status === 429 ||
            res.status >= 500
          )
            throw this.#refusal('module report', res.status, res.contentType, res.body);
          done++;
          const transition = report.extensions?.get(ROTOR_REPORT_KEY.transition);
          if (res.status >= 200 && res.status < 300) {
            delivered++;
            this.#emit({
              kind: 'report-delivered',
              transition: typeof transition === 'string' ? transition : '',
              status: res.status,
            });
          } else
            this.#emit({
              kind: 'report-dropped',
              status: res.status,
              code: problemCode(res.contentType, res.body),
            });
        }
      } finally {
        if (done > 0) await store.put(CAPABILITY_REPORTS_BLOB, encode(pending.slice(done)));
      }
      return { delivered, remaining: pending.length - done };
    });
  }
}

/** A refusal by the manager (reported `failed` to the server), not transport or a busy manager. */
function isReportedRefusal(code: string): boolean {
  return code.startsWith('CAP_') && code !== 'CAP_BUSY';
}

function asError(e: unknown): DeviceError {
  if (e instanceof DeviceError) return e;
  return new DeviceError('TRACKER_UNREACHABLE', e instanceof Error ? e.message : String(e), { cause: e });
}

/**
 * The status tracker client (RFC 9019 §3 "status tracker", device side; §2.3 the device learns of updates by
 * polling or by notification): checks in with the server at the interval the server sets (bounded by the device,
 * jittered), checks in at once when an MQTT nudge arrives, runs the update the server assigns through the agent
 * (envelope from the server; payloads over its Range endpoint with the agent's resuming fetcher), and delivers every
 * transition the agent recorded in its outbox as a SUIT report (report.ts), signed with the device's report key.
 *
 * Delivery is at-least-once: a record leaves the outbox only after the server answered 2xx for it (or refused it
 * for good: a 4xx other than 401/403/408/429 means no resend will ever succeed, and the record is dropped with an
 * event). Records are sent oldest first, one at a time; the first failure stops the round, so order is kept. The
 * outbox is durable, so undelivered reports survive restarts and are sent when the server is back.
 *
 * Everything from the server is untrusted (RFC 9019 §3; draft-ietf-suit-manifest §6.2): responses are bounded and
 * validated (protocol.ts), references stay on the server's origin (http.ts), and the envelope goes to the agent,
 * which authenticates it against its trust anchors before anything else. A malformed check-in response is a typed
 * TRACKER_PROTOCOL error and nothing is fetched or installed.
 */
import { randomInt } from 'node:crypto';
import { asArray, asBool, asBytes, asText, decode, encode, type Signer } from '@rotor/cose';
import { decodeEnvelope } from '@rotor/suit';
import { hex } from '@rotor/trust';
import type { DeviceAgent, UpdateOutcome } from '../agent/agent.ts';
import type { TransitionRecord } from '../agent/outbox.ts';
import {
  CapabilityClient,
  type CapabilityClientEvent,
  type CapabilityOutcome,
  type ModuleOffer,
} from '../capabilities/client.ts';
import type { CapabilityManager } from '../capabilities/manager.ts';
import { DeviceError } from '../errors.ts';
import type { FetchPolicy } from '../fetch/pipeline.ts';
import { httpSource, type ByteSource } from '../fetch/source.ts';
import { MAX_ENVELOPE } from '../flash/nvstate.ts';
import { AtomicStore } from '../storage/atomic.ts';
import type { Attester, ContactOutcome, VerifierTransport } from '../attest/attester.ts';
import { httpTrustSources, httpVerifierTransport } from '../attest/sources.ts';
import type { DeviceTrust, TrustSync } from '../attest/trust.ts';
import { TrackerHttp, type TlsIdentity } from './http.ts';
import { parseCheckin, parseSelf, problemCode, type CheckinResult } from './protocol.ts';
import { PushListener } from './push.ts';
import { encodeForDelivery, transitionReport, SUIT_REPORT_CBOR, TERMINAL } from './report.ts';

export const SUIT_ENVELOPE_TYPE = 'application/suit-envelope+cose';

export interface TrackerConfig {
  readonly agent: DeviceAgent;
  /** The server's device API (mutual TLS). */
  readonly server: {
    readonly url: string;
    readonly identity?: TlsIdentity;
    readonly ca?: string | readonly string[];
    /** Plain http for stubs in tests only. */
    readonly allowHttp?: boolean;
    readonly timeoutMs?: number;
  };
  /** Push notifications (optional): the broker, and TLS material when it differs from the server's. */
  readonly mqtt?: {
    readonly url: string;
    readonly identity?: TlsIdentity;
    readonly ca?: string | readonly string[];
    readonly clientId?: string;
    readonly minBackoffMs?: number;
    readonly maxBackoffMs?: number;
  };
  /** The device's id on the server (its push topic); default: asked from GET /d/v1/self. */
  readonly deviceId?: string;
  /** Check-in interval: the server's `checkinIntervalS` clamped to [minMs, maxMs]; defaultMs without one. */
  readonly interval?: {
    readonly defaultMs?: number;
    readonly minMs?: number;
    readonly maxMs?: number;
    /** Fraction of the interval taken off at random (default 0.1), so a fleet does not poll in lockstep. */
    readonly jitter?: number;
  };
  /** Backoff while the server is unreachable (doubling from minMs, full jitter, at most maxMs). */
  readonly retry?: { readonly minMs?: number; readonly maxMs?: number };
  /** Smallest gap between two check-ins caused by pushes (default 1 s): a burst of nudges is one check-in. */
  readonly pushGapMs?: number;
  /** While an update runs, undelivered transitions are sent every this many ms (default 1 s). */
  readonly progressFlushMs?: number;
  /**
   * Which transitions go to the server: 'all' (default; progress and outcomes) or 'outcomes' (confirmed, failed,
   * rolled-back only; progress records are retired locally) — for a server that ends a device's rollout at its
   * first report.
   */
  readonly transitions?: 'all' | 'outcomes';
  /** Signs reports (default: the agent's reportSigner). Without one reports go unsigned over mutual TLS. */
  readonly reportSigner?: Signer;
  /** Retrieval bounds for payloads (the source is the tracker's). */
  readonly fetch?: Omit<FetchPolicy, 'source'>;
  /** Opens manifest URIs the server does not serve (default: https with the system CAs; none: refuse). */
  readonly fallbackSource?: ByteSource | 'none';
  readonly onEvent?: (e: TrackerEvent) => void;
  /**
   * The device's trust anchors and revocation list (issue 7; normally the agent's `trust`): synced on every
   * check-in whose `trust` versions are newer than the device's (a push makes that at once), and before any
   * assigned update. Without a source of its own it fetches over this tracker's mutual-TLS client.
   */
  readonly trust?: DeviceTrust;
  /**
   * The device's attester (issue 7, attest/attester.ts): after every cycle it does what the verifier asks (report
   * the RoT chain, rotate, attest), and after a confirmed update it attests at once — the server counts the update
   * as confirmed only when the new measurements appraise.
   */
  readonly attester?: Attester;
  /**
   * Capability modules (issue 8): the device's CapabilityManager. The tracker then asks the capability server for
   * modules (`capability()`), refreshes revocation list and capability manifest (`syncCapabilities()`) and reports
   * every module outcome (capabilities/client.ts), over the same mutual-TLS channel as firmware.
   */
  readonly capabilities?: CapabilityManager;
  readonly onCapabilityEvent?: (e: CapabilityClientEvent) => void;
}

export type TrackerEvent =
  | { readonly kind: 'checkin'; readonly result: CheckinResult; readonly why: CycleReason }
  | { readonly kind: 'transition'; readonly record: TransitionRecord }
  | { readonly kind: 'delivered'; readonly record: TransitionRecord; readonly signed: boolean }
  | {
      readonly kind: 'dropped';
      readonly record: TransitionRecord;
      readonly status: number;
      readonly code: string | undefined;
    }
  | { readonly kind: 'update'; readonly rolloutId: string; readonly outcome: UpdateOutcome }
  | { readonly kind: 'skipped'; readonly rolloutId: string; readonly reason: string }
  | { readonly kind: 'push'; readonly why: 'push' | 'connected' }
  | { readonly kind: 'trust'; readonly sync: TrustSync }
  | { readonly kind: 'attestation'; readonly outcome: ContactOutcome }
  | {
      readonly kind: 'error';
      readonly error: Error;
      readonly where: 'checkin' | 'flush' | 'push' | 'self' | 'trust' | 'attestation';
    };

export type CycleReason = 'start' | 'timer' | 'push' | 'manual';

export interface CycleOutcome {
  readonly checkin: CheckinResult | undefined;
  readonly update: UpdateOutcome | undefined;
  readonly error: DeviceError | undefined;
  /** Records still waiting for delivery after the cycle. */
  readonly pending: number;
}

interface Assignment {
  readonly rolloutId: string;
  readonly digest: Uint8Array;
  readonly done: boolean;
}

const ASSIGNMENT = 'assignment';

function encodeAssignment(a: Assignment): Uint8Array {
  return encode([a.rolloutId, a.digest, a.done]);
}

function decodeAssignment(b: Uint8Array): Assignment | undefined {
  try {
    const a = asArray(decode(b, { maxSize: 1024 }), 'assignment', { min: 3, max: 3 });
    return {
      rolloutId: asText(a[0], 'a[0]', { max: 128 }),
      digest: asBytes(a[1], 'a[1]', { max: 64 }),
      done: asBool(a[2], 'a[2]'),
    };
  } catch {
    return undefined; // a corrupt record only loses the "already handled" memory; the server re-offers
  }
}

const PAYLOAD_PATH = /\/payloads\/([0-9a-f]{64})$/;

function asDeviceError(e: unknown): DeviceError {
  if (e instanceof DeviceError) return e;
  return new DeviceError('TRACKER_UNREACHABLE', e instanceof Error ? e.message : String(e), { cause: e });
}

export class StatusTracker {
  readonly config: TrackerConfig;
  readonly http: TrackerHttp;
  readonly #agent: DeviceAgent;
  #store: AtomicStore | undefined;
  #push: PushListener | undefined;
  #verifier: VerifierTransport | undefined;
  #deviceId: string | undefined;
  #signed: boolean;
  #stopped = true;
  #timer: NodeJS.Timeout | undefined;
  #wake: (() => void) | undefined;
  #nudged = false;
  #loop: Promise<void> | undefined;
  #cycleTail: Promise<unknown> = Promise.resolve();
  #flushTail: Promise<unknown> = Promise.resolve();
  #failures = 0;
  #lastCycleAt = 0;
  #seen = new Set<string>();
  readonly #caps: CapabilityClient | undefined;
  /** Check-ins done, and those caused by a push (observability, tests). */
  checkins = 0;
  pushCheckins = 0;

  constructor(config: TrackerConfig) {
    this.config = config;
    this.#agent = config.agent;
    this.http = new TrackerHttp({
      baseUrl: config.server.url,
      ...(config.server.identity === undefined ? {} : { identity: config.server.identity }),
      ...(config.server.ca === undefined ? {} : { ca: config.server.ca }),
      ...(config.server.allowHttp === undefined ? {} : { allowHttp: config.server.allowHttp }),
      ...(config.server.timeoutMs === undefined ? {} : { timeoutMs: config.server.timeoutMs }),
    });
    this.#deviceId = config.deviceId;
    this.#signed = this.#signer() !== undefined;
    this.#caps =
      config.capabilities === undefined
        ? undefined
        : new CapabilityClient({
            http: this.http,
            manager: config.capabilities,
            store: () => this.#state(),
            signer: () => this.#signer(),
            ...(config.onCapabilityEvent === undefined ? {} : { onEvent: config.onCapabilityEvent }),
          });
    const fb = config.fallbackSource;
    const fallback = fb === 'none' ? undefined : (fb ?? httpSource({ allowHttp: false }));
    // The agent fetches payloads through the server's Range endpoint (mutual TLS, the same agent).
    this.#agent.fetchPolicy = {
      retries: 5,
      backoffMs: 500,
      ...config.fetch,
      source: this.http.payloadSource((uri) => this.#mapUri(uri), fallback),
    };
    if (config.trust !== undefined) config.trust.source ??= httpTrustSources(this.http);
  }

  #signer(): Signer | undefined {
    return this.config.reportSigner ?? this.#agent.config.reportSigner;
  }

  /**
   * Manifest URI → server path. A relative reference or a URI on the server's origin is fetched there; a content-addressed URI
   * (…/payloads/<sha256>, e.g. a CDN in front of the server) is fetched from the server's own payload endpoint
   * with the device's certificate. Any other URI is not the server's (undefined: the fallback source opens it).
   * The image is verified against the manifest's digest whatever the source (RFC 9019 §4.1).
   */
  #mapUri(uri: string): string | undefined {
    // A relative reference (the server's per-device manifests name `/d/v1/payloads/<sha256>`) is on the server.
    if (uri.startsWith('/') && !uri.startsWith('//')) return uri.startsWith('/d/v1/') ? uri : undefined;
    let u: URL;
    try {
      u = new URL(uri);
    } catch {
      throw new DeviceError('FETCH_PROTOCOL', `invalid URI ${JSON.stringify(uri.slice(0, 100))}`);
    }
    if (u.search !== '' || u.hash !== '') return undefined;
    const m = PAYLOAD_PATH.exec(u.pathname);
    if (m !== null) return `/d/v1/payloads/${m[1]!}`;
    if (u.origin === this.http.base.origin && u.pathname.startsWith('/d/v1/')) return u.pathname;
    return undefined;
  }

  async #state(): Promise<AtomicStore> {
    if (this.#store === undefined) {
      const root = this.#agent.config.root ?? '';
      this.#store = await AtomicStore.open(
        this.#agent.config.fs,
        root === '' ? 'tracker' : `${root}/tracker`,
      );
    }
    return this.#store;
  }

  async #assignment(): Promise<Assignment | undefined> {
    const b = await (await this.#state()).get(ASSIGNMENT);
    return b === undefined ? undefined : decodeAssignment(b);
  }

  #emit(e: TrackerEvent): void {
    try {
      this.config.onEvent?.(e);
    } catch {
      // an observer's failure is not the tracker's
    }
  }

  // ---- lifecycle -----------------------------------------------------------------------------------------

  /**
   * Powers the agent on if needed (it resumes an interrupted update through this tracker's payload source),
   * starts the push listener (when configured) and the check-in loop. The first check-in runs at once.
   */
  async start(): Promise<void> {
    if (!this.#stopped) return;
    this.#stopped = false;
    try {
      if (this.#agent.booted === undefined) await this.#agent.powerOn();
      await this.#state();
    } catch (e) {
      this.#stopped = true;
      throw e;
    }
    this.#loop = this.#run();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#wake?.();
    await this.#push?.stop();
    this.#push = undefined;
    await this.#loop?.catch(() => undefined);
    this.#loop = undefined;
    await this.#cycleTail.catch(() => undefined);
    this.#caps?.close();
    this.http.close();
  }

  /** Whether stop() was called (or start() not yet). */
  get stopped(): boolean {
    return this.#stopped;
  }

  /** Asks for a check-in as soon as possible (what a push does). */
  nudge(): void {
    this.#nudged = true;
    this.#wake?.();
  }

  async #run(): Promise<void> {
    let why: CycleReason = 'start';
    while (!this.#stopped) {
      this.#nudged = false;
      const out = await this.cycle(why);
      if (this.stopped) break;
      await this.#ensurePush();
      const delay = this.#nextDelay(out);
      why = await this.#sleep(delay);
    }
  }

  #nextDelay(out: CycleOutcome): number {
    const iv = this.config.interval ?? {};
    const min = iv.minMs ?? 5_000;
    const max = iv.maxMs ?? 86_400_000;
    const base = Math.min(
      max,
      Math.max(
        min,
        out.checkin?.intervalS !== undefined ? out.checkin.intervalS * 1000 : (iv.defaultMs ?? 300_000),
      ),
    );
    if (out.error?.code === 'TRACKER_UNREACHABLE') {
      const r = this.config.retry ?? {};
      const cap = Math.min(
        base,
        r.maxMs ?? 300_000,
        (r.minMs ?? 1_000) * 2 ** Math.min(this.#failures - 1, 20),
      );
      return randomInt(Math.floor(cap / 2), Math.floor(cap) + 1);
    }
    const jitter = Math.min(0.5, Math.max(0, iv.jitter ?? 0.1));
    return Math.floor(base * (1 - jitter * Math.random()));
  }

  /** Waits `ms` or until a nudge (not sooner than the push gap after the last check-in). */
  #sleep(ms: number): Promise<CycleReason> {
    return new Promise((resolve) => {
      const finish = (why: CycleReason): void => {
        if (this.#timer !== undefined) clearTimeout(this.#timer);
        this.#timer = undefined;
        this.#wake = undefined;
        resolve(why);
      };
      const onNudge = (): void => {
        if (this.#stopped) {
          finish('timer');
          return;
        }
        const gap = (this.config.pushGapMs ?? 1000) - (Date.now() - this.#lastCycleAt);
        if (gap <= 0) finish('push');
        else {
          if (this.#timer !== undefined) clearTimeout(this.#timer);
          this.#timer = setTimeout(() => {
            finish('push');
          }, gap);
        }
      };
      this.#wake = onNudge;
      if (this.#nudged) {
        onNudge();
        return;
      }
      this.#timer = setTimeout(() => {
        finish('timer');
      }, ms);
    });
  }

  async #ensurePush(): Promise<void> {
    const m = this.config.mqtt;
    if (m === undefined || this.#push !== undefined || this.#stopped) return;
    if (this.#deviceId === undefined) {
      try {
        const res = await this.http.request('GET', '/d/v1/self', {
          accept: 'application/json',
          maxBody: 16 * 1024,
        });
        if (res.status !== 200) throw this.#refusal('GET /d/v1/self', res.status, res.contentType, res.body);
        this.#deviceId = parseSelf(res.body).id;
      } catch (e) {
        this.#emit({ kind: 'error', error: asDeviceError(e), where: 'self' });
        return;
      }
    }
    const identity = m.identity ?? this.config.server.identity;
    const ca = m.ca ?? this.config.server.ca;
    this.#push = new PushListener({
      url: m.url,
      deviceId: this.#deviceId,
      ...(identity === undefined ? {} : { identity }),
      ...(ca === undefined ? {} : { ca }),
      ...(m.clientId === undefined ? {} : { clientId: m.clientId }),
      ...(m.minBackoffMs === undefined ? {} : { minBackoffMs: m.minBackoffMs }),
      ...(m.maxBackoffMs === undefined ? {} : { maxBackoffMs: m.maxBackoffMs }),
      onNudge: (why) => {
        this.#emit({ kind: 'push', why });
        this.nudge();
      },
      onError: (error) => {
        this.#emit({ kind: 'error', error, where: 'push' });
      },
    });
    this.#push.start();
  }

  /** The push listener, once started (tests, observability). */
  get push(): PushListener | undefined {
    return this.#push;
  }

  // ---- one cycle ----------------------------------------------------------------------------------------------

  /**
   * One round: deliver what is pending, check in, run an assigned update, deliver again. Serialized: concurrent
   * callers queue. Never throws for server trouble: the outcome carries the typed error.
   */
  cycle(why: CycleReason = 'manual'): Promise<CycleOutcome> {
    const run = this.#cycleTail.then(() => this.#cycle(why));
    this.#cycleTail = run.catch(() => undefined);
    return run;
  }

  async #cycle(why: CycleReason): Promise<CycleOutcome> {
    this.#lastCycleAt = Date.now();
    let checkin: CheckinResult | undefined;
    let update: UpdateOutcome | undefined;
    let error: DeviceError | undefined;
    try {
      await this.flush();
      checkin = await this.checkin();
      this.checkins++;
      if (why === 'push') this.pushCheckins++;
      this.#emit({ kind: 'checkin', result: checkin, why });
      await this.#syncTrust(checkin);
      if (checkin.action === 'update') update = await this.#runAssignment(checkin);
      await this.flush();
      // Seed 000 step 7: the module revocation list is "periodically distributed and checked" — every cycle; then
      // the module rollouts' offers are installed (issue 8: they reach the device like a firmware rollout).
      await this.#caps?.syncQuietly();
      await this.#attest(update?.ok === true && update.confirmed);
      this.#failures = 0;
    } catch (e) {
      if (e instanceof DeviceError && e.code === 'POWER_CUT') throw e;
      error = asDeviceError(e);
      if (error.code === 'TRACKER_UNREACHABLE') this.#failures++;
      this.#emit({ kind: 'error', error, where: 'checkin' });
    }
    let pending = 0;
    try {
      pending = (await this.#agent.outbox.pending()).length;
    } catch {
      // the agent is off (power cut in a simulation)
    }
    return { checkin, update, error, pending };
  }

  /**
   * Issue 7 pull: fetches the trust-anchor statements and revocation list newer than the device's (the check-in
   * names the server's versions). Failures do not stop the cycle: an update is still authenticated against a
   * fresh list only (attest/trust.ts refreshes or refuses with TRUST_STALE).
   */
  async #syncTrust(checkin: CheckinResult): Promise<void> {
    const t = this.config.trust;
    if (t === undefined) return;
    const v = checkin.trust;
    const held = t.revocation.list?.version ?? 0;
    if (
      v !== undefined &&
      v.anchors <= t.anchors.current.version &&
      v.revocation <= held &&
      (v.revocation === 0 || t.revocation.isFresh())
    )
      return;
    const sync = await t.sync(v);
    this.#emit({ kind: 'trust', sync });
    for (const error of sync.errors) this.#emit({ kind: 'error', error, where: 'trust' });
  }

  /**
   * Issue 7: one contact with the verifier (what it asks; `afterUpdate`: attest now — the confirmed report went out
   * just before, so the server waits for this evidence to count the update). A failure is reported, not thrown:
   * the server asks again (pending) at the next cycle.
   */
  async #attest(afterUpdate: boolean): Promise<void> {
    const a = this.config.attester;
    if (a === undefined) return;
    this.#verifier ??= httpVerifierTransport(this.http);
    try {
      const outcome = await a.contact(this.#verifier, { forceAttest: afterUpdate });
      this.#emit({ kind: 'attestation', outcome });
    } catch (e) {
      if (e instanceof DeviceError && e.code === 'POWER_CUT') throw e;
      this.#emit({ kind: 'error', error: asDeviceError(e), where: 'attestation' });
    }
  }

  #refusal(what: string, status: number, contentType: string | undefined, body: Uint8Array): DeviceError {
    const code = problemCode(contentType, body);
    if (status >= 500 || status === 429 || status === 408)
      return new DeviceError(
        'TRACKER_UNREACHABLE',
        `${what}: HTTP ${status}${code === undefined ? '' : ` ${code}`}`,
      );
    return new DeviceError(
      'TRACKER_REFUSED',
      `${what}: HTTP ${status}${code === undefined ? '' : ` ${code}`}`,
    );
  }

  /** POST /d/v1/checkin (RFC 9019 §3: the device asks its status tracker what to do). */
  async checkin(): Promise<CheckinResult> {
    const res = await this.http.request('POST', '/d/v1/checkin', {
      accept: 'application/json',
      maxBody: 16 * 1024,
    });
    if (res.status !== 200) throw this.#refusal('check-in', res.status, res.contentType, res.body);
    if (res.contentType !== 'application/json')
      throw new DeviceError('TRACKER_PROTOCOL', `check-in answered ${res.contentType ?? 'no media type'}`);
    return parseCheckin(res.body);
  }

  async #runAssignment(a: Extract<CheckinResult, { action: 'update' }>): Promise<UpdateOutcome | undefined> {
    const store = await this.#state();
    const prev = await this.#assignment();
    if (prev?.rolloutId === a.rolloutId && prev.done) {
      // Handled already (its reports may still be on their way): never run an assignment twice.
      this.#emit({ kind: 'skipped', rolloutId: a.rolloutId, reason: 'already handled' });
      return undefined;
    }
    const res = await this.http.request('GET', a.envelopeUrl, {
      accept: SUIT_ENVELOPE_TYPE,
      maxBody: MAX_ENVELOPE,
    });
    if (res.status !== 200) throw this.#refusal('envelope', res.status, res.contentType, res.body);
    if (res.contentType !== SUIT_ENVELOPE_TYPE)
      throw new DeviceError('TRACKER_PROTOCOL', `envelope answered ${res.contentType ?? 'no media type'}`);
    // The digest only names the manifest in reports; the agent authenticates the envelope before using it.
    let digest: Uint8Array = new Uint8Array(0);
    try {
      digest = decodeEnvelope(res.body).digest.bytes;
    } catch {
      // the agent refuses it with the reason; the report references nothing the server can match
    }
    const running = this.#agent.booted?.envelope.digest.bytes;
    if (running !== undefined && digest.length > 0 && hex(running) === hex(digest)) {
      await store.put(ASSIGNMENT, encodeAssignment({ rolloutId: a.rolloutId, digest, done: true }));
      this.#emit({ kind: 'skipped', rolloutId: a.rolloutId, reason: 'already running this manifest' });
      return undefined;
    }
    await store.put(ASSIGNMENT, encodeAssignment({ rolloutId: a.rolloutId, digest, done: false }));
    const progress = setInterval(() => {
      this.flush().catch(() => undefined);
    }, this.config.progressFlushMs ?? 1000);
    let outcome: UpdateOutcome;
    try {
      outcome = await this.#agent.update(res.body);
    } finally {
      clearInterval(progress);
    }
    if (outcome.ok || outcome.code !== 'UPDATE_BUSY')
      await store.put(ASSIGNMENT, encodeAssignment({ rolloutId: a.rolloutId, digest, done: true }));
    this.#emit({ kind: 'update', rolloutId: a.rolloutId, outcome });
    return outcome;
  }

  // ---- capability modules (issue 8; capabilities/client.ts) ------------------------------------------------

  #capabilityClient(): CapabilityClient {
    if (this.#caps === undefined)
      throw new DeviceError('CAP_NOT_LOADED', 'the tracker was configured without a capability manager');
    return this.#caps;
  }

  /** Asks the capability server for `name` (identity, firmware version, device class), installs and reports it. */
  capability(name: string): Promise<CapabilityOutcome> {
    return this.#capabilityClient().request(name);
  }

  /** Applies a newer module revocation list and capability manifest from the server (seed 000 step 7, §1). */
  syncCapabilities(): Promise<{ revoked: string[]; unauthorized: string[] }> {
    return this.#capabilityClient().sync();
  }

  /**
   * Installs what module rollouts offer this device without it asking (issue 8; each cycle does this too, after
   * the revocation list and manifest): refusals are reported `failed` once.
   */
  applyCapabilityOffers(): Promise<{ offer: ModuleOffer; outcome: CapabilityOutcome }[]> {
    return this.#capabilityClient().applyOffers();
  }

  /** Delivers queued module reports now (each cycle does too). */
  flushCapabilityReports(): Promise<{ delivered: number; remaining: number }> {
    return this.#capabilityClient().flush();
  }

  // ---- report delivery ----------------------------------------------------------------------------------------

  /**
   * Delivers the outbox, oldest first (draft-ietf-suit-report §5 protection; RFC 9019 §3 the status tracker
   * collects them). Returns how many were delivered and how many remain. Serialized.
   */
  flush(): Promise<{ delivered: number; remaining: number }> {
    const run = this.#flushTail.then(() => this.#flush());
    this.#flushTail = run.catch(() => undefined);
    return run;
  }

  #key(r: TransitionRecord): string {
    return `${r.index}:${r.state}:${hex(r.manifestDigest)}`;
  }

  async #flush(): Promise<{ delivered: number; remaining: number }> {
    const outbox = this.#agent.outbox;
    const pending = await outbox.pending();
    for (const r of pending) {
      const k = this.#key(r);
      if (!this.#seen.has(k)) {
        this.#seen.add(k);
        this.#emit({ kind: 'transition', record: r });
      }
    }
    const fallback = (await this.#assignment())?.digest;
    let delivered = 0;
    let done = 0;
    for (const r of pending) {
      const report = transitionReport(r, fallback);
      let status: number;
      let code: string | undefined;
      if (report.reference.digest.bytes.length === 0) {
        status = 0; // references no manifest: no server can match it
        code = 'NO_MANIFEST_REFERENCE';
      } else if (this.config.transitions === 'outcomes' && !TERMINAL.has(r.state)) {
        status = 0; // progress, not wanted by this server
        code = 'PROGRESS_NOT_SENT';
      } else {
        const sent = await this.#post(report);
        status = sent.status;
        code = sent.code;
        if (status === 401 || status === 403 || status === 408 || status === 429 || status >= 500) {
          throw this.#refusal('report', status, undefined, new Uint8Array(0));
        }
      }
      await outbox.acknowledge(r.index);
      done++;
      this.#seen.delete(this.#key(r));
      if (status >= 200 && status < 300) {
        delivered++;
        this.#emit({ kind: 'delivered', record: r, signed: this.#signed });
      } else this.#emit({ kind: 'dropped', record: r, status, code });
    }
    return { delivered, remaining: pending.length - done };
  }

  async #post(
    report: ReturnType<typeof transitionReport>,
  ): Promise<{ status: number; code: string | undefined }> {
    const signer = this.#signed ? this.#signer() : undefined;
    const enc = await encodeForDelivery(report, signer);
    const res = await this.http.request('POST', '/d/v1/reports', {
      body: enc.bytes,
      contentType: enc.contentType,
      accept: 'application/json',
      maxBody: 16 * 1024,
    });
    if (res.status === 415 && enc.contentType !== SUIT_REPORT_CBOR) {
      // A server that does not take COSE-protected reports yet: the bare SUIT_Report over mutual TLS is still
      // authenticated and confidential (draft-ietf-suit-report §5; RFC 8446).
      this.#signed = false;
      return this.#post(report);
    }
    return { status: res.status, code: problemCode(res.contentType, res.body) };
  }
}

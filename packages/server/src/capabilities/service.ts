/**
 * The capability server (issue 8; seed 000 §1 "Remote Capability Server", §2 steps 3–4 and 7).
 *
 * Catalog: an author uploads a module (WebAssembly bytes + metadata). The server validates both, encrypts the
 * plaintext once (fresh content key, A128GCM), stores the ciphertext as a content-addressed blob and the content
 * key only wrapped under the content-key vault, like release payloads. The plaintext is not kept.
 *
 * Query (seed 000 steps 3–4): a device (identified by its mTLS certificate) names the capability it needs; the
 * server picks the newest module that is compatible (device class, firmware range), authorized by the device's
 * capability manifest, not revoked and whose dependencies are satisfiable, wraps the content key for that device
 * alone (ECDH-ES+A128KW to its registered key-agreement key, or A128KW under its KEK; ENC §4) and signs the
 * per-device module envelope with the capability-signing key. The ciphertext is fetched over the same mTLS channel.
 *
 * Capability manifests (per device group) and the module revocation list are signed by the capability-authority key.
 */
import { createPublicKey, randomUUID } from 'node:crypto';
import {
  Alg,
  asArray,
  asBytes,
  decode,
  decodeEncrypt,
  decryptContent,
  encode,
  encodeEncrypt,
  softwareVerifier,
} from '@rotor/cose';
import {
  buildModuleEnvelope,
  capabilityAuthorization,
  compareModuleVersion,
  createCapabilityManifest,
  createRevocationList,
  decodeModuleMetadata,
  encryptModule,
  formatModuleVersion,
  isCapabilityName,
  isTrustError,
  MODULE_METADATA_MAX_BYTES,
  sha256,
  verifyCapabilityManifest,
  versionInRange,
  type AuthorizedModule,
  type CapabilityManifestFields,
  type ModuleMetadata,
  type ModuleVersion,
} from '@rotor/trust';
import { decodeEnvelope, decodeReport, verifySignedReport, type SuitReport } from '@rotor/suit';
import { appendAudit, type Json } from '../audit.ts';
import { actorOf, authorize, SYSTEM, type Principal } from '../auth.ts';
import { one, type Db, type Queryable } from '../db/db.ts';
import { deviceRecipient, wrapForDevice } from '../encryption.ts';
import { ServerError } from '../errors.ts';
import type { ContentKeyVault } from '../keys.ts';
import { auditedTransaction, hex } from '../tx.ts';
import type { CapabilityKeys } from './keys.ts';

/** Largest module binary the catalog accepts (the device applies its own, usually smaller, policy). */
export const MAX_MODULE_BYTES = 4 * 1024 * 1024;
/** Upload body: CBOR [metadata: bstr, wasm: bstr]. */
export const MAX_MODULE_UPLOAD_BYTES = MAX_MODULE_BYTES + MODULE_METADATA_MAX_BYTES + 64;
export const MODULE_CONTENT_ALG = Alg.A128GCM;
/** Vendor domain of module envelopes (vendor-id = UUIDv5(DNS, it); devices check it, MF §8.4.8.1). */
export const DEFAULT_VENDOR_DOMAIN = 'rotor.example';
/** Validity of a published module revocation list; a list past half of it is re-issued when served. */
export const REVOCATION_VALIDITY_S = 7 * 86_400;
const MAX_DEPENDENCY_DEPTH = 8;
const MAX_CANDIDATES = 1000;
/** Largest module report accepted from a device. */
export const MAX_MODULE_REPORT_BYTES = 64 * 1024;
/**
 * Rotor extension members of a SUIT_Report (the device's tracker/report.ts; draft-ietf-suit-report §4 allows
 * extensions): -257 the transition, -258 the reason code, -259 a detail.
 */
const REPORT_TRANSITION = -257;
const REPORT_REASON = -258;
const REPORT_DETAIL = -259;

const u8 = (b: Uint8Array): Uint8Array => (b instanceof Buffer ? new Uint8Array(b) : b);

// The server compiles against lib es2024 without WebAssembly declarations; Node provides the global.
interface WasmApi {
  validate(bytes: Uint8Array): boolean;
  Module: (new (bytes: Uint8Array) => object) & {
    imports(m: object): { module: string; name: string; kind: string }[];
  };
}
const wasmApi = (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly;

export interface ModuleInfo {
  id: string;
  name: string;
  version: string;
  sequenceNumber: number;
  moduleSha256: string;
  moduleSize: number;
  ciphertextSha256: string;
  deviceClasses: string[];
  firmware: { min: string; max: string | null };
  dependencies: { name: string; min: string; max: string | null }[];
  imports: string[];
  revoked: boolean;
  revokeReason: string | null;
  uploadedBy: string;
  createdAtMs: number;
}

interface ModuleRow {
  id: string;
  name: string;
  version: string;
  sequence_number: number;
  metadata: Uint8Array;
  module_sha256: Uint8Array;
  module_size: number;
  ciphertext_sha256: Uint8Array;
  content_alg: number;
  enc_protected: Uint8Array;
  enc_unprotected: Uint8Array;
  cek_wrapped: Uint8Array;
  uploaded_by: string;
  created_at_ms: number | string;
  revoked_at_ms: number | string | null;
  revoke_reason: string | null;
}

const fmt = formatModuleVersion;

function moduleInfo(r: ModuleRow): ModuleInfo {
  const md = decodeModuleMetadata(u8(r.metadata));
  return {
    id: r.id,
    name: r.name,
    version: r.version,
    sequenceNumber: r.sequence_number,
    moduleSha256: hex(r.module_sha256),
    moduleSize: r.module_size,
    ciphertextSha256: hex(r.ciphertext_sha256),
    deviceClasses: [...md.deviceClasses],
    firmware: { min: fmt(md.firmware.min), max: md.firmware.max === undefined ? null : fmt(md.firmware.max) },
    dependencies: md.dependencies.map((d) => ({
      name: d.name,
      min: fmt(d.min),
      max: d.max === undefined ? null : fmt(d.max),
    })),
    imports: md.imports.map((i) => `${i.module}.${i.name}`),
    revoked: r.revoked_at_ms !== null,
    revokeReason: r.revoke_reason,
    uploadedBy: r.uploaded_by,
    createdAtMs: Number(r.created_at_ms),
  };
}

/** Parses "1.2.3" (request bodies). */
export function parseVersionText(s: string, what: string): ModuleVersion {
  const m = /^(\d{1,10})\.(\d{1,10})\.(\d{1,10})$/.exec(s);
  const v = m === null ? undefined : ([Number(m[1]), Number(m[2]), Number(m[3])] as const);
  if (v === undefined || v.some((x) => x > 0xffff_ffff))
    throw new ServerError('REQUEST_INVALID', `${what}: a version major.minor.patch is required`);
  return v;
}

function trustRefusal(e: unknown, code: 'CAP_MODULE_INVALID', what: string): never {
  if (isTrustError(e)) throw new ServerError(code, `${what}: ${e.code}: ${e.message}`, { cause: e });
  throw e;
}

/**
 * Static checks of an uploaded module (issue 8 "Bad input"): a valid WebAssembly binary whose imports are all
 * functions its metadata declares (the metadata's imports are its permissions, seed 000 §1). The device repeats
 * every check (it trusts no server); refusing here keeps unusable modules out of the catalog.
 */
function checkModule(wasm: Uint8Array, md: ModuleMetadata): void {
  if (wasm.length === 0 || wasm.length > MAX_MODULE_BYTES)
    throw new ServerError(
      'CAP_MODULE_INVALID',
      `module size ${wasm.length} is outside (0, ${MAX_MODULE_BYTES}]`,
    );
  if (!wasmApi.validate(wasm)) throw new ServerError('CAP_MODULE_INVALID', 'not a valid WebAssembly binary');
  const declared = new Set(md.imports.map((i) => `${i.module}\u0000${i.name}`));
  for (const imp of wasmApi.Module.imports(new wasmApi.Module(wasm))) {
    if (imp.kind !== 'function')
      throw new ServerError(
        'CAP_MODULE_INVALID',
        `import ${imp.module}.${imp.name} is a ${imp.kind}, not a function`,
      );
    if (!declared.has(`${imp.module}\u0000${imp.name}`))
      throw new ServerError(
        'CAP_MODULE_INVALID',
        `import ${imp.module}.${imp.name} is not declared in the module's metadata`,
      );
  }
}

/** Decodes the upload body CBOR [metadata bstr, wasm bstr] (bounded). */
export function decodeModuleUpload(body: Uint8Array): { metadataBytes: Uint8Array; wasm: Uint8Array } {
  try {
    const a = asArray(decode(body, { maxSize: MAX_MODULE_UPLOAD_BYTES, maxDepth: 2 }), 'upload', {
      min: 2,
      max: 2,
    });
    return {
      metadataBytes: asBytes(a[0], 'upload.metadata', { min: 1, max: MODULE_METADATA_MAX_BYTES }),
      wasm: asBytes(a[1], 'upload.wasm', { min: 1, max: MAX_MODULE_BYTES }),
    };
  } catch (e) {
    throw new ServerError('CAP_MODULE_INVALID', 'upload body must be CBOR [metadata: bstr, wasm: bstr]', {
      cause: e,
    });
  }
}

/**
 * A phase of a module rollout: the cumulative share of the target offered the module. The phase is held at least
 * durationMs; with a successThreshold it advances only once that fraction of the devices offered the module in
 * this phase reported it installed; with a failureThreshold, that fraction of them reporting failed or reverted
 * pauses the rollout (issue 8 "Operators roll modules out like firmware"; as rollouts.ts for firmware).
 */
export interface ModulePhase {
  percent: number;
  durationMs: number;
  successThreshold?: number;
  failureThreshold?: number;
}

export interface ModuleRolloutTarget {
  group?: string;
  tags?: string[];
  deviceIds?: string[];
  attributes?: Record<string, string>;
}

export type ModuleRolloutState = 'active' | 'paused' | 'cancelled' | 'completed';
export const MODULE_DEVICE_STATES = ['offered', 'installed', 'failed', 'reverted'] as const;
export type ModuleDeviceState = (typeof MODULE_DEVICE_STATES)[number];
/** Devices of a rollout (or of one phase) by their last state; total = every device offered the module. */
export type ModulePhaseCounts = Record<ModuleDeviceState, number> & { total: number };

export interface ModuleRolloutInfo {
  id: string;
  moduleId: string;
  target: ModuleRolloutTarget;
  phases: ModulePhase[];
  state: ModuleRolloutState;
  startedAtMs: number;
  /** The share of the target offered the module now (0 when cancelled). */
  currentPercent: number;
  currentPhase: number;
  phaseStartedAtMs: number;
  pauseReason: string | null;
  counts: ModulePhaseCounts;
  phaseCounts: ModulePhaseCounts[];
  createdBy: string;
}

interface RolloutRow {
  id: string;
  module_id: string;
  target: ModuleRolloutTarget;
  phases: ModulePhase[];
  state: ModuleRolloutState;
  started_at_ms: number | string;
  current_phase: number;
  phase_started_at_ms: number | string;
  pause_reason: string | null;
  created_by: string;
}

const emptyCounts = (): ModulePhaseCounts => ({ total: 0, offered: 0, installed: 0, failed: 0, reverted: 0 });

/** Cumulative percent reached `elapsedMs` after the start when every phase advances by time alone. */
export function rolloutPercent(phases: readonly ModulePhase[], elapsedMs: number): number {
  let acc = 0;
  for (const p of phases) {
    if (elapsedMs < acc + p.durationMs) return p.percent;
    acc += p.durationMs;
  }
  return 100;
}

/** A device's stable bucket 0..99 in a rollout (uniform, independent between rollouts). */
export function rolloutBucket(rolloutId: string, deviceId: string): number {
  return (
    sha256(new TextEncoder().encode(`${rolloutId}:${deviceId}`))
      .subarray(0, 4)
      .reduce((a, b) => a * 256 + b, 0) % 100
  );
}

/**
 * Where a rollout stands given its per-phase counts (pure: the service applies it under the rollout's row lock).
 * Failures first: a phase up to the current one whose (failed + reverted) / offered reaches its failureThreshold
 * pauses the rollout. Then the current phase advances while its duration has passed and its successThreshold (if
 * any) is met by the devices offered in it; past the last phase the rollout is completed.
 */
export function evaluateModuleRollout(
  r: {
    state: ModuleRolloutState;
    phases: readonly ModulePhase[];
    currentPhase: number;
    phaseStartedAtMs: number;
  },
  counts: readonly ModulePhaseCounts[],
  t: number,
):
  | { kind: 'unchanged' }
  | { kind: 'paused'; phase: number; reason: string }
  | { kind: 'advanced'; phase: number; phaseStartedAtMs: number; completed: boolean } {
  if (r.state !== 'active') return { kind: 'unchanged' };
  let phase = r.currentPhase;
  let start = r.phaseStartedAtMs;
  let moved = false;
  for (;;) {
    for (let i = 0; i <= phase; i++) {
      const th = r.phases[i]?.failureThreshold;
      const c = counts[i] ?? emptyCounts();
      const bad = c.failed + c.reverted;
      if (th !== undefined && bad > 0 && c.total > 0 && bad / c.total >= th)
        return {
          kind: 'paused',
          phase,
          reason: `phase ${i}: ${bad} of ${c.total} devices failed or reverted (threshold ${th})`,
        };
    }
    const spec = r.phases[phase];
    if (spec === undefined) return { kind: 'unchanged' };
    const c = counts[phase] ?? emptyCounts();
    const th = spec.successThreshold;
    const succeeded = th === undefined || (c.total > 0 && c.installed / c.total >= th);
    if (t - start < spec.durationMs || !succeeded)
      return moved
        ? { kind: 'advanced', phase, phaseStartedAtMs: start, completed: false }
        : { kind: 'unchanged' };
    if (phase + 1 >= r.phases.length)
      return { kind: 'advanced', phase, phaseStartedAtMs: start, completed: true };
    // A phase advanced by time alone keeps the schedule; one held by its threshold starts the next now.
    start = th === undefined ? start + spec.durationMs : t;
    phase++;
    moved = true;
  }
}

function thresholdOk(x: number | undefined): boolean {
  return x === undefined || (Number.isFinite(x) && x > 0 && x <= 1);
}

function validatePhases(phases: readonly ModulePhase[]): void {
  if (phases.length === 0 || phases.length > 16)
    throw new ServerError('REQUEST_INVALID', 'phases: 1..16 phases');
  let prev = 0;
  for (const [i, p] of phases.entries()) {
    if (!Number.isInteger(p.percent) || p.percent < 1 || p.percent > 100 || p.percent < prev)
      throw new ServerError('REQUEST_INVALID', `phases[${i}].percent must be 1..100 and non-decreasing`);
    prev = p.percent;
    if (!thresholdOk(p.successThreshold) || !thresholdOk(p.failureThreshold))
      throw new ServerError('REQUEST_INVALID', `phases[${i}]: thresholds are fractions in (0, 1]`);
  }
  if (prev !== 100) throw new ServerError('REQUEST_INVALID', 'the last phase reaches 100 percent');
}

interface TargetDevice {
  id: string;
  device_group: string | null;
  tags: string[];
  attributes: Record<string, string>;
}

function inTarget(t: ModuleRolloutTarget, d: TargetDevice): boolean {
  if (t.group !== undefined && d.device_group !== t.group) return false;
  if (t.tags !== undefined && !t.tags.every((x) => d.tags.includes(x))) return false;
  if (t.deviceIds !== undefined && !t.deviceIds.includes(d.id)) return false;
  if (t.attributes !== undefined && !Object.entries(t.attributes).every(([k, v]) => d.attributes[k] === v))
    return false;
  return true;
}

export interface PublicKeyInfo {
  kid: string;
  alg: number;
  spki: string;
}

export interface QueryInput {
  capability: string;
  firmwareVersion?: string;
  deviceClass?: string;
  /** Modules the device already runs (satisfy dependencies). */
  installed?: { name: string; version: string }[];
  /**
   * A module a live rollout offers the device (from `offers`): that module and no other. Its compatibility and
   * authorization are then the device's to judge — its manager refuses and reports `failed` with the reason, which
   * the rollout counts, as a firmware rollout counts a device that refuses its image.
   */
  moduleId?: string;
}

/** Most module rollout offers in one answer (the device asks again next cycle for the rest). */
export const MAX_MODULE_OFFERS = 16;

/** A module rollout that offers the device a module it does not run yet (`POST /d/v1/capabilities/offers`). */
export interface ModuleOffer {
  rolloutId: string;
  moduleId: string;
  name: string;
  version: string;
}

export interface QueryAnswer {
  moduleId: string;
  name: string;
  version: string;
  sequenceNumber: number;
  moduleSha256: string;
  /** The per-device module envelope (SUIT, base64). */
  envelope: string;
  /** The ciphertext: the envelope's uri; fetch it over the same mutual-TLS channel. */
  payloadUrl: string;
  /** Dependencies the device must also install (name and the version the server would pick). */
  requires: { name: string; version: string }[];
}

export interface ManifestIssueInput {
  group: string | null;
  modules: { name: string; minVersion?: string; maxVersion?: string; digests?: string[] }[];
}

export interface CapabilityServiceOptions {
  readonly keys?: CapabilityKeys;
  readonly vault?: ContentKeyVault;
  readonly now?: () => number;
  readonly vendorDomain?: string;
}

/** Devices per page when nudging the devices of a module rollout's phase. */
const NUDGE_PAGE = 500;

export type CapabilityService = ReturnType<typeof createCapabilityService>;

export function createCapabilityService(db: Db, opts: CapabilityServiceOptions = {}) {
  const now = opts.now ?? Date.now;
  const audited = auditedTransaction(db, now);
  const vendorDomain = opts.vendorDomain ?? DEFAULT_VENDOR_DOMAIN;

  function required(): { keys: CapabilityKeys; vault: ContentKeyVault } {
    if (opts.keys === undefined || opts.vault === undefined)
      throw new ServerError(
        'CAP_KEYS_UNAVAILABLE',
        'the capability server needs its capability-signing and authority keys and the content-key vault',
      );
    return { keys: opts.keys, vault: opts.vault };
  }

  /**
   * Push (RFC 9019 §3, as firmware rollouts: push.ts notifyRollout): rollouts that started, resumed or advanced
   * since the last nudge. The listener runs after the change is committed; a nudge of a rolled-back change only
   * makes a device check in early.
   */
  const moved = new Set<string>();
  let workListener: ((rolloutId: string) => void) | undefined;
  function nudgeMoved(): void {
    const ids = [...moved];
    moved.clear();
    if (workListener === undefined) return;
    for (const id of ids)
      try {
        workListener(id);
      } catch {
        // a listener's failure is not the rollout's: devices find the work on their next poll
      }
  }

  const payloadUrl = (ciphertextSha: Uint8Array): string =>
    `/d/v1/capabilities/payloads/${hex(ciphertextSha)}`;

  async function moduleRows(q: Queryable, name: string): Promise<ModuleRow[]> {
    return q.query<ModuleRow>(
      'SELECT * FROM capability_modules WHERE name = $1 ORDER BY created_at_ms LIMIT $2',
      [name, MAX_CANDIDATES],
    );
  }

  /** The capability manifest a device holds: its group's newest, else the default (group NULL) one. */
  async function manifestFor(q: Queryable, group: string | null): Promise<Uint8Array | undefined> {
    const r = await q.query<{ document: Uint8Array }>(
      `SELECT document FROM capability_manifests WHERE device_group = $1 OR device_group IS NULL
       ORDER BY (device_group IS NULL), version DESC LIMIT 1`,
      [group],
    );
    return r[0] === undefined ? undefined : u8(r[0].document);
  }

  /** Issues a new signed revocation list from the revoked rows (called inside a transaction). */
  async function publishRevocations(tx: Queryable, keys: CapabilityKeys): Promise<number> {
    await tx.query('LOCK TABLE capability_revocation_lists IN EXCLUSIVE MODE');
    const cur = await tx.query<{ v: number | null }>(
      'SELECT max(version) AS v FROM capability_revocation_lists',
    );
    const version = (cur[0]?.v ?? 0) + 1;
    const revoked = await tx.query<{ module_sha256: Uint8Array; revoke_reason: string | null }>(
      'SELECT DISTINCT ON (module_sha256) module_sha256, revoke_reason FROM capability_modules WHERE revoked_at_ms IS NOT NULL ORDER BY module_sha256',
    );
    const issuedAt = Math.floor(now() / 1000);
    const expiresAt = issuedAt + REVOCATION_VALIDITY_S;
    const doc = await createRevocationList(
      {
        version,
        issuedAt,
        expiresAt,
        entries: revoked.map((r) => ({
          digest: u8(r.module_sha256),
          ...(r.revoke_reason === null ? {} : { reason: r.revoke_reason.slice(0, 256) }),
        })),
      },
      keys.authority.signer,
    );
    await tx.query(
      'INSERT INTO capability_revocation_lists (version, document, expires_at, created_at_ms) VALUES ($1, $2, $3, $4)',
      [version, doc, expiresAt, now()],
    );
    return version;
  }

  /** Per-rollout counts, overall and per phase, for several rollouts in one query. */
  async function rolloutInfos(q: Queryable, rows: readonly RolloutRow[]): Promise<ModuleRolloutInfo[]> {
    const counted =
      rows.length === 0
        ? []
        : await q.query<{ rollout_id: string; phase: number; state: ModuleDeviceState; n: number }>(
            `SELECT rollout_id, phase, state, count(*)::int AS n FROM capability_rollout_devices
             WHERE rollout_id = ANY($1::text[]) GROUP BY rollout_id, phase, state`,
            [rows.map((r) => r.id)],
          );
    return rows.map((r) => {
      const counts = emptyCounts();
      const phaseCounts = r.phases.map(emptyCounts);
      for (const c of counted) {
        if (c.rollout_id !== r.id) continue;
        counts[c.state] += c.n;
        counts.total += c.n;
        const pc = phaseCounts[c.phase];
        if (pc !== undefined) {
          pc[c.state] += c.n;
          pc.total += c.n;
        }
      }
      const percent =
        r.state === 'cancelled'
          ? 0
          : r.state === 'completed'
            ? 100
            : (r.phases[r.current_phase]?.percent ?? 100);
      return {
        id: r.id,
        moduleId: r.module_id,
        target: r.target,
        phases: r.phases,
        state: r.state,
        startedAtMs: Number(r.started_at_ms),
        currentPercent: percent,
        currentPhase: r.current_phase,
        phaseStartedAtMs: Number(r.phase_started_at_ms),
        pauseReason: r.pause_reason,
        counts,
        phaseCounts,
        createdBy: r.created_by,
      };
    });
  }

  async function rolloutInfo(q: Queryable, r: RolloutRow): Promise<ModuleRolloutInfo> {
    return one(await rolloutInfos(q, [r]), 'rollout');
  }

  async function lockRollout(tx: Queryable, id: string): Promise<RolloutRow> {
    return one(
      await tx.query<RolloutRow>('SELECT * FROM capability_rollouts WHERE id = $1 FOR UPDATE', [id]),
      'rollout',
    );
  }

  /** Applies evaluateModuleRollout to a locked rollout row; returns the row as it is now. */
  async function evaluateLocked(tx: Queryable, r: RolloutRow): Promise<RolloutRow> {
    if (r.state !== 'active') return r;
    const info = await rolloutInfo(tx, r);
    const t = now();
    const e = evaluateModuleRollout(
      {
        state: r.state,
        phases: r.phases,
        currentPhase: r.current_phase,
        phaseStartedAtMs: Number(r.phase_started_at_ms),
      },
      info.phaseCounts,
      t,
    );
    const subject = `capability-rollout:${r.id}`;
    if (e.kind === 'unchanged') return r;
    if (e.kind === 'paused') {
      await appendAudit(
        tx,
        {
          actor: actorOf(SYSTEM),
          action: 'capability.rollout.autopause',
          subject,
          details: { phase: e.phase, reason: e.reason },
        },
        t,
      );
      return one(
        await tx.query<RolloutRow>(
          "UPDATE capability_rollouts SET state = 'paused', pause_reason = $2, current_phase = $3, updated_at_ms = $4 WHERE id = $1 RETURNING *",
          [r.id, e.reason, e.phase, t],
        ),
        'rollout',
      );
    }
    // A wider share: the devices of the new phase are nudged once the change is committed (push.ts).
    moved.add(r.id);
    await appendAudit(
      tx,
      {
        actor: actorOf(SYSTEM),
        action: e.completed ? 'capability.rollout.complete' : 'capability.rollout.advance',
        subject,
        details: { phase: e.phase },
      },
      t,
    );
    return one(
      await tx.query<RolloutRow>(
        'UPDATE capability_rollouts SET state = $2, current_phase = $3, phase_started_at_ms = $4, updated_at_ms = $5 WHERE id = $1 RETURNING *',
        [r.id, e.completed ? 'completed' : 'active', e.phase, e.phaseStartedAtMs, t],
      ),
      'rollout',
    );
  }

  /**
   * Brings active rollouts whose current phase has run its duration up to date (phases advance with time even
   * when no report arrives; the server needs no timer of its own for it). Cheap when nothing is due.
   */
  async function advanceDue(rows: readonly RolloutRow[]): Promise<RolloutRow[]> {
    const out: RolloutRow[] = [];
    for (const r of rows) {
      const spec = r.phases[r.current_phase];
      if (
        r.state !== 'active' ||
        spec === undefined ||
        now() - Number(r.phase_started_at_ms) < spec.durationMs
      ) {
        out.push(r);
        continue;
      }
      out.push(await db.transaction(async (tx) => evaluateLocked(tx, await lockRollout(tx, r.id))));
    }
    nudgeMoved();
    return out;
  }

  async function deviceRow(deviceId: string) {
    return one(
      await db.query<{
        device_group: string | null;
        attributes: Record<string, string>;
        ka_spki: Uint8Array | null;
        kek_wrapped: Uint8Array | null;
        id: string;
        tags: string[];
      }>('SELECT id, device_group, tags, attributes, ka_spki, kek_wrapped FROM devices WHERE id = $1', [
        deviceId,
      ]),
      'device',
    );
  }

  function selfOf(p: Principal): string {
    authorize(p, 'capability.query');
    if (p.kind !== 'device') throw new ServerError('FORBIDDEN', 'device listener');
    return p.deviceId;
  }

  /**
   * The newest rollout of each module (it governs who is offered the module), brought up to date, and the calling
   * device's part in each: `offered(moduleId)` is the rule of the README's table — active or completed: the target
   * up to the current phase's percent (stable per-device buckets) plus every device offered it before in this
   * rollout; paused: only devices that installed it (no new device); cancelled: nobody.
   */
  async function rolloutGate(dev: TargetDevice) {
    const rollouts = await advanceDue(
      await db.query<RolloutRow>(
        'SELECT DISTINCT ON (module_id) * FROM capability_rollouts ORDER BY module_id, started_at_ms DESC, id',
      ),
    );
    const gated = new Map(rollouts.map((r) => [r.module_id, r]));
    const mine = new Map(
      (
        await db.query<{ rollout_id: string; state: ModuleDeviceState }>(
          // By primary key (rollout_id, device_id): every device's cycle asks (offers).
          'SELECT rollout_id, state FROM capability_rollout_devices WHERE rollout_id = ANY($1::text[]) AND device_id = $2',
          [rollouts.map((r) => r.id), dev.id],
        )
      ).map((x) => [x.rollout_id, x.state]),
    );
    const offered = (moduleId: string): boolean => {
      const r = gated.get(moduleId);
      if (r === undefined) return true;
      const had = mine.get(r.id);
      switch (r.state) {
        case 'cancelled':
          return false;
        case 'paused':
          return had === 'installed';
        case 'completed':
          return had !== undefined || inTarget(r.target, dev);
        case 'active':
          return (
            had !== undefined ||
            (inTarget(r.target, dev) &&
              rolloutBucket(r.id, dev.id) < (r.phases[r.current_phase]?.percent ?? 100))
          );
      }
    };
    return { rollouts, gated, mine, offered };
  }

  async function quarantined(deviceId: string): Promise<boolean> {
    const st = await db.query<{ quarantined: boolean }>(
      'SELECT quarantined FROM device_policy_state WHERE device_id = $1',
      [deviceId],
    );
    return st[0]?.quarantined === true;
  }

  return {
    /**
     * The push half of module rollouts (RFC 9019 §3; issue 8 "roll modules out like firmware"): `fn` is told the
     * id of every module rollout that started, resumed or advanced (after the change is committed). The server
     * wires it to `nudgeRollout` over its notifier, like firmware rollouts' work listener.
     */
    setWorkListener(fn: ((rolloutId: string) => void) | undefined): void {
      workListener = fn;
    },

    /**
     * Nudges the devices a live module rollout offers its module to now and that have not reported it installed,
     * failed or reverted (the current phase's share of the target), page by page. Returns how many were nudged.
     */
    async nudgeRollout(rolloutId: string, notify: (deviceIds: string[]) => Promise<void>): Promise<number> {
      const r = (
        await db.query<RolloutRow>('SELECT * FROM capability_rollouts WHERE id = $1', [rolloutId])
      )[0];
      if (r === undefined || (r.state !== 'active' && r.state !== 'completed')) return 0;
      const percent = r.state === 'completed' ? 100 : (r.phases[r.current_phase]?.percent ?? 100);
      const done = new Set(
        (
          await db.query<{ device_id: string }>(
            "SELECT device_id FROM capability_rollout_devices WHERE rollout_id = $1 AND state <> 'offered'",
            [rolloutId],
          )
        ).map((x) => x.device_id),
      );
      let after = '';
      let n = 0;
      for (;;) {
        const rows = await db.query<TargetDevice>(
          `SELECT id, device_group, tags, attributes FROM devices
           WHERE enabled AND id > $1 AND ($2::text IS NULL OR device_group = $2) ORDER BY id LIMIT $3`,
          [after, r.target.group ?? null, NUDGE_PAGE],
        );
        const last = rows.at(-1);
        if (last === undefined) return n;
        after = last.id;
        const ids = rows
          .filter((d) => !done.has(d.id) && inTarget(r.target, d) && rolloutBucket(r.id, d.id) < percent)
          .map((d) => d.id);
        if (ids.length > 0) await notify(ids);
        n += ids.length;
      }
    },

    /**
     * Advances the active module rollouts whose current phase has run its duration (the server's rollout tick), so
     * a phase due by time widens its share — and nudges its devices — without waiting for a read or a report.
     */
    async tick(): Promise<void> {
      await advanceDue(
        await db.query<RolloutRow>("SELECT * FROM capability_rollouts WHERE state = 'active' LIMIT 1000"),
      );
    },

    /** Catalog upload (author): validates, encrypts once, stores ciphertext and wrapped key; audited. */
    async upload(p: Principal, body: Uint8Array): Promise<ModuleInfo> {
      authorize(p, 'capability.upload');
      const { vault } = required();
      const { metadataBytes, wasm } = decodeModuleUpload(body);
      let md: ModuleMetadata;
      try {
        md = decodeModuleMetadata(metadataBytes);
      } catch (e) {
        trustRefusal(e, 'CAP_MODULE_INVALID', 'metadata refused');
      }
      checkModule(wasm, md);
      const digest = sha256(wasm);
      const enc = encryptModule(wasm, MODULE_CONTENT_ALG);
      let cekWrapped: Uint8Array;
      try {
        cekWrapped = await vault.wrap(enc.cek);
      } finally {
        enc.cek.fill(0);
      }
      const ctSha = sha256(enc.ciphertext);
      const id = randomUUID();
      return audited(p, 'capability.upload', async (tx) => {
        await tx.query('LOCK TABLE capability_modules IN EXCLUSIVE MODE');
        const dup = await tx.query<{ id: string }>(
          'SELECT id FROM capability_modules WHERE name = $1 AND module_sha256 = $2',
          [md.name, digest],
        );
        if (dup[0] !== undefined)
          throw new ServerError('ALREADY_EXISTS', `this module binary is already module ${dup[0].id}`);
        const seq = await tx.query<{ n: number | null }>(
          'SELECT max(sequence_number) AS n FROM capability_modules WHERE name = $1',
          [md.name],
        );
        const sequenceNumber = (seq[0]?.n ?? 0) + 1;
        await tx.query(
          'INSERT INTO blobs (sha256, size, data, created_at_ms) VALUES ($1, $2, $3, $4) ON CONFLICT (sha256) DO NOTHING',
          [ctSha, enc.ciphertext.length, enc.ciphertext, now()],
        );
        const rows = await tx.query<ModuleRow>(
          `INSERT INTO capability_modules (id, name, version, sequence_number, metadata, module_sha256, module_size,
             ciphertext_sha256, content_alg, enc_protected, enc_unprotected, cek_wrapped, uploaded_by, created_at_ms)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) RETURNING *`,
          [
            id,
            md.name,
            fmt(md.version),
            sequenceNumber,
            metadataBytes,
            digest,
            wasm.length,
            ctSha,
            MODULE_CONTENT_ALG,
            enc.protectedBytes,
            encode(enc.unprotected),
            cekWrapped,
            actorOf(p),
            now(),
          ],
        );
        const info = moduleInfo(one(rows, 'module'));
        return {
          result: info,
          subject: `capability-module:${id}`,
          details: {
            name: info.name,
            version: info.version,
            sequenceNumber,
            moduleSha256: info.moduleSha256,
            ciphertextSha256: info.ciphertextSha256,
          },
        };
      });
    },

    async list(p: Principal, q: { name?: string; limit: number; after?: string }): Promise<ModuleInfo[]> {
      authorize(p, 'capability.read');
      const rows = await db.query<ModuleRow>(
        `SELECT * FROM capability_modules WHERE ($1::text IS NULL OR name = $1) AND ($2::text IS NULL OR id > $2)
         ORDER BY id LIMIT $3`,
        [q.name ?? null, q.after ?? null, q.limit],
      );
      return rows.map(moduleInfo);
    },

    async get(p: Principal, id: string): Promise<ModuleInfo> {
      authorize(p, 'capability.read');
      return moduleInfo(
        one(await db.query<ModuleRow>('SELECT * FROM capability_modules WHERE id = $1', [id]), 'module'),
      );
    },

    /**
     * Revokes a module (seed 000 step 7): it is never offered again and its digest goes on a newly signed module
     * revocation list, published in the same transaction.
     */
    async revoke(
      p: Principal,
      id: string,
      reason: string,
    ): Promise<ModuleInfo & { revocationListVersion: number }> {
      authorize(p, 'capability.revoke');
      const { keys } = required();
      return audited(p, 'capability.revoke', async (tx) => {
        const rows = await tx.query<ModuleRow>(
          'UPDATE capability_modules SET revoked_at_ms = $2, revoke_reason = $3 WHERE id = $1 AND revoked_at_ms IS NULL RETURNING *',
          [id, now(), reason],
        );
        if (rows[0] === undefined) {
          one(await tx.query('SELECT id FROM capability_modules WHERE id = $1', [id]), 'module');
          throw new ServerError('CONFLICT', 'the module is already revoked');
        }
        // The same binary uploaded under another id is the same digest: revoke every row of it.
        await tx.query(
          'UPDATE capability_modules SET revoked_at_ms = $2, revoke_reason = $3 WHERE module_sha256 = $1 AND revoked_at_ms IS NULL',
          [rows[0].module_sha256, now(), reason],
        );
        const version = await publishRevocations(tx, keys);
        const info = moduleInfo(rows[0]);
        return {
          result: { ...info, revocationListVersion: version },
          subject: `capability-module:${id}`,
          details: { moduleSha256: info.moduleSha256, reason, revocationListVersion: version },
        };
      });
    },

    /**
     * Issues a capability manifest for a device group (NULL: the default), signed by the capability-authority key,
     * listing the server's capability-signing key for the listed capabilities (seed 000 §1).
     */
    async issueManifest(
      p: Principal,
      input: ManifestIssueInput,
    ): Promise<{ version: number; group: string | null }> {
      authorize(p, 'capability.manifest');
      const { keys } = required();
      const modules: AuthorizedModule[] = input.modules.map((m, i) => {
        if (!isCapabilityName(m.name))
          throw new ServerError('REQUEST_INVALID', `modules[${i}].name is not a capability name`);
        const min =
          m.minVersion === undefined ? undefined : parseVersionText(m.minVersion, `modules[${i}].minVersion`);
        const max =
          m.maxVersion === undefined ? undefined : parseVersionText(m.maxVersion, `modules[${i}].maxVersion`);
        if (min !== undefined && max !== undefined && compareModuleVersion(min, max) > 0)
          throw new ServerError('REQUEST_INVALID', `modules[${i}]: minVersion above maxVersion`);
        return {
          name: m.name,
          ...(min === undefined ? {} : { minVersion: min }),
          ...(max === undefined ? {} : { maxVersion: max }),
          ...(m.digests === undefined
            ? {}
            : { digests: m.digests.map((d) => new Uint8Array(Buffer.from(d, 'hex'))) }),
        };
      });
      if (new Set(modules.map((m) => m.name)).size !== modules.length)
        throw new ServerError('REQUEST_INVALID', 'a capability is listed twice');
      return audited(p, 'capability.manifest', async (tx) => {
        await tx.query('LOCK TABLE capability_manifests IN EXCLUSIVE MODE');
        const cur = await tx.query<{ v: number | null }>(
          'SELECT max(version) AS v FROM capability_manifests',
        );
        const version = (cur[0]?.v ?? 0) + 1;
        const fields: CapabilityManifestFields = {
          version,
          issuedAt: Math.floor(now() / 1000),
          keys: [
            {
              key: keys.signing.coseKey,
              kid: keys.signing.kid,
              alg: keys.signing.alg,
              names: modules.length === 0 ? ['*'] : modules.map((m) => m.name),
            },
          ],
          modules,
        };
        let doc: Uint8Array;
        try {
          doc = await createCapabilityManifest(fields, keys.authority.signer);
        } catch (e) {
          if (isTrustError(e))
            throw new ServerError('REQUEST_INVALID', `capability manifest refused: ${e.message}`, {
              cause: e,
            });
          throw e;
        }
        await tx.query(
          'INSERT INTO capability_manifests (version, device_group, document, issued_by, created_at_ms) VALUES ($1, $2, $3, $4, $5)',
          [version, input.group, doc, actorOf(p), now()],
        );
        const details: { [k: string]: Json } = {
          group: input.group,
          modules: modules.map((m) => m.name),
          sha256: hex(sha256(doc)),
        };
        return {
          result: { version, group: input.group },
          subject: `capability-manifest:${version}`,
          details,
        };
      });
    },

    async listManifests(
      p: Principal,
    ): Promise<
      { version: number; group: string | null; issuedBy: string; createdAtMs: number; sha256: string }[]
    > {
      authorize(p, 'capability.read');
      const rows = await db.query<{
        version: number;
        device_group: string | null;
        issued_by: string;
        created_at_ms: number | string;
        document: Uint8Array;
      }>('SELECT * FROM capability_manifests ORDER BY version DESC LIMIT 1000');
      return rows.map((r) => ({
        version: r.version,
        group: r.device_group,
        issuedBy: r.issued_by,
        createdAtMs: Number(r.created_at_ms),
        sha256: hex(sha256(u8(r.document))),
      }));
    },

    /** Public keys for provisioning devices: kid (hex), COSE alg, SubjectPublicKeyInfo (DER, base64). */
    publicKeys(p: Principal): { signing: PublicKeyInfo; authority: PublicKeyInfo } {
      authorize(p, 'capability.read');
      const { keys } = required();
      const k = (c: CapabilityKeys['signing']): PublicKeyInfo => ({
        kid: hex(c.kid),
        alg: c.alg,
        spki: Buffer.from(c.spki).toString('base64'),
      });
      return { signing: k(keys.signing), authority: k(keys.authority) };
    },

    /**
     * Starts a phased rollout of a module: while it is active the module is offered only to devices of the target,
     * to the cumulative percent of the current phase (a stable per-device bucket); others keep getting the best
     * other module. A cancelled rollout offers the module to nobody. Without a rollout a module is offered to every
     * authorized, compatible device.
     */
    async createRollout(
      p: Principal,
      input: { moduleId: string; target: ModuleRolloutTarget; phases: ModulePhase[] },
    ): Promise<ModuleRolloutInfo> {
      authorize(p, 'capability.rollout');
      validatePhases(input.phases);
      const id = randomUUID();
      const info = await audited(p, 'capability.rollout', async (tx) => {
        const m = one(
          await tx.query<{ revoked_at_ms: unknown }>(
            'SELECT revoked_at_ms FROM capability_modules WHERE id = $1',
            [input.moduleId],
          ),
          'module',
        );
        if (m.revoked_at_ms !== null) throw new ServerError('CONFLICT', 'the module is revoked');
        const have = await tx.query(
          "SELECT id FROM capability_rollouts WHERE module_id = $1 AND state IN ('active', 'paused')",
          [input.moduleId],
        );
        if (have.length > 0) throw new ServerError('CONFLICT', 'the module already has a live rollout');
        const t = now();
        const rows = await tx.query<RolloutRow>(
          `INSERT INTO capability_rollouts (id, module_id, target, phases, state, started_at_ms, created_by, updated_at_ms,
             current_phase, phase_started_at_ms)
           VALUES ($1, $2, $3, $4, 'active', $5, $6, $5, 0, $5) RETURNING *`,
          [id, input.moduleId, JSON.stringify(input.target), JSON.stringify(input.phases), t, actorOf(p)],
        );
        // Phases of no duration and no threshold are passed at once.
        const r = await evaluateLocked(tx, one(rows, 'rollout'));
        return {
          result: await rolloutInfo(tx, r),
          subject: `capability-rollout:${id}`,
          details: {
            moduleId: input.moduleId,
            target: input.target as Json,
            phases: input.phases as unknown as Json,
          },
        };
      });
      // The first phase's devices are nudged (push.ts), as a firmware rollout's are.
      moved.add(id);
      nudgeMoved();
      return info;
    },

    /** Pause (active → paused: offered to no new device), resume (paused → active, the phase restarts), cancel. */
    async transitionRollout(
      p: Principal,
      id: string,
      action: 'pause' | 'resume' | 'cancel',
    ): Promise<ModuleRolloutInfo> {
      authorize(p, 'capability.rollout');
      const info = await audited(p, `capability.rollout.${action}`, async (tx) => {
        const r = await lockRollout(tx, id);
        const t = now();
        let rows: RolloutRow[];
        if (action === 'pause') {
          if (r.state !== 'active')
            throw new ServerError('CONFLICT', `a ${r.state} rollout cannot be paused`);
          rows = await tx.query<RolloutRow>(
            "UPDATE capability_rollouts SET state = 'paused', pause_reason = 'paused by operator', updated_at_ms = $2 WHERE id = $1 RETURNING *",
            [id, t],
          );
        } else if (action === 'resume') {
          if (r.state !== 'paused')
            throw new ServerError('CONFLICT', `a ${r.state} rollout cannot be resumed`);
          // The phase's time restarts: its devices get their full duration after a pause.
          rows = await tx.query<RolloutRow>(
            "UPDATE capability_rollouts SET state = 'active', pause_reason = NULL, phase_started_at_ms = $2, updated_at_ms = $2 WHERE id = $1 RETURNING *",
            [id, t],
          );
        } else {
          if (r.state !== 'active' && r.state !== 'paused')
            throw new ServerError('CONFLICT', 'the rollout is not active');
          rows = await tx.query<RolloutRow>(
            "UPDATE capability_rollouts SET state = 'cancelled', updated_at_ms = $2 WHERE id = $1 RETURNING *",
            [id, t],
          );
        }
        return { result: await rolloutInfo(tx, one(rows, 'rollout')), subject: `capability-rollout:${id}` };
      });
      // Resumed: the current phase's devices that have not installed it yet are nudged again.
      if (action === 'resume') moved.add(id);
      nudgeMoved();
      return info;
    },

    cancelRollout(p: Principal, id: string): Promise<ModuleRolloutInfo> {
      return this.transitionRollout(p, id, 'cancel');
    },

    async getRollout(p: Principal, id: string): Promise<ModuleRolloutInfo> {
      authorize(p, 'capability.read');
      const r = one(
        await db.query<RolloutRow>('SELECT * FROM capability_rollouts WHERE id = $1', [id]),
        'rollout',
      );
      return rolloutInfo(db, one(await advanceDue([r]), 'rollout'));
    },

    async listRollouts(p: Principal): Promise<ModuleRolloutInfo[]> {
      authorize(p, 'capability.read');
      const rows = await db.query<RolloutRow>(
        'SELECT * FROM capability_rollouts ORDER BY started_at_ms DESC LIMIT 1000',
      );
      return rolloutInfos(db, await advanceDue(rows));
    },

    // -------------------------------------------------------------------------------------------------------------
    // Device side (mutual TLS)

    /** The capability manifest of the calling device's group. */
    async deviceManifest(p: Principal): Promise<Uint8Array> {
      const dev = await deviceRow(selfOf(p));
      const doc = await manifestFor(db, dev.device_group);
      if (doc === undefined)
        throw new ServerError('CAP_MANIFEST_MISSING', 'no capability manifest issued for this device');
      return doc;
    },

    /** The newest module revocation list; re-issued when none exists or past half its validity (freshness). */
    async revocationList(p: Principal): Promise<Uint8Array> {
      selfOf(p);
      const latest = async (q: Queryable) =>
        (
          await q.query<{ document: Uint8Array; expires_at: number | string }>(
            'SELECT document, expires_at FROM capability_revocation_lists ORDER BY version DESC LIMIT 1',
          )
        )[0];
      const fresh = (r: { expires_at: number | string } | undefined): boolean =>
        r !== undefined && Number(r.expires_at) - Math.floor(now() / 1000) > REVOCATION_VALIDITY_S / 2;
      const have = await latest(db);
      if (have !== undefined && fresh(have)) return u8(have.document);
      const { keys } = required();
      return db.transaction(async (tx) => {
        await tx.query('LOCK TABLE capability_revocation_lists IN EXCLUSIVE MODE');
        const again = await latest(tx);
        if (again !== undefined && fresh(again)) return u8(again.document);
        const version = await publishRevocations(tx, keys);
        // Re-issued by the server itself (freshness), audited like an operator's change.
        await appendAudit(
          tx,
          {
            actor: actorOf(SYSTEM),
            action: 'capability.revocations.reissue',
            subject: `capability-revocation-list:${version}`,
          },
          now(),
        );
        const made = await latest(tx);
        return u8(one(made === undefined ? [] : [made], 'revocation list').document);
      });
    },

    /**
     * Module rollouts that reach devices without the device asking (issue 8 "roll modules out like firmware"): the
     * live rollouts that offer the calling device a module it does not run yet — active or completed, the device in
     * the target and the current phase's share (or offered before in this rollout), not reported installed, failed or
     * reverted in it, the module not revoked and newer than the version of that capability the device runs (it
     * refuses older sequence numbers anyway, MF §8.4.2). Newest version per capability, at most MAX_MODULE_OFFERS
     * (oldest rollout first; `more` says there are others). A quarantined device is offered nothing (issue 7).
     * The device fetches each with `query({capability, moduleId})`.
     */
    async offers(
      p: Principal,
      input: { installed?: { name: string; version: string }[] },
    ): Promise<{ offers: ModuleOffer[]; more: boolean }> {
      const deviceId = selfOf(p);
      if (await quarantined(deviceId)) return { offers: [], more: false };
      const dev = await deviceRow(deviceId);
      const installed = new Map<string, ModuleVersion>();
      for (const m of input.installed ?? [])
        installed.set(m.name, parseVersionText(m.version, `installed ${m.name}`));
      const { rollouts, mine, offered } = await rolloutGate(dev);
      const live = rollouts
        .filter((r) => r.state === 'active' || r.state === 'completed')
        .filter((r) => {
          const had = mine.get(r.id);
          return (had === undefined || had === 'offered') && offered(r.module_id);
        })
        .sort((a, b) => Number(a.started_at_ms) - Number(b.started_at_ms) || (a.id < b.id ? -1 : 1));
      if (live.length === 0) return { offers: [], more: false };
      const modules = new Map(
        (
          await db.query<ModuleRow>(
            'SELECT * FROM capability_modules WHERE id = ANY($1::text[]) AND revoked_at_ms IS NULL',
            [live.map((r) => r.module_id)],
          )
        ).map((m) => [m.id, m]),
      );
      const best = new Map<string, { r: RolloutRow; m: ModuleRow; v: ModuleVersion }>();
      for (const r of live) {
        const m = modules.get(r.module_id);
        if (m === undefined) continue;
        const v = decodeModuleMetadata(u8(m.metadata)).version;
        const have = installed.get(m.name);
        if (have !== undefined && compareModuleVersion(v, have) <= 0) continue;
        const cur = best.get(m.name);
        if (cur === undefined || compareModuleVersion(v, cur.v) > 0) best.set(m.name, { r, m, v });
      }
      const all = [...best.values()].map((b): ModuleOffer => ({
        rolloutId: b.r.id,
        moduleId: b.m.id,
        name: b.m.name,
        version: b.m.version,
      }));
      return { offers: all.slice(0, MAX_MODULE_OFFERS), more: all.length > MAX_MODULE_OFFERS };
    },

    /**
     * Seed 000 steps 3–4: picks the module for the calling device and returns its per-device envelope. Refusals are
     * typed: CAP_NOT_FOUND (no such capability), CAP_NOT_AUTHORIZED (not in the device's capability manifest),
     * CAP_INCOMPATIBLE (no module for its device class / firmware), CAP_DEPENDENCY_UNSATISFIED, CAP_MANIFEST_MISSING.
     */
    async query(p: Principal, input: QueryInput): Promise<QueryAnswer> {
      const deviceId = selfOf(p);
      const { keys, vault } = required();
      const dev = await deviceRow(deviceId);
      // A quarantined device gets nothing new (issue 7 policy engine: only remediation reaches it); it still gets
      // the manifest and the revocation list, which can only take capabilities away.
      if (await quarantined(deviceId))
        throw new ServerError('CAP_DEVICE_QUARANTINED', 'the device is quarantined: no module is offered');
      // The registry is authoritative for what it records (an operator set it); the body fills what it lacks.
      const deviceClass = dev.attributes.deviceClass ?? input.deviceClass;
      const fwText = dev.attributes.firmwareVersion ?? input.firmwareVersion;
      if (deviceClass === undefined || fwText === undefined)
        throw new ServerError(
          'REQUEST_INVALID',
          'the device class and firmware version are unknown: send them',
        );
      const firmware = parseVersionText(fwText, 'firmwareVersion');
      const manifestDoc = await manifestFor(db, dev.device_group);
      if (manifestDoc === undefined)
        throw new ServerError('CAP_MANIFEST_MISSING', 'no capability manifest issued for this device');
      const manifest = verifyCapabilityManifest(manifestDoc, {
        verifiers: [keys.authority.verifier],
        allowedAlgs: new Set([keys.authority.alg]),
      });
      const installed = new Map<string, ModuleVersion>();
      for (const m of input.installed ?? [])
        installed.set(m.name, parseVersionText(m.version, `installed ${m.name}`));

      const { gated, offered } = await rolloutGate(dev);
      type Pick = { row: ModuleRow; md: ModuleMetadata };
      const reasons = new Map<string, string>();
      const pick = async (
        name: string,
        depth: number,
        range?: { min: ModuleVersion; max?: ModuleVersion },
      ) => {
        const rows = await moduleRows(db, name);
        if (rows.length === 0) throw new ServerError('CAP_NOT_FOUND', `no module for capability ${name}`);
        const candidates: Pick[] = [];
        let why: 'incompatible' | 'unauthorized' | 'dependency' | 'revoked' | 'staged' | undefined;
        for (const row of rows) {
          const md = decodeModuleMetadata(u8(row.metadata));
          if (range !== undefined && !versionInRange(md.version, range.min, range.max)) continue;
          if (row.revoked_at_ms !== null) {
            why ??= 'revoked';
            continue;
          }
          // A module under an active rollout reaches only its target, phase by phase (issue 8 "targets, phases").
          if (!offered(row.id)) {
            why ??= 'staged';
            continue;
          }
          // issue 8 "compatible device classes and firmware versions"
          if (
            !md.deviceClasses.includes(deviceClass) ||
            !versionInRange(firmware, md.firmware.min, md.firmware.max)
          ) {
            why = why === 'unauthorized' || why === 'dependency' ? why : 'incompatible';
            continue;
          }
          // seed 000 §1: "a module whose key or name the manifest does not authorize is refused"
          const refusal = capabilityAuthorization(manifest, name, md.version, u8(row.module_sha256));
          if (refusal !== undefined) {
            reasons.set(name, refusal);
            why = why === 'dependency' ? why : 'unauthorized';
            continue;
          }
          candidates.push({ row, md });
        }
        candidates.sort(
          (a, b) =>
            compareModuleVersion(b.md.version, a.md.version) || b.row.sequence_number - a.row.sequence_number,
        );
        for (const c of candidates) {
          const deps = await satisfy(c.md, depth);
          if (deps !== undefined) return { chosen: c, deps };
          why = 'dependency';
        }
        const detail = reasons.get(name);
        switch (why) {
          case 'unauthorized':
            throw new ServerError(
              'CAP_NOT_AUTHORIZED',
              detail ?? `capability ${name} is not authorized for this device`,
            );
          case 'dependency':
            throw new ServerError(
              'CAP_DEPENDENCY_UNSATISFIED',
              `no module of ${name} has satisfiable dependencies`,
            );
          case 'revoked':
            throw new ServerError('CAP_REVOKED', `every module of ${name} in range is revoked`);
          case 'staged':
            throw new ServerError('CAP_NOT_FOUND', `no module of ${name} is rolled out to this device yet`);
          default:
            throw new ServerError(
              'CAP_INCOMPATIBLE',
              `no module of ${name} is compatible with device class ${deviceClass} and firmware ${fmt(firmware)}`,
              { extra: { deviceClass, firmwareVersion: fmt(firmware) } },
            );
        }
      };
      // Dependencies: satisfied by an installed version in range, or by a module the server would pick.
      const satisfy = async (
        md: ModuleMetadata,
        depth: number,
      ): Promise<{ name: string; version: string }[] | undefined> => {
        const out: { name: string; version: string }[] = [];
        for (const d of md.dependencies) {
          const have = installed.get(d.name);
          if (have !== undefined && versionInRange(have, d.min, d.max)) continue;
          if (depth >= MAX_DEPENDENCY_DEPTH) return undefined;
          try {
            const sub = await pick(d.name, depth + 1, {
              min: d.min,
              ...(d.max === undefined ? {} : { max: d.max }),
            });
            out.push(...sub.deps, { name: d.name, version: fmt(sub.chosen.md.version) });
          } catch (e) {
            if (e instanceof ServerError && e.code.startsWith('CAP_')) return undefined;
            throw e;
          }
        }
        return out;
      };
      /**
       * A rollout offer (`offers`): exactly that module, only while a live rollout offers it to this device (active
       * or completed, in its target and share; paused offers it to no new device, cancelled to nobody). Compatibility
       * and authorization are the device's to judge (its manager refuses typed and the device reports `failed`,
       * counted by the rollout); dependencies the server cannot satisfy are left to the device's refusal too.
       */
      const pinned = async (
        moduleId: string,
      ): Promise<{ chosen: Pick; deps: { name: string; version: string }[] }> => {
        const row = (
          await db.query<ModuleRow>('SELECT * FROM capability_modules WHERE id = $1 AND name = $2', [
            moduleId,
            input.capability,
          ])
        )[0];
        const r = gated.get(moduleId);
        if (
          row === undefined ||
          r === undefined ||
          (r.state !== 'active' && r.state !== 'completed') ||
          !offered(moduleId)
        )
          throw new ServerError(
            'CAP_NOT_FOUND',
            `no rollout offers module ${moduleId} of ${input.capability} to this device`,
          );
        if (row.revoked_at_ms !== null) throw new ServerError('CAP_REVOKED', `module ${moduleId} is revoked`);
        const md = decodeModuleMetadata(u8(row.metadata));
        return { chosen: { row, md }, deps: (await satisfy(md, 0)) ?? [] };
      };
      if (!isCapabilityName(input.capability))
        throw new ServerError('REQUEST_INVALID', 'capability is not a capability name');
      const { chosen, deps } =
        input.moduleId === undefined ? await pick(input.capability, 0) : await pinned(input.moduleId);

      // Per-device key wrap (ENC §4; seed 000 step 4 "encrypts it using a device-specific key").
      const { recipient, kek } = await deviceRecipient(dev, (w) => vault.unwrap(u8(w)));
      const row = chosen.row;
      const ciphertext = one(
        await db.query<{ data: Uint8Array }>('SELECT data FROM blobs WHERE sha256 = $1', [
          row.ciphertext_sha256,
        ]),
        'module ciphertext',
      ).data;
      const cek = await vault.unwrap(u8(row.cek_wrapped));
      let envelope: Uint8Array;
      try {
        const unprotected = decode(u8(row.enc_unprotected)) as Map<number, unknown>;
        const r = wrapForDevice(cek, recipient);
        const wasm = decryptContent(
          decodeEncrypt(
            encodeEncrypt({
              protectedBytes: u8(row.enc_protected),
              unprotected,
              ciphertext: null,
              recipients: [r],
            }),
          ),
          cek,
          u8(ciphertext),
          { allowedAlgs: new Set([MODULE_CONTENT_ALG]) },
        );
        // The stored ciphertext must still be the uploaded module before it is signed (GCM tag + digest).
        if (Buffer.compare(sha256(wasm), u8(row.module_sha256)) !== 0)
          throw new ServerError('INTERNAL', 'stored module does not match its digest');
        envelope = await buildModuleEnvelope({
          vendorDomain,
          metadata: chosen.md,
          wasm,
          encrypted: { protectedBytes: u8(row.enc_protected), unprotected, ciphertext: u8(ciphertext) },
          recipients: [r],
          sequenceNumber: row.sequence_number,
          signers: [keys.signing.signer],
          uri: payloadUrl(u8(row.ciphertext_sha256)),
        });
        wasm.fill(0);
      } finally {
        cek.fill(0);
        kek?.fill(0);
      }
      // Remember the envelope (its SUIT digest is what the device's report names, report §4 suit-reference) and,
      // under a live rollout, that this device was offered the module in the current phase.
      const digest = decodeEnvelope(envelope).digest.bytes;
      const r = gated.get(row.id);
      const live = r !== undefined && (r.state === 'active' || r.state === 'completed') ? r : undefined;
      await db.transaction(async (tx) => {
        await tx.query(
          `INSERT INTO capability_offers (manifest_digest, device_id, module_id, rollout_id, phase, created_at_ms)
           VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (manifest_digest) DO NOTHING`,
          [digest, deviceId, row.id, live?.id ?? null, live?.current_phase ?? null, now()],
        );
        if (live !== undefined)
          await tx.query(
            `INSERT INTO capability_rollout_devices (rollout_id, device_id, phase, state, updated_at_ms)
             VALUES ($1, $2, $3, 'offered', $4) ON CONFLICT (rollout_id, device_id) DO NOTHING`,
            [live.id, deviceId, live.current_phase, now()],
          );
      });
      return {
        moduleId: row.id,
        name: row.name,
        version: row.version,
        sequenceNumber: row.sequence_number,
        moduleSha256: hex(row.module_sha256),
        envelope: Buffer.from(envelope).toString('base64'),
        payloadUrl: payloadUrl(u8(row.ciphertext_sha256)),
        requires: deps,
      };
    },

    /**
     * A device's module-install report (draft-ietf-suit-report §4; signed with the device's registered report key
     * when it has one, §5 — the same rule as firmware reports, rollouts.ts). Its suit-reference digest names a
     * module envelope the server signed for this device; the Rotor transition member (-257) says installed, failed
     * (refused before it served: verification, health check), reverted (stopped after a fault and rolled back) or
     * unloaded (on request or revoked: history only). The outcome is recorded for the device, counted for the
     * module's rollout and the rollout re-evaluated in the same transaction (thresholds, auto-pause, phases).
     */
    async report(
      p: Principal,
      bytes: Uint8Array,
      opts: { signed?: boolean } = {},
    ): Promise<{ moduleId: string; rolloutId: string | null; state: ModuleDeviceState | 'unloaded' }> {
      const deviceId = selfOf(p);
      authorize(p, 'device.report');
      if (bytes.length > MAX_MODULE_REPORT_BYTES)
        throw new ServerError('PAYLOAD_TOO_LARGE', 'report too large');
      const key = one(
        await db.query<{ report_key_spki: Uint8Array | null; report_key_alg: number | null }>(
          'SELECT report_key_spki, report_key_alg FROM devices WHERE id = $1',
          [deviceId],
        ),
        'device',
      );
      let rep: SuitReport;
      if (opts.signed === true) {
        // Report §5: COSE_Sign1 verified with the key registered for this device, never one carried in the message.
        if (key.report_key_spki === null || key.report_key_alg === null)
          throw new ServerError('REPORT_KEY_MISSING', 'no report key is registered for this device');
        const verifier = softwareVerifier(
          createPublicKey({ key: Buffer.from(key.report_key_spki), format: 'der', type: 'spki' }),
          key.report_key_alg,
        );
        rep = verifySignedReport(bytes, verifier, new Set([key.report_key_alg]));
      } else {
        if (key.report_key_spki !== null)
          throw new ServerError('REPORT_SIGNATURE_REQUIRED', 'this device must sign its reports');
        rep = decodeReport(bytes);
      }
      const ext = (k: number): string | undefined => {
        const v = rep.extensions?.get(k);
        return typeof v === 'string' ? v : undefined;
      };
      const transition = ext(REPORT_TRANSITION);
      let state: ModuleDeviceState | 'unloaded';
      if (transition === undefined) state = rep.result === true ? 'installed' : 'failed';
      else if (
        transition === 'installed' ||
        transition === 'failed' ||
        transition === 'reverted' ||
        transition === 'unloaded'
      )
        state = transition;
      else
        throw new ServerError(
          'REQUEST_INVALID',
          'a module report is installed, failed, reverted or unloaded',
        );
      const reason = ext(REPORT_REASON)?.slice(0, 64) ?? null;
      const detail = ext(REPORT_DETAIL)?.slice(0, 256);
      const digest = rep.reference.digest.bytes;
      const t = now();
      const res = await db.transaction(async (tx) => {
        const offer = (
          await tx.query<{
            module_id: string;
            rollout_id: string | null;
            phase: number | null;
            name: string;
          }>(
            `SELECT o.module_id, o.rollout_id, o.phase, m.name FROM capability_offers o
             JOIN capability_modules m ON m.id = o.module_id WHERE o.manifest_digest = $1 AND o.device_id = $2`,
            [digest, deviceId],
          )
        )[0];
        if (offer === undefined)
          throw new ServerError(
            'CONFLICT',
            'no module envelope signed for this device has the reported digest',
          );
        // Lock order as for firmware: rollout row, then the device's rows.
        const r = offer.rollout_id === null ? undefined : await lockRollout(tx, offer.rollout_id);
        if (r !== undefined && state !== 'unloaded')
          await tx.query(
            `INSERT INTO capability_rollout_devices (rollout_id, device_id, phase, state, reason, updated_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (rollout_id, device_id) DO UPDATE SET state = $4, reason = $5, updated_at_ms = $6`,
            [r.id, deviceId, offer.phase ?? r.current_phase, state, reason, t],
          );
        await tx.query(
          `INSERT INTO capability_device_modules (device_id, name, module_id, state, reason, updated_at_ms)
           VALUES ($1, $2, $3, $4, $5, $6)
           ON CONFLICT (device_id, name) DO UPDATE SET module_id = $3, state = $4, reason = $5, updated_at_ms = $6`,
          [deviceId, offer.name, offer.module_id, state, reason, t],
        );
        await tx.query(
          "INSERT INTO device_events (device_id, rollout_id, at_ms, kind, details) VALUES ($1, $2, $3, 'capability.report', $4::jsonb)",
          [
            deviceId,
            offer.rollout_id,
            t,
            JSON.stringify({
              moduleId: offer.module_id,
              name: offer.name,
              state,
              manifestDigest: hex(digest),
              ...(reason === null ? {} : { reasonCode: reason }),
              ...(detail === undefined ? {} : { detail }),
            }),
          ],
        );
        if (r !== undefined) await evaluateLocked(tx, r);
        return { moduleId: offer.module_id, rolloutId: offer.rollout_id, state };
      });
      nudgeMoved();
      return res;
    },

    /** What each capability of a device last reported (operator view). */
    async deviceModules(
      p: Principal,
      deviceId: string,
    ): Promise<
      {
        name: string;
        moduleId: string;
        version: string;
        state: string;
        reason: string | null;
        updatedAtMs: number;
      }[]
    > {
      authorize(p, 'capability.read');
      const rows = await db.query<{
        name: string;
        module_id: string;
        version: string;
        state: string;
        reason: string | null;
        updated_at_ms: number | string;
      }>(
        `SELECT d.name, d.module_id, m.version, d.state, d.reason, d.updated_at_ms FROM capability_device_modules d
         JOIN capability_modules m ON m.id = d.module_id WHERE d.device_id = $1 ORDER BY d.name`,
        [deviceId],
      );
      return rows.map((r) => ({
        name: r.name,
        moduleId: r.module_id,
        version: r.version,
        state: r.state,
        reason: r.reason,
        updatedAtMs: Number(r.updated_at_ms),
      }));
    },

    /** A module ciphertext, to a device only (it is useless without the device's wrapped key). */
    async payload(p: Principal, sha256Hex: string): Promise<Uint8Array> {
      selfOf(p);
      const digest = new Uint8Array(Buffer.from(sha256Hex, 'hex'));
      const r = await db.query<{ data: Uint8Array }>(
        `SELECT b.data FROM blobs b WHERE b.sha256 = $1 AND EXISTS
           (SELECT 1 FROM capability_modules m WHERE m.ciphertext_sha256 = b.sha256 AND m.revoked_at_ms IS NULL)`,
        [digest],
      );
      return u8(one(r, 'module payload').data);
    },
  };
}

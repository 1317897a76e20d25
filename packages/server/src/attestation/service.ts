/**
 * The verifier (RFC 9334 §3: device = attester, enclave = attesting environment, server = verifier and relying
 * party) and the RoT orchestration of seed 001's DRoT sequence with seed 002's enclave.
 *
 * Appraisal of one piece of evidence (every outcome is stored as a signed result; nothing is silently dropped):
 *  - nonce      issued by this server to this device, unused, unexpired (RFC 9334 §10.2 nonce-based freshness)
 *  - signature  by a key of the device's recorded RoT chain (seed 002 step 3), and the chain's *current* key: a
 *               superseded or revoked RoT key is contraindicated (seed 001 DRoT step 8 "Revokes Old Root Key")
 *  - ueid       the device's recorded UEID (RFC 9711 §4.2.1): evidence for another device is contraindicated
 *  - profile    the claims parse under our EAT profile (RFC 9711 §4.3.2)
 *  - measurements every component digest (RFC 9783 §4.4.1 shape) is a reference value the server holds and is not
 *               revoked; the firmware is what the device should run (its last succeeded rollout) else warning
 *  - oemboot / dbgstat  RFC 9711 §4.2.8 / §4.2.9
 */
import {
  createHash,
  generateKeyPairSync,
  randomBytes,
  sign,
  timingSafeEqual,
  type KeyObject,
} from 'node:crypto';
import { Alg, CborMap, decode, decodeSign1, type Signer } from '@rotor/cose';
import {
  bytesEqual,
  createAttestationResult,
  DBGSTAT,
  evidenceDigest,
  hex,
  isTrustError,
  overallStatus,
  parseEvidenceClaims,
  peekEvidence,
  RotChain,
  verifyAttestationToken,
  type ArStatus,
  type ClaimAppraisal,
  type ParsedEvidence,
} from '@rotor/trust';
import { actorOf, authorize, type Principal } from '../auth.ts';
import type { Db, Queryable } from '../db/db.ts';
import { ServerError } from '../errors.ts';
import { auditedTransaction } from '../tx.ts';
import { deviceStateChanged, fingerprintOf } from '../device-auth.ts';
import { evaluateResult, periodicAttestationDue, type PolicyDocument } from './policy.ts';
import { nonceKeyOf, resultKeyPairOf } from './secret.ts';

/** RoT algorithms the verifier accepts (the enclave's ROT_ALGS). */
export const ROT_ALGS: ReadonlySet<number> = new Set<number>([Alg.ES256, Alg.EdDSA]);
export const NONCE_BYTES = 40;
/** Most nonces one request may ask for (POST /d/v1/attestation/nonces?count=). */
export const MAX_NONCES_PER_REQUEST = 64;
export const DEFAULT_NONCE_TTL_MS = 60_000;
export const MAX_CHAIN_RECORDS = 4096;
/** Most appraisals committed in one transaction (group commit). */
export const MAX_BATCH = 256;
export const MAX_CONCURRENT_BATCHES = 2;

export interface AttestationServiceOptions {
  readonly now?: () => number;
  /** Signs attestation results; default: a P-256 key generated at start (its public key is served). */
  readonly resultKey?: { signer: Signer; publicKey: KeyObject };
  readonly nonceTtlMs?: number;
  /**
   * Key that MACs the nonces (32 bytes). Default: derived from `secret`, else random per process (nonces then do
   * not survive a restart, and instances on one database do not accept each other's).
   */
  readonly nonceKey?: Uint8Array;
  /**
   * The verifier secret (secret.ts loadVerifierSecret: shared by every instance on the database, persistent): the
   * nonce MAC key and the result-signing key derive from it unless given explicitly.
   */
  readonly secret?: Uint8Array;
}

export interface AppraisalOutcome {
  readonly id: number;
  readonly deviceId: string;
  readonly status: ArStatus;
  readonly claims: Record<string, ClaimAppraisal>;
  readonly result: Uint8Array;
  readonly createdAtMs: number;
}

interface RotRow {
  device_id: string;
  ueid: Uint8Array;
  records: Uint8Array[];
  current_kid: Uint8Array;
  attest_requested: boolean;
  rotate_requested: boolean;
}

const sha256 = (b: Uint8Array): Uint8Array => new Uint8Array(createHash('sha256').update(b).digest());
const u8 = (b: Uint8Array): Uint8Array => (b instanceof Buffer ? new Uint8Array(b) : b);

/**
 * HMAC-SHA-256 (RFC 2104) with the padded keys' hash states computed once: the same MAC as `createHmac`, without
 * preparing the key on every call (measurable at thousands of nonces per second).
 */
export function hmacSha256(key: Uint8Array): (...parts: (Uint8Array | string)[]) => Uint8Array {
  const k = key.length > 64 ? sha256(key) : key;
  const ipad = Buffer.alloc(64);
  const opad = Buffer.alloc(64);
  for (let i = 0; i < 64; i++) {
    const b = k[i] ?? 0;
    ipad[i] = 0x36 ^ b;
    opad[i] = 0x5c ^ b;
  }
  const inner = createHash('sha256').update(ipad);
  const outer = createHash('sha256').update(opad);
  return (...parts) => {
    const h = inner.copy();
    for (const part of parts) h.update(part);
    return new Uint8Array(outer.copy().update(h.digest()).digest());
  };
}

/** The component digests of evidence, read without verifying it (never trusted: only what to look up). */
function peekDigests(token: Uint8Array): Uint8Array[] {
  try {
    const msg = decodeSign1(token, { tag: 'required', maxSize: 16 * 1024 });
    if (msg.payload === null) return [];
    const c = decode(msg.payload, { maxSize: 16 * 1024 });
    if (!(c instanceof CborMap)) return [];
    return parseEvidenceClaims(c).components.map((x) => x.digest);
  } catch {
    return [];
  }
}

/** Random bytes drawn from a pool refilled 4 KiB at a time (one CSPRNG call per 512 nonces). */
let pool = new Uint8Array(0);
let poolAt = 0;
function randomChunk(n: number): Uint8Array {
  if (poolAt + n > pool.length) {
    pool = new Uint8Array(randomBytes(4096));
    poolAt = 0;
  }
  const out = pool.slice(poolAt, poolAt + n);
  poolAt += n;
  return out;
}

/** An ECDSA signature from DER (SEQUENCE { INTEGER r, INTEGER s }) to IEEE P1363 (r ‖ s, `n` bytes each). */
export function derToP1363(der: Uint8Array, n: number): Uint8Array {
  let at = 2;
  if (der[0] !== 0x30) throw new Error('ECDSA signature: not a DER sequence');
  if ((der[1] ?? 0) & 0x80) at = 2 + ((der[1] ?? 0) & 0x7f);
  const out = new Uint8Array(2 * n);
  for (let k = 0; k < 2; k++) {
    if (der[at] !== 0x02) throw new Error('ECDSA signature: not a DER integer');
    const len = der[at + 1] ?? 0;
    let v = der.subarray(at + 2, at + 2 + len);
    while (v.length > n && v[0] === 0) v = v.subarray(1);
    if (v.length > n) throw new Error('ECDSA signature: integer too long');
    out.set(v, k * n + n - v.length);
    at += 2 + len;
  }
  return out;
}

function requireDevice(p: Principal): string {
  if (p.kind !== 'device') throw new ServerError('FORBIDDEN', 'device listener');
  return p.deviceId;
}

function softwareResultKey(pair?: { privateKey: KeyObject; publicKey: KeyObject }): {
  signer: Signer;
  publicKey: KeyObject;
} {
  const { privateKey, publicKey } = pair ?? generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  const spki = publicKey.export({ type: 'spki', format: 'der' });
  const kid = sha256(new Uint8Array(spki)).subarray(0, 16);
  return {
    publicKey,
    signer: {
      alg: Alg.ES256,
      kid,
      // The KeyObject passed bare (DER signature, converted): node:crypto's options-object path costs ~2.5× more.
      sign: (tbs) => Promise.resolve(derToP1363(sign('sha256', tbs, privateKey), 32)),
    },
  };
}

export type AttestationService = ReturnType<typeof createAttestationService>;

export function createAttestationService(db: Db, opts: AttestationServiceOptions = {}) {
  const now = opts.now ?? Date.now;
  const ttl = opts.nonceTtlMs ?? DEFAULT_NONCE_TTL_MS;
  const secret = opts.secret;
  const resultKey =
    opts.resultKey ?? softwareResultKey(secret === undefined ? undefined : resultKeyPairOf(secret));
  const nonceKey =
    opts.nonceKey ?? (secret === undefined ? new Uint8Array(randomBytes(32)) : nonceKeyOf(secret));
  const nonceHmac = hmacSha256(nonceKey);
  const audited = auditedTransaction(db, now);
  /** Verified chains by device: re-verified only when the stored chain changes. */
  const chains = new Map<string, { length: number; current: string; chain: RotChain }>();

  function chainOf(row: RotRow): RotChain {
    const c = chains.get(row.device_id);
    const cur = hex(row.current_kid);
    if (c?.length === row.records.length && c.current === cur) return c.chain;
    const chain = RotChain.verify(row.records.map(u8), {
      allowedAlgs: ROT_ALGS,
      maxLength: MAX_CHAIN_RECORDS,
    });
    chains.set(row.device_id, { length: row.records.length, current: cur, chain });
    return chain;
  }

  async function rotRow(q: Queryable, deviceId: string): Promise<RotRow | undefined> {
    const rows = await q.query<RotRow>(
      'SELECT device_id, ueid, records, current_kid, attest_requested, rotate_requested FROM device_rot WHERE device_id = $1',
      [deviceId],
    );
    return rows[0];
  }

  /**
   * The device reports its RoT chain (at provisioning, and after every rotation — also after a crash, whatever the
   * crash point: the device always sends the chain its enclave holds, so both sides converge on its current key).
   * First report: the chain is pinned (provisioning, trust on first use over the device's mTLS identity). Later:
   * the new chain must extend the recorded one record by record (seed 002 step 2: each new key signed by the old);
   * every superseded key goes on the revocation list (seed 001 DRoT step 8).
   */
  async function reportChain(
    p: Principal,
    body: { ueid: Uint8Array; records: Uint8Array[] },
  ): Promise<{ index: number; kid: string; revoked: number }> {
    const deviceId = requireDevice(p);
    if (body.records.length === 0 || body.records.length > MAX_CHAIN_RECORDS)
      throw new ServerError('REQUEST_INVALID', 'chain length out of bounds');
    if (body.ueid.length < 7 || body.ueid.length > 33)
      throw new ServerError('REQUEST_INVALID', 'ueid length');
    let chain: RotChain;
    try {
      chain = RotChain.verify(body.records, { allowedAlgs: ROT_ALGS, maxLength: MAX_CHAIN_RECORDS });
    } catch (e) {
      throw new ServerError(
        'REQUEST_INVALID',
        `RoT chain does not verify: ${isTrustError(e) ? e.code : 'error'}`,
        {
          cause: e,
        },
      );
    }
    return audited(p, 'device.rot.report', async (tx) => {
      const row = await rotRow(tx, deviceId);
      const t = now();
      let revoked = 0;
      if (row === undefined) {
        await tx.query(
          'INSERT INTO device_rot (device_id, ueid, records, current_kid, updated_at_ms) VALUES ($1, $2, $3, $4, $5)',
          [deviceId, body.ueid, chain.records, chain.current.kid, t],
        );
      } else {
        if (!bytesEqual(u8(row.ueid), body.ueid))
          throw new ServerError('CONFLICT', 'ueid differs from the recorded one');
        const known = row.records.map(u8);
        // Seed 002 step 2: the recorded chain must be a prefix of the reported one (same pinned first RoT).
        if (known.length > chain.length || !known.every((r, i) => bytesEqual(r, chain.records[i]!)))
          throw new ServerError('CONFLICT', 'reported RoT chain does not extend the recorded chain');
        if (known.length < chain.length) {
          for (const k of chain.keys.slice(known.length - 1, chain.length - 1)) {
            await tx.query(
              `INSERT INTO rot_revocations (kid, device_id, reason, revoked_at_ms) VALUES ($1, $2, 'superseded', $3)
               ON CONFLICT (kid) DO NOTHING`,
              [k.kid, deviceId, t],
            );
            revoked++;
          }
          await tx.query(
            `UPDATE device_rot SET records = $2, current_kid = $3, rotate_requested = false, updated_at_ms = $4
             WHERE device_id = $1`,
            [deviceId, chain.records, chain.current.kid, t],
          );
        }
      }
      return {
        result: { index: chain.current.index, kid: hex(chain.current.kid), revoked },
        subject: `device:${deviceId}`,
        details: { rotIndex: chain.current.index, rotKid: hex(chain.current.kid), revoked },
      };
    });
  }

  async function pending(p: Principal): Promise<{ attest: boolean; rotate: boolean; enrolled: boolean }> {
    const deviceId = requireDevice(p);
    const row = await rotRow(db, deviceId);
    // Periodic attestation by policy ("attestation": {"everyMs"}): due when the last result is older.
    const due =
      row !== undefined && !row.attest_requested && (await periodicAttestationDue(db, deviceId, now()));
    return {
      attest: (row?.attest_requested ?? false) || due,
      rotate: row?.rotate_requested ?? false,
      enrolled: row !== undefined,
    };
  }

  /**
   * A fresh single-use nonce (RFC 9711 §4.1 eat_nonce; RFC 9334 §10.2), stateless until used:
   *   nonce = expiry (8, ms, big-endian) ‖ random (8) ‖ device tag (8) ‖ MAC (16)
   * device tag = HMAC-SHA-256(key, "device" ‖ device id)[0..8], MAC = HMAC-SHA-256(key, first 24 bytes)[0..16].
   * Issuing costs no storage; single use is enforced when the evidence arrives (the nonce's SHA-256 is inserted
   * into attestation_nonces, unique) so a nonce can be consumed once within its lifetime.
   */
  async function issueNonce(p: Principal): Promise<{ nonce: Uint8Array; expiresAtMs: number }> {
    const deviceId = requireDevice(p);
    const expiresAtMs = now() + ttl;
    const nonce = new Uint8Array(NONCE_BYTES);
    new DataView(nonce.buffer).setBigUint64(0, BigInt(expiresAtMs));
    nonce.set(randomChunk(8), 8);
    nonce.set(deviceTag(deviceId), 16);
    nonce.set(nonceMac(nonce.subarray(0, 24)), 24);
    return Promise.resolve({ nonce, expiresAtMs });
  }

  /**
   * Up to MAX_NONCES_PER_REQUEST nonces at once (issue 7 throughput: one round trip for several attestations).
   * Each is the same stateless single-use nonce as issueNonce's — its own random part and MAC, the same short
   * lifetime — so a batch grants nothing a device could not get by asking that many times.
   */
  async function issueNonces(
    p: Principal,
    count: number,
  ): Promise<{ nonces: Uint8Array[]; expiresAtMs: number }> {
    const deviceId = requireDevice(p);
    if (!Number.isSafeInteger(count) || count < 1 || count > MAX_NONCES_PER_REQUEST)
      throw new ServerError('REQUEST_INVALID', `count must be 1..${MAX_NONCES_PER_REQUEST}`);
    const expiresAtMs = now() + ttl;
    const tag = deviceTag(deviceId);
    const nonces: Uint8Array[] = [];
    for (let i = 0; i < count; i++) {
      const nonce = new Uint8Array(NONCE_BYTES);
      new DataView(nonce.buffer).setBigUint64(0, BigInt(expiresAtMs));
      nonce.set(randomChunk(8), 8);
      nonce.set(tag, 16);
      nonce.set(nonceMac(nonce.subarray(0, 24)), 24);
      nonces.push(nonce);
    }
    return Promise.resolve({ nonces, expiresAtMs });
  }

  /** Device tags by device (an HMAC per device, not per nonce); bounded. */
  const tags = new Map<string, Uint8Array>();
  function deviceTag(deviceId: string): Uint8Array {
    let tag = tags.get(deviceId);
    if (tag === undefined) {
      tag = nonceHmac('device', deviceId).subarray(0, 8);
      if (tags.size >= 65_536) tags.clear();
      tags.set(deviceId, tag);
    }
    return tag;
  }
  function nonceMac(head: Uint8Array): Uint8Array {
    return nonceHmac(head).subarray(0, 16);
  }

  /** The nonce's own checks (RFC 9334 §10.2): issued by this verifier (MAC), to this device, unexpired. */
  function checkNonce(
    nonce: Uint8Array,
    deviceId: string,
    t: number,
  ): ClaimAppraisal & { expiresAtMs: number } {
    if (nonce.length !== NONCE_BYTES || !sameBytes(nonceMac(nonce.subarray(0, 24)), nonce.subarray(24)))
      return { status: 'contraindicated', reason: 'nonce was not issued by this verifier', expiresAtMs: 0 };
    const expiresAtMs = Number(new DataView(nonce.buffer, nonce.byteOffset).getBigUint64(0));
    if (!sameBytes(deviceTag(deviceId), nonce.subarray(16, 24)))
      return { status: 'contraindicated', reason: 'nonce was issued to another device', expiresAtMs };
    if (expiresAtMs < t)
      return { status: 'contraindicated', reason: 'nonce expired: stale evidence', expiresAtMs };
    return { status: 'affirming', reason: 'fresh, single use', expiresAtMs };
  }

  /** Reference-value facts for a batch: per digest (hex) known / revoked, per device the expected payloads. */
  interface Facts {
    digests: Map<string, { known: boolean; revoked: boolean }>;
    expected: Map<string, Uint8Array[]>;
  }

  async function measurementFacts(q: Queryable, digests: Uint8Array[], deviceIds: string[]): Promise<Facts> {
    const facts: Facts = { digests: new Map(), expected: new Map() };
    if (digests.length > 0 || deviceIds.length > 0) {
      // One round trip for every component digest of the batch: known (a release payload or a reference value) and
      // revoked; and per device the payloads of its last succeeded rollout (what it should run).
      const rows = await q.query<{
        d: Uint8Array | null;
        known: boolean;
        revoked: boolean;
        dev: string | null;
        expected: Uint8Array[] | null;
      }>(
        `SELECT u.d, EXISTS (SELECT 1 FROM release_payloads WHERE sha256 = u.d)
                  OR EXISTS (SELECT 1 FROM attestation_reference_values WHERE sha256 = u.d) AS known,
                EXISTS (SELECT 1 FROM revoked_digests WHERE sha256 = u.d) AS revoked,
                NULL::text AS dev, NULL::bytea[] AS expected
           FROM unnest($1::bytea[]) AS u(d)
         UNION ALL
         SELECT NULL, false, false, x.dev,
                array(SELECT rp.sha256 FROM release_payloads rp WHERE rp.release_id = (
                  SELECT r.release_id FROM rollout_devices rd JOIN rollouts r ON r.id = rd.rollout_id
                  WHERE rd.device_id = x.dev AND rd.state = 'succeeded' ORDER BY rd.updated_at_ms DESC LIMIT 1))
           FROM unnest($2::text[]) AS x(dev)`,
        [digests, deviceIds],
      );
      for (const r of rows) {
        if (r.d !== null) facts.digests.set(hex(u8(r.d)), { known: r.known, revoked: r.revoked });
        else if (r.dev !== null) facts.expected.set(r.dev, (r.expected ?? []).map(u8));
      }
    }
    return facts;
  }

  function appraiseMeasurements(facts: Facts, deviceId: string, ev: ParsedEvidence): ClaimAppraisal {
    const bad: string[] = [];
    for (const c of ev.components) {
      const f = facts.digests.get(hex(c.digest));
      if (f === undefined) throw new ServerError('INTERNAL', 'appraisal query');
      if (f.revoked) bad.push(`${c.type}@${c.version}: digest ${hex(c.digest).slice(0, 16)}… is revoked`);
      else if (!f.known)
        bad.push(`${c.type}@${c.version}: digest ${hex(c.digest).slice(0, 16)}… matches no reference value`);
    }
    if (bad.length > 0) return { status: 'contraindicated', reason: bad.join('; ') };
    const expected = facts.expected.get(deviceId) ?? [];
    if (expected.length > 0) {
      const fw = ev.components.filter((c) => c.type === 'fw');
      if (!fw.some((c) => expected.some((e) => bytesEqual(e, c.digest))))
        return { status: 'warning', reason: 'firmware is known but not the release the server expects' };
    }
    return { status: 'affirming', reason: `${ev.components.length} component(s) match reference values` };
  }

  /**
   * Used nonces are kept only while they could still be replayed (their MAC'd expiry refuses them after); at most
   * once per nonce lifetime the expired ones are deleted.
   */
  let lastCleanup = 0;
  function cleanupNonces(t: number): void {
    if (t - lastCleanup < ttl) return;
    lastCleanup = t;
    void db.query('DELETE FROM attestation_nonces WHERE expires_at_ms < $1', [t]).catch(() => {
      lastCleanup = 0;
    });
  }

  /** One piece of evidence waiting for its batch. */
  interface Pending {
    readonly deviceId: string;
    readonly token: Uint8Array;
    readonly peek: { nonce: Uint8Array; kid: Uint8Array };
    /** Component digests read from the (not yet verified) claims: only to fetch their reference facts early. */
    readonly digests: readonly Uint8Array[];
    readonly t: number;
    /** The certificate fingerprint the request was authenticated by (its standing is checked in the batch). */
    readonly fingerprint: Uint8Array | undefined;
    readonly resolve: (o: AppraisalOutcome) => void;
    readonly reject: (e: unknown) => void;
  }
  const queue: Pending[] = [];
  let flushScheduled = false;

  /**
   * Appraises evidence from the calling device (RFC 9334 §3.2) and stores the signed result (§3.3). Group commit:
   * the evidence that arrives within one event-loop turn is appraised in one transaction (nonce uses and results
   * inserted together, reference values read once); each caller is answered after its batch commits. Should a
   * batch fail, each of its appraisals is retried alone, so one bad appraisal never fails another.
   */
  async function appraise(p: Principal, token: Uint8Array): Promise<AppraisalOutcome> {
    const deviceId = requireDevice(p);
    let peek: { nonce: Uint8Array; kid: Uint8Array };
    try {
      peek = peekEvidence(token);
    } catch (e) {
      throw new ServerError('REQUEST_BODY_MALFORMED', 'evidence is not a COSE_Sign1 EAT', { cause: e });
    }
    const t = now();
    cleanupNonces(t);
    return new Promise<AppraisalOutcome>((resolve, reject) => {
      queue.push({
        deviceId,
        token,
        peek,
        digests: peekDigests(token),
        t,
        fingerprint: fingerprintOf(p),
        resolve,
        reject,
      });
      scheduleFlush();
    });
  }

  /**
   * At most MAX_CONCURRENT_BATCHES transactions at once: evidence arriving meanwhile waits for the next batch
   * (fewer, larger transactions — fewer round trips and commits).
   */
  let batchesInFlight = 0;
  function scheduleFlush(): void {
    if (flushScheduled || queue.length === 0 || batchesInFlight >= MAX_CONCURRENT_BATCHES) return;
    flushScheduled = true;
    setImmediate(flush);
  }

  function flush(): void {
    flushScheduled = false;
    while (queue.length > 0 && batchesInFlight < MAX_CONCURRENT_BATCHES) {
      const batch = queue.splice(0, MAX_BATCH);
      batchesInFlight++;
      void runBatch(batch).finally(() => {
        batchesInFlight--;
        scheduleFlush();
      });
    }
  }

  async function runBatch(batch: Pending[]): Promise<void> {
    try {
      const outs = await appraiseBatch(batch);
      for (const [j, it] of batch.entries()) {
        const o = outs[j]!;
        if (o instanceof ServerError) it.reject(o);
        else it.resolve(o);
      }
    } catch (e) {
      if (batch.length === 1) batch[0]!.reject(e);
      else
        await Promise.all(
          batch.map(async (it) => {
            try {
              const o = (await appraiseBatch([it]))[0]!;
              if (o instanceof ServerError) it.reject(o);
              else it.resolve(o);
            } catch (err) {
              it.reject(err);
            }
          }),
        );
    }
  }

  async function appraiseBatch(items: readonly Pending[]): Promise<(AppraisalOutcome | ServerError)[]> {
    const after = { disabled: false, confirming: new Set<string>() };
    const outs = await db.transaction(async (tx) => {
      // Nonce: issued by this verifier to this device, unexpired, and single use — consumed atomically by the
      // unique insert of its digest (RFC 9334 §10.2); the same nonce twice in one batch: the second is a replay.
      const claimsOf = items.map((): Record<string, ClaimAppraisal> => ({}));
      const nonceDigests = items.map((it) => sha256(it.peek.nonce));
      const insert: number[] = [];
      const seen = new Set<string>();
      const replayed = new Set<number>();
      for (const [i, it] of items.entries()) {
        const nc = checkNonce(it.peek.nonce, it.deviceId, it.t);
        claimsOf[i]!.nonce = { status: nc.status, reason: nc.reason };
        if (nc.status !== 'affirming') continue;
        const h = hex(nonceDigests[i]!);
        if (seen.has(h)) replayed.add(i);
        else {
          seen.add(h);
          insert.push(i);
        }
      }
      // One round trip: consume the nonces, and read the devices' RoT rows, the revocation status of every
      // presented key, the current policy, and the reference facts of every component digest the evidence names.
      const deviceIds = [...new Set(items.map((it) => it.deviceId))];
      const digestSet = new Map<string, Uint8Array>();
      for (const it of items) for (const d of it.digests) digestSet.set(hex(d), d);
      const rows = await tx.query<{
        k: 'n' | 'r' | 's' | 'v' | 'p' | 'd' | 'e';
        b: Uint8Array | null;
        dev: string | null;
        ueid: Uint8Array | null;
        records: Uint8Array[] | null;
        f1: boolean | null;
        f2: boolean | null;
        version: number | null;
        rules: PolicyDocument | string | null;
      }>(
        `WITH ins AS (
           INSERT INTO attestation_nonces (nonce_sha256, device_id, issued_at_ms, expires_at_ms, used_at_ms)
           SELECT n, d, t, e, t FROM unnest($1::bytea[], $2::text[], $3::int8[], $4::int8[]) AS u(n, d, t, e)
           ON CONFLICT (nonce_sha256) DO NOTHING RETURNING nonce_sha256)
         SELECT 'n' AS k, nonce_sha256 AS b, NULL::text AS dev, NULL::bytea AS ueid, NULL::bytea[] AS records,
                NULL::boolean AS f1, NULL::boolean AS f2, NULL::integer AS version, NULL::jsonb AS rules FROM ins
         UNION ALL
         SELECT 'r', current_kid, device_id, ueid, records, attest_requested, rotate_requested, NULL, NULL
           FROM device_rot WHERE device_id = ANY($5::text[])
         UNION ALL
         SELECT 's', cert_sha256, id, NULL, NULL, enabled, NULL, NULL, NULL FROM devices WHERE id = ANY($5::text[])
         UNION ALL
         SELECT 'v', kid, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM rot_revocations WHERE kid = ANY($6::bytea[])
         UNION ALL
         (SELECT 'p', NULL, NULL, NULL, NULL, NULL, NULL, version, rules FROM policies ORDER BY version DESC LIMIT 1)
         UNION ALL
         SELECT 'd', u.d, NULL, NULL, NULL,
                EXISTS (SELECT 1 FROM release_payloads WHERE sha256 = u.d)
                  OR EXISTS (SELECT 1 FROM attestation_reference_values WHERE sha256 = u.d),
                EXISTS (SELECT 1 FROM revoked_digests WHERE sha256 = u.d), NULL, NULL
           FROM unnest($7::bytea[]) AS u(d)
         UNION ALL
         SELECT 'e', NULL, x.dev, NULL,
                array(SELECT rp.sha256 FROM release_payloads rp WHERE rp.release_id = COALESCE(w.release_id, (
                  SELECT r.release_id FROM rollout_devices rd JOIN rollouts r ON r.id = rd.rollout_id
                  WHERE rd.device_id = x.dev AND rd.state = 'succeeded' ORDER BY rd.updated_at_ms DESC LIMIT 1))),
                w.release_id IS NOT NULL, NULL, NULL, NULL
           FROM unnest($5::text[]) AS x(dev)
           LEFT JOIN LATERAL (
             -- Issue 7: an update confirmed on the device and waiting for this attestation: its release is what the
             -- device should now run (rollouts.ts confirmation gate).
             SELECT r.release_id FROM rollout_devices rd JOIN rollouts r ON r.id = rd.rollout_id
             WHERE rd.device_id = x.dev AND rd.active AND rd.state = 'in_progress' AND EXISTS (
               SELECT 1 FROM device_events e
               WHERE e.device_id = x.dev AND e.rollout_id = rd.rollout_id AND e.kind = 'attestation-pending')
             LIMIT 1) w ON true`,
        [
          insert.map((i) => nonceDigests[i]!),
          insert.map((i) => items[i]!.deviceId),
          insert.map((i) => items[i]!.t),
          insert.map((i) => checkNonce(items[i]!.peek.nonce, items[i]!.deviceId, items[i]!.t).expiresAtMs),
          deviceIds,
          items.map((it) => it.peek.kid),
          [...digestSet.values()],
        ],
      );
      const fresh = new Set<string>();
      const rowOf = new Map<string, RotRow>();
      const revokedKids = new Set<string>();
      const facts: Facts = { digests: new Map(), expected: new Map() };
      let pol: { version: number; doc: PolicyDocument } | null = null;
      const standing = new Map<string, { fp: Uint8Array; enabled: boolean }>();
      for (const r of rows) {
        if (r.k === 's' && r.dev !== null && r.b !== null)
          standing.set(r.dev, { fp: u8(r.b), enabled: r.f1 === true });
        if (r.k === 'n' && r.b !== null) fresh.add(hex(u8(r.b)));
        else if (r.k === 'r' && r.dev !== null && r.b !== null && r.ueid !== null && r.records !== null)
          rowOf.set(r.dev, {
            device_id: r.dev,
            ueid: r.ueid,
            records: r.records,
            current_kid: r.b,
            attest_requested: r.f1 === true,
            rotate_requested: r.f2 === true,
          });
        else if (r.k === 'v' && r.b !== null) revokedKids.add(hex(u8(r.b)));
        else if (r.k === 'p' && r.version !== null && r.rules !== null)
          pol = {
            version: r.version,
            doc: typeof r.rules === 'string' ? (JSON.parse(r.rules) as PolicyDocument) : r.rules,
          };
        else if (r.k === 'd' && r.b !== null)
          facts.digests.set(hex(u8(r.b)), { known: r.f1 === true, revoked: r.f2 === true });
        else if (r.k === 'e' && r.dev !== null) {
          facts.expected.set(r.dev, (r.records ?? []).map(u8));
          if (r.f1 === true) after.confirming.add(r.dev);
        }
      }
      for (const i of insert) if (!fresh.has(hex(nonceDigests[i]!))) replayed.add(i);
      // The device's standing, checked here rather than by a cross-instance sync round trip at authentication
      // (the route defers it: device-auth.ts): enabled, and still registered with the certificate the request was
      // authenticated by — the same refusals as the authentication's. A refused item stores no result (its nonce
      // stays consumed).
      const refused = new Map<number, ServerError>();
      for (const [i, it] of items.entries()) {
        const st = standing.get(it.deviceId);
        if (st === undefined || !st.enabled)
          refused.set(i, new ServerError('DEVICE_DISABLED', 'device is disabled'));
        else if (it.fingerprint !== undefined && !sameBytes(it.fingerprint, st.fp))
          refused.set(i, new ServerError('DEVICE_UNKNOWN', 'client certificate is not registered'));
      }
      for (const i of replayed)
        claimsOf[i]!.nonce = { status: 'contraindicated', reason: 'nonce already used (replay)' };

      const evs: (ParsedEvidence | undefined)[] = [];
      const rotIndexes: (number | null)[] = [];
      for (const [i, it] of items.entries()) {
        const claims = claimsOf[i]!;
        let ev: ParsedEvidence | undefined;
        let rotIndex: number | null = null;
        const row = rowOf.get(it.deviceId);
        if (refused.has(i)) {
          // not appraised
        } else if (row === undefined) {
          claims.signature = { status: 'contraindicated', reason: 'no RoT chain recorded for this device' };
        } else {
          const chain = chainOf(row);
          const key = chain.byKid(it.peek.kid);
          if (key === undefined) {
            claims.signature = {
              status: 'contraindicated',
              reason: "signing key is not in this device's RoT chain",
            };
          } else {
            try {
              const v = verifyAttestationToken(it.token, chain, {
                nonce: it.peek.nonce,
                allowedAlgs: ROT_ALGS,
              });
              rotIndex = v.key.index;
              if (v.key !== chain.current) {
                claims.signature = {
                  status: 'contraindicated',
                  reason: `signed by revoked RoT key ${v.key.index} (current is ${chain.current.index})`,
                };
              } else {
                // peek.kid selected v.key (chain.byKid), so its revocation status is this key's.
                claims.signature = revokedKids.has(hex(it.peek.kid))
                  ? { status: 'contraindicated', reason: `RoT key ${v.key.index} is revoked` }
                  : { status: 'affirming', reason: `signed by current RoT key ${v.key.index}` };
              }
              ev = parseEvidenceClaims(v.claims);
            } catch (e) {
              const code = isTrustError(e) ? e.code : 'error';
              if (claims.signature === undefined)
                claims.signature = { status: 'contraindicated', reason: `evidence rejected: ${code}` };
              else
                claims.profile = { status: 'contraindicated', reason: `claims outside the profile: ${code}` };
            }
          }
        }
        evs.push(ev);
        rotIndexes.push(rotIndex);
      }

      // Digests the verified claims name but the early read did not cover (the unverified peek failed): read now.
      const missing = new Map<string, Uint8Array>();
      for (const ev of evs)
        for (const c of ev?.components ?? [])
          if (!facts.digests.has(hex(c.digest))) missing.set(hex(c.digest), c.digest);
      if (missing.size > 0) {
        const more = await measurementFacts(tx, [...missing.values()], []);
        for (const [k, v] of more.digests) facts.digests.set(k, v);
      }

      for (const [i, ev] of evs.entries()) {
        if (ev === undefined) continue;
        const claims = claimsOf[i]!;
        const row = rowOf.get(items[i]!.deviceId)!;
        claims.profile = { status: 'affirming', reason: 'Rotor EAT evidence profile' };
        claims.ueid = bytesEqual(ev.ueid, u8(row.ueid))
          ? { status: 'affirming', reason: 'the device’s recorded UEID' }
          : { status: 'contraindicated', reason: 'evidence is for another device (UEID mismatch)' };
        claims.measurements = appraiseMeasurements(facts, items[i]!.deviceId, ev);
        claims.oemboot = ev.oemboot
          ? { status: 'affirming', reason: 'OEM authorized boot' }
          : { status: 'contraindicated', reason: 'boot not authorized by the OEM' };
        claims.dbgstat =
          ev.dbgstat === DBGSTAT.enabled
            ? { status: 'warning', reason: 'debug enabled' }
            : { status: 'affirming', reason: `debug status ${ev.dbgstat}` };
      }

      const statuses = claimsOf.map((c) => overallStatus(c));
      const evidenceDigests = items.map((it) => evidenceDigest(it.token));
      const kept = items.flatMap((_, i) => (refused.has(i) ? [] : [i]));
      const signedKept = await Promise.all(
        kept.map((i) => {
          const it = items[i]!;
          return createAttestationResult(
            {
              deviceId: it.deviceId,
              status: statuses[i]!,
              claims: claimsOf[i]!,
              issuedMs: it.t,
              evidenceSha256: evidenceDigests[i]!,
              rotIndex: rotIndexes[i]!,
            },
            resultKey.signer,
          );
        }),
      );
      const signed: (Uint8Array | undefined)[] = items.map(() => undefined);
      for (const [j, i] of kept.entries()) signed[i] = signedKept[j];
      // Identities are drawn in row order (unnest keeps the order): sorted, the i-th is the i-th item's.
      const ids = (
        await tx.query<{ id: number }>(
          `INSERT INTO attestation_results (device_id, status, claims, result, evidence_sha256, created_at_ms)
           SELECT d, s, c::jsonb, r, e, t
           FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::bytea[], $6::int8[]) AS u(d, s, c, r, e, t)
           RETURNING id`,
          [
            kept.map((i) => items[i]!.deviceId),
            kept.map((i) => statuses[i]!),
            kept.map((i) => JSON.stringify(claimsOf[i]!)),
            signedKept,
            kept.map((i) => evidenceDigests[i]!),
            kept.map((i) => items[i]!.t),
          ],
        )
      )
        .map((r) => r.id)
        .sort((a, b) => a - b);
      if (ids.length !== kept.length) throw new ServerError('INTERNAL', 'attestation result insert');
      const idOf = new Map(kept.map((i, j) => [i, ids[j]!]));

      // The policy engine acts on every stored result in the same transaction (seed 001 policy engine), in order.
      for (const [i, it] of items.entries()) {
        if (refused.has(i)) continue;
        const status = statuses[i]!;
        const ev = evs[i];
        const claims = claimsOf[i]!;
        const rotIndex = rotIndexes[i]!;
        const taken = await evaluateResult(
          tx,
          it.deviceId,
          ev === undefined
            ? { status, claims, rotIndex }
            : { status, claims, rotIndex, swversion: ev.swversion },
          it.t,
          pol,
        );
        if (taken.some((a) => a.action === 'disable-device')) after.disabled = true;
        const row = rowOf.get(it.deviceId);
        if (status === 'affirming' && row?.attest_requested === true) {
          await tx.query('UPDATE device_rot SET attest_requested = false WHERE device_id = $1', [
            it.deviceId,
          ]);
          row.attest_requested = false;
        }
      }
      return items.map(
        (it, i): AppraisalOutcome | ServerError =>
          refused.get(i) ?? {
            id: idOf.get(i)!,
            deviceId: it.deviceId,
            status: statuses[i]!,
            claims: claimsOf[i]!,
            result: signed[i]!,
            createdAtMs: it.t,
          },
      );
    });
    if (after.disabled) deviceStateChanged();
    // Issue 7 "after every update": an update waiting for this attestation is confirmed when the new measurements
    // appraise, else failed (after the commit: the rollout service takes its own locks).
    if (after.confirming.size > 0 && onConfirmation !== undefined) {
      const l = onConfirmation;
      for (const o of outs) {
        if (o instanceof ServerError || !after.confirming.has(o.deviceId)) continue;
        after.confirming.delete(o.deviceId); // the first result of the batch decides
        const m = o.claims.measurements;
        const ok = o.status !== 'contraindicated' && m?.status === 'affirming';
        const reason = ok
          ? `attestation ${o.id}: ${m.reason}`
          : `attestation ${o.id} ${o.status}: ${Object.entries(o.claims)
              .filter(([, c]) => c.status !== 'affirming')
              .map(([k, c]) => `${k}: ${c.reason}`)
              .join('; ')}`;
        await l(o.deviceId, ok, reason).catch(() => undefined);
      }
    }
    return outs;
  }

  /** Issue 7: called with the outcome of the attestation that follows a confirmed update (server.ts wires it). */
  let onConfirmation: ((deviceId: string, ok: boolean, reason: string) => Promise<unknown>) | undefined;

  /**
   * The rollout service's confirmation gate (rollouts.ts): an enrolled device (it has a RoT chain) that reports a
   * confirmed update is asked to attest, and the update waits for the result. A device not enrolled in attestation
   * confirms as before.
   */
  async function gateConfirmation(q: Queryable, deviceId: string): Promise<boolean> {
    const r = await q.query(
      'UPDATE device_rot SET attest_requested = true WHERE device_id = $1 RETURNING 1',
      [deviceId],
    );
    return r.length > 0;
  }

  /**
   * Issue 7 convergence: a confirmed update waiting for its attestation (an 'attestation-pending' event older than
   * `graceMs`) whose device is no longer asked to attest is asked again. It closes the race where the device's own
   * attestation right after its confirm was appraised in a transaction that ran beside the report's (it could not
   * see the pending mark, and cleared the request), and any lost attestation: the device attests on its next cycle.
   * Returns how many devices were asked again.
   */
  async function reaskStalledConfirmations(graceMs: number): Promise<number> {
    const r = await db.query(
      `UPDATE device_rot dr SET attest_requested = true
       FROM (SELECT DISTINCT rd.device_id FROM rollout_devices rd
             WHERE rd.active AND rd.state = 'in_progress' AND EXISTS (
               SELECT 1 FROM device_events e
               WHERE e.device_id = rd.device_id AND e.rollout_id = rd.rollout_id
                 AND e.kind = 'attestation-pending' AND e.at_ms < $1)) s
       WHERE dr.device_id = s.device_id AND NOT dr.attest_requested
       RETURNING dr.device_id`,
      [now() - graceMs],
    );
    return r.length;
  }

  async function requestAttestation(p: Principal, deviceId: string): Promise<{ requested: true }> {
    authorize(p, 'attestation.request');
    return audited(p, 'device.attestation.request', async (tx) => {
      const r = await tx.query(
        'UPDATE device_rot SET attest_requested = true WHERE device_id = $1 RETURNING 1',
        [deviceId],
      );
      if (r.length === 0) throw new ServerError('NOT_FOUND', 'device has no recorded RoT chain');
      return { result: { requested: true as const }, subject: `device:${deviceId}` };
    });
  }

  /** Seed 001 DRoT step 1: "Receive DRoT Rotation Request for Device X". */
  async function requestRotation(p: Principal, deviceId: string): Promise<{ requested: true }> {
    authorize(p, 'rot.rotate');
    return audited(p, 'device.rot.rotate', async (tx) => {
      const r = await tx.query(
        'UPDATE device_rot SET rotate_requested = true WHERE device_id = $1 RETURNING 1',
        [deviceId],
      );
      if (r.length === 0) throw new ServerError('NOT_FOUND', 'device has no recorded RoT chain');
      return { result: { requested: true as const }, subject: `device:${deviceId}` };
    });
  }

  async function rotStatus(
    p: Principal,
    deviceId: string,
  ): Promise<{ index: number; kid: string; rotateRequested: boolean; revokedKids: string[] }> {
    authorize(p, 'rot.read');
    const row = await rotRow(db, deviceId);
    if (row === undefined) throw new ServerError('NOT_FOUND', 'device has no recorded RoT chain');
    const chain = chainOf(row);
    const rev = await db.query<{ kid: Uint8Array }>(
      'SELECT kid FROM rot_revocations WHERE device_id = $1 ORDER BY revoked_at_ms, kid',
      [deviceId],
    );
    return {
      index: chain.current.index,
      kid: hex(chain.current.kid),
      rotateRequested: row.rotate_requested,
      revokedKids: rev.map((r) => hex(u8(r.kid))),
    };
  }

  async function results(
    p: Principal,
    deviceId: string,
    limit: number,
  ): Promise<
    {
      id: number;
      status: ArStatus;
      claims: Record<string, ClaimAppraisal>;
      result: string;
      createdAtMs: number;
    }[]
  > {
    authorize(p, 'attestation.read');
    const rows = await db.query<{
      id: number;
      status: ArStatus;
      claims: Record<string, ClaimAppraisal> | string;
      result: Uint8Array;
      created_at_ms: number;
    }>(
      'SELECT id, status, claims, result, created_at_ms FROM attestation_results WHERE device_id = $1 ORDER BY id DESC LIMIT $2',
      [deviceId, limit],
    );
    return rows.map((r) => ({
      id: r.id,
      status: r.status,
      claims:
        typeof r.claims === 'string' ? (JSON.parse(r.claims) as Record<string, ClaimAppraisal>) : r.claims,
      result: Buffer.from(r.result).toString('base64'),
      createdAtMs: r.created_at_ms,
    }));
  }

  async function addDigest(
    p: Principal,
    table: 'reference' | 'revoked',
    body: { sha256: string; label: string },
  ): Promise<{ sha256: string }> {
    authorize(p, table === 'reference' ? 'attestation.reference' : 'attestation.revoked');
    if (!/^[0-9a-f]{64}$/.test(body.sha256))
      throw new ServerError('REQUEST_INVALID', 'sha256 must be 64 hex');
    const d = new Uint8Array(Buffer.from(body.sha256, 'hex'));
    return audited(
      p,
      table === 'reference' ? 'attestation.reference.add' : 'attestation.digest.revoke',
      async (tx) => {
        await tx.query(
          table === 'reference'
            ? `INSERT INTO attestation_reference_values (sha256, label, created_by, created_at_ms) VALUES ($1, $2, $3, $4)
             ON CONFLICT (sha256) DO NOTHING`
            : `INSERT INTO revoked_digests (sha256, reason, created_by, created_at_ms) VALUES ($1, $2, $3, $4)
             ON CONFLICT (sha256) DO NOTHING`,
          [d, body.label, actorOf(p), now()],
        );
        return {
          result: { sha256: body.sha256 },
          subject: `digest:${body.sha256}`,
          details: { label: body.label },
        };
      },
    );
  }

  /** Constant-time comparison of two nonces or digests (exported for callers that hold both). */
  function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
    return a.length === b.length && timingSafeEqual(a, b);
  }

  return {
    reportChain,
    gateConfirmation,
    reaskStalledConfirmations,
    setConfirmationListener(
      l: ((deviceId: string, ok: boolean, reason: string) => Promise<unknown>) | undefined,
    ): void {
      onConfirmation = l;
    },
    pending,
    issueNonce,
    issueNonces,
    appraise,
    requestAttestation,
    requestRotation,
    rotStatus,
    results,
    addDigest,
    sameBytes,
    resultPublicKeyPem: (): string => resultKey.publicKey.export({ type: 'spki', format: 'pem' }).toString(),
    resultKid: (): Uint8Array | undefined => resultKey.signer.kid,
  };
}

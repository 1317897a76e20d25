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
  createHmac,
  generateKeyPairSync,
  randomBytes,
  timingSafeEqual,
  type KeyObject,
} from 'node:crypto';
import { Alg, type Signer } from '@rotor/cose';
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
import { evaluateResult, periodicAttestationDue } from './policy.ts';

/** RoT algorithms the verifier accepts (the enclave's ROT_ALGS). */
export const ROT_ALGS: ReadonlySet<number> = new Set<number>([Alg.ES256, Alg.EdDSA]);
export const NONCE_BYTES = 40;
export const DEFAULT_NONCE_TTL_MS = 60_000;
export const MAX_CHAIN_RECORDS = 4096;

export interface AttestationServiceOptions {
  readonly now?: () => number;
  /** Signs attestation results; default: a P-256 key generated at start (its public key is served). */
  readonly resultKey?: { signer: Signer; publicKey: KeyObject };
  readonly nonceTtlMs?: number;
  /**
   * Key that MACs the nonces (32 bytes). Default: random per process — nonces then do not survive a restart (they
   * live 60 s); servers behind one load balancer must share it.
   */
  readonly nonceKey?: Uint8Array;
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

function requireDevice(p: Principal): string {
  if (p.kind !== 'device') throw new ServerError('FORBIDDEN', 'device listener');
  return p.deviceId;
}

function softwareResultKey(): { signer: Signer; publicKey: KeyObject } {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  const spki = publicKey.export({ type: 'spki', format: 'der' });
  const kid = sha256(new Uint8Array(spki)).subarray(0, 16);
  return {
    publicKey,
    signer: {
      alg: Alg.ES256,
      kid,
      sign: async (tbs) => {
        const { sign } = await import('node:crypto');
        return new Uint8Array(sign('sha256', tbs, { key: privateKey, dsaEncoding: 'ieee-p1363' }));
      },
    },
  };
}

export type AttestationService = ReturnType<typeof createAttestationService>;

export function createAttestationService(db: Db, opts: AttestationServiceOptions = {}) {
  const now = opts.now ?? Date.now;
  const ttl = opts.nonceTtlMs ?? DEFAULT_NONCE_TTL_MS;
  const resultKey = opts.resultKey ?? softwareResultKey();
  const nonceKey = opts.nonceKey ?? new Uint8Array(randomBytes(32));
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
    nonce.set(randomBytes(8), 8);
    nonce.set(deviceTag(deviceId), 16);
    nonce.set(nonceMac(nonce.subarray(0, 24)), 24);
    return Promise.resolve({ nonce, expiresAtMs });
  }

  function deviceTag(deviceId: string): Uint8Array {
    return new Uint8Array(createHmac('sha256', nonceKey).update('device').update(deviceId).digest()).subarray(
      0,
      8,
    );
  }
  function nonceMac(head: Uint8Array): Uint8Array {
    return new Uint8Array(createHmac('sha256', nonceKey).update(head).digest()).subarray(0, 16);
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

  async function appraiseMeasurements(
    q: Queryable,
    deviceId: string,
    ev: ParsedEvidence,
  ): Promise<ClaimAppraisal> {
    const digests = ev.components.map((c) => c.digest);
    // One round trip: per component (in order) known / revoked, and the payloads of the device's last succeeded
    // rollout (what it should run).
    const rows = await q.query<{ known: boolean[]; revoked: boolean[]; expected: Uint8Array[] }>(
      `SELECT
         array(SELECT EXISTS (SELECT 1 FROM release_payloads WHERE sha256 = u.d)
                      OR EXISTS (SELECT 1 FROM attestation_reference_values WHERE sha256 = u.d)
               FROM unnest($1::bytea[]) WITH ORDINALITY AS u(d, i) ORDER BY u.i) AS known,
         array(SELECT EXISTS (SELECT 1 FROM revoked_digests WHERE sha256 = u.d)
               FROM unnest($1::bytea[]) WITH ORDINALITY AS u(d, i) ORDER BY u.i) AS revoked,
         array(SELECT rp.sha256 FROM release_payloads rp WHERE rp.release_id = (
                 SELECT r.release_id FROM rollout_devices rd JOIN rollouts r ON r.id = rd.rollout_id
                 WHERE rd.device_id = $2 AND rd.state = 'succeeded' ORDER BY rd.updated_at_ms DESC LIMIT 1)) AS expected`,
      [digests, deviceId],
    );
    const r0 = rows[0];
    if (r0?.known.length !== digests.length || r0.revoked.length !== digests.length)
      throw new ServerError('INTERNAL', 'appraisal query');
    const bad: string[] = [];
    for (const [i, c] of ev.components.entries()) {
      if (r0.revoked[i] === true)
        bad.push(`${c.type}@${c.version}: digest ${hex(c.digest).slice(0, 16)}… is revoked`);
      else if (r0.known[i] !== true)
        bad.push(`${c.type}@${c.version}: digest ${hex(c.digest).slice(0, 16)}… matches no reference value`);
    }
    if (bad.length > 0) return { status: 'contraindicated', reason: bad.join('; ') };
    const expected = r0.expected.map(u8);
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

  /** Appraises evidence from the calling device (RFC 9334 §3.2) and stores the signed result (§3.3). */
  async function appraise(p: Principal, token: Uint8Array): Promise<AppraisalOutcome> {
    const deviceId = requireDevice(p);
    const claims: Record<string, ClaimAppraisal> = {};
    let peek: { nonce: Uint8Array; kid: Uint8Array };
    try {
      peek = peekEvidence(token);
    } catch (e) {
      throw new ServerError('REQUEST_BODY_MALFORMED', 'evidence is not a COSE_Sign1 EAT', { cause: e });
    }
    const t = now();
    cleanupNonces(t);
    return db.transaction(async (tx) => {
      // Nonce: issued by this verifier to this device, unexpired, and single use — consumed atomically by the
      // unique insert of its digest (RFC 9334 §10.2).
      const nc = checkNonce(peek.nonce, deviceId, t);
      claims.nonce = { status: nc.status, reason: nc.reason };
      if (nc.status === 'affirming') {
        const fresh = await tx.query(
          `INSERT INTO attestation_nonces (nonce_sha256, device_id, issued_at_ms, expires_at_ms, used_at_ms)
           VALUES ($1, $2, $3, $4, $3) ON CONFLICT (nonce_sha256) DO NOTHING RETURNING 1`,
          [sha256(peek.nonce), deviceId, t, nc.expiresAtMs],
        );
        if (fresh.length === 0)
          claims.nonce = { status: 'contraindicated', reason: 'nonce already used (replay)' };
      }

      let ev: ParsedEvidence | undefined;
      let rotIndex: number | null = null;
      const row = (
        await tx.query<RotRow & { kid_revoked: boolean }>(
          `SELECT device_id, ueid, records, current_kid, attest_requested, rotate_requested,
             EXISTS (SELECT 1 FROM rot_revocations WHERE kid = $2) AS kid_revoked
           FROM device_rot WHERE device_id = $1`,
          [deviceId, peek.kid],
        )
      )[0];
      if (row === undefined) {
        claims.signature = { status: 'contraindicated', reason: 'no RoT chain recorded for this device' };
      } else {
        const chain = chainOf(row);
        const key = chain.byKid(peek.kid);
        if (key === undefined) {
          claims.signature = {
            status: 'contraindicated',
            reason: "signing key is not in this device's RoT chain",
          };
        } else {
          try {
            const v = verifyAttestationToken(token, chain, { nonce: peek.nonce, allowedAlgs: ROT_ALGS });
            rotIndex = v.key.index;
            if (v.key !== chain.current) {
              claims.signature = {
                status: 'contraindicated',
                reason: `signed by revoked RoT key ${v.key.index} (current is ${chain.current.index})`,
              };
            } else {
              // peek.kid selected v.key (chain.byKid), so row.kid_revoked is this key's revocation status.
              claims.signature = row.kid_revoked
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
        if (ev !== undefined) {
          claims.profile = { status: 'affirming', reason: 'Rotor EAT evidence profile' };
          claims.ueid = bytesEqual(ev.ueid, u8(row.ueid))
            ? { status: 'affirming', reason: 'the device’s recorded UEID' }
            : { status: 'contraindicated', reason: 'evidence is for another device (UEID mismatch)' };
          claims.measurements = await appraiseMeasurements(tx, deviceId, ev);
          claims.oemboot = ev.oemboot
            ? { status: 'affirming', reason: 'OEM authorized boot' }
            : { status: 'contraindicated', reason: 'boot not authorized by the OEM' };
          claims.dbgstat =
            ev.dbgstat === DBGSTAT.enabled
              ? { status: 'warning', reason: 'debug enabled' }
              : { status: 'affirming', reason: `debug status ${ev.dbgstat}` };
        }
      }
      const status = overallStatus(claims);
      const evidenceSha256 = evidenceDigest(token);
      const result = await createAttestationResult(
        { deviceId, status, claims, issuedMs: t, evidenceSha256, rotIndex },
        resultKey.signer,
      );
      const ins = await tx.query<{ id: number }>(
        `INSERT INTO attestation_results (device_id, status, claims, result, evidence_sha256, created_at_ms)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id`,
        [deviceId, status, JSON.stringify(claims), result, evidenceSha256, t],
      );
      // The policy engine acts on every stored result in the same transaction (seed 001 policy engine).
      await evaluateResult(
        tx,
        deviceId,
        ev === undefined
          ? { status, claims, rotIndex }
          : { status, claims, rotIndex, swversion: ev.swversion },
        t,
      );
      if (status === 'affirming' || row === undefined) {
        if (row !== undefined && row.attest_requested)
          await tx.query('UPDATE device_rot SET attest_requested = false WHERE device_id = $1', [deviceId]);
      }
      return { id: Number(ins[0]?.id), deviceId, status, claims, result, createdAtMs: t };
    });
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
    pending,
    issueNonce,
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

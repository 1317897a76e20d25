/**
 * EAT evidence (RFC 9711) and attestation results (RFC 9334 §3.3 "Attestation Results"): the Rotor evidence
 * profile on top of the token the enclave signs (attestation.ts).
 *
 * Evidence = the enclave's COSE_Sign1 EAT (attestation.ts: eat_nonce 10, ueid 256, iat 6, RoT index -70001) whose
 * other claims come from the agent (the target environment), under our profile id (RFC 9711 §4.3.2, §6: we follow
 * the constrained-device profile of §6.3 — CWT, COSE_Sign1, ES256/EdDSA, CBOR deterministic encoding — but add
 * private claims, hence our own profile id):
 *
 *   265 eat_profile => tstr  (EAT_PROFILE)
 *   258 oemid       => bstr .size 3 / bstr .size 16       (RFC 9711 §4.2.3)
 *   259 hwmodel     => bstr .size (1..32)                 (RFC 9711 §4.2.4)
 *   271 swversion   => [ tstr ]                           (RFC 9711 §4.2.7)
 *   262 oemboot     => bool                               (RFC 9711 §4.2.8)
 *   263 dbgstat     => uint .le 4                         (RFC 9711 §4.2.9)
 *   261 uptime      => uint                               (RFC 9711 §4.2.11)
 *   -70002 software components => [ + component ]          (private; the RFC 9783 §4.4.1 PSA shape:)
 *     component = { 1 => tstr (measurement-type), 2 => bstr .size 32 (measurement-value, SHA-256),
 *                   4 => tstr (version), 5 => bstr .size 32 (signer-id), 6 => "sha-256" (measurement-desc) }
 *
 * Attestation result (signed by the verifier):
 *   COSE_Sign1, protected { 1: alg, 3: "application/rotor-ar+cbor", 4: verifier kid }
 *   payload = { 1: device id, 2: status (tier: 2 affirming, 32 warning, 96 contraindicated — the EAR trust
 *               tiers), 3: { claim name => [tier, reason] }, 4: issued (ms), 5: SHA-256 of the evidence,
 *               6: RoT index or null }
 */
import { createHash } from 'node:crypto';
import {
  asArray,
  asBytes,
  asMap,
  asText,
  asUint,
  CborMap,
  createSign1,
  decode,
  decodeSign1,
  encode,
  isCoseError,
  verifySign1,
  type Signer,
  type Verifier,
} from '@rotor/cose';
import { AttestClaim } from './attestation.ts';
import { TrustError } from './errors.ts';

export const EAT_PROFILE = 'tag:rotor.dev,2026:eat-evidence/1';
export const EvidenceClaim = {
  profile: 265,
  oemid: 258,
  hwmodel: 259,
  swversion: 271,
  oemboot: 262,
  dbgstat: 263,
  uptime: 261,
  components: -70002,
} as const;
/** RFC 9711 §4.2.9 debug status values. */
export const DBGSTAT = {
  enabled: 0,
  disabled: 1,
  disabledSinceBoot: 2,
  disabledPermanently: 3,
  disabledFullyAndPermanently: 4,
} as const;
export const MAX_COMPONENTS = 64;

export interface SoftwareComponent {
  /** e.g. "fw" or "cap:<name>" */
  readonly type: string;
  /** SHA-256 of the installed bytes. */
  readonly digest: Uint8Array;
  readonly version: string;
  /** SHA-256 (RFC 9679 thumbprint / SPKI digest) of the key that signed the component. */
  readonly signer: Uint8Array;
}

export interface EvidenceClaims {
  readonly oemid: Uint8Array;
  readonly hwmodel: Uint8Array;
  readonly swversion: string;
  readonly oemboot: boolean;
  readonly dbgstat: number;
  readonly uptime: number;
  readonly components: readonly SoftwareComponent[];
}

/** The agent's claims, ready for EnclaveClient.attest(nonce, claims). */
export function evidenceClaimsMap(c: EvidenceClaims): CborMap {
  if (c.components.length > MAX_COMPONENTS)
    throw new TrustError('ATTEST_MALFORMED', 'too many components', 'components');
  return new CborMap([
    [EvidenceClaim.profile, EAT_PROFILE],
    [EvidenceClaim.oemid, c.oemid],
    [EvidenceClaim.hwmodel, c.hwmodel],
    [EvidenceClaim.swversion, [c.swversion]],
    [EvidenceClaim.oemboot, c.oemboot],
    [EvidenceClaim.dbgstat, c.dbgstat],
    [EvidenceClaim.uptime, Math.max(0, Math.floor(c.uptime))],
    [
      EvidenceClaim.components,
      c.components.map(
        (s) =>
          new Map<number, unknown>([
            [1, s.type],
            [2, s.digest],
            [4, s.version],
            [5, s.signer],
            [6, 'sha-256'],
          ]),
      ),
    ],
  ]);
}

export interface ParsedEvidence extends EvidenceClaims {
  readonly nonce: Uint8Array;
  readonly ueid: Uint8Array;
  readonly iat: number;
  readonly rotIndex: number;
}

function fail(message: string, path: string, cause?: unknown): TrustError {
  return new TrustError('ATTEST_MALFORMED', message, path, cause === undefined ? undefined : { cause });
}

/**
 * Parses the claims of a (signature-checked) evidence token strictly under EAT_PROFILE. RFC 9711 §4.3.2: a
 * recipient refuses a token of a profile it does not know.
 */
export function parseEvidenceClaims(claims: CborMap): ParsedEvidence {
  try {
    const allowed = new Set<unknown>([...Object.values(AttestClaim), ...Object.values(EvidenceClaim)]);
    for (const [k] of claims.entries) {
      if (!allowed.has(k)) throw fail(`claim ${String(k)} is not in the profile`, '$.payload');
    }
    if (claims.get(EvidenceClaim.profile) !== EAT_PROFILE)
      throw fail('eat_profile is not the Rotor evidence profile (RFC 9711 §4.3.2)', '$.payload.265');
    const nonce = asBytes(claims.get(AttestClaim.nonce), '$.payload.10', { min: 8, max: 64 });
    const ueid = asBytes(claims.get(AttestClaim.ueid), '$.payload.256', { min: 7, max: 33 });
    const iat = asUint(claims.get(AttestClaim.iat), '$.payload.6');
    const rotIndex = asUint(claims.get(AttestClaim.rotIndex), '$.payload.-70001');
    const oemid = asBytes(claims.get(EvidenceClaim.oemid), '$.payload.258', { min: 3, max: 16 });
    if (oemid.length !== 3 && oemid.length !== 16) throw fail('oemid must be 3 or 16 bytes', '$.payload.258');
    const hwmodel = asBytes(claims.get(EvidenceClaim.hwmodel), '$.payload.259', { min: 1, max: 32 });
    const sw = asArray(claims.get(EvidenceClaim.swversion), '$.payload.271', { min: 1, max: 1 });
    const swversion = asText(sw[0], '$.payload.271[0]');
    if (swversion.length > 64) throw fail('swversion too long', '$.payload.271');
    const oemboot = claims.get(EvidenceClaim.oemboot);
    if (typeof oemboot !== 'boolean') throw fail('oemboot must be a bool', '$.payload.262');
    const dbgstat = asUint(claims.get(EvidenceClaim.dbgstat), '$.payload.263');
    if (dbgstat > 4) throw fail('dbgstat out of range', '$.payload.263');
    const uptime = asUint(claims.get(EvidenceClaim.uptime), '$.payload.261');
    const list = asArray(claims.get(EvidenceClaim.components), '$.payload.-70002', {
      min: 1,
      max: MAX_COMPONENTS,
    });
    const components = list.map((c, i): SoftwareComponent => {
      const p = `$.payload.-70002[${i}]`;
      const m = asMap(c, p);
      for (const k of m.keys()) {
        if (k !== 1 && k !== 2 && k !== 4 && k !== 5 && k !== 6) throw fail(`unknown member ${String(k)}`, p);
      }
      if (m.get(6) !== 'sha-256') throw fail('measurement-desc must be sha-256', `${p}.6`);
      const type = asText(m.get(1), `${p}.1`);
      const version = asText(m.get(4), `${p}.4`);
      if (type.length > 64 || version.length > 64) throw fail('component text too long', p);
      return {
        type,
        digest: asBytes(m.get(2), `${p}.2`, { min: 32, max: 32 }),
        version,
        signer: asBytes(m.get(5), `${p}.5`, { min: 32, max: 32 }),
      };
    });
    return { nonce, ueid, iat, rotIndex, oemid, hwmodel, swversion, oemboot, dbgstat, uptime, components };
  } catch (e) {
    if (e instanceof TrustError) throw e;
    if (isCoseError(e)) throw fail(e.message, e.message.split(' ')[0] ?? '$', e);
    throw e;
  }
}

/** Reads eat_nonce and the signer kid of a token without verifying it (to find the nonce record first). */
export function peekEvidence(token: Uint8Array): { nonce: Uint8Array; kid: Uint8Array } {
  try {
    const msg = decodeSign1(token, { tag: 'required', maxSize: 16 * 1024 });
    const kid = msg.protectedHeaders.get(4);
    if (!(kid instanceof Uint8Array)) throw fail('no kid', '$[0]');
    if (msg.payload === null) throw fail('payload is detached', '$');
    const c = decode(msg.payload, { maxSize: 16 * 1024 });
    if (!(c instanceof CborMap)) throw fail('claims are not a map', '$.payload');
    const nonce = asBytes(c.get(AttestClaim.nonce), '$.payload.10', { min: 8, max: 64 });
    return { nonce, kid };
  } catch (e) {
    if (e instanceof TrustError) throw e;
    if (isCoseError(e)) throw fail(e.message, '$', e);
    throw e;
  }
}

// --- Attestation results ------------------------------------------------------------------------------------

export const AR_CONTENT_TYPE = 'application/rotor-ar+cbor';
export type ArStatus = 'affirming' | 'warning' | 'contraindicated';
/** EAR trustworthiness tiers (draft-ietf-rats-ear §3.2 / draft-ietf-rats-ar4si §2.3.3). */
export const AR_TIER: Readonly<Record<ArStatus, number>> = { affirming: 2, warning: 32, contraindicated: 96 };
const TIER_STATUS = new Map<number, ArStatus>([
  [2, 'affirming'],
  [32, 'warning'],
  [96, 'contraindicated'],
]);

export interface ClaimAppraisal {
  readonly status: ArStatus;
  readonly reason: string;
}

export interface AttestationResult {
  readonly deviceId: string;
  readonly status: ArStatus;
  readonly claims: Readonly<Record<string, ClaimAppraisal>>;
  readonly issuedMs: number;
  readonly evidenceSha256: Uint8Array;
  readonly rotIndex: number | null;
}

/** The worst status of the claims (RFC 9334 §8.4: the verifier's overall appraisal). */
export function overallStatus(claims: Readonly<Record<string, ClaimAppraisal>>): ArStatus {
  let worst: ArStatus = 'affirming';
  for (const c of Object.values(claims)) if (AR_TIER[c.status] > AR_TIER[worst]) worst = c.status;
  return worst;
}

export function evidenceDigest(token: Uint8Array): Uint8Array {
  return new Uint8Array(createHash('sha256').update(token).digest());
}

export async function createAttestationResult(r: AttestationResult, signer: Signer): Promise<Uint8Array> {
  const claims = new Map<string, unknown>();
  for (const [k, v] of Object.entries(r.claims)) claims.set(k, [AR_TIER[v.status], v.reason]);
  const payload = encode(
    new Map<number, unknown>([
      [1, r.deviceId],
      [2, AR_TIER[r.status]],
      [3, claims],
      [4, r.issuedMs],
      [5, r.evidenceSha256],
      [6, r.rotIndex],
    ]),
  );
  return createSign1(payload, signer, {
    protectedExtra: new Map<number, unknown>([
      [3, AR_CONTENT_TYPE],
      ...(signer.kid === undefined ? [] : [[4, signer.kid] as const]),
    ]),
  });
}

/** Verifies a result signed by the verifier (RFC 9052 §4.4) and decodes it strictly. */
export function verifyAttestationResult(
  bytes: Uint8Array,
  verifier: Verifier,
  allowedAlgs: ReadonlySet<number>,
): AttestationResult {
  try {
    const msg = decodeSign1(bytes, { tag: 'required', maxSize: 64 * 1024 });
    if (msg.protectedHeaders.get(3) !== AR_CONTENT_TYPE) throw fail('not an attestation result', '$');
    verifySign1(msg, verifier, { allowedAlgs });
    if (msg.payload === null) throw fail('payload is detached', '$');
    const m = asMap(decode(msg.payload, { maxSize: 64 * 1024 }), '$.payload');
    const tier = (v: unknown, p: string): ArStatus => {
      const s = TIER_STATUS.get(asUint(v, p));
      if (s === undefined) throw fail('unknown tier', p);
      return s;
    };
    const claims: Record<string, ClaimAppraisal> = {};
    for (const [k, v] of asMap(m.get(3), '$.payload.3').entries) {
      const a = asArray(v, `$.payload.3.${String(k)}`, { min: 2, max: 2 });
      claims[asText(k, '$.payload.3')] = {
        status: tier(a[0], `$.payload.3.${String(k)}`),
        reason: asText(a[1], '$'),
      };
    }
    const rot = m.get(6);
    return {
      deviceId: asText(m.get(1), '$.payload.1'),
      status: tier(m.get(2), '$.payload.2'),
      claims,
      issuedMs: asUint(m.get(4), '$.payload.4'),
      evidenceSha256: asBytes(m.get(5), '$.payload.5', { min: 32, max: 32 }),
      rotIndex: rot === null ? null : asUint(rot, '$.payload.6'),
    };
  } catch (e) {
    if (e instanceof TrustError) throw e;
    if (isCoseError(e)) {
      const code = e.code === 'COSE_BAD_SIGNATURE' ? 'ATTEST_BAD_SIGNATURE' : 'ATTEST_MALFORMED';
      throw new TrustError(code, e.message, '$', { cause: e });
    }
    throw e;
  }
}

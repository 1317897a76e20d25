/**
 * Attestation tokens signed by the current root of trust (seed 002 step 3: "The AP signs a challenge from the RTP
 * using the *current* RoT"). The token is an EAT (RFC 9711) in a COSE_Sign1 (RFC 9052 §4.2):
 *
 *   protected { 1: alg, 3: "application/eat+cwt", 4: kid of the RoT (RFC 9679 thumbprint) }
 *   payload = claims map {
 *     10 => bstr .size (8..64),  ; eat_nonce (RFC 9711 §4.1): the verifier's challenge
 *     256 => bstr,               ; ueid (RFC 9711 §4.2.1): the device's id, type 0x01 RAND
 *     6 => uint,                 ; iat (RFC 8392 §3.1.6)
 *     -70001 => uint,            ; Rotor private claim (RFC 8392 §9.1: labels < -65536): index of the RoT in its chain
 *     * label => any,            ; the device's other claims (measurements, ...), supplied by the agent
 *   }
 *
 * The fuller EAT evidence model (measurements, appraisal) builds on this; here is what the enclave signs.
 */
import {
  CborMap,
  createSign1,
  decode,
  decodeSign1,
  encode,
  isCoseError,
  verifySign1,
  type Signer,
} from '@rotor/cose';
import { TrustError } from './errors.ts';
import type { RotChain, RotKey } from './rot-chain.ts';
import { bytesEqual } from './thumbprint.ts';

export const ATTEST_CONTENT_TYPE = 'application/eat+cwt';
export const AttestClaim = { nonce: 10, ueid: 256, iat: 6, rotIndex: -70001 } as const;
const RESERVED: ReadonlySet<unknown> = new Set<unknown>(Object.values(AttestClaim));
/** RFC 9711 §4.1: an eat_nonce is 8 to 64 bytes. */
export const NONCE_MIN = 8;
export const NONCE_MAX = 64;
export const ATTEST_MAX_BYTES = 16 * 1024;

export interface AttestationInput {
  readonly nonce: Uint8Array;
  readonly ueid: Uint8Array;
  readonly iat: number;
  readonly rotIndex: number;
  /** The device's other claims; reserved labels are refused. */
  readonly claims?: CborMap;
}

export interface VerifiedAttestation {
  readonly key: RotKey;
  readonly ueid: Uint8Array;
  readonly iat: number;
  /** Every claim, as decoded. */
  readonly claims: CborMap;
}

/** Checks caller-supplied claims: none may use a reserved label (so no claim can be shadowed). */
export function checkExtraClaims(claims: CborMap, path = 'claims'): void {
  for (const [k] of claims.entries) {
    if (RESERVED.has(k))
      throw new TrustError('ATTEST_CLAIM_RESERVED', `claim ${String(k)} is reserved`, path);
  }
}

/** Builds and signs a token with the RoT `signer` (whose kid is the RoT thumbprint). */
export async function createAttestationToken(input: AttestationInput, signer: Signer): Promise<Uint8Array> {
  if (input.nonce.length < NONCE_MIN || input.nonce.length > NONCE_MAX) {
    throw new TrustError('ATTEST_MALFORMED', `nonce must be ${NONCE_MIN}..${NONCE_MAX} bytes`, 'nonce');
  }
  const entries: (readonly [unknown, unknown])[] = [
    [AttestClaim.nonce, input.nonce],
    [AttestClaim.ueid, input.ueid],
    [AttestClaim.iat, Math.floor(input.iat)],
    [AttestClaim.rotIndex, input.rotIndex],
  ];
  if (input.claims !== undefined) {
    checkExtraClaims(input.claims);
    entries.push(...input.claims.entries);
  }
  if (signer.kid === undefined)
    throw new TrustError('ATTEST_MALFORMED', 'the RoT signer has no kid', 'signer');
  return createSign1(encode(new CborMap(entries)), signer, {
    protectedExtra: new Map<number, unknown>([
      [3, ATTEST_CONTENT_TYPE],
      [4, signer.kid],
    ]),
  });
}

/**
 * Verifies a token against a RoT chain (seed 002 step 3: "RTP verifies the signature, confirming the integrity of
 * the AP and the current RoT"): the signing key must be in the chain (or be its current key when
 * `requireCurrent`), the signature must verify, and eat_nonce must equal the challenge.
 */
export function verifyAttestationToken(
  token: Uint8Array,
  chain: RotChain,
  opts: { nonce: Uint8Array; allowedAlgs: ReadonlySet<number>; requireCurrent?: boolean },
): VerifiedAttestation {
  let msg;
  let claims: CborMap;
  try {
    msg = decodeSign1(token, { tag: 'required', maxSize: ATTEST_MAX_BYTES });
    if (msg.protectedHeaders.get(3) !== ATTEST_CONTENT_TYPE) {
      throw new TrustError('ATTEST_MALFORMED', 'protected content type is not an EAT', '$');
    }
    if (msg.payload === null) throw new TrustError('ATTEST_MALFORMED', 'payload is detached', '$');
    const c = decode(msg.payload, { maxSize: ATTEST_MAX_BYTES });
    if (!(c instanceof CborMap))
      throw new TrustError('ATTEST_MALFORMED', 'claims are not a map', '$.payload');
    claims = c;
  } catch (e) {
    if (e instanceof TrustError) throw e;
    if (isCoseError(e)) throw new TrustError('ATTEST_MALFORMED', e.message, '$', { cause: e });
    throw e;
  }
  const kid = msg.protectedHeaders.get(4);
  const key = kid instanceof Uint8Array ? chain.byKid(kid) : undefined;
  if (key === undefined)
    throw new TrustError('ATTEST_UNKNOWN_KEY', 'token not signed by a key of the chain', '$[0]');
  if (opts.requireCurrent === true && key !== chain.current) {
    throw new TrustError(
      'ATTEST_NOT_CURRENT',
      `signed by RoT ${key.index}, current is ${chain.current.index}`,
      '$',
    );
  }
  try {
    verifySign1(msg, key.verifier, { allowedAlgs: opts.allowedAlgs });
  } catch (e) {
    throw new TrustError('ATTEST_BAD_SIGNATURE', 'token signature does not verify', '$', { cause: e });
  }
  const nonce = claims.get(AttestClaim.nonce);
  if (!(nonce instanceof Uint8Array) || !bytesEqual(nonce, opts.nonce)) {
    throw new TrustError('ATTEST_NONCE_MISMATCH', 'eat_nonce is not the challenge', '$.payload.10');
  }
  const ueid = claims.get(AttestClaim.ueid);
  const iat = claims.get(AttestClaim.iat);
  const rotIndex = claims.get(AttestClaim.rotIndex);
  if (!(ueid instanceof Uint8Array) || typeof iat !== 'number' || rotIndex !== key.index) {
    throw new TrustError('ATTEST_MALFORMED', 'ueid, iat or RoT index missing or inconsistent', '$.payload');
  }
  return { key, ueid, iat, claims };
}

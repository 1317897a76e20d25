/**
 * The module revocation list (seed 000 step 7: "A blacklist of revoked capability module hashes, signed by a
 * trusted authority, is periodically distributed and checked by the device").
 *
 *   list = COSE_Sign1_Tagged, protected { 1: alg, 3: "application/rotor-module-revocation+cbor", 4: kid }
 *   payload = {
 *     1 => uint,                         ; version: a device accepts only a newer list (anti-rollback)
 *     2 => uint,                         ; issued at (seconds since the Unix epoch)
 *     3 => uint,                         ; expires at: after it the list is stale and refused on arrival
 *     4 => [* { 1 => bstr .size 32,      ; SHA-256 of a revoked module binary (the SUIT image-digest)
 *               ? 2 => tstr }],          ;   reason, for reports
 *   }
 *
 * The digest is the module's plaintext SHA-256, the same on every device whatever its per-device encryption.
 */
import {
  asArray,
  asBytes,
  asMap,
  asText,
  asUint,
  checkKeys,
  decode,
  encode,
  required,
  type Signer,
} from '@rotor/cose';
import {
  createSignedDoc,
  parsePayload,
  verifySignedDoc,
  type SignedDocVerifyOptions,
} from './capability-signed.ts';
import { TrustError } from './errors.ts';
import { hex } from './thumbprint.ts';

export const REVOCATION_CONTENT_TYPE = 'application/rotor-module-revocation+cbor';
export const REVOCATION_MAX_ENTRIES = 65_536;
export const REVOCATION_MAX_BYTES = 4 * 1024 * 1024;

export interface RevocationEntry {
  readonly digest: Uint8Array;
  readonly reason?: string;
}

export interface RevocationListFields {
  readonly version: number;
  readonly issuedAt: number;
  readonly expiresAt: number;
  readonly entries: readonly RevocationEntry[];
}

export interface RevocationList extends RevocationListFields {
  readonly bytes: Uint8Array;
  /** Whether the SHA-256 digest is revoked. */
  has(digest: Uint8Array): boolean;
  /** Hex digests, for persistence and lookups. */
  readonly hexDigests: ReadonlySet<string>;
}

function encodePayload(f: RevocationListFields): Uint8Array {
  return encode(
    new Map<number, unknown>([
      [1, f.version],
      [2, Math.floor(f.issuedAt)],
      [3, Math.floor(f.expiresAt)],
      [
        4,
        f.entries.map((e) => {
          const m = new Map<number, unknown>([[1, e.digest]]);
          if (e.reason !== undefined) m.set(2, e.reason);
          return m;
        }),
      ],
    ]),
  );
}

function parseFields(m: ReturnType<typeof asMap>, path: string): RevocationListFields {
  checkKeys(m, new Set([1, 2, 3, 4]), path);
  const version = asUint(required(m, 1, path), `${path}.version`);
  const issuedAt = asUint(required(m, 2, path), `${path}.issuedAt`);
  const expiresAt = asUint(required(m, 3, path), `${path}.expiresAt`);
  if (expiresAt <= issuedAt)
    throw new TrustError('REVOCATION_MALFORMED', 'expires before it is issued', path);
  const seen = new Set<string>();
  const entries = asArray(required(m, 4, path), `${path}.entries`, { max: REVOCATION_MAX_ENTRIES }).map(
    (e, i) => {
      const p = `${path}.entries[${i}]`;
      const em = asMap(e, p);
      checkKeys(em, new Set([1, 2]), p);
      const digest = asBytes(required(em, 1, p), `${p}.digest`, { min: 32, max: 32 });
      if (seen.has(hex(digest))) throw new TrustError('REVOCATION_MALFORMED', 'digest listed twice', p);
      seen.add(hex(digest));
      return em.has(2) ? { digest, reason: asText(em.get(2), `${p}.reason`, { max: 256 }) } : { digest };
    },
  );
  return { version, issuedAt, expiresAt, entries };
}

function withLookups(fields: RevocationListFields, bytes: Uint8Array): RevocationList {
  const hexDigests = new Set(fields.entries.map((e) => hex(e.digest)));
  return { ...fields, bytes, hexDigests, has: (d) => hexDigests.has(hex(d)) };
}

/** Creates a signed revocation list (the revocation authority's side). */
export async function createRevocationList(
  fields: RevocationListFields,
  signer: Signer,
): Promise<Uint8Array> {
  const payload = encodePayload(fields);
  parsePayload('REVOCATION_MALFORMED', 'create', () =>
    parseFields(asMap(decode(payload, { maxSize: REVOCATION_MAX_BYTES, maxDepth: 4 }), 'create'), 'create'),
  );
  return createSignedDoc(REVOCATION_CONTENT_TYPE, payload, signer);
}

export interface RevocationVerifyOptions extends SignedDocVerifyOptions {
  /** Current time, seconds since the Unix epoch (callers pass it in: this package reads no clock). */
  readonly now: number;
  /** Tolerated clock skew for issuedAt, seconds (default 300). */
  readonly skew?: number;
  /** Version of the list the device holds: the new one must be greater (anti-rollback). */
  readonly currentVersion?: number;
  /** Accept an expired list (used when re-reading the device's own stored list at boot). */
  readonly allowExpired?: boolean;
}

/**
 * Verifies a revocation list against the revocation authority keys (seed 000 step 7). Errors: REVOCATION_MALFORMED
 * / _UNKNOWN_KEY / _BAD_SIGNATURE / _ALG_NOT_ALLOWED / _ROLLBACK / _EXPIRED / _NOT_YET_VALID.
 */
export function verifyRevocationList(bytes: Uint8Array, opts: RevocationVerifyOptions): RevocationList {
  const path = 'revocation-list';
  const { payload } = verifySignedDoc(
    bytes,
    REVOCATION_CONTENT_TYPE,
    REVOCATION_MAX_BYTES,
    4,
    opts,
    {
      malformed: 'REVOCATION_MALFORMED',
      unknownKey: 'REVOCATION_UNKNOWN_KEY',
      badSignature: 'REVOCATION_BAD_SIGNATURE',
      algNotAllowed: 'REVOCATION_ALG_NOT_ALLOWED',
    },
    path,
  );
  const fields = parsePayload('REVOCATION_MALFORMED', path, () => parseFields(payload, `${path}.payload`));
  if (opts.currentVersion !== undefined && fields.version <= opts.currentVersion) {
    throw new TrustError(
      'REVOCATION_ROLLBACK',
      `version ${fields.version} is not newer than ${opts.currentVersion}`,
      path,
    );
  }
  if (fields.issuedAt > opts.now + (opts.skew ?? 300)) {
    throw new TrustError('REVOCATION_NOT_YET_VALID', 'issued in the future', path);
  }
  if (opts.allowExpired !== true && opts.now >= fields.expiresAt) {
    throw new TrustError('REVOCATION_EXPIRED', `expired at ${fields.expiresAt}`, path);
  }
  return withLookups(fields, bytes);
}

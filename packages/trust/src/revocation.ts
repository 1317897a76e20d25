/**
 * The general revocation list (issue 7; seed 001 §4 "Revocation List Management: a list of compromised devices and
 * revoked keys"; seed 001 §2 "Key Management: support for key rotation and revocation").
 *
 *   list = COSE_Sign1_Tagged, protected { 1: alg, 3: "application/rotor-revocation+cbor", 4: kid }
 *   payload = {
 *     1 => uint,                          ; version: a holder accepts only a newer list (anti-rollback)
 *     2 => uint,                          ; issued at (seconds since the Unix epoch)
 *     3 => uint,                          ; expires at: after it the list is stale — the holder must refresh
 *                                         ;   before trusting anything the list covers (freeze attack, TUF §5.3.8)
 *     4 => [* { 1 => kind,                ; 1 signing key (SUIT author/operator, by RFC 9679 thumbprint)
 *                                         ; 2 device RoT key (thumbprint), 3 component/module digest (SHA-256),
 *                                         ; 4 device (UEID)
 *               2 => bstr .size (1..64),  ; the identifier
 *               ? 3 => tstr }],           ; reason, for reports
 *   }
 *
 * It shares the signed-document envelope of the capability module revocation list (capability-signed.ts) and is a
 * superset of it: the module list's entries are the kind-3 entries here (`digests()`), so the capability code can
 * adopt this list by reading those.
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

export const TRUST_REVOCATION_CONTENT_TYPE = 'application/rotor-revocation+cbor';
export const TRUST_REVOCATION_MAX_ENTRIES = 65_536;
export const TRUST_REVOCATION_MAX_BYTES = 8 * 1024 * 1024;

export const RevokedKind = { signingKey: 1, rotKey: 2, digest: 3, device: 4 } as const;
export type RevokedKind = (typeof RevokedKind)[keyof typeof RevokedKind];
const KINDS: ReadonlySet<number> = new Set(Object.values(RevokedKind));

export interface RevokedEntry {
  readonly kind: RevokedKind;
  readonly id: Uint8Array;
  readonly reason?: string;
}

export interface TrustRevocationFields {
  readonly version: number;
  readonly issuedAt: number;
  readonly expiresAt: number;
  readonly entries: readonly RevokedEntry[];
}

export interface TrustRevocationList extends TrustRevocationFields {
  readonly bytes: Uint8Array;
  /** Whether `id` is revoked as `kind`. */
  has(kind: RevokedKind, id: Uint8Array): boolean;
  /** Whether the list has expired at `now` (seconds): then nothing it covers may be trusted until it is refreshed. */
  expired(now: number): boolean;
  /** Revoked SHA-256 digests (kind 3) as hex — the capability module list's content. */
  digests(): ReadonlySet<string>;
}

const key = (kind: number, id: Uint8Array): string => `${kind}:${hex(id)}`;

function encodePayload(f: TrustRevocationFields): Uint8Array {
  return encode(
    new Map<number, unknown>([
      [1, f.version],
      [2, Math.floor(f.issuedAt)],
      [3, Math.floor(f.expiresAt)],
      [
        4,
        f.entries.map((e) => {
          const m = new Map<number, unknown>([
            [1, e.kind],
            [2, e.id],
          ]);
          if (e.reason !== undefined) m.set(3, e.reason);
          return m;
        }),
      ],
    ]),
  );
}

function parseFields(m: ReturnType<typeof asMap>, path: string): TrustRevocationFields {
  checkKeys(m, new Set([1, 2, 3, 4]), path);
  const version = asUint(required(m, 1, path), `${path}.version`);
  const issuedAt = asUint(required(m, 2, path), `${path}.issuedAt`);
  const expiresAt = asUint(required(m, 3, path), `${path}.expiresAt`);
  if (expiresAt <= issuedAt) throw new TrustError('RVL_MALFORMED', 'expires before it is issued', path);
  const seen = new Set<string>();
  const entries = asArray(required(m, 4, path), `${path}.entries`, { max: TRUST_REVOCATION_MAX_ENTRIES }).map(
    (e, i): RevokedEntry => {
      const p = `${path}.entries[${i}]`;
      const em = asMap(e, p);
      checkKeys(em, new Set([1, 2, 3]), p);
      const kind = asUint(required(em, 1, p), `${p}.kind`);
      if (!KINDS.has(kind)) throw new TrustError('RVL_MALFORMED', `unknown kind ${kind}`, p);
      const k = kind as RevokedKind;
      const id = asBytes(required(em, 2, p), `${p}.id`, { min: 1, max: 64 });
      if (
        (k === RevokedKind.digest || k === RevokedKind.signingKey || k === RevokedKind.rotKey) &&
        id.length !== 32
      )
        throw new TrustError('RVL_MALFORMED', 'key thumbprints and digests are 32 bytes', p);
      if (seen.has(key(k, id))) throw new TrustError('RVL_MALFORMED', 'entry listed twice', p);
      seen.add(key(k, id));
      return em.has(3)
        ? { kind: k, id, reason: asText(em.get(3), `${p}.reason`, { max: 256 }) }
        : { kind: k, id };
    },
  );
  return { version, issuedAt, expiresAt, entries };
}

function withLookups(f: TrustRevocationFields, bytes: Uint8Array): TrustRevocationList {
  const all = new Set(f.entries.map((e) => key(e.kind, e.id)));
  const digests = new Set(f.entries.filter((e) => e.kind === RevokedKind.digest).map((e) => hex(e.id)));
  return {
    ...f,
    bytes,
    has: (kind, id) => all.has(key(kind, id)),
    expired: (now) => now >= f.expiresAt,
    digests: () => digests,
  };
}

/** Creates a signed list (the revocation authority's side; the signer needs a kid). */
export async function createTrustRevocationList(
  fields: TrustRevocationFields,
  signer: Signer,
): Promise<Uint8Array> {
  const payload = encodePayload(fields);
  parsePayload('RVL_MALFORMED', 'create', () =>
    parseFields(
      asMap(decode(payload, { maxSize: TRUST_REVOCATION_MAX_BYTES, maxDepth: 4 }), 'create'),
      'create',
    ),
  );
  return createSignedDoc(TRUST_REVOCATION_CONTENT_TYPE, payload, signer);
}

export interface TrustRevocationVerifyOptions extends SignedDocVerifyOptions {
  /** Current time, seconds since the Unix epoch (this package reads no clock). */
  readonly now: number;
  /** Tolerated clock skew for issuedAt, seconds (default 300). */
  readonly skew?: number;
  /** Version held: the new list must be greater (anti-rollback). */
  readonly currentVersion?: number;
  /** Accept an expired list (re-reading the holder's own stored list; it must still be refreshed before use). */
  readonly allowExpired?: boolean;
}

/**
 * Verifies a list against the revocation authority keys. Errors: RVL_MALFORMED, RVL_SIGNATURE (unknown authority,
 * algorithm not allowed, bad signature), RVL_ROLLBACK, RVL_EXPIRED (also for an issue time in the future).
 */
export function verifyTrustRevocationList(
  bytes: Uint8Array,
  opts: TrustRevocationVerifyOptions,
): TrustRevocationList {
  const path = 'revocation';
  const { payload } = verifySignedDoc(
    bytes,
    TRUST_REVOCATION_CONTENT_TYPE,
    TRUST_REVOCATION_MAX_BYTES,
    4,
    opts,
    {
      malformed: 'RVL_MALFORMED',
      unknownKey: 'RVL_SIGNATURE',
      badSignature: 'RVL_SIGNATURE',
      algNotAllowed: 'RVL_SIGNATURE',
    },
    path,
  );
  const fields = parsePayload('RVL_MALFORMED', path, () => parseFields(payload, `${path}.payload`));
  if (opts.currentVersion !== undefined && fields.version <= opts.currentVersion)
    throw new TrustError(
      'RVL_ROLLBACK',
      `version ${fields.version} is not newer than ${opts.currentVersion}`,
      path,
    );
  if (fields.issuedAt > opts.now + (opts.skew ?? 300))
    throw new TrustError('RVL_EXPIRED', 'issued in the future (clock or list is wrong)', path);
  if (opts.allowExpired !== true && opts.now >= fields.expiresAt)
    throw new TrustError('RVL_EXPIRED', `expired at ${fields.expiresAt}`, path);
  return withLookups(fields, bytes);
}

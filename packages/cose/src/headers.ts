/**
 * COSE header buckets (RFC 9052 §3): decoding of the protected bstr, the common parameters of §3.1 and the
 * checks every COSE structure shares. Decoding accepts maps in any key order (COSE does not require
 * deterministic encoding; published SUIT vectors contain unsorted headers) but never duplicate keys.
 */
import { CborMap, CborTag, decode } from './cbor.ts';
import { CoseError } from './errors.ts';

export const HeaderLabel = {
  alg: 1,
  crit: 2,
  contentType: 3,
  kid: 4,
  iv: 5,
  partialIv: 6,
  counterSignature: 7,
  ephemeralKey: -1,
  staticKey: -2,
  staticKeyId: -3,
  salt: -20,
  partyUIdentity: -21,
  partyUNonce: -22,
  partyUOther: -23,
  partyVIdentity: -24,
  partyVNonce: -25,
  partyVOther: -26,
} as const;

/** Labels of RFC 9052 §3.1 that this implementation processes (so they may appear in `crit`). */
const BASE_UNDERSTOOD: ReadonlySet<number | string> = new Set([1, 3, 4, 5, 6]);

/** Decoding options for untrusted COSE input. */
export const COSE_DECODE = { sortedKeys: false } as const;

/**
 * Decodes untrusted COSE input: maps in any key order, duplicates refused (RFC 8949 §5.6). Deterministically
 * encoded input (the common case, and everything Rotor emits) takes the faster sorted-keys path; only input
 * with unsorted maps is decoded a second time with the order-agnostic duplicate check.
 */
export function decodeCose(bytes: Uint8Array, maxSize?: number): unknown {
  const opts = maxSize === undefined ? {} : { maxSize };
  try {
    return decode(bytes, opts);
  } catch (e) {
    if (e instanceof CoseError && e.code === 'CBOR_UNSORTED_KEYS')
      return decode(bytes, { ...opts, ...COSE_DECODE });
    throw e;
  }
}

export interface ParsedHeaders {
  /** The protected bucket exactly as received (the bstr content), used in every ToBeSigned/MAC/AAD structure. */
  readonly protectedBytes: Uint8Array;
  readonly protectedHeaders: CborMap;
  readonly unprotectedHeaders: CborMap;
  /** Algorithm (label 1) from whichever bucket holds it. */
  readonly alg: number | undefined;
  /** Whether the algorithm is in the protected bucket. */
  readonly algProtected: boolean;
  readonly kid: Uint8Array | undefined;
  readonly iv: Uint8Array | undefined;
  readonly partialIv: Uint8Array | undefined;
}

export interface HeaderOptions {
  /** Extra labels the caller understands and therefore accepts in `crit` (RFC 9052 §3.1). */
  readonly critLabels?: ReadonlySet<number | string>;
}

const EMPTY_MAP = new CborMap([]);
const EMPTY_BYTES = new Uint8Array(0);

function labelText(k: unknown): string {
  return typeof k === 'string' ? JSON.stringify(k) : String(k);
}

/** Value of a header label from either bucket (protected first). */
export function headerValue(h: ParsedHeaders, label: number): unknown {
  return h.protectedHeaders.has(label) ? h.protectedHeaders.get(label) : h.unprotectedHeaders.get(label);
}

/** Unwraps an optional/required/forbidden COSE tag around a message. */
export function untag(
  v: unknown,
  tag: number,
  policy: 'required' | 'optional' | 'forbidden',
  name: string,
): unknown {
  if (v instanceof CborTag) {
    // RFC 9052 §2: the tag identifies the structure; a different tag is a different message type.
    if (v.tag !== tag)
      throw new CoseError('COSE_MALFORMED', `${name}: unexpected tag ${v.tag}, expected ${tag}`, '$');
    if (policy === 'forbidden')
      throw new CoseError('COSE_MALFORMED', `${name}: tag ${tag} not allowed here`, '$');
    return v.value;
  }
  if (policy === 'required') throw new CoseError('COSE_MALFORMED', `${name}: tag ${tag} required`, '$');
  return v;
}

/** An array of exactly `n` (or between min and max) items, else COSE_MALFORMED. */
export function structArray(v: unknown, min: number, max: number, name: string, path: string): unknown[] {
  if (!Array.isArray(v)) throw new CoseError('COSE_MALFORMED', `${name} must be an array`, path);
  const a = v as unknown[];
  if (a.length < min || a.length > max) {
    throw new CoseError(
      'COSE_MALFORMED',
      `${name} must have ${min === max ? min : `${min}..${max}`} items`,
      path,
    );
  }
  return a;
}

export function structBytes(v: unknown, name: string, path: string): Uint8Array {
  if (!(v instanceof Uint8Array)) throw new CoseError('COSE_MALFORMED', `${name} must be a bstr`, path);
  return v;
}

export function structBytesOrNil(v: unknown, name: string, path: string): Uint8Array | null {
  if (v === null) return null;
  if (!(v instanceof Uint8Array))
    throw new CoseError('COSE_MALFORMED', `${name} must be a bstr or nil`, path);
  return v;
}

/** Decodes the protected bucket: a bstr holding a serialized map, zero-length when empty (RFC 9052 §3). */
export function decodeProtected(v: unknown, path: string): { bytes: Uint8Array; map: CborMap } {
  const bytes = structBytes(v, 'protected header', path);
  if (bytes.length === 0) return { bytes, map: EMPTY_MAP };
  const m = decodeCose(bytes);
  // RFC 9052 §3: empty_or_serialized_map = bstr .cbor header_map / bstr .size 0
  if (!(m instanceof CborMap)) throw new CoseError('COSE_MALFORMED', 'protected header is not a map', path);
  return { bytes, map: m };
}

/**
 * Parses and checks both buckets of one COSE layer:
 *  - labels are int or tstr (RFC 9052 §3 `label = int / tstr`);
 *  - no label appears in both buckets (RFC 9052 §3);
 *  - `crit` is in the protected bucket, non-empty, lists only labels present in the protected bucket, and only
 *    labels this implementation (or the caller) understands (RFC 9052 §3.1);
 *  - alg is int (text algorithms are not in the table), kid/IV/Partial IV are bstr, content type uint/tstr,
 *    IV and Partial IV not both present (RFC 9052 §3.1).
 */
export function parseHeaders(
  protectedItem: unknown,
  unprotectedItem: unknown,
  path: string,
  opts?: HeaderOptions & { layerCrit?: ReadonlySet<number | string> },
): ParsedHeaders {
  const { bytes: protectedBytes, map: protectedHeaders } = decodeProtected(protectedItem, `${path}[0]`);
  if (!(unprotectedItem instanceof CborMap)) {
    throw new CoseError('COSE_MALFORMED', 'unprotected header must be a map', `${path}[1]`);
  }
  const unprotectedHeaders = unprotectedItem;
  for (const [bucket, m] of [
    ['protected', protectedHeaders],
    ['unprotected', unprotectedHeaders],
  ] as const) {
    for (const [k] of m.entries) {
      // RFC 9052 §3: label = int / tstr
      if (typeof k !== 'number' && typeof k !== 'string') {
        throw new CoseError('COSE_HEADER_INVALID', `${bucket} header label must be int or tstr`, path);
      }
      // RFC 9052 §3: a label MUST NOT occur in both the protected and the unprotected bucket.
      if (bucket === 'unprotected' && protectedHeaders.has(k)) {
        throw new CoseError('COSE_HEADER_INVALID', `header label ${labelText(k)} is in both buckets`, path);
      }
    }
  }

  // RFC 9052 §3.1 crit: protected bucket only, at least one label, each understood.
  if (unprotectedHeaders.has(HeaderLabel.crit)) {
    throw new CoseError('COSE_HEADER_INVALID', 'crit must be in the protected bucket', `${path}[1]{2}`);
  }
  if (protectedHeaders.has(HeaderLabel.crit)) {
    const crit = protectedHeaders.get(HeaderLabel.crit);
    if (!Array.isArray(crit) || crit.length === 0) {
      throw new CoseError('COSE_HEADER_INVALID', 'crit must be a non-empty array', `${path}[0]{2}`);
    }
    for (const label of crit as unknown[]) {
      if (typeof label !== 'number' && typeof label !== 'string') {
        throw new CoseError('COSE_HEADER_INVALID', 'crit labels must be int or tstr', `${path}[0]{2}`);
      }
      if (!protectedHeaders.has(label)) {
        throw new CoseError(
          'COSE_HEADER_INVALID',
          `crit lists ${labelText(label)}, absent from the protected bucket`,
          `${path}[0]{2}`,
        );
      }
      const understood =
        BASE_UNDERSTOOD.has(label) ||
        opts?.layerCrit?.has(label) === true ||
        opts?.critLabels?.has(label) === true;
      if (!understood) {
        throw new CoseError(
          'COSE_CRIT_UNSUPPORTED',
          `critical header ${labelText(label)} not understood`,
          path,
        );
      }
    }
  }

  const algProtected = protectedHeaders.has(HeaderLabel.alg);
  const algRaw = algProtected
    ? protectedHeaders.get(HeaderLabel.alg)
    : unprotectedHeaders.get(HeaderLabel.alg);
  let alg: number | undefined;
  if (algRaw !== undefined) {
    if (typeof algRaw === 'string') {
      // RFC 9052 §3.1 allows tstr algorithms; none is registered, so none is in our table.
      throw new CoseError(
        'COSE_ALG_UNKNOWN',
        `unknown COSE algorithm ${JSON.stringify(algRaw)}`,
        `${path}{1}`,
      );
    }
    if (typeof algRaw !== 'number' || !Number.isSafeInteger(algRaw)) {
      throw new CoseError('COSE_HEADER_INVALID', 'alg must be int or tstr', `${path}{1}`);
    }
    alg = algRaw;
  }

  const ct = protectedHeaders.has(3) ? protectedHeaders.get(3) : unprotectedHeaders.get(3);
  if (ct !== undefined && !(typeof ct === 'string' || (typeof ct === 'number' && ct >= 0))) {
    throw new CoseError('COSE_HEADER_INVALID', 'content type must be uint or tstr', `${path}{3}`);
  }
  const kid = optionalBytesHeader(protectedHeaders, unprotectedHeaders, HeaderLabel.kid, 'kid', path);
  const iv = optionalBytesHeader(protectedHeaders, unprotectedHeaders, HeaderLabel.iv, 'IV', path);
  const partialIv = optionalBytesHeader(
    protectedHeaders,
    unprotectedHeaders,
    HeaderLabel.partialIv,
    'Partial IV',
    path,
  );
  // RFC 9052 §3.1: "The 'Initialization Vector' and 'Partial Initialization Vector' parameters MUST NOT both be present"
  if (iv !== undefined && partialIv !== undefined) {
    throw new CoseError('COSE_HEADER_INVALID', 'IV and Partial IV are both present', path);
  }
  return { protectedBytes, protectedHeaders, unprotectedHeaders, alg, algProtected, kid, iv, partialIv };
}

function optionalBytesHeader(
  p: CborMap,
  u: CborMap,
  label: number,
  name: string,
  path: string,
): Uint8Array | undefined {
  const v = p.has(label) ? p.get(label) : u.get(label);
  if (v === undefined) return undefined;
  if (!(v instanceof Uint8Array))
    throw new CoseError('COSE_HEADER_INVALID', `${name} must be a bstr`, `${path}{${label}}`);
  return v;
}

/** Encodes a protected bucket: the zero-length bstr content when empty (RFC 9052 §3), else the serialized map. */
export function protectedBytesOf(
  m: ReadonlyMap<number, unknown>,
  enc: (v: unknown) => Uint8Array,
): Uint8Array {
  return m.size === 0 ? EMPTY_BYTES : enc(m);
}

/** Fails with COSE_HEADER_INVALID when a label is in both maps (RFC 9052 §3). */
export function assertDisjoint(p: ReadonlyMap<number, unknown>, u: ReadonlyMap<number, unknown>): void {
  for (const k of u.keys()) {
    if (p.has(k)) throw new CoseError('COSE_HEADER_INVALID', `header label ${k} is in both buckets`);
  }
}

/** Equality of two public byte strings such as key ids (secrets use crypto.timingSafeEqual). */
export function bytesEqual(a: Uint8Array | undefined, b: Uint8Array | undefined): boolean {
  if (a === undefined || b === undefined) return a === b;
  return Buffer.compare(a, b) === 0;
}

/**
 * The payload to authenticate: the attached one, or the detached one the caller supplies (RFC 9052 §2: a nil
 * payload means the content is transported separately). Supplying both is refused, as is supplying neither.
 */
export function selectPayload(attached: Uint8Array | null, detached: Uint8Array | undefined): Uint8Array {
  if (attached !== null) {
    if (detached !== undefined) {
      throw new CoseError('COSE_UNSUPPORTED', 'payload is attached; a detached payload was also supplied');
    }
    return attached;
  }
  if (detached === undefined)
    throw new CoseError('COSE_MALFORMED', 'payload is detached (nil) and none was supplied');
  return detached;
}

/** Builds the two header buckets of a message being created (RFC 9052 §3): alg protected, kid unprotected. */
export function buildHeaders(
  alg: number,
  kid: Uint8Array | undefined,
  protectedExtra: ReadonlyMap<number, unknown> | undefined,
  unprotectedIn: ReadonlyMap<number, unknown> | undefined,
): { protectedMap: Map<number, unknown>; unprotected: Map<number, unknown> } {
  const protectedMap = new Map<number, unknown>([[HeaderLabel.alg, alg]]);
  for (const [k, v] of protectedExtra ?? []) {
    if (k === HeaderLabel.alg && v !== alg)
      throw new CoseError('COSE_HEADER_INVALID', 'protected alg differs from the key alg');
    protectedMap.set(k, v);
  }
  const unprotected = new Map<number, unknown>(unprotectedIn ?? []);
  if (kid !== undefined) {
    const given = unprotected.get(HeaderLabel.kid);
    if (given !== undefined && !(given instanceof Uint8Array && bytesEqual(given, kid))) {
      throw new CoseError('COSE_HEADER_INVALID', 'unprotected kid differs from the key kid');
    }
    if (!protectedMap.has(HeaderLabel.kid)) unprotected.set(HeaderLabel.kid, kid);
  }
  assertDisjoint(protectedMap, unprotected);
  return { protectedMap, unprotected };
}

/**
 * Trust-anchor statements (issue 7; seed 001 §4 "Dynamic Root of Trust: new root key signed by a trusted
 * authority"; the TUF specification §5.3.4 root-rotation rule).
 *
 * A statement is the whole anchor set of one version — the keys of each role and the role's threshold:
 *
 *   statement = COSE_Sign_Tagged (RFC 9052 §4.1), body protected { 3: "application/rotor-anchors+cbor" },
 *               one COSE_Signature per signing key (protected { 1: alg }, unprotected { 4: kid })
 *   payload = {
 *     1 => uint,                               ; version (1 = the set provisioned at the factory)
 *     2 => uint,                               ; issued at (seconds since the Unix epoch)
 *     3 => { role => role-keys },              ; "root" is required; "author", "operator", "server-ca", …
 *   }
 *   role-keys = { 1 => uint .ge 1,             ; threshold
 *                 2 => [ + anchor-key ] }
 *   anchor-key = { 1 => COSE_Key,               ; public key; kid = its RFC 9679 thumbprint
 *                  ? 2 => bstr }                ; DER certificate (server CA), for TLS stacks that need one
 *
 * Rules (TUF §5.3.4, applied by `applyAnchorStatement`):
 *  - version N+1 is checked against N only: statements are applied strictly in order, one version at a time;
 *    a device that missed several versions walks them in order (`walkAnchorStatements`);
 *  - a statement must carry valid signatures from at least `threshold` distinct keys of the *current* root role
 *    and from at least `threshold` distinct keys of the *new* root role (old and new authority both agree);
 *  - the new set replaces the old entirely: a key that is no longer listed is no longer trusted.
 */
import {
  asArray,
  asBytes,
  asMap,
  asText,
  asUint,
  coseKeyToMap,
  createSign,
  decode,
  decodeSign,
  encode,
  parseCoseKey,
  verifierFromCoseKey,
  verifySignature,
  type CoseKey,
  type Signer,
  type Verifier,
} from '@rotor/cose';
import { TrustError } from './errors.ts';
import { bytesEqual, coseKeyThumbprint, hex } from './thumbprint.ts';

export const ANCHORS_CONTENT_TYPE = 'application/rotor-anchors+cbor';
export const ANCHORS_MAX_BYTES = 256 * 1024;
export const ANCHORS_MAX_ROLES = 16;
export const ANCHORS_MAX_KEYS = 64;
export const ROOT_ROLE = 'root';

export interface AnchorKey {
  /** RFC 9679 thumbprint of the public key. */
  readonly kid: Uint8Array;
  readonly key: CoseKey;
  readonly certificate?: Uint8Array;
}

export interface AnchorRole {
  readonly threshold: number;
  readonly keys: readonly AnchorKey[];
}

export interface AnchorSetFields {
  readonly version: number;
  readonly issuedAt: number;
  readonly roles: ReadonlyMap<string, AnchorRole>;
}

/** A parsed statement (its signatures not yet judged) or an applied, trusted anchor set. */
export interface AnchorSet extends AnchorSetFields {
  /** The statement's bytes (persisted as is). */
  readonly bytes: Uint8Array;
  /** Keys of a role (empty if the role is absent). */
  role(name: string): readonly AnchorKey[];
  /** Verifiers of a role's keys, with their kids. */
  verifiers(name: string): Verifier[];
}

/** An anchor key from a public COSE_Key (the key's alg must be set: it fixes the signature algorithm). */
export function anchorKey(key: CoseKey, certificate?: Uint8Array): AnchorKey {
  if (key.alg === undefined) throw new TrustError('ANCHORS_MALFORMED', 'anchor keys need an alg');
  const pub: CoseKey = { kty: key.kty, alg: key.alg };
  if (key.crv !== undefined) pub.crv = key.crv;
  if (key.x !== undefined) pub.x = key.x;
  if (key.y !== undefined) pub.y = key.y;
  const kid = coseKeyThumbprint(pub);
  pub.kid = kid;
  return certificate === undefined ? { kid, key: pub } : { kid, key: pub, certificate };
}

function encodePayload(f: AnchorSetFields): Uint8Array {
  const roles = new Map<string, unknown>();
  for (const [name, r] of f.roles) {
    roles.set(
      name,
      new Map<number, unknown>([
        [1, r.threshold],
        [
          2,
          r.keys.map((k) => {
            const m = new Map<number, unknown>([[1, coseKeyToMap(k.key)]]);
            if (k.certificate !== undefined) m.set(2, k.certificate);
            return m;
          }),
        ],
      ]),
    );
  }
  return encode(
    new Map<number, unknown>([
      [1, f.version],
      [2, Math.floor(f.issuedAt)],
      [3, roles],
    ]),
  );
}

function checkFields(f: AnchorSetFields): void {
  if (!Number.isSafeInteger(f.version) || f.version < 1)
    throw new TrustError('ANCHORS_MALFORMED', 'version must be an integer ≥ 1');
  const root = f.roles.get(ROOT_ROLE);
  if (root === undefined) throw new TrustError('ANCHORS_MALFORMED', 'the root role is required');
  if (f.roles.size > ANCHORS_MAX_ROLES) throw new TrustError('ANCHORS_MALFORMED', 'too many roles');
  for (const [name, r] of f.roles) {
    if (r.keys.length === 0 || r.keys.length > ANCHORS_MAX_KEYS)
      throw new TrustError('ANCHORS_MALFORMED', `role ${name}: 1..${ANCHORS_MAX_KEYS} keys`);
    if (!Number.isSafeInteger(r.threshold) || r.threshold < 1 || r.threshold > r.keys.length)
      throw new TrustError('ANCHORS_MALFORMED', `role ${name}: threshold must be 1..${r.keys.length}`);
    const seen = new Set<string>();
    for (const k of r.keys) {
      const h = hex(k.kid);
      if (seen.has(h)) throw new TrustError('ANCHORS_MALFORMED', `role ${name}: key listed twice`);
      seen.add(h);
    }
  }
}

function makeSet(f: AnchorSetFields, bytes: Uint8Array): AnchorSet {
  const verifierCache = new Map<string, Verifier[]>();
  return {
    ...f,
    bytes,
    role: (name) => f.roles.get(name)?.keys ?? [],
    verifiers(name) {
      let v = verifierCache.get(name);
      if (v === undefined) {
        v = (f.roles.get(name)?.keys ?? []).map((k) => verifierFromCoseKey(k.key));
        verifierCache.set(name, v);
      }
      return v;
    },
  };
}

/** Signs a statement with every given signer (old root keys and new root keys alike; kid = thumbprint). */
export async function createAnchorStatement(
  f: AnchorSetFields,
  signers: readonly Signer[],
): Promise<Uint8Array> {
  checkFields(f);
  for (const s of signers)
    if (s.kid === undefined) throw new TrustError('ANCHORS_MALFORMED', 'every signer needs a kid');
  return createSign(encodePayload(f), signers, {
    protectedExtra: new Map<number, unknown>([[3, ANCHORS_CONTENT_TYPE]]),
  });
}

interface Decoded {
  set: AnchorSet;
  msg: ReturnType<typeof decodeSign>;
}

function decodeStatement(bytes: Uint8Array): Decoded {
  if (bytes.length > ANCHORS_MAX_BYTES)
    throw new TrustError('ANCHORS_MALFORMED', `${bytes.length} bytes exceed ${ANCHORS_MAX_BYTES}`);
  try {
    const msg = decodeSign(bytes, { tag: 'required', maxSize: ANCHORS_MAX_BYTES });
    if (msg.protectedHeaders.get(3) !== ANCHORS_CONTENT_TYPE)
      throw new TrustError('ANCHORS_MALFORMED', `protected content type is not ${ANCHORS_CONTENT_TYPE}`);
    if (msg.payload === null) throw new TrustError('ANCHORS_MALFORMED', 'payload is detached');
    if (msg.signatures.length > 2 * ANCHORS_MAX_KEYS)
      throw new TrustError('ANCHORS_MALFORMED', 'too many signatures');
    const m = asMap(decode(msg.payload, { maxSize: ANCHORS_MAX_BYTES, maxDepth: 8 }), 'payload');
    const rolesMap = asMap(m.get(3), 'payload.3');
    const roles = new Map<string, AnchorRole>();
    if (rolesMap.size > ANCHORS_MAX_ROLES) throw new TrustError('ANCHORS_MALFORMED', 'too many roles');
    for (const [name, v] of rolesMap.entries) {
      const role = asText(name, 'role', { max: 64 });
      const rm = asMap(v, `roles.${role}`);
      const keys = asArray(rm.get(2), `roles.${role}.2`, { min: 1, max: ANCHORS_MAX_KEYS }).map((kv, i) => {
        const km = asMap(kv, `roles.${role}.2[${i}]`);
        const key = parseCoseKey(km.get(1), `roles.${role}.2[${i}].1`);
        const cert = km.get(2);
        return anchorKey(key, cert === undefined ? undefined : asBytes(cert, 'certificate', { max: 16384 }));
      });
      roles.set(role, { threshold: asUint(rm.get(1), `roles.${role}.1`), keys });
    }
    const f: AnchorSetFields = {
      version: asUint(m.get(1), 'payload.1'),
      issuedAt: asUint(m.get(2), 'payload.2'),
      roles,
    };
    checkFields(f);
    return { set: makeSet(f, bytes), msg };
  } catch (e) {
    if (e instanceof TrustError) throw e;
    throw new TrustError('ANCHORS_MALFORMED', `not a trust-anchor statement: ${String(e)}`, undefined, {
      cause: e,
    });
  }
}

/** Distinct keys of `keys` with a valid signature on the statement (each key counted once, TUF §5.3.4). */
function validSigners(
  msg: Decoded['msg'],
  keys: readonly AnchorKey[],
  allowedAlgs: ReadonlySet<number>,
): number {
  const ok = new Set<string>();
  for (const [i, sig] of msg.signatures.entries()) {
    if (sig.kid === undefined) continue;
    const k = keys.find((x) => bytesEqual(x.kid, sig.kid!));
    if (k === undefined || ok.has(hex(k.kid))) continue;
    try {
      verifySignature(msg, i, verifierFromCoseKey(k.key), { allowedAlgs });
      ok.add(hex(k.kid));
    } catch {
      // an invalid signature simply does not count
    }
  }
  return ok.size;
}

/**
 * The factory-provisioned set (version 1): pinned by provisioning, so trusted as given, but it must still be
 * signed by its own root threshold (a corrupted or hand-edited set is refused).
 */
export function initialAnchorSet(bytes: Uint8Array, allowedAlgs: ReadonlySet<number>): AnchorSet {
  const d = decodeStatement(bytes);
  const root = d.set.roles.get(ROOT_ROLE)!;
  if (validSigners(d.msg, root.keys, allowedAlgs) < root.threshold)
    throw new TrustError('ANCHORS_THRESHOLD', 'the initial set is not signed by its own root threshold');
  return d.set;
}

/** Decodes a statement without judging its signatures (for servers that store and index statements). */
export function peekAnchorStatement(bytes: Uint8Array): AnchorSetFields {
  return decodeStatement(bytes).set;
}

/**
 * TUF §5.3.4: statement N+1 is checked against set N — its version must be exactly N+1, and it must be signed by
 * the threshold of N's root keys AND by the threshold of its own (new) root keys. Returns the new set.
 */
export function applyAnchorStatement(
  current: AnchorSet,
  bytes: Uint8Array,
  allowedAlgs: ReadonlySet<number>,
): AnchorSet {
  const d = decodeStatement(bytes);
  if (d.set.version !== current.version + 1)
    throw new TrustError(
      'ANCHORS_VERSION',
      `statement version ${d.set.version} is not the next after ${current.version}`,
    );
  const oldRoot = current.roles.get(ROOT_ROLE)!;
  const newRoot = d.set.roles.get(ROOT_ROLE)!;
  const byOld = validSigners(d.msg, oldRoot.keys, allowedAlgs);
  if (byOld < oldRoot.threshold)
    throw new TrustError(
      'ANCHORS_THRESHOLD',
      `signed by ${byOld} of the current root keys; threshold ${oldRoot.threshold}`,
    );
  const byNew = validSigners(d.msg, newRoot.keys, allowedAlgs);
  if (byNew < newRoot.threshold)
    throw new TrustError(
      'ANCHORS_THRESHOLD',
      `signed by ${byNew} of the new root keys; threshold ${newRoot.threshold}`,
    );
  return d.set;
}

/**
 * A device behind by several versions walks them in order (TUF §5.3.4): statements are sorted by version, those
 * not newer than `current` are skipped, each next one is applied against its predecessor. Stops at the first
 * failure (returning the last good set and the error), so a device keeps what it could verify.
 */
export function walkAnchorStatements(
  current: AnchorSet,
  statements: readonly Uint8Array[],
  allowedAlgs: ReadonlySet<number>,
): { set: AnchorSet; applied: AnchorSet[]; error?: TrustError } {
  const parsed: { version: number; bytes: Uint8Array }[] = [];
  for (const b of statements) {
    try {
      parsed.push({ version: peekAnchorStatement(b).version, bytes: b });
    } catch (e) {
      return { set: current, applied: [], error: e instanceof TrustError ? e : undefined };
    }
  }
  parsed.sort((a, b) => a.version - b.version);
  let set = current;
  const applied: AnchorSet[] = [];
  for (const p of parsed) {
    if (p.version <= set.version) continue;
    try {
      set = applyAnchorStatement(set, p.bytes, allowedAlgs);
      applied.push(set);
    } catch (e) {
      if (e instanceof TrustError) return { set, applied, error: e };
      throw e;
    }
  }
  return { set, applied };
}

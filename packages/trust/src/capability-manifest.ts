/**
 * The capability manifest (seed 000 §1 "Capability Manifest: a digitally signed list detailing available/authorized
 * capability modules for the device ... part of the initial provisioning but can be updated"; step 1).
 *
 *   manifest = COSE_Sign1_Tagged, protected { 1: alg, 3: "application/rotor-capability-manifest+cbor", 4: kid }
 *   payload = {
 *     1 => uint,                          ; version: a device accepts only a newer one (anti-rollback)
 *     2 => uint,                          ; issued at, seconds since the Unix epoch
 *     3 => [* { 1 => COSE_Key,            ; a capability-signing key (public, with kid and alg)
 *               2 => [+ tstr] }],         ;   capability names it may sign ("*" = any)
 *     4 => [* { 1 => tstr,                ; an authorized capability name
 *               ? 2 => version,           ;   lowest authorized module version
 *               ? 3 => version,           ;   highest authorized module version
 *               ? 4 => [+ bstr .size 32] }],  ; if present, only modules with these SHA-256 digests
 *   }
 *
 * A module is authorized when its name is listed (within the version bounds and digest pins), and its envelope is
 * signed by a listed key whose names cover it (seed 000 §1 "Modules are signed with a capability-specific key").
 * The keys become a SUIT trust policy with one component prefix per name (draft-ietf-suit-manifest §9 ACL model),
 * so the SUIT layer enforces the key-to-capability binding.
 */
import {
  asArray,
  asBytes,
  asMap,
  asText,
  asUint,
  checkKeys,
  coseKeyToMap,
  decode,
  encode,
  parseCoseKey,
  required,
  verifierFromCoseKey,
  type CoseKey,
  type Signer,
  type Verifier,
} from '@rotor/cose';
import {
  compareModuleVersion,
  isCapabilityName,
  parseModuleVersion,
  versionInRange,
  type ModuleVersion,
} from './capability-metadata.ts';
import {
  createSignedDoc,
  parsePayload,
  verifySignedDoc,
  type SignedDocVerifyOptions,
} from './capability-signed.ts';
import { TrustError } from './errors.ts';
import { bytesEqual, hex } from './thumbprint.ts';

export const CAPABILITY_MANIFEST_CONTENT_TYPE = 'application/rotor-capability-manifest+cbor';
export const CAPABILITY_MANIFEST_MAX_BYTES = 256 * 1024;
const MAX_KEYS = 64;
const MAX_MODULES = 1024;
const MAX_PINS = 64;
export const ANY_CAPABILITY = '*';

export interface CapabilityKey {
  readonly key: CoseKey;
  readonly kid: Uint8Array;
  readonly alg: number;
  /** Capability names the key may sign; contains ANY_CAPABILITY for any. */
  readonly names: readonly string[];
}

export interface AuthorizedModule {
  readonly name: string;
  readonly minVersion?: ModuleVersion;
  readonly maxVersion?: ModuleVersion;
  /** SHA-256 digests of the only module binaries allowed, when present. */
  readonly digests?: readonly Uint8Array[];
}

export interface CapabilityManifestFields {
  readonly version: number;
  readonly issuedAt: number;
  readonly keys: readonly CapabilityKey[];
  readonly modules: readonly AuthorizedModule[];
}

export interface CapabilityManifest extends CapabilityManifestFields {
  /** The signed document as received. */
  readonly bytes: Uint8Array;
  readonly keyVerifiers: readonly { readonly key: CapabilityKey; readonly verifier: Verifier }[];
}

/** Why a module is not authorized, or undefined when it is. */
export function capabilityAuthorization(
  manifest: CapabilityManifestFields,
  name: string,
  version: ModuleVersion,
  digest: Uint8Array,
): string | undefined {
  const entry = manifest.modules.find((m) => m.name === name);
  if (entry === undefined) return `capability ${name} is not in the capability manifest`;
  if (entry.minVersion !== undefined && !versionInRange(version, entry.minVersion, entry.maxVersion)) {
    return `version ${version.join('.')} of ${name} is outside the authorized range`;
  }
  if (entry.maxVersion !== undefined && compareModuleVersion(version, entry.maxVersion) > 0) {
    return `version ${version.join('.')} of ${name} is above the authorized maximum`;
  }
  if (entry.digests !== undefined && !entry.digests.some((d) => bytesEqual(d, digest))) {
    return `module digest ${hex(digest)} of ${name} is not pinned in the capability manifest`;
  }
  return undefined;
}

/** Whether a key entry may sign capability `name`. */
export function keyCoversCapability(key: CapabilityKey, name: string): boolean {
  return key.names.includes(ANY_CAPABILITY) || key.names.includes(name);
}

function encodePayload(f: CapabilityManifestFields): Uint8Array {
  return encode(
    new Map<number, unknown>([
      [1, f.version],
      [2, Math.floor(f.issuedAt)],
      [
        3,
        f.keys.map(
          (k) =>
            new Map<number, unknown>([
              [1, coseKeyToMap({ ...k.key, kid: k.kid, alg: k.alg })],
              [2, [...k.names]],
            ]),
        ),
      ],
      [
        4,
        f.modules.map((m) => {
          const e = new Map<number, unknown>([[1, m.name]]);
          if (m.minVersion !== undefined) e.set(2, [...m.minVersion]);
          if (m.maxVersion !== undefined) e.set(3, [...m.maxVersion]);
          if (m.digests !== undefined) e.set(4, [...m.digests]);
          return e;
        }),
      ],
    ]),
  );
}

function parseFields(payload: ReturnType<typeof asMap>, path: string): CapabilityManifestFields {
  checkKeys(payload, new Set([1, 2, 3, 4]), path);
  const version = asUint(required(payload, 1, path), `${path}.version`);
  const issuedAt = asUint(required(payload, 2, path), `${path}.issuedAt`);
  const kids = new Set<string>();
  const keys = asArray(required(payload, 3, path), `${path}.keys`, { max: MAX_KEYS }).map((e, i) => {
    const p = `${path}.keys[${i}]`;
    const m = asMap(e, p);
    checkKeys(m, new Set([1, 2]), p);
    const key = parseCoseKey(required(m, 1, p), `${p}.key`);
    if (key.d !== undefined || key.kty === 4) throw malformed('a capability key must be a public key', p);
    if (key.kid === undefined || key.kid.length === 0 || key.kid.length > 64)
      throw malformed('a capability key needs a kid of 1..64 bytes', p);
    if (key.alg === undefined) throw malformed('a capability key needs an alg', p);
    if (kids.has(hex(key.kid))) throw malformed('two capability keys share a kid', p);
    kids.add(hex(key.kid));
    const names = asArray(required(m, 2, p), `${p}.names`, { min: 1, max: MAX_MODULES }).map((n, j) => {
      const s = asText(n, `${p}.names[${j}]`, { max: 64 });
      if (s !== ANY_CAPABILITY && !isCapabilityName(s)) throw malformed(`bad capability name ${s}`, p);
      return s;
    });
    return { key, kid: key.kid, alg: key.alg, names };
  });
  const seen = new Set<string>();
  const modules = asArray(required(payload, 4, path), `${path}.modules`, { max: MAX_MODULES }).map((e, i) => {
    const p = `${path}.modules[${i}]`;
    const m = asMap(e, p);
    checkKeys(m, new Set([1, 2, 3, 4]), p);
    const name = asText(required(m, 1, p), `${p}.name`, { max: 64 });
    if (!isCapabilityName(name)) throw malformed(`bad capability name ${name}`, p);
    if (seen.has(name)) throw malformed(`capability ${name} listed twice`, p);
    seen.add(name);
    const out: {
      name: string;
      minVersion?: ModuleVersion;
      maxVersion?: ModuleVersion;
      digests?: Uint8Array[];
    } = { name };
    if (m.has(2)) out.minVersion = parseModuleVersion(m.get(2), `${p}.min`);
    if (m.has(3)) out.maxVersion = parseModuleVersion(m.get(3), `${p}.max`);
    if (
      out.minVersion !== undefined &&
      out.maxVersion !== undefined &&
      compareModuleVersion(out.minVersion, out.maxVersion) > 0
    )
      throw malformed('min version above max', p);
    if (m.has(4)) {
      out.digests = asArray(m.get(4), `${p}.digests`, { min: 1, max: MAX_PINS }).map((d, j) =>
        asBytes(d, `${p}.digests[${j}]`, { min: 32, max: 32 }),
      );
    }
    return out;
  });
  return { version, issuedAt, keys, modules };
}

function malformed(message: string, path: string): TrustError {
  return new TrustError('CAP_MANIFEST_MALFORMED', message, path);
}

/** Creates a signed capability manifest (the provisioning authority's side). */
export async function createCapabilityManifest(
  fields: CapabilityManifestFields,
  signer: Signer,
): Promise<Uint8Array> {
  const payload = encodePayload(fields);
  // Never sign what a device would refuse.
  parsePayload('CAP_MANIFEST_MALFORMED', 'create', () =>
    parseFields(
      asMap(decode(payload, { maxSize: CAPABILITY_MANIFEST_MAX_BYTES, maxDepth: 8 }), 'create'),
      'create',
    ),
  );
  return createSignedDoc(CAPABILITY_MANIFEST_CONTENT_TYPE, payload, signer);
}

export interface CapabilityManifestVerifyOptions extends SignedDocVerifyOptions {
  /** The version the device holds: the new one must be greater (anti-rollback). */
  readonly currentVersion?: number;
}

/**
 * Verifies a capability manifest against the provisioned authority keys (seed 000 step 1) and decodes it.
 * Errors: CAP_MANIFEST_MALFORMED / _UNKNOWN_KEY / _BAD_SIGNATURE / _ALG_NOT_ALLOWED / _ROLLBACK.
 */
export function verifyCapabilityManifest(
  bytes: Uint8Array,
  opts: CapabilityManifestVerifyOptions,
): CapabilityManifest {
  const path = 'capability-manifest';
  const { payload } = verifySignedDoc(
    bytes,
    CAPABILITY_MANIFEST_CONTENT_TYPE,
    CAPABILITY_MANIFEST_MAX_BYTES,
    8,
    opts,
    {
      malformed: 'CAP_MANIFEST_MALFORMED',
      unknownKey: 'CAP_MANIFEST_UNKNOWN_KEY',
      badSignature: 'CAP_MANIFEST_BAD_SIGNATURE',
      algNotAllowed: 'CAP_MANIFEST_ALG_NOT_ALLOWED',
    },
    path,
  );
  const fields = parsePayload('CAP_MANIFEST_MALFORMED', path, () => parseFields(payload, `${path}.payload`));
  if (opts.currentVersion !== undefined && fields.version <= opts.currentVersion) {
    throw new TrustError(
      'CAP_MANIFEST_ROLLBACK',
      `version ${fields.version} is not newer than ${opts.currentVersion}`,
      path,
    );
  }
  const keyVerifiers = fields.keys.map((key) => {
    let verifier: Verifier;
    try {
      verifier = verifierFromCoseKey(key.key, key.alg);
    } catch (e) {
      throw new TrustError('CAP_MANIFEST_MALFORMED', 'a capability key is not a usable signature key', path, {
        cause: e,
      });
    }
    return { key, verifier };
  });
  return { ...fields, bytes, keyVerifiers };
}

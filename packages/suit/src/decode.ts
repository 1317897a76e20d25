/**
 * SUIT envelope and manifest decoder + validator (draft-ietf-suit-manifest-34 §8, with the members added by
 * draft-ietf-suit-trust-domains-12 (TD) and draft-ietf-suit-update-management-14 (UM)).
 *
 * Split in two steps so that a processor authenticates before it parses the manifest (MF §6.2, §8.3):
 *  - `parseEnvelopeOuter`: envelope structure, SUIT_Authentication wrapper, and the SUIT_Digest check over the
 *    manifest bstr as received (head included). The manifest itself is not parsed.
 *  - `parseManifest`: the SUIT_Manifest, severable-member digests, every command sequence.
 * `decodeEnvelope` runs both (inspection); `authenticateEnvelope` (authenticate.ts) verifies a signature between
 * the two.
 *
 * SUIT structures are decoded with the strict canonical profile (sorted keys). Embedded COSE structures
 * (authentication blocks, encryption-info) are left as bytes for the COSE layer.
 *
 * Every failure is a SuitError (the CBOR error, if any, is its `cause`).
 */
import { createHash, hash, timingSafeEqual } from 'node:crypto';
import { CborMap, CborTag, bstrHead, cborTypeName, decode } from '@rotor/cose';
import { parseCommandSequence, type ParseLimits, type SuitCommand } from './commands.ts';
import { EnvelopeKey, ManifestKey, SEVERABLE_KEYS } from './codes.ts';
import { SuitError, type SuitErrorCode } from './errors.ts';
import { isOwned, ownedCopy } from './owned.ts';
import type {
  ComponentId,
  Severable,
  SuitCommon,
  SuitDependency,
  SuitDigest,
  SuitEnvelope,
  SuitManifest,
  SuitSequence,
  SuitText,
  SuitTextLanguage,
} from './model.ts';

export interface DecodeEnvelopeOptions {
  /** Largest accepted envelope in bytes (default 1 MiB). */
  readonly maxSize?: number;
  /** Most components in SUIT_Common (default 256; MF §6.2 "check the component count"). */
  readonly maxComponents?: number;
  /** Most byte strings in one component identifier (default 16). */
  readonly maxComponentIdLength?: number;
  /** Most integrated payloads / dependencies (text-string envelope keys) (default 64). */
  readonly maxIntegrated?: number;
  /** Most authentication blocks (default 16). */
  readonly maxAuthBlocks?: number;
  /** Largest SUIT_Text_Map in bytes (default 64 KiB). */
  readonly maxTextSize?: number;
  /** Refuse an envelope without tag 107 (default false: tagged and untagged accepted, MF §8.2). */
  readonly requireTag?: boolean;
  /**
   * Check the SUIT_Digest against the manifest bytes (default true). Only inspection tools that must show a
   * broken envelope turn this off; nothing decoded that way may be trusted.
   */
  readonly verifyDigest?: boolean;
  /** Limits handed to parseCommandSequence. */
  readonly parseLimits?: ParseLimits;
}

/** The envelope structure before the manifest is parsed (MF §8.2, §8.3). */
export interface EnvelopeOuter {
  readonly bytes: Uint8Array;
  readonly tagged: boolean;
  readonly digest: SuitDigest;
  /** The encoded SUIT_Digest: the detached payload of every authentication block (MF §8.3). */
  readonly digestBytes: Uint8Array;
  readonly authBlocks: readonly Uint8Array[];
  /** Content of the manifest bstr (envelope key 3), as received. */
  readonly manifestBytes: Uint8Array;
  /** Severable members carried by the envelope (content of each bstr), keyed by envelope key (MF §8.4.6). */
  readonly members: ReadonlyMap<number, Uint8Array>;
  /** Integrated payloads / dependencies under text-string keys (MF §7.5, TD §5.4). */
  readonly integrated: ReadonlyMap<string, Uint8Array>;
}

const DEFAULTS = {
  maxSize: 1 << 20,
  maxComponents: 256,
  maxComponentIdLength: 16,
  maxIntegrated: 64,
  maxAuthBlocks: 16,
  maxTextSize: 64 * 1024,
} as const;

// ---------------------------------------------------------------------------------------------------------
// Digests (MF §8.3: SUIT_Digest = [algorithm-id, digest-bytes]; SHA-256 mandatory, others optional).

interface DigestAlgInfo {
  readonly hash: string;
  readonly length: number;
  readonly xof: boolean;
}

const DIGEST_ALGS: ReadonlyMap<number, DigestAlgInfo> = new Map([
  [-16, { hash: 'sha256', length: 32, xof: false }],
  [-43, { hash: 'sha384', length: 48, xof: false }],
  [-44, { hash: 'sha512', length: 64, xof: false }],
  [-18, { hash: 'shake128', length: 32, xof: true }], // SHAKE128, 256-bit output (RFC 9054 §3)
  [-45, { hash: 'shake256', length: 64, xof: true }], // SHAKE256, 512-bit output (RFC 9054 §3)
]);

/** Whether a SUIT_Digest algorithm is implemented (MF §8.3: -16 mandatory; -18, -43, -44, -45 optional). */
export function isDigestAlgSupported(alg: number): boolean {
  return DIGEST_ALGS.has(alg);
}

/**
 * The digest of a bstr-wrapped item as it travels: hash(bstr head ‖ content) (MF §8.3 for the manifest,
 * §8.4.6 for severable members; TD §5.1 for dependency references).
 */
export function digestBstr(alg: number, content: Uint8Array, path = 'digest'): Uint8Array {
  const info = DIGEST_ALGS.get(alg);
  if (info === undefined)
    throw new SuitError('SUIT_DIGEST_ALG_UNSUPPORTED', `digest algorithm ${alg} is not supported`, path);
  const head = byteStringHead(content.length);
  if (info.xof)
    return createHash(info.hash, { outputLength: info.length }).update(head).update(content).digest();
  // One-shot over head ‖ content. When the content is a view whose preceding bytes are its head (a bstr inside
  // a decoded buffer), that span is hashed in place; otherwise the two are joined first.
  const hl = head.length;
  const off = content.byteOffset;
  if (off >= hl) {
    const span = new Uint8Array(content.buffer, off - hl, hl + content.length);
    let same = true;
    for (let i = 0; i < hl; i++) if (span[i] !== head[i]) same = false;
    if (same) return hash(info.hash, span, 'buffer');
  }
  const joined = new Uint8Array(hl + content.length);
  joined.set(head, 0);
  joined.set(content, hl);
  return hash(info.hash, joined, 'buffer');
}

/** The preferred-encoding head of a bstr of `n` bytes (RFC 8949 §3.1, §4.2.1); same bytes as cose's bstrHead. */
function byteStringHead(n: number): Uint8Array {
  if (n < 24) return Uint8Array.of(0x40 | n);
  if (n < 0x100) return Uint8Array.of(0x58, n);
  if (n < 0x10000) return Uint8Array.of(0x59, n >>> 8, n & 0xff);
  if (n <= 0xffffffff) return Uint8Array.of(0x5a, n >>> 24, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff);
  return bstrHead(n);
}

/** Constant-time comparison after a length check (MF §8.3; lengths are public). */
export function digestEquals(expected: Uint8Array, actual: Uint8Array): boolean {
  return expected.length === actual.length && timingSafeEqual(expected, actual);
}

/** Checks a SUIT_Digest over a bstr-wrapped item; throws `code` on mismatch. */
export function checkBstrDigest(
  digest: SuitDigest,
  content: Uint8Array,
  code: SuitErrorCode,
  path: string,
): void {
  const actual = digestBstr(digest.alg, content, path);
  if (!digestEquals(digest.bytes, actual)) throw new SuitError(code, 'digest does not match the bytes', path);
}

// ---------------------------------------------------------------------------------------------------------
// Small typed readers that fail with a SuitError code and a path.

const STRICT = {};
const SHARED = { shareBytes: true };

function decodeCbor(bytes: Uint8Array, code: SuitErrorCode, path: string, maxSize?: number): unknown {
  try {
    // Input inside a private copy (owned.ts) is decoded into views of it rather than fresh copies.
    const share = isOwned(bytes);
    return decode(bytes, maxSize === undefined ? (share ? SHARED : STRICT) : { maxSize, shareBytes: share });
  } catch (e) {
    throw new SuitError(code, `malformed CBOR (${e instanceof Error ? e.message : String(e)})`, path, {
      cause: e,
    });
  }
}

function bad(code: SuitErrorCode, expected: string, v: unknown, path: string): never {
  throw new SuitError(code, `expected ${expected}, found ${cborTypeName(v)}`, path);
}

function bytesOf(v: unknown, code: SuitErrorCode, path: string): Uint8Array {
  return v instanceof Uint8Array ? v : bad(code, 'bstr', v, path);
}

function arrayOf(v: unknown, code: SuitErrorCode, path: string): unknown[] {
  return Array.isArray(v) ? (v as unknown[]) : bad(code, 'array', v, path);
}

function mapOf(v: unknown, code: SuitErrorCode, path: string): CborMap {
  return v instanceof CborMap ? v : bad(code, 'map', v, path);
}

function textOf(v: unknown, code: SuitErrorCode, path: string, max = 8192): string {
  if (typeof v !== 'string') bad(code, 'tstr', v, path);
  if (v.length > max) throw new SuitError(code, `text longer than ${max}`, path);
  return v;
}

function smallInt(v: unknown, code: SuitErrorCode, path: string): number {
  return typeof v === 'number' ? v : bad(code, 'int', v, path);
}

/** SUIT_Digest = [algorithm-id, digest-bytes, * extensions] (MF §8.3). No extension is defined: refused. */
export function parseDigest(v: unknown, code: SuitErrorCode, path: string): SuitDigest {
  const a = arrayOf(v, code, path);
  if (a.length !== 2) throw new SuitError(code, `SUIT_Digest has ${a.length} elements, expected 2`, path);
  const alg = a[0];
  const bytes = a[1];
  if (typeof alg !== 'number') bad(code, 'int', alg, `${path}[0]`);
  if (!(bytes instanceof Uint8Array)) bad(code, 'bstr', bytes, `${path}[1]`);
  return { alg, bytes };
}

/** SUIT_Component_Identifier = [* bstr] (MF §8.4.5.1). */
function parseComponentId(v: unknown, maxLen: number, path: string, index?: number): ComponentId {
  // The path is `path`, or `path[index]` (formatted only on failure).
  if (!Array.isArray(v)) bad('SUIT_MANIFEST_INVALID', 'array', v, at(path, index));
  const a = v as unknown[];
  if (a.length > maxLen) {
    throw new SuitError(
      'SUIT_MANIFEST_INVALID',
      `component identifier longer than ${maxLen}`,
      at(path, index),
    );
  }
  for (let i = 0; i < a.length; i++) {
    if (!(a[i] instanceof Uint8Array)) bad('SUIT_MANIFEST_INVALID', 'bstr', a[i], `${at(path, index)}[${i}]`);
  }
  return a as Uint8Array[];
}

function at(path: string, index: number | undefined): string {
  return index === undefined ? path : `${path}[${index}]`;
}

// ---------------------------------------------------------------------------------------------------------
// Envelope (MF §8.2) and authentication wrapper (MF §8.3).

/**
 * Parses the envelope structure and checks the SUIT_Digest against the manifest bstr, head included
 * (MF §8.3). Does not parse the manifest.
 */
export function parseEnvelopeOuter(bytes: Uint8Array, opts: DecodeEnvelopeOptions = {}): EnvelopeOuter {
  const P = 'envelope';
  const E: SuitErrorCode = 'SUIT_ENVELOPE_INVALID';
  const maxSize = opts.maxSize ?? DEFAULTS.maxSize;
  if (bytes.length > maxSize)
    throw new SuitError(E, `envelope of ${bytes.length} bytes exceeds ${maxSize}`, P);
  // Everything below is decoded from one private copy, so no caller can change the bytes between the digest
  // check, the signature check and the parse (MF §6.2), and nested items need no copies of their own.
  let top = decodeCbor(ownedCopy(bytes), E, P, maxSize);
  // SUIT_Envelope_Tagged = #6.107(SUIT_Envelope) (MF §8.2); the untagged form is accepted unless required.
  let tagged = false;
  if (top instanceof CborTag) {
    if (top.tag !== 107) throw new SuitError(E, `tag ${top.tag} is not SUIT_Envelope_Tagged (107)`, P);
    tagged = true;
    top = top.value;
  } else if (opts.requireTag === true) {
    throw new SuitError(E, 'envelope is not tagged 107', P);
  }
  const env = mapOf(top, E, P);

  let authWrapper: Uint8Array | undefined;
  let manifestBytes: Uint8Array | undefined;
  const members = new Map<number, Uint8Array>();
  const integrated = new Map<string, Uint8Array>();
  const maxIntegrated = opts.maxIntegrated ?? DEFAULTS.maxIntegrated;
  for (const [k, v] of env.entries) {
    if (typeof k === 'string') {
      // Integrated payloads (MF §7.5) and integrated dependencies (TD §5.4): text keys holding a bstr.
      if (integrated.size >= maxIntegrated)
        throw new SuitError(E, `more than ${maxIntegrated} integrated payloads`, P);
      integrated.set(k, bytesOf(v, E, `${P}[${JSON.stringify(k)}]`));
    } else if (k === EnvelopeKey.authenticationWrapper) {
      authWrapper = bytesOf(v, E, 'envelope.authentication-wrapper');
    } else if (k === EnvelopeKey.manifest) {
      manifestBytes = bytesOf(v, E, 'envelope.manifest');
    } else if (typeof k === 'number' && SEVERABLE_KEYS.has(k)) {
      // Severable members: bstr in the envelope, SUIT_Digest in the manifest (MF §8.4.6, TD §5, UM §5).
      members.set(k, v instanceof Uint8Array ? v : bad(E, 'bstr', v, `${P}[${k}]`));
    } else if (k === EnvelopeKey.delegation) {
      // Delegation chains were removed from draft-ietf-suit-trust-domains in 2025; the label is only reserved.
      throw new SuitError(
        E,
        'delegation (envelope key 1) is not supported (removed from draft-ietf-suit-trust-domains)',
        `${P}[1]`,
      );
    } else {
      throw new SuitError(E, `unknown envelope member ${String(k)}`, P);
    }
  }
  if (authWrapper === undefined) throw new SuitError(E, 'missing authentication-wrapper (key 2)', P);
  if (manifestBytes === undefined) throw new SuitError(E, 'missing manifest (key 3)', P);

  // SUIT_Authentication = [ bstr .cbor SUIT_Digest, * bstr .cbor SUIT_Authentication_Block ] (MF §8.3).
  const AP = 'envelope.authentication-wrapper';
  const auth = arrayOf(decodeCbor(authWrapper, E, AP), E, AP);
  if (auth.length < 1) throw new SuitError(E, 'SUIT_Authentication holds no SUIT_Digest', AP);
  const maxAuthBlocks = opts.maxAuthBlocks ?? DEFAULTS.maxAuthBlocks;
  if (auth.length - 1 > maxAuthBlocks)
    throw new SuitError(E, `more than ${maxAuthBlocks} authentication blocks`, AP);
  const AP0 = 'envelope.authentication-wrapper[0]';
  const digestBytes = bytesOf(auth[0], E, AP0);
  const digest = parseDigest(decodeCbor(digestBytes, E, AP0), E, AP0);
  const authBlocks: Uint8Array[] = [];
  for (let i = 1; i < auth.length; i++) {
    const b = auth[i];
    authBlocks.push(b instanceof Uint8Array ? b : bad(E, 'bstr', b, `${AP}[${i}]`));
  }

  // The digest covers the manifest bstr as encoded, head included (MF §8.3); compared in constant time.
  if (opts.verifyDigest !== false) {
    if (!isDigestAlgSupported(digest.alg)) {
      throw new SuitError(
        'SUIT_DIGEST_ALG_UNSUPPORTED',
        `digest algorithm ${digest.alg} is not supported`,
        AP0,
      );
    }
    checkBstrDigest(digest, manifestBytes, 'SUIT_DIGEST_MISMATCH', 'envelope.manifest');
  }
  return { bytes, tagged, digest, digestBytes, authBlocks, manifestBytes, members, integrated };
}

// ---------------------------------------------------------------------------------------------------------
// Manifest (MF §8.4).

const MANIFEST_KEYS: ReadonlySet<number> = new Set(Object.values(ManifestKey));
const M: SuitErrorCode = 'SUIT_MANIFEST_INVALID';

interface Limits {
  readonly maxComponents: number;
  readonly maxComponentIdLength: number;
  readonly maxTextSize: number;
  readonly parseLimits: ParseLimits | undefined;
}

function limitsOf(opts: DecodeEnvelopeOptions): Limits {
  return {
    maxComponents: opts.maxComponents ?? DEFAULTS.maxComponents,
    maxComponentIdLength: opts.maxComponentIdLength ?? DEFAULTS.maxComponentIdLength,
    maxTextSize: opts.maxTextSize ?? DEFAULTS.maxTextSize,
    parseLimits: opts.parseLimits,
  };
}

function sequence(bytes: Uint8Array, path: string, lim: Limits): SuitSequence {
  // Every command sequence is validated (MF §8.4.7; unknown commands refused, UM §3).
  return { bytes, commands: parseCommandSequence(bytes, path, lim.parseLimits) };
}

/** SUIT_Common (MF §8.4.5, TD §5.1). */
function parseCommon(bytes: Uint8Array, path: string, lim: Limits): SuitCommon {
  const m = mapOf(decodeCbor(bytes, M, path), M, path);
  let components: ComponentId[] | undefined;
  let dependencies: SuitDependency[] = [];
  let sharedSequence: SuitSequence | undefined;
  let depMap: CborMap | undefined;
  for (const [k, v] of m.entries) {
    if (k === 2) {
      // suit-components = [+ SUIT_Component_Identifier] (MF §8.4.5).
      const a = arrayOf(v, M, `${path}.components`);
      if (a.length === 0) throw new SuitError(M, 'no components', `${path}.components`);
      if (a.length > lim.maxComponents) {
        throw new SuitError(
          'SUIT_COMPONENT_INVALID',
          `more than ${lim.maxComponents} components`,
          `${path}.components`,
        );
      }
      const cp = `${path}.components`;
      components = [];
      for (let i = 0; i < a.length; i++)
        components.push(parseComponentId(a[i], lim.maxComponentIdLength, cp, i));
    } else if (k === 4) {
      // suit-shared-sequence = bstr .cbor SUIT_Shared_Sequence (MF §8.4.5).
      sharedSequence = sequence(bytesOf(v, M, `${path}.shared-sequence`), `${path}.shared-sequence`, lim);
    } else if (k === 1) {
      depMap = mapOf(v, M, `${path}.dependencies`);
    } else {
      throw new SuitError(M, `unknown SUIT_Common member ${String(k)}`, path);
    }
  }
  if (components === undefined) throw new SuitError(M, 'missing components (key 2)', path);
  if (depMap !== undefined) {
    // SUIT_Dependencies = {+ uint => SUIT_Dependency_Metadata}, metadata {? 1: prefix} (TD §5.1). In the TD
    // examples the dependency indices follow the component list, so an index is bounded by
    // components + dependencies.
    const dp = `${path}.dependencies`;
    if (depMap.size === 0) throw new SuitError(M, 'empty dependencies map', dp);
    const bound = components.length + depMap.size;
    dependencies = depMap.entries.map(([ik, mv]) => {
      if (typeof ik !== 'number' || ik < 0 || ik >= bound) {
        throw new SuitError('SUIT_COMPONENT_INVALID', `dependency index ${String(ik)} out of range`, dp);
      }
      const meta = mapOf(mv, M, `${dp}[${ik}]`);
      let prefix: ComponentId | undefined;
      for (const [mk, x] of meta.entries) {
        if (mk !== 1)
          throw new SuitError(M, `unknown SUIT_Dependency_Metadata member ${String(mk)}`, `${dp}[${ik}]`);
        prefix = parseComponentId(x, lim.maxComponentIdLength, `${dp}[${ik}].dependency-prefix`);
      }
      return { index: ik, prefix };
    });
  }
  return { components, dependencies, sharedSequence };
}

const LANGUAGE_TAG = /^[A-Za-z]{1,8}(-[A-Za-z0-9]{1,8})*$/;

/** SUIT_Text_Map (MF §8.4.4): language tag → {1..4 => tstr, SUIT_Component_Identifier => {1..8 => tstr}}. */
export function parseText(bytes: Uint8Array, path: string, opts: DecodeEnvelopeOptions = {}): SuitText {
  const lim = limitsOf(opts);
  if (bytes.length > lim.maxTextSize)
    throw new SuitError(M, `text of ${bytes.length} bytes exceeds ${lim.maxTextSize}`, path);
  const top = mapOf(decodeCbor(bytes, M, path), M, path);
  const out = new Map<string, SuitTextLanguage>();
  for (const [lang, lv] of top.entries) {
    if (typeof lang !== 'string' || !LANGUAGE_TAG.test(lang))
      throw new SuitError(M, 'text key is not a language tag', path);
    const lp = `${path}[${JSON.stringify(lang)}]`;
    const lm = mapOf(lv, M, lp);
    const manifest = new Map<number, string>();
    const components: { component: ComponentId; fields: Map<number, string> }[] = [];
    for (const [k, v] of lm.entries) {
      if (typeof k === 'number') {
        // suit-text-manifest-description 1, update-description 2, json-source 3, yaml-source 4.
        if (k < 1 || k > 4) throw new SuitError(M, `unknown text key ${k}`, lp);
        manifest.set(k, textOf(v, M, `${lp}[${k}]`, lim.maxTextSize));
      } else if (Array.isArray(k)) {
        const component = parseComponentId(k, lim.maxComponentIdLength, `${lp}.component`);
        const cm = mapOf(v, M, `${lp}.component`);
        const fields = new Map<number, string>();
        for (const [ck, cv] of cm.entries) {
          // 1 vendor-name … 6 component-version (MF), 7 version-required, 8 current-version (UM).
          if (typeof ck !== 'number' || ck < 1 || ck > 8)
            throw new SuitError(M, `unknown component text key ${String(ck)}`, `${lp}.component`);
          fields.set(ck, textOf(cv, M, `${lp}.component[${ck}]`, lim.maxTextSize));
        }
        components.push({ component, fields });
      } else {
        throw new SuitError(M, `unexpected text key of type ${cborTypeName(k)}`, lp);
      }
    }
    out.set(lang, { manifest, components });
  }
  return out;
}

/**
 * A severable member (MF §8.4.6): inline bstr, or a SUIT_Digest whose content is in the envelope (checked
 * against the digest, head included) or absent.
 */
function severable<T>(
  v: unknown,
  key: number,
  members: ReadonlyMap<number, Uint8Array>,
  path: string,
  parse: (bytes: Uint8Array, path: string) => T,
): Severable<T> {
  if (v instanceof Uint8Array) return { state: 'inline', value: parse(v, path) };
  if (!Array.isArray(v)) bad(M, 'bstr or SUIT_Digest', v, path);
  const digest = parseDigest(v, M, path);
  const member = members.get(key);
  if (member === undefined) return { state: 'severed-absent', digest };
  const ep = `envelope[${key}]`;
  checkBstrDigest(digest, member, 'SUIT_SEVERED_DIGEST_MISMATCH', ep);
  return { state: 'severed-present', digest, value: parse(member, ep) };
}

/**
 * Parses and validates a SUIT_Manifest (MF §8.4) given its bytes and the severable members carried by its
 * envelope. Only call on authenticated bytes when processing (MF §6.2).
 */
export function parseManifest(
  manifestBytes: Uint8Array,
  members: ReadonlyMap<number, Uint8Array> = new Map(),
  opts: DecodeEnvelopeOptions = {},
): SuitManifest {
  const P = 'envelope.manifest';
  const lim = limitsOf(opts);
  const m = mapOf(decodeCbor(manifestBytes, M, P), M, P);
  for (const [k] of m.entries) {
    if (typeof k !== 'number' || !MANIFEST_KEYS.has(k)) {
      throw new SuitError(
        M,
        `unknown manifest member ${typeof k === 'string' ? JSON.stringify(k) : cborTypeName(k) === 'int' ? String(k) : cborTypeName(k)}`,
        P,
      );
    }
  }
  // An envelope member must be referenced by a SUIT_Digest in the manifest (MF §8.4.6): otherwise it is
  // unauthenticated data riding along.
  for (const k of members.keys()) {
    if (!Array.isArray(m.get(k))) {
      throw new SuitError(
        'SUIT_ENVELOPE_INVALID',
        `envelope member ${k} is not referenced by a digest in the manifest`,
        `envelope[${k}]`,
      );
    }
  }

  // manifest-version must be 1 (MF §8.4.1).
  const version = m.get(ManifestKey.manifestVersion);
  if (version === undefined) throw new SuitError(M, 'missing manifest-version (key 1)', P);
  if (version !== 1)
    throw new SuitError(
      'SUIT_MANIFEST_VERSION',
      `manifest-version ${typeof version === 'number' || typeof version === 'bigint' ? String(version) : cborTypeName(version)} is not 1`,
      `${P}.manifest-version`,
    );
  // manifest-sequence-number: uint (64 bits) (MF §8.4.2).
  const sn = m.get(ManifestKey.sequenceNumber);
  let sequenceNumber: bigint;
  if (typeof sn === 'number' && sn >= 0) sequenceNumber = BigInt(sn);
  else if (typeof sn === 'bigint' && sn >= 0n) sequenceNumber = sn;
  else
    throw new SuitError(
      M,
      sn === undefined
        ? 'missing manifest-sequence-number (key 2)'
        : 'manifest-sequence-number is not a uint',
      `${P}.manifest-sequence-number`,
    );
  // common: bstr .cbor SUIT_Common (MF §8.4.5), required.
  const commonV = m.get(ManifestKey.common);
  if (commonV === undefined) throw new SuitError(M, 'missing common (key 3)', P);
  const common = parseCommon(bytesOf(commonV, M, `${P}.common`), `${P}.common`, lim);

  const opt = <T>(key: number, f: (v: unknown, path: string) => T, name: string): T | undefined => {
    const v = m.get(key);
    return v === undefined ? undefined : f(v, `${P}.${name}`);
  };
  const seq = (v: unknown, path: string): SuitSequence => sequence(bytesOf(v, M, path), path, lim);
  const sev = <T>(
    key: number,
    name: string,
    parse: (bytes: Uint8Array, path: string) => T,
  ): Severable<T> | undefined => opt(key, (v, path) => severable(v, key, members, path, parse), name);
  const parseSeq = (bytes: Uint8Array, path: string): SuitSequence => sequence(bytes, path, lim);

  return {
    bytes: manifestBytes,
    version: 1,
    sequenceNumber,
    common,
    // reference-uri: tstr (MF §8.4.3).
    referenceUri: opt(ManifestKey.referenceUri, (v, path) => textOf(v, M, path), 'reference-uri'),
    // manifest-component-id: SUIT_Component_Identifier (TD §5.2).
    componentId: opt(
      ManifestKey.manifestComponentId,
      (v, path) => parseComponentId(v, lim.maxComponentIdLength, path),
      'manifest-component-id',
    ),
    // set-version: bstr .cbor [+int] (UM §4.1, same composition as the version parameter's value).
    setVersion: opt(
      ManifestKey.setVersion,
      (v, path) => parseSetVersion(bytesOf(v, M, path), path),
      'set-version',
    ),
    // Unseverable sequences (MF §8.4.6 validate/load/invoke; TD §5.5 uninstall): bstr only.
    validate: opt(ManifestKey.validate, seq, 'validate'),
    load: opt(ManifestKey.load, seq, 'load'),
    invoke: opt(ManifestKey.invoke, seq, 'invoke'),
    uninstall: opt(ManifestKey.uninstall, seq, 'uninstall'),
    // Severable members (MF §8.4.6; TD dependency-resolution 15, candidate-verification 18; UM coswid 14).
    dependencyResolution: sev(ManifestKey.dependencyResolution, 'dependency-resolution', parseSeq),
    payloadFetch: sev(ManifestKey.payloadFetch, 'payload-fetch', parseSeq),
    candidateVerification: sev(ManifestKey.candidateVerification, 'candidate-verification', parseSeq),
    install: sev(ManifestKey.install, 'install', parseSeq),
    text: sev(ManifestKey.text, 'text', (bytes, path) => parseText(bytes, path, opts)),
    coswid: sev(ManifestKey.coswid, 'coswid', (bytes, path) => {
      // concise-swid-tag (RFC 9393): well-formed CBOR is required; its content is not interpreted here.
      try {
        decode(bytes, { sortedKeys: false });
      } catch (e) {
        throw new SuitError(M, 'coswid is not well-formed CBOR', path, { cause: e });
      }
      return bytes;
    }),
  };
}

function parseSetVersion(bytes: Uint8Array, path: string): number[] {
  const a = arrayOf(decodeCbor(bytes, M, path), M, path);
  if (a.length === 0 || a.length > 16) throw new SuitError(M, 'set-version needs 1 to 16 integers', path);
  return a.map((x, i) => {
    const n = smallInt(x, M, `${path}[${i}]`);
    // The pre-release indicator (negative) must not be element 0 (UM §4.x suit-parameter-version).
    if (i === 0 && n < 0) throw new SuitError(M, 'set-version starts with a pre-release indicator', path);
    return n;
  });
}

/** Collects every uri parameter (21) set anywhere in a command sequence. */
function collectUris(cmds: readonly SuitCommand[], out: Set<string>): void {
  for (const c of cmds) {
    if (c.op === 'params') {
      const u = c.params.get(21);
      if (u?.type === 'tstr') out.add(u.value);
    } else if (c.op === 'override-multiple') {
      for (const p of c.perComponent.values()) {
        const u = p.get(21);
        if (u?.type === 'tstr') out.add(u.value);
      }
    } else if (c.op === 'try-each') {
      for (const a of c.alternatives) collectUris(a, out);
    } else if (c.op === 'run-sequence') collectUris(c.sequence, out);
  }
}

/**
 * Every integrated payload / dependency must be named by a uri the manifest sets (MF §7.5, TD §5.4: the envelope
 * key IS the uri). Integrated entries are not covered by the envelope's authentication, so an unreferenced one is
 * refused rather than carried along (a renamed entry would otherwise pass unnoticed). When a sequence is severed and
 * absent its uris are unknown, and the check is left to the processor.
 */
function checkIntegratedReferenced(outer: EnvelopeOuter, m: SuitManifest): void {
  if (outer.integrated.size === 0) return;
  const uris = new Set<string>();
  const plain = [m.common.sharedSequence, m.validate, m.load, m.invoke, m.uninstall];
  for (const s of plain) if (s !== undefined) collectUris(s.commands, uris);
  for (const s of [m.dependencyResolution, m.payloadFetch, m.candidateVerification, m.install]) {
    if (s === undefined) continue;
    if (s.state === 'severed-absent') return;
    collectUris(s.value.commands, uris);
  }
  for (const key of outer.integrated.keys()) {
    if (!uris.has(key)) {
      throw new SuitError(
        'SUIT_ENVELOPE_INVALID',
        `integrated entry ${JSON.stringify(key)} is not referenced by any uri`,
        `envelope[${JSON.stringify(key)}]`,
      );
    }
  }
}

/** Assembles the envelope model from a parsed outer structure and manifest. */
export function envelopeFrom(outer: EnvelopeOuter, manifest: SuitManifest): SuitEnvelope {
  checkIntegratedReferenced(outer, manifest);
  return {
    bytes: outer.bytes,
    tagged: outer.tagged,
    digest: outer.digest,
    digestBytes: outer.digestBytes,
    authBlocks: outer.authBlocks,
    manifest,
    members: outer.members,
    integrated: outer.integrated,
  };
}

/**
 * Decodes and validates a whole envelope WITHOUT authenticating it (inspection, tooling). Processors use
 * `authenticateEnvelope`, which verifies a signature before the manifest is parsed (MF §6.2, §8.3).
 */
export function decodeEnvelope(bytes: Uint8Array, opts: DecodeEnvelopeOptions = {}): SuitEnvelope {
  const outer = parseEnvelopeOuter(bytes, opts);
  return envelopeFrom(outer, parseManifest(outer.manifestBytes, outer.members, opts));
}

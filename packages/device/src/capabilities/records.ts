/**
 * What the capability manager keeps in non-volatile storage (one AtomicStore directory; every change of the index
 * and the blobs it names is one AtomicStore transaction, so a power cut leaves the old or the new state):
 *
 *   index              [1, [* [name, entry / nil, [* entry]]]]   active module and archives (newest first)
 *   entry              [blob, kind, sequence, digest, version]   kind 0 = received envelope, 1 = archive
 *   e.<digest>.<seq>.<name>   kind 0: [1, envelope, {* uri => ciphertext}] the envelope as received (still encrypted
 *                             for this device) plus any detached payload
 *   a.<digest>.<seq>.<name>   kind 1: [1, envelope without its ciphertext, deflate-raw(plaintext module)], or
 *                             sealed (a sealer configured, seal.ts): [2, envelope without its ciphertext,
 *                             AES-256-GCM(deflate-raw(plaintext)), nonce, archive key sealed by the enclave]
 *   capability-manifest, revocation-list, trust-revocation-list   the signed documents in force, as received
 *   revoked            [* bstr .size 32]   every digest any accepted revocation list named (never forgotten)
 *
 * Records are re-verified when used (boot, rollback, revert): storage is not trusted for authenticity.
 */
import { asArray, asBytes, asMap, asText, asUint, asUint64, decode, encode } from '@rotor/cose';
import { hex, parseModuleVersion, type ModuleVersion } from '@rotor/trust';
import { DeviceError } from '../errors.ts';

export const INDEX_BLOB = 'index';
export const MANIFEST_BLOB = 'capability-manifest';
export const MODULE_REVOCATION_BLOB = 'revocation-list';
export const REVOKED_BLOB = 'revoked';
/** The general trust revocation list (issue 7) in force, as received: its digest entries revoke modules. */
export const TRUST_REVOCATION_BLOB = 'trust-revocation-list';
const MAX_INDEX = 1024 * 1024;
const MAX_RECORD = 64 * 1024 * 1024;

export type EntryKind = 'envelope' | 'archive';

export interface Entry {
  readonly blob: string;
  readonly kind: EntryKind;
  readonly sequence: bigint;
  readonly digest: Uint8Array;
  readonly version: ModuleVersion;
}

export interface IndexCap {
  active: Entry | undefined;
  archives: Entry[];
}

export type Index = Map<string, IndexCap>;

export function blobName(kind: EntryKind, digest: Uint8Array, sequence: bigint, name: string): string {
  return `${kind === 'envelope' ? 'e' : 'a'}.${hex(digest).slice(0, 12)}.${sequence}.${name}`;
}

function encodeEntry(e: Entry): unknown[] {
  return [e.blob, e.kind === 'envelope' ? 0 : 1, e.sequence, e.digest, [...e.version]];
}

function decodeEntry(v: unknown, path: string): Entry {
  const a = asArray(v, path, { min: 5, max: 5 });
  const kind = asUint(a[1], `${path}[1]`);
  if (kind > 1) throw new Error(`${path}: unknown kind`);
  return {
    blob: asText(a[0], `${path}[0]`, { max: 100 }),
    kind: kind === 0 ? 'envelope' : 'archive',
    sequence: asUint64(a[2], `${path}[2]`),
    digest: asBytes(a[3], `${path}[3]`, { min: 32, max: 32 }),
    version: parseModuleVersion(a[4], `${path}[4]`),
  };
}

export function encodeIndex(index: Index): Uint8Array {
  return encode([
    1,
    [...index].map(([name, c]) => [
      name,
      c.active === undefined ? null : encodeEntry(c.active),
      c.archives.map(encodeEntry),
    ]),
  ]);
}

function corrupt(what: string, e: unknown): DeviceError {
  return new DeviceError('RECORD_INVALID', `${what}: ${e instanceof Error ? e.message : String(e)}`, {
    cause: e,
  });
}

export function decodeIndex(bytes: Uint8Array): Index {
  try {
    const top = asArray(decode(bytes, { maxSize: MAX_INDEX, maxDepth: 6 }), 'index', { min: 2, max: 2 });
    if (asUint(top[0], 'index[0]') !== 1) throw new Error('unknown index version');
    const out: Index = new Map();
    for (const [i, c] of asArray(top[1], 'index[1]', { max: 1024 }).entries()) {
      const a = asArray(c, `caps[${i}]`, { min: 3, max: 3 });
      const name = asText(a[0], `caps[${i}][0]`, { max: 64 });
      out.set(name, {
        active: a[1] === null ? undefined : decodeEntry(a[1], `caps[${i}].active`),
        archives: asArray(a[2], `caps[${i}].archives`, { max: 64 }).map((e, j) =>
          decodeEntry(e, `caps[${i}].archives[${j}]`),
        ),
      });
    }
    return out;
  } catch (e) {
    throw corrupt('capability index unreadable', e);
  }
}

export function encodeEnvelopeRecord(
  envelope: Uint8Array,
  payloads: ReadonlyMap<string, Uint8Array>,
): Uint8Array {
  return encode([1, envelope, new Map(payloads)]);
}

export function decodeEnvelopeRecord(bytes: Uint8Array): {
  envelope: Uint8Array;
  payloads: Map<string, Uint8Array>;
} {
  try {
    const a = asArray(decode(bytes, { maxSize: MAX_RECORD, maxDepth: 3 }), 'record', { min: 3, max: 3 });
    if (asUint(a[0], 'record[0]') !== 1) throw new Error('unknown record version');
    const payloads = new Map<string, Uint8Array>();
    for (const [k, v] of asMap(a[2], 'record[2]').entries) {
      payloads.set(asText(k, 'record[2].key', { max: 1024 }), asBytes(v, 'record[2].value'));
    }
    return { envelope: asBytes(a[1], 'record[1]'), payloads };
  } catch (e) {
    throw corrupt('module record unreadable', e);
  }
}

/** An archive record: version 1 holds deflate-raw(plaintext); version 2 a sealed archive (seal.ts). */
export type ArchiveRecord =
  | { readonly envelope: Uint8Array; readonly deflated: Uint8Array; readonly sealed?: undefined }
  | {
      readonly envelope: Uint8Array;
      readonly deflated?: undefined;
      readonly sealed: { nonce: Uint8Array; ciphertext: Uint8Array; sealedKey: Uint8Array };
    };

export function encodeArchiveRecord(envelope: Uint8Array, deflated: Uint8Array): Uint8Array {
  return encode([1, envelope, deflated]);
}

export function encodeSealedArchiveRecord(
  envelope: Uint8Array,
  sealed: { nonce: Uint8Array; ciphertext: Uint8Array; sealedKey: Uint8Array },
): Uint8Array {
  return encode([2, envelope, sealed.ciphertext, sealed.nonce, sealed.sealedKey]);
}

export function decodeArchiveRecord(bytes: Uint8Array): ArchiveRecord {
  try {
    const a = asArray(decode(bytes, { maxSize: MAX_RECORD, maxDepth: 2 }), 'archive', { min: 3, max: 5 });
    const version = asUint(a[0], 'archive[0]');
    if (version === 1 && a.length === 3)
      return { envelope: asBytes(a[1], 'archive[1]'), deflated: asBytes(a[2], 'archive[2]') };
    if (version === 2 && a.length === 5)
      return {
        envelope: asBytes(a[1], 'archive[1]'),
        sealed: {
          ciphertext: asBytes(a[2], 'archive[2]'),
          nonce: asBytes(a[3], 'archive[3]', { min: 12, max: 12 }),
          sealedKey: asBytes(a[4], 'archive[4]', { max: 4096 + 64 }),
        },
      };
    throw new Error('unknown archive version');
  } catch (e) {
    throw corrupt('module archive unreadable', e);
  }
}

export function encodeRevoked(digests: Iterable<string>): Uint8Array {
  return encode([...digests].sort().map((h) => new Uint8Array(Buffer.from(h, 'hex'))));
}

export function decodeRevoked(bytes: Uint8Array): Set<string> {
  try {
    return new Set(
      asArray(decode(bytes, { maxSize: 8 * 1024 * 1024, maxDepth: 2 }), 'revoked', { max: 200_000 }).map(
        (d, i) => hex(asBytes(d, `revoked[${i}]`, { min: 32, max: 32 })),
      ),
    );
  } catch (e) {
    throw corrupt('revoked digests unreadable', e);
  }
}

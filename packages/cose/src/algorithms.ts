/**
 * The COSE algorithm table (IANA "COSE Algorithms"; RFC 9053, RFC 9054, RFC 9459, fully-specified algorithms draft).
 * Every lookup of an id that is not in the table is a typed error (COSE_ALG_UNKNOWN): nothing defaults.
 */
import { createHash } from 'node:crypto';
import { CoseError } from './errors.ts';

export const Alg = {
  SHA256: -16,
  SHA384: -43,
  SHA512: -44,
  SHAKE128: -18,
  SHAKE256: -45,
  ES256: -7,
  ESP256: -9,
  EdDSA: -8,
  Ed25519: -19,
  HMAC256: 5,
  HMAC384: 6,
  HMAC512: 7,
  A128KW: -3,
  A192KW: -4,
  A256KW: -5,
  ECDH_ES_A128KW: -29,
  ECDH_ES_A192KW: -30,
  ECDH_ES_A256KW: -31,
  A128GCM: 1,
  A192GCM: 2,
  A256GCM: 3,
  A128CTR: -65534,
  A192CTR: -65533,
  A256CTR: -65532,
  ChaCha20Poly1305: 24,
} as const;

export type AlgKind = 'digest' | 'signature' | 'mac' | 'key-wrap' | 'ecdh-key-wrap' | 'content';

/** Signature key families: the key types a signature algorithm verifies with. */
export type SignatureFamily = 'P-256' | 'Ed25519';

export interface AlgInfo {
  readonly id: number;
  readonly name: string;
  readonly kind: AlgKind;
  /** node:crypto hash name (digest, HMAC, ECDSA hash) or null for pure EdDSA. */
  readonly hash?: string | null;
  /** Output length in bytes (digests: digest size; MAC: full tag size; signatures: r‖s / EdDSA size). */
  readonly outputLength?: number;
  /** Key length in bytes (symmetric keys, key-wrap KEK, content key). */
  readonly keyLength?: number;
  /** Content algorithms: IV/nonce length in bytes. */
  readonly ivLength?: number;
  /** AEAD content algorithms: authentication tag length in bytes (0 for CTR, which has none). */
  readonly tagLength?: number;
  /** Content and key-wrap algorithms: node:crypto cipher name. */
  readonly cipher?: string;
  /** Signature algorithms: key family. */
  readonly family?: SignatureFamily;
  /** ECDH-ES + AES-KW: the key-wrap algorithm used after the KDF (RFC 9053 §6.3). */
  readonly wrapAlg?: number;
}

const TABLE: ReadonlyMap<number, AlgInfo> = new Map<number, AlgInfo>(
  (
    [
      // RFC 9054 §2 (SHA-2, SHAKE) and RFC 9053 (SHA-256 is -16).
      { id: -16, name: 'SHA-256', kind: 'digest', hash: 'sha256', outputLength: 32 },
      { id: -43, name: 'SHA-384', kind: 'digest', hash: 'sha384', outputLength: 48 },
      { id: -44, name: 'SHA-512', kind: 'digest', hash: 'sha512', outputLength: 64 },
      { id: -18, name: 'SHAKE128', kind: 'digest', hash: 'shake128', outputLength: 32 },
      { id: -45, name: 'SHAKE256', kind: 'digest', hash: 'shake256', outputLength: 64 },
      // RFC 9053 §2.1 (ES256), fully-specified algorithms (draft-ietf-jose-fully-specified-algorithms: ESP256, Ed25519).
      { id: -7, name: 'ES256', kind: 'signature', hash: 'sha256', outputLength: 64, family: 'P-256' },
      { id: -9, name: 'ESP256', kind: 'signature', hash: 'sha256', outputLength: 64, family: 'P-256' },
      // RFC 9053 §2.2 EdDSA: Rotor only supports Ed25519 keys for it.
      { id: -8, name: 'EdDSA', kind: 'signature', hash: null, outputLength: 64, family: 'Ed25519' },
      { id: -19, name: 'Ed25519', kind: 'signature', hash: null, outputLength: 64, family: 'Ed25519' },
      // RFC 9053 §3.1 HMAC: full-length tags only.
      { id: 5, name: 'HMAC 256/256', kind: 'mac', hash: 'sha256', outputLength: 32, keyLength: 32 },
      { id: 6, name: 'HMAC 384/384', kind: 'mac', hash: 'sha384', outputLength: 48, keyLength: 48 },
      { id: 7, name: 'HMAC 512/512', kind: 'mac', hash: 'sha512', outputLength: 64, keyLength: 64 },
      // RFC 9053 §6.2.1 AES Key Wrap (RFC 3394).
      { id: -3, name: 'A128KW', kind: 'key-wrap', keyLength: 16, cipher: 'id-aes128-wrap' },
      { id: -4, name: 'A192KW', kind: 'key-wrap', keyLength: 24, cipher: 'id-aes192-wrap' },
      { id: -5, name: 'A256KW', kind: 'key-wrap', keyLength: 32, cipher: 'id-aes256-wrap' },
      // RFC 9053 §6.3 ECDH-ES + HKDF-SHA-256 + AES Key Wrap; keyLength = the derived KEK length.
      {
        id: -29,
        name: 'ECDH-ES + A128KW',
        kind: 'ecdh-key-wrap',
        keyLength: 16,
        wrapAlg: -3,
        hash: 'sha256',
      },
      {
        id: -30,
        name: 'ECDH-ES + A192KW',
        kind: 'ecdh-key-wrap',
        keyLength: 24,
        wrapAlg: -4,
        hash: 'sha256',
      },
      {
        id: -31,
        name: 'ECDH-ES + A256KW',
        kind: 'ecdh-key-wrap',
        keyLength: 32,
        wrapAlg: -5,
        hash: 'sha256',
      },
      // RFC 9053 §4.1 AES-GCM: 96-bit nonce, 128-bit tag.
      {
        id: 1,
        name: 'A128GCM',
        kind: 'content',
        keyLength: 16,
        ivLength: 12,
        tagLength: 16,
        cipher: 'aes-128-gcm',
      },
      {
        id: 2,
        name: 'A192GCM',
        kind: 'content',
        keyLength: 24,
        ivLength: 12,
        tagLength: 16,
        cipher: 'aes-192-gcm',
      },
      {
        id: 3,
        name: 'A256GCM',
        kind: 'content',
        keyLength: 32,
        ivLength: 12,
        tagLength: 16,
        cipher: 'aes-256-gcm',
      },
      // RFC 9459 §3 AES-CTR: 16-byte IV = initial counter block, no integrity.
      {
        id: -65534,
        name: 'A128CTR',
        kind: 'content',
        keyLength: 16,
        ivLength: 16,
        tagLength: 0,
        cipher: 'aes-128-ctr',
      },
      {
        id: -65533,
        name: 'A192CTR',
        kind: 'content',
        keyLength: 24,
        ivLength: 16,
        tagLength: 0,
        cipher: 'aes-192-ctr',
      },
      {
        id: -65532,
        name: 'A256CTR',
        kind: 'content',
        keyLength: 32,
        ivLength: 16,
        tagLength: 0,
        cipher: 'aes-256-ctr',
      },
      // RFC 9053 §4.3 ChaCha20/Poly1305: 96-bit nonce, 128-bit tag.
      {
        id: 24,
        name: 'ChaCha20/Poly1305',
        kind: 'content',
        keyLength: 32,
        ivLength: 12,
        tagLength: 16,
        cipher: 'chacha20-poly1305',
      },
    ] satisfies AlgInfo[]
  ).map((a) => [a.id, Object.freeze(a)] as const),
);

/** Every key-distribution algorithm Rotor implements: AES-KW and ECDH-ES + AES-KW (RFC 9053 §6.2.1, §6.3). */
export const KEY_DISTRIBUTION_ALGS: ReadonlySet<number> = new Set([
  Alg.A128KW,
  Alg.A192KW,
  Alg.A256KW,
  Alg.ECDH_ES_A128KW,
  Alg.ECDH_ES_A192KW,
  Alg.ECDH_ES_A256KW,
]);

/** Every content-encryption algorithm Rotor implements for firmware: AES-GCM and AES-CTR (RFC 9053 §4.1, RFC 9459). */
export const FIRMWARE_CONTENT_ALGS: ReadonlySet<number> = new Set([
  Alg.A128GCM,
  Alg.A192GCM,
  Alg.A256GCM,
  Alg.A128CTR,
  Alg.A192CTR,
  Alg.A256CTR,
]);

/** The table entry of an algorithm id; COSE_ALG_UNKNOWN when the id is not in the table. */
export function algInfo(id: number, path?: string): AlgInfo {
  const info = TABLE.get(id);
  if (info === undefined) throw new CoseError('COSE_ALG_UNKNOWN', `unknown COSE algorithm ${id}`, path);
  return info;
}

/** The table entry when the id is known and of the given kind; COSE_ALG_UNKNOWN otherwise. */
export function algInfoOfKind(id: number, kind: AlgKind, path?: string): AlgInfo {
  const info = algInfo(id, path);
  if (info.kind !== kind) {
    throw new CoseError(
      'COSE_ALG_UNKNOWN',
      `algorithm ${info.name} (${id}) is not a ${kind} algorithm`,
      path,
    );
  }
  return info;
}

/** Name of a known algorithm, or `unknown(<id>)` (never throws: for messages and inspection output). */
export function algName(id: number): string {
  return TABLE.get(id)?.name ?? `unknown(${id})`;
}

/** Whether the id is in the table. */
export function isKnownAlg(id: number): boolean {
  return TABLE.has(id);
}

/** Fails with COSE_ALG_UNKNOWN when unknown, COSE_ALG_NOT_ALLOWED when not in the caller's allowlist. */
export function assertAllowed(alg: number, allowlist: ReadonlySet<number>, path?: string): AlgInfo {
  const info = algInfo(alg, path);
  if (!allowlist.has(alg)) {
    throw new CoseError('COSE_ALG_NOT_ALLOWED', `algorithm ${info.name} (${alg}) is not allowed`, path);
  }
  return info;
}

/** Signature key family of a signature algorithm (ES256/ESP256 → P-256, EdDSA/Ed25519 → Ed25519). */
export function signatureFamily(alg: number): SignatureFamily {
  const info = algInfoOfKind(alg, 'signature');
  return info.family!;
}

/**
 * Whether a key declared for `keyAlg` verifies messages declaring `msgAlg`: ES256 (-7) and ESP256 (-9) are the
 * same computation with a P-256 key; EdDSA (-8) and Ed25519 (-19) the same with an Ed25519 key (draft-ietf-jose-fully-specified-algorithms §2).
 * Unknown or non-signature ids yield false.
 */
export function sameSignatureFamily(keyAlg: number, msgAlg: number): boolean {
  const a = TABLE.get(keyAlg);
  const b = TABLE.get(msgAlg);
  return a?.kind === 'signature' && b?.kind === 'signature' && a.family === b.family;
}

/** Digest of `data` with a COSE digest algorithm (SHA-256 -16, SHA-384 -43, SHA-512 -44, SHAKE128 -18, SHAKE256 -45). */
export function digest(alg: number, data: Uint8Array): Uint8Array {
  const info = algInfoOfKind(alg, 'digest');
  const h = info.hash!.startsWith('shake')
    ? createHash(info.hash!, { outputLength: info.outputLength! })
    : createHash(info.hash!);
  const out = h.update(data).digest();
  return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
}

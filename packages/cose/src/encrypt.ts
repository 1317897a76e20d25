/**
 * COSE_Encrypt (RFC 9052 §5.1, tag 96) with recipients, COSE_Encrypt0 (§5.2, tag 16), content encryption
 * (AES-GCM and ChaCha20/Poly1305, RFC 9053 §4; AES-CTR, RFC 9459) and content-key distribution:
 *  - AES Key Wrap recipients (RFC 9053 §6.2.1);
 *  - ECDH-ES + HKDF-SHA-256 + AES Key Wrap recipients (RFC 9053 §6.3, §5.1, COSE_KDF_Context §5.2), with the
 *    SUIT profile of the context (draft-ietf-suit-firmware-encryption: PartyU/PartyV nil, SuppPubInfo.other =
 *    'SUIT Payload Encryption').
 *
 * Streaming: createContentDecipher / createContentCipher process any number of chunks in constant memory; for
 * AEAD algorithms the decipher holds back only the last 16 bytes (the tag) and checks it in final().
 */
import {
  createCipheriv,
  createDecipheriv,
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  hkdfSync,
  randomBytes,
  type CipherGCM,
  type CipherGCMTypes,
  type DecipherGCM,
  type KeyObject,
} from 'node:crypto';
import { algInfo, algInfoOfKind, assertAllowed, type AlgInfo } from './algorithms.ts';
import { CborTag, encode, type CborMap } from './cbor.ts';
import { CoseError } from './errors.ts';
import {
  bytesEqual,
  decodeCose,
  HeaderLabel,
  parseHeaders,
  structArray,
  structBytesOrNil,
  untag,
  type ParsedHeaders,
} from './headers.ts';
import { Curve, curveOfKeyObject, parseCoseKey, type CoseKey } from './key.ts';
import type { KeyAgreement, KeyUnwrapper } from './keys.ts';
import type { CoseDecodeOptions } from './sign1.ts';
import { aesKeyUnwrap, aesKeyWrap } from './software.ts';

export const COSE_ENCRYPT_TAG = 96;
export const COSE_ENCRYPT0_TAG = 16;

/** SuppPubInfo.other of the SUIT firmware-encryption COSE_KDF_Context. */
export const SUIT_KDF_OTHER: Uint8Array = new TextEncoder().encode('SUIT Payload Encryption');

export interface CoseRecipient {
  protectedBytes: Uint8Array;
  protectedHeaders: CborMap;
  unprotectedHeaders: CborMap;
  /** Key-distribution algorithm (label 1, either bucket); undefined when absent. */
  alg: number | undefined;
  kid: Uint8Array | undefined;
  /** The wrapped key (nil for direct / key-agreement-only methods). */
  ciphertext: Uint8Array | null;
  /** Nested recipients (more than two layers); decoded but not used for unwrapping. */
  recipients: CoseRecipient[];
}

export interface EncryptMessage {
  /** Enc_structure context: "Encrypt" for COSE_Encrypt, "Encrypt0" for COSE_Encrypt0 (RFC 9052 §5.3). */
  context: 'Encrypt' | 'Encrypt0';
  protectedBytes: Uint8Array;
  protectedHeaders: CborMap;
  unprotectedHeaders: CborMap;
  /** Content-encryption algorithm. */
  alg: number;
  /** Whether the content alg is in the protected bucket. */
  algProtected: boolean;
  iv: Uint8Array | undefined;
  partialIv: Uint8Array | undefined;
  /** nil = detached ciphertext, supplied by the caller. */
  ciphertext: Uint8Array | null;
  /** Empty for COSE_Encrypt0. */
  recipients: CoseRecipient[];
}

/** A recipient ready for encoding (output of wrapForAesKw / wrapForEcdhEs). */
export interface RecipientStructure {
  protectedBytes: Uint8Array;
  unprotected: Map<number, unknown>;
  ciphertext: Uint8Array | null;
}

export interface UnwrapOptions {
  /** Key-distribution algorithms the caller accepts (content algorithms are checked by decryptContent). */
  allowedAlgs: ReadonlySet<number>;
  /** SuppPubInfo.other for ECDH-ES recipients; default 'SUIT Payload Encryption'; null omits the field. */
  kdfOther?: Uint8Array | null;
}

export interface ContentOptions {
  /** When given, the content algorithm must be in it. */
  allowedAlgs?: ReadonlySet<number>;
  /** Enc_structure external_aad (RFC 9052 §5.3), default empty. */
  externalAad?: Uint8Array;
}

export interface ChunkCipher {
  update(chunk: Uint8Array): Uint8Array;
  /**
   * Like update(), but returns the output as pieces (at most two) whose concatenation is what update() would
   * return — without the copy that joins them. Streaming consumers that hash and store each piece use it; every
   * returned array is newly allocated and owned by the caller.
   */
  updateParts?(chunk: Uint8Array): Uint8Array[];
  final(): Uint8Array;
}

const EMPTY = new Uint8Array(0);
// Labels whose meaning this module implements for recipients (accepted in crit, RFC 9052 §3.1).
const RECIPIENT_CRIT: ReadonlySet<number | string> = new Set([-1, -20, -21, -22, -23, -24, -25, -26]);

function toU8(b: Buffer): Uint8Array {
  return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  if (a.length === 0) return b;
  if (b.length === 0) return a;
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// Decoding

function parseRecipient(v: unknown, path: string, opts: CoseDecodeOptions): CoseRecipient {
  // RFC 9052 §5.1: COSE_recipient = [Headers, ciphertext : bstr / nil, ? recipients : [+COSE_recipient]]
  const a = structArray(v, 3, 4, 'COSE_recipient', path);
  const h = parseHeaders(a[0], a[1], path, { ...opts, layerCrit: RECIPIENT_CRIT });
  const nested =
    a.length === 4
      ? structArray(a[3], 1, Number.MAX_SAFE_INTEGER, 'recipients', `${path}[3]`).map((r, i) =>
          parseRecipient(r, `${path}[3][${i}]`, opts),
        )
      : [];
  return {
    protectedBytes: h.protectedBytes,
    protectedHeaders: h.protectedHeaders,
    unprotectedHeaders: h.unprotectedHeaders,
    alg: h.alg,
    kid: h.kid,
    ciphertext: structBytesOrNil(a[2], 'ciphertext', `${path}[2]`),
    recipients: nested,
  };
}

function messageFrom(
  h: ParsedHeaders,
  context: 'Encrypt' | 'Encrypt0',
  ct: unknown,
): Omit<EncryptMessage, 'recipients'> {
  // RFC 9052 §5: the content algorithm is required to process the message.
  if (h.alg === undefined) throw new CoseError('COSE_HEADER_INVALID', 'content alg is missing', '$');
  return {
    context,
    protectedBytes: h.protectedBytes,
    protectedHeaders: h.protectedHeaders,
    unprotectedHeaders: h.unprotectedHeaders,
    alg: h.alg,
    algProtected: h.algProtected,
    iv: h.iv,
    partialIv: h.partialIv,
    ciphertext: structBytesOrNil(ct, 'ciphertext', '$[2]'),
  };
}

/** Decodes a COSE_Encrypt (tag 96; e.g. a SUIT_Encryption_Info). Ciphertext nil means detached. */
export function decodeEncrypt(bytes: Uint8Array, opts: CoseDecodeOptions = {}): EncryptMessage {
  const top = decodeCose(bytes, opts.maxSize);
  const a = structArray(
    untag(top, COSE_ENCRYPT_TAG, opts.tag ?? 'optional', 'COSE_Encrypt'),
    4,
    4,
    'COSE_Encrypt',
    '$',
  );
  const h = parseHeaders(a[0], a[1], '$', opts);
  const base = messageFrom(h, 'Encrypt', a[2]);
  // RFC 9052 §5.1: recipients = [+COSE_recipient]
  const recipients = structArray(a[3], 1, Number.MAX_SAFE_INTEGER, 'recipients', '$[3]').map((r, i) =>
    parseRecipient(r, `$[3][${i}]`, opts),
  );
  return { ...base, recipients };
}

/** Decodes a COSE_Encrypt0 (tag 16): the content key is implicit (known to the recipient). */
export function decodeEncrypt0(bytes: Uint8Array, opts: CoseDecodeOptions = {}): EncryptMessage {
  const top = decodeCose(bytes, opts.maxSize);
  const a = structArray(
    untag(top, COSE_ENCRYPT0_TAG, opts.tag ?? 'optional', 'COSE_Encrypt0'),
    3,
    3,
    'COSE_Encrypt0',
    '$',
  );
  const h = parseHeaders(a[0], a[1], '$', opts);
  return { ...messageFrom(h, 'Encrypt0', a[2]), recipients: [] };
}

// ---------------------------------------------------------------------------------------------------------
// Key distribution

/**
 * COSE_KDF_Context (RFC 9053 §5.2) for ECDH-ES + AES-KW:
 * [AlgorithmID = key-wrap alg, PartyUInfo [identity, nonce, other], PartyVInfo [...], SuppPubInfo
 *  [keyDataLength in bits, recipient protected bstr, ? other]].
 */
export function kdfContext(
  wrapAlg: number,
  keyBits: number,
  recipientProtected: Uint8Array,
  opts: { other?: Uint8Array | null; partyU?: readonly unknown[]; partyV?: readonly unknown[] } = {},
): Uint8Array {
  const other = opts.other === undefined ? SUIT_KDF_OTHER : opts.other;
  const supp: unknown[] = [keyBits, recipientProtected];
  if (other !== null) supp.push(other);
  return encode([wrapAlg, opts.partyU ?? [null, null, null], opts.partyV ?? [null, null, null], supp]);
}

/** KEK = HKDF-SHA-256(Z, salt, info = context, L) (RFC 9053 §5.1; salt absent = zero-length, RFC 5869 §2.2). */
export function deriveKek(
  z: Uint8Array,
  salt: Uint8Array | undefined,
  context: Uint8Array,
  length: number,
): Uint8Array {
  return new Uint8Array(hkdfSync('sha256', z, salt ?? EMPTY, context, length));
}

function partyInfo(r: CoseRecipient, labels: readonly [number, number, number], path: string): unknown[] {
  return labels.map((label, i) => {
    const v = r.protectedHeaders.has(label) ? r.protectedHeaders.get(label) : r.unprotectedHeaders.get(label);
    if (v === undefined) return null;
    // RFC 9053 §5.2: identity and other are bstr; nonce is bstr or int.
    const ok = v instanceof Uint8Array || (i === 1 && typeof v === 'number' && Number.isSafeInteger(v));
    if (!ok) throw new CoseError('COSE_HEADER_INVALID', `header ${label} has the wrong type`, path);
    return v;
  });
}

function recipientHeader(r: CoseRecipient, label: number): unknown {
  return r.protectedHeaders.has(label) ? r.protectedHeaders.get(label) : r.unprotectedHeaders.get(label);
}

/** The ephemeral public key of an ECDH-ES recipient (header -1, RFC 9053 §6.3.1) as the raw peer key. */
function ephemeralKey(
  r: CoseRecipient,
  path: string,
): { curve: 'P-256' | 'X25519'; raw: Uint8Array; key: CoseKey } {
  if (r.protectedHeaders.has(HeaderLabel.staticKey) || r.unprotectedHeaders.has(HeaderLabel.staticKey)) {
    throw new CoseError('COSE_HEADER_INVALID', 'static key header in an ECDH-ES recipient', path);
  }
  const v = recipientHeader(r, HeaderLabel.ephemeralKey);
  if (v === undefined)
    throw new CoseError('COSE_HEADER_INVALID', 'ECDH-ES recipient lacks the ephemeral key (-1)', path);
  let key: CoseKey;
  try {
    key = parseCoseKey(v, `${path}{-1}`);
  } catch (e) {
    if (e instanceof CoseError && e.code === 'COSE_KEY_INVALID') {
      throw new CoseError('COSE_HEADER_INVALID', `invalid ephemeral key: ${e.message}`, path, { cause: e });
    }
    throw e;
  }
  // RFC 9053 §6.3.1: the ephemeral key carries only public material.
  if (key.d !== undefined)
    throw new CoseError('COSE_HEADER_INVALID', 'ephemeral key contains a private part', path);
  if (key.kty === 2 && key.crv === Curve.P256) {
    return { curve: 'P-256', raw: concat(concat(Uint8Array.of(4), key.x!), key.y!), key };
  }
  if (key.kty === 1 && key.crv === Curve.X25519) return { curve: 'X25519', raw: key.x!, key };
  throw new CoseError('COSE_UNSUPPORTED', `ephemeral key curve ${String(key.crv)} not supported`, path);
}

function kidCompatible(recipientKid: Uint8Array | undefined, keyKid: Uint8Array | undefined): boolean {
  return recipientKid === undefined || keyKid === undefined || bytesEqual(recipientKid, keyKid);
}

async function unwrapEcdh(
  r: CoseRecipient,
  info: AlgInfo,
  agreement: KeyAgreement,
  eph: { raw: Uint8Array },
  kdfOther: Uint8Array | null | undefined,
  path: string,
): Promise<Uint8Array> {
  const saltRaw = recipientHeader(r, HeaderLabel.salt);
  if (saltRaw !== undefined && !(saltRaw instanceof Uint8Array)) {
    throw new CoseError('COSE_HEADER_INVALID', 'salt must be a bstr', path);
  }
  const z = await agreement.deriveSharedSecret(eph.raw);
  const context = kdfContext(info.wrapAlg!, info.keyLength! * 8, r.protectedBytes, {
    other: kdfOther,
    partyU: partyInfo(r, [-21, -22, -23], path),
    partyV: partyInfo(r, [-24, -25, -26], path),
  });
  const kek = deriveKek(z, saltRaw, context, info.keyLength!);
  return aesKeyUnwrap(kek, r.ciphertext!, info.wrapAlg!);
}

/**
 * Recovers the content key from the recipients of a COSE_Encrypt. Recipients whose algorithm is unknown or not
 * allowed are skipped; a key is tried on a recipient when the algorithm (AES-KW) or curve (ECDH) fits and the kids
 * do not differ (keys with a matching kid first). Errors: COSE_NO_KEY (no recipient/key pair to try),
 * COSE_ALG_NOT_ALLOWED / COSE_ALG_UNKNOWN (no usable recipient at all), COSE_DECRYPT_FAILED (every try failed
 * the key-wrap integrity check, or unwrapped a key of the wrong length).
 */
export async function unwrapContentKey(
  msg: EncryptMessage,
  recipientKeys: { unwrappers?: readonly KeyUnwrapper[]; agreements?: readonly KeyAgreement[] },
  opts: UnwrapOptions,
): Promise<Uint8Array> {
  const content = algInfoOfKind(msg.alg, 'content', '$');
  let known = 0;
  let allowed = 0;
  const attempts: { exact: boolean; run: () => Promise<Uint8Array> }[] = [];
  msg.recipients.forEach((r, i) => {
    const path = `$[3][${i}]`;
    if (r.alg === undefined) return;
    let info: AlgInfo;
    try {
      info = algInfo(r.alg);
    } catch {
      return;
    }
    if (info.kind !== 'key-wrap' && info.kind !== 'ecdh-key-wrap') return;
    known++;
    if (!opts.allowedAlgs.has(r.alg)) return;
    allowed++;
    // RFC 9052 §5.1: a key-wrap recipient carries the wrapped key; nested layers are not used here.
    if (r.ciphertext === null)
      throw new CoseError('COSE_MALFORMED', 'recipient has no wrapped key', `${path}[2]`);
    if (r.recipients.length > 0) throw new CoseError('COSE_UNSUPPORTED', 'nested recipients', `${path}[3]`);
    if (info.kind === 'key-wrap') {
      // RFC 9053 §6.2.1: for AES Key Wrap the protected header MUST be a zero-length bstr.
      if (r.protectedBytes.length !== 0) {
        throw new CoseError(
          'COSE_HEADER_INVALID',
          'AES-KW recipient protected header must be empty',
          `${path}[0]`,
        );
      }
      for (const u of recipientKeys.unwrappers ?? []) {
        if (u.alg !== r.alg || !kidCompatible(r.kid, u.kid)) continue;
        attempts.push({
          exact: r.kid !== undefined && u.kid !== undefined,
          run: () => u.unwrap(r.ciphertext!),
        });
      }
    } else {
      const eph = ephemeralKey(r, path);
      for (const ka of recipientKeys.agreements ?? []) {
        if (ka.curve !== eph.curve || !kidCompatible(r.kid, ka.kid)) continue;
        attempts.push({
          exact: r.kid !== undefined && ka.kid !== undefined,
          run: () => unwrapEcdh(r, info, ka, eph, opts.kdfOther, path),
        });
      }
    }
  });
  if (attempts.length === 0) {
    if (msg.recipients.length > 0 && known === 0) {
      throw new CoseError('COSE_ALG_UNKNOWN', 'no recipient uses a known key-distribution algorithm', '$[3]');
    }
    if (known > 0 && allowed === 0) {
      throw new CoseError(
        'COSE_ALG_NOT_ALLOWED',
        'no recipient uses an allowed key-distribution algorithm',
        '$[3]',
      );
    }
    throw new CoseError('COSE_NO_KEY', 'no key matches any recipient', '$[3]');
  }
  attempts.sort((a, b) => Number(b.exact) - Number(a.exact));
  let firstError: unknown;
  for (const attempt of attempts) {
    try {
      const cek = await attempt.run();
      // The unwrapped key must fit the content algorithm (RFC 9053 §4.1 / §4.3, RFC 9459 §3).
      if (cek.length !== content.keyLength) {
        throw new CoseError(
          'COSE_DECRYPT_FAILED',
          `unwrapped key of ${cek.length} bytes does not fit ${content.name}`,
        );
      }
      return cek;
    } catch (e) {
      firstError ??= e;
    }
  }
  throw firstError;
}

// ---------------------------------------------------------------------------------------------------------
// Content encryption

/** Enc_structure = [context, protected, external_aad] (RFC 9052 §5.3). */
export function encStructure(
  context: 'Encrypt' | 'Encrypt0',
  protectedBytes: Uint8Array,
  externalAad: Uint8Array,
): Uint8Array {
  return encode([context, protectedBytes, externalAad]);
}

function checkCek(info: AlgInfo, cek: Uint8Array): void {
  if (cek.length !== info.keyLength) {
    throw new CoseError(
      'COSE_KEY_MISMATCH',
      `${info.name} needs a ${info.keyLength!}-byte key, got ${cek.length}`,
    );
  }
}

function checkIv(info: AlgInfo, iv: Uint8Array | undefined, partialIv?: Uint8Array): Uint8Array {
  // Partial IV needs a Base IV from the key context (RFC 9052 §3.1), which Rotor does not use.
  if (iv === undefined && partialIv !== undefined)
    throw new CoseError('COSE_UNSUPPORTED', 'Partial IV is not supported');
  // RFC 9053 §4.1 / §4.3: 96-bit nonce; RFC 9459 §3: 128-bit initial counter block.
  if (iv === undefined || iv.length !== info.ivLength) {
    throw new CoseError('COSE_HEADER_INVALID', `${info.name} needs a ${info.ivLength!}-byte IV`, '$[1]{5}');
  }
  return iv;
}

/** Checks the message's content algorithm, its header placement, IV and key; returns what the cipher needs. */
function contentParams(
  msg: EncryptMessage,
  cek: Uint8Array,
  opts: ContentOptions,
): { info: AlgInfo; iv: Uint8Array } {
  const info =
    opts.allowedAlgs === undefined ? algInfo(msg.alg, '$') : assertAllowed(msg.alg, opts.allowedAlgs, '$');
  if (info.kind !== 'content') {
    throw new CoseError('COSE_ALG_UNKNOWN', `${info.name} is not a content-encryption algorithm`, '$');
  }
  if (info.tagLength === 0) {
    // RFC 9459 §3: with AES-CTR the protected header MUST be a zero-length bstr (alg goes unprotected).
    if (msg.protectedBytes.length !== 0) {
      throw new CoseError('COSE_HEADER_INVALID', 'AES-CTR requires an empty protected header', '$[0]');
    }
  } else if (!msg.algProtected) {
    // RFC 9052 §3.1: alg must be authenticated where possible; with AEAD the protected bucket is in the AAD.
    throw new CoseError('COSE_HEADER_INVALID', 'AEAD content alg must be in the protected header', '$[0]');
  }
  checkCek(info, cek);
  return { info, iv: checkIv(info, msg.iv, msg.partialIv) };
}

function makeDecipher(
  info: AlgInfo,
  cek: Uint8Array,
  iv: Uint8Array,
  aad: Uint8Array | undefined,
): DecipherGCM {
  if (info.tagLength === 0) return createDecipheriv(info.cipher!, cek, iv) as DecipherGCM;
  const d = createDecipheriv(info.cipher! as CipherGCMTypes, cek, iv, { authTagLength: info.tagLength! });
  d.setAAD(aad!);
  return d;
}

function makeCipher(info: AlgInfo, cek: Uint8Array, iv: Uint8Array, aad: Uint8Array | undefined): CipherGCM {
  if (info.tagLength === 0) return createCipheriv(info.cipher!, cek, iv) as CipherGCM;
  const c = createCipheriv(info.cipher! as CipherGCMTypes, cek, iv, { authTagLength: info.tagLength! });
  c.setAAD(aad!);
  return c;
}

/**
 * Streaming decryption of the content of `msg` with the content key. AEAD: the last 16 bytes of the stream are
 * the tag (RFC 9053 §4.1: ciphertext ‖ tag); only they are held back, and final() checks them — throwing
 * COSE_DECRYPT_FAILED on any mismatch. Plaintext returned by update() is unauthenticated until final() returns.
 */
export function createContentDecipher(
  msg: EncryptMessage,
  cek: Uint8Array,
  opts: ContentOptions = {},
): ChunkCipher {
  const { info, iv } = contentParams(msg, cek, opts);
  const tagLen = info.tagLength!;
  const aad =
    tagLen === 0 ? undefined : encStructure(msg.context, msg.protectedBytes, opts.externalAad ?? EMPTY);
  const d = makeDecipher(info, cek, iv, aad);
  let tail: Uint8Array = EMPTY;
  let done = false;
  const alive = (): void => {
    if (done) throw new CoseError('COSE_UNSUPPORTED', 'decipher already finished');
  };
  // AEAD: the last tagLen bytes seen so far might be the tag; they are held back (copied: 16 bytes) and deciphered
  // ahead of the next chunk's body once more input shows they are not.
  const parts = (chunk: Uint8Array): Uint8Array[] => {
    alive();
    if (tagLen === 0) return [toU8(d.update(chunk))];
    if (chunk.length >= tagLen) {
      const head = tail.length === 0 ? undefined : toU8(d.update(tail));
      const body = toU8(d.update(chunk.subarray(0, chunk.length - tagLen)));
      // A copy, never a view: `chunk` may be a Buffer (whose slice() is a view) that the caller frees or reuses.
      tail = new Uint8Array(chunk.subarray(chunk.length - tagLen));
      return head === undefined ? [body] : [head, body];
    }
    const joined = concat(tail, chunk);
    if (joined.length <= tagLen) {
      tail = joined === chunk ? new Uint8Array(chunk) : joined;
      return [];
    }
    tail = new Uint8Array(joined.subarray(joined.length - tagLen));
    return [toU8(d.update(joined.subarray(0, joined.length - tagLen)))];
  };
  return {
    update(chunk: Uint8Array): Uint8Array {
      const p = parts(chunk);
      return p.length === 0 ? EMPTY : p.length === 1 ? p[0]! : concat(p[0]!, p[1]!);
    },
    updateParts: parts,
    final(): Uint8Array {
      alive();
      done = true;
      try {
        if (tagLen !== 0) {
          if (tail.length !== tagLen) throw new Error('ciphertext shorter than the tag');
          d.setAuthTag(tail);
        }
        return toU8(d.final());
      } catch (e) {
        // RFC 9052 §5.3 / RFC 9053 §4.1: an authentication failure yields no plaintext.
        throw new CoseError('COSE_DECRYPT_FAILED', 'content authentication failed', undefined, { cause: e });
      }
    },
  };
}

/**
 * One-shot decryption. The ciphertext is the message's own, or — when the message carries nil (detached,
 * RFC 9052 §5.1) — the one supplied. Throws COSE_DECRYPT_FAILED on authentication failure.
 */
export function decryptContent(
  msg: EncryptMessage,
  cek: Uint8Array,
  ciphertext?: Uint8Array,
  opts: ContentOptions = {},
): Uint8Array {
  let ct: Uint8Array;
  if (msg.ciphertext !== null) {
    if (ciphertext !== undefined)
      throw new CoseError('COSE_UNSUPPORTED', 'ciphertext is attached; a detached one was also supplied');
    ct = msg.ciphertext;
  } else {
    if (ciphertext === undefined)
      throw new CoseError('COSE_MALFORMED', 'ciphertext is detached (nil) and none was supplied');
    ct = ciphertext;
  }
  const d = createContentDecipher(msg, cek, opts);
  return concat(d.update(ct), d.final());
}

/**
 * Streaming encryption: update() returns ciphertext, final() the rest plus (AEAD) the 16-byte tag, so that the
 * concatenation of all outputs is the COSE ciphertext. `protectedBytes` is the message's protected bucket.
 */
export function createContentCipher(
  alg: number,
  cek: Uint8Array,
  iv: Uint8Array,
  protectedBytes: Uint8Array,
  opts: { externalAad?: Uint8Array; context?: 'Encrypt' | 'Encrypt0' } = {},
): ChunkCipher {
  const info = algInfoOfKind(alg, 'content');
  checkCek(info, cek);
  checkIv(info, iv);
  if (info.tagLength === 0 && protectedBytes.length !== 0) {
    // RFC 9459 §3: AES-CTR messages have an empty protected header.
    throw new CoseError('COSE_HEADER_INVALID', 'AES-CTR requires an empty protected header');
  }
  const aad =
    info.tagLength === 0
      ? undefined
      : encStructure(opts.context ?? 'Encrypt', protectedBytes, opts.externalAad ?? EMPTY);
  const c = makeCipher(info, cek, iv, aad);
  let done = false;
  return {
    update(chunk: Uint8Array): Uint8Array {
      if (done) throw new CoseError('COSE_UNSUPPORTED', 'cipher already finished');
      return toU8(c.update(chunk));
    },
    final(): Uint8Array {
      if (done) throw new CoseError('COSE_UNSUPPORTED', 'cipher already finished');
      done = true;
      const rest = toU8(c.final());
      return info.tagLength === 0 ? rest : concat(rest, toU8(c.getAuthTag()));
    },
  };
}

export interface EncryptedContent {
  cek: Uint8Array;
  iv: Uint8Array;
  protectedBytes: Uint8Array;
  unprotected: Map<number, unknown>;
  ciphertext: Uint8Array;
}

/**
 * Encrypts a payload: fresh random CEK and IV unless given. AEAD: alg protected, IV unprotected; AES-CTR:
 * protected empty, alg and IV unprotected (RFC 9459 §3). Never reuse a (CEK, IV) pair.
 */
export function encryptContent(
  plaintext: Uint8Array,
  opts: {
    contentAlg: number;
    cek?: Uint8Array;
    iv?: Uint8Array;
    externalAad?: Uint8Array;
    context?: 'Encrypt' | 'Encrypt0';
  },
): EncryptedContent {
  const info = algInfoOfKind(opts.contentAlg, 'content');
  const cek = opts.cek ?? new Uint8Array(randomBytes(info.keyLength!));
  const iv = opts.iv ?? new Uint8Array(randomBytes(info.ivLength!));
  const aead = info.tagLength !== 0;
  const protectedBytes = aead ? encode(new Map([[HeaderLabel.alg, opts.contentAlg]])) : EMPTY;
  const unprotected = new Map<number, unknown>(aead ? [] : [[HeaderLabel.alg, opts.contentAlg]]);
  unprotected.set(HeaderLabel.iv, iv);
  const c = createContentCipher(opts.contentAlg, cek, iv, protectedBytes, opts);
  const ciphertext = concat(c.update(plaintext), c.final());
  return { cek, iv, protectedBytes, unprotected, ciphertext };
}

/** An AES-KW recipient (RFC 9053 §6.2.1): protected empty, {1: alg, 4: kid} unprotected, wrapped CEK. */
export function wrapForAesKw(
  cek: Uint8Array,
  kek: Uint8Array | KeyObject,
  alg: number,
  kid?: Uint8Array,
): RecipientStructure {
  const unprotected = new Map<number, unknown>([[HeaderLabel.alg, alg]]);
  if (kid !== undefined) unprotected.set(HeaderLabel.kid, kid);
  return { protectedBytes: EMPTY, unprotected, ciphertext: aesKeyWrap(kek, cek, alg) };
}

/**
 * An ECDH-ES + AES-KW recipient (RFC 9053 §6.3) for a P-256 or X25519 public key, with a fresh ephemeral key:
 * protected {1: alg}, unprotected {-1: ephemeral COSE_Key, 4: kid, -20: salt if given}.
 */
export function wrapForEcdhEs(
  cek: Uint8Array,
  recipientPublic: KeyObject,
  alg: number,
  kid?: Uint8Array,
  opts: { kdfOther?: Uint8Array | null; salt?: Uint8Array } = {},
): RecipientStructure {
  const info = algInfoOfKind(alg, 'ecdh-key-wrap');
  const crv = curveOfKeyObject(recipientPublic);
  if (crv !== Curve.P256 && crv !== Curve.X25519) {
    throw new CoseError('COSE_KEY_MISMATCH', 'ECDH-ES recipients need a P-256 or X25519 public key');
  }
  // RFC 9053 §6.3.1: a fresh ephemeral key for every recipient.
  const eph =
    crv === Curve.P256
      ? generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
      : generateKeyPairSync('x25519');
  const jwk = eph.publicKey.export({ format: 'jwk' });
  const ephMap = new Map<number, unknown>([
    [1, crv === Curve.P256 ? 2 : 1],
    [-1, crv],
    [-2, new Uint8Array(Buffer.from(jwk.x!, 'base64url'))],
  ]);
  if (crv === Curve.P256) ephMap.set(-3, new Uint8Array(Buffer.from(jwk.y!, 'base64url')));
  const peer = recipientPublic.type === 'private' ? createPublicKey(recipientPublic) : recipientPublic;
  const z = diffieHellman({ privateKey: eph.privateKey, publicKey: peer });
  const protectedBytes = encode(new Map([[HeaderLabel.alg, alg]]));
  const unprotected = new Map<number, unknown>([[HeaderLabel.ephemeralKey, ephMap]]);
  if (kid !== undefined) unprotected.set(HeaderLabel.kid, kid);
  if (opts.salt !== undefined) unprotected.set(HeaderLabel.salt, opts.salt);
  const context = kdfContext(info.wrapAlg!, info.keyLength! * 8, protectedBytes, { other: opts.kdfOther });
  const kek = deriveKek(z, opts.salt, context, info.keyLength!);
  return { protectedBytes, unprotected, ciphertext: aesKeyWrap(kek, cek, info.wrapAlg!) };
}

/** Encodes a COSE_Encrypt (tag 96 unless `tagged: false`). */
export function encodeEncrypt(m: {
  protectedBytes: Uint8Array;
  unprotected: Map<number, unknown>;
  ciphertext: Uint8Array | null;
  recipients: readonly RecipientStructure[];
  tagged?: boolean;
}): Uint8Array {
  // RFC 9052 §5.1: at least one recipient.
  if (m.recipients.length === 0)
    throw new CoseError('COSE_MALFORMED', 'COSE_Encrypt needs at least one recipient');
  const body = [
    m.protectedBytes,
    m.unprotected,
    m.ciphertext,
    m.recipients.map((r) => [r.protectedBytes, r.unprotected, r.ciphertext]),
  ];
  return encode(m.tagged === false ? body : new CborTag(COSE_ENCRYPT_TAG, body));
}

/** Encodes a COSE_Encrypt0 (tag 16 unless `tagged: false`); pass `context: 'Encrypt0'` to encryptContent. */
export function encodeEncrypt0(m: {
  protectedBytes: Uint8Array;
  unprotected: Map<number, unknown>;
  ciphertext: Uint8Array | null;
  tagged?: boolean;
}): Uint8Array {
  const body = [m.protectedBytes, m.unprotected, m.ciphertext];
  return encode(m.tagged === false ? body : new CborTag(COSE_ENCRYPT0_TAG, body));
}

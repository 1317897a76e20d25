/**
 * The factory's PKCS#11 token (PKCS#11 v2.40 through the `pkcs11js` N-API binding; SoftHSM2 in tests and CI, any
 * PKCS#11 HSM in production). CA and signing keys are generated inside the token with CKA_SENSITIVE = true and
 * CKA_EXTRACTABLE = false (PKCS#11 v2.40 §4.9: never revealed, never wrapped out) and are named by RFC 7512 URIs.
 *
 * Key types: EC P-256 (CKM_EC_KEY_PAIR_GEN; CKM_ECDSA over a SHA-256 digest computed here, result r‖s, PKCS#11
 * v2.40 §2.3.1) and Ed25519 (PKCS#11 v3.0 CKM_EC_EDWARDS_KEY_PAIR_GEN / CKM_EDDSA, PureEdDSA over the message;
 * SoftHSM2 ≥ 2.6 implements both). Signing goes through the COSE `Signer` interface, so certificates, CSRs and
 * COSE structures are all signed the same way.
 *
 * This is the server's own minimal PKCS#11 helper: @rotor/device has one for the enclave, and the two packages never
 * import each other (DESIGN.md, dependency direction).
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { createRequire } from 'node:module';
import type * as Pkcs11Types from 'pkcs11js';
import type { Signer } from '@rotor/cose';
import { ServerError } from '../errors.ts';
import { parsePkcs11Uri, type Pkcs11Uri } from './pkcs11-uri.ts';

type Pkcs11Module = typeof Pkcs11Types;

export type FactoryKeyType = 'P-256' | 'Ed25519';

/** COSE algorithm ids (RFC 9053 §2.1 ES256, §2.2 EdDSA). */
export const FACTORY_KEY_ALG: Record<FactoryKeyType, number> = { 'P-256': -7, Ed25519: -8 };

// PKCS#11 v3.0 constants pkcs11js 2.x does not name.
const CKK_EC_EDWARDS = 0x40;
const CKM_EC_EDWARDS_KEY_PAIR_GEN = 0x1055;
const CKM_EDDSA = 0x1057;
const CKR_CRYPTOKI_ALREADY_INITIALIZED = 0x191;
const CKR_PIN_INCORRECT = 0xa0;
const CKR_PIN_INVALID = 0xa1;
const CKR_PIN_LEN_RANGE = 0xa2;
const CKR_PIN_EXPIRED = 0xa3;
const CKR_PIN_LOCKED = 0xa4;
const CKR_USER_PIN_NOT_INITIALIZED = 0x102;
const CKR_USER_ALREADY_LOGGED_IN = 0x100;

/** DER of the curve OIDs for CKA_EC_PARAMS: P-256 1.2.840.10045.3.1.7, Ed25519 1.3.101.112 (RFC 8410 §3). */
const EC_PARAMS: Record<FactoryKeyType, Buffer> = {
  'P-256': Buffer.from('06082a8648ce3d030107', 'hex'),
  Ed25519: Buffer.from('06032b6570', 'hex'),
};
/** SubjectPublicKeyInfo prefixes (RFC 5480 §2 id-ecPublicKey + prime256v1; RFC 8410 §4 id-Ed25519). */
const SPKI_PREFIX: Record<FactoryKeyType, Buffer> = {
  'P-256': Buffer.from('3059301306072a8648ce3d020106082a8648ce3d030107034200', 'hex'),
  Ed25519: Buffer.from('302a300506032b6570032100', 'hex'),
};

export interface FactoryTokenOptions {
  /** PKCS#11 module path, e.g. /usr/lib/softhsm/libsofthsm2.so (or the URI's module-path). */
  readonly module: string;
  /** The token: an RFC 7512 URI (its token/serial/... attributes select the slot) or a bare token label. */
  readonly token: string;
  /** User PIN (from a file or the environment; never logged). */
  readonly pin: string;
}

export interface TokenKeyAttributes {
  readonly sensitive: boolean;
  readonly extractable: boolean;
  readonly alwaysSensitive: boolean;
  readonly neverExtractable: boolean;
  /** Whether the token revealed CKA_VALUE of the private key (it must not). */
  readonly valueReadable: boolean;
}

interface Loaded {
  readonly p: Pkcs11Types.PKCS11;
  refs: number;
  /** Whether this process initialized the library (then it finalizes it). */
  readonly owned: boolean;
  /**
   * SHA-256 of the PIN each token (by label) was logged in with. Login state is per application (PKCS#11 v2.40
   * §5.6): a second C_Login answers CKR_USER_ALREADY_LOGGED_IN without checking the PIN, so we check it here.
   */
  readonly logins: Map<string, Buffer>;
}
const loaded = new Map<string, Loaded>();

function loadBinding(): Pkcs11Module {
  try {
    return createRequire(import.meta.url)('pkcs11js') as Pkcs11Module;
  } catch (e) {
    throw new ServerError('FACTORY_TOKEN_UNAVAILABLE', 'the pkcs11js binding does not load', { cause: e });
  }
}

function rv(e: unknown): number | undefined {
  const c = (e as { code?: unknown } | null)?.code;
  return typeof c === 'number' ? c : undefined;
}

function p11error(what: string, e: unknown): ServerError {
  if (e instanceof ServerError) return e;
  return new ServerError('PKCS11_ERROR', `PKCS#11 ${what}: ${e instanceof Error ? e.message : String(e)}`, {
    cause: e,
  });
}

/** The public key as SPKI DER from CKA_EC_POINT (a DER OCTET STRING around the point, or the bare point). */
function spkiFromPoint(type: FactoryKeyType, v: Buffer): Uint8Array {
  const len = type === 'P-256' ? 65 : 32;
  let p = v;
  if (p.length === len + 2 && p[0] === 0x04 && p[1] === len) p = p.subarray(2);
  if (p.length !== len || (type === 'P-256' && p[0] !== 0x04))
    throw new ServerError('PKCS11_ERROR', 'unexpected CKA_EC_POINT encoding');
  return new Uint8Array(Buffer.concat([SPKI_PREFIX[type], p]));
}

export class FactoryToken {
  readonly #m: Pkcs11Module;
  readonly #p: Pkcs11Types.PKCS11;
  readonly #module: string;
  readonly #session: Buffer;
  readonly #label: string;
  readonly #keys = new Map<string, { handle: Buffer; type: FactoryKeyType; spki: Uint8Array }>();
  #tail: Promise<unknown> = Promise.resolve();
  #closed = false;

  private constructor(
    m: Pkcs11Module,
    p: Pkcs11Types.PKCS11,
    module: string,
    session: Buffer,
    label: string,
  ) {
    this.#m = m;
    this.#p = p;
    this.#module = module;
    this.#session = session;
    this.#label = label;
  }

  /** The label of the token that was opened. */
  get label(): string {
    return this.#label;
  }

  /**
   * Opens a session and logs in. Missing module or token: FACTORY_TOKEN_UNAVAILABLE; wrong PIN:
   * FACTORY_TOKEN_PIN_INCORRECT; locked PIN or uninitialized token: FACTORY_TOKEN_LOCKED (never a crash).
   */
  static open(opts: FactoryTokenOptions): FactoryToken {
    const sel: Pkcs11Uri = opts.token.startsWith('pkcs11:')
      ? parsePkcs11Uri(opts.token)
      : { token: opts.token };
    const module = sel.modulePath ?? opts.module;
    const m = loadBinding();
    let l = loaded.get(module);
    if (l === undefined) {
      const p = new m.PKCS11();
      let owned = true;
      try {
        p.load(module);
      } catch (e) {
        throw new ServerError('FACTORY_TOKEN_UNAVAILABLE', `PKCS#11 module ${module} does not load`, {
          cause: e,
        });
      }
      try {
        p.C_Initialize();
      } catch (e) {
        // Another binding instance in this process initialized the library (PKCS#11 v2.40 §5.4).
        if (rv(e) !== CKR_CRYPTOKI_ALREADY_INITIALIZED)
          throw new ServerError('FACTORY_TOKEN_UNAVAILABLE', `PKCS#11 module ${module} does not initialize`, {
            cause: e,
          });
        owned = false;
      }
      l = { p, refs: 0, owned, logins: new Map() };
      loaded.set(module, l);
    }
    const p = l.p;
    l.refs++;
    try {
      const slot = p.C_GetSlotList(true).find((s) => {
        const t = p.C_GetTokenInfo(s);
        return (
          (sel.token === undefined || t.label.trim() === sel.token) &&
          (sel.serial === undefined || t.serialNumber.trim() === sel.serial) &&
          (sel.manufacturer === undefined || t.manufacturerID.trim() === sel.manufacturer) &&
          (sel.model === undefined || t.model.trim() === sel.model)
        );
      });
      if (slot === undefined)
        throw new ServerError('FACTORY_TOKEN_UNAVAILABLE', `no PKCS#11 token matches ${opts.token}`);
      const label = p.C_GetTokenInfo(slot).label.trim();
      const pinHash = createHash('sha256').update(opts.pin).digest();
      const session = p.C_OpenSession(slot, m.CKF_RW_SESSION | m.CKF_SERIAL_SESSION);
      try {
        p.C_Login(session, m.CKU_USER, opts.pin);
        l.logins.set(label, pinHash);
      } catch (e) {
        const known = l.logins.get(label);
        if (rv(e) === CKR_USER_ALREADY_LOGGED_IN && known !== undefined && timingSafeEqual(known, pinHash))
          return new FactoryToken(m, p, module, session, label);
        try {
          p.C_CloseSession(session);
        } catch {
          // already failing
        }
        const code = rv(e);
        if (code === CKR_USER_ALREADY_LOGGED_IN)
          throw new ServerError('FACTORY_TOKEN_PIN_INCORRECT', 'the token refused the PIN', { cause: e });
        if (code === CKR_PIN_INCORRECT || code === CKR_PIN_INVALID || code === CKR_PIN_LEN_RANGE)
          throw new ServerError('FACTORY_TOKEN_PIN_INCORRECT', 'the token refused the PIN', { cause: e });
        if (code === CKR_PIN_LOCKED || code === CKR_PIN_EXPIRED || code === CKR_USER_PIN_NOT_INITIALIZED)
          throw new ServerError('FACTORY_TOKEN_LOCKED', 'the token user PIN is locked or not initialized', {
            cause: e,
          });
        throw p11error('login', e);
      }
      return new FactoryToken(m, p, module, session, label);
    } catch (e) {
      FactoryToken.#release(module);
      throw e instanceof ServerError ? e : p11error('open', e);
    }
  }

  static #release(module: string): void {
    const l = loaded.get(module);
    if (l === undefined) return;
    if (--l.refs > 0) return;
    loaded.delete(module);
    if (l.owned) {
      try {
        l.p.C_Finalize();
      } catch {
        // nothing more to release
      }
    }
  }

  /** One PKCS#11 operation at a time on the session (PKCS#11 v2.40 §5.6). */
  #serial<T>(f: () => T): Promise<T> {
    const run = this.#tail.then(f, f);
    this.#tail = run.catch(() => undefined);
    return run;
  }

  #find(label: string, cls: number): Buffer[] {
    const p = this.#p;
    p.C_FindObjectsInit(this.#session, [
      { type: this.#m.CKA_LABEL, value: label },
      { type: this.#m.CKA_CLASS, value: cls },
    ]);
    try {
      return p.C_FindObjects(this.#session, 4);
    } finally {
      p.C_FindObjectsFinal(this.#session);
    }
  }

  /** The object label a key URI names (RFC 7512 `object`), checking it addresses this token. */
  #labelOf(keyUri: string): string {
    const u = keyUri.startsWith('pkcs11:') ? parsePkcs11Uri(keyUri) : { object: keyUri };
    if (u.object === undefined || u.object === '')
      throw new ServerError('PKCS11_URI_INVALID', 'PKCS#11 URI: a key needs an object attribute');
    if (u.token !== undefined && u.token !== this.#label)
      throw new ServerError('FACTORY_KEY_NOT_FOUND', `key ${keyUri} is not on token ${this.#label}`);
    if (u.type !== undefined && u.type !== 'private')
      throw new ServerError('PKCS11_URI_INVALID', 'PKCS#11 URI: a signing key has type=private');
    return u.object;
  }

  #key(label: string): { handle: Buffer; type: FactoryKeyType; spki: Uint8Array } {
    let k = this.#keys.get(label);
    if (k !== undefined) return k;
    const m = this.#m;
    const priv = this.#find(label, m.CKO_PRIVATE_KEY);
    const pub = this.#find(label, m.CKO_PUBLIC_KEY);
    if (priv.length !== 1 || pub.length !== 1)
      throw new ServerError(
        'FACTORY_KEY_NOT_FOUND',
        `token ${this.#label} has ${priv.length} private and ${pub.length} public keys labelled ${label}`,
      );
    const a = this.#p.C_GetAttributeValue(this.#session, pub[0]!, [
      { type: m.CKA_KEY_TYPE },
      { type: m.CKA_EC_POINT },
    ]);
    const kt = a[0]?.value;
    const point = a[1]?.value;
    if (!(kt instanceof Buffer) || !(point instanceof Buffer))
      throw new ServerError('PKCS11_ERROR', `key ${label}: no key type or EC point`);
    // CK_ULONG in host order (PKCS#11 v2.40 §3.1): 8 bytes on LP64, 4 on 32-bit platforms.
    const ktv = kt.length === 8 ? Number(kt.readBigUInt64LE(0)) : kt.readUIntLE(0, Math.min(kt.length, 6));
    const type: FactoryKeyType | undefined =
      ktv === m.CKK_EC ? 'P-256' : ktv === CKK_EC_EDWARDS ? 'Ed25519' : undefined;
    if (type === undefined)
      throw new ServerError('PKCS11_ERROR', `key ${label}: unsupported key type ${ktv}`);
    k = { handle: priv[0]!, type, spki: spkiFromPoint(type, point) };
    this.#keys.set(label, k);
    return k;
  }

  /** Generates a never-extractable key pair; refuses (FACTORY_KEY_EXISTS) when the label is taken. */
  generate(keyUri: string, type: FactoryKeyType): Promise<{ spki: Uint8Array }> {
    const label = this.#labelOf(keyUri);
    return this.#serial(() => {
      const m = this.#m;
      const p = this.#p;
      try {
        if (this.#find(label, m.CKO_PRIVATE_KEY).length > 0 || this.#find(label, m.CKO_PUBLIC_KEY).length > 0)
          throw new ServerError('FACTORY_KEY_EXISTS', `token ${this.#label} already has a key ${label}`);
        const id = createHash('sha256').update(label).digest().subarray(0, 16);
        const pair = p.C_GenerateKeyPair(
          this.#session,
          { mechanism: type === 'P-256' ? m.CKM_EC_KEY_PAIR_GEN : CKM_EC_EDWARDS_KEY_PAIR_GEN },
          [
            { type: m.CKA_TOKEN, value: true },
            { type: m.CKA_LABEL, value: label },
            { type: m.CKA_ID, value: id },
            { type: m.CKA_EC_PARAMS, value: EC_PARAMS[type] },
            { type: m.CKA_VERIFY, value: true },
          ],
          [
            { type: m.CKA_TOKEN, value: true },
            { type: m.CKA_PRIVATE, value: true },
            { type: m.CKA_LABEL, value: label },
            { type: m.CKA_ID, value: id },
            // PKCS#11 v2.40 §4.9: sensitive keys are never revealed, unextractable ones never wrapped out.
            { type: m.CKA_SENSITIVE, value: true },
            { type: m.CKA_EXTRACTABLE, value: false },
            { type: m.CKA_SIGN, value: true },
          ],
        );
        const point = p.C_GetAttributeValue(this.#session, pair.publicKey, [{ type: m.CKA_EC_POINT }])[0]
          ?.value;
        if (!(point instanceof Buffer)) throw new ServerError('PKCS11_ERROR', 'token returned no EC point');
        const spki = spkiFromPoint(type, point);
        this.#keys.set(label, { handle: pair.privateKey, type, spki });
        return { spki };
      } catch (e) {
        throw p11error('key generation', e);
      }
    });
  }

  /** Whether the token holds a key under this URI. */
  has(keyUri: string): Promise<boolean> {
    const label = this.#labelOf(keyUri);
    return this.#serial(() => this.#find(label, this.#m.CKO_PRIVATE_KEY).length > 0);
  }

  /** Public key (SPKI DER) and type of a key. */
  publicKey(keyUri: string): Promise<{ spki: Uint8Array; type: FactoryKeyType }> {
    const label = this.#labelOf(keyUri);
    return this.#serial(() => {
      const k = this.#key(label);
      return { spki: k.spki, type: k.type };
    });
  }

  /** A raw signature in COSE form (ECDSA r‖s over SHA-256 of `data`; Ed25519 over `data`). */
  sign(keyUri: string, data: Uint8Array): Promise<Uint8Array> {
    const label = this.#labelOf(keyUri);
    return this.#serial(() => this.#signNow(label, data));
  }

  #signNow(label: string, data: Uint8Array): Uint8Array {
    if (this.#closed) throw new ServerError('FACTORY_TOKEN_UNAVAILABLE', 'the token session is closed');
    try {
      const k = this.#key(label);
      const ec = k.type === 'P-256';
      // CKM_ECDSA signs a digest (PKCS#11 v2.40 §2.3.1); CKM_EDDSA without parameters is PureEdDSA (RFC 8032).
      const input = ec ? createHash('sha256').update(data).digest() : Buffer.from(data);
      this.#p.C_SignInit(this.#session, { mechanism: ec ? this.#m.CKM_ECDSA : CKM_EDDSA }, k.handle);
      const sig = this.#p.C_Sign(this.#session, input, Buffer.alloc(64));
      return new Uint8Array(sig);
    } catch (e) {
      throw p11error('sign', e);
    }
  }

  /** A COSE Signer over a token key (ES256 for P-256, EdDSA for Ed25519). */
  async signer(keyUri: string, kid?: Uint8Array): Promise<Signer & { readonly type: FactoryKeyType }> {
    const label = this.#labelOf(keyUri);
    const { type } = await this.publicKey(keyUri);
    return {
      alg: FACTORY_KEY_ALG[type],
      kid,
      type,
      sign: (tbs) => this.#serial(() => this.#signNow(label, tbs)),
    };
  }

  /** The protection attributes of a private key (audits and tests). */
  attributes(keyUri: string): Promise<TokenKeyAttributes> {
    const label = this.#labelOf(keyUri);
    return this.#serial(() => {
      const m = this.#m;
      const h = this.#key(label).handle;
      const a = this.#p.C_GetAttributeValue(this.#session, h, [
        { type: m.CKA_SENSITIVE },
        { type: m.CKA_EXTRACTABLE },
        { type: m.CKA_ALWAYS_SENSITIVE },
        { type: m.CKA_NEVER_EXTRACTABLE },
      ]);
      const bool = (i: number): boolean => {
        const v = a[i]?.value;
        return v instanceof Buffer && v[0] === 1;
      };
      let valueReadable = true;
      try {
        this.#p.C_GetAttributeValue(this.#session, h, [{ type: m.CKA_VALUE }]);
      } catch {
        valueReadable = false;
      }
      return {
        sensitive: bool(0),
        extractable: bool(1),
        alwaysSensitive: bool(2),
        neverExtractable: bool(3),
        valueReadable,
      };
    });
  }

  close(): Promise<void> {
    return this.#serial(() => {
      if (this.#closed) return;
      this.#closed = true;
      // Logging out ends the login of every session of this process on the token: only the last one does.
      const l = loaded.get(this.#module);
      if ((l?.refs ?? 0) <= 1) {
        l?.logins.delete(this.#label);
        try {
          this.#p.C_Logout(this.#session);
        } catch {
          // not logged in any more
        }
      }
      try {
        this.#p.C_CloseSession(this.#session);
      } finally {
        FactoryToken.#release(this.#module);
      }
    });
  }
}

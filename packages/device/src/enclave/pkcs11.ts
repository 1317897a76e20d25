/**
 * A PKCS#11 key backend (PKCS#11 v2.40 via the `pkcs11js` N-API binding): keys are generated inside the token with
 * CKA_SENSITIVE = true and CKA_EXTRACTABLE = false, so the private key never exists outside it. Tests run it against
 * a real SoftHSM2 token; a secure element or TPM with a PKCS#11 module stands in the same way.
 *
 * Supported: ES256 (CKM_EC_KEY_PAIR_GEN on P-256, CKM_ECDSA over a SHA-256 digest computed here) and ECDH-P256
 * (CKM_ECDH1_DERIVE with CKD_NULL). One session, one operation at a time (a PKCS#11 session runs one operation;
 * §5.6), serialized by a queue; signing runs on the binding's worker thread (C_SignAsync) so the enclave's event
 * loop keeps serving.
 */
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import type * as Pkcs11Types from 'pkcs11js';
import { Curve, type CoseKey } from '@rotor/cose';
import { DeviceError } from '../errors.ts';
import type { KeyBackend } from './backend.ts';
import type { KeyType } from './keys.ts';

type Pkcs11Module = typeof Pkcs11Types;

export interface Pkcs11Config {
  /** Path of the PKCS#11 module, e.g. /usr/lib/softhsm/libsofthsm2.so. */
  readonly module: string;
  /** Label of the token to use. */
  readonly tokenLabel: string;
  /** User PIN. */
  readonly pin: string;
}

/** DER of the P-256 OID 1.2.840.10045.3.1.7 (CKA_EC_PARAMS, PKCS#11 v2.40 §2.3.3). */
const P256_OID = Buffer.from('06082a8648ce3d030107', 'hex');

function loadBinding(): Pkcs11Module {
  try {
    return createRequire(import.meta.url)('pkcs11js') as Pkcs11Module;
  } catch (e) {
    throw new DeviceError('BACKEND_UNAVAILABLE', 'the pkcs11js binding does not load', { cause: e });
  }
}

function p11error(what: string, e: unknown): DeviceError {
  if (e instanceof DeviceError) return e;
  return new DeviceError('PKCS11_ERROR', `${what}: ${e instanceof Error ? e.message : String(e)}`, {
    cause: e,
  });
}

/** Uncompressed point from CKA_EC_POINT: a DER OCTET STRING around 04‖x‖y (SoftHSM2), or the bare point. */
function parseEcPoint(v: Buffer): { x: Uint8Array; y: Uint8Array } {
  let p = v;
  if (p.length === 67 && p[0] === 0x04 && p[1] === 0x41) p = p.subarray(2);
  if (p.length !== 65 || p[0] !== 0x04)
    throw new DeviceError('PKCS11_ERROR', 'unexpected CKA_EC_POINT encoding');
  return { x: new Uint8Array(p.subarray(1, 33)), y: new Uint8Array(p.subarray(33)) };
}

export interface Pkcs11KeyAttributes {
  readonly sensitive: boolean;
  readonly extractable: boolean;
  readonly alwaysSensitive: boolean;
  readonly neverExtractable: boolean;
  /** Whether reading CKA_VALUE of the private key was refused by the token. */
  readonly valueReadable: boolean;
}

export class Pkcs11Backend implements KeyBackend {
  readonly name = 'pkcs11';
  readonly #p: Pkcs11Types.PKCS11;
  readonly #m: Pkcs11Module;
  readonly #session: Buffer;
  readonly #handles = new Map<string, Buffer>();
  #tail: Promise<unknown> = Promise.resolve();

  private constructor(m: Pkcs11Module, p: Pkcs11Types.PKCS11, session: Buffer) {
    this.#m = m;
    this.#p = p;
    this.#session = session;
  }

  static open(cfg: Pkcs11Config): Pkcs11Backend {
    const m = loadBinding();
    const p = new m.PKCS11();
    try {
      p.load(cfg.module);
      p.C_Initialize();
    } catch (e) {
      throw new DeviceError('BACKEND_UNAVAILABLE', `PKCS#11 module ${cfg.module} does not load`, {
        cause: e,
      });
    }
    try {
      const slot = p.C_GetSlotList(true).find((s) => p.C_GetTokenInfo(s).label.trim() === cfg.tokenLabel);
      if (slot === undefined)
        throw new DeviceError('BACKEND_UNAVAILABLE', `no PKCS#11 token ${cfg.tokenLabel}`);
      const session = p.C_OpenSession(slot, m.CKF_RW_SESSION | m.CKF_SERIAL_SESSION);
      p.C_Login(session, m.CKU_USER, cfg.pin);
      return new Pkcs11Backend(m, p, session);
    } catch (e) {
      try {
        p.C_Finalize();
      } catch {
        // already failing
      }
      throw e instanceof DeviceError
        ? e
        : new DeviceError('BACKEND_UNAVAILABLE', 'PKCS#11 login failed', { cause: e });
    }
  }

  supports(type: KeyType): boolean {
    return type === 'ES256' || type === 'ECDH-P256';
  }

  #serial<T>(f: () => Promise<T> | T): Promise<T> {
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
      return p.C_FindObjects(this.#session, 16);
    } finally {
      p.C_FindObjectsFinal(this.#session);
    }
  }

  #privateHandle(keyId: string): Buffer {
    let h = this.#handles.get(keyId);
    if (h === undefined) {
      const found = this.#find(keyId, this.#m.CKO_PRIVATE_KEY);
      if (found.length !== 1)
        throw new DeviceError('KEY_NOT_FOUND', `PKCS#11 token has ${found.length} keys ${keyId}`);
      h = found[0]!;
      this.#handles.set(keyId, h);
    }
    return h;
  }

  generate(keyId: string, type: KeyType): Promise<CoseKey> {
    return this.#serial(() => {
      const m = this.#m;
      const p = this.#p;
      if (!this.supports(type))
        throw new DeviceError('KEY_TYPE_UNSUPPORTED', `PKCS#11 backend cannot hold ${type}`);
      try {
        // The sealed state is the authority on which keys exist: objects with this label are leftovers of a
        // generation that crashed before it was recorded.
        for (const cls of [m.CKO_PRIVATE_KEY, m.CKO_PUBLIC_KEY]) {
          for (const h of this.#find(keyId, cls)) p.C_DestroyObject(this.#session, h);
        }
        this.#handles.delete(keyId);
        const id = createHash('sha256').update(keyId).digest().subarray(0, 16);
        const sign = type === 'ES256';
        const pair = p.C_GenerateKeyPair(
          this.#session,
          { mechanism: m.CKM_EC_KEY_PAIR_GEN },
          [
            { type: m.CKA_TOKEN, value: true },
            { type: m.CKA_LABEL, value: keyId },
            { type: m.CKA_ID, value: id },
            { type: m.CKA_EC_PARAMS, value: P256_OID },
            { type: sign ? m.CKA_VERIFY : m.CKA_DERIVE, value: true },
          ],
          [
            { type: m.CKA_TOKEN, value: true },
            { type: m.CKA_PRIVATE, value: true },
            { type: m.CKA_LABEL, value: keyId },
            { type: m.CKA_ID, value: id },
            // Never exportable (PKCS#11 v2.40 §4.9: sensitive keys cannot be revealed, unextractable ones not wrapped).
            { type: m.CKA_SENSITIVE, value: true },
            { type: m.CKA_EXTRACTABLE, value: false },
            { type: sign ? m.CKA_SIGN : m.CKA_DERIVE, value: true },
          ],
        );
        const attrs = p.C_GetAttributeValue(this.#session, pair.publicKey, [{ type: m.CKA_EC_POINT }]);
        const point = attrs[0]?.value;
        if (!(point instanceof Buffer)) throw new DeviceError('PKCS11_ERROR', 'token returned no EC point');
        const { x, y } = parseEcPoint(point);
        this.#handles.set(keyId, pair.privateKey);
        return { kty: 2, crv: Curve.P256, x, y } satisfies CoseKey;
      } catch (e) {
        throw p11error('key generation', e);
      }
    });
  }

  load(): void {
    // Keys are found by label on first use.
  }

  sign(keyId: string, type: KeyType, data: Uint8Array): Promise<Uint8Array> {
    if (type !== 'ES256')
      return Promise.reject(new DeviceError('KEY_USAGE', `${keyId} is not a signing key`));
    // CKM_ECDSA signs a digest; the result is r‖s (PKCS#11 v2.40 §2.3.1), the COSE form (RFC 9053 §2.1).
    const digest = createHash('sha256').update(data).digest();
    return this.#serial(async () => {
      try {
        const h = this.#privateHandle(keyId);
        this.#p.C_SignInit(this.#session, { mechanism: this.#m.CKM_ECDSA }, h);
        const sig = await this.#p.C_SignAsync(this.#session, digest, Buffer.alloc(64));
        return new Uint8Array(sig);
      } catch (e) {
        throw p11error('sign', e);
      }
    });
  }

  deriveSharedSecret(keyId: string, type: KeyType, peer: Uint8Array): Promise<Uint8Array> {
    if (type !== 'ECDH-P256')
      return Promise.reject(new DeviceError('KEY_USAGE', `${keyId} is not an ECDH key`));
    if (peer.length !== 65 || peer[0] !== 0x04) {
      return Promise.reject(
        new DeviceError('BAD_PEER_KEY', 'P-256 peer key must be a 65-byte uncompressed point'),
      );
    }
    return this.#serial(() => {
      const m = this.#m;
      const p = this.#p;
      let secret: Buffer | undefined;
      try {
        const h = this.#privateHandle(keyId);
        // CKM_ECDH1_DERIVE with CKD_NULL: the derived key value is the shared secret Z (PKCS#11 v2.40 §2.3.8).
        const ecdh: Pkcs11Types.ECDH1 = {
          type: m.CK_PARAMS_EC_DH,
          kdf: m.CKD_NULL,
          publicData: Buffer.from(peer),
        };
        secret = p.C_DeriveKey(
          this.#session,
          {
            mechanism: m.CKM_ECDH1_DERIVE,
            parameter: ecdh,
          },
          h,
          [
            { type: m.CKA_CLASS, value: m.CKO_SECRET_KEY },
            { type: m.CKA_KEY_TYPE, value: m.CKK_GENERIC_SECRET },
            { type: m.CKA_TOKEN, value: false },
            { type: m.CKA_SENSITIVE, value: false },
            { type: m.CKA_EXTRACTABLE, value: true },
            { type: m.CKA_VALUE_LEN, value: 32 },
          ],
        );
        const v = p.C_GetAttributeValue(this.#session, secret, [{ type: m.CKA_VALUE }])[0]?.value;
        if (!(v instanceof Buffer) || v.length !== 32)
          throw new DeviceError('PKCS11_ERROR', 'no shared secret');
        return new Uint8Array(v);
      } catch (e) {
        if (e instanceof Error && /POINT|PUBLIC_KEY|ARGUMENTS|MECHANISM_PARAM/i.test(e.message)) {
          throw new DeviceError('BAD_PEER_KEY', 'the token refused the peer key', { cause: e });
        }
        throw p11error('derive', e);
      } finally {
        if (secret !== undefined) p.C_DestroyObject(this.#session, secret);
      }
    });
  }

  /** The protection attributes of a private key (for audits and tests). */
  attributes(keyId: string): Promise<Pkcs11KeyAttributes> {
    return this.#serial(() => {
      const m = this.#m;
      const h = this.#privateHandle(keyId);
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
      try {
        this.#p.C_Logout(this.#session);
        this.#p.C_CloseSession(this.#session);
      } finally {
        this.#p.C_Finalize();
      }
    });
  }
}

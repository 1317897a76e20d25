/**
 * Server-held keys. Private and secret keys stay behind interfaces (DESIGN.md "keys never leave their store"):
 *  - the operator's signing key is a `Signer` (@rotor/cose) plus its public key, so that approval can verify what
 *    it signed; the file backend is here, a PKCS#11 backend implements the same interface;
 *  - release content keys (CEKs) are stored only wrapped under the content-key vault (AES-256 Key Wrap, RFC 3394
 *    via RFC 9053 §6.2.1), whose key-encryption key is read from a file and never logged;
 *  - per-device key-encryption keys (AES-KW recipients) are stored wrapped under the same vault.
 */
import { createPrivateKey, createPublicKey, createSecretKey, type KeyObject } from 'node:crypto';
import {
  Alg,
  aesKeyUnwrap,
  aesKeyWrap,
  softwareSigner,
  softwareVerifier,
  type Signer,
  type Verifier,
} from '@rotor/cose';
import { sha256 } from './auth.ts';
import { ServerError } from './errors.ts';
import { openPkcs11SigningKey, publicKeyObjectOf } from './factory/pkcs11-key.ts';

/** The operator's approval key: signs the per-device manifests (RFC 9019 §4 device operator). */
export interface OperatorKey {
  readonly signer: Signer;
  /** Verifies what the signer produced (dry run at approval, tests). */
  readonly verifier: Verifier;
  /** COSE kid: first 16 bytes of SHA-256 over the SubjectPublicKeyInfo. */
  readonly kid: Uint8Array;
}

/** Wraps and unwraps content keys and device KEKs for storage. */
export interface ContentKeyVault {
  wrap(key: Uint8Array): Promise<Uint8Array>;
  unwrap(wrapped: Uint8Array): Promise<Uint8Array>;
}

function keyIdOf(pub: KeyObject): Uint8Array {
  return sha256(new Uint8Array(pub.export({ type: 'spki', format: 'der' }))).subarray(0, 16);
}

/** Signature algorithm for an operator key: ES256 for P-256 (RFC 9053 §2.1), EdDSA for Ed25519 (§2.2). */
function signatureAlgOf(key: KeyObject): number {
  if (key.asymmetricKeyType === 'ec' && key.asymmetricKeyDetails?.namedCurve === 'prime256v1')
    return Alg.ES256;
  if (key.asymmetricKeyType === 'ed25519') return Alg.EdDSA;
  throw new ServerError('CONFIG_INVALID', 'operator key: a P-256 or Ed25519 private key is required');
}

/** An operator key from a PEM private key (file backend). The key material stays inside the KeyObject. */
export function operatorKeyFromPem(pem: string): OperatorKey {
  let priv: KeyObject;
  try {
    priv = createPrivateKey(pem);
  } catch (e) {
    throw new ServerError('CONFIG_INVALID', 'operator key: not a PEM private key', { cause: e });
  }
  return operatorKeyFrom(priv);
}

export function operatorKeyFrom(priv: KeyObject): OperatorKey {
  const alg = signatureAlgOf(priv);
  const pub = createPublicKey(priv);
  const kid = keyIdOf(pub);
  return { signer: softwareSigner(priv, alg, kid), verifier: softwareVerifier(pub, alg, kid), kid };
}

/**
 * An operator key in a PKCS#11 token, named by an RFC 7512 URI (`--operator-key pkcs11:token=…;object=…?pin-source=…`).
 * The private key stays in the token; `close` ends the token session when the server stops.
 */
export async function operatorKeyFromPkcs11(
  uri: string,
  opts: { module?: string; pinFallback?: string } = {},
): Promise<OperatorKey & { close(): Promise<void> }> {
  const k = await openPkcs11SigningKey(uri, opts);
  const pub = publicKeyObjectOf(k.spki);
  const kid = keyIdOf(pub);
  const alg = k.signer.alg;
  return {
    signer: { alg, kid, sign: (tbs) => k.signer.sign(tbs) },
    verifier: softwareVerifier(pub, alg, kid),
    kid,
    close: () => k.close(),
  };
}

/**
 * A vault over a 256-bit key-encryption key given as 64 hex digits (the content of the key file). A256KW
 * (RFC 3394, RFC 9053 §6.2.1) gives integrity: a wrapped key that was altered does not unwrap.
 */
export function vaultFromHex(text: string): ContentKeyVault {
  const t = text.trim();
  if (!/^[0-9a-fA-F]{64}$/.test(t))
    throw new ServerError('CONFIG_INVALID', 'content key-encryption key: 64 hex digits (256 bits) required');
  const kek = createSecretKey(Buffer.from(t, 'hex'));
  return {
    wrap: (key) => Promise.resolve(aesKeyWrap(kek, key, Alg.A256KW)),
    unwrap: (wrapped) => Promise.resolve(aesKeyUnwrap(kek, wrapped, Alg.A256KW)),
  };
}

/** Key-agreement public key of a device (ECDH-ES recipients, RFC 9053 §6.3): P-256 or X25519 SPKI PEM. */
export function parseKeyAgreementKey(pem: string): { spki: Uint8Array; curve: 'P-256' | 'X25519' } {
  let key: KeyObject;
  try {
    key = createPublicKey(pem);
  } catch (e) {
    throw new ServerError('DEVICE_KEY_INVALID', 'keyAgreementKeyPem is not a public key', { cause: e });
  }
  const curve =
    key.asymmetricKeyType === 'ec' && key.asymmetricKeyDetails?.namedCurve === 'prime256v1'
      ? 'P-256'
      : key.asymmetricKeyType === 'x25519'
        ? 'X25519'
        : undefined;
  // draft-ietf-suit-firmware-encryption §6.2 / RFC 9053 §6.3: ECDH-ES+A128KW on P-256 or X25519.
  if (curve === undefined)
    throw new ServerError('DEVICE_KEY_INVALID', 'keyAgreementKeyPem must be a P-256 or X25519 public key');
  return { spki: new Uint8Array(key.export({ type: 'spki', format: 'der' })), curve };
}

/** A per-device AES-KW key-encryption key (RFC 9053 §6.2.1): 128 bits (A128KW) as 32 hex digits. */
export function parseDeviceKek(hexText: string): Uint8Array {
  if (!/^[0-9a-fA-F]{32}$/.test(hexText))
    throw new ServerError('DEVICE_KEY_INVALID', 'kek must be 32 hex digits (A128KW, 128 bits)');
  return new Uint8Array(Buffer.from(hexText, 'hex'));
}

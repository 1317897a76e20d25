/**
 * The capability server's keys (issue 8), behind the `Signer` interface like the operator key (../keys.ts): a file
 * backend here, a PKCS#11 backend provides the same shape.
 *  - signing: the capability-signing key that signs every per-device module envelope (seed 000 §1 "Modules are
 *    signed with a capability-specific key"); capability manifests list it for the capabilities it may sign;
 *  - authority: signs capability manifests (seed 000 §1 "Capability Manifest: a digitally signed list") and module
 *    revocation lists (seed 000 step 7 "signed by a trusted authority"). Devices are provisioned with its public key.
 */
import { createPrivateKey, createPublicKey, type KeyObject } from 'node:crypto';
import {
  Alg,
  coseKeyFromKeyObject,
  softwareSigner,
  softwareVerifier,
  type CoseKey,
  type Signer,
  type Verifier,
} from '@rotor/cose';
import { sha256 } from '../auth.ts';
import { ServerError } from '../errors.ts';

export interface CapabilityKey {
  readonly signer: Signer;
  readonly verifier: Verifier;
  readonly kid: Uint8Array;
  readonly alg: number;
  /** The public key as a COSE_Key (kid and alg set), as listed in capability manifests. */
  readonly coseKey: CoseKey;
  /** SubjectPublicKeyInfo DER, for provisioning. */
  readonly spki: Uint8Array;
}

export interface CapabilityKeys {
  readonly signing: CapabilityKey;
  readonly authority: CapabilityKey;
}

/** A capability key from a signer and its public key (any backend). */
export function capabilityKeyFrom(signer: Signer, publicKey: KeyObject): CapabilityKey {
  const spki = new Uint8Array(publicKey.export({ type: 'spki', format: 'der' }));
  const kid = signer.kid ?? sha256(spki).subarray(0, 16);
  return {
    signer,
    verifier: softwareVerifier(publicKey, signer.alg, kid),
    kid,
    alg: signer.alg,
    coseKey: coseKeyFromKeyObject(publicKey, { kid, alg: signer.alg }),
    spki,
  };
}

/** File backend: a P-256 (ES256) or Ed25519 (EdDSA) private key in PEM. */
export function capabilityKeyFromPem(pem: string, what: string): CapabilityKey {
  let priv: KeyObject;
  try {
    priv = createPrivateKey(pem);
  } catch (e) {
    throw new ServerError('CONFIG_INVALID', `${what}: not a PEM private key`, { cause: e });
  }
  return capabilityKeyFromPrivate(priv, what);
}

export function capabilityKeyFromPrivate(priv: KeyObject, what = 'capability key'): CapabilityKey {
  let alg: number;
  if (priv.asymmetricKeyType === 'ec' && priv.asymmetricKeyDetails?.namedCurve === 'prime256v1')
    alg = Alg.ES256;
  else if (priv.asymmetricKeyType === 'ed25519') alg = Alg.EdDSA;
  else throw new ServerError('CONFIG_INVALID', `${what}: a P-256 or Ed25519 private key is required`);
  const pub = createPublicKey(priv);
  const kid = sha256(new Uint8Array(pub.export({ type: 'spki', format: 'der' }))).subarray(0, 16);
  return capabilityKeyFrom(softwareSigner(priv, alg, kid), pub);
}

/** Trust anchors and signers built from the vector keys (vectors.md "Keys"). */
import { createPrivateKey, createPublicKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  Alg,
  decodeCoseKey,
  softwareMacKey,
  softwareSigner,
  softwareVerifier,
  type MacKey,
  type Signer,
  type Verifier,
} from '@rotor/cose';
import type { TrustAnchor, TrustPolicy } from '../src/policy.ts';
import { VECTORS } from './vectors.ts';

const key = (f: string): Buffer => readFileSync(join(VECTORS, 'keys', f));

export function draftVerifier(alg: number = Alg.ES256): Verifier {
  return softwareVerifier(createPublicKey(key('suit-draft-signer-p256.public.pem')), alg);
}
export function draftSigner(alg: number = Alg.ESP256): Signer {
  return softwareSigner(createPrivateKey(key('suit-draft-signer-p256.private.pem')), alg);
}
export function encDepVerifier(): Verifier {
  return softwareVerifier(createPublicKey(key('encryption-dependency-signer-p256.public.pem')), Alg.ESP256);
}
export function encDepSigner(): Signer {
  return softwareSigner(createPrivateKey(key('encryption-dependency-signer-p256.private.pem')), Alg.ESP256);
}
export function hmacKey(): MacKey {
  const k = decodeCoseKey(new Uint8Array(key('encryption-hmac256-key.cose_key')));
  return softwareMacKey(k.k!, Alg.HMAC256);
}

export const ALLOWED: ReadonlySet<number> = new Set([
  Alg.ES256,
  Alg.ESP256,
  Alg.EdDSA,
  Alg.Ed25519,
  Alg.HMAC256,
]);

export function anchor(
  name: string,
  role: string,
  k: Verifier | MacKey,
  extra: Partial<TrustAnchor> = {},
): TrustAnchor {
  const isMac = 'mac' in k;
  return { name, role, ...(isMac ? { macKey: k } : { verifier: k }), ...extra };
}

export function policyOf(anchors: TrustAnchor[], extra: Partial<TrustPolicy> = {}): TrustPolicy {
  return { anchors, allowedAlgs: ALLOWED, ...extra };
}

/**
 * COSE Key Thumbprint (RFC 9679): the key id of every root-of-trust key. SHA-256 over the deterministic encoding
 * of the key's required parameters only, so the id does not depend on optional members (kid, alg, key_ops).
 */
import { createHash } from 'node:crypto';
import { CoseError, encode, type CoseKey } from '@rotor/cose';

/** RFC 9679 §3 thumbprint (SHA-256, 32 bytes) of an EC2 or OKP public key. */
export function coseKeyThumbprint(key: CoseKey): Uint8Array {
  // RFC 9679 §3: EC2 → kty, crv, x, y; OKP → kty, crv, x. Deterministic encoding (RFC 8949 §4.2.1).
  if (key.crv === undefined || key.x === undefined) {
    throw new CoseError('COSE_KEY_INVALID', 'thumbprint needs crv and x');
  }
  const m = new Map<number, unknown>([
    [1, key.kty],
    [-1, key.crv],
    [-2, key.x],
  ]);
  if (key.kty === 2) {
    if (key.y === undefined) throw new CoseError('COSE_KEY_INVALID', 'EC2 thumbprint needs y');
    m.set(-3, key.y);
  } else if (key.kty !== 1) {
    throw new CoseError('COSE_KEY_INVALID', 'thumbprints are defined here for EC2 and OKP keys only');
  }
  return new Uint8Array(createHash('sha256').update(encode(m)).digest());
}

/** Constant-time equality of two byte strings (lengths are not secret). */
export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i]! ^ b[i]!;
  return d === 0;
}

export function hex(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
}

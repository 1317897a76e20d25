/** Shared helpers for the envelope tests: the published SUIT vectors (see /work/shared/vectors/suit/vectors.md). */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

export const VECTORS = join(import.meta.dirname, '../../../../shared/vectors/suit');

export function vector(rel: string): Uint8Array {
  return new Uint8Array(readFileSync(join(VECTORS, rel)));
}

/** Every envelope vector that decodes (digest and severed digests correct), signed or not. */
export const DECODABLE = [
  'manifest/example0.signed.cbor',
  'manifest/example0.unsigned.cbor',
  'manifest/example1.signed.cbor',
  'manifest/example1.unsigned.cbor',
  'manifest/example2.signed.cbor',
  'manifest/example2.severed-signed.cbor',
  'manifest/example2.severed-unsigned.cbor',
  'manifest/example3.signed.cbor',
  'manifest/example3.unsigned.cbor',
  'manifest/example4.signed.cbor',
  'manifest/example4.unsigned.cbor',
  'manifest/example5.signed.cbor',
  'manifest/example5.unsigned.cbor',
  'trust-domains/example0_dependent.signed.cbor',
  'trust-domains/example1_process.signed.cbor',
  'trust-domains/example2_integrated.signed.cbor',
  'encryption/suit-manifest-aes-kw-content.signed.cbor',
  'encryption/suit-manifest-aes-kw.signed.cbor',
  'encryption/suit-manifest-aes-kw-slot.signed.cbor',
  'encryption/suit-manifest-es-ecdh-content.signed.cbor',
  'encryption/suit-manifest-es-ecdh-dependency.signed.cbor',
  'negative/example0.bad-signature.cbor',
] as const;

/** Envelope vectors that must not decode, with the expected SuitError code. */
export const UNDECODABLE = [
  ['negative/example0.modified-manifest.cbor', 'SUIT_DIGEST_MISMATCH'],
  ['negative/example2.modified-severed-text.cbor', 'SUIT_SEVERED_DIGEST_MISMATCH'],
] as const;

export const ALL_ENVELOPES = [...DECODABLE, ...UNDECODABLE.map(([f]) => f)];

export function hex(s: string): Uint8Array {
  return Uint8Array.from(Buffer.from(s.replace(/\s+/g, ''), 'hex'));
}

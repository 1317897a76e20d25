/**
 * Name-based UUIDs (RFC 9562 §5.5, version 5: SHA-1) for SUIT vendor and class identifiers
 * (draft-ietf-suit-manifest-34 §8.4.8.2 vendor-id = UUIDv5(DNS namespace, vendor domain),
 * §8.4.8.3 class-id = UUIDv5(vendor-id, class-specific information)).
 */
import { createHash } from 'node:crypto';
import { SuitError } from './errors.ts';

/** The DNS namespace UUID (RFC 9562 §6.6). */
export const UUID_NAMESPACE_DNS = '6ba7b810-9dad-11d1-80b4-00c04fd430c8';
/** The "CBOR PEN" namespace for class ids under a PEN vendor id (draft-ietf-suit-manifest-34 §8.4.8.2). */
export const UUID_NAMESPACE_CBOR_PEN = '47fbdabb-f2e4-55f0-bb39-3620c2f6df4e';

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** Parses the textual form (RFC 9562 §4) into its 16 bytes. */
export function uuidToBytes(uuid: string): Uint8Array {
  if (!UUID_RE.test(uuid)) throw new SuitError('SUIT_BUILD_INVALID', `not a UUID: ${JSON.stringify(uuid)}`);
  return Uint8Array.from(Buffer.from(uuid.replaceAll('-', ''), 'hex'));
}

/** The textual form of a 16-byte UUID (RFC 9562 §4), lower case. */
export function uuidToString(bytes: Uint8Array): string {
  if (bytes.length !== 16)
    throw new SuitError('SUIT_BUILD_INVALID', `a UUID has 16 bytes, not ${bytes.length}`);
  const h = Buffer.from(bytes).toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/**
 * UUIDv5 (RFC 9562 §5.5): SHA-1 over namespace bytes ‖ name (UTF-8 for strings), first 16 bytes,
 * version nibble 5, variant bits 10.
 */
export function uuidV5(namespace: string | Uint8Array, name: string | Uint8Array): Uint8Array {
  const ns = typeof namespace === 'string' ? uuidToBytes(namespace) : namespace;
  if (ns.length !== 16)
    throw new SuitError('SUIT_BUILD_INVALID', `a namespace UUID has 16 bytes, not ${ns.length}`);
  const h = createHash('sha1')
    .update(ns)
    .update(typeof name === 'string' ? Buffer.from(name, 'utf8') : name)
    .digest();
  const out = Uint8Array.from(h.subarray(0, 16));
  out[6] = (out[6]! & 0x0f) | 0x50;
  out[8] = (out[8]! & 0x3f) | 0x80;
  return out;
}

/** vendor-id = UUIDv5(DNS namespace, vendor domain) (draft-ietf-suit-manifest-34 §8.4.8.2). */
export function vendorIdFromDomain(domain: string): Uint8Array {
  return uuidV5(UUID_NAMESPACE_DNS, domain);
}

/** class-id = UUIDv5(vendor-id, class name) (draft-ietf-suit-manifest-34 §8.4.8.3). */
export function classIdFromName(vendorId: Uint8Array, className: string): Uint8Array {
  return uuidV5(vendorId, className);
}

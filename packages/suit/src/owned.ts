/**
 * Buffers private to the envelope decoder: `parseEnvelopeOuter` decodes a copy of its input that no caller can
 * reach or change, so the structures inside it (manifest, command sequences, parameters) may be decoded as views
 * into that copy instead of being copied again, level after level. Internal to @rotor/suit (not exported).
 */
const owned = new WeakSet<ArrayBufferLike>();

/** A private copy of `bytes`, registered as owned. */
export function ownedCopy(bytes: Uint8Array): Uint8Array {
  const copy = bytes.slice();
  owned.add(copy.buffer);
  return copy;
}

/** Whether `bytes` lies in a buffer copied by `ownedCopy` (so views into it cannot change under us). */
export function isOwned(bytes: Uint8Array): boolean {
  return owned.has(bytes.buffer);
}

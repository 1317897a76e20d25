/**
 * A minimal DER encoder (X.690 §10) for fixed-shape X.509 structures built without a generic ASN.1 library: the
 * server's device certificates and CSRs (server factory/der.ts) and the device's RFC 3820 proxy certificate (device
 * tracker/credential.ts). Encoding only — untrusted DER is parsed by the callers' own bounded readers.
 */

function lenBytes(n: number): number[] {
  if (n < 0x80) return [n];
  if (n < 0x100) return [0x81, n];
  if (n < 0x10000) return [0x82, n >> 8, n & 0xff];
  return [0x83, n >> 16, (n >> 8) & 0xff, n & 0xff];
}

/** One DER TLV (X.690 §8.1: definite length, the shortest form §10.1). */
export function derTlv(tag: number, ...parts: Uint8Array[]): Uint8Array {
  const n = parts.reduce((a, p) => a + p.length, 0);
  const head = [tag, ...lenBytes(n)];
  const out = new Uint8Array(head.length + n);
  out.set(head, 0);
  let o = head.length;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** A positive INTEGER from big-endian bytes: minimal, with a 0x00 pad when the top bit is set (X.690 §8.3). */
export function derUint(b: Uint8Array): Uint8Array {
  let i = 0;
  while (i < b.length - 1 && b[i] === 0 && (b[i + 1]! & 0x80) === 0) i++;
  const v = b.subarray(i);
  return (v[0]! & 0x80) !== 0 ? derTlv(0x02, new Uint8Array([0]), v) : derTlv(0x02, v);
}

/** Time per RFC 5280 §4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050; always Zulu, seconds, no fraction. */
export function derTime(d: Date): Uint8Array {
  const digits = d.toISOString().slice(0, 19).replace(/[-T:]/g, ''); // YYYYMMDDHHMMSS
  const ascii = (s: string): Uint8Array => new TextEncoder().encode(s);
  return d.getUTCFullYear() < 2050
    ? derTlv(0x17, ascii(`${digits.slice(2)}Z`))
    : derTlv(0x18, ascii(`${digits}Z`));
}

/**
 * The signatureValue BIT STRING (RFC 5280 §4.1.1.3): Ecdsa-Sig-Value from a COSE P-256 r‖s (RFC 5480 §2.2 / RFC 3279
 * §2.2.3) or a raw EdDSA signature (RFC 8410 §6).
 */
export function derSignatureBits(sig: Uint8Array, ecdsa: boolean): Uint8Array {
  const value = ecdsa ? derTlv(0x30, derUint(sig.subarray(0, 32)), derUint(sig.subarray(32, 64))) : sig;
  return derTlv(0x03, new Uint8Array([0]), value);
}

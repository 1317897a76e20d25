/**
 * The hot path of provisioning without the generic ASN.1 machinery: device certificates and device CSRs have one
 * fixed shape, so they are encoded here directly in DER (X.690 §10) — the TBSCertificate of RFC 5280 §4.1 and the
 * CertificationRequestInfo of RFC 2986 §4.1 — and signed with the COSE Signer (a token key or the device enclave).
 * The CA certificates and every parse of untrusted input still go through @peculiar/x509; the tests check the
 * output with `openssl verify` and re-parse it with @peculiar/x509.
 */
import type { Signer } from '@rotor/cose';
import type { SignerKeyType } from './x509-signer.ts';

function lenBytes(n: number): number[] {
  if (n < 0x80) return [n];
  if (n < 0x100) return [0x81, n];
  if (n < 0x10000) return [0x82, n >> 8, n & 0xff];
  return [0x83, n >> 16, (n >> 8) & 0xff, n & 0xff];
}

/** One DER TLV (X.690 §8.1: definite length, the shortest form §10.1). */
export function tlv(tag: number, ...parts: Uint8Array[]): Uint8Array {
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

const hex = (h: string): Uint8Array => new Uint8Array(Buffer.from(h, 'hex'));
const ascii = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, 'latin1'));
const utf8 = (s: string): Uint8Array => new TextEncoder().encode(s);
const SEQ = 0x30;

/** AlgorithmIdentifier: ecdsa-with-SHA256 (RFC 5758 §3.2, no parameters) or id-Ed25519 (RFC 8410 §3). */
export function sigAlgId(type: SignerKeyType): Uint8Array {
  return type === 'P-256' ? hex('300a06082a8648ce3d040302') : hex('300506032b6570');
}

/** A positive INTEGER from big-endian bytes: minimal, with a 0x00 pad when the top bit is set (X.690 §8.3). */
function uint(b: Uint8Array): Uint8Array {
  let i = 0;
  while (i < b.length - 1 && b[i] === 0 && (b[i + 1]! & 0x80) === 0) i++;
  const v = b.subarray(i);
  return (v[0]! & 0x80) !== 0 ? tlv(0x02, new Uint8Array([0]), v) : tlv(0x02, v);
}

/** The signatureValue BIT STRING: Ecdsa-Sig-Value from COSE r‖s (RFC 5480 §2.2 / RFC 3279 §2.2.3) or raw EdDSA. */
async function signatureBits(signer: Signer, type: SignerKeyType, tbs: Uint8Array): Promise<Uint8Array> {
  const sig = await signer.sign(tbs);
  const value = type === 'P-256' ? tlv(SEQ, uint(sig.subarray(0, 32)), uint(sig.subarray(32, 64))) : sig;
  return tlv(0x03, new Uint8Array([0]), value);
}

/** Name with one CN (RFC 5280 §4.1.2.6; UTF8String as §4.1.2.4 recommends). */
export function cnName(cn: string): Uint8Array {
  return tlv(SEQ, tlv(0x31, tlv(SEQ, hex('0603550403'), tlv(0x0c, utf8(cn)))));
}

/** subjectAltName with one uniformResourceIdentifier (RFC 5280 §4.2.1.6: IA5String, context tag [6]). */
function sanExtension(uri: string): Uint8Array {
  return tlv(SEQ, hex('0603551d11'), tlv(0x04, tlv(SEQ, tlv(0x86, ascii(uri)))));
}

/** Time per RFC 5280 §4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050; always Zulu, seconds, no fraction. */
function time(d: Date): Uint8Array {
  const iso = d.toISOString(); // YYYY-MM-DDTHH:MM:SS.sssZ
  const digits = iso.slice(0, 19).replace(/[-T:]/g, '');
  const y = d.getUTCFullYear();
  return y < 2050 ? tlv(0x17, ascii(`${digits.slice(2)}Z`)) : tlv(0x18, ascii(`${digits}Z`));
}

export interface DeviceCertFields {
  readonly serialHex: string;
  /** DER of the issuer Name (the issuing CA's subject, byte for byte: RFC 5280 §4.1.2.4). */
  readonly issuer: Uint8Array;
  readonly notBefore: Date;
  readonly notAfter: Date;
  readonly deviceId: string;
  readonly spki: Uint8Array;
  readonly subjectKeyId: Uint8Array;
  readonly authorityKeyId: Uint8Array;
}

/**
 * A device certificate (RFC 5280): v3, serial, validity, subject CN and SAN URI = the device id, cA FALSE
 * (§4.2.1.9), keyUsage digitalSignature (§4.2.1.3), extKeyUsage id-kp-clientAuth (§4.2.1.12), key identifiers
 * (§4.2.1.1/2); signed by the issuer's Signer.
 */
export async function encodeDeviceCertificate(
  f: DeviceCertFields,
  issuer: { readonly signer: Signer; readonly type: SignerKeyType },
): Promise<Uint8Array> {
  const alg = sigAlgId(issuer.type);
  const extensions = tlv(
    0xa3,
    tlv(
      SEQ,
      hex('300c0603551d130101ff04023000'), // basicConstraints: critical, cA FALSE
      hex('300e0603551d0f0101ff040403020780'), // keyUsage: critical, digitalSignature
      hex('30130603551d25040c300a06082b06010505070302'), // extKeyUsage: clientAuth
      sanExtension(f.deviceId),
      tlv(SEQ, hex('0603551d0e'), tlv(0x04, tlv(0x04, f.subjectKeyId))),
      tlv(SEQ, hex('0603551d23'), tlv(0x04, tlv(SEQ, tlv(0x80, f.authorityKeyId)))),
    ),
  );
  const tbs = tlv(
    SEQ,
    hex('a003020102'), // version v3
    uint(hex(f.serialHex)),
    alg,
    f.issuer,
    tlv(SEQ, time(f.notBefore), time(f.notAfter)),
    cnName(f.deviceId),
    f.spki,
    extensions,
  );
  return tlv(SEQ, tbs, alg, await signatureBits(issuer.signer, issuer.type, tbs));
}

/** A device CSR (RFC 2986 §4): subject CN and an extensionRequest (RFC 2985 §5.4.2) for the SAN URI. */
export async function encodeDeviceCsr(
  signer: Signer,
  spki: Uint8Array,
  type: SignerKeyType,
  deviceId: string,
): Promise<Uint8Array> {
  const attrs = tlv(
    0xa0,
    tlv(SEQ, hex('06092a864886f70d01090e'), tlv(0x31, tlv(SEQ, sanExtension(deviceId)))),
  );
  const info = tlv(SEQ, hex('020100'), cnName(deviceId), spki, attrs);
  return tlv(SEQ, info, sigAlgId(type), await signatureBits(signer, type, info));
}

/**
 * The hot path of provisioning without the generic ASN.1 machinery: device certificates and device CSRs have one
 * fixed shape, so they are encoded here directly in DER (X.690 §10, with the encoder of @rotor/trust der.ts, shared
 * with the device's proxy certificate) — the TBSCertificate of RFC 5280 §4.1 and the CertificationRequestInfo of
 * RFC 2986 §4.1 — and signed with the COSE Signer (a token key or the device enclave).
 * The CA certificates and every parse of untrusted input still go through @peculiar/x509; the tests check the
 * output with `openssl verify` and re-parse it with @peculiar/x509.
 */
import type { Signer } from '@rotor/cose';
import { derSignatureBits, derTime, derTlv, derUint } from '@rotor/trust';
import type { SignerKeyType } from './x509-signer.ts';

/** One DER TLV (X.690 §8.1, shortest-form definite length §10.1); the encoder is shared with the device. */
export const tlv = derTlv;

const hex = (h: string): Uint8Array => new Uint8Array(Buffer.from(h, 'hex'));
const ascii = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, 'latin1'));
const utf8 = (s: string): Uint8Array => new TextEncoder().encode(s);
const SEQ = 0x30;

/** AlgorithmIdentifier: ecdsa-with-SHA256 (RFC 5758 §3.2, no parameters) or id-Ed25519 (RFC 8410 §3). */
export function sigAlgId(type: SignerKeyType): Uint8Array {
  return type === 'P-256' ? hex('300a06082a8648ce3d040302') : hex('300506032b6570');
}

/** The signatureValue BIT STRING: Ecdsa-Sig-Value from COSE r‖s (RFC 5480 §2.2 / RFC 3279 §2.2.3) or raw EdDSA. */
async function signatureBits(signer: Signer, type: SignerKeyType, tbs: Uint8Array): Promise<Uint8Array> {
  return derSignatureBits(await signer.sign(tbs), type === 'P-256');
}

/** Name with one CN (RFC 5280 §4.1.2.6; UTF8String as §4.1.2.4 recommends). */
export function cnName(cn: string): Uint8Array {
  return tlv(SEQ, tlv(0x31, tlv(SEQ, hex('0603550403'), tlv(0x0c, utf8(cn)))));
}

/** subjectAltName with one uniformResourceIdentifier (RFC 5280 §4.2.1.6: IA5String, context tag [6]). */
function sanExtension(uri: string): Uint8Array {
  return tlv(SEQ, hex('0603551d11'), tlv(0x04, tlv(SEQ, tlv(0x86, ascii(uri)))));
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
    derUint(hex(f.serialHex)),
    alg,
    f.issuer,
    tlv(SEQ, derTime(f.notBefore), derTime(f.notAfter)),
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

/**
 * The factory PKI: a root CA, an issuing CA and device certificates, all signed through COSE Signers (keys in a
 * PKCS#11 token; see x509-signer.ts). CSRs (PKCS#10, RFC 2986) are untrusted input: bounded, parsed, their
 * self-signature verified, their key type and device id checked before anything is signed. The CA never copies
 * requested extensions: it sets its own (RFC 5280 §4.2).
 */
import 'reflect-metadata';
import { createHash, createPublicKey, randomBytes, verify as cryptoVerify } from 'node:crypto';
import * as x509 from '@peculiar/x509';
import type { Signer } from '@rotor/cose';
import { ServerError } from '../errors.ts';
import { encodeDeviceCertificate, encodeDeviceCsr, sigAlgId } from './der.ts';
import { signerCrypto, signerKeys, type SignerKeyType } from './x509-signer.ts';

/** Bound on a CSR (DER). A P-256 or Ed25519 request with one SAN is ~300-400 bytes. */
export const MAX_CSR_BYTES = 2048;
/** RFC 5280 Appendix A.1 ub-common-name. */
const UB_COMMON_NAME = 64;
/** Our bound on the subject DN and on one SAN value. */
const MAX_NAME_BYTES = 256;

export interface CaKey {
  readonly signer: Signer;
  /** SubjectPublicKeyInfo DER. */
  readonly spki: Uint8Array;
  readonly type: SignerKeyType;
}

export interface CaCert {
  readonly key: CaKey;
  readonly cert: x509.X509Certificate;
}

/** RFC 9711 UEID as a URN (the `ueid` DEV URN subtype, RFC 9039): urn:dev:ueid:<base64url without padding>. */
export function ueidUrn(ueid: Uint8Array): string {
  // RFC 9711 §4.2.1: a UEID is 7 to 33 bytes.
  if (ueid.length < 7 || ueid.length > 33)
    throw new ServerError('REQUEST_INVALID', 'a UEID is 7 to 33 bytes');
  return `urn:dev:ueid:${Buffer.from(ueid).toString('base64url')}`;
}

/** Validates a device id URN (RFC 9711 UEID, 7-33 bytes) and returns the UEID bytes. */
export function parseUeidUrn(urn: string): Uint8Array {
  const m = /^urn:dev:ueid:([A-Za-z0-9_-]{10,44})$/.exec(urn);
  const raw = m === null ? undefined : Buffer.from(m[1]!, 'base64url');
  if (raw === undefined || raw.length < 7 || raw.length > 33 || raw.toString('base64url') !== m?.[1])
    throw new ServerError('CSR_DEVICE_ID_MISMATCH', 'device id is not a UEID URN (RFC 9711)');
  return new Uint8Array(raw);
}

/** RFC 5280 §4.1.2.2: a positive serial of at most 20 octets; 16 random bytes (CA/B BR-style unpredictability). */
export function randomSerial(): string {
  const b = randomBytes(16);
  b[0] = (b[0]! & 0x7f) | 0x01;
  return b.toString('hex');
}

function keyIdentifier(spki: Uint8Array): string {
  // RFC 5280 §4.2.1.2 method (1) style: SHA-1 over the key; we use the SPKI's SHA-256 truncated to 160 bits.
  return createHash('sha256').update(spki).digest().subarray(0, 20).toString('hex');
}

function caExtensions(key: CaKey, pathLength: number, issuerSpki: Uint8Array): x509.Extension[] {
  return [
    // RFC 5280 §4.2.1.9: cA TRUE, critical, with a path length; §4.2.1.3: keyCertSign (and cRLSign), critical.
    new x509.BasicConstraintsExtension(true, pathLength, true),
    new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
    // RFC 5280 §4.2.1.2 / §4.2.1.1: subject and authority key identifiers.
    new x509.SubjectKeyIdentifierExtension(keyIdentifier(key.spki)),
    new x509.AuthorityKeyIdentifierExtension(keyIdentifier(issuerSpki)),
  ];
}

export interface CaOptions {
  /** Distinguished name, e.g. 'CN=Rotor Factory Root CA, O=Rotor'. */
  readonly name: string;
  readonly validityDays: number;
  readonly now?: Date;
}

export async function createRootCa(key: CaKey, opts: CaOptions): Promise<x509.X509Certificate> {
  const notBefore = opts.now ?? new Date();
  return x509.X509CertificateGenerator.create(
    {
      serialNumber: randomSerial(),
      subject: opts.name,
      issuer: opts.name,
      notBefore,
      notAfter: new Date(notBefore.getTime() + opts.validityDays * 86_400_000),
      publicKey: key.spki,
      signingKey: signerKeys(key.signer, key.spki, key.type).privateKey,
      extensions: caExtensions(key, 1, key.spki),
    },
    signerCrypto,
  );
}

export async function createIssuingCa(
  root: CaCert,
  key: CaKey,
  opts: CaOptions,
): Promise<x509.X509Certificate> {
  const notBefore = opts.now ?? new Date();
  return x509.X509CertificateGenerator.create(
    {
      serialNumber: randomSerial(),
      subject: opts.name,
      issuer: root.cert.subjectName,
      notBefore,
      notAfter: new Date(notBefore.getTime() + opts.validityDays * 86_400_000),
      publicKey: key.spki,
      signingKey: signerKeys(root.key.signer, root.key.spki, root.key.type).privateKey,
      extensions: caExtensions(key, 0, root.key.spki),
    },
    signerCrypto,
  );
}

/** The device's side: a PKCS#10 request signed by the identity key (which stays in the device's enclave). */
export function createDeviceCsr(
  signer: Signer,
  spki: Uint8Array,
  type: SignerKeyType,
  deviceId: string,
): Promise<Uint8Array> {
  return encodeDeviceCsr(signer, spki, type, deviceId);
}

/** One TLV at `o`: [start of content, end]. */
function readTlv(der: Uint8Array, o: number, tag: number): [number, number] {
  if (der[o] !== tag) throw new Error('unexpected tag');
  const l0 = der[o + 1]!;
  let len = l0;
  let h = 2;
  if (l0 >= 0x80) {
    const n = l0 & 0x7f;
    if (n === 0 || n > 2) throw new Error('bad length');
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + der[o + 2 + i]!;
    h = 2 + n;
  }
  if (o + h + len > der.length) throw new Error('truncated');
  return [o + h, o + h + len];
}

/**
 * RFC 2986 §4.2: the signature over the DER CertificationRequestInfo, with the algorithm the key type requires
 * (RFC 5758 §3.2 ecdsa-with-SHA256 without parameters; RFC 8410 §3 id-Ed25519). Synchronous node:crypto.
 */
function verifyCsrSignature(der: Uint8Array, spki: Uint8Array, type: SignerKeyType): boolean {
  const [body, end] = readTlv(der, 0, 0x30);
  const [, infoEnd] = readTlv(der, body, 0x30);
  const [, algEnd] = readTlv(der, infoEnd, 0x30);
  const [bits, bitsEnd] = readTlv(der, algEnd, 0x03);
  if (bitsEnd !== end || der[bits] !== 0) return false;
  if (!Buffer.from(der.subarray(infoEnd, algEnd)).equals(sigAlgId(type))) return false;
  const key = createPublicKey({ key: Buffer.from(spki), format: 'der', type: 'spki' });
  const tbs = der.subarray(body, infoEnd);
  const sig = der.subarray(bits + 1, bitsEnd);
  return type === 'P-256'
    ? cryptoVerify('sha256', tbs, { key, dsaEncoding: 'der' }, sig)
    : cryptoVerify(null, tbs, key, sig);
}

export interface CheckedCsr {
  readonly spki: Uint8Array;
  readonly type: SignerKeyType;
  readonly deviceId: string;
}

/**
 * Validates an untrusted CSR for one device: size bound, DER structure, version 0 (RFC 2986 §4.1), the self-signature
 * (RFC 2986 §3: proof of possession of the private key), the key type the profile requires, and the device id
 * (subject CN and the one SAN URI must both be the expected UEID URN).
 */
interface ParsedCsr {
  readonly cns: string[];
  readonly otherRdns: number;
  readonly spki: Uint8Array;
  readonly attributeOids: string[];
  readonly extensionOids: string[];
  readonly uris: string[];
  readonly otherNames: number;
}

const hexOf = (b: Uint8Array): string => Buffer.from(b).toString('hex');
const OID_CN = '550403';
const OID_EXT_REQ = '2a864886f70d01090e'; // RFC 2985 §5.4.2 extensionRequest
const OID_SAN_DER = '551d11';
const SPKI_P256 = '3059301306072a8648ce3d020106082a8648ce3d030107034200'; // RFC 5480 §2.1.1, secp256r1
const SPKI_ED25519 = '302a300506032b6570032100'; // RFC 8410 §4

/** Children of a constructed TLV's content [b, e): each must be whole, and together they fill it exactly. */
function children(der: Uint8Array, b: number, e: number): { tag: number; b: number; e: number; s: number }[] {
  const out: { tag: number; b: number; e: number; s: number }[] = [];
  let o = b;
  while (o < e) {
    const tag = der[o]!;
    const [cb, ce] = readTlv(der, o, tag);
    if (ce > e) throw new Error('child overruns its parent');
    out.push({ tag, b: cb, e: ce, s: o });
    o = ce;
  }
  if (out.length > 32) throw new Error('too many elements');
  return out;
}

/**
 * A strict DER parse of the one CSR shape devices send (RFC 2986 §4.1): version 0, a Name, a SubjectPublicKeyInfo,
 * and attributes; every length checked against its parent (X.690 §10.1), nothing skipped.
 */
function parseCsr(der: Uint8Array): ParsedCsr {
  const [body, end] = readTlv(der, 0, 0x30);
  if (end !== der.length) throw new Error('trailing bytes');
  const top = children(der, body, end);
  const info = top[0];
  if (top.length !== 3 || info?.tag !== 0x30) throw new Error('CertificationRequest has three elements');
  const parts = children(der, info.b, info.e);
  const [version, name, spki, attrs] = parts;
  if (version?.tag !== 0x02 || version.e - version.b !== 1 || der[version.b] !== 0)
    throw new Error('version 0');
  if (name?.tag !== 0x30 || spki?.tag !== 0x30) throw new Error('subject and subjectPKInfo');
  if (parts.length > 4 || (attrs !== undefined && attrs.tag !== 0xa0)) throw new Error('attributes [0]');
  const text = new TextDecoder('utf-8', { fatal: true });
  const cns: string[] = [];
  let otherRdns = 0;
  for (const rdn of children(der, name.b, name.e)) {
    if (rdn.tag !== 0x31) throw new Error('RDN is a SET');
    for (const atv of children(der, rdn.b, rdn.e)) {
      const [oid, value] = children(der, atv.b, atv.e);
      if (oid?.tag !== 0x06 || value === undefined) throw new Error('AttributeTypeAndValue');
      // RFC 5280 §4.1.2.4 DirectoryString: UTF8String, PrintableString (or the legacy types, refused here).
      if (hexOf(der.subarray(oid.b, oid.e)) === OID_CN && (value.tag === 0x0c || value.tag === 0x13))
        cns.push(text.decode(der.subarray(value.b, value.e)));
      else otherRdns++;
    }
  }
  const attributeOids: string[] = [];
  const extensionOids: string[] = [];
  const uris: string[] = [];
  let otherNames = 0;
  for (const attr of attrs === undefined ? [] : children(der, attrs.b, attrs.e)) {
    const [oid, values] = children(der, attr.b, attr.e);
    if (oid?.tag !== 0x06 || values?.tag !== 0x31) throw new Error('Attribute');
    const aoid = hexOf(der.subarray(oid.b, oid.e));
    attributeOids.push(aoid);
    if (aoid !== OID_EXT_REQ) continue;
    for (const exts of children(der, values.b, values.e)) {
      if (exts.tag !== 0x30) throw new Error('Extensions');
      for (const ext of children(der, exts.b, exts.e)) {
        const ec = children(der, ext.b, ext.e);
        const eoid = ec[0];
        const octets = ec.at(-1);
        if (eoid?.tag !== 0x06 || octets?.tag !== 0x04 || ec.length > 3) throw new Error('Extension');
        const xoid = hexOf(der.subarray(eoid.b, eoid.e));
        extensionOids.push(xoid);
        if (xoid !== OID_SAN_DER) continue;
        const [names] = children(der, octets.b, octets.e);
        if (names?.tag !== 0x30) throw new Error('GeneralNames');
        for (const gn of children(der, names.b, names.e)) {
          // RFC 5280 §4.2.1.6: uniformResourceIdentifier [6] IA5String.
          if (gn.tag === 0x86) uris.push(Buffer.from(der.subarray(gn.b, gn.e)).toString('latin1'));
          else otherNames++;
        }
      }
    }
  }
  return {
    cns,
    otherRdns,
    spki: der.subarray(spki.s, spki.e),
    attributeOids,
    extensionOids,
    uris,
    otherNames,
  };
}

/**
 * Validates an untrusted CSR for one device: size bound, strict DER structure, version 0 (RFC 2986 §4.1), the key
 * type the profile requires (RFC 5480 / RFC 8410), the self-signature (RFC 2986 §3: proof of possession of the
 * private key), and the device id (subject CN and the one SAN URI must both be the expected UEID URN). Only the
 * extensionRequest attribute with only subjectAltName is accepted; the CA never copies requested extensions.
 */
export function checkDeviceCsrSync(
  der: Uint8Array,
  expected: { deviceId: string; keyType: SignerKeyType },
): CheckedCsr {
  if (der.length > MAX_CSR_BYTES)
    throw new ServerError('CSR_INVALID', `CSR longer than ${MAX_CSR_BYTES} bytes`);
  let csr: ParsedCsr;
  try {
    csr = parseCsr(der);
  } catch (e) {
    throw new ServerError('CSR_INVALID', 'CSR is not a DER PKCS#10 CertificationRequest (RFC 2986 §4)', {
      cause: e,
    });
  }
  const spkiHex = hexOf(csr.spki);
  const type: SignerKeyType | undefined =
    spkiHex.startsWith(SPKI_P256) && csr.spki.length === 91 && csr.spki[26] === 0x04
      ? 'P-256'
      : spkiHex.startsWith(SPKI_ED25519) && csr.spki.length === 44
        ? 'Ed25519'
        : undefined;
  if (type !== expected.keyType)
    throw new ServerError('CSR_KEY_TYPE', `CSR key is not ${expected.keyType} (RFC 5480 / RFC 8410)`);
  let ok = false;
  try {
    ok = verifyCsrSignature(der, csr.spki, type);
  } catch {
    ok = false; // e.g. a point not on the curve
  }
  if (!ok)
    throw new ServerError('CSR_INVALID', 'CSR signature does not verify (RFC 2986 §3 proof of possession)');
  const cn = csr.cns[0];
  if (csr.cns.length !== 1 || csr.otherRdns !== 0 || cn === undefined || cn.length > UB_COMMON_NAME)
    throw new ServerError(
      'CSR_INVALID',
      `CSR subject must be one CN of at most ${UB_COMMON_NAME} characters`,
    );
  if (cn !== expected.deviceId)
    throw new ServerError('CSR_DEVICE_ID_MISMATCH', 'CSR subject CN is not the device being provisioned');
  if (csr.attributeOids.some((o) => o !== OID_EXT_REQ) || csr.extensionOids.some((o) => o !== OID_SAN_DER))
    throw new ServerError('CSR_INVALID', 'CSR may only request subjectAltName (RFC 2985 §5.4.2)');
  if (csr.otherNames !== 0 || csr.uris.some((u) => u.length > MAX_NAME_BYTES))
    throw new ServerError('CSR_INVALID', 'CSR subjectAltName holds only the device id URI');
  if (csr.uris.length !== 1 || csr.uris[0] !== expected.deviceId)
    throw new ServerError('CSR_DEVICE_ID_MISMATCH', 'CSR subjectAltName is not exactly the device id URN');
  return { spki: new Uint8Array(csr.spki), type, deviceId: expected.deviceId };
}

const issuerNames = new WeakMap<x509.X509Certificate, Uint8Array>();
/** The issuing CA's subject Name, byte for byte (RFC 5280 §4.1.2.4: issuer = the issuer's subject). */
function issuerNameDer(cert: x509.X509Certificate): Uint8Array {
  let n = issuerNames.get(cert);
  if (n === undefined) {
    n = new Uint8Array(cert.subjectName.toArrayBuffer());
    issuerNames.set(cert, n);
  }
  return n;
}

/** checkDeviceCsrSync as a promise (a rejected one for a refused CSR). */
export function checkDeviceCsr(
  der: Uint8Array,
  expected: { deviceId: string; keyType: SignerKeyType },
): Promise<CheckedCsr> {
  try {
    return Promise.resolve(checkDeviceCsrSync(der, expected));
  } catch (e) {
    return Promise.reject(e instanceof Error ? e : new Error(String(e)));
  }
}

export interface IssuedCertificate {
  readonly der: Uint8Array;
  readonly serial: string;
  /** SHA-256 of the DER: the device's identity on the mTLS listener. */
  readonly sha256: string;
  readonly notAfter: Date;
}

/**
 * Issues a device certificate (RFC 5280): a random serial (§4.1.2.2), subject CN and subjectAltName URI = the UEID
 * URN (§4.2.1.6), keyUsage digitalSignature (§4.2.1.3), extKeyUsage clientAuth (§4.2.1.12), cA FALSE (§4.2.1.9),
 * key identifiers (§4.2.1.1/2), validity from `now` (§4.1.2.5).
 */
export async function issueDeviceCertificate(
  issuer: CaCert,
  csr: CheckedCsr,
  opts: { validityDays: number; now?: Date },
): Promise<IssuedCertificate> {
  const notBefore = opts.now ?? new Date();
  const notAfter = new Date(notBefore.getTime() + opts.validityDays * 86_400_000);
  const serial = randomSerial();
  const der = await encodeDeviceCertificate(
    {
      serialHex: serial,
      issuer: issuerNameDer(issuer.cert),
      notBefore,
      notAfter,
      deviceId: csr.deviceId,
      spki: csr.spki,
      subjectKeyId: Buffer.from(keyIdentifier(csr.spki), 'hex'),
      authorityKeyId: Buffer.from(keyIdentifier(issuer.key.spki), 'hex'),
    },
    issuer.key,
  );
  return { der, serial, sha256: createHash('sha256').update(der).digest('hex'), notAfter };
}

export function toPem(der: Uint8Array): string {
  // Newline-terminated, so PEM blocks concatenate into bundles (RFC 7468 §2).
  return `${x509.PemConverter.encode(der.slice().buffer, 'CERTIFICATE').trimEnd()}\n`;
}

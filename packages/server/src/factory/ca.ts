/**
 * The factory PKI: a root CA, an issuing CA and device certificates, all signed through COSE Signers (keys in a
 * PKCS#11 token; see x509-signer.ts). CSRs (PKCS#10, RFC 2986) are untrusted input: bounded, parsed, their
 * self-signature verified, their key type and device id checked before anything is signed. The CA never copies
 * requested extensions: it sets its own (RFC 5280 §4.2).
 */
import 'reflect-metadata';
import { createHash, randomBytes } from 'node:crypto';
import * as x509 from '@peculiar/x509';
import type { Signer } from '@rotor/cose';
import { ServerError } from '../errors.ts';
import { signerCrypto, signerKeys, type SignerKeyType } from './x509-signer.ts';

/** Bound on a CSR (DER). A P-256 or Ed25519 request with one SAN is ~300-400 bytes. */
export const MAX_CSR_BYTES = 2048;
/** RFC 5280 Appendix A.1 ub-common-name. */
const UB_COMMON_NAME = 64;
/** Our bound on the subject DN and on one SAN value. */
const MAX_NAME_BYTES = 256;

const OID_EXTENSION_REQUEST = '1.2.840.113549.1.9.14'; // RFC 2985 §5.4.2
const OID_SAN = '2.5.29.17';
const OID_CLIENT_AUTH = '1.3.6.1.5.5.7.3.2'; // RFC 5280 §4.2.1.12 id-kp-clientAuth

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
export async function createDeviceCsr(
  signer: Signer,
  spki: Uint8Array,
  type: SignerKeyType,
  deviceId: string,
): Promise<Uint8Array> {
  const keys = signerKeys(signer, spki, type);
  const csr = await x509.Pkcs10CertificateRequestGenerator.create(
    {
      name: [{ CN: [deviceId] }],
      keys,
      signingAlgorithm: keys.privateKey.algorithm,
      extensions: [new x509.SubjectAlternativeNameExtension([{ type: 'url', value: deviceId }])],
    },
    signerCrypto,
  );
  return new Uint8Array(csr.rawData);
}

/** Total length (header + content) of the outer DER SEQUENCE, or -1. */
function derLength(der: Uint8Array): number {
  if (der.length < 2 || der[0] !== 0x30) return -1;
  const l0 = der[1]!;
  if (l0 < 0x80) return 2 + l0;
  const n = l0 & 0x7f;
  if (n === 0 || n > 2 || der.length < 2 + n) return -1;
  let len = 0;
  for (let i = 0; i < n; i++) len = len * 256 + der[2 + i]!;
  return 2 + n + len;
}

export interface CheckedCsr {
  readonly spki: Uint8Array;
  readonly type: SignerKeyType;
  readonly deviceId: string;
}

function keyTypeOf(pk: x509.PublicKey): SignerKeyType | undefined {
  const a = pk.algorithm as { name?: string; namedCurve?: string };
  if (a.name === 'ECDSA' && a.namedCurve === 'P-256') return 'P-256';
  if (a.name === 'Ed25519') return 'Ed25519';
  return undefined;
}

/**
 * Validates an untrusted CSR for one device: size bound, DER structure, version 0 (RFC 2986 §4.1), the self-signature
 * (RFC 2986 §3: proof of possession of the private key), the key type the profile requires, and the device id
 * (subject CN and the one SAN URI must both be the expected UEID URN).
 */
export async function checkDeviceCsr(
  der: Uint8Array,
  expected: { deviceId: string; keyType: SignerKeyType },
): Promise<CheckedCsr> {
  if (der.length > MAX_CSR_BYTES)
    throw new ServerError('CSR_INVALID', `CSR longer than ${MAX_CSR_BYTES} bytes`);
  let csr: x509.Pkcs10CertificateRequest;
  try {
    // The parse must be exact: one DER SEQUENCE and no trailing bytes (X.690 §10.1 definite lengths).
    if (derLength(der) !== der.length) throw new Error('trailing bytes or indefinite length');
    csr = new x509.Pkcs10CertificateRequest(der);
  } catch (e) {
    throw new ServerError('CSR_INVALID', 'CSR is not a DER PKCS#10 CertificationRequest (RFC 2986 §4)', {
      cause: e,
    });
  }
  const type = keyTypeOf(csr.publicKey);
  // RFC 5480 §2.1.1 (id-ecPublicKey, namedCurve secp256r1) or RFC 8410 §3 (id-Ed25519) only.
  if (type !== expected.keyType)
    throw new ServerError('CSR_KEY_TYPE', `CSR key is not ${expected.keyType} (RFC 5480 / RFC 8410)`);
  let ok = false;
  try {
    ok = await csr.verify(signerCrypto);
  } catch {
    ok = false;
  }
  if (!ok)
    throw new ServerError('CSR_INVALID', 'CSR signature does not verify (RFC 2986 §3 proof of possession)');
  const subject = csr.subjectName;
  if (Buffer.byteLength(subject.toString()) > MAX_NAME_BYTES)
    throw new ServerError('CSR_INVALID', `CSR subject longer than ${MAX_NAME_BYTES} bytes`);
  const cns = subject.getField('CN');
  if (cns.length !== 1 || cns[0]!.length > UB_COMMON_NAME)
    throw new ServerError('CSR_INVALID', `CSR subject needs one CN of at most ${UB_COMMON_NAME} characters`);
  if (cns[0] !== expected.deviceId)
    throw new ServerError('CSR_DEVICE_ID_MISMATCH', 'CSR subject CN is not the device being provisioned');
  // RFC 2986 §4.1 attributes: only extensionRequest (RFC 2985 §5.4.2), carrying only subjectAltName.
  let uris: string[] = [];
  for (const attr of csr.attributes) {
    if (attr.type !== OID_EXTENSION_REQUEST)
      throw new ServerError('CSR_INVALID', `CSR attribute ${attr.type} not accepted`);
  }
  for (const ext of csr.extensions) {
    if (ext.type !== OID_SAN || !(ext instanceof x509.SubjectAlternativeNameExtension))
      throw new ServerError('CSR_INVALID', `CSR requests extension ${ext.type}`);
    const san = ext;
    for (const n of san.names.items) {
      if (n.type !== 'url' || Buffer.byteLength(n.value) > MAX_NAME_BYTES)
        throw new ServerError('CSR_INVALID', 'CSR subjectAltName holds only the device id URI');
    }
    uris = uris.concat(san.names.items.map((n) => n.value));
  }
  if (uris.length !== 1 || uris[0] !== expected.deviceId)
    throw new ServerError('CSR_DEVICE_ID_MISMATCH', 'CSR subjectAltName is not exactly the device id URN');
  return { spki: new Uint8Array(csr.publicKey.rawData), type, deviceId: expected.deviceId };
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
  const cert = await x509.X509CertificateGenerator.create(
    {
      serialNumber: serial,
      subject: [{ CN: [csr.deviceId] }],
      issuer: issuer.cert.subjectName,
      notBefore,
      notAfter,
      publicKey: csr.spki,
      signingKey: signerKeys(issuer.key.signer, issuer.key.spki, issuer.key.type).privateKey,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        new x509.ExtendedKeyUsageExtension([OID_CLIENT_AUTH]),
        new x509.SubjectAlternativeNameExtension([{ type: 'url', value: csr.deviceId }]),
        new x509.SubjectKeyIdentifierExtension(keyIdentifier(csr.spki)),
        new x509.AuthorityKeyIdentifierExtension(keyIdentifier(issuer.key.spki)),
      ],
    },
    signerCrypto,
  );
  const der = new Uint8Array(cert.rawData);
  return { der, serial, sha256: createHash('sha256').update(der).digest('hex'), notAfter };
}

export function toPem(der: Uint8Array): string {
  // Newline-terminated, so PEM blocks concatenate into bundles (RFC 7468 §2).
  return `${x509.PemConverter.encode(der.slice().buffer, 'CERTIFICATE').trimEnd()}\n`;
}

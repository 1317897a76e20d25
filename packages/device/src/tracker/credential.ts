/**
 * Delegated TLS client credential: an RFC 3820 proxy certificate.
 *
 * The device's identity key never leaves its enclave (DESIGN.md "keys never leave their store"), but Node's TLS
 * stack signs the handshake with a private key it holds itself. So the device generates a fresh ephemeral P-256 key
 * in its normal world (in memory only, never stored) and has the enclave-held identity key sign a short-lived X.509
 * proxy certificate for it (RFC 3820 §2.1: the identity key delegates to the proxy key; §3: the profile):
 *
 *   issuer      = the device certificate's subject, byte for byte (RFC 3820 §3.1)
 *   subject     = issuer + one CN RDN (RFC 3820 §3.4), the CN being the proxy's serial number in hex
 *   serial      = 16 random bytes, positive (RFC 3820 §3.2: unique among the issuer's proxies)
 *   validity    = notBefore 5 min back (clock skew) … now + lifetime (default 24 h), never past the device
 *                 certificate's notAfter (RFC 3820 §4.1.3: a path is only valid while every certificate is)
 *   extensions  = proxyCertInfo (critical, RFC 3820 §3.8: pCPathLenConstraint 0, id-ppl-inheritAll §3.8.2),
 *                 keyUsage (critical) digitalSignature only (RFC 3820 §3.7: no keyCertSign),
 *                 authorityKeyIdentifier = the device certificate's subjectKeyIdentifier (RFC 5280 §4.2.1.1);
 *                 no subjectAltName / issuerAltName (RFC 3820 §3.5, §3.6), no basicConstraints cA
 *   signature   = by the identity key through the COSE `Signer` interface (the enclave in process, or over the IPQ)
 *
 * The TLS chain sent is [proxy certificate, device certificate] (RFC 8446 §4.4.2: sender's certificate first, each
 * following certificate certifying the one before). The credential renews itself when less than a third of its
 * lifetime is left (renewal happens on the next use; concurrent users share one renewal), and every renewal uses a
 * new ephemeral key.
 *
 * The proxy certificate is encoded here directly in DER (X.690 §10) with the fixed-shape encoder that the server's
 * factory/der.ts also uses (@rotor/trust der.ts; the device package does not depend on the server or on a generic
 * ASN.1 library).
 */
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import type { Signer } from '@rotor/cose';
import { derSignatureBits, derTime as time, derTlv as tlv, derUint as uint } from '@rotor/trust';
import { DeviceError } from '../errors.ts';
import type { TlsIdentity } from './http.ts';

/** Default lifetime of a proxy certificate (24 h). */
export const PROXY_LIFETIME_MS = 24 * 3600 * 1000;
/** Back-dating of notBefore against clock skew between device and server. */
export const PROXY_BACKDATE_MS = 5 * 60 * 1000;
/** Largest device certificate accepted (PEM or DER), bytes. */
export const MAX_DEVICE_CERT_BYTES = 16 * 1024;

/** id-pe-proxyCertInfo (RFC 3820 §3.8): 1.3.6.1.5.5.7.1.14 */
export const OID_PROXY_CERT_INFO = '2b0601050507010e';
/** id-ppl-inheritAll (RFC 3820 §3.8.2): 1.3.6.1.5.5.7.21.1 */
export const OID_PPL_INHERIT_ALL = '2b06010505071501';

// ---------------------------------------------------------------------------------------------------------------
// DER (X.690): the encoder is @rotor/trust's der.ts; here a strict, bounded reader of the few structures needed.

const SEQ = 0x30;

const hexBytes = (h: string): Uint8Array => new Uint8Array(Buffer.from(h, 'hex'));

export interface Der {
  readonly tag: number;
  /** The whole TLV. */
  readonly raw: Uint8Array;
  /** The contents octets. */
  readonly value: Uint8Array;
}

/** One DER TLV at `off` (definite length in its shortest form, X.690 §10.1; at most 3 length octets). */
export function readDer(buf: Uint8Array, off: number, what: string): Der {
  const bad = (): DeviceError => new DeviceError('REQUEST_INVALID', `${what}: malformed DER`);
  const tag = buf[off];
  const l0 = buf[off + 1];
  if (tag === undefined || l0 === undefined || (tag & 0x1f) === 0x1f) throw bad();
  let len: number;
  let head = 2;
  if (l0 < 0x80) len = l0;
  else {
    const n = l0 & 0x7f;
    if (n === 0 || n > 3) throw bad();
    len = 0;
    for (let k = 0; k < n; k++) {
      const b = buf[off + 2 + k];
      if (b === undefined || (k === 0 && b === 0)) throw bad();
      len = len * 256 + b;
    }
    if (len < 0x80 || (n === 2 && len < 0x100) || (n === 3 && len < 0x10000)) throw bad();
    head += n;
  }
  const end = off + head + len;
  if (end > buf.length) throw bad();
  return { tag, raw: buf.subarray(off, end), value: buf.subarray(off + head, end) };
}

/** The TLVs inside a constructed value, in order. */
export function readDerList(value: Uint8Array, what: string, max = 64): Der[] {
  const out: Der[] = [];
  let off = 0;
  while (off < value.length) {
    if (out.length >= max) throw new DeviceError('REQUEST_INVALID', `${what}: too many elements`);
    const d = readDer(value, off, what);
    out.push(d);
    off += d.raw.length;
  }
  return out;
}

/** Fields of a certificate that the credential needs. */
export interface CertFields {
  readonly der: Uint8Array;
  readonly subject: Uint8Array;
  readonly notAfter: Date;
  readonly subjectKeyId: Uint8Array | undefined;
}

function parseTime(d: Der, what: string): Date {
  const s = Buffer.from(d.value).toString('latin1');
  const m =
    d.tag === 0x17
      ? /^(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/.exec(s)
      : d.tag === 0x18
        ? /^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/.exec(s)
        : null;
  if (m === null) throw new DeviceError('REQUEST_INVALID', `${what}: bad time`);
  let y = Number(m[1]);
  if (d.tag === 0x17) y += y < 50 ? 2000 : 1900;
  return new Date(Date.UTC(y, Number(m[2]) - 1, Number(m[3]), Number(m[4]), Number(m[5]), Number(m[6])));
}

/** Parses the device certificate (RFC 5280 §4.1): subject (raw), notAfter, subjectKeyIdentifier. */
export function parseDeviceCertificate(der: Uint8Array): CertFields {
  const what = 'device certificate';
  if (der.length > MAX_DEVICE_CERT_BYTES) throw new DeviceError('REQUEST_INVALID', `${what}: too large`);
  const cert = readDer(der, 0, what);
  if (cert.tag !== SEQ || cert.raw.length !== der.length)
    throw new DeviceError('REQUEST_INVALID', `${what}: not one SEQUENCE`);
  const [tbs] = readDerList(cert.value, what, 3);
  if (tbs?.tag !== SEQ) throw new DeviceError('REQUEST_INVALID', `${what}: no TBSCertificate`);
  const f = readDerList(tbs.value, what, 10);
  const v3 = f[0]?.tag === 0xa0 ? 1 : 0;
  const validity = f[3 + v3];
  const subject = f[4 + v3];
  if (validity?.tag !== SEQ || subject?.tag !== SEQ)
    throw new DeviceError('REQUEST_INVALID', `${what}: bad TBSCertificate`);
  const [, notAfter] = readDerList(validity.value, what, 2);
  if (notAfter === undefined) throw new DeviceError('REQUEST_INVALID', `${what}: bad validity`);
  let subjectKeyId: Uint8Array | undefined;
  const ext = f.find((d) => d.tag === 0xa3);
  if (ext !== undefined) {
    const [list] = readDerList(ext.value, what, 1);
    for (const e of list === undefined ? [] : readDerList(list.value, what)) {
      const parts = readDerList(e.value, what, 3);
      if (parts[0]?.tag === 0x06 && Buffer.from(parts[0].value).toString('hex') === '551d0e') {
        const octets = parts[parts.length - 1];
        if (octets?.tag === 0x04) {
          const ski = readDer(octets.value, 0, what);
          if (ski.tag === 0x04) subjectKeyId = ski.value;
        }
      }
    }
  }
  return { der, subject: subject.raw, notAfter: parseTime(notAfter, what), subjectKeyId };
}

/** DER of one PEM certificate (the first one). */
export function pemToDer(pem: string): Uint8Array {
  if (pem.length > MAX_DEVICE_CERT_BYTES * 2)
    throw new DeviceError('REQUEST_INVALID', 'certificate PEM too large');
  const m = /-----BEGIN CERTIFICATE-----([A-Za-z0-9+/=\s]+)-----END CERTIFICATE-----/.exec(pem);
  if (m === null) throw new DeviceError('REQUEST_INVALID', 'no PEM certificate');
  return new Uint8Array(Buffer.from(m[1]!.replace(/\s+/g, ''), 'base64'));
}

export function derToPem(der: Uint8Array): string {
  const b64 = Buffer.from(der).toString('base64');
  return `-----BEGIN CERTIFICATE-----\n${b64.replace(/.{1,64}/g, '$&\n')}-----END CERTIFICATE-----\n`;
}

// ---------------------------------------------------------------------------------------------------------------
// The proxy certificate

/** X.509 AlgorithmIdentifier for the signer's COSE algorithm (RFC 5758 §3.2 ecdsa-with-SHA256; RFC 8410 §3). */
function sigAlgOf(signer: Signer): { id: Uint8Array; ecdsa: boolean } {
  if (signer.alg === -7 || signer.alg === -9)
    return { id: hexBytes('300a06082a8648ce3d040302'), ecdsa: true };
  if (signer.alg === -8 || signer.alg === -19) return { id: hexBytes('300506032b6570'), ecdsa: false };
  throw new DeviceError('KEY_USAGE', `signer algorithm ${signer.alg} cannot sign an X.509 certificate`);
}

export interface ProxyCertificateFields {
  readonly issuer: CertFields;
  /** SubjectPublicKeyInfo DER of the proxy (ephemeral) key. */
  readonly spki: Uint8Array;
  readonly serial: Uint8Array;
  readonly notBefore: Date;
  readonly notAfter: Date;
}

/** Subject of a proxy certificate: the issuer's RDNs plus one CN RDN (RFC 3820 §3.4). */
export function proxySubject(issuerName: Uint8Array, cn: string): Uint8Array {
  const name = readDer(issuerName, 0, 'issuer name');
  const rdn = tlv(0x31, tlv(SEQ, hexBytes('0603550403'), tlv(0x0c, new TextEncoder().encode(cn))));
  return tlv(SEQ, name.value, rdn);
}

/** Encodes and signs an RFC 3820 proxy certificate (see the module comment for the profile). */
export async function issueProxyCertificate(f: ProxyCertificateFields, signer: Signer): Promise<Uint8Array> {
  const alg = sigAlgOf(signer);
  const serialHex = Buffer.from(f.serial).toString('hex');
  const extensions = [
    // proxyCertInfo: critical; SEQUENCE { pCPathLenConstraint 0, ProxyPolicy { id-ppl-inheritAll } }
    tlv(
      SEQ,
      hexBytes(`0608${OID_PROXY_CERT_INFO}`),
      hexBytes('0101ff'),
      tlv(0x04, tlv(SEQ, hexBytes('020100'), tlv(SEQ, hexBytes(`0608${OID_PPL_INHERIT_ALL}`)))),
    ),
    hexBytes('300e0603551d0f0101ff040403020780'), // keyUsage: critical, digitalSignature
  ];
  if (f.issuer.subjectKeyId !== undefined)
    extensions.push(tlv(SEQ, hexBytes('0603551d23'), tlv(0x04, tlv(SEQ, tlv(0x80, f.issuer.subjectKeyId)))));
  const tbs = tlv(
    SEQ,
    hexBytes('a003020102'), // v3
    uint(f.serial),
    alg.id,
    f.issuer.subject,
    tlv(SEQ, time(f.notBefore), time(f.notAfter)),
    proxySubject(f.issuer.subject, serialHex),
    f.spki,
    tlv(0xa3, tlv(SEQ, ...extensions)),
  );
  const sig = await signer.sign(tbs);
  // COSE ECDSA r‖s → Ecdsa-Sig-Value (RFC 5480 §2.2 / RFC 3279 §2.2.3); EdDSA as is (RFC 8410 §6).
  if (alg.ecdsa && sig.length !== 64)
    throw new DeviceError('KEY_USAGE', 'the signer returned no P-256 r‖s signature');
  return tlv(SEQ, tbs, alg.id, derSignatureBits(sig, alg.ecdsa));
}

export interface ProxyCredentialOptions {
  /** The device certificate (PEM), issuer of the proxies. */
  readonly deviceCertPem: string;
  /** The device's identity key (in its enclave): signs each proxy certificate. */
  readonly signer: Signer;
  /** Lifetime of each proxy certificate from now (default 24 h; the server bounds it). */
  readonly lifetimeMs?: number;
  /** Renew when less than this is left (default a third of the lifetime). */
  readonly renewBeforeMs?: number;
  /** Clock, ms since the epoch (tests). */
  readonly now?: () => number;
}

interface Issued {
  readonly certPem: string;
  readonly keyPem: string;
  readonly der: Uint8Array;
  readonly notBefore: Date;
  readonly notAfter: Date;
}

/**
 * The device's TLS client identity for the tracker (a `TlsIdentity`): `cert` is the chain [proxy, device cert],
 * `key` the ephemeral key (PEM, in memory only); `current()` renews when due and returns the identity to use.
 */
export class ProxyCredential implements TlsIdentity {
  readonly device: CertFields;
  readonly #devicePem: string;
  readonly #signer: Signer;
  readonly #lifetimeMs: number;
  readonly #renewBeforeMs: number;
  readonly #now: () => number;
  #issued: Issued;
  #renewing: Promise<Issued> | undefined;
  /** Number of proxy certificates issued so far (tests, metrics). */
  renewals = 0;

  private constructor(o: ProxyCredentialOptions, device: CertFields, devicePem: string, first: Issued) {
    this.device = device;
    this.#devicePem = devicePem;
    this.#signer = o.signer;
    this.#lifetimeMs = o.lifetimeMs ?? PROXY_LIFETIME_MS;
    this.#renewBeforeMs = o.renewBeforeMs ?? Math.floor(this.#lifetimeMs / 3);
    this.#now = o.now ?? Date.now;
    this.#issued = first;
  }

  static async create(o: ProxyCredentialOptions): Promise<ProxyCredential> {
    const lifetime = o.lifetimeMs ?? PROXY_LIFETIME_MS;
    if (!Number.isSafeInteger(lifetime) || lifetime < 60_000)
      throw new DeviceError('REQUEST_INVALID', 'proxy lifetime must be at least one minute');
    const der = pemToDer(o.deviceCertPem);
    const device = parseDeviceCertificate(der);
    const devicePem = derToPem(der);
    const first = await ProxyCredential.#issue(o.signer, device, devicePem, lifetime, (o.now ?? Date.now)());
    return new ProxyCredential(o, device, devicePem, first);
  }

  static async #issue(
    signer: Signer,
    device: CertFields,
    devicePem: string,
    lifetimeMs: number,
    nowMs: number,
  ): Promise<Issued> {
    const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const spki = new Uint8Array(publicKey.export({ type: 'spki', format: 'der' }));
    const serial = new Uint8Array(randomBytes(16));
    serial[0] = (serial[0]! & 0x7f) | 0x01; // positive and 16 bytes long (RFC 5280 §4.1.2.2)
    const notBefore = new Date(Math.floor((nowMs - PROXY_BACKDATE_MS) / 1000) * 1000);
    const end = Math.min(nowMs + lifetimeMs, device.notAfter.getTime());
    if (end <= nowMs) throw new DeviceError('REQUEST_INVALID', 'the device certificate has expired');
    const notAfter = new Date(Math.floor(end / 1000) * 1000);
    const der = await issueProxyCertificate({ issuer: device, spki, serial, notBefore, notAfter }, signer);
    return {
      der,
      certPem: derToPem(der) + devicePem,
      keyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }) as string,
      notBefore,
      notAfter,
    };
  }

  /** The chain sent in TLS: proxy certificate then device certificate (PEM). */
  get cert(): string {
    return this.#issued.certPem;
  }

  /** The ephemeral private key of the current proxy (PKCS#8 PEM; held in memory only, never stored). */
  get key(): string {
    return this.#issued.keyPem;
  }

  /** DER of the current proxy certificate. */
  get proxyDer(): Uint8Array {
    return this.#issued.der;
  }

  get notBefore(): Date {
    return this.#issued.notBefore;
  }

  get notAfter(): Date {
    return this.#issued.notAfter;
  }

  /** Whether the current proxy is within `renewBeforeMs` of its end (or past it). */
  due(): boolean {
    return this.#now() >= this.#issued.notAfter.getTime() - this.#renewBeforeMs;
  }

  /** Issues a new proxy certificate for a new ephemeral key now. Concurrent calls share one issuance. */
  renew(): Promise<TlsIdentity> {
    this.#renewing ??= ProxyCredential.#issue(
      this.#signer,
      this.device,
      this.#devicePem,
      this.#lifetimeMs,
      this.#now(),
    )
      .then((i) => {
        this.#issued = i;
        this.renewals++;
        return i;
      })
      .finally(() => {
        this.#renewing = undefined;
      });
    return this.#renewing.then((i) => ({ cert: i.certPem, key: i.keyPem }));
  }

  /** The identity for the next connection: renewed first when due. */
  async current(): Promise<TlsIdentity> {
    if (this.due()) return this.renew();
    return { cert: this.#issued.certPem, key: this.#issued.keyPem };
  }
}

/**
 * Client authentication on the device listener: plain device certificates and RFC 3820 proxy certificates.
 *
 * A factory-provisioned device keeps its identity key in its enclave; Node's TLS stack needs a private key it can
 * use itself, so the device presents a short-lived proxy certificate for an ephemeral key, signed by its identity
 * key, followed by its device certificate (device/tracker/credential.ts). OpenSSL refuses proxy certificates unless
 * X509_V_FLAG_ALLOW_PROXY_CERTS is set, which Node does not expose; so the listener runs with
 * `rejectUnauthorized: false` and this module decides per connection (the result is cached per socket):
 *
 *  (a) a plain certificate (no proxyCertInfo) must have been verified by OpenSSL against the device CA
 *      (`socket.authorized`), exactly as with `rejectUnauthorized: true` before;
 *  (b) a proxy certificate is accepted only if the RFC 3820 §3/§4 path rules hold (checkProxy below): its issuer is
 *      the certificate that follows it in the chain the client presented; that certificate chains to the device CA
 *      (checked here, since OpenSSL's verdict covers the whole chain) and is not itself a proxy; the proxy's
 *      signature verifies with that certificate's public key; it is within its validity, its lifetime is at most
 *      `maxProxyLifetimeMs` (default 7 days), subject = issuer + one CN RDN, keyUsage without keyCertSign.
 *
 * The request then authenticates as the device whose *device certificate* it is (services.devices.authenticate by
 * the SHA-256 of its DER: the certificate must be byte-equal to a registered one, so a registered device certificate
 * the factory CA issued). Disabled devices are refused on their next request as before, and the proxy's validity
 * is re-checked on every request (a kept-alive connection does not outlive its proxy certificate).
 *
 * Where the presented chain comes from: `TLSSocket#getPeerCertificate(true)` — also after a failed OpenSSL verify —
 * returns the leaf with `issuerCertificate` links that Node builds from the certificates the client sent
 * (SSL_get_peer_cert_chain, linked by X509_check_issued: issuer name, authority key id, key usage), then from the
 * listener's CA store. A device certificate is never in the CA store, so a proxy's linked issuer that is a
 * registered device certificate was presented by the client; a proxy whose issuer the client did not present has
 * no link (or a link to a CA) and is refused. Verified experimentally on Node 24 / OpenSSL 3 (test device-tls).
 */
import { createHash, X509Certificate } from 'node:crypto';
import type { TLSSocket } from 'node:tls';
import { ServerError } from './errors.ts';

/** Longest proxy lifetime accepted (notAfter − notBefore). */
export const MAX_PROXY_LIFETIME_MS = 7 * 24 * 3600 * 1000;
/** Largest certificate accepted in a presented chain, bytes. */
export const MAX_CERT_BYTES = 16 * 1024;
/** Most certificates walked in a presented chain or a CA path. */
const MAX_DEPTH = 6;

const OID = {
  proxyCertInfo: '2b0601050507010e', // 1.3.6.1.5.5.7.1.14 (RFC 3820 §3.8)
  inheritAll: '2b06010505071501', // 1.3.6.1.5.5.7.21.1 (RFC 3820 §3.8.2)
  keyUsage: '551d0f', // 2.5.29.15
  basicConstraints: '551d13', // 2.5.29.19
  subjectAltName: '551d11', // 2.5.29.17
  issuerAltName: '551d12', // 2.5.29.18
  authorityKeyId: '551d23', // 2.5.29.35
  extKeyUsage: '551d25', // 2.5.29.37
  commonName: '550403', // 2.5.4.3
} as const;

/** Extensions a proxy certificate may carry (RFC 3820 §3; RFC 5280 §4.2: any other critical one is refused). */
const PROXY_EXTENSIONS = new Set<string>([
  OID.proxyCertInfo,
  OID.keyUsage,
  OID.authorityKeyId,
  OID.extKeyUsage,
]);

// ---------------------------------------------------------------------------------------------------------------
// A strict, bounded DER reader (X.690 §10) for the certificate fields the rules look at.

interface Der {
  readonly tag: number;
  readonly raw: Uint8Array;
  readonly value: Uint8Array;
}

const invalid = (why: string): ServerError =>
  new ServerError('DEVICE_PROXY_INVALID', `proxy certificate refused: ${why}`);

function readDer(buf: Uint8Array, off: number): Der {
  const tag = buf[off];
  const l0 = buf[off + 1];
  if (tag === undefined || l0 === undefined || (tag & 0x1f) === 0x1f) throw invalid('malformed DER');
  let len = l0;
  let head = 2;
  if (l0 >= 0x80) {
    const n = l0 & 0x7f;
    if (n === 0 || n > 3) throw invalid('malformed DER length');
    len = 0;
    for (let k = 0; k < n; k++) {
      const b = buf[off + 2 + k];
      if (b === undefined || (k === 0 && b === 0)) throw invalid('malformed DER length');
      len = len * 256 + b;
    }
    // X.690 §10.1: the shortest length form.
    if (len < 0x80 || (n === 2 && len < 0x100) || (n === 3 && len < 0x10000))
      throw invalid('non-minimal DER length');
    head += n;
  }
  const end = off + head + len;
  if (end > buf.length) throw invalid('truncated DER');
  return { tag, raw: buf.subarray(off, end), value: buf.subarray(off + head, end) };
}

function readList(value: Uint8Array, max: number): Der[] {
  const out: Der[] = [];
  for (let off = 0; off < value.length;) {
    if (out.length >= max) throw invalid('too many elements');
    const d = readDer(value, off);
    out.push(d);
    off += d.raw.length;
  }
  return out;
}

const hexOf = (b: Uint8Array): string => Buffer.from(b).toString('hex');

function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Buffer.compare(a, b) === 0;
}

interface Extension {
  readonly oid: string;
  readonly critical: boolean;
  readonly value: Uint8Array;
}

/** The parts of a certificate (RFC 5280 §4.1) the rules need, with the Names as raw DER. */
export interface ParsedCert {
  readonly der: Uint8Array;
  readonly tbsSigAlg: Uint8Array;
  readonly sigAlg: Uint8Array;
  readonly issuer: Uint8Array;
  readonly subject: Uint8Array;
  readonly extensions: readonly Extension[];
}

export function parseCertificate(der: Uint8Array): ParsedCert {
  if (der.length > MAX_CERT_BYTES) throw invalid('certificate too large');
  const cert = readDer(der, 0);
  if (cert.tag !== 0x30 || cert.raw.length !== der.length) throw invalid('not one certificate');
  const [tbs, sigAlg, sig] = readList(cert.value, 3);
  if (tbs?.tag !== 0x30 || sigAlg?.tag !== 0x30 || sig?.tag !== 0x03) throw invalid('bad Certificate');
  const f = readList(tbs.value, 10);
  if (f[0]?.tag !== 0xa0) throw invalid('not a v3 certificate');
  const [, serial, tbsSigAlg, issuer, validity, subject, spki] = f;
  if (
    serial?.tag !== 0x02 ||
    tbsSigAlg?.tag !== 0x30 ||
    issuer?.tag !== 0x30 ||
    validity?.tag !== 0x30 ||
    subject?.tag !== 0x30 ||
    spki?.tag !== 0x30
  )
    throw invalid('bad TBSCertificate');
  const extensions: Extension[] = [];
  const ext = f.slice(7).find((d) => d.tag === 0xa3);
  if (ext !== undefined) {
    const [list] = readList(ext.value, 1);
    if (list?.tag !== 0x30) throw invalid('bad extensions');
    const seen = new Set<string>();
    for (const e of readList(list.value, 32)) {
      const parts = readList(e.value, 3);
      const oid = parts[0];
      const last = parts[parts.length - 1];
      if (e.tag !== 0x30 || oid?.tag !== 0x06 || last?.tag !== 0x04 || parts.length < 2)
        throw invalid('bad extension');
      let critical = false;
      if (parts.length === 3) {
        const c = parts[1]!;
        // DER: BOOLEAN DEFAULT FALSE is encoded only when TRUE (X.690 §11.5), as 0xff (§11.1).
        if (c.tag !== 0x01 || c.value.length !== 1 || c.value[0] !== 0xff) throw invalid('bad critical flag');
        critical = true;
      }
      const id = hexOf(oid.value);
      // RFC 5280 §4.2: a certificate MUST NOT include more than one instance of a particular extension.
      if (seen.has(id)) throw invalid('duplicate extension');
      seen.add(id);
      extensions.push({ oid: id, critical, value: last.value });
    }
  }
  return {
    der,
    tbsSigAlg: tbsSigAlg.raw,
    sigAlg: sigAlg.raw,
    issuer: issuer.raw,
    subject: subject.raw,
    extensions,
  };
}

export function isProxyCertificate(c: ParsedCert): boolean {
  return c.extensions.some((e) => e.oid === OID.proxyCertInfo);
}

/** keyUsage bits (RFC 5280 §4.2.1.3): digitalSignature (0), keyCertSign (5); undefined without the extension. */
function keyUsage(c: ParsedCert): { digitalSignature: boolean; keyCertSign: boolean } | undefined {
  const e = c.extensions.find((x) => x.oid === OID.keyUsage);
  if (e === undefined) return undefined;
  const bits = readDer(e.value, 0);
  if (bits.tag !== 0x03 || bits.value.length < 2 || bits.raw.length !== e.value.length)
    throw invalid('bad keyUsage');
  const first = bits.value[1]!;
  return { digitalSignature: (first & 0x80) !== 0, keyCertSign: (first & 0x04) !== 0 };
}

function isCa(c: ParsedCert): boolean {
  const e = c.extensions.find((x) => x.oid === OID.basicConstraints);
  if (e === undefined) return false;
  const seq = readDer(e.value, 0);
  const first = readList(seq.value, 2)[0];
  return first?.tag === 0x01 && first.value[0] !== 0;
}

export interface ProxyVerdict {
  /** The device certificate the proxy speaks for (DER). */
  readonly deviceDer: Uint8Array;
  readonly notBeforeMs: number;
  readonly notAfterMs: number;
}

/**
 * RFC 3820 §3 (profile) and §4 (path validation, one proxy level) for a proxy certificate and the certificate that
 * follows it in the presented chain. Throws DEVICE_PROXY_INVALID / DEVICE_PROXY_EXPIRED.
 */
export function checkProxy(
  proxyDer: Uint8Array,
  issuerDer: Uint8Array,
  o: { readonly nowMs: number; readonly maxLifetimeMs?: number },
): ProxyVerdict {
  const proxy = parseCertificate(proxyDer);
  const issuer = parseCertificate(issuerDer);
  // RFC 3820 §3.1: the issuer field is the issuing certificate's subject; §4.1.3: the issuer is an end-entity
  // certificate here (one delegation level): not a CA, not itself a proxy.
  if (!bytesEqual(proxy.issuer, issuer.subject))
    throw invalid('its issuer is not the certificate that follows it');
  if (isProxyCertificate(issuer)) throw invalid('its issuer is itself a proxy certificate');
  if (isCa(issuer)) throw invalid('its issuer is a CA certificate');
  // RFC 3820 §3.1 / §4.1.3: an issuer with keyUsage must assert digitalSignature.
  const iku = keyUsage(issuer);
  if (iku !== undefined && !iku.digitalSignature) throw invalid('its issuer may not sign (keyUsage)');
  // RFC 3820 §3.4: subject = issuer's subject + exactly one RDN holding one commonName.
  const subj = readDer(proxy.subject, 0);
  const iss = readDer(issuer.subject, 0);
  if (
    subj.value.length <= iss.value.length ||
    !bytesEqual(subj.value.subarray(0, iss.value.length), iss.value)
  )
    throw invalid('its subject does not extend the issuer name');
  const extra = readList(subj.value.subarray(iss.value.length), 2);
  const rdn = extra.length === 1 ? extra[0] : undefined;
  const atv = rdn?.tag === 0x31 ? readList(rdn.value, 2) : [];
  const parts = atv.length === 1 && atv[0]!.tag === 0x30 ? readList(atv[0]!.value, 3) : [];
  if (parts.length !== 2 || parts[0]!.tag !== 0x06 || hexOf(parts[0]!.value) !== OID.commonName)
    throw invalid('its subject is not the issuer name plus one CN');
  // RFC 3820 §3.5 / §3.6: no issuerAltName, no subjectAltName; §3.7: no cA, no keyCertSign; RFC 5280 §4.2: no
  // critical extension we do not process.
  for (const e of proxy.extensions) {
    if (e.oid === OID.subjectAltName || e.oid === OID.issuerAltName)
      throw invalid('it carries an alternative name');
    if (e.oid === OID.basicConstraints && isCa(proxy)) throw invalid('it claims to be a CA');
    if (e.critical && !PROXY_EXTENSIONS.has(e.oid) && e.oid !== OID.basicConstraints)
      throw invalid(`unknown critical extension ${e.oid}`);
  }
  const ku = keyUsage(proxy);
  if (ku?.keyCertSign === true) throw invalid('its keyUsage asserts keyCertSign');
  if (ku !== undefined && !ku.digitalSignature) throw invalid('its keyUsage lacks digitalSignature');
  // RFC 3820 §3.8: proxyCertInfo, critical; the policy language must be one we enforce: id-ppl-inheritAll.
  const pci = proxy.extensions.find((e) => e.oid === OID.proxyCertInfo)!;
  if (!pci.critical) throw invalid('proxyCertInfo is not critical');
  const pciSeq = readDer(pci.value, 0);
  if (pciSeq.tag !== 0x30 || pciSeq.raw.length !== pci.value.length) throw invalid('bad proxyCertInfo');
  const pciParts = readList(pciSeq.value, 2);
  const policy = pciParts[pciParts.length - 1];
  if (pciParts.length === 2 && pciParts[0]!.tag !== 0x02) throw invalid('bad pCPathLenConstraint');
  const lang = policy?.tag === 0x30 ? readList(policy.value, 2)[0] : undefined;
  if (lang?.tag !== 0x06 || hexOf(lang.value) !== OID.inheritAll)
    throw invalid('its proxy policy is not id-ppl-inheritAll');
  // RFC 5280 §4.1.1.2: signatureAlgorithm equals the TBS signature field.
  if (!bytesEqual(proxy.sigAlg, proxy.tbsSigAlg)) throw invalid('signature algorithm fields differ');
  let px: X509Certificate;
  let ix: X509Certificate;
  try {
    px = new X509Certificate(proxyDer);
    ix = new X509Certificate(issuerDer);
  } catch (e) {
    throw new ServerError('DEVICE_PROXY_INVALID', 'proxy certificate refused: does not parse', { cause: e });
  }
  // RFC 3820 §4.1.3 (RFC 5280 §6.1.3 (a)(1)): the signature verifies with the issuer's public key.
  if (!px.verify(ix.publicKey))
    throw invalid('its signature does not verify with the device certificate key');
  const notBeforeMs = Date.parse(px.validFrom);
  const notAfterMs = Date.parse(px.validTo);
  const maxLifetime = o.maxLifetimeMs ?? MAX_PROXY_LIFETIME_MS;
  if (!(notAfterMs - notBeforeMs <= maxLifetime))
    throw new ServerError(
      'DEVICE_PROXY_EXPIRED',
      `proxy certificate refused: lifetime over ${Math.round(maxLifetime / 3600_000)} h`,
    );
  // RFC 5280 §6.1.3 (a)(2): within validity — the proxy and the certificate it speaks for.
  checkValidity(notBeforeMs, notAfterMs, o.nowMs);
  if (!(Date.parse(ix.validFrom) <= o.nowMs && o.nowMs <= Date.parse(ix.validTo)))
    throw new ServerError(
      'DEVICE_PROXY_EXPIRED',
      'proxy certificate refused: the device certificate is not valid now',
    );
  return { deviceDer: issuerDer, notBeforeMs, notAfterMs };
}

function checkValidity(notBeforeMs: number, notAfterMs: number, nowMs: number): void {
  if (!(notBeforeMs <= nowMs && nowMs <= notAfterMs))
    throw new ServerError('DEVICE_PROXY_EXPIRED', 'proxy certificate refused: not within its validity');
}

/** PEM bundle → certificates (the device CA option). */
function caCertificates(pem: string): X509Certificate[] {
  const blocks = pem.match(/-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g) ?? [];
  return blocks.slice(0, 64).map((b) => new X509Certificate(b));
}

/**
 * The device certificate under a proxy must chain to the device CA (RFC 5280 §6.1: signature, issuer, validity and
 * cA of each certificate up to a self-signed CA of the bundle) — OpenSSL's verdict covers the whole presented chain,
 * which it refuses because of the proxy, so this path is checked here.
 */
function chainsToCa(deviceDer: Uint8Array, cas: readonly X509Certificate[], nowMs: number): boolean {
  let cur = new X509Certificate(deviceDer);
  for (let depth = 0; depth < MAX_DEPTH; depth++) {
    const c = cur;
    const up = cas.find(
      (ca) =>
        ca.ca &&
        c.checkIssued(ca) &&
        c.verify(ca.publicKey) &&
        Date.parse(ca.validFrom) <= nowMs &&
        nowMs <= Date.parse(ca.validTo),
    );
    if (up === undefined) return false;
    if (up.checkIssued(up) && up.verify(up.publicKey)) return true;
    cur = up;
  }
  return false;
}

interface PeerCert {
  raw?: Buffer;
  issuerCertificate?: PeerCert;
}

type Decision =
  | { readonly kind: 'plain'; readonly der: Uint8Array }
  | { readonly kind: 'proxy'; readonly verdict: ProxyVerdict };

export interface DeviceTlsOptions {
  /** The device CA bundle (PEM); without it any certificate completes the handshake and the registry decides. */
  readonly deviceCa: string | undefined;
  readonly maxProxyLifetimeMs?: number;
  /** Clock, ms (tests). */
  readonly now?: () => number;
}

/** The device listener's client-certificate TLS options (see the module comment for rejectUnauthorized). */
export function deviceTlsServerOptions(deviceCa: string | undefined): {
  requestCert: true;
  rejectUnauthorized: false;
  ca?: string;
} {
  return {
    requestCert: true,
    rejectUnauthorized: false,
    ...(deviceCa === undefined ? {} : { ca: deviceCa }),
  };
}

/**
 * `certificate(socket)`: the DER of the device certificate this connection authenticates with (to be looked up in
 * the registry by fingerprint), or a typed error. Decided once per socket, validity re-checked per call.
 */
export function createDeviceTls(o: DeviceTlsOptions): {
  readonly certificate: (sock: Partial<TLSSocket>) => Uint8Array;
} {
  const now = o.now ?? Date.now;
  const cas = o.deviceCa === undefined ? undefined : caCertificates(o.deviceCa);
  const decided = new WeakMap<object, Decision>();

  function decide(sock: Partial<TLSSocket>): Decision {
    if (typeof sock.getPeerCertificate !== 'function')
      throw new ServerError('DEVICE_CERT_REQUIRED', 'device API requires TLS');
    const leaf = sock.getPeerCertificate(true) as PeerCert | null;
    if (leaf?.raw === undefined) throw new ServerError('DEVICE_CERT_REQUIRED', 'client certificate required');
    const der = new Uint8Array(leaf.raw);
    let proxy = false;
    try {
      proxy = isProxyCertificate(parseCertificate(der));
    } catch {
      proxy = false; // not a certificate we can read as a proxy: it goes the plain path (OpenSSL's verdict)
    }
    if (!proxy) {
      // (a) RFC 5280 §6 path validation by OpenSSL against the device CA, as with rejectUnauthorized: true.
      if (cas !== undefined && sock.authorized !== true)
        throw new ServerError('DEVICE_CERT_REQUIRED', 'client certificate not issued by the device CA');
      return { kind: 'plain', der };
    }
    // (b) RFC 3820: the certificate following the proxy in the presented chain is its issuer.
    const next = leaf.issuerCertificate;
    if (next?.raw === undefined || next === leaf || bytesEqual(next.raw, der))
      throw invalid('the client did not present the certificate that issued it');
    const issuerDer = new Uint8Array(next.raw);
    const verdict = checkProxy(der, issuerDer, {
      nowMs: now(),
      ...(o.maxProxyLifetimeMs === undefined ? {} : { maxLifetimeMs: o.maxProxyLifetimeMs }),
    });
    if (cas !== undefined && !chainsToCa(issuerDer, cas, now()))
      throw new ServerError('DEVICE_CERT_REQUIRED', 'the proxy issuer is not a certificate of the device CA');
    return { kind: 'proxy', verdict };
  }

  return {
    certificate: (sock) => {
      let d = decided.get(sock);
      if (d === undefined) {
        d = decide(sock);
        decided.set(sock, d);
      }
      if (d.kind === 'plain') return d.der;
      checkValidity(d.verdict.notBeforeMs, d.verdict.notAfterMs, now());
      return d.verdict.deviceDer;
    },
  };
}

/** SHA-256 fingerprint (hex) of a DER certificate (logs and tests). */
export function certSha256(der: Uint8Array): string {
  return createHash('sha256').update(der).digest('hex');
}

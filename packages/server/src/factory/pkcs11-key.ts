/**
 * A signing key named by an RFC 7512 PKCS#11 URI, e.g. `pkcs11:token=rotor;object=rotor-operator?pin-source=file:/run/pin`,
 * opened as the factory token's COSE `Signer` (the key never leaves the token: CKA_SENSITIVE, non-extractable).
 *
 * The PIN (RFC 7512 §2.3 query attributes): `pin-source` names where it is read from — a `file:` URI or a plain
 * path (the only source we accept; RFC 7512 lets applications choose which sources they support) — and `pin-value`
 * carries it inline (discouraged by RFC 7512 §2.3 and §6: URIs get logged; accepted for tests and development).
 * Giving both is refused (our strict choice: one PIN, never a guess). With neither, `pinFallback` is used (e.g. an
 * environment variable). The PIN is never put in an error message or a log line.
 *
 * The PKCS#11 module: the URI's `module-path`, else `module` (a --pkcs11-module flag / ROTOR_PKCS11_MODULE), else the
 * Debian SoftHSM2 module when it is installed; otherwise FACTORY_TOKEN_UNAVAILABLE.
 */
import { createPublicKey } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { Signer } from '@rotor/cose';
import { ServerError } from '../errors.ts';
import { parsePkcs11Uri } from './pkcs11-uri.ts';
import { FactoryToken, type FactoryKeyType } from './token.ts';

/** Debian/Ubuntu `softhsm2` package. */
export const DEBIAN_SOFTHSM2_MODULE = '/usr/lib/softhsm/libsofthsm2.so';

const MAX_PIN_FILE = 256;

export interface Pkcs11KeyOptions {
  /** PKCS#11 module path when the URI has no module-path. */
  readonly module?: string;
  /** PIN when the URI has neither pin-source nor pin-value. */
  readonly pinFallback?: string;
}

export interface Pkcs11SigningKey {
  readonly signer: Signer & { readonly type: FactoryKeyType };
  /** SubjectPublicKeyInfo DER of the key (read from the token's public key object). */
  readonly spki: Uint8Array;
  readonly type: FactoryKeyType;
  /** Ends the token session (the last session also logs out). */
  close(): Promise<void>;
}

export function isPkcs11Uri(ref: string): boolean {
  return /^pkcs11:/i.test(ref);
}

/** The module to load: explicit, else the Debian SoftHSM2 module if it is present. */
export function pkcs11ModulePath(explicit?: string): string {
  if (explicit !== undefined && explicit !== '') return explicit;
  if (existsSync(DEBIAN_SOFTHSM2_MODULE)) return DEBIAN_SOFTHSM2_MODULE;
  throw new ServerError(
    'FACTORY_TOKEN_UNAVAILABLE',
    'no PKCS#11 module: give --pkcs11-module / ROTOR_PKCS11_MODULE or module-path in the URI',
  );
}

/** Reads the PIN a URI names (RFC 7512 §2.3 pin-source / pin-value). The PIN never appears in an error. */
export function pinOf(uri: string, fallback?: string): string {
  const u = parsePkcs11Uri(uri);
  if (u.pinSource !== undefined && u.pinValue !== undefined)
    throw new ServerError('PKCS11_URI_INVALID', 'PKCS#11 URI: pin-source and pin-value together');
  if (u.pinValue !== undefined) return u.pinValue;
  if (u.pinSource !== undefined) {
    const src = u.pinSource;
    let path: string;
    try {
      path = src.startsWith('file:') ? fileURLToPath(src) : src;
    } catch (e) {
      throw new ServerError('PKCS11_URI_INVALID', 'PKCS#11 URI: pin-source is not a file: URI or a path', {
        cause: e,
      });
    }
    if (/^[A-Za-z][A-Za-z0-9+.-]*:/.test(path))
      throw new ServerError('PKCS11_URI_INVALID', 'PKCS#11 URI: only file: pin-source is supported');
    let b: Buffer;
    try {
      b = readFileSync(path);
    } catch (e) {
      throw new ServerError('PKCS11_PIN_UNAVAILABLE', `cannot read the pin-source file ${path}`, {
        cause: e,
      });
    }
    if (b.length > MAX_PIN_FILE)
      throw new ServerError('PKCS11_PIN_UNAVAILABLE', `the pin-source file ${path} is not a PIN (too large)`);
    const pin = b.toString('utf8').replace(/\r?\n$/, '');
    if (pin === '') throw new ServerError('PKCS11_PIN_UNAVAILABLE', `the pin-source file ${path} is empty`);
    return pin;
  }
  if (fallback !== undefined && fallback !== '') return fallback;
  throw new ServerError(
    'PKCS11_PIN_UNAVAILABLE',
    'PKCS#11 URI: no PIN (add ?pin-source=file:/path, RFC 7512 §2.3)',
  );
}

/**
 * Opens the token a key URI names, logs in and returns the key's Signer. Missing token or module:
 * FACTORY_TOKEN_UNAVAILABLE; wrong PIN: FACTORY_TOKEN_PIN_INCORRECT; locked: FACTORY_TOKEN_LOCKED; no such object:
 * FACTORY_KEY_NOT_FOUND (the session is closed again before the error propagates).
 */
export async function openPkcs11SigningKey(
  uri: string,
  opts: Pkcs11KeyOptions = {},
): Promise<Pkcs11SigningKey> {
  const u = parsePkcs11Uri(uri);
  if (u.object === undefined)
    throw new ServerError('PKCS11_URI_INVALID', 'PKCS#11 URI: a signing key needs an object attribute');
  if (u.token === undefined && u.serial === undefined)
    throw new ServerError('PKCS11_URI_INVALID', 'PKCS#11 URI: a signing key needs a token attribute');
  const pin = pinOf(uri, opts.pinFallback);
  const module = u.modulePath ?? pkcs11ModulePath(opts.module);
  // The token selector is the URI without its query (the PIN stays out of every later message).
  const q = uri.indexOf('?');
  const token = FactoryToken.open({ module, token: q < 0 ? uri : uri.slice(0, q), pin });
  try {
    const keyUri = q < 0 ? uri : uri.slice(0, q);
    const { spki, type } = await token.publicKey(keyUri);
    const signer = await token.signer(keyUri);
    return { signer, spki, type, close: () => token.close() };
  } catch (e) {
    await token.close().catch(() => undefined);
    throw e;
  }
}

/** The public key of a token key as a node KeyObject (verifiers). */
export function publicKeyObjectOf(spki: Uint8Array): ReturnType<typeof createPublicKey> {
  return createPublicKey({ key: Buffer.from(spki), format: 'der', type: 'spki' });
}

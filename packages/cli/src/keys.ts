/**
 * Key files for the CLI: PEM (SPKI public, PKCS#8 or SEC1 private) or COSE_Key (RFC 9052 §7) files, turned into
 * the key interfaces of @rotor/cose. Private material goes straight into node KeyObjects and never into output.
 */
import { createPrivateKey, createSecretKey, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import {
  Alg,
  agreementCurve,
  coseKeyToKeyObject,
  coseKeyToPublicKeyObject,
  curveOfKeyObject,
  Curve,
  decodeCoseKey,
  softwareKeyAgreement,
  softwareKeyUnwrapper,
  softwareMacKey,
  softwareSigner,
  softwareVerifier,
  verifierFromCoseKey,
  loadPublicKey,
  type CoseKey,
  type KeyAgreement,
  type KeyUnwrapper,
  type MacKey,
  type Signer,
  type Verifier,
} from '@rotor/cose';
import { isPkcs11Uri, openPkcs11SigningKey } from '@rotor/server';
import { CliError } from './errors.ts';

/** Key files are small; anything larger is not a key. */
const MAX_KEY_FILE = 64 * 1024;

export function readInput(path: string, max: number): Uint8Array {
  let bytes: Buffer;
  try {
    bytes = readFileSync(path);
  } catch (e) {
    throw new CliError('CLI_IO', `cannot read ${path}: ${e instanceof Error ? e.message : String(e)}`);
  }
  if (bytes.length > max) throw new CliError('CLI_INPUT', `${path} is larger than ${max} bytes`);
  return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.length);
}

function isPem(bytes: Uint8Array): boolean {
  return Buffer.from(bytes.subarray(0, 64)).toString('latin1').includes('-----BEGIN');
}

export type LoadedKey =
  | { kind: 'pem-public'; key: KeyObject }
  | { kind: 'pem-private'; key: KeyObject }
  | { kind: 'cose'; key: CoseKey };

export function loadKeyFile(path: string): LoadedKey {
  const bytes = readInput(path, MAX_KEY_FILE);
  if (isPem(bytes)) {
    const text = Buffer.from(bytes).toString('utf8');
    if (text.includes('PRIVATE KEY-----')) {
      try {
        return { kind: 'pem-private', key: createPrivateKey(text) };
      } catch {
        throw new CliError('CLI_INPUT', `${path}: not a private key node:crypto accepts`);
      }
    }
    return { kind: 'pem-public', key: loadPublicKey(text) };
  }
  return { kind: 'cose', key: decodeCoseKey(bytes) };
}

/** The default signature algorithm for a key: ESP256 for P-256 (RFC 9864 fully specified), Ed25519 for Ed25519. */
function defaultSigAlg(ko: KeyObject, path: string): number {
  const crv = curveOfKeyObject(ko);
  if (crv === Curve.P256) return Alg.ESP256;
  if (crv === Curve.Ed25519) return Alg.Ed25519;
  throw new CliError('CLI_INPUT', `${path}: not a P-256 or Ed25519 signing key`);
}

/** A trust anchor key for verification: a Verifier (public or private EC/OKP key) or a MacKey (symmetric). */
export function loadVerificationKey(path: string): { verifier?: Verifier; macKey?: MacKey } {
  const k = loadKeyFile(path);
  if (k.kind !== 'cose') return { verifier: softwareVerifier(k.key, defaultSigAlg(k.key, path)) };
  if (k.key.kty === 4) {
    const secret = k.key.k;
    if (secret === undefined) throw new CliError('CLI_INPUT', `${path}: symmetric COSE_Key without k`);
    return { macKey: softwareMacKey(secret, k.key.alg ?? Alg.HMAC256, k.key.kid) };
  }
  if (k.key.alg !== undefined) return { verifier: verifierFromCoseKey(k.key) };
  const pub = coseKeyToPublicKeyObject(k.key);
  return { verifier: softwareVerifier(pub, defaultSigAlg(pub, path), k.key.kid) };
}

/** A signing key (private PEM or private COSE_Key). */
export function loadSigner(path: string, alg?: number, kid?: Uint8Array): Signer {
  const k = loadKeyFile(path);
  let ko: KeyObject;
  if (k.kind === 'pem-private') ko = k.key;
  else if (k.kind === 'cose' && k.key.d !== undefined) ko = coseKeyToKeyObject(k.key);
  else throw new CliError('CLI_INPUT', `${path}: a signing key must be a private key`);
  const keyKid = kid ?? (k.kind === 'cose' ? k.key.kid : undefined);
  return softwareSigner(
    ko,
    alg ?? (k.kind === 'cose' ? k.key.alg : undefined) ?? defaultSigAlg(ko, path),
    keyKid,
  );
}

/** A signing key with the session it holds open (token keys); `close` is a no-op for files. */
export interface OpenSigner {
  readonly signer: Signer;
  close(): Promise<void>;
}

/** Signature algorithms a key type can sign with (same bytes: ECDSA r‖s over SHA-256, or PureEdDSA). */
const TOKEN_ALGS = {
  'P-256': [Alg.ESP256, Alg.ES256],
  Ed25519: [Alg.Ed25519, Alg.EdDSA],
} as const;

/**
 * A signing key from a file, or from a PKCS#11 token when `ref` is an RFC 7512 URI (`pkcs11:token=…;object=…`,
 * PIN from its pin-source / pin-value query attribute, RFC 7512 §2.3, else ROTOR_PKCS11_PIN; module from its
 * module-path, else ROTOR_PKCS11_MODULE, else the Debian SoftHSM2 module). Token keys sign inside the token; the
 * default algorithm matches file keys (ESP256 for P-256, Ed25519 for Ed25519). Token failures stay typed
 * ServerErrors (FACTORY_TOKEN_*, FACTORY_KEY_NOT_FOUND, PKCS11_*), exit code 6.
 */
export async function openSigner(ref: string, alg?: number): Promise<OpenSigner> {
  if (!isPkcs11Uri(ref)) return { signer: loadSigner(ref, alg), close: () => Promise.resolve() };
  const env = process.env;
  const k = await openPkcs11SigningKey(ref, {
    ...(env.ROTOR_PKCS11_MODULE ? { module: env.ROTOR_PKCS11_MODULE } : {}),
    ...(env.ROTOR_PKCS11_PIN ? { pinFallback: env.ROTOR_PKCS11_PIN } : {}),
  });
  const allowed: readonly number[] = TOKEN_ALGS[k.type];
  const a = alg ?? allowed[0]!;
  if (!allowed.includes(a)) {
    await k.close();
    throw new CliError('CLI_USAGE', `--alg ${a} does not fit the ${k.type} key in the token`);
  }
  return { signer: { alg: a, kid: undefined, sign: (tbs) => k.signer.sign(tbs) }, close: () => k.close() };
}

/** Runs `f` with the signers opened, closing every token session afterwards. */
export async function withSigners<T>(
  refs: readonly string[],
  alg: number | undefined,
  f: (signers: Signer[]) => Promise<T>,
): Promise<T> {
  const open: OpenSigner[] = [];
  try {
    for (const r of refs) open.push(await openSigner(r, alg));
    return await f(open.map((o) => o.signer));
  } finally {
    for (const o of open) await o.close().catch(() => undefined);
  }
}

/** A decryption key: a symmetric KEK (AES-KW) or a private EC/OKP key (ECDH-ES). */
export function loadDecryptionKey(path: string): { unwrapper?: KeyUnwrapper; agreement?: KeyAgreement } {
  const k = loadKeyFile(path);
  if (k.kind === 'pem-private') return { agreement: softwareKeyAgreement(k.key) };
  if (k.kind === 'pem-public') throw new CliError('CLI_INPUT', `${path}: a decryption key must be private`);
  if (k.key.kty === 4) {
    const secret = k.key.k;
    if (secret === undefined) throw new CliError('CLI_INPUT', `${path}: symmetric COSE_Key without k`);
    const alg = secret.length === 16 ? Alg.A128KW : secret.length === 24 ? Alg.A192KW : Alg.A256KW;
    return { unwrapper: softwareKeyUnwrapper(createSecretKey(Buffer.from(secret)), alg, k.key.kid) };
  }
  if (k.key.d === undefined) throw new CliError('CLI_INPUT', `${path}: a decryption key must be private`);
  const ko = coseKeyToKeyObject(k.key);
  agreementCurve(ko);
  return { agreement: softwareKeyAgreement(ko, k.key.kid) };
}

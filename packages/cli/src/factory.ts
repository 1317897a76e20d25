/**
 * `rotor factory init` (CAs and signing keys in a PKCS#11 token, provisioning profile) and `rotor factory provision`
 * (a crash-safe, resumable batch of devices: identity key born in each device, certificate from the issuing CA,
 * registration in the server database with the certificate in the audit log).
 *
 * The factory directory: factory.json (token, key URIs, key type), root-ca.pem, issuing-ca.pem, device-ca.pem (the
 * chain for the server's --device-ca), author.pub.pem, operator.pub.pem (and with --file-keys the private keys,
 * mode 0600), profile.json (and profile.<n>.json: profiles replaced by set-firmware), batches/<name>.journal, devices/<name>/<index>/ (the simulated devices).
 * The PIN comes from --pin-file or ROTOR_FACTORY_PIN, never from the command line, and is never printed.
 */
import 'reflect-metadata';
import {
  createHash,
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  randomBytes,
  type KeyObject,
} from 'node:crypto';
import {
  closeSync,
  existsSync,
  fsyncSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import * as x509 from '@peculiar/x509';
import { Alg, softwareSigner, type Signer } from '@rotor/cose';
import { nodeFs } from '@rotor/device';
import {
  createIssuingCa,
  createRootCa,
  dbRegistry,
  FactoryToken,
  migrate,
  openDatabase,
  pkcs11UriFor,
  provisionDevices,
  ServerError,
  toPem,
  ueidUrn,
  type CaCert,
  type FactoryKeyType,
  type ProfileTrust,
  type ProvisioningProfile,
} from '@rotor/server';
import { decodeEnvelope } from '@rotor/suit';
import { group, type Command, type Subcommand } from './command.ts';
import { CliError, ExitCode } from './errors.ts';
import { enclaveDevices, provisionAgent } from './factory-device.ts';
import { createFactoryTrust, pemSigner } from './factory-trust.ts';
import { json, out, readInput, writeAtomic } from './io.ts';
import { progressBar as liveProgressBar } from './progress.ts';

const DEFAULT_MODULE = '/usr/lib/softhsm/libsofthsm2.so';
const MAX_FILE = 1 << 20;

interface FactoryConfig {
  readonly version: 1;
  /** Where the CA keys are: 'pkcs11' (absent in older files) or 'files' (development only). */
  readonly backend?: 'pkcs11' | 'files';
  readonly developmentOnly?: boolean;
  readonly module: string;
  readonly token: string;
  readonly keyType: FactoryKeyType;
  readonly keys: {
    readonly root: string;
    readonly issuing: string;
    readonly author: string;
    readonly operator: string;
  };
}

function readText(path: string, max = MAX_FILE): string {
  let b: Buffer;
  try {
    b = readFileSync(path);
  } catch (e) {
    throw new CliError('CLI_IO', `cannot read ${path}: ${e instanceof Error ? e.message : String(e)}`);
  }
  if (b.length > max) throw new CliError('CLI_INPUT', `${path} is larger than ${max} bytes`);
  return b.toString('utf8');
}

function pinFrom(values: Record<string, unknown>): string {
  const file = values['pin-file'] as string | undefined;
  const pin = file !== undefined ? readText(file, 256).trim() : process.env.ROTOR_FACTORY_PIN;
  if (pin === undefined || pin === '')
    throw new CliError('CLI_USAGE', 'the token PIN: --pin-file FILE or ROTOR_FACTORY_PIN');
  return pin;
}

/** Token and CSR failures become CLI errors with their stable code in the message (exit 6: I/O). */
async function factoryErrors<T>(f: () => Promise<T>): Promise<T> {
  try {
    return await f();
  } catch (e) {
    if (e instanceof ServerError && (e.code.startsWith('FACTORY_') || e.code.startsWith('PKCS11_')))
      throw new CliError('CLI_IO', `${e.code}: ${e.message}`, { cause: e });
    throw e;
  }
}

const write = (path: string, text: string): void => {
  writeAtomic(path, new TextEncoder().encode(text));
};

/** A private key file (--file-keys, development only): created 0600, fsynced, renamed into place. */
const writePrivate = (path: string, pem: string): void => {
  writeAtomic(path, pem, 0o600);
};

/** How the factory holds its CA keys: a PKCS#11 token (production) or PEM files in the factory dir (development). */
export type FactoryBackend =
  | { readonly kind: 'pkcs11'; readonly module: string; readonly token: string; readonly pin: string }
  | { readonly kind: 'files' };

export interface InitFactoryOptions {
  readonly dir: string;
  readonly backend: FactoryBackend;
  /** PEM certificate of the server's TLS CA (a trust anchor of every device). */
  readonly serverCaPem: string;
  readonly keyType?: FactoryKeyType;
  /** Author and operator keys as PEM files in the factory dir (always so with the files backend). */
  readonly fileSigningKeys?: boolean;
  /** Initial firmware: a SUIT envelope with integrated image, signed by the author and the operator. */
  readonly firmware?: Uint8Array | null;
  readonly antiRollback?: Readonly<Record<string, number>>;
  readonly deviceClass?: string;
  readonly profile?: string;
  readonly validityDays?: number;
  /** Lifetime of the first revocation list, days (default 365; factory-trust.ts). */
  readonly revocationDays?: number;
}

export interface InitFactoryResult {
  readonly dir: string;
  readonly keyType: FactoryKeyType;
  readonly backend: 'pkcs11' | 'files';
  /** Paths of the author and operator private keys (files) or their PKCS#11 URIs. */
  readonly author: string;
  readonly operator: string;
  readonly deviceCa: string;
}

/** The notice written beside file keys: these keys are for development and tests only. */
const DEV_ONLY_NOTICE = `DEVELOPMENT ONLY
This factory keeps its root and issuing CA keys (and the author and operator keys) in PEM files in this
directory (mode 0600). Anyone who can read them can mint device identities and sign firmware. Production
factories keep the CA keys in an HSM: rotor factory init --token URI|LABEL (PKCS#11, non-extractable keys).
`;

function generatePem(keyType: FactoryKeyType): { privatePem: string; spki: Uint8Array; key: KeyObject } {
  const kp =
    keyType === 'P-256'
      ? generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
      : generateKeyPairSync('ed25519');
  return {
    privatePem: kp.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    spki: new Uint8Array(kp.publicKey.export({ type: 'spki', format: 'der' })),
    key: kp.privateKey,
  };
}

/** A CA key held in a PEM file (development factories): a software Signer (ES256 / EdDSA, as the x509 signer needs). */
function fileCaKey(pem: string, keyType: FactoryKeyType): CaCert['key'] {
  const key = createPrivateKey(pem);
  const spki = new Uint8Array(createPublicKey(key).export({ type: 'spki', format: 'der' }));
  // COSE alg -7 ES256 (RFC 9053 §2.1) for P-256, -8 EdDSA (§2.2) for Ed25519: what signerKeys accepts.
  return { signer: softwareSigner(key, keyType === 'P-256' ? Alg.ES256 : Alg.EdDSA), spki, type: keyType };
}

/**
 * Creates a factory in `dir`: root and issuing CA (in the token, or in files for development), author and operator
 * keys, device-ca.pem, the provisioning profile; factory.json last (its presence means complete).
 */
export async function initFactory(o: InitFactoryOptions): Promise<InitFactoryResult> {
  const dir = resolve(o.dir);
  const keyType = o.keyType ?? 'P-256';
  const validity = o.validityDays ?? 3650;
  if (existsSync(join(dir, 'factory.json')))
    throw new CliError('CLI_USAGE', `${dir} already holds a factory (factory.json): refusing to overwrite`);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const backend = o.backend;
  const token =
    backend.kind === 'pkcs11'
      ? FactoryToken.open({ module: backend.module, token: backend.token, pin: backend.pin })
      : undefined;
  try {
    let keys: FactoryConfig['keys'];
    let rootKey: CaCert['key'];
    let issKey: CaCert['key'];
    if (token !== undefined) {
      const uri = (obj: string): string => pkcs11UriFor(token.label, obj);
      keys = {
        root: uri('rotor-root-ca'),
        issuing: uri('rotor-issuing-ca'),
        author: uri('rotor-author'),
        operator: uri('rotor-operator'),
      };
      const caKey = async (u: string): Promise<CaCert['key']> => {
        const { spki } = await token.generate(u, keyType);
        return { signer: await token.signer(u), spki, type: keyType };
      };
      rootKey = await caKey(keys.root);
      issKey = await caKey(keys.issuing);
    } else {
      // Development only: the CA keys are files (PKCS#8, 0600). The notice is written before any key.
      write(join(dir, 'DEVELOPMENT-ONLY.txt'), DEV_ONLY_NOTICE);
      keys = {
        root: join(dir, 'root-ca.key.pem'),
        issuing: join(dir, 'issuing-ca.key.pem'),
        author: join(dir, 'author.key.pem'),
        operator: join(dir, 'operator.key.pem'),
      };
      const fileKey = (path: string): CaCert['key'] => {
        const g = generatePem(keyType);
        writePrivate(path, g.privatePem);
        return fileCaKey(g.privatePem, keyType);
      };
      rootKey = fileKey(keys.root);
      issKey = fileKey(keys.issuing);
    }
    const rootCert = await createRootCa(rootKey, {
      name: 'CN=Rotor Factory Root CA, O=Rotor',
      validityDays: 3 * validity,
    });
    const issCert = await createIssuingCa({ key: rootKey, cert: rootCert }, issKey, {
      name: 'CN=Rotor Factory Issuing CA, O=Rotor',
      validityDays: 2 * validity,
    });
    const pub = (spki: Uint8Array): string =>
      x509.PemConverter.encode(spki.slice().buffer, 'PUBLIC KEY').trimEnd() + '\n';
    let authorPem: string;
    let operatorPem: string;
    let signers: { author: Signer; operator: Signer };
    if (token === undefined || o.fileSigningKeys === true) {
      const gen = (name: string): { pub: string; signer: Signer } => {
        const g = generatePem(keyType);
        writePrivate(join(dir, `${name}.key.pem`), g.privatePem);
        return { pub: pub(g.spki), signer: pemSigner(g.privatePem) };
      };
      const a = gen('author');
      const op = gen('operator');
      authorPem = a.pub;
      operatorPem = op.pub;
      signers = { author: a.signer, operator: op.signer };
      keys = { ...keys, author: join(dir, 'author.key.pem'), operator: join(dir, 'operator.key.pem') };
    } else {
      authorPem = pub((await token.generate(keys.author, keyType)).spki);
      operatorPem = pub((await token.generate(keys.operator, keyType)).spki);
      signers = { author: await token.signer(keys.author), operator: await token.signer(keys.operator) };
    }
    // Issue 7: the version-1 anchor statement and the first revocation list every device starts from
    // (factory-trust.ts); also written as files for the operator (rotor revocation upload, PUT /v1/trust-anchors).
    const trust = await createFactoryTrust(
      {
        authorPublicPem: authorPem,
        operatorPublicPem: operatorPem,
        ...signers,
      },
      o.revocationDays === undefined ? {} : { revocationTtlDays: o.revocationDays },
    );
    const rootPem = toPem(new Uint8Array(rootCert.rawData));
    const issPem = toPem(new Uint8Array(issCert.rawData));
    const fw = o.firmware ?? null;
    const profile: ProvisioningProfile = {
      name: o.profile ?? 'default',
      deviceClass: o.deviceClass ?? 'generic',
      keyType: 'P-256',
      validityDays: validity,
      trustAnchors: {
        authorKeyPem: authorPem,
        operatorKeyPem: operatorPem,
        serverTlsCaPem: o.serverCaPem,
        factoryCaPem: rootPem,
      },
      firmware:
        fw === null
          ? null
          : {
              envelopeBase64: Buffer.from(fw).toString('base64'),
              sha256: createHash('sha256').update(fw).digest('hex'),
            },
      antiRollback: { ...(o.antiRollback ?? {}) },
      trust,
    };
    writeAtomic(
      join(dir, 'trust-anchors-v1.cbor'),
      new Uint8Array(Buffer.from(trust.anchorStatementBase64, 'base64')),
    );
    writeAtomic(
      join(dir, 'revocation-list-v1.cbor'),
      new Uint8Array(Buffer.from(trust.revocationListBase64, 'base64')),
    );
    write(join(dir, 'root-ca.pem'), rootPem);
    write(join(dir, 'issuing-ca.pem'), issPem);
    write(join(dir, 'device-ca.pem'), issPem + rootPem);
    write(join(dir, 'author.pub.pem'), authorPem);
    write(join(dir, 'operator.pub.pem'), operatorPem);
    write(join(dir, 'profile.json'), `${JSON.stringify(profile, null, 2)}\n`);
    const cfg: FactoryConfig =
      backend.kind === 'pkcs11'
        ? { version: 1, backend: 'pkcs11', module: backend.module, token: token?.label ?? '', keyType, keys }
        : { version: 1, backend: 'files', developmentOnly: true, module: '', token: '', keyType, keys };
    // Written last: its presence means the factory is complete.
    write(join(dir, 'factory.json'), `${JSON.stringify(cfg, null, 2)}\n`);
    return {
      dir,
      keyType,
      backend: backend.kind,
      author: keys.author,
      operator: keys.operator,
      deviceCa: join(dir, 'device-ca.pem'),
    };
  } finally {
    await token?.close();
  }
}

const init: Subcommand = {
  name: 'init',
  summary: 'create the factory CAs, signing keys and provisioning profile',
  usage: `init --dir DIR --server-ca FILE (--token URI|LABEL | --file-keys) [--module PATH] [--pin-file FILE]
            [--key-type p256|ed25519] [--firmware FILE] [--anti-rollback NAME=N,...]
            [--class NAME] [--profile NAME] [--validity-days N] [--revocation-days N]

With --token: generates in the PKCS#11 token (RFC 7512 URIs pkcs11:token=<label>;object=rotor-…) the root CA and
issuing CA keys and, unless --file-keys, the author and operator signing keys. Keys are non-extractable.
With --file-keys and no --token (DEVELOPMENT ONLY): every key — root CA, issuing CA, author, operator — is a PKCS#8
PEM file in DIR (mode 0600) and DIR/DEVELOPMENT-ONLY.txt says so; everything else works the same.
With --token and --file-keys: CA keys in the token, author and operator keys in files.
Writes root-ca.pem, issuing-ca.pem, device-ca.pem (for the server's --device-ca), the public keys
and profile.json (trust anchors, initial firmware, anti-rollback values), and the devices' starting trust
(issue 7): trust-anchors-v1.cbor (root = author + operator, threshold 2) and revocation-list-v1.cbor (empty,
signed by the operator key, valid --revocation-days, default 365), both also in the profile; publish them on the
server once (rotor start does). The PIN: --pin-file or ROTOR_FACTORY_PIN.
--firmware: a SUIT envelope with its image integrated, signed by the author and the operator; provisioning installs
it into each device's firmware bank (and recovery bank) through the device agent and sets the agent's anti-rollback
counters to --anti-rollback (firmware=N and recovery=N name the default keys; N must not exceed the envelope's
sequence number).`,
  options: {
    dir: { type: 'string' },
    token: { type: 'string' },
    module: { type: 'string' },
    'pin-file': { type: 'string' },
    'key-type': { type: 'string' },
    'file-keys': { type: 'boolean' },
    'server-ca': { type: 'string' },
    firmware: { type: 'string' },
    'anti-rollback': { type: 'string' },
    class: { type: 'string' },
    profile: { type: 'string' },
    'validity-days': { type: 'string' },
    'revocation-days': { type: 'string' },
  },
  async run({ values }) {
    const dir = resolve((values.dir as string | undefined) ?? 'rotor-factory');
    const tokenArg = values.token as string | undefined;
    const fileKeys = values['file-keys'] === true;
    if (tokenArg === undefined && !fileKeys)
      throw new CliError('CLI_USAGE', '--token URI|LABEL is required (or --file-keys, development only)');
    const serverCa = values['server-ca'] as string | undefined;
    if (serverCa === undefined)
      throw new CliError('CLI_USAGE', '--server-ca FILE (the server TLS CA) is required');
    const kt = (values['key-type'] as string | undefined) ?? 'p256';
    if (kt !== 'p256' && kt !== 'ed25519') throw new CliError('CLI_USAGE', '--key-type: p256 or ed25519');
    const keyType: FactoryKeyType = kt === 'p256' ? 'P-256' : 'Ed25519';
    const validity = Number((values['validity-days'] as string | undefined) ?? '3650');
    if (!Number.isSafeInteger(validity) || validity < 1 || validity > 36500)
      throw new CliError('CLI_USAGE', '--validity-days: 1 … 36500');
    const revocationDays = Number((values['revocation-days'] as string | undefined) ?? '365');
    if (!Number.isSafeInteger(revocationDays) || revocationDays < 1 || revocationDays > 3650)
      throw new CliError('CLI_USAGE', '--revocation-days: 1 … 3650');
    const antiRollback = parseAntiRollback(values['anti-rollback'] as string | undefined);
    const serverCaPem = readText(serverCa);
    if (!serverCaPem.includes('-----BEGIN CERTIFICATE-----'))
      throw new CliError('CLI_INPUT', `${serverCa} is not a PEM certificate`);
    const fwPath = values.firmware as string | undefined;
    const fw = fwPath === undefined ? null : readFileSync(fwPath);
    if (fw !== null && fw.length > MAX_FILE)
      throw new CliError('CLI_INPUT', 'firmware envelope larger than 1 MiB');
    if (existsSync(join(dir, 'factory.json')))
      throw new CliError('CLI_USAGE', `${dir} already holds a factory (factory.json): refusing to overwrite`);
    const backend: FactoryBackend =
      tokenArg === undefined
        ? { kind: 'files' }
        : {
            kind: 'pkcs11',
            module: (values.module as string | undefined) ?? DEFAULT_MODULE,
            token: tokenArg,
            pin: pinFrom(values),
          };
    const r = await factoryErrors(() =>
      initFactory({
        dir,
        backend,
        serverCaPem,
        keyType,
        fileSigningKeys: fileKeys,
        firmware: fw === null ? null : new Uint8Array(fw),
        antiRollback,
        ...(values.class === undefined ? {} : { deviceClass: values.class as string }),
        ...(values.profile === undefined ? {} : { profile: values.profile as string }),
        validityDays: validity,
        revocationDays,
      }),
    );
    if (r.backend === 'files') {
      process.stderr.write(
        `warning: DEVELOPMENT ONLY: the factory CA keys are files in ${dir} (see DEVELOPMENT-ONLY.txt); use --token for production\n`,
      );
      out(`factory initialized in ${dir}: root and issuing CA (${keyType}) in files (development only)`);
    } else out(`factory initialized in ${dir}: root and issuing CA (${keyType}) in token ${tokenArg ?? ''}`);
    out(`server: --device-ca ${r.deviceCa}`);
    return ExitCode.ok;
  },
};

/** --anti-rollback NAME=N,... (names as the profile keeps them: firmware, recovery or a component name). */
function parseAntiRollback(ar: string | undefined): Record<string, number> {
  const antiRollback: Record<string, number> = {};
  for (const kv of ar === undefined || ar === '' ? [] : ar.split(',')) {
    const m = /^([A-Za-z0-9_.-]{1,64})=([0-9]{1,15})$/.exec(kv);
    if (m === null) throw new CliError('CLI_USAGE', `--anti-rollback: NAME=N, not ${kv}`);
    antiRollback[m[1]!] = Number(m[2]);
  }
  return antiRollback;
}

const isObj = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);
const str = (o: Record<string, unknown>, k: string): string => {
  const v = o[k];
  if (typeof v !== 'string') throw new Error(`${k}: not a string`);
  return v;
};

function parseFactoryConfig(v: unknown): FactoryConfig {
  if (!isObj(v) || v.version !== 1 || !isObj(v.keys)) throw new Error('factory.json: unexpected content');
  const keyType = str(v, 'keyType');
  if (keyType !== 'P-256' && keyType !== 'Ed25519') throw new Error('factory.json: keyType');
  const k = v.keys;
  const backend = v.backend ?? 'pkcs11';
  if (backend !== 'pkcs11' && backend !== 'files') throw new Error('factory.json: backend');
  return {
    version: 1,
    backend,
    ...(backend === 'files' ? { developmentOnly: true } : {}),
    module: str(v, 'module'),
    token: str(v, 'token'),
    keyType,
    keys: {
      root: str(k, 'root'),
      issuing: str(k, 'issuing'),
      author: str(k, 'author'),
      operator: str(k, 'operator'),
    },
  };
}

function parseProfile(v: unknown): ProvisioningProfile {
  if (!isObj(v) || !isObj(v.trustAnchors) || !isObj(v.antiRollback))
    throw new Error('profile.json: unexpected content');
  const t = v.trustAnchors;
  const validityDays = v.validityDays;
  if (typeof validityDays !== 'number' || !Number.isSafeInteger(validityDays) || validityDays < 1)
    throw new Error('profile.json: validityDays');
  if (v.keyType !== 'P-256') throw new Error('profile.json: keyType');
  const antiRollback: Record<string, number> = {};
  for (const [name, n] of Object.entries(v.antiRollback)) {
    if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0)
      throw new Error('profile.json: antiRollback');
    antiRollback[name] = n;
  }
  // Profiles made before issue 7 have no trust documents (their devices verify updates against factory anchors).
  let trust: ProfileTrust | undefined;
  if (v.trust !== undefined) {
    if (!isObj(v.trust)) throw new Error('profile.json: trust');
    trust = {
      anchorStatementBase64: str(v.trust, 'anchorStatementBase64'),
      revocationListBase64: str(v.trust, 'revocationListBase64'),
    };
  }
  const fw = v.firmware;
  let firmware: ProvisioningProfile['firmware'] = null;
  if (fw !== null) {
    if (!isObj(fw)) throw new Error('profile.json: firmware');
    firmware = { envelopeBase64: str(fw, 'envelopeBase64'), sha256: str(fw, 'sha256') };
  }
  return {
    name: str(v, 'name'),
    deviceClass: str(v, 'deviceClass'),
    keyType: 'P-256',
    validityDays,
    trustAnchors: {
      authorKeyPem: str(t, 'authorKeyPem'),
      operatorKeyPem: str(t, 'operatorKeyPem'),
      serverTlsCaPem: str(t, 'serverTlsCaPem'),
      factoryCaPem: str(t, 'factoryCaPem'),
    },
    firmware,
    antiRollback,
    ...(trust === undefined ? {} : { trust }),
  };
}

function loadFactory(dir: string): {
  cfg: FactoryConfig;
  profile: ProvisioningProfile;
  root: string;
  issuing: string;
} {
  if (!existsSync(join(dir, 'factory.json')))
    throw new CliError('CLI_USAGE', `${dir} holds no factory (run rotor factory init)`);
  try {
    const cfg = parseFactoryConfig(JSON.parse(readText(join(dir, 'factory.json'), 64 * 1024)));
    const profile = parseProfile(JSON.parse(readText(join(dir, 'profile.json'))));
    return {
      cfg,
      profile,
      root: readText(join(dir, 'root-ca.pem')),
      issuing: readText(join(dir, 'issuing-ca.pem')),
    };
  } catch (e) {
    if (e instanceof CliError) throw e;
    throw new CliError('CLI_INPUT', `${dir}: corrupt factory files`, { cause: e });
  }
}

export interface FactoryCa {
  readonly factory: ReturnType<typeof loadFactory>;
  readonly root: CaCert;
  readonly issuing: CaCert;
  /** Closes the token session (nothing to do for file keys). */
  close(): Promise<void>;
}

/**
 * Opens the factory's CAs: keys in the PKCS#11 token (the PIN asked only then) or, for a development factory, in
 * its PEM files.
 */
export async function openFactoryCa(dir: string, pin: () => string): Promise<FactoryCa> {
  const f = loadFactory(dir);
  const rootCert = new x509.X509Certificate(f.root);
  const issCert = new x509.X509Certificate(f.issuing);
  if (f.cfg.backend === 'files') {
    const key = (path: string): CaCert['key'] => fileCaKey(readText(path, 64 * 1024), f.cfg.keyType);
    return {
      factory: f,
      root: { key: key(f.cfg.keys.root), cert: rootCert },
      issuing: { key: key(f.cfg.keys.issuing), cert: issCert },
      close: () => Promise.resolve(),
    };
  }
  const token = FactoryToken.open({ module: f.cfg.module, token: f.cfg.token, pin: pin() });
  try {
    const key = async (u: string): Promise<CaCert['key']> => {
      const { spki, type } = await token.publicKey(u);
      return { signer: await token.signer(u), spki, type };
    };
    return {
      factory: f,
      root: { key: await key(f.cfg.keys.root), cert: rootCert },
      issuing: { key: await key(f.cfg.keys.issuing), cert: issCert },
      close: () => token.close(),
    };
  } catch (e) {
    await token.close();
    throw e;
  }
}

/**
 * A progress bar on stderr (progress.ts): redrawn in place on a terminal (colour unless NO_COLOR), a line per 10%
 * otherwise, nothing when disabled (--json).
 */
export function progressBar(label: string, enabled = true): (done: number, total: number) => void {
  return liveProgressBar(label, { enabled });
}

const provision: Subcommand = {
  name: 'provision',
  summary: 'provision a batch of devices (resumable)',
  usage: `provision --dir DIR --count N [--batch NAME] [--pin-file FILE] [--data-dir DIR] [--concurrency N] [--json]

Provisions devices 0 … N-1 of the batch (default name 'default'); a batch that stopped (crash, power loss) resumes
where it stopped: devices it had started are finished or wiped. Registers devices in the server database of
DATABASE_URL, else the embedded database in --data-dir/pg (default ./rotor-data; stop the server first).`,
  options: {
    dir: { type: 'string' },
    count: { type: 'string' },
    batch: { type: 'string' },
    'pin-file': { type: 'string' },
    'data-dir': { type: 'string' },
    concurrency: { type: 'string' },
    json: { type: 'boolean' },
  },
  async run({ values }) {
    const dir = resolve((values.dir as string | undefined) ?? 'rotor-factory');
    const count = Number(values.count);
    if (!Number.isSafeInteger(count) || count < 1 || count > 1_000_000)
      throw new CliError('CLI_USAGE', '--count: 1 … 1,000,000');
    const batch = (values.batch as string | undefined) ?? 'default';
    if (!/^[A-Za-z0-9_-]{1,64}$/.test(batch)) throw new CliError('CLI_USAGE', '--batch: [A-Za-z0-9_-]{1,64}');
    const concurrency = Number((values.concurrency as string | undefined) ?? '8');
    if (!Number.isSafeInteger(concurrency) || concurrency < 1 || concurrency > 256)
      throw new CliError('CLI_USAGE', '--concurrency: 1 … 256');
    const databaseUrl = process.env.DATABASE_URL === '' ? undefined : process.env.DATABASE_URL;
    const dataDir = resolve((values['data-dir'] as string | undefined) ?? 'rotor-data');
    return factoryErrors(async () => {
      const ca = await openFactoryCa(dir, () => pinFrom(values));
      const f = ca.factory;
      const { root, issuing } = ca;
      if (databaseUrl === undefined) mkdirSync(dataDir, { recursive: true, mode: 0o700 });
      const db = await openDatabase({ databaseUrl, dataDir: join(dataDir, 'pg') });
      try {
        await migrate(db);
        mkdirSync(join(dir, 'batches'), { recursive: true });
        const r = await provisionDevices({
          root,
          issuing,
          profile: f.profile,
          journalPath: join(dir, 'batches', `${batch}.journal`),
          count,
          devices: enclaveDevices({ dir: join(dir, 'devices', batch) }),
          registry: dbRegistry(db, { station: `factory:${batch}` }),
          concurrency,
          onProgress: progressBar(`provisioning ${batch}`, values.json !== true),
        });
        if (values.json === true) json(r);
        else {
          out(
            `batch ${batch}: ${r.deviceIds.length}/${count} devices provisioned (${r.provisioned} now; recovered: ${r.recovered.rolledForward} finished, ${r.recovered.discarded} wiped)`,
          );
          for (const d of r.refused)
            process.stderr.write(
              `device ${String(d.index)} (${d.deviceId}) refused by the registry: ${d.code}: ${d.message}; wiped, a re-run retries it\n`,
            );
        }
        return r.refused.length === 0 ? ExitCode.ok : ExitCode.rejected;
      } finally {
        await db.close();
        await ca.close();
      }
    });
  },
};

export interface SetFirmwareResult {
  readonly profile: string;
  /** Where the replaced profile was kept (profile.<n>.json). */
  readonly previous: string;
  readonly sequence: number;
  readonly sha256: string;
  readonly antiRollback: Readonly<Record<string, number>>;
}

/**
 * Replaces the profile's initial firmware (and, if given, its anti-rollback values). The envelope is checked the way
 * every device will check it, before anything is written: it is installed into a throw-away device through the
 * agent's own verified path (provisionAgent) — author and operator signatures against the profile's anchors
 * (RFC 9019 §4; SUIT MF §6.2/§8.3), the integrated image's digest (MF §7.5), the vendor/class identifiers —
 * and the anti-rollback values must not exceed its sequence number (MF §8.4.2, TD §5.2: the device would not boot).
 * Then the old profile is kept as profile.<n>.json and the new one replaces profile.json atomically (temp file,
 * fsync, rename). Batches started later provision the new firmware; devices already provisioned are untouched.
 */
export async function setFactoryFirmware(o: {
  readonly dir: string;
  readonly firmware: Uint8Array;
  readonly antiRollback?: Readonly<Record<string, number>>;
}): Promise<SetFirmwareResult> {
  const dir = resolve(o.dir);
  const f = loadFactory(dir);
  const antiRollback = { ...(o.antiRollback ?? f.profile.antiRollback) };
  let sequence: bigint;
  try {
    sequence = decodeEnvelope(o.firmware).manifest.sequenceNumber;
  } catch (e) {
    throw new CliError('CLI_INPUT', `the firmware is not a SUIT envelope: ${errorText(e)}`, { cause: e });
  }
  const firmware = {
    envelopeBase64: Buffer.from(o.firmware).toString('base64'),
    sha256: createHash('sha256').update(o.firmware).digest('hex'),
  };
  const profile: ProvisioningProfile = { ...f.profile, firmware, antiRollback };
  // The dry run: a device of this profile, provisioned in a temporary directory, then discarded.
  const scratch = mkdtempSync(join(tmpdir(), 'rotor-set-firmware-'));
  try {
    const ueid = new Uint8Array([0x01, ...randomBytes(16)]);
    await provisionAgent(nodeFs(scratch), ueid, {
      deviceId: ueidUrn(ueid),
      certificatePem: '',
      chainPem: [],
      profile: profile.name,
      trustAnchors: profile.trustAnchors,
      firmware,
      antiRollback,
    });
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
  // The counters of the components this envelope installs (the agent's default keys firmware and recovery) must not
  // exceed its sequence, whatever the dry run's order of checks; other names count other manifests' sequences.
  for (const name of ['firmware', 'recovery']) {
    const v = antiRollback[name];
    if (v !== undefined && BigInt(v) > sequence)
      throw new CliError(
        'CLI_INPUT',
        `anti-rollback ${name}=${String(v)} is above the firmware's sequence ${sequence}`,
      );
  }
  let n = 1;
  while (existsSync(join(dir, `profile.${String(n)}.json`))) n++;
  const previous = join(dir, `profile.${String(n)}.json`);
  // The old profile first (a crash between the two renames leaves the old profile in place and a spare copy).
  writeAtomic(previous, new Uint8Array(readFileSync(join(dir, 'profile.json'))));
  writeAtomic(join(dir, 'profile.json'), new TextEncoder().encode(`${JSON.stringify(profile, null, 2)}\n`));
  syncDir(dir);
  return {
    profile: join(dir, 'profile.json'),
    previous,
    sequence: Number(sequence),
    sha256: firmware.sha256,
    antiRollback,
  };
}

const errorText = (e: unknown): string => (e instanceof Error ? e.message : String(e));

/** The directory entry of a rename made durable (fsync of the directory). */
function syncDir(dir: string): void {
  try {
    const fd = openSync(dir, 'r');
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  } catch {
    // Some filesystems refuse fsync on a directory; the renames themselves are atomic.
  }
}

const setFirmware: Subcommand = {
  name: 'set-firmware',
  summary: "replace the profile's initial firmware (later batches get it)",
  usage: `set-firmware --dir DIR --firmware FILE [--anti-rollback NAME=N,...] [--json]

Replaces the initial firmware of the factory's provisioning profile. FILE is a SUIT envelope with its image
integrated, signed by the author and the operator; it is verified against the profile's trust anchors by installing
it into a throw-away device exactly as provisioning would (signatures, image digest, vendor and class), and the
anti-rollback values (--anti-rollback replaces them all; without it the profile's stay) must not exceed its sequence
number. The old profile is kept as DIR/profile.<n>.json; profile.json is replaced atomically. Batches started
afterwards install the new firmware; devices already provisioned are untouched (they update over the air).`,
  options: {
    dir: { type: 'string' },
    firmware: { type: 'string' },
    'anti-rollback': { type: 'string' },
    json: { type: 'boolean' },
  },
  async run({ values }) {
    const dir = resolve((values.dir as string | undefined) ?? 'rotor-factory');
    const fwPath = values.firmware as string | undefined;
    if (fwPath === undefined)
      throw new CliError('CLI_USAGE', '--firmware FILE (a SUIT envelope) is required');
    const ar = values['anti-rollback'] as string | undefined;
    const firmware = readInput(fwPath, MAX_FILE, 'firmware envelope');
    const r = await setFactoryFirmware({
      dir,
      firmware,
      ...(ar === undefined ? {} : { antiRollback: parseAntiRollback(ar) }),
    });
    if (values.json === true) json(r);
    else {
      out(`${r.profile}: initial firmware sequence ${String(r.sequence)} (sha256 ${r.sha256})`);
      out(
        `anti-rollback: ${
          Object.entries(r.antiRollback)
            .map(([k, v]) => `${k}=${String(v)}`)
            .join(',') || '(none)'
        }; previous profile kept as ${r.previous}`,
      );
    }
    return ExitCode.ok;
  },
};

export const factoryCommand: Command = group('factory', 'manufacturing: factory CA, device provisioning', [
  init,
  provision,
  setFirmware,
]);

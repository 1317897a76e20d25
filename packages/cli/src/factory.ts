/**
 * `rotor factory init` (CAs and signing keys in a PKCS#11 token, provisioning profile) and `rotor factory provision`
 * (a crash-safe, resumable batch of devices: identity key born in each device, certificate from the issuing CA,
 * registration in the server database with the certificate in the audit log).
 *
 * The factory directory: factory.json (token, key URIs, key type), root-ca.pem, issuing-ca.pem, device-ca.pem (the
 * chain for the server's --device-ca), author.pub.pem, operator.pub.pem (and with --file-keys the private keys,
 * mode 0600), profile.json, batches/<name>.journal, devices/<name>/<index>/ (the simulated devices).
 * The PIN comes from --pin-file or ROTOR_FACTORY_PIN, never from the command line, and is never printed.
 */
import 'reflect-metadata';
import { createHash, generateKeyPairSync } from 'node:crypto';
import {
  closeSync,
  existsSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readFileSync,
  renameSync,
  writeFileSync,
} from 'node:fs';
import { join, resolve } from 'node:path';
import * as x509 from '@peculiar/x509';
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
  type CaCert,
  type FactoryKeyType,
  type ProvisioningProfile,
} from '@rotor/server';
import { group, type Command, type Subcommand } from './command.ts';
import { CliError, ExitCode } from './errors.ts';
import { enclaveDevices } from './factory-device.ts';
import { json, out, writeAtomic } from './io.ts';

const DEFAULT_MODULE = '/usr/lib/softhsm/libsofthsm2.so';
const MAX_FILE = 1 << 20;

interface FactoryConfig {
  readonly version: 1;
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
function writePrivate(path: string, pem: string): void {
  const tmp = `${path}.${process.pid}.tmp`;
  try {
    writeFileSync(tmp, pem, { mode: 0o600, flag: 'wx' });
    const fd = openSync(tmp, 'r');
    fsyncSync(fd);
    closeSync(fd);
    renameSync(tmp, path);
  } catch (e) {
    throw new CliError('CLI_IO', `cannot write ${path}: ${e instanceof Error ? e.message : String(e)}`);
  }
}

const init: Subcommand = {
  name: 'init',
  summary: 'create the factory CAs, signing keys and provisioning profile',
  usage: `init --dir DIR --token URI|LABEL --server-ca FILE [--module PATH] [--pin-file FILE]
            [--key-type p256|ed25519] [--file-keys] [--firmware FILE] [--anti-rollback NAME=N,...]
            [--class NAME] [--profile NAME] [--validity-days N]

Generates in the PKCS#11 token (RFC 7512 URIs pkcs11:token=<label>;object=rotor-…): the root CA and issuing CA keys
and, unless --file-keys (development only: PEM files in DIR), the author and operator signing keys. Keys are
non-extractable. Writes root-ca.pem, issuing-ca.pem, device-ca.pem (for the server's --device-ca), the public keys
and profile.json (trust anchors, initial firmware, anti-rollback values). The PIN: --pin-file or ROTOR_FACTORY_PIN.
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
  },
  async run({ values }) {
    const dir = resolve((values.dir as string | undefined) ?? 'rotor-factory');
    const tokenArg = values.token as string | undefined;
    if (tokenArg === undefined) throw new CliError('CLI_USAGE', '--token URI|LABEL is required');
    const serverCa = values['server-ca'] as string | undefined;
    if (serverCa === undefined)
      throw new CliError('CLI_USAGE', '--server-ca FILE (the server TLS CA) is required');
    const kt = (values['key-type'] as string | undefined) ?? 'p256';
    if (kt !== 'p256' && kt !== 'ed25519') throw new CliError('CLI_USAGE', '--key-type: p256 or ed25519');
    const keyType: FactoryKeyType = kt === 'p256' ? 'P-256' : 'Ed25519';
    const validity = Number((values['validity-days'] as string | undefined) ?? '3650');
    if (!Number.isSafeInteger(validity) || validity < 1 || validity > 36500)
      throw new CliError('CLI_USAGE', '--validity-days: 1 … 36500');
    const antiRollback: Record<string, number> = {};
    const ar = values['anti-rollback'] as string | undefined;
    for (const kv of ar === undefined || ar === '' ? [] : ar.split(',')) {
      const m = /^([A-Za-z0-9_.-]{1,64})=([0-9]{1,15})$/.exec(kv);
      if (m === null) throw new CliError('CLI_USAGE', `--anti-rollback: NAME=N, not ${kv}`);
      antiRollback[m[1]!] = Number(m[2]);
    }
    const serverCaPem = readText(serverCa);
    if (!serverCaPem.includes('-----BEGIN CERTIFICATE-----'))
      throw new CliError('CLI_INPUT', `${serverCa} is not a PEM certificate`);
    const fwPath = values.firmware as string | undefined;
    const fw = fwPath === undefined ? null : readFileSync(fwPath);
    if (fw !== null && fw.length > MAX_FILE)
      throw new CliError('CLI_INPUT', 'firmware envelope larger than 1 MiB');
    if (existsSync(join(dir, 'factory.json')))
      throw new CliError('CLI_USAGE', `${dir} already holds a factory (factory.json): refusing to overwrite`);
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const pin = pinFrom(values);
    return factoryErrors(async () => {
      const token = FactoryToken.open({
        module: (values.module as string | undefined) ?? DEFAULT_MODULE,
        token: tokenArg,
        pin,
      });
      try {
        const uri = (o: string): string => pkcs11UriFor(token.label, o);
        const keys = {
          root: uri('rotor-root-ca'),
          issuing: uri('rotor-issuing-ca'),
          author: uri('rotor-author'),
          operator: uri('rotor-operator'),
        };
        const caKey = async (u: string): Promise<CaCert['key']> => {
          const { spki } = await token.generate(u, keyType);
          return { signer: await token.signer(u), spki, type: keyType };
        };
        const rootKey = await caKey(keys.root);
        const issKey = await caKey(keys.issuing);
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
        let keyRefs = keys;
        if (values['file-keys'] === true) {
          const gen = (name: string): string => {
            const kp =
              keyType === 'P-256'
                ? generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
                : generateKeyPairSync('ed25519');
            writePrivate(
              join(dir, `${name}.key.pem`),
              kp.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
            );
            return kp.publicKey.export({ type: 'spki', format: 'pem' }).toString();
          };
          authorPem = gen('author');
          operatorPem = gen('operator');
          keyRefs = { ...keys, author: join(dir, 'author.key.pem'), operator: join(dir, 'operator.key.pem') };
        } else {
          authorPem = pub((await token.generate(keys.author, keyType)).spki);
          operatorPem = pub((await token.generate(keys.operator, keyType)).spki);
        }
        const rootPem = toPem(new Uint8Array(rootCert.rawData));
        const issPem = toPem(new Uint8Array(issCert.rawData));
        const profile: ProvisioningProfile = {
          name: (values.profile as string | undefined) ?? 'default',
          deviceClass: (values.class as string | undefined) ?? 'generic',
          keyType: 'P-256',
          validityDays: validity,
          trustAnchors: {
            authorKeyPem: authorPem,
            operatorKeyPem: operatorPem,
            serverTlsCaPem: serverCaPem,
            factoryCaPem: rootPem,
          },
          firmware:
            fw === null
              ? null
              : {
                  envelopeBase64: fw.toString('base64'),
                  sha256: createHash('sha256').update(fw).digest('hex'),
                },
          antiRollback,
        };
        write(join(dir, 'root-ca.pem'), rootPem);
        write(join(dir, 'issuing-ca.pem'), issPem);
        write(join(dir, 'device-ca.pem'), issPem + rootPem);
        write(join(dir, 'author.pub.pem'), authorPem);
        write(join(dir, 'operator.pub.pem'), operatorPem);
        write(join(dir, 'profile.json'), `${JSON.stringify(profile, null, 2)}\n`);
        const cfg: FactoryConfig = {
          version: 1,
          module: (values.module as string | undefined) ?? DEFAULT_MODULE,
          token: token.label,
          keyType,
          keys: keyRefs,
        };
        // Written last: its presence means the factory is complete.
        write(join(dir, 'factory.json'), `${JSON.stringify(cfg, null, 2)}\n`);
        out(`factory initialized in ${dir}: root and issuing CA (${keyType}) in token ${token.label}`);
        out(`server: --device-ca ${join(dir, 'device-ca.pem')}`);
        return ExitCode.ok;
      } finally {
        await token.close();
      }
    });
  },
};

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
  return {
    version: 1,
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

/** A progress bar on stderr: redrawn in place on a TTY (colour unless NO_COLOR), a line per 10% otherwise. */
export function progressBar(label: string): (done: number, total: number) => void {
  const tty = process.stderr.isTTY;
  const color = tty && !process.env.NO_COLOR;
  let lastTenth = -1;
  return (done, total) => {
    const frac = total === 0 ? 1 : done / total;
    if (tty) {
      const w = 30;
      const n = Math.round(frac * w);
      const bar = '#'.repeat(n) + '.'.repeat(w - n);
      const shown = color ? `\x1b[32m${bar}\x1b[0m` : bar;
      process.stderr.write(`\r${label} [${shown}] ${done}/${total}${done === total ? '\n' : ''}`);
    } else {
      const tenth = Math.floor(frac * 10);
      if (tenth !== lastTenth) {
        lastTenth = tenth;
        process.stderr.write(`${label}: ${done}/${total}\n`);
      }
    }
  };
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
    const f = loadFactory(dir);
    const pin = pinFrom(values);
    const databaseUrl = process.env.DATABASE_URL === '' ? undefined : process.env.DATABASE_URL;
    const dataDir = resolve((values['data-dir'] as string | undefined) ?? 'rotor-data');
    return factoryErrors(async () => {
      const token = FactoryToken.open({ module: f.cfg.module, token: f.cfg.token, pin });
      if (databaseUrl === undefined) mkdirSync(dataDir, { recursive: true, mode: 0o700 });
      const db = await openDatabase({ databaseUrl, dataDir: join(dataDir, 'pg') });
      try {
        await migrate(db);
        const key = async (u: string): Promise<CaCert['key']> => {
          const { spki, type } = await token.publicKey(u);
          return { signer: await token.signer(u), spki, type };
        };
        const root: CaCert = { key: await key(f.cfg.keys.root), cert: new x509.X509Certificate(f.root) };
        const issuing: CaCert = {
          key: await key(f.cfg.keys.issuing),
          cert: new x509.X509Certificate(f.issuing),
        };
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
          onProgress: progressBar(`provisioning ${batch}`),
        });
        if (values.json === true) json(r);
        else
          out(
            `batch ${batch}: ${r.deviceIds.length}/${count} devices provisioned (${r.provisioned} now; recovered: ${r.recovered.rolledForward} finished, ${r.recovered.discarded} wiped)`,
          );
        return ExitCode.ok;
      } finally {
        await db.close();
        await token.close();
      }
    });
  },
};

export const factoryCommand: Command = group('factory', 'manufacturing: factory CA, device provisioning', [
  init,
  provision,
]);

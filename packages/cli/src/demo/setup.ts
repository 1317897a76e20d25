/**
 * The development data directory of `rotor start` and `rotor demo`, created on first run and reused later:
 *
 *   rotor.json                     what is here (written last: its presence means complete)
 *   admin-token                    the operator API admin token (mode 0600; given to the server as ROTOR_ADMIN_TOKEN)
 *   tls/ca.pem, tls/ca.key         the server TLS CA (P-256; key 0600) — a trust anchor of every device
 *   tls/server.pem, server.key     the server certificate for 127.0.0.1 / localhost / ::1 (RFC 5280 §4.2.1.6 SANs)
 *   factory/                       a file-key factory (DEVELOPMENT ONLY: `rotor factory init --file-keys`): root and
 *                                  issuing CA, author and operator keys, device-ca.pem, profile with firmware 1.0
 *   keys/content-kek               the server's content-key vault KEK (64 hex digits, 0600)
 *   keys/capability-*.key.pem      the capability server's signing and authority keys (0600)
 *   pg/                            the server's embedded database (PGlite)
 *   factory/devices/<batch>/NNNNNN the factory's devices: fuse (device-unique secret) and flash
 *
 * Everything is generated with node:crypto and @peculiar/x509 (no openssl CLI). Private keys never leave their files
 * and are never printed.
 */
import 'reflect-metadata';
import { createHash, createPrivateKey, generateKeyPairSync, randomBytes, type webcrypto } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync } from 'node:fs';
import { join, resolve } from 'node:path';
import * as x509 from '@peculiar/x509';
import { Alg, softwareSigner } from '@rotor/cose';
import { sim } from '@rotor/device';
import { buildEnvelope, buildUpdateManifest } from '@rotor/suit';
import { CliError } from '../errors.ts';
import { initFactory } from '../factory.ts';
import { writeAtomic } from '../io.ts';

/** The device class of the demo's firmware (the simulator's, so simulated and factory devices take the same releases). */
export const DEMO_VENDOR = sim.VENDOR;
export const DEMO_CLASS = sim.CLASS;
/** The firmware component (the simulator's `fw`). */
export const DEMO_COMPONENT = 'fw';

export interface DataDir {
  readonly dir: string;
  readonly adminTokenFile: string;
  readonly adminToken: string;
  readonly tlsCa: string;
  readonly tlsCaPem: string;
  readonly serverCert: string;
  readonly serverKey: string;
  readonly factoryDir: string;
  readonly deviceCa: string;
  readonly authorKey: string;
  readonly authorPubPem: string;
  readonly operatorKey: string;
  readonly operatorPubPem: string;
  readonly contentKek: string;
  readonly capabilitySigningKey: string;
  readonly capabilityAuthorityKey: string;
  /** Whether this call created the directory (first run). */
  readonly created: boolean;
}

/** Every file of the data directory is written atomically: a crash never leaves a half file a later run trusts. */
const writeFile0600 = (path: string, text: string): void => {
  writeAtomic(path, text, 0o600);
};
const writePublic = (path: string, text: string): void => {
  writeAtomic(path, text);
};

const EC = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;

async function pkcs8Pem(key: webcrypto.CryptoKey): Promise<string> {
  const der = await globalThis.crypto.subtle.exportKey('pkcs8', key);
  return x509.PemConverter.encode(der, 'PRIVATE KEY').trimEnd() + '\n';
}

/**
 * A server TLS CA and a server certificate for the loopback names (SAN DNS localhost, IP 127.0.0.1 and ::1;
 * RFC 5280 §4.2.1.6), serverAuth EKU (§4.2.1.12), both P-256 / ECDSA-SHA256.
 */
export async function createServerTls(dir: string): Promise<void> {
  const caKeys = await globalThis.crypto.subtle.generateKey(EC, true, ['sign', 'verify']);
  const now = new Date(Date.now() - 5 * 60_000);
  const ca = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomBytes(16)
      .toString('hex')
      .replace(/^[89a-f]/, '1'),
    name: 'CN=Rotor development server CA, O=Rotor',
    notBefore: now,
    notAfter: new Date(now.getTime() + 3650 * 86_400_000),
    keys: caKeys,
    signingAlgorithm: EC,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(caKeys.publicKey),
    ],
  });
  const srvKeys = await globalThis.crypto.subtle.generateKey(EC, true, ['sign', 'verify']);
  const srv = await x509.X509CertificateGenerator.create({
    serialNumber: randomBytes(16)
      .toString('hex')
      .replace(/^[89a-f]/, '1'),
    subject: 'CN=localhost, O=Rotor',
    issuer: ca.subject,
    notBefore: now,
    notAfter: new Date(now.getTime() + 825 * 86_400_000),
    publicKey: srvKeys.publicKey,
    signingKey: caKeys.privateKey,
    signingAlgorithm: EC,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
      new x509.SubjectAlternativeNameExtension([
        { type: 'dns', value: 'localhost' },
        { type: 'ip', value: '127.0.0.1' },
        { type: 'ip', value: '::1' },
      ]),
      await x509.AuthorityKeyIdentifierExtension.create(caKeys.publicKey),
    ],
  });
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  writeFile0600(join(dir, 'ca.key'), await pkcs8Pem(caKeys.privateKey));
  writeFile0600(join(dir, 'server.key'), await pkcs8Pem(srvKeys.privateKey));
  writePublic(join(dir, 'ca.pem'), ca.toString('pem') + '\n');
  // The chain the server presents: its certificate then the CA.
  writePublic(join(dir, 'server.pem'), srv.toString('pem') + '\n' + ca.toString('pem') + '\n');
}

/** The demo firmware image of a version: the simulator's format ("OK"/"BD" header for its health check). */
export function demoImage(version: number, size = 4096, healthy = true): Uint8Array {
  return sim.image(version, size, healthy);
}

/** Sequence number of a version string a.b → a * 100 + b (1.0 → 100, 1.1 → 101). */
export function sequenceOf(version: string): number {
  const m = /^([0-9]{1,4})\.([0-9]{1,2})$/.exec(version);
  if (m === null) throw new CliError('CLI_USAGE', `version ${version}: MAJOR.MINOR`);
  return Number(m[1]) * 100 + Number(m[2]);
}

/**
 * An author's release of the demo class (draft-ietf-suit-manifest §7.1, §7.3; operator delivery, TD §5.6.1: the
 * server encrypts the payload once and wraps its key per device): signed by the author key only.
 */
export async function authorRelease(
  authorKeyPem: string,
  version: string,
  image: Uint8Array,
): Promise<Uint8Array> {
  const digest = new Uint8Array(createHash('sha256').update(image).digest());
  const manifest = buildUpdateManifest({
    vendorDomain: DEMO_VENDOR,
    className: DEMO_CLASS,
    sequenceNumber: BigInt(sequenceOf(version)),
    components: [
      {
        id: DEMO_COMPONENT,
        image: { digest, size: image.length },
        uri: `https://fw.example/demo-${version}.bin`,
      },
    ],
    setVersion: version.split('.').map(Number),
    text: { manifestDescription: `demo firmware ${version}` },
    operatorDelivery: true,
  });
  const signer = softwareSigner(createPrivateKey(authorKeyPem), Alg.ESP256);
  return buildEnvelope(manifest, { signers: [signer] });
}

/** The factory's initial firmware 1.0: image integrated (MF §7.5), signed by the author and the operator. */
async function initialFirmware(authorKeyPem: string, operatorKeyPem: string): Promise<Uint8Array> {
  const image = demoImage(1);
  const digest = new Uint8Array(createHash('sha256').update(image).digest());
  const manifest = buildUpdateManifest({
    vendorDomain: DEMO_VENDOR,
    className: DEMO_CLASS,
    sequenceNumber: BigInt(sequenceOf('1.0')),
    components: [{ id: DEMO_COMPONENT, image: { digest, size: image.length }, uri: '#fw' }],
    setVersion: [1, 0],
  });
  const signers = [authorKeyPem, operatorKeyPem].map((p) => softwareSigner(createPrivateKey(p), Alg.ESP256));
  return buildEnvelope(manifest, { signers, integrated: new Map([['#fw', image]]) });
}

function readText(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (e) {
    throw new CliError('CLI_IO', `cannot read ${path}: ${e instanceof Error ? e.message : String(e)}`);
  }
}

function layout(dir: string, created: boolean): DataDir {
  const factoryDir = join(dir, 'factory');
  const adminTokenFile = join(dir, 'admin-token');
  return {
    dir,
    adminTokenFile,
    adminToken: readText(adminTokenFile).trim(),
    tlsCa: join(dir, 'tls', 'ca.pem'),
    tlsCaPem: readText(join(dir, 'tls', 'ca.pem')),
    serverCert: join(dir, 'tls', 'server.pem'),
    serverKey: join(dir, 'tls', 'server.key'),
    factoryDir,
    deviceCa: join(factoryDir, 'device-ca.pem'),
    authorKey: join(factoryDir, 'author.key.pem'),
    authorPubPem: readText(join(factoryDir, 'author.pub.pem')),
    operatorKey: join(factoryDir, 'operator.key.pem'),
    operatorPubPem: readText(join(factoryDir, 'operator.pub.pem')),
    contentKek: join(dir, 'keys', 'content-kek'),
    capabilitySigningKey: join(dir, 'keys', 'capability-signing.key.pem'),
    capabilityAuthorityKey: join(dir, 'keys', 'capability-authority.key.pem'),
    created,
  };
}

/**
 * The demo factory is complete once its profile carries the initial firmware: initFactory writes factory.json before
 * that firmware exists, so factory.json alone would let a run interrupted in between reuse a profile without firmware.
 */
function factoryComplete(factoryDir: string): boolean {
  if (!existsSync(join(factoryDir, 'factory.json'))) return false;
  try {
    const profile = JSON.parse(readFileSync(join(factoryDir, 'profile.json'), 'utf8')) as {
      firmware?: unknown;
    };
    return profile.firmware !== null && profile.firmware !== undefined;
  } catch {
    return false;
  }
}

/**
 * Opens the data directory, creating it on first run. A directory whose rotor.json is missing (an interrupted first
 * run) is completed: each step is skipped when its output already exists.
 */
export async function ensureDataDir(dirArg: string): Promise<DataDir> {
  const dir = resolve(dirArg);
  if (existsSync(join(dir, 'rotor.json'))) return layout(dir, false);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  mkdirSync(join(dir, 'keys'), { recursive: true, mode: 0o700 });
  if (!existsSync(join(dir, 'admin-token')))
    writeFile0600(join(dir, 'admin-token'), `${randomBytes(32).toString('base64url')}\n`);
  if (!existsSync(join(dir, 'tls', 'server.pem'))) await createServerTls(join(dir, 'tls'));
  const factoryDir = join(dir, 'factory');
  if (!factoryComplete(factoryDir)) {
    // An interrupted init left partial files: start the factory over (nothing was provisioned from it).
    if (existsSync(factoryDir)) renameSync(factoryDir, `${factoryDir}.partial-${Date.now()}`);
    // The author and operator keys are created with the factory; the initial firmware needs them, so the factory
    // is created first without it and the profile then gets firmware 1.0 signed by both.
    await initFactory({
      dir: factoryDir,
      backend: { kind: 'files' },
      serverCaPem: readText(join(dir, 'tls', 'ca.pem')),
      deviceClass: DEMO_CLASS,
      profile: 'demo',
    });
    const fw = await initialFirmware(
      readText(join(factoryDir, 'author.key.pem')),
      readText(join(factoryDir, 'operator.key.pem')),
    );
    const profilePath = join(factoryDir, 'profile.json');
    const profile = JSON.parse(readText(profilePath)) as Record<string, unknown>;
    profile.firmware = {
      envelopeBase64: Buffer.from(fw).toString('base64'),
      sha256: createHash('sha256').update(fw).digest('hex'),
    };
    profile.antiRollback = { firmware: sequenceOf('1.0') };
    writePublic(profilePath, `${JSON.stringify(profile, null, 2)}\n`);
  }
  const kek = join(dir, 'keys', 'content-kek');
  if (!existsSync(kek)) writeFile0600(kek, `${randomBytes(32).toString('hex')}\n`);
  for (const name of ['capability-signing', 'capability-authority']) {
    const p = join(dir, 'keys', `${name}.key.pem`);
    if (!existsSync(p))
      writeFile0600(
        p,
        generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
          .privateKey.export({ type: 'pkcs8', format: 'pem' })
          .toString(),
      );
  }
  writePublic(
    join(dir, 'rotor.json'),
    `${JSON.stringify({ version: 1, kind: 'rotor development data directory', developmentOnly: true }, null, 2)}\n`,
  );
  return layout(dir, true);
}

/** `rotor server` arguments for a data directory (ports: 0 = any; the caller passes fixed ones for npm start). */
export function serverArgs(
  d: DataDir,
  ports: { port: number; devicePort: number; mqttPort: number },
  opts: { deviceCa: boolean; rolloutTickMs?: number; checkinIntervalS?: number; logLevel?: string },
): string[] {
  return [
    '--data-dir',
    d.dir,
    '--port',
    String(ports.port),
    '--device-port',
    String(ports.devicePort),
    '--mqtt-port',
    String(ports.mqttPort),
    '--tls-cert',
    d.serverCert,
    '--tls-key',
    d.serverKey,
    ...(opts.deviceCa ? ['--device-ca', d.deviceCa] : []),
    '--operator-key',
    d.operatorKey,
    '--content-kek',
    d.contentKek,
    '--capability-signing-key',
    d.capabilitySigningKey,
    '--capability-authority-key',
    d.capabilityAuthorityKey,
    '--rollout-tick-ms',
    String(opts.rolloutTickMs ?? 500),
    '--checkin-interval-s',
    String(opts.checkinIntervalS ?? 2),
    '--log-level',
    opts.logLevel ?? 'info',
    '--shutdown-grace-ms',
    '2000',
  ];
}

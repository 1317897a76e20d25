/** Server fixtures: a started server on a test database with a device listener and an admin token. */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash, randomBytes, type KeyObject } from 'node:crypto';
import { generateAgreementKey, generateSigningKey, softwareSigner } from '@rotor/cose';
import { buildEnvelope, buildUpdateManifest, decodeEnvelope } from '@rotor/suit';
import {
  deliverableManifest,
  loadConfig,
  operatorKeyFrom,
  startServer,
  vaultFromHex,
  type Principal,
  type RotorServer,
  type ServerKeys,
  type Services,
  type StartOptions,
} from '../src/index.ts';
import {
  createTestDatabase,
  operatorClient,
  selfSignedCert,
  type BackendName,
  type OperatorClient,
  type TestCert,
  type TestDatabase,
} from './helpers.ts';
import type { Db } from '../src/index.ts';

export const ADMIN_TOKEN = `admin_${randomBytes(24).toString('hex')}`;

/** Operator signing key (P-256) and content-key vault KEK for a test server. */
export function testKeyMaterial(): { operatorPem: string; kekHex: string; keys: ServerKeys } {
  const k = generateSigningKey(-7);
  const operatorPem = k.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  const kekHex = randomBytes(32).toString('hex');
  return {
    operatorPem,
    kekHex,
    keys: { operator: operatorKeyFrom(k.privateKey), vault: vaultFromHex(kekHex) },
  };
}

export interface Fixture {
  server: RotorServer;
  t: TestDatabase & { db: Db };
  serverCert: TestCert;
  admin: OperatorClient;
  dataDir: string;
  close(): Promise<void>;
}

export async function startFixture(
  backend: BackendName,
  opts: StartOptions & { env?: Record<string, string> } = {},
): Promise<Fixture> {
  const t = await createTestDatabase(backend);
  const dataDir = mkdtempSync(join(tmpdir(), 'rotor-srv-'));
  const serverCert = await selfSignedCert('rotor-test-server', { server: true });
  writeFileSync(join(dataDir, 'server.crt'), serverCert.certPem);
  writeFileSync(join(dataDir, 'server.key'), serverCert.keyPem, { mode: 0o600 });
  const km = testKeyMaterial();
  writeFileSync(join(dataDir, 'operator.pem'), km.operatorPem, { mode: 0o600 });
  writeFileSync(join(dataDir, 'content.kek'), `${km.kekHex}\n`, { mode: 0o600 });
  const config = loadConfig({
    argv: [
      '--port',
      '0',
      '--device-port',
      '0',
      '--mqtt-port',
      '0',
      '--log-level',
      'silent',
      '--data-dir',
      dataDir,
      '--max-upload-bytes',
      String(1024 * 1024),
    ],
    env: {
      ROTOR_ADMIN_TOKEN: ADMIN_TOKEN,
      ROTOR_TLS_CERT_FILE: join(dataDir, 'server.crt'),
      ROTOR_TLS_KEY_FILE: join(dataDir, 'server.key'),
      ROTOR_OPERATOR_KEY_FILE: join(dataDir, 'operator.pem'),
      ROTOR_CONTENT_KEK_FILE: join(dataDir, 'content.kek'),
      ...opts.env,
    },
  });
  const server = await startServer(config, { ...opts, db: t.db });
  return {
    server,
    t,
    serverCert,
    dataDir,
    admin: operatorClient(server.operatorUrl, ADMIN_TOKEN),
    async close() {
      await server.close();
      await t.drop();
    },
  };
}

export const sha256hex = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

export function authorKeyPair(): { privateKey: KeyObject; publicKey: KeyObject; publicKeyPem: string } {
  const k = generateSigningKey(-7);
  return { ...k, publicKeyPem: k.publicKey.export({ type: 'spki', format: 'pem' }).toString() };
}

/**
 * A signed author envelope for one detached image that leaves the payload source to the operator (TD §5.6.1, see
 * deliverableManifest); `integrated` builds a standard manifest with the image inside the envelope instead.
 */
export async function signedRelease(
  privateKey: KeyObject,
  image: Uint8Array,
  sequenceNumber = 1,
  opts: { integrated?: boolean } = {},
): Promise<Uint8Array> {
  const digest = new Uint8Array(createHash('sha256').update(image).digest());
  if (opts.integrated === true) {
    const desc = buildUpdateManifest({
      vendorDomain: 'example.com',
      className: 'widget',
      sequenceNumber,
      components: [{ id: 'fw', image: { digest, size: image.length }, uri: '#fw' }],
    });
    return buildEnvelope(desc, {
      signers: [softwareSigner(privateKey, -7)],
      integrated: new Map([['#fw', image]]),
    });
  }
  return buildEnvelope(
    deliverableManifest({
      vendorDomain: 'example.com',
      className: 'widget',
      sequenceNumber,
      components: [{ id: 'fw', digest, size: image.length, uri: 'https://fw.example/fw.bin' }],
    }),
    { signers: [softwareSigner(privateKey, -7)] },
  );
}

const SETUP_ADMIN: Principal = { kind: 'operator', tokenId: 't-admin', name: 'admin', role: 'admin' };
const SETUP_OPERATOR: Principal = { kind: 'operator', tokenId: 't-op', name: 'op', role: 'operator' };
const SETUP_AUTHOR: Principal = { kind: 'operator', tokenId: 't-author', name: 'author', role: 'author' };

/** An approved release (a fresh author key, a 256-byte image) and `n` devices in `group`, on the services. */
export async function approvedReleaseAndDevices(
  s: Services,
  group: string,
  n: number,
): Promise<{ releaseId: string; digest: Uint8Array; deviceIds: string[] }> {
  const k = authorKeyPair();
  await s.authorKeys.create(SETUP_ADMIN, {
    name: `author-${group}`,
    alg: 'ES256',
    publicKeyPem: k.publicKeyPem,
  });
  const image = randomBytes(256);
  await s.payloads.upload(SETUP_AUTHOR, sha256hex(image), image);
  const env = await signedRelease(k.privateKey, image, 1);
  const rel = await s.releases.upload(SETUP_AUTHOR, env);
  await s.rollouts.approve(SETUP_OPERATOR, rel.id);
  const deviceIds: string[] = [];
  for (let i = 0; i < n; i++) {
    const d = await s.devices.create(SETUP_ADMIN, {
      name: `${group}-${i}`,
      certSha256: randomBytes(32).toString('hex'),
      group,
      keyAgreementKeyPem: generateAgreementKey('X25519')
        .publicKey.export({ type: 'spki', format: 'pem' })
        .toString(),
    });
    deviceIds.push(d.id);
  }
  return { releaseId: rel.id, digest: decodeEnvelope(env).digest.bytes, deviceIds };
}

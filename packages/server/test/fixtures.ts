/** Server fixtures: a started server on a test database with a device listener and an admin token. */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash, randomBytes, type KeyObject } from 'node:crypto';
import { generateSigningKey, softwareSigner } from '@rotor/cose';
import { buildEnvelope, buildUpdateManifest } from '@rotor/suit';
import { loadConfig, startServer, type RotorServer, type StartOptions } from '../src/index.ts';
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
  const config = loadConfig({
    argv: [
      '--port',
      '0',
      '--device-port',
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

/** A signed SUIT update envelope for one detached image (MF §7.3 template via the suit builder). */
export async function signedRelease(
  privateKey: KeyObject,
  image: Uint8Array,
  sequenceNumber = 1,
  opts: { integrated?: boolean } = {},
): Promise<Uint8Array> {
  const digest = new Uint8Array(createHash('sha256').update(image).digest());
  const desc = buildUpdateManifest({
    vendorDomain: 'example.com',
    className: 'widget',
    sequenceNumber,
    components: [
      {
        id: 'fw',
        image: { digest, size: image.length },
        uri: opts.integrated === true ? '#fw' : 'https://fw.example/fw.bin',
      },
    ],
  });
  return buildEnvelope(desc, {
    signers: [softwareSigner(privateKey, -7)],
    ...(opts.integrated === true ? { integrated: new Map([['#fw', image]]) } : {}),
  });
}

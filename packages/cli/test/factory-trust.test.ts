/**
 * Trust distribution on factory-provisioned devices (issue 7 on issue 6's devices, factory-trust.ts):
 *  - `rotor factory init` makes the version-1 anchor statement (root = author + operator, threshold 2; author,
 *    operator and revocation roles) and an empty first revocation list, carried by the profile and written as files;
 *  - a provisioned device opens a DeviceTrust from them (openFactoryDevice): its agent installs an update signed by
 *    the author and the operator with no server at all (the provisioned list is fresh), refuses one whose author key
 *    the operator revoked (SIGNER_REVOKED, list v2 fetched at check-in), and once its list has expired with no fresh
 *    one to be had refuses everything (TRUST_STALE, freeze attack);
 *  - the server publishes the profile's statement and list once (publishProfileTrust: idempotent, devices then see
 *    versions 1/1 at check-in), through the distribution service's own checks.
 */
import { createPrivateKey, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { Alg, coseKeyFromKeyObject, softwareSigner } from '@rotor/cose';
import { StatusTracker, type TrackerEvent } from '@rotor/device';
import {
  dbRegistry,
  loadConfig,
  migrate,
  openDatabase,
  provisionDevices,
  publishProfileTrust,
  startServer,
  type DeviceRegistry,
  type RotorServer,
} from '@rotor/server';
import {
  anchorKey,
  createTrustRevocationList,
  initialAnchorSet,
  RevokedKind,
  verifyTrustRevocationList,
} from '@rotor/trust';
import { enclaveDevices, openFactoryDevice, type FactoryDevice } from '../src/factory-device.ts';
import { initFactory, openFactoryCa } from '../src/factory.ts';
import { FACTORY_TRUST_ALGS } from '../src/factory-trust.ts';
import { run } from '../src/main.ts';
import { selfSignedCert } from '../../server/test/helpers.ts';

let dir = '';
let factoryDir = '';
let devicesDir = '';
const fw = new Uint8Array(3000).map((_, i) => (i * 13) & 0xff);
fw.set(new TextEncoder().encode('OK'), 0);
const SERVER_CA = '-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n';

/** A release of the factory's class signed by the factory's author (and operator) file keys, via the CLI. */
async function envelope(seq: number, operator = true): Promise<Uint8Array> {
  writeFileSync(join(dir, 'fw.bin'), fw);
  writeFileSync(
    join(dir, `fw${seq}.yaml`),
    [
      'vendor: rotor.example',
      'class: trust-1',
      `sequence: ${seq}`,
      'components:',
      '  - id: firmware',
      '    image: fw.bin',
      '',
    ].join('\n'),
  );
  const out = join(dir, `fw${seq}.suit`);
  const key = (who: string): string => join(factoryDir, `${who}.key.pem`);
  expect(
    await run(['manifest', 'create', join(dir, `fw${seq}.yaml`), '--key', key('author'), '-o', out]),
  ).toBe(0);
  if (operator) expect(await run(['manifest', 'sign', out, '--key', key('operator')])).toBe(0);
  return new Uint8Array(readFileSync(out));
}

const noRegistry: DeviceRegistry = {
  register: () => Promise.resolve({ id: 'x', created: true }),
};

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'rotor-factory-trust-'));
  factoryDir = join(dir, 'factory');
  devicesDir = join(dir, 'devices');
  vi.spyOn(process.stdout, 'write').mockImplementation(() => true);
  vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
  // The initial firmware needs the factory's keys: init once without firmware to create them, then use a profile
  // carrying firmware signed by them (the CLI's `factory init --firmware` does the same with existing keys).
  await initFactory({ dir: factoryDir, backend: { kind: 'files' }, serverCaPem: SERVER_CA });
  const initial = await envelope(5);
  const ca = await openFactoryCa(factoryDir, () => '');
  try {
    await provisionDevices({
      issuing: ca.issuing,
      root: ca.root,
      profile: {
        ...ca.factory.profile,
        firmware: { envelopeBase64: Buffer.from(initial).toString('base64'), sha256: '' },
        antiRollback: {},
      },
      journalPath: join(dir, 'batch.journal'),
      count: 2,
      devices: enclaveDevices({ dir: devicesDir }),
      registry: noRegistry,
    });
  } finally {
    await ca.close();
  }
  vi.restoreAllMocks();
});

afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

beforeEach(() => {
  vi.spyOn(process.stdout, 'write').mockImplementation(() => true);
  vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
});

afterEach(() => {
  vi.restoreAllMocks();
});

const deviceDir = (i: number): string => join(devicesDir, String(i).padStart(6, '0'));

/** The operator's revocation-role signer (ES256 over operator.key.pem, kid = the anchor thumbprint). */
function operatorSigner() {
  const key = createPrivateKey(readFileSync(join(factoryDir, 'operator.key.pem')));
  const kid = anchorKey({ ...coseKeyFromKeyObject(key), alg: Alg.ES256 }).kid;
  return softwareSigner(key, Alg.ES256, kid);
}

describe('factory devices hold the factory trust (issue 7)', () => {
  it('factory init writes the version-1 anchor statement and first revocation list into the profile', async () => {
    const ca = await openFactoryCa(factoryDir, () => '');
    const trust = ca.factory.profile.trust;
    await ca.close();
    expect(trust).toBeDefined();
    const statement = new Uint8Array(readFileSync(join(factoryDir, 'trust-anchors-v1.cbor')));
    expect(Buffer.from(statement).toString('base64')).toBe(trust!.anchorStatementBase64);
    const set = initialAnchorSet(statement, FACTORY_TRUST_ALGS);
    expect(set.version).toBe(1);
    expect([...set.roles.keys()].sort()).toEqual(['author', 'operator', 'revocation', 'root']);
    expect(set.roles.get('root')).toMatchObject({ threshold: 2 });
    expect(set.role('root')).toHaveLength(2);
    const list = verifyTrustRevocationList(
      new Uint8Array(readFileSync(join(factoryDir, 'revocation-list-v1.cbor'))),
      {
        verifiers: set.verifiers('revocation'),
        allowedAlgs: FACTORY_TRUST_ALGS,
        now: Math.floor(Date.now() / 1000),
      },
    );
    expect(list).toMatchObject({ version: 1, entries: [] });
    expect(list.expiresAt - list.issuedAt).toBeGreaterThan(300 * 86_400);
  });

  it("rotor factory init --revocation-days sets the first list's lifetime (bounded)", async () => {
    writeFileSync(join(dir, 'server-ca.pem'), SERVER_CA);
    const init = (sub: string, days: string): Promise<number> =>
      run([
        'factory',
        'init',
        '--dir',
        join(dir, sub),
        '--file-keys',
        '--server-ca',
        join(dir, 'server-ca.pem'),
        '--revocation-days',
        days,
      ]);
    expect(await init('f0', '0')).toBe(2);
    expect(existsSync(join(dir, 'f0', 'factory.json'))).toBe(false);
    expect(await init('f30', '30')).toBe(0);
    const set = initialAnchorSet(
      new Uint8Array(readFileSync(join(dir, 'f30', 'trust-anchors-v1.cbor'))),
      FACTORY_TRUST_ALGS,
    );
    const list = verifyTrustRevocationList(
      new Uint8Array(readFileSync(join(dir, 'f30', 'revocation-list-v1.cbor'))),
      {
        verifiers: set.verifiers('revocation'),
        allowedAlgs: FACTORY_TRUST_ALGS,
        now: Math.floor(Date.now() / 1000),
      },
    );
    expect(list.expiresAt - list.issuedAt).toBe(30 * 86_400 + 60);
  });

  it('an update installs against the provisioned trust; a revoked author key is refused (SIGNER_REVOKED)', async () => {
    const d = await openFactoryDevice({ dir: deviceDir(0) });
    try {
      expect(d.trust).toBeDefined();
      const trust = d.trust!;
      expect(trust.anchors.current.version).toBe(1);
      expect(trust.revocation.list?.version).toBe(1);
      expect(trust.revocation.isFresh()).toBe(true);
      await d.agent.powerOn();
      // No server, no source: the provisioned list is fresh, so nothing needs fetching.
      expect(await d.agent.update(await envelope(6))).toMatchObject({ ok: true });
      // The author alone is not enough (both parties required, RFC 9019 §4).
      expect(await d.agent.update(await envelope(7, false))).toMatchObject({ ok: false });

      // The operator revokes the author key: list v2 (signed by the revocation role = the operator key).
      const set = trust.anchors.current;
      const now = Math.floor(Date.now() / 1000);
      const v2 = await createTrustRevocationList(
        {
          version: 2,
          issuedAt: now - 60,
          expiresAt: now + 86_400,
          entries: [{ kind: RevokedKind.signingKey, id: set.role('author')[0]!.kid, reason: 'test' }],
        },
        operatorSigner(),
      );
      trust.source = { statementsAfter: () => Promise.resolve([]), latest: () => Promise.resolve(v2) };
      // What a check-in answering {anchors: 1, revocation: 2} makes the tracker do.
      expect(await trust.sync({ anchors: 1, revocation: 2 })).toMatchObject({ revocation: 2, errors: [] });
      expect(await d.agent.update(await envelope(8))).toMatchObject({ ok: false, code: 'SIGNER_REVOKED' });
    } finally {
      await d.close();
    }
    // Persisted: the device reopens with list v2.
    const again = await openFactoryDevice({ dir: deviceDir(0) });
    try {
      expect(again.trust?.revocation.list?.version).toBe(2);
    } finally {
      await again.close();
    }
  });

  it('after the provisioned list expires, no update is trusted without a fresh list (TRUST_STALE)', async () => {
    const later = Date.now() + 400 * 86_400_000;
    const d = await openFactoryDevice({ dir: deviceDir(1), now: () => later });
    try {
      const trust = d.trust!;
      expect(trust.revocation.list?.version).toBe(1);
      expect(trust.revocation.isFresh()).toBe(false);
      await d.agent.powerOn();
      // The server has nothing newer: refused, not verified against the stale list.
      trust.source = { statementsAfter: () => Promise.resolve([]), latest: () => Promise.resolve(undefined) };
      expect(await d.agent.update(await envelope(6))).toMatchObject({ ok: false, code: 'TRUST_STALE' });
    } finally {
      await d.close();
    }
  });

  it('the server publishes the profile trust once (publishProfileTrust), through its own checks', async () => {
    const db = await openDatabase({});
    try {
      await migrate(db);
      const ca = await openFactoryCa(factoryDir, () => '');
      const trust = ca.factory.profile.trust!;
      await ca.close();
      expect(await publishProfileTrust(db, trust)).toEqual({ anchors: 1, revocation: 1 });
      expect(await publishProfileTrust(db, trust)).toEqual({ anchors: undefined, revocation: undefined });
      const rows = await db.query<{ a: number; r: number }>(
        `SELECT (SELECT count(*) FROM trust_anchor_statements)::int AS a,
                (SELECT count(*) FROM revocation_lists)::int AS r`,
      );
      expect(rows[0]).toEqual({ a: 1, r: 1 });
    } finally {
      await db.close();
    }
    expect(existsSync(join(factoryDir, 'revocation-list-v1.cbor'))).toBe(true);
  });
});

describe('a factory device takes push with its proxy credential and syncs a new revocation list at once', () => {
  it('operator uploads list v2 → the server nudges over MQTT → the device checks in and fetches it', async () => {
    const admin = `admin_${randomBytes(16).toString('hex')}`;
    const db = await openDatabase({});
    let server: RotorServer | undefined;
    let tracker: StatusTracker | undefined;
    let d: FactoryDevice | undefined;
    try {
      await migrate(db);
      const ca = await openFactoryCa(factoryDir, () => '');
      const trust = ca.factory.profile.trust!;
      try {
        await provisionDevices({
          issuing: ca.issuing,
          root: ca.root,
          profile: {
            ...ca.factory.profile,
            firmware: { envelopeBase64: Buffer.from(await envelope(5)).toString('base64'), sha256: '' },
            antiRollback: {},
          },
          journalPath: join(dir, 'push.journal'),
          count: 1,
          devices: enclaveDevices({ dir: join(dir, 'push-devices') }),
          registry: dbRegistry(db, { station: 'test' }),
        });
      } finally {
        await ca.close();
      }
      await publishProfileTrust(db, trust);
      const serverCert = await selfSignedCert('localhost', { server: true });
      writeFileSync(join(dir, 'server.crt'), serverCert.certPem);
      writeFileSync(join(dir, 'server.key'), serverCert.keyPem, { mode: 0o600 });
      mkdirSync(join(dir, 'data'), { recursive: true });
      const config = loadConfig({
        argv: ['--port', '0', '--device-port', '0', '--mqtt-port', '0', '--log-level', 'silent'],
        env: {
          ROTOR_ADMIN_TOKEN: admin,
          ROTOR_DATA_DIR: join(dir, 'data'),
          ROTOR_TLS_CERT_FILE: join(dir, 'server.crt'),
          ROTOR_TLS_KEY_FILE: join(dir, 'server.key'),
          ROTOR_DEVICE_CA_FILE: join(factoryDir, 'device-ca.pem'),
        },
      });
      server = await startServer(config, { db });

      d = await openFactoryDevice({ dir: join(dir, 'push-devices', '000000') });
      const events: TrackerEvent[] = [];
      const waiters: (() => void)[] = [];
      const hour = 3_600_000;
      tracker = new StatusTracker({
        agent: d.agent,
        server: d.server(server.deviceUrl!, { ca: serverCert.certPem }),
        trust: d.trust!,
        attester: d.attester,
        mqtt: { url: server.mqttUrl! },
        // Check-ins only at start and on a push: the list can only arrive through the nudge.
        interval: { defaultMs: hour, minMs: hour, maxMs: hour },
        onEvent: (e) => {
          events.push(e);
          for (const w of waiters.splice(0)) w();
        },
      });
      /** Resolves once `p` holds for an event seen so far (a liveness bound, not a timing assertion). */
      const seen = (p: (e: TrackerEvent) => boolean): Promise<TrackerEvent> =>
        new Promise((resolve, reject) => {
          const timer = setTimeout(() => {
            reject(new Error(`not seen; events: ${events.map((e) => e.kind).join(', ')}`));
          }, 30_000);
          const look = (): void => {
            const hit = events.find(p);
            if (hit !== undefined) {
              clearTimeout(timer);
              resolve(hit);
            } else waiters.push(look);
          };
          look();
        });
      await tracker.start();
      await seen((e) => e.kind === 'push' && e.why === 'connected');
      expect(d.trust!.revocation.list?.version).toBe(1);

      const now = Math.floor(Date.now() / 1000);
      const v2 = await createTrustRevocationList(
        { version: 2, issuedAt: now - 60, expiresAt: now + 86_400, entries: [] },
        operatorSigner(),
      );
      const res = await fetch(new URL('/v1/revocation-list', server.operatorUrl), {
        method: 'PUT',
        headers: { authorization: `Bearer ${admin}`, 'content-type': 'application/octet-stream' },
        body: v2,
      });
      expect(res.status).toBe(200);
      await seen((e) => e.kind === 'push' && e.why === 'push');
      await seen((e) => e.kind === 'trust' && e.sync.revocation === 2);
      expect(d.trust!.revocation.list?.version).toBe(2);
      expect(events.filter((e) => e.kind === 'error')).toEqual([]);
    } finally {
      await tracker?.stop();
      await d?.close();
      await server?.close();
      await db.close();
    }
  });
});

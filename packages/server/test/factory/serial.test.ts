/**
 * RFC 5280 §4.1.2.2: a CA assigns each certificate a unique serial. Registration refuses a second certificate with an
 * already registered serial (CERT_SERIAL_DUPLICATE, nothing registered, nothing audited), and migration 8's unique
 * index refuses it even when the check is bypassed (a race, a second station writing directly).
 *
 * Group commit: registrations queued while a transaction runs share the next one; a refused device (duplicate
 * serial, duplicate device, refused key) is rolled back alone (a savepoint per device) and neither rolls back nor
 * blocks the others. In a batch, the refused device is wiped and reported, the rest of the batch completes, and a
 * later run retries it.
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, randomBytes, randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import 'reflect-metadata';
import { describe, expect, it } from 'vitest';
import { BACKENDS, createTestDatabase } from '../helpers.ts';
import { Alg, softwareSigner } from '@rotor/cose';
import {
  createDeviceCsr,
  createIssuingCa,
  createRootCa,
  dbRegistry,
  migrate,
  openDatabase,
  provisionDevices,
  toPem,
  ueidUrn,
  verifyAuditLogInDb,
  type CaCert,
  type Db,
  type DeviceFactory,
  type DeviceRegistry,
  type Registration,
} from '../../src/index.ts';

function registration(serial: string, deviceId: string): Registration {
  return {
    deviceId,
    certificate: {
      der: new Uint8Array(randomBytes(64)),
      serial,
      sha256: randomBytes(32).toString('hex'),
      notAfter: new Date(Date.now() + 86_400_000),
    },
    issuer: 'CN=Rotor Factory Issuing CA, O=Rotor',
    identityKeySpki: new Uint8Array(randomBytes(91)),
    keyType: 'P-256',
    deviceClass: 'gateway',
    profile: 'default',
  };
}

describe('issued certificate serials', () => {
  it('a duplicate serial is refused by the registry and by the database', async () => {
    const db = await openDatabase({});
    try {
      await migrate(db);
      const reg = dbRegistry(db, { station: 'test' });
      const serial = randomBytes(16).toString('hex');
      const first = registration(serial, `urn:ietf:params:rats:ueid:${randomUUID()}`);
      expect((await reg.register(first)).created).toBe(true);
      // The same certificate again (rolled forward after a crash) is idempotent.
      expect((await reg.register(first)).created).toBe(false);
      const audits = async (): Promise<number> =>
        Number((await db.query<{ n: string }>('SELECT count(*)::text AS n FROM audit_log'))[0]!.n);
      const before = await audits();
      await expect(
        reg.register(registration(serial.toUpperCase(), `urn:ietf:params:rats:ueid:${randomUUID()}`)),
      ).rejects.toMatchObject({ code: 'CERT_SERIAL_DUPLICATE' });
      expect(await audits()).toBe(before);
      // Bypassing the check: the unique index (migration 8) refuses the row.
      await expect(
        db.query(
          `INSERT INTO devices (id, name, cert_sha256, attributes, created_at_ms) VALUES ($1, $2, $3, $4::jsonb, 0)`,
          [randomUUID(), 'other', randomBytes(32), JSON.stringify({ serial })],
        ),
      ).rejects.toMatchObject({ code: '23505' });
      const n = await db.query<{ n: string }>('SELECT count(*)::text AS n FROM devices');
      expect(n[0]!.n).toBe('1');
    } finally {
      await db.close();
    }
  });
});

/** The database with its transactions counted (to show which registrations shared a group commit). */
function counted(db: Db): { db: Db; transactions: () => number } {
  let n = 0;
  return {
    db: {
      ...db,
      transaction: (fn) => {
        n++;
        return db.transaction(fn);
      },
    },
    transactions: () => n,
  };
}

const urn = (): string => `urn:ietf:params:rats:ueid:${randomUUID()}`;
const devices = async (db: Db): Promise<string[]> =>
  (await db.query<{ name: string }>('SELECT name FROM devices ORDER BY name')).map((r) => r.name);

describe.each(BACKENDS)('a refused device in a group commit (%s)', (backend) => {
  it('fails alone: the other registrations of the same transaction commit', async () => {
    const t = await createTestDatabase(backend);
    const raw = t.db;
    try {
      await migrate(raw);
      const { db, transactions } = counted(raw);
      const reg = dbRegistry(db, { station: 'test' });
      const existing = registration(randomBytes(16).toString('hex'), urn());
      // Occupies the first transaction, so everything below queues into the next one.
      const first = reg.register(existing);
      const good = [0, 1, 2].map(() => registration(randomBytes(16).toString('hex'), urn()));
      const dupSerial = registration(existing.certificate.serial, urn());
      const dupDevice = registration(randomBytes(16).toString('hex'), existing.deviceId);
      const inBatchSerial = registration(good[0]!.certificate.serial.toUpperCase(), urn());
      const badKey = { ...registration(randomBytes(16).toString('hex'), urn()) };
      const settled = await Promise.allSettled([
        first,
        reg.register(good[0]!),
        reg.register(dupSerial),
        reg.register(good[1]!),
        reg.register(dupDevice),
        reg.register(inBatchSerial),
        reg.register({ ...badKey, keyAgreementSpki: new Uint8Array([1, 2, 3]) }),
        reg.register(good[2]!),
      ]);
      // Two transactions: the first registration, then one group commit for the seven others (the bad key is
      // refused before it is queued).
      expect(transactions()).toBe(2);
      const codes = settled.map((r) =>
        r.status === 'fulfilled' ? 'ok' : (r.reason as { code?: string }).code,
      );
      expect(codes).toEqual([
        'ok',
        'ok',
        'CERT_SERIAL_DUPLICATE',
        'ok',
        'ALREADY_EXISTS',
        'CERT_SERIAL_DUPLICATE',
        'DEVICE_KEY_INVALID',
        'ok',
      ]);
      expect(await devices(raw)).toEqual([existing.deviceId, ...good.map((g) => g.deviceId)].sort());
      // One audit entry per registered certificate, the chain intact across the rolled-back savepoints.
      const audits = await raw.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM audit_log WHERE body LIKE '%"certificate.issue"%'`,
      );
      expect(audits[0]!.n).toBe(4);
      expect((await verifyAuditLogInDb(raw)).ok).toBe(true);
    } finally {
      await t.drop();
    }
  });

  it('a unique index firing in the group (a concurrent station) fails only its device', async () => {
    const t = await createTestDatabase(backend);
    try {
      await migrate(t.db);
      // The group look-up is blinded (as if another station registered between look-up and insert): the group's
      // insert hits the unique indexes, and each device is retried alone.
      let blinded = 0;
      const db: Db = {
        ...t.db,
        transaction: (fn) =>
          t.db.transaction((tx) =>
            fn({
              ...tx,
              query: (sql, params) => {
                if (!sql.includes('= ANY(')) return tx.query(sql, params);
                blinded++;
                return Promise.resolve([]);
              },
            }),
          ),
      };
      const reg = dbRegistry(db, { station: 'test' });
      const existing = registration(randomBytes(16).toString('hex'), urn());
      const first = reg.register(existing);
      const good = [0, 1].map(() => registration(randomBytes(16).toString('hex'), urn()));
      const settled = await Promise.allSettled([
        first,
        reg.register(good[0]!),
        reg.register(registration(existing.certificate.serial, urn())),
        reg.register(registration(randomBytes(16).toString('hex'), existing.deviceId)),
        reg.register(good[1]!),
      ]);
      expect(blinded).toBe(2);
      expect(
        settled.map((r) => (r.status === 'fulfilled' ? 'ok' : (r.reason as { code?: string }).code)),
      ).toEqual(['ok', 'ok', 'CERT_SERIAL_DUPLICATE', 'ALREADY_EXISTS', 'ok']);
      expect(await devices(t.db)).toEqual([existing.deviceId, ...good.map((g) => g.deviceId)].sort());
      expect((await verifyAuditLogInDb(t.db)).ok).toBe(true);
    } finally {
      await t.drop();
    }
  });

  it('in a batch: the refused device is wiped and reported, the others complete, a re-run retries it', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'rotor-serial-'));
    const db = await openDatabase({});
    try {
      await migrate(db);
      const key = (): CaCert['key'] => {
        const kp = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
        return {
          signer: softwareSigner(kp.privateKey, Alg.ES256),
          spki: new Uint8Array(kp.publicKey.export({ type: 'spki', format: 'der' })),
          type: 'P-256',
        };
      };
      const notBefore = new Date(Date.now() - 60_000);
      const rk = key();
      const root: CaCert = {
        key: rk,
        cert: await createRootCa(rk, { name: 'CN=Serial Root', validityDays: 30, now: notBefore }),
      };
      const ik = key();
      const issuing: CaCert = {
        key: ik,
        cert: await createIssuingCa(root, ik, {
          name: 'CN=Serial Issuing',
          validityDays: 30,
          now: notBefore,
        }),
      };
      // Device 3 claims the id of a device already registered elsewhere (a cloned fuse).
      const clone = registration(randomBytes(16).toString('hex'), urn());
      const inner = dbRegistry(db, { station: 'test' });
      await inner.register(clone);
      const fuses = new Map<number, string>([[3, clone.deviceId]]);
      const d = (i: number): string => join(dir, `dev-${String(i)}`);
      const fleet: DeviceFactory = {
        open(i) {
          mkdirSync(d(i), { recursive: true });
          const deviceId =
            fuses.get(i) ?? ueidUrn(new Uint8Array([0x01, ...Buffer.from(`device-${String(i)}`)]));
          const keyFile = join(d(i), 'identity.pem');
          return Promise.resolve({
            deviceId,
            createCsr() {
              if (!existsSync(keyFile))
                writeFileSync(
                  keyFile,
                  generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey.export({
                    type: 'pkcs8',
                    format: 'pem',
                  }),
                );
              const priv = createPrivateKey(readFileSync(keyFile));
              const spki = new Uint8Array(createPublicKey(priv).export({ type: 'spki', format: 'der' }));
              return createDeviceCsr(softwareSigner(priv, Alg.ES256), spki, 'P-256', deviceId);
            },
            install(b) {
              writeFileSync(join(d(i), 'bundle.json'), JSON.stringify(b));
              return Promise.resolve();
            },
          });
        },
        discard(i) {
          rmSync(d(i), { recursive: true, force: true });
          return Promise.resolve();
        },
      };
      // Every registration passes through the same group-committing registry.
      const registry: DeviceRegistry = inner;
      const opts = {
        root,
        issuing,
        profile: {
          name: 'p',
          deviceClass: 'gateway',
          keyType: 'P-256' as const,
          validityDays: 30,
          trustAnchors: {
            authorKeyPem: 'a',
            operatorKeyPem: 'o',
            serverTlsCaPem: 's',
            factoryCaPem: toPem(new Uint8Array(root.cert.rawData)),
          },
          firmware: null,
          antiRollback: {},
        },
        journalPath: join(dir, 'batch.journal'),
        count: 8,
        devices: fleet,
        registry,
        concurrency: 8,
      };
      const r = await provisionDevices(opts);
      expect(r.refused).toEqual([expect.objectContaining({ index: 3, code: 'ALREADY_EXISTS' })]);
      expect(r.provisioned).toBe(7);
      expect(r.deviceIds).toHaveLength(7);
      // The refused device is "not started": wiped, nothing of it registered under its certificate.
      expect(existsSync(d(3))).toBe(false);
      for (const i of [0, 1, 2, 4, 5, 6, 7]) expect(existsSync(join(d(i), 'bundle.json'))).toBe(true);
      expect(await devices(db)).toHaveLength(8);
      // The clone is retired; the re-run retries device 3 alone and completes the batch.
      await db.query('DELETE FROM devices WHERE name = $1', [clone.deviceId]);
      const again = await provisionDevices(opts);
      expect(again.refused).toEqual([]);
      expect(again.provisioned).toBe(1);
      expect(again.deviceIds).toHaveLength(8);
      expect(existsSync(join(d(3), 'bundle.json'))).toBe(true);
    } finally {
      await db.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

/**
 * Issue 7 multi-instance correctness: two verifier instances on one PostgreSQL database (each with its own
 * connection pool, each loading the verifier secret itself — attestation/secret.ts, migration 12) accept each
 * other's nonces exactly once, refuse the replay on both, and sign results under one key that a restarted
 * instance keeps. Without a content-key vault the secret lives in the data directory (mode 0600) and survives a
 * restart too.
 */
import { createHash, createPublicKey, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  Alg,
  coseKeyFromKeyObject,
  generateSigningKey,
  softwareSigner,
  verifierFromCoseKey,
} from '@rotor/cose';
import {
  createAttestationToken,
  createRotRecord,
  evidenceClaimsMap,
  rotPublicKey,
  verifyAttestationResult,
} from '@rotor/trust';
import type { Principal } from '../src/auth.ts';
import type { Db } from '../src/db/db.ts';
import { migrate } from '../src/db/migrations.ts';
import { rememberFingerprint } from '../src/device-auth.ts';
import { vaultFromHex } from '../src/keys.ts';
import { createAttestationService, type AttestationService } from '../src/attestation/service.ts';
import { loadVerifierSecret, SECRET_FILE } from '../src/attestation/secret.ts';
import { createTestDatabase, type TestDatabase } from './helpers.ts';

const KEK = randomBytes(32).toString('hex');

describe('verifier instances on one database (issue 7)', () => {
  let t: TestDatabase & { db: Db };
  let dbB: Db;
  const dir = mkdtempSync(join(tmpdir(), 'rotor-verifier-'));
  const deviceId = `dev-${randomBytes(4).toString('hex')}`;
  const device: Principal = { kind: 'device', deviceId, name: deviceId };
  const ueid = new Uint8Array([0x01, ...randomBytes(16)]);
  const rot = generateSigningKey(Alg.ES256);
  const pub = rotPublicKey(coseKeyFromKeyObject(rot.publicKey), Alg.ES256);
  const signer = softwareSigner(rot.privateKey, Alg.ES256, pub.kid);

  const instance = async (db: Db): Promise<AttestationService> =>
    createAttestationService(db, {
      secret: await loadVerifierSecret(db, { vault: vaultFromHex(KEK), dataDir: dir }),
    });
  const evidence = (nonce: Uint8Array): Promise<Uint8Array> =>
    createAttestationToken(
      {
        nonce,
        ueid,
        iat: Math.floor(Date.now() / 1000),
        rotIndex: 0,
        claims: evidenceClaimsMap({
          oemid: new Uint8Array([0, 1, 2]),
          hwmodel: new TextEncoder().encode('m'),
          swversion: '1',
          oemboot: true,
          dbgstat: 3,
          uptime: 1,
          components: [
            { type: 'fw', digest: new Uint8Array(32).fill(1), version: '1', signer: new Uint8Array(32) },
          ],
        }),
      },
      signer,
    );
  const resultVerifies = (svc: AttestationService, result: Uint8Array): boolean => {
    const key = coseKeyFromKeyObject(createPublicKey(svc.resultPublicKeyPem()));
    return (
      verifyAttestationResult(result, verifierFromCoseKey({ ...key, alg: Alg.ES256 }), new Set([Alg.ES256]))
        .deviceId === deviceId
    );
  };

  beforeAll(async () => {
    t = await createTestDatabase('postgres');
    await migrate(t.db);
    dbB = await t.open();
    await t.db.query('INSERT INTO devices (id, name, cert_sha256, created_at_ms) VALUES ($1, $2, $3, 0)', [
      deviceId,
      deviceId,
      createHash('sha256').update(deviceId).digest(),
    ]);
  }, 60_000);
  afterAll(async () => {
    await t.drop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('a nonce issued by A is accepted once by B; the replay is refused on both; one result key, kept across a restart', async () => {
    const [a, b] = await Promise.all([instance(t.db), instance(dbB)]); // concurrent first start: one secret
    expect(a.resultPublicKeyPem()).toBe(b.resultPublicKeyPem());
    const record = await createRotRecord(
      { index: 0, publicKey: pub, alg: Alg.ES256, previous: null, time: 1_700_000_000 },
      signer,
    );
    await a.reportChain(device, { ueid, records: [record] });

    const { nonce } = await a.issueNonce(device);
    const token = await evidence(nonce);
    const first = await b.appraise(device, token);
    expect(first.claims.nonce).toMatchObject({ status: 'affirming' });
    expect(first.claims.signature).toMatchObject({ status: 'affirming' });
    expect(first.claims.profile).toMatchObject({ status: 'affirming' });
    // The result B signed verifies under A's published key (and B's: the same).
    expect(resultVerifies(a, first.result)).toBe(true);
    for (const svc of [a, b]) {
      const replay = await svc.appraise(device, token);
      expect(replay.status).toBe('contraindicated');
      expect(replay.claims.nonce?.status).toBe('contraindicated');
      expect(replay.claims.nonce?.reason).toMatch(/used|replay/i);
    }

    // A restart (a new instance, a new pool): the same key, and nonces issued before it still verify.
    const { nonce: n2 } = await b.issueNonce(device);
    const dbC = await t.open();
    const c = await instance(dbC);
    expect(c.resultPublicKeyPem()).toBe(a.resultPublicKeyPem());
    const after = await c.appraise(device, await evidence(n2));
    expect(after.claims.nonce).toMatchObject({ status: 'affirming' });
    expect(resultVerifies(b, after.result)).toBe(true);

    // A different key-encryption key cannot unwrap the shared secret: refused at start, not silently diverged.
    await expect(
      loadVerifierSecret(t.db, { vault: vaultFromHex(randomBytes(32).toString('hex')), dataDir: dir }),
    ).rejects.toMatchObject({ code: 'CONFIG_INVALID' });
  });

  it('nonces in a batch are each single use, on any instance; the batch size is bounded', async () => {
    const [a, b] = await Promise.all([instance(t.db), instance(dbB)]);
    const { nonces } = await a.issueNonces(device, 3);
    expect(new Set(nonces.map((n) => Buffer.from(n).toString('hex'))).size).toBe(3);
    for (const [i, n] of nonces.entries()) {
      const token = await evidence(n);
      const svc = i % 2 === 0 ? a : b;
      expect((await svc.appraise(device, token)).claims.nonce).toMatchObject({ status: 'affirming' });
      expect((await (i % 2 === 0 ? b : a).appraise(device, token)).claims.nonce).toMatchObject({
        status: 'contraindicated',
      });
    }
    // Another device cannot use them (device tag).
    const other: Principal = { kind: 'device', deviceId: 'someone-else', name: 'x' };
    const theirs = (await a.issueNonces(other, 1)).nonces[0]!;
    expect((await b.appraise(device, await evidence(theirs))).claims.nonce?.reason).toMatch(/another device/);
    for (const count of [0, 65, 1.5])
      await expect(a.issueNonces(device, count)).rejects.toMatchObject({
        code: 'REQUEST_INVALID',
      });
  });

  it('evidence is refused for a disabled device or a replaced certificate (the batch checks the standing)', async () => {
    const a = await instance(t.db);
    const { nonces } = await a.issueNonces(device, 3);
    await t.db.query('UPDATE devices SET enabled = false WHERE id = $1', [deviceId]);
    await expect(a.appraise(device, await evidence(nonces[0]!))).rejects.toMatchObject({
      code: 'DEVICE_DISABLED',
    });
    await t.db.query('UPDATE devices SET enabled = true WHERE id = $1', [deviceId]);
    // Authenticated by a certificate that is no longer the registered one.
    const stale: Principal = { kind: 'device', deviceId, name: deviceId };
    rememberFingerprint(stale, new Uint8Array(32).fill(9));
    await expect(a.appraise(stale, await evidence(nonces[1]!))).rejects.toMatchObject({
      code: 'DEVICE_UNKNOWN',
    });
    // In good standing with the registered certificate: appraised.
    const good: Principal = { kind: 'device', deviceId, name: deviceId };
    rememberFingerprint(good, createHash('sha256').update(deviceId).digest());
    expect((await a.appraise(good, await evidence(nonces[2]!))).claims.nonce).toMatchObject({
      status: 'affirming',
    });
  });

  it('without a vault the secret is a 0600 file in the data directory, the same after a restart', async () => {
    const d = mkdtempSync(join(tmpdir(), 'rotor-verifier-file-'));
    try {
      const s1 = await loadVerifierSecret(t.db, { dataDir: d });
      expect(statSync(join(d, SECRET_FILE)).mode & 0o777).toBe(0o600);
      const s2 = await loadVerifierSecret(t.db, { dataDir: d });
      expect(Buffer.from(s2).equals(Buffer.from(s1))).toBe(true);
      const x = createAttestationService(t.db, { secret: s1 });
      const y = createAttestationService(t.db, { secret: s2 });
      expect(x.resultPublicKeyPem()).toBe(y.resultPublicKeyPem());
    } finally {
      rmSync(d, { recursive: true, force: true });
    }
  });
});

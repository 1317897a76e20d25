/**
 * Registration carries the device's other public keys (issue 6): the key-agreement key (ECDH-ES+A128KW content-key
 * wraps), the report key with its algorithm, and — straight into the database — the pinned RoT chain; keys are
 * checked before anything is written. httpRegistry registers over the operator API (POST /v1/devices) for a
 * factory station away from the database, idempotently.
 */
import { createHash, generateKeyPairSync, randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { coseKeyFromKeyObject, softwareSigner } from '@rotor/cose';
import { createRotRecord, rotPublicKey } from '@rotor/trust';
import { dbRegistry, httpRegistry, ueidUrn, type Registration } from '../../src/index.ts';
import { ADMIN_TOKEN, startFixture, type Fixture } from '../fixtures.ts';
import { selfSignedCert } from '../helpers.ts';

let f: Fixture;

beforeAll(async () => {
  f = await startFixture('pglite');
});

afterAll(async () => {
  await f.close();
});

const spki = (k: { publicKey: { export(o: { type: 'spki'; format: 'der' }): Buffer } }): Uint8Array =>
  new Uint8Array(k.publicKey.export({ type: 'spki', format: 'der' }));

async function rotRecord(): Promise<Uint8Array> {
  const kp = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  const key = coseKeyFromKeyObject(kp.publicKey);
  const kid = rotPublicKey(key, -7).kid!;
  return createRotRecord(
    { index: 0, publicKey: key, alg: -7, previous: null, time: Math.floor(Date.now() / 1000) },
    softwareSigner(kp.privateKey, -7, kid),
  );
}

function registration(o: Partial<Registration> = {}): Registration {
  const ueid = new Uint8Array([1, ...randomBytes(16)]);
  const der = new Uint8Array(randomBytes(300));
  return {
    deviceId: ueidUrn(ueid),
    certificate: {
      der,
      serial: randomBytes(16).toString('hex'),
      sha256: Buffer.from(randomBytes(32)).toString('hex'),
      notAfter: new Date(Date.now() + 86_400_000),
    },
    issuer: 'CN=Test Issuing',
    identityKeySpki: spki(generateKeyPairSync('ec', { namedCurve: 'prime256v1' })),
    keyType: 'P-256',
    deviceClass: 'reg-test',
    profile: 'default',
    keyAgreementSpki: spki(generateKeyPairSync('ec', { namedCurve: 'prime256v1' })),
    reportKeySpki: spki(generateKeyPairSync('ec', { namedCurve: 'prime256v1' })),
    reportKeyAlg: -7,
    ...o,
  };
}

interface Row {
  id: string;
  ka_spki: Uint8Array | null;
  report_key_spki: Uint8Array | null;
  report_key_alg: number | null;
}

describe('registration with the device keys', () => {
  it('dbRegistry stores the key-agreement and report keys and pins the RoT chain', async () => {
    const r = registration({ rotRecords: [await rotRecord()] });
    const reg = dbRegistry(f.server.db);
    const a = await reg.register(r);
    expect(a.created).toBe(true);
    const row = (
      await f.server.db.query<Row>(
        'SELECT id, ka_spki, report_key_spki, report_key_alg FROM devices WHERE id = $1',
        [a.id],
      )
    )[0]!;
    expect(Buffer.from(row.ka_spki!)).toEqual(Buffer.from(r.keyAgreementSpki!));
    expect(Buffer.from(row.report_key_spki!)).toEqual(Buffer.from(r.reportKeySpki!));
    expect(row.report_key_alg).toBe(-7);
    const rot = await f.server.db.query<{ records: Uint8Array[] }>(
      'SELECT records FROM device_rot WHERE device_id = $1',
      [a.id],
    );
    expect(rot).toHaveLength(1);
    expect(Buffer.from(rot[0]!.records[0]!)).toEqual(Buffer.from(r.rotRecords![0]!));
    // Idempotent (a roll-forward after a crash).
    expect(await reg.register(r)).toEqual({ id: a.id, created: false });
  });

  it('refuses keys that do not fit, before anything is written', async () => {
    const reg = dbRegistry(f.server.db);
    const before = (await f.server.db.query<{ n: number }>('SELECT count(*)::int AS n FROM devices'))[0]!.n;
    const ed = spki(generateKeyPairSync('ed25519'));
    await expect(reg.register(registration({ keyAgreementSpki: ed }))).rejects.toMatchObject({
      code: 'DEVICE_KEY_INVALID',
    });
    await expect(reg.register(registration({ reportKeySpki: ed, reportKeyAlg: -7 }))).rejects.toMatchObject({
      code: 'DEVICE_KEY_INVALID',
    });
    await expect(reg.register(registration({ reportKeyAlg: undefined }))).rejects.toMatchObject({
      code: 'DEVICE_KEY_INVALID',
    });
    await expect(
      reg.register(registration({ keyAgreementSpki: new Uint8Array([0x30, 0x03, 0x02, 0x01, 0x00]) })),
    ).rejects.toMatchObject({ code: 'DEVICE_KEY_INVALID' });
    const bad = await rotRecord();
    bad[bad.length - 1]! ^= 1;
    await expect(reg.register(registration({ rotRecords: [bad] }))).rejects.toMatchObject({
      code: 'DEVICE_KEY_INVALID',
    });
    // A good registration in the same group commit is not affected by a bad one.
    const [ok, no] = await Promise.allSettled([
      reg.register(registration()),
      reg.register(registration({ keyAgreementSpki: ed })),
    ]);
    expect(ok.status).toBe('fulfilled');
    expect(no.status).toBe('rejected');
    const after = (await f.server.db.query<{ n: number }>('SELECT count(*)::int AS n FROM devices'))[0]!.n;
    expect(after).toBe(before + 1);
  });

  it('httpRegistry registers over the operator API, with keys, idempotently', async () => {
    const reg = httpRegistry(f.server.operatorUrl, ADMIN_TOKEN);
    // The operator API takes a PEM certificate: use a real one.
    const cert = await selfSignedCert('http-registered');
    const der = new Uint8Array(
      Buffer.from(cert.certPem.replace(/-----(BEGIN|END) CERTIFICATE-----|\s/g, ''), 'base64'),
    );
    const r = registration({
      certificate: {
        der,
        serial: randomBytes(16).toString('hex'),
        sha256: createHash('sha256').update(der).digest('hex'),
        notAfter: new Date(Date.now() + 86_400_000),
      },
    });
    const a = await reg.register(r);
    expect(a.created).toBe(true);
    const info = await f.admin.get(`/v1/devices/${a.id}`);
    expect(info.json()).toMatchObject({
      name: r.deviceId,
      group: 'reg-test',
      keyAgreement: 'P-256',
      reportKeyAlg: 'ES256',
      certSha256: r.certificate.sha256,
      attributes: { profile: 'default', serial: r.certificate.serial },
    });
    expect(await reg.register(r)).toEqual({ id: a.id, created: false });
    await expect(
      httpRegistry(f.server.operatorUrl, 'rot_bad_token').register(registration()),
    ).rejects.toMatchObject({ code: 'AUTH_INVALID' });
  });
});

/**
 * RFC 5280 §4.1.2.2: a CA assigns each certificate a unique serial. Registration refuses a second certificate with an
 * already registered serial (CERT_SERIAL_DUPLICATE, nothing registered, nothing audited), and migration 8's unique
 * index refuses it even when the check is bypassed (a race, a second station writing directly).
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { dbRegistry, migrate, openDatabase, type Registration } from '../../src/index.ts';

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

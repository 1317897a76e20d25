import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  appendAudit,
  canonicalJson,
  chainHash,
  GENESIS_HASH,
  migrate,
  MIGRATIONS,
  readAuditLog,
  verifyAuditLog,
  verifyAuditLogInDb,
  type AuditEntry,
  type Db,
} from '../src/index.ts';
import { DEVICE_STANDING_CHANNEL } from '../src/device-auth.ts';
import { BACKENDS, createTestDatabase, type TestDatabase } from './helpers.ts';

describe('canonical JSON and the pure chain verifier', () => {
  it('sorts keys recursively and refuses non-finite numbers', () => {
    expect(canonicalJson({ b: 1, a: [{ d: null, c: 'x' }] })).toBe('{"a":[{"c":"x","d":null}],"b":1}');
    expect(() => canonicalJson({ n: Number.NaN })).toThrow();
  });

  const chain = (n: number): AuditEntry[] => {
    const out: AuditEntry[] = [];
    let prev = GENESIS_HASH;
    for (let seq = 1; seq <= n; seq++) {
      const body = canonicalJson({ seq, at: 't', actor: 'a', action: 'x', subject: 's', details: {} });
      const hash = chainHash(prev, body);
      out.push({ seq, body, prevHash: prev, hash });
      prev = hash;
    }
    return out;
  };

  it('accepts an intact chain and reports its head', async () => {
    const c = chain(5);
    const r = await verifyAuditLog(c);
    expect(r).toMatchObject({
      ok: true,
      count: 5,
      head: { seq: 5, hash: Buffer.from(c[4]!.hash).toString('hex') },
    });
    expect(await verifyAuditLog([])).toEqual({ ok: true, count: 0, head: undefined });
  });

  it('detects an edited body, a recomputed hash, a deleted entry, a deleted first entry and a truncated tail', async () => {
    const c = chain(5);
    const edited = c.map((e) => (e.seq === 3 ? { ...e, body: e.body.replace('"x"', '"y"') } : e));
    expect(await verifyAuditLog(edited)).toMatchObject({ ok: false, seq: 3 });
    // The attacker recomputes entry 3's hash: entry 4's prev_hash no longer matches.
    const rehashed = edited.map((e) => (e.seq === 3 ? { ...e, hash: chainHash(e.prevHash, e.body) } : e));
    expect(await verifyAuditLog(rehashed)).toMatchObject({ ok: false, seq: 4 });
    expect(await verifyAuditLog(c.filter((e) => e.seq !== 2))).toMatchObject({ ok: false, seq: 2 });
    expect(await verifyAuditLog(c.slice(1))).toMatchObject({ ok: false, seq: 1 });
    const anchor = { seq: 5, hash: Buffer.from(c[4]!.hash).toString('hex') };
    expect(await verifyAuditLog(c, { anchor })).toMatchObject({ ok: true });
    expect(await verifyAuditLog(c.slice(0, 4), { anchor })).toMatchObject({ ok: false, seq: 5 });
  });
});

describe.each(BACKENDS)('storage on %s', (backend) => {
  let t: TestDatabase & { db: Db };
  beforeAll(async () => {
    t = await createTestDatabase(backend);
  });
  afterAll(async () => {
    await t.drop();
  });

  it('migrates once, idempotently, and records every version', async () => {
    expect(await migrate(t.db)).toEqual(MIGRATIONS.map((m) => m.version));
    expect(await migrate(t.db)).toEqual([]);
    const rows = await t.db.query<{ version: number }>(
      'SELECT version FROM schema_migrations ORDER BY version',
    );
    expect(rows.map((r) => r.version)).toEqual(MIGRATIONS.map((m) => m.version));
  });

  it('refuses to start on a migration edited after it was applied', async () => {
    const edited = MIGRATIONS.map((m) => (m.version === 1 ? { ...m, sql: `${m.sql}\n-- edited` } : m));
    await expect(migrate(t.db, edited)).rejects.toMatchObject({ code: 'DB_MIGRATION_MISMATCH' });
    await expect(migrate(t.db, MIGRATIONS.slice(0, 1))).rejects.toMatchObject({
      code: 'DB_MIGRATION_MISMATCH',
    });
  });

  it('parses int8 as number and bytea as Uint8Array on this engine', async () => {
    const [r] = await t.db.query<{ n: number; b: Uint8Array }>(
      "SELECT 9007199254740991::bigint AS n, '\\x0102'::bytea AS b",
    );
    expect(r!.n).toBe(9007199254740991);
    expect(r!.b).toBeInstanceOf(Uint8Array);
    expect([...r!.b]).toEqual([1, 2]);
    await expect(t.db.query('SELECT 9007199254740993::bigint AS n')).rejects.toThrow();
  });

  it('rolls back a failed transaction completely', async () => {
    await expect(
      t.db.transaction(async (tx) => {
        await tx.query(
          "INSERT INTO author_keys (id, name, alg, spki, created_at_ms) VALUES ('k', 'k', -7, '\\x01', 1)",
        );
        throw new Error('boom');
      }),
    ).rejects.toThrow('boom');
    expect(await t.db.query("SELECT id FROM author_keys WHERE id = 'k'")).toEqual([]);
  });

  it('keeps the audit log append-only and detects edits and deletions made around the trigger', async () => {
    for (let i = 0; i < 6; i++) {
      await t.db.transaction((tx) =>
        appendAudit(tx, { actor: 'test', action: 'x.do', subject: `s${i}`, details: { i } }),
      );
    }
    const ok = await verifyAuditLogInDb(t.db);
    expect(ok).toMatchObject({ ok: true, count: 6 });
    await expect(t.db.query("UPDATE audit_log SET body = 'x' WHERE seq = 2")).rejects.toThrow(/append-only/);
    await expect(t.db.query('DELETE FROM audit_log WHERE seq = 2')).rejects.toThrow(/append-only/);
    await expect(t.db.query('TRUNCATE audit_log')).rejects.toThrow(/append-only/);

    // A database superuser can disable the trigger: verification still finds the tampering.
    const head = ok.ok ? ok.head! : undefined;
    await t.db.exec('ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only');
    await t.db.query(`UPDATE audit_log SET body = replace(body, '"i":2', '"i":7') WHERE seq = 3`);
    expect(await verifyAuditLogInDb(t.db)).toMatchObject({ ok: false, seq: 3 });
    const entries: AuditEntry[] = [];
    for await (const e of readAuditLog(t.db)) entries.push(e);
    // restore the body, then delete an entry
    await t.db.query(`UPDATE audit_log SET body = replace(body, '"i":7', '"i":2') WHERE seq = 3`);
    expect(await verifyAuditLogInDb(t.db)).toMatchObject({ ok: true });
    await t.db.query('DELETE FROM audit_log WHERE seq = 4');
    expect(await verifyAuditLogInDb(t.db)).toMatchObject({ ok: false, seq: 4 });
    await t.db.query('INSERT INTO audit_log (seq, body, prev_hash, hash) VALUES ($1, $2, $3, $4)', [
      4,
      entries[3]!.body,
      entries[3]!.prevHash,
      entries[3]!.hash,
    ]);
    expect(await verifyAuditLogInDb(t.db, { anchor: head! })).toMatchObject({ ok: true });
    // truncating the tail is only visible against an anchor
    await t.db.query('DELETE FROM audit_log WHERE seq = 6');
    expect(await verifyAuditLogInDb(t.db)).toMatchObject({ ok: true, count: 5 });
    expect(await verifyAuditLogInDb(t.db, { anchor: head! })).toMatchObject({ ok: false, seq: 6 });
    await t.db.exec('ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only');
  });
});

describe('migrations under the advisory lock (postgres)', () => {
  it('two instances migrating the same database at once apply each migration exactly once', async () => {
    const t = await createTestDatabase('postgres');
    try {
      const other = await t.open();
      const [a, b] = await Promise.all([migrate(t.db), migrate(other)]);
      expect([...a, ...b].sort((x, y) => x - y)).toEqual(MIGRATIONS.map((m) => m.version));
      const rows = await t.db.query<{ n: number }>('SELECT count(*)::int AS n FROM schema_migrations');
      expect(rows[0]!.n).toBe(MIGRATIONS.length);
    } finally {
      await t.drop();
    }
  });
});

describe('device standing notifications (migration 11, postgres)', () => {
  it('a change of enabled, certificate or name notifies at commit; last-seen and rolled-back changes do not', async () => {
    const t = await createTestDatabase('postgres');
    try {
      await migrate(t.db);
      const heard: string[] = [];
      const states: boolean[] = [];
      const l = t.db.listen!(DEVICE_STANDING_CHANNEL, {
        notify: (p) => heard.push(p),
        connected: (up) => states.push(up),
      });
      // connected: the sync round trip succeeds once the LISTEN is in place
      for (let i = 0; i < 100 && !states.includes(true); i++) await new Promise((r) => setTimeout(r, 20));
      expect(states).toEqual([true]);
      const other = await t.open();
      await other.query(
        "INSERT INTO devices (id, name, cert_sha256, created_at_ms) VALUES ('d1', 'd1', sha256('\\x01'), 0)",
      );
      await l.sync();
      expect(heard).toHaveLength(0);
      await other.query("UPDATE devices SET last_seen_ms = 5 WHERE id = 'd1'");
      await l.sync();
      expect(heard).toHaveLength(0);
      await other.query("UPDATE devices SET enabled = false WHERE id = 'd1'");
      await l.sync();
      expect(heard).toHaveLength(1);
      await expect(
        other.transaction(async (tx) => {
          await tx.query("UPDATE devices SET cert_sha256 = sha256('\\x02') WHERE id = 'd1'");
          throw new Error('rolled back');
        }),
      ).rejects.toThrow('rolled back');
      await l.sync();
      expect(heard).toHaveLength(1);
      await other.query("UPDATE devices SET cert_sha256 = sha256('\\x02'), name = 'd1b' WHERE id = 'd1'");
      await other.query("DELETE FROM devices WHERE id = 'd1'");
      await l.sync();
      expect(heard).toHaveLength(3);
      await l.stop();
      expect(states).toEqual([true, false]);
      await expect(l.sync()).rejects.toMatchObject({ code: 'DB_UNAVAILABLE' });
    } finally {
      await t.drop();
    }
  });

  it('the report and delete-guard lookups by device use rollout_devices_device', async () => {
    const t = await createTestDatabase('postgres');
    try {
      await migrate(t.db);
      const plan = await t.db.transaction(async (tx) => {
        await tx.exec('SET LOCAL enable_seqscan = off');
        return tx.query<{ 'QUERY PLAN': string }>(
          'EXPLAIN SELECT 1 FROM rollout_devices WHERE device_id = $1 ORDER BY updated_at_ms DESC',
          ['d'],
        );
      });
      expect(plan.map((r) => r['QUERY PLAN']).join('\n')).toMatch(/rollout_devices_device/);
    } finally {
      await t.drop();
    }
  });
});

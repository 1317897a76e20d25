/**
 * Versioned schema migrations. Each runs in its own transaction; all of them run under one session-level
 * advisory lock so that several instances starting together on one PostgreSQL migrate exactly once. An applied
 * migration whose SQL has changed since is refused (DB_MIGRATION_MISMATCH): migrations are append-only.
 */
import { createHash } from 'node:crypto';
import { ServerError } from '../errors.ts';
import type { Db } from './db.ts';
import { DEVICE_STANDING_CHANNEL } from '../device-auth.ts';
import {
  ATTESTATION_MIGRATION_SQL,
  TRUST_DISTRIBUTION_MIGRATION_SQL,
  VERIFIER_SECRET_MIGRATION_SQL,
} from '../attestation/schema.ts';
import {
  CAPABILITY_MIGRATION_SQL,
  CAPABILITY_REPORT_MIGRATION_SQL,
  CAPABILITY_ROLLOUT_MIGRATION_SQL,
} from '../capabilities/schema.ts';

export interface Migration {
  readonly version: number;
  readonly name: string;
  readonly sql: string;
}

/** Advisory lock key for migrations ('rotormig' as int64). */
export const MIGRATION_LOCK_KEY = 0x726f746f726d6967n;
/**
 * Serializes inserts into rollout_devices (shared) with deletes and key changes of the devices and rollouts they
 * reference (exclusive): migration 9's set-based reference checks.
 */
export const ROLLOUT_REFS_LOCK_KEY = 0x726f746f72726566n; // 'rotorref'

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'tokens, audit log, devices, author keys',
    sql: `
CREATE TABLE api_tokens (
  id            text PRIMARY KEY,
  name          text NOT NULL,
  role          text NOT NULL CHECK (role IN ('author', 'operator', 'admin', 'auditor')),
  secret_sha256 bytea NOT NULL CHECK (octet_length(secret_sha256) = 32),
  created_at_ms bigint NOT NULL,
  created_by    text NOT NULL,
  revoked_at_ms bigint
);

CREATE TABLE audit_log (
  seq       bigint PRIMARY KEY CHECK (seq >= 1),
  body      text NOT NULL,
  prev_hash bytea NOT NULL CHECK (octet_length(prev_hash) = 32),
  hash      bytea NOT NULL UNIQUE CHECK (octet_length(hash) = 32)
);
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'audit_log is append-only';
END
$$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_log
  FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();

CREATE TABLE devices (
  id            text PRIMARY KEY,
  name          text NOT NULL UNIQUE,
  cert_sha256   bytea NOT NULL UNIQUE CHECK (octet_length(cert_sha256) = 32),
  enabled       boolean NOT NULL DEFAULT true,
  device_group  text,
  tags          text[] NOT NULL DEFAULT '{}',
  attributes    jsonb NOT NULL DEFAULT '{}',
  created_at_ms bigint NOT NULL,
  last_seen_ms  bigint
);
CREATE INDEX devices_group ON devices (device_group);
CREATE INDEX devices_tags ON devices USING gin (tags);

CREATE TABLE author_keys (
  id            text PRIMARY KEY,
  name          text NOT NULL UNIQUE,
  alg           integer NOT NULL,
  spki          bytea NOT NULL UNIQUE,
  created_at_ms bigint NOT NULL,
  revoked_at_ms bigint
);
`,
  },
  {
    version: 2,
    name: 'content-addressed blobs, releases',
    sql: `
CREATE TABLE blobs (
  sha256        bytea PRIMARY KEY CHECK (octet_length(sha256) = 32),
  size          bigint NOT NULL CHECK (size >= 0),
  data          bytea NOT NULL,
  created_at_ms bigint NOT NULL
);
-- Uncompressed out-of-line storage: substring() reads only the TOAST chunks a Range request needs.
ALTER TABLE blobs ALTER COLUMN data SET STORAGE EXTERNAL;

CREATE TABLE releases (
  id              text PRIMARY KEY,
  envelope_sha256 bytea NOT NULL UNIQUE CHECK (octet_length(envelope_sha256) = 32),
  envelope        bytea NOT NULL,
  sequence_number numeric(20, 0) NOT NULL,
  author_key_id   text NOT NULL REFERENCES author_keys (id),
  uploaded_by     text NOT NULL,
  status          text NOT NULL DEFAULT 'uploaded' CHECK (status IN ('uploaded', 'approved', 'withdrawn')),
  created_at_ms   bigint NOT NULL
);
CREATE TABLE release_payloads (
  release_id text NOT NULL REFERENCES releases (id),
  sha256     bytea NOT NULL REFERENCES blobs (sha256),
  PRIMARY KEY (release_id, sha256)
);
CREATE INDEX release_payloads_sha256 ON release_payloads (sha256);
`,
  },
  {
    version: 3,
    name: 'rollouts, per-device rollout state, device history',
    sql: `
ALTER TABLE releases ADD COLUMN manifest_digest bytea;
CREATE INDEX releases_manifest_digest ON releases (manifest_digest);

CREATE TABLE rollouts (
  id                  text PRIMARY KEY,
  name                text NOT NULL,
  release_id          text NOT NULL REFERENCES releases (id),
  state               text NOT NULL CHECK (state IN ('active', 'paused', 'cancelled', 'completed')),
  target              jsonb NOT NULL,
  phases              jsonb NOT NULL,
  current_phase       integer NOT NULL DEFAULT 0,
  phase_started_at_ms bigint NOT NULL,
  pause_reason        text,
  created_by          text NOT NULL,
  created_at_ms       bigint NOT NULL,
  updated_at_ms       bigint NOT NULL
);
CREATE INDEX rollouts_state ON rollouts (state);

CREATE TABLE rollout_devices (
  rollout_id    text NOT NULL REFERENCES rollouts (id),
  device_id     text NOT NULL REFERENCES devices (id),
  phase         integer NOT NULL,
  state         text NOT NULL CHECK (state IN ('pending', 'in_progress', 'succeeded', 'failed', 'timed_out', 'cancelled')),
  active        boolean NOT NULL,
  updated_at_ms bigint NOT NULL,
  PRIMARY KEY (rollout_id, device_id)
);
-- At most one active rollout per device, enforced by the database (two instances cannot double-assign).
CREATE UNIQUE INDEX rollout_devices_one_active ON rollout_devices (device_id) WHERE active;
CREATE INDEX rollout_devices_phase_state ON rollout_devices (rollout_id, phase, state);

CREATE TABLE device_events (
  id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  device_id  text NOT NULL,
  rollout_id text,
  at_ms      bigint NOT NULL,
  kind       text NOT NULL,
  details    jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX device_events_device ON device_events (device_id, id);
CREATE INDEX device_events_rollout ON device_events (rollout_id, id);
`,
  },
  {
    version: 4,
    name: 'device keys, per-device encryption (content keys, ciphertexts, per-device envelopes)',
    sql: `
-- Key-agreement public key (SPKI DER, P-256 or X25519) for ECDH-ES recipients, or a per-device A128KW KEK stored
-- wrapped under the content-key vault; the public key that verifies the device's signed SUIT reports.
ALTER TABLE devices ADD COLUMN ka_spki bytea;
ALTER TABLE devices ADD COLUMN kek_wrapped bytea;
ALTER TABLE devices ADD COLUMN report_key_spki bytea;
ALTER TABLE devices ADD COLUMN report_key_alg integer;

-- One row per approved release: the content key, wrapped under the vault (never stored in clear).
CREATE TABLE release_keys (
  release_id        text PRIMARY KEY REFERENCES releases (id),
  content_alg       integer NOT NULL,
  cek_wrapped       bytea NOT NULL,
  operator_kid      bytea NOT NULL,
  cosigned_envelope bytea NOT NULL,
  approved_by       text NOT NULL,
  approved_at_ms    bigint NOT NULL
);
-- The ciphertext of each encrypted component, stored once as a content-addressed blob.
CREATE TABLE release_ciphertexts (
  release_id        text NOT NULL REFERENCES releases (id),
  component_index   integer NOT NULL,
  component_id      bytea NOT NULL,
  plaintext_sha256  bytea NOT NULL,
  ciphertext_sha256 bytea NOT NULL REFERENCES blobs (sha256),
  iv                bytea NOT NULL,
  PRIMARY KEY (release_id, component_index)
);
CREATE INDEX release_ciphertexts_sha256 ON release_ciphertexts (ciphertext_sha256);
-- The operator-signed envelope of each device (its own key wrap), built on first request and kept.
CREATE TABLE device_envelopes (
  release_id      text NOT NULL REFERENCES releases (id),
  device_id       text NOT NULL REFERENCES devices (id),
  envelope        bytea NOT NULL,
  manifest_digest bytea NOT NULL,
  created_at_ms   bigint NOT NULL,
  PRIMARY KEY (release_id, device_id)
);
CREATE INDEX device_envelopes_digest ON device_envelopes (manifest_digest);
`,
  },
  {
    version: 5,
    name: 'attestation, RoT orchestration, reference values, policies',
    sql: ATTESTATION_MIGRATION_SQL,
  },
  {
    version: 6,
    name: 'trust-anchor statements, revocation lists, device policy state',
    sql: TRUST_DISTRIBUTION_MIGRATION_SQL,
  },
  {
    version: 7,
    name: 'capability modules: catalog, capability manifests, module revocation lists',
    sql: CAPABILITY_MIGRATION_SQL,
  },
  {
    version: 8,
    name: 'issued device certificate serials are unique',
    // RFC 5280 §4.1.2.2: a CA MUST assign a unique serial to each certificate it issues. All device certificates
    // come from the factory issuing CA, so the serial (hex, recorded in the device row at registration) is unique
    // across the registry; this index is the backstop behind the registration's own check (a race, a second
    // factory station sharing the database, or a broken serial source).
    sql: `
CREATE UNIQUE INDEX devices_cert_serial ON devices (lower(attributes->>'serial'))
  WHERE attributes->>'serial' IS NOT NULL;
`,
  },
  {
    version: 9,
    name: 'rollout_devices references checked once per statement',
    // Planning a rollout inserts one rollout_devices row per target device (a million for a large fleet). The two
    // foreign keys checked every row separately (a query and a row lock on the rollout and on the device, per
    // row: about 60% of the planning time). They become one set-based check per statement, with the same
    // guarantees: an inserted row references an existing rollout and device; the keys of a row never change; a
    // rollout or device that a row references can be neither deleted, re-keyed nor truncated. The two sides
    // serialize on an advisory lock (shared for inserts, exclusive for deletes and key changes) and each checks
    // after taking it with a fresh snapshot (READ COMMITTED, as the server runs), so a delete racing a planning
    // transaction either sees its committed rows or makes its check fail: no dangling reference either way.
    sql: `
ALTER TABLE rollout_devices DROP CONSTRAINT rollout_devices_rollout_id_fkey;
ALTER TABLE rollout_devices DROP CONSTRAINT rollout_devices_device_id_fkey;

CREATE FUNCTION rollout_devices_check_refs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_advisory_xact_lock_shared(${ROLLOUT_REFS_LOCK_KEY.toString()});
  IF EXISTS (SELECT 1 FROM rollout_devices_new n WHERE NOT EXISTS (SELECT 1 FROM rollouts r WHERE r.id = n.rollout_id))
    OR EXISTS (SELECT 1 FROM rollout_devices_new n WHERE NOT EXISTS (SELECT 1 FROM devices d WHERE d.id = n.device_id))
  THEN
    RAISE foreign_key_violation USING MESSAGE = 'rollout_devices references a missing rollout or device';
  END IF;
  RETURN NULL;
END
$$;
CREATE TRIGGER rollout_devices_check_refs AFTER INSERT ON rollout_devices
  REFERENCING NEW TABLE AS rollout_devices_new FOR EACH STATEMENT EXECUTE FUNCTION rollout_devices_check_refs();

CREATE FUNCTION rollout_devices_keys_fixed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.rollout_id <> OLD.rollout_id OR NEW.device_id <> OLD.device_id THEN
    RAISE foreign_key_violation USING MESSAGE = 'the rollout and device of a rollout_devices row do not change';
  END IF;
  RETURN NEW;
END
$$;
CREATE TRIGGER rollout_devices_keys_fixed BEFORE UPDATE OF rollout_id, device_id ON rollout_devices
  FOR EACH ROW EXECUTE FUNCTION rollout_devices_keys_fixed();

CREATE FUNCTION rollout_devices_referenced() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'UPDATE' AND NEW.id = OLD.id THEN
    RETURN NEW;
  END IF;
  PERFORM pg_advisory_xact_lock(${ROLLOUT_REFS_LOCK_KEY.toString()});
  IF (TG_TABLE_NAME = 'devices' AND EXISTS (SELECT 1 FROM rollout_devices WHERE device_id = OLD.id))
    OR (TG_TABLE_NAME = 'rollouts' AND EXISTS (SELECT 1 FROM rollout_devices WHERE rollout_id = OLD.id))
  THEN
    RAISE foreign_key_violation USING MESSAGE = TG_TABLE_NAME || ' row ' || OLD.id || ' is referenced by rollout_devices';
  END IF;
  IF TG_OP = 'UPDATE' THEN
    RETURN NEW;
  END IF;
  RETURN OLD;
END
$$;
CREATE TRIGGER rollout_devices_referenced BEFORE DELETE OR UPDATE OF id ON devices
  FOR EACH ROW EXECUTE FUNCTION rollout_devices_referenced();
CREATE TRIGGER rollout_devices_referenced BEFORE DELETE OR UPDATE OF id ON rollouts
  FOR EACH ROW EXECUTE FUNCTION rollout_devices_referenced();

CREATE FUNCTION rollout_devices_referenced_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_advisory_xact_lock(${ROLLOUT_REFS_LOCK_KEY.toString()});
  IF EXISTS (SELECT 1 FROM rollout_devices) THEN
    RAISE foreign_key_violation USING MESSAGE = TG_TABLE_NAME || ' is referenced by rollout_devices';
  END IF;
  RETURN NULL;
END
$$;
CREATE TRIGGER rollout_devices_referenced_truncate BEFORE TRUNCATE ON devices
  FOR EACH STATEMENT EXECUTE FUNCTION rollout_devices_referenced_truncate();
CREATE TRIGGER rollout_devices_referenced_truncate BEFORE TRUNCATE ON rollouts
  FOR EACH STATEMENT EXECUTE FUNCTION rollout_devices_referenced_truncate();
`,
  },
  {
    version: 10,
    name: 'phased rollouts of capability modules',
    sql: CAPABILITY_ROLLOUT_MIGRATION_SQL,
  },
  {
    version: 11,
    name: 'check-in and report indexes; device standing notifications',
    // Hot paths (EXPLAIN on 100,000 devices and a 1,000,000-device rollout): the check-in finds a device's active
    // assignment through rollout_devices_one_active; a progress report and the delete guard of migration 9
    // (rollout_devices_referenced) look a device up regardless of 'active', which without an index on device_id
    // read the whole table (the primary key leads with rollout_id). The device history and rollout cancellation
    // are already covered (device_events_device, the primary key).
    //
    // Device standing: any change of a device's identity or enabled state notifies ${DEVICE_STANDING_CHANNEL} in
    // the same transaction (delivered at commit, PostgreSQL NOTIFY semantics), so every server instance listening
    // on the database drops its cached device authentications at once (device-auth.ts).
    sql: `
CREATE INDEX rollout_devices_device ON rollout_devices (device_id);

CREATE FUNCTION devices_standing_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('${DEVICE_STANDING_CHANNEL}', '');
  RETURN NULL;
END
$$;
CREATE TRIGGER devices_standing_notify AFTER UPDATE OF id, name, cert_sha256, enabled OR DELETE ON devices
  FOR EACH STATEMENT EXECUTE FUNCTION devices_standing_notify();
CREATE TRIGGER devices_standing_notify_truncate AFTER TRUNCATE ON devices
  FOR EACH STATEMENT EXECUTE FUNCTION devices_standing_notify();
`,
  },
  {
    version: 12,
    name: 'verifier secret shared by the instances on the database',
    sql: VERIFIER_SECRET_MIGRATION_SQL,
  },
  {
    version: 13,
    name: 'capability module rollouts driven by device reports',
    sql: CAPABILITY_REPORT_MIGRATION_SQL,
  },
  {
    version: 14,
    name: 'confirmed updates waiting for their attestation found by a partial index',
    // The tick's re-ask of stalled confirmations and attested() look for a device's 'attestation-pending' event
    // in its rollout. Without this index the planner, on statistics taken before a rollout's history grew,
    // intersected the rollout's whole history (tens of thousands of rows) once per device in progress: seconds
    // per tick at 10,000 devices, every second. Few events are 'attestation-pending': the index stays small.
    sql: `
CREATE INDEX device_events_attestation_pending ON device_events (device_id, rollout_id) WHERE kind = 'attestation-pending';
`,
  },
];

function checksum(m: Migration): string {
  return createHash('sha256').update(m.sql).digest('hex');
}

/** Applies pending migrations under the advisory lock; returns the versions applied now. */
export async function migrate(db: Db, migrations: readonly Migration[] = MIGRATIONS): Promise<number[]> {
  return db.session(async (s) => {
    await s.query('SELECT pg_advisory_lock($1::bigint)', [MIGRATION_LOCK_KEY.toString()]);
    try {
      await s.exec(`CREATE TABLE IF NOT EXISTS schema_migrations (
        version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL, applied_at_ms bigint NOT NULL)`);
      const applied = new Map(
        (
          await s.query<{ version: number; checksum: string }>(
            'SELECT version, checksum FROM schema_migrations',
          )
        ).map((r) => [r.version, r.checksum]),
      );
      const done: number[] = [];
      for (const m of migrations) {
        const sum = checksum(m);
        const have = applied.get(m.version);
        if (have !== undefined) {
          if (have !== sum)
            throw new ServerError(
              'DB_MIGRATION_MISMATCH',
              `migration ${m.version} (${m.name}) was changed after it was applied`,
            );
          continue;
        }
        await s.exec('BEGIN');
        try {
          await s.exec(m.sql);
          await s.query(
            'INSERT INTO schema_migrations (version, name, checksum, applied_at_ms) VALUES ($1, $2, $3, $4)',
            [m.version, m.name, sum, Date.now()],
          );
          await s.exec('COMMIT');
        } catch (e) {
          await s.exec('ROLLBACK');
          throw e;
        }
        done.push(m.version);
      }
      const known = new Set(migrations.map((m) => m.version));
      const unknown = [...applied.keys()].filter((v) => !known.has(v));
      if (unknown.length > 0) {
        throw new ServerError(
          'DB_MIGRATION_MISMATCH',
          `database has migrations ${unknown.join(', ')} this server does not know (newer schema)`,
        );
      }
      return done;
    } finally {
      await s.query('SELECT pg_advisory_unlock($1::bigint)', [MIGRATION_LOCK_KEY.toString()]);
    }
  });
}

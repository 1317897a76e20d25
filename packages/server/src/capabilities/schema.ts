/** Tables of the capability-module catalog (issue 8; seed 000 §1 "Remote Capability Server"). */
export const CAPABILITY_MIGRATION_SQL = `
-- One row per uploaded module. The plaintext is never stored: the ciphertext is a content-addressed blob (encrypted
-- once), the content key is stored only wrapped under the content-key vault.
CREATE TABLE capability_modules (
  id                text PRIMARY KEY,
  name              text NOT NULL,
  version           text NOT NULL,
  sequence_number   integer NOT NULL CHECK (sequence_number >= 1),
  metadata          bytea NOT NULL,
  module_sha256     bytea NOT NULL CHECK (octet_length(module_sha256) = 32),
  module_size       integer NOT NULL,
  ciphertext_sha256 bytea NOT NULL REFERENCES blobs (sha256),
  content_alg       integer NOT NULL,
  enc_protected     bytea NOT NULL,
  enc_unprotected   bytea NOT NULL,
  cek_wrapped       bytea NOT NULL,
  uploaded_by       text NOT NULL,
  created_at_ms     bigint NOT NULL,
  revoked_at_ms     bigint,
  revoke_reason     text,
  UNIQUE (name, sequence_number),
  UNIQUE (name, module_sha256)
);
CREATE INDEX capability_modules_ciphertext ON capability_modules (ciphertext_sha256);

-- Signed capability manifests, one version counter for all groups (a device accepts only a newer version).
-- device_group NULL is the default manifest of devices whose group has none.
CREATE TABLE capability_manifests (
  version       integer PRIMARY KEY,
  device_group  text,
  document      bytea NOT NULL,
  issued_by     text NOT NULL,
  created_at_ms bigint NOT NULL
);
CREATE INDEX capability_manifests_group ON capability_manifests (device_group, version DESC);

-- Signed module revocation lists (seed 000 step 7), newest serves.
CREATE TABLE capability_revocation_lists (
  version       integer PRIMARY KEY,
  document      bytea NOT NULL,
  expires_at    bigint NOT NULL,
  created_at_ms bigint NOT NULL
);
`;

/** Phased rollouts of capability modules (issue 8 "Operators roll modules out like firmware (targets, phases)"). */
export const CAPABILITY_ROLLOUT_MIGRATION_SQL = `
CREATE TABLE capability_rollouts (
  id            text PRIMARY KEY,
  module_id     text NOT NULL REFERENCES capability_modules (id),
  target        jsonb NOT NULL,
  phases        jsonb NOT NULL,
  state         text NOT NULL CHECK (state IN ('active', 'cancelled')),
  started_at_ms bigint NOT NULL,
  created_by    text NOT NULL,
  updated_at_ms bigint NOT NULL
);
-- One active rollout per module.
CREATE UNIQUE INDEX capability_rollouts_active ON capability_rollouts (module_id) WHERE state = 'active';
`;

/**
 * Module rollouts driven by device reports like firmware rollouts (issue 8 "Operators roll modules out like
 * firmware"): a stored current phase (advanced by time and success threshold, auto-paused on failures), pause /
 * resume / complete; every per-device envelope the server signed (its SUIT digest names it in the device's report,
 * draft-ietf-suit-report §4 suit-reference); the per-rollout, per-device outcome.
 */
export const CAPABILITY_REPORT_MIGRATION_SQL = `
ALTER TABLE capability_rollouts DROP CONSTRAINT capability_rollouts_state_check;
ALTER TABLE capability_rollouts ADD CONSTRAINT capability_rollouts_state_check
  CHECK (state IN ('active', 'paused', 'cancelled', 'completed'));
ALTER TABLE capability_rollouts ADD COLUMN current_phase integer NOT NULL DEFAULT 0;
ALTER TABLE capability_rollouts ADD COLUMN phase_started_at_ms bigint;
ALTER TABLE capability_rollouts ADD COLUMN pause_reason text;
UPDATE capability_rollouts SET phase_started_at_ms = started_at_ms;
ALTER TABLE capability_rollouts ALTER COLUMN phase_started_at_ms SET NOT NULL;
-- One live (active or paused) rollout per module.
DROP INDEX capability_rollouts_active;
CREATE UNIQUE INDEX capability_rollouts_live ON capability_rollouts (module_id) WHERE state IN ('active', 'paused');

-- Every module envelope signed for a device: the report's manifest reference finds the module and the rollout.
CREATE TABLE capability_offers (
  manifest_digest bytea PRIMARY KEY CHECK (octet_length(manifest_digest) = 32),
  device_id       text NOT NULL,
  module_id       text NOT NULL REFERENCES capability_modules (id),
  rollout_id      text REFERENCES capability_rollouts (id),
  phase           integer,
  created_at_ms   bigint NOT NULL
);
CREATE INDEX capability_offers_device ON capability_offers (device_id, created_at_ms DESC);

-- A device's part in a module rollout: offered (in the phase it was first offered in), then its last outcome.
CREATE TABLE capability_rollout_devices (
  rollout_id    text NOT NULL REFERENCES capability_rollouts (id),
  device_id     text NOT NULL,
  phase         integer NOT NULL,
  state         text NOT NULL CHECK (state IN ('offered', 'installed', 'failed', 'reverted')),
  reason        text,
  updated_at_ms bigint NOT NULL,
  PRIMARY KEY (rollout_id, device_id)
);
CREATE INDEX capability_rollout_devices_phase ON capability_rollout_devices (rollout_id, phase, state);

-- What each device last reported per capability (the server knows which module version a device runs).
CREATE TABLE capability_device_modules (
  device_id     text NOT NULL,
  name          text NOT NULL,
  module_id     text NOT NULL REFERENCES capability_modules (id),
  state         text NOT NULL CHECK (state IN ('installed', 'failed', 'reverted', 'unloaded')),
  reason        text,
  updated_at_ms bigint NOT NULL,
  PRIMARY KEY (device_id, name)
);
`;

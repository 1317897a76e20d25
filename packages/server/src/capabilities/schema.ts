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

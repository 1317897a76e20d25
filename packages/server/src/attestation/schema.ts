/**
 * Attestation, RoT orchestration and policy tables (issue 7). Appended to MIGRATIONS by db/migrations.ts.
 *
 * device_rot        the device's verified RoT chain (seed 002 steps 1–2), its ueid, pending requests
 * rot_revocations   RoT keys the verifier no longer accepts (superseded by a rotation, or revoked by an operator)
 * attestation_nonces fresh single-use challenges (RFC 9334 §10.2 "nonce-based freshness"), stored by SHA-256
 * attestation_results signed attestation results (RFC 9334 §3.3) with the per-claim appraisal
 * attestation_reference_values digests the server vouches for besides release payloads (modules, plaintexts)
 * revoked_digests   component digests that appraise as contraindicated wherever they are measured
 * policies          operator rules as data, versioned (seed 001 "Policy Engine")
 */
export const ATTESTATION_MIGRATION_SQL = `
CREATE TABLE device_rot (
  device_id        text PRIMARY KEY REFERENCES devices (id),
  ueid             bytea NOT NULL CHECK (octet_length(ueid) BETWEEN 7 AND 33),
  records          bytea[] NOT NULL,
  current_kid      bytea NOT NULL CHECK (octet_length(current_kid) = 32),
  attest_requested boolean NOT NULL DEFAULT false,
  rotate_requested boolean NOT NULL DEFAULT false,
  updated_at_ms    bigint NOT NULL
);
CREATE TABLE rot_revocations (
  kid           bytea PRIMARY KEY CHECK (octet_length(kid) = 32),
  device_id     text NOT NULL REFERENCES devices (id),
  reason        text NOT NULL,
  revoked_at_ms bigint NOT NULL
);
CREATE TABLE attestation_nonces (
  nonce_sha256  bytea PRIMARY KEY CHECK (octet_length(nonce_sha256) = 32),
  device_id     text NOT NULL REFERENCES devices (id),
  issued_at_ms  bigint NOT NULL,
  expires_at_ms bigint NOT NULL,
  used_at_ms    bigint
);
CREATE INDEX attestation_nonces_expiry ON attestation_nonces (expires_at_ms);
CREATE TABLE attestation_results (
  id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  device_id       text NOT NULL REFERENCES devices (id),
  status          text NOT NULL CHECK (status IN ('affirming', 'warning', 'contraindicated')),
  claims          jsonb NOT NULL,
  result          bytea NOT NULL,
  evidence_sha256 bytea NOT NULL,
  created_at_ms   bigint NOT NULL
);
CREATE INDEX attestation_results_device ON attestation_results (device_id, id);
CREATE TABLE attestation_reference_values (
  sha256        bytea PRIMARY KEY CHECK (octet_length(sha256) = 32),
  label         text NOT NULL,
  created_by    text NOT NULL,
  created_at_ms bigint NOT NULL
);
CREATE TABLE revoked_digests (
  sha256        bytea PRIMARY KEY CHECK (octet_length(sha256) = 32),
  reason        text NOT NULL,
  created_by    text NOT NULL,
  created_at_ms bigint NOT NULL
);
CREATE TABLE policies (
  version       integer PRIMARY KEY CHECK (version >= 1),
  rules         jsonb NOT NULL,
  created_by    text NOT NULL,
  created_at_ms bigint NOT NULL
);
`;

/**
 * Migration 6 (issue 7): trust-anchor statements and revocation lists the server distributes, and the policy
 * engine's per-device state.
 *
 * trust_anchor_statements every anchor-set version, each verified against its predecessor on upload (TUF §5.3.4)
 * revocation_lists        signed revocation lists, by version (devices fetch the newest)
 * device_policy_state     quarantine set by a policy rule or an operator (seed 001 policy engine)
 */
export const TRUST_DISTRIBUTION_MIGRATION_SQL = `
CREATE TABLE trust_anchor_statements (
  version       integer PRIMARY KEY CHECK (version >= 1),
  statement     bytea NOT NULL,
  issued_at     bigint NOT NULL,
  uploaded_by   text NOT NULL,
  created_at_ms bigint NOT NULL
);
CREATE TABLE revocation_lists (
  version       bigint PRIMARY KEY CHECK (version >= 0),
  list          bytea NOT NULL,
  issued_at     bigint NOT NULL,
  expires_at    bigint NOT NULL,
  entries       integer NOT NULL,
  uploaded_by   text NOT NULL,
  created_at_ms bigint NOT NULL
);
CREATE TABLE device_policy_state (
  device_id      text PRIMARY KEY REFERENCES devices (id),
  quarantined    boolean NOT NULL,
  reason         text,
  rule_id        text,
  policy_version integer,
  updated_at_ms  bigint NOT NULL
);
`;

/**
 * Migration 12: the verifier's persisted secret (issue 7 multi-instance): one 32-byte secret per name, stored
 * wrapped under the content-key vault (A256KW, RFC 3394 — integrity-protected), created once by whichever
 * instance starts first (INSERT … ON CONFLICT DO NOTHING) and read by every instance on the database. The nonce
 * MAC key and the result-signing key are derived from it (attestation/secret.ts).
 */
export const VERIFIER_SECRET_MIGRATION_SQL = `
CREATE TABLE verifier_secrets (
  name          text PRIMARY KEY,
  wrapped       bytea NOT NULL CHECK (octet_length(wrapped) = 40),
  created_at_ms bigint NOT NULL
);
`;

/**
 * The policy engine (seed 001 §4 "Policy Engine: define policies for firmware updates and key rotations based on
 * device identity, firmware version, and security risk"; issue 7): operator rules as data — stored versioned in
 * `policies`, every change audited — evaluated by the server
 *  - on every attestation result (`evaluateResult`, called in the appraisal's transaction): a matching rule can
 *    quarantine the device, lift a quarantine, request a RoT rotation (seed 001 DRoT step 1) or an attestation;
 *  - when a device would be offered an update (`policyAllowsUpdate`, the rollout check-in hook): a quarantined
 *    device gets only the policy's remediation releases; with `rollout.requireAffirmingWithinMs` a device joins a
 *    rollout only with an affirming result that recent (else it is asked to attest and offered nothing yet).
 *
 * Policy document (JSON):
 *   { "rules": [ { "id": "…", "when": { "status"?: [ArStatus…], "claims"?: { name: [ArStatus…] },
 *                                        "swversionBelow"?: "1.2.3", "rotIndexBelow"?: n },
 *                  "then": [ "quarantine" | "lift-quarantine" | "rotate-rot" | "request-attestation"
 *                             | "disable-device" … ] } … ],
 *     "remediationReleases"?: [ releaseId… ],
 *     "rollout"?: { "requireAffirmingWithinMs"?: n },
 *     "attestation"?: { "everyMs"?: n } }           (periodic attestation: asked via /d/v1/attestation/pending)
 * Every condition given must hold (absent = any); every matching rule applies, in order.
 */
import type { ArStatus, ClaimAppraisal } from '@rotor/trust';
import { appendAudit } from '../audit.ts';
import { authorize, type Principal } from '../auth.ts';
import type { Db, Queryable } from '../db/db.ts';
import { deviceStateChanged } from '../device-auth.ts';
import { ServerError } from '../errors.ts';
import { auditedTransaction } from '../tx.ts';

export const POLICY_ACTIONS = [
  'quarantine',
  'lift-quarantine',
  'rotate-rot',
  'request-attestation',
  'disable-device',
] as const;
export type PolicyAction = (typeof POLICY_ACTIONS)[number];
const STATUSES: readonly ArStatus[] = ['affirming', 'warning', 'contraindicated'];
export const MAX_RULES = 64;

export interface PolicyCondition {
  readonly status?: readonly ArStatus[];
  readonly claims?: Readonly<Record<string, readonly ArStatus[]>>;
  readonly swversionBelow?: string;
  readonly rotIndexBelow?: number;
}
export interface PolicyRule {
  readonly id: string;
  readonly when: PolicyCondition;
  readonly then: readonly PolicyAction[];
}
export interface PolicyDocument {
  readonly rules: readonly PolicyRule[];
  readonly remediationReleases?: readonly string[];
  readonly rollout?: { readonly requireAffirmingWithinMs?: number };
  /** Periodic attestation: a device is asked to attest when its last result is older than this. */
  readonly attestation?: { readonly everyMs?: number };
}

/** JSON schema of a policy document (strict: unknown members refused). */
export const POLICY_SCHEMA = {
  type: 'object',
  additionalProperties: false,
  required: ['rules'],
  properties: {
    rules: {
      type: 'array',
      maxItems: MAX_RULES,
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['id', 'when', 'then'],
        properties: {
          id: { type: 'string', minLength: 1, maxLength: 64 },
          when: {
            type: 'object',
            additionalProperties: false,
            properties: {
              status: { type: 'array', maxItems: 3, items: { type: 'string', enum: STATUSES } },
              claims: {
                type: 'object',
                maxProperties: 16,
                additionalProperties: {
                  type: 'array',
                  maxItems: 3,
                  items: { type: 'string', enum: STATUSES },
                },
              },
              swversionBelow: { type: 'string', minLength: 1, maxLength: 64 },
              rotIndexBelow: { type: 'integer', minimum: 0 },
            },
          },
          then: {
            type: 'array',
            minItems: 1,
            maxItems: 5,
            items: { type: 'string', enum: POLICY_ACTIONS },
          },
        },
      },
    },
    remediationReleases: {
      type: 'array',
      maxItems: 64,
      items: { type: 'string', minLength: 1, maxLength: 128 },
    },
    rollout: {
      type: 'object',
      additionalProperties: false,
      properties: { requireAffirmingWithinMs: { type: 'integer', minimum: 1 } },
    },
    attestation: {
      type: 'object',
      additionalProperties: false,
      properties: { everyMs: { type: 'integer', minimum: 1000 } },
    },
  },
} as const;

/** Dotted versions compared part by part, numerically where both parts are numbers. */
export function compareVersions(a: string, b: string): number {
  const pa = a.split(/[.+-]/);
  const pb = b.split(/[.+-]/);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const x = pa[i] ?? '0';
    const y = pb[i] ?? '0';
    const nx = /^\d+$/.test(x) ? Number(x) : NaN;
    const ny = /^\d+$/.test(y) ? Number(y) : NaN;
    const c = Number.isNaN(nx) || Number.isNaN(ny) ? x.localeCompare(y) : nx - ny;
    if (c !== 0) return Math.sign(c);
  }
  return 0;
}

export interface ResultFacts {
  readonly status: ArStatus;
  readonly claims: Readonly<Record<string, ClaimAppraisal>>;
  readonly swversion?: string;
  readonly rotIndex: number | null;
}

/** The rules whose every condition holds for the facts (pure). */
export function matchingRules(doc: PolicyDocument, f: ResultFacts): PolicyRule[] {
  return doc.rules.filter((r) => {
    const w = r.when;
    if (w.status !== undefined && !w.status.includes(f.status)) return false;
    if (w.claims !== undefined) {
      for (const [name, sts] of Object.entries(w.claims)) {
        const c = f.claims[name];
        if (c === undefined || !sts.includes(c.status)) return false;
      }
    }
    if (w.swversionBelow !== undefined) {
      if (f.swversion === undefined || compareVersions(f.swversion, w.swversionBelow) >= 0) return false;
    }
    if (w.rotIndexBelow !== undefined) {
      if (f.rotIndex === null || f.rotIndex >= w.rotIndexBelow) return false;
    }
    return true;
  });
}

export async function currentPolicy(
  q: Queryable,
): Promise<{ version: number; doc: PolicyDocument } | undefined> {
  const rows = await q.query<{ version: number; rules: PolicyDocument | string }>(
    'SELECT version, rules FROM policies ORDER BY version DESC LIMIT 1',
  );
  const r = rows[0];
  if (r === undefined) return undefined;
  return {
    version: r.version,
    doc: typeof r.rules === 'string' ? (JSON.parse(r.rules) as PolicyDocument) : r.rules,
  };
}

/**
 * Applies the current policy to a stored attestation result (same transaction as the result). Returns the
 * actions taken, for the caller's log.
 */
export async function evaluateResult(
  tx: Queryable,
  deviceId: string,
  facts: ResultFacts,
  t: number,
  /** The current policy when the caller already read it in this transaction (a batch of appraisals). */
  current?: { version: number; doc: PolicyDocument } | null,
): Promise<{ rule: string; action: PolicyAction }[]> {
  const pol = current === undefined ? await currentPolicy(tx) : (current ?? undefined);
  if (pol === undefined) return [];
  const taken: { rule: string; action: PolicyAction }[] = [];
  for (const rule of matchingRules(pol.doc, facts)) {
    for (const action of rule.then) {
      switch (action) {
        case 'quarantine':
          await tx.query(
            `INSERT INTO device_policy_state (device_id, quarantined, reason, rule_id, policy_version, updated_at_ms)
             VALUES ($1, true, $2, $3, $4, $5)
             ON CONFLICT (device_id) DO UPDATE SET quarantined = true, reason = EXCLUDED.reason,
               rule_id = EXCLUDED.rule_id, policy_version = EXCLUDED.policy_version, updated_at_ms = EXCLUDED.updated_at_ms`,
            [deviceId, `attestation ${facts.status}`, rule.id, pol.version, t],
          );
          break;
        case 'lift-quarantine':
          await tx.query(
            `UPDATE device_policy_state SET quarantined = false, reason = $2, rule_id = $3, policy_version = $4,
               updated_at_ms = $5 WHERE device_id = $1 AND quarantined`,
            [deviceId, `attestation ${facts.status}`, rule.id, pol.version, t],
          );
          break;
        case 'rotate-rot':
          await tx.query('UPDATE device_rot SET rotate_requested = true WHERE device_id = $1', [deviceId]);
          break;
        case 'disable-device':
          // Credentials disabled (issue 7): the device's mTLS identity is refused (DEVICE_DISABLED) until an
          // operator re-enables it.
          deviceStateChanged();
          await tx.query('UPDATE devices SET enabled = false WHERE id = $1', [deviceId]);
          break;
        case 'request-attestation':
          await tx.query('UPDATE device_rot SET attest_requested = true WHERE device_id = $1', [deviceId]);
          break;
      }
      taken.push({ rule: rule.id, action });
    }
  }
  if (taken.length > 0) {
    // Every automatic action is audited with the policy version and rule that caused it.
    await appendAudit(
      tx,
      {
        actor: 'policy',
        action: 'policy.apply',
        subject: `device:${deviceId}`,
        details: { policyVersion: pol.version, status: facts.status, taken },
      },
      t,
    );
  }
  return taken;
}

/**
 * The rollout check-in hook: may `releaseId` be offered to the device now? Quarantine (seed 001 policy engine):
 * only the policy's remediation releases. `rollout.requireAffirmingWithinMs`: the device's latest attestation
 * result must be affirming and that recent, else it is asked to attest (attest_requested) and offered nothing yet.
 */
export async function policyAllowsUpdate(
  q: Queryable,
  deviceId: string,
  releaseId: string,
  t: number,
): Promise<boolean> {
  const pol = await currentPolicy(q);
  const st = await q.query<{ quarantined: boolean }>(
    'SELECT quarantined FROM device_policy_state WHERE device_id = $1',
    [deviceId],
  );
  const remediation = pol?.doc.remediationReleases ?? [];
  if (st[0]?.quarantined === true) return remediation.includes(releaseId);
  const within = pol?.doc.rollout?.requireAffirmingWithinMs;
  if (within === undefined || remediation.includes(releaseId)) return true;
  const last = await q.query<{ status: ArStatus; created_at_ms: number | string }>(
    'SELECT status, created_at_ms FROM attestation_results WHERE device_id = $1 ORDER BY id DESC LIMIT 1',
    [deviceId],
  );
  const r = last[0];
  if (r?.status === 'affirming' && Number(r.created_at_ms) >= t - within) return true;
  await q.query('UPDATE device_rot SET attest_requested = true WHERE device_id = $1', [deviceId]);
  return false;
}

/** Whether the policy's periodic attestation is due for the device (no result, or the last is older). */
export async function periodicAttestationDue(q: Queryable, deviceId: string, t: number): Promise<boolean> {
  const pol = await currentPolicy(q);
  const every = pol?.doc.attestation?.everyMs;
  if (every === undefined) return false;
  const last = await q.query<{ created_at_ms: number | string }>(
    'SELECT created_at_ms FROM attestation_results WHERE device_id = $1 ORDER BY id DESC LIMIT 1',
    [deviceId],
  );
  return last[0] === undefined || Number(last[0].created_at_ms) < t - every;
}

export type PolicyService = ReturnType<typeof createPolicyService>;

export function createPolicyService(db: Db, now: () => number = Date.now) {
  const audited = auditedTransaction(db, now);
  return {
    /** Stores a new policy version (the previous ones are kept: versioned, audited). */
    async set(p: Principal, doc: PolicyDocument): Promise<{ version: number }> {
      authorize(p, 'policy.set');
      const seen = new Set<string>();
      for (const r of doc.rules) {
        if (seen.has(r.id)) throw new ServerError('REQUEST_INVALID', `rule id ${r.id} used twice`);
        seen.add(r.id);
        if (r.then.includes('quarantine') && r.then.includes('lift-quarantine'))
          throw new ServerError('REQUEST_INVALID', `rule ${r.id} both quarantines and lifts`);
      }
      return audited(p, 'policy.set', async (tx) => {
        await tx.query('LOCK TABLE policies IN EXCLUSIVE MODE');
        const v = await tx.query<{ v: number | string }>(
          'SELECT coalesce(max(version), 0) + 1 AS v FROM policies',
        );
        const version = Number(v[0]?.v ?? 1);
        await tx.query(
          'INSERT INTO policies (version, rules, created_by, created_at_ms) VALUES ($1, $2, $3, $4)',
          [version, JSON.stringify(doc), p.kind === 'operator' ? p.name : p.kind, now()],
        );
        return { result: { version }, subject: `policy:${version}`, details: { rules: doc.rules.length } };
      });
    },
    async get(p: Principal): Promise<{ version: number; policy: PolicyDocument }> {
      authorize(p, 'policy.read');
      const pol = await currentPolicy(db);
      if (pol === undefined) throw new ServerError('NOT_FOUND', 'no policy set');
      return { version: pol.version, policy: pol.doc };
    },
    async deviceState(
      p: Principal,
      deviceId: string,
    ): Promise<{ quarantined: boolean; reason: string | null; ruleId: string | null }> {
      authorize(p, 'policy.read');
      const r = await db.query<{ quarantined: boolean; reason: string | null; rule_id: string | null }>(
        'SELECT quarantined, reason, rule_id FROM device_policy_state WHERE device_id = $1',
        [deviceId],
      );
      return {
        quarantined: r[0]?.quarantined ?? false,
        reason: r[0]?.reason ?? null,
        ruleId: r[0]?.rule_id ?? null,
      };
    },
    /** Operator quarantine / release by hand (audited). */
    async setQuarantine(
      p: Principal,
      deviceId: string,
      body: { quarantined: boolean; reason: string },
    ): Promise<{ quarantined: boolean }> {
      authorize(p, 'device.quarantine');
      return audited(p, body.quarantined ? 'device.quarantine' : 'device.quarantine.lift', async (tx) => {
        const d = await tx.query('SELECT 1 FROM devices WHERE id = $1', [deviceId]);
        if (d.length === 0) throw new ServerError('NOT_FOUND', 'no such device');
        await tx.query(
          `INSERT INTO device_policy_state (device_id, quarantined, reason, rule_id, policy_version, updated_at_ms)
           VALUES ($1, $2, $3, NULL, NULL, $4)
           ON CONFLICT (device_id) DO UPDATE SET quarantined = EXCLUDED.quarantined, reason = EXCLUDED.reason,
             rule_id = NULL, policy_version = NULL, updated_at_ms = EXCLUDED.updated_at_ms`,
          [deviceId, body.quarantined, body.reason, now()],
        );
        return {
          result: { quarantined: body.quarantined },
          subject: `device:${deviceId}`,
          details: { reason: body.reason },
        };
      });
    },
  };
}

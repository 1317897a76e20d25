/**
 * Rollouts, device check-in and SUIT report ingestion (RFC 9019 §2.3 status tracker: the server learns what each
 * device runs and tells it what to do next; §3: the operator decides which devices get an update and when).
 *
 * A rollout targets devices (group, tags, ids, attribute filter) and splits them into phases by cumulative
 * percentage (deterministic pseudo-random order). The database enforces at most one active rollout per device
 * (partial unique index), so two server instances cannot assign a device twice. Locks are always taken in the
 * order rollout row → device rows, so report ingestion, check-in and the phase evaluator do not deadlock.
 *
 * Phase evaluation (after every group-committed batch of reports — once per batch, on the committed counts — and
 * on a periodic tick): devices of the current phase that have not
 * finished within the phase timeout become `timed_out` and leave the denominator (they do not hold the phase);
 * failed / remaining ≥ failureThreshold pauses the rollout automatically; succeeded / remaining ≥
 * successThreshold advances to the next phase (the last phase completes the rollout).
 */
import { randomUUID } from 'node:crypto';
import { createPublicKey } from 'node:crypto';
import { softwareVerifier } from '@rotor/cose';
import { decodeReport, verifySignedReport, type SuitReport } from '@rotor/suit';
import { authorize, constantTimeEqual, type Principal } from './auth.ts';
import { fingerprintOf } from './device-auth.ts';
import { appendAudit } from './audit.ts';
import { one, type Db, type Queryable } from './db/db.ts';
import { ServerError } from './errors.ts';
import { auditedTransaction, groupCommit, hex } from './tx.ts';
import { ciphertextUrl, type DeliveryService } from './delivery.ts';
import { policyAllowsUpdate } from './attestation/policy.ts';

export interface PhaseSpec {
  /** Cumulative share of the target devices reached by the end of this phase (1..100; the last is 100). */
  percent: number;
  /** Fraction (0..1] of the phase's remaining devices that must succeed before the next phase. */
  successThreshold: number;
  /** Fraction (0..1] of the phase's remaining devices whose failure pauses the rollout. */
  failureThreshold: number;
  /** A device of this phase that has not reported within this time after the phase started is timed out. */
  timeoutMs: number;
}

export interface RolloutTarget {
  group?: string;
  tags?: string[];
  deviceIds?: string[];
  /** Attribute equality filter (all must match). */
  attributes?: Record<string, string>;
}

export type RolloutState = 'active' | 'paused' | 'cancelled' | 'completed';
export const DEVICE_ROLLOUT_STATES = [
  'pending',
  'in_progress',
  'succeeded',
  'failed',
  'timed_out',
  'cancelled',
] as const;
export type DeviceRolloutState = (typeof DEVICE_ROLLOUT_STATES)[number];

export type StateCounts = Record<DeviceRolloutState, number> & { total: number };

export interface RolloutInfo {
  id: string;
  name: string;
  releaseId: string;
  state: RolloutState;
  currentPhase: number;
  phases: PhaseSpec[];
  target: RolloutTarget;
  pauseReason: string | null;
  counts: StateCounts;
  phaseCounts: StateCounts[];
  createdAtMs: number;
  updatedAtMs: number;
}

interface RolloutRow {
  id: string;
  name: string;
  release_id: string;
  state: RolloutState;
  target: RolloutTarget;
  phases: PhaseSpec[];
  current_phase: number;
  phase_started_at_ms: number;
  pause_reason: string | null;
  created_at_ms: number;
  updated_at_ms: number;
}

export type CheckinResult =
  | { action: 'none' }
  | { action: 'update'; rolloutId: string; releaseId: string; envelopeUrl: string; payloadUrls: string[] };

export interface DeviceEvent {
  id: number;
  deviceId: string;
  rolloutId: string | null;
  atMs: number;
  kind: string;
  details: Record<string, unknown>;
}

const cmp = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);

const emptyCounts = (): StateCounts => ({
  total: 0,
  pending: 0,
  in_progress: 0,
  succeeded: 0,
  failed: 0,
  timed_out: 0,
  cancelled: 0,
});

/**
 * Rotor extension members of a device's SUIT_Report (packages/device/src/tracker/report.ts; draft-ietf-suit-report
 * §4 allows extensions): -257 the transition, -258 the reason code, -259 a detail. Only the outcome transitions end
 * a device's part in a rollout; progress transitions are history.
 */
const REPORT_TRANSITION = -257;
const REPORT_REASON = -258;
const REPORT_DETAIL = -259;
const OUTCOMES: ReadonlyMap<string, DeviceRolloutState> = new Map([
  ['confirmed', 'succeeded'],
  ['failed', 'failed'],
  ['rolled-back', 'failed'],
]);

/** Largest SUIT report accepted from a device. */
export const MAX_REPORT_BYTES = 64 * 1024;

export function validatePhases(phases: readonly PhaseSpec[]): void {
  if (phases.length === 0 || phases.length > 16)
    throw new ServerError('REQUEST_INVALID', 'a rollout has 1..16 phases');
  let prev = 0;
  for (const [i, p] of phases.entries()) {
    if (!Number.isInteger(p.percent) || p.percent <= prev || p.percent > 100) {
      throw new ServerError(
        'REQUEST_INVALID',
        `phases[${i}].percent must be an integer above the previous phase's and at most 100`,
      );
    }
    prev = p.percent;
  }
  if (prev !== 100) throw new ServerError('REQUEST_INVALID', 'the last phase must reach 100 percent');
}

export function createRolloutService(db: Db, now: () => number, delivery: DeliveryService) {
  const audited = auditedTransaction(db, now);
  /** Called after a commit that gave devices new work (rollout created or resumed, phase advanced): push. */
  let onWork: (rolloutId: string) => void = () => undefined;
  /**
   * Issue 7 "after every update": decides, inside the report's transaction, whether a device's 'confirmed' must
   * first be attested (the attestation service: the device is enrolled; it is asked to attest). Then the device
   * stays in_progress until attested() — the update counts as confirmed only when the new measurements appraise.
   */
  let confirmationGate: ((q: Queryable, deviceId: string) => Promise<boolean>) | undefined;

  /**
   * Check-ins arriving in the same event-loop turn share one statement (group check-in): the devices' standing
   * verified (enabled, and the certificate the request was authenticated by: the check-in route takes a cached
   * authentication without the cross-instance sync, device-auth.ts), last-seen recorded, and their active
   * assignments looked up. The device rows are locked in primary-key order (the index scan of `= ANY` visits
   * sorted keys), so concurrent batches, here or on another instance, cannot deadlock. A failed batch is retried
   * one device at a time.
   */
  interface Assignment {
    device_id: string;
    cert_sha256: Uint8Array;
    rollout_id: string | null;
    release_id: string | null;
    state: DeviceRolloutState | null;
    /**
     * No update policy is stored and the device is not quarantined: policyAllowsUpdate() would allow any release
     * (attestation/policy.ts), so it need not be asked.
     */
    unrestricted: boolean;
  }
  // Both lookups carry `= ANY($1)` as their index condition (devices_pkey, rollout_devices_one_active), whatever
  // the statistics say: a LATERAL join by s.id was planned as a scan of every active row while the statistics
  // still counted none (a large rollout just created, not yet analyzed).
  const ASSIGNMENT_SQL = `WITH seen AS (
      UPDATE devices SET last_seen_ms = $2 WHERE id = ANY($1::text[]) AND enabled RETURNING id, cert_sha256),
    work AS (
      SELECT rd.device_id, rd.rollout_id, r.release_id, rd.state FROM rollout_devices rd JOIN rollouts r ON r.id = rd.rollout_id
      WHERE rd.device_id = ANY($1::text[]) AND rd.active AND r.state = 'active' AND rd.phase <= r.current_phase)
    SELECT s.id AS device_id, s.cert_sha256, w.rollout_id, w.release_id, w.state,
      w.rollout_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM policies)
        AND NOT EXISTS (SELECT 1 FROM device_policy_state ps WHERE ps.device_id = s.id AND ps.quarantined) AS unrestricted
    FROM seen s LEFT JOIN work w ON w.device_id = s.id`;
  const assignmentBatch = groupCommit<
    { readonly deviceId: string; readonly fingerprint: Uint8Array | undefined },
    Assignment | undefined
  >(
    async (batch) => {
      const ids = [...new Set(batch.map((w) => w.deviceId))].sort();
      const rows = await (db.relaxed ?? db).query<Assignment>(ASSIGNMENT_SQL, [ids, now()]);
      const byDevice = new Map(rows.map((r) => [r.device_id, r]));
      return batch.map((w) => {
        const r = byDevice.get(w.deviceId);
        // Same refusals as the authentication itself (services.devices.authenticate).
        if (r === undefined) return new ServerError('DEVICE_DISABLED', 'device is disabled');
        if (w.fingerprint !== undefined && !constantTimeEqual(w.fingerprint, r.cert_sha256))
          return new ServerError('DEVICE_UNKNOWN', 'client certificate is not registered');
        return r.rollout_id === null ? undefined : r;
      });
    },
    { max: 256, inFlight: 2 },
  );
  const assignment = (p: Principal & { kind: 'device' }): Promise<Assignment | undefined> =>
    assignmentBatch({ deviceId: p.deviceId, fingerprint: fingerprintOf(p) });

  async function info(q: Queryable, id: string): Promise<RolloutInfo> {
    const r = one(await q.query<RolloutRow>('SELECT * FROM rollouts WHERE id = $1', [id]), 'rollout');
    const rows = await q.query<{ phase: number; state: DeviceRolloutState; n: number }>(
      'SELECT phase, state, count(*)::int AS n FROM rollout_devices WHERE rollout_id = $1 GROUP BY phase, state',
      [id],
    );
    const counts = emptyCounts();
    const phaseCounts = r.phases.map(emptyCounts);
    for (const row of rows) {
      counts[row.state] += row.n;
      counts.total += row.n;
      const pc = phaseCounts[row.phase];
      if (pc !== undefined) {
        pc[row.state] += row.n;
        pc.total += row.n;
      }
    }
    return {
      id: r.id,
      name: r.name,
      releaseId: r.release_id,
      state: r.state,
      currentPhase: r.current_phase,
      phases: r.phases,
      target: r.target,
      pauseReason: r.pause_reason,
      counts,
      phaseCounts,
      createdAtMs: r.created_at_ms,
      updatedAtMs: r.updated_at_ms,
    };
  }

  /**
   * Applies timeouts, then pauses / advances / completes the rollout; `tx` holds the rollout row lock. Returns
   * true when the rollout advanced to a later phase (new devices have work).
   */
  async function evaluateLocked(tx: Queryable, r: RolloutRow): Promise<boolean> {
    if (r.state !== 'active') return false;
    const t = now();
    let phase = r.current_phase;
    let phaseStart = r.phase_started_at_ms;
    for (;;) {
      const spec = r.phases[phase]!;
      if (t - phaseStart >= spec.timeoutMs) {
        await tx.query(
          `WITH t AS (
             UPDATE rollout_devices SET state = 'timed_out', active = false, updated_at_ms = $3
             WHERE rollout_id = $1 AND phase = $2 AND state IN ('pending', 'in_progress') RETURNING device_id)
           INSERT INTO device_events (device_id, rollout_id, at_ms, kind) SELECT device_id, $1, $3, 'timed_out' FROM t`,
          [r.id, phase, t],
        );
      }
      const rows = await tx.query<{ state: DeviceRolloutState; n: number }>(
        'SELECT state, count(*)::int AS n FROM rollout_devices WHERE rollout_id = $1 AND phase = $2 GROUP BY state',
        [r.id, phase],
      );
      const c = emptyCounts();
      for (const row of rows) {
        c[row.state] = row.n;
        c.total += row.n;
      }
      const remaining = c.total - c.timed_out - c.cancelled;
      if (c.failed > 0 && remaining > 0 && c.failed / remaining >= spec.failureThreshold) {
        const reason = `phase ${phase}: ${c.failed} of ${remaining} devices failed (threshold ${spec.failureThreshold})`;
        await tx.query(
          "UPDATE rollouts SET state = 'paused', pause_reason = $2, current_phase = $3, phase_started_at_ms = $4, updated_at_ms = $5 WHERE id = $1",
          [r.id, reason, phase, phaseStart, t],
        );
        await appendAudit(
          tx,
          {
            actor: 'system',
            action: 'rollout.autopause',
            subject: `rollout:${r.id}`,
            details: { phase, reason },
          },
          t,
        );
        return false;
      }
      if (remaining > 0 && c.succeeded / remaining < spec.successThreshold) {
        if (phase !== r.current_phase) {
          await tx.query(
            'UPDATE rollouts SET current_phase = $2, phase_started_at_ms = $3, updated_at_ms = $4 WHERE id = $1',
            [r.id, phase, phaseStart, t],
          );
        }
        return phase !== r.current_phase;
      }
      if (phase + 1 < r.phases.length) {
        phase++;
        phaseStart = t;
        await appendAudit(
          tx,
          { actor: 'system', action: 'rollout.advance', subject: `rollout:${r.id}`, details: { phase } },
          t,
        );
        continue;
      }
      await tx.query(
        "UPDATE rollouts SET state = 'completed', current_phase = $2, updated_at_ms = $3 WHERE id = $1",
        [r.id, phase, t],
      );
      await tx.query('UPDATE rollout_devices SET active = false WHERE rollout_id = $1 AND active', [r.id]);
      await appendAudit(
        tx,
        { actor: 'system', action: 'rollout.complete', subject: `rollout:${r.id}`, details: { phase } },
        t,
      );
      return false;
    }
  }

  async function lockRollout(tx: Queryable, id: string): Promise<RolloutRow> {
    return one(
      await tx.query<RolloutRow>('SELECT * FROM rollouts WHERE id = $1 FOR UPDATE', [id]),
      'rollout',
    );
  }

  async function transition(
    p: Principal,
    id: string,
    action: 'rollout.pause' | 'rollout.resume' | 'rollout.cancel',
  ): Promise<RolloutInfo> {
    authorize(p, action);
    return audited(p, action, async (tx) => {
      const r = await lockRollout(tx, id);
      const t = now();
      if (action === 'rollout.pause') {
        if (r.state !== 'active') throw new ServerError('CONFLICT', `a ${r.state} rollout cannot be paused`);
        await tx.query(
          "UPDATE rollouts SET state = 'paused', pause_reason = 'paused by operator', updated_at_ms = $2 WHERE id = $1",
          [id, t],
        );
      } else if (action === 'rollout.resume') {
        if (r.state !== 'paused') throw new ServerError('CONFLICT', `a ${r.state} rollout cannot be resumed`);
        // The phase timeout restarts: devices get their full time after a pause.
        await tx.query(
          "UPDATE rollouts SET state = 'active', pause_reason = NULL, phase_started_at_ms = $2, updated_at_ms = $2 WHERE id = $1",
          [id, t],
        );
      } else {
        if (r.state === 'cancelled' || r.state === 'completed')
          throw new ServerError('CONFLICT', `a ${r.state} rollout cannot be cancelled`);
        await tx.query("UPDATE rollouts SET state = 'cancelled', updated_at_ms = $2 WHERE id = $1", [id, t]);
        await tx.query(
          `WITH c AS (
             UPDATE rollout_devices SET state = CASE WHEN state IN ('pending', 'in_progress') THEN 'cancelled' ELSE state END,
               active = false, updated_at_ms = $2
             WHERE rollout_id = $1 AND active RETURNING device_id)
           INSERT INTO device_events (device_id, rollout_id, at_ms, kind) SELECT device_id, $1, $2, 'cancelled' FROM c`,
          [id, t],
        );
      }
      return { result: await info(tx, id), subject: `rollout:${id}` };
    }).then((r) => {
      if (action === 'rollout.resume') onWork(id);
      return r;
    });
  }

  /**
   * A release's ciphertexts (content addresses in component order), kept once read: they are written with the
   * approval (delivery.ts) and never change — an assignment exists only for an approved release.
   */
  const ciphertexts = new Map<string, Promise<string[]>>();
  const ciphertextsOf = (releaseId: string): Promise<string[]> => {
    let c = ciphertexts.get(releaseId);
    if (c === undefined) {
      c = db
        .query<{ h: string }>(
          "SELECT encode(ciphertext_sha256, 'hex') AS h FROM release_ciphertexts WHERE release_id = $1 ORDER BY component_index",
          [releaseId],
        )
        .then((rows) => rows.map((x) => x.h));
      if (ciphertexts.size >= 1024) ciphertexts.clear();
      ciphertexts.set(releaseId, c);
      c.catch(() => ciphertexts.delete(releaseId));
    }
    return c;
  };
  /**
   * Offers of the moment share one statement: each pending assignment becomes in_progress together with its
   * 'offered' event, so two instances answering the same device at once record one offer.
   */
  const offer = groupCommit<{ rolloutId: string; deviceId: string }, undefined>(
    async (items) => {
      const sorted = [...items].sort((a, b) =>
        a.rolloutId === b.rolloutId ? cmp(a.deviceId, b.deviceId) : cmp(a.rolloutId, b.rolloutId),
      );
      await db.query(
        `WITH o AS (
           UPDATE rollout_devices rd SET state = 'in_progress', updated_at_ms = $3
           FROM unnest($1::text[], $2::text[]) AS x(rollout_id, device_id)
           WHERE rd.rollout_id = x.rollout_id AND rd.device_id = x.device_id AND rd.state = 'pending' AND rd.active
           RETURNING rd.device_id, rd.rollout_id)
         INSERT INTO device_events (device_id, rollout_id, at_ms, kind) SELECT device_id, rollout_id, $3, 'offered' FROM o`,
        [sorted.map((x) => x.rolloutId), sorted.map((x) => x.deviceId), now()],
      );
      return items.map(() => undefined);
    },
    { max: 512, inFlight: 2 },
  );

  /**
   * Report ingestion is group-committed like check-ins: the reports arriving in one event-loop turn share their
   * statements. The devices' report keys are read in one statement; after verification, the reports' targets are
   * looked up in one statement, progress reports (history only) are inserted in one statement, and the outcomes
   * of one rollout are applied in one transaction — the rollout row locked once (lock order rollout → device rows,
   * the device rows then taken in id order), states and history rows written in bulk, the rollout evaluated once
   * (thresholds and auto-pause decided on the committed counts, exactly as per report). A report is acknowledged
   * only after the commit that records it. A batch whose statement fails is retried one report at a time.
   */
  interface ReportKey {
    report_key_spki: Uint8Array | null;
    report_key_alg: number | null;
  }
  const reportKey = groupCommit<string, ReportKey>(
    async (ids) => {
      const rows = await db.query<ReportKey & { i: number }>(
        `SELECT x.i, d.report_key_spki, d.report_key_alg
         FROM unnest($1::text[]) WITH ORDINALITY AS x(id, i) JOIN devices d ON d.id = x.id`,
        [ids],
      );
      const byIndex = new Map(rows.map((r) => [r.i - 1, r]));
      return ids.map((_, i) => byIndex.get(i) ?? new ServerError('NOT_FOUND', 'device not found'));
    },
    { max: 512, inFlight: 2 },
  );
  /** Verifiers of registered report keys (a public key parsed once, not per report); bounded. */
  const verifiers = new Map<string, ReturnType<typeof softwareVerifier>>();
  const reportVerifier = (spki: Uint8Array, alg: number): ReturnType<typeof softwareVerifier> => {
    const k = `${alg}:${hex(spki)}`;
    let v = verifiers.get(k);
    if (v === undefined) {
      v = softwareVerifier(createPublicKey({ key: Buffer.from(spki), format: 'der', type: 'spki' }), alg);
      if (verifiers.size >= 100_000) verifiers.clear();
      verifiers.set(k, v);
    }
    return v;
  };

  interface Incoming {
    readonly deviceId: string;
    readonly digestHex: string;
    readonly transition: string | undefined;
    readonly progress: boolean;
    readonly success: boolean;
    /** JSON of the history row's details. */
    readonly details: string;
  }
  interface Outcome {
    readonly index: number;
    readonly deviceId: string;
    readonly state: DeviceRolloutState;
    readonly details: string;
  }
  type Ingested = { rolloutId: string; state: DeviceRolloutState };
  const noTarget = (): ServerError =>
    new ServerError('CONFLICT', 'no active rollout of this device references the reported manifest');
  const noLongerExpected = (): ServerError =>
    new ServerError('CONFLICT', 'the rollout no longer expects a report from this device');

  /** The outcomes of one rollout in one transaction; answers per outcome, in order. */
  async function applyOutcomes(rolloutId: string, outs: readonly Outcome[]): Promise<(Ingested | Error)[]> {
    const t = now();
    const { answers, advanced } = await db.transaction(async (tx) => {
      const r = await lockRollout(tx, rolloutId); // lock order: rollout → device rows
      const ids = [...new Set(outs.map((o) => o.deviceId))].sort();
      const held = new Map(
        (
          await tx.query<{ device_id: string; state: DeviceRolloutState }>(
            `SELECT device_id, state FROM rollout_devices WHERE rollout_id = $1 AND device_id = ANY($2::text[]) AND active
             ORDER BY device_id FOR UPDATE`,
            [rolloutId, ids],
          )
        ).map((x) => [x.device_id, x.state]),
      );
      const answers: (Ingested | Error)[] = [];
      const upd: Outcome[] = [];
      const ev: { deviceId: string; kind: string; details: string }[] = [];
      for (const o of outs) {
        const cur = held.get(o.deviceId);
        if (cur === undefined) {
          answers.push(noLongerExpected());
          continue;
        }
        if (o.state === 'succeeded' && confirmationGate !== undefined) {
          // Issue 7: confirmed on the device, but it counts only once the new measurements appraise (attested()).
          // The gate marks the device for attestation; when the report is refused that mark is undone.
          if (cur !== 'in_progress') await tx.query('SAVEPOINT gate');
          if (await confirmationGate(tx, o.deviceId)) {
            if (cur !== 'in_progress') {
              await tx.query('ROLLBACK TO SAVEPOINT gate');
              answers.push(noLongerExpected());
              continue;
            }
            ev.push(
              { deviceId: o.deviceId, kind: 'report', details: o.details },
              { deviceId: o.deviceId, kind: 'attestation-pending', details: '{}' },
            );
            answers.push({ rolloutId, state: 'in_progress' });
            continue;
          }
          if (cur !== 'in_progress') await tx.query('RELEASE SAVEPOINT gate');
        }
        upd.push(o);
        held.delete(o.deviceId);
        ev.push({ deviceId: o.deviceId, kind: 'report', details: o.details });
        answers.push({ rolloutId, state: o.state });
      }
      if (upd.length > 0) {
        await tx.query(
          `UPDATE rollout_devices rd SET state = x.state, active = false, updated_at_ms = $4
           FROM unnest($2::text[], $3::text[]) AS x(device_id, state)
           WHERE rd.rollout_id = $1 AND rd.device_id = x.device_id AND rd.active`,
          [rolloutId, upd.map((o) => o.deviceId), upd.map((o) => o.state), t],
        );
      }
      if (ev.length > 0) {
        await tx.query(
          `INSERT INTO device_events (device_id, rollout_id, at_ms, kind, details)
           SELECT x.device_id, $1, $2, x.kind, x.details::jsonb
           FROM unnest($3::text[], $4::text[], $5::text[]) WITH ORDINALITY AS x(device_id, kind, details, i) ORDER BY x.i`,
          [rolloutId, t, ev.map((e) => e.deviceId), ev.map((e) => e.kind), ev.map((e) => e.details)],
        );
      }
      return { answers, advanced: upd.length > 0 && (await evaluateLocked(tx, r)) };
    });
    if (advanced) onWork(rolloutId);
    return answers;
  }

  /** One round: every device at most once (a device's second report of the batch waits for the next round). */
  async function ingestRound(items: readonly Incoming[]): Promise<(Ingested | Error)[]> {
    const targets = await db.query<{ i: number; rollout_id: string; state: DeviceRolloutState }>(
      `SELECT DISTINCT ON (x.i) x.i, rd.rollout_id, rd.state
       FROM unnest($1::text[], $2::text[], $3::boolean[]) WITH ORDINALITY AS x(device_id, digest, progress, i)
       JOIN rollout_devices rd ON rd.device_id = x.device_id AND (rd.active OR x.progress)
       JOIN rollouts r ON r.id = rd.rollout_id JOIN releases rel ON rel.id = r.release_id
       WHERE rel.manifest_digest = decode(x.digest, 'hex') OR EXISTS (
         SELECT 1 FROM device_envelopes de WHERE de.release_id = r.release_id AND de.device_id = x.device_id
         AND de.manifest_digest = decode(x.digest, 'hex'))
       ORDER BY x.i, rd.active DESC, rd.updated_at_ms DESC`,
      [items.map((x) => x.deviceId), items.map((x) => x.digestHex), items.map((x) => x.progress)],
    );
    const byIndex = new Map(targets.map((r) => [r.i - 1, r]));
    const out: (Ingested | Error)[] = items.map(() => noTarget());
    const progress: { i: number; rolloutId: string }[] = [];
    const outcomes = new Map<string, Outcome[]>();
    for (const [i, x] of items.entries()) {
      const target = byIndex.get(i);
      if (target === undefined) continue;
      const state: DeviceRolloutState =
        x.transition !== undefined
          ? (OUTCOMES.get(x.transition) ?? target.state)
          : x.success
            ? 'succeeded'
            : 'failed';
      if (x.progress) {
        progress.push({ i, rolloutId: target.rollout_id });
        out[i] = { rolloutId: target.rollout_id, state };
        continue;
      }
      const list = outcomes.get(target.rollout_id) ?? [];
      list.push({ index: i, deviceId: x.deviceId, state, details: x.details });
      outcomes.set(target.rollout_id, list);
    }
    const work: Promise<void>[] = [];
    if (progress.length > 0) {
      work.push(
        db
          .query(
            `INSERT INTO device_events (device_id, rollout_id, at_ms, kind, details)
             SELECT x.device_id, x.rollout_id, $1, 'report', x.details::jsonb
             FROM unnest($2::text[], $3::text[], $4::text[]) WITH ORDINALITY AS x(device_id, rollout_id, details, i) ORDER BY x.i`,
            [
              now(),
              progress.map((g) => items[g.i]!.deviceId),
              progress.map((g) => g.rolloutId),
              progress.map((g) => items[g.i]!.details),
            ],
          )
          .then(() => undefined),
      );
    }
    for (const [rolloutId, outs] of outcomes) {
      work.push(
        applyOutcomes(rolloutId, outs).then(
          (answers) => {
            for (const [k, o] of outs.entries()) out[o.index] = answers[k]!;
          },
          (e: unknown) => {
            // This rollout's outcomes alone are retried one at a time.
            return Promise.all(
              outs.map(async (o) => {
                out[o.index] =
                  outs.length === 1
                    ? e instanceof Error
                      ? e
                      : new Error(String(e))
                    : ((
                        await applyOutcomes(rolloutId, [o]).catch((e2: unknown) =>
                          e2 instanceof Error ? [e2] : [new Error(String(e2))],
                        )
                      )[0] ?? noTarget());
              }),
            ).then(() => undefined);
          },
        ),
      );
    }
    await Promise.all(work);
    return out;
  }

  const ingest = groupCommit<Incoming, Ingested>(
    async (items) => {
      const out: (Ingested | Error)[] = new Array<Ingested | Error>(items.length);
      let rest = items.map((x, i) => ({ x, i }));
      while (rest.length > 0) {
        const seen = new Set<string>();
        const round: typeof rest = [];
        const later: typeof rest = [];
        for (const e of rest) {
          if (seen.has(e.x.deviceId)) later.push(e);
          else {
            seen.add(e.x.deviceId);
            round.push(e);
          }
        }
        const answers = await ingestRound(round.map((e) => e.x));
        for (const [k, e] of round.entries()) out[e.i] = answers[k]!;
        rest = later;
      }
      return out;
    },
    { max: 512, inFlight: 2 },
  );

  return {
    async create(
      p: Principal,
      req: { name: string; releaseId: string; target: RolloutTarget; phases: PhaseSpec[] },
    ): Promise<RolloutInfo & { assigned: number; excluded: number }> {
      authorize(p, 'rollout.create');
      validatePhases(req.phases);
      const id = randomUUID();
      const t = now();
      const tg = req.target;
      const filterSql = `d.enabled AND ($2::text IS NULL OR d.device_group = $2) AND d.tags @> $3::text[]
        AND ($4::text[] IS NULL OR d.id = ANY($4::text[])) AND d.attributes @> $5::jsonb`;
      let committedWork: string | undefined;
      const filterParams = [
        tg.group ?? null,
        tg.tags ?? [],
        tg.deviceIds ?? null,
        JSON.stringify(tg.attributes ?? {}),
      ];
      try {
        return await audited(p, 'rollout.create', async (tx) => {
          const rel = one(
            await tx.query<{ status: string }>('SELECT status FROM releases WHERE id = $1 FOR SHARE', [
              req.releaseId,
            ]),
            'release',
          );
          if (rel.status !== 'approved')
            throw new ServerError('CONFLICT', 'the release is not approved by an operator');
          await tx.query(
            `INSERT INTO rollouts (id, name, release_id, state, target, phases, current_phase, phase_started_at_ms, created_by, created_at_ms, updated_at_ms)
             VALUES ($1, $2, $3, 'active', $4::jsonb, $5::jsonb, 0, $6, $7, $6, $6)`,
            [
              id,
              req.name,
              req.releaseId,
              JSON.stringify(tg),
              JSON.stringify(req.phases),
              t,
              p.kind === 'operator' ? `token:${p.tokenId}` : p.kind,
            ],
          );
          const excluded = one(
            await tx.query<{ n: number }>(
              `SELECT count(*)::int AS n, $1::text AS rollout_id FROM devices d WHERE ${filterSql}
               AND EXISTS (SELECT 1 FROM rollout_devices x WHERE x.device_id = d.id AND x.active)`,
              [id, ...filterParams],
            ),
            'count',
          ).n;
          // Planning: a deterministic shuffle (hashtext of rollout id ‖ device id, ties by device id), then phase i
          // takes the devices up to ceil(n · percent_i / 100) in that order: width_bucket against the first
          // position of each later phase (computed once from n). Only the count comes back to the client.
          // The rows go in in device id order (bytewise: memcmp and abbreviated keys, several times faster to
          // sort than a locale's order, and the same as the index order under C or C.UTF-8): each index (primary
          // key, the one-active index) is then filled left to right rather than at random leaves, and two
          // instances planning overlapping rollouts meet at their first common device (one waits, then gets the
          // unique violation → CONFLICT) instead of deadlocking on two devices taken in opposite orders. The
          // sorts and the statement's reference check (migration 9) fit in memory for a million devices.
          await tx.query("SET LOCAL work_mem = '128MB'");
          const assigned = one(
            await tx.query<{ n: number }>(
              `WITH s AS MATERIALIZED (
                 SELECT d.id, row_number() OVER (ORDER BY hashtext($1 || d.id), d.id) AS rn
                 FROM devices d WHERE ${filterSql}
                 AND NOT EXISTS (SELECT 1 FROM rollout_devices x WHERE x.device_id = d.id AND x.active)
               ), th AS (
                 SELECT coalesce(array_agg((ceil(c.n * u.p / 100.0))::bigint + 1 ORDER BY u.o), '{}'::bigint[]) AS a
                 FROM (SELECT count(*) AS n FROM s) c,
                   unnest(($6::int[])[1:cardinality($6::int[]) - 1]) WITH ORDINALITY AS u(p, o)
               ), ins AS (
                 INSERT INTO rollout_devices (rollout_id, device_id, phase, state, active, updated_at_ms)
                 SELECT $1, s.id, width_bucket(s.rn, th.a), 'pending', true, $7 FROM s, th ORDER BY s.id COLLATE "C"
                 RETURNING 1
               )
               SELECT count(*)::int AS n FROM ins`,
              [id, ...filterParams, req.phases.map((ph) => ph.percent), t],
            ),
            'count',
          ).n;
          // A rollout whose phases are empty (no matching device) advances or completes at once.
          await evaluateLocked(tx, await lockRollout(tx, id));
          committedWork = id;
          const r = await info(tx, id);
          return {
            result: { ...r, assigned, excluded },
            subject: `rollout:${id}`,
            details: { name: req.name, releaseId: req.releaseId, assigned, excluded },
          };
        }).then((r) => {
          if (committedWork !== undefined) onWork(committedWork);
          return r;
        });
      } catch (e) {
        if (e instanceof Error && 'code' in e && e.code === '23505') {
          throw new ServerError('CONFLICT', 'a target device joined another rollout concurrently; retry');
        }
        throw e;
      }
    },

    get(p: Principal, id: string): Promise<RolloutInfo> {
      authorize(p, 'rollout.read');
      return info(db, id);
    },

    async list(p: Principal, q: { limit: number; after?: string }): Promise<RolloutInfo[]> {
      authorize(p, 'rollout.read');
      const ids = await db.query<{ id: string }>(
        'SELECT id FROM rollouts WHERE ($1::text IS NULL OR id > $1) ORDER BY id LIMIT $2',
        [q.after ?? null, q.limit],
      );
      const out: RolloutInfo[] = [];
      for (const { id } of ids) out.push(await info(db, id));
      return out;
    },

    /** Sets the listener told after commit when a rollout gives devices new work (push, push.ts). */
    setConfirmationGate(fn: ((q: Queryable, deviceId: string) => Promise<boolean>) | undefined): void {
      confirmationGate = fn;
    },

    /**
     * Issue 7: the attestation that follows a confirmed update was appraised — the device's part in the rollout
     * ends as succeeded when its new measurements appraise (`ok`), else failed (with the verifier's reason).
     * Nothing when the device has no update waiting for its attestation.
     */
    async attested(deviceId: string, ok: boolean, reason: string): Promise<DeviceRolloutState | undefined> {
      const waiting = (
        await db.query<{ rollout_id: string }>(
          `SELECT rd.rollout_id FROM rollout_devices rd
           WHERE rd.device_id = $1 AND rd.active AND rd.state = 'in_progress' AND EXISTS (
             SELECT 1 FROM device_events e
             WHERE e.device_id = rd.device_id AND e.rollout_id = rd.rollout_id AND e.kind = 'attestation-pending')`,
          [deviceId],
        )
      )[0];
      if (waiting === undefined) return undefined;
      const state: DeviceRolloutState = ok ? 'succeeded' : 'failed';
      const t = now();
      const advanced = await db.transaction(async (tx) => {
        const r = await lockRollout(tx, waiting.rollout_id); // lock order: rollout → device rows
        const upd = await tx.query(
          `UPDATE rollout_devices SET state = $3, active = false, updated_at_ms = $4
           WHERE rollout_id = $1 AND device_id = $2 AND active AND state = 'in_progress' RETURNING 1`,
          [waiting.rollout_id, deviceId, state, t],
        );
        if (upd.length === 0) return false;
        await tx.query(
          "INSERT INTO device_events (device_id, rollout_id, at_ms, kind, details) VALUES ($1, $2, $3, 'attestation', $4::jsonb)",
          [deviceId, waiting.rollout_id, t, JSON.stringify({ result: state, reason: reason.slice(0, 256) })],
        );
        return evaluateLocked(tx, r);
      });
      if (advanced) onWork(waiting.rollout_id);
      return state;
    },

    setWorkListener(fn: (rolloutId: string) => void): void {
      onWork = fn;
    },

    pause: (p: Principal, id: string) => transition(p, id, 'rollout.pause'),
    resume: (p: Principal, id: string) => transition(p, id, 'rollout.resume'),
    cancel: (p: Principal, id: string) => transition(p, id, 'rollout.cancel'),

    /** Re-evaluates every active rollout (timeouts, thresholds). Run periodically by each instance. */
    async tick(): Promise<void> {
      const ids = await db.query<{ id: string }>("SELECT id FROM rollouts WHERE state = 'active'");
      for (const { id } of ids) {
        const advanced = await db.transaction(async (tx) => evaluateLocked(tx, await lockRollout(tx, id)));
        if (advanced) onWork(id);
      }
    },

    /**
     * Device poll (RFC 9019 §3 client-initiated): what should the device do next? The common answer (nothing to
     * do) is one statement shared with the other check-ins of the moment: last-seen recorded and the active
     * assignment looked up in one round trip (rollout_devices_one_active). With work, the policy is consulted and a pending assignment becomes
     * in_progress together with its 'offered' event in one statement, so two instances answering the same device
     * at once record one offer.
     */
    async checkin(p: Principal): Promise<CheckinResult> {
      if (p.kind !== 'device') throw new ServerError('FORBIDDEN', 'only devices check in');
      authorize(p, 'device.checkin');
      const t = now();
      const found = await assignment(p);
      const row =
        found?.rollout_id == null || found.release_id === null || found.state === null
          ? undefined
          : { rollout_id: found.rollout_id, release_id: found.release_id, state: found.state };
      if (row === undefined) return { action: 'none' };
      if (found?.unrestricted !== true && !(await policyAllowsUpdate(db, p.deviceId, row.release_id, t)))
        return { action: 'none' };
      // Devices get the ciphertexts only (the plaintext payloads are never served to devices).
      const [payloads] = await Promise.all([
        ciphertextsOf(row.release_id),
        row.state === 'pending' ? offer({ rolloutId: row.rollout_id, deviceId: p.deviceId }) : undefined,
      ]);
      return {
        action: 'update',
        rolloutId: row.rollout_id,
        releaseId: row.release_id,
        envelopeUrl: `/d/v1/rollouts/${row.rollout_id}/envelope`,
        payloadUrls: payloads.map((h) => ciphertextUrl(h)),
      };
    },

    /**
     * The device's own envelope for a rollout it takes part in: the operator manifest with the content key wrapped
     * for this device alone (delivery.ts). A device sees only its own resources.
     */
    async envelopeFor(p: Principal, rolloutId: string): Promise<Uint8Array> {
      if (p.kind !== 'device') throw new ServerError('FORBIDDEN', 'device only');
      authorize(p, 'device.checkin');
      // One read: the assignment, the stored envelope if built already, else the device's key columns.
      const row = (
        await db.query<{
          release_id: string;
          envelope: Uint8Array | null;
          ka_spki: Uint8Array | null;
          kek_wrapped: Uint8Array | null;
        }>(
          `SELECT r.release_id, de.envelope, d.ka_spki, d.kek_wrapped
           FROM rollout_devices rd JOIN rollouts r ON r.id = rd.rollout_id JOIN devices d ON d.id = rd.device_id
           LEFT JOIN device_envelopes de ON de.release_id = r.release_id AND de.device_id = rd.device_id
           WHERE rd.rollout_id = $1 AND rd.device_id = $2`,
          [rolloutId, p.deviceId],
        )
      )[0];
      if (row === undefined)
        throw new ServerError('DEVICE_FORBIDDEN', 'the device is not part of this rollout');
      return delivery.deviceEnvelope(p.deviceId, row.release_id, row);
    },

    /**
     * Ingests a SUIT report (draft-ietf-suit-report §4): strictly decoded, matched by its manifest reference
     * (report §4 suit-reference digest = the envelope's SUIT_Digest) to the device's active rollout; the result
     * sets the device's state, the history records it, and the rollout is re-evaluated in the same transaction.
     */
    async report(
      p: Principal,
      bytes: Uint8Array,
      opts: { signed?: boolean } = {},
    ): Promise<{ rolloutId: string; state: DeviceRolloutState }> {
      if (p.kind !== 'device') throw new ServerError('FORBIDDEN', 'only devices report');
      authorize(p, 'device.report');
      if (bytes.length > MAX_REPORT_BYTES) throw new ServerError('PAYLOAD_TOO_LARGE', 'report too large');
      const key = await reportKey(p.deviceId);
      if (key instanceof Error) throw key;
      let rep: SuitReport;
      if (opts.signed === true) {
        // draft-ietf-suit-report §4 (signed form: COSE_Sign1 with the report attached), verified with the report
        // key registered for this device — never with a key carried in the message.
        if (key.report_key_spki === null || key.report_key_alg === null)
          throw new ServerError('REPORT_KEY_MISSING', 'no report key is registered for this device');
        rep = verifySignedReport(
          bytes,
          reportVerifier(key.report_key_spki, key.report_key_alg),
          new Set([key.report_key_alg]),
        );
      } else {
        // A device that has a report key must use it: an unsigned report could come from anyone holding the TLS
        // session (e.g. a compromised transport proxy) rather than from the device's root of trust.
        if (key.report_key_spki !== null)
          throw new ServerError('REPORT_SIGNATURE_REQUIRED', 'this device must sign its reports');
        rep = decodeReport(bytes);
      }
      const digest = rep.reference.digest.bytes;
      const ext = (k: number): string | undefined => {
        const v = rep.extensions?.get(k);
        return typeof v === 'string' ? v : undefined;
      };
      const transition = ext(REPORT_TRANSITION);
      const details = {
        ...(rep.result === true
          ? { result: 'success' }
          : { result: 'failure', code: rep.result.code, reason: rep.result.reason }),
        ...(transition === undefined ? {} : { transition }),
        ...(ext(REPORT_REASON) === undefined ? {} : { reasonCode: ext(REPORT_REASON) }),
        ...(ext(REPORT_DETAIL) === undefined ? {} : { detail: ext(REPORT_DETAIL)?.slice(0, 256) }),
        manifestDigest: hex(digest),
      };
      return ingest({
        deviceId: p.deviceId,
        digestHex: hex(digest),
        transition,
        // A progress transition (downloading … rebooting) is history only; without -257 the result is the outcome.
        progress: transition !== undefined && !OUTCOMES.has(transition),
        success: rep.result === true,
        details: JSON.stringify(details),
      });
    },

    async deviceEvents(
      p: Principal,
      q: { deviceId?: string; rolloutId?: string; after: number; limit: number },
    ): Promise<DeviceEvent[]> {
      if (p.kind === 'device') {
        if (q.deviceId !== p.deviceId)
          throw new ServerError('DEVICE_FORBIDDEN', 'a device sees only its own history');
      } else authorize(p, 'rollout.read');
      const rows = await db.query<{
        id: number;
        device_id: string;
        rollout_id: string | null;
        at_ms: number;
        kind: string;
        details: Record<string, unknown>;
      }>(
        `SELECT * FROM device_events WHERE ($1::text IS NULL OR device_id = $1) AND ($2::text IS NULL OR rollout_id = $2) AND id > $3
         ORDER BY id LIMIT $4`,
        [q.deviceId ?? null, q.rolloutId ?? null, q.after, q.limit],
      );
      return rows.map((r) => ({
        id: r.id,
        deviceId: r.device_id,
        rolloutId: r.rollout_id,
        atMs: r.at_ms,
        kind: r.kind,
        details: r.details,
      }));
    },

    /** Operator approval of a release: a co-signature with per-device encryption (delivery.ts). */
    approve: (p: Principal, releaseId: string): Promise<void> => delivery.approve(p, releaseId),
  };
}

export type RolloutService = ReturnType<typeof createRolloutService>;

/**
 * The audit log: append-only (a trigger refuses UPDATE, DELETE and TRUNCATE) and hash-chained. Entry n stores
 * `body` (canonical JSON of {seq, at, actor, action, subject, details}), `prev_hash` = hash of entry n-1 (32 zero
 * bytes for entry 1) and `hash` = SHA-256(prev_hash ‖ UTF-8(body)). Appends take a transaction-scoped advisory lock
 * so that several server instances extend one chain. `verifyAuditLog` recomputes the chain: an edited body, a
 * changed hash, a reordered or deleted entry (a gap in seq, or a broken link) is reported with its seq. Truncating
 * the tail is detected against an anchor (a {seq, hash} recorded earlier, e.g. by `rotor audit verify --json`).
 */
import { ServerError } from './errors.ts';
import { sha256 } from './auth.ts';
import type { Db, Queryable } from './db/db.ts';

export const AUDIT_LOCK_KEY = 0x726f746f72617564n; // 'rotoraud'
export const GENESIS_HASH: Uint8Array = new Uint8Array(32);

export type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

export interface AuditEvent {
  readonly actor: string;
  readonly action: string;
  readonly subject: string;
  readonly details?: { [k: string]: Json };
}

export interface AuditEntry {
  readonly seq: number;
  readonly body: string;
  readonly prevHash: Uint8Array;
  readonly hash: Uint8Array;
}

/** Canonical JSON: object keys sorted by code unit, no whitespace; only finite numbers. */
export function canonicalJson(v: Json): string {
  if (v === null || typeof v === 'boolean' || typeof v === 'string') return JSON.stringify(v);
  if (typeof v === 'number') {
    if (!Number.isFinite(v)) throw new ServerError('INTERNAL', 'non-finite number in audit entry');
    return JSON.stringify(v);
  }
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`;
  const keys = Object.keys(v).sort();
  return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson(v[k]!)}`).join(',')}}`;
}

export function chainHash(prevHash: Uint8Array, body: string): Uint8Array {
  const b = new TextEncoder().encode(body);
  const buf = new Uint8Array(prevHash.length + b.length);
  buf.set(prevHash, 0);
  buf.set(b, prevHash.length);
  return sha256(buf);
}

/** Appends one entry inside the caller's transaction (so the change and its audit entry commit together). */
export async function appendAudit(
  tx: Queryable,
  ev: AuditEvent,
  now: number = Date.now(),
): Promise<AuditEntry> {
  await tx.query('SELECT pg_advisory_xact_lock($1::bigint)', [AUDIT_LOCK_KEY.toString()]);
  const head = (
    await tx.query<{ seq: number; hash: Uint8Array }>(
      'SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1',
    )
  )[0];
  const seq = (head?.seq ?? 0) + 1;
  const prevHash = head?.hash ?? GENESIS_HASH;
  const body = canonicalJson({
    seq,
    at: new Date(now).toISOString(),
    actor: ev.actor,
    action: ev.action,
    subject: ev.subject,
    details: ev.details ?? {},
  });
  const hash = chainHash(prevHash, body);
  await tx.query('INSERT INTO audit_log (seq, body, prev_hash, hash) VALUES ($1, $2, $3, $4)', [
    seq,
    body,
    prevHash,
    hash,
  ]);
  return { seq, body, prevHash, hash };
}

export interface AuditAnchor {
  readonly seq: number;
  /** hex */
  readonly hash: string;
}

export type AuditVerification =
  | { readonly ok: true; readonly count: number; readonly head: AuditAnchor | undefined }
  | { readonly ok: false; readonly count: number; readonly seq: number; readonly reason: string };

function hex(b: Uint8Array): string {
  return Buffer.from(b).toString('hex');
}

/**
 * Verifies a hash chain given in seq order (any iterable or async iterable of entries, e.g. read page by page).
 * With `anchor`, also requires the entry at anchor.seq to exist with that hash (detects a truncated tail).
 */
export async function verifyAuditLog(
  entries: Iterable<AuditEntry> | AsyncIterable<AuditEntry>,
  opts: { anchor?: AuditAnchor } = {},
): Promise<AuditVerification> {
  let expectedSeq = 1;
  let prev = GENESIS_HASH;
  let count = 0;
  let anchorSeen = false;
  const fail = (seq: number, reason: string): AuditVerification => ({ ok: false, count, seq, reason });
  for await (const e of entries) {
    if (e.seq !== expectedSeq) {
      return fail(
        expectedSeq,
        e.seq > expectedSeq ? `entries ${expectedSeq}..${e.seq - 1} missing` : `entry ${e.seq} out of order`,
      );
    }
    if (hex(e.prevHash) !== hex(prev)) return fail(e.seq, 'prev_hash does not match the previous entry');
    if (hex(chainHash(e.prevHash, e.body)) !== hex(e.hash))
      return fail(e.seq, 'hash does not match the entry (edited)');
    let parsed: unknown;
    try {
      parsed = JSON.parse(e.body);
    } catch {
      return fail(e.seq, 'body is not JSON');
    }
    if (typeof parsed !== 'object' || parsed === null || (parsed as { seq?: unknown }).seq !== e.seq) {
      return fail(e.seq, 'body seq does not match the entry');
    }
    if (canonicalJson(parsed as Json) !== e.body) return fail(e.seq, 'body is not canonical JSON');
    if (opts.anchor !== undefined && opts.anchor.seq === e.seq) {
      if (hex(e.hash) !== opts.anchor.hash.toLowerCase()) return fail(e.seq, 'entry differs from the anchor');
      anchorSeen = true;
    }
    prev = e.hash;
    expectedSeq++;
    count++;
  }
  if (opts.anchor !== undefined && !anchorSeen)
    return fail(opts.anchor.seq, 'anchor entry missing (log truncated)');
  return { ok: true, count, head: count === 0 ? undefined : { seq: expectedSeq - 1, hash: hex(prev) } };
}

/** Reads the audit log of a database page by page, in seq order. */
export async function* readAuditLog(db: Queryable, pageSize = 1000): AsyncGenerator<AuditEntry> {
  let after = 0;
  for (;;) {
    const rows = await db.query<{ seq: number; body: string; prev_hash: Uint8Array; hash: Uint8Array }>(
      'SELECT seq, body, prev_hash, hash FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2',
      [after, pageSize],
    );
    for (const r of rows) yield { seq: r.seq, body: r.body, prevHash: r.prev_hash, hash: r.hash };
    if (rows.length < pageSize) return;
    after = rows[rows.length - 1]!.seq;
  }
}

/** Verifies the audit log stored in a database. */
export function verifyAuditLogInDb(db: Db, opts: { anchor?: AuditAnchor } = {}): Promise<AuditVerification> {
  return verifyAuditLog(readAuditLog(db), opts);
}

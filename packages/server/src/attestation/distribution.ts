/**
 * Distribution of trust-anchor statements and revocation lists (issue 7), and the policy engine's routes.
 *
 * Anchors (seed 001 "new root key signed by a trusted authority"; TUF §5.3.4): the operator uploads each signed
 * statement (signed offline by the root keys — the server holds no root key); the server checks version N+1
 * against its stored N exactly as devices do (version 1 against its own root threshold) so it never serves a
 * statement devices would refuse. Devices fetch every version above their own over mutual TLS.
 *
 * Revocation lists (seed 001 "Revocation List Management"): signed by a key of the anchors' "revocation" role,
 * verified on upload against the newest anchor set (anti-rollback, unexpired); devices fetch the newest.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { Alg, encode } from '@rotor/cose';
import {
  applyAnchorStatement,
  initialAnchorSet,
  isTrustError,
  RevokedKind,
  verifyTrustRevocationList,
  type AnchorSet,
} from '@rotor/trust';
import { actorOf, authorize, type Principal } from '../auth.ts';
import type { Db } from '../db/db.ts';
import { ServerError } from '../errors.ts';
import { OCTET_STREAM } from '../http.ts';
import { deviceStateChanged } from '../device-auth.ts';
import { auditedTransaction } from '../tx.ts';
import { POLICY_SCHEMA, type PolicyDocument, type PolicyService } from './policy.ts';

export const ANCHOR_ALGS: ReadonlySet<number> = new Set<number>([Alg.ES256, Alg.EdDSA]);
const MAX_STATEMENT = 256 * 1024;
const MAX_LIST = 8 * 1024 * 1024;
const MAX_VERSIONS_PER_FETCH = 64;

const u8 = (b: Uint8Array): Uint8Array => (b instanceof Buffer ? new Uint8Array(b) : b);

function trustFailure(e: unknown, what: string): never {
  if (isTrustError(e))
    throw new ServerError('REQUEST_INVALID', `${what}: ${e.code}: ${e.message}`, { cause: e });
  throw e;
}

export type DistributionService = ReturnType<typeof createDistributionService>;

export function createDistributionService(db: Db, now: () => number = Date.now) {
  const audited = auditedTransaction(db, now);
  let published: ((what: 'anchors' | 'revocation', version: number) => void) | undefined;
  let nextVersions: Promise<{ anchors: number; revocation: number }> | undefined;
  const announce = (what: 'anchors' | 'revocation', version: number): void => {
    try {
      published?.(what, version);
    } catch {
      // the listener's failure (a push) is not the upload's: devices still pull at their next check-in
    }
  };

  async function latestAnchors(): Promise<AnchorSet | undefined> {
    const r = await db.query<{ statement: Uint8Array }>(
      'SELECT statement FROM trust_anchor_statements ORDER BY version DESC LIMIT 1',
    );
    return r[0] === undefined ? undefined : initialAnchorSet(u8(r[0].statement), ANCHOR_ALGS);
  }

  return {
    /**
     * Called after a new anchor statement or revocation list committed (issue 7 push: the server nudges devices
     * over MQTT and they fetch it at once).
     */
    setPublishListener(l: ((what: 'anchors' | 'revocation', version: number) => void) | undefined): void {
      published = l;
    },

    /**
     * The newest anchor-statement and revocation-list versions (0: none), for every check-in response (issue 7
     * pull). Read from the database, so every instance on it answers the same at once; the check-ins of one
     * event-loop turn share one read, started after all of them arrived (never an answer older than the request).
     */
    versions(): Promise<{ anchors: number; revocation: number }> {
      nextVersions ??= new Promise((resolve, reject) => {
        setImmediate(() => {
          nextVersions = undefined;
          db.query<{ a: number | string | null; r: string | null }>(
            `SELECT (SELECT max(version) FROM trust_anchor_statements) AS a,
                    (SELECT max(version) FROM revocation_lists)::text AS r`,
          ).then((r) => {
            resolve({ anchors: Number(r[0]?.a ?? 0), revocation: Number(r[0]?.r ?? 0) });
          }, reject);
        });
      });
      return nextVersions;
    },

    async uploadAnchors(p: Principal, bytes: Uint8Array): Promise<{ version: number }> {
      authorize(p, 'anchors.upload');
      const out = await audited(p, 'anchors.upload', async (tx) => {
        await tx.query('LOCK TABLE trust_anchor_statements IN EXCLUSIVE MODE');
        const prev = (
          await tx.query<{ statement: Uint8Array }>(
            'SELECT statement FROM trust_anchor_statements ORDER BY version DESC LIMIT 1',
          )
        )[0];
        let set: AnchorSet;
        try {
          if (prev === undefined) {
            set = initialAnchorSet(bytes, ANCHOR_ALGS);
            if (set.version !== 1)
              throw new ServerError('CONFLICT', 'the first statement the server holds must be version 1');
          } else {
            set = applyAnchorStatement(initialAnchorSet(u8(prev.statement), ANCHOR_ALGS), bytes, ANCHOR_ALGS);
          }
        } catch (e) {
          if (e instanceof ServerError) throw e;
          trustFailure(e, 'trust-anchor statement refused');
        }
        await tx.query(
          `INSERT INTO trust_anchor_statements (version, statement, issued_at, uploaded_by, created_at_ms)
           VALUES ($1, $2, $3, $4, $5)`,
          [set.version, bytes, set.issuedAt, actorOf(p), now()],
        );
        return {
          result: { version: set.version },
          subject: `anchors:${set.version}`,
          details: { roles: [...set.roles.keys()] },
        };
      });
      announce('anchors', out.version);
      return out;
    },

    /** Statements newer than `after`, oldest first (a device walks them in order). */
    async anchorsAfter(p: Principal, after: number): Promise<Uint8Array[]> {
      if (p.kind !== 'device') throw new ServerError('FORBIDDEN', 'device listener');
      const r = await db.query<{ statement: Uint8Array }>(
        'SELECT statement FROM trust_anchor_statements WHERE version > $1 ORDER BY version LIMIT $2',
        [after, MAX_VERSIONS_PER_FETCH],
      );
      return r.map((x) => u8(x.statement));
    },

    async uploadRevocationList(p: Principal, bytes: Uint8Array): Promise<{ version: number }> {
      authorize(p, 'revocation.upload');
      const anchors = await latestAnchors();
      if (anchors === undefined)
        throw new ServerError('CONFLICT', 'no trust anchors uploaded: the revocation authority is unknown');
      // A list can disable devices: cached device authentications are dropped before and after (device-auth.ts).
      deviceStateChanged();
      const out = await audited(p, 'revocation.upload', async (tx) => {
        await tx.query('LOCK TABLE revocation_lists IN EXCLUSIVE MODE');
        const cur = await tx.query<{ version: string }>(
          'SELECT max(version)::text AS version FROM revocation_lists',
        );
        const held = cur[0]?.version == null ? undefined : Number(cur[0].version);
        let list;
        try {
          list = verifyTrustRevocationList(bytes, {
            verifiers: anchors.verifiers('revocation'),
            allowedAlgs: ANCHOR_ALGS,
            now: Math.floor(now() / 1000),
            ...(held === undefined ? {} : { currentVersion: held }),
          });
        } catch (e) {
          trustFailure(e, 'revocation list refused');
        }
        // The server's own verifications honour the list at once (seed 001 "checked at every verification"):
        // digests appraise as revoked, a device's current RoT key is revoked (its evidence is contraindicated until
        // it rotates), listed devices lose their credentials (mTLS refused: DEVICE_DISABLED).
        const t = now();
        const reason = `revocation list ${list.version}`;
        for (const e of list.entries) {
          if (e.kind === RevokedKind.digest) {
            await tx.query(
              `INSERT INTO revoked_digests (sha256, reason, created_by, created_at_ms) VALUES ($1, $2, $3, $4)
               ON CONFLICT (sha256) DO NOTHING`,
              [e.id, e.reason ?? reason, actorOf(p), t],
            );
          } else if (e.kind === RevokedKind.rotKey) {
            await tx.query(
              `INSERT INTO rot_revocations (kid, device_id, reason, revoked_at_ms)
               SELECT current_kid, device_id, $2, $3 FROM device_rot WHERE current_kid = $1
               ON CONFLICT (kid) DO NOTHING`,
              [e.id, e.reason ?? reason, t],
            );
          } else if (e.kind === RevokedKind.device) {
            await tx.query(
              'UPDATE devices SET enabled = false WHERE id IN (SELECT device_id FROM device_rot WHERE ueid = $1)',
              [e.id],
            );
          }
        }
        await tx.query(
          `INSERT INTO revocation_lists (version, list, issued_at, expires_at, entries, uploaded_by, created_at_ms)
           VALUES ($1, $2, $3, $4, $5, $6, $7)`,
          [list.version, bytes, list.issuedAt, list.expiresAt, list.entries.length, actorOf(p), now()],
        );
        return {
          result: { version: list.version },
          subject: `revocation:${list.version}`,
          details: { entries: list.entries.length, expiresAt: list.expiresAt },
        };
      }).finally(deviceStateChanged);
      announce('revocation', out.version);
      return out;
    },

    async latestRevocationList(p: Principal): Promise<Uint8Array | undefined> {
      if (p.kind !== 'device') throw new ServerError('FORBIDDEN', 'device listener');
      const r = await db.query<{ list: Uint8Array }>(
        'SELECT list FROM revocation_lists ORDER BY version DESC LIMIT 1',
      );
      return r[0] === undefined ? undefined : u8(r[0].list);
    },
  };
}

/** Page size when nudging the whole fleet. */
const NOTIFY_PAGE = 5000;

/**
 * Nudges every enabled device (issue 7 push: a new anchor statement or revocation list concerns them all); they
 * check in, see the newer version in the check-in response and fetch it. Best effort and paged; a device that
 * misses the nudge fetches at its next poll.
 */
export async function notifyAllDevices(
  db: Db,
  notify: (ids: readonly string[]) => Promise<void>,
): Promise<number> {
  let after = '';
  let n = 0;
  for (;;) {
    const rows = await db.query<{ id: string }>(
      'SELECT id FROM devices WHERE enabled AND id > $1 ORDER BY id LIMIT $2',
      [after, NOTIFY_PAGE],
    );
    if (rows.length === 0) return n;
    await notify(rows.map((r) => r.id));
    n += rows.length;
    after = rows[rows.length - 1]!.id;
  }
}

function principal(req: FastifyRequest): Principal {
  if (req.principal === undefined) throw new ServerError('AUTH_REQUIRED', 'authentication required');
  return req.principal;
}

const versionAnswer = {
  type: 'object',
  properties: { version: { type: 'integer' } },
  required: ['version'],
} as const;
const idParam = {
  type: 'object',
  properties: { id: { type: 'string', minLength: 1, maxLength: 128 } },
  required: ['id'],
  additionalProperties: false,
} as const;

export function registerDistributionRoutes(
  op: FastifyInstance,
  dev: FastifyInstance | undefined,
  d: DistributionService,
  policy: PolicyService,
): void {
  op.put<{ Body: Buffer }>(
    '/v1/trust-anchors',
    {
      bodyLimit: MAX_STATEMENT,
      config: {
        accepts: [OCTET_STREAM],
        summary: 'Upload the next signed trust-anchor statement (COSE_Sign)',
      },
      schema: { response: { 200: versionAnswer } },
    },
    async (req) => d.uploadAnchors(principal(req), new Uint8Array(req.body)),
  );
  op.put<{ Body: Buffer }>(
    '/v1/revocation-list',
    {
      bodyLimit: MAX_LIST,
      config: { accepts: [OCTET_STREAM], summary: 'Upload a newer signed revocation list (COSE_Sign1)' },
      schema: { response: { 200: versionAnswer } },
    },
    async (req) => d.uploadRevocationList(principal(req), new Uint8Array(req.body)),
  );
  op.put<{ Body: PolicyDocument }>(
    '/v1/policy',
    {
      config: { summary: 'Store a new version of the policy (rules as data, audited)' },
      schema: { body: POLICY_SCHEMA, response: { 200: versionAnswer } },
    },
    async (req) => policy.set(principal(req), req.body),
  );
  op.get(
    '/v1/policy',
    {
      config: { summary: 'The current policy and its version' },
      schema: {
        response: {
          200: {
            type: 'object',
            properties: { version: { type: 'integer' }, policy: POLICY_SCHEMA },
            required: ['version', 'policy'],
          },
        },
      },
    },
    async (req) => policy.get(principal(req)),
  );
  op.get<{ Params: { id: string } }>(
    '/v1/devices/:id/policy-state',
    {
      config: { summary: "The device's quarantine state" },
      schema: {
        params: idParam,
        response: {
          200: {
            type: 'object',
            properties: {
              quarantined: { type: 'boolean' },
              reason: { type: ['string', 'null'] },
              ruleId: { type: ['string', 'null'] },
            },
            required: ['quarantined', 'reason', 'ruleId'],
          },
        },
      },
    },
    async (req) => policy.deviceState(principal(req), req.params.id),
  );
  op.put<{ Params: { id: string }; Body: { quarantined: boolean; reason: string } }>(
    '/v1/devices/:id/quarantine',
    {
      config: { summary: 'Quarantine a device or lift its quarantine (audited)' },
      schema: {
        params: idParam,
        body: {
          type: 'object',
          additionalProperties: false,
          required: ['quarantined', 'reason'],
          properties: {
            quarantined: { type: 'boolean' },
            reason: { type: 'string', minLength: 1, maxLength: 200 },
          },
        },
        response: {
          200: {
            type: 'object',
            properties: { quarantined: { type: 'boolean' } },
            required: ['quarantined'],
          },
        },
      },
    },
    async (req) => policy.setQuarantine(principal(req), req.params.id, req.body),
  );

  if (dev === undefined) return;
  dev.get<{ Params: { after: number } }>(
    '/d/v1/trust-anchors/after/:after',
    {
      config: {
        auth: 'device',
        binary: true,
        produces: OCTET_STREAM,
        summary: 'Trust-anchor statements newer than `after` (CBOR array, oldest first)',
      },
      schema: {
        params: {
          type: 'object',
          additionalProperties: false,
          required: ['after'],
          properties: { after: { type: 'integer', minimum: 0, maximum: 2_147_483_647 } },
        },
      },
    },
    async (req, reply) => {
      const list = await d.anchorsAfter(principal(req), req.params.after);
      return reply.type(OCTET_STREAM).send(Buffer.from(encode(list)));
    },
  );
  dev.get(
    '/d/v1/revocation-list',
    {
      config: {
        auth: 'device',
        binary: true,
        produces: OCTET_STREAM,
        summary: 'The newest signed revocation list (404 if none)',
      },
    },
    async (req, reply) => {
      const l = await d.latestRevocationList(principal(req));
      if (l === undefined) throw new ServerError('NOT_FOUND', 'no revocation list');
      return reply.type(OCTET_STREAM).send(Buffer.from(l));
    },
  );
}

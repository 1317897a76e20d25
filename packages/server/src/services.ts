/**
 * Service layer: every method takes the calling principal, authorizes it first (auth.ts, deny by default), does
 * its reads and writes in one transaction, and appends the audit entry in that same transaction, so that a change
 * and its audit record commit together or not at all.
 */
import { createPublicKey, randomBytes, randomUUID, X509Certificate, type KeyObject } from 'node:crypto';
import { mkdir, open } from 'node:fs/promises';
import { join } from 'node:path';
import { verifyAuditLogInDb, type AuditAnchor, type AuditVerification, type Json } from './audit.ts';
import {
  actorOf,
  authorize,
  authorizeDevice,
  BOOTSTRAP_TOKEN_ID,
  constantTimeEqual,
  hashBootstrapToken,
  newToken,
  parseToken,
  sha256,
  SYSTEM,
  type Principal,
  type Role,
} from './auth.ts';
import { one, type Db } from './db/db.ts';
import { auditedTransaction, hex } from './tx.ts';
import { createRolloutService } from './rollouts.ts';
import { createDeliveryService } from './delivery.ts';
import { suitAuthenticator } from './suit-auth.ts';
import { ServerError } from './errors.ts';
import {
  createDeviceAuthCache,
  deviceStateChanged,
  rememberFingerprint,
  standingCheckDeferred,
  watchDeviceStanding,
  type StandingWatch,
} from './device-auth.ts';
import { parseDeviceKek, parseKeyAgreementKey, type ContentKeyVault, type OperatorKey } from './keys.ts';

/** Keys the server holds (keys.ts); each is optional: features that need a missing one refuse with a typed error. */
export interface ServerKeys {
  readonly operator?: OperatorKey;
  readonly vault?: ContentKeyVault;
}

/** What the audit log records about device keys: fingerprints and presence, never the KEK. */
function keyAuditDetails(k: {
  ka: Uint8Array | null | undefined;
  kek: Uint8Array | null | undefined;
  report: { spki: Uint8Array; alg: number } | null | undefined;
}): { [k: string]: Json } {
  const out: { [k: string]: Json } = {};
  if (k.ka !== undefined) out.keyAgreementSpkiSha256 = k.ka === null ? null : hex(sha256(k.ka));
  if (k.kek !== undefined) out.kek = k.kek === null ? 'removed' : 'set';
  if (k.report !== undefined) out.reportKeySpkiSha256 = k.report === null ? null : hex(sha256(k.report.spki));
  return out;
}

const unhex = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, 'hex'));

function uniqueViolation(e: unknown): boolean {
  return e instanceof Error && 'code' in e && e.code === '23505';
}

// ---------------------------------------------------------------------------------------------------------------
// Tokens

export interface TokenInfo {
  id: string;
  name: string;
  role: Role;
  createdAtMs: number;
  createdBy: string;
  revoked: boolean;
}

interface TokenRow {
  id: string;
  name: string;
  role: Role;
  secret_sha256: Uint8Array;
  created_at_ms: number;
  created_by: string;
  revoked_at_ms: number | null;
}

const tokenInfo = (r: TokenRow): TokenInfo => ({
  id: r.id,
  name: r.name,
  role: r.role,
  createdAtMs: r.created_at_ms,
  createdBy: r.created_by,
  revoked: r.revoked_at_ms !== null,
});

// ---------------------------------------------------------------------------------------------------------------
// Devices

export interface DeviceInfo {
  id: string;
  name: string;
  certSha256: string;
  enabled: boolean;
  group: string | null;
  tags: string[];
  attributes: Record<string, string>;
  createdAtMs: number;
  lastSeenMs: number | null;
  /** Curve of the registered key-agreement key (ECDH-ES recipients), if any. */
  keyAgreement: 'P-256' | 'X25519' | null;
  /** Whether a per-device AES-KW key-encryption key is registered. */
  hasKek: boolean;
  /** Algorithm of the key that verifies the device's signed SUIT reports, if any. */
  reportKeyAlg: AuthorKeyAlg | null;
}

interface DeviceRow {
  id: string;
  name: string;
  cert_sha256: Uint8Array;
  enabled: boolean;
  device_group: string | null;
  tags: string[];
  attributes: Record<string, string>;
  created_at_ms: number;
  last_seen_ms: number | null;
  ka_spki: Uint8Array | null;
  kek_wrapped: Uint8Array | null;
  report_key_alg: number | null;
}

const curveOfSpki = (spki: Uint8Array): 'P-256' | 'X25519' =>
  createPublicKey({ key: Buffer.from(spki), format: 'der', type: 'spki' }).asymmetricKeyType === 'x25519'
    ? 'X25519'
    : 'P-256';

const deviceInfo = (r: DeviceRow): DeviceInfo => ({
  id: r.id,
  name: r.name,
  certSha256: hex(r.cert_sha256),
  enabled: r.enabled,
  group: r.device_group,
  tags: r.tags,
  attributes: r.attributes,
  createdAtMs: r.created_at_ms,
  lastSeenMs: r.last_seen_ms,
  keyAgreement: r.ka_spki === null ? null : curveOfSpki(r.ka_spki),
  hasKek: r.kek_wrapped !== null,
  reportKeyAlg: r.report_key_alg === null ? null : algName(r.report_key_alg),
});

/** Device key material accepted on create and update (public keys as SPKI PEM; the KEK as hex). */
export interface DeviceKeys {
  /** P-256 or X25519 public key: the CEK is wrapped to it with ECDH-ES+A128KW (RFC 9053 §6.3). */
  keyAgreementKeyPem?: string | null;
  /** 32 hex digits: a per-device A128KW key-encryption key (RFC 9053 §6.2.1), stored wrapped under the vault. */
  kek?: string | null;
  /** Public key verifying the device's signed SUIT reports (COSE_Sign1), with its algorithm. */
  reportKeyPem?: string | null;
  reportKeyAlg?: AuthorKeyAlg;
}

export interface DeviceCreate extends DeviceKeys {
  name: string;
  /** PEM certificate of the device (its SHA-256 DER fingerprint identifies it on the mTLS listener) … */
  certificatePem?: string;
  /** … or the fingerprint itself (64 hex). */
  certSha256?: string;
  group?: string | null;
  tags?: string[];
  attributes?: Record<string, string>;
}

export interface DeviceUpdate extends DeviceKeys {
  enabled?: boolean;
  group?: string | null;
  tags?: string[];
  attributes?: Record<string, string>;
}

/** SHA-256 of a certificate's DER encoding, the device identity on the mTLS listener. */
export function certFingerprint(certPemOrDer: string | Uint8Array): Uint8Array {
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(certPemOrDer);
  } catch (e) {
    throw new ServerError('REQUEST_INVALID', 'certificatePem is not an X.509 certificate', { cause: e });
  }
  return sha256(cert.raw);
}

// ---------------------------------------------------------------------------------------------------------------
// Author keys

/** Signature algorithms accepted for author keys (COSE ids, RFC 9053 §2 / fully-specified algorithms). */
export const AUTHOR_KEY_ALGS = { ES256: -7, ESP256: -9, EdDSA: -8, Ed25519: -19 } as const;
export type AuthorKeyAlg = keyof typeof AUTHOR_KEY_ALGS;

export interface AuthorKeyInfo {
  id: string;
  name: string;
  alg: AuthorKeyAlg;
  publicKeyPem: string;
  createdAtMs: number;
  revoked: boolean;
}

/** An active author key as the release authenticator sees it. */
export interface AuthorKeyRecord {
  readonly id: string;
  readonly name: string;
  /** COSE algorithm id. */
  readonly alg: number;
  readonly publicKey: KeyObject;
}

interface AuthorKeyRow {
  id: string;
  name: string;
  alg: number;
  spki: Uint8Array;
  created_at_ms: number;
  revoked_at_ms: number | null;
}

const algName = (alg: number): AuthorKeyAlg => {
  const e = Object.entries(AUTHOR_KEY_ALGS).find(([, v]) => v === alg);
  if (e === undefined) throw new ServerError('INTERNAL', `stored author key with unknown alg ${alg}`);
  return e[0] as AuthorKeyAlg;
};

const authorKeyInfo = (r: AuthorKeyRow): AuthorKeyInfo => ({
  id: r.id,
  name: r.name,
  alg: algName(r.alg),
  publicKeyPem: createPublicKey({ key: Buffer.from(r.spki), format: 'der', type: 'spki' })
    .export({ type: 'spki', format: 'pem' })
    .toString(),
  createdAtMs: r.created_at_ms,
  revoked: r.revoked_at_ms !== null,
});

function parseAuthorKey(alg: AuthorKeyAlg, pem: string): Uint8Array {
  let key: KeyObject;
  try {
    key = createPublicKey(pem);
  } catch (e) {
    throw new ServerError('AUTHOR_KEY_INVALID', 'publicKeyPem is not a public key', { cause: e });
  }
  const ok =
    alg === 'ES256' || alg === 'ESP256'
      ? key.asymmetricKeyType === 'ec' && key.asymmetricKeyDetails?.namedCurve === 'prime256v1'
      : key.asymmetricKeyType === 'ed25519';
  // RFC 9053 §2.1 (ECDSA with P-256 for ES256/ESP256), RFC 9053 §2.2 / RFC 8032 (EdDSA: Ed25519 keys only here).
  if (!ok) throw new ServerError('AUTHOR_KEY_INVALID', `key type does not fit ${alg}`);
  return new Uint8Array(key.export({ type: 'spki', format: 'der' }));
}

// ---------------------------------------------------------------------------------------------------------------
// Releases

/** What the SUIT layer reports about an authenticated envelope (MF §8.3 authentication, §8.4 manifest). */
export interface AuthenticatedRelease {
  /** The author key whose signature verified. */
  readonly authorKeyId: string;
  /** manifest-sequence-number (MF §8.4.2). */
  readonly sequenceNumber: bigint;
  /** SHA-256 image digests the manifest names (MF §8.4.8.6 image-digest). */
  readonly payloadDigests: readonly Uint8Array[];
  /** Integrated payloads carried in the envelope (MF §7.5). */
  readonly integrated: ReadonlyMap<string, Uint8Array>;
  /** The envelope's SUIT_Digest bytes of the manifest (MF §8.3): what SUIT reports reference (RP §4). */
  readonly manifestDigest: Uint8Array;
}

/** Authenticates an envelope against the registered author keys; throws a SuitError/CoseError on failure. */
export type ReleaseAuthenticator = (
  envelope: Uint8Array,
  keys: readonly AuthorKeyRecord[],
) => Promise<AuthenticatedRelease>;

export interface ReleaseInfo {
  id: string;
  envelopeSha256: string;
  sequenceNumber: string;
  authorKeyId: string;
  uploadedBy: string;
  status: 'uploaded' | 'approved' | 'withdrawn';
  payloads: string[];
  createdAtMs: number;
}

interface ReleaseRow {
  id: string;
  envelope_sha256: Uint8Array;
  sequence_number: string;
  author_key_id: string;
  uploaded_by: string;
  status: ReleaseInfo['status'];
  created_at_ms: number;
  payloads: string[] | null;
}

const releaseInfo = (r: ReleaseRow): ReleaseInfo => ({
  id: r.id,
  envelopeSha256: hex(r.envelope_sha256),
  sequenceNumber: r.sequence_number,
  authorKeyId: r.author_key_id,
  uploadedBy: r.uploaded_by,
  status: r.status,
  payloads: [...(r.payloads ?? [])].sort(),
  createdAtMs: r.created_at_ms,
});

const RELEASE_SELECT = `SELECT r.id, r.envelope_sha256, r.sequence_number::text AS sequence_number, r.author_key_id, r.uploaded_by,
  r.status, r.created_at_ms,
  (SELECT array_agg(encode(p.sha256, 'hex')) FROM release_payloads p WHERE p.release_id = r.id) AS payloads
  FROM releases r`;

export interface BlobMeta {
  sha256: string;
  size: number;
}

/** Bytes read from the blob store per query when streaming a payload. */
export const BLOB_CHUNK = 1024 * 1024;

// ---------------------------------------------------------------------------------------------------------------

export interface ServicesOptions {
  readonly authenticator?: ReleaseAuthenticator;
  /** Operator signing key and content-key vault (approval, per-device envelopes, device KEKs). */
  readonly keys?: ServerKeys;
  readonly now?: () => number;
}

export type Services = ReturnType<typeof createServices>;

export function createServices(db: Db, opts: ServicesOptions = {}) {
  const now = opts.now ?? Date.now;
  const authenticator = opts.authenticator ?? suitAuthenticator();

  const audited = auditedTransaction(db, now);
  const vault = (): ContentKeyVault => {
    if (opts.keys?.vault === undefined)
      throw new ServerError('OPERATOR_KEY_UNAVAILABLE', 'the content-key vault is not configured');
    return opts.keys.vault;
  };

  /** Parses and stores-ready device key material; undefined members are left unchanged. */
  async function deviceKeyColumns(req: DeviceKeys): Promise<{
    ka: Uint8Array | null | undefined;
    kek: Uint8Array | null | undefined;
    report: { spki: Uint8Array; alg: number } | null | undefined;
  }> {
    const ka =
      req.keyAgreementKeyPem === undefined
        ? undefined
        : req.keyAgreementKeyPem === null
          ? null
          : parseKeyAgreementKey(req.keyAgreementKeyPem).spki;
    let kek: Uint8Array | null | undefined;
    if (req.kek === null) kek = null;
    else if (req.kek !== undefined) {
      const raw = parseDeviceKek(req.kek);
      try {
        kek = await vault().wrap(raw);
      } finally {
        raw.fill(0);
      }
    }
    let report: { spki: Uint8Array; alg: number } | null | undefined;
    if (req.reportKeyPem === null) report = null;
    else if (req.reportKeyPem !== undefined) {
      if (req.reportKeyAlg === undefined)
        throw new ServerError('REQUEST_INVALID', 'reportKeyPem needs reportKeyAlg');
      try {
        report = {
          spki: parseAuthorKey(req.reportKeyAlg, req.reportKeyPem),
          alg: AUTHOR_KEY_ALGS[req.reportKeyAlg],
        };
      } catch (e) {
        throw new ServerError('DEVICE_KEY_INVALID', 'reportKeyPem does not fit reportKeyAlg', { cause: e });
      }
    } else if (req.reportKeyAlg !== undefined)
      throw new ServerError('REQUEST_INVALID', 'reportKeyAlg needs reportKeyPem');
    return { ka, kek, report };
  }

  const tokens = {
    async create(p: Principal, req: { name: string; role: Role }): Promise<TokenInfo & { token: string }> {
      authorize(p, 'token.create');
      const t = newToken();
      return audited(p, 'token.create', async (tx) => {
        const row = one(
          await tx.query<TokenRow>(
            `INSERT INTO api_tokens (id, name, role, secret_sha256, created_at_ms, created_by)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING *`,
            [t.id, req.name, req.role, t.secretHash, now(), actorOf(p)],
          ),
          'token',
        );
        return {
          result: { ...tokenInfo(row), token: t.token },
          subject: `token:${t.id}`,
          details: { name: req.name, role: req.role },
        };
      });
    },
    async list(p: Principal): Promise<TokenInfo[]> {
      authorize(p, 'token.read');
      return (await db.query<TokenRow>('SELECT * FROM api_tokens ORDER BY created_at_ms, id')).map(tokenInfo);
    },
    async revoke(p: Principal, id: string): Promise<TokenInfo> {
      authorize(p, 'token.revoke');
      return audited(p, 'token.revoke', async (tx) => {
        const row = one(
          await tx.query<TokenRow>(
            'UPDATE api_tokens SET revoked_at_ms = COALESCE(revoked_at_ms, $2) WHERE id = $1 RETURNING *',
            [id, now()],
          ),
          'token',
        );
        return { result: tokenInfo(row), subject: `token:${id}` };
      });
    },
    /** Authenticates a bearer token; the same failure for unknown, wrong and revoked tokens. */
    async authenticate(token: string): Promise<Principal> {
      const { id, secretHash } = parseToken(token);
      const row = (await db.query<TokenRow>('SELECT * FROM api_tokens WHERE id = $1', [id]))[0];
      const expected = row?.secret_sha256 ?? new Uint8Array(32);
      const match = constantTimeEqual(expected, secretHash);
      if (row === undefined || !match || row.revoked_at_ms !== null)
        throw new ServerError('AUTH_INVALID', 'invalid or revoked token');
      return { kind: 'operator', tokenId: row.id, name: row.name, role: row.role };
    },
    /**
     * Ensures an admin can log in: ROTOR_ADMIN_TOKEN (if given) becomes the bootstrap admin token; otherwise, on
     * first run only, a token is generated and written to `<dataDir>/bootstrap-admin-token` (mode 0600, created
     * exclusively). The token itself is never logged. Returns the file written, if any.
     */
    async bootstrap(envToken: string | undefined, dataDir: string): Promise<string | undefined> {
      if (envToken !== undefined) {
        const hash = hashBootstrapToken(envToken);
        await audited(SYSTEM, 'token.bootstrap', async (tx) => {
          await tx.query(
            `INSERT INTO api_tokens (id, name, role, secret_sha256, created_at_ms, created_by)
             VALUES ($1, 'bootstrap admin', 'admin', $2, $3, 'system')
             ON CONFLICT (id) DO UPDATE SET secret_sha256 = EXCLUDED.secret_sha256, revoked_at_ms = NULL, role = 'admin'`,
            [BOOTSTRAP_TOKEN_ID, hash, now()],
          );
          return {
            result: undefined,
            subject: `token:${BOOTSTRAP_TOKEN_ID}`,
            details: { source: 'ROTOR_ADMIN_TOKEN' },
          };
        });
        return undefined;
      }
      const exists = await db.query('SELECT 1 FROM api_tokens WHERE id = $1', [BOOTSTRAP_TOKEN_ID]);
      if (exists.length > 0) return undefined;
      // Not in the rot_<id>_<secret> shape: any other presented token is checked against the bootstrap entry.
      const t = { token: randomBytes(32).toString('base64url') };
      const won = await audited(SYSTEM, 'token.bootstrap', async (tx) => {
        const rows = await tx.query(
          `INSERT INTO api_tokens (id, name, role, secret_sha256, created_at_ms, created_by)
           VALUES ($1, 'bootstrap admin', 'admin', $2, $3, 'system') ON CONFLICT (id) DO NOTHING RETURNING id`,
          [BOOTSTRAP_TOKEN_ID, hashBootstrapToken(t.token), now()],
        );
        return {
          result: rows.length === 1,
          subject: `token:${BOOTSTRAP_TOKEN_ID}`,
          details: { source: 'generated' },
        };
      });
      if (!won) return undefined;
      await mkdir(dataDir, { recursive: true, mode: 0o700 });
      const file = join(dataDir, 'bootstrap-admin-token');
      const fh = await open(file, 'wx', 0o600);
      try {
        await fh.writeFile(`${t.token}\n`);
        await fh.sync();
      } finally {
        await fh.close();
      }
      return file;
    },
  };

  // Other instances' changes arrive by NOTIFY (PostgreSQL); the watch starts with the first device request.
  let standing: StandingWatch | undefined;
  const authCache = createDeviceAuthCache({ live: () => (standing ??= watchDeviceStanding(db)).live() });
  const devices = {
    async create(p: Principal, req: DeviceCreate): Promise<DeviceInfo> {
      authorize(p, 'device.create');
      if ((req.certificatePem === undefined) === (req.certSha256 === undefined)) {
        throw new ServerError('REQUEST_INVALID', 'exactly one of certificatePem and certSha256');
      }
      const fp =
        req.certificatePem !== undefined ? certFingerprint(req.certificatePem) : unhex(req.certSha256!);
      const id = randomUUID();
      const k = await deviceKeyColumns(req);
      try {
        return await audited(p, 'device.create', async (tx) => {
          const row = one(
            await tx.query<DeviceRow>(
              `INSERT INTO devices (id, name, cert_sha256, device_group, tags, attributes, created_at_ms,
                 ka_spki, kek_wrapped, report_key_spki, report_key_alg)
               VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9, $10, $11) RETURNING *`,
              [
                id,
                req.name,
                fp,
                req.group ?? null,
                req.tags ?? [],
                JSON.stringify(req.attributes ?? {}),
                now(),
                k.ka ?? null,
                k.kek ?? null,
                k.report?.spki ?? null,
                k.report?.alg ?? null,
              ],
            ),
            'device',
          );
          return {
            result: deviceInfo(row),
            subject: `device:${id}`,
            details: { name: req.name, certSha256: hex(fp), ...keyAuditDetails(k) },
          };
        });
      } catch (e) {
        if (uniqueViolation(e))
          throw new ServerError('ALREADY_EXISTS', 'a device with this name or certificate exists');
        throw e;
      }
    },
    async get(p: Principal, id: string): Promise<DeviceInfo> {
      if (p.kind === 'device') authorizeDevice(p, 'device.self', id);
      else authorize(p, 'device.read');
      return deviceInfo(
        one(await db.query<DeviceRow>('SELECT * FROM devices WHERE id = $1', [id]), 'device'),
      );
    },
    async list(
      p: Principal,
      q: { group?: string; tag?: string; limit: number; after?: string },
    ): Promise<DeviceInfo[]> {
      authorize(p, 'device.read');
      const rows = await db.query<DeviceRow>(
        `SELECT * FROM devices WHERE ($1::text IS NULL OR device_group = $1) AND ($2::text IS NULL OR tags @> ARRAY[$2::text])
         AND ($3::text IS NULL OR id > $3) ORDER BY id LIMIT $4`,
        [q.group ?? null, q.tag ?? null, q.after ?? null, q.limit],
      );
      return rows.map(deviceInfo);
    },
    async update(p: Principal, id: string, req: DeviceUpdate): Promise<DeviceInfo> {
      authorize(p, 'device.update');
      const k = await deviceKeyColumns(req);
      // Dropped cached device authentications before and after the change (device-auth.ts).
      deviceStateChanged();
      try {
        return await audited(p, 'device.update', async (tx) => {
          const row = one(
            await tx.query<DeviceRow>(
              `UPDATE devices SET
               enabled = COALESCE($2, enabled),
               device_group = CASE WHEN $3 THEN $4 ELSE device_group END,
               tags = COALESCE($5, tags),
               attributes = COALESCE($6::jsonb, attributes),
               ka_spki = CASE WHEN $7 THEN $8 ELSE ka_spki END,
               kek_wrapped = CASE WHEN $9 THEN $10 ELSE kek_wrapped END,
               report_key_spki = CASE WHEN $11 THEN $12 ELSE report_key_spki END,
               report_key_alg = CASE WHEN $11 THEN $13 ELSE report_key_alg END
             WHERE id = $1 RETURNING *`,
              [
                id,
                req.enabled ?? null,
                'group' in req,
                req.group ?? null,
                req.tags ?? null,
                req.attributes === undefined ? null : JSON.stringify(req.attributes),
                k.ka !== undefined,
                k.ka ?? null,
                k.kek !== undefined,
                k.kek ?? null,
                k.report !== undefined,
                k.report?.spki ?? null,
                k.report?.alg ?? null,
              ],
            ),
            'device',
          );
          const plain: { [k: string]: Json } = {};
          if (req.enabled !== undefined) plain.enabled = req.enabled;
          if ('group' in req) plain.group = req.group ?? null;
          if (req.tags !== undefined) plain.tags = req.tags;
          if (req.attributes !== undefined) plain.attributes = req.attributes;
          return {
            result: deviceInfo(row),
            subject: `device:${id}`,
            details: { ...plain, ...keyAuditDetails(k) },
          };
        });
      } finally {
        deviceStateChanged();
      }
    },
    /**
     * Identifies a device by its TLS client certificate (SHA-256 of the DER). Unknown and disabled devices are
     * refused on every request; a success is cached briefly (device-auth.ts) and dropped by any change of a
     * device's standing, in this process or (PostgreSQL NOTIFY) in any other instance on the same database, so
     * disabling takes effect on the device's next request wherever it lands.
     */
    async authenticate(certDer: Uint8Array): Promise<Principal> {
      const deferred = standingCheckDeferred(); // first, synchronously (device-auth.ts)
      const fp = sha256(certDer);
      const key = hex(fp);
      const hit = authCache.get(key);
      if (hit !== undefined && deferred) return hit; // the handler's own statement checks the standing
      if (hit !== undefined && standing !== undefined) {
        // Changes committed by other instances before this request was sent are delivered first (device-auth.ts).
        const ok = await standing.sync().then(
          () => true,
          () => false,
        );
        const cached = ok ? authCache.get(key) : undefined;
        if (cached !== undefined) return cached;
      }
      const startEpoch = authCache.epoch();
      const rows = await db.query<{ id: string; name: string; enabled: boolean }>(
        'SELECT id, name, enabled FROM devices WHERE cert_sha256 = $1',
        [fp],
      );
      const d = rows[0];
      if (d === undefined) throw new ServerError('DEVICE_UNKNOWN', 'client certificate is not registered');
      if (!d.enabled) throw new ServerError('DEVICE_DISABLED', 'device is disabled');
      const principal: Principal = { kind: 'device', deviceId: d.id, name: d.name };
      rememberFingerprint(principal, fp);
      authCache.set(key, principal, startEpoch);
      return principal;
    },
  };

  const authorKeys = {
    async create(
      p: Principal,
      req: { name: string; alg: AuthorKeyAlg; publicKeyPem: string },
    ): Promise<AuthorKeyInfo> {
      authorize(p, 'authorKey.create');
      const spki = parseAuthorKey(req.alg, req.publicKeyPem);
      const id = randomUUID();
      try {
        return await audited(p, 'authorKey.create', async (tx) => {
          const row = one(
            await tx.query<AuthorKeyRow>(
              'INSERT INTO author_keys (id, name, alg, spki, created_at_ms) VALUES ($1, $2, $3, $4, $5) RETURNING *',
              [id, req.name, AUTHOR_KEY_ALGS[req.alg], spki, now()],
            ),
            'author key',
          );
          return {
            result: authorKeyInfo(row),
            subject: `authorKey:${id}`,
            details: { name: req.name, alg: req.alg, spkiSha256: hex(sha256(spki)) },
          };
        });
      } catch (e) {
        if (uniqueViolation(e))
          throw new ServerError('ALREADY_EXISTS', 'an author key with this name or public key exists');
        throw e;
      }
    },
    async list(p: Principal): Promise<AuthorKeyInfo[]> {
      authorize(p, 'authorKey.read');
      return (await db.query<AuthorKeyRow>('SELECT * FROM author_keys ORDER BY created_at_ms, id')).map(
        authorKeyInfo,
      );
    },
    async revoke(p: Principal, id: string): Promise<AuthorKeyInfo> {
      authorize(p, 'authorKey.revoke');
      return audited(p, 'authorKey.revoke', async (tx) => {
        const row = one(
          await tx.query<AuthorKeyRow>(
            'UPDATE author_keys SET revoked_at_ms = COALESCE(revoked_at_ms, $2) WHERE id = $1 RETURNING *',
            [id, now()],
          ),
          'author key',
        );
        return { result: authorKeyInfo(row), subject: `authorKey:${id}` };
      });
    },
  };

  /**
   * Ciphertexts served to devices, kept in memory once read (content-addressed and immutable: the bytes under a
   * digest never change, and nothing deletes a ciphertext of a release): their size, and the bytes of small ones,
   * so a rollout's many identical downloads do not each read the database. Bounded by total bytes.
   */
  const servedSize = new Map<string, number>();
  const servedBytes = new Map<string, { size: number; bytes: Promise<Uint8Array> }>();
  let servedTotal = 0;
  const SERVED_MAX_BLOB = 256 * 1024;
  const SERVED_MAX_TOTAL = 64 * 1024 * 1024;

  const payloads = {
    /** Stores a payload under its SHA-256 (idempotent: the same bytes are stored once). */
    async upload(
      p: Principal,
      sha256Hex: string,
      bytes: Uint8Array,
    ): Promise<BlobMeta & { created: boolean }> {
      authorize(p, 'payload.upload');
      const digest = sha256(bytes);
      if (hex(digest) !== sha256Hex.toLowerCase())
        throw new ServerError('PAYLOAD_DIGEST_MISMATCH', 'body does not hash to the digest in the URL');
      return audited(p, 'payload.upload', async (tx) => {
        const rows = await tx.query(
          'INSERT INTO blobs (sha256, size, data, created_at_ms) VALUES ($1, $2, $3, $4) ON CONFLICT (sha256) DO NOTHING RETURNING sha256',
          [digest, bytes.length, bytes, now()],
        );
        return {
          result: { sha256: hex(digest), size: bytes.length, created: rows.length === 1 },
          subject: `payload:${hex(digest)}`,
          details: { size: bytes.length },
        };
      });
    },
    /**
     * Size of a payload that may be served to `p`: devices get only the ciphertexts of approved releases (RFC 9019
     * §3 confidentiality: a plaintext image never leaves the server towards a device); operators get the release
     * payloads and ciphertexts.
     */
    async meta(p: Principal, sha256Hex: string): Promise<BlobMeta> {
      if (p.kind === 'device') authorize(p, 'payload.download');
      else authorize(p, 'release.read');
      const sql =
        p.kind === 'device'
          ? 'SELECT b.size FROM blobs b WHERE b.sha256 = $1 AND EXISTS (SELECT 1 FROM release_ciphertexts c WHERE c.ciphertext_sha256 = b.sha256)'
          : `SELECT b.size FROM blobs b WHERE b.sha256 = $1 AND (EXISTS (SELECT 1 FROM release_payloads r WHERE r.sha256 = b.sha256)
             OR EXISTS (SELECT 1 FROM release_ciphertexts c WHERE c.ciphertext_sha256 = b.sha256))`;
      const key = sha256Hex.toLowerCase();
      const cached = p.kind === 'device' ? servedSize.get(key) : undefined;
      if (cached !== undefined) return { sha256: key, size: cached };
      const row = one(await db.query<{ size: number }>(sql, [unhex(sha256Hex)]), 'payload');
      if (p.kind === 'device') {
        if (servedSize.size >= 100_000) servedSize.clear();
        servedSize.set(key, row.size);
      }
      return { sha256: key, size: row.size };
    },
    /** Reads [start, end) of a payload in chunks (call meta() first: it authorizes). */
    async *read(sha256Hex: string, start: number, end: number): AsyncGenerator<Uint8Array> {
      const key = sha256Hex.toLowerCase();
      const size = servedSize.get(key);
      if (size !== undefined && size <= SERVED_MAX_BLOB) {
        let whole = servedBytes.get(key)?.bytes;
        if (whole === undefined) {
          whole = db
            .query<{ data: Uint8Array }>('SELECT data FROM blobs WHERE sha256 = $1', [unhex(key)])
            .then((rows) => one(rows, 'payload').data);
          while (servedTotal + size > SERVED_MAX_TOTAL && servedBytes.size > 0) {
            const [first] = servedBytes;
            servedBytes.delete(first![0]);
            servedTotal -= first![1].size;
          }
          servedBytes.set(key, { size, bytes: whole });
          servedTotal += size;
          whole.catch(() => {
            if (servedBytes.delete(key)) servedTotal -= size;
          });
        }
        const bytes = await whole;
        if (bytes.length === size) {
          yield bytes.subarray(start, end);
          return;
        }
      }
      for (let off = start; off < end; off += BLOB_CHUNK) {
        const len = Math.min(BLOB_CHUNK, end - off);
        const row = one(
          await db.query<{ chunk: Uint8Array }>(
            'SELECT substring(data FROM $2 FOR $3) AS chunk FROM blobs WHERE sha256 = $1',
            [unhex(sha256Hex), off + 1, len],
          ),
          'payload',
        );
        yield row.chunk;
      }
    },
  };

  const releases = {
    /**
     * Accepts a SUIT envelope: authenticated against the active author keys (MF §8.3; RFC 9019 §3: only authorized
     * authors' images enter the fleet), every payload it names must be present (integrated or uploaded), then the
     * release, its integrated payloads and the audit entry are written in one transaction. Any failure stores nothing.
     */
    async upload(p: Principal, envelope: Uint8Array): Promise<ReleaseInfo> {
      authorize(p, 'release.upload');
      const keys = (
        await db.query<AuthorKeyRow>('SELECT * FROM author_keys WHERE revoked_at_ms IS NULL')
      ).map((r): AuthorKeyRecord => ({
        id: r.id,
        name: r.name,
        alg: r.alg,
        publicKey: createPublicKey({ key: Buffer.from(r.spki), format: 'der', type: 'spki' }),
      }));
      const auth = await authenticator(envelope, keys);
      if (!keys.some((k) => k.id === auth.authorKeyId))
        throw new ServerError('INTERNAL', 'authenticator returned an unknown key');
      const integrated = [...auth.integrated.values()].map((b) => ({ digest: sha256(b), bytes: b }));
      const envelopeSha = sha256(envelope);
      const id = randomUUID();
      try {
        return await audited(p, 'release.upload', async (tx) => {
          for (const b of integrated) {
            await tx.query(
              'INSERT INTO blobs (sha256, size, data, created_at_ms) VALUES ($1, $2, $3, $4) ON CONFLICT (sha256) DO NOTHING',
              [b.digest, b.bytes.length, b.bytes, now()],
            );
          }
          const wanted = [...new Map(auth.payloadDigests.map((d) => [hex(d), d])).values()];
          if (wanted.length > 0) {
            const have = await tx.query<{ sha256: Uint8Array }>(
              "SELECT sha256 FROM blobs WHERE sha256 IN (SELECT decode(h, 'hex') FROM unnest($1::text[]) AS h)",
              [wanted.map(hex)],
            );
            const haveSet = new Set(have.map((r) => hex(r.sha256)));
            const missing = wanted.map(hex).filter((h) => !haveSet.has(h));
            if (missing.length > 0) {
              throw new ServerError('PAYLOAD_MISSING', `payloads not uploaded: ${missing.join(', ')}`, {
                extra: { missing },
              });
            }
          }
          await tx.query(
            `INSERT INTO releases (id, envelope_sha256, envelope, sequence_number, author_key_id, uploaded_by, created_at_ms, manifest_digest)
             VALUES ($1, $2, $3, $4::numeric, $5, $6, $7, $8)`,
            [
              id,
              envelopeSha,
              envelope,
              auth.sequenceNumber.toString(),
              auth.authorKeyId,
              actorOf(p),
              now(),
              auth.manifestDigest,
            ],
          );
          const all = new Map([...wanted, ...integrated.map((b) => b.digest)].map((d) => [hex(d), d]));
          for (const d of all.values())
            await tx.query('INSERT INTO release_payloads (release_id, sha256) VALUES ($1, $2)', [id, d]);
          const info = releaseInfo(
            one(await tx.query<ReleaseRow>(`${RELEASE_SELECT} WHERE r.id = $1`, [id]), 'release'),
          );
          return {
            result: info,
            subject: `release:${id}`,
            details: {
              envelopeSha256: info.envelopeSha256,
              sequenceNumber: info.sequenceNumber,
              authorKeyId: info.authorKeyId,
              payloads: info.payloads,
            },
          };
        });
      } catch (e) {
        if (uniqueViolation(e)) throw new ServerError('ALREADY_EXISTS', 'this envelope was already uploaded');
        throw e;
      }
    },
    async get(p: Principal, id: string): Promise<ReleaseInfo> {
      authorize(p, 'release.read');
      return releaseInfo(
        one(await db.query<ReleaseRow>(`${RELEASE_SELECT} WHERE r.id = $1`, [id]), 'release'),
      );
    },
    async envelope(p: Principal, id: string): Promise<Uint8Array> {
      authorize(p, 'release.read');
      return one(
        await db.query<{ envelope: Uint8Array }>('SELECT envelope FROM releases WHERE id = $1', [id]),
        'release',
      ).envelope;
    },
    async list(p: Principal, q: { limit: number; after?: string }): Promise<ReleaseInfo[]> {
      authorize(p, 'release.read');
      return (
        await db.query<ReleaseRow>(
          `${RELEASE_SELECT} WHERE ($1::text IS NULL OR r.id > $1) ORDER BY r.id LIMIT $2`,
          [q.after ?? null, q.limit],
        )
      ).map(releaseInfo);
    },
  };

  const delivery = createDeliveryService(db, now, opts.keys ?? {});

  const audit = {
    async list(
      p: Principal,
      q: { after: number; limit: number },
    ): Promise<{ seq: number; body: string; prevHash: string; hash: string }[]> {
      authorize(p, 'audit.read');
      const rows = await db.query<{ seq: number; body: string; prev_hash: Uint8Array; hash: Uint8Array }>(
        'SELECT seq, body, prev_hash, hash FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2',
        [q.after, q.limit],
      );
      return rows.map((r) => ({ seq: r.seq, body: r.body, prevHash: hex(r.prev_hash), hash: hex(r.hash) }));
    },
    async verify(p: Principal, anchor?: AuditAnchor): Promise<AuditVerification> {
      authorize(p, 'audit.read');
      return verifyAuditLogInDb(db, anchor === undefined ? {} : { anchor });
    },
  };

  return {
    db,
    tokens,
    devices,
    authorKeys,
    payloads,
    releases,
    audit,
    rollouts: createRolloutService(db, now, delivery),
    delivery,
  };
}

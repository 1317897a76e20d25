/**
 * Manufacturing provisioning, as a library (the CLI's `rotor factory provision` and the fleet simulator call it).
 *
 * Per device: the device generates its identity key inside its enclave and returns a PKCS#10 CSR; the issuing CA
 * (key in the PKCS#11 token) checks it and signs a device certificate; the certificate is recorded in the audit log
 * and the device registered with the server in ONE database transaction; the device stores its certificate, chain,
 * trust anchors, initial firmware and anti-rollback values atomically.
 *
 * Crash safety: the factory station keeps a journal (append-only JSON lines, fsynced, group-committed):
 *   begin(i) → issued(i, certificate) → done(i)
 * On (re)start every device whose last record is `begin` is wiped (DeviceFactory.discard: "not started"); every
 * device whose last record is `issued` is rolled forward (registration is idempotent by certificate fingerprint,
 * installation is atomic and idempotent). A certificate that never reached the journal never left the process, so
 * it was never issued. Hence after recovery each device is either fully provisioned and registered or not started.
 */
import { createHash, createPublicKey, randomUUID, type KeyObject } from 'node:crypto';
import { open, readFile, type FileHandle } from 'node:fs/promises';
import * as x509 from '@peculiar/x509';
import { RotChain } from '@rotor/trust';
import { AUDIT_LOCK_KEY, canonicalJson, chainHash, GENESIS_HASH } from '../audit.ts';
import { actorOf, SYSTEM, type Principal } from '../auth.ts';
import type { Db, Queryable } from '../db/db.ts';
import { ServerError } from '../errors.ts';
import { ROT_ALGS, MAX_CHAIN_RECORDS } from '../attestation/service.ts';
import { createDistributionService } from '../attestation/distribution.ts';
import {
  checkDeviceCsr,
  issueDeviceCertificate,
  parseUeidUrn,
  toPem,
  type CaCert,
  type IssuedCertificate,
} from './ca.ts';
import type { SignerKeyType } from './x509-signer.ts';

/** What a device receives at manufacturing besides its own certificate. */
export interface ProvisioningProfile {
  readonly name: string;
  /** Device class (hardware model); becomes the device's group in the registry. */
  readonly deviceClass: string;
  /** Identity key type the device must generate. */
  readonly keyType: SignerKeyType;
  readonly validityDays: number;
  /** Trust anchors (PEM): author and operator public keys (SPKI), server TLS CA and factory root CA certificates. */
  readonly trustAnchors: {
    readonly authorKeyPem: string;
    readonly operatorKeyPem: string;
    readonly serverTlsCaPem: string;
    readonly factoryCaPem: string;
  };
  /** Initial firmware: a SUIT envelope (base64) and its SHA-256, or null. */
  readonly firmware: { readonly envelopeBase64: string; readonly sha256: string } | null;
  /** Initial anti-rollback values (e.g. the manifest sequence number per component). */
  readonly antiRollback: Readonly<Record<string, number>>;
  /**
   * Issue 7 trust distribution, provisioned: the version-1 trust-anchor statement (COSE_Sign, trust/anchors.ts —
   * the device walks every later version from it, TUF §5.3.4) and the first signed revocation list (so a fresh
   * device holds an unexpired list before it trusts any update: freeze-attack rule, TUF §5.3.8). Absent in
   * profiles made before issue 7: such devices verify updates against their factory anchors only.
   */
  readonly trust?: ProfileTrust;
}

/** The trust documents a profile provisions (base64 of the signed bytes). */
export interface ProfileTrust {
  readonly anchorStatementBase64: string;
  readonly revocationListBase64: string;
}

/** Everything the device stores (atomically) at the end of its provisioning. */
export interface DeviceBundle {
  readonly deviceId: string;
  readonly certificatePem: string;
  /** Issuing CA then root CA. */
  readonly chainPem: readonly string[];
  readonly profile: string;
  readonly trustAnchors: ProvisioningProfile['trustAnchors'];
  readonly firmware: ProvisioningProfile['firmware'];
  readonly antiRollback: ProvisioningProfile['antiRollback'];
  readonly trust?: ProfileTrust;
}

/**
 * The device's other public keys, registered beside its certificate (all generated inside the device's enclave;
 * only public keys come out).
 */
export interface DevicePublicKeys {
  /** SPKI DER (P-256 or X25519): content keys are wrapped to it with ECDH-ES+A128KW (RFC 9053 §6.3). */
  readonly keyAgreementSpki?: Uint8Array;
  /** SPKI DER of the key that signs the device's SUIT reports, and its COSE algorithm (ES256 -7, EdDSA -8). */
  readonly reportKeySpki?: Uint8Array;
  readonly reportKeyAlg?: number;
  /**
   * The device's root-of-trust chain (RoT records, trust/rot): pinned at registration, so the attestation service
   * knows the device's first RoT from the factory instead of trusting its first report (seed 002 step 1).
   */
  readonly rotRecords?: readonly Uint8Array[];
}

/** The device under provisioning, as the factory fixture reaches it. */
export interface ProvisioningDevice {
  /** RFC 9711 UEID URN (ueidUrn). */
  readonly deviceId: string;
  /** Generates the identity key inside the device (or reuses the one it generated) and returns a CSR (DER). */
  createCsr(): Promise<Uint8Array>;
  /**
   * Generates (or returns the already generated) key-agreement key, report key and RoT inside the device; optional.
   * Idempotent: a device rolled forward after a crash answers with the same keys.
   */
  publicKeys?(): Promise<DevicePublicKeys>;
  /** Stores the bundle atomically; idempotent. */
  install(bundle: DeviceBundle): Promise<void>;
}

export interface DeviceFactory {
  /** Powers up device `index` of the batch (a fresh one, or the one already on the fixture after a crash). */
  open(index: number): Promise<ProvisioningDevice>;
  /** Wipes device `index` back to "not started" (no key, no files). Idempotent. */
  discard(index: number): Promise<void>;
  /** Releases device `index` from the fixture (optional). */
  close?(index: number): Promise<void>;
}

export interface Registration extends DevicePublicKeys {
  readonly deviceId: string;
  readonly certificate: IssuedCertificate;
  readonly issuer: string;
  readonly identityKeySpki: Uint8Array;
  readonly keyType: SignerKeyType;
  readonly deviceClass: string;
  readonly profile: string;
}

const spkiKey = (spki: Uint8Array, what: string): KeyObject => {
  try {
    return createPublicKey({ key: Buffer.from(spki), format: 'der', type: 'spki' });
  } catch (e) {
    throw new ServerError('DEVICE_KEY_INVALID', `${what} is not a public key`, { cause: e });
  }
};

/**
 * The registration's device keys, checked (untrusted: they come from the device): the key-agreement key is P-256 or
 * X25519 (RFC 9053 §6.3), the report key fits its algorithm (ES256: P-256, RFC 9053 §2.1; EdDSA: Ed25519, §2.2),
 * the RoT chain verifies record by record from its self-signed first key (trust/rot, seed 002 steps 1–2).
 */
export function checkDeviceKeys(r: DevicePublicKeys & { readonly deviceId: string }): {
  ka: Uint8Array | null;
  report: { spki: Uint8Array; alg: number } | null;
  rot: { ueid: Uint8Array; chain: RotChain } | null;
} {
  let ka: Uint8Array | null = null;
  if (r.keyAgreementSpki !== undefined) {
    if (r.keyAgreementSpki.length > 256)
      throw new ServerError('DEVICE_KEY_INVALID', 'key-agreement key too long');
    const k = spkiKey(r.keyAgreementSpki, 'the key-agreement key');
    const p256 = k.asymmetricKeyType === 'ec' && k.asymmetricKeyDetails?.namedCurve === 'prime256v1';
    if (!p256 && k.asymmetricKeyType !== 'x25519')
      throw new ServerError('DEVICE_KEY_INVALID', 'the key-agreement key is neither P-256 nor X25519');
    ka = r.keyAgreementSpki;
  }
  let report: { spki: Uint8Array; alg: number } | null = null;
  if ((r.reportKeySpki === undefined) !== (r.reportKeyAlg === undefined))
    throw new ServerError('DEVICE_KEY_INVALID', 'a report key needs its algorithm and the other way round');
  if (r.reportKeySpki !== undefined && r.reportKeyAlg !== undefined) {
    if (r.reportKeySpki.length > 256) throw new ServerError('DEVICE_KEY_INVALID', 'report key too long');
    const k = spkiKey(r.reportKeySpki, 'the report key');
    const ok =
      r.reportKeyAlg === -7 || r.reportKeyAlg === -9
        ? k.asymmetricKeyType === 'ec' && k.asymmetricKeyDetails?.namedCurve === 'prime256v1'
        : (r.reportKeyAlg === -8 || r.reportKeyAlg === -19) && k.asymmetricKeyType === 'ed25519';
    if (!ok)
      throw new ServerError('DEVICE_KEY_INVALID', `the report key does not fit algorithm ${r.reportKeyAlg}`);
    report = { spki: r.reportKeySpki, alg: r.reportKeyAlg };
  }
  let rot: { ueid: Uint8Array; chain: RotChain } | null = null;
  if (r.rotRecords !== undefined) {
    if (r.rotRecords.length === 0 || r.rotRecords.length > MAX_CHAIN_RECORDS)
      throw new ServerError('DEVICE_KEY_INVALID', 'RoT chain length out of bounds');
    try {
      rot = {
        ueid: parseUeidUrn(r.deviceId),
        chain: RotChain.verify([...r.rotRecords], { allowedAlgs: ROT_ALGS, maxLength: MAX_CHAIN_RECORDS }),
      };
    } catch (e) {
      throw new ServerError('DEVICE_KEY_INVALID', 'the RoT chain does not verify', { cause: e });
    }
  }
  return { ka, report, rot };
}

export interface DeviceRegistry {
  /** Records the certificate in the audit log and registers the device, atomically; idempotent by fingerprint. */
  register(r: Registration): Promise<{ id: string; created: boolean }>;
}

/**
 * Registration straight into the server's database (the factory station runs beside it). Each certificate gets its
 * own audit entry ('certificate.issue', hash-chained) in the same transaction as the device row. Registrations that
 * arrive while a transaction runs are group-committed in the next one.
 *
 * A group commit costs a handful of statements whatever its size: one look-up of every fingerprint, device id and
 * serial of the group, one multi-row insert of the devices, one of the pinned RoT chains, and the audit entries
 * chained in memory under one audit lock and inserted together. A device the look-up refuses (duplicate serial or
 * device id, also within the group) fails alone. If the group's transaction fails anyway (a unique index fired:
 * another station registered the same serial or device at the same moment), each of its devices is retried in a
 * transaction of its own, so one device's failure neither rolls back nor blocks the others.
 */
export function dbRegistry(db: Db, opts: { now?: () => number; station?: string } = {}): DeviceRegistry {
  const now = opts.now ?? Date.now;
  type Keys = ReturnType<typeof checkDeviceKeys>;
  type Pending = {
    r: Registration;
    keys: Keys;
    done: (v: { id: string; created: boolean }) => void;
    fail: (e: unknown) => void;
  };
  type Outcome = { ok: true; v: { id: string; created: boolean } } | { ok: false; e: unknown };
  let queue: Pending[] = [];
  let running = false;

  const serialClash = (r: Registration): ServerError =>
    new ServerError(
      'CERT_SERIAL_DUPLICATE',
      `certificate serial ${r.certificate.serial} is already registered (RFC 5280 §4.1.2.2)`,
    );
  // One device, one identity: a UEID names exactly one device (RFC 9711 §4.2.1), so the same device id with another
  // certificate is refused (devices.name is unique; a cloned or replayed device id).
  const deviceClash = (r: Registration): ServerError =>
    new ServerError('ALREADY_EXISTS', `device ${r.deviceId} is already registered with another certificate`);

  /** Inserts checked registrations: device rows, pinned RoT chains, one chained audit entry each. */
  async function insert(tx: Queryable, items: readonly { r: Registration; keys: Keys }[]): Promise<string[]> {
    if (items.length === 0) return [];
    const at = now();
    const ids = items.map(() => randomUUID());
    const devParams: unknown[] = [];
    const devRows: string[] = [];
    items.forEach(({ r, keys }, k) => {
      const o = devParams.length;
      devRows.push(
        `(${Array.from({ length: 10 }, (_, j) => `$${String(o + j + 1)}`).join(', ')})`.replace(
          `$${String(o + 6)}`,
          `$${String(o + 6)}::jsonb`,
        ),
      );
      devParams.push(
        ids[k],
        r.deviceId,
        Buffer.from(r.certificate.sha256, 'hex'),
        r.deviceClass,
        ['factory'],
        JSON.stringify({
          ueid: r.deviceId,
          class: r.deviceClass,
          profile: r.profile,
          serial: r.certificate.serial,
          keyType: r.keyType,
          identityKeySpki: Buffer.from(r.identityKeySpki).toString('base64'),
        }),
        at,
        keys.ka,
        keys.report?.spki ?? null,
        keys.report?.alg ?? null,
      );
    });
    await tx.query(
      `INSERT INTO devices (id, name, cert_sha256, device_group, tags, attributes, created_at_ms,
         ka_spki, report_key_spki, report_key_alg) VALUES ${devRows.join(', ')}`,
      devParams,
    );
    // The RoT pinned from the factory (the attestation service then extends it only by records the pinned key
    // signed: seed 002 step 2).
    const rotParams: unknown[] = [];
    const rotRows: string[] = [];
    items.forEach(({ keys }, k) => {
      if (keys.rot === null) return;
      const o = rotParams.length;
      rotRows.push(
        `($${String(o + 1)}, $${String(o + 2)}, $${String(o + 3)}, $${String(o + 4)}, $${String(o + 5)})`,
      );
      rotParams.push(ids[k], keys.rot.ueid, keys.rot.chain.records, keys.rot.chain.current.kid, at);
    });
    if (rotRows.length > 0)
      await tx.query(
        `INSERT INTO device_rot (device_id, ueid, records, current_kid, updated_at_ms) VALUES ${rotRows.join(', ')}`,
        rotParams,
      );
    // The audit entries, hash-chained exactly as appendAudit chains one (audit.ts: the same lock, canonical body
    // and SHA-256(prev_hash ‖ body)), inserted in one statement.
    await tx.query('SELECT pg_advisory_xact_lock($1::bigint)', [AUDIT_LOCK_KEY.toString()]);
    const head = (
      await tx.query<{ seq: number; hash: Uint8Array }>(
        'SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1',
      )
    )[0];
    let seq = head?.seq ?? 0;
    let prevHash = head?.hash ?? GENESIS_HASH;
    const when = new Date(at).toISOString();
    const audParams: unknown[] = [];
    const audRows: string[] = [];
    items.forEach(({ r, keys }, k) => {
      seq++;
      const body = canonicalJson({
        seq,
        at: when,
        actor: actorOf(SYSTEM),
        action: 'certificate.issue',
        subject: `device:${ids[k]!}`,
        details: {
          station: opts.station ?? 'factory',
          deviceId: r.deviceId,
          serial: r.certificate.serial,
          issuer: r.issuer,
          certSha256: r.certificate.sha256,
          notAfter: r.certificate.notAfter.toISOString(),
          keyType: r.keyType,
          deviceClass: r.deviceClass,
          profile: r.profile,
          keyAgreementSpkiSha256: keys.ka === null ? null : sha256hex(keys.ka),
          reportKeySpkiSha256: keys.report === null ? null : sha256hex(keys.report.spki),
          rotKid: keys.rot === null ? null : Buffer.from(keys.rot.chain.current.kid).toString('hex'),
        },
      });
      const hash = chainHash(prevHash, body);
      const o = audParams.length;
      audRows.push(`($${String(o + 1)}, $${String(o + 2)}, $${String(o + 3)}, $${String(o + 4)})`);
      audParams.push(seq, body, prevHash, hash);
      prevHash = hash;
    });
    await tx.query(
      `INSERT INTO audit_log (seq, body, prev_hash, hash) VALUES ${audRows.join(', ')}`,
      audParams,
    );
    return ids;
  }

  /** One registration with its own checks (the fallback path). */
  async function registerOne(
    tx: Queryable,
    r: Registration,
    keys: Keys,
  ): Promise<{ id: string; created: boolean }> {
    const fp = Buffer.from(r.certificate.sha256, 'hex');
    const found = (await tx.query<{ id: string }>('SELECT id FROM devices WHERE cert_sha256 = $1', [fp]))[0];
    // Rolled forward after a crash: already recorded and registered.
    if (found !== undefined) return { id: found.id, created: false };
    if ((await tx.query('SELECT 1 FROM devices WHERE name = $1', [r.deviceId])).length > 0)
      throw deviceClash(r);
    // RFC 5280 §4.1.2.2: one serial, one certificate (migration 8's unique index is the backstop for races).
    const clash = await tx.query(`SELECT 1 FROM devices WHERE lower(attributes->>'serial') = lower($1)`, [
      r.certificate.serial,
    ]);
    if (clash.length > 0) throw serialClash(r);
    const [id] = await insert(tx, [{ r, keys }]);
    return { id: id!, created: true };
  }

  /** The group commit's transaction: one look-up for the whole group, then the accepted devices inserted together. */
  async function registerGroup(tx: Queryable, batch: readonly Pending[]): Promise<Outcome[]> {
    const fps = batch.map((p) => Buffer.from(p.r.certificate.sha256, 'hex'));
    const rows = await tx.query<{ id: string; name: string; fp: Uint8Array; serial: string | null }>(
      `SELECT id, name, cert_sha256 AS fp, lower(attributes->>'serial') AS serial FROM devices
        WHERE cert_sha256 = ANY($1::bytea[]) OR name = ANY($2::text[])
           OR lower(attributes->>'serial') = ANY($3::text[])`,
      [fps, batch.map((p) => p.r.deviceId), batch.map((p) => p.r.certificate.serial.toLowerCase())],
    );
    const byFp = new Map<string, string>();
    const names = new Set<string>();
    const serials = new Set<string>();
    for (const row of rows) {
      byFp.set(Buffer.from(row.fp).toString('hex'), row.id);
      names.add(row.name);
      if (row.serial !== null) serials.add(row.serial);
    }
    const out: Outcome[] = [];
    const accepted: { r: Registration; keys: Keys; k: number }[] = [];
    // The same certificate twice in one group (a device rolled forward while still queued) gets the first's answer.
    const pendingFp = new Map<string, number>();
    batch.forEach((p, k) => {
      const fp = p.r.certificate.sha256.toLowerCase();
      const id = byFp.get(fp);
      if (id !== undefined) out.push({ ok: true, v: { id, created: false } });
      else if (pendingFp.has(fp)) out.push({ ok: false, e: undefined });
      else if (names.has(p.r.deviceId)) out.push({ ok: false, e: deviceClash(p.r) });
      else if (serials.has(p.r.certificate.serial.toLowerCase()))
        out.push({ ok: false, e: serialClash(p.r) });
      else {
        pendingFp.set(fp, k);
        names.add(p.r.deviceId);
        serials.add(p.r.certificate.serial.toLowerCase());
        accepted.push({ r: p.r, keys: p.keys, k });
        out.push({ ok: true, v: { id: '', created: true } });
      }
    });
    const ids = await insert(tx, accepted);
    accepted.forEach((a, j) => {
      out[a.k] = { ok: true, v: { id: ids[j]!, created: true } };
    });
    // Duplicates of an accepted certificate within the group: the same device, already registered above.
    batch.forEach((p, k) => {
      const o = out[k]!;
      if (o.ok || o.e !== undefined) return;
      const first = out[pendingFp.get(p.r.certificate.sha256.toLowerCase())!]!;
      out[k] = first.ok ? { ok: true, v: { id: first.v.id, created: false } } : first;
    });
    return out;
  }

  async function drain(): Promise<void> {
    running = true;
    while (queue.length > 0) {
      const batch = queue;
      queue = [];
      let results: Outcome[];
      try {
        results = await db.transaction((tx) => registerGroup(tx, batch));
      } catch {
        // The group failed as a whole (a unique index fired under a concurrent registration, or the database):
        // each device alone, in its own transaction, so only the devices that really fail are refused.
        results = [];
        for (const p of batch) {
          try {
            results.push({ ok: true, v: await db.transaction((tx) => registerOne(tx, p.r, p.keys)) });
          } catch (e) {
            results.push({ ok: false, e: uniqueViolation(e, p.r) });
          }
        }
      }
      batch.forEach((p, k) => {
        const r = results[k]!;
        if (r.ok) p.done(r.v);
        else p.fail(r.e);
      });
    }
    running = false;
  }

  return {
    register(r) {
      // Checked before queueing: a device with bad keys must not fail the other registrations of its group commit.
      let keys: ReturnType<typeof checkDeviceKeys>;
      try {
        keys = checkDeviceKeys(r);
      } catch (e) {
        return Promise.reject(e instanceof Error ? e : new Error(String(e)));
      }
      return new Promise((done, fail) => {
        queue.push({ r, keys, done, fail });
        if (!running) void drain();
      });
    },
  };
}

/**
 * A unique index that fired despite the checks (another station registering the same serial or device at once) is
 * the same refusal as the check's: a typed error, not the driver's SQLSTATE 23505.
 */
function uniqueViolation(e: unknown, r: Registration): unknown {
  if (typeof e !== 'object' || e === null || (e as { code?: unknown }).code !== '23505') return e;
  return (e as { constraint?: unknown }).constraint === 'devices_cert_serial'
    ? new ServerError(
        'CERT_SERIAL_DUPLICATE',
        `certificate serial ${r.certificate.serial} is already registered (RFC 5280 §4.1.2.2)`,
        { cause: e },
      )
    : new ServerError('ALREADY_EXISTS', `device ${r.deviceId} is already registered`, { cause: e });
}

const sha256hex = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

const pemOf = (label: string, der: Uint8Array): string =>
  `-----BEGIN ${label}-----\n${Buffer.from(der)
    .toString('base64')
    .replace(/.{1,64}/g, '$&\n')}-----END ${label}-----\n`;

const REPORT_ALG_NAMES: Readonly<Record<number, string>> = {
  [-7]: 'ES256',
  [-9]: 'ESP256',
  [-8]: 'EdDSA',
  [-19]: 'Ed25519',
};

/**
 * Registration over the operator API (`POST /v1/devices`, bearer token with device.create), for a factory station
 * that is not beside the database (the fleet simulator). The server records the registration in its audit log
 * ('device.create' with the certificate fingerprint and key digests). Idempotent by certificate: a device already
 * registered (409, a roll-forward after a crash) is found by name in its class's group and reported as not created.
 * The RoT chain is not pinned over this route (the operator API has none): the attestation service pins the
 * device's first RoT report over its mTLS identity instead (trust on first use).
 */
export function httpRegistry(
  operatorUrl: string,
  token: string,
  opts: { fetch?: typeof fetch; timeoutMs?: number } = {},
): DeviceRegistry {
  const f = opts.fetch ?? fetch;
  const base = new URL(operatorUrl);
  const headers = { authorization: `Bearer ${token}`, 'content-type': 'application/json' };
  const call = async (
    method: string,
    path: string,
    body?: unknown,
  ): Promise<{ status: number; json: unknown }> => {
    const res = await f(new URL(path, base), {
      method,
      headers,
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      signal: AbortSignal.timeout(opts.timeoutMs ?? 30_000),
    });
    const text = await res.text();
    if (text.length > 1 << 20) throw new ServerError('INTERNAL', 'operator API answer too large');
    let json: unknown = undefined;
    try {
      json = text.length === 0 ? undefined : JSON.parse(text);
    } catch {
      json = undefined;
    }
    return { status: res.status, json };
  };
  return {
    async register(r) {
      const keys = checkDeviceKeys({ ...r, rotRecords: undefined });
      const res = await call('POST', '/v1/devices', {
        name: r.deviceId,
        certificatePem: toPem(r.certificate.der),
        group: r.deviceClass,
        tags: ['factory'],
        attributes: {
          ueid: r.deviceId,
          class: r.deviceClass,
          profile: r.profile,
          serial: r.certificate.serial,
          keyType: r.keyType,
        },
        ...(keys.ka === null ? {} : { keyAgreementKeyPem: pemOf('PUBLIC KEY', keys.ka) }),
        ...(keys.report === null
          ? {}
          : {
              reportKeyPem: pemOf('PUBLIC KEY', keys.report.spki),
              reportKeyAlg: REPORT_ALG_NAMES[keys.report.alg],
            }),
      });
      if (res.status === 201) return { id: (res.json as { id: string }).id, created: true };
      if (res.status === 409) {
        // Rolled forward: find it (by name, in its group; bounded).
        let after: string | undefined;
        for (let page = 0; page < 1000; page++) {
          const q = new URLSearchParams({ group: r.deviceClass, limit: '1000', ...(after ? { after } : {}) });
          const list = await call('GET', `/v1/devices?${q.toString()}`);
          const items =
            (list.json as { items?: { id: string; name: string; certSha256: string }[] }).items ?? [];
          const hit = items.find((d) => d.name === r.deviceId && d.certSha256 === r.certificate.sha256);
          if (hit !== undefined) return { id: hit.id, created: false };
          if (list.status !== 200 || items.length < 1000) break;
          after = items[items.length - 1]!.id;
        }
        throw new ServerError('CONFLICT', `device ${r.deviceId} exists with another certificate`);
      }
      const code = (res.json as { code?: string } | undefined)?.code ?? 'HTTP';
      throw new ServerError(
        res.status === 401 || res.status === 403 ? 'AUTH_INVALID' : 'INTERNAL',
        `registration of ${r.deviceId} refused by the server: ${res.status} ${code}`,
      );
    },
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Journal

type JournalRecord =
  | { readonly i: number; readonly s: 'begin' }
  | {
      readonly i: number;
      readonly s: 'issued';
      readonly deviceId: string;
      readonly cert: string;
      readonly spki: string;
    }
  | { readonly i: number; readonly s: 'done'; readonly deviceId: string }
  | { readonly i: number; readonly s: 'refused'; readonly code: string };

const MAX_JOURNAL_LINE = 8192;

function parseRecord(line: string): JournalRecord {
  const bad = (): ServerError =>
    new ServerError('FACTORY_STATE_INVALID', 'corrupt provisioning journal record');
  if (line.length > MAX_JOURNAL_LINE) throw bad();
  let v: unknown;
  try {
    v = JSON.parse(line);
  } catch {
    throw bad();
  }
  if (typeof v !== 'object' || v === null) throw bad();
  const o = v as Record<string, unknown>;
  const i = o.i;
  if (typeof i !== 'number' || !Number.isSafeInteger(i) || i < 0) throw bad();
  const str = (k: string): string => {
    const x = o[k];
    if (typeof x !== 'string') throw bad();
    return x;
  };
  if (o.s === 'begin') return { i, s: 'begin' };
  if (o.s === 'issued')
    return { i, s: 'issued', deviceId: str('deviceId'), cert: str('cert'), spki: str('spki') };
  if (o.s === 'done') return { i, s: 'done', deviceId: str('deviceId') };
  if (o.s === 'refused') return { i, s: 'refused', code: str('code') };
  throw bad();
}

/** Append-only journal file: records are JSON lines; concurrent appends share one write + fsync (group commit). */
export class ProvisioningJournal {
  readonly #fh: FileHandle;
  readonly state: Map<number, JournalRecord>;
  #pending: { line: string; done: () => void; fail: (e: unknown) => void }[] = [];
  #flushing = false;

  private constructor(fh: FileHandle, state: Map<number, JournalRecord>) {
    this.#fh = fh;
    this.state = state;
  }

  static async open(path: string): Promise<ProvisioningJournal> {
    let text = '';
    try {
      text = await readFile(path, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    const state = new Map<number, JournalRecord>();
    const lines = text.split('\n');
    // The last line is empty after a complete write; otherwise it is a record torn by a crash: never acknowledged,
    // so it is ignored (and overwritten below).
    const complete = lines.slice(0, -1);
    for (const l of complete) {
      const r = parseRecord(l);
      state.set(r.i, r);
    }
    const fh = await open(path, 'a+');
    const keep = complete.reduce((n, l) => n + Buffer.byteLength(l) + 1, 0);
    if (keep !== Buffer.byteLength(text)) {
      await fh.truncate(keep);
      await fh.sync();
    }
    return new ProvisioningJournal(fh, state);
  }

  append(r: JournalRecord): Promise<void> {
    return new Promise<void>((done, fail) => {
      this.#pending.push({ line: `${JSON.stringify(r)}\n`, done, fail });
      if (!this.#flushing) void this.#flush();
    }).then(() => {
      this.state.set(r.i, r);
    });
  }

  async #flush(): Promise<void> {
    this.#flushing = true;
    while (this.#pending.length > 0) {
      const batch = this.#pending;
      this.#pending = [];
      try {
        await this.#fh.appendFile(batch.map((b) => b.line).join(''));
        await this.#fh.datasync();
        for (const b of batch) b.done();
      } catch (e) {
        for (const b of batch) b.fail(e);
      }
    }
    this.#flushing = false;
  }

  close(): Promise<void> {
    return this.#fh.close();
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Batch

export type ProvisionStep = 'begin' | 'csr' | 'signed' | 'issued' | 'registered' | 'installed' | 'done';

export interface ProvisionOptions {
  readonly issuing: CaCert;
  readonly root: CaCert;
  readonly profile: ProvisioningProfile;
  /** Journal file of this batch. */
  readonly journalPath: string;
  /** Devices 0 … count-1 make the batch; a resumed batch continues where it stopped. */
  readonly count: number;
  readonly devices: DeviceFactory;
  readonly registry: DeviceRegistry;
  /** Devices in flight at once (default 8). */
  readonly concurrency?: number;
  readonly onProgress?: (done: number, total: number) => void;
  /** Test hook: called after each step; if it throws, the batch stops dead there (a simulated crash). */
  readonly afterStep?: (step: ProvisionStep, index: number) => void;
  readonly now?: () => Date;
}

/** A device whose registration the registry refused for good (its certificate was never registered nor installed). */
export interface RefusedDevice {
  readonly index: number;
  readonly deviceId: string;
  readonly code: string;
  readonly message: string;
}

/**
 * Registry answers that refuse one device for good (not a transient failure): that device is wiped and journalled
 * `refused`, the rest of the batch goes on; the next run of the batch starts it afresh (new key, new serial).
 */
const REFUSALS: ReadonlySet<string> = new Set([
  'CERT_SERIAL_DUPLICATE',
  'ALREADY_EXISTS',
  'CONFLICT',
  'DEVICE_KEY_INVALID',
]);
const refusal = (e: unknown): ServerError | undefined =>
  e instanceof ServerError && REFUSALS.has(e.code) ? e : undefined;

export interface ProvisionResult {
  readonly provisioned: number;
  /** Devices refused by the registry in this run (wiped; a later run of the batch retries them). */
  readonly refused: readonly RefusedDevice[];
  readonly recovered: { readonly discarded: number; readonly rolledForward: number };
  readonly total: number;
  readonly deviceIds: readonly string[];
}

function certDer(pem: string): Uint8Array {
  const b64 = pem.replace(/-----(BEGIN|END) CERTIFICATE-----/g, '').replace(/\s+/g, '');
  return new Uint8Array(Buffer.from(b64, 'base64'));
}

export async function provisionDevices(opts: ProvisionOptions): Promise<ProvisionResult> {
  if (!Number.isSafeInteger(opts.count) || opts.count < 0 || opts.count > 10_000_000)
    throw new ServerError('REQUEST_INVALID', 'count must be an integer 0 … 10,000,000');
  const journal = await ProvisioningJournal.open(opts.journalPath);
  const chainPem = [
    toPem(new Uint8Array(opts.issuing.cert.rawData)),
    toPem(new Uint8Array(opts.root.cert.rawData)),
  ];
  const issuerName = opts.issuing.cert.subject;
  const p = opts.profile;
  let crashed: Error | undefined;
  const step = (s: ProvisionStep, i: number): void => {
    if (crashed !== undefined) throw crashed;
    try {
      opts.afterStep?.(s, i);
    } catch (e) {
      crashed = e instanceof Error ? e : new Error(String(e));
      throw crashed;
    }
  };
  const bundle = (deviceId: string, certificatePem: string): DeviceBundle => ({
    deviceId,
    certificatePem,
    chainPem,
    profile: p.name,
    trustAnchors: p.trustAnchors,
    firmware: p.firmware,
    antiRollback: p.antiRollback,
    ...(p.trust === undefined ? {} : { trust: p.trust }),
  });
  const finish = async (
    i: number,
    dev: ProvisioningDevice,
    issued: IssuedCertificate,
    spki: Uint8Array,
    keys: DevicePublicKeys,
  ): Promise<boolean> => {
    try {
      await opts.registry.register({
        ...keys,
        deviceId: dev.deviceId,
        certificate: issued,
        issuer: issuerName,
        identityKeySpki: spki,
        keyType: p.keyType,
        deviceClass: p.deviceClass,
        profile: p.name,
      });
    } catch (e) {
      const r = refusal(e);
      if (r === undefined) throw e;
      // Refused for good: the certificate is neither registered nor installed; the device goes back to
      // "not started" and only this device is skipped (the other devices of the group commit are unaffected).
      await opts.devices.discard(i);
      await journal.append({ i, s: 'refused', code: r.code });
      refused.push({ index: i, deviceId: dev.deviceId, code: r.code, message: r.message });
      return false;
    }
    step('registered', i);
    await dev.install(bundle(dev.deviceId, toPem(issued.der)));
    step('installed', i);
    await journal.append({ i, s: 'done', deviceId: dev.deviceId });
    step('done', i);
    return true;
  };

  let discarded = 0;
  let rolledForward = 0;
  let provisioned = 0;
  let done = 0;
  const refused: RefusedDevice[] = [];
  try {
    // Recovery first: every device ends fully provisioned or not started.
    for (const [i, r] of [...journal.state]) {
      if (r.s === 'begin' || r.s === 'refused') {
        await opts.devices.discard(i);
        journal.state.delete(i);
        discarded++;
      } else if (r.s === 'issued') {
        const dev = await opts.devices.open(i);
        if (dev.deviceId !== r.deviceId)
          throw new ServerError('FACTORY_STATE_INVALID', `device ${i} is not ${r.deviceId} any more`);
        const der = certDer(r.cert);
        const cert = new x509.X509Certificate(der);
        const issued: IssuedCertificate = {
          der,
          serial: cert.serialNumber,
          sha256: createHash('sha256').update(der).digest('hex'),
          notAfter: cert.notAfter,
        };
        // The device's other keys were generated before its certificate was journalled: the same ones come back.
        const keys = (await dev.publicKeys?.()) ?? {};
        const ok = await finish(i, dev, issued, new Uint8Array(Buffer.from(r.spki, 'base64')), keys);
        await opts.devices.close?.(i);
        if (ok) rolledForward++;
      }
    }
    const todo: number[] = [];
    for (let i = 0; i < opts.count; i++) {
      const s = journal.state.get(i)?.s;
      if (s === 'done') done++;
      else if (s !== 'refused') todo.push(i);
    }
    opts.onProgress?.(done, opts.count);
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < todo.length) {
        const i = todo[next++]!;
        await journal.append({ i, s: 'begin' });
        step('begin', i);
        const dev = await opts.devices.open(i);
        const csr = await dev.createCsr();
        const keys = (await dev.publicKeys?.()) ?? {};
        step('csr', i);
        const checked = await checkDeviceCsr(csr, { deviceId: dev.deviceId, keyType: p.keyType });
        const issued = await issueDeviceCertificate(opts.issuing, checked, {
          validityDays: p.validityDays,
          ...(opts.now === undefined ? {} : { now: opts.now() }),
        });
        step('signed', i);
        await journal.append({
          i,
          s: 'issued',
          deviceId: dev.deviceId,
          cert: toPem(issued.der),
          spki: Buffer.from(checked.spki).toString('base64'),
        });
        step('issued', i);
        const ok = await finish(i, dev, issued, checked.spki, keys);
        await opts.devices.close?.(i);
        if (!ok) continue;
        provisioned++;
        done++;
        opts.onProgress?.(done, opts.count);
      }
    };
    const n = Math.max(1, Math.min(opts.concurrency ?? 8, todo.length));
    const results = await Promise.allSettled(Array.from({ length: n }, worker));
    for (const r of results) if (r.status === 'rejected') throw r.reason as Error;
    const deviceIds: string[] = [];
    for (let i = 0; i < opts.count; i++) {
      const r = journal.state.get(i);
      if (r?.s === 'done') deviceIds.push(r.deviceId);
    }
    return { provisioned, refused, recovered: { discarded, rolledForward }, total: opts.count, deviceIds };
  } finally {
    await journal.close();
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The profile's trust documents on the server

/** The factory station as the uploader of its own trust documents (audited under this name). */
const FACTORY_PRINCIPAL: Principal = {
  kind: 'operator',
  tokenId: 'factory',
  name: 'factory',
  role: 'admin',
};

/**
 * Publishes a profile's version-1 anchor statement and first revocation list on the server when it holds none yet
 * (issue 7: devices sync newer versions at check-in, and a device whose provisioned list expires fetches the
 * server's — TUF §5.3.8). Both go through the distribution service's own checks (version 1 signed by its root
 * threshold; the list signed by the anchors' revocation role, unexpired), audited as uploaded by `factory`.
 * Idempotent: what the server already holds is left alone (a newer list is never replaced by the factory's).
 */
export async function publishProfileTrust(
  db: Db,
  trust: ProfileTrust,
  now: () => number = Date.now,
): Promise<{ anchors: number | undefined; revocation: number | undefined }> {
  const d = createDistributionService(db, now);
  const held = await d.versions();
  const b64 = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, 'base64'));
  const anchors =
    held.anchors === 0
      ? (await d.uploadAnchors(FACTORY_PRINCIPAL, b64(trust.anchorStatementBase64))).version
      : undefined;
  const revocation =
    held.revocation === 0
      ? (await d.uploadRevocationList(FACTORY_PRINCIPAL, b64(trust.revocationListBase64))).version
      : undefined;
  return { anchors, revocation };
}

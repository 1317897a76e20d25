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
import { createHash, randomUUID } from 'node:crypto';
import { open, readFile, type FileHandle } from 'node:fs/promises';
import * as x509 from '@peculiar/x509';
import { appendAudit, type Json } from '../audit.ts';
import { actorOf, SYSTEM } from '../auth.ts';
import type { Db, Queryable } from '../db/db.ts';
import { ServerError } from '../errors.ts';
import { checkDeviceCsr, issueDeviceCertificate, toPem, type CaCert, type IssuedCertificate } from './ca.ts';
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
}

/** The device under provisioning, as the factory fixture reaches it. */
export interface ProvisioningDevice {
  /** RFC 9711 UEID URN (ueidUrn). */
  readonly deviceId: string;
  /** Generates the identity key inside the device (or reuses the one it generated) and returns a CSR (DER). */
  createCsr(): Promise<Uint8Array>;
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

export interface Registration {
  readonly deviceId: string;
  readonly certificate: IssuedCertificate;
  readonly issuer: string;
  readonly identityKeySpki: Uint8Array;
  readonly keyType: SignerKeyType;
  readonly deviceClass: string;
  readonly profile: string;
}

export interface DeviceRegistry {
  /** Records the certificate in the audit log and registers the device, atomically; idempotent by fingerprint. */
  register(r: Registration): Promise<{ id: string; created: boolean }>;
}

/**
 * Registration straight into the server's database (the factory station runs beside it). Each certificate gets its
 * own audit entry ('certificate.issue', hash-chained) in the same transaction as the device row. Registrations that
 * arrive while a transaction runs are group-committed in the next one (all of a group commit or none; a device whose
 * registration did not commit is rolled forward from the journal).
 */
export function dbRegistry(db: Db, opts: { now?: () => number; station?: string } = {}): DeviceRegistry {
  const now = opts.now ?? Date.now;
  type Pending = {
    r: Registration;
    done: (v: { id: string; created: boolean }) => void;
    fail: (e: unknown) => void;
  };
  let queue: Pending[] = [];
  let running = false;

  async function registerOne(tx: Queryable, r: Registration): Promise<{ id: string; created: boolean }> {
    const fp = Buffer.from(r.certificate.sha256, 'hex');
    const existing = await tx.query<{ id: string }>('SELECT id FROM devices WHERE cert_sha256 = $1', [fp]);
    const found = existing[0];
    // Rolled forward after a crash: already recorded and registered.
    if (found !== undefined) return { id: found.id, created: false };
    // RFC 5280 §4.1.2.2: one serial, one certificate (migration 8's unique index is the backstop for races).
    const clash = await tx.query<{ id: string }>(
      `SELECT id FROM devices WHERE lower(attributes->>'serial') = lower($1)`,
      [r.certificate.serial],
    );
    if (clash.length > 0)
      throw new ServerError(
        'CERT_SERIAL_DUPLICATE',
        `certificate serial ${r.certificate.serial} is already registered (RFC 5280 §4.1.2.2)`,
      );
    const id = randomUUID();
    await tx.query(
      `INSERT INTO devices (id, name, cert_sha256, device_group, tags, attributes, created_at_ms)
       VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7)`,
      [
        id,
        r.deviceId,
        fp,
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
        now(),
      ],
    );
    const details: { [k: string]: Json } = {
      station: opts.station ?? 'factory',
      deviceId: r.deviceId,
      serial: r.certificate.serial,
      issuer: r.issuer,
      certSha256: r.certificate.sha256,
      notAfter: r.certificate.notAfter.toISOString(),
      keyType: r.keyType,
      deviceClass: r.deviceClass,
      profile: r.profile,
    };
    await appendAudit(
      tx,
      { actor: actorOf(SYSTEM), action: 'certificate.issue', subject: `device:${id}`, details },
      now(),
    );
    return { id, created: true };
  }

  async function drain(): Promise<void> {
    running = true;
    while (queue.length > 0) {
      const batch = queue;
      queue = [];
      try {
        const results = await db.transaction(async (tx) => {
          const out: { id: string; created: boolean }[] = [];
          for (const p of batch) out.push(await registerOne(tx, p.r));
          return out;
        });
        batch.forEach((p, k) => {
          p.done(results[k]!);
        });
      } catch (e) {
        for (const p of batch) p.fail(e);
      }
    }
    running = false;
  }

  return {
    register(r) {
      return new Promise((done, fail) => {
        queue.push({ r, done, fail });
        if (!running) void drain();
      });
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
  | { readonly i: number; readonly s: 'done'; readonly deviceId: string };

const MAX_JOURNAL_LINE = 8192;

function parseRecord(line: string): JournalRecord {
  const bad = (): ServerError =>
    new ServerError('FACTORY_STATE_INVALID', 'corrupt provisioning journal record');
  if (line.length > MAX_JOURNAL_LINE) throw bad();
  const v = JSON.parse(line) as unknown;
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

export interface ProvisionResult {
  readonly provisioned: number;
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
  });
  const finish = async (
    i: number,
    dev: ProvisioningDevice,
    issued: IssuedCertificate,
    spki: Uint8Array,
  ): Promise<void> => {
    await opts.registry.register({
      deviceId: dev.deviceId,
      certificate: issued,
      issuer: issuerName,
      identityKeySpki: spki,
      keyType: p.keyType,
      deviceClass: p.deviceClass,
      profile: p.name,
    });
    step('registered', i);
    await dev.install(bundle(dev.deviceId, toPem(issued.der)));
    step('installed', i);
    await journal.append({ i, s: 'done', deviceId: dev.deviceId });
    step('done', i);
  };

  let discarded = 0;
  let rolledForward = 0;
  let provisioned = 0;
  let done = 0;
  try {
    // Recovery first: every device ends fully provisioned or not started.
    for (const [i, r] of [...journal.state]) {
      if (r.s === 'begin') {
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
        await finish(i, dev, issued, new Uint8Array(Buffer.from(r.spki, 'base64')));
        await opts.devices.close?.(i);
        rolledForward++;
      }
    }
    const todo: number[] = [];
    for (let i = 0; i < opts.count; i++) {
      if (journal.state.get(i)?.s === 'done') done++;
      else todo.push(i);
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
        await finish(i, dev, issued, checked.spki);
        await opts.devices.close?.(i);
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
    return { provisioned, recovered: { discarded, rolledForward }, total: opts.count, deviceIds };
  } finally {
    await journal.close();
  }
}

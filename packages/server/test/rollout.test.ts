import { randomBytes, X509Certificate } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateAgreementKey, generateSigningKey, softwareSigner } from '@rotor/cose';
import { encodeReport, decodeEnvelope, ReportReason, signReport } from '@rotor/suit';
import { createServices, migrate, type Principal, type Services, type PhaseSpec } from '../src/index.ts';
import { BACKENDS, createTestDatabase, deviceClient, selfSignedCert } from './helpers.ts';
import { deferStandingCheck } from '../src/device-auth.ts';
import {
  approvedReleaseAndDevices,
  authorKeyPair,
  sha256hex,
  signedRelease,
  startFixture,
  testKeyMaterial,
  type Fixture,
} from './fixtures.ts';

const ADMIN: Principal = { kind: 'operator', tokenId: 't-admin', name: 'admin', role: 'admin' };
const OPERATOR: Principal = { kind: 'operator', tokenId: 't-op', name: 'op', role: 'operator' };
const AUTHOR: Principal = { kind: 'operator', tokenId: 't-author', name: 'author', role: 'author' };
const device = (id: string): Principal => ({ kind: 'device', deviceId: id, name: id });

const successReport = (digest: Uint8Array): Uint8Array =>
  encodeReport({
    reference: { uri: undefined, digest: { alg: -16, bytes: digest } },
    records: [],
    result: true,
  });
const failureReport = (digest: Uint8Array): Uint8Array =>
  encodeReport({
    reference: { uri: undefined, digest: { alg: -16, bytes: digest } },
    records: [],
    result: {
      code: 1,
      reason: ReportReason.conditionFailed,
      record: {
        manifestId: [],
        manifestSection: 20,
        sectionOffset: 0,
        componentIndex: 0,
        properties: new Map(),
      },
    },
  });

/** A fresh X25519 key-agreement public key (PEM) for a device. */
const agreementKeyPem = (): string =>
  generateAgreementKey('X25519').publicKey.export({ type: 'spki', format: 'pem' }).toString();

const phase = (percent: number, successThreshold: number, failureThreshold: number): PhaseSpec => ({
  percent,
  successThreshold,
  failureThreshold,
  timeoutMs: 60_000,
});

const setup = approvedReleaseAndDevices;

describe.each(BACKENDS)('rollouts on %s', (backend) => {
  let t: Awaited<ReturnType<typeof createTestDatabase>>;
  let s: Services;
  let clock = 1_000_000;
  beforeAll(async () => {
    t = await createTestDatabase(backend);
    await migrate(t.db);
    s = createServices(t.db, { now: () => clock, keys: testKeyMaterial().keys });
  });
  afterAll(async () => {
    await t.drop();
  });

  it('rollout_devices rows reference an existing rollout and device, which then stay (migration 9)', async () => {
    const { releaseId, deviceIds } = await setup(s, 'refs', 2);
    const r = await s.rollouts.create(OPERATOR, {
      name: 'refs',
      releaseId,
      target: { group: 'refs' },
      phases: [phase(100, 1, 1)],
    });
    const insert = (rolloutId: string, deviceId: string) =>
      t.db.query(
        "INSERT INTO rollout_devices (rollout_id, device_id, phase, state, active, updated_at_ms) VALUES ($1, $2, 0, 'pending', false, 0)",
        [rolloutId, deviceId],
      );
    const missing = { code: '23503', message: expect.stringMatching(/missing rollout or device/) as unknown };
    const referenced = {
      code: '23503',
      message: expect.stringMatching(/referenced by rollout_devices/) as unknown,
    };
    await expect(insert(r.id, 'no-such-device')).rejects.toMatchObject(missing);
    await expect(insert('no-such-rollout', deviceIds[0]!)).rejects.toMatchObject(missing);
    await expect(t.db.query('DELETE FROM devices WHERE id = $1', [deviceIds[0]])).rejects.toMatchObject(
      referenced,
    );
    await expect(t.db.query('DELETE FROM rollouts WHERE id = $1', [r.id])).rejects.toMatchObject(referenced);
    await expect(
      t.db.query("UPDATE devices SET id = id || '-x' WHERE id = $1", [deviceIds[1]]),
    ).rejects.toMatchObject(referenced);
    await expect(t.db.query('TRUNCATE rollouts')).rejects.toMatchObject(referenced);
    await expect(
      t.db.query('UPDATE rollout_devices SET device_id = $2 WHERE rollout_id = $1 AND device_id = $3', [
        r.id,
        deviceIds[1],
        deviceIds[0],
      ]),
    ).rejects.toMatchObject({ code: '23503' });
    // A key-preserving update of a referenced row is fine.
    await t.db.query('UPDATE devices SET id = id WHERE id = $1', [deviceIds[0]]);
    await s.rollouts.cancel(OPERATOR, r.id);
  });

  it('refuses a rollout of an unapproved release', async () => {
    const k = authorKeyPair();
    await s.authorKeys.create(ADMIN, { name: 'unapproved', alg: 'ES256', publicKeyPem: k.publicKeyPem });
    const image = randomBytes(64);
    await s.payloads.upload(AUTHOR, sha256hex(image), image);
    const rel = await s.releases.upload(AUTHOR, await signedRelease(k.privateKey, image, 1));
    await expect(
      s.rollouts.create(OPERATOR, { name: 'x', releaseId: rel.id, target: {}, phases: [phase(100, 1, 1)] }),
    ).rejects.toMatchObject({
      code: 'CONFLICT',
    });
    await expect(
      s.rollouts.create(OPERATOR, { name: 'x', releaseId: rel.id, target: {}, phases: [phase(50, 1, 1)] }),
    ).rejects.toMatchObject({
      code: 'REQUEST_INVALID',
    });
  });

  it('phases by percentage, advances on success, times out silent devices, completes', async () => {
    const { releaseId, digest, deviceIds } = await setup(s, 'ga', 20);
    const r = await s.rollouts.create(OPERATOR, {
      name: 'ga',
      releaseId,
      target: { group: 'ga' },
      phases: [phase(10, 1, 0.5), phase(100, 0.5, 0.9)],
    });
    expect(r).toMatchObject({ assigned: 20, excluded: 0, state: 'active', currentPhase: 0 });
    expect(r.phaseCounts.map((c) => c.total)).toEqual([2, 18]);

    const offered: string[] = [];
    for (const id of deviceIds) {
      const c = await s.rollouts.checkin(device(id));
      if (c.action === 'update') {
        expect(c).toMatchObject({
          rolloutId: r.id,
          releaseId,
          envelopeUrl: `/d/v1/rollouts/${r.id}/envelope`,
        });
        offered.push(id);
      }
    }
    expect(offered).toHaveLength(2);
    // One canary succeeds, the other stays silent: the phase waits…
    await s.rollouts.report(device(offered[0]!), successReport(digest));
    expect((await s.rollouts.get(OPERATOR, r.id)).currentPhase).toBe(0);
    // …until the phase timeout: the silent device is timed out and no longer holds the phase.
    clock += 61_000;
    await s.rollouts.tick();
    const after = await s.rollouts.get(OPERATOR, r.id);
    expect(after).toMatchObject({ currentPhase: 1, state: 'active' });
    expect(after.phaseCounts[0]).toMatchObject({ succeeded: 1, timed_out: 1 });

    let n = 0;
    for (const id of deviceIds) {
      const c = await s.rollouts.checkin(device(id));
      if (c.action === 'update' && n < 9) {
        await s.rollouts.report(device(id), successReport(digest));
        n++;
      }
    }
    expect((await s.rollouts.get(OPERATOR, r.id)).state).toBe('completed');
    const events = await s.rollouts.deviceEvents(OPERATOR, { rolloutId: r.id, after: 0, limit: 1000 });
    expect(events.filter((e) => e.kind === 'report')).toHaveLength(10);
    expect(events.filter((e) => e.kind === 'timed_out')).toHaveLength(1);
    // a device of the completed rollout is free again
    expect(await s.rollouts.checkin(device(deviceIds[0]!))).toEqual({ action: 'none' });
  });

  it('pauses automatically past the failure threshold; resume and cancel; devices are then free', async () => {
    const { releaseId, digest, deviceIds } = await setup(s, 'canary', 10);
    const r = await s.rollouts.create(OPERATOR, {
      name: 'c',
      releaseId,
      target: { group: 'canary' },
      phases: [phase(50, 1, 0.4), phase(100, 1, 1)],
    });
    const inPhase: string[] = [];
    for (const id of deviceIds)
      if ((await s.rollouts.checkin(device(id))).action === 'update') inPhase.push(id);
    expect(inPhase).toHaveLength(5);
    await s.rollouts.report(device(inPhase[0]!), failureReport(digest));
    expect((await s.rollouts.get(OPERATOR, r.id)).state).toBe('active');
    await s.rollouts.report(device(inPhase[1]!), failureReport(digest));
    const paused = await s.rollouts.get(OPERATOR, r.id);
    expect(paused.state).toBe('paused');
    expect(paused.pauseReason).toMatch(/2 of 5 devices failed/);
    expect(await s.rollouts.checkin(device(inPhase[2]!))).toEqual({ action: 'none' });
    await expect(s.rollouts.pause(OPERATOR, r.id)).rejects.toMatchObject({ code: 'CONFLICT' });
    await expect(s.rollouts.resume(ADMIN, r.id)).rejects.toMatchObject({ code: 'FORBIDDEN' });
    expect((await s.rollouts.resume(OPERATOR, r.id)).state).toBe('active');
    expect((await s.rollouts.checkin(device(inPhase[2]!))).action).toBe('update');
    expect((await s.rollouts.pause(OPERATOR, r.id)).state).toBe('paused');
    const cancelled = await s.rollouts.cancel(OPERATOR, r.id);
    expect(cancelled.state).toBe('cancelled');
    expect(cancelled.counts).toMatchObject({ failed: 2, cancelled: 8 });
    // the same devices can join a new rollout
    const again = await s.rollouts.create(OPERATOR, {
      name: 'c2',
      releaseId,
      target: { group: 'canary' },
      phases: [phase(100, 1, 1)],
    });
    expect(again.assigned).toBe(10);
    await s.rollouts.cancel(OPERATOR, again.id);
  });

  it('at most one active rollout per device; reports are matched to the manifest', async () => {
    const { releaseId, digest, deviceIds } = await setup(s, 'solo', 4);
    const a = await s.rollouts.create(OPERATOR, {
      name: 'a',
      releaseId,
      target: { deviceIds: deviceIds.slice(0, 2) },
      phases: [phase(100, 1, 1)],
    });
    const b = await s.rollouts.create(OPERATOR, {
      name: 'b',
      releaseId,
      target: { group: 'solo' },
      phases: [phase(100, 1, 1)],
    });
    expect([a.assigned, b.assigned, b.excluded]).toEqual([2, 2, 2]);
    const rows = await t.db.query<{ n: number }>(
      'SELECT max(c)::int AS n FROM (SELECT count(*) AS c FROM rollout_devices WHERE active GROUP BY device_id) x',
    );
    expect(rows[0]!.n).toBe(1);
    await expect(
      s.rollouts.report(device(deviceIds[0]!), successReport(randomBytes(32))),
    ).rejects.toMatchObject({ code: 'CONFLICT' });
    await expect(s.rollouts.report(device(deviceIds[0]!), new Uint8Array([0xa0]))).rejects.toMatchObject({
      code: 'SUIT_REPORT_INVALID',
    });
    await s.rollouts.checkin(device(deviceIds[0]!));
    expect(await s.rollouts.report(device(deviceIds[0]!), successReport(digest))).toEqual({
      rolloutId: a.id,
      state: 'succeeded',
    });
    await expect(s.rollouts.report(device(deviceIds[0]!), successReport(digest))).rejects.toMatchObject({
      code: 'CONFLICT',
    });
    await s.rollouts.cancel(OPERATOR, a.id);
    await s.rollouts.cancel(OPERATOR, b.id);
  });

  it('signed SUIT reports: verified with the device report key; unsigned or wrongly signed ones refused', async () => {
    const { releaseId } = await setup(s, 'signed', 0);
    const rk = generateSigningKey(-7);
    const mk = async (name: string, withKey: boolean): Promise<string> =>
      (
        await s.devices.create(ADMIN, {
          name,
          certSha256: randomBytes(32).toString('hex'),
          group: 'signed',
          keyAgreementKeyPem: agreementKeyPem(),
          ...(withKey
            ? {
                reportKeyPem: rk.publicKey.export({ type: 'spki', format: 'pem' }).toString(),
                reportKeyAlg: 'ES256' as const,
              }
            : {}),
        })
      ).id;
    const signedDev = await mk('signed-0', true);
    const plainDev = await mk('signed-1', false);
    const r = await s.rollouts.create(OPERATOR, {
      name: 'signed',
      releaseId,
      target: { group: 'signed' },
      phases: [phase(100, 1, 1)],
    });
    // the device reports on the envelope it processed: its own operator envelope
    const own = decodeEnvelope(await s.rollouts.envelopeFor(device(signedDev), r.id)).digest.bytes;
    const report = (d: Uint8Array) => ({
      reference: { uri: undefined, digest: { alg: -16, bytes: d } },
      records: [],
      result: true as const,
    });
    await expect(s.rollouts.report(device(signedDev), successReport(own))).rejects.toMatchObject({
      code: 'REPORT_SIGNATURE_REQUIRED',
    });
    const stranger = generateSigningKey(-7);
    await expect(
      s.rollouts.report(
        device(signedDev),
        await signReport(report(own), softwareSigner(stranger.privateKey, -7)),
        {
          signed: true,
        },
      ),
    ).rejects.toMatchObject({ code: 'COSE_BAD_SIGNATURE' });
    await expect(
      s.rollouts.report(device(plainDev), await signReport(report(own), softwareSigner(rk.privateKey, -7)), {
        signed: true,
      }),
    ).rejects.toMatchObject({ code: 'REPORT_KEY_MISSING' });
    expect(
      await s.rollouts.report(
        device(signedDev),
        await signReport(report(own), softwareSigner(rk.privateKey, -7)),
        { signed: true },
      ),
    ).toEqual({ rolloutId: r.id, state: 'succeeded' });
    await s.rollouts.cancel(OPERATOR, r.id);
  });

  it('the check-in verifies the standing itself: a cached authentication of a disabled or re-keyed device is refused', async () => {
    const cert = await selfSignedCert(`standing-${backend}`);
    const der = new Uint8Array(new X509Certificate(cert.certPem).raw);
    const d = await s.devices.create(ADMIN, { name: `standing-${backend}`, certificatePem: cert.certPem });
    // The check-in route takes a cached authentication without the cross-instance sync (device-auth.ts)…
    // (on PostgreSQL nothing is cached until the LISTEN connection is up: authenticate until it is)
    let first = await s.devices.authenticate(der);
    for (let i = 0; i < 200; i++) {
      const again = await s.devices.authenticate(der);
      if (again === first) break;
      first = again;
      await new Promise((r) => setTimeout(r, 10));
    }
    expect(await s.rollouts.checkin(first)).toEqual({ action: 'none' });
    const cached = await deferStandingCheck(() => s.devices.authenticate(der));
    expect(cached).toBe(first);
    // …so a change the cache has not heard of (made behind the server's back here) is caught by the check-in's
    // own statement: disabled…
    await t.db.query('UPDATE devices SET enabled = false WHERE id = $1', [d.id]);
    await expect(s.rollouts.checkin(cached)).rejects.toMatchObject({ code: 'DEVICE_DISABLED' });
    // …or re-keyed: the certificate the request was authenticated by is no longer the device's.
    await t.db.query("UPDATE devices SET enabled = true, cert_sha256 = sha256('\\x00') WHERE id = $1", [
      d.id,
    ]);
    await expect(s.rollouts.checkin(cached)).rejects.toMatchObject({ code: 'DEVICE_UNKNOWN' });
  });

  it('a device sees only its own history and envelopes', async () => {
    const { releaseId, deviceIds } = await setup(s, 'hist', 2);
    const r = await s.rollouts.create(OPERATOR, {
      name: 'h',
      releaseId,
      target: { deviceIds: [deviceIds[0]!] },
      phases: [phase(100, 1, 1)],
    });
    await expect(
      s.rollouts.deviceEvents(device(deviceIds[0]!), { deviceId: deviceIds[1]!, after: 0, limit: 10 }),
    ).rejects.toMatchObject({
      code: 'DEVICE_FORBIDDEN',
    });
    expect(await s.rollouts.envelopeFor(device(deviceIds[0]!), r.id)).toBeInstanceOf(Uint8Array);
    await expect(s.rollouts.envelopeFor(device(deviceIds[1]!), r.id)).rejects.toMatchObject({
      code: 'DEVICE_FORBIDDEN',
    });
    await s.rollouts.cancel(OPERATOR, r.id);
  });
});

describe('two instances on one PostgreSQL', () => {
  it('create overlapping rollouts concurrently without double assignment, and lose no report', async () => {
    const t = await createTestDatabase('postgres');
    try {
      await migrate(t.db);
      const keys = testKeyMaterial().keys;
      const s1 = createServices(t.db, { keys });
      const s2 = createServices(await t.open(), { keys });
      const { releaseId, digest, deviceIds } = await setup(s1, 'shared', 40);
      const create = (s: Services, name: string) =>
        s.rollouts
          .create(OPERATOR, { name, releaseId, target: { group: 'shared' }, phases: [phase(100, 1, 1)] })
          .then(
            (r) => r.assigned,
            (e: unknown) => {
              expect(e).toMatchObject({ code: 'CONFLICT' });
              return 0;
            },
          );
      const [a, b] = await Promise.all([create(s1, 'one'), create(s2, 'two')]);
      expect(a + b).toBe(40);
      const dup = await t.db.query(
        'SELECT device_id FROM rollout_devices WHERE active GROUP BY device_id HAVING count(*) > 1',
      );
      expect(dup).toEqual([]);
      // every device checks in and reports through alternating instances, concurrently
      await Promise.all(
        deviceIds.map(async (id, i) => {
          const s = i % 2 === 0 ? s1 : s2;
          await s.rollouts.checkin(device(id));
          await s.rollouts.report(device(id), successReport(digest));
        }),
      );
      const reports = await t.db.query<{ n: number }>(
        "SELECT count(*)::int AS n FROM device_events WHERE kind = 'report'",
      );
      expect(reports[0]!.n).toBe(40);
      const states = await t.db.query<{ n: number }>(
        "SELECT count(*)::int AS n FROM rollout_devices WHERE state = 'succeeded'",
      );
      expect(states[0]!.n).toBe(40);
      const done = await t.db.query<{ state: string }>('SELECT state FROM rollouts');
      expect(done.every((r) => r.state === 'completed')).toBe(true);
    } finally {
      await t.drop();
    }
  });
});

describe('device check-in and SUIT reports over mutual TLS', () => {
  let f: Fixture;
  beforeAll(async () => {
    f = await startFixture('pglite');
  });
  afterAll(async () => {
    await f.close();
  });

  it('a device polls, fetches its envelope and payload, and reports', async () => {
    const s = f.server.services;
    const cert = await selfSignedCert('rollout-device');
    const d = await s.devices.create(ADMIN, {
      name: 'rollout-device',
      certificatePem: cert.certPem,
      group: 'tls',
      keyAgreementKeyPem: agreementKeyPem(),
    });
    const { releaseId, digest } = await setup(s, 'tls-other', 0);
    const r = await s.rollouts.create(OPERATOR, {
      name: 'tls',
      releaseId,
      target: { group: 'tls' },
      phases: [phase(100, 1, 1)],
    });
    const c = deviceClient(f.server.deviceUrl!, f.serverCert, cert);
    try {
      const post = (path: string, body: Uint8Array | undefined, type?: string) =>
        new Promise<{ status: number; json: unknown }>((resolve, reject) => {
          void import('node:https').then(({ request }) => {
            const req = request(
              new URL(path, f.server.deviceUrl),
              {
                method: 'POST',
                agent: c.agent,
                headers:
                  body === undefined
                    ? {}
                    : {
                        'content-type': type ?? 'application/octet-stream',
                        'content-length': String(body.length),
                      },
              },
              (res) => {
                const chunks: Buffer[] = [];
                res.on('data', (x: Buffer) => chunks.push(x));
                res.on('end', () => {
                  resolve({
                    status: res.statusCode ?? 0,
                    json: JSON.parse(Buffer.concat(chunks).toString()) as unknown,
                  });
                });
              },
            );
            req.on('error', reject);
            req.end(body === undefined ? undefined : Buffer.from(body));
          });
        });
      const poll = await post('/d/v1/checkin', undefined);
      expect(poll.status).toBe(200);
      const todo = poll.json as { action: string; envelopeUrl: string; payloadUrls: string[] };
      expect(todo.action).toBe('update');
      const env = await c.get(todo.envelopeUrl);
      expect(env.headers['content-type']).toBe('application/suit-envelope+cose');
      // The device's own operator envelope, with the author's envelope integrated (TD §5.4).
      const own = decodeEnvelope(new Uint8Array(env.body));
      expect(decodeEnvelope(own.integrated.get('#author.suit')!).digest.bytes).toEqual(digest);
      expect((await c.get(todo.payloadUrls[0]!)).status).toBe(200);
      const bad = await post('/d/v1/reports', new Uint8Array([0xff]), 'application/suit-report+cbor');
      expect(bad.status).toBe(400);
      const wrongType = await post('/d/v1/reports', successReport(digest), 'application/json');
      expect(wrongType.status).toBe(415);
      const ok = await post('/d/v1/reports', successReport(digest), 'application/suit-report+cbor');
      expect(ok).toEqual({ status: 200, json: { rolloutId: r.id, state: 'succeeded' } });
      const hist = (await c.get('/d/v1/events')).json() as { items: { kind: string; deviceId: string }[] };
      expect(hist.items.map((e) => e.kind)).toEqual(['offered', 'report']);
      expect(hist.items.every((e) => e.deviceId === d.id)).toBe(true);
      expect((await s.rollouts.get(OPERATOR, r.id)).state).toBe('completed');
    } finally {
      c.close();
    }
  });
});

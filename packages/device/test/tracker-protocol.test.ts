/**
 * The tracker against a scripted server (mutual TLS): the full update path (check-in → envelope → payload over the
 * Range endpoint → install → reboot → confirm → signed reports), report delivery rules, and untrusted server input
 * (malformed check-ins refused with a typed error, nothing fetched or installed).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Alg, generateSigningKey, softwareSigner, softwareVerifier } from '@rotor/cose';
import { decodeReport, verifySignedReport } from '@rotor/suit';
import { parseCheckin, parsePush } from '../src/tracker/protocol.ts';
import { ROTOR_REPORT_KEY, transitionReport } from '../src/tracker/report.ts';
import { StatusTracker, type TrackerConfig, type TrackerEvent } from '../src/tracker/tracker.ts';
import { encode } from '@rotor/cose';
import { image, release } from './agent-fixture.ts';
import { selfSignedCert, type TestCert } from '../../server/test/helpers.ts';
import { deviceDir, sha256hex, type DeviceDir } from './tracker-fixture.ts';
import { Stub } from './tracker-stub.ts';

const te = new TextEncoder();
const json = (v: unknown): Uint8Array => te.encode(JSON.stringify(v));

describe('check-in and push decoding', () => {
  const sha = 'ab'.repeat(32);
  it('accepts the documented shapes', () => {
    expect(parseCheckin(json({ action: 'none' }))).toEqual({ action: 'none', intervalS: undefined });
    expect(
      parseCheckin(
        json({
          action: 'update',
          rolloutId: 'r-1',
          releaseId: 'rel-1',
          envelopeUrl: '/d/v1/rollouts/r-1/envelope',
          payloadUrls: [`/d/v1/payloads/${sha}`],
          checkinIntervalS: 900,
          futureMember: { ignored: true },
        }),
      ),
    ).toEqual({
      action: 'update',
      intervalS: 900,
      rolloutId: 'r-1',
      releaseId: 'rel-1',
      envelopeUrl: '/d/v1/rollouts/r-1/envelope',
      payloads: [{ path: `/d/v1/payloads/${sha}`, sha256: sha }],
    });
  });

  const update = {
    action: 'update',
    rolloutId: 'r',
    releaseId: 'x',
    envelopeUrl: '/d/v1/rollouts/r/envelope',
  };
  it.each([
    ['not JSON', te.encode('{action')],
    ['an array', json([{ action: 'none' }])],
    ['an unknown action', json({ action: 'reboot' })],
    ['an off-origin envelope URL', json({ ...update, envelopeUrl: 'https://evil.example/d/v1/x' })],
    ['a protocol-relative URL', json({ ...update, envelopeUrl: '//evil.example/d/v1/x' })],
    ['a dot-dot path', json({ ...update, envelopeUrl: '/d/v1/../../etc/passwd' })],
    ['a path outside the device API', json({ ...update, envelopeUrl: '/v1/releases/x/envelope' })],
    ['a missing rollout id', json({ ...update, rolloutId: undefined })],
    ['a bad payload URL', json({ ...update, payloadUrls: ['/d/v1/payloads/zz'] })],
    ['too many payload URLs', json({ ...update, payloadUrls: Array(65).fill(`/d/v1/payloads/${sha}`) })],
    ['a fractional interval', json({ action: 'none', checkinIntervalS: 1.5 })],
    ['a negative interval', json({ action: 'none', checkinIntervalS: -1 })],
    ['a string interval', json({ action: 'none', checkinIntervalS: '60' })],
    ['an oversized body', json({ action: 'none', pad: 'x'.repeat(20_000) })],
  ])('refuses %s (TRACKER_PROTOCOL)', (_what, body) => {
    expect(() => parseCheckin(body)).toThrow(expect.objectContaining({ code: 'TRACKER_PROTOCOL' }));
  });

  it('takes {1: "checkin"} as a nudge and nothing else', () => {
    expect(parsePush(encode(new Map([[1, 'checkin']])))).toBe('checkin');
    for (const bad of [
      encode(new Map([[1, 'install']])),
      encode(['checkin']),
      encode(new Map([['1', 'checkin']])),
      new Uint8Array([0xa1, 0x01]), // truncated
      new Uint8Array(300),
    ]) {
      expect(() => parsePush(bad)).toThrow(expect.objectContaining({ code: 'PUSH_MALFORMED' }));
    }
  });
});

describe('transition reports', () => {
  const digest = new Uint8Array(32).fill(7);
  const base = {
    index: 0,
    manifestDigest: digest,
    sequence: 2n,
    reason: undefined,
    detail: undefined,
    report: undefined,
  };
  it('progress and confirmation are result true with the transition member', () => {
    const r = transitionReport({ ...base, state: 'downloading' });
    expect(r.result).toBe(true);
    expect(r.reference.digest.bytes).toEqual(digest);
    expect(r.extensions?.get(ROTOR_REPORT_KEY.transition)).toBe('downloading');
  });
  it('a rollback is a failure at suit-invoke with the reason', () => {
    const r = transitionReport({ ...base, state: 'rolled-back', reason: 'HEALTH_CHECK_FAILED' });
    expect(r.result).toMatchObject({ reason: 11, record: { manifestSection: 9 } });
    expect(r.extensions?.get(ROTOR_REPORT_KEY.reason)).toBe('HEALTH_CHECK_FAILED');
  });
  it('an authentication failure references the offered manifest and says unauthorised', () => {
    const r = transitionReport(
      { ...base, state: 'failed', manifestDigest: new Uint8Array(0), reason: 'MANIFEST_REJECTED' },
      digest,
    );
    expect(r.reference.digest.bytes).toEqual(digest);
    expect(r.result).toMatchObject({ reason: 4, record: { manifestSection: 2 } });
  });
});

describe('tracker against a scripted server', () => {
  let stub: Stub;
  let cert: TestCert;
  const reportKey = generateSigningKey(Alg.ESP256);
  beforeAll(async () => {
    stub = await Stub.start();
    cert = await selfSignedCert('stub-device');
  });
  afterAll(async () => {
    await stub.close();
  });

  const tracker = (d: DeviceDir, events: TrackerEvent[], extra: Partial<TrackerConfig> = {}): StatusTracker =>
    new StatusTracker({
      agent: d.agent,
      server: { url: stub.url, identity: { cert: cert.certPem, key: cert.keyPem }, ca: stub.cert.certPem },
      interval: { defaultMs: 3_600_000 },
      fetch: { retries: 2, backoffMs: 10 },
      fallbackSource: 'none',
      onEvent: (e) => events.push(e),
      ...extra,
    });

  const assign = (payloadSha: string): void => {
    stub.checkin = () => ({
      status: 200,
      type: 'application/json',
      body: JSON.stringify({
        action: 'update',
        rolloutId: 'r1',
        releaseId: 'rel1',
        envelopeUrl: '/d/v1/rollouts/r1/envelope',
        payloadUrls: [`/d/v1/payloads/${payloadSha}`],
        checkinIntervalS: 600,
      }),
    });
  };

  it('runs the full update over mutual TLS and delivers every transition as a signed SUIT report', async () => {
    const d = await deviceDir({ reportSigner: softwareSigner(reportKey.privateKey, Alg.ESP256) });
    const events: TrackerEvent[] = [];
    const t = tracker(d, events);
    try {
      await d.agent.powerOn();
      const img = image(2, 9000);
      const sha = sha256hex(img);
      // A relative manifest URI, as in the server's per-device manifests.
      const r = await release({ seq: 2, image: img, uri: `/d/v1/payloads/${sha}` });
      stub.envelope = r.envelope;
      stub.payloads.set(sha, r.payload);
      assign(sha);
      const reports: Uint8Array[] = [];
      stub.report = (type, body) => {
        expect(type).toBe('application/suit-report+cose');
        reports.push(body);
        return { status: 200, type: 'application/json', body: '{}' };
      };
      const start = stub.seen.length;
      const out = await t.cycle();
      expect(out.error).toBeUndefined();
      expect(out.checkin?.intervalS).toBe(600);
      expect(out.update).toMatchObject({ ok: true, bank: 'b', confirmed: true });
      expect(out.pending).toBe(0);
      expect(await d.agent.status()).toMatchObject({ bank: 'b', sequence: 2n });
      // Every request carried the device certificate (RFC 8446 §4.4.2).
      expect(stub.seen.slice(start).every((s) => s.clientCert)).toBe(true);
      expect(stub.seen.slice(start).some((s) => s.path === `/d/v1/payloads/${sha}`)).toBe(true);
      const verifier = softwareVerifier(reportKey.publicKey, Alg.ESP256);
      const states = reports.map((b) => {
        const rep = verifySignedReport(b, verifier, new Set([Alg.ESP256]));
        expect(rep.reference.digest.bytes.length).toBe(32);
        return rep.extensions?.get(ROTOR_REPORT_KEY.transition);
      });
      expect(states).toEqual([
        'downloading',
        'downloaded',
        'installing',
        'installed',
        'rebooting',
        'confirmed',
      ]);
      // Assigned once, run once.
      const again = await t.cycle();
      expect(again.update).toBeUndefined();
      expect(events.some((e) => e.kind === 'skipped')).toBe(true);
    } finally {
      await t.stop();
      d.remove();
    }
  });

  it('falls back to bare reports on 415, drops what the server refuses for good, keeps what it cannot take now', async () => {
    const d = await deviceDir({ reportSigner: softwareSigner(reportKey.privateKey, Alg.ESP256) });
    const events: TrackerEvent[] = [];
    const t = tracker(d, events);
    try {
      await d.agent.powerOn();
      const img = image(3, 3000, false); // unhealthy: installs, trial-boots, rolls back
      const sha = sha256hex(img);
      const r = await release({ seq: 3, image: img, uri: `https://cdn.example/payloads/${sha}` });
      stub.envelope = r.envelope;
      stub.payloads.set(sha, r.payload);
      assign(sha);
      const got: string[] = [];
      stub.report = (type, body) => {
        if (type === 'application/suit-report+cose') return { status: 415 };
        const rep = decodeReport(body);
        const state = String(rep.extensions?.get(ROTOR_REPORT_KEY.transition));
        if (state === 'installed')
          return { status: 503, type: 'application/problem+json', body: '{"code":"NOT_READY"}' };
        if (state === 'downloaded')
          return { status: 409, type: 'application/problem+json', body: '{"code":"CONFLICT"}' };
        got.push(state);
        return { status: 200 };
      };
      const out = await t.cycle();
      expect(out.update).toMatchObject({ ok: true, confirmed: false });
      expect(out.error?.code).toBe('TRACKER_UNREACHABLE');
      expect(got).toEqual(['downloading', 'installing']);
      expect(events.find((e) => e.kind === 'dropped')).toMatchObject({ status: 409, code: 'CONFLICT' });
      expect((await d.agent.outbox.pending()).map((x) => x.state)).toEqual([
        'installed',
        'rebooting',
        'rolled-back',
      ]);
      stub.report = (_type, body) => {
        got.push(String(decodeReport(body).extensions?.get(ROTOR_REPORT_KEY.transition)));
        return { status: 200 };
      };
      expect(await t.flush()).toEqual({ delivered: 3, remaining: 0 });
      expect(got.slice(2)).toEqual(['installed', 'rebooting', 'rolled-back']);
    } finally {
      await t.stop();
      d.remove();
    }
  });

  it.each([
    [
      'an off-origin envelope URL',
      {
        status: 200,
        type: 'application/json',
        body: '{"action":"update","rolloutId":"r","releaseId":"x","envelopeUrl":"https://evil.example/e"}',
      },
      'TRACKER_PROTOCOL',
    ],
    ['HTML', { status: 200, type: 'text/html', body: '<html>' }, 'TRACKER_PROTOCOL'],
    [
      'an endless body',
      { status: 200, type: 'application/json', body: `{"action":"none","x":"${'y'.repeat(40_000)}"}` },
      'TRACKER_PROTOCOL',
    ],
    [
      'a refusal',
      { status: 403, type: 'application/problem+json', body: '{"code":"DEVICE_DISABLED"}' },
      'TRACKER_REFUSED',
    ],
    ['a server error', { status: 500 }, 'TRACKER_UNREACHABLE'],
  ])('a check-in answered with %s is a typed error and installs nothing', async (_what, reply, code) => {
    const d = await deviceDir();
    const t = tracker(d, []);
    try {
      await d.agent.powerOn();
      stub.checkin = () => reply;
      const start = stub.seen.length;
      const out = await t.cycle();
      expect(out.error?.code).toBe(code);
      expect(out.update).toBeUndefined();
      expect(stub.seen.slice(start).map((s) => s.path)).toEqual(['/d/v1/checkin']);
      expect(await d.agent.status()).toMatchObject({
        bank: 'a',
        sequence: 1n,
        updating: false,
        trial: false,
      });
      expect(await d.agent.outbox.pending()).toEqual([]);
    } finally {
      await t.stop();
      d.remove();
    }
  });
});

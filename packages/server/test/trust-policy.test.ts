/**
 * Issue 7 on the server: trust-anchor statements (uploaded by the operator, verified N+1 against N, fetched by
 * devices over mutual TLS), revocation lists (signed by the anchors' revocation role, anti-rollback), and the
 * policy engine: a contraindicated result quarantines the device, which is then refused every update but a
 * remediation release; a rollout can require a fresh affirming result before a device joins.
 */
import { createHash, randomBytes, X509Certificate } from 'node:crypto';
import { Agent, request as httpsRequest } from 'node:https';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  Alg,
  asArray,
  asBytes,
  coseKeyFromKeyObject,
  decode,
  encode,
  generateAgreementKey,
  generateSigningKey,
  softwareSigner,
  type Signer,
} from '@rotor/cose';
import {
  anchorKey,
  createAnchorStatement,
  createAttestationToken,
  createRotRecord,
  createTrustRevocationList,
  evidenceClaimsMap,
  initialAnchorSet,
  RevokedKind,
  rotPublicKey,
  walkAnchorStatements,
  type AnchorKey,
} from '@rotor/trust';
import type { Principal } from '../src/index.ts';
import { selfSignedCert, type TestCert } from './helpers.ts';
import { authorKeyPair, sha256hex, signedRelease, startFixture, type Fixture } from './fixtures.ts';

const ADMIN: Principal = { kind: 'operator', tokenId: 't-admin', name: 'admin', role: 'admin' };
const OPERATOR: Principal = { kind: 'operator', tokenId: 't-op', name: 'op', role: 'operator' };
const AUTHOR: Principal = { kind: 'operator', tokenId: 't-author', name: 'author', role: 'author' };
const ALGS: ReadonlySet<number> = new Set<number>([Alg.ES256]);

function party(): { key: AnchorKey; signer: Signer } {
  const k = generateSigningKey(Alg.ES256);
  const key = anchorKey({ ...coseKeyFromKeyObject(k.publicKey), alg: Alg.ES256 });
  return { key, signer: softwareSigner(k.privateKey, Alg.ES256, key.kid) };
}

function mtls(baseUrl: string, serverCert: TestCert, cert: TestCert) {
  const agent = new Agent({ keepAlive: true, ca: serverCert.certPem, cert: cert.certPem, key: cert.keyPem });
  const call = (method: string, path: string, body?: Uint8Array): Promise<{ status: number; body: Buffer }> =>
    new Promise((resolve, reject) => {
      const headers: Record<string, string> =
        body === undefined
          ? {}
          : { 'content-type': 'application/octet-stream', 'content-length': String(body.length) };
      const r = httpsRequest(new URL(path, baseUrl), { method, agent, headers }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks) });
        });
        res.on('error', reject);
      });
      r.on('error', reject);
      r.end(body === undefined ? undefined : Buffer.from(body));
    });
  return {
    call,
    close: () => {
      agent.destroy();
    },
  };
}

describe('trust distribution and policy engine (issue 7)', () => {
  let f: Fixture;
  const clock = 1_800_000_000_000;
  const closers: (() => void)[] = [];

  async function device(name: string, group: string) {
    const cert = await selfSignedCert(name);
    const d = await f.server.services.devices.create(ADMIN, {
      name,
      certSha256: sha256hex(new X509Certificate(cert.certPem).raw),
      group,
      keyAgreementKeyPem: generateAgreementKey('X25519')
        .publicKey.export({ type: 'spki', format: 'pem' })
        .toString(),
    });
    const http = mtls(f.server.deviceUrl!, f.serverCert, cert);
    closers.push(http.close);
    return { id: d.id, http, principal: { kind: 'device', deviceId: d.id, name } as Principal };
  }

  async function release(seq: number): Promise<string> {
    const k = authorKeyPair();
    await f.server.services.authorKeys.create(ADMIN, {
      name: `author-${seq}`,
      alg: 'ES256',
      publicKeyPem: k.publicKeyPem,
    });
    const image = randomBytes(128);
    await f.server.services.payloads.upload(AUTHOR, sha256hex(image), image);
    const rel = await f.server.services.releases.upload(
      AUTHOR,
      await signedRelease(k.privateKey, image, seq),
    );
    await f.server.services.rollouts.approve(OPERATOR, rel.id);
    return rel.id;
  }

  const rollout = (releaseId: string, group: string) =>
    f.server.services.rollouts.create(OPERATOR, {
      name: `r-${releaseId}`,
      releaseId,
      target: { group },
      phases: [{ percent: 100, successThreshold: 1, failureThreshold: 1, timeoutMs: 3_600_000 }],
    });

  beforeAll(async () => {
    f = await startFixture('pglite', { now: () => clock });
  });
  afterAll(async () => {
    for (const c of closers) c();
    await f.close();
  });

  it('distributes anchor statements verified N+1 against N, and revocation lists signed by the anchors', async () => {
    const [r1, r2, r3, rvl, a] = [party(), party(), party(), party(), party()];
    const roles = (root: typeof r1) =>
      new Map([
        ['root', { threshold: 1, keys: [root.key] }],
        ['author', { threshold: 1, keys: [a.key] }],
        ['revocation', { threshold: 1, keys: [rvl.key] }],
      ]);
    const v1 = await createAnchorStatement({ version: 1, issuedAt: 1, roles: roles(r1) }, [r1.signer]);
    const v2 = await createAnchorStatement({ version: 2, issuedAt: 2, roles: roles(r2) }, [
      r1.signer,
      r2.signer,
    ]);
    const v3bad = await createAnchorStatement({ version: 3, issuedAt: 3, roles: roles(r3) }, [r3.signer]);
    const v3 = await createAnchorStatement({ version: 3, issuedAt: 3, roles: roles(r3) }, [
      r2.signer,
      r3.signer,
    ]);
    const put = (path: string, b: Uint8Array) => f.admin.put(path, b);
    expect((await put('/v1/trust-anchors', v2)).status).toBe(409); // the first must be version 1
    expect((await put('/v1/trust-anchors', v1)).status).toBe(200);
    expect((await put('/v1/trust-anchors', v2)).status).toBe(200);
    const refused = await put('/v1/trust-anchors', v3bad);
    expect(refused.status).toBe(400);
    expect(refused.body.toString()).toMatch(/ANCHORS_THRESHOLD/);
    expect((await put('/v1/trust-anchors', v3)).status).toBe(200);

    const d = await device('anchors-dev', 'anchors');
    const got = await d.http.call('GET', '/d/v1/trust-anchors/after/1');
    expect(got.status).toBe(200);
    const statements = asArray(decode(new Uint8Array(got.body)), 'list').map((s) => asBytes(s, 's'));
    expect(statements).toHaveLength(2);
    const walked = walkAnchorStatements(initialAnchorSet(v1, ALGS), statements, ALGS);
    expect(walked.error).toBeUndefined();
    expect(walked.set.version).toBe(3);

    const now = Math.floor(clock / 1000);
    const list = (version: number, signer: Signer) =>
      createTrustRevocationList(
        {
          version,
          issuedAt: now,
          expiresAt: now + 3600,
          entries: [{ kind: RevokedKind.signingKey, id: new Uint8Array(randomBytes(32)) }],
        },
        signer,
      );
    expect((await d.http.call('GET', '/d/v1/revocation-list')).status).toBe(404);
    expect((await put('/v1/revocation-list', await list(1, a.signer))).status).toBe(400); // not the authority
    expect((await put('/v1/revocation-list', await list(2, rvl.signer))).status).toBe(200);
    // The server's own appraisals honour the list at once: a listed digest appraises as revoked.
    const digest = new Uint8Array(randomBytes(32));
    const withDigest = await createTrustRevocationList(
      {
        version: 3,
        issuedAt: now,
        expiresAt: now + 3600,
        entries: [{ kind: RevokedKind.digest, id: digest }],
      },
      rvl.signer,
    );
    expect((await put('/v1/revocation-list', withDigest)).status).toBe(200);
    expect(await f.t.db.query('SELECT reason FROM revoked_digests WHERE sha256 = $1', [digest])).toEqual([
      { reason: 'revocation list 3' },
    ]);
    expect((await put('/v1/revocation-list', await list(1, rvl.signer))).status).toBe(400); // rollback
    const l = await d.http.call('GET', '/d/v1/revocation-list');
    expect(l.status).toBe(200);
    expect(createHash('sha256').update(l.body).digest('hex')).toHaveLength(64);
  });

  it('quarantines a contraindicated device: only the remediation release is offered; fresh-affirming gate', async () => {
    const normal = await release(10);
    const remedy = await release(11);
    const set = await f.admin.put('/v1/policy', {
      rules: [
        { id: 'quarantine-bad', when: { status: ['contraindicated'] }, then: ['quarantine', 'rotate-rot'] },
      ],
      remediationReleases: [remedy],
    });
    expect(set.status).toBe(200);
    const d = await device('policy-dev', 'policy');
    const ok = await device('policy-ok', 'policy-ok');

    // Evidence signed by a key that is not the device's RoT (none is recorded): contraindicated → quarantine.
    const k = generateSigningKey(Alg.ES256);
    const token = await createAttestationToken(
      {
        nonce: new Uint8Array(randomBytes(32)),
        ueid: new Uint8Array([1, ...randomBytes(16)]),
        iat: Math.floor(clock / 1000),
        rotIndex: 0,
        claims: evidenceClaimsMap({
          oemid: new Uint8Array([0, 1, 2]),
          hwmodel: new TextEncoder().encode('x'),
          swversion: '1.0.0',
          oemboot: true,
          dbgstat: 3,
          uptime: 1,
          components: [],
        }),
      },
      softwareSigner(k.privateKey, Alg.ES256, new Uint8Array(32).fill(1)),
    );
    const ev = await d.http.call('POST', '/d/v1/attestation/evidence', token);
    expect(ev.status).toBe(200);
    expect((JSON.parse(ev.body.toString()) as { status: string }).status).toBe('contraindicated');
    const st = (await f.admin.get(`/v1/devices/${d.id}/policy-state`)).json() as { quarantined: boolean };
    expect(st).toMatchObject({ quarantined: true, ruleId: 'quarantine-bad' });

    const r1 = await rollout(normal, 'policy');
    expect(await f.server.services.rollouts.checkin(d.principal)).toEqual({ action: 'none' });
    await f.server.services.rollouts.cancel(OPERATOR, r1.id);
    await rollout(remedy, 'policy');
    expect(await f.server.services.rollouts.checkin(d.principal)).toMatchObject({
      action: 'update',
      releaseId: remedy,
    });

    // Lifting the quarantine (audited operator action) restores normal updates; another device was never gated.
    expect(
      (await f.admin.put(`/v1/devices/${d.id}/quarantine`, { quarantined: false, reason: 'remediated' }))
        .status,
    ).toBe(200);
    const r2 = await rollout(normal, 'policy-ok');
    expect(await f.server.services.rollouts.checkin(ok.principal)).toMatchObject({ action: 'update' });
    await f.server.services.rollouts.cancel(OPERATOR, r2.id);

    // Policy v2: joining a rollout needs an affirming result within an hour. `ok` has none: offered nothing.
    const v2 = await f.admin.put('/v1/policy', {
      rules: [],
      remediationReleases: [remedy],
      rollout: { requireAffirmingWithinMs: 3_600_000 },
    });
    expect((v2.json() as { version: number }).version).toBe(2);
    await rollout(normal, 'policy-ok');
    expect(await f.server.services.rollouts.checkin(ok.principal)).toEqual({ action: 'none' });

    // Policy v3: periodic attestation — an enrolled device without a recent result is asked to attest.
    const rk = generateSigningKey(Alg.ES256);
    const pub = rotPublicKey(coseKeyFromKeyObject(rk.publicKey), Alg.ES256);
    const record = await createRotRecord(
      { index: 0, publicKey: pub, alg: Alg.ES256, previous: null, time: 1_700_000_000 },
      softwareSigner(rk.privateKey, Alg.ES256, pub.kid),
    );
    const chain = encode(
      new Map<string, unknown>([
        ['ueid', new Uint8Array([1, ...randomBytes(16)])],
        ['records', [record]],
      ]),
    );
    expect((await ok.http.call('PUT', '/d/v1/attestation/rot', chain)).status).toBe(200);
    expect((await f.admin.put('/v1/policy', { rules: [], attestation: { everyMs: 60_000 } })).status).toBe(
      200,
    );
    const pending = await ok.http.call('GET', '/d/v1/attestation/pending');
    expect(JSON.parse(pending.body.toString())).toMatchObject({ attest: true, enrolled: true });
    const audit = await f.admin.get('/v1/audit?limit=200');
    expect(audit.body.toString()).toMatch(/policy\.apply/);
  });
});

import { randomBytes } from 'node:crypto';
import { statSync, readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeEnvelope } from '@rotor/suit';
import { ROLES, type Role } from '../src/index.ts';
import {
  BACKENDS,
  deviceClient,
  operatorClient,
  selfSignedCert,
  type OperatorClient,
  type TestCert,
} from './helpers.ts';
import { authorKeyPair, sha256hex, signedRelease, startFixture, type Fixture } from './fixtures.ts';

interface Problem {
  type: string;
  title: string;
  status: number;
  detail: string;
  code: string;
}

const problem = (r: { status: number; headers: Record<string, unknown>; json(): unknown }): Problem => {
  expect(r.headers['content-type']).toMatch(/^application\/problem\+json/);
  const p = r.json() as Problem;
  expect(p.status).toBe(r.status);
  expect(p.type).toBe(`urn:rotor:problem:${p.code}`);
  return p;
};

describe.each(BACKENDS)('fleet server API on %s', (backend) => {
  let f: Fixture;
  const tokens = {} as Record<Role, OperatorClient>;
  let author: ReturnType<typeof authorKeyPair>;

  beforeAll(async () => {
    f = await startFixture(backend);
    for (const role of ROLES) {
      const r = await f.admin.post('/v1/tokens', { name: `${role} token`, role });
      expect(r.status).toBe(201);
      tokens[role] = operatorClient(f.server.operatorUrl, (r.json() as { token: string }).token);
    }
    author = authorKeyPair();
    const k = await tokens.admin.post('/v1/author-keys', {
      name: 'release author',
      alg: 'ES256',
      publicKeyPem: author.publicKeyPem,
    });
    expect(k.status).toBe(201);
  });
  afterAll(async () => {
    await f.close();
  });

  describe('service endpoints', () => {
    it('health, readiness, metrics and the OpenAPI document need no token', async () => {
      const anon = operatorClient(f.server.operatorUrl, undefined);
      expect((await anon.get('/healthz')).json()).toEqual({ status: 'ok' });
      expect((await anon.get('/readyz')).json()).toEqual({ status: 'ready' });
      const m = await anon.get('/metrics');
      expect(m.headers['content-type']).toMatch(/^text\/plain/);
      expect(m.body.toString()).toMatch(
        /rotor_http_requests_total\{listener="operator",method="GET",route="\/healthz",status="200"\}/,
      );
      const doc = (await anon.get('/openapi.json')).json() as {
        openapi: string;
        paths: Record<string, Record<string, unknown>>;
      };
      expect(doc.openapi).toBe('3.1.0');
      expect(Object.keys(doc.paths)).toEqual(
        expect.arrayContaining(['/v1/devices/{id}', '/v1/releases', '/d/v1/self', '/d/v1/payloads/{sha256}']),
      );
      expect(doc.paths['/v1/devices']!.post).toMatchObject({ security: [{ bearerAuth: [] }] });
    });

    it('unknown routes are NOT_FOUND problems', async () => {
      const p = problem(await f.admin.get('/v1/nope'));
      expect(p.code).toBe('NOT_FOUND');
    });

    it('never writes the bootstrap token or any bearer token into the audit log', async () => {
      const r = await tokens.auditor.get('/v1/audit?limit=1000');
      const text = r.body.toString();
      expect(text).not.toContain(' ADMIN');
      for (const t of Object.values(tokens)) expect(t).toBeDefined();
      expect(text).not.toMatch(/rot_[0-9a-f]{16}_/);
    });
  });

  describe('operator authentication and roles (deny by default)', () => {
    // Every operator route, a request that passes validation, and the roles that may make it.
    const routes: {
      name: string;
      roles: readonly Role[];
      call: (c: OperatorClient) => ReturnType<OperatorClient['get']>;
    }[] = [
      {
        name: 'POST /v1/tokens',
        roles: ['admin'],
        call: (c) => c.post('/v1/tokens', { name: 'x', role: 'auditor' }),
      },
      { name: 'GET /v1/tokens', roles: ['admin', 'auditor'], call: (c) => c.get('/v1/tokens') },
      {
        name: 'DELETE /v1/tokens/:id',
        roles: ['admin'],
        call: (c) => c.delete('/v1/tokens/0000000000000000'),
      },
      {
        name: 'POST /v1/devices',
        roles: ['admin'],
        call: (c) =>
          c.post('/v1/devices', {
            name: `d-${randomBytes(4).toString('hex')}`,
            certSha256: randomBytes(32).toString('hex'),
          }),
      },
      { name: 'GET /v1/devices', roles: ['admin', 'operator', 'auditor'], call: (c) => c.get('/v1/devices') },
      {
        name: 'GET /v1/devices/:id',
        roles: ['admin', 'operator', 'auditor'],
        call: (c) => c.get('/v1/devices/missing'),
      },
      {
        name: 'PATCH /v1/devices/:id',
        roles: ['admin'],
        call: (c) => c.patch('/v1/devices/missing', { enabled: false }),
      },
      {
        name: 'POST /v1/author-keys',
        roles: ['admin'],
        call: (c) =>
          c.post('/v1/author-keys', {
            name: `k-${randomBytes(4).toString('hex')}`,
            alg: 'ES256',
            publicKeyPem: authorKeyPair().publicKeyPem,
          }),
      },
      {
        name: 'GET /v1/author-keys',
        roles: ['admin', 'author', 'operator', 'auditor'],
        call: (c) => c.get('/v1/author-keys'),
      },
      {
        name: 'DELETE /v1/author-keys/:id',
        roles: ['admin'],
        call: (c) => c.delete('/v1/author-keys/missing'),
      },
      {
        name: 'PUT /v1/payloads/:sha256',
        roles: ['author'],
        call: (c) => {
          const b = randomBytes(16);
          return c.put(`/v1/payloads/${sha256hex(b)}`, b);
        },
      },
      {
        name: 'GET /v1/payloads/:sha256',
        roles: ['admin', 'author', 'operator', 'auditor'],
        call: (c) => c.get(`/v1/payloads/${'0'.repeat(64)}`),
      },
      {
        name: 'POST /v1/releases',
        roles: ['author'],
        call: (c) => c.post('/v1/releases', new Uint8Array([0xa0]), 'application/suit-envelope+cose'),
      },
      {
        name: 'GET /v1/releases',
        roles: ['admin', 'author', 'operator', 'auditor'],
        call: (c) => c.get('/v1/releases'),
      },
      {
        name: 'GET /v1/releases/:id',
        roles: ['admin', 'author', 'operator', 'auditor'],
        call: (c) => c.get('/v1/releases/missing'),
      },
      {
        name: 'GET /v1/releases/:id/envelope',
        roles: ['admin', 'author', 'operator', 'auditor'],
        call: (c) => c.get('/v1/releases/missing/envelope'),
      },
      {
        name: 'GET /v1/releases/:id/cosigned-envelope',
        roles: ['admin', 'author', 'operator', 'auditor'],
        call: (c) => c.get('/v1/releases/missing/cosigned-envelope'),
      },
      {
        name: 'POST /v1/releases/:id/approve',
        roles: ['operator'],
        call: (c) => c.post('/v1/releases/missing/approve'),
      },
      {
        name: 'POST /v1/rollouts',
        roles: ['operator'],
        call: (c) =>
          c.post('/v1/rollouts', {
            name: 'r',
            releaseId: 'missing',
            target: { group: 'none' },
            phases: [{ percent: 100, successThreshold: 1, failureThreshold: 1, timeoutMs: 60000 }],
          }),
      },
      {
        name: 'GET /v1/rollouts',
        roles: ['admin', 'operator', 'auditor'],
        call: (c) => c.get('/v1/rollouts'),
      },
      {
        name: 'GET /v1/rollouts/:id',
        roles: ['admin', 'operator', 'auditor'],
        call: (c) => c.get('/v1/rollouts/missing'),
      },
      {
        name: 'POST /v1/rollouts/:id/pause',
        roles: ['operator'],
        call: (c) => c.post('/v1/rollouts/missing/pause'),
      },
      {
        name: 'POST /v1/rollouts/:id/resume',
        roles: ['operator'],
        call: (c) => c.post('/v1/rollouts/missing/resume'),
      },
      {
        name: 'POST /v1/rollouts/:id/cancel',
        roles: ['operator'],
        call: (c) => c.post('/v1/rollouts/missing/cancel'),
      },
      {
        name: 'GET /v1/rollouts/:id/events',
        roles: ['admin', 'operator', 'auditor'],
        call: (c) => c.get('/v1/rollouts/missing/events'),
      },
      {
        name: 'GET /v1/devices/:id/events',
        roles: ['admin', 'operator', 'auditor'],
        call: (c) => c.get('/v1/devices/missing/events'),
      },
      // Attestation, roots of trust, trust anchors, revocation, policy (issue 7).
      {
        name: 'GET /v1/attestation/verifier-key',
        roles: ['admin', 'author', 'operator', 'auditor'],
        call: (c) => c.get('/v1/attestation/verifier-key'),
      },
      {
        name: 'POST /v1/devices/:id/attestation',
        roles: ['admin', 'operator'],
        call: (c) => c.post('/v1/devices/missing/attestation'),
      },
      {
        name: 'GET /v1/devices/:id/attestation/results',
        roles: ['admin', 'operator', 'auditor'],
        call: (c) => c.get('/v1/devices/missing/attestation/results'),
      },
      {
        name: 'POST /v1/devices/:id/rot/rotate',
        roles: ['admin', 'operator'],
        call: (c) => c.post('/v1/devices/missing/rot/rotate'),
      },
      {
        name: 'GET /v1/devices/:id/rot',
        roles: ['admin', 'operator', 'auditor'],
        call: (c) => c.get('/v1/devices/missing/rot'),
      },
      {
        name: 'POST /v1/attestation/reference-values',
        roles: ['admin', 'operator'],
        call: (c) => c.post('/v1/attestation/reference-values', { sha256: 'a'.repeat(64), label: 'x' }),
      },
      {
        name: 'POST /v1/attestation/revoked-digests',
        roles: ['admin', 'operator'],
        call: (c) => c.post('/v1/attestation/revoked-digests', { sha256: 'b'.repeat(64), label: 'x' }),
      },
      {
        name: 'PUT /v1/trust-anchors',
        roles: ['admin'],
        call: (c) => c.put('/v1/trust-anchors', new Uint8Array([0xa0]), 'application/octet-stream'),
      },
      {
        name: 'PUT /v1/revocation-list',
        roles: ['admin', 'operator'],
        call: (c) => c.put('/v1/revocation-list', new Uint8Array([0xa0]), 'application/octet-stream'),
      },
      { name: 'PUT /v1/policy', roles: ['admin'], call: (c) => c.put('/v1/policy', { rules: [] }) },
      { name: 'GET /v1/policy', roles: ['admin', 'operator', 'auditor'], call: (c) => c.get('/v1/policy') },
      {
        name: 'GET /v1/devices/:id/policy-state',
        roles: ['admin', 'operator', 'auditor'],
        call: (c) => c.get('/v1/devices/missing/policy-state'),
      },
      {
        name: 'PUT /v1/devices/:id/quarantine',
        roles: ['admin', 'operator'],
        call: (c) => c.put('/v1/devices/missing/quarantine', { quarantined: true, reason: 'test' }),
      },
      // Capability modules (issue 8)
      {
        name: 'POST /v1/capabilities/modules',
        roles: ['author', 'admin'],
        call: (c) => c.post('/v1/capabilities/modules', new Uint8Array([0x80]), 'application/octet-stream'),
      },
      {
        name: 'GET /v1/capabilities/modules',
        roles: ['admin', 'author', 'operator', 'auditor'],
        call: (c) => c.get('/v1/capabilities/modules'),
      },
      {
        name: 'GET /v1/capabilities/modules/:id',
        roles: ['admin', 'author', 'operator', 'auditor'],
        call: (c) => c.get('/v1/capabilities/modules/missing'),
      },
      {
        name: 'POST /v1/capabilities/modules/:id/revoke',
        roles: ['admin', 'operator'],
        call: (c) => c.post('/v1/capabilities/modules/missing/revoke', { reason: 'test' }),
      },
      {
        name: 'POST /v1/capabilities/manifests',
        roles: ['admin', 'operator'],
        call: (c) => c.post('/v1/capabilities/manifests', { group: null, modules: [] }),
      },
      {
        name: 'GET /v1/capabilities/manifests',
        roles: ['admin', 'author', 'operator', 'auditor'],
        call: (c) => c.get('/v1/capabilities/manifests'),
      },
      {
        name: 'POST /v1/capabilities/rollouts',
        roles: ['operator'],
        call: (c) =>
          c.post('/v1/capabilities/rollouts', {
            moduleId: 'missing',
            target: {},
            phases: [{ percent: 100, durationMs: 0 }],
          }),
      },
      {
        name: 'GET /v1/capabilities/rollouts',
        roles: ['admin', 'author', 'operator', 'auditor'],
        call: (c) => c.get('/v1/capabilities/rollouts'),
      },
      {
        name: 'POST /v1/capabilities/rollouts/:id/cancel',
        roles: ['operator'],
        call: (c) => c.post('/v1/capabilities/rollouts/missing/cancel'),
      },
      {
        name: 'POST /v1/capabilities/rollouts/:id/pause',
        roles: ['operator'],
        call: (c) => c.post('/v1/capabilities/rollouts/missing/pause'),
      },
      {
        name: 'POST /v1/capabilities/rollouts/:id/resume',
        roles: ['operator'],
        call: (c) => c.post('/v1/capabilities/rollouts/missing/resume'),
      },
      {
        name: 'GET /v1/capabilities/rollouts/:id',
        roles: ['admin', 'author', 'operator', 'auditor'],
        call: (c) => c.get('/v1/capabilities/rollouts/missing'),
      },
      {
        name: 'GET /v1/capabilities/devices/:id/modules',
        roles: ['admin', 'author', 'operator', 'auditor'],
        call: (c) => c.get('/v1/capabilities/devices/missing/modules'),
      },
      {
        name: 'GET /v1/capabilities/keys',
        roles: ['admin', 'author', 'operator', 'auditor'],
        call: (c) => c.get('/v1/capabilities/keys'),
      },
      { name: 'GET /v1/audit', roles: ['admin', 'auditor'], call: (c) => c.get('/v1/audit') },
      { name: 'GET /v1/audit/verify', roles: ['admin', 'auditor'], call: (c) => c.get('/v1/audit/verify') },
    ];

    it('covers every authenticated operator route of the OpenAPI document', () => {
      const doc = f.server.openapi as { paths: Record<string, Record<string, { security: unknown[] }>> };
      const documented = Object.entries(doc.paths)
        .filter(([p]) => p.startsWith('/v1/'))
        .flatMap(([p, ops]) =>
          Object.keys(ops).map((m) => `${m.toUpperCase()} ${p.replace(/\{([a-z0-9]+)\}/gi, ':$1')}`),
        );
      expect(routes.map((r) => r.name).sort()).toEqual(documented.sort());
    });

    for (const route of routes) {
      it(`${route.name}: allowed for [${route.roles.join(', ')}] only; 401 without or with a bad token`, async () => {
        for (const role of ROLES) {
          const r = await route.call(tokens[role]);
          if (route.roles.includes(role)) {
            expect([401, 403], `${role} should be allowed`).not.toContain(r.status);
          } else {
            expect(r.status, `${role} should be refused`).toBe(403);
            expect(problem(r).code).toBe('FORBIDDEN');
          }
        }
        const anon = await route.call(operatorClient(f.server.operatorUrl, undefined));
        expect(anon.status).toBe(401);
        expect(problem(anon).code).toBe('AUTH_REQUIRED');
        expect(anon.headers['www-authenticate']).toBe('Bearer');
        const bad = await route.call(
          operatorClient(f.server.operatorUrl, `rot_0123456789abcdef_${'A'.repeat(43)}`),
        );
        expect(problem(bad).code).toBe('AUTH_INVALID');
      });
    }

    it('a revoked token is refused on its next request', async () => {
      const r = await f.admin.post('/v1/tokens', { name: 'short-lived', role: 'auditor' });
      const { id, token } = r.json() as { id: string; token: string };
      const c = operatorClient(f.server.operatorUrl, token);
      expect((await c.get('/v1/audit')).status).toBe(200);
      expect((await f.admin.delete(`/v1/tokens/${id}`)).status).toBe(200);
      expect(problem(await c.get('/v1/audit')).code).toBe('AUTH_INVALID');
    });

    it('token listings never contain secrets or hashes', async () => {
      const r = await tokens.admin.get('/v1/tokens');
      const items = (r.json() as { items: Record<string, unknown>[] }).items;
      expect(items.length).toBeGreaterThan(4);
      for (const t of items)
        expect(Object.keys(t).sort()).toEqual(['createdAtMs', 'createdBy', 'id', 'name', 'revoked', 'role']);
    });
  });

  describe('bad input: typed problems, nothing stored', () => {
    const countDevices = async (): Promise<number> =>
      (await f.t.db.query<{ n: number }>('SELECT count(*)::int AS n FROM devices'))[0]!.n;

    it('unknown fields, wrong types, malformed JSON, wrong media type, oversized bodies', async () => {
      const before = await countDevices();
      const cert = randomBytes(32).toString('hex');
      let p = problem(await tokens.admin.post('/v1/devices', { name: 'x', certSha256: cert, admin: true }));
      expect(p).toMatchObject({ status: 400, code: 'REQUEST_UNKNOWN_FIELD' });
      p = problem(await tokens.admin.post('/v1/devices', { name: 5, certSha256: cert }));
      expect(p).toMatchObject({ status: 400, code: 'REQUEST_INVALID' });
      p = problem(await tokens.admin.post('/v1/devices', { name: 'x', certSha256: 'zz' }));
      expect(p.code).toBe('REQUEST_INVALID');
      p = problem(await tokens.admin.post('/v1/devices', '{"name": "x", '));
      expect(p).toMatchObject({ status: 400, code: 'REQUEST_BODY_MALFORMED' });
      p = problem(await tokens.admin.post('/v1/devices', new Uint8Array([1, 2]), 'application/octet-stream'));
      expect(p).toMatchObject({ status: 415, code: 'MEDIA_TYPE_UNSUPPORTED' });
      p = problem(
        await tokens.admin.post('/v1/devices', { name: 'x'.repeat(2 * 1024 * 1024), certSha256: cert }),
      );
      expect(p).toMatchObject({ status: 413, code: 'PAYLOAD_TOO_LARGE' });
      p = problem(await tokens.admin.get('/v1/devices?limit=5&evil=1'));
      expect(p.code).toBe('REQUEST_UNKNOWN_FIELD');
      p = problem(await tokens.admin.get('/v1/devices?limit=0'));
      expect(p.code).toBe('REQUEST_INVALID');
      p = problem(
        await tokens.admin.post('/v1/devices', {
          name: 'x',
          certificatePem: `-----BEGIN CERTIFICATE-----\n${'A'.repeat(80)}\n-----END CERTIFICATE-----`,
        }),
      );
      expect(p.code).toBe('REQUEST_INVALID');
      expect(await countDevices()).toBe(before);
    });

    it('an oversized payload upload, a digest mismatch and a wrong media type store nothing', async () => {
      const blobs = async (): Promise<number> =>
        (await f.t.db.query<{ n: number }>('SELECT count(*)::int AS n FROM blobs'))[0]!.n;
      const before = await blobs();
      const big = randomBytes(1024 * 1024 + 1);
      expect(problem(await tokens.author.put(`/v1/payloads/${sha256hex(big)}`, big))).toMatchObject({
        status: 413,
        code: 'PAYLOAD_TOO_LARGE',
      });
      const b = randomBytes(100);
      expect(problem(await tokens.author.put(`/v1/payloads/${sha256hex(randomBytes(1))}`, b))).toMatchObject({
        status: 422,
        code: 'PAYLOAD_DIGEST_MISMATCH',
      });
      expect(problem(await tokens.author.put(`/v1/payloads/${sha256hex(b)}`, b, 'text/plain')).code).toBe(
        'MEDIA_TYPE_UNSUPPORTED',
      );
      expect(await blobs()).toBe(before);
    });
  });

  describe('releases and payloads', () => {
    const image = randomBytes(200_000);
    let releaseId: string;

    it('refuses an envelope whose payload was not uploaded, then accepts it once it was (stored content-addressed)', async () => {
      const env = await signedRelease(author.privateKey, image, 1);
      const count = async (): Promise<number> =>
        (await f.t.db.query<{ n: number }>('SELECT count(*)::int AS n FROM releases'))[0]!.n;
      const before = await count();
      const p = problem(await tokens.author.post('/v1/releases', env, 'application/suit-envelope+cose'));
      expect(p).toMatchObject({ status: 422, code: 'PAYLOAD_MISSING' });
      expect(await count()).toBe(before);

      const up = await tokens.author.put(`/v1/payloads/${sha256hex(image)}`, image);
      expect(up.status).toBe(201);
      expect((await tokens.author.put(`/v1/payloads/${sha256hex(image)}`, image)).json()).toMatchObject({
        created: false,
      });
      const r = await tokens.author.post('/v1/releases', env, 'application/suit-envelope+cose');
      expect(r.status).toBe(201);
      const rel = r.json() as {
        id: string;
        sequenceNumber: string;
        payloads: string[];
        envelopeSha256: string;
        status: string;
      };
      expect(rel).toMatchObject({
        sequenceNumber: '1',
        payloads: [sha256hex(image)],
        envelopeSha256: sha256hex(env),
        status: 'uploaded',
      });
      releaseId = rel.id;
      expect(
        problem(await tokens.author.post('/v1/releases', env, 'application/suit-envelope+cose')).code,
      ).toBe('ALREADY_EXISTS');
      const back = await tokens.operator.get(`/v1/releases/${releaseId}/envelope`);
      expect(back.headers['content-type']).toBe('application/suit-envelope+cose');
      expect(Buffer.compare(back.body, Buffer.from(env))).toBe(0);
    });

    it('stores integrated payloads from the envelope in the same transaction', async () => {
      const img = randomBytes(5000);
      const env = await signedRelease(author.privateKey, img, 2, { integrated: true });
      const r = await tokens.author.post('/v1/releases', env, 'application/suit-envelope+cose');
      expect(r.status).toBe(201);
      expect((r.json() as { payloads: string[] }).payloads).toEqual([sha256hex(img)]);
    });

    it('bad signature, unknown signer, malformed and oversized envelopes: typed problems, nothing stored', async () => {
      const count = async (): Promise<number> =>
        (await f.t.db.query<{ n: number }>('SELECT count(*)::int AS n FROM releases'))[0]!.n;
      const before = await count();
      const env = await signedRelease(author.privateKey, image, 3);
      const tampered = new Uint8Array(env);
      // The signature is the last 64 bytes of the authentication wrapper, which precedes the manifest: flip a byte
      // inside it by locating the (unique) signature bytes of the Sign1.
      const sig = decodeEnvelope(env).authBlocks[0]!.slice(-64); // the ES256 signature ends the COSE_Sign1
      const sigAt = Buffer.from(env).indexOf(Buffer.from(sig));
      tampered[sigAt + 10] = tampered[sigAt + 10]! ^ 0xff;
      let p = problem(await tokens.author.post('/v1/releases', tampered, 'application/suit-envelope+cose'));
      expect(p.status).toBe(422);
      expect(p.code).toBe('SUIT_AUTH_FAILED');
      const stranger = authorKeyPair();
      p = problem(
        await tokens.author.post(
          '/v1/releases',
          await signedRelease(stranger.privateKey, image, 4),
          'application/suit-envelope+cose',
        ),
      );
      expect(p.code).toBe('SUIT_AUTH_FAILED');
      p = problem(
        await tokens.author.post(
          '/v1/releases',
          new Uint8Array([0xd8, 0x6b, 0xa1]),
          'application/suit-envelope+cose',
        ),
      );
      expect(p.status).toBe(400);
      expect(p.code).toMatch(/^(CBOR|SUIT)_/);
      p = problem(await tokens.author.post('/v1/releases', env, 'application/json'));
      expect(p).toMatchObject({ status: 415, code: 'MEDIA_TYPE_UNSUPPORTED' });
      p = problem(
        await tokens.author.post(
          '/v1/releases',
          randomBytes(1024 * 1024 + 1),
          'application/suit-envelope+cose',
        ),
      );
      expect(p.code).toBe('PAYLOAD_TOO_LARGE');
      expect(await count()).toBe(before);
    });

    it('a revoked author key no longer authenticates releases', async () => {
      const k = authorKeyPair();
      const created = (
        await tokens.admin.post('/v1/author-keys', {
          name: 'soon revoked',
          alg: 'ES256',
          publicKeyPem: k.publicKeyPem,
        })
      ).json() as { id: string };
      const img = randomBytes(64);
      await tokens.author.put(`/v1/payloads/${sha256hex(img)}`, img);
      expect(
        (
          await tokens.author.post(
            '/v1/releases',
            await signedRelease(k.privateKey, img, 5),
            'application/suit-envelope+cose',
          )
        ).status,
      ).toBe(201);
      expect((await tokens.admin.delete(`/v1/author-keys/${created.id}`)).status).toBe(200);
      const p = problem(
        await tokens.author.post(
          '/v1/releases',
          await signedRelease(k.privateKey, img, 6),
          'application/suit-envelope+cose',
        ),
      );
      expect(p.code).toBe('SUIT_AUTH_FAILED');
    });

    it('an author key of the wrong type for its algorithm is refused', async () => {
      const p = problem(
        await tokens.admin.post('/v1/author-keys', {
          name: 'ed',
          alg: 'EdDSA',
          publicKeyPem: authorKeyPair().publicKeyPem,
        }),
      );
      expect(p).toMatchObject({ status: 422, code: 'AUTHOR_KEY_INVALID' });
    });

    it('serves payloads with a strong ETag, Range (resume), If-None-Match and long-lived cache headers', async () => {
      const h = sha256hex(image);
      const full = await tokens.operator.get(`/v1/payloads/${h}`);
      expect(full.status).toBe(200);
      expect(Buffer.compare(full.body, Buffer.from(image))).toBe(0);
      expect(full.headers).toMatchObject({
        etag: `"${h}"`,
        'cache-control': 'public, max-age=31536000, immutable',
        'accept-ranges': 'bytes',
      });
      // Range requests go through the device listener below; here the operator listener serves them the same way.
      const c = operatorClient(f.server.operatorUrl, undefined);
      expect((await c.get(`/v1/payloads/${h}`)).status).toBe(401);
    });
  });

  describe('devices over mutual TLS', () => {
    let certA: TestCert;
    let certB: TestCert;
    let idA: string;
    let idB: string;

    beforeAll(async () => {
      certA = await selfSignedCert('device-a');
      certB = await selfSignedCert('device-b');
      const a = await tokens.admin.post('/v1/devices', {
        name: 'device-a',
        certificatePem: certA.certPem,
        group: 'lab',
        tags: ['canary'],
      });
      expect(a.status).toBe(201);
      idA = (a.json() as { id: string }).id;
      const b = await tokens.admin.post('/v1/devices', { name: 'device-b', certificatePem: certB.certPem });
      idB = (b.json() as { id: string }).id;
    });

    it('a device is identified by its certificate and sees its own record', async () => {
      const d = deviceClient(f.server.deviceUrl!, f.serverCert, certA);
      try {
        const r = await d.get('/d/v1/self');
        expect(r.status).toBe(200);
        expect(r.json()).toMatchObject({ id: idA, name: 'device-a', group: 'lab', tags: ['canary'] });
        expect((await d.get(`/d/v1/devices/${idA}`)).status).toBe(200);
      } finally {
        d.close();
      }
    });

    it("device A asking for device B's data is refused", async () => {
      const d = deviceClient(f.server.deviceUrl!, f.serverCert, certA);
      try {
        const r = await d.get(`/d/v1/devices/${idB}`);
        expect(r.status).toBe(403);
        expect(problem(r).code).toBe('DEVICE_FORBIDDEN');
      } finally {
        d.close();
      }
    });

    it('no certificate, an unregistered certificate, and operator routes on the device listener are refused', async () => {
      const none = deviceClient(f.server.deviceUrl!, f.serverCert, undefined);
      const stranger = deviceClient(f.server.deviceUrl!, f.serverCert, await selfSignedCert('stranger'));
      const a = deviceClient(f.server.deviceUrl!, f.serverCert, certA);
      try {
        expect(problem(await none.get('/d/v1/self')).code).toBe('DEVICE_CERT_REQUIRED');
        expect(problem(await stranger.get('/d/v1/self')).code).toBe('DEVICE_UNKNOWN');
        expect((await a.get('/v1/devices')).status).toBe(404);
      } finally {
        none.close();
        stranger.close();
        a.close();
      }
    });

    it('downloads a payload with Range and resumes; unsatisfiable ranges are 416', async () => {
      const img = randomBytes(3 * 1024 * 1024 + 17);
      const small = await f.t.db.query<{ n: number }>('SELECT count(*)::int AS n FROM blobs');
      expect(small[0]!.n).toBeGreaterThan(0);
      // upload beyond the 1 MiB request limit is refused, so store this one through the service (author principal)
      const authorP = { kind: 'operator' as const, tokenId: 'test', name: 'test', role: 'author' as const };
      await f.server.services.payloads.upload(authorP, sha256hex(img), img);
      const k = authorKeyPair();
      await f.server.services.authorKeys.create(
        { kind: 'system' },
        { name: 'range author', alg: 'ES256', publicKeyPem: k.publicKeyPem },
      );
      const rel = await f.server.services.releases.upload(authorP, await signedRelease(k.privateKey, img, 9));
      const operatorP = {
        kind: 'operator' as const,
        tokenId: 'test',
        name: 'test',
        role: 'operator' as const,
      };
      await f.server.services.rollouts.approve(operatorP, rel.id);
      // Devices are served the ciphertext only (RFC 9019 §3), never the plaintext payload.
      const ct = (
        await f.t.db.query<{ h: string }>(
          "SELECT encode(ciphertext_sha256, 'hex') AS h FROM release_ciphertexts WHERE release_id = $1",
          [rel.id],
        )
      )[0]!.h;

      const d = deviceClient(f.server.deviceUrl!, f.serverCert, certA);
      try {
        expect(problem(await d.get(`/d/v1/payloads/${sha256hex(img)}`)).code).toBe('NOT_FOUND');
        const h = ct;
        const head = await d.get(`/d/v1/payloads/${h}`, { range: 'bytes=0-999999' });
        expect(head.status).toBe(206);
        expect(head.headers['content-range']).toBe(`bytes 0-999999/${img.length}`);
        expect(head.body.length).toBe(1_000_000);
        const rest = await d.get(`/d/v1/payloads/${h}`, { range: 'bytes=1000000-', 'if-range': `"${h}"` });
        expect(rest.status).toBe(206);
        const whole = Buffer.concat([head.body, rest.body]);
        expect(sha256hex(whole)).toBe(h);
        expect(whole.length).toBe(img.length); // AES-CTR: ciphertext as long as the image
        const suffix = await d.get(`/d/v1/payloads/${h}`, { range: 'bytes=-17' });
        expect(Buffer.compare(suffix.body, whole.subarray(whole.length - 17))).toBe(0);
        const stale = await d.get(`/d/v1/payloads/${h}`, { range: 'bytes=0-9', 'if-range': '"other"' });
        expect(stale.status).toBe(200);
        expect(stale.body.length).toBe(img.length);
        const bad = await d.get(`/d/v1/payloads/${h}`, { range: `bytes=${img.length}-` });
        expect(bad.status).toBe(416);
        expect(bad.headers['content-range']).toBe(`bytes */${img.length}`);
        expect(problem(bad).code).toBe('RANGE_NOT_SATISFIABLE');
        const cached = await d.get(`/d/v1/payloads/${h}`, { 'if-none-match': `"${h}"` });
        expect(cached.status).toBe(304);
        expect(problem(await d.get(`/d/v1/payloads/${'ab'.repeat(32)}`)).code).toBe('NOT_FOUND');
      } finally {
        d.close();
      }
    });

    it('a disabled device is refused on its next request, even on a kept-alive connection', async () => {
      const d = deviceClient(f.server.deviceUrl!, f.serverCert, certB);
      try {
        expect((await d.get('/d/v1/self')).status).toBe(200);
        expect((await tokens.admin.patch(`/v1/devices/${idB}`, { enabled: false })).json()).toMatchObject({
          enabled: false,
        });
        const r = await d.get('/d/v1/self');
        expect(r.status).toBe(403);
        expect(problem(r).code).toBe('DEVICE_DISABLED');
        await tokens.admin.patch(`/v1/devices/${idB}`, { enabled: true });
        expect((await d.get('/d/v1/self')).status).toBe(200);
      } finally {
        d.close();
      }
    });

    it('device listing filters by group and tag', async () => {
      const r = await tokens.operator.get('/v1/devices?group=lab&tag=canary');
      expect((r.json() as { items: { id: string }[] }).items.map((d) => d.id)).toEqual([idA]);
    });
  });

  describe('audit', () => {
    it('records every change, verifies, and is readable by auditors only', async () => {
      const v = await tokens.auditor.get('/v1/audit/verify');
      expect(v.json()).toMatchObject({ ok: true });
      const items = (
        (await tokens.auditor.get('/v1/audit?limit=1000')).json() as { items: { body: string }[] }
      ).items;
      const actions = new Set(items.map((e) => (JSON.parse(e.body) as { action: string }).action));
      for (const a of [
        'token.bootstrap',
        'token.create',
        'token.revoke',
        'device.create',
        'device.update',
        'authorKey.create',
        'authorKey.revoke',
        'payload.upload',
        'release.upload',
      ]) {
        expect(actions).toContain(a);
      }
      const { head } = v.json() as { head: { seq: number; hash: string } };
      expect(
        (await tokens.auditor.get(`/v1/audit/verify?anchorSeq=${head.seq}&anchorHash=${head.hash}`)).json(),
      ).toMatchObject({ ok: true });
      expect(problem(await tokens.auditor.get(`/v1/audit/verify?anchorSeq=1`)).code).toBe('REQUEST_INVALID');
    });
  });
});

describe('first run without ROTOR_ADMIN_TOKEN', () => {
  it('generates the bootstrap admin token once into the data directory with mode 0600', async () => {
    const f = await startFixture('pglite', { env: { ROTOR_ADMIN_TOKEN: '' } });
    try {
      const file = f.server.bootstrapTokenFile!;
      expect(file).toBeDefined();
      expect(statSync(file).mode & 0o777).toBe(0o600);
      const token = readFileSync(file, 'utf8').trim();
      const c = operatorClient(f.server.operatorUrl, token);
      expect((await c.get('/v1/tokens')).status).toBe(200);
      // a second bootstrap on the same database generates nothing
      expect(await f.server.services.tokens.bootstrap(undefined, f.dataDir)).toBeUndefined();
    } finally {
      await f.close();
    }
  });
});

/**
 * Attestation and RoT routes: device API (mutual TLS) under /d/v1/attestation, operator API under /v1. Binary
 * bodies (evidence tokens, RoT chains as CBOR) are application/octet-stream; answers are JSON.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { asArray, asBytes, asMap, decode } from '@rotor/cose';
import type { Principal } from '../auth.ts';
import { ServerError } from '../errors.ts';
import { OCTET_STREAM } from '../http.ts';
import { MAX_NONCES_PER_REQUEST, type AttestationService } from './service.ts';

function principal(req: FastifyRequest): Principal {
  if (req.principal === undefined) throw new ServerError('AUTH_REQUIRED', 'authentication required');
  return req.principal;
}

const MAX_EVIDENCE = 16 * 1024;
const MAX_CHAIN_BODY = 4096 * 2048;

const idParam = {
  type: 'object',
  properties: { id: { type: 'string', minLength: 1, maxLength: 128 } },
  required: ['id'],
  additionalProperties: false,
} as const;
const appraisal = {
  type: 'object',
  additionalProperties: {
    type: 'object',
    properties: { status: { type: 'string' }, reason: { type: 'string' } },
    required: ['status', 'reason'],
  },
} as const;
const resultSchema = {
  type: 'object',
  properties: {
    id: { type: 'integer' },
    status: { type: 'string', enum: ['affirming', 'warning', 'contraindicated'] },
    claims: appraisal,
    result: { type: 'string' },
    createdAtMs: { type: 'integer' },
  },
  required: ['id', 'status', 'claims', 'result', 'createdAtMs'],
} as const;
const requested = {
  type: 'object',
  properties: { requested: { type: 'boolean' } },
  required: ['requested'],
} as const;
const digestBody = {
  type: 'object',
  properties: {
    sha256: { type: 'string', pattern: '^[0-9a-f]{64}$' },
    label: { type: 'string', minLength: 1, maxLength: 200 },
  },
  required: ['sha256', 'label'],
  additionalProperties: false,
} as const;

/** CBOR body { "ueid": bstr, "records": [+ bstr] } (the enclave's GetRoT pages, concatenated). */
function parseChainBody(body: Buffer): { ueid: Uint8Array; records: Uint8Array[] } {
  try {
    const m = asMap(decode(new Uint8Array(body), { maxSize: MAX_CHAIN_BODY, maxDepth: 3 }), 'chain');
    if (m.size !== 2) throw new ServerError('REQUEST_INVALID', 'chain body has exactly ueid and records');
    return {
      ueid: asBytes(m.get('ueid'), 'ueid', { min: 7, max: 33 }),
      records: asArray(m.get('records'), 'records', { min: 1, max: 4096 }).map((r, i) =>
        asBytes(r, `records[${i}]`, { max: 2048 }),
      ),
    };
  } catch (e) {
    if (e instanceof ServerError) throw e;
    throw new ServerError('REQUEST_BODY_MALFORMED', 'chain body is not the expected CBOR map', { cause: e });
  }
}

export function registerAttestationRoutes(
  op: FastifyInstance,
  dev: FastifyInstance | undefined,
  a: AttestationService,
): void {
  // --- operator
  op.get(
    '/v1/attestation/verifier-key',
    {
      config: { summary: 'Public key (SPKI PEM) that signs attestation results' },
      schema: {
        response: {
          200: {
            type: 'object',
            properties: { publicKeyPem: { type: 'string' }, kid: { type: 'string' } },
            required: ['publicKeyPem', 'kid'],
          },
        },
      },
    },
    () => ({ publicKeyPem: a.resultPublicKeyPem(), kid: Buffer.from(a.resultKid() ?? []).toString('hex') }),
  );
  op.post<{ Params: { id: string } }>(
    '/v1/devices/:id/attestation',
    {
      config: { summary: 'Ask a device to attest at its next contact' },
      schema: { params: idParam, response: { 200: requested } },
    },
    async (req) => a.requestAttestation(principal(req), req.params.id),
  );
  op.get<{ Params: { id: string }; Querystring: { limit?: number } }>(
    '/v1/devices/:id/attestation/results',
    {
      config: { summary: "A device's attestation results, newest first (signed by the verifier)" },
      schema: {
        params: idParam,
        querystring: {
          type: 'object',
          properties: { limit: { type: 'integer', minimum: 1, maximum: 1000, default: 20 } },
          additionalProperties: false,
        },
        response: {
          200: {
            type: 'object',
            properties: { items: { type: 'array', items: resultSchema } },
            required: ['items'],
          },
        },
      },
    },
    async (req) => ({ items: await a.results(principal(req), req.params.id, req.query.limit ?? 20) }),
  );
  op.post<{ Params: { id: string } }>(
    '/v1/devices/:id/rot/rotate',
    {
      config: { summary: "Request a rotation of the device's root of trust (seed 001 DRoT)" },
      schema: { params: idParam, response: { 200: requested } },
    },
    async (req) => a.requestRotation(principal(req), req.params.id),
  );
  op.get<{ Params: { id: string } }>(
    '/v1/devices/:id/rot',
    {
      config: { summary: "The device's recorded RoT: current key, pending rotation, revoked keys" },
      schema: {
        params: idParam,
        response: {
          200: {
            type: 'object',
            properties: {
              index: { type: 'integer' },
              kid: { type: 'string' },
              rotateRequested: { type: 'boolean' },
              revokedKids: { type: 'array', items: { type: 'string' } },
            },
            required: ['index', 'kid', 'rotateRequested', 'revokedKids'],
          },
        },
      },
    },
    async (req) => a.rotStatus(principal(req), req.params.id),
  );
  for (const [path, table] of [
    ['/v1/attestation/reference-values', 'reference'],
    ['/v1/attestation/revoked-digests', 'revoked'],
  ] as const) {
    op.post<{ Body: { sha256: string; label: string } }>(
      path,
      {
        config: { summary: table === 'reference' ? 'Add a reference digest' : 'Revoke a component digest' },
        schema: {
          body: digestBody,
          response: {
            200: { type: 'object', properties: { sha256: { type: 'string' } }, required: ['sha256'] },
          },
        },
      },
      async (req) => a.addDigest(principal(req), table, req.body),
    );
  }

  if (dev === undefined) return;
  // --- device
  dev.get(
    '/d/v1/attestation/pending',
    {
      config: { auth: 'device', summary: 'What the verifier asks of this device (attest, rotate its RoT)' },
      schema: {
        response: {
          200: {
            type: 'object',
            properties: {
              attest: { type: 'boolean' },
              rotate: { type: 'boolean' },
              enrolled: { type: 'boolean' },
            },
            required: ['attest', 'rotate', 'enrolled'],
          },
        },
      },
    },
    async (req) => a.pending(principal(req)),
  );
  // PUT (idempotent: the device reports the chain its enclave holds) and POST (the same, for constrained HTTP
  // clients that only speak GET and POST, e.g. the device's tracker client).
  for (const method of ['PUT', 'POST'] as const)
    dev.route<{ Body: Buffer }>({
      method,
      url: '/d/v1/attestation/rot',
      bodyLimit: MAX_CHAIN_BODY,
      config: { auth: 'device', accepts: [OCTET_STREAM], summary: "Report the enclave's RoT chain (CBOR)" },
      schema: {
        response: {
          200: {
            type: 'object',
            properties: { index: { type: 'integer' }, kid: { type: 'string' }, revoked: { type: 'integer' } },
            required: ['index', 'kid', 'revoked'],
          },
        },
      },
      handler: async (req) => a.reportChain(principal(req), parseChainBody(req.body)),
    });
  dev.post(
    '/d/v1/attestation/nonce',
    {
      config: { auth: 'device', summary: 'A fresh single-use nonce (RFC 9711 eat_nonce)' },
      schema: {
        response: {
          200: {
            type: 'object',
            properties: { nonce: { type: 'string' }, expiresAtMs: { type: 'integer' } },
            required: ['nonce', 'expiresAtMs'],
          },
        },
      },
    },
    async (req) => {
      const n = await a.issueNonce(principal(req));
      return { nonce: Buffer.from(n.nonce).toString('base64'), expiresAtMs: n.expiresAtMs };
    },
  );
  dev.post<{ Querystring: { count: number } }>(
    '/d/v1/attestation/nonces',
    {
      config: {
        auth: 'device',
        summary:
          'Several fresh single-use nonces at once (each as /nonce gives: own MAC, same short lifetime)',
      },
      schema: {
        querystring: {
          type: 'object',
          additionalProperties: false,
          required: ['count'],
          properties: { count: { type: 'integer', minimum: 1, maximum: MAX_NONCES_PER_REQUEST } },
        },
        response: {
          200: {
            type: 'object',
            properties: {
              nonces: { type: 'array', items: { type: 'string' } },
              expiresAtMs: { type: 'integer' },
            },
            required: ['nonces', 'expiresAtMs'],
          },
        },
      },
    },
    async (req) => {
      const n = await a.issueNonces(principal(req), req.query.count);
      return { nonces: n.nonces.map((x) => Buffer.from(x).toString('base64')), expiresAtMs: n.expiresAtMs };
    },
  );
  dev.post<{ Body: Buffer }>(
    '/d/v1/attestation/evidence',
    {
      bodyLimit: MAX_EVIDENCE,
      config: {
        auth: 'device',
        // The appraisal's batch statement checks the device's standing itself (service.ts), so the cached
        // authentication is used without the cross-instance sync round trip (device-auth.ts).
        deviceStanding: 'handler',
        accepts: [OCTET_STREAM],
        summary: 'Post EAT evidence; answers the signed result',
      },
      schema: { response: { 200: resultSchema } },
    },
    async (req) => {
      const r = await a.appraise(principal(req), new Uint8Array(req.body));
      return {
        id: r.id,
        status: r.status,
        claims: r.claims,
        result: Buffer.from(r.result).toString('base64'),
        createdAtMs: r.createdAtMs,
      };
    },
  );
}

/**
 * Capability-module routes (issue 8). Operator API under /v1/capabilities (bearer tokens; the service authorizes
 * against PERMISSIONS), device API under /d/v1/capabilities on the mutual-TLS listener (identity from the client
 * certificate: seed 000 §1 "Encrypted Tunnel", step 4 "transmits it to the device via the encrypted tunnel").
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { CAPABILITY_MANIFEST_CONTENT_TYPE, REVOCATION_CONTENT_TYPE } from '@rotor/trust';
import type { Principal } from '../auth.ts';
import { ServerError } from '../errors.ts';
import { OCTET_STREAM, SUIT_REPORT_TYPE, SUIT_SIGNED_REPORT_TYPE } from '../http.ts';
import { idParam, pageQuery, sha256Param } from '../schemas.ts';
import {
  MAX_MODULE_OFFERS,
  MAX_MODULE_REPORT_BYTES,
  MAX_MODULE_UPLOAD_BYTES,
  MODULE_DEVICE_STATES,
  type ModulePhase,
  type ModuleRolloutTarget,
  type CapabilityService,
  type ManifestIssueInput,
  type QueryInput,
} from './service.ts';

function principal(req: FastifyRequest): Principal {
  if (req.principal === undefined) throw new ServerError('AUTH_REQUIRED', 'authentication required');
  return req.principal;
}

const capName = { type: 'string', minLength: 1, maxLength: 64, pattern: '^[a-z][a-z0-9_.-]{0,63}$' } as const;
const versionText = {
  type: 'string',
  maxLength: 32,
  pattern: '^[0-9]{1,10}\\.[0-9]{1,10}\\.[0-9]{1,10}$',
} as const;
const nullableText = { type: ['string', 'null'] } as const;

const moduleInfo = {
  type: 'object',
  additionalProperties: false,
  required: [
    'id',
    'name',
    'version',
    'sequenceNumber',
    'moduleSha256',
    'moduleSize',
    'ciphertextSha256',
    'deviceClasses',
    'firmware',
    'dependencies',
    'imports',
    'revoked',
    'revokeReason',
    'uploadedBy',
    'createdAtMs',
  ],
  properties: {
    id: { type: 'string' },
    name: { type: 'string' },
    version: { type: 'string' },
    sequenceNumber: { type: 'integer' },
    moduleSha256: { type: 'string' },
    moduleSize: { type: 'integer' },
    ciphertextSha256: { type: 'string' },
    deviceClasses: { type: 'array', items: { type: 'string' } },
    firmware: {
      type: 'object',
      additionalProperties: false,
      required: ['min', 'max'],
      properties: { min: { type: 'string' }, max: nullableText },
    },
    dependencies: {
      type: 'array',
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['name', 'min', 'max'],
        properties: { name: { type: 'string' }, min: { type: 'string' }, max: nullableText },
      },
    },
    imports: { type: 'array', items: { type: 'string' } },
    revoked: { type: 'boolean' },
    revokeReason: nullableText,
    uploadedBy: { type: 'string' },
    createdAtMs: { type: 'integer' },
    revocationListVersion: { type: 'integer' },
  },
} as const;

const listQuery = {
  type: 'object',
  additionalProperties: false,
  properties: {
    name: capName,
    ...pageQuery.properties,
  },
} as const;

const manifestBody = {
  type: 'object',
  additionalProperties: false,
  required: ['group', 'modules'],
  properties: {
    group: {
      anyOf: [
        { type: 'string', minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9._:-]+$' },
        { type: 'null' },
      ],
    },
    modules: {
      type: 'array',
      maxItems: 1024,
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['name'],
        properties: {
          name: capName,
          minVersion: versionText,
          maxVersion: versionText,
          digests: {
            type: 'array',
            minItems: 1,
            maxItems: 64,
            items: { type: 'string', pattern: '^[0-9a-fA-F]{64}$' },
          },
        },
      },
    },
  },
} as const;

const installedList = {
  type: 'array',
  maxItems: 256,
  items: {
    type: 'object',
    additionalProperties: false,
    required: ['name', 'version'],
    properties: { name: capName, version: versionText },
  },
} as const;

const queryBody = {
  type: 'object',
  additionalProperties: false,
  required: ['capability'],
  properties: {
    capability: capName,
    moduleId: { type: 'string', minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9_-]+$' },
    firmwareVersion: versionText,
    deviceClass: { type: 'string', minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9._:-]+$' },
    installed: installedList,
  },
} as const;

const offersBody = {
  type: 'object',
  additionalProperties: false,
  properties: { installed: installedList },
} as const;

const offersAnswer = {
  type: 'object',
  additionalProperties: false,
  required: ['offers', 'more'],
  properties: {
    offers: {
      type: 'array',
      maxItems: MAX_MODULE_OFFERS,
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['rolloutId', 'moduleId', 'name', 'version'],
        properties: {
          rolloutId: { type: 'string' },
          moduleId: { type: 'string' },
          name: { type: 'string' },
          version: { type: 'string' },
        },
      },
    },
    more: { type: 'boolean' },
  },
} as const;

const queryAnswer = {
  type: 'object',
  additionalProperties: false,
  required: [
    'moduleId',
    'name',
    'version',
    'sequenceNumber',
    'moduleSha256',
    'envelope',
    'payloadUrl',
    'requires',
  ],
  properties: {
    moduleId: { type: 'string' },
    name: { type: 'string' },
    version: { type: 'string' },
    sequenceNumber: { type: 'integer' },
    moduleSha256: { type: 'string' },
    envelope: { type: 'string', contentEncoding: 'base64' },
    payloadUrl: { type: 'string' },
    requires: {
      type: 'array',
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['name', 'version'],
        properties: { name: { type: 'string' }, version: { type: 'string' } },
      },
    },
  },
} as const;

const keyInfo = {
  type: 'object',
  additionalProperties: false,
  required: ['kid', 'alg', 'spki'],
  properties: {
    kid: { type: 'string' },
    alg: { type: 'integer' },
    spki: { type: 'string', contentEncoding: 'base64' },
  },
} as const;

export function registerCapabilityRoutes(
  op: FastifyInstance,
  dev: FastifyInstance | undefined,
  s: CapabilityService,
): void {
  op.post<{ Body: Buffer }>(
    '/v1/capabilities/modules',
    {
      bodyLimit: MAX_MODULE_UPLOAD_BYTES,
      config: {
        accepts: [OCTET_STREAM],
        summary: 'Upload a capability module: CBOR [metadata (capability-metadata encoding), wasm] (author)',
      },
      schema: { response: { 201: moduleInfo } },
    },
    async (req, reply) => reply.code(201).send(await s.upload(principal(req), new Uint8Array(req.body))),
  );
  op.get<{ Querystring: { name?: string; limit: number; after?: string } }>(
    '/v1/capabilities/modules',
    {
      config: { summary: 'List capability modules' },
      schema: {
        querystring: listQuery,
        response: {
          200: {
            type: 'object',
            additionalProperties: false,
            required: ['items'],
            properties: { items: { type: 'array', items: moduleInfo } },
          },
        },
      },
    },
    async (req) => ({ items: await s.list(principal(req), req.query) }),
  );
  op.get<{ Params: { id: string } }>(
    '/v1/capabilities/modules/:id',
    {
      config: { summary: 'A capability module' },
      schema: { params: idParam, response: { 200: moduleInfo } },
    },
    async (req) => s.get(principal(req), req.params.id),
  );
  op.post<{ Params: { id: string }; Body: { reason: string } }>(
    '/v1/capabilities/modules/:id/revoke',
    {
      config: { summary: 'Revoke a module and publish a new signed module revocation list (audited)' },
      schema: {
        params: idParam,
        body: {
          type: 'object',
          additionalProperties: false,
          required: ['reason'],
          properties: {
            reason: { type: 'string', minLength: 1, maxLength: 256, pattern: '^[^\\u0000-\\u001f]+$' },
          },
        },
        response: { 200: moduleInfo },
      },
    },
    async (req) => s.revoke(principal(req), req.params.id, req.body.reason),
  );
  op.post<{ Body: ManifestIssueInput }>(
    '/v1/capabilities/manifests',
    {
      config: { summary: 'Issue a signed capability manifest for a device group (null: the default)' },
      schema: {
        body: manifestBody,
        response: {
          201: {
            type: 'object',
            additionalProperties: false,
            required: ['version', 'group'],
            properties: { version: { type: 'integer' }, group: nullableText },
          },
        },
      },
    },
    async (req, reply) => reply.code(201).send(await s.issueManifest(principal(req), req.body)),
  );
  op.get(
    '/v1/capabilities/manifests',
    {
      config: { summary: 'Issued capability manifests, newest first' },
      schema: {
        response: {
          200: {
            type: 'object',
            additionalProperties: false,
            required: ['items'],
            properties: {
              items: {
                type: 'array',
                items: {
                  type: 'object',
                  additionalProperties: false,
                  required: ['version', 'group', 'issuedBy', 'createdAtMs', 'sha256'],
                  properties: {
                    version: { type: 'integer' },
                    group: nullableText,
                    issuedBy: { type: 'string' },
                    createdAtMs: { type: 'integer' },
                    sha256: { type: 'string' },
                  },
                },
              },
            },
          },
        },
      },
    },
    async (req) => ({ items: await s.listManifests(principal(req)) }),
  );
  op.get(
    '/v1/capabilities/keys',
    {
      config: {
        summary: 'Public capability-signing and capability-authority keys (for device provisioning)',
      },
      schema: {
        response: {
          200: {
            type: 'object',
            additionalProperties: false,
            required: ['signing', 'authority'],
            properties: { signing: keyInfo, authority: keyInfo },
          },
        },
      },
    },
    (req, reply) => reply.send(s.publicKeys(principal(req))),
  );

  const label = { type: 'string', minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9._:-]+$' } as const;
  const phaseCounts = {
    type: 'object',
    additionalProperties: false,
    required: ['total', ...MODULE_DEVICE_STATES],
    properties: Object.fromEntries(['total', ...MODULE_DEVICE_STATES].map((k) => [k, { type: 'integer' }])),
  } as const;
  const rolloutInfo = {
    type: 'object',
    additionalProperties: false,
    required: [
      'id',
      'moduleId',
      'target',
      'phases',
      'state',
      'startedAtMs',
      'currentPercent',
      'currentPhase',
      'phaseStartedAtMs',
      'pauseReason',
      'counts',
      'phaseCounts',
      'createdBy',
    ],
    properties: {
      id: { type: 'string' },
      moduleId: { type: 'string' },
      target: { type: 'object', additionalProperties: true },
      phases: {
        type: 'array',
        items: {
          type: 'object',
          additionalProperties: false,
          required: ['percent', 'durationMs'],
          properties: {
            percent: { type: 'integer' },
            durationMs: { type: 'integer' },
            successThreshold: { type: 'number' },
            failureThreshold: { type: 'number' },
          },
        },
      },
      state: { type: 'string' },
      startedAtMs: { type: 'integer' },
      currentPercent: { type: 'integer' },
      currentPhase: { type: 'integer' },
      phaseStartedAtMs: { type: 'integer' },
      pauseReason: nullableText,
      counts: phaseCounts,
      phaseCounts: { type: 'array', items: phaseCounts },
      createdBy: { type: 'string' },
    },
  } as const;
  op.post<{ Body: { moduleId: string; target: ModuleRolloutTarget; phases: ModulePhase[] } }>(
    '/v1/capabilities/rollouts',
    {
      config: { summary: 'Roll a module out in phases to a target (operator)' },
      schema: {
        body: {
          type: 'object',
          additionalProperties: false,
          required: ['moduleId', 'target', 'phases'],
          properties: {
            moduleId: idParam.properties.id,
            target: {
              type: 'object',
              additionalProperties: false,
              properties: {
                group: label,
                tags: { type: 'array', maxItems: 32, uniqueItems: true, items: label },
                deviceIds: {
                  type: 'array',
                  maxItems: 10_000,
                  uniqueItems: true,
                  items: idParam.properties.id,
                },
                attributes: {
                  type: 'object',
                  maxProperties: 32,
                  propertyNames: { pattern: '^[A-Za-z0-9._:-]{1,64}$' },
                  additionalProperties: { type: 'string', maxLength: 256 },
                },
              },
            },
            phases: {
              type: 'array',
              minItems: 1,
              maxItems: 16,
              items: {
                type: 'object',
                additionalProperties: false,
                required: ['percent', 'durationMs'],
                properties: {
                  percent: { type: 'integer', minimum: 1, maximum: 100 },
                  durationMs: { type: 'integer', minimum: 0, maximum: 30 * 86_400_000 },
                  successThreshold: { type: 'number', exclusiveMinimum: 0, maximum: 1 },
                  failureThreshold: { type: 'number', exclusiveMinimum: 0, maximum: 1 },
                },
              },
            },
          },
        },
        response: { 201: rolloutInfo },
      },
    },
    async (req, reply) => reply.code(201).send(await s.createRollout(principal(req), req.body)),
  );
  op.get(
    '/v1/capabilities/rollouts',
    {
      config: { summary: 'Module rollouts, newest first' },
      schema: {
        response: {
          200: {
            type: 'object',
            additionalProperties: false,
            required: ['items'],
            properties: { items: { type: 'array', items: rolloutInfo } },
          },
        },
      },
    },
    async (req) => ({ items: await s.listRollouts(principal(req)) }),
  );
  op.get<{ Params: { id: string } }>(
    '/v1/capabilities/rollouts/:id',
    {
      config: { summary: 'A module rollout with its per-phase device counts' },
      schema: { params: idParam, response: { 200: rolloutInfo } },
    },
    async (req) => s.getRollout(principal(req), req.params.id),
  );
  const transitions = {
    pause: 'Pause a module rollout: no new device is offered the module (operator)',
    resume: "Resume a paused module rollout (the current phase's time restarts) (operator)",
    cancel: 'Cancel a module rollout: the module is offered to nobody (operator)',
  } as const;
  for (const action of ['pause', 'resume', 'cancel'] as const)
    op.post<{ Params: { id: string } }>(
      `/v1/capabilities/rollouts/:id/${action}`,
      {
        config: { summary: transitions[action] },
        schema: { params: idParam, response: { 200: rolloutInfo } },
      },
      async (req) => s.transitionRollout(principal(req), req.params.id, action),
    );
  op.get<{ Params: { id: string } }>(
    '/v1/capabilities/devices/:id/modules',
    {
      config: {
        summary: 'What each capability of a device last reported (installed, failed, reverted, unloaded)',
      },
      schema: {
        params: idParam,
        response: {
          200: {
            type: 'object',
            additionalProperties: false,
            required: ['items'],
            properties: {
              items: {
                type: 'array',
                items: {
                  type: 'object',
                  additionalProperties: false,
                  required: ['name', 'moduleId', 'version', 'state', 'reason', 'updatedAtMs'],
                  properties: {
                    name: { type: 'string' },
                    moduleId: { type: 'string' },
                    version: { type: 'string' },
                    state: { type: 'string' },
                    reason: nullableText,
                    updatedAtMs: { type: 'integer' },
                  },
                },
              },
            },
          },
        },
      },
    },
    async (req) => ({ items: await s.deviceModules(principal(req), req.params.id) }),
  );

  if (dev === undefined) return;
  dev.post<{ Body: QueryInput }>(
    '/d/v1/capabilities/query',
    {
      config: {
        auth: 'device',
        summary:
          'Ask for a capability: the per-device module envelope of the newest compatible, authorized module',
      },
      schema: { body: queryBody, response: { 200: queryAnswer } },
    },
    async (req) => s.query(principal(req), req.body),
  );
  dev.post<{ Body: { installed?: { name: string; version: string }[] } }>(
    '/d/v1/capabilities/offers',
    {
      config: {
        auth: 'device',
        summary:
          'Module rollouts that offer this device a module it does not run yet (fetch each with query + moduleId)',
      },
      schema: { body: offersBody, response: { 200: offersAnswer } },
    },
    async (req) => s.offers(principal(req), req.body),
  );
  dev.post<{ Body: Buffer }>(
    '/d/v1/capabilities/reports',
    {
      bodyLimit: MAX_MODULE_REPORT_BYTES,
      config: {
        auth: 'device',
        accepts: [SUIT_REPORT_TYPE, SUIT_SIGNED_REPORT_TYPE],
        summary:
          'A module-install report (SUIT report naming the module envelope; installed, failed, reverted, unloaded)',
      },
      schema: {
        response: {
          200: {
            type: 'object',
            additionalProperties: false,
            required: ['moduleId', 'rolloutId', 'state'],
            properties: { moduleId: { type: 'string' }, rolloutId: nullableText, state: { type: 'string' } },
          },
        },
      },
    },
    async (req) =>
      s.report(principal(req), new Uint8Array(req.body), {
        signed: req.headers['content-type']?.split(';')[0]?.trim().toLowerCase() === SUIT_SIGNED_REPORT_TYPE,
      }),
  );
  dev.get(
    '/d/v1/capabilities/manifest',
    {
      config: {
        auth: 'device',
        binary: true,
        produces: CAPABILITY_MANIFEST_CONTENT_TYPE,
        summary: "The signed capability manifest of the device's group",
      },
    },
    async (req, reply) =>
      reply.type(CAPABILITY_MANIFEST_CONTENT_TYPE).send(Buffer.from(await s.deviceManifest(principal(req)))),
  );
  dev.get(
    '/d/v1/capabilities/revocations',
    {
      config: {
        auth: 'device',
        binary: true,
        produces: REVOCATION_CONTENT_TYPE,
        summary: 'The newest signed module revocation list',
      },
    },
    async (req, reply) =>
      reply.type(REVOCATION_CONTENT_TYPE).send(Buffer.from(await s.revocationList(principal(req)))),
  );
  dev.get<{ Params: { sha256: string } }>(
    '/d/v1/capabilities/payloads/:sha256',
    {
      config: { auth: 'device', binary: true, summary: 'A module ciphertext (content-addressed)' },
      schema: { params: sha256Param },
    },
    async (req, reply) =>
      reply
        .type(OCTET_STREAM)
        .header('cache-control', 'private, max-age=31536000, immutable')
        .send(Buffer.from(await s.payload(principal(req), req.params.sha256))),
  );
}

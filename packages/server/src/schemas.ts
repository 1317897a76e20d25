/** JSON Schemas of the API (requests strict: additionalProperties false everywhere; responses exact). */
import { ROLES } from './auth.ts';
import { AUTHOR_KEY_ALGS } from './services.ts';

export const idParam = {
  type: 'object',
  additionalProperties: false,
  required: ['id'],
  properties: { id: { type: 'string', minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9_-]+$' } },
} as const;

export const sha256Param = {
  type: 'object',
  additionalProperties: false,
  required: ['sha256'],
  properties: { sha256: { type: 'string', pattern: '^[0-9a-fA-F]{64}$' } },
} as const;

const name = { type: 'string', minLength: 1, maxLength: 128, pattern: '^[^\\u0000-\\u001f]+$' } as const;
const label = { type: 'string', minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9._:-]+$' } as const;
const hex64 = { type: 'string', pattern: '^[0-9a-f]{64}$' } as const;
const attributes = {
  type: 'object',
  maxProperties: 32,
  propertyNames: { pattern: '^[A-Za-z0-9._:-]{1,64}$' },
  additionalProperties: { type: 'string', maxLength: 256 },
} as const;

export const pageQuery = {
  type: 'object',
  additionalProperties: false,
  properties: {
    limit: { type: 'integer', minimum: 1, maximum: 1000, default: 100 },
    after: { type: 'string', maxLength: 64 },
  },
} as const;

const list = (item: object): object => ({
  type: 'object',
  additionalProperties: false,
  required: ['items'],
  properties: { items: { type: 'array', items: item } },
});

// --- tokens
export const tokenCreateBody = {
  type: 'object',
  additionalProperties: false,
  required: ['name', 'role'],
  properties: { name, role: { type: 'string', enum: ROLES } },
} as const;

const tokenProps = {
  id: { type: 'string' },
  name: { type: 'string' },
  role: { type: 'string', enum: ROLES },
  createdAtMs: { type: 'integer' },
  createdBy: { type: 'string' },
  revoked: { type: 'boolean' },
} as const;
export const tokenInfo = {
  type: 'object',
  additionalProperties: false,
  required: Object.keys(tokenProps),
  properties: tokenProps,
} as const;
export const tokenCreated = {
  type: 'object',
  additionalProperties: false,
  required: [...Object.keys(tokenProps), 'token'],
  properties: {
    ...tokenProps,
    token: { type: 'string', description: 'shown once; only its hash is stored' },
  },
} as const;
export const tokenList = list(tokenInfo);

// --- devices
export const deviceCreateBody = {
  type: 'object',
  additionalProperties: false,
  required: ['name'],
  properties: {
    name,
    certificatePem: { type: 'string', minLength: 64, maxLength: 16384 },
    certSha256: hex64,
    group: { anyOf: [label, { type: 'null' }] },
    tags: { type: 'array', maxItems: 32, uniqueItems: true, items: label },
    attributes,
    keyAgreementKeyPem: { anyOf: [{ type: 'string', minLength: 64, maxLength: 4096 }, { type: 'null' }] },
    kek: { anyOf: [{ type: 'string', pattern: '^[0-9a-fA-F]{32}$' }, { type: 'null' }] },
    reportKeyPem: { anyOf: [{ type: 'string', minLength: 64, maxLength: 4096 }, { type: 'null' }] },
    reportKeyAlg: { type: 'string', enum: Object.keys(AUTHOR_KEY_ALGS) },
  },
} as const;
export const deviceUpdateBody = {
  type: 'object',
  additionalProperties: false,
  minProperties: 1,
  properties: {
    enabled: { type: 'boolean' },
    group: { anyOf: [label, { type: 'null' }] },
    tags: { type: 'array', maxItems: 32, uniqueItems: true, items: label },
    attributes,
    keyAgreementKeyPem: { anyOf: [{ type: 'string', minLength: 64, maxLength: 4096 }, { type: 'null' }] },
    kek: { anyOf: [{ type: 'string', pattern: '^[0-9a-fA-F]{32}$' }, { type: 'null' }] },
    reportKeyPem: { anyOf: [{ type: 'string', minLength: 64, maxLength: 4096 }, { type: 'null' }] },
    reportKeyAlg: { type: 'string', enum: Object.keys(AUTHOR_KEY_ALGS) },
  },
} as const;
export const deviceQuery = {
  type: 'object',
  additionalProperties: false,
  properties: { ...pageQuery.properties, group: label, tag: label },
} as const;
export const deviceInfo = {
  type: 'object',
  additionalProperties: false,
  required: [
    'id',
    'name',
    'certSha256',
    'enabled',
    'group',
    'tags',
    'attributes',
    'createdAtMs',
    'lastSeenMs',
    'keyAgreement',
    'hasKek',
    'reportKeyAlg',
  ],
  properties: {
    id: { type: 'string' },
    name: { type: 'string' },
    certSha256: hex64,
    keyAgreement: { type: ['string', 'null'], enum: ['P-256', 'X25519', null] },
    hasKek: { type: 'boolean' },
    reportKeyAlg: { type: ['string', 'null'], enum: [...Object.keys(AUTHOR_KEY_ALGS), null] },
    enabled: { type: 'boolean' },
    group: { type: ['string', 'null'] },
    tags: { type: 'array', items: { type: 'string' } },
    attributes: { type: 'object', additionalProperties: { type: 'string' } },
    createdAtMs: { type: 'integer' },
    lastSeenMs: { type: ['integer', 'null'] },
  },
} as const;
export const deviceList = list(deviceInfo);

// --- author keys
export const authorKeyCreateBody = {
  type: 'object',
  additionalProperties: false,
  required: ['name', 'alg', 'publicKeyPem'],
  properties: {
    name,
    alg: { type: 'string', enum: Object.keys(AUTHOR_KEY_ALGS) },
    publicKeyPem: { type: 'string', minLength: 64, maxLength: 4096 },
  },
} as const;
export const authorKeyInfo = {
  type: 'object',
  additionalProperties: false,
  required: ['id', 'name', 'alg', 'publicKeyPem', 'createdAtMs', 'revoked'],
  properties: {
    id: { type: 'string' },
    name: { type: 'string' },
    alg: { type: 'string', enum: Object.keys(AUTHOR_KEY_ALGS) },
    publicKeyPem: { type: 'string' },
    createdAtMs: { type: 'integer' },
    revoked: { type: 'boolean' },
  },
} as const;
export const authorKeyList = list(authorKeyInfo);

// --- payloads and releases
export const payloadStored = {
  type: 'object',
  additionalProperties: false,
  required: ['sha256', 'size', 'created'],
  properties: { sha256: hex64, size: { type: 'integer' }, created: { type: 'boolean' } },
} as const;
export const releaseInfo = {
  type: 'object',
  additionalProperties: false,
  required: [
    'id',
    'envelopeSha256',
    'sequenceNumber',
    'authorKeyId',
    'uploadedBy',
    'status',
    'payloads',
    'createdAtMs',
  ],
  properties: {
    id: { type: 'string' },
    envelopeSha256: hex64,
    sequenceNumber: { type: 'string', pattern: '^[0-9]{1,20}$' },
    authorKeyId: { type: 'string' },
    uploadedBy: { type: 'string' },
    status: { type: 'string', enum: ['uploaded', 'approved', 'withdrawn'] },
    payloads: { type: 'array', items: hex64 },
    createdAtMs: { type: 'integer' },
  },
} as const;
export const releaseList = list(releaseInfo);

// --- audit
export const auditQuery = {
  type: 'object',
  additionalProperties: false,
  properties: {
    after: { type: 'integer', minimum: 0, default: 0 },
    limit: { type: 'integer', minimum: 1, maximum: 1000, default: 100 },
  },
} as const;
export const auditList = list({
  type: 'object',
  additionalProperties: false,
  required: ['seq', 'body', 'prevHash', 'hash'],
  properties: { seq: { type: 'integer' }, body: { type: 'string' }, prevHash: hex64, hash: hex64 },
});
export const auditVerifyQuery = {
  type: 'object',
  additionalProperties: false,
  properties: { anchorSeq: { type: 'integer', minimum: 1 }, anchorHash: hex64 },
  dependencies: { anchorSeq: ['anchorHash'], anchorHash: ['anchorSeq'] },
} as const;
export const auditVerification = {
  type: 'object',
  additionalProperties: false,
  required: ['ok', 'count'],
  properties: {
    ok: { type: 'boolean' },
    count: { type: 'integer' },
    head: {
      type: 'object',
      additionalProperties: false,
      required: ['seq', 'hash'],
      properties: { seq: { type: 'integer' }, hash: hex64 },
    },
    seq: { type: 'integer' },
    reason: { type: 'string' },
  },
} as const;

// --- service
export const health = {
  type: 'object',
  additionalProperties: false,
  required: ['status'],
  properties: { status: { type: 'string', enum: ['ok', 'ready'] } },
} as const;

// --- rollouts
const phase = {
  type: 'object',
  additionalProperties: false,
  required: ['percent', 'successThreshold', 'failureThreshold', 'timeoutMs'],
  properties: {
    percent: { type: 'integer', minimum: 1, maximum: 100 },
    successThreshold: { type: 'number', exclusiveMinimum: 0, maximum: 1 },
    failureThreshold: { type: 'number', exclusiveMinimum: 0, maximum: 1 },
    timeoutMs: { type: 'integer', minimum: 1000, maximum: 30 * 86_400_000 },
  },
} as const;
const target = {
  type: 'object',
  additionalProperties: false,
  properties: {
    group: label,
    tags: { type: 'array', maxItems: 32, uniqueItems: true, items: label },
    deviceIds: {
      type: 'array',
      maxItems: 10_000,
      uniqueItems: true,
      items: { type: 'string', maxLength: 64 },
    },
    attributes,
  },
} as const;
export const rolloutCreateBody = {
  type: 'object',
  additionalProperties: false,
  required: ['name', 'releaseId', 'target', 'phases'],
  properties: {
    name,
    releaseId: { type: 'string', maxLength: 64 },
    target,
    phases: { type: 'array', minItems: 1, maxItems: 16, items: phase },
  },
} as const;
const countProps = Object.fromEntries(
  ['total', 'pending', 'in_progress', 'succeeded', 'failed', 'timed_out', 'cancelled'].map((k) => [
    k,
    { type: 'integer' },
  ]),
);
const counts = {
  type: 'object',
  additionalProperties: false,
  required: Object.keys(countProps),
  properties: countProps,
} as const;
const rolloutProps = {
  id: { type: 'string' },
  name: { type: 'string' },
  releaseId: { type: 'string' },
  state: { type: 'string', enum: ['active', 'paused', 'cancelled', 'completed'] },
  currentPhase: { type: 'integer' },
  phases: { type: 'array', items: phase },
  target,
  pauseReason: { type: ['string', 'null'] },
  counts,
  phaseCounts: { type: 'array', items: counts },
  createdAtMs: { type: 'integer' },
  updatedAtMs: { type: 'integer' },
} as const;
export const rolloutInfo = {
  type: 'object',
  additionalProperties: false,
  required: Object.keys(rolloutProps),
  properties: rolloutProps,
} as const;
export const rolloutCreated = {
  type: 'object',
  additionalProperties: false,
  required: [...Object.keys(rolloutProps), 'assigned', 'excluded'],
  properties: { ...rolloutProps, assigned: { type: 'integer' }, excluded: { type: 'integer' } },
} as const;
export const rolloutList = list(rolloutInfo);
export const eventQuery = {
  type: 'object',
  additionalProperties: false,
  properties: {
    after: { type: 'integer', minimum: 0, default: 0 },
    limit: { type: 'integer', minimum: 1, maximum: 1000, default: 100 },
  },
} as const;
export const eventList = list({
  type: 'object',
  additionalProperties: false,
  required: ['id', 'deviceId', 'rolloutId', 'atMs', 'kind', 'details'],
  properties: {
    id: { type: 'integer' },
    deviceId: { type: 'string' },
    rolloutId: { type: ['string', 'null'] },
    atMs: { type: 'integer' },
    kind: { type: 'string' },
    details: { type: 'object' },
  },
});
export const empty = { type: 'object', additionalProperties: false, properties: {} } as const;
export const checkinResult = {
  type: 'object',
  additionalProperties: false,
  required: ['action'],
  properties: {
    action: { type: 'string', enum: ['none', 'update'] },
    rolloutId: { type: 'string' },
    releaseId: { type: 'string' },
    envelopeUrl: { type: 'string' },
    payloadUrls: { type: 'array', items: { type: 'string' } },
    /** The server's poll interval: seconds until the device should check in again. */
    checkinIntervalS: { type: 'integer', minimum: 1 },
    /** Newest trust-anchor statement and revocation-list versions (0: none); devices fetch newer ones. */
    trust: {
      type: 'object',
      additionalProperties: false,
      required: ['anchors', 'revocation'],
      properties: { anchors: { type: 'integer' }, revocation: { type: 'integer' } },
    },
  },
} as const;
export const reportResult = {
  type: 'object',
  additionalProperties: false,
  required: ['rolloutId', 'state'],
  properties: { rolloutId: { type: 'string' }, state: { type: 'string' } },
} as const;

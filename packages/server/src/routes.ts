/**
 * Routes. Operator API under /v1 (JSON, bearer tokens); device API under /d/v1 on the mutual-TLS listener. Handlers
 * only translate HTTP to service calls: authorization happens in the services (deny by default).
 */
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Principal, Role } from './auth.ts';
import { ServerError } from './errors.ts';
import { OCTET_STREAM, SUIT_ENVELOPE_TYPE, SUIT_REPORT_TYPE, SUIT_SIGNED_REPORT_TYPE } from './http.ts';
import { MAX_REPORT_BYTES } from './rollouts.ts';
import * as S from './schemas.ts';
import type { PhaseSpec, RolloutTarget } from './rollouts.ts';
import type { AuthorKeyAlg, DeviceCreate, DeviceUpdate, Services } from './services.ts';

function principal(req: FastifyRequest): Principal {
  if (req.principal === undefined) throw new ServerError('AUTH_REQUIRED', 'authentication required');
  return req.principal;
}

const IMMUTABLE = 'public, max-age=31536000, immutable';

/** More range-specs than this in one Range header: the header is ignored and the whole body served (§14.2). */
export const MAX_RANGES = 16;
/**
 * Ranges separated by fewer bytes than a part header costs are served as one part (RFC 9110 §15.3.7.2: a server
 * MAY coalesce ranges that overlap or that are separated by a gap smaller than the overhead of multiple parts).
 */
const COALESCE_GAP = 80;

export interface ByteRange {
  /** First byte. */
  readonly start: number;
  /** One past the last byte. */
  readonly end: number;
}

/**
 * Parses a Range header (RFC 9110 §14.1.2 ranges-specifier, `bytes=` range-set) against a representation of
 * `size` bytes. Returns undefined to serve the whole representation: no header, another range unit, a syntax
 * error or an invalid range-spec (last < first, §14.1.1), or more than MAX_RANGES specs (§14.2: a server MAY
 * ignore a Range header field that indicates a broken client or a denial-of-service attempt). Otherwise the
 * satisfiable ranges (§14.1.1: first-pos < size, or a non-zero suffix), sorted and coalesced (§15.3.7.2): several
 * ranges are served as multipart/byteranges (§14.6), one as a single part. None satisfiable: RANGE_NOT_SATISFIABLE
 * (416, §15.5.17).
 */
export function parseRanges(header: string | undefined, size: number): ByteRange[] | undefined {
  if (header === undefined) return undefined;
  const m = /^\s*bytes\s*=\s*(.*)$/i.exec(header);
  if (m === null) return undefined;
  const specs = (m[1] ?? '').split(',');
  if (specs.length > MAX_RANGES) return undefined;
  const ranges: ByteRange[] = [];
  let nonEmpty = 0;
  for (const raw of specs) {
    const spec = raw.trim();
    if (spec === '') continue; // §5.6.1: empty list elements are ignored
    nonEmpty++;
    const r = /^(\d{0,15})-(\d{0,15})$/.exec(spec);
    if (r === null) return undefined;
    const [, a = '', b = ''] = r;
    if (a === '' && b === '') return undefined;
    if (a === '') {
      const suffix = Number(b);
      if (suffix > 0 && size > 0) ranges.push({ start: Math.max(0, size - suffix), end: size });
      continue;
    }
    const start = Number(a);
    if (b !== '' && Number(b) < start) return undefined; // invalid range-spec (§14.1.1)
    if (start < size) ranges.push({ start, end: b === '' ? size : Math.min(size, Number(b) + 1) });
  }
  if (nonEmpty === 0) return undefined;
  if (ranges.length === 0)
    throw new ServerError('RANGE_NOT_SATISFIABLE', `no range is satisfiable within ${size} bytes`, {
      extra: { size },
    });
  ranges.sort((x, y) => x.start - y.start || x.end - y.end);
  const out: ByteRange[] = [];
  for (const r of ranges) {
    const last = out[out.length - 1];
    if (last !== undefined && r.start <= last.end + COALESCE_GAP)
      out[out.length - 1] = { start: last.start, end: Math.max(last.end, r.end) };
    else out.push(r);
  }
  return out;
}

/**
 * A single byte range (RFC 9110 §14.1.2), or undefined to serve the whole representation (no Range, a range-set
 * that stays several ranges after coalescing, or a syntax the server ignores as §14.2 allows); throws
 * RANGE_NOT_SATISFIABLE (§15.5.17).
 */
export function parseRange(header: string | undefined, size: number): ByteRange | undefined {
  const r = parseRanges(header, size);
  return r?.length === 1 ? r[0] : undefined;
}

/** The parts of a multipart/byteranges body (RFC 9110 §14.6) and its exact length. */
function byteranges(
  ranges: readonly ByteRange[],
  size: number,
  type: string,
): { boundary: string; heads: Buffer[]; tail: Buffer; length: number } {
  const boundary = randomBytes(18).toString('base64url');
  const heads = ranges.map((r, i) =>
    Buffer.from(
      `${i === 0 ? '' : '\r\n'}--${boundary}\r\ncontent-type: ${type}\r\ncontent-range: bytes ${r.start}-${r.end - 1}/${size}\r\n\r\n`,
      'latin1',
    ),
  );
  const tail = Buffer.from(`\r\n--${boundary}--\r\n`, 'latin1');
  const length =
    heads.reduce((n, h) => n + h.length, 0) + ranges.reduce((n, r) => n + r.end - r.start, 0) + tail.length;
  return { boundary, heads, tail, length };
}

/**
 * Serves an immutable content-addressed payload: strong ETag, Range (one range or several as
 * multipart/byteranges)/If-Range, 304, long-lived cache headers.
 */
async function servePayload(
  services: Services,
  req: FastifyRequest<{ Params: { sha256: string } }>,
  reply: FastifyReply,
): Promise<FastifyReply> {
  const meta = await services.payloads.meta(principal(req), req.params.sha256);
  const etag = `"${meta.sha256}"`;
  void reply
    .header('etag', etag)
    .header('cache-control', IMMUTABLE)
    .header('accept-ranges', 'bytes')
    .type(OCTET_STREAM);
  const inm = req.headers['if-none-match'];
  if (
    inm !== undefined &&
    inm.split(',').some((t) => t.trim() === etag || t.trim() === `W/${etag}` || t.trim() === '*')
  ) {
    return reply.code(304).send();
  }
  const ifRange = req.headers['if-range'];
  let ranges: ByteRange[] | undefined;
  try {
    // §13.1.5: a Range with an If-Range that does not match the current ETag is ignored (whole body).
    ranges =
      ifRange === undefined || ifRange === etag ? parseRanges(req.headers.range, meta.size) : undefined;
  } catch (e) {
    void reply.header('content-range', `bytes */${meta.size}`);
    throw e;
  }
  if (ranges !== undefined && ranges.length > 1) {
    const parts = byteranges(ranges, meta.size, OCTET_STREAM);
    void reply
      .code(206)
      .type(`multipart/byteranges; boundary=${parts.boundary}`)
      .header('content-length', String(parts.length));
    if (req.method === 'HEAD') return reply.send(Readable.from([])); // keeps Content-Length (fastify HEAD)
    const read = services.payloads.read.bind(services.payloads);
    const body = async function* (): AsyncGenerator<Uint8Array> {
      for (const [i, r] of ranges.entries()) {
        yield parts.heads[i]!;
        yield* read(meta.sha256, r.start, r.end);
      }
      yield parts.tail;
    };
    return reply.send(Readable.from(body()));
  }
  const range = ranges?.[0];
  const start = range?.start ?? 0;
  const end = range?.end ?? meta.size;
  void reply.header('content-length', String(end - start));
  if (range !== undefined)
    void reply.code(206).header('content-range', `bytes ${start}-${end - 1}/${meta.size}`);
  if (req.method === 'HEAD') return reply.send(Readable.from([])); // keeps Content-Length (fastify HEAD)
  return reply.send(Readable.from(services.payloads.read(meta.sha256, start, end)));
}

export interface ServiceState {
  ready: boolean;
}

export function registerCommonRoutes(
  app: FastifyInstance,
  state: ServiceState,
  ping: () => Promise<void>,
): void {
  app.get(
    '/healthz',
    { config: { auth: 'none', summary: 'Liveness' }, schema: { response: { 200: S.health } } },
    () => ({ status: 'ok' }),
  );
  app.get(
    '/readyz',
    {
      config: { auth: 'none', summary: 'Readiness (database reachable, migrated, not draining)' },
      schema: { response: { 200: S.health } },
    },
    async () => {
      if (!state.ready) throw new ServerError('NOT_READY', 'not ready');
      try {
        await ping();
      } catch (e) {
        throw new ServerError('NOT_READY', 'database unreachable', { cause: e });
      }
      return { status: 'ready' };
    },
  );
}

export function registerOperatorRoutes(
  app: FastifyInstance,
  services: Services,
  extra: { metrics: () => Promise<string>; openapi: () => object; maxUploadBytes: number },
): void {
  const s = services;
  app.get(
    '/metrics',
    { config: { auth: 'none', binary: true, produces: 'text/plain', summary: 'Prometheus metrics' } },
    async (_req, reply) => reply.type('text/plain; version=0.0.4; charset=utf-8').send(await extra.metrics()),
  );
  app.get(
    '/openapi.json',
    {
      config: { auth: 'none', binary: true, produces: 'application/json', summary: 'This OpenAPI document' },
    },
    (_req, reply) => reply.type('application/json').send(JSON.stringify(extra.openapi())),
  );

  // --- tokens
  app.post<{ Body: { name: string; role: Role } }>(
    '/v1/tokens',
    {
      config: { summary: 'Create an API token (admin); the token is returned once' },
      schema: { body: S.tokenCreateBody, response: { 201: S.tokenCreated } },
    },
    async (req, reply) => reply.code(201).send(await s.tokens.create(principal(req), req.body)),
  );
  app.get(
    '/v1/tokens',
    { config: { summary: 'List API tokens (no secrets)' }, schema: { response: { 200: S.tokenList } } },
    async (req) => ({
      items: await s.tokens.list(principal(req)),
    }),
  );
  app.delete<{ Params: { id: string } }>(
    '/v1/tokens/:id',
    {
      config: { summary: 'Revoke an API token' },
      schema: { params: S.idParam, response: { 200: S.tokenInfo } },
    },
    async (req) => s.tokens.revoke(principal(req), req.params.id),
  );

  // --- devices
  app.post<{ Body: DeviceCreate }>(
    '/v1/devices',
    {
      config: { summary: 'Register a device by its client certificate' },
      schema: { body: S.deviceCreateBody, response: { 201: S.deviceInfo } },
    },
    async (req, reply) => reply.code(201).send(await s.devices.create(principal(req), req.body)),
  );
  app.get<{ Querystring: { limit: number; after?: string; group?: string; tag?: string } }>(
    '/v1/devices',
    {
      config: { summary: 'List devices' },
      schema: { querystring: S.deviceQuery, response: { 200: S.deviceList } },
    },
    async (req) => ({ items: await s.devices.list(principal(req), req.query) }),
  );
  app.get<{ Params: { id: string } }>(
    '/v1/devices/:id',
    { config: { summary: 'Get a device' }, schema: { params: S.idParam, response: { 200: S.deviceInfo } } },
    async (req) => s.devices.get(principal(req), req.params.id),
  );
  app.patch<{ Params: { id: string }; Body: DeviceUpdate }>(
    '/v1/devices/:id',
    {
      config: { summary: 'Enable/disable a device, set its group, tags, attributes' },
      schema: { params: S.idParam, body: S.deviceUpdateBody, response: { 200: S.deviceInfo } },
    },
    async (req) => s.devices.update(principal(req), req.params.id, req.body),
  );

  // --- author keys
  app.post<{ Body: { name: string; alg: AuthorKeyAlg; publicKeyPem: string } }>(
    '/v1/author-keys',
    {
      config: { summary: 'Register an author signing key' },
      schema: { body: S.authorKeyCreateBody, response: { 201: S.authorKeyInfo } },
    },
    async (req, reply) => reply.code(201).send(await s.authorKeys.create(principal(req), req.body)),
  );
  app.get(
    '/v1/author-keys',
    { config: { summary: 'List author keys' }, schema: { response: { 200: S.authorKeyList } } },
    async (req) => ({
      items: await s.authorKeys.list(principal(req)),
    }),
  );
  app.delete<{ Params: { id: string } }>(
    '/v1/author-keys/:id',
    {
      config: { summary: 'Revoke an author key' },
      schema: { params: S.idParam, response: { 200: S.authorKeyInfo } },
    },
    async (req) => s.authorKeys.revoke(principal(req), req.params.id),
  );

  // --- payloads
  app.put<{ Params: { sha256: string }; Body: Buffer }>(
    '/v1/payloads/:sha256',
    {
      bodyLimit: extra.maxUploadBytes,
      config: { accepts: [OCTET_STREAM], summary: 'Upload a payload, addressed by its SHA-256 (author)' },
      schema: { params: S.sha256Param, response: { 200: S.payloadStored, 201: S.payloadStored } },
    },
    async (req, reply) => {
      const r = await s.payloads.upload(principal(req), req.params.sha256, new Uint8Array(req.body));
      return reply.code(r.created ? 201 : 200).send(r);
    },
  );
  app.get<{ Params: { sha256: string } }>(
    '/v1/payloads/:sha256',
    {
      config: { binary: true, summary: 'Download a release payload (ETag, Range, immutable)' },
      schema: { params: S.sha256Param },
    },
    (req, reply) => servePayload(s, req, reply),
  );

  // --- releases
  app.post<{ Body: Buffer }>(
    '/v1/releases',
    {
      bodyLimit: extra.maxUploadBytes,
      config: { accepts: [SUIT_ENVELOPE_TYPE], summary: 'Upload a signed SUIT envelope (author)' },
      schema: { response: { 201: S.releaseInfo } },
    },
    async (req, reply) =>
      reply.code(201).send(await s.releases.upload(principal(req), new Uint8Array(req.body))),
  );
  app.get<{ Querystring: { limit: number; after?: string } }>(
    '/v1/releases',
    {
      config: { summary: 'List releases' },
      schema: { querystring: S.pageQuery, response: { 200: S.releaseList } },
    },
    async (req) => ({ items: await s.releases.list(principal(req), req.query) }),
  );
  app.get<{ Params: { id: string } }>(
    '/v1/releases/:id',
    { config: { summary: 'Get a release' }, schema: { params: S.idParam, response: { 200: S.releaseInfo } } },
    async (req) => s.releases.get(principal(req), req.params.id),
  );
  app.get<{ Params: { id: string } }>(
    '/v1/releases/:id/envelope',
    {
      config: { binary: true, produces: SUIT_ENVELOPE_TYPE, summary: 'The release envelope as uploaded' },
      schema: { params: S.idParam },
    },
    async (req, reply) =>
      reply
        .type(SUIT_ENVELOPE_TYPE)
        .send(Buffer.from(await s.releases.envelope(principal(req), req.params.id))),
  );

  app.get<{ Params: { id: string } }>(
    '/v1/releases/:id/cosigned-envelope',
    {
      config: {
        binary: true,
        produces: SUIT_ENVELOPE_TYPE,
        summary: "The author's envelope with the operator's approval signature added (approved releases)",
      },
      schema: { params: S.idParam },
    },
    async (req, reply) =>
      reply
        .type(SUIT_ENVELOPE_TYPE)
        .send(Buffer.from(await s.delivery.cosigned(principal(req), req.params.id))),
  );

  // --- approval and rollouts
  app.post<{ Params: { id: string } }>(
    '/v1/releases/:id/approve',
    {
      config: { summary: 'Approve a release for deployment (operator)' },
      schema: { params: S.idParam, response: { 200: S.releaseInfo } },
    },
    async (req) => {
      await s.rollouts.approve(principal(req), req.params.id);
      return s.releases.get(principal(req), req.params.id);
    },
  );
  app.post<{ Body: { name: string; releaseId: string; target: RolloutTarget; phases: PhaseSpec[] } }>(
    '/v1/rollouts',
    {
      config: { summary: 'Create a phased rollout (operator)' },
      schema: { body: S.rolloutCreateBody, response: { 201: S.rolloutCreated } },
    },
    async (req, reply) => reply.code(201).send(await s.rollouts.create(principal(req), req.body)),
  );
  app.get<{ Querystring: { limit: number; after?: string } }>(
    '/v1/rollouts',
    {
      config: { summary: 'List rollouts with counts' },
      schema: { querystring: S.pageQuery, response: { 200: S.rolloutList } },
    },
    async (req) => ({ items: await s.rollouts.list(principal(req), req.query) }),
  );
  app.get<{ Params: { id: string } }>(
    '/v1/rollouts/:id',
    {
      config: { summary: 'A rollout with counts per state and phase' },
      schema: { params: S.idParam, response: { 200: S.rolloutInfo } },
    },
    async (req) => s.rollouts.get(principal(req), req.params.id),
  );
  for (const action of ['pause', 'resume', 'cancel'] as const) {
    app.post<{ Params: { id: string } }>(
      `/v1/rollouts/:id/${action}`,
      {
        config: { summary: `${action[0]!.toUpperCase()}${action.slice(1)} a rollout (operator)` },
        schema: { params: S.idParam, response: { 200: S.rolloutInfo } },
      },
      async (req) => s.rollouts[action](principal(req), req.params.id),
    );
  }
  app.get<{ Params: { id: string }; Querystring: { after: number; limit: number } }>(
    '/v1/rollouts/:id/events',
    {
      config: { summary: 'Per-device history of a rollout' },
      schema: { params: S.idParam, querystring: S.eventQuery, response: { 200: S.eventList } },
    },
    async (req) => ({
      items: await s.rollouts.deviceEvents(principal(req), { rolloutId: req.params.id, ...req.query }),
    }),
  );
  app.get<{ Params: { id: string }; Querystring: { after: number; limit: number } }>(
    '/v1/devices/:id/events',
    {
      config: { summary: 'History of a device' },
      schema: { params: S.idParam, querystring: S.eventQuery, response: { 200: S.eventList } },
    },
    async (req) => ({
      items: await s.rollouts.deviceEvents(principal(req), { deviceId: req.params.id, ...req.query }),
    }),
  );

  // --- audit
  app.get<{ Querystring: { after: number; limit: number } }>(
    '/v1/audit',
    {
      config: { summary: 'Read the audit log (hash-chained)' },
      schema: { querystring: S.auditQuery, response: { 200: S.auditList } },
    },
    async (req) => ({ items: await s.audit.list(principal(req), req.query) }),
  );
  app.get<{ Querystring: { anchorSeq?: number; anchorHash?: string } }>(
    '/v1/audit/verify',
    {
      config: { summary: 'Verify the audit hash chain' },
      schema: { querystring: S.auditVerifyQuery, response: { 200: S.auditVerification } },
    },
    async (req) => {
      const { anchorSeq, anchorHash } = req.query;
      return s.audit.verify(
        principal(req),
        anchorSeq !== undefined && anchorHash !== undefined
          ? { seq: anchorSeq, hash: anchorHash }
          : undefined,
      );
    },
  );
}

export function registerDeviceRoutes(
  app: FastifyInstance,
  services: Services,
  opts: {
    readonly checkinIntervalS: number;
    /** The newest trust-anchor and revocation-list versions, carried by every check-in (issue 7 pull). */
    readonly trustVersions?: () => Promise<{ anchors: number; revocation: number }>;
  },
): void {
  const s = services;
  const self = (req: FastifyRequest): string => {
    const p = principal(req);
    if (p.kind !== 'device') throw new ServerError('FORBIDDEN', 'device listener');
    return p.deviceId;
  };
  app.get(
    '/d/v1/self',
    {
      config: { auth: 'device', summary: 'The calling device' },
      schema: { response: { 200: S.deviceInfo } },
    },
    async (req) => s.devices.get(principal(req), self(req)),
  );
  app.get<{ Params: { id: string } }>(
    '/d/v1/devices/:id',
    {
      config: { auth: 'device', summary: "A device's own record (any other id: DEVICE_FORBIDDEN)" },
      schema: { params: S.idParam, response: { 200: S.deviceInfo } },
    },
    async (req) => s.devices.get(principal(req), req.params.id),
  );
  app.post(
    '/d/v1/checkin',
    {
      config: {
        auth: 'device',
        // rollouts.checkin verifies the device's standing in its own statement (group check-in)
        deviceStanding: 'handler',
        summary: 'Poll: what should this device do next (RFC 9019 §3)',
      },
      schema: { response: { 200: S.checkinResult } },
    },
    async (req) => {
      const [work, trust] = await Promise.all([s.rollouts.checkin(principal(req)), opts.trustVersions?.()]);
      return {
        ...work,
        checkinIntervalS: opts.checkinIntervalS,
        ...(trust === undefined ? {} : { trust }),
      };
    },
  );
  app.get<{ Params: { id: string } }>(
    '/d/v1/rollouts/:id/envelope',
    {
      config: {
        auth: 'device',
        binary: true,
        produces: SUIT_ENVELOPE_TYPE,
        summary: "The envelope of one of the device's rollouts",
      },
      schema: { params: S.idParam },
    },
    async (req, reply) =>
      reply
        .type(SUIT_ENVELOPE_TYPE)
        .send(Buffer.from(await s.rollouts.envelopeFor(principal(req), req.params.id))),
  );
  app.post<{ Body: Buffer }>(
    '/d/v1/reports',
    {
      bodyLimit: MAX_REPORT_BYTES,
      config: {
        auth: 'device',
        accepts: [SUIT_REPORT_TYPE, SUIT_SIGNED_REPORT_TYPE],
        summary: 'Ingest a SUIT report, unsigned (CBOR) or signed with the device report key (COSE_Sign1)',
      },
      schema: { response: { 200: S.reportResult } },
    },
    async (req) =>
      s.rollouts.report(principal(req), new Uint8Array(req.body), {
        signed: req.headers['content-type']?.split(';')[0]?.trim().toLowerCase() === SUIT_SIGNED_REPORT_TYPE,
      }),
  );
  app.get<{ Querystring: { after: number; limit: number } }>(
    '/d/v1/events',
    {
      config: { auth: 'device', summary: "The device's own history" },
      schema: { querystring: S.eventQuery, response: { 200: S.eventList } },
    },
    async (req) => ({
      items: await s.rollouts.deviceEvents(principal(req), { deviceId: self(req), ...req.query }),
    }),
  );
  app.get<{ Params: { sha256: string } }>(
    '/d/v1/payloads/:sha256',
    {
      config: {
        auth: 'device',
        binary: true,
        summary: 'Download a release payload (ETag, Range, immutable)',
      },
      schema: { params: S.sha256Param },
    },
    (req, reply) => servePayload(s, req, reply),
  );
}

/**
 * HTTP plumbing shared by the operator and device listeners (fastify): strict request validation (unknown fields
 * refused, no type coercion of bodies), validated responses, per-route media types and size bounds, RFC 9457
 * problem responses, metrics, and the OpenAPI document built from the routes' own schemas.
 */
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import Fastify, {
  type FastifyError,
  type FastifyHttpsOptions,
  type FastifyInstance,
  type FastifyReply,
  type FastifyRequest,
  type FastifyServerOptions,
} from 'fastify';
import type { Server } from 'node:https';
import type { SecureContextOptions } from 'node:tls';
import type { Principal } from './auth.ts';
import { deferStandingCheck } from './device-auth.ts';
import type { LogLevel } from './config.ts';
import { problemFor, PROBLEM_MEDIA_TYPE, ServerError, type Problem } from './errors.ts';
import type { Metrics } from './metrics.ts';

declare module 'fastify' {
  interface FastifyContextConfig {
    /** How the route authenticates: bearer token (default), device certificate, or none. */
    auth?: 'token' | 'device' | 'none';
    /**
     * 'handler': the handler's own statement verifies the device's standing (enabled, certificate), so a cached
     * device authentication is used without the cross-instance sync round trip (device-auth.ts). Default: the
     * authentication verifies it.
     */
    deviceStanding?: 'handler';
    /** Accepted request media types (bodies of any other type: 415). Default: application/json. */
    accepts?: readonly string[];
    /** Response is not JSON (binary/CBOR/text): no response schema. */
    binary?: boolean;
    /** Produced media type(s) for the OpenAPI document. */
    produces?: string;
    summary?: string;
    tags?: readonly string[];
  }
  interface FastifyRequest {
    principal: Principal | undefined;
  }
}

export const JSON_TYPE = 'application/json';
export const SUIT_ENVELOPE_TYPE = 'application/suit-envelope+cose';
export const OCTET_STREAM = 'application/octet-stream';
/** Unsigned SUIT report (draft-ietf-suit-report: a CBOR SUIT_Report; the device is authenticated by mTLS). */
export const SUIT_REPORT_TYPE = 'application/suit-report+cbor';
/** Signed SUIT report: COSE_Sign1 with the SUIT_Report attached (draft-ietf-suit-report §4). */
export const SUIT_SIGNED_REPORT_TYPE = 'application/suit-report+cose';

type Listener = 'operator' | 'device';

export interface RouteRecord {
  method: string;
  url: string;
  schema: Record<string, unknown> | undefined;
  config: FastifyRequest['routeOptions']['config'];
  bodyLimit: number | undefined;
}

export interface BaseAppOptions {
  readonly listener: Listener;
  readonly logLevel: LogLevel;
  readonly maxJsonBytes: number;
  readonly metrics: Metrics;
  readonly https?: SecureContextOptions & { requestCert?: boolean; rejectUnauthorized?: boolean };
  /** Authenticates a request for routes with auth 'token' / 'device'. */
  readonly authenticate: (req: FastifyRequest) => Promise<Principal>;
}

// Bodies: no coercion, no defaults, no removal: the body must already be exactly what the schema says.
const ajvBody = new Ajv({
  allErrors: false,
  coerceTypes: false,
  removeAdditional: false,
  useDefaults: false,
  strict: true,
});
// Path and query strings are text on the wire: numbers are coerced, nothing else is relaxed.
const ajvParams = new Ajv({
  allErrors: false,
  coerceTypes: true,
  removeAdditional: false,
  useDefaults: true,
  strict: true,
});
// Responses: what the handler returns must match the documented schema exactly.
const ajvResponse = new Ajv({
  allErrors: true,
  coerceTypes: false,
  removeAdditional: false,
  useDefaults: false,
  strict: true,
});

function validationProblem(errors: readonly ErrorObject[], part: string): ServerError {
  const unknown = errors.find((e) => e.keyword === 'additionalProperties');
  if (unknown !== undefined) {
    const field = String((unknown.params as { additionalProperty?: unknown }).additionalProperty);
    return new ServerError(
      'REQUEST_UNKNOWN_FIELD',
      `${part}${unknown.instancePath} has unknown field '${field}'`,
      {
        extra: { field: `${unknown.instancePath}/${field}` },
      },
    );
  }
  const e = errors[0];
  return new ServerError(
    'REQUEST_INVALID',
    e === undefined ? `${part} is invalid` : `${part}${e.instancePath} ${e.message ?? 'is invalid'}`,
  );
}

function mediaType(header: string | undefined): string | undefined {
  return header?.split(';')[0]?.trim().toLowerCase();
}

export function sendProblem(reply: FastifyReply, p: Problem): FastifyReply {
  if (p.status === 401) void reply.header('www-authenticate', 'Bearer');
  if (p.status === 503) void reply.header('retry-after', '1');
  return reply.code(p.status).type(PROBLEM_MEDIA_TYPE).send(JSON.stringify(p));
}

export function createBaseApp(opts: BaseAppOptions): { app: FastifyInstance; routes: RouteRecord[] } {
  const fopts: FastifyServerOptions = {
    logger:
      opts.logLevel === 'silent'
        ? false
        : {
            level: opts.logLevel,
            // Never log credentials: request logs carry method, URL and peer only; these paths are redacted anyway.
            redact: {
              paths: ['req.headers.authorization', 'req.headers.cookie', 'headers.authorization'],
              censor: '[redacted]',
            },
          },
    bodyLimit: opts.maxJsonBytes,
    return503OnClosing: true,
    forceCloseConnections: 'idle',
    routerOptions: { ignoreTrailingSlash: false, maxParamLength: 200 },
  };
  const app = (opts.https === undefined
    ? Fastify(fopts)
    : Fastify({
        ...(fopts as FastifyHttpsOptions<Server>),
        https: opts.https,
      })) as unknown as FastifyInstance;
  const routes: RouteRecord[] = [];

  app.decorateRequest('principal', undefined);

  app.setValidatorCompiler(({ schema, httpPart }) => {
    const validate = (httpPart === 'body' ? ajvBody : ajvParams).compile(schema as object);
    const part = httpPart ?? 'request';
    return (data: unknown) =>
      validate(data) ? { value: data } : { error: validationProblem(validate.errors ?? [], part) };
  });
  app.setSerializerCompiler(({ schema, url, method }) => {
    const validate: ValidateFunction = ajvResponse.compile(schema as object);
    return (data: unknown) => {
      if (!validate(data)) {
        throw new ServerError(
          'RESPONSE_INVALID',
          `response of ${method} ${url} does not match its schema: ${ajvResponse.errorsText(validate.errors)}`,
        );
      }
      return JSON.stringify(data);
    };
  });

  app.removeAllContentTypeParsers();
  app.addContentTypeParser(JSON_TYPE, { parseAs: 'string' }, (_req, body, done) => {
    try {
      done(null, JSON.parse(body as string) as unknown);
    } catch {
      done(new ServerError('REQUEST_BODY_MALFORMED', 'body is not valid JSON'), undefined);
    }
  });
  app.addContentTypeParser(
    [SUIT_ENVELOPE_TYPE, SUIT_REPORT_TYPE, SUIT_SIGNED_REPORT_TYPE, OCTET_STREAM],
    { parseAs: 'buffer' },
    (_req, body, done) => {
      done(null, body);
    },
  );

  app.addHook('onRoute', (r) => {
    const config = (r.config ?? {}) as RouteRecord['config'];
    if (r.schema?.response === undefined && config.binary !== true && r.method !== 'HEAD') {
      throw new Error(`route ${String(r.method)} ${r.url} declares no response schema`);
    }
    for (const m of Array.isArray(r.method) ? r.method : [r.method]) {
      if (m === 'HEAD' && r.url !== '/') continue;
      routes.push({
        method: m,
        url: r.url,
        schema: r.schema as Record<string, unknown> | undefined,
        config,
        bodyLimit: r.bodyLimit,
      });
    }
  });

  // Media type and authentication come before the body is read (onRequest): no parsing of refused requests.
  app.addHook('onRequest', async (req) => {
    const config = req.routeOptions.config;
    if (req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined) {
      const type = mediaType(req.headers['content-type']);
      const accepts = config.accepts ?? [JSON_TYPE];
      if (type === undefined || !accepts.includes(type)) {
        if (!(req.headers['content-length'] === '0' && type === undefined)) {
          throw new ServerError('MEDIA_TYPE_UNSUPPORTED', `Content-Type must be ${accepts.join(' or ')}`);
        }
      }
    }
    const auth = config.auth ?? 'token';
    if (auth !== 'none')
      req.principal = await (auth === 'device' && config.deviceStanding === 'handler'
        ? deferStandingCheck(() => opts.authenticate(req))
        : opts.authenticate(req));
  });

  app.addHook('onResponse', async (req, reply) => {
    const route = req.routeOptions.url ?? 'unmatched';
    opts.metrics.httpRequests.inc({
      listener: opts.listener,
      method: req.method,
      route,
      status: String(reply.statusCode),
    });
    opts.metrics.httpDuration.observe(
      { listener: opts.listener, method: req.method, route },
      reply.elapsedTime / 1000,
    );
  });

  app.setNotFoundHandler((req, reply) => {
    const p = problemFor(
      new ServerError('NOT_FOUND', `no route ${req.method} ${req.url.split('?')[0] ?? ''}`),
    );
    opts.metrics.problems.inc({ listener: opts.listener, code: p.code });
    return sendProblem(reply, p);
  });

  app.setErrorHandler((err: FastifyError | ServerError | Error, req, reply) => {
    let e: unknown = err;
    const fe = err as Partial<FastifyError>;
    if (fe.validation !== undefined) {
      e = validationProblem(fe.validation as ErrorObject[], fe.validationContext ?? 'request');
    } else if (typeof fe.code === 'string' && fe.code.startsWith('FST_')) {
      const status = fe.statusCode ?? 500;
      if (status === 413)
        e = new ServerError('PAYLOAD_TOO_LARGE', 'request body exceeds the limit for this route');
      else if (status === 415) e = new ServerError('MEDIA_TYPE_UNSUPPORTED', 'unsupported Content-Type');
      else if (status === 503) e = new ServerError('NOT_READY', 'server is shutting down');
      else if (status >= 400 && status < 500)
        e = new ServerError('REQUEST_BODY_MALFORMED', fe.message ?? 'malformed request');
    }
    const p = problemFor(e, req.url.split('?')[0]);
    if (p.status >= 500) req.log.error({ err }, 'request failed');
    else req.log.info({ code: p.code }, 'request refused');
    opts.metrics.problems.inc({ listener: opts.listener, code: p.code });
    return sendProblem(reply, p);
  });

  return { app, routes };
}

// ---------------------------------------------------------------------------------------------------------------
// OpenAPI 3.1 from the registered routes.

const problemSchema = {
  type: 'object',
  required: ['type', 'title', 'status', 'detail', 'code'],
  properties: {
    type: { type: 'string', format: 'uri' },
    title: { type: 'string' },
    status: { type: 'integer' },
    detail: { type: 'string' },
    code: { type: 'string', description: 'Stable Rotor error code' },
    instance: { type: 'string' },
  },
} as const;

export function openApiDocument(
  info: { title: string; version: string; description: string },
  listeners: readonly { name: Listener; routes: readonly RouteRecord[] }[],
): Record<string, unknown> {
  const paths: Record<string, Record<string, unknown>> = {};
  for (const l of listeners) {
    for (const r of l.routes) {
      if (r.method === 'HEAD' || r.method === 'OPTIONS') continue;
      const path = r.url.replace(/:([A-Za-z0-9_]+)/g, '{$1}');
      const s = r.schema ?? {};
      const parameters: unknown[] = [];
      for (const [where, key] of [
        ['path', 'params'],
        ['query', 'querystring'],
      ] as const) {
        const props =
          (s[key] as { properties?: Record<string, unknown>; required?: string[] } | undefined) ?? {};
        for (const [name, schema] of Object.entries(props.properties ?? {})) {
          parameters.push({
            name,
            in: where,
            required: where === 'path' || (props.required ?? []).includes(name),
            schema,
          });
        }
      }
      const accepts = r.config.accepts ?? [JSON_TYPE];
      const requestBody =
        s.body !== undefined
          ? { required: true, content: { [JSON_TYPE]: { schema: s.body } } }
          : accepts.some((a) => a !== JSON_TYPE)
            ? {
                required: true,
                content: Object.fromEntries(
                  accepts.map((a) => [a, { schema: { type: 'string', contentEncoding: 'binary' } }]),
                ),
              }
            : undefined;
      const responses: Record<string, unknown> = {};
      for (const [status, schema] of Object.entries(
        (s.response as Record<string, unknown> | undefined) ?? {},
      )) {
        responses[status] = { description: `HTTP ${status}`, content: { [JSON_TYPE]: { schema } } };
      }
      if (r.config.binary === true) {
        responses['200'] = {
          description: 'binary content',
          content: {
            [r.config.produces ?? OCTET_STREAM]: { schema: { type: 'string', contentEncoding: 'binary' } },
          },
        };
      }
      responses.default = {
        description: 'RFC 9457 problem',
        content: { [PROBLEM_MEDIA_TYPE]: { schema: { $ref: '#/components/schemas/Problem' } } },
      };
      const auth = r.config.auth ?? 'token';
      (paths[path] ??= {})[r.method.toLowerCase()] = {
        summary: r.config.summary ?? `${r.method} ${path}`,
        tags: [l.name, ...(r.config.tags ?? [])],
        ...(parameters.length > 0 ? { parameters } : {}),
        ...(requestBody === undefined ? {} : { requestBody }),
        responses,
        security:
          auth === 'none' ? [] : auth === 'token' ? [{ bearerAuth: [] }] : [{ deviceCertificate: [] }],
      };
    }
  }
  return {
    openapi: '3.1.0',
    info,
    paths,
    components: {
      schemas: { Problem: problemSchema },
      securitySchemes: {
        bearerAuth: {
          type: 'http',
          scheme: 'bearer',
          description: 'Operator API token (roles author, operator, admin, auditor)',
        },
        deviceCertificate: {
          type: 'mutualTLS',
          description: 'Device API: client certificate registered for the device',
        },
      },
    },
  };
}

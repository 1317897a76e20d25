/**
 * A small client of the fleet server's operator API (JSON over HTTP/1.1, bearer tokens — RFC 6750 §2.1; problems
 * are RFC 9457 documents with a stable `code`). One keep-alive agent per command; every response is size-bounded,
 * its media type checked and its JSON shape validated before a command uses it; problem documents become CliErrors
 * whose exit codes are stable (errors.ts).
 *
 * Where things come from:
 *   server  --server URL, else ROTOR_SERVER (http: only to a loopback address unless ROTOR_INSECURE_HTTP=1: a bearer
 *           token must not cross a network in clear, RFC 6750 §5.3)
 *   token   --token-file F, else ROTOR_TOKEN_FILE, else ROTOR_TOKEN — never a flag (it would show in the process
 *           list); the token is never printed or logged
 *   CA      --ca FILE, else ROTOR_CA_FILE (a private CA of the server's certificate), else the system store
 */
import { readFileSync } from 'node:fs';
import { Agent as HttpAgent, request as httpRequest, type IncomingMessage } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { isIP } from 'node:net';
import { CliError, type CliErrorCode } from './errors.ts';
import { safe } from './io.ts';

/** Options every operator-API subcommand takes. */
export const API_OPTIONS = {
  server: { type: 'string' },
  'token-file': { type: 'string' },
  ca: { type: 'string' },
  json: { type: 'boolean' },
} as const;

export const API_USAGE = `server options: --server URL (or ROTOR_SERVER), --token-file FILE (or ROTOR_TOKEN_FILE,
or the token itself in ROTOR_TOKEN), --ca FILE (or ROTOR_CA_FILE) for a private server CA; --json prints JSON.`;

/** Responses larger than this are refused (the largest list page — 1000 modules — is well below it). */
export const MAX_RESPONSE_BYTES = 8 * 1024 * 1024;
const MAX_TOKEN_FILE = 4096;
const MAX_CA_FILE = 256 * 1024;
const REQUEST_TIMEOUT_MS = 60_000;
/** Same bound as the server's (auth.ts bearerToken): visible ASCII, 1..512 characters. */
const TOKEN_RE = /^[\x21-\x7e]{1,512}$/;
/** Resource ids the server accepts in paths (schemas.ts idParam). */
const ID_RE = /^[A-Za-z0-9_-]{1,64}$/;

export interface ApiConfig {
  readonly server: URL;
  readonly token: string | undefined;
  readonly ca: string | undefined;
}

function readBounded(path: string, max: number, what: string): string {
  let b: Buffer;
  try {
    b = readFileSync(path);
  } catch (e) {
    throw new CliError(
      'CLI_IO',
      `cannot read ${what} ${path}: ${e instanceof Error ? e.message : String(e)}`,
    );
  }
  if (b.length > max) throw new CliError('CLI_INPUT', `${what} ${path} is larger than ${max} bytes`);
  return b.toString('utf8');
}

function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '');
  if (h === 'localhost') return true;
  if (isIP(h) === 4) return h.startsWith('127.');
  return h === '::1';
}

/** The server URL, token and CA from flags and environment (see the module comment). */
export function apiConfig(values: Record<string, unknown>, env = process.env): ApiConfig {
  const raw = (values.server as string | undefined) ?? env.ROTOR_SERVER;
  if (raw === undefined || raw === '')
    throw new CliError('CLI_USAGE', 'no server: --server URL or ROTOR_SERVER (e.g. http://127.0.0.1:8080)');
  let server: URL;
  try {
    server = new URL(raw);
  } catch {
    throw new CliError('CLI_USAGE', `--server: not a URL: ${raw}`);
  }
  if (server.protocol !== 'http:' && server.protocol !== 'https:')
    throw new CliError('CLI_USAGE', '--server: an http: or https: URL');
  if (server.username !== '' || server.password !== '')
    throw new CliError('CLI_USAGE', '--server: credentials in the URL are refused (use --token-file)');
  if (server.search !== '' || server.hash !== '')
    throw new CliError('CLI_USAGE', '--server: no query or fragment');
  if (server.protocol === 'http:' && !isLoopback(server.hostname) && env.ROTOR_INSECURE_HTTP !== '1') {
    throw new CliError(
      'CLI_USAGE',
      `--server: plain http to ${server.hostname} would send the token in clear (RFC 6750 §5.3); use https, or set ROTOR_INSECURE_HTTP=1`,
    );
  }
  const tokenFile = (values['token-file'] as string | undefined) ?? env.ROTOR_TOKEN_FILE;
  let token: string | undefined;
  if (tokenFile !== undefined && tokenFile !== '')
    token = readBounded(tokenFile, MAX_TOKEN_FILE, 'token file');
  else if (env.ROTOR_TOKEN !== undefined && env.ROTOR_TOKEN !== '') token = env.ROTOR_TOKEN;
  if (token !== undefined) {
    token = token.trim();
    if (!TOKEN_RE.test(token))
      throw new CliError('CLI_INPUT', 'the token is not 1..512 visible ASCII characters (RFC 6750 §2.1)');
  }
  const caFile = (values.ca as string | undefined) ?? env.ROTOR_CA_FILE;
  const ca = caFile !== undefined && caFile !== '' ? readBounded(caFile, MAX_CA_FILE, 'CA file') : undefined;
  return { server, token, ca };
}

/** A path segment from an id given on the command line: refused unless the server could accept it. */
export function idSegment(id: string | undefined, what: string): string {
  if (id === undefined) throw new CliError('CLI_USAGE', `missing ${what}`);
  if (!ID_RE.test(id)) throw new CliError('CLI_USAGE', `${what}: [A-Za-z0-9_-]{1,64}, got '${id}'`);
  return id;
}

// ---------------------------------------------------------------------------------------------------------------
// Response shapes: a tiny validator. Fields the CLI reads are checked; unknown extra fields are allowed (a newer
// server may add members) but never used.

export type Shape =
  | 'string'
  | 'integer'
  | 'number'
  | 'boolean'
  | 'object'
  | 'any'
  | 'string|null'
  | 'integer|null'
  | readonly [Shape]
  | { readonly [key: string]: Shape };

function shapeError(path: string, want: string): CliError {
  return new CliError('CLI_SERVER', `the server's response breaks the API contract: ${path} is not ${want}`);
}

function checkShape(v: unknown, s: Shape, path: string): void {
  if (typeof s === 'string') {
    if (s === 'any') return;
    const [base, nullable] = s.split('|') as [string, string | undefined];
    if (v === null && nullable === 'null') return;
    const ok =
      base === 'string'
        ? typeof v === 'string'
        : base === 'integer'
          ? Number.isSafeInteger(v)
          : base === 'number'
            ? typeof v === 'number' && Number.isFinite(v)
            : base === 'boolean'
              ? typeof v === 'boolean'
              : typeof v === 'object' && v !== null && !Array.isArray(v);
    if (!ok) throw shapeError(path, s);
    return;
  }
  if (Array.isArray(s)) {
    if (!Array.isArray(v)) throw shapeError(path, 'an array');
    const item = (s as readonly [Shape])[0];
    v.forEach((x, i) => {
      checkShape(x, item, `${path}[${i}]`);
    });
    return;
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw shapeError(path, 'an object');
  const o = v as Record<string, unknown>;
  for (const [k, sub] of Object.entries(s as Record<string, Shape>)) {
    const optional = k.endsWith('?');
    const key = optional ? k.slice(0, -1) : k;
    if (!(key in o)) {
      if (optional) continue;
      throw shapeError(`${path}.${key}`, 'present');
    }
    checkShape(o[key], sub, `${path}.${key}`);
  }
}

/** Validates `v` against `s` and returns it as T (the caller's interface mirrors the shape). */
// eslint-disable-next-line @typescript-eslint/no-unnecessary-type-parameters -- T names the checked shape's type
export function expectShape<T>(v: unknown, s: Shape, path = 'response'): T {
  checkShape(v, s, path);
  return v as T;
}

// ---------------------------------------------------------------------------------------------------------------
// Problems → CliErrors

export interface Problem {
  readonly status: number;
  readonly code: string;
  readonly detail: string;
  readonly [extension: string]: unknown;
}

/** The CLI error code for an HTTP status (the problem's own code is kept beside it). */
export function cliCodeForStatus(status: number): CliErrorCode {
  if (status === 401 || status === 403) return 'CLI_DENIED';
  if (status === 409 || status === 410 || status === 412 || status === 422 || status === 423)
    return 'CLI_REFUSED';
  if (status >= 400 && status < 500) return 'CLI_INPUT';
  return 'CLI_SERVER';
}

function problemError(status: number, body: Buffer, contentType: string | undefined): CliError {
  let p: Problem | undefined;
  if (contentType === 'application/problem+json') {
    try {
      const v = JSON.parse(body.toString('utf8')) as unknown;
      p = expectShape<Problem>(v, { status: 'integer', code: 'string', detail: 'string' }, 'problem');
    } catch {
      p = undefined;
    }
  }
  const code = cliCodeForStatus(status);
  if (p === undefined)
    return new CliError(code, `the server answered HTTP ${status} without a problem document`);
  const detail = safe(p.detail.slice(0, 1000));
  const problemCode = /^[A-Z0-9_]{1,64}$/.test(p.code) ? p.code : 'UNKNOWN';
  return new CliError(code, `${problemCode}: ${detail} (HTTP ${status})`, { problem: problemCode });
}

// ---------------------------------------------------------------------------------------------------------------
// The client

export interface RequestOptions {
  readonly query?: Readonly<Record<string, string | number | undefined>>;
  /** A JSON body (application/json). */
  readonly json?: unknown;
  /** A binary body and its media type. */
  readonly bytes?: Uint8Array;
  readonly contentType?: string;
}

export interface RawResponse {
  readonly status: number;
  readonly contentType: string | undefined;
  readonly body: Buffer;
}

export class ApiClient {
  readonly server: URL;
  readonly #token: string | undefined;
  readonly #agent: HttpAgent;
  readonly #https: boolean;

  constructor(cfg: ApiConfig) {
    this.server = cfg.server;
    this.#token = cfg.token;
    this.#https = cfg.server.protocol === 'https:';
    this.#agent = this.#https
      ? new HttpsAgent({ keepAlive: true, maxSockets: 4, ...(cfg.ca === undefined ? {} : { ca: cfg.ca }) })
      : new HttpAgent({ keepAlive: true, maxSockets: 4 });
  }

  url(path: string, query?: RequestOptions['query']): URL {
    const u = new URL(`${this.server.pathname.replace(/\/$/, '')}${path}`, this.server);
    for (const [k, v] of Object.entries(query ?? {})) if (v !== undefined) u.searchParams.set(k, String(v));
    return u;
  }

  /** One request; resolves with the bounded body of any status (problems are the caller's to map). */
  raw(method: string, path: string, opts: RequestOptions = {}): Promise<RawResponse> {
    const headers: Record<string, string> = { accept: 'application/json, application/problem+json' };
    if (this.#token !== undefined) headers.authorization = `Bearer ${this.#token}`;
    let body: Uint8Array | undefined;
    if (opts.json !== undefined) {
      body = Buffer.from(JSON.stringify(opts.json), 'utf8');
      headers['content-type'] = 'application/json';
    } else if (opts.bytes !== undefined) {
      body = opts.bytes;
      headers['content-type'] = opts.contentType ?? 'application/octet-stream';
    }
    if (body !== undefined) headers['content-length'] = String(body.length);
    const url = this.url(path, opts.query);
    const request = this.#https ? httpsRequest : httpRequest;
    return new Promise<RawResponse>((resolve, reject) => {
      const req = request(url, { method, headers, agent: this.#agent }, (res: IncomingMessage) => {
        const status = res.statusCode ?? 0;
        const contentType = res.headers['content-type']?.split(';')[0]?.trim().toLowerCase();
        const declared = Number(res.headers['content-length'] ?? '0');
        if (declared > MAX_RESPONSE_BYTES) {
          res.destroy();
          reject(new CliError('CLI_SERVER', `response larger than ${MAX_RESPONSE_BYTES} bytes`));
          return;
        }
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          size += c.length;
          if (size > MAX_RESPONSE_BYTES) {
            res.destroy(new CliError('CLI_SERVER', `response larger than ${MAX_RESPONSE_BYTES} bytes`));
            return;
          }
          chunks.push(c);
        });
        res.on('end', () => {
          resolve({ status, contentType, body: Buffer.concat(chunks) });
        });
        res.on('error', reject);
      });
      req.setTimeout(REQUEST_TIMEOUT_MS, () => {
        req.destroy(
          new CliError('CLI_IO', `no answer from ${this.server.origin} in ${REQUEST_TIMEOUT_MS} ms`),
        );
      });
      req.on('error', (e: Error & { code?: string }) => {
        if (e instanceof CliError) reject(e);
        else
          reject(
            new CliError('CLI_IO', `cannot reach ${this.server.origin}: ${e.code ?? e.message}`, {
              cause: e,
            }),
          );
      });
      req.end(body);
    });
  }

  /** A JSON request whose 2xx answer is validated against `shape`; any other answer throws a mapped CliError. */
  async call<T>(method: string, path: string, shape: Shape, opts: RequestOptions = {}): Promise<T> {
    const r = await this.raw(method, path, opts);
    if (r.status < 200 || r.status > 299) {
      const e = problemError(r.status, r.body, r.contentType);
      if (r.status === 401 && this.#token === undefined)
        throw new CliError(
          e.code,
          `${e.message}; no token given: --token-file FILE, ROTOR_TOKEN_FILE or ROTOR_TOKEN`,
          {
            ...(e.problem === undefined ? {} : { problem: e.problem }),
          },
        );
      throw e;
    }
    if (r.contentType !== 'application/json')
      throw new CliError('CLI_SERVER', `expected application/json, got ${r.contentType ?? 'no media type'}`);
    let v: unknown;
    try {
      v = JSON.parse(r.body.toString('utf8'));
    } catch {
      throw new CliError('CLI_SERVER', 'the server answered malformed JSON');
    }
    return expectShape<T>(v, shape);
  }

  get<T>(path: string, shape: Shape, query?: RequestOptions['query']): Promise<T> {
    return this.call<T>('GET', path, shape, query === undefined ? {} : { query });
  }

  post<T>(path: string, shape: Shape, json?: unknown): Promise<T> {
    // A POST without a body still says what it is: the server refuses unknown media types on bodies.
    return this.call<T>('POST', path, shape, json === undefined ? {} : { json });
  }

  close(): void {
    this.#agent.destroy();
  }
}

/** Runs `fn` with a client built from the command's flags and environment, closing its connections after. */
export async function withApi<T>(
  values: Record<string, unknown>,
  fn: (api: ApiClient) => Promise<T>,
): Promise<T> {
  const api = new ApiClient(apiConfig(values));
  try {
    return await fn(api);
  } finally {
    api.close();
  }
}

/**
 * A small operator-API client for the fleet simulator (JSON over http/https with a bearer token, keep-alive):
 * device registration and reads. Responses are size-bounded and parsed as JSON; anything else is a CLI_SERVER error.
 */
import { Agent as HttpAgent, request as httpRequest } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { CliError } from '../errors.ts';

const MAX_RESPONSE = 4 * 1024 * 1024;

export interface ApiResult {
  readonly status: number;
  readonly json: unknown;
}

export interface ServerDevice {
  readonly id: string;
  readonly name: string;
  readonly certSha256: string;
}

export class OperatorApi {
  readonly base: URL;
  readonly #token: string;
  readonly #agent: HttpAgent | HttpsAgent;

  constructor(url: string, token: string, opts: { ca?: string | undefined; maxSockets?: number } = {}) {
    try {
      this.base = new URL(url);
    } catch {
      throw new CliError('CLI_USAGE', `invalid operator API URL ${JSON.stringify(url)}`);
    }
    this.#token = token;
    const maxSockets = opts.maxSockets ?? 16;
    this.#agent =
      this.base.protocol === 'https:'
        ? new HttpsAgent({ keepAlive: true, maxSockets, ...(opts.ca === undefined ? {} : { ca: opts.ca }) })
        : new HttpAgent({ keepAlive: true, maxSockets });
  }

  request(
    method: 'GET' | 'POST' | 'PATCH' | 'PUT',
    path: string,
    body?: unknown,
    raw?: { readonly bytes: Uint8Array; readonly contentType: string },
  ): Promise<ApiResult> {
    const url = new URL(path, this.base);
    const data =
      raw !== undefined
        ? Buffer.from(raw.bytes)
        : body === undefined
          ? undefined
          : Buffer.from(JSON.stringify(body));
    const contentType = raw?.contentType ?? 'application/json';
    const req = url.protocol === 'https:' ? httpsRequest : httpRequest;
    return new Promise((resolve, reject) => {
      const r = req(
        url,
        {
          method,
          agent: this.#agent,
          headers: {
            authorization: `Bearer ${this.#token}`,
            accept: 'application/json',
            ...(data === undefined ? {} : { 'content-type': contentType, 'content-length': data.length }),
          },
          timeout: 60_000,
        },
        (res) => {
          const parts: Buffer[] = [];
          let n = 0;
          res.on('data', (c: Buffer) => {
            n += c.length;
            if (n > MAX_RESPONSE) {
              res.destroy();
              reject(new CliError('CLI_SERVER', `${method} ${path}: response over ${MAX_RESPONSE} bytes`));
              return;
            }
            parts.push(c);
          });
          res.on('error', (e) => {
            reject(new CliError('CLI_IO', `${method} ${path}: ${e.message}`, { cause: e }));
          });
          res.on('end', () => {
            const text = Buffer.concat(parts).toString('utf8');
            let json: unknown = undefined;
            if (text !== '') {
              try {
                json = JSON.parse(text);
              } catch {
                reject(
                  new CliError('CLI_SERVER', `${method} ${path}: HTTP ${res.statusCode ?? 0}, not JSON`),
                );
                return;
              }
            }
            resolve({ status: res.statusCode ?? 0, json });
          });
        },
      );
      r.on('timeout', () => r.destroy(new Error('timed out')));
      r.on('error', (e) => {
        reject(new CliError('CLI_IO', `${method} ${path}: ${e.message}`, { cause: e }));
      });
      r.end(data);
    });
  }

  /** A request that must answer `expect`; the body as T (the caller's shape; the server validates its responses). */
  async call<T>(
    method: 'GET' | 'POST' | 'PATCH' | 'PUT',
    path: string,
    body: unknown,
    expect: number | readonly number[],
    raw?: { readonly bytes: Uint8Array; readonly contentType: string },
  ): Promise<T> {
    const r = await this.request(method, path, body, raw);
    if (typeof expect === 'number' ? r.status !== expect : !expect.includes(r.status)) {
      const code =
        typeof r.json === 'object' && r.json !== null && 'code' in r.json ? String(r.json.code) : undefined;
      throw new CliError(
        r.status === 401 || r.status === 403 ? 'CLI_DENIED' : r.status >= 500 ? 'CLI_SERVER' : 'CLI_REFUSED',
        `${method} ${path}: HTTP ${r.status}${code === undefined ? '' : ` ${code}`}`,
        code === undefined ? {} : { problem: code },
      );
    }
    return r.json as T;
  }

  /** Pages through GET /v1/devices for the first device matching `pred`. */
  async findDevice(pred: (d: ServerDevice) => boolean): Promise<ServerDevice | undefined> {
    let after: string | undefined;
    for (;;) {
      const q = `/v1/devices?limit=1000${after === undefined ? '' : `&after=${encodeURIComponent(after)}`}`;
      const page = await this.call<{ items: ServerDevice[] }>('GET', q, undefined, 200);
      const hit = page.items.find(pred);
      if (hit !== undefined) return hit;
      if (page.items.length === 0) return undefined;
      after = page.items[page.items.length - 1]!.id;
    }
  }

  close(): void {
    this.#agent.destroy();
  }
}

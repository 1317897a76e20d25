/**
 * The demo's operator-API client: bearer token, JSON or binary bodies, bounded responses, RFC 9457 problems as
 * typed errors. (The `rotor release|rollout|device` commands have their own client in api.ts.)
 */
import { CliError } from '../errors.ts';

const MAX_RESPONSE = 8 * 1024 * 1024;

export interface Reply {
  readonly status: number;
  readonly json: unknown;
}

export class DemoClient {
  readonly base: string;
  readonly #token: string;

  constructor(base: string, token: string) {
    this.base = base.replace(/\/$/, '');
    this.#token = token;
  }

  withToken(token: string): DemoClient {
    return new DemoClient(this.base, token);
  }

  async request(
    method: string,
    path: string,
    body?: unknown,
    contentType = 'application/json',
  ): Promise<Reply> {
    const headers: Record<string, string> = { authorization: `Bearer ${this.#token}` };
    let payload: Uint8Array | string | undefined;
    if (body instanceof Uint8Array) {
      headers['content-type'] = contentType;
      payload = body;
    } else if (body !== undefined) {
      headers['content-type'] = 'application/json';
      payload = JSON.stringify(body);
    }
    let res: Response;
    try {
      res = await fetch(`${this.base}${path}`, {
        method,
        headers,
        ...(payload === undefined ? {} : { body: payload }),
      });
    } catch (e) {
      throw new CliError('CLI_IO', `${method} ${path}: ${e instanceof Error ? e.message : String(e)}`);
    }
    const buf = new Uint8Array(await res.arrayBuffer());
    if (buf.length > MAX_RESPONSE) throw new CliError('CLI_INPUT', `${method} ${path}: response too large`);
    let json: unknown = undefined;
    if (buf.length > 0 && (res.headers.get('content-type') ?? '').includes('json')) {
      try {
        json = JSON.parse(new TextDecoder().decode(buf));
      } catch {
        throw new CliError('CLI_INPUT', `${method} ${path}: malformed JSON`);
      }
    }
    return { status: res.status, json };
  }

  /** A request that must answer one of `ok`; anything else becomes an error naming the problem's code. */
  async expect<T>(
    ok: readonly number[],
    method: string,
    path: string,
    body?: unknown,
    contentType?: string,
  ): Promise<T> {
    const r = await this.request(method, path, body, contentType);
    if (!ok.includes(r.status)) {
      const p = (r.json ?? {}) as { code?: unknown; detail?: unknown };
      throw new CliError(
        'CLI_IO',
        `${method} ${path}: ${r.status} ${typeof p.code === 'string' ? p.code : ''} ${typeof p.detail === 'string' ? p.detail : ''}`.trim(),
      );
    }
    return r.json as T;
  }

  get<T>(path: string): Promise<T> {
    return this.expect<T>([200], 'GET', path);
  }

  post<T>(path: string, body?: unknown, ok: readonly number[] = [200, 201]): Promise<T> {
    return this.expect<T>(ok, 'POST', path, body ?? {});
  }
}

export interface RolloutInfo {
  readonly id: string;
  readonly state: 'active' | 'paused' | 'cancelled' | 'completed';
  readonly currentPhase: number;
  readonly pauseReason: string | null;
  readonly counts: Record<string, number>;
}

export interface DeviceInfo {
  readonly id: string;
  readonly name: string;
  readonly group: string | null;
  readonly tags: string[];
  readonly lastSeenMs: number | null;
  readonly attributes: Record<string, string>;
}

/** All devices of a group (pages of 500). */
export async function listDevices(c: DemoClient, group: string): Promise<DeviceInfo[]> {
  const out: DeviceInfo[] = [];
  let after: string | undefined;
  for (;;) {
    const q = new URLSearchParams({ limit: '500', group, ...(after === undefined ? {} : { after }) });
    const page = await c.get<{ items: DeviceInfo[] }>(`/v1/devices?${q.toString()}`);
    out.push(...page.items);
    if (page.items.length < 500) return out;
    after = page.items[page.items.length - 1]!.id;
  }
}

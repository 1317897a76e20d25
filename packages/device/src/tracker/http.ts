/**
 * The device's HTTPS client to the status tracker / firmware server: mutual TLS with the device's client
 * certificate (RFC 8446 §4.4.2 client Certificate; the server authenticates the device by it), one keep-alive agent
 * per device, bounded response bodies, a deadline per request, typed errors. Everything the server sends is
 * untrusted input (RFC 9019 §3): sizes are capped before buffering and URLs never leave the server's origin.
 *
 * Also the payload source the firmware consumer uses for the server's content-addressed Range endpoint
 * (`GET /d/v1/payloads/<sha256>`, RFC 9110 §14 ranges), over the same agent.
 */
import { request as httpRequest, Agent as HttpAgent, type IncomingMessage } from 'node:http';
import { request as httpsRequest, Agent as HttpsAgent } from 'node:https';
import { DeviceError } from '../errors.ts';
import { parseContentRange, TransientError, type ByteSource, type SourceResponse } from '../fetch/source.ts';

export interface TlsIdentity {
  /** The device's client certificate chain (PEM). */
  readonly cert: string;
  /** The device's TLS private key (PEM). */
  readonly key: string;
  /**
   * A renewing identity (credential.ts, an RFC 3820 proxy credential): the identity for the next request, renewed
   * when due. Connections are pooled per identity, so a renewed credential opens new connections.
   */
  readonly current?: () => Promise<TlsIdentity>;
}

export interface TrackerHttpOptions {
  /** The server's device API base URL, e.g. https://fleet.example:8443 (https; http only when `allowHttp`). */
  readonly baseUrl: string;
  /** Client certificate and key for mutual TLS. */
  readonly identity?: TlsIdentity;
  /** CA certificates (PEM) that the server's certificate must chain to; default: the system store. */
  readonly ca?: string | readonly string[];
  /** Plain http (tests against a stub only; a real device API is mutual TLS). Default false. */
  readonly allowHttp?: boolean;
  /** Deadline of one request, ms (default 30 s). */
  readonly timeoutMs?: number;
}

export interface HttpResult {
  readonly status: number;
  readonly contentType: string | undefined;
  readonly body: Uint8Array;
}

export interface RequestOptions {
  readonly body?: Uint8Array;
  readonly contentType?: string;
  readonly accept?: string;
  /** Largest body accepted; a longer (or longer-announced) body fails the request (TRACKER_PROTOCOL). */
  readonly maxBody: number;
  readonly signal?: AbortSignal;
}

/** Media type of a response without parameters, lower-cased. */
function mediaType(v: string | string[] | undefined): string | undefined {
  const s = Array.isArray(v) ? v[0] : v;
  if (s === undefined || s.length > 256) return undefined;
  return s.split(';')[0]?.trim().toLowerCase();
}

export class TrackerHttp {
  readonly base: URL;
  readonly #agent: HttpAgent | HttpsAgent;
  readonly #https: boolean;
  readonly #timeoutMs: number;
  readonly #identity: TlsIdentity | undefined;

  constructor(o: TrackerHttpOptions) {
    let base: URL;
    try {
      base = new URL(o.baseUrl);
    } catch {
      throw new DeviceError('TRACKER_PROTOCOL', `invalid server URL ${JSON.stringify(o.baseUrl)}`);
    }
    this.#https = base.protocol === 'https:';
    if (!this.#https && !(base.protocol === 'http:' && o.allowHttp === true))
      throw new DeviceError('TRACKER_PROTOCOL', `the device API is https (got ${base.protocol})`);
    this.base = base;
    this.#timeoutMs = o.timeoutMs ?? 30_000;
    this.#identity = o.identity;
    this.#agent = this.#https
      ? new HttpsAgent({
          keepAlive: true,
          maxSockets: 2,
          // RFC 8446: TLS 1.3 preferred; 1.2 is the floor the server also sets.
          minVersion: 'TLSv1.2',
          // No TLS session resumption with a renewing (RFC 3820 proxy) identity: on a resumed session the server's
          // OpenSSL keeps only the peer's leaf certificate, not the chain presented in the full handshake, so the
          // proxy arrives without the device certificate that issued it and is refused (server device-tls.ts,
          // DEVICE_PROXY_INVALID). A plain client certificate resumes (RFC 8446 §2.2): the session carries the
          // authenticated leaf, and the server decides by its fingerprint as after a full handshake.
          ...(o.identity?.current !== undefined ? { maxCachedSessions: 0 } : {}),
          // A renewing identity is given per request (#tls) instead.
          ...(o.identity === undefined || o.identity.current !== undefined
            ? {}
            : { cert: o.identity.cert, key: o.identity.key }),
          ...(o.ca === undefined ? {} : { ca: typeof o.ca === 'string' ? o.ca : [...o.ca] }),
        })
      : new HttpAgent({ keepAlive: true, maxSockets: 2 });
  }

  /**
   * Resolves a server-supplied reference against the base URL. Only a path on the server's own origin is
   * accepted: a response must not send the device's mutual-TLS client to another host (RFC 9019 §3: the device
   * talks to its status tracker and firmware server).
   */
  resolve(ref: string): URL {
    if (!ref.startsWith('/') || ref.startsWith('//') || ref.length > 2048 || /[\s\\#?]/.test(ref))
      throw new DeviceError('TRACKER_PROTOCOL', `not a server path: ${JSON.stringify(ref.slice(0, 100))}`);
    const u = new URL(ref, this.base);
    if (u.origin !== this.base.origin)
      throw new DeviceError('TRACKER_PROTOCOL', 'a server reference leaves the server origin');
    return u;
  }

  /** Whether an absolute URI names this server's origin. */
  sameOrigin(uri: string): boolean {
    try {
      return new URL(uri).origin === this.base.origin;
    } catch {
      return false;
    }
  }

  /**
   * One request; the body is read up to `maxBody` bytes. Network failures and timeouts are TRACKER_UNREACHABLE
   * (the caller retries later); the status is returned as is for the caller to interpret.
   */
  async request(method: 'GET' | 'POST', path: string, o: RequestOptions): Promise<HttpResult> {
    const url = this.resolve(path);
    const tls = await this.#tls();
    const headers: Record<string, string> = { 'accept-encoding': 'identity' };
    if (o.accept !== undefined) headers.accept = o.accept;
    if (o.body !== undefined) {
      headers['content-length'] = String(o.body.length);
      if (o.contentType !== undefined) headers['content-type'] = o.contentType;
    } else if (method === 'POST') headers['content-length'] = '0';
    return new Promise<HttpResult>((resolve, reject) => {
      let settled = false;
      const fail = (e: DeviceError): void => {
        if (settled) return;
        settled = true;
        req.destroy();
        reject(e);
      };
      const timer = setTimeout(() => {
        fail(
          new DeviceError(
            'TRACKER_UNREACHABLE',
            `${method} ${url.pathname}: no answer in ${this.#timeoutMs} ms`,
          ),
        );
      }, this.#timeoutMs);
      const onResponse = (res: IncomingMessage): void => {
        const status = res.statusCode ?? 0;
        const lenRaw = res.headers['content-length'];
        if (lenRaw !== undefined && (!/^\d{1,15}$/.test(lenRaw) || Number(lenRaw) > o.maxBody)) {
          res.destroy();
          clearTimeout(timer);
          fail(
            new DeviceError(
              'TRACKER_PROTOCOL',
              `${method} ${url.pathname}: body of ${lenRaw} bytes exceeds ${o.maxBody}`,
            ),
          );
          return;
        }
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          size += c.length;
          if (size > o.maxBody) {
            res.destroy();
            clearTimeout(timer);
            fail(
              new DeviceError(
                'TRACKER_PROTOCOL',
                `${method} ${url.pathname}: body exceeds ${o.maxBody} bytes`,
              ),
            );
            return;
          }
          chunks.push(c);
        });
        res.on('end', () => {
          clearTimeout(timer);
          if (settled) return;
          settled = true;
          resolve({
            status,
            contentType: mediaType(res.headers['content-type']),
            body: new Uint8Array(Buffer.concat(chunks)),
          });
        });
        res.on('error', (e) => {
          clearTimeout(timer);
          fail(
            new DeviceError('TRACKER_UNREACHABLE', `${method} ${url.pathname}: ${e.message}`, { cause: e }),
          );
        });
      };
      const req = (this.#https ? httpsRequest : httpRequest)(
        url,
        {
          method,
          headers,
          agent: this.#agent,
          ...tls,
          ...(o.signal === undefined ? {} : { signal: o.signal }),
        },
        onResponse,
      );
      req.on('error', (e) => {
        clearTimeout(timer);
        fail(new DeviceError('TRACKER_UNREACHABLE', `${method} ${url.pathname}: ${e.message}`, { cause: e }));
      });
      req.end(
        o.body === undefined ? undefined : Buffer.from(o.body.buffer, o.body.byteOffset, o.body.length),
      );
    });
  }

  /**
   * A payload source over this client (same agent, same client certificate). `map` turns a manifest URI into a
   * server path, or undefined when the URI is not served by this server (then `fallback` opens it, if given).
   */
  payloadSource(map: (uri: string) => string | undefined, fallback?: ByteSource): ByteSource {
    return {
      open: (uri, o) => {
        let path: string | undefined;
        try {
          path = map(uri);
        } catch (e) {
          return Promise.reject(e instanceof Error ? e : new Error(String(e)));
        }
        if (path === undefined) {
          if (fallback !== undefined) return fallback.open(uri, o);
          return Promise.reject(new DeviceError('FETCH_FAILED', `no source serves ${uri}`));
        }
        const url = this.resolve(path);
        return this.#tls().then((tls) => this.#openRange(url, o.offset, o.etag, o.signal, tls));
      },
    };
  }

  /** GET with `Range: bytes=<offset>-` and If-Range (RFC 9110 §14.2, §13.1.5); the body streams. */
  #openRange(
    url: URL,
    offset: number,
    etag: string | undefined,
    signal: AbortSignal,
    tls: { cert?: string; key?: string },
  ): Promise<SourceResponse> {
    const headers: Record<string, string> = { 'accept-encoding': 'identity' };
    if (offset > 0) {
      headers.range = `bytes=${offset}-`;
      if (etag !== undefined) headers['if-range'] = etag;
    }
    return new Promise<SourceResponse>((resolve, reject) => {
      const req = (this.#https ? httpsRequest : httpRequest)(
        url,
        { method: 'GET', headers, agent: this.#agent, signal, ...tls },
        (res) => {
          const close = (): void => {
            res.destroy();
          };
          try {
            const status = res.statusCode ?? 0;
            const one = (name: string): string | undefined => {
              const v = res.headers[name];
              const s = Array.isArray(v) ? v.join(',') : v;
              if (s !== undefined && s.length > 1024)
                throw new DeviceError('FETCH_PROTOCOL', `${name} header too long`);
              return s;
            };
            const etagRaw = one('etag');
            const strong = etagRaw !== undefined && !etagRaw.startsWith('W/') ? etagRaw : undefined;
            const lenRaw = one('content-length');
            const len = lenRaw !== undefined && /^\d{1,15}$/.test(lenRaw) ? Number(lenRaw) : undefined;
            if (status === 200) {
              resolve({ start: 0, total: len, etag: strong, body: res, close });
              return;
            }
            if (status === 206) {
              const cr = one('content-range');
              if (cr === undefined) throw new DeviceError('FETCH_PROTOCOL', '206 without Content-Range');
              const r = parseContentRange(cr);
              if (r.first !== offset)
                throw new DeviceError('FETCH_PROTOCOL', `206 starts at ${r.first}, asked ${offset}`);
              if (len !== undefined && len !== r.last - r.first + 1)
                throw new DeviceError('FETCH_PROTOCOL', 'Content-Length disagrees with Content-Range');
              resolve({ start: r.first, total: r.total, etag: strong, body: res, close });
              return;
            }
            close();
            if (status === 416) {
              // RFC 9110 §15.5.17: the offset lies beyond the representation: start over.
              resolve({ start: 0, total: 0, etag: undefined, body: none(), close: () => undefined });
              return;
            }
            if (status >= 500 || status === 429 || status === 408)
              throw new TransientError(`HTTP ${status} from ${url.host}`);
            throw new DeviceError('FETCH_FAILED', `HTTP ${status} for ${url.pathname}`);
          } catch (e) {
            close();
            reject(e instanceof Error ? e : new Error(String(e)));
          }
        },
      );
      req.setTimeout(this.#timeoutMs, () => {
        req.destroy(new TransientError('connection idle timeout'));
      });
      req.on('error', (e) => {
        reject(signal.aborted ? e : new TransientError(e.message));
      });
      req.end();
    });
  }

  /**
   * Client certificate and key for the next request when the identity renews itself (credential.ts); the agent
   * keys its connection pool by them (Node's https.Agent#getName), so sockets of an older credential are not reused.
   */
  async #tls(): Promise<{ cert?: string; key?: string }> {
    const id = this.#identity;
    if (!this.#https || id?.current === undefined) return {};
    const c = await id.current();
    return { cert: c.cert, key: c.key };
  }

  /** Closes idle keep-alive sockets. */
  close(): void {
    this.#agent.destroy();
  }
}

async function* none(): AsyncGenerator<Uint8Array> {
  // no bytes
}

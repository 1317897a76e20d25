/**
 * Byte sources for payload retrieval: HTTP(S) with Range requests (RFC 9110 §14), and an in-memory source for
 * tests and simulations. A source only opens a response at an offset; retries, deadlines, bounds and resume
 * bookkeeping are the downloader's (download.ts).
 */
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { DeviceError } from '../errors.ts';

export interface OpenOptions {
  /** First byte wanted (0 = the whole representation). */
  readonly offset: number;
  /** Validator of the partial representation already held (RFC 9110 §13.1.5 If-Range). */
  readonly etag: string | undefined;
  readonly signal: AbortSignal;
}

export interface SourceResponse {
  /** Offset of the first body byte: `offset` for a partial response, 0 when the whole representation comes. */
  readonly start: number;
  /** Length of the whole representation when the server states it. */
  readonly total: number | undefined;
  /** Strong entity tag of the representation, when the server sends one. */
  readonly etag: string | undefined;
  readonly body: AsyncIterable<Uint8Array>;
  /**
   * True when every body piece is a fresh buffer handed over to the consumer, which may free (detach) it once
   * consumed. Sources that yield views of shared memory leave it unset.
   */
  readonly owned?: boolean;
  /** Releases the connection (idempotent). */
  close(): void;
}

export interface ByteSource {
  open(uri: string, opts: OpenOptions): Promise<SourceResponse>;
}

/** A failure worth retrying (network error, 5xx, 429, premature end). Other DeviceErrors are final. */
export class TransientError extends Error {
  override readonly name = 'TransientError';
}

const MAX_HEADER_VALUE = 1024;

/** RFC 9110 §14.4: Content-Range: bytes first-last/complete-length (complete length may be '*'). */
export function parseContentRange(v: string): { first: number; last: number; total: number | undefined } {
  const m = /^bytes (\d{1,15})-(\d{1,15})\/(\d{1,15}|\*)$/.exec(v);
  if (m === null) throw new DeviceError('FETCH_PROTOCOL', `malformed Content-Range ${JSON.stringify(v)}`);
  const first = Number(m[1]);
  const last = Number(m[2]);
  const total = m[3] === '*' ? undefined : Number(m[3]);
  if (last < first || (total !== undefined && last >= total))
    throw new DeviceError('FETCH_PROTOCOL', `inconsistent Content-Range ${JSON.stringify(v)}`);
  return { first, last, total };
}

function header(res: IncomingMessage, name: string): string | undefined {
  const v = res.headers[name];
  if (v === undefined) return undefined;
  const s = Array.isArray(v) ? v.join(',') : v;
  if (s.length > MAX_HEADER_VALUE) throw new DeviceError('FETCH_PROTOCOL', `${name} header too long`);
  return s;
}

export interface HttpSourceOptions {
  /** Extra CA certificates (PEM) to trust for https (e.g. a test CA or the fleet's private CA). */
  readonly ca?: string | Buffer | readonly (string | Buffer)[];
  /** Socket idle timeout per attempt, ms (default 30000): a stalled connection fails the attempt. */
  readonly idleTimeoutMs?: number;
  /** Allow plain http:// (default true; production fleets set false). */
  readonly allowHttp?: boolean;
}

/**
 * HTTP(S) source. Sends `Range: bytes=<offset>-` with `If-Range: <etag>` when resuming (RFC 9110 §14.2,
 * §13.1.5), so a changed representation comes back whole (200) instead of being spliced. Redirects are not
 * followed (the manifest names the resource; RFC 9019 §3 the firmware server).
 */
export function httpSource(opts: HttpSourceOptions = {}): ByteSource {
  return {
    open(uri, o) {
      let url: URL;
      try {
        url = new URL(uri);
      } catch {
        return Promise.reject(new DeviceError('FETCH_PROTOCOL', `invalid URI ${JSON.stringify(uri)}`));
      }
      const https = url.protocol === 'https:';
      if (!https && !(url.protocol === 'http:' && opts.allowHttp !== false))
        return Promise.reject(new DeviceError('FETCH_PROTOCOL', `unsupported URI scheme ${url.protocol}`));
      const headers: Record<string, string> = { 'accept-encoding': 'identity' };
      if (o.offset > 0) {
        headers.range = `bytes=${o.offset}-`;
        if (o.etag !== undefined) headers['if-range'] = o.etag;
      }
      return new Promise<SourceResponse>((resolve, reject) => {
        const onResponse = (res: IncomingMessage): void => {
          const close = (): void => {
            res.destroy();
          };
          try {
            const status = res.statusCode ?? 0;
            const etagRaw = header(res, 'etag');
            // Only a strong validator may be used for If-Range (RFC 9110 §13.1.5).
            const etag = etagRaw !== undefined && !etagRaw.startsWith('W/') ? etagRaw : undefined;
            const lenRaw = header(res, 'content-length');
            const len = lenRaw !== undefined && /^\d{1,15}$/.test(lenRaw) ? Number(lenRaw) : undefined;
            if (status === 200) {
              // node:http allocates each body piece afresh (one per socket read): the consumer may free it.
              resolve({ start: 0, total: len, etag, body: res, owned: true, close });
              return;
            }
            if (status === 206) {
              const cr = header(res, 'content-range');
              if (cr === undefined) throw new DeviceError('FETCH_PROTOCOL', '206 without Content-Range');
              const r = parseContentRange(cr);
              if (r.first !== o.offset)
                throw new DeviceError('FETCH_PROTOCOL', `206 starts at ${r.first}, asked ${o.offset}`);
              if (len !== undefined && len !== r.last - r.first + 1)
                throw new DeviceError('FETCH_PROTOCOL', 'Content-Length disagrees with Content-Range');
              resolve({ start: r.first, total: r.total, etag, body: res, owned: true, close });
              return;
            }
            close();
            if (status === 416) {
              // RFC 9110 §15.5.17: the offset is past the representation; start over.
              resolve({ start: 0, total: 0, etag: undefined, body: emptyBody(), close: () => undefined });
              return;
            }
            if (status >= 500 || status === 429 || status === 408)
              throw new TransientError(`HTTP ${status} from ${url.host}`);
            throw new DeviceError('FETCH_FAILED', `HTTP ${status} for ${uri}`);
          } catch (e) {
            close();
            reject(e instanceof Error ? e : new Error(String(e)));
          }
        };
        const req = (https ? httpsRequest : httpRequest)(
          url,
          {
            method: 'GET',
            headers,
            signal: o.signal,
            ...(https && opts.ca !== undefined
              ? { ca: opts.ca as string | Buffer | (string | Buffer)[] }
              : {}),
          },
          onResponse,
        );
        req.setTimeout(opts.idleTimeoutMs ?? 30_000, () => {
          req.destroy(new TransientError('connection idle timeout'));
        });
        req.on('error', (e) => {
          reject(o.signal.aborted ? e : new TransientError(e.message));
        });
        req.end();
      });
    },
  };
}

async function* emptyBody(): AsyncGenerator<Uint8Array> {
  // no bytes
}

/**
 * An in-memory source (tests, the fleet simulator): serves `resources` with Range semantics, optionally failing
 * after `failAfter` bytes of a response to simulate interruptions.
 */
export function memorySource(
  resources: ReadonlyMap<string, Uint8Array>,
  opts: { pieceSize?: number; failAfter?: number; etag?: (uri: string) => string | undefined } = {},
): ByteSource {
  return {
    open(uri, o) {
      const r = resources.get(uri);
      if (r === undefined) return Promise.reject(new DeviceError('FETCH_FAILED', `HTTP 404 for ${uri}`));
      const etag = opts.etag?.(uri);
      const partial = o.offset > 0 && (o.etag === undefined || o.etag === etag) && o.offset < r.length;
      const start = partial ? o.offset : 0;
      const piece = opts.pieceSize ?? 4096;
      const failAfter = opts.failAfter;
      let closed = false;
      async function* body(): AsyncGenerator<Uint8Array> {
        let sent = 0;
        for (let off = start; off < r!.length && !closed; off += piece) {
          if (o.signal.aborted) throw new TransientError('aborted');
          const end = Math.min(r!.length, off + piece);
          if (failAfter !== undefined && sent + (end - off) > failAfter) {
            yield r!.subarray(off, off + (failAfter - sent));
            throw new TransientError('connection reset (simulated)');
          }
          sent += end - off;
          await Promise.resolve();
          yield r!.subarray(off, end);
        }
      }
      return Promise.resolve({
        start,
        total: r.length,
        etag,
        body: body(),
        close: () => {
          closed = true;
        },
      });
    },
  };
}

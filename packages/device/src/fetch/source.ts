/**
 * Byte sources for payload retrieval: HTTP(S) with Range requests (RFC 9110 §14), and an in-memory source for
 * tests and simulations. A source only opens a response at an offset; retries, deadlines, bounds and resume
 * bookkeeping are the downloader's (download.ts).
 */
import type { IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { connect } from 'node:net';
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
  /**
   * Push-style alternative to iterating `body` (use one or the other): calls `take` with each piece, a view of a
   * reused read buffer — valid during the call only, or, when `take` returns a promise, until it settles (the
   * source reads nothing more meanwhile). Resolves at the end of the body, rejects when the transfer fails. No
   * buffer is allocated per piece: memory stays bounded by construction, not by when the GC runs.
   */
  readonly pipe?: (take: (piece: Uint8Array) => Promise<void> | undefined) => Promise<void>;
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
 * followed (the manifest names the resource; RFC 9019 §3 the firmware server). http:// goes through a minimal
 * client that reads into one reused buffer and offers `pipe` (no allocation per socket read: node:http's parser
 * leaves a 64 KiB garbage buffer per read, which piled up to ~64 MiB of RSS before V8 collected it); https://
 * through node:https (TLS decrypts into fresh buffers anyway, which the consumer frees).
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
      if (!https) return plainHttp(url, uri, headers, o, opts.idleTimeoutMs ?? 30_000);
      return new Promise<SourceResponse>((resolve, reject) => {
        const onResponse = (res: IncomingMessage): void => {
          const close = (): void => {
            res.destroy();
          };
          try {
            // node:http allocates each body piece afresh (one per socket read): the consumer may free it.
            const status = res.statusCode ?? 0;
            const r = classify(status, (n) => header(res, n), o, url, uri);
            if (status !== 416) {
              resolve({ ...r, body: res, owned: true, close });
              return;
            }
            close();
            resolve({ start: 0, total: 0, etag: undefined, body: emptyBody(), close: () => undefined });
          } catch (e) {
            close();
            reject(e instanceof Error ? e : new Error(String(e)));
          }
        };
        const req = httpsRequest(
          url,
          {
            method: 'GET',
            headers,
            signal: o.signal,
            ...(opts.ca !== undefined ? { ca: opts.ca as string | Buffer | (string | Buffer)[] } : {}),
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

/**
 * What a response's status and headers mean for the download: the body's place in the representation (200,
 * 206), or `{ start: 0, total: 0 }` for a 416 (start over; no body); throws for the rest (transient or final).
 */
function classify(
  status: number,
  get: (name: string) => string | undefined,
  o: OpenOptions,
  url: URL,
  uri: string,
): { start: number; total: number | undefined; etag: string | undefined } {
  const etagRaw = get('etag');
  // Only a strong validator may be used for If-Range (RFC 9110 §13.1.5).
  const etag = etagRaw !== undefined && !etagRaw.startsWith('W/') ? etagRaw : undefined;
  const lenRaw = get('content-length');
  const len = lenRaw !== undefined && /^\d{1,15}$/.test(lenRaw) ? Number(lenRaw) : undefined;
  if (status === 200) return { start: 0, total: len, etag };
  if (status === 206) {
    const cr = get('content-range');
    if (cr === undefined) throw new DeviceError('FETCH_PROTOCOL', '206 without Content-Range');
    const r = parseContentRange(cr);
    if (r.first !== o.offset)
      throw new DeviceError('FETCH_PROTOCOL', `206 starts at ${r.first}, asked ${o.offset}`);
    if (len !== undefined && len !== r.last - r.first + 1)
      throw new DeviceError('FETCH_PROTOCOL', 'Content-Length disagrees with Content-Range');
    return { start: r.first, total: r.total, etag };
  }
  // RFC 9110 §15.5.17: the offset is past the representation; start over.
  if (status === 416) return { start: 0, total: 0, etag: undefined };
  if (status >= 500 || status === 429 || status === 408)
    throw new TransientError(`HTTP ${status} from ${url.host}`);
  throw new DeviceError('FETCH_FAILED', `HTTP ${status} for ${uri}`);
}

/**
 * Bytes per socket read of the plain-HTTP client (one buffer per connection, reused for every read). 1 MiB: a
 * fast sender fills more than 256 KiB between two reads, and each read is a callback plus a staging pass; the
 * payload bench's CPU per byte dropped ~10% against 256 KiB (memory: one such buffer per transfer).
 */
const READ_BUFFER = 1024 * 1024;
const MAX_HEAD = 64 * 1024;
type Take = (piece: Uint8Array) => Promise<void> | undefined;

/**
 * A minimal HTTP/1.1 client for http:// (one GET per connection, `Connection: close`): the socket reads into one
 * reused buffer (net `onread`) and body pieces are views of it, handed to the consumer synchronously; the socket
 * is paused while the consumer waits. Bodies: Content-Length, chunked (RFC 9112 §7.1) or until close.
 */
function plainHttp(
  url: URL,
  uri: string,
  headers: Record<string, string>,
  o: OpenOptions,
  idleTimeoutMs: number,
): Promise<SourceResponse> {
  for (const v of Object.values(headers))
    if (/[\r\n]/.test(v)) return Promise.reject(new DeviceError('FETCH_PROTOCOL', 'invalid request header'));
  return new Promise<SourceResponse>((resolve, reject) => {
    const buf = Buffer.allocUnsafe(READ_BUFFER);
    let head: Buffer = Buffer.alloc(0);
    let responded = false;
    let failure: Error | undefined;
    // Body state.
    let mode: 'length' | 'chunked' | 'close' = 'close';
    let remaining = 0;
    let chunkState: 'size' | 'data' | 'crlf' | 'trailer' = 'size';
    let line = '';
    let ended = false;
    let leftover: Uint8Array | undefined;
    let take: Take | undefined;
    let done: { resolve: () => void; reject: (e: Error) => void } | undefined;

    const sock = connect({
      host: url.hostname.replace(/^\[(.*)\]$/, '$1'),
      port: url.port === '' ? 80 : Number(url.port),
      onread: { buffer: buf, callback: (n: number, b: Buffer) => onRead(b.subarray(0, n)) },
    });
    const close = (): void => {
      sock.destroy();
    };
    const onAbort = (): void => {
      sock.destroy(new Error('aborted'));
    };
    o.signal.addEventListener('abort', onAbort, { once: true });
    sock.setTimeout(idleTimeoutMs, () => {
      sock.destroy(new TransientError('connection idle timeout'));
    });
    const fail = (e: unknown): void => {
      const err = e instanceof Error ? e : new Error(String(e));
      failure ??= err;
      sock.destroy();
      if (!responded) {
        responded = true;
        reject(o.signal.aborted || err instanceof DeviceError ? err : new TransientError(err.message));
      } else done?.reject(failure);
    };
    const finish = (): void => {
      ended = true;
      sock.destroy();
      done?.resolve();
    };
    sock.on('error', fail);
    sock.on('close', () => {
      o.signal.removeEventListener('abort', onAbort);
      if (ended) return;
      if (
        mode === 'close' &&
        responded &&
        failure === undefined &&
        leftover === undefined &&
        take !== undefined
      ) {
        finish();
        return;
      }
      fail(
        new TransientError(responded ? 'connection closed before the end of the body' : 'connection closed'),
      );
    });
    sock.on('connect', () => {
      const lines = [`GET ${url.pathname}${url.search} HTTP/1.1`, `Host: ${url.host}`, 'Connection: close'];
      for (const [k, v] of Object.entries(headers)) lines.push(`${k}: ${v}`);
      sock.write(`${lines.join('\r\n')}\r\n\r\n`);
    });

    /** Body bytes: delivered to `take`; returns a promise when the consumer must be waited for. */
    const body = (data: Uint8Array, from: number): Promise<void> | undefined => {
      let off = from;
      while (off < data.length && !ended) {
        if (mode === 'close' || (mode === 'chunked' && chunkState === 'data') || mode === 'length') {
          const n = mode === 'close' ? data.length - off : Math.min(remaining, data.length - off);
          const piece = data.subarray(off, off + n);
          off += n;
          if (mode !== 'close') remaining -= n;
          if (remaining === 0 && mode === 'length') ended = true;
          if (remaining === 0 && mode === 'chunked') chunkState = 'crlf';
          const p = n > 0 ? take!(piece) : undefined;
          if (ended) {
            const fin = (): void => {
              finish();
            };
            if (p === undefined) fin();
            else return p.then(fin);
            return undefined;
          }
          if (p !== undefined) {
            const at = off;
            return p.then(() => body(data, at));
          }
          continue;
        }
        // Chunked framing: size lines, the CRLF after each chunk, trailers.
        const c = data[off++]!;
        if (c !== 10) {
          if (c !== 13) line += String.fromCharCode(c);
          if (line.length > 1024) throw new DeviceError('FETCH_PROTOCOL', 'chunk header too long');
          continue;
        }
        if (chunkState === 'crlf') {
          if (line !== '') throw new DeviceError('FETCH_PROTOCOL', 'malformed chunk');
          chunkState = 'size';
        } else if (chunkState === 'size') {
          const m = /^([0-9a-fA-F]{1,12})(;.*)?$/.exec(line.trim());
          if (m === null) throw new DeviceError('FETCH_PROTOCOL', 'malformed chunk size');
          remaining = parseInt(m[1]!, 16);
          chunkState = remaining === 0 ? 'trailer' : 'data';
        } else if (chunkState === 'trailer' && line === '') {
          finish();
          return undefined;
        }
        line = '';
      }
      return undefined;
    };

    const onRead = (data: Uint8Array): boolean => {
      if (failure !== undefined || ended) return false;
      try {
        if (responded) {
          const p = body(data, 0);
          if (p === undefined) return true;
          p.then(() => {
            if (failure === undefined && !ended) sock.resume();
          }, fail);
          return false;
        }
        head = Buffer.concat([head, data]);
        const end = head.indexOf('\r\n\r\n');
        if (end < 0) {
          if (head.length > MAX_HEAD) throw new DeviceError('FETCH_PROTOCOL', 'response header too long');
          return true;
        }
        const [statusLine = '', ...fields] = head.subarray(0, end).toString('latin1').split('\r\n');
        const rest = head.subarray(end + 4);
        head = Buffer.alloc(0);
        const sm = /^HTTP\/1\.[01] (\d{3})/.exec(statusLine);
        if (sm === null) throw new DeviceError('FETCH_PROTOCOL', 'malformed status line');
        const status = Number(sm[1]);
        if (status >= 100 && status < 200) return rest.length === 0 ? true : onRead(new Uint8Array(rest));
        const hs = new Map<string, string>();
        for (const f of fields) {
          const i = f.indexOf(':');
          if (i <= 0) throw new DeviceError('FETCH_PROTOCOL', 'malformed header field');
          const k = f.slice(0, i).trim().toLowerCase();
          const v = f.slice(i + 1).trim();
          const prev = hs.get(k);
          const joined = prev === undefined ? v : `${prev}, ${v}`;
          if (joined.length > MAX_HEADER_VALUE)
            throw new DeviceError('FETCH_PROTOCOL', `${k} header too long`);
          hs.set(k, joined);
        }
        const r = classify(status, (k) => hs.get(k), o, url, uri);
        responded = true;
        if (status === 416) {
          ended = true;
          sock.destroy();
          resolve({ start: 0, total: 0, etag: undefined, body: emptyBody(), close: () => undefined });
          return false;
        }
        const te = hs.get('transfer-encoding');
        const cl = hs.get('content-length');
        if (te !== undefined) {
          if (te.trim().toLowerCase() !== 'chunked')
            throw new DeviceError('FETCH_PROTOCOL', `unsupported transfer-encoding ${te}`);
          mode = 'chunked';
        } else if (cl !== undefined) {
          if (!/^\d{1,15}$/.test(cl)) throw new DeviceError('FETCH_PROTOCOL', 'malformed Content-Length');
          mode = 'length';
          remaining = Number(cl);
          if (remaining === 0) ended = true;
        }
        // Body bytes that came with the head wait (copied) for the consumer; the socket waits too.
        leftover = rest.length > 0 ? new Uint8Array(rest) : undefined;
        const pipe = (t: Take): Promise<void> => {
          if (take !== undefined) return Promise.reject(new Error('body already consumed'));
          take = t;
          return new Promise<void>((res2, rej2) => {
            done = { resolve: res2, reject: rej2 };
            if (failure !== undefined) {
              rej2(failure);
              return;
            }
            if (ended && leftover === undefined) {
              res2();
              return;
            }
            const first = leftover;
            leftover = undefined;
            let p: Promise<void> | undefined;
            try {
              p = first === undefined ? undefined : body(first, 0);
            } catch (e) {
              fail(e);
              return;
            }
            const go = (): void => {
              if (failure === undefined && !ended) sock.resume();
              else if (ended) finish();
            };
            if (p === undefined) go();
            else p.then(go, fail);
          });
        };
        // The iterable form copies each piece (it outlives the read buffer) and reads on once it is taken.
        async function* iterate(): AsyncGenerator<Uint8Array> {
          const q: Uint8Array[] = [];
          const st: { over: boolean; err: unknown; wake?: () => void; drained?: () => void } = {
            over: false,
            err: undefined,
          };
          void pipe((piece) => {
            q.push(piece.slice());
            st.wake?.();
            return new Promise<void>((r) => {
              st.drained = r;
            });
          }).then(
            () => {
              st.over = true;
              st.wake?.();
            },
            (e: unknown) => {
              st.err = e instanceof Error ? e : new Error(String(e));
              st.over = true;
              st.wake?.();
            },
          );
          for (;;) {
            const next = q.shift();
            if (next !== undefined) {
              const d = st.drained;
              st.drained = undefined;
              d?.();
              yield next;
              continue;
            }
            if (st.over) {
              if (st.err instanceof Error) throw st.err;
              return;
            }
            await new Promise<void>((r) => {
              st.wake = r;
            });
            st.wake = undefined;
          }
        }
        resolve({ ...r, body: { [Symbol.asyncIterator]: iterate }, owned: true, pipe, close });
        return false;
      } catch (e) {
        fail(e);
        return false;
      }
    };
  });
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

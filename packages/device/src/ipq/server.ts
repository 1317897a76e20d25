/**
 * The enclave side of the queue: reads frames, answers every one. A request is handed to the handler; anything
 * else gets a typed error response and the server keeps serving: an oversized frame (FRAME_TOO_LARGE, its bytes
 * skipped), a frame that is not a well-formed request (FRAME_MALFORMED, with the request id when it could be
 * read), too many requests in flight (QUEUE_FULL). Requests are served concurrently and answered as they finish
 * (responses carry the request id), so the agent can pipeline.
 */
import type { Duplex } from 'node:stream';
import { DeviceError, isDeviceError } from '../errors.ts';
import { DEFAULT_MAX_FRAME, FrameReader } from './frame.ts';
import { decodeRequest, encodeResponse, errorBody } from './message.ts';
import { FrameWriter } from './writer.ts';

export type RequestHandler = (type: string, body: unknown) => Promise<ReadonlyMap<string, unknown>>;

export interface QueueServerOptions {
  readonly maxFrame?: number;
  /** Requests served at once; more are answered QUEUE_FULL (default 65536). */
  readonly maxInFlight?: number;
  /** Called for every request that failed with an unexpected (non-DeviceError) exception. */
  readonly onInternalError?: (e: unknown) => void;
}

export interface QueueServerStats {
  requests: number;
  errors: number;
  malformed: number;
  oversize: number;
  inFlight: number;
}

export function serveQueue(
  stream: Duplex,
  handler: RequestHandler,
  opts: QueueServerOptions = {},
): QueueServerStats {
  const maxFrame = opts.maxFrame ?? DEFAULT_MAX_FRAME;
  const maxInFlight = opts.maxInFlight ?? 65536;
  const reader = new FrameReader(maxFrame);
  const writer = new FrameWriter(stream);
  const stats: QueueServerStats = { requests: 0, errors: 0, malformed: 0, oversize: 0, inFlight: 0 };

  const fail = (id: number | null, e: DeviceError): void => {
    stats.errors++;
    writer.send(encodeResponse(id, false, errorBody(e.code, e.message)));
  };

  const serve = (id: number, type: string, body: unknown): void => {
    stats.inFlight++;
    let p: Promise<ReadonlyMap<string, unknown>>;
    try {
      p = handler(type, body);
    } catch (e) {
      p = Promise.reject(e instanceof Error ? e : new Error(String(e)));
    }
    p.then(
      (res) => {
        stats.inFlight--;
        writer.send(encodeResponse(id, true, res));
      },
      (e: unknown) => {
        stats.inFlight--;
        if (isDeviceError(e)) fail(id, e);
        else {
          opts.onInternalError?.(e);
          // Never echo internals to the peer.
          fail(id, new DeviceError('INTERNAL', 'internal error'));
        }
      },
    );
  };

  stream.on('data', (chunk: Buffer) => {
    for (const ev of reader.push(chunk)) {
      if (ev.kind === 'oversize') {
        stats.oversize++;
        fail(null, new DeviceError('FRAME_TOO_LARGE', `frame of ${ev.length} bytes exceeds ${maxFrame}`));
        continue;
      }
      const r = decodeRequest(ev.payload, maxFrame);
      if (!r.ok) {
        stats.malformed++;
        fail(r.id, r.error);
        continue;
      }
      stats.requests++;
      if (stats.inFlight >= maxInFlight) {
        fail(r.msg.id, new DeviceError('QUEUE_FULL', `${maxInFlight} requests in flight`));
        continue;
      }
      serve(r.msg.id, r.msg.type, r.msg.body);
    }
  });
  return stats;
}

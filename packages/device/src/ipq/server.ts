/**
 * The enclave side of the queue: reads frames, answers every one. A request is handed to the handler; anything
 * else gets a typed error response and the server keeps serving: an oversized frame (FRAME_TOO_LARGE, its bytes
 * skipped), a frame that is not a well-formed request (FRAME_MALFORMED, with the request id when it could be
 * read), too many requests in flight (QUEUE_FULL). Requests are served concurrently and answered as they finish
 * (responses carry the request id), so the agent can pipeline.
 */
import type { Duplex } from 'node:stream';
import { DeviceError, isDeviceError } from '../errors.ts';
import { DEFAULT_MAX_FRAME, FrameReader, type FrameEvent } from './frame.ts';
import { decodeRequest, encodeResponse, errorBody } from './message.ts';
import { FrameWriter } from './writer.ts';

/** Frames served per event-loop turn. */
const FRAMES_PER_TURN = 16;
/** Frames received but not yet served before the server stops reading. */
const MAX_BACKLOG = 4096;

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

  // Frames are served a few at a time per event-loop turn, so responses leave (FrameWriter flushes between
  // turns) and other work (a rotation's storage I/O) proceeds even when thousands of requests arrive at once.
  // The socket is paused while the backlog is long: memory stays bounded whatever the peer sends.
  const backlog: FrameEvent[] = [];
  let head = 0;
  let scheduled = false;
  const pump = (): void => {
    scheduled = false;
    const end = Math.min(backlog.length, head + FRAMES_PER_TURN);
    for (; head < end; head++) handle(backlog[head]!);
    if (head < backlog.length) {
      scheduled = true;
      setImmediate(pump);
    } else {
      backlog.length = 0;
      head = 0;
    }
    if (stream.isPaused() && backlog.length - head < MAX_BACKLOG / 2) stream.resume();
  };
  const handle = (ev: FrameEvent): void => {
    if (ev.kind === 'oversize') {
      stats.oversize++;
      fail(null, new DeviceError('FRAME_TOO_LARGE', `frame of ${ev.length} bytes exceeds ${maxFrame}`));
      return;
    }
    const r = decodeRequest(ev.payload, maxFrame);
    if (!r.ok) {
      stats.malformed++;
      fail(r.id, r.error);
      return;
    }
    stats.requests++;
    if (stats.inFlight >= maxInFlight) {
      fail(r.msg.id, new DeviceError('QUEUE_FULL', `${maxInFlight} requests in flight`));
      return;
    }
    serve(r.msg.id, r.msg.type, r.msg.body);
  };
  stream.on('data', (chunk: Buffer) => {
    for (const ev of reader.push(chunk)) backlog.push(ev);
    if (backlog.length - head >= MAX_BACKLOG) stream.pause();
    if (!scheduled && head < backlog.length) {
      scheduled = true;
      setImmediate(pump);
    }
  });
  return stats;
}

/**
 * The agent side of the queue: pipelined requests with ids, a deadline per request, a bound on requests in
 * flight, and strict validation of everything the enclave sends back. A response to an unknown id (e.g. one that
 * already timed out), an id-less error, or a malformed frame is counted and reported through `onProtocolError`;
 * it never resolves a request it does not belong to.
 */
import type { Duplex } from 'node:stream';
import type { CborMap } from '@rotor/cose';
import { DeviceError } from '../errors.ts';
import { DEFAULT_MAX_FRAME, FrameReader } from './frame.ts';
import { decodeResponse, encodeRequest, errorFromBody, MAX_ID } from './message.ts';
import { FrameWriter } from './writer.ts';

export interface QueueClientOptions {
  readonly maxFrame?: number;
  /** Requests in flight at once; more are refused with QUEUE_FULL (default 65536). */
  readonly maxInFlight?: number;
  /** Default deadline per request (default 10 s). */
  readonly timeoutMs?: number;
  readonly onProtocolError?: (e: DeviceError) => void;
}

interface Pending {
  resolve: (body: CborMap) => void;
  reject: (e: DeviceError) => void;
  timer: NodeJS.Timeout;
}

export class QueueClient {
  readonly #writer: FrameWriter;
  readonly #pending = new Map<number, Pending>();
  readonly #opts: QueueClientOptions;
  readonly #maxFrame: number;
  #nextId = 1;
  #closed: DeviceError | undefined;
  readonly stats = { sent: 0, received: 0, unexpected: 0, malformed: 0, timeouts: 0 };

  constructor(stream: Duplex, opts: QueueClientOptions = {}) {
    this.#opts = opts;
    this.#maxFrame = opts.maxFrame ?? DEFAULT_MAX_FRAME;
    this.#writer = new FrameWriter(stream);
    const reader = new FrameReader(this.#maxFrame);
    stream.on('data', (chunk: Buffer) => {
      for (const ev of reader.push(chunk)) {
        if (ev.kind === 'oversize')
          this.#protocolError(new DeviceError('FRAME_TOO_LARGE', `response of ${ev.length} bytes`));
        else this.#onFrame(ev.payload);
      }
    });
  }

  get inFlight(): number {
    return this.#pending.size;
  }

  #protocolError(e: DeviceError): void {
    if (e.code === 'FRAME_UNEXPECTED') this.stats.unexpected++;
    else this.stats.malformed++;
    this.#opts.onProtocolError?.(e);
  }

  #onFrame(payload: Uint8Array): void {
    let msg;
    try {
      msg = decodeResponse(payload, this.#maxFrame);
    } catch (e) {
      this.#protocolError(e as DeviceError);
      return;
    }
    if (msg.id === null) {
      // The enclave could not read one of our requests: its error is for no request in particular.
      this.#protocolError(
        msg.ok ? new DeviceError('FRAME_MALFORMED', 'ok response without id') : errorFromBody(msg.body),
      );
      return;
    }
    const p = this.#pending.get(msg.id);
    if (p === undefined) {
      this.#protocolError(new DeviceError('FRAME_UNEXPECTED', `response to unknown request ${msg.id}`));
      return;
    }
    this.#pending.delete(msg.id);
    clearTimeout(p.timer);
    this.stats.received++;
    if (msg.ok) p.resolve(msg.body);
    else p.reject(errorFromBody(msg.body));
  }

  /** Sends a request; resolves with the (still unvalidated) response body map. */
  request(type: string, body: ReadonlyMap<string, unknown>, timeoutMs?: number): Promise<CborMap> {
    if (this.#closed !== undefined) return Promise.reject(this.#closed);
    if (this.#pending.size >= (this.#opts.maxInFlight ?? 65536)) {
      return Promise.reject(new DeviceError('QUEUE_FULL', 'too many requests in flight'));
    }
    let id = this.#nextId;
    while (this.#pending.has(id)) id = id >= MAX_ID ? 1 : id + 1;
    this.#nextId = id >= MAX_ID ? 1 : id + 1;
    const payload = encodeRequest(id, type, body);
    if (payload.length > this.#maxFrame)
      return Promise.reject(new DeviceError('FRAME_TOO_LARGE', 'request too large'));
    const ms = timeoutMs ?? this.#opts.timeoutMs ?? 10_000;
    return new Promise<CborMap>((resolve, reject) => {
      const timer = setTimeout(() => {
        if (this.#pending.delete(id)) {
          this.stats.timeouts++;
          reject(new DeviceError('REQUEST_TIMEOUT', `${type} got no response within ${ms} ms`));
        }
      }, ms);
      timer.unref();
      this.#pending.set(id, { resolve, reject, timer });
      this.stats.sent++;
      this.#writer.send(payload);
    });
  }

  /** Fails every pending request with `e`; later requests fail with it too. */
  close(e: DeviceError): void {
    this.#closed = e;
    for (const [id, p] of this.#pending) {
      clearTimeout(p.timer);
      this.#pending.delete(id);
      p.reject(e);
    }
  }
}

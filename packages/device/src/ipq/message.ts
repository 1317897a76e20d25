/**
 * Messages on the queue, one per frame, CBOR under the strict profile (deterministic encoding required both ways):
 *
 *   request  = { 1: id (uint32), 2: type (tstr), 3: body (map) }
 *   response = { 1: id (uint32) / null, 2: "ok" / "error", 3: body (map) }
 *   error body = { "code": tstr (a DeviceErrorCode), "message": tstr }
 *
 * A response id is null only when the enclave could not read the request's id (garbage or oversized frame).
 * Both directions are untrusted input (DESIGN.md "Untrusted input is bounded and typed"): size and depth bounds,
 * deterministic encoding only (RFC 8949 §4.2.1), no unknown members, a typed error for every violation.
 */
import { CborMap, decode, encode } from '@rotor/cose';
import { DeviceError, isDeviceErrorCode, type DeviceErrorCode } from '../errors.ts';

export const MAX_ID = 0xffffffff;
const MSG_KEYS: ReadonlySet<unknown> = new Set<unknown>([1, 2, 3]);
const DECODE = { maxDepth: 16 } as const;

export interface RequestMessage {
  readonly id: number;
  readonly type: string;
  readonly body: CborMap;
}

export interface ResponseMessage {
  readonly id: number | null;
  readonly ok: boolean;
  readonly body: CborMap;
}

export function encodeRequest(id: number, type: string, body: ReadonlyMap<string, unknown>): Uint8Array {
  return encode(
    new Map<number, unknown>([
      [1, id],
      [2, type],
      [3, body],
    ]),
  );
}

export function encodeResponse(
  id: number | null,
  ok: boolean,
  body: ReadonlyMap<string, unknown>,
): Uint8Array {
  return encode(
    new Map<number, unknown>([
      [1, id],
      [2, ok ? 'ok' : 'error'],
      [3, body],
    ]),
  );
}

export function errorBody(code: DeviceErrorCode, message: string): Map<string, unknown> {
  return new Map<string, unknown>([
    ['code', code],
    ['message', message.slice(0, 300)],
  ]);
}

function top(payload: Uint8Array, maxSize: number): CborMap {
  let v: unknown;
  try {
    v = decode(payload, { ...DECODE, maxSize });
  } catch (e) {
    throw new DeviceError(
      'FRAME_MALFORMED',
      `frame is not strict CBOR: ${e instanceof Error ? e.message : ''}`,
      {
        cause: e,
      },
    );
  }
  if (!(v instanceof CborMap)) throw new DeviceError('FRAME_MALFORMED', 'message is not a map');
  for (const k of v.keys())
    if (!MSG_KEYS.has(k)) throw new DeviceError('FRAME_MALFORMED', 'unexpected message member');
  return v;
}

function readId(v: unknown): number | undefined {
  return typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= MAX_ID ? v : undefined;
}

/** Decodes a request; on failure returns the error and, if it could be read, the request id. */
export function decodeRequest(
  payload: Uint8Array,
  maxSize: number,
): { ok: true; msg: RequestMessage } | { ok: false; id: number | null; error: DeviceError } {
  let m: CborMap;
  try {
    m = top(payload, maxSize);
  } catch (e) {
    return { ok: false, id: null, error: e as DeviceError };
  }
  const id = readId(m.get(1));
  if (id === undefined)
    return {
      ok: false,
      id: null,
      error: new DeviceError('FRAME_MALFORMED', 'request id missing or invalid'),
    };
  const type = m.get(2);
  const body = m.get(3);
  if (typeof type !== 'string' || type.length > 64) {
    return { ok: false, id, error: new DeviceError('FRAME_MALFORMED', 'request type missing or invalid') };
  }
  if (!(body instanceof CborMap))
    return { ok: false, id, error: new DeviceError('FRAME_MALFORMED', 'request body is not a map') };
  return { ok: true, msg: { id, type, body } };
}

/** Decodes a response from the enclave (untrusted: strictly). */
export function decodeResponse(payload: Uint8Array, maxSize: number): ResponseMessage {
  const m = top(payload, maxSize);
  const rawId = m.get(1);
  const id = rawId === null ? null : readId(rawId);
  if (id === undefined) throw new DeviceError('FRAME_MALFORMED', 'response id invalid');
  const status = m.get(2);
  const body = m.get(3);
  if ((status !== 'ok' && status !== 'error') || !(body instanceof CborMap)) {
    throw new DeviceError('FRAME_MALFORMED', 'response status or body invalid');
  }
  return { id, ok: status === 'ok', body };
}

/** The DeviceError an error body stands for; a code outside the list is itself a malformed frame. */
export function errorFromBody(body: CborMap): DeviceError {
  const code = body.get('code');
  const message = body.get('message');
  if (!isDeviceErrorCode(code) || typeof message !== 'string' || message.length > 1024 || body.size !== 2) {
    return new DeviceError('FRAME_MALFORMED', 'error response of the wrong form');
  }
  return new DeviceError(code, message, { remote: true });
}

/**
 * The enclave's request/response vocabulary on the inter-processor queue (seed 002 "IPQ"), as schemas that both
 * sides use to validate what they receive: the enclave validates every request body, the agent every response
 * body, each under the strict CBOR profile and with bounded sizes. Bodies are CBOR maps with text keys; unknown
 * members are refused.
 */
import { CborMap, CoseError } from '@rotor/cose';
import { DeviceError, type DeviceErrorCode } from '../errors.ts';
import { KEY_TYPES } from './keys.ts';

interface FBytes {
  readonly kind: 'bytes';
  readonly min?: number;
  readonly max: number;
  readonly optional?: boolean;
}
interface FUint {
  readonly kind: 'uint';
  readonly min?: number;
  readonly max?: number;
  readonly optional?: boolean;
}
interface FInt {
  readonly kind: 'int';
  readonly optional?: boolean;
}
interface FText {
  readonly kind: 'text';
  readonly max: number;
  readonly pattern?: RegExp;
  readonly optional?: boolean;
}
interface FEnum<V extends string = string> {
  readonly kind: 'enum';
  readonly values: readonly V[];
  readonly optional?: boolean;
}
interface FBytesList {
  readonly kind: 'bytesList';
  readonly maxItems: number;
  readonly maxItem: number;
}
interface FTextList {
  readonly kind: 'textList';
  readonly maxItems: number;
  readonly maxItem: number;
}
interface FMap {
  readonly kind: 'map';
  readonly maxEntries: number;
  readonly optional?: boolean;
}
type Field = FBytes | FUint | FInt | FText | FEnum | FBytesList | FTextList | FMap;
type Schema = Readonly<Record<string, Field>>;

type FieldValue<F> = F extends FBytes
  ? Uint8Array
  : F extends FUint | FInt
    ? number
    : F extends FText
      ? string
      : F extends FEnum<infer V>
        ? V
        : F extends FBytesList
          ? Uint8Array[]
          : F extends FTextList
            ? string[]
            : F extends FMap
              ? CborMap
              : never;
type Optional<S extends Schema> = { [K in keyof S]: S[K] extends { optional: true } ? K : never }[keyof S];
type Required<S extends Schema> = Exclude<keyof S, Optional<S>>;
export type Body<S extends Schema> = { -readonly [K in Required<S>]: FieldValue<S[K]> } & {
  -readonly [K in Optional<S>]?: FieldValue<S[K]>;
};

const KEY_ID: FText = { kind: 'text', max: 64, pattern: /^[A-Za-z0-9._-]{1,64}$/ };
const KEY_INFO = {
  keyId: KEY_ID,
  type: { kind: 'enum', values: KEY_TYPES },
  backend: { kind: 'enum', values: ['sealed', 'pkcs11'] },
  publicKey: { kind: 'bytes', max: 256 },
  kid: { kind: 'bytes', min: 32, max: 32 },
} as const;
const RECORD: FBytes = { kind: 'bytes', max: 2048 };
const SEAL_LABEL: FText = { kind: 'text', max: 200, pattern: /^[A-Za-z0-9._:\/-]{1,200}$/ };
/** RFC 9711 §4.1: an EAT nonce is 8..64 bytes; the same bound for session-key challenges. */
const CHALLENGE: FBytes = { kind: 'bytes', min: 8, max: 64 };
/** Records per GetRoT page (a page stays well below the frame bound). */
export const ROT_PAGE = 256;

export const PROTOCOL = {
  /** Seed 002 step 1 "Generate RoT": TRNG seed, optionally mixed with external seed material. */
  GenerateRoT: {
    req: {
      seed: { kind: 'bytes', min: 16, max: 64, optional: true },
      alg: { kind: 'enum', values: ['ES256', 'EdDSA'], optional: true },
    },
    res: { record: RECORD },
  },
  /** Seed 002 step 2 "Rotate RoT": answers with the new record signed by the previous RoT. */
  RotateRoT: { req: { seed: { kind: 'bytes', min: 16, max: 64, optional: true } }, res: { record: RECORD } },
  /** The chain from the first RoT, a page at a time. */
  GetRoT: {
    req: { from: { kind: 'uint', optional: true } },
    res: { records: { kind: 'bytesList', maxItems: ROT_PAGE, maxItem: 2048 }, total: { kind: 'uint' } },
  },
  /** Seed 002 step 3: a signature by the current RoT over the challenge and the device's claims. */
  Attest: {
    req: { challenge: CHALLENGE, claims: { kind: 'map', maxEntries: 64, optional: true } },
    res: { token: { kind: 'bytes', max: 16 * 1024 } },
  },
  /** Seed 002 step 3: HKDF from RoT-bound material, the challenge and the context. */
  DeriveSessionKey: {
    req: {
      challenge: CHALLENGE,
      context: { kind: 'bytes', max: 256 },
      length: { kind: 'uint', min: 16, max: 64, optional: true },
    },
    res: {
      key: { kind: 'bytes', min: 16, max: 64 },
      kid: { kind: 'bytes', min: 32, max: 32 },
      index: { kind: 'uint' },
    },
  },
  Sign: {
    req: { keyId: KEY_ID, data: { kind: 'bytes', max: 64 * 1024 } },
    res: { signature: { kind: 'bytes', min: 64, max: 64 } },
  },
  KeyAgreement: {
    req: { keyId: KEY_ID, peer: { kind: 'bytes', min: 32, max: 65 } },
    res: { secret: { kind: 'bytes', min: 32, max: 32 } },
  },
  /** ECDH-ES + HKDF-SHA-256 + AES-KW (RFC 9053 §6.3) done inside the enclave: Z never leaves it. */
  Unwrap: {
    req: {
      keyId: KEY_ID,
      alg: { kind: 'int' },
      peer: { kind: 'bytes', min: 32, max: 65 },
      context: { kind: 'bytes', max: 1024 },
      salt: { kind: 'bytes', max: 64, optional: true },
      wrapped: { kind: 'bytes', min: 24, max: 40 },
    },
    res: { cek: { kind: 'bytes', min: 16, max: 32 } },
  },
  GenerateKey: {
    req: {
      keyId: KEY_ID,
      type: { kind: 'enum', values: KEY_TYPES },
      backend: { kind: 'enum', values: ['sealed', 'pkcs11'], optional: true },
    },
    res: KEY_INFO,
  },
  GetPublicKey: { req: { keyId: KEY_ID }, res: KEY_INFO },
  /**
   * Seals a small secret of the agent (e.g. a capability-archive key) under the enclave's device-unique sealing key
   * (seal.ts), bound to `label`; only this device's enclave unseals it. Domain-separated from the enclave's own
   * sealed store.
   */
  SealData: {
    req: { label: SEAL_LABEL, data: { kind: 'bytes', min: 1, max: 4096 } },
    res: { sealed: { kind: 'bytes', max: 4096 + 64 } },
  },
  UnsealData: {
    req: { label: SEAL_LABEL, sealed: { kind: 'bytes', max: 4096 + 64 } },
    res: { data: { kind: 'bytes', max: 4096 } },
  },
  Health: {
    req: {},
    res: {
      status: { kind: 'enum', values: ['ok', 'no-rot'] },
      rotIndex: { kind: 'int' },
      rotKid: { kind: 'bytes', max: 32, optional: true },
      keys: { kind: 'uint' },
      backends: { kind: 'textList', maxItems: 8, maxItem: 16 },
      uptimeMs: { kind: 'uint' },
      served: { kind: 'uint' },
      pid: { kind: 'uint' },
    },
  },
} as const satisfies Record<string, { req: Schema; res: Schema }>;

export type RequestType = keyof typeof PROTOCOL;
export type Req<T extends RequestType> = Body<(typeof PROTOCOL)[T]['req']>;
export type Res<T extends RequestType> = Body<(typeof PROTOCOL)[T]['res']>;

export const REQUEST_TYPES = Object.keys(PROTOCOL) as RequestType[];

/** Requests that may be sent again after an enclave restart without changing the outcome. */
export const IDEMPOTENT: ReadonlySet<RequestType> = new Set<RequestType>([
  'GetRoT',
  'Attest',
  'DeriveSessionKey',
  'Sign',
  'KeyAgreement',
  'Unwrap',
  'GetPublicKey',
  'Health',
  'SealData',
  'UnsealData',
]);

export function isRequestType(s: string): s is RequestType {
  return Object.hasOwn(PROTOCOL, s);
}

function bad(code: DeviceErrorCode, msg: string): DeviceError {
  return new DeviceError(code, msg);
}

function field(name: string, f: Field, v: unknown, code: DeviceErrorCode): unknown {
  const path = `body.${name}`;
  switch (f.kind) {
    case 'bytes':
      if (!(v instanceof Uint8Array)) throw bad(code, `${path}: expected bstr`);
      if (v.length > f.max || v.length < (f.min ?? 0))
        throw bad(code, `${path}: ${v.length} bytes out of range`);
      return v;
    case 'uint':
      if (
        typeof v !== 'number' ||
        !Number.isSafeInteger(v) ||
        v < (f.min ?? 0) ||
        v > (f.max ?? 2 ** 53 - 1)
      ) {
        throw bad(code, `${path}: expected uint in range`);
      }
      return v;
    case 'int':
      if (typeof v !== 'number' || !Number.isSafeInteger(v)) throw bad(code, `${path}: expected int`);
      return v;
    case 'text':
      if (typeof v !== 'string' || v.length > f.max || (f.pattern !== undefined && !f.pattern.test(v))) {
        throw bad(code, `${path}: expected text of the right form`);
      }
      return v;
    case 'enum':
      if (typeof v !== 'string' || !f.values.includes(v))
        throw bad(code, `${path}: not one of ${f.values.join(', ')}`);
      return v;
    case 'bytesList':
      if (!Array.isArray(v) || v.length > f.maxItems)
        throw bad(code, `${path}: expected array of ≤ ${f.maxItems}`);
      for (const x of v as unknown[]) {
        if (!(x instanceof Uint8Array) || x.length > f.maxItem) throw bad(code, `${path}: bad item`);
      }
      return v;
    case 'textList':
      if (!Array.isArray(v) || v.length > f.maxItems)
        throw bad(code, `${path}: expected array of ≤ ${f.maxItems}`);
      for (const x of v as unknown[])
        if (typeof x !== 'string' || x.length > f.maxItem) throw bad(code, `${path}: bad item`);
      return v;
    case 'map':
      if (!(v instanceof CborMap) || v.size > f.maxEntries)
        throw bad(code, `${path}: expected map of ≤ ${f.maxEntries}`);
      return v;
  }
}

/** Validates a decoded body against a schema; `code` is the error for a violation. */
export function decodeBody<S extends Schema>(schema: S, body: unknown, code: DeviceErrorCode): Body<S> {
  if (!(body instanceof CborMap)) throw bad(code, 'body: expected map');
  const out: Record<string, unknown> = {};
  for (const [k] of body.entries) {
    if (typeof k !== 'string' || !Object.hasOwn(schema, k))
      throw bad(code, `body: unexpected member ${String(k)}`);
  }
  for (const [name, f] of Object.entries(schema)) {
    if (!body.has(name)) {
      if ('optional' in f && f.optional === true) continue;
      throw bad(code, `body.${name}: missing`);
    }
    out[name] = field(name, f, body.get(name), code);
  }
  return out as Body<S>;
}

/** A body as a CBOR map (absent optional members left out). */
export function encodeBody(body: object): Map<string, unknown> {
  const m = new Map<string, unknown>();
  for (const [k, v] of Object.entries(body)) if (v !== undefined) m.set(k, v);
  return m;
}

/** Maps a validation failure inside the codec layer to a DeviceError (CoseError from nested decoders). */
export function asDeviceError(e: unknown, code: DeviceErrorCode): DeviceError {
  if (e instanceof DeviceError) return e;
  if (e instanceof CoseError) return new DeviceError(code, e.message, { cause: e });
  return new DeviceError('INTERNAL', 'unexpected failure', { cause: e });
}

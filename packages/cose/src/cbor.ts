/**
 * Rotor's one strict CBOR profile (RFC 8949) for every untrusted input, and its deterministic encoder.
 *
 * Decoding enforces, with a typed error for each:
 *  - a bound on input size and nesting depth;
 *  - definite lengths only and preferred (shortest) integer, length and float encodings (§4.2.1);
 *  - no duplicate map keys (§5.6) and, unless the caller opts out, keys in bytewise lexicographic order of
 *    their encodings (§4.2.1 "Core Deterministic Encoding");
 *  - valid UTF-8 in text strings (§5.3.1);
 *  - exactly one top-level item, no trailing bytes;
 *  - no floats, `undefined` or unassigned simple values unless the caller admits floats.
 * It returns `unknown`: callers validate with the helpers in `validate.ts` and build typed models.
 *
 * Why a small decoder of our own: cbor-x's defaults are unsafe for signed data, cborg's strict mode accepts
 * unsorted keys and invalid UTF-8, cbor2's CDE mode is correct but ~20x slower. This one does exactly the
 * checks above, allocates only the values it returns, and never pre-allocates from an untrusted length.
 */
import { CoseError } from './errors.ts';

/**
 * A CBOR map as decoded: entries in wire order, with lookup by integer or text key. Small maps (the common case:
 * SUIT and COSE maps have a handful of keys) are scanned linearly; larger ones get a hash index on first lookup.
 */
export class CborMap {
  readonly entries: ReadonlyArray<readonly [unknown, unknown]>;
  /** With `valueSpans` decoding: the decoded input and each value's [start, end) offsets in it, flattened. */
  readonly #source: Uint8Array | undefined;
  readonly #spans: readonly number[] | undefined;
  #index: Map<unknown, unknown> | undefined;

  constructor(
    entries: ReadonlyArray<readonly [unknown, unknown]>,
    source?: Uint8Array,
    spans?: readonly number[],
  ) {
    this.entries = entries;
    this.#source = source;
    this.#spans = spans;
  }

  static from(obj: Iterable<readonly [unknown, unknown]>): CborMap {
    return new CborMap([...obj]);
  }

  get size(): number {
    return this.entries.length;
  }

  #lookup(): Map<unknown, unknown> {
    if (this.#index === undefined) {
      const index = new Map<unknown, unknown>();
      for (const [k, v] of this.entries) {
        if (typeof k === 'number' || typeof k === 'string' || typeof k === 'bigint') index.set(k, v);
      }
      this.#index = index;
    }
    return this.#index;
  }

  /** Value of an integer or text key, or undefined when absent. */
  get(key: number | string): unknown {
    const e = this.entries;
    if (e.length <= 12) {
      for (const entry of e) if (entry[0] === key) return entry[1];
      return undefined;
    }
    return this.#lookup().get(key);
  }

  has(key: number | string): boolean {
    const e = this.entries;
    if (e.length <= 12) {
      for (const entry of e) if (entry[0] === key) return true;
      return false;
    }
    return this.#lookup().has(key);
  }

  keys(): unknown[] {
    return this.entries.map(([k]) => k);
  }

  /**
   * A copy of the encoded value of entry `i` exactly as received, when the map was decoded with `valueSpans`
   * (else undefined). Under the deterministic profile these are the bytes `encode(value)` would produce.
   */
  valueBytes(i: number): Uint8Array | undefined {
    const spans = this.#spans;
    if (spans === undefined || this.#source === undefined) return undefined;
    const start = spans[2 * i];
    const end = spans[2 * i + 1];
    return start === undefined || end === undefined ? undefined : this.#source.slice(start, end);
  }
}

/** A tagged item (major type 6). */
export class CborTag {
  readonly tag: number;
  readonly value: unknown;
  constructor(tag: number, value: unknown) {
    this.tag = tag;
    this.value = value;
  }
}

/** Pre-encoded CBOR bytes that the encoder copies verbatim (the caller vouches for their validity). */
export class CborRaw {
  readonly bytes: Uint8Array;
  constructor(bytes: Uint8Array) {
    this.bytes = bytes;
  }
}

/** A simple value other than false/true/null (only produced when decoding with `allowSimple`). */
export class CborSimple {
  readonly value: number;
  constructor(value: number) {
    this.value = value;
  }
}

export interface DecodeOptions {
  /** Largest accepted input in bytes (default 1 MiB). */
  maxSize?: number;
  /** Deepest accepted nesting of arrays, maps and tags (default 32). */
  maxDepth?: number;
  /** Require map keys in deterministic order (default true). COSE headers of peers may set false. */
  sortedKeys?: boolean;
  /** Admit floating-point numbers in their shortest exact form (default false). */
  allowFloats?: boolean;
  /** Admit `undefined` and unassigned simple values (default false). */
  allowSimple?: boolean;
  /**
   * Return byte strings as views into `bytes` instead of copies (default false). Only for input the caller owns
   * and never changes afterwards (e.g. a private copy): the views alias it.
   */
  shareBytes?: boolean;
  /** Record where each map value lies in the input, for `CborMap.valueBytes` (default false). */
  valueSpans?: boolean;
}

const DEFAULT_MAX_SIZE = 1 << 20;
const DEFAULT_MAX_DEPTH = 32;

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
const utf8enc = new TextEncoder();

class Decoder {
  readonly buf: Uint8Array;
  #view: DataView | undefined;
  #text: Buffer | undefined;
  pos = 0;
  readonly maxDepth: number;
  readonly sorted: boolean;
  readonly floats: boolean;
  readonly simple: boolean;
  readonly share: boolean;
  readonly spans: boolean;

  constructor(buf: Uint8Array, opts: DecodeOptions) {
    this.buf = buf;
    this.maxDepth = opts.maxDepth ?? DEFAULT_MAX_DEPTH;
    this.sorted = opts.sortedKeys ?? true;
    this.floats = opts.allowFloats ?? false;
    this.simple = opts.allowSimple ?? false;
    this.share = opts.shareBytes ?? false;
    this.spans = opts.valueSpans ?? false;
  }

  /** A DataView only for the rare 8-byte and float reads (most items need none). */
  get view(): DataView {
    this.#view ??= new DataView(this.buf.buffer, this.buf.byteOffset, this.buf.byteLength);
    return this.#view;
  }

  /** A Buffer over the input, only for text strings (native latin1 slicing of ASCII text). */
  get textBuf(): Buffer {
    this.#text ??= Buffer.from(this.buf.buffer, this.buf.byteOffset, this.buf.byteLength);
    return this.#text;
  }

  fail(
    code:
      | 'CBOR_TRUNCATED'
      | 'CBOR_RESERVED'
      | 'CBOR_INDEFINITE_LENGTH'
      | 'CBOR_NON_PREFERRED'
      | 'CBOR_DUPLICATE_KEY'
      | 'CBOR_UNSORTED_KEYS'
      | 'CBOR_INVALID_UTF8'
      | 'CBOR_UNSUPPORTED'
      | 'CBOR_TOO_DEEP',
    msg: string,
    at = this.pos,
  ): never {
    throw new CoseError(code, msg, `byte ${at}`);
  }

  need(n: number): void {
    if (n > this.buf.length - this.pos) this.fail('CBOR_TRUNCATED', `need ${n} more bytes`);
  }

  /** Reads the argument of a head; returns number when safe, bigint beyond 2^53-1. */
  arg(ai: number, start: number): number | bigint {
    if (ai < 24) return ai;
    switch (ai) {
      case 24: {
        this.need(1);
        const v = this.buf[this.pos++]!;
        if (v < 24) this.fail('CBOR_NON_PREFERRED', 'one-byte argument below 24', start);
        return v;
      }
      case 25: {
        this.need(2);
        const b = this.buf;
        const v = (b[this.pos]! << 8) | b[this.pos + 1]!;
        this.pos += 2;
        if (v <= 0xff) this.fail('CBOR_NON_PREFERRED', 'two-byte argument fits in one', start);
        return v;
      }
      case 26: {
        this.need(4);
        const b = this.buf;
        const p = this.pos;
        const v = b[p]! * 0x1000000 + ((b[p + 1]! << 16) | (b[p + 2]! << 8) | b[p + 3]!);
        this.pos += 4;
        if (v <= 0xffff) this.fail('CBOR_NON_PREFERRED', 'four-byte argument fits in two', start);
        return v;
      }
      case 27: {
        this.need(8);
        const v = this.view.getBigUint64(this.pos);
        this.pos += 8;
        if (v <= 0xffffffffn) this.fail('CBOR_NON_PREFERRED', 'eight-byte argument fits in four', start);
        return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
      }
      case 31:
        return this.fail('CBOR_INDEFINITE_LENGTH', 'indefinite length', start);
      default:
        return this.fail('CBOR_RESERVED', `reserved additional information ${ai}`, start);
    }
  }

  /** A length argument, bounded by the bytes that remain (each element needs at least one byte). */
  len(ai: number, start: number, perItem: number): number {
    const n = this.arg(ai, start);
    const remaining = this.buf.length - this.pos;
    if (typeof n === 'bigint' || n * perItem > remaining) {
      this.fail('CBOR_TRUNCATED', `length ${String(n)} exceeds the remaining ${remaining} bytes`, start);
    }
    return n;
  }

  item(depth: number): unknown {
    const start = this.pos;
    this.need(1);
    const ib = this.buf[this.pos++]!;
    const mt = ib >> 5;
    const ai = ib & 0x1f;
    switch (mt) {
      case 0:
        return this.arg(ai, start);
      case 1: {
        const n = this.arg(ai, start);
        // -1 - (2^53 - 1) = -2^53 is not a safe integer: such results decode as bigint, like large uints.
        if (typeof n === 'number') return n < Number.MAX_SAFE_INTEGER ? -1 - n : -1n - BigInt(n);
        return -1n - n;
      }
      case 2: {
        const n = this.len(ai, start, 1);
        const p = this.pos;
        this.pos = p + n;
        const b = this.buf;
        return this.share ? new Uint8Array(b.buffer, b.byteOffset + p, n) : b.slice(p, p + n);
      }
      case 3: {
        const n = this.len(ai, start, 1);
        const p = this.pos;
        const end = p + n;
        this.pos = end;
        const b = this.buf;
        // Fast path for ASCII; TextDecoder (fatal) validates everything else (RFC 8949 §5.3.1).
        let i = p;
        while (i < end && b[i]! < 0x80) i++;
        if (i === end) return n === 0 ? '' : this.textBuf.toString('latin1', p, end);
        try {
          return utf8.decode(b.subarray(p, end));
        } catch {
          return this.fail('CBOR_INVALID_UTF8', 'text string is not valid UTF-8', start);
        }
      }
      case 4: {
        if (depth >= this.maxDepth) this.fail('CBOR_TOO_DEEP', `nesting deeper than ${this.maxDepth}`, start);
        const n = this.len(ai, start, 1);
        const out: unknown[] = [];
        for (let i = 0; i < n; i++) out.push(this.item(depth + 1));
        return out;
      }
      case 5: {
        if (depth >= this.maxDepth) this.fail('CBOR_TOO_DEEP', `nesting deeper than ${this.maxDepth}`, start);
        const n = this.len(ai, start, 2);
        const entries: (readonly [unknown, unknown])[] = [];
        const spans: number[] | undefined = this.spans ? [] : undefined;
        let prevStart = -1;
        let prevEnd = -1;
        let seen: Set<string> | undefined;
        for (let i = 0; i < n; i++) {
          const kStart = this.pos;
          const k = this.item(depth + 1);
          const kEnd = this.pos;
          if (this.sorted) {
            if (prevStart >= 0) {
              const c = compareBytes(this.buf, prevStart, prevEnd, kStart, kEnd);
              if (c === 0) this.fail('CBOR_DUPLICATE_KEY', 'duplicate map key', kStart);
              if (c > 0) this.fail('CBOR_UNSORTED_KEYS', 'map keys not in deterministic order', kStart);
            }
          } else {
            seen ??= new Set();
            const sig = Buffer.from(this.buf.buffer, this.buf.byteOffset + kStart, kEnd - kStart).toString(
              'latin1',
            );
            if (seen.has(sig)) this.fail('CBOR_DUPLICATE_KEY', 'duplicate map key', kStart);
            seen.add(sig);
          }
          prevStart = kStart;
          prevEnd = kEnd;
          entries.push([k, this.item(depth + 1)]);
          spans?.push(kEnd, this.pos);
        }
        return spans === undefined ? new CborMap(entries) : new CborMap(entries, this.buf, spans);
      }
      case 6: {
        if (depth >= this.maxDepth) this.fail('CBOR_TOO_DEEP', `nesting deeper than ${this.maxDepth}`, start);
        const tag = this.arg(ai, start);
        if (typeof tag === 'bigint') return this.fail('CBOR_UNSUPPORTED', 'tag number too large', start);
        return new CborTag(tag, this.item(depth + 1));
      }
      default:
        return this.simpleOrFloat(ai, start);
    }
  }

  simpleOrFloat(ai: number, start: number): unknown {
    if (ai === 20) return false;
    if (ai === 21) return true;
    if (ai === 22) return null;
    if (ai === 31) return this.fail('CBOR_RESERVED', 'break outside an indefinite-length item', start);
    if (ai >= 28) return this.fail('CBOR_RESERVED', `reserved additional information ${ai}`, start);
    if (ai >= 25 && ai <= 27) {
      if (!this.floats)
        return this.fail('CBOR_UNSUPPORTED', 'floating-point numbers are not admitted', start);
      return this.float(ai, start);
    }
    if (!this.simple)
      return this.fail('CBOR_UNSUPPORTED', 'undefined and simple values are not admitted', start);
    if (ai === 23) return undefined;
    if (ai < 20) return new CborSimple(ai);
    // Only ai 24 is left here: a simple value in one extra byte.
    this.need(1);
    const v = this.buf[this.pos++]!;
    if (v < 32) this.fail('CBOR_NON_PREFERRED', 'simple value below 32 in two bytes', start);
    return new CborSimple(v);
  }

  float(ai: number, start: number): number {
    let v: number;
    if (ai === 25) {
      this.need(2);
      const h = this.view.getUint16(this.pos);
      v = halfToNumber(h);
      this.pos += 2;
      // A JS number keeps no NaN sign or payload: only the one deterministic NaN, 0xf97e00, round-trips.
      if (Number.isNaN(v) && h !== 0x7e00) this.fail('CBOR_NON_PREFERRED', 'NaN other than 0xf97e00', start);
      return v;
    }
    if (ai === 26) {
      this.need(4);
      v = this.view.getFloat32(this.pos);
      this.pos += 4;
      if (fitsHalf(v)) this.fail('CBOR_NON_PREFERRED', 'float32 representable as float16', start);
      return v;
    }
    this.need(8);
    v = this.view.getFloat64(this.pos);
    this.pos += 8;
    if (Math.fround(v) === v || Number.isNaN(v))
      this.fail('CBOR_NON_PREFERRED', 'float64 representable as float32', start);
    return v;
  }
}

function compareBytes(b: Uint8Array, as: number, ae: number, bs: number, be: number): number {
  const la = ae - as;
  const lb = be - bs;
  const n = Math.min(la, lb);
  for (let i = 0; i < n; i++) {
    const d = b[as + i]! - b[bs + i]!;
    if (d !== 0) return d;
  }
  return la - lb;
}

function halfToNumber(h: number): number {
  const exp = (h >> 10) & 0x1f;
  const mant = h & 0x3ff;
  const sign = h & 0x8000 ? -1 : 1;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 31) return mant === 0 ? sign * Infinity : NaN;
  return sign * (mant + 1024) * 2 ** (exp - 25);
}

function numberToHalf(v: number): number | undefined {
  if (Number.isNaN(v)) return 0x7e00;
  const sign = v < 0 || Object.is(v, -0) ? 0x8000 : 0;
  const a = Math.abs(v);
  if (a === Infinity) return sign | 0x7c00;
  if (a === 0) return sign;
  // Try every half encoding's value class: subnormal or normal.
  if (a < 2 ** -14) {
    const m = a / 2 ** -24;
    return Number.isInteger(m) ? sign | m : undefined;
  }
  const e = Math.floor(Math.log2(a));
  if (e > 15) return undefined;
  const m = a / 2 ** (e - 10);
  if (!Number.isInteger(m) || m < 1024 || m >= 2048) return undefined;
  return sign | ((e + 15) << 10) | (m - 1024);
}

function fitsHalf(v: number): boolean {
  const h = numberToHalf(v);
  return h !== undefined && (Number.isNaN(v) || halfToNumber(h) === v);
}

/** Decodes exactly one CBOR item under the strict profile. Throws CoseError on any violation. */
export function decode(bytes: Uint8Array, options: DecodeOptions = {}): unknown {
  const max = options.maxSize ?? DEFAULT_MAX_SIZE;
  if (bytes.length > max)
    throw new CoseError('CBOR_TOO_LARGE', `input of ${bytes.length} bytes exceeds ${max}`);
  const d = new Decoder(bytes, options);
  const v = d.item(0);
  if (d.pos !== bytes.length) {
    throw new CoseError(
      'CBOR_TRAILING_BYTES',
      `${bytes.length - d.pos} bytes after the item`,
      `byte ${d.pos}`,
    );
  }
  return v;
}

/**
 * Decodes a sequence of items laid end to end (RFC 8742), e.g. to find each item's byte span.
 * Returns the items with their [start, end) offsets.
 */
export function decodeWithSpans(
  bytes: Uint8Array,
  options: DecodeOptions = {},
): { value: unknown; start: number; end: number }[] {
  const max = options.maxSize ?? DEFAULT_MAX_SIZE;
  if (bytes.length > max)
    throw new CoseError('CBOR_TOO_LARGE', `input of ${bytes.length} bytes exceeds ${max}`);
  const d = new Decoder(bytes, options);
  const out: { value: unknown; start: number; end: number }[] = [];
  while (d.pos < bytes.length) {
    const start = d.pos;
    const value = d.item(0);
    out.push({ value, start, end: d.pos });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// Deterministic encoder (RFC 8949 §4.2.1): shortest heads, definite lengths, map keys sorted bytewise.

class Encoder {
  buf: Uint8Array = new Uint8Array(256);
  view = new DataView(this.buf.buffer);
  pos = 0;

  ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const nb = new Uint8Array(size);
    nb.set(this.buf.subarray(0, this.pos));
    this.buf = nb;
    this.view = new DataView(nb.buffer);
  }

  head(mt: number, n: number | bigint): void {
    this.ensure(9);
    const m = mt << 5;
    if (typeof n === 'bigint') {
      if (n < 0n || n > 0xffffffffffffffffn) throw new CoseError('CBOR_ENCODE', 'integer out of CBOR range');
      if (n <= BigInt(Number.MAX_SAFE_INTEGER)) {
        this.head(mt, Number(n));
        return;
      }
      this.buf[this.pos++] = m | 27;
      this.view.setBigUint64(this.pos, n);
      this.pos += 8;
      return;
    }
    if (n < 24) {
      this.buf[this.pos++] = m | n;
    } else if (n <= 0xff) {
      this.buf[this.pos++] = m | 24;
      this.buf[this.pos++] = n;
    } else if (n <= 0xffff) {
      this.buf[this.pos++] = m | 25;
      this.view.setUint16(this.pos, n);
      this.pos += 2;
    } else if (n <= 0xffffffff) {
      this.buf[this.pos++] = m | 26;
      this.view.setUint32(this.pos, n);
      this.pos += 4;
    } else {
      this.buf[this.pos++] = m | 27;
      this.view.setBigUint64(this.pos, BigInt(n));
      this.pos += 8;
    }
  }

  bytes(b: Uint8Array): void {
    this.ensure(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
  }

  value(v: unknown, depth: number): void {
    if (depth > 64) throw new CoseError('CBOR_ENCODE', 'value nested too deeply');
    switch (typeof v) {
      case 'number':
        if (Number.isInteger(v)) {
          if (!Number.isSafeInteger(v)) throw new CoseError('CBOR_ENCODE', 'unsafe integer: use bigint');
          if (v >= 0) this.head(0, v);
          else this.head(1, -1 - v);
        } else this.float(v);
        return;
      case 'bigint':
        if (v >= 0n) this.head(0, v);
        else this.head(1, -1n - v);
        return;
      case 'string': {
        // TextEncoder would silently turn a lone surrogate into U+FFFD.
        if (!v.isWellFormed())
          throw new CoseError('CBOR_ENCODE', 'text with a lone surrogate is not valid UTF-8');
        const b = utf8enc.encode(v);
        this.head(3, b.length);
        this.bytes(b);
        return;
      }
      case 'boolean':
        this.ensure(1);
        this.buf[this.pos++] = v ? 0xf5 : 0xf4;
        return;
      case 'undefined':
        this.ensure(1);
        this.buf[this.pos++] = 0xf7;
        return;
      case 'object':
        break;
      default:
        throw new CoseError('CBOR_ENCODE', `cannot encode a ${typeof v}`);
    }
    if (v === null) {
      this.ensure(1);
      this.buf[this.pos++] = 0xf6;
    } else if (v instanceof Uint8Array) {
      this.head(2, v.length);
      this.bytes(v);
    } else if (Array.isArray(v)) {
      this.head(4, v.length);
      for (const x of v) this.value(x, depth + 1);
    } else if (v instanceof CborMap) {
      this.map(v.entries, depth);
    } else if (v instanceof Map) {
      this.map([...(v as Map<unknown, unknown>).entries()], depth);
    } else if (v instanceof CborTag) {
      this.head(6, v.tag);
      this.value(v.value, depth + 1);
    } else if (v instanceof CborRaw) {
      this.bytes(v.bytes);
    } else if (v instanceof CborSimple) {
      if (v.value < 24) this.head(7, v.value);
      else {
        this.ensure(2);
        this.buf[this.pos++] = 0xf8;
        this.buf[this.pos++] = v.value;
      }
    } else {
      throw new CoseError('CBOR_ENCODE', 'plain objects are not encoded: use Map or CborMap');
    }
  }

  map(entries: ReadonlyArray<readonly [unknown, unknown]>, depth: number): void {
    const encoded = entries.map(([k, val]) => [encode(k), val] as const);
    encoded.sort((a, b) => Buffer.compare(a[0], b[0]));
    for (let i = 1; i < encoded.length; i++) {
      if (Buffer.compare(encoded[i - 1]![0], encoded[i]![0]) === 0) {
        throw new CoseError('CBOR_ENCODE', 'duplicate map key');
      }
    }
    this.head(5, encoded.length);
    for (const [k, val] of encoded) {
      this.bytes(k);
      this.value(val, depth + 1);
    }
  }

  float(v: number): void {
    this.ensure(9);
    const h = numberToHalf(v);
    if (h !== undefined && (Number.isNaN(v) || halfToNumber(h) === v)) {
      this.buf[this.pos++] = 0xf9;
      this.view.setUint16(this.pos, h);
      this.pos += 2;
    } else if (Math.fround(v) === v) {
      this.buf[this.pos++] = 0xfa;
      this.view.setFloat32(this.pos, v);
      this.pos += 4;
    } else {
      this.buf[this.pos++] = 0xfb;
      this.view.setFloat64(this.pos, v);
      this.pos += 8;
    }
  }
}

/**
 * Encodes deterministically. Maps are Map or CborMap (plain objects are refused, so that integer and text keys
 * never mix up); Uint8Array is a byte string; CborTag, CborRaw and CborSimple as named.
 */
export function encode(value: unknown): Uint8Array {
  // Encoders are pooled: encode() is re-entered for map keys, so each call takes its own from the pool.
  const e = encoderPool.pop() ?? new Encoder();
  e.pos = 0;
  try {
    e.value(value, 0);
    return e.buf.slice(0, e.pos);
  } finally {
    if (e.buf.length <= MAX_POOLED_BUFFER && encoderPool.length < 16) encoderPool.push(e);
  }
}

const encoderPool: Encoder[] = [];
const MAX_POOLED_BUFFER = 64 * 1024;

/** The encoded head of a byte string of `length` bytes (e.g. to hash a bstr-wrapped item as it was sent). */
export function bstrHead(length: number): Uint8Array {
  const e = new Encoder();
  e.head(2, length);
  return e.buf.slice(0, e.pos);
}

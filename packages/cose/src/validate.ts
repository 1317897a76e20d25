/**
 * Validators that turn decoded `unknown` CBOR into typed values, naming the path of the bad field.
 * Every failure is a CoseError with code CBOR_TYPE (or the code the caller passes).
 */
import { CborMap, CborTag } from './cbor.ts';
import { CoseError, type CoseErrorCode } from './errors.ts';

/** The CBOR/CDDL name of a decoded value's type, for error messages (`bstr`, `tstr`, `int`, `map`, `nil`, …). */
export function cborTypeName(v: unknown): string {
  if (v === null) return 'nil';
  if (v instanceof Uint8Array) return 'bstr';
  if (Array.isArray(v)) return 'array';
  if (v instanceof CborMap) return 'map';
  if (v instanceof CborTag) return `tag ${v.tag}`;
  if (typeof v === 'string') return 'tstr';
  if (typeof v === 'number' || typeof v === 'bigint') return 'int';
  return typeof v;
}

export function typeError(
  expected: string,
  v: unknown,
  path: string,
  code: CoseErrorCode = 'CBOR_TYPE',
): CoseError {
  return new CoseError(code, `expected ${expected}, found ${cborTypeName(v)}`, path);
}

/** A non-negative integer that fits a JS number (uint up to 2^53-1). */
export function asUint(v: unknown, path: string): number {
  if (typeof v === 'number' && Number.isInteger(v) && v >= 0) return v;
  throw typeError('uint', v, path);
}

/** A non-negative integer of any size (uint64). */
export function asUint64(v: unknown, path: string): bigint {
  if (typeof v === 'number' && Number.isInteger(v) && v >= 0) return BigInt(v);
  if (typeof v === 'bigint' && v >= 0n) return v;
  throw typeError('uint', v, path);
}

/** An integer that fits a JS number (negative allowed). */
export function asInt(v: unknown, path: string): number {
  if (typeof v === 'number' && Number.isInteger(v)) return v;
  throw typeError('int', v, path);
}

export function asBytes(v: unknown, path: string, opts?: { min?: number; max?: number }): Uint8Array {
  if (!(v instanceof Uint8Array)) throw typeError('bstr', v, path);
  if (opts?.min !== undefined && v.length < opts.min) {
    throw new CoseError('CBOR_TYPE', `bstr of ${v.length} bytes is shorter than ${opts.min}`, path);
  }
  if (opts?.max !== undefined && v.length > opts.max) {
    throw new CoseError('CBOR_TYPE', `bstr of ${v.length} bytes is longer than ${opts.max}`, path);
  }
  return v;
}

export function asText(v: unknown, path: string, opts?: { max?: number }): string {
  if (typeof v !== 'string') throw typeError('tstr', v, path);
  if (opts?.max !== undefined && v.length > opts.max) {
    throw new CoseError('CBOR_TYPE', `tstr longer than ${opts.max}`, path);
  }
  return v;
}

export function asBool(v: unknown, path: string): boolean {
  if (typeof v !== 'boolean') throw typeError('bool', v, path);
  return v;
}

export function asArray(v: unknown, path: string, opts?: { min?: number; max?: number }): unknown[] {
  if (!Array.isArray(v)) throw typeError('array', v, path);
  if (opts?.min !== undefined && v.length < opts.min) {
    throw new CoseError('CBOR_TYPE', `array of ${v.length} items, at least ${opts.min} required`, path);
  }
  if (opts?.max !== undefined && v.length > opts.max) {
    throw new CoseError('CBOR_TYPE', `array of ${v.length} items, at most ${opts.max} allowed`, path);
  }
  return v as unknown[];
}

export function asMap(v: unknown, path: string): CborMap {
  if (!(v instanceof CborMap)) throw typeError('map', v, path);
  return v;
}

/** The content of a tag with the expected number. */
export function asTag(v: unknown, tag: number, path: string): unknown {
  if (!(v instanceof CborTag) || v.tag !== tag) throw typeError(`tag ${tag}`, v, path);
  return v.value;
}

/** Fails if the map has a key outside `allowed` (integer or text keys). */
export function checkKeys(m: CborMap, allowed: ReadonlySet<number | string>, path: string): void {
  for (const [k] of m.entries) {
    if ((typeof k !== 'number' && typeof k !== 'string') || !allowed.has(k)) {
      throw new CoseError(
        'CBOR_TYPE',
        `unexpected key ${typeof k === 'string' ? JSON.stringify(k) : String(k)}`,
        path,
      );
    }
  }
}

/** A required member of a map. */
export function required(m: CborMap, key: number | string, path: string): unknown {
  const v = m.get(key);
  if (v === undefined && !m.has(key)) {
    throw new CoseError('CBOR_TYPE', `missing member ${String(key)}`, path);
  }
  return v;
}

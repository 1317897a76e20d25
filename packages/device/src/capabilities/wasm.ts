/**
 * A bounded reader of the parts of a WebAssembly binary (WebAssembly Core Specification 2.0, §5 Binary Format) that
 * decide what a module may do: its imports with their function types (§5.5.5), its memories and tables with their
 * limits (§5.5.6, §5.5.7, §5.3.7), its exports (§5.5.10) and the function types behind them. WebAssembly.Module
 * reflection gives neither import signatures nor memory limits, so the permission and resource checks read them here,
 * before the engine compiles anything. Everything else is skipped by section size; the engine validates the rest.
 *
 * Refused here (the sandbox does not offer them): shared memories (threads), 64-bit memories, tag imports, types
 * outside the MVP function types (GC proposal). Every count and length is checked against the bytes left.
 */
import type { WasmValType } from './host.ts';

export interface WasmFuncType {
  readonly params: readonly WasmValType[];
  readonly results: readonly WasmValType[];
}

export interface WasmLimits {
  readonly min: number;
  readonly max: number | undefined;
}

export type WasmImport =
  | { readonly module: string; readonly name: string; readonly kind: 'func'; readonly type: WasmFuncType }
  | { readonly module: string; readonly name: string; readonly kind: 'table'; readonly limits: WasmLimits }
  | { readonly module: string; readonly name: string; readonly kind: 'memory'; readonly limits: WasmLimits }
  | { readonly module: string; readonly name: string; readonly kind: 'global' };

export type WasmExport =
  | { readonly kind: 'func'; readonly type: WasmFuncType }
  | { readonly kind: 'table' | 'memory' | 'global'; readonly index: number };

export interface WasmInfo {
  readonly imports: readonly WasmImport[];
  /** Memories, imported first (index order). */
  readonly memories: readonly WasmLimits[];
  readonly tables: readonly WasmLimits[];
  readonly exports: ReadonlyMap<string, WasmExport>;
  readonly hasStart: boolean;
}

export class WasmFormatError extends Error {
  override readonly name = 'WasmFormatError';
}

const VALTYPES: ReadonlyMap<number, WasmValType> = new Map([
  [0x7f, 'i32'],
  [0x7e, 'i64'],
  [0x7d, 'f32'],
  [0x7c, 'f64'],
  [0x7b, 'v128'],
  [0x70, 'funcref'],
  [0x6f, 'externref'],
]);
const MAX_ITEMS = 100_000;
const utf8 = new TextDecoder('utf-8', { fatal: true });

class Reader {
  readonly #b: Uint8Array;
  pos: number;
  readonly end: number;

  constructor(b: Uint8Array, pos: number, end: number) {
    this.#b = b;
    this.pos = pos;
    this.end = end;
  }

  byte(): number {
    if (this.pos >= this.end) throw new WasmFormatError(`unexpected end at ${this.pos}`);
    return this.#b[this.pos++]!;
  }

  /** LEB128 u32 (§5.2.2): at most 5 bytes, no bits above 32. */
  u32(): number {
    let result = 0;
    for (let i = 0; i < 5; i++) {
      const b = this.byte();
      if (i === 4 && (b & 0xf0) !== 0) throw new WasmFormatError('u32 LEB128 out of range');
      result += (b & 0x7f) * 2 ** (7 * i);
      if ((b & 0x80) === 0) return result;
    }
    throw new WasmFormatError('u32 LEB128 too long');
  }

  count(): number {
    const n = this.u32();
    if (n > MAX_ITEMS || n > this.end - this.pos)
      throw new WasmFormatError(`count ${n} exceeds what is left`);
    return n;
  }

  name(): string {
    const n = this.u32();
    if (n > this.end - this.pos) throw new WasmFormatError('name runs past the section');
    try {
      return utf8.decode(this.#b.subarray(this.pos, (this.pos += n)));
    } catch {
      throw new WasmFormatError('name is not UTF-8');
    }
  }

  valtype(): WasmValType {
    const b = this.byte();
    const t = VALTYPES.get(b);
    if (t === undefined) throw new WasmFormatError(`value type 0x${b.toString(16)} is not supported`);
    return t;
  }

  limits(what: 'memory' | 'table'): WasmLimits {
    const flag = this.byte();
    if (flag === 0x00) return { min: this.u32(), max: undefined };
    if (flag === 0x01) {
      const min = this.u32();
      const max = this.u32();
      if (max < min) throw new WasmFormatError(`${what} maximum below minimum`);
      return { min, max };
    }
    // 0x02/0x03: shared (threads proposal); 0x04..: 64-bit indices (memory64). Not offered by the sandbox.
    throw new WasmFormatError(
      `${what} limits flag 0x${flag.toString(16)} (shared or 64-bit) is not supported`,
    );
  }
}

/** Reads the module summary. Throws WasmFormatError on anything malformed or outside the supported subset. */
export function readWasmInfo(bytes: Uint8Array): WasmInfo {
  if (
    bytes.length < 8 ||
    bytes[0] !== 0x00 ||
    bytes[1] !== 0x61 ||
    bytes[2] !== 0x73 ||
    bytes[3] !== 0x6d ||
    bytes[4] !== 0x01 ||
    bytes[5] !== 0x00 ||
    bytes[6] !== 0x00 ||
    bytes[7] !== 0x00
  ) {
    throw new WasmFormatError('not a WebAssembly 1.0 binary (magic, version)');
  }
  const top = new Reader(bytes, 8, bytes.length);
  const types: WasmFuncType[] = [];
  const funcTypes: WasmFuncType[] = []; // imported functions first, then defined
  const imports: WasmImport[] = [];
  const memories: WasmLimits[] = [];
  const tables: WasmLimits[] = [];
  const exports = new Map<string, WasmExport>();
  let memoryCount = 0;
  let tableCount = 0;
  let globalCount = 0;
  let hasStart = false;
  let lastId = 0;
  const typeAt = (i: number): WasmFuncType => {
    const t = types[i];
    if (t === undefined) throw new WasmFormatError(`type index ${i} out of range`);
    return t;
  };
  while (top.pos < top.end) {
    const id = top.byte();
    const size = top.u32();
    if (size > top.end - top.pos) throw new WasmFormatError(`section ${id} runs past the end`);
    const r = new Reader(bytes, top.pos, top.pos + size);
    top.pos += size;
    if (id !== 0) {
      // §5.5.2: non-custom sections appear at most once, in order (12 datacount sits before 10 code).
      const order = id === 12 ? 9.5 : id === 13 ? 5.5 : id;
      if (order <= lastId) throw new WasmFormatError(`section ${id} out of order or repeated`);
      lastId = order;
    }
    switch (id) {
      case 1: {
        for (let n = r.count(), i = 0; i < n; i++) {
          const form = r.byte();
          if (form !== 0x60) throw new WasmFormatError(`type form 0x${form.toString(16)} is not supported`);
          const params = Array.from({ length: r.count() }, () => r.valtype());
          const results = Array.from({ length: r.count() }, () => r.valtype());
          types.push({ params, results });
        }
        break;
      }
      case 2: {
        for (let n = r.count(), i = 0; i < n; i++) {
          const module = r.name();
          const name = r.name();
          const kind = r.byte();
          if (kind === 0x00) {
            const type = typeAt(r.u32());
            funcTypes.push(type);
            imports.push({ module, name, kind: 'func', type });
          } else if (kind === 0x01) {
            r.valtype();
            const limits = r.limits('table');
            tables.push(limits);
            tableCount++;
            imports.push({ module, name, kind: 'table', limits });
          } else if (kind === 0x02) {
            const limits = r.limits('memory');
            memories.push(limits);
            memoryCount++;
            imports.push({ module, name, kind: 'memory', limits });
          } else if (kind === 0x03) {
            r.valtype();
            r.byte();
            globalCount++;
            imports.push({ module, name, kind: 'global' });
          } else {
            throw new WasmFormatError(`import kind 0x${kind.toString(16)} is not supported`);
          }
        }
        break;
      }
      case 3:
        for (let n = r.count(), i = 0; i < n; i++) funcTypes.push(typeAt(r.u32()));
        break;
      case 4:
        for (let n = r.count(), i = 0; i < n; i++) {
          r.valtype();
          tables.push(r.limits('table'));
          tableCount++;
        }
        break;
      case 5:
        for (let n = r.count(), i = 0; i < n; i++) {
          memories.push(r.limits('memory'));
          memoryCount++;
        }
        break;
      case 6:
        globalCount += r.u32();
        r.pos = r.end;
        break;
      case 7:
        for (let n = r.count(), i = 0; i < n; i++) {
          const name = r.name();
          const kind = r.byte();
          const index = r.u32();
          if (exports.has(name)) throw new WasmFormatError(`export ${name} repeated`);
          if (kind === 0x00) {
            const type = funcTypes[index];
            if (type === undefined)
              throw new WasmFormatError(`export ${name}: function ${index} out of range`);
            exports.set(name, { kind: 'func', type });
          } else if (kind === 0x01 || kind === 0x02 || kind === 0x03) {
            const k = kind === 0x01 ? 'table' : kind === 0x02 ? 'memory' : 'global';
            const bound = kind === 0x01 ? tableCount : kind === 0x02 ? memoryCount : globalCount;
            if (index >= bound) throw new WasmFormatError(`export ${name}: ${k} ${index} out of range`);
            exports.set(name, { kind: k, index });
          } else {
            throw new WasmFormatError(`export kind 0x${kind.toString(16)} is not supported`);
          }
        }
        break;
      case 8:
        hasStart = true;
        r.pos = r.end;
        break;
      default:
        r.pos = r.end; // custom, element, code, data, datacount, tag: left to the engine's validation
    }
    if (r.pos !== r.end) throw new WasmFormatError(`section ${id} has trailing bytes`);
  }
  return { imports, memories, tables, exports, hasStart };
}

export function sameFuncType(
  a: WasmFuncType,
  b: { params: readonly string[]; results: readonly string[] },
): boolean {
  return (
    a.params.length === b.params.length &&
    a.results.length === b.results.length &&
    a.params.every((p, i) => p === b.params[i]) &&
    a.results.every((p, i) => p === b.results[i])
  );
}

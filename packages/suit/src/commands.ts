/**
 * SUIT_Command_Sequence parsing and encoding (draft-ietf-suit-manifest-34 §8.4.7, plus the commands of
 * draft-ietf-suit-trust-domains (TD), draft-ietf-suit-update-management (UM) and draft-ietf-suit-firmware-encryption
 * (ENC)).
 * CONTRACT (shared by the envelope decoder, the builder and the processor): the types below,
 * `parseCommandSequence`, `encodeCommandSequence`, `encodeParameters` and `parseParameterValue`.
 *
 * Strictness: every sequence is decoded with the strict CBOR profile (deterministic encoding, canonical map key
 * order, MF §8.2 "All maps ... canonical"), every command must be known (UM §3: an unknown command rejects the
 * manifest), every argument and every parameter is validated by its type, and nesting / command counts are bounded.
 * Because the input is deterministic CBOR, `encodeCommandSequence(parseCommandSequence(b))` reproduces `b` exactly.
 */
import { CborMap, CborRaw, CborTag, CoseError, cborTypeName, decode, encode } from '@rotor/cose';
import { COMMANDS, PARAMETERS, type ParamType, Tag, commandName } from './codes.ts';
import { SuitError } from './errors.ts';
import type { SuitDigest } from './model.ts';
import { isOwned } from './owned.ts';

/** A validated parameter value. `raw` is the parameter's encoded CBOR value (for constant-time comparisons). */
export type ParamValue =
  | {
      readonly type: 'vendor-id';
      readonly bytes: Uint8Array;
      readonly pen: boolean;
      readonly raw: Uint8Array;
    }
  | { readonly type: 'uuid'; readonly bytes: Uint8Array; readonly raw: Uint8Array }
  | { readonly type: 'digest'; readonly digest: SuitDigest; readonly raw: Uint8Array }
  | { readonly type: 'uint'; readonly value: bigint; readonly raw: Uint8Array }
  | { readonly type: 'int'; readonly value: bigint; readonly raw: Uint8Array }
  | { readonly type: 'bool'; readonly value: boolean; readonly raw: Uint8Array }
  | { readonly type: 'bstr'; readonly bytes: Uint8Array; readonly raw: Uint8Array }
  | { readonly type: 'tstr'; readonly value: string; readonly raw: Uint8Array }
  /** bstr .cbor COSE_Encrypt / COSE_Encrypt0: `bytes` are the wrapped COSE bytes, decoded by the consumer. */
  | { readonly type: 'encryption-info'; readonly bytes: Uint8Array; readonly raw: Uint8Array }
  | {
      readonly type: 'version';
      readonly comparison: number;
      readonly parts: readonly number[];
      readonly raw: Uint8Array;
    }
  | { readonly type: 'wait-info'; readonly events: ReadonlyMap<number, unknown>; readonly raw: Uint8Array }
  | { readonly type: 'component-metadata'; readonly bytes: Uint8Array; readonly raw: Uint8Array }
  | { readonly type: 'custom'; readonly value: unknown; readonly raw: Uint8Array };

/** Parameters keyed by their integer code. */
export type SuitParameters = ReadonlyMap<number, ParamValue>;

export type SuitCommand =
  /** Conditions and directives whose argument is a reporting policy (uint). */
  | { readonly op: 'policy'; readonly code: number; readonly policy: number }
  /**
   * directive-set-component-index (12): `true` = all components, or the listed indices (MF §8.4.10.1).
   * A single index is encoded as a bare uint unless `asArray` is set (the parser sets it when the wire carried a
   * one-element array), so that parse → encode reproduces the input.
   */
  | {
      readonly op: 'set-component-index';
      readonly code: 12;
      readonly index: true | readonly number[];
      readonly asArray?: boolean;
    }
  /** directive-try-each (15): ≥2 alternatives, optional trailing nil (MF §8.4.10.2). */
  | {
      readonly op: 'try-each';
      readonly code: 15;
      readonly alternatives: readonly (readonly SuitCommand[])[];
      readonly trailingNil: boolean;
    }
  /** directive-set-parameters (19, TD) / override-parameters (20, MF §8.4.10.3). */
  | { readonly op: 'params'; readonly code: 19 | 20; readonly params: SuitParameters }
  /** directive-run-sequence (32, MF §8.4.10.6). */
  | { readonly op: 'run-sequence'; readonly code: 32; readonly sequence: readonly SuitCommand[] }
  /** directive-override-multiple (34, UM): component index → parameters. */
  | {
      readonly op: 'override-multiple';
      readonly code: 34;
      readonly perComponent: ReadonlyMap<number, SuitParameters>;
    }
  /** directive-copy-params (35, UM): source component index → parameter codes. */
  | { readonly op: 'copy-params'; readonly code: 35; readonly copies: ReadonlyMap<number, readonly number[]> }
  /** Custom command (code < -256, MF §8.4.7). Argument: bstr / tstr / int / nil. */
  | { readonly op: 'custom'; readonly code: number; readonly arg: unknown };

export interface ParseLimits {
  /** Deepest nesting of try-each / run-sequence (default 8). */
  readonly maxNesting?: number;
  /** Most commands in one sequence including nested ones (default 1024). */
  readonly maxCommands?: number;
}

export const DEFAULT_MAX_NESTING = 8;
export const DEFAULT_MAX_COMMANDS = 1024;

/** Largest reporting policy: the four bits of suit-reporting-bits (MF §8.4.7 SUIT_Rep_Policy). */
const MAX_POLICY = 15;
/** Custom commands and parameters use codes below -256 (MF §8.4.7, IANA "private use" ≤ -256). */
const CUSTOM_LIMIT = -256;

interface ParseState {
  commands: number;
  readonly maxCommands: number;
  readonly maxNesting: number;
}

function invalid(message: string, path: string, cause?: unknown): SuitError {
  return new SuitError('SUIT_COMMAND_INVALID', message, path, cause === undefined ? undefined : { cause });
}

function paramInvalid(message: string, path: string, cause?: unknown): SuitError {
  return new SuitError('SUIT_PARAMETER_INVALID', message, path, cause === undefined ? undefined : { cause });
}

function isSmallUint(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

// Decoding options: command sequences record each map value's bytes (a parameter's `raw` is then its bytes as
// received instead of a re-encoding); input inside the envelope decoder's private copy is decoded into views.
const SEQ = { sortedKeys: true, valueSpans: true };
const SEQ_SHARED = { sortedKeys: true, valueSpans: true, shareBytes: true };
const ITEM = { sortedKeys: true };
const ITEM_SHARED = { sortedKeys: true, shareBytes: true };
const PEER = { sortedKeys: false };
const PEER_SHARED = { sortedKeys: false, shareBytes: true };

/**
 * Strict decode of an embedded CBOR item; CBOR errors become SUIT errors with the path (`path` or, when `suffix`
 * is given, `path` + `suffix`: formatted only on failure).
 */
function decodeStrict(
  bytes: Uint8Array,
  path: string,
  kind: 'command' | 'parameter',
  opts?: { sortedKeys?: boolean },
  suffix?: string,
): unknown {
  try {
    const share = isOwned(bytes);
    if (kind === 'command') return decode(bytes, share ? SEQ_SHARED : SEQ);
    if (opts?.sortedKeys === false) return decode(bytes, share ? PEER_SHARED : PEER);
    return decode(bytes, share ? ITEM_SHARED : ITEM);
  } catch (e) {
    const msg = e instanceof CoseError ? `${e.code}: ${e.message}` : String(e);
    const at = suffix === undefined ? path : path + suffix;
    throw kind === 'command'
      ? invalid(`malformed CBOR (${msg})`, at, e)
      : paramInvalid(`malformed CBOR (${msg})`, at, e);
  }
}

/** `path[i]`: paths of hot items are formatted only when an error needs them. */
function ix(path: string, i: number): string {
  return `${path}[${i}]`;
}

/**
 * Decodes and validates one command sequence from its bytes (the content of a `bstr .cbor SUIT_Command_Sequence`).
 * Unknown commands and parameters with codes ≥ -256 are refused (SUIT_COMMAND_UNSUPPORTED /
 * SUIT_PARAMETER_UNSUPPORTED); malformed ones raise SUIT_COMMAND_INVALID / SUIT_PARAMETER_INVALID with a path;
 * exceeding the limits raises SUIT_PROCESSOR_LIMIT.
 */
export function parseCommandSequence(bytes: Uint8Array, path: string, limits?: ParseLimits): SuitCommand[] {
  const state: ParseState = {
    commands: 0,
    maxCommands: limits?.maxCommands ?? DEFAULT_MAX_COMMANDS,
    maxNesting: limits?.maxNesting ?? DEFAULT_MAX_NESTING,
  };
  return parseSequenceBytes(bytes, path, 0, state);
}

function parseSequenceBytes(
  bytes: Uint8Array,
  path: string,
  depth: number,
  state: ParseState,
): SuitCommand[] {
  if (depth > state.maxNesting) {
    throw new SuitError(
      'SUIT_PROCESSOR_LIMIT',
      `command sequences nested deeper than ${state.maxNesting}`,
      path,
    );
  }
  const seq = decodeStrict(bytes, path, 'command');
  return parseSequenceValue(seq, path, depth, state);
}

function parseSequenceValue(seq: unknown, path: string, depth: number, state: ParseState): SuitCommand[] {
  // MF §8.4.7: SUIT_Command_Sequence = [ + ( SUIT_Condition // SUIT_Directive // SUIT_Command_Custom ) ]
  if (!Array.isArray(seq))
    throw invalid(`command sequence must be an array, found ${cborTypeName(seq)}`, path);
  const items = seq as unknown[];
  if (items.length === 0) throw invalid('command sequence is empty (at least one command required)', path);
  if (items.length % 2 !== 0)
    throw invalid(`command sequence has odd length ${items.length}: (code, argument) pairs expected`, path);
  const out: SuitCommand[] = [];
  for (let i = 0; i < items.length; i += 2) {
    state.commands++;
    if (state.commands > state.maxCommands) {
      throw new SuitError('SUIT_PROCESSOR_LIMIT', `more than ${state.maxCommands} commands`, ix(path, i));
    }
    out.push(parseCommand(items[i], items[i + 1], path, i, depth, state));
  }
  return out;
}

function parseCommand(
  code: unknown,
  arg: unknown,
  path: string,
  i: number,
  depth: number,
  state: ParseState,
): SuitCommand {
  // The code is at path[i], the argument at path[i + 1] (formatted only on failure, or for nested items).
  if (typeof code !== 'number' || !Number.isSafeInteger(code)) {
    if (typeof code === 'bigint')
      throw new SuitError('SUIT_COMMAND_UNSUPPORTED', `unknown command ${code}`, ix(path, i));
    throw invalid(`command code must be an int, found ${cborTypeName(code)}`, ix(path, i));
  }
  if (code < CUSTOM_LIMIT) {
    // MF §8.4.7: SUIT_Command_Custom = (suit-command-custom, bstr/tstr/int/nil)
    const ok =
      arg === null ||
      arg instanceof Uint8Array ||
      typeof arg === 'string' ||
      typeof arg === 'number' ||
      typeof arg === 'bigint';
    if (!ok)
      throw invalid(
        `custom command argument must be bstr, tstr, int or nil, found ${cborTypeName(arg)}`,
        ix(path, i + 1),
      );
    return { op: 'custom', code, arg };
  }
  const info = COMMANDS.get(code);
  // UM §3 / MF §8.4.7: a processor must reject a manifest with a command it does not understand.
  if (info === undefined)
    throw new SuitError('SUIT_COMMAND_UNSUPPORTED', `unknown command ${code}`, ix(path, i));
  const name = info.name;
  switch (info.arg) {
    case 'policy':
      // MF §8.4.7: SUIT_Rep_Policy = uint .bits suit-reporting-bits (4 bits)
      if (!isSmallUint(arg) || arg > MAX_POLICY) {
        throw invalid(
          `${name}: reporting policy must be a uint 0..${MAX_POLICY}, found ${cborTypeName(arg)} ${String(arg)}`,
          ix(path, i + 1),
        );
      }
      return { op: 'policy', code, policy: arg };
    case 'index':
      return parseIndexArg(arg, path, i + 1);
    case 'try-each':
      return parseTryEach(arg, ix(path, i + 1), depth, state);
    case 'params':
      return { op: 'params', code: code === 19 ? 19 : 20, params: parseParameters(arg, path, i + 1) };
    case 'sequence':
      // MF §8.4.10.6: SUIT_Directive_Run_Sequence = bstr .cbor SUIT_Command_Sequence
      if (!(arg instanceof Uint8Array)) {
        throw invalid(
          `${name}: argument must be a bstr-wrapped sequence, found ${cborTypeName(arg)}`,
          ix(path, i + 1),
        );
      }
      return {
        op: 'run-sequence',
        code: 32,
        sequence: parseSequenceBytes(arg, `${ix(path, i + 1)}.cbor`, depth + 1, state),
      };
    case 'override-multiple':
      return parseOverrideMultiple(arg, ix(path, i + 1));
    case 'copy-params':
      return parseCopyParams(arg, ix(path, i + 1));
  }
}

function parseIndexArg(arg: unknown, seqPath: string, i: number): SuitCommand {
  // MF §8.4.10.1: IndexArg /= uint, IndexArg /= true, IndexArg /= [+uint]. The argument is at seqPath[i].
  if (arg === true) return { op: 'set-component-index', code: 12, index: true };
  if (isSmallUint(arg)) return { op: 'set-component-index', code: 12, index: [arg] };
  if (Array.isArray(arg)) {
    const list = arg as unknown[];
    if (list.length === 0)
      throw invalid('set-component-index: index array must not be empty', ix(seqPath, i));
    const index = list.map((v, j) => {
      if (!isSmallUint(v)) {
        throw invalid(
          `set-component-index: index must be a uint, found ${cborTypeName(v)}`,
          ix(ix(seqPath, i), j),
        );
      }
      return v;
    });
    return index.length === 1
      ? { op: 'set-component-index', code: 12, index, asArray: true }
      : { op: 'set-component-index', code: 12, index };
  }
  throw invalid(
    `set-component-index: argument must be uint, true or [+uint], found ${cborTypeName(arg)}`,
    ix(seqPath, i),
  );
}

function parseTryEach(arg: unknown, path: string, depth: number, state: ParseState): SuitCommand {
  // MF §8.4.10.2: SUIT_Directive_Try_Each_Argument = [ 2* bstr .cbor SUIT_Command_Sequence, ?nil ]
  if (!Array.isArray(arg))
    throw invalid(`try-each: argument must be an array, found ${cborTypeName(arg)}`, path);
  const list = arg as unknown[];
  const trailingNil = list.length > 0 && list[list.length - 1] === null;
  const seqs = trailingNil ? list.slice(0, -1) : list;
  if (seqs.length < 2)
    throw invalid(`try-each: at least 2 alternatives required, found ${seqs.length}`, path);
  const alternatives = seqs.map((s, j) => {
    if (!(s instanceof Uint8Array))
      throw invalid(
        `try-each: alternative must be a bstr-wrapped sequence, found ${cborTypeName(s)}`,
        `${path}[${j}]`,
      );
    return parseSequenceBytes(s, `${path}[${j}].cbor`, depth + 1, state);
  });
  return { op: 'try-each', code: 15, alternatives, trailingNil };
}

function parseOverrideMultiple(arg: unknown, path: string): SuitCommand {
  // UM: SUIT_Override_Mult_Arg = { + uint => { + $$SUIT_Parameters } }
  if (!(arg instanceof CborMap) || arg.size === 0)
    throw invalid(`override-multiple: argument must be a non-empty map, found ${cborTypeName(arg)}`, path);
  const perComponent = new Map<number, SuitParameters>();
  for (const [k, v] of arg.entries) {
    if (!isSmallUint(k))
      throw invalid(
        `override-multiple: key must be a component index (uint), found ${cborTypeName(k)}`,
        path,
      );
    perComponent.set(k, parseParameters(v, `${path}{${k}}`, undefined));
  }
  return { op: 'override-multiple', code: 34, perComponent };
}

function parseCopyParams(arg: unknown, path: string): SuitCommand {
  // UM: SUIT_Directive_Copy_Params = { + uint => [ + int ] }
  if (!(arg instanceof CborMap) || arg.size === 0)
    throw invalid(`copy-params: argument must be a non-empty map, found ${cborTypeName(arg)}`, path);
  const copies = new Map<number, readonly number[]>();
  for (const [k, v] of arg.entries) {
    if (!isSmallUint(k))
      throw invalid(
        `copy-params: key must be a source component index (uint), found ${cborTypeName(k)}`,
        path,
      );
    const p = `${path}{${k}}`;
    if (!Array.isArray(v) || v.length === 0)
      throw invalid(
        `copy-params: value must be a non-empty array of parameter codes, found ${cborTypeName(v)}`,
        p,
      );
    const codes = (v as unknown[]).map((c, j) => {
      if (typeof c !== 'number' || !Number.isSafeInteger(c))
        throw invalid(`copy-params: parameter code must be an int, found ${cborTypeName(c)}`, `${p}[${j}]`);
      if (c >= CUSTOM_LIMIT && !PARAMETERS.has(c))
        throw new SuitError('SUIT_PARAMETER_UNSUPPORTED', `unknown parameter ${c}`, `${p}[${j}]`);
      return c;
    });
    copies.set(k, codes);
  }
  return { op: 'copy-params', code: 35, copies };
}

/** Validates a `{ + SUIT_Parameters }` map (MF §8.4.8) at `path`, or at `path[index]` when index is given. */
function parseParameters(arg: unknown, path: string, index: number | undefined): SuitParameters {
  if (!(arg instanceof CborMap))
    throw invalid(`parameters must be a map, found ${cborTypeName(arg)}`, at(path, index));
  if (arg.size === 0) throw invalid('parameters map must not be empty', at(path, index));
  const out = new Map<number, ParamValue>();
  const entries = arg.entries;
  for (let j = 0; j < entries.length; j++) {
    const [k, v] = entries[j]!;
    if (typeof k !== 'number' || !Number.isSafeInteger(k)) {
      if (typeof k === 'bigint')
        throw new SuitError('SUIT_PARAMETER_UNSUPPORTED', `unknown parameter ${k}`, at(path, index));
      throw paramInvalid(`parameter key must be an int, found ${cborTypeName(k)}`, at(path, index));
    }
    // The value's bytes as received equal its deterministic encoding (strict decode), when they were recorded.
    out.set(k, parameterValue(k, v, path, index, arg.valueBytes(j)));
  }
  return out;
}

function at(path: string, index: number | undefined): string {
  return index === undefined ? path : ix(path, index);
}

/** The path of parameter `code` in the map at `path` / `path[index]` (or `path` itself when code is undefined). */
function paramPath(path: string, index: number | undefined, code: number | undefined): string {
  return code === undefined ? path : `${at(path, index)}{${code}}`;
}

/**
 * Validates one parameter value by the type of its code (MF §8.4.8 and the extension drafts) and returns the
 * typed value with its deterministic encoding. Used by the parser and by builders that construct parameters.
 */
export function parseParameterValue(code: number, value: unknown, path: string): ParamValue {
  return parameterValue(code, value, path, undefined, undefined, true);
}

/**
 * parseParameterValue with a lazily formatted path (see paramPath; `whole` = `path` is the parameter's own path)
 * and, when known, the value's encoding as received (`raw`, else it is encoded here).
 */
function parameterValue(
  code: number,
  value: unknown,
  base: string,
  index: number | undefined,
  received: Uint8Array | undefined,
  whole = false,
): ParamValue {
  const pc = whole ? undefined : code;
  const info = PARAMETERS.get(code);
  if (info === undefined) {
    if (code < CUSTOM_LIMIT) {
      // MF §8.4.8.16: SUIT_Parameters //= (suit-parameter-custom => int/bool/tstr/bstr)
      const ok =
        typeof value === 'boolean' ||
        value instanceof Uint8Array ||
        typeof value === 'string' ||
        typeof value === 'number' ||
        typeof value === 'bigint';
      if (!ok)
        throw paramInvalid(
          `custom parameter must be int, bool, tstr or bstr, found ${cborTypeName(value)}`,
          paramPath(base, index, pc),
        );
      return { type: 'custom', value, raw: received ?? encode(value) };
    }
    throw new SuitError(
      'SUIT_PARAMETER_UNSUPPORTED',
      `unknown parameter ${code}`,
      paramPath(base, index, pc),
    );
  }
  return parseTyped(info.type, info.name, value, base, index, pc, received);
}

function expectBytes(
  name: string,
  value: unknown,
  base: string,
  index: number | undefined,
  code: number | undefined,
): Uint8Array {
  if (!(value instanceof Uint8Array))
    throw paramInvalid(`${name} must be a bstr, found ${cborTypeName(value)}`, paramPath(base, index, code));
  return value;
}

function parseTyped(
  type: ParamType,
  name: string,
  value: unknown,
  base: string,
  index: number | undefined,
  code: number | undefined,
  received: Uint8Array | undefined,
): ParamValue {
  // The parameter's path is paramPath(base, index, code), formatted only when needed.
  switch (type) {
    case 'vendor-id': {
      // MF §8.4.8.3: vendor-identifier => RFC4122_UUID / cbor-pen (#6.112(bstr))
      if (value instanceof CborTag) {
        if (value.tag !== Tag.pen || !(value.value instanceof Uint8Array) || value.value.length === 0) {
          throw paramInvalid(
            `${name} must be a 16-byte UUID or tag 112 (PEN) around a non-empty bstr`,
            paramPath(base, index, code),
          );
        }
        return { type: 'vendor-id', bytes: value.value, pen: true, raw: received ?? encode(value) };
      }
      const b = expectBytes(name, value, base, index, code);
      if (b.length !== 16)
        throw paramInvalid(`${name} UUID must be 16 bytes, found ${b.length}`, paramPath(base, index, code));
      return { type: 'vendor-id', bytes: b, pen: false, raw: received ?? encode(value) };
    }
    case 'uuid': {
      // MF §8.4.8.4 / §8.4.8.5: RFC4122_UUID = bstr .size 16
      const b = expectBytes(name, value, base, index, code);
      if (b.length !== 16)
        throw paramInvalid(`${name} UUID must be 16 bytes, found ${b.length}`, paramPath(base, index, code));
      return { type: 'uuid', bytes: b, raw: received ?? encode(value) };
    }
    case 'digest': {
      const path = paramPath(base, index, code);
      // MF §8.4.8.6: image-digest => bstr .cbor SUIT_Digest; MF §8.3: SUIT_Digest = [alg, bstr, * ext]
      const b = expectBytes(name, value, path, undefined, undefined);
      const d = decodeStrict(b, `${path}.cbor`, 'parameter');
      if (!Array.isArray(d) || d.length < 2)
        throw paramInvalid(`${name}: SUIT_Digest must be [algorithm-id, digest-bytes]`, `${path}.cbor`);
      const [alg, bytes] = d as unknown[];
      if (typeof alg !== 'number' || !Number.isSafeInteger(alg))
        throw paramInvalid(
          `${name}: digest algorithm must be an int, found ${cborTypeName(alg)}`,
          `${path}.cbor[0]`,
        );
      if (!(bytes instanceof Uint8Array))
        throw paramInvalid(
          `${name}: digest bytes must be a bstr, found ${cborTypeName(bytes)}`,
          `${path}.cbor[1]`,
        );
      return { type: 'digest', digest: { alg, bytes }, raw: received ?? encode(value) };
    }
    case 'uint':
      if (isSmallUint(value)) return { type: 'uint', value: BigInt(value), raw: received ?? encode(value) };
      if (typeof value === 'bigint' && value >= 0n)
        return { type: 'uint', value, raw: received ?? encode(value) };
      throw paramInvalid(
        `${name} must be a uint, found ${cborTypeName(value)} ${String(value)}`,
        paramPath(base, index, code),
      );
    case 'int':
      if (typeof value === 'number' && Number.isSafeInteger(value))
        return { type: 'int', value: BigInt(value), raw: received ?? encode(value) };
      if (typeof value === 'bigint') return { type: 'int', value, raw: received ?? encode(value) };
      throw paramInvalid(
        `${name} must be an int, found ${cborTypeName(value)}`,
        paramPath(base, index, code),
      );
    case 'bool':
      if (typeof value !== 'boolean')
        throw paramInvalid(
          `${name} must be a bool, found ${cborTypeName(value)}`,
          paramPath(base, index, code),
        );
      return { type: 'bool', value, raw: received ?? encode(value) };
    case 'bstr':
      return {
        type: 'bstr',
        bytes: expectBytes(name, value, base, index, code),
        raw: received ?? encode(value),
      };
    case 'tstr':
      if (typeof value !== 'string')
        throw paramInvalid(
          `${name} must be a tstr, found ${cborTypeName(value)}`,
          paramPath(base, index, code),
        );
      return { type: 'tstr', value, raw: received ?? encode(value) };
    case 'encryption-info': {
      const path = paramPath(base, index, code);
      // ENC §4: encryption-info => bstr .cbor SUIT_Encryption_Info; SUIT_Encryption_Info = COSE_Encrypt_Tagged /
      // COSE_Encrypt0_Tagged. Only the shape is checked here (peer COSE headers need not be canonical); the COSE
      // layer validates and decrypts later.
      const b = expectBytes(name, value, path, undefined, undefined);
      const d = decodeStrict(b, `${path}.cbor`, 'parameter', { sortedKeys: false });
      const shapeOk =
        d instanceof CborTag &&
        ((d.tag === Tag.coseEncrypt && Array.isArray(d.value) && d.value.length === 4) ||
          (d.tag === Tag.coseEncrypt0 && Array.isArray(d.value) && d.value.length === 3));
      if (!shapeOk)
        throw paramInvalid(
          `${name} must wrap a tagged COSE_Encrypt (96, 4 items) or COSE_Encrypt0 (16, 3 items)`,
          `${path}.cbor`,
        );
      return { type: 'encryption-info', bytes: b, raw: received ?? encode(value) };
    }
    case 'version': {
      const path = paramPath(base, index, code);
      // UM: version => bstr .cbor SUIT_Parameter_Version_Match = [comparison-type 1..5, [+int]]
      const b = expectBytes(name, value, path, undefined, undefined);
      const vp = `${path}.cbor`;
      const d = decodeStrict(b, vp, 'parameter');
      if (!Array.isArray(d) || d.length !== 2)
        throw paramInvalid(`${name} must be [comparison-type, [+int]]`, vp);
      const [cmp, parts] = d as unknown[];
      if (!isSmallUint(cmp) || cmp < 1 || cmp > 5)
        throw paramInvalid(`${name}: comparison type must be 1..5, found ${String(cmp)}`, `${vp}[0]`);
      if (!Array.isArray(parts) || parts.length === 0)
        throw paramInvalid(`${name}: comparison value must be a non-empty int array`, `${vp}[1]`);
      const ints = (parts as unknown[]).map((x, j) => {
        if (typeof x !== 'number' || !Number.isSafeInteger(x))
          throw paramInvalid(`${name}: version part must be an int`, `${vp}[1][${j}]`);
        return x;
      });
      return { type: 'version', comparison: cmp, parts: ints, raw: received ?? encode(value) };
    }
    case 'wait-info': {
      const path = paramPath(base, index, code);
      // UM: wait-info => bstr .cbor SUIT_Wait_Event = { + SUIT_Wait_Events }
      const b = expectBytes(name, value, path, undefined, undefined);
      const vp = `${path}.cbor`;
      const d = decodeStrict(b, vp, 'parameter');
      if (!(d instanceof CborMap) || d.size === 0)
        throw paramInvalid(`${name} must be a non-empty map of wait events`, vp);
      const events = new Map<number, unknown>();
      for (const [k, v] of d.entries) {
        if (typeof k !== 'number' || !Number.isSafeInteger(k))
          throw paramInvalid(`${name}: wait event must be an int, found ${cborTypeName(k)}`, vp);
        checkWaitEvent(k, v, `${vp}{${k}}`);
        events.set(k, v);
      }
      return { type: 'wait-info', events, raw: received ?? encode(value) };
    }
    case 'component-metadata': {
      const path = paramPath(base, index, code);
      // UM: component-metadata => bstr .cbor SUIT_Component_Metadata (a map with int keys)
      const b = expectBytes(name, value, path, undefined, undefined);
      const d = decodeStrict(b, `${path}.cbor`, 'parameter');
      if (!(d instanceof CborMap))
        throw paramInvalid(`${name} must wrap a map, found ${cborTypeName(d)}`, `${path}.cbor`);
      for (const k of d.keys()) {
        if (typeof k !== 'number')
          throw paramInvalid(`${name}: metadata keys must be ints, found ${cborTypeName(k)}`, `${path}.cbor`);
      }
      return { type: 'component-metadata', bytes: b, raw: received ?? encode(value) };
    }
  }
}

/** UM SUIT_Wait_Events value types; unknown events (e.g. custom) are kept as-is and judged by the platform. */
function checkWaitEvent(event: number, v: unknown, path: string): void {
  const isInt = (x: unknown): boolean =>
    (typeof x === 'number' && Number.isSafeInteger(x)) || typeof x === 'bigint';
  const isUint = (x: unknown): boolean =>
    (typeof x === 'number' && Number.isSafeInteger(x) && x >= 0) || (typeof x === 'bigint' && x >= 0n);
  switch (event) {
    case 1: // authorization => int
    case 2: // power => int
    case 3: // network => int
      if (!isInt(v)) throw paramInvalid(`wait event ${event} must be an int`, path);
      return;
    case 4: // other-device-version => [bstr, [+ SUIT_Parameter_Version_Match]]
      if (
        !Array.isArray(v) ||
        v.length !== 2 ||
        !(v[0] instanceof Uint8Array) ||
        !Array.isArray(v[1]) ||
        v[1].length === 0
      ) {
        throw paramInvalid('wait event 4 must be [other-device bstr, [+version-match]]', path);
      }
      return;
    case 5: // time
    case 6: // time-of-day
    case 7: // day-of-week
    case 8: // time-of-day-utc
    case 9: // day-of-week-utc
      if (!isUint(v)) throw paramInvalid(`wait event ${event} must be a uint`, path);
      return;
    default:
      return;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Encoding (deterministic, RFC 8949 §4.2.1)

/** The CBOR map of a parameter set, using each value's `raw` encoding. */
function parametersValue(params: SuitParameters): Map<number, CborRaw> {
  const m = new Map<number, CborRaw>();
  for (const [k, v] of params) m.set(k, new CborRaw(v.raw));
  return m;
}

/** Encodes a `{ + SUIT_Parameters }` map deterministically. */
export function encodeParameters(params: SuitParameters): Uint8Array {
  return encode(parametersValue(params));
}

function commandArgument(c: SuitCommand): unknown {
  switch (c.op) {
    case 'policy':
      return c.policy;
    case 'set-component-index':
      if (c.index === true) return true;
      return c.index.length === 1 && c.asArray !== true ? c.index[0] : [...c.index];
    case 'try-each': {
      const alts: unknown[] = c.alternatives.map((a) => encodeCommandSequence(a));
      if (c.trailingNil) alts.push(null);
      return alts;
    }
    case 'params':
      return parametersValue(c.params);
    case 'run-sequence':
      return encodeCommandSequence(c.sequence);
    case 'override-multiple': {
      const m = new Map<number, unknown>();
      for (const [k, p] of c.perComponent) m.set(k, parametersValue(p));
      return m;
    }
    case 'copy-params': {
      const m = new Map<number, unknown>();
      for (const [k, codes] of c.copies) m.set(k, [...codes]);
      return m;
    }
    case 'custom':
      return c.arg;
  }
}

/**
 * Encodes a command sequence deterministically (the content of a `bstr .cbor SUIT_Command_Sequence`).
 * Round trip: for any sequence accepted by `parseCommandSequence`, re-encoding gives the identical bytes.
 */
export function encodeCommandSequence(commands: readonly SuitCommand[]): Uint8Array {
  const items: unknown[] = [];
  for (const c of commands) {
    items.push(c.code, commandArgument(c));
  }
  return encode(items);
}

/** A short human description of a command, e.g. for logs and reports. */
export function describeCommand(c: SuitCommand): string {
  return `${commandName(c.code)}(${c.code})`;
}

/** Length of a CBOR head with argument `n` (RFC 8949 §3: shortest form). */
function headLength(n: number): number {
  if (n < 24) return 1;
  if (n <= 0xff) return 2;
  if (n <= 0xffff) return 3;
  if (n <= 0xffffffff) return 5;
  return 9;
}

/** Where a command sits in the encoded sequence (for SUIT_Record section offsets, draft-ietf-suit-report §4.1). */
export interface CommandLayout {
  /** Byte offset of the command code within the sequence bytes. */
  readonly offset: number;
  /** Byte offsets of the contents of nested sequences (try-each alternatives, run-sequence argument). */
  readonly nested: readonly number[];
}

/** Byte layout of a sequence as `encodeCommandSequence` (and thus the received bytes) lays it out. */
export function commandLayout(commands: readonly SuitCommand[]): CommandLayout[] {
  const out: CommandLayout[] = [];
  let pos = headLength(commands.length * 2);
  for (const c of commands) {
    const codeLen = encode(c.code).length;
    const nested: number[] = [];
    if (c.op === 'try-each') {
      let p = pos + codeLen + headLength(c.alternatives.length + (c.trailingNil ? 1 : 0));
      for (const alt of c.alternatives) {
        const len = encodeCommandSequence(alt).length;
        p += headLength(len);
        nested.push(p);
        p += len;
      }
    } else if (c.op === 'run-sequence') {
      nested.push(pos + codeLen + headLength(encodeCommandSequence(c.sequence).length));
    }
    out.push({ offset: pos, nested });
    pos += codeLen + encode(commandArgument(c)).length;
  }
  return out;
}

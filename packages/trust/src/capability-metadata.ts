/**
 * Capability-module metadata (seed 000 §1 "Capability Modules", §2 step 3 "compatible modules", issue 8): what a
 * WebAssembly capability module is, what it may touch and where it may run. It travels as the plaintext payload of
 * the `['capabilities', name, 'metadata']` component of the module's SUIT envelope, so the author's signature
 * covers it through that component's image-digest (draft-ietf-suit-manifest §8.4.8.6, capability-envelope.ts).
 *
 *   metadata = {
 *     1 => tstr,                   ; capability name, [a-z][a-z0-9_.-]{0,63}
 *     2 => version,                ; the module's version, [major, minor, patch]
 *     3 => [* [tstr, tstr]],       ; imported host functions [module, field]: the module's permissions
 *     4 => { 1 => uint,            ; limits: WebAssembly memory pages (64 KiB each) at most
 *            2 => uint,            ;   wall-clock milliseconds per call at most
 *            3 => uint },          ;   bytes of input or output per call at most
 *     5 => [+ tstr],               ; compatible device classes
 *     6 => { 1 => version, ? 2 => version },   ; compatible firmware versions: min and max, both inclusive
 *     7 => [* { 1 => tstr, 2 => version, ? 3 => version }],  ; dependencies: capability name, min, max (inclusive)
 *     ? 8 => { 1 => bstr, 2 => bstr },   ; self-test vector: input → expected output (the health check)
 *     9 => uint,                   ; ABI revision (1: see packages/device/src/capabilities/README)
 *   }
 *   version = [uint, uint, uint]
 *
 * Everything is bounded; unknown keys, duplicate imports or dependencies, and non-canonical encodings are refused.
 */
import {
  asArray,
  asBytes,
  asMap,
  asText,
  asUint,
  checkKeys,
  decode,
  encode,
  isCoseError,
  required,
  type CborMap,
} from '@rotor/cose';
import { TrustError } from './errors.ts';

export type ModuleVersion = readonly [number, number, number];

export interface ModuleLimits {
  /** WebAssembly memory pages (64 KiB) the module may have, at most. */
  readonly memoryPages: number;
  /** Wall-clock milliseconds one call may take, at most. */
  readonly callMs: number;
  /** Bytes of input and of output per call, at most. */
  readonly ioBytes: number;
}

export interface ModuleDependency {
  readonly name: string;
  readonly min: ModuleVersion;
  readonly max?: ModuleVersion;
}

export interface HostImport {
  readonly module: string;
  readonly name: string;
}

export interface ModuleMetadata {
  readonly name: string;
  readonly version: ModuleVersion;
  /** Imported host functions: the module's permissions. */
  readonly imports: readonly HostImport[];
  readonly limits: ModuleLimits;
  readonly deviceClasses: readonly string[];
  readonly firmware: { readonly min: ModuleVersion; readonly max?: ModuleVersion };
  readonly dependencies: readonly ModuleDependency[];
  readonly selfTest?: { readonly input: Uint8Array; readonly output: Uint8Array };
  readonly abi: number;
}

export const MODULE_METADATA_MAX_BYTES = 16 * 1024;
export const MODULE_ABI = 1;
const NAME = /^[a-z][a-z0-9_.-]{0,63}$/;
const IMPORT_PART = /^[A-Za-z_][A-Za-z0-9_.-]{0,63}$/;
const MAX_IMPORTS = 64;
const MAX_CLASSES = 64;
const MAX_DEPS = 16;
const MAX_SELF_TEST = 4096;
/** Upper bounds of the format itself; a device applies its own (smaller) policy on top. */
const MAX_PAGES = 65536;
const MAX_CALL_MS = 600_000;
const MAX_IO = 16 * 1024 * 1024;

const TOP_KEYS: ReadonlySet<number> = new Set([1, 2, 3, 4, 5, 6, 7, 8, 9]);
const LIMIT_KEYS: ReadonlySet<number> = new Set([1, 2, 3]);
const FW_KEYS: ReadonlySet<number> = new Set([1, 2]);
const DEP_KEYS: ReadonlySet<number> = new Set([1, 2, 3]);
const TEST_KEYS: ReadonlySet<number> = new Set([1, 2]);

function bad(message: string, path: string, cause?: unknown): TrustError {
  return new TrustError('CAP_METADATA_INVALID', message, path, cause === undefined ? undefined : { cause });
}

/** Compares two versions: <0, 0, >0. */
export function compareModuleVersion(a: ModuleVersion, b: ModuleVersion): number {
  for (let i = 0; i < 3; i++) if (a[i] !== b[i]) return a[i]! < b[i]! ? -1 : 1;
  return 0;
}

/** Whether `v` lies in [min, max] (max absent = unbounded). */
export function versionInRange(
  v: ModuleVersion,
  min: ModuleVersion,
  max: ModuleVersion | undefined,
): boolean {
  return compareModuleVersion(v, min) >= 0 && (max === undefined || compareModuleVersion(v, max) <= 0);
}

export function formatModuleVersion(v: ModuleVersion): string {
  return v.join('.');
}

export function isCapabilityName(s: string): boolean {
  return NAME.test(s);
}

function boundedUint(v: unknown, min: number, max: number, path: string): number {
  const n = asUint(v, path);
  if (n < min || n > max) throw bad(`${n} is outside [${min}, ${max}]`, path);
  return n;
}

/** Decodes a version [major, minor, patch] (each < 2^32). */
export function parseModuleVersion(v: unknown, path: string): ModuleVersion {
  const a = asArray(v, path, { min: 3, max: 3 });
  const p = (i: number): number => boundedUint(a[i], 0, 0xffff_ffff, `${path}[${i}]`);
  return [p(0), p(1), p(2)];
}

function parseName(v: unknown, path: string): string {
  const s = asText(v, path, { max: 64 });
  if (!NAME.test(s)) throw bad(`capability name ${JSON.stringify(s)} is not [a-z][a-z0-9_.-]{0,63}`, path);
  return s;
}

function checkRange(min: ModuleVersion, max: ModuleVersion | undefined, path: string): void {
  if (max !== undefined && compareModuleVersion(min, max) > 0) throw bad('min is above max', path);
}

function parseLimits(m: CborMap, path: string): ModuleLimits {
  checkKeys(m, LIMIT_KEYS, path);
  return {
    memoryPages: boundedUint(required(m, 1, path), 1, MAX_PAGES, `${path}.memoryPages`),
    callMs: boundedUint(required(m, 2, path), 1, MAX_CALL_MS, `${path}.callMs`),
    ioBytes: boundedUint(required(m, 3, path), 1, MAX_IO, `${path}.ioBytes`),
  };
}

function parseBody(m: CborMap, path: string): ModuleMetadata {
  checkKeys(m, TOP_KEYS, path);
  const name = parseName(required(m, 1, path), `${path}.name`);
  const version = parseModuleVersion(required(m, 2, path), `${path}.version`);

  const imports: HostImport[] = [];
  const seen = new Set<string>();
  asArray(required(m, 3, path), `${path}.imports`, { max: MAX_IMPORTS }).forEach((e, i) => {
    const p = `${path}.imports[${i}]`;
    const pair = asArray(e, p, { min: 2, max: 2 });
    const module = asText(pair[0], `${p}[0]`, { max: 64 });
    const field = asText(pair[1], `${p}[1]`, { max: 64 });
    if (!IMPORT_PART.test(module) || !IMPORT_PART.test(field)) throw bad('import names are identifiers', p);
    const key = `${module}.${field}`;
    if (seen.has(key)) throw bad(`import ${key} listed twice`, p);
    seen.add(key);
    imports.push({ module, name: field });
  });

  const limits = parseLimits(asMap(required(m, 4, path), `${path}.limits`), `${path}.limits`);

  const deviceClasses = asArray(required(m, 5, path), `${path}.deviceClasses`, {
    min: 1,
    max: MAX_CLASSES,
  }).map((c, i) => {
    const s = asText(c, `${path}.deviceClasses[${i}]`, { max: 128 });
    if (s.length === 0) throw bad('empty device class', `${path}.deviceClasses[${i}]`);
    return s;
  });
  if (new Set(deviceClasses).size !== deviceClasses.length) throw bad('duplicate device class', path);

  const fwPath = `${path}.firmware`;
  const fw = asMap(required(m, 6, path), fwPath);
  checkKeys(fw, FW_KEYS, fwPath);
  const fwMin = parseModuleVersion(required(fw, 1, fwPath), `${fwPath}.min`);
  const fwMax = fw.has(2) ? parseModuleVersion(fw.get(2), `${fwPath}.max`) : undefined;
  checkRange(fwMin, fwMax, fwPath);

  const depNames = new Set<string>();
  const dependencies = asArray(required(m, 7, path), `${path}.dependencies`, { max: MAX_DEPS }).map(
    (d, i) => {
      const p = `${path}.dependencies[${i}]`;
      const dm = asMap(d, p);
      checkKeys(dm, DEP_KEYS, p);
      const depName = parseName(required(dm, 1, p), `${p}.name`);
      if (depName === name) throw bad('a module cannot depend on its own capability', p);
      if (depNames.has(depName)) throw bad(`dependency ${depName} listed twice`, p);
      depNames.add(depName);
      const min = parseModuleVersion(required(dm, 2, p), `${p}.min`);
      const max = dm.has(3) ? parseModuleVersion(dm.get(3), `${p}.max`) : undefined;
      checkRange(min, max, p);
      return max === undefined ? { name: depName, min } : { name: depName, min, max };
    },
  );

  let selfTest: ModuleMetadata['selfTest'];
  if (m.has(8)) {
    const p = `${path}.selfTest`;
    const t = asMap(m.get(8), p);
    checkKeys(t, TEST_KEYS, p);
    selfTest = {
      input: asBytes(required(t, 1, p), `${p}.input`, { max: Math.min(MAX_SELF_TEST, limits.ioBytes) }),
      output: asBytes(required(t, 2, p), `${p}.output`, { max: Math.min(MAX_SELF_TEST, limits.ioBytes) }),
    };
  }
  const abi = asUint(required(m, 9, path), `${path}.abi`);
  if (abi !== MODULE_ABI) throw bad(`ABI revision ${abi} is not supported (${MODULE_ABI})`, `${path}.abi`);
  return {
    name,
    version,
    imports,
    limits,
    deviceClasses,
    firmware: fwMax === undefined ? { min: fwMin } : { min: fwMin, max: fwMax },
    dependencies,
    ...(selfTest === undefined ? {} : { selfTest }),
    abi,
  };
}

/** Strictly decodes metadata bytes (bounded, canonical CBOR). Throws TrustError CAP_METADATA_INVALID. */
export function decodeModuleMetadata(bytes: Uint8Array, path = 'metadata'): ModuleMetadata {
  if (bytes.length > MODULE_METADATA_MAX_BYTES) {
    throw bad(`${bytes.length} bytes exceed ${MODULE_METADATA_MAX_BYTES}`, path);
  }
  try {
    return parseBody(asMap(decode(bytes, { maxSize: MODULE_METADATA_MAX_BYTES, maxDepth: 6 }), path), path);
  } catch (e) {
    if (e instanceof TrustError) throw e;
    if (isCoseError(e)) throw bad(`metadata does not decode: ${e.message}`, path, e);
    throw e;
  }
}

/** Encodes metadata deterministically; the result is validated by decoding it again. */
export function encodeModuleMetadata(md: ModuleMetadata): Uint8Array {
  const fw = new Map<number, unknown>([[1, [...md.firmware.min]]]);
  if (md.firmware.max !== undefined) fw.set(2, [...md.firmware.max]);
  const m = new Map<number, unknown>([
    [1, md.name],
    [2, [...md.version]],
    [3, md.imports.map((i) => [i.module, i.name])],
    [
      4,
      new Map<number, number>([
        [1, md.limits.memoryPages],
        [2, md.limits.callMs],
        [3, md.limits.ioBytes],
      ]),
    ],
    [5, [...md.deviceClasses]],
    [6, fw],
    [
      7,
      md.dependencies.map((d) => {
        const dm = new Map<number, unknown>([
          [1, d.name],
          [2, [...d.min]],
        ]);
        if (d.max !== undefined) dm.set(3, [...d.max]);
        return dm;
      }),
    ],
  ]);
  if (md.selfTest !== undefined) {
    m.set(
      8,
      new Map<number, Uint8Array>([
        [1, md.selfTest.input],
        [2, md.selfTest.output],
      ]),
    );
  }
  m.set(9, md.abi);
  const bytes = encode(m);
  decodeModuleMetadata(bytes);
  return bytes;
}

/**
 * Builds the test capability modules from their WAT sources in this directory with wabt (the WebAssembly Binary
 * Toolkit compiled to JavaScript, an npm devDependency): no binary is checked in. Results are cached per process.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import initWabt from 'wabt';

export type ModuleSource =
  'codec-v1' | 'codec-v2' | 'loop' | 'grow' | 'trap' | 'undeclared' | 'unbounded' | 'startloop' | 'large';

type Wabt = Awaited<ReturnType<typeof initWabt>>;
let wabt: Promise<Wabt> | undefined;
const cache = new Map<string, Uint8Array>();

/** Compiles `<source>.wat`, replacing every occurrence of each key of `subst` in the text by its value. */
export async function buildModule(
  source: ModuleSource,
  subst: Readonly<Record<string, string>> = {},
): Promise<Uint8Array> {
  const key = `${source}:${JSON.stringify(subst)}`;
  const hit = cache.get(key);
  if (hit !== undefined) return hit;
  let text = readFileSync(join(import.meta.dirname, `${source}.wat`), 'utf8');
  for (const [k, v] of Object.entries(subst)) text = text.replaceAll(k, v);
  wabt ??= initWabt();
  const w = await wabt;
  const mod = w.parseWat(`${source}.wat`, text, { bulk_memory: true });
  try {
    mod.validate();
    const bin = new Uint8Array(mod.toBinary({}).buffer);
    cache.set(key, bin);
    return bin;
  } finally {
    mod.destroy();
  }
}

/** Deterministic printable filler (base64 alphabet: no escapes in a WAT string). */
function filler(bytes: number): string {
  const abc = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
  let x = 0x2545f491;
  const out: string[] = [];
  for (let i = 0; i < bytes; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    out.push(abc[(x >>> 16) & 63]!);
  }
  return out.join('');
}

/** A module of about `bytes` bytes: codec v1's function (version byte `versionByte`) plus a data segment. */
export function buildLargeModule(bytes: number, versionByte = 1): Promise<Uint8Array> {
  const data = Math.max(0, bytes - 200);
  const pages = Math.ceil((65536 + data) / 65536) + 1;
  return buildModule('large', {
    DATA_BYTES: String(data),
    MIN_PAGES: String(pages),
    VERSION_BYTE: String(versionByte),
    '"DATA"': `"${filler(data)}"`,
  });
}

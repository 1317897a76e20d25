/**
 * The demo's capability module "filter", built at run time from its WebAssembly text source (filter.wat, beside
 * this file) with wabt — the WebAssembly Binary Toolkit compiled to JavaScript, the same npm package the device
 * tests build their modules with. No binary is checked in.
 *
 * filter vN: output = [N] ++ (input bytes ≥ threshold of vN). `filterReference` is the same function in
 * TypeScript: the device process checks every answer against it (a wrong answer counts as a failed call).
 */
import { readFileSync } from 'node:fs';
import initWabt from 'wabt';
import { MODULE_ABI, type ModuleMetadata } from '@rotor/trust';

export const FILTER = 'filter';

/** The noise threshold of each version (v2 filters harder). */
export const FILTER_VERSIONS = { 1: 16, 2: 64 } as const;
export type FilterVersion = keyof typeof FILTER_VERSIONS;

type Wabt = Awaited<ReturnType<typeof initWabt>>;
let wabt: Promise<Wabt> | undefined;

/** Compiles filter.wat for version `v` (its threshold and version byte substituted). */
export async function buildFilter(v: FilterVersion): Promise<Uint8Array> {
  const text = readFileSync(new URL('./filter.wat', import.meta.url), 'utf8')
    .replaceAll('THRESHOLD', String(FILTER_VERSIONS[v]))
    .replaceAll('VERSION_BYTE', String(v));
  wabt ??= initWabt();
  const w = await wabt;
  const mod = w.parseWat('filter.wat', text, { bulk_memory: true });
  try {
    mod.validate();
    return new Uint8Array(mod.toBinary({}).buffer);
  } finally {
    mod.destroy();
  }
}

/** What filter vN answers for `input`. */
export function filterReference(v: number, input: Uint8Array): Uint8Array | undefined {
  const t = (FILTER_VERSIONS as Record<number, number | undefined>)[v];
  if (t === undefined) return undefined;
  return new Uint8Array([v, ...input.filter((b) => b >= t)]);
}

/** The module's metadata (capability-metadata, @rotor/trust): no host functions, 1 page of memory. */
export function filterMetadata(v: FilterVersion, deviceClass: string): ModuleMetadata {
  return {
    name: FILTER,
    version: [v, 0, 0],
    imports: [],
    limits: { memoryPages: 1, callMs: 500, ioBytes: 16384 },
    deviceClasses: [deviceClass],
    firmware: { min: [1, 0, 0] },
    dependencies: [],
    abi: MODULE_ABI,
  };
}

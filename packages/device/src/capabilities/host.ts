/**
 * The host functions a capability module may import: the complete catalog of what a module can reach outside its
 * own memory (no filesystem, no network: none is offered). A module gets only those its signed metadata declares
 * (issue 8 "only the host functions its metadata declares"), and the manager refuses at load a binary importing
 * anything else. The implementations live in the sandbox worker (worker.ts); this file has no imports so the
 * worker can load it as is.
 */

export type WasmValType = 'i32' | 'i64' | 'f32' | 'f64' | 'v128' | 'funcref' | 'externref';

export interface HostFunctionSpec {
  readonly module: string;
  readonly name: string;
  readonly params: readonly WasmValType[];
  readonly results: readonly WasmValType[];
  readonly doc: string;
}

export const HOST_MODULE = 'rotor';

export const HOST_FUNCTIONS: readonly HostFunctionSpec[] = [
  {
    module: HOST_MODULE,
    name: 'log',
    params: ['i32', 'i32'],
    results: [],
    doc: 'log(ptr, len): a UTF-8 line from the module memory (at most 256 bytes, 16 lines per batch of calls)',
  },
  { module: HOST_MODULE, name: 'now_ms', params: [], results: ['f64'], doc: 'monotonic milliseconds' },
  { module: HOST_MODULE, name: 'random_u32', params: [], results: ['i32'], doc: 'a random 32-bit value' },
];

export function hostKey(module: string, name: string): string {
  return `${module}.${name}`;
}

export const HOST_BY_KEY: ReadonlyMap<string, HostFunctionSpec> = new Map(
  HOST_FUNCTIONS.map((f) => [hostKey(f.module, f.name), f]),
);

/** Bounds of the log host function. */
export const LOG_MAX_LINE = 256;
export const LOG_MAX_LINES = 16;

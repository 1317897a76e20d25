/**
 * SUIT_Command_Sequence parsing (draft-ietf-suit-manifest-34 §8.4.7, plus TD / UM commands).
 * CONTRACT (shared by the envelope decoder and the processor): the types below and `parseCommandSequence`.
 * The implementation is filled in by the processor work; the envelope decoder calls it to validate sections.
 */
import type { SuitDigest } from './model.ts';

/** A validated parameter value. `raw` is the parameter's encoded CBOR value (for constant-time comparisons). */
export type ParamValue =
  | { readonly type: 'vendor-id'; readonly bytes: Uint8Array; readonly pen: boolean; readonly raw: Uint8Array }
  | { readonly type: 'uuid'; readonly bytes: Uint8Array; readonly raw: Uint8Array }
  | { readonly type: 'digest'; readonly digest: SuitDigest; readonly raw: Uint8Array }
  | { readonly type: 'uint'; readonly value: bigint; readonly raw: Uint8Array }
  | { readonly type: 'int'; readonly value: bigint; readonly raw: Uint8Array }
  | { readonly type: 'bool'; readonly value: boolean; readonly raw: Uint8Array }
  | { readonly type: 'bstr'; readonly bytes: Uint8Array; readonly raw: Uint8Array }
  | { readonly type: 'tstr'; readonly value: string; readonly raw: Uint8Array }
  /** bstr .cbor COSE_Encrypt / COSE_Encrypt0: `bytes` are the wrapped COSE bytes, decoded by the consumer. */
  | { readonly type: 'encryption-info'; readonly bytes: Uint8Array; readonly raw: Uint8Array }
  | { readonly type: 'version'; readonly comparison: number; readonly parts: readonly number[]; readonly raw: Uint8Array }
  | { readonly type: 'wait-info'; readonly events: ReadonlyMap<number, unknown>; readonly raw: Uint8Array }
  | { readonly type: 'component-metadata'; readonly bytes: Uint8Array; readonly raw: Uint8Array }
  | { readonly type: 'custom'; readonly value: unknown; readonly raw: Uint8Array };

/** Parameters keyed by their integer code. */
export type SuitParameters = ReadonlyMap<number, ParamValue>;

export type SuitCommand =
  /** Conditions and directives whose argument is a reporting policy (uint). */
  | { readonly op: 'policy'; readonly code: number; readonly policy: number }
  /** directive-set-component-index (12): `true` = all components, or the listed indices (MF §8.4.10.1). */
  | { readonly op: 'set-component-index'; readonly code: 12; readonly index: true | readonly number[] }
  /** directive-try-each (15): ≥2 alternatives, optional trailing nil (MF §8.4.10.2). */
  | { readonly op: 'try-each'; readonly code: 15; readonly alternatives: readonly (readonly SuitCommand[])[]; readonly trailingNil: boolean }
  /** directive-set-parameters (19, TD) / override-parameters (20, MF §8.4.10.3). */
  | { readonly op: 'params'; readonly code: 19 | 20; readonly params: SuitParameters }
  /** directive-run-sequence (32, MF §8.4.10.6). */
  | { readonly op: 'run-sequence'; readonly code: 32; readonly sequence: readonly SuitCommand[] }
  /** directive-override-multiple (34, UM): component index → parameters. */
  | { readonly op: 'override-multiple'; readonly code: 34; readonly perComponent: ReadonlyMap<number, SuitParameters> }
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

/**
 * Decodes and validates one command sequence from its bytes (the content of a `bstr .cbor SUIT_Command_Sequence`).
 * Unknown commands and parameters with codes ≥ -256 are refused (SUIT_COMMAND_UNSUPPORTED /
 * SUIT_PARAMETER_UNSUPPORTED); malformed ones raise SUIT_COMMAND_INVALID / SUIT_PARAMETER_INVALID with a path.
 */
export function parseCommandSequence(bytes: Uint8Array, path: string, limits?: ParseLimits): SuitCommand[] {
  void bytes;
  void path;
  void limits;
  throw new Error('parseCommandSequence: not implemented yet');
}

/**
 * The typed model of a decoded SUIT envelope (draft-ietf-suit-manifest-34 §8). CONTRACT shared by the decoder,
 * the builder, the processor and the CLI. Every byte string that a digest or signature covers is kept exactly as
 * received.
 */
import type { SuitCommand } from './commands.ts';

export interface SuitDigest {
  /** COSE algorithm id (-16 SHA-256 mandatory; -18, -43, -44, -45 optional). */
  readonly alg: number;
  readonly bytes: Uint8Array;
}

/** SUIT_Component_Identifier: an array of byte strings (MF §8.4.5.1). */
export type ComponentId = readonly Uint8Array[];

/** A command sequence as received plus its parsed commands. */
export interface SuitSequence {
  /** Content of the bstr that wraps the sequence (what a severed digest covers, with its bstr head). */
  readonly bytes: Uint8Array;
  readonly commands: readonly SuitCommand[];
}

/** A severable member: present (and checked against its digest), or severed and absent from the envelope. */
export type Severable<T> =
  | { readonly state: 'inline'; readonly value: T }
  | { readonly state: 'severed-present'; readonly digest: SuitDigest; readonly value: T }
  | { readonly state: 'severed-absent'; readonly digest: SuitDigest };

export interface SuitDependency {
  /**
   * Component index of the dependency envelope (TD §5.1). In the TD examples the index follows the component
   * list (components [['10']], dependency index 1), so it may be ≥ components.length.
   */
  readonly index: number;
  /** dependency-prefix (SUIT_Dependency_Metadata key 1). */
  readonly prefix: ComponentId | undefined;
}

export interface SuitCommon {
  readonly components: readonly ComponentId[];
  readonly dependencies: readonly SuitDependency[];
  readonly sharedSequence: SuitSequence | undefined;
}

/** SUIT_Text_Map: language tag → text (MF §8.4.4). Component texts are keyed by the component identifier. */
export interface SuitTextLanguage {
  readonly manifest: ReadonlyMap<number, string>;
  readonly components: readonly {
    readonly component: ComponentId;
    readonly fields: ReadonlyMap<number, string>;
  }[];
}
export type SuitText = ReadonlyMap<string, SuitTextLanguage>;

export interface SuitManifest {
  /** The manifest bytes (content of envelope key 3), as received. */
  readonly bytes: Uint8Array;
  readonly version: 1;
  /** manifest-sequence-number (MF §8.4.2), a uint64. */
  readonly sequenceNumber: bigint;
  readonly common: SuitCommon;
  readonly referenceUri: string | undefined;
  /** manifest-component-id (TD §5.2). */
  readonly componentId: ComponentId | undefined;
  /** set-version (UM): component-set version as integers. */
  readonly setVersion: readonly number[] | undefined;
  /** Non-severable sequences: 7 validate, 8 load, 9 invoke, 24 uninstall. */
  readonly validate: SuitSequence | undefined;
  readonly load: SuitSequence | undefined;
  readonly invoke: SuitSequence | undefined;
  readonly uninstall: SuitSequence | undefined;
  /** Severable sequences: 15 dependency-resolution, 16 payload-fetch, 18 candidate-verification, 20 install. */
  readonly dependencyResolution: Severable<SuitSequence> | undefined;
  readonly payloadFetch: Severable<SuitSequence> | undefined;
  readonly candidateVerification: Severable<SuitSequence> | undefined;
  readonly install: Severable<SuitSequence> | undefined;
  readonly text: Severable<SuitText> | undefined;
  /** CoSWID (UM), kept as bytes. */
  readonly coswid: Severable<Uint8Array> | undefined;
}

export interface SuitEnvelope {
  /** The whole envelope as received. */
  readonly bytes: Uint8Array;
  /** Whether it carried tag 107. */
  readonly tagged: boolean;
  /** SUIT_Authentication[0]: the digest of the manifest bstr (head included) (MF §8.3). */
  readonly digest: SuitDigest;
  /** The encoded SUIT_Digest bytes: the detached payload that every authentication block covers. */
  readonly digestBytes: Uint8Array;
  /** The authentication blocks as received (each the content of a `bstr .cbor COSE_*`). */
  readonly authBlocks: readonly Uint8Array[];
  readonly manifest: SuitManifest;
  /**
   * Severable members carried by the envelope (content of each bstr, as received), keyed by envelope key
   * (14, 15, 16, 18, 20, 23). Each is referenced by a SUIT_Digest in the manifest (MF §8.4.6). Always set by
   * the decoder (optional only so that hand-built test envelopes stay valid); the re-encoder needs it.
   */
  readonly members?: ReadonlyMap<number, Uint8Array>;
  /** Integrated payloads and integrated dependencies: text-string envelope keys (MF §7.5, TD §5.4). */
  readonly integrated: ReadonlyMap<string, Uint8Array>;
}

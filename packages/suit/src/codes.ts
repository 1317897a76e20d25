/**
 * SUIT integer code tables: draft-ietf-suit-manifest-34 (MF), draft-ietf-suit-trust-domains-12 (TD),
 * draft-ietf-suit-update-management-14 (UM), draft-ietf-suit-firmware-encryption-26 (ENC),
 * draft-ietf-suit-report-20 (RP). Names follow the drafts' CDDL without the `suit-` prefix.
 */

/** SUIT_Envelope keys (MF §8.2, TD §5/§6, UM §5). Text-string keys are integrated payloads/dependencies. */
export const EnvelopeKey = {
  delegation: 1, // reserved (removed from TD in 2025); refused
  authenticationWrapper: 2,
  manifest: 3,
  coswid: 14,
  dependencyResolution: 15,
  payloadFetch: 16,
  candidateVerification: 18,
  install: 20,
  text: 23,
} as const;

/** SUIT_Manifest keys (MF §8.4, TD §5, UM §5). */
export const ManifestKey = {
  manifestVersion: 1,
  sequenceNumber: 2,
  common: 3,
  referenceUri: 4,
  manifestComponentId: 5,
  setVersion: 6,
  validate: 7,
  load: 8,
  invoke: 9,
  coswid: 14,
  dependencyResolution: 15,
  payloadFetch: 16,
  candidateVerification: 18,
  install: 20,
  text: 23,
  uninstall: 24,
} as const;

/** Severable manifest members: may be a SUIT_Digest in the manifest and the bstr in the envelope (MF §8.4.6). */
export const SEVERABLE_KEYS: ReadonlySet<number> = new Set([14, 15, 16, 18, 20, 23]);

/** Manifest members that hold a command sequence. */
export const SEQUENCE_KEYS: ReadonlySet<number> = new Set([7, 8, 9, 15, 16, 18, 20, 24]);

/** SUIT_Common keys (MF §8.4.5, TD §5.1). */
export const CommonKey = { dependencies: 1, components: 2, sharedSequence: 4 } as const;

export const MANIFEST_KEY_NAMES: Readonly<Record<number, string>> = {
  1: 'manifest-version',
  2: 'manifest-sequence-number',
  3: 'common',
  4: 'reference-uri',
  5: 'manifest-component-id',
  6: 'set-version',
  7: 'validate',
  8: 'load',
  9: 'invoke',
  14: 'coswid',
  15: 'dependency-resolution',
  16: 'payload-fetch',
  18: 'candidate-verification',
  20: 'install',
  23: 'text',
  24: 'uninstall',
};

export const ENVELOPE_KEY_NAMES: Readonly<Record<number, string>> = {
  1: 'delegation',
  2: 'authentication-wrapper',
  3: 'manifest',
  14: 'coswid',
  15: 'dependency-resolution',
  16: 'payload-fetch',
  18: 'candidate-verification',
  20: 'install',
  23: 'text',
};

export const COMMON_KEY_NAMES: Readonly<Record<number, string>> = {
  1: 'dependencies',
  2: 'components',
  4: 'shared-sequence',
};

/** Commands: conditions (C) and directives (D) with their argument kind. */
export type CommandArgKind =
  | 'policy' // reporting policy uint
  | 'index' // set-component-index: uint / true / [+uint]
  | 'try-each'
  | 'params' // set-/override-parameters
  | 'sequence' // run-sequence
  | 'override-multiple'
  | 'copy-params';

export interface CommandInfo {
  readonly name: string;
  readonly kind: 'condition' | 'directive';
  readonly arg: CommandArgKind;
  readonly source: 'MF' | 'TD' | 'UM';
}

export const COMMANDS: ReadonlyMap<number, CommandInfo> = new Map<number, CommandInfo>([
  [1, { name: 'condition-vendor-identifier', kind: 'condition', arg: 'policy', source: 'MF' }],
  [2, { name: 'condition-class-identifier', kind: 'condition', arg: 'policy', source: 'MF' }],
  [3, { name: 'condition-image-match', kind: 'condition', arg: 'policy', source: 'MF' }],
  [4, { name: 'condition-use-before', kind: 'condition', arg: 'policy', source: 'UM' }],
  [5, { name: 'condition-component-slot', kind: 'condition', arg: 'policy', source: 'MF' }],
  [6, { name: 'condition-check-content', kind: 'condition', arg: 'policy', source: 'MF' }],
  [7, { name: 'condition-dependency-integrity', kind: 'condition', arg: 'policy', source: 'TD' }],
  [8, { name: 'condition-is-dependency', kind: 'condition', arg: 'policy', source: 'TD' }],
  [11, { name: 'directive-process-dependency', kind: 'directive', arg: 'policy', source: 'TD' }],
  [12, { name: 'directive-set-component-index', kind: 'directive', arg: 'index', source: 'MF' }],
  [14, { name: 'condition-abort', kind: 'condition', arg: 'policy', source: 'MF' }],
  [15, { name: 'directive-try-each', kind: 'directive', arg: 'try-each', source: 'MF' }],
  [18, { name: 'directive-write', kind: 'directive', arg: 'policy', source: 'MF' }],
  [19, { name: 'directive-set-parameters', kind: 'directive', arg: 'params', source: 'TD' }],
  [20, { name: 'directive-override-parameters', kind: 'directive', arg: 'params', source: 'MF' }],
  [21, { name: 'directive-fetch', kind: 'directive', arg: 'policy', source: 'MF' }],
  [22, { name: 'directive-copy', kind: 'directive', arg: 'policy', source: 'MF' }],
  [23, { name: 'directive-invoke', kind: 'directive', arg: 'policy', source: 'MF' }],
  [24, { name: 'condition-device-identifier', kind: 'condition', arg: 'policy', source: 'MF' }],
  [25, { name: 'condition-image-not-match', kind: 'condition', arg: 'policy', source: 'UM' }],
  [26, { name: 'condition-minimum-battery', kind: 'condition', arg: 'policy', source: 'UM' }],
  [27, { name: 'condition-update-authorized', kind: 'condition', arg: 'policy', source: 'UM' }],
  [28, { name: 'condition-version', kind: 'condition', arg: 'policy', source: 'UM' }],
  [29, { name: 'directive-wait', kind: 'directive', arg: 'policy', source: 'UM' }],
  [31, { name: 'directive-swap', kind: 'directive', arg: 'policy', source: 'MF' }],
  [32, { name: 'directive-run-sequence', kind: 'directive', arg: 'sequence', source: 'MF' }],
  [33, { name: 'directive-unlink', kind: 'directive', arg: 'policy', source: 'TD' }],
  [34, { name: 'directive-override-multiple', kind: 'directive', arg: 'override-multiple', source: 'UM' }],
  [35, { name: 'directive-copy-params', kind: 'directive', arg: 'copy-params', source: 'UM' }],
]);

/** Parameter value types (MF §8.4.8, TD, UM, ENC). */
export type ParamType =
  | 'vendor-id' // 16-byte UUID bstr or tag 112 PEN
  | 'uuid' // 16-byte bstr
  | 'digest' // bstr .cbor SUIT_Digest
  | 'uint' // uint (64-bit)
  | 'int'
  | 'bool'
  | 'bstr'
  | 'tstr'
  | 'encryption-info' // bstr .cbor COSE_Encrypt (tag 96) or COSE_Encrypt0 (tag 16)
  | 'version' // bstr .cbor [comparison-type, [+int]]
  | 'wait-info' // bstr .cbor {+ event => value}
  | 'component-metadata'; // bstr .cbor map

export interface ParamInfo {
  readonly name: string;
  readonly type: ParamType;
  readonly source: 'MF' | 'TD' | 'UM' | 'ENC';
}

export const PARAMETERS: ReadonlyMap<number, ParamInfo> = new Map<number, ParamInfo>([
  [1, { name: 'vendor-identifier', type: 'vendor-id', source: 'MF' }],
  [2, { name: 'class-identifier', type: 'uuid', source: 'MF' }],
  [3, { name: 'image-digest', type: 'digest', source: 'MF' }],
  [4, { name: 'use-before', type: 'uint', source: 'UM' }],
  [5, { name: 'component-slot', type: 'uint', source: 'MF' }],
  [12, { name: 'strict-order', type: 'bool', source: 'MF' }],
  [13, { name: 'soft-failure', type: 'bool', source: 'MF' }],
  [14, { name: 'image-size', type: 'uint', source: 'MF' }],
  [18, { name: 'content', type: 'bstr', source: 'MF' }],
  [19, { name: 'encryption-info', type: 'encryption-info', source: 'ENC' }],
  [21, { name: 'uri', type: 'tstr', source: 'MF' }],
  [22, { name: 'source-component', type: 'uint', source: 'MF' }],
  [23, { name: 'invoke-args', type: 'bstr', source: 'MF' }],
  [24, { name: 'device-identifier', type: 'uuid', source: 'MF' }],
  [25, { name: 'fetch-arguments', type: 'bstr', source: 'MF' }],
  [26, { name: 'minimum-battery', type: 'uint', source: 'UM' }],
  [27, { name: 'update-priority', type: 'int', source: 'UM' }],
  [28, { name: 'version', type: 'version', source: 'UM' }],
  [29, { name: 'wait-info', type: 'wait-info', source: 'UM' }],
  [30, { name: 'component-metadata', type: 'component-metadata', source: 'UM' }],
]);

/** SUIT_Text_Map keys (MF §8.4.4; UM adds 7, 8 to the component map). */
export const TEXT_KEY_NAMES: Readonly<Record<number, string>> = {
  1: 'manifest-description',
  2: 'update-description',
  3: 'manifest-json-source',
  4: 'manifest-yaml-source',
};
export const TEXT_COMPONENT_KEY_NAMES: Readonly<Record<number, string>> = {
  1: 'vendor-name',
  2: 'model-name',
  3: 'vendor-domain',
  4: 'model-info',
  5: 'component-description',
  6: 'component-version',
  7: 'version-required',
  8: 'current-version',
};

/** Reporting-policy bits (MF §8.4.9; -37 names the first two send-record-on-success/-failure). */
export const ReportingPolicy = {
  recordOnSuccess: 1,
  recordOnFailure: 2,
  sysinfoOnSuccess: 4,
  sysinfoOnFailure: 8,
} as const;

/** Version comparison types (UM §4.x, parameter 28). */
export const VersionComparison = {
  greater: 1,
  greaterEqual: 2,
  equal: 3,
  lesserEqual: 4,
  lesser: 5,
} as const;

/** SUIT_Report result reasons (RP §4). */
export const ReportReason = {
  ok: 0,
  cborParse: 1,
  coseUnsupported: 2,
  algUnsupported: 3,
  unauthorised: 4,
  commandUnsupported: 5,
  componentUnsupported: 6,
  componentUnauthorised: 7,
  parameterUnsupported: 8,
  severingUnsupported: 9,
  conditionFailed: 10,
  operationFailed: 11,
  invokePending: 12,
} as const;
export type ReportReasonCode = (typeof ReportReason)[keyof typeof ReportReason];

/** CBOR tags used by SUIT. */
export const Tag = {
  envelope: 107,
  manifest: 1070,
  coseEncrypt: 96,
  coseEncrypt0: 16,
  coseSign1: 18,
  coseSign: 98,
  coseMac0: 17,
  coseMac: 97,
  pen: 112,
  oid: 111,
  uuid: 37,
} as const;

/** COSE_Sign1 / COSE_Mac0 / COSE_Sign authentication-block tags accepted in SUIT_Authentication (MF §8.3). */
export const AUTH_BLOCK_TAGS: ReadonlySet<number> = new Set([18, 98, 17, 97]);

export function commandName(code: number): string {
  return COMMANDS.get(code)?.name ?? (code < -256 ? `custom(${code})` : `unknown(${code})`);
}

export function parameterName(code: number): string {
  return PARAMETERS.get(code)?.name ?? (code < -256 ? `custom(${code})` : `unknown(${code})`);
}

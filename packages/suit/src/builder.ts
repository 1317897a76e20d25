/**
 * Deterministic SUIT envelope and manifest construction (draft-ietf-suit-manifest-34 §8, RFC 8949 §4.2.1
 * deterministic encoding), signing (MF §8.3) and re-encoding.
 *
 * Everything is encoded canonically, so the authentication wrapper (key 2) precedes the manifest (key 3) and a
 * decoded envelope re-encodes to the bytes received.
 */
import {
  CborTag,
  createMac0,
  decode,
  createSign,
  createSign1,
  encode,
  type MacKey,
  type Signer,
} from '@rotor/cose';
import {
  encodeCommandSequence,
  parseParameterValue,
  type SuitCommand,
  type SuitParameters,
} from './commands.ts';
import { EnvelopeKey, ManifestKey } from './codes.ts';
import {
  checkBstrDigest,
  digestBstr,
  parseDigest,
  parseEnvelopeOuter,
  parseManifest,
  type DecodeEnvelopeOptions,
  type EnvelopeOuter,
} from './decode.ts';
import { SuitError } from './errors.ts';
import type { ComponentId, SuitDependency, SuitDigest, SuitEnvelope, SuitText } from './model.ts';
import { classIdFromName, vendorIdFromDomain } from './uuid.ts';

// ---------------------------------------------------------------------------------------------------------
// Envelope encoding

export interface EnvelopeParts {
  /** The manifest bytes (content of envelope key 3). */
  readonly manifest: Uint8Array;
  /** The encoded SUIT_Digest to carry; by default computed over the manifest with `digestAlg`. */
  readonly digestBytes?: Uint8Array;
  /** Digest algorithm when `digestBytes` is absent (default SHA-256, -16; MF §8.3). */
  readonly digestAlg?: number;
  /** Authentication blocks (each a tagged COSE structure), in order. */
  readonly authBlocks?: readonly Uint8Array[];
  /** Severed members carried by the envelope (MF §8.4.6), keyed by envelope key. */
  readonly members?: ReadonlyMap<number, Uint8Array>;
  /** Integrated payloads / dependencies under text keys (MF §7.5, TD §5.4). */
  readonly integrated?: ReadonlyMap<string, Uint8Array>;
  /** Wrap in tag 107 (default true, MF §8.2). */
  readonly tagged?: boolean;
}

/** The encoded SUIT_Digest of a manifest: [alg, H(bstr head ‖ manifest)] (MF §8.3). */
export function manifestDigestBytes(manifest: Uint8Array, alg = -16): Uint8Array {
  return encode([alg, digestBstr(alg, manifest)]);
}

/** Encodes an envelope deterministically (MF §8.2). */
export function encodeEnvelope(parts: EnvelopeParts): Uint8Array {
  const digestBytes = parts.digestBytes ?? manifestDigestBytes(parts.manifest, parts.digestAlg);
  const m = new Map<number | string, Uint8Array>();
  m.set(EnvelopeKey.authenticationWrapper, encode([digestBytes, ...(parts.authBlocks ?? [])]));
  m.set(EnvelopeKey.manifest, parts.manifest);
  for (const [k, v] of parts.members ?? []) {
    if (k === EnvelopeKey.authenticationWrapper || k === EnvelopeKey.manifest) {
      throw new SuitError('SUIT_BUILD_INVALID', `member key ${k} is reserved`);
    }
    m.set(k, v);
  }
  for (const [k, v] of parts.integrated ?? []) m.set(k, v);
  return encode(parts.tagged === false ? m : new CborTag(107, m));
}

function partsOf(env: SuitEnvelope | EnvelopeOuter): EnvelopeParts {
  return {
    manifest: 'manifestBytes' in env ? env.manifestBytes : env.manifest.bytes,
    digestBytes: env.digestBytes,
    authBlocks: env.authBlocks,
    members: env.members ?? new Map(),
    integrated: env.integrated,
    tagged: env.tagged,
  };
}

/** Re-encodes a decoded envelope; equals the received bytes (all SUIT maps are canonical, bstrs kept as is). */
export function reencodeEnvelope(env: SuitEnvelope | EnvelopeOuter): Uint8Array {
  return encodeEnvelope(partsOf(env));
}

// ---------------------------------------------------------------------------------------------------------
// Signing (MF §8.3)

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.compare(a, b) === 0;
}

/**
 * Parts to sign, after the TOCTOU check of MF §8.3: the SUIT_Digest is recomputed over the manifest bytes and
 * must match the one carried, and the manifest must parse.
 */
function checkedParts(input: Uint8Array | EnvelopeParts, opts: DecodeEnvelopeOptions): EnvelopeParts {
  let parts: EnvelopeParts;
  if (input instanceof Uint8Array) {
    const outer = parseEnvelopeOuter(input, { ...opts, verifyDigest: true });
    parts = partsOf(outer);
  } else if (input.digestBytes !== undefined) {
    const p = 'envelope.authentication-wrapper[0]';
    let d: SuitDigest;
    try {
      d = parseDigest(decode(input.digestBytes), 'SUIT_BUILD_INVALID', p);
    } catch (e) {
      throw new SuitError('SUIT_BUILD_INVALID', 'digestBytes is not an encoded SUIT_Digest', p, { cause: e });
    }
    checkBstrDigest(d, input.manifest, 'SUIT_DIGEST_MISMATCH', 'envelope.manifest');
    parts = input;
  } else {
    parts = { ...input, digestBytes: manifestDigestBytes(input.manifest, input.digestAlg) };
  }
  // Do not sign what a recipient could not parse.
  parseManifest(parts.manifest, parts.members ?? new Map(), opts);
  return parts;
}

async function appendBlock(
  input: Uint8Array | EnvelopeParts,
  make: (digestBytes: Uint8Array) => Promise<Uint8Array>,
  opts: DecodeEnvelopeOptions,
): Promise<Uint8Array> {
  const parts = checkedParts(input, opts);
  const block = await make(parts.digestBytes!);
  return encodeEnvelope({ ...parts, authBlocks: [...(parts.authBlocks ?? []), block] });
}

/**
 * Adds a COSE_Sign1 authentication block (detached payload = the encoded SUIT_Digest, MF §8.3) after checking
 * the digest against the manifest (TOCTOU, MF §8.3). Existing blocks are kept.
 */
export function signEnvelope(
  input: Uint8Array | EnvelopeParts,
  signer: Signer,
  opts: DecodeEnvelopeOptions = {},
): Promise<Uint8Array> {
  return appendBlock(input, (payload) => createSign1(payload, signer, { detached: true }), opts);
}

/** Adds a COSE_Mac0 authentication block (MF §8.3), same checks as signEnvelope. */
export function addMac(
  input: Uint8Array | EnvelopeParts,
  macKey: MacKey,
  opts: DecodeEnvelopeOptions = {},
): Promise<Uint8Array> {
  return appendBlock(input, (payload) => createMac0(payload, macKey, { detached: true }), opts);
}

/** Adds one COSE_Sign block with several signatures over the SUIT_Digest (MF §8.3). */
export function addMultiSignature(
  input: Uint8Array | EnvelopeParts,
  signers: readonly Signer[],
  opts: DecodeEnvelopeOptions = {},
): Promise<Uint8Array> {
  return appendBlock(input, (payload) => createSign(payload, signers, { detached: true }), opts);
}

/**
 * A second party's approval (RFC 9019 §4 operator): appends a COSE_Sign1 block to a received envelope and keeps
 * every other byte, which is checked.
 */
export async function addSignature(
  envelope: Uint8Array,
  signer: Signer,
  opts: DecodeEnvelopeOptions = {},
): Promise<Uint8Array> {
  const outer = parseEnvelopeOuter(envelope, { ...opts, verifyDigest: true });
  if (!equalBytes(reencodeEnvelope(outer), envelope)) {
    throw new SuitError(
      'SUIT_ENVELOPE_INVALID',
      'the envelope does not re-encode to its own bytes',
      'envelope',
    );
  }
  const out = await signEnvelope(envelope, signer, opts);
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// Manifest encoding (MF §8.4)

/** A command sequence as commands, or already encoded (content of the bstr). */
export type SequenceInput = readonly SuitCommand[] | Uint8Array;

export type SeverableName =
  'dependencyResolution' | 'payloadFetch' | 'candidateVerification' | 'install' | 'text' | 'coswid';

const SEVERABLE_KEY: Readonly<Record<SeverableName, number>> = {
  dependencyResolution: ManifestKey.dependencyResolution,
  payloadFetch: ManifestKey.payloadFetch,
  candidateVerification: ManifestKey.candidateVerification,
  install: ManifestKey.install,
  text: ManifestKey.text,
  coswid: ManifestKey.coswid,
};

export interface ManifestDescription {
  readonly sequenceNumber: bigint | number;
  readonly components: readonly ComponentId[];
  /** TD §5.1 suit-dependencies. */
  readonly dependencies?: readonly SuitDependency[];
  readonly sharedSequence?: SequenceInput;
  readonly referenceUri?: string;
  /** TD §5.2. */
  readonly manifestComponentId?: ComponentId;
  /** UM set-version. */
  readonly setVersion?: readonly number[];
  readonly validate?: SequenceInput;
  readonly load?: SequenceInput;
  readonly invoke?: SequenceInput;
  readonly uninstall?: SequenceInput;
  readonly dependencyResolution?: SequenceInput;
  readonly payloadFetch?: SequenceInput;
  readonly candidateVerification?: SequenceInput;
  readonly install?: SequenceInput;
  readonly text?: SuitText;
  /** Encoded concise-swid-tag (UM). */
  readonly coswid?: Uint8Array;
  /** Severable members to sever: the manifest keeps a SUIT_Digest, the envelope the bstr (MF §8.4.6). */
  readonly sever?: readonly SeverableName[];
  /** Digest algorithm for severed members (default SHA-256). */
  readonly digestAlg?: number;
}

export interface ManifestParts {
  readonly manifest: Uint8Array;
  /** Severed members for the envelope. */
  readonly members: ReadonlyMap<number, Uint8Array>;
}

function seqBytes(s: SequenceInput): Uint8Array {
  return s instanceof Uint8Array ? s : encodeCommandSequence(s);
}

/** Encodes a SUIT_Text_Map (MF §8.4.4). */
export function encodeText(text: SuitText): Uint8Array {
  const top = new Map<string, Map<unknown, unknown>>();
  for (const [lang, l] of text) {
    const m = new Map<unknown, unknown>();
    for (const [k, v] of l.manifest) m.set(k, v);
    for (const c of l.components) m.set([...c.component], new Map<number, string>(c.fields));
    top.set(lang, m);
  }
  return encode(top);
}

/** Encodes a manifest and its severed members deterministically (MF §8.4). */
export function encodeManifest(desc: ManifestDescription): ManifestParts {
  if (desc.components.length === 0)
    throw new SuitError('SUIT_BUILD_INVALID', 'a manifest needs at least one component');
  const common = new Map<number, unknown>();
  if (desc.dependencies !== undefined && desc.dependencies.length > 0) {
    const deps = new Map<number, Map<number, unknown>>();
    for (const d of desc.dependencies)
      deps.set(d.index, new Map<number, unknown>(d.prefix === undefined ? [] : [[1, [...d.prefix]]]));
    common.set(1, deps);
  }
  common.set(
    2,
    desc.components.map((c) => [...c]),
  );
  if (desc.sharedSequence !== undefined) common.set(4, seqBytes(desc.sharedSequence));

  const m = new Map<number, unknown>();
  m.set(ManifestKey.manifestVersion, 1);
  m.set(
    ManifestKey.sequenceNumber,
    typeof desc.sequenceNumber === 'bigint' ? desc.sequenceNumber : BigInt(desc.sequenceNumber),
  );
  m.set(ManifestKey.common, encode(common));
  if (desc.referenceUri !== undefined) m.set(ManifestKey.referenceUri, desc.referenceUri);
  if (desc.manifestComponentId !== undefined)
    m.set(ManifestKey.manifestComponentId, [...desc.manifestComponentId]);
  if (desc.setVersion !== undefined) m.set(ManifestKey.setVersion, encode([...desc.setVersion]));
  if (desc.validate !== undefined) m.set(ManifestKey.validate, seqBytes(desc.validate));
  if (desc.load !== undefined) m.set(ManifestKey.load, seqBytes(desc.load));
  if (desc.invoke !== undefined) m.set(ManifestKey.invoke, seqBytes(desc.invoke));
  if (desc.uninstall !== undefined) m.set(ManifestKey.uninstall, seqBytes(desc.uninstall));

  const sever = new Set(desc.sever ?? []);
  const alg = desc.digestAlg ?? -16;
  const members = new Map<number, Uint8Array>();
  const severable: [SeverableName, Uint8Array | undefined][] = [
    ['dependencyResolution', desc.dependencyResolution && seqBytes(desc.dependencyResolution)],
    ['payloadFetch', desc.payloadFetch && seqBytes(desc.payloadFetch)],
    ['candidateVerification', desc.candidateVerification && seqBytes(desc.candidateVerification)],
    ['install', desc.install && seqBytes(desc.install)],
    ['text', desc.text && encodeText(desc.text)],
    ['coswid', desc.coswid],
  ];
  for (const [name, bytes] of severable) {
    const key = SEVERABLE_KEY[name];
    if (bytes === undefined) {
      if (sever.has(name)) throw new SuitError('SUIT_BUILD_INVALID', `cannot sever absent member ${name}`);
      continue;
    }
    if (sever.has(name)) {
      // MF §8.4.6: the manifest holds the SUIT_Digest of the bstr-wrapped member (head included).
      m.set(key, [alg, digestBstr(alg, bytes)]);
      members.set(key, bytes);
    } else {
      m.set(key, bytes);
    }
  }
  return { manifest: encode(m), members };
}

export interface BuildOptions extends DecodeEnvelopeOptions {
  readonly integrated?: ReadonlyMap<string, Uint8Array>;
  readonly tagged?: boolean;
  /** Digest algorithm of the SUIT_Digest (default SHA-256). */
  readonly digestAlg?: number;
  /** Each adds a COSE_Sign1 block. */
  readonly signers?: readonly Signer[];
  /** Each adds a COSE_Mac0 block. */
  readonly macKeys?: readonly MacKey[];
}

/**
 * Builds an envelope from a manifest description: encodes, validates the result with the decoder (a builder bug
 * is SUIT_BUILD_INVALID), then adds the authentication blocks. Without signers or MAC keys it is unsigned.
 */
export async function buildEnvelope(desc: ManifestDescription, opts: BuildOptions = {}): Promise<Uint8Array> {
  const { manifest, members } = encodeManifest(desc);
  try {
    parseManifest(manifest, members, opts);
  } catch (e) {
    throw new SuitError(
      'SUIT_BUILD_INVALID',
      `the built manifest does not validate (${e instanceof Error ? e.message : String(e)})`,
      undefined,
      { cause: e },
    );
  }
  let env: Uint8Array = encodeEnvelope({
    manifest,
    members,
    ...(opts.integrated === undefined ? {} : { integrated: opts.integrated }),
    ...(opts.tagged === undefined ? {} : { tagged: opts.tagged }),
    ...(opts.digestAlg === undefined ? {} : { digestAlg: opts.digestAlg }),
  });
  for (const s of opts.signers ?? []) env = await signEnvelope(env, s, opts);
  for (const k of opts.macKeys ?? []) env = await addMac(env, k, opts);
  return env;
}

// ---------------------------------------------------------------------------------------------------------
// High-level update manifest (MF §7 templates: compatibility check, secure boot, firmware download, install;
// ENC §4 encrypted payloads)

export interface UpdateComponent {
  /** Component identifier, or a '/'-separated path whose parts become UTF-8 bstrs. */
  readonly id: ComponentId | string;
  /** Digest (of the plaintext image) and size (MF §8.4.8.6 image-digest, §8.4.8.7 image-size). */
  readonly image: {
    readonly digest: Uint8Array;
    readonly size: number | bigint;
    readonly digestAlg?: number;
  };
  /** Where to fetch the payload (MF §8.4.8.9). A '#key' URI names an integrated payload (MF §7.5). */
  readonly uri?: string;
  /** SUIT_Encryption_Info (COSE_Encrypt bytes) of an encrypted payload (ENC §4). */
  readonly encryptionInfo?: Uint8Array;
  /** Ciphertext written with directive-write (parameter 18) instead of being fetched (ENC §4, write). */
  readonly content?: Uint8Array;
  /** Component that receives the fetched ciphertext before copy+decrypt (default: id + 'encrypted'). */
  readonly stagingId?: ComponentId | string;
  /** Size of the ciphertext to fetch (image-size of the staging component). */
  readonly encryptedSize?: number | bigint;
  /** component-slot parameter (MF §8.4.8.8). */
  readonly slot?: number;
  /** Text for this component (MF §8.4.4 component keys). */
  readonly text?: {
    readonly vendorName?: string;
    readonly modelName?: string;
    readonly modelInfo?: string;
    readonly description?: string;
    readonly version?: string;
  };
}

export interface UpdateDescription {
  readonly vendorDomain: string;
  readonly className: string;
  readonly sequenceNumber: bigint | number;
  readonly components: readonly UpdateComponent[];
  readonly referenceUri?: string;
  /** Add an invoke sequence for this component index (true = 0). */
  readonly invoke?: boolean | number;
  readonly setVersion?: readonly number[];
  readonly text?: {
    readonly language?: string;
    readonly manifestDescription?: string;
    readonly updateDescription?: string;
  };
  /** Sever the text (MF §8.4.6: distributors may drop it). */
  readonly severText?: boolean;
  /** Sever the install sequence. */
  readonly severInstall?: boolean;
  /**
   * Leave the payload source to the operator (TD §5.6.1): each component's uri, if any, is only a default set with
   * set-parameters, so an operator's dependent manifest can deliver the payload from its own location and with
   * per-device encryption. Components must then be plaintext (no encryptionInfo/content).
   */
  readonly operatorDelivery?: boolean;
}

const utf8 = new TextEncoder();

export function componentIdOf(id: ComponentId | string): ComponentId {
  if (typeof id !== 'string') return id;
  if (id === '') throw new SuitError('SUIT_BUILD_INVALID', 'empty component path');
  return id.split('/').map((p) => utf8.encode(p));
}

function params(entries: readonly (readonly [number, unknown])[], path: string): SuitParameters {
  const m = new Map<number, ReturnType<typeof parseParameterValue>>();
  for (const [k, v] of entries) m.set(k, parseParameterValue(k, v, `${path}{${k}}`));
  return m;
}

const policy = (code: number, p: number): SuitCommand => ({ op: 'policy', code, policy: p });
const setIndex = (i: number): SuitCommand => ({ op: 'set-component-index', code: 12, index: [i] });
const override = (p: SuitParameters): SuitCommand => ({ op: 'params', code: 20, params: p });

// Reporting policies as in the draft's examples: conditions report everything (15), fetch/invoke failures (2).
const REPORT_ALL = 15;
const REPORT_FAILURE = 2;

/**
 * A standard update manifest (MF §7.1 compatibility check, §7.3 firmware download, §7.4 install, §7.2 secure
 * boot; ENC §4 for encrypted payloads):
 *  - shared sequence: per component, override vendor-id = UUIDv5(DNS, vendorDomain), class-id =
 *    UUIDv5(vendor-id, className), image-digest, image-size (and slot), then check vendor and class;
 *  - install: set uri + fetch + image-match; encrypted: fetch the ciphertext into a staging component, then
 *    copy with encryption-info (or write `content` with encryption-info) + image-match;
 *  - validate: image-match; invoke optional.
 * With more than one component every sequence starts with set-component-index (MF §6.2).
 */
export function buildUpdateManifest(desc: UpdateDescription): ManifestDescription {
  if (desc.components.length === 0)
    throw new SuitError('SUIT_BUILD_INVALID', 'an update needs at least one component');
  const vendorId = vendorIdFromDomain(desc.vendorDomain);
  const classId = classIdFromName(vendorId, desc.className);
  const targets = desc.components.map((c) => componentIdOf(c.id));
  const staging: ComponentId[] = [];
  const multi =
    desc.components.length > 1 ||
    desc.components.some((c) => c.encryptionInfo !== undefined && c.content === undefined);
  const shared: SuitCommand[] = [];
  const install: SuitCommand[] = [];
  const validate: SuitCommand[] = [];
  desc.components.forEach((c, i) => {
    const p = `components[${i}]`;
    const size = typeof c.image.size === 'bigint' ? c.image.size : BigInt(c.image.size);
    const digestAlg = c.image.digestAlg ?? -16;
    const shParams: [number, unknown][] = [
      [1, vendorId],
      [2, classId],
      [3, encode([digestAlg, c.image.digest])],
      [14, size],
    ];
    if (c.slot !== undefined) shParams.push([5, c.slot]);
    if (multi) shared.push(setIndex(i));
    shared.push(override(params(shParams, `${p}.shared`)), policy(1, REPORT_ALL), policy(2, REPORT_ALL));

    if (desc.operatorDelivery === true && (c.encryptionInfo !== undefined || c.content !== undefined))
      throw new SuitError(
        'SUIT_BUILD_INVALID',
        'with operator delivery the operator encrypts: give plaintext',
        p,
      );
    if (c.encryptionInfo !== undefined) {
      if (c.content !== undefined) {
        // ENC §4: directive-write decrypts parameter 18 content with encryption-info into the component.
        if (multi) install.push(setIndex(i));
        install.push(
          override(
            params(
              [
                [18, c.content],
                [19, c.encryptionInfo],
              ],
              `${p}.install`,
            ),
          ),
          policy(18, REPORT_ALL),
        );
      } else {
        if (c.uri === undefined)
          throw new SuitError('SUIT_BUILD_INVALID', 'an encrypted component needs uri or content', p);
        const s = targets.length + staging.length;
        staging.push(
          c.stagingId === undefined ? [...targets[i]!, utf8.encode('encrypted')] : componentIdOf(c.stagingId),
        );
        const fetchParams: [number, unknown][] = [[21, c.uri]];
        if (c.encryptedSize !== undefined)
          fetchParams.push([
            14,
            typeof c.encryptedSize === 'bigint' ? c.encryptedSize : BigInt(c.encryptedSize),
          ]);
        install.push(setIndex(s), override(params(fetchParams, `${p}.fetch`)), policy(21, REPORT_FAILURE));
        // ENC §4: directive-copy decrypts the source component into the current one.
        install.push(
          setIndex(i),
          override(
            params(
              [
                [19, c.encryptionInfo],
                [22, s],
              ],
              `${p}.install`,
            ),
          ),
          policy(22, REPORT_FAILURE),
        );
      }
      install.push(policy(3, REPORT_ALL));
    } else if (c.uri !== undefined || desc.operatorDelivery === true) {
      if (multi) install.push(setIndex(i));
      if (desc.operatorDelivery === true) {
        // TD §5.6.1: the author only *sets* a default source (set-parameters is set-if-unset), so the operator's
        // dependent manifest decides where — and in which encryption — the payload is delivered.
        if (c.uri !== undefined)
          install.push({ op: 'params', code: 19, params: params([[21, c.uri]], `${p}.install`) });
      } else {
        install.push(override(params([[21, c.uri!]], `${p}.install`)));
      }
      install.push(policy(21, REPORT_FAILURE), policy(3, REPORT_ALL));
    } else if (c.content !== undefined) {
      if (multi) install.push(setIndex(i));
      install.push(
        override(params([[18, c.content]], `${p}.install`)),
        policy(18, REPORT_ALL),
        policy(3, REPORT_ALL),
      );
    }
    if (multi) validate.push(setIndex(i));
    validate.push(policy(3, REPORT_ALL));
  });

  let invoke: SuitCommand[] | undefined;
  if (desc.invoke !== undefined && desc.invoke !== false) {
    const idx = desc.invoke === true ? 0 : desc.invoke;
    if (!Number.isInteger(idx) || idx < 0 || idx >= targets.length)
      throw new SuitError('SUIT_BUILD_INVALID', `invoke index ${idx} out of range`);
    invoke = [...(multi ? [setIndex(idx)] : []), policy(23, REPORT_FAILURE)];
  }

  let text: SuitText | undefined;
  const hasComponentText = desc.components.some((c) => c.text !== undefined);
  if (desc.text !== undefined || hasComponentText) {
    const manifestText = new Map<number, string>();
    if (desc.text?.manifestDescription !== undefined) manifestText.set(1, desc.text.manifestDescription);
    if (desc.text?.updateDescription !== undefined) manifestText.set(2, desc.text.updateDescription);
    const components = desc.components.flatMap((c, i) => {
      if (c.text === undefined) return [];
      const f = new Map<number, string>();
      if (c.text.vendorName !== undefined) f.set(1, c.text.vendorName);
      if (c.text.modelName !== undefined) f.set(2, c.text.modelName);
      f.set(3, desc.vendorDomain);
      if (c.text.modelInfo !== undefined) f.set(4, c.text.modelInfo);
      if (c.text.description !== undefined) f.set(5, c.text.description);
      if (c.text.version !== undefined) f.set(6, c.text.version);
      return [{ component: targets[i]!, fields: f }];
    });
    text = new Map([[desc.text?.language ?? 'en-US', { manifest: manifestText, components }]]);
  }
  const sever: SeverableName[] = [];
  if (desc.severText === true && text !== undefined) sever.push('text');
  if (desc.severInstall === true && install.length > 0) sever.push('install');

  return {
    sequenceNumber: desc.sequenceNumber,
    components: [...targets, ...staging],
    sharedSequence: shared,
    validate,
    ...(install.length > 0 ? { install } : {}),
    ...(invoke === undefined ? {} : { invoke }),
    ...(desc.referenceUri === undefined ? {} : { referenceUri: desc.referenceUri }),
    ...(desc.setVersion === undefined ? {} : { setVersion: desc.setVersion }),
    ...(text === undefined ? {} : { text }),
    ...(sever.length > 0 ? { sever } : {}),
  };
}

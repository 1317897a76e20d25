/**
 * Per-device encryption (RFC 9019 §3 confidentiality; draft-ietf-suit-firmware-encryption "ENC";
 * draft-ietf-suit-trust-domains "TD").
 *
 * At approval each payload of the author's manifest is encrypted once with one random content key (CEK) under
 * A128CTR (RFC 9459): the ciphertext has the plaintext's length, so the author's image-size stays a valid transfer
 * bound, and integrity comes from the author's image-digest, checked by condition-image-match after decryption
 * (ENC §4 / §8: AES-CTR only together with the manifest's digest). The ciphertext is stored once as a
 * content-addressed payload.
 *
 * Each device gets an operator-signed manifest (the dependent, TD §5) that
 *  - for each encrypted component sets uri = the ciphertext's URL and encryption-info = a COSE_Encrypt whose only
 *    recipient is the CEK wrapped for this device alone (ECDH-ES+A128KW to its key-agreement key, RFC 9053 §6.3, or
 *    A128KW under its own KEK, §6.2.1), with detached ciphertext (ENC §4);
 *  - then fetches the author's envelope (integrated under the text key equal to its uri, TD §5.4), checks
 *    condition-dependency-integrity (TD §5.6.3) against the author's SUIT_Digest and runs process-dependency
 *    (TD §5.6.2): the author's own install fetches, decrypts and checks image-match.
 * A device therefore needs both signatures (operator for the dependent, author for the dependency), and one
 * device's wrap is useless to another (another key yields COSE_NO_KEY or COSE_DECRYPT_FAILED).
 *
 * The author's manifest must leave the payload source to the dependent: its install must not override uri or
 * encryption-info (set-parameters, TD §5.6.1, is fine). Approval proves this by a dry run of the SUIT processor
 * on an in-memory platform before anything is stored.
 */
import { createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import {
  Alg,
  createSign1,
  decodeEncrypt,
  decryptContent,
  encodeEncrypt,
  encryptContent,
  softwareKeyAgreement,
  unwrapContentKey,
  wrapForAesKw,
  wrapForEcdhEs,
  type KeyAgreement,
  type KeyUnwrapper,
  type RecipientStructure,
  type Signer,
  type Verifier,
} from '@rotor/cose';
import {
  authenticateEnvelope,
  buildUpdateManifest,
  componentKey,
  encodeEnvelope,
  encodeManifest,
  manifestDigestBytes,
  MemoryPlatform,
  parseParameterValue,
  processEnvelope,
  type ComponentId,
  type PlatformVendorId,
  type ProcessResult,
  type SuitCommand,
  type SuitEnvelope,
  type SuitParameters,
  type TrustAnchor,
  type ManifestDescription,
} from '@rotor/suit';
import { ServerError } from './errors.ts';

/** Content encryption of release payloads (RFC 9459 AES-CTR, 128-bit key, 16-byte initial counter block). */
export const CONTENT_ALG = Alg.A128CTR;
/** Key distribution to a device's key-agreement key (draft-ietf-suit-mti: ECDH-ES+A128KW). */
export const ECDH_ALG = Alg.ECDH_ES_A128KW;
/** Key distribution under a per-device KEK. */
export const KW_ALG = Alg.A128KW;
/** Text key (and uri) of the integrated author envelope in every per-device envelope (TD §5.4). */
export const AUTHOR_ENVELOPE_KEY = '#author.suit';
/** manifest-component-id of the operator manifest (TD §5.2). */
export const OPERATOR_MANIFEST_ID: ComponentId = [new TextEncoder().encode('operator.suit')];
/** Dependency prefix when the author's manifest has no manifest-component-id. */
const AUTHOR_PREFIX: ComponentId = [new TextEncoder().encode('author.suit')];

const SHA256 = -16;
const REPORT_ALL = 15;
const REPORT_FAILURE = 2;

/** A payload-carrying component of the author's manifest. */
export interface PayloadComponent {
  readonly index: number;
  readonly componentId: ComponentId;
  /** SHA-256 of the plaintext (the author's image-digest). */
  readonly digest: Uint8Array;
}

function applyParams(current: readonly number[], p: SuitParameters, out: Map<number, Uint8Array>): void {
  const d = p.get(3);
  if (d?.type !== 'digest' || d.digest.alg !== SHA256) return;
  for (const i of current) out.set(i, d.digest.bytes);
}

function walk(
  cmds: readonly SuitCommand[],
  count: number,
  current: number[],
  out: Map<number, Uint8Array>,
): number[] {
  let cur = current;
  for (const c of cmds) {
    if (c.op === 'set-component-index')
      cur = c.index === true ? Array.from({ length: count }, (_, i) => i) : [...c.index];
    else if (c.op === 'params') applyParams(cur, c.params, out);
    else if (c.op === 'override-multiple') for (const [i, p] of c.perComponent) applyParams([i], p, out);
    else if (c.op === 'run-sequence') cur = walk(c.sequence, count, cur, out);
  }
  return cur;
}

/**
 * Components whose SHA-256 image-digest the author's shared sequence sets (MF §8.4.5, §8.4.8.6): the payloads to
 * encrypt. Digests set only inside try-each are not followed (an alternative is not a payload of its own).
 */
export function payloadComponents(env: SuitEnvelope): PayloadComponent[] {
  const m = env.manifest;
  const out = new Map<number, Uint8Array>();
  const count = m.common.components.length;
  if (m.common.sharedSequence !== undefined) walk(m.common.sharedSequence.commands, count, [0], out);
  return [...out.entries()]
    .filter(([i]) => i < count)
    .sort((a, b) => a[0] - b[0])
    .map(([index, digest]) => ({ index, componentId: m.common.components[index]!, digest }));
}

/** What every per-device envelope of a release shares (no key material). */
export interface ReleaseTemplate {
  readonly authorEnvelope: Uint8Array;
  /** Encoded SUIT_Digest of the author's manifest (the dependency's image-digest, TD §5.6.3). */
  readonly authorDigestBytes: Uint8Array;
  readonly authorManifestId: ComponentId | undefined;
  readonly sequenceNumber: bigint;
  readonly components: readonly {
    readonly componentId: ComponentId;
    /** Where the device fetches the ciphertext (relative to the device API, RFC 3986 §4.2). */
    readonly uri: string;
    /** Unprotected header of the COSE_Encrypt: {1: alg, 5: IV} (RFC 9459 §3). */
    readonly iv: Uint8Array;
  }[];
}

export type DeviceRecipient =
  | { readonly kind: 'ecdh'; readonly publicKey: KeyObject }
  | { readonly kind: 'aes-kw'; readonly kek: Uint8Array };

/**
 * The recipient a device's content key is wrapped for: its key-agreement key (ECDH-ES) if registered, else its KEK
 * unwrapped by `unwrap` (AES-KW; the caller zeroes the returned `kek` after use). Neither: DEVICE_KEY_MISSING.
 */
export async function deviceRecipient(
  dev: { readonly ka_spki: Uint8Array | null; readonly kek_wrapped: Uint8Array | null },
  unwrap: (wrapped: Uint8Array) => Promise<Uint8Array>,
): Promise<{ recipient: DeviceRecipient; kek?: Uint8Array }> {
  if (dev.ka_spki !== null)
    return {
      recipient: {
        kind: 'ecdh',
        publicKey: createPublicKey({ key: Buffer.from(dev.ka_spki), format: 'der', type: 'spki' }),
      },
    };
  if (dev.kek_wrapped !== null) {
    const kek = await unwrap(dev.kek_wrapped);
    return { recipient: { kind: 'aes-kw', kek }, kek };
  }
  throw new ServerError(
    'DEVICE_KEY_MISSING',
    'the device has neither a key-agreement key nor a KEK registered: its content key cannot be wrapped',
  );
}

/** The CEK wrapped for one device (one COSE_recipient). */
export function wrapForDevice(cek: Uint8Array, r: DeviceRecipient): RecipientStructure {
  return r.kind === 'ecdh' ? wrapForEcdhEs(cek, r.publicKey, ECDH_ALG) : wrapForAesKw(cek, r.kek, KW_ALG);
}

/** SUIT_Encryption_Info (ENC §4): COSE_Encrypt, AES-CTR (protected empty, RFC 9459 §3), detached ciphertext. */
export function encryptionInfo(iv: Uint8Array, recipient: RecipientStructure): Uint8Array {
  return encodeEncrypt({
    protectedBytes: new Uint8Array(0),
    unprotected: new Map<number, unknown>([
      [1, CONTENT_ALG],
      [5, iv],
    ]),
    ciphertext: null,
    recipients: [recipient],
  });
}

const pv = (code: number, v: unknown): [number, ReturnType<typeof parseParameterValue>] => [
  code,
  parseParameterValue(code, v, `operator.install{${code}}`),
];
const setIndex = (i: number): SuitCommand => ({ op: 'set-component-index', code: 12, index: [i] });
const policy = (code: number, p: number): SuitCommand => ({ op: 'policy', code, policy: p });

/** The operator (dependent) manifest's install sequence for one device's encryption infos (TD §5, ENC §4). */
function operatorInstall(t: ReleaseTemplate, infos: readonly Uint8Array[]): SuitCommand[] {
  const install: SuitCommand[] = [];
  t.components.forEach((c, i) => {
    install.push(setIndex(i), {
      op: 'params',
      code: 20,
      params: new Map([pv(21, c.uri), pv(19, infos[i])]),
    });
  });
  const dep = t.components.length;
  install.push(
    setIndex(dep),
    {
      op: 'params',
      code: 20,
      params: new Map([
        pv(3, t.authorDigestBytes),
        pv(14, BigInt(t.authorEnvelope.length)),
        pv(21, AUTHOR_ENVELOPE_KEY),
      ]),
    },
    policy(21, REPORT_FAILURE), // fetch (integrated, MF §8.4.10.4 / TD §5.4)
    policy(7, REPORT_ALL), // condition-dependency-integrity (TD §5.6.3)
    policy(11, REPORT_FAILURE), // directive-process-dependency (TD §5.6.2)
  );
  return install;
}

/**
 * One device's envelope: the operator manifest with this device's encryption infos, signed (COSE_Sign1 over the
 * SUIT_Digest, MF §8.3) by the operator, the author's envelope integrated. The structure is validated once per
 * release by `dryRun` at approval; here it is only encoded and signed.
 */
export async function buildDeviceEnvelope(
  t: ReleaseTemplate,
  cek: Uint8Array,
  recipient: DeviceRecipient,
  signer: Signer,
): Promise<{ envelope: Uint8Array; digestBytes: Uint8Array }> {
  const infos = t.components.map((c) => encryptionInfo(c.iv, wrapForDevice(cek, recipient)));
  const { manifest } = encodeManifest({
    sequenceNumber: t.sequenceNumber,
    components: t.components.map((c) => c.componentId),
    dependencies: [{ index: t.components.length, prefix: t.authorManifestId ?? AUTHOR_PREFIX }],
    manifestComponentId: OPERATOR_MANIFEST_ID,
    install: operatorInstall(t, infos),
  });
  const digestBytes = manifestDigestBytes(manifest);
  const block = await createSign1(digestBytes, signer, { detached: true });
  const envelope = encodeEnvelope({
    manifest,
    digestBytes,
    authBlocks: [block],
    integrated: new Map([[AUTHOR_ENVELOPE_KEY, t.authorEnvelope]]),
  });
  return { envelope, digestBytes };
}

/** Encrypts the release payloads once under a fresh CEK (one random IV per payload). */
export function encryptPayloads(plaintexts: readonly Uint8Array[]): {
  cek: Uint8Array;
  parts: { iv: Uint8Array; ciphertext: Uint8Array }[];
} {
  const first = encryptContent(plaintexts[0] ?? new Uint8Array(0), { contentAlg: CONTENT_ALG });
  const parts = [{ iv: first.iv, ciphertext: first.ciphertext }];
  for (const p of plaintexts.slice(1)) {
    const e = encryptContent(p, { contentAlg: CONTENT_ALG, cek: first.cek });
    parts.push({ iv: e.iv, ciphertext: e.ciphertext });
  }
  return { cek: first.cek, parts };
}

// ---------------------------------------------------------------------------------------------------------------
// Dry run: the device side of the protocol on an in-memory platform (also used by the tests).

const DEVICE_ALGS: ReadonlySet<number> = new Set([Alg.ES256, -9, Alg.EdDSA, Alg.Ed25519]);
const DECRYPT_ALGS: ReadonlySet<number> = new Set([KW_ALG, ECDH_ALG]);

function identityOf(env: SuitEnvelope): { vendor: PlatformVendorId[]; cls: Uint8Array[] } {
  const vendor: PlatformVendorId[] = [];
  const cls: Uint8Array[] = [];
  const visit = (cmds: readonly SuitCommand[]): void => {
    for (const c of cmds) {
      if (c.op === 'params') {
        const v = c.params.get(1);
        if (v?.type === 'vendor-id') vendor.push({ bytes: v.bytes, pen: v.pen });
        const k = c.params.get(2);
        if (k?.type === 'uuid') cls.push(k.bytes);
      } else if (c.op === 'run-sequence') visit(c.sequence);
      else if (c.op === 'try-each') for (const a of c.alternatives) visit(a);
    }
  };
  if (env.manifest.common.sharedSequence !== undefined) visit(env.manifest.common.sharedSequence.commands);
  return { vendor, cls };
}

export interface DryRunKeys {
  readonly operator: Verifier;
  readonly authors: readonly TrustAnchor[];
  readonly agreements?: readonly KeyAgreement[];
  readonly unwrappers?: readonly KeyUnwrapper[];
}

/**
 * Processes a per-device envelope as a device would (MF §8.4.6 update procedure): the operator signature on the
 * dependent and an author signature on the dependency are both required, the payloads are fetched from
 * `resources`, decrypted with the given device keys and checked against the author's image digests.
 */
export async function dryRun(
  envelope: Uint8Array,
  keys: DryRunKeys,
  resources: ReadonlyMap<string, Uint8Array>,
): Promise<{ result: ProcessResult; platform: MemoryPlatform; decryptErrors: unknown[] }> {
  const { envelope: env } = await authenticateEnvelope(envelope, {
    anchors: [{ name: 'operator', role: 'operator', verifier: keys.operator }],
    allowedAlgs: DEVICE_ALGS,
    requiredRoles: ['operator'],
  });
  const author = env.integrated.get(AUTHOR_ENVELOPE_KEY);
  const ids =
    author === undefined
      ? { vendor: [], cls: [] }
      : identityOf(
          (await authenticateEnvelope(author, { anchors: keys.authors, allowedAlgs: DEVICE_ALGS })).envelope,
        );
  const decryptErrors: unknown[] = [];
  const platform = new MemoryPlatform({
    maxComponents: 64,
    vendorIds: ids.vendor,
    classIds: ids.cls,
    resources,
    decrypt: async (info, ciphertext) => {
      try {
        const msg = decodeEncrypt(info);
        const cek = await unwrapContentKey(
          msg,
          { agreements: keys.agreements ?? [], unwrappers: keys.unwrappers ?? [] },
          { allowedAlgs: DECRYPT_ALGS },
        );
        try {
          return decryptContent(msg, cek, ciphertext, { allowedAlgs: new Set([CONTENT_ALG]) });
        } finally {
          cek.fill(0);
        }
      } catch (e) {
        decryptErrors.push(e);
        throw e;
      }
    },
  });
  const result = await processEnvelope(env, 'update', {
    platform,
    authenticateDependency: async (bytes) =>
      (
        await authenticateEnvelope(bytes, {
          anchors: keys.authors,
          allowedAlgs: DEVICE_ALGS,
          requiredRoles: ['author'],
        })
      ).envelope,
  });
  return { result, platform, decryptErrors };
}

/**
 * Approval check: builds a per-device envelope for a throw-away X25519 key and processes it; every payload must
 * install as the author's plaintext. Anything else means the author's manifest does not accept the operator's
 * uri / encryption-info (TD §5.6.1) or is otherwise unusable: RELEASE_INVALID, nothing is stored.
 */
export async function checkTemplate(
  t: ReleaseTemplate,
  cek: Uint8Array,
  plaintexts: readonly Uint8Array[],
  ciphertexts: ReadonlyMap<string, Uint8Array>,
  signer: Signer,
  keys: Omit<DryRunKeys, 'agreements' | 'unwrappers'>,
): Promise<void> {
  const eph = generateKeyPairSync('x25519');
  const { envelope } = await buildDeviceEnvelope(t, cek, { kind: 'ecdh', publicKey: eph.publicKey }, signer);
  const { result, platform } = await dryRun(
    envelope,
    { ...keys, agreements: [softwareKeyAgreement(eph.privateKey)] },
    ciphertexts,
  );
  if (!result.ok) {
    throw new ServerError(
      'RELEASE_INVALID',
      `the author's manifest does not install from the operator's encrypted payload (TD §5.6.1: it must not override uri or encryption-info): ${result.error?.message ?? 'failed'}`,
      { cause: result.error },
    );
  }
  for (const [i, c] of t.components.entries()) {
    const got = await platform.read(c.componentId);
    const want = plaintexts[i]!;
    if (got === undefined || Buffer.compare(got, want) !== 0)
      throw new ServerError('RELEASE_INVALID', `component ${componentKey(c.componentId)} did not install`);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Author side: a manifest the operator can deliver encrypted.

export interface DeliverableUpdate {
  readonly vendorDomain: string;
  readonly className: string;
  readonly sequenceNumber: bigint | number;
  readonly components: readonly {
    readonly id: string;
    /** SHA-256 of the plaintext image. */
    readonly digest: Uint8Array;
    readonly size: number;
    /** Default source when no operator supplies one (set with set-parameters, so a dependent's uri wins). */
    readonly uri?: string;
  }[];
}

/**
 * An update manifest that leaves the payload source to the operator (TD §5.6.1): the shared sequence overrides
 * vendor-id, class-id (MF §8.4.8.3-4), image-digest and image-size and checks vendor and class;
 * install only *sets* a default uri (set-parameters), then fetches and checks image-match; validate checks
 * image-match. Sign it with @rotor/suit buildEnvelope.
 */
export function deliverableManifest(d: DeliverableUpdate): ManifestDescription {
  // The author-side builder's operator-delivery mode is exactly this manifest; one implementation serves both.
  return buildUpdateManifest({
    vendorDomain: d.vendorDomain,
    className: d.className,
    sequenceNumber: d.sequenceNumber,
    operatorDelivery: true,
    components: d.components.map((c) => ({
      id: c.id,
      image: { digest: c.digest, size: c.size },
      ...(c.uri === undefined ? {} : { uri: c.uri }),
    })),
  });
}

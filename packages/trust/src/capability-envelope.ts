/**
 * The capability-module envelope: one SUIT envelope per module (draft-ietf-suit-manifest-34), built with the same
 * update-manifest template as firmware (MF §7.1 compatibility check, §7.3 download, §7.4 install; encryption as in
 * draft-ietf-suit-firmware-encryption §4), with three components under the capabilities prefix:
 *
 *   0  ['capabilities', name]               the WebAssembly binary: image-digest/size of the plaintext; installed
 *                                           by copying the staging component with suit-parameter-encryption-info
 *   1  ['capabilities', name, 'metadata']   the module metadata (capability-metadata.ts), plaintext: image-digest
 *                                           binds it to the author's signature
 *   2  ['capabilities', name, 'encrypted']  staging for the ciphertext, fetched from `uri` ('#module' = integrated
 *                                           in the envelope, MF §7.5)
 *
 * vendor-id = UUIDv5(DNS, vendorDomain), class-id = UUIDv5(vendor-id, 'capability:' + name). The manifest's
 * sequence number is the module's anti-rollback counter (MF §8.4.2), kept per capability by the device.
 *
 * The plaintext is encrypted once (encryptModule); each device's envelope carries the content key wrapped for that
 * device alone (wrapForEcdhEs / wrapForAesKw recipients) and is signed by a capability-signing key that the
 * capability manifest lists for this name.
 */
import { createHash } from 'node:crypto';
import {
  Alg,
  encodeEncrypt,
  encryptContent,
  type EncryptedContent,
  type RecipientStructure,
  type Signer,
} from '@rotor/cose';
import {
  buildEnvelope,
  buildUpdateManifest,
  classIdFromName,
  componentHasPrefix,
  vendorIdFromDomain,
  type ComponentId,
  type SuitCommand,
  type SuitDigest,
  type SuitEnvelope,
} from '@rotor/suit';
import { decodeModuleMetadata, encodeModuleMetadata, type ModuleMetadata } from './capability-metadata.ts';
import { TrustError } from './errors.ts';
import { bytesEqual } from './thumbprint.ts';

export const CAPABILITY_PREFIX = 'capabilities';
export const MODULE_URI = '#module';
export const METADATA_URI = '#metadata';

const utf8 = new TextEncoder();
const utf8d = new TextDecoder('utf-8', { fatal: true });

export function capabilityComponent(name: string): ComponentId {
  return [utf8.encode(CAPABILITY_PREFIX), utf8.encode(name)];
}
export function metadataComponent(name: string): ComponentId {
  return [...capabilityComponent(name), utf8.encode('metadata')];
}
export function stagingComponent(name: string): ComponentId {
  return [...capabilityComponent(name), utf8.encode('encrypted')];
}
/** The SUIT class name of a capability (class-id = UUIDv5(vendor-id, it)). */
export function capabilityClassName(name: string): string {
  return `capability:${name}`;
}
export function capabilityClassId(vendorDomain: string, name: string): Uint8Array {
  return classIdFromName(vendorIdFromDomain(vendorDomain), capabilityClassName(name));
}

export function sha256(b: Uint8Array): Uint8Array {
  return new Uint8Array(createHash('sha256').update(b).digest());
}

/** Encrypts a module once (fresh content key and IV). Keep `cek` in the catalog's key store to wrap it per device. */
export function encryptModule(wasm: Uint8Array, contentAlg: number = Alg.A128GCM): EncryptedContent {
  return encryptContent(wasm, { contentAlg });
}

export interface ModuleEnvelopeInput {
  readonly vendorDomain: string;
  readonly metadata: ModuleMetadata;
  /** The plaintext module (for its digest and size). */
  readonly wasm: Uint8Array;
  /** From encryptModule. */
  readonly encrypted: Pick<EncryptedContent, 'protectedBytes' | 'unprotected' | 'ciphertext'>;
  /** The content key wrapped for the target device(s). */
  readonly recipients: readonly RecipientStructure[];
  readonly sequenceNumber: number | bigint;
  readonly signers: readonly Signer[];
  /** Where the device fetches the ciphertext; default MODULE_URI (integrated in the envelope). */
  readonly uri?: string;
}

/** Builds and signs a module envelope (see the module comment). */
export async function buildModuleEnvelope(input: ModuleEnvelopeInput): Promise<Uint8Array> {
  const md = input.metadata;
  const metadataBytes = encodeModuleMetadata(md);
  const uri = input.uri ?? MODULE_URI;
  // ENC §4: SUIT_Encryption_Info is a COSE_Encrypt with a detached (nil) ciphertext.
  const encryptionInfo = encodeEncrypt({
    protectedBytes: input.encrypted.protectedBytes,
    unprotected: input.encrypted.unprotected,
    ciphertext: null,
    recipients: input.recipients,
  });
  const desc = buildUpdateManifest({
    vendorDomain: input.vendorDomain,
    className: capabilityClassName(md.name),
    sequenceNumber: input.sequenceNumber,
    components: [
      {
        id: capabilityComponent(md.name),
        image: { digest: sha256(input.wasm), size: input.wasm.length },
        uri,
        encryptionInfo,
        encryptedSize: input.encrypted.ciphertext.length,
        stagingId: stagingComponent(md.name),
      },
      {
        id: metadataComponent(md.name),
        image: { digest: sha256(metadataBytes), size: metadataBytes.length },
        uri: METADATA_URI,
      },
    ],
  });
  const integrated = new Map<string, Uint8Array>([[METADATA_URI, metadataBytes]]);
  if (uri === MODULE_URI) integrated.set(MODULE_URI, input.encrypted.ciphertext);
  // The default 1 MiB bound of the SUIT decoder is for manifests; a module envelope carries its ciphertext.
  const maxSize = metadataBytes.length + input.encrypted.ciphertext.length + 64 * 1024;
  return buildEnvelope(desc, { integrated, signers: input.signers, maxSize });
}

/** What the signed manifest says about a module, read before anything is decrypted. */
export interface ModuleEnvelopeInfo {
  readonly name: string;
  /** Image-digest (SHA-256) and size of the plaintext WebAssembly binary. */
  readonly moduleDigest: Uint8Array;
  readonly moduleSize: number;
  /** The metadata, checked against its signed image-digest. */
  readonly metadata: ModuleMetadata;
  readonly metadataBytes: Uint8Array;
  readonly sequenceNumber: bigint;
}

function invalid(message: string, path = 'envelope'): TrustError {
  return new TrustError('CAP_ENVELOPE_INVALID', message, path);
}

function sameComponent(a: ComponentId, b: ComponentId): boolean {
  return a.length === b.length && a.every((x, i) => bytesEqual(x, b[i]!));
}

/**
 * The image parameters set by the shared sequence, per component index. Only the profile's commands are accepted
 * (set-component-index, override/set-parameters, conditions): anything that could make the values depend on the
 * device (try-each, run-sequence, override-multiple, copy-params) is outside the profile.
 */
function sharedImageParams(
  commands: readonly SuitCommand[],
  count: number,
): { digest: SuitDigest | undefined; size: bigint | undefined }[] {
  const out = Array.from({ length: count }, () => ({
    digest: undefined as SuitDigest | undefined,
    size: undefined as bigint | undefined,
  }));
  let current: readonly number[] = count === 1 ? [0] : [];
  for (const c of commands) {
    if (c.op === 'set-component-index') {
      current = c.index === true ? out.map((_, i) => i) : c.index;
    } else if (c.op === 'params') {
      for (const i of current) {
        const slot = out[i];
        if (slot === undefined) throw invalid('component index out of range');
        const d = c.params.get(3);
        if (d !== undefined) {
          if (d.type !== 'digest') throw invalid('image-digest is not a digest');
          slot.digest = d.digest;
        }
        const s = c.params.get(14);
        if (s !== undefined) {
          if (s.type !== 'uint') throw invalid('image-size is not a uint');
          slot.size = s.value;
        }
      }
    } else if (c.op !== 'policy') {
      throw invalid(`command ${c.code} is outside the capability-module profile of the shared sequence`);
    }
  }
  return out;
}

/**
 * Reads an *authenticated* module envelope under the capability-module profile: the component list, the signed
 * image digests, and the metadata checked against its digest and decoded. Throws TrustError CAP_ENVELOPE_INVALID
 * or CAP_METADATA_INVALID.
 */
export function moduleEnvelopeInfo(envelope: SuitEnvelope, maxModuleBytes: number): ModuleEnvelopeInfo {
  const m = envelope.manifest;
  const comps = m.common.components;
  if (comps.length !== 3) throw invalid('a module envelope has exactly three components');
  const c0 = comps[0]!;
  if (c0.length !== 2 || utf8d.decode(c0[0]) !== CAPABILITY_PREFIX) {
    throw invalid("component 0 is not ['capabilities', name]");
  }
  let name: string;
  try {
    name = utf8d.decode(c0[1]);
  } catch {
    throw invalid('capability name is not UTF-8');
  }
  if (
    !sameComponent(comps[1]!, metadataComponent(name)) ||
    !sameComponent(comps[2]!, stagingComponent(name))
  ) {
    throw invalid('components 1 and 2 are not the metadata and staging components of the capability');
  }
  if (m.common.dependencies.length > 0) throw invalid('module envelopes have no SUIT dependencies');
  if (m.common.sharedSequence === undefined) throw invalid('no shared sequence');
  const params = sharedImageParams(m.common.sharedSequence.commands, 3);
  const mod = params[0]!;
  const meta = params[1]!;
  if (
    mod.digest === undefined ||
    mod.size === undefined ||
    meta.digest === undefined ||
    meta.size === undefined
  ) {
    throw invalid('image-digest and image-size must be set for the module and its metadata');
  }
  if (mod.digest.alg !== -16 || meta.digest.alg !== -16 || mod.digest.bytes.length !== 32) {
    throw invalid('module digests are SHA-256');
  }
  if (mod.size > BigInt(maxModuleBytes) || mod.size === 0n) {
    throw new TrustError(
      'CAP_ENVELOPE_INVALID',
      `module size ${mod.size} is outside (0, ${maxModuleBytes}]`,
      'envelope',
    );
  }
  const metadataBytes = envelope.integrated.get(METADATA_URI);
  if (metadataBytes === undefined) throw invalid('the metadata is not integrated in the envelope');
  // MF §8.4.9.2 image-match, done early so nothing is decided on unsigned bytes.
  if (BigInt(metadataBytes.length) !== meta.size || !bytesEqual(sha256(metadataBytes), meta.digest.bytes)) {
    throw new TrustError(
      'CAP_METADATA_INVALID',
      'metadata does not match its signed image-digest',
      'metadata',
    );
  }
  const metadata = decodeModuleMetadata(metadataBytes);
  if (metadata.name !== name)
    throw new TrustError('CAP_METADATA_INVALID', 'metadata names another capability');
  for (const c of comps) {
    if (!componentHasPrefix(c, capabilityComponent(name))) throw invalid('component outside the capability');
  }
  return {
    name,
    moduleDigest: mod.digest.bytes,
    moduleSize: Number(mod.size),
    metadata,
    metadataBytes,
    sequenceNumber: m.sequenceNumber,
  };
}

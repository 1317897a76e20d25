/**
 * Simulation helpers — releases: keys (author, operator, a stranger; the device's key-agreement key), signed
 * and optionally encrypted release envelopes for a simulated device class, and firmware images whose header the
 * simulated health check reads. Used by the agent tests, the benches and the fleet simulator. Test material:
 * the keys are generated in memory per process.
 */
import { createHash, randomBytes, type KeyObject } from 'node:crypto';
import {
  Alg,
  coseKeyFromKeyObject,
  encodeCoseKey,
  encodeEncrypt,
  encryptContent,
  generateAgreementKey,
  generateSigningKey,
  softwareKeyAgreement,
  softwareSigner,
  wrapForEcdhEs,
  type KeyAgreement,
  type Signer,
} from '@rotor/cose';
import {
  buildEnvelope,
  buildUpdateManifest,
  classIdFromName,
  parseParameterValue,
  uuidV5,
  vendorIdFromDomain,
  type SuitCommand,
} from '@rotor/suit';
import type { AnchorRecord, IdentityRecord } from '../flash/nvstate.ts';

export const VENDOR = 'rotor.example';
export const CLASS = 'sensor-v1';
export const FW: readonly Uint8Array[] = [new TextEncoder().encode('fw')];

export interface Keys {
  readonly author: Signer;
  readonly operator: Signer;
  readonly stranger: Signer;
  readonly anchors: AnchorRecord[];
  readonly agreement: KeyAgreement;
  readonly agreementPublic: KeyObject;
}

let cached: Keys | undefined;

export function keys(): Keys {
  if (cached !== undefined) return cached;
  const a = generateSigningKey(Alg.ESP256);
  const o = generateSigningKey(Alg.ESP256);
  const s = generateSigningKey(Alg.ESP256);
  const ka = generateAgreementKey('P-256');
  cached = {
    author: softwareSigner(a.privateKey, Alg.ESP256),
    operator: softwareSigner(o.privateKey, Alg.ESP256),
    stranger: softwareSigner(s.privateKey, Alg.ESP256),
    anchors: [
      {
        name: 'author',
        role: 'author',
        key: encodeCoseKey(coseKeyFromKeyObject(a.publicKey)),
        alg: Alg.ESP256,
        prefixes: undefined,
      },
      {
        name: 'operator',
        role: 'operator',
        key: encodeCoseKey(coseKeyFromKeyObject(o.publicKey)),
        alg: Alg.ESP256,
        prefixes: undefined,
      },
    ],
    agreement: softwareKeyAgreement(ka.privateKey),
    agreementPublic: ka.publicKey,
  };
  return cached;
}

export const DEVICE_ID = uuidV5(vendorIdFromDomain(VENDOR), 'device-0001');

export function identity(maxImageSize = 1024 * 1024): IdentityRecord {
  const vendorId = vendorIdFromDomain(VENDOR);
  return {
    vendorId,
    classId: classIdFromName(vendorId, CLASS),
    deviceId: DEVICE_ID,
    components: [FW],
    maxImageSize,
    requiredRoles: ['author', 'operator'],
  };
}

/** A firmware image: a header ("OK" or "BAD" for the simulated health check), the version, then filler. */
export function image(version: number, size: number, healthy = true): Uint8Array {
  const out = new Uint8Array(size);
  const fill = createHash('sha256').update(`fw-${version}`).digest();
  for (let i = 0; i < size; i++) out[i] = fill[i % 32]! ^ (i & 0xff);
  out.set(new TextEncoder().encode(healthy ? 'OK' : 'BD'), 0);
  out[2] = version & 0xff;
  return out;
}

export function isHealthy(img: Uint8Array): boolean {
  return img[0] === 0x4f && img[1] === 0x4b;
}

export interface ReleaseOptions {
  readonly seq: number;
  readonly image: Uint8Array;
  readonly uri: string;
  /** Encrypt the payload (ECDH-ES + A128KW to the device's agreement key). */
  readonly encrypt?: 'gcm' | 'ctr';
  readonly signers?: readonly Signer[];
  readonly vendor?: string;
  readonly className?: string;
  readonly deviceId?: Uint8Array;
  /** Digest announced in the manifest (default: of `image`). */
  readonly digest?: Uint8Array;
  readonly size?: number;
}

export interface Release {
  readonly envelope: Uint8Array;
  /** What the server serves at `uri` (ciphertext when encrypted). */
  readonly payload: Uint8Array;
}

export async function release(o: ReleaseOptions): Promise<Release> {
  const k = keys();
  const digest = o.digest ?? new Uint8Array(createHash('sha256').update(o.image).digest());
  let payload = o.image;
  let encryptionInfo: Uint8Array | undefined;
  if (o.encrypt !== undefined) {
    const alg = o.encrypt === 'gcm' ? Alg.A128GCM : Alg.A128CTR;
    const c = encryptContent(o.image, { contentAlg: alg });
    const r = wrapForEcdhEs(c.cek, k.agreementPublic, Alg.ECDH_ES_A128KW);
    encryptionInfo = encodeEncrypt({
      protectedBytes: c.protectedBytes,
      unprotected: c.unprotected,
      ciphertext: null,
      recipients: [r],
    });
    payload = c.ciphertext;
  }
  const desc = buildUpdateManifest({
    vendorDomain: o.vendor ?? VENDOR,
    className: o.className ?? CLASS,
    sequenceNumber: o.seq,
    invoke: true,
    components: [
      {
        id: [...FW],
        image: { digest, size: o.size ?? o.image.length },
        uri: o.uri,
        ...(encryptionInfo === undefined ? {} : { encryptionInfo }),
      },
    ],
  });
  // Device check (condition-device-identifier, 24) at the end of the shared sequence.
  const deviceId = o.deviceId ?? DEVICE_ID;
  const shared = [...(desc.sharedSequence as SuitCommand[])];
  const multi = shared[0]?.op === 'set-component-index';
  shared.push(
    ...(multi ? [{ op: 'set-component-index', code: 12, index: [0] } as SuitCommand] : []),
    { op: 'params', code: 20, params: new Map([[24, parseParameterValue(24, deviceId, 'device-id')]]) },
    { op: 'policy', code: 24, policy: 15 },
  );
  const envelope = await buildEnvelope(
    { ...desc, sharedSequence: shared },
    { signers: o.signers ?? [k.author, k.operator] },
  );
  return { envelope, payload };
}

export function randomImage(size: number): Uint8Array {
  return new Uint8Array(randomBytes(size));
}

export const URI = (v: number | string): string => `https://fw.example/${v}`;

/**
 * Shared setup of the capability tests and the modules benchmark: software keys for every role (capability-manifest
 * authority, revocation authority, capability signing keys, the device's ECDH key), metadata, signed documents and
 * per-device encrypted module envelopes built with @rotor/trust and @rotor/suit, and a manager over a SimulatedFs.
 */
import { randomBytes } from 'node:crypto';
import {
  Alg,
  coseKeyFromKeyObject,
  generateAgreementKey,
  generateSigningKey,
  softwareKeyAgreement,
  softwareSigner,
  softwareVerifier,
  wrapForEcdhEs,
  type Signer,
  type Verifier,
} from '@rotor/cose';
import {
  buildModuleEnvelope,
  createCapabilityManifest,
  createRevocationList,
  encryptModule,
  MODULE_ABI,
  sha256,
  type AuthorizedModule,
  type CapabilityKey,
  type ModuleMetadata,
  type ModuleVersion,
} from '@rotor/trust';
import {
  CapabilityManager,
  SandboxPool,
  SimulatedFs,
  type CapabilityEvent,
  type CapabilityManagerOptions,
  type StorageFs,
} from '../src/index.ts';

export const VENDOR = 'rotor.example';
export const DEVICE_CLASS = 'sensor-gw-v1';
export const FIRMWARE: ModuleVersion = [2, 4, 0];

interface KeyPair {
  readonly signer: Signer;
  readonly verifier: Verifier;
  readonly key: CapabilityKey['key'];
  readonly kid: Uint8Array;
}

function keyPair(label: string): KeyPair {
  const { privateKey, publicKey } = generateSigningKey(Alg.ES256);
  const kid = new TextEncoder().encode(label);
  return {
    signer: softwareSigner(privateKey, Alg.ES256, kid),
    verifier: softwareVerifier(publicKey, Alg.ES256, kid),
    key: coseKeyFromKeyObject(publicKey, { kid, alg: Alg.ES256 }),
    kid,
  };
}

export class Keys {
  readonly authority = keyPair('cap-authority');
  readonly revoker = keyPair('revocation-authority');
  /** Signs the 'codec' family and everything in the tests ('*'). */
  readonly capKey = keyPair('capability-key-1');
  /** Listed only for 'filter'. */
  readonly filterKey = keyPair('capability-key-filter');
  /** Not in any capability manifest. */
  readonly stranger = keyPair('stranger');
  readonly device = generateAgreementKey('P-256');
  readonly otherDevice = generateAgreementKey('P-256');
  readonly deviceKid = new TextEncoder().encode('device-ecdh');
}

let shared: Keys | undefined;
export function keys(): Keys {
  shared ??= new Keys();
  return shared;
}

export function metadata(
  name: string,
  version: ModuleVersion,
  over: Partial<ModuleMetadata> = {},
): ModuleMetadata {
  return {
    name,
    version,
    imports: [],
    limits: { memoryPages: 4, callMs: 500, ioBytes: 16384 },
    deviceClasses: [DEVICE_CLASS],
    firmware: { min: [2, 0, 0] },
    dependencies: [],
    abi: MODULE_ABI,
    ...over,
  };
}

export interface EnvelopeOptions {
  readonly signer?: Signer;
  /** Recipient public key (default: this device's ECDH key). */
  readonly recipient?: ReturnType<typeof generateAgreementKey>['publicKey'];
  readonly uri?: string;
}

/** A module envelope encrypted for one device and signed by a capability key. */
export async function moduleEnvelope(
  wasm: Uint8Array,
  md: ModuleMetadata,
  sequence: number,
  opts: EnvelopeOptions = {},
): Promise<{ envelope: Uint8Array; ciphertext: Uint8Array; digest: Uint8Array }> {
  const k = keys();
  const enc = encryptModule(wasm, Alg.A128GCM);
  const recipient = wrapForEcdhEs(
    enc.cek,
    opts.recipient ?? k.device.publicKey,
    Alg.ECDH_ES_A128KW,
    k.deviceKid,
  );
  const envelope = await buildModuleEnvelope({
    vendorDomain: VENDOR,
    metadata: md,
    wasm,
    encrypted: enc,
    recipients: [recipient],
    sequenceNumber: sequence,
    signers: [opts.signer ?? k.capKey.signer],
    ...(opts.uri === undefined ? {} : { uri: opts.uri }),
  });
  return { envelope, ciphertext: enc.ciphertext, digest: sha256(wasm) };
}

export function capabilityManifest(
  version: number,
  modules: readonly AuthorizedModule[] = [
    { name: 'codec' },
    { name: 'filter' },
    { name: 'runaway' },
    { name: 'big' },
    { name: 'app' },
  ],
  capKeys?: readonly CapabilityKey[],
): Promise<Uint8Array> {
  const k = keys();
  return createCapabilityManifest(
    {
      version,
      issuedAt: 1_700_000_000,
      keys: capKeys ?? [
        { key: k.capKey.key, kid: k.capKey.kid, alg: Alg.ES256, names: ['*'] },
        { key: k.filterKey.key, kid: k.filterKey.kid, alg: Alg.ES256, names: ['filter'] },
      ],
      modules,
    },
    k.authority.signer,
  );
}

export const NOW = 1_750_000_000;

export function revocationList(
  version: number,
  digests: readonly Uint8Array[],
  times: { issuedAt?: number; expiresAt?: number } = {},
): Promise<Uint8Array> {
  return createRevocationList(
    {
      version,
      issuedAt: times.issuedAt ?? NOW - 10,
      expiresAt: times.expiresAt ?? NOW + 86_400,
      entries: digests.map((digest) => ({ digest, reason: 'test' })),
    },
    keys().revoker.signer,
  );
}

export interface Harness {
  readonly fs: StorageFs;
  readonly events: CapabilityEvent[];
  readonly logs: string[];
  open(over?: Partial<CapabilityManagerOptions>): Promise<CapabilityManager>;
}

export async function harness(pool: SandboxPool, fs: StorageFs = new SimulatedFs()): Promise<Harness> {
  const k = keys();
  const manifest = await capabilityManifest(1);
  const events: CapabilityEvent[] = [];
  const logs: string[] = [];
  return {
    fs,
    events,
    logs,
    open: (over = {}) =>
      CapabilityManager.open({
        fs,
        device: { vendorDomain: VENDOR, deviceClass: DEVICE_CLASS, firmwareVersion: FIRMWARE },
        keys: { agreements: [softwareKeyAgreement(k.device.privateKey, k.deviceKid)] },
        manifestAuthorities: [k.authority.verifier],
        revocationAuthorities: [k.revoker.verifier],
        initialCapabilityManifest: manifest,
        pool,
        now: () => NOW,
        onEvent: (e) => events.push(e),
        onLog: (_n, l) => logs.push(l),
        ...over,
      }),
  };
}

export function bytes(...b: number[]): Uint8Array {
  return new Uint8Array(b);
}

export function random(n: number): Uint8Array {
  return new Uint8Array(randomBytes(n));
}

/** codec v1's function: [1] ++ (input XOR 0x55). */
export function codecV1(input: Uint8Array): Uint8Array {
  return new Uint8Array([1, ...input.map((b) => b ^ 0x55)]);
}
/** codec v2's function: [2] ++ reverse(input). */
export function codecV2(input: Uint8Array): Uint8Array {
  return new Uint8Array([2, ...[...input].reverse()]);
}

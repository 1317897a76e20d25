/** Shared fixture for the agent tests and the powercut bench: keys, releases (signed, optionally encrypted), devices. */
import { createHash, randomBytes } from 'node:crypto';
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
import { DeviceAgent, type AgentConfig } from '../src/agent/agent.ts';
import { memorySource, type ByteSource } from '../src/fetch/source.ts';
import type { AnchorRecord, IdentityRecord } from '../src/flash/nvstate.ts';
import { SimulatedFs } from '../src/storage/sim.ts';

export const VENDOR = 'rotor.example';
export const CLASS = 'sensor-v1';
export const FW: readonly Uint8Array[] = [new TextEncoder().encode('fw')];

export interface Keys {
  readonly author: Signer;
  readonly operator: Signer;
  readonly stranger: Signer;
  readonly anchors: AnchorRecord[];
  readonly agreement: KeyAgreement;
  readonly agreementPublic: import('node:crypto').KeyObject;
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

/**
 * Arms a power cut `n` mutating operations from now, counting across the clean reboots the agent performs
 * itself (SimulatedFs.reboot() resets its counter): the sweep reaches the trial boot and the confirm too.
 */
export class CutArm {
  readonly fs: SimulatedFs;
  #remaining: number | undefined;
  #base = 0;

  constructor(fs: SimulatedFs) {
    this.fs = fs;
  }

  arm(n: number): void {
    this.#base = this.fs.ops;
    this.#remaining = n;
    this.fs.cutPowerAt(this.#base + n);
  }

  /** A clean reboot initiated by the agent. */
  reboot(): void {
    const used = this.fs.ops - this.#base;
    this.fs.reboot();
    this.#base = 0;
    if (this.#remaining !== undefined) {
      this.#remaining -= used;
      if (this.#remaining >= 0) this.fs.cutPowerAt(this.#remaining);
    }
  }

  disarm(): void {
    this.#remaining = undefined;
  }
}

export interface SimDevice {
  readonly arm: CutArm;
  readonly fs: SimulatedFs;
  readonly agent: DeviceAgent;
  readonly resources: Map<string, Uint8Array>;
}

/** The simulated health check: the booted image starts with "OK". */
export function healthCheckOf(get: () => DeviceAgent): AgentConfig['healthCheck'] {
  return async (b) => {
    const img = b.record.images[0];
    if (img === undefined) return false;
    const bytes = await get().flash.readAll(b.bank, img.component, img.size, img.chunkSize);
    return isHealthy(bytes);
  };
}

export function newAgent(
  fs: SimulatedFs,
  resources: Map<string, Uint8Array>,
  extra: Partial<AgentConfig> & { source?: ByteSource } = {},
  arm?: CutArm,
): DeviceAgent {
  const agent: DeviceAgent = new DeviceAgent({
    fs,
    chunkSize: 1024,
    checkpointEvery: 2,
    fetch: { source: extra.source ?? memorySource(resources), retries: 2, backoffMs: 1, deadlineMs: 10_000 },
    keys: { agreements: [keys().agreement] },
    onReboot: () => {
      if (arm === undefined) fs.reboot();
      else arm.reboot();
    },
    healthCheck: healthCheckOf(() => agent),
    ...extra,
  });
  return agent;
}

/** A provisioned, powered-on device running firmware v1 (3000 bytes) with a recovery image. */
export async function provisioned(
  extra: Partial<AgentConfig> & { source?: ByteSource } = {},
): Promise<SimDevice> {
  const fs = new SimulatedFs();
  const arm = new CutArm(fs);
  const resources = new Map<string, Uint8Array>();
  const agent = newAgent(fs, resources, extra, arm);
  const r1 = await release({ seq: 1, image: image(1, 3000), uri: URI('v1') });
  const r0 = await release({ seq: 1, image: image(0, 1500), uri: URI('recovery') });
  resources.set(URI('v1'), r1.payload);
  resources.set(URI('recovery'), r0.payload);
  await agent.provision({
    identity: identity(1024 * 1024),
    anchors: keys().anchors,
    firmware: r1.envelope,
    recovery: r0.envelope,
  });
  fs.reboot();
  await agent.powerOn();
  return { arm, fs, agent, resources };
}

// ---- power-cut sweep ------------------------------------------------------------------------------------

export interface CutScenario {
  /** The update offered (a release of firmware v2) and whether it is healthy. */
  readonly release: Release;
  readonly uri: string;
  readonly healthy: boolean;
}

export async function scenario(
  kind: 'update' | 'rollback',
  size = 5000,
  encrypt?: 'gcm' | 'ctr',
): Promise<CutScenario> {
  const uri = URI(`v2-${kind}-${size}`);
  const r = await release({
    seq: 2,
    image: image(2, size, kind === 'update'),
    uri,
    ...(encrypt === undefined ? {} : { encrypt }),
  });
  return { release: r, uri, healthy: kind === 'update' };
}

export interface CutOutcome {
  /** Whether the cut fired (false: the flow finished before reaching that index). */
  readonly cut: boolean;
  /** The device failed to boot a verified image, or lost anti-rollback state. */
  readonly bricked: boolean;
  /** Which firmware the device ends on. */
  readonly final: 'old' | 'new' | 'other';
  readonly detail: string;
}

/**
 * Provisions a device, cuts power at mutating operation `cutAt` (counted from the start of the update), reboots
 * (a fresh agent object: the process restarted), lets the agent finish (it resumes an interrupted update; when
 * the cut came before the update was recorded the server offers it again), and checks the invariants.
 */
export async function cutRun(s: CutScenario, cutAt: number): Promise<CutOutcome> {
  const dev = await provisioned();
  dev.resources.set(s.uri, s.release.payload);
  dev.arm.arm(cutAt);
  let cut = false;
  try {
    await dev.agent.update(s.release.envelope);
  } catch (e) {
    if (!(e instanceof Error && 'code' in e && e.code === 'POWER_CUT')) throw e;
    cut = true;
  }
  let agent = dev.agent;
  dev.arm.disarm();
  if (cut) {
    dev.fs.reboot();
    agent = newAgent(dev.fs, dev.resources);
    try {
      await agent.powerOn();
    } catch (e) {
      return {
        cut,
        bricked: true,
        final: 'other',
        detail: `boot failed: ${e instanceof Error ? e.message : String(e)}`,
      };
    }
    const st = await agent.status();
    if (st.sequence === 1n && !st.updating && !st.trial) {
      // Nothing of the update survived (or it rolled back): the server offers it again.
      const seen = (await agent.outbox.pending()).some((t) => t.state === 'rolled-back');
      if (!seen) await agent.update(s.release.envelope);
    }
  }
  const st = await agent.status();
  const counter = [...st.counters.values()].reduce((a, b) => (b > a ? b : a), 0n);
  const final = st.sequence === 2n ? 'new' : st.sequence === 1n ? 'old' : 'other';
  const expected = s.healthy ? 'new' : 'old';
  // Anti-rollback state: the counter equals the confirmed firmware's sequence (never lost, never ahead).
  const counterOk = counter === (final === 'new' ? 2n : 1n);
  const bricked = st.bank === 'r' || !counterOk || st.trial;
  return {
    cut,
    bricked,
    final,
    detail: `bank ${st.bank} seq ${st.sequence} counter ${counter} expected ${expected}`,
  };
}

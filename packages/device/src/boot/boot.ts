/**
 * The boot stage — the firmware verifier of RFC 9019 §4.1 ("The Bootloader").
 *
 * On every boot it chooses a bank, and before invoking it verifies, from flash, against the trust anchors in
 * non-volatile state:
 *  1. the stored envelope's authentication (draft-ietf-suit-manifest-34 §6.2, §8.3; the device's required roles,
 *     RFC 9019 §4 author + operator) — for an operator-signed dependent, also its stored dependency: author-signed,
 *     bound to the dependent's image-digest, and the bank's images the author's (draft-ietf-suit-trust-domains
 *     §5, §6; boot/chain.ts), exactly as at install;
 *  2. anti-rollback: the manifest's sequence number is not below the component's counter (MF §8.4.2, RFC 9124
 *     REQ.SEC.SEQUENCE) — the processor checks it, and so does this stage;
 *  3. the invoke procedure (MF §8.4.6: validate → load → invoke) over a platform bound to that bank: every
 *     image-match hashes the slot *in flash now*; every firmware image of the bank must have been hashed by an
 *     image-match and must equal the digest recorded at install (constant-time); invoke of an unverified
 *     component is refused by the platform. A dependent without validate/load/invoke sections (the server's
 *     install-only operator manifest) boots through its dependencies' invoke procedures (the author's image-match).
 * Bank choice: a pending trial bank first (its boot budget is decremented durably *before* it is invoked, so a
 * crash or hang during a trial counts against it); when the budget is spent the trial is abandoned and the
 * previous bank boots (revert). Then the active bank, then the other A/B bank (its counter check keeps a
 * superseded image from booting), then the recovery image. When nothing verifies it refuses to invoke anything
 * (NO_BOOTABLE_IMAGE).
 */
import { timingSafeEqual } from 'node:crypto';
import { decodeCoseKey, verifierFromCoseKey, Alg } from '@rotor/cose';
import {
  authenticateEnvelope,
  processEnvelope,
  SuitError,
  type ComponentId,
  type ProcessResult,
  type SuitEnvelope,
  type TrustPolicy,
} from '@rotor/suit';
import {
  authenticateStoredDependency,
  authenticateUpdate,
  checkAuthorImages,
  dependencyComponents,
  requireDistinctParties,
  type AuthenticatedUpdate,
} from './chain.ts';
import { DeviceError } from '../errors.ts';
import { componentKey, componentTag, type Flash } from '../flash/flash.ts';
import {
  BOOT,
  bankName,
  encodeBoot,
  type AnchorRecord,
  type BankRecord,
  type BootEvent,
  type BootState,
  type IdentityRecord,
  type NvState,
} from '../flash/nvstate.ts';
import { DevicePlatform } from '../platform/platform.ts';

/** Signature algorithms of authentication blocks the device accepts. */
export const SIGNATURE_ALGS: ReadonlySet<number> = new Set([Alg.ES256, Alg.ESP256, Alg.EdDSA, Alg.Ed25519]);

/** Default anti-rollback keys for manifests without manifest-component-id. */
export const FIRMWARE_KEY: ComponentId = [new TextEncoder().encode('rotor-firmware')];
export const RECOVERY_KEY: ComponentId = [new TextEncoder().encode('rotor-recovery')];

export function trustPolicyOf(
  anchors: readonly AnchorRecord[],
  requiredRoles: readonly string[],
): TrustPolicy {
  return {
    anchors: anchors.map((a) => ({
      name: a.name,
      role: a.role,
      verifier: verifierFromCoseKey(decodeCoseKey(a.key), a.alg),
      ...(a.prefixes === undefined ? {} : { componentPrefixes: a.prefixes }),
    })),
    allowedAlgs: SIGNATURE_ALGS,
    ...(requiredRoles.length === 0 ? {} : { requiredRoles }),
  };
}

export interface BootResult {
  readonly bank: 'a' | 'b' | 'r';
  readonly envelope: SuitEnvelope;
  readonly record: BankRecord;
  /** True when this is a trial boot of a newly installed bank (the agent must confirm it). */
  readonly trial: boolean;
  /** What the boot stage did that the agent has to report (revert, recovery). */
  readonly event: BootEvent;
  /** Why banks were passed over, in order (code: the DeviceError code of the refusal). */
  readonly skipped: readonly { bank: string; reason: string; code: string }[];
  /** Why a trial bank was reverted in this boot when it did not verify (its refusal); else absent. */
  readonly trialFailure?: { readonly code: string; readonly reason: string };
}

export interface BootOptions {
  readonly flash: Flash;
  readonly nv: NvState;
}

function same(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

/** Verifies a bank as described in the module comment; returns the authenticated envelope or throws. */
export async function verifyBank(
  o: BootOptions,
  identity: IdentityRecord,
  policy: TrustPolicy,
  bank: 'a' | 'b' | 'r',
): Promise<{ envelope: SuitEnvelope; record: BankRecord }> {
  const record = await o.nv.bank(bank);
  if (record === undefined) throw new DeviceError('NO_BOOTABLE_IMAGE', `bank ${bank} is empty`);
  const defaultKey = bank === 'r' ? RECOVERY_KEY : FIRMWARE_KEY;
  let chain: AuthenticatedUpdate;
  const deps: SuitEnvelope[] = [];
  try {
    chain = await authenticateUpdate(record.envelope, policy);
    for (const d of record.dependencies ?? []) {
      const dep = await authenticateStoredDependency(
        chain.envelope,
        d.component,
        d.envelope,
        chain.dependencyPolicy,
      );
      await requireDistinctParties(chain, dep.signers);
      deps.push(dep.envelope);
    }
    if (chain.authorFromDependency) {
      if (deps.length !== 1)
        throw new SuitError(
          'SUIT_DEPENDENCY_INVALID',
          'an operator-signed dependent needs its author dependency (TD §5)',
        );
      checkAuthorImages(deps[0]!, record.images);
    }
  } catch (e) {
    throw new DeviceError(
      'MANIFEST_REJECTED',
      `bank ${bank}: ${e instanceof Error ? e.message : String(e)}`,
      { cause: e },
    );
  }
  const envelope = chain.envelope;
  // The anti-rollback identity of the bank: the author's manifest when the author's authority is a dependency.
  const versioned = chain.authorFromDependency ? deps[0]! : envelope;
  const key = versioned.manifest.componentId ?? defaultKey;
  if (
    versioned.manifest.sequenceNumber !== record.sequence ||
    componentKey(key) !== componentKey(record.rollbackKey)
  )
    throw new DeviceError('RECORD_INVALID', `bank ${bank}: record disagrees with its manifest`);
  const counter = await o.nv.counter(key);
  if (counter !== undefined && record.sequence < counter)
    throw new DeviceError(
      'MANIFEST_REJECTED',
      `bank ${bank}: sequence ${record.sequence} is below the anti-rollback counter ${counter} (MF §8.4.2)`,
    );
  const platform = new DevicePlatform({
    flash: o.flash,
    nv: o.nv,
    identity,
    mode: 'boot',
    bank,
    manifestDigest: envelope.digest.bytes,
    images: record.images,
    dependencies: dependencyComponents(envelope.manifest),
    ...(record.dependencies === undefined ? {} : { dependencyEnvelopes: record.dependencies }),
  });
  const m = envelope.manifest;
  let result: ProcessResult | undefined;
  if (deps.length > 0 && m.validate === undefined && m.load === undefined && m.invoke === undefined) {
    // An install-only dependent: the images are verified and invoked by its dependencies' own procedures.
    for (const d of deps) {
      result = await processEnvelope(d, 'invoke', {
        platform,
        manifestKey: d.manifest.componentId ?? defaultKey,
      });
      if (!result.ok) break;
    }
  } else {
    result = await processEnvelope(envelope, 'invoke', {
      platform,
      manifestKey: envelope.manifest.componentId ?? defaultKey,
      authenticateDependency: async (bytes) =>
        (await authenticateEnvelope(bytes, chain.dependencyPolicy)).envelope,
    });
  }
  if (result === undefined || !result.ok)
    throw new DeviceError(
      'MANIFEST_REJECTED',
      `bank ${bank}: invoke procedure failed: ${result?.error?.message ?? 'unknown'}`,
      { cause: result?.error },
    );
  // Every image of the bank was hashed from flash by an image-match and equals its install record.
  for (const img of record.images) {
    const d = platform.verified.get(componentTag(img.component));
    if (d === undefined || !same(d, img.sha256))
      throw new DeviceError(
        'NO_BOOTABLE_IMAGE',
        `bank ${bank}: image ${componentKey(img.component)} is not verified`,
      );
  }
  return { envelope, record };
}

/**
 * Runs the boot stage: chooses, verifies and "invokes" a bank. Returns what it booted; throws NO_BOOTABLE_IMAGE
 * when nothing verifies (the device stays halted rather than run unverified code).
 */
export async function boot(o: BootOptions): Promise<BootResult> {
  const identity = await o.nv.identity();
  const state = await o.nv.boot();
  if (identity === undefined || state === undefined)
    throw new DeviceError('NOT_PROVISIONED', 'the device has no identity or boot state');
  const policy = trustPolicyOf(await o.nv.anchors(), identity.requiredRoles);
  const skipped: { bank: string; reason: string; code: string }[] = [];
  let s: BootState = { ...state, bootCount: state.bootCount + 1 };
  const put = async (next: BootState): Promise<void> => {
    s = next;
    await o.nv.store.put(BOOT, encodeBoot(next));
  };

  const attempt = async (
    bank: 'a' | 'b' | 'r',
  ): Promise<{ envelope: SuitEnvelope; record: BankRecord } | undefined> => {
    try {
      return await verifyBank(o, identity, policy, bank);
    } catch (e) {
      if (e instanceof DeviceError && e.code === 'POWER_CUT') throw e;
      skipped.push({
        bank,
        reason: e instanceof Error ? e.message : String(e),
        code: e instanceof DeviceError ? e.code : 'MANIFEST_REJECTED',
      });
      return undefined;
    }
  };

  let trialFailure: { code: string; reason: string } | undefined;
  if (s.trial !== undefined) {
    const trial = s.trial;
    if (trial.attemptsLeft > 0) {
      // Spend one trial boot durably before running the new image.
      await put({ ...s, trial: { ...trial, attemptsLeft: trial.attemptsLeft - 1 } });
      const v = await attempt(trial.bank);
      if (v !== undefined) return { bank: trial.bank, ...v, trial: true, event: s.event, skipped };
      const f = skipped.at(-1);
      if (f !== undefined) trialFailure = { code: f.code, reason: f.reason };
    }
    // Not confirmed within its budget, or it does not verify: revert to the previous bank. The failed bank is
    // dropped in the same transaction, so it can never boot as a fallback later.
    s = { ...s, trial: undefined, event: 'rolled-back' };
    await o.nv.transact(
      new Map<string, Uint8Array | null>([
        [BOOT, encodeBoot(s)],
        [bankName(trial.bank), null],
      ]),
    );
  } else {
    await put(s);
  }

  for (const bank of [s.active, s.active === 'a' ? 'b' : 'a'] as const) {
    const v = await attempt(bank);
    if (v !== undefined) {
      if (bank !== s.active) await put({ ...s, active: bank });
      return { bank, ...v, trial: false, event: s.event, skipped, ...(trialFailure && { trialFailure }) };
    }
  }
  const r = await attempt('r');
  if (r !== undefined) {
    await put({ ...s, event: 'recovery' });
    return {
      bank: 'r',
      ...r,
      trial: false,
      event: 'recovery',
      skipped,
      ...(trialFailure && { trialFailure }),
    };
  }
  throw new DeviceError(
    'NO_BOOTABLE_IMAGE',
    `no bank verifies: ${skipped.map((x) => `${x.bank}: ${x.reason}`).join('; ')}`,
  );
}

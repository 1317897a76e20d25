/**
 * The device agent — the firmware consumer of RFC 9019 §3 — over simulated hardware (a StorageFs: a directory,
 * or SimulatedFs for power-cut tests). Embeddable: many agents can run in one process (the fleet simulator).
 *
 * Update flow (RFC 9019 §3, §4.1; draft-ietf-suit-manifest-34 §6, §8.4.6):
 *   authenticate → record the update (journal) → SUIT update procedure into the inactive bank (fetch → decrypt →
 *   SHA-256 → flash, constant memory, resumable) → install commit (one transaction: bank record + trial boot
 *   state) → reboot → boot stage verifies and trial-boots → health check → confirm (one transaction: active bank +
 *   anti-rollback counter raised) — or reject / budget exhausted → revert to the previous bank.
 *
 * Every refusal leaves the running bank and its records untouched and is reported with a stable code. A power
 * cut anywhere leaves the device able to boot a verified image; `powerOn()` resumes an interrupted update (the
 * download continues from its durable prefix) or a pending trial.
 */
import type { KeyAgreement, KeyUnwrapper, Signer } from '@rotor/cose';
import {
  authenticateEnvelope,
  encodeReport,
  processEnvelope,
  SuitError,
  type ComponentId,
  type ProcessResult,
  type SuitEnvelope,
  type SuitReport,
} from '@rotor/suit';
import { boot, FIRMWARE_KEY, RECOVERY_KEY, trustPolicyOf, type BootResult } from '../boot/boot.ts';
import {
  authenticateUpdate,
  checkAuthorImages,
  dependencyComponents,
  hasIdentityChecks,
  requireDistinctParties,
  type AuthenticatedUpdate,
} from '../boot/chain.ts';
import { DeviceError } from '../errors.ts';
import { componentKey, Flash, otherBank } from '../flash/flash.ts';
import {
  ANCHORS,
  BOOT,
  bankName,
  COUNTERS,
  encodeAnchors,
  encodeBank,
  encodeBoot,
  encodeCounters,
  encodeIdentity,
  encodeUpdate,
  IDENTITY,
  MAX_ENVELOPE,
  NvState,
  UPDATE,
  type AnchorRecord,
  type BootState,
  type IdentityRecord,
} from '../flash/nvstate.ts';
import type { FetchPolicy, InstallStats } from '../fetch/pipeline.ts';
import { DevicePlatform } from '../platform/platform.ts';
import type { StorageFs } from '../storage/fs.ts';
import { Outbox, type Transition } from './outbox.ts';

export interface AgentConfig {
  readonly fs: StorageFs;
  /** Directory of the device inside `fs` ('' = its root). */
  readonly root?: string;
  readonly chunkSize?: number;
  /** Chunks per durability checkpoint of an image download (flash.ts: the resume granularity). */
  readonly checkpointEvery?: number;
  readonly fetch?: FetchPolicy;
  /** Content-key unwrapping (enclave or software keys). */
  readonly keys?: {
    readonly unwrappers?: readonly KeyUnwrapper[];
    readonly agreements?: readonly KeyAgreement[];
  };
  /** Signs SUIT reports (the enclave's key); reports are stored unsigned without it. */
  readonly reportSigner?: Signer;
  /** Trial boots a new bank gets before it counts as failed (default 3). */
  readonly trialBoots?: number;
  /** The new firmware's health check, run after a trial boot; false (or a throw) rejects it. */
  readonly healthCheck?: (booted: BootResult) => Promise<boolean>;
  /** Called on reboot (SimulatedFs: `fs.reboot()`), before the boot stage runs again. */
  readonly onReboot?: () => void;
  readonly batteryMwh?: () => Promise<bigint>;
  readonly now?: () => bigint;
  readonly authorizedPriority?: () => Promise<bigint | undefined>;
  /**
   * The device's current trust (issue 7, attest/trust.ts): when set, updates are authenticated against the current
   * trust-anchor set minus revoked signing keys by a fresh revocation list, instead of the factory anchors.
   */
  readonly trust?: UpdateTrust;
}

/** What the agent needs of the device's current trust (attest/trust.ts DeviceTrust). */
export interface UpdateTrust {
  authenticate(bytes: Uint8Array, requiredRoles: readonly string[]): Promise<AuthenticatedUpdate>;
  /** The boot stage's anchors to write with an install commit (the held ones plus rotated-in keys). */
  bootAnchors?(held: readonly AnchorRecord[]): AnchorRecord[];
}

export interface ProvisionInput {
  readonly identity: IdentityRecord;
  readonly anchors: readonly AnchorRecord[];
  /** Initial firmware (installed into bank A, active, confirmed) and the recovery image. */
  readonly firmware: Uint8Array;
  readonly recovery: Uint8Array;
}

export type UpdateOutcome =
  | {
      readonly ok: true;
      readonly bank: 'a' | 'b';
      readonly sequence: bigint;
      /** True when the new firmware passed its health check and was confirmed; false when it rolled back. */
      readonly confirmed: boolean;
    }
  | {
      readonly ok: false;
      readonly code: string;
      /** The SUIT processor's error code, when the processor refused. */
      readonly suitCode: string | undefined;
      readonly message: string;
      readonly report: SuitReport | undefined;
    };

export interface AgentStatus {
  readonly bank: 'a' | 'b' | 'r';
  readonly sequence: bigint;
  readonly trial: boolean;
  readonly updating: boolean;
  readonly counters: ReadonlyMap<string, bigint>;
}

function isPowerCut(e: unknown): boolean {
  for (let x: unknown = e; x instanceof Error; x = x.cause) {
    if (x instanceof DeviceError && x.code === 'POWER_CUT') return true;
  }
  return false;
}

/** The DeviceError code behind a processor failure (its cause chain), else MANIFEST_REJECTED. */
function deviceCodeOf(e: unknown): string {
  for (let x: unknown = e; x instanceof Error; x = x.cause) {
    if (x instanceof DeviceError) return x.code;
  }
  return 'MANIFEST_REJECTED';
}

/** An update procedure's outcome with what the bank record needs (module comment of boot/chain.ts). */
interface Processed {
  readonly res: ProcessResult;
  /** A refusal found after the processor succeeded (TD §5/§6 chain checks). */
  readonly error: SuitError | undefined;
  readonly rollbackKey: ComponentId;
  readonly sequence: bigint;
  readonly dependencies: { component: ComponentId; envelope: Uint8Array }[];
}

function refusal(e: unknown, report?: SuitReport): UpdateOutcome {
  if (isPowerCut(e)) throw new DeviceError('POWER_CUT', 'power cut', { cause: e });
  return {
    ok: false,
    code: deviceCodeOf(e),
    suitCode: e instanceof SuitError ? e.code : undefined,
    message: e instanceof Error ? e.message : String(e),
    report,
  };
}

export class DeviceAgent {
  readonly config: AgentConfig;
  readonly flash: Flash;
  #nv: NvState | undefined;
  #outbox: Outbox | undefined;
  #booted: BootResult | undefined;
  #busy = false;
  /** How payloads are retrieved (from the config; replaceable, e.g. after factory provisioning). */
  fetchPolicy: FetchPolicy | undefined;
  /** Statistics of the last update run (resumed bytes, network attempts). */
  stats: InstallStats = { resumedBytes: 0, attempts: 0 };

  constructor(config: AgentConfig) {
    this.config = config;
    this.fetchPolicy = config.fetch;
    this.flash = new Flash(config.fs, this.#path('flash'), {
      ...(config.chunkSize === undefined ? {} : { chunkSize: config.chunkSize }),
      ...(config.checkpointEvery === undefined ? {} : { checkpointEvery: config.checkpointEvery }),
    });
  }

  #path(p: string): string {
    const r = this.config.root ?? '';
    return r === '' ? p : `${r}/${p}`;
  }

  get nv(): NvState {
    if (this.#nv === undefined) throw new DeviceError('NOT_PROVISIONED', 'the device is not powered on');
    return this.#nv;
  }

  get outbox(): Outbox {
    if (this.#outbox === undefined) throw new DeviceError('NOT_PROVISIONED', 'the device is not powered on');
    return this.#outbox;
  }

  /** What the boot stage booted (undefined before powerOn). */
  get booted(): BootResult | undefined {
    return this.#booted;
  }

  async #open(): Promise<void> {
    if (this.config.root !== undefined && this.config.root !== '')
      await this.config.fs.mkdir(this.config.root);
    await this.flash.format();
    this.#nv = await NvState.open(this.config.fs, this.#path('nv'));
    this.#outbox = await Outbox.open(this.config.fs, this.#path('outbox'));
  }

  // ---- provisioning (factory) -----------------------------------------------------------------------

  /**
   * Factory provisioning: identity, trust anchors, the recovery image (bank R) and the initial firmware (bank A,
   * active), each installed through the same verified SUIT update path, counters set to their sequence numbers.
   */
  async provision(p: ProvisionInput): Promise<void> {
    await this.#open();
    const nv = this.nv;
    await nv.transact(
      new Map([
        [IDENTITY, encodeIdentity(p.identity)],
        [ANCHORS, encodeAnchors(p.anchors)],
      ]),
    );
    const counters = new Map<string, bigint>();
    for (const [bank, bytes] of [
      ['r', p.recovery],
      ['a', p.firmware],
    ] as const) {
      const chain = await this.#authenticate(bytes);
      const env = chain.envelope;
      const platform = this.#platform(p.identity, bank, env);
      const out = await this.#process(chain, platform, bank === 'r' ? RECOVERY_KEY : FIRMWARE_KEY);
      const error = out.res.ok ? out.error : out.res.error;
      if (error !== undefined || !out.res.ok) {
        if (isPowerCut(error)) throw new DeviceError('POWER_CUT', 'power cut', { cause: error });
        throw new DeviceError('MANIFEST_REJECTED', `provisioning ${bank}: ${error?.message ?? ''}`, {
          cause: error,
        });
      }
      await nv.store.put(
        bankName(bank),
        encodeBank({
          envelope: bytes,
          sequence: out.sequence,
          rollbackKey: out.rollbackKey,
          images: platform.written,
          dependencies: out.dependencies,
        }),
      );
      counters.set(componentKey(out.rollbackKey), out.sequence);
    }
    const scratch = [...(await nv.bankScratch('a')), ...(await nv.bankScratch('r'))];
    const state: BootState = { active: 'a', trial: undefined, event: 'none', bootCount: 0 };
    await nv.transact(
      new Map<string, Uint8Array | null>([
        [COUNTERS, encodeCounters(counters)],
        [BOOT, encodeBoot(state)],
        ...scratch.map((n) => [n, null] as [string, null]),
      ]),
    );
  }

  // ---- power on / boot ---------------------------------------------------------------------------------

  /**
   * Powers the device on: recovers storage, runs the boot stage (verified boot), then finishes whatever was
   * interrupted: a pending trial is health-checked and confirmed or rejected; an update in progress resumes.
   */
  async powerOn(): Promise<BootResult> {
    await this.#open();
    const booted = await boot({ flash: this.flash, nv: this.nv });
    this.#booted = booted;
    if (booted.event === 'rolled-back' || booted.event === 'recovery') {
      // The reason: recovery = nothing else verified; a revert = the trial bank did not verify (its refusal) or
      // was not confirmed within its boot budget.
      await this.#emit(booted.event === 'rolled-back' ? 'rolled-back' : 'failed', booted, {
        reason:
          booted.event === 'recovery' ? 'NO_BOOTABLE_IMAGE' : (booted.trialFailure?.code ?? 'NOT_CONFIRMED'),
        detail: booted.trialFailure?.reason ?? booted.skipped.map((x) => `${x.bank}: ${x.reason}`).join('; '),
      });
      const s = await this.nv.boot();
      if (s !== undefined) await this.nv.store.put(BOOT, encodeBoot({ ...s, event: 'none' }));
    }
    if (booted.trial) {
      let healthy = false;
      try {
        healthy = (await this.config.healthCheck?.(booted)) ?? true;
      } catch (e) {
        if (isPowerCut(e)) throw e;
        healthy = false;
      }
      if (healthy) await this.confirm();
      else {
        await this.reject();
        return this.reboot();
      }
    } else {
      const u = await this.nv.update();
      if (u !== undefined) await this.#runUpdate(u.envelope, true);
    }
    return this.#booted;
  }

  /** Simulated reboot: the hook (SimulatedFs: drop volatile state), then power on again. */
  async reboot(): Promise<BootResult> {
    this.config.onReboot?.();
    return this.powerOn();
  }

  /** Confirms a trial-booted bank: it becomes active and its anti-rollback counter rises (one transaction). */
  async confirm(): Promise<void> {
    const b = this.#booted;
    const s = await this.nv.boot();
    if (b === undefined || !b.trial || s?.trial === undefined || b.bank === 'r') return;
    await this.nv.transact(
      new Map([
        [BOOT, encodeBoot({ ...s, active: b.bank, trial: undefined, event: 'none' })],
        [COUNTERS, await this.nv.raisedCounters(b.record.rollbackKey, b.record.sequence)],
      ]),
    );
    this.#booted = { ...b, trial: false };
    await this.#emit('confirmed', b);
  }

  /** Rejects a trial-booted bank: the next boot runs the previous bank (the failed bank is dropped). */
  async reject(): Promise<void> {
    const b = this.#booted;
    const s = await this.nv.boot();
    if (b === undefined || s?.trial === undefined) return;
    await this.nv.transact(
      new Map<string, Uint8Array | null>([
        [BOOT, encodeBoot({ ...s, trial: undefined, event: 'none' })],
        [bankName(s.trial.bank), null],
      ]),
    );
    await this.#emit('rolled-back', b, { reason: 'HEALTH_CHECK_FAILED' });
  }

  async status(): Promise<AgentStatus> {
    const b = this.#booted;
    if (b === undefined) throw new DeviceError('NOT_PROVISIONED', 'the device is not powered on');
    return {
      bank: b.bank,
      sequence: b.record.sequence,
      trial: b.trial,
      updating: (await this.nv.update()) !== undefined,
      counters: await this.nv.counters(),
    };
  }

  // ---- update --------------------------------------------------------------------------------------------

  async #authenticate(bytes: Uint8Array, current = false): Promise<AuthenticatedUpdate> {
    if (bytes.length > MAX_ENVELOPE)
      throw new DeviceError('MANIFEST_REJECTED', `envelope of ${bytes.length} bytes exceeds ${MAX_ENVELOPE}`);
    const identity = await this.nv.identity();
    if (identity === undefined) throw new DeviceError('NOT_PROVISIONED', 'no identity');
    // MF §6.2 / §8.3: authenticate before anything else is parsed or executed; the required roles may be met
    // across a dependency chain (TD §5, boot/chain.ts). Updates use the current trust when the device has it (issue
    // 7); factory provisioning uses the factory anchors.
    const trust = this.config.trust;
    if (current && trust !== undefined) return trust.authenticate(bytes, identity.requiredRoles);
    return authenticateUpdate(bytes, trustPolicyOf(await this.nv.anchors(), identity.requiredRoles));
  }

  /**
   * The SUIT update procedure over `platform`, dependencies authenticated under the chain's dependency policy
   * (TD §5.6.3), then the chain checks of boot/chain.ts. `defaultKey`: the anti-rollback key of manifests
   * without manifest-component-id.
   */
  async #process(
    chain: AuthenticatedUpdate,
    platform: DevicePlatform,
    defaultKey: ComponentId,
  ): Promise<Processed> {
    const env = chain.envelope;
    const key = env.manifest.componentId ?? defaultKey;
    const dependent = env.manifest.common.dependencies.length > 0;
    const deps: SuitEnvelope[] = [];
    const res = await processEnvelope(env, 'update', {
      platform,
      manifestKey: key,
      // MF §6.2: vendor and class checks — in the manifest, or for a dependent in each dependency (TD §5: the
      // operator's dependent overrides parameters only; the author's manifest identifies the device).
      requireIdentityChecks: !dependent,
      authenticateDependency: async (bytes) => {
        const authenticated = await authenticateEnvelope(bytes, chain.dependencyPolicy);
        await requireDistinctParties(chain, authenticated.signers);
        const d = authenticated.envelope;
        if (!hasIdentityChecks(d.manifest))
          throw new SuitError(
            'SUIT_COMMAND_INVALID',
            "the dependency's shared sequence must check vendor and class identifiers (MF §6.2)",
          );
        if (chain.authorFromDependency) {
          // MF §8.4.2 / RFC 9124 REQ.SEC.SEQUENCE: the author's firmware version must rise.
          const k = d.manifest.componentId ?? defaultKey;
          const counter = await this.nv.counter(k);
          if (counter !== undefined && d.manifest.sequenceNumber <= counter)
            throw new SuitError(
              'SUIT_ROLLBACK',
              `dependency sequence number ${d.manifest.sequenceNumber} is not greater than the installed ${counter} for ${componentKey(k)} (MF §8.4.2)`,
            );
        }
        if (!deps.some((x) => Buffer.compare(x.digestBytes, d.digestBytes) === 0)) deps.push(d);
        return d;
      },
    });
    let error: SuitError | undefined;
    let rollbackKey = key;
    let sequence = env.manifest.sequenceNumber;
    if (res.ok && chain.authorFromDependency) {
      const author = deps.length === 1 ? deps[0] : undefined;
      if (author === undefined)
        error = new SuitError(
          'SUIT_DEPENDENCY_INVALID',
          `an operator-signed dependent must process exactly one author-signed dependency (TD §5), not ${deps.length}`,
        );
      else {
        try {
          checkAuthorImages(author, platform.written);
          rollbackKey = author.manifest.componentId ?? defaultKey;
          sequence = author.manifest.sequenceNumber;
        } catch (e) {
          error = e instanceof SuitError ? e : new SuitError('SUIT_SIGNER_UNAUTHORIZED', String(e));
        }
      }
    }
    return { res, error, rollbackKey, sequence, dependencies: platform.dependencyEnvelopes };
  }

  #platform(identity: IdentityRecord, bank: 'a' | 'b' | 'r', env: SuitEnvelope): DevicePlatform {
    const c = this.config;
    this.stats = { resumedBytes: 0, attempts: 0 };
    return new DevicePlatform({
      flash: this.flash,
      nv: this.nv,
      identity,
      mode: 'update',
      bank,
      manifestDigest: env.digest.bytes,
      stats: this.stats,
      dependencies: dependencyComponents(env.manifest),
      ...(this.fetchPolicy === undefined ? {} : { fetch: this.fetchPolicy }),
      ...(c.keys === undefined ? {} : { keys: c.keys }),
      ...(c.batteryMwh === undefined ? {} : { batteryMwh: c.batteryMwh }),
      ...(c.now === undefined ? {} : { now: c.now }),
      ...(c.authorizedPriority === undefined ? {} : { authorizedPriority: c.authorizedPriority }),
    });
  }

  /**
   * Installs an update envelope and, on success, reboots into it for a trial boot (which confirms or reverts).
   * Never throws for a bad manifest or payload: the outcome carries the typed reason, and the running firmware,
   * its bank and the counters are untouched.
   */
  async update(envelopeBytes: Uint8Array): Promise<UpdateOutcome> {
    if (this.#busy) return refusal(new DeviceError('UPDATE_BUSY', 'an update is running'));
    const b = this.#booted;
    if (b === undefined) throw new DeviceError('NOT_PROVISIONED', 'the device is not powered on');
    if (b.trial || (await this.nv.update()) !== undefined)
      return refusal(new DeviceError('UPDATE_BUSY', 'a trial boot or another update is pending'));
    return this.#runUpdate(envelopeBytes, false);
  }

  async #runUpdate(bytes: Uint8Array, resuming: boolean): Promise<UpdateOutcome> {
    this.#busy = true;
    try {
      return await this.#update(bytes, resuming);
    } finally {
      this.#busy = false;
    }
  }

  async #update(bytes: Uint8Array, resuming: boolean): Promise<UpdateOutcome> {
    const nv = this.nv;
    const booted = this.#booted!;
    const identity = (await nv.identity())!;
    let chain: AuthenticatedUpdate;
    try {
      chain = await this.#authenticate(bytes, true);
    } catch (e) {
      const out = refusal(e);
      if (resuming) await this.#abandon(undefined);
      await this.#emit('failed', undefined, {
        reason: out.ok ? '' : out.code,
        detail: out.ok ? '' : out.message,
      });
      return out;
    }
    const env = chain.envelope;
    const state = (await nv.boot())!;
    const target = booted.bank === 'r' ? state.active : otherBank(booted.bank);
    if (!resuming) {
      // Journal the update, drop the inactive bank (it is about to be overwritten) — one transaction.
      const scratch = [...(await nv.bankScratch(target)), ...(await nv.bankScratch('s'))];
      await nv.transact(
        new Map<string, Uint8Array | null>([
          [UPDATE, encodeUpdate({ envelope: bytes, bank: target })],
          [bankName(target), null],
          ...scratch.map((n) => [n, null] as [string, null]),
        ]),
      );
      await this.flash.eraseBank(target);
      await this.flash.eraseBank('s');
    }
    await this.#emit('downloading', undefined, { envelope: env });
    const platform = this.#platform(identity, target, env);
    const processed = await this.#process(chain, platform, FIRMWARE_KEY);
    const { res } = processed;
    const error = res.ok ? processed.error : res.error;
    if (!res.ok || error !== undefined) {
      const out = refusal(error, res.report);
      await this.#abandon(target);
      await this.#emit('failed', undefined, {
        envelope: env,
        reason: out.ok ? '' : out.code,
        detail: out.ok ? '' : out.message,
        report: res.report,
      });
      return out;
    }
    await this.#emit('downloaded', undefined, { envelope: env, report: res.report });
    await this.#emit('installing', undefined, { envelope: env });
    // Install commit (one transaction): the bank record, the trial, the update journal closed.
    const scratch = [...(await nv.bankScratch(target)), ...(await nv.bankScratch('s'))];
    // Issue 7: an update authenticated under a rotated-in anchor must pass verified boot too (attest/trust.ts).
    const held = await nv.anchors();
    const bootAnchors = this.config.trust?.bootAnchors?.(held);
    await nv.transact(
      new Map<string, Uint8Array | null>([
        ...(bootAnchors === undefined || bootAnchors.length === held.length || bootAnchors.length > 64
          ? []
          : [[ANCHORS, encodeAnchors(bootAnchors)] as [string, Uint8Array]]),
        [
          bankName(target),
          encodeBank({
            envelope: bytes,
            sequence: processed.sequence,
            rollbackKey: processed.rollbackKey,
            images: platform.written,
            dependencies: processed.dependencies,
          }),
        ],
        [BOOT, encodeBoot({ ...state, trial: { bank: target, attemptsLeft: this.config.trialBoots ?? 3 } })],
        [UPDATE, null],
        ...scratch.map((n) => [n, null] as [string, null]),
      ]),
    );
    await this.#emit('installed', undefined, { envelope: env });
    await this.#emit('rebooting', undefined, { envelope: env });
    const after = await this.reboot();
    return {
      ok: true,
      bank: target,
      sequence: processed.sequence,
      confirmed: after.bank === target && !after.trial,
    };
  }

  /** Ends a failed update: the journal and any partial image go; the running bank was never touched. */
  async #abandon(target: 'a' | 'b' | undefined): Promise<void> {
    const nv = this.nv;
    const names =
      target === undefined ? [] : [...(await nv.bankScratch(target)), ...(await nv.bankScratch('s'))];
    await nv.transact(
      new Map<string, Uint8Array | null>([[UPDATE, null], ...names.map((n) => [n, null] as [string, null])]),
    );
  }

  async #emit(
    state: Transition,
    booted: BootResult | undefined,
    x: { envelope?: SuitEnvelope; reason?: string; detail?: string; report?: SuitReport } = {},
  ): Promise<void> {
    const env = x.envelope ?? booted?.envelope;
    await this.outbox.append({
      state,
      manifestDigest: env?.digest.bytes ?? new Uint8Array(0),
      sequence: env?.manifest.sequenceNumber ?? 0n,
      reason: x.reason,
      detail: x.detail?.slice(0, 4096),
      report: x.report === undefined ? undefined : encodeReport(x.report),
    });
  }
}

/**
 * The capability manager (seed 000 §1 "Capability Manager", steps 5–7; issue 8): loads, verifies, decrypts,
 * compiles and runs capability modules, each in its own sandbox (sandbox.ts), hot-swaps them, archives replaced
 * versions, rolls back faulty ones and unloads revoked ones.
 *
 * Verification of a module, in order (each step cites its source; the first failure refuses with a typed code):
 *  1. size bounds (CAP_TOO_LARGE);
 *  2. SUIT authentication under a trust policy built from the capability manifest's keys, one component prefix
 *     ['capabilities', name] per name a key may sign (MF §6.2, §8.3 → CAP_SIGNATURE; MF §9 → CAP_KEY_NOT_AUTHORIZED);
 *  3. the capability-module profile and the metadata against its signed image-digest (CAP_ENVELOPE_INVALID);
 *  4. the capability manifest lists the name, version and digest (seed 000 §1 → CAP_NOT_AUTHORIZED);
 *  5. the digest is not revoked (seed 000 step 7 → CAP_REVOKED);
 *  6. device class and firmware version (seed 000 step 3 → CAP_INCOMPATIBLE), dependencies (CAP_DEPENDENCY);
 *  7. declared limits within the device policy (CAP_OVER_LIMIT), declared host functions offered (CAP_PERMISSION);
 *  8. the SUIT update procedure over ModulePlatform: vendor/class (MF §8.4.9.1), sequence number (MF §8.4.2 →
 *     CAP_ROLLBACK), decryption (ENC §4 → CAP_DECRYPT), image-match of the plaintext (MF §8.4.9.2 → CAP_DIGEST);
 *  9. the binary's imports against the declared ones (CAP_UNDECLARED_IMPORT), ABI and memory maximum (CAP_ABI,
 *     CAP_OVER_LIMIT), WebAssembly compilation (CAP_COMPILE);
 * 10. instantiation and health check in a fresh sandbox (CAP_HEALTH).
 *
 * Swap protocol: verify and start the new version completely (steps 1–10), switch, then commit. The switch is one
 * assignment of `active`: every call picks its version when it is made, so each call is answered by exactly one
 * version. Calls already queued on the old version finish there. The new version's record and the index naming it
 * active are then written in one AtomicStore transaction; until it is durable the old version is kept ready (a
 * failed commit switches back; a power cut reboots into the old version, which the boot verifies again). Once the
 * commit is durable the old version is retired — its sandbox released when its last call returns — and archived: a
 * second transaction replaces its (encrypted) record by the signed envelope without ciphertext plus the deflated
 * plaintext. Serving therefore does not wait for fsync; install() resolves when the new state is durable.
 *
 * Faults: a trap, a call past its time limit or a crashed worker stops the version; calls queued behind the fault
 * are re-dispatched, and the newest archived version is re-verified, started and made active (a transaction
 * again). Without an archive the capability is unloaded. The rest of the device is untouched.
 */
import { createHash } from 'node:crypto';
import { promisify } from 'node:util';
import { deflateRaw, inflateRawSync } from 'node:zlib';
import { Alg, decodeSign1, type Verifier } from '@rotor/cose';
import {
  authenticateEnvelope,
  encodeEnvelope,
  isSuitError,
  processEnvelope,
  type SuitEnvelope,
  type TrustPolicy,
} from '@rotor/suit';
import {
  ANY_CAPABILITY,
  capabilityAuthorization,
  capabilityComponent,
  formatModuleVersion,
  isTrustError,
  moduleEnvelopeInfo,
  MODULE_URI,
  verifyCapabilityManifest,
  TRUST_REVOCATION_CONTENT_TYPE,
  TRUST_REVOCATION_MAX_BYTES,
  verifyRevocationList,
  verifyTrustRevocationList,
  versionInRange,
  type CapabilityManifest,
  type ModuleMetadata,
  type ModuleVersion,
  type RevocationList,
  type TrustRevocationList,
} from '@rotor/trust';
import { DeviceError, type DeviceErrorCode } from '../errors.ts';
import { AtomicStore } from '../storage/atomic.ts';
import type { StorageFs } from '../storage/fs.ts';
import { HOST_BY_KEY, hostKey } from './host.ts';
import { ModulePlatform, type ModuleKeys } from './platform.ts';
import {
  blobName,
  decodeArchiveRecord,
  decodeEnvelopeRecord,
  decodeIndex,
  decodeRevoked,
  encodeArchiveRecord,
  encodeEnvelopeRecord,
  encodeSealedArchiveRecord,
  encodeIndex,
  encodeRevoked,
  INDEX_BLOB,
  MANIFEST_BLOB,
  MODULE_REVOCATION_BLOB,
  REVOKED_BLOB,
  TRUST_REVOCATION_BLOB,
  type Entry,
  type Index,
} from './records.ts';
import { Sandbox, SandboxCallError, SandboxPool, type SandboxFault } from './sandbox.ts';
import { openArchive, sealArchive, type ArchiveSealer } from './seal.ts';
import { readWasmInfo, sameFuncType, WasmFormatError } from './wasm.ts';

const deflateRawAsync = promisify(deflateRaw);

/** Signature algorithms of module envelopes and signed documents (as for firmware). */
export const CAPABILITY_SIGNATURE_ALGS: ReadonlySet<number> = new Set([
  Alg.ES256,
  Alg.ESP256,
  Alg.EdDSA,
  Alg.Ed25519,
]);

export interface DeviceContext {
  /** vendor-id = UUIDv5(DNS, vendorDomain), as for firmware. */
  readonly vendorDomain: string;
  readonly deviceClass: string;
  readonly firmwareVersion: ModuleVersion;
}

export interface CapabilityPolicy {
  readonly maxEnvelopeBytes: number;
  readonly maxModuleBytes: number;
  readonly maxMemoryPages: number;
  readonly maxCallMs: number;
  readonly maxIoBytes: number;
  /** Time for instantiation plus health check. */
  readonly loadMs: number;
  /** Archived versions kept per capability. */
  readonly keepArchives: number;
  readonly maxTableElements: number;
  /**
   * Refuse installs (not running modules) while no revocation list in force is unexpired (seed 000 step 7: the list
   * is "periodically distributed and checked"; a device that cannot refresh it fails closed for new modules).
   */
  readonly requireFreshRevocationList: boolean;
}

export const DEFAULT_CAPABILITY_POLICY: CapabilityPolicy = {
  maxEnvelopeBytes: 4 * 1024 * 1024,
  maxModuleBytes: 2 * 1024 * 1024,
  maxMemoryPages: 256,
  maxCallMs: 5000,
  maxIoBytes: 1024 * 1024,
  loadMs: 2000,
  keepArchives: 1,
  maxTableElements: 65536,
  requireFreshRevocationList: false,
};

export type CapabilityEvent =
  | {
      readonly type: 'installed';
      readonly name: string;
      readonly version: string;
      readonly replaced?: string;
      /** Hex SUIT digest of the module envelope now active (what a status report names, report §4). */
      readonly envelopeDigest: string;
    }
  | { readonly type: 'archived'; readonly name: string; readonly version: string; readonly bytes: number }
  | {
      readonly type: 'fault';
      readonly name: string;
      readonly version: string;
      readonly kind: string;
      readonly message: string;
      readonly memoryBytes: number;
    }
  | {
      readonly type: 'rolled-back';
      readonly name: string;
      readonly from: string;
      readonly to: string | undefined;
      /** Hex SUIT digest of the faulty version's envelope. */
      readonly fromEnvelopeDigest: string;
    }
  | {
      readonly type: 'unloaded';
      readonly name: string;
      readonly version: string;
      readonly reason: 'request' | 'revoked' | 'unauthorized' | 'verification';
      /** Hex SUIT digest of the unloaded version's envelope, when it was running. */
      readonly envelopeDigest?: string;
    }
  | {
      /** A stored archive was dropped at boot: it no longer verifies (tampered, unsealable) or is revoked. */
      readonly type: 'archive-dropped';
      readonly name: string;
      readonly version: string;
      readonly reason: string;
    };

export interface CapabilityManagerOptions {
  readonly fs: StorageFs;
  /** Directory of the manager's AtomicStore (default 'capabilities'). */
  readonly dir?: string;
  readonly device: DeviceContext;
  /** The device's content-key unwrapping keys (software, PKCS#11 or the enclave client). */
  readonly keys: ModuleKeys;
  /** Keys that sign capability manifests (provisioned, seed 000 step 1). */
  readonly manifestAuthorities: readonly Verifier[];
  /** Keys that sign revocation lists (seed 000 step 7). */
  readonly revocationAuthorities: readonly Verifier[];
  /** The capability manifest provisioned with the device (used until a newer one is stored). */
  readonly initialCapabilityManifest: Uint8Array;
  readonly allowedAlgs?: ReadonlySet<number>;
  readonly policy?: Partial<CapabilityPolicy>;
  /** Warm sandboxes; one is created (and closed with the manager) when absent. */
  readonly pool?: SandboxPool;
  /** Seconds since the Unix epoch. */
  readonly now?: () => number;
  readonly onEvent?: (e: CapabilityEvent) => void;
  readonly onLog?: (name: string, line: string) => void;
  /**
   * Seals archives to this device (seal.ts; the enclave's sealing key, e.g. enclaveArchiveSealer(client)). With
   * one, archives are written sealed and only sealed archives are accepted.
   */
  readonly sealer?: ArchiveSealer;
}

export interface CallResult {
  readonly output: Uint8Array;
  readonly version: ModuleVersion;
  /** Hex SHA-256 of the module that answered. */
  readonly digest: string;
  readonly sequence: bigint;
}

export interface ModuleStatus {
  readonly name: string;
  readonly version: string;
  readonly digest: string;
  readonly sequence: bigint;
  readonly archives: readonly {
    readonly version: string;
    readonly digest: string;
    readonly sequence: bigint;
  }[];
}

/** What install() measured, in milliseconds (the switch happens between start and commit). */
export interface InstallTimings {
  /** Size bounds, SUIT authentication, metadata, authorization, revocation, compatibility, limits. */
  readonly verifyMs: number;
  /** SUIT update procedure: key unwrap, decryption, image-match. */
  readonly decryptMs: number;
  /** Import/limit/ABI checks of the binary and WebAssembly compilation. */
  readonly compileMs: number;
  /** Instantiation and health check in a warm sandbox. */
  readonly startMs: number;
  /** The durable commit after the switch. */
  readonly commitMs: number;
}

export interface InstallResult extends ModuleStatus {
  readonly timings: InstallTimings;
}

/** A module that passed every check up to compilation. */
interface Verified {
  readonly name: string;
  readonly metadata: ModuleMetadata;
  readonly digest: Uint8Array;
  readonly digestHex: string;
  readonly sequence: bigint;
  readonly wasm: Uint8Array;
  readonly module: WebAssembly.Module;
  /** The authenticated envelope (to re-check authorization, and to archive it without its ciphertext). */
  readonly envelope: SuitEnvelope;
}

interface Loaded extends Verified {
  readonly sandbox: Sandbox;
  readonly ioCap: number;
  readonly entry: Entry;
  inflight: number;
  state: 'active' | 'retiring' | 'stopped';
}

interface Cap {
  readonly name: string;
  active: Loaded | undefined;
  restoring: Promise<void> | undefined;
  busy: boolean;
  /** Why the capability was last unloaded (for the error of calls that raced with it). */
  unloaded: DeviceErrorCode | undefined;
}

function hexOf(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
}

function sha256(b: Uint8Array): Uint8Array {
  return new Uint8Array(createHash('sha256').update(b).digest());
}

function err(code: DeviceErrorCode, message: string, cause?: unknown): DeviceError {
  return new DeviceError(code, message, cause === undefined ? undefined : { cause });
}

function msgOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

function cloneIndex(i: Index): Index {
  return new Map([...i].map(([k, v]) => [k, { active: v.active, archives: [...v.archives] }]));
}

export class CapabilityManager {
  readonly #o: CapabilityManagerOptions;
  readonly #policy: CapabilityPolicy;
  readonly #store: AtomicStore;
  readonly #pool: SandboxPool;
  readonly #ownPool: boolean;
  readonly #algs: ReadonlySet<number>;
  readonly #caps = new Map<string, Cap>();
  #index: Index = new Map();
  #manifest: CapabilityManifest;
  #trustPolicy: TrustPolicy;
  #revocation: RevocationList | undefined;
  #trustRevocation: TrustRevocationList | undefined;
  #revoked = new Set<string>();
  #commitTail: Promise<unknown> = Promise.resolve();
  #background = new Set<Promise<unknown>>();
  readonly #listeners = new Set<(e: CapabilityEvent) => void>();
  #closed = false;

  private constructor(
    o: CapabilityManagerOptions,
    store: AtomicStore,
    manifest: CapabilityManifest,
    pool: SandboxPool,
    ownPool: boolean,
  ) {
    this.#o = o;
    this.#policy = { ...DEFAULT_CAPABILITY_POLICY, ...o.policy };
    this.#store = store;
    this.#pool = pool;
    this.#ownPool = ownPool;
    this.#algs = o.allowedAlgs ?? CAPABILITY_SIGNATURE_ALGS;
    this.#manifest = manifest;
    this.#trustPolicy = this.#policyOf(manifest);
  }

  /**
   * Opens the manager over its store and starts every active module after verifying it again (the boot-time check
   * of seed 000 §1 "verify ... the capability modules before execution"), in dependency order. A module that no
   * longer verifies is replaced by its newest archive that does, or left unloaded.
   */
  static async open(o: CapabilityManagerOptions): Promise<CapabilityManager> {
    const store = await AtomicStore.open(o.fs, o.dir ?? 'capabilities');
    const algs = o.allowedAlgs ?? CAPABILITY_SIGNATURE_ALGS;
    const verifyManifest = (b: Uint8Array): CapabilityManifest =>
      verifyCapabilityManifest(b, { verifiers: o.manifestAuthorities, allowedAlgs: algs });
    let manifest: CapabilityManifest;
    const storedManifest = await store.get(MANIFEST_BLOB);
    const initial = verifyManifest(o.initialCapabilityManifest);
    manifest = initial;
    if (storedManifest !== undefined) {
      try {
        const stored = verifyManifest(storedManifest);
        if (stored.version > initial.version) manifest = stored;
      } catch {
        // A stored manifest that no longer verifies is ignored; the provisioned one applies.
      }
    }
    const pool = o.pool ?? new SandboxPool();
    const m = new CapabilityManager(o, store, manifest, pool, o.pool === undefined);
    try {
      await m.#boot();
    } catch (e) {
      await m.close();
      throw e;
    }
    return m;
  }

  #now(): number {
    return this.#o.now?.() ?? Math.floor(Date.now() / 1000);
  }

  #policyOf(manifest: CapabilityManifest): TrustPolicy {
    return {
      anchors: manifest.keyVerifiers.map(({ key, verifier }) => ({
        name: `capability-key:${hexOf(key.kid)}`,
        role: 'capability',
        verifier,
        ...(key.names.includes(ANY_CAPABILITY)
          ? { componentPrefixes: [[new TextEncoder().encode('capabilities')]] }
          : { componentPrefixes: key.names.map((n) => capabilityComponent(n)) }),
      })),
      allowedAlgs: this.#algs,
    };
  }

  #cap(name: string): Cap {
    let c = this.#caps.get(name);
    if (c === undefined) {
      c = { name, active: undefined, restoring: undefined, busy: false, unloaded: undefined };
      this.#caps.set(name, c);
    }
    return c;
  }

  #emit(e: CapabilityEvent): void {
    for (const fn of [this.#o.onEvent, ...this.#listeners]) {
      try {
        fn?.(e);
      } catch {
        // observers cannot break the manager
      }
    }
  }

  /** Adds an event listener (besides `onEvent`); returns its removal. */
  subscribe(fn: (e: CapabilityEvent) => void): () => void {
    this.#listeners.add(fn);
    return () => {
      this.#listeners.delete(fn);
    };
  }

  /** The device context modules are checked against (what a capability query sends). */
  get device(): DeviceContext {
    return this.#o.device;
  }

  /** The policy in force (size bounds a client applies before handing bytes over). */
  get policy(): CapabilityPolicy {
    return this.#policy;
  }

  // ---------------------------------------------------------------------------------------------------------
  // Boot

  async #boot(): Promise<void> {
    const revBytes = await this.#store.get(MODULE_REVOCATION_BLOB);
    if (revBytes !== undefined) {
      try {
        this.#revocation = verifyRevocationList(revBytes, {
          verifiers: this.#o.revocationAuthorities,
          allowedAlgs: this.#algs,
          now: this.#now(),
          allowExpired: true,
        });
      } catch {
        this.#revocation = undefined;
      }
    }
    const trustRev = await this.#store.get(TRUST_REVOCATION_BLOB);
    if (trustRev !== undefined) {
      try {
        this.#trustRevocation = verifyTrustRevocationList(trustRev, {
          verifiers: this.#o.revocationAuthorities,
          allowedAlgs: this.#algs,
          now: this.#now(),
          allowExpired: true,
        });
      } catch {
        this.#trustRevocation = undefined;
      }
    }
    const revoked = await this.#store.get(REVOKED_BLOB);
    if (revoked !== undefined) this.#revoked = decodeRevoked(revoked);
    for (const d of this.#revocation?.hexDigests ?? []) this.#revoked.add(d);
    for (const d of this.#trustRevocation?.digests() ?? []) this.#revoked.add(d);
    const idx = await this.#store.get(INDEX_BLOB);
    let index: Index = new Map();
    if (idx !== undefined) {
      try {
        index = decodeIndex(idx);
      } catch {
        index = new Map(); // unreadable index: no module starts (they are re-installed), the device runs on
      }
    }
    this.#index = index;
    // Start in dependency order: repeated passes over the capabilities whose dependencies are up.
    const pending = new Set([...index.keys()].filter((n) => index.get(n)?.active !== undefined));
    let progress = true;
    const changed = new Set<string>();
    while (pending.size > 0 && progress) {
      progress = false;
      for (const name of [...pending]) {
        const ic = index.get(name)!;
        const candidates = [ic.active!, ...ic.archives];
        for (const entry of candidates) {
          try {
            const v = await this.#verifyStored(name, entry);
            this.#checkDependencies(v.metadata);
            const l = await this.#start(v, entry);
            this.#cap(name).active = l;
            if (entry !== ic.active) {
              changed.add(name);
              ic.archives = ic.archives.filter((a) => a !== entry);
              ic.active = entry;
            }
            pending.delete(name);
            progress = true;
            break;
          } catch (e) {
            if (e instanceof DeviceError && e.code === 'CAP_DEPENDENCY' && entry === ic.active) break;
            if (entry === ic.active) this.#emitUnload(name, entry, 'verification');
          }
        }
      }
    }
    for (const name of pending) {
      const ic = index.get(name)!;
      if (ic.active !== undefined) this.#emitUnload(name, ic.active, 'verification');
      ic.active = undefined;
      changed.add(name);
    }
    // Archives are verified at boot too (signature under the manifest in force, revocation, seal, digest): one that
    // is tampered with, revoked or no longer authorized is dropped now, so a revert or rollback never meets it.
    for (const [name, ic] of index) {
      const keep: Entry[] = [];
      for (const a of ic.archives) {
        let why: string | undefined;
        if (this.#revoked.has(hexOf(a.digest))) why = 'CAP_REVOKED';
        else {
          try {
            await this.#verifyStored(name, a);
          } catch (e) {
            why = e instanceof DeviceError ? e.code : msgOf(e);
          }
        }
        if (why === undefined) keep.push(a);
        else {
          changed.add(name);
          this.#emit({ type: 'archive-dropped', name, version: formatModuleVersion(a.version), reason: why });
        }
      }
      ic.archives = keep;
    }
    // Drop blobs the index does not name (nothing else writes in this directory).
    const named = new Set([
      INDEX_BLOB,
      MANIFEST_BLOB,
      MODULE_REVOCATION_BLOB,
      TRUST_REVOCATION_BLOB,
      REVOKED_BLOB,
    ]);
    for (const c of index.values())
      for (const e of [c.active, ...c.archives]) if (e !== undefined) named.add(e.blob);
    const sweep = (await this.#store.names()).filter((n) => !named.has(n));
    if (changed.size > 0 || sweep.length > 0) {
      await this.#commit(() => new Map(sweep.map((n) => [n, null])));
    }
  }

  #emitUnload(
    name: string,
    entry: Entry,
    reason: 'request' | 'revoked' | 'unauthorized' | 'verification',
    running?: Verified,
  ): void {
    this.#emit({
      type: 'unloaded',
      name,
      version: formatModuleVersion(entry.version),
      reason,
      ...(running === undefined ? {} : { envelopeDigest: hexOf(running.envelope.digest.bytes) }),
    });
  }

  // ---------------------------------------------------------------------------------------------------------
  // Persistence: every change is one transaction that also rewrites the index (serialized).

  /**
   * Runs `mutate` on the index and commits its changes with the new index as one transaction. Large new blobs go in
   * `blobs`: each is first put atomically on its own (not yet named by any index, so a power cut leaves an orphan
   * that the next boot sweeps), which keeps megabytes out of the redo journal.
   */
  #commit(
    mutate: (index: Index) => Map<string, Uint8Array | null>,
    blobs?: ReadonlyMap<string, Uint8Array>,
  ): Promise<void> {
    const run = this.#commitTail.then(async () => {
      // Let pending messages (sandbox replies) through before the storage work starts.
      await new Promise((resolve) => setImmediate(resolve));
      for (const [name, data] of blobs ?? []) await this.#store.put(name, data);
      const before = cloneIndex(this.#index);
      const changes = mutate(this.#index);
      for (const [k, c] of [...this.#index])
        if (c.active === undefined && c.archives.length === 0) this.#index.delete(k);
      changes.set(INDEX_BLOB, encodeIndex(this.#index));
      try {
        await this.#store.transact(changes);
      } catch (e) {
        this.#index = before;
        throw e;
      }
    });
    this.#commitTail = run.catch(() => undefined);
    return run;
  }

  // ---------------------------------------------------------------------------------------------------------
  // Verification

  #mapSuit(e: unknown): DeviceError {
    if (isSuitError(e)) {
      if (e.code === 'SUIT_SIGNER_UNAUTHORIZED')
        return err('CAP_KEY_NOT_AUTHORIZED', `MF §9: ${e.message}`, e);
      if (
        e.code === 'SUIT_UNAUTHENTICATED' ||
        e.code === 'SUIT_AUTH_FAILED' ||
        e.code === 'SUIT_MISSING_PARTY'
      )
        return err('CAP_SIGNATURE', `MF §8.3: ${e.message}`, e);
    }
    return err('CAP_ENVELOPE_INVALID', `module envelope: ${msgOf(e)}`, e);
  }

  /** Steps 1–7 of the module comment: everything decidable from the signed manifest and metadata. */
  async #verifyManifestPart(bytes: Uint8Array): Promise<{
    envelope: SuitEnvelope;
    name: string;
    metadata: ModuleMetadata;
    digest: Uint8Array;
    sequence: bigint;
    moduleSize: number;
  }> {
    const p = this.#policy;
    if (bytes.length > p.maxEnvelopeBytes)
      throw err('CAP_TOO_LARGE', `envelope of ${bytes.length} bytes exceeds ${p.maxEnvelopeBytes}`);
    let envelope: SuitEnvelope;
    try {
      // The envelope is bounded by the policy above (step 1), not by the SUIT decoder's 1 MiB manifest default.
      envelope = (await authenticateEnvelope(bytes, this.#trustPolicy, { maxSize: p.maxEnvelopeBytes }))
        .envelope;
    } catch (e) {
      throw this.#mapSuit(e);
    }
    let info;
    try {
      info = moduleEnvelopeInfo(envelope, Number.MAX_SAFE_INTEGER);
    } catch (e) {
      if (isTrustError(e)) throw err('CAP_ENVELOPE_INVALID', e.message, e);
      throw e;
    }
    const { name, metadata: md, moduleDigest: digest } = info;
    if (info.moduleSize > p.maxModuleBytes)
      throw err('CAP_TOO_LARGE', `module of ${info.moduleSize} bytes exceeds ${p.maxModuleBytes}`);
    // Seed 000 §1: the capability manifest lists what the device may run.
    const why = capabilityAuthorization(this.#manifest, name, md.version, digest);
    if (why !== undefined) throw err('CAP_NOT_AUTHORIZED', `seed 000 §1 capability manifest: ${why}`);
    // Seed 000 step 7: revoked digests are never loaded.
    if (this.#revoked.has(hexOf(digest)))
      throw err('CAP_REVOKED', `seed 000 step 7: module ${hexOf(digest)} is revoked`);
    // Seed 000 step 3: compatibility with this device.
    const dev = this.#o.device;
    if (!md.deviceClasses.includes(dev.deviceClass))
      throw err(
        'CAP_INCOMPATIBLE',
        `device class ${dev.deviceClass} is not among ${md.deviceClasses.join(', ')}`,
      );
    if (!versionInRange(dev.firmwareVersion, md.firmware.min, md.firmware.max))
      throw err(
        'CAP_INCOMPATIBLE',
        `firmware ${formatModuleVersion(dev.firmwareVersion)} is outside the module's range ${formatModuleVersion(md.firmware.min)}..${md.firmware.max === undefined ? '' : formatModuleVersion(md.firmware.max)}`,
      );
    const l = md.limits;
    if (l.memoryPages > p.maxMemoryPages || l.callMs > p.maxCallMs || l.ioBytes > p.maxIoBytes)
      throw err(
        'CAP_OVER_LIMIT',
        `declared limits (${l.memoryPages} pages, ${l.callMs} ms, ${l.ioBytes} bytes) exceed the device policy (${p.maxMemoryPages}, ${p.maxCallMs}, ${p.maxIoBytes})`,
      );
    for (const imp of md.imports) {
      if (!HOST_BY_KEY.has(hostKey(imp.module, imp.name)))
        throw err('CAP_PERMISSION', `the device offers no host function ${hostKey(imp.module, imp.name)}`);
    }
    return {
      envelope,
      name,
      metadata: md,
      digest,
      sequence: info.sequenceNumber,
      moduleSize: info.moduleSize,
    };
  }

  /** Step 9: what the binary itself imports, exports and reserves. */
  async #compile(wasm: Uint8Array, md: ModuleMetadata): Promise<WebAssembly.Module> {
    let info;
    try {
      info = readWasmInfo(wasm);
    } catch (e) {
      if (e instanceof WasmFormatError) throw err('CAP_ABI', `WebAssembly binary: ${e.message}`, e);
      throw e;
    }
    const declared = new Set(md.imports.map((i) => hostKey(i.module, i.name)));
    for (const imp of info.imports) {
      const key = hostKey(imp.module, imp.name);
      // Issue 8: only the host functions the signed metadata declares.
      if (imp.kind !== 'func' || !declared.has(key))
        throw err(
          'CAP_UNDECLARED_IMPORT',
          `the module imports ${imp.kind} ${key}, which its metadata does not declare`,
        );
      const spec = HOST_BY_KEY.get(key)!;
      if (!sameFuncType(imp.type, spec))
        throw err('CAP_ABI', `import ${key} has another signature than the host function`);
    }
    if (info.memories.length !== 1) throw err('CAP_ABI', 'a module defines exactly one memory');
    const mem = info.memories[0]!;
    if (mem.max === undefined || mem.max > md.limits.memoryPages)
      throw err(
        'CAP_OVER_LIMIT',
        `memory maximum ${mem.max ?? 'unbounded'} pages exceeds the declared limit of ${md.limits.memoryPages}`,
      );
    for (const t of info.tables) {
      if (t.max === undefined || t.max > this.#policy.maxTableElements)
        throw err(
          'CAP_OVER_LIMIT',
          `table maximum ${t.max ?? 'unbounded'} exceeds ${this.#policy.maxTableElements}`,
        );
    }
    const want: [string, string[], string[]][] = [
      ['io_ptr', [], ['i32']],
      ['io_cap', [], ['i32']],
      ['process', ['i32'], ['i32']],
    ];
    for (const [n, params, results] of want) {
      const ex = info.exports.get(n);
      if (ex?.kind !== 'func' || !sameFuncType(ex.type, { params, results }))
        throw err(
          'CAP_ABI',
          `export ${n} must be a function (${params.join(',')}) -> (${results.join(',')})`,
        );
    }
    if (info.exports.get('memory')?.kind !== 'memory')
      throw err('CAP_ABI', 'the memory must be exported as memory');
    try {
      return await WebAssembly.compile(wasm);
    } catch (e) {
      throw err('CAP_COMPILE', `WebAssembly: ${msgOf(e)}`, e);
    }
  }

  /** Step 8: the SUIT update procedure over the module platform; returns the verified plaintext. */
  async #decrypt(
    envelope: SuitEnvelope,
    name: string,
    payloads: ReadonlyMap<string, Uint8Array>,
    installedSequence: bigint | undefined,
  ): Promise<Uint8Array> {
    const platform = new ModulePlatform({
      name,
      vendorDomain: this.#o.device.vendorDomain,
      keys: this.#o.keys,
      payloads,
      installedSequence,
      now: this.#now(),
    });
    const r = await processEnvelope(envelope, 'update', {
      platform,
      manifestKey: capabilityComponent(name),
      validateAfterInstall: false,
      requireIdentityChecks: true,
    });
    if (!r.ok) {
      const e = r.error;
      if (e?.code === 'SUIT_ROLLBACK') throw err('CAP_ROLLBACK', `MF §8.4.2: ${e.message}`, e);
      if (platform.decryptError !== undefined)
        throw err('CAP_DECRYPT', `ENC §4: ${msgOf(platform.decryptError)}`, platform.decryptError);
      if (e?.code === 'SUIT_CONDITION_FAILED') throw err('CAP_DIGEST', `MF §8.4.9: ${e.message}`, e);
      throw err('CAP_ENVELOPE_INVALID', `SUIT processing: ${e?.message ?? 'failed'}`, e);
    }
    const wasm = platform.contents(capabilityComponent(name));
    if (wasm === undefined) throw err('CAP_ENVELOPE_INVALID', 'the update procedure installed no module');
    return wasm;
  }

  /** Full verification of a received envelope (install) — steps 1–9. */
  async #verifyEnvelope(
    bytes: Uint8Array,
    payloads: ReadonlyMap<string, Uint8Array>,
    installedSequence: (name: string) => bigint | undefined,
  ): Promise<Verified> {
    const part = await this.#verifyManifestPart(bytes);
    const wasm = await this.#decrypt(part.envelope, part.name, payloads, installedSequence(part.name));
    const module = await this.#compile(wasm, part.metadata);
    return {
      name: part.name,
      metadata: part.metadata,
      digest: part.digest,
      digestHex: hexOf(part.digest),
      sequence: part.sequence,
      wasm,
      module,
      envelope: part.envelope,
    };
  }

  /** Verification of a stored record (boot, rollback, revert): storage is not trusted. */
  async #verifyStored(name: string, entry: Entry): Promise<Verified> {
    const bytes = await this.#store.get(entry.blob);
    if (bytes === undefined) throw err('STORAGE_CORRUPT', `record ${entry.blob} is missing`);
    if (entry.kind === 'envelope') {
      const rec = decodeEnvelopeRecord(bytes);
      const v = await this.#verifyEnvelope(rec.envelope, rec.payloads, () => undefined);
      if (v.name !== name || v.digestHex !== hexOf(entry.digest))
        throw err('STORAGE_CORRUPT', 'record mismatch');
      return v;
    }
    const rec = decodeArchiveRecord(bytes);
    const part = await this.#verifyManifestPart(rec.envelope);
    if (part.name !== name || hexOf(part.digest) !== hexOf(entry.digest))
      throw err('STORAGE_CORRUPT', 'archive does not match its index entry');
    // Sealed archives (seal.ts): with a sealer configured only a sealed archive is accepted, and it must open on
    // this device as exactly this module (name, digest, sequence); a tampered one is refused (SEAL_FAILED).
    const sealer = this.#o.sealer;
    let deflated: Uint8Array;
    if (rec.sealed !== undefined) {
      if (sealer === undefined) throw err('SEAL_FAILED', 'a sealed archive and no sealer to open it');
      deflated = await openArchive(
        sealer,
        { name, digest: part.digest, sequence: part.sequence },
        rec.sealed,
      );
    } else {
      if (sealer !== undefined) throw err('SEAL_FAILED', 'archive is not sealed');
      deflated = rec.deflated;
    }
    let wasm: Uint8Array;
    try {
      wasm = new Uint8Array(inflateRawSync(deflated, { maxOutputLength: part.moduleSize }));
    } catch (e) {
      throw err('CAP_DIGEST', `archive does not inflate within ${part.moduleSize} bytes`, e);
    }
    // MF §8.4.9.2: the archived plaintext must match the signed image-digest.
    if (wasm.length !== part.moduleSize || hexOf(sha256(wasm)) !== hexOf(part.digest))
      throw err('CAP_DIGEST', 'archived module does not match its signed image-digest');
    const module = await this.#compile(wasm, part.metadata);
    return { ...part, digestHex: hexOf(part.digest), wasm, module };
  }

  #checkDependencies(md: ModuleMetadata, replacing?: string): void {
    for (const d of md.dependencies) {
      const a = this.#caps.get(d.name)?.active;
      if (a === undefined || !versionInRange(a.metadata.version, d.min, d.max))
        throw err(
          'CAP_DEPENDENCY',
          `${md.name} needs ${d.name} ${formatModuleVersion(d.min)}..${d.max === undefined ? '' : formatModuleVersion(d.max)}, active: ${a === undefined ? 'none' : formatModuleVersion(a.metadata.version)}`,
        );
    }
    if (replacing === undefined) return;
    for (const c of this.#caps.values()) {
      const dep = c.active?.metadata.dependencies.find((d) => d.name === replacing);
      if (dep !== undefined && !versionInRange(md.version, dep.min, dep.max))
        throw err(
          'CAP_DEPENDENCY',
          `${c.name} needs ${replacing} ${formatModuleVersion(dep.min)}..${dep.max === undefined ? '' : formatModuleVersion(dep.max)}; ${formatModuleVersion(md.version)} would break it`,
        );
    }
  }

  /** Step 10: a sandbox with the module instantiated and its health check passed. */
  async #start(v: Verified, entry: Entry): Promise<Loaded> {
    let sandbox: Sandbox;
    try {
      sandbox = await this.#pool.acquire();
    } catch (e) {
      throw err('CAP_HEALTH', `no sandbox could be started: ${msgOf(e)}`, e);
    }
    const md = v.metadata;
    sandbox.onLog = (line) => this.#o.onLog?.(v.name, line);
    try {
      const { ioCap } = await sandbox.load({
        module: v.module,
        imports: md.imports.map((i) => hostKey(i.module, i.name)),
        ioBytes: md.limits.ioBytes,
        selfTest: md.selfTest,
        callMs: md.limits.callMs,
        loadMs: this.#policy.loadMs,
      });
      const l: Loaded = { ...v, sandbox, ioCap, entry, inflight: 0, state: 'active' };
      sandbox.onFault = (f) => {
        this.#onFault(l, f);
      };
      return l;
    } catch (e) {
      void this.#pool.release(sandbox);
      throw err('CAP_HEALTH', `instantiation or health check failed: ${msgOf(e)}`, e);
    }
  }

  // ---------------------------------------------------------------------------------------------------------
  // Install / swap

  /**
   * Installs a module envelope (the capability is added or hot-swapped). `payloads` supplies detached ciphertexts
   * by URI when the envelope does not integrate its module.
   */
  async install(
    envelope: Uint8Array,
    opts: { payloads?: ReadonlyMap<string, Uint8Array> } = {},
  ): Promise<InstallResult> {
    this.#alive();
    const t0 = performance.now();
    const payloads = opts.payloads ?? new Map<string, Uint8Array>();
    let total = envelope.length;
    for (const p of payloads.values()) total += p.length;
    if (total > this.#policy.maxEnvelopeBytes + this.#policy.maxModuleBytes + 64)
      throw err('CAP_TOO_LARGE', `${total} bytes of envelope and payloads`);
    if (this.#policy.requireFreshRevocationList) {
      const now = this.#now();
      const fresh =
        (this.#revocation !== undefined && now < this.#revocation.expiresAt) ||
        (this.#trustRevocation !== undefined && !this.#trustRevocation.expired(now));
      if (!fresh) throw err('CAP_REVOCATION_STALE', 'seed 000 step 7: no unexpired revocation list in force');
    }
    const part = await this.#verifyManifestPart(envelope);
    const t1 = performance.now();
    const cap = this.#cap(part.name);
    if (cap.busy) throw err('CAP_BUSY', `capability ${part.name} is being changed`);
    cap.busy = true;
    try {
      this.#checkDependencies(part.metadata, part.name);
      const installedSeq = cap.active?.sequence ?? this.#index.get(part.name)?.active?.sequence;
      const wasm = await this.#decrypt(part.envelope, part.name, payloads, installedSeq);
      const t2 = performance.now();
      const module = await this.#compile(wasm, part.metadata);
      const t3 = performance.now();
      const v: Verified = {
        name: part.name,
        metadata: part.metadata,
        digest: part.digest,
        digestHex: hexOf(part.digest),
        sequence: part.sequence,
        wasm,
        module,
        envelope: part.envelope,
      };
      const entry: Entry = {
        blob: blobName('envelope', v.digest, v.sequence, v.name),
        kind: 'envelope',
        sequence: v.sequence,
        digest: v.digest,
        version: v.metadata.version,
      };
      // Only a detached payload the manifest fetches is kept with the record.
      const kept = new Map([...payloads].filter(([uri]) => uri !== MODULE_URI));
      const loaded = await this.#start(v, entry);
      const t4 = performance.now();
      // Switch (one assignment): from here every new call goes to the new version. The old one is not retired yet:
      // its calls in flight finish on it, and it stays ready to be switched back to until the commit is durable.
      const old = cap.active;
      cap.active = loaded;
      cap.unloaded = undefined;
      try {
        await this.#commit(
          (index) => {
            const ic = index.get(v.name) ?? { active: undefined, archives: [] };
            index.set(v.name, ic);
            const changes = new Map<string, Uint8Array | null>();
            if (ic.active !== undefined && ic.active.blob !== entry.blob) ic.archives.unshift(ic.active);
            ic.active = entry;
            ic.archives = ic.archives.filter((a) => a.blob !== entry.blob);
            for (const dropped of ic.archives.splice(this.#policy.keepArchives))
              changes.set(dropped.blob, null);
            return changes;
          },
          new Map([[entry.blob, encodeEnvelopeRecord(envelope, kept)]]),
        );
      } catch (e) {
        // Not durable: switch back (after a power cut the device reboots into the old version anyway).
        if (cap.active === loaded) cap.active = old?.state === 'active' ? old : undefined;
        this.#retire(loaded);
        throw e;
      }
      // Durable: retire the old version (disposed when its last call returns) and archive it.
      if (old !== undefined) {
        this.#retire(old);
        this.#track(this.#archive(old));
      }
      this.#emit({
        type: 'installed',
        name: v.name,
        version: formatModuleVersion(v.metadata.version),
        ...(old === undefined ? {} : { replaced: formatModuleVersion(old.metadata.version) }),
        envelopeDigest: hexOf(v.envelope.digest.bytes),
      });
      return {
        ...this.#statusOf(v.name),
        timings: {
          verifyMs: t1 - t0,
          decryptMs: t2 - t1,
          compileMs: t3 - t2,
          startMs: t4 - t3,
          commitMs: performance.now() - t4,
        },
      };
    } finally {
      cap.busy = false;
    }
  }

  #track(p: Promise<unknown>): void {
    const q = p.catch(() => undefined);
    this.#background.add(q);
    void q.finally(() => this.#background.delete(q));
  }

  /** Waits for background work (archiving) to finish. */
  async settle(): Promise<void> {
    while (this.#background.size > 0) await Promise.all([...this.#background]);
    await this.#commitTail;
  }

  #retire(v: Loaded): void {
    if (v.state !== 'active') return;
    v.state = 'retiring';
    if (v.inflight === 0) this.#dispose(v);
  }

  #dispose(v: Loaded): void {
    if (v.state === 'stopped') return;
    v.state = 'stopped';
    void this.#pool.release(v.sandbox);
  }

  /** Replaces a retired version's encrypted record by an archive (signed envelope without ciphertext + deflate). */
  async #archive(v: Loaded): Promise<void> {
    const ic = this.#index.get(v.name);
    if (ic?.archives.some((a) => a.blob === v.entry.blob) !== true || v.entry.kind !== 'envelope') return;
    const integrated = new Map([...v.envelope.integrated].filter(([k]) => k !== MODULE_URI));
    const stripped = encodeEnvelope({
      manifest: v.envelope.manifest.bytes,
      digestBytes: v.envelope.digestBytes,
      authBlocks: v.envelope.authBlocks,
      members: v.envelope.members ?? new Map(),
      integrated,
      tagged: v.envelope.tagged,
    });
    const deflated = new Uint8Array(await deflateRawAsync(v.wasm, { level: 6 }));
    const sealer = this.#o.sealer;
    const record =
      sealer === undefined
        ? encodeArchiveRecord(stripped, deflated)
        : encodeSealedArchiveRecord(
            stripped,
            await sealArchive(sealer, { name: v.name, digest: v.digest, sequence: v.sequence }, deflated),
          );
    const entry: Entry = {
      ...v.entry,
      kind: 'archive',
      blob: blobName('archive', v.digest, v.sequence, v.name),
    };
    const outcome = { done: false };
    await this.#commit(
      (index) => {
        const c = index.get(v.name);
        const i = c?.archives.findIndex((a) => a.blob === v.entry.blob) ?? -1;
        // The retired version was dropped meanwhile (revoked, trimmed): its fresh archive goes too.
        if (c === undefined || i < 0) return new Map([[entry.blob, null]]);
        c.archives[i] = entry;
        outcome.done = true;
        return new Map<string, Uint8Array | null>([[v.entry.blob, null]]);
      },
      new Map([[entry.blob, record]]),
    );
    if (outcome.done)
      this.#emit({
        type: 'archived',
        name: v.name,
        version: formatModuleVersion(v.metadata.version),
        bytes: record.length,
      });
  }

  // ---------------------------------------------------------------------------------------------------------
  // Calls

  /** Calls a capability. The version that answers is in the result. */
  async call(name: string, input: Uint8Array): Promise<CallResult> {
    this.#alive();
    for (let attempt = 0; attempt < 4; attempt++) {
      const cap = this.#caps.get(name);
      if (cap?.active === undefined && cap?.restoring !== undefined) await cap.restoring;
      const v = cap?.active;
      if (v === undefined) throw err(cap?.unloaded ?? 'CAP_NOT_LOADED', `no active module for ${name}`);
      if (input.length > v.ioCap)
        throw err('CAP_INPUT_TOO_LARGE', `input of ${input.length} bytes exceeds ${v.ioCap} for ${name}`);
      v.inflight++;
      try {
        const output = await v.sandbox.call(input);
        return { output, version: v.metadata.version, digest: v.digestHex, sequence: v.sequence };
      } catch (e) {
        if (!(e instanceof SandboxCallError)) throw e;
        if (e.kind === 'aborted') continue; // not run: re-dispatched to the version now active
        if (e.kind === 'status') throw err('CAP_MODULE_ERROR', `${name} answered status ${e.status ?? 0}`);
        throw err(
          e.kind === 'trap' ? 'CAP_TRAPPED' : e.kind === 'timeout' ? 'CAP_TIMEOUT' : 'CAP_CRASHED',
          `${name} ${formatModuleVersion(v.metadata.version)}: ${e.message}; rolled back`,
        );
      } finally {
        v.inflight--;
        if (v.state === 'retiring' && v.inflight === 0) this.#dispose(v);
      }
    }
    throw err('CAP_NOT_LOADED', `no module for ${name} could take the call`);
  }

  // ---------------------------------------------------------------------------------------------------------
  // Faults and rollback

  #onFault(v: Loaded, f: SandboxFault): void {
    this.#emit({
      type: 'fault',
      name: v.name,
      version: formatModuleVersion(v.metadata.version),
      kind: f.kind,
      message: f.message,
      memoryBytes: f.memoryBytes,
    });
    const wasActive = v.state === 'active';
    v.state = 'stopped';
    void this.#pool.release(v.sandbox);
    const cap = this.#caps.get(v.name);
    if (!wasActive || cap?.active !== v || this.#closed) return;
    cap.active = undefined;
    const restoring = this.#rollback(cap, v).finally(() => {
      if (cap.restoring === restoring) cap.restoring = undefined;
    });
    cap.restoring = restoring;
    this.#track(restoring);
  }

  async #rollback(cap: Cap, failed: Loaded): Promise<void> {
    const ic = this.#index.get(cap.name);
    for (const entry of [...(ic?.archives ?? [])]) {
      if (this.#revoked.has(hexOf(entry.digest))) continue;
      let l: Loaded;
      try {
        const v = await this.#verifyStored(cap.name, entry);
        l = await this.#start(v, entry);
      } catch {
        continue;
      }
      try {
        await this.#commit((index) => {
          const c = index.get(cap.name);
          if (c === undefined) return new Map();
          const changes = new Map<string, Uint8Array | null>();
          if (c.active?.blob === failed.entry.blob) changes.set(failed.entry.blob, null);
          c.active = entry;
          c.archives = c.archives.filter((a) => a.blob !== entry.blob);
          return changes;
        });
      } catch {
        void this.#pool.release(l.sandbox);
        return;
      }
      if (cap.active === undefined) cap.active = l;
      else void this.#pool.release(l.sandbox);
      this.#emit({
        type: 'rolled-back',
        name: cap.name,
        from: formatModuleVersion(failed.metadata.version),
        to: formatModuleVersion(entry.version),
        fromEnvelopeDigest: hexOf(failed.envelope.digest.bytes),
      });
      return;
    }
    await this.#commit((index) => {
      const c = index.get(cap.name);
      if (c?.active?.blob !== failed.entry.blob) return new Map();
      c.active = undefined;
      return new Map([[failed.entry.blob, null]]);
    });
    this.#emit({
      type: 'rolled-back',
      name: cap.name,
      from: formatModuleVersion(failed.metadata.version),
      to: undefined,
      fromEnvelopeDigest: hexOf(failed.envelope.digest.bytes),
    });
  }

  // ---------------------------------------------------------------------------------------------------------
  // Revert, unload, revocation, capability-manifest updates

  /** Swaps back to the newest archived version (no download: the archive is re-verified and started). */
  async revert(name: string): Promise<ModuleStatus> {
    this.#alive();
    const cap = this.#cap(name);
    if (cap.busy || cap.restoring !== undefined) throw err('CAP_BUSY', `capability ${name} is being changed`);
    cap.busy = true;
    try {
      const entry = this.#index.get(name)?.archives[0];
      if (entry === undefined) throw err('CAP_NOT_LOADED', `no archived version of ${name}`);
      if (this.#revoked.has(hexOf(entry.digest))) throw err('CAP_REVOKED', 'the archived version is revoked');
      const v = await this.#verifyStored(name, entry);
      this.#checkDependencies(v.metadata, name);
      const l = await this.#start(v, entry);
      const old = cap.active;
      try {
        await this.#commit((index) => {
          const c = index.get(name)!;
          c.archives = c.archives.filter((a) => a.blob !== entry.blob);
          if (c.active !== undefined) c.archives.unshift(c.active);
          c.active = entry;
          const changes = new Map<string, Uint8Array | null>();
          for (const dropped of c.archives.splice(this.#policy.keepArchives)) changes.set(dropped.blob, null);
          return changes;
        });
      } catch (e) {
        void this.#pool.release(l.sandbox);
        throw e;
      }
      cap.active = l;
      if (old !== undefined) {
        this.#retire(old);
        this.#track(this.#archive(old));
      }
      this.#emit({
        type: 'installed',
        name,
        version: formatModuleVersion(v.metadata.version),
        ...(old === undefined ? {} : { replaced: formatModuleVersion(old.metadata.version) }),
        envelopeDigest: hexOf(v.envelope.digest.bytes),
      });
      return this.#statusOf(name);
    } finally {
      cap.busy = false;
    }
  }

  /** Unloads a capability on request: in-flight calls finish, its records and archives are removed. */
  async unload(name: string): Promise<void> {
    this.#alive();
    const cap = this.#caps.get(name);
    const v = cap?.active;
    if (cap === undefined || v === undefined) throw err('CAP_NOT_LOADED', `no active module for ${name}`);
    if (cap.busy) throw err('CAP_BUSY', `capability ${name} is being changed`);
    for (const c of this.#caps.values()) {
      if (c.active?.metadata.dependencies.some((d) => d.name === name) === true)
        throw err('CAP_DEPENDED_ON', `${c.name} depends on ${name}`);
    }
    cap.busy = true;
    try {
      await this.#commit((index) => this.#removeAll(index, name));
      cap.active = undefined;
      cap.unloaded = 'CAP_NOT_LOADED';
      this.#retire(v);
      this.#emitUnload(name, v.entry, 'request', v);
    } finally {
      cap.busy = false;
    }
  }

  #removeAll(index: Index, name: string, only?: (e: Entry) => boolean): Map<string, Uint8Array | null> {
    const changes = new Map<string, Uint8Array | null>();
    const c = index.get(name);
    if (c === undefined) return changes;
    const drop = only ?? (() => true);
    if (c.active !== undefined && drop(c.active)) {
      changes.set(c.active.blob, null);
      c.active = undefined;
    }
    c.archives = c.archives.filter((a) => {
      if (!drop(a)) return true;
      changes.set(a.blob, null);
      return false;
    });
    return changes;
  }

  /** Stops a version at once: its queued calls fail with `code`. */
  #stopNow(cap: Cap, code: DeviceErrorCode): Loaded | undefined {
    const v = cap.active;
    if (v === undefined) return undefined;
    cap.active = undefined;
    cap.unloaded = code;
    v.state = 'stopped';
    void v.sandbox.terminate();
    return v;
  }

  /**
   * A new revocation list (seed 000 step 7): verified (signature, newer version, not expired), then every active
   * module it names is unloaded at once and every record of a revoked digest deleted; the digests are remembered
   * for good, so they are never loaded again.
   */
  async applyRevocationList(bytes: Uint8Array): Promise<{ unloaded: string[] }> {
    this.#alive();
    // Two list formats are accepted, told apart by their protected content type (RFC 9052 §3.1): the module list
    // (capability-revocation.ts) and the general trust revocation list (revocation.ts), whose digest entries
    // (kind 3) are module digests. Each has its own version counter.
    let general = false;
    try {
      general =
        decodeSign1(bytes, { tag: 'required', maxSize: TRUST_REVOCATION_MAX_BYTES }).protectedHeaders.get(
          3,
        ) === TRUST_REVOCATION_CONTENT_TYPE;
    } catch {
      general = false; // the module-list verifier below reports the malformation
    }
    let digests: ReadonlySet<string>;
    let commitList: () => void;
    try {
      const opts = { verifiers: this.#o.revocationAuthorities, allowedAlgs: this.#algs, now: this.#now() };
      if (general) {
        const current = this.#trustRevocation;
        const list = verifyTrustRevocationList(bytes, {
          ...opts,
          ...(current === undefined ? {} : { currentVersion: current.version }),
        });
        digests = list.digests();
        commitList = () => {
          this.#trustRevocation = list;
        };
      } else {
        const current = this.#revocation;
        const list = verifyRevocationList(bytes, {
          ...opts,
          ...(current === undefined ? {} : { currentVersion: current.version }),
        });
        digests = list.hexDigests;
        commitList = () => {
          this.#revocation = list;
        };
      }
    } catch (e) {
      throw err('CAP_REVOCATION_REJECTED', `revocation list refused: ${msgOf(e)}`, e);
    }
    const unloaded: Loaded[] = [];
    for (const cap of this.#caps.values()) {
      if (cap.active !== undefined && digests.has(cap.active.digestHex)) {
        const v = this.#stopNow(cap, 'CAP_REVOKED');
        if (v !== undefined) unloaded.push(v);
      }
    }
    const union = new Set(this.#revoked);
    for (const d of digests) union.add(d);
    await this.#commit((index) => {
      const changes = new Map<string, Uint8Array | null>([
        [general ? TRUST_REVOCATION_BLOB : MODULE_REVOCATION_BLOB, bytes],
        [REVOKED_BLOB, encodeRevoked(union)],
      ]);
      for (const name of index.keys())
        for (const [k, c] of this.#removeAll(index, name, (e) => union.has(hexOf(e.digest))))
          changes.set(k, c);
      return changes;
    });
    commitList();
    this.#revoked = union;
    for (const v of unloaded) this.#emitUnload(v.name, v.entry, 'revoked', v);
    return { unloaded: unloaded.map((v) => v.name) };
  }

  /**
   * A new capability manifest (seed 000 §1 "can be updated"): verified against the provisioned authorities and
   * newer than the current one; active modules it no longer authorizes (name, version, digest or signing key) are
   * unloaded at once.
   */
  async updateCapabilityManifest(bytes: Uint8Array): Promise<{ unloaded: string[] }> {
    this.#alive();
    let m: CapabilityManifest;
    try {
      m = verifyCapabilityManifest(bytes, {
        verifiers: this.#o.manifestAuthorities,
        allowedAlgs: this.#algs,
        currentVersion: this.#manifest.version,
      });
    } catch (e) {
      throw err('CAP_MANIFEST_REJECTED', `capability manifest refused: ${msgOf(e)}`, e);
    }
    const policy = this.#policyOf(m);
    const stop: Cap[] = [];
    for (const cap of this.#caps.values()) {
      const v = cap.active;
      if (v === undefined) continue;
      let ok = capabilityAuthorization(m, v.name, v.metadata.version, v.digest) === undefined;
      if (ok) {
        try {
          await authenticateEnvelope(v.envelope.bytes, policy, { maxSize: this.#policy.maxEnvelopeBytes });
        } catch {
          ok = false;
        }
      }
      if (!ok) stop.push(cap);
    }
    const unloaded: Loaded[] = [];
    for (const cap of stop) {
      const v = this.#stopNow(cap, 'CAP_NOT_AUTHORIZED');
      if (v !== undefined) unloaded.push(v);
    }
    await this.#commit((index) => {
      const changes = new Map<string, Uint8Array | null>([[MANIFEST_BLOB, bytes]]);
      for (const v of unloaded) {
        const c = index.get(v.name);
        if (c?.active?.blob === v.entry.blob) {
          changes.set(v.entry.blob, null);
          c.active = undefined;
        }
      }
      return changes;
    });
    this.#manifest = m;
    this.#trustPolicy = policy;
    for (const v of unloaded) this.#emitUnload(v.name, v.entry, 'unauthorized', v);
    return { unloaded: unloaded.map((v) => v.name) };
  }

  // ---------------------------------------------------------------------------------------------------------
  // Status and shutdown

  #statusOf(name: string): ModuleStatus {
    const v = this.#caps.get(name)?.active;
    if (v === undefined) throw err('CAP_NOT_LOADED', `no active module for ${name}`);
    return {
      name,
      version: formatModuleVersion(v.metadata.version),
      digest: v.digestHex,
      sequence: v.sequence,
      archives: (this.#index.get(name)?.archives ?? []).map((a) => ({
        version: formatModuleVersion(a.version),
        digest: hexOf(a.digest),
        sequence: a.sequence,
      })),
    };
  }

  /** The active modules. */
  status(): ModuleStatus[] {
    return [...this.#caps.values()].filter((c) => c.active !== undefined).map((c) => this.#statusOf(c.name));
  }

  get capabilityManifestVersion(): number {
    return this.#manifest.version;
  }

  get revocationListVersion(): number | undefined {
    return this.#revocation?.version;
  }

  /** Version of the general trust revocation list in force, if any. */
  get trustRevocationListVersion(): number | undefined {
    return this.#trustRevocation?.version;
  }

  #alive(): void {
    if (this.#closed) throw err('CLOSED', 'the capability manager is closed');
  }

  /** Stops every sandbox (no storage access: safe after a power cut). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const all: Promise<void>[] = [];
    for (const c of this.#caps.values()) {
      const v = c.active;
      c.active = undefined;
      if (v !== undefined) {
        v.state = 'stopped';
        all.push(this.#ownPool ? v.sandbox.terminate() : this.#pool.release(v.sandbox));
      }
    }
    await Promise.all(all);
    await Promise.all([...this.#background]);
    if (this.#ownPool) await this.#pool.close();
  }
}

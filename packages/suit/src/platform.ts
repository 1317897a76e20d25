/**
 * The Platform: everything the SUIT manifest processor (processor.ts) needs from the device it runs on.
 *
 * The abstract machine of draft-ietf-suit-manifest-34 §6.4 operates on components (units of storage, addressed by
 * SUIT_Component_Identifier, MF §8.4.5.1), asks the Recipient for its identity and properties (conditions, MF
 * §8.4.9 and update-management), and performs side effects (directives, MF §8.4.10). The processor never touches
 * storage, network, clocks or keys itself: it goes through this interface. Implementations:
 *  - the device agent (real slots / flash / key store),
 *  - a server-side dry run and the tests: `MemoryPlatform` below.
 *
 * Conventions: component identifiers are passed as received (arrays of byte strings); `slot` is the value of
 * suit-parameter-component-slot (MF §8.4.8.8) for the component when the manifest set one, else undefined.
 * Every method may throw; the processor turns a throw into a directive failure (SUIT_OPERATION_FAILED) or a
 * condition failure, and records it.
 */
import { SuitError } from './errors.ts';
import type { ComponentId } from './model.ts';

/** A vendor identifier as the Recipient knows it: a 16-byte UUID, or a CBOR PEN (relative OID bytes). */
export interface PlatformVendorId {
  readonly bytes: Uint8Array;
  /** True when `bytes` is the content of a tag-112 relative OID (Private Enterprise Number). */
  readonly pen: boolean;
}

export interface FetchRequest {
  /** The component the fetched bytes will be stored in. */
  readonly component: ComponentId;
  /** suit-parameter-fetch-arguments (MF §8.4.8.13), when set. */
  readonly fetchArguments: Uint8Array | undefined;
  /** suit-parameter-image-size (MF §8.4.8.7), when set: an upper bound hint for the transfer. */
  readonly expectedSize: bigint | undefined;
}

export interface DecryptRequest {
  /** The component the plaintext will be written to. */
  readonly component: ComponentId;
}

/**
 * The device interface of the manifest processor. Async wherever a real device would do I/O.
 */
export interface Platform {
  // ---- Capabilities (MF §6.2 Required Checks) -------------------------------------------------------------
  /** Most components the Recipient supports in one manifest (MF §6.2: the component count must not exceed it). */
  readonly maxComponents: number;
  /** Whether the Recipient has (or can create) this component. Unsupported components fail setup. */
  supportsComponent(component: ComponentId): boolean;

  // ---- Component storage ----------------------------------------------------------------------------------
  /** Contents of a component (in `slot`, when given), or undefined when the component/slot is empty. */
  read(component: ComponentId, slot?: number): Promise<Uint8Array | undefined>;
  /** Replaces the contents of a component (in `slot`, when given). */
  write(component: ComponentId, data: Uint8Array, slot?: number): Promise<void>;
  /**
   * Optional fast path: the digest of a component's contents with COSE hash algorithm `alg` (e.g. hashing flash in
   * place). When absent the processor reads the component and hashes it itself.
   */
  digest?(component: ComponentId, alg: number, slot?: number): Promise<Uint8Array | undefined>;
  /**
   * Optional fast path: the size in bytes of a component's contents (in `slot`, when given), or undefined when
   * the platform cannot tell. Together with digest() it lets image-match (MF §8.4.9.3: digest and image-size)
   * run without reading the image — a streaming Recipient never holds a whole image in memory. When absent, or
   * when it answers undefined, the processor reads the component instead.
   */
  size?(component: ComponentId, slot?: number): Promise<bigint | undefined>;
  /** Exchanges the contents of two components (MF §8.4.10.7 swap). */
  swap(a: ComponentId, b: ComponentId): Promise<void>;
  /** Decrements the component's reference count / removes it (TD suit-directive-unlink). */
  unlink(component: ComponentId): Promise<void>;

  // ---- Directives with external effects ------------------------------------------------------------------
  /** Retrieves the resource at `uri` (MF §8.4.10.4 fetch). Integrated payloads never reach this method. */
  fetch(uri: string, request: FetchRequest): Promise<Uint8Array>;
  /** Transfers execution to a component (MF §8.4.10.6 invoke) with suit-parameter-invoke-args, when set. */
  invoke(component: ComponentId, args: Uint8Array | undefined): Promise<void>;
  /**
   * Decrypts `ciphertext` with the SUIT_Encryption_Info `encryptionInfo` (the COSE_Encrypt / COSE_Encrypt0 bytes,
   * draft-ietf-suit-firmware-encryption §4). The content-encryption key is unwrapped with keys that never leave
   * the device's key store. Throws when it cannot decrypt.
   */
  decrypt(encryptionInfo: Uint8Array, ciphertext: Uint8Array, request: DecryptRequest): Promise<Uint8Array>;
  /**
   * Blocks until the wait events (update-management suit-parameter-wait-info, event code → value) are satisfied.
   * Returns false when they cannot be (the wait directive then fails).
   */
  waitFor(events: ReadonlyMap<number, unknown>, component: ComponentId): Promise<boolean>;

  // ---- Identity and properties (conditions) ---------------------------------------------------------------
  /** Vendor identifiers the Recipient matches for this component (MF §8.4.9.1: any number may match). */
  vendorIds(component: ComponentId): readonly PlatformVendorId[];
  /** Class identifiers (16-byte UUIDs) the Recipient matches for this component. */
  classIds(component: ComponentId): readonly Uint8Array[];
  /** Device identifiers (16-byte UUIDs) of this Recipient. */
  deviceIds(component: ComponentId): readonly Uint8Array[];
  /** Slot index the Recipient offers for this component (MF §8.4.9.5 component-slot), or undefined. */
  componentSlot(component: ComponentId): Promise<number | undefined>;
  /** Installed version of the component as SUIT version integers (UM version condition), or undefined. */
  componentVersion(component: ComponentId): Promise<readonly number[] | undefined>;
  /** Available battery energy in mWh (UM minimum-battery condition). */
  batteryMwh(): Promise<bigint>;
  /** Current UTC time in seconds since 1970 (UM use-before condition, evaluated in 64 bits). */
  now(): bigint;
  /** Whether the application authorizes an update of this priority now (UM update-authorized condition). */
  isUpdateAuthorized(priority: bigint, component: ComponentId): Promise<boolean>;

  // ---- Anti-rollback store (MF §8.4.2, RFC 9124 REQ.SEC.SEQUENCE) -----------------------------------------
  /** The sequence number of the manifest last installed under this manifest component id, if any. */
  getSequenceNumber(manifestId: ComponentId): Promise<bigint | undefined>;
  /** Records a successfully installed manifest's sequence number (persisted across restarts). */
  setSequenceNumber(manifestId: ComponentId, sequenceNumber: bigint): Promise<void>;
}

/** A printable, collision-free key for a component identifier (hex of each element, '/'-separated). */
export function componentKey(component: ComponentId): string {
  return `[${component.map((b) => Buffer.from(b).toString('hex')).join('/')}]`;
}

/** A component identifier from strings (UTF-8) or bytes, for tests and configuration. */
export function componentId(...parts: (string | Uint8Array)[]): ComponentId {
  return parts.map((p) => (typeof p === 'string' ? new TextEncoder().encode(p) : p));
}

export interface MemoryPlatformOptions {
  readonly maxComponents?: number;
  /** Component identifiers the platform supports; undefined = any. */
  readonly components?: readonly ComponentId[];
  readonly vendorIds?: readonly PlatformVendorId[];
  readonly classIds?: readonly Uint8Array[];
  readonly deviceIds?: readonly Uint8Array[];
  /** Resources served by `fetch`, by URI. */
  readonly resources?: ReadonlyMap<string, Uint8Array> | Readonly<Record<string, Uint8Array>>;
  /** Initial component contents, by `componentKey(id)` (+ `#slot` for a slot). */
  readonly storage?: ReadonlyMap<string, Uint8Array>;
  /** Offered slot per `componentKey(id)`. */
  readonly slots?: ReadonlyMap<string, number>;
  /** Installed version per `componentKey(id)`. */
  readonly versions?: ReadonlyMap<string, readonly number[]>;
  readonly batteryMwh?: bigint;
  readonly now?: bigint;
  /** Highest update priority (smaller = more urgent) authorized now; undefined = all authorized. */
  readonly authorizedPriority?: bigint;
  /** Answer of waitFor (default true). */
  readonly waitResult?: boolean;
  /** Decryption hook (the device layer implements it with the COSE layer). Default: refuses. */
  readonly decrypt?: (
    encryptionInfo: Uint8Array,
    ciphertext: Uint8Array,
    request: DecryptRequest,
  ) => Promise<Uint8Array>;
  /** Stored sequence numbers by `componentKey(manifestId)`. */
  readonly sequenceNumbers?: ReadonlyMap<string, bigint>;
}

function isMap(
  v: ReadonlyMap<string, Uint8Array> | Readonly<Record<string, Uint8Array>>,
): v is ReadonlyMap<string, Uint8Array> {
  return v instanceof Map;
}

/** A journal entry of every side effect, so tests and dry runs can show exactly what a manifest would do. */
export type MemoryPlatformEvent =
  | {
      readonly op: 'write';
      readonly component: string;
      readonly slot: number | undefined;
      readonly size: number;
    }
  | { readonly op: 'fetch'; readonly uri: string; readonly component: string }
  | { readonly op: 'swap'; readonly a: string; readonly b: string }
  | { readonly op: 'unlink'; readonly component: string }
  | { readonly op: 'invoke'; readonly component: string; readonly args: Uint8Array | undefined }
  | { readonly op: 'wait'; readonly component: string }
  | { readonly op: 'decrypt'; readonly component: string }
  | { readonly op: 'set-sequence-number'; readonly manifest: string; readonly value: bigint };

/**
 * In-memory reference Platform: for tests and for a server-side dry run of a manifest against a device
 * description. Storage is a map from component key (and slot) to bytes; every side effect is journaled in `events`.
 */
export class MemoryPlatform implements Platform {
  readonly maxComponents: number;
  readonly storage = new Map<string, Uint8Array>();
  readonly sequenceNumbers = new Map<string, bigint>();
  readonly events: MemoryPlatformEvent[] = [];
  readonly resources: Map<string, Uint8Array>;
  readonly slots: Map<string, number>;
  readonly versions: Map<string, readonly number[]>;
  #supported: Set<string> | undefined;
  #vendorIds: readonly PlatformVendorId[];
  #classIds: readonly Uint8Array[];
  #deviceIds: readonly Uint8Array[];
  #battery: bigint;
  #now: bigint;
  #authorizedPriority: bigint | undefined;
  #waitResult: boolean;
  #decrypt: MemoryPlatformOptions['decrypt'];

  constructor(opts: MemoryPlatformOptions = {}) {
    this.maxComponents = opts.maxComponents ?? 16;
    this.#supported = opts.components === undefined ? undefined : new Set(opts.components.map(componentKey));
    this.#vendorIds = opts.vendorIds ?? [];
    this.#classIds = opts.classIds ?? [];
    this.#deviceIds = opts.deviceIds ?? [];
    const res = opts.resources;
    this.resources = new Map<string, Uint8Array>(
      res === undefined ? [] : isMap(res) ? [...res] : Object.entries(res),
    );
    for (const [k, v] of opts.storage ?? []) this.storage.set(k, v);
    this.slots = new Map(opts.slots ?? []);
    this.versions = new Map(opts.versions ?? []);
    this.#battery = opts.batteryMwh ?? 10_000n;
    this.#now = opts.now ?? BigInt(Math.floor(Date.now() / 1000));
    this.#authorizedPriority = opts.authorizedPriority;
    this.#waitResult = opts.waitResult ?? true;
    this.#decrypt = opts.decrypt;
    for (const [k, v] of opts.sequenceNumbers ?? []) this.sequenceNumbers.set(k, v);
  }

  static storageKey(component: ComponentId, slot?: number): string {
    return slot === undefined ? componentKey(component) : `${componentKey(component)}#${slot}`;
  }

  /** Contents of a component (test helper, synchronous). */
  get(component: ComponentId, slot?: number): Uint8Array | undefined {
    return this.storage.get(MemoryPlatform.storageKey(component, slot));
  }

  supportsComponent(component: ComponentId): boolean {
    return this.#supported === undefined || this.#supported.has(componentKey(component));
  }

  read(component: ComponentId, slot?: number): Promise<Uint8Array | undefined> {
    return Promise.resolve(this.get(component, slot));
  }

  write(component: ComponentId, data: Uint8Array, slot?: number): Promise<void> {
    this.storage.set(MemoryPlatform.storageKey(component, slot), Uint8Array.from(data));
    this.events.push({ op: 'write', component: componentKey(component), slot, size: data.length });
    return Promise.resolve();
  }

  swap(a: ComponentId, b: ComponentId): Promise<void> {
    const ka = componentKey(a);
    const kb = componentKey(b);
    const va = this.storage.get(ka);
    const vb = this.storage.get(kb);
    if (va === undefined || vb === undefined)
      return Promise.reject(new SuitError('SUIT_OPERATION_FAILED', 'swap of an empty component'));
    this.storage.set(ka, vb);
    this.storage.set(kb, va);
    this.events.push({ op: 'swap', a: ka, b: kb });
    return Promise.resolve();
  }

  unlink(component: ComponentId): Promise<void> {
    const k = componentKey(component);
    for (const key of [...this.storage.keys()])
      if (key === k || key.startsWith(`${k}#`)) this.storage.delete(key);
    this.events.push({ op: 'unlink', component: k });
    return Promise.resolve();
  }

  fetch(uri: string, request: FetchRequest): Promise<Uint8Array> {
    this.events.push({ op: 'fetch', uri, component: componentKey(request.component) });
    const r = this.resources.get(uri);
    if (r === undefined)
      return Promise.reject(new SuitError('SUIT_OPERATION_FAILED', `no resource at ${uri}`));
    return Promise.resolve(r);
  }

  invoke(component: ComponentId, args: Uint8Array | undefined): Promise<void> {
    this.events.push({ op: 'invoke', component: componentKey(component), args });
    return Promise.resolve();
  }

  async decrypt(
    encryptionInfo: Uint8Array,
    ciphertext: Uint8Array,
    request: DecryptRequest,
  ): Promise<Uint8Array> {
    this.events.push({ op: 'decrypt', component: componentKey(request.component) });
    if (this.#decrypt === undefined)
      throw new SuitError('SUIT_DECRYPT_FAILED', 'no decryption key on this platform');
    return this.#decrypt(encryptionInfo, ciphertext, request);
  }

  waitFor(_events: ReadonlyMap<number, unknown>, component: ComponentId): Promise<boolean> {
    this.events.push({ op: 'wait', component: componentKey(component) });
    return Promise.resolve(this.#waitResult);
  }

  vendorIds(): readonly PlatformVendorId[] {
    return this.#vendorIds;
  }

  classIds(): readonly Uint8Array[] {
    return this.#classIds;
  }

  deviceIds(): readonly Uint8Array[] {
    return this.#deviceIds;
  }

  componentSlot(component: ComponentId): Promise<number | undefined> {
    return Promise.resolve(this.slots.get(componentKey(component)));
  }

  componentVersion(component: ComponentId): Promise<readonly number[] | undefined> {
    return Promise.resolve(this.versions.get(componentKey(component)));
  }

  batteryMwh(): Promise<bigint> {
    return Promise.resolve(this.#battery);
  }

  now(): bigint {
    return this.#now;
  }

  isUpdateAuthorized(priority: bigint): Promise<boolean> {
    return Promise.resolve(this.#authorizedPriority === undefined || priority <= this.#authorizedPriority);
  }

  getSequenceNumber(manifestId: ComponentId): Promise<bigint | undefined> {
    return Promise.resolve(this.sequenceNumbers.get(componentKey(manifestId)));
  }

  setSequenceNumber(manifestId: ComponentId, sequenceNumber: bigint): Promise<void> {
    const k = componentKey(manifestId);
    this.sequenceNumbers.set(k, sequenceNumber);
    this.events.push({ op: 'set-sequence-number', manifest: k, value: sequenceNumber });
    return Promise.resolve();
  }
}

/**
 * The SUIT Platform of a Rotor device (the interface of @rotor/suit's manifest processor, draft-ietf-suit-
 * manifest-34 §6.4): components map to flash slots, directives to the install pipeline.
 *
 * Component → storage: each firmware component (the device identity lists them) has an A and a B slot; one
 * platform instance is bound to one bank — the inactive bank during an update, the bank being booted during the
 * invoke procedure — so a manifest can never write the running firmware (RFC 9019 §4.1: the old image stays as the fallback). suit-parameter-component-slot, when set, must name that bank's slot (MF §8.4.8.8).
 * Components under a firmware component's identifier (e.g. [fw, 'encrypted'], the builder's ciphertext staging
 * component) live in the staging area `s`.
 *
 * Constant memory: the processor's interface passes payloads as byte arrays, but a 256 MiB image must never be in
 * memory. fetch() therefore returns a *reference* (an empty Uint8Array registered in a WeakMap: nothing is
 * transferred yet), decrypt() a reference to the decryption of a reference (the content key is unwrapped and the
 * COSE_Encrypt validated immediately, ENC §4), and write() of a reference runs the streaming pipeline (network →
 * decrypt → SHA-256 → flash, fetch/pipeline.ts). A reference written to a staging component stays lazy (the
 * fetch happens when the bytes are needed, in constant memory); read() of a large stored image returns a
 * reference too (the copy directive consumes it). image-match never reads an image: digest() hashes flash (boot)
 * or returns the digest computed while writing (update), and size() answers image-size from the image record
 * (@rotor/suit Platform.size). A reference that somehow reaches code that treats it as bytes is an empty array:
 * every digest or content check over it mismatches, so the failure mode is refusal, never installation.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import {
  Alg,
  decodeEncrypt,
  FIRMWARE_CONTENT_ALGS,
  KEY_DISTRIBUTION_ALGS,
  unwrapContentKey,
  type KeyAgreement,
  type KeyUnwrapper,
} from '@rotor/cose';
import type { ComponentId } from '@rotor/suit';
import { DeviceError } from '../errors.ts';
import { componentKey, componentTag, type BankId, type Flash } from '../flash/flash.ts';
import {
  downloadName,
  encodeImage,
  imageName,
  MAX_ENVELOPE,
  type IdentityRecord,
  type ImageRecord,
  type NvState,
} from '../flash/nvstate.ts';
import {
  installImage,
  type FetchPolicy,
  type InstallStats,
  type PayloadDecryption,
  type PayloadInput,
} from '../fetch/pipeline.ts';
import type { SourceResponse } from '../fetch/source.ts';

/** Largest stored image read() returns as real bytes (dependency envelopes, small components). */
const INLINE_READ = 64 * 1024;
const MAX_ENCRYPTION_INFO = 64 * 1024;

/** Content-encryption algorithms the device accepts (ENC §4: AES-GCM; RFC 9459 AES-CTR). */
export const CONTENT_ALGS: ReadonlySet<number> = FIRMWARE_CONTENT_ALGS;
/** Key-distribution algorithms the device accepts (AES-KW, ECDH-ES + AES-KW; RFC 9053 §6). */
export const KEY_ALGS: ReadonlySet<number> = KEY_DISTRIBUTION_ALGS;

interface PayloadRef {
  readonly input: PayloadInput;
  readonly decryption: PayloadDecryption | undefined;
}

export interface DeviceKeys {
  readonly unwrappers?: readonly KeyUnwrapper[];
  readonly agreements?: readonly KeyAgreement[];
}

export interface DevicePlatformOptions {
  readonly flash: Flash;
  readonly nv: NvState;
  readonly identity: IdentityRecord;
  /** 'update': writes go to `bank` (inactive). 'boot': the invoke procedure over `bank`. */
  readonly mode: 'update' | 'boot';
  readonly bank: 'a' | 'b' | 'r';
  /** Digest of the manifest being processed (binds download records to it). */
  readonly manifestDigest: Uint8Array;
  /** Images of `bank` already recorded (boot mode: the bank record's images). */
  readonly images?: readonly ImageRecord[];
  readonly fetch?: FetchPolicy;
  readonly keys?: DeviceKeys;
  readonly batteryMwh?: () => Promise<bigint>;
  readonly now?: () => bigint;
  /** Highest priority value authorized now (smaller = more urgent); undefined = all (UM update-authorized). */
  readonly authorizedPriority?: () => Promise<bigint | undefined>;
  /** Installed version per component key (UM version condition). */
  readonly versions?: ReadonlyMap<string, readonly number[]>;
  readonly stats?: InstallStats;
  /**
   * Dependency components of the manifest (TD §5.1): they hold dependency envelopes (bounded by MAX_ENVELOPE, kept
   * in memory, never flashed); the agent stores them with the bank record.
   */
  readonly dependencies?: readonly ComponentId[];
  /** Dependency envelopes recorded with the bank (boot mode: what the dependency components hold). */
  readonly dependencyEnvelopes?: readonly {
    readonly component: ComponentId;
    readonly envelope: Uint8Array;
  }[];
}

function same(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

export class DevicePlatform {
  readonly maxComponents = 16;
  readonly #o: DevicePlatformOptions;
  readonly #refs = new WeakMap<Uint8Array, PayloadRef>();
  /** Images written (update) or recorded (boot) in `bank` / staging, by component tag. */
  readonly #images = new Map<string, { bank: BankId; record: ImageRecord }>();
  /** Staging components holding a not-yet-materialized reference. */
  readonly #lazy = new Map<string, { component: ComponentId; ref: PayloadRef; token: Uint8Array }>();
  /** Components whose digest was computed from flash in this run (boot: what image-match checked). */
  readonly verified = new Map<string, Uint8Array>();
  /** Components invoked (boot mode), in order. */
  readonly invoked: ComponentId[] = [];
  /** The sequence number the processor recorded at the end of a successful update (MF §8.4.2). */
  pendingSequence: { key: ComponentId; value: bigint } | undefined;
  readonly #dependencyKeys: ReadonlySet<string>;
  /** Dependency components' contents (dependency envelopes), by component tag. */
  readonly #deps = new Map<string, { component: ComponentId; envelope: Uint8Array }>();

  constructor(o: DevicePlatformOptions) {
    this.#o = o;
    for (const r of o.images ?? []) this.#images.set(componentTag(r.component), { bank: o.bank, record: r });
    this.#dependencyKeys = new Set((o.dependencies ?? []).map(componentTag));
    for (const d of o.dependencyEnvelopes ?? [])
      if (this.#dependencyKeys.has(componentTag(d.component))) this.#deps.set(componentTag(d.component), d);
  }

  /** The dependency envelopes the dependency components hold (for the install commit). */
  get dependencyEnvelopes(): { component: ComponentId; envelope: Uint8Array }[] {
    return [...this.#deps.values()];
  }

  #isDependency(c: ComponentId): boolean {
    return this.#dependencyKeys.has(componentTag(c));
  }

  /** A dependency component's content: an integrated envelope (bytes) or a fetched one (read whole, bounded). */
  async #dependencyBytes(data: Uint8Array): Promise<Uint8Array> {
    const ref = this.#refs.get(data);
    if (ref === undefined) {
      if (data.length > MAX_ENVELOPE)
        throw new DeviceError('MANIFEST_REJECTED', `dependency envelope exceeds ${MAX_ENVELOPE} bytes`);
      return data.slice();
    }
    if (ref.decryption !== undefined || ref.input.kind !== 'fetch')
      throw new DeviceError(
        'MANIFEST_REJECTED',
        'a dependency component holds a fetched or integrated envelope',
      );
    const policy = this.#o.fetch;
    if (policy === undefined) throw new DeviceError('FETCH_FAILED', 'this platform has no payload source');
    const uri = ref.input.uri;
    // Bounded like an image (fetch/pipeline.ts): in size (the announced image-size, never above MAX_ENVELOPE) and
    // by one overall deadline, so that a slow-drip server cannot hold the update (issue 4: slow retrieval).
    const announced = ref.input.expectedSize;
    const bound =
      announced !== undefined && announced < BigInt(MAX_ENVELOPE) ? Number(announced) : MAX_ENVELOPE;
    const deadlineMs = policy.deadlineMs ?? 600_000;
    const ac = new AbortController();
    const timer = setTimeout(() => {
      ac.abort();
    }, deadlineMs);
    const deadline = (e?: unknown): DeviceError =>
      new DeviceError('FETCH_DEADLINE', `retrieval of ${uri} exceeded ${deadlineMs} ms`, { cause: e });
    let res: SourceResponse | undefined;
    try {
      res = await policy.source.open(uri, { offset: 0, etag: undefined, signal: ac.signal });
      if (res.start !== 0)
        throw new DeviceError('FETCH_PROTOCOL', `${uri} answered a range that was not asked`);
      if (res.total !== undefined && res.total > bound)
        throw new DeviceError('MANIFEST_REJECTED', `dependency envelope ${uri} exceeds ${bound} bytes`);
      const parts: Uint8Array[] = [];
      let n = 0;
      for await (const p of res.body) {
        n += p.length;
        if (n > bound)
          throw new DeviceError('MANIFEST_REJECTED', `dependency envelope ${uri} exceeds ${bound} bytes`);
        parts.push(p.slice());
        if (ac.signal.aborted) throw deadline();
      }
      return Buffer.concat(parts);
    } catch (e) {
      if (ac.signal.aborted) throw deadline(e);
      if (e instanceof DeviceError) throw e;
      throw new DeviceError(
        'FETCH_FAILED',
        `retrieval of ${uri} failed: ${e instanceof Error ? e.message : String(e)}`,
        { cause: e },
      );
    } finally {
      clearTimeout(timer);
      ac.abort();
      res?.close();
    }
  }

  /** The images written to the target bank in this run (for the install commit). */
  get written(): ImageRecord[] {
    return [...this.#images.values()].filter((i) => i.bank === this.#o.bank).map((i) => i.record);
  }

  #isFirmware(c: ComponentId): boolean {
    const k = componentKey(c);
    return this.#o.identity.components.some((f) => componentKey(f) === k);
  }

  #isStaging(c: ComponentId): boolean {
    return (
      !this.#isFirmware(c) &&
      this.#o.identity.components.some(
        (f) => c.length > f.length && f.every((p, i) => Buffer.compare(p, c[i]!) === 0),
      )
    );
  }

  #bankOf(c: ComponentId, slot: number | undefined): BankId {
    if (this.#isFirmware(c)) {
      const mine = this.#slotIndex();
      // MF §8.4.8.8: the slot the manifest names must be the one this platform may touch (never the running one).
      if (slot !== undefined && slot !== mine)
        throw new DeviceError(
          'MANIFEST_REJECTED',
          `component-slot ${slot} is not the ${this.#o.mode === 'update' ? 'inactive' : 'booted'} slot ${String(mine)}`,
        );
      return this.#o.bank;
    }
    if (this.#isStaging(c)) return 's';
    throw new DeviceError('MANIFEST_REJECTED', `component ${componentKey(c)} is not supported`);
  }

  #slotIndex(): number | undefined {
    return this.#o.bank === 'a' ? 0 : this.#o.bank === 'b' ? 1 : undefined;
  }

  supportsComponent(c: ComponentId): boolean {
    return this.#isFirmware(c) || this.#isStaging(c) || this.#isDependency(c);
  }

  async read(c: ComponentId, slot?: number): Promise<Uint8Array | undefined> {
    if (this.#isDependency(c)) return this.#deps.get(componentTag(c))?.envelope;
    const bank = this.#bankOf(c, slot);
    const tag = componentTag(c);
    const lazy = this.#lazy.get(tag);
    if (lazy !== undefined) return lazy.token;
    const img = this.#images.get(tag);
    if (img === undefined) return undefined;
    const r = img.record;
    if (r.size <= INLINE_READ) return this.#o.flash.readAll(bank, c, r.size, r.chunkSize);
    const token = new Uint8Array(0);
    this.#refs.set(token, { input: { kind: 'image', bank, record: r }, decryption: undefined });
    return token;
  }

  async write(c: ComponentId, data: Uint8Array, slot?: number): Promise<void> {
    if (this.#isDependency(c)) {
      if (this.#o.mode !== 'update')
        throw new DeviceError('MANIFEST_REJECTED', 'the boot stage writes nothing (invoke procedure)');
      this.#deps.set(componentTag(c), { component: c, envelope: await this.#dependencyBytes(data) });
      return;
    }
    await this.#store(c, data, slot, true);
  }

  /** write(); `lazy` = a fetched, unencrypted staging payload may stay a reference (not when materializing). */
  async #store(c: ComponentId, data: Uint8Array, slot: number | undefined, lazy: boolean): Promise<void> {
    if (this.#o.mode !== 'update')
      throw new DeviceError('MANIFEST_REJECTED', 'the boot stage writes nothing (invoke procedure)');
    const bank = this.#bankOf(c, slot);
    const tag = componentTag(c);
    const ref = this.#refs.get(data) ?? { input: { kind: 'bytes', data }, decryption: undefined };
    this.#lazy.delete(tag);
    if (lazy && bank === 's' && ref.input.kind === 'fetch' && ref.decryption === undefined) {
      // Staging of fetched ciphertext: kept as a reference, fetched when (and only as) it is consumed.
      this.#lazy.set(tag, { component: c, ref, token: data });
      return;
    }
    const maxSize = this.#o.identity.maxImageSize;
    const record = await installImage(
      {
        flash: this.#o.flash,
        nv: this.#o.nv,
        bank,
        component: c,
        maxSize,
        manifestDigest: this.#o.manifestDigest,
      },
      ref.input,
      ref.decryption,
      this.#o.fetch,
      this.#o.stats,
    );
    // The image is complete: record it and drop its download progress in one transaction.
    await this.#o.nv.transact(
      new Map<string, Uint8Array | null>([
        [imageName(bank, c), encodeImage(record)],
        [downloadName(bank, c), null],
      ]),
    );
    this.#images.set(tag, { bank, record });
  }

  async #materialize(c: ComponentId): Promise<void> {
    const lazy = this.#lazy.get(componentTag(c));
    if (lazy === undefined) return;
    const token = new Uint8Array(0);
    this.#refs.set(token, lazy.ref);
    // Fetched into the staging area now, in constant memory (its digest or size is asked for).
    await this.#store(c, token, undefined, false);
  }

  async digest(c: ComponentId, alg: number, slot?: number): Promise<Uint8Array | undefined> {
    if (alg !== Alg.SHA256) return undefined;
    if (this.#isDependency(c)) {
      const d = this.#deps.get(componentTag(c));
      return d === undefined ? undefined : new Uint8Array(createHash('sha256').update(d.envelope).digest());
    }
    const bank = this.#bankOf(c, slot);
    await this.#materialize(c);
    const tag = componentTag(c);
    const img = this.#images.get(tag);
    if (img === undefined) return undefined;
    let d: Uint8Array | undefined;
    if (this.#o.mode === 'update' && img.bank === bank) {
      // Computed over exactly the bytes written in this run, as they were written.
      d = img.record.sha256;
    } else {
      // Boot (RFC 9019 §4.1): hash what is in flash now, and it must also match the install record.
      d = await this.#o.flash.sha256(bank, c, img.record.size, img.record.chunkSize);
      if (d === undefined || !same(d, img.record.sha256)) return d ?? new Uint8Array(32);
    }
    this.verified.set(tag, d);
    return d;
  }

  /** Size of a component's image (MF §8.4.9.3 image-size) from its record: never reads the image. */
  async size(c: ComponentId, slot?: number): Promise<bigint | undefined> {
    if (this.#isDependency(c)) {
      const d = this.#deps.get(componentTag(c));
      return d === undefined ? undefined : BigInt(d.envelope.length);
    }
    this.#bankOf(c, slot);
    await this.#materialize(c);
    const img = this.#images.get(componentTag(c));
    return img === undefined ? undefined : BigInt(img.record.size);
  }

  async swap(a: ComponentId, b: ComponentId): Promise<void> {
    // MF §8.4.10.7: exchange two components, here within the target bank and staging (never the running slot).
    const ia = this.#images.get(componentTag(a));
    const ib = this.#images.get(componentTag(b));
    if (ia === undefined || ib === undefined)
      throw new DeviceError('MANIFEST_REJECTED', 'swap of an empty component');
    const tmp: ComponentId = [...a, new TextEncoder().encode('#swap')];
    const copy = async (dst: ComponentId, from: { bank: BankId; record: ImageRecord }): Promise<void> => {
      const t = new Uint8Array(0);
      this.#refs.set(t, {
        input: { kind: 'image', bank: from.bank, record: from.record },
        decryption: undefined,
      });
      await this.#writeTo(dst, t, 's');
    };
    await copy(tmp, ia);
    const tmpImg = this.#images.get(componentTag(tmp))!;
    const t1 = new Uint8Array(0);
    this.#refs.set(t1, { input: { kind: 'image', bank: ib.bank, record: ib.record }, decryption: undefined });
    await this.write(a, t1);
    const t2 = new Uint8Array(0);
    this.#refs.set(t2, { input: { kind: 'image', bank: 's', record: tmpImg.record }, decryption: undefined });
    await this.write(b, t2);
    await this.unlink(tmp);
  }

  async #writeTo(c: ComponentId, data: Uint8Array, bank: BankId): Promise<void> {
    const ref = this.#refs.get(data)!;
    const record = await installImage(
      {
        flash: this.#o.flash,
        nv: this.#o.nv,
        bank,
        component: c,
        maxSize: this.#o.identity.maxImageSize,
        manifestDigest: this.#o.manifestDigest,
      },
      ref.input,
      ref.decryption,
      this.#o.fetch,
    );
    this.#images.set(componentTag(c), { bank, record });
  }

  async unlink(c: ComponentId): Promise<void> {
    const tag = componentTag(c);
    this.#lazy.delete(tag);
    this.#deps.delete(tag);
    const img = this.#images.get(tag);
    if (img === undefined) return;
    this.#images.delete(tag);
    await this.#o.flash.erase(img.bank, c);
    await this.#o.nv.transact(new Map([[imageName(img.bank, c), null]]));
  }

  fetch(
    uri: string,
    request: { readonly component: ComponentId; readonly expectedSize: bigint | undefined },
  ): Promise<Uint8Array> {
    if (this.#o.mode !== 'update')
      return Promise.reject(new DeviceError('MANIFEST_REJECTED', 'the boot stage fetches nothing'));
    if (!this.#isDependency(request.component)) this.#bankOf(request.component, undefined);
    const token = new Uint8Array(0);
    this.#refs.set(token, {
      input: { kind: 'fetch', uri, expectedSize: request.expectedSize },
      decryption: undefined,
    });
    return Promise.resolve(token);
  }

  invoke(c: ComponentId): Promise<void> {
    // RFC 9019 §4.1: never invoke an image that was not verified in this boot. Only the boot stage invokes.
    if (this.#o.mode !== 'boot')
      return Promise.reject(
        new DeviceError('MANIFEST_REJECTED', 'invoke happens through the boot stage, not during an update'),
      );
    const tag = componentTag(c);
    const img = this.#images.get(tag);
    const d = this.verified.get(tag);
    if (img === undefined || d === undefined || !same(d, img.record.sha256))
      return Promise.reject(
        new DeviceError('NO_BOOTABLE_IMAGE', `component ${componentKey(c)} was not verified before invoke`),
      );
    this.invoked.push(c);
    return Promise.resolve();
  }

  async decrypt(encryptionInfo: Uint8Array, ciphertext: Uint8Array): Promise<Uint8Array> {
    let decryption: PayloadDecryption;
    try {
      const msg = decodeEncrypt(encryptionInfo, { maxSize: MAX_ENCRYPTION_INFO });
      // ENC §4: the SUIT_Encryption_Info carries a detached ciphertext (the payload is the ciphertext).
      if (msg.ciphertext !== null)
        throw new Error('SUIT_Encryption_Info must have a detached (nil) ciphertext');
      if (!CONTENT_ALGS.has(msg.alg)) throw new Error(`content algorithm ${msg.alg} is not accepted`);
      const keys = this.#o.keys ?? {};
      const cek = await unwrapContentKey(
        msg,
        {
          ...(keys.unwrappers === undefined ? {} : { unwrappers: keys.unwrappers }),
          ...(keys.agreements === undefined ? {} : { agreements: keys.agreements }),
        },
        { allowedAlgs: KEY_ALGS },
      );
      decryption = { msg, cek };
    } catch (e) {
      throw new DeviceError(
        'PAYLOAD_DECRYPT_FAILED',
        `cannot decrypt: ${e instanceof Error ? e.message : String(e)}`,
        { cause: e },
      );
    }
    const inner = this.#refs.get(ciphertext) ?? {
      input: { kind: 'bytes', data: ciphertext },
      decryption: undefined,
    };
    if (inner.decryption !== undefined)
      throw new DeviceError('PAYLOAD_DECRYPT_FAILED', 'a payload is decrypted at most once');
    const token = new Uint8Array(0);
    this.#refs.set(token, { input: inner.input, decryption });
    return token;
  }

  waitFor(): Promise<boolean> {
    return Promise.resolve(true);
  }

  vendorIds(): readonly { bytes: Uint8Array; pen: boolean }[] {
    return [{ bytes: this.#o.identity.vendorId, pen: false }];
  }

  classIds(): readonly Uint8Array[] {
    return [this.#o.identity.classId];
  }

  deviceIds(): readonly Uint8Array[] {
    return [this.#o.identity.deviceId];
  }

  componentSlot(c: ComponentId): Promise<number | undefined> {
    return Promise.resolve(this.#isFirmware(c) ? this.#slotIndex() : undefined);
  }

  componentVersion(c: ComponentId): Promise<readonly number[] | undefined> {
    return Promise.resolve(this.#o.versions?.get(componentKey(c)));
  }

  batteryMwh(): Promise<bigint> {
    return this.#o.batteryMwh?.() ?? Promise.resolve(100_000n);
  }

  now(): bigint {
    return this.#o.now?.() ?? BigInt(Math.floor(Date.now() / 1000));
  }

  async isUpdateAuthorized(priority: bigint): Promise<boolean> {
    const max = await this.#o.authorizedPriority?.();
    return max === undefined || priority <= max;
  }

  getSequenceNumber(key: ComponentId): Promise<bigint | undefined> {
    return this.#o.nv.counter(key);
  }

  setSequenceNumber(key: ComponentId, value: bigint): Promise<void> {
    // Recorded by the agent in the install commit; the counter itself rises when the new firmware is confirmed.
    this.pendingSequence = { key, value };
    return Promise.resolve();
  }
}

/**
 * The SUIT Platform (draft-ietf-suit-manifest-34 §6.4) a module envelope is processed over: the same manifest
 * processor and the same checks as firmware — vendor and class identifiers (MF §8.4.9.1), sequence number
 * (MF §8.4.2), fetch of the integrated or supplied ciphertext, decryption with encryption-info through the device's
 * KeyAgreement / KeyUnwrapper (draft-ietf-suit-firmware-encryption §4), image-match of the plaintext (MF §8.4.9.2)
 * — with components held in memory (a module is at most a few MiB) instead of flash slots.
 */
import {
  decodeEncrypt,
  decryptContent,
  unwrapContentKey,
  type KeyAgreement,
  type KeyUnwrapper,
} from '@rotor/cose';
import {
  componentHasPrefix,
  componentKey,
  vendorIdFromDomain,
  type ComponentId,
  type Platform,
} from '@rotor/suit';
import { capabilityClassId, capabilityComponent } from '@rotor/trust';
import { CONTENT_ALGS, KEY_ALGS } from '../platform/platform.ts';

const MAX_ENCRYPTION_INFO = 16 * 1024;

export interface ModuleKeys {
  readonly unwrappers?: readonly KeyUnwrapper[];
  readonly agreements?: readonly KeyAgreement[];
}

export class ModulePlatform implements Platform {
  readonly maxComponents = 3;
  readonly #name: string;
  readonly #vendorDomain: string;
  readonly #keys: ModuleKeys;
  readonly #payloads: ReadonlyMap<string, Uint8Array>;
  readonly #installedSequence: bigint | undefined;
  readonly #store = new Map<string, Uint8Array>();
  readonly #now: bigint;
  /** Set when decryption failed (the processor reports it as a directive failure). */
  decryptError: unknown;
  newSequence: bigint | undefined;

  constructor(o: {
    name: string;
    vendorDomain: string;
    keys: ModuleKeys;
    payloads: ReadonlyMap<string, Uint8Array>;
    installedSequence: bigint | undefined;
    now: number;
  }) {
    this.#name = o.name;
    this.#vendorDomain = o.vendorDomain;
    this.#keys = o.keys;
    this.#payloads = o.payloads;
    this.#installedSequence = o.installedSequence;
    this.#now = BigInt(Math.floor(o.now));
  }

  /** Contents of a component after processing. */
  contents(c: ComponentId): Uint8Array | undefined {
    return this.#store.get(componentKey(c));
  }

  supportsComponent(c: ComponentId): boolean {
    return componentHasPrefix(c, capabilityComponent(this.#name)) && c.length <= 3;
  }
  read(c: ComponentId): Promise<Uint8Array | undefined> {
    return Promise.resolve(this.#store.get(componentKey(c)));
  }
  write(c: ComponentId, data: Uint8Array): Promise<void> {
    this.#store.set(componentKey(c), data);
    return Promise.resolve();
  }
  swap(): Promise<void> {
    return Promise.reject(new Error('module envelopes do not swap components'));
  }
  unlink(): Promise<void> {
    return Promise.reject(new Error('module envelopes do not unlink components'));
  }
  fetch(uri: string): Promise<Uint8Array> {
    const p = this.#payloads.get(uri);
    return p === undefined ? Promise.reject(new Error(`no payload supplied for ${uri}`)) : Promise.resolve(p);
  }
  invoke(): Promise<void> {
    return Promise.reject(new Error('modules are started by the capability manager, not by invoke'));
  }
  async decrypt(encryptionInfo: Uint8Array, ciphertext: Uint8Array): Promise<Uint8Array> {
    try {
      const msg = decodeEncrypt(encryptionInfo, { maxSize: MAX_ENCRYPTION_INFO });
      // ENC §4: the SUIT_Encryption_Info carries a detached (nil) ciphertext.
      if (msg.ciphertext !== null) throw new Error('SUIT_Encryption_Info must have a detached ciphertext');
      const cek = await unwrapContentKey(
        msg,
        {
          ...(this.#keys.unwrappers === undefined ? {} : { unwrappers: this.#keys.unwrappers }),
          ...(this.#keys.agreements === undefined ? {} : { agreements: this.#keys.agreements }),
        },
        { allowedAlgs: KEY_ALGS },
      );
      // RFC 9052 §5.3: AEAD authentication of the ciphertext before any plaintext is used.
      return decryptContent(msg, cek, ciphertext, { allowedAlgs: CONTENT_ALGS });
    } catch (e) {
      this.decryptError = e;
      throw e;
    }
  }
  waitFor(): Promise<boolean> {
    return Promise.resolve(false);
  }
  vendorIds(): readonly { bytes: Uint8Array; pen: boolean }[] {
    return [{ bytes: vendorIdFromDomain(this.#vendorDomain), pen: false }];
  }
  classIds(): readonly Uint8Array[] {
    return [capabilityClassId(this.#vendorDomain, this.#name)];
  }
  deviceIds(): readonly Uint8Array[] {
    return [];
  }
  componentSlot(): Promise<number | undefined> {
    return Promise.resolve(undefined);
  }
  componentVersion(): Promise<readonly number[] | undefined> {
    return Promise.resolve(undefined);
  }
  batteryMwh(): Promise<bigint> {
    return Promise.resolve(0n);
  }
  now(): bigint {
    return this.#now;
  }
  isUpdateAuthorized(): Promise<boolean> {
    return Promise.resolve(true);
  }
  getSequenceNumber(): Promise<bigint | undefined> {
    return Promise.resolve(this.#installedSequence);
  }
  setSequenceNumber(_id: ComponentId, seq: bigint): Promise<void> {
    this.newSequence = seq;
    return Promise.resolve();
  }
}

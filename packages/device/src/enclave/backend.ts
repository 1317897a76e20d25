/**
 * Key backends behind one interface: the enclave's own sealed storage, or an external token (PKCS#11: SoftHSM2 in
 * tests, a secure element or TPM in production). The enclave routes each key id to the backend that holds it;
 * private keys never leave a backend, and never cross the queue.
 */
import { sign as cryptoSign, type KeyObject } from 'node:crypto';
import { CoseError, softwareKeyAgreement, type CoseKey, type KeyAgreement } from '@rotor/cose';
import { DeviceError } from '../errors.ts';
import {
  generateSoftwareKey,
  KEY_TYPE_INFO,
  privateKeyObject,
  type BackendName,
  type KeyType,
} from './keys.ts';

export interface KeyBackend {
  readonly name: BackendName;
  supports(type: KeyType): boolean;
  /**
   * Generates a key that can never be exported. Returns the COSE_Key the enclave records in its sealed state:
   * the private key for the sealed backend, only the public key for an external token.
   */
  generate(keyId: string, type: KeyType): Promise<CoseKey>;
  /** Makes a recorded key usable (at start-up and after generate). */
  load(keyId: string, type: KeyType, stored: CoseKey): void;
  /** A signature in COSE form (RFC 9053 §2.1: ECDSA r‖s; §2.2 EdDSA) over `data` (hashing included). */
  sign(keyId: string, type: KeyType, data: Uint8Array): Promise<Uint8Array>;
  /** ECDH shared secret Z with a peer public key (uncompressed SEC1 point or raw X25519). */
  deriveSharedSecret(keyId: string, type: KeyType, peer: Uint8Array): Promise<Uint8Array>;
  close(): Promise<void>;
}

/** Keys generated inside the enclave process and persisted only sealed. */
export class SealedBackend implements KeyBackend {
  readonly name = 'sealed';
  readonly #signers = new Map<string, { key: KeyObject; hash: string | null }>();
  readonly #agreements = new Map<string, KeyAgreement>();

  supports(): boolean {
    return true;
  }

  generate(_keyId: string, type: KeyType): Promise<CoseKey> {
    return Promise.resolve(generateSoftwareKey(type));
  }

  load(keyId: string, type: KeyType, stored: CoseKey): void {
    const ko = privateKeyObject(stored);
    if (KEY_TYPE_INFO[type].use === 'sign') {
      this.#signers.set(keyId, { key: ko, hash: type === 'ES256' ? 'sha256' : null });
    } else {
      this.#agreements.set(keyId, softwareKeyAgreement(ko));
    }
  }

  sign(keyId: string, _type: KeyType, data: Uint8Array): Promise<Uint8Array> {
    const s = this.#signers.get(keyId);
    if (s === undefined) return Promise.reject(new DeviceError('KEY_NOT_FOUND', `no signing key ${keyId}`));
    // RFC 9053 §2.1: ECDSA signatures are r‖s (IEEE P1363), not DER.
    const sig = cryptoSign(s.hash, data, s.hash === null ? s.key : { key: s.key, dsaEncoding: 'ieee-p1363' });
    return Promise.resolve(new Uint8Array(sig.buffer, sig.byteOffset, sig.byteLength));
  }

  async deriveSharedSecret(keyId: string, _type: KeyType, peer: Uint8Array): Promise<Uint8Array> {
    const a = this.#agreements.get(keyId);
    if (a === undefined) throw new DeviceError('KEY_NOT_FOUND', `no key-agreement key ${keyId}`);
    try {
      return await a.deriveSharedSecret(peer);
    } catch (e) {
      // Point not on the curve, wrong length, or an X25519 low-order point (RFC 7748 §6.1 all-zero check).
      if (e instanceof CoseError) throw new DeviceError('BAD_PEER_KEY', e.message, { cause: e });
      throw e;
    }
  }

  close(): Promise<void> {
    this.#signers.clear();
    this.#agreements.clear();
    return Promise.resolve();
  }
}

/**
 * Sealed capability archives (issue 8: a replaced module is "archived (compressed, in non-volatile storage, so a
 * revert needs no download)"; here also sealed, so an archive is confidential at rest and a tampered one is refused).
 *
 * Envelope encryption: each archive gets a fresh 256-bit key; the deflated module is encrypted with AES-256-GCM
 * (NIST SP 800-38D, random 96-bit nonce) with the archive's identity (name, module digest, sequence number) as
 * additional data, and only the key goes to the enclave to be sealed under its device-unique sealing key
 * (enclave/seal.ts; SealData over the IPQ), bound to a label naming the same identity. The big ciphertext never
 * crosses the queue. Opening needs this device's enclave (a copied archive does not open elsewhere), and any change
 * of ciphertext, nonce, sealed key or identity fails authentication (SEAL_FAILED). The plaintext is then still
 * checked against the signed image digest (MF §8.4.9.2) by the manager.
 */
import { createCipheriv, createDecipheriv, randomBytes, type KeyObject } from 'node:crypto';
import { encode } from '@rotor/cose';
import { hex } from '@rotor/trust';
import { seal, unseal } from '../enclave/seal.ts';
import { DeviceError } from '../errors.ts';

/** Seals small secrets to this device (the enclave's sealing key). */
export interface ArchiveSealer {
  sealKey(label: string, key: Uint8Array): Promise<Uint8Array>;
  unsealKey(label: string, sealed: Uint8Array): Promise<Uint8Array>;
}

/** The enclave process (EnclaveClient) seals: the sealing key never leaves it. */
export function enclaveArchiveSealer(enclave: {
  sealData(label: string, data: Uint8Array): Promise<Uint8Array>;
  unsealData(label: string, sealed: Uint8Array): Promise<Uint8Array>;
}): ArchiveSealer {
  return {
    sealKey: (label, key) => enclave.sealData(label, key),
    unsealKey: (label, sealed) => enclave.unsealData(label, sealed),
  };
}

/**
 * In-process sealing with the enclave's sealing key (deriveSealingKeys(fuse).seal), the same format and label
 * domain as the enclave's SealData (`data:` prefix): for an enclave core run in process and for simulations.
 */
export function sealingKeyArchiveSealer(sealingKey: KeyObject): ArchiveSealer {
  return {
    sealKey: (label, key) => Promise.resolve(seal(sealingKey, `data:${label}`, key)),
    unsealKey: (label, sealed) => Promise.resolve(unseal(sealingKey, `data:${label}`, sealed)),
  };
}

export interface ArchiveIdentity {
  readonly name: string;
  readonly digest: Uint8Array;
  readonly sequence: bigint;
}

export interface SealedArchive {
  readonly nonce: Uint8Array;
  /** AES-256-GCM ciphertext of the deflated module, tag appended. */
  readonly ciphertext: Uint8Array;
  readonly sealedKey: Uint8Array;
}

const TAG = 16;
const labelOf = (a: ArchiveIdentity): string => `capability-archive/${a.name}/${hex(a.digest)}/${a.sequence}`;
const aadOf = (a: ArchiveIdentity): Buffer =>
  Buffer.from(encode(['rotor-capability-archive', 1, a.name, a.digest, a.sequence]));

export async function sealArchive(
  sealer: ArchiveSealer,
  id: ArchiveIdentity,
  deflated: Uint8Array,
): Promise<SealedArchive> {
  const key = randomBytes(32);
  const nonce = randomBytes(12);
  try {
    const c = createCipheriv('aes-256-gcm', key, nonce, { authTagLength: TAG });
    c.setAAD(aadOf(id));
    const ciphertext = new Uint8Array(Buffer.concat([c.update(deflated), c.final(), c.getAuthTag()]));
    const sealedKey = await sealer.sealKey(labelOf(id), new Uint8Array(key));
    return { nonce: new Uint8Array(nonce), ciphertext, sealedKey };
  } finally {
    key.fill(0);
  }
}

/** The deflated module of a sealed archive; SEAL_FAILED when it does not open on this device as this identity. */
export async function openArchive(
  sealer: ArchiveSealer,
  id: ArchiveIdentity,
  a: SealedArchive,
): Promise<Uint8Array> {
  let key: Uint8Array;
  try {
    key = await sealer.unsealKey(labelOf(id), a.sealedKey);
  } catch (e) {
    throw new DeviceError('SEAL_FAILED', `archive key of ${id.name} does not unseal on this device`, {
      cause: e,
    });
  }
  try {
    if (key.length !== 32 || a.nonce.length !== 12 || a.ciphertext.length < TAG) throw new Error('bad sizes');
    const d = createDecipheriv('aes-256-gcm', key, a.nonce, { authTagLength: TAG });
    d.setAAD(aadOf(id));
    d.setAuthTag(a.ciphertext.subarray(a.ciphertext.length - TAG));
    return new Uint8Array(
      Buffer.concat([d.update(a.ciphertext.subarray(0, a.ciphertext.length - TAG)), d.final()]),
    );
  } catch (e) {
    throw new DeviceError('SEAL_FAILED', `archive of ${id.name} fails authentication`, { cause: e });
  } finally {
    key.fill(0);
  }
}

/**
 * Sealing: the enclave's storage is encrypted under a device-unique key.
 *
 * THREAT MODEL (simulation). A real device derives its sealing key in hardware from fuses only the secure
 * processor can read (seed 002 "Additional Processor ... with dedicated memory"). Here the "fuse" is a 32-byte
 * file, created once per device with mode 0400, that only the enclave process reads; file permissions stand in
 * for hardware isolation. That protects against other users and against copying the sealed blobs to another
 * device (they do not unseal there), but NOT against root or the same user on this machine, who can read the
 * fuse file or the enclave's memory. Sealed blobs are authenticated (AES-GCM), so tampering is detected; they are
 * not protected against rollback to an older sealed state (that needs a hardware monotonic counter).
 */
import {
  createCipheriv,
  createDecipheriv,
  createSecretKey,
  hkdfSync,
  randomBytes,
  type KeyObject,
} from 'node:crypto';
import { asArray, asBytes, asUint, decode, encode } from '@rotor/cose';
import { DeviceError } from '../errors.ts';

export const FUSE_BYTES = 32;
const NONCE_BYTES = 12;
const TAG_BYTES = 16;
const MAX_SEALED = 16 * 1024 * 1024;

export interface SealingKeys {
  readonly seal: KeyObject;
  /** RFC 9711 §4.2.1 UEID of type 0x01 (RAND), 16 random bytes, derived from the fuse so it is stable. */
  readonly ueid: Uint8Array;
}

/** Derives the sealing key and the device id from the fuse secret (HKDF-SHA-256, RFC 5869). */
export function deriveSealingKeys(fuse: Uint8Array): SealingKeys {
  if (fuse.length !== FUSE_BYTES)
    throw new DeviceError('FUSE_MISSING', `fuse secret must be ${FUSE_BYTES} bytes`);
  const salt = Buffer.from('rotor/fuse/v1');
  const seal = createSecretKey(Buffer.from(hkdfSync('sha256', fuse, salt, 'sealing key aes-256-gcm', 32)));
  const id = Buffer.from(hkdfSync('sha256', fuse, salt, 'ueid', 16));
  return { seal, ueid: new Uint8Array(Buffer.concat([Buffer.from([0x01]), id])) };
}

function aad(label: string): Buffer {
  // Binds a blob to its role: a sealed blob cannot be swapped for another of a different name.
  return Buffer.from(encode(['rotor-sealed', 1, label]));
}

/** AES-256-GCM (NIST SP 800-38D) with a random 96-bit nonce (§8.2.2; far fewer than 2^32 seals per key). */
export function seal(key: KeyObject, label: string, plaintext: Uint8Array): Uint8Array {
  const nonce = randomBytes(NONCE_BYTES);
  const c = createCipheriv('aes-256-gcm', key, nonce, { authTagLength: TAG_BYTES });
  c.setAAD(aad(label));
  const ct = Buffer.concat([c.update(plaintext), c.final(), c.getAuthTag()]);
  return encode([1, new Uint8Array(nonce), new Uint8Array(ct)]);
}

export function unseal(key: KeyObject, label: string, blob: Uint8Array): Uint8Array {
  try {
    const a = asArray(decode(blob, { maxSize: MAX_SEALED }), 'sealed', { min: 3, max: 3 });
    if (asUint(a[0], 'sealed[0]') !== 1) throw new Error('unknown sealed version');
    const nonce = asBytes(a[1], 'sealed[1]', { min: NONCE_BYTES, max: NONCE_BYTES });
    const ct = asBytes(a[2], 'sealed[2]', { min: TAG_BYTES });
    const d = createDecipheriv('aes-256-gcm', key, nonce, { authTagLength: TAG_BYTES });
    d.setAAD(aad(label));
    d.setAuthTag(ct.subarray(ct.length - TAG_BYTES));
    return new Uint8Array(Buffer.concat([d.update(ct.subarray(0, ct.length - TAG_BYTES)), d.final()]));
  } catch (e) {
    throw new DeviceError('SEAL_FAILED', `sealed blob ${label} does not unseal on this device`, { cause: e });
  }
}

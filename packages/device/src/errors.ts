/**
 * The one error module of @rotor/device. Every failure is a DeviceError with a stable string code. Codes cross the
 * inter-processor queue in error responses; the receiving side accepts only codes from this list (anything else
 * from the peer is itself a malformed frame).
 */

export const DEVICE_ERROR_CODES = [
  // Storage (storage/).
  'POWER_CUT', // a simulated power cut: the operation did not happen and the device is off until reboot()
  'STORAGE_IO', // the file system failed
  'STORAGE_NAME', // a file name outside the store's alphabet
  'STORAGE_CORRUPT', // a stored record fails its integrity check
  // Sealing (enclave/seal.ts).
  'FUSE_MISSING', // the device-unique secret is absent while sealed state exists
  'SEAL_FAILED', // AES-GCM authentication of a sealed blob failed (wrong device, tampering, corruption)
  'STATE_INCONSISTENT', // the enclave's keys and its chain disagree after recovery
  // The inter-processor queue (ipq/).
  'FRAME_TOO_LARGE', // a frame longer than the receiver's bound
  'FRAME_MALFORMED', // a frame that is not a valid message (CBOR, shape, member types)
  'FRAME_UNEXPECTED', // a well-formed message that makes no sense here (unknown id, response to nothing)
  'REQUEST_UNKNOWN', // a request type the enclave does not serve
  'REQUEST_INVALID', // a request body that fails validation
  'REQUEST_TIMEOUT', // no response within the request's deadline
  'QUEUE_FULL', // too many requests in flight
  'ENCLAVE_UNAVAILABLE', // the enclave process is not running and could not be (re)started
  'ENCLAVE_CRASHED', // the enclave died while a non-idempotent request was in flight (outcome unknown)
  'CLOSED', // the client was closed
  // Enclave operations.
  'ROT_EXISTS', // GenerateRoT when a RoT exists (rotate instead)
  'ROT_MISSING', // an operation that needs the RoT before GenerateRoT
  'KEY_EXISTS', // GenerateKey for a key id in use
  'KEY_NOT_FOUND', // no key with that id
  'KEY_USAGE', // the key cannot do that (e.g. sign with an ECDH key)
  'KEY_TYPE_UNSUPPORTED', // the backend cannot hold that key type
  'BACKEND_UNAVAILABLE', // no such backend configured (e.g. PKCS#11)
  'PKCS11_ERROR', // the PKCS#11 module returned an error
  'BAD_PEER_KEY', // a peer public key that is not a valid point
  'UNWRAP_FAILED', // AES key unwrap integrity check failed (RFC 3394 §2.2.3)
  'INTERNAL', // a bug: an unexpected exception inside the enclave
  // Firmware consumer: flash, boot stage, fetcher, agent (flash/, boot/, fetch/, platform/, agent/).
  'NOT_PROVISIONED', // the device has no identity, trust anchors or initial firmware yet
  'RECORD_INVALID', // a non-volatile record fails strict decoding (treated as corrupt state)
  'IMAGE_TOO_LARGE', // a payload exceeds the slot or image-size bound (endless data is refused)
  'IMAGE_DIGEST_MISMATCH', // an image does not match the digest it was installed or announced with
  'FETCH_FAILED', // the payload could not be retrieved after bounded retries
  'FETCH_DEADLINE', // the transfer did not finish within its overall deadline (slow retrieval)
  'FETCH_PROTOCOL', // the server answered outside the protocol (bad status, Content-Range, length)
  'PAYLOAD_DECRYPT_FAILED', // the content key could not be unwrapped or the payload failed authentication
  'MANIFEST_REJECTED', // authentication or the SUIT processor refused the manifest (reason in the message / suit code)
  'UPDATE_BUSY', // an update is already in progress or a trial boot awaits confirmation
  'NO_BOOTABLE_IMAGE', // no slot and no recovery image verifies: the boot stage refuses to invoke anything
  'TRACKER_PROTOCOL', // the status tracker server answered outside the documented protocol
  'SIGNER_REVOKED', // an update envelope is signed only by a key on the revocation list (issue 7)
  'TRUST_STALE', // the revocation list expired and no fresh one could be had: nothing it covers is trusted (freeze attack)
  // Status tracker client (tracker/).
  'TRACKER_UNREACHABLE', // the status tracker server could not be reached or answered 5xx/429 (retried later)
  'TRACKER_REFUSED', // the status tracker server refused the request with a problem response (4xx)
  'PUSH_MALFORMED', // an MQTT push notification that is not the documented CBOR nudge (ignored)
  // Capability modules (capabilities/; seed 000, issue 8). Install refusals:
  'CAP_TOO_LARGE', // envelope, module or detached payload above the device's bound
  'CAP_ENVELOPE_INVALID', // not a module envelope of the capability profile (structure, components, metadata)
  'CAP_SIGNATURE', // unsigned, or no signature verifies with a key of the capability manifest (MF §8.3)
  'CAP_KEY_NOT_AUTHORIZED', // signed by a capability key the capability manifest does not allow for this name (MF §9)
  'CAP_NOT_AUTHORIZED', // the capability manifest does not list this capability / version / digest (seed 000 §1)
  'CAP_REVOKED', // the module's digest is on the revocation list (seed 000 step 7)
  'CAP_INCOMPATIBLE', // device class or firmware version outside the module's compatibility metadata
  'CAP_DEPENDENCY', // a dependency is not active in a compatible version, or the swap would break a dependent
  'CAP_DEPENDED_ON', // unload refused: another active module depends on this capability
  'CAP_OVER_LIMIT', // resource limits (memory pages, call time, I/O size) above the device's policy or undeclared
  'CAP_PERMISSION', // metadata declares a host function the device does not offer
  'CAP_UNDECLARED_IMPORT', // the binary imports something its metadata does not declare
  'CAP_ABI', // the binary does not follow the module ABI (exports, signatures, import kinds)
  'CAP_ROLLBACK', // sequence number not above the installed one (MF §8.4.2)
  'CAP_DECRYPT', // the content key could not be unwrapped or the ciphertext failed authentication (ENC §4)
  'CAP_DIGEST', // the decrypted module does not match its signed image-digest (MF §8.4.9.2)
  'CAP_COMPILE', // WebAssembly validation/compilation failed
  'CAP_HEALTH', // instantiation or the health check in the sandbox failed
  'CAP_BUSY', // another install, revert or unload of the same capability is in progress
  'CAP_MANIFEST_REJECTED', // a capability-manifest update was refused (reason in the message / cause)
  'CAP_REVOCATION_REJECTED', // a revocation-list update was refused (reason in the message / cause)
  'CAP_REVOCATION_STALE', // the policy requires a current revocation list and none in force is unexpired
  // Capability calls:
  'CAP_NOT_LOADED', // no active module for the capability
  'CAP_INPUT_TOO_LARGE', // call input above the module's I/O limit
  'CAP_MODULE_ERROR', // the module answered with an error status (the module stays active)
  'CAP_TRAPPED', // the module trapped: stopped, rolled back to the previous version
  'CAP_TIMEOUT', // a call exceeded the module's time limit: worker terminated, rolled back
  'CAP_CRASHED', // the sandbox worker died (e.g. its heap limit): rolled back
] as const;

export type DeviceErrorCode = (typeof DEVICE_ERROR_CODES)[number];

const CODES: ReadonlySet<string> = new Set(DEVICE_ERROR_CODES);

export function isDeviceErrorCode(s: unknown): s is DeviceErrorCode {
  return typeof s === 'string' && CODES.has(s);
}

export class DeviceError extends Error {
  override readonly name = 'DeviceError';
  readonly code: DeviceErrorCode;
  /** True when the error was reported by the other side of the queue. */
  readonly remote: boolean;

  constructor(code: DeviceErrorCode, message: string, options?: { cause?: unknown; remote?: boolean }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.remote = options?.remote ?? false;
  }
}

export function isDeviceError(e: unknown): e is DeviceError {
  return e instanceof DeviceError;
}

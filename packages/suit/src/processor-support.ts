/**
 * Support code for the SUIT manifest processor (processor.ts / processor-exec.ts): digests, constant-time
 * comparison, version comparison, the minimal dependency-envelope reader, and the processor's option types.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { CborMap, CborTag, bstrHead, decode } from '@rotor/cose';
import { SuitError } from './errors.ts';
import type { ComponentId, SuitEnvelope } from './model.ts';
import type { Platform } from './platform.ts';

/** Hash functions for SUIT_Digest algorithm ids (MF §8.3: SHA-256 mandatory; SHAKE128, SHA-384, SHA-512, SHAKE256). */
export function computeDigest(alg: number, data: Uint8Array): Uint8Array | undefined {
  switch (alg) {
    case -16:
      return createHash('sha256').update(data).digest();
    case -43:
      return createHash('sha384').update(data).digest();
    case -44:
      return createHash('sha512').update(data).digest();
    case -18:
      return createHash('shake128', { outputLength: 32 }).update(data).digest();
    case -45:
      return createHash('shake256', { outputLength: 64 }).update(data).digest();
    default:
      return undefined;
  }
}

/** Constant-time equality (length is not secret; contents are compared without early exit). */
export function ctEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  return timingSafeEqual(a, b);
}

/**
 * Matches `value` against every candidate without an early exit (constant time in the position of a match).
 */
export function ctMatchAny(value: Uint8Array, candidates: readonly Uint8Array[]): boolean {
  let found = false;
  for (const c of candidates) {
    const eq = ctEqual(value, c);
    found = found || eq;
  }
  return found;
}

/**
 * Version comparison (draft-ietf-suit-update-management, suit-condition-version): element-wise over the
 * manifest's integers; missing device elements count as 0, so a release (…,0) sorts above its pre-releases
 * (-1 rc, -2 beta, -3 alpha). Comparison stops after the manifest's integers. Returns <0, 0, >0 (device vs manifest).
 */
export function compareVersion(device: readonly number[], manifest: readonly number[]): number {
  for (let i = 0; i < manifest.length; i++) {
    const d = device[i] ?? 0;
    const m = manifest[i] ?? 0;
    if (d !== m) return d < m ? -1 : 1;
  }
  return 0;
}

/** Applies a version comparison type (1 greater, 2 ≥, 3 equal, 4 ≤, 5 lesser) to a device-vs-manifest result. */
export function versionMatches(comparison: number, cmp: number): boolean {
  switch (comparison) {
    case 1:
      return cmp > 0;
    case 2:
      return cmp >= 0;
    case 3:
      return cmp === 0;
    case 4:
      return cmp <= 0;
    case 5:
      return cmp < 0;
    default:
      return false;
  }
}

/**
 * The bstr-wrapped manifest of a stored dependency envelope, head included — what image-match on a dependency
 * component hashes (TD §5.2.2: "the digest MUST be computed over just the bstr-wrapped SUIT_Manifest").
 * Only the outer structure is read; authentication happens in dependency-integrity / process-dependency.
 */
export function dependencyManifestBstr(envelopeBytes: Uint8Array): Uint8Array | undefined {
  let v: unknown;
  try {
    v = decode(envelopeBytes, { sortedKeys: false });
  } catch {
    return undefined;
  }
  if (v instanceof CborTag && v.tag === 107) v = v.value;
  if (!(v instanceof CborMap)) return undefined;
  const m = v.get(3);
  if (!(m instanceof Uint8Array)) return undefined;
  const head = bstrHead(m.length);
  const out = new Uint8Array(head.length + m.length);
  out.set(head);
  out.set(m, head.length);
  return out;
}

export interface ProcessorLimits {
  /** Most commands executed in one procedure, counting every per-component iteration (default 100000). */
  readonly maxSteps?: number;
  /** Deepest runtime nesting of try-each / run-sequence / process-dependency (default 24). */
  readonly maxNesting?: number;
  /** Deepest dependency chain (default 4). */
  readonly maxDependencyDepth?: number;
}

/** MF §8.4.6 Update / Invocation Procedures; TD §6 uninstall (the suit-uninstall sequence alone). */
export type Procedure = 'update' | 'invoke' | 'uninstall';

export interface ProcessorOptions {
  readonly platform: Platform;
  /**
   * Authenticates a dependency envelope (TD §5.5 step 3; e.g. the envelope decoder's authenticateEnvelope under
   * the device's trust policy). Must verify the authentication blocks and the manifest digest. Without it,
   * dependency-integrity and process-dependency fail.
   */
  readonly authenticateDependency?: (bytes: Uint8Array) => Promise<SuitEnvelope>;
  readonly limits?: ProcessorLimits;
  /** Report nonce (draft-ietf-suit-report §4). */
  readonly nonce?: Uint8Array;
  /** Rollback key for a root manifest without manifest-component-id (default: the empty identifier []). */
  readonly manifestKey?: ComponentId;
  /** Run validate (7) at the end of the update procedure (MF §8.4.6; default true). */
  readonly validateAfterInstall?: boolean;
  /**
   * Require suit-condition-dependency-integrity before process-dependency, as TD §5.5 says (default false:
   * a successful image-match on the dependency component in the same manifest context is accepted too, which the
   * published TD example "integrated dependency" relies on; the dependency is authenticated in either case).
   */
  readonly strictDependencyIntegrity?: boolean;
  /** MF §6.2 SHOULD: require vendor- and class-identifier checks in the shared sequence (default false). */
  readonly requireIdentityChecks?: boolean;
  /**
   * Handler for custom commands (code < -256, MF §8.4.7). Returns true on success, false for a failed condition.
   * Without it a custom command is unsupported and aborts.
   */
  readonly customCommand?: (code: number, arg: unknown, component: ComponentId) => Promise<boolean>;
}

/** Wraps anything thrown by a platform call as a SuitError with the given code, keeping SuitErrors as they are. */
export function asSuitError(
  e: unknown,
  code: 'SUIT_OPERATION_FAILED' | 'SUIT_DECRYPT_FAILED' | 'SUIT_CONDITION_FAILED',
  what: string,
): SuitError {
  if (e instanceof SuitError) return e;
  const msg = e instanceof Error ? e.message : String(e);
  return new SuitError(code, `${what}: ${msg}`, undefined, { cause: e });
}

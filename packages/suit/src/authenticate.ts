/**
 * Envelope authentication under a trust policy (draft-ietf-suit-manifest-34 §6.2, §8.3, §9;
 * draft-ietf-suit-trust-domains-12 §5.4/§6 for dependencies).
 *
 * Order (MF §6.2 "authenticate before parsing"; MF §8.3):
 *  1. envelope structure + SUIT_Digest over the manifest bstr (head included), constant-time;
 *  2. at least one authentication block (else SUIT_UNAUTHENTICATED), each a COSE_Sign1 / COSE_Sign / COSE_Mac0
 *     whose detached payload is the encoded SUIT_Digest; at least one verifies with a trust anchor
 *     (else SUIT_AUTH_FAILED); required roles from distinct keys (else SUIT_MISSING_PARTY);
 *  3. only then the manifest is parsed, and every component must be within a valid signer's prefixes
 *     (else SUIT_SIGNER_UNAUTHORIZED).
 */
import {
  decodeMac0,
  decodeSign,
  decodeSign1,
  verifyMac0,
  verifySign1,
  verifySignature,
  type MacKey,
  type Verifier,
} from '@rotor/cose';
import {
  digestBstr,
  digestEquals,
  envelopeFrom,
  parseEnvelopeOuter,
  parseManifest,
  type DecodeEnvelopeOptions,
  type EnvelopeOuter,
} from './decode.ts';
import { SuitError } from './errors.ts';
import type { SuitDigest, SuitEnvelope } from './model.ts';
import {
  checkComponentsAuthorized,
  checkRequiredRoles,
  type TrustAnchor,
  type TrustPolicy,
  type Verification,
} from './policy.ts';

export type AuthenticateOptions = DecodeEnvelopeOptions;

export interface AuthenticatedEnvelope {
  readonly envelope: SuitEnvelope;
  /** The trust anchors with at least one valid authentication block, in order of first verification. */
  readonly signers: readonly TrustAnchor[];
}

// ---------------------------------------------------------------------------------------------------------
// Anchor selection

/** Signature algorithms that verify with the same key (ES256/ESP256 on P-256; EdDSA/Ed25519 on Ed25519). */
function sigFamily(alg: number): number {
  if (alg === -7 || alg === -9) return -9;
  if (alg === -8 || alg === -19) return -19;
  return alg;
}

function kidEquals(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * Anchors to try for a block: type- and algorithm-compatible keys; when the block names a kid, the anchors
 * with that kid (or, failing any, the anchors without a kid). With `all` (required roles), every compatible
 * anchor is tried so that one key registered under two names is recognised as one party.
 */
function candidates(
  policy: TrustPolicy,
  kind: 'sig' | 'mac',
  alg: number | undefined,
  kid: Uint8Array | undefined,
  all: boolean,
): TrustAnchor[] {
  const out: TrustAnchor[] = [];
  const noKid: TrustAnchor[] = [];
  for (const a of policy.anchors) {
    const key: Verifier | MacKey | undefined = kind === 'sig' ? a.verifier : a.macKey;
    if (key === undefined) continue;
    if (alg !== undefined && (kind === 'sig' ? sigFamily(key.alg) !== sigFamily(alg) : key.alg !== alg))
      continue;
    if (all || kid === undefined) out.push(a);
    else if (key.kid === undefined) noKid.push(a);
    else if (kidEquals(key.kid, kid)) out.push(a);
  }
  return out.length > 0 || all ? out : noKid;
}

// ---------------------------------------------------------------------------------------------------------
// Block verification

const TAG_HEAD = { sign1: 0xd2, mac0: 0xd1 } as const; // tag 18, tag 17 as one-byte heads

interface BlockResult {
  readonly verifications: Verification[];
  readonly errors: unknown[];
}

/** The detached payload a block must carry, or refuse an attached one that differs (MF §8.3). */
function payloadFor(attached: Uint8Array | null, digestBytes: Uint8Array): Uint8Array | undefined {
  if (attached === null) return digestBytes;
  if (!kidEquals(attached, digestBytes)) {
    throw new SuitError(
      'SUIT_AUTH_FAILED',
      'authentication block carries a payload other than the SUIT_Digest',
      'envelope.authentication-wrapper',
    );
  }
  return undefined;
}

async function verifyBlocks(outer: EnvelopeOuter, policy: TrustPolicy): Promise<BlockResult> {
  const all = policy.requiredRoles !== undefined && policy.requiredRoles.length > 0;
  const opts = { allowedAlgs: policy.allowedAlgs };
  const verifications: Verification[] = [];
  const errors: unknown[] = [];
  let unit = 0;
  for (const block of outer.authBlocks) {
    try {
      const b0 = block[0];
      if (b0 === TAG_HEAD.sign1) {
        // COSE_Sign1_Tagged (18) (MF §8.3, RFC 9052 §4.2).
        const msg = decodeSign1(block, { tag: 'required' });
        const detachedPayload = payloadFor(msg.payload, outer.digestBytes);
        const u = unit++;
        if (!policy.allowedAlgs.has(msg.alg))
          throw new SuitError('SUIT_AUTH_FAILED', `algorithm ${msg.alg} is not allowed by the policy`);
        for (const a of candidates(policy, 'sig', msg.alg, msg.kid, all)) {
          try {
            verifySign1(
              msg,
              a.verifier!,
              detachedPayload === undefined ? opts : { ...opts, detachedPayload },
            );
            verifications.push({ anchor: a, unit: u });
            if (!all) break;
          } catch (e) {
            errors.push(e);
          }
        }
      } else if (b0 === TAG_HEAD.mac0) {
        // COSE_Mac0_Tagged (17) (MF §8.3, RFC 9052 §6.2).
        const msg = decodeMac0(block, { tag: 'required' });
        const detachedPayload = payloadFor(msg.payload, outer.digestBytes);
        const u = unit++;
        if (!policy.allowedAlgs.has(msg.alg))
          throw new SuitError('SUIT_AUTH_FAILED', `algorithm ${msg.alg} is not allowed by the policy`);
        for (const a of candidates(policy, 'mac', msg.alg, msg.kid, all)) {
          try {
            await verifyMac0(
              msg,
              a.macKey!,
              detachedPayload === undefined ? opts : { ...opts, detachedPayload },
            );
            verifications.push({ anchor: a, unit: u });
            if (!all) break;
          } catch (e) {
            errors.push(e);
          }
        }
      } else if (b0 === 0xd8 && block[1] === 98) {
        // COSE_Sign_Tagged (98): each signature is its own unit (MF §8.3, RFC 9052 §4.1).
        const msg = decodeSign(block, { tag: 'required' });
        const detachedPayload = payloadFor(msg.payload, outer.digestBytes);
        for (let i = 0; i < msg.signatures.length; i++) {
          const sig = msg.signatures[i]!;
          const u = unit++;
          if (!policy.allowedAlgs.has(sig.alg)) {
            errors.push(
              new SuitError('SUIT_AUTH_FAILED', `algorithm ${sig.alg} is not allowed by the policy`),
            );
            continue;
          }
          for (const a of candidates(policy, 'sig', sig.alg, sig.kid, all)) {
            try {
              verifySignature(
                msg,
                i,
                a.verifier!,
                detachedPayload === undefined ? opts : { ...opts, detachedPayload },
              );
              verifications.push({ anchor: a, unit: u });
              if (!all) break;
            } catch (e) {
              errors.push(e);
            }
          }
        }
      } else {
        // COSE_Mac (97) with recipients is not supported; anything else is not an authentication block.
        throw new SuitError(
          'SUIT_AUTH_FAILED',
          'authentication block is not a tagged COSE_Sign1, COSE_Sign or COSE_Mac0',
        );
      }
    } catch (e) {
      // A block that cannot be used (unknown algorithm during migration, malformed) does not stop the others
      // (MF §8.3: several blocks for algorithm agility); at least one must verify.
      errors.push(e);
    }
  }
  return { verifications, errors };
}

function describeError(e: unknown): string {
  if (e instanceof Error)
    return 'code' in e && typeof e.code === 'string' ? `${e.code}: ${e.message}` : e.message;
  return String(e);
}

/** Steps 2 of the module comment on an already-parsed outer envelope. Returns the valid signers. */
export async function authenticateOuter(outer: EnvelopeOuter, policy: TrustPolicy): Promise<TrustAnchor[]> {
  // MF §8.3: an envelope without an authentication block is unsigned and refused.
  if (outer.authBlocks.length === 0) {
    throw new SuitError(
      'SUIT_UNAUTHENTICATED',
      'the envelope has no authentication block',
      'envelope.authentication-wrapper',
    );
  }
  const { verifications, errors } = await verifyBlocks(outer, policy);
  if (verifications.length === 0) {
    const first = errors[0];
    throw new SuitError(
      'SUIT_AUTH_FAILED',
      errors.length === 0
        ? 'no trust anchor matches any authentication block'
        : `no authentication block verifies (${errors.slice(0, 3).map(describeError).join('; ')})`,
      'envelope.authentication-wrapper',
      first === undefined ? undefined : { cause: first },
    );
  }
  checkRequiredRoles(policy.requiredRoles, verifications);
  const signers: TrustAnchor[] = [];
  for (const v of verifications) if (!signers.includes(v.anchor)) signers.push(v.anchor);
  return signers;
}

/**
 * Authenticates an envelope under the policy, then parses and validates its manifest (MF §6.2, §8.3, §9).
 */
export async function authenticateEnvelope(
  bytes: Uint8Array,
  policy: TrustPolicy,
  opts: AuthenticateOptions = {},
): Promise<AuthenticatedEnvelope> {
  const outer = parseEnvelopeOuter(
    bytes,
    opts.verifyDigest === false ? { ...opts, verifyDigest: true } : opts,
  );
  const signers = await authenticateOuter(outer, policy);
  const manifest = parseManifest(outer.manifestBytes, outer.members, opts);
  checkComponentsAuthorized(manifest.common.components, signers);
  return { envelope: envelopeFrom(outer, manifest), signers };
}

export interface DependencyOptions extends AuthenticateOptions {
  /**
   * The dependent's image-digest for the dependency component: it must equal the digest of the dependency's
   * bstr-wrapped manifest (TD §5.1, §6.2 condition-dependency-integrity), else SUIT_DEPENDENCY_INVALID.
   */
  readonly expectedDigest?: SuitDigest;
}

/**
 * Authenticates a dependency envelope (TD §6.2 suit-condition-dependency-integrity): its own signature under
 * the policy, its manifest against its SUIT_Digest, and that digest against the dependent's image-digest.
 * Failures other than the reference mismatch keep their code; the processor maps them to an abort.
 */
export async function authenticateDependency(
  bytes: Uint8Array,
  policy: TrustPolicy,
  opts: DependencyOptions = {},
): Promise<AuthenticatedEnvelope> {
  const outer = parseEnvelopeOuter(
    bytes,
    opts.verifyDigest === false ? { ...opts, verifyDigest: true } : opts,
  );
  if (opts.expectedDigest !== undefined) {
    // The reference covers the dependency's manifest bstr, head included, not the whole envelope (TD §5.1).
    let actual: Uint8Array;
    try {
      actual = digestBstr(opts.expectedDigest.alg, outer.manifestBytes, 'image-digest');
    } catch (e) {
      throw new SuitError(
        'SUIT_DEPENDENCY_INVALID',
        'unsupported digest algorithm in the dependency reference',
        'image-digest',
        { cause: e },
      );
    }
    if (!digestEquals(opts.expectedDigest.bytes, actual)) {
      throw new SuitError(
        'SUIT_DEPENDENCY_INVALID',
        "the dependency's manifest does not match the dependent's image-digest",
        'image-digest',
      );
    }
  }
  const signers = await authenticateOuter(outer, policy);
  const manifest = parseManifest(outer.manifestBytes, outer.members, opts);
  checkComponentsAuthorized(manifest.common.components, signers);
  return { envelope: envelopeFrom(outer, manifest), signers };
}

/**
 * Authenticates the integrated dependency stored under text key `key` of an (authenticated) dependent
 * envelope (TD §5.4: the key equals the URI the dependent fetches).
 */
export async function authenticateIntegratedDependency(
  dependent: SuitEnvelope,
  key: string,
  policy: TrustPolicy,
  opts: DependencyOptions = {},
): Promise<AuthenticatedEnvelope> {
  const bytes = dependent.integrated.get(key);
  if (bytes === undefined) {
    throw new SuitError(
      'SUIT_DEPENDENCY_INVALID',
      `no integrated dependency under ${JSON.stringify(key)}`,
      `envelope[${JSON.stringify(key)}]`,
    );
  }
  return authenticateDependency(bytes, policy, opts);
}

/**
 * Two-party authorization across a dependency chain (draft-ietf-suit-trust-domains "TD" §5, §6; RFC 9019 §4
 * author + operator).
 *
 * A device that requires both an author and an operator accepts either
 *  - one envelope carrying both signatures (`rotor manifest sign` co-signing: the required roles on one manifest,
 *    draft-ietf-suit-manifest-34 §8.3), or
 *  - an operator-signed dependent whose dependency is author-signed (the fleet server's per-device envelopes,
 *    TD §5): each manifest is authenticated under its own signer's authority. The dependent needs every required
 *    role except author; each dependency it processes needs an author signature (TD §5.6.3
 *    condition-dependency-integrity). The operator may only override parameters (uri, encryption-info, TD
 *    §5.6.1); the images are the author's: every firmware image a dependent installs or boots must equal an
 *    image-digest the author's manifest declares for that component (MF §8.4.8.6).
 *
 * Shape of the chain (this device's profile of TD §5): an operator-signed dependent declares exactly one dependency
 * (the author's envelope) — zero leaves the author's role unfilled, two would let one operator manifest combine
 * author manifests (SUIT_DEPENDENCY_INVALID, refused before anything is fetched or written). The author and the
 * operator are distinct parties (RFC 9019 §4): the key that signed the dependency as author must not also verify
 * the dependent's operator signature (a key registered under both roles would otherwise fill both through a
 * chain, which a co-signed envelope already refuses: @rotor/suit checkRequiredRoles) — SUIT_MISSING_PARTY.
 *
 * The anti-rollback key and sequence number of a dependent's bank are the author's (the firmware's version is the
 * author's, TD §5.2.1 leaves the dependent's own counter to the dependent's identifier).
 */
import {
  authenticateDependency,
  authenticateEnvelope,
  dependencyComponentId,
  hasCommand,
  SuitError,
  type ComponentId,
  type SuitCommand,
  type SuitDigest,
  type SuitEnvelope,
  type SuitManifest,
  type TrustAnchor,
  type TrustPolicy,
} from '@rotor/suit';
import { componentKey } from '../flash/flash.ts';

const AUTHOR = 'author';
const OPERATOR = 'operator';
const SHA256 = -16;

export interface AuthenticatedUpdate {
  /** The envelope as received (the distinct-party check verifies its signatures again). */
  readonly bytes: Uint8Array;
  readonly envelope: SuitEnvelope;
  /** The policy each dependency of `envelope` must satisfy. */
  readonly dependencyPolicy: TrustPolicy;
  /**
   * True when the author's authority comes from a dependency (the outer has no author signature): the dependent
   * must process exactly one author-signed dependency, and the images must be that author's (module comment).
   */
  readonly authorFromDependency: boolean;
}

function withRoles(policy: TrustPolicy, roles: readonly string[]): TrustPolicy {
  return {
    anchors: policy.anchors,
    allowedAlgs: policy.allowedAlgs,
    ...(roles.length === 0 ? {} : { requiredRoles: roles }),
  };
}

/**
 * Authenticates an envelope under the device's required roles, as one co-signed envelope or as an operator-signed
 * dependent of an author-signed dependency (module comment). `policy` carries the device's required roles.
 */
export async function authenticateUpdate(
  bytes: Uint8Array,
  policy: TrustPolicy,
): Promise<AuthenticatedUpdate> {
  const roles = policy.requiredRoles ?? [];
  const dependencyPolicy = withRoles(policy, roles.includes(AUTHOR) ? [AUTHOR] : []);
  try {
    const { envelope } = await authenticateEnvelope(bytes, policy);
    return { bytes, envelope, dependencyPolicy, authorFromDependency: false };
  } catch (e) {
    if (!(e instanceof SuitError) || e.code !== 'SUIT_MISSING_PARTY') throw e;
    if (!roles.includes(AUTHOR) || !roles.includes(OPERATOR)) throw e;
    // TD §5: the author's authority may come from a dependency; the outer must carry every other role.
    const { envelope } = await authenticateEnvelope(
      bytes,
      withRoles(
        policy,
        roles.filter((r) => r !== AUTHOR),
      ),
    );
    const n = envelope.manifest.common.dependencies.length;
    // Without a dependency nobody fills the author's role (RFC 9019 §4): the original refusal stands.
    if (n === 0) throw e;
    if (n !== 1)
      throw new SuitError(
        'SUIT_DEPENDENCY_INVALID',
        `an operator-signed dependent must declare exactly one (author) dependency, not ${n} (TD §5.1, module comment)`,
      );
    return { bytes, envelope, dependencyPolicy, authorFromDependency: true };
  }
}

/**
 * RFC 9019 §4: author and operator are distinct parties. For a dependent whose author authority is a dependency,
 * refuses (SUIT_MISSING_PARTY) when a key that signed the dependency as author also verifies one of the
 * dependent's authentication blocks — the same key in both roles (module comment). No key material is compared:
 * a signature does not verify under two different keys.
 */
export async function requireDistinctParties(
  chain: AuthenticatedUpdate,
  dependencySigners: readonly TrustAnchor[],
): Promise<void> {
  if (!chain.authorFromDependency) return;
  const anchors: TrustAnchor[] = [];
  // Only the keys that signed the dependency *as author* (an author envelope the operator also co-signed is fine).
  for (const a of dependencySigners)
    if (a.role === AUTHOR && a.verifier !== undefined)
      anchors.push({ name: a.name, role: AUTHOR, verifier: a.verifier });
  if (anchors.length === 0) return;
  try {
    // requiredRoles: every anchor is tried on every block (@rotor/suit verifyBlocks), whatever the kids say.
    await authenticateEnvelope(chain.bytes, {
      anchors,
      allowedAlgs: chain.dependencyPolicy.allowedAlgs,
      requiredRoles: [AUTHOR],
    });
  } catch (e) {
    if (e instanceof SuitError) return; // no author key verifies the dependent: distinct parties
    throw e;
  }
  throw new SuitError(
    'SUIT_MISSING_PARTY',
    "the dependency's author key also signed the dependent: author and operator need distinct keys (RFC 9019 §4)",
  );
}

/** Component identifiers of a manifest's dependencies, as the processor names them (TD §5.1). */
export function dependencyComponents(m: SuitManifest): ComponentId[] {
  return m.common.dependencies.map((d) => dependencyComponentId(d.prefix, [], d.index));
}

/** MF §6.2: the shared sequence checks vendor and class identifiers (as the processor's requireIdentityChecks). */
export function hasIdentityChecks(m: SuitManifest): boolean {
  const s = m.common.sharedSequence?.commands;
  return s !== undefined && hasCommand(s, 1) && hasCommand(s, 2);
}

/**
 * image-digest values (MF §8.4.8.6) a manifest sets, by component index, from its shared sequence and then the
 * given sections, in order (later values win, as when the sequences run). try-each alternatives are not followed.
 */
export function declaredDigests(
  m: SuitManifest,
  sections: readonly ('install' | 'validate')[] = [],
): Map<number, SuitDigest> {
  const count = Math.max(m.common.components.length, ...m.common.dependencies.map((d) => d.index + 1));
  const out = new Map<number, SuitDigest>();
  const walk = (cmds: readonly SuitCommand[], current: readonly number[]): readonly number[] => {
    let cur = current;
    for (const c of cmds) {
      if (c.op === 'set-component-index')
        cur = c.index === true ? Array.from({ length: count }, (_, i) => i) : [...c.index];
      else if (c.op === 'params') {
        const v = c.params.get(3);
        if (v?.type === 'digest') for (const i of cur) if (c.code === 20 || !out.has(i)) out.set(i, v.digest);
      } else if (c.op === 'run-sequence') cur = walk(c.sequence, cur);
    }
    return cur;
  };
  if (m.common.sharedSequence !== undefined) walk(m.common.sharedSequence.commands, [0]);
  for (const s of sections) {
    const seq =
      s === 'validate' ? m.validate : m.install?.state === 'severed-absent' ? undefined : m.install?.value;
    if (seq !== undefined) walk(seq.commands, [0]);
  }
  return out;
}

/**
 * TD §5/§6: the operator may only override parameters; every firmware image of a dependent's bank must equal the
 * SHA-256 image-digest the author's manifest (`author`) declares for its component (SUIT_SIGNER_UNAUTHORIZED
 * otherwise).
 */
export function checkAuthorImages(
  author: SuitEnvelope,
  images: readonly { component: ComponentId; sha256: Uint8Array }[],
): void {
  const declared = declaredDigests(author.manifest);
  const byKey = new Map<string, SuitDigest>();
  for (const [i, d] of declared) {
    const c = author.manifest.common.components[i];
    if (c !== undefined) byKey.set(componentKey(c), d);
  }
  for (const img of images) {
    const d = byKey.get(componentKey(img.component));
    if (d?.alg !== SHA256 || Buffer.compare(d.bytes, img.sha256) !== 0)
      throw new SuitError(
        'SUIT_SIGNER_UNAUTHORIZED',
        `image ${componentKey(img.component)} is not the author's (TD §5.6.1: the operator may only override parameters, the image digest is the author's)`,
      );
  }
}

/**
 * Authenticates a stored dependency at boot: its own author signature under `policy` and its manifest digest
 * against the image-digest the (authenticated) dependent declares for it (TD §5.6.3, §6.2).
 */
export async function authenticateStoredDependency(
  dependent: SuitEnvelope,
  component: ComponentId,
  bytes: Uint8Array,
  policy: TrustPolicy,
): Promise<{ envelope: SuitEnvelope; signers: readonly TrustAnchor[] }> {
  const m = dependent.manifest;
  const key = componentKey(component);
  const comps = dependencyComponents(m);
  const at = comps.findIndex((c) => componentKey(c) === key);
  const dep = m.common.dependencies[at];
  if (dep === undefined)
    throw new SuitError('SUIT_DEPENDENCY_INVALID', `${key} is not a dependency of the stored manifest`);
  const expectedDigest = declaredDigests(m, ['install', 'validate']).get(dep.index);
  if (expectedDigest === undefined)
    throw new SuitError('SUIT_DEPENDENCY_INVALID', `the dependent declares no image-digest for ${key}`);
  return authenticateDependency(bytes, policy, { expectedDigest });
}

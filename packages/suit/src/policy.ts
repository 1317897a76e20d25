/**
 * Trust policy: which keys may authorise which manifests (draft-ietf-suit-manifest-34 §9 access-control models:
 * a single trusted key, or ACLs by component-identifier prefix; RFC 9019 §4 roles author / device operator;
 * RFC 9124 REQ.SEC.ACCESS_CONTROL 4.3.13 and REQ.SEC.RIGHTS).
 */
import type { MacKey, Verifier } from '@rotor/cose';
import { SuitError } from './errors.ts';
import type { ComponentId } from './model.ts';

/** A role name. 'author' and 'operator' are the RFC 9019 roles; deployments may add their own. */
export type TrustRole = 'author' | 'operator' | (string & NonNullable<unknown>);

export interface TrustAnchor {
  readonly name: string;
  readonly role: TrustRole;
  /** Public key for COSE_Sign1 / COSE_Sign blocks. */
  readonly verifier?: Verifier;
  /** Symmetric key for COSE_Mac0 blocks. */
  readonly macKey?: MacKey;
  /**
   * Components this key may authorise, by component-identifier prefix (MF §9, ACL model 2). Undefined = all
   * components; an empty list = none.
   */
  readonly componentPrefixes?: readonly ComponentId[];
}

export interface TrustPolicy {
  readonly anchors: readonly TrustAnchor[];
  /** COSE algorithms accepted in authentication blocks (e.g. ES256, ESP256, HMAC 256/256). */
  readonly allowedAlgs: ReadonlySet<number>;
  /**
   * Roles that must each be covered by a valid authentication block from a distinct key, e.g.
   * ['author', 'operator'] for operator approval (RFC 9019 §4); else SUIT_MISSING_PARTY.
   */
  readonly requiredRoles?: readonly string[];
}

/** Whether `prefix` is a prefix of `component`, element by element (MF §9, TD §5.1 dependency prefixes). */
export function componentHasPrefix(component: ComponentId, prefix: ComponentId): boolean {
  if (prefix.length > component.length) return false;
  for (let i = 0; i < prefix.length; i++) {
    const a = prefix[i]!;
    const b = component[i]!;
    if (a.length !== b.length) return false;
    for (let j = 0; j < a.length; j++) if (a[j] !== b[j]) return false;
  }
  return true;
}

/** Whether the anchor may authorise the component (MF §9 access control by component prefix). */
export function anchorCovers(anchor: TrustAnchor, component: ComponentId): boolean {
  const prefixes = anchor.componentPrefixes;
  return prefixes === undefined || prefixes.some((p) => componentHasPrefix(component, p));
}

function showComponent(c: ComponentId): string {
  return `[${c.map((b) => `h'${Buffer.from(b).toString('hex')}'`).join(', ')}]`;
}

/**
 * Every component must be covered by at least one valid signer (MF §9 ACL model; RFC 9124 REQ.SEC.RIGHTS):
 * otherwise SUIT_SIGNER_UNAUTHORIZED.
 */
export function checkComponentsAuthorized(
  components: readonly ComponentId[],
  signers: readonly TrustAnchor[],
): void {
  for (let i = 0; i < components.length; i++) {
    const c = components[i]!;
    if (!signers.some((s) => anchorCovers(s, c))) {
      throw new SuitError(
        'SUIT_SIGNER_UNAUTHORIZED',
        `no valid signer (${signers.map((s) => s.name).join(', ')}) may authorise component ${showComponent(c)}`,
        `envelope.manifest.common.components[${i}]`,
      );
    }
  }
}

/** One successful verification: an anchor whose key verified authentication unit `unit` (a block or a COSE_Sign signature). */
export interface Verification {
  readonly anchor: TrustAnchor;
  readonly unit: number;
}

/**
 * Required roles (RFC 9019 §4 author + operator): each listed role needs its own key among the valid
 * verifications, else SUIT_MISSING_PARTY.
 *
 * Keys are told apart without access to key material: anchors that verified the same unit hold the same key
 * (a signature or MAC tag does not verify under two different keys), so they are merged into one party; a
 * party then fills at most one role slot (bipartite matching of role slots to parties). The caller tries every
 * type-compatible anchor on every unit when roles are required, so that a key registered twice is detected.
 */
export function checkRequiredRoles(
  required: readonly string[] | undefined,
  verifications: readonly Verification[],
): void {
  if (required === undefined || required.length === 0) return;
  // Union-find over anchors: same unit ⇒ same key.
  const parent = new Map<TrustAnchor, TrustAnchor>();
  const find = (a: TrustAnchor): TrustAnchor => {
    let r = a;
    for (let p = parent.get(r); p !== undefined && p !== r; p = parent.get(r)) r = p;
    parent.set(a, r);
    return r;
  };
  const firstOfUnit = new Map<number, TrustAnchor>();
  for (const v of verifications) {
    if (!parent.has(v.anchor)) parent.set(v.anchor, v.anchor);
    const first = firstOfUnit.get(v.unit);
    if (first === undefined) firstOfUnit.set(v.unit, v.anchor);
    else parent.set(find(v.anchor), find(first));
  }
  // party (root anchor) → roles proved by its key
  const partyRoles = new Map<TrustAnchor, Set<string>>();
  for (const v of verifications) {
    const root = find(v.anchor);
    let s = partyRoles.get(root);
    if (s === undefined) partyRoles.set(root, (s = new Set()));
    s.add(v.anchor.role);
  }
  const parties = [...partyRoles.keys()];
  const owner = new Map<TrustAnchor, number>(); // party → role slot
  const assign = (slot: number, seen: Set<TrustAnchor>): boolean => {
    for (const p of parties) {
      if (seen.has(p) || partyRoles.get(p)?.has(required[slot]!) !== true) continue;
      seen.add(p);
      const prev = owner.get(p);
      if (prev === undefined || assign(prev, seen)) {
        owner.set(p, slot);
        return true;
      }
    }
    return false;
  };
  for (let slot = 0; slot < required.length; slot++) {
    if (!assign(slot, new Set())) {
      throw new SuitError(
        'SUIT_MISSING_PARTY',
        `the policy requires roles [${required.join(', ')}] from distinct keys; no distinct valid signature for '${required[slot]!}'`,
        'envelope.authentication-wrapper',
      );
    }
  }
}

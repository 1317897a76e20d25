/**
 * The device's trust anchors (issue 7; seed 001 §4 "new root key signed by a trusted authority"; TUF §5.3.4):
 * the current anchor set is one blob in the device's AtomicStore, replaced atomically (power loss leaves the old
 * set or the new one, never a mix). Updates are fetched as every statement newer than the device's version and
 * walked strictly in order, each checked against its predecessor (@rotor/trust applyAnchorStatement); the
 * device's SUIT trust policy is rebuilt from the current set only, so a rotated-out key stops being trusted.
 */
import { verifierFromCoseKey } from '@rotor/cose';
import type { TrustAnchor, TrustPolicy } from '@rotor/suit';
import { initialAnchorSet, walkAnchorStatements, type AnchorSet, type TrustError } from '@rotor/trust';
import type { AtomicStore } from '../storage/atomic.ts';

export const ANCHORS_BLOB = 'trust-anchors';

/** The distribution point (the server's /d/v1/trust-anchors over mutual TLS). */
export interface AnchorSource {
  /** Every statement with a version greater than `version`, any order. */
  statementsAfter(version: number): Promise<Uint8Array[]>;
}

export interface AnchorUpdate {
  readonly from: number;
  readonly to: number;
  /** Set when a statement was refused; the versions before it were applied (and persisted). */
  readonly error?: TrustError;
}

export class DeviceAnchors {
  readonly #store: AtomicStore;
  readonly #algs: ReadonlySet<number>;
  #set: AnchorSet;

  private constructor(store: AtomicStore, algs: ReadonlySet<number>, set: AnchorSet) {
    this.#store = store;
    this.#algs = algs;
    this.#set = set;
  }

  /**
   * Opens the anchors: the persisted set if any, else the factory-provisioned statement (pinned at provisioning,
   * it must still carry its own root threshold). The persisted set was verified before it was written; it is
   * re-checked against its own root threshold so a corrupted blob is refused rather than trusted.
   */
  static async open(
    store: AtomicStore,
    provisioned: Uint8Array,
    allowedAlgs: ReadonlySet<number>,
  ): Promise<DeviceAnchors> {
    const stored = await store.get(ANCHORS_BLOB);
    const set = initialAnchorSet(stored ?? provisioned, allowedAlgs);
    if (stored === undefined) await store.put(ANCHORS_BLOB, set.bytes);
    return new DeviceAnchors(store, allowedAlgs, set);
  }

  get current(): AnchorSet {
    return this.#set;
  }

  /**
   * Fetches the statements newer than the device's and walks them in order (TUF §5.3.4); the last good set is
   * persisted atomically before it is used.
   */
  async update(source: AnchorSource): Promise<AnchorUpdate> {
    const from = this.#set.version;
    const statements = await source.statementsAfter(from);
    const r = walkAnchorStatements(this.#set, statements, this.#algs);
    if (r.set.version !== from) {
      await this.#store.put(ANCHORS_BLOB, r.set.bytes);
      this.#set = r.set;
    }
    return r.error === undefined ? { from, to: r.set.version } : { from, to: r.set.version, error: r.error };
  }

  /**
   * The SUIT trust policy from the current set only (RFC 9019 §4 roles author / operator): keys rotated out of the
   * set are simply absent, so envelopes they sign are refused (SUIT_UNKNOWN_KEY / no valid signer).
   */
  trustPolicy(opts: { allowedAlgs: ReadonlySet<number>; requiredRoles?: readonly string[] }): TrustPolicy {
    const anchors: TrustAnchor[] = [];
    for (const role of ['author', 'operator'] as const) {
      for (const [i, k] of this.#set.role(role).entries()) {
        anchors.push({ name: `${role}-${i}`, role, verifier: verifierFromCoseKey(k.key) });
      }
    }
    return opts.requiredRoles === undefined
      ? { anchors, allowedAlgs: opts.allowedAlgs }
      : { anchors, allowedAlgs: opts.allowedAlgs, requiredRoles: opts.requiredRoles };
  }

  /** DER certificates of the server CA role (for the device's TLS trust store). */
  serverCaCertificates(): Uint8Array[] {
    return this.#set.role('server-ca').flatMap((k) => (k.certificate === undefined ? [] : [k.certificate]));
  }
}

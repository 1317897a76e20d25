/**
 * The device's revocation list (issue 7; seed 001 §4 "Revocation List Management", §1 "storage for … revocation
 * lists"): the newest verified list is one blob in the device's AtomicStore. It is consulted at every
 * verification: the SUIT trust policy handed to the envelope processor leaves out revoked signing keys.
 *
 * Freeze attack (TUF §5.3.8 / §5.4.2 — an attacker replays an old, still-signed list to hide a revocation): the
 * list expires; a device whose list has expired asks for a fresh one before trusting anything the list could
 * affect, and if it cannot get one it trusts nothing (RVL_EXPIRED) rather than fall back to the stale list.
 *
 * The revocation authority's keys are the "revocation" role of the device's trust anchors (anchors.ts), so they
 * rotate with the anchors.
 */
import {
  bytesEqual,
  RevokedKind,
  TrustError,
  verifyTrustRevocationList,
  type TrustRevocationList,
} from '@rotor/trust';
import type { TrustPolicy } from '@rotor/suit';
import type { AtomicStore } from '../storage/atomic.ts';
import type { DeviceAnchors } from './anchors.ts';

export const REVOCATION_BLOB = 'revocation-list';
export const REVOCATION_ROLE = 'revocation';

/** The distribution point (the server's /d/v1/revocation over mutual TLS). */
export interface RevocationSource {
  /** The newest list the server holds, or undefined if it has none. */
  latest(): Promise<Uint8Array | undefined>;
}

export class DeviceRevocation {
  readonly #store: AtomicStore;
  readonly #anchors: DeviceAnchors;
  readonly #algs: ReadonlySet<number>;
  readonly #now: () => number;
  #list: TrustRevocationList | undefined;

  private constructor(
    store: AtomicStore,
    anchors: DeviceAnchors,
    algs: ReadonlySet<number>,
    now: () => number,
  ) {
    this.#store = store;
    this.#anchors = anchors;
    this.#algs = algs;
    this.#now = now;
  }

  /** `now` in seconds since the Unix epoch. The stored list is re-verified (it may have expired meanwhile). */
  static async open(
    store: AtomicStore,
    anchors: DeviceAnchors,
    opts: { allowedAlgs: ReadonlySet<number>; now: () => number },
  ): Promise<DeviceRevocation> {
    const r = new DeviceRevocation(store, anchors, opts.allowedAlgs, opts.now);
    const stored = await store.get(REVOCATION_BLOB);
    if (stored !== undefined) {
      try {
        r.#list = r.#verify(stored, undefined, true);
      } catch {
        // Signed by an authority rotated out of the anchors since, or corrupted: as if absent (refresh needed).
        r.#list = undefined;
      }
    }
    return r;
  }

  get list(): TrustRevocationList | undefined {
    return this.#list;
  }

  /** Whether a list is held and has not expired (no refresh needed before trusting what it covers). */
  isFresh(): boolean {
    return this.#list !== undefined && !this.#list.expired(this.#now());
  }

  #verify(bytes: Uint8Array, currentVersion: number | undefined, allowExpired: boolean): TrustRevocationList {
    return verifyTrustRevocationList(bytes, {
      verifiers: this.#anchors.current.verifiers(REVOCATION_ROLE),
      allowedAlgs: this.#algs,
      now: this.#now(),
      ...(currentVersion === undefined ? {} : { currentVersion }),
      allowExpired,
    });
  }

  /** Fetches the server's newest list; a newer valid one replaces the held one (persisted before use). */
  async refresh(source: RevocationSource): Promise<TrustRevocationList | undefined> {
    const bytes = await source.latest();
    if (bytes === undefined || (this.#list !== undefined && bytesEqual(bytes, this.#list.bytes)))
      return this.#list;
    const next = this.#verify(bytes, this.#list?.version, false);
    await this.#store.put(REVOCATION_BLOB, next.bytes);
    this.#list = next;
    return next;
  }

  /**
   * The list, fresh: refreshed first if absent or expired. Throws RVL_EXPIRED when no unexpired list can be had —
   * the caller must then trust nothing the list covers (freeze attack).
   */
  async fresh(source: RevocationSource): Promise<TrustRevocationList> {
    let l = this.#list;
    if (l === undefined || l.expired(this.#now())) {
      try {
        l = await this.refresh(source);
      } catch (e) {
        throw new TrustError(
          'RVL_EXPIRED',
          'revocation list expired and no fresh one could be verified',
          undefined,
          {
            cause: e,
          },
        );
      }
    }
    if (l === undefined || l.expired(this.#now()))
      throw new TrustError(
        'RVL_EXPIRED',
        'revocation list expired or absent: refresh before trusting anything',
      );
    return l;
  }

  /** Whether `id` is revoked as `kind`, by a fresh list. */
  async isRevoked(source: RevocationSource, kind: RevokedKind, id: Uint8Array): Promise<boolean> {
    return (await this.fresh(source)).has(kind, id);
  }

  /**
   * The SUIT trust policy for one verification: the current anchors minus revoked signing keys, by a fresh list.
   * An envelope signed only by a revoked key then finds no anchor and is refused by authenticateEnvelope.
   */
  async trustPolicy(
    source: RevocationSource,
    opts: { allowedAlgs: ReadonlySet<number>; requiredRoles?: readonly string[] },
  ): Promise<TrustPolicy> {
    const l = await this.fresh(source);
    const base = this.#anchors.trustPolicy(opts);
    return {
      ...base,
      anchors: base.anchors.filter(
        (a) => a.verifier?.kid === undefined || !l.has(RevokedKind.signingKey, a.verifier.kid),
      ),
    };
  }
}

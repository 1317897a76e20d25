/**
 * The device's current trust, as the agent uses it for every update (issue 7: revocation lists "checked at every
 * verification"; trust anchors rotate, and "old keys stop being trusted once rotated out").
 *
 * An update envelope is authenticated against the current trust-anchor set (anchors.ts: a key rotated out of the
 * set is simply absent) minus the signing keys on a *fresh* revocation list (revocation.ts). A list that has
 * expired is refreshed from the server first; if no fresh list can be had the update is refused with
 * TRUST_STALE rather than verified against the stale list (TUF §5.3.8 / §5.4.2 freeze attack). An envelope whose
 * only valid signature is by a revoked key is refused with SIGNER_REVOKED (established by verifying it against
 * the revoked keys, never by trusting the kid the envelope names).
 *
 * Pull and push (issue 7 "distributed to devices (pull and push)"): the check-in response carries the server's
 * newest anchor and revocation-list versions, and an MQTT nudge makes the device check in at once; `sync` fetches
 * whatever is newer than what the device holds (or a list to replace an expired one).
 */
import { decodeCoseKey, encodeCoseKey } from '@rotor/cose';
import { authenticateEnvelope, SuitError, type TrustPolicy } from '@rotor/suit';
import { bytesEqual, coseKeyThumbprint } from '@rotor/trust';
import { authenticateUpdate, type AuthenticatedUpdate } from '../boot/chain.ts';
import { DeviceError } from '../errors.ts';
import type { AnchorRecord } from '../flash/nvstate.ts';
import type { AnchorSource, AnchorUpdate, DeviceAnchors } from './anchors.ts';
import type { DeviceRevocation, RevocationSource } from './revocation.ts';

export type TrustSource = AnchorSource & RevocationSource;

/** The newest versions the server holds (check-in response `trust`; 0 = none). */
export interface TrustVersions {
  readonly anchors: number;
  readonly revocation: number;
}

export interface TrustSync {
  readonly anchors: AnchorUpdate | undefined;
  /** The version of the list held after the sync (undefined: none). */
  readonly revocation: number | undefined;
  /** What failed (the other half may still have succeeded); the device retries at its next check-in. */
  readonly errors: readonly Error[];
}

export class DeviceTrust {
  readonly anchors: DeviceAnchors;
  readonly revocation: DeviceRevocation;
  readonly #algs: ReadonlySet<number>;
  /** Where anchors and lists come from (the tracker sets its mutual-TLS source when none is given). */
  source: TrustSource | undefined;

  constructor(
    anchors: DeviceAnchors,
    revocation: DeviceRevocation,
    opts: { allowedAlgs: ReadonlySet<number>; source?: TrustSource },
  ) {
    this.anchors = anchors;
    this.revocation = revocation;
    this.#algs = opts.allowedAlgs;
    this.source = opts.source;
  }

  #source(): TrustSource {
    if (this.source === undefined)
      throw new DeviceError('TRUST_STALE', 'no source for trust anchors and revocation lists');
    return this.source;
  }

  /**
   * Fetches what is newer than the device's: anchors first (the revocation authority is an anchor role, so a list
   * signed by a newly rotated-in authority verifies), then the list. Without `versions` (no hint from the server)
   * both are asked for. A list that has expired is always asked for.
   */
  async sync(versions?: TrustVersions): Promise<TrustSync> {
    const src = this.#source();
    const errors: Error[] = [];
    let anchors: AnchorUpdate | undefined;
    if (versions === undefined || versions.anchors > this.anchors.current.version) {
      try {
        anchors = await this.anchors.update(src);
        if (anchors.error !== undefined) errors.push(anchors.error);
      } catch (e) {
        errors.push(e instanceof Error ? e : new Error(String(e)));
      }
    }
    const held = this.revocation.list?.version ?? 0;
    const want =
      versions === undefined ||
      versions.revocation > held ||
      (versions.revocation > 0 && !this.revocation.isFresh());
    if (want) {
      try {
        await this.revocation.refresh(src);
      } catch (e) {
        errors.push(e instanceof Error ? e : new Error(String(e)));
      }
    }
    return { anchors, revocation: this.revocation.list?.version, errors };
  }

  /**
   * The policy one update is authenticated against: current anchors minus revoked signing keys, by a fresh list
   * (refreshed first when expired). TRUST_STALE when no fresh list can be had.
   */
  async policy(requiredRoles: readonly string[]): Promise<{ policy: TrustPolicy; revoked: TrustPolicy }> {
    const opts = {
      allowedAlgs: this.#algs,
      ...(requiredRoles.length === 0 ? {} : { requiredRoles }),
    };
    let policy: TrustPolicy;
    try {
      // The source is asked for only when the held list must be refreshed: a fresh list needs no server.
      policy = await this.revocation.trustPolicy({ latest: () => this.#source().latest() }, opts);
    } catch (e) {
      if (e instanceof DeviceError) throw e;
      throw new DeviceError(
        'TRUST_STALE',
        'the revocation list has expired and no fresh one could be had: nothing it covers is trusted (freeze attack, TUF §5.3.8)',
        { cause: e },
      );
    }
    const all = this.anchors.trustPolicy(opts);
    const kept = new Set(policy.anchors.map((a) => a.name));
    const revoked: TrustPolicy = {
      anchors: all.anchors.filter((a) => !kept.has(a.name)),
      allowedAlgs: this.#algs,
    };
    return { policy, revoked };
  }

  /**
   * The boot stage's anchors after an update (the agent writes them with the install commit): the ones it holds
   * plus the current set's author and operator keys, so an image authenticated under a rotated-in key also passes
   * verified boot. Keys are only ever added here: an image installed under a key that was later rotated out stays
   * bootable (re-verifying installed images would brick a device whose firmware predates the rotation); the
   * rotated-out key can no longer authenticate an *update* (authenticate()).
   */
  bootAnchors(held: readonly AnchorRecord[]): AnchorRecord[] {
    const out = [...held];
    const kids = held.map((a) => {
      try {
        return coseKeyThumbprint(decodeCoseKey(a.key));
      } catch {
        return new Uint8Array(0);
      }
    });
    const set = this.anchors.current;
    for (const role of ['author', 'operator'] as const) {
      for (const [i, k] of set.role(role).entries()) {
        if (k.key.alg === undefined || kids.some((x) => bytesEqual(x, k.kid))) continue;
        out.push({
          name: `${role}-v${set.version}-${i}`,
          role,
          key: encodeCoseKey(k.key),
          alg: k.key.alg,
          prefixes: undefined,
        });
        kids.push(k.kid);
      }
    }
    return out;
  }

  /**
   * Authenticates an update envelope (MF §6.2 / §8.3, TD §5 across a dependency chain) against the current trust.
   * Refusals: TRUST_STALE (no fresh revocation list), SIGNER_REVOKED (signed only by a revoked key), else the
   * SUIT processor's refusal (a key rotated out of the anchors is unknown: no valid signer).
   */
  async authenticate(bytes: Uint8Array, requiredRoles: readonly string[]): Promise<AuthenticatedUpdate> {
    const { policy, revoked } = await this.policy(requiredRoles);
    try {
      return await authenticateUpdate(bytes, policy);
    } catch (e) {
      if (!(e instanceof SuitError) || revoked.anchors.length === 0) throw e;
      let byRevoked = false;
      try {
        await authenticateEnvelope(bytes, revoked);
        byRevoked = true;
      } catch {
        // not signed by a revoked key either: the original refusal stands
      }
      if (byRevoked)
        throw new DeviceError(
          'SIGNER_REVOKED',
          'the envelope is signed by a key on the revocation list (issue 7: checked at every verification)',
          { cause: e },
        );
      throw e;
    }
  }
}

/**
 * Trust distribution for factory-provisioned devices (issue 7 on top of issue 6).
 *
 * The factory makes the version-1 trust-anchor statement (trust/anchors.ts) and the first revocation list, and the
 * profile carries both, so every device it provisions starts from them:
 *  - anchor set v1: roles `author` and `operator` (the profile's signing keys, with the fully-specified algorithm
 *    the CLI signs SUIT envelopes with: ESP256 / Ed25519), `root` = both of those keys with threshold 2 (RFC 9019 §4:
 *    neither party alone may rotate the anchors; TUF §5.3.4: statement N+1 needs the threshold of N's root keys and
 *    of its own), and `revocation` = the operator key (the operator revokes; RFC 9019 §2.2 device operator). The
 *    root and revocation entries declare ES256 / EdDSA, the algorithms the server's distribution service accepts
 *    for statements and lists (attestation/distribution.ts ANCHOR_ALGS); ES256 and ESP256 are one key family.
 *  - revocation list v1: empty, signed by the operator key, expiring after `revocationTtlDays` (default 365).
 *
 * The device (openDeviceTrust) opens its anchors from the provisioned statement (re-checked against its own root
 * threshold) and holds the provisioned list until a newer one comes from the server; once that list expires it
 * must fetch a fresh one before trusting any update (freeze attack, TUF §5.3.8: attest/trust.ts TRUST_STALE). The
 * server side (publishProfileTrust, server/factory/provision.ts) uploads the same two documents if it holds none,
 * so devices have a revocation list to refresh from and later anchor versions have their predecessor.
 */
import { createPrivateKey, createPublicKey } from 'node:crypto';
import { Alg, coseKeyFromKeyObject, softwareSigner, type Signer } from '@rotor/cose';
import {
  AtomicStore,
  DeviceAnchors,
  DeviceRevocation,
  DeviceTrust,
  REVOCATION_BLOB,
  type StorageFs,
} from '@rotor/device';
import type { DeviceBundle, ProfileTrust } from '@rotor/server';
import { anchorKey, createAnchorStatement, createTrustRevocationList } from '@rotor/trust';
import { CliError } from './errors.ts';

/** Signature algorithms a factory device accepts for anchor statements, revocation lists and envelopes. */
export const FACTORY_TRUST_ALGS: ReadonlySet<number> = new Set<number>([
  Alg.ES256,
  Alg.ESP256,
  Alg.EdDSA,
  Alg.Ed25519,
]);

/** Name of the device's AtomicStore holding its current anchors and revocation list. */
export const TRUST_STORE = 'trust';

const DAY = 86_400;

export interface FactoryTrustKeys {
  readonly authorPublicPem: string;
  readonly operatorPublicPem: string;
  /** Signers over the author and operator private keys (ES256 for P-256, EdDSA for Ed25519; any kid). */
  readonly author: Signer;
  readonly operator: Signer;
}

/** A Signer over a PEM private key (development factories keep their signing keys in files). */
export function pemSigner(privatePem: string): Signer {
  const key = createPrivateKey(privatePem);
  return softwareSigner(key, key.asymmetricKeyType === 'ed25519' ? Alg.EdDSA : Alg.ES256);
}

/** Creates the profile's version-1 anchor statement and first (empty) revocation list. */
export async function createFactoryTrust(
  k: FactoryTrustKeys,
  o: { nowMs?: number; revocationTtlDays?: number } = {},
): Promise<ProfileTrust> {
  const now = Math.floor((o.nowMs ?? Date.now()) / 1000);
  const ttl = o.revocationTtlDays ?? 365;
  if (!Number.isSafeInteger(ttl) || ttl < 1)
    throw new CliError('CLI_USAGE', 'the revocation list lifetime is a whole number of days ≥ 1');
  const keyOf = (pem: string, suit: boolean) => {
    const ko = createPublicKey(pem);
    const ed = ko.asymmetricKeyType === 'ed25519';
    const alg = suit ? (ed ? Alg.Ed25519 : Alg.ESP256) : ed ? Alg.EdDSA : Alg.ES256;
    return anchorKey({ ...coseKeyFromKeyObject(ko), alg });
  };
  const authorRoot = keyOf(k.authorPublicPem, false);
  const operatorRoot = keyOf(k.operatorPublicPem, false);
  const statement = await createAnchorStatement(
    {
      version: 1,
      issuedAt: now,
      roles: new Map([
        ['root', { threshold: 2, keys: [authorRoot, operatorRoot] }],
        ['author', { threshold: 1, keys: [keyOf(k.authorPublicPem, true)] }],
        ['operator', { threshold: 1, keys: [keyOf(k.operatorPublicPem, true)] }],
        ['revocation', { threshold: 1, keys: [operatorRoot] }],
      ]),
    },
    [
      { ...k.author, kid: authorRoot.kid },
      { ...k.operator, kid: operatorRoot.kid },
    ],
  );
  const list = await createTrustRevocationList(
    // issuedAt a minute back: a device clock slightly behind the factory's still accepts it (skew is 300 s).
    { version: 1, issuedAt: now - 60, expiresAt: now + ttl * DAY, entries: [] },
    { ...k.operator, kid: operatorRoot.kid },
  );
  return {
    anchorStatementBase64: Buffer.from(statement).toString('base64'),
    revocationListBase64: Buffer.from(list).toString('base64'),
  };
}

/**
 * The device's DeviceTrust from what it was provisioned with (undefined for a bundle without trust documents): the
 * anchors it has persisted, else the provisioned statement; the list it has synced, else the provisioned one (kept
 * only if it verifies against the current anchors — DeviceRevocation.open drops one that does not). The source is
 * left unset: the StatusTracker fetches over its own mutual-TLS client.
 */
export async function openDeviceTrust(
  fs: StorageFs,
  bundle: DeviceBundle,
  o: { nowMs?: () => number } = {},
): Promise<DeviceTrust | undefined> {
  if (bundle.trust === undefined) return undefined;
  const statement = new Uint8Array(Buffer.from(bundle.trust.anchorStatementBase64, 'base64'));
  const list = new Uint8Array(Buffer.from(bundle.trust.revocationListBase64, 'base64'));
  const store = await AtomicStore.open(fs, TRUST_STORE);
  const anchors = await DeviceAnchors.open(store, statement, FACTORY_TRUST_ALGS);
  if ((await store.get(REVOCATION_BLOB)) === undefined) await store.put(REVOCATION_BLOB, list);
  const clock = o.nowMs ?? Date.now;
  const revocation = await DeviceRevocation.open(store, anchors, {
    allowedAlgs: FACTORY_TRUST_ALGS,
    now: () => Math.floor(clock() / 1000),
  });
  return new DeviceTrust(anchors, revocation, { allowedAlgs: FACTORY_TRUST_ALGS });
}

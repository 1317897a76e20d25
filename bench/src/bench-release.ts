/**
 * What the benches that drive the server's services in-process share: the services on a migrated database with
 * fresh operator and vault keys, and one approved release of an image.
 */
import { randomBytes } from 'node:crypto';
import { generateSigningKey, softwareSigner } from '@rotor/cose';
import { buildEnvelope } from '@rotor/suit';
import {
  createServices,
  deliverableManifest,
  migrate,
  operatorKeyFrom,
  vaultFromHex,
  type Db,
  type Principal,
  type Services,
} from '@rotor/server';

export const ADMIN: Principal = { kind: 'system' };
export const OPERATOR: Principal = { kind: 'operator', tokenId: 'bench-op', name: 'bench', role: 'operator' };
export const AUTHOR: Principal = { kind: 'operator', tokenId: 'bench-a', name: 'bench', role: 'author' };

/** Migrates `db` and returns the server's services on it (fresh operator key and vault). */
export async function benchServices(db: Db): Promise<Services> {
  await migrate(db);
  return createServices(db, {
    keys: {
      operator: operatorKeyFrom(generateSigningKey(-7).privateKey),
      vault: vaultFromHex(randomBytes(32).toString('hex')),
    },
  });
}

/**
 * Registers an author key, uploads `image`, uploads a release of it signed by that key and approves it; returns the
 * release id and the author's envelope.
 */
export async function approvedRelease(
  s: Services,
  image: Uint8Array,
): Promise<{ id: string; envelope: Uint8Array }> {
  const key = generateSigningKey(-7);
  await s.authorKeys.create(ADMIN, {
    name: 'bench',
    alg: 'ES256',
    publicKeyPem: key.publicKey.export({ type: 'spki', format: 'pem' }).toString(),
  });
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', image));
  await s.payloads.upload(AUTHOR, Buffer.from(digest).toString('hex'), image);
  const env = await buildEnvelope(
    deliverableManifest({
      vendorDomain: 'example.com',
      className: 'bench',
      sequenceNumber: 1,
      components: [{ id: 'fw', digest, size: image.length }],
    }),
    { signers: [softwareSigner(key.privateKey, -7)] },
  );
  const rel = await s.releases.upload(AUTHOR, env);
  await s.rollouts.approve(OPERATOR, rel.id);
  return { id: rel.id, envelope: env };
}

/**
 * Release helpers for driving a simulated fleet (the bench, tests, `rotor demo`): an author release of the simulated
 * device class (sim.VENDOR / sim.CLASS, component "fw") that leaves the payload source to the operator
 * (draft-ietf-suit-trust-domains §5.6.1: the server's operator-signed dependent names the per-device encrypted
 * payload), uploaded, approved (the server encrypts once and wraps the content key per device,
 * draft-ietf-suit-firmware-encryption §4) and rolled out.
 */
import { createHash } from 'node:crypto';
import { createPublicKey } from 'node:crypto';
import {
  Alg,
  coseKeyFromKeyObject,
  coseKeyToPublicKeyObject,
  decodeCoseKey,
  encodeCoseKey,
  type Signer,
} from '@rotor/cose';
import { sim, type AnchorRecord } from '@rotor/device';
import { deliverableManifest } from '@rotor/server';
import { buildEnvelope } from '@rotor/suit';
import type { OperatorApi } from './operator.ts';

export const SUIT_ENVELOPE = 'application/suit-envelope+cose';

/** A trust anchor record for a public (or private) key in PEM: e.g. the server's operator key or an author key. */
export function anchorOf(name: string, role: 'author' | 'operator', pem: string): AnchorRecord {
  return {
    name,
    role,
    key: encodeCoseKey(coseKeyFromKeyObject(createPublicKey(pem))),
    alg: Alg.ES256,
    prefixes: undefined,
  };
}

/** SPKI PEM of an encoded COSE_Key (e.g. a simulated anchor, for registering it as an author key). */
export function coseKeyPem(key: Uint8Array): string {
  return coseKeyToPublicKeyObject(decodeCoseKey(key)).export({ type: 'spki', format: 'pem' }).toString();
}

/** The author's signed envelope for firmware `version` (image digest and size; no payload source of its own). */
export async function authorEnvelope(version: number, img: Uint8Array, author: Signer): Promise<Uint8Array> {
  return buildEnvelope(
    deliverableManifest({
      vendorDomain: sim.VENDOR,
      className: sim.CLASS,
      sequenceNumber: version,
      components: [
        {
          id: 'fw',
          digest: new Uint8Array(createHash('sha256').update(img).digest()),
          size: img.length,
          uri: 'https://fw.example/fw.bin',
        },
      ],
    }),
    { signers: [author] },
  );
}

export interface PublishedRelease {
  readonly releaseId: string;
  readonly image: Uint8Array;
  readonly envelope: Uint8Array;
}

/**
 * Uploads the payload and the envelope (author token) and approves the release (operator token). `healthy: false`
 * makes an image the simulated health check rejects.
 */
export async function publishRelease(
  author: OperatorApi,
  operator: OperatorApi,
  o: { version: number; size?: number; healthy?: boolean; signer: Signer },
): Promise<PublishedRelease> {
  const img = sim.image(o.version, o.size ?? 4096, o.healthy ?? true);
  const sha = createHash('sha256').update(img).digest('hex');
  const envelope = await authorEnvelope(o.version, img, o.signer);
  await author.call('PUT', `/v1/payloads/${sha}`, undefined, [200, 201], {
    bytes: img,
    contentType: 'application/octet-stream',
  });
  const rel = await author.call<{ id: string }>('POST', '/v1/releases', undefined, 201, {
    bytes: envelope,
    contentType: SUIT_ENVELOPE,
  });
  await operator.call('POST', `/v1/releases/${rel.id}/approve`, undefined, 200);
  return { releaseId: rel.id, image: img, envelope };
}

export interface RolloutTarget {
  readonly group?: string;
  readonly tags?: readonly string[];
  readonly deviceIds?: readonly string[];
}

/** Creates a one-phase (or the given phases) rollout; returns its id. */
export async function startRollout(
  operator: OperatorApi,
  o: {
    name: string;
    releaseId: string;
    target: RolloutTarget;
    phases?: readonly {
      percent: number;
      successThreshold: number;
      failureThreshold: number;
      timeoutMs: number;
    }[];
  },
): Promise<string> {
  const r = await operator.call<{ id: string }>(
    'POST',
    '/v1/rollouts',
    {
      name: o.name,
      releaseId: o.releaseId,
      target: o.target,
      phases: o.phases ?? [{ percent: 100, successThreshold: 1, failureThreshold: 1, timeoutMs: 3_600_000 }],
    },
    201,
  );
  return r.id;
}

/** A rollout's per-state counts (total, pending, in_progress, succeeded, failed, timed_out, cancelled). */
export async function rolloutCounts(operator: OperatorApi, id: string): Promise<Record<string, number>> {
  return (
    await operator.call<{ counts: Record<string, number> }>('GET', `/v1/rollouts/${id}`, undefined, 200)
  ).counts;
}

/**
 * Operator approval and per-device key delivery (encryption.ts has the SUIT/COSE side).
 *
 * approve(): re-authenticates the author's envelope against the author keys registered now (a key revoked since the
 * upload blocks approval), encrypts every payload once under a fresh CEK, proves by a processor dry run that the
 * per-device envelopes will install, co-signs the author's envelope (a second COSE_Sign1 block, RFC 9019 §4), and
 * stores ciphertexts (content-addressed), the wrapped CEK and the audit entry in one transaction.
 *
 * deviceEnvelope(): the envelope of one device for one approved release — the operator manifest with the CEK
 * wrapped for that device alone — built on first request, stored, and served unchanged afterwards (two instances
 * racing to build it keep the first one stored).
 */
import { createPublicKey } from 'node:crypto';
import {
  addSignature,
  authenticateEnvelope,
  decodeEnvelope,
  type ComponentId,
  type SuitEnvelope,
  type TrustAnchor,
} from '@rotor/suit';
import { decode, encode, softwareVerifier } from '@rotor/cose';
import { actorOf, authorize, sha256, type Principal } from './auth.ts';
import { one, type Db } from './db/db.ts';
import {
  buildDeviceEnvelope,
  checkTemplate,
  CONTENT_ALG,
  encryptPayloads,
  payloadComponents,
  deviceRecipient,
  type ReleaseTemplate,
} from './encryption.ts';
import { ServerError } from './errors.ts';
import type { ContentKeyVault, OperatorKey } from './keys.ts';
import { auditedTransaction, groupCommit, hex } from './tx.ts';

/** Signature algorithms of author keys (services.ts AUTHOR_KEY_ALGS). */
const AUTHOR_ALGS: ReadonlySet<number> = new Set([-7, -9, -8, -19]);

export const ciphertextUrl = (sha256Hex: string): string => `/d/v1/payloads/${sha256Hex}`;

interface Keys {
  readonly operator?: OperatorKey | undefined;
  readonly vault?: ContentKeyVault | undefined;
}

export function createDeliveryService(db: Db, now: () => number, keys: Keys) {
  const audited = auditedTransaction(db, now);
  const required = (): { operator: OperatorKey; vault: ContentKeyVault } => {
    if (keys.operator === undefined || keys.vault === undefined)
      throw new ServerError(
        'OPERATOR_KEY_UNAVAILABLE',
        'approval needs the operator key (--operator-key) and the content-key vault (--content-kek)',
      );
    return { operator: keys.operator, vault: keys.vault };
  };

  async function authorAnchors(): Promise<TrustAnchor[]> {
    const rows = await db.query<{ id: string; alg: number; spki: Uint8Array }>(
      'SELECT id, alg, spki FROM author_keys WHERE revoked_at_ms IS NULL',
    );
    return rows.map((r) => ({
      name: r.id,
      role: 'author',
      verifier: softwareVerifier(
        createPublicKey({ key: Buffer.from(r.spki), format: 'der', type: 'spki' }),
        r.alg,
      ),
    }));
  }

  // Per-release templates are immutable once approved: a small cache saves decoding the author's envelope for
  // every device. No key material is cached.
  const templates = new Map<string, ReleaseTemplate>();

  /** Release keys as stored at approval (written once, never changed): kept with the template. */
  const releaseKeys = new Map<string, Uint8Array>();
  async function template(releaseId: string): Promise<{ t: ReleaseTemplate; cekWrapped: Uint8Array }> {
    const known = templates.get(releaseId);
    const knownKey = releaseKeys.get(releaseId);
    if (known !== undefined && knownKey !== undefined) return { t: known, cekWrapped: knownKey };
    const k = one(
      await db.query<{ cek_wrapped: Uint8Array; content_alg: number }>(
        'SELECT cek_wrapped, content_alg FROM release_keys WHERE release_id = $1',
        [releaseId],
      ),
      'approved release',
    );
    if (k.content_alg !== CONTENT_ALG) throw new ServerError('INTERNAL', 'unknown content algorithm stored');
    let t = templates.get(releaseId);
    if (t === undefined) {
      const rel = one(
        await db.query<{ envelope: Uint8Array }>('SELECT envelope FROM releases WHERE id = $1', [releaseId]),
        'release',
      );
      const parts = await db.query<{
        component_id: Uint8Array;
        ciphertext_sha256: Uint8Array;
        iv: Uint8Array;
      }>(
        'SELECT component_id, ciphertext_sha256, iv FROM release_ciphertexts WHERE release_id = $1 ORDER BY component_index',
        [releaseId],
      );
      t = templateOf(
        decodeEnvelope(rel.envelope),
        parts.map((p) => ({
          componentId: decode(p.component_id) as ComponentId,
          uri: ciphertextUrl(hex(p.ciphertext_sha256)),
          iv: p.iv,
        })),
      );
      if (templates.size >= 64) templates.delete(templates.keys().next().value!);
      templates.set(releaseId, t);
    }
    if (releaseKeys.size >= 64) releaseKeys.delete(releaseKeys.keys().next().value!);
    releaseKeys.set(releaseId, k.cek_wrapped);
    return { t, cekWrapped: k.cek_wrapped };
  }

  /**
   * Built envelopes of the moment are stored in one statement (group commit); an envelope is served only once
   * stored. True when this one was stored, false when another request (here or on another instance) stored the
   * device's envelope first — the stored one is then served, so a device always gets the same envelope.
   */
  const storeEnvelope = groupCommit<
    { releaseId: string; deviceId: string; envelope: Uint8Array; digest: Uint8Array },
    boolean
  >(
    async (items) => {
      const rows = await db.query<{ release_id: string; device_id: string }>(
        `INSERT INTO device_envelopes (release_id, device_id, envelope, manifest_digest, created_at_ms)
         SELECT x.release_id, x.device_id, decode(x.envelope, 'hex'), decode(x.digest, 'hex'), $5
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS x(release_id, device_id, envelope, digest)
         ON CONFLICT (release_id, device_id) DO NOTHING RETURNING release_id, device_id`,
        [
          items.map((x) => x.releaseId),
          items.map((x) => x.deviceId),
          items.map((x) => hex(x.envelope)),
          items.map((x) => hex(x.digest)),
          now(),
        ],
      );
      const stored = new Set(rows.map((r) => `${r.release_id}\n${r.device_id}`));
      // A device twice in one batch: the first item's envelope is the stored one.
      const first = new Set<string>();
      return items.map((x) => {
        const k = `${x.releaseId}\n${x.deviceId}`;
        if (!stored.has(k) || first.has(k)) return false;
        first.add(k);
        return true;
      });
    },
    { max: 256, inFlight: 2 },
  );

  return {
    /**
     * Operator approval (RFC 9019 §3/§4: the operator decides to deploy an author's image and co-signs it).
     * Idempotent: approving an approved release changes nothing.
     */
    async approve(p: Principal, releaseId: string): Promise<void> {
      authorize(p, 'release.approve');
      const rel = one(
        await db.query<{ status: string; envelope: Uint8Array }>(
          'SELECT status, envelope FROM releases WHERE id = $1',
          [releaseId],
        ),
        'release',
      );
      if (rel.status === 'approved') return;
      if (rel.status === 'withdrawn')
        throw new ServerError('CONFLICT', 'a withdrawn release cannot be approved');
      const { operator, vault } = required();
      const anchors = await authorAnchors();
      // MF §8.3: authenticated again now — an author key revoked since the upload blocks approval.
      const { envelope: env } = await authenticateEnvelope(rel.envelope, {
        anchors,
        allowedAlgs: AUTHOR_ALGS,
        requiredRoles: ['author'],
      });
      // RFC 9019 §3 confidentiality: a plaintext image inside the envelope would reach every holder of it.
      if (env.integrated.size > 0)
        throw new ServerError(
          'RELEASE_INVALID',
          'integrated payloads are plaintext in the envelope; upload them detached for encrypted delivery',
        );
      const comps = payloadComponents(env);
      if (comps.length === 0)
        throw new ServerError('RELEASE_INVALID', 'the manifest names no payload digest');
      const plaintexts: Uint8Array[] = [];
      for (const c of comps) {
        const row = (
          await db.query<{ data: Uint8Array }>(
            'SELECT b.data FROM blobs b JOIN release_payloads r ON r.sha256 = b.sha256 WHERE r.release_id = $1 AND b.sha256 = $2',
            [releaseId, c.digest],
          )
        )[0];
        if (row === undefined)
          throw new ServerError('PAYLOAD_MISSING', `payload ${hex(c.digest)} is not stored`, {
            extra: { missing: [hex(c.digest)] },
          });
        plaintexts.push(row.data);
      }
      const { cek, parts } = encryptPayloads(plaintexts);
      try {
        const cts = parts.map((x) => ({ ...x, sha: sha256(x.ciphertext) }));
        const t = templateOf(
          env,
          comps.map((c, i) => ({
            componentId: c.componentId,
            uri: ciphertextUrl(hex(cts[i]!.sha)),
            iv: cts[i]!.iv,
          })),
        );
        await checkTemplate(
          t,
          cek,
          plaintexts,
          new Map(cts.map((c) => [ciphertextUrl(hex(c.sha)), c.ciphertext])),
          operator.signer,
          { operator: operator.verifier, authors: anchors },
        );
        const cosigned = await addSignature(rel.envelope, operator.signer);
        const cekWrapped = await vault.wrap(cek);
        await audited(p, 'release.approve', async (tx) => {
          const r = one(
            await tx.query<{ status: string }>('SELECT status FROM releases WHERE id = $1 FOR UPDATE', [
              releaseId,
            ]),
            'release',
          );
          if (r.status !== 'uploaded')
            throw new ServerError('CONFLICT', `the release became ${r.status} concurrently`);
          for (const c of cts) {
            await tx.query(
              'INSERT INTO blobs (sha256, size, data, created_at_ms) VALUES ($1, $2, $3, $4) ON CONFLICT (sha256) DO NOTHING',
              [c.sha, c.ciphertext.length, c.ciphertext, now()],
            );
          }
          for (const [i, c] of comps.entries()) {
            await tx.query(
              `INSERT INTO release_ciphertexts (release_id, component_index, component_id, plaintext_sha256, ciphertext_sha256, iv)
               VALUES ($1, $2, $3, $4, $5, $6)`,
              [releaseId, c.index, encode([...c.componentId]), c.digest, cts[i]!.sha, cts[i]!.iv],
            );
          }
          await tx.query(
            `INSERT INTO release_keys (release_id, content_alg, cek_wrapped, operator_kid, cosigned_envelope, approved_by, approved_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7)`,
            [releaseId, CONTENT_ALG, cekWrapped, operator.kid, cosigned, actorOf(p), now()],
          );
          await tx.query("UPDATE releases SET status = 'approved' WHERE id = $1", [releaseId]);
          return {
            result: undefined,
            subject: `release:${releaseId}`,
            details: {
              operatorKid: hex(operator.kid),
              cosignedEnvelopeSha256: hex(sha256(cosigned)),
              contentAlg: CONTENT_ALG,
              ciphertexts: cts.map((c) => hex(c.sha)),
            },
          };
        });
      } finally {
        cek.fill(0);
      }
    },

    /**
     * The envelope of `deviceId` for an approved release (built once, then served as stored). `known`: what the
     * caller already read in its own lookup (the stored envelope, else the device's key columns), saving the reads.
     */
    async deviceEnvelope(
      deviceId: string,
      releaseId: string,
      known?: {
        envelope: Uint8Array | null;
        ka_spki: Uint8Array | null;
        kek_wrapped: Uint8Array | null;
      },
    ): Promise<Uint8Array> {
      if (known?.envelope != null) return known.envelope;
      if (known === undefined) {
        const have = await db.query<{ envelope: Uint8Array }>(
          'SELECT envelope FROM device_envelopes WHERE release_id = $1 AND device_id = $2',
          [releaseId, deviceId],
        );
        if (have[0] !== undefined) return have[0].envelope;
      }
      const { operator, vault } = required();
      const dev =
        known ??
        one(
          await db.query<{ ka_spki: Uint8Array | null; kek_wrapped: Uint8Array | null }>(
            'SELECT ka_spki, kek_wrapped FROM devices WHERE id = $1',
            [deviceId],
          ),
          'device',
        );
      const { t, cekWrapped } = await template(releaseId);
      const { recipient, kek } = await deviceRecipient(dev, (w) => vault.unwrap(w));
      const cek = await vault.unwrap(cekWrapped);
      let built: { envelope: Uint8Array; digestBytes: Uint8Array };
      try {
        built = await buildDeviceEnvelope(t, cek, recipient, operator.signer);
      } finally {
        cek.fill(0);
        kek?.fill(0);
      }
      const digest = (decode(built.digestBytes) as [number, Uint8Array])[1];
      if (await storeEnvelope({ releaseId, deviceId, envelope: built.envelope, digest }))
        return built.envelope;
      return one(
        await db.query<{ envelope: Uint8Array }>(
          'SELECT envelope FROM device_envelopes WHERE release_id = $1 AND device_id = $2',
          [releaseId, deviceId],
        ),
        'device envelope',
      ).envelope;
    },

    /** The author's envelope with the operator's co-signature added at approval. */
    async cosigned(p: Principal, releaseId: string): Promise<Uint8Array> {
      authorize(p, 'release.read');
      return one(
        await db.query<{ cosigned_envelope: Uint8Array }>(
          'SELECT cosigned_envelope FROM release_keys WHERE release_id = $1',
          [releaseId],
        ),
        'approved release',
      ).cosigned_envelope;
    },
  };
}

export type DeliveryService = ReturnType<typeof createDeliveryService>;

function templateOf(
  env: SuitEnvelope,
  components: { componentId: ComponentId; uri: string; iv: Uint8Array }[],
): ReleaseTemplate {
  return {
    authorEnvelope: env.bytes,
    authorDigestBytes: env.digestBytes,
    authorManifestId: env.manifest.componentId,
    sequenceNumber: env.manifest.sequenceNumber,
    components,
  };
}

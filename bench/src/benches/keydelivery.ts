/**
 * `npm run bench -- keydelivery`: per-device content-key delivery for a large rollout, with the server's own code
 * on every core (worker threads; the server does this per device on first envelope request, any instance).
 *  - wraps per second: A128KW under per-device KEKs (headline `wraps_per_s`, goal ≥ 8,000: a million devices in
 *    about two minutes), ECDH-ES+A128KW to X25519 and P-256 device keys (a fresh ephemeral key per device);
 *  - full per-device envelopes per second (wrap + operator manifest + ES256 signature);
 *  - payload bytes stored, through the real services on PGlite, for two fleet sizes: the ciphertext is stored once
 *    whatever the fleet size (`payload_bytes_growth` = 0), only the small per-device envelopes grow.
 * Baseline in the same run: one AES-128-KW of 16 bytes with node:crypto alone (the physical floor per wrap).
 */
import { createCipheriv, randomBytes } from 'node:crypto';
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { generateAgreementKey } from '@rotor/cose';
import { decodeEnvelope } from '@rotor/suit';
import { openDatabase, type ReleaseTemplate } from '@rotor/server';
import { opsPerSecond, round, type Benchmark } from '../harness.ts';
import { ADMIN, approvedRelease, benchServices, OPERATOR } from '../bench-release.ts';

type Kind = 'aes-kw' | 'x25519' | 'p256' | 'envelope';

async function runWorkers(
  kind: Kind,
  devices: number,
  keys: Uint8Array[],
  template: ReleaseTemplate | undefined,
): Promise<number> {
  const n = Math.max(1, availableParallelism());
  const share = Math.ceil(devices / n);
  const results = await Promise.all(
    Array.from(
      { length: n },
      () =>
        new Promise<{ devices: number; seconds: number }>((resolve, reject) => {
          const w = new Worker(new URL('./keydelivery-worker.ts', import.meta.url), {
            workerData: { kind, devices: share, keys, template },
          });
          w.once('message', (m: { devices: number; seconds: number }) => {
            resolve(m);
          });
          w.once('error', reject);
        }),
    ),
  );
  // Workers run concurrently: the aggregate rate is the sum of their rates.
  return results.reduce((a, r) => a + r.devices / r.seconds, 0);
}

export const keydeliveryBench: Benchmark = {
  name: 'keydelivery',
  description:
    'per-device content-key wraps per second (A128KW, ECDH-ES+A128KW) and payload bytes stored once',
  async run(ctx) {
    const fleet = ctx.quick ? 2_000 : 400_000;
    const ecdhFleet = ctx.quick ? 500 : 60_000;

    // Payload stored once: the real services on PGlite.
    const db = await openDatabase({});
    let storedSmall = 0;
    let storedLarge = 0;
    let template: ReleaseTemplate;
    const small = ctx.quick ? 5 : 20;
    const large = ctx.quick ? 25 : 200;
    const imageSize = 1024 * 1024;
    try {
      const s = await benchServices(db);
      const rel = await approvedRelease(s, randomBytes(imageSize));
      const blobBytes = async (): Promise<number> =>
        (await db.query<{ n: number }>('SELECT coalesce(sum(size), 0)::int AS n FROM blobs'))[0]!.n;
      const deliver = async (count: number, group: string): Promise<void> => {
        for (let i = 0; i < count; i++) {
          await s.devices.create(ADMIN, {
            name: `${group}-${i}`,
            certSha256: randomBytes(32).toString('hex'),
            group,
            keyAgreementKeyPem: generateAgreementKey('X25519')
              .publicKey.export({ type: 'spki', format: 'pem' })
              .toString(),
          });
        }
        const r = await s.rollouts.create(OPERATOR, {
          name: group,
          releaseId: rel.id,
          target: { group },
          phases: [{ percent: 100, successThreshold: 1, failureThreshold: 1, timeoutMs: 3_600_000 }],
        });
        const ids = await db.query<{ device_id: string }>(
          'SELECT device_id FROM rollout_devices WHERE rollout_id = $1',
          [r.id],
        );
        for (const { device_id } of ids)
          await s.rollouts.envelopeFor({ kind: 'device', deviceId: device_id, name: device_id }, r.id);
      };
      await deliver(small, 'small');
      storedSmall = await blobBytes();
      await deliver(large, 'large');
      storedLarge = await blobBytes();
      const env = rel.envelope;
      const e = decodeEnvelope(env);
      const ct = await db.query<{ h: string; iv: Uint8Array }>(
        "SELECT encode(ciphertext_sha256, 'hex') AS h, iv FROM release_ciphertexts WHERE release_id = $1",
        [rel.id],
      );
      template = {
        authorEnvelope: env,
        authorDigestBytes: e.digestBytes,
        authorManifestId: e.manifest.componentId,
        sequenceNumber: e.manifest.sequenceNumber,
        components: ct.map((c) => ({
          componentId: [new TextEncoder().encode('fw')],
          uri: `/d/v1/payloads/${c.h}`,
          iv: c.iv,
        })),
      };
    } finally {
      await db.close();
    }

    ctx.log(`wrapping for ${fleet.toLocaleString('en-US')} devices on ${availableParallelism()} workers`);
    const keks = Array.from({ length: 1000 }, () => new Uint8Array(randomBytes(16)));
    const spki = (curve: 'X25519' | 'P-256'): Uint8Array[] =>
      Array.from(
        { length: 200 },
        () => new Uint8Array(generateAgreementKey(curve).publicKey.export({ type: 'spki', format: 'der' })),
      );
    const kw = await runWorkers('aes-kw', fleet, keks, undefined);
    const x = await runWorkers('x25519', ecdhFleet, spki('X25519'), undefined);
    const p = await runWorkers('p256', ecdhFleet, spki('P-256'), undefined);
    const full = await runWorkers('envelope', ecdhFleet, spki('X25519'), template);
    const kek = randomBytes(16);
    const cek = randomBytes(16);
    const floor = await opsPerSecond(
      () => {
        const c = createCipheriv('id-aes128-wrap', kek, Buffer.from('A6A6A6A6A6A6A6A6', 'hex'));
        c.update(cek);
        c.final();
      },
      ctx.quick ? 200 : 2000,
    );
    return {
      rows: [
        { path: 'A128KW per-device KEK (server wrapForDevice)', devices: fleet, 'per second': round(kw, 0) },
        { path: 'ECDH-ES+A128KW X25519', devices: ecdhFleet, 'per second': round(x, 0) },
        { path: 'ECDH-ES+A128KW P-256', devices: ecdhFleet, 'per second': round(p, 0) },
        {
          path: 'full envelope (X25519 wrap + ES256 sign)',
          devices: ecdhFleet,
          'per second': round(full, 0),
        },
        { path: 'bare AES-KW, 1 thread (floor)', devices: 0, 'per second': round(floor, 0) },
        { path: `payload bytes stored, ${small} devices`, devices: small, 'per second': storedSmall },
        {
          path: `payload bytes stored, ${small + large} devices`,
          devices: small + large,
          'per second': storedLarge,
        },
      ],
      figures: {
        wraps_per_s: round(kw, 0),
        goal_wraps_per_s: 8000,
        ecdh_x25519_wraps_per_s: round(x, 0),
        ecdh_p256_wraps_per_s: round(p, 0),
        envelopes_per_s: round(full, 0),
        floor_kw_per_s_1_thread: round(floor, 0),
        workers: availableParallelism(),
        image_bytes: imageSize,
        payload_bytes_stored: storedLarge,
        payload_bytes_growth: storedLarge - storedSmall,
        fleet_small: small,
        fleet_large: small + large,
      },
    };
  },
};

/**
 * Issue 7: the device fetches trust-anchor statements newer than its own and the newest revocation list from the
 * server's device API (here a stub with the server's routes and media types) and applies them.
 */
import { createServer, type Server } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  Alg,
  coseKeyFromKeyObject,
  encode,
  generateSigningKey,
  softwareSigner,
  type Signer,
} from '@rotor/cose';
import {
  anchorKey,
  createAnchorStatement,
  createTrustRevocationList,
  RevokedKind,
  type AnchorKey,
} from '@rotor/trust';
import { DeviceAnchors } from '../src/attest/anchors.ts';
import { DeviceRevocation } from '../src/attest/revocation.ts';
import { httpTrustSources } from '../src/attest/sources.ts';
import { AtomicStore } from '../src/storage/atomic.ts';
import { SimulatedFs } from '../src/storage/sim.ts';
import { TrackerHttp } from '../src/tracker/http.ts';

const ALGS: ReadonlySet<number> = new Set<number>([Alg.ES256]);
function party(): { key: AnchorKey; signer: Signer } {
  const k = generateSigningKey(Alg.ES256);
  const key = anchorKey({ ...coseKeyFromKeyObject(k.publicKey), alg: Alg.ES256 });
  return { key, signer: softwareSigner(k.privateKey, Alg.ES256, key.kid) };
}

describe('trust sources over the device API (issue 7)', () => {
  const roots = [party(), party(), party()];
  const rvl = party();
  const statements: Uint8Array[] = [];
  let list: Uint8Array | undefined;
  let server: Server;
  let base = '';

  beforeAll(async () => {
    for (const [i, r] of roots.entries()) {
      const prev = roots[i - 1];
      statements.push(
        await createAnchorStatement(
          {
            version: i + 1,
            issuedAt: 1_800_000_000,
            roles: new Map([
              ['root', { threshold: 1, keys: [r.key] }],
              ['revocation', { threshold: 1, keys: [rvl.key] }],
            ]),
          },
          prev === undefined ? [r.signer] : [prev.signer, r.signer],
        ),
      );
    }
    server = createServer((req, res) => {
      const m = /^\/d\/v1\/trust-anchors\/after\/(\d+)$/.exec(req.url ?? '');
      if (m !== null) {
        res.setHeader('content-type', 'application/octet-stream');
        res.end(Buffer.from(encode(statements.slice(Number(m[1])))));
      } else if (req.url === '/d/v1/revocation-list' && list !== undefined) {
        res.setHeader('content-type', 'application/octet-stream');
        res.end(Buffer.from(list));
      } else {
        res.statusCode = 404;
        res.end();
      }
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const a = server.address();
    base = `http://127.0.0.1:${typeof a === 'object' && a !== null ? a.port : 0}`;
  });
  afterAll(async () => {
    await new Promise((r) => server.close(r));
  });

  it('walks the versions it missed and refreshes its revocation list', async () => {
    const http = new TrackerHttp({ baseUrl: base, allowHttp: true });
    const sources = httpTrustSources(http);
    const store = await AtomicStore.open(new SimulatedFs(), 't');
    const anchors = await DeviceAnchors.open(store, statements[0]!, ALGS);
    expect(await anchors.update(sources)).toEqual({ from: 1, to: 3 });
    const clock = 1_800_000_100;
    const rev = await DeviceRevocation.open(store, anchors, { allowedAlgs: ALGS, now: () => clock });
    await expect(rev.fresh(sources)).rejects.toMatchObject({ code: 'RVL_EXPIRED' }); // 404: none yet
    const revoked = new Uint8Array(32).fill(9);
    list = await createTrustRevocationList(
      {
        version: 1,
        issuedAt: clock,
        expiresAt: clock + 60,
        entries: [{ kind: RevokedKind.rotKey, id: revoked }],
      },
      rvl.signer,
    );
    expect(await rev.isRevoked(sources, RevokedKind.rotKey, revoked)).toBe(true);
  });
});

/**
 * Where the device fetches trust anchors and revocation lists: the server's device API over the tracker's
 * mutual-TLS client (issue 7). Responses are bounded and strictly decoded; a refusal is TRACKER_REFUSED, a
 * malformed answer TRACKER_PROTOCOL (the caller retries later; the statements and lists are verified by
 * DeviceAnchors / DeviceRevocation, never trusted for having come over TLS).
 */
import { asArray, asBytes, decode } from '@rotor/cose';
import { ANCHORS_MAX_BYTES, TRUST_REVOCATION_MAX_BYTES } from '@rotor/trust';
import { DeviceError } from '../errors.ts';
import type { TrackerHttp } from '../tracker/http.ts';
import type { AnchorSource } from './anchors.ts';
import type { RevocationSource } from './revocation.ts';

/** The server answers at most this many statements per fetch; the device asks again from the last one. */
export const MAX_STATEMENTS_PER_FETCH = 64;
const OCTET = 'application/octet-stream';

export function httpTrustSources(http: TrackerHttp): AnchorSource & RevocationSource {
  return {
    async statementsAfter(version: number): Promise<Uint8Array[]> {
      if (!Number.isSafeInteger(version) || version < 0)
        throw new DeviceError('TRACKER_PROTOCOL', 'anchor version out of range');
      const all: Uint8Array[] = [];
      let after = version;
      // Pages of up to 64 versions, until the server has no newer one (bounded: 16 pages).
      for (let page = 0; page < 16; page++) {
        const res = await http.request('GET', `/d/v1/trust-anchors/after/${after}`, {
          accept: OCTET,
          maxBody: MAX_STATEMENTS_PER_FETCH * (ANCHORS_MAX_BYTES + 8),
        });
        if (res.status !== 200)
          throw new DeviceError('TRACKER_REFUSED', `GET trust anchors: HTTP ${res.status}`);
        let items: Uint8Array[];
        try {
          items = asArray(decode(res.body, { maxDepth: 2 }), 'statements', {
            max: MAX_STATEMENTS_PER_FETCH,
          }).map((s, i) => asBytes(s, `statements[${i}]`, { max: ANCHORS_MAX_BYTES }));
        } catch (e) {
          throw new DeviceError('TRACKER_PROTOCOL', 'trust-anchor answer is not a CBOR array of bstr', {
            cause: e,
          });
        }
        all.push(...items);
        if (items.length < MAX_STATEMENTS_PER_FETCH) break;
        after += items.length;
      }
      return all;
    },
    async latest(): Promise<Uint8Array | undefined> {
      const res = await http.request('GET', '/d/v1/revocation-list', {
        accept: OCTET,
        maxBody: TRUST_REVOCATION_MAX_BYTES,
      });
      if (res.status === 404) return undefined;
      if (res.status !== 200)
        throw new DeviceError('TRACKER_REFUSED', `GET revocation list: HTTP ${res.status}`);
      return res.body;
    },
  };
}

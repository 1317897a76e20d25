/**
 * Where the device fetches trust anchors and revocation lists: the server's device API over the tracker's
 * mutual-TLS client (issue 7). Responses are bounded and strictly decoded; a refusal is TRACKER_REFUSED, a
 * malformed answer TRACKER_PROTOCOL (the caller retries later; the statements and lists are verified by
 * DeviceAnchors / DeviceRevocation, never trusted for having come over TLS).
 */
import { asArray, asBytes, decode, encode } from '@rotor/cose';
import { ANCHORS_MAX_BYTES, TRUST_REVOCATION_MAX_BYTES } from '@rotor/trust';
import { DeviceError } from '../errors.ts';
import type { TrackerHttp } from '../tracker/http.ts';
import type { AnchorSource } from './anchors.ts';
import type { VerifierTransport } from './attester.ts';
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

const JSON_TYPE = 'application/json';
const MAX_ANSWER = 64 * 1024;

function jsonAnswer(res: { status: number; body: Uint8Array }, what: string): Record<string, unknown> {
  if (res.status !== 200) throw new DeviceError('TRACKER_REFUSED', `${what}: HTTP ${res.status}`);
  try {
    const v: unknown = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(res.body));
    if (typeof v === 'object' && v !== null && !Array.isArray(v)) return v as Record<string, unknown>;
  } catch {
    // below
  }
  throw new DeviceError('TRACKER_PROTOCOL', `${what}: not a JSON object`);
}

/**
 * The verifier's device API (/d/v1/attestation/* over the tracker's mutual-TLS client) for the Attester (issue 7):
 * answers bounded and checked member by member (TRACKER_PROTOCOL otherwise).
 */
export function httpVerifierTransport(http: TrackerHttp): VerifierTransport {
  const bool = (o: Record<string, unknown>, k: string, what: string): boolean => {
    const v = o[k];
    if (typeof v !== 'boolean') throw new DeviceError('TRACKER_PROTOCOL', `${what}: ${k} is not a boolean`);
    return v;
  };
  return {
    async pending() {
      const o = jsonAnswer(
        await http.request('GET', '/d/v1/attestation/pending', { accept: JSON_TYPE, maxBody: MAX_ANSWER }),
        'attestation pending',
      );
      return {
        attest: bool(o, 'attest', 'pending'),
        rotate: bool(o, 'rotate', 'pending'),
        enrolled: bool(o, 'enrolled', 'pending'),
      };
    },
    async reportChain(ueid, records) {
      const body = encode(
        new Map<string, unknown>([
          ['ueid', ueid],
          ['records', [...records]],
        ]),
      );
      const o = jsonAnswer(
        await http.request('POST', '/d/v1/attestation/rot', {
          body,
          contentType: OCTET,
          accept: JSON_TYPE,
          maxBody: MAX_ANSWER,
        }),
        'RoT chain report',
      );
      const index = o.index;
      if (typeof index !== 'number' || !Number.isSafeInteger(index) || index < 0)
        throw new DeviceError('TRACKER_PROTOCOL', 'RoT chain report: index');
      return { index };
    },
    async nonce() {
      const o = jsonAnswer(
        await http.request('POST', '/d/v1/attestation/nonce', { accept: JSON_TYPE, maxBody: MAX_ANSWER }),
        'nonce',
      );
      const n = o.nonce;
      if (typeof n !== 'string' || !/^[A-Za-z0-9+/]{8,172}={0,2}$/.test(n))
        throw new DeviceError('TRACKER_PROTOCOL', 'nonce: not base64');
      return new Uint8Array(Buffer.from(n, 'base64'));
    },
    async evidence(token) {
      const o = jsonAnswer(
        await http.request('POST', '/d/v1/attestation/evidence', {
          body: token,
          contentType: OCTET,
          accept: JSON_TYPE,
          maxBody: MAX_ANSWER,
        }),
        'evidence',
      );
      const status = o.status;
      if (status !== 'affirming' && status !== 'warning' && status !== 'contraindicated')
        throw new DeviceError('TRACKER_PROTOCOL', 'evidence: status');
      return { status };
    },
  };
}

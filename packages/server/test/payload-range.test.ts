/**
 * Range requests for payloads (RFC 9110 §14): the parser (range-set, suffixes, invalid and unsatisfiable
 * specs, coalescing, too many ranges) and the HTTP responses: one range → 206 with Content-Range, several →
 * 206 multipart/byteranges (§14.6, §15.3.7.2) with an exact Content-Length, none satisfiable → 416.
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Principal } from '../src/index.ts';
import { MAX_RANGES, parseRange, parseRanges } from '../src/routes.ts';
import {
  ADMIN_TOKEN,
  authorKeyPair,
  sha256hex,
  signedRelease,
  startFixture,
  type Fixture,
} from './fixtures.ts';

describe('parseRanges (RFC 9110 §14.1.2)', () => {
  const size = 1000;
  it('parses single, open-ended and suffix ranges', () => {
    expect(parseRanges('bytes=0-9', size)).toEqual([{ start: 0, end: 10 }]);
    expect(parseRanges('bytes=990-', size)).toEqual([{ start: 990, end: 1000 }]);
    expect(parseRanges('bytes=-5', size)).toEqual([{ start: 995, end: 1000 }]);
    expect(parseRanges('bytes=-5000', size)).toEqual([{ start: 0, end: 1000 }]);
    expect(parseRanges('bytes=900-5000', size)).toEqual([{ start: 900, end: 1000 }]);
    expect(parseRanges(' BYTES = 1-2 ', size)).toEqual([{ start: 1, end: 3 }]);
  });

  it('keeps distant ranges apart, sorted; coalesces overlapping, adjacent and nearby ones (§15.3.7.2)', () => {
    expect(parseRanges('bytes=500-599, 0-9', size)).toEqual([
      { start: 0, end: 10 },
      { start: 500, end: 600 },
    ]);
    expect(parseRanges('bytes=0-99,50-149', size)).toEqual([{ start: 0, end: 150 }]);
    expect(parseRanges('bytes=0-9,10-19', size)).toEqual([{ start: 0, end: 20 }]);
    expect(parseRanges('bytes=0-9,20-29', size)).toEqual([{ start: 0, end: 30 }]); // a gap smaller than a part header
    expect(parseRanges('bytes=0-9,-10', size)).toEqual([
      { start: 0, end: 10 },
      { start: 990, end: 1000 },
    ]);
  });

  it('drops unsatisfiable specs of a set; none satisfiable is 416 (§15.5.17)', () => {
    expect(parseRanges('bytes=0-9,5000-6000', size)).toEqual([{ start: 0, end: 10 }]);
    expect(() => parseRanges('bytes=1000-', size)).toThrow(
      expect.objectContaining({ code: 'RANGE_NOT_SATISFIABLE' }),
    );
    expect(() => parseRanges('bytes=-0', size)).toThrow(
      expect.objectContaining({ code: 'RANGE_NOT_SATISFIABLE' }),
    );
    expect(() => parseRanges('bytes=2000-3000,1000-', size)).toThrow(
      expect.objectContaining({ code: 'RANGE_NOT_SATISFIABLE' }),
    );
  });

  it('ignores the header (whole body) for other units, syntax errors, invalid specs and too many ranges (§14.2)', () => {
    expect(parseRanges(undefined, size)).toBeUndefined();
    expect(parseRanges('items=0-9', size)).toBeUndefined();
    expect(parseRanges('bytes=a-b', size)).toBeUndefined();
    expect(parseRanges('bytes=-', size)).toBeUndefined();
    expect(parseRanges('bytes=', size)).toBeUndefined();
    expect(parseRanges('bytes=9-0', size)).toBeUndefined();
    expect(parseRanges('bytes=0-9,9-0', size)).toBeUndefined();
    expect(parseRanges('bytes=1234567890123456-', size)).toBeUndefined();
    const many = Array.from({ length: MAX_RANGES + 1 }, (_, i) => `${i * 50}-${i * 50}`).join(',');
    expect(parseRanges(`bytes=${many}`, size)).toBeUndefined();
    const enough = Array.from({ length: MAX_RANGES }, (_, i) => `${i * 200}-${i * 200}`).join(',');
    expect(parseRanges(`bytes=${enough}`, 100_000)).toHaveLength(MAX_RANGES);
  });

  it('parseRange: a single range only', () => {
    expect(parseRange('bytes=0-9', size)).toEqual({ start: 0, end: 10 });
    expect(parseRange('bytes=0-9,500-509', size)).toBeUndefined();
    expect(parseRange('bytes=0-9,5-19', size)).toEqual({ start: 0, end: 20 });
  });
});

interface Part {
  headers: Record<string, string>;
  body: Buffer;
}

/** Splits a multipart/byteranges body (RFC 9110 §14.6, RFC 2046 §5.1.1) strictly. */
function parseMultipart(body: Buffer, boundary: string): Part[] {
  const parts: Part[] = [];
  const delim = Buffer.from(`--${boundary}`, 'latin1');
  let at = body.indexOf(delim);
  expect(at).toBe(0);
  for (;;) {
    at += delim.length;
    if (body.subarray(at, at + 4).toString('latin1') === '--\r\n') {
      expect(at + 4).toBe(body.length);
      return parts;
    }
    expect(body.subarray(at, at + 2).toString('latin1')).toBe('\r\n');
    const headEnd = body.indexOf('\r\n\r\n', at, 'latin1');
    const headers: Record<string, string> = {};
    for (const line of body
      .subarray(at + 2, headEnd)
      .toString('latin1')
      .split('\r\n')) {
      const i = line.indexOf(':');
      headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
    }
    const next = body.indexOf(Buffer.concat([Buffer.from('\r\n'), delim]), headEnd + 4);
    expect(next).toBeGreaterThan(0);
    parts.push({ headers, body: body.subarray(headEnd + 4, next) });
    at = next + 2;
  }
}

describe('payload Range responses over HTTP', () => {
  let f: Fixture;
  let h: string;
  const image = randomBytes(100_000);
  const AUTHOR: Principal = { kind: 'operator', tokenId: 't-author', name: 'author', role: 'author' };

  beforeAll(async () => {
    f = await startFixture('pglite');
    h = sha256hex(image);
    const s = f.server.services;
    await s.payloads.upload(AUTHOR, h, image);
    // Operators read payloads of uploaded releases.
    const k = authorKeyPair();
    await s.authorKeys.create(
      { kind: 'system' },
      { name: 'ranges', alg: 'ES256', publicKeyPem: k.publicKeyPem },
    );
    await s.releases.upload(AUTHOR, await signedRelease(k.privateKey, image, 1));
  });
  afterAll(async () => {
    await f.close();
  });

  const get = async (
    headers: Record<string, string>,
    method = 'GET',
  ): Promise<{ status: number; headers: Headers; body: Buffer }> => {
    const res = await fetch(new URL(`/v1/payloads/${h}`, f.server.operatorUrl), {
      method,
      headers: { authorization: `Bearer ${ADMIN_TOKEN}`, ...headers },
    });
    return { status: res.status, headers: res.headers, body: Buffer.from(await res.arrayBuffer()) };
  };

  it('one range: 206 with Content-Range', async () => {
    const r = await get({ range: 'bytes=10-19' });
    expect(r.status).toBe(206);
    expect(r.headers.get('content-range')).toBe(`bytes 10-19/${image.length}`);
    expect(Buffer.compare(r.body, image.subarray(10, 20))).toBe(0);
    const head = await get({ range: 'bytes=10-19' }, 'HEAD');
    expect([head.status, head.headers.get('content-length'), head.body.length]).toEqual([206, '10', 0]);
    const whole = await get({}, 'HEAD');
    expect([whole.status, whole.headers.get('content-length')]).toEqual([200, String(image.length)]);
  });

  it('several ranges: 206 multipart/byteranges with every part and an exact Content-Length', async () => {
    const r = await get({ range: 'bytes=0-9, 50000-50099, -7' });
    expect(r.status).toBe(206);
    const type = r.headers.get('content-type')!;
    const m = /^multipart\/byteranges; boundary=([A-Za-z0-9_-]+)$/.exec(type);
    expect(m).not.toBeNull();
    expect(r.headers.get('content-range')).toBeNull();
    expect(Number(r.headers.get('content-length'))).toBe(r.body.length);
    expect(r.headers.get('etag')).toBe(`"${h}"`);
    const parts = parseMultipart(r.body, m![1]!);
    const want = [
      [0, 10],
      [50_000, 50_100],
      [image.length - 7, image.length],
    ] as const;
    expect(parts).toHaveLength(3);
    for (const [i, [s, e]] of want.entries()) {
      expect(parts[i]!.headers).toEqual({
        'content-type': 'application/octet-stream',
        'content-range': `bytes ${s}-${e - 1}/${image.length}`,
      });
      expect(Buffer.compare(parts[i]!.body, image.subarray(s, e))).toBe(0);
    }
    // HEAD: the same headers, no body
    const head = await get({ range: 'bytes=0-9, 50000-50099, -7' }, 'HEAD');
    expect(head.status).toBe(206);
    expect(head.headers.get('content-length')).toBe(r.headers.get('content-length'));
    expect(head.body.length).toBe(0);
  });

  it('overlapping ranges are coalesced into one part', async () => {
    const r = await get({ range: 'bytes=100-199,150-299,0-120' });
    expect(r.status).toBe(206);
    expect(r.headers.get('content-range')).toBe(`bytes 0-299/${image.length}`);
    expect(Buffer.compare(r.body, image.subarray(0, 300))).toBe(0);
  });

  it('too many ranges, invalid specs and a stale If-Range: the whole body (200)', async () => {
    const many = Array.from({ length: MAX_RANGES + 1 }, (_, i) => `${i * 1000}-${i * 1000 + 1}`).join(',');
    const cases: Record<string, string>[] = [
      { range: `bytes=${many}` },
      { range: 'bytes=20-10' },
      { range: 'bytes=0-9,500-509', 'if-range': '"stale"' },
    ];
    for (const headers of cases) {
      const r = await get(headers);
      expect(r.status).toBe(200);
      expect(Buffer.compare(r.body, image)).toBe(0);
    }
    const fresh = await get({ range: 'bytes=0-9,500-509', 'if-range': `"${h}"` });
    expect(fresh.status).toBe(206);
    expect(fresh.headers.get('content-type')).toMatch(/^multipart\/byteranges; boundary=/);
  });

  it('no satisfiable range: 416 with Content-Range bytes */size and a problem document', async () => {
    const r = await get({ range: `bytes=${image.length}-,${image.length + 10}-${image.length + 20}` });
    expect(r.status).toBe(416);
    expect(r.headers.get('content-range')).toBe(`bytes */${image.length}`);
    expect(JSON.parse(r.body.toString('utf8'))).toMatchObject({ code: 'RANGE_NOT_SATISFIABLE' });
  });
});

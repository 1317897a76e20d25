/** httpSource's plain-HTTP client: body framings, the push-style pipe and the iterable body, failures. */
import { createServer, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, describe, expect, it } from 'vitest';
import { httpSource, type SourceResponse } from '../src/fetch/index.ts';

const data = new Uint8Array(3 * 1024 * 1024 + 123).map((_, i) => (i * 7) & 0xff);
const server = createServer((req, res: ServerResponse) => {
  const u = req.url ?? '';
  if (u === '/chunked') {
    res.writeHead(200);
    for (let off = 0; off < data.length; off += 100_000) res.write(data.subarray(off, off + 100_000));
    res.end();
  } else if (u === '/length') {
    res.writeHead(200, { 'content-length': String(data.length), etag: '"e"' });
    res.end(data);
  } else if (u === '/small') {
    res.writeHead(200, { 'content-length': '5' });
    res.end('hello');
  } else if (u === '/range') {
    res.writeHead(206, {
      'content-length': String(data.length - 1000),
      'content-range': `bytes 1000-${data.length - 1}/${data.length}`,
    });
    res.end(data.subarray(1000));
  } else if (u === '/cut') {
    res.writeHead(200, { 'content-length': String(data.length) });
    res.write(data.subarray(0, 1000), () => res.destroy());
  } else if (u === '/gone') {
    res.writeHead(404);
    res.end();
  } else {
    res.writeHead(503);
    res.end();
  }
});
const base = await new Promise<string>((r) =>
  server.listen(0, '127.0.0.1', () => {
    r(`http://127.0.0.1:${(server.address() as AddressInfo).port}`);
  }),
);
afterAll(() => server.close());

const open = (path: string, offset = 0): Promise<SourceResponse> =>
  httpSource().open(`${base}${path}`, { offset, etag: undefined, signal: new AbortController().signal });

async function viaPipe(res: SourceResponse): Promise<Uint8Array> {
  const parts: Buffer[] = [];
  let n = 0;
  await res.pipe!((piece) => {
    parts.push(Buffer.from(piece));
    // Every other piece makes the source wait.
    return n++ % 2 === 0 ? new Promise<void>((r) => setTimeout(r, 1)) : undefined;
  });
  return new Uint8Array(Buffer.concat(parts));
}

async function viaIterator(res: SourceResponse): Promise<Uint8Array> {
  const parts: Buffer[] = [];
  for await (const p of res.body) parts.push(Buffer.from(p));
  return new Uint8Array(Buffer.concat(parts));
}

describe('httpSource over http://', () => {
  it('reads Content-Length, chunked and small bodies, through pipe and the iterator', async () => {
    for (const read of [viaPipe, viaIterator]) {
      const a = await open('/length');
      expect(a.total).toBe(data.length);
      expect(a.etag).toBe('"e"');
      expect(Buffer.compare(await read(a), data)).toBe(0);
      const b = await open('/chunked');
      expect(b.total).toBeUndefined();
      expect(Buffer.compare(await read(b), data)).toBe(0);
      expect(Buffer.from(await read(await open('/small'))).toString()).toBe('hello');
    }
  });

  it('takes a 206 at the asked offset', async () => {
    const r = await open('/range', 1000);
    expect(r.start).toBe(1000);
    expect(Buffer.compare(await viaPipe(r), data.subarray(1000))).toBe(0);
  });

  it('fails a cut transfer, a 404 finally and a 503 transiently', async () => {
    await expect(viaPipe(await open('/cut'))).rejects.toThrow();
    await expect(open('/gone')).rejects.toMatchObject({ code: 'FETCH_FAILED' });
    await expect(open('/busy')).rejects.toMatchObject({ name: 'TransientError' });
  });
});

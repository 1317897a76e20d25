import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { duplexPair, type Duplex } from 'node:stream';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { encode } from '@rotor/cose';
import {
  decodeRequest,
  decodeResponse,
  DeviceError,
  encodeFrame,
  encodeRequest,
  encodeResponse,
  errorBody,
  FrameReader,
  QueueClient,
  serveQueue,
  type ResponseMessage,
} from '../src/index.ts';

const MAIN = join(import.meta.dirname, '../src/enclave/main.ts');
const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** The enclave process with the raw queue socket, for sending hand-made bytes. */
class RawEnclave {
  readonly proc: ChildProcess;
  readonly sock: Duplex;
  readonly #reader = new FrameReader(1 << 20);
  readonly #got: ResponseMessage[] = [];
  #waiters: (() => void)[] = [];

  constructor(maxFrame?: number) {
    const dir = mkdtempSync(join(tmpdir(), 'rotor-ipq-'));
    dirs.push(dir);
    const args = [MAIN, '--state', dir, ...(maxFrame === undefined ? [] : ['--max-frame', String(maxFrame)])];
    this.proc = spawn(process.execPath, args, { stdio: ['ignore', 'inherit', 'inherit', 'pipe'] });
    this.sock = this.proc.stdio[3] as Duplex;
    this.sock.on('data', (c: Buffer) => {
      for (const ev of this.#reader.push(c)) {
        if (ev.kind === 'frame') this.#got.push(decodeResponse(ev.payload, 1 << 20));
      }
      for (const w of this.#waiters) w();
      this.#waiters = [];
    });
  }

  send(bytes: Uint8Array): void {
    this.sock.write(bytes);
  }

  async next(): Promise<ResponseMessage> {
    while (this.#got.length === 0) await new Promise<void>((r) => this.#waiters.push(r));
    return this.#got.shift()!;
  }

  async close(): Promise<void> {
    const exited = new Promise((r) => this.proc.once('exit', r));
    this.sock.end();
    await exited;
  }
}

function codeOf(r: ResponseMessage): unknown {
  return r.ok ? 'ok' : r.body.get('code');
}

describe('the enclave answers malformed, oversized and garbage frames with typed errors and keeps serving', () => {
  it('over the real process', async () => {
    const e = new RawEnclave(4096);
    const health = (id: number): Uint8Array => encodeFrame(encodeRequest(id, 'Health', new Map()));
    e.send(health(1));
    expect(codeOf(await e.next())).toBe('ok');

    const cases: [string, Uint8Array, unknown, number | null][] = [
      ['random bytes in a frame', encodeFrame(randomBytes(200)), 'FRAME_MALFORMED', null],
      ['empty frame', encodeFrame(new Uint8Array(0)), 'FRAME_MALFORMED', null],
      ['CBOR that is not a map', encodeFrame(encode([1, 'Health', new Map()])), 'FRAME_MALFORMED', null],
      [
        'trailing bytes',
        encodeFrame(Buffer.concat([encodeRequest(7, 'Health', new Map()), Buffer.from([0])])),
        'FRAME_MALFORMED',
        null,
      ],
      // Unsorted map keys (non-deterministic encoding): {2: "Health", 1: 8, 3: {}}.
      [
        'unsorted keys',
        encodeFrame(Buffer.from('a302664865616c7468010803a0', 'hex')),
        'FRAME_MALFORMED',
        null,
      ],
      ['indefinite-length map', encodeFrame(Buffer.from('bf0109ff', 'hex')), 'FRAME_MALFORMED', null],
      [
        'id but no type',
        encodeFrame(
          encode(
            new Map<number, unknown>([
              [1, 10],
              [3, new Map()],
            ]),
          ),
        ),
        'FRAME_MALFORMED',
        10,
      ],
      [
        'body not a map',
        encodeFrame(
          encode(
            new Map<number, unknown>([
              [1, 11],
              [2, 'Health'],
              [3, 5],
            ]),
          ),
        ),
        'FRAME_MALFORMED',
        11,
      ],
      [
        'extra member',
        encodeFrame(
          encode(
            new Map<number, unknown>([
              [1, 12],
              [2, 'Health'],
              [3, new Map()],
              [4, 0],
            ]),
          ),
        ),
        'FRAME_MALFORMED',
        null,
      ],
      ['unknown request', encodeFrame(encodeRequest(13, 'Reboot', new Map())), 'REQUEST_UNKNOWN', 13],
      [
        'challenge too short',
        encodeFrame(encodeRequest(14, 'Attest', new Map([['challenge', new Uint8Array(3)]]))),
        'REQUEST_INVALID',
        14,
      ],
      [
        'unexpected body member',
        encodeFrame(encodeRequest(15, 'Health', new Map([['x', 1]]))),
        'REQUEST_INVALID',
        15,
      ],
      [
        'wrong member type',
        encodeFrame(
          encodeRequest(
            16,
            'Sign',
            new Map<string, unknown>([
              ['keyId', 5],
              ['data', new Uint8Array(1)],
            ]),
          ),
        ),
        'REQUEST_INVALID',
        16,
      ],
      [
        'bad key id',
        encodeFrame(encodeRequest(17, 'GetPublicKey', new Map([['keyId', '../../etc']]))),
        'REQUEST_INVALID',
        17,
      ],
      [
        'attest before a RoT',
        encodeFrame(encodeRequest(18, 'Attest', new Map([['challenge', new Uint8Array(16)]]))),
        'ROT_MISSING',
        18,
      ],
      [
        'a response sent to the enclave',
        encodeFrame(encodeResponse(19, true, new Map())),
        'REQUEST_UNKNOWN',
        19,
      ],
    ];
    for (const [name, bytes, code, id] of cases) {
      e.send(bytes);
      const r = await e.next();
      expect({ name, code: codeOf(r), id: r.id }).toEqual({ name, code, id });
      e.send(health(100));
      expect({ name, after: codeOf(await e.next()) }).toEqual({ name, after: 'ok' });
    }

    // Oversized: the header announces more than the bound; answered at once, the bytes are skipped as they come.
    const big = Buffer.alloc(10_000, 0xa5);
    const hdr = Buffer.alloc(4);
    hdr.writeUInt32BE(big.length);
    e.send(hdr);
    const r = await e.next();
    expect([codeOf(r), r.id]).toEqual(['FRAME_TOO_LARGE', null]);
    e.send(big.subarray(0, 3000));
    e.send(Buffer.concat([big.subarray(3000), health(101)]));
    expect(codeOf(await e.next())).toBe('ok');

    // A burst of garbage frames, then a valid request, byte by byte.
    for (let i = 0; i < 200; i++) e.send(encodeFrame(randomBytes(1 + (i % 300))));
    for (let i = 0; i < 200; i++) expect(r.ok || codeOf(await e.next()) !== 'ok').toBe(true);
    for (const b of health(102)) e.send(Buffer.from([b]));
    const last = await e.next();
    expect([codeOf(last), last.id]).toEqual(['ok', 102]);
    await e.close();
  });
});

describe('QueueClient treats the enclave as untrusted', () => {
  function pair(): { client: QueueClient; server: Duplex; errors: DeviceError[] } {
    const [a, b] = duplexPair();
    const errors: DeviceError[] = [];
    const client = new QueueClient(a, {
      timeoutMs: 200,
      maxFrame: 1024,
      onProtocolError: (e) => errors.push(e),
    });
    return { client, server: b, errors };
  }

  it('times out, rejects unknown error codes, ignores responses to nothing, and bounds frames', async () => {
    const { client, server, errors } = pair();
    const reader = new FrameReader(1 << 20);
    const ids: number[] = [];
    server.on('data', (c: Buffer) => {
      for (const ev of reader.push(c)) {
        if (ev.kind !== 'frame') continue;
        const r = decodeRequest(ev.payload, 1 << 20);
        if (r.ok) ids.push(r.msg.id);
      }
    });
    const p1 = client.request('Health', new Map());
    const p2 = client.request('Health', new Map());
    const p3 = client.request('Health', new Map());
    const p4 = client.request('Health', new Map());
    await new Promise((r) => setTimeout(r, 20));
    expect(ids).toHaveLength(4);
    const [i1, i2, i3] = ids as [number, number, number];
    server.write(
      encodeFrame(
        encodeResponse(
          i2,
          false,
          new Map([
            ['code', 'NOT_A_CODE'],
            ['message', 'x'],
          ]),
        ),
      ),
    );
    server.write(encodeFrame(encodeResponse(999, true, new Map())));
    server.write(encodeFrame(randomBytes(50)));
    const huge = Buffer.alloc(4);
    huge.writeUInt32BE(5000);
    server.write(Buffer.concat([huge, Buffer.alloc(5000)]));
    server.write(encodeFrame(encodeResponse(i3, false, errorBody('KEY_NOT_FOUND', 'no such key'))));
    server.write(encodeFrame(encodeResponse(i1, true, new Map([['status', 'ok']]))));
    expect((await p1).get('status')).toBe('ok');
    await expect(p2).rejects.toMatchObject({ code: 'FRAME_MALFORMED' });
    await expect(p3).rejects.toMatchObject({ code: 'KEY_NOT_FOUND', remote: true });
    await expect(p4).rejects.toMatchObject({ code: 'REQUEST_TIMEOUT' });
    expect(errors.map((e) => e.code).sort()).toEqual([
      'FRAME_MALFORMED',
      'FRAME_TOO_LARGE',
      'FRAME_UNEXPECTED',
    ]);
    client.close(new DeviceError('CLOSED', 'done'));
    await expect(client.request('Health', new Map())).rejects.toMatchObject({ code: 'CLOSED' });
  });

  it('serveQueue answers pipelined requests out of order by id, and refuses more than maxInFlight', async () => {
    const [a, b] = duplexPair();
    let release: () => void = () => undefined;
    const gate = new Promise<void>((r) => (release = r));
    serveQueue(
      b,
      async (type) => {
        if (type === 'slow') await gate;
        return new Map([['type', type]]);
      },
      { maxInFlight: 3 },
    );
    const client = new QueueClient(a, { timeoutMs: 2000 });
    const slow = client.request('slow', new Map());
    const fast = client.request('fast', new Map());
    expect((await fast).get('type')).toBe('fast');
    const s2 = client.request('slow', new Map());
    const s3 = client.request('slow', new Map());
    await expect(client.request('slow', new Map())).rejects.toMatchObject({ code: 'QUEUE_FULL' });
    release();
    expect((await slow).get('type')).toBe('slow');
    await Promise.all([s2, s3]);
  });
});

describe('FrameReader', () => {
  it('yields the same frames however the stream is cut into chunks, and skips oversized ones in step', () => {
    fc.assert(
      fc.property(
        fc.array(fc.uint8Array({ maxLength: 300 }), { maxLength: 20 }),
        fc.array(fc.integer({ min: 1, max: 97 }), { minLength: 1, maxLength: 10 }),
        (payloads, cuts) => {
          const stream = Buffer.concat(payloads.map((p) => encodeFrame(p)));
          const r = new FrameReader(200);
          const got: string[] = [];
          let off = 0;
          for (let i = 0; off < stream.length; i++) {
            const n = cuts[i % cuts.length]!;
            for (const ev of r.push(stream.subarray(off, off + n))) {
              got.push(
                ev.kind === 'frame' ? Buffer.from(ev.payload).toString('hex') : `oversize ${ev.length}`,
              );
            }
            off += n;
          }
          const want = payloads.map((p) =>
            p.length > 200 ? `oversize ${p.length}` : Buffer.from(p).toString('hex'),
          );
          expect(got).toEqual(want);
          expect(r.buffered).toBe(0);
        },
      ),
    );
  });
});

/**
 * A stub of the server's device API (mutual TLS, the documented /d/v1 routes) for the tracker tests that need to
 * script the server: malformed answers, a full update with a plain (unencrypted) release, report capture.
 */
import { createServer, type Server } from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { TLSSocket } from 'node:tls';
import { selfSignedCert, type TestCert } from '../../server/test/helpers.ts';

export interface StubReply {
  readonly status: number;
  readonly type?: string;
  readonly body?: Uint8Array | string;
}

export interface Seen {
  readonly method: string;
  readonly path: string;
  readonly type: string | undefined;
  readonly body: Uint8Array;
  readonly clientCert: boolean;
  readonly range: string | undefined;
}

export class Stub {
  readonly cert: TestCert;
  readonly seen: Seen[] = [];
  checkin: () => StubReply = () => ({ status: 200, type: 'application/json', body: '{"action":"none"}' });
  envelope: Uint8Array = new Uint8Array(0);
  payloads = new Map<string, Uint8Array>();
  /** The reports route: default accepts everything (200). */
  report: (type: string | undefined, body: Uint8Array) => StubReply = () => ({
    status: 200,
    type: 'application/json',
    body: '{"rolloutId":"r1","state":"in_progress"}',
  });
  #server: Server | undefined;
  port = 0;

  private constructor(cert: TestCert) {
    this.cert = cert;
  }

  static async start(): Promise<Stub> {
    const s = new Stub(await selfSignedCert('rotor-stub-server', { server: true }));
    const server = createServer(
      { cert: s.cert.certPem, key: s.cert.keyPem, requestCert: true, rejectUnauthorized: false },
      (req, res) => {
        s.#handle(req, res);
      },
    );
    s.#server = server;
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const a = server.address();
    if (a !== null && typeof a === 'object') s.port = a.port;
    return s;
  }

  get url(): string {
    return `https://127.0.0.1:${this.port}`;
  }

  #handle(req: IncomingMessage, res: ServerResponse): void {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const path = req.url ?? '';
      const body = new Uint8Array(Buffer.concat(chunks));
      const sock = req.socket as Partial<TLSSocket>;
      const peer = sock.getPeerCertificate?.(false) as { raw?: Buffer } | null | undefined;
      this.seen.push({
        method: req.method ?? '',
        path,
        type: req.headers['content-type'],
        body,
        clientCert: peer?.raw !== undefined,
        range: req.headers.range,
      });
      const send = (r: StubReply): void => {
        res.statusCode = r.status;
        if (r.type !== undefined) res.setHeader('content-type', r.type);
        res.end(r.body === undefined ? undefined : typeof r.body === 'string' ? r.body : Buffer.from(r.body));
      };
      if (req.method === 'POST' && path === '/d/v1/checkin') {
        send(this.checkin());
        return;
      }
      if (req.method === 'GET' && path === '/d/v1/self') {
        send({ status: 200, type: 'application/json', body: '{"id":"stub-device"}' });
        return;
      }
      if (req.method === 'GET' && /^\/d\/v1\/rollouts\/[^/]+\/envelope$/.test(path)) {
        send({ status: 200, type: 'application/suit-envelope+cose', body: this.envelope });
        return;
      }
      if (req.method === 'POST' && path === '/d/v1/reports') {
        send(this.report(req.headers['content-type'], body));
        return;
      }
      const m = /^\/d\/v1\/payloads\/([0-9a-f]{64})$/.exec(path);
      const p = m === null ? undefined : this.payloads.get(m[1]!);
      if (req.method === 'GET' && p !== undefined) {
        const etag = `"${m![1]!}"`;
        res.setHeader('etag', etag);
        const r = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
        if (r !== null && Number(r[1]) < p.length) {
          const start = Number(r[1]);
          res.statusCode = 206;
          res.setHeader('content-range', `bytes ${start}-${p.length - 1}/${p.length}`);
          res.end(Buffer.from(p.subarray(start)));
          return;
        }
        res.statusCode = 200;
        res.end(Buffer.from(p));
        return;
      }
      send({ status: 404, type: 'application/problem+json', body: '{"code":"NOT_FOUND","status":404}' });
    });
  }

  close(): Promise<void> {
    const s = this.#server;
    return new Promise((resolve) => {
      if (s === undefined) resolve();
      else {
        s.closeAllConnections();
        s.close(() => {
          resolve();
        });
      }
    });
  }
}

/**
 * The device's HTTPS client never resumes a TLS session (tracker/http.ts, maxCachedSessions 0). On a resumed session
 * the server's OpenSSL knows only the peer's leaf certificate, not the chain the client presented in the full
 * handshake, so an RFC 3820 proxy certificate would arrive without the device certificate that issued it and the
 * server (device-tls.ts) refuses it: DEVICE_PROXY_INVALID on every request of that connection. Seen in `rotor demo`
 * when a second socket opened under concurrent capability fetches. Here every request gets a new connection (the
 * server closes each one) and each must present the full chain again.
 */
import 'reflect-metadata';
import { createServer, type Server } from 'node:https';
import { TLSSocket } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Alg, softwareSigner } from '@rotor/cose';
import { ProxyCredential } from '../src/tracker/credential.ts';
import { TrackerHttp } from '../src/tracker/http.ts';
import { createTestPki } from '../../server/test/proxy-pki.ts';
import { selfSignedCert, type TestCert } from '../../server/test/helpers.ts';

let server: Server;
let serverCert: TestCert;
let url = '';

beforeAll(async () => {
  serverCert = await selfSignedCert('localhost', { server: true });
  server = createServer(
    { key: serverCert.keyPem, cert: serverCert.certPem, requestCert: true, rejectUnauthorized: false },
    (req, res) => {
      const sock = req.socket;
      if (!(sock instanceof TLSSocket)) throw new Error('not TLS');
      const leaf = sock.getPeerCertificate(true);
      const issuer = leaf.issuerCertificate as typeof leaf | undefined;
      const presented = issuer !== undefined && issuer !== leaf;
      res.setHeader('connection', 'close');
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ reused: sock.isSessionReused(), presented }));
    },
  );
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const a = server.address();
  url = `https://127.0.0.1:${a !== null && typeof a === 'object' ? a.port : 0}`;
});

afterAll(async () => {
  await new Promise((resolve) => server.close(resolve));
});

describe('tracker http: no TLS session resumption', () => {
  it('every new connection presents [proxy, device certificate] in a full handshake', async () => {
    const pki = await createTestPki('Resumption');
    const device = await pki.softwareDevice();
    const identity = await ProxyCredential.create({
      deviceCertPem: device.pem,
      signer: softwareSigner(device.key, Alg.ES256),
    });
    const http = new TrackerHttp({ baseUrl: url, identity, ca: serverCert.certPem });
    try {
      const seen: unknown[] = [];
      for (let i = 0; i < 4; i++) {
        const r = await http.request('GET', '/x', { maxBody: 1024 });
        expect(r.status).toBe(200);
        seen.push(JSON.parse(Buffer.from(r.body).toString('utf8')));
      }
      expect(seen).toEqual(Array.from({ length: 4 }, () => ({ reused: false, presented: true })));
    } finally {
      http.close();
    }
  });
});

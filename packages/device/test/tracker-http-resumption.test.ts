/**
 * With an RFC 3820 proxy identity the device's HTTPS client never resumes a TLS session (tracker/http.ts,
 * maxCachedSessions 0); with a plain client certificate it does (the session carries the leaf). On a resumed session
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
      const raw = (sock.getPeerCertificate(false) as { raw?: Buffer }).raw;
      res.end(
        JSON.stringify({
          reused: sock.isSessionReused(),
          presented,
          leaf: raw === undefined ? null : raw.toString('base64').slice(0, 32),
        }),
      );
    },
  );
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const a = server.address();
  url = `https://127.0.0.1:${a !== null && typeof a === 'object' ? a.port : 0}`;
});

afterAll(async () => {
  await new Promise((resolve) => server.close(resolve));
});

describe('tracker http: TLS session resumption only for a plain client certificate', () => {
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
      expect(seen).toHaveLength(4);
      for (const x of seen) expect(x).toMatchObject({ reused: false, presented: true });
    } finally {
      http.close();
    }
  });

  it('a plain client certificate resumes its session (RFC 8446 §2.2) and the server still knows the leaf', async () => {
    const cert = await selfSignedCert('resuming-device');
    const http = new TrackerHttp({
      baseUrl: url,
      identity: { cert: cert.certPem, key: cert.keyPem },
      ca: serverCert.certPem,
    });
    try {
      const seen: { reused: boolean; leaf: string | null }[] = [];
      for (let i = 0; i < 4; i++) {
        const r = await http.request('GET', '/x', { maxBody: 1024 });
        expect(r.status).toBe(200);
        seen.push(
          JSON.parse(Buffer.from(r.body).toString('utf8')) as { reused: boolean; leaf: string | null },
        );
      }
      expect(seen[0]?.reused).toBe(false);
      expect(seen.slice(1).some((x) => x.reused)).toBe(true);
      // A resumed session still carries the authenticated leaf: the server decides by its fingerprint.
      const first = seen[0]?.leaf;
      expect(first).toEqual(expect.any(String));
      for (const x of seen) expect(x.leaf).toBe(first);
    } finally {
      http.close();
    }
  });
});

/**
 * Test helpers: the two storage backends (every DB suite runs on both), certificates, and HTTP clients for the
 * operator API (fetch) and the mutual-TLS device API (node:https with a client certificate).
 */
import 'reflect-metadata';
import { randomBytes } from 'node:crypto';
import { request as httpsRequest, Agent } from 'node:https';
import * as x509 from '@peculiar/x509';
import pg from 'pg';
import { openDatabase, type Db } from '../src/index.ts';

x509.cryptoProvider.set(globalThis.crypto);

export type BackendName = 'pglite' | 'postgres';
export const BACKENDS: readonly BackendName[] = ['pglite', 'postgres'];

/** Admin connection to this machine's PostgreSQL (tests create and drop their own databases). */
export const PG_ADMIN_URL = process.env.ROTOR_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';

export function pgUrlFor(database: string): string {
  const u = new URL(PG_ADMIN_URL);
  u.pathname = `/${database}`;
  return u.toString();
}

export interface TestDatabase {
  readonly backend: BackendName;
  /** For postgres: the URL of the fresh database (a second instance can connect to it). */
  readonly url: string | undefined;
  /** Opens a (further) connection to the same database; PGlite: only one, the one returned by createTestDatabase. */
  open(): Promise<Db>;
  drop(): Promise<void>;
}

/** A fresh, empty database: PGlite in memory, or `rotor_t_<random>` on the machine's PostgreSQL. */
export async function createTestDatabase(backend: BackendName): Promise<TestDatabase & { db: Db }> {
  if (backend === 'pglite') {
    const db = await openDatabase({});
    return { backend, url: undefined, db, open: () => Promise.resolve(db), drop: () => db.close() };
  }
  const name = `rotor_t_${randomBytes(6).toString('hex')}`;
  const admin = new pg.Client({ connectionString: PG_ADMIN_URL });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${name}`);
  } finally {
    await admin.end();
  }
  const url = pgUrlFor(name);
  const opened: Db[] = [];
  const open = async (): Promise<Db> => {
    const d = await openDatabase({ databaseUrl: url, poolSize: 4 });
    opened.push(d);
    return d;
  };
  const db = await open();
  return {
    backend,
    url,
    db,
    open,
    async drop() {
      for (const d of opened) await d.close().catch(() => undefined);
      const a = new pg.Client({ connectionString: PG_ADMIN_URL });
      await a.connect();
      try {
        await a.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      } finally {
        await a.end();
      }
    },
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Certificates (self-signed P-256; the manufacturing issue brings the factory CA)

export interface TestCert {
  readonly certPem: string;
  readonly keyPem: string;
}

function pem(label: string, der: ArrayBuffer): string {
  const b64 = Buffer.from(der)
    .toString('base64')
    .replace(/(.{64})/g, '$1\n');
  return `-----BEGIN ${label}-----\n${b64}${b64.endsWith('\n') ? '' : '\n'}-----END ${label}-----\n`;
}

export async function selfSignedCert(cn: string, opts: { server?: boolean } = {}): Promise<TestCert> {
  const alg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };
  const keys = await globalThis.crypto.subtle.generateKey(alg, true, ['sign', 'verify']);
  const extensions: x509.Extension[] = [new x509.BasicConstraintsExtension(false, undefined, true)];
  if (opts.server === true) {
    extensions.push(
      new x509.SubjectAlternativeNameExtension([
        { type: 'ip', value: '127.0.0.1' },
        { type: 'dns', value: 'localhost' },
      ]),
    );
  }
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomBytes(8)
      .toString('hex')
      .replace(/^[89a-f]/, '1'),
    name: `CN=${cn}`,
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + 86_400_000),
    keys,
    signingAlgorithm: alg,
    extensions,
  });
  return {
    certPem: cert.toString('pem'),
    keyPem: pem('PRIVATE KEY', await globalThis.crypto.subtle.exportKey('pkcs8', keys.privateKey)),
  };
}

// ---------------------------------------------------------------------------------------------------------------
// HTTP clients

export interface Res {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
  json(): unknown;
}

/** A device: its own keep-alive agent with its client certificate; trusts the test server certificate. */
export function deviceClient(baseUrl: string, serverCert: TestCert, cert: TestCert | undefined) {
  const agent = new Agent({
    keepAlive: true,
    maxSockets: 1,
    ca: serverCert.certPem,
    ...(cert === undefined ? {} : { cert: cert.certPem, key: cert.keyPem }),
  });
  const req = (
    method: string,
    path: string,
    headers: Record<string, string> = {},
    body?: Uint8Array | string,
  ): Promise<Res> =>
    new Promise((resolve, reject) => {
      const r = httpsRequest(new URL(path, baseUrl), { method, agent, headers }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const body = Buffer.concat(chunks);
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            body,
            json: () => JSON.parse(body.toString('utf8')) as unknown,
          });
        });
        res.on('error', reject);
      });
      r.on('error', reject);
      r.end(body);
    });
  return {
    agent,
    get: (path: string, headers?: Record<string, string>) => req('GET', path, headers),
    post: (path: string, body: Uint8Array | string, contentType: string) =>
      req('POST', path, { 'content-type': contentType }, body),
    close: () => {
      agent.destroy();
    },
  };
}

/** Operator API client with a bearer token. */
export function operatorClient(baseUrl: string, token: string | undefined) {
  const call = async (method: string, path: string, body?: unknown, contentType?: string): Promise<Res> => {
    const headers: Record<string, string> = {};
    if (token !== undefined) headers.authorization = `Bearer ${token}`;
    let payload: Uint8Array | string | undefined;
    if (body instanceof Uint8Array) {
      payload = body;
      headers['content-type'] = contentType ?? 'application/octet-stream';
    } else if (typeof body === 'string') {
      payload = body;
      headers['content-type'] = contentType ?? 'application/json';
    } else if (body !== undefined) {
      payload = JSON.stringify(body);
      headers['content-type'] = contentType ?? 'application/json';
    }
    const res = await fetch(new URL(path, baseUrl), {
      method,
      headers,
      ...(payload === undefined ? {} : { body: payload }),
    });
    const buf = Buffer.from(await res.arrayBuffer());
    const hs: Record<string, string> = {};
    res.headers.forEach((v, k) => {
      hs[k] = v;
    });
    return {
      status: res.status,
      headers: hs,
      body: buf,
      json: () => JSON.parse(buf.toString('utf8')) as unknown,
    };
  };
  return {
    get: (p: string) => call('GET', p),
    post: (p: string, b?: unknown, ct?: string) => call('POST', p, b, ct),
    put: (p: string, b?: unknown, ct?: string) => call('PUT', p, b, ct),
    patch: (p: string, b?: unknown, ct?: string) => call('PATCH', p, b, ct),
    delete: (p: string) => call('DELETE', p),
  };
}

export type OperatorClient = ReturnType<typeof operatorClient>;

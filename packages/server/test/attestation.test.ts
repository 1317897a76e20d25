/**
 * Issue 7: the verifier end to end over HTTP (device API on mutual TLS, operator API with tokens). The device side
 * is simulated with @rotor/trust only (software RoT keys, the same record and token formats the enclave emits), so
 * the server never imports the device package.
 */
import { createHash, createPublicKey, randomBytes, X509Certificate } from 'node:crypto';
import { request as httpsRequest, Agent } from 'node:https';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  Alg,
  coseKeyFromKeyObject,
  encode,
  generateSigningKey,
  softwareSigner,
  verifierFromCoseKey,
  type Signer,
} from '@rotor/cose';
import {
  createAttestationToken,
  createRotRecord,
  evidenceClaimsMap,
  rotPublicKey,
  verifyAttestationResult,
  type SoftwareComponent,
} from '@rotor/trust';
import { selfSignedCert, type TestCert } from './helpers.ts';
import { startFixture, type Fixture } from './fixtures.ts';

const sha = (b: Uint8Array | string): Uint8Array => new Uint8Array(createHash('sha256').update(b).digest());
const hexOf = (b: Uint8Array): string => Buffer.from(b).toString('hex');

interface HttpRes {
  status: number;
  json(): unknown;
}

function mtls(baseUrl: string, serverCert: TestCert, cert: TestCert) {
  const agent = new Agent({
    keepAlive: true,
    maxSockets: 4,
    ca: serverCert.certPem,
    cert: cert.certPem,
    key: cert.keyPem,
  });
  const call = (method: string, path: string, body?: Uint8Array): Promise<HttpRes> =>
    new Promise((resolve, reject) => {
      const headers: Record<string, string> = {};
      if (body !== undefined) {
        headers['content-type'] = 'application/octet-stream';
        headers['content-length'] = String(body.length);
      }
      const r = httpsRequest(new URL(path, baseUrl), { method, agent, headers }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const b = Buffer.concat(chunks).toString('utf8');
          resolve({ status: res.statusCode ?? 0, json: () => JSON.parse(b) as unknown });
        });
        res.on('error', reject);
      });
      r.on('error', reject);
      r.end(body === undefined ? undefined : Buffer.from(body));
    });
  return {
    call,
    close: () => {
      agent.destroy();
    },
  };
}

/** A simulated device: software RoT chain (seed 002 records), UEID, installed components. */
class SimDevice {
  readonly ueid = new Uint8Array([0x01, ...randomBytes(16)]);
  records: Uint8Array[] = [];
  signers: Signer[] = [];
  components: SoftwareComponent[] = [];
  readonly authorKid = sha('author');

  async rotate(): Promise<Uint8Array> {
    const k = generateSigningKey(Alg.ES256);
    const pub = rotPublicKey(coseKeyFromKeyObject(k.publicKey), Alg.ES256);
    const signer = softwareSigner(k.privateKey, Alg.ES256, pub.kid);
    const index = this.records.length;
    const prev = this.signers[index - 1];
    const record = await createRotRecord(
      { index, publicKey: pub, alg: Alg.ES256, previous: prev?.kid ?? null, time: 1_700_000_000 + index },
      prev ?? signer,
    );
    this.records.push(record);
    this.signers.push(signer);
    return record;
  }

  install(type: string, image: Uint8Array, version: string): void {
    this.components = [
      ...this.components.filter((c) => c.type !== type),
      { type, digest: sha(image), version, signer: this.authorKid },
    ];
  }

  evidence(nonce: Uint8Array, keyIndex = this.signers.length - 1, ueid = this.ueid): Promise<Uint8Array> {
    const claims = evidenceClaimsMap({
      oemid: new Uint8Array([0x00, 0x1a, 0x2b]),
      hwmodel: new TextEncoder().encode('sensor-v1'),
      swversion: this.components.find((c) => c.type === 'fw')?.version ?? '0',
      oemboot: true,
      dbgstat: 3,
      uptime: 42,
      components: this.components,
    });
    return createAttestationToken(
      { nonce, ueid, iat: Math.floor(Date.now() / 1000), rotIndex: keyIndex, claims },
      this.signers[keyIndex]!,
    );
  }

  chainBody(): Uint8Array {
    return encode(
      new Map<string, unknown>([
        ['ueid', this.ueid],
        ['records', this.records],
      ]),
    );
  }
}

interface ResultJson {
  status: string;
  claims: Record<string, { status: string; reason: string }>;
  result: string;
}

describe('attestation verifier over HTTP (issue 7, RFC 9334 roles)', () => {
  let f: Fixture;
  let clock = Date.now();
  const devs: { sim: SimDevice; http: ReturnType<typeof mtls>; id: string }[] = [];

  async function addDevice(name: string) {
    const cert = await selfSignedCert(name);
    const der = new X509Certificate(cert.certPem).raw;
    const r = await f.admin.post('/v1/devices', { name, certSha256: hexOf(sha(der)) });
    expect(r.status).toBe(201);
    const id = (r.json() as { id: string }).id;
    const sim = new SimDevice();
    await sim.rotate();
    const http = mtls(f.server.deviceUrl!, f.serverCert, cert);
    const e = await http.call('PUT', '/d/v1/attestation/rot', sim.chainBody());
    expect(e.status).toBe(200);
    const d = { sim, http, id };
    devs.push(d);
    return d;
  }

  async function nonce(d: { http: ReturnType<typeof mtls> }): Promise<Uint8Array> {
    const r = await d.http.call('POST', '/d/v1/attestation/nonce');
    expect(r.status).toBe(200);
    return new Uint8Array(Buffer.from((r.json() as { nonce: string }).nonce, 'base64'));
  }

  async function post(d: { http: ReturnType<typeof mtls> }, token: Uint8Array): Promise<ResultJson> {
    const r = await d.http.call('POST', '/d/v1/attestation/evidence', token);
    expect(r.status).toBe(200);
    return r.json() as ResultJson;
  }

  async function reference(image: Uint8Array, label: string): Promise<void> {
    const r = await f.admin.post('/v1/attestation/reference-values', { sha256: hexOf(sha(image)), label });
    expect(r.status).toBe(200);
  }

  const fw1 = new TextEncoder().encode('firmware v1 '.repeat(100));
  const fw2 = new TextEncoder().encode('firmware v2 '.repeat(100));
  const mod = new TextEncoder().encode('\0asm capability module');

  beforeAll(async () => {
    f = await startFixture('pglite', { now: () => clock });
    await reference(fw1, 'fw 1.0.0');
    await reference(fw2, 'fw 2.0.0');
    await reference(mod, 'cap:thermo 1');
  });
  afterAll(async () => {
    for (const d of devs) d.http.close();
    await f.close();
  });

  it('affirms a device after provisioning and after an update; the result is signed by the verifier', async () => {
    const d = await addDevice('attest-a');
    d.sim.install('fw', fw1, '1.0.0');
    d.sim.install('cap:thermo', mod, '1');
    const r1 = await post(d, await d.sim.evidence(await nonce(d)));
    expect(r1.status).toBe('affirming');
    expect(Object.keys(r1.claims).sort()).toEqual(
      ['dbgstat', 'measurements', 'nonce', 'oemboot', 'profile', 'signature', 'ueid'].sort(),
    );
    d.sim.install('fw', fw2, '2.0.0');
    const r2 = await post(d, await d.sim.evidence(await nonce(d)));
    expect(r2.status).toBe('affirming');

    const key = (await f.admin.get('/v1/attestation/verifier-key')).json() as { publicKeyPem: string };
    const verifier = verifierFromCoseKey({
      ...coseKeyFromKeyObject(createPublicKey(key.publicKeyPem)),
      alg: Alg.ES256,
    });
    const ar = verifyAttestationResult(
      new Uint8Array(Buffer.from(r2.result, 'base64')),
      verifier,
      new Set([Alg.ES256]),
    );
    expect(ar).toMatchObject({ deviceId: d.id, status: 'affirming', rotIndex: 0 });
    const list = (await f.admin.get(`/v1/devices/${d.id}/attestation/results`)).json() as {
      items: ResultJson[];
    };
    expect(list.items.map((i) => i.status)).toEqual(['affirming', 'affirming']);
  });

  it('contraindicates a tampered image, a replayed nonce, a stale token, another device and a revoked RoT key', async () => {
    const d = await addDevice('attest-b');
    const other = await addDevice('attest-c');
    d.sim.install('fw', fw1, '1.0.0');
    other.sim.install('fw', fw1, '1.0.0');

    // Tampered image: the measurement matches no reference value.
    d.sim.install('fw', new TextEncoder().encode('firmware v1 tampered'), '1.0.0');
    const t = await post(d, await d.sim.evidence(await nonce(d)));
    expect(t.status).toBe('contraindicated');
    expect(t.claims.measurements).toMatchObject({ status: 'contraindicated' });
    expect(t.claims.measurements?.reason).toMatch(/no reference value/);
    d.sim.install('fw', fw1, '1.0.0');

    // Replayed nonce: the same evidence twice.
    const ev = await d.sim.evidence(await nonce(d));
    expect((await post(d, ev)).status).toBe('affirming');
    const replay = await post(d, ev);
    expect(replay.status).toBe('contraindicated');
    expect(replay.claims.nonce?.reason).toMatch(/replay/);

    // Group commit: the same fresh evidence posted several times at once (one batch) is affirmed exactly once.
    const burst = await d.sim.evidence(await nonce(d));
    const outs = await Promise.all(Array.from({ length: 6 }, () => post(d, burst)));
    expect(outs.filter((o) => o.status === 'affirming')).toHaveLength(1);
    for (const o of outs.filter((x) => x.status !== 'affirming'))
      expect(o.claims.nonce?.reason).toMatch(/replay/);

    // Stale token: made for a nonce whose lifetime has passed.
    const n = await nonce(d);
    clock += 10 * 60_000;
    const stale = await post(d, await d.sim.evidence(n));
    expect(stale.status).toBe('contraindicated');
    expect(stale.claims.nonce?.reason).toMatch(/expired/);

    // Evidence for another device: the other device's UEID, signed by d's RoT; and other's token posted by d.
    const forOther = await post(d, await d.sim.evidence(await nonce(d), undefined, other.sim.ueid));
    expect(forOther.status).toBe('contraindicated');
    expect(forOther.claims.ueid?.reason).toMatch(/another device/);
    const stolen = await post(d, await other.sim.evidence(await nonce(d)));
    expect(stolen.status).toBe('contraindicated');
    expect(stolen.claims.signature?.reason).toMatch(/not in this device's RoT chain/);
    // A nonce issued to another device.
    const crossNonce = await post(d, await d.sim.evidence(await nonce(other)));
    expect(crossNonce.claims.nonce?.reason).toMatch(/another device/);

    // Revoked RoT key: after a rotation the old key's evidence is refused.
    expect((await f.admin.post(`/v1/devices/${d.id}/rot/rotate`)).status).toBe(200);
    const pend = (await d.http.call('GET', '/d/v1/attestation/pending')).json() as { rotate: boolean };
    expect(pend.rotate).toBe(true);
    await d.sim.rotate();
    const rep = await d.http.call('PUT', '/d/v1/attestation/rot', d.sim.chainBody());
    expect(rep.json()).toMatchObject({ index: 1, revoked: 1 });
    const rot = (await f.admin.get(`/v1/devices/${d.id}/rot`)).json() as {
      index: number;
      revokedKids: string[];
      rotateRequested: boolean;
    };
    expect(rot).toMatchObject({ index: 1, rotateRequested: false });
    expect(rot.revokedKids).toHaveLength(1);
    const old = await post(d, await d.sim.evidence(await nonce(d), 0));
    expect(old.status).toBe('contraindicated');
    expect(old.claims.signature?.reason).toMatch(/revoked RoT key 0/);
    expect((await post(d, await d.sim.evidence(await nonce(d)))).status).toBe('affirming');
  });

  it('refuses a reported chain that does not extend the recorded one, and converges when re-reported', async () => {
    const d = await addDevice('attest-d');
    const forked = new SimDevice();
    await forked.rotate();
    const bad = await d.http.call(
      'PUT',
      '/d/v1/attestation/rot',
      encode(
        new Map<string, unknown>([
          ['ueid', d.sim.ueid],
          ['records', forked.records],
        ]),
      ),
    );
    expect(bad.status).toBe(409);
    // The device rotated twice while the server missed both reports (crash after commit, before report):
    await d.sim.rotate();
    await d.sim.rotate();
    const r = await d.http.call('PUT', '/d/v1/attestation/rot', d.sim.chainBody());
    expect(r.json()).toMatchObject({ index: 2, revoked: 2 });
    // Re-reporting the same chain is idempotent.
    expect((await d.http.call('PUT', '/d/v1/attestation/rot', d.sim.chainBody())).json()).toMatchObject({
      index: 2,
      revoked: 0,
    });
  });

  it('operators only: a device certificate cannot reach operator routes and auditors cannot request', async () => {
    const a = await f.admin.post('/v1/tokens', { name: 'aud', role: 'auditor' });
    const token = (a.json() as { token: string }).token;
    const res = await fetch(new URL(`/v1/devices/${devs[0]!.id}/rot/rotate`, f.server.operatorUrl), {
      method: 'POST',
      headers: { authorization: `Bearer ${token}` },
    });
    expect(res.status).toBe(403);
  });
});

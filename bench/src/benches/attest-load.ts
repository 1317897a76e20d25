/**
 * Load generator for `npm run bench -- attest` (a separate process, so the server's event loop only serves).
 * Reads one JSON line of setup from stdin: the device listener's URL, the server certificate, and per device its
 * mutual-TLS certificate and key. Builds a software RoT (seed 002 record 0) per device, reports the chains, then
 * answers every "run <ms> <concurrency> [nonces per request]" line with one JSON line {count, errors, statuses}:
 * how many full appraisals (nonce → EAT signed by the device's RoT → evidence posted → signed result) completed
 * in that window. With nonces per request N > 1 a device fetches N nonces in one request (/nonces?count=N) and
 * uses each for one appraisal.
 */
import { createHash, randomBytes } from 'node:crypto';
import { Agent, request } from 'node:https';
import { createInterface } from 'node:readline';
import {
  Alg,
  coseKeyFromKeyObject,
  encode,
  generateSigningKey,
  softwareSigner,
  type Signer,
} from '@rotor/cose';
import { createAttestationToken, createRotRecord, evidenceClaimsMap, rotPublicKey } from '@rotor/trust';

interface Setup {
  url: string;
  ca: string;
  fw: string;
  module: string;
  devices: { certPem: string; keyPem: string }[];
}

interface Dev {
  agent: Agent;
  signer: Signer;
  ueid: Uint8Array;
}

function call(d: Dev, url: string, method: string, path: string, body?: Uint8Array): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = {};
    if (body !== undefined) {
      headers['content-type'] = 'application/octet-stream';
      headers['content-length'] = String(body.length);
    }
    const r = request(new URL(path, url), { method, agent: d.agent, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const b = Buffer.concat(chunks);
        if (res.statusCode !== 200) reject(new Error(`${path}: ${String(res.statusCode)} ${b.toString()}`));
        else resolve(b);
      });
      res.on('error', reject);
    });
    r.on('error', reject);
    r.end(body === undefined ? undefined : Buffer.from(body));
  });
}

const sha = (b: Uint8Array): Uint8Array => new Uint8Array(createHash('sha256').update(b).digest());

async function main(): Promise<void> {
  const lines = createInterface({ input: process.stdin });
  const it = lines[Symbol.asyncIterator]();
  const first = await it.next();
  if (first.done === true) return;
  const setup = JSON.parse(first.value) as Setup;
  const authorKid = sha(new TextEncoder().encode('bench author'));
  const claims = evidenceClaimsMap({
    oemid: new Uint8Array([0x00, 0x1a, 0x2b]),
    hwmodel: new TextEncoder().encode('bench-v1'),
    swversion: '1.0.0',
    oemboot: true,
    dbgstat: 3,
    uptime: 42,
    components: [
      {
        type: 'fw',
        digest: new Uint8Array(Buffer.from(setup.fw, 'hex')),
        version: '1.0.0',
        signer: authorKid,
      },
      {
        type: 'cap:bench',
        digest: new Uint8Array(Buffer.from(setup.module, 'hex')),
        version: '1',
        signer: authorKid,
      },
    ],
  });
  const devs: Dev[] = [];
  for (const c of setup.devices) {
    const k = generateSigningKey(Alg.ES256);
    const pub = rotPublicKey(coseKeyFromKeyObject(k.publicKey), Alg.ES256);
    const signer = softwareSigner(k.privateKey, Alg.ES256, pub.kid);
    const record = await createRotRecord(
      { index: 0, publicKey: pub, alg: Alg.ES256, previous: null, time: 1_700_000_000 },
      signer,
    );
    const d: Dev = {
      agent: new Agent({ keepAlive: true, maxSockets: 64, ca: setup.ca, cert: c.certPem, key: c.keyPem }),
      signer,
      ueid: new Uint8Array([0x01, ...randomBytes(16)]),
    };
    await call(
      d,
      setup.url,
      'PUT',
      '/d/v1/attestation/rot',
      encode(
        new Map<string, unknown>([
          ['ueid', d.ueid],
          ['records', [record]],
        ]),
      ),
    );
    devs.push(d);
  }
  process.stdout.write('{"ready":true}\n');

  for (;;) {
    const next = await it.next();
    if (next.done === true) break;
    const [cmd, msText, concText, batchText] = next.value.split(' ');
    if (cmd !== 'run') break;
    const ms = Number(msText);
    const concurrency = Number(concText);
    // Nonces per request: 1 = POST /nonce before every appraisal; more = POST /nonces?count=N, then N appraisals
    // (each nonce still single use and short-lived).
    const batch = Math.max(1, Math.min(64, Number(batchText ?? '1')));
    const statuses: Record<string, number> = {};
    let count = 0;
    let errors = 0;
    let lastError = '';
    const end = performance.now() + ms;
    const loop = async (d: Dev): Promise<void> => {
      const held: string[] = [];
      const nextNonce = async (): Promise<string> => {
        if (batch === 1)
          return (
            JSON.parse((await call(d, setup.url, 'POST', '/d/v1/attestation/nonce')).toString()) as {
              nonce: string;
            }
          ).nonce;
        if (held.length === 0)
          held.push(
            ...(
              JSON.parse(
                (
                  await call(d, setup.url, 'POST', `/d/v1/attestation/nonces?count=${String(batch)}`)
                ).toString(),
              ) as { nonces: string[] }
            ).nonces,
          );
        return held.pop()!;
      };
      while (performance.now() < end) {
        try {
          const nonce = await nextNonce();
          const token = await createAttestationToken(
            {
              nonce: new Uint8Array(Buffer.from(nonce, 'base64')),
              ueid: d.ueid,
              iat: Math.floor(Date.now() / 1000),
              rotIndex: 0,
              claims,
            },
            d.signer,
          );
          const r = JSON.parse(
            (await call(d, setup.url, 'POST', '/d/v1/attestation/evidence', token)).toString(),
          ) as { status: string };
          statuses[r.status] = (statuses[r.status] ?? 0) + 1;
          count++;
        } catch (e) {
          errors++;
          lastError = e instanceof Error ? e.message : String(e);
        }
      }
    };
    const t0 = performance.now();
    await Promise.all(Array.from({ length: concurrency }, (_, i) => loop(devs[i % devs.length]!)));
    const seconds = (performance.now() - t0) / 1000;
    process.stdout.write(`${JSON.stringify({ count, errors, lastError, statuses, seconds })}\n`);
  }
  for (const d of devs) d.agent.destroy();
}

await main();

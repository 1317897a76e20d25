/**
 * A factory-provisioned device is a complete fleet citizen (issue 6), end to end: `rotor factory init` (CA keys in a
 * real SoftHSM2 token; author and operator keys in files) → `rotor factory provision --count 2` (each device's
 * enclave generates its identity, key-agreement and report keys and its RoT; all registered) → the fleet server with
 * --device-ca → a release uploaded, approved (encrypted once, the content key wrapped per device with ECDH-ES to the
 * enclave's agreement key) and rolled out → a provisioned device, opened with openFactoryDevice (its enclave in
 * process, identity key never exported), checks in over mutual TLS with an RFC 3820 proxy certificate its enclave
 * signed, installs, reboots, confirms; its reports, signed by the enclave's report key, are accepted (the rollout
 * counts its success). The other device runs as `rotor device run --dir <its directory>` in a child process, checks in
 * the same way (nothing to do) and stops cleanly on SIGTERM.
 */
import 'reflect-metadata';
import { createHash, createPrivateKey, randomBytes } from 'node:crypto';
import { spawn } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { Alg, encode, softwareSigner } from '@rotor/cose';
import { StatusTracker, type TrackerEvent } from '@rotor/device';
import { buildEnvelope, parseParameterValue, type SuitCommand } from '@rotor/suit';
import { loadConfig, startServer, type RotorServer } from '@rotor/server';
import { factoryCommand } from '../src/factory.ts';
import { deviceIdentityOf, openFactoryDevice } from '../src/factory-device.ts';
import { run } from '../src/main.ts';
import { selfSignedCert } from '../../server/test/helpers.ts';
import { createSoftHsm } from '../../server/test/factory/softhsm.ts';

const MAIN = join(import.meta.dirname, '..', 'src', 'main.ts');
const ADMIN = `admin_${randomBytes(16).toString('hex')}`;
let dir = '';
let module = '';
let server: RotorServer | undefined;
const fw1 = new Uint8Array(3000).map((_, i) => (i * 7) & 0xff);
const fw2 = new Uint8Array(5000).map((_, i) => (i * 13 + 1) & 0xff);

beforeAll(() => {
  const hsm = createSoftHsm();
  ({ dir, module } = hsm);
  hsm.initToken('rotor-factory', '2468');
  writeFileSync(join(dir, 'pin'), '2468\n', { mode: 0o600 });
});

afterAll(async () => {
  await server?.close();
  if (dir !== '') rmSync(dir, { recursive: true, force: true });
});

beforeEach(() => {
  vi.spyOn(process.stdout, 'write').mockImplementation(() => true);
  vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
});

afterEach(() => {
  vi.restoreAllMocks();
});

const yaml = (sequence: number, image: string): string =>
  [
    'vendor: rotor.example',
    'class: gw-1',
    `sequence: ${sequence}`,
    'components:',
    '  - id: firmware',
    `    image: ${image}`,
    '',
  ].join('\n');

const pv = (code: number, v: unknown): readonly [number, unknown] =>
  [code, parseParameterValue(code, v, `{${code}}`)] as const;

/**
 * An author release for the device class of `initial`: the shared sequence checks vendor and class and sets the image
 * digest and size; install only sets a default uri (TD §5.6.1: the operator's per-device envelope names the server's
 * encrypted copy), fetches and checks the image (as the server's operator-delivery mode expects).
 */
async function authorRelease(
  initial: Uint8Array,
  version: number,
  img: Uint8Array,
  authorPem: string,
): Promise<Uint8Array> {
  const id = deviceIdentityOf(initial, new Uint8Array(17));
  const digest = new Uint8Array(createHash('sha256').update(img).digest());
  type Params = SuitCommand extends { params: infer P } ? P : never;
  const shared: SuitCommand[] = [
    {
      op: 'params',
      code: 20,
      params: new Map([
        pv(1, id.vendorId),
        pv(2, id.classId),
        pv(3, encode([-16, digest])),
        pv(14, BigInt(img.length)),
      ]) as Params,
    },
    { op: 'policy', code: 1, policy: 15 },
    { op: 'policy', code: 2, policy: 15 },
  ];
  const install: SuitCommand[] = [
    { op: 'params', code: 19, params: new Map([pv(21, 'https://cdn.example.com/fw.bin')]) as Params },
    { op: 'policy', code: 21, policy: 2 },
    { op: 'policy', code: 3, policy: 15 },
  ];
  return buildEnvelope(
    {
      sequenceNumber: version,
      components: id.components,
      sharedSequence: shared,
      install,
      validate: [{ op: 'policy', code: 3, policy: 15 }],
    },
    { signers: [softwareSigner(createPrivateKey(authorPem), Alg.ESP256)] },
  );
}

async function api(
  method: string,
  path: string,
  body?: unknown,
  type = 'application/json',
  token = ADMIN,
): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await fetch(new URL(path, server!.operatorUrl), {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': type }) },
    ...(body === undefined
      ? {}
      : { body: body instanceof Uint8Array ? Buffer.from(body) : JSON.stringify(body) }),
  });
  const text = await res.text();
  return { status: res.status, json: text === '' ? {} : (JSON.parse(text) as Record<string, unknown>) };
}

describe('a factory-provisioned device runs', () => {
  it(
    'checks in with its enclave-signed proxy credential, installs its per-device-wrapped update, confirms',
    {
      timeout: 120_000,
    },
    async () => {
      const f = join(dir, 'factory');
      const serverCert = await selfSignedCert('localhost', { server: true });
      writeFileSync(join(dir, 'server.crt'), serverCert.certPem);
      writeFileSync(join(dir, 'server.key'), serverCert.keyPem);
      const base = ['--dir', f, '--pin-file', join(dir, 'pin')];
      expect(
        await factoryCommand.run([
          'init',
          ...base,
          '--token',
          'pkcs11:token=rotor-factory',
          '--module',
          module,
          '--file-keys',
          '--server-ca',
          join(dir, 'server.crt'),
          '--anti-rollback',
          'firmware=1',
          '--class',
          'gw-1',
        ]),
      ).toBe(0);
      // The initial firmware, signed by the factory's author and operator keys (generated by init), goes into the
      // profile: every device is provisioned with it.
      writeFileSync(join(dir, 'fw1.bin'), fw1);
      writeFileSync(join(dir, 'fw1.yaml'), yaml(1, 'fw1.bin'));
      const fw1Suit = join(dir, 'fw1.suit');
      expect(
        await run([
          'manifest',
          'create',
          join(dir, 'fw1.yaml'),
          '--key',
          join(f, 'author.key.pem'),
          '-o',
          fw1Suit,
        ]),
      ).toBe(0);
      expect(await run(['manifest', 'sign', fw1Suit, '--key', join(f, 'operator.key.pem')])).toBe(0);
      const env1 = readFileSync(fw1Suit);
      const profile = JSON.parse(readFileSync(join(f, 'profile.json'), 'utf8')) as Record<string, unknown>;
      profile.firmware = {
        envelopeBase64: env1.toString('base64'),
        sha256: createHash('sha256').update(env1).digest('hex'),
      };
      writeFileSync(join(f, 'profile.json'), `${JSON.stringify(profile, null, 2)}\n`);
      const data = join(dir, 'data');
      expect(await factoryCommand.run(['provision', ...base, '--data-dir', data, '--count', '2'])).toBe(0);

      // The fleet server: device CA = the factory chain, operator key = the factory's, a content-key vault.
      writeFileSync(join(dir, 'kek'), randomBytes(32).toString('hex'), { mode: 0o600 });
      server = await startServer(
        loadConfig({
          argv: ['--port', '0', '--device-port', '0', '--mqtt-port', '0', '--log-level', 'silent'],
          env: {
            ROTOR_ADMIN_TOKEN: ADMIN,
            ROTOR_DATA_DIR: data,
            ROTOR_TLS_CERT_FILE: join(dir, 'server.crt'),
            ROTOR_TLS_KEY_FILE: join(dir, 'server.key'),
            ROTOR_DEVICE_CA_FILE: join(f, 'device-ca.pem'),
            ROTOR_OPERATOR_KEY_FILE: join(f, 'operator.key.pem'),
            ROTOR_CONTENT_KEK_FILE: join(dir, 'kek'),
          },
        }),
      );
      const devices = await api('GET', '/v1/devices?group=gw-1');
      const items = devices.json.items as {
        id: string;
        name: string;
        keyAgreement: string;
        reportKeyAlg: string;
      }[];
      expect(items).toHaveLength(2);
      expect(items.every((d) => d.keyAgreement === 'P-256' && d.reportKeyAlg === 'ES256')).toBe(true);

      // Open device 0 of the batch: its enclave, agent and proxy credential.
      const dev = await openFactoryDevice({ dir: join(f, 'devices', 'default', '000000') });
      try {
        const row = items.find((d) => d.name === dev.deviceId)!;
        expect(row).toBeDefined();
        const booted = await dev.agent.powerOn();
        expect(booted.record.sequence).toBe(1n);
        const events: TrackerEvent[] = [];
        const tracker = new StatusTracker({
          agent: dev.agent,
          server: dev.server(server.deviceUrl!),
          attester: dev.attester,
          onEvent: (e) => events.push(e),
        });
        // The proxy credential is what goes over TLS: the device certificate never had a usable private key here.
        expect(dev.credential.cert.match(/BEGIN CERTIFICATE/g)).toHaveLength(2);

        // Release 2: author-signed, image detached (the operator's per-device envelope names the server's copy).
        const env2 = await authorRelease(env1, 2, fw2, readFileSync(join(f, 'author.key.pem'), 'utf8'));
        const key = await api('POST', '/v1/author-keys', {
          name: 'factory author',
          alg: 'ESP256',
          publicKeyPem: readFileSync(join(f, 'author.pub.pem'), 'utf8'),
        });
        expect(key.status).toBe(201);
        const tokenOf = async (role: string): Promise<string> =>
          (await api('POST', '/v1/tokens', { name: `${role} token`, role })).json.token as string;
        const author = await tokenOf('author');
        const operator = await tokenOf('operator');
        const sha = createHash('sha256').update(fw2).digest('hex');
        expect([200, 201]).toContain(
          (await api('PUT', `/v1/payloads/${sha}`, fw2, 'application/octet-stream', author)).status,
        );
        const rel = await api('POST', '/v1/releases', env2, 'application/suit-envelope+cose', author);
        expect(rel.status).toBe(201);
        const releaseId = rel.json.id as string;
        const approved = await api(
          'POST',
          `/v1/releases/${releaseId}/approve`,
          undefined,
          undefined,
          operator,
        );
        expect(approved.json).toMatchObject({ status: 'approved' });
        const ro = await api(
          'POST',
          '/v1/rollouts',
          {
            name: 'fw2',
            releaseId,
            target: { deviceIds: [row.id] },
            phases: [{ percent: 100, successThreshold: 1, failureThreshold: 1, timeoutMs: 3_600_000 }],
          },
          undefined,
          operator,
        );
        expect(ro.status).toBe(201);
        const rolloutId = ro.json.id as string;

        const out = await tracker.cycle();
        expect(out.error).toBeUndefined();
        expect(out.checkin).toMatchObject({ action: 'update', rolloutId });
        expect(out.update).toMatchObject({ ok: true, sequence: 2n, confirmed: true });
        expect(await dev.agent.status()).toMatchObject({ sequence: 2n, trial: false, updating: false });
        // Every report was delivered signed (the enclave's report key) and accepted.
        expect(out.pending).toBe(0);
        const delivered = events.filter((e) => e.kind === 'delivered');
        expect(delivered.map((e) => e.record.state)).toContain('confirmed');
        expect(delivered.every((e) => e.signed)).toBe(true);
        expect(events.some((e) => e.kind === 'dropped')).toBe(false);
        // The confirmed update counted once the enclave's evidence of the new firmware appraised (issue 7; the RoT
        // chain was pinned at the factory).
        const attested = events.filter((e) => e.kind === 'attestation');
        expect(attested.some((e) => e.outcome.attested === 'affirming')).toBe(true);
        expect(attested.every((e) => !e.outcome.rotated)).toBe(true);
        const counts = (await api('GET', `/v1/rollouts/${rolloutId}`)).json.counts as Record<string, number>;
        expect(counts.succeeded).toBe(1);
        // Seen by the server as the device (its last check-in), under its device certificate's registration.
        const seen = await api('GET', `/v1/devices/${row.id}`);
        expect(seen.json.lastSeenMs).toEqual(expect.any(Number));
        await tracker.stop();
      } finally {
        await dev.close();
      }

      // The other device through the CLI, as a child process: `rotor device run --dir <factory device dir>` opens its
      // enclave from the fuse, checks in with its proxy credential (nothing to do for it), and stops on SIGTERM.
      const child = spawn(
        process.execPath,
        [
          MAIN,
          'device',
          'run',
          '--dir',
          join(f, 'devices', 'default', '000001'),
          '--server',
          server.deviceUrl!,
          '--json',
        ],
        { env: { ...process.env, NO_COLOR: '1' }, stdio: ['ignore', 'pipe', 'pipe'] },
      );
      let text = '';
      child.stdout.on('data', (b: Buffer) => (text += b.toString()));
      child.stderr.on('data', (b: Buffer) => (text += b.toString()));
      const exit = new Promise<number | null>((resolve) => child.once('exit', resolve));
      try {
        await new Promise<void>((resolve, reject) => {
          child.stdout.on('data', () => {
            if (/"kind":\s*"checkin"/.test(text)) resolve();
          });
          void exit.then((code) => {
            reject(new Error(`rotor device run exited ${code}:\n${text}`));
          });
          setTimeout(() => {
            reject(new Error(`rotor device run did not check in:\n${text}`));
          }, 20_000).unref();
        });
        expect(text).toContain('factory device urn:dev:ueid:');
        // One JSON document per event (pretty-printed): the check-in found nothing to do.
        expect(text).toMatch(/"kind":\s*"checkin",\s*"result":\s*\{\s*"action":\s*"none"/);
        expect(text).not.toMatch(/DEVICE_PROXY|DEVICE_CERT_REQUIRED|DEVICE_UNKNOWN/);
      } finally {
        child.kill('SIGTERM');
      }
      expect(await exit).toBe(0);
      expect(text).toContain('stopped (SIGTERM)');
    },
  );
});

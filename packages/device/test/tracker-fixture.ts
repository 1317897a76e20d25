/**
 * Fixture for the status tracker tests: a real fleet server (packages/server, in process, PGlite, mutual-TLS
 * device listener on an ephemeral port) — imported here in tests only; device sources never import the server —
 * a registered device with a test client certificate, release upload/approval/rollout through the operator API,
 * and a device agent on a real directory (node file-system backend) provisioned with firmware v1.
 */
import { createHash, createPublicKey, type KeyObject } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  Alg,
  coseKeyFromKeyObject,
  coseKeyToPublicKeyObject,
  decodeCoseKey,
  encode,
  encodeCoseKey,
  generateSigningKey,
  softwareSigner,
  type Signer,
} from '@rotor/cose';
import {
  buildEnvelope,
  classIdFromName,
  parseParameterValue,
  vendorIdFromDomain,
  type SuitCommand,
} from '@rotor/suit';
import type { AnchorRecord } from '../src/flash/nvstate.ts';
import { DeviceAgent, type AgentConfig } from '../src/agent/agent.ts';
import { memorySource } from '../src/fetch/source.ts';
import { nodeFs } from '../src/storage/fs.ts';
import { StatusTracker, type TrackerConfig, type TrackerEvent } from '../src/tracker/tracker.ts';
import { CLASS, FW, healthCheckOf, identity, image, keys, release, URI, VENDOR } from './agent-fixture.ts';
import {
  operatorClient,
  selfSignedCert,
  type OperatorClient,
  type TestCert,
} from '../../server/test/helpers.ts';
import { startFixture, type Fixture } from '../../server/test/fixtures.ts';

export const sha256hex = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

export interface Fleet {
  readonly f: Fixture;
  /** The server's operator (approval) key, a trust anchor of the devices. */
  readonly operatorAnchor: AnchorRecord;
  readonly author: OperatorClient;
  readonly operator: OperatorClient;
  close(): Promise<void>;
}

/** A started server with author and operator tokens and the device fixture's author key registered. */
export async function startFleet(): Promise<Fleet> {
  const f = await startFixture('pglite');
  const token = async (role: string): Promise<OperatorClient> => {
    const r = await f.admin.post('/v1/tokens', { name: `${role} token`, role });
    if (r.status !== 201) throw new Error(`token: ${r.status} ${r.body.toString()}`);
    return operatorClient(f.server.operatorUrl, (r.json() as { token: string }).token);
  };
  const authorAnchor = keys().anchors.find((a) => a.role === 'author')!;
  const pem = coseKeyToPublicKeyObject(decodeCoseKey(authorAnchor.key)).export({
    type: 'spki',
    format: 'pem',
  });
  const k = await f.admin.post('/v1/author-keys', {
    name: 'author',
    alg: 'ESP256',
    publicKeyPem: pem.toString(),
  });
  if (k.status !== 201) throw new Error(`author key: ${k.status} ${k.body.toString()}`);
  const opKey = createPublicKey(readFileSync(join(f.dataDir, 'operator.pem')));
  const operatorAnchor: AnchorRecord = {
    name: 'operator',
    role: 'operator',
    key: encodeCoseKey(coseKeyFromKeyObject(opKey)),
    alg: Alg.ES256,
    prefixes: undefined,
  };
  return {
    f,
    operatorAnchor,
    author: await token('author'),
    operator: await token('operator'),
    close: () => f.close(),
  };
}

export interface RegisteredDevice {
  readonly id: string;
  readonly cert: TestCert;
  /** The device's report-signing key (software here; the enclave's on a device). */
  readonly reportSigner: Signer;
}

const pemOf = (k: KeyObject): string => k.export({ type: 'spki', format: 'pem' }).toString();

/** Registers a device: its TLS certificate, its key-agreement key (content keys are wrapped to it), its report key. */
export async function registerDevice(
  fleet: Fleet,
  name: string,
  opts: { agreementKey?: KeyObject } = {},
): Promise<RegisteredDevice> {
  const cert = await selfSignedCert(name);
  const rk = generateSigningKey(Alg.ESP256);
  const r = await fleet.f.admin.post('/v1/devices', {
    name,
    certificatePem: cert.certPem,
    group: 'trackers',
    keyAgreementKeyPem: pemOf(opts.agreementKey ?? keys().agreementPublic),
    reportKeyPem: pemOf(rk.publicKey),
    reportKeyAlg: 'ESP256',
  });
  if (r.status !== 201) throw new Error(`device: ${r.status} ${r.body.toString()}`);
  return {
    id: (r.json() as { id: string }).id,
    cert,
    reportSigner: softwareSigner(rk.privateKey, Alg.ESP256),
  };
}

const pv = (code: number, v: unknown): readonly [number, unknown] =>
  [code, parseParameterValue(code, v, `{${code}}`)] as const;

/**
 * An author envelope that leaves the payload source to the operator's per-device manifest (TD §5.6.1): the shared
 * sequence sets and checks vendor and class and sets the image digest and size; install only *sets* a default uri
 * (set-parameters), fetches and checks image-match; validate checks image-match.
 */
export async function authorRelease(version: number, img: Uint8Array): Promise<Uint8Array> {
  const digest = new Uint8Array(createHash('sha256').update(img).digest());
  const vendor = vendorIdFromDomain(VENDOR);
  const shared: SuitCommand[] = [
    {
      op: 'params',
      code: 20,
      params: new Map([
        pv(1, vendor),
        pv(2, classIdFromName(vendor, CLASS)),
        pv(3, encode([-16, digest])),
        pv(14, BigInt(img.length)),
      ]) as SuitCommand extends { params: infer P } ? P : never,
    },
    { op: 'policy', code: 1, policy: 15 },
    { op: 'policy', code: 2, policy: 15 },
  ];
  const install: SuitCommand[] = [
    { op: 'params', code: 19, params: new Map([pv(21, 'https://fw.example/fw.bin')]) } as SuitCommand,
    { op: 'policy', code: 21, policy: 2 },
    { op: 'policy', code: 3, policy: 15 },
  ];
  return buildEnvelope(
    {
      sequenceNumber: version,
      components: [[...FW]],
      sharedSequence: shared,
      install,
      validate: [{ op: 'policy', code: 3, policy: 15 }],
    },
    { signers: [keys().author] },
  );
}

/**
 * Uploads firmware `version` (payload content-addressed, manifest URI pointing at a CDN path the device maps to
 * the server's payload endpoint), approves it and starts a one-phase rollout to `deviceId`.
 */
export async function rollout(
  fleet: Fleet,
  deviceId: string,
  version: number,
  opts: { healthy?: boolean; size?: number } = {},
): Promise<{ rolloutId: string; releaseId: string; envelope: Uint8Array }> {
  const img = image(version, opts.size ?? 6000, opts.healthy ?? true);
  const sha = sha256hex(img);
  const envelope = await authorRelease(version, img);
  const up = await fleet.author.put(`/v1/payloads/${sha}`, img);
  if (up.status !== 201 && up.status !== 200) throw new Error(`payload: ${up.status} ${up.body.toString()}`);
  const rel = await fleet.author.post('/v1/releases', envelope, 'application/suit-envelope+cose');
  if (rel.status !== 201) throw new Error(`release: ${rel.status} ${rel.body.toString()}`);
  const releaseId = (rel.json() as { id: string }).id;
  const ap = await fleet.operator.post(`/v1/releases/${releaseId}/approve`);
  if (ap.status !== 200) throw new Error(`approve: ${ap.status} ${ap.body.toString()}`);
  const ro = await fleet.operator.post('/v1/rollouts', {
    name: `v${version}-${deviceId.slice(0, 8)}`,
    releaseId,
    target: { deviceIds: [deviceId] },
    phases: [{ percent: 100, successThreshold: 1, failureThreshold: 1, timeoutMs: 3_600_000 }],
  });
  if (ro.status !== 201) throw new Error(`rollout: ${ro.status} ${ro.body.toString()}`);
  return { rolloutId: (ro.json() as { id: string }).id, releaseId, envelope };
}

export async function rolloutCounts(fleet: Fleet, id: string): Promise<Record<string, number>> {
  const r = await fleet.operator.get(`/v1/rollouts/${id}`);
  return (r.json() as { counts: Record<string, number> }).counts;
}

export interface DeviceDir {
  readonly dir: string;
  agent: DeviceAgent;
  /** A new agent object over the same directory (a process restart). */
  restart(extra?: Partial<AgentConfig>): DeviceAgent;
  remove(): void;
}

/** A device directory with firmware v1 provisioned (payloads from memory during provisioning). */
export async function deviceDir(
  extra: Partial<AgentConfig> = {},
  opts: { anchors?: readonly AnchorRecord[]; requiredRoles?: readonly string[] } = {},
): Promise<DeviceDir> {
  const dir = mkdtempSync(join(tmpdir(), 'rotor-dev-'));
  const make = (x: Partial<AgentConfig>): DeviceAgent => {
    const agent: DeviceAgent = new DeviceAgent({
      fs: nodeFs(dir),
      chunkSize: 4096,
      keys: { agreements: [keys().agreement] },
      healthCheck: healthCheckOf(() => agent),
      ...x,
    });
    return agent;
  };
  const agent = make(extra);
  const r1 = await release({ seq: 1, image: image(1, 3000), uri: URI('v1') });
  const r0 = await release({ seq: 1, image: image(0, 1500), uri: URI('recovery') });
  agent.fetchPolicy = {
    source: memorySource(
      new Map([
        [URI('v1'), r1.payload],
        [URI('recovery'), r0.payload],
      ]),
    ),
  };
  await agent.provision({
    identity: {
      ...identity(),
      ...(opts.requiredRoles === undefined ? {} : { requiredRoles: opts.requiredRoles }),
    },
    anchors: [...keys().anchors, ...(opts.anchors ?? [])],
    firmware: r1.envelope,
    recovery: r0.envelope,
  });
  const d: DeviceDir = {
    dir,
    agent,
    restart(x = {}) {
      d.agent = make({ ...extra, ...x });
      return d.agent;
    },
    remove() {
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return d;
}

export function trackerFor(
  fleet: Fleet,
  agent: DeviceAgent,
  dev: RegisteredDevice,
  extra: Partial<TrackerConfig> & { url?: string; events?: TrackerEvent[] } = {},
): StatusTracker {
  const { url, events, ...rest } = extra;
  return new StatusTracker({
    agent,
    server: {
      url: url ?? fleet.f.server.deviceUrl!,
      identity: { cert: dev.cert.certPem, key: dev.cert.keyPem },
      ca: fleet.f.serverCert.certPem,
      timeoutMs: 20_000,
    },
    interval: { defaultMs: 3_600_000 },
    fetch: { retries: 2, backoffMs: 10, deadlineMs: 60_000 },
    fallbackSource: 'none',
    pushGapMs: 0,
    onEvent: (e) => events?.push(e),
    ...rest,
  });
}

/**
 * A TCP relay in front of the server's device port that can be taken down and brought back on the same port
 * (TLS passes through untouched: the device still talks mutual TLS to the server). "Down" refuses connections.
 */
export class Relay {
  readonly target: { host: string; port: number };
  port = 0;
  #server: Server | undefined;
  readonly #sockets = new Set<Socket>();

  constructor(targetUrl: string) {
    const u = new URL(targetUrl);
    this.target = { host: u.hostname, port: Number(u.port) };
  }

  get url(): string {
    return `https://127.0.0.1:${this.port}`;
  }

  up(): Promise<void> {
    const s = createServer((c) => {
      const t = connect(this.target.port, this.target.host);
      this.#sockets.add(c).add(t);
      const drop = (): void => {
        c.destroy();
        t.destroy();
        this.#sockets.delete(c);
        this.#sockets.delete(t);
      };
      c.on('error', drop).on('close', drop);
      t.on('error', drop).on('close', drop);
      c.pipe(t).pipe(c);
    });
    this.#server = s;
    return new Promise((resolve, reject) => {
      s.once('error', reject);
      s.listen(this.port, '127.0.0.1', () => {
        const a = s.address();
        if (a !== null && typeof a === 'object') this.port = a.port;
        resolve();
      });
    });
  }

  down(): Promise<void> {
    const s = this.#server;
    this.#server = undefined;
    for (const c of this.#sockets) c.destroy();
    this.#sockets.clear();
    return new Promise((resolve) => {
      if (s === undefined) resolve();
      else
        s.close(() => {
          resolve();
        });
    });
  }
}

/** Waits until `cond` holds (polling; the test's own timeout bounds it — no timing assertion). */
export async function until(
  cond: () => boolean | Promise<boolean>,
  what: string,
  ms = 45_000,
): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

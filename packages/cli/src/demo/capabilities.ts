/**
 * Capability modules on the demo's factory devices (issue 8, seed 000 §2 steps 1–7), device side:
 *
 *  - provisioning on first power-on: the capability authority's public key (manifest and revocation authority;
 *    the server's GET /v1/capabilities/keys) and the signed capability manifest of the device's group (GET
 *    /d/v1/capabilities/manifest over the device's own mutual-TLS channel) are kept in the device directory
 *    (`capability-provisioning.json`) and used at every later power-on — a real device would get both at the
 *    factory; the manager keeps newer manifests it syncs in its own store;
 *  - a call load: continuous calls to a capability on every device, each answer checked against the module's
 *    reference function of the version that answered (a wrong answer is a failed call), runs of versions recorded.
 */
import { createPublicKey } from 'node:crypto';
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { softwareVerifier, type Verifier } from '@rotor/cose';
import { sim, TrackerHttp, type CapabilityManager, type TlsIdentity } from '@rotor/device';
import { CAPABILITY_MANIFEST_CONTENT_TYPE } from '@rotor/trust';
import { CliError } from '../errors.ts';
import { filterReference } from './modules/build.ts';

/** The vendor domain of module envelopes: the server's default (capabilities/service.ts), the simulator's. */
export const CAPABILITY_VENDOR = sim.VENDOR;

export interface CapabilityKeysInfo {
  readonly authority: { readonly kid: string; readonly alg: number; readonly spki: string };
}

interface Provisioning {
  readonly authority: CapabilityKeysInfo['authority'];
  readonly manifestBase64: string;
}

const PROVISIONING = 'capability-provisioning.json';
const MAX_MANIFEST = 256 * 1024;

function isKeys(x: unknown): x is CapabilityKeysInfo {
  if (typeof x !== 'object' || x === null) return false;
  const a = (x as { authority?: unknown }).authority;
  if (typeof a !== 'object' || a === null) return false;
  const r = a as Record<string, unknown>;
  return (
    typeof r.kid === 'string' &&
    /^[0-9a-f]{0,128}$/.test(r.kid) &&
    typeof r.alg === 'number' &&
    typeof r.spki === 'string' &&
    r.spki.length < 4096
  );
}

/** The capability authority's public keys from the operator API (for provisioning). */
export async function fetchCapabilityKeys(operatorUrl: string, token: string): Promise<CapabilityKeysInfo> {
  const res = await fetch(`${operatorUrl}/v1/capabilities/keys`, {
    headers: { authorization: `Bearer ${token}` },
  });
  const body: unknown = await res.json();
  if (res.status !== 200 || !isKeys(body))
    throw new CliError(
      'CLI_IO',
      `GET /v1/capabilities/keys: ${res.status} ${JSON.stringify(body).slice(0, 200)}`,
    );
  return body;
}

export function authorityVerifier(a: CapabilityKeysInfo['authority']): Verifier {
  return softwareVerifier(
    createPublicKey({ key: Buffer.from(a.spki, 'base64'), format: 'der', type: 'spki' }),
    a.alg,
    new Uint8Array(Buffer.from(a.kid, 'hex')),
  );
}

/**
 * The device's capability provisioning: from its directory, else (first power-on) the authority given and the
 * group's capability manifest fetched over the device's mutual-TLS channel, written atomically.
 */
export async function capabilityProvisioning(
  deviceDir: string,
  keys: () => Promise<CapabilityKeysInfo>,
  device: { url: string; identity: TlsIdentity; ca?: string },
): Promise<{ authority: Verifier; manifest: Uint8Array }> {
  const path = join(deviceDir, PROVISIONING);
  if (existsSync(path)) {
    const p = JSON.parse(readFileSync(path, 'utf8')) as Provisioning;
    if (!isKeys({ authority: p.authority }) || typeof p.manifestBase64 !== 'string')
      throw new CliError('CLI_INPUT', `${path} is malformed`);
    return {
      authority: authorityVerifier(p.authority),
      manifest: new Uint8Array(Buffer.from(p.manifestBase64, 'base64')),
    };
  }
  const { authority } = await keys();
  const http = new TrackerHttp({
    baseUrl: device.url,
    identity: device.identity,
    ...(device.ca === undefined ? {} : { ca: device.ca }),
    timeoutMs: 30_000,
  });
  let manifest: Uint8Array;
  try {
    const r = await http.request('GET', '/d/v1/capabilities/manifest', {
      accept: CAPABILITY_MANIFEST_CONTENT_TYPE,
      maxBody: MAX_MANIFEST,
    });
    if (r.status !== 200)
      throw new CliError(
        'CLI_IO',
        `GET /d/v1/capabilities/manifest: ${r.status} (no capability manifest for the device's group?)`,
      );
    manifest = r.body;
  } finally {
    http.close();
  }
  const p: Provisioning = { authority, manifestBase64: Buffer.from(manifest).toString('base64') };
  writeFileSync(`${path}.tmp`, `${JSON.stringify(p, null, 2)}\n`);
  renameSync(`${path}.tmp`, path);
  return { authority: authorityVerifier(authority), manifest };
}

export interface LoadResult {
  readonly index: number;
  readonly calls: number;
  readonly failed: number;
  /** Consecutive runs of the version that answered, e.g. [['1.0.0', 212], ['2.0.0', 180]]. */
  readonly runs: [string, number][];
  readonly firstError: string | undefined;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * Continuous calls to `name` on every manager (a few ms apart, so the device's other work goes on), each answer
 * checked against the reference of the version that answered. `ready` resolves once every device answered
 * `warmup` calls; `stop()` ends the loops and gives each device's tally.
 */
export function callLoad(
  managers: readonly { index: number; manager: CapabilityManager }[],
  name: string,
  warmup = 5,
): { ready: Promise<void>; stop: () => Promise<LoadResult[]> } {
  let stopping = false;
  const tallies = managers.map(({ index }) => ({
    index,
    calls: 0,
    failed: 0,
    runs: [] as [string, number][],
    firstError: undefined as string | undefined,
  }));
  let warm = 0;
  let onWarm: () => void = () => undefined;
  const ready = new Promise<void>((resolve) => {
    onWarm = resolve;
    if (managers.length === 0) resolve();
  });
  const loops = managers.map(async ({ manager }, i) => {
    const t = tallies[i]!;
    let n = 0;
    while (!stopping) {
      const input = new Uint8Array([n & 0xff, (n * 7) & 0xff, (n * 31) & 0xff, 200, 5, 90]);
      n++;
      try {
        const r = await manager.call(name, input);
        const v = r.version.join('.');
        const want = filterReference(r.version[0], input);
        if (want === undefined || Buffer.compare(Buffer.from(r.output), Buffer.from(want)) !== 0) {
          t.failed++;
          t.firstError ??= `version ${v} answered ${Buffer.from(r.output).toString('hex')}`;
        }
        const last = t.runs.at(-1);
        if (last?.[0] === v) last[1]++;
        else t.runs.push([v, 1]);
      } catch (e) {
        t.failed++;
        t.firstError ??= e instanceof Error ? e.message : String(e);
      }
      t.calls++;
      if (t.calls === warmup && ++warm === managers.length) onWarm();
      await sleep(3);
    }
  });
  return {
    ready,
    stop: async () => {
      stopping = true;
      await Promise.all(loops);
      return tallies.map((t) => ({ ...t, runs: t.runs.map(([v, c]): [string, number] => [v, c]) }));
    },
  };
}

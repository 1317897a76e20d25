/**
 * Test helper: a minimal SUIT_Envelope → SuitEnvelope reader for the processor tests (no authentication; the
 * digest is checked so that tests run on the real manifest bytes). The production decoder is decode.ts.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { CborMap, CborTag, bstrHead, decode, encode } from '@rotor/cose';
import { parseCommandSequence } from '../src/commands.ts';
import type {
  ComponentId,
  Severable,
  SuitDigest,
  SuitEnvelope,
  SuitManifest,
  SuitSequence,
} from '../src/model.ts';
import { VECTORS } from './commands-vectors.ts';

export function vector(rel: string): Uint8Array {
  return readFileSync(join(VECTORS, rel));
}

function digestOf(v: unknown): SuitDigest {
  const a = v as [number, Uint8Array];
  return { alg: a[0], bytes: a[1] };
}

function seq(bytes: Uint8Array, path: string): SuitSequence {
  return { bytes, commands: parseCommandSequence(bytes, path) };
}

export function readEnvelope(bytes: Uint8Array): SuitEnvelope {
  let top = decode(bytes, { sortedKeys: false });
  const tagged = top instanceof CborTag;
  if (top instanceof CborTag) top = top.value;
  const env = top as CborMap;
  const auth = decode(env.get(2) as Uint8Array) as Uint8Array[];
  const digestBytes = auth[0]!;
  const digest = digestOf(decode(digestBytes));
  const mBytes = env.get(3) as Uint8Array;
  const actual = createHash('sha256').update(bstrHead(mBytes.length)).update(mBytes).digest();
  if (!Buffer.from(actual).equals(Buffer.from(digest.bytes))) throw new Error('manifest digest mismatch');
  const m = decode(mBytes) as CborMap;
  const common = decode(m.get(3) as Uint8Array) as CborMap;
  const deps = common.get(1);
  const shared = common.get(4);
  const severable = (key: number): Severable<SuitSequence> | undefined => {
    const v = m.get(key);
    if (v === undefined) return undefined;
    if (v instanceof Uint8Array) return { state: 'inline', value: seq(v, `manifest.${key}`) };
    const e = env.get(key);
    if (e instanceof Uint8Array)
      return { state: 'severed-present', digest: digestOf(v), value: seq(e, `envelope.${key}`) };
    return { state: 'severed-absent', digest: digestOf(v) };
  };
  const plain = (key: number): SuitSequence | undefined => {
    const v = m.get(key);
    return v instanceof Uint8Array ? seq(v, `manifest.${key}`) : undefined;
  };
  const manifest: SuitManifest = {
    bytes: mBytes,
    version: 1,
    sequenceNumber: BigInt(m.get(2) as number),
    common: {
      components: (common.get(2) ?? []) as ComponentId[],
      dependencies:
        deps instanceof CborMap
          ? deps.entries.map(([k, v]) => ({
              index: k as number,
              prefix: (v as CborMap).get(1) as ComponentId | undefined,
            }))
          : [],
      sharedSequence: shared instanceof Uint8Array ? seq(shared, 'common.4') : undefined,
    },
    referenceUri: m.get(4) as string | undefined,
    componentId: m.get(5) as ComponentId | undefined,
    setVersion: undefined,
    validate: plain(7),
    load: plain(8),
    invoke: plain(9),
    uninstall: plain(24),
    dependencyResolution: severable(15),
    payloadFetch: severable(16),
    candidateVerification: severable(18),
    install: severable(20),
    text: undefined,
    coswid: undefined,
  };
  const integrated = new Map<string, Uint8Array>();
  for (const [k, v] of env.entries)
    if (typeof k === 'string' && v instanceof Uint8Array) integrated.set(k, v);
  return { bytes, tagged, digest, digestBytes, authBlocks: auth.slice(1), manifest, integrated };
}

/** A test authenticator: reads the envelope (digest-checked) — signature checks are the decoder's tests' job. */
export function testAuthenticator(calls?: Uint8Array[]): (bytes: Uint8Array) => Promise<SuitEnvelope> {
  return (bytes) => {
    calls?.push(bytes);
    return Promise.resolve(readEnvelope(bytes));
  };
}

/** Builds a one-component envelope around the given manifest members (sections as command arrays), unsigned. */
export function makeEnvelope(
  members: Map<number, unknown>,
  integrated: Map<string, Uint8Array> = new Map(),
): SuitEnvelope {
  const mBytes = encode(members);
  const d = createHash('sha256').update(bstrHead(mBytes.length)).update(mBytes).digest();
  const digestBytes = encode([-16, new Uint8Array(d)]);
  const env = new Map<unknown, unknown>([
    [2, encode([digestBytes])],
    [3, mBytes],
  ]);
  for (const [k, v] of integrated) env.set(k, v);
  return readEnvelope(encode(new CborTag(107, env)));
}

/**
 * Test helper: a minimal, test-only envelope walker that finds every command sequence in the published SUIT
 * vectors (manifest keys 7/8/9/15/16/18/20/24, common key 4, severed members, integrated dependencies).
 */
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { CborMap, CborTag, decode } from '@rotor/cose';

export const VECTORS = '/work/shared/vectors/suit';

export interface FoundSequence {
  readonly file: string;
  readonly where: string;
  readonly bytes: Uint8Array;
}

export function vectorFiles(): string[] {
  const out: string[] = [];
  for (const dir of ['manifest', 'trust-domains', 'encryption']) {
    for (const f of readdirSync(join(VECTORS, dir))) {
      if (f.endsWith('.cbor')) out.push(join(VECTORS, dir, f));
    }
  }
  return out.sort();
}

function envelopeMap(bytes: Uint8Array): CborMap {
  let v = decode(bytes, { sortedKeys: false });
  if (v instanceof CborTag) v = v.value;
  if (!(v instanceof CborMap)) throw new Error('envelope is not a map');
  return v;
}

export function sequencesOf(
  file: string,
  bytes: Uint8Array = readFileSync(file),
  where = '',
): FoundSequence[] {
  const env = envelopeMap(bytes);
  const manifestBytes = env.get(3);
  if (!(manifestBytes instanceof Uint8Array)) throw new Error('no manifest');
  const manifest = decode(manifestBytes);
  if (!(manifest instanceof CborMap)) throw new Error('manifest is not a map');
  const out: FoundSequence[] = [];
  const common = manifest.get(3);
  if (common instanceof Uint8Array) {
    const c = decode(common);
    if (c instanceof CborMap) {
      const shared = c.get(4);
      if (shared instanceof Uint8Array) out.push({ file, where: `${where}common.4`, bytes: shared });
    }
  }
  for (const key of [7, 8, 9, 15, 16, 18, 20, 24]) {
    const v = manifest.get(key);
    if (v instanceof Uint8Array) out.push({ file, where: `${where}manifest.${key}`, bytes: v });
    else if (Array.isArray(v)) {
      const sev = env.get(key);
      if (sev instanceof Uint8Array) out.push({ file, where: `${where}envelope.${key}`, bytes: sev });
    }
  }
  for (const [k, v] of env.entries) {
    if (typeof k === 'string' && v instanceof Uint8Array) {
      try {
        out.push(...sequencesOf(file, v, `${where}${k}/`));
      } catch {
        // an integrated payload, not a dependency envelope
      }
    }
  }
  return out;
}

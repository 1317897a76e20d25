/**
 * `rotor manifest verify --decrypt-key`: a dry run of the SUIT update procedure (draft-ietf-suit-manifest-34
 * §8.4.6) on an in-memory platform. Every payload the envelope reaches (integrated, given with --payload, or
 * written from the content parameter) is decrypted with the given keys (draft-ietf-suit-firmware-encryption §4)
 * and checked by the manifest's own image-match conditions against its image digest.
 *
 * The dry run checks authenticity and payload integrity, not applicability to a particular device: the platform
 * answers the vendor/class/device-id conditions with the identifiers the manifest itself names.
 */
import {
  KEY_DISTRIBUTION_ALGS,
  decodeEncrypt,
  decodeEncrypt0,
  decryptContent,
  isCoseError,
  unwrapContentKey,
  type KeyAgreement,
  type KeyUnwrapper,
} from '@rotor/cose';
import {
  authenticateEnvelope,
  MemoryPlatform,
  processEnvelope,
  type PlatformVendorId,
  type SuitCommand,
  type SuitEnvelope,
  type TrustPolicy,
} from '@rotor/suit';
import { CliError } from './errors.ts';
import { loadDecryptionKey, readInput } from './keys.ts';
import { componentIdText, type Tree } from './render.ts';

const MAX_PAYLOAD = 512 * 1024 * 1024;

/** Key-distribution algorithms accepted when decrypting (every one Rotor implements, RFC 9053 §6). */
const DECRYPT_ALGS: ReadonlySet<number> = KEY_DISTRIBUTION_ALGS;

function collectIdentity(
  cmds: readonly SuitCommand[],
  out: { vendor: PlatformVendorId[]; cls: Uint8Array[]; device: Uint8Array[] },
): void {
  for (const c of cmds) {
    if (c.op === 'params') {
      for (const v of c.params.values()) {
        if (v.type === 'vendor-id') out.vendor.push({ bytes: v.bytes, pen: v.pen });
      }
      const cls = c.params.get(2);
      if (cls?.type === 'uuid') out.cls.push(cls.bytes);
      const dev = c.params.get(24);
      if (dev?.type === 'uuid') out.device.push(dev.bytes);
    } else if (c.op === 'try-each') for (const a of c.alternatives) collectIdentity(a, out);
    else if (c.op === 'run-sequence') collectIdentity(c.sequence, out);
    else if (c.op === 'override-multiple')
      collectIdentity(
        [...c.perComponent.values()].map((params) => ({ op: 'params', code: 20, params })),
        out,
      );
  }
}

function identityOf(
  env: SuitEnvelope,
  out: { vendor: PlatformVendorId[]; cls: Uint8Array[]; device: Uint8Array[] },
): void {
  const m = env.manifest;
  const seqs = [m.common.sharedSequence, m.validate, m.load, m.invoke];
  for (const s of [m.install, m.payloadFetch, m.dependencyResolution, m.candidateVerification]) {
    if (s !== undefined && s.state !== 'severed-absent') seqs.push(s.value);
  }
  for (const s of seqs) if (s !== undefined) collectIdentity(s.commands, out);
}

function parsePayloadArgs(args: string[]): Map<string, Uint8Array> {
  const map = new Map<string, Uint8Array>();
  for (const a of args) {
    const i = a.lastIndexOf('=');
    if (i <= 0) throw new CliError('CLI_USAGE', `--payload expects <uri>=<file>, got '${a}'`);
    map.set(a.slice(0, i), readInput(a.slice(i + 1), MAX_PAYLOAD));
  }
  return map;
}

export async function decryptPayloads(
  env: SuitEnvelope,
  policy: TrustPolicy,
  keyPaths: string[],
  payloadArgs: string[],
): Promise<Tree> {
  const unwrappers: KeyUnwrapper[] = [];
  const agreements: KeyAgreement[] = [];
  for (const p of keyPaths) {
    const k = loadDecryptionKey(p);
    if (k.unwrapper) unwrappers.push(k.unwrapper);
    if (k.agreement) agreements.push(k.agreement);
  }
  const ids = { vendor: [] as PlatformVendorId[], cls: [] as Uint8Array[], device: [] as Uint8Array[] };
  identityOf(env, ids);
  const decrypted: Tree[] = [];
  const platform = new MemoryPlatform({
    maxComponents: 256,
    vendorIds: ids.vendor,
    classIds: ids.cls,
    deviceIds: ids.device,
    resources: parsePayloadArgs(payloadArgs),
    decrypt: async (info, ciphertext, request) => {
      // ENC §4: SUIT_Encryption_Info is a COSE_Encrypt (tag 96) or COSE_Encrypt0 (tag 16) with detached ciphertext.
      const msg = info[0] === 0xd0 ? decodeEncrypt0(info) : decodeEncrypt(info);
      const cek = await unwrapContentKey(msg, { unwrappers, agreements }, { allowedAlgs: DECRYPT_ALGS });
      try {
        const plain = decryptContent(msg, cek, ciphertext);
        decrypted.push({
          component: componentIdText(request.component),
          ciphertext: ciphertext.length,
          plaintext: plain.length,
        });
        return plain;
      } finally {
        cek.fill(0);
      }
    },
  });
  for (const [k, v] of env.integrated) platform.resources.set(k, v);
  const result = await processEnvelope(env, 'update', {
    platform,
    authenticateDependency: async (bytes) =>
      (await authenticateEnvelope(bytes, { ...policy, requiredRoles: [] })).envelope,
  });
  if (!result.ok) {
    const e = result.error;
    if (e?.cause !== undefined && isCoseError(e.cause)) throw e.cause;
    throw e ?? new CliError('CLI_INPUT', 'the update procedure failed');
  }
  if (decrypted.length === 0)
    throw new CliError('CLI_INPUT', 'the envelope has no encrypted payload that these keys reach');
  return decrypted;
}

/**
 * `rotor manifest inspect|verify|create|sign`.
 */
import { basename } from 'node:path';
import { Alg } from '@rotor/cose';
import {
  authenticateEnvelope,
  authenticateIntegratedDependency,
  decodeEnvelope,
  isSuitError,
  type SuitEnvelope,
  type TrustAnchor,
  type TrustPolicy,
} from '@rotor/suit';
import { group, type Subcommand } from './command.ts';
import { CliError, ExitCode } from './errors.ts';
import { json, MAX_ENVELOPE, out } from './io.ts';
import { loadVerificationKey, readInput } from './keys.ts';
import { envelopeTree, hex, treeText, type Tree } from './render.ts';
import { createSubcommand, signSubcommand } from './manifest-create.ts';
import { decryptPayloads } from './manifest-decrypt.ts';

function positional(positionals: string[], what: string): string {
  if (positionals.length !== 1) throw new CliError('CLI_USAGE', `expected exactly one ${what}`);
  return positionals[0]!;
}

const inspect: Subcommand = {
  name: 'inspect',
  summary: 'show an envelope as a readable tree (--json for machines)',
  usage:
    'inspect <envelope> [--json]\n\nDecodes without verifying signatures; the digest check result is shown.',
  options: { json: { type: 'boolean' } },
  run({ values, positionals }) {
    const path = positional(positionals, 'envelope');
    const bytes = readInput(path, MAX_ENVELOPE);
    let env: SuitEnvelope;
    let digestOk = true;
    try {
      env = decodeEnvelope(bytes);
    } catch (e) {
      if (!isSuitError(e) || e.code !== 'SUIT_DIGEST_MISMATCH') throw e;
      // Show a broken envelope for diagnosis, marked as such; nothing decoded this way is trusted.
      env = decodeEnvelope(bytes, { verifyDigest: false });
      digestOk = false;
    }
    const tree = envelopeTree(env, digestOk);
    if (values.json === true) json(tree);
    else out(treeText(tree));
    return Promise.resolve(ExitCode.ok);
  },
};

/** Default algorithm allowlist for verification (MTI profiles of draft-ietf-suit-mti plus ES256/EdDSA). */
export const VERIFY_ALGS: ReadonlySet<number> = new Set([
  Alg.ES256,
  Alg.ESP256,
  Alg.EdDSA,
  Alg.Ed25519,
  Alg.HMAC256,
]);

function anchors(paths: string[], role: string): TrustAnchor[] {
  return paths.map((p) => ({ name: basename(p), role, ...loadVerificationKey(p) }));
}

const verify: Subcommand = {
  name: 'verify',
  summary: 'check digests and authentication against trust anchors; optionally decrypt payloads',
  usage: `verify <envelope> --key <file> [--key <file>...] [--operator-key <file>...]
       [--decrypt-key <file>...] [--payload <uri>=<file>...] [--json]

  --key           trust anchor (PEM or COSE_Key; symmetric COSE_Keys verify COSE_Mac0)
  --operator-key  operator anchor; when given, a valid author AND operator signature are both required
  --decrypt-key   AES-KW KEK (COSE_Key) or ECDH-ES private key (PEM or COSE_Key): decrypt every encrypted
                  payload the envelope reaches and check it against its image digest
  --payload       bytes for a payload URI the envelope fetches (e.g. coaps://example.com/fw=fw.bin)

Exit 0 when valid; otherwise the error code on stderr and a non-zero exit (4 = refused).`,
  options: {
    key: { type: 'string', multiple: true },
    'operator-key': { type: 'string', multiple: true },
    'decrypt-key': { type: 'string', multiple: true },
    payload: { type: 'string', multiple: true },
    json: { type: 'boolean' },
  },
  async run({ values, positionals }) {
    const path = positional(positionals, 'envelope');
    const keyPaths = (values.key as string[] | undefined) ?? [];
    const opPaths = (values['operator-key'] as string[] | undefined) ?? [];
    if (keyPaths.length === 0 && opPaths.length === 0)
      throw new CliError('CLI_USAGE', 'at least one --key is required');
    const policy: TrustPolicy = {
      anchors: [...anchors(keyPaths, 'author'), ...anchors(opPaths, 'operator')],
      allowedAlgs: VERIFY_ALGS,
      ...(opPaths.length > 0 ? { requiredRoles: ['author', 'operator'] } : {}),
    };
    const bytes = readInput(path, MAX_ENVELOPE);
    const { envelope, signers } = await authenticateEnvelope(bytes, policy);
    const result: Record<string, Tree> = {
      valid: true,
      digest: hex(envelope.digest.bytes),
      'sequence-number': envelope.manifest.sequenceNumber.toString(),
      signers: signers.map((s) => `${s.name} (${s.role})`),
    };
    // Integrated dependencies (TD §5.4) are envelopes in their own right: authenticate each one too.
    const deps: Tree[] = [];
    for (const key of envelope.integrated.keys()) {
      if (envelope.manifest.common.dependencies.length === 0) break;
      const dep = await authenticateIntegratedDependency(envelope, key, {
        ...policy,
        requiredRoles: [],
      }).catch((e: unknown) => {
        // Integrated payloads share the text-key space with dependencies: only envelopes are checked here.
        if (isSuitError(e) && (e.code === 'SUIT_ENVELOPE_INVALID' || e.code === 'SUIT_DEPENDENCY_INVALID'))
          return undefined;
        throw e;
      });
      if (dep !== undefined)
        deps.push({ key, digest: hex(dep.envelope.digest.bytes), signers: dep.signers.map((s) => s.name) });
    }
    if (deps.length > 0) result['integrated-dependencies'] = deps;
    const decryptPaths = (values['decrypt-key'] as string[] | undefined) ?? [];
    if (decryptPaths.length > 0) {
      result.payloads = await decryptPayloads(
        envelope,
        policy,
        decryptPaths,
        (values.payload as string[] | undefined) ?? [],
      );
    }
    if (values.json === true) json(result);
    else out(treeText(result));
    return ExitCode.ok;
  },
};

export const manifestCommand = group('manifest', 'build, sign, inspect and verify SUIT envelopes', [
  inspect,
  verify,
  createSubcommand,
  signSubcommand,
]);

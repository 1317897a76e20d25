/**
 * The release authenticator on @rotor/suit: authenticateEnvelope under a policy whose anchors are the registered,
 * unrevoked author keys (role 'author'), then the facts a release needs from the authenticated manifest.
 */
import { softwareVerifier } from '@rotor/cose';
import {
  authenticateEnvelope,
  type SuitCommand,
  type SuitManifest,
  type SuitParameters,
  type SuitSequence,
  type TrustAnchor,
} from '@rotor/suit';
import { ServerError } from './errors.ts';
import type { ReleaseAuthenticator } from './services.ts';

/** ES256, ESP256, EdDSA, Ed25519: the author key algorithms (services.ts AUTHOR_KEY_ALGS). */
const AUTHOR_ALGS: ReadonlySet<number> = new Set([-7, -9, -8, -19]);

const SHA256 = -16;
const IMAGE_DIGEST = 3;
const ENCRYPTION_INFO = 19;

function collectParams(p: SuitParameters, out: Uint8Array[]): void {
  const d = p.get(IMAGE_DIGEST);
  // An image-digest next to encryption-info names the plaintext, which the server never holds (ENC §4): the
  // ciphertext is the payload, and it is addressed by the dependent (operator) manifest.
  if (d?.type === 'digest' && d.digest.alg === SHA256 && !p.has(ENCRYPTION_INFO)) out.push(d.digest.bytes);
}

function collect(cmds: readonly SuitCommand[], out: Uint8Array[]): void {
  for (const c of cmds) {
    if (c.op === 'params') collectParams(c.params, out);
    else if (c.op === 'override-multiple') for (const p of c.perComponent.values()) collectParams(p, out);
    else if (c.op === 'try-each') for (const alt of c.alternatives) collect(alt, out);
    else if (c.op === 'run-sequence') collect(c.sequence, out);
  }
}

/** SHA-256 image digests named anywhere in the manifest's command sequences (MF §8.4.8.6). */
export function manifestPayloadDigests(m: SuitManifest): Uint8Array[] {
  const out: Uint8Array[] = [];
  const seqs: (SuitSequence | undefined)[] = [m.common.sharedSequence, m.validate, m.load, m.invoke];
  for (const s of [m.dependencyResolution, m.payloadFetch, m.candidateVerification, m.install]) {
    if (s !== undefined && s.state !== 'severed-absent') seqs.push(s.value);
  }
  for (const s of seqs) if (s !== undefined) collect(s.commands, out);
  return out;
}

export function suitAuthenticator(
  opts: { maxEnvelopeBytes: number } = { maxEnvelopeBytes: 64 * 1024 * 1024 },
): ReleaseAuthenticator {
  return async (bytes, keys) => {
    const anchors: TrustAnchor[] = keys.map((k) => ({
      name: k.id,
      role: 'author',
      verifier: softwareVerifier(k.publicKey, k.alg),
    }));
    // MF §8.3 / §6.2: authenticate before parsing; only the registered author keys and their algorithms count.
    const { envelope, signers } = await authenticateEnvelope(
      bytes,
      { anchors, allowedAlgs: AUTHOR_ALGS },
      { maxSize: opts.maxEnvelopeBytes },
    );
    const signer = signers[0];
    if (signer === undefined) throw new ServerError('INTERNAL', 'authenticated envelope without a signer');
    return {
      authorKeyId: signer.name,
      sequenceNumber: envelope.manifest.sequenceNumber,
      payloadDigests: manifestPayloadDigests(envelope.manifest),
      integrated: envelope.integrated,
      manifestDigest: envelope.digest.bytes,
    };
  };
}

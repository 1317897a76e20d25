/**
 * `rotor manifest create <description.json|yaml> --key <signing key>` and `rotor manifest sign`.
 *
 * Description format (JSON or YAML; paths relative to the description file):
 *
 *   vendor: example.com            # vendor domain → vendor-id = UUIDv5(DNS, domain)   (MF §8.4.8.2)
 *   class: thermostat-v2           # class name → class-id = UUIDv5(vendor-id, name)   (MF §8.4.8.3)
 *   sequence: 7                    # manifest-sequence-number (uint), or "now" = seconds since 1970
 *   version: 1.2.0                 # optional set-version (update-management)
 *   description: Spring release    # optional text: manifest-description
 *   reference-uri: https://…       # optional
 *   invoke: true                   # optional: add an invoke sequence for component 0
 *   delivery: operator             # optional: the fleet server delivers (and encrypts per device) the payloads;
 *                                  # uris become defaults the operator may override (TD §5.6.1); no `encrypt`
 *   sever-text: true               # optional: sever the text member (MF §8.4.6)
 *   components:
 *     - id: firmware               # component identifier path ('/'-separated)
 *       image: ./firmware.bin      # digest and size computed from the file
 *       uri: https://cdn.example.com/firmware.bin   # omit to integrate the payload under '#<id>'
 *       slot: 0                    # optional component-slot
 *       version: 1.2.0             # optional component text
 *       encrypt:                   # optional: draft-ietf-suit-firmware-encryption
 *         recipient: ./device.pub.pem   # ECDH-ES+A128KW to a public key, or an AES-KW KEK (COSE_Key)
 *         content: A128GCM              # A128GCM (default), A256GCM, A128CTR, A256CTR, ChaCha20Poly1305
 */
import { dirname, resolve, basename, extname } from 'node:path';
import { createHash, createSecretKey } from 'node:crypto';
import { parse as parseYaml } from 'yaml';
import {
  Alg,
  decodeCoseKey,
  encodeEncrypt,
  encryptContent,
  loadPublicKey,
  wrapForAesKw,
  wrapForEcdhEs,
  type RecipientStructure,
} from '@rotor/cose';
import { addSignature, buildEnvelope, buildUpdateManifest, type UpdateComponent } from '@rotor/suit';
import type { Subcommand } from './command.ts';
import { CliError, ExitCode } from './errors.ts';
import { readInput, withSigners } from './keys.ts';
import { json, MAX_ENVELOPE, out, writeAtomic } from './io.ts';

/** Largest image the CLI reads into memory for an integrated or encrypted payload. */
const MAX_IMAGE = 512 * 1024 * 1024;
const MAX_DESCRIPTION = 256 * 1024;

const CONTENT_ALGS: Readonly<Record<string, number>> = {
  A128GCM: Alg.A128GCM,
  A256GCM: Alg.A256GCM,
  A128CTR: Alg.A128CTR,
  A256CTR: Alg.A256CTR,
  ChaCha20Poly1305: Alg.ChaCha20Poly1305,
};

const SIG_ALGS: Readonly<Record<string, number>> = {
  ES256: Alg.ES256,
  ESP256: Alg.ESP256,
  EdDSA: Alg.EdDSA,
  Ed25519: Alg.Ed25519,
};

function fail(msg: string): never {
  throw new CliError('CLI_INPUT', msg);
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function str(o: Record<string, unknown>, k: string, path: string, required = false): string | undefined {
  const v = o[k];
  if (v === undefined) return required ? fail(`${path}.${k} is required`) : undefined;
  if (typeof v !== 'string' || v.length === 0 || v.length > 1024)
    fail(`${path}.${k} must be a non-empty string`);
  return v;
}

function checkKeys(o: Record<string, unknown>, allowed: readonly string[], path: string): void {
  for (const k of Object.keys(o)) if (!allowed.includes(k)) fail(`${path}: unknown field '${k}'`);
}

function parseVersion(v: unknown, path: string): number[] {
  const s = typeof v === 'number' ? String(v) : v;
  if (typeof s !== 'string' || !/^\d{1,9}(\.\d{1,9}){0,2}$/.test(s))
    fail(`${path} must be a version like 1.2.3`);
  return s.split('.').map(Number);
}

interface Loaded {
  description: Record<string, unknown>;
  base: string;
}

function loadDescription(path: string): Loaded {
  const text = Buffer.from(readInput(path, MAX_DESCRIPTION)).toString('utf8');
  let v: unknown;
  try {
    v = /\.ya?ml$/i.test(path) ? parseYaml(text, { maxAliasCount: 0 }) : JSON.parse(text);
  } catch (e) {
    fail(`${path}: ${e instanceof Error ? e.message : String(e)}`);
  }
  if (!isRecord(v)) fail(`${path}: the description must be a map`);
  return { description: v, base: dirname(resolve(path)) };
}

function recipientFor(path: string, cek: Uint8Array): RecipientStructure {
  const bytes = readInput(path, 64 * 1024);
  const pem = Buffer.from(bytes.subarray(0, 64)).toString('latin1').includes('-----BEGIN');
  if (!pem) {
    const key = decodeCoseKey(bytes);
    if (key.kty === 4) {
      const k = key.k ?? fail(`${path}: symmetric COSE_Key without k`);
      const alg =
        k.length === 16
          ? Alg.A128KW
          : k.length === 32
            ? Alg.A256KW
            : fail(`${path}: KEK must be 16 or 32 bytes`);
      return wrapForAesKw(cek, createSecretKey(Buffer.from(k)), alg, key.kid);
    }
    return wrapForEcdhEs(cek, loadPublicKey(bytes), Alg.ECDH_ES_A128KW, key.kid);
  }
  return wrapForEcdhEs(cek, loadPublicKey(bytes), Alg.ECDH_ES_A128KW);
}

interface Built {
  envelope: Uint8Array;
  /** Ciphertext files to publish beside the envelope (encrypted payloads fetched by URI). */
  sidecars: { uri: string; bytes: Uint8Array }[];
}

export async function createFromDescription(
  path: string,
  keyPaths: string[],
  alg: number | undefined,
): Promise<Built> {
  const { description: d, base } = loadDescription(path);
  checkKeys(
    d,
    [
      'vendor',
      'class',
      'sequence',
      'version',
      'description',
      'reference-uri',
      'invoke',
      'sever-text',
      'delivery',
      'components',
    ],
    '$',
  );
  const vendor = str(d, 'vendor', '$', true)!;
  const cls = str(d, 'class', '$', true)!;
  const seqRaw = d.sequence;
  const sequence =
    seqRaw === 'now'
      ? BigInt(Math.floor(Date.now() / 1000))
      : typeof seqRaw === 'number' && Number.isSafeInteger(seqRaw) && seqRaw >= 0
        ? BigInt(seqRaw)
        : fail('$.sequence must be a non-negative integer or "now"');
  const delivery = d.delivery ?? 'author';
  if (delivery !== 'author' && delivery !== 'operator') fail('$.delivery must be "author" or "operator"');
  const operatorDelivery = delivery === 'operator';
  const comps = d.components;
  if (!Array.isArray(comps) || comps.length === 0 || comps.length > 64)
    fail('$.components must list 1 to 64 components');
  const integrated = new Map<string, Uint8Array>();
  const sidecars: Built['sidecars'] = [];
  const components: UpdateComponent[] = comps.map((c: unknown, i): UpdateComponent => {
    const p = `$.components[${i}]`;
    if (!isRecord(c)) fail(`${p} must be a map`);
    checkKeys(c, ['id', 'image', 'uri', 'slot', 'version', 'description', 'encrypt'], p);
    const id = str(c, 'id', p, true)!;
    const image = readInput(resolve(base, str(c, 'image', p, true)!), MAX_IMAGE);
    const digest = new Uint8Array(createHash('sha256').update(image).digest());
    const slot = c.slot;
    if (slot !== undefined && (typeof slot !== 'number' || !Number.isSafeInteger(slot) || slot < 0))
      fail(`${p}.slot must be a uint`);
    let uri = str(c, 'uri', p);
    const text = {
      ...(c.version === undefined ? {} : { version: parseVersion(c.version, `${p}.version`).join('.') }),
      ...(c.description === undefined ? {} : { description: str(c, 'description', p)! }),
    };
    const common = {
      id,
      image: { digest, size: image.length },
      ...(slot === undefined ? {} : { slot }),
      ...(Object.keys(text).length > 0 ? { text } : {}),
    };
    const enc = c.encrypt;
    if (operatorDelivery) {
      // The server stores the plaintext payload, encrypts it once and wraps its key per device at approval.
      if (enc !== undefined) fail(`${p}.encrypt: with delivery: operator the operator encrypts per device`);
      return { ...common, ...(uri === undefined ? {} : { uri }) };
    }
    if (enc === undefined) {
      if (uri === undefined) {
        // MF §7.5: an integrated payload lives in the envelope under a text key the uri names.
        uri = `#${id}`;
        integrated.set(uri, image);
      }
      return { ...common, uri };
    }
    if (!isRecord(enc)) fail(`${p}.encrypt must be a map`);
    checkKeys(enc, ['recipient', 'content'], `${p}.encrypt`);
    const contentName = str(enc, 'content', `${p}.encrypt`) ?? 'A128GCM';
    const contentAlg =
      CONTENT_ALGS[contentName] ??
      fail(`${p}.encrypt.content: one of ${Object.keys(CONTENT_ALGS).join(', ')}`);
    const e = encryptContent(image, { contentAlg });
    const recipient = recipientFor(resolve(base, str(enc, 'recipient', `${p}.encrypt`, true)!), e.cek);
    e.cek.fill(0);
    const encryptionInfo = encodeEncrypt({
      protectedBytes: e.protectedBytes,
      unprotected: e.unprotected,
      ciphertext: null,
      recipients: [recipient],
    });
    if (uri === undefined) {
      // ENC §4: without a uri the ciphertext travels in the manifest's content parameter and is written.
      return { ...common, encryptionInfo, content: e.ciphertext };
    }
    sidecars.push({ uri, bytes: e.ciphertext });
    return { ...common, uri, encryptionInfo, encryptedSize: e.ciphertext.length };
  });
  const descText = str(d, 'description', '$');
  const manifest = buildUpdateManifest({
    vendorDomain: vendor,
    className: cls,
    sequenceNumber: sequence,
    components,
    ...(d['reference-uri'] === undefined ? {} : { referenceUri: str(d, 'reference-uri', '$')! }),
    ...(d.invoke === true ? { invoke: true } : {}),
    ...(d.version === undefined ? {} : { setVersion: parseVersion(d.version, '$.version') }),
    ...(descText === undefined ? {} : { text: { manifestDescription: descText } }),
    ...(d['sever-text'] === true ? { severText: true } : {}),
    ...(operatorDelivery ? { operatorDelivery: true } : {}),
  });
  const envelope = await withSigners(keyPaths, alg, (signers) =>
    buildEnvelope(manifest, { signers, integrated }),
  );
  return { envelope, sidecars };
}

function sigAlg(v: unknown): number | undefined {
  if (v === undefined) return undefined;
  return SIG_ALGS[v as string] ?? fail(`--alg: one of ${Object.keys(SIG_ALGS).join(', ')}`);
}

export const createSubcommand: Subcommand = {
  name: 'create',
  summary: 'build and sign an envelope from a description (JSON or YAML) and image files',
  usage: `create <description.json|yaml> --key <signing key file|pkcs11: URI> [-o <out.suit>] [--alg ESP256|ES256|Ed25519|EdDSA] [--json]

Builds a standard update manifest (vendor/class ids as UUIDv5 of their names, image digests and sizes computed,
uri or integrated payload, optional per-recipient encryption) and signs it with each --key (PEM or COSE_Key).
Encrypted payloads with a uri are written beside the output as <out>.<n>.enc for the firmware server.
See the header of packages/cli/src/manifest-create.ts for the description format.`,
  options: {
    key: { type: 'string', multiple: true },
    output: { type: 'string', short: 'o' },
    alg: { type: 'string' },
    json: { type: 'boolean' },
  },
  async run({ values, positionals }) {
    if (positionals.length !== 1) throw new CliError('CLI_USAGE', 'expected exactly one description file');
    const desc = positionals[0]!;
    const keys = (values.key as string[] | undefined) ?? [];
    if (keys.length === 0)
      throw new CliError(
        'CLI_USAGE',
        '--key is required (an unsigned envelope is refused by every processor)',
      );
    const { envelope, sidecars } = await createFromDescription(desc, keys, sigAlg(values.alg));
    const output =
      (values.output as string | undefined) ??
      resolve(dirname(desc), `${basename(desc, extname(desc))}.suit`);
    writeAtomic(output, envelope);
    const files = sidecars.map((s, i) => {
      const f = `${output}.${i}.enc`;
      writeAtomic(f, s.bytes);
      return { uri: s.uri, file: f, size: s.bytes.length };
    });
    const result = { envelope: output, size: envelope.length, signatures: keys.length, payloads: files };
    if (values.json === true) json(result);
    else {
      out(
        `wrote ${output} (${envelope.length} bytes, ${keys.length} signature${keys.length === 1 ? '' : 's'})`,
      );
      for (const f of files) out(`wrote ${f.file} (${f.size} bytes): publish it at ${f.uri}`);
    }
    return ExitCode.ok;
  },
};

export const signSubcommand: Subcommand = {
  name: 'sign',
  summary: "add a second party's signature (e.g. the operator's approval) to an envelope",
  usage: `sign <envelope> --key <signing key file|pkcs11: URI> [-o <out.suit>] [--alg ESP256|ES256|Ed25519|EdDSA] [--json]

Appends a COSE_Sign1 authentication block over the envelope's SUIT_Digest after checking the digest against the
manifest; every other byte of the envelope is kept. Writes in place unless -o is given.`,
  options: {
    key: { type: 'string' },
    output: { type: 'string', short: 'o' },
    alg: { type: 'string' },
    json: { type: 'boolean' },
  },
  async run({ values, positionals }) {
    if (positionals.length !== 1) throw new CliError('CLI_USAGE', 'expected exactly one envelope');
    const key = values.key as string | undefined;
    if (key === undefined) throw new CliError('CLI_USAGE', '--key is required');
    const path = positionals[0]!;
    const envelope = readInput(path, MAX_ENVELOPE);
    const signed = await withSigners([key], sigAlg(values.alg), ([signer]) =>
      addSignature(envelope, signer!),
    );
    const output = (values.output as string | undefined) ?? path;
    writeAtomic(output, signed);
    if (values.json === true) json({ output, size: signed.length });
    else out(`wrote ${output} (${signed.length} bytes)`);
    return ExitCode.ok;
  },
};

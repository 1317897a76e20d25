import { describe, expect, it } from 'vitest';
import {
  Alg,
  CborTag,
  decode,
  decodeSign1,
  encode,
  generateSigningKey,
  softwareSigner,
  softwareVerifier,
} from '@rotor/cose';
import { authenticateEnvelope } from '../src/authenticate.ts';
import {
  addMultiSignature,
  addSignature,
  buildEnvelope,
  buildUpdateManifest,
  encodeEnvelope,
  encodeManifest,
  manifestDigestBytes,
  reencodeEnvelope,
  signEnvelope,
  type ManifestDescription,
} from '../src/builder.ts';
import { decodeEnvelope, parseEnvelopeOuter } from '../src/decode.ts';
import { SuitError } from '../src/errors.ts';
import {
  classIdFromName,
  uuidToString,
  uuidV5,
  vendorIdFromDomain,
  UUID_NAMESPACE_DNS,
} from '../src/uuid.ts';
import { anchor, draftSigner, draftVerifier, hmacKey, policyOf } from './keys.ts';
import { ALL_ENVELOPES, DECODABLE, vector } from './vectors.ts';

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    if (e instanceof SuitError) return e.code;
    throw e;
  }
  return 'no error';
}

const te = new TextEncoder();
const hexOf = (b: Uint8Array): string => Buffer.from(b).toString('hex');

describe('re-encoding reproduces every vector byte for byte', () => {
  for (const f of DECODABLE) {
    it(`decodeEnvelope → reencodeEnvelope: ${f}`, () => {
      const bytes = vector(f);
      expect(hexOf(reencodeEnvelope(decodeEnvelope(bytes)))).toBe(hexOf(bytes));
    });
  }
  for (const f of ALL_ENVELOPES) {
    it(`parseEnvelopeOuter (digest unchecked) → reencodeEnvelope: ${f}`, () => {
      const bytes = vector(f);
      expect(hexOf(reencodeEnvelope(parseEnvelopeOuter(bytes, { verifyDigest: false })))).toBe(hexOf(bytes));
    });
  }
  it('integrated dependency re-encodes too', () => {
    const env = decodeEnvelope(vector('trust-domains/example2_integrated.signed.cbor'));
    const dep = env.integrated.get('#dependent.suit')!;
    expect(hexOf(reencodeEnvelope(decodeEnvelope(dep)))).toBe(hexOf(dep));
  });
  it('untagged envelopes stay untagged', () => {
    const untagged = vector('manifest/example0.signed.cbor').subarray(2);
    expect(hexOf(reencodeEnvelope(decodeEnvelope(untagged)))).toBe(hexOf(untagged));
  });
});

describe('UUIDv5 identifiers (RFC 9562 §5.5; draft-ietf-suit-manifest-34 §8.4.8.2/3)', () => {
  it('vendor id of "arm.com" and class id of "suit" are the ids of the example manifests', () => {
    const vid = vendorIdFromDomain('arm.com');
    expect(uuidToString(vid)).toBe('fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe');
    // The class name behind the examples' class id is "suit" (checked against the vectors).
    const cid = classIdFromName(vid, 'suit');
    expect(uuidToString(cid)).toBe('1492af14-2569-5e48-bf42-9b2d51f2ab45');
    // Same values as decoded from example0's shared sequence.
    const shared = decodeEnvelope(vector('manifest/example0.signed.cbor')).manifest.common.sharedSequence!;
    const o = shared.commands[0]!;
    if (o.op !== 'params') throw new Error('expected override-parameters');
    const v = o.params.get(1);
    const c = o.params.get(2);
    if (v?.type !== 'vendor-id' || c?.type !== 'uuid') throw new Error('expected vendor and class ids');
    expect(hexOf(v.bytes)).toBe(hexOf(vid));
    expect(hexOf(c.bytes)).toBe(hexOf(cid));
  });
  it('RFC 9562 Appendix A.4 example: UUIDv5(DNS, "www.example.com")', () => {
    expect(uuidToString(uuidV5(UUID_NAMESPACE_DNS, 'www.example.com'))).toBe(
      '2ed6657d-e927-568b-95e1-2665a8aea6a2',
    );
  });
});

const EX_DIGEST = Uint8Array.from(
  Buffer.from('00112233445566778899aabbccddeeff0123456789abcdeffedcba9876543210', 'hex'),
);

describe('buildUpdateManifest reproduces the draft examples', () => {
  it('example 1 manifest (download + install) byte for byte', () => {
    const desc = buildUpdateManifest({
      vendorDomain: 'arm.com',
      className: 'suit',
      sequenceNumber: 1,
      components: [
        {
          id: [new Uint8Array([0])],
          image: { digest: EX_DIGEST, size: 34768 },
          uri: 'http://example.com/file.bin',
        },
      ],
    });
    const { manifest, members } = encodeManifest(desc);
    expect(members.size).toBe(0);
    expect(hexOf(manifest)).toBe(
      hexOf(decodeEnvelope(vector('manifest/example1.unsigned.cbor')).manifest.bytes),
    );
    // And the whole unsigned envelope.
    expect(hexOf(encodeEnvelope({ manifest }))).toBe(hexOf(vector('manifest/example1.unsigned.cbor')));
  });
  it('example 0 manifest (secure boot) byte for byte', () => {
    const desc = buildUpdateManifest({
      vendorDomain: 'arm.com',
      className: 'suit',
      sequenceNumber: 0,
      components: [{ id: [new Uint8Array([0])], image: { digest: EX_DIGEST, size: 34768 } }],
      invoke: true,
    });
    expect(hexOf(encodeEnvelope({ manifest: encodeManifest(desc).manifest }))).toBe(
      hexOf(vector('manifest/example0.unsigned.cbor')),
    );
  });
  it('example 2 (severed install and text) from a ManifestDescription byte for byte', () => {
    const ex2 = decodeEnvelope(vector('manifest/example2.signed.cbor'));
    const m = ex2.manifest;
    if (m.install?.state !== 'severed-present' || m.text?.state !== 'severed-present')
      throw new Error('expected severed');
    const desc: ManifestDescription = {
      sequenceNumber: m.sequenceNumber,
      components: m.common.components,
      sharedSequence: m.common.sharedSequence!.commands,
      referenceUri: m.referenceUri!,
      validate: m.validate!.commands,
      invoke: m.invoke!.commands,
      install: m.install.value.commands,
      text: m.text.value,
      sever: ['install', 'text'],
    };
    const parts = encodeManifest(desc);
    expect(hexOf(parts.manifest)).toBe(hexOf(m.bytes));
    expect(hexOf(parts.members.get(23)!)).toBe(hexOf(ex2.members!.get(23)!));
    expect(hexOf(encodeEnvelope({ ...parts, authBlocks: ex2.authBlocks }))).toBe(
      hexOf(vector('manifest/example2.signed.cbor')),
    );
  });
});

describe('builder output', () => {
  const fw = (n: number): Uint8Array => new Uint8Array(32).fill(n);
  const update = {
    vendorDomain: 'rotor.example',
    className: 'sensor-v2',
    sequenceNumber: 7n,
    components: [
      {
        id: 'fw/app',
        image: { digest: fw(1), size: 1000 },
        uri: 'https://updates.rotor.example/app.bin',
        text: { description: 'app' },
      },
      {
        id: 'fw/radio',
        image: { digest: fw(2), size: 500 },
        uri: 'https://updates.rotor.example/radio.enc',
        encryptionInfo: vector('encryption/suit-encryption-info-aes-kw-aes-gcm.cose'),
        encryptedSize: 516,
      },
      {
        id: 'fw/cfg',
        image: { digest: fw(3), size: 30 },
        content: vector('encryption/encrypted-payload-aes-kw-aes-gcm.bin'),
        encryptionInfo: vector('encryption/suit-encryption-info-aes-kw-aes-gcm.cose'),
      },
    ],
    invoke: 0,
    setVersion: [1, 2, 3],
    text: { manifestDescription: 'test update' },
    severText: true,
  } as const;

  it('decodes, re-encodes identically, and is deterministic', async () => {
    const desc = buildUpdateManifest(update);
    const a = await buildEnvelope(desc);
    const b = await buildEnvelope(buildUpdateManifest(update));
    expect(hexOf(a)).toBe(hexOf(b));
    const env = decodeEnvelope(a);
    expect(hexOf(reencodeEnvelope(env))).toBe(hexOf(a));
    const m = env.manifest;
    expect(m.sequenceNumber).toBe(7n);
    expect(m.setVersion).toEqual([1, 2, 3]);
    expect(m.common.components.map((c) => c.map((p) => new TextDecoder().decode(p)).join('/'))).toEqual([
      'fw/app',
      'fw/radio',
      'fw/cfg',
      'fw/radio/encrypted',
    ]);
    expect(m.text?.state).toBe('severed-present');
    expect(m.install?.state).toBe('inline');
    // Every sequence starts with set-component-index (MF §6.2, more than one component).
    for (const s of [m.common.sharedSequence, m.validate, m.invoke])
      expect(s!.commands[0]!.op).toBe('set-component-index');
    if (m.install?.state !== 'inline') throw new Error('inline install expected');
    const codes = m.install.value.commands.map((c) => c.code);
    expect(codes).toContain(22); // copy with encryption-info
    expect(codes).toContain(18); // write with encryption-info
  });

  it('signed output verifies; signing is deterministic except for the ECDSA signature', async () => {
    const desc = buildUpdateManifest(update);
    const a = await buildEnvelope(desc, { signers: [draftSigner()] });
    const b = await buildEnvelope(desc, { signers: [draftSigner()] });
    const ea = parseEnvelopeOuter(a);
    const eb = parseEnvelopeOuter(b);
    expect(hexOf(ea.manifestBytes)).toBe(hexOf(eb.manifestBytes));
    expect(hexOf(ea.digestBytes)).toBe(hexOf(eb.digestBytes));
    const sa = decodeSign1(ea.authBlocks[0]!);
    const sb = decodeSign1(eb.authBlocks[0]!);
    expect(sa.payload).toBeNull(); // detached (MF §8.3)
    expect(hexOf(sa.protectedBytes)).toBe(hexOf(sb.protectedBytes));
    const { envelope } = await authenticateEnvelope(
      a,
      policyOf([anchor('draft', 'author', draftVerifier(Alg.ESP256))]),
    );
    expect(hexOf(reencodeEnvelope(envelope))).toBe(hexOf(a));
  });

  it('MAC and COSE_Sign blocks', async () => {
    const desc = buildUpdateManifest(update);
    const mac = await buildEnvelope(desc, { macKeys: [hmacKey()] });
    await authenticateEnvelope(mac, policyOf([anchor('hmac', 'author', hmacKey())]));
    const k = generateSigningKey(Alg.Ed25519);
    const multi = await addMultiSignature(await buildEnvelope(desc), [
      draftSigner(),
      softwareSigner(k.privateKey, Alg.Ed25519),
    ]);
    const policy = policyOf(
      [
        anchor('draft', 'author', draftVerifier()),
        anchor('ed', 'operator', softwareVerifier(k.publicKey, Alg.Ed25519)),
      ],
      {
        requiredRoles: ['author', 'operator'],
      },
    );
    const { signers } = await authenticateEnvelope(multi, policy);
    expect(signers.map((s) => s.name).sort()).toEqual(['draft', 'ed']);
  });

  it('addSignature keeps every other byte', async () => {
    const signed = vector('manifest/example2.signed.cbor');
    const out = await addSignature(signed, draftSigner());
    const a = parseEnvelopeOuter(signed);
    const b = parseEnvelopeOuter(out);
    expect(b.authBlocks).toHaveLength(2);
    expect(hexOf(b.authBlocks[0]!)).toBe(hexOf(a.authBlocks[0]!));
    expect(hexOf(b.manifestBytes)).toBe(hexOf(a.manifestBytes));
    expect(hexOf(b.members.get(23)!)).toBe(hexOf(a.members.get(23)!));
    expect(hexOf(reencodeEnvelope({ ...b, authBlocks: b.authBlocks.slice(0, 1) }))).toBe(hexOf(signed));
  });

  it('TOCTOU: signing refuses a digest that does not match the manifest (MF §8.3)', async () => {
    expect(
      await codeOf(signEnvelope(vector('negative/example0.modified-manifest.cbor'), draftSigner())),
    ).toBe('SUIT_DIGEST_MISMATCH');
    const manifest = encodeManifest(buildUpdateManifest(update)).manifest;
    const other = manifestDigestBytes(encode(new Map([[1, 1]])));
    expect(await codeOf(signEnvelope({ manifest, digestBytes: other }, draftSigner()))).toBe(
      'SUIT_DIGEST_MISMATCH',
    );
    // A manifest that does not parse is not signed either.
    expect(await codeOf(signEnvelope({ manifest: encode([1]) }, draftSigner()))).toBe(
      'SUIT_MANIFEST_INVALID',
    );
  });

  it('integrated payloads and untagged output', async () => {
    const desc = buildUpdateManifest({
      vendorDomain: 'rotor.example',
      className: 'c',
      sequenceNumber: 1,
      components: [{ id: [te.encode('00')], image: { digest: fw(9), size: 3 }, uri: '#app' }],
    });
    const env = await buildEnvelope(desc, {
      integrated: new Map([['#app', new Uint8Array([1, 2, 3])]]),
      tagged: false,
    });
    expect(decode(env)).not.toBeInstanceOf(CborTag);
    const d = decodeEnvelope(env);
    expect(d.integrated.get('#app')).toEqual(new Uint8Array([1, 2, 3]));
    expect(hexOf(reencodeEnvelope(d))).toBe(hexOf(env));
  });

  it('invalid descriptions are refused', async () => {
    expect(() =>
      buildUpdateManifest({ vendorDomain: 'x', className: 'c', sequenceNumber: 1, components: [] }),
    ).toThrow(SuitError);
    expect(() =>
      buildUpdateManifest({
        vendorDomain: 'x',
        className: 'c',
        sequenceNumber: 1,
        components: [{ id: 'a', image: { digest: fw(1), size: 1 }, encryptionInfo: new Uint8Array([0xa0]) }],
      }),
    ).toThrow(SuitError);
    expect(
      await codeOf(buildEnvelope({ sequenceNumber: 1, components: [[]], validate: encode([999, 15]) })),
    ).toBe('SUIT_BUILD_INVALID');
  });
});

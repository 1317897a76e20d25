import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { CborTag, bstrHead, decode, encode } from '@rotor/cose';
import { decodeEnvelope, parseEnvelopeOuter, parseManifest, digestBstr } from '../src/decode.ts';
import { encodeEnvelope, manifestDigestBytes } from '../src/builder.ts';
import { SuitError } from '../src/errors.ts';
import { DECODABLE, UNDECODABLE, hex, vector } from './vectors.ts';

function code(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    if (e instanceof SuitError) return e.code;
    throw e;
  }
  return 'no error';
}

/** A syntactically valid unsigned envelope around the given manifest map entries. */
function envelopeWith(manifest: Map<number, unknown>, extra: [number | string, unknown][] = []): Uint8Array {
  const mBytes = encode(manifest);
  const m = new Map<number | string, unknown>([
    [2, encode([manifestDigestBytes(mBytes)])],
    [3, mBytes],
    ...extra,
  ]);
  return encode(new CborTag(107, m));
}

function minimalManifest(extra: [number, unknown][] = []): Map<number, unknown> {
  return new Map<number, unknown>([
    [1, 1],
    [2, 0],
    [3, encode(new Map([[2, [[new Uint8Array([0])]]]]))],
    ...extra,
  ]);
}

describe('decodeEnvelope on the published vectors (draft-ietf-suit-manifest-34 §8)', () => {
  for (const f of DECODABLE) {
    it(`decodes ${f}`, () => {
      const bytes = vector(f);
      const env = decodeEnvelope(bytes);
      expect(env.tagged).toBe(true);
      expect(env.manifest.version).toBe(1);
      expect(env.digest.alg).toBe(-16);
      // MF §8.3: the digest covers the manifest bstr head + content.
      expect(Buffer.from(digestBstr(-16, env.manifest.bytes))).toEqual(Buffer.from(env.digest.bytes));
      expect(env.manifest.common.components.length).toBeGreaterThan(0);
    });
  }
  for (const [f, c] of UNDECODABLE) {
    it(`refuses ${f} with ${c}`, () => {
      expect(code(() => decodeEnvelope(vector(f)))).toBe(c);
    });
  }

  it('example0: fields, shared sequence, validate and invoke', () => {
    const env = decodeEnvelope(vector('manifest/example0.signed.cbor'));
    const m = env.manifest;
    expect(m.sequenceNumber).toBe(0n);
    expect(m.common.components).toEqual([[new Uint8Array([0])]]);
    expect(m.common.sharedSequence?.commands.map((c) => c.code)).toEqual([20, 1, 2]);
    expect(m.validate?.commands).toEqual([{ op: 'policy', code: 3, policy: 15 }]);
    expect(m.invoke?.commands).toEqual([{ op: 'policy', code: 23, policy: 2 }]);
    expect(m.install).toBeUndefined();
    expect(env.authBlocks).toHaveLength(1);
    expect(env.authBlocks[0]![0]).toBe(0xd2); // COSE_Sign1_Tagged
    expect(Buffer.from(env.digest.bytes).toString('hex')).toBe(
      '6658ea560262696dd1f13b782239a064da7c6c5cbaf52fded428a6fc83c7e5af',
    );
  });

  it('example2: severed install and text are present and checked; reference-uri', () => {
    const env = decodeEnvelope(vector('manifest/example2.signed.cbor'));
    const m = env.manifest;
    expect(m.referenceUri).toBe('https://git.io/JJYoj');
    expect(m.install?.state).toBe('severed-present');
    expect(m.text?.state).toBe('severed-present');
    if (m.text?.state !== 'severed-present') throw new Error('unreachable');
    const en = m.text.value.get('en-US')!;
    expect(en.manifest.get(1)).toMatch(/^## Example 2/);
    expect(en.components[0]!.component).toEqual([new Uint8Array([0])]);
    expect(en.components[0]!.fields.get(3)).toBe('arm.com');
    expect([...env.members!.keys()]).toEqual([20, 23]);
  });

  it('example2.severed-signed: text and install are severed-absent', () => {
    const m = decodeEnvelope(vector('manifest/example2.severed-signed.cbor')).manifest;
    expect(m.install?.state).toBe('severed-absent');
    expect(m.text?.state).toBe('severed-absent');
    if (m.install?.state !== 'severed-absent') throw new Error('unreachable');
    expect(m.install.digest.alg).toBe(-16);
  });

  it('trust-domains: dependencies, manifest-component-id, dependency-resolution, integrated dependency', () => {
    const env = decodeEnvelope(vector('trust-domains/example2_integrated.signed.cbor'));
    const m = env.manifest;
    expect(m.componentId).toEqual([new TextEncoder().encode('depending.suit')]);
    expect(m.common.dependencies).toEqual([
      { index: 1, prefix: [new TextEncoder().encode('dependent.suit')] },
    ]);
    expect(m.dependencyResolution?.state).toBe('inline');
    expect([...env.integrated.keys()]).toEqual(['#dependent.suit']);
    const dep = decodeEnvelope(env.integrated.get('#dependent.suit')!);
    // TD §5.1: the reference is the dependency's manifest digest.
    expect(Buffer.from(dep.digest.bytes).toString('hex')).toBe(
      '0f02caf6d3e61920d36bf3cea7f862a13bb8fb1f09c3f4c29b121feab78ef3d8',
    );
  });

  it('accepts the untagged form and records it (MF §8.2)', () => {
    const tagged = vector('manifest/example0.signed.cbor');
    const untagged = tagged.subarray(2); // drop d8 6b
    const env = decodeEnvelope(untagged);
    expect(env.tagged).toBe(false);
    expect(code(() => decodeEnvelope(untagged, { requireTag: true }))).toBe('SUIT_ENVELOPE_INVALID');
  });

  it('parseEnvelopeOuter checks the digest but does not parse the manifest', () => {
    // A manifest that is not even a map still passes the outer step when its digest matches.
    const mBytes = encode([1, 2, 3]);
    const env = encodeEnvelope({ manifest: mBytes });
    const outer = parseEnvelopeOuter(env);
    expect(outer.manifestBytes).toEqual(mBytes);
    expect(code(() => decodeEnvelope(env))).toBe('SUIT_MANIFEST_INVALID');
  });
});

describe('envelope structure refusals (MF §8.2, §8.3)', () => {
  it('size bound', () => {
    expect(code(() => decodeEnvelope(vector('manifest/example0.signed.cbor'), { maxSize: 100 }))).toBe(
      'SUIT_ENVELOPE_INVALID',
    );
  });
  it('wrong tag', () => {
    const bad = encode(new CborTag(108, new Map([[2, new Uint8Array(0)]])));
    expect(code(() => decodeEnvelope(bad))).toBe('SUIT_ENVELOPE_INVALID');
  });
  it('delegation (key 1) is refused', () => {
    expect(
      code(() => decodeEnvelope(envelopeWith(minimalManifest(), [[1, encode([[new Uint8Array(1)]])]]))),
    ).toBe('SUIT_ENVELOPE_INVALID');
  });
  it('unknown integer key is refused', () => {
    expect(code(() => decodeEnvelope(envelopeWith(minimalManifest(), [[99, new Uint8Array(1)]])))).toBe(
      'SUIT_ENVELOPE_INVALID',
    );
  });
  it('integrated payloads under text keys are kept when a uri names them (MF §7.5)', () => {
    // install = [override-parameters {21: "#payload"}, fetch]
    const install = encode([20, new Map([[21, '#payload']]), 21, 2]);
    const env = decodeEnvelope(
      envelopeWith(minimalManifest([[20, install]]), [['#payload', new Uint8Array([1, 2, 3])]]),
    );
    expect(env.integrated.get('#payload')).toEqual(new Uint8Array([1, 2, 3]));
  });
  it('an integrated entry no uri names is refused (it is not covered by the authentication)', () => {
    expect(
      code(() => decodeEnvelope(envelopeWith(minimalManifest(), [['#payload', new Uint8Array([1, 2, 3])]]))),
    ).toBe('SUIT_ENVELOPE_INVALID');
  });
  it('integrated payload must be a bstr; count is bounded', () => {
    expect(code(() => decodeEnvelope(envelopeWith(minimalManifest(), [['#p', 5]])))).toBe(
      'SUIT_ENVELOPE_INVALID',
    );
    const many: [string, unknown][] = Array.from({ length: 3 }, (_, i) => [`#p${i}`, new Uint8Array(1)]);
    expect(code(() => decodeEnvelope(envelopeWith(minimalManifest(), many), { maxIntegrated: 2 }))).toBe(
      'SUIT_ENVELOPE_INVALID',
    );
  });
  it('missing wrapper or manifest', () => {
    expect(
      code(() => decodeEnvelope(encode(new CborTag(107, new Map([[3, encode(minimalManifest())]]))))),
    ).toBe('SUIT_ENVELOPE_INVALID');
    expect(
      code(() =>
        decodeEnvelope(encode(new CborTag(107, new Map([[2, encode([encode([-16, new Uint8Array(32)])])]])))),
      ),
    ).toBe('SUIT_ENVELOPE_INVALID');
  });
  it('unsupported digest algorithm', () => {
    const mBytes = encode(minimalManifest());
    const env = encode(
      new CborTag(
        107,
        new Map([
          [2, encode([encode([-99, new Uint8Array(32)])])],
          [3, mBytes],
        ]),
      ),
    );
    expect(code(() => decodeEnvelope(env))).toBe('SUIT_DIGEST_ALG_UNSUPPORTED');
  });
  it('SHA-512 digests are supported (MF §8.3 optional algorithms)', () => {
    const mBytes = encode(minimalManifest());
    const env = encodeEnvelope({ manifest: mBytes, digestAlg: -44 });
    expect(decodeEnvelope(env).digest.alg).toBe(-44);
  });
  it('digest without the bstr head is a mismatch (MF §8.3)', () => {
    const mBytes = encode(minimalManifest());
    const wrong = encode([-16, new Uint8Array(createHash('sha256').update(mBytes).digest())]);
    const env = encode(
      new CborTag(
        107,
        new Map([
          [2, encode([wrong])],
          [3, mBytes],
        ]),
      ),
    );
    expect(code(() => decodeEnvelope(env))).toBe('SUIT_DIGEST_MISMATCH');
  });
  it('non-canonical SUIT maps are refused', () => {
    // Manifest map with keys out of order: {2: 0, 1: 1, 3: common}
    const common = encode(new Map([[2, [[new Uint8Array([0])]]]]));
    const body = Buffer.concat([
      Buffer.from([0xa3, 0x02, 0x00, 0x01, 0x01, 0x03]),
      Buffer.from(bstrHead(common.length)),
      Buffer.from(common),
    ]);
    const env = encodeEnvelope({ manifest: new Uint8Array(body) });
    expect(code(() => decodeEnvelope(env))).toBe('SUIT_MANIFEST_INVALID');
  });
});

describe('manifest validation (MF §8.4)', () => {
  const dec = (m: Map<number, unknown>, extra: [number | string, unknown][] = []): string =>
    code(() => decodeEnvelope(envelopeWith(m, extra)));

  it('accepts a minimal manifest', () => {
    expect(dec(minimalManifest())).toBe('no error');
  });
  it('manifest-version must be 1', () => {
    const m = minimalManifest();
    m.set(1, 2);
    expect(dec(m)).toBe('SUIT_MANIFEST_VERSION');
  });
  it('sequence number is a uint64', () => {
    const m = minimalManifest();
    m.set(2, 0xffffffffffffffffn);
    expect(decodeEnvelope(envelopeWith(m)).manifest.sequenceNumber).toBe(0xffffffffffffffffn);
    m.set(2, -1);
    expect(dec(m)).toBe('SUIT_MANIFEST_INVALID');
  });
  it('unknown manifest key is refused with its path', () => {
    const m = minimalManifest([[10, new Uint8Array(0)]]);
    const e = (() => {
      try {
        decodeEnvelope(envelopeWith(m));
      } catch (x) {
        return x as SuitError;
      }
      throw new Error('accepted');
    })();
    expect(e.code).toBe('SUIT_MANIFEST_INVALID');
    expect(e.path).toBe('envelope.manifest');
    expect(e.message).toContain('10');
  });
  it('common is required; components required, non-empty, bounded', () => {
    const m = minimalManifest();
    m.delete(3);
    expect(dec(m)).toBe('SUIT_MANIFEST_INVALID');
    m.set(3, encode(new Map([[2, []]])));
    expect(dec(m)).toBe('SUIT_MANIFEST_INVALID');
    m.set(3, encode(new Map([[2, [[5]]]])));
    expect(dec(m)).toBe('SUIT_MANIFEST_INVALID');
    m.set(3, encode(new Map([[2, Array.from({ length: 3 }, (_, i) => [new Uint8Array([i])])]])));
    expect(code(() => decodeEnvelope(envelopeWith(m), { maxComponents: 2 }))).toBe('SUIT_COMPONENT_INVALID');
    m.set(
      3,
      encode(
        new Map<number, unknown>([
          [2, [[new Uint8Array(1)]]],
          [9, 1],
        ]),
      ),
    );
    expect(dec(m)).toBe('SUIT_MANIFEST_INVALID');
  });
  it('unseverable sequences must be bstr', () => {
    expect(dec(minimalManifest([[7, [-16, new Uint8Array(32)]]]))).toBe('SUIT_MANIFEST_INVALID');
  });
  it('command sequences are validated with parseCommandSequence', () => {
    expect(dec(minimalManifest([[7, encode([3, 15])]]))).toBe('no error');
    expect(dec(minimalManifest([[7, encode([200, 15])]]))).toBe('SUIT_COMMAND_UNSUPPORTED');
  });
  it('severed member in the envelope must match its digest; unreferenced members are refused', () => {
    const install = encode([21, 2]);
    const digest = [-16, digestBstr(-16, install)];
    expect(dec(minimalManifest([[20, digest]]), [[20, install]])).toBe('no error');
    expect(dec(minimalManifest([[20, digest]]), [[20, encode([21, 15])]])).toBe(
      'SUIT_SEVERED_DIGEST_MISMATCH',
    );
    expect(dec(minimalManifest([[20, install]]), [[20, install]])).toBe('SUIT_ENVELOPE_INVALID');
    expect(dec(minimalManifest(), [[23, install]])).toBe('SUIT_ENVELOPE_INVALID');
  });
  it('text map: language tags, known keys, component maps (MF §8.4.4)', () => {
    const okText = encode(
      new Map([
        [
          'en',
          new Map<unknown, unknown>([
            [1, 'd'],
            [[new Uint8Array([0])], new Map([[8, 'v1']])],
          ]),
        ],
      ]),
    );
    expect(dec(minimalManifest([[23, okText]]))).toBe('no error');
    const badKey = encode(new Map([['en', new Map([[9, 'x']])]]));
    expect(dec(minimalManifest([[23, badKey]]))).toBe('SUIT_MANIFEST_INVALID');
    const badLang = encode(new Map([['not a tag', new Map([[1, 'x']])]]));
    expect(dec(minimalManifest([[23, badLang]]))).toBe('SUIT_MANIFEST_INVALID');
    const badCompKey = encode(new Map([['en', new Map([[[new Uint8Array([0])], new Map([[9, 'x']])]])]]));
    expect(dec(minimalManifest([[23, badCompKey]]))).toBe('SUIT_MANIFEST_INVALID');
    expect(
      code(() => decodeEnvelope(envelopeWith(minimalManifest([[23, okText]])), { maxTextSize: 4 })),
    ).toBe('SUIT_MANIFEST_INVALID');
  });
  it('dependencies (TD §5.1) and set-version (UM)', () => {
    const common = encode(
      new Map<number, unknown>([
        [1, new Map([[1, new Map([[1, [new Uint8Array([7])]]])]])],
        [2, [[new Uint8Array([0])]]],
      ]),
    );
    const m = minimalManifest([[6, encode([1, 2, -1, 3])]]);
    m.set(3, common);
    const man = decodeEnvelope(envelopeWith(m)).manifest;
    expect(man.common.dependencies).toEqual([{ index: 1, prefix: [new Uint8Array([7])] }]);
    expect(man.setVersion).toEqual([1, 2, -1, 3]);
    m.set(6, encode([-1]));
    expect(dec(m)).toBe('SUIT_MANIFEST_INVALID');
    m.set(6, encode([1]));
    m.set(
      3,
      encode(
        new Map<number, unknown>([
          [1, new Map([[5, new Map()]])],
          [2, [[new Uint8Array([0])]]],
        ]),
      ),
    );
    expect(dec(m)).toBe('SUIT_COMPONENT_INVALID');
    m.set(
      3,
      encode(
        new Map<number, unknown>([
          [1, new Map([[1, new Map([[2, 1]])]])],
          [2, [[new Uint8Array([0])]]],
        ]),
      ),
    );
    expect(dec(m)).toBe('SUIT_MANIFEST_INVALID');
  });
  it('parseManifest alone (bytes + members)', () => {
    const man = parseManifest(encode(minimalManifest()));
    expect(man.common.components).toHaveLength(1);
  });
  it('hex helper sanity', () => {
    expect(decode(hex('8201 02'))).toEqual([1, 2]);
  });
});

describe('digestBstr hashes the preferred bstr head + content (MF §8.3)', () => {
  for (const n of [0, 1, 23, 24, 255, 256, 65535, 65536]) {
    it(`length ${n}`, () => {
      const content = new Uint8Array(n).fill(7);
      const expected = createHash('sha256').update(bstrHead(n)).update(content).digest();
      expect(Buffer.from(digestBstr(-16, content))).toEqual(expected);
    });
  }
});

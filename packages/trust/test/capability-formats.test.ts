import {
  Alg,
  CborTag,
  coseKeyFromKeyObject,
  decode,
  encode,
  generateAgreementKey,
  generateSigningKey,
  softwareSigner,
  softwareVerifier,
  wrapForEcdhEs,
} from '@rotor/cose';
import { authenticateEnvelope, type TrustPolicy } from '@rotor/suit';
import { describe, expect, it } from 'vitest';
import {
  buildModuleEnvelope,
  capabilityAuthorization,
  capabilityComponent,
  createCapabilityManifest,
  createRevocationList,
  decodeModuleMetadata,
  encodeModuleMetadata,
  encryptModule,
  METADATA_URI,
  MODULE_ABI,
  moduleEnvelopeInfo,
  sha256,
  TrustError,
  verifyCapabilityManifest,
  verifyRevocationList,
  type ModuleMetadata,
} from '../src/index.ts';

const kp = (label: string) => {
  const { privateKey, publicKey } = generateSigningKey(Alg.ES256);
  const kid = new TextEncoder().encode(label);
  return {
    signer: softwareSigner(privateKey, Alg.ES256, kid),
    verifier: softwareVerifier(publicKey, Alg.ES256, kid),
    key: coseKeyFromKeyObject(publicKey, { kid, alg: Alg.ES256 }),
    kid,
  };
};
const authority = kp('authority');
const other = kp('other');
const capKey = kp('cap');
const ALGS = new Set([Alg.ES256]);

const md: ModuleMetadata = {
  name: 'codec',
  version: [1, 2, 3],
  imports: [{ module: 'rotor', name: 'log' }],
  limits: { memoryPages: 4, callMs: 100, ioBytes: 4096 },
  deviceClasses: ['gw'],
  firmware: { min: [1, 0, 0], max: [3, 0, 0] },
  dependencies: [{ name: 'base', min: [1, 0, 0], max: [1, 9, 9] }],
  selfTest: { input: new Uint8Array([1]), output: new Uint8Array([2]) },
  abi: MODULE_ABI,
};

function code(f: () => unknown): string | undefined {
  try {
    f();
  } catch (e) {
    return e instanceof TrustError ? e.code : `not a TrustError: ${String(e)}`;
  }
  return undefined;
}

/** Re-encodes a metadata map with one member replaced. */
function withMember(key: number, value: unknown): Uint8Array {
  const m = decode(encodeModuleMetadata(md)) as { entries: [number, unknown][] };
  const out = new Map<number, unknown>(m.entries);
  if (value === undefined) out.delete(key);
  else out.set(key, value);
  return encode(out);
}

describe('module metadata', () => {
  it('round-trips', () => {
    expect(decodeModuleMetadata(encodeModuleMetadata(md))).toEqual(md);
  });

  it('refuses bad members with CAP_METADATA_INVALID', () => {
    const bad: [number, unknown][] = [
      [1, 'Codec'], // upper case
      [1, 'x'.repeat(65)],
      [2, [1, 2]],
      [
        3,
        [
          ['rotor', 'log'],
          ['rotor', 'log'],
        ],
      ], // duplicate permission
      [3, [['rotor', 'bad name']]],
      [
        4,
        new Map([
          [1, 0],
          [2, 1],
          [3, 1],
        ]),
      ], // zero pages
      [
        4,
        new Map([
          [1, 1],
          [2, 1],
        ]),
      ], // missing ioBytes
      [5, []],
      [
        6,
        new Map([
          [1, [2, 0, 0]],
          [2, [1, 0, 0]],
        ]),
      ], // min above max
      [
        7,
        [
          new Map<number, unknown>([
            [1, 'codec'],
            [2, [1, 0, 0]],
          ]),
        ],
      ], // depends on itself
      [9, 2], // unknown ABI
      [10, 1], // unknown key
      [2, undefined], // missing version
    ];
    for (const [k, v] of bad)
      expect(
        code(() => decodeModuleMetadata(withMember(k, v))),
        `key ${k}`,
      ).toBe('CAP_METADATA_INVALID');
    expect(code(() => decodeModuleMetadata(new Uint8Array(20_000)))).toBe('CAP_METADATA_INVALID');
    expect(code(() => decodeModuleMetadata(new Uint8Array([0xa0, 0x00])))).toBe('CAP_METADATA_INVALID'); // trailing byte
  });
});

describe('capability manifest', () => {
  const fields = {
    version: 3,
    issuedAt: 1000,
    keys: [{ key: capKey.key, kid: capKey.kid, alg: Alg.ES256, names: ['codec'] }],
    modules: [
      { name: 'codec', minVersion: [1, 0, 0] as const, maxVersion: [1, 9, 9] as const },
      { name: 'pinned', digests: [sha256(new Uint8Array([1]))] },
    ],
  };

  it('verifies and authorizes by name, version range and digest pin', async () => {
    const bytes = await createCapabilityManifest(fields, authority.signer);
    const m = verifyCapabilityManifest(bytes, {
      verifiers: [authority.verifier],
      allowedAlgs: ALGS,
      currentVersion: 2,
    });
    expect(m.version).toBe(3);
    expect(m.keyVerifiers).toHaveLength(1);
    const d = sha256(new Uint8Array([9]));
    expect(capabilityAuthorization(m, 'codec', [1, 5, 0], d)).toBeUndefined();
    expect(capabilityAuthorization(m, 'codec', [2, 0, 0], d)).toMatch(/outside/);
    expect(capabilityAuthorization(m, 'other', [1, 0, 0], d)).toMatch(/not in the capability manifest/);
    expect(capabilityAuthorization(m, 'pinned', [1, 0, 0], d)).toMatch(/not pinned/);
    expect(capabilityAuthorization(m, 'pinned', [1, 0, 0], sha256(new Uint8Array([1])))).toBeUndefined();
  });

  it('refuses unknown signers, tampering, rollback and other document types', async () => {
    const bytes = await createCapabilityManifest(fields, authority.signer);
    const opts = { verifiers: [authority.verifier], allowedAlgs: ALGS };
    expect(code(() => verifyCapabilityManifest(bytes, { ...opts, verifiers: [other.verifier] }))).toBe(
      'CAP_MANIFEST_UNKNOWN_KEY',
    );
    expect(code(() => verifyCapabilityManifest(bytes, { ...opts, currentVersion: 3 }))).toBe(
      'CAP_MANIFEST_ROLLBACK',
    );
    expect(code(() => verifyCapabilityManifest(bytes, { ...opts, allowedAlgs: new Set([Alg.EdDSA]) }))).toBe(
      'CAP_MANIFEST_ALG_NOT_ALLOWED',
    );
    // Flip one byte of the payload: the signature no longer verifies.
    const t = bytes.slice();
    const i = Buffer.from(t).indexOf(Buffer.from('pinned'));
    t[i] = t[i]! ^ 0x01;
    expect(code(() => verifyCapabilityManifest(t, opts))).toBe('CAP_MANIFEST_BAD_SIGNATURE');
    // A revocation list signed by the same authority is not a capability manifest.
    const rl = await createRevocationList(
      { version: 1, issuedAt: 1, expiresAt: 2, entries: [] },
      authority.signer,
    );
    expect(code(() => verifyCapabilityManifest(rl, opts))).toBe('CAP_MANIFEST_MALFORMED');
    expect(code(() => verifyCapabilityManifest(new Uint8Array([1, 2, 3]), opts))).toBe(
      'CAP_MANIFEST_MALFORMED',
    );
    expect(code(() => verifyCapabilityManifest(new Uint8Array(300 * 1024), opts))).toBe(
      'CAP_MANIFEST_MALFORMED',
    );
  });

  it('refuses to sign an invalid manifest', async () => {
    await expect(
      createCapabilityManifest(
        { ...fields, modules: [{ name: 'codec' }, { name: 'codec' }] },
        authority.signer,
      ),
    ).rejects.toMatchObject({ code: 'CAP_MANIFEST_MALFORMED' });
  });
});

describe('revocation list', () => {
  const d1 = sha256(new Uint8Array([1]));
  const d2 = sha256(new Uint8Array([2]));

  it('verifies, looks digests up, and enforces version and validity window', async () => {
    const bytes = await createRevocationList(
      { version: 5, issuedAt: 1000, expiresAt: 2000, entries: [{ digest: d1, reason: 'CVE' }] },
      authority.signer,
    );
    const opts = { verifiers: [authority.verifier], allowedAlgs: ALGS, now: 1500 };
    const l = verifyRevocationList(bytes, opts);
    expect(l.has(d1)).toBe(true);
    expect(l.has(d2)).toBe(false);
    expect(code(() => verifyRevocationList(bytes, { ...opts, currentVersion: 5 }))).toBe(
      'REVOCATION_ROLLBACK',
    );
    expect(code(() => verifyRevocationList(bytes, { ...opts, now: 2000 }))).toBe('REVOCATION_EXPIRED');
    expect(verifyRevocationList(bytes, { ...opts, now: 2000, allowExpired: true }).version).toBe(5);
    expect(code(() => verifyRevocationList(bytes, { ...opts, now: 600 }))).toBe('REVOCATION_NOT_YET_VALID');
    expect(code(() => verifyRevocationList(bytes, { ...opts, verifiers: [other.verifier] }))).toBe(
      'REVOCATION_UNKNOWN_KEY',
    );
    const t = bytes.slice();
    const j = Buffer.from(t).indexOf(Buffer.from(d1)) + 3;
    t[j] = t[j]! ^ 0x80;
    expect(code(() => verifyRevocationList(t, opts))).toBe('REVOCATION_BAD_SIGNATURE');
  });

  it('refuses duplicate digests and inverted windows at creation', async () => {
    await expect(
      createRevocationList(
        { version: 1, issuedAt: 1, expiresAt: 2, entries: [{ digest: d1 }, { digest: d1 }] },
        authority.signer,
      ),
    ).rejects.toMatchObject({ code: 'REVOCATION_MALFORMED' });
    await expect(
      createRevocationList({ version: 1, issuedAt: 2, expiresAt: 2, entries: [] }, authority.signer),
    ).rejects.toMatchObject({ code: 'REVOCATION_MALFORMED' });
  });
});

describe('module envelope', () => {
  const wasm = new Uint8Array([0, 0x61, 0x73, 0x6d, 1, 0, 0, 0]);
  const policy: TrustPolicy = {
    anchors: [
      {
        name: 'cap',
        role: 'capability',
        verifier: capKey.verifier,
        componentPrefixes: [capabilityComponent('codec')],
      },
    ],
    allowedAlgs: ALGS,
  };

  async function build(): Promise<Uint8Array> {
    const enc = encryptModule(wasm);
    const dev = generateAgreementKey('P-256');
    return buildModuleEnvelope({
      vendorDomain: 'rotor.example',
      metadata: md,
      wasm,
      encrypted: enc,
      recipients: [wrapForEcdhEs(enc.cek, dev.publicKey, Alg.ECDH_ES_A128KW)],
      sequenceNumber: 7,
      signers: [capKey.signer],
    });
  }

  it('authenticates under a capability-prefix policy and yields the signed module facts', async () => {
    const env = await build();
    const { envelope } = await authenticateEnvelope(env, policy);
    const info = moduleEnvelopeInfo(envelope, 1 << 20);
    expect(info.name).toBe('codec');
    expect(info.sequenceNumber).toBe(7n);
    expect(Buffer.from(info.moduleDigest)).toEqual(Buffer.from(sha256(wasm)));
    expect(info.moduleSize).toBe(wasm.length);
    expect(info.metadata).toEqual(md);
    expect(() => moduleEnvelopeInfo(envelope, 4)).toThrow(TrustError);
  });

  it('refuses metadata that does not match its signed digest', async () => {
    const env = await build();
    const { envelope } = await authenticateEnvelope(env, policy);
    const other = encodeModuleMetadata({ ...md, limits: { ...md.limits, memoryPages: 9999 } });
    const forged = { ...envelope, integrated: new Map([...envelope.integrated, [METADATA_URI, other]]) };
    expect(code(() => moduleEnvelopeInfo(forged, 1 << 20))).toBe('CAP_METADATA_INVALID');
  });

  it('a key authorized for another capability cannot sign this one (MF §9)', async () => {
    const env = await build();
    const narrow: TrustPolicy = {
      ...policy,
      anchors: [{ ...policy.anchors[0]!, componentPrefixes: [capabilityComponent('filter')] }],
    };
    await expect(authenticateEnvelope(env, narrow)).rejects.toMatchObject({
      code: 'SUIT_SIGNER_UNAUTHORIZED',
    });
  });

  it('is a tagged SUIT envelope', async () => {
    expect(decode(await build(), { maxSize: 1 << 20 })).toBeInstanceOf(CborTag);
  });
});

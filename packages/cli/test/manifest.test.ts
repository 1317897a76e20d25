/**
 * `rotor manifest …` against every published vector (vectors.md), the negative vectors, and a create → sign →
 * verify → decrypt round trip. Most runs are in-process (the CLI's `run`); a few spawn the real command.
 */
import { execFile } from 'node:child_process';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { encodeCoseKey } from '@rotor/cose';
import { run } from '../src/main.ts';

const V = join(import.meta.dirname, '../../../../shared/vectors/suit');
const K = join(V, 'keys');
const E = join(V, 'encryption');
const MAIN = join(import.meta.dirname, '../src/main.ts');

let stdout = '';
let stderr = '';
beforeEach(() => {
  stdout = '';
  stderr = '';
  vi.spyOn(process.stdout, 'write').mockImplementation((s: string | Uint8Array) => {
    stdout += String(s);
    return true;
  });
  vi.spyOn(process.stderr, 'write').mockImplementation((s: string | Uint8Array) => {
    stderr += String(s);
    return true;
  });
});
afterEach(() => {
  vi.restoreAllMocks();
});

const DRAFT = join(K, 'suit-draft-signer-p256.public.pem');
const DRAFT_COSE = join(K, 'suit-draft-signer-p256.public.esp256.cose_key');
const HMAC = join(K, 'encryption-hmac256-key.cose_key');
const KEK = join(K, 'encryption-a128kw-kek-kid-1.cose_key');
const RECIPIENT = join(K, 'encryption-ecdh-recipient-kid-2.private.pem');
const DEP_SIGNER = join(K, 'encryption-dependency-signer-p256.public.pem');

/** Each valid vector with the keys vectors.md names. */
const VALID: readonly (readonly [string, string[]])[] = [
  ...[0, 1, 2, 3, 4, 5].map((i): [string, string[]] => [
    `manifest/example${i}.signed.cbor`,
    ['--key', DRAFT],
  ]),
  ['manifest/example2.severed-signed.cbor', ['--key', DRAFT_COSE]],
  ['trust-domains/example0_dependent.signed.cbor', ['--key', DRAFT]],
  ['trust-domains/example1_process.signed.cbor', ['--key', DRAFT]],
  ['trust-domains/example2_integrated.signed.cbor', ['--key', DRAFT]],
  ['encryption/suit-manifest-aes-kw-content.signed.cbor', ['--key', HMAC]],
  ['encryption/suit-manifest-aes-kw.signed.cbor', ['--key', HMAC]],
  ['encryption/suit-manifest-aes-kw-slot.signed.cbor', ['--key', HMAC]],
  ['encryption/suit-manifest-es-ecdh-content.signed.cbor', ['--key', DRAFT]],
  ['encryption/suit-manifest-es-ecdh-dependency.signed.cbor', ['--key', DEP_SIGNER, '--key', DRAFT]],
];

describe('rotor manifest verify: the published vectors', () => {
  for (const [file, keys] of VALID) {
    it(`${file} is valid`, async () => {
      expect(await run(['manifest', 'verify', join(V, file), ...keys, '--json'])).toBe(0);
      const out = JSON.parse(stdout) as { valid: boolean; signers: string[] };
      expect(out.valid).toBe(true);
      expect(out.signers.length).toBeGreaterThan(0);
    });
  }

  const UNSIGNED = [0, 1, 3, 4, 5].map((i) => `manifest/example${i}.unsigned.cbor`);
  for (const file of [...UNSIGNED, 'manifest/example2.severed-unsigned.cbor']) {
    it(`${file} is refused: SUIT_UNAUTHENTICATED`, async () => {
      expect(await run(['manifest', 'verify', join(V, file), '--key', DRAFT])).toBe(4);
      expect(stderr).toMatch(/^error: SUIT_UNAUTHENTICATED: /);
    });
  }

  const NEGATIVE: readonly (readonly [string, string])[] = [
    ['negative/example0.bad-signature.cbor', 'SUIT_AUTH_FAILED'],
    ['negative/example0.modified-manifest.cbor', 'SUIT_DIGEST_MISMATCH'],
    ['negative/example2.modified-severed-text.cbor', 'SUIT_SEVERED_DIGEST_MISMATCH'],
  ];
  for (const [file, code] of NEGATIVE) {
    it(`${file} is refused: ${code}`, async () => {
      expect(await run(['manifest', 'verify', join(V, file), '--key', DRAFT])).toBe(4);
      expect(stderr).toMatch(new RegExp(`^error: ${code}: `));
    });
  }

  it('a valid envelope under the wrong key is refused', async () => {
    expect(
      await run(['manifest', 'verify', join(V, 'manifest/example0.signed.cbor'), '--key', DEP_SIGNER]),
    ).toBe(4);
    expect(stderr).toMatch(/SUIT_AUTH_FAILED/);
  });
});

describe('rotor manifest verify --decrypt-key: the encryption vectors decrypt to the stated plaintext', () => {
  const PAYLOAD = (f: string): string => `coaps://example.com/encrypted-firmware=${join(E, f)}`;
  const CASES: readonly (readonly [string, string[]])[] = [
    ['suit-manifest-aes-kw-content.signed.cbor', ['--key', HMAC, '--decrypt-key', KEK]],
    [
      'suit-manifest-aes-kw.signed.cbor',
      ['--key', HMAC, '--decrypt-key', KEK, '--payload', PAYLOAD('encrypted-payload-aes-kw-aes-gcm.bin')],
    ],
    [
      'suit-manifest-aes-kw-slot.signed.cbor',
      ['--key', HMAC, '--decrypt-key', KEK, '--payload', PAYLOAD('encrypted-payload-aes-kw-aes-gcm.bin')],
    ],
    ['suit-manifest-es-ecdh-content.signed.cbor', ['--key', DRAFT, '--decrypt-key', RECIPIENT]],
    [
      'suit-manifest-es-ecdh-dependency.signed.cbor',
      [
        '--key',
        DEP_SIGNER,
        '--key',
        DRAFT,
        '--decrypt-key',
        join(K, 'encryption-ecdh-recipient-kid-2.private.cose_key'),
      ],
    ],
  ];
  const plaintext = readFileSync(join(E, 'plaintext-payload.bin'));
  for (const [file, args] of CASES) {
    it(file, async () => {
      expect(await run(['manifest', 'verify', join(E, file), ...args, '--json'])).toBe(0);
      const out = JSON.parse(stdout) as { payloads: { plaintext: number }[] };
      // The processor's image-match condition checked the plaintext's digest; its size is the stated plaintext's.
      expect(out.payloads.map((p) => p.plaintext)).toEqual([plaintext.length]);
    });
  }

  it('the wrong payload fails the image digest check', async () => {
    const code = await run([
      'manifest',
      'verify',
      join(E, 'suit-manifest-aes-kw.signed.cbor'),
      '--key',
      HMAC,
      '--decrypt-key',
      KEK,
      '--payload',
      PAYLOAD('encrypted-payload-aes-kw-aes-ctr.bin'),
    ]);
    expect(code).not.toBe(0);
    expect(stderr).toMatch(/^error: (COSE_DECRYPT_FAILED|SUIT_CONDITION_FAILED|SUIT_DECRYPT_FAILED)/);
  });

  it('a key no recipient names is refused', async () => {
    expect(
      await run([
        'manifest',
        'verify',
        join(E, 'suit-manifest-es-ecdh-content.signed.cbor'),
        '--key',
        DRAFT,
        '--decrypt-key',
        KEK,
      ]),
    ).toBe(4);
    expect(stderr).toMatch(/COSE_NO_KEY/);
  });
});

describe('rotor manifest inspect', () => {
  it('shows names, hex digests, UUIDs and text', async () => {
    expect(await run(['manifest', 'inspect', join(V, 'manifest/example2.signed.cbor')])).toBe(0);
    expect(stdout).toContain('vendor-identifier: fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe');
    expect(stdout).toContain('condition-class-identifier');
    expect(stdout).toContain('value: 00112233445566778899aabbccddeeff0123456789abcdeffedcba9876543210');
    expect(stdout).toContain('vendor-domain: arm.com');
    expect(stdout).toContain('structure: COSE_Sign1');
  });
  it('--json is machine readable and marks a digest mismatch', async () => {
    expect(
      await run(['manifest', 'inspect', '--json', join(V, 'negative/example0.modified-manifest.cbor')]),
    ).toBe(0);
    const t = JSON.parse(stdout) as {
      envelope: { 'authentication-wrapper': { digest: { matches: boolean } } };
    };
    expect(t.envelope['authentication-wrapper'].digest.matches).toBe(false);
  });
  it('garbage is refused with a CBOR error and exit 3', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'rotor-cli-'));
    const f = join(dir, 'junk.suit');
    writeFileSync(f, randomBytes(64));
    expect(await run(['manifest', 'inspect', f])).toBe(3);
    expect(stderr).toMatch(/^error: (CBOR|SUIT)_[A-Z_]+: /);
  });
  it('usage errors exit 2; unknown files exit 6', async () => {
    expect(await run(['manifest', 'inspect'])).toBe(2);
    expect(await run(['manifest', 'frobnicate'])).toBe(2);
    expect(await run(['manifest', 'inspect', '/nonexistent/x.suit'])).toBe(6);
  });
});

describe('rotor manifest create → sign → verify', () => {
  function keyPair(dir: string, name: string): { priv: string; pub: string } {
    const k = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
    const priv = join(dir, `${name}.pem`);
    const pub = join(dir, `${name}.pub.pem`);
    writeFileSync(priv, k.privateKey.export({ format: 'pem', type: 'pkcs8' }));
    writeFileSync(pub, k.publicKey.export({ format: 'pem', type: 'spki' }));
    return { priv, pub };
  }

  it('builds an author-signed, operator-approved, encrypted release that verifies and decrypts', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'rotor-cli-'));
    const author = keyPair(dir, 'author');
    const operator = keyPair(dir, 'operator');
    const device = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
    writeFileSync(join(dir, 'device.pub.pem'), device.publicKey.export({ format: 'pem', type: 'spki' }));
    writeFileSync(join(dir, 'device.pem'), device.privateKey.export({ format: 'pem', type: 'pkcs8' }));
    const kek = randomBytes(16);
    writeFileSync(
      join(dir, 'kek.cose_key'),
      encodeCoseKey({ kty: 4, k: new Uint8Array(kek), kid: new TextEncoder().encode('k1') }),
    );
    writeFileSync(join(dir, 'fw.bin'), randomBytes(5000));
    writeFileSync(join(dir, 'app.bin'), randomBytes(3000));
    writeFileSync(join(dir, 'cfg.bin'), randomBytes(100));
    writeFileSync(
      join(dir, 'release.yaml'),
      [
        'vendor: example.com',
        'class: thermostat-v2',
        'sequence: 7',
        'version: 1.2.0',
        'description: Spring release',
        'components:',
        '  - id: firmware',
        '    image: fw.bin',
        '    uri: https://cdn.example.com/fw.bin',
        '    encrypt: { recipient: device.pub.pem, content: A128GCM }',
        '  - id: app',
        '    image: app.bin',
        '    encrypt: { recipient: kek.cose_key, content: A128CTR }',
        '  - id: config',
        '    image: cfg.bin',
        '',
      ].join('\n'),
    );
    const out = join(dir, 'release.suit');
    expect(
      await run(['manifest', 'create', join(dir, 'release.yaml'), '--key', author.priv, '-o', out, '--json']),
    ).toBe(0);
    const created = JSON.parse(stdout) as { payloads: { uri: string; file: string }[] };
    expect(created.payloads.map((p) => p.uri)).toEqual(['https://cdn.example.com/fw.bin']);

    // Author-only: refused where the operator's signature is also required.
    expect(await run(['manifest', 'verify', out, '--key', author.pub, '--operator-key', operator.pub])).toBe(
      4,
    );
    expect(stderr).toMatch(/SUIT_MISSING_PARTY/);
    // The author signing twice does not make two parties.
    expect(await run(['manifest', 'sign', out, '--key', author.priv, '-o', join(dir, 'twice.suit')])).toBe(0);
    expect(
      await run([
        'manifest',
        'verify',
        join(dir, 'twice.suit'),
        '--key',
        author.pub,
        '--operator-key',
        operator.pub,
      ]),
    ).toBe(4);

    expect(await run(['manifest', 'sign', out, '--key', operator.priv])).toBe(0);
    stdout = '';
    const args = ['manifest', 'verify', out, '--key', author.pub, '--operator-key', operator.pub];
    expect(await run([...args, '--json'])).toBe(0);
    expect((JSON.parse(stdout) as { signers: string[] }).signers).toEqual([
      'author.pub.pem (author)',
      'operator.pub.pem (operator)',
    ]);

    stdout = '';
    const payload = `https://cdn.example.com/fw.bin=${created.payloads[0]!.file}`;
    const decryptArgs = [
      ...args,
      '--decrypt-key',
      join(dir, 'device.pem'),
      '--decrypt-key',
      join(dir, 'kek.cose_key'),
    ];
    expect(await run([...decryptArgs, '--payload', payload, '--json'])).toBe(0);
    const sizes = (JSON.parse(stdout) as { payloads: { plaintext: number }[] }).payloads
      .map((p) => p.plaintext)
      .sort();
    expect(sizes).toEqual([3000, 5000]);

    // A tampered ciphertext is caught (GCM tag) and nothing decrypts.
    const tampered = readFileSync(created.payloads[0]!.file);
    tampered[10]! ^= 1;
    writeFileSync(join(dir, 'bad.enc'), tampered);
    expect(
      await run([...decryptArgs, '--payload', `https://cdn.example.com/fw.bin=${join(dir, 'bad.enc')}`]),
    ).not.toBe(0);

    // Inspect shows the encryption info and the names.
    stdout = '';
    expect(await run(['manifest', 'inspect', out])).toBe(0);
    expect(stdout).toContain('content: A128GCM');
    expect(stdout).toContain("['firmware']");
    expect(stdout).toContain('manifest-description: Spring release');
  });

  it('delivery: operator leaves the payload source to the operator (set-parameters, no integration, no encrypt)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'rotor-cli-'));
    const k = keyPair(dir, 'a');
    writeFileSync(join(dir, 'fw.bin'), randomBytes(2000));
    const desc = (extra: string): string =>
      [
        'vendor: example.com',
        'class: c1',
        'sequence: 3',
        'delivery: operator',
        'components:',
        '  - id: fw',
        '    image: fw.bin',
        extra,
        '',
      ].join('\n');
    writeFileSync(join(dir, 'r.yaml'), desc('    uri: https://cdn.example.com/default.bin'));
    const out = join(dir, 'r.suit');
    expect(await run(['manifest', 'create', join(dir, 'r.yaml'), '--key', k.priv, '-o', out])).toBe(0);
    stdout = '';
    expect(await run(['manifest', 'inspect', '--json', out])).toBe(0);
    const t = JSON.stringify(JSON.parse(stdout));
    expect(t).toContain('"directive-set-parameters":{"uri":"https://cdn.example.com/default.bin"}');
    expect(t).not.toContain('"directive-override-parameters":{"uri"');
    expect(t).not.toContain('"integrated"');
    writeFileSync(join(dir, 'bad.yaml'), desc('    encrypt: { recipient: a.pub.pem }'));
    expect(await run(['manifest', 'create', join(dir, 'bad.yaml'), '--key', k.priv])).toBe(3);
    expect(stderr).toMatch(/the operator encrypts per device/);
  });

  it('refuses a description with unknown fields', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'rotor-cli-'));
    const k = keyPair(dir, 'a');
    writeFileSync(
      join(dir, 'd.json'),
      JSON.stringify({ vendor: 'x.com', class: 'c', sequence: 1, components: [], extra: 1 }),
    );
    expect(await run(['manifest', 'create', join(dir, 'd.json'), '--key', k.priv])).toBe(3);
    expect(stderr).toMatch(/unknown field 'extra'/);
  });
});

describe('the real rotor process', () => {
  const exec = promisify(execFile);
  it('exits 0 on a valid envelope and 4 with the code on stderr for a bad one', async () => {
    const ok = await exec(process.execPath, [
      MAIN,
      'manifest',
      'verify',
      join(V, 'manifest/example0.signed.cbor'),
      '--key',
      DRAFT,
    ]);
    expect(ok.stdout).toContain('valid: true');
    const bad = await exec(process.execPath, [
      MAIN,
      'manifest',
      'verify',
      join(V, 'negative/example0.bad-signature.cbor'),
      '--key',
      DRAFT,
    ]).catch((e: unknown) => e as { code: number; stderr: string });
    expect('code' in bad ? bad.code : 0).toBe(4);
    expect('stderr' in bad ? bad.stderr : '').toMatch(/^error: SUIT_AUTH_FAILED: /);
  });
});

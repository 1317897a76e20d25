/**
 * Signing keys named by RFC 7512 PKCS#11 URIs on a real SoftHSM2 token: `factory init` creates the author and operator
 * keys in the token; `manifest create` / `manifest sign` sign through the token; `manifest verify` accepts the result
 * with the exported public keys. A wrong PIN, a missing pin-source or a missing object is a typed error with exit
 * code 6, never a crash, and the PIN never appears in the output. The private keys stay non-extractable.
 */
import 'reflect-metadata';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { FactoryToken, operatorKeyFromPkcs11 } from '@rotor/server';
import { createSoftHsm, type SoftHsm } from '../../server/test/factory/softhsm.ts';
import { run } from '../src/main.ts';

const PIN = '97531';
let hsm: SoftHsm;
let stdout = '';
let stderr = '';

beforeAll(async () => {
  hsm = createSoftHsm();
  hsm.initToken('rotor-keys', PIN);
  writeFileSync(join(hsm.dir, 'pin'), `${PIN}\n`, { mode: 0o600 });
  writeFileSync(join(hsm.dir, 'bad-pin'), '11111\n', { mode: 0o600 });
  const { X509CertificateGenerator } = await import('@peculiar/x509');
  const alg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };
  const keys = await crypto.subtle.generateKey(alg, false, ['sign', 'verify']);
  const ca = await X509CertificateGenerator.createSelfSigned(
    { name: 'CN=server ca', keys, signingAlgorithm: alg },
    crypto,
  );
  writeFileSync(join(hsm.dir, 'server-ca.pem'), ca.toString('pem'));
});

afterAll(() => {
  hsm.cleanup();
});

beforeEach(() => {
  stdout = '';
  stderr = '';
  vi.spyOn(process.stdout, 'write').mockImplementation((s) => ((stdout += String(s)), true));
  vi.spyOn(process.stderr, 'write').mockImplementation((s) => ((stderr += String(s)), true));
  process.env.ROTOR_PKCS11_MODULE = hsm.module;
});

afterEach(() => {
  vi.restoreAllMocks();
  delete process.env.ROTOR_PKCS11_MODULE;
});

describe('PKCS#11 URIs as signing keys', () => {
  it('factory init (token keys) → manifest create (author) → sign (operator) → verify', async () => {
    const f = join(hsm.dir, 'factory');
    expect(
      await run([
        'factory',
        'init',
        '--dir',
        f,
        '--pin-file',
        join(hsm.dir, 'pin'),
        '--token',
        'rotor-keys',
        '--module',
        hsm.module,
        '--server-ca',
        join(hsm.dir, 'server-ca.pem'),
      ]),
    ).toBe(0);
    const pinSrc = `pin-source=file:${join(hsm.dir, 'pin')}`;
    const author = `pkcs11:token=rotor-keys;object=rotor-author?${pinSrc}`;
    const operator = `pkcs11:token=rotor-keys;object=rotor-operator;type=private?${pinSrc}`;
    writeFileSync(join(hsm.dir, 'fw.bin'), randomBytes(2000));
    writeFileSync(
      join(hsm.dir, 'release.yaml'),
      [
        'vendor: example.com',
        'class: gw',
        'sequence: 2',
        'components:',
        '  - id: firmware',
        '    image: fw.bin',
        '',
      ].join('\n'),
    );
    const out = join(hsm.dir, 'release.suit');
    expect(await run(['manifest', 'create', join(hsm.dir, 'release.yaml'), '--key', author, '-o', out])).toBe(
      0,
    );
    const anchors = ['--key', join(f, 'author.pub.pem'), '--operator-key', join(f, 'operator.pub.pem')];
    // Author only: the operator's signature is still missing.
    expect(await run(['manifest', 'verify', out, ...anchors])).toBe(4);
    expect(await run(['manifest', 'sign', out, '--key', operator])).toBe(0);
    expect(await run(['manifest', 'verify', out, ...anchors])).toBe(0);
    // The wrong party's key does not pass as the operator.
    expect(
      await run([
        'manifest',
        'verify',
        out,
        '--key',
        join(f, 'author.pub.pem'),
        '--operator-key',
        join(f, 'author.pub.pem'),
      ]),
    ).toBe(4);

    // Wrong PIN, no PIN, missing object, missing token: typed errors, exit 6, the PIN never printed.
    const bad = `pkcs11:token=rotor-keys;object=rotor-author?pin-source=file:${join(hsm.dir, 'bad-pin')}`;
    expect(await run(['manifest', 'sign', out, '--key', bad, '-o', join(hsm.dir, 'x.suit')])).toBe(6);
    expect(stderr).toMatch(/FACTORY_TOKEN_PIN_INCORRECT/);
    expect(await run(['manifest', 'sign', out, '--key', 'pkcs11:token=rotor-keys;object=rotor-author'])).toBe(
      6,
    );
    expect(stderr).toMatch(/PKCS11_PIN_UNAVAILABLE/);
    expect(
      await run(['manifest', 'sign', out, '--key', `pkcs11:token=rotor-keys;object=nope?${pinSrc}`]),
    ).toBe(6);
    expect(stderr).toMatch(/FACTORY_KEY_NOT_FOUND/);
    expect(
      await run(['manifest', 'sign', out, '--key', `pkcs11:token=absent;object=rotor-author?${pinSrc}`]),
    ).toBe(6);
    expect(stderr).toMatch(/FACTORY_TOKEN_UNAVAILABLE/);
    const inline = `pkcs11:token=rotor-keys;object=rotor-author?pin-value=${PIN}99`;
    expect(await run(['manifest', 'sign', out, '--key', inline, '-o', join(hsm.dir, 'y.suit')])).toBe(6);
    expect(stderr).toMatch(/FACTORY_TOKEN_PIN_INCORRECT/);
    expect(stdout + stderr).not.toContain(PIN);

    // The keys stay in the token, sensitive and never extractable (PKCS#11 v2.40 §4.9).
    const token = FactoryToken.open({ module: hsm.module, token: 'rotor-keys', pin: PIN });
    try {
      for (const o of ['rotor-author', 'rotor-operator']) {
        const a = await token.attributes(`pkcs11:token=rotor-keys;object=${o}`);
        expect(a).toMatchObject({
          sensitive: true,
          extractable: false,
          neverExtractable: true,
          valueReadable: false,
        });
      }
    } finally {
      await token.close();
    }

    // The server's operator key from the same URI signs what its verifier accepts.
    const op = await operatorKeyFromPkcs11(operator, { module: hsm.module });
    try {
      const msg = new TextEncoder().encode('approve');
      expect(op.verifier.verify(msg, await op.signer.sign(msg))).toBe(true);
    } finally {
      await op.close();
    }
  });
});

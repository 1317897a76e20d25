/**
 * `rotor factory set-firmware`: replaces the profile's initial firmware after the envelope passed the device's own
 * checks (author and operator signatures against the profile's anchors, integrated image, anti-rollback values not
 * above its sequence). The old profile is kept as profile.<n>.json; a batch provisioned afterwards boots the new
 * firmware while the devices provisioned before keep theirs. Refused envelopes change nothing.
 */
import 'reflect-metadata';
import { createHash, generateKeyPairSync } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as x509 from '@peculiar/x509';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { DeviceAgent, nodeFs } from '@rotor/device';
import { AGENT_ROOT, enclaveDevices } from '../src/factory-device.ts';
import { factoryCommand } from '../src/factory.ts';
import { run } from '../src/main.ts';

let dir = '';
const f = (): string => join(dir, 'factory');
const image = (tag: string): Uint8Array => {
  const b = new Uint8Array(3000).map((_, i) => (i * 13) & 0xff);
  b.set(new TextEncoder().encode(tag), 0);
  return b;
};

/** A SUIT envelope with the image integrated, signed by `author` and (unless null) co-signed by `operator`. */
async function envelope(
  name: string,
  sequence: number,
  author: string,
  operator: string | null,
): Promise<string> {
  writeFileSync(join(dir, `${name}.bin`), image(name));
  writeFileSync(
    join(dir, `${name}.yaml`),
    [
      'vendor: rotor.example',
      'class: gw-1',
      `sequence: ${String(sequence)}`,
      'components:',
      '  - id: firmware',
      `    image: ${name}.bin`,
      '',
    ].join('\n'),
  );
  const out = join(dir, `${name}.suit`);
  expect(await run(['manifest', 'create', join(dir, `${name}.yaml`), '--key', author, '-o', out])).toBe(0);
  if (operator !== null) expect(await run(['manifest', 'sign', out, '--key', operator])).toBe(0);
  return out;
}

const sha = (path: string): string => createHash('sha256').update(readFileSync(path)).digest('hex');
const profileJson = (): string => readFileSync(join(f(), 'profile.json'), 'utf8');

async function provision(batch: string): Promise<void> {
  expect(
    await factoryCommand.run([
      'provision',
      '--dir',
      f(),
      '--count',
      '1',
      '--batch',
      batch,
      '--data-dir',
      join(dir, 'data'),
      '--json',
    ]),
  ).toBe(0);
}

async function booted(batch: string): Promise<{ sequence: bigint; image: Uint8Array }> {
  const agent = new DeviceAgent({
    fs: nodeFs(join(f(), 'devices', batch, '000000', 'flash')),
    root: AGENT_ROOT,
  });
  const b = await agent.powerOn();
  const img = b.record.images[0]!;
  return {
    sequence: b.record.sequence,
    image: await agent.flash.readAll('a', img.component, img.size, img.chunkSize),
  };
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'rotor-factory-setfw-'));
  const alg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };
  const keys = await crypto.subtle.generateKey(alg, false, ['sign', 'verify']);
  const ca = await x509.X509CertificateGenerator.createSelfSigned(
    { name: 'CN=server ca', keys, signingAlgorithm: alg },
    crypto,
  );
  writeFileSync(join(dir, 'server-ca.pem'), ca.toString('pem'));
  writeFileSync(
    join(dir, 'stranger.pem'),
    generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey.export({
      type: 'pkcs8',
      format: 'pem',
    }),
  );
});

afterAll(() => {
  if (dir !== '') rmSync(dir, { recursive: true, force: true });
});

beforeEach(() => {
  vi.spyOn(process.stdout, 'write').mockImplementation(() => true);
  vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
});

afterEach(() => {
  vi.restoreAllMocks();
});

describe('rotor factory set-firmware', () => {
  it('later batches get the new firmware, earlier devices keep theirs, the old profile is kept', async () => {
    // A development factory: its author and operator keys are files the test can sign with.
    expect(
      await factoryCommand.run([
        'init',
        '--dir',
        f(),
        '--file-keys',
        '--server-ca',
        join(dir, 'server-ca.pem'),
        '--class',
        'gw-1',
      ]),
    ).toBe(0);
    const author = join(f(), 'author.key.pem');
    const operator = join(f(), 'operator.key.pem');
    const v5 = await envelope('v5', 5, author, operator);
    expect(
      await factoryCommand.run([
        'set-firmware',
        '--dir',
        f(),
        '--firmware',
        v5,
        '--anti-rollback',
        'firmware=5',
      ]),
    ).toBe(0);
    // The profile made by init (no firmware) was kept.
    expect(JSON.parse(readFileSync(join(f(), 'profile.1.json'), 'utf8'))).toMatchObject({ firmware: null });
    await provision('first');
    expect(await booted('first')).toEqual({ sequence: 5n, image: image('v5') });

    const v7 = await envelope('v7', 7, author, operator);
    const before = profileJson();
    expect(
      await factoryCommand.run([
        'set-firmware',
        '--dir',
        f(),
        '--firmware',
        v7,
        '--anti-rollback',
        'firmware=7',
        '--json',
      ]),
    ).toBe(0);
    expect(readFileSync(join(f(), 'profile.2.json'), 'utf8')).toBe(before);
    const now = JSON.parse(profileJson()) as {
      firmware: { sha256: string };
      antiRollback: object;
      trust: object;
    };
    expect(now.firmware.sha256).toBe(sha(v7));
    expect(now.antiRollback).toEqual({ firmware: 7 });
    // Everything else of the profile (anchors, trust documents) is as it was.
    expect(now.trust).toEqual((JSON.parse(before) as { trust: object }).trust);

    await provision('second');
    expect(await booted('second')).toEqual({ sequence: 7n, image: image('v7') });
    // The device provisioned before is untouched.
    expect(await booted('first')).toEqual({ sequence: 5n, image: image('v5') });
    const first = await enclaveDevices({ dir: join(f(), 'devices', 'first') }).bundle(0);
    expect(Buffer.from(first?.firmware?.envelopeBase64 ?? '', 'base64')).toEqual(readFileSync(v5));
    expect(first?.antiRollback).toEqual({ firmware: 5 });
  });

  it('refuses an envelope the devices would refuse, and changes nothing', async () => {
    const author = join(f(), 'author.key.pem');
    const operator = join(f(), 'operator.key.pem');
    const current = profileJson();
    const unchanged = (): void => {
      expect(profileJson()).toBe(current);
      expect(existsSync(join(f(), 'profile.3.json'))).toBe(false);
    };
    const setFw = (file: string, ...more: string[]): Promise<number> =>
      factoryCommand.run(['set-firmware', '--dir', f(), '--firmware', file, ...more]);

    // Author only (RFC 9019 §4: both parties required).
    await expect(setFw(await envelope('author-only', 8, author, null))).rejects.toMatchObject({
      code: 'SUIT_MISSING_PARTY',
    });
    unchanged();
    // Signed by a key that is not one of the profile's anchors: no author signature the device accepts.
    await expect(
      setFw(await envelope('stranger', 8, join(dir, 'stranger.pem'), operator)),
    ).rejects.toMatchObject({ code: 'SUIT_MISSING_PARTY' });
    unchanged();
    // Anti-rollback above the sequence (the device would not boot).
    await expect(
      setFw(await envelope('v8', 8, author, operator), '--anti-rollback', 'firmware=9'),
    ).rejects.toMatchObject({ code: 'CLI_INPUT' });
    unchanged();
    // The profile's own counters (firmware=7) above a lower sequence, without --anti-rollback.
    await expect(setFw(await envelope('v6', 6, author, operator))).rejects.toMatchObject({
      code: 'CLI_INPUT',
    });
    unchanged();
    // Not an envelope at all.
    writeFileSync(join(dir, 'junk.suit'), 'not cbor');
    await expect(setFw(join(dir, 'junk.suit'))).rejects.toMatchObject({ code: 'CLI_INPUT' });
    unchanged();
    // No --firmware.
    await expect(factoryCommand.run(['set-firmware', '--dir', f()])).rejects.toMatchObject({
      code: 'CLI_USAGE',
    });
    unchanged();
  });
});

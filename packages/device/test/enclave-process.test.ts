import { randomBytes, verify as cryptoVerify } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  coseKeyToPublicKeyObject,
  createSign1,
  decodeCoseKey,
  decodeSign1,
  verifierFromCoseKey,
  verifySign1,
  Alg,
} from '@rotor/cose';
import { verifyAttestationToken } from '@rotor/trust';
import { DeviceError, EnclaveClient, ROT_ALGS, type EnclaveEvent } from '../src/index.ts';

const dirs: string[] = [];
function stateDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'rotor-enclave-'));
  dirs.push(d);
  return d;
}
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

describe('rotation under concurrent load (seed 002 step 2: no downtime)', () => {
  it('thousands of Attest requests in flight across 12 rotations: zero failures, every token verifies against the chain', async () => {
    const events: EnclaveEvent[] = [];
    const c = await EnclaveClient.start({
      stateDir: stateDir(),
      timeoutMs: 60_000,
      onEvent: (e) => events.push(e),
    });
    try {
      await c.generateRoT();
      const nonce = randomBytes(16);
      // LANES closed-loop requesters keep ~LANES attestations in flight for as long as the 12 rotations take.
      const LANES = 1100;
      let rotating = true;
      const tokens: Uint8Array[] = [];
      let maxInFlight = 0;
      const lane = async (): Promise<void> => {
        while (rotating) {
          tokens.push(await c.attest(nonce));
          maxInFlight = Math.max(maxInFlight, c.stats!.sent - c.stats!.received);
        }
      };
      const rotator = async (): Promise<void> => {
        await new Promise((r) => setTimeout(r, 50));
        for (let r = 0; r < 12; r++) await c.rotateRoT();
        rotating = false;
      };
      await Promise.all([rotator(), ...Array.from({ length: LANES }, lane)]);
      expect(maxInFlight).toBeGreaterThan(1000);
      const chain = await c.getChain();
      expect(chain.length).toBe(13);
      const used = new Map<number, number>();
      for (const [i, t] of tokens.entries()) {
        const v = verifyAttestationToken(t, chain, { nonce, allowedAlgs: ROT_ALGS });
        used.set(v.key.index, (used.get(v.key.index) ?? 0) + 1);
        if (i % 50 === 0) {
          // Exactly one key: the header names one key, and its neighbours in the chain do not verify the signature.
          const msg = decodeSign1(t);
          for (const k of chain.keys.filter((k) => Math.abs(k.index - v.key.index) === 1)) {
            expect(() => {
              verifySign1(msg, k.verifier, { allowedAlgs: ROT_ALGS });
            }).toThrow();
          }
        }
      }
      expect(tokens.length).toBeGreaterThan(3000);
      // The load really spanned rotations: many different RoT keys signed tokens.
      expect(used.size).toBeGreaterThan(5);
      expect(c.stats!.malformed + c.stats!.unexpected + c.stats!.timeouts).toBe(0);
      expect(events.filter((e) => e.kind === 'exited')).toEqual([]);
    } finally {
      await c.close();
    }
  });
});

describe('a killed enclave is restarted with its keys intact', () => {
  it('SIGKILL under load: idempotent requests complete, keys, chain and identity survive', async () => {
    const events: EnclaveEvent[] = [];
    const c = await EnclaveClient.start({ stateDir: stateDir(), onEvent: (e) => events.push(e) });
    try {
      await c.generateRoT();
      await c.rotateRoT();
      const id = await c.generateKey('identity', 'ES256');
      const before = await c.getChain();
      const pid = c.pid;
      const nonce = randomBytes(16);
      const data = randomBytes(64);
      const work = [
        ...Array.from({ length: 300 }, () => c.attest(nonce)),
        ...Array.from({ length: 50 }, () => c.sign('identity', data)),
      ];
      c.kill('SIGKILL');
      const out = await Promise.all(work);
      expect(c.pid).not.toBe(pid);
      expect(events.some((e) => e.kind === 'exited' && e.signal === 'SIGKILL')).toBe(true);
      const after = await c.getChain();
      expect(after.records).toEqual(before.records);
      expect((await c.getPublicKey('identity')).publicKey).toEqual(id.publicKey);
      const pub = coseKeyToPublicKeyObject(decodeCoseKey(id.publicKey));
      for (const sig of out.slice(300)) {
        expect(cryptoVerify('sha256', data, { key: pub, dsaEncoding: 'ieee-p1363' }, sig)).toBe(true);
      }
      for (const t of out.slice(0, 300)) verifyAttestationToken(t, after, { nonce, allowedAlgs: ROT_ALGS });

      // A rotation cut short by a kill either happened or not; the chain stays consistent and the agent learns it.
      const rot = c.rotateRoT();
      setImmediate(() => {
        c.kill('SIGKILL');
      });
      try {
        await rot;
      } catch (e) {
        expect((e as DeviceError).code).toBe('ENCLAVE_CRASHED');
      }
      const again = await c.getChain();
      expect([before.length, before.length + 1]).toContain(again.length);
      const n2 = randomBytes(16);
      await c.verifyAttestation(await c.attest(n2), n2);
      expect((await c.health()).status).toBe('ok');
    } finally {
      await c.close();
    }
  });

  it('a hung enclave (SIGSTOP) is detected by the watchdog, killed and restarted', async () => {
    const events: EnclaveEvent[] = [];
    const c = await EnclaveClient.start({
      stateDir: stateDir(),
      hangTimeoutMs: 500,
      onEvent: (e) => events.push(e),
    });
    try {
      await c.generateRoT();
      const pid = c.pid;
      c.kill('SIGSTOP');
      await expect(
        c.request('Attest', { challenge: randomBytes(16) }, { timeoutMs: 500 }),
      ).rejects.toMatchObject({
        code: 'REQUEST_TIMEOUT',
      });
      // The watchdog's probe times out too; the enclave is killed and restarted with its keys.
      for (let i = 0; i < 50 && c.pid === pid; i++) await new Promise((r) => setTimeout(r, 100));
      expect(events.some((e) => e.kind === 'hung')).toBe(true);
      const n = randomBytes(16);
      await c.verifyAttestation(await c.attest(n), n);
      expect(c.pid).not.toBe(pid);
    } finally {
      await c.close();
    }
  });

  it('gives up with ENCLAVE_UNAVAILABLE when the enclave cannot start (its fuse is gone)', async () => {
    const dir = stateDir();
    const c = await EnclaveClient.start({ stateDir: dir });
    await c.generateRoT();
    await c.close();
    rmSync(join(dir, 'fuse'), { force: true });
    await expect(EnclaveClient.start({ stateDir: dir, maxRestarts: 1 })).rejects.toMatchObject({
      code: 'ENCLAVE_UNAVAILABLE',
    });
  });
});

describe('enclave keys behind the COSE interfaces', () => {
  it('a Signer for SUIT/COSE and a KeyAgreement, never exposing the key', async () => {
    const c = await EnclaveClient.start({ stateDir: stateDir() });
    try {
      const info = await c.generateKey('author', 'ES256');
      const signer = await c.signer('author');
      expect(signer.alg).toBe(Alg.ES256);
      const msg = await createSign1(new TextEncoder().encode('payload'), signer);
      const verifier = verifierFromCoseKey(decodeCoseKey(info.publicKey));
      verifySign1(decodeSign1(msg), verifier, { allowedAlgs: new Set([Alg.ES256]) });
      await c.generateKey('kek', 'ECDH-X25519');
      const ka = await c.keyAgreement('kek');
      expect(ka.curve).toBe('X25519');
      await expect(c.signer('kek')).rejects.toMatchObject({ code: 'KEY_USAGE' });
      await expect(ka.deriveSharedSecret(new Uint8Array(32))).rejects.toMatchObject({ code: 'BAD_PEER_KEY' });
    } finally {
      await c.close();
    }
  });
});

import { randomBytes, verify as cryptoVerify, type KeyObject } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  Alg,
  CborMap,
  coseKeyToPublicKeyObject,
  decodeCoseKey,
  generateAgreementKey,
  kdfContext,
  rawPublicKeyToKeyObject,
  wrapForEcdhEs,
  softwareKeyAgreement,
} from '@rotor/cose';
import { RotChain, verifyAttestationToken } from '@rotor/trust';
import { DeviceError, EnclaveCore, ROT_ALGS, SimulatedFs } from '../src/index.ts';

const fuse = randomBytes(32);
const nonce = (): Uint8Array => randomBytes(16);

async function expectCode(p: Promise<unknown> | (() => unknown), code: string): Promise<void> {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    expect(e).toBeInstanceOf(DeviceError);
    expect((e as DeviceError).code).toBe(code);
    return;
  }
  throw new Error(`expected ${code}`);
}

function verifyChain(core: EnclaveCore): RotChain {
  return RotChain.verify(core.chain!.records, { allowedAlgs: ROT_ALGS });
}

describe('EnclaveCore in-process', () => {
  it('generates, rotates, attests and derives session keys; state survives a reopen', async () => {
    const fs = new SimulatedFs();
    const core = await EnclaveCore.open({ fs, fuse });
    await expectCode(core.attest({ challenge: nonce() }), 'ROT_MISSING');
    const { record } = await core.generateRoT({ seed: randomBytes(32) });
    await expectCode(core.generateRoT({}), 'ROT_EXISTS');
    const anchor = RotChain.verify([record], { allowedAlgs: ROT_ALGS }).root.kid;
    for (let i = 0; i < 3; i++) await core.rotateRoT({});
    const chain = RotChain.verify(core.chain!.records, { allowedAlgs: ROT_ALGS, anchor });
    expect(chain.current.index).toBe(3);
    const n = nonce();
    const { token } = await core.attest({ challenge: n, claims: new CborMap([[-70100, 'fw-1.2.3']]) });
    const v = verifyAttestationToken(token, chain, { nonce: n, allowedAlgs: ROT_ALGS, requireCurrent: true });
    expect(v.claims.get(-70100)).toBe('fw-1.2.3');
    expect(v.ueid).toEqual(core.ueid);
    await expectCode(
      core.handle(
        'Attest',
        new CborMap([
          ['challenge', n],
          ['claims', new CborMap([[10, n]])],
        ]),
      ),
      'REQUEST_INVALID',
    );

    const s1 = core.deriveSessionKey({ challenge: n, context: new Uint8Array([1]) });
    const s2 = core.deriveSessionKey({ challenge: n, context: new Uint8Array([1]) });
    const s3 = core.deriveSessionKey({ challenge: n, context: new Uint8Array([2]) });
    expect(s1.key).toEqual(s2.key);
    expect(s1.key).not.toEqual(s3.key);
    expect(s1.index).toBe(3);
    await core.rotateRoT({});
    expect(core.deriveSessionKey({ challenge: n, context: new Uint8Array([1]) }).key).not.toEqual(s1.key);

    // Reopen from storage (same fuse): same chain, same ueid, same session keys.
    const core2 = await EnclaveCore.open({ fs, fuse });
    expect(core2.chain!.records).toEqual(core.chain!.records);
    expect(core2.ueid).toEqual(core.ueid);
    expect(core2.deriveSessionKey({ challenge: n, context: new Uint8Array([1]) })).toEqual(
      core.deriveSessionKey({ challenge: n, context: new Uint8Array([1]) }),
    );
    // Another device (another fuse) cannot unseal this state.
    await expectCode(EnclaveCore.open({ fs, fuse: randomBytes(32) }), 'SEAL_FAILED');
  });

  it('EdDSA RoT chains work the same way', async () => {
    const core = await EnclaveCore.open({ fs: new SimulatedFs(), fuse });
    await core.generateRoT({ alg: 'EdDSA' });
    await core.rotateRoT({});
    const n = nonce();
    const { token } = await core.attest({ challenge: n });
    const chain = verifyChain(core);
    expect(chain.current.alg).toBe(Alg.EdDSA);
    expect(verifyAttestationToken(token, chain, { nonce: n, allowedAlgs: ROT_ALGS }).key.index).toBe(1);
  });

  it('generates never-exported keys: Sign, KeyAgreement and Unwrap (ECDH-ES + A128KW) without leaking them', async () => {
    const fs = new SimulatedFs();
    const core = await EnclaveCore.open({ fs, fuse });
    const id = await core.generateKey({ keyId: 'identity', type: 'ES256' });
    await expectCode(core.generateKey({ keyId: 'identity', type: 'ES256' }), 'KEY_EXISTS');
    await expectCode(
      core.generateKey({ keyId: 'x', type: 'ES256', backend: 'pkcs11' }),
      'BACKEND_UNAVAILABLE',
    );
    const ed = await core.generateKey({ keyId: 'ed', type: 'EdDSA' });
    const kek = await core.generateKey({ keyId: 'fw-kek', type: 'ECDH-P256' });
    const x = await core.generateKey({ keyId: 'fw-x', type: 'ECDH-X25519' });
    const data = randomBytes(100);
    for (const k of [id, ed]) {
      const pub = coseKeyToPublicKeyObject(decodeCoseKey(k.publicKey));
      const { signature } = await core.sign({ keyId: k.keyId, data });
      const ok =
        k.type === 'ES256'
          ? cryptoVerify('sha256', data, { key: pub, dsaEncoding: 'ieee-p1363' }, signature)
          : cryptoVerify(null, data, pub, signature);
      expect(ok).toBe(true);
    }
    await expectCode(core.sign({ keyId: 'fw-kek', data }), 'KEY_USAGE');
    await expectCode(core.sign({ keyId: 'nope', data }), 'KEY_NOT_FOUND');
    await expectCode(core.keyAgreement({ keyId: 'identity', peer: new Uint8Array(65) }), 'KEY_USAGE');

    for (const k of [kek, x]) {
      const pub = coseKeyToPublicKeyObject(decodeCoseKey(k.publicKey));
      const peer = generateAgreementKey(k.type === 'ECDH-P256' ? 'P-256' : 'X25519');
      const peerRaw = rawPeer(peer.publicKey);
      const { secret } = await core.keyAgreement({ keyId: k.keyId, peer: peerRaw });
      expect(secret).toEqual(await softwareKeyAgreement(peer.privateKey).deriveSharedSecret(rawPeer(pub)));
      // The same content-key unwrap the SUIT firmware-encryption path does (RFC 9053 §6.3), inside the enclave.
      const cek = randomBytes(16);
      const r = wrapForEcdhEs(cek, pub, Alg.ECDH_ES_A128KW);
      const eph = ephemeralRaw(r.unprotected.get(-1) as Map<number, unknown>);
      const context = kdfContext(Alg.A128KW, 128, r.protectedBytes);
      const out = await core.unwrap({
        keyId: k.keyId,
        alg: Alg.ECDH_ES_A128KW,
        peer: eph,
        context,
        wrapped: r.ciphertext!,
      });
      expect(out.cek).toEqual(new Uint8Array(cek));
      const bad = new Uint8Array(r.ciphertext!);
      bad[0]! ^= 1;
      await expectCode(
        core.unwrap({ keyId: k.keyId, alg: Alg.ECDH_ES_A128KW, peer: eph, context, wrapped: bad }),
        'UNWRAP_FAILED',
      );
      await expectCode(
        core.unwrap({
          keyId: k.keyId,
          alg: Alg.ECDH_ES_A128KW,
          peer: eph,
          context: kdfContext(Alg.A256KW, 256, r.protectedBytes),
          wrapped: r.ciphertext!,
        }),
        'REQUEST_INVALID',
      );
    }
    // A point off the curve is refused.
    const offCurve = new Uint8Array(65);
    offCurve[0] = 4;
    offCurve[64] = 1;
    await expectCode(core.keyAgreement({ keyId: 'fw-kek', peer: offCurve }), 'BAD_PEER_KEY');
    // X25519 low-order point (RFC 7748 §6.1: all-zero shared secret refused).
    await expectCode(core.keyAgreement({ keyId: 'fw-x', peer: new Uint8Array(32) }), 'BAD_PEER_KEY');

    // Keys persist sealed and work after reopening.
    const core2 = await EnclaveCore.open({ fs, fuse });
    expect(core2.getPublicKey({ keyId: 'identity' }).publicKey).toEqual(id.publicKey);
    const { signature } = await core2.sign({ keyId: 'identity', data });
    expect(
      cryptoVerify(
        'sha256',
        data,
        { key: coseKeyToPublicKeyObject(decodeCoseKey(id.publicKey)), dsaEncoding: 'ieee-p1363' },
        signature,
      ),
    ).toBe(true);
    // The sealed key set does not show the keys in the clear (not even their public x coordinate).
    const sealedKeys = Buffer.from((await fs.read('enclave/keys'))!);
    for (const k of [id, ed, kek, x]) {
      const xCoord = decodeCoseKey(k.publicKey).x!;
      expect(sealedKeys.includes(Buffer.from(xCoord))).toBe(false);
    }
  });
});

function rawPeer(pub: KeyObject): Uint8Array {
  const jwk = pub.export({ format: 'jwk' });
  const x = Buffer.from(jwk.x!, 'base64url');
  if (jwk.kty === 'OKP') return new Uint8Array(x);
  return new Uint8Array(Buffer.concat([Buffer.from([4]), x, Buffer.from(jwk.y!, 'base64url')]));
}

function ephemeralRaw(m: Map<number, unknown>): Uint8Array {
  const x = m.get(-2) as Uint8Array;
  const y = m.get(-3) as Uint8Array | undefined;
  const raw = y === undefined ? x : new Uint8Array(Buffer.concat([Buffer.from([4]), x, y]));
  rawPublicKeyToKeyObject(y === undefined ? 'X25519' : 'P-256', raw);
  return raw;
}

describe('rotation under power cuts (issue 3: a crash at any write leaves the old or the new key set)', () => {
  it('recovers to a consistent state after a power cut at every file-system operation of a rotation', async () => {
    let cuts = 0;
    for (let cut = 0; ; cut++) {
      const fs = new SimulatedFs();
      const core = await EnclaveCore.open({ fs, fuse });
      await core.generateRoT({});
      await core.rotateRoT({});
      await core.generateKey({ keyId: 'identity', type: 'ES256' });
      const before = core.chain!.records;
      fs.cutPowerAt(fs.ops + cut);
      let newRecord: Uint8Array | undefined;
      try {
        newRecord = (await core.rotateRoT({})).record;
      } catch (e) {
        expect((e as DeviceError).code).toBe('POWER_CUT');
      }
      // Did the enclave switch to the new key before the cut? Then it must survive the cut.
      const switched = core.chain!.length === before.length + 1;
      fs.reboot();
      // A second power cut during recovery, at a varying point, then a clean boot.
      fs.cutPowerAt(cut % 7);
      await EnclaveCore.open({ fs, fuse }).catch(() => undefined);
      fs.reboot();
      const after = await EnclaveCore.open({ fs, fuse });
      const chain = verifyChain(after);
      expect([before.length, before.length + 1]).toContain(chain.length);
      expect(chain.records.slice(0, before.length)).toEqual(before);
      if (switched) expect(chain.length).toBe(before.length + 1);
      if (newRecord !== undefined) expect(chain.current.record).toEqual(newRecord);
      // Keys and chain agree: the current key attests, and the identity key survived.
      const n = nonce();
      const { token } = await after.attest({ challenge: n });
      verifyAttestationToken(token, chain, { nonce: n, allowedAlgs: ROT_ALGS, requireCurrent: true });
      expect(after.getPublicKey({ keyId: 'identity' }).keyId).toBe('identity');
      await after.rotateRoT({});
      if (newRecord !== undefined) break;
      cuts++;
    }
    expect(cuts).toBeGreaterThanOrEqual(10);
  });
});

describe('GenerateKey under power cuts and seed mixing', () => {
  it('a power cut at every operation of GenerateKey leaves the key set with or without the key, never broken', async () => {
    for (let cut = 0; ; cut++) {
      const fs = new SimulatedFs();
      const core = await EnclaveCore.open({ fs, fuse });
      await core.generateRoT({});
      await core.generateKey({ keyId: 'a', type: 'ES256' });
      fs.cutPowerAt(fs.ops + cut);
      let done = false;
      try {
        await core.generateKey({ keyId: 'b', type: 'ECDH-P256' });
        done = true;
      } catch (e) {
        expect((e as DeviceError).code).toBe('POWER_CUT');
      }
      fs.reboot();
      const after = await EnclaveCore.open({ fs, fuse });
      expect(after.getPublicKey({ keyId: 'a' }).type).toBe('ES256');
      const hasB = after.health().keys === 2;
      if (done) expect(hasB).toBe(true);
      if (hasB) expect(after.getPublicKey({ keyId: 'b' }).type).toBe('ECDH-P256');
      verifyChain(after);
      if (done) break;
    }
  });

  it('an external seed is mixed with the TRNG, never used alone (seed 002 step 1)', async () => {
    const seed = new Uint8Array(32).fill(9);
    const a = await EnclaveCore.open({ fs: new SimulatedFs(), fuse });
    const b = await EnclaveCore.open({ fs: new SimulatedFs(), fuse });
    await a.generateRoT({ seed });
    await b.generateRoT({ seed });
    expect(a.chain!.root.kid).not.toEqual(b.chain!.root.kid);
  });
});

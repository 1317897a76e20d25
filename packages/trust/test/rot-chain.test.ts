import { describe, expect, it } from 'vitest';
import {
  Alg,
  CborMap,
  coseKeyFromKeyObject,
  createSign1,
  encode,
  generateSigningKey,
  softwareSigner,
  type CoseKey,
  type Signer,
} from '@rotor/cose';
import {
  checkExtraClaims,
  coseKeyThumbprint,
  createAttestationToken,
  createRotRecord,
  RotChain,
  ROT_RECORD_CONTENT_TYPE,
  TrustError,
  verifyAttestationToken,
} from '../src/index.ts';

const ALGS = new Set<number>([Alg.ES256, Alg.EdDSA]);

interface Rot {
  pub: CoseKey;
  kid: Uint8Array;
  signer: Signer;
  alg: number;
}

function newRot(alg: number = Alg.ES256): Rot {
  const { privateKey } = generateSigningKey(alg);
  const pub = coseKeyFromKeyObject(privateKey);
  const kid = coseKeyThumbprint(pub);
  return { pub, kid, signer: softwareSigner(privateKey, alg, kid), alg };
}

async function buildChain(
  n: number,
  algs: number[] = [Alg.ES256],
): Promise<{ rots: Rot[]; records: Uint8Array[] }> {
  const rots: Rot[] = [];
  const records: Uint8Array[] = [];
  for (let i = 0; i < n; i++) {
    const r = newRot(algs[i % algs.length]);
    const prev = rots[i - 1];
    records.push(
      await createRotRecord(
        { index: i, publicKey: r.pub, alg: r.alg, previous: prev?.kid ?? null, time: 1_700_000_000 + i },
        prev?.signer ?? r.signer,
      ),
    );
    rots.push(r);
  }
  return { rots, records };
}

function code(f: () => unknown): string | undefined {
  try {
    f();
  } catch (e) {
    if (e instanceof TrustError) return e.code;
    throw e;
  }
  return undefined;
}

describe('RoT chain (seed 002 steps 1–2)', () => {
  it('verifies a chain of mixed ES256/EdDSA keys from a pinned first RoT, and extends it', async () => {
    const { rots, records } = await buildChain(6, [Alg.ES256, Alg.EdDSA]);
    const chain = RotChain.verify(records, { allowedAlgs: ALGS, anchor: rots[0]!.kid });
    expect(chain.length).toBe(6);
    expect(chain.current.kid).toEqual(rots[5]!.kid);
    expect(chain.byKid(rots[3]!.kid)?.index).toBe(3);
    const short = RotChain.verify(records.slice(0, 3), { allowedAlgs: ALGS });
    const longer = short.extend(records[3]!);
    expect(longer.current.index).toBe(3);
    expect(code(() => short.extend(records[4]!))).toBe('CHAIN_INDEX');
  });

  it('refuses every tampering', async () => {
    const { rots, records } = await buildChain(4);
    const opts = { allowedAlgs: ALGS };
    expect(code(() => RotChain.verify([], opts))).toBe('CHAIN_EMPTY');
    expect(code(() => RotChain.verify(records, { ...opts, anchor: rots[1]!.kid }))).toBe(
      'CHAIN_ANCHOR_MISMATCH',
    );
    expect(code(() => RotChain.verify([records[0]!, records[2]!], opts))).toBe('CHAIN_INDEX');
    expect(code(() => RotChain.verify(records.slice(1), opts))).toBe('CHAIN_INDEX');
    expect(code(() => RotChain.verify(records, { allowedAlgs: new Set([Alg.EdDSA]) }))).toBe(
      'CHAIN_ALG_NOT_ALLOWED',
    );
    expect(code(() => RotChain.verify(records, { ...opts, maxLength: 3 }))).toBe('CHAIN_TOO_LONG');
    // A record signed by a key that is not its predecessor (an attacker's key claiming the predecessor's kid).
    const evil = newRot();
    const forged = await createRotRecord(
      { index: 1, publicKey: evil.pub, alg: Alg.ES256, previous: rots[0]!.kid, time: 1_700_000_001 },
      { ...evil.signer, kid: rots[0]!.kid },
    );
    expect(code(() => RotChain.verify([records[0]!, forged], opts))).toBe('CHAIN_BAD_SIGNATURE');
    // previous naming another key than the one before it.
    const wrongPrev = await createRotRecord(
      { index: 1, publicKey: evil.pub, alg: Alg.ES256, previous: rots[1]!.kid, time: 1_700_000_002 },
      { ...rots[0]!.signer, kid: rots[1]!.kid },
    );
    expect(code(() => RotChain.verify([records[0]!, wrongPrev], opts))).toBe('CHAIN_PREVIOUS_KEY');
    // time going backwards
    const back = await createRotRecord(
      { index: 2, publicKey: evil.pub, alg: Alg.ES256, previous: rots[1]!.kid, time: 1_600_000_000 },
      rots[1]!.signer,
    );
    expect(code(() => RotChain.verify([records[0]!, records[1]!, back], opts))).toBe('CHAIN_TIME');
    // key reuse: rotating back to the first key
    const reuse = await createRotRecord(
      { index: 2, publicKey: rots[0]!.pub, alg: Alg.ES256, previous: rots[1]!.kid, time: 1_700_000_002 },
      rots[1]!.signer,
    );
    expect(code(() => RotChain.verify([records[0]!, records[1]!, reuse], opts))).toBe('CHAIN_KEY_REUSED');
    // flipped signature byte
    const flipped = new Uint8Array(records[1]!);
    flipped[flipped.length - 1]! ^= 1;
    expect(code(() => RotChain.verify([records[0]!, flipped], opts))).toBe('CHAIN_BAD_SIGNATURE');
    // truncated and garbage
    expect(code(() => RotChain.verify([records[0]!.subarray(0, 20)], opts))).toBe('CHAIN_MALFORMED');
    expect(code(() => RotChain.verify([new Uint8Array(5000)], opts))).toBe('CHAIN_MALFORMED');
  });

  it('refuses a record whose signer does not match, and a signature of the RoT over another content type', async () => {
    const { rots, records } = await buildChain(2);
    await expect(
      createRotRecord(
        { index: 1, publicKey: newRot().pub, alg: Alg.ES256, previous: rots[1]!.kid, time: 0 },
        rots[0]!.signer,
      ),
    ).rejects.toMatchObject({ code: 'CHAIN_KID_MISMATCH' });
    // Same payload shape signed by the right key, but without the chain-record content type (domain separation).
    const payload = encode(
      new Map<number, unknown>([
        [1, 1],
        [2, new Map<number, unknown>([[1, 2]])],
        [3, rots[0]!.kid],
        [4, 1],
      ]),
    );
    const other = await createSign1(payload, rots[0]!.signer, {
      protectedExtra: new Map<number, unknown>([
        [3, 'application/eat+cwt'],
        [4, rots[0]!.kid],
      ]),
    });
    expect(code(() => RotChain.verify([records[0]!, other], { allowedAlgs: ALGS }))).toBe('CHAIN_MALFORMED');
    expect(ROT_RECORD_CONTENT_TYPE).toMatch(/rot-record/);
  });
});

describe('attestation tokens (seed 002 step 3)', () => {
  it('verifies against the chain, with nonce, current-key and reserved-claim checks', async () => {
    const { rots, records } = await buildChain(3);
    const chain = RotChain.verify(records, { allowedAlgs: ALGS });
    const nonce = new Uint8Array(16).fill(7);
    const claims = new CborMap([[-70010, new Uint8Array(32)]]);
    const tok = await createAttestationToken(
      { nonce, ueid: new Uint8Array(17).fill(1), iat: 1_700_000_000, rotIndex: 2, claims },
      rots[2]!.signer,
    );
    const v = verifyAttestationToken(tok, chain, { nonce, allowedAlgs: ALGS, requireCurrent: true });
    expect(v.key.index).toBe(2);
    expect(v.claims.get(-70010)).toEqual(new Uint8Array(32));
    expect(
      code(() => verifyAttestationToken(tok, chain, { nonce: new Uint8Array(16), allowedAlgs: ALGS })),
    ).toBe('ATTEST_NONCE_MISMATCH');
    const old = await createAttestationToken(
      { nonce, ueid: new Uint8Array(17), iat: 1, rotIndex: 1 },
      rots[1]!.signer,
    );
    expect(verifyAttestationToken(old, chain, { nonce, allowedAlgs: ALGS }).key.index).toBe(1);
    expect(
      code(() => verifyAttestationToken(old, chain, { nonce, allowedAlgs: ALGS, requireCurrent: true })),
    ).toBe('ATTEST_NOT_CURRENT');
    const stranger = await createAttestationToken(
      { nonce, ueid: new Uint8Array(17), iat: 1, rotIndex: 0 },
      newRot().signer,
    );
    expect(code(() => verifyAttestationToken(stranger, chain, { nonce, allowedAlgs: ALGS }))).toBe(
      'ATTEST_UNKNOWN_KEY',
    );
    // A chain record is not an attestation token.
    expect(code(() => verifyAttestationToken(records[1]!, chain, { nonce, allowedAlgs: ALGS }))).toBe(
      'ATTEST_MALFORMED',
    );
    expect(
      code(() => {
        checkExtraClaims(new CborMap([[10, new Uint8Array(8)]]));
      }),
    ).toBe('ATTEST_CLAIM_RESERVED');
  });
});

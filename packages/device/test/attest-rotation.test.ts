/**
 * Issue 7: server-orchestrated RoT rotation converges at every crash point. The enclave runs in-process on a
 * SimulatedFs that cuts the power at each storage operation of the rotation; the verifier is a stand-in with the
 * server's rules (recorded chain must be a prefix of the reported one; superseded keys revoked; only the current
 * key's evidence accepted) built from @rotor/trust alone (device and server never import each other).
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { Alg } from '@rotor/cose';
import {
  bytesEqual,
  hex,
  parseEvidenceClaims,
  peekEvidence,
  RotChain,
  verifyAttestationToken,
} from '@rotor/trust';
import { Attester, type AttestingEnvironment, type VerifierTransport } from '../src/attest/attester.ts';
import { EnclaveCore } from '../src/enclave/core.ts';
import { SimulatedFs } from '../src/storage/sim.ts';

const ALGS: ReadonlySet<number> = new Set<number>([Alg.ES256, Alg.EdDSA]);
const fuse = new Uint8Array(randomBytes(32));
const image = new Uint8Array(32).fill(7);

class FakeVerifier implements VerifierTransport {
  chain: RotChain | undefined;
  revoked = new Set<string>();
  rotate = false;
  attest = false;
  nonces = new Set<string>();
  failNextReport = false;

  pending() {
    return Promise.resolve({ attest: this.attest, rotate: this.rotate, enrolled: this.chain !== undefined });
  }
  reportChain(_ueid: Uint8Array, records: readonly Uint8Array[]) {
    if (this.failNextReport) {
      this.failNextReport = false;
      return Promise.reject(new Error('network down'));
    }
    const c = RotChain.verify(records, { allowedAlgs: ALGS });
    if (this.chain !== undefined) {
      const known = this.chain.records;
      if (!known.every((r, i) => c.records[i] !== undefined && bytesEqual(r, c.records[i])))
        return Promise.reject(new Error('does not extend'));
      for (const k of c.keys.slice(known.length - 1, c.length - 1)) this.revoked.add(hex(k.kid));
      if (c.length > known.length) this.rotate = false;
    }
    this.chain = c;
    return Promise.resolve({ index: c.current.index });
  }
  nonce() {
    const n = new Uint8Array(randomBytes(32));
    this.nonces.add(hex(n));
    return Promise.resolve(n);
  }
  evidence(token: Uint8Array) {
    const { nonce } = peekEvidence(token);
    if (!this.nonces.delete(hex(nonce))) return Promise.resolve({ status: 'contraindicated' });
    const v = verifyAttestationToken(token, this.chain!, { nonce, allowedAlgs: ALGS });
    const current = v.key === this.chain!.current && !this.revoked.has(hex(v.key.kid));
    return Promise.resolve({ status: current ? 'affirming' : 'contraindicated' });
  }
}

function env(core: EnclaveCore): AttestingEnvironment {
  return {
    getChain: () => Promise.resolve(core.chain!),
    rotateRoT: async () => {
      await core.rotateRoT({});
      return core.chain!;
    },
    attest: async (challenge, claims) => (await core.attest({ challenge, claims })).token,
    ueid: () => Promise.resolve(core.ueid),
  };
}

const measure = () =>
  Promise.resolve({
    oemid: new Uint8Array([1, 2, 3]),
    hwmodel: new Uint8Array([1]),
    swversion: '1.0.0',
    oemboot: true,
    dbgstat: 3,
    uptime: 1,
    components: [{ type: 'fw', digest: image, version: '1.0.0', signer: image }],
  });

describe('server-orchestrated RoT rotation (seed 001 DRoT, seed 002 step 2)', () => {
  it('device and verifier agree on the current key after a power cut at every storage operation', async () => {
    let cuts = 0;
    for (let cut = 0; ; cut++) {
      const fs = new SimulatedFs();
      const core = await EnclaveCore.open({ fs, fuse });
      await core.generateRoT({});
      const v = new FakeVerifier();
      await new Attester(env(core), measure).contact(v);
      const first = v.chain!.current.kid;
      v.rotate = true;
      fs.cutPowerAt(fs.ops + cut);
      let completed = true;
      try {
        await new Attester(env(core), measure).contact(v);
      } catch {
        completed = false;
      }
      fs.reboot();
      const after = await EnclaveCore.open({ fs, fuse });
      const attester = new Attester(env(after), measure);
      // Next contact(s): the device reports its chain (and rotates again if the verifier still asks).
      await attester.contact(v);
      v.attest = true;
      const out = await attester.contact(v);
      expect(v.rotate).toBe(false);
      expect(bytesEqual(v.chain!.current.kid, after.chain!.current.kid)).toBe(true);
      expect(v.chain!.length).toBe(after.chain!.length);
      expect(bytesEqual(v.chain!.current.kid, first)).toBe(false);
      expect(v.revoked.has(hex(first))).toBe(true);
      expect(out.attested).toBe('affirming');
      // Only the new key's evidence is current.
      const n = await v.nonce();
      const tok = (await after.attest({ challenge: n })).token;
      const parsed = verifyAttestationToken(tok, v.chain!, {
        nonce: n,
        allowedAlgs: ALGS,
        requireCurrent: true,
      });
      expect(parsed.key.index).toBe(v.chain!.current.index);
      if (completed) break;
      cuts++;
    }
    expect(cuts).toBeGreaterThanOrEqual(5);
  });

  it('converges when the report after a committed rotation is lost', async () => {
    const core = await EnclaveCore.open({ fs: new SimulatedFs(), fuse });
    await core.generateRoT({});
    const v = new FakeVerifier();
    const a = new Attester(env(core), measure);
    await a.contact(v);
    v.rotate = true;
    v.failNextReport = false;
    // The enclave commits the rotation; the report is lost on the network.
    const lossy: VerifierTransport = {
      pending: () => v.pending(),
      reportChain: () => Promise.reject(new Error('lost')),
      nonce: () => v.nonce(),
      evidence: (t) => v.evidence(t),
    };
    await expect(a.contact(lossy)).rejects.toThrow('lost');
    expect(core.chain!.length).toBe(2);
    expect(v.chain!.length).toBe(1);
    await a.contact(v);
    expect(v.chain!.length).toBe(core.chain!.length);
    expect(v.rotate).toBe(false);
  });

  it('evidence built by the attester parses under the Rotor EAT profile', async () => {
    const core = await EnclaveCore.open({ fs: new SimulatedFs(), fuse });
    await core.generateRoT({});
    const n = new Uint8Array(randomBytes(32));
    const { evidenceClaimsMap } = await import('@rotor/trust');
    const tok = (await core.attest({ challenge: n, claims: evidenceClaimsMap(await measure()) })).token;
    const v = verifyAttestationToken(tok, core.chain!, { nonce: n, allowedAlgs: ALGS });
    expect(parseEvidenceClaims(v.claims)).toMatchObject({ swversion: '1.0.0', oemboot: true, dbgstat: 3 });
  });
});

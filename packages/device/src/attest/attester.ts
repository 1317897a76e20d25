/**
 * The device side of attestation and RoT orchestration (RFC 9334 §3.1: the agent is the attester, the enclave
 * the attesting environment; seed 001 "Attestation Request Handler" / "Provisioning Request Handler").
 *
 * One contact with the verifier:
 *  1. ask what is pending (attest, rotate);
 *  2. report the enclave's RoT chain on the first contact after every start and after every rotation — the chain
 *     in the enclave is the truth, so whatever point a rotation crashed at (before the enclave's commit: the old
 *     chain, after: the new one), the verifier converges on the enclave's current key (seed 002 step 2);
 *  3. rotate when asked (seed 001 DRoT steps 6–9: the enclave makes the new key, signs its record with the old
 *     one and answers with it), then report;
 *  4. attest when asked, right after enrolling, and when the agent asks (after an update): fresh nonce from the
 *     verifier → EAT signed by the current RoT (RFC 9711) → post.
 */
import type { CborMap } from '@rotor/cose';
import { bytesEqual, evidenceClaimsMap, type EvidenceClaims, type RotChain } from '@rotor/trust';

/** What the attester needs of the enclave (EnclaveClient, or EnclaveCore in-process). */
export interface AttestingEnvironment {
  getChain(): Promise<RotChain>;
  rotateRoT(): Promise<RotChain>;
  attest(nonce: Uint8Array, claims: CborMap): Promise<Uint8Array>;
  ueid(): Promise<Uint8Array>;
}

/** The verifier's device API (/d/v1/attestation/* over mutual TLS). */
export interface VerifierTransport {
  pending(): Promise<{ attest: boolean; rotate: boolean; enrolled: boolean }>;
  reportChain(ueid: Uint8Array, records: readonly Uint8Array[]): Promise<{ index: number }>;
  nonce(): Promise<Uint8Array>;
  evidence(token: Uint8Array): Promise<{ status: string }>;
}

export interface ContactOutcome {
  readonly reported: boolean;
  readonly rotated: boolean;
  readonly attested?: string;
}

export class Attester {
  readonly #env: AttestingEnvironment;
  readonly #measure: () => Promise<EvidenceClaims>;
  #reportedKid: Uint8Array | undefined;

  constructor(env: AttestingEnvironment, measure: () => Promise<EvidenceClaims>) {
    this.#env = env;
    this.#measure = measure;
  }

  async #report(t: VerifierTransport, chain: RotChain): Promise<void> {
    await t.reportChain(await this.#env.ueid(), chain.records);
    this.#reportedKid = chain.current.kid;
  }

  /** One contact; `forceAttest` for the agent's own triggers (after an update, before sensitive actions). */
  async contact(t: VerifierTransport, opts: { forceAttest?: boolean } = {}): Promise<ContactOutcome> {
    const p = await t.pending();
    let reported = false;
    let rotated = false;
    const chain = await this.#env.getChain();
    if (!p.enrolled || this.#reportedKid === undefined || !bytesEqual(this.#reportedKid, chain.current.kid)) {
      await this.#report(t, chain);
      reported = true;
    }
    if (p.rotate) {
      const next = await this.#env.rotateRoT();
      rotated = true;
      await this.#report(t, next);
      reported = true;
    }
    // A device that has just enrolled (provisioning: its first chain report) attests at once (issue 7 "after
    // provisioning"), as after an update (forceAttest) or when the verifier asks.
    if (p.attest || !p.enrolled || opts.forceAttest === true) {
      const nonce = await t.nonce();
      const token = await this.#env.attest(nonce, evidenceClaimsMap(await this.#measure()));
      const r = await t.evidence(token);
      return { reported, rotated, attested: r.status };
    }
    return { reported, rotated };
  }
}

/**
 * Key interfaces. Private and secret keys stay behind these interfaces (software, PKCS#11, enclave backends);
 * nothing in Rotor passes private key bytes around. CONTRACT shared by COSE, SUIT and the key backends.
 */

/** Produces signatures (COSE_Sign1 / COSE_Sign signers). `sign` receives the ToBeSigned bytes. */
export interface Signer {
  /** COSE algorithm id, e.g. -7 ES256, -9 ESP256, -8 EdDSA, -19 Ed25519. */
  readonly alg: number;
  /** Key identifier placed in the unprotected header (COSE kid), if any. */
  readonly kid: Uint8Array | undefined;
  /** Signature in COSE form (ECDSA: raw r‖s, RFC 9053 §2.1). */
  sign(toBeSigned: Uint8Array): Promise<Uint8Array>;
}

/** Verifies signatures with a public key. Synchronous: public-key operations always run in software. */
export interface Verifier {
  readonly alg: number;
  readonly kid: Uint8Array | undefined;
  verify(toBeSigned: Uint8Array, signature: Uint8Array): boolean;
}

/** A symmetric MAC key (COSE_Mac0), e.g. HMAC 256/256 (alg 5). May live in an HSM, hence async. */
export interface MacKey {
  readonly alg: number;
  readonly kid: Uint8Array | undefined;
  /** Computes the full tag over ToBeMaced. */
  mac(toBeMaced: Uint8Array): Promise<Uint8Array>;
}

/** A key-encryption key for AES Key Wrap (A128KW -3, A192KW -4, A256KW -5; RFC 3394). */
export interface KeyUnwrapper {
  readonly alg: number;
  readonly kid: Uint8Array | undefined;
  /** Unwraps a content key; throws CoseError COSE_DECRYPT_FAILED on an integrity-check failure. */
  unwrap(wrapped: Uint8Array): Promise<Uint8Array>;
}

/** A static private key for ECDH (ECDH-ES+A128KW -29, +A192KW -30, +A256KW -31; RFC 9053 §6.3). */
export interface KeyAgreement {
  /** 'P-256' (EC2 crv 1) or 'X25519' (OKP crv 4). */
  readonly curve: 'P-256' | 'X25519';
  readonly kid: Uint8Array | undefined;
  /**
   * ECDH with the peer's (ephemeral) public key given as uncompressed SEC1 (P-256) or raw 32 bytes (X25519);
   * returns the shared secret Z. The caller runs HKDF and key unwrap.
   */
  deriveSharedSecret(peerPublicKey: Uint8Array): Promise<Uint8Array>;
}

/**
 * EnclaveClient: the agent's side (seed 002 "RTP firmware: IPQ client"). It runs the enclave as a child process
 * (`process.execPath enclave/main.ts`), talks to it over the queue on a dedicated socket pair (fd 3), validates
 * every response against the protocol schemas, and restarts the enclave if it dies: requests that are safe to
 * repeat are sent again to the new process, the others fail with ENCLAVE_CRASHED (their outcome is unknown).
 *
 * It verifies what the enclave says about its root of trust: the first RoT record (seed 002 step 1, "RTP verifies
 * the signature and stores the RoT public key") is pinned as the anchor, and every rotation record must extend
 * the known chain (step 2, "RTP verifies the signature and updates its stored RoT public key").
 *
 * Keys are reached through the COSE key interfaces (`signer`, `keyAgreement`), so SUIT and attestation code use
 * enclave keys without knowing where they live.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { Duplex } from 'node:stream';
import { type CborMap, type KeyAgreement, type Signer } from '@rotor/cose';
import { bytesEqual, RotChain, verifyAttestationToken, type VerifiedAttestation } from '@rotor/trust';
import { DeviceError, isDeviceError } from '../errors.ts';
import { QueueClient } from '../ipq/client.ts';
import { ROT_ALGS } from './core.ts';
import { KEY_TYPE_INFO, type BackendName, type KeyType } from './keys.ts';
import {
  decodeBody,
  encodeBody,
  IDEMPOTENT,
  PROTOCOL,
  type Req,
  type RequestType,
  type Res,
} from './protocol.ts';

const MAIN = fileURLToPath(new URL('./main.ts', import.meta.url));

export interface EnclaveClientOptions {
  /** The enclave's state directory (its fuse and sealed store). Only the enclave process reads it. */
  readonly stateDir: string;
  /** A PKCS#11 token for the enclave (the PIN is read by the enclave from `pinFile`). */
  readonly pkcs11?: { readonly module: string; readonly tokenLabel: string; readonly pinFile: string };
  /** Extra environment for the enclave process (e.g. SOFTHSM2_CONF). */
  readonly env?: Readonly<Record<string, string>>;
  /** Default deadline per request (default 10 s). */
  readonly timeoutMs?: number;
  readonly maxInFlight?: number;
  readonly maxFrame?: number;
  /** Restarts allowed within `restartWindowMs` before the client gives up (default 5 within 60 s). */
  readonly maxRestarts?: number;
  readonly restartWindowMs?: number;
  /** The pinned first RoT (its RFC 9679 thumbprint), if the agent stored it earlier. */
  readonly anchor?: Uint8Array;
  /**
   * After a request times out, a Health probe with this deadline checks the enclave; if it does not answer either,
   * the enclave is taken for hung and killed, and so restarted (default 5 s).
   */
  readonly hangTimeoutMs?: number;
  /** Lifecycle and protocol events (restarts, unexpected frames). */
  readonly onEvent?: (e: EnclaveEvent) => void;
}

export type EnclaveEvent =
  | { readonly kind: 'started'; readonly pid: number }
  | {
      readonly kind: 'exited';
      readonly pid: number;
      readonly code: number | null;
      readonly signal: string | null;
    }
  | { readonly kind: 'gave-up'; readonly restarts: number }
  | { readonly kind: 'hung'; readonly pid: number }
  | { readonly kind: 'protocol-error'; readonly error: DeviceError };

export interface PublicKeyInfoRes {
  readonly keyId: string;
  readonly type: KeyType;
  readonly backend: BackendName;
  readonly publicKey: Uint8Array;
  readonly kid: Uint8Array;
}

export class EnclaveClient {
  readonly #opts: EnclaveClientOptions;
  #proc: ChildProcess | undefined;
  #queue: QueueClient | undefined;
  #ready: Promise<void>;
  #closed = false;
  #restarts: number[] = [];
  #stderrTail = '';
  #chain: RotChain | undefined;
  #anchor: Uint8Array | undefined;
  #rotLock: Promise<unknown> = Promise.resolve();
  #probing = false;

  private constructor(opts: EnclaveClientOptions) {
    this.#opts = opts;
    this.#anchor = opts.anchor;
    this.#ready = this.#spawn();
    this.#ready.catch(() => undefined);
  }

  /** Starts the enclave process and waits until it answers. */
  static async start(opts: EnclaveClientOptions): Promise<EnclaveClient> {
    const c = new EnclaveClient(opts);
    try {
      await c.#ready;
    } catch (e) {
      await c.close();
      throw e;
    }
    return c;
  }

  /** The enclave's process id (changes after a restart). */
  get pid(): number | undefined {
    return this.#proc?.pid;
  }

  /** The pinned first RoT, once known. */
  get anchor(): Uint8Array | undefined {
    return this.#anchor;
  }

  /** The last verified chain. */
  get chain(): RotChain | undefined {
    return this.#chain;
  }

  /** Queue statistics of the current enclave connection. */
  get stats(): QueueClient['stats'] | undefined {
    return this.#queue?.stats;
  }

  #spawn(): Promise<void> {
    const o = this.#opts;
    const args = [MAIN, '--state', o.stateDir];
    if (o.pkcs11 !== undefined) {
      args.push('--pkcs11-module', o.pkcs11.module, '--pkcs11-token', o.pkcs11.tokenLabel);
      args.push('--pkcs11-pin-file', o.pkcs11.pinFile);
    }
    if (o.maxFrame !== undefined) args.push('--max-frame', String(o.maxFrame));
    const proc = spawn(process.execPath, args, {
      stdio: ['ignore', 'inherit', 'pipe', 'pipe'],
      env: { ...process.env, ...o.env },
    });
    this.#proc = proc;
    proc.stderr?.on('data', (d: Buffer) => {
      process.stderr.write(d);
      this.#stderrTail = (this.#stderrTail + d.toString('utf8')).slice(-2000);
    });
    const sock = proc.stdio[3] as Duplex;
    sock.on('error', () => undefined);
    const queue = new QueueClient(sock, {
      ...(o.maxFrame === undefined ? {} : { maxFrame: o.maxFrame }),
      ...(o.maxInFlight === undefined ? {} : { maxInFlight: o.maxInFlight }),
      ...(o.timeoutMs === undefined ? {} : { timeoutMs: o.timeoutMs }),
      onProtocolError: (error) => o.onEvent?.({ kind: 'protocol-error', error }),
    });
    this.#queue = queue;
    proc.on('exit', (code, signal) => {
      this.#onExit(proc, queue, code, signal);
    });
    return queue.request('Health', new Map(), 30_000).then(
      (body) => {
        decodeBody(PROTOCOL.Health.res, body, 'FRAME_MALFORMED');
        if (proc.pid !== undefined) o.onEvent?.({ kind: 'started', pid: proc.pid });
      },
      (e: unknown) => {
        const tail = this.#stderrTail.trim().split('\n').pop() ?? '';
        throw new DeviceError(
          'ENCLAVE_UNAVAILABLE',
          `enclave did not start${tail === '' ? '' : `: ${tail}`}`,
          {
            cause: e,
          },
        );
      },
    );
  }

  #onExit(proc: ChildProcess, queue: QueueClient, code: number | null, signal: string | null): void {
    const pid = proc.pid ?? 0;
    this.#opts.onEvent?.({ kind: 'exited', pid, code, signal });
    if (this.#proc !== proc) return;
    if (this.#closed) {
      queue.close(new DeviceError('CLOSED', 'the enclave client is closed'));
      return;
    }
    const now = Date.now();
    const window = this.#opts.restartWindowMs ?? 60_000;
    this.#restarts = this.#restarts.filter((t) => now - t < window);
    this.#restarts.push(now);
    if (this.#restarts.length > (this.#opts.maxRestarts ?? 5)) {
      this.#opts.onEvent?.({ kind: 'gave-up', restarts: this.#restarts.length });
      this.#ready = Promise.reject(
        new DeviceError('ENCLAVE_UNAVAILABLE', 'the enclave keeps dying; gave up'),
      );
      this.#ready.catch(() => undefined);
    } else {
      // Replace the ready promise before failing the pending requests, so their retries wait for the new process.
      this.#ready = this.#spawn();
      this.#ready.catch(() => undefined);
    }
    queue.close(new DeviceError('ENCLAVE_CRASHED', `the enclave exited (${signal ?? String(code)})`));
  }

  /**
   * Sends one request and validates the response body. Idempotent requests survive an enclave crash (they are sent
   * again to the restarted enclave); the others fail with ENCLAVE_CRASHED.
   */
  async request<T extends RequestType>(
    type: T,
    body: Req<T>,
    opts: { timeoutMs?: number } = {},
  ): Promise<Res<T>> {
    for (let attempt = 0; ; attempt++) {
      if (this.#closed) throw new DeviceError('CLOSED', 'the enclave client is closed');
      await this.#ready;
      const q = this.#queue!;
      try {
        const raw = await q.request(type, encodeBody(body), opts.timeoutMs);
        return decodeBody(PROTOCOL[type].res, raw, 'FRAME_MALFORMED') as Res<T>;
      } catch (e) {
        if (isDeviceError(e) && e.code === 'ENCLAVE_CRASHED' && IDEMPOTENT.has(type) && attempt < 3) continue;
        if (isDeviceError(e) && e.code === 'REQUEST_TIMEOUT') this.#probe(q);
        throw e;
      }
    }
  }

  /** Watchdog: a request timed out; if the enclave does not answer a Health probe either, kill it (it restarts). */
  #probe(q: QueueClient): void {
    if (this.#probing || this.#closed || this.#queue !== q) return;
    this.#probing = true;
    const proc = this.#proc;
    q.request('Health', new Map(), this.#opts.hangTimeoutMs ?? 5000).then(
      () => {
        this.#probing = false;
      },
      (e: unknown) => {
        this.#probing = false;
        if (isDeviceError(e) && e.code === 'REQUEST_TIMEOUT' && this.#proc === proc && proc !== undefined) {
          this.#opts.onEvent?.({ kind: 'hung', pid: proc.pid ?? 0 });
          proc.kill('SIGKILL');
        }
      },
    );
  }

  // --- Root of trust -------------------------------------------------------------------------------------

  /** GenerateRoT (seed 002 step 1); verifies the self-signed record and pins it as the anchor. */
  async generateRoT(opts: { seed?: Uint8Array; alg?: 'ES256' | 'EdDSA' } = {}): Promise<RotChain> {
    const { record } = await this.request('GenerateRoT', opts);
    const chain = RotChain.verify([record], {
      allowedAlgs: ROT_ALGS,
      ...(this.#anchor ? { anchor: this.#anchor } : {}),
    });
    this.#anchor ??= chain.root.kid;
    this.#chain = chain;
    return chain;
  }

  /** RotateRoT (seed 002 step 2); the new record must extend the verified chain. Returns the new chain. */
  rotateRoT(opts: { seed?: Uint8Array } = {}): Promise<RotChain> {
    const run = this.#rotLock.then(async () => {
      const known = this.#chain ?? (await this.getChain());
      const { record } = await this.request('RotateRoT', opts);
      let chain: RotChain;
      try {
        chain = known.extend(record);
      } catch {
        // Someone else rotated in between (another agent component): re-read and check the record is in it.
        chain = await this.getChain();
        if (!chain.keys.some((k) => bytesEqual(k.record, record))) {
          throw new DeviceError('FRAME_UNEXPECTED', 'rotation record is not part of the enclave chain');
        }
      }
      this.#chain = chain;
      return chain;
    });
    this.#rotLock = run.catch(() => undefined);
    return run;
  }

  /** GetRoT: the whole chain from the first RoT, verified against the pinned anchor (pinned now if none). */
  async getChain(): Promise<RotChain> {
    const records: Uint8Array[] = [];
    for (;;) {
      const page = await this.request('GetRoT', { from: records.length });
      records.push(...page.records);
      if (records.length >= page.total || page.records.length === 0) break;
    }
    const chain = RotChain.verify(records, {
      allowedAlgs: ROT_ALGS,
      ...(this.#anchor ? { anchor: this.#anchor } : {}),
    });
    this.#anchor ??= chain.root.kid;
    this.#chain = chain;
    return chain;
  }

  /** Attest(challenge): an EAT signed by the current RoT (seed 002 step 3). */
  async attest(challenge: Uint8Array, claims?: CborMap): Promise<Uint8Array> {
    return (await this.request('Attest', { challenge, ...(claims ? { claims } : {}) })).token;
  }

  /** Verifies a token from `attest` against the chain (re-reading the chain once if the key is newer). */
  async verifyAttestation(token: Uint8Array, challenge: Uint8Array): Promise<VerifiedAttestation> {
    const chain = this.#chain ?? (await this.getChain());
    try {
      return verifyAttestationToken(token, chain, { nonce: challenge, allowedAlgs: ROT_ALGS });
    } catch (e) {
      if (e instanceof Error && 'code' in e && e.code === 'ATTEST_UNKNOWN_KEY') {
        return verifyAttestationToken(token, await this.getChain(), {
          nonce: challenge,
          allowedAlgs: ROT_ALGS,
        });
      }
      throw e;
    }
  }

  deriveSessionKey(
    challenge: Uint8Array,
    context: Uint8Array,
    length?: number,
  ): Promise<Res<'DeriveSessionKey'>> {
    return this.request('DeriveSessionKey', {
      challenge,
      context,
      ...(length === undefined ? {} : { length }),
    });
  }

  // --- Other keys ----------------------------------------------------------------------------------------

  generateKey(keyId: string, type: KeyType, backend?: BackendName): Promise<PublicKeyInfoRes> {
    return this.request('GenerateKey', { keyId, type, ...(backend ? { backend } : {}) });
  }

  getPublicKey(keyId: string): Promise<PublicKeyInfoRes> {
    return this.request('GetPublicKey', { keyId });
  }

  async sign(keyId: string, data: Uint8Array): Promise<Uint8Array> {
    return (await this.request('Sign', { keyId, data })).signature;
  }

  /** A COSE Signer (cose/keys.ts) backed by an enclave key: `sign` sends the ToBeSigned bytes over the queue. */
  async signer(keyId: string): Promise<Signer> {
    const info = await this.getPublicKey(keyId);
    const alg = KEY_TYPE_INFO[info.type].alg;
    if (alg === undefined) throw new DeviceError('KEY_USAGE', `${keyId} is not a signing key`);
    return { alg, kid: info.kid, sign: (tbs) => this.sign(keyId, tbs) };
  }

  /** A COSE KeyAgreement (cose/keys.ts) backed by an enclave ECDH key. */
  async keyAgreement(keyId: string): Promise<KeyAgreement> {
    const info = await this.getPublicKey(keyId);
    const t = KEY_TYPE_INFO[info.type];
    if (t.use !== 'agree' || t.curve === 'Ed25519')
      throw new DeviceError('KEY_USAGE', `${keyId} is not an ECDH key`);
    const curve = t.curve;
    return {
      curve,
      kid: info.kid,
      deriveSharedSecret: async (peer) => (await this.request('KeyAgreement', { keyId, peer })).secret,
    };
  }

  /** ECDH-ES + AES-KW content-key unwrap inside the enclave (RFC 9053 §6.3). */
  async unwrap(req: Req<'Unwrap'>): Promise<Uint8Array> {
    return (await this.request('Unwrap', req)).cek;
  }

  /** Seals a small secret to this device's enclave (bound to `label`). */
  async sealData(label: string, data: Uint8Array): Promise<Uint8Array> {
    return (await this.request('SealData', { label, data })).sealed;
  }

  /** Unseals what sealData sealed here under the same label (SEAL_FAILED otherwise). */
  async unsealData(label: string, sealed: Uint8Array): Promise<Uint8Array> {
    return (await this.request('UnsealData', { label, sealed })).data;
  }

  health(): Promise<Res<'Health'>> {
    return this.request('Health', {});
  }

  /** Kills the enclave process (tests and fault drills): the client restarts it. */
  kill(signal: NodeJS.Signals = 'SIGKILL'): void {
    this.#proc?.kill(signal);
  }

  /** Stops the enclave (closing its queue ends it) and fails anything still pending. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const proc = this.#proc;
    this.#queue?.close(new DeviceError('CLOSED', 'the enclave client is closed'));
    if (proc === undefined || proc.exitCode !== null || proc.signalCode !== null) return;
    await new Promise<void>((resolve) => {
      const t = setTimeout(() => {
        proc.kill('SIGKILL');
      }, 5000);
      proc.once('exit', () => {
        clearTimeout(t);
        resolve();
      });
      (proc.stdio[3] as Duplex | null)?.end();
    });
  }
}

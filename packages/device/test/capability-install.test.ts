/**
 * Capability-module installation: every refusal with its typed reason (unauthorized, revoked, tampered,
 * incompatible, over-limit, undeclared imports, rollback), dependency checks, unload, revert from the archive and
 * capability-manifest updates.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Alg, wrapForEcdhEs } from '@rotor/cose';
import {
  buildModuleEnvelope,
  createTrustRevocationList,
  encryptModule,
  MODULE_URI,
  RevokedKind,
  sha256,
} from '@rotor/trust';
import { DeviceError, SandboxPool, type CapabilityManager } from '../src/index.ts';
import {
  bytes,
  capabilityManifest,
  codecV1,
  harness,
  keys,
  metadata,
  moduleEnvelope,
  NOW,
  revocationList,
  VENDOR,
  type Harness,
} from './capability-fixture.ts';
import { buildModule } from './capability-modules/build.ts';

const pool = new SandboxPool({ spare: 1 });
afterAll(() => pool.close());

let v1: Uint8Array;
let v2: Uint8Array;
beforeAll(async () => {
  v1 = await buildModule('codec-v1');
  v2 = await buildModule('codec-v2');
});

const LOG = [{ module: 'rotor', name: 'log' }];

async function refusal(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    if (e instanceof DeviceError) return e.code;
    throw e;
  }
  return 'accepted';
}

async function fresh(): Promise<{ h: Harness; m: CapabilityManager }> {
  const h = await harness(pool);
  return { h, m: await h.open() };
}

describe('refusals', () => {
  it('refuses unauthorized, tampered, incompatible and over-limit modules with typed reasons', async () => {
    const { m } = await fresh();
    const k = keys();
    const md = metadata('codec', [1, 0, 0]);
    const cases: [string, () => Promise<unknown>][] = [];
    const add = (reason: string, p: () => Promise<unknown>): void => {
      cases.push([reason, p]);
    };
    // Signed by a key that is not in the capability manifest (MF §8.3).
    add('CAP_SIGNATURE', () =>
      moduleEnvelope(v1, md, 1, { signer: k.stranger.signer }).then((e) => m.install(e.envelope)),
    );
    // Signed by a listed key that may only sign 'filter' (MF §9).
    add('CAP_KEY_NOT_AUTHORIZED', () =>
      moduleEnvelope(v1, md, 1, { signer: k.filterKey.signer }).then((e) => m.install(e.envelope)),
    );
    // A capability the capability manifest does not list (seed 000 §1).
    add('CAP_NOT_AUTHORIZED', () =>
      moduleEnvelope(v1, metadata('camera', [1, 0, 0]), 1).then((e) => m.install(e.envelope)),
    );
    // Encrypted for another device (ENC §4).
    add('CAP_DECRYPT', () =>
      moduleEnvelope(v1, md, 1, { recipient: k.otherDevice.publicKey }).then((e) => m.install(e.envelope)),
    );
    // Incompatible device class / firmware (seed 000 step 3).
    add('CAP_INCOMPATIBLE', () =>
      moduleEnvelope(v1, metadata('codec', [1, 0, 0], { deviceClasses: ['other-class'] }), 1).then((e) =>
        m.install(e.envelope),
      ),
    );
    add('CAP_INCOMPATIBLE', () =>
      moduleEnvelope(v1, metadata('codec', [1, 0, 0], { firmware: { min: [3, 0, 0] } }), 1).then((e) =>
        m.install(e.envelope),
      ),
    );
    // Limits above the device policy.
    add('CAP_OVER_LIMIT', () =>
      moduleEnvelope(
        v1,
        metadata('codec', [1, 0, 0], { limits: { memoryPages: 4, callMs: 60_000, ioBytes: 16 } }),
        1,
      ).then((e) => m.install(e.envelope)),
    );
    // The binary's memory maximum (2 pages) above the declared limit (1 page).
    add('CAP_OVER_LIMIT', () =>
      moduleEnvelope(
        v1,
        metadata('codec', [1, 0, 0], { limits: { memoryPages: 1, callMs: 100, ioBytes: 16384 } }),
        1,
      ).then((e) => m.install(e.envelope)),
    );
    // A memory without a maximum.
    add('CAP_OVER_LIMIT', () =>
      buildModule('unbounded')
        .then((w) => moduleEnvelope(w, md, 1))
        .then((e) => m.install(e.envelope)),
    );
    // Imports a host function its metadata does not declare.
    add('CAP_UNDECLARED_IMPORT', () =>
      buildModule('undeclared', { IMPORT_MODULE: 'rotor', IMPORT_NAME: 'random_u32' })
        .then((w) => moduleEnvelope(w, md, 1))
        .then((e) => m.install(e.envelope)),
    );
    // ... or one the device does not have at all (no WASI, no filesystem).
    add('CAP_UNDECLARED_IMPORT', () =>
      buildModule('undeclared', { IMPORT_MODULE: 'wasi_snapshot_preview1', IMPORT_NAME: 'fd_write' })
        .then((w) => moduleEnvelope(w, md, 1))
        .then((e) => m.install(e.envelope)),
    );
    // Metadata declaring a host function the device does not offer.
    add('CAP_PERMISSION', () =>
      moduleEnvelope(
        v1,
        metadata('codec', [1, 0, 0], { imports: [{ module: 'rotor', name: 'net_send' }] }),
        1,
      ).then((e) => m.install(e.envelope)),
    );
    // Declared imports but a binary with the wrong type for it: v2 imports log(i32,i32), fine; an undeclared binary
    // importing random_u32 typed ()->i32 is correct; here log is declared but the binary imports random_u32.
    add('CAP_UNDECLARED_IMPORT', () =>
      buildModule('undeclared', { IMPORT_MODULE: 'rotor', IMPORT_NAME: 'random_u32' })
        .then((w) => moduleEnvelope(w, metadata('codec', [1, 0, 0], { imports: LOG }), 1))
        .then((e) => m.install(e.envelope)),
    );
    // Not WebAssembly at all (but correctly signed and encrypted).
    add('CAP_ABI', () =>
      moduleEnvelope(new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8, 9]), md, 1).then((e) => m.install(e.envelope)),
    );
    // A self-test vector the module does not satisfy: the health check fails.
    add('CAP_HEALTH', () =>
      moduleEnvelope(
        v1,
        metadata('codec', [1, 0, 0], { selfTest: { input: bytes(1), output: bytes(9) } }),
        1,
      ).then((e) => m.install(e.envelope)),
    );
    // A start function that never returns: instantiation is bounded by the load time limit.
    add('CAP_HEALTH', () =>
      buildModule('startloop')
        .then((w) => moduleEnvelope(w, md, 1))
        .then((e) => m.install(e.envelope)),
    );
    // Too large.
    add('CAP_TOO_LARGE', () => m.install(new Uint8Array(5 * 1024 * 1024)));
    for (const [reason, p] of cases) expect(await refusal(p()), reason).toBe(reason);
    expect(m.status()).toEqual([]);
    await m.close();
  });

  it('refuses tampering: a flipped ciphertext byte, a flipped manifest byte, a swapped detached payload', async () => {
    const { m } = await fresh();
    const md = metadata('codec', [1, 0, 0]);
    const e = await moduleEnvelope(v1, md, 1);
    // A byte of the integrated ciphertext (AEAD, RFC 9052 §5.3).
    const t1 = e.envelope.slice();
    const at = Buffer.from(t1).indexOf(Buffer.from(e.ciphertext.subarray(0, 32))) + 100;
    t1[at] = t1[at]! ^ 0x01;
    expect(await refusal(m.install(t1))).toBe('CAP_DECRYPT');
    // A byte of the signed manifest (the class name text): the SUIT digest no longer matches (MF §8.3).
    const t2 = e.envelope.slice();
    const i = Buffer.from(t2).indexOf(Buffer.from('rotor-capability', 'utf8'));
    const j = i >= 0 ? i : 60;
    t2[j] = t2[j]! ^ 0x01;
    expect(['CAP_SIGNATURE', 'CAP_ENVELOPE_INVALID']).toContain(await refusal(m.install(t2)));
    // A detached ciphertext of another module under the announced URI: decrypts to nothing valid.
    const k = keys();
    const enc = encryptModule(v1, Alg.A128GCM);
    const env = await buildModuleEnvelope({
      vendorDomain: VENDOR,
      metadata: md,
      wasm: v1,
      encrypted: enc,
      recipients: [wrapForEcdhEs(enc.cek, k.device.publicKey, Alg.ECDH_ES_A128KW, k.deviceKid)],
      sequenceNumber: 1,
      signers: [k.capKey.signer],
      uri: 'https://cdn.example/codec-1.enc',
    });
    const wrong = (await moduleEnvelope(v2, md, 1)).ciphertext;
    expect(
      await refusal(m.install(env, { payloads: new Map([['https://cdn.example/codec-1.enc', wrong]]) })),
    ).toBe('CAP_DECRYPT');
    // The right detached payload installs.
    await m.install(env, { payloads: new Map([['https://cdn.example/codec-1.enc', enc.ciphertext]]) });
    expect([...(await m.call('codec', bytes(7))).output]).toEqual([...codecV1(bytes(7))]);
    expect(MODULE_URI).toBe('#module');
    await m.close();
  });

  it('refuses a revoked module and a sequence number that does not increase', async () => {
    const { m } = await fresh();
    const e1 = await moduleEnvelope(v1, metadata('codec', [1, 0, 0]), 5);
    await m.install(e1.envelope);
    const old = await moduleEnvelope(v2, metadata('codec', [2, 0, 0], { imports: LOG }), 5);
    expect(await refusal(m.install(old.envelope))).toBe('CAP_ROLLBACK');
    const revoked = await moduleEnvelope(v2, metadata('codec', [2, 0, 0], { imports: LOG }), 6);
    await m.applyRevocationList(await revocationList(1, [sha256(v2)]));
    expect(await refusal(m.install(revoked.envelope))).toBe('CAP_REVOKED');
    // The running v1 was not named: still serving.
    expect((await m.call('codec', bytes(1))).version).toEqual([1, 0, 0]);
    await m.close();
  });
});

describe('dependencies and compatibility', () => {
  it('needs dependencies active in range, refuses a swap that breaks a dependent and an unload of a dependency', async () => {
    const { h, m } = await fresh();
    const app = metadata('app', [1, 0, 0], {
      dependencies: [{ name: 'codec', min: [1, 0, 0], max: [1, 9, 9] }],
    });
    const appEnv = await moduleEnvelope(v1, app, 1);
    expect(await refusal(m.install(appEnv.envelope))).toBe('CAP_DEPENDENCY');
    await m.install((await moduleEnvelope(v1, metadata('codec', [1, 0, 0]), 1)).envelope);
    await m.install(appEnv.envelope);
    // codec 2.0.0 is outside app's range 1.0.0..1.9.9.
    const c2 = await moduleEnvelope(v2, metadata('codec', [2, 0, 0], { imports: LOG }), 2);
    expect(await refusal(m.install(c2.envelope))).toBe('CAP_DEPENDENCY');
    expect(await refusal(m.unload('codec'))).toBe('CAP_DEPENDED_ON');
    // A compatible swap of the dependency is fine.
    await m.install((await moduleEnvelope(v2, metadata('codec', [1, 5, 0], { imports: LOG }), 3)).envelope);
    // After a restart both start again, the dependency first (boot verifies every active module).
    await m.close();
    const m2 = await h.open();
    expect(
      m2
        .status()
        .map((x) => `${x.name}@${x.version}`)
        .sort(),
    ).toEqual(['app@1.0.0', 'codec@1.5.0']);
    await m2.unload('app');
    await m2.unload('codec');
    expect(await refusal(m2.call('codec', bytes(1)))).toBe('CAP_NOT_LOADED');
    await m2.close();
  });
});

describe('unload, revert and capability-manifest updates', () => {
  it('reverts to the archived version without a download', async () => {
    const { h, m } = await fresh();
    await m.install((await moduleEnvelope(v1, metadata('codec', [1, 0, 0]), 1)).envelope);
    await m.install((await moduleEnvelope(v2, metadata('codec', [2, 0, 0], { imports: LOG }), 2)).envelope);
    await m.settle();
    expect(h.events.some((e) => e.type === 'archived' && e.version === '1.0.0')).toBe(true);
    expect(m.status()[0]?.archives.map((a) => a.version)).toEqual(['1.0.0']);
    await m.revert('codec');
    expect([...(await m.call('codec', bytes(3, 4))).output]).toEqual([...codecV1(bytes(3, 4))]);
    await m.settle();
    expect(m.status()[0]?.archives.map((a) => a.version)).toEqual(['2.0.0']);
    // The log host function works (declared by v2): v2's empty-input health check logged once.
    expect(h.logs).toContain('codec v2: empty input');
    await m.close();
  });

  it('a newer capability manifest that drops a capability unloads it; an older one is refused', async () => {
    const { m } = await fresh();
    await m.install((await moduleEnvelope(v1, metadata('codec', [1, 0, 0]), 1)).envelope);
    await m.install((await moduleEnvelope(v1, metadata('filter', [1, 0, 0]), 1)).envelope);
    expect(await refusal(m.updateCapabilityManifest(await capabilityManifest(1)))).toBe(
      'CAP_MANIFEST_REJECTED',
    );
    const r = await m.updateCapabilityManifest(await capabilityManifest(2, [{ name: 'filter' }]));
    expect(r.unloaded).toEqual(['codec']);
    expect(await refusal(m.call('codec', bytes(1)))).toBe('CAP_NOT_AUTHORIZED');
    expect((await m.call('filter', bytes(1))).version).toEqual([1, 0, 0]);
    expect(m.capabilityManifestVersion).toBe(2);
    await m.close();
  });

  it('the general trust revocation list revokes modules by its digest entries (own version counter)', async () => {
    const { h, m } = await fresh();
    const e1 = await moduleEnvelope(v1, metadata('codec', [1, 0, 0]), 1);
    await m.install(e1.envelope);
    await m.applyRevocationList(await revocationList(5, []));
    const general = await createTrustRevocationList(
      {
        version: 1,
        issuedAt: NOW - 5,
        expiresAt: NOW + 3600,
        entries: [
          { kind: RevokedKind.signingKey, id: new Uint8Array(32).fill(1) },
          { kind: RevokedKind.digest, id: e1.digest, reason: 'CVE' },
        ],
      },
      keys().revoker.signer,
    );
    expect((await m.applyRevocationList(general)).unloaded).toEqual(['codec']);
    expect(m.trustRevocationListVersion).toBe(1);
    expect(m.revocationListVersion).toBe(5);
    expect(await refusal(m.applyRevocationList(general))).toBe('CAP_REVOCATION_REJECTED');
    expect(await refusal(m.install(e1.envelope))).toBe('CAP_REVOKED');
    await m.close();
    const m2 = await h.open();
    expect(m2.trustRevocationListVersion).toBe(1);
    expect(await refusal(m2.install(e1.envelope))).toBe('CAP_REVOKED');
    await m2.close();
  });

  it('with requireFreshRevocationList, installs wait for an unexpired revocation list', async () => {
    const h = await harness(pool);
    let now = NOW;
    const m = await h.open({ policy: { requireFreshRevocationList: true }, now: () => now });
    const e1 = await moduleEnvelope(v1, metadata('codec', [1, 0, 0]), 1);
    expect(await refusal(m.install(e1.envelope))).toBe('CAP_REVOCATION_STALE');
    await m.applyRevocationList(await revocationList(1, [], { expiresAt: NOW + 60 }));
    await m.install(e1.envelope);
    now = NOW + 61;
    const e2 = await moduleEnvelope(v2, metadata('codec', [2, 0, 0], { imports: LOG }), 2);
    expect(await refusal(m.install(e2.envelope))).toBe('CAP_REVOCATION_STALE');
    // Running modules keep running.
    expect((await m.call('codec', bytes(1))).version).toEqual([1, 0, 0]);
    await m.close();
  });

  it('refuses revocation lists that are stale, expired or not signed by the revocation authority', async () => {
    const { m } = await fresh();
    await m.applyRevocationList(await revocationList(2, []));
    expect(await refusal(m.applyRevocationList(await revocationList(2, [])))).toBe('CAP_REVOCATION_REJECTED');
    expect(
      await refusal(m.applyRevocationList(await revocationList(3, [], { issuedAt: 1, expiresAt: 2 }))),
    ).toBe('CAP_REVOCATION_REJECTED');
    expect(await refusal(m.applyRevocationList(await capabilityManifest(9)))).toBe('CAP_REVOCATION_REJECTED');
    expect(m.revocationListVersion).toBe(2);
    await m.close();
  });
});

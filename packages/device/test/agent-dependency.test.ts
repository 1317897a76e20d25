/**
 * Two-party authorization across a dependency chain (draft-ietf-suit-trust-domains "TD" §5, §6; RFC 9019 §4;
 * boot/chain.ts): the device requires author + operator, and the operator's signature may sit on a dependent
 * manifest whose one dependency is the author's envelope (the fleet server's per-device envelopes). Each refusal
 * carries a typed reason, leaves the running firmware, its bank record and the counters untouched, and is
 * recorded as a 'failed' SUIT report record with that reason. A stored dependency that is tampered with is caught
 * by the boot stage on the next boot, which falls back to the other bank or to the recovery image.
 */
import { createHash } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, describe, expect, it } from 'vitest';
import { createSign1, type Signer } from '@rotor/cose';
import {
  buildEnvelope,
  buildUpdateManifest,
  encodeEnvelope,
  encodeManifest,
  manifestDigestBytes,
  parseEnvelopeOuter,
  parseParameterValue,
  type SuitCommand,
} from '@rotor/suit';
import type { DeviceAgent } from '../src/agent/agent.ts';
import { httpSource } from '../src/fetch/source.ts';
import { bankName, decodeBank, encodeAnchors, encodeBank } from '../src/flash/nvstate.ts';
import type { SimulatedFs } from '../src/storage/sim.ts';
import { CLASS, FW, image, keys, newAgent, provisioned, release, URI, VENDOR } from './agent-fixture.ts';

const OPERATOR_ID = [new TextEncoder().encode('operator.suit')];
const AUTHOR_KEY = '#author.suit';

interface Dependency {
  /** The author's envelope. */
  readonly envelope: Uint8Array;
  /** Fetched from this URI instead of integrated into the dependent (TD §5.4). */
  readonly uri?: string;
  /** The image-digest the dependent declares for it (default: the envelope's own manifest digest). */
  readonly digestOf?: Uint8Array;
}

/** The SUIT_Digest bytes of an envelope's manifest (the dependency reference, TD §5.1), read from its wrapper. */
function manifestDigestOf(envelope: Uint8Array): Uint8Array {
  const outer = parseEnvelopeOuter(envelope);
  return manifestDigestBytes(outer.manifestBytes);
}

const pv = (code: number, v: unknown): [number, ReturnType<typeof parseParameterValue>] => [
  code,
  parseParameterValue(code, v, `test{${code}}`),
];

/**
 * An operator's dependent manifest (as the server's buildDeviceEnvelope, without encryption): component 0 is the
 * firmware, components 1.. the dependencies, each fetched (integrated or by URI), integrity-checked and processed.
 */
async function dependent(
  deps: readonly Dependency[],
  opts: { seq?: number; signers?: readonly Signer[]; install?: readonly SuitCommand[] } = {},
): Promise<Uint8Array> {
  const install: SuitCommand[] = [...(opts.install ?? [])];
  const integrated = new Map<string, Uint8Array>();
  for (const [i, d] of deps.entries()) {
    const key = d.uri ?? (deps.length === 1 ? AUTHOR_KEY : `#author-${i}.suit`);
    if (d.uri === undefined) integrated.set(key, d.envelope);
    install.push(
      { op: 'set-component-index', code: 12, index: [i + 1] },
      {
        op: 'params',
        code: 20,
        params: new Map([
          pv(3, manifestDigestOf(d.digestOf ?? d.envelope)),
          pv(14, BigInt(d.envelope.length)),
          pv(21, key),
        ]),
      },
      { op: 'policy', code: 21, policy: 2 },
      { op: 'policy', code: 7, policy: 15 },
      { op: 'policy', code: 11, policy: 2 },
    );
  }
  const { manifest } = encodeManifest({
    sequenceNumber: opts.seq ?? 10,
    components: [[...FW]],
    dependencies: deps.map((_, i) => ({ index: i + 1, prefix: undefined })),
    manifestComponentId: OPERATOR_ID,
    install,
  });
  const digestBytes = manifestDigestBytes(manifest);
  const authBlocks: Uint8Array[] = [];
  for (const s of opts.signers ?? [keys().operator])
    authBlocks.push(await createSign1(digestBytes, s, { detached: true }));
  return encodeEnvelope({ manifest, digestBytes, authBlocks, integrated });
}

/** The author's release of firmware `v` (author-signed only), its payload served at URI(`v<v>`). */
async function authored(
  resources: Map<string, Uint8Array>,
  v: number,
  signers: readonly Signer[] = [keys().author],
): Promise<Uint8Array> {
  const r = await release({ seq: v, image: image(v, 2000 + v), uri: URI(`v${v}`), signers });
  resources.set(URI(`v${v}`), r.payload);
  return r.envelope;
}

async function snapshot(agent: DeviceAgent): Promise<unknown> {
  const st = await agent.status();
  return {
    bank: st.bank,
    sequence: st.sequence,
    counters: [...st.counters],
    running: await agent.nv.store.get(bankName(st.bank)),
    boot: await agent.nv.store.get('boot'),
    update: await agent.nv.update(),
  };
}

async function expectRefused(
  agent: DeviceAgent,
  envelope: Uint8Array,
  code: string,
  suitCode: string,
): Promise<void> {
  const before = await snapshot(agent);
  const out = await agent.update(envelope);
  expect(out).toMatchObject({ ok: false, code, suitCode });
  expect(await snapshot(agent)).toEqual(before);
  const last = (await agent.outbox.pending()).at(-1);
  expect(last).toMatchObject({ state: 'failed', reason: code });
  expect(last?.detail).toBeTruthy();
}

describe('operator dependent + author dependency (TD §5)', () => {
  it('installs and boots: integrated, and fetched by URI', async () => {
    const { agent, resources } = await provisioned();
    const a2 = await authored(resources, 2);
    expect(await agent.update(await dependent([{ envelope: a2 }]))).toMatchObject({
      ok: true,
      sequence: 2n,
      confirmed: true,
    });
    const a3 = await authored(resources, 3);
    resources.set(URI('author-3.suit'), a3);
    expect(
      await agent.update(await dependent([{ envelope: a3, uri: URI('author-3.suit') }], { seq: 11 })),
    ).toMatchObject({ ok: true, sequence: 3n, confirmed: true });
    expect(await agent.status()).toMatchObject({ sequence: 3n, trial: false });
  });
});

describe('dependency-chain refusals', () => {
  it('an operator-only envelope that writes its own image (no author dependency)', async () => {
    const { agent, resources } = await provisioned();
    const img = image(2, 2000);
    resources.set(URI('v2'), img);
    const own = (await release({ seq: 2, image: img, uri: URI('v2'), signers: [keys().operator] })).envelope;
    await expectRefused(agent, own, 'MANIFEST_REJECTED', 'SUIT_MISSING_PARTY');
  });

  it('an operator dependent with no dependency, and with two', async () => {
    const { agent, resources } = await provisioned();
    // Without a dependency, writing the firmware itself.
    resources.set(URI('v2'), image(2, 2000));
    const alone = await dependent([], {
      install: [
        { op: 'set-component-index', code: 12, index: [0] },
        { op: 'params', code: 20, params: new Map([pv(21, URI('v2'))]) },
        { op: 'policy', code: 21, policy: 2 },
      ],
    });
    await expectRefused(agent, alone, 'MANIFEST_REJECTED', 'SUIT_MISSING_PARTY');
    const a2 = await authored(resources, 2);
    const a3 = await authored(resources, 3);
    // Two author releases, and the same one twice: one operator manifest never combines author manifests.
    await expectRefused(
      agent,
      await dependent([{ envelope: a2 }, { envelope: a3 }]),
      'MANIFEST_REJECTED',
      'SUIT_DEPENDENCY_INVALID',
    );
    await expectRefused(
      agent,
      await dependent([{ envelope: a2 }, { envelope: a2 }]),
      'MANIFEST_REJECTED',
      'SUIT_DEPENDENCY_INVALID',
    );
    // Refused at authentication: nothing was downloaded for any of them.
    expect((await agent.outbox.pending()).map((t) => t.state)).not.toContain('downloading');
  });

  it('the author envelope inside the dependency has a rolled-back sequence number', async () => {
    const { agent, resources } = await provisioned();
    const a3 = await authored(resources, 3);
    expect(await agent.update(await dependent([{ envelope: a3 }]))).toMatchObject({ ok: true, sequence: 3n });
    // A fresh operator manifest (higher sequence of its own) around an older, and around the same, author release.
    const a2 = await authored(resources, 2);
    await expectRefused(
      agent,
      await dependent([{ envelope: a2 }], { seq: 20 }),
      'MANIFEST_REJECTED',
      'SUIT_ROLLBACK',
    );
    await expectRefused(
      agent,
      await dependent([{ envelope: a3 }], { seq: 21 }),
      'MANIFEST_REJECTED',
      'SUIT_ROLLBACK',
    );
    // And an author release below the counter, co-signed by both (no chain): refused too.
    const old = await release({ seq: 2, image: image(2, 2000), uri: URI('v2') });
    await expectRefused(agent, old.envelope, 'MANIFEST_REJECTED', 'SUIT_ROLLBACK');
  });

  it("the author's release for another device class, inside a valid operator dependent", async () => {
    const { agent, resources } = await provisioned();
    const img = image(2, 2000);
    resources.set(URI('v2'), img);
    const other = (
      await release({
        seq: 2,
        image: img,
        uri: URI('v2'),
        className: 'other-class',
        signers: [keys().author],
      })
    ).envelope;
    await expectRefused(
      agent,
      await dependent([{ envelope: other }]),
      'MANIFEST_REJECTED',
      'SUIT_CONDITION_FAILED',
    );
  });

  it("the operator points the author's component at another payload (TD §5.6.1: it may, the digest stays the author's)", async () => {
    const { agent, resources } = await provisioned();
    const img = image(2, 2100);
    // The author leaves the source to the operator (set-parameters: a default the dependent may override).
    const author = await buildEnvelope(
      buildUpdateManifest({
        vendorDomain: VENDOR,
        className: CLASS,
        sequenceNumber: 2,
        invoke: true,
        operatorDelivery: true,
        components: [
          {
            id: [...FW],
            image: { digest: new Uint8Array(createHash('sha256').update(img).digest()), size: img.length },
            uri: URI('v2'),
          },
        ],
      }),
      { signers: [keys().author] },
    );
    resources.set(URI('v2'), img);
    resources.set(URI('evil'), image(3, 2100));
    const redirect = (uri: string): SuitCommand[] => [
      { op: 'set-component-index', code: 12, index: [0] },
      { op: 'params', code: 20, params: new Map([pv(21, uri)]) },
    ];
    await expectRefused(
      agent,
      await dependent([{ envelope: author }], { install: redirect(URI('evil')) }),
      'MANIFEST_REJECTED',
      'SUIT_CONDITION_FAILED',
    );
    // Pointing it at a mirror of the right payload is what the operator is there for.
    resources.set(URI('mirror'), img);
    expect(
      await agent.update(await dependent([{ envelope: author }], { install: redirect(URI('mirror')) })),
    ).toMatchObject({ ok: true, sequence: 2n, confirmed: true });
  });

  it('a dependency fetched by URI whose digest does not match the reference', async () => {
    const { agent, resources } = await provisioned();
    const a2 = await authored(resources, 2);
    const a3 = await authored(resources, 3);
    // The server answers with another valid author release than the one the operator referenced.
    resources.set(URI('author.suit'), a3);
    const env = await dependent([{ envelope: a2, uri: URI('author.suit') }]);
    await expectRefused(agent, env, 'MANIFEST_REJECTED', 'SUIT_DEPENDENCY_INVALID');
    // A corrupted copy of the referenced one (a byte of its manifest: its own SUIT_Digest no longer matches).
    const bad = a2.slice();
    bad[bad.length - 10]! ^= 1;
    resources.set(URI('author.suit'), bad);
    await expectRefused(agent, env, 'MANIFEST_REJECTED', 'SUIT_DIGEST_MISMATCH');
  });

  it('a dependency signed by the operator key; and one key registered for both roles', async () => {
    const { agent, resources } = await provisioned();
    const k = keys();
    const byOperator = await authored(resources, 2, [k.operator]);
    await expectRefused(
      agent,
      await dependent([{ envelope: byOperator }]),
      'MANIFEST_REJECTED',
      'SUIT_MISSING_PARTY',
    );

    // A device whose anchors (wrongly) list the operator's key as an author too: one key still never fills both
    // roles — not on one envelope, and not across a chain (RFC 9019 §4: distinct parties).
    const fs2 = (await provisioned()).fs;
    const operatorAnchor = k.anchors.find((a) => a.role === 'operator')!;
    const second = newAgent(fs2, resources);
    await second.powerOn();
    await second.nv.store.put(
      'anchors',
      encodeAnchors([...k.anchors, { ...operatorAnchor, name: 'operator-as-author', role: 'author' }]),
    );
    const both = (await release({ seq: 2, image: image(2, 2002), uri: URI('v2'), signers: [k.operator] }))
      .envelope;
    await expectRefused(second, both, 'MANIFEST_REJECTED', 'SUIT_MISSING_PARTY');
    await expectRefused(
      second,
      await dependent([{ envelope: byOperator }]),
      'MANIFEST_REJECTED',
      'SUIT_MISSING_PARTY',
    );
    // The genuine chain still installs on that device, and so does an author release the operator co-signed.
    const a3 = await authored(resources, 3);
    expect(await second.update(await dependent([{ envelope: a3 }]))).toMatchObject({
      ok: true,
      confirmed: true,
    });
    const a4 = await authored(resources, 4, [k.author, k.operator]);
    expect(await agent.update(await dependent([{ envelope: a4 }]))).toMatchObject({
      ok: true,
      sequence: 4n,
      confirmed: true,
    });
  });
});

/** Replaces the stored dependency envelope of `bank`'s record, durably (an attacker with flash access). */
async function tamperDependency(
  agent: DeviceAgent,
  bank: 'a' | 'b',
  edit: (envelope: Uint8Array) => Uint8Array,
): Promise<void> {
  const raw = await agent.nv.store.get(bankName(bank));
  if (raw === undefined) throw new Error(`no record for bank ${bank}`);
  const rec = decodeBank(raw);
  const deps = rec.dependencies ?? [];
  expect(deps).toHaveLength(1);
  await agent.nv.store.put(
    bankName(bank),
    encodeBank({ ...rec, dependencies: deps.map((d) => ({ ...d, envelope: edit(d.envelope) })) }),
  );
}

async function rebootFresh(
  fs: SimulatedFs,
  resources: Map<string, Uint8Array>,
): Promise<{ agent: DeviceAgent; boot: Awaited<ReturnType<DeviceAgent['powerOn']>> }> {
  fs.reboot();
  const agent = newAgent(fs, resources);
  return { agent, boot: await agent.powerOn() };
}

describe('a stored dependency tampered on flash (boot stage, RFC 9019 §4.1)', () => {
  it('in the trial bank: not booted, the device reverts to the previous bank and reports why', async () => {
    const { fs, resources } = await provisioned();
    const a2 = await authored(resources, 2);
    // Install, then stop at the reboot into the trial: the trial bank is committed, not yet booted.
    const installOnly = newAgent(fs, resources, {
      onReboot: () => {
        throw Object.assign(new Error('stop at reboot'), { stop: true });
      },
    });
    await installOnly.powerOn();
    await expect(installOnly.update(await dependent([{ envelope: a2 }]))).rejects.toMatchObject({
      stop: true,
    });
    expect((await installOnly.nv.boot())?.trial?.bank).toBe('b');
    // A byte of the author's signature flipped.
    await tamperDependency(installOnly, 'b', (e) => {
      const x = e.slice();
      x[60]! ^= 1;
      return x;
    });
    const { agent, boot } = await rebootFresh(fs, resources);
    expect(boot).toMatchObject({ bank: 'a', trial: false, event: 'rolled-back' });
    expect(boot.skipped[0]).toMatchObject({ bank: 'b', code: 'MANIFEST_REJECTED' });
    expect(await agent.status()).toMatchObject({ bank: 'a', sequence: 1n, trial: false });
    expect((await agent.outbox.pending()).at(-1)).toMatchObject({
      state: 'rolled-back',
      reason: 'MANIFEST_REJECTED',
    });
    expect([...(await agent.nv.counters()).values()]).not.toContain(2n);
    // The failed bank is gone; a later genuine update installs.
    expect(await agent.nv.bank('b')).toBeUndefined();
    const a3 = await authored(resources, 3);
    expect(await agent.update(await dependent([{ envelope: a3 }]))).toMatchObject({
      ok: true,
      confirmed: true,
    });
  });

  it('in the active bank: replaced by another validly signed author release, the device boots recovery', async () => {
    const { agent, fs, resources } = await provisioned();
    const a2 = await authored(resources, 2);
    expect(await agent.update(await dependent([{ envelope: a2 }]))).toMatchObject({
      ok: true,
      bank: 'b',
      confirmed: true,
    });
    // A validly signed author envelope, but not the one the operator's dependent references (TD §6.2).
    const a3 = await authored(resources, 3);
    await tamperDependency(agent, 'b', () => a3);
    const { agent: after, boot } = await rebootFresh(fs, resources);
    // b: the dependency no longer matches the dependent's image-digest; a: v1 is below the counter (2).
    expect(boot).toMatchObject({ bank: 'r', event: 'recovery' });
    expect(boot.skipped.map((s) => s.bank)).toEqual(['b', 'a']);
    expect(boot.skipped[0]?.reason).toMatch(/image-digest/);
    expect((await after.outbox.pending()).at(-1)).toMatchObject({
      state: 'failed',
      reason: 'NO_BOOTABLE_IMAGE',
    });
    expect([...(await after.nv.counters()).values()]).toContain(2n);
  });
});

describe('a dependency fetched from a hostile server (HTTP over loopback)', () => {
  const servers: Server[] = [];
  afterAll(() => {
    for (const s of servers) s.close();
  });

  async function serve(handler: Parameters<typeof createServer>[1]): Promise<string> {
    const s = createServer(handler);
    servers.push(s);
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
    return `http://127.0.0.1:${(s.address() as AddressInfo).port}`;
  }

  it('a slow drip is cut off by the deadline (FETCH_DEADLINE), an endless one at the announced size', async () => {
    const { agent, resources } = await provisioned();
    const a2 = await authored(resources, 2);
    const base = await serve((req, res) => {
      if (req.url === '/slow') {
        res.writeHead(200, { 'content-length': String(a2.length) });
        let i = 0;
        const t = setInterval(() => {
          if (i < a2.length) res.write(a2.subarray(i, ++i));
        }, 20);
        res.on('close', () => {
          clearInterval(t);
        });
        return;
      }
      // Endless, without a length.
      res.writeHead(200);
      const chunk = Buffer.alloc(16 * 1024, 7);
      const pump = (): void => {
        while (res.write(chunk));
        res.once('drain', pump);
      };
      pump();
      res.on('close', () => res.removeAllListeners('drain'));
    });
    agent.fetchPolicy = { source: httpSource(), retries: 1, backoffMs: 1, deadlineMs: 400 };
    await expectRefused(
      agent,
      await dependent([{ envelope: a2, uri: `${base}/slow` }]),
      'FETCH_DEADLINE',
      'SUIT_OPERATION_FAILED',
    );
    agent.fetchPolicy = { source: httpSource(), retries: 1, backoffMs: 1, deadlineMs: 10_000 };
    await expectRefused(
      agent,
      await dependent([{ envelope: a2, uri: `${base}/endless` }]),
      'MANIFEST_REJECTED',
      'SUIT_OPERATION_FAILED',
    );
  });
});

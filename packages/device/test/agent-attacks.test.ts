/**
 * Attack tests (issue 4 "Must show"): each refused with a typed reason, the running firmware, its bank record and
 * the anti-rollback counters untouched.
 */
import { createHash } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, describe, expect, it } from 'vitest';
import type { DeviceAgent } from '../src/agent/agent.ts';
import { httpSource, memorySource, type ByteSource } from '../src/fetch/source.ts';
import { DEVICE_ID, FW, image, keys, newAgent, provisioned, release, URI } from './agent-fixture.ts';

async function snapshot(agent: DeviceAgent): Promise<unknown> {
  const st = await agent.status();
  return {
    bank: st.bank,
    sequence: st.sequence,
    counters: [...st.counters],
    running: await agent.nv.store.get(`bank-${st.bank}`),
    boot: (await agent.nv.boot())?.active,
  };
}

async function expectRefused(
  agent: DeviceAgent,
  envelope: Uint8Array,
  code: string,
  suitCode?: string,
): Promise<void> {
  const before = await snapshot(agent);
  const out = await agent.update(envelope);
  expect(out.ok).toBe(false);
  if (out.ok) return;
  expect(out.code).toBe(code);
  if (suitCode !== undefined) expect(out.suitCode).toBe(suitCode);
  expect(await snapshot(agent)).toEqual(before);
  const last = (await agent.outbox.pending()).at(-1);
  expect(last?.state).toBe('failed');
  expect(last?.reason).toBe(code);
}

describe('attacks on the update path', () => {
  it('wrong vendor, class or device id', async () => {
    const { agent, resources } = await provisioned();
    const img = image(2, 2000);
    resources.set(URI('v2'), img);
    for (const o of [
      { vendor: 'evil.example' },
      { className: 'other-class' },
      { deviceId: new Uint8Array(16) },
    ]) {
      const r = await release({ seq: 2, image: img, uri: URI('v2'), ...o });
      await expectRefused(agent, r.envelope, 'MANIFEST_REJECTED', 'SUIT_CONDITION_FAILED');
    }
    expect(DEVICE_ID.length).toBe(16);
  });

  it('a replayed older (validly signed) manifest, and the same one again', async () => {
    const { agent, resources } = await provisioned();
    const r2 = await release({ seq: 2, image: image(2, 2000), uri: URI('v2') });
    resources.set(URI('v2'), r2.payload);
    expect(await agent.update(r2.envelope)).toMatchObject({ ok: true, confirmed: true });
    const old = await release({ seq: 1, image: image(1, 3000), uri: URI('v1') });
    await expectRefused(agent, old.envelope, 'MANIFEST_REJECTED', 'SUIT_ROLLBACK');
    await expectRefused(agent, r2.envelope, 'MANIFEST_REJECTED', 'SUIT_ROLLBACK');
  });

  it('a manifest signed by an unknown key, and author-only where the operator is required', async () => {
    const { agent, resources } = await provisioned();
    const img = image(2, 2000);
    resources.set(URI('v2'), img);
    const k = keys();
    const unknown = await release({ seq: 2, image: img, uri: URI('v2'), signers: [k.stranger] });
    await expectRefused(agent, unknown.envelope, 'MANIFEST_REJECTED');
    const authorOnly = await release({ seq: 2, image: img, uri: URI('v2'), signers: [k.author] });
    await expectRefused(agent, authorOnly.envelope, 'MANIFEST_REJECTED', 'SUIT_MISSING_PARTY');
    const strangerAsOperator = await release({
      seq: 2,
      image: img,
      uri: URI('v2'),
      signers: [k.author, k.stranger],
    });
    await expectRefused(agent, strangerAsOperator.envelope, 'MANIFEST_REJECTED', 'SUIT_MISSING_PARTY');
  });

  it('a payload digest mismatch, and a payload swapped for another release', async () => {
    const { agent, resources } = await provisioned();
    const img = image(2, 2000);
    const bad = img.slice();
    bad[1000]! ^= 1;
    const r = await release({ seq: 2, image: img, uri: URI('v2') });
    resources.set(URI('v2'), bad);
    await expectRefused(agent, r.envelope, 'MANIFEST_REJECTED', 'SUIT_CONDITION_FAILED');
    // Release 3's (validly encrypted) payload served in place of release 2's.
    const r2 = await release({ seq: 2, image: image(2, 2000), uri: URI('v2e'), encrypt: 'gcm' });
    const r3 = await release({ seq: 3, image: image(3, 2000), uri: URI('v3e'), encrypt: 'gcm' });
    resources.set(URI('v2e'), r3.payload);
    await expectRefused(agent, r2.envelope, 'PAYLOAD_DECRYPT_FAILED', 'SUIT_OPERATION_FAILED');
    // Same with plaintext payloads: the digest catches it.
    const p2 = await release({ seq: 2, image: image(2, 2000), uri: URI('p2') });
    resources.set(URI('p2'), image(3, 2000));
    await expectRefused(agent, p2.envelope, 'MANIFEST_REJECTED', 'SUIT_CONDITION_FAILED');
  });
});

describe('oversized and resumed payloads', () => {
  it('an image-size beyond the slot is refused before anything is fetched (IMAGE_TOO_LARGE)', async () => {
    const { agent, resources } = await provisioned();
    let opened = 0;
    const inner = memorySource(resources);
    const counting: ByteSource = {
      open: (uri, o) => {
        opened++;
        return inner.open(uri, o);
      },
    };
    agent.fetchPolicy = { source: counting, retries: 2, backoffMs: 1, deadlineMs: 10_000 };
    const img = image(2, 2000);
    resources.set(URI('v2'), img);
    // The slot (identity.maxImageSize) is 1 MiB; the manifest announces 2 MiB.
    const r = await release({ seq: 2, image: img, uri: URI('v2'), size: 2 * 1024 * 1024 });
    await expectRefused(agent, r.envelope, 'IMAGE_TOO_LARGE');
    expect(opened).toBe(0);
  });

  /** Cuts power in the middle of an encrypted download (GCM), n storage operations into the update. */
  async function cutMidDownload(): Promise<{
    dev: Awaited<ReturnType<typeof provisioned>>;
    envelope: Uint8Array;
  }> {
    const dev = await provisioned();
    const r = await release({ seq: 2, image: image(2, 48 * 1024), uri: URI('v2e'), encrypt: 'gcm' });
    dev.resources.set(URI('v2e'), r.payload);
    dev.arm.arm(80);
    await expect(dev.agent.update(r.envelope)).rejects.toMatchObject({ code: 'POWER_CUT' });
    dev.arm.disarm();
    dev.fs.reboot();
    return { dev, envelope: r.envelope };
  }

  it('an encrypted download resumes after a power cut from its durable prefix and installs', async () => {
    const { dev } = await cutMidDownload();
    const agent = newAgent(dev.fs, dev.resources);
    await agent.powerOn();
    expect(agent.stats.resumedBytes).toBeGreaterThan(0);
    expect(await agent.status()).toMatchObject({ bank: 'b', sequence: 2n, trial: false });
  });

  it('a durable prefix tampered with while the device was off is caught after the resume (GCM tag)', async () => {
    const { dev } = await cutMidDownload();
    const path = `${dev.agent.flash.dir('b', FW)}/00000000`;
    const chunk = await dev.fs.read(path);
    expect(chunk?.length).toBe(1024);
    chunk![10]! ^= 1;
    await dev.fs.write(path, chunk!);
    await dev.fs.fsync(path);
    const agent = newAgent(dev.fs, dev.resources);
    await agent.powerOn();
    expect(agent.stats.resumedBytes).toBeGreaterThan(0);
    expect(await agent.status()).toMatchObject({ bank: 'a', sequence: 1n, trial: false, updating: false });
    expect([...(await agent.nv.counters()).values()]).not.toContain(2n);
    expect((await agent.outbox.pending()).at(-1)).toMatchObject({
      state: 'failed',
      reason: 'PAYLOAD_DECRYPT_FAILED',
    });
  });
});

describe('hostile servers (HTTP over loopback)', () => {
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

  it('an endless payload is cut at the bound (IMAGE_TOO_LARGE)', async () => {
    const base = await serve((_req, res) => {
      res.writeHead(200);
      const chunk = Buffer.alloc(16 * 1024, 7);
      const pump = (): void => {
        while (res.write(chunk));
        res.once('drain', pump);
      };
      pump();
      res.on('close', () => res.removeAllListeners('drain'));
    });
    const { agent } = await provisioned();
    agent.fetchPolicy = { source: httpSource(), retries: 1, backoffMs: 1, deadlineMs: 10_000 };
    const img = image(2, 2000);
    const r = await release({ seq: 2, image: img, uri: `${base}/endless` });
    await expectRefused(agent, r.envelope, 'IMAGE_TOO_LARGE');
  });

  it('a server that never answers, or stalls after the headers, is cut off by the deadline (FETCH_DEADLINE)', async () => {
    const base = await serve((req, res) => {
      if (req.url === '/headers') {
        res.writeHead(200, { 'content-length': '2000' });
        res.write(Buffer.alloc(100));
      }
      // Otherwise: no response at all. Either way the connection stays open (and idle below its timeout).
    });
    const { agent } = await provisioned();
    agent.fetchPolicy = { source: httpSource(), retries: 5, backoffMs: 10, deadlineMs: 300 };
    const img = image(2, 2000);
    for (const path of ['/silent', '/headers']) {
      const r = await release({ seq: 2, image: img, uri: `${base}${path}` });
      await expectRefused(agent, r.envelope, 'FETCH_DEADLINE');
    }
  });

  it('a slow-drip server is cut off by the deadline (FETCH_DEADLINE)', async () => {
    const img = image(2, 2000);
    const base = await serve((_req, res) => {
      res.writeHead(200, { 'content-length': String(img.length) });
      let i = 0;
      const t = setInterval(() => {
        if (i >= img.length) {
          clearInterval(t);
          res.end();
          return;
        }
        res.write(img.subarray(i, i + 1));
        i++;
      }, 20);
      res.on('close', () => {
        clearInterval(t);
      });
    });
    const { agent } = await provisioned();
    agent.fetchPolicy = { source: httpSource(), retries: 5, backoffMs: 10, deadlineMs: 400 };
    const r = await release({ seq: 2, image: img, uri: `${base}/slow` });
    await expectRefused(agent, r.envelope, 'FETCH_DEADLINE');
    expect(createHash('sha256').update(img).digest().length).toBe(32);
  });
});

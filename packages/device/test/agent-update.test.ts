import { describe, expect, it } from 'vitest';
import { image, provisioned, release, URI } from './agent-fixture.ts';

describe('device agent update flow', () => {
  it('boots the provisioned firmware, updates (GCM), trial-boots and confirms', async () => {
    const { agent, resources } = await provisioned();
    expect((await agent.status()).bank).toBe('a');
    const r2 = await release({ seq: 2, image: image(2, 5000), uri: URI('v2'), encrypt: 'gcm' });
    resources.set(URI('v2'), r2.payload);
    const out = await agent.update(r2.envelope);
    expect(out).toMatchObject({ ok: true, bank: 'b', confirmed: true });
    const st = await agent.status();
    expect(st).toMatchObject({ bank: 'b', sequence: 2n, trial: false });
    expect([...st.counters.values()]).toContain(2n);
    const states = (await agent.outbox.pending()).map((t) => t.state);
    expect(states).toEqual([
      'downloading',
      'downloaded',
      'installing',
      'installed',
      'rebooting',
      'confirmed',
    ]);
  });

  it('AES-CTR payloads and plain payloads install too', async () => {
    const { agent, resources } = await provisioned();
    const r2 = await release({ seq: 2, image: image(2, 4100), uri: URI('v2'), encrypt: 'ctr' });
    resources.set(URI('v2'), r2.payload);
    expect(await agent.update(r2.envelope)).toMatchObject({ ok: true, confirmed: true });
    const r3 = await release({ seq: 3, image: image(3, 2048), uri: URI('v3') });
    resources.set(URI('v3'), r3.payload);
    expect(await agent.update(r3.envelope)).toMatchObject({ ok: true, bank: 'a', confirmed: true });
    expect((await agent.status()).sequence).toBe(3n);
  });

  it('an unhealthy new firmware rolls back to the old one and the counter stays', async () => {
    const { agent, resources } = await provisioned();
    const r2 = await release({ seq: 2, image: image(2, 5000, false), uri: URI('v2') });
    resources.set(URI('v2'), r2.payload);
    expect(await agent.update(r2.envelope)).toMatchObject({ ok: true, confirmed: false });
    const st = await agent.status();
    expect(st).toMatchObject({ bank: 'a', sequence: 1n, trial: false });
    expect([...st.counters.values()]).not.toContain(2n);
    expect((await agent.outbox.pending()).map((t) => t.state).at(-1)).toBe('rolled-back');
  });
});

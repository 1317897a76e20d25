/**
 * Simulation helpers — the power-cut sweep of issue 4: one update (or failed update) with power cut at a given
 * storage operation, then reboot with a fresh agent that finishes the job, and the invariants checked.
 */
import { newAgent, provisioned } from './device.ts';
import { image, release, URI, type Release } from './release.ts';

export interface CutScenario {
  /** The update offered (a release of firmware v2) and whether it is healthy. */
  readonly release: Release;
  readonly uri: string;
  readonly healthy: boolean;
}

export async function scenario(
  kind: 'update' | 'rollback',
  size = 5000,
  encrypt?: 'gcm' | 'ctr',
): Promise<CutScenario> {
  const uri = URI(`v2-${kind}-${size}`);
  const r = await release({
    seq: 2,
    image: image(2, size, kind === 'update'),
    uri,
    ...(encrypt === undefined ? {} : { encrypt }),
  });
  return { release: r, uri, healthy: kind === 'update' };
}

export interface CutOutcome {
  /** Whether the cut fired (false: the flow finished before reaching that index). */
  readonly cut: boolean;
  /** The device failed to boot a verified image, or lost anti-rollback state. */
  readonly bricked: boolean;
  /** Which firmware the device ends on. */
  readonly final: 'old' | 'new' | 'other';
  readonly detail: string;
}

/**
 * Provisions a device, cuts power at mutating operation `cutAt` (counted from the start of the update), reboots
 * (a fresh agent object: the process restarted), lets the agent finish (it resumes an interrupted update; when
 * the cut came before the update was recorded the server offers it again), and checks the invariants.
 */
export async function cutRun(s: CutScenario, cutAt: number): Promise<CutOutcome> {
  const dev = await provisioned();
  dev.resources.set(s.uri, s.release.payload);
  dev.arm.arm(cutAt);
  let cut = false;
  try {
    await dev.agent.update(s.release.envelope);
  } catch (e) {
    if (!(e instanceof Error && 'code' in e && e.code === 'POWER_CUT')) throw e;
    cut = true;
  }
  let agent = dev.agent;
  dev.arm.disarm();
  if (cut) {
    dev.fs.reboot();
    agent = newAgent(dev.fs, dev.resources);
    try {
      await agent.powerOn();
    } catch (e) {
      return {
        cut,
        bricked: true,
        final: 'other',
        detail: `boot failed: ${e instanceof Error ? e.message : String(e)}`,
      };
    }
    const st = await agent.status();
    if (st.sequence === 1n && !st.updating && !st.trial) {
      // Nothing of the update survived (or it rolled back): the server offers it again.
      const seen = (await agent.outbox.pending()).some((t) => t.state === 'rolled-back');
      if (!seen) await agent.update(s.release.envelope);
    }
  }
  const st = await agent.status();
  const counter = [...st.counters.values()].reduce((a, b) => (b > a ? b : a), 0n);
  const final = st.sequence === 2n ? 'new' : st.sequence === 1n ? 'old' : 'other';
  const expected = s.healthy ? 'new' : 'old';
  // Anti-rollback state: the counter equals the confirmed firmware's sequence (never lost, never ahead).
  const counterOk = counter === (final === 'new' ? 2n : 1n);
  const bricked = st.bank === 'r' || !counterOk || st.trial;
  return {
    cut,
    bricked,
    final,
    detail: `bank ${st.bank} seq ${st.sequence} counter ${counter} expected ${expected}`,
  };
}

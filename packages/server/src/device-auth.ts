/**
 * Device authentication cache (the mutual-TLS listener authenticates every request by the SHA-256 of the client
 * certificate). A successful lookup is reused for at most `DEVICE_AUTH_TTL_MS`, and every change of a device's
 * standing made by this process (`deviceStateChanged`: disable, enable, revocation by list, policy action) drops
 * all cached entries at once, so a device disabled here is refused on its next request. A change made by another
 * server instance sharing the database is seen within the TTL. Only successes are cached: unknown and disabled
 * certificates are looked up every time.
 */
import type { Principal } from './auth.ts';

export const DEVICE_AUTH_TTL_MS = 1000;
const MAX_ENTRIES = 65_536;

let epoch = 0;

/** Call before and after (commit of) any change to a device's enabled state or identity. */
export function deviceStateChanged(): void {
  epoch++;
}

interface Entry {
  readonly principal: Principal;
  readonly epoch: number;
  readonly atMs: number;
}

export function createDeviceAuthCache(now: () => number = Date.now) {
  const entries = new Map<string, Entry>();
  return {
    get(key: string): Principal | undefined {
      const e = entries.get(key);
      if (e === undefined) return undefined;
      const t = now();
      if (e.epoch !== epoch || t - e.atMs > DEVICE_AUTH_TTL_MS || t < e.atMs) {
        entries.delete(key);
        return undefined;
      }
      return e.principal;
    },
    /** `startEpoch`: the epoch read before the lookup began; a change during the lookup is not cached. */
    set(key: string, principal: Principal, startEpoch: number): void {
      if (startEpoch !== epoch) return;
      if (entries.size >= MAX_ENTRIES) entries.clear();
      entries.set(key, { principal, epoch: startEpoch, atMs: now() });
    },
    epoch: (): number => epoch,
  };
}

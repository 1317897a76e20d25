/**
 * Device authentication cache (the mutual-TLS listener authenticates every request by the SHA-256 of the client
 * certificate). A successful lookup is reused for at most `DEVICE_AUTH_TTL_MS`, and every change of a device's
 * standing drops all cached entries at once:
 * - made by this process: `deviceStateChanged` (disable, enable, revocation by list, policy action);
 * - made by any server instance on the same PostgreSQL: migration 11's trigger notifies `DEVICE_STANDING_CHANNEL`
 *   in the changing transaction; every instance LISTENs (`watchDeviceStanding`) and drops its cache when the
 *   notification arrives. Arrival lags the commit (under load by tens of milliseconds), so a cached entry is used
 *   only after a round trip on the listening connection that started after the request arrived (`sync`, shared
 *   by all requests waiting at that moment): every change committed before the device sent its request has been
 *   delivered by then. While that connection is down (not yet connected, lost, reconnecting) nothing is cached,
 *   since a notification could be missed; reconnecting drops the cache.
 * On PGlite (one process owns the database) the local epoch suffices. Only successes are cached: unknown and
 * disabled certificates are looked up every time.
 */
import type { Principal } from './auth.ts';
import type { Db } from './db/db.ts';

/**
 * Upper bound on the life of a cached success. Invalidation is exact (local epoch, and NOTIFY with a sync round
 * trip across instances), so this is defence in depth only: long enough that a polling device is not looked up
 * again and again (each lookup is a database round trip), short enough to bound any unforeseen miss.
 */
export const DEVICE_AUTH_TTL_MS = 30_000;
/** PostgreSQL NOTIFY channel of device standing changes (migration 11's trigger on devices). */
export const DEVICE_STANDING_CHANNEL = 'rotor_device_standing';
const MAX_ENTRIES = 65_536;

let epoch = 0;

/** Call before and after (commit of) any change to a device's enabled state or identity. */
export function deviceStateChanged(): void {
  epoch++;
}

let deferring = false;

/**
 * Runs a route's `authenticate` for a handler that itself verifies the device's standing (enabled, certificate)
 * in its own statement (the check-in): a cached success is then used without the cross-instance sync round trip
 * (`StandingWatch.sync`). The flag is read synchronously at the start of the authentication and reset here, so it
 * reaches exactly that call, or none (then the full check runs: the safe default).
 */
export function deferStandingCheck<T>(fn: () => T): T {
  deferring = true;
  try {
    return fn();
  } finally {
    deferring = false;
  }
}

/** Whether the authentication starting now was deferred to its handler (read once, synchronously). */
export function standingCheckDeferred(): boolean {
  const d = deferring;
  deferring = false;
  return d;
}

const fingerprints = new WeakMap<Principal, Uint8Array>();

/** The SHA-256 certificate fingerprint a device principal was authenticated by. */
export function rememberFingerprint(p: Principal, fp: Uint8Array): void {
  fingerprints.set(p, fp);
}
export function fingerprintOf(p: Principal): Uint8Array | undefined {
  return fingerprints.get(p);
}

interface Entry {
  readonly principal: Principal;
  readonly epoch: number;
  readonly atMs: number;
}

export interface DeviceAuthCacheOptions {
  readonly now?: () => number;
  /** Whether cross-instance invalidation is in force; while false nothing is cached (default: always). */
  readonly live?: () => boolean;
}

export function createDeviceAuthCache(opts: DeviceAuthCacheOptions | (() => number) = {}) {
  const o: DeviceAuthCacheOptions = typeof opts === 'function' ? { now: opts } : opts;
  const now = o.now ?? Date.now;
  const live = o.live ?? (() => true);
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
      if (startEpoch !== epoch || !live()) return;
      if (entries.size >= MAX_ENTRIES) entries.clear();
      entries.set(key, { principal, epoch: startEpoch, atMs: now() });
    },
    epoch: (): number => epoch,
  };
}

export interface StandingWatch {
  /** True while notifications of other instances' changes are received (always on PGlite). */
  readonly live: () => boolean;
  /**
   * Resolves once every change committed before the call has dropped the cache (PostgreSQL: a shared round trip
   * on the listening connection; PGlite: at once).
   */
  readonly sync: () => Promise<void>;
  readonly close: () => Promise<void>;
}

/**
 * Listens for device standing changes made by other instances sharing the database (PostgreSQL). Every
 * notification, every loss of the listening connection and every (re)connection drops the cache (a change may
 * have been missed while disconnected).
 */
export function watchDeviceStanding(db: Db): StandingWatch {
  if (db.listen === undefined)
    return { live: () => true, sync: () => Promise.resolve(), close: () => Promise.resolve() };
  let connected = false;
  const l = db.listen(DEVICE_STANDING_CHANNEL, {
    notify: deviceStateChanged,
    connected(up: boolean): void {
      connected = up;
      deviceStateChanged();
    },
  });
  return {
    live: () => connected,
    sync: l.sync,
    close: async () => {
      connected = false;
      await l.stop();
    },
  };
}

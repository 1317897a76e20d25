/**
 * The fleet simulator: N real device agents (DeviceAgent + StatusTracker from @rotor/device, the code `rotor device
 * run` runs) in one process, against a real server over mutual TLS (device API) and MQTT push, each with its own
 * storage (SimulatedFs in memory, or a directory), registered through the operator API.
 *
 *   const fleet = await FleetSimulator.start(opts);
 *   fleet.on('transition', (t) => …);        // per-device state changes
 *   fleet.counts();                           // devices per state
 *   await fleet.waitFor((c) => c.confirmed === n, 60_000);
 *   await fleet.snapshot();                   // every device's state read from its flash
 *   await fleet.stop();
 *
 * Cheap per device: one scheduler timer for the whole fleet (check-ins jittered, not a timer per device), one
 * keep-alive TLS agent per device identity (the tracker's), factory state replayed instead of re-provisioned
 * (storage.ts), storage sized to the images. Realism (device.ts): offline devices that join later, power cuts during
 * install, slow links, clock skew, failing health checks — as random rates or directed at device indices.
 */
import { EventEmitter } from 'node:events';
import { randomInt } from 'node:crypto';
import { join } from 'node:path';
import { existsSync } from 'node:fs';
import {
  nodeFs,
  sim,
  SimulatedFs,
  type AnchorRecord,
  type StorageFs,
  type TrackerConfig,
  type TrackerEvent,
  type TransitionRecord,
} from '@rotor/device';
import { CliError } from '../errors.ts';
import { DEVICE_STATES, SimDevice, type DeviceState } from './device.ts';
import { softwareIdentities, type FleetIdentitySource } from './identity.ts';
import { OperatorApi } from './operator.ts';
import { FactoryImage } from './storage.ts';

export interface FleetFaults {
  /** Device indices whose next install loses power at a random storage operation (they recover on reboot). */
  readonly powerCutDuringInstall?: readonly number[];
  /** Device indices whose new image never passes its health check (the boot stage rolls back). */
  readonly failHealthCheck?: readonly number[];
  /** Device indices that start offline (they join after `offlineForMs`, or when setOnline() says so). */
  readonly offline?: readonly number[];
}

export interface FleetOptions {
  readonly devices: number;
  /** Operator API base URL and a token that may register devices (operator or admin role). */
  readonly operatorUrl: string;
  readonly token: string;
  /** The device API (mutual TLS). */
  readonly deviceUrl: string;
  /** CA (PEM) of the server's certificates (device API, mqtts, https operator API); default: the system store. */
  readonly ca?: string;
  /** MQTT broker for push nudges (mqtt:// or mqtts://); without it devices only poll. */
  readonly mqttUrl?: string;
  /** 'memory' (SimulatedFs per device, default) or a directory (one sub-directory per device, reused on a re-run). */
  readonly storage?: 'memory' | { readonly dir: string };
  /** Trust anchors besides the simulated factory's: the release author's key and the server's operator key. */
  readonly anchors: readonly AnchorRecord[];
  /** Fraction of devices that start offline (default 0). */
  readonly offline?: number;
  /** How long offline devices stay offline, ms (default 10 s, ±50% jitter; Infinity: until setOnline()). */
  readonly offlineForMs?: number;
  /** Fraction of devices that lose power during their next install (default 0; memory storage only). */
  readonly powerCuts?: number;
  /** Payload bytes per second per device (default: unthrottled). */
  readonly slowLinkBps?: number;
  /** Device clock skew in seconds: each device gets a skew drawn from [-S, S] (default 0). */
  readonly clockSkewS?: number;
  readonly faults?: FleetFaults;
  /** Device identities (default: software keys + self-signed certificates registered via the operator API). */
  readonly identities?: FleetIdentitySource;
  /** Device names are `<prefix><firstIndex + index>` (default 'sim-', 0); group and tags they are registered with. */
  readonly namePrefix?: string;
  readonly firstIndex?: number;
  readonly group?: string;
  readonly tags?: readonly string[];
  /** Which transitions devices report: 'all' (default) or 'outcomes'. */
  readonly reports?: 'all' | 'outcomes';
  /** Check-in interval when the server names none, and the device's clamp of the server's (ms). */
  readonly interval?: { readonly defaultMs?: number; readonly minMs?: number; readonly maxMs?: number };
  /** The first check-ins are spread over this many ms (default: min(5 s, 1 ms per device)). */
  readonly startSpreadMs?: number;
  /** Device cycles (check-in + update) running at once (default 256). */
  readonly concurrency?: number;
  /**
   * Close a device's HTTPS connection after each cycle, as a device polling every few minutes would, instead of
   * keeping it idle until the server drops it (default: for fleets above 4,096 devices — each held connection and
   * each MQTT connection is a descriptor in both processes, and 2 × 10,000 exceeds a common limit of 20,000).
   */
  readonly releaseConnections?: boolean;
  /** Each device gets an EnclaveCore over its storage (default false). */
  readonly enclave?: boolean;
  /** Size of the factory firmware image (default 4096) and the largest image a slot takes (default 1 MiB). */
  readonly imageSize?: number;
  readonly maxImageSize?: number;
  /** Flash chunk size (default 4096). */
  readonly chunkSize?: number;
  /** Largest storage operation index (from the update's start) a power cut is armed at (default 60). */
  readonly powerCutWindow?: number;
  /** Request deadline of the devices' HTTPS client, ms (default 60 s). */
  readonly requestTimeoutMs?: number;
  /**
   * More tracker configuration per device, applied at every power-on: the seam for what the tracker drives besides
   * firmware (an attester over the device's enclave — `enclave: true` gives each device one as `d.enclave` —, a
   * CapabilityManager, trust sources).
   */
  readonly trackerExtras?: (d: SimDevice) => Partial<TrackerConfig>;
  /** Setup progress: devices registered, devices powered on (called about every 5%). */
  readonly onSetup?: (phase: 'register' | 'boot', done: number, total: number) => void;
  /** Every tracker event, per device (verbose; for debugging and the demo's narration). */
  readonly onTrackerEvent?: (index: number, e: TrackerEvent) => void;
}

export type FleetCounts = Record<DeviceState, number> & { readonly total: number };

export interface TransitionEvent {
  readonly index: number;
  readonly name: string;
  readonly serverId: string | undefined;
  readonly from: DeviceState;
  readonly to: DeviceState;
  /** The agent's transition record behind the change (undefined for offline/online and boot changes). */
  readonly record: TransitionRecord | undefined;
}

export interface DeviceSnapshot {
  readonly index: number;
  readonly name: string;
  readonly serverId: string | undefined;
  readonly state: DeviceState;
  readonly online: boolean;
  /** The last outcome the server acknowledged. */
  readonly reported: { readonly state: string; readonly sequence: string } | undefined;
  readonly powerCuts: number;
  readonly errors: number;
  readonly lastError: string | undefined;
  /** From flash (undefined when the device never powered on). */
  readonly flash:
    | {
        readonly bank: 'a' | 'b' | 'r';
        readonly sequence: string;
        readonly trial: boolean;
        readonly updating: boolean;
        readonly counters: Record<string, string>;
        readonly images: readonly { readonly size: number; readonly sha256: string }[];
        readonly manifestDigest: string;
      }
    | undefined;
}

interface FleetEvents {
  transition: [TransitionEvent];
  error: [Error];
}

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

async function pool<T>(
  items: readonly T[],
  limit: number,
  f: (t: T, i: number) => Promise<void>,
): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      await f(items[i]!, i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

/** Picks round(n × rate) distinct indices at random. */
function pick(n: number, rate: number | undefined): Set<number> {
  const want = Math.min(n, Math.round(n * Math.max(0, rate ?? 0)));
  const out = new Set<number>();
  while (out.size < want) out.add(randomInt(0, n));
  return out;
}

export class FleetSimulator extends EventEmitter<FleetEvents> {
  readonly opts: FleetOptions;
  readonly api: OperatorApi;
  readonly devices: SimDevice[] = [];
  readonly #counts = new Map<DeviceState, number>(DEVICE_STATES.map((s) => [s, 0]));
  #tick: NodeJS.Timeout | undefined;
  #running = 0;
  #stopped = false;
  #waiters = new Set<() => void>();
  readonly #timers = new Set<NodeJS.Timeout>();
  readonly started = Date.now();

  private constructor(opts: FleetOptions) {
    super();
    this.opts = opts;
    this.api = new OperatorApi(opts.operatorUrl, opts.token, { ca: opts.ca, maxSockets: 32 });
  }

  /** Registers the devices (idempotent), powers them on and starts checking in. */
  static async start(opts: FleetOptions): Promise<FleetSimulator> {
    if (!Number.isInteger(opts.devices) || opts.devices < 1)
      throw new CliError('CLI_USAGE', 'the fleet needs at least one device');
    const f = new FleetSimulator(opts);
    try {
      await f.#setup();
    } catch (e) {
      await f.stop();
      throw e;
    }
    return f;
  }

  async #setup(): Promise<void> {
    const o = this.opts;
    const n = o.devices;
    const dir = o.storage === undefined || o.storage === 'memory' ? undefined : o.storage.dir;
    const ids = o.identities ?? softwareIdentities({ dir });
    const imageSize = o.imageSize ?? 4096;
    const chunkSize = o.chunkSize ?? 4096;
    const k = sim.keys();
    const v1 = await sim.release({ seq: 1, image: sim.image(1, imageSize), uri: sim.URI('v1') });
    const r0 = await sim.release({ seq: 1, image: sim.image(0, 1024), uri: sim.URI('recovery') });
    const factory = await FactoryImage.record({
      identity: sim.identity(o.maxImageSize ?? 1024 * 1024),
      anchors: [...k.anchors, ...o.anchors],
      firmware: v1.envelope,
      recovery: r0.envelope,
      payloads: new Map([
        [sim.URI('v1'), v1.payload],
        [sim.URI('recovery'), r0.payload],
      ]),
      chunkSize,
    });
    const faults = o.faults ?? {};
    const offline = pick(n, o.offline);
    for (const i of faults.offline ?? []) offline.add(i);
    const cuts = pick(n, o.powerCuts);
    for (const i of faults.powerCutDuringInstall ?? []) cuts.add(i);
    const failHealth = new Set(faults.failHealthCheck ?? []);
    const prefix = o.namePrefix ?? 'sim-';
    const group = o.group ?? 'simulated';
    const tags = o.tags ?? ['fleet-sim'];
    const skew = Math.abs(o.clockSkewS ?? 0);
    const mqtt = o.mqttUrl === undefined ? undefined : { url: o.mqttUrl, ca: o.ca };

    const done = { register: 0, boot: 0 };
    const step = Math.max(1, Math.floor(n / 20));
    const progress = (phase: 'register' | 'boot'): void => {
      const k = ++done[phase];
      if (k % step === 0 || k === n) o.onSetup?.(phase, k, n);
    };
    // Identities and registration (the server learns every device before any device talks to it).
    const indices = Array.from({ length: n }, (_, i) => i);
    const created = new Array<boolean>(n).fill(false);
    await pool(indices, 32, async (i) => {
      const name = `${prefix}${(o.firstIndex ?? 0) + i}`;
      const identity = await ids.identity(i, name);
      await ids.register(identity, this.api, { group, tags });
      progress('register');
      let fs: StorageFs;
      if (dir === undefined) fs = new SimulatedFs();
      else {
        const d = join(dir, name, 'flash');
        created[i] = !existsSync(join(d, 'nv'));
        fs = nodeFs(d);
      }
      if (dir === undefined) created[i] = true;
      this.devices[i] = new SimDevice({
        index: i,
        identity,
        fs,
        factory,
        server: { url: o.deviceUrl, ca: o.ca, timeoutMs: o.requestTimeoutMs ?? 60_000 },
        mqtt,
        reports: o.reports ?? 'all',
        chunkSize,
        enclave: o.enclave ?? false,
        powerCutWindow: o.powerCutWindow ?? 60,
        faults: {
          powerCut: cuts.has(i),
          failHealthCheck: failHealth.has(i),
          slowLinkBps: o.slowLinkBps,
          clockSkewS: skew === 0 ? 0 : randomInt(-skew, skew + 1),
        },
        onState: (d, from, to, record) => {
          this.#onState(d, from, to, record);
        },
        onNudge: (d) => {
          this.#nudge(d);
        },
        trackerExtras: o.trackerExtras,
        onEvent:
          o.onTrackerEvent === undefined
            ? undefined
            : (d, e) => {
                o.onTrackerEvent?.(d.index, e);
              },
      });
      this.#counts.set('offline', (this.#counts.get('offline') ?? 0) + 1);
    });
    if (dir !== undefined) for (const d of this.devices) await d.o.fs.mkdir('');

    // Power on the online devices; first check-ins spread over startSpreadMs.
    const spread = o.startSpreadMs ?? Math.min(5_000, n);
    const now = Date.now();
    await pool(
      indices.filter((i) => !offline.has(i)),
      64,
      async (i) => {
        const d = this.devices[i]!;
        await d.powerOn(created[i]!);
        progress('boot');
        d.nextAt = now + (spread > 0 ? randomInt(0, spread + 1) : 0);
      },
    );
    const away = o.offlineForMs ?? 10_000;
    if (Number.isFinite(away))
      for (const i of offline) {
        const t = setTimeout(
          () => {
            this.#timers.delete(t);
            this.setOnline(i, true).catch((e: unknown) => {
              this.#fail(e);
            });
          },
          Math.floor(away * (0.5 + Math.random())),
        );
        this.#timers.add(t);
      }
    this.#fresh = created;
    this.#tick = setInterval(() => {
      this.#schedule();
    }, 50);
  }

  #fresh: boolean[] = [];

  get #releaseConnections(): boolean {
    return this.opts.releaseConnections ?? this.devices.length > 4096;
  }

  #fail(e: unknown): void {
    const err = e instanceof Error ? e : new Error(String(e));
    if (this.listenerCount('error') > 0) this.emit('error', err);
  }

  #onState(d: SimDevice, from: DeviceState, to: DeviceState, record: TransitionRecord | undefined): void {
    this.#counts.set(from, (this.#counts.get(from) ?? 0) - 1);
    this.#counts.set(to, (this.#counts.get(to) ?? 0) + 1);
    if (this.listenerCount('transition') > 0)
      this.emit('transition', { index: d.index, name: d.name, serverId: d.serverId, from, to, record });
    for (const w of this.#waiters) w();
  }

  #nudge(d: SimDevice): void {
    if (d.running) d.nudged = true;
    else d.nextAt = Math.min(d.nextAt, Date.now());
  }

  #nextDelay(d: SimDevice, r: { intervalS: number | undefined; unreachable: boolean }): number {
    const iv = this.opts.interval ?? {};
    const min = iv.minMs ?? 5_000;
    const max = iv.maxMs ?? 86_400_000;
    const base = Math.min(
      max,
      Math.max(min, r.intervalS !== undefined ? r.intervalS * 1000 : (iv.defaultMs ?? 300_000)),
    );
    if (r.unreachable) {
      const cap = Math.min(base, 60_000, 1_000 * 2 ** Math.min(d.failures - 1, 16));
      return randomInt(Math.floor(cap / 2), Math.floor(cap) + 1);
    }
    return Math.floor(base * (1 - 0.1 * Math.random()));
  }

  #schedule(): void {
    if (this.#stopped) return;
    const limit = this.opts.concurrency ?? 256;
    const now = Date.now();
    for (const d of this.devices) {
      if (this.#running >= limit) break;
      if (d.running || !d.online || d.nextAt > now) continue;
      this.#run(d);
    }
  }

  #run(d: SimDevice): void {
    d.running = true;
    d.nudged = false;
    this.#running++;
    d.cycle(d.checkins === 0 ? 'start' : 'timer')
      .then((r) => {
        if (r.unreachable) d.failures++;
        else d.failures = 0;
        d.nextAt = d.nudged || r.rebooted === true ? Date.now() : Date.now() + this.#nextDelay(d, r);
      })
      .catch((e: unknown) => {
        d.errors++;
        d.lastError = e instanceof Error ? e.message : String(e);
        d.nextAt = Date.now() + 5_000;
        this.#fail(e);
      })
      .finally(() => {
        // Kept when the device continues at once (nudged meanwhile, rebooted): its next cycle reuses the connection.
        if (this.#releaseConnections && d.nextAt > Date.now()) d.tracker?.http.close();
        d.running = false;
        this.#running--;
        for (const w of this.#waiters) w();
        // A device due again at once (nudged meanwhile, rebooted) continues without a scan of the whole fleet;
        // everyone else is picked up by the 50 ms scan.
        if (
          d.nextAt <= Date.now() &&
          !this.#stopped &&
          d.online &&
          this.#running < (this.opts.concurrency ?? 256)
        )
          this.#run(d);
      });
  }

  /** Devices per state (and the total). */
  counts(): FleetCounts {
    const c = Object.fromEntries(DEVICE_STATES.map((s) => [s, this.#counts.get(s) ?? 0])) as Record<
      DeviceState,
      number
    >;
    return { ...c, total: this.devices.length };
  }

  /** Resolves when `pred` holds (checked at every transition and every 250 ms); rejects after `timeoutMs`. */
  waitFor(pred: (c: FleetCounts, fleet: FleetSimulator) => boolean, timeoutMs: number): Promise<FleetCounts> {
    return new Promise((resolve, reject) => {
      let done = false;
      const check = (): void => {
        if (done) return;
        let ok = false;
        try {
          ok = pred(this.counts(), this);
        } catch (e) {
          finish();
          reject(e instanceof Error ? e : new Error(String(e)));
          return;
        }
        if (ok) {
          finish();
          resolve(this.counts());
        }
      };
      const poll = setInterval(check, 250);
      const timer = setTimeout(() => {
        finish();
        reject(
          new CliError(
            'CLI_SERVER',
            `fleet: condition not reached in ${timeoutMs} ms (${JSON.stringify(this.counts())})`,
          ),
        );
      }, timeoutMs);
      const finish = (): void => {
        done = true;
        clearInterval(poll);
        clearTimeout(timer);
        this.#waiters.delete(check);
      };
      this.#waiters.add(check);
      check();
    });
  }

  /** Asks device `index` to check in now (what an MQTT nudge does). */
  nudge(index: number): void {
    const d = this.devices[index];
    if (d !== undefined) this.#nudge(d);
  }

  /** Asks every online device to check in now. */
  nudgeAll(): void {
    for (const d of this.devices) this.#nudge(d);
  }

  /** Brings a device online (powering it on) or takes it offline. */
  async setOnline(index: number, online: boolean, fresh?: boolean): Promise<void> {
    const d = this.devices[index];
    if (d === undefined || this.#stopped || d.online === online) return;
    if (online) {
      const first = fresh ?? this.#fresh[index] ?? false;
      this.#fresh[index] = false;
      await d.powerOn(first);
      d.nextAt = Date.now();
    } else await d.goOffline();
  }

  /**
   * One bare check-in (POST /d/v1/checkin, nothing else) per online device, `concurrency` at a time, over each
   * device's own mutual-TLS client: the protocol's floor, a baseline for a rollout's wall time.
   */
  async checkinRound(
    concurrency = this.opts.concurrency ?? 256,
  ): Promise<{ seconds: number; errors: number }> {
    const online = this.devices.filter((d) => d.online && d.tracker !== undefined);
    let errors = 0;
    const t0 = performance.now();
    await pool(online, concurrency, async (d) => {
      try {
        await d.tracker!.checkin();
      } catch {
        errors++;
      }
      if (this.#releaseConnections) d.tracker?.http.close();
    });
    return { seconds: (performance.now() - t0) / 1000, errors };
  }

  /** Every device's state, read from its flash through its agent. */
  async snapshot(): Promise<DeviceSnapshot[]> {
    const out: DeviceSnapshot[] = [];
    for (const d of this.devices) {
      let flash: DeviceSnapshot['flash'];
      const a = d.agent;
      if (a?.booted !== undefined) {
        try {
          const st = await a.status();
          flash = {
            bank: st.bank,
            sequence: st.sequence.toString(),
            trial: st.trial,
            updating: st.updating,
            counters: Object.fromEntries([...st.counters].map(([k, v]) => [k, v.toString()])),
            images: a.booted.record.images.map((im) => ({ size: im.size, sha256: hex(im.sha256) })),
            manifestDigest: hex(a.booted.envelope.digest.bytes),
          };
        } catch {
          flash = undefined; // powered off mid-cut
        }
      }
      out.push({
        index: d.index,
        name: d.name,
        serverId: d.serverId,
        state: d.state,
        online: d.online,
        reported:
          d.reported === undefined
            ? undefined
            : { state: d.reported.state, sequence: d.reported.sequence.toString() },
        powerCuts: d.powerCuts,
        errors: d.errors,
        lastError: d.lastError,
        flash,
      });
    }
    return out;
  }

  /** Stops every device (storage stays) and the scheduler. */
  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#tick !== undefined) clearInterval(this.#tick);
    for (const t of this.#timers) clearTimeout(t);
    this.#timers.clear();
    await pool(
      this.devices.filter((d): d is SimDevice => (d as SimDevice | undefined) !== undefined),
      64,
      (d) => d.stop(),
    );
    this.api.close();
    for (const w of this.#waiters) w();
  }
}

/**
 * One simulated device of the fleet: the real device agent (`DeviceAgent`) and status tracker client
 * (`StatusTracker`) — the code `rotor device run` runs — over its own storage, with the simulator's realism
 * injected at the device's edges only: power cuts through the storage layer (SimulatedFs + CutArm: the cut fires at
 * a storage operation during the install, the "device" reboots with a fresh agent on what was durable, RFC 9019 §4
 * / issue 4's power-cut model), a slow link (the payload source throttled to a byte rate), a skewed clock (the agent's
 * `now`, which the use-before condition reads: draft-ietf-suit-manifest §8.4.9.5), a health check that fails
 * (the new image never confirms → the boot stage rolls back), and being offline (not powered / not reachable).
 *
 * The simulator's scheduler calls `cycle()` (one tracker round: deliver, check in, update, deliver) instead of the
 * tracker's own timer loop, so 10,000 devices share one timer; MQTT nudges (the tracker's PushListener) ask the
 * scheduler for an early cycle.
 */
import { randomBytes, randomInt } from 'node:crypto';
import {
  DeviceAgent,
  DeviceError,
  EnclaveCore,
  PushListener,
  SimulatedFs,
  StatusTracker,
  parseSelf,
  sim,
  type AgentConfig,
  type ByteSource,
  type StorageFs,
  type TrackerConfig,
  type TrackerEvent,
  type TransitionRecord,
} from '@rotor/device';
import type { FleetIdentity, OpenableIdentity, OpenedDevice } from './identity.ts';
import type { FactoryImage } from './storage.ts';

/** What the simulator counts a device as. */
export type DeviceState =
  'idle' | 'downloading' | 'installing' | 'confirmed' | 'failed' | 'rolled-back' | 'offline';

export const DEVICE_STATES: readonly DeviceState[] = [
  'idle',
  'downloading',
  'installing',
  'confirmed',
  'failed',
  'rolled-back',
  'offline',
];

const STATE_OF: Record<TransitionRecord['state'], DeviceState> = {
  downloading: 'downloading',
  downloaded: 'downloading',
  installing: 'installing',
  installed: 'installing',
  rebooting: 'installing',
  confirmed: 'confirmed',
  failed: 'failed',
  'rolled-back': 'rolled-back',
};

export interface DeviceFaults {
  /** Cut power at a random storage operation of the next update (once). */
  readonly powerCut: boolean;
  /** The new image's health check fails (it never confirms; the boot stage reverts). */
  readonly failHealthCheck: boolean;
  /** Payload bytes per second (undefined: unthrottled). */
  readonly slowLinkBps: number | undefined;
  /** Seconds added to the device's clock. */
  readonly clockSkewS: number;
}

export interface SimDeviceOptions {
  readonly index: number;
  readonly identity: FleetIdentity | OpenableIdentity;
  readonly fs: StorageFs;
  readonly factory: FactoryImage;
  readonly server: { readonly url: string; readonly ca: string | undefined; readonly timeoutMs: number };
  readonly mqtt: { readonly url: string; readonly ca: string | undefined } | undefined;
  readonly reports: 'all' | 'outcomes';
  readonly chunkSize: number;
  readonly faults: DeviceFaults;
  /** Give the device an enclave (EnclaveCore, sealed backend over its storage, directory `enclave`). */
  readonly enclave: boolean;
  /** Largest storage-operation index a power cut is armed at, counted from the start of the update. */
  readonly powerCutWindow: number;
  readonly onState: (
    d: SimDevice,
    from: DeviceState,
    to: DeviceState,
    record: TransitionRecord | undefined,
  ) => void;
  readonly onNudge: (d: SimDevice) => void;
  readonly onEvent: ((d: SimDevice, e: TrackerEvent) => void) | undefined;
  /** More tracker configuration per device (e.g. an attester over `d.enclave`, a CapabilityManager). */
  readonly trackerExtras: ((d: SimDevice) => Partial<TrackerConfig>) | undefined;
}

/** A throttled view of a payload source: pieces delivered no faster than `bps` bytes per second. */
function throttled(source: ByteSource, bps: number): ByteSource {
  const slice = Math.max(1, Math.floor(bps / 10));
  return {
    async open(uri, opts) {
      const res = await source.open(uri, opts);
      async function* body(): AsyncIterable<Uint8Array> {
        for await (const piece of res.body) {
          for (let o = 0; o < piece.length; o += slice) {
            const part = piece.slice(o, Math.min(piece.length, o + slice));
            await new Promise((r) => setTimeout(r, (part.length * 1000) / bps));
            yield part;
          }
        }
      }
      return {
        start: res.start,
        total: res.total,
        etag: res.etag,
        body: body(),
        close: () => {
          res.close();
        },
      };
    },
  };
}

const isPowerCut = (e: unknown): boolean => e instanceof DeviceError && e.code === 'POWER_CUT';

export class SimDevice {
  readonly o: SimDeviceOptions;
  readonly index: number;
  readonly name: string;
  readonly arm: sim.CutArm | undefined;
  agent: DeviceAgent | undefined;
  tracker: StatusTracker | undefined;
  enclave: EnclaveCore | undefined;
  #push: PushListener | undefined;
  #opened: OpenedDevice | undefined;
  state: DeviceState = 'offline';
  /** The last outcome the server acknowledged (confirmed / failed / rolled-back), with its manifest sequence. */
  reported: { state: TransitionRecord['state']; sequence: bigint } | undefined;
  online = false;
  #cutPlanned: boolean;
  /** Power cuts that fired on this device. */
  powerCuts = 0;
  errors = 0;
  lastError: string | undefined;
  /** When the scheduler runs the next cycle (ms since the epoch); running: a cycle is under way. */
  nextAt = Number.POSITIVE_INFINITY;
  running = false;
  nudged = false;
  failures = 0;
  checkins = 0;
  /** The push listener has connected (and subscribed) at least once. */
  pushConnected = false;

  constructor(o: SimDeviceOptions) {
    this.o = o;
    this.index = o.index;
    this.name = o.identity.name;
    this.arm = o.fs instanceof SimulatedFs ? new sim.CutArm(o.fs) : undefined;
    this.#cutPlanned = o.faults.powerCut && this.arm !== undefined;
  }

  get serverId(): string | undefined {
    return this.o.identity.serverId;
  }

  #set(to: DeviceState, record?: TransitionRecord): void {
    const from = this.state;
    if (from === to) return;
    this.state = to;
    this.o.onState(this, from, to, record);
  }

  /** The simulator's agent options (clock skew, health check with its fault, reboot hook for the cut arm). */
  #agentOptions(get: () => DeviceAgent): Omit<AgentConfig, 'fs' | 'root' | 'keys' | 'reportSigner'> {
    const skew = BigInt(Math.trunc(this.o.faults.clockSkewS));
    const failHealth = this.o.faults.failHealthCheck;
    return {
      chunkSize: this.o.chunkSize,
      now: () => BigInt(Math.floor(Date.now() / 1000)) + skew,
      healthCheck: async (b) => {
        if (failHealth) return false;
        const img = b.record.images[0];
        if (img === undefined) return false;
        const bytes = await get().flash.readAll(b.bank, img.component, img.size, img.chunkSize);
        return sim.isHealthy(bytes);
      },
      onReboot: () => {
        if (this.arm !== undefined) this.arm.reboot();
      },
    };
  }

  /** Opens the device: a software device over its storage, or a device that brings its own (OpenableIdentity). */
  async #open(fresh: boolean): Promise<OpenedDevice> {
    const id = this.o.identity;
    if (id.kind === 'opened') {
      // The health check reads the agent's flash: the agent exists once the device is open.
      const box: { agent?: DeviceAgent } = {};
      const opened = await id.open(
        this.#agentOptions(() => {
          if (box.agent === undefined) throw new Error('the device is not open');
          return box.agent;
        }),
      );
      box.agent = opened.agent;
      return opened;
    }
    if (fresh) await this.o.factory.install(this.o.fs);
    if (this.o.enclave) {
      const fs = this.o.fs;
      let fuse = await fs.read('fuse');
      if (fuse === undefined) {
        fuse = new Uint8Array(randomBytes(32));
        await fs.write('fuse', fuse);
        await fs.fsync('fuse');
        await fs.fsyncDir('');
      }
      await this.enclave?.close();
      this.enclave = await EnclaveCore.open({ fs, dir: 'enclave', fuse });
    }
    const agent: DeviceAgent = new DeviceAgent({
      ...this.#agentOptions(() => agent),
      fs: this.o.fs,
      keys: { agreements: [id.agreement] },
      reportSigner: id.reportSigner,
    });
    return {
      agent,
      server: {
        url: this.o.server.url,
        identity: id.tls,
        ...(this.o.server.ca === undefined ? {} : { ca: this.o.server.ca }),
        timeoutMs: this.o.server.timeoutMs,
      },
      close: () => Promise.resolve(),
    };
  }

  /** Powers the device on (first time: installs the factory state), starts its push listener. */
  async powerOn(fresh: boolean): Promise<void> {
    await this.#opened?.close().catch(() => undefined);
    const opened = await this.#open(fresh);
    this.#opened = opened;
    const agent = opened.agent;
    this.agent = agent;
    const id = this.o.identity;
    this.tracker = new StatusTracker({
      agent,
      server: opened.server,
      ...(id.serverId === undefined ? {} : { deviceId: id.serverId }),
      transitions: this.o.reports,
      fetch: { retries: 5, backoffMs: 200, deadlineMs: 600_000 },
      fallbackSource: 'none',
      progressFlushMs: 2_000,
      ...opened.tracker,
      ...this.o.trackerExtras?.(this),
      onEvent: (e) => {
        this.#onEvent(e);
      },
    });
    const bps = this.o.faults.slowLinkBps;
    if (bps !== undefined && agent.fetchPolicy !== undefined)
      agent.fetchPolicy = { ...agent.fetchPolicy, source: throttled(agent.fetchPolicy.source, bps) };
    try {
      await agent.powerOn();
    } catch (e) {
      if (!isPowerCut(e)) throw e;
      await this.#powerCut();
      return;
    }
    this.online = true;
    if (this.state === 'offline') this.#set('idle');
    await this.#startPush();
  }

  async #startPush(): Promise<void> {
    const m = this.o.mqtt;
    const id = this.o.identity;
    const t = this.tracker;
    if (m === undefined || this.#push !== undefined || t === undefined) return;
    if (id.serverId === undefined) {
      // The push topic is the server's device id: ask the server who we are (RFC 9019 §3 status tracker).
      try {
        const res = await t.http.request('GET', '/d/v1/self', {
          accept: 'application/json',
          maxBody: 16 * 1024,
        });
        if (res.status !== 200) throw new Error(`GET /d/v1/self: HTTP ${res.status}`);
        id.serverId = parseSelf(res.body).id;
      } catch (e) {
        this.errors++;
        this.lastError = `self: ${e instanceof Error ? e.message : String(e)}`;
        return;
      }
    }
    const serverId = id.serverId;
    const identity = this.#opened?.server.identity;
    this.#push = new PushListener({
      url: m.url,
      deviceId: serverId,
      ...(identity === undefined ? {} : { identity }),
      ...(m.ca === undefined ? {} : { ca: m.ca }),
      minBackoffMs: 1_000,
      maxBackoffMs: 30_000,
      onNudge: (why) => {
        if (why === 'push') this.o.onNudge(this);
        else this.pushConnected = true;
      },
    });
    this.#push.start();
  }

  #onEvent(e: TrackerEvent): void {
    this.o.onEvent?.(this, e);
    switch (e.kind) {
      case 'checkin':
        this.checkins++;
        if (e.result.action === 'update' && this.#cutPlanned && this.arm !== undefined) {
          this.#cutPlanned = false;
          this.arm.arm(randomInt(1, Math.max(2, this.o.powerCutWindow)));
        }
        break;
      case 'transition':
        // The agent's own records, in order (the tracker emits each once, oldest first): the state follows them.
        this.#set(STATE_OF[e.record.state], e.record);
        break;
      case 'delivered':
        if (e.record.state === 'confirmed' || e.record.state === 'failed' || e.record.state === 'rolled-back')
          this.reported = { state: e.record.state, sequence: e.record.sequence };
        break;
      case 'error':
        this.errors++;
        this.lastError = `${e.where}: ${'code' in e.error ? String(e.error.code) : ''} ${e.error.message}`;
        break;
      default:
        break;
    }
  }

  /** One tracker round; a power cut reboots the device (fresh agent on the durable state) and is not an error. */
  async cycle(
    why: 'start' | 'timer' | 'push',
  ): Promise<{ intervalS: number | undefined; unreachable: boolean; rebooted?: boolean }> {
    const t = this.tracker;
    if (t === undefined || !this.online) return { intervalS: undefined, unreachable: false };
    try {
      const out = await t.cycle(why);
      this.arm?.disarm();
      return { intervalS: out.checkin?.intervalS, unreachable: out.error?.code === 'TRACKER_UNREACHABLE' };
    } catch (e) {
      if (!isPowerCut(e)) throw e;
      await this.#powerCut();
      // A device that boots checks in at once (the tracker's start), so it finishes what the cut interrupted.
      return { intervalS: undefined, unreachable: false, rebooted: true };
    }
  }

  /** After a cut: the device is off, then boots again on what storage made durable. */
  async #powerCut(): Promise<void> {
    this.powerCuts++;
    this.online = false;
    this.#set('offline');
    this.arm?.disarm();
    const old = this.tracker;
    this.tracker = undefined;
    this.agent = undefined;
    await old?.stop().catch(() => undefined);
    if (this.o.fs instanceof SimulatedFs) this.o.fs.reboot();
    await this.powerOn(false);
    // Back on: the state is whatever the boot and the outbox say; a device with nothing to report is idle.
    if (this.state === 'offline') this.#set('idle');
  }

  /** Takes the device off the network (and powers it down: the agent object is dropped, storage stays). */
  async goOffline(): Promise<void> {
    this.online = false;
    await this.#push?.stop();
    this.#push = undefined;
    const t = this.tracker;
    this.tracker = undefined;
    await t?.stop().catch(() => undefined);
    this.#set('offline');
  }

  async stop(): Promise<void> {
    await this.goOffline();
    await this.#opened?.close().catch(() => undefined);
    this.#opened = undefined;
    await this.enclave?.close().catch(() => undefined);
    this.enclave = undefined;
  }
}

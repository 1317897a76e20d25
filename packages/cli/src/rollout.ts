/**
 * `rotor rollout create|list|status|pause|resume|cancel|watch`: phased rollouts of an approved release (operator API
 * /v1/rollouts). Phases are cumulative percentages of the target; a phase advances when its success threshold is
 * met and the server pauses the rollout when its failure threshold is reached (RFC 9019 §3: the operator decides
 * when and to whom an update goes).
 */
import type { PhaseSpec, RolloutTarget } from '@rotor/server';
import { API_OPTIONS, API_USAGE, withApi, type ApiClient, type Shape } from './api.ts';
import { group, type Command, type Subcommand } from './command.ts';
import { CliError, ExitCode } from './errors.ts';
import { json, out, table, when } from './io.ts';
import { bar, LiveStatus, paint, type Segment } from './progress.ts';
import { noPositionals, oneId, PAGE_OPTIONS, pageQuery } from './release.ts';

export interface Counts {
  total: number;
  pending: number;
  in_progress: number;
  succeeded: number;
  failed: number;
  timed_out: number;
  cancelled: number;
}

export interface RolloutInfo {
  id: string;
  name: string;
  releaseId: string;
  state: 'active' | 'paused' | 'cancelled' | 'completed';
  currentPhase: number;
  phases: PhaseSpec[];
  target: RolloutTarget;
  pauseReason: string | null;
  counts: Counts;
  phaseCounts: Counts[];
  createdAtMs: number;
  updatedAtMs: number;
}

const COUNTS: Shape = {
  total: 'integer',
  pending: 'integer',
  in_progress: 'integer',
  succeeded: 'integer',
  failed: 'integer',
  timed_out: 'integer',
  cancelled: 'integer',
};
export const ROLLOUT_SHAPE: Shape = {
  id: 'string',
  name: 'string',
  releaseId: 'string',
  state: 'string',
  currentPhase: 'integer',
  phases: [
    { percent: 'integer', successThreshold: 'number', failureThreshold: 'number', timeoutMs: 'integer' },
  ],
  target: 'object',
  pauseReason: 'string|null',
  counts: COUNTS,
  phaseCounts: [COUNTS],
  createdAtMs: 'integer',
  updatedAtMs: 'integer',
};
const CREATED_SHAPE: Shape = {
  ...(ROLLOUT_SHAPE as Record<string, Shape>),
  assigned: 'integer',
  excluded: 'integer',
};

const LABEL = /^[A-Za-z0-9._:-]{1,64}$/;

/** `--target` values: all | group=G | tag=T (repeatable) | device=ID (repeatable) | attr=K=V (repeatable). */
export function parseTarget(specs: readonly string[]): RolloutTarget {
  if (specs.length === 0)
    throw new CliError('CLI_USAGE', '--target is required: all, group=G, tag=T, device=ID');
  if (specs.includes('all')) {
    if (specs.length > 1) throw new CliError('CLI_USAGE', '--target all excludes other targets');
    return {};
  }
  const t: RolloutTarget = {};
  for (const s of specs) {
    const eq = s.indexOf('=');
    const kind = eq < 0 ? s : s.slice(0, eq);
    const v = eq < 0 ? '' : s.slice(eq + 1);
    if (kind === 'attr') {
      const eq2 = v.indexOf('=');
      const k = v.slice(0, eq2);
      const val = v.slice(eq2 + 1);
      if (eq2 < 1 || !LABEL.test(k) || val.length > 256)
        throw new CliError('CLI_USAGE', `--target attr=KEY=VALUE, got '${s}'`);
      (t.attributes ??= {})[k] = val;
      continue;
    }
    if (!LABEL.test(v)) throw new CliError('CLI_USAGE', `--target ${kind}=[A-Za-z0-9._:-]{1,64}, got '${s}'`);
    if (kind === 'group') {
      if (t.group !== undefined) throw new CliError('CLI_USAGE', '--target group= given twice');
      t.group = v;
    } else if (kind === 'tag') {
      if (!(t.tags ??= []).includes(v)) t.tags.push(v);
    } else if (kind === 'device') {
      if (!(t.deviceIds ??= []).includes(v)) t.deviceIds.push(v);
    } else
      throw new CliError('CLI_USAGE', `--target: all, group=G, tag=T, device=ID or attr=K=V, got '${s}'`);
  }
  return t;
}

/** Durations: 90s, 10m, 2h, 1d, or plain milliseconds. */
export function parseDuration(s: string, what: string): number {
  const m = /^([0-9]{1,9})(ms|s|m|h|d)?$/.exec(s);
  if (m === null) throw new CliError('CLI_USAGE', `${what}: a duration like 90s, 10m, 2h, 1d`);
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2] ?? 'ms'] ?? 1;
  return Number(m[1]) * unit;
}

/** A fraction in (0, 1]: 0.1 or 10%. */
export function parseFraction(s: string, what: string): number {
  const m = /^([0-9]{1,3}(?:\.[0-9]{1,6})?)(%?)$/.exec(s);
  const v = m === null ? NaN : Number(m[1]) / (m[2] === '%' ? 100 : 1);
  if (!(v > 0 && v <= 1)) throw new CliError('CLI_USAGE', `${what}: a fraction in (0, 1] such as 0.1 or 10%`);
  return v;
}

/** `--phases 1,10,100`: strictly increasing cumulative percentages ending at 100 (the server's rule). */
export function parsePhases(s: string): number[] {
  const parts = s.split(',');
  const out: number[] = [];
  for (const p of parts) {
    if (!/^[0-9]{1,3}$/.test(p)) throw new CliError('CLI_USAGE', `--phases: percentages like 1,10,100`);
    const n = Number(p);
    if (n < 1 || n > 100 || n <= (out.at(-1) ?? 0))
      throw new CliError('CLI_USAGE', '--phases: increasing percentages in 1..100');
    out.push(n);
  }
  if (out.length > 16) throw new CliError('CLI_USAGE', '--phases: at most 16');
  if (out.at(-1) !== 100) throw new CliError('CLI_USAGE', '--phases: the last phase is 100');
  return out;
}

function targetText(t: RolloutTarget): string {
  const parts: string[] = [];
  if (t.group !== undefined) parts.push(`group=${t.group}`);
  for (const x of t.tags ?? []) parts.push(`tag=${x}`);
  for (const x of t.deviceIds ?? []) parts.push(`device=${x}`);
  for (const [k, v] of Object.entries(t.attributes ?? {})) parts.push(`attr=${k}=${v}`);
  return parts.length === 0 ? 'all' : parts.join(' ');
}

function segments(c: Counts): Segment[] {
  return [
    { count: c.succeeded, char: '#', color: 'green' },
    { count: c.failed, char: 'x', color: 'red' },
    { count: c.timed_out, char: '!', color: 'red' },
    { count: c.in_progress, char: '>', color: 'yellow' },
    { count: c.cancelled, char: '-', color: 'dim' },
  ];
}

const STATE_COLOR = { active: 'cyan', paused: 'yellow', cancelled: 'red', completed: 'green' } as const;

/** Status lines of a rollout: a header and one bar per phase (succeeded # failed x timed out ! running >). */
export function statusLines(r: RolloutInfo, color: boolean): string[] {
  const state = paint(r.state, STATE_COLOR[r.state], color);
  const c = r.counts;
  const lines = [
    `rollout ${r.id} ${state}: ${c.succeeded}/${c.total} succeeded, ${c.failed} failed, ${c.timed_out} timed out, ${c.in_progress} in progress`,
  ];
  if (r.pauseReason !== null && r.state === 'paused') lines.push(`  paused: ${r.pauseReason}`);
  r.phases.forEach((p, i) => {
    const pc = r.phaseCounts[i] ?? { ...c, total: 0 };
    const mark = i === r.currentPhase && r.state !== 'completed' ? '*' : ' ';
    const done = pc.succeeded + pc.failed + pc.timed_out + pc.cancelled;
    lines.push(
      `${mark} phase ${i + 1} ${String(p.percent).padStart(3)}% [${bar(segments(pc), pc.total, 30, color)}] ${done}/${pc.total}`,
    );
  });
  return lines;
}

/** Exit code of a rollout's final state: completed 0; paused (failure threshold or operator) or cancelled 4. */
export function exitForState(state: RolloutInfo['state']): number {
  return state === 'completed' ? ExitCode.ok : ExitCode.rejected;
}

const create: Subcommand = {
  name: 'create',
  summary: 'create a phased rollout of an approved release (operator)',
  usage: `create --release ID --target all|group=G|tag=T|device=ID|attr=K=V [--target ...] --phases 1,10,100
       [--failure-threshold 0.1] [--success-threshold 1] [--timeout 1h] [--name NAME] [--watch] [server options]

--phases: cumulative percentages of the target, the last 100. A phase advances once --success-threshold of its
devices succeeded (fraction or percent, default 1 = all that did not time out); the server pauses the rollout
when --failure-threshold of them failed (default 0.1). A device that does not report within --timeout of its
phase start (90s, 10m, 2h, 1d; default 1h) is timed out. Several --target filters all apply (AND).
--watch follows the new rollout as 'rotor rollout watch' does (and exits as it does).
${API_USAGE}`,
  options: {
    ...API_OPTIONS,
    release: { type: 'string' },
    target: { type: 'string', multiple: true },
    phases: { type: 'string' },
    'failure-threshold': { type: 'string' },
    'success-threshold': { type: 'string' },
    timeout: { type: 'string' },
    name: { type: 'string' },
    watch: { type: 'boolean' },
    interval: { type: 'string' },
  },
  async run({ values, positionals }) {
    noPositionals(positionals);
    const releaseId = oneId(values.release === undefined ? [] : [values.release as string], '--release ID');
    const target = parseTarget((values.target as string[] | undefined) ?? []);
    const phasesArg = values.phases as string | undefined;
    if (phasesArg === undefined) throw new CliError('CLI_USAGE', '--phases is required (e.g. 1,10,100)');
    const percents = parsePhases(phasesArg);
    const failureThreshold = parseFraction(
      (values['failure-threshold'] as string | undefined) ?? '0.1',
      '--failure-threshold',
    );
    const successThreshold = parseFraction(
      (values['success-threshold'] as string | undefined) ?? '1',
      '--success-threshold',
    );
    const timeoutMs = parseDuration((values.timeout as string | undefined) ?? '1h', '--timeout');
    const interval = parseInterval(values);
    if (timeoutMs < 1000 || timeoutMs > 30 * 86_400_000)
      throw new CliError('CLI_USAGE', '--timeout: 1s … 30d');
    const name = (values.name as string | undefined) ?? `${releaseId} to ${targetText(target)}`.slice(0, 128);
    if (name.length === 0 || name.length > 128 || /[\u0000-\u001f]/.test(name))
      throw new CliError('CLI_USAGE', '--name: 1..128 characters, no control characters');
    return withApi(values, async (api) => {
      const r = await api.post<RolloutInfo & { assigned: number; excluded: number }>(
        '/v1/rollouts',
        CREATED_SHAPE,
        {
          name,
          releaseId,
          target,
          phases: percents.map((percent) => ({ percent, successThreshold, failureThreshold, timeoutMs })),
        },
      );
      if (values.json === true && values.watch !== true) json(r);
      else if (values.json !== true) {
        out(
          `rollout ${r.id} created: ${r.assigned} devices assigned${r.excluded > 0 ? `, ${r.excluded} excluded (already in an active rollout)` : ''}`,
        );
      }
      return values.watch === true ? watchRollout(api, r.id, interval, values.json === true) : ExitCode.ok;
    });
  },
};

const list: Subcommand = {
  name: 'list',
  summary: 'list rollouts with their counts',
  usage: `list [--limit N] [--after ID] [server options]
${API_USAGE}`,
  options: { ...API_OPTIONS, ...PAGE_OPTIONS },
  async run({ values, positionals }) {
    noPositionals(positionals);
    const q = pageQuery(values);
    return withApi(values, async (api) => {
      const r = await api.get<{ items: RolloutInfo[] }>('/v1/rollouts', { items: [ROLLOUT_SHAPE] }, q);
      if (values.json === true) json(r);
      else
        out(
          table(
            ['ID', 'STATE', 'PHASE', 'SUCCEEDED', 'FAILED', 'TOTAL', 'RELEASE', 'NAME'],
            r.items.map((x) => [
              x.id,
              x.state,
              `${x.currentPhase + 1}/${x.phases.length}`,
              String(x.counts.succeeded),
              String(x.counts.failed),
              String(x.counts.total),
              x.releaseId,
              x.name,
            ]),
          ),
        );
      return ExitCode.ok;
    });
  },
};

function getRollout(api: ApiClient, id: string): Promise<RolloutInfo> {
  return api.get<RolloutInfo>(`/v1/rollouts/${id}`, ROLLOUT_SHAPE);
}

const status: Subcommand = {
  name: 'status',
  summary: 'a rollout: state, counts, a bar per phase',
  usage: `status ID [server options]

Bars per phase: # succeeded, x failed, ! timed out, > in progress, - cancelled, . pending; * marks the
current phase.
${API_USAGE}`,
  options: { ...API_OPTIONS },
  async run({ values, positionals }) {
    const id = oneId(positionals, 'rollout ID');
    return withApi(values, async (api) => {
      const r = await getRollout(api, id);
      if (values.json === true) json(r);
      else {
        const live = new LiveStatus({ enabled: true, stream: process.stdout });
        out(statusLines(r, live.color).join('\n'));
        out(`release ${r.releaseId} · target ${targetText(r.target)} · updated ${when(r.updatedAtMs)}`);
      }
      return ExitCode.ok;
    });
  },
};

function action(name: 'pause' | 'resume' | 'cancel', summary: string): Subcommand {
  return {
    name,
    summary,
    usage: `${name} ID [server options]
${API_USAGE}`,
    options: { ...API_OPTIONS },
    async run({ values, positionals }) {
      const id = oneId(positionals, 'rollout ID');
      return withApi(values, async (api) => {
        const r = await api.post<RolloutInfo>(`/v1/rollouts/${id}/${name}`, ROLLOUT_SHAPE);
        if (values.json === true) json(r);
        else out(`rollout ${r.id} ${r.state}`);
        return ExitCode.ok;
      });
    },
  };
}

/** Consecutive unreachable polls `rollout watch` waits out before giving up (exit 6). */
const MAX_WATCH_FAILURES = 5;

function parseInterval(values: Record<string, unknown>): number {
  const interval = parseDuration((values.interval as string | undefined) ?? '2s', '--interval');
  if (interval < 100 || interval > 600_000) throw new CliError('CLI_USAGE', '--interval: 100ms … 10m');
  return interval;
}

/** Polls a rollout every `interval` ms, drawing its phase bars, until it leaves the active state. */
export async function watchRollout(
  api: ApiClient,
  id: string,
  interval: number,
  asJson: boolean,
): Promise<number> {
  const live = new LiveStatus({ enabled: !asJson, intervalMs: Math.max(interval, 5000) });
  let failures = 0;
  for (;;) {
    let r: RolloutInfo;
    try {
      r = await getRollout(api, id);
      failures = 0;
    } catch (e) {
      // A server restarting or a network blip is waited out (a few intervals); anything else ends the watch.
      if (!(e instanceof CliError && e.code === 'CLI_IO') || ++failures > MAX_WATCH_FAILURES) throw e;
      live.update([`rollout ${id}: ${e.message}; retrying (${failures}/${MAX_WATCH_FAILURES})`]);
      await new Promise((res) => setTimeout(res, interval));
      continue;
    }
    if (r.state !== 'active') {
      live.finish(statusLines(r, live.color));
      if (asJson) json(r);
      return exitForState(r.state);
    }
    live.update(statusLines(r, live.color));
    await new Promise((res) => setTimeout(res, interval));
  }
}

const watch: Subcommand = {
  name: 'watch',
  summary: 'follow a rollout live until it completes, pauses or is cancelled',
  usage: `watch ID [--interval 2s] [server options]

Redraws the rollout's phase bars in place on a terminal (plain lines otherwise; nothing but the final JSON with
--json) until the rollout leaves the active state. Exit 0: completed; 4: paused (failure threshold reached, or by
an operator) or cancelled; 6: the server stayed unreachable for ${MAX_WATCH_FAILURES} polls in a row.
${API_USAGE}`,
  options: { ...API_OPTIONS, interval: { type: 'string' } },
  async run({ values, positionals }) {
    const id = oneId(positionals, 'rollout ID');
    const interval = parseInterval(values);
    return withApi(values, (api) => watchRollout(api, id, interval, values.json === true));
  },
};

export const rolloutCommand: Command = group(
  'rollout',
  'phased rollouts: create, follow, pause, resume, cancel',
  [
    create,
    list,
    status,
    action('pause', 'pause a rollout (operator)'),
    action('resume', 'resume a paused rollout (operator)'),
    action('cancel', 'cancel a rollout (operator)'),
    watch,
  ],
);

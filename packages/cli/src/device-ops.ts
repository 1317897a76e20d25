/**
 * Operator subcommands of `rotor device` (beside `device run`, which runs a device): list, show, disable, enable,
 * attest, rotate-rot, quarantine — over the operator API (/v1/devices, issue 7's attestation, RoT and policy
 * routes). Disabling a device or quarantining it takes effect at its next request (the server drops its cached
 * device authentications).
 */
import { API_OPTIONS, API_USAGE, withApi, type ApiClient, type Shape } from './api.ts';
import type { Subcommand } from './command.ts';
import { CliError, ExitCode } from './errors.ts';
import { json, out, table, when } from './io.ts';
import { noPositionals, oneId, PAGE_OPTIONS, pageQuery } from './release.ts';

export interface DeviceInfo {
  id: string;
  name: string;
  certSha256: string;
  keyAgreement: string | null;
  hasKek: boolean;
  reportKeyAlg: string | null;
  enabled: boolean;
  group: string | null;
  tags: string[];
  attributes: Record<string, string>;
  createdAtMs: number;
  lastSeenMs: number | null;
}

export const DEVICE_SHAPE: Shape = {
  id: 'string',
  name: 'string',
  certSha256: 'string',
  keyAgreement: 'string|null',
  hasKek: 'boolean',
  reportKeyAlg: 'string|null',
  enabled: 'boolean',
  group: 'string|null',
  tags: ['string'],
  attributes: 'object',
  createdAtMs: 'integer',
  lastSeenMs: 'integer|null',
};

interface PolicyState {
  quarantined: boolean;
  reason: string | null;
  ruleId: string | null;
}
interface RotStatus {
  index: number;
  kid: string;
  rotateRequested: boolean;
  revokedKids: string[];
}
interface AttestationResult {
  id: number;
  status: string;
  createdAtMs: number;
  claims: Record<string, unknown>;
}

/** What a device last reported for one capability (issue 8 module rollouts). */
interface ModuleState {
  name: string;
  moduleId: string;
  version: string;
  state: string;
  reason: string | null;
  updatedAtMs: number;
}

const LABEL = /^[A-Za-z0-9._:-]{1,64}$/;

const list: Subcommand = {
  name: 'list',
  summary: 'list devices (operator, admin, auditor)',
  usage: `list [--group G] [--tag T] [--limit N] [--after ID] [server options]
${API_USAGE}`,
  options: { ...API_OPTIONS, ...PAGE_OPTIONS, group: { type: 'string' }, tag: { type: 'string' } },
  async run({ values, positionals }) {
    noPositionals(positionals);
    const q: Record<string, string | number | undefined> = { ...pageQuery(values) };
    for (const k of ['group', 'tag'] as const) {
      const v = values[k] as string | undefined;
      if (v !== undefined && !LABEL.test(v)) throw new CliError('CLI_USAGE', `--${k}: [A-Za-z0-9._:-]{1,64}`);
      q[k] = v;
    }
    return withApi(values, async (api) => {
      const r = await api.get<{ items: DeviceInfo[] }>('/v1/devices', { items: [DEVICE_SHAPE] }, q);
      if (values.json === true) json(r);
      else
        out(
          table(
            ['ID', 'NAME', 'ENABLED', 'GROUP', 'TAGS', 'LAST SEEN'],
            r.items.map((d) => [
              d.id,
              d.name,
              d.enabled ? 'yes' : 'no',
              d.group ?? '-',
              d.tags.join(',') || '-',
              when(d.lastSeenMs),
            ]),
          ),
        );
      return ExitCode.ok;
    });
  },
};

/** GET that answers undefined for a 404 (a device without a RoT record or attestation yet). */
async function optional<T>(api: ApiClient, path: string, shape: Shape): Promise<T | undefined> {
  try {
    return await api.get<T>(path, shape);
  } catch (e) {
    // Not recorded yet (NOT_FOUND), not readable by this role (FORBIDDEN), or a part the server does not run
    // (capability keys not configured, …): that section is shown as absent. Credentials refused still fail.
    if (e instanceof CliError && e.problem !== undefined && !e.problem.startsWith('AUTH_')) return undefined;
    throw e;
  }
}

const show: Subcommand = {
  name: 'show',
  summary: 'a device: registration, quarantine, root of trust, last attestation',
  usage: `show ID [server options]

The device record, and what the caller's role may read of its policy state (quarantine), recorded root of
trust, newest attestation result and the capability modules it last reported.
${API_USAGE}`,
  options: { ...API_OPTIONS },
  async run({ values, positionals }) {
    const id = oneId(positionals, 'device ID');
    return withApi(values, async (api) => {
      const device = await api.get<DeviceInfo>(`/v1/devices/${id}`, DEVICE_SHAPE);
      const policy = await optional<PolicyState>(api, `/v1/devices/${id}/policy-state`, {
        quarantined: 'boolean',
        reason: 'string|null',
        ruleId: 'string|null',
      });
      const rot = await optional<RotStatus>(api, `/v1/devices/${id}/rot`, {
        index: 'integer',
        kid: 'string',
        rotateRequested: 'boolean',
        revokedKids: ['string'],
      });
      const results = await optional<{ items: AttestationResult[] }>(
        api,
        `/v1/devices/${id}/attestation/results?limit=1`,
        { items: [{ id: 'integer', status: 'string', createdAtMs: 'integer', claims: 'object' }] },
      );
      const attestation = results?.items[0];
      const modules = await optional<{ items: ModuleState[] }>(
        api,
        `/v1/capabilities/devices/${id}/modules`,
        {
          items: [
            {
              name: 'string',
              moduleId: 'string',
              version: 'string',
              state: 'string',
              reason: 'string|null',
              updatedAtMs: 'integer',
            },
          ],
        },
      );
      if (values.json === true) {
        json({
          device,
          policy: policy ?? null,
          rot: rot ?? null,
          attestation: attestation ?? null,
          modules: modules?.items ?? null,
        });
        return ExitCode.ok;
      }
      const rows: string[][] = [
        ['id', device.id],
        ['name', device.name],
        ['enabled', device.enabled ? 'yes' : 'no'],
        ['group', device.group ?? '-'],
        ['tags', device.tags.join(', ') || '-'],
        ...Object.entries(device.attributes).map(([k, v]) => [`attribute ${k}`, v]),
        ['certificate sha256', device.certSha256],
        ['key agreement', device.keyAgreement ?? (device.hasKek ? 'AES-KW KEK' : 'none')],
        ['report key', device.reportKeyAlg ?? 'none'],
        ['created', when(device.createdAtMs)],
        ['last seen', when(device.lastSeenMs)],
      ];
      if (policy !== undefined)
        rows.push([
          'quarantined',
          policy.quarantined
            ? `yes: ${policy.reason ?? ''}${policy.ruleId === null ? '' : ` (rule ${policy.ruleId})`}`
            : 'no',
        ]);
      if (rot !== undefined)
        rows.push([
          'root of trust',
          `key ${rot.index} ${rot.kid.slice(0, 16)}…${rot.rotateRequested ? ' (rotation requested)' : ''}, ${rot.revokedKids.length} revoked`,
        ]);
      if (attestation !== undefined)
        rows.push([
          'attestation',
          `${attestation.status} at ${when(attestation.createdAtMs)} (#${attestation.id})`,
        ]);
      for (const m of modules?.items ?? [])
        rows.push([
          `module ${m.name}`,
          `${m.version} ${m.state}${m.reason === null ? '' : `: ${m.reason}`} (${when(m.updatedAtMs)})`,
        ]);
      out(table(['field', 'value'], rows));
      return ExitCode.ok;
    });
  },
};

function enable(on: boolean): Subcommand {
  const name = on ? 'enable' : 'disable';
  return {
    name,
    summary: on ? 'enable a device (admin)' : 'disable a device: its credentials are refused at once (admin)',
    usage: `${name} ID [server options]
${API_USAGE}`,
    options: { ...API_OPTIONS },
    async run({ values, positionals }) {
      const id = oneId(positionals, 'device ID');
      return withApi(values, async (api) => {
        const d = await api.call<DeviceInfo>('PATCH', `/v1/devices/${id}`, DEVICE_SHAPE, {
          json: { enabled: on },
        });
        if (values.json === true) json(d);
        else out(`device ${d.id} ${d.enabled ? 'enabled' : 'disabled'}`);
        return ExitCode.ok;
      });
    },
  };
}

const attest: Subcommand = {
  name: 'attest',
  summary: 'ask a device to attest at its next contact, or show its results',
  usage: `attest ID [--results [--limit N]] [server options]

Without --results: the verifier asks the device for fresh evidence at its next contact (RFC 9334 §10.2
nonce-based freshness). With --results: its signed attestation results, newest first.
${API_USAGE}`,
  options: { ...API_OPTIONS, results: { type: 'boolean' }, limit: { type: 'string' } },
  async run({ values, positionals }) {
    const id = oneId(positionals, 'device ID');
    return withApi(values, async (api) => {
      if (values.results === true) {
        const { limit } = pageQuery({ limit: values.limit ?? '20' });
        const r = await api.get<{ items: AttestationResult[] }>(
          `/v1/devices/${id}/attestation/results`,
          { items: [{ id: 'integer', status: 'string', createdAtMs: 'integer', claims: 'object' }] },
          { limit },
        );
        if (values.json === true) json(r);
        else
          out(
            table(
              ['RESULT', 'STATUS', 'AT', 'CLAIMS'],
              r.items.map((x) => [
                String(x.id),
                x.status,
                when(x.createdAtMs),
                Object.entries(x.claims)
                  .map(([k, c]) => [k, String((c as { status?: unknown } | null)?.status)])
                  .filter(([, st]) => st !== 'affirming')
                  .map(([k, st]) => `${k}: ${st}`)
                  .join(', ') || 'all affirming',
              ]),
            ),
          );
        return ExitCode.ok;
      }
      if (values.limit !== undefined) throw new CliError('CLI_USAGE', '--limit goes with --results');
      const r = await api.post<{ requested: boolean }>(`/v1/devices/${id}/attestation`, {
        requested: 'boolean',
      });
      if (values.json === true) json({ deviceId: id, ...r });
      else out(`device ${id}: attestation requested at its next contact`);
      return ExitCode.ok;
    });
  },
};

const rotateRot: Subcommand = {
  name: 'rotate-rot',
  summary: "request a rotation of a device's root-of-trust key",
  usage: `rotate-rot ID [server options]

The device rotates its RoT key at its next contact and reports the new chain; the old key is then revoked.
${API_USAGE}`,
  options: { ...API_OPTIONS },
  async run({ values, positionals }) {
    const id = oneId(positionals, 'device ID');
    return withApi(values, async (api) => {
      const r = await api.post<{ requested: boolean }>(`/v1/devices/${id}/rot/rotate`, {
        requested: 'boolean',
      });
      if (values.json === true) json({ deviceId: id, ...r });
      else out(`device ${id}: root-of-trust rotation requested`);
      return ExitCode.ok;
    });
  },
};

const quarantine: Subcommand = {
  name: 'quarantine',
  summary: 'quarantine a device, or lift its quarantine (--lift)',
  usage: `quarantine ID --reason TEXT [--lift] [server options]

A quarantined device is offered no update and no capability module until the quarantine is lifted (audited).
${API_USAGE}`,
  options: { ...API_OPTIONS, reason: { type: 'string' }, lift: { type: 'boolean' } },
  async run({ values, positionals }) {
    const id = oneId(positionals, 'device ID');
    const reason = values.reason as string | undefined;
    if (reason === undefined || reason.length === 0 || reason.length > 200)
      throw new CliError('CLI_USAGE', '--reason: 1..200 characters (audited)');
    const quarantined = values.lift !== true;
    return withApi(values, async (api) => {
      const r = await api.call<{ quarantined: boolean }>(
        'PUT',
        `/v1/devices/${id}/quarantine`,
        { quarantined: 'boolean' },
        { json: { quarantined, reason } },
      );
      if (values.json === true) json({ deviceId: id, ...r });
      else out(`device ${id} ${r.quarantined ? 'quarantined' : 'released from quarantine'}`);
      return ExitCode.ok;
    });
  },
};

/** The operator subcommands, appended to `rotor device`'s list (device.ts). */
export const deviceOpsSubcommands: readonly Subcommand[] = [
  list,
  show,
  enable(false),
  enable(true),
  attest,
  rotateRot,
  quarantine,
];

/**
 * `rotor module …` (capability modules, issue 8: upload, list, show, phased rollouts, revoke, capability manifests)
 * over /v1/capabilities/*, and `rotor revocation show|upload` (the module revocation list's entries; the signed
 * trust revocation list of issue 7, PUT /v1/revocation-list).
 *
 * Module upload body: CBOR [metadata, wasm] (capability-metadata encoding, packages/trust). Metadata may be given
 * as JSON (versions as "1.2.3", imports as "module.name") and is then encoded — and strictly decoded again — here,
 * so a malformed description fails before anything is sent.
 */
import { encode } from '@rotor/cose';
import {
  decodeModuleMetadata,
  encodeModuleMetadata,
  isTrustError,
  MODULE_ABI,
  MODULE_METADATA_MAX_BYTES,
  type ModuleMetadata,
  type ModuleVersion,
} from '@rotor/trust';
import type { ModuleInfo as ServerModuleInfo } from '@rotor/server';
import { API_OPTIONS, API_USAGE, withApi, type ApiClient, type Shape } from './api.ts';
import { group, type Command, type Subcommand } from './command.ts';
import { CliError, ExitCode } from './errors.ts';
import { json, out, readInput, safe, table, when } from './io.ts';
import { noPositionals, oneId, PAGE_OPTIONS, pageQuery } from './release.ts';
import { parseDuration, parseFraction, parseTarget } from './rollout.ts';

/** WebAssembly modules read for upload are bounded (the server's own bound is MAX_MODULE_UPLOAD_BYTES). */
const MAX_WASM = 16 * 1024 * 1024;
const CAP_NAME = /^[a-z][a-z0-9_.-]{0,63}$/;
const VERSION = /^([0-9]{1,10})\.([0-9]{1,10})\.([0-9]{1,10})$/;

/** The server's module record as far as the CLI reads it (MODULE_SHAPE checks these fields). */
type ModuleInfo = Omit<ServerModuleInfo, 'ciphertextSha256' | 'uploadedBy'> & {
  revocationListVersion?: number;
};
const MODULE_SHAPE: Shape = {
  id: 'string',
  name: 'string',
  version: 'string',
  sequenceNumber: 'integer',
  moduleSha256: 'string',
  moduleSize: 'integer',
  deviceClasses: ['string'],
  firmware: { min: 'string', max: 'string|null' },
  dependencies: [{ name: 'string', min: 'string', max: 'string|null' }],
  imports: ['string'],
  revoked: 'boolean',
  revokeReason: 'string|null',
  createdAtMs: 'integer',
  'revocationListVersion?': 'integer',
};

interface ModuleRollout {
  id: string;
  moduleId: string;
  target: Record<string, unknown>;
  phases: { percent: number; durationMs: number }[];
  state: string;
  startedAtMs: number;
  currentPercent: number;
  pauseReason?: string | null;
  counts?: Record<string, number>;
}
const MODULE_ROLLOUT_SHAPE: Shape = {
  id: 'string',
  moduleId: 'string',
  target: 'object',
  phases: [{ percent: 'integer', durationMs: 'integer' }],
  state: 'string',
  startedAtMs: 'integer',
  currentPercent: 'integer',
  'pauseReason?': 'string|null',
  'counts?': 'object',
};

function version(v: unknown, what: string): ModuleVersion {
  const m = typeof v === 'string' ? VERSION.exec(v) : null;
  if (m === null) throw new CliError('CLI_INPUT', `${what}: a version "major.minor.patch"`);
  return [Number(m[1]), Number(m[2]), Number(m[3])];
}

/** Module metadata from its JSON description (see `rotor module upload --help`). */
export function metadataFromJson(v: unknown): ModuleMetadata {
  if (typeof v !== 'object' || v === null || Array.isArray(v))
    throw new CliError('CLI_INPUT', 'metadata: a JSON object');
  const o = v as Record<string, unknown>;
  const known = new Set([
    'name',
    'version',
    'imports',
    'limits',
    'deviceClasses',
    'firmware',
    'dependencies',
    'selfTest',
    'abi',
  ]);
  for (const k of Object.keys(o))
    if (!known.has(k)) throw new CliError('CLI_INPUT', `metadata: unknown field '${k}'`);
  const arr = (x: unknown, what: string): unknown[] => {
    if (x === undefined) return [];
    if (!Array.isArray(x)) throw new CliError('CLI_INPUT', `metadata.${what}: an array`);
    return x;
  };
  const obj = (x: unknown, what: string): Record<string, unknown> => {
    if (typeof x !== 'object' || x === null || Array.isArray(x))
      throw new CliError('CLI_INPUT', `metadata.${what}: an object`);
    return x as Record<string, unknown>;
  };
  const uint = (x: unknown, what: string): number => {
    if (!Number.isSafeInteger(x) || (x as number) < 0)
      throw new CliError('CLI_INPUT', `metadata.${what}: an integer`);
    return x as number;
  };
  const hexBytes = (x: unknown, what: string): Uint8Array => {
    if (typeof x !== 'string' || !/^([0-9a-fA-F]{2})*$/.test(x))
      throw new CliError('CLI_INPUT', `metadata.${what}: hex`);
    return new Uint8Array(Buffer.from(x, 'hex'));
  };
  if (typeof o.name !== 'string') throw new CliError('CLI_INPUT', 'metadata.name: a capability name');
  const limits = obj(o.limits, 'limits');
  const fw = obj(o.firmware, 'firmware');
  const md: ModuleMetadata = {
    name: o.name,
    version: version(o.version, 'metadata.version'),
    imports: arr(o.imports, 'imports').map((i, n) => {
      const m = typeof i === 'string' ? /^([^.]+)\.(.+)$/.exec(i) : null;
      if (m === null) throw new CliError('CLI_INPUT', `metadata.imports[${n}]: "module.name"`);
      return { module: m[1]!, name: m[2]! };
    }),
    limits: {
      memoryPages: uint(limits.memoryPages, 'limits.memoryPages'),
      callMs: uint(limits.callMs, 'limits.callMs'),
      ioBytes: uint(limits.ioBytes, 'limits.ioBytes'),
    },
    deviceClasses: arr(o.deviceClasses, 'deviceClasses').map((c, n) => {
      if (typeof c !== 'string') throw new CliError('CLI_INPUT', `metadata.deviceClasses[${n}]: a string`);
      return c;
    }),
    firmware:
      fw.max === undefined
        ? { min: version(fw.min, 'metadata.firmware.min') }
        : { min: version(fw.min, 'metadata.firmware.min'), max: version(fw.max, 'metadata.firmware.max') },
    dependencies: arr(o.dependencies, 'dependencies').map((d, n) => {
      const dd = obj(d, `dependencies[${n}]`);
      if (typeof dd.name !== 'string') throw new CliError('CLI_INPUT', `metadata.dependencies[${n}].name`);
      const min = version(dd.min, `metadata.dependencies[${n}].min`);
      return dd.max === undefined
        ? { name: dd.name, min }
        : { name: dd.name, min, max: version(dd.max, `metadata.dependencies[${n}].max`) };
    }),
    ...(o.selfTest === undefined
      ? {}
      : {
          selfTest: {
            input: hexBytes(obj(o.selfTest, 'selfTest').input, 'selfTest.input'),
            output: hexBytes(obj(o.selfTest, 'selfTest').output, 'selfTest.output'),
          },
        }),
    abi: o.abi === undefined ? MODULE_ABI : uint(o.abi, 'abi'),
  };
  return md;
}

/** Metadata bytes from a .json description or an already-encoded .cbor file, strictly validated. */
function metadataBytes(path: string): Uint8Array {
  const raw = readInput(path, MODULE_METADATA_MAX_BYTES * 4, 'metadata');
  try {
    if (path.endsWith('.json')) {
      let v: unknown;
      try {
        v = JSON.parse(Buffer.from(raw).toString('utf8'));
      } catch {
        throw new CliError('CLI_INPUT', `metadata ${path} is not JSON`);
      }
      return encodeModuleMetadata(metadataFromJson(v));
    }
    decodeModuleMetadata(raw);
    return raw;
  } catch (e) {
    if (isTrustError(e))
      throw new CliError('CLI_INPUT', `metadata refused: ${e.code}: ${e.message}`, { cause: e });
    throw e;
  }
}

const upload: Subcommand = {
  name: 'upload',
  summary: 'upload a capability module: metadata and WebAssembly (author)',
  usage: `upload --metadata FILE.json|FILE.cbor --wasm FILE [server options]

The metadata (JSON) describes the module:
  { "name": "codec", "version": "1.2.0", "imports": ["rotor.log"],
    "limits": { "memoryPages": 4, "callMs": 500, "ioBytes": 16384 },
    "deviceClasses": ["sensor-gw-v1"], "firmware": { "min": "2.0.0", "max": "3.0.0" },
    "dependencies": [{ "name": "base", "min": "1.0.0" }], "selfTest": { "input": "00", "output": "00" } }
("abi" defaults to ${MODULE_ABI}; a .cbor file is the capability-metadata encoding itself). The server signs the
module's envelope with the capability-signing key and encrypts it once; devices get it wrapped for them alone.
${API_USAGE}`,
  options: { ...API_OPTIONS, metadata: { type: 'string' }, wasm: { type: 'string' } },
  async run({ values, positionals }) {
    noPositionals(positionals);
    const mdPath = values.metadata as string | undefined;
    const wasmPath = values.wasm as string | undefined;
    if (mdPath === undefined || wasmPath === undefined)
      throw new CliError('CLI_USAGE', '--metadata and --wasm are required');
    const md = metadataBytes(mdPath);
    const wasm = readInput(wasmPath, MAX_WASM, 'module');
    if (wasm.length < 8 || wasm[0] !== 0 || wasm[1] !== 0x61 || wasm[2] !== 0x73 || wasm[3] !== 0x6d)
      throw new CliError('CLI_INPUT', `${wasmPath} is not a WebAssembly binary (\\0asm)`);
    return withApi(values, async (api) => {
      const m = await api.call<ModuleInfo>('POST', '/v1/capabilities/modules', MODULE_SHAPE, {
        bytes: encode([md, wasm]),
        contentType: 'application/octet-stream',
      });
      if (values.json === true) json(m);
      else
        out(
          `module ${m.id} uploaded: ${m.name} ${m.version} (${m.moduleSize} bytes, sha256 ${m.moduleSha256})`,
        );
      return ExitCode.ok;
    });
  },
};

function moduleRows(items: readonly ModuleInfo[]): string {
  return table(
    ['ID', 'NAME', 'VERSION', 'SIZE', 'CLASSES', 'REVOKED', 'CREATED'],
    items.map((m) => [
      m.id,
      m.name,
      m.version,
      String(m.moduleSize),
      m.deviceClasses.join(','),
      m.revoked ? `yes: ${m.revokeReason ?? ''}` : 'no',
      when(m.createdAtMs),
    ]),
  );
}

const list: Subcommand = {
  name: 'list',
  summary: 'list capability modules',
  usage: `list [--name CAPABILITY] [--limit N] [--after ID] [server options]
${API_USAGE}`,
  options: { ...API_OPTIONS, ...PAGE_OPTIONS, name: { type: 'string' } },
  async run({ values, positionals }) {
    noPositionals(positionals);
    const name = values.name as string | undefined;
    if (name !== undefined && !CAP_NAME.test(name))
      throw new CliError('CLI_USAGE', '--name: a capability name');
    const q = { ...pageQuery(values), name };
    return withApi(values, async (api) => {
      const r = await api.get<{ items: ModuleInfo[] }>(
        '/v1/capabilities/modules',
        { items: [MODULE_SHAPE] },
        q,
      );
      if (values.json === true) json(r);
      else out(moduleRows(r.items));
      return ExitCode.ok;
    });
  },
};

const show: Subcommand = {
  name: 'show',
  summary: 'show one capability module',
  usage: `show ID [server options]
${API_USAGE}`,
  options: { ...API_OPTIONS },
  async run({ values, positionals }) {
    const id = oneId(positionals, 'module ID');
    return withApi(values, async (api) => {
      const m = await api.get<ModuleInfo>(`/v1/capabilities/modules/${id}`, MODULE_SHAPE);
      if (values.json === true) json(m);
      else
        out(
          table(
            ['field', 'value'],
            [
              ['id', m.id],
              ['capability', `${m.name} ${m.version} (sequence ${m.sequenceNumber})`],
              ['module sha256', m.moduleSha256],
              ['size', `${m.moduleSize} bytes`],
              ['device classes', m.deviceClasses.join(', ')],
              ['firmware', `${m.firmware.min} … ${m.firmware.max ?? 'any'}`],
              ['imports', m.imports.join(', ') || 'none'],
              [
                'dependencies',
                m.dependencies.map((d) => `${d.name} ${d.min} … ${d.max ?? 'any'}`).join(', ') || 'none',
              ],
              ['revoked', m.revoked ? `yes: ${m.revokeReason ?? ''}` : 'no'],
              ['created', when(m.createdAtMs)],
            ],
          ),
        );
      return ExitCode.ok;
    });
  },
};

/** `--phases 10:1h,50:1h,100`: cumulative percent, and how long the phase holds before the next (default 0). */
function parseModulePhases(s: string): { percent: number; durationMs: number }[] {
  const phases = s.split(',').map((p) => {
    const m = /^([0-9]{1,3})(?::([0-9]{1,9}(?:ms|s|m|h|d)?))?$/.exec(p);
    if (m === null) throw new CliError('CLI_USAGE', `--phases: PERCENT[:DURATION],… such as 10:1h,100`);
    return { percent: Number(m[1]), durationMs: m[2] === undefined ? 0 : parseDuration(m[2], '--phases') };
  });
  let prev = 0;
  for (const p of phases) {
    if (p.percent < 1 || p.percent > 100 || p.percent < prev)
      throw new CliError('CLI_USAGE', '--phases: non-decreasing percentages in 1..100');
    prev = p.percent;
  }
  if (phases.length > 16 || prev !== 100)
    throw new CliError('CLI_USAGE', '--phases: at most 16, the last 100');
  return phases;
}

const rollout: Subcommand = {
  name: 'rollout',
  summary: 'roll a module out in phases to a target (operator)',
  usage: `rollout MODULE_ID --target all|group=G|tag=T|device=ID|attr=K=V [--target ...] --phases 10:1h,100
       [--failure-threshold F] [--success-threshold F] [server options]

Each phase offers the module to a cumulative share of the target and holds for its duration; with thresholds a
phase advances only once that fraction installed it, and that fraction failing pauses the rollout.
${API_USAGE}`,
  options: {
    ...API_OPTIONS,
    target: { type: 'string', multiple: true },
    phases: { type: 'string' },
    'failure-threshold': { type: 'string' },
    'success-threshold': { type: 'string' },
  },
  async run({ values, positionals }) {
    const moduleId = oneId(positionals, 'module ID');
    const target = parseTarget((values.target as string[] | undefined) ?? []);
    const phasesArg = values.phases as string | undefined;
    if (phasesArg === undefined) throw new CliError('CLI_USAGE', '--phases is required (e.g. 10:1h,100)');
    const ft = values['failure-threshold'] as string | undefined;
    const st = values['success-threshold'] as string | undefined;
    const phases = parseModulePhases(phasesArg).map((p) => ({
      ...p,
      ...(ft === undefined ? {} : { failureThreshold: parseFraction(ft, '--failure-threshold') }),
      ...(st === undefined ? {} : { successThreshold: parseFraction(st, '--success-threshold') }),
    }));
    return withApi(values, async (api) => {
      const r = await api.post<ModuleRollout>('/v1/capabilities/rollouts', MODULE_ROLLOUT_SHAPE, {
        moduleId,
        target,
        phases,
      });
      if (values.json === true) json(r);
      else
        out(
          `module rollout ${r.id} ${r.state}: ${r.currentPercent}% of the target offered module ${r.moduleId}`,
        );
      return ExitCode.ok;
    });
  },
};

const rollouts: Subcommand = {
  name: 'rollouts',
  summary: 'list module rollouts, newest first',
  usage: `rollouts [server options]
${API_USAGE}`,
  options: { ...API_OPTIONS },
  async run({ values, positionals }) {
    noPositionals(positionals);
    return withApi(values, async (api) => {
      const r = await api.get<{ items: ModuleRollout[] }>('/v1/capabilities/rollouts', {
        items: [MODULE_ROLLOUT_SHAPE],
      });
      if (values.json === true) json(r);
      else
        out(
          table(
            ['ID', 'MODULE', 'STATE', 'OFFERED', 'PHASES', 'STARTED'],
            r.items.map((x) => [
              x.id,
              x.moduleId,
              x.state,
              `${x.currentPercent}%`,
              x.phases.map((p) => `${p.percent}%`).join(','),
              when(x.startedAtMs),
            ]),
          ),
        );
      return ExitCode.ok;
    });
  },
};

const rolloutStatus: Subcommand = {
  name: 'rollout-status',
  summary: 'a module rollout: state, share offered, device counts',
  usage: `rollout-status ROLLOUT_ID [server options]
${API_USAGE}`,
  options: { ...API_OPTIONS },
  async run({ values, positionals }) {
    const id = oneId(positionals, 'rollout ID');
    return withApi(values, async (api) => {
      const r = await api.get<ModuleRollout>(`/v1/capabilities/rollouts/${id}`, MODULE_ROLLOUT_SHAPE);
      if (values.json === true) json(r);
      else {
        out(
          `module rollout ${r.id} ${r.state}: ${r.currentPercent}% of the target offered module ${r.moduleId}`,
        );
        if (r.pauseReason !== undefined && r.pauseReason !== null) out(`  paused: ${safe(r.pauseReason)}`);
        if (r.counts !== undefined)
          out(
            `  ${Object.entries(r.counts)
              .map(([k, v]) => `${safe(k)} ${String(v)}`)
              .join(', ')}`,
          );
      }
      return ExitCode.ok;
    });
  },
};

function rolloutAction(name: 'pause' | 'resume' | 'cancel'): Subcommand {
  return {
    name: `rollout-${name}`,
    summary: `${name} a module rollout (operator)`,
    usage: `rollout-${name} ROLLOUT_ID [server options]
${API_USAGE}`,
    options: { ...API_OPTIONS },
    async run({ values, positionals }) {
      const id = oneId(positionals, 'rollout ID');
      return withApi(values, async (api) => {
        const r = await api.post<ModuleRollout>(
          `/v1/capabilities/rollouts/${id}/${name}`,
          MODULE_ROLLOUT_SHAPE,
        );
        if (values.json === true) json(r);
        else out(`module rollout ${r.id} ${r.state}`);
        return ExitCode.ok;
      });
    },
  };
}

const revoke: Subcommand = {
  name: 'revoke',
  summary: 'revoke a module: a new signed module revocation list is published (operator, admin)',
  usage: `revoke ID --reason TEXT [server options]

Devices unload a revoked module as soon as they see the new list and never load it again (seed 000 step 7).
${API_USAGE}`,
  options: { ...API_OPTIONS, reason: { type: 'string' } },
  async run({ values, positionals }) {
    const id = oneId(positionals, 'module ID');
    const reason = values.reason as string | undefined;
    if (reason === undefined || reason.length === 0 || reason.length > 256 || /[\u0000-\u001f]/.test(reason))
      throw new CliError('CLI_USAGE', '--reason: 1..256 characters, no control characters (audited)');
    return withApi(values, async (api) => {
      const m = await api.post<ModuleInfo>(`/v1/capabilities/modules/${id}/revoke`, MODULE_SHAPE, { reason });
      if (values.json === true) json(m);
      else
        out(
          `module ${m.id} revoked${m.revocationListVersion === undefined ? '' : ` (revocation list version ${m.revocationListVersion})`}`,
        );
      return ExitCode.ok;
    });
  },
};

/** `--allow name[@min[-max]]`: a capability the manifest authorizes, optionally within a version range. */
function parseAllow(s: string): { name: string; minVersion?: string; maxVersion?: string } {
  const m = /^([a-z][a-z0-9_.-]{0,63})(?:@([0-9.]+)(?:-([0-9.]+))?)?$/.exec(s);
  if (m === null) throw new CliError('CLI_USAGE', `--allow NAME[@MIN[-MAX]], got '${s}'`);
  for (const v of [m[2], m[3]])
    if (v !== undefined && !VERSION.test(v)) throw new CliError('CLI_USAGE', `--allow: version ${v}`);
  return {
    name: m[1]!,
    ...(m[2] === undefined ? {} : { minVersion: m[2] }),
    ...(m[3] === undefined ? {} : { maxVersion: m[3] }),
  };
}

const manifest: Subcommand = {
  name: 'manifest',
  summary: 'issue a signed capability manifest for a device group (operator, admin)',
  usage: `manifest (--group G | --default) --allow NAME[@MIN[-MAX]] [--allow ...] [server options]

The capability manifest lists the capabilities a device of the group may run (seed 000 §1); a module it does
not authorize is refused by the device. --default issues the manifest of devices whose group has none.
${API_USAGE}`,
  options: {
    ...API_OPTIONS,
    group: { type: 'string' },
    default: { type: 'boolean' },
    allow: { type: 'string', multiple: true },
  },
  async run({ values, positionals }) {
    noPositionals(positionals);
    const g = values.group as string | undefined;
    if ((g === undefined) === (values.default !== true))
      throw new CliError('CLI_USAGE', 'one of --group G or --default');
    if (g !== undefined && !/^[A-Za-z0-9._:-]{1,64}$/.test(g))
      throw new CliError('CLI_USAGE', '--group: a label');
    const modules = ((values.allow as string[] | undefined) ?? []).map(parseAllow);
    return withApi(values, async (api) => {
      const r = await api.post<{ version: number; group: string | null }>(
        '/v1/capabilities/manifests',
        { version: 'integer', group: 'string|null' },
        { group: g ?? null, modules },
      );
      if (values.json === true) json(r);
      else
        out(
          `capability manifest version ${r.version} issued for ${r.group === null ? 'the default' : `group ${r.group}`}`,
        );
      return ExitCode.ok;
    });
  },
};

export const moduleCommand: Command = group(
  'module',
  'capability modules: upload, list, show, rollouts, revoke, manifests',
  [
    upload,
    list,
    show,
    rollout,
    rollouts,
    rolloutStatus,
    rolloutAction('pause'),
    rolloutAction('resume'),
    rolloutAction('cancel'),
    revoke,
    manifest,
  ],
);

// ---------------------------------------------------------------------------------------------------------------
// rotor revocation

async function revokedModules(api: ApiClient): Promise<ModuleInfo[]> {
  const revoked: ModuleInfo[] = [];
  let after: string | undefined;
  for (let page = 0; page < 1000; page++) {
    const r = await api.get<{ items: ModuleInfo[] }>(
      '/v1/capabilities/modules',
      { items: [MODULE_SHAPE] },
      {
        limit: 1000,
        after,
      },
    );
    revoked.push(...r.items.filter((m) => m.revoked));
    if (r.items.length < 1000) break;
    after = r.items.at(-1)?.id;
  }
  return revoked;
}

const revocationShow: Subcommand = {
  name: 'show',
  summary: 'what the module revocation list revokes (digests, reasons)',
  usage: `show [server options]

The entries of the newest signed module revocation list, as the catalog records them: each revoked module's
digest and reason. (Devices fetch the signed list itself over mutual TLS.)
${API_USAGE}`,
  options: { ...API_OPTIONS },
  async run({ values, positionals }) {
    noPositionals(positionals);
    return withApi(values, async (api) => {
      const revoked = await revokedModules(api);
      if (values.json === true)
        json({
          items: revoked.map((m) => ({
            moduleId: m.id,
            name: m.name,
            version: m.version,
            moduleSha256: m.moduleSha256,
            reason: m.revokeReason,
          })),
        });
      else
        out(
          table(
            ['MODULE', 'CAPABILITY', 'VERSION', 'SHA256', 'REASON'],
            revoked.map((m) => [m.id, m.name, m.version, m.moduleSha256, m.revokeReason ?? '']),
          ),
        );
      return ExitCode.ok;
    });
  },
};

const revocationUpload: Subcommand = {
  name: 'upload',
  summary: 'upload a newer signed trust revocation list (operator, admin)',
  usage: `upload --file LIST [server options]

LIST is a COSE_Sign1 revocation list signed by a key of the trust anchors' revocation role; the server verifies it
(newer version, unexpired) and applies it at once: revoked digests, RoT keys and devices.
${API_USAGE}`,
  options: { ...API_OPTIONS, file: { type: 'string' } },
  async run({ values, positionals }) {
    noPositionals(positionals);
    const file = values.file as string | undefined;
    if (file === undefined) throw new CliError('CLI_USAGE', '--file is required');
    const bytes = readInput(file, 8 * 1024 * 1024, 'revocation list');
    return withApi(values, async (api) => {
      const r = await api.call<{ version: number }>(
        'PUT',
        '/v1/revocation-list',
        { version: 'integer' },
        {
          bytes,
          contentType: 'application/octet-stream',
        },
      );
      if (values.json === true) json(r);
      else out(`revocation list version ${r.version} accepted`);
      return ExitCode.ok;
    });
  },
};

export const revocationCommand: Command = group(
  'revocation',
  'revocation lists: show module revocations, upload',
  [revocationShow, revocationUpload],
);

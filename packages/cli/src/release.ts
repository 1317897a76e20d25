/**
 * `rotor release upload|list|show|approve`: firmware releases on the fleet server (operator API /v1/payloads,
 * /v1/releases). An author uploads the payloads (content-addressed by SHA-256) and then the signed SUIT envelope
 * (the server authenticates it against the registered author keys, draft-ietf-suit-manifest §8.3); an operator
 * approves it (RFC 9019 §3/§4: a co-signature, payloads encrypted once, the content key wrapped per device).
 */
import { createHash } from 'node:crypto';
import { API_OPTIONS, API_USAGE, idSegment, withApi, type ApiClient, type Shape } from './api.ts';
import { group, type Command, type Subcommand } from './command.ts';
import { CliError, ExitCode } from './errors.ts';
import { json, MAX_ENVELOPE, out, readInput, table, when } from './io.ts';
import { bar, LiveStatus } from './progress.ts';

/** Payloads read for upload are bounded (the server applies its own --max-upload-bytes on top). */
export const MAX_PAYLOAD = 512 * 1024 * 1024;
const SUIT_ENVELOPE_TYPE = 'application/suit-envelope+cose';

export interface ReleaseInfo {
  id: string;
  envelopeSha256: string;
  sequenceNumber: string;
  authorKeyId: string;
  uploadedBy: string;
  status: string;
  payloads: string[];
  createdAtMs: number;
}

export const RELEASE_SHAPE: Shape = {
  id: 'string',
  envelopeSha256: 'string',
  sequenceNumber: 'string',
  authorKeyId: 'string',
  uploadedBy: 'string',
  status: 'string',
  payloads: ['string'],
  createdAtMs: 'integer',
};

/** --limit / --after of a list page (the server's pageQuery: 1..1000). */
export function pageQuery(values: Record<string, unknown>): { limit: number; after?: string } {
  const raw = (values.limit as string | undefined) ?? '100';
  const limit = Number(raw);
  if (!/^[0-9]{1,4}$/.test(raw) || limit < 1 || limit > 1000)
    throw new CliError('CLI_USAGE', '--limit: 1 … 1000');
  const after = values.after as string | undefined;
  return after === undefined ? { limit } : { limit, after: idSegment(after, '--after') };
}

export const PAGE_OPTIONS = { limit: { type: 'string' }, after: { type: 'string' } } as const;

function releaseLines(r: ReleaseInfo): string {
  return table(
    ['field', 'value'],
    [
      ['id', r.id],
      ['status', r.status],
      ['sequence', r.sequenceNumber],
      ['envelope sha256', r.envelopeSha256],
      ['author key', r.authorKeyId],
      ['uploaded by', r.uploadedBy],
      ['created', when(r.createdAtMs)],
      ...r.payloads.map((p, i) => [i === 0 ? 'payloads' : '', p]),
    ],
  );
}

const sha256hex = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

const upload: Subcommand = {
  name: 'upload',
  summary: 'upload payloads and a signed SUIT envelope (author)',
  usage: `upload --envelope FILE [--payload FILE ...] [server options]

Uploads each payload (PUT /v1/payloads/<sha256>: content-addressed, an existing one is kept) and then the
envelope (POST /v1/releases). The server authenticates the envelope against the registered author keys and
refuses it when a payload it names is missing. Prints the new release id (--json: the release).
${API_USAGE}`,
  options: { ...API_OPTIONS, envelope: { type: 'string' }, payload: { type: 'string', multiple: true } },
  async run({ values }) {
    const envPath = values.envelope as string | undefined;
    if (envPath === undefined) throw new CliError('CLI_USAGE', '--envelope is required');
    const envelope = readInput(envPath, MAX_ENVELOPE, 'envelope');
    const payloadPaths = (values.payload as string[] | undefined) ?? [];
    const asJson = values.json === true;
    return withApi(values, async (api) => {
      const live = new LiveStatus({ enabled: !asJson });
      const stored: { file: string; sha256: string; size: number; created: boolean }[] = [];
      for (const [i, file] of payloadPaths.entries()) {
        live.update([
          `uploading payloads [${bar([{ count: i, char: '#', color: 'green' }], payloadPaths.length, 30, live.color)}] ${i}/${payloadPaths.length}`,
        ]);
        const bytes = readInput(file, MAX_PAYLOAD, 'payload');
        const sha256 = sha256hex(bytes);
        const r = await api.call<{ sha256: string; size: number; created: boolean }>(
          'PUT',
          `/v1/payloads/${sha256}`,
          { sha256: 'string', size: 'integer', created: 'boolean' },
          { bytes, contentType: 'application/octet-stream' },
        );
        stored.push({ file, sha256: r.sha256, size: r.size, created: r.created });
      }
      if (payloadPaths.length > 0)
        live.finish([
          `uploaded payloads [${bar([{ count: payloadPaths.length, char: '#', color: 'green' }], payloadPaths.length, 30, live.color)}] ${payloadPaths.length}/${payloadPaths.length}`,
        ]);
      const rel = await api.call<ReleaseInfo>('POST', '/v1/releases', RELEASE_SHAPE, {
        bytes: envelope,
        contentType: SUIT_ENVELOPE_TYPE,
      });
      if (asJson) json({ release: rel, payloads: stored });
      else {
        for (const p of stored)
          out(`payload ${p.sha256} ${p.size} bytes ${p.created ? 'stored' : 'already stored'} (${p.file})`);
        out(`release ${rel.id} uploaded (sequence ${rel.sequenceNumber}, status ${rel.status})`);
      }
      return ExitCode.ok;
    });
  },
};

const list: Subcommand = {
  name: 'list',
  summary: 'list releases',
  usage: `list [--limit N] [--after ID] [server options]
${API_USAGE}`,
  options: { ...API_OPTIONS, ...PAGE_OPTIONS },
  async run({ values, positionals }) {
    noPositionals(positionals);
    const q = pageQuery(values);
    return withApi(values, async (api) => {
      const r = await api.get<{ items: ReleaseInfo[] }>('/v1/releases', { items: [RELEASE_SHAPE] }, q);
      if (values.json === true) json(r);
      else
        out(
          table(
            ['ID', 'STATUS', 'SEQUENCE', 'PAYLOADS', 'CREATED'],
            r.items.map((x) => [
              x.id,
              x.status,
              x.sequenceNumber,
              String(x.payloads.length),
              when(x.createdAtMs),
            ]),
          ),
        );
      return ExitCode.ok;
    });
  },
};

export function noPositionals(positionals: readonly string[]): void {
  if (positionals.length > 0)
    throw new CliError('CLI_USAGE', `unexpected argument '${positionals[0] ?? ''}'`);
}

/** The one positional ID argument of `show ID`, `approve ID`, …. */
export function oneId(positionals: readonly string[], what: string): string {
  if (positionals.length > 1) throw new CliError('CLI_USAGE', `one ${what}, got ${positionals.length}`);
  return idSegment(positionals[0], what);
}

const show: Subcommand = {
  name: 'show',
  summary: 'show one release',
  usage: `show ID [server options]
${API_USAGE}`,
  options: { ...API_OPTIONS },
  async run({ values, positionals }) {
    const id = oneId(positionals, 'release ID');
    return withApi(values, async (api) => {
      const r = await api.get<ReleaseInfo>(`/v1/releases/${id}`, RELEASE_SHAPE);
      if (values.json === true) json(r);
      else out(releaseLines(r));
      return ExitCode.ok;
    });
  },
};

/** The content encryptions the server's approve route offers, from its OpenAPI document (none: A128CTR only). */
async function offeredEncryptions(api: ApiClient): Promise<string[] | undefined> {
  const doc = await api.get<{ paths: Record<string, unknown> }>('/openapi.json', { paths: 'object' });
  const route = doc.paths['/v1/releases/{id}/approve'] as
    | {
        post?: {
          requestBody?: {
            content?: Record<string, { schema?: { properties?: { encryption?: { enum?: unknown } } } }>;
          };
        };
      }
    | undefined;
  const e = route?.post?.requestBody?.content?.['application/json']?.schema?.properties?.encryption?.enum;
  return Array.isArray(e) ? e.filter((x): x is string => typeof x === 'string') : undefined;
}

const approve: Subcommand = {
  name: 'approve',
  summary: 'approve a release for deployment (operator)',
  usage: `approve ID [--encryption ctr|gcm] [server options]

The server co-signs the author's envelope and encrypts every payload once for per-device delivery (RFC 9019 §4;
draft-ietf-suit-firmware-encryption). --encryption picks the content encryption when the server offers a choice
(its OpenAPI document says which); a server without the choice encrypts with AES-CTR (A128CTR) and refuses any
other request here with exit 5. Approving an approved release changes nothing.
${API_USAGE}`,
  options: { ...API_OPTIONS, encryption: { type: 'string' } },
  async run({ values, positionals }) {
    const id = oneId(positionals, 'release ID');
    const enc = values.encryption as string | undefined;
    if (enc !== undefined && enc !== 'ctr' && enc !== 'gcm')
      throw new CliError('CLI_USAGE', '--encryption: ctr or gcm');
    return withApi(values, async (api) => {
      let body: { encryption: string } | undefined;
      if (enc !== undefined) {
        const offered = await offeredEncryptions(api);
        if (offered === undefined) {
          if (enc !== 'ctr')
            throw new CliError(
              'CLI_UNSUPPORTED',
              `this server encrypts release payloads with AES-CTR only; --encryption ${enc} is not offered`,
            );
        } else if (!offered.includes(enc)) {
          throw new CliError('CLI_UNSUPPORTED', `the server offers --encryption ${offered.join('|')}`);
        } else body = { encryption: enc };
      }
      const r = await api.post<ReleaseInfo>(`/v1/releases/${id}/approve`, RELEASE_SHAPE, body);
      if (values.json === true) json(r);
      else out(`release ${r.id} ${r.status}`);
      return ExitCode.ok;
    });
  },
};

export const releaseCommand: Command = group('release', 'firmware releases: upload, list, show, approve', [
  upload,
  list,
  show,
  approve,
]);

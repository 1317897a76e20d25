/**
 * `rotor token create|list|revoke`: operator API tokens (admin). A new token is printed once — the server keeps
 * only a hash of its secret (packages/server/src/auth.ts) — so write it where it is needed (--out FILE, mode 0600)
 * rather than into a terminal's scrollback when you can.
 */
import { existsSync, writeFileSync } from 'node:fs';
import { API_OPTIONS, API_USAGE, withApi, type Shape } from './api.ts';
import { group, type Command, type Subcommand } from './command.ts';
import { CliError, ExitCode } from './errors.ts';
import { json, out, table, when } from './io.ts';
import { noPositionals, oneId } from './release.ts';

export const ROLES = ['author', 'operator', 'admin', 'auditor'] as const;

interface TokenInfo {
  id: string;
  name: string;
  role: string;
  createdAtMs: number;
  createdBy: string;
  revoked: boolean;
}
const TOKEN_SHAPE: Shape = {
  id: 'string',
  name: 'string',
  role: 'string',
  createdAtMs: 'integer',
  createdBy: 'string',
  revoked: 'boolean',
};

const create: Subcommand = {
  name: 'create',
  summary: 'create an API token with a role (admin); the token is shown once',
  usage: `create --role author|operator|admin|auditor --name NAME [--out FILE] [server options]

Prints the token once on stdout (--json: with its id), or writes it to FILE (created with mode 0600, never
overwritten) and prints only the id. Use it with --token-file FILE or ROTOR_TOKEN_FILE.
${API_USAGE}`,
  options: { ...API_OPTIONS, role: { type: 'string' }, name: { type: 'string' }, out: { type: 'string' } },
  async run({ values, positionals }) {
    noPositionals(positionals);
    const role = values.role as string | undefined;
    if (role === undefined || !(ROLES as readonly string[]).includes(role))
      throw new CliError('CLI_USAGE', `--role: ${ROLES.join(', ')}`);
    const name = values.name as string | undefined;
    if (name === undefined || name.length === 0 || name.length > 128 || /[\u0000-\u001f]/.test(name))
      throw new CliError('CLI_USAGE', '--name: 1..128 characters, no control characters');
    const outFile = values.out as string | undefined;
    // Checked before the token exists (the write below still refuses to overwrite: flag 'wx').
    if (outFile !== undefined && existsSync(outFile))
      throw new CliError('CLI_IO', `${outFile} exists: a token file is never overwritten`);
    return withApi(values, async (api) => {
      const t = await api.post<TokenInfo & { token: string }>(
        '/v1/tokens',
        { ...(TOKEN_SHAPE as Record<string, Shape>), token: 'string' },
        { name, role },
      );
      if (outFile !== undefined) {
        try {
          writeFileSync(outFile, `${t.token}\n`, { mode: 0o600, flag: 'wx' });
        } catch (e) {
          throw new CliError(
            'CLI_IO',
            `token ${t.id} created but not written to ${outFile} (revoke it): ${e instanceof Error ? e.message : String(e)}`,
          );
        }
        if (values.json === true) json({ id: t.id, name: t.name, role: t.role, file: outFile });
        else out(`token ${t.id} (${t.role}) written to ${outFile}`);
      } else if (values.json === true) json(t);
      else out(t.token);
      return ExitCode.ok;
    });
  },
};

const list: Subcommand = {
  name: 'list',
  summary: 'list API tokens, without secrets (admin, auditor)',
  usage: `list [server options]
${API_USAGE}`,
  options: { ...API_OPTIONS },
  async run({ values, positionals }) {
    noPositionals(positionals);
    return withApi(values, async (api) => {
      const r = await api.get<{ items: TokenInfo[] }>('/v1/tokens', { items: [TOKEN_SHAPE] });
      if (values.json === true) json(r);
      else
        out(
          table(
            ['ID', 'ROLE', 'NAME', 'CREATED', 'BY', 'REVOKED'],
            r.items.map((t) => [
              t.id,
              t.role,
              t.name,
              when(t.createdAtMs),
              t.createdBy,
              t.revoked ? 'yes' : 'no',
            ]),
          ),
        );
      return ExitCode.ok;
    });
  },
};

const revoke: Subcommand = {
  name: 'revoke',
  summary: 'revoke an API token (admin)',
  usage: `revoke ID [server options]
${API_USAGE}`,
  options: { ...API_OPTIONS },
  async run({ values, positionals }) {
    const id = oneId(positionals, 'token ID');
    return withApi(values, async (api) => {
      const t = await api.call<TokenInfo>('DELETE', `/v1/tokens/${id}`, TOKEN_SHAPE);
      if (values.json === true) json(t);
      else out(`token ${t.id} revoked`);
      return ExitCode.ok;
    });
  },
};

export const tokenCommand: Command = group('token', 'operator API tokens: create, list, revoke (admin)', [
  create,
  list,
  revoke,
]);

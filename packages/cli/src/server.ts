/**
 * `rotor server` (runs the fleet server until SIGTERM/SIGINT) and `rotor audit verify` (recomputes the audit log's
 * hash chain in the database; exit 4 when an entry was edited, reordered or deleted).
 */
import { join, resolve } from 'node:path';
import { CONFIG_HELP, openDatabase, runServer, verifyAuditLogInDb, type AuditAnchor } from '@rotor/server';
import { group, type Command, type Subcommand } from './command.ts';
import { CliError, ExitCode } from './errors.ts';
import { json, out } from './io.ts';

export const serverCommand: Command = {
  name: 'server',
  summary: 'run the fleet server (operator API, device mTLS API)',
  async run(argv) {
    if (argv.includes('--help') || argv.includes('-h')) {
      process.stdout.write(`usage: ${CONFIG_HELP}`);
      return ExitCode.ok;
    }
    return runServer(argv);
  },
};

const verify: Subcommand = {
  name: 'verify',
  summary: "verify the audit log's hash chain",
  usage: `verify [--data-dir DIR] [--anchor-seq N --anchor-hash HEX] [--json]

Reads the database of DATABASE_URL (environment only), else the embedded database in DIR/pg
(default ./rotor-data; stop the server first: the embedded database has one user at a time).
With an anchor (a {seq, hash} printed by an earlier verify), a truncated log is detected too.
Exit 0: intact; 4: the chain is broken (the first bad entry is named).`,
  options: {
    'data-dir': { type: 'string' },
    'anchor-seq': { type: 'string' },
    'anchor-hash': { type: 'string' },
    json: { type: 'boolean' },
  },
  async run({ values }) {
    const seq = values['anchor-seq'] as string | undefined;
    const hash = values['anchor-hash'] as string | undefined;
    if ((seq === undefined) !== (hash === undefined))
      throw new CliError('CLI_USAGE', '--anchor-seq and --anchor-hash go together');
    if (seq !== undefined && !/^[1-9][0-9]{0,15}$/.test(seq))
      throw new CliError('CLI_USAGE', '--anchor-seq: a positive integer');
    if (hash !== undefined && !/^[0-9a-fA-F]{64}$/.test(hash))
      throw new CliError('CLI_USAGE', '--anchor-hash: 64 hex digits');
    const anchor: AuditAnchor | undefined =
      seq !== undefined && hash !== undefined ? { seq: Number(seq), hash } : undefined;
    const databaseUrl = process.env.DATABASE_URL === '' ? undefined : process.env.DATABASE_URL;
    const dataDir = resolve((values['data-dir'] as string | undefined) ?? 'rotor-data');
    const db = await openDatabase({ databaseUrl, dataDir: join(dataDir, 'pg') });
    try {
      const r = await verifyAuditLogInDb(db, anchor === undefined ? {} : { anchor });
      if (values.json === true) json(r);
      else if (r.ok)
        out(
          `audit log intact: ${r.count} entries${r.head === undefined ? '' : `, head seq ${r.head.seq} hash ${r.head.hash}`}`,
        );
      else out(`audit log BROKEN at entry ${r.seq}: ${r.reason} (${r.count} entries verified before it)`);
      return r.ok ? ExitCode.ok : ExitCode.rejected;
    } finally {
      await db.close();
    }
  },
};

export const auditCommand: Command = group('audit', 'verify the server audit log', [verify]);

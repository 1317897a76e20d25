/**
 * The storage abstraction: one SQL dialect (PostgreSQL), two engines. `openDatabase` returns an embedded PGlite
 * (Postgres compiled to WebAssembly, in a data directory) or a `pg` pool on a real PostgreSQL (DATABASE_URL). Both
 * parse values the same way: int8 → number (throws past 2^53), bytea → Uint8Array, json/jsonb → parsed, numeric
 * → string, so the same code and the same tests run on both.
 */
import { ServerError } from '../errors.ts';

export type Row = Record<string, unknown>;

export interface Queryable {
  /** One statement with $n parameters. */
  readonly query: <R = Row>(sql: string, params?: readonly unknown[]) => Promise<R[]>;
  /** Several statements, no parameters (migrations). */
  readonly exec: (sql: string) => Promise<void>;
}

export interface Db extends Queryable {
  readonly engine: 'pglite' | 'postgres';
  /** Runs `fn` in one transaction (BEGIN … COMMIT; ROLLBACK on throw). */
  readonly transaction: <T>(fn: (tx: Queryable) => Promise<T>) => Promise<T>;
  /** Runs `fn` on one dedicated connection (session-level advisory locks). */
  readonly session: <T>(fn: (s: Queryable) => Promise<T>) => Promise<T>;
  readonly close: () => Promise<void>;
  /**
   * Single statements whose commit does not wait for the WAL flush (PostgreSQL synchronous_commit = off): for
   * advisory writes only (a device's last-seen time), which a database crash may lose — never partially, never
   * out of order with later durable commits' effects on other rows. Undefined: use `query`.
   */
  readonly relaxed?: Queryable;
  /**
   * PostgreSQL only: LISTEN on `channel` over a dedicated connection, reconnecting when it is lost; `connected`
   * reports each change of that connection's state. Undefined on PGlite (one process owns the database: there is
   * nobody else to hear from).
   */
  readonly listen?: (channel: string, handlers: ListenHandlers) => Listening;
}

export interface Listening {
  /**
   * Resolves once every notification committed before this call has been delivered to `notify` (a round trip on
   * the listening connection, shared by concurrent callers; PostgreSQL sends pending notifications before the
   * reply). Rejects if the connection is down.
   */
  readonly sync: () => Promise<void>;
  readonly stop: () => Promise<void>;
}

export interface ListenHandlers {
  readonly notify: (payload: string) => void;
  readonly connected: (up: boolean) => void;
}

export function parseInt8(v: string): number {
  const n = Number(v);
  if (!Number.isSafeInteger(n)) throw new ServerError('INTERNAL', 'int8 value beyond 2^53');
  return n;
}

export interface OpenOptions {
  /** PostgreSQL URL; unset: PGlite. */
  readonly databaseUrl?: string | undefined;
  /** PGlite data directory; unset: in memory (tests). */
  readonly dataDir?: string | undefined;
  /** pg pool size. */
  readonly poolSize?: number;
}

export async function openDatabase(opts: OpenOptions): Promise<Db> {
  if (opts.databaseUrl !== undefined) {
    const { openPostgres } = await import('./postgres.ts');
    return openPostgres(opts.databaseUrl, opts.poolSize ?? 10);
  }
  const { openPglite } = await import('./pglite.ts');
  return openPglite(opts.dataDir);
}

/** The row, or throws NOT_FOUND. */
export function one<R>(rows: readonly R[], what: string): R {
  const r = rows[0];
  if (r === undefined) throw new ServerError('NOT_FOUND', `${what} not found`);
  return r;
}

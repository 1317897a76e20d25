/** PostgreSQL through a `pg` connection pool behind the Db interface. */
import pg from 'pg';
import { ServerError } from '../errors.ts';
import { parseInt8, type Db, type ListenHandlers, type Listening, type Queryable, type Row } from './db.ts';

const { Client, Pool, types } = pg;
const RELISTEN_MS = 500;
const INT8_OID = 20;
const NUMERIC_OID = 1700;

function getTypeParser(oid: number, format?: string): (v: string) => unknown {
  if (oid === INT8_OID) return parseInt8;
  if (oid === NUMERIC_OID) return (v: string) => v;
  return (types.getTypeParser as (o: number, f?: string) => (v: string) => unknown)(oid, format);
}

interface Client {
  query: (sql: string, params?: unknown[]) => Promise<{ rows: unknown[] }>;
}

function wrap(c: Client): Queryable {
  return {
    async query<R = Row>(sql: string, params: readonly unknown[] = []): Promise<R[]> {
      return (await c.query(sql, [...params])).rows as R[];
    },
    async exec(sql: string): Promise<void> {
      await c.query(sql);
    },
  };
}

export async function openPostgres(url: string, max: number): Promise<Db> {
  const pool = new Pool({ connectionString: url, max, types: { getTypeParser } });
  // A broken idle connection must not crash the process; the next query gets a fresh one.
  pool.on('error', () => undefined);
  try {
    await pool.query('SELECT 1');
  } catch (e) {
    await pool.end();
    throw new ServerError(
      'DB_UNAVAILABLE',
      `cannot connect to PostgreSQL: ${e instanceof Error ? e.message : String(e)}`,
    );
  }
  const withClient = async <T>(fn: (c: pg.PoolClient) => Promise<T>): Promise<T> => {
    const c = await pool.connect();
    let broken = false;
    try {
      return await fn(c);
    } catch (e) {
      broken = !(e instanceof Error) || !('code' in e);
      throw e;
    } finally {
      c.release(broken);
    }
  };
  const base = wrap({ query: (sql, params) => pool.query(sql, params) });
  let relaxedPool: pg.Pool | undefined;
  const relaxed = wrap({
    query: (sql, params) => {
      if (relaxedPool === undefined) {
        relaxedPool = new Pool({
          connectionString: url,
          max: Math.min(2, max),
          types: { getTypeParser },
          options: '-c synchronous_commit=off',
        });
        relaxedPool.on('error', () => undefined);
      }
      return relaxedPool.query(sql, params);
    },
  });
  const listeners = new Set<() => Promise<void>>();
  const listen = (channel: string, h: ListenHandlers): Listening => {
    if (!/^[a-z_][a-z0-9_]{0,62}$/.test(channel)) throw new ServerError('INTERNAL', 'bad channel name');
    let current: pg.Client | undefined;
    let stopped = false;
    let retry: NodeJS.Timeout | undefined;
    const lost = (c: pg.Client): void => {
      if (current !== c) return;
      current = undefined;
      h.connected(false);
      c.end().catch(() => undefined);
      if (!stopped) {
        retry = setTimeout(() => void connect(), RELISTEN_MS);
        retry.unref();
      }
    };
    const connect = async (): Promise<void> => {
      retry = undefined;
      const c = new Client({ connectionString: url });
      current = c;
      c.on('error', () => {
        lost(c);
      });
      c.on('end', () => {
        lost(c);
      });
      c.on('notification', (m) => {
        if (current === c && m.channel === channel) h.notify(m.payload ?? '');
      });
      try {
        await c.connect();
        await c.query(`LISTEN ${channel}`);
      } catch {
        lost(c);
        return;
      }
      if (stopped || current !== c) {
        await c.end().catch(() => undefined);
        return;
      }
      h.connected(true);
    };
    void connect();
    const stop = async (): Promise<void> => {
      stopped = true;
      listeners.delete(stop);
      if (retry !== undefined) clearTimeout(retry);
      const c = current;
      current = undefined;
      if (c !== undefined) {
        h.connected(false);
        await c.end().catch(() => undefined);
      }
    };
    listeners.add(stop);
    // A ping started after the caller's request arrived; callers arriving while one is in flight share the next.
    let inFlight: Promise<void> | undefined;
    let next: Promise<void> | undefined;
    const ping = (): Promise<void> => {
      const c = current;
      if (c === undefined) return Promise.reject(new ServerError('DB_UNAVAILABLE', 'not listening'));
      return c.query('SELECT 1').then(() => undefined);
    };
    const sync = (): Promise<void> => {
      if (inFlight === undefined) {
        const p = ping().finally(() => {
          inFlight = undefined;
        });
        inFlight = p;
        return p;
      }
      next ??= inFlight
        .catch(() => undefined)
        .then(() => {
          next = undefined;
          return sync();
        });
      return next;
    };
    return { sync, stop };
  };
  return {
    engine: 'postgres',
    query: base.query,
    exec: base.exec,
    transaction: (fn) =>
      withClient(async (c) => {
        await c.query('BEGIN');
        try {
          const r = await fn(wrap({ query: (sql, params) => c.query(sql, params) }));
          await c.query('COMMIT');
          return r;
        } catch (e) {
          await c.query('ROLLBACK').catch(() => undefined);
          throw e;
        }
      }),
    session: (fn) => withClient((c) => fn(wrap({ query: (sql, params) => c.query(sql, params) }))),
    listen,
    relaxed,
    close: async () => {
      await Promise.all([...listeners].map((stop) => stop()));
      await Promise.all([pool.end(), relaxedPool?.end()]);
    },
  };
}

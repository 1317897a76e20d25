/** PostgreSQL through a `pg` connection pool behind the Db interface. */
import pg from 'pg';
import { ServerError } from '../errors.ts';
import { parseInt8, type Db, type Queryable, type Row } from './db.ts';

const { Pool, types } = pg;
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
    close: () => pool.end(),
  };
}

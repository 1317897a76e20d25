/** Embedded PostgreSQL (PGlite, WebAssembly) behind the Db interface. One backend: queries are serialized. */
import { PGlite, types } from '@electric-sql/pglite';
import { parseInt8, type Db, type Queryable, type Row } from './db.ts';

interface PgliteLike {
  readonly query: (sql: string, params?: unknown[]) => Promise<{ rows: unknown[] }>;
  readonly exec: (sql: string) => Promise<unknown>;
}

function wrap(c: PgliteLike): Queryable {
  return {
    query: async <R = Row>(sql: string, params: readonly unknown[] = []): Promise<R[]> =>
      (await c.query(sql, [...params])).rows as R[],
    exec: async (sql: string): Promise<void> => {
      await c.exec(sql);
    },
  };
}

export async function openPglite(dataDir: string | undefined): Promise<Db> {
  const pg = await PGlite.create({
    ...(dataDir === undefined ? {} : { dataDir }),
    parsers: {
      [types.INT8]: (v: string) => parseInt8(v),
      [types.NUMERIC]: (v: string) => v,
    },
  });
  const base = wrap({ query: (sql, params) => pg.query(sql, params), exec: (sql) => pg.exec(sql) });
  return {
    engine: 'pglite',
    query: base.query,
    exec: base.exec,
    transaction: (fn) =>
      pg.transaction((tx) =>
        fn(wrap({ query: (sql, params) => tx.query(sql, params), exec: (sql) => tx.exec(sql) })),
      ),
    session: (fn) => fn(base),
    close: () => pg.close(),
  };
}

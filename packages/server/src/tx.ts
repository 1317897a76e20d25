/** Small shared helpers: hex, and a transaction that appends its audit entry atomically with the change. */
import { appendAudit, type Json } from './audit.ts';
import { actorOf, type Principal } from './auth.ts';
import type { Db, Queryable } from './db/db.ts';

export const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');
/** Runs `fn` in a transaction and appends its audit entry in the same transaction. */
export function auditedTransaction(db: Db, now: () => number) {
  return async function audited<T>(
    p: Principal,
    action: string,
    fn: (tx: Queryable) => Promise<{ result: T; subject: string; details?: { [k: string]: Json } }>,
  ): Promise<T> {
    return db.transaction(async (tx) => {
      const { result, subject, details } = await fn(tx);
      await appendAudit(
        tx,
        { actor: actorOf(p), action, subject, ...(details === undefined ? {} : { details }) },
        now(),
      );
      return result;
    });
  };
}

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

/**
 * Group commit: calls arriving in the same event-loop turn are handed to `run` together (at most `max` per batch,
 * at most `inFlight` batches at once; the rest wait for the next turn). `run` answers every item in order, a value
 * or an Error of its own (that item alone fails). If `run` throws, the batch is retried one item at a time, so a
 * statement that fails for one item fails that item only.
 */
export function groupCommit<I, R>(
  run: (items: readonly I[]) => Promise<readonly (R | Error)[]>,
  opts: { readonly max: number; readonly inFlight: number },
): (item: I) => Promise<R> {
  interface Waiting {
    readonly item: I;
    readonly resolve: (r: R) => void;
    readonly reject: (e: unknown) => void;
  }
  let waiting: Waiting[] = [];
  let inFlight = 0;
  let scheduled = false;
  const settle = (batch: readonly Waiting[], out: readonly (R | Error)[]): void => {
    for (const [i, w] of batch.entries()) {
      const r = out[i];
      if (r instanceof Error) w.reject(r);
      else if (r === undefined && out.length <= i) w.reject(new Error('group commit: no answer for an item'));
      else w.resolve(r as R);
    }
  };
  const runBatch = async (batch: readonly Waiting[]): Promise<void> => {
    let out: readonly (R | Error)[];
    try {
      out = await run(batch.map((w) => w.item));
    } catch (e) {
      if (batch.length === 1) {
        batch[0]!.reject(e);
        return;
      }
      await Promise.all(batch.map((w) => runBatch([w])));
      return;
    }
    settle(batch, out);
  };
  const flush = (): void => {
    scheduled = false;
    while (waiting.length > 0 && inFlight < opts.inFlight) {
      const batch = waiting.length <= opts.max ? waiting : waiting.slice(0, opts.max);
      waiting = waiting.length <= opts.max ? [] : waiting.slice(opts.max);
      inFlight++;
      void runBatch(batch).finally(() => {
        inFlight--;
        if (waiting.length > 0 && !scheduled) {
          scheduled = true;
          setImmediate(flush);
        }
      });
    }
  };
  return (item: I): Promise<R> =>
    new Promise<R>((resolve, reject) => {
      waiting.push({ item, resolve, reject });
      if (!scheduled && inFlight < opts.inFlight) {
        scheduled = true;
        setImmediate(flush);
      }
    });
}

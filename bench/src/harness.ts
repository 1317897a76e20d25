/**
 * The benchmark harness: one entry point (`npm run bench -- <name>`), a readable table, and as the last line one
 * JSON object `{"bench": "<name>", ...figures}`. Every benchmark compares against a baseline measured in the same
 * run (a ratio): the machines are shared and noisy, so bare times mean little.
 */

export type Figures = Record<string, number | string | boolean>;

export interface BenchContext {
  /** Quick mode: a few iterations so CI proves the benchmark still runs; figures are not meaningful. */
  readonly quick: boolean;
  /** Prints a progress or info line (to stderr, so stdout stays table + JSON). */
  log(line: string): void;
}

export interface Benchmark {
  readonly name: string;
  readonly description: string;
  run(ctx: BenchContext): Promise<{ rows: Record<string, string | number>[]; figures: Figures }>;
}

/** Calls `fn` repeatedly for about `ms` milliseconds (after a warm-up) and returns operations per second. */
export async function opsPerSecond(
  fn: () => unknown,
  ms: number,
  opts: { warmup?: number; batch?: number } = {},
): Promise<number> {
  const batch = opts.batch ?? 64;
  const warm = opts.warmup ?? Math.max(1, Math.floor(ms / 10));
  let t0 = performance.now();
  while (performance.now() - t0 < warm) for (let i = 0; i < batch; i++) await fn();
  let n = 0;
  t0 = performance.now();
  let t = t0;
  while (t - t0 < ms) {
    for (let i = 0; i < batch; i++) await fn();
    n += batch;
    t = performance.now();
  }
  return (n * 1000) / (t - t0);
}

/**
 * Runs `a` and `b` in alternating rounds (so drift on a noisy machine hits both alike) and returns the median
 * rate of each. Use it for every ratio a benchmark reports.
 */
export async function compareRates(
  a: () => unknown,
  b: () => unknown,
  opts: { rounds: number; ms: number; batch?: number },
): Promise<{ a: number; b: number }> {
  const ra: number[] = [];
  const rb: number[] = [];
  for (let r = 0; r < opts.rounds; r++) {
    ra.push(await opsPerSecond(a, opts.ms, { batch: opts.batch ?? 64 }));
    rb.push(await opsPerSecond(b, opts.ms, { batch: opts.batch ?? 64 }));
  }
  return { a: median(ra), b: median(rb) };
}

export function median(xs: number[]): number {
  const s = [...xs].sort((x, y) => x - y);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export function round(x: number, digits = 3): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

/** Renders rows as an aligned text table. */
export function table(rows: Record<string, string | number>[]): string {
  if (rows.length === 0) return '';
  const cols = [...new Set(rows.flatMap((r) => Object.keys(r)))];
  const cell = (v: string | number | undefined): string =>
    v === undefined
      ? ''
      : typeof v === 'number'
        ? Number.isInteger(v)
          ? v.toLocaleString('en-US')
          : v.toFixed(3)
        : v;
  const widths = cols.map((c) => Math.max(c.length, ...rows.map((r) => cell(r[c]).length)));
  const line = (vals: string[]): string => vals.map((v, i) => v.padStart(widths[i]!)).join('  ');
  return [
    line(cols),
    line(widths.map((w) => '-'.repeat(w))),
    ...rows.map((r) => line(cols.map((c) => cell(r[c])))),
  ].join('\n');
}

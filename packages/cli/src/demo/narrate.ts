/**
 * Narration of the demo on stderr-free stdout: numbered steps, a progress bar redrawn in place on a terminal (one
 * line per change elsewhere), colors only on a terminal without NO_COLOR (https://no-color.org). With --json nothing
 * is narrated: the result is one JSON document at the end.
 */

export interface Narrator {
  step(n: number, total: number, title: string): void;
  info(line: string): void;
  ok(line: string): void;
  fail(line: string): void;
  missing(line: string): void;
  /** A bar for `done` of `total` with a label; finished when done === total or end() is called. */
  progress(label: string, done: number, total: number, extra?: string): void;
  end(): void;
}

export function narrator(opts: { json: boolean; stream?: NodeJS.WriteStream }): Narrator {
  const s = opts.stream ?? process.stdout;
  const tty = s.isTTY;
  const color = tty && !process.env.NO_COLOR;
  const paint = (t: string, code: number): string => (color ? `\x1b[${code}m${t}\x1b[0m` : t);
  let open = false;
  let lastPlain = '';
  const write = (t: string): void => {
    if (opts.json) return;
    if (open) {
      s.write('\n');
      open = false;
    }
    s.write(`${t}\n`);
  };
  return {
    step(n, total, title) {
      write(paint(`[${n}/${total}] ${title}`, 1));
    },
    info(line) {
      write(`      ${line}`);
    },
    ok(line) {
      write(`      ${paint('ok', 32)}  ${line}`);
    },
    fail(line) {
      write(`      ${paint('FAILED', 31)}  ${line}`);
    },
    missing(line) {
      write(`      ${paint('not yet', 33)}  ${line}`);
    },
    progress(label, done, total, extra = '') {
      if (opts.json) return;
      const w = 28;
      const n = total <= 0 ? w : Math.min(w, Math.round((done / total) * w));
      const text = `      ${label} [${paint('#'.repeat(n), 32)}${'.'.repeat(w - n)}] ${done}/${total}${extra === '' ? '' : `  ${extra}`}`;
      if (tty) {
        s.write(`\r\x1b[2K${text}`);
        open = true;
      } else {
        const key = `${label} ${done}/${total} ${extra}`;
        if (key !== lastPlain) {
          lastPlain = key;
          s.write(`${text}\n`);
        }
      }
    },
    end() {
      if (open && !opts.json) s.write('\n');
      open = false;
    },
  };
}

/** A plain text table (no colors: it is the part people copy). */
export function table(headers: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (r: readonly string[]): string =>
    r
      .map((c, i) => c.padEnd(widths[i]!))
      .join('  ')
      .trimEnd();
  return [line(headers), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n');
}

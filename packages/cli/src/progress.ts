/**
 * Progress bars and live status lines for long work, on stderr (stdout stays the command's result):
 *   - a terminal: the block of lines is redrawn in place (cursor up, clear line);
 *   - not a terminal (a log, a pipe, CI): plain lines, printed when something changed and at most once per interval
 *     (and always the last state);
 *   - --json: nothing at all (the caller passes `enabled: false`).
 * Colors only when useColor(stderr) (NO_COLOR, https://no-color.org; never to a non-terminal).
 */
import { useColor } from './command.ts';

const ESC = '\x1b[';
export const COLORS = { green: 32, red: 31, yellow: 33, cyan: 36, dim: 2 } as const;
export type Color = keyof typeof COLORS;

/** `text` in `color` when colors are on. */
export function paint(text: string, color: Color, on: boolean): string {
  return on ? `${ESC}${COLORS[color]}m${text}${ESC}0m` : text;
}

export interface Segment {
  readonly count: number;
  readonly char: string;
  readonly color?: Color;
}

/**
 * A bar of `width` cells split among segments in proportion to their counts out of `total` (the rest blank '.').
 * Each segment has its own character, so the bar reads the same without color.
 */
export function bar(segments: readonly Segment[], total: number, width: number, color: boolean): string {
  let used = 0;
  let acc = 0;
  let s = '';
  for (const seg of segments) {
    acc += seg.count;
    const end = total <= 0 ? 0 : Math.min(width, Math.round((acc / total) * width));
    const n = Math.max(0, end - used);
    if (n > 0)
      s += seg.color === undefined ? seg.char.repeat(n) : paint(seg.char.repeat(n), seg.color, color);
    used += n;
  }
  return s + '.'.repeat(Math.max(0, width - used));
}

export interface LiveOptions {
  /** False (--json, --quiet): draw nothing. */
  readonly enabled: boolean;
  readonly stream?: NodeJS.WriteStream;
  /** Minimum time between plain (non-terminal) prints. */
  readonly intervalMs?: number;
  readonly now?: () => number;
}

/** A block of status lines, redrawn in place on a terminal or printed as plain lines elsewhere. */
export class LiveStatus {
  readonly #stream: NodeJS.WriteStream;
  readonly #enabled: boolean;
  readonly #tty: boolean;
  readonly #interval: number;
  readonly #now: () => number;
  /** Whether colors are on for this stream. */
  readonly color: boolean;
  #drawn = 0;
  #last = '';
  #lastAt = -Infinity;

  constructor(opts: LiveOptions) {
    this.#stream = opts.stream ?? process.stderr;
    this.#enabled = opts.enabled;
    this.#tty = (this.#stream.isTTY as boolean | undefined) === true;
    this.#interval = opts.intervalMs ?? 5000;
    this.#now = opts.now ?? Date.now;
    this.color = this.#enabled && useColor(this.#stream);
  }

  get tty(): boolean {
    return this.#tty;
  }

  /** Shows `lines` now (terminal) or when due (plain: changed and the interval passed). */
  update(lines: readonly string[]): void {
    this.#show(lines, false);
  }

  /** Shows the final `lines` (always, once) and leaves them on screen. */
  finish(lines: readonly string[]): void {
    this.#show(lines, true);
    this.#drawn = 0;
  }

  #show(lines: readonly string[], final: boolean): void {
    if (!this.#enabled) return;
    const text = lines.join('\n');
    if (this.#tty) {
      if (text === this.#last && !final) return;
      // The cursor sits at the end of the block's last line: back to the start of its first line.
      let s = this.#drawn > 0 ? '\r' : '';
      if (this.#drawn > 1) s += `${ESC}${this.#drawn - 1}A`;
      s += lines.map((l) => `${ESC}2K${l}`).join('\n');
      // Lines left over from a taller previous block are cleared.
      for (let i = lines.length; i < this.#drawn; i++) s += `\n${ESC}2K`;
      if (this.#drawn > lines.length) s += `${ESC}${this.#drawn - lines.length}A`;
      if (final) s += '\n';
      this.#stream.write(s);
      this.#drawn = lines.length;
      this.#last = text;
      return;
    }
    const t = this.#now();
    if (text === this.#last) return;
    if (!final && t - this.#lastAt < this.#interval) return;
    this.#stream.write(`${text}\n`);
    this.#last = text;
    this.#lastAt = t;
  }
}

/**
 * A one-line progress callback `(done, total)` for batch work (factory provisioning): a bar redrawn in place on a
 * terminal, a plain line per tenth elsewhere, nothing when disabled.
 */
export function progressBar(
  label: string,
  opts: { enabled: boolean; stream?: NodeJS.WriteStream },
): (done: number, total: number) => void {
  const live = new LiveStatus({ ...opts, intervalMs: 0 });
  let lastTenth = -1;
  return (done, total) => {
    const frac = total === 0 ? 1 : done / total;
    const line = `${label} [${bar([{ count: done, char: '#', color: 'green' }], total, 30, live.color)}] ${done}/${total}`;
    if (done >= total) {
      live.finish([line]);
      return;
    }
    if (!live.tty) {
      const tenth = Math.floor(frac * 10);
      if (tenth === lastTenth) return;
      lastTenth = tenth;
    }
    live.update([line]);
  };
}

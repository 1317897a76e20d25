/** Output and file helpers shared by the CLI's commands. */
import {
  closeSync,
  fstatSync,
  fsyncSync,
  openSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { CliError } from './errors.ts';

/** Envelopes larger than this are refused before decoding (the decoder's own bound is the same). */
export const MAX_ENVELOPE = 1 << 20;

export function out(line: string): void {
  process.stdout.write(line.endsWith('\n') ? line : `${line}\n`);
}

export function json(t: unknown): void {
  out(JSON.stringify(t, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v), 2));
}

/**
 * Writes a file atomically: temp file, fsync, rename (never a half-written output). The temp file is created afresh
 * with `mode` (a stale one is removed first, so a private file is never briefly wider than 0600) and removed on failure.
 */
export function writeAtomic(path: string, bytes: Uint8Array | string, mode = 0o644): void {
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.tmp`);
  try {
    rmSync(tmp, { force: true });
    writeFileSync(tmp, bytes, { mode, flag: 'wx' });
    const fd = openSync(tmp, 'r');
    fsyncSync(fd);
    closeSync(fd);
    renameSync(tmp, path);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw new CliError('CLI_IO', `cannot write ${path}: ${e instanceof Error ? e.message : String(e)}`);
  }
}

/** Reads a local input file of at most `max` bytes (CLI_IO when unreadable, CLI_INPUT when too large). */
export function readInput(path: string, max: number, what: string): Uint8Array {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (e) {
    throw new CliError(
      'CLI_IO',
      `cannot read ${what} ${path}: ${e instanceof Error ? e.message : String(e)}`,
    );
  }
  try {
    const size = fstatSync(fd).size;
    if (size > max) throw new CliError('CLI_INPUT', `${what} ${path} is larger than ${max} bytes`);
    return new Uint8Array(readFileSync(fd));
  } finally {
    closeSync(fd);
  }
}

/** Text safe for a terminal: C0/C1 controls (escape sequences in server-supplied strings) shown as '?'. */
export function safe(s: string): string {
  return s.replace(/[\u0000-\u001f\u007f-\u009f]/g, '?');
}

/** A plain text table: a header row and left-aligned columns (cells made terminal-safe). */
export function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const cells = [header, ...rows].map((r) => r.map(safe));
  const widths = header.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? '').length)));
  return cells
    .map((r) =>
      r
        .map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i] ?? 0)))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}

/** A time in ms since the epoch as ISO 8601 (UTC, seconds). */
export function when(ms: number | null): string {
  return ms === null ? '-' : new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

/** Local text inputs (PEM keys and certificates, token files) are bounded before they are read. */
export const MAX_TEXT_FILE = 256 * 1024;

/** Reads a local text file of at most `max` bytes (CLI_IO when unreadable, CLI_INPUT when too large). */
export function readTextInput(path: string, what: string, max = MAX_TEXT_FILE): string {
  return new TextDecoder().decode(readInput(path, max, what));
}

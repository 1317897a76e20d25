/** Output and file helpers shared by the CLI's commands. */
import { closeSync, fsyncSync, openSync, renameSync, writeFileSync } from 'node:fs';
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

/** Writes a file atomically: temp file, fsync, rename (never a half-written output). */
export function writeAtomic(path: string, bytes: Uint8Array): void {
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.tmp`);
  try {
    writeFileSync(tmp, bytes, { mode: 0o644 });
    const fd = openSync(tmp, 'r');
    fsyncSync(fd);
    closeSync(fd);
    renameSync(tmp, path);
  } catch (e) {
    throw new CliError('CLI_IO', `cannot write ${path}: ${e instanceof Error ? e.message : String(e)}`);
  }
}

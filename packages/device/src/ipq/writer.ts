/**
 * Coalesces outgoing frames: all frames produced while handling one batch of input (including the promise
 * continuations it triggers) leave in one write, so a pipelined queue costs one system call per batch, not per
 * message.
 */
import type { Writable } from 'node:stream';
import { encodeFrame } from './frame.ts';

export class FrameWriter {
  readonly #out: Writable;
  #pending: Buffer[] = [];
  #scheduled = false;

  constructor(out: Writable) {
    this.#out = out;
  }

  send(payload: Uint8Array): void {
    this.#pending.push(encodeFrame(payload));
    if (!this.#scheduled) {
      this.#scheduled = true;
      setImmediate(() => {
        this.flush();
      });
    }
  }

  flush(): void {
    this.#scheduled = false;
    const p = this.#pending;
    if (p.length === 0) return;
    this.#pending = [];
    if (this.#out.destroyed || !this.#out.writable) return;
    this.#out.write(p.length === 1 ? p[0]! : Buffer.concat(p));
  }
}

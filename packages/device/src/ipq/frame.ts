/**
 * Framing of the inter-processor queue (seed 002 "IPQ"): each frame is a 4-byte big-endian length followed by that
 * many bytes of CBOR. The receiver bounds the length before buffering anything: a longer frame is reported (so the
 * receiver can answer with FRAME_TOO_LARGE) and its bytes are skipped as they arrive, never stored, so the stream
 * stays in step and the receiver keeps serving.
 */

export const FRAME_HEADER_BYTES = 4;
/** Default bound on a frame's payload, both directions. */
export const DEFAULT_MAX_FRAME = 1 << 20;

export function encodeFrame(payload: Uint8Array): Buffer {
  const b = Buffer.allocUnsafe(FRAME_HEADER_BYTES + payload.length);
  b.writeUInt32BE(payload.length, 0);
  b.set(payload, FRAME_HEADER_BYTES);
  return b;
}

export type FrameEvent =
  | { readonly kind: 'frame'; readonly payload: Uint8Array }
  | { readonly kind: 'oversize'; readonly length: number };

const EMPTY = Buffer.alloc(0);

export class FrameReader {
  readonly maxFrame: number;
  #buf: Buffer = EMPTY;
  #skip = 0;

  constructor(maxFrame: number = DEFAULT_MAX_FRAME) {
    this.maxFrame = maxFrame;
  }

  /** Bytes buffered towards an incomplete frame (bounded by maxFrame + header). */
  get buffered(): number {
    return this.#buf.length;
  }

  /** Feeds received bytes; returns the complete frames and oversize notices, in stream order. */
  push(chunk: Buffer): FrameEvent[] {
    let c = chunk;
    if (this.#skip > 0) {
      const n = Math.min(this.#skip, c.length);
      this.#skip -= n;
      c = c.subarray(n);
      if (c.length === 0) return [];
    }
    const buf = this.#buf.length === 0 ? c : Buffer.concat([this.#buf, c]);
    const out: FrameEvent[] = [];
    let off = 0;
    while (buf.length - off >= FRAME_HEADER_BYTES) {
      const len = buf.readUInt32BE(off);
      if (len > this.maxFrame) {
        out.push({ kind: 'oversize', length: len });
        off += FRAME_HEADER_BYTES;
        const avail = buf.length - off;
        if (avail >= len) {
          off += len;
          continue;
        }
        this.#skip = len - avail;
        off = buf.length;
        break;
      }
      if (buf.length - off - FRAME_HEADER_BYTES < len) break;
      out.push({
        kind: 'frame',
        payload: buf.subarray(off + FRAME_HEADER_BYTES, off + FRAME_HEADER_BYTES + len),
      });
      off += FRAME_HEADER_BYTES + len;
    }
    // Keep only the incomplete tail (copied, so a large chunk is not pinned by a small remainder).
    this.#buf = off >= buf.length ? EMPTY : Buffer.from(buf.subarray(off));
    return out;
  }
}

/**
 * The install pipeline: source bytes → (streaming decrypt) → SHA-256 → flash, in constant memory.
 *
 * Sources: the network (a ByteSource: HTTP Range resume, bounded retries with exponential backoff, one overall
 * deadline, a hard size bound), an image already in flash (copy, MF §8.4.10.5), or bytes in memory (integrated
 * payloads, directive-write content).
 *
 * Resume across restarts (network sources): a download record (uri, entity tag, chunk size, manifest digest) is
 * persisted before the first byte is written; after a restart the durable leading full chunks are kept, their
 * bytes are hashed again, and — for an encrypted payload — the decipher is brought to the same position by
 * re-encrypting the stored plaintext prefix with the same content key and IV (this reproduces the exact
 * ciphertext prefix, so no new (key, IV) use arises; a tampered prefix changes the GCM tag and the digest and is
 * refused). The transfer then continues with `Range: bytes=<prefix>-` and `If-Range` (RFC 9110 §14.2, §13.1.5);
 * a server that answers 200 (changed representation or no range support) restarts the image from zero.
 *
 * GCM plaintext reaches flash before the tag is checked (at the end): it lands only in the inactive slot, and the
 * image becomes installable only after the tag and the manifest's digest verified (RFC 9019 §4.1).
 */
import { createHash, type Hash } from 'node:crypto';
import { finished, Readable } from 'node:stream';
import {
  CoseError,
  createContentCipher,
  createContentDecipher,
  type ChunkCipher,
  type EncryptMessage,
} from '@rotor/cose';
import type { ComponentId } from '@rotor/suit';
import { DeviceError } from '../errors.ts';
import type { BankId, Flash } from '../flash/flash.ts';
import {
  downloadName,
  encodeDownload,
  type DownloadRecord,
  type ImageRecord,
  type NvState,
} from '../flash/nvstate.ts';
import { TransientError, type ByteSource, type SourceResponse } from './source.ts';

export interface PayloadDecryption {
  readonly msg: EncryptMessage;
  readonly cek: Uint8Array;
}

export type PayloadInput =
  | { readonly kind: 'fetch'; readonly uri: string; readonly expectedSize: bigint | undefined }
  | { readonly kind: 'image'; readonly bank: BankId; readonly record: ImageRecord }
  | { readonly kind: 'bytes'; readonly data: Uint8Array };

export interface FetchPolicy {
  readonly source: ByteSource;
  /** Retries after the first attempt (default 5). */
  readonly retries?: number;
  /** First backoff, doubled per retry (default 200 ms), capped at `maxBackoffMs` (default 10 s). */
  readonly backoffMs?: number;
  readonly maxBackoffMs?: number;
  /** Overall deadline of one retrieval, across retries (default 10 minutes): slow-drip servers are cut off. */
  readonly deadlineMs?: number;
}

export interface InstallTarget {
  readonly flash: Flash;
  readonly nv: NvState;
  readonly bank: BankId;
  readonly component: ComponentId;
  /** Largest image the slot takes. */
  readonly maxSize: number;
  /** The manifest this image belongs to (a download record of another manifest is never resumed). */
  readonly manifestDigest: Uint8Array;
}

export interface InstallStats {
  /** Bytes taken over from a previous, interrupted attempt (not transferred again). */
  resumedBytes: number;
  /** Network attempts made. */
  attempts: number;
}

const TAG_ALLOWANCE = 16;

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Buffer.compare(a, b) === 0;
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener(
      'abort',
      () => {
        clearTimeout(t);
        resolve();
      },
      { once: true },
    );
  });
}

function decryptError(e: unknown): DeviceError {
  if (e instanceof DeviceError) return e;
  return new DeviceError(
    'PAYLOAD_DECRYPT_FAILED',
    `payload decryption failed: ${e instanceof Error ? e.message : String(e)}`,
    { cause: e },
  );
}

/**
 * Frees a consumed buffer now instead of at the next major GC, by detaching its ArrayBuffer. Only for buffers the
 * pipeline owns (fresh decipher output; source pieces the source hands over, SourceResponse.owned) and that span
 * their whole ArrayBuffer (so no other view shares it). Without this, V8 collects such garbage only once about
 * 64 MiB of external memory has piled up — the pipeline's peak RSS would be that garbage, not its buffers.
 */
function release(b: Uint8Array): void {
  const ab = b.buffer;
  if (ab instanceof ArrayBuffer && b.byteLength > 0 && b.byteOffset === 0 && b.byteLength === ab.byteLength)
    ab.transfer(0);
}

/** Ciphertext gathered per decipher call: fewer, larger updates (and output buffers) than one per socket read. */
const STAGE = 1024 * 1024;

/** Something that takes bytes: undefined when it took them at once, else a promise to wait for (ImageWriter.put). */
type Put = (b: Uint8Array) => Promise<void> | undefined;

/**
 * Streams decrypted, hashed bytes into a writer, skipping output that is already in flash. Ciphertext is copied
 * into one reused stage buffer and deciphered a stage at a time; each output buffer is hashed and copied into the
 * writer, then freed — so the bytes in memory are the stage, one output and the writer's buffers, by
 * construction. push() is synchronous unless the writer has to wait (then it returns a promise).
 */
class Sink {
  readonly hash: Hash = createHash('sha256');
  readonly decipher: ChunkCipher | undefined;
  skip = 0;
  readonly #put: Put;
  #stage: Uint8Array | undefined;
  #staged = 0;

  constructor(decipher: ChunkCipher | undefined, put: Put) {
    this.decipher = decipher;
    this.#put = put;
  }

  /**
   * Takes `input`; when `owned`, the input is released after use (the caller must not touch it again). Returns a
   * promise when the caller must wait for it before the next push.
   */
  push(input: Uint8Array, owned = false): Promise<void> | undefined {
    const p = this.decipher === undefined ? this.#emit(input, false) : this.#stageFrom(input, 0);
    if (!owned) return p;
    if (p === undefined) {
      release(input);
      return undefined;
    }
    return p.then(() => {
      release(input);
    });
  }

  #stageFrom(input: Uint8Array, from: number): Promise<void> | undefined {
    const stage = (this.#stage ??= new Uint8Array(STAGE));
    let off = from;
    while (off < input.length) {
      const n = Math.min(input.length - off, stage.length - this.#staged);
      stage.set(n === input.length ? input : input.subarray(off, off + n), this.#staged);
      this.#staged += n;
      off += n;
      if (this.#staged === stage.length) {
        const p = this.#decipherStage();
        if (p !== undefined) {
          const at = off;
          return p.then(() => this.#stageFrom(input, at));
        }
      }
    }
    return undefined;
  }

  #decipherStage(): Promise<void> | undefined {
    const d = this.decipher!;
    const stage = this.#stage!.subarray(0, this.#staged);
    this.#staged = 0;
    let parts: Uint8Array[];
    try {
      parts = d.updateParts !== undefined ? d.updateParts(stage) : [d.update(stage)];
    } catch (e) {
      throw decryptError(e);
    }
    return this.#emitParts(parts, 0);
  }

  #emitParts(parts: Uint8Array[], from: number): Promise<void> | undefined {
    for (let i = from; i < parts.length; i++) {
      const part = parts[i]!;
      const p = this.#emit(part, true);
      if (p !== undefined) return p.then(() => this.#emitParts(parts, i + 1));
    }
    return undefined;
  }

  /** Hashes and writes `part` (minus what is still to skip); frees it afterwards when `fresh` (decipher output). */
  #emit(part: Uint8Array, fresh: boolean): Promise<void> | undefined {
    let out = part;
    if (this.skip > 0) {
      const n = Math.min(this.skip, out.length);
      this.skip -= n;
      out = out.subarray(n);
    }
    if (out.length === 0) {
      if (fresh) release(part);
      return undefined;
    }
    this.hash.update(out);
    const p = this.#put(out);
    if (!fresh) return p;
    if (p === undefined) {
      release(part);
      return undefined;
    }
    return p.then(() => {
      release(part);
    });
  }

  /** Deciphers and writes what is staged (the source has nothing more at the moment). */
  flush(): Promise<void> | undefined {
    return this.#staged > 0 ? this.#decipherStage() : undefined;
  }

  async end(): Promise<void> {
    if (this.decipher === undefined) return;
    await this.flush();
    if (this.#stage?.buffer instanceof ArrayBuffer) this.#stage.buffer.transfer(0);
    this.#stage = undefined;
    let out: Uint8Array;
    try {
      out = this.decipher.final();
    } catch (e) {
      // RFC 9052 §5.3: an authentication failure yields no plaintext (the slot is never committed).
      throw decryptError(e instanceof CoseError ? e : new Error(String(e)));
    }
    if (out.length > 0) {
      this.hash.update(out);
      await this.#put(out);
    }
  }
}

/**
 * Feeds a response body into the sink. A node stream is consumed through 'data' events — pieces are processed
 * synchronously, and the stream is paused only while the sink waits for the writer — instead of one promise per
 * socket read; other bodies through their async iterator. `check(n)` runs before each piece (bounds).
 */
function drain(res: SourceResponse, sink: Sink, check: (n: number) => void): Promise<void> {
  const { body, pipe } = res;
  const owned = res.owned === true;
  if (pipe !== undefined) return drainPipe(pipe, sink, check);
  if (!(body instanceof Readable))
    return (async () => {
      for await (const piece of body) {
        check(piece.length);
        await sink.push(piece, owned);
        await sink.flush();
      }
    })();
  return new Promise<void>((resolve, reject) => {
    let pending: Promise<void> | undefined;
    let failed = false;
    const fail = (e: unknown): void => {
      if (failed) return;
      failed = true;
      body.off('data', onData);
      body.pause();
      // Never hand the sink back while one of its pushes is still running.
      void Promise.resolve(pending)
        .catch(() => undefined)
        .then(() => {
          reject(e instanceof Error ? e : new Error(String(e)));
        });
    };
    // What is staged is deciphered and written once the loop has no more socket data for now (a stalled or
    // slow server must not keep received bytes from reaching flash and a checkpoint).
    let scheduled = false;
    const wait = (p: Promise<void> | undefined): void => {
      if (p === undefined) {
        if (!scheduled) {
          scheduled = true;
          setImmediate(idle);
        }
        return;
      }
      body.pause();
      pending = p;
      p.then(
        () => {
          pending = undefined;
          if (failed) return;
          body.resume();
          wait(undefined);
        },
        (e: unknown) => {
          pending = undefined;
          fail(e);
        },
      );
    };
    const idle = (): void => {
      scheduled = false;
      if (failed || pending !== undefined) return;
      try {
        const p = sink.flush();
        if (p !== undefined) wait(p);
      } catch (e) {
        fail(e);
      }
    };
    const onData = (piece: Uint8Array): void => {
      if (failed) return;
      try {
        check(piece.length);
        wait(sink.push(piece, owned));
      } catch (e) {
        fail(e);
      }
    };
    body.on('data', onData);
    finished(body, (err) => {
      if (err !== undefined && err !== null) {
        fail(err);
        return;
      }
      void Promise.resolve(pending).then(() => {
        if (!failed) {
          failed = true;
          body.off('data', onData);
          resolve();
        }
      }, fail);
    });
  });
}

/** Push-style consumption (SourceResponse.pipe): pieces are views of the source's read buffer, staged at once. */
function drainPipe(
  pipe: NonNullable<SourceResponse['pipe']>,
  sink: Sink,
  check: (n: number) => void,
): Promise<void> {
  // `busy`: a sink operation still running (the next piece waits for it; the source reads nothing meanwhile).
  let busy: Promise<void> | undefined;
  let scheduled = false;
  let over = false;
  const settle = (p: Promise<void>): Promise<void> => {
    const q: Promise<void> = p.then(() => {
      if (busy === q) busy = undefined;
      schedule();
    });
    busy = q;
    return q;
  };
  // What is staged is deciphered and written once the loop has no more socket data for now (a stalled or slow
  // server must not keep received bytes from reaching flash and a checkpoint).
  const idle = (): void => {
    scheduled = false;
    if (over || busy !== undefined) return;
    let p: Promise<void> | undefined;
    try {
      p = sink.flush();
    } catch (e) {
      p = Promise.reject(e instanceof Error ? e : new Error(String(e)));
    }
    // A failure stays in `busy` and surfaces at the next piece or at the end.
    if (p !== undefined) settle(p).catch(() => undefined);
  };
  const schedule = (): void => {
    if (!scheduled && !over) {
      scheduled = true;
      setImmediate(idle);
    }
  };
  return pipe((piece) => {
    check(piece.length);
    if (busy !== undefined) return settle(busy.then(() => sink.push(piece)));
    const p = sink.push(piece);
    if (p === undefined) {
      schedule();
      return undefined;
    }
    return settle(p);
  }).then(
    async () => {
      over = true;
      await busy;
    },
    async (e: unknown) => {
      over = true;
      await busy?.catch(() => undefined);
      throw e;
    },
  );
}

/**
 * Writes one component image into `target.bank` from `input`, decrypting with `decryption` when given. Returns
 * the image record (size, SHA-256, chunk size) — not yet committed: the caller records it.
 */
export async function installImage(
  target: InstallTarget,
  input: PayloadInput,
  decryption: PayloadDecryption | undefined,
  policy: FetchPolicy | undefined,
  stats: InstallStats = { resumedBytes: 0, attempts: 0 },
): Promise<ImageRecord> {
  const { flash, nv, bank, component } = target;
  const chunkSize = flash.chunkSize;
  const makeDecipher = (): ChunkCipher | undefined => {
    if (decryption === undefined) return undefined;
    try {
      return createContentDecipher(decryption.msg, decryption.cek);
    } catch (e) {
      throw decryptError(e);
    }
  };

  if (input.kind !== 'fetch') {
    await flash.erase(bank, component);
    const w = await flash.writer(bank, component, { maxSize: target.maxSize });
    const sink = new Sink(makeDecipher(), (b) => w.put(b));
    if (input.kind === 'bytes') {
      for (let off = 0; off < input.data.length; off += chunkSize)
        await sink.push(input.data.subarray(off, off + chunkSize));
    } else {
      const r = input.record;
      for await (const c of flash.read(input.bank, r.component, r.size, r.chunkSize)) await sink.push(c);
    }
    await sink.end();
    const size = await w.finish();
    return { component, size, sha256: new Uint8Array(sink.hash.digest()), chunkSize };
  }

  if (policy === undefined) throw new DeviceError('FETCH_FAILED', 'this platform has no payload source');
  // Hard bound on the transfer: the announced image-size when given, never more than the slot (plus the tag).
  const bound = target.maxSize + (decryption === undefined ? 0 : TAG_ALLOWANCE);
  if (input.expectedSize !== undefined && input.expectedSize > BigInt(bound))
    throw new DeviceError('IMAGE_TOO_LARGE', `announced size ${input.expectedSize} exceeds the slot`);
  const maxInput = input.expectedSize === undefined ? bound : Number(input.expectedSize);

  // ---- resume point ----
  const dlName = downloadName(bank, component);
  const wanted: DownloadRecord = {
    uri: input.uri,
    etag: undefined,
    chunkSize,
    manifestDigest: target.manifestDigest,
    decrypted: decryption !== undefined,
    durableChunks: 0,
  };
  const stored = await nv.download(bank, component).catch(() => undefined);
  let record: DownloadRecord;
  let keep = 0;
  if (
    stored !== undefined &&
    stored.uri === wanted.uri &&
    stored.chunkSize === chunkSize &&
    stored.decrypted === wanted.decrypted &&
    sameBytes(stored.manifestDigest, wanted.manifestDigest)
  ) {
    record = stored;
    // Resume only from the last durable checkpoint (flash.ts), and only as far as those chunks are still there.
    keep = Math.min(record.durableChunks, await flash.durablePrefix(bank, component, chunkSize));
  } else {
    await flash.erase(bank, component);
    record = wanted;
    await nv.store.put(dlName, encodeDownload(record));
  }

  const deadlineMs = policy.deadlineMs ?? 600_000;
  const signal = AbortSignal.timeout(deadlineMs);
  // A function, so that checks after an await are not narrowed away: the deadline fires asynchronously.
  const expired = (): boolean => signal.aborted;
  const retries = policy.retries ?? 5;
  let backoff = policy.backoffMs ?? 200;
  const maxBackoff = policy.maxBackoffMs ?? 10_000;

  let carried: SourceResponse | undefined;
  try {
    for (;;) {
      // (Re)start the pipeline at `keep` full chunks. Each durable checkpoint advances the resume point.
      const writer = await flash.writer(bank, component, {
        startChunk: keep,
        maxSize: target.maxSize,
        onCheckpoint: async (chunks) => {
          record = { ...record, durableChunks: chunks };
          await nv.store.put(dlName, encodeDownload(record));
        },
      });
      let done = false;
      try {
        const sink = new Sink(makeDecipher(), (b) => writer.put(b));
        let received = 0;
        if (keep > 0) {
          // Re-hash the kept plaintext and bring the decipher to the same position.
          const prefix = keep * chunkSize;
          const cipher =
            decryption === undefined
              ? undefined
              : createContentCipher(
                  decryption.msg.alg,
                  decryption.cek,
                  decryption.msg.iv!,
                  decryption.msg.protectedBytes,
                  { context: decryption.msg.context },
                );
          let emitted = 0;
          for await (const c of flash.read(bank, component, prefix, chunkSize)) {
            sink.hash.update(c);
            if (cipher !== undefined && sink.decipher !== undefined)
              emitted += sink.decipher.update(cipher.update(c)).length;
          }
          sink.skip = cipher === undefined ? 0 : prefix - emitted;
          received = prefix;
          stats.resumedBytes += prefix;
        }

        let restart = false;
        let attempt = 0;
        let total: number | undefined;
        while (!restart) {
          if (expired())
            throw new DeviceError('FETCH_DEADLINE', `retrieval of ${input.uri} exceeded ${deadlineMs} ms`);
          attempt++;
          stats.attempts++;
          let res: SourceResponse;
          try {
            // A whole representation that ended the previous stretch is consumed, not requested again.
            res =
              carried ??
              (await policy.source.open(input.uri, { offset: received, etag: record.etag, signal }));
            carried = undefined;
          } catch (e) {
            if (expired())
              throw new DeviceError('FETCH_DEADLINE', `retrieval of ${input.uri} exceeded ${deadlineMs} ms`, {
                cause: e,
              });
            if (!(e instanceof TransientError) || attempt > retries) throw fetchFailed(e, input.uri);
            await sleep(backoff, signal);
            backoff = Math.min(backoff * 2, maxBackoff);
            continue;
          }
          try {
            if (res.start !== received) {
              // The server sent the whole representation (changed, or no range support): start over from zero.
              if (received > 0) {
                keep = 0;
                restart = true;
                // Nothing of the old stretch may be resumed from any more: the record first, then the chunks.
                await writer.close();
                record = { ...record, etag: res.etag, durableChunks: 0 };
                await nv.store.put(dlName, encodeDownload(record));
                await flash.erase(bank, component);
                // The next stretch starts with this response (it begins at byte 0) — unless it is a 416's empty
                // stand-in, which carries nothing.
                if (res.total !== 0) carried = res;
                continue;
              }
            }
            if (res.etag !== record.etag) {
              record = { ...record, etag: res.etag };
              await nv.store.put(dlName, encodeDownload(record));
            }
            if (res.total !== undefined) {
              if (res.total > maxInput)
                throw new DeviceError(
                  'IMAGE_TOO_LARGE',
                  `${input.uri} is ${res.total} bytes, more than the bound of ${maxInput}`,
                );
              total = res.total;
            }
            const limit = total;
            await drain(res, sink, (n) => {
              received += n;
              if (received > maxInput)
                throw new DeviceError(
                  'IMAGE_TOO_LARGE',
                  `${input.uri} sent more than the bound of ${maxInput} bytes`,
                );
              if (limit !== undefined && received > limit)
                throw new DeviceError('FETCH_PROTOCOL', `${input.uri} sent more than its stated length`);
            });
            if (total === undefined || received === total) break;
            throw new TransientError(`connection closed after ${received} of ${total} bytes`);
          } catch (e) {
            if (e instanceof DeviceError) throw e;
            if (expired())
              throw new DeviceError('FETCH_DEADLINE', `retrieval of ${input.uri} exceeded ${deadlineMs} ms`, {
                cause: e,
              });
            if (attempt > retries) throw fetchFailed(e, input.uri);
            await sleep(backoff, signal);
            backoff = Math.min(backoff * 2, maxBackoff);
          } finally {
            if (carried !== res) res.close();
          }
        }
        if (restart) continue;
        await sink.end();
        const size = await writer.finish();
        done = true;
        return { component, size, sha256: new Uint8Array(sink.hash.digest()), chunkSize };
      } finally {
        // A failed or restarted attempt: let nothing of this writer reach storage or the record afterwards.
        if (!done) await writer.close();
      }
    }
  } finally {
    carried?.close();
  }
}

function fetchFailed(e: unknown, uri: string): DeviceError {
  if (e instanceof DeviceError) return e;
  return new DeviceError(
    'FETCH_FAILED',
    `retrieval of ${uri} failed: ${e instanceof Error ? e.message : String(e)}`,
    { cause: e },
  );
}

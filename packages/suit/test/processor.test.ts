import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { CborMap, encode } from '@rotor/cose';
import type { ComponentId } from '../src/model.ts';
import { MemoryPlatform, componentId, componentKey, type MemoryPlatformOptions } from '../src/platform.ts';
import { processEnvelope, type ProcessResult } from '../src/processor.ts';
import type { ProcessorOptions } from '../src/processor-support.ts';
import { decodeReport, encodeReport, type SuitRecord } from '../src/report.ts';
import { makeEnvelope, readEnvelope, testAuthenticator, vector } from './processor-envelope.ts';

const hex = (s: string): Uint8Array => Uint8Array.from(Buffer.from(s, 'hex'));
const VENDOR = hex('fa6b4a53d5ad5fdfbe9de663e4d41ffe');
const CLASS = hex('1492af1425695e48bf429b2d51f2ab45');
const DIGEST_A = hex('00112233445566778899aabbccddeeff0123456789abcdeffedcba9876543210');
const DIGEST_B = hex('0123456789abcdeffedcba987654321000112233445566778899aabbccddeeff');
const C00 = [hex('00')];
const C01 = [hex('01')];
const C02 = [hex('02')];

function image(size: number, seed: number): Uint8Array {
  const b = new Uint8Array(size);
  for (let i = 0; i < size; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
}
const IMAGE_A = image(34768, 1);
const IMAGE_B = image(76834, 2);

/**
 * The draft examples carry sample digests (0011…, 0123…) that no real image hashes to. This platform reports those
 * digests for the two test images (its `digest` fast path), and real SHA-256 for anything else.
 */
class SampleDigestPlatform extends MemoryPlatform {
  readonly known = new Map<string, Uint8Array>([
    [Buffer.from(IMAGE_A).toString('hex'), DIGEST_A],
    [Buffer.from(IMAGE_B).toString('hex'), DIGEST_B],
  ]);
  async digest(component: ComponentId, alg: number, slot?: number): Promise<Uint8Array | undefined> {
    const data = await this.read(component, slot);
    if (data === undefined || alg !== -16) return undefined;
    return this.known.get(Buffer.from(data).toString('hex')) ?? createHash('sha256').update(data).digest();
  }
}

function platform(opts: MemoryPlatformOptions = {}): SampleDigestPlatform {
  return new SampleDigestPlatform({ vendorIds: [{ bytes: VENDOR, pen: false }], classIds: [CLASS], ...opts });
}

async function run(
  file: string | Uint8Array,
  procedure: 'update' | 'invoke',
  p: MemoryPlatform,
  extra: Partial<ProcessorOptions> = {},
): Promise<ProcessResult> {
  const env = readEnvelope(typeof file === 'string' ? vector(file) : file);
  const r = await processEnvelope(env, procedure, { platform: p, ...extra });
  // Every report the processor produces is a valid, round-tripping SUIT_Report.
  const enc = encodeReport(r.report);
  expect(Buffer.from(encodeReport(decodeReport(enc))).equals(Buffer.from(enc))).toBe(true);
  return r;
}

function failure(r: ProcessResult): { code: string; record: SuitRecord; reason: number } {
  expect(r.ok).toBe(false);
  const res = r.report.result;
  if (res === true) throw new Error('expected a failure result');
  return { code: r.error?.code ?? '', record: res.record, reason: res.reason };
}

const writes = (p: MemoryPlatform): number =>
  p.events.filter((e) => e.op === 'write' || e.op === 'fetch').length;

describe('manifest example 0 (secure boot)', () => {
  it('invokes a matching image and records the successful conditions', async () => {
    const p = platform({ storage: new Map([[componentKey(C00), IMAGE_A]]) });
    const r = await run('manifest/example0.signed.cbor', 'invoke', p);
    expect(r.error?.message).toBeUndefined();
    expect(r.ok).toBe(true);
    expect(p.events).toEqual([{ op: 'invoke', component: componentKey(C00), args: undefined }]);
    expect(r.report.result).toBe(true);
    // vendor (15) and class (15) in the shared sequence before validate and before invoke, image-match in validate
    expect(
      r.report.records
        .filter((x) => !('kind' in x))
        .map((x) => ('manifestSection' in x ? x.manifestSection : 0)),
    ).toEqual([3, 3, 7, 3, 3]);
    expect(r.report.reference.digest.bytes).toEqual(
      readEnvelope(vector('manifest/example0.signed.cbor')).digest.bytes,
    );
  });
  it('refuses a wrong image with the failing command in the report', async () => {
    const p = platform({ storage: new Map([[componentKey(C00), IMAGE_B]]) });
    const r = await run('manifest/example0.signed.cbor', 'invoke', p);
    const f = failure(r);
    expect(f.code).toBe('SUIT_CONDITION_FAILED');
    expect(f.reason).toBe(10);
    expect(f.record).toMatchObject({
      manifestId: [],
      manifestSection: 7,
      sectionOffset: 1,
      componentIndex: 0,
    });
    expect([...f.record.properties.keys()]).toEqual([3, 14]);
    expect(p.events).toEqual([]);
  });
  it('refuses a device of another vendor or class before anything else', async () => {
    for (const opts of [
      { vendorIds: [{ bytes: CLASS, pen: false }] },
      { classIds: [VENDOR] },
      { vendorIds: [{ bytes: VENDOR, pen: true }] },
    ]) {
      const p = platform({ storage: new Map([[componentKey(C00), IMAGE_A]]), ...opts });
      const f = failure(await run('manifest/example0.signed.cbor', 'invoke', p));
      expect(f.code).toBe('SUIT_CONDITION_FAILED');
      expect(f.record.manifestSection).toBe(3);
      expect(p.events).toEqual([]);
    }
  });
});

describe('manifest example 1 (download and install)', () => {
  const resources = { 'http://example.com/file.bin': IMAGE_A };
  it('fetches, checks and stores the sequence number', async () => {
    const p = platform({ resources });
    const r = await run('manifest/example1.signed.cbor', 'update', p);
    expect(r.error?.message).toBeUndefined();
    expect(p.get(C00)).toEqual(IMAGE_A);
    expect(p.sequenceNumbers.get(componentKey([]))).toBe(1n);
  });
  it('refuses equal and lower sequence numbers and writes nothing', async () => {
    for (const stored of [1n, 2n]) {
      const p = platform({ resources, sequenceNumbers: new Map([[componentKey([]), stored]]) });
      const f = failure(await run('manifest/example1.signed.cbor', 'update', p));
      expect(f.code).toBe('SUIT_ROLLBACK');
      expect(f.record.manifestSection).toBe(2);
      expect(p.events).toEqual([]);
      expect(p.sequenceNumbers.get(componentKey([]))).toBe(stored);
    }
    const ok = platform({ resources, sequenceNumbers: new Map([[componentKey([]), 0n]]) });
    expect((await run('manifest/example1.signed.cbor', 'update', ok)).ok).toBe(true);
  });
  it('invoke refuses only lower sequence numbers', async () => {
    const p = platform({
      storage: new Map([[componentKey(C00), IMAGE_A]]),
      sequenceNumbers: new Map([[componentKey([]), 1n]]),
    });
    expect((await run('manifest/example1.signed.cbor', 'invoke', p)).ok).toBe(true);
    p.sequenceNumbers.set(componentKey([]), 2n);
    expect(failure(await run('manifest/example1.signed.cbor', 'invoke', p)).code).toBe('SUIT_ROLLBACK');
  });
  it('a wrong payload fails image-match, is reported, and the sequence number is not stored', async () => {
    const p = platform({ resources: { 'http://example.com/file.bin': IMAGE_B } });
    const f = failure(await run('manifest/example1.signed.cbor', 'update', p));
    expect(f.code).toBe('SUIT_CONDITION_FAILED');
    // install = [20, {21: uri}, 21, 2, 3, 15]: image-match is the third command
    expect(f.record).toMatchObject({ manifestSection: 20, sectionOffset: 35, componentIndex: 0 });
    expect(p.sequenceNumbers.size).toBe(0);
  });
  it('a device of another class fetches nothing', async () => {
    const p = platform({ resources, classIds: [VENDOR] });
    expect(failure(await run('manifest/example1.signed.cbor', 'update', p)).code).toBe(
      'SUIT_CONDITION_FAILED',
    );
    expect(writes(p)).toBe(0);
  });
});

describe('manifest example 2 (severed members)', () => {
  it('runs the severed-present install', async () => {
    const p = platform({ resources: { 'http://example.com/very/long/path/to/file/file.bin': IMAGE_A } });
    const r = await run('manifest/example2.signed.cbor', 'update', p);
    expect(r.ok).toBe(true);
    expect(r.report.reference.uri).toBe('https://git.io/JJYoj');
  });
  it('refuses an update whose install was severed away', async () => {
    const p = platform();
    const f = failure(await run('manifest/example2.severed-signed.cbor', 'update', p));
    expect(f.code).toBe('SUIT_SEVERED_MISSING');
    expect(f.reason).toBe(9);
    expect(p.events).toEqual([]);
  });
});

describe('manifest example 3 (A/B images with try-each on component-slot)', () => {
  const resources = { 'http://example.com/file1.bin': IMAGE_A, 'http://example.com/file2.bin': IMAGE_B };
  for (const [slot, img] of [
    [0, IMAGE_A],
    [1, IMAGE_B],
  ] as const) {
    it(`installs into slot ${slot}`, async () => {
      const p = platform({ resources, slots: new Map([[componentKey(C00), slot]]) });
      const r = await run('manifest/example3.signed.cbor', 'update', p);
      expect(r.error?.message).toBeUndefined();
      expect(p.get(C00, slot)).toEqual(img);
      expect(p.get(C00, 1 - slot)).toBeUndefined();
      const inv = await run('manifest/example3.signed.cbor', 'invoke', p);
      expect(inv.ok).toBe(true);
    });
  }
  it('fails when the platform offers neither slot', async () => {
    const p = platform({ resources, slots: new Map([[componentKey(C00), 7]]) });
    const f = failure(await run('manifest/example3.signed.cbor', 'update', p));
    expect(f.code).toBe('SUIT_CONDITION_FAILED');
    // the shared sequence's try-each (after override-parameters) is where it fails
    expect(f.record.manifestSection).toBe(3);
    expect(writes(p)).toBe(0);
  });
});

describe('manifest example 4 (load from external storage)', () => {
  it('fetches into external storage and copies into the boot component', async () => {
    const p = platform({ resources: { 'http://example.com/file.bin': IMAGE_A } });
    const r = await run('manifest/example4.signed.cbor', 'update', p);
    expect(r.error?.message).toBeUndefined();
    expect(p.get(C02)).toEqual(IMAGE_A); // payload-fetch: component index 1 = [h'02']
    expect(p.get(C00)).toEqual(IMAGE_A); // install: copy from index 1
    expect(p.events.map((e) => e.op)).toEqual(['fetch', 'write', 'write', 'set-sequence-number']);
  });
  it("load copies into RAM; the example's load digest describes another image, so image-match fails there", async () => {
    const p = platform({ storage: new Map([[componentKey(C00), IMAGE_A]]) });
    const f = failure(await run('manifest/example4.signed.cbor', 'invoke', p));
    expect(p.get(C01)).toEqual(IMAGE_A);
    expect(f.record).toMatchObject({ manifestSection: 8, componentIndex: 2 });
    expect(p.events.some((e) => e.op === 'invoke')).toBe(false);
  });
});

describe('manifest example 5 (two images)', () => {
  it('installs both components and invokes the first', async () => {
    const p = platform({
      resources: { 'http://example.com/file1.bin': IMAGE_A, 'http://example.com/file2.bin': IMAGE_B },
    });
    expect((await run('manifest/example5.signed.cbor', 'update', p)).ok).toBe(true);
    expect(p.get(C00)).toEqual(IMAGE_A);
    expect(p.get(C01)).toEqual(IMAGE_B);
    const inv = await run('manifest/example5.signed.cbor', 'invoke', p);
    expect(inv.ok).toBe(true);
    expect(p.events.at(-1)).toMatchObject({ op: 'invoke', component: componentKey(C00) });
  });
  it('reports the second component when its image is wrong', async () => {
    const p = platform({
      resources: { 'http://example.com/file1.bin': IMAGE_A, 'http://example.com/file2.bin': IMAGE_A },
    });
    const f = failure(await run('manifest/example5.signed.cbor', 'update', p));
    expect(f.record).toMatchObject({ manifestSection: 20, componentIndex: 1 });
  });
});

describe('trust domains: dependencies', () => {
  const dependency = vector('trust-domains/example0_dependent.signed.cbor');
  const tdPlatform = (): MemoryPlatform =>
    new MemoryPlatform({ resources: { 'http://example.com/dependent.suit': dependency } });
  const text = (p: MemoryPlatform, c: string): string =>
    Buffer.from(p.get(componentId(c)) ?? new Uint8Array()).toString();

  it('example 1: fetches, verifies and processes the dependency in lock-step', async () => {
    const p = tdPlatform();
    const calls: Uint8Array[] = [];
    const r = await run('trust-domains/example1_process.signed.cbor', 'update', p, {
      authenticateDependency: testAuthenticator(calls),
    });
    expect(r.error?.message).toBeUndefined();
    expect(calls.length).toBe(1);
    expect(Buffer.from(p.get(componentId('dependent.suit')) ?? []).equals(dependency)).toBe(true);
    expect(text(p, '00')).toBe('hello world');
    expect(text(p, '10')).toBe(' in multiple trust domains');
    // the dependency's write (inside the dependent's install) precedes the dependent's own write
    expect(
      p.events.filter((e) => e.op === 'write').map((e) => ('component' in e ? e.component : '')),
    ).toEqual([
      componentKey(componentId('dependent.suit')),
      componentKey(componentId('00')),
      componentKey(componentId('10')),
    ]);
    expect(p.sequenceNumbers.get(componentKey(componentId('depending.suit')))).toBe(0n);
    expect(p.sequenceNumbers.get(componentKey(componentId('dependent.suit')))).toBe(0n);
    const inv = await run('trust-domains/example1_process.signed.cbor', 'invoke', p, {
      authenticateDependency: testAuthenticator(),
    });
    expect(inv.ok).toBe(true);
    const last = p.events.at(-1);
    expect(last).toMatchObject({ op: 'invoke', component: componentKey(componentId('10')) });
    expect(last?.op === 'invoke' ? Buffer.from(last.args ?? []).toString() : '').toBe('cat 00 10');
  });

  it('example 1: a dependency with another manifest digest is refused', async () => {
    const p = new MemoryPlatform({
      resources: {
        'http://example.com/dependent.suit': vector('trust-domains/example2_integrated.signed.cbor').subarray(
          0,
        ),
      },
    });
    const f = failure(
      await run('trust-domains/example1_process.signed.cbor', 'update', p, {
        authenticateDependency: testAuthenticator(),
      }),
    );
    expect(f.code).toBe('SUIT_CONDITION_FAILED');
    expect(f.record.manifestSection).toBe(15);
    expect(text(p, '00')).toBe('');
  });

  it('example 1: without an authenticator the dependency is not processed', async () => {
    const f = failure(await run('trust-domains/example1_process.signed.cbor', 'update', tdPlatform()));
    expect(f.code).toBe('SUIT_DEPENDENCY_INVALID');
  });

  it('example 2: takes the integrated dependency from the envelope', async () => {
    const p = new MemoryPlatform();
    const r = await run('trust-domains/example2_integrated.signed.cbor', 'update', p, {
      authenticateDependency: testAuthenticator(),
    });
    expect(r.error?.message).toBeUndefined();
    expect(p.events.some((e) => e.op === 'fetch')).toBe(false);
    expect(text(p, '00')).toBe('hello world');
    expect(text(p, '10')).toBe(' in multiple trust domains');
  });

  it('example 2: strict mode requires dependency-integrity before process-dependency', async () => {
    const p = new MemoryPlatform();
    const f = failure(
      await run('trust-domains/example2_integrated.signed.cbor', 'update', p, {
        authenticateDependency: testAuthenticator(),
        strictDependencyIntegrity: true,
      }),
    );
    expect(f.code).toBe('SUIT_DEPENDENCY_INVALID');
    expect(f.record.manifestSection).toBe(20);
    expect(text(p, '00')).toBe('');
  });

  it('rollback of a dependency (lower sequence number) is refused', async () => {
    const p = tdPlatform();
    p.sequenceNumbers.set(componentKey(componentId('dependent.suit')), 3n);
    const f = failure(
      await run('trust-domains/example1_process.signed.cbor', 'update', p, {
        authenticateDependency: testAuthenticator(),
      }),
    );
    expect(f.code).toBe('SUIT_ROLLBACK');
    expect(text(p, '00')).toBe('');
  });
});

describe('soft failure, try-each and run-sequence', () => {
  const bstr = (v: unknown): Uint8Array => encode(v);
  const m = (...e: [unknown, unknown][]): CborMap => new CborMap(e);
  const env = (install: unknown[], extra: [number, unknown][] = []): Uint8Array => {
    const members = new Map<number, unknown>([
      [1, 1],
      [2, 1],
      [3, bstr(m([2, [[hex('00')]]]))],
      [20, bstr(install)],
      ...extra,
    ]);
    return makeEnvelope(members).bytes;
  };
  const ok = new TextEncoder().encode('ok');

  it('a soft-failed alternative does not leak its parameters into the next one', async () => {
    const p = platform();
    const r = await run(
      env([15, [bstr([20, m([21, 'http://leak']), 14, 0]), bstr([20, m([18, ok])])], 18, 0, 21, 0]),
      'update',
      p,
    );
    expect(p.get(C00)).toEqual(ok); // write of alternative 2's content happened
    expect(failure(r).code).toBe('SUIT_PARAMETER_MISSING'); // fetch: uri from alternative 1 was rolled back
    expect(p.events.some((e) => e.op === 'fetch')).toBe(false);
  });
  it('try-each fails when no alternative succeeds, at the try-each position; a trailing nil continues', async () => {
    const f = failure(
      await run(env([20, m([18, ok]), 15, [bstr([14, 0]), bstr([14, 0])], 18, 0]), 'update', platform()),
    );
    expect(f.code).toBe('SUIT_CONDITION_FAILED');
    expect(f.record.sectionOffset).toBe(7);
    const p = platform();
    expect(
      (await run(env([20, m([18, ok]), 15, [bstr([14, 0]), bstr([14, 0]), null], 18, 0]), 'update', p)).ok,
    ).toBe(true);
    expect(p.get(C00)).toEqual(ok);
  });
  it('an alternative that sets soft-failure False makes try-each fail at once', async () => {
    const p = platform();
    const f = failure(
      await run(env([15, [bstr([20, m([13, false]), 14, 2]), bstr([20, m([18, ok]), 18, 0])]]), 'update', p),
    );
    expect(f.code).toBe('SUIT_ABORT');
    expect(f.record.sectionOffset).toBeGreaterThan(3); // inside the first alternative
    expect(p.get(C00)).toBeUndefined();
    // policy 2 (record-on-failure) recorded the abort
    expect(r2(f)).toBe(true);
  });
  it('run-sequence: soft-failure False by default; True halts with no parameter side effects', async () => {
    expect(
      failure(await run(env([32, bstr([14, 0]), 20, m([18, ok]), 18, 0]), 'update', platform())).code,
    ).toBe('SUIT_ABORT');
    const p = platform();
    const r = await run(
      env([20, m([18, ok]), 32, bstr([20, m([13, true], [18, new Uint8Array([1])]), 14, 0]), 18, 0]),
      'update',
      p,
    );
    expect(r.ok).toBe(true);
    expect(p.get(C00)).toEqual(ok);
  });
  it('soft-failure is not inherited: a run-sequence inside a try-each alternative fails hard, the alternative softly', async () => {
    const p = platform();
    const r = await run(
      env([
        15,
        [bstr([32, bstr([14, 0]), 20, m([18, new Uint8Array([9])])]), bstr([20, m([18, ok])])],
        18,
        0,
      ]),
      'update',
      p,
    );
    expect(r.ok).toBe(true);
    expect(p.get(C00)).toEqual(ok);
  });
  it('setting soft-failure outside try-each / run-sequence aborts', async () => {
    expect(failure(await run(env([20, m([13, true]), 14, 0]), 'update', platform())).code).toBe(
      'SUIT_OPERATION_FAILED',
    );
  });
  it('a directive failure inside try-each aborts regardless of soft-failure', async () => {
    const p = platform();
    const f = failure(await run(env([15, [bstr([18, 0]), bstr([20, m([18, ok]), 18, 0])]]), 'update', p));
    expect(f.code).toBe('SUIT_PARAMETER_MISSING');
    expect(p.get(C00)).toBeUndefined();
  });
  it('custom commands need a handler', async () => {
    expect(failure(await run(env([-300, 1]), 'update', platform())).code).toBe('SUIT_COMMAND_UNSUPPORTED');
    const seen: number[] = [];
    const r = await run(env([-300, 1]), 'update', platform(), {
      customCommand: (code) => (seen.push(code), Promise.resolve(true)),
    });
    expect(r.ok).toBe(true);
    expect(seen).toEqual([-300]);
  });

  function r2(f: { record: SuitRecord }): boolean {
    return f.record.manifestSection === 20;
  }
});

describe('bounds and setup checks', () => {
  const bstr = (v: unknown): Uint8Array => encode(v);
  const m = (...e: [unknown, unknown][]): CborMap => new CborMap(e);
  it('a fan-out of nested run-sequences over all components hits the step bound quickly', async () => {
    let seq: unknown[] = [20, m([14, 1])];
    for (let i = 0; i < 7; i++) seq = [12, true, 32, bstr(seq)];
    const comps = Array.from({ length: 16 }, (_, i) => [Uint8Array.of(i)]);
    const env = makeEnvelope(
      new Map<number, unknown>([
        [1, 1],
        [2, 1],
        [3, bstr(m([2, comps]))],
        [20, bstr([12, true, 15, [bstr(seq), bstr(seq), null]])],
      ]),
    );
    const t0 = Date.now();
    const r = await processEnvelope(env, 'update', {
      platform: new MemoryPlatform(),
      limits: { maxSteps: 20_000 },
    });
    expect(r.error?.code).toBe('SUIT_PROCESSOR_LIMIT');
    expect(r.steps).toBe(20_001);
    expect(Date.now() - t0).toBeLessThan(5000);
  });
  it('requires set-component-index first with several components', async () => {
    const env = makeEnvelope(
      new Map<number, unknown>([
        [1, 1],
        [2, 1],
        [3, bstr(m([2, [[hex('00')], [hex('01')]]]))],
        [20, bstr([3, 15])],
      ]),
    );
    const r = await processEnvelope(env, 'update', { platform: new MemoryPlatform() });
    expect(r.error?.code).toBe('SUIT_COMMAND_INVALID');
    expect(r.error?.path).toBe('manifest.20[0]');
  });
  it('refuses side effects and custom commands in the shared sequence', async () => {
    for (const shared of [
      [18, 0],
      [-300, 0],
      [32, bstr([21, 0])],
    ]) {
      const env = makeEnvelope(
        new Map<number, unknown>([
          [1, 1],
          [2, 1],
          [3, bstr(m([2, [[hex('00')]]], [4, bstr(shared)]))],
        ]),
      );
      const r = await processEnvelope(env, 'update', { platform: new MemoryPlatform() });
      expect(r.error?.code).toBe('SUIT_COMMAND_INVALID');
    }
  });
  it('refuses more components than the platform supports, and unsupported ones', async () => {
    const env = makeEnvelope(
      new Map<number, unknown>([
        [1, 1],
        [2, 1],
        [3, bstr(m([2, [[hex('00')], [hex('01')]]]))],
      ]),
    );
    expect(
      (await processEnvelope(env, 'update', { platform: new MemoryPlatform({ maxComponents: 1 }) })).error
        ?.code,
    ).toBe('SUIT_COMPONENT_INVALID');
    expect(
      (await processEnvelope(env, 'update', { platform: new MemoryPlatform({ components: [C00] }) })).error
        ?.code,
    ).toBe('SUIT_COMPONENT_INVALID');
  });
  it('UM conditions: use-before, minimum-battery, update-authorized, version, wait', async () => {
    const version = (cmp: number, v: number[]): Uint8Array => bstr([cmp, v]);
    const cases: [unknown[], MemoryPlatformOptions, boolean][] = [
      [[20, m([4, 2000]), 4, 0], { now: 1999n }, true],
      [[20, m([4, 2000]), 4, 0], { now: 2000n }, false],
      [[20, m([26, 500]), 26, 0], { batteryMwh: 500n }, true],
      [[20, m([26, 500]), 26, 0], { batteryMwh: 499n }, false],
      [[20, m([27, -1]), 27, 0], { authorizedPriority: 0n }, true],
      [[20, m([27, 3]), 27, 0], { authorizedPriority: 0n }, false],
      [
        [20, m([28, version(2, [1, 2])]), 28, 0],
        { versions: new Map([[componentKey(C00), [1, 2, 5]]]) },
        true,
      ],
      [
        [20, m([28, version(1, [1, 2])]), 28, 0],
        { versions: new Map([[componentKey(C00), [1, 2, 5]]]) },
        false,
      ],
      [
        [20, m([28, version(5, [1, 2, 0])]), 28, 0],
        { versions: new Map([[componentKey(C00), [1, 2, -1, 3]]]) },
        true,
      ],
      [
        [20, m([28, version(3, [1, 2])]), 28, 0],
        { versions: new Map([[componentKey(C00), [1, 2, -1, 3]]]) },
        true,
      ],
      [[20, m([29, bstr(m([2, 1]))]), 29, 0], { waitResult: true }, true],
      [[20, m([29, bstr(m([2, 1]))]), 29, 0], { waitResult: false }, false],
      [[4, 0], {}, false],
    ];
    for (const [install, opts, expected] of cases) {
      const env = makeEnvelope(
        new Map<number, unknown>([
          [1, 1],
          [2, 1],
          [3, bstr(m([2, [[hex('00')]]]))],
          [20, bstr(install)],
        ]),
      );
      const r = await processEnvelope(env, 'update', { platform: new MemoryPlatform(opts) });
      expect(
        r.ok,
        JSON.stringify(install, (_k, v: unknown) => (typeof v === 'bigint' ? String(v) : v)),
      ).toBe(expected);
    }
  });
  it('check-content compares the component bytes; device-identifier; swap; unlink', async () => {
    const comps = [[hex('00')], [hex('01')]];
    const install = [
      12,
      0,
      20,
      m([18, hex('aabb')]),
      18,
      0,
      6,
      15,
      24,
      15,
      12,
      1,
      20,
      m([18, hex('cc')]),
      18,
      0,
      12,
      0,
      20,
      m([22, 1]),
      31,
      0,
      20,
      m([18, hex('cc')]),
      6,
      0,
      12,
      1,
      33,
      0,
    ];
    const env = makeEnvelope(
      new Map<number, unknown>([
        [1, 1],
        [2, 1],
        [3, bstr(m([2, comps], [4, bstr([12, true, 20, m([24, CLASS])])]))],
        [20, bstr(install)],
      ]),
    );
    const p = new MemoryPlatform({ deviceIds: [CLASS] });
    const r = await processEnvelope(env, 'update', { platform: p });
    expect(r.error?.message).toBeUndefined();
    expect(p.get(C00)).toEqual(hex('cc'));
    expect(p.get(C01)).toBeUndefined();
    const other = await processEnvelope(env, 'update', {
      platform: new MemoryPlatform({ deviceIds: [VENDOR] }),
    });
    expect(other.error?.code).toBe('SUIT_CONDITION_FAILED');
  });
  it('uninstall runs suit-uninstall only and stores no sequence number', async () => {
    const env = makeEnvelope(
      new Map<number, unknown>([
        [1, 1],
        [2, 4],
        [3, bstr(m([2, [[hex('00')]]]))],
        [20, bstr([14, 0])],
        [24, bstr([33, 15])],
      ]),
    );
    const p = new MemoryPlatform({ storage: new Map([[componentKey(C00), hex('aa')]]) });
    const r = await processEnvelope(env, 'uninstall', { platform: p });
    expect(r.ok).toBe(true);
    expect(p.get(C00)).toBeUndefined();
    expect(p.sequenceNumbers.size).toBe(0);
  });
  it('an unsupported digest algorithm aborts image-match with alg-unsupported', async () => {
    const env = makeEnvelope(
      new Map<number, unknown>([
        [1, 1],
        [2, 1],
        [3, bstr(m([2, [[hex('00')]]]))],
        [20, bstr([20, m([3, bstr([-1000, new Uint8Array(32)])]), 15, [bstr([3, 15]), bstr([14, 0]), null]])],
      ]),
    );
    const r = await processEnvelope(env, 'update', {
      platform: new MemoryPlatform({ storage: new Map([[componentKey(C00), hex('aa')]]) }),
    });
    expect(r.error?.code).toBe('SUIT_DIGEST_ALG_UNSUPPORTED');
    const res = r.report.result;
    expect(res === true ? undefined : res.reason).toBe(3);
  });
  it('records per reporting policy and with sysinfo', async () => {
    const env = makeEnvelope(
      new Map<number, unknown>([
        [1, 1],
        [2, 1],
        [3, bstr(m([2, [[hex('00')]]], [4, bstr([20, m([1, VENDOR]), 1, 5])]))],
        [20, bstr([20, m([18, hex('00')]), 18, 1])],
      ]),
    );
    const r = await processEnvelope(env, 'update', {
      platform: new MemoryPlatform({ vendorIds: [{ bytes: VENDOR, pen: false }] }),
    });
    expect(r.ok).toBe(true);
    const kinds = r.report.records.map((x) =>
      'kind' in x ? 'sys' : `${x.manifestSection}@${x.sectionOffset}`,
    );
    // the shared sequence runs before install (record + sysinfo), then the write in install (record-on-success)
    expect(kinds).toEqual(['3@21', 'sys', '20@6']);
  });
});

/**
 * The SUIT manifest processor (draft-ietf-suit-manifest-34 §6, §8.4; draft-ietf-suit-trust-domains;
 * draft-ietf-suit-update-management; draft-ietf-suit-firmware-encryption) over a Platform (platform.ts), recording
 * its decisions into a SUIT_Report (report.ts, draft-ietf-suit-report). The command interpreter is in
 * processor-exec.ts.
 *
 * Input: an envelope that has ALREADY been authenticated (MF §6.2: verify before parsing/executing anything), e.g.
 * by the envelope decoder's authenticateEnvelope.
 *
 * Procedures (MF §8.4.6, TD §7):
 *  - 'update'  = dependency-resolution (15) → payload-fetch (16) → candidate-verification (18) → install (20)
 *                → validate (7, unless `validateAfterInstall: false`);
 *  - 'invoke'  = validate (7) → load (8) → invoke (9);
 *  - 'uninstall' = uninstall (24) (TD §6; typically unlink directives).
 * Each section is preceded by the shared sequence (MF §8.4.5). A needed section that was severed and is absent
 * fails with SUIT_SEVERED_MISSING before anything runs.
 *
 * Decisions:
 *  - Rollback (MF §6.1, §8.4.2, RFC 9124 REQ.SEC.SEQUENCE): an update needs a sequence number strictly greater
 *    than the stored one for that manifest (key: manifest-component-id, else `manifestKey`, else []); equal is
 *    refused too, so the same manifest cannot be re-applied once it completed. Invoke refuses only lower numbers
 *    (the installed manifest is invoked with its own number). Dependencies refuse lower numbers (an unchanged
 *    dependency may be shared by a newer dependent). New numbers are stored only after the whole update procedure
 *    succeeded, so an interrupted update can be retried.
 *  - MF §6.2: with more than one component (dependencies count, TD §5.1) every top-level sequence must begin with
 *    set-component-index — checked for every present sequence before executing anything (SUIT_COMMAND_INVALID).
 *    The shared sequence may hold only conditions and parameter/flow commands, no custom commands (MF §6.2, §8.4.5).
 *  - Soft failure (MF §8.4.8.14): True at the start of each try-each alternative, False at the start of each
 *    run-sequence and of every top-level sequence; scoped to its sequence (not inherited, restored on exit);
 *    setting it in a top-level sequence aborts. A soft-failed alternative / run-sequence has its parameter changes
 *    rolled back (no leak into the next alternative); completed platform writes are not undone.
 *  - strict-order=False is accepted; commands still run sequentially, which is one valid order (MF §6.7).
 *  - Dependencies: parameters are keyed by component identifier and shared with dependencies (TD §5.5); a
 *    dependency index beyond suit-components names a component whose identifier is its dependency-prefix
 *    (as the published TD examples use it); lock-step is enforced (TD §3, §5.1); process-dependency requires a
 *    prior integrity check of that component in the same manifest context (dependency-integrity, or — unless
 *    `strictDependencyIntegrity` — a successful image-match), and always authenticates the dependency.
 *  - Bounds: steps, nesting and dependency depth are limited (SUIT_PROCESSOR_LIMIT), so hostile manifests end.
 *  - Reporting: records follow each command's reporting policy (MF §8.4.7); the failing command is always the
 *    report's result record, with its section and byte offset.
 */
import { encode } from '@rotor/cose';
import { COMMANDS } from './codes.ts';
import type { SuitCommand } from './commands.ts';
import { SuitError, reportReasonFor } from './errors.ts';
import type { ComponentId, SuitEnvelope, SuitManifest } from './model.ts';
import { componentKey } from './platform.ts';
import { Engine, type ManifestContext, SHARED_SECTION, sectionSequence } from './processor-exec.ts';
import type { Procedure, ProcessorOptions } from './processor-support.ts';
import { resultCodeFor, type SuitRecord, type SuitReport } from './report.ts';

export type { Procedure, ProcessorLimits, ProcessorOptions } from './processor-support.ts';

export interface ProcessResult {
  readonly ok: boolean;
  /** The failure, when `ok` is false. */
  readonly error: SuitError | undefined;
  readonly report: SuitReport;
  /** Commands executed (every per-component iteration counts). */
  readonly steps: number;
}

const UPDATE_SECTIONS = [15, 16, 18, 20] as const;
const INVOKE_SECTIONS = [7, 8, 9] as const;

const SECTION_NAMES: Readonly<Record<number, string>> = {
  3: 'shared-sequence',
  7: 'validate',
  8: 'load',
  9: 'invoke',
  15: 'dependency-resolution',
  16: 'payload-fetch',
  18: 'candidate-verification',
  20: 'install',
  24: 'uninstall',
};

/** Commands allowed in SUIT_Shared_Sequence (MF §8.4.5: conditions and set-component-index, run-sequence,
 * try-each, override-parameters; TD set-parameters; UM override-multiple, copy-params). */
const SHARED_DIRECTIVES: ReadonlySet<number> = new Set([12, 15, 19, 20, 32, 34, 35]);

function checkShared(commands: readonly SuitCommand[], path: string): void {
  commands.forEach((c, i) => {
    const p = `${path}[${2 * i}]`;
    if (c.op === 'custom')
      throw new SuitError(
        'SUIT_COMMAND_INVALID',
        `custom command ${c.code} is not permitted in the shared sequence (MF §6.2)`,
        p,
      );
    if (COMMANDS.get(c.code)?.kind !== 'condition' && !SHARED_DIRECTIVES.has(c.code)) {
      throw new SuitError(
        'SUIT_COMMAND_INVALID',
        `directive ${c.code} has side effects and is not permitted in the shared sequence (MF §8.4.5)`,
        p,
      );
    }
    if (c.op === 'try-each') {
      c.alternatives.forEach((a, j) => {
        checkShared(a, `${p}/${j}`);
      });
    }
    if (c.op === 'run-sequence') checkShared(c.sequence, `${p}/0`);
  });
}

/** Whether a command sequence has command `code`, in a nested run-sequence or in every try-each alternative. */
export function hasCommand(commands: readonly SuitCommand[], code: number): boolean {
  return commands.some(
    (c) =>
      c.code === code ||
      (c.op === 'try-each' && c.alternatives.every((a) => hasCommand(a, code))) ||
      (c.op === 'run-sequence' && hasCommand(c.sequence, code)),
  );
}

/** A dependency's component identifier (TD §5.1): its prefix, else `#suit-dependency` + manifest id + index. */
export function dependencyComponentId(
  prefix: ComponentId | undefined,
  manifestId: readonly number[],
  index: number,
): ComponentId {
  return prefix ?? [new TextEncoder().encode('#suit-dependency'), Uint8Array.from([...manifestId, index])];
}

async function setupManifest(
  engine: Engine,
  envelope: SuitEnvelope,
  manifestId: readonly number[],
  rollbackKey: ComponentId,
  depth: number,
  root: boolean,
): Promise<ManifestContext> {
  const m: SuitManifest = envelope.manifest;
  const where = manifestId.length === 0 ? 'manifest' : `dependency[${manifestId.join(',')}].manifest`;
  // MF §6.1: the manifest version must be supported (1).
  if ((m.version as number) !== 1)
    throw new SuitError(
      'SUIT_MANIFEST_VERSION',
      `manifest-version ${String(m.version)} is not supported`,
      `${where}.1`,
    );

  // MF §6.1 / §8.4.2 rollback check (RFC 9124 REQ.SEC.SEQUENCE).
  const stored = await engine.platform.getSequenceNumber(rollbackKey);
  if (stored !== undefined) {
    const strict = root && engine.procedure === 'update';
    if (strict ? m.sequenceNumber <= stored : m.sequenceNumber < stored) {
      throw new SuitError(
        'SUIT_ROLLBACK',
        `sequence number ${m.sequenceNumber} is not ${strict ? 'greater than' : 'at least'} the installed ${stored} for ${componentKey(rollbackKey)}`,
        `${where}.2`,
      );
    }
  }

  // Component table: suit-components, extended by dependency indices (TD §5.1).
  const components: (ComponentId | undefined)[] = [...m.common.components];
  const dependencies = new Map(m.common.dependencies.map((d) => [d.index, d]));
  for (const d of m.common.dependencies) {
    if (d.index >= 1024)
      throw new SuitError(
        'SUIT_COMPONENT_INVALID',
        `dependency index ${d.index} is out of range`,
        `${where}.3.1`,
      );
    components[d.index] ??= dependencyComponentId(d.prefix, manifestId, d.index);
  }
  const defined = components.filter((c): c is ComponentId => c !== undefined);
  // MF §6.2: no more components than the Recipient supports; each must be supported.
  if (defined.length > engine.platform.maxComponents) {
    throw new SuitError(
      'SUIT_COMPONENT_INVALID',
      `${defined.length} components exceed the ${engine.platform.maxComponents} supported`,
      `${where}.3.2`,
    );
  }
  defined.forEach((c) => {
    if (!engine.platform.supportsComponent(c))
      throw new SuitError(
        'SUIT_COMPONENT_INVALID',
        `component ${componentKey(c)} is not supported`,
        `${where}.3.2`,
      );
  });

  const shared = m.common.sharedSequence?.commands;
  if (shared !== undefined) checkShared(shared, `${where}.3.4`);
  // MF §6.2 (SHOULD, opt-in): vendor and class identifier checks in the shared sequence.
  if (
    engine.options.requireIdentityChecks === true &&
    (shared === undefined || !hasCommand(shared, 1) || !hasCommand(shared, 2))
  ) {
    throw new SuitError(
      'SUIT_COMMAND_INVALID',
      'the shared sequence must check vendor and class identifiers',
      `${where}.3.4`,
    );
  }
  // MF §6.2 / TD §5.1: with more than one component every command sequence begins with set-component-index.
  if (defined.length > 1) {
    const seqs: [string, readonly SuitCommand[] | undefined][] = [['3.4', shared]];
    for (const k of [7, 8, 9, 15, 16, 18, 20, 24]) {
      const s = sectionSequence(m, k);
      seqs.push([String(k), s === 'severed' ? undefined : s]);
    }
    for (const [k, s] of seqs) {
      if (s !== undefined && s[0]?.op !== 'set-component-index') {
        throw new SuitError(
          'SUIT_COMMAND_INVALID',
          'with more than one component a command sequence must begin with set-component-index (MF §6.2)',
          `${where}.${k}[0]`,
        );
      }
    }
  }

  const ctx: ManifestContext = {
    envelope,
    manifest: m,
    manifestId,
    rollbackKey,
    components,
    dependencies,
    depth,
    verified: new Map(),
    loaded: new Map(),
    sectionsRun: new Set(),
  };
  engine.contexts.push(ctx);
  return ctx;
}

/** TD §3 / §5.1: at the end of a dependent's section, every loaded dependency that has that section ran it. */
function checkLockStep(ctx: ManifestContext, section: number): void {
  for (const [index, dep] of ctx.loaded) {
    const s = sectionSequence(dep.manifest, section);
    if (s !== undefined && !dep.sectionsRun.has(section)) {
      throw new SuitError(
        'SUIT_DEPENDENCY_INVALID',
        `dependency ${index} did not run ${SECTION_NAMES[section] ?? String(section)} before the dependent finished it (lock-step)`,
      );
    }
    checkLockStep(dep, section);
  }
}

/**
 * Runs a procedure over an authenticated envelope. Never throws for manifest-caused failures: the result carries
 * the error and a SUIT_Report whose result names the failing command.
 */
export async function processEnvelope(
  envelope: SuitEnvelope,
  procedure: Procedure,
  options: ProcessorOptions,
): Promise<ProcessResult> {
  const engine = new Engine(options, procedure);
  engine.setupDependency = (env, manifestId, rollbackKey, depth) =>
    setupManifest(engine, env, manifestId, rollbackKey, depth, false);
  const m = envelope.manifest;
  let error: SuitError | undefined;
  let failedSection = 0;
  try {
    const root = await setupManifest(
      engine,
      envelope,
      [],
      m.componentId ?? options.manifestKey ?? [],
      0,
      true,
    );
    const sections: number[] =
      procedure === 'update'
        ? [...UPDATE_SECTIONS, ...(options.validateAfterInstall === false ? [] : [7])]
        : procedure === 'invoke'
          ? [...INVOKE_SECTIONS]
          : [24];
    engine.sectionOrder = sections;
    // MF §8.4.6: a needed severable section that was severed must be present in the envelope.
    for (const k of sections) {
      failedSection = k;
      if (sectionSequence(m, k) === 'severed') {
        throw new SuitError(
          'SUIT_SEVERED_MISSING',
          `${SECTION_NAMES[k] ?? String(k)} is severed and absent from the envelope`,
          `envelope.${k}`,
        );
      }
    }
    for (const k of sections) {
      failedSection = k;
      const seq = sectionSequence(m, k);
      if (seq === undefined || seq === 'severed') continue;
      const shared = m.common.sharedSequence;
      if (shared !== undefined) await engine.runTopLevel(root, SHARED_SECTION, shared.commands);
      await engine.runTopLevel(root, k, seq);
      root.sectionsRun.add(k);
      checkLockStep(root, k);
    }
    if (procedure === 'update') {
      // MF §8.4.2: record the new sequence numbers only once the whole update succeeded.
      for (const ctx of engine.contexts)
        await options.platform.setSequenceNumber(ctx.rollbackKey, ctx.manifest.sequenceNumber);
    }
  } catch (e) {
    error =
      e instanceof SuitError
        ? e
        : new SuitError('SUIT_OPERATION_FAILED', e instanceof Error ? e.message : String(e), undefined, {
            cause: e,
          });
  }
  const report = buildReport(engine, envelope, options, error, failedSection);
  return { ok: error === undefined, error, report, steps: engine.steps };
}

function setupSection(error: SuitError, fallback: number): number {
  if (error.code === 'SUIT_ROLLBACK') return 2;
  if (error.code === 'SUIT_MANIFEST_VERSION') return 1;
  return fallback;
}

function buildReport(
  engine: Engine,
  envelope: SuitEnvelope,
  options: ProcessorOptions,
  error: SuitError | undefined,
  section: number,
): SuitReport {
  const base = {
    reference: { uri: envelope.manifest.referenceUri ?? '', digest: envelope.digest },
    ...(options.nonce === undefined ? {} : { nonce: options.nonce }),
    records: engine.records,
  };
  if (error === undefined) return { ...base, result: true };
  const record: SuitRecord = engine.failureRecords.get(error) ?? {
    manifestId: [],
    manifestSection: setupSection(error, section),
    sectionOffset: 0,
    componentIndex: 0,
    properties: new Map(),
  };
  return {
    ...base,
    result: { code: resultCodeFor(error.code), record, reason: reportReasonFor(error.code) },
  };
}

/** Encoded manifest digest (suit-reference digest), for callers that build reports themselves. */
export function referenceDigestBytes(envelope: SuitEnvelope): Uint8Array {
  return encode([envelope.digest.alg, envelope.digest.bytes]);
}

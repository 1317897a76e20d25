/**
 * The command interpreter of the SUIT manifest processor: the abstract machine of draft-ietf-suit-manifest-34
 * §6.4–§6.5 with the commands of §8.4.9 (conditions) and §8.4.10 (directives), draft-ietf-suit-trust-domains (TD)
 * and draft-ietf-suit-update-management (UM), plus write/copy decryption of draft-ietf-suit-firmware-encryption
 * (ENC). Entry point and procedures: processor.ts.
 *
 * Execution model (decisions, see processor.ts for the full list):
 *  - Parameters are stored per component *identifier* and shared by the root manifest and its dependencies within
 *    one procedure run (TD §5.5: "Any changes made to Parameters by the Dependency persist in the dependent");
 *    strict-order (12) and soft-failure (13) are processor parameters scoped to the enclosing sequence (MF §8.4.8.13–14).
 *  - A failed condition raises `ConditionFailure`; it terminates the current sequence and is absorbed by a
 *    try-each alternative / run-sequence whose soft-failure is True. Directive failures (`SuitError`) always abort.
 *  - The component selection (set-component-index) is local to the sequence that sets it; nested sequences start
 *    with the single integer index they are invoked for (MF §6.5).
 *  - Commands execute strictly in order even when strict-order is False (a valid ordering, MF §6.7).
 */
import { CborRaw, encode } from '@rotor/cose';
import { COMMANDS } from './codes.ts';
import {
  commandLayout,
  type CommandLayout,
  type ParamValue,
  type SuitCommand,
  type SuitParameters,
} from './commands.ts';
import { SuitError } from './errors.ts';
import type { ComponentId, SuitDependency, SuitDigest, SuitEnvelope, SuitManifest } from './model.ts';
import { componentKey, type Platform } from './platform.ts';
import {
  asSuitError,
  compareVersion,
  computeDigest,
  ctEqual,
  ctMatchAny,
  dependencyManifestBstr,
  type Procedure,
  type ProcessorOptions,
  versionMatches,
} from './processor-support.ts';
import type { SuitRecord, SuitReportEntry } from './report.ts';

/** A failed condition (MF §8.4.9): terminates the sequence; soft-failure may absorb it. */
export class ConditionFailure extends Error {
  readonly error: SuitError;
  constructor(error: SuitError) {
    super(error.message);
    this.error = error;
  }
}

/** One manifest being processed: the root, or a dependency loaded by process-dependency (TD §5.5). */
export interface ManifestContext {
  readonly envelope: SuitEnvelope;
  readonly manifest: SuitManifest;
  /** Position in the dependency tree, for SUIT_Record manifest-id (report §4.1). */
  readonly manifestId: readonly number[];
  /** Anti-rollback key (manifest component id; for dependencies the dependent's identifier, TD §5.2.1). */
  readonly rollbackKey: ComponentId;
  /** Component index → identifier: suit-components, extended by dependency indices beyond the list. */
  readonly components: readonly (ComponentId | undefined)[];
  readonly dependencies: ReadonlyMap<number, SuitDependency>;
  readonly depth: number;
  /** Dependency components whose manifest digest was verified in this context (TD §5.5 precondition). */
  readonly verified: Map<
    number,
    { readonly digest: SuitDigest; readonly envelope: SuitEnvelope | undefined }
  >;
  /** Dependency contexts loaded by process-dependency, kept across sections (lock-step). */
  readonly loaded: Map<number, ManifestContext>;
  /** Sections executed in this manifest. */
  readonly sectionsRun: Set<number>;
}

interface SequenceState {
  /** suit-parameter-soft-failure for this sequence (MF §8.4.8.14). */
  softFailure: boolean;
  /** suit-parameter-strict-order (MF §8.4.8.13); sequential execution honours either value. */
  strictOrder: boolean;
  /** Whether this sequence is the argument of try-each / run-sequence (soft-failure may only be set there). */
  readonly nested: boolean;
}

interface Position {
  readonly ctx: ManifestContext;
  readonly section: number;
  readonly offset: number;
}

/** Parameters each command consumes, copied into its SUIT_Record properties (report §4.1). */
const CONSUMES: ReadonlyMap<number, readonly number[]> = new Map([
  [1, [1]],
  [2, [2]],
  [3, [3, 14]],
  [4, [4]],
  [5, [5]],
  [7, [3]],
  [18, [19]],
  [21, [21, 25]],
  [22, [22, 19]],
  [23, [23]],
  [24, [24]],
  [25, [3]],
  [26, [26]],
  [27, [27]],
  [28, [28]],
  [29, [29]],
  [31, [22]],
]);

/** Section key used in records for the shared sequence (suit-common, MF §8.4.5). */
export const SHARED_SECTION = 3;

const DEFAULTS = { maxSteps: 100_000, maxNesting: 24, maxDependencyDepth: 4 } as const;

export class Engine {
  readonly platform: Platform;
  readonly options: ProcessorOptions;
  readonly procedure: Procedure;
  readonly records: SuitReportEntry[] = [];
  /** The record of the command at which each error arose (for the report's result record). */
  readonly failureRecords = new WeakMap<SuitError, SuitRecord>();
  /** Every manifest context set up in this run (root first), for storing sequence numbers on success. */
  readonly contexts: ManifestContext[] = [];
  readonly maxSteps: number;
  readonly maxNesting: number;
  readonly maxDependencyDepth: number;
  /** The sections of the running procedure, in order (set by processor.ts; used for the lock-step rule). */
  sectionOrder: readonly number[] = [];
  steps = 0;
  readonly #params = new Map<string, Map<number, ParamValue>>();
  readonly #layouts = new WeakMap<readonly SuitCommand[], CommandLayout[]>();

  constructor(options: ProcessorOptions, procedure: Procedure) {
    this.platform = options.platform;
    this.options = options;
    this.procedure = procedure;
    this.maxSteps = options.limits?.maxSteps ?? DEFAULTS.maxSteps;
    this.maxNesting = options.limits?.maxNesting ?? DEFAULTS.maxNesting;
    this.maxDependencyDepth = options.limits?.maxDependencyDepth ?? DEFAULTS.maxDependencyDepth;
  }

  // ---- Parameter table (MF §6.4 "params"; §8.4.8) ---------------------------------------------------------

  paramsOf(component: ComponentId): Map<number, ParamValue> {
    const k = componentKey(component);
    let t = this.#params.get(k);
    if (t === undefined) {
      t = new Map();
      this.#params.set(k, t);
    }
    return t;
  }

  param(component: ComponentId, code: number): ParamValue | undefined {
    return this.#params.get(componentKey(component))?.get(code);
  }

  /** A copy of the whole parameter table (for rolling back a soft-failed try-each alternative / run-sequence). */
  snapshot(): Map<string, Map<number, ParamValue>> {
    return new Map([...this.#params].map(([k, v]) => [k, new Map(v)]));
  }

  restore(s: Map<string, Map<number, ParamValue>>): void {
    this.#params.clear();
    for (const [k, v] of s) this.#params.set(k, v);
  }

  // ---- Records (MF §8.4.7 reporting policy; draft-ietf-suit-report §4) -----------------------------------

  record(
    pos: Position,
    componentIndex: number,
    component: ComponentId | undefined,
    code: number,
  ): SuitRecord {
    const properties = new Map<number, unknown>();
    for (const p of CONSUMES.get(code) ?? []) {
      const v = component === undefined ? undefined : this.param(component, p);
      if (v !== undefined) properties.set(p, new CborRaw(v.raw));
    }
    return {
      manifestId: pos.ctx.manifestId,
      manifestSection: pos.section,
      sectionOffset: pos.offset,
      componentIndex,
      properties,
    };
  }

  /** Remembers where an error arose (first attribution wins: the innermost command). */
  attribute(error: SuitError, record: SuitRecord): void {
    if (!this.failureRecords.has(error)) this.failureRecords.set(error, record);
  }

  step(pos: Position): void {
    this.steps++;
    if (this.steps > this.maxSteps) {
      const e = new SuitError('SUIT_PROCESSOR_LIMIT', `more than ${this.maxSteps} command executions`);
      this.attribute(e, {
        manifestId: pos.ctx.manifestId,
        manifestSection: pos.section,
        sectionOffset: pos.offset,
        componentIndex: 0,
        properties: new Map(),
      });
      throw e;
    }
  }

  layout(commands: readonly SuitCommand[]): CommandLayout[] {
    let l = this.#layouts.get(commands);
    if (l === undefined) {
      l = commandLayout(commands);
      this.#layouts.set(commands, l);
    }
    return l;
  }

  // ---- Sequences ----------------------------------------------------------------------------------------

  /**
   * Runs a top-level command sequence (the shared sequence or a section). A condition failure here is not
   * absorbed (soft-failure is False and cannot be set outside try-each / run-sequence, MF §8.4.8.14): it aborts.
   */
  async runTopLevel(ctx: ManifestContext, section: number, commands: readonly SuitCommand[]): Promise<void> {
    const state: SequenceState = { softFailure: false, strictOrder: true, nested: false };
    const initial = ctx.components.length === 1 ? [0] : undefined;
    try {
      await this.runSequence(ctx, section, commands, 0, initial, state, ctx.depth);
    } catch (e) {
      if (e instanceof ConditionFailure) throw e.error;
      throw e;
    }
  }

  /** All defined component indices (set-component-index True, MF §6.5; TD: includes dependencies). */
  allIndices(ctx: ManifestContext): number[] {
    const out: number[] = [];
    ctx.components.forEach((c, i) => {
      if (c !== undefined) out.push(i);
    });
    return out;
  }

  async runSequence(
    ctx: ManifestContext,
    section: number,
    commands: readonly SuitCommand[],
    base: number,
    initial: readonly number[] | undefined,
    state: SequenceState,
    depth: number,
  ): Promise<void> {
    if (depth > this.maxNesting)
      throw new SuitError('SUIT_PROCESSOR_LIMIT', `execution nested deeper than ${this.maxNesting}`);
    const layout = this.layout(commands);
    let selection = initial;
    for (let i = 0; i < commands.length; i++) {
      const c = commands[i]!;
      const l = layout[i]!;
      const pos: Position = { ctx, section, offset: base + l.offset };
      this.step(pos);
      if (c.op === 'set-component-index') {
        // MF §8.4.10.1 / §6.5: uint, [+uint] or True (= every component, in suit-components order)
        const idx = c.index === true ? this.allIndices(ctx) : c.index;
        for (const n of idx) {
          if (ctx.components[n] === undefined) {
            const e = new SuitError(
              'SUIT_COMPONENT_INVALID',
              `component index ${n} is not in suit-components or suit-dependencies`,
            );
            this.attribute(e, this.record(pos, n, undefined, c.code));
            throw e;
          }
        }
        selection = idx;
        continue;
      }
      if (c.op === 'params') {
        // Processor parameters strict-order (12) and soft-failure (13) are not per component (MF §8.4.8).
        const soft = c.params.get(13);
        const strict = c.params.get(12);
        if (soft !== undefined) {
          // MF §8.4.8.14: setting soft-failure outside try-each / run-sequence causes an Abort.
          if (!state.nested) {
            const e = new SuitError(
              'SUIT_OPERATION_FAILED',
              'soft-failure may only be set inside try-each or run-sequence',
            );
            this.attribute(e, this.record(pos, selection?.[0] ?? 0, undefined, c.code));
            throw e;
          }
          if (soft.type === 'bool') state.softFailure = soft.value;
        }
        if (strict !== undefined && strict.type === 'bool') state.strictOrder = strict.value;
        const rest = new Map([...c.params].filter(([k]) => k !== 12 && k !== 13));
        if (rest.size === 0) continue;
        await this.forEachComponent(ctx, pos, selection, c, async (component) => {
          this.setParams(component, rest, c.code === 20);
          return Promise.resolve();
        });
        continue;
      }
      await this.forEachComponent(ctx, pos, selection, c, async (component, index) => {
        await this.execute(ctx, section, c, l, pos, component, index, depth);
      });
    }
  }

  /** Runs `fn` once per selected component (MF §6.5), recording per the command's reporting policy. */
  async forEachComponent(
    ctx: ManifestContext,
    pos: Position,
    selection: readonly number[] | undefined,
    c: SuitCommand,
    fn: (component: ComponentId, index: number) => Promise<void>,
  ): Promise<void> {
    if (selection === undefined) {
      const e = new SuitError(
        'SUIT_COMPONENT_INVALID',
        'no component selected: the sequence must begin with set-component-index (MF §6.2)',
      );
      this.attribute(e, this.record(pos, 0, undefined, c.code));
      throw e;
    }
    const policy = c.op === 'policy' ? c.policy : 0;
    let first = true;
    for (const index of selection) {
      const component = ctx.components[index]!;
      // every per-component iteration counts towards the step bound (the first was counted by runSequence)
      if (!first) this.step(pos);
      first = false;
      try {
        await fn(component, index);
        // MF §8.4.7: bit 0 send-record-on-success
        if (policy & 1) this.records.push(this.record(pos, index, component, c.code));
        if (policy & 4) this.pushSysinfo(component, c.code);
      } catch (e) {
        const err =
          e instanceof ConditionFailure
            ? e.error
            : e instanceof SuitError
              ? e
              : asSuitError(e, 'SUIT_OPERATION_FAILED', 'command failed');
        const rec = this.record(pos, index, component, c.code);
        this.attribute(err, rec);
        // MF §8.4.7: bit 1 send-record-on-failure, bit 3 send-sysinfo-failure
        if (policy & 2) this.records.push(rec);
        if (policy & 8) this.pushSysinfo(component, c.code);
        if (e instanceof ConditionFailure || e instanceof SuitError) throw e;
        throw err;
      }
    }
  }

  /** system-property-claims for the properties a condition compared against (report §4.2). */
  pushSysinfo(component: ComponentId, code: number): void {
    const properties = new Map<number, unknown>();
    const p = this.platform;
    if (code === 1) {
      const v = p.vendorIds(component)[0];
      if (v !== undefined) properties.set(1, v.bytes);
    } else if (code === 2) {
      const v = p.classIds(component)[0];
      if (v !== undefined) properties.set(2, v);
    } else if (code === 24) {
      const v = p.deviceIds(component)[0];
      if (v !== undefined) properties.set(24, v);
    } else if (code === 4) {
      properties.set(4, p.now());
    }
    if (properties.size > 0) this.records.push({ kind: 'system-properties', component, properties });
  }

  setParams(component: ComponentId, params: SuitParameters, override: boolean): void {
    const t = this.paramsOf(component);
    for (const [k, v] of params) {
      // MF §8.4.10.3 override-parameters replaces; TD §5.6.1 set-parameters only sets what is unset.
      if (override || !t.has(k)) t.set(k, v);
    }
  }

  // ---- Commands -----------------------------------------------------------------------------------------

  async execute(
    ctx: ManifestContext,
    section: number,
    c: SuitCommand,
    layout: CommandLayout,
    pos: Position,
    component: ComponentId,
    index: number,
    depth: number,
  ): Promise<void> {
    const base = pos.offset - layout.offset;
    switch (c.op) {
      case 'policy': {
        const info = COMMANDS.get(c.code);
        if (info?.kind === 'condition') {
          const ok = await this.condition(ctx, c.code, component, index);
          if (!ok.pass) throw new ConditionFailure(ok.error);
          return;
        }
        await this.directive(ctx, section, c.code, component, index, depth);
        return;
      }
      case 'try-each':
        await this.tryEach(ctx, section, c, base, layout, index, depth);
        return;
      case 'run-sequence':
        await this.runNested(ctx, section, c.sequence, base + (layout.nested[0] ?? 0), index, depth);
        return;
      case 'override-multiple':
        // UM: override-multiple sets parameters of the listed components (indices into suit-components).
        for (const [i, params] of c.perComponent) {
          const target = ctx.components[i];
          if (target === undefined)
            throw new SuitError(
              'SUIT_COMPONENT_INVALID',
              `override-multiple: component index ${i} does not exist`,
            );
          this.setParams(target, params, true);
        }
        return;
      case 'copy-params':
        // UM: copy-params copies the listed parameters from the source component to the current component.
        for (const [src, codes] of c.copies) {
          const from = ctx.components[src];
          if (from === undefined)
            throw new SuitError(
              'SUIT_COMPONENT_INVALID',
              `copy-params: component index ${src} does not exist`,
            );
          const t = this.paramsOf(component);
          for (const code of codes) {
            const v = this.param(from, code);
            if (v !== undefined) t.set(code, v);
          }
        }
        return;
      case 'custom': {
        // MF §8.4.7: custom commands (code < -256) are implementation-defined; unknown ones abort.
        const hook = this.options.customCommand;
        if (hook === undefined)
          throw new SuitError('SUIT_COMMAND_UNSUPPORTED', `custom command ${c.code} is not supported`);
        const ok = await hook(c.code, c.arg, component).catch((e: unknown) => {
          throw asSuitError(e, 'SUIT_OPERATION_FAILED', `custom command ${c.code}`);
        });
        if (!ok)
          throw new ConditionFailure(
            new SuitError('SUIT_CONDITION_FAILED', `custom command ${c.code} failed`),
          );
        return;
      }
      case 'set-component-index':
      case 'params':
        return; // handled in runSequence
    }
  }

  /**
   * MF §8.4.10.2 try-each: each alternative runs with soft-failure initialised to True; the first one that
   * completes ends the directive; if all fail (softly) it fails, unless a trailing nil makes it succeed.
   * Decision: a soft-failed alternative's parameter changes are rolled back before the next one runs (conditions
   * have no side effects, and a failed alternative must not leak state into the next); component storage
   * written by directives that completed before the failure is not undone (platform effects are not transactional).
   */
  async tryEach(
    ctx: ManifestContext,
    section: number,
    c: Extract<SuitCommand, { op: 'try-each' }>,
    base: number,
    layout: CommandLayout,
    index: number,
    depth: number,
  ): Promise<void> {
    let last: SuitError | undefined;
    for (let j = 0; j < c.alternatives.length; j++) {
      const snap = this.snapshot();
      const state: SequenceState = { softFailure: true, strictOrder: true, nested: true };
      try {
        await this.runSequence(
          ctx,
          section,
          c.alternatives[j]!,
          base + (layout.nested[j] ?? 0),
          [index],
          state,
          depth + 1,
        );
        return;
      } catch (e) {
        if (!(e instanceof ConditionFailure)) throw e;
        // soft-failure False in this alternative: try-each fails with the condition failure (MF §8.4.8.14)
        if (!state.softFailure) throw e;
        this.restore(snap);
        last = e.error;
      }
    }
    if (c.trailingNil) return; // MF §8.4.10.2: a trailing nil lets all-failed continue
    throw new ConditionFailure(
      new SuitError(
        'SUIT_CONDITION_FAILED',
        `try-each: no alternative succeeded (last: ${last?.message ?? 'none'})`,
        undefined,
        { cause: last },
      ),
    );
  }

  /**
   * MF §8.4.10.5 run-sequence: soft-failure defaults to False; with soft-failure True a condition failure halts
   * the sequence with no side effects (parameter changes rolled back) and processing continues.
   */
  async runNested(
    ctx: ManifestContext,
    section: number,
    commands: readonly SuitCommand[],
    base: number,
    index: number,
    depth: number,
  ): Promise<void> {
    const snap = this.snapshot();
    const state: SequenceState = { softFailure: false, strictOrder: true, nested: true };
    try {
      await this.runSequence(ctx, section, commands, base, [index], state, depth + 1);
    } catch (e) {
      if (e instanceof ConditionFailure && state.softFailure) {
        this.restore(snap);
        return;
      }
      throw e;
    }
  }

  // ---- Conditions (MF §8.4.9; TD; UM). Side-effect free: they only read parameters and the platform. ---------

  /** Evaluates a condition for one component. Missing parameters fail the condition (MF §8.4.9). */
  async condition(
    ctx: ManifestContext,
    code: number,
    component: ComponentId,
    index: number,
  ): Promise<{ pass: true } | { pass: false; error: SuitError }> {
    const fail = (
      msg: string,
      errCode: 'SUIT_CONDITION_FAILED' | 'SUIT_PARAMETER_MISSING' | 'SUIT_ABORT' = 'SUIT_CONDITION_FAILED',
    ) => ({ pass: false, error: new SuitError(errCode, msg) }) as const;
    const ok = { pass: true } as const;
    const p = this.platform;
    switch (code) {
      case 1: {
        // MF §8.4.9.1 vendor-identifier: binary match (constant time) against the Recipient's vendor ids
        const v = this.param(component, 1);
        if (v?.type !== 'vendor-id')
          return fail('vendor-identifier parameter is not set', 'SUIT_PARAMETER_MISSING');
        const candidates = p
          .vendorIds(component)
          .filter((x) => x.pen === v.pen)
          .map((x) => x.bytes);
        return ctMatchAny(v.bytes, candidates) ? ok : fail('vendor identifier does not match');
      }
      case 2:
      case 24: {
        // MF §8.4.9.1 class-identifier / device-identifier
        const v = this.param(component, code);
        const name = code === 2 ? 'class identifier' : 'device identifier';
        if (v?.type !== 'uuid') return fail(`${name} parameter is not set`, 'SUIT_PARAMETER_MISSING');
        const candidates = code === 2 ? p.classIds(component) : p.deviceIds(component);
        return ctMatchAny(v.bytes, candidates) ? ok : fail(`${name} does not match`);
      }
      case 3:
      case 25: {
        // MF §8.4.9.3 image-match: digest (and image-size when set) of the component; UM image-not-match inverts.
        const m = await this.imageMatches(ctx, component, index);
        if (m === undefined) return fail('image-digest parameter is not set', 'SUIT_PARAMETER_MISSING');
        if (code === 3) {
          if (!m.match) return fail(`image does not match: ${m.why}`);
          if (ctx.dependencies.has(index)) this.markVerified(ctx, index, m.digest, undefined);
          return ok;
        }
        return m.digestMatch ? fail('image matches (image-not-match)') : ok;
      }
      case 4: {
        // UM use-before: assert(now() < use-before), 64-bit seconds
        const v = this.param(component, 4);
        if (v?.type !== 'uint') return fail('use-before parameter is not set', 'SUIT_PARAMETER_MISSING');
        return p.now() < v.value ? ok : fail('manifest used after its use-before time');
      }
      case 5: {
        // MF §8.4.9.5 component-slot: assert(current.slot-index == params[component-slot])
        const v = this.param(component, 5);
        if (v?.type !== 'uint') return fail('component-slot parameter is not set', 'SUIT_PARAMETER_MISSING');
        const slot = await p.componentSlot(component);
        return slot !== undefined && BigInt(slot) === v.value
          ? ok
          : fail(`component slot is ${String(slot)}, not ${v.value}`);
      }
      case 6: {
        // MF §8.4.9.4 check-content: constant-time byte comparison with suit-parameter-content
        const v = this.param(component, 18);
        if (v?.type !== 'bstr') return fail('content parameter is not set', 'SUIT_PARAMETER_MISSING');
        const data = await p.read(component, this.slotOf(component));
        return data !== undefined && ctEqual(data, v.bytes) ? ok : fail('component content does not match');
      }
      case 7:
        // TD §5.6.4 dependency-integrity: any failure is an immediate Abort (not a soft condition failure)
        await this.dependencyIntegrity(ctx, component, index);
        return ok;
      case 8:
        // TD §5.6.3 is-dependency
        return ctx.dependencies.has(index) ? ok : fail('component is not a dependency');
      case 14:
        // MF §8.4.9.6 abort: unconditionally fail
        return fail('condition-abort', 'SUIT_ABORT');
      case 26: {
        // UM minimum-battery: available energy ≥ parameter (mWh)
        const v = this.param(component, 26);
        if (v?.type !== 'uint') return fail('minimum-battery parameter is not set', 'SUIT_PARAMETER_MISSING');
        return (await p.batteryMwh()) >= v.value ? ok : fail('battery below minimum-battery');
      }
      case 27: {
        // UM update-authorized: ask the application with update-priority
        const v = this.param(component, 27);
        if (v?.type !== 'int') return fail('update-priority parameter is not set', 'SUIT_PARAMETER_MISSING');
        return (await p.isUpdateAuthorized(v.value, component)) ? ok : fail('update not authorized');
      }
      case 28: {
        // UM version: compare the installed version with [comparison-type, [+int]]
        const v = this.param(component, 28);
        if (v?.type !== 'version') return fail('version parameter is not set', 'SUIT_PARAMETER_MISSING');
        const installed = await p.componentVersion(component);
        if (installed === undefined) return fail('component version unknown');
        return versionMatches(v.comparison, compareVersion(installed, v.parts))
          ? ok
          : fail('version condition not met');
      }
      default:
        throw new SuitError('SUIT_COMMAND_UNSUPPORTED', `condition ${code} is not supported`);
    }
  }

  slotOf(component: ComponentId): number | undefined {
    const v = this.param(component, 5);
    return v?.type === 'uint' ? Number(v.value) : undefined;
  }

  /**
   * Digest (and size) comparison for image-match / image-not-match. For a dependency component the digest covers
   * the bstr-wrapped manifest of the stored envelope (TD §5.2.2) while image-size is the stored envelope's size.
   */
  async imageMatches(
    ctx: ManifestContext,
    component: ComponentId,
    index: number,
  ): Promise<{ match: boolean; digestMatch: boolean; digest: SuitDigest; why: string } | undefined> {
    const d = this.param(component, 3);
    if (d?.type !== 'digest') return undefined;
    const digest = d.digest;
    if (computeDigest(digest.alg, new Uint8Array(0)) === undefined) {
      throw new SuitError('SUIT_DIGEST_ALG_UNSUPPORTED', `digest algorithm ${digest.alg} is not supported`);
    }
    const sizeParam = this.param(component, 14);
    const slot = this.slotOf(component);
    let actual: Uint8Array | undefined;
    let size: bigint | undefined;
    if (ctx.dependencies.has(index)) {
      const bytes = await this.platform.read(component, slot);
      size = bytes === undefined ? undefined : BigInt(bytes.length);
      const wrapped = bytes === undefined ? undefined : dependencyManifestBstr(bytes);
      actual = wrapped === undefined ? undefined : computeDigest(digest.alg, wrapped);
    } else {
      const viaPlatform =
        this.platform.digest === undefined
          ? undefined
          : await this.platform.digest(component, digest.alg, slot);
      // Platform digest + size (Platform.size): image-match without reading the image.
      if (viaPlatform !== undefined && sizeParam !== undefined && this.platform.size !== undefined)
        size = await this.platform.size(component, slot);
      const bytes =
        viaPlatform === undefined || (sizeParam !== undefined && size === undefined)
          ? await this.platform.read(component, slot)
          : undefined;
      if (bytes !== undefined) size = BigInt(bytes.length);
      actual = viaPlatform ?? (bytes === undefined ? undefined : computeDigest(digest.alg, bytes));
    }
    const digestMatch = actual !== undefined && ctEqual(actual, digest.bytes);
    const sizeMatch = sizeParam?.type !== 'uint' || (size !== undefined && size === sizeParam.value);
    const why =
      actual === undefined
        ? 'component is empty'
        : !digestMatch
          ? 'digest differs'
          : `size ${String(size)} differs from image-size`;
    return { match: digestMatch && sizeMatch, digestMatch, digest, why };
  }

  markVerified(
    ctx: ManifestContext,
    index: number,
    digest: SuitDigest,
    envelope: SuitEnvelope | undefined,
  ): void {
    ctx.verified.set(index, { digest, envelope });
  }

  /** Forget verification results when a directive alters a dependency component (TD §5.6.4 cache rule). */
  invalidate(ctx: ManifestContext, index: number): void {
    ctx.verified.delete(index);
    ctx.loaded.delete(index);
  }

  async authenticate(bytes: Uint8Array): Promise<SuitEnvelope> {
    const auth = this.options.authenticateDependency;
    if (auth === undefined)
      throw new SuitError(
        'SUIT_DEPENDENCY_INVALID',
        'no dependency authenticator configured (authenticateDependency)',
      );
    try {
      return await auth(bytes);
    } catch (e) {
      if (e instanceof SuitError) throw e;
      throw new SuitError(
        'SUIT_DEPENDENCY_INVALID',
        `dependency authentication failed: ${e instanceof Error ? e.message : String(e)}`,
        undefined,
        { cause: e },
      );
    }
  }

  /**
   * TD §5.6.4 dependency-integrity: (1) verify the dependency's authentication wrapper, (2) compare its digest to
   * image-digest, (3) verify the dependency manifest against that digest. (1) and (3) are the authenticator's job.
   */
  async dependencyIntegrity(ctx: ManifestContext, component: ComponentId, index: number): Promise<void> {
    if (!ctx.dependencies.has(index))
      throw new SuitError('SUIT_DEPENDENCY_INVALID', `component ${index} is not a dependency`);
    const d = this.param(component, 3);
    if (d?.type !== 'digest')
      throw new SuitError('SUIT_PARAMETER_MISSING', 'dependency-integrity needs image-digest');
    const bytes = await this.platform.read(component, this.slotOf(component));
    if (bytes === undefined)
      throw new SuitError('SUIT_DEPENDENCY_INVALID', `dependency component ${index} is empty`);
    const env = await this.authenticate(bytes);
    if (env.digest.alg !== d.digest.alg || !ctEqual(env.digest.bytes, d.digest.bytes)) {
      throw new SuitError('SUIT_DEPENDENCY_INVALID', 'dependency manifest digest differs from image-digest');
    }
    this.markVerified(ctx, index, d.digest, env);
  }

  // ---- Directives (MF §8.4.10; TD; UM; ENC). A failure always aborts. --------------------------------------

  async directive(
    ctx: ManifestContext,
    section: number,
    code: number,
    component: ComponentId,
    index: number,
    depth: number,
  ): Promise<void> {
    const p = this.platform;
    const slot = this.slotOf(component);
    const missing = (what: string): SuitError =>
      new SuitError('SUIT_PARAMETER_MISSING', `${what} parameter is not set`);
    const op = async <T>(what: string, f: () => Promise<T>): Promise<T> => {
      try {
        return await f();
      } catch (e) {
        throw asSuitError(e, 'SUIT_OPERATION_FAILED', what);
      }
    };
    switch (code) {
      case 18: {
        // MF §8.4.10.8 write: store(current, params[content]); ENC §4: decrypt with encryption-info when set
        const content = this.param(component, 18);
        if (content?.type !== 'bstr') throw missing('content');
        const data = await this.maybeDecrypt(component, content.bytes);
        this.invalidate(ctx, index);
        await op('write', () => p.write(component, data, slot));
        return;
      }
      case 21: {
        // MF §8.4.10.4 fetch: store(current, fetch(params[uri])); integrated payloads / dependencies are taken from
        // the envelope when the URI names a text key (MF §7.5 integrated payload, TD §5.4 integrated dependency).
        const uri = this.param(component, 21);
        if (uri?.type !== 'tstr') throw missing('uri');
        const args = this.param(component, 25);
        const size = this.param(component, 14);
        const integrated = ctx.envelope.integrated.get(uri.value);
        const fetched =
          integrated ??
          (await op(`fetch ${uri.value}`, () =>
            p.fetch(uri.value, {
              component,
              fetchArguments: args?.type === 'bstr' ? args.bytes : undefined,
              expectedSize: size?.type === 'uint' ? size.value : undefined,
            }),
          ));
        const data = await this.maybeDecrypt(component, fetched);
        this.invalidate(ctx, index);
        await op('write', () => p.write(component, data, slot));
        return;
      }
      case 22: {
        // MF §8.4.10.5 copy: store(current, params[source-component]); fails if the source is absent. ENC §4: decrypt.
        const src = this.sourceOf(ctx, component);
        const data = await op('read source', () => p.read(src, this.slotOf(src)));
        if (data === undefined)
          throw new SuitError('SUIT_OPERATION_FAILED', 'copy: the source component is empty');
        const out = await this.maybeDecrypt(component, data);
        this.invalidate(ctx, index);
        await op('write', () => p.write(component, out, slot));
        return;
      }
      case 31: {
        // MF §8.4.10.7 swap(current, params[source-component])
        const src = this.sourceOf(ctx, component);
        this.invalidate(ctx, index);
        await op('swap', () => p.swap(component, src));
        return;
      }
      case 23: {
        // MF §8.4.10.6 invoke(current, params[invoke-args])
        const args = this.param(component, 23);
        await op('invoke', () => p.invoke(component, args?.type === 'bstr' ? args.bytes : undefined));
        return;
      }
      case 29: {
        // UM wait: block until the wait-info events hold
        const w = this.param(component, 29);
        if (w?.type !== 'wait-info') throw missing('wait-info');
        const okWait = await op('wait', () => p.waitFor(w.events, component));
        if (!okWait) throw new SuitError('SUIT_OPERATION_FAILED', 'wait: the awaited events cannot occur');
        return;
      }
      case 33:
        // TD §5.6.5 unlink(current)
        this.invalidate(ctx, index);
        await op('unlink', () => p.unlink(component));
        return;
      case 11:
        await this.processDependency(ctx, section, component, index, depth);
        return;
      default:
        throw new SuitError('SUIT_COMMAND_UNSUPPORTED', `directive ${code} is not supported`);
    }
  }

  /** suit-parameter-source-component (MF §8.4.8.10): an index into the manifest's components. */
  sourceOf(ctx: ManifestContext, component: ComponentId): ComponentId {
    const v = this.param(component, 22);
    if (v?.type !== 'uint')
      throw new SuitError('SUIT_PARAMETER_MISSING', 'source-component parameter is not set');
    const src = v.value < BigInt(ctx.components.length) ? ctx.components[Number(v.value)] : undefined;
    if (src === undefined)
      throw new SuitError('SUIT_COMPONENT_INVALID', `source-component ${v.value} does not exist`);
    return src;
  }

  /** ENC §4: with encryption-info set for the destination, the payload is ciphertext for the platform to decrypt. */
  async maybeDecrypt(component: ComponentId, data: Uint8Array): Promise<Uint8Array> {
    const info = this.param(component, 19);
    if (info?.type !== 'encryption-info') return data;
    try {
      return await this.platform.decrypt(info.bytes, data, { component });
    } catch (e) {
      throw asSuitError(e, 'SUIT_DECRYPT_FAILED', 'decryption failed');
    }
  }

  // ---- Dependencies (TD §5.5) ---------------------------------------------------------------------------

  /**
   * TD §5.6.2 process-dependency: the current component must be a dependency that passed an integrity check in
   * this manifest context; the dependency is authenticated, then its shared sequence and the same-named section
   * run. Lock-step (TD §3): because the dependent's sections run in procedure order and each process-dependency
   * runs the dependency's section N inside the dependent's section N, every dependency finishes section N before
   * the dependent starts N+1; processor.ts additionally checks at the end of each section that every loaded
   * dependency has run it.
   */
  async processDependency(
    ctx: ManifestContext,
    section: number,
    component: ComponentId,
    index: number,
    depth: number,
  ): Promise<void> {
    if (!ctx.dependencies.has(index))
      throw new SuitError('SUIT_DEPENDENCY_INVALID', `component ${index} is not in suit-dependencies`);
    if (section === SHARED_SECTION)
      throw new SuitError(
        'SUIT_DEPENDENCY_INVALID',
        'process-dependency is not allowed in the shared sequence',
      );
    const verified = ctx.verified.get(index);
    if (
      verified === undefined ||
      (this.options.strictDependencyIntegrity === true && verified.envelope === undefined)
    ) {
      throw new SuitError(
        'SUIT_DEPENDENCY_INVALID',
        `dependency ${index} has not passed dependency-integrity`,
      );
    }
    let dep = ctx.loaded.get(index);
    if (dep === undefined) {
      if (ctx.depth + 1 > this.maxDependencyDepth)
        throw new SuitError(
          'SUIT_PROCESSOR_LIMIT',
          `dependencies nested deeper than ${this.maxDependencyDepth}`,
        );
      let env = verified.envelope;
      if (env === undefined) {
        const bytes = await this.platform.read(component, this.slotOf(component));
        if (bytes === undefined)
          throw new SuitError('SUIT_DEPENDENCY_INVALID', `dependency component ${index} is empty`);
        env = await this.authenticate(bytes);
      }
      if (env.digest.alg !== verified.digest.alg || !ctEqual(env.digest.bytes, verified.digest.bytes)) {
        throw new SuitError(
          'SUIT_DEPENDENCY_INVALID',
          'dependency manifest differs from the verified digest',
        );
      }
      dep = await this.setupDependency(env, [...ctx.manifestId, index], component, ctx.depth + 1);
      // Lock-step (TD §3): a dependency first processed in section N must not have a section that precedes N in
      // this procedure — it could never run before the dependent moved past it.
      const order = this.sectionOrder.indexOf(section);
      for (const earlier of this.sectionOrder.slice(0, Math.max(order, 0))) {
        if (sectionSequence(dep.manifest, earlier) !== undefined) {
          throw new SuitError(
            'SUIT_DEPENDENCY_INVALID',
            `dependency ${index} has section ${earlier}, which ran before it was first processed (lock-step)`,
          );
        }
      }
      ctx.loaded.set(index, dep);
    }
    const seq = sectionSequence(dep.manifest, section);
    if (seq === 'severed')
      throw new SuitError(
        'SUIT_SEVERED_MISSING',
        `dependency ${index} section ${section} is severed and absent`,
      );
    if (seq === undefined) return; // TD §5.5: a missing section succeeds immediately
    if (depth + 1 > this.maxNesting)
      throw new SuitError('SUIT_PROCESSOR_LIMIT', `execution nested deeper than ${this.maxNesting}`);
    const shared = dep.manifest.common.sharedSequence;
    if (shared !== undefined) await this.runTopLevel(dep, SHARED_SECTION, shared.commands);
    await this.runTopLevel(dep, section, seq);
    dep.sectionsRun.add(section);
  }

  /** Hook set by processor.ts: manifest setup checks for a dependency envelope. */
  setupDependency: (
    env: SuitEnvelope,
    manifestId: readonly number[],
    rollbackKey: ComponentId,
    depth: number,
  ) => Promise<ManifestContext> = () =>
    Promise.reject(new SuitError('SUIT_DEPENDENCY_INVALID', 'dependencies are not supported'));
}

/** The parsed sequence of a manifest section, 'severed' when severed and absent, undefined when absent. */
export function sectionSequence(
  m: SuitManifest,
  key: number,
): readonly SuitCommand[] | 'severed' | undefined {
  switch (key) {
    case 7:
      return m.validate?.commands;
    case 8:
      return m.load?.commands;
    case 9:
      return m.invoke?.commands;
    case 24:
      return m.uninstall?.commands;
    case 15:
    case 16:
    case 18:
    case 20: {
      const s =
        key === 15
          ? m.dependencyResolution
          : key === 16
            ? m.payloadFetch
            : key === 18
              ? m.candidateVerification
              : m.install;
      if (s === undefined) return undefined;
      return s.state === 'severed-absent' ? 'severed' : s.value.commands;
    }
    default:
      return undefined;
  }
}

/** Encoded SUIT_Digest bytes, e.g. for record properties. */
export function encodeDigest(d: SuitDigest): Uint8Array {
  return encode([d.alg, d.bytes]);
}

/**
 * Renders a decoded SUIT envelope as a tree of names (not integer codes): digests in hex, UUIDs in their
 * canonical form, component identifiers as text where printable. The same tree serves `--json` and the text view.
 */
import { algName, asArray, asTag, CborMap, CborTag, COSE_DECODE, decode } from '@rotor/cose';
import {
  COMMON_KEY_NAMES,
  commandName,
  parameterName,
  TEXT_COMPONENT_KEY_NAMES,
  TEXT_KEY_NAMES,
  type ComponentId,
  type ParamValue,
  type Severable,
  type SuitCommand,
  type SuitDigest,
  type SuitEnvelope,
  type SuitParameters,
  type SuitSequence,
  type SuitText,
} from '@rotor/suit';

export type Tree = string | number | boolean | null | Tree[] | { [k: string]: Tree };

export const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

function uuid(b: Uint8Array): string {
  const h = hex(b);
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function printable(b: Uint8Array): boolean {
  if (b.length === 0) return false;
  for (const c of b) if (c < 0x20 || c > 0x7e || c === 0x27) return false;
  return true;
}

/** A component identifier as `['usr','bin']` / `[h'00']`. */
export function componentIdText(id: ComponentId): string {
  return `[${id.map((b) => (printable(b) ? `'${Buffer.from(b).toString('latin1')}'` : `h'${hex(b)}'`)).join(', ')}]`;
}

function digestTree(d: SuitDigest): Tree {
  return { algorithm: algNameSafe(d.alg), value: hex(d.bytes) };
}

function algNameSafe(alg: number): string {
  try {
    return algName(alg);
  } catch {
    return `alg(${alg})`;
  }
}

function paramTree(v: ParamValue): Tree {
  switch (v.type) {
    case 'vendor-id':
      return v.pen ? `PEN ${hex(v.bytes)}` : uuid(v.bytes);
    case 'uuid':
      return v.bytes.length === 16 ? uuid(v.bytes) : hex(v.bytes);
    case 'digest':
      return digestTree(v.digest);
    case 'uint':
    case 'int':
      return v.value <= BigInt(Number.MAX_SAFE_INTEGER) && v.value >= BigInt(Number.MIN_SAFE_INTEGER)
        ? Number(v.value)
        : v.value.toString();
    case 'bool':
      return v.value;
    case 'tstr':
      return v.value;
    case 'bstr':
      return printable(v.bytes) ? `'${Buffer.from(v.bytes).toString('latin1')}'` : `h'${hex(v.bytes)}'`;
    case 'encryption-info':
      return encryptionInfoTree(v.bytes);
    case 'version':
      return {
        comparison:
          ['', 'greater', 'greater-equal', 'equal', 'lesser-equal', 'lesser'][v.comparison] ??
          String(v.comparison),
        version: v.parts.join('.'),
      };
    case 'wait-info':
      return Object.fromEntries([...v.events].map(([k, val]) => [String(k), cborTree(val)]));
    case 'component-metadata':
      return `h'${hex(v.bytes)}'`;
    case 'custom':
      return cborTree(v.value);
  }
}

/** COSE_Encrypt summary: content algorithm and each recipient's algorithm and kid. */
function encryptionInfoTree(bytes: Uint8Array): Tree {
  try {
    const v = decode(bytes, COSE_DECODE);
    const tag = v instanceof CborTag ? v.tag : undefined;
    const arr = asArray(v instanceof CborTag ? v.value : v, 'encryption-info');
    const out: Record<string, Tree> = {
      structure: tag === 96 ? 'COSE_Encrypt' : tag === 16 ? 'COSE_Encrypt0' : 'unknown',
    };
    const alg = headerAlg(arr[0], arr[1]);
    if (alg !== undefined) out.content = algNameSafe(alg);
    const recipients = Array.isArray(arr[3]) ? (arr[3] as unknown[]) : [];
    out.recipients = recipients.map((r) => {
      const ra = asArray(r, 'recipient');
      const info: Record<string, Tree> = {};
      const ralg = headerAlg(ra[0], ra[1]);
      if (ralg !== undefined) info.algorithm = algNameSafe(ralg);
      const kid = ra[1] instanceof CborMap ? ra[1].get(4) : undefined;
      if (kid instanceof Uint8Array)
        info.kid = printable(kid) ? Buffer.from(kid).toString('latin1') : hex(kid);
      return info;
    });
    return out;
  } catch {
    return `h'${hex(bytes)}' (undecodable)`;
  }
}

function headerAlg(prot: unknown, unprot: unknown): number | undefined {
  if (prot instanceof Uint8Array && prot.length > 0) {
    const m = decode(prot, COSE_DECODE);
    if (m instanceof CborMap && typeof m.get(1) === 'number') return m.get(1) as number;
  }
  if (unprot instanceof CborMap && typeof unprot.get(1) === 'number') return unprot.get(1) as number;
  return undefined;
}

function paramsTree(p: SuitParameters): Tree {
  const out: Record<string, Tree> = {};
  for (const [code, v] of p) out[parameterName(code)] = paramTree(v);
  return out;
}

export function commandsTree(cmds: readonly SuitCommand[]): Tree {
  return cmds.map((c): Tree => {
    const name = commandName(c.code);
    switch (c.op) {
      case 'policy':
        return { [name]: policyText(c.policy) };
      case 'set-component-index':
        return { [name]: c.index === true ? true : [...c.index] };
      case 'try-each':
        return { [name]: c.alternatives.map((a) => commandsTree(a)) };
      case 'params':
        return { [name]: paramsTree(c.params) };
      case 'run-sequence':
        return { [name]: commandsTree(c.sequence) };
      case 'override-multiple':
        return {
          [name]: Object.fromEntries([...c.perComponent].map(([i, p]) => [String(i), paramsTree(p)])),
        };
      case 'copy-params':
        return {
          [name]: Object.fromEntries(
            [...c.copies].map(([i, ks]) => [String(i), ks.map((k) => parameterName(k))]),
          ),
        };
      case 'custom':
        return { [name]: cborTree(c.arg) };
    }
  });
}

/** Reporting policy bits by name (MF §8.4.9; -37 names bits 0/1 send-record-on-success/-failure). */
function policyText(p: number): string {
  const names = ['record-on-success', 'record-on-failure', 'sysinfo-on-success', 'sysinfo-on-failure'];
  if (p === 15) return 'report all';
  const set = names.filter((_, i) => (p & (1 << i)) !== 0);
  return set.length === 0 ? 'report none' : `report ${set.join('+')}`;
}

function cborTree(v: unknown): Tree {
  if (v === null || v === undefined) return null;
  if (typeof v === 'bigint') return v.toString();
  if (typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean') return v;
  if (v instanceof Uint8Array) return `h'${hex(v)}'`;
  if (Array.isArray(v)) return v.map(cborTree);
  if (v instanceof CborMap)
    return Object.fromEntries(v.entries.map(([k, x]) => [keyText(cborTree(k)), cborTree(x)]));
  if (v instanceof CborTag) return { [`tag ${v.tag}`]: cborTree(v.value) };
  return typeof v === 'symbol' || typeof v === 'function' ? typeof v : JSON.stringify(v);
}

function keyText(t: Tree): string {
  return typeof t === 'string' ? t : JSON.stringify(t);
}

function sequenceTree(s: SuitSequence | undefined): Tree | undefined {
  return s === undefined ? undefined : commandsTree(s.commands);
}

function severableTree<T>(s: Severable<T> | undefined, inner: (v: T) => Tree): Tree | undefined {
  if (s === undefined) return undefined;
  switch (s.state) {
    case 'inline':
      return inner(s.value);
    case 'severed-present':
      return { severed: true, digest: digestTree(s.digest), content: inner(s.value) };
    case 'severed-absent':
      return { severed: true, digest: digestTree(s.digest), content: '(absent from this envelope)' };
  }
}

function textTree(t: SuitText): Tree {
  const out: Record<string, Tree> = {};
  for (const [lang, l] of t) {
    const entry: Record<string, Tree> = {};
    for (const [k, v] of l.manifest) entry[TEXT_KEY_NAMES[k] ?? String(k)] = v;
    for (const c of l.components) {
      entry[componentIdText(c.component)] = Object.fromEntries(
        [...c.fields].map(([k, v]) => [TEXT_COMPONENT_KEY_NAMES[k] ?? String(k), v]),
      );
    }
    out[lang] = entry;
  }
  return out;
}

/** Summary of an authentication block: structure, algorithm(s), kid(s). */
function authBlockTree(bytes: Uint8Array): Tree {
  try {
    const v = decode(bytes, COSE_DECODE);
    if (!(v instanceof CborTag)) return 'untagged COSE structure';
    const names: Record<number, string> = {
      18: 'COSE_Sign1',
      98: 'COSE_Sign',
      17: 'COSE_Mac0',
      97: 'COSE_Mac',
    };
    const arr = asArray(asTag(v, v.tag, 'auth'), 'auth');
    const out: Record<string, Tree> = { structure: names[v.tag] ?? `tag ${v.tag}` };
    if (v.tag === 98) {
      out.signatures = asArray(arr[3], 'signatures').map((s) => {
        const sa = asArray(s, 'signature');
        return signerInfo(sa[0], sa[1]);
      });
    } else Object.assign(out, signerInfo(arr[0], arr[1]));
    out.payload = arr[2] === null ? 'detached' : 'attached';
    return out;
  } catch {
    return 'undecodable';
  }
}

function signerInfo(prot: unknown, unprot: unknown): Record<string, Tree> {
  const out: Record<string, Tree> = {};
  const alg = headerAlg(prot, unprot);
  if (alg !== undefined) out.algorithm = algNameSafe(alg);
  const kid = unprot instanceof CborMap ? unprot.get(4) : undefined;
  if (kid instanceof Uint8Array) out.kid = printable(kid) ? Buffer.from(kid).toString('latin1') : hex(kid);
  return out;
}

function compact(o: Record<string, Tree | undefined>): Record<string, Tree> {
  const out: Record<string, Tree> = {};
  for (const [k, v] of Object.entries(o)) if (v !== undefined) out[k] = v;
  return out;
}

export function envelopeTree(env: SuitEnvelope, digestOk: boolean): Tree {
  const m = env.manifest;
  const seq =
    m.sequenceNumber <= BigInt(Number.MAX_SAFE_INTEGER)
      ? Number(m.sequenceNumber)
      : m.sequenceNumber.toString();
  const common = compact({
    [COMMON_KEY_NAMES[2]!]: m.common.components.map(componentIdText),
    [COMMON_KEY_NAMES[1]!]:
      m.common.dependencies.length > 0
        ? m.common.dependencies.map((d) =>
            compact({
              component: d.index,
              prefix: d.prefix === undefined ? undefined : componentIdText(d.prefix),
            }),
          )
        : undefined,
    [COMMON_KEY_NAMES[4]!]: sequenceTree(m.common.sharedSequence),
  });
  const manifest = compact({
    'manifest-version': m.version,
    'manifest-sequence-number': seq,
    'reference-uri': m.referenceUri,
    'manifest-component-id': m.componentId === undefined ? undefined : componentIdText(m.componentId),
    'set-version': m.setVersion === undefined ? undefined : m.setVersion.join('.'),
    common,
    'dependency-resolution': severableTree(m.dependencyResolution, (s) => commandsTree(s.commands)),
    'payload-fetch': severableTree(m.payloadFetch, (s) => commandsTree(s.commands)),
    'candidate-verification': severableTree(m.candidateVerification, (s) => commandsTree(s.commands)),
    install: severableTree(m.install, (s) => commandsTree(s.commands)),
    validate: sequenceTree(m.validate),
    load: sequenceTree(m.load),
    invoke: sequenceTree(m.invoke),
    uninstall: sequenceTree(m.uninstall),
    text: severableTree(m.text, textTree),
    coswid: severableTree(m.coswid, (b) => `${b.length} bytes`),
  });
  const integrated: Record<string, Tree> = {};
  for (const [k, v] of env.integrated) integrated[k] = `${v.length} bytes`;
  return compact({
    envelope: compact({
      tagged: env.tagged,
      size: env.bytes.length,
      'authentication-wrapper': {
        digest: { ...(digestTree(env.digest) as Record<string, Tree>), matches: digestOk },
        blocks: env.authBlocks.map(authBlockTree),
      },
      manifest,
      integrated: env.integrated.size > 0 ? integrated : undefined,
    }),
  });
}

/** Text rendering of a tree (YAML-like, two-space indentation). */
export function treeText(t: Tree, indent = ''): string {
  if (Array.isArray(t)) {
    if (t.length === 0) return `${indent}[]\n`;
    return t
      .map((x) => {
        if (x !== null && typeof x === 'object') {
          const body = treeText(x, `${indent}  `);
          return `${indent}- ${body.slice(indent.length + 2)}`;
        }
        return `${indent}- ${scalar(x)}\n`;
      })
      .join('');
  }
  if (t !== null && typeof t === 'object') {
    return Object.entries(t)
      .map(([k, v]) => {
        if (
          v !== null &&
          typeof v === 'object' &&
          (Array.isArray(v) ? v.length > 0 : Object.keys(v).length > 0)
        ) {
          return `${indent}${k}:\n${treeText(v, `${indent}  `)}`;
        }
        if (typeof v === 'string' && v.includes('\n')) {
          return `${indent}${k}: |\n${v
            .split('\n')
            .map((l) => `${indent}  ${l}`)
            .join('\n')}\n`;
        }
        return `${indent}${k}: ${v !== null && typeof v === 'object' ? (Array.isArray(v) ? '[]' : '{}') : scalar(v)}\n`;
      })
      .join('');
  }
  return `${indent}${scalar(t)}\n`;
}

function scalar(v: string | number | boolean | null): string {
  return v === null ? 'nil' : String(v);
}

/**
 * SUIT reports (draft-ietf-suit-report-20): the model the processor records its decisions into, the
 * deterministic encoder, a strict decoder, and COSE_Sign1 protection with an attached payload (report §4/§5).
 *
 * SUIT_Report = {
 *   99 suit-reference => [? uri tstr, SUIT_Digest],     ; the root manifest's reference-uri and digest
 *   ? 2 suit-report-nonce => bstr,
 *   3 suit-report-records => [* SUIT_Record / system-property-claims],
 *   4 suit-report-result => true / {5 code int, 6 record SUIT_Record, 7 reason uint},
 *   ? 8 suit-report-capability-report => map,
 *   * extensions
 * }
 * SUIT_Record = [manifest-id [*uint], manifest-section int, section-offset uint, component-index uint,
 *                properties {* $$SUIT_Parameters}, * extensions]
 * system-property-claims = {0 system-component-id => SUIT_Component_Identifier, + $$SUIT_Parameters}
 */
import { CborMap, CoseError, createSign1, decode, decodeSign1, encode, verifySign1 } from '@rotor/cose';
import type { Signer, Verifier } from '@rotor/cose';
import { ReportReason, type ReportReasonCode } from './codes.ts';
import { SUIT_ERROR_CODES, SuitError } from './errors.ts';
import type { ComponentId, SuitDigest } from './model.ts';

/** Report map keys (report §4, IANA "SUIT Report Elements"). */
export const ReportKey = {
  nonce: 2,
  records: 3,
  result: 4,
  resultCode: 5,
  resultRecord: 6,
  resultReason: 7,
  capabilityReport: 8,
  reference: 99,
} as const;

/**
 * SUIT_Record (report §4.1). `properties` maps parameter codes to values: decoded CBOR values (decodeReport) or
 * `CborRaw` encodings (the processor copies the parameters consumed by the command as they were received).
 */
export interface SuitRecord {
  /** Position of the manifest in the dependency tree: [] = root, [i] = dependency at component index i, … */
  readonly manifestId: readonly number[];
  /** The manifest key of the command sequence (e.g. 20 install, 7 validate; 3 = common / shared sequence). */
  readonly manifestSection: number;
  /** Byte offset of the command within that section's command sequence. */
  readonly sectionOffset: number;
  readonly componentIndex: number;
  readonly properties: ReadonlyMap<number, unknown>;
  /** $$SUIT_Record_Extensions, kept as decoded values. */
  readonly extensions?: readonly unknown[];
}

/** system-property-claims (report §4.2): a component identifier plus system properties as parameters. */
export interface SuitSystemPropertyClaims {
  readonly kind: 'system-properties';
  readonly component: ComponentId;
  readonly properties: ReadonlyMap<number, unknown>;
}

export type SuitReportEntry = SuitRecord | SuitSystemPropertyClaims;

export interface SuitReportFailure {
  /** suit-report-result-code: an implementation-defined int (see `resultCodeFor`). */
  readonly code: number;
  readonly record: SuitRecord;
  readonly reason: ReportReasonCode;
}

export interface SuitReport {
  readonly reference: { readonly uri: string | undefined; readonly digest: SuitDigest };
  readonly nonce?: Uint8Array;
  readonly records: readonly SuitReportEntry[];
  readonly result: true | SuitReportFailure;
  /** suit-report-capability-report (report §4.3), kept as decoded CBOR. */
  readonly capabilityReport?: CborMap;
  /** Extension members (integer keys other than the ones above), kept as decoded CBOR. */
  readonly extensions?: ReadonlyMap<number, unknown>;
}

export function isSystemPropertyClaims(e: SuitReportEntry): e is SuitSystemPropertyClaims {
  return 'kind' in e;
}

/** The suit-report-result-code for an error code: 1 + its index in SUIT_ERROR_CODES; -1 for other errors. */
export function resultCodeFor(code: string): number {
  const i = (SUIT_ERROR_CODES as readonly string[]).indexOf(code);
  return i < 0 ? -1 : i + 1;
}

// ---------------------------------------------------------------------------------------------------------
// Encoding

function recordValue(r: SuitRecord): unknown[] {
  return [
    [...r.manifestId],
    r.manifestSection,
    r.sectionOffset,
    r.componentIndex,
    new Map(r.properties),
    ...(r.extensions ?? []),
  ];
}

function entryValue(e: SuitReportEntry): unknown {
  if (isSystemPropertyClaims(e)) {
    const m = new Map<number, unknown>([[0, [...e.component]]]);
    for (const [k, v] of e.properties) m.set(k, v);
    return m;
  }
  return recordValue(e);
}

/** Encodes a SUIT_Report deterministically (RFC 8949 §4.2.1; map keys 2, 3, 4, 8, 99 sort in that order). */
export function encodeReport(report: SuitReport): Uint8Array {
  const m = new Map<number, unknown>();
  const ref = report.reference;
  const digest = [ref.digest.alg, ref.digest.bytes];
  m.set(ReportKey.reference, ref.uri === undefined ? [digest] : [ref.uri, digest]);
  if (report.nonce !== undefined) m.set(ReportKey.nonce, report.nonce);
  m.set(ReportKey.records, report.records.map(entryValue));
  if (report.result === true) m.set(ReportKey.result, true);
  else {
    m.set(
      ReportKey.result,
      new Map<number, unknown>([
        [ReportKey.resultCode, report.result.code],
        [ReportKey.resultRecord, recordValue(report.result.record)],
        [ReportKey.resultReason, report.result.reason],
      ]),
    );
  }
  if (report.capabilityReport !== undefined) m.set(ReportKey.capabilityReport, report.capabilityReport);
  for (const [k, v] of report.extensions ?? []) {
    if (m.has(k))
      throw new SuitError('SUIT_REPORT_INVALID', `extension key ${k} collides with a report member`);
    m.set(k, v);
  }
  return encode(m);
}

// ---------------------------------------------------------------------------------------------------------
// Decoding (strict)

function bad(message: string, path: string, cause?: unknown): SuitError {
  return new SuitError('SUIT_REPORT_INVALID', message, path, cause === undefined ? undefined : { cause });
}

function isUint(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

function isInt(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v);
}

function parseDigestValue(v: unknown, path: string): SuitDigest {
  // MF §8.3: SUIT_Digest = [alg int, bytes bstr, * ext]
  if (!Array.isArray(v) || v.length < 2) throw bad('SUIT_Digest must be [algorithm-id, digest-bytes]', path);
  const [alg, bytes] = v as unknown[];
  if (!isInt(alg)) throw bad('digest algorithm must be an int', `${path}[0]`);
  if (!(bytes instanceof Uint8Array)) throw bad('digest bytes must be a bstr', `${path}[1]`);
  return { alg, bytes };
}

function parseProperties(v: unknown, path: string): Map<number, unknown> {
  // report §4.1: suit-record-properties: {* $$SUIT_Parameters} — integer parameter labels
  if (!(v instanceof CborMap)) throw bad('record properties must be a map', path);
  const out = new Map<number, unknown>();
  for (const [k, val] of v.entries) {
    if (!isInt(k)) throw bad('property keys must be integer parameter labels', path);
    out.set(k, val);
  }
  return out;
}

function parseRecord(v: unknown, path: string): SuitRecord {
  if (!Array.isArray(v) || v.length < 5) throw bad('SUIT_Record must be an array of at least 5 items', path);
  const [mid, section, offset, index, props, ...extensions] = v as unknown[];
  if (!Array.isArray(mid)) throw bad('manifest-id must be an array of uint', `${path}[0]`);
  const manifestId = (mid as unknown[]).map((x, i) => {
    if (!isUint(x)) throw bad('manifest-id elements must be uint', `${path}[0][${i}]`);
    return x;
  });
  if (!isInt(section)) throw bad('manifest-section must be an int', `${path}[1]`);
  if (!isUint(offset)) throw bad('section-offset must be a uint', `${path}[2]`);
  if (!isUint(index)) throw bad('component-index must be a uint', `${path}[3]`);
  const properties = parseProperties(props, `${path}[4]`);
  const base = {
    manifestId,
    manifestSection: section,
    sectionOffset: offset,
    componentIndex: index,
    properties,
  };
  return extensions.length > 0 ? { ...base, extensions } : base;
}

function parseClaims(v: CborMap, path: string): SuitSystemPropertyClaims {
  // report §4.2: system-property-claims = { system-component-id => SUIT_Component_Identifier, + $$SUIT_Parameters }
  const id = v.get(0);
  if (!Array.isArray(id) || !(id as unknown[]).every((x) => x instanceof Uint8Array)) {
    throw bad('system-component-id must be a SUIT_Component_Identifier', `${path}{0}`);
  }
  const properties = parseProperties(v, path);
  properties.delete(0);
  if (properties.size === 0) throw bad('system-property-claims need at least one property', path);
  return { kind: 'system-properties', component: id as Uint8Array[], properties };
}

const REASONS: ReadonlySet<number> = new Set(Object.values(ReportReason));

/** Decodes and validates a SUIT_Report (strict CBOR, report §4 CDDL). Throws SuitError SUIT_REPORT_INVALID. */
export function decodeReport(bytes: Uint8Array): SuitReport {
  let v: unknown;
  try {
    v = decode(bytes);
  } catch (e) {
    throw bad(`malformed CBOR (${e instanceof CoseError ? e.code : String(e)})`, '$', e);
  }
  if (!(v instanceof CborMap)) throw bad('SUIT_Report must be a map', '$');
  for (const k of v.keys()) if (!isInt(k)) throw bad('SUIT_Report keys must be integers', '$');

  const ref = v.get(ReportKey.reference);
  if (!Array.isArray(ref) || ref.length < 1 || ref.length > 2)
    throw bad('suit-reference must be [? uri, SUIT_Digest]', '$.99');
  const refItems = ref as unknown[];
  let uri: string | undefined;
  if (refItems.length === 2) {
    if (typeof refItems[0] !== 'string') throw bad('suit-report-manifest-uri must be a tstr', '$.99[0]');
    uri = refItems[0];
  }
  const digest = parseDigestValue(refItems[refItems.length - 1], `$.99[${refItems.length - 1}]`);

  const nonceV = v.get(ReportKey.nonce);
  if (nonceV !== undefined && !(nonceV instanceof Uint8Array))
    throw bad('suit-report-nonce must be a bstr', '$.2');

  const recs = v.get(ReportKey.records);
  if (!Array.isArray(recs)) throw bad('suit-report-records must be an array', '$.3');
  const records = (recs as unknown[]).map((r, i) =>
    r instanceof CborMap ? parseClaims(r, `$.3[${i}]`) : parseRecord(r, `$.3[${i}]`),
  );

  const res = v.get(ReportKey.result);
  let result: SuitReport['result'];
  if (res === true) result = true;
  else if (res instanceof CborMap) {
    for (const k of res.keys())
      if (k !== 5 && k !== 6 && k !== 7)
        throw bad(`unexpected key ${String(k)} in suit-report-result`, '$.4');
    const code = res.get(ReportKey.resultCode);
    const reason = res.get(ReportKey.resultReason);
    if (!isInt(code)) throw bad('suit-report-result-code must be an int', '$.4.5');
    if (!isUint(reason) || !REASONS.has(reason))
      throw bad('suit-report-result-reason must be a known reason', '$.4.7');
    result = {
      code,
      record: parseRecord(res.get(ReportKey.resultRecord), '$.4.6'),
      reason: reason as ReportReasonCode,
    };
  } else throw bad('suit-report-result must be true or a result map', '$.4');

  const cap = v.get(ReportKey.capabilityReport);
  if (cap !== undefined && !(cap instanceof CborMap))
    throw bad('suit-report-capability-report must be a map', '$.8');

  const extensions = new Map<number, unknown>();
  for (const [k, val] of v.entries) {
    if (typeof k === 'number' && !([2, 3, 4, 8, 99] as number[]).includes(k)) extensions.set(k, val);
  }
  return {
    reference: { uri, digest },
    ...(nonceV instanceof Uint8Array ? { nonce: nonceV } : {}),
    records,
    result,
    ...(cap instanceof CborMap ? { capabilityReport: cap } : {}),
    ...(extensions.size > 0 ? { extensions } : {}),
  };
}

// ---------------------------------------------------------------------------------------------------------
// COSE protection (report §5: COSE_Sign1 with the report as attached payload)

/** Signs a report: COSE_Sign1 (tag 18) with the encoded SUIT_Report as attached payload (report §5). */
export async function signReport(report: SuitReport, signer: Signer): Promise<Uint8Array> {
  return createSign1(encodeReport(report), signer, { detached: false });
}

/**
 * Verifies a COSE_Sign1-protected report with `verifier` (only algorithms in `allowedAlgs`) and returns the
 * decoded report. Throws CoseError on a malformed message or a bad signature, and SuitError SUIT_REPORT_INVALID
 * when the message has no attached payload or the payload is not a valid SUIT_Report.
 */
export function verifySignedReport(
  bytes: Uint8Array,
  verifier: Verifier,
  allowedAlgs: ReadonlySet<number>,
): SuitReport {
  const msg = decodeSign1(bytes, { tag: 'optional' });
  if (msg.payload === null) throw bad('a signed report must carry its payload attached', '$[2]');
  verifySign1(msg, verifier, { allowedAlgs });
  return decodeReport(msg.payload);
}

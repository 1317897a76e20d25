/**
 * Transition records (agent/outbox.ts) as SUIT reports (draft-ietf-suit-report-20 §4), signed with the device's
 * report key when one is configured (report §5: COSE_Sign1, attached payload, `application/suit-report+cose`), else
 * sent as a bare SUIT_Report (`application/suit-report+cbor`, allowed because the transport is mutually
 * authenticated and confidential TLS — report §5, RFC 8446).
 *
 * Each report references the manifest (report §4 suit-reference: the SUIT_Digest of the root manifest, as in the
 * authentication wrapper) and carries the transition in Rotor extension members of the SUIT_Report map (report §4
 * `* $$SUIT_Report_Extensions`; negative keys are outside the IANA-registered range):
 *
 *   -257 rotor-transition: tstr  downloading | downloaded | installing | installed | rebooting |
 *                                confirmed | failed | rolled-back
 *   -258 rotor-reason: tstr      the device's stable error code (failed / rolled-back)
 *   -259 rotor-detail: tstr      a human-readable detail, at most 256 characters
 *
 * suit-report-result: `true` for progress and for `confirmed` (nothing failed so far); a failure map for `failed`
 * (the processor's own failure record when it refused) and `rolled-back` (suit-invoke section, operation-failed:
 * the new image did not pass its health check or never confirmed). A server tells progress from an outcome by
 * -257: only confirmed / failed / rolled-back end an update.
 *
 * A resend of the same transition is byte-identical before signing (the encoding is deterministic), so a server
 * can recognise a retry by the digest of the SUIT_Report.
 */
import { createHash } from 'node:crypto';
import type { Signer } from '@rotor/cose';
import {
  decodeReport,
  encodeReport,
  ReportReason,
  resultCodeFor,
  signReport,
  type SuitRecord,
  type SuitReport,
  type SuitReportEntry,
} from '@rotor/suit';
import type { TransitionRecord } from '../agent/outbox.ts';

export const ROTOR_REPORT_KEY = { transition: -257, reason: -258, detail: -259 } as const;

export const SUIT_REPORT_CBOR = 'application/suit-report+cbor';
export const SUIT_REPORT_COSE = 'application/suit-report+cose';

/** Transitions that end an update (the others are progress). */
export const TERMINAL: ReadonlySet<string> = new Set(['confirmed', 'failed', 'rolled-back']);

const SHA256 = -16;
const AUTH_REFUSALS: ReadonlySet<string> = new Set(['MANIFEST_REJECTED', 'SIGNER_REVOKED', 'TRUST_STALE']);
/** Manifest keys (MF §8.4): authentication wrapper (envelope key 2) and suit-invoke (manifest key 9). */
const SECTION_AUTH = 2;
const SECTION_INVOKE = 9;

function record(section: number): SuitRecord {
  return {
    manifestId: [],
    manifestSection: section,
    sectionOffset: 0,
    componentIndex: 0,
    properties: new Map(),
  };
}

/**
 * The SUIT_Report for a transition. `fallbackDigest` references the manifest when the record has none (the
 * envelope failed authentication, so the agent never learnt a trusted digest; the tracker knows what it offered).
 */
export function transitionReport(t: TransitionRecord, fallbackDigest?: Uint8Array): SuitReport {
  let records: readonly SuitReportEntry[] = [];
  let processorResult: SuitReport['result'] | undefined;
  if (t.report !== undefined) {
    try {
      const r = decodeReport(t.report);
      records = r.records;
      processorResult = r.result;
    } catch {
      // A stored processor report that no longer decodes is left out; the transition itself still goes.
    }
  }
  let result: SuitReport['result'] = true;
  if (t.state === 'failed') {
    if (processorResult !== undefined && processorResult !== true) result = processorResult;
    else {
      // Refused before processing: authentication failed, or the signer is revoked, or the device could not get a
      // fresh revocation list to judge it by (issue 7) — the authentication wrapper's record, reason unauthorised.
      const authFailure = AUTH_REFUSALS.has(t.reason ?? '') && t.report === undefined;
      result = {
        code: resultCodeFor(t.reason ?? ''),
        record: record(authFailure ? SECTION_AUTH : 0),
        reason: authFailure ? ReportReason.unauthorised : ReportReason.operationFailed,
      };
    }
  } else if (t.state === 'rolled-back') {
    result = { code: -1, record: record(SECTION_INVOKE), reason: ReportReason.operationFailed };
  }
  const ext = new Map<number, unknown>([[ROTOR_REPORT_KEY.transition, t.state]]);
  if (t.reason !== undefined) ext.set(ROTOR_REPORT_KEY.reason, t.reason);
  if (t.detail !== undefined && t.detail !== '') ext.set(ROTOR_REPORT_KEY.detail, t.detail.slice(0, 256));
  const digest = t.manifestDigest.length > 0 ? t.manifestDigest : (fallbackDigest ?? new Uint8Array(0));
  return {
    reference: { uri: undefined, digest: { alg: SHA256, bytes: digest } },
    records,
    result,
    extensions: ext,
  };
}

export interface EncodedReport {
  readonly bytes: Uint8Array;
  readonly contentType: string;
  /** SHA-256 of the encoded SUIT_Report (the same for every resend). */
  readonly id: string;
}

/** Encodes (and, with a signer, signs) a report for delivery. */
export async function encodeForDelivery(
  report: SuitReport,
  signer: Signer | undefined,
): Promise<EncodedReport> {
  const plain = encodeReport(report);
  const id = createHash('sha256').update(plain).digest('hex');
  if (signer === undefined) return { bytes: plain, contentType: SUIT_REPORT_CBOR, id };
  return { bytes: await signReport(report, signer), contentType: SUIT_REPORT_COSE, id };
}

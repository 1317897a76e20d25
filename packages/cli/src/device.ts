/**
 * `rotor device run`: one device agent and its status tracker client on a device directory (real files through the
 * storage layer's node file-system backend), until SIGINT/SIGTERM. Prints each transition, check-in and delivery.
 *
 * Device directory (created by manufacturing — `rotor factory provision`, issue 6 — or by a test harness):
 *   tls/device.crt, tls/device.key   the device's client certificate and key (mutual TLS, RFC 8446 §4.4.2)
 *   tls/server-ca.pem                CA of the server's certificate (optional; else the system store / --ca)
 *   keys/agreement.key               PKCS#8 PEM: the key-agreement key the server wraps content keys to
 *   keys/report.key                  PKCS#8 PEM (P-256): the report-signing key (the enclave's, later)
 *   state/                           the agent's flash, non-volatile state, outbox and tracker state
 *
 * Or a factory device directory (`rotor factory provision`: DIR/fuse and DIR/flash/, issue 6): the device's enclave
 * runs in process (sealed backend, keys from the fuse); the identity key never leaves it, so TLS uses an RFC 3820
 * proxy credential the enclave signs (device/tracker/credential.ts); content keys are agreed through the enclave's
 * agreement key and reports are signed by its report key; the server CA comes from the bundle's trust anchors.
 * Updates are authenticated against the device's current trust (anchors from the factory's version-1 statement
 * on, minus revoked keys by a fresh revocation list; factory-trust.ts), synced at check-in; push (--mqtt) works
 * with the proxy credential (the embedded broker applies the device listener's proxy rules).
 */
import { existsSync } from 'node:fs';
import { createPrivateKey } from 'node:crypto';
import { join, resolve } from 'node:path';
import { Alg, softwareKeyAgreement, softwareSigner, type KeyAgreement, type Signer } from '@rotor/cose';
import {
  DeviceAgent,
  nodeFs,
  StatusTracker,
  type Attester,
  type DeviceTrust,
  type TrackerConfig,
  type TrackerEvent,
} from '@rotor/device';
import { openFactoryDevice } from './factory-device.ts';
import { group, type Command, type Subcommand } from './command.ts';
import { deviceOpsSubcommands } from './device-ops.ts';
import { CliError, ExitCode } from './errors.ts';
import { json, out, readTextInput } from './io.ts';

function optional(path: string): string | undefined {
  return existsSync(path) ? readTextInput(path, 'file') : undefined;
}

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

/** One line per event (or JSON lines with --json). */
function printer(asJson: boolean): (e: TrackerEvent) => void {
  return (e) => {
    if (asJson) {
      const rec =
        'record' in e ? { ...e.record, manifestDigest: hex(e.record.manifestDigest), report: undefined } : {};
      json({
        kind: e.kind,
        ...('record' in e ? { record: rec } : {}),
        ...(e.kind === 'checkin' ? { result: e.result, why: e.why } : {}),
        ...(e.kind === 'error'
          ? { where: e.where, code: 'code' in e.error ? e.error.code : undefined, message: e.error.message }
          : {}),
        ...(e.kind === 'update' ? { rolloutId: e.rolloutId, ok: e.outcome.ok } : {}),
      });
      return;
    }
    switch (e.kind) {
      case 'transition':
        out(
          `transition ${e.record.state} seq=${e.record.sequence}${e.record.reason === undefined ? '' : ` reason=${e.record.reason}`}`,
        );
        break;
      case 'delivered':
        out(`reported ${e.record.state}${e.signed ? ' (signed)' : ''}`);
        break;
      case 'dropped':
        out(`report ${e.record.state} refused by the server: ${e.status} ${e.code ?? ''}`);
        break;
      case 'checkin':
        out(
          `checkin (${e.why}): ${e.result.action}${e.result.action === 'update' ? ` rollout ${e.result.rolloutId}` : ''}`,
        );
        break;
      case 'update':
        out(
          e.outcome.ok
            ? `update ${e.outcome.confirmed ? 'confirmed' : 'rolled back'} (bank ${e.outcome.bank})`
            : `update refused: ${e.outcome.code} ${e.outcome.message}`,
        );
        break;
      case 'skipped':
        out(`rollout ${e.rolloutId} skipped: ${e.reason}`);
        break;
      case 'push':
        out(e.why === 'push' ? 'push: check in now' : 'push: connected');
        break;
      case 'trust': {
        const a = e.sync.anchors;
        const anchors =
          a === undefined || a.from === a.to ? 'unchanged' : `v${String(a.from)} → v${String(a.to)}`;
        const list = e.sync.revocation === undefined ? 'none' : `v${String(e.sync.revocation)}`;
        out(`trust: anchors ${anchors}, revocation list ${list}`);
        break;
      }
      case 'error':
        out(`${e.where}: ${'code' in e.error ? String(e.error.code) : 'ERROR'}: ${e.error.message}`);
        break;
    }
  };
}

const run: Subcommand = {
  name: 'run',
  summary: 'run a device agent and its status tracker client on a device directory',
  usage: `run --dir DIR --server URL [--mqtt URL] [--ca FILE] [--reports all|outcomes] [--json]

Runs the device in DIR (tls/ + keys/ + state/, or a factory device directory with its fuse and flash: then
the enclave runs in process and TLS uses a proxy certificate it signs, on the device API and on MQTT alike)
against the server's device API URL (https, mutual TLS). With --mqtt (mqtt:// or mqtts://) the device also
takes push nudges. A factory device verifies updates against its current trust anchors and revocation
list (provisioned by the factory, synced at check-in). Prints each
transition and report; exits 0 on SIGINT/SIGTERM after the tracker stopped. --reports outcomes sends
only confirmed / failed / rolled-back (for a server that ends a rollout at a device's first report).`,
  options: {
    dir: { type: 'string' },
    server: { type: 'string' },
    mqtt: { type: 'string' },
    ca: { type: 'string' },
    reports: { type: 'string' },
    json: { type: 'boolean' },
  },
  async run({ values }) {
    const dirArg = values.dir as string | undefined;
    const server = values.server as string | undefined;
    if (dirArg === undefined || server === undefined)
      throw new CliError('CLI_USAGE', '--dir and --server are required');
    const dir = resolve(dirArg);
    const caFile = values.ca as string | undefined;
    let agent: DeviceAgent;
    let serverConfig: TrackerConfig['server'];
    let close = (): Promise<void> => Promise.resolve();
    let attester: Attester | undefined;
    let trust: DeviceTrust | undefined;
    if (existsSync(join(dir, 'fuse')) && !existsSync(join(dir, 'tls', 'device.crt'))) {
      const d = await openFactoryDevice({ dir });
      agent = d.agent;
      serverConfig = d.server(server, caFile === undefined ? {} : { ca: readTextInput(caFile, 'CA') });
      close = () => d.close();
      attester = d.attester;
      trust = d.trust;
      out(
        `factory device ${d.deviceId}: TLS proxy credential valid until ${d.credential.notAfter.toISOString()}`,
      );
    } else {
      const cert = readTextInput(join(dir, 'tls', 'device.crt'), 'device certificate');
      const key = readTextInput(join(dir, 'tls', 'device.key'), 'device key');
      const ca =
        caFile !== undefined ? readTextInput(caFile, 'CA') : optional(join(dir, 'tls', 'server-ca.pem'));
      const agreementPem = optional(join(dir, 'keys', 'agreement.key'));
      const reportPem = optional(join(dir, 'keys', 'report.key'));
      const agreements: KeyAgreement[] =
        agreementPem === undefined ? [] : [softwareKeyAgreement(createPrivateKey(agreementPem))];
      const reportSigner: Signer | undefined =
        reportPem === undefined ? undefined : softwareSigner(createPrivateKey(reportPem), Alg.ESP256);
      agent = new DeviceAgent({
        fs: nodeFs(dir),
        root: 'state',
        keys: { agreements },
        ...(reportSigner === undefined ? {} : { reportSigner }),
      });
      serverConfig = { url: server, identity: { cert, key }, ...(ca === undefined ? {} : { ca }) };
    }
    const reports = (values.reports as string | undefined) ?? 'all';
    if (reports !== 'all' && reports !== 'outcomes')
      throw new CliError('CLI_USAGE', '--reports: all or outcomes');
    const mqttUrl = values.mqtt as string | undefined;
    const tracker = new StatusTracker({
      agent,
      server: serverConfig,
      ...(attester === undefined ? {} : { attester }),
      ...(trust === undefined ? {} : { trust }),
      ...(mqttUrl === undefined ? {} : { mqtt: { url: mqttUrl } }),
      transitions: reports,
      onEvent: printer(values.json === true),
    });
    const stopped = new Promise<string>((resolveStop) => {
      process.once('SIGINT', () => {
        resolveStop('SIGINT');
      });
      process.once('SIGTERM', () => {
        resolveStop('SIGTERM');
      });
    });
    try {
      await tracker.start();
      const st = await agent.status();
      out(`device running bank ${st.bank} sequence ${st.sequence}${st.trial ? ' (trial)' : ''}`);
      const sig = await stopped;
      await tracker.stop();
      out(`stopped (${sig})`);
    } finally {
      await close();
    }
    return ExitCode.ok;
  },
};

export const deviceCommand: Command = group('device', 'run a device agent (status tracker client)', [
  run,
  ...deviceOpsSubcommands,
]);

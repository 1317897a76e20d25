/**
 * Server configuration from environment and flags (flags win), validated in full at start: every problem is
 * reported at once as CONFIG_INVALID and the server does not start. No secret has a default: the admin bootstrap
 * token comes from ROTOR_ADMIN_TOKEN or is generated on first run into the data directory (see bootstrap.ts).
 * Secrets are accepted from the environment only, never as flags (flags are visible in the process list).
 */
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { ServerError } from './errors.ts';
import { isPkcs11Uri } from './factory/pkcs11-key.ts';
import { parsePkcs11Uri } from './factory/pkcs11-uri.ts';
import { operatorKeyFromPem, vaultFromHex } from './keys.ts';
import { capabilityKeyFromPem } from './capabilities/keys.ts';

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export interface TlsMaterial {
  /** PEM certificate chain of the device listener. */
  readonly cert: string;
  /** PEM private key of the device listener (held in memory only, never logged). */
  readonly key: string;
}

export interface ServerConfig {
  /** Operator API listener (JSON, bearer tokens). */
  readonly host: string;
  readonly port: number;
  /** Device API listener (mutual TLS). Disabled when no TLS material is configured. */
  readonly deviceHost: string;
  readonly devicePort: number;
  readonly tls: TlsMaterial | undefined;
  /** PEM CA bundle that device certificates must chain to; unset: any certificate, identified by fingerprint. */
  readonly deviceCa: string | undefined;
  readonly dataDir: string;
  /** PostgreSQL connection string; unset: embedded PGlite in `<dataDir>/pg`. */
  readonly databaseUrl: string | undefined;
  /** Admin bootstrap token from the environment (ROTOR_ADMIN_TOKEN), if any. */
  readonly adminToken: string | undefined;
  readonly maxUploadBytes: number;
  readonly maxJsonBytes: number;
  readonly logLevel: LogLevel;
  readonly shutdownGraceMs: number;
  readonly mqttUrl: string | undefined;
  /** Embedded broker's MQTT-over-TLS listener (started when TLS material is configured and MQTT_URL is unset). */
  readonly mqttHost: string;
  readonly mqttPort: number;
  /** Topic prefix: notifications go to `<prefix>/devices/<deviceId>/notify`. */
  readonly mqttTopicPrefix: string;
  /** How often each instance re-evaluates active rollouts (phase timeouts, thresholds). */
  readonly rolloutTickMs: number;
  /** Poll interval devices are told in every check-in response (checkinIntervalS, whole seconds). */
  readonly checkinIntervalS: number;
  /** PEM private key of the operator (signs approvals and per-device manifests); unset: approval refused. */
  readonly operatorKeyPem: string | undefined;
  /** RFC 7512 URI of the operator key in a PKCS#11 token (`--operator-key pkcs11:…`); exclusive with the PEM. */
  readonly operatorKeyUri?: string | undefined;
  /** PKCS#11 module for `operatorKeyUri` without module-path (unset: the Debian SoftHSM2 module if present). */
  readonly pkcs11Module?: string | undefined;
  /** 64 hex digits: the content-key vault's AES-256 KEK; unset: approval and device KEKs refused. */
  readonly contentKekHex: string | undefined;
  /** PEM private keys of the capability server (issue 8): module-envelope signing, manifest/revocation authority. */
  readonly capabilitySigningKeyPem?: string | undefined;
  readonly capabilityAuthorityKeyPem?: string | undefined;
}

export const CONFIG_HELP = `rotor server [options]

options (environment variable in brackets; flags win):
  --host ADDR             operator API address            [ROTOR_HOST, default 127.0.0.1]
  --port N                operator API port (0: any)      [ROTOR_PORT, default 8080]
  --device-host ADDR      device API (mTLS) address       [ROTOR_DEVICE_HOST, default 127.0.0.1]
  --device-port N         device API port (0: any)        [ROTOR_DEVICE_PORT, default 8443]
  --tls-cert FILE         device listener certificate     [ROTOR_TLS_CERT_FILE]
  --tls-key FILE          device listener private key     [ROTOR_TLS_KEY_FILE]
  --device-ca FILE        CA bundle for device certs      [ROTOR_DEVICE_CA_FILE]
  --data-dir DIR          data directory                  [ROTOR_DATA_DIR, default ./rotor-data]
  --max-upload-bytes N    largest envelope/payload body   [ROTOR_MAX_UPLOAD_BYTES, default 67108864]
  --log-level LEVEL       ${LOG_LEVELS.join('|')}  [ROTOR_LOG_LEVEL, default info]
  --shutdown-grace-ms N   drain time on SIGTERM/SIGINT    [ROTOR_SHUTDOWN_GRACE_MS, default 10000]
  --rollout-tick-ms N     rollout re-evaluation period    [ROTOR_ROLLOUT_TICK_MS, default 5000]
  --checkin-interval-s N  device poll interval (seconds)  [ROTOR_CHECKIN_INTERVAL_S, default 300]
  --mqtt-host ADDR        embedded MQTT broker (TLS)      [ROTOR_MQTT_HOST, default 127.0.0.1]
  --mqtt-port N           embedded MQTT broker port       [ROTOR_MQTT_PORT, default 8883]
  --mqtt-topic-prefix P   notify topic prefix             [ROTOR_MQTT_TOPIC_PREFIX, default rotor/v1]
  --operator-key FILE|URI operator signing key (PEM, P-256 or Ed25519) or an RFC 7512 PKCS#11 URI
                          pkcs11:token=…;object=…?pin-source=file:…  [ROTOR_OPERATOR_KEY_FILE]
  --pkcs11-module PATH    PKCS#11 module for a pkcs11: key  [ROTOR_PKCS11_MODULE, default Debian SoftHSM2]
  --content-kek FILE      content-key vault KEK (64 hex digits, mode 0600) [ROTOR_CONTENT_KEK_FILE]
                          without both, release approval is refused (OPERATOR_KEY_UNAVAILABLE)
  --capability-signing-key FILE    signs capability-module envelopes (PEM)  [ROTOR_CAPABILITY_SIGNING_KEY_FILE]
  --capability-authority-key FILE  signs capability manifests and module revocation lists (PEM)
                          [ROTOR_CAPABILITY_AUTHORITY_KEY_FILE]; without both (and the content KEK) the
                          capability server refuses (CAP_KEYS_UNAVAILABLE)
environment only (secrets):
  DATABASE_URL            PostgreSQL; unset: embedded PGlite in <data-dir>/pg
  ROTOR_ADMIN_TOKEN       admin bootstrap token (>= 32 chars); unset: generated once into
                          <data-dir>/bootstrap-admin-token (mode 0600) on first run
  MQTT_URL                external MQTT broker (the server publishes there); unset: embedded broker
`;

const FLAGS = {
  host: { type: 'string' },
  port: { type: 'string' },
  'device-host': { type: 'string' },
  'device-port': { type: 'string' },
  'tls-cert': { type: 'string' },
  'tls-key': { type: 'string' },
  'device-ca': { type: 'string' },
  'data-dir': { type: 'string' },
  'max-upload-bytes': { type: 'string' },
  'log-level': { type: 'string' },
  'shutdown-grace-ms': { type: 'string' },
  'rollout-tick-ms': { type: 'string' },
  'checkin-interval-s': { type: 'string' },
  'mqtt-host': { type: 'string' },
  'mqtt-port': { type: 'string' },
  'mqtt-topic-prefix': { type: 'string' },
  'operator-key': { type: 'string' },
  'pkcs11-module': { type: 'string' },
  'content-kek': { type: 'string' },
  'capability-signing-key': { type: 'string' },
  'capability-authority-key': { type: 'string' },
} as const;

export interface ConfigSource {
  readonly argv?: readonly string[];
  readonly env?: Readonly<Record<string, string | undefined>>;
  /** Reads a file named by a flag (injectable for tests). */
  readonly readFile?: (path: string) => string;
}

export function loadConfig(src: ConfigSource = {}): ServerConfig {
  const env = src.env ?? process.env;
  const readFile = src.readFile ?? ((p: string) => readFileSync(p, 'utf8'));
  let values: Record<string, string | undefined>;
  try {
    values = parseArgs({
      args: [...(src.argv ?? [])],
      options: FLAGS,
      strict: true,
      allowPositionals: false,
    }).values;
  } catch (e) {
    throw new ServerError('CONFIG_INVALID', e instanceof Error ? e.message : String(e));
  }
  const problems: string[] = [];
  const pick = (flag: keyof typeof FLAGS, envName: string): string | undefined => {
    const v = values[flag] ?? env[envName];
    return v === '' ? undefined : v;
  };
  const int = (flag: keyof typeof FLAGS, envName: string, def: number, min: number, max: number): number => {
    const raw = pick(flag, envName);
    if (raw === undefined) return def;
    if (!/^[0-9]+$/.test(raw)) {
      problems.push(`--${flag} / ${envName}: not a non-negative integer`);
      return def;
    }
    const n = Number(raw);
    if (n < min || n > max) problems.push(`--${flag} / ${envName}: ${n} outside ${min}..${max}`);
    return n;
  };
  const host = (flag: keyof typeof FLAGS, envName: string): string => {
    const h = pick(flag, envName) ?? '127.0.0.1';
    if (!/^[A-Za-z0-9.:-]{1,253}$/.test(h))
      problems.push(`--${flag} / ${envName}: not a host name or address`);
    return h;
  };
  const file = (flag: keyof typeof FLAGS, envName: string): string | undefined => {
    const p = pick(flag, envName);
    if (p === undefined) return undefined;
    try {
      return readFile(p);
    } catch (e) {
      problems.push(
        `--${flag} / ${envName}: cannot read ${p}: ${e instanceof Error ? e.message : String(e)}`,
      );
      return undefined;
    }
  };

  const cert = file('tls-cert', 'ROTOR_TLS_CERT_FILE');
  const key = file('tls-key', 'ROTOR_TLS_KEY_FILE');
  if ((cert === undefined) !== (key === undefined)) problems.push('--tls-cert and --tls-key go together');
  const deviceCa = file('device-ca', 'ROTOR_DEVICE_CA_FILE');
  if (deviceCa !== undefined && cert === undefined) problems.push('--device-ca needs --tls-cert/--tls-key');

  const logLevel = pick('log-level', 'ROTOR_LOG_LEVEL') ?? 'info';
  if (!(LOG_LEVELS as readonly string[]).includes(logLevel))
    problems.push(`--log-level: one of ${LOG_LEVELS.join(', ')}`);

  const databaseUrl = env.DATABASE_URL === '' ? undefined : env.DATABASE_URL;
  if (databaseUrl !== undefined && !/^postgres(ql)?:\/\//.test(databaseUrl)) {
    problems.push('DATABASE_URL: must be a postgres:// or postgresql:// URL'); // value not echoed: it may hold a password
  }
  const adminToken = env.ROTOR_ADMIN_TOKEN === '' ? undefined : env.ROTOR_ADMIN_TOKEN;
  if (adminToken !== undefined && !/^[A-Za-z0-9_-]{32,256}$/.test(adminToken)) {
    problems.push('ROTOR_ADMIN_TOKEN: 32..256 characters of [A-Za-z0-9_-]');
  }
  const mqttUrl = env.MQTT_URL === '' ? undefined : env.MQTT_URL;
  if (mqttUrl !== undefined && !/^mqtts?:\/\//.test(mqttUrl))
    problems.push('MQTT_URL: must be an mqtt:// or mqtts:// URL');

  const mqttTopicPrefix = pick('mqtt-topic-prefix', 'ROTOR_MQTT_TOPIC_PREFIX') ?? 'rotor/v1';
  // MQTT 3.1.1 §4.7: no wildcards in a topic name; no empty levels.
  if (!/^[A-Za-z0-9_.-]+(\/[A-Za-z0-9_.-]+)*$/.test(mqttTopicPrefix) || mqttTopicPrefix.length > 100)
    problems.push('--mqtt-topic-prefix: 1..100 characters of [A-Za-z0-9_.-] in /-separated levels');
  const operatorKeyRef = pick('operator-key', 'ROTOR_OPERATOR_KEY_FILE');
  const operatorKeyUri =
    operatorKeyRef !== undefined && isPkcs11Uri(operatorKeyRef) ? operatorKeyRef : undefined;
  if (operatorKeyUri !== undefined) {
    try {
      parsePkcs11Uri(operatorKeyUri);
    } catch (e) {
      problems.push(`--operator-key: ${e instanceof Error ? e.message : String(e)}`); // the URI may hold a PIN
    }
  }
  const pkcs11Module = pick('pkcs11-module', 'ROTOR_PKCS11_MODULE');
  const operatorKeyPem =
    operatorKeyUri === undefined ? file('operator-key', 'ROTOR_OPERATOR_KEY_FILE') : undefined;
  if (operatorKeyPem !== undefined) {
    try {
      operatorKeyFromPem(operatorKeyPem);
    } catch (e) {
      problems.push(`--operator-key: ${e instanceof Error ? e.message : String(e)}`);
    }
  }
  const contentKekHex = file('content-kek', 'ROTOR_CONTENT_KEK_FILE');
  if (contentKekHex !== undefined) {
    try {
      vaultFromHex(contentKekHex);
    } catch (e) {
      problems.push(`--content-kek: ${e instanceof Error ? e.message : String(e)}`); // the key itself is not echoed
    }
  }
  const capabilitySigningKeyPem = file('capability-signing-key', 'ROTOR_CAPABILITY_SIGNING_KEY_FILE');
  const capabilityAuthorityKeyPem = file('capability-authority-key', 'ROTOR_CAPABILITY_AUTHORITY_KEY_FILE');
  for (const [flag, pem] of [
    ['capability-signing-key', capabilitySigningKeyPem],
    ['capability-authority-key', capabilityAuthorityKeyPem],
  ] as const) {
    if (pem === undefined) continue;
    try {
      capabilityKeyFromPem(pem, flag);
    } catch (e) {
      problems.push(`--${flag}: ${e instanceof Error ? e.message : String(e)}`);
    }
  }

  const config: ServerConfig = {
    host: host('host', 'ROTOR_HOST'),
    port: int('port', 'ROTOR_PORT', 8080, 0, 65535),
    deviceHost: host('device-host', 'ROTOR_DEVICE_HOST'),
    devicePort: int('device-port', 'ROTOR_DEVICE_PORT', 8443, 0, 65535),
    tls: cert !== undefined && key !== undefined ? { cert, key } : undefined,
    deviceCa,
    dataDir: resolve(pick('data-dir', 'ROTOR_DATA_DIR') ?? 'rotor-data'),
    databaseUrl,
    adminToken,
    maxUploadBytes: int('max-upload-bytes', 'ROTOR_MAX_UPLOAD_BYTES', 64 * 1024 * 1024, 1024, 2 ** 31 - 1),
    maxJsonBytes: 1024 * 1024,
    logLevel: logLevel as LogLevel,
    shutdownGraceMs: int('shutdown-grace-ms', 'ROTOR_SHUTDOWN_GRACE_MS', 10_000, 0, 600_000),
    mqttUrl,
    rolloutTickMs: int('rollout-tick-ms', 'ROTOR_ROLLOUT_TICK_MS', 5000, 100, 3_600_000),
    checkinIntervalS: int('checkin-interval-s', 'ROTOR_CHECKIN_INTERVAL_S', 300, 1, 86_400),
    operatorKeyPem,
    operatorKeyUri,
    pkcs11Module,
    contentKekHex,
    capabilitySigningKeyPem,
    capabilityAuthorityKeyPem,
    mqttHost: host('mqtt-host', 'ROTOR_MQTT_HOST'),
    mqttPort: int('mqtt-port', 'ROTOR_MQTT_PORT', 8883, 0, 65535),
    mqttTopicPrefix,
  };
  if (problems.length > 0)
    throw new ServerError('CONFIG_INVALID', `invalid configuration: ${problems.join('; ')}`);
  return config;
}

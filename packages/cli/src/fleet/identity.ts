/**
 * Device identities for the fleet simulator, behind one seam (`FleetIdentitySource`):
 *
 * - `softwareIdentities()` (the default): each device gets software P-256 keys — a TLS client key with a self-signed
 *   certificate (RFC 5280, encoded by the factory's DER encoder, signed by the key itself), a key-agreement key (the
 *   server wraps content keys to it: ECDH-ES+A128KW, draft-ietf-suit-firmware-encryption §4) and a report-signing key
 *   — and is registered through the operator API (`POST /v1/devices`), which then accepts it by certificate
 *   fingerprint (a server without --device-ca). With a storage directory the identity is kept in
 *   `<dir>/<name>/identity.json` (mode 0600) and a re-run reuses it and its server id: registration is idempotent.
 * - factory devices (enclave-held keys, RFC 3820 proxy TLS credential) plug in as another source.
 *
 * Keys never leave this process and are never logged.
 */
import { createHash, createPrivateKey, createPublicKey, randomBytes, type KeyObject } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  Alg,
  generateAgreementKey,
  generateSigningKey,
  softwareKeyAgreement,
  softwareSigner,
  type KeyAgreement,
  type Signer,
} from '@rotor/cose';
import type { AgentConfig, DeviceAgent, TlsIdentity, TrackerConfig } from '@rotor/device';
import { cnName, encodeDeviceCertificate, toPem } from '@rotor/server';
import { CliError } from '../errors.ts';
import { openFactoryDevice } from '../factory-device.ts';
import type { OperatorApi } from './operator.ts';

export interface FleetIdentity {
  readonly kind?: 'software';
  readonly name: string;
  /** Mutual-TLS client credential (certificate chain and key, PEM). */
  readonly tls: TlsIdentity;
  /** SHA-256 of the client certificate's DER (hex): how a server without a device CA recognises the device. */
  readonly certSha256: string;
  /** Unwraps the content keys the server wraps for this device. */
  readonly agreement: KeyAgreement;
  readonly agreementPublicPem: string;
  /** Signs the device's SUIT reports. */
  readonly reportSigner: Signer;
  readonly reportPublicPem: string;
  /** The server's id for the device, once registered. */
  serverId: string | undefined;
}

/** What an opened device gives the simulator: its agent and the tracker's server settings (and more). */
export interface OpenedDevice {
  readonly agent: DeviceAgent;
  readonly server: TrackerConfig['server'];
  /** Extra tracker configuration (e.g. the device's attester). */
  readonly tracker?: Partial<TrackerConfig>;
  close(): Promise<void>;
}

/**
 * A device that brings its own storage, keys and agent (e.g. a factory-provisioned device: enclave-held keys, an
 * RFC 3820 proxy TLS credential): the simulator opens it at every power-on instead of building a software one.
 */
export interface OpenableIdentity {
  readonly kind: 'opened';
  readonly name: string;
  /** The server's id for the device, when known (else asked from GET /d/v1/self for the push topic). */
  serverId: string | undefined;
  /** Opens the device with the simulator's agent options (health check, clock, reboot hook). */
  open(agent: Omit<AgentConfig, 'fs' | 'root' | 'keys' | 'reportSigner'>): Promise<OpenedDevice>;
}

/** Where device identities come from, and how the server learns them. */
export interface FleetIdentitySource {
  /** The identity of device `index` named `name` (created on first use; reused on a re-run when persistent). */
  identity(index: number, name: string): Promise<FleetIdentity | OpenableIdentity>;
  /** Makes the server know the device (idempotent); returns the server's device id (undefined: not known). */
  register(
    identity: FleetIdentity | OpenableIdentity,
    api: OperatorApi,
    opts: { group: string; tags: readonly string[] },
  ): Promise<string | undefined>;
}

const spkiPem = (k: KeyObject): string => k.export({ type: 'spki', format: 'pem' }).toString();
const pkcs8Pem = (k: KeyObject): string => k.export({ type: 'pkcs8', format: 'pem' }).toString();

/** A self-signed client certificate (RFC 5280 §4.1; SAN URI urn:rotor:sim:<name>) for a P-256 key. */
export async function selfSignedClientCert(
  name: string,
  privateKey: KeyObject,
  publicKey: KeyObject,
): Promise<string> {
  const spki = new Uint8Array(publicKey.export({ type: 'spki', format: 'der' }));
  const keyId = new Uint8Array(createHash('sha256').update(spki).digest().subarray(0, 20));
  const subject = `urn:rotor:sim:${name}`;
  const now = Date.now();
  const der = await encodeDeviceCertificate(
    {
      serialHex: `01${randomBytes(8).toString('hex')}`,
      issuer: cnName(subject),
      notBefore: new Date(now - 3_600_000),
      notAfter: new Date(now + 10 * 365 * 86_400_000),
      deviceId: subject,
      spki,
      subjectKeyId: keyId,
      authorityKeyId: keyId,
    },
    { signer: softwareSigner(privateKey, Alg.ES256), type: 'P-256' },
  );
  return toPem(der);
}

interface Stored {
  readonly name: string;
  readonly tlsKeyPem: string;
  readonly certPem: string;
  readonly agreementKeyPem: string;
  readonly reportKeyPem: string;
  readonly serverId?: string | undefined;
}

function fromStored(s: Stored): FleetIdentity {
  const agreementKey = createPrivateKey(s.agreementKeyPem);
  const reportKey = createPrivateKey(s.reportKeyPem);
  const der = Buffer.from(
    s.certPem.replace(/-----(BEGIN|END) CERTIFICATE-----/g, '').replace(/\s+/g, ''),
    'base64',
  );
  return {
    name: s.name,
    tls: { cert: s.certPem, key: s.tlsKeyPem },
    certSha256: createHash('sha256').update(der).digest('hex'),
    agreement: softwareKeyAgreement(agreementKey),
    agreementPublicPem: spkiPem(createPublicKey(agreementKey)),
    reportSigner: softwareSigner(reportKey, Alg.ESP256),
    reportPublicPem: spkiPem(createPublicKey(reportKey)),
    serverId: s.serverId,
  };
}

async function generate(name: string): Promise<Stored> {
  const tls = generateSigningKey(Alg.ES256);
  const certPem = await selfSignedClientCert(name, tls.privateKey, tls.publicKey);
  return {
    name,
    tlsKeyPem: pkcs8Pem(tls.privateKey),
    certPem,
    agreementKeyPem: pkcs8Pem(generateAgreementKey('P-256').privateKey),
    reportKeyPem: pkcs8Pem(generateSigningKey(Alg.ESP256).privateKey),
  };
}

async function writeStored(file: string, s: Stored): Promise<void> {
  const tmp = `${file}.tmp`;
  await writeFile(tmp, JSON.stringify(s), { mode: 0o600 });
  await rename(tmp, file);
}

/** Problem code of an operator API error body, if any (RFC 9457 + the server's `code`). */
function codeOf(body: unknown): string | undefined {
  return typeof body === 'object' && body !== null && 'code' in body && typeof body.code === 'string'
    ? body.code
    : undefined;
}

/**
 * Software identities (module comment). `dir`: keep each identity (and its server id) in `<dir>/<name>/identity.json`.
 * `bySha256`: register the certificate's fingerprint only (no PEM upload; the server needs nothing else for a
 * self-signed device certificate).
 */
export function softwareIdentities(
  opts: { dir?: string | undefined; bySha256?: boolean } = {},
): FleetIdentitySource {
  const fileOf = (name: string): string | undefined =>
    opts.dir === undefined ? undefined : join(opts.dir, name, 'identity.json');
  return {
    async identity(_index, name) {
      const file = fileOf(name);
      if (file !== undefined && existsSync(file)) {
        const s = JSON.parse(await readFile(file, 'utf8')) as Stored;
        if (s.name !== name) throw new CliError('CLI_INPUT', `${file} belongs to ${s.name}, not ${name}`);
        return fromStored(s);
      }
      const s = await generate(name);
      if (file !== undefined) {
        await mkdir(join(opts.dir!, name), { recursive: true });
        await writeStored(file, s);
      }
      return fromStored(s);
    },
    async register(id, api, o) {
      if (id.serverId !== undefined) return id.serverId;
      if (id.kind === 'opened') return undefined;
      const res = await api.request('POST', '/v1/devices', {
        name: id.name,
        ...(opts.bySha256 === true ? { certSha256: id.certSha256 } : { certificatePem: id.tls.cert }),
        group: o.group,
        tags: [...o.tags],
        keyAgreementKeyPem: id.agreementPublicPem,
        reportKeyPem: id.reportPublicPem,
        reportKeyAlg: 'ESP256',
      });
      let serverId: string;
      if (res.status === 201) serverId = (res.json as { id: string }).id;
      else if (res.status === 409) {
        // Registered by an earlier run whose identity file did not record the id: find it by fingerprint.
        const found = await api.findDevice((d) => d.certSha256 === id.certSha256);
        if (found === undefined)
          throw new CliError(
            'CLI_REFUSED',
            `device ${id.name}: the name is taken by another certificate (${codeOf(res.json) ?? res.status})`,
          );
        serverId = found.id;
      } else
        throw new CliError(
          res.status === 401 || res.status === 403
            ? 'CLI_DENIED'
            : res.status >= 500
              ? 'CLI_SERVER'
              : 'CLI_REFUSED',
          `device ${id.name}: HTTP ${res.status} ${codeOf(res.json) ?? ''}`.trim(),
        );
      id.serverId = serverId;
      const file = fileOf(id.name);
      if (file !== undefined) {
        const s = JSON.parse(await readFile(file, 'utf8')) as Stored;
        await writeStored(file, { ...s, serverId });
      }
      return serverId;
    },
  };
}

/**
 * Factory-provisioned devices (issue 6; `rotor factory provision` directories): each opened with
 * `openFactoryDevice` — its enclave from its fuse, its agent on its flash, its proxy TLS credential signed by the
 * enclave's identity key, its attester. The factory registered them (certificate, keys, pinned RoT), so register()
 * has nothing to do. Device i is `dirs[i]`. Power cuts need memory storage and do not apply to these.
 */
export function factoryIdentities(
  dirs: readonly string[],
  opts: { deviceUrl: string; ca?: string | undefined },
): FleetIdentitySource {
  return {
    identity(index, name) {
      const dir = dirs[index];
      if (dir === undefined)
        return Promise.reject(new CliError('CLI_USAGE', `no factory device directory for device ${index}`));
      const id: OpenableIdentity = {
        kind: 'opened',
        name,
        serverId: undefined,
        async open(agent) {
          const d = await openFactoryDevice({ dir, agent });
          return {
            agent: d.agent,
            server: d.server(opts.deviceUrl, opts.ca === undefined ? {} : { ca: opts.ca }),
            tracker: { attester: d.attester, ...(d.trust === undefined ? {} : { trust: d.trust }) },
            close: () => d.close(),
          };
        },
      };
      return Promise.resolve(id);
    },
    register(id) {
      return Promise.resolve(id.serverId);
    },
  };
}

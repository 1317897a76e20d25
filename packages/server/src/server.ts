/**
 * Server assembly and lifecycle: open storage, migrate (advisory lock), bootstrap the admin token, start the
 * operator listener and (with TLS material) the mutual-TLS device listener; graceful shutdown drains in-flight
 * requests (readiness turns false first), then closes the database.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { TLSSocket } from 'node:tls';
import type { FastifyInstance } from 'fastify';
import { bearerToken, type Principal } from './auth.ts';
import { loadConfig, type ServerConfig } from './config.ts';
import { openDatabase, type Db } from './db/db.ts';
import { migrate } from './db/migrations.ts';
import { createDeviceTls, deviceTlsServerOptions } from './device-tls.ts';
import { createBaseApp, openApiDocument, type RouteRecord } from './http.ts';
import { createMetrics, type Metrics } from './metrics.ts';
import {
  registerCommonRoutes,
  registerDeviceRoutes,
  registerOperatorRoutes,
  type ServiceState,
} from './routes.ts';
import { suitAuthenticator } from './suit-auth.ts';
import { createServices, type ReleaseAuthenticator, type ServerKeys, type Services } from './services.ts';
import { operatorKeyFromPem, operatorKeyFromPkcs11, vaultFromHex } from './keys.ts';
import { connectExternalBroker, notifyRollout, startEmbeddedBroker, type Notifier } from './push.ts';
import { createAttestationService } from './attestation/service.ts';
import { registerAttestationRoutes } from './attestation/routes.ts';
import {
  createDistributionService,
  notifyAllDevices,
  registerDistributionRoutes,
} from './attestation/distribution.ts';
import { createPolicyService } from './attestation/policy.ts';
import { loadVerifierSecret } from './attestation/secret.ts';
import {
  capabilityKeyFromPem,
  createCapabilityService,
  registerCapabilityRoutes,
  type CapabilityKeys,
} from './capabilities/index.ts';

/** How often, and after how long, a confirmed update still waiting for its attestation is asked for again. */
const REASK_EVERY_MS = 2000;
const REASK_GRACE_MS = 3000;

export interface RotorServer {
  readonly config: ServerConfig;
  readonly db: Db;
  readonly services: Services;
  readonly metrics: Metrics;
  readonly operatorApp: FastifyInstance;
  readonly deviceApp: FastifyInstance | undefined;
  /** e.g. http://127.0.0.1:41234 */
  readonly operatorUrl: string;
  readonly deviceUrl: string | undefined;
  /** The embedded MQTT broker's TLS listener (undefined with MQTT_URL or without TLS material). */
  readonly mqttUrl: string | undefined;
  /** Push notifications (embedded or external broker), if any. */
  readonly notifier: Notifier | undefined;
  /** Where a generated bootstrap admin token was written (first run only). */
  readonly bootstrapTokenFile: string | undefined;
  readonly openapi: Record<string, unknown>;
  /** Graceful shutdown; idempotent. */
  close(): Promise<void>;
}

export interface StartOptions {
  /** Use this database instead of opening one from the config (tests); it is not closed by close(). */
  readonly db?: Db;
  readonly authenticator?: ReleaseAuthenticator;
  readonly metrics?: Metrics;
  /** Clock (tests). */
  readonly now?: () => number;
  /** Server keys (e.g. a PKCS#11 operator signer); default: from the configured files. */
  readonly keys?: ServerKeys;
  /** Capability-signing and capability-authority keys (issue 8); without them the capability server refuses. */
  readonly capabilityKeys?: CapabilityKeys;
}

export async function startServer(config: ServerConfig, opts: StartOptions = {}): Promise<RotorServer> {
  const ownDb = opts.db === undefined;
  if (ownDb && config.databaseUrl === undefined)
    await mkdir(config.dataDir, { recursive: true, mode: 0o700 });
  const db =
    opts.db ?? (await openDatabase({ databaseUrl: config.databaseUrl, dataDir: join(config.dataDir, 'pg') }));
  const state: ServiceState = { ready: false };
  const metrics = opts.metrics ?? createMetrics();
  let operatorApp: FastifyInstance | undefined;
  let deviceApp: FastifyInstance | undefined;
  let notifier: Notifier | undefined;
  let tokenKey: Awaited<ReturnType<typeof operatorKeyFromPkcs11>> | undefined;
  try {
    await migrate(db);
    if (opts.keys === undefined && config.operatorKeyUri !== undefined)
      tokenKey = await operatorKeyFromPkcs11(config.operatorKeyUri, { module: config.pkcs11Module });
    const keys: ServerKeys = opts.keys ?? {
      ...(tokenKey !== undefined ? { operator: tokenKey } : {}),
      ...(config.operatorKeyPem === undefined ? {} : { operator: operatorKeyFromPem(config.operatorKeyPem) }),
      ...(config.contentKekHex === undefined ? {} : { vault: vaultFromHex(config.contentKekHex) }),
    };
    const services = createServices(db, {
      authenticator: opts.authenticator ?? suitAuthenticator({ maxEnvelopeBytes: config.maxUploadBytes }),
      keys,
      ...(opts.now === undefined ? {} : { now: opts.now }),
    });
    const bootstrapTokenFile = await services.tokens.bootstrap(config.adminToken, config.dataDir);

    const ping = async (): Promise<void> => {
      await db.query('SELECT 1');
    };
    const op = createBaseApp({
      listener: 'operator',
      logLevel: config.logLevel,
      maxJsonBytes: config.maxJsonBytes,
      metrics,
      authenticate: (req): Promise<Principal> =>
        services.tokens.authenticate(bearerToken(req.headers.authorization)),
    });
    operatorApp = op.app;
    let dev: { app: FastifyInstance; routes: RouteRecord[] } | undefined;
    if (config.tls !== undefined) {
      // Client certificates: plain device certificates verified by OpenSSL against the device CA, and RFC 3820 proxy
      // certificates of registered devices, decided per connection in device-tls.ts (which is why OpenSSL's verdict
      // does not end the handshake: rejectUnauthorized false).
      const deviceTls = createDeviceTls({
        deviceCa: config.deviceCa,
        ...(opts.now === undefined ? {} : { now: opts.now }),
      });
      dev = createBaseApp({
        listener: 'device',
        logLevel: config.logLevel,
        maxJsonBytes: config.maxJsonBytes,
        metrics,
        https: {
          cert: config.tls.cert,
          key: config.tls.key,
          ...deviceTlsServerOptions(config.deviceCa),
          minVersion: 'TLSv1.2',
        },
        authenticate: (req) =>
          services.devices.authenticate(deviceTls.certificate(req.raw.socket as Partial<TLSSocket>)),
      });
      deviceApp = dev.app;
    }
    let openapi: Record<string, unknown> = {};
    registerCommonRoutes(op.app, state, ping);
    registerOperatorRoutes(op.app, services, {
      metrics: () => metrics.registry.metrics(),
      openapi: () => openapi,
      maxUploadBytes: config.maxUploadBytes,
    });
    const distribution = createDistributionService(db, opts.now);
    if (dev !== undefined) {
      registerCommonRoutes(dev.app, state, ping);
      registerDeviceRoutes(dev.app, services, {
        checkinIntervalS: config.checkinIntervalS,
        trustVersions: () => distribution.versions(),
      });
    }
    const attestation = createAttestationService(db, {
      ...(opts.now === undefined ? {} : { now: opts.now }),
      // Issue 7: one verifier secret for every instance on the database, kept across restarts (secret.ts).
      secret: await loadVerifierSecret(db, {
        vault: keys.vault,
        dataDir: config.dataDir,
        ...(opts.now === undefined ? {} : { now: opts.now }),
      }),
    });
    // Issue 7 "after every update": an enrolled device's confirmed update counts once its new measurements appraise.
    services.rollouts.setConfirmationGate((q, deviceId) => attestation.gateConfirmation(q, deviceId));
    attestation.setConfirmationListener((deviceId, ok, reason) =>
      services.rollouts.attested(deviceId, ok, reason),
    );
    registerAttestationRoutes(op.app, dev?.app, attestation);
    registerDistributionRoutes(op.app, dev?.app, distribution, createPolicyService(db, opts.now));
    const capabilityKeys: CapabilityKeys | undefined =
      opts.capabilityKeys ??
      (config.capabilitySigningKeyPem !== undefined && config.capabilityAuthorityKeyPem !== undefined
        ? {
            signing: capabilityKeyFromPem(config.capabilitySigningKeyPem, 'capability signing key'),
            authority: capabilityKeyFromPem(config.capabilityAuthorityKeyPem, 'capability authority key'),
          }
        : undefined);
    const capabilities = createCapabilityService(db, {
      ...(capabilityKeys === undefined ? {} : { keys: capabilityKeys }),
      ...(keys.vault === undefined ? {} : { vault: keys.vault }),
      ...(opts.now === undefined ? {} : { now: opts.now }),
    });
    registerCapabilityRoutes(op.app, dev?.app, capabilities);
    await op.app.ready();
    if (dev !== undefined) await dev.app.ready();
    openapi = openApiDocument(
      {
        title: 'Rotor fleet server',
        version: '0.1.0',
        description:
          'Operator API (bearer tokens) and device API (mutual TLS). Errors are RFC 9457 problem documents with a stable `code`.',
      },
      [
        { name: 'operator', routes: op.routes },
        ...(dev === undefined ? [] : [{ name: 'device' as const, routes: dev.routes }]),
      ],
    );

    const operatorUrl = await op.app.listen({ host: config.host, port: config.port });
    const deviceUrl =
      dev === undefined
        ? undefined
        : await dev.app.listen({ host: config.deviceHost, port: config.devicePort });
    if (config.mqttUrl !== undefined) {
      notifier = await connectExternalBroker(config.mqttUrl, config.mqttTopicPrefix);
    } else if (config.tls !== undefined) {
      notifier = await startEmbeddedBroker({
        host: config.mqttHost,
        port: config.mqttPort,
        prefix: config.mqttTopicPrefix,
        tls: { cert: config.tls.cert, key: config.tls.key, ca: config.deviceCa },
        authenticateDevice: (der) => services.devices.authenticate(der),
      });
    }
    const pushes = new Set<Promise<unknown>>();
    if (notifier !== undefined) {
      const n = notifier;
      services.rollouts.setWorkListener((rolloutId) => {
        const job = notifyRollout(db, n, rolloutId).catch((e: unknown) => {
          op.app.log.warn({ err: e, rolloutId }, 'push notification failed (devices will poll)');
        });
        pushes.add(job);
        void job.finally(() => pushes.delete(job));
      });
      // Issue 8: a module rollout that starts, resumes or advances nudges the devices of its share.
      capabilities.setWorkListener((rolloutId) => {
        const job = capabilities
          .nudgeRollout(rolloutId, (ids) => n.notify(ids))
          .catch((e: unknown) => {
            op.app.log.warn({ err: e, rolloutId }, 'push notification failed (devices will poll)');
          });
        pushes.add(job);
        void job.finally(() => pushes.delete(job));
      });
      // Issue 7 push: a new anchor statement or revocation list concerns every device.
      distribution.setPublishListener((what, version) => {
        const job = notifyAllDevices(db, (ids) => n.notify(ids)).catch((e: unknown) => {
          op.app.log.warn({ err: e, what, version }, 'push notification failed (devices will poll)');
        });
        pushes.add(job);
        void job.finally(() => pushes.delete(job));
      });
    }
    state.ready = true;
    metrics.ready.set(1);
    let lastReask = 0;
    const tick = setInterval(() => {
      services.rollouts.tick().catch((e: unknown) => {
        op.app.log.error({ err: e }, 'rollout evaluation failed');
      });
      // Module rollouts whose phase is due by time advance (and nudge their devices) without waiting for a read.
      capabilities.tick().catch((e: unknown) => {
        op.app.log.error({ err: e }, 'module rollout evaluation failed');
      });
      // Confirmed updates still waiting for their attestation after a grace period: ask the device again.
      const t = Date.now();
      if (t - lastReask >= REASK_EVERY_MS) {
        lastReask = t;
        attestation.reaskStalledConfirmations(REASK_GRACE_MS).catch((e: unknown) => {
          op.app.log.error({ err: e }, 'attestation re-request failed');
        });
      }
    }, config.rolloutTickMs);
    tick.unref();
    op.app.log.info(
      { operatorUrl, deviceUrl, mqttUrl: notifier?.url, engine: db.engine, bootstrapTokenFile },
      'rotor server started',
    );

    let closing: Promise<void> | undefined;
    const close = (): Promise<void> =>
      (closing ??= (async () => {
        state.ready = false;
        metrics.ready.set(0);
        clearInterval(tick);
        const apps = [op.app, ...(dev === undefined ? [] : [dev.app])];
        const timer = setTimeout(() => {
          for (const a of apps) a.server.closeAllConnections();
        }, config.shutdownGraceMs);
        try {
          await Promise.all(apps.map((a) => a.close()));
          await Promise.allSettled([...pushes]);
          await notifier?.close();
        } finally {
          clearTimeout(timer);
          await tokenKey?.close().catch(() => undefined);
          if (ownDb) await db.close();
        }
      })());

    return {
      config,
      db,
      services,
      metrics,
      operatorApp: op.app,
      deviceApp,
      operatorUrl,
      deviceUrl,
      mqttUrl: notifier?.url,
      notifier,
      bootstrapTokenFile,
      get openapi() {
        return openapi;
      },
      close,
    };
  } catch (e) {
    await operatorApp?.close().catch(() => undefined);
    await deviceApp?.close().catch(() => undefined);
    await notifier?.close().catch(() => undefined);
    await tokenKey?.close().catch(() => undefined);
    if (ownDb) await db.close().catch(() => undefined);
    throw e;
  }
}

/**
 * `rotor server`: load config, start, and shut down gracefully on SIGTERM/SIGINT. Resolves with the exit code when
 * the server has stopped.
 */
export async function runServer(
  argv: readonly string[],
  env: Readonly<Record<string, string | undefined>> = process.env,
): Promise<number> {
  const config = loadConfig({ argv, env });
  const server = await startServer(config);
  if (server.bootstrapTokenFile !== undefined) {
    process.stderr.write(
      `rotor: generated the bootstrap admin token into ${server.bootstrapTokenFile} (mode 0600); read it once and keep it safe\n`,
    );
  }
  return new Promise<number>((resolve) => {
    const stop = (signal: NodeJS.Signals): void => {
      server.operatorApp.log.info({ signal }, 'shutting down');
      process.off('SIGTERM', stop);
      process.off('SIGINT', stop);
      server.close().then(
        () => {
          resolve(0);
        },
        (e: unknown) => {
          server.operatorApp.log.error({ err: e }, 'shutdown failed');
          resolve(1);
        },
      );
    };
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
  });
}

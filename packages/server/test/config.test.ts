import { describe, expect, it } from 'vitest';
import { CoseError } from '@rotor/cose';
import { SuitError } from '@rotor/suit';
import { loadConfig, problemFor, ServerError, statusFor } from '../src/index.ts';

describe('configuration', () => {
  it('has safe defaults and no default secret', () => {
    const c = loadConfig({ argv: [], env: {} });
    expect(c).toMatchObject({
      host: '127.0.0.1',
      port: 8080,
      tls: undefined,
      databaseUrl: undefined,
      adminToken: undefined,
      logLevel: 'info',
    });
  });

  it('flags win over the environment', () => {
    const c = loadConfig({ argv: ['--port', '9000'], env: { ROTOR_PORT: '7000', ROTOR_LOG_LEVEL: 'warn' } });
    expect(c.port).toBe(9000);
    expect(c.logLevel).toBe('warn');
  });

  it('reports every problem at once and never echoes DATABASE_URL', () => {
    let err: unknown;
    try {
      loadConfig({
        argv: ['--port', '70000', '--tls-cert', '/x'],
        env: {
          DATABASE_URL: 'mysql://user:hunter2@h/db',
          ROTOR_ADMIN_TOKEN: 'short',
          ROTOR_LOG_LEVEL: 'loud',
          MQTT_URL: 'http://x',
        },
        readFile: () => 'pem',
      });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ServerError);
    const msg = (err as ServerError).message;
    expect((err as ServerError).code).toBe('CONFIG_INVALID');
    for (const part of [
      '--port',
      '--tls-cert and --tls-key',
      'DATABASE_URL',
      'ROTOR_ADMIN_TOKEN',
      '--log-level',
      'MQTT_URL',
    ])
      expect(msg).toContain(part);
    expect(msg).not.toContain('hunter2');
  });

  it('refuses unknown flags and secrets passed as flags', () => {
    expect(() => loadConfig({ argv: ['--admin-token', 'x'], env: {} })).toThrow(ServerError);
    expect(() => loadConfig({ argv: ['--database-url', 'postgres://x'], env: {} })).toThrow(ServerError);
  });
});

describe('problem documents (RFC 9457)', () => {
  it('maps server, COSE and SUIT codes to stable types and statuses', () => {
    expect(problemFor(new ServerError('FORBIDDEN', 'no'), '/v1/x')).toEqual({
      type: 'urn:rotor:problem:FORBIDDEN',
      title: 'Not permitted',
      status: 403,
      detail: 'no',
      code: 'FORBIDDEN',
      instance: '/v1/x',
    });
    expect(problemFor(new CoseError('CBOR_TRUNCATED', 'short', '$[1]'))).toMatchObject({
      status: 400,
      code: 'CBOR_TRUNCATED',
      path: '$[1]',
    });
    expect(problemFor(new SuitError('SUIT_AUTH_FAILED', 'no'))).toMatchObject({
      status: 422,
      code: 'SUIT_AUTH_FAILED',
    });
    expect(statusFor('CBOR_TOO_LARGE')).toBe(413);
    expect(statusFor('COSE_BAD_SIGNATURE')).toBe(422);
    expect(statusFor('SUIT_MANIFEST_INVALID')).toBe(400);
  });

  it('never leaks the message of an unexpected exception', () => {
    expect(problemFor(new Error('password=hunter2'))).toMatchObject({
      status: 500,
      code: 'INTERNAL',
      detail: 'internal server error',
    });
  });
});

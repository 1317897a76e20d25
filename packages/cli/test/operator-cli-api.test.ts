/**
 * The operator API client against a hostile or broken server (a stub on 127.0.0.1:0): oversized answers, wrong
 * media types, malformed JSON, shapes that break the contract and problem documents with terminal escapes are all
 * refused with typed errors; an https server with a private CA (--ca); configuration from flags and environment;
 * and the small parsers of rollout options.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ApiClient, apiConfig, cliCodeForStatus, expectShape, MAX_RESPONSE_BYTES } from '../src/api.ts';
import { CliError, ExitCode, exitCodeFor } from '../src/errors.ts';
import { parseDuration, parseFraction, parsePhases, parseTarget } from '../src/rollout.ts';
import { selfSignedCert } from '../../server/test/helpers.ts';

type Handler = (req: IncomingMessage, res: ServerResponse) => void;

function listen(server: Server): Promise<string> {
  return new Promise((done) => {
    server.listen(0, '127.0.0.1', () => {
      done(String((server.address() as AddressInfo).port));
    });
  });
}

async function failure(p: Promise<unknown>): Promise<CliError> {
  try {
    await p;
  } catch (e) {
    if (e instanceof CliError) return e;
    throw e;
  }
  throw new Error('expected a CliError');
}

describe('operator API client against a hostile server', () => {
  let server: Server;
  let api: ApiClient;
  let handler: Handler = (_req, res) => res.end();
  const seen: IncomingMessage[] = [];

  beforeAll(async () => {
    server = createServer((req, res) => {
      seen.push(req);
      handler(req, res);
    });
    const port = await listen(server);
    api = new ApiClient({ server: new URL(`http://127.0.0.1:${port}`), token: 'rot_test', ca: undefined });
  });
  afterAll(async () => {
    api.close();
    await new Promise((done) => server.close(done));
  });

  it('sends the bearer token and JSON bodies; accepts a valid answer', async () => {
    let body = '';
    handler = (req, res) => {
      req.on('data', (c: Buffer) => (body += c.toString()));
      req.on('end', () => {
        res.setHeader('content-type', 'application/json; charset=utf-8');
        res.end(JSON.stringify({ id: 'x', extra: 1 }));
      });
    };
    const r = await api.post<{ id: string }>('/v1/things', { id: 'string' }, { a: 1 });
    expect(r.id).toBe('x');
    const req = seen.at(-1)!;
    expect(req.headers.authorization).toBe('Bearer rot_test');
    expect(req.headers['content-type']).toBe('application/json');
    expect(body).toBe('{"a":1}');
  });

  it('refuses an answer larger than the bound (declared or streamed)', async () => {
    handler = (_req, res) => {
      res.setHeader('content-type', 'application/json');
      res.setHeader('content-length', String(MAX_RESPONSE_BYTES + 1));
      res.end();
    };
    expect((await failure(api.get('/v1/x', 'any'))).code).toBe('CLI_SERVER');
    handler = (_req, res) => {
      res.setHeader('content-type', 'application/json');
      const chunk = Buffer.alloc(1024 * 1024, 0x20);
      for (let i = 0; i < 9; i++) res.write(chunk);
      res.end();
    };
    const e = await failure(api.get('/v1/x', 'any'));
    expect(e.code).toBe('CLI_SERVER');
    expect(e.message).toMatch(/larger than/);
  });

  it('refuses a wrong media type, malformed JSON and a shape that breaks the contract', async () => {
    handler = (_req, res) => {
      res.setHeader('content-type', 'text/html');
      res.end('<html>');
    };
    expect((await failure(api.get('/v1/x', 'any'))).message).toMatch(/expected application\/json/);
    handler = (_req, res) => {
      res.setHeader('content-type', 'application/json');
      res.end('{"id":');
    };
    expect((await failure(api.get('/v1/x', 'any'))).message).toMatch(/malformed JSON/);
    handler = (_req, res) => {
      res.setHeader('content-type', 'application/json');
      res.end(
        JSON.stringify({
          items: [
            { id: 'a', n: 1 },
            { id: 'b', n: 'two' },
          ],
        }),
      );
    };
    const e = await failure(api.get('/v1/x', { items: [{ id: 'string', n: 'integer' }] }));
    expect(e.code).toBe('CLI_SERVER');
    expect(e.message).toMatch(/response\.items\[1\]\.n is not integer/);
    expect(exitCodeFor(e.code)).toBe(ExitCode.internal);
  });

  it('maps problem documents to exit codes and strips terminal escapes from their text', async () => {
    const cases: [number, string, number][] = [
      [401, 'AUTH_INVALID', ExitCode.denied],
      [403, 'FORBIDDEN', ExitCode.denied],
      [404, 'NOT_FOUND', ExitCode.invalid],
      [400, 'REQUEST_INVALID', ExitCode.invalid],
      [409, 'CONFLICT', ExitCode.rejected],
      [422, 'RELEASE_INVALID', ExitCode.rejected],
      [503, 'NOT_READY', ExitCode.internal],
    ];
    for (const [status, code, exit] of cases) {
      handler = (_req, res) => {
        res.statusCode = status;
        res.setHeader('content-type', 'application/problem+json');
        res.end(JSON.stringify({ type: 'x', title: 't', status, code, detail: 'bad \x1b[31mred\x1b[0m' }));
      };
      const e = await failure(api.get('/v1/x', 'any'));
      expect(exitCodeFor(e.code), code).toBe(exit);
      expect(e.problem).toBe(code);
      expect(e.message).toBe(`${code}: bad ?[31mred?[0m (HTTP ${status})`);
    }
    // Not a problem document: the status alone decides.
    handler = (_req, res) => {
      res.statusCode = 500;
      res.end('oops');
    };
    const e = await failure(api.get('/v1/x', 'any'));
    expect(e.code).toBe('CLI_SERVER');
    expect(e.problem).toBeUndefined();
    expect(cliCodeForStatus(410)).toBe('CLI_REFUSED');
  });

  it('reports an unreachable server as an I/O error', async () => {
    const dead = createServer();
    const port = await listen(dead);
    await new Promise((done) => dead.close(done));
    const c = new ApiClient({ server: new URL(`http://127.0.0.1:${port}`), token: undefined, ca: undefined });
    try {
      const e = await failure(c.get('/v1/x', 'any'));
      expect(e.code).toBe('CLI_IO');
      expect(e.message).toMatch(/ECONNREFUSED/);
    } finally {
      c.close();
    }
  });
});

describe('https with a private CA', () => {
  it('trusts the server only with --ca', async () => {
    const cert = await selfSignedCert('operator-api', { server: true });
    const server = createHttpsServer({ cert: cert.certPem, key: cert.keyPem }, (_req, res) => {
      res.setHeader('content-type', 'application/json');
      res.end('{"ok":true}');
    });
    const port = await listen(server);
    const dir = mkdtempSync(join(tmpdir(), 'rotor-ca-'));
    writeFileSync(join(dir, 'ca.pem'), cert.certPem);
    const url = `https://127.0.0.1:${port}`;
    const trusted = new ApiClient(apiConfig({ server: url, ca: join(dir, 'ca.pem') }, {}));
    const untrusted = new ApiClient(apiConfig({ server: url }, {}));
    try {
      expect(await trusted.get<{ ok: boolean }>('/v1/x', { ok: 'boolean' })).toEqual({ ok: true });
      const e = await failure(untrusted.get('/v1/x', 'any'));
      expect(e.code).toBe('CLI_IO');
    } finally {
      trusted.close();
      untrusted.close();
      await new Promise((done) => server.close(done));
    }
  });
});

describe('configuration and option parsers', () => {
  it('takes the server and token from flags, files and environment; refuses what would leak the token', () => {
    const dir = mkdtempSync(join(tmpdir(), 'rotor-cfg-'));
    writeFileSync(join(dir, 't'), '  rot_abc  \n');
    expect(apiConfig({ server: 'http://127.0.0.1:1', 'token-file': join(dir, 't') }, {}).token).toBe(
      'rot_abc',
    );
    expect(apiConfig({}, { ROTOR_SERVER: 'http://localhost:1', ROTOR_TOKEN: 'tok' }).token).toBe('tok');
    expect(apiConfig({}, { ROTOR_SERVER: 'http://[::1]:1', ROTOR_TOKEN_FILE: join(dir, 't') }).token).toBe(
      'rot_abc',
    );
    const usage = (v: Record<string, unknown>, env: Record<string, string> = {}): string => {
      try {
        apiConfig(v, env);
      } catch (e) {
        if (e instanceof CliError) return e.code;
        throw e;
      }
      return 'ok';
    };
    expect(usage({})).toBe('CLI_USAGE'); // no server
    expect(usage({ server: 'ftp://127.0.0.1' })).toBe('CLI_USAGE');
    expect(usage({ server: 'http://user:pw@127.0.0.1' })).toBe('CLI_USAGE');
    expect(usage({ server: 'http://10.0.0.1:8080' })).toBe('CLI_USAGE'); // plain http off the machine
    expect(usage({ server: 'http://10.0.0.1:8080' }, { ROTOR_INSECURE_HTTP: '1' })).toBe('ok');
    expect(usage({ server: 'https://10.0.0.1:8080' })).toBe('ok');
    writeFileSync(join(dir, 'bad'), 'two words\n');
    expect(usage({ server: 'http://127.0.0.1', 'token-file': join(dir, 'bad') })).toBe('CLI_INPUT');
    expect(usage({ server: 'http://127.0.0.1', 'token-file': join(dir, 'missing') })).toBe('CLI_IO');
  });

  it('parses targets, phases, fractions and durations strictly', () => {
    expect(parseTarget(['all'])).toEqual({});
    expect(parseTarget(['group=lab', 'tag=a', 'tag=b', 'tag=a', 'device=d1', 'attr=region=eu-west'])).toEqual(
      {
        group: 'lab',
        tags: ['a', 'b'],
        deviceIds: ['d1'],
        attributes: { region: 'eu-west' },
      },
    );
    for (const bad of [
      [],
      ['all', 'tag=a'],
      ['group=a', 'group=b'],
      ['tag='],
      ['tag=a b'],
      ['x=y'],
      ['attr=k'],
    ])
      expect(() => parseTarget(bad), bad.join(' ')).toThrow(CliError);
    expect(parsePhases('1,10,100')).toEqual([1, 10, 100]);
    for (const bad of ['', '10', '10,10,100', '0,100', '50,101', '1,,100', 'a,100'])
      expect(() => parsePhases(bad), bad).toThrow(CliError);
    expect(parseFraction('0.25', 'f')).toBe(0.25);
    expect(parseFraction('5%', 'f')).toBe(0.05);
    expect(parseFraction('1', 'f')).toBe(1);
    for (const bad of ['0', '1.5', '150%', '-1', 'x', '0%'])
      expect(() => parseFraction(bad, 'f'), bad).toThrow(CliError);
    expect(parseDuration('90s', 'd')).toBe(90_000);
    expect(parseDuration('2h', 'd')).toBe(7_200_000);
    expect(parseDuration('1d', 'd')).toBe(86_400_000);
    expect(parseDuration('250', 'd')).toBe(250);
    for (const bad of ['', '1w', '1.5h', '-1s']) expect(() => parseDuration(bad, 'd'), bad).toThrow(CliError);
    expect(expectShape<{ a: string | null }>({ a: null }, { a: 'string|null', 'b?': 'integer' })).toEqual({
      a: null,
    });
  });
});

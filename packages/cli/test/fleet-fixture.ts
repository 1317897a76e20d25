/**
 * Fixture for the fleet simulator tests: a real fleet server in process (packages/server test fixture: PGlite,
 * mutual-TLS device listener and the embedded MQTT broker on ephemeral ports), author and operator tokens, the
 * simulated author's key registered, and the trust anchors a simulated device needs (author + the server's
 * operator key).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { sim, type AnchorRecord } from '@rotor/device';
import { startFixture, type Fixture } from '../../server/test/fixtures.ts';
import { ADMIN_TOKEN } from '../../server/test/fixtures.ts';

export { ADMIN_TOKEN };
import { OperatorApi, anchorOf, coseKeyPem } from '../src/fleet/index.ts';

export interface FleetServer {
  readonly f: Fixture;
  readonly admin: OperatorApi;
  readonly author: OperatorApi;
  readonly operator: OperatorApi;
  readonly anchors: AnchorRecord[];
  close(): Promise<void>;
}

export async function startFleetServer(env: Record<string, string> = {}): Promise<FleetServer> {
  const f = await startFixture('pglite', { env: { ROTOR_CHECKIN_INTERVAL_S: '30', ...env } });
  const admin = new OperatorApi(f.server.operatorUrl, ADMIN_TOKEN);
  const token = async (role: string): Promise<OperatorApi> => {
    const r = await admin.call<{ token: string }>('POST', '/v1/tokens', { name: `${role} token`, role }, 201);
    return new OperatorApi(f.server.operatorUrl, r.token);
  };
  const authorPem = coseKeyPem(sim.keys().anchors.find((a) => a.role === 'author')!.key);
  await admin.call(
    'POST',
    '/v1/author-keys',
    { name: 'sim-author', alg: 'ESP256', publicKeyPem: authorPem },
    201,
  );
  const anchors = [
    anchorOf('fleet-operator', 'operator', readFileSync(join(f.dataDir, 'operator.pem'), 'utf8')),
  ];
  const author = await token('author');
  const operator = await token('operator');
  return {
    f,
    admin,
    author,
    operator,
    anchors,
    async close() {
      admin.close();
      author.close();
      operator.close();
      await f.close();
    },
  };
}

/**
 * What the benches that run a Rotor server share: self-signed P-256 certificates (node:crypto keys,
 * @peculiar/x509 for the X.509) and the server configuration — ephemeral operator, device and MQTT ports, the
 * server's certificate and key written into its data directory.
 */
import 'reflect-metadata';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as x509 from '@peculiar/x509';
import { loadConfig, type ServerConfig } from '@rotor/server';

x509.cryptoProvider.set(globalThis.crypto);

export interface CertPair {
  certPem: string;
  keyPem: string;
}

export async function selfSigned(cn: string, server: boolean): Promise<CertPair> {
  const alg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };
  const keys = await globalThis.crypto.subtle.generateKey(alg, true, ['sign', 'verify']);
  const extensions: x509.Extension[] = [new x509.BasicConstraintsExtension(false, undefined, true)];
  if (server) extensions.push(new x509.SubjectAlternativeNameExtension([{ type: 'ip', value: '127.0.0.1' }]));
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: `01${randomBytes(8).toString('hex')}`,
    name: `CN=${cn}`,
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + 86_400_000),
    keys,
    signingAlgorithm: alg,
    extensions,
  });
  const pkcs8 = Buffer.from(await globalThis.crypto.subtle.exportKey('pkcs8', keys.privateKey)).toString(
    'base64',
  );
  return {
    certPem: cert.toString('pem'),
    keyPem: `-----BEGIN PRIVATE KEY-----\n${pkcs8.replace(/(.{64})/g, '$1\n').replace(/\n$/, '')}\n-----END PRIVATE KEY-----\n`,
  };
}

/**
 * A server certificate for 127.0.0.1 written into `dir` (server.crt, server.key) and a configuration on ephemeral
 * ports with `dir` as data directory; `argv` and `env` add to it.
 */
export async function benchServerConfig(
  dir: string,
  opts: { argv?: string[]; env?: Record<string, string>; logLevel?: string } = {},
): Promise<{ config: ServerConfig; cert: CertPair }> {
  const cert = await selfSigned('rotor-bench-server', true);
  writeFileSync(join(dir, 'server.crt'), cert.certPem);
  writeFileSync(join(dir, 'server.key'), cert.keyPem, { mode: 0o600 });
  const config = loadConfig({
    argv: [
      ...['--port', '0', '--device-port', '0', '--mqtt-port', '0'],
      ...['--log-level', opts.logLevel ?? 'silent', '--data-dir', dir],
      ...(opts.argv ?? []),
    ],
    env: {
      ...opts.env,
      ROTOR_TLS_CERT_FILE: join(dir, 'server.crt'),
      ROTOR_TLS_KEY_FILE: join(dir, 'server.key'),
    },
  });
  return { config, cert };
}

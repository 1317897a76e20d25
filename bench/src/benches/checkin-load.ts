/**
 * Load generator of the checkin bench, run as a separate process: `connections` keep-alive mutual-TLS
 * connections (one client certificate each, cycled from the given list), each sending POST /d/v1/checkin back to
 * back for `seconds`. Prints one JSON line: requests, seconds, p50/p99 latency (ms), errors.
 */
import { Agent, request } from 'node:https';

interface Args {
  url: string;
  ca: string;
  certs: { certPem: string; keyPem: string }[];
  connections: number;
  seconds: number;
}

const args = JSON.parse(process.argv[2] ?? '{}') as Args;
const lat: number[] = [];
let errors = 0;
const deadline = performance.now() + args.seconds * 1000;

function once(agent: Agent): Promise<void> {
  return new Promise((resolve) => {
    const t0 = performance.now();
    const req = request(
      new URL('/d/v1/checkin', args.url),
      { method: 'POST', agent, headers: { 'content-length': '0' } },
      (res) => {
        res.on('data', () => undefined);
        res.on('end', () => {
          if (res.statusCode === 200) lat.push(performance.now() - t0);
          else errors++;
          resolve();
        });
      },
    );
    req.on('error', () => {
      errors++;
      resolve();
    });
    req.end();
  });
}

async function loop(i: number): Promise<void> {
  const c = args.certs[i % args.certs.length]!;
  const agent = new Agent({ keepAlive: true, maxSockets: 1, ca: args.ca, cert: c.certPem, key: c.keyPem });
  // warm-up: the TLS handshake is not part of the steady-state rate
  await once(agent);
  lat.length = 0;
  while (performance.now() < deadline) await once(agent);
  agent.destroy();
}

const start = performance.now();
await Promise.all(Array.from({ length: args.connections }, (_, i) => loop(i)));
const seconds = (performance.now() - start) / 1000;
const s = lat.sort((a, b) => a - b);
const q = (p: number): number => s[Math.min(s.length - 1, Math.floor(p * s.length))] ?? 0;
process.stdout.write(
  `${JSON.stringify({ requests: s.length, seconds, p50: q(0.5), p99: q(0.99), errors })}\n`,
);

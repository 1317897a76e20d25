/**
 * Worker of the keydelivery bench: wraps a content key for its share of the fleet with the server's own code
 * (`wrapForDevice`, or `buildDeviceEnvelope` for the full per-device envelope) and reports its rate.
 */
import { createPublicKey, randomBytes } from 'node:crypto';
import { parentPort, workerData } from 'node:worker_threads';
import { generateSigningKey } from '@rotor/cose';
import {
  buildDeviceEnvelope,
  operatorKeyFrom,
  wrapForDevice,
  type DeviceRecipient,
  type ReleaseTemplate,
} from '@rotor/server';

interface Job {
  kind: 'aes-kw' | 'x25519' | 'p256' | 'envelope';
  devices: number;
  /** SPKI DER of the device key-agreement keys (cycled), or raw KEKs. */
  keys: Uint8Array[];
  template?: ReleaseTemplate;
}

const job = workerData as Job;
const cek = new Uint8Array(randomBytes(16));
const recipients: DeviceRecipient[] = job.keys.map((k) =>
  job.kind === 'aes-kw'
    ? { kind: 'aes-kw', kek: k }
    : { kind: 'ecdh', publicKey: createPublicKey({ key: Buffer.from(k), format: 'der', type: 'spki' }) },
);
const operator = operatorKeyFrom(generateSigningKey(-7).privateKey);

async function one(i: number): Promise<number> {
  const r = recipients[i % recipients.length]!;
  if (job.kind === 'envelope') {
    const e = await buildDeviceEnvelope(job.template!, cek, r, operator.signer);
    return e.envelope.length;
  }
  return wrapForDevice(cek, r).ciphertext?.length ?? 0;
}

for (let i = 0; i < Math.min(200, job.devices); i++) await one(i); // warm-up
const t0 = performance.now();
let bytes = 0;
for (let i = 0; i < job.devices; i++) bytes += await one(i);
const seconds = (performance.now() - t0) / 1000;
parentPort!.postMessage({ devices: job.devices, seconds, bytes });

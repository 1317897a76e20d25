/**
 * `npm run bench -- provision`: manufacturing provisioning (issue 6) with the CA key in a SoftHSM2 token.
 *
 *  - devices_per_s: devices fully provisioned per second by provisionDevices — device enclave key generation and
 *    CSR (EnclaveCore on an in-memory flash: the devices' flash is not the factory's disk), CSR checks, device
 *    certificate signed by the issuing CA in the token, journal records (fsynced, group-committed), audit record +
 *    registration in one transaction (PGlite in memory), atomic install of the bundle on the device;
 *  - raw_sign_per_s: bare PKCS#11 ECDSA P-256 signatures per second with the same key on the same token, the
 *    baseline measured beside it in alternating rounds; "ratio" = devices_per_s / raw_sign_per_s (goal ≥ 0.3:
 *    the token's signature is the one step a device cannot skip). Goal for devices_per_s: ≥ 200.
 */
import 'reflect-metadata';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { coseKeyToPublicKeyObject, decodeCoseKey, type Signer } from '@rotor/cose';
import { AtomicStore, EnclaveCore, SimulatedFs } from '@rotor/device';
import {
  createDeviceCsr,
  createIssuingCa,
  createRootCa,
  dbRegistry,
  FactoryToken,
  migrate,
  openDatabase,
  provisionDevices,
  ueidUrn,
  type CaCert,
  type DeviceFactory,
  type ProvisioningProfile,
} from '@rotor/server';
import { median, round, type Benchmark } from '../harness.ts';

const MODULES = ['/usr/lib/softhsm/libsofthsm2.so', '/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so'];

/** Devices with the real enclave on in-memory flash; each gets its own fuse secret. */
function memoryDevices(): DeviceFactory {
  const flash = new Map<number, { fs: SimulatedFs; fuse: Uint8Array }>();
  const cores = new Map<number, EnclaveCore>();
  return {
    async open(i) {
      let f = flash.get(i);
      if (f === undefined) {
        f = { fs: new SimulatedFs(), fuse: new Uint8Array(randomBytes(32)) };
        flash.set(i, f);
      }
      const core = await EnclaveCore.open({ fs: f.fs, dir: 'enclave', fuse: f.fuse });
      cores.set(i, core);
      const deviceId = ueidUrn(core.ueid);
      const fs = f.fs;
      return {
        deviceId,
        async createCsr() {
          const info = await core.generateKey({ keyId: 'identity', type: 'ES256' });
          const spki = new Uint8Array(
            coseKeyToPublicKeyObject(decodeCoseKey(info.publicKey)).export({ type: 'spki', format: 'der' }),
          );
          const signer: Signer = {
            alg: -7,
            kid: undefined,
            sign: async (data) => (await core.sign({ keyId: 'identity', data })).signature,
          };
          return createDeviceCsr(signer, spki, 'P-256', deviceId);
        },
        async install(b) {
          const store = await AtomicStore.open(fs, 'identity');
          await store.transact(
            new Map([
              ['certificate.pem', new TextEncoder().encode(b.certificatePem)],
              ['chain.pem', new TextEncoder().encode(b.chainPem.join(''))],
              ['anchors.json', new TextEncoder().encode(JSON.stringify(b.trustAnchors))],
            ]),
          );
        },
      };
    },
    async close(i) {
      await cores.get(i)?.close();
      cores.delete(i);
      flash.delete(i); // the device leaves the fixture
    },
    discard(i) {
      flash.delete(i);
      return Promise.resolve();
    },
  };
}

export const provisionBench: Benchmark = {
  name: 'provision',
  description:
    'devices provisioned per second (CA key in SoftHSM2) vs raw PKCS#11 signatures on the same token',
  async run(ctx) {
    const module = MODULES.find((m) => existsSync(m));
    if (module === undefined) throw new Error('SoftHSM2 is not installed (apt-get install softhsm2)');
    const dir = mkdtempSync(join(tmpdir(), 'rotor-bench-provision-'));
    mkdirSync(join(dir, 'tokens'));
    const conf = join(dir, 'softhsm2.conf');
    writeFileSync(
      conf,
      `directories.tokendir = ${join(dir, 'tokens')}\nobjectstore.backend = file\nlog.level = ERROR\n`,
    );
    process.env.SOFTHSM2_CONF = conf;
    execFileSync(
      'softhsm2-util',
      ['--init-token', '--free', '--label', 'bench', '--pin', '1111', '--so-pin', '2222'],
      {
        stdio: 'pipe',
      },
    );
    const token = FactoryToken.open({ module, token: 'pkcs11:token=bench', pin: '1111' });
    const db = await openDatabase({});
    try {
      await migrate(db);
      const key = async (o: string): Promise<CaCert['key']> => {
        const u = `pkcs11:token=bench;object=${o}`;
        const { spki } = await token.generate(u, 'P-256');
        return { signer: await token.signer(u), spki, type: 'P-256' };
      };
      const rk = await key('root');
      const ik = await key('issuing');
      const root: CaCert = {
        key: rk,
        cert: await createRootCa(rk, { name: 'CN=Bench Root', validityDays: 30 }),
      };
      const issuing: CaCert = {
        key: ik,
        cert: await createIssuingCa(root, ik, { name: 'CN=Bench Issuing', validityDays: 30 }),
      };
      const pem = '-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n';
      const profile: ProvisioningProfile = {
        name: 'bench',
        deviceClass: 'bench',
        keyType: 'P-256',
        validityDays: 365,
        trustAnchors: { authorKeyPem: pem, operatorKeyPem: pem, serverTlsCaPem: pem, factoryCaPem: pem },
        firmware: null,
        antiRollback: { fw: 1 },
      };
      const devices = memoryDevices();
      const registry = dbRegistry(db);
      const journalPath = join(dir, 'bench.journal');
      const rounds = ctx.quick ? 1 : 3;
      const perRound = ctx.quick ? 24 : 400;
      const rawMs = ctx.quick ? 300 : 1500;
      const tbs = randomBytes(400);
      const issuingUri = 'pkcs11:token=bench;object=issuing';
      let total = 0;
      const dev: number[] = [];
      const raw: number[] = [];
      for (let r = 0; r < rounds; r++) {
        let n = 0;
        let t0 = performance.now();
        while (performance.now() - t0 < rawMs) {
          for (let i = 0; i < 32; i++) await token.sign(issuingUri, tbs);
          n += 32;
        }
        raw.push((n * 1000) / (performance.now() - t0));
        total += perRound;
        t0 = performance.now();
        const res = await provisionDevices({
          root,
          issuing,
          profile,
          journalPath,
          count: total,
          devices,
          registry,
          concurrency: 16,
        });
        dev.push((res.provisioned * 1000) / (performance.now() - t0));
        ctx.log(
          `round ${r + 1}/${rounds}: ${round(dev.at(-1)!, 1)} devices/s, ${round(raw.at(-1)!, 0)} signatures/s`,
        );
      }
      const devicesPerS = median(dev);
      const rawPerS = median(raw);
      const ratio = devicesPerS / rawPerS;
      return {
        rows: [
          { measure: 'devices provisioned', per_s: round(devicesPerS, 1) },
          { measure: 'raw PKCS#11 ES256 signatures', per_s: round(rawPerS, 1) },
        ],
        figures: {
          devices_per_s: round(devicesPerS, 1),
          raw_sign_per_s: round(rawPerS, 1),
          ratio: round(ratio, 3),
          ratio_goal: 0.3,
          ratio_met: ratio >= 0.3,
          devices_per_s_goal: 200,
          devices_per_s_met: devicesPerS >= 200,
          devices: total,
          cpus: availableParallelism(),
          load1: round(loadavg()[0] ?? 0, 2),
        },
      };
    } finally {
      await db.close();
      await token.close();
      rmSync(dir, { recursive: true, force: true });
    }
  },
};

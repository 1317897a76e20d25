/**
 * The verifier's keys, shared by every server instance on one database and kept across restarts (issue 7):
 *  - the nonce MAC key: a nonce issued by instance A must be accepted (once) by instance B — the single-use
 *    record is already in the shared database (attestation_nonces);
 *  - the result-signing key: results signed by any instance verify under the one published key, before and after
 *    a restart (RFC 9334 §3.3: relying parties hold the verifier's key).
 *
 * Both derive from one 32-byte secret (HKDF-SHA-256, RFC 5869, distinct info labels: key separation). Where the
 * secret lives:
 *  - with a content-key vault (the server's key-encryption key file): in the database, wrapped under the vault
 *    (A256KW, RFC 3394 §2.2.3 integrity check — a different KEK or a tampered row fails loudly at start), created
 *    by whichever instance starts first (migration 12, INSERT … ON CONFLICT DO NOTHING);
 *  - without one: in the data directory, `verifier.secret`, mode 0600, created once (written whole under a temporary
 *    name, then linked into place) — instances behind one load balancer then need the same file (like the other key
 *    files).
 * The secret is never logged.
 */
import {
  createECDH,
  createPrivateKey,
  createPublicKey,
  hkdfSync,
  randomBytes,
  type KeyObject,
} from 'node:crypto';
import { link, open, readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Db } from '../db/db.ts';
import { ServerError } from '../errors.ts';
import type { ContentKeyVault } from '../keys.ts';

export const SECRET_BYTES = 32;
export const SECRET_NAME = 'verifier';
export const SECRET_FILE = 'verifier.secret';
const NONCE_INFO = 'rotor verifier nonce MAC key v1';
const RESULT_INFO = 'rotor verifier result-signing key v1 (P-256)';

/** Order of the P-256 group (SEC 2 §2.4.2). */
const P256_N = 0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551n;

const b64u = (b: Uint8Array): string => Buffer.from(b).toString('base64url');

const present = (path: string): Promise<boolean> =>
  stat(path).then(
    () => true,
    (e: unknown) => {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw e;
    },
  );

/** Loads (or creates once) the verifier secret; see the module comment for where it lives. */
export async function loadVerifierSecret(
  db: Db,
  opts: { vault?: ContentKeyVault | undefined; dataDir: string; now?: () => number },
): Promise<Uint8Array> {
  if (opts.vault !== undefined) {
    const vault = opts.vault;
    const fresh = await vault.wrap(new Uint8Array(randomBytes(SECRET_BYTES)));
    await db.query(
      `INSERT INTO verifier_secrets (name, wrapped, created_at_ms) VALUES ($1, $2, $3)
       ON CONFLICT (name) DO NOTHING`,
      [SECRET_NAME, fresh, (opts.now ?? Date.now)()],
    );
    const rows = await db.query<{ wrapped: Uint8Array }>(
      'SELECT wrapped FROM verifier_secrets WHERE name = $1',
      [SECRET_NAME],
    );
    const w = rows[0]?.wrapped;
    if (w === undefined) throw new ServerError('INTERNAL', 'verifier secret row missing after insert');
    try {
      const s = await vault.unwrap(new Uint8Array(w));
      if (s.length !== SECRET_BYTES) throw new Error(`${s.length} bytes`);
      return s;
    } catch (e) {
      throw new ServerError(
        'CONFIG_INVALID',
        'the verifier secret in the database does not unwrap under this content key-encryption key (RFC 3394 §2.2.3): every instance on one database needs the same key file',
        { cause: e },
      );
    }
  }
  const path = join(opts.dataDir, SECRET_FILE);
  // Written whole under a temporary name, then linked into place (link fails with EEXIST if another instance won):
  // a concurrent start or a failed write never leaves a partial verifier.secret behind.
  const tmp = `${path}.${randomBytes(8).toString('hex')}.tmp`;
  if (!(await present(path))) {
    try {
      const fh = await open(tmp, 'wx', 0o600);
      try {
        await fh.writeFile(`${Buffer.from(randomBytes(SECRET_BYTES)).toString('hex')}\n`);
        await fh.sync();
      } finally {
        await fh.close();
      }
      await link(tmp, path);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    } finally {
      await rm(tmp, { force: true });
    }
  }
  const text = (await readFile(path, 'utf8')).trim();
  if (!/^[0-9a-f]{64}$/.test(text))
    throw new ServerError('CONFIG_INVALID', `${SECRET_FILE}: 64 lowercase hex digits (256 bits) required`);
  return new Uint8Array(Buffer.from(text, 'hex'));
}

/** The nonce MAC key (HKDF-SHA-256 of the secret, RFC 5869). */
export function nonceKeyOf(secret: Uint8Array): Uint8Array {
  return new Uint8Array(hkdfSync('sha256', secret, new Uint8Array(0), NONCE_INFO, 32));
}

/**
 * The result-signing key: a P-256 private scalar from HKDF output reduced into [1, n-1] (48 bytes of output,
 * FIPS 186-5 A.2.1 "extra random bits": the bias is below 2^-64).
 */
export function resultKeyPairOf(secret: Uint8Array): { privateKey: KeyObject; publicKey: KeyObject } {
  const okm = Buffer.from(hkdfSync('sha256', secret, new Uint8Array(0), RESULT_INFO, 48));
  const d = (BigInt(`0x${okm.toString('hex')}`) % (P256_N - 1n)) + 1n;
  const dBytes = Buffer.from(d.toString(16).padStart(64, '0'), 'hex');
  const ecdh = createECDH('prime256v1');
  ecdh.setPrivateKey(dBytes);
  const pub = ecdh.getPublicKey(); // 0x04 ‖ x ‖ y
  const privateKey = createPrivateKey({
    key: {
      kty: 'EC',
      crv: 'P-256',
      d: b64u(dBytes),
      x: b64u(pub.subarray(1, 33)),
      y: b64u(pub.subarray(33)),
    },
    format: 'jwk',
  });
  return { privateKey, publicKey: createPublicKey(privateKey) };
}

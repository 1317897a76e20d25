/**
 * Child process of the payload bench: serves one encrypted image over loopback HTTP. The ciphertext is generated
 * and encrypted once at start-up and held in this process, so serving costs what a static file server's does
 * (a socket write per piece) and the server does not compete with the agent for the CPU during the measurement
 * (it used to encrypt on the fly, on a two-core machine). argv: size in bytes, content alg, KEK hex. Prints one
 * JSON line: { port, sha256, info } (plaintext SHA-256 and the SUIT_Encryption_Info, hex).
 */
import { createHash, randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Alg, createContentCipher, encodeEncrypt, HeaderLabel, encode, wrapForAesKw } from '@rotor/cose';

const size = Number(process.argv[2]);
const alg = Number(process.argv[3]);
const kek = Buffer.from(process.argv[4] ?? '', 'hex');
const PIECE = 256 * 1024;
const aead = alg === Alg.A128GCM || alg === Alg.A256GCM;
const cek = new Uint8Array(randomBytes(alg === Alg.A256GCM || alg === Alg.A256CTR ? 32 : 16));
const iv = new Uint8Array(randomBytes(aead ? 12 : 16));
const protectedBytes = aead ? encode(new Map([[HeaderLabel.alg, alg]])) : new Uint8Array(0);
const unprotected = new Map<number, unknown>(aead ? [] : [[HeaderLabel.alg, alg]]);
unprotected.set(HeaderLabel.iv, iv);

function piece(i: number): Uint8Array {
  const b = new Uint8Array(PIECE);
  const seed = createHash('sha256').update(String(i)).digest();
  for (let j = 0; j < PIECE; j += 32) b.set(seed, j);
  return b;
}

const h = createHash('sha256');
const cipher = createContentCipher(alg, cek, iv, protectedBytes);
const ciphertext: Uint8Array[] = [];
for (let off = 0, i = 0; off < size; off += PIECE, i++) {
  const p = piece(i).subarray(0, Math.min(PIECE, size - off));
  h.update(p);
  ciphertext.push(cipher.update(p));
}
ciphertext.push(cipher.final());
const info = encodeEncrypt({
  protectedBytes,
  unprotected,
  ciphertext: null,
  recipients: [wrapForAesKw(cek, kek, Alg.A128KW)],
});

const server = createServer((_req, res) => {
  res.writeHead(200, { 'content-length': String(size + (aead ? 16 : 0)) });
  let i = 0;
  const pump = (): void => {
    while (i < ciphertext.length) {
      if (!res.write(ciphertext[i++])) {
        res.once('drain', pump);
        return;
      }
    }
    res.end();
  };
  pump();
});
server.listen(0, '127.0.0.1', () => {
  const port = (server.address() as AddressInfo).port;
  process.stdout.write(
    `${JSON.stringify({ port, sha256: h.digest('hex'), info: Buffer.from(info).toString('hex') })}\n`,
  );
});
process.stdin.on('end', () => server.close());
process.stdin.resume();

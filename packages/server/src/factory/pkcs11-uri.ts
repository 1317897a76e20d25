/**
 * RFC 7512 PKCS#11 URIs, the names of factory keys: `pkcs11:token=rotor-factory;object=issuing-ca;type=private`.
 * Only what the factory needs is accepted (bounded and validated; anything else is PKCS11_URI_INVALID): the path
 * attributes token, manufacturer, model, serial, object, id, type (RFC 7512 §2.3) and the query attributes
 * module-path, pin-source, pin-value (§2.3). Unknown attributes are refused rather than ignored (our strict choice),
 * so a URI never silently matches a key it did not mean.
 */
import { ServerError } from '../errors.ts';

export interface Pkcs11Uri {
  readonly token?: string;
  readonly manufacturer?: string;
  readonly model?: string;
  readonly serial?: string;
  readonly object?: string;
  /** CKA_ID bytes. */
  readonly id?: Uint8Array;
  readonly type?: 'private' | 'public' | 'cert' | 'secret-key' | 'data';
  readonly modulePath?: string;
  readonly pinSource?: string;
  readonly pinValue?: string;
}

const MAX_URI = 1024;
const PATH_ATTRS = new Set(['token', 'manufacturer', 'model', 'serial', 'object', 'id', 'type']);
const QUERY_ATTRS = new Set(['module-path', 'pin-source', 'pin-value']);
const TYPES: readonly string[] = ['private', 'public', 'cert', 'secret-key', 'data'];
const isType = (v: string): v is NonNullable<Pkcs11Uri['type']> => TYPES.includes(v);

function bad(msg: string): ServerError {
  return new ServerError('PKCS11_URI_INVALID', `PKCS#11 URI: ${msg}`);
}

/**
 * RFC 7512 §2.3: values are percent-encoded (RFC 3986 §2.1); `id` is arbitrary bytes. Path values may not hold
 * '/', '?', ';' (pk11-pchar); query values may hold '/', '?', ';' and '|' unencoded (pk11-qchar), so that
 * `pin-source=file:/run/pin` is written as is.
 */
function pctBytes(v: string, query = false): Uint8Array {
  const out: number[] = [];
  for (let i = 0; i < v.length; i++) {
    const c = v.charCodeAt(i);
    if (v[i] === '%') {
      const h = v.slice(i + 1, i + 3);
      if (!/^[0-9A-Fa-f]{2}$/.test(h)) throw bad('bad percent-encoding');
      out.push(parseInt(h, 16));
      i += 2;
    } else if (c < 0x21 || c > 0x7e || (query ? '#&=' : '/?#;&=').includes(v[i]!)) {
      throw bad('character must be percent-encoded');
    } else {
      out.push(c);
    }
  }
  return new Uint8Array(out);
}

function pctText(v: string, query = false): string {
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(pctBytes(v, query));
  } catch (e) {
    if (e instanceof ServerError) throw e;
    throw bad('value is not UTF-8');
  }
}

export function parsePkcs11Uri(uri: string): Pkcs11Uri {
  if (uri.length > MAX_URI) throw bad(`longer than ${MAX_URI} characters`);
  // RFC 7512 §2.3: the scheme name is case-insensitive.
  if (!/^pkcs11:/i.test(uri)) throw bad("must start with 'pkcs11:'");
  const rest = uri.slice('pkcs11:'.length);
  const q = rest.indexOf('?');
  const path = q < 0 ? rest : rest.slice(0, q);
  const query = q < 0 ? '' : rest.slice(q + 1);
  const r: { -readonly [K in keyof Pkcs11Uri]: Pkcs11Uri[K] } = {};
  const seen = new Set<string>();
  const parts = (s: string, sep: string): string[] => (s === '' ? [] : s.split(sep));
  for (const part of parts(path, ';')) {
    const eq = part.indexOf('=');
    if (eq <= 0) throw bad(`path attribute '${part}' has no value`);
    const k = part.slice(0, eq).toLowerCase();
    const v = part.slice(eq + 1);
    if (!PATH_ATTRS.has(k)) throw bad(`unsupported path attribute '${k}'`);
    // RFC 7512 §2.3: an attribute MUST NOT appear more than once in the path.
    if (seen.has(k)) throw bad(`duplicate attribute '${k}'`);
    seen.add(k);
    if (k === 'id') r.id = pctBytes(v);
    else if (k === 'type') {
      if (!isType(v)) throw bad(`bad type '${v}'`);
      r.type = v;
    } else if (k === 'token') r.token = pctText(v);
    else if (k === 'manufacturer') r.manufacturer = pctText(v);
    else if (k === 'model') r.model = pctText(v);
    else if (k === 'serial') r.serial = pctText(v);
    else r.object = pctText(v);
  }
  for (const part of parts(query, '&')) {
    const eq = part.indexOf('=');
    if (eq <= 0) throw bad(`query attribute '${part}' has no value`);
    const k = part.slice(0, eq).toLowerCase();
    if (!QUERY_ATTRS.has(k)) throw bad(`unsupported query attribute '${k}'`);
    if (seen.has(k)) throw bad(`duplicate attribute '${k}'`);
    seen.add(k);
    const v = pctText(part.slice(eq + 1), true);
    if (k === 'module-path') r.modulePath = v;
    else if (k === 'pin-source') r.pinSource = v;
    else r.pinValue = v;
  }
  return r;
}

/** Percent-encodes a label for a URI path value (RFC 7512 §2.3 pchar minus the reserved separators). */
export function pkcs11UriFor(token: string, object: string): string {
  const enc = (s: string): string =>
    Array.from(new TextEncoder().encode(s), (b) =>
      /[A-Za-z0-9\-._~]/.test(String.fromCharCode(b))
        ? String.fromCharCode(b)
        : `%${b.toString(16).padStart(2, '0').toUpperCase()}`,
    ).join('');
  return `pkcs11:token=${enc(token)};object=${enc(object)};type=private`;
}

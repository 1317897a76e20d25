/**
 * Principals, roles and the permission table. Every service method calls `authorize(principal, action)` first;
 * an action not in the table, or a role not listed for it, is refused (deny by default). Operator API tokens are
 * `rot_<16 hex id>_<43 base64url secret>`; only SHA-256 of the secret is stored (the secret has 256 bits of
 * entropy, so a slow hash adds nothing) and it is compared in constant time.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { ServerError } from './errors.ts';

export const ROLES = ['author', 'operator', 'admin', 'auditor'] as const;
export type Role = (typeof ROLES)[number];

export type Principal =
  | { readonly kind: 'operator'; readonly tokenId: string; readonly name: string; readonly role: Role }
  | { readonly kind: 'device'; readonly deviceId: string; readonly name: string }
  /** The server itself (bootstrap, timers). Never the result of authenticating a request. */
  | { readonly kind: 'system' };

export const SYSTEM: Principal = { kind: 'system' };

/**
 * Which roles may do what (RFC 9019 §2.2 roles: the author makes images available, the device operator decides to
 * deploy; admin manages identities and keys; auditor reads everything and changes nothing).
 */
export const PERMISSIONS = {
  'token.create': ['admin'],
  'token.read': ['admin', 'auditor'],
  'token.revoke': ['admin'],
  'device.create': ['admin'],
  'device.update': ['admin'],
  'device.read': ['admin', 'operator', 'auditor'],
  'authorKey.create': ['admin'],
  'authorKey.revoke': ['admin'],
  'authorKey.read': ['admin', 'author', 'operator', 'auditor'],
  'payload.upload': ['author'],
  'release.upload': ['author'],
  'release.read': ['admin', 'author', 'operator', 'auditor'],
  'release.approve': ['operator'],
  'rollout.create': ['operator'],
  'rollout.pause': ['operator'],
  'rollout.resume': ['operator'],
  'rollout.cancel': ['operator'],
  'rollout.read': ['admin', 'operator', 'auditor'],
  'audit.read': ['admin', 'auditor'],
  // Attestation, roots of trust, trust anchors, revocation and policy (issue 7; RFC 9334 verifier/relying party).
  'attestation.request': ['admin', 'operator'],
  'attestation.read': ['admin', 'operator', 'auditor'],
  'attestation.reference': ['admin', 'operator'],
  'attestation.revoked': ['admin', 'operator'],
  'rot.rotate': ['admin', 'operator'],
  'rot.read': ['admin', 'operator', 'auditor'],
  'anchors.upload': ['admin'],
  'revocation.upload': ['admin', 'operator'],
  'policy.set': ['admin'],
  'policy.read': ['admin', 'operator', 'auditor'],
  'device.quarantine': ['admin', 'operator'],
  // Capability modules (issue 8; seed 000 §1): authors upload, operators revoke and authorize (manifests).
  'capability.upload': ['author', 'admin'],
  'capability.read': ['admin', 'author', 'operator', 'auditor'],
  'capability.revoke': ['admin', 'operator'],
  'capability.manifest': ['admin', 'operator'],
  'capability.rollout': ['operator'],
} as const satisfies Record<string, readonly Role[]>;

export type OperatorAction = keyof typeof PERMISSIONS;

/** What a device may do: only ever on its own resources (the service checks the device id). */
export const DEVICE_ACTIONS = [
  'device.self',
  'device.checkin',
  'device.report',
  'payload.download',
  'capability.query',
] as const;
export type DeviceAction = (typeof DEVICE_ACTIONS)[number];

export type Action = OperatorAction | DeviceAction;

export function isAllowed(p: Principal, action: Action): boolean {
  switch (p.kind) {
    case 'system':
      return true;
    case 'device':
      return (DEVICE_ACTIONS as readonly string[]).includes(action);
    case 'operator': {
      const roles: readonly Role[] | undefined = (PERMISSIONS as Partial<Record<string, readonly Role[]>>)[
        action
      ];
      return roles !== undefined && roles.includes(p.role);
    }
  }
}

export function authorize(p: Principal, action: Action): void {
  if (!isAllowed(p, action)) {
    const who = p.kind === 'operator' ? `role '${p.role}'` : p.kind;
    throw new ServerError('FORBIDDEN', `${who} may not ${action}`);
  }
}

/** A device principal acting on `deviceId`'s resources: refused unless it is the device itself. */
export function authorizeDevice(p: Principal, action: DeviceAction, deviceId: string): void {
  authorize(p, action);
  if (p.kind === 'device' && p.deviceId !== deviceId)
    throw new ServerError('DEVICE_FORBIDDEN', 'a device sees only its own resources');
}

export function actorOf(p: Principal): string {
  switch (p.kind) {
    case 'system':
      return 'system';
    case 'device':
      return `device:${p.deviceId}`;
    case 'operator':
      return `token:${p.tokenId}`;
  }
}

export const BOOTSTRAP_TOKEN_ID = 'bootstrap';
const TOKEN_RE = /^rot_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$/;

export function sha256(data: Uint8Array | string): Uint8Array {
  return new Uint8Array(createHash('sha256').update(data).digest());
}

export function newToken(): { id: string; token: string; secretHash: Uint8Array } {
  const id = randomBytes(8).toString('hex');
  const secret = randomBytes(32).toString('base64url');
  return { id, token: `rot_${id}_${secret}`, secretHash: sha256(secret) };
}

/** Splits a presented token into the id to look up and the hash to compare. Any other shape is the bootstrap token. */
export function parseToken(token: string): { id: string; secretHash: Uint8Array } {
  const m = TOKEN_RE.exec(token);
  if (m !== null) return { id: m[1]!, secretHash: sha256(m[2]!) };
  return { id: BOOTSTRAP_TOKEN_ID, secretHash: sha256(token) };
}

export function hashBootstrapToken(token: string): Uint8Array {
  return sha256(token);
}

export function constantTimeEqual(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

/** Parses `Authorization: Bearer <token>` (RFC 6750 §2.1). */
export function bearerToken(header: string | undefined): string {
  if (header === undefined) throw new ServerError('AUTH_REQUIRED', 'bearer token required');
  const m = /^Bearer ([\x21-\x7e]{1,512})$/.exec(header);
  if (m === null) throw new ServerError('AUTH_INVALID', 'malformed Authorization header');
  return m[1]!;
}

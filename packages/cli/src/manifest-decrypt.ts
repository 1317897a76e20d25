import type { SuitEnvelope, TrustPolicy } from '@rotor/suit';
import type { Tree } from './render.ts';

export function decryptPayloads(
  env: SuitEnvelope,
  policy: TrustPolicy,
  keyPaths: string[],
  payloads: string[],
): Promise<Tree> {
  void env;
  void policy;
  void keyPaths;
  void payloads;
  return Promise.reject(new Error('not wired yet'));
}

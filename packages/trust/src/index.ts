export * from './errors.ts';
export * from './thumbprint.ts';
export * from './rot-chain.ts';
export * from './attestation.ts';

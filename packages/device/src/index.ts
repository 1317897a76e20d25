export * from './errors.ts';
export * from './storage/index.ts';
export * from './enclave/keys.ts';
export * from './enclave/seal.ts';
export * from './enclave/backend.ts';
export * from './enclave/pkcs11.ts';
export * from './enclave/protocol.ts';
export * from './enclave/core.ts';

export * from './pkcs11-uri.ts';
export * from './token.ts';
export * from './pkcs11-key.ts';
export * from './x509-signer.ts';
export * from './ca.ts';
export * from './provision.ts';
export * from './der.ts';

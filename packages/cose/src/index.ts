export * from './errors.ts';
export * from './cbor.ts';
export * from './validate.ts';
export * from './keys.ts';

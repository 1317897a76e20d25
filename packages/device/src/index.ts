export * from './errors.ts';
export * from './storage/index.ts';

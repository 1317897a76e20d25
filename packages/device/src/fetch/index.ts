export * from './source.ts';
export * from './pipeline.ts';

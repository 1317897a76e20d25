export * from './host.ts';
export * from './wasm.ts';
export * from './sandbox.ts';
export * from './platform.ts';
export * from './records.ts';
export * from './manager.ts';

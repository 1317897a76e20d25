export * from './fs.ts';
export * from './sim.ts';
export * from './atomic.ts';

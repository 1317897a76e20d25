/** The fleet simulator library (used by `rotor fleet simulate`, `rotor demo` and `npm run bench -- fleet`). */
export * from './simulator.ts';
export * from './device.ts';
export * from './identity.ts';
export * from './operator.ts';
export * from './storage.ts';
export * from './release.ts';

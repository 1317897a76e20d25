/** Simulation helpers (releases, simulated devices, power-cut runs) for tests, benches and the fleet simulator. */
export * from './release.ts';
export * from './device.ts';
export * from './powercut.ts';

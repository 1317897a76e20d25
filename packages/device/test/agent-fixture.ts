/** The agent tests' fixture: the simulation helpers of @rotor/device (src/sim/). */
export * from '../src/sim/index.ts';

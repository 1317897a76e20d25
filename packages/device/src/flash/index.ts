export * from './flash.ts';
export * from './nvstate.ts';

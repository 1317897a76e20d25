export * from './outbox.ts';
export * from './agent.ts';

export * from './frame.ts';
export * from './message.ts';
export * from './writer.ts';
export * from './server.ts';
export * from './client.ts';

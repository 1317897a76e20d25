export * from './codes.ts';
export * from './errors.ts';
export * from './model.ts';
export * from './commands.ts';

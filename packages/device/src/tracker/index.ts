export * from './http.ts';
export * from './protocol.ts';
export * from './report.ts';
export * from './push.ts';
export * from './tracker.ts';

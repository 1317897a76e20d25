export * from './keys.ts';
export * from './service.ts';
export { registerCapabilityRoutes } from './routes.ts';
export {
  CAPABILITY_MIGRATION_SQL,
  CAPABILITY_REPORT_MIGRATION_SQL,
  CAPABILITY_ROLLOUT_MIGRATION_SQL,
} from './schema.ts';

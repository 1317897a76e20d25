/** Prometheus metrics (text exposition format 0.0.4), one registry per server instance. */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export interface Metrics {
  readonly registry: Registry;
  readonly httpRequests: Counter<'listener' | 'method' | 'route' | 'status'>;
  readonly httpDuration: Histogram<'listener' | 'method' | 'route'>;
  readonly problems: Counter<'listener' | 'code'>;
  readonly ready: Gauge;
}

export function createMetrics(opts: { defaultMetrics?: boolean } = {}): Metrics {
  const registry = new Registry();
  if (opts.defaultMetrics ?? true) collectDefaultMetrics({ register: registry, prefix: 'rotor_' });
  return {
    registry,
    httpRequests: new Counter({
      name: 'rotor_http_requests_total',
      help: 'HTTP requests by listener, method, route template and status',
      labelNames: ['listener', 'method', 'route', 'status'],
      registers: [registry],
    }),
    httpDuration: new Histogram({
      name: 'rotor_http_request_duration_seconds',
      help: 'HTTP request duration by listener, method and route template',
      labelNames: ['listener', 'method', 'route'],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10],
      registers: [registry],
    }),
    problems: new Counter({
      name: 'rotor_problems_total',
      help: 'Problem responses by listener and stable error code',
      labelNames: ['listener', 'code'],
      registers: [registry],
    }),
    ready: new Gauge({
      name: 'rotor_ready',
      help: '1 when the instance is ready to serve',
      registers: [registry],
    }),
  };
}

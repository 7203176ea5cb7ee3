/**
 * The socket's metrics: every answered request is counted by its route
 * template (never the URL, which holds ids), and `GET /metrics` (Prometheus
 * text) and `GET /v1/metrics/series` (the console's charts) are served to
 * callers with the cluster-read right, as status is.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { CONSISTENCY_LEVELS } from '../cluster/coordinator.js'
import type { NodeMetrics } from '../observability/metrics.js'
import { RIGHTS } from '../security/rights.js'
import { ROUTE_SCHEMAS } from './schemas.js'

/** Routes whose successful answer is a write */
const WRITE_ROUTES = new Set(['/v1/tables/:table/rows', '/v1/tables/:table/rows/:id', '/v1/batch', '/v1/tables/:table/import'])
/** The SQL route: a write when its statement was an INSERT, UPDATE or DELETE (as its audit note says) */
const SQL_ROUTE = '/v1/sql'
const SQL_WRITES = new Set(['insert', 'update', 'delete'])

/** Counts every request and adds the two metrics routes */
export function metricsRoutes (app: FastifyInstance, metrics: NodeMetrics): void {
  app.addHook('onResponse', async (req, reply) => {
    const route = req.routeOptions.url ?? 'unmatched'
    const status = reply.statusCode
    const consistency = status < 400 ? writeConsistency(req, route) : undefined
    metrics.observe({ method: req.method, route, status, seconds: reply.elapsedTime / 1000, ...(consistency === undefined ? {} : { writeConsistency: consistency }) })
  })
  const access = { config: { access: RIGHTS.cluster } }
  app.get('/metrics', { ...access, schema: ROUTE_SCHEMAS.metrics }, async (_req, reply) => {
    void reply.type(metrics.contentType)
    return await metrics.text()
  })
  app.get('/v1/metrics/series', { ...access, schema: ROUTE_SCHEMAS.metricsSeries }, async () => ({ points: metrics.points() }))
}

/** The consistency level a write asked for (`default`: none, so the configured W); undefined for a read */
function writeConsistency (req: FastifyRequest, route: string): string | undefined {
  if (req.method === 'GET' || req.method === 'HEAD') return undefined
  if (route === SQL_ROUTE ? !SQL_WRITES.has(req.accessNote?.action ?? '') : !WRITE_ROUTES.has(route)) return undefined
  if (route.endsWith('/purge') || route.endsWith('/history')) return undefined
  const asked = (req.query as Record<string, unknown> | undefined)?.consistency
  return typeof asked === 'string' && (CONSISTENCY_LEVELS as readonly string[]).includes(asked) ? asked : 'default'
}

/**
 * The console and metrics listeners before the node behind them serves: a
 * daemon binds them first thing in its start (so a port in use stops it
 * before it joins a network), and each answers 503 until the node is ready.
 */
import Fastify, { type FastifyInstance } from 'fastify'
import { afterEach, describe, expect, it } from 'vitest'
import { NodeMetrics } from '../../src/observability/metrics.js'
import { startConsoleServer, startMetricsServer, type HttpListener } from '../../src/observability/servers.js'
import { freePort } from '../helpers/port.js'

const listeners: HttpListener[] = []
const apps: FastifyInstance[] = []
let metrics: NodeMetrics | undefined
afterEach(async () => {
  for (const l of listeners.splice(0)) await l.close()
  for (const a of apps.splice(0)) await a.close()
  metrics?.stop()
  metrics = undefined
})

describe('listeners bound before the node serves', () => {
  it('the metrics listener answers 503 until the node has its metrics, then the scrape', async () => {
    let ready: NodeMetrics | undefined
    const listener = await startMetricsServer({ host: '127.0.0.1', port: await freePort() }, () => ready)
    listeners.push(listener)
    const starting = await fetch(`${listener.url}/metrics`)
    expect(starting.status).toBe(503)
    expect(starting.headers.get('retry-after')).toBe('1')
    expect(await starting.text()).toMatch(/still starting/)
    metrics = new NodeMetrics({ hintsPending: () => 0, readRepairs: () => 0, rebalance: () => ({ pending: false }), antiEntropy: () => ({ running: false, lastRoundAt: null, ranges: 0, rangesDiffering: 0, recordsSent: 0, seconds: 0, failed: 0 }), members: () => [], localRows: async () => ({}), storePath: '/nonexistent' })
    ready = metrics
    const served = await fetch(`${listener.url}/metrics`)
    expect(served.status).toBe(200)
    expect(await served.text()).toContain('# TYPE ntsoekhe_hints_pending gauge')
  })

  it('the console serves its page at once, and its data with 503 until the socket API serves', async () => {
    let ready: FastifyInstance | undefined
    const listener = await startConsoleServer({ host: '127.0.0.1', port: await freePort() }, () => ready)
    listeners.push(listener)
    expect((await fetch(`${listener.url}/`)).status).toBe(200)
    const starting = await fetch(`${listener.url}/api/v1/status`)
    expect(starting.status).toBe(503)
    expect(await starting.json()).toEqual({ error: { code: 'UNAVAILABLE', message: expect.stringMatching(/still starting/) } })
    const app = Fastify()
    app.get('/v1/status', async () => ({ ok: true }))
    apps.push(app)
    ready = app
    const served = await fetch(`${listener.url}/api/v1/status`)
    expect(served.status).toBe(200)
    expect(await served.json()).toEqual({ ok: true })
  })
})

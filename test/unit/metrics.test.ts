import type { FastifyInstance, InjectOptions } from 'fastify'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { createApi } from '../../src/api/server.js'
import { NodeMetrics, type MetricsSource } from '../../src/observability/metrics.js'
import { RequestSeries } from '../../src/observability/series.js'
import { UserDirectory } from '../../src/security/users.js'
import { openLocalNode, patientRow, tempDir, type LocalNode, type TempDir } from '../helpers/temp.js'
import { join } from 'node:path'

let dir: TempDir
let node: LocalNode
let app: FastifyInstance
let metrics: NodeMetrics
let users: UserDirectory
let token: string
/** What the source hands the gauges: tests change it and scrape again */
let state: { hints: number, repairs: number, members: Array<{ state: string }>, rebalance: ReturnType<MetricsSource['rebalance']>, antiEntropy: ReturnType<MetricsSource['antiEntropy']> }

beforeEach(async () => {
  dir = await tempDir('ntk-metrics-')
  node = await openLocalNode(dir.path)
  users = new UserDirectory({ db: node.db })
  await users.ensureRoles()
  token = (await users.add('admin', 'admin')).token
  state = {
    hints: 0,
    repairs: 0,
    members: [{ state: 'alive' }],
    rebalance: { pending: false },
    antiEntropy: { running: false, lastRoundAt: null, ranges: 0, rangesDiffering: 0, recordsSent: 0, seconds: 0, failed: 0 }
  }
  metrics = new NodeMetrics({
    hintsPending: () => state.hints,
    readRepairs: () => state.repairs,
    rebalance: () => state.rebalance,
    antiEntropy: () => state.antiEntropy,
    members: () => state.members,
    localRows: async () => await node.store.countRows(),
    storePath: join(dir.path, 'store')
  })
  app = createApi({ db: node.db, users, status: async () => ({ ok: true }), metrics })
  await app.ready()
})

afterEach(async () => {
  await app.close()
  await node.close()
  await dir.remove()
})

async function request (opts: InjectOptions, as = token): Promise<{ statusCode: number, body: string, headers: Record<string, unknown> }> {
  return await app.inject({ ...opts, headers: { authorization: `Bearer ${as}`, ...opts.headers } })
}

/** The value of one sample line of a scrape (`name{labels} value`); undefined when absent */
function sample (text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line)
    if (m === null || m[1] !== name) continue
    const have = Object.fromEntries([...(m[2] ?? '').matchAll(/([a-zA-Z_]+)="([^"]*)"/g)].map(x => [x[1], x[2]]))
    if (Object.entries(labels).every(([k, v]) => have[k] === v) && Object.keys(have).length === Object.keys(labels).length) return Number(m[3])
  }
  return undefined
}

async function scrape (): Promise<string> {
  const res = await request({ method: 'GET', url: '/metrics' })
  expect(res.statusCode).toBe(200)
  expect(res.headers['content-type']).toMatch(/^text\/plain; version=0\.0\.4/)
  return res.body
}

describe('metrics: the registry', () => {
  it('names every metric the issue asks for, with help and type lines', async () => {
    const text = await scrape()
    for (const name of [
      'ntsoekhe_http_requests_total', 'ntsoekhe_http_request_duration_seconds', 'ntsoekhe_writes_total',
      'ntsoekhe_hints_pending', 'ntsoekhe_read_repairs_total', 'ntsoekhe_rebalance_pending', 'ntsoekhe_rebalance_last_records', 'ntsoekhe_rebalance_running_records',
      'ntsoekhe_anti_entropy_running', 'ntsoekhe_anti_entropy_progress_ratio', 'ntsoekhe_anti_entropy_last_round',
      'ntsoekhe_members', 'ntsoekhe_rows', 'ntsoekhe_leveldb_size_bytes',
      'nodejs_eventloop_lag_p99_seconds', 'process_resident_memory_bytes', 'nodejs_heap_size_used_bytes'
    ]) {
      expect(text, name).toContain(`# HELP ${name} `)
      expect(text, name).toContain(`# TYPE ${name} `)
    }
    expect(sample(text, 'ntsoekhe_leveldb_size_bytes')).toBeGreaterThan(0)
    for (const s of ['alive', 'suspect', 'down', 'left']) expect(sample(text, 'ntsoekhe_members', { state: s })).toBe(s === 'alive' ? 1 : 0)
    // Every consistency level is a series at 0 before the first write, so a rate() over it sees the first one.
    for (const c of ['one', 'quorum', 'all', 'default']) expect(sample(text, 'ntsoekhe_writes_total', { consistency: c }), c).toBe(0)
    for (const o of ['looked', 'sent', 'dropped', 'failed']) expect(sample(text, 'ntsoekhe_rebalance_running_records', { outcome: o }), o).toBe(0)
  })

  it('counts requests by route template and status, latency, and writes per consistency level; never an id or a value', async () => {
    const before = await scrape()
    const route = '/v1/tables/:table/rows'
    expect(sample(before, 'ntsoekhe_http_requests_total', { method: 'POST', route, status: '201' })).toBeUndefined()

    const unique = 'Qmxwzkvjyqrpzlwxkvqmjzpqrvylkxz'
    expect((await request({ method: 'POST', url: '/v1/tables/patient_records/rows', payload: patientRow(424242, { patient_name: unique }) })).statusCode).toBe(201)
    expect((await request({ method: 'POST', url: '/v1/tables/patient_records/rows?consistency=one', payload: patientRow(434343) })).statusCode).toBe(201)
    expect((await request({ method: 'GET', url: '/v1/tables/patient_records/rows/424242' })).statusCode).toBe(200)
    expect((await request({ method: 'GET', url: '/v1/tables/patient_records/rows/999999' })).statusCode).toBe(404)
    expect((await request({ method: 'POST', url: '/v1/tables/patient_records/rows', payload: patientRow(424242) })).statusCode).toBe(409)
    expect((await request({ method: 'GET', url: '/v1/status' }, 'not-a-token')).statusCode).toBe(401)
    expect((await request({ method: 'GET', url: '/v1/nowhere/424242' })).statusCode).toBe(404)

    // SQL: a write statement counts as a write at its level; a read does not.
    expect((await request({ method: 'POST', url: '/v1/sql?consistency=quorum', payload: { sql: "INSERT INTO patient_records (patient_id, patient_name, date_of_birth, gender, address, contact_number, email) VALUES (454545, 'S', '1980-01-01', 'F', 'a', '0123456789', 's@example.org')" } })).statusCode).toBe(200)
    expect((await request({ method: 'POST', url: '/v1/sql?consistency=quorum', payload: { sql: 'UPDATE patient_records SET gender = $1 WHERE patient_id = 454545', params: ['M'] } })).statusCode).toBe(200)
    expect((await request({ method: 'POST', url: '/v1/sql?consistency=all', payload: { sql: 'SELECT patient_id FROM patient_records WHERE patient_id = 454545' } })).statusCode).toBe(200)
    expect((await request({ method: 'POST', url: '/v1/sql?consistency=all', payload: { sql: 'DELETE FROM nowhere WHERE id = 1' } })).statusCode).toBeGreaterThanOrEqual(400)

    const text = await scrape()
    expect(sample(text, 'ntsoekhe_writes_total', { consistency: 'quorum' })).toBe(2)
    expect(sample(text, 'ntsoekhe_writes_total', { consistency: 'all' })).toBe(0)
    expect(sample(text, 'ntsoekhe_http_requests_total', { method: 'POST', route, status: '201' })).toBe(2)
    expect(sample(text, 'ntsoekhe_http_requests_total', { method: 'POST', route, status: '409' })).toBe(1)
    expect(sample(text, 'ntsoekhe_http_requests_total', { method: 'GET', route: '/v1/tables/:table/rows/:id', status: '200' })).toBe(1)
    expect(sample(text, 'ntsoekhe_http_requests_total', { method: 'GET', route: '/v1/tables/:table/rows/:id', status: '404' })).toBe(1)
    expect(sample(text, 'ntsoekhe_http_requests_total', { method: 'GET', route: '/v1/status', status: '401' })).toBe(1)
    expect(sample(text, 'ntsoekhe_http_requests_total', { method: 'GET', route: 'unmatched', status: '404' })).toBe(1)
    expect(sample(text, 'ntsoekhe_http_request_duration_seconds_count', { method: 'POST', route })).toBe(3)
    expect(sample(text, 'ntsoekhe_http_request_duration_seconds_bucket', { method: 'POST', route, le: '+Inf' })).toBe(3)
    expect(sample(text, 'ntsoekhe_http_request_duration_seconds_sum', { method: 'POST', route })).toBeGreaterThan(0)
    // Writes: only the successful ones, by the level asked for.
    expect(sample(text, 'ntsoekhe_writes_total', { consistency: 'default' })).toBe(1)
    expect(sample(text, 'ntsoekhe_writes_total', { consistency: 'one' })).toBe(1)
    expect(sample(text, 'ntsoekhe_rows', { table: 'patient_records' })).toBe(3)
    // No patient data: neither the ids asked for nor any value written.
    expect(text).not.toContain(unique)
    const labelValues = [...text.matchAll(/[a-zA-Z_]+="([^"]*)"/g)].map(m => m[1] as string)
    expect(labelValues).toContain('/v1/tables/:table/rows/:id')
    for (const id of ['424242', '434343', '454545', '999999']) expect(labelValues.filter(v => v.includes(id))).toEqual([])
  })

  it('reads replication and membership from the node at every scrape', async () => {
    state.hints = 7
    state.repairs = 3
    state.members = [{ state: 'alive' }, { state: 'alive' }, { state: 'suspect' }, { state: 'down' }]
    state.rebalance = { pending: true, last: { finishedAt: 1_700_000_000_000, records: 50, sent: 20, dropped: 5, failed: 1 }, running: { startedAt: 1_700_000_050_000, records: 30, sent: 9, dropped: 2, failed: 0 } }
    state.antiEntropy = { running: true, lastRoundAt: 1_700_000_100_000, ranges: 256, rangesDiffering: 4, recordsSent: 12, seconds: 2.5, failed: 0, progress: { done: 64, total: 256 } }
    let text = await scrape()
    expect(sample(text, 'ntsoekhe_hints_pending')).toBe(7)
    expect(sample(text, 'ntsoekhe_read_repairs_total')).toBe(3)
    expect(sample(text, 'ntsoekhe_members', { state: 'alive' })).toBe(2)
    expect(sample(text, 'ntsoekhe_members', { state: 'suspect' })).toBe(1)
    expect(sample(text, 'ntsoekhe_members', { state: 'down' })).toBe(1)
    expect(sample(text, 'ntsoekhe_members', { state: 'left' })).toBe(0)
    expect(sample(text, 'ntsoekhe_rebalance_pending')).toBe(1)
    expect(sample(text, 'ntsoekhe_rebalance_last_records', { outcome: 'sent' })).toBe(20)
    expect(sample(text, 'ntsoekhe_rebalance_last_records', { outcome: 'failed' })).toBe(1)
    expect(sample(text, 'ntsoekhe_rebalance_last_finished_timestamp_seconds')).toBe(1_700_000_000)
    expect(sample(text, 'ntsoekhe_rebalance_running_records', { outcome: 'looked' })).toBe(30)
    expect(sample(text, 'ntsoekhe_rebalance_running_records', { outcome: 'sent' })).toBe(9)
    expect(sample(text, 'ntsoekhe_rebalance_running_records', { outcome: 'dropped' })).toBe(2)
    expect(sample(text, 'ntsoekhe_anti_entropy_running')).toBe(1)
    expect(sample(text, 'ntsoekhe_anti_entropy_progress_ratio')).toBe(0.25)
    expect(sample(text, 'ntsoekhe_anti_entropy_last_round', { what: 'records_sent' })).toBe(12)
    expect(sample(text, 'ntsoekhe_anti_entropy_last_round_seconds')).toBe(2.5)

    state.hints = 0
    state.repairs = 5
    state.rebalance = { pending: false, last: { finishedAt: 1_700_000_060_000, records: 50, sent: 20, dropped: 5, failed: 0 } }
    state.antiEntropy = { ...state.antiEntropy, running: false, progress: undefined } as typeof state.antiEntropy
    text = await scrape()
    expect(sample(text, 'ntsoekhe_hints_pending')).toBe(0)
    expect(sample(text, 'ntsoekhe_read_repairs_total')).toBe(5)
    expect(sample(text, 'ntsoekhe_anti_entropy_progress_ratio')).toBe(1)
    expect(sample(text, 'ntsoekhe_rebalance_running_records', { outcome: 'looked' })).toBe(0)
  })

  it('serves /metrics and the series to roles with the cluster right only, and never without a token', async () => {
    expect((await app.inject({ method: 'GET', url: '/metrics' })).statusCode).toBe(401)
    const billing = (await users.add('biller', 'billing')).token
    expect((await request({ method: 'GET', url: '/metrics' }, billing)).statusCode).toBe(200)
    const series = await request({ method: 'GET', url: '/v1/metrics/series' }, billing)
    expect(series.statusCode).toBe(200)
    expect(JSON.parse(series.body)).toEqual({ points: [] })
  })

  it('keeps two nodes apart: each registry counts only its own requests', async () => {
    const other = new NodeMetrics({ hintsPending: () => 0, readRepairs: () => 0, rebalance: () => ({ pending: false }), antiEntropy: () => state.antiEntropy, members: () => [], localRows: async () => ({}), storePath: dir.path })
    await request({ method: 'GET', url: '/v1/status' })
    expect(sample(await other.text(), 'ntsoekhe_http_requests_total', { method: 'GET', route: '/v1/status', status: '200' })).toBeUndefined()
    expect(sample(await metrics.text(), 'ntsoekhe_http_requests_total', { method: 'GET', route: '/v1/status', status: '200' })).toBe(1)
  })
})

describe('metrics: the request series', () => {
  it('samples rate and latency quantiles per interval, and keeps only the last minutes', () => {
    const s = new RequestSeries({ sampleMs: 1000, keepMs: 3000 })
    const t0 = Date.now()
    for (let i = 1; i <= 100; i++) s.record(i / 1000)
    const p = s.sample(t0 + 2000)
    expect(p.rate).toBeGreaterThan(0)
    expect(p.p50).toBe(50)
    expect(p.p95).toBe(95)
    expect(p.max).toBe(100)
    const empty = s.sample(t0 + 3000)
    expect(empty).toMatchObject({ rate: 0, p50: null, p95: null, max: null })
    s.sample(t0 + 4000)
    s.sample(t0 + 5000)
    expect(s.points().map(x => x.time)).toEqual([t0 + 3000, t0 + 4000, t0 + 5000])
  })
})

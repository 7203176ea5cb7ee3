/**
 * The metrics of a real three-node network (N=3, W=2, R=2) as an operator
 * watches them: scraped on `--metrics-listen` and on the socket while nodes
 * stop and come back, a stale copy is read, and anti-entropy runs. Each
 * replication and membership metric must move when the network does, so
 * the daemon's wiring of the metrics (not only the registry) is checked.
 */
import { readFile, writeFile } from 'node:fs/promises'
import { request } from 'node:http'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { adminToken, cli, json, startDaemon, type TestDaemon } from '../helpers/daemon.js'
import { e2ePatient, waitForValue } from '../helpers/wait.js'
import { freePort } from '../helpers/port.js'
import { HashRing } from '../../src/cluster/ring.js'
import { tokenOf } from '../../src/cluster/token.js'

/** GET /metrics over a daemon's socket (with a token) or its --metrics-listen port (without) */
async function scrape (target: { socketPath: string, token: string } | { port: number }): Promise<string> {
  return await new Promise((resolve, reject) => {
    const req = request({
      ...('port' in target ? { host: '127.0.0.1', port: target.port } : { socketPath: target.socketPath, headers: { authorization: `Bearer ${target.token}` } }),
      path: '/metrics',
      timeout: 15_000
    }, res => {
      let body = ''
      res.setEncoding('utf8').on('data', (s: string) => { body += s })
      res.on('end', () => {
        if (res.statusCode === 200) resolve(body)
        else reject(new Error(`GET /metrics: ${res.statusCode ?? 0} ${body}`))
      })
      res.on('error', reject)
    })
    req.on('timeout', () => { req.destroy(new Error('GET /metrics: no answer within 15 s')) })
    req.on('error', reject)
    req.end()
  })
}

/** The value of one sample (`name{labels} value`) of a scrape; undefined when absent */
function sample (text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line)
    if (m === null || m[1] !== name) continue
    const have = Object.fromEntries([...(m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map(x => [x[1], x[2]]))
    if (Object.entries(labels).every(([k, v]) => have[k] === v) && Object.keys(have).length === Object.keys(labels).length) return Number(m[3])
  }
  return undefined
}

let daemons: TestDaemon[] = []
let token = ''
let metricsPort = 0
/** Each daemon's peer id (a restart keeps it) */
const peerIds: string[] = []
/**
 * A patient id whose write, with the member `down` away, the member `coordinator` coordinates:
 * the first of its owners (in the ring's preference order, as the daemons place it) that is up.
 * Its hint for the member away then sits on `coordinator`.
 */
function patientCoordinatedBy (coordinator: string, down: string): number {
  const ring = new HashRing()
  ring.setMembers(peerIds.map(peerId => ({ peerId })))
  for (let id = 7201; id < 8201; id++) {
    if (ring.preferenceList(tokenOf(`patient_id:${id}`), 3).find(p => p !== down) === coordinator) return id
  }
  throw new Error(`no patient id in 7201..8200 is first placed on ${coordinator}`)
}

/** Each daemon's flags, to restart it as it was */
const flags: string[][] = []

const first = async (): Promise<string> => await scrape({ port: metricsPort })
const viaSocket = async (d: TestDaemon): Promise<string> => await scrape({ socketPath: d.socket, token })

beforeAll(async () => {
  metricsPort = await freePort()
  flags[0] = ['--metrics-listen', `127.0.0.1:${metricsPort}`]
  const d0 = await startDaemon({ args: flags[0] })
  token = await adminToken(d0.home)
  const invite = json(await cli(['invite', '--json'], { home: d0.home })).invite as string
  flags[1] = ['--join', invite]
  flags[2] = ['--join', invite]
  daemons = [d0, ...await Promise.all([1, 2].map(async i => await startDaemon({ args: flags[i] })))]
  for (const d of daemons) peerIds.push(json(await cli(['id', '--json'], { home: d.home, token })).peerId as string)
  await waitForValue('the first node to see three alive members in its metrics', async () => sample(await first(), 'ntsoekhe_members', { state: 'alive' }) === 3, 60_000)
}, 120_000)

afterAll(async () => {
  await Promise.all(daemons.map(async d => await d.stop().catch(() => {})))
}, 30_000)

/** The state of each daemon as the first one sees it (by peer id) */
async function statesSeenByFirst (): Promise<string[]> {
  const s = json(await cli(['status', '--json'], { home: (daemons[0] as TestDaemon).home }))
  return peerIds.map(id => (s.members as Array<{ peerId: string, state: string }>).find(m => m.peerId === id)?.state ?? 'unknown')
}

async function restart (i: number): Promise<void> {
  daemons[i] = await startDaemon({ home: (daemons[i] as TestDaemon).home, args: flags[i] })
}

describe('metrics of a three-node network', () => {
  it('counts writes per consistency level, from 0', async () => {
    const before = await first()
    for (const c of ['one', 'quorum', 'all', 'default']) expect(sample(before, 'ntsoekhe_writes_total', { consistency: c }), c).toBe(0)
    const d0 = daemons[0] as TestDaemon
    for (const [i, level] of [[1, 'quorum'], [2, 'all'], [3, 'one']] as const) {
      const r = await cli(['insert', 'patient_records', JSON.stringify(e2ePatient(7000 + i)), '--consistency', level], { home: d0.home })
      expect(r.code, r.stderr).toBe(0)
    }
    expect((await cli(['insert', 'patient_records', JSON.stringify(e2ePatient(7004))], { home: d0.home })).code).toBe(0)
    const after = await first()
    for (const c of ['one', 'quorum', 'all', 'default']) expect(sample(after, 'ntsoekhe_writes_total', { consistency: c }), c).toBe(1)
    expect(sample(after, 'ntsoekhe_http_requests_total', { method: 'POST', route: '/v1/tables/:table/rows', status: '201' })).toBe(4)
    expect(sample(after, 'ntsoekhe_http_request_duration_seconds_count', { method: 'POST', route: '/v1/tables/:table/rows' })).toBe(4)
    // The socket serves the same registry to a token.
    expect(sample(await viaSocket(d0), 'ntsoekhe_writes_total', { consistency: 'quorum' })).toBe(1)
  }, 60_000)

  it('a stopped node: membership states move, the writes it missed are hints, status still counts every row; back, the hints drain', async () => {
    const [d0, d1, d2] = daemons as [TestDaemon, TestDaemon, TestDaemon]
    await d2.stop()
    const down = await waitForValue('the first node to see the stopped one down', async () => {
      const t = await first()
      return sample(t, 'ntsoekhe_members', { state: 'down' }) === 1 ? t : undefined
    }, 60_000)
    expect(sample(down, 'ntsoekhe_members', { state: 'alive' })).toBe(2)

    // Written through the second node (W=2 of the two live owners): it keeps a hint for the third.
    for (const i of [1, 2, 3]) {
      const r = await cli(['insert', 'patient_records', JSON.stringify(e2ePatient(7100 + i))], { home: d1.home, token })
      expect(r.code, r.stderr).toBe(0)
    }
    expect(sample(await viaSocket(d1), 'ntsoekhe_hints_pending')).toBeGreaterThanOrEqual(3)

    // Every row is counted, on the owners that are up: none lost, none twice, every table named.
    const s = json(await cli(['status', '--json'], { home: d0.home }))
    expect(s.networkRows).toMatchObject({ complete: true })
    expect(s.networkRows.tables.patient_records).toBe(7)
    expect(s.networkRows.tables.medical_history).toBe(0)
    expect(s.replication.health).toMatch(/^under-replicated: 2 live members for 3 replicas$/)
    const human = await cli(['status'], { home: d0.home })
    expect(human.stdout).toMatch(/networkRows:\n\s+tables:\n(\s+\w+: \d+\n)*\s+patient_records: 7\n/)
    expect(human.stdout).toMatch(/^\s+medical_history: 0$/m)
    expect(human.stdout).toMatch(/complete: true/)

    await restart(2)
    await waitForValue('the second node to hand the third its hints', async () => sample(await viaSocket(daemons[1] as TestDaemon), 'ntsoekhe_hints_pending') === 0, 60_000)
    await waitForValue('the first node to see three alive members again', async () => {
      const t = await first()
      return sample(t, 'ntsoekhe_members', { state: 'alive' }) === 3 && sample(t, 'ntsoekhe_members', { state: 'down' }) === 0
    }, 60_000)
    await waitForValue('the third node to hold a row written while it was down in its own store', async () => (await cli(['get', 'patient_records', '7101', '--local'], { home: (daemons[2] as TestDaemon).home, token })).code === 0, 30_000)
  }, 240_000)

  it('ntsoekhe repair: the anti-entropy round is reported, and the rebalance after the ring changed', async () => {
    const d0 = daemons[0] as TestDaemon
    const before = await first()
    const r = await cli(['repair', '--json'], { home: d0.home })
    expect(r.code, r.stderr).toBe(0)
    const after = await first()
    expect(sample(after, 'ntsoekhe_anti_entropy_last_round', { what: 'ranges' })).toBeGreaterThan(0)
    expect(sample(after, 'ntsoekhe_anti_entropy_last_round_timestamp_seconds')).toBeGreaterThan(sample(before, 'ntsoekhe_anti_entropy_last_round_timestamp_seconds') as number)
    expect(sample(after, 'ntsoekhe_anti_entropy_running')).toBe(0)
    expect(sample(after, 'ntsoekhe_anti_entropy_progress_ratio')).toBe(1)
    // The ring grew from one member to three at the start: the first node's rebalance handed its records on.
    expect(sample(after, 'ntsoekhe_rebalance_last_finished_timestamp_seconds')).toBeGreaterThan(0)
    expect(sample(after, 'ntsoekhe_rebalance_last_records', { outcome: 'looked' })).toBeGreaterThan(0)
    expect(sample(after, 'ntsoekhe_rebalance_running_records', { outcome: 'looked' })).toBe(0)
    expect(sample(after, 'ntsoekhe_leveldb_size_bytes')).toBeGreaterThan(0)
    expect(sample(after, 'process_resident_memory_bytes')).toBeGreaterThan(0)
    expect(sample(after, 'nodejs_eventloop_lag_p99_seconds')).toBeGreaterThanOrEqual(0)
    // No patient's id or data in any label.
    const labels = after.split('\n').filter(l => !l.startsWith('#')).map(l => /\{[^}]*\}/.exec(l)?.[0] ?? '')
    expect(labels.filter(l => /7[012]0\d|Patient|Main St/.test(l))).toEqual([])
  }, 120_000)

  it('a read that finds a stale copy repairs it, and read repairs count it', async () => {
    // The network heals a copy that missed a write three ways: hints, the rebalance that follows a member's
    // return (it asks the member what it holds and sends the rest) and anti-entropy. A stale copy is left for
    // a read to find only when all three wait: the hint sits on a stopped node, and the reading node's
    // rebalance waits minutes after a ring change (anti-entropy runs every 10 minutes by default).
    const config = join((daemons[0] as TestDaemon).home, 'config.json')
    const c = JSON.parse(await readFile(config, 'utf8')) as { replication: Record<string, unknown> }
    c.replication.rebalanceDelayMs = 600_000
    await writeFile(config, JSON.stringify(c, null, 2))
    await (daemons[0] as TestDaemon).stop()
    await restart(0)
    await waitForValue('the first node, restarted, to see three alive members', async () => (await statesSeenByFirst()).join() === 'alive,alive,alive', 60_000)
    const [d0, d1, d2] = daemons as [TestDaemon, TestDaemon, TestDaemon]
    const repairsBefore = sample(await first(), 'ntsoekhe_read_repairs_total') as number

    await d2.stop()
    await waitForValue('the second node to see the third down', async () => sample(await viaSocket(d1), 'ntsoekhe_members', { state: 'down' }) === 1, 60_000)
    // A patient the second node coordinates: were it the first node's, that node would hold the hint and hand it over.
    const id = patientCoordinatedBy(peerIds[1]!, peerIds[2]!)
    expect((await cli(['insert', 'patient_records', JSON.stringify(e2ePatient(id))], { home: d1.home, token })).code).toBe(0)
    // The hint is written after the client's answer (the write was acknowledged by W owners already).
    await waitForValue('the second node to hold a hint for the third', async () => (sample(await viaSocket(d1), 'ntsoekhe_hints_pending') as number) > 0, 30_000)
    await d1.stop()
    await restart(2)
    // By peer id: the counts alone (2 alive, 1 down) also match the moment before the first node noticed.
    await waitForValue('the first node to see the third alive and the second down', async () => (await statesSeenByFirst()).join() === 'alive,down,alive', 60_000)
    expect(sample(await first(), 'ntsoekhe_members', { state: 'down' })).toBe(1)
    expect((await cli(['get', 'patient_records', String(id), '--local'], { home: (daemons[2] as TestDaemon).home, token })).code).toBe(1)
    const got = await cli(['get', 'patient_records', String(id), '--consistency', 'quorum'], { home: d0.home })
    expect(got.code, got.stderr).toBe(0)
    await waitForValue('read repairs to count the stale copy', async () => (sample(await first(), 'ntsoekhe_read_repairs_total') as number) > repairsBefore, 30_000)
    await waitForValue('the repaired copy on the third node', async () => (await cli(['get', 'patient_records', String(id), '--local'], { home: (daemons[2] as TestDaemon).home, token })).code === 0, 30_000)
    await restart(1)
    await waitForValue('the first node to see three alive members again', async () => sample(await first(), 'ntsoekhe_members', { state: 'alive' }) === 3, 60_000)
  }, 300_000)
})

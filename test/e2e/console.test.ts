/**
 * The metrics listener and the web console of a real daemon: scraped and
 * loaded over HTTP, and the console driven in headless Chromium (Debian's
 * `chromium`, driven by playwright-core; .ci/run installs it when absent).
 */
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { request } from 'node:http'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { chromium, type Browser, type Page } from 'playwright-core'
import { adminToken, cli, daemonExit, json, makeHome, startDaemon, type TestDaemon } from '../helpers/daemon.js'
import { waitForValue } from '../helpers/wait.js'
import { freePort } from '../helpers/port.js'

const CHROMIUM = '/usr/bin/chromium'
/** Generous: the machine is shared, and the charts' first point takes up to 5 s */
const PAGE_TIMEOUT = 30_000

interface Answer { status: number, headers: Record<string, string | string[] | undefined>, body: string }

/** One HTTP request, to a TCP port or the daemon's socket */
async function http (target: { port: number } | { socketPath: string }, path: string, options: { method?: string, token?: string, host?: string } = {}): Promise<Answer> {
  return await new Promise((resolve, reject) => {
    const req = request({
      ...('port' in target ? { host: '127.0.0.1', port: target.port } : { socketPath: target.socketPath }),
      path,
      method: options.method ?? 'GET',
      timeout: 15_000,
      headers: { ...(options.token === undefined ? {} : { authorization: `Bearer ${options.token}` }), ...(options.host === undefined ? {} : { host: options.host }) }
    }, res => {
      let body = ''
      res.setEncoding('utf8').on('data', (s: string) => { body += s })
      res.on('end', () => { resolve({ status: res.statusCode ?? 0, headers: res.headers, body }) })
      res.on('error', reject)
    })
    req.on('timeout', () => { req.destroy(new Error(`${path}: no answer within 15 s`)) })
    req.on('error', reject)
    req.end()
  })
}

let daemon: TestDaemon
let token: string
let billing: string
let consolePort: number
let metricsPort: number
let peerId: string

beforeAll(async () => {
  consolePort = await freePort()
  metricsPort = await freePort()
  daemon = await startDaemon({ args: ['--replicas', '1', '--console', `127.0.0.1:${consolePort}`, '--metrics-listen', `127.0.0.1:${metricsPort}`] })
  token = await adminToken(daemon.home)
  peerId = json(await cli(['id', '--json'], { home: daemon.home })).peerId
  for (let i = 1; i <= 3; i++) {
    const r = await cli(['insert', 'patient_records', JSON.stringify({ patient_id: 9100 + i, patient_name: `Console Patient ${i}`, date_of_birth: '1970-01-0' + String(i), gender: 'female', address: `${i} Long Street`, contact_number: '0712345678', email: `c${i}@example.org` })], { home: daemon.home })
    expect(r.code, r.stderr).toBe(0)
  }
  const made = await cli(['user', 'add', 'biller', '--role', 'billing', '--json'], { home: daemon.home })
  expect(made.code, made.stderr).toBe(0)
  billing = json(made).token
}, 60_000)

afterAll(async () => {
  await daemon?.stop()
})

describe('metrics over HTTP', () => {
  it('serves GET /metrics on --metrics-listen without a token, and nothing else', async () => {
    await waitForValue('the ready banner to name the metrics address', async () => daemon.stderr().includes(`metrics  http://127.0.0.1:${metricsPort}/metrics`), 15_000)
    const res = await http({ port: metricsPort }, '/metrics')
    expect(res.status).toBe(200)
    expect(res.headers['content-type']).toMatch(/^text\/plain; version=0\.0\.4/)
    expect(res.body).toMatch(/^ntsoekhe_http_requests_total\{method="POST",route="\/v1\/tables\/:table\/rows",status="201"\} 3$/m)
    expect(res.body).toMatch(/^ntsoekhe_writes_total\{consistency="default"\} 3$/m)
    expect(res.body).toMatch(/^ntsoekhe_members\{state="alive"\} 1$/m)
    expect(res.body).toMatch(/^ntsoekhe_rows\{table="patient_records"\} 3$/m)
    expect(res.body).toMatch(/^ntsoekhe_leveldb_size_bytes [1-9]\d*$/m)
    expect(res.body).toMatch(/^nodejs_eventloop_lag_p99_seconds /m)
    expect(res.body).toMatch(/^process_resident_memory_bytes [1-9]/m)
    // No row's data in any label; values are numbers, where a float or a byte count may hold the digits 9101 by chance.
    const labels = res.body.split('\n').filter((l) => !l.startsWith('#')).map((l) => /\{[^}]*\}/.exec(l)?.[0] ?? '')
    expect(labels.filter((l) => /910[1-3]|Console Patient|Long Street/.test(l))).toEqual([])
    expect(res.body).not.toContain('Console Patient')
    expect((await http({ port: metricsPort }, '/metrics', { method: 'POST' })).status).toBe(405)
    expect((await http({ port: metricsPort }, '/v1/status')).status).toBe(404)
  })

  it('serves GET /metrics on the socket to a token with the cluster right', async () => {
    expect((await http({ socketPath: daemon.socket }, '/metrics')).status).toBe(401)
    const res = await http({ socketPath: daemon.socket }, '/metrics', { token: billing })
    expect(res.status).toBe(200)
    expect(res.body).toContain('ntsoekhe_http_requests_total{method="GET",route="/metrics",status="401"} 1')
  })
})

describe('status across the network', () => {
  it('status --json keeps its fields and adds networkRows; the human form shows them', async () => {
    const s = json(await cli(['status', '--json'], { home: daemon.home }))
    expect(s.storage.rows.patient_records).toBe(3)
    expect(s.networkRows).toEqual({ tables: expect.objectContaining({ patient_records: 3 }), complete: true, unanswered: [] })
    expect(s.replication.antiEntropy).toBeDefined()
    const human = await cli(['status'], { home: daemon.home })
    expect(human.code).toBe(0)
    expect(human.stdout).toMatch(/networkRows:\n\s+tables:\n(\s+\w+: \d+\n)*\s+patient_records: 3\n/)
  })
})

describe('the console over HTTP', () => {
  it('serves the page with a strict content policy, and data only to a token, through the socket API\'s rights', async () => {
    await waitForValue('the ready banner to name the console address', async () => daemon.stderr().includes(`console  http://127.0.0.1:${consolePort}`), 15_000)
    const page = await http({ port: consolePort }, '/')
    expect(page.status).toBe(200)
    expect(page.headers['content-type']).toMatch(/^text\/html/)
    expect(page.headers['content-security-policy']).toContain("script-src 'self'")
    expect(page.body).toContain('<script src="/console.js"')
    expect(page.body).not.toMatch(/https?:\/\//)
    expect((await http({ port: consolePort }, '/console.js')).status).toBe(200)

    const anonymous = await http({ port: consolePort }, '/api/v1/status')
    expect(anonymous.status).toBe(401)
    expect(anonymous.body).not.toContain(peerId)
    expect((await http({ port: consolePort }, '/api/v1/status', { token: 'not-a-token' })).status).toBe(401)
    const status = await http({ port: consolePort }, '/api/v1/status', { token })
    expect(status.status).toBe(200)
    expect(JSON.parse(status.body).peerId).toBe(peerId)

    // Billing reads some columns of patient_records and no medical history: the console shows no more.
    const rows = JSON.parse((await http({ port: consolePort }, '/api/v1/tables/patient_records/rows?limit=5', { token: billing })).body)
    expect(rows.rows.length).toBe(3)
    for (const r of rows.rows) expect(Object.keys(r).sort()).toEqual(['address', 'contact_number', 'email', 'patient_id', 'patient_name'])
    expect((await http({ port: consolePort }, '/api/v1/tables/medical_history/rows', { token: billing })).status).toBe(403)

    // Read-only, and only the routes the page needs.
    for (const method of ['POST', 'PUT', 'PATCH', 'DELETE']) {
      expect((await http({ port: consolePort }, '/api/v1/tables/patient_records/rows', { method, token })).status, method).toBe(405)
      expect((await http({ port: consolePort }, '/api/v1/tables/patient_records/rows/9101', { method, token })).status, method).toBe(405)
    }
    expect((await http({ port: consolePort }, '/api/v1/batch', { method: 'POST', token })).status).toBe(405)
    expect((await http({ port: consolePort }, '/api/v1/users', { token })).status).toBe(404)
    expect((await http({ port: consolePort }, '/api/v1/tables/patient_records/rows/9101', { token })).status).toBe(404)
    expect((await http({ port: consolePort }, '/api/v1/invite', { token })).status).toBe(404)

    // A site whose name points at 127.0.0.1 (DNS rebinding) is not this console; a tunnel's other port is.
    expect((await http({ port: consolePort }, '/', { host: `evil.example:${consolePort}` })).status).toBe(421)
    expect((await http({ port: consolePort }, '/api/v1/status', { host: 'localhost:8080', token })).status).toBe(200)
    expect((await http({ port: consolePort }, '/', { host: '[::1]:4180' })).status).toBe(200)
  })
})

describe('the console in headless Chromium', () => {
  let browser: Browser

  beforeAll(async () => {
    if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium); .ci/run does`)
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--headless', '--no-sandbox'], timeout: 90_000 })
  }, 120_000)

  afterAll(async () => {
    await browser?.close()
  })

  /** A fresh tab that fails the test on any request leaving the console's origin */
  async function open (): Promise<{ page: Page, outside: string[] }> {
    const context = await browser.newContext()
    const page = await context.newPage()
    page.setDefaultTimeout(PAGE_TIMEOUT)
    const outside: string[] = []
    page.on('request', r => { if (!r.url().startsWith(`http://127.0.0.1:${consolePort}/`)) outside.push(r.url()) })
    await page.goto(`http://127.0.0.1:${consolePort}/`)
    return { page, outside }
  }

  it('refuses to show anything without a token, and with a wrong one', async () => {
    const { page, outside } = await open()
    await page.locator('#login').waitFor({ state: 'visible' })
    expect(await page.locator('#dashboard').isHidden()).toBe(true)
    expect(await page.locator('#members tbody tr').count()).toBe(0)
    await page.locator('#token').fill('definitely-not-a-token')
    await page.locator('#login-form button[type=submit]').click()
    await page.locator('#login-error', { hasText: 'Refused' }).waitFor()
    expect(await page.locator('#dashboard').isHidden()).toBe(true)
    expect(await page.content()).not.toContain(peerId)
    expect(outside).toEqual([])
    await page.context().close()
  }, 60_000)

  it('signs in with a token and shows members, the ring, replication, charts, row counts and the first rows of a table', async () => {
    const { page, outside } = await open()
    await page.locator('#token').fill(token)
    await page.locator('#login-form button[type=submit]').click()
    await page.locator('#dashboard').waitFor({ state: 'visible' })

    // Members, with their state and ring share.
    const member = page.locator(`#members tr[data-peer="${peerId}"]`)
    await member.waitFor()
    expect(await member.locator('td').nth(2).textContent()).toBe('alive')
    expect(await member.locator('td').nth(3).textContent()).toBe('100.0%')

    // The ring: one arc (here a full circle) per member, as an SVG.
    const arc = page.locator(`#ring svg .ring-arc[data-peer="${peerId}"]`)
    await arc.waitFor()
    expect(await page.locator('#ring svg .ring-arc').count()).toBe(1)

    // Replication health: one member for N=1 is healthy; hints, rebalance and anti-entropy are named with their state.
    expect(await page.locator('#health').textContent()).toBe('ok')
    const replication = await page.locator('#replication').textContent() ?? ''
    for (const what of ['Live members', 'Hints pending', 'Rebalance', 'Anti-entropy']) expect(replication).toContain(what)
    expect(replication).toMatch(/Hints pending0/)

    // Charts: a line per series once the first point is sampled (every 5 s).
    await page.locator('#rate-chart svg polyline[data-series="rate"]').waitFor({ state: 'attached' })
    await page.locator('#latency-chart svg polyline[data-series="p95"]').waitFor({ state: 'attached' })
    const rate = await waitForValue('the rate chart to have a point', async () => {
      const points = await page.locator('#rate-chart svg polyline').getAttribute('points')
      return points !== null && points.trim() !== '' ? points : undefined
    }, PAGE_TIMEOUT)
    expect(rate.split(' ').length).toBeGreaterThan(0)

    // Row counts across the network.
    const counts = page.locator('#row-counts tr[data-table="patient_records"] td')
    await counts.first().waitFor()
    expect(await counts.nth(1).textContent()).toBe('3')
    // A table with no row is listed with 0, not left out.
    expect(await page.locator('#row-counts tr[data-table="medical_history"] td').nth(1).textContent()).toBe('0')

    // The first rows of a table.
    await page.locator('#table-select').selectOption('patient_records')
    const head = page.locator('#head-table[data-table="patient_records"]')
    await head.waitFor()
    expect(await head.locator('tbody tr').count()).toBe(3)
    expect(await head.textContent()).toContain('Console Patient 1')
    expect(await head.locator('thead').textContent()).toContain('date_of_birth')
    expect(outside).toEqual([])
    await page.context().close()
  }, 90_000)

  it("hides what the user's role may not read", async () => {
    const { page } = await open()
    await page.locator('#token').fill(billing)
    await page.locator('#login-form button[type=submit]').click()
    await page.locator('#dashboard').waitFor({ state: 'visible' })
    await page.locator('#table-select').selectOption('patient_records')
    const head = page.locator('#head-table[data-table="patient_records"]')
    await head.waitFor()
    expect(await head.textContent()).toContain('Console Patient 1')
    expect(await head.locator('thead').textContent()).not.toContain('date_of_birth')
    expect(await head.textContent()).not.toContain('1970-01-01')
    await page.locator('#table-select').selectOption('medical_history')
    await page.locator('#head-refused').waitFor()
    expect(await page.locator('#head-refused').textContent()).toMatch(/Not shown: .*billing.*medical_history/)
    await page.context().close()
  }, 60_000)
})

describe('a second member', () => {
  it('joins: the console draws two arcs, and rows are counted once across both daemons', async () => {
    const invite = json(await cli(['invite', '--json'], { home: daemon.home })).invite as string
    const second = await startDaemon({ args: ['--replicas', '1', '--join', invite] })
    try {
      const secondId = json(await cli(['id', '--json'], { home: second.home, token })).peerId as string
      // With N=1 each record lives on one of the two: the network count stays 3 on either node once they settle.
      const settled = await waitForValue('both daemons to see two members and hold three patient rows between them', async () => {
        const a = json(await cli(['status', '--json'], { home: daemon.home }))
        const b = json(await cli(['status', '--json'], { home: second.home, token }))
        const held = (a.storage.rows.patient_records ?? 0) + (b.storage.rows.patient_records ?? 0)
        return a.members.length === 2 && b.members.length === 2 && held === 3 && a.networkRows.tables.patient_records === 3 && b.networkRows.tables.patient_records === 3 ? { a, b } : undefined
      }, 60_000)
      expect(settled.a.networkRows.complete).toBe(true)
      expect(settled.a.storage.rows.patient_records ?? 0).toBeLessThanOrEqual(3)

      const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--headless', '--no-sandbox'], timeout: 90_000 })
      try {
        const page = await browser.newPage()
        page.setDefaultTimeout(PAGE_TIMEOUT)
        await page.goto(`http://127.0.0.1:${consolePort}/`)
        await page.locator('#token').fill(token)
        await page.locator('#login-form button[type=submit]').click()
        await page.locator(`#members tr[data-peer="${secondId}"]`).waitFor()
        await page.locator(`#ring svg .ring-arc[data-peer="${secondId}"]`).waitFor()
        expect(await page.locator('#ring svg .ring-arc').count()).toBe(2)
        // Two arcs whose shares add up to the whole ring.
        const shares = await page.locator('#members tbody tr td:nth-child(4)').allTextContents()
        expect(shares.map(x => parseFloat(x)).reduce((a, b) => a + b, 0)).toBeCloseTo(100, 0)
        expect(await page.locator('#row-counts tr[data-table="patient_records"] td').nth(1).textContent()).toBe('3')

        // The second stops: within seconds the page shows it down, its arc faded, and the network under-replicated.
        await second.stop()
        await page.locator(`#members tr[data-peer="${secondId}"] td.state-down`).waitFor({ timeout: 60_000 })
        expect(await page.locator(`#members tr[data-peer="${secondId}"] td`).nth(4).textContent()).toBe('no')
        expect(await page.locator(`#ring svg .ring-arc[data-peer="${secondId}"]`).getAttribute('data-state')).toBe('down')
        expect(await page.locator(`#ring svg .ring-arc[data-peer="${peerId}"]`).getAttribute('data-state')).toBe('alive')
        await page.locator('#health', { hasText: `degraded: member ${secondId} down` }).waitFor()
      } finally {
        await browser.close()
      }
    } finally {
      await second.stop()
    }
  }, 240_000)
})

describe('console and metrics addresses', () => {
  it('refuses a console off loopback without --console-remote, and names the flag of a port in use', async () => {
    const home = await makeHome()
    const remote = await daemonExit(home, { args: ['--console', '0.0.0.0:4180'] })
    expect(remote.code).toBe(2)
    expect(remote.stderr).toMatch(/plain HTTP.*--console-remote/)
    const busy = await daemonExit(home, { args: ['--metrics-listen', `127.0.0.1:${consolePort}`] })
    expect(busy.code).toBe(1)
    expect(busy.stderr).toMatch(new RegExp(`port ${consolePort} .*--metrics-listen / monitoring\\.metricsListen.*in use`))
    expect(busy.stderr).not.toMatch(/\n\s+at /)
    // The port is taken before anything else: the failed start made no network key, no admin, and joined nothing.
    const busyConsole = await daemonExit(home, { args: ['--console', `127.0.0.1:${consolePort}`] })
    expect(busyConsole.code).toBe(1)
    expect(busyConsole.stderr).toMatch(new RegExp(`port ${consolePort} .*--console / monitoring\\.console.*in use`))
    for (const made of ['swarm.key', 'admin.token', 'members.json']) expect(existsSync(join(home, made)), made).toBe(false)
    const malformed = await daemonExit(home, { args: ['--console', '127.0.0.1'] })
    expect(malformed.code).toBe(2)
    expect(malformed.stderr).toMatch(/--console takes host:port/)
    // Usage errors: one line, exit 2, nothing started.
    for (const [flag, value] of [['--console', 'nothing'], ['--metrics-listen', '1.2.3.4:99999'], ['--metrics-listen', '127.0.0.1:0']]) {
      const bad = await daemonExit(home, { args: [flag as string, value as string] })
      expect(bad.code, `${flag} ${value}`).toBe(2)
      expect(bad.stderr).toBe(`error: ${flag} takes host:port (e.g. 127.0.0.1:4180, [::1]:4180), got "${value}"\n`)
    }
  }, 60_000)

  it('with --console-remote binds the address given, and warns at start that it is plain HTTP; so does metrics off loopback', async () => {
    const [c, m] = [await freePort(), await freePort()]
    const remote = await startDaemon({ args: ['--console', `0.0.0.0:${c}`, '--console-remote', '--metrics-listen', `0.0.0.0:${m}`] })
    try {
      // The log lines travel through a pipe: they may land a moment after the socket answers.
      await waitForValue('the daemon to warn that the console and metrics are plain HTTP off loopback', async () =>
        /console on a non-loopback address over plain HTTP/.test(remote.stdout()) && /metrics on a non-loopback address, over plain HTTP and without a token/.test(remote.stdout()), 15_000)
      // Bound as given (every address here), and no host check off loopback: a proxy may name the machine as it likes.
      expect((await http({ port: c }, '/', { host: `clinic.example:${c}` })).status).toBe(200)
      expect((await http({ port: c }, '/api/v1/status')).status).toBe(401)
      expect((await http({ port: m }, '/metrics')).status).toBe(200)
    } finally {
      await remote.stop()
    }
  }, 60_000)
})

import { request as httpRequest } from 'node:http'
import { connect } from 'node:net'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import type { FastifyInstance, InjectOptions, LightMyRequestResponse } from 'fastify'
import { pino } from 'pino'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { createApi } from '../../src/api/server.js'
import { splitLines } from '../../src/api/import.js'
import type { AccessEvent } from '../../src/security/principal.js'
import { describeRoles } from '../../src/security/rights.js'
import { hashToken } from '../../src/security/tokens.js'
import { UserDirectory } from '../../src/security/users.js'
import { openLocalNode, patientRow, tempDir, type LocalNode, type TempDir } from '../helpers/temp.js'

let dir: TempDir
let node: LocalNode
let app: FastifyInstance
let users: UserDirectory
let events: AccessEvent[]
let logLines: Array<{ level: number, msg: string }>
const tokens: Record<string, string> = {}
/** The test clock: a cached lookup expires when it moves */
let now = 1_000_000

beforeEach(async () => {
  dir = await tempDir('ntk-auth-')
  node = await openLocalNode(dir.path)
  users = new UserDirectory({ db: node.db }, { now: () => now })
  await users.createFirstAdmin(dir.path)
  tokens.admin = (await import('node:fs/promises').then(async fs => await fs.readFile(join(dir.path, 'admin.token'), 'utf8'))).trim()
  for (const role of ['doctor', 'nurse', 'billing', 'auditor']) tokens[role] = (await users.add(role, role)).token
  events = []
  logLines = []
  const sink = new Writable({ write (chunk: Buffer, _enc, done) { logLines.push(JSON.parse(chunk.toString())); done() } })
  app = createApi({ db: node.db, users, status: async () => ({ ok: true }), audit: e => { events.push(e) }, logger: pino({ level: 'debug' }, sink) }, { bodyTimeoutMs: 300, maxImportLineBytes: 1024 })
  await app.ready()
  await node.db.insert('patient_records', patientRow(1, { allergies: 'Penicillin' }))
  await node.db.insert('billing_insurance', { billing_id: 10, patient_id: 1, amount: '12.50', date: '2025-01-02', insurance_provider: 'Acme', insurance_policy_number: 'P-1' })
})

afterEach(async () => {
  await app.close()
  await node.close()
  await dir.remove()
})

async function as (role: string | undefined, opts: InjectOptions): Promise<LightMyRequestResponse> {
  const headers = { ...(role === undefined ? {} : { authorization: `Bearer ${tokens[role] ?? role}` }), ...opts.headers }
  return await app.inject({ ...opts, headers })
}

describe('auth: tokens', () => {
  it('keeps only the SHA-256 of a token, and never answers it, even to an admin', async () => {
    const rows = (await node.db.list('users', {}, { limit: 100 })).rows
    expect(rows.map(r => r.token_hash)).toContain(hashToken(tokens.doctor as string))
    expect(JSON.stringify(rows)).not.toContain(tokens.doctor)
    const listed = await as('admin', { method: 'GET', url: '/v1/tables/users/rows' })
    expect(listed.statusCode).toBe(200)
    expect(listed.json().rows.length).toBe(5)
    for (const r of listed.json().rows) expect(Object.keys(r)).not.toContain('token_hash')
    expect((await as('admin', { method: 'GET', url: '/v1/tables/users/rows?token_hash=x' })).statusCode).toBe(403)
    const users = await as('admin', { method: 'GET', url: '/v1/users' })
    expect(users.body).not.toContain('token_hash')
    expect(users.json().users).toContainEqual({ user: 'nurse', role: 'nurse', revoked: false, revokedAt: null })
  })

  it('an admin replacing a user row (PUT) keeps its token: a column no one can see is not blanked', async () => {
    const nurse = (await node.db.list('users', { user_name: 'nurse' }, { limit: 1 })).rows[0]!
    const put = await as('admin', { method: 'PUT', url: `/v1/tables/users/rows/${String(nurse.user_id)}`, payload: { user_name: 'nurse', role_id: nurse.role_id } })
    expect(put.statusCode).toBe(200)
    expect(Object.keys(put.json().row)).not.toContain('token_hash')
    expect((await as('nurse', { method: 'GET', url: '/v1/tables/patient_records/rows/1' })).statusCode).toBe(200)
  })

  it('answers 401 without a token, with an unknown one, and for a malformed header; audited as a failed login', async () => {
    for (const headers of [{}, { authorization: 'Bearer nope' }, { authorization: 'Basic abc' }]) {
      const res = await app.inject({ method: 'GET', url: '/v1/status', headers })
      expect(res.statusCode).toBe(401)
      expect(res.json()).toEqual({ error: { code: 'UNAUTHORIZED', message: expect.any(String) } })
    }
    expect(events).toHaveLength(3)
    expect(events[0]).toMatchObject({ action: 'login', outcome: 'unauthenticated', status: 401 })
    expect(events[0]?.principal).toBeUndefined()
  })

  it('user add makes a working token shown once; a revoked token stops working once the cache expires', async () => {
    const made = await as('admin', { method: 'POST', url: '/v1/users', payload: { user: 'lerato', role: 'nurse' } })
    expect(made.statusCode).toBe(201)
    expect(made.json()).toEqual({ user: 'lerato', role: 'nurse', token: expect.stringMatching(/^[A-Za-z0-9_-]{43}$/) })
    tokens.lerato = made.json().token
    expect((await as('lerato', { method: 'GET', url: '/v1/tables/patient_records/rows/1' })).statusCode).toBe(200)
    expect((await as('admin', { method: 'POST', url: '/v1/users', payload: { user: 'lerato', role: 'nurse' } })).json().error).toMatchObject({ code: 'CONFLICT', column: 'user_name' })
    expect((await as('admin', { method: 'POST', url: '/v1/users', payload: { user: 'x', role: 'janitor' } })).statusCode).toBe(400)

    // A revoke made through another node's directory: this one sees it when its cache entry expires.
    const elsewhere = new UserDirectory({ db: node.db })
    await elsewhere.revoke('lerato')
    now += 1001
    const after = await as('lerato', { method: 'GET', url: '/v1/tables/patient_records/rows/1' })
    expect(after.statusCode).toBe(401)
    expect(after.json().error.message).toMatch(/revoked/)
    const revoked = await as('admin', { method: 'POST', url: '/v1/users/lerato/revoke' })
    expect(revoked.json()).toMatchObject({ user: 'lerato', role: 'nurse', revoked: true })
    expect((await as('admin', { method: 'POST', url: '/v1/users/nobody/revoke' })).statusCode).toBe(404)
    // The last admin is kept, so the network cannot lock itself out.
    expect((await as('admin', { method: 'POST', url: '/v1/users/admin/revoke' })).statusCode).toBe(409)
  })

  it('while the node is settling into a network, waits (bounded) for a token its users copy does not know yet; once settled, refuses at once', async () => {
    let settling = true
    const joining = new UserDirectory({ db: node.db }, { settling: () => settling, settleWaitMs: 5000 })
    // The user arrives (as a joining node's copy of users would, from its members) while the lookup waits.
    const token = 'a-token-made-on-another-member-0123456789abc'
    const doctorRole = (await node.db.list('user_roles', { role_name: 'doctor' })).rows[0]?.role_id
    const early = joining.authenticate(token)
    await new Promise(resolve => setTimeout(resolve, 300))
    await node.db.insert('users', { user_name: 'thabo', role_id: doctorRole, token_hash: hashToken(token) })
    expect(await early).toEqual({ user: 'thabo', role: 'doctor' })
    // Unknown for good: settling ends the wait (here after ~300 ms) with a 401.
    const started = Date.now()
    const unknown = joining.authenticate('no-such-token-at-all')
    setTimeout(() => { settling = false }, 300)
    await expect(unknown).rejects.toThrow(/Unknown token/)
    expect(Date.now() - started).toBeGreaterThanOrEqual(250)
    // Settled: an unknown token is refused without waiting.
    const t0 = Date.now()
    await expect(joining.authenticate('another-unknown-token')).rejects.toThrow(/Unknown token/)
    expect(Date.now() - t0).toBeLessThan(250)
  })

  it('while settling, an unknown token waits at most settleWaitMs', async () => {
    const joining = new UserDirectory({ db: node.db }, { settling: () => true, settleWaitMs: 400 })
    const t0 = Date.now()
    await expect(joining.authenticate('never-known')).rejects.toThrow(/Unknown token/)
    expect(Date.now() - t0).toBeGreaterThanOrEqual(400)
    expect(Date.now() - t0).toBeLessThan(5000)
  })

  it('user routes are for admins: 403 naming the right', async () => {
    const res = await as('doctor', { method: 'POST', url: '/v1/users', payload: { user: 'x', role: 'admin' } })
    expect(res.statusCode).toBe(403)
    expect(res.json().error).toMatchObject({ code: 'FORBIDDEN', message: expect.stringContaining('users') })
    expect(events.at(-1)).toMatchObject({ principal: { user: 'doctor', role: 'doctor' }, outcome: 'denied', status: 403, reason: expect.stringContaining('users') })
  })

  it('a route that declares no right needs admin (deny by default)', async () => {
    app = createApi({ db: node.db, users, status: async () => ({}) })
    app.get('/v1/undeclared', async () => ({ ok: true }))
    await app.ready()
    expect((await as('doctor', { method: 'GET', url: '/v1/undeclared' })).statusCode).toBe(403)
    expect((await as('admin', { method: 'GET', url: '/v1/undeclared' })).statusCode).toBe(200)
  })

  it('the invite carries the network key: only admins get it, while every role sees peers and status', async () => {
    await app.close()
    app = createApi({ db: node.db, users, status: async () => ({}), invite: async () => ({ invite: 'ntsoekhe-invite:1:x', addresses: [] }), extra: { peers: async () => ({ members: [] }) } })
    await app.ready()
    for (const role of ['doctor', 'nurse', 'billing', 'auditor']) {
      const res = await as(role, { method: 'GET', url: '/v1/invite' })
      expect(res.statusCode, role).toBe(403)
      expect(res.json().error.message).toMatch(/admin/)
      expect((await as(role, { method: 'GET', url: '/v1/peers' })).statusCode, role).toBe(200)
    }
    expect((await as('admin', { method: 'GET', url: '/v1/invite' })).json()).toEqual({ invite: 'ntsoekhe-invite:1:x', addresses: [] })
  })
})

describe('auth: rights by table and column', () => {
  it('billing sees only name and contact of a patient: other columns are absent, not blanked', async () => {
    const res = await as('billing', { method: 'GET', url: '/v1/tables/patient_records/rows/1' })
    expect(res.statusCode).toBe(200)
    expect(res.json().row).toEqual({ patient_id: 1, patient_name: 'Patient 1', address: '12 Church Street', contact_number: '0712345678', email: 'p@example.org' })
    const list = await as('billing', { method: 'GET', url: '/v1/tables/patient_records/rows' })
    expect(Object.keys(list.json().rows[0])).not.toContain('allergies')
    const history = await as('billing', { method: 'GET', url: '/v1/tables/patient_records/rows/1/history' })
    expect(Object.keys(history.json().versions[0].row)).not.toContain('date_of_birth')
    expect(events.at(-1)).toMatchObject({ action: 'history', table: 'patient_records', id: '1', patientId: '1', outcome: 'ok', columns: ['patient_id', 'patient_name', 'address', 'contact_number', 'email'] })
  })

  it('a filter on a column the role may not read is 403 naming it; an unknown or __proto__ filter is 400', async () => {
    const res = await as('billing', { method: 'GET', url: '/v1/tables/patient_records/rows?allergies=Penicillin' })
    expect(res.statusCode).toBe(403)
    expect(res.json().error).toMatchObject({ code: 'FORBIDDEN', column: 'allergies' })
    for (const name of ['__proto__', 'constructor', 'toString']) {
      const bad = await as('admin', { method: 'GET', url: `/v1/tables/patient_records/rows?${name}=x` })
      expect(bad.statusCode, name).toBe(400)
      expect(bad.json().error).toMatchObject({ code: 'INVALID', column: name })
    }
  })

  it('a write naming a column the role may not write is 403 naming it, and writes nothing', async () => {
    const res = await as('billing', { method: 'PATCH', url: '/v1/tables/patient_records/rows/1', payload: { email: 'x@example.org' } })
    expect(res.statusCode).toBe(403)
    expect(res.json().error.code).toBe('FORBIDDEN')
    const nurse = await as('nurse', { method: 'POST', url: '/v1/tables/billing_insurance/rows', payload: { patient_id: 1, amount: '1.00', date: '2025-01-01', insurance_provider: 'A', insurance_policy_number: 'B' } })
    expect(nurse.statusCode).toBe(403)
    expect(nurse.json().error.message).toMatch(/nurse may not write table billing_insurance/)
    expect((await node.db.get('patient_records', '1')).row.email).toBe('p@example.org')
    const ok = await as('billing', { method: 'PATCH', url: '/v1/tables/billing_insurance/rows/10', payload: { amount: '13.00' } })
    expect(ok.statusCode).toBe(200)
    expect(events.at(-1)).toMatchObject({ principal: { user: 'billing' }, action: 'update', table: 'billing_insurance', id: '10', patientId: '1', columns: ['amount'], outcome: 'ok', status: 200 })
  })

  it('nurses read medical history but do not write it; auditors read no table', async () => {
    const row = { history_id: 5, patient_id: 1, diagnosis: 'Flu', treatment: 'Rest', date_of_visit: '2025-01-01T10:00:00.000Z' }
    expect((await as('nurse', { method: 'POST', url: '/v1/tables/medical_history/rows', payload: row })).statusCode).toBe(403)
    expect((await as('doctor', { method: 'POST', url: '/v1/tables/medical_history/rows', payload: row })).statusCode).toBe(201)
    expect((await as('nurse', { method: 'GET', url: '/v1/tables/medical_history/rows/5' })).json().row.diagnosis).toBe('Flu')
    expect((await as('auditor', { method: 'GET', url: '/v1/tables/patient_records/rows/1' })).statusCode).toBe(403)
    expect((await as('doctor', { method: 'GET', url: '/v1/tables/users/rows' })).statusCode).toBe(403)
  })

  it('a batch or import names the forbidden column; an import rejects the line', async () => {
    const batch = await as('billing', { method: 'POST', url: '/v1/batch', payload: { operations: [{ op: 'patch', table: 'patient_records', id: 1, row: { email: 'a@b.c' } }] } })
    expect(batch.statusCode).toBe(403)
    expect(batch.json().error.message).toMatch(/^operations\[0\]/)
    const payload = JSON.stringify({ billing_id: 11, patient_id: 1, amount: '1.00', date: '2025-01-01', insurance_provider: 'A', insurance_policy_number: 'B' }) + '\n'
    expect((await as('nurse', { method: 'POST', url: '/v1/tables/billing_insurance/import', headers: { 'content-type': 'application/x-ndjson' }, payload })).statusCode).toBe(403)
    const imp = await as('billing', { method: 'POST', url: '/v1/tables/billing_insurance/import', headers: { 'content-type': 'application/x-ndjson' }, payload })
    expect(imp.json()).toMatchObject({ accepted: 1 })
    expect(events.at(-1)).toMatchObject({ action: 'import', table: 'billing_insurance', outcome: 'ok' })
  })

  it('roles are shown as data to admins and auditors', async () => {
    const res = await as('auditor', { method: 'GET', url: '/v1/roles' })
    expect(res.statusCode).toBe(200)
    expect(res.json().roles).toEqual(describeRoles())
    const billing = res.json().roles.find((r: any) => r.role === 'billing')
    expect(billing.tables.patient_records.read).not.toContain('allergies')
    expect((await as('nurse', { method: 'GET', url: '/v1/roles' })).statusCode).toBe(403)
  })
})

describe('auth: break-glass', () => {
  it('a nurse reads billing only by stating a reason; the read is flagged in the audit event', async () => {
    expect((await as('nurse', { method: 'GET', url: '/v1/tables/billing_insurance/rows/10' })).statusCode).toBe(403)
    const res = await as('nurse', { method: 'GET', url: '/v1/tables/billing_insurance/rows/10', headers: { 'x-break-glass': encodeURIComponent('Unconscious patient, ER') } })
    expect(res.statusCode).toBe(200)
    expect(res.json().row.insurance_policy_number).toBe('P-1')
    expect(events.at(-1)).toMatchObject({ principal: { user: 'nurse', breakGlass: 'Unconscious patient, ER' }, action: 'read', table: 'billing_insurance', patientId: '1', breakGlass: true, reason: 'Unconscious patient, ER', outcome: 'ok' })
  })

  it('opens one patient, not a table: a list it widens must name the patient', async () => {
    const glass = { 'x-break-glass': encodeURIComponent('Unconscious patient, ER') }
    const all = await as('nurse', { method: 'GET', url: '/v1/tables/billing_insurance/rows', headers: glass })
    expect(all.statusCode).toBe(403)
    expect(all.json().error.message).toMatch(/patient_id filter/)
    const one = await as('nurse', { method: 'GET', url: '/v1/tables/billing_insurance/rows?patient_id=1', headers: glass })
    expect(one.statusCode).toBe(200)
    expect(one.json().rows.map((r: { billing_id: number }) => r.billing_id)).toEqual([10])
    expect(events.at(-1)).toMatchObject({ action: 'list', table: 'billing_insurance', patientId: '1', breakGlass: true })
    // A list the role may make anyway is not narrowed by stating a reason.
    expect((await as('nurse', { method: 'GET', url: '/v1/tables/patient_records/rows', headers: glass })).statusCode).toBe(200)
  })

  it('is for reads only, for doctors and nurses only, and needs a reason', async () => {
    const write = await as('nurse', { method: 'PATCH', url: '/v1/tables/billing_insurance/rows/10', payload: { amount: '1.00' }, headers: { 'x-break-glass': 'emergency' } })
    expect(write.statusCode).toBe(403)
    expect((await as('billing', { method: 'GET', url: '/v1/tables/patient_records/rows/1', headers: { 'x-break-glass': 'emergency' } })).statusCode).toBe(403)
    expect((await as('nurse', { method: 'GET', url: '/v1/tables/billing_insurance/rows/10', headers: { 'x-break-glass': ' ' } })).statusCode).toBe(400)
    expect((await as('nurse', { method: 'GET', url: '/v1/tables/users/rows', headers: { 'x-break-glass': 'emergency' } })).statusCode).toBe(403)
  })
})

describe('socket hardening', () => {
  it('PUT with a body that is not an object is a 400 and makes no version', async () => {
    await node.db.insert('medications', { medication_id: 3, name: 'Aspirin', dosage: '5 mg', manufacturer: 'X' })
    await node.db.insert('patient_medications', { patient_id: 1, medication_id: 3 })
    for (const payload of ['true', '[]', '[1]', 'null', '"x"']) {
      const res = await as('admin', { method: 'PUT', url: '/v1/tables/patient_medications/rows/1:3', headers: { 'content-type': 'application/json' }, payload })
      expect(res.statusCode, payload).toBe(400)
    }
    expect((await node.db.history('patient_medications', '1:3'))).toHaveLength(1)
  })

  it('an NDJSON line over the limit is rejected alone; the lines around it are imported', async () => {
    const row = (id: number): string => JSON.stringify({ billing_id: id, patient_id: 1, amount: '1.00', date: '2025-01-01', insurance_provider: 'A', insurance_policy_number: 'B' })
    const payload = [row(21), `{"x": "${'a'.repeat(5000)}"}`, row(22)].join('\n')
    const res = await as('admin', { method: 'POST', url: '/v1/tables/billing_insurance/import', headers: { 'content-type': 'application/x-ndjson' }, payload })
    expect(res.json()).toMatchObject({ accepted: 2, rejected: [{ line: 2, error: { code: 'INVALID', message: expect.stringMatching(/longer than 1024 bytes/) } }] })
    const csv = await as('admin', { method: 'POST', url: '/v1/tables/billing_insurance/import', headers: { 'content-type': 'text/csv' }, payload: `billing_id,patient_id,amount,date,insurance_provider,insurance_policy_number\n23,1,1.00,2025-01-01,${'b'.repeat(5000)},B\n` })
    expect(csv.json().rejected[0].error.message).toMatch(/CSV: Max Record Size/)
  })

  it('splitLines holds at most the limit of one line', async () => {
    async function * chunks (): AsyncGenerator<Buffer> {
      yield Buffer.from('ab\ncd')
      for (let i = 0; i < 100; i++) yield Buffer.alloc(100, 'x')
      yield Buffer.from('\nef')
    }
    const out = []
    for await (const l of splitLines(chunks(), 50)) out.push(l)
    expect(out).toEqual([{ n: 1, text: 'ab' }, { n: 2 }, { n: 3, text: 'ef' }])
  })

  describe('over a real socket', () => {
    let socket: string
    beforeEach(async () => {
      socket = join(dir.path, 'api.sock')
      await app.listen({ path: socket })
    })

    const send = async (head: string, body: string, end: boolean): Promise<{ closedMs: number }> => {
      const started = Date.now()
      return await new Promise((resolve, reject) => {
        const c = connect(socket, () => { c.write(head + body); if (end) c.end() })
        c.on('data', () => {})
        c.on('error', reject)
        c.on('close', () => { resolve({ closedMs: Date.now() - started }) })
        setTimeout(() => { c.destroy(); reject(new Error('the server did not close a stalled request within 5 s')) }, 5000)
      })
    }

    it('cuts off a request body that stalls', async () => {
      const head = `POST /v1/tables/patient_records/rows HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${tokens.admin as string}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n`
      const { closedMs } = await send(head, '{"patient_name": "', false)
      expect(closedMs).toBeGreaterThanOrEqual(250)
      expect(logLines.filter(l => l.level >= 50)).toEqual([])
    })

    it('a client that disconnects mid-import is not logged as a server error', async () => {
      await new Promise<void>((resolve, reject) => {
        const req = httpRequest({ socketPath: socket, method: 'POST', path: '/v1/tables/billing_insurance/import', headers: { authorization: `Bearer ${tokens.admin as string}`, 'content-type': 'application/x-ndjson' } })
        req.on('error', () => { resolve() })
        req.write('{"billing_id": 30, "patient_id": 1,')
        setTimeout(() => { req.destroy(); resolve() }, 50)
        setTimeout(() => { reject(new Error('the request did not end within 5 s')) }, 5000)
      })
      // The import fails as the server sees the socket close: wait for the close, with a deadline, then a moment more.
      const connections = async (): Promise<number> => await new Promise(resolve => { app.server.getConnections((_err, n) => { resolve(n) }) })
      const deadline = Date.now() + 3000
      while (await connections() > 0) {
        if (Date.now() > deadline) throw new Error('the server kept the connection of a client that went away for 3 s')
        await new Promise(resolve => setTimeout(resolve, 20))
      }
      await new Promise(resolve => setTimeout(resolve, 50))
      expect(logLines.filter(l => l.level >= 50)).toEqual([])
    })
  })
})

import type { FastifyInstance } from 'fastify'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { AUDIT_ROUTE } from '../../src/api/audit.js'
import { createApi } from '../../src/api/server.js'
import { AuditTrail, storeHead } from '../../src/security/audit.js'
import type { AccessEvent } from '../../src/security/principal.js'
import { UserDirectory } from '../../src/security/users.js'
import { waitFor } from '../helpers/wait.js'
import { openLocalNode, patientRow, tempDir, type LocalNode, type TempDir } from '../helpers/temp.js'

let dir: TempDir
let node: LocalNode
let trail: AuditTrail
let app: FastifyInstance
let events: AccessEvent[]
let users: UserDirectory
let token: string
/** Every request as the admin unless it names other headers */
const as = (t: string) => async (opts: { method: 'GET' | 'POST', url: string, payload?: Record<string, unknown> }) => await app.inject({ ...opts, headers: { authorization: `Bearer ${t}` } })

beforeEach(async () => {
  dir = await tempDir('ntk-api-audit-')
  node = await openLocalNode(dir.path)
  trail = new AuditTrail({ coordinator: node.coordinator, peerId: node.peerId, head: storeHead(node.store) }, { flushIntervalMs: 10_000 })
  await trail.start()
  events = []
  users = new UserDirectory({ db: node.db })
  await users.ensureRoles()
  token = (await users.add('admin', 'admin')).token
  app = createApi({ db: node.db, users, status: async () => ({}), audit: e => { events.push(e); trail.record(e) }, auditTrail: trail })
  await app.ready()
})

afterEach(async () => {
  await app.close()
  await trail.stop()
  await node.close()
  await dir.remove()
})

describe('api: audit', () => {
  it('tells the trail of each data request, with the patient it concerns, and of nothing else', async () => {
    expect((await as(token)({ method: 'POST', url: '/v1/tables/patient_records/rows', payload: patientRow(42) })).statusCode).toBe(201)
    expect((await as(token)({ method: 'GET', url: '/v1/tables/patient_records/rows/42' })).statusCode).toBe(200)
    expect((await as(token)({ method: 'GET', url: '/v1/tables/patient_records/rows/43' })).statusCode).toBe(404)
    expect((await as(token)({ method: 'GET', url: '/v1/tables/billing_insurance/rows?patient_id=42' })).statusCode).toBe(200)
    expect((await as(token)({ method: 'GET', url: '/v1/status' })).statusCode).toBe(200)
    // onResponse runs once the answer is sent, which may be after inject() has it.
    await waitFor('the access events of the four data requests', () => events.length >= 4, 2000)
    const admin = { user: 'admin', role: 'admin' }
    expect(events).toEqual([
      { principal: admin, action: 'insert', table: 'patient_records', id: '42', patientId: '42', columns: Object.keys(patientRow(42)), outcome: 'ok', status: 201 },
      { principal: admin, action: 'read', table: 'patient_records', id: '42', patientId: '42', columns: expect.arrayContaining(['patient_name', 'allergies']), outcome: 'ok', status: 200 },
      { principal: admin, action: 'read', table: 'patient_records', id: '43', patientId: '43', columns: expect.any(Array), outcome: 'error', status: 404 },
      { principal: admin, action: 'list', table: 'billing_insurance', patientId: '42', columns: expect.arrayContaining(['insurance_policy_number']), outcome: 'ok', status: 200 }
    ])
  })

  it('a list of several patients\' rows makes one entry per patient, so audit --patient finds it', async () => {
    for (const id of [42, 43]) expect((await as(token)({ method: 'POST', url: '/v1/tables/patient_records/rows', payload: patientRow(id) })).statusCode).toBe(201)
    events.length = 0
    expect((await as(token)({ method: 'GET', url: '/v1/tables/patient_records/rows' })).statusCode).toBe(200)
    await waitFor('the list\'s access events', () => events.length >= 2, 2000)
    expect(events.map(e => [e.action, e.patientId]).sort()).toEqual([['list', '42'], ['list', '43']])
    await trail.flush()
    expect((await trail.query({ patient: '43' })).entries.map(e => e.action)).toContain('list')
  })

  it('fails closed: while the trail cannot take entries, patient data is not served', async () => {
    expect((await as(token)({ method: 'POST', url: '/v1/tables/patient_records/rows', payload: patientRow(42) })).statusCode).toBe(201)
    await trail.stop()
    expect(trail.accepting).toBe(false)
    const refused = await as(token)({ method: 'GET', url: '/v1/tables/patient_records/rows/42' })
    expect(refused.statusCode).toBe(503)
    expect(refused.json().error.message).toMatch(/audit trail cannot record/)
    expect((await as(token)({ method: 'GET', url: '/v1/tables/patient_records/rows' })).statusCode).toBe(503)
    expect((await as(token)({ method: 'GET', url: '/v1/status' })).statusCode).toBe(200)
  })

  it(`serves the trail and its verification on ${AUDIT_ROUTE}`, async () => {
    await as(token)({ method: 'GET', url: '/v1/tables/patient_records/rows/42' })
    await as(token)({ method: 'GET', url: '/v1/tables/patient_records/rows/7' })
    await waitFor('both reads to reach the trail', () => trail.status().recorded >= 2, 2000)
    const listed = await as(token)({ method: 'GET', url: `${AUDIT_ROUTE}?patient=42` })
    expect(listed.statusCode).toBe(200)
    expect(listed.json().entries.map((e: { key: string }) => e.key)).toEqual(['42'])
    expect((await as(token)({ method: 'GET', url: `${AUDIT_ROUTE}?verify=true` })).json()).toEqual({ ok: true, checked: 2, nodes: 1, broken: null })
    expect((await as(token)({ method: 'GET', url: `${AUDIT_ROUTE}?since=soon` })).statusCode).toBe(400)
    expect((await as(token)({ method: 'GET', url: `${AUDIT_ROUTE}?patient=x` })).statusCode).toBe(400)
    expect((await as(token)({ method: 'GET', url: `${AUDIT_ROUTE}?table=patient_records` })).statusCode).toBe(400)
    // Auditors read the trail; no clinical role does.
    const auditor = (await users.add('audrey', 'auditor')).token
    const doctor = (await users.add('dr.moshoeshoe', 'doctor')).token
    expect((await as(auditor)({ method: 'GET', url: `${AUDIT_ROUTE}?patient=42` })).statusCode).toBe(200)
    const denied = await as(doctor)({ method: 'GET', url: AUDIT_ROUTE })
    expect(denied.statusCode).toBe(403)
    expect(denied.json().error.message).toMatch(/audit/)
    expect((await as(auditor)({ method: 'GET', url: '/v1/tables/patient_records/rows/42' })).statusCode).toBe(403)
  })
})

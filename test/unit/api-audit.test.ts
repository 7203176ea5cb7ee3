import type { FastifyInstance } from 'fastify'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { AUDIT_ROUTE } from '../../src/api/audit.js'
import { createApi } from '../../src/api/server.js'
import { AuditTrail, storeHead } from '../../src/security/audit.js'
import type { AccessEvent } from '../../src/security/principal.js'
import { waitFor } from '../helpers/wait.js'
import { openLocalNode, patientRow, tempDir, type LocalNode, type TempDir } from '../helpers/temp.js'

let dir: TempDir
let node: LocalNode
let trail: AuditTrail
let app: FastifyInstance
let events: AccessEvent[]

beforeEach(async () => {
  dir = await tempDir('ntk-api-audit-')
  node = await openLocalNode(dir.path)
  trail = new AuditTrail({ coordinator: node.coordinator, peerId: node.peerId, head: storeHead(node.store) }, { flushIntervalMs: 10_000 })
  await trail.start()
  events = []
  app = createApi({ db: node.db, status: async () => ({}), audit: e => { events.push(e); trail.record(e) }, auditTrail: trail })
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
    expect((await app.inject({ method: 'POST', url: '/v1/tables/patient_records/rows', payload: patientRow(42) })).statusCode).toBe(201)
    expect((await app.inject({ method: 'GET', url: '/v1/tables/patient_records/rows/42' })).statusCode).toBe(200)
    expect((await app.inject({ method: 'GET', url: '/v1/tables/patient_records/rows/43' })).statusCode).toBe(404)
    expect((await app.inject({ method: 'GET', url: '/v1/tables/billing_insurance/rows?patient_id=42' })).statusCode).toBe(200)
    expect((await app.inject({ method: 'GET', url: '/v1/status' })).statusCode).toBe(200)
    // onResponse runs once the answer is sent, which may be after inject() has it.
    await waitFor('the access events of the four data requests', () => events.length >= 4, 2000)
    expect(events).toEqual([
      { action: 'insert', table: 'patient_records', id: '42', patientId: '42', columns: Object.keys(patientRow(42)), outcome: 'ok', status: 201 },
      { action: 'read', table: 'patient_records', id: '42', patientId: '42', outcome: 'ok', status: 200 },
      { action: 'read', table: 'patient_records', id: '43', patientId: '43', outcome: 'error', status: 404 },
      { action: 'list', table: 'billing_insurance', patientId: '42', outcome: 'ok', status: 200 }
    ])
  })

  it(`serves the trail and its verification on ${AUDIT_ROUTE}`, async () => {
    await app.inject({ method: 'GET', url: '/v1/tables/patient_records/rows/42' })
    await app.inject({ method: 'GET', url: '/v1/tables/patient_records/rows/7' })
    await waitFor('both reads to reach the trail', () => trail.status().recorded >= 2, 2000)
    const listed = await app.inject({ method: 'GET', url: `${AUDIT_ROUTE}?patient=42` })
    expect(listed.statusCode).toBe(200)
    expect(listed.json().entries.map((e: { key: string }) => e.key)).toEqual(['42'])
    expect((await app.inject({ method: 'GET', url: `${AUDIT_ROUTE}?verify=true` })).json()).toEqual({ ok: true, checked: 2, nodes: 1, broken: null })
    expect((await app.inject({ method: 'GET', url: `${AUDIT_ROUTE}?since=soon` })).statusCode).toBe(400)
    expect((await app.inject({ method: 'GET', url: `${AUDIT_ROUTE}?patient=x` })).statusCode).toBe(400)
    expect((await app.inject({ method: 'GET', url: `${AUDIT_ROUTE}?table=patient_records` })).statusCode).toBe(400)
  })
})

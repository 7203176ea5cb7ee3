import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { EXPORT_TABLES_HEADER, exportPlan, exportStream } from '../../src/api/export.js'
import { UnavailableError } from '../../src/errors/index.js'
import { createApi } from '../../src/api/server.js'
import { TABLES, findTable, type Row } from '../../src/schema/index.js'
import type { AccessEvent } from '../../src/security/principal.js'
import { UserDirectory } from '../../src/security/users.js'
import { openLocalNode, patientRow, tempDir, type LocalNode, type TempDir } from '../helpers/temp.js'

let dir: TempDir
let node: LocalNode
let app: FastifyInstance
let events: AccessEvent[]
const tokens: Record<string, string> = {}

const PATIENTS = [1, 2, 3, 4, 5].map(i => patientRow(i, {
  patient_name: `Palesa Mohapi ${i}`,
  address: `${i} Kingsway, Maseru`,
  contact_number: `071234567${i}`,
  email: `palesa${i}@example.org`,
  date_of_birth: `198${i}-05-17`
}))
const DOCTOR = { doctor_id: 20, name: 'Dr. Lerato Nthabiseng', specialization: 'Cardiology', contact_number: '2622230000', email: 'lerato@example.org', availability: 'Mon-Fri' }
const POLICY = 'POL-778899'
const IDENTIFIERS = [...PATIENTS.flatMap(p => [p.patient_name, p.address, p.contact_number, p.email, p.date_of_birth]), DOCTOR.name, DOCTOR.email, DOCTOR.contact_number, POLICY, 'nurse.lineo']

beforeEach(async () => {
  dir = await tempDir('ntk-api-export-')
  node = await openLocalNode(dir.path)
  const users = new UserDirectory({ db: node.db })
  await users.ensureRoles()
  tokens.admin = (await users.add('admin', 'admin')).token
  for (const role of ['doctor', 'billing', 'auditor']) tokens[role] = (await users.add(role, role)).token
  tokens['nurse.lineo'] = (await users.add('nurse.lineo', 'nurse')).token
  events = []
  // Two rows a page, so every table of more than two rows is read over several pages.
  app = createApi({ db: node.db, users, status: async () => ({}), audit: e => { events.push(e) } }, { exportPageRows: 2 })
  await app.ready()
  for (const p of PATIENTS) await node.db.insert('patient_records', p)
  await node.db.insert('doctors_info', DOCTOR)
  await node.db.insert('medications', { medication_id: 30, name: 'Amlodipine', dosage: '5mg', manufacturer: 'Pfizer' })
  await node.db.insert('appointments', { appointment_id: 40, patient_id: 1, doctor_id: 20, appointment_date: '2025-02-01T09:00:00.000Z', purpose: 'Check-up' })
  await node.db.insert('medical_history', { history_id: 50, patient_id: 1, diagnosis: 'Hypertension', treatment: 'Amlodipine', date_of_visit: '2025-02-01T09:30:00.000Z' })
  await node.db.insert('medical_history', { history_id: 51, patient_id: 2, diagnosis: 'Asthma', treatment: 'Salbutamol', date_of_visit: '2025-02-02T09:30:00.000Z' })
  await node.db.insert('lab_results', { result_id: 60, record_id: 50, patient_id: 1, test_name: 'Blood pressure', test_date: '2025-02-01', test_result: '150/95' })
  await node.db.insert('billing_insurance', { billing_id: 70, patient_id: 1, amount: '12.50', date: '2025-02-01', insurance_provider: 'Acme', insurance_policy_number: POLICY })
  await node.db.insert('patient_medications', { patient_id: 1, medication_id: 30 })
})

afterEach(async () => {
  await app.close()
  await node.close()
  await dir.remove()
})

async function exportAs (role: string, query = '', headers: Record<string, string> = {}): Promise<LightMyRequestResponse> {
  return await app.inject({ method: 'GET', url: `/v1/export${query}`, headers: { authorization: `Bearer ${tokens[role] ?? role}`, ...headers } })
}

interface Line { table: string, row: Record<string, unknown> }

function linesOf (res: LightMyRequestResponse): Line[] {
  expect(res.statusCode, res.body).toBe(200)
  expect(res.headers['content-type']).toMatch(/^application\/x-ndjson/)
  if (res.body === '') return []
  expect(res.body.endsWith('\n')).toBe(true)
  return res.body.slice(0, -1).split('\n').map(l => JSON.parse(l) as Line)
}

const rowsOf = (lines: Line[], table: string): Array<Record<string, unknown>> => lines.filter(l => l.table === table).map(l => l.row)

describe('api: export', () => {
  it('gives an admin every row of every table in full, a page at a time, never a token hash', async () => {
    const res = await exportAs('admin')
    const lines = linesOf(res)
    expect(lines.every(l => Object.keys(l).join() === 'table,row')).toBe(true)
    expect(res.headers[EXPORT_TABLES_HEADER]).toBe(TABLES.map(t => t.name).join(','))
    for (const t of TABLES) {
      const stored = (await node.db.list(t.name, {}, { limit: 1000 })).rows
      const exported = rowsOf(lines, t.name)
      expect(exported.length, t.name).toBe(stored.length)
      if (t.name !== 'users') expect(exported, t.name).toEqual(stored)
    }
    expect(rowsOf(lines, 'patient_records')).toHaveLength(5)
    expect(rowsOf(lines, 'users')).toHaveLength(5)
    expect(res.body).not.toContain('token_hash')
    for (const token of Object.values(tokens)) expect(res.body).not.toContain(token)
    expect(rowsOf(lines, 'patient_records').find(p => p.patient_id === 1)).toMatchObject({ patient_name: 'Palesa Mohapi 1', email: 'palesa1@example.org', date_of_birth: '1981-05-17' })
  })

  it('records the export as an access event: action export, the tables, plain or anonymized', async () => {
    linesOf(await exportAs('admin', '?table=patient_records&table=billing_insurance'))
    linesOf(await exportAs('nurse.lineo', '?anonymize=true&table=patient_records'))
    expect(events).toHaveLength(2)
    expect(events[0]).toMatchObject({ action: 'export', outcome: 'ok', status: 200, reason: 'plain export of patient_records,billing_insurance', principal: { user: 'admin', role: 'admin' } })
    expect(events[0]?.columns).toContain('billing_insurance.insurance_policy_number')
    expect(events[1]).toMatchObject({ action: 'export', table: 'patient_records', reason: 'anonymized export of patient_records', principal: { role: 'nurse' } })
    expect(events[1]?.columns).not.toContain('patient_records.patient_name')
  })

  it('refuses a plain export to every other role with 403 naming the right, audited as a denial', async () => {
    for (const role of ['nurse.lineo', 'doctor', 'billing', 'auditor']) {
      const res = await exportAs(role)
      expect(res.statusCode, role).toBe(403)
      expect(res.json().error).toMatchObject({ code: 'FORBIDDEN', message: expect.stringContaining('right export') })
    }
    expect(events.every(e => e.action === 'export' && e.outcome === 'denied')).toBe(true)
  })

  it('gives a nurse an anonymized export of only the tables and columns a nurse may read', async () => {
    const res = await exportAs('nurse.lineo', '?anonymize=true')
    const lines = linesOf(res)
    expect(res.headers[EXPORT_TABLES_HEADER]).toBe('patient_records,appointments,medical_history,medications,patient_medications,lab_results')
    expect(new Set(lines.map(l => l.table))).toEqual(new Set(['patient_records', 'appointments', 'medical_history', 'medications', 'patient_medications', 'lab_results']))
    expect(res.body).not.toContain('billing_insurance')
    expect(res.body).not.toContain('Acme')
    expect(res.body).not.toContain('Cardiology')
    for (const line of res.body.split('\n')) {
      for (const v of IDENTIFIERS) expect(line).not.toContain(String(v))
    }
    const patients = rowsOf(lines, 'patient_records')
    expect(patients).toHaveLength(5)
    for (const p of patients) expect(Object.keys(p).sort()).toEqual(['allergies', 'date_of_birth', 'gender', 'patient_id'])
    expect(patients.map(p => p.date_of_birth).sort()).toEqual(['1981', '1982', '1983', '1984', '1985'])
    expect(rowsOf(lines, 'medical_history').map(h => h.diagnosis).sort()).toEqual(['Asthma', 'Hypertension'])
  })

  it('joins a patient\'s rows by one pseudonym within an export, and not across exports', async () => {
    const first = linesOf(await exportAs('doctor', '?anonymize=true'))
    const byBirthYear = new Map(rowsOf(first, 'patient_records').map(p => [p.date_of_birth, p.patient_id]))
    const p1 = byBirthYear.get('1981')
    expect(typeof p1).toBe('string')
    expect(rowsOf(first, 'medical_history').find(h => h.diagnosis === 'Hypertension')?.patient_id).toBe(p1)
    expect(rowsOf(first, 'appointments')[0]?.patient_id).toBe(p1)
    expect(rowsOf(first, 'billing_insurance')[0]?.patient_id).toBe(p1)
    expect(rowsOf(first, 'patient_medications')[0]).toEqual({ patient_id: p1, medication_id: 30 })
    const lab = rowsOf(first, 'lab_results')[0]
    expect(lab?.patient_id).toBe(p1)
    expect(lab?.record_id).toBe(rowsOf(first, 'medical_history').find(h => h.diagnosis === 'Hypertension')?.history_id)
    expect(rowsOf(first, 'appointments')[0]?.doctor_id).toBe(rowsOf(first, 'doctors_info')[0]?.doctor_id)
    expect(rowsOf(first, 'doctors_info')[0]).toEqual({ doctor_id: expect.any(String), specialization: 'Cardiology', availability: 'Mon-Fri' })

    const second = linesOf(await exportAs('doctor', '?anonymize=true'))
    const again = rowsOf(second, 'patient_records').find(p => p.date_of_birth === '1981')?.patient_id
    expect(again).toEqual(expect.any(String))
    expect(again).not.toBe(p1)
  })

  it('gives billing the bills and only a pseudonym of each patient', async () => {
    const lines = linesOf(await exportAs('billing', '?anonymize=true'))
    expect(new Set(lines.map(l => l.table))).toEqual(new Set(['patient_records', 'billing_insurance']))
    for (const p of rowsOf(lines, 'patient_records')) expect(Object.keys(p)).toEqual(['patient_id'])
    expect(rowsOf(lines, 'billing_insurance')[0]).toEqual({ billing_id: expect.any(String), patient_id: expect.any(String), amount: '12.50', date: '2025-02-01', insurance_provider: 'Acme' })
  })

  it('gives an admin every table anonymized, users without their names', async () => {
    const res = await exportAs('admin', '?anonymize=true')
    const lines = linesOf(res)
    expect(new Set(lines.map(l => l.table))).toEqual(new Set(TABLES.map(t => t.name)))
    for (const line of res.body.split('\n')) {
      for (const v of IDENTIFIERS) expect(line).not.toContain(String(v))
    }
    for (const u of rowsOf(lines, 'users')) expect(Object.keys(u).sort()).toEqual(['revoked_at', 'role_id', 'user_id'])
  })

  it('answers 404 for an unknown or internal table, 403 for a table the role may not read, 400 for bad parameters', async () => {
    expect((await exportAs('admin', '?table=nope')).json().error.code).toBe('UNKNOWN_TABLE')
    expect((await exportAs('admin', '?table=nope')).statusCode).toBe(404)
    expect((await exportAs('admin', '?table=_audit')).statusCode).toBe(404)
    const forbidden = await exportAs('nurse.lineo', '?anonymize=true&table=patient_records&table=billing_insurance')
    expect(forbidden.statusCode).toBe(403)
    expect(forbidden.json().error.message).toContain('billing_insurance')
    expect((await exportAs('admin', '?anonymize=maybe')).statusCode).toBe(400)
    expect((await exportAs('admin', '?tables=patient_records')).statusCode).toBe(400)
    expect((await exportAs('admin', '?consistency=most')).statusCode).toBe(400)
    expect((await exportAs('doctor', '?anonymize=true', { 'x-break-glass': 'emergency' })).statusCode).toBe(400)
    expect((await app.inject({ method: 'GET', url: '/v1/export' })).statusCode).toBe(401)
  })

  it('exports a table once when it is named twice, and nothing for a role that may read no table', async () => {
    const lines = linesOf(await exportAs('admin', '?table=patient_records&table=patient_records'))
    expect(lines).toHaveLength(5)
    expect(linesOf(await exportAs('auditor', '?anonymize=true'))).toEqual([])
    expect(exportPlan(node.db, 'auditor', [], true)).toEqual([])
  })
})

describe('api: export stream', () => {
  const patients = findTable('patient_records')
  if (patients === undefined) throw new Error('no patient_records')
  const plan = [{ table: patients, columns: patients.columns.map(c => c.name) }]
  /** A table that never ends: every page is 200 rows of ~150 bytes, and has a next one */
  const endless = (calls: { n: number }, failAt = Infinity) => ({
    list: async (): Promise<{ rows: Row[], next: string | null }> => {
      calls.n++
      if (calls.n >= failAt) throw new UnavailableError('2 of 3 replicas did not answer')
      return { rows: Array.from({ length: 200 }, (_, i) => patientRow(calls.n * 1000 + i)), next: 'more' }
    }
  })

  it('reads the next page only when the reader has taken what it holds (bounded memory)', async () => {
    const calls = { n: 0 }
    const stream = exportStream(endless(calls), plan, { anonymize: false, options: {}, pageRows: 200 })
    const first = await new Promise<Buffer>((resolve, reject) => { stream.once('data', resolve).once('error', reject) })
    expect(first.toString().split('\n')[0]).toContain('"table":"patient_records"')
    stream.pause()
    await new Promise(resolve => setTimeout(resolve, 100))
    // A page is ~30 KB, the stream's buffer 16 KiB: it reads at most a page or two ahead of the reader.
    expect(calls.n).toBeLessThanOrEqual(3)
    stream.destroy()
  })

  it('ends with an error, and says so, when a page cannot be read', async () => {
    const calls = { n: 0 }
    const cut: unknown[] = []
    const stream = exportStream(endless(calls, 3), plan, { anonymize: true, options: {}, pageRows: 200, onCutOff: err => { cut.push(err) } })
    let lines = 0
    await expect((async () => { for await (const c of stream) lines += String(c).split('\n').length - 1 })()).rejects.toThrow(/replicas/)
    expect(lines).toBe(400)
    expect(cut).toHaveLength(1)
  })
})

import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { tokenOf } from '../../src/cluster/token.js'
import { NtsoekheError } from '../../src/errors/index.js'
import { Database } from '../../src/query/database.js'
import { IdSource } from '../../src/query/id-source.js'
import type { Row } from '../../src/schema/index.js'
import { openLocalNode, patientRow, tempDir, type LocalNode, type TempDir } from '../helpers/temp.js'

let dir: TempDir
let node: LocalNode
let db: Database

beforeEach(async () => {
  dir = await tempDir('ntk-db-')
  node = await openLocalNode(dir.path)
  db = node.db
})

afterEach(async () => {
  vi.useRealTimers()
  await node.close()
  await dir.remove()
})

/** Awaits `p`, expects it to fail with a NtsoekheError, and returns that error */
async function failure (p: Promise<unknown>): Promise<NtsoekheError> {
  const err = await p.then(() => undefined, (e: unknown) => e)
  if (err === undefined) throw new Error('expected the call to fail, but it succeeded')
  expect(err).toBeInstanceOf(NtsoekheError)
  return err as NtsoekheError
}

const patient = patientRow
const doctor = (id: number): Row => ({
  doctor_id: id, name: `Dr ${id}`, specialization: 'GP', contact_number: '0711111111', email: 'd@example.org', availability: 'Mon-Fri'
})
const appointment = (id: number | undefined, patientId: number, doctorId: number): Row => ({
  ...(id === undefined ? {} : { appointment_id: id }),
  patient_id: patientId, doctor_id: doctorId, appointment_date: '2026-02-01T09:30:00.000Z', purpose: 'checkup'
})
const history = (id: number, patientId: number, roleId: number | null = null): Row => ({
  history_id: id, patient_id: patientId, diagnosis: 'flu', treatment: 'rest', date_of_visit: '2026-01-10T10:00:00.000Z', role_id: roleId
})
const lab = (id: number, recordId: number, patientId: number): Row => ({
  result_id: id, record_id: recordId, patient_id: patientId, test_name: 'CBC', test_date: '2026-01-11', test_result: 'normal'
})
const billing = (id: number, patientId: number): Row => ({
  billing_id: id, patient_id: patientId, amount: '120.5', date: '2026-01-12', insurance_provider: 'Acme', insurance_policy_number: 'P-1'
})
const medication = (id: number): Row => ({ medication_id: id, name: 'Paracetamol', dosage: '500mg', manufacturer: 'Generic' })

/** A patient 1 with a doctor 7, an appointment 100, history 200 with lab result 300, bill 400 and medication 3 */
async function chart (): Promise<void> {
  await db.insert('patient_records', patient(1))
  await db.insert('doctors_info', doctor(7))
  await db.insert('appointments', appointment(100, 1, 7))
  await db.insert('medical_history', history(200, 1))
  await db.insert('lab_results', lab(300, 200, 1))
  await db.insert('billing_insurance', billing(400, 1))
  await db.insert('medications', medication(3))
  await db.insert('patient_medications', { patient_id: 1, medication_id: 3 })
}

describe('database: insert', () => {
  it('makes an id when the key is left out', async () => {
    const a = await db.insert('patient_records', patient())
    const b = await db.insert('patient_records', patient())
    expect(Number(a.id)).toBeGreaterThan(0)
    expect(Number(b.id)).toBeGreaterThan(Number(a.id))
    expect(a.row?.patient_id).toBe(Number(a.id))
    expect(Object.keys(a.row ?? {})[0]).toBe('patient_id')
    expect((await db.get('patient_records', a.id)).row).toEqual(a.row)
    await db.insert('doctors_info', doctor(7))
    const appt = await db.insert('appointments', appointment(undefined, Number(a.id), 7))
    expect((await db.get('appointments', appt.id)).row).toEqual(appt.row)
  })

  it('refuses an existing key with CONFLICT', async () => {
    await db.insert('patient_records', patient(1))
    const err = await failure(db.insert('patient_records', patient(1)))
    expect(err.code).toBe('CONFLICT')
    expect(err.name).toBe('ConflictError')
    await db.insert('doctors_info', doctor(7))
    await db.insert('doctors_info', doctor(8))
    await db.insert('appointments', appointment(100, 1, 7))
    // The same appointment id under another doctor is still the same key.
    expect((await failure(db.insert('appointments', appointment(100, 1, 8)))).code).toBe('CONFLICT')
    expect((await db.get('appointments', '100')).row.doctor_id).toBe(7)
  })

  it('draws again when a generated id meets an existing key (a row keyed by hand, or an id of the earlier layout)', async () => {
    vi.useFakeTimers({ toFake: ['Date'] })
    vi.setSystemTime(Date.UTC(2026, 3, 1))
    const ids = new IdSource({ coordinator: node.coordinator, peerId: node.peerId })
    const one = new Database({ coordinator: node.coordinator, peerId: node.peerId, ids })
    // The id the next draw would make, taken first by a row keyed by hand.
    const probe = new IdSource({ coordinator: node.coordinator, peerId: node.peerId })
    const expected = await probe.next()
    await db.insert('patient_records', patient(expected))
    const drawn = await one.insert('patient_records', patient())
    // Same tag (the same peer takes its own claim back), same millisecond: the draw after the taken one.
    expect(Number(drawn.id)).toBe(expected + 1)
    expect((await db.list('patient_records', {})).rows).toHaveLength(2)
  })

  it('addresses composite keys as patient:medication and never makes them up', async () => {
    await db.insert('patient_records', patient(3))
    await db.insert('medications', medication(7))
    const w = await db.insert('patient_medications', { medication_id: 7, patient_id: 3 })
    expect(w.id).toBe('3:7')
    expect(Object.keys(w.row ?? {})).toEqual(['patient_id', 'medication_id'])
    expect((await db.get('patient_medications', '3:7')).row).toEqual({ patient_id: 3, medication_id: 7 })
    expect((await failure(db.insert('patient_medications', { patient_id: 3, medication_id: 7 }))).code).toBe('CONFLICT')
    expect(await failure(db.insert('patient_medications', { patient_id: 3 }))).toMatchObject({ code: 'INVALID', column: 'medication_id' })
    expect(await failure(db.insert('patient_medications', { patient_id: 3, medication_id: 8 }))).toMatchObject({ code: 'REFERENCE', column: 'medication_id' })
    expect((await failure(db.get('patient_medications', '3'))).code).toBe('INVALID')
    expect((await db.list('patient_medications', { medication_id: 7 })).rows).toHaveLength(1)
  })

  it('refuses a reference to a missing row with REFERENCE, naming the column', async () => {
    await db.insert('doctors_info', doctor(7))
    let err = await failure(db.insert('appointments', appointment(100, 99, 7)))
    expect(err).toMatchObject({ code: 'REFERENCE', column: 'patient_id' })
    await db.insert('patient_records', patient(1))
    err = await failure(db.insert('appointments', appointment(100, 1, 8)))
    expect(err).toMatchObject({ code: 'REFERENCE', column: 'doctor_id' })
    err = await failure(db.insert('medical_history', history(200, 1, 5)))
    expect(err).toMatchObject({ code: 'REFERENCE', column: 'role_id' })
    await db.insert('medical_history', history(200, 1, null))
    expect(await db.list('appointments', {})).toEqual({ rows: [], next: null })
  })

  it("refuses a lab result whose patient is not the history row's patient", async () => {
    await db.insert('patient_records', patient(1))
    await db.insert('patient_records', patient(2))
    await db.insert('medical_history', history(200, 1))
    const err = await failure(db.insert('lab_results', lab(300, 200, 2)))
    expect(err).toMatchObject({ code: 'REFERENCE', column: 'record_id' })
    await db.insert('lab_results', lab(300, 200, 1))
  })

  it('keeps user_name and role_name unique', async () => {
    await db.insert('user_roles', { role_id: 1, role_name: 'doctor' })
    expect(await failure(db.insert('user_roles', { role_id: 2, role_name: 'doctor' }))).toMatchObject({ code: 'CONFLICT', column: 'role_name' })
    await db.insert('user_roles', { role_id: 2, role_name: 'nurse' })
    await db.insert('users', { user_id: 1, user_name: 'naledi', role_id: 1 })
    expect(await failure(db.insert('users', { user_id: 2, user_name: 'naledi', role_id: 2 }))).toMatchObject({ code: 'CONFLICT', column: 'user_name' })
    await db.insert('users', { user_id: 2, user_name: 'lerato', role_id: 2 })
    // A row may keep its own value; it may not take another row's.
    await db.replace('users', '1', { user_name: 'naledi', role_id: 2 })
    expect(await failure(db.patch('users', '2', { user_name: 'naledi' }))).toMatchObject({ code: 'CONFLICT', column: 'user_name' })
    // A deleted row's value is free again.
    await db.delete('users', '2')
    await db.patch('users', '1', { user_name: 'lerato' })
    await db.insert('users', { user_id: 3, user_name: 'naledi', role_id: 1 })
  })

  it('keeps unique values unique under concurrent writes', async () => {
    await db.insert('user_roles', { role_id: 1, role_name: 'doctor' })
    const outcomes = await Promise.allSettled(Array.from({ length: 10 }, async (_, i) =>
      await db.insert('users', { user_id: 10 + i, user_name: 'same', role_id: 1 })))
    expect(outcomes.filter(o => o.status === 'fulfilled')).toHaveLength(1)
    for (const o of outcomes) if (o.status === 'rejected') expect(o.reason).toMatchObject({ code: 'CONFLICT', column: 'user_name' })
    expect((await db.list('users', { user_name: 'same' })).rows).toHaveLength(1)
    // Nor can one batch give the same value to two rows.
    expect(await failure(db.batch([
      { op: 'insert', table: 'users', row: { user_id: 30, user_name: 'twin', role_id: 1 } },
      { op: 'insert', table: 'users', row: { user_id: 31, user_name: 'twin', role_id: 1 } }
    ]))).toMatchObject({ code: 'CONFLICT', column: 'user_name' })
    expect((await db.list('users', { user_name: 'twin' })).rows).toEqual([])
  })
})

describe('database: read and update', () => {
  it('returns the row, its version and no conflicts', async () => {
    const w = await db.insert('patient_records', patient(1))
    const r = await db.get('patient_records', '1')
    expect(r).toEqual({ row: w.row, version: w.version, conflicts: [] })
    expect((await failure(db.get('patient_records', '2'))).code).toBe('NOT_FOUND')
    expect((await failure(db.get('patient_records', 'abc'))).code).toBe('INVALID')
    expect((await failure(db.get('no_such_table', '1'))).code).toBe('UNKNOWN_TABLE')
  })

  it('reports concurrent heads as conflicts, and a write naming both resolves them', async () => {
    const w = await db.insert('patient_records', patient(1))
    const token = tokenOf('patient_id:1')
    // Two writers that both replaced the first version, as two primaries across a partition would.
    const a = { table: 'patient_records', id: '1', token, version: node.clock.tick(), parents: [w.version], row: { ...w.row!, address: 'A street' } }
    const b = { table: 'patient_records', id: '1', token, version: node.clock.tick(), parents: [w.version], row: { ...w.row!, address: 'B street' } }
    await node.store.apply([a, b])
    const r = await db.get('patient_records', '1')
    expect(r.version).toBe(b.version)
    expect(r.row.address).toBe('B street')
    expect(r.conflicts).toEqual([{ version: a.version, row: a.row }])
    const merged = await db.replace('patient_records', '1', { ...patient(1), address: 'A and B street' }, { ifMatch: [a.version, b.version] })
    const after = await db.get('patient_records', '1')
    expect(after).toEqual({ row: merged.row, version: merged.version, conflicts: [] })
    expect((await db.history('patient_records', '1')).find(v => v.version === merged.version)?.parents.sort()).toEqual([a.version, b.version].sort())
  })

  it('replaces and patches rows, each write a new version', async () => {
    const v1 = await db.insert('patient_records', patient(1))
    const v2 = await db.replace('patient_records', '1', { ...patient(1), address: 'New address', allergies: 'penicillin' })
    expect(v2.version > v1.version).toBe(true)
    expect((await db.get('patient_records', '1')).row).toEqual({ ...patient(1), address: 'New address', allergies: 'penicillin' })
    // A replace sets every column: one left out is null (or refused when NOT NULL).
    await db.replace('patient_records', '1', patient(1))
    expect((await db.get('patient_records', '1')).row.allergies).toBeNull()
    expect(await failure(db.replace('patient_records', '1', { patient_name: 'x' }))).toMatchObject({ code: 'INVALID' })
    const v4 = await db.patch('patient_records', '1', { email: 'new@example.org' })
    expect((await db.get('patient_records', '1')).row).toEqual({ ...patient(1), allergies: null, email: 'new@example.org' })
    expect((await db.history('patient_records', '1')).map(h => h.version)).toEqual([v1.version, v2.version, expect.any(String), v4.version])
    expect(await failure(db.patch('patient_records', '1', { contact_number: '01234567890' }))).toMatchObject({ code: 'INVALID', column: 'contact_number' })
    expect((await failure(db.patch('patient_records', '2', { email: 'x@example.org' }))).code).toBe('NOT_FOUND')
    expect((await failure(db.replace('patient_records', '2', patient(2)))).code).toBe('NOT_FOUND')
  })

  it('refuses a stale If-Match with PRECONDITION_FAILED and changes nothing', async () => {
    await db.insert('patient_records', patient(1))
    const v1 = (await db.get('patient_records', '1')).version
    const v2 = await db.patch('patient_records', '1', { address: 'Second' })
    const stale = { ifMatch: [v1] }
    expect(await failure(db.replace('patient_records', '1', patient(1), stale))).toMatchObject({ code: 'PRECONDITION_FAILED', name: 'PreconditionFailedError' })
    expect(await failure(db.patch('patient_records', '1', { address: 'Third' }, stale))).toMatchObject({ code: 'PRECONDITION_FAILED' })
    expect(await failure(db.delete('patient_records', '1', stale))).toMatchObject({ code: 'PRECONDITION_FAILED' })
    const now = await db.get('patient_records', '1')
    expect(now.version).toBe(v2.version)
    expect(now.row.address).toBe('Second')
    expect(await db.history('patient_records', '1')).toHaveLength(2)
    await db.patch('patient_records', '1', { address: 'Third' }, { ifMatch: [v2.version] })
    expect((await db.get('patient_records', '1')).row.address).toBe('Third')
  })

  it('refuses a stale If-Match on a cascading delete before deleting anything', async () => {
    await chart()
    const v1 = (await db.get('patient_records', '1')).version
    await db.patch('patient_records', '1', { address: 'Second' })
    expect(await failure(db.delete('patient_records', '1', { cascade: true, ifMatch: [v1] }))).toMatchObject({ code: 'PRECONDITION_FAILED' })
    expect((await db.get('appointments', '100')).row.patient_id).toBe(1)
    expect((await db.get('medical_history', '200')).row.patient_id).toBe(1)
    expect((await db.get('lab_results', '300')).row.patient_id).toBe(1)
    expect((await db.get('billing_insurance', '400')).row.patient_id).toBe(1)
  })

  it('refuses to change the key or the shard key', async () => {
    await chart()
    await db.insert('doctors_info', doctor(8))
    expect(await failure(db.patch('appointments', '100', { doctor_id: 8 }))).toMatchObject({ code: 'INVALID', column: 'doctor_id' })
    expect(await failure(db.replace('appointments', '100', appointment(100, 1, 8)))).toMatchObject({ code: 'INVALID', column: 'doctor_id' })
    expect(await failure(db.patch('appointments', '100', { appointment_id: 101 }))).toMatchObject({ code: 'INVALID', column: 'appointment_id' })
    expect(await failure(db.patch('patient_records', '1', { patient_id: 2 }))).toMatchObject({ code: 'INVALID', column: 'patient_id' })
    expect(await failure(db.replace('patient_records', '1', patient(2)))).toMatchObject({ code: 'INVALID', column: 'patient_id' })
    expect(await failure(db.patch('lab_results', '300', { patient_id: 2 }))).toMatchObject({ code: 'INVALID', column: 'patient_id' })
    expect((await db.get('appointments', '100')).row.doctor_id).toBe(7)
    // Other columns of the same rows change freely.
    await db.patch('appointments', '100', { purpose: 'follow-up' })
    expect((await db.get('appointments', '100')).row.purpose).toBe('follow-up')
  })

  it('checks references that a patch changes', async () => {
    await chart()
    expect(await failure(db.patch('medical_history', '200', { role_id: 9 }))).toMatchObject({ code: 'REFERENCE', column: 'role_id' })
    await db.insert('user_roles', { role_id: 9, role_name: 'doctor' })
    await db.patch('medical_history', '200', { role_id: 9 })
    expect((await db.get('medical_history', '200')).row.role_id).toBe(9)
  })
})

describe('database: delete', () => {
  it('refuses to delete a referenced patient', async () => {
    await chart()
    expect(await failure(db.delete('patient_records', '1'))).toMatchObject({ code: 'CONFLICT' })
    expect(await failure(db.delete('medical_history', '200'))).toMatchObject({ code: 'CONFLICT' })
    expect((await db.get('patient_records', '1')).row.patient_id).toBe(1)
    expect((await failure(db.delete('patient_records', '2'))).code).toBe('NOT_FOUND')
  })

  it('deletes the referencing rows with cascade', async () => {
    await chart()
    await db.insert('medical_history', history(201, 1))
    await db.insert('lab_results', lab(301, 201, 1))
    await db.insert('lab_results', lab(302, 201, 1))
    // Another patient's chart is left alone.
    await db.insert('patient_records', patient(2))
    await db.insert('medical_history', history(210, 2))
    await db.insert('lab_results', lab(310, 210, 2))
    await db.insert('appointments', appointment(110, 2, 7))

    const result = await db.delete('patient_records', '1', { cascade: true })
    // appointment 100, history 200 + 201, lab results 300 + 301 + 302, bill 400, patient_medications 1:3
    expect(result.cascaded).toBe(8)
    for (const [table, id] of [['patient_records', '1'], ['appointments', '100'], ['medical_history', '200'], ['medical_history', '201'],
      ['lab_results', '300'], ['lab_results', '301'], ['lab_results', '302'], ['billing_insurance', '400'], ['patient_medications', '1:3']] as const) {
      expect((await failure(db.get(table, id))).code, `${table} ${id}`).toBe('NOT_FOUND')
    }
    for (const [table, id] of [['patient_records', '2'], ['medical_history', '210'], ['lab_results', '310'], ['appointments', '110'], ['doctors_info', '7'], ['medications', '3']] as const) {
      expect((await db.get(table, id)).row, `${table} ${id}`).toBeDefined()
    }
    // Deleted rows keep their history, and their keys can be used again.
    expect((await db.history('patient_records', '1')).at(-1)?.deleted).toBe(true)
    expect((await db.history('appointments', '100')).map(h => h.deleted)).toEqual([false, true])
    await db.insert('patient_records', patient(1))
    await db.insert('appointments', appointment(100, 1, 7))
  })

  it('keeps the history of a deleted row whose shard key is not in its key', async () => {
    await chart()
    await db.patch('appointments', '100', { purpose: 'follow-up' })
    await db.delete('appointments', '100')
    expect((await failure(db.get('appointments', '100'))).code).toBe('NOT_FOUND')
    const versions = await db.history('appointments', '100')
    expect(versions.map(v => [v.row?.purpose ?? null, v.deleted])).toEqual([['checkup', false], ['follow-up', false], [null, true]])
    expect((await failure(db.history('appointments', '999'))).code).toBe('NOT_FOUND')
  })
})

describe('database: rows located by their key', () => {
  it('finds rows whose shard key is not in the key, after insert and after a reopen', async () => {
    await chart()
    await db.insert('user_roles', { role_id: 1, role_name: 'doctor' })
    await db.insert('patient_records', patient(2))
    await db.insert('medical_history', history(210, 2, 1))
    await db.insert('billing_insurance', billing(410, 2))
    await db.insert('appointments', appointment(110, 2, 7))
    await db.insert('lab_results', lab(310, 210, 2))
    const expected: Array<[string, string, Row]> = [
      ['appointments', '100', appointment(100, 1, 7)], ['appointments', '110', appointment(110, 2, 7)],
      ['medical_history', '200', history(200, 1)], ['medical_history', '210', history(210, 2, 1)],
      ['billing_insurance', '400', { ...billing(400, 1), amount: '120.50' }], ['billing_insurance', '410', { ...billing(410, 2), amount: '120.50' }],
      ['lab_results', '300', lab(300, 200, 1)], ['lab_results', '310', lab(310, 210, 2)]
    ]
    for (const [table, id, row] of expected) expect((await db.get(table, id)).row).toEqual(row)
    await node.close()
    node = await openLocalNode(dir.path)
    db = node.db
    for (const [table, id, row] of expected) expect((await db.get(table, id)).row).toEqual(row)
    // The locators are internal: they are stored, but no table lists them.
    expect((await node.store.countRows())._locator).toBe(8)
    expect((await failure(db.list('_locator', {}))).code).toBe('UNKNOWN_TABLE')
  })
})

describe('database: TIMESTAMP values', () => {
  it('are stored in one canonical UTC form, and an equality filter finds a moment however it is written', async () => {
    await chart()
    const a = await db.insert('appointments', { ...appointment(101, 1, 7), appointment_date: '2026-12-02T10:00:00+02:00' })
    expect(a.row?.appointment_date).toBe('2026-12-02T08:00:00.000Z')
    expect((await db.get('appointments', '101')).row.appointment_date).toBe('2026-12-02T08:00:00.000Z')
    for (const same of ['2026-12-02T08:00:00.000Z', '2026-12-02T08:00Z', '2026-12-02T10:00:00+02:00', '2026-12-02 03:00-0500']) {
      const { rows } = await db.list('appointments', { appointment_date: same })
      expect(rows.map(r => r.appointment_id), same).toEqual([101])
    }
    const bare = await failure(db.insert('appointments', { ...appointment(102, 1, 7), appointment_date: '2026-12-02 10:00' }))
    expect(bare).toMatchObject({ code: 'INVALID', column: 'appointment_date' })
    expect((await failure(db.list('appointments', { appointment_date: '2026-12-02T10:00' }))).column).toBe('appointment_date')
  })

  it('a row stored before the canonical form is upgraded when it is next patched, whatever the patch changes', async () => {
    await chart()
    // As an older daemon stored it: the time as typed, no zone.
    await db.insert('appointments', appointment(103, 1, 7))
    const old = { ...appointment(103, 1, 7), appointment_date: '2026-12-02 10:00' }
    await node.coordinator.write([{ op: 'put', table: 'appointments', id: '103', shard: 'doctor_id:7', row: old }])
    expect((await db.get('appointments', '103')).row.appointment_date).toBe('2026-12-02 10:00')
    const patched = await db.patch('appointments', '103', { purpose: 'follow-up' })
    expect(patched.row).toMatchObject({ purpose: 'follow-up', appointment_date: '2026-12-02T10:00:00.000Z' })
    expect((await db.list('appointments', { appointment_date: '2026-12-02T10:00:00Z' })).rows.map(r => r.appointment_id)).toEqual([103])
    // An empty update rewrites such a row, changing nothing else.
    await node.coordinator.write([{ op: 'put', table: 'appointments', id: '103', shard: 'doctor_id:7', row: { ...old, appointment_date: '2026-12-03T09:00+01:00' } }])
    expect((await db.patch('appointments', '103', {})).row).toEqual({ ...old, appointment_date: '2026-12-03T08:00:00.000Z' })
  })
})

describe('database: batch', () => {
  it("applies a patient's writes together", async () => {
    await db.insert('patient_records', patient(1))
    const results = await db.batch([
      { op: 'insert', table: 'medical_history', row: history(200, 1) },
      { op: 'insert', table: 'billing_insurance', row: billing(400, 1) },
      { op: 'patch', table: 'patient_records', id: 1, row: { address: 'Batch street' } }
    ])
    expect(results.map(r => r.table)).toEqual(['medical_history', 'billing_insurance', 'patient_records'])
    expect((await db.get('medical_history', '200')).row.diagnosis).toBe('flu')
    expect((await db.get('billing_insurance', '400')).row.amount).toBe('120.50')
    expect((await db.get('patient_records', '1')).row.address).toBe('Batch street')
    await db.batch([
      { op: 'delete', table: 'billing_insurance', id: '400' },
      { op: 'put', table: 'medical_history', id: '200', row: { ...history(200, 1), treatment: 'fluids' } }
    ])
    expect((await failure(db.get('billing_insurance', '400'))).code).toBe('NOT_FOUND')
    expect((await db.get('medical_history', '200')).row.treatment).toBe('fluids')
  })

  it('writes nothing when one operation is invalid', async () => {
    await db.insert('patient_records', patient(1))
    const err = await failure(db.batch([
      { op: 'insert', table: 'medical_history', row: history(200, 1) },
      { op: 'insert', table: 'billing_insurance', row: { ...billing(400, 1), amount: '1.234' } }
    ]))
    expect(err).toMatchObject({ code: 'INVALID', column: 'amount' })
    expect(err.message).toMatch(/^operations\[1\]/)
    // One that fails only when written (an existing key) writes nothing either.
    await db.insert('billing_insurance', billing(401, 1))
    expect(await failure(db.batch([
      { op: 'insert', table: 'medical_history', row: history(200, 1) },
      { op: 'patch', table: 'patient_records', id: '1', row: { address: 'Changed' } },
      { op: 'insert', table: 'billing_insurance', row: billing(401, 1) }
    ]))).toMatchObject({ code: 'CONFLICT' })
    expect((await failure(db.get('medical_history', '200'))).code).toBe('NOT_FOUND')
    expect((await db.get('patient_records', '1')).row.address).toBe('12 Church Street')
    expect((await db.list('medical_history', {})).rows).toEqual([])
    // The key claimed for history 200 was given back.
    await db.insert('medical_history', history(200, 1))
  })

  it('refuses a batch that spans two patients', async () => {
    await db.insert('patient_records', patient(1))
    await db.insert('patient_records', patient(2))
    const err = await failure(db.batch([
      { op: 'insert', table: 'medical_history', row: history(200, 1) },
      { op: 'insert', table: 'medical_history', row: history(201, 2) }
    ]))
    expect(err.code).toBe('INVALID')
    expect((await db.list('medical_history', {})).rows).toEqual([])
    await db.insert('medical_history', history(201, 2))
    expect((await failure(db.batch([]))).code).toBe('INVALID')
    expect((await failure(db.batch([{ op: 'drop' as 'insert', table: 'patient_records' }]))).code).toBe('INVALID')
  })

  it("takes a new patient and their first visit in one batch: later operations see the rows earlier ones write", async () => {
    const results = await db.batch([
      { op: 'insert', table: 'patient_records', row: patient(777) },
      { op: 'insert', table: 'medical_history', row: history(201, 777) },
      { op: 'insert', table: 'lab_results', row: lab(301, 201, 777) }
    ])
    expect(results.map(r => `${r.table} ${r.id}`)).toEqual(['patient_records 777', 'medical_history 201', 'lab_results 301'])
    expect((await db.get('lab_results', '301')).row.record_id).toBe(201)

    // All or nothing still: a bad last operation leaves no patient behind.
    const err = await failure(db.batch([
      { op: 'insert', table: 'patient_records', row: patient(778) },
      { op: 'insert', table: 'medical_history', row: history(202, 778) },
      { op: 'insert', table: 'billing_insurance', row: { ...billing(402, 778), amount: 'lots' } }
    ]))
    expect(err).toMatchObject({ code: 'INVALID', column: 'amount' })
    expect((await failure(db.get('patient_records', '778'))).code).toBe('NOT_FOUND')
    expect((await failure(db.get('medical_history', '202'))).code).toBe('NOT_FOUND')

    // A row the batch deletes earlier is not there for a later one; a row is written once per batch.
    await db.insert('patient_records', patient(779))
    expect(await failure(db.batch([
      { op: 'delete', table: 'patient_records', id: 779 },
      { op: 'insert', table: 'medical_history', row: history(203, 779) }
    ]))).toMatchObject({ code: 'REFERENCE', column: 'patient_id' })
    const twice = await failure(db.batch([
      { op: 'insert', table: 'patient_records', row: patient(780) },
      { op: 'patch', table: 'patient_records', id: 780, row: { address: 'Later' } }
    ]))
    expect(twice.code).toBe('INVALID')
    expect(twice.message).toMatch(/operations\[1\].*already written by operations\[0\]/)
    expect((await failure(db.get('patient_records', '780'))).code).toBe('NOT_FOUND')
  })

  it('refuses a stale If-Match in a batch', async () => {
    const w = await db.insert('patient_records', patient(1))
    await db.patch('patient_records', '1', { address: 'Second' })
    expect(await failure(db.batch([{ op: 'patch', table: 'patient_records', id: '1', row: { address: 'Third' }, ifMatch: w.version }])))
      .toMatchObject({ code: 'PRECONDITION_FAILED' })
    expect((await db.get('patient_records', '1')).row.address).toBe('Second')
  })
})

describe('database: list and import', () => {
  it('lists with equality filters and pages with limit and cursor', async () => {
    await db.insert('doctors_info', doctor(7))
    await db.insert('doctors_info', doctor(8))
    for (let p = 1; p <= 3; p++) await db.insert('patient_records', patient(p))
    for (let i = 0; i < 30; i++) await db.insert('appointments', appointment(1000 + i, 1 + (i % 3), i < 20 ? 7 : 8))
    const byDoctor = await db.list('appointments', { doctor_id: '7' })
    expect(byDoctor.rows).toHaveLength(20)
    expect(byDoctor.next).toBeNull()
    expect(byDoctor.rows.every(r => r.doctor_id === 7)).toBe(true)
    const both = await db.list('appointments', { doctor_id: 7, patient_id: '2' })
    expect(both.rows.map(r => r.appointment_id).sort()).toEqual([1001, 1004, 1007, 1010, 1013, 1016, 1019])
    expect((await db.list('appointments', { purpose: 'none' })).rows).toEqual([])

    const seen: number[] = []
    let cursor: string | undefined
    let pages = 0
    do {
      const page = await db.list('appointments', {}, { limit: 7, ...(cursor === undefined ? {} : { cursor }) })
      seen.push(...page.rows.map(r => r.appointment_id as number))
      cursor = page.next ?? undefined
      pages++
    } while (cursor !== undefined && pages < 20)
    expect(pages).toBe(5)
    expect(seen.sort()).toEqual(Array.from({ length: 30 }, (_, i) => 1000 + i))

    expect(await failure(db.list('appointments', {}, { limit: 0 }))).toMatchObject({ code: 'INVALID' })
    expect(await failure(db.list('appointments', {}, { limit: 1001 }))).toMatchObject({ code: 'INVALID' })
    expect(await failure(db.list('appointments', { nope: '1' }))).toMatchObject({ code: 'INVALID', column: 'nope' })
    expect(await failure(db.list('appointments', { doctor_id: 'seven' }))).toMatchObject({ code: 'INVALID', column: 'doctor_id' })
    expect(await failure(db.list('appointments', {}, { cursor: 'not-a-cursor' }))).toMatchObject({ code: 'INVALID' })
  })

  it('imports rows and reports each rejected line with its reason', async () => {
    await db.insert('patient_records', patient(1))
    const result = await db.importRows('billing_insurance', [
      { line: 1, value: billing(400, 1) },
      { line: 2, value: { ...billing(401, 1), amount: '12.345' } },
      { line: 3, value: billing(402, 99) },
      { line: 4, value: billing(400, 1) },
      { line: 5, value: 'not an object' },
      { line: 6, value: { ...billing(403, 1), extra: 1 } },
      { line: 7, value: billing(404, 1) }
    ])
    expect(result.accepted).toBe(2)
    expect(result.rejected.map(r => [r.line, r.error.code, r.error.column])).toEqual([
      [2, 'INVALID', 'amount'], [3, 'REFERENCE', 'patient_id'], [4, 'CONFLICT', undefined], [5, 'INVALID', undefined], [6, 'INVALID', 'extra']
    ])
    expect((await db.list('billing_insurance', {})).rows.map(r => r.billing_id).sort()).toEqual([400, 404])
    expect((await failure(db.importRows('nope', []))).code).toBe('UNKNOWN_TABLE')
  })

  it('rejects duplicate unique values within one import', async () => {
    await db.insert('user_roles', { role_id: 1, role_name: 'doctor' })
    const result = await db.importRows('users', [
      { line: 1, value: { user_id: 1, user_name: 'thabo', role_id: 1 } },
      { line: 2, value: { user_id: 2, user_name: 'thabo', role_id: 1 } },
      { line: 3, value: { user_id: 3, user_name: 'palesa', role_id: 1 } }
    ])
    expect(result.accepted).toBe(2)
    expect(result.rejected).toHaveLength(1)
    expect(result.rejected[0]?.error).toMatchObject({ code: 'CONFLICT', column: 'user_name' })
  })
})

import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { findTable, type TableDef } from '../../src/schema/index.js'
import { runSql, type SqlAccess } from '../../src/query/sql.js'
import { openLocalNode, patientRow, tempDir, type LocalNode, type TempDir } from '../helpers/temp.js'

const everything: SqlAccess = {
  readable: (t: TableDef) => t.columns.map(c => c.name),
  writable: () => {}
}

describe('SQL over one node', () => {
  let dir: TempDir
  let node: LocalNode
  beforeAll(async () => {
    dir = await tempDir()
    node = await openLocalNode(dir.path)
    for (const id of [1, 2]) await node.db.insert('doctors_info', { doctor_id: id, name: `Dr ${id}`, specialization: 'GP', contact_number: '0711111111', email: 'd@example.org', availability: 'weekdays' })
    for (const id of [5, 3, 9]) await node.db.insert('patient_records', patientRow(id, { patient_name: `P${id}` }))
    const visits: Array<[number, number, number, string]> = [[10, 3, 1, '2026-01-05T09:00:00.000Z'], [11, 5, 1, '2026-01-06T10:00:00.000Z'], [12, 9, 2, '2026-01-06T08:00:00.000Z'], [13, 3, 1, '2026-01-06T07:00:00.000Z']]
    for (const [id, p, d, at] of visits) await node.db.insert('appointments', { appointment_id: id, patient_id: p, doctor_id: d, appointment_date: at, purpose: 'visit' })
  })
  afterAll(async () => {
    await node.close()
    await dir.remove()
  })
  const sql = async (text: string, params: unknown[] = [], access = everything) => await runSql(node.db, text, params, access)

  it('selects in key order, filters with bound parameters, orders and pages', async () => {
    expect((await sql('SELECT patient_id FROM patient_records')).rows).toEqual([[3], [5], [9]])
    const day = await sql('SELECT appointment_id, appointment_date FROM appointments WHERE doctor_id = $1 AND appointment_date >= $2 AND appointment_date < $3 ORDER BY appointment_date', ['1', '2026-01-06', '2026-01-07'])
    expect(day.columns).toEqual(['appointment_id', 'appointment_date'])
    expect(day.rows.map(r => r[0])).toEqual([13, 11])
    expect((await sql("SELECT patient_id FROM patient_records WHERE patient_name LIKE 'P%' AND NOT patient_id IN (3, 9) OR patient_id BETWEEN 8 AND 9 ORDER BY patient_id DESC")).rows).toEqual([[9], [5]])
    expect((await sql('SELECT patient_id FROM patient_records WHERE allergies IS NULL ORDER BY patient_id LIMIT 1 OFFSET 1')).rows).toEqual([[5]])
    // A parameter is a value, never SQL
    expect((await sql('SELECT patient_id FROM patient_records WHERE patient_name = $1', ["P3' OR '1'='1"])).rows).toEqual([])
  })

  it('joins on the shared key and aggregates with GROUP BY and HAVING', async () => {
    const joined = await sql('SELECT a.appointment_id, d.name FROM appointments a JOIN doctors_info d ON a.doctor_id = d.doctor_id WHERE a.patient_id = 3 ORDER BY a.appointment_id')
    expect(joined.rows).toEqual([[10, 'Dr 1'], [13, 'Dr 1']])
    const perDoctor = await sql('SELECT doctor_id, COUNT(*) AS visits, MIN(appointment_date) FROM appointments GROUP BY doctor_id HAVING COUNT(*) >= 1 ORDER BY visits DESC')
    expect(perDoctor.rows).toEqual([[1, 3, '2026-01-05T09:00:00.000Z'], [2, 1, '2026-01-06T08:00:00.000Z']])
    expect((await sql('SELECT COUNT(*) FROM appointments WHERE doctor_id = 2')).rows).toEqual([[1]])
  })

  it('writes by key through the write path, with SET consistency', async () => {
    const made = await sql("SET consistency = 'one'; INSERT INTO patient_records (patient_id, patient_name, date_of_birth, gender, address, contact_number, email) VALUES ($1, $2, '1990-01-01', 'male', 'x', '0700000000', 'e@x.org')", ['20', 'New'])
    expect(made.rows[0]?.[0]).toBe('20')
    await sql('UPDATE patient_records SET patient_name = $1 WHERE patient_id = $2', ['Renamed', 20])
    expect((await node.db.get('patient_records', '20')).row.patient_name).toBe('Renamed')
    await sql('DELETE FROM patient_records WHERE patient_id = 20')
    await expect(node.db.get('patient_records', '20')).rejects.toThrow(/not found/)
  })

  it('explains which owners and index a SELECT uses', async () => {
    const one = await sql('EXPLAIN SELECT * FROM appointments WHERE doctor_id = 1 ORDER BY appointment_date')
    expect(JSON.stringify(one.rows)).toMatch(/single-patient: one replica set/)
    expect(JSON.stringify(one.rows)).toMatch(/ordered index \(doctor_id, appointment_date\)/)
    const all = await sql('EXPLAIN SELECT * FROM lab_results WHERE test_date >= $1', ['2026-01-01'])
    expect(JSON.stringify(all.rows)).toMatch(/scatter-gather/)
  })

  it('refuses what is outside the subset, naming it, and applies read rights', async () => {
    const refused: Array<[string, RegExp]> = [
      ['SELECT DISTINCT patient_id FROM patient_records', /DISTINCT/],
      ["SELECT * FROM patient_records WHERE patient_name LIKE '%x'", /LIKE/],
      ['SELECT * FROM appointments a JOIN patient_records p ON a.patient_id = p.patient_id', /same owners/],
      ['SELECT * FROM patient_records WHERE patient_id = (SELECT 1)', /select|subquery|WHERE/i],
      ['DELETE FROM patient_records WHERE patient_name = 1', /UPDATE or DELETE/],
      ['DROP TABLE patient_records', /DROP|parse/],
      ['EXPLAIN DELETE FROM patient_records WHERE patient_id = 1', /EXPLAIN DELETE/],
      ['SELECT nope FROM patient_records', /unknown column/]
    ]
    for (const [text, message] of refused) {
      await expect(sql(text), text).rejects.toMatchObject({ code: 'INVALID', message: expect.stringMatching(message) })
    }
    const noAddress: SqlAccess = { ...everything, readable: t => t.columns.map(c => c.name).filter(c => c !== 'address') }
    expect((await sql('SELECT * FROM patient_records LIMIT 1', [], noAddress)).columns).not.toContain('address')
    await expect(sql('SELECT address FROM patient_records', [], noAddress)).rejects.toMatchObject({ code: 'FORBIDDEN' })
    // Break-glass opens one patient's rows: the WHERE must name the patient
    const glass: SqlAccess = { ...everything, widened: () => true }
    await expect(sql('SELECT * FROM appointments WHERE doctor_id = 1', [], glass)).rejects.toMatchObject({ code: 'FORBIDDEN', message: expect.stringMatching(/X-Break-Glass/) })
    expect((await sql('SELECT appointment_id FROM appointments WHERE patient_id = 3 ORDER BY appointment_id', [], glass)).rows).toEqual([[10], [13]])
    expect(findTable('patient_records')).toBeDefined()
  })
})

import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ForbiddenError } from '../../src/errors/index.js'
import type { Row, TableDef, Value } from '../../src/schema/index.js'
import { runSql, SQL_PAGE, type SqlAccess, type SqlAnswer } from '../../src/query/sql.js'
import { openLocalNode, patientRow, tempDir, type LocalNode, type TempDir } from '../helpers/temp.js'

// Every construct of issue 11's SQL subset, checked against the same rows evaluated in memory.

const everything: SqlAccess = { readable: (t: TableDef) => t.columns.map(c => c.name), writable: () => {} }

const PATIENTS = 40
const DOCTORS = 6
const APPOINTMENTS = 1200
const PURPOSES = ['checkup', 'follow-up', 'vaccination', 'consult']

const patients: Row[] = Array.from({ length: PATIENTS }, (_, i) => patientRow(i + 1, {
  patient_name: `P${String(i + 1).padStart(2, '0')}`,
  gender: i % 2 === 0 ? 'female' : 'male',
  allergies: (i + 1) % 3 === 0 ? null : ['nuts', 'dust', 'pollen'][(i + 1) % 3] as string
}))
const doctors: Row[] = Array.from({ length: DOCTORS }, (_, i) => ({ doctor_id: i + 1, name: `Dr ${i + 1}`, specialization: i % 2 === 0 ? 'GP' : 'Cardiology', contact_number: '0711111111', email: 'd@example.org', availability: 'weekdays' }))
const appointments: Row[] = Array.from({ length: APPOINTMENTS }, (_, n) => {
  const i = n + 1
  return { appointment_id: i, patient_id: (i % PATIENTS) + 1, doctor_id: (i % DOCTORS) + 1, appointment_date: new Date(Date.UTC(2026, 0, 1 + ((i * 7) % 90), 8 + (i % 10))).toISOString(), purpose: PURPOSES[i % 4] as string }
})
const roles: Row[] = [{ role_id: 901, role_name: 'sql-test-nurse' }, { role_id: 902, role_name: 'sql-test-doctor' }]
const history: Row[] = patients.flatMap(p => [0, 1].map(k => ({
  history_id: (p.patient_id as number) * 10 + k, patient_id: p.patient_id as number, diagnosis: `d${k}`, treatment: 't', date_of_visit: new Date(Date.UTC(2026, 1, 1 + k * 10 + ((p.patient_id as number) % 5))).toISOString(), role_id: k === 0 ? 901 + ((p.patient_id as number) % 2) : null
})))
const labs: Row[] = history.flatMap(h => Array.from({ length: (h.history_id as number) % 3 }, (_, j) => ({
  result_id: (h.history_id as number) * 10 + j, record_id: h.history_id as number, patient_id: h.patient_id as number, test_name: j === 0 ? 'blood' : 'urine', test_date: `2026-02-${String(10 + j).padStart(2, '0')}`, test_result: 'ok'
})))

/** Compares values as SQL orders them: numbers as numbers, text as text, NULLs last */
function cmp (a: Value | undefined, b: Value | undefined): number {
  const x = a ?? null
  const y = b ?? null
  if (x === null || y === null) return x === y ? 0 : x === null ? 1 : -1
  if (typeof x === 'number' && typeof y === 'number') return x - y
  return String(x) < String(y) ? -1 : String(x) > String(y) ? 1 : 0
}

/** Sorts rows by keys ([column, desc]), NULLs last ascending and first descending */
function sorted (rows: Row[], keys: Array<[string, boolean]>): Row[] {
  return [...rows].sort((a, b) => {
    for (const [k, desc] of keys) {
      const c = cmp(a[k], b[k])
      if (c !== 0) return desc ? -c : c
    }
    return 0
  })
}

describe('the SQL subset on one node, against an evaluation in memory', () => {
  let dir: TempDir
  let node: LocalNode
  beforeAll(async () => {
    dir = await tempDir()
    node = await openLocalNode(dir.path)
    for (const r of roles) await node.db.insert('user_roles', r)
    for (const d of doctors) await node.db.insert('doctors_info', d)
    for (const p of patients) await node.db.insert('patient_records', p)
    for (const a of appointments) await node.db.insert('appointments', a)
    for (const h of history) await node.db.insert('medical_history', h)
    for (const l of labs) await node.db.insert('lab_results', l)
  }, 120_000)
  afterAll(async () => {
    await node.close()
    await dir.remove()
  })
  const sql = async (text: string, params: unknown[] = [], access = everything, cursor?: string): Promise<SqlAnswer> => await runSql(node.db, text, params, access, {}, cursor)
  /** Every page of an answer, following `next`, and how many pages it took */
  const all = async (text: string, params: unknown[] = []): Promise<{ rows: Value[][], pages: number, columns: string[] }> => {
    let answer = await sql(text, params)
    const rows = [...answer.rows]
    let pages = 1
    while (answer.next !== null) {
      expect(answer.rows.length).toBeLessThanOrEqual(SQL_PAGE)
      answer = await sql(text, params, everything, answer.next)
      rows.push(...answer.rows)
      pages++
      expect(pages).toBeLessThan(20)
    }
    return { rows, pages, columns: answer.columns }
  }
  const ids = (rows: Row[], key: string): Value[][] => rows.map(r => [r[key] ?? null])

  it('filters with each WHERE operator, as SQL evaluates them (NULL never matches a comparison)', async () => {
    const cases: Array<[string, unknown[], (r: Row) => boolean]> = [
      ['patient_id = $1', [7], r => r.patient_id === 7],
      ['patient_id <> $1', [7], r => r.patient_id !== 7],
      ['patient_id != 7', [], r => r.patient_id !== 7],
      ['patient_id < 5', [], r => (r.patient_id as number) < 5],
      ['patient_id <= 5', [], r => (r.patient_id as number) <= 5],
      ['patient_id > 35', [], r => (r.patient_id as number) > 35],
      ['patient_id >= 35', [], r => (r.patient_id as number) >= 35],
      ['5 > patient_id', [], r => (r.patient_id as number) < 5],
      ['patient_id BETWEEN $1 AND $2', [10, 14], r => (r.patient_id as number) >= 10 && (r.patient_id as number) <= 14],
      ['patient_id NOT BETWEEN 2 AND 39', [], r => (r.patient_id as number) < 2 || (r.patient_id as number) > 39],
      ['patient_id IN (3, $1, 40)', [17], r => [3, 17, 40].includes(r.patient_id as number)],
      ['patient_id NOT IN (1, 2, 3)', [], r => ![1, 2, 3].includes(r.patient_id as number)],
      ["patient_name LIKE 'P1%'", [], r => String(r.patient_name).startsWith('P1')],
      ['patient_name NOT LIKE $1', ['P2%'], r => !String(r.patient_name).startsWith('P2')],
      ['allergies IS NULL', [], r => r.allergies === null],
      ['allergies IS NOT NULL', [], r => r.allergies !== null],
      ["allergies <> 'nuts'", [], r => r.allergies !== null && r.allergies !== 'nuts'],
      ["NOT allergies = 'nuts'", [], r => r.allergies !== null && r.allergies !== 'nuts'],
      ["gender = 'male' AND (patient_id < 10 OR patient_id > 30) AND NOT (allergies IS NULL)", [], r => r.gender === 'male' && ((r.patient_id as number) < 10 || (r.patient_id as number) > 30) && r.allergies !== null],
      ["date_of_birth >= '1980-01-01' AND patient_id IN (1, 2)", [], r => [1, 2].includes(r.patient_id as number)]
    ]
    for (const [where, params, holds] of cases) {
      const got = await sql(`SELECT patient_id FROM patient_records WHERE ${where}`, params)
      expect(got.rows, where).toEqual(ids(patients.filter(holds), 'patient_id'))
      expect(got.next, where).toBeNull()
    }
    // A long OR chain (the parser nests it one deeper per operand) within the bound is answered
    const some = Array.from({ length: 900 }, (_, i) => i * 7)
    expect((await sql(`SELECT patient_id FROM patient_records WHERE ${some.map(v => `patient_id = ${v}`).join(' OR ')}`)).rows).toEqual(ids(patients.filter(p => some.includes(p.patient_id as number)), 'patient_id'))
    // A timestamp range with bound parameters, on a doctor's appointments
    const day = await sql('SELECT appointment_id FROM appointments WHERE doctor_id = $1 AND appointment_date >= $2 AND appointment_date < $3 ORDER BY appointment_date, appointment_id', [2, '2026-01-08', '2026-01-15'])
    const want = sorted(appointments.filter(a => a.doctor_id === 2 && String(a.appointment_date) >= '2026-01-08' && String(a.appointment_date) < '2026-01-15'), [['appointment_date', false], ['appointment_id', false]])
    expect(want.length).toBeGreaterThan(3)
    expect(day.rows).toEqual(ids(want, 'appointment_id'))
  })

  it('orders by any columns ASC/DESC, with LIMIT and OFFSET (OFFSET alone too), on one table and on the owners', async () => {
    const keys: Array<[string, boolean]> = [['doctor_id', false], ['appointment_date', true], ['appointment_id', false]]
    const want = sorted(appointments, keys)
    const got = await sql('SELECT appointment_id, doctor_id FROM appointments ORDER BY doctor_id, appointment_date DESC, appointment_id ASC LIMIT 25 OFFSET 10')
    expect(got.rows).toEqual(want.slice(10, 35).map(r => [r.appointment_id, r.doctor_id]))
    expect(got.next).toBeNull()
    expect((await sql('SELECT appointment_id FROM appointments ORDER BY appointment_id DESC LIMIT 3')).rows).toEqual([[1200], [1199], [1198]])
    expect((await sql('SELECT appointment_id FROM appointments WHERE doctor_id = 3 ORDER BY appointment_id OFFSET 195')).rows).toEqual(ids(appointments.filter(a => a.doctor_id === 3).slice(195), 'appointment_id'))
    expect((await sql('SELECT appointment_id FROM appointments ORDER BY 1 DESC OFFSET 2 LIMIT 2')).rows).toEqual([[1198], [1197]])
    expect((await sql('SELECT appointment_id FROM appointments LIMIT ALL OFFSET 1198')).rows).toEqual([[1199], [1200]])
    // NULLs last ascending, first descending (PostgreSQL's default, which may be spelled out)
    const byAllergy = await sql('SELECT patient_id, allergies FROM patient_records ORDER BY allergies DESC NULLS FIRST, patient_id')
    expect(byAllergy.rows).toEqual(sorted(patients, [['allergies', true], ['patient_id', false]]).map(r => [r.patient_id, r.allergies]))
    // One nullable column: NULLs still last ascending, first descending; ties in key order
    expect((await sql('SELECT patient_id FROM patient_records ORDER BY allergies')).rows).toEqual(ids(sorted(patients, [['allergies', false], ['patient_id', false]]), 'patient_id'))
    expect((await sql('SELECT patient_id FROM patient_records ORDER BY allergies DESC LIMIT 20')).rows).toEqual(ids(sorted(patients, [['allergies', true], ['patient_id', false]]).slice(0, 20), 'patient_id'))
    expect((await sql('SELECT history_id FROM medical_history ORDER BY role_id DESC, history_id LIMIT 3')).rows).toEqual(ids(sorted(history, [['role_id', true], ['history_id', false]]).slice(0, 3), 'history_id'))
    const nullsLast = await sql('SELECT patient_id FROM patient_records ORDER BY allergies NULLS LAST, patient_id LIMIT 40')
    expect(nullsLast.rows).toEqual(ids(sorted(patients, [['allergies', false], ['patient_id', false]]), 'patient_id'))
    // Without ORDER BY, rows come in primary-key order: "the first five rows" are the lowest keys
    expect((await sql('SELECT appointment_id FROM appointments LIMIT 5')).rows).toEqual([[1], [2], [3], [4], [5]])
    expect((await sql('SELECT a.appointment_id FROM appointments a JOIN doctors_info d ON a.doctor_id = d.doctor_id LIMIT 5')).rows).toEqual([[1], [2], [3], [4], [5]])
  })

  it('pages every answer shape with next: a table, an order, LIMIT/OFFSET over several pages, a join and many groups', async () => {
    const plain = await all('SELECT appointment_id FROM appointments')
    expect(plain.pages).toBe(2)
    expect(plain.rows).toEqual(ids(appointments, 'appointment_id'))

    const ordered = await all('SELECT appointment_id FROM appointments ORDER BY purpose DESC, appointment_id')
    expect(ordered.pages).toBe(2)
    expect(ordered.rows).toEqual(ids(sorted(appointments, [['purpose', true], ['appointment_id', false]]), 'appointment_id'))

    const oneColumn = await all('SELECT appointment_id FROM appointments ORDER BY appointment_date DESC LIMIT 1100 OFFSET 50')
    expect(oneColumn.pages).toBe(2)
    expect(oneColumn.rows.map(r => r[0])).toHaveLength(1100)
    const byDate = sorted(appointments, [['appointment_date', true]]).slice(50, 1150)
    // Ties on the date keep no particular order: the dates agree row by row, and no row comes twice
    const dateOf = new Map(appointments.map(a => [a.appointment_id, a.appointment_date]))
    expect(oneColumn.rows.map(r => dateOf.get(r[0] as number))).toEqual(byDate.map(r => r.appointment_date))
    expect(new Set(oneColumn.rows.map(r => r[0])).size).toBe(1100)

    const sliced = await all('SELECT appointment_id, patient_id FROM appointments ORDER BY patient_id, appointment_id LIMIT 1050 OFFSET 100')
    expect(sliced.pages).toBe(2)
    expect(sliced.rows).toEqual(sorted(appointments, [['patient_id', false], ['appointment_id', false]]).slice(100, 1150).map(r => [r.appointment_id, r.patient_id]))

    const joined = await all('SELECT a.appointment_id, d.name FROM appointments a JOIN doctors_info d ON d.doctor_id = a.doctor_id WHERE a.purpose <> $1', ['consult'])
    const wantJoined = appointments.filter(a => a.purpose !== 'consult').map(a => [a.appointment_id, `Dr ${String(a.doctor_id)}`])
    expect(wantJoined.length).toBeGreaterThan(SQL_PAGE / 2)
    expect(joined.rows).toEqual(wantJoined)

    const groups = await all('SELECT appointment_id, COUNT(*) FROM appointments GROUP BY appointment_id')
    expect(groups.pages).toBe(2)
    expect(groups.rows).toEqual(appointments.map(a => [a.appointment_id, 1]))

    // Exactly a page's rows: no next (no empty page after it)
    const exact = await sql('SELECT appointment_id FROM appointments WHERE appointment_id <= $1', [SQL_PAGE])
    expect(exact.rows).toHaveLength(SQL_PAGE)
    expect(exact.next).toBeNull()
    expect((await sql('SELECT appointment_id FROM appointments WHERE appointment_id > $1 ORDER BY patient_id, appointment_id', [APPOINTMENTS - SQL_PAGE])).next).toBeNull()
    // A LIMIT within one page has no next; a cursor of another statement or other parameters is 400
    expect((await sql('SELECT appointment_id FROM appointments LIMIT 1000')).next).toBeNull()
    const first = await sql('SELECT appointment_id FROM appointments WHERE doctor_id <> $1', [9])
    expect(first.next).not.toBeNull()
    await expect(sql('SELECT appointment_id FROM appointments WHERE doctor_id <> $1', [8], everything, first.next as string)).rejects.toMatchObject({ code: 'INVALID', message: expect.stringMatching(/another statement/) })
    await expect(sql('SELECT patient_id FROM patient_records', [], everything, first.next as string)).rejects.toMatchObject({ code: 'INVALID' })
    await expect(sql('SELECT patient_id FROM patient_records', [], everything, 'garbage')).rejects.toMatchObject({ code: 'INVALID', message: expect.stringMatching(/invalid cursor/) })
  })

  it('a page after the first continues after the last row given, though rows before it were written or deleted in between (no row twice, none skipped)', async () => {
    const extra = { appointment_id: 7001, patient_id: 1, doctor_id: 1, appointment_date: '2026-01-01T07:00:00.000Z', purpose: 'zzz' }
    const shapes: Array<[string, (a: Row) => Value[]]> = [
      ['SELECT appointment_id FROM appointments ORDER BY purpose DESC, appointment_id', a => [a.appointment_id as number]],
      ['SELECT a.appointment_id, d.name FROM appointments a JOIN doctors_info d ON d.doctor_id = a.doctor_id ORDER BY a.purpose DESC, a.appointment_id', a => [a.appointment_id as number, `Dr ${String(a.doctor_id)}`]],
      ['SELECT appointment_id, COUNT(*) FROM appointments GROUP BY appointment_id ORDER BY MAX(purpose) DESC, appointment_id', a => [a.appointment_id as number, 1]]
    ]
    const want = sorted(appointments, [['purpose', true], ['appointment_id', false]])
    for (const [text, shape] of shapes) {
      // A row that sorts first is written between the pages: the second page goes on from where the first stopped.
      const first = await sql(text)
      expect(first.rows, text).toEqual(want.slice(0, SQL_PAGE).map(shape))
      await node.db.insert('appointments', extra)
      try {
        const second = await sql(text, [], everything, first.next as string)
        expect(second.rows, text).toEqual(want.slice(SQL_PAGE).map(shape))
        expect(second.next, text).toBeNull()
      } finally {
        await node.db.delete('appointments', '7001')
      }
      // A row of the first page deleted in between: the second page still starts with the row after the first's last.
      const again = await sql(text)
      const gone = want[3] as Row
      await node.db.delete('appointments', String(gone.appointment_id))
      try {
        const second = await sql(text, [], everything, again.next as string)
        expect(second.rows, text).toEqual(want.slice(SQL_PAGE).map(shape))
      } finally {
        await node.db.insert('appointments', gone)
      }
    }
  })

  it('aggregates on the owners, merged, with GROUP BY and HAVING of AND/OR/NOT', async () => {
    const byDoctor = new Map<number, Row[]>()
    for (const a of appointments) byDoctor.set(a.doctor_id as number, [...byDoctor.get(a.doctor_id as number) ?? [], a])
    const stats = [...byDoctor].map(([d, rows]) => {
      const sum = rows.reduce((s, r) => s + (r.patient_id as number), 0)
      const dates = rows.map(r => String(r.appointment_date)).sort()
      return { d, n: rows.length, sum, avg: sum / rows.length, min: dates[0], max: dates[dates.length - 1] }
    }).sort((a, b) => a.d - b.d)
    const got = await sql('SELECT doctor_id, COUNT(*), COUNT(patient_id) AS with_patient, SUM(patient_id), AVG(patient_id), MIN(appointment_date), MAX(appointment_date) FROM appointments GROUP BY doctor_id ORDER BY doctor_id')
    expect(got.columns).toEqual(['doctor_id', 'count', 'with_patient', 'sum', 'avg', 'min', 'max'])
    expect(got.rows).toHaveLength(DOCTORS)
    for (const [i, s] of stats.entries()) {
      const row = got.rows[i] as Value[]
      expect(row.slice(0, 4)).toEqual([s.d, s.n, s.n, s.sum])
      expect(row[4]).toBeCloseTo(s.avg, 9)
      expect(row.slice(5)).toEqual([s.min, s.max])
    }
    // HAVING: AND, OR, NOT over aggregates (named or not in the output) and group columns, with parameters
    const having = await sql('SELECT doctor_id, COUNT(*) AS visits FROM appointments WHERE purpose IN ($1, $2) GROUP BY doctor_id HAVING COUNT(*) >= $3 AND (AVG(patient_id) < 21 OR NOT MAX(patient_id) <> 40) AND doctor_id <> 4 ORDER BY MIN(appointment_date) DESC, doctor_id', ['checkup', 'consult', 1])
    const want = [...byDoctor].map(([d, rows]) => {
      const some = rows.filter(r => ['checkup', 'consult'].includes(r.purpose as string))
      const ps = some.map(r => r.patient_id as number)
      return { d, n: some.length, avg: ps.reduce((a, b) => a + b, 0) / Math.max(ps.length, 1), max: Math.max(...ps), first: some.map(r => String(r.appointment_date)).sort()[0] as string }
    }).filter(g => g.n >= 1 && (g.avg < 21 || g.max === 40) && g.d !== 4)
      .sort((a, b) => a.first < b.first ? 1 : a.first > b.first ? -1 : a.d - b.d)
    expect(want.length).toBeGreaterThan(0)
    expect(having.rows).toEqual(want.map(g => [g.d, g.n]))
    // An output alias, BETWEEN, IN and IS NULL in HAVING
    expect((await sql('SELECT doctor_id, COUNT(*) AS visits FROM appointments GROUP BY doctor_id HAVING visits BETWEEN 200 AND 200 AND doctor_id IN (1, 2) AND MAX(purpose) IS NOT NULL AND 150 < COUNT(*)')).rows).toEqual([[1, 200], [2, 200]])
    await expect(sql('SELECT doctor_id FROM appointments GROUP BY doctor_id HAVING 1 = 1')).rejects.toMatchObject({ code: 'INVALID', message: expect.stringMatching(/HAVING condition whose left side/) })
    // No GROUP BY: one group, even of no rows; SUM and AVG of nothing are NULL
    expect((await sql('SELECT COUNT(*), SUM(patient_id), AVG(patient_id), MIN(patient_id) FROM appointments WHERE doctor_id = 99')).rows).toEqual([[0, null, null, null]])
    expect((await sql('SELECT COUNT(*) FROM appointments HAVING COUNT(*) > 5000')).rows).toEqual([])
    // COUNT(col) skips NULLs; GROUP BY an ordinal; grouping on a NULL gives its own group
    const allergyGroups = await sql('SELECT allergies, COUNT(*), COUNT(allergies) FROM patient_records GROUP BY 1')
    const count = (v: Value): number => patients.filter(p => p.allergies === v).length
    expect(allergyGroups.rows).toEqual([['dust', count('dust'), count('dust')], ['pollen', count('pollen'), count('pollen')], [null, count(null), 0]])
  })

  it('joins three tables on the patient key (a chart), and to a global table', async () => {
    const chart = (p: number): Value[][] => history.filter(h => h.patient_id === p).flatMap(h => labs.filter(l => l.patient_id === p).map(l => [`P${String(p).padStart(2, '0')}`, h.history_id, l.result_id] as Value[]))
      .sort((a, b) => cmp(a[1], b[1]) || cmp(a[2], b[2]))
    const text = 'SELECT p.patient_name, h.history_id, l.result_id FROM patient_records p JOIN medical_history h ON h.patient_id = p.patient_id JOIN lab_results l ON l.patient_id = p.patient_id WHERE p.patient_id = $1 ORDER BY h.history_id, l.result_id'
    for (const p of [1, 5, 8]) expect((await sql(text, [p])).rows, `patient ${p}`).toEqual(chart(p))
    expect(chart(5).length).toBeGreaterThan(1)
    // The patient fixed on a joined table fixes it on the others: still one replica set
    const viaHistory = text.replace('WHERE p.patient_id', 'WHERE h.patient_id')
    expect((await sql(viaHistory, [5])).rows).toEqual(chart(5))
    const plan = JSON.stringify((await sql(`EXPLAIN ${viaHistory}`, [5])).rows)
    expect(plan).toMatch(/single-patient: one replica set/)
    expect(plan).toMatch(/lab_results.*joined on patient_id/)
    // Scatter-gather over every patient, grouped, with a condition on each table
    const counts = await sql("SELECT p.patient_id, COUNT(*) AS n FROM patient_records p JOIN medical_history h ON p.patient_id = h.patient_id JOIN lab_results l ON l.patient_id = h.patient_id WHERE p.gender = 'male' GROUP BY p.patient_id HAVING COUNT(*) > 1 ORDER BY n DESC, p.patient_id LIMIT 5 OFFSET 1")
    const want = patients.filter(p => p.gender === 'male').map(p => [p.patient_id, chart(p.patient_id as number).length] as [number, number])
      .filter(([, n]) => n > 1).sort((a, b) => b[1] - a[1] || a[0] - b[0]).slice(1, 6)
    expect(counts.rows).toEqual(want)
    // The audit trail hears of each patient whose rows a joined page holds, per table, as a list's does
    const notes: Array<{ table: string, patientId?: string }> = []
    const noting: SqlAccess = { ...everything, note: n => { notes.push({ table: n.table, ...(n.patientId === undefined ? {} : { patientId: n.patientId }) }) } }
    await sql('SELECT h.history_id FROM patient_records p JOIN medical_history h ON h.patient_id = p.patient_id WHERE p.patient_id IN (4, 9) AND h.diagnosis = $1', ['d1'], noting)
    expect(notes.sort((a, b) => a.table.localeCompare(b.table) || String(a.patientId).localeCompare(String(b.patientId)))).toEqual([
      { table: 'medical_history', patientId: '4' }, { table: 'medical_history', patientId: '9' }, { table: 'patient_records', patientId: '4' }, { table: 'patient_records', patientId: '9' }
    ])
    // Groups by patient hold each patient's data: each patient of the page is noted, on every table placed by the patient
    notes.length = 0
    await sql('SELECT h.patient_id, MAX(h.diagnosis) FROM medical_history h WHERE h.patient_id IN (4, 9) GROUP BY h.patient_id', [], noting)
    expect(notes.sort((a, b) => String(a.patientId).localeCompare(String(b.patientId)))).toEqual([{ table: 'medical_history', patientId: '4' }, { table: 'medical_history', patientId: '9' }])
    notes.length = 0
    await sql('SELECT p.patient_id, COUNT(*) FROM patient_records p JOIN medical_history h ON h.patient_id = p.patient_id WHERE p.patient_id IN (4, 9) GROUP BY 1', [], noting)
    expect(notes.sort((a, b) => a.table.localeCompare(b.table) || String(a.patientId).localeCompare(String(b.patientId)))).toEqual([
      { table: 'medical_history', patientId: '4' }, { table: 'medical_history', patientId: '9' }, { table: 'patient_records', patientId: '4' }, { table: 'patient_records', patientId: '9' }
    ])
    // A global table: every owner holds it
    const withRoles = await sql('SELECT h.history_id, r.role_name FROM medical_history h JOIN user_roles r ON r.role_id = h.role_id WHERE h.patient_id IN (1, 2, 3) ORDER BY h.history_id')
    expect(withRoles.rows).toEqual(history.filter(h => (h.patient_id as number) <= 3 && h.role_id !== null).map(h => [h.history_id, h.role_id === 901 ? 'sql-test-nurse' : 'sql-test-doctor']))
    const perRole = await sql('SELECT r.role_name, COUNT(*) FROM user_roles r JOIN medical_history h ON h.role_id = r.role_id GROUP BY r.role_name')
    expect(perRole.rows).toEqual([['sql-test-doctor', history.filter(h => h.role_id === 902).length], ['sql-test-nurse', history.filter(h => h.role_id === 901).length]])
  })

  it('writes by key through the write path, with the consistency of SET, and binds parameters as values', async () => {
    const made = await sql("SET consistency = 'all'; INSERT INTO appointments (appointment_id, patient_id, doctor_id, appointment_date, purpose) VALUES ($1, $2, $3, $4, $5)", [5001, '3', 2, '2026-05-01T09:00:00Z', "x'); DELETE FROM appointments; --"])
    expect(made.columns).toEqual(['id', 'version'])
    expect(made.rows[0]?.[0]).toBe('5001')
    const updated = await sql('SET consistency TO QUORUM; UPDATE appointments SET purpose = $1 WHERE appointment_id = $2', ['moved', 5001])
    expect(updated.rows[0]?.[1]).not.toBe(made.rows[0]?.[1])
    expect(await node.db.history('appointments', '5001')).toHaveLength(2)
    expect((await sql('SELECT purpose FROM appointments WHERE appointment_id = 5001')).rows).toEqual([['moved']])
    expect((await sql('SELECT COUNT(*) FROM appointments')).rows).toEqual([[APPOINTMENTS + 1]])
    await sql('DELETE FROM appointments WHERE appointment_id = $1', [5001])
    expect((await sql('SELECT COUNT(*) FROM appointments WHERE appointment_id = 5001')).rows).toEqual([[0]])
    // A reference is checked as on the rows routes
    await expect(sql("INSERT INTO appointments (appointment_id, patient_id, doctor_id, appointment_date, purpose) VALUES (5002, 999, 1, '2026-05-01T09:00:00Z', 'x')")).rejects.toMatchObject({ code: expect.stringMatching(/INVALID|REFERENCE|NOT_FOUND|CONFLICT/) })
    await expect(sql("SET consistency = 'most'; DELETE FROM appointments WHERE appointment_id = 1")).rejects.toMatchObject({ code: 'INVALID', message: expect.stringMatching(/consistency/) })
  })

  it('a NULL bound of BETWEEN is unknown only where the other bound holds (x NOT BETWEEN a AND NULL is x < a), in WHERE and HAVING', async () => {
    const pid = (r: Row): number => r.patient_id as number
    expect((await sql('SELECT patient_id FROM patient_records WHERE patient_id NOT BETWEEN 35 AND NULL')).rows).toEqual(ids(patients.filter(r => pid(r) < 35), 'patient_id'))
    expect((await sql('SELECT patient_id FROM patient_records WHERE patient_id NOT BETWEEN $1 AND $2', [null, 5])).rows).toEqual(ids(patients.filter(r => pid(r) > 5), 'patient_id'))
    expect((await sql('SELECT patient_id FROM patient_records WHERE patient_id BETWEEN 35 AND NULL')).rows).toEqual([])
    expect((await sql('SELECT patient_id FROM patient_records WHERE NOT (patient_id BETWEEN NULL AND 5 OR patient_id > 7)')).rows).toEqual([[6], [7]])
    // 200 appointments per doctor: NOT BETWEEN 250 AND NULL holds (200 < 250); NOT BETWEEN 150 AND NULL is unknown
    expect((await sql('SELECT doctor_id FROM appointments GROUP BY doctor_id HAVING COUNT(*) NOT BETWEEN 250 AND NULL')).rows).toEqual([[1], [2], [3], [4], [5], [6]])
    expect((await sql('SELECT doctor_id FROM appointments GROUP BY doctor_id HAVING COUNT(*) NOT BETWEEN 150 AND NULL')).rows).toEqual([])
  })

  it('an UPDATE or DELETE whose WHERE names a key twice, or a column set or inserted twice, is refused (never the last value written)', async () => {
    const before = (await sql('SELECT patient_id, gender FROM patient_records WHERE patient_id IN (1, 2)')).rows
    await expect(sql('UPDATE patient_records SET gender = $1 WHERE patient_id = 1 AND patient_id = 2', ['other'])).rejects.toMatchObject({ code: 'INVALID', message: expect.stringMatching(/patient_id named twice/) })
    await expect(sql('DELETE FROM patient_records WHERE patient_id = 1 AND patient_id = 2')).rejects.toMatchObject({ code: 'INVALID', message: expect.stringMatching(/patient_id named twice/) })
    await expect(sql("UPDATE patient_records SET gender = 'a', gender = 'b' WHERE patient_id = 1")).rejects.toMatchObject({ code: 'INVALID', message: expect.stringMatching(/gender set twice/) })
    await expect(sql("INSERT INTO user_roles (role_id, role_name, role_id) VALUES (950, 'x', 951)")).rejects.toMatchObject({ code: 'INVALID', message: expect.stringMatching(/role_id named twice/) })
    expect((await sql('SELECT patient_id, gender FROM patient_records WHERE patient_id IN (1, 2)')).rows).toEqual(before)
    expect((await sql('SELECT COUNT(*) FROM user_roles WHERE role_id >= 950')).rows).toEqual([[0]])
  })

  it('refuses everything outside the subset with a 400 naming it, never a wrong answer or a 500', async () => {
    const refused: Array<[string, unknown[], RegExp]> = [
      ['SELECT * FROM patient_records WHERE patient_id IN (SELECT patient_id FROM appointments)', [], /subquery|select/i],
      ['SELECT * FROM patient_records WHERE patient_id = (SELECT 1)', [], /subquery|select/i],
      ['SELECT * FROM (SELECT * FROM patient_records) x', [], /subquery/],
      ['SELECT patient_id FROM patient_records UNION SELECT patient_id FROM appointments', [], /UNION/],
      ['SELECT patient_id FROM patient_records EXCEPT SELECT patient_id FROM appointments', [], /EXCEPT/],
      ['SELECT patient_id, ROW_NUMBER() OVER (ORDER BY patient_id) FROM patient_records', [], /ROW_NUMBER|OVER|window/i],
      ['SELECT COUNT(*) OVER () FROM patient_records', [], /window function COUNT/],
      ['WITH x AS (SELECT * FROM patient_records) SELECT * FROM x', [], /WITH/],
      ["SELECT * FROM patient_records WHERE lower(patient_name) = 'p01'", [], /function LOWER/],
      ["SELECT * FROM patient_records WHERE patient_name = concat('P', '01')", [], /function CONCAT/],
      ['SELECT upper(patient_name) FROM patient_records', [], /function UPPER/],
      ['SELECT patient_id + 1 FROM patient_records', [], /expression with \+/],
      ["SELECT * FROM patient_records WHERE patient_name LIKE '%1'", [], /LIKE "%1"/],
      ["SELECT * FROM patient_records WHERE patient_name LIKE 'P_1%'", [], /LIKE "P_1%"/],
      ["SELECT * FROM patient_records WHERE patient_name ILIKE 'p%'", [], /ILIKE/],
      ["SELECT * FROM patient_records WHERE patient_id LIKE '1%'", [], /LIKE needs a text column; patient_id is INT/],
      ["SELECT * FROM patient_records WHERE date_of_birth LIKE '1980%'", [], /date_of_birth is DATE/],
      ['SELECT * FROM patient_records; SELECT * FROM appointments', [], /one statement/],
      ['SELECT * FROM patient_records WHERE patient_id = $1 AND gender = $2', [1], /takes 2 parameters.*1 given/],
      ['SELECT * FROM patient_records WHERE patient_id = $1', [1, 2], /takes 1 parameter .*2 given/],
      ['SELECT * FROM patient_records', [1], /takes 0 parameters/],
      ['SELECT nope FROM patient_records', [], /unknown column nope/],
      ['SELECT * FROM patient_records WHERE nope = 1', [], /unknown column nope/],
      ['SELECT * FROM nowhere', [], /unknown table nowhere/],
      ['SELECT x.patient_id FROM patient_records p', [], /unknown table or alias x/],
      ['SELECT * FROM patient_records p, medical_history h WHERE p.patient_id = h.patient_id', [], /comma join/],
      ['SELECT * FROM patient_records p LEFT JOIN medical_history h ON p.patient_id = h.patient_id', [], /LEFT JOIN/],
      ['SELECT * FROM patient_records p JOIN medical_history h USING (patient_id)', [], /USING/],
      ['SELECT * FROM appointments a JOIN patient_records p ON a.patient_id = p.patient_id', [], /same owners/],
      ['SELECT * FROM patient_records p JOIN medical_history h ON p.patient_id = h.patient_id JOIN appointments a ON a.patient_id = p.patient_id', [], /same owners/],
      ['SELECT * FROM medical_history h JOIN lab_results l ON l.record_id = h.history_id', [], /different columns/],
      ['SELECT * FROM patient_records p JOIN medical_history h ON p.patient_id = h.patient_id AND h.role_id = 1', [], /join condition/],
      ['SELECT * FROM patient_records p JOIN medical_history h ON p.patient_id = h.patient_id WHERE p.patient_id = h.role_id', [], /two columns/],
      ['SELECT * FROM patient_records p JOIN medical_history h ON p.patient_id = h.patient_id WHERE p.gender = $1 OR h.role_id = 1', ['x'], /two joined tables/],
      ['SELECT * FROM patient_records ORDER BY patient_name NULLS FIRST', [], /NULLS FIRST/],
      ['SELECT * FROM patient_records ORDER BY lower(patient_name)', [], /function LOWER/],
      ['SELECT SUM(patient_name) FROM patient_records', [], /SUM of the VARCHAR/],
      ['SELECT COUNT(DISTINCT gender) FROM patient_records', [], /DISTINCT/],
      ['SELECT DISTINCT gender FROM patient_records', [], /DISTINCT/],
      ['SELECT string_agg(patient_name, \',\') FROM patient_records', [], /STRING_AGG/i],
      ['SELECT gender, patient_id FROM patient_records GROUP BY gender', [], /patient_id must be in GROUP BY/],
      ['SELECT gender FROM patient_records GROUP BY gender HAVING patient_id > 1', [], /patient_id in HAVING/],
      ["SELECT gender FROM patient_records GROUP BY gender HAVING COUNT(*) > 'many'", [], /not a number/],
      ['SELECT gender FROM patient_records GROUP BY gender HAVING lower(gender) = 1', [], /function LOWER/],
      ['SELECT * FROM patient_records LIMIT -1', [], /LIMIT/],
      ['SELECT * FROM patient_records LIMIT $1', ['many'], /LIMIT must be a whole number/],
      ['SELECT * INTO copy FROM patient_records', [], /INTO/],
      ['SELECT 1', [], /without FROM/],
      ['UPDATE patient_records SET gender = $1', ['x'], /without WHERE patient_id/],
      ["UPDATE patient_records SET gender = 'x' WHERE patient_name = 'P01'", [], /UPDATE or DELETE/],
      ['UPDATE patient_records SET patient_id = patient_id + 1 WHERE patient_id = 1', [], /expression with \+|binary/],
      ['DELETE FROM appointments WHERE appointment_id > 5', [], /UPDATE or DELETE/],
      ['INSERT INTO patient_records SELECT * FROM patient_records', [], /INSERT/],
      ["INSERT INTO user_roles (role_id, role_name) VALUES (1, 'a'), (2, 'b')", [], /several rows/],
      ["INSERT INTO user_roles (role_id, role_name) VALUES (903, 'c') RETURNING role_id", [], /RETURNING/],
      ['DROP TABLE patient_records', [], /DROP|parse/],
      ['CREATE TABLE x (a int)', [], /CREATE|parse/],
      ["SET search_path = 'x'; SELECT * FROM patient_records", [], /SET search_path/],
      ['EXPLAIN DELETE FROM appointments WHERE appointment_id = 1', [], /EXPLAIN DELETE/],
      ["SELECT COUNT(*) FROM patient_records; SET consistency = 'one'", [], /SET after the statement/],
      ["SET consistency = 'one'", [], /SET needs a statement after it/],
      ['SELECT * FROM patient_records WHERE', [], /cannot parse: the statement ends too soon/],
      ['SELECT * FROM patient_records WHERE patient_id = ?', [], /cannot parse: unexpected "\?" at line 1, column 50/],
      ["SELECT * FROM patient_records WHERE patient_name LIKE 'P%' ESCAPE '!'", [], /ESCAPE/],
      ['SELECT * FROM other.patient_records', [], /unknown schema other/],
      ['SELECT patient_records.patient_id FROM patient_records p', [], /unknown table or alias patient_records/],
      [`SELECT * FROM patient_records WHERE ${'NOT '.repeat(100)}patient_id = 1`, [], /nested more than 64 deep/],
      [`SELECT * FROM patient_records WHERE ${Array.from({ length: 1500 }, (_, i) => `patient_id = ${i}`).join(' OR ')}`, [], /more than 1000 conditions joined by OR/],
      [`SELECT * FROM patient_records WHERE patient_id IN (${Array.from({ length: 1500 }, (_, i) => i).join(', ')})`, [], /more than 1000 values in one IN/],
      ['SELECT * FROM patient_records WHERE patient_id = 1 + 1', [], /expression with \+ in WHERE/],
      ['SELECT * FROM patient_records WHERE date_of_birth > now()', [], /function NOW\(\) in WHERE/],
      ["SELECT * FROM patient_records WHERE patient_id::text = '1'", [], /cast in WHERE/],
      ['SELECT * FROM patient_records WHERE EXISTS (SELECT 1 FROM appointments)', [], /EXISTS/],
      ['SELECT * FROM patient_records p CROSS JOIN doctors_info d', [], /CROSS JOIN/],
      ['SELECT * FROM patient_records TABLESAMPLE SYSTEM (10)', [], /TABLESAMPLE/],
      ['SELECT patient_id FROM patient_records WHERE patient_id = true', [], /boolean/],
      ["UPDATE patient_records SET gender = false WHERE patient_id = 1", [], /boolean/],
      ['SELECT patient_id FROM patient_records ORDER BY patient_id LIMIT 1 OFFSET 1 LIMIT 2', [], /LIMIT or OFFSET given twice/],
      ['SELECT patient_id FROM patient_records LIMIT 1 LIMIT 2', [], /LIMIT or OFFSET given twice/],
      ['SELECT patient_id FROM patient_records OFFSET 1 OFFSET 2', [], /LIMIT or OFFSET given twice/],
      ['EXPLAIN', [], /the statement is empty/],
      ['-- nothing but a comment', [], /the statement is empty/],
      [' ; ', [], /the statement is empty/],
      ['SELECT * FROM patient_records p FULL JOIN medical_history h ON p.patient_id = h.patient_id', [], /FULL JOIN/],
      ["SELECT COUNT(*) FILTER (WHERE gender = 'male') FROM patient_records", [], /FILTER/],
      ['', [], /empty/]
    ]
    for (const [text, params, message] of refused) {
      await expect(sql(text, params), text).rejects.toMatchObject({ code: 'INVALID', message: expect.stringMatching(message) })
    }
    // Nothing was written by any of them
    expect((await sql('SELECT COUNT(*) FROM appointments')).rows).toEqual([[APPOINTMENTS]])
    expect((await sql('SELECT COUNT(*) FROM user_roles WHERE role_id >= 903')).rows).toEqual([[0]])
  })

  it('a statement the parser backtracks on for ever (a malformed nesting of parentheses) is 400 in bounded time, and the node goes on serving meanwhile', async () => {
    let ticks = 0
    const timer = setInterval(() => { ticks++ }, 20)
    const started = Date.now()
    try {
      // Each unclosed parenthesis doubles the parser's work: 24 of them would hold it for hours.
      const bad = sql(`SELECT * FROM patient_records WHERE patient_id = ${'('.repeat(24)}1`)
      // A statement sent meanwhile waits for the parser, then has its own time
      const good = sql('SELECT COUNT(*) FROM patient_records WHERE patient_id IN ($1, $2)', [3, 4])
      await expect(bad).rejects.toMatchObject({ code: 'INVALID', message: expect.stringMatching(/cannot parse .*within/) })
      expect((await good).rows).toEqual([[2]])
    } finally {
      clearInterval(timer)
    }
    expect(Date.now() - started).toBeLessThan(30_000)
    expect(ticks).toBeGreaterThan(10)
    // The parser is back for the next statement
    expect((await sql('SELECT COUNT(*) FROM patient_records WHERE (patient_id = $1)', [3])).rows).toEqual([[1]])
  }, 60_000)

  it('a table or column the role may not read is 403 wherever it is named', async () => {
    const noHistory: SqlAccess = {
      ...everything,
      readable: t => { if (t.name === 'medical_history') throw new ForbiddenError('You may not read medical_history'); return t.columns.map(c => c.name).filter(c => c !== 'allergies') }
    }
    await expect(sql('SELECT p.patient_id FROM patient_records p JOIN medical_history h ON p.patient_id = h.patient_id', [], noHistory)).rejects.toMatchObject({ code: 'FORBIDDEN' })
    for (const text of ['SELECT allergies FROM patient_records', 'SELECT patient_id FROM patient_records WHERE allergies IS NULL', 'SELECT patient_id FROM patient_records ORDER BY allergies', 'SELECT COUNT(allergies) FROM patient_records', 'SELECT gender FROM patient_records GROUP BY gender HAVING MAX(allergies) IS NULL']) {
      await expect(sql(text, [], noHistory), text).rejects.toMatchObject({ code: 'FORBIDDEN' })
    }
    expect((await sql('SELECT * FROM patient_records LIMIT 1', [], noHistory)).columns).not.toContain('allergies')
    // A table no column of which is named (COUNT(*), a star of another table, EXPLAIN) is still read: 403
    for (const text of ['SELECT COUNT(*) FROM medical_history', 'EXPLAIN SELECT COUNT(*) FROM medical_history WHERE patient_id = 1', 'SELECT p.patient_id FROM patient_records p JOIN medical_history h ON p.patient_id = h.patient_id WHERE p.patient_id = 1']) {
      await expect(sql(text, [], noHistory), text).rejects.toMatchObject({ code: 'FORBIDDEN' })
    }
  })
})

import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createTestnet, type HarnessNode, type Testnet } from '../helpers/harness.js'
import { waitFor } from '../helpers/wait.js'
import { tokenOf } from '../../src/cluster/token.js'
import { runSql, SQL_PAGE, type SqlAccess } from '../../src/query/sql.js'
import type { Row, TableDef, Value } from '../../src/schema/index.js'

// SQL over a five-node network (N=3, R=2): a chart joined on the owners, answers paged from any node, writes at a SET consistency.

const everything: SqlAccess = { readable: (t: TableDef) => t.columns.map(c => c.name), writable: () => {} }
const PATIENTS = 30
const DOCTORS = 4
const APPOINTMENTS = SQL_PAGE + 150

const patients: Row[] = Array.from({ length: PATIENTS }, (_, i) => ({
  patient_id: i + 1, patient_name: `P${String(i + 1).padStart(2, '0')}`, date_of_birth: '1980-01-02', gender: i % 2 === 0 ? 'F' : 'M', address: 'x', contact_number: '0123456789', email: `p${i + 1}@example.org`
}))
const doctors: Row[] = Array.from({ length: DOCTORS }, (_, i) => ({ doctor_id: i + 1, name: `Dr ${i + 1}`, specialization: 'GP', contact_number: '0711111111', email: 'd@example.org', availability: 'weekdays' }))
const history: Row[] = patients.flatMap(p => [0, 1].map(k => ({ history_id: (p.patient_id as number) * 10 + k, patient_id: p.patient_id as number, diagnosis: 'd', treatment: 't', date_of_visit: `2026-02-0${k + 1}T10:00:00.000Z` })))
const labs: Row[] = history.flatMap(h => Array.from({ length: 1 + ((h.history_id as number) % 2) }, (_, j) => ({
  result_id: (h.history_id as number) * 10 + j, record_id: h.history_id as number, patient_id: h.patient_id as number, test_name: 'blood', test_date: '2026-02-10', test_result: 'ok'
})))
const appointments: Row[] = Array.from({ length: APPOINTMENTS }, (_, n) => ({
  appointment_id: n + 1, patient_id: (n % PATIENTS) + 1, doctor_id: (n % DOCTORS) + 1, appointment_date: new Date(Date.UTC(2026, 2, 1 + (n % 28), 8 + (n % 9))).toISOString(), purpose: 'visit'
}))

/** A patient's chart as the join gives it: every (history, lab result) pair, in key order */
function chart (p: number): Value[][] {
  return history.filter(h => h.patient_id === p).flatMap(h => labs.filter(l => l.patient_id === p).map(l => [p, h.history_id, l.result_id] as Value[]))
}

let net: Testnet
beforeAll(async () => {
  net = await createTestnet(5)
  await net.converge(5)
  const at = (i: number): HarnessNode => net.nodes[i % 5] as HarnessNode
  for (const [i, d] of doctors.entries()) await at(i).db.insert('doctors_info', d)
  for (const [i, p] of patients.entries()) await at(i).db.insert('patient_records', p)
  for (const [i, h] of history.entries()) await at(i).db.insert('medical_history', h)
  for (const [i, l] of labs.entries()) await at(i).db.insert('lab_results', l)
  const imported = await at(0).db.importRows('appointments', appointments.map((value, line) => ({ line, value })))
  expect(imported.rejected).toEqual([])
}, 180_000)
afterAll(async () => { await net?.stop() })

describe('SQL on a five-node network', () => {
  it('joins a patient\'s chart (three tables) on that patient\'s replica set, from any node', async () => {
    const text = 'SELECT p.patient_id, h.history_id, l.result_id FROM patient_records p JOIN medical_history h ON h.patient_id = p.patient_id JOIN lab_results l ON l.patient_id = h.patient_id WHERE p.patient_id = $1 ORDER BY h.history_id, l.result_id'
    for (const [i, node] of net.nodes.entries()) {
      const p = 3 + i * 5
      expect((await runSql(node.db, text, [p], everything)).rows, `patient ${p} from node ${i}`).toEqual(chart(p))
      const raw = await node.coordinator.fragment({ table: 'patient_records', filter: { op: '=', column: 'patient_id', value: p }, joins: [{ table: 'medical_history', column: 'patient_id', on: [0, 'patient_id'] }, { table: 'lab_results', column: 'patient_id', on: [1, 'patient_id'] }], columns: [[2, 'result_id']] })
      expect(raw.singleShard).toBe(true)
      const owners = node.coordinator.owners('patient_records', tokenOf(`patient_id:${p}`))
      for (const a of raw.asked) expect(owners).toContain(a.peer)
    }
    const plan = JSON.stringify((await runSql((net.nodes[2] as HarnessNode).db, `EXPLAIN ${text}`, [7], everything)).rows)
    expect(plan).toMatch(/single-patient: one replica set, the owners of patient_id:7/)
    // Every patient at once: scatter-gather, each range on its owners, grouped and merged
    const counts = await runSql((net.nodes[4] as HarnessNode).db, 'SELECT p.patient_id, COUNT(*) AS n, MAX(l.result_id) FROM patient_records p JOIN medical_history h ON h.patient_id = p.patient_id JOIN lab_results l ON l.patient_id = p.patient_id GROUP BY p.patient_id HAVING COUNT(*) >= 4 AND NOT p.patient_id IN (1, 2) ORDER BY p.patient_id', [], everything)
    const want = patients.map(p => p.patient_id as number).filter(p => p > 2).map(p => [p, chart(p).length, Math.max(...chart(p).map(r => r[2] as number))]).filter(r => (r[1] as number) >= 4)
    expect(want.length).toBeGreaterThan(5)
    expect(counts.rows).toEqual(want)
    // AVG merged from each range's sum and count: a patient's appointments lie with their doctors, in several ranges
    const avg = await runSql((net.nodes[1] as HarnessNode).db, 'SELECT patient_id, AVG(appointment_id), SUM(appointment_id), COUNT(*) FROM appointments GROUP BY patient_id', [], everything)
    expect(avg.rows).toHaveLength(PATIENTS)
    for (const [p, mean, sum, n] of avg.rows as number[][]) {
      const ids = appointments.filter(a => a.patient_id === p).map(a => a.appointment_id as number)
      expect([p, sum, n]).toEqual([p, ids.reduce((x, y) => x + y, 0), ids.length])
      expect(mean).toBeCloseTo(ids.reduce((x, y) => x + y, 0) / ids.length, 9)
    }
    expect(new Set(appointments.filter(a => a.patient_id === 1).map(a => a.doctor_id)).size).toBeGreaterThan(1)
  }, 60_000)

  it('pages a join, an order and many groups with next, each page from another node', async () => {
    const pages = async (text: string): Promise<Value[][]> => {
      const rows: Value[][] = []
      let cursor: string | undefined
      for (let i = 0; i < 10; i++) {
        const answer = await runSql((net.nodes[i % 5] as HarnessNode).db, text, [], everything, {}, cursor)
        rows.push(...answer.rows)
        if (answer.next === null) return rows
        expect(answer.rows).toHaveLength(SQL_PAGE)
        cursor = answer.next
      }
      throw new Error('more than ten pages')
    }
    const byDate = [...appointments].sort((a, b) => String(a.appointment_date) < String(b.appointment_date) ? 1 : String(a.appointment_date) > String(b.appointment_date) ? -1 : (a.appointment_id as number) - (b.appointment_id as number))
    expect(await pages('SELECT a.appointment_id, d.name FROM appointments a JOIN doctors_info d ON a.doctor_id = d.doctor_id ORDER BY a.appointment_date DESC, a.appointment_id'))
      .toEqual(byDate.map(a => [a.appointment_id, `Dr ${String(a.doctor_id)}`]))
    expect(await pages('SELECT appointment_id FROM appointments')).toEqual(appointments.map(a => [a.appointment_id]))
    // Exactly a page's rows, of the lowest keys or of the highest: no next (no empty page after them)
    for (const text of ['SELECT appointment_id FROM appointments WHERE appointment_id <= $1', 'SELECT appointment_id FROM appointments WHERE appointment_id > $1 ORDER BY appointment_date DESC']) {
      const exact = await runSql((net.nodes[2] as HarnessNode).db, text, [text.includes('>') ? APPOINTMENTS - SQL_PAGE : SQL_PAGE], everything)
      expect(exact.rows, text).toHaveLength(SQL_PAGE)
      expect(exact.next, text).toBeNull()
    }
    expect(await pages('SELECT appointment_id, MIN(doctor_id) FROM appointments GROUP BY appointment_id')).toEqual(appointments.map(a => [a.appointment_id, a.doctor_id]))
    expect(await pages('SELECT appointment_id FROM appointments ORDER BY patient_id, appointment_id OFFSET 10 LIMIT 1100'))
      .toEqual([...appointments].sort((a, b) => (a.patient_id as number) - (b.patient_id as number) || (a.appointment_id as number) - (b.appointment_id as number)).slice(10, 1110).map(a => [a.appointment_id]))
  }, 120_000)

  it('writes at the consistency SET gives (or the request\'s), through the write path', async () => {
    const node = net.nodes[0] as HarnessNode
    // One of patient 1's owners (not node 0) stops
    const p = 1
    const owners = node.coordinator.owners('patient_records', tokenOf(`patient_id:${p}`))
    const gone = net.nodes.find(n => n !== node && owners.includes(n.peerId)) as HarnessNode
    gone.membership.stop()
    await gone.coordinator.stop()
    await gone.store.close()
    await waitFor('node 0 to see the stopped owner down', async () => node.membership.stateOf(gone.peerId) === 'down', 15_000)
    await expect(runSql(node.db, "SET consistency = 'all'; UPDATE patient_records SET gender = $1 WHERE patient_id = $2", ['X', p], everything)).rejects.toMatchObject({ code: 'UNAVAILABLE' })
    await expect(runSql(node.db, 'UPDATE patient_records SET gender = $1 WHERE patient_id = $2', ['X', p], everything, { consistency: 'all' })).rejects.toMatchObject({ code: 'UNAVAILABLE' })
    const done = await runSql(node.db, "SET consistency = 'quorum'; UPDATE patient_records SET gender = $1 WHERE patient_id = $2", ['X', p], everything)
    expect(done.rows[0]?.[0]).toBe(String(p))
    expect((await runSql(node.db, 'SELECT gender FROM patient_records WHERE patient_id = $1', [p], everything)).rows).toEqual([['X']])
  }, 60_000)
})

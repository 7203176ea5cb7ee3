import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { NtsoekheClient } from '../../src/client/index.js'
import { adminToken, cli, json, startDaemon, type TestDaemon } from '../helpers/daemon.js'
import { e2ePatient, waitFor } from '../helpers/wait.js'

/**
 * Ordered queries and SQL on three real daemons (N=3, W=2, R=2): rows
 * written through one node, read and aggregated through the others.
 */
let daemons: TestDaemon[] = []
let clients: NtsoekheClient[] = []
let token = ''

const PATIENTS = 30
const doctor = (id: number): Record<string, unknown> => ({ doctor_id: id, name: `Dr ${id}`, specialization: 'GP', contact_number: '0711111111', email: 'd@example.org', availability: 'weekdays' })
/** Appointment i: doctor 1 or 2 or 3, on 2026-03-01 + (i mod 4) days, at 08:00 + (i mod 7) hours */
const appointment = (i: number): Record<string, unknown> => ({
  appointment_id: 1000 + i,
  patient_id: (i % PATIENTS) + 1,
  doctor_id: (i % 3) + 1,
  appointment_date: `2026-03-0${1 + (i % 4)}T${String(8 + (i % 7)).padStart(2, '0')}:00:00.000Z`,
  purpose: 'visit'
})
const APPOINTMENTS = 60

/** [doctor_id, visits, first appointment] per doctor, computed from the rows written */
function expectedPerDoctor (): Array<[number, number, string]> {
  const out = new Map<number, [number, number, string]>()
  for (let i = 0; i < APPOINTMENTS; i++) {
    const a = appointment(i)
    const d = a.doctor_id as number
    const at = a.appointment_date as string
    const have = out.get(d)
    out.set(d, have === undefined ? [d, 1, at] : [d, have[1] + 1, at < have[2] ? at : have[2]])
  }
  return [...out.values()].sort((x, y) => x[0] - y[0])
}

beforeAll(async () => {
  const first = await startDaemon()
  token = await adminToken(first.home)
  const firstClient = new NtsoekheClient({ socket: first.socket, token })
  const { invite } = await firstClient.invite()
  const rest = await Promise.all([0, 1].map(async () => await startDaemon({ args: ['--join', invite] })))
  daemons = [first, ...rest]
  clients = daemons.map(d => new NtsoekheClient({ socket: d.socket, token }))
  await waitFor('every daemon to see 3 alive members', async () => {
    const all = await Promise.all(clients.map(async c => await c.status()))
    return all.every(s => s.members.filter((m: { state: string }) => m.state === 'alive').length === 3)
  }, 40_000)
  const c = clients[0] as NtsoekheClient
  for (const d of [1, 2, 3]) await c.insert('doctors_info', doctor(d))
  for (let i = 1; i <= PATIENTS; i++) await c.insert('patient_records', e2ePatient(i))
  for (let i = 0; i < APPOINTMENTS; i++) await c.insert('appointments', appointment(i))
  for (const [id, day] of [[1, '2026-02-03T10:00:00.000Z'], [2, '2026-01-05T09:00:00.000Z'], [3, '2026-03-01T11:30:00.000Z']] as const) {
    await c.insert('medical_history', { history_id: 500 + id, patient_id: 7, diagnosis: `d${id}`, treatment: 't', date_of_visit: day })
  }
  for (const [id, record] of [[701, 501], [702, 503]] as const) {
    await c.insert('lab_results', { result_id: id, record_id: record, patient_id: 7, test_name: 'blood', test_date: '2026-03-02', test_result: 'ok' })
  }
}, 120_000)

afterAll(async () => {
  for (const c of clients) c.close()
  await Promise.all(daemons.map(async d => await d.stop().catch(() => {})))
}, 30_000)

describe('queries and SQL on a three-node network', () => {
  it('query lists in key order without an order, and a doctor\'s day in time order with ranges', async () => {
    const first = json(await cli(['query', 'patient_records', '--limit', '5', '--json'], { home: daemons[2]!.home, token }))
    expect(first.rows.map((r: { patient_id: number }) => r.patient_id)).toEqual([1, 2, 3, 4, 5])
    const more = json(await cli(['query', 'patient_records', '--limit', '5', '--cursor', first.next, '--json'], { home: daemons[1]!.home, token }))
    expect(more.rows.map((r: { patient_id: number }) => r.patient_id)).toEqual([6, 7, 8, 9, 10])

    const day = json(await cli(['query', 'appointments', '--where', 'doctor_id=2', '--where', 'appointment_date>=2026-03-02', '--where', 'appointment_date<2026-03-03', '--order-by', 'appointment_date', '--json'], { home: daemons[1]!.home, token }))
    const expected = Array.from({ length: APPOINTMENTS }, (_, i) => appointment(i))
      .filter(a => a.doctor_id === 2 && String(a.appointment_date).startsWith('2026-03-02'))
      .sort((a, b) => String(a.appointment_date) < String(b.appointment_date) ? -1 : 1)
    expect(day.rows.map((r: { appointment_id: number }) => r.appointment_id)).toEqual(expected.map(a => a.appointment_id))
    expect(expected.length).toBeGreaterThan(1)

    const latest = json(await cli(['query', 'medical_history', '--where', 'patient_id=7', '--order-by', 'date_of_visit:desc', '--json'], { home: daemons[2]!.home, token }))
    expect(latest.rows.map((r: { history_id: number }) => r.history_id)).toEqual([503, 501, 502])
    // The socket route takes the same: where=<comparison> and order_by
    const r = await clients[2]!.query('appointments', {}, { filters: ['appointment_id>=1057'], orderBy: 'appointment_id:desc' })
    expect(r.rows.map(x => x.appointment_id)).toEqual([1059, 1058, 1057])
  }, 60_000)

  it('SQL joins a patient\'s chart on the owners, with bound parameters', async () => {
    const out = json(await cli(['sql', 'SELECT p.patient_name, h.history_id FROM patient_records p JOIN medical_history h ON p.patient_id = h.patient_id WHERE p.patient_id = $1 AND h.date_of_visit >= $2 ORDER BY h.date_of_visit', '--param', '7', '--param', '2026-02-01', '--json'], { home: daemons[1]!.home, token }))
    expect(out).toEqual({ columns: ['patient_name', 'history_id'], rows: [['Patient 7', 501], ['Patient 7', 503]], next: null })
    // The whole chart: patient + history + lab results, three tables joined on the patient's owners
    const chart = json(await cli(['sql', 'SELECT p.patient_name, h.history_id, l.result_id FROM patient_records p JOIN medical_history h ON h.patient_id = p.patient_id JOIN lab_results l ON l.patient_id = p.patient_id WHERE h.patient_id = $1 ORDER BY h.date_of_visit DESC, l.result_id', '--param', '7', '--json'], { home: daemons[2]!.home, token }))
    expect(chart).toEqual({ columns: ['patient_name', 'history_id', 'result_id'], rows: [503, 501, 502].flatMap(h => [['Patient 7', h, 701], ['Patient 7', h, 702]]), next: null })
    const plan = json(await cli(['sql', 'EXPLAIN SELECT COUNT(*) FROM patient_records p JOIN medical_history h ON h.patient_id = p.patient_id JOIN lab_results l ON l.patient_id = p.patient_id WHERE p.patient_id = 7', '--json'], { home: daemons[0]!.home, token }))
    expect(plan.rows.map((r: string[]) => r[0])).toEqual(['patient_records', 'medical_history', 'lab_results', 'aggregate'])
    expect(plan.rows[0][1]).toMatch(/single-patient: one replica set/)
    // A parameter too many is refused, naming the count
    const extra = await cli(['sql', 'SELECT COUNT(*) FROM lab_results', '--param', '7'], { home: daemons[0]!.home, token })
    expect(extra.code).toBe(1)
    expect(extra.stderr).toMatch(/takes 0 parameters, 1 given/)
    // The audit trail has the read, under the patient, as a list does
    await waitFor('the SQL read in patient 7\'s audit trail', async () => {
      const { entries } = await clients[0]!.audit({ patient: '7' })
      return entries.some(e => e.action === 'list' && e.patient_id === '7' && e.outcome === 'ok')
    }, 15_000)
  }, 30_000)

  it('SQL counts visits per doctor with GROUP BY and HAVING, on any node', async () => {
    for (const c of clients) {
      const r = await c.sql('SELECT doctor_id, COUNT(*) AS visits, MIN(appointment_date) AS first FROM appointments WHERE appointment_date >= $1 GROUP BY doctor_id HAVING COUNT(*) > $2 ORDER BY doctor_id', ['2026-03-01', 0])
      expect(r.columns).toEqual(['doctor_id', 'visits', 'first'])
      expect(r.rows).toEqual(expectedPerDoctor())
    }
    const total = await clients[1]!.sql('SELECT COUNT(*) FROM appointments')
    expect(total.rows).toEqual([[APPOINTMENTS]])
  }, 30_000)

  it('pages answers of more than 1,000 rows with next, through the CLI and the socket, on any node', async () => {
    const BILLS = 1100
    const bill = (i: number): Record<string, unknown> => ({ billing_id: i, patient_id: (i % PATIENTS) + 1, amount: `${(i * 37) % 500}.${String(i % 100).padStart(2, '0')}`, date: '2026-03-01', insurance_provider: 'Discovery', insurance_policy_number: `POL${i}` })
    const imported = await clients[0]!.import('billing_insurance', Array.from({ length: BILLS }, (_, i) => JSON.stringify(bill(i + 1))).join('\n') + '\n', 'ndjson')
    expect(imported.accepted).toBe(BILLS)
    const first = json(await cli(['sql', 'SELECT billing_id FROM billing_insurance', '--json'], { home: daemons[1]!.home, token }))
    expect(first.rows).toHaveLength(1000)
    expect(typeof first.next).toBe('string')
    const rest = json(await cli(['sql', 'SELECT billing_id FROM billing_insurance', '--cursor', first.next, '--json'], { home: daemons[2]!.home, token }))
    expect(rest.next).toBeNull()
    expect([...first.rows, ...rest.rows]).toEqual(Array.from({ length: BILLS }, (_, i) => [i + 1]))
    // A join in another order, each page from another node
    const text = 'SELECT b.billing_id, p.patient_name FROM billing_insurance b JOIN patient_records p ON p.patient_id = b.patient_id ORDER BY b.amount DESC, b.billing_id'
    const rows: unknown[][] = []
    let next: string | null | undefined
    for (let page = 0; page < 5 && next !== null; page++) {
      const r = await clients[page % 3]!.sql(text, [], next === undefined ? {} : { cursor: next })
      rows.push(...r.rows)
      next = r.next
    }
    const want = Array.from({ length: BILLS }, (_, i) => bill(i + 1)).sort((a, b) => Number(b.amount) - Number(a.amount) || (a.billing_id as number) - (b.billing_id as number))
    expect(rows).toEqual(want.map(b => [b.billing_id, `Patient ${String(b.patient_id)}`]))
  }, 120_000)

  it('EXPLAIN says who is asked and which index is used', async () => {
    const ids = (await Promise.all(clients.map(async c => (await c.status()).peerId as string)))
    const one = json(await cli(['sql', 'EXPLAIN SELECT * FROM appointments WHERE doctor_id = 2 ORDER BY appointment_date', '--json'], { home: daemons[0]!.home, token }))
    const text = JSON.stringify(one.rows)
    expect(text).toMatch(/single-patient: one replica set/)
    expect(text).toMatch(/ordered index \(doctor_id, appointment_date\)/)
    for (const id of ids) expect(text).toContain(id)
    const all = await clients[0]!.sql('EXPLAIN SELECT doctor_id, COUNT(*) FROM appointments GROUP BY doctor_id')
    expect(JSON.stringify(all.rows)).toMatch(/scatter-gather/)
  }, 30_000)

  it('refuses what is outside the subset with a 400 naming it, and applies roles', async () => {
    const refused = await cli(['sql', 'SELECT DISTINCT doctor_id FROM appointments'], { home: daemons[0]!.home, token })
    expect(refused.code).toBe(1)
    expect(refused.stderr).toMatch(/DISTINCT is not supported.*\[INVALID\]/)
    await expect(clients[1]!.sql('SELECT * FROM appointments WHERE purpose LIKE $1', ['%visit'])).rejects.toMatchObject({ code: 'INVALID', message: expect.stringMatching(/LIKE/) })

    const made = json(await cli(['user', 'add', 'thandi', '--role', 'billing', '--json'], { home: daemons[0]!.home, token }))
    const billing = new NtsoekheClient({ socket: daemons[1]!.socket, token: made.token })
    try {
      await waitFor('the billing user to be known on node 2', async () => await billing.status().then(() => true, () => false), 10_000)
      const own = await billing.sql('SELECT * FROM patient_records WHERE patient_id = 3')
      expect(own.columns).toEqual(['patient_id', 'patient_name', 'address', 'contact_number', 'email'])
      await expect(billing.sql('SELECT date_of_birth FROM patient_records')).rejects.toMatchObject({ code: 'FORBIDDEN' })
      await expect(billing.sql('SELECT COUNT(*) FROM appointments')).rejects.toMatchObject({ code: 'FORBIDDEN' })
      await expect(billing.sql("UPDATE patient_records SET patient_name = 'x' WHERE patient_id = 3")).rejects.toMatchObject({ code: 'FORBIDDEN' })
    } finally {
      billing.close()
    }
  }, 30_000)

  it('INSERT, UPDATE and DELETE by key go through the write path', async () => {
    const made = await clients[2]!.sql("SET consistency = 'all'; INSERT INTO appointments (appointment_id, patient_id, doctor_id, appointment_date, purpose) VALUES ($1, $2, $3, $4, $5)", [9001, 4, 3, '2026-04-01T09:00:00.000Z', 'new'])
    expect(made.rows[0]?.[0]).toBe('9001')
    await clients[0]!.sql('UPDATE appointments SET purpose = $1 WHERE appointment_id = $2', ['moved', 9001])
    expect((await clients[1]!.get('appointments', 9001)).row.purpose).toBe('moved')
    const history = await clients[1]!.history('appointments', 9001)
    expect(history.versions).toHaveLength(2)
    await clients[1]!.sql('DELETE FROM appointments WHERE appointment_id = 9001')
    await expect(clients[0]!.get('appointments', 9001)).rejects.toMatchObject({ code: 'NOT_FOUND' })
  }, 30_000)
})

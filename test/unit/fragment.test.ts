import { describe, expect, it } from 'vitest'
import { checkFragment, checkFragmentResults, finish, mergeResults, runFragment, type Fragment, type FragmentSource } from '../../src/query/fragment.js'
import type { Row } from '../../src/schema/index.js'

/** A source over in-memory rows (what an owner's store gives), filtered as a store would */
function source (tables: Record<string, Row[]>): FragmentSource {
  return {
    rows: async function * (table, filter) {
      for (const [i, row] of (tables[table] ?? []).entries()) {
        if (filter !== undefined && filter.op === '=' && row[filter.column] !== filter.value) continue
        if (filter !== undefined && filter.op === 'and' && !filter.args.every(a => a.op !== '=' || row[a.column] === a.value)) continue
        yield { row, id: String(i), version: `v${i}` }
      }
    }
  }
}

const appointments = (rows: Array<[number, number, string]>): Row[] => rows.map(([id, doctor, at]) => ({ appointment_id: id, patient_id: 1, doctor_id: doctor, appointment_date: at, purpose: 'p' }))

describe('query fragments', () => {
  it('partial aggregates of two ranges merge into the whole table\'s', async () => {
    const f: Fragment = { table: 'appointments', groupBy: [[0, 'doctor_id']], aggregates: [{ fn: 'COUNT' }, { fn: 'SUM', column: [0, 'appointment_id'] }, { fn: 'AVG', column: [0, 'appointment_id'] }, { fn: 'MIN', column: [0, 'appointment_date'] }, { fn: 'MAX', column: [0, 'appointment_date'] }] }
    const a = await runFragment(f, source({ appointments: appointments([[1, 7, '2026-01-02T10:00:00'], [2, 8, '2026-01-01T09:00:00'], [3, 7, '2026-01-05T08:00:00']]) }))
    const b = await runFragment(f, source({ appointments: appointments([[4, 7, '2025-12-31T23:00:00'], [5, 9, '2026-02-01T00:00:00']]) }))
    const merged = mergeResults(f, [a, b])
    const byDoctor = Object.fromEntries((merged.groups ?? []).map(g => [g.key[0], f.aggregates!.map((agg, i) => finish(agg.fn, g.partials[i]!))]))
    expect(byDoctor).toEqual({
      7: [3, 8, 8 / 3, '2025-12-31T23:00:00', '2026-01-05T08:00:00'],
      8: [1, 2, 2, '2026-01-01T09:00:00', '2026-01-01T09:00:00'],
      9: [1, 5, 5, '2026-02-01T00:00:00', '2026-02-01T00:00:00']
    })
    // Digests say which rows were read: the same rows, the same digest
    expect((await runFragment(f, source({ appointments: appointments([[4, 7, '2025-12-31T23:00:00'], [5, 9, '2026-02-01T00:00:00']]) }))).digest).toBe(b.digest)
    expect(a.digest).not.toBe(b.digest)
  })

  it('finishes a SUM as the sum: whole when whole (however large), decimals rounded only where the rounding is exact', () => {
    for (const total of [6912751943944, 1839753109406, 9_007_199_254_740_991, -6453654341416]) expect(finish('SUM', [total, 3])).toBe(total)
    expect(finish('SUM', [0.1 + 0.2, 2])).toBe(0.3)
    expect(finish('SUM', [12345678901.23, 2])).toBe(12345678901.23)
    expect(finish('SUM', [0, 0])).toBeNull()
  })

  it('joins on the owner and sorts and cuts rows to the limit, per range and merged', async () => {
    const doctors: Row[] = [7, 8].map(d => ({ doctor_id: d, name: `Dr ${d}`, specialization: 's', contact_number: '0123456789', email: 'e@x.org', availability: 'a' }))
    const f: Fragment = { table: 'appointments', joins: [{ table: 'doctors_info', column: 'doctor_id', on: [0, 'doctor_id'] }], columns: [[0, 'appointment_id'], [1, 'name'], [0, 'appointment_date']], orderBy: [{ at: 2, desc: true }], limit: 2 }
    const a = await runFragment(f, source({ appointments: appointments([[1, 7, '2026-01-02T10:00:00'], [2, 8, '2026-01-01T09:00:00']]), doctors_info: doctors }))
    const b = await runFragment(f, source({ appointments: appointments([[3, 7, '2026-01-05T08:00:00'], [4, 9, '2026-03-01T08:00:00']]), doctors_info: doctors }))
    // Appointment 4's doctor has no row: an inner join drops it
    expect(b.rows).toEqual([[3, 'Dr 7', '2026-01-05T08:00:00']])
    expect(mergeResults(f, [a, b]).rows).toEqual([[3, 'Dr 7', '2026-01-05T08:00:00'], [1, 'Dr 7', '2026-01-02T10:00:00']])
  })

  it('gives only the rows after a sort key (where a page stopped), NULLs last ascending and first descending', async () => {
    const rows: Row[] = ([[1, 'a'], [2, null], [3, 'b'], [4, 'a'], [5, null]] as Array<[number, string | null]>).map(([id, purpose]) => ({ appointment_id: id, purpose }))
    const f: Fragment = { table: 'appointments', columns: [[0, 'appointment_id'], [0, 'purpose']], orderBy: [{ at: 1, desc: false }, { at: 0, desc: false }] }
    const ids = async (g: Fragment): Promise<unknown[]> => ((await runFragment(g, source({ appointments: rows }))).rows ?? []).map(r => r[0])
    expect(await ids(f)).toEqual([1, 4, 3, 2, 5])
    expect(await ids({ ...f, after: ['a', 4] })).toEqual([3, 2, 5])
    expect(await ids({ ...f, after: [null, 2] })).toEqual([5])
    expect(await ids({ ...f, after: ['a', 1], limit: 2 })).toEqual([4, 3])
    const desc: Fragment = { ...f, orderBy: [{ at: 1, desc: true }, { at: 0, desc: false }] }
    expect(await ids(desc)).toEqual([2, 5, 3, 1, 4])
    expect(await ids({ ...desc, after: [null, 5] })).toEqual([3, 1, 4])
    expect(await ids({ ...desc, after: ['b', 3] })).toEqual([1, 4])
  })

  it('keeps the best rows of a limit over 50,000 from more than 100,000 (the bound is for rows without a limit)', async () => {
    const rows: Row[] = Array.from({ length: 130_000 }, (_, i) => ({ appointment_id: 130_000 - i, purpose: 'p' }))
    const f: Fragment = { table: 'appointments', columns: [[0, 'appointment_id']], orderBy: [{ at: 0, desc: false }], limit: 60_001 }
    const got = (await runFragment(f, source({ appointments: rows }))).rows ?? []
    expect(got).toHaveLength(60_001)
    expect(got[0]).toEqual([1])
    expect(got[60_000]).toEqual([60_001])
    await expect(runFragment({ ...f, limit: undefined }, source({ appointments: rows }))).rejects.toMatchObject({ code: 'INVALID', message: expect.stringMatching(/more than 100000 rows/) })
  }, 60_000)

  it('joins three tables on the owner, each on a column of one before it', async () => {
    const patients: Row[] = [1, 2].map(p => ({ patient_id: p, patient_name: `P${p}` }))
    const history: Row[] = ([[10, 1], [11, 1], [12, 2]] as Array<[number, number]>).map(([h, p]) => ({ history_id: h, patient_id: p }))
    const labs: Row[] = ([[20, 1], [21, 2], [22, 2], [23, 3]] as Array<[number, number]>).map(([l, p]) => ({ result_id: l, patient_id: p }))
    const f: Fragment = {
      table: 'patient_records',
      joins: [{ table: 'medical_history', column: 'patient_id', on: [0, 'patient_id'] }, { table: 'lab_results', column: 'patient_id', on: [1, 'patient_id'] }],
      columns: [[0, 'patient_name'], [1, 'history_id'], [2, 'result_id']],
      orderBy: [{ at: 1, desc: false }, { at: 2, desc: true }]
    }
    const r = await runFragment(f, source({ patient_records: patients, medical_history: history, lab_results: labs }))
    expect(r.rows).toEqual([['P1', 10, 20], ['P1', 11, 20], ['P2', 12, 22], ['P2', 12, 21]])
    const counted = await runFragment({ ...f, columns: undefined, orderBy: undefined, groupBy: [[0, 'patient_id']], aggregates: [{ fn: 'COUNT' }, { fn: 'MAX', column: [2, 'result_id'] }] }, source({ patient_records: patients, medical_history: history, lab_results: labs }))
    expect(counted.groups).toEqual([{ key: [1], partials: [2, 20] }, { key: [2], partials: [2, 22] }])
  })

  it('refuses a join that multiplies rows past a bound, instead of running (and holding the event loop) for ever', async () => {
    // One patient's 60 history rows joined to themselves seven times: 60^8 tuples.
    const history: Row[] = Array.from({ length: 60 }, (_, i) => ({ history_id: i + 1, patient_id: 1 }))
    const self = { table: 'medical_history', column: 'patient_id', on: [0, 'patient_id'] as [number, string] }
    const f: Fragment = { table: 'medical_history', joins: Array.from({ length: 7 }, () => self), aggregates: [{ fn: 'COUNT' }] }
    let ticks = 0
    const timer = setInterval(() => { ticks++ }, 10)
    const started = Date.now()
    try {
      await expect(runFragment(f, source({ medical_history: history }))).rejects.toMatchObject({ code: 'INVALID', message: expect.stringMatching(/more than [\d,]+ joined rows/) })
    } finally {
      clearInterval(timer)
    }
    // Other work ran meanwhile (the owner still answers its peers)
    if (Date.now() - started > 200) expect(ticks).toBeGreaterThan(0)
    // Within the bound, the whole count
    const small: Fragment = { ...f, joins: [self, self] }
    expect((await runFragment(small, source({ medical_history: history }))).groups).toEqual([{ key: [], partials: [60 ** 3] }])
  }, 60_000)

  it('checks what a peer sends: fragments and results', () => {
    expect(() => checkFragment({ table: 'nope' })).toThrow(/unknown table/)
    expect(() => checkFragment({ table: 'appointments', columns: [[0, 'password']] })).toThrow(/Unknown column/)
    expect(() => checkFragment({ table: 'appointments', columns: [[1, 'name']] })).toThrow(/joined/)
    expect(() => checkFragment({ table: 'appointments', aggregates: [{ fn: 'EVAL' }] })).toThrow(/aggregate/)
    expect(() => checkFragment({ table: 'appointments', filter: { op: 'exec', column: 'doctor_id' } })).toThrow(/condition/)
    expect(checkFragment({ table: 'appointments', joins: [{ table: 'doctors_info', column: 'doctor_id', on: [0, 'doctor_id'] }], columns: [[1, 'name']] }).joins?.[0]?.table).toBe('doctors_info')
    // A joined table whose rows would not live with the rows they join, or a join on a later table, is refused
    expect(() => checkFragment({ table: 'appointments', joins: [{ table: 'patient_records', column: 'patient_id', on: [0, 'patient_id'] }] })).toThrow(/does not place/)
    expect(() => checkFragment({ table: 'patient_records', joins: [{ table: 'lab_results', column: 'patient_id', on: [1, 'patient_id'] }] })).toThrow(/joined table/)
    expect(() => checkFragment({ table: 'patient_records', joins: Array.from({ length: 9 }, () => ({ table: 'lab_results', column: 'patient_id', on: [0, 'patient_id'] })) })).toThrow(/joins/)
    // A placed table joins on the key that places both it and the row it joins (else its rows are looked up under another patient)
    expect(() => checkFragment({ table: 'patient_records', joins: [{ table: 'lab_results', column: 'patient_id', on: [0, 'patient_name'] }] })).toThrow(/does not place/)
    expect(() => checkFragment({ table: 'medical_history', joins: [{ table: 'user_roles', column: 'role_id', on: [0, 'role_id'] }, { table: 'lab_results', column: 'patient_id', on: [1, 'role_id'] }] })).toThrow(/does not place/)
    expect(checkFragment({ table: 'medical_history', joins: [{ table: 'user_roles', column: 'role_id', on: [0, 'role_id'] }, { table: 'lab_results', column: 'patient_id', on: [0, 'patient_id'] }] }).joins).toHaveLength(2)
    // after: one scalar per sort key of a rows fragment
    const sorted = { table: 'appointments', columns: [[0, 'appointment_id']], orderBy: [{ at: 0, desc: false }] }
    expect(checkFragment({ ...sorted, after: [5] }).after).toEqual([5])
    for (const after of [[], [1, 2], [{}], 'x', [Number.NaN]]) expect(() => checkFragment({ ...sorted, after })).toThrow(/after/)
    expect(() => checkFragment({ table: 'appointments', columns: [[0, 'appointment_id']], after: [1] })).toThrow(/after/)
    expect(() => checkFragment({ table: 'appointments', aggregates: [{ fn: 'COUNT' }], after: [] })).toThrow(/after/)
    expect(() => checkFragmentResults({ results: [{ digest: 'x', rows: [[{}]] }] }, 1)).toThrow(/rows/)
    expect(() => checkFragmentResults({ results: [] }, 1)).toThrow(/answer/)
    expect(checkFragmentResults({ results: [{ digest: 'x', groups: [{ key: [7], partials: [3, [1, 2], null] }] }] }, 1)).toHaveLength(1)
  })
})

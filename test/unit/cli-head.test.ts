import { describe, expect, it } from 'vitest'
import { compareKeys, head } from '../../src/cli/head.js'
import { ForbiddenError } from '../../src/errors/index.js'

type Row = Record<string, unknown>

/** A table served a few rows a page in an order that is not the key's, as a list across the ring is */
function pagedSource (tables: Record<string, { primaryKey: string[], rows: Row[] }>, pageSize: number): Parameters<typeof head>[0] {
  return {
    tables: async () => ({ tables: Object.entries(tables).map(([name, t]) => ({ name, primaryKey: t.primaryKey })) }),
    query: async (table: string, _where?: unknown, options: { cursor?: string } = {}) => {
      if (table === 'secret') throw new ForbiddenError('your role may not read secret')
      const rows = tables[table]?.rows ?? []
      const from = Number(options.cursor ?? 0)
      const next = from + pageSize < rows.length ? String(from + pageSize) : null
      return { rows: rows.slice(from, from + pageSize), next }
    }
  }
}

describe('head', () => {
  it('keeps the smallest keys across every page, in key order, composite keys column by column', async () => {
    const ids = [42, 7, 1000, 3, 19, 8, 500, 1, 77, 2, 64]
    const pairs = [[3, 9], [1, 7], [3, 1], [1, 2], [2, 5]].map(([p, m]) => ({ patient_id: p, medication_id: m }))
    const source = pagedSource({
      patient_records: { primaryKey: ['patient_id'], rows: ids.map(id => ({ patient_id: id })) },
      patient_medications: { primaryKey: ['patient_id', 'medication_id'], rows: pairs },
      secret: { primaryKey: ['id'], rows: [] }
    }, 3)
    const [patients, meds, secret] = await head(source, 4)
    expect(patients?.rows.map(r => r.patient_id)).toEqual([1, 2, 3, 7])
    expect(patients?.total).toBe(ids.length)
    expect(meds?.rows.map(r => `${String(r.patient_id)}:${String(r.medication_id)}`)).toEqual(['1:2', '1:7', '2:5', '3:1'])
    expect(secret).toMatchObject({ table: 'secret', rows: [], error: { code: 'FORBIDDEN' } })
    expect(compareKeys({ a: 10 }, { a: 9 }, ['a'])).toBe(1)
  })
})

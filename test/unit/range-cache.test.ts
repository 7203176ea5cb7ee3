import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import type { Row } from '../../src/schema/index.js'
import { RangeCache } from '../../src/storage/range-cache.js'
import type { Store } from '../../src/storage/store.js'
import { openLocalNode, patientRow, tempDir, type LocalNode, type TempDir } from '../helpers/temp.js'

/** A load that answers `keys` once release() is called, counting how often the cache asked */
function loader (keys: string[]): { load: (limit: number) => Promise<string[]>, calls: () => number, release: () => void } {
  let calls = 0
  let open: () => void = () => {}
  const gate = new Promise<void>(resolve => { open = resolve })
  return {
    load: async limit => {
      calls++
      await gate
      return keys.slice(0, limit)
    },
    calls: () => calls,
    release: () => { open() }
  }
}

const P = '!o!appointments!doctor_id,appointment_date!7!'

describe('RangeCache', () => {
  it('reads a range once and answers it from memory until a write in it', async () => {
    const cache = new RangeCache({ watched: ['!o!'] })
    let calls = 0
    const load = async (): Promise<string[]> => { calls++; return ['a', 'b'] }
    expect(await cache.keys(P, load)).toEqual(['a', 'b'])
    expect(await cache.keys(P, load)).toEqual(['a', 'b'])
    expect(calls).toBe(1)
    // A write to another doctor's range, or outside the watched sublevels, changes nothing here.
    cache.writing([{ key: '!o!appointments!doctor_id,appointment_date!8!x!t!1' }, { key: '!r!whatever!' + P.slice(3) }])()
    expect(await cache.keys(P, load)).toEqual(['a', 'b'])
    expect(calls).toBe(1)
    const done = cache.writing([{ key: P + '2026-03-02T09:00:00.000Z!t!1' }])
    // While the batch is under way the range is read from LevelDB each time, and not kept.
    await cache.keys(P, load)
    await cache.keys(P, load)
    expect(calls).toBe(3)
    done()
    await cache.keys(P, load)
    await cache.keys(P, load)
    expect(calls).toBe(4)
    expect(cache.counts).toEqual({ hits: 3, loads: 4 })
  })

  it('does not keep a load that a write overlapped, whether it began before or during the write', async () => {
    const cache = new RangeCache({ watched: ['!o!'] })
    const slow = loader(['old'])
    // Began before the write, ended during it.
    const first = cache.keys(P, slow.load)
    const done = cache.writing([{ key: P + 'new!t!1' }])
    slow.release()
    expect(await first).toEqual(['old'])
    // Began during the write, ends after it.
    const again = loader(['old'])
    const second = cache.keys(P, again.load)
    done()
    again.release()
    expect(await second).toEqual(['old'])
    let calls = 0
    expect(await cache.keys(P, async () => { calls++; return ['new'] })).toEqual(['new'])
    expect(calls).toBe(1)
  })

  it('shares one load among concurrent readers, and starts a fresh one for readers after a write', async () => {
    const cache = new RangeCache({ watched: ['!o!'] })
    const slow = loader(['old'])
    const a = cache.keys(P, slow.load)
    const b = cache.keys(P, slow.load)
    cache.writing([{ key: P + 'x!t!1' }])()
    const fresh = cache.keys(P, async () => ['new'])
    slow.release()
    expect([await a, await b, await fresh]).toEqual([['old'], ['old'], ['new']])
    expect(slow.calls()).toBe(1)
  })

  it('leaves a range too large to hold to the caller, and holds at most maxKeys keys', async () => {
    const cache = new RangeCache({ watched: ['!o!'], maxRangeKeys: 3, maxKeys: 5 })
    let calls = 0
    const big = async (limit: number): Promise<string[]> => { calls++; return ['1', '2', '3', '4', '5'].slice(0, limit) }
    expect(await cache.keys(P, big)).toBeUndefined()
    expect(await cache.keys(P, big)).toBeUndefined()
    expect(calls).toBe(1)
    // Three ranges of two keys: the least recently used one goes.
    const two = (tag: string) => async (): Promise<string[]> => [tag + '1', tag + '2']
    await cache.keys('!o!t!a!', two('a'))
    await cache.keys('!o!t!b!', two('b'))
    await cache.keys('!o!t!a!', two('a'))
    await cache.keys('!o!t!c!', two('c'))
    let reloaded = 0
    await cache.keys('!o!t!a!', async () => { reloaded++; return [] })
    await cache.keys('!o!t!b!', async () => { reloaded++; return ['b1', 'b2'] })
    expect(reloaded).toBe(1)
  })
})

const doctor = (id: number): Row => ({ doctor_id: id, name: `Dr ${id}`, specialization: 'GP', contact_number: '0711111111', email: 'd@example.org', availability: 'weekdays' })
const appointment = (id: number, doctorId: number, date: string, patientId = 1): Row => ({ appointment_id: id, patient_id: patientId, doctor_id: doctorId, appointment_date: date, purpose: 'checkup' })
const cacheOf = (store: Store): RangeCache => (store as unknown as { rangeCache: RangeCache }).rangeCache

describe('queries through the range cache', () => {
  let dir: TempDir
  let node: LocalNode
  beforeEach(async () => {
    dir = await tempDir()
    node = await openLocalNode(dir.path)
    for (const d of [7, 8]) await node.db.insert('doctors_info', doctor(d))
    for (const p of [1, 2]) await node.db.insert('patient_records', patientRow(p))
  })
  afterEach(async () => {
    await node.close()
    await dir.remove()
  })

  const day = async (doctorId: number, date: string): Promise<number[]> => (await node.db.query('appointments', {
    where: [{ column: 'doctor_id', op: '=', value: doctorId }, { column: 'appointment_date', op: '>=', value: date }, { column: 'appointment_date', op: '<', value: `${date}T23:59:59.999Z` }],
    orderBy: 'appointment_date'
  })).rows.map(r => r.appointment_id as number)
  const history = async (patientId: number): Promise<number[]> => (await node.db.query('medical_history', { where: [{ column: 'patient_id', op: '=', value: patientId }] })).rows.map(r => r.history_id as number)

  it('answers a doctor\'s day and a patient\'s history right through inserts, moves and deletes', async () => {
    await node.db.insert('appointments', appointment(1, 7, '2026-03-02T10:00:00.000Z'))
    await node.db.insert('appointments', appointment(2, 7, '2026-03-02T09:00:00.000Z'))
    expect(await day(7, '2026-03-02')).toEqual([2, 1])
    expect(await day(7, '2026-03-02')).toEqual([2, 1])
    const hits = cacheOf(node.store).counts.hits
    expect(hits).toBeGreaterThan(0)
    await node.db.insert('appointments', appointment(3, 7, '2026-03-02T08:00:00.000Z'))
    expect(await day(7, '2026-03-02')).toEqual([3, 2, 1])
    await node.db.patch('appointments', '2', { appointment_date: '2026-03-03T09:00:00.000Z' })
    expect(await day(7, '2026-03-02')).toEqual([3, 1])
    expect(await day(7, '2026-03-03')).toEqual([2])
    await node.db.delete('appointments', '1')
    expect(await day(7, '2026-03-02')).toEqual([3])
    // Descending, and a cursor, read the same held range.
    await node.db.insert('appointments', appointment(4, 7, '2026-03-02T12:00:00.000Z'))
    const desc = await node.db.query('appointments', { where: [{ column: 'doctor_id', op: '=', value: 7 }], orderBy: 'appointment_date', desc: true, limit: 2 })
    expect(desc.rows.map(r => r.appointment_id)).toEqual([2, 4])
    const rest = await node.db.query('appointments', { where: [{ column: 'doctor_id', op: '=', value: 7 }], orderBy: 'appointment_date', desc: true, limit: 2, cursor: desc.next as string })
    expect(rest.rows.map(r => r.appointment_id)).toEqual([3])

    expect(await history(1)).toEqual([])
    await node.db.insert('medical_history', { history_id: 10, patient_id: 1, diagnosis: 'Flu', treatment: 'Rest', date_of_visit: '2026-03-02T10:00:00.000Z', role_id: null })
    expect(await history(1)).toEqual([10])
    await node.db.insert('medical_history', { history_id: 5, patient_id: 1, diagnosis: 'Flu', treatment: 'Rest', date_of_visit: '2026-03-01T10:00:00.000Z', role_id: null })
    expect(await history(1)).toEqual([5, 10])
    await node.db.delete('medical_history', '10')
    expect(await history(1)).toEqual([5])
    expect(cacheOf(node.store).counts.hits).toBeGreaterThan(hits)
  })

  it('never answers without a write that was acknowledged, with queries running all along', async () => {
    await node.db.insert('appointments', appointment(1, 7, '2026-03-02T10:00:00.000Z'))
    let stop = false
    // Readers keep loading and hitting the range while the writes land (each read a request of its own: a turn of the event loop).
    const readers = Array.from({ length: 4 }, async () => {
      while (!stop) {
        await day(7, '2026-03-02')
        await new Promise(resolve => setImmediate(resolve))
      }
    })
    try {
      for (let id = 2; id <= 40; id++) {
        await node.db.insert('appointments', appointment(id, 7, `2026-03-02T10:${String(id).padStart(2, '0')}:00.000Z`))
        // Acknowledged: every read from now on has it.
        expect(await day(7, '2026-03-02')).toContain(id)
      }
    } finally {
      stop = true
      await Promise.all(readers)
    }
    expect(await day(7, '2026-03-02')).toHaveLength(40)
  })
})

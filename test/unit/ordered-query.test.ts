import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { UnavailableError } from '../../src/errors/index.js'
import { mergeQuery } from '../../src/cluster/query-merge.js'
import { tokenOf } from '../../src/cluster/token.js'
import { encodeOrdered } from '../../src/schema/condition.js'
import { findTable, type Row } from '../../src/schema/index.js'
import type { RowQuery } from '../../src/storage/ordered.js'
import { mergeStates, type Store } from '../../src/storage/store.js'
import { HybridClock, nodeTag } from '../../src/storage/version.js'
import { openLocalNode, patientRow, tempDir, type LocalNode, type TempDir } from '../helpers/temp.js'

const doctor = (id: number): Row => ({ doctor_id: id, name: `Dr ${id}`, specialization: 'GP', contact_number: '0711111111', email: 'd@example.org', availability: 'weekdays' })
const appointment = (id: number, doctorId: number, date: string, patientId = 1): Row => ({ appointment_id: id, patient_id: patientId, doctor_id: doctorId, appointment_date: date, purpose: 'checkup' })

/** Every ordered-index entry the store holds for a table */
async function orderedKeys (store: Store, table: string): Promise<string[]> {
  const sub = (store as unknown as { ordered: { keys: (o: object) => AsyncIterable<string> } }).ordered
  const out: string[] = []
  for await (const k of sub.keys({ gt: table + '!', lt: table + '!\xff' })) out.push(k)
  return out
}

describe('ordered and ranged reads on one node', () => {
  let dir: TempDir
  let node: LocalNode
  beforeEach(async () => {
    dir = await tempDir()
    node = await openLocalNode(dir.path)
    await node.db.insert('doctors_info', doctor(7))
    await node.db.insert('doctors_info', doctor(8))
    for (const id of [30, 4, 17, 1, 22]) await node.db.insert('patient_records', patientRow(id, { patient_name: `Name ${String.fromCharCode(100 - id)}` }))
  })
  afterEach(async () => {
    await node.close()
    await dir.remove()
  })

  it('lists rows in primary-key order without an order, pages with a cursor', async () => {
    const first = await node.db.query('patient_records', { limit: 2 })
    expect(first.rows.map(r => r.patient_id)).toEqual([1, 4])
    const second = await node.db.query('patient_records', { limit: 2, cursor: first.next as string })
    expect(second.rows.map(r => r.patient_id)).toEqual([17, 22])
    const third = await node.db.query('patient_records', { limit: 2, cursor: second.next as string })
    expect(third.rows.map(r => r.patient_id)).toEqual([30])
    expect(third.next).toBeNull()
    // A cursor belongs to its order
    await expect(node.db.query('patient_records', { orderBy: 'patient_name', cursor: first.next as string })).rejects.toThrow(/order/)
  })

  it('orders by a column either way and filters ranges through the index', async () => {
    const byName = await node.db.query('patient_records', { orderBy: 'patient_name', desc: true })
    expect(byName.rows.map(r => r.patient_name)).toEqual([30, 4, 17, 1, 22].map(id => `Name ${String.fromCharCode(100 - id)}`).sort().reverse())
    for (const [i, date] of ['2026-03-02T09:30:00.000Z', '2026-03-01T15:00:00.000Z', '2026-03-02T08:00:00.000Z', '2026-03-03T10:00:00.000Z'].entries()) {
      await node.db.insert('appointments', appointment(100 + i, 7, date))
    }
    await node.db.insert('appointments', appointment(200, 8, '2026-03-02T09:00:00.000Z'))
    const day = await node.db.query('appointments', {
      where: [{ column: 'doctor_id', op: '=', value: '7' }, { column: 'appointment_date', op: '>=', value: '2026-03-02' }, { column: 'appointment_date', op: '<', value: '2026-03-03' }],
      orderBy: 'appointment_date'
    })
    expect(day.rows.map(r => r.appointment_id)).toEqual([102, 100])
    const plan = await node.store.query('appointments', { filter: { op: 'and', args: [{ op: '=', column: 'doctor_id', value: 7 }, { op: '>=', column: 'appointment_date', value: '2026-03-02' }] }, orderBy: 'appointment_date', limit: 10 })
    expect(plan.plan).toMatchObject({ kind: 'ordered', index: ['doctor_id', 'appointment_date'] })
    const notSeven = await node.db.query('appointments', { where: [{ column: 'doctor_id', op: '<>', value: 7 }] })
    expect(notSeven.rows.map(r => r.appointment_id)).toEqual([200])
    // No index gives the order: the best rows are still kept in order
    const byPurpose = await node.db.query('appointments', { orderBy: 'purpose', limit: 2 })
    expect(byPurpose.rows).toHaveLength(2)
    expect(byPurpose.next).not.toBeNull()
  })

  it('keeps ordered entries right through updates, deletes, conflicts, merges and a reindex', async () => {
    await node.db.insert('appointments', appointment(1, 7, '2026-03-02T09:30:00.000Z'))
    const table = findTable('appointments')!
    const col = table.columns.find(c => c.name === 'appointment_date')!
    const hasDate = async (d: string): Promise<boolean> => (await orderedKeys(node.store, 'appointments')).some(k => k.includes('!' + encodeOrdered(col, d) + '!'))
    expect(await hasDate('2026-03-02T09:30:00.000Z')).toBe(true)
    await node.db.patch('appointments', '1', { appointment_date: '2026-04-01T10:00:00.000Z' })
    expect(await hasDate('2026-03-02T09:30:00.000Z')).toBe(false)
    expect(await hasDate('2026-04-01T10:00:00.000Z')).toBe(true)
    expect(await orderedKeys(node.store, 'appointments')).toHaveLength(table.ordered.length)

    // A concurrent version from another writer: the winner's entries only
    const token = tokenOf('doctor_id:7')
    const state = (await node.store.get('appointments', token, '1'))!
    const other = new HybridClock(nodeTag('12D3KooWOtherWriter'), () => Date.now() + 60_000)
    const version = other.tick()
    await node.store.apply([{ table: 'appointments', id: '1', token, version, parents: state.heads[0]!.parents, row: appointment(1, 7, '2026-05-05T05:05:00.000Z') }])
    const after = (await node.store.get('appointments', token, '1'))!
    expect(after.heads).toHaveLength(2)
    expect(await hasDate('2026-05-05T05:05:00.000Z')).toBe(true)
    expect(await hasDate('2026-04-01T10:00:00.000Z')).toBe(false)
    expect(await orderedKeys(node.store, 'appointments')).toHaveLength(table.ordered.length)

    // A merged state whose head replaces both: its row's entries replace theirs
    const resolved = { table: 'appointments', id: '1', token, version: other.tick(), parents: after.heads.map(h => h.version), row: appointment(1, 7, '2026-06-06T06:06:00.000Z') }
    await node.store.merge([{ ...after, heads: [resolved], seen: [...after.seen, resolved.version], superseded: [...after.superseded, ...resolved.parents] }])
    expect(await hasDate('2026-06-06T06:06:00.000Z')).toBe(true)
    expect(await hasDate('2026-05-05T05:05:00.000Z')).toBe(false)

    await node.db.delete('appointments', '1')
    expect(await orderedKeys(node.store, 'appointments')).toEqual([])

    // A copy handed to its new owners and dropped here (rebalance), and an erased one (purge): no entries left
    await node.db.insert('appointments', appointment(2, 7, '2026-07-07T07:07:00Z'))
    await node.db.insert('appointments', appointment(3, 8, '2026-08-08T08:08:00Z'))
    expect(await orderedKeys(node.store, 'appointments')).toHaveLength(2 * table.ordered.length)
    expect(await node.store.drop((await node.store.get('appointments', token, '2'))!)).toBe(true)
    await node.db.purge('appointments', '3')
    expect(await orderedKeys(node.store, 'appointments')).toEqual([])

    // A lost entry and a stray one: reindex puts back the first and drops the second
    const before = await orderedKeys(node.store, 'patient_records')
    const sub = (node.store as unknown as { ordered: { del: (k: string) => Promise<void>, put: (k: string, v: number) => Promise<void> } }).ordered
    await sub.del(before[0] as string)
    await sub.put('patient_records!patient_id!' + encodeOrdered(table.columns[0]!, 999) + '!0000000000000000!999', 1)
    const seen: number[] = []
    const result = await node.store.reindex('patient_records', done => { seen.push(done) })
    expect(result).toMatchObject({ rows: 5, added: 1, removed: 1 })
    expect(seen.at(-1)).toBe(5)
    expect(await orderedKeys(node.store, 'patient_records')).toEqual(before)
  })
})

describe('k-way merge of owners\' sorted streams', () => {
  let dirs: TempDir[]
  let nodes: LocalNode[]
  beforeEach(async () => {
    dirs = [await tempDir(), await tempDir()]
    nodes = [await openLocalNode(dirs[0]!.path, { peerId: '12D3KooWMergeA' }), await openLocalNode(dirs[1]!.path, { peerId: '12D3KooWMergeB' })]
  })
  afterEach(async () => {
    for (const n of nodes) await n.close()
    for (const d of dirs) await d.remove()
  })

  it('merges ranges read once each, in key order, stops early, and resolves copies that disagree', async () => {
    // Both nodes hold every row (two copies of one replica set); the token space is cut in two ranges.
    for (const id of [9, 3, 14, 6, 11, 1, 8]) for (const n of nodes) await n.db.insert('patient_records', patientRow(id))
    const table = findTable('patient_records')!
    const fetched: Array<{ peer: string, ranges: number, limit: number }> = []
    const byPeer = new Map(nodes.map(n => [n.peerId, n.store]))
    const input = (request: RowQuery, need: number) => ({
      table,
      request,
      ranges: [{ from: '', to: '8', owners: nodes.map(n => n.peerId) }, { from: '8', to: '', owners: nodes.map(n => n.peerId) }],
      need,
      strict: false,
      self: nodes[0]!.peerId,
      usable: () => true,
      fetch: async (peer: string, q: RowQuery) => {
        fetched.push({ peer, ranges: q.tokenRanges!.length, limit: q.limit })
        const { plan: _, ...page } = await byPeer.get(peer)!.query('patient_records', q)
        return page
      },
      resolve: async (token: string, id: string) => mergeStates(await Promise.all(nodes.map(async n => await n.store.get('patient_records', token, id))))
    })
    const all = await mergeQuery(input({ limit: 100 }, 1))
    expect(all.rows.map(r => r.state.heads[0]!.row!.patient_id)).toEqual([1, 3, 6, 8, 9, 11, 14])
    // need 1: each range from one member only, this node first
    expect(fetched.every(f => f.ranges === 2 && f.peer === nodes[0]!.peerId)).toBe(true)

    fetched.length = 0
    const firstThree = await mergeQuery(input({ limit: 3 }, 2))
    expect(firstThree.rows.map(r => r.state.heads[0]!.row!.patient_id)).toEqual([1, 3, 6])
    expect(firstThree.next).toBeDefined()
    expect(fetched.every(f => f.limit <= 3)).toBe(true)
    const rest = await mergeQuery(input({ limit: 100, after: firstThree.next! }, 2))
    expect(rest.rows.map(r => r.state.heads[0]!.row!.patient_id)).toEqual([8, 9, 11, 14])

    // One copy renames patient 6 (sorting it last by name); the other lags. Ordered by name, 6 comes once, at its new place.
    await nodes[1]!.db.patch('patient_records', '6', { patient_name: 'Zed' })
    const named = await mergeQuery(input({ limit: 100, orderBy: 'patient_name' }, 2))
    const names = named.rows.map(r => r.state.heads[0]!.row!)
    expect(names.filter(r => r.patient_id === 6)).toEqual([expect.objectContaining({ patient_name: 'Zed' })])
    expect(names.at(-1)!.patient_id).toBe(6)
    expect(names).toHaveLength(7)
  })

  it('asks owners that answered lately before a silent one (a frozen machine would hold the query for a timeout)', async () => {
    for (const id of [2, 5, 7]) for (const n of nodes) await n.db.insert('patient_records', patientRow(id))
    const silent = '12D3KooWMergeSilent'
    const asked: string[] = []
    const byPeer = new Map(nodes.map(n => [n.peerId, n.store]))
    const page = await mergeQuery({
      table: findTable('patient_records')!,
      request: { limit: 100 },
      // The silent owner first on the ring and no load anywhere: only its liveness puts it last.
      ranges: [{ from: '', to: '', owners: [silent, ...nodes.map(n => n.peerId)] }],
      need: 2,
      strict: false,
      self: '12D3KooWMergeCoordinator',
      usable: () => true,
      alive: peer => peer !== silent,
      fetch: async (peer: string, q: RowQuery) => {
        asked.push(peer)
        const store = byPeer.get(peer)
        if (store === undefined) throw new UnavailableError(`${peer} did not answer`)
        const { plan: _, ...rest } = await store.query('patient_records', q)
        return rest
      },
      resolve: async () => undefined
    })
    expect(page.rows.map(r => r.state.heads[0]!.row!.patient_id)).toEqual([2, 5, 7])
    expect(asked.sort()).toEqual(nodes.map(n => n.peerId).sort())
  })
})

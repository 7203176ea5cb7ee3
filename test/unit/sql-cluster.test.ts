import { afterEach, describe, expect, it } from 'vitest'
import { createTestnet, type HarnessNode, type Testnet } from '../helpers/harness.js'
import { waitFor } from '../helpers/wait.js'
import { tokenOf } from '../../src/cluster/token.js'
import { runSql, type SqlAccess } from '../../src/query/sql.js'
import { findTable, type Row, type TableDef } from '../../src/schema/index.js'
import { mergeQuery } from '../../src/cluster/query-merge.js'
import { HybridClock, nodeTag } from '../../src/storage/version.js'

const ROWS = 120
const patient = (i: number): Row => ({
  patient_id: i, patient_name: `Patient ${String(i).padStart(3, '0')}`, date_of_birth: '1980-01-02', gender: i % 3 === 0 ? 'M' : 'F', address: 'x', contact_number: '0123456789', email: `p${i}@example.org`
})
const everything: SqlAccess = { readable: (t: TableDef) => t.columns.map(c => c.name), writable: () => {} }

let net: Testnet | undefined
afterEach(async () => { await net?.stop(); net = undefined })

async function fiveNodes (): Promise<Testnet> {
  const n = await createTestnet(5)
  net = n
  await n.converge(5)
  for (let i = 1; i <= ROWS; i++) await (n.nodes[i % 5] as HarnessNode).db.insert('patient_records', patient(i))
  return n
}

describe('ordered reads and SQL fragments on a five-node network (N=3, R=2)', () => {
  it('pages every row once, in key order, from any node, each range asked at two copies', async () => {
    const n = await fiveNodes()
    const node = n.nodes[3] as HarnessNode
    const seen: number[] = []
    let cursor: string | undefined
    for (let pages = 0; pages < 100; pages++) {
      const page = await node.db.query('patient_records', { limit: 17, ...(cursor === undefined ? {} : { cursor }) })
      seen.push(...page.rows.map(r => r.patient_id as number))
      if (page.next === null) break
      cursor = page.next
    }
    expect(seen).toEqual(Array.from({ length: ROWS }, (_, i) => i + 1))
    const raw = await node.coordinator.query('patient_records', { limit: 5 })
    // Each range from two of its three owners: every member asked once, with all its ranges in one stream.
    expect(new Set(raw.asked.map(a => a.peer)).size).toBe(raw.asked.length)
    expect(raw.singleShard).toBe(false)
    const one = await node.coordinator.query('patient_records', { filter: { op: '=', column: 'patient_id', value: 42 }, limit: 5 })
    expect(one.singleShard).toBe(true)
    expect(one.asked.length).toBeLessThanOrEqual(2)
    const owners = node.coordinator.owners('patient_records', tokenOf('patient_id:42'))
    for (const a of one.asked) expect(owners).toContain(a.peer)

    const byName = await node.db.query('patient_records', { orderBy: 'patient_name', desc: true, limit: 3 })
    expect(byName.rows.map(r => r.patient_id)).toEqual([ROWS, ROWS - 1, ROWS - 2])
  }, 60_000)

  it('aggregates on the owners, merged; a range whose copies disagree is recomputed from quorum reads', async () => {
    const n = await fiveNodes()
    const node = n.nodes[1] as HarnessNode
    const count = await runSql(node.db, 'SELECT gender, COUNT(*) AS n, MAX(patient_id) FROM patient_records GROUP BY gender ORDER BY gender', [], everything)
    expect(count.rows).toEqual([['F', ROWS - ROWS / 3, ROWS - 1], ['M', ROWS / 3, ROWS]])

    // One copy of patient 5 learns a newer version the others have not seen yet (as after a lost message).
    const token = tokenOf('patient_id:5')
    const ownerIds = node.coordinator.owners('patient_records', token)
    const holder = n.nodes.find(m => m.peerId === ownerIds[0]) as HarnessNode
    const state = (await holder.store.get('patient_records', token, '5'))!
    const clock = new HybridClock(nodeTag('12D3KooWLateWriter'), () => Date.now() + 60_000)
    await holder.store.apply([{ table: 'patient_records', id: '5', token, version: clock.tick(), parents: [state.heads[0]!.version], row: { ...patient(5), gender: 'M' } }])
    // Asked through the holder (its own copy first), the range's two copies disagree: it is recomputed at quorum.
    const answer = await holder.db.fragment({ table: 'patient_records', groupBy: [[0, 'gender']], aggregates: [{ fn: 'COUNT' }] })
    expect(answer.rechecked).toBeGreaterThan(0)
    const byGender = Object.fromEntries((answer.result.groups ?? []).map(g => [g.key[0], g.partials[0]]))
    expect(byGender).toEqual({ F: ROWS - ROWS / 3 - 1, M: ROWS / 3 + 1 })
  }, 60_000)

  it('a member that stops answering is replaced for its ranges', async () => {
    const n = await fiveNodes()
    const gone = n.nodes[4] as HarnessNode
    gone.membership.stop()
    await gone.coordinator.stop()
    await gone.store.close()
    const node = n.nodes[0] as HarnessNode
    const page = await node.db.query('patient_records', { limit: 1000 })
    expect(page.rows.map(r => r.patient_id)).toEqual(Array.from({ length: ROWS }, (_, i) => i + 1))
    const total = await runSql(node.db, 'SELECT COUNT(*) FROM patient_records', [], everything)
    expect(total.rows).toEqual([[ROWS]])
    await waitFor('the others to see the stopped member down', async () => node.membership.stateOf(gone.peerId) === 'down', 10_000)
    expect((await runSql(node.db, 'SELECT COUNT(*) FROM patient_records', [], everything)).rows).toEqual([[ROWS]])
  }, 60_000)
})

describe('ordered reads on a network of one', () => {
  it('reads its own copy without a merge, with the same rows, order and pages a merge gives', async () => {
    const n = await createTestnet(1)
    net = n
    await n.converge(1)
    const node = n.nodes[0] as HarnessNode
    for (let i = 1; i <= 30; i++) await node.db.insert('patient_records', patient(i))
    const raw = await node.coordinator.query('patient_records', { limit: 4, orderBy: 'patient_name', desc: true })
    expect(raw.asked).toEqual([{ peer: node.peerId, ranges: 1 }])
    expect(raw.rows.map(r => r.state.id)).toEqual(['30', '29', '28', '27'])
    // The same query merged from the store's one stream, as a network of several reads it.
    const merged = await mergeQuery({
      table: findTable('patient_records') as TableDef,
      request: { limit: 4, orderBy: 'patient_name', desc: true },
      ranges: [{ from: '', to: '', owners: [node.peerId] }],
      need: 1,
      strict: false,
      self: node.peerId,
      usable: () => true,
      fetch: async (_peer, q) => await node.store.query('patient_records', q),
      resolve: async () => undefined
    })
    expect(raw.rows.map(r => r.key)).toEqual(merged.rows.map(r => r.key))
    expect(raw.next).toBe(merged.next)
    const seen: number[] = []
    let cursor: string | undefined
    for (let pages = 0; pages < 20; pages++) {
      const page = await node.db.query('patient_records', { limit: 7, ...(cursor === undefined ? {} : { cursor }) })
      seen.push(...page.rows.map(r => r.patient_id as number))
      if (page.next === null) break
      cursor = page.next
    }
    expect(seen).toEqual(Array.from({ length: 30 }, (_, i) => i + 1))
    const one = await node.coordinator.query('patient_records', { filter: { op: '=', column: 'patient_id', value: 5 }, limit: 10 })
    expect(one.singleShard).toBe(true)
    expect(one.rows.map(r => r.state.id)).toEqual(['5'])
  }, 60_000)
})

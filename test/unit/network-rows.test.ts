import { describe, expect, it } from 'vitest'
import { parseReplicaMessage } from '../../src/cluster/messages.js'
import { HashRing } from '../../src/cluster/ring.js'
import { tokenOf } from '../../src/cluster/token.js'
import { createTestnet } from '../helpers/harness.js'
import { waitFor } from '../helpers/wait.js'
import { openLocalNode, patientRow, tempDir } from '../helpers/temp.js'

describe('row counts across the network', () => {
  it("the ring's ranges cover the token space once, each with the preference list of its tokens", () => {
    const ring = new HashRing({ vnodes: 32 })
    ring.setMembers(['a', 'b', 'c', 'd'].map(peerId => ({ peerId })))
    const all = ring.ranges(3)
    expect(all[0]?.from).toBe('')
    expect(all[all.length - 1]?.to).toBe('')
    // Each range starts where the previous one ends: no gap, no overlap.
    for (let i = 1; i < all.length; i++) expect(all[i]?.from, `range ${i}`).toBe(all[i - 1]?.to)
    for (let i = 0; i < 2000; i++) {
      const token = tokenOf(`patient_id:${i}`)
      const range = all.find(r => (r.from === '' || r.from <= token) && (r.to === '' || token < r.to))
      expect(new Set(range?.owners), token).toEqual(new Set(ring.preferenceList(token, 3)))
    }
    expect(new HashRing().ranges(3)).toEqual([])
  })

  it('a store counts the live rows of [from, to) token ranges, as the ring writes their bounds', async () => {
    const dir = await tempDir('ntk-count-')
    let node = await openLocalNode(dir.path)
    try {
      for (let i = 1; i <= 40; i++) await node.db.insert('patient_records', patientRow(i))
      await node.db.delete('patient_records', '40')
      expect(await node.store.countRowsIn([['', '']])).toEqual({ patient_records: 39 })
      const tokens = Array.from({ length: 39 }, (_, i) => tokenOf(`patient_id:${i + 1}`)).sort()
      const lo = tokens[5] as string
      const hi = tokens[20] as string
      // A token as a bound is that token; a token and NUL is just after it.
      expect(await node.store.countRowsIn([[lo, hi]])).toEqual({ patient_records: 15 })
      expect(await node.store.countRowsIn([[lo + '\u0000', hi + '\u0000']])).toEqual({ patient_records: 15 })
      expect(await node.store.countRowsIn([[lo, hi + '\u0000']])).toEqual({ patient_records: 16 })
      expect(await node.store.countRowsIn([['', lo], [hi, '']])).toEqual({ patient_records: 5 + 19 })
      expect(await node.store.countRowsIn([])).toEqual({})

      // Random ranges, and ranges cut at leaf edges (a leaf is a token's first 4 hex digits), against a count by hand.
      // A fixed-seed generator: a failure names its range and comes back on every run.
      let seed = 12345
      const next = (): number => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed / 2147483648 }
      const random = (): string => Array.from({ length: 16 }, () => '0123456789abcdef'[Math.floor(next() * 16)]).join('')
      const edges = tokens.flatMap(t => [t.slice(0, 4) + '000000000000', t.slice(0, 4) + 'ffffffffffff', t])
      const bounds = [...edges, ...Array.from({ length: 40 }, random)]
      const bound = (): string => { const b = bounds[Math.floor(next() * bounds.length)] as string; return next() < 0.3 ? b + '\u0000' : b }
      for (let i = 0; i < 300; i++) {
        const pair = [bound(), bound()].sort()
        const a = next() < 0.1 ? '' : pair[0] as string
        const b = next() < 0.1 ? '' : pair[1] as string
        if (a !== '' && b !== '' && a >= b) continue
        const inside = tokens.filter(t => (a === '' || t >= a) && (b === '' || t < b)).length
        expect(await node.store.countRowsIn([[a, b]]), `[${JSON.stringify(a)}, ${JSON.stringify(b)})`).toEqual(inside === 0 ? {} : { patient_records: inside })
      }
      // Counted the same after a reopen (the leaf counts are rebuilt from the table list).
      await node.close()
      node = await openLocalNode(dir.path)
      expect(await node.store.countRowsIn([[lo, hi]])).toEqual({ patient_records: 15 })
    } finally {
      await node.close()
      await dir.remove()
    }
  })

  it('counts every record once on any node, and says when a member did not answer', async () => {
    const net = await createTestnet(3, { replicas: 2, writeQuorum: 2, readQuorum: 1 })
    try {
      await net.converge(3)
      const [a, b, c] = net.nodes as [typeof net.nodes[0], typeof net.nodes[0], typeof net.nodes[0]]
      for (let i = 1; i <= 60; i++) await a.db.insert('patient_records', patientRow(i))
      for (let i = 1; i <= 25; i++) await b.db.insert('medical_history', { history_id: i, patient_id: i, diagnosis: 'asthma', treatment: 'inhaler', date_of_visit: '2026-01-02T10:00:00Z' })
      const local = await Promise.all(net.nodes.map(async n => (await n.store.countRows()).patient_records ?? 0))
      // Two copies of each: the sum of the stores is twice the network's rows.
      expect(local.reduce((x, y) => x + y, 0)).toBe(120)
      for (const n of net.nodes) {
        const counts = await n.coordinator.networkRowCounts()
        expect(counts).toMatchObject({ tables: { patient_records: 60, medical_history: 25 }, complete: true, unanswered: [] })
      }

      // A member that does not answer: its ranges are counted on their next owners, which hold the second copies.
      net.network.down(c.peerId)
      expect(await a.coordinator.networkRowCounts()).toEqual({ tables: { patient_records: 60, medical_history: 25 }, complete: true, unanswered: [c.peerId] })
      // Once it is marked down it is not even asked.
      c.membership.stop()
      await waitFor('the stopped member to be marked down', () => a.membership.stateOf(c.peerId) === 'down', 10_000)
      expect(await a.coordinator.networkRowCounts()).toEqual({ tables: { patient_records: 60, medical_history: 25 }, complete: true, unanswered: [] })

      // With both other owners of some ranges silent, those ranges are not counted: the answer says it is incomplete.
      net.network.down(b.peerId)
      const partial = await a.coordinator.networkRowCounts()
      expect(partial.complete).toBe(false)
      expect(partial.unanswered).toEqual([b.peerId])
      expect(partial.tables.patient_records ?? 0).toBeLessThan(60)
    } finally {
      await net.stop()
    }
  })

  it('a count message names well-formed token ranges only', () => {
    const ok = [['', ''], ['', '00000000000000ff\u0000'], ['00000000000000ff\u0000', ''], ['0000000000000001', '0000000000000002']]
    expect(parseReplicaMessage({ type: 'count', ranges: ok })).toEqual({ type: 'count', ranges: ok })
    for (const ranges of [undefined, 'x', [['0000000000000002', '0000000000000001']], [['zz', '']], [['']], [['0000000000000001\u0000\u0000', '']], Array.from({ length: 5000 }, () => ['', ''])]) {
      expect(() => parseReplicaMessage({ type: 'count', ranges }), JSON.stringify(ranges)?.slice(0, 60)).toThrow(/count/)
    }
  })
})

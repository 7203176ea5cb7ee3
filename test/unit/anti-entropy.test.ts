import { afterEach, describe, expect, it } from 'vitest'
import { join } from 'node:path'
import { createTestnet, type Testnet } from '../helpers/harness.js'
import { INDEXES, tempDir, type TempDir } from '../helpers/temp.js'
import { waitFor } from '../helpers/wait.js'
import { tokenOf } from '../../src/cluster/token.js'
import { ByteThrottle } from '../../src/cluster/throttle.js'
import { checkDigestPage, parseSyncMessage } from '../../src/cluster/messages.js'
import { loadOrCreateKeyFile } from '../../src/security/data-key.js'
import type { Row } from '../../src/schema/index.js'
import { Store, type VersionEntry } from '../../src/storage/store.js'
import { HybridClock } from '../../src/storage/version.js'
import { prng } from '../helpers/prng.js'

const patient = (i: number, address = `${i} Main St`): Row => ({
  patient_id: i, patient_name: `Patient ${i}`, date_of_birth: '1980-01-02', gender: 'F', address, contact_number: '0123456789', email: `p${i}@example.org`
})

let dir: TempDir | undefined
let net: Testnet | undefined
afterEach(async () => {
  await net?.stop(); net = undefined
  await dir?.remove(); dir = undefined
})

describe('range summary', () => {
  it('kept incrementally through applies, merges, drops, purges and audit inserts, equals a full recomputation, across a clean close and a crash', async () => {
    dir = await tempDir()
    const path = join(dir.path, 'store')
    const dataKey = await loadOrCreateKeyFile(join(dir.path, 'data.key'))
    let store = new Store({ path, sync: false, indexes: INDEXES, dataKey })
    await store.open()
    const clock = new HybridClock('ae')
    const other = new HybridClock('peer')
    const random = prng(7)
    const entry = (id: number, parents: string[], row: Row | null, c = clock): VersionEntry =>
      ({ table: 'patient_records', id: String(id), token: tokenOf(`patient_id:${id}`), version: c.tick(), parents, row })
    for (let step = 0; step < 300; step++) {
      const id = 1 + Math.floor(random() * 40)
      const token = tokenOf(`patient_id:${id}`)
      const state = await store.get('patient_records', token, String(id))
      const heads = state?.heads.map(h => h.version) ?? []
      const r = random()
      if (r < 0.45) {
        await store.apply([entry(id, heads, random() < 0.15 ? null : patient(id, `${step} Road`))])
      } else if (r < 0.7) {
        // A peer's concurrent version, merged as a whole state: a conflict beside the local head.
        const v = entry(id, [], patient(id, `${step} Lane`), other)
        await store.merge([{ table: 'patient_records', id: String(id), token, heads: [v], seen: [v.version], superseded: [] }])
      } else if (r < 0.85) {
        if (state !== undefined) await store.drop(state)
      } else if (r < 0.9) {
        await store.purge({ table: 'patient_records', id: String(id), token, version: clock.tick(), time: Date.now() })
      } else {
        await store.insertOnce([entry(1000 + step, [], patient(1000 + step))], { own: random() < 0.5 })
      }
    }
    expect((await store.recomputeSummary()).equals(store.summary)).toBe(true)
    const kept = store.summary.bucketDigests()
    // A clean close saves it; the next open takes it back (and removes it, so a crash leaves none behind).
    await store.close()
    store = new Store({ path, sync: false, indexes: INDEXES, dataKey })
    await store.open()
    expect(store.summary.bucketDigests()).toEqual(kept)
    await store.apply([entry(5000, [], patient(5000))])
    expect((await store.recomputeSummary()).equals(store.summary)).toBe(true)
    const afterWrite = store.summary.bucketDigests()
    // A crash: the process ends without close; the next open rebuilds the summary from the records.
    const crashed = store as unknown as { db: { close: () => Promise<void> } }
    await crashed.db.close()
    store = new Store({ path, sync: false, indexes: INDEXES, dataKey })
    await store.open()
    expect(store.summary.bucketDigests()).toEqual(afterWrite)
    await store.close()
  })

  it('refuses malformed sync messages', () => {
    expect(() => parseSyncMessage({ type: 'leaves', buckets: [256] })).toThrow(expect.objectContaining({ code: 'INVALID_MESSAGE' }))
    expect(() => parseSyncMessage({ type: 'digests', leaves: [65536], limit: 10 })).toThrow(expect.objectContaining({ code: 'INVALID_MESSAGE' }))
    expect(() => parseSyncMessage({ type: 'fetch', keys: ['0123456789abcdef!patient_records!x'] })).toThrow(expect.objectContaining({ code: 'INVALID_MESSAGE' }))
    expect(() => parseSyncMessage({ type: 'fetch', keys: Array.from({ length: 257 }, () => '0123456789abcdef!patient_records!1') })).toThrow(expect.objectContaining({ code: 'INVALID_MESSAGE' }))
    expect(() => parseSyncMessage({ type: 'digests', leaves: [4, 3], limit: 10 })).toThrow(expect.objectContaining({ code: 'INVALID_MESSAGE' }))
    expect(parseSyncMessage({ type: 'digests', leaves: [3, 4], limit: 10 })).toEqual({ type: 'digests', leaves: [3, 4], limit: 10 })
  })

  it('a byte throttle keeps the average rate: a debt is waited out', async () => {
    let now = 0
    const waits: number[] = []
    const t = new ByteThrottle({ bytesPerSecond: 1000, now: () => now, sleep: async ms => { waits.push(ms); now += ms } })
    await t.take(1000)
    await t.take(500)
    await t.take(500)
    expect(waits).toEqual([500, 500])
    now += 10_000
    await t.take(1000)
    expect(waits).toHaveLength(2)
  })
})

describe('anti-entropy', () => {
  it('two owners that differ in k records: one round sends exactly those, both ways, and their summaries are equal after', async () => {
    net = await createTestnet(2, { replicas: 3 })
    await net.converge(2)
    const [a, b] = net.nodes as [Testnet['nodes'][number], Testnet['nodes'][number]]
    for (let i = 1; i <= 20; i++) await a.db.insert('patient_records', patient(i))
    await waitFor('both nodes to hold the 20 shared rows', async () => Object.values(await b.store.countRows()).includes(20) && Object.values(await a.store.countRows()).includes(20))
    // A rebalance after the join would hand over records too: let it finish first.
    await net.settled()
    expect(b.store.summary.bucketDigests()).toEqual(a.store.summary.bucketDigests())
    const clock = new HybridClock('direct')
    const only = (i: number, address = `${i} Main St`): VersionEntry => ({ table: 'patient_records', id: String(i), token: tokenOf(`patient_id:${i}`), version: clock.tick(), parents: [], row: patient(i, address) })
    // Straight into one store: no hints, as if the other owner had lost them.
    await a.store.apply([101, 102, 103].map(i => only(i)))
    await b.store.apply([201, 202].map(i => only(i)))
    const changed = (await a.store.get('patient_records', tokenOf('patient_id:5'), '5'))!
    await a.store.apply([{ ...only(5, 'Moved'), parents: changed.heads.map(h => h.version) }])
    const result = await a.coordinator.antiEntropy.repair()
    expect(result.recordsSent).toBe(6)
    expect(result.ranges).toBe(256)
    expect(result.recordsCompared).toBeGreaterThanOrEqual(6)
    expect(b.store.summary.bucketDigests()).toEqual(a.store.summary.bucketDigests())
    expect((await b.store.get('patient_records', tokenOf('patient_id:5'), '5'))?.heads[0]?.row?.address).toBe('Moved')
    expect(await b.store.versions('patient_records', tokenOf('patient_id:5'), '5')).toHaveLength(2)
    expect(await a.store.get('patient_records', tokenOf('patient_id:201'), '201')).toBeDefined()
    // Digest pages of one record each walk a whole range's leaves, in key order, each key once.
    const token = tokenOf('patient_id:5')
    const bucket = parseInt(token.slice(0, 2), 16)
    const leaves = Array.from({ length: 256 }, (_, k) => bucket * 256 + k)
    const paged: string[] = []
    let after: string | undefined
    for (let page = 0; page < 100; page++) {
      const reply = checkDigestPage(await net.network.transport(a.peerId).request(b.peerId, 'sync', { type: 'digests', leaves, limit: 1, ...(after === undefined ? {} : { after }) }), leaves, after)
      paged.push(...reply.records.map(([k]) => k))
      if (reply.next === undefined) break
      after = reply.next
    }
    const local: string[] = []
    for (const leaf of leaves) local.push(...(await b.store.recordDigests(leaf, { limit: 1000 })).map(r => r.key))
    expect(paged).toEqual(local)
    expect(paged).toContain(`${token}!patient_records!5`)
    // A peer that is not a member gets nothing on the sync protocol.
    await expect(net.network.transport('12D3KooWstranger').request(a.peerId, 'sync', { type: 'summary' })).rejects.toMatchObject({ code: 'FORBIDDEN' })
    const again = await b.coordinator.antiEntropy.repair()
    expect(again).toMatchObject({ recordsSent: 0, recordsCompared: 0 })
    expect(b.coordinator.antiEntropy.status()).toMatchObject({ running: false, ranges: 256, rangesDiffering: 0, recordsSent: 0 })
    expect(a.coordinator.antiEntropy.status().lastRoundAt).toBeGreaterThan(0)
  })

  it('says how far a round under way is (status and the metrics read it), and nothing once it is over', async () => {
    net = await createTestnet(2, { replicas: 3 })
    await net.converge(2)
    await net.settled()
    const [a, b] = net.nodes as [Testnet['nodes'][number], Testnet['nodes'][number]]
    expect(a.coordinator.antiEntropy.status()).toMatchObject({ running: false })
    expect(a.coordinator.antiEntropy.status().progress).toBeUndefined()
    // The peer's sync answers wait: the round is caught before it compared anything.
    net.network.hold(b.peerId, 'sync')
    const round = a.coordinator.antiEntropy.repair()
    await waitFor('a round under way on the first node that knows how many ranges it compares', () => (a.coordinator.antiEntropy.status().progress?.total ?? 0) > 0)
    expect(a.coordinator.antiEntropy.status()).toMatchObject({ running: true, progress: { done: 0, total: 256 } })
    net.network.deliverHeld(b.peerId)
    expect(await round).toMatchObject({ ranges: 256 })
    const after = a.coordinator.antiEntropy.status()
    expect(after).toMatchObject({ running: false, ranges: 256 })
    expect(after.progress).toBeUndefined()
  })

  it('a node away longer than its hints last misses writes; after a repair every record is on all its owners with the same state', async () => {
    // No rebalance during the test (one can run when the node returns): only the repair may bring it up to date.
    net = await createTestnet(4, { replicas: 3, rebalanceDelayMs: 600_000 })
    await net.converge(4)
    const away = net.nodes[3]!
    const survivors = net.nodes.slice(0, 3)
    for (let i = 1; i <= 10; i++) await survivors[0]!.db.insert('patient_records', patient(i))
    net.network.down(away.peerId)
    await waitFor('the survivors to mark the away node down', () => survivors.every(n => n.membership.stateOf(away.peerId) === 'down'), 5000)
    for (let i = 11; i <= 40; i++) await survivors[i % 3]!.db.insert('patient_records', patient(i))
    for (let i = 1; i <= 5; i++) await survivors[0]!.db.patch('patient_records', String(i), { address: `moved ${i}` })
    // Hints are kept as replicas fail, a little after the writes: drop them until none come any more.
    let quiet = 0
    await waitFor('the survivors to stop keeping hints for the away node', async () => {
      let dropped = 0
      for (const n of survivors) dropped += await n.store.deleteHintsFor(away.peerId)
      quiet = dropped === 0 ? quiet + 1 : 0
      return quiet >= 4
    }, 5000, 50)
    net.network.up(away.peerId)
    await waitFor('every node to see the returned node alive', () => net!.nodes.every(n => n.membership.isAlive(away.peerId) && away.membership.isAlive(n.peerId)), 5000)
    const owned = (i: number): Testnet['nodes'] => net!.nodes.filter(n => n.coordinator.owners('patient_records', tokenOf(`patient_id:${i}`)).includes(n.peerId))
    const missing = async (): Promise<number> => {
      let n = 0
      for (let i = 1; i <= 40; i++) {
        if (!owned(i).includes(away)) continue
        const state = await away.store.get('patient_records', tokenOf(`patient_id:${i}`), String(i))
        if (state === undefined || (i <= 5 && state.heads[0]?.row?.address !== `moved ${i}`)) n++
      }
      return n
    }
    expect(await missing()).toBeGreaterThan(0)
    // One round repairs it; on a loaded machine a peer's sync may time out, and the next round does it.
    let sent = 0
    for (let round = 0; round < 3 && await missing() > 0; round++) {
      const result = await away.coordinator.antiEntropy.repair()
      sent += result.recordsSent
      if (away.coordinator.antiEntropy.status().failed === 0) break
    }
    expect(sent).toBeGreaterThan(0)
    expect(await missing()).toBe(0)
    for (let i = 1; i <= 40; i++) {
      const token = tokenOf(`patient_id:${i}`)
      const states = await Promise.all(owned(i).map(async n => await n.store.get('patient_records', token, String(i))))
      expect(states).toHaveLength(3)
      const first = states[0]!
      for (const s of states) {
        expect(s?.heads).toEqual(first.heads)
        expect(new Set(s?.seen)).toEqual(new Set(first.seen))
      }
    }
  })
})

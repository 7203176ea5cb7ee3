import { randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { Level } from 'level'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { tokenOf } from '../../src/cluster/token.js'
import { LOCATOR_TABLE } from '../../src/cluster/messages.js'
import type { Row } from '../../src/schema/index.js'
import { Store, type VersionEntry } from '../../src/storage/store.js'
import { HybridClock } from '../../src/storage/version.js'
import { createTestnet, type Testnet } from '../helpers/harness.js'
import { allBytes, unique } from '../helpers/files.js'
import { openLocalNode, patientRow, tempDir, type TempDir } from '../helpers/temp.js'
import { testIdentity } from '../helpers/identity.js'
import { waitFor } from '../helpers/wait.js'

let dir: TempDir
beforeEach(async () => { dir = await tempDir('ntk-purge-') })
afterEach(async () => { await dir.remove() })


/** Every key and value in the database at `path`, read with its store closed */
async function rawEntries (path: string): Promise<Array<[string, string]>> {
  const db = new Level<string, string>(path)
  try {
    const out: Array<[string, string]> = []
    for await (const [k, v] of db.iterator()) out.push([k, v])
    return out
  } finally {
    await db.close()
  }
}


describe('purge: the store', () => {
  const INDEXES = { patient_records: ['email', 'gender'] }
  const clock = new HybridClock('purge')
  const ID = 73_019
  const TOKEN = tokenOf(`patient_id:${ID}`)
  const entry = (id: number, row: Row | null, parents: string[] = []): VersionEntry =>
    ({ table: 'patient_records', id: String(id), token: tokenOf(`patient_id:${id}`), version: clock.tick(), parents, row })

  it('erases every version, index entry and hint of a record, keeps only a marker, and refuses its versions after', async () => {
    const path = join(dir.path, 'store')
    const key = randomBytes(32)
    const store = new Store({ path, sync: false, indexes: INDEXES, dataKey: key })
    await store.open()
    const name1 = unique('n')
    const name2 = unique('m')
    const hinted = unique('k')
    const gender = unique('g').slice(0, 10)
    const v1 = entry(ID, patientRow(ID, { patient_name: name1, gender }))
    const v2 = entry(ID, patientRow(ID, { patient_name: name2, gender }), [v1.version])
    const control = unique('c')
    const other = entry(5, patientRow(5, { patient_name: control }))
    await store.apply([v1, other])
    await store.apply([v2])
    const v3 = entry(ID, patientRow(ID, { patient_name: hinted, gender }), [v2.version])
    await store.addHint('12D3KooWdown', [v3, { ...other, version: clock.tick(), parents: [other.version] }])
    await store.addHint('12D3KooWdown', [v3])
    expect(store.hintCount('12D3KooWdown')).toBe(2)
    const before = (await store.get('patient_records', TOKEN, String(ID)))!

    const marker = { table: 'patient_records', id: String(ID), token: TOKEN, version: clock.tick(), time: Date.now() }
    expect(await store.purge(marker)).toBe(true)
    expect(await store.get('patient_records', TOKEN, String(ID))).toBeUndefined()
    expect(await store.versions('patient_records', TOKEN, String(ID))).toEqual([])
    expect((await store.scan('patient_records', { where: { gender }, limit: 10 })).rows).toEqual([])
    expect(await store.countRows()).toEqual({ patient_records: 1 })
    // The hint that held only this record is gone; the other keeps the other record's version.
    expect(store.hintCount('12D3KooWdown')).toBe(1)
    expect((await store.hintsFor('12D3KooWdown', 10)).map(h => h.entries.map(e => e.id))).toEqual([['5']])
    // Late copies of the erased versions do not bring it back; a version after the purge is a new record.
    expect(await store.apply([v1, v2, v3])).toEqual(['purged', 'purged', 'purged'])
    expect(await store.merge([before])).toEqual(['known'])
    expect(await store.get('patient_records', TOKEN, String(ID))).toBeUndefined()
    // A write that read the row before the purge and lands after it names a purged version as its parent: refused too.
    const late = entry(ID, patientRow(ID, { patient_name: unique('l'), gender }), [v2.version])
    expect(late.version > marker.version).toBe(true)
    expect(await store.apply([late])).toEqual(['purged'])
    expect(await store.merge([{ table: 'patient_records', id: String(ID), token: TOKEN, heads: [late], seen: [late.version], superseded: [v2.version] }])).toEqual(['known'])
    expect(await store.get('patient_records', TOKEN, String(ID))).toBeUndefined()
    await store.close()

    const raw = await rawEntries(path)
    const mentions = raw.filter(([k, v]) => k.includes(`!${ID}`) || v.includes(`"${ID}"`) || v.includes(String(ID)))
    expect(mentions.map(([k]) => k.slice(0, 3))).toEqual(['!p!'])
    expect(JSON.parse(mentions[0]![1])).toMatchObject({ table: 'patient_records', id: String(ID), token: TOKEN })
    expect(Object.keys(JSON.parse(mentions[0]![1])).sort()).toEqual(['id', 'table', 'time', 'token', 'version'])
    expect(raw.filter(([k]) => k.includes(gender))).toEqual([])
    // Compacted: the erased row values are in no file of the database either. (A deleted key, such as
    // an index entry's, can stay in a LevelDB delete marker until compaction reaches the last level;
    // index keys of sensitive columns are HMACs.)
    const bytes = await allBytes(path)
    expect([name1, name2, hinted].filter(v => bytes.includes(Buffer.from(v)))).toEqual([])
    // The control row is still stored. It is usually readable in the files too, but about one run in
    // twenty LevelDB's block compression leaves no literal copy of it, so the files alone cannot say.
    expect(bytes.includes(Buffer.from(control)) || raw.some(([, v]) => v.includes(control))).toBe(true)

    // The marker holds across a restart.
    const again = new Store({ path, sync: false, indexes: INDEXES, dataKey: key })
    await again.open()
    try {
      expect(await again.apply([v2])).toEqual(['purged'])
      const fresh = entry(ID, patientRow(ID))
      expect(await again.apply([fresh])).toEqual(['applied'])
      expect((await again.get('patient_records', TOKEN, String(ID)))?.heads).toEqual([fresh])
    } finally {
      await again.close()
    }
  })
})

describe('purge: the database', () => {
  it('erases a row with its history, locator and key; refuses a row still referenced', async () => {
    const node = await openLocalNode(dir.path)
    try {
      await node.db.insert('patient_records', patientRow(1))
      await node.db.insert('medical_history', { history_id: 2, patient_id: 1, diagnosis: 'd', treatment: 't', date_of_visit: '2026-01-05T09:00:00Z' })
      await node.db.patch('medical_history', '2', { diagnosis: 'd2' })
      await expect(node.db.purge('patient_records', '1')).rejects.toMatchObject({ code: 'CONFLICT' })
      expect(await node.db.purge('medical_history', '2')).toEqual({ table: 'medical_history', id: '2', purged: true, replicas: 1 })
      await expect(node.db.get('medical_history', '2')).rejects.toMatchObject({ code: 'NOT_FOUND' })
      await expect(node.db.history('medical_history', '2')).rejects.toMatchObject({ code: 'NOT_FOUND' })
      const locator = await node.store.versions(LOCATOR_TABLE, tokenOf('key:medical_history.2'), 'medical_history.2')
      expect(locator).toEqual([])
      await expect(node.db.purge('medical_history', '2')).rejects.toMatchObject({ code: 'NOT_FOUND' })
      await expect(node.db.purge('medical_history', 'x')).rejects.toMatchObject({ code: 'INVALID' })
      await expect(node.db.purge('nope', '2')).rejects.toMatchObject({ code: 'UNKNOWN_TABLE' })
      // The key is free again; a deleted row can be purged too (its locator's history names its shard).
      await node.db.insert('medical_history', { history_id: 2, patient_id: 1, diagnosis: 'again', treatment: 't', date_of_visit: '2026-01-05T09:00:00Z' })
      await node.db.delete('medical_history', '2')
      expect((await node.db.purge('medical_history', '2')).purged).toBe(true)
      await expect(node.db.history('medical_history', '2')).rejects.toMatchObject({ code: 'NOT_FOUND' })
      // A user's unique name is given back with it.
      await node.db.insert('user_roles', { role_id: 1, role_name: 'clerk' })
      await node.db.insert('users', { user_id: 3, user_name: 'ann', role_id: 1 })
      await node.db.purge('users', '3')
      await node.db.insert('users', { user_id: 4, user_name: 'ann', role_id: 1 })
    } finally {
      await node.close()
    }
  })
})

describe('purge: the cluster', () => {
  let net: Testnet | undefined
  afterEach(async () => { await net?.stop(); net = undefined })

  it('reaches a replica that was down, and no stale copy brings the row back', async () => {
    net = await createTestnet(3, { replicas: 3, writeQuorum: 2, readQuorum: 2 })
    await net.converge(3)
    const [a, b, c] = net.nodes as [Testnet['nodes'][number], Testnet['nodes'][number], Testnet['nodes'][number]]
    await a.db.insert('patient_records', patientRow(11))
    await a.db.insert('medical_history', { history_id: 12, patient_id: 11, diagnosis: 'first', treatment: 't', date_of_visit: '2026-01-05T09:00:00Z' })
    const token = tokenOf('patient_id:11')
    await waitFor('every node to hold history row 12', async () => (await Promise.all(net!.nodes.map(async n => await n.store.get('medical_history', token, '12')))).every(s => s !== undefined))
    const stale = (await c.store.get('medical_history', token, '12'))!
    const staleVersions = await c.store.versions('medical_history', token, '12')

    net.network.down(c.peerId)
    await waitFor('a and b to see c down', () => a.membership.stateOf(c.peerId) === 'down' && b.membership.stateOf(c.peerId) === 'down')
    // A write c misses: a hint holding the row waits for it.
    await a.db.patch('medical_history', '12', { diagnosis: 'second' })
    await waitFor('a hint for c', () => a.store.hintCount(c.peerId) + b.store.hintCount(c.peerId) > 0)

    expect(await b.db.purge('medical_history', '12')).toEqual({ table: 'medical_history', id: '12', purged: true, replicas: 2 })
    for (const n of [a, b]) {
      expect(await n.store.get('medical_history', token, '12')).toBeUndefined()
      expect(await n.store.versions('medical_history', token, '12')).toEqual([])
      const hints = await n.store.hintsFor(c.peerId, 100)
      expect(hints.flatMap(h => h.entries).filter(e => e.table === 'medical_history')).toEqual([])
    }
    // Still on c, which was down.
    expect(await c.store.get('medical_history', token, '12')).toBeDefined()

    net.network.up(c.peerId)
    await waitFor('c to erase history row 12 once back', async () => await c.store.get('medical_history', token, '12') === undefined && (await c.store.versions('medical_history', token, '12')).length === 0)
    await waitFor('the purge hints for c to be delivered', () => a.store.hintCount(c.peerId) === 0 && b.store.hintCount(c.peerId) === 0)
    expect(c.store.purgeMarker('medical_history', token, '12')).toBeDefined()

    // A replica that had not erased it yet hands its copy over (rebalance) or repairs a reader with it: refused everywhere.
    // Sent as member a (peers check members' messages; outsiders get nothing at all).
    const peer = net.network.transport(a.peerId)
    for (const n of [a, b, c]) {
      await peer.request(n.peerId, 'replica', { type: 'apply', groups: [staleVersions] })
      await peer.request(n.peerId, 'replica', { type: 'merge', states: [stale] })
      expect(await n.store.get('medical_history', token, '12')).toBeUndefined()
      expect(await n.store.versions('medical_history', token, '12')).toEqual([])
    }
    for (const n of [a, b, c]) await expect(n.db.get('medical_history', '12')).rejects.toMatchObject({ code: 'NOT_FOUND' })
    await expect(c.db.history('medical_history', '12')).rejects.toMatchObject({ code: 'NOT_FOUND' })
    expect((await a.db.get('patient_records', '11')).row.patient_id).toBe(11)
  })

  it('checks purge messages like every replica message', async () => {
    net = await createTestnet(1)
    const [a] = net.nodes as [Testnet['nodes'][number]]
    const peer = net.network.transport(a.peerId)
    const good = { type: 'purge', table: 'patient_records', id: '1', token: tokenOf('patient_id:1'), version: '000001732300000.000000.abc' }
    await expect(net.network.transport(testIdentity().peerId).request(a.peerId, 'replica', good)).rejects.toMatchObject({ code: 'FORBIDDEN' })
    for (const bad of [
      { ...good, table: 'nope' }, { ...good, id: 'x' }, { ...good, token: 'zz' }, { ...good, version: 'v1' },
      { ...good, table: '_locator', id: 'patient_records.1' },
      // the audit trail is never erased
      { ...good, table: '_audit', id: `${a.peerId}.1` }
    ]) {
      await expect(peer.request(a.peerId, 'replica', bad)).rejects.toMatchObject({ code: 'INVALID_MESSAGE' })
    }
    expect(await peer.request(a.peerId, 'replica', good)).toEqual({ ok: true, held: false })
  })
})

import { randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { Level } from 'level'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { tokenOf } from '../../src/cluster/token.js'
import { NtsoekheError } from '../../src/errors/index.js'
import type { Row, Value } from '../../src/schema/index.js'
import { KNOWN_WINDOW, STORE_FORMAT, Store, winner, type VersionEntry } from '../../src/storage/store.js'
import { HybridClock } from '../../src/storage/version.js'
import { tempDir, type TempDir } from '../helpers/temp.js'

const INDEXES = { appointments: ['patient_id', 'doctor_id'] }
const KEY = randomBytes(32)
const DOCTOR_7 = tokenOf('doctor_id:7')

let dir: TempDir
let path: string
let store: Store
let clock: HybridClock

beforeEach(async () => {
  dir = await tempDir('ntk-store-')
  path = join(dir.path, 'store')
  store = new Store({ path, sync: false, indexes: INDEXES, dataKey: KEY })
  await store.open()
  clock = new HybridClock('test')
})

afterEach(async () => {
  await store.close()
  await dir.remove()
})

function appointment (id: number, patient = 1, doctor = 7): Row {
  return { appointment_id: id, patient_id: patient, doctor_id: doctor, appointment_date: '2026-01-05T09:00:00Z', purpose: 'checkup' }
}

/** A new version of appointment `id` (on doctor 7's token unless told) */
function entry (id: number, parents: string[], row: Row | null, token = DOCTOR_7): VersionEntry {
  return { table: 'appointments', id: String(id), token, version: clock.tick(), parents, row }
}

/** The keys in one of the store's sublevels, read from LevelDB itself with the store closed */
async function rawKeys (sublevel: string): Promise<string[]> {
  await store.close()
  const db = new Level<string, string>(path)
  try {
    const prefix = `!${sublevel}!`
    const keys: string[] = []
    for await (const k of db.keys({ gt: prefix, lt: prefix + '\xff' })) keys.push(k.slice(prefix.length))
    return keys
  } finally {
    await db.close()
    store = new Store({ path, sync: false, indexes: INDEXES, dataKey: KEY })
    await store.open()
  }
}

describe('store: versions', () => {
  it('puts and gets a record', async () => {
    const v1 = entry(1, [], appointment(1))
    expect(await store.apply([v1])).toEqual(['applied'])
    const state = await store.get('appointments', DOCTOR_7, '1')
    expect(state?.heads).toEqual([v1])
    expect(winner(state!)?.row).toEqual(appointment(1))
    expect(await store.get('appointments', DOCTOR_7, '2')).toBeUndefined()
    expect(await store.get('appointments', tokenOf('doctor_id:8'), '1')).toBeUndefined()
  })

  it('keeps every version in history, oldest first', async () => {
    const v1 = entry(1, [], appointment(1))
    const v2 = entry(1, [v1.version], { ...appointment(1), purpose: 'follow-up' })
    const v3 = entry(1, [v2.version], { ...appointment(1), purpose: 'x-ray' })
    await store.apply([v1])
    await store.apply([v2])
    await store.apply([v3])
    expect((await store.versions('appointments', DOCTOR_7, '1')).map(v => v.version)).toEqual([v1.version, v2.version, v3.version])
    expect((await store.get('appointments', DOCTOR_7, '1'))?.heads).toEqual([v3])
  })

  it('hides a tombstone from scans but keeps it in history', async () => {
    const v1 = entry(1, [], appointment(1))
    const v2 = entry(1, [v1.version], null)
    await store.apply([v1, entry(2, [], appointment(2))])
    expect((await store.scan('appointments', { limit: 10 })).rows).toHaveLength(2)
    await store.apply([v2])
    const scan = await store.scan('appointments', { limit: 10 })
    expect(scan.rows.map(r => r.state.id)).toEqual(['2'])
    expect((await store.scan('appointments', { where: { patient_id: 1 }, limit: 10 })).rows.map(r => r.state.id)).toEqual(['2'])
    expect(await store.countRows()).toEqual({ appointments: 1 })
    const history = await store.versions('appointments', DOCTOR_7, '1')
    expect(history.map(v => v.row === null)).toEqual([false, true])
    expect(winner((await store.get('appointments', DOCTOR_7, '1'))!)?.row).toBeNull()
  })

  it('treats a version applied twice as a duplicate', async () => {
    const v1 = entry(1, [], appointment(1))
    expect(await store.apply([v1])).toEqual(['applied'])
    const commits = store.commits.batches
    expect(await store.apply([v1])).toEqual(['duplicate'])
    expect(await store.apply([v1, v1])).toEqual(['duplicate', 'duplicate'])
    expect(store.commits.batches).toBe(commits)
    expect(await store.versions('appointments', DOCTOR_7, '1')).toHaveLength(1)
    const v2 = entry(1, [v1.version], { ...appointment(1), purpose: 'b' })
    await store.apply([v2])
    expect(await store.apply([v1])).toEqual(['duplicate'])
    expect((await store.get('appointments', DOCTOR_7, '1'))?.heads).toEqual([v2])
  })

  it('keeps two concurrent heads as a conflict, the highest version winning', async () => {
    const v1 = entry(1, [], appointment(1))
    const a = entry(1, [v1.version], { ...appointment(1), purpose: 'a' })
    const b = entry(1, [v1.version], { ...appointment(1), purpose: 'b' })
    await store.apply([v1])
    // The lower version arrives last: it must still be kept, and must not win.
    expect(await store.apply([b])).toEqual(['applied'])
    expect(await store.apply([a])).toEqual(['applied'])
    const state = await store.get('appointments', DOCTOR_7, '1')
    expect(state?.heads.map(h => h.version)).toEqual([b.version, a.version])
    expect(winner(state!)?.row?.purpose).toBe('b')
    const scan = await store.scan('appointments', { limit: 10 })
    expect(scan.rows.map(r => winner(r.state)?.row?.purpose)).toEqual(['b'])
  })

  it('resolves a conflict with a version that names both heads', async () => {
    const v1 = entry(1, [], appointment(1))
    const a = entry(1, [v1.version], { ...appointment(1), purpose: 'a' })
    const b = entry(1, [v1.version], { ...appointment(1), purpose: 'b' })
    await store.apply([v1, a, b])
    expect((await store.get('appointments', DOCTOR_7, '1'))?.heads).toHaveLength(2)
    const merged = entry(1, [a.version, b.version], { ...appointment(1), purpose: 'a+b' })
    await store.apply([merged])
    expect((await store.get('appointments', DOCTOR_7, '1'))?.heads).toEqual([merged])
    expect(await store.versions('appointments', DOCTOR_7, '1')).toHaveLength(4)
  })

  it('sends an older version that arrives after its descendant to history only', async () => {
    const v1 = entry(1, [], appointment(1))
    const v2 = entry(1, [v1.version], { ...appointment(1), purpose: 'later' })
    expect(await store.apply([v2])).toEqual(['applied'])
    expect(await store.apply([v1])).toEqual(['history'])
    expect((await store.get('appointments', DOCTOR_7, '1'))?.heads).toEqual([v2])
    expect((await store.versions('appointments', DOCTOR_7, '1')).map(v => v.version)).toEqual([v1.version, v2.version])
    expect((await store.scan('appointments', { where: { purpose: 'checkup' }, limit: 10 })).rows).toEqual([])
  })

  it('applies a transaction all or nothing when build throws', async () => {
    const keys = [{ table: 'appointments', token: DOCTOR_7, id: '1' }, { table: 'appointments', token: DOCTOR_7, id: '2' }]
    await expect(store.transact(keys, () => { throw new NtsoekheError('CONFLICT', 'no') })).rejects.toMatchObject({ code: 'CONFLICT' })
    await expect(store.transact(keys, async () => {
      await Promise.resolve()
      throw new Error('late failure')
    })).rejects.toThrow('late failure')
    expect(await store.get('appointments', DOCTOR_7, '1')).toBeUndefined()
    expect(await store.countRows()).toEqual({})
    // An entry for a record it did not lock is refused, and nothing of the batch lands.
    await expect(store.transact(keys.slice(0, 1), () => [entry(1, [], appointment(1)), entry(3, [], appointment(3))])).rejects.toThrow(/not locked/)
    expect(await store.get('appointments', DOCTOR_7, '1')).toBeUndefined()
    // The locks were released: the same keys can be written now.
    const outcomes = await store.transact(keys, states => {
      expect([...states.values()]).toEqual([undefined, undefined])
      return [entry(1, [], appointment(1)), entry(2, [], appointment(2))]
    })
    expect(outcomes).toEqual(['applied', 'applied'])
    expect(await store.countRows()).toEqual({ appointments: 2 })
  })

  it('serialises transactions on the same record', async () => {
    const key = [{ table: 'appointments', token: DOCTOR_7, id: '1' }]
    await store.apply([entry(1, [], { ...appointment(1), patient_id: 0 })])
    // 50 read-modify-writes that each add one to patient_id: none may read a stale value.
    await Promise.all(Array.from({ length: 50 }, async () => await store.transact(key, states => {
      const head = winner(states.values().next().value!)!
      return [entry(1, [head.version], { ...head.row!, patient_id: (head.row!.patient_id as number) + 1 })]
    })))
    const state = await store.get('appointments', DOCTOR_7, '1')
    expect(state?.heads).toHaveLength(1)
    expect(winner(state!)?.row?.patient_id).toBe(50)
  })

  it('refuses to work when closed', async () => {
    await store.close()
    await expect(store.get('appointments', DOCTOR_7, '1')).rejects.toMatchObject({ code: 'UNAVAILABLE' })
    await expect(store.apply([entry(1, [], appointment(1))])).rejects.toMatchObject({ code: 'UNAVAILABLE' })
    store = new Store({ path, sync: false, indexes: INDEXES, dataKey: KEY })
    await store.open()
  })
})

describe('store: indexes and scans', () => {
  it('scans by an indexed column and keeps 7 apart from "7"', async () => {
    await store.apply([entry(1, [], appointment(1, 5)), entry(2, [], appointment(2, 6)), entry(3, [], appointment(3, 5))])
    const rows = await store.scan('appointments', { where: { patient_id: 5 }, limit: 10 })
    expect(rows.rows.map(r => r.state.id).sort()).toEqual(['1', '3'])
    expect((await store.scan('appointments', { where: { patient_id: '5' }, limit: 10 })).rows).toEqual([])
    // Several filters: the index narrows, the rest filter.
    expect((await store.scan('appointments', { where: { patient_id: 5, appointment_id: 3 }, limit: 10 })).rows.map(r => r.state.id)).toEqual(['3'])
    // Filters on columns without an index scan the table.
    expect((await store.scan('appointments', { where: { purpose: 'checkup' }, limit: 10 })).rows).toHaveLength(3)
    expect((await store.scan('appointments', { where: { purpose: 'none' }, limit: 10 })).rows).toHaveLength(0)
  })

  it('moves the index entry when the value changes and removes it on delete', async () => {
    const v1 = entry(1, [], appointment(1, 5))
    await store.apply([v1, entry(2, [], appointment(2, 5))])
    const v2 = entry(1, [v1.version], appointment(1, 6))
    await store.apply([v2])
    expect((await store.scan('appointments', { where: { patient_id: 5 }, limit: 10 })).rows.map(r => r.state.id)).toEqual(['2'])
    expect((await store.scan('appointments', { where: { patient_id: 6 }, limit: 10 })).rows.map(r => r.state.id)).toEqual(['1'])
    let keys = await rawKeys('i')
    expect(keys.filter(k => k.startsWith('appointments!patient_id!'))).toEqual([
      `appointments!patient_id!n5!${DOCTOR_7}!2`,
      `appointments!patient_id!n6!${DOCTOR_7}!1`
    ])
    await store.apply([entry(1, [v2.version], null)])
    expect((await store.scan('appointments', { where: { patient_id: 6 }, limit: 10 })).rows).toEqual([])
    keys = await rawKeys('i')
    expect(keys.filter(k => k.endsWith('!1'))).toEqual([])
    expect(keys).toHaveLength(2) // patient_id and doctor_id of row 2
    expect(await rawKeys('t')).toEqual([`appointments!${DOCTOR_7}!2`])
  })

  it('follows the winner of a conflict in its index entries', async () => {
    const v1 = entry(1, [], appointment(1, 5))
    const a = entry(1, [v1.version], appointment(1, 6))
    const b = entry(1, [v1.version], appointment(1, 7))
    await store.apply([v1])
    await store.apply([b])
    await store.apply([a])
    expect((await store.scan('appointments', { where: { patient_id: 7 }, limit: 10 })).rows.map(r => r.state.id)).toEqual(['1'])
    const keys = (await rawKeys('i')).filter(k => k.startsWith('appointments!patient_id!'))
    expect(keys).toEqual([`appointments!patient_id!n7!${DOCTOR_7}!1`])
  })

  it('pages with a cursor over 250 rows, each row exactly once', async () => {
    const entries: VersionEntry[] = []
    for (let i = 0; i < 250; i++) {
      const doctor = i % 10
      entries.push(entry(i, [], appointment(i, i % 2 === 0 ? 1 : 2, doctor), tokenOf(`doctor_id:${doctor}`)))
    }
    await store.apply(entries)
    for (const where of [{}, { patient_id: 1 }] as Array<Record<string, Value>>) {
      const seen: string[] = []
      const pages: number[] = []
      let after: string | undefined
      for (let page = 0; page < 10; page++) {
        const result = await store.scan('appointments', { where, limit: 100, ...(after === undefined ? {} : { after }) })
        pages.push(result.rows.length)
        seen.push(...result.rows.map(r => r.state.id))
        if (result.next === undefined) break
        after = result.next
      }
      const expected = Object.keys(where).length === 0 ? 250 : 125
      expect(pages).toEqual(expected === 250 ? [100, 100, 50] : [100, 25])
      expect(seen).toHaveLength(expected)
      expect(new Set(seen).size).toBe(expected)
    }
    // A page that ends exactly at the last row has no next position.
    const exact = await store.scan('appointments', { where: { patient_id: 1 }, limit: 125 })
    expect(exact.rows).toHaveLength(125)
    expect(exact.next).toBeUndefined()
  })
})

describe('store: lifecycle', () => {
  it('refuses a second store on the same path with HOME_LOCKED', async () => {
    const second = new Store({ path, sync: false, dataKey: KEY })
    const err = await second.open().then(() => undefined, (e: unknown) => e)
    expect(err).toBeInstanceOf(NtsoekheError)
    expect(err).toMatchObject({ name: 'HomeLockedError', code: 'HOME_LOCKED' })
    expect(second.status).toBe('closed')
    expect((err as Error).cause).toMatchObject({ code: 'LEVEL_DATABASE_NOT_OPEN', cause: { code: 'LEVEL_LOCKED' } })
    await second.close()
    // The first store is unaffected.
    await store.apply([entry(1, [], appointment(1))])
    expect(await store.get('appointments', DOCTOR_7, '1')).toBeDefined()
  })

  it('keeps data, history and indexes across close and reopen', async () => {
    const v1 = entry(1, [], appointment(1, 5))
    const v2 = entry(1, [v1.version], appointment(1, 6))
    await store.apply([v1])
    await store.apply([v2])
    await store.close()
    expect(store.status).toBe('closed')
    await store.close() // a second close is harmless
    store = new Store({ path, sync: false, indexes: INDEXES, dataKey: KEY })
    await store.open()
    expect((await store.get('appointments', DOCTOR_7, '1'))?.heads).toEqual([v2])
    expect(await store.versions('appointments', DOCTOR_7, '1')).toEqual([v1, v2])
    expect((await store.scan('appointments', { where: { patient_id: 6 }, limit: 10 })).rows).toHaveLength(1)
    expect(await store.apply([v2])).toEqual(['duplicate'])
  })

  it('opens once when asked twice, and refuses a store of another format', async () => {
    await Promise.all([store.open(), store.open()])
    expect(store.status).toBe('open')
    await store.close()
    const raw = new Level<string, unknown>(path, { valueEncoding: 'json' })
    await raw.put('!m!format', 999)
    await raw.close()
    store = new Store({ path, sync: false, indexes: INDEXES, dataKey: KEY })
    await expect(store.open()).rejects.toMatchObject({ code: 'INTERNAL' })
    expect(store.status).toBe('closed')
    // The refused store released the database: it can be opened (and fixed) again.
    const again = new Level<string, unknown>(path, { valueEncoding: 'json' })
    await again.put('!m!format', STORE_FORMAT)
    await again.close()
    store = new Store({ path, sync: false, indexes: INDEXES, dataKey: KEY })
    await store.open()
  })

  it('folds concurrent writes into few durable batches (group commit)', async () => {
    await store.close()
    store = new Store({ path, sync: true, indexes: INDEXES, dataKey: KEY })
    await store.open()
    const before = store.commits
    await Promise.all(Array.from({ length: 500 }, async (_, i) => {
      const e = entry(i, [], appointment(i))
      return await store.transact([{ table: e.table, token: e.token, id: e.id }], () => [e])
    }))
    const batches = store.commits.batches - before.batches
    expect(store.commits.ops - before.ops).toBeGreaterThanOrEqual(500 * 2)
    expect(batches).toBeGreaterThan(0)
    expect(batches).toBeLessThan(50)
    expect(await store.countRows()).toEqual({ appointments: 500 })
    // Counts kept in memory match a fresh count after a reopen.
    await store.close()
    store = new Store({ path, sync: true, indexes: INDEXES, dataKey: KEY })
    await store.open()
    expect(await store.countRows()).toEqual({ appointments: 500 })
  })
})

describe('store: record metadata stays small (formats 4 and 5)', () => {
  /** The record as LevelDB holds it, in bytes (read with the store closed) */
  async function encodedSize (id: number): Promise<number> {
    await store.close()
    const db = new Level<string, string>(path)
    try {
      const value = await db.get(`!r!${DOCTOR_7}!appointments!${id}`, { valueEncoding: 'utf8' }) as string
      return Buffer.byteLength(value)
    } finally {
      await db.close()
      store = new Store({ path, sync: false, indexes: INDEXES, dataKey: KEY })
      await store.open()
    }
  }

  /** Updates appointment `id` `n` times over its head; returns the LevelDB operations the last 10 wrote */
  async function update (id: number, n: number): Promise<number> {
    let opsBefore = 0
    for (let i = 0; i < n; i++) {
      if (i === n - 10) opsBefore = store.commits.ops
      const head = (await store.get('appointments', DOCTOR_7, String(id)))?.heads[0]
      await store.apply([entry(id, head === undefined ? [] : [head.version], { ...appointment(id), purpose: `visit ${i}` })])
    }
    return store.commits.ops - opsBefore
  }

  it('keeps a row updated 2,000 times within a few bytes a listed version of its size after one update, at the same cost per write as after 100', async () => {
    await update(1, 2)
    const sizeAtFirst = await encodedSize(1)
    const opsAt100 = await update(1, 98)
    const sizeAt100 = await encodedSize(1)
    const opsAt2000 = await update(1, 1900)
    const sizeAt2000 = await encodedSize(1)
    expect(sizeAt2000).toBeLessThan(2 * 1024)
    // The window of listed versions costs a few bytes a version (see version-list.ts), whatever the history.
    expect(sizeAt2000 - sizeAtFirst).toBeLessThanOrEqual(6 * KNOWN_WINDOW)
    // Lists of the same length: only the row's `visit <n>` and the versions' clock steps (a few
    // base-36 digits each, see version-list.ts) may differ.
    expect(Math.abs(sizeAt2000 - sizeAt100)).toBeLessThanOrEqual(4 * KNOWN_WINDOW)
    expect(opsAt2000).toBe(opsAt100)
    const versions = await store.versions('appointments', DOCTOR_7, '1')
    expect(versions).toHaveLength(2000)
    expect(versions.at(-1)?.row?.purpose).toBe('visit 1899')
    const state = await store.get('appointments', DOCTOR_7, '1')
    expect(state?.heads).toHaveLength(1)
    expect(state?.horizon).toBeDefined()
    for (const v of [versions[0]!, versions[500]!, versions[1990]!]) {
      expect(await store.knows('appointments', DOCTOR_7, '1', v.version)).toEqual({ seen: true, replaced: true })
    }
  })

  it('a replica that missed more updates than the lists keep ends with the one head, not a conflict of its own', async () => {
    // Found by the chaos suite: a replica held version 1 while its peer made 200 more; it merged the
    // peer's state (whose lists no longer reach version 1), then was sent every version. It kept
    // version 1 as a second head for good, a conflict no other replica showed, and anti-entropy
    // sent the record every round without settling it.
    const peer = new Store({ path: join(dir.path, 'peer'), sync: false, indexes: INDEXES, dataKey: KEY })
    await peer.open()
    try {
      const first = entry(1, [], appointment(1))
      await store.apply([first])
      await peer.apply([first])
      let head = first.version
      for (let i = 0; i < 200; i++) {
        const e = entry(1, [head], { ...appointment(1), purpose: `visit ${i}` })
        await peer.apply([e])
        head = e.version
      }
      const theirs = (await peer.get('appointments', DOCTOR_7, '1'))!
      expect(theirs.horizon).toBeDefined()
      await store.merge([theirs])
      await store.apply(await peer.versions('appointments', DOCTOR_7, '1'))
      await store.merge([theirs])
      expect((await store.get('appointments', DOCTOR_7, '1'))?.heads.map(h => h.version)).toEqual([head])
      expect(winner(await store.get('appointments', DOCTOR_7, '1'))?.row?.purpose).toBe('visit 199')
      // The two replicas' range summaries agree again.
      expect(store.summary.bucketDigests()).toEqual(peer.summary.bucketDigests())
    } finally {
      await peer.close()
    }
  })

  it('knows an old version again by what it keeps below the horizon: a duplicate, never a head', async () => {
    await update(1, 200)
    const versions = await store.versions('appointments', DOCTOR_7, '1')
    const old = versions[3]!
    expect(await store.apply([old])).toEqual(['duplicate'])
    // A peer's state naming an old version as a head does not bring it back either.
    const state = (await store.get('appointments', DOCTOR_7, '1'))!
    expect(await store.merge([{ ...state, heads: [old], seen: [old.version], superseded: [] }])).toEqual(['known'])
    expect((await store.get('appointments', DOCTOR_7, '1'))?.heads.map(h => h.version)).toEqual([versions.at(-1)!.version])
  })

  it('takes a late version older than the horizon that nothing replaces as a conflict, and keeps its ancestry', async () => {
    await update(1, 200)
    const versions = await store.versions('appointments', DOCTOR_7, '1')
    // Written long ago on a node cut off since, over version 2: older than the horizon, replaced by nothing.
    const late: VersionEntry = { table: 'appointments', id: '1', token: DOCTOR_7, version: versions[2]!.version.replace('.test', '.late'), parents: [versions[1]!.version], row: { ...appointment(1), purpose: 'late' } }
    expect(late.version < (await store.get('appointments', DOCTOR_7, '1'))!.horizon!).toBe(true)
    expect(await store.apply([late])).toEqual(['applied'])
    const state = (await store.get('appointments', DOCTOR_7, '1'))!
    expect(state.heads.map(h => h.version)).toEqual([versions.at(-1)!.version, late.version])
    expect(await store.apply([late])).toEqual(['duplicate'])
    // Resolved by a write naming both heads.
    await store.apply([entry(1, state.heads.map(h => h.version), appointment(1))])
    expect((await store.get('appointments', DOCTOR_7, '1'))?.heads).toHaveLength(1)
    expect(await store.knows('appointments', DOCTOR_7, '1', late.version)).toEqual({ seen: true, replaced: true })
  })
})

import { randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { Level } from 'level'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { tokenOf } from '../../src/cluster/token.js'
import type { Row } from '../../src/schema/index.js'
import { KNOWN_WINDOW, STORE_FORMAT, Store, type RecordState, type VersionEntry } from '../../src/storage/store.js'
import { decodeVersionLists } from '../../src/storage/version-list.js'
import { HybridClock } from '../../src/storage/version.js'
import { tempDir, type TempDir } from '../helpers/temp.js'

const INDEXES = { appointments: ['patient_id', 'doctor_id'] }
const KEY = randomBytes(32)
const DOCTOR_7 = tokenOf('doctor_id:7')

let dir: TempDir
let path: string

beforeEach(async () => {
  dir = await tempDir('ntk-format4-')
  path = join(dir.path, 'store')
})

afterEach(async () => {
  await dir.remove()
})

function appointment (id: number, purpose: string): Row {
  return { appointment_id: id, patient_id: 1, doctor_id: 7, appointment_date: '2026-01-05T09:00:00Z', purpose }
}

/** What a reader sees of every record: heads, lists (as sets), horizon, every version */
async function snapshot (store: Store, ids: number[]): Promise<Array<{ state: RecordState | undefined, versions: VersionEntry[] }>> {
  return await Promise.all(ids.map(async id => {
    const state = await store.get('appointments', DOCTOR_7, String(id))
    const sorted = state === undefined ? undefined : { ...state, seen: [...state.seen].sort(), superseded: [...state.superseded].sort() }
    return { state: sorted, versions: await store.versions('appointments', DOCTOR_7, String(id)) }
  }))
}

/**
 * A store written by this code, then turned into what format 4 wrote: each
 * record's lists as plain arrays, and the format marker 4. Records listed in
 * `only` are turned back, the others left (a migration cut short).
 */
async function toFormat4 (only?: Set<string>): Promise<number> {
  const db = new Level<string, string>(path)
  let n = 0
  try {
    const ops: Array<{ type: 'put', key: string, value: string }> = []
    for await (const [k, v] of db.iterator({ gt: '!r!', lt: '!r!\xff' })) {
      if (only !== undefined && !only.has(k)) continue
      const { v: lists, raw, ...rest } = JSON.parse(v)
      const { seen, superseded } = decodeVersionLists({ v: lists, ...(raw === undefined ? {} : { raw }) })
      ops.push({ type: 'put', key: k, value: JSON.stringify({ ...rest, seen, superseded }) })
      n++
    }
    ops.push({ type: 'put', key: '!m!format', value: '4' })
    await db.batch(ops)
  } finally {
    await db.close()
  }
  return n
}

describe('store: migration from format 4 to format 5', () => {
  it('rewrites every record compact, reads back every row, version and known version, and finishes a run cut short', async () => {
    const clock = new HybridClock('test')
    let store = new Store({ path, sync: false, indexes: INDEXES, dataKey: KEY })
    await store.open()
    const ids = [1, 2, 3, 4]
    const heads = new Map<number, string[]>()
    const write = async (id: number, row: Row | null, parents = heads.get(id) ?? []): Promise<VersionEntry> => {
      const e: VersionEntry = { table: 'appointments', id: String(id), token: DOCTOR_7, version: clock.tick(), parents, row }
      await store.apply([e])
      heads.set(id, (await store.get('appointments', DOCTOR_7, String(id)))?.heads.map(h => h.version) ?? [])
      return e
    }
    // 1: a long history (beyond the window); 2: a conflict; 3: deleted; 4: one version.
    for (let i = 0; i < KNOWN_WINDOW * 3; i++) await write(1, appointment(1, `visit ${i}`))
    const base = await write(2, appointment(2, 'base'))
    await write(2, appointment(2, 'left'), [base.version])
    await write(2, appointment(2, 'right'), [base.version])
    await write(3, appointment(3, 'x'))
    await write(3, null)
    await write(4, appointment(4, 'once'))
    const before = await snapshot(store, ids)
    expect(before[0]?.state?.horizon).toBeDefined()
    expect(before[1]?.state?.heads).toHaveLength(2)
    await store.close()

    expect(await toFormat4()).toBe(4)
    const lines: string[] = []
    store = new Store({ path, sync: false, indexes: INDEXES, dataKey: KEY, log: m => lines.push(m) })
    await store.open()
    try {
      expect(lines[0]).toMatch(/migrating .* from format 4 to format 5/)
      expect(lines.find(l => l.includes('migration done'))).toMatch(/format 5 migration done: 4 records read, 4 rewritten/)
      expect(await snapshot(store, ids)).toEqual(before)
      const versions = before[0]?.versions ?? []
      for (const v of [versions[0], versions[KNOWN_WINDOW], versions.at(-2)]) {
        expect(await store.knows('appointments', DOCTOR_7, '1', (v as VersionEntry).version)).toEqual({ seen: true, replaced: true })
      }
      // It goes on taking writes, and an old version is still no head.
      expect(await store.apply([versions[3] as VersionEntry])).toEqual(['duplicate'])
      await write(1, appointment(1, 'after'))
      expect((await store.get('appointments', DOCTOR_7, '1'))?.heads[0]?.row?.purpose).toBe('after')
    } finally {
      await store.close()
    }
    const after = await (async () => { const s = new Store({ path, sync: false, indexes: INDEXES, dataKey: KEY }); await s.open(); try { return await snapshot(s, ids) } finally { await s.close() } })()

    // Cut short: two records as format 4 left them, and the marker still 4. The next start finishes.
    const keyOf = (id: number): string => `!r!${DOCTOR_7}!appointments!${id}`
    expect(await toFormat4(new Set([keyOf(1), keyOf(2)]))).toBe(2)
    lines.length = 0
    store = new Store({ path, sync: false, indexes: INDEXES, dataKey: KEY, log: m => lines.push(m) })
    await store.open()
    try {
      expect(lines.find(l => l.includes('migration done'))).toMatch(/4 records read, 2 rewritten/)
      expect(await snapshot(store, ids)).toEqual(after)
    } finally {
      await store.close()
    }
    const db = new Level<string, string>(path)
    try {
      expect(await db.get('!m!format')).toBe(String(STORE_FORMAT))
      for await (const v of db.values({ gt: '!r!', lt: '!r!\xff' })) expect(JSON.parse(v)).not.toHaveProperty('seen')
    } finally {
      await db.close()
    }
    // Once done, a start migrates nothing.
    lines.length = 0
    store = new Store({ path, sync: false, indexes: INDEXES, dataKey: KEY, log: m => lines.push(m) })
    await store.open()
    await store.close()
    expect(lines).toEqual([])
  })
})

import { cp, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { Level } from 'level'
import { KNOWN_WINDOW, STORE_FORMAT, Store, type RecordState, type VersionEntry } from '../../src/storage/store.js'
import { tempDir, type TempDir } from '../helpers/temp.js'

/** The fixture's data key (see test/fixtures/make-format3-store.mjs) */
const KEY = Buffer.alloc(32, 7)
const INDEXES = { appointments: ['patient_id', 'doctor_id'] }
const FIXTURES = join(import.meta.dirname, '..', 'fixtures')

/** A record as the format-3 code read it, with every version it had */
type Expected = RecordState & { versions: VersionEntry[] }

let dir: TempDir
let path: string

beforeEach(async () => {
  dir = await tempDir('ntk-format3-')
  path = join(dir.path, 'store')
  // A copy: opening migrates the store in place, and the committed fixture must stay format 3.
  await cp(join(FIXTURES, 'format3-store'), path, { recursive: true })
})

afterEach(async () => {
  await dir.remove()
})

async function expected (): Promise<Expected[]> {
  return JSON.parse(await readFile(join(FIXTURES, 'format3-expected.json'), 'utf8')) as Expected[]
}

describe('store: a format-3 store', () => {
  it('opens with this code and reads every row and every version back, identical', async () => {
    const records = await expected()
    expect(records.length).toBeGreaterThan(30)
    expect(records.some(r => r.heads.length > 1)).toBe(true)
    expect(records.some(r => r.heads.some(h => h.row === null))).toBe(true)
    const store = new Store({ path, sync: false, indexes: INDEXES, dataKey: KEY })
    await store.open()
    try {
      for (const r of records) {
        const state = await store.get(r.table, r.token, r.id)
        expect(state?.heads).toEqual(r.heads)
        expect(await store.versions(r.table, r.token, r.id)).toEqual(r.versions)
      }
      const counts = await store.countRows()
      expect(counts).toEqual({ appointments: 14, patient_records: 21 })
    } finally {
      await store.close()
    }
  })
})

describe('store: migration from format 3', () => {
  it('compacts long records, keeps what each replica knew of every version, logs its progress, and runs once', async () => {
    const records = await expected()
    const lines: string[] = []
    const store = new Store({ path, sync: false, indexes: INDEXES, dataKey: KEY, log: m => lines.push(m) })
    await store.open()
    try {
      expect(lines[0]).toMatch(/migrating .* from format 3 to format 5/)
      // Every record is rewritten in the compact form of format 5; one is long enough to be compacted too.
      expect(lines.find(l => l.includes('migration done'))).toMatch(/migration done: 36 records read, 36 rewritten/)
      const long = records.find(r => r.table === 'patient_records' && r.id === '21') as Expected
      expect(long.seen.length).toBe(150)
      const state = await store.get('patient_records', long.token, '21')
      expect(state?.seen.length).toBeLessThanOrEqual(KNOWN_WINDOW + 1)
      expect(state?.horizon).toBeDefined()
      for (const r of records) {
        const superseded = new Set(r.superseded)
        for (const v of new Set([...r.seen, ...r.superseded])) {
          expect(await store.knows(r.table, r.token, r.id, v)).toEqual({ seen: r.seen.includes(v), replaced: superseded.has(v) })
        }
      }
    } finally {
      await store.close()
    }
    lines.length = 0
    const again = new Store({ path, sync: false, indexes: INDEXES, dataKey: KEY, log: m => lines.push(m) })
    await again.open()
    await again.close()
    expect(lines).toEqual([])
  })

  it('finishes at the next start a migration cut short', async () => {
    const records = await expected()
    const long = records.find(r => r.table === 'patient_records' && r.id === '21') as Expected
    const recordKey = `${long.token}!patient_records!21`
    // The record as format 3 wrote it, then the whole store migrated, then put back as it was:
    // what a crash leaves when the batch of that record had not been written.
    let raw = new Level<string, string>(path)
    const old = await raw.get(`!r!${recordKey}`) as string
    await raw.close()
    const first = new Store({ path, sync: false, indexes: INDEXES, dataKey: KEY })
    await first.open()
    await first.close()
    raw = new Level<string, string>(path)
    const knownBefore = await raw.keys({ gt: '!k!', lt: '!k!\xff' }).all()
    await raw.batch([{ type: 'put', key: `!r!${recordKey}`, value: old }, { type: 'put', key: '!m!format', value: '3' }])
    await raw.close()
    const lines: string[] = []
    const store = new Store({ path, sync: false, indexes: INDEXES, dataKey: KEY, log: m => lines.push(m) })
    await store.open()
    try {
      expect(lines.find(l => l.includes('migration done'))).toMatch(/36 records read, 1 rewritten/)
      for (const r of records) {
        expect((await store.get(r.table, r.token, r.id))?.heads).toEqual(r.heads)
        expect(await store.versions(r.table, r.token, r.id)).toEqual(r.versions)
        for (const v of r.seen) expect((await store.knows(r.table, r.token, r.id, v)).seen).toBe(true)
      }
    } finally {
      await store.close()
    }
    raw = new Level<string, string>(path)
    expect(await raw.keys({ gt: '!k!', lt: '!k!\xff' }).all()).toEqual(knownBefore)
    expect(await raw.get('!m!format')).toBe(String(STORE_FORMAT))
    await raw.close()
  })
})

import { cp, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { Store, type VersionEntry } from '../../src/storage/store.js'
import { tempDir, type TempDir } from '../helpers/temp.js'

/** The fixture's data key (see test/fixtures/make-format3-store.mjs) */
const KEY = Buffer.alloc(32, 7)
const INDEXES = { appointments: ['patient_id', 'doctor_id'] }
const FIXTURES = join(import.meta.dirname, '..', 'fixtures')

interface Expected {
  table: string
  id: string
  token: string
  heads: VersionEntry[]
  seen: string[]
  superseded: string[]
  versions: VersionEntry[]
}

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

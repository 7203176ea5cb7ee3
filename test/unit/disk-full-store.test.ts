import { execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdtemp, open, rm, unlink } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { StorageFullError } from '../../src/errors/index.js'
import { Store } from '../../src/storage/store.js'
import { HybridClock } from '../../src/storage/version.js'
import { fill } from '../helpers/files.js'

/**
 * A store on a small tmpfs (root only; skipped elsewhere) whose disk fills
 * while LevelDB flushes its memtable: LevelDB keeps that failed background
 * write as an error for every later write until the database is opened
 * again. The store reopens it once space is back, without a restart.
 */
const root = process.getuid?.() === 0
let mounted: string | undefined

afterEach(async () => {
  if (mounted !== undefined) {
    execFileSync('umount', ['-l', mounted])
    await rm(mounted, { recursive: true, force: true })
    mounted = undefined
  }
})


describe.skipIf(!root)('a store whose disk fills during a flush', () => {
  it('refuses writes while full, and writes again once space is freed, reopening LevelDB', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ntk-full-'))
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=24m', 'tmpfs', dir])
    mounted = dir
    const lines: string[] = []
    // A 1 MiB write buffer: the memtable flushes (a background write) after about a megabyte.
    const store = new Store({ path: join(dir, 'store'), sync: true, plaintext: true, writeBufferBytes: 1024 * 1024, log: m => { lines.push(m) } })
    await store.open()
    const clock = new HybridClock('fullstore01')
    const put = async (i: number): Promise<void> => {
      await store.apply([{ table: 'patient_records', id: String(i), token: String(i % 997).padStart(16, '0'), version: clock.tick(), parents: [], row: { patient_id: i, patient_name: 'x'.repeat(90), date_of_birth: '1980-01-01', gender: 'F', address: randomBytes(100).toString('hex'), contact_number: '1', email: `p${i}@example.org`, allergies: 'n'.repeat(200) } }])
    }
    let written = 0
    for (; written < 2000; written++) await put(written)
    // A file to free later, leaving about 1.5 MiB: a memtable's log fits, its flush does not.
    const room = await open(join(dir, 'room'), 'w')
    await room.write(Buffer.alloc(1536 * 1024))
    await room.close()
    await fill(join(dir, 'filler'))
    // Room for the log of about a memtable, not for the table file its flush writes as well.
    await rm(join(dir, 'room'))
    // Writes until one is refused for want of space (the flush of a full memtable among them).
    let refused: unknown
    for (let i = 0; i < 200_000 && refused === undefined; i++) {
      try { await put(written); written++ } catch (err) { refused = err }
    }
    expect(refused).toBeInstanceOf(StorageFullError)
    // Reads go on.
    expect(await store.get('patient_records', String(1 % 997).padStart(16, '0'), '1')).toBeDefined()
    await unlink(join(dir, 'filler'))
    // Space is back: the next write goes through (after a reopen, if LevelDB kept the failure).
    const deadline = Date.now() + 15_000
    for (;;) {
      try { await put(written); break } catch (err) {
        if (!(err instanceof StorageFullError) || Date.now() > deadline) throw err
        await new Promise(resolve => setTimeout(resolve, 200))
      }
    }
    for (let i = 0; i < 3000; i++) await put(written + 1 + i)
    for (const i of [0, 1999, written]) expect(await store.get('patient_records', String(i % 997).padStart(16, '0'), String(i))).toBeDefined()
    await store.close()
    // Whether LevelDB kept the failure this time depends on where the disk filled; say what happened.
    console.log(`disk-full store: ${written} rows before the refusal; ${lines.filter(l => l.includes('reopening')).length} reopen(s)`)
  }, 120_000)
})

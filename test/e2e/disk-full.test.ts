import { execFileSync } from 'node:child_process'
import { mkdir, unlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { NtsoekheClient } from '../../src/client/index.js'
import { adminToken, makeHome, startDaemon, type TestDaemon } from '../helpers/daemon.js'
import { e2ePatient, waitForValue } from '../helpers/wait.js'
import { fill } from '../helpers/files.js'

/**
 * A daemon whose home is on a small tmpfs (root only: elsewhere the test is
 * skipped), filled up while it runs: it refuses writes saying its disk is
 * full, serves reads, and takes writes again once space is freed, losing
 * nothing it had acknowledged.
 */
const root = process.getuid?.() === 0
let daemon: TestDaemon | undefined
let mounted: string | undefined

afterAll(async () => {
  await daemon?.stop().catch(() => {})
  if (mounted !== undefined) execFileSync('umount', ['-l', mounted])
}, 30_000)


describe.skipIf(!root)('a full disk', () => {
  it('refuses writes with a clear error, serves reads, and writes again once space is back', async () => {
    const home = join(await makeHome(), 'tmpfs')
    await mkdir(home, { mode: 0o700 })
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=48m,mode=0700', 'tmpfs', home])
    mounted = home
    await writeFile(join(home, 'config.json'), JSON.stringify({ storage: { writeBufferMb: 1 } }))
    daemon = await startDaemon({ home })
    const client = new NtsoekheClient({ socket: daemon.socket, token: await adminToken(home), writeRetries: 0 })
    for (let i = 1; i <= 50; i++) await client.insert('patient_records', e2ePatient(i))

    const filler = join(home, 'filler')
    await fill(filler)
    const refused = await waitForValue('a write to be refused for want of space', async () => {
      try {
        await client.insert('patient_records', e2ePatient(1000 + Math.floor(Math.random() * 1e6)))
        return undefined
      } catch (err) { return err as { code: string, message: string } }
    }, 20_000)
    expect(refused.code).toBe('UNAVAILABLE')
    expect(refused.message).toMatch(/disk is full/)
    // Refused again at once, before anything is ordered, and reads go on.
    await expect(client.update('patient_records', 7, { address: 'Moved' })).rejects.toMatchObject({ code: 'UNAVAILABLE', message: expect.stringMatching(/disk is full/) })
    for (const id of [1, 25, 50]) expect((await client.get('patient_records', id)).row.patient_name).toBe(`Patient ${id}`)

    await unlink(filler)
    const after = await waitForValue('a write to be taken once space is freed', async () => await client.insert('patient_records', e2ePatient(60)), 20_000)
    expect(after.id).toBe('60')
    for (let i = 1; i <= 50; i++) expect((await client.get('patient_records', i)).row.patient_id).toBe(i)
    expect((await client.update('patient_records', 7, { address: 'Moved' })).row?.address).toBe('Moved')
    client.close()
  }, 90_000)
})

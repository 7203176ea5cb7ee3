/**
 * End to end: the audit trail of a real daemon through the CLI, and an entry
 * changed on disk while the daemon is down found by `audit --verify`.
 */
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { alterStoredEntry } from '../helpers/audit.js'
import { cli, json, makeHome, startDaemon, type TestDaemon } from '../helpers/daemon.js'

const EXIT = { OK: 0, REFUSED: 1 }

describe('ntsoekhe audit end to end', () => {
  let daemon: TestDaemon | undefined

  afterAll(async () => {
    await daemon?.stop()
  })

  it('lists a patient\'s accesses, verifies the chain, and names an entry altered on disk', async () => {
    const home = await makeHome()
    daemon = await startDaemon({ home })
    const row = { patient_name: 'Palesa Letsie', date_of_birth: '1991-07-04', gender: 'Female', address: '3 Pioneer Road, Maseru', contact_number: '2622245678', email: 'palesa@example.org' }
    const inserted = await cli(['insert', 'patient_records', JSON.stringify(row), '--json'], { home })
    expect(inserted.code, inserted.stderr).toBe(EXIT.OK)
    const id = String(json(inserted).id)
    const read = await cli(['get', 'patient_records', id, '--json'], { home })
    expect(read.code, read.stderr).toBe(EXIT.OK)

    const listed = await cli(['audit', '--patient', id, '--json'], { home })
    expect(listed.code, listed.stderr).toBe(EXIT.OK)
    const entries = json<{ entries: Array<Record<string, unknown>> }>(listed).entries
    expect(entries.map(e => [e.action, e.table, e.key, e.patient_id, e.outcome, e.status])).toEqual([
      ['insert', 'patient_records', id, id, 'ok', 201],
      ['read', 'patient_records', id, id, 'ok', 200]
    ])
    const readEntry = entries[1] as { node: string, seq: number }

    const intact = await cli(['audit', '--verify', '--json'], { home })
    expect(intact.code, intact.stderr).toBe(EXIT.OK)
    expect(json(intact)).toMatchObject({ ok: true, broken: null })
    expect(json(intact).checked).toBeGreaterThanOrEqual(2)
    const intactText = await cli(['audit', '--verify'], { home })
    expect(intactText.code, intactText.stderr).toBe(EXIT.OK)
    expect(intactText.stdout).toContain('audit trail intact')

    expect((await daemon.stop()).code).toBe(0)
    expect(await alterStoredEntry(join(home, 'store'), `${readEntry.node}.${readEntry.seq}`, 'action', 'list')).toBe('read')
    daemon = await startDaemon({ home })

    const broken = await cli(['audit', '--verify'], { home })
    expect(broken.code).toBe(EXIT.REFUSED)
    expect(broken.stderr).toContain(`node ${readEntry.node} seq ${readEntry.seq}`)
    expect(broken.stderr).toContain('altered')
    const brokenJson = await cli(['audit', '--verify', '--json'], { home })
    expect(brokenJson.code).toBe(EXIT.REFUSED)
    expect(json(brokenJson)).toMatchObject({ ok: false, broken: { node: readEntry.node, seq: readEntry.seq, problem: 'altered' } })
  })
})

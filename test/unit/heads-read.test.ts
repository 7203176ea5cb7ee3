import { afterEach, describe, expect, it, vi } from 'vitest'
import { tokenOf } from '../../src/cluster/token.js'
import { createTestnet, type Testnet } from '../helpers/harness.js'
import { patientRow } from '../helpers/temp.js'
import { waitFor } from '../helpers/wait.js'

describe('quorum reads check the other copies by their heads', () => {
  let net: Testnet | undefined
  afterEach(async () => { vi.restoreAllMocks(); await net?.stop(); net = undefined })

  it('asks another owner for its heads only when they match: no row travels and none is decrypted there', async () => {
    net = await createTestnet(3)
    await net.converge(3)
    const [a, b, c] = net.nodes
    await a!.db.insert('patient_records', patientRow(41, { allergies: 'Latex' }))
    const wholeReads = [vi.spyOn(b!.store, 'get'), vi.spyOn(c!.store, 'get')]
    const headReads = [vi.spyOn(b!.store, 'headsOf'), vi.spyOn(c!.store, 'headsOf')]
    for (let i = 0; i < 5; i++) expect((await a!.db.get('patient_records', '41')).row.allergies).toBe('Latex')
    // R = 2 with a's own copy: one other owner a read, asked for heads.
    expect(headReads.reduce((n, s) => n + s.mock.calls.length, 0)).toBe(5)
    expect(wholeReads.reduce((n, s) => n + s.mock.calls.length, 0)).toBe(0)
  })

  it('reads a copy whose heads differ whole, answers the newest, and repairs the stale one', async () => {
    net = await createTestnet(3)
    await net.converge(3)
    const [a, b, c] = net.nodes
    await a!.db.insert('patient_records', patientRow(42, { allergies: 'None' }))
    const token = tokenOf('patient_id:42')
    // A write is answered at W = 2: wait until b holds its copy too.
    await waitFor('b to hold patient 42', async () => (await b!.store.get('patient_records', token, '42')) !== undefined, 5000)
    // b misses an update (its hint is not delivered while it is down and the test reads first).
    net.network.down(b!.peerId)
    const updated = await a!.db.patch('patient_records', '42', { allergies: 'Peanuts' })
    net.network.up(b!.peerId)
    // Read from b, whose own copy is stale: the other owner's heads differ, so its copy is read whole.
    const stale = await b!.store.get('patient_records', token, '42')
    expect(stale).toBeDefined()
    expect(stale?.heads.map(h => h.version)).not.toContain(updated.version)
    const read = await b!.db.get('patient_records', '42')
    expect(read.row.allergies).toBe('Peanuts')
    expect(read.version).toBe(updated.version)
    // Read repair brings b's copy to date.
    await waitFor('read repair to bring b the newest version', async () => (await b!.store.get('patient_records', token, '42'))?.heads.some(h => h.version === updated.version) === true, 5000)
    expect((await c!.db.get('patient_records', '42', { consistency: 'one' })).version).toBe(updated.version)
  })
})


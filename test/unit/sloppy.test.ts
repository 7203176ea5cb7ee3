import { afterEach, describe, expect, it } from 'vitest'
import { createTestnet, type HarnessNode, type Testnet } from '../helpers/harness.js'
import { waitFor } from '../helpers/wait.js'
import { tokenOf } from '../../src/cluster/token.js'
import type { Row } from '../../src/schema/index.js'

const patient = (i: number, address = `${i} Main St`): Row => ({
  patient_id: i, patient_name: `Patient ${i}`, date_of_birth: '1980-01-02', gender: 'F', address, contact_number: '0123456789', email: `p${i}@example.org`
})

let net: Testnet | undefined
afterEach(async () => { await net?.stop(); net = undefined })

/** A 5-node network (N=3, W=2, R=2), a node `x` and a patient id none of whose owners is x */
async function clinicAndForeignKey (): Promise<{ net: Testnet, x: HarnessNode, others: HarnessNode[], owners: HarnessNode[], i: number, token: string }> {
  const n = await createTestnet(5)
  net = n
  await n.converge(5)
  const x = n.nodes[0] as HarnessNode
  let i = 1
  while (x.coordinator.owners('patient_records', tokenOf(`patient_id:${i}`)).includes(x.peerId)) i++
  const token = tokenOf(`patient_id:${i}`)
  const ownerIds = x.coordinator.owners('patient_records', token)
  return { net: n, x, others: n.nodes.filter(m => m !== x), owners: n.nodes.filter(m => ownerIds.includes(m.peerId)), i, token }
}

function cut (n: Testnet, x: HarnessNode, others: HarnessNode[], heal = false): void {
  for (const o of others) n.network.partition(x.peerId, o.peerId, !heal)
}

describe('sloppy quorum at consistency one', () => {
  it('a clinic cut off from every owner of a key inserts and updates at one, reads it back, and the owners get it after the split; a write on the other side is a conflict', async () => {
    const { net: n, x, others, owners, i, token } = await clinicAndForeignKey()
    const majority = others[0] as HarnessNode
    cut(n, x, others)
    // Right after the cut (no peer suspect yet) and later alike: the clinic keeps writing.
    const inserted = await x.db.insert('patient_records', patient(i, 'Clinic'), { consistency: 'one' })
    const updated = await x.db.patch('patient_records', String(i), { address: 'Clinic, updated' }, { consistency: 'one' })
    expect(updated.row?.address).toBe('Clinic, updated')
    const seen = await x.db.get('patient_records', String(i), { consistency: 'one' })
    expect(seen.row.address).toBe('Clinic, updated')
    expect(seen.version).toBe(updated.version)
    expect((await x.db.history('patient_records', String(i), { consistency: 'one' })).map(h => h.version)).toEqual([inserted.version, updated.version])
    // A row found through a locator (claimed first, itself at one) works the same way.
    const visit = { history_id: 900 + i, patient_id: i, diagnosis: 'Flu', treatment: 'Rest', date_of_visit: '2024-01-02T10:00:00Z' }
    await x.db.insert('medical_history', visit, { consistency: 'one' })
    expect((await x.db.get('medical_history', String(900 + i), { consistency: 'one' })).row.diagnosis).toBe('Flu')
    // Kept as hints for every owner; quorum reads through the clinic still need the owners.
    for (const o of owners) expect(x.store.hintCount(o.peerId)).toBeGreaterThan(0)
    await expect(x.db.get('patient_records', String(i))).rejects.toMatchObject({ code: 'UNAVAILABLE' })

    // Meanwhile the majority side writes the same patient.
    const other = await majority.db.insert('patient_records', patient(i, 'Majority'))

    cut(n, x, others, true)
    await waitFor('every owner to hold both sides\' versions', async () => {
      for (const o of owners) {
        const versions = (await o.store.versions('patient_records', token, String(i))).map(v => v.version)
        if (![inserted.version, updated.version, other.version].every(v => versions.includes(v))) return false
      }
      return true
    })
    const r = await majority.db.get('patient_records', String(i), { consistency: 'all' })
    const addresses = new Set([r.row.address, ...r.conflicts.map(c => c.row?.address)])
    expect(addresses).toEqual(new Set(['Clinic, updated', 'Majority']))
    const history = (await majority.db.history('patient_records', String(i), { consistency: 'all' })).map(h => h.version)
    expect(history).toEqual(expect.arrayContaining([inserted.version, updated.version, other.version]))
    await waitFor('the visit to reach its owners', async () => (await majority.db.get('medical_history', String(900 + i), { consistency: 'all' }).catch(() => undefined))?.row.diagnosis === 'Flu')
    // The clinic's own copy goes once every owner has it.
    await waitFor('the clinic to hand over and drop its copy', async () => await x.store.get('patient_records', token, String(i)) === undefined && x.store.hintCount() === 0)
  }, 30_000)

  it('a write at one whose owners do not answer (cut off, not yet suspect) is kept sloppily within the replication timeout', async () => {
    const { net: n, x, owners, i, token } = await clinicAndForeignKey()
    for (const o of owners) n.network.stall(o.peerId)
    const started = Date.now()
    const w = await x.db.insert('patient_records', patient(i, 'Stalled'), { consistency: 'one' })
    // The harness's replication timeout is 1 s: one wait for the first owner, none for the rest.
    expect(Date.now() - started).toBeLessThan(1900)
    expect((await x.db.get('patient_records', String(i), { consistency: 'one' })).version).toBe(w.version)
    for (const o of owners) n.network.release(o.peerId)
    await waitFor('every owner to get the version', async () => {
      for (const o of owners) if ((await o.store.get('patient_records', token, String(i)))?.heads[0]?.version !== w.version) return false
      return true
    })
  }, 30_000)

  it('a quorum write with every owner cut off is still refused', async () => {
    const { net: n, x, others, i } = await clinicAndForeignKey()
    cut(n, x, others)
    await expect(x.db.insert('patient_records', patient(i))).rejects.toMatchObject({ code: 'UNAVAILABLE' })
    expect(x.store.hintCount()).toBe(0)
  })
})

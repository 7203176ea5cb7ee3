import { afterEach, describe, expect, it } from 'vitest'
import { createTestnet, type HarnessNode, type Testnet } from '../helpers/harness.js'
import { waitFor } from '../helpers/wait.js'
import { tokenOf } from '../../src/cluster/token.js'
import { MemoryNetwork } from '../../src/cluster/memory-transport.js'
import { Membership } from '../../src/cluster/membership.js'
import { testIdentity } from '../helpers/identity.js'
import type { Row } from '../../src/schema/index.js'

/**
 * What the deterministic simulation found (test/unit/sim-seeds.ts), pinned
 * as scenarios on the in-process test network: a seed replays the run it
 * found only as long as the simulation draws the same workload from it.
 */

const patient = (i: number, address = `${i} Main St`): Row => ({
  patient_id: i, patient_name: `Patient ${i}`, date_of_birth: '1980-01-02', gender: 'F', address, contact_number: '0123456789', email: `p${i}@example.org`
})

let net: Testnet | undefined
afterEach(async () => { await net?.stop(); net = undefined })

/** A 5-node network, a node `x` and a patient whose owners (primary first) do not include x, inserted and on every owner */
async function foreignPatient (): Promise<{ x: HarnessNode, owners: HarnessNode[], i: number, token: string }> {
  net = await createTestnet(5)
  await net.converge(5)
  const n = net
  const x = n.nodes[0] as HarnessNode
  let i = 1
  while (x.coordinator.owners('patient_records', tokenOf(`patient_id:${i}`)).includes(x.peerId)) i++
  const token = tokenOf(`patient_id:${i}`)
  const owners = x.coordinator.owners('patient_records', token).map(p => n.nodes.find(m => m.peerId === p) as HarnessNode)
  await x.db.insert('patient_records', patient(i), { consistency: 'all' })
  return { x, owners, i, token }
}

describe('found by the simulation', () => {
  it('an update at one whose primary applied it but whose answer was lost is an unknown outcome, not a 404 from a node without the record (seed 25)', async () => {
    const { x, owners, i, token } = await foreignPatient()
    const [primary, ...others] = owners as [HarnessNode, ...HarnessNode[]]
    // The primary applies the write and its answer is lost; x cannot reach the other owners, so at one it
    // falls back to a sloppy write of its own, ordered against a copy it does not have.
    // x's own gossip stops first: a gossip round to the primary would take the lost answer instead.
    x.membership.stop()
    net!.network.loseReplies(x.peerId, primary.peerId)
    for (const o of others) net!.network.partition(x.peerId, o.peerId)
    const write = x.coordinator.write([{ op: 'put', table: 'patient_records', id: String(i), shard: `patient_id:${i}`, row: patient(i, 'Applied'), changed: ['address'] }], { consistency: 'one' })
    await expect(write).rejects.toMatchObject({ code: 'UNAVAILABLE', outcome: 'unknown' })
    await waitFor('the primary to hold the update', async () => (await primary.store.get('patient_records', token, String(i)))?.heads[0]?.row?.address === 'Applied')
  })

  it('a write request delivered twice to its primary answers the first result twice, not 409 (seed 12)', async () => {
    const { x, i } = await foreignPatient()
    const j = i + 100_000
    const message = { type: 'write', mutations: [{ op: 'insert', table: 'patient_records', id: String(j), shard: `patient_id:${j}`, row: patient(j), writeId: '0123456789abcdef' }] }
    const owner = x.coordinator.owners('patient_records', tokenOf(`patient_id:${j}`))[0] as string
    const transport = net!.network.transport(x.peerId)
    const first = await transport.request(owner, 'replica', message) as Array<{ version: string }>
    const again = await transport.request(owner, 'replica', message) as Array<{ version: string }>
    expect(again).toEqual(first)
  })

  it('a node restarted after a member it knew left learns of the leave from the others (seed 6)', async () => {
    const network = new MemoryNetwork()
    const [a, b, c] = [testIdentity(), testIdentity(), testIdentity()]
    const member = (id: { peerId: string, sign: (d: Uint8Array) => Uint8Array }): Membership =>
      new Membership({ transport: network.transport(id.peerId), peerId: id.peerId, sign: id.sign, addresses: () => [] }, { heartbeatMs: 20, suspectAfterMs: 500, downAfterMs: 1000 })
    const ma = member(a)
    const mc = member(c)
    let mb: Membership | undefined
    try {
      ma.addCandidate(c.peerId)
      ma.start()
      mc.start()
      await waitFor('a and c to know each other', () => ma.stateOf(c.peerId) === 'alive' && mc.stateOf(a.peerId) === 'alive', 5000, 10)
      // a leaves and is gone while b is down; b comes back knowing a and c only from its saved list.
      await ma.leave()
      await waitFor('c to know that a left', () => mc.stateOf(a.peerId) === 'left', 5000, 10)
      ma.stop()
      network.down(a.peerId)
      mb = member(b)
      mb.restore([{ peerId: a.peerId, addresses: [] }, { peerId: c.peerId, addresses: [] }])
      mb.start()
      const restarted = mb
      await waitFor('b to learn that a left', () => restarted.stateOf(a.peerId) === 'left', 5000, 10)
    } finally {
      ma.stop()
      mc.stop()
      mb?.stop()
    }
  })

  it('a node leaving returns only once some member heard it, so it does not stop unheard and stay on every ring (seed 129)', async () => {
    const network = new MemoryNetwork()
    const [a, c] = [testIdentity(), testIdentity()]
    const member = (id: { peerId: string, sign: (d: Uint8Array) => Uint8Array }): Membership =>
      new Membership({ transport: network.transport(id.peerId), peerId: id.peerId, sign: id.sign, addresses: () => [] }, { heartbeatMs: 20, suspectAfterMs: 2000, downAfterMs: 4000 })
    const ma = member(a)
    const mc = member(c)
    try {
      ma.addCandidate(c.peerId)
      ma.start()
      mc.start()
      await waitFor('a and c to know each other', () => ma.stateOf(c.peerId) === 'alive' && mc.stateOf(a.peerId) === 'alive', 5000, 10)
      ma.stop()
      mc.stop()
      // Cut off from every member: the leave is not heard, and says so.
      network.partition(a.peerId, c.peerId)
      await expect(ma.leave(200)).rejects.toMatchObject({ code: 'UNAVAILABLE' })
      expect(mc.stateOf(a.peerId)).toBe('alive')
      network.partition(a.peerId, c.peerId, false)
      await ma.leave(2000)
      expect(mc.stateOf(a.peerId)).toBe('left')
    } finally {
      ma.stop()
      mc.stop()
    }
  })
})


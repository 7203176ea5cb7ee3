/** The audit trail across an in-process cluster: entries travel with the patient's shard */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { AUDIT_TABLE } from '../../src/cluster/messages.js'
import { tokenOf } from '../../src/cluster/token.js'
import { AuditTrail, storeHead } from '../../src/security/audit.js'
import type { AccessEvent } from '../../src/security/principal.js'
import { createTestnet, type HarnessNode, type Testnet } from '../helpers/harness.js'

const read = (patientId: string): AccessEvent => ({
  principal: { user: 'dr.mokhethi', role: 'doctor' }, action: 'read', table: 'patient_records', id: patientId, patientId, outcome: 'ok', status: 200
})

describe('audit trail in a cluster', () => {
  let net: Testnet
  const trails: AuditTrail[] = []
  const trailOf = (n: HarnessNode): AuditTrail => {
    const t = new AuditTrail({ coordinator: n.coordinator, peerId: n.peerId, head: storeHead(n.store) }, { flushIntervalMs: 10_000 })
    trails.push(t)
    return t
  }

  beforeAll(async () => {
    net = await createTestnet(4)
    await net.converge(4)
  })

  afterAll(async () => {
    for (const t of trails) await t.stop()
    await net.stop()
  })

  it('entries written on node A are read and verified from node B, and live on the patient\'s replicas', async () => {
    const [a, b] = net.nodes as [HarnessNode, HarnessNode]
    const trailA = trailOf(a)
    const trailB = trailOf(b)
    await trailA.start()
    await trailB.start()
    for (let i = 0; i < 3; i++) trailA.record(read('42'))
    trailA.record(read('7'))
    trailB.record(read('42'))
    trailA.record({ action: 'login', outcome: 'unauthenticated', status: 401 })
    await trailA.flush()
    await trailB.flush()
    expect(trailA.status()).toMatchObject({ written: 5, pending: 0 })

    const about42 = (await trailB.query({ patient: '42' })).entries
    expect(about42.map(e => `${e.node === a.peerId ? 'A' : 'B'}.${e.seq}`).sort()).toEqual(['A.1', 'A.2', 'A.3', 'B.1'])
    expect(await trailB.verify()).toEqual({ ok: true, checked: 6, nodes: 2, broken: null })

    // Every owner of patient 42's token holds A's entries about 42, and no other node does.
    const token = tokenOf('patient_id:42')
    const owners = a.coordinator.owners(AUDIT_TABLE, token)
    expect(owners).toHaveLength(3)
    for (const n of net.nodes) {
      const held = await n.store.get(AUDIT_TABLE, token, `${a.peerId}.1`)
      expect(held !== undefined, `${n.peerId} ${owners.includes(n.peerId) ? 'owns' : 'does not own'} patient 42's shard`).toBe(owners.includes(n.peerId))
    }
  })

  it('a removed entry on every replica is found from another node', async () => {
    const [a, , c] = net.nodes as [HarnessNode, HarnessNode, HarnessNode]
    const token = tokenOf('patient_id:7')
    for (const n of net.nodes) {
      const state = await n.store.get(AUDIT_TABLE, token, `${a.peerId}.4`)
      if (state !== undefined) await n.store.drop(state)
    }
    const trailC = trailOf(c)
    await trailC.start()
    expect((await trailC.verify()).broken).toMatchObject({ node: a.peerId, seq: 4, problem: 'missing' })
  })
})

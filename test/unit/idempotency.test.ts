import { afterEach, describe, expect, it } from 'vitest'
import { createTestnet, type Testnet } from '../helpers/harness.js'
import { tokenOf } from '../../src/cluster/token.js'
import { keyedWriteId } from '../../src/cluster/idempotency.js'
import { NtsoekheError } from '../../src/errors/index.js'
import type { Row } from '../../src/schema/index.js'

const patient = (i: number): Row => ({
  patient_id: i, patient_name: `Patient ${i}`, date_of_birth: '1980-01-02', gender: 'F', address: `${i} Main St`, contact_number: '0123456789', email: `p${i}@example.org`
})
const { patient_id: _, ...anonymous } = patient(0)

let net: Testnet | undefined
afterEach(async () => { await net?.stop(); net = undefined })

type Node = Testnet['nodes'][number]

/** A 3-node network (N=3, W=2), and a patient id whose primary is node b */
async function threeNodes (): Promise<{ a: Node, b: Node, c: Node, i: number }> {
  net = await createTestnet(3, { replicas: 3, writeQuorum: 2, readQuorum: 2 })
  await net.converge(3)
  const [a, b, c] = net.nodes as [Node, Node, Node]
  let i = 1
  while (a.coordinator.owners('patient_records', tokenOf(`patient_id:${i}`))[0] !== b.peerId) i++
  return { a, b, c, i }
}

async function waitDown (node: Node, peer: string): Promise<void> {
  const deadline = Date.now() + 5000
  while (node.membership.stateOf(peer) !== 'down') {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${peer} to be marked down`)
    await new Promise(resolve => setTimeout(resolve, 20))
  }
}

describe('writes with an Idempotency-Key', () => {
  it('a write whose answer was lost, sent again with its key, answers the first result and writes nothing new', async () => {
    const { a, b, c, i } = await threeNodes()
    net!.network.loseReplies(a.peerId, b.peerId)
    const first = await a.db.insert('patient_records', patient(i), { idempotencyKey: 'k-insert' })
    const again = await a.db.insert('patient_records', patient(i), { idempotencyKey: 'k-insert' })
    expect(again).toMatchObject({ id: first.id, version: first.version })
    // On another node, once the primary is down
    net!.network.down(b.peerId)
    await waitDown(c, b.peerId)
    const elsewhere = await c.db.insert('patient_records', patient(i), { idempotencyKey: 'k-insert' })
    expect(elsewhere).toMatchObject({ id: first.id, version: first.version })
    expect((await c.db.history('patient_records', String(i))).map(h => h.version)).toEqual([first.version])
    // Without the key, or with another one, it is a second insert: 409
    await expect(c.db.insert('patient_records', patient(i))).rejects.toMatchObject({ code: 'CONFLICT' })
    await expect(c.db.insert('patient_records', patient(i), { idempotencyKey: 'k-other' })).rejects.toMatchObject({ code: 'CONFLICT' })
  })

  it('an insert without an id, sent again, gets the same generated id and version on any node', async () => {
    const { a, c } = await threeNodes()
    const first = await a.db.insert('patient_records', anonymous, { idempotencyKey: 'gen-1' })
    const again = await c.db.insert('patient_records', anonymous, { idempotencyKey: 'gen-1' })
    expect(again).toMatchObject({ id: first.id, version: first.version })
    expect((await a.db.history('patient_records', first.id)).map(h => h.version)).toEqual([first.version])
    const other = await a.db.insert('patient_records', anonymous, { idempotencyKey: 'gen-2' })
    expect(other.id).not.toBe(first.id)
    // A row placed by another column (a locator names its shard): the retry does not meet its own locator.
    const appt = { patient_id: Number(first.id), doctor_id: 1, appointment_date: '2026-02-01T09:30:00Z', purpose: 'checkup' }
    await a.db.insert('doctors_info', { doctor_id: 1, name: 'Dr 1', specialization: 'GP', contact_number: '0711111111', email: 'd@example.org', availability: 'Mon-Fri' })
    const booked = await a.db.insert('appointments', appt, { idempotencyKey: 'appt-1' })
    expect(await c.db.insert('appointments', appt, { idempotencyKey: 'appt-1' })).toMatchObject({ id: booked.id, version: booked.version })
  })

  it('updates and deletes sent again answer their first result, even after later writes', async () => {
    const { a, b, c, i } = await threeNodes()
    await a.db.insert('patient_records', patient(i))
    net!.network.loseReplies(a.peerId, b.peerId)
    const patched = await a.db.patch('patient_records', String(i), { address: 'Second' }, { idempotencyKey: 'p-1' })
    const later = await a.db.patch('patient_records', String(i), { address: 'Third' })
    expect(await c.db.patch('patient_records', String(i), { address: 'Second' }, { idempotencyKey: 'p-1' })).toMatchObject({ version: patched.version })
    expect((await c.db.get('patient_records', String(i))).row.address).toBe('Third')
    const deleted = await a.db.delete('patient_records', String(i), { idempotencyKey: 'd-1' })
    expect(await c.db.delete('patient_records', String(i), { idempotencyKey: 'd-1' })).toMatchObject({ version: deleted.version })
    await expect(c.db.delete('patient_records', String(i))).rejects.toMatchObject({ code: 'NOT_FOUND' })
    expect((await c.db.history('patient_records', String(i))).map(h => h.version)).toHaveLength(4)
    expect(later.version).not.toBe(patched.version)
  })

  it('a batch sent again with its key answers the first results', async () => {
    const { a, c, i } = await threeNodes()
    await a.db.insert('patient_records', patient(i))
    const ops = [
      { op: 'patch' as const, table: 'patient_records', id: i, row: { address: 'Batched' } },
      { op: 'insert' as const, table: 'billing_insurance', row: { patient_id: i, amount: '10', date: '2026-01-12', insurance_provider: 'Acme', insurance_policy_number: 'P-1' } }
    ]
    const first = await a.db.batch(ops, { idempotencyKey: 'b-1' })
    const again = await c.db.batch(ops, { idempotencyKey: 'b-1' })
    expect(again.map(r => [r.id, r.version])).toEqual(first.map(r => [r.id, r.version]))
    expect(await a.db.history('patient_records', String(i))).toHaveLength(2)
    // A batch with a delete, whose repeat finds its row gone
    const del = [{ op: 'delete' as const, table: 'billing_insurance', id: first[1]!.id }]
    const gone = await a.db.batch(del, { idempotencyKey: 'b-2' })
    expect((await c.db.batch(del, { idempotencyKey: 'b-2' })).map(r => r.version)).toEqual(gone.map(r => r.version))
  })

  it('derives write ids in the form of random ones', () => {
    expect(keyedWriteId('k', 'insert', 'patient_records', '1')).toMatch(/^[0-9a-f]{16}$/)
    expect(keyedWriteId('k', 'insert', 'patient_records', '1')).not.toBe(keyedWriteId('k', 'insert', 'patient_records', '2'))
  })
})

describe('PATCH without If-Match under contention', () => {
  it('ten concurrent patches of one row from three nodes all succeed, and every change is in the history', async () => {
    const { a, b, c, i } = await threeNodes()
    await a.db.insert('patient_records', patient(i))
    const nodes = [a, b, c]
    const results = await Promise.all(Array.from({ length: 10 }, async (_, k) =>
      await nodes[k % 3]!.db.patch('patient_records', String(i), k % 2 === 0 ? { address: `Address ${k}` } : { contact_number: `07000000${String(k).padStart(2, '0')}` })))
    expect(new Set(results.map(r => r.version)).size).toBe(10)
    const history = await a.db.history('patient_records', String(i))
    expect(history).toHaveLength(11)
    for (let k = 0; k < 10; k++) {
      const [column, value] = k % 2 === 0 ? ['address', `Address ${k}`] : ['contact_number', `07000000${String(k).padStart(2, '0')}`]
      expect(history.some(v => v.row?.[column as string] === value), `change ${k}`).toBe(true)
    }
    // Each patch kept the others' columns: the last version has the last address and the last number.
    const last = history[history.length - 1]!.row!
    expect(String(last.address)).toMatch(/^Address \d$/)
    expect(String(last.contact_number)).toMatch(/^07000000\d\d$/)
    const got = await a.db.get('patient_records', String(i))
    expect(got.conflicts).toEqual([])
    // If-Match stays exact: a stale version is still 412.
    await expect(a.db.patch('patient_records', String(i), { address: 'Stale' }, { ifMatch: [history[0]!.version] })).rejects.toMatchObject({ code: 'PRECONDITION_FAILED' })
  })
})

describe('a write that misses its consistency level', () => {
  it('says how many owners have it, how many were required, and that it may still reach the others; a keyed retry is not 409', async () => {
    const { a, c, i } = await threeNodes()
    net!.network.down(c.peerId)
    await waitDown(a, c.peerId)
    const err = await a.db.insert('patient_records', patient(i), { consistency: 'all', idempotencyKey: 'all-1' }).then(() => undefined, (e: unknown) => e)
    expect(err).toBeInstanceOf(NtsoekheError)
    expect(err).toMatchObject({ code: 'UNAVAILABLE', durable: 2, required: 3, outcome: 'partial' })
    expect((err as NtsoekheError).toJSON()).toMatchObject({ code: 'UNAVAILABLE', durable: 2, required: 3, outcome: 'partial' })
    const again = await a.db.insert('patient_records', patient(i), { consistency: 'all', idempotencyKey: 'all-1' }).then(() => undefined, (e: unknown) => e)
    expect(again).toMatchObject({ code: 'UNAVAILABLE', durable: 2, required: 3 })
    const stored = await a.db.get('patient_records', String(i))
    expect(await a.db.insert('patient_records', patient(i), { idempotencyKey: 'all-1' })).toMatchObject({ version: stored.version })
  })
})

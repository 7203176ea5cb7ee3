import { afterEach, describe, expect, it } from 'vitest'
import { createTestnet, type Testnet } from '../helpers/harness.js'
import { waitFor } from '../helpers/wait.js'
import { testIdentity } from '../helpers/identity.js'
import { signClaim } from '../../src/cluster/member-claims.js'
import { tokenOf } from '../../src/cluster/token.js'
import { UNIQUE_TABLE } from '../../src/cluster/messages.js'
import { MemoryNetwork } from '../../src/cluster/memory-transport.js'
import { Membership, type SavedMember } from '../../src/cluster/membership.js'
import { Database, uniqueClaimId } from '../../src/query/database.js'
import { findTable, type Row } from '../../src/schema/index.js'

const patient = (i: number): Row => ({
  patient_id: i, patient_name: `Patient ${i}`, date_of_birth: '1980-01-02', gender: 'F', address: `${i} Main St`, contact_number: '0123456789', email: `p${i}@example.org`
})

let net: Testnet | undefined
afterEach(async () => { await net?.stop(); net = undefined })

/** A 3-node network (N=3, W=2, R=2), a patient id whose primary is node 0, and node 0's group committer with its own commit() */
async function primaryWithItsCommitter (): Promise<{ p: Testnet['nodes'][number], i: number, token: string, committer: any, commit: (ops: unknown[]) => Promise<void> }> {
  net = await createTestnet(3, { replicas: 3, writeQuorum: 2, readQuorum: 2 })
  await net.converge(3)
  const p = net.nodes[0] as Testnet['nodes'][number]
  let i = 1
  while (p.coordinator.owners('patient_records', tokenOf(`patient_id:${i}`))[0] !== p.peerId) i++
  const committer = (p.store as any).committer
  return { p, i, token: tokenOf(`patient_id:${i}`), committer, commit: committer.commit.bind(committer) }
}

describe('membership', () => {
  it('a node bootstrapped from the first learns of every member by gossip', async () => {
    net = await createTestnet(6)
    await net.converge(6)
    for (const n of net.nodes) expect(n.membership.members().filter(m => m.state === 'alive')).toHaveLength(6)
  })

  it('hands the addresses of members it hears of through others to the network layer', async () => {
    const { MemoryNetwork } = await import('../../src/cluster/memory-transport.js')
    const { Membership } = await import('../../src/cluster/membership.js')
    const network = new MemoryNetwork()
    const learned: Array<[string, string[]]> = []
    const keys = [testIdentity(), testIdentity(), testIdentity()]
    const ids = keys.map(k => k.peerId)
    const ms = keys.map(({ peerId: id, sign }) => new Membership({
      transport: network.transport(id),
      peerId: id,
      sign,
      addresses: () => [`/memory/${id}`],
      ...(id === ids[2] ? { learned: (p: string, a: string[]) => { learned.push([p, a]) } } : {})
    }, { heartbeatMs: 20, suspectAfterMs: 200, downAfterMs: 400 }))
    // C knows only A; B joins through A as well, so C hears of B only through gossip.
    ms[1]!.addCandidate(ids[0]!)
    ms[2]!.addCandidate(ids[0]!)
    for (const m of ms) m.start()
    try {
      const deadline = Date.now() + 3000
      while (!learned.some(([p]) => p === ids[1])) {
        if (Date.now() > deadline) throw new Error('timed out waiting for C to learn where B is')
        await new Promise(resolve => setTimeout(resolve, 10))
      }
      expect(learned.find(([p]) => p === ids[1])?.[1]).toEqual([`/memory/${ids[1]}`])
    } finally {
      for (const m of ms) m.stop()
    }
  })

  it('marks a silent member suspect, then down, and keeps its ring share (quorums do not shrink)', async () => {
    net = await createTestnet(4)
    await net.converge(4)
    const victim = net.nodes[3]!
    net.network.down(victim.peerId)
    victim.membership.stop()
    const deadline = Date.now() + 5000
    while (net.nodes[0]!.membership.stateOf(victim.peerId) !== 'down') {
      if (Date.now() > deadline) throw new Error('timed out waiting for the stopped member to be marked down')
      await new Promise(resolve => setTimeout(resolve, 20))
    }
    for (const n of net.nodes.slice(0, 3)) expect(n.coordinator.ring.size).toBe(4)
    const status = await net.nodes[0]!.coordinator.status()
    expect(status.members.find(m => m.peerId === victim.peerId)?.state).toBe('down')
  })

  it('a quorum write needs W live owners even after the others are marked down', async () => {
    net = await createTestnet(3)
    await net.converge(3)
    const [a, b, c] = net.nodes as [any, any, any]
    for (const x of [b, c]) { net.network.down(x.peerId); x.membership.stop() }
    const deadline = Date.now() + 5000
    while (a.membership.stateOf(b.peerId) !== 'down' || a.membership.stateOf(c.peerId) !== 'down') {
      if (Date.now() > deadline) throw new Error('timed out waiting for both stopped members to be marked down')
      await new Promise(resolve => setTimeout(resolve, 20))
    }
    await expect(a.db.insert('patient_records', patient(1))).rejects.toMatchObject({ code: 'UNAVAILABLE' })
    // `one` is what lets a cut-off clinic keep working; the others get the write as hints.
    await a.db.insert('patient_records', patient(2), { consistency: 'one' })
    expect((await a.db.get('patient_records', '2', { consistency: 'one' })).row.patient_id).toBe(2)
    expect((await a.store.hintedPeers()).sort()).toEqual([b.peerId, c.peerId].sort())
  })
})

describe('distributed coordinator', () => {
  it('writes go to N owners, reads through any node see them', async () => {
    net = await createTestnet(5)
    await net.converge(5)
    for (let i = 1; i <= 50; i++) await net.nodes[0]!.db.insert('patient_records', patient(i))
    for (let i = 1; i <= 50; i++) {
      const r = await net.nodes[4]!.db.get('patient_records', String(i))
      expect(r.row.patient_name).toBe(`Patient ${i}`)
      // W=2 acknowledged the write; the third copy follows on its own.
      const deadline = Date.now() + 5000
      let holders: string[]
      for (;;) {
        holders = []
        for (const n of net.nodes) if (await n.store.get('patient_records', tokenOf(`patient_id:${i}`), String(i)) !== undefined) holders.push(n.peerId)
        if (holders.length >= 3 || Date.now() > deadline) break
        await new Promise(resolve => setTimeout(resolve, 10))
      }
      expect(holders).toHaveLength(3)
      expect(new Set(holders)).toEqual(new Set(net.nodes[0]!.coordinator.owners('patient_records', tokenOf(`patient_id:${i}`))))
    }
    const page = await net.nodes[2]!.db.list('patient_records', {}, { limit: 1000 })
    expect(page.rows).toHaveLength(50)
  })

  it('keeps a patient\'s rows in every co-located table on the same owners', async () => {
    net = await createTestnet(5)
    await net.converge(5)
    const db = net.nodes[1]!.db
    await db.insert('patient_records', patient(7))
    await db.insert('medications', { medication_id: 3, name: 'Aspirin', dosage: '100 mg', manufacturer: 'Acme' })
    const h = await db.insert('medical_history', { patient_id: 7, diagnosis: 'Flu', treatment: 'Rest', date_of_visit: '2026-01-02T10:00:00Z' })
    await db.insert('billing_insurance', { patient_id: 7, amount: '12.5', date: '2026-01-02', insurance_provider: 'X', insurance_policy_number: 'P1' })
    await db.insert('patient_medications', { patient_id: 7, medication_id: 3 })
    await db.insert('lab_results', { record_id: Number(h.id), patient_id: 7, test_name: 'CBC', test_date: '2026-01-03', test_result: 'Normal' })
    const token = tokenOf('patient_id:7')
    const owners = net.nodes[0]!.coordinator.owners('patient_records', token)
    const tables = ['patient_records', 'medical_history', 'billing_insurance', 'patient_medications', 'lab_results']
    const holdings = async (): Promise<boolean[][]> => await Promise.all(net!.nodes.map(async n => {
      const counts = await n.store.countRows()
      return tables.map(t => (counts[t] ?? 0) > 0)
    }))
    // W=2 acknowledged each write: the third owner may apply the last one a moment later.
    const deadline = Date.now() + 3000
    let has = await holdings()
    while (has.some((h, i) => h.some(x => x !== owners.includes(net!.nodes[i]!.peerId)))) {
      if (Date.now() > deadline) break
      await new Promise(resolve => setTimeout(resolve, 10))
      has = await holdings()
    }
    // Either a node holds the whole chart or none of it, and the owners hold it.
    net.nodes.forEach((n, i) => { expect(has[i]).toEqual(tables.map(() => owners.includes(n.peerId))) })
  })

  it("a new patient's first visit is one batch: later operations refer to rows earlier ones insert, whichever node takes it", async () => {
    net = await createTestnet(5, { replicas: 3, writeQuorum: 2, readQuorum: 2 })
    await net.converge(5)
    for (const [k, node] of net.nodes.entries()) {
      const pid = 7770 + k
      const owners = node.coordinator.owners('patient_records', tokenOf(`patient_id:${pid}`))
      const results = await node.db.batch([
        { op: 'insert', table: 'patient_records', row: patient(pid) },
        { op: 'insert', table: 'medical_history', row: { history_id: pid * 10, patient_id: pid, diagnosis: 'Flu', treatment: 'Rest', date_of_visit: '2026-12-02T10:00:00+02:00' } },
        { op: 'insert', table: 'lab_results', row: { result_id: pid * 10, record_id: pid * 10, patient_id: pid, test_name: 'CBC', test_date: '2026-12-02', test_result: 'Normal' } }
      ])
      expect(results.map(r => `${r.table} ${r.id}`), `through ${owners.includes(node.peerId) ? 'an owner' : 'a node that owns none of it'}`)
        .toEqual([`patient_records ${pid}`, `medical_history ${pid * 10}`, `lab_results ${pid * 10}`])
      const other = net.nodes[(k + 1) % net.nodes.length]!
      expect((await other.db.get('medical_history', String(pid * 10))).row.date_of_visit).toBe('2026-12-02T08:00:00.000Z')
      expect((await other.db.get('lab_results', String(pid * 10))).row.record_id).toBe(pid * 10)
    }
    // A reference to a row the batch does not insert, and no one holds, still fails the whole batch.
    await expect(net.nodes[0]!.db.batch([
      { op: 'insert', table: 'patient_records', row: patient(7790) },
      { op: 'insert', table: 'medical_history', row: { history_id: 77910, patient_id: 7791, diagnosis: 'Flu', treatment: 'Rest', date_of_visit: '2026-12-02T10:00:00Z' } }
    ])).rejects.toMatchObject({ code: 'REFERENCE' })
    await expect(net.nodes[1]!.db.get('patient_records', '7790')).rejects.toMatchObject({ code: 'NOT_FOUND' })
  })

  it('survives a dead owner: the next owner takes the writes, hints hand them back', async () => {
    net = await createTestnet(5)
    await net.converge(5)
    const token = tokenOf('patient_id:1')
    const owners = net.nodes[0]!.coordinator.owners('patient_records', token)
    const primary = net.nodes.find(n => n.peerId === owners[0])!
    const client = net.nodes.find(n => !owners.includes(n.peerId))!
    await client.db.insert('patient_records', patient(1))
    net.network.down(primary.peerId)
    // Before the failure detector notices, the write must still succeed through the next owner.
    const w = await client.db.patch('patient_records', '1', { address: 'New address' })
    expect(w.row?.address).toBe('New address')
    expect((await client.db.get('patient_records', '1')).row.address).toBe('New address')
    net.network.up(primary.peerId)
    const deadline = Date.now() + 5000
    for (;;) {
      const state = await primary.store.get('patient_records', token, '1')
      if (state?.heads[0]?.row?.address === 'New address') break
      if (Date.now() > deadline) throw new Error('timed out waiting for hinted handoff to bring the returned primary up to date')
      await new Promise(resolve => setTimeout(resolve, 20))
    }
  })

  it('two primaries on the two sides of a partition make a visible conflict, never a lost write', async () => {
    net = await createTestnet(3, { replicas: 3, writeQuorum: 1, readQuorum: 1 })
    await net.converge(3)
    const [a, b, c] = net.nodes as [any, any, any]
    await a.db.insert('patient_records', patient(5))
    const deadline = Date.now() + 3000
    const everywhere = async (): Promise<boolean> => (await Promise.all([a, b, c].map(async x => await x.store.get('patient_records', tokenOf('patient_id:5'), '5')))).every(s => s !== undefined)
    while (!await everywhere()) {
      if (Date.now() > deadline) throw new Error('timed out waiting for the insert to reach every replica')
      await new Promise(resolve => setTimeout(resolve, 10))
    }
    // Isolate every node: each takes its own write as primary (consistency one).
    for (const x of [a, b, c]) for (const y of [a, b, c]) if (x !== y) net.network.partition(x.peerId, y.peerId)
    await a.db.patch('patient_records', '5', { address: 'Side A' }, { consistency: 'one' })
    await b.db.patch('patient_records', '5', { address: 'Side B' }, { consistency: 'one' })
    for (const x of [a, b, c]) for (const y of [a, b, c]) if (x !== y) net.network.partition(x.peerId, y.peerId, false)
    const r = await c.db.get('patient_records', '5', { consistency: 'all' })
    const values = new Set([r.row.address, ...r.conflicts.map((x: { row: Row | null }) => x.row?.address)])
    expect(values).toEqual(new Set(['Side A', 'Side B']))
    // A write naming both heads resolves it.
    await c.db.replace('patient_records', '5', { ...patient(5), address: 'Merged' }, { ifMatch: [r.version, ...r.conflicts.map((x: { version: string }) => x.version)], consistency: 'all' })
    const after = await a.db.get('patient_records', '5', { consistency: 'all' })
    expect(after.row.address).toBe('Merged')
    expect(after.conflicts).toEqual([])
  })

  it('bulk writes in groups: every good row on N owners, each bad row reported in its place', async () => {
    net = await createTestnet(5)
    await net.converge(5)
    const db = net.nodes[2]!.db
    await db.insert('doctors_info', { doctor_id: 1, name: 'Dr A', specialization: 'GP', contact_number: '0123456789', email: 'a@b.c', availability: 'Mon' })
    const rows = Array.from({ length: 300 }, (_, i) => ({ line: i + 1, value: patient(i + 1) }))
    rows.push({ line: 301, value: patient(5) }) // a duplicate key
    rows.push({ line: 302, value: { ...patient(999), gender: 'x'.repeat(11) } })
    const r = await db.importRows('patient_records', rows)
    expect(r.accepted).toBe(300)
    expect(r.rejected.map(x => [x.line, x.error.code])).toEqual([[301, 'CONFLICT'], [302, 'INVALID']])
    // W=2 acknowledged each row; the third owner's copy follows without a further request.
    const deadline = Date.now() + 5000
    for (const i of [1, 150, 300]) {
      const token = tokenOf(`patient_id:${i}`)
      for (;;) {
        const holders = (await Promise.all(net.nodes.map(async n => await n.store.get('patient_records', token, String(i))))).filter(x => x !== undefined)
        expect(holders.length).toBeGreaterThanOrEqual(2)
        if (holders.length === 3) break
        if (Date.now() > deadline) throw new Error(`timed out waiting for the third copy of patient ${i} (have ${holders.length})`)
        await new Promise(resolve => setTimeout(resolve, 20))
      }
    }
    // Rows found through a key locator (appointments by doctor) and their references.
    const appts = Array.from({ length: 50 }, (_, i) => ({ line: i + 1, value: { appointment_id: 1000 + i, patient_id: (i % 300) + 1, doctor_id: 1, appointment_date: '2026-03-04T10:00:00Z', purpose: 'Check' } }))
    appts.push({ line: 51, value: { appointment_id: 1000, patient_id: 1, doctor_id: 1, appointment_date: '2026-03-04T10:00:00Z', purpose: 'Again' } })
    appts.push({ line: 52, value: { appointment_id: 2000, patient_id: 77777, doctor_id: 1, appointment_date: '2026-03-04T10:00:00Z', purpose: 'Nobody' } })
    const a = await net.nodes[0]!.db.importRows('appointments', appts)
    expect(a.accepted).toBe(50)
    expect(a.rejected.map(x => [x.line, x.error.code])).toEqual([[51, 'CONFLICT'], [52, 'REFERENCE']])
    expect((await net.nodes[4]!.db.get('appointments', '1049')).row.patient_id).toBe(50)
    await expect(net.nodes[4]!.db.get('appointments', '2000')).rejects.toMatchObject({ code: 'NOT_FOUND' })
  })

  it('a write is answered once any W owners have it on disk: a primary with a stalled disk does not hold it up', async () => {
    const { p, i, token, committer, commit } = await primaryWithItsCommitter()
    let release!: () => void
    const gate = new Promise<void>(resolve => { release = resolve })
    committer.commit = async (ops: unknown[]) => { await gate; await commit(ops) }
    try {
      const write = p.coordinator.write([{ op: 'insert', table: 'patient_records', id: String(i), shard: `patient_id:${i}`, row: patient(i) }])
      const answer = await Promise.race([write, new Promise(resolve => setTimeout(resolve, 3000, 'no answer within 3 s'))])
      expect(answer).not.toBe('no answer within 3 s')
      const [first] = answer as Awaited<typeof write>
      expect(await p.store.get('patient_records', token, String(i))).toBeUndefined()
      // The record stays locked on the primary until its own commit ends: the next write is ordered after the first.
      const next = p.coordinator.write([{ op: 'put', table: 'patient_records', id: String(i), shard: `patient_id:${i}`, row: { ...patient(i), address: 'Next' }, ifMatch: [first!.version] }])
      release()
      const [second] = await next
      expect(second!.version > first!.version).toBe(true)
      expect((await p.store.get('patient_records', token, String(i)))?.heads.map(h => h.version)).toEqual([second!.version])
    } finally {
      release()
      committer.commit = commit
    }
  })

  it('a primary whose own commit failed catches up before it orders the next write, even an insert', async () => {
    const { p, i, token, committer, commit } = await primaryWithItsCommitter()
    committer.commit = async () => { committer.commit = commit; throw new Error('disk full') }
    const insert = { op: 'insert' as const, table: 'patient_records', id: String(i), shard: `patient_id:${i}`, row: patient(i) }
    // Two other owners have it: the write is answered although the primary's copy failed.
    const [first] = await p.coordinator.write([insert])
    expect(await p.store.get('patient_records', token, String(i))).toBeUndefined()
    // The same insert again is refused as a duplicate, not stored beside the first as a second head.
    await expect(p.coordinator.write([{ ...insert, row: { ...patient(i), address: 'Twice' } }])).rejects.toMatchObject({ code: 'CONFLICT' })
    expect((await p.store.get('patient_records', token, String(i)))?.heads.map(h => h.version)).toEqual([first!.version])
  })

  it('a malformed or hostile replica message from a member is refused and writes nothing', async () => {
    net = await createTestnet(2)
    await net.converge(2)
    const [a, b] = net.nodes as [any, any]
    // Sent as member a: every message is checked, whoever sends it.
    const t = net.network.transport(a.peerId)
    const bad = [
      { type: 'nope' },
      { type: 'apply', groups: [[{ table: 'patient_records', id: '1', token: 'zz', version: 'x', parents: [], row: null }]] },
      { type: 'apply', groups: [[{ table: 'patient_records', id: '9', token: tokenOf('patient_id:9'), version: '000001700000000000.000000.abc', parents: [], row: { ...patient(9), patient_name: 'x'.repeat(151) } }]] },
      { type: 'write', mutations: [{ op: 'insert', table: 'patient_records', id: '9', shard: 'patient_id:10', row: patient(9) }] },
      // A state claiming a version it neither holds as a head nor knows to be replaced: later copies of it would be dropped as known.
      { type: 'merge', states: [{ heads: [{ table: 'patient_records', id: '9', token: tokenOf('patient_id:9'), version: '000001700000000000.000000.abc', parents: [], row: patient(9) }], seen: ['000001700000000000.000000.abc', '000001700000000001.000000.abc'], superseded: [] }] },
      { type: 'merge', states: [] },
      { type: 'write', mutations: [{ op: 'put', table: 'patient_records', id: '9', shard: 'patient_id:9', row: patient(9), writeId: 'not-hex' }] },
      // Unique-value claims: an owner that is no row id, a claim id that is no hash, a claim placed off its value's token.
      { type: 'write', mutations: [{ op: 'insert', table: UNIQUE_TABLE, id: `users.user_name.${'a'.repeat(32)}`, shard: `unique:users.user_name.${'a'.repeat(32)}`, row: { owner: 'x; drop' } }] },
      { type: 'write', mutations: [{ op: 'insert', table: UNIQUE_TABLE, id: 'users.user_name.thabo', shard: 'unique:users.user_name.thabo', row: { owner: '1' } }] },
      { type: 'apply', groups: [[{ table: UNIQUE_TABLE, id: `users.user_name.${'a'.repeat(32)}`, token: tokenOf('patient_id:9'), version: '000001700000000000.000000.abc', parents: [], row: { owner: '1' } }]] },
      { type: 'write', mutations: [{ op: 'delete', table: UNIQUE_TABLE, id: `users.user_name.${'a'.repeat(32)}`, shard: 'patient_id:9' }] },
      { type: 'scan', table: '_audit', where: {}, token: '../../etc', limit: 10 },
      null
    ]
    for (const msg of bad) {
      await expect(t.request(b.peerId, 'replica', msg)).rejects.toMatchObject({ code: 'INVALID_MESSAGE' })
    }
    expect(await b.store.countRows()).toEqual({})
    // The node still serves.
    await a.db.insert('patient_records', patient(2))
    expect((await b.db.get('patient_records', '2')).row.patient_id).toBe(2)
  })

  it('a peer that is not a member gets nothing on the replica protocol, however well-formed its requests', async () => {
    net = await createTestnet(2, { replicas: 2, writeQuorum: 2 })
    await net.converge(2)
    const [a, b] = net.nodes as [any, any]
    await a.db.insert('patient_records', patient(1))
    const before = await b.store.countRows()
    const outsider = net.network.transport(testIdentity().peerId)
    const token = tokenOf('patient_id:1')
    const probes = [
      { type: 'scan', table: 'patient_records', where: {}, limit: 100 },
      { type: 'read', table: 'patient_records', id: '1', token },
      { type: 'history', table: 'patient_records', id: '1', token },
      { type: 'write', mutations: [{ op: 'put', table: 'patient_records', id: '1', shard: 'patient_id:1', row: { ...patient(1), patient_name: 'Rewritten' } }] },
      { type: 'write', mutations: [{ op: 'delete', table: 'patient_records', id: '1', shard: 'patient_id:1' }] },
      { type: 'apply', groups: [[{ table: 'patient_records', id: '5', token: tokenOf('patient_id:5'), version: '000001700000000000.000000.abc', parents: [], row: patient(5) }]] }
    ]
    for (const msg of probes) {
      await expect(outsider.request(b.peerId, 'replica', msg)).rejects.toMatchObject({ code: 'FORBIDDEN' })
    }
    expect(await b.store.countRows()).toEqual(before)
    expect((await b.db.get('patient_records', '1')).row.patient_name).toBe('Patient 1')
  })
})

describe('quorum reads', () => {
  it('are done once R owners answered: an owner that hangs (frozen, or cut off while still counted alive) holds none up', async () => {
    net = await createTestnet(4, { replicas: 3, writeQuorum: 2, readQuorum: 2 })
    await net.converge(4)
    const writer = net.nodes[0]!
    await writer.db.insert('patient_records', patient(1))
    const owners = writer.coordinator.owners('patient_records', tokenOf('patient_id:1'))
    const reader = net.nodes.find(n => !owners.includes(n.peerId))!
    const frozen = owners.find(p => p !== writer.peerId) as string
    net.network.stall(frozen)
    try {
      for (let i = 0; i < 10; i++) {
        const started = Date.now()
        const r = await Promise.race([
          reader.db.get('patient_records', '1'),
          new Promise<never>((_resolve, reject) => setTimeout(() => { reject(new Error('a quorum read waited for the frozen owner')) }, 2000))
        ])
        expect(r.row.patient_name).toBe('Patient 1')
        expect(Date.now() - started).toBeLessThan(2000)
      }
    } finally {
      net.network.release(frozen)
    }
  })
  it('an owner whose answer comes after the quorum was made, and is stale, gets a read repair', async () => {
    // No handoff or anti-entropy in the time the test takes: only a read can bring the stale owner up to date.
    net = await createTestnet(4, { replicas: 3, writeQuorum: 2, readQuorum: 2, handoffIntervalMs: 600_000 })
    await net.converge(4)
    const n = net
    const writer = n.nodes[0]!
    await writer.db.insert('patient_records', patient(1), { consistency: 'all' })
    // The rebalances after the network formed are over: none hands the record to the stale owner below.
    await n.settled()
    const token = tokenOf('patient_id:1')
    const owners = writer.coordinator.owners('patient_records', token)
    const reader = n.nodes.find(m => !owners.includes(m.peerId))!
    const stale = n.nodes.find(m => m.peerId === owners.filter(p => p !== writer.peerId).pop())!
    // The stale owner misses an update (its hint waits for the next handoff, minutes away).
    for (const m of n.nodes) if (m !== stale) n.network.partition(stale.peerId, m.peerId)
    await writer.db.patch('patient_records', '1', { address: '2 New St' })
    for (const m of n.nodes) if (m !== stale) n.network.partition(stale.peerId, m.peerId, false)
    expect((await stale.store.get('patient_records', token, '1'))?.heads[0]?.row?.address).toBe('1 Main St')
    // Its replica answers are held back: reads that ask it are made by the other two owners and answer.
    n.network.hold(stale.peerId, 'replica')
    for (let i = 0; i < 8; i++) expect((await reader.db.get('patient_records', '1')).row.address).toBe('2 New St')
    expect(reader.coordinator.readRepairs).toBe(0)
    // Its late answers arrive: they only feed repair.
    n.network.deliverHeld(stale.peerId)
    await waitFor('the stale owner to be repaired by a late answer', async () => (await stale.store.get('patient_records', token, '1'))?.heads[0]?.row?.address === '2 New St', 5000, 10)
    expect(reader.coordinator.readRepairs).toBeGreaterThan(0)
  })
})

describe('membership claims', () => {
  const forge = (r: Record<string, unknown>, signer = testIdentity()): Record<string, unknown> => signClaim(r as any, signer.sign) as unknown as Record<string, unknown>
  const viewOf = async (from: ReturnType<typeof testIdentity>, to: string, view: unknown[]): Promise<unknown> =>
    await net!.network.transport(from.peerId).request(to, 'membership', { type: 'gossip', view })

  it('refuses gossip from a non-member without a signed join, and an empty message returns nothing', async () => {
    net = await createTestnet(2)
    await net.converge(2)
    const [, b] = net.nodes as [any, any]
    const outsider = testIdentity()
    await expect(viewOf(outsider, b.peerId, [])).rejects.toMatchObject({ code: 'FORBIDDEN' })
    // A record of its own that is not signed by its key is no join either.
    const other = testIdentity()
    await expect(viewOf(outsider, b.peerId, [forge({ peerId: outsider.peerId, addresses: [], incarnation: Date.now(), heartbeat: 1 }, other)])).rejects.toMatchObject({ code: 'FORBIDDEN' })
    expect(b.membership.stateOf(outsider.peerId)).toBeUndefined()
    expect(b.membership.members()).toHaveLength(2)
  })

  it('refuses forged claims about other members, and never passes them on', async () => {
    net = await createTestnet(3)
    await net.converge(3)
    const [a, b, c] = net.nodes as [any, any, any]
    // A peer joins properly (its own signed record), then lies about others.
    const liar = testIdentity()
    const join = forge({ peerId: liar.peerId, addresses: [], incarnation: Date.now(), heartbeat: 1 }, liar)
    const lies = [
      // "c has left", signed by the liar as if it were c's own claim
      forge({ peerId: c.peerId, addresses: [], incarnation: Date.now() + 1000, heartbeat: 5, left: true }, liar),
      // "c has left", unsigned
      { peerId: c.peerId, addresses: [], incarnation: Date.now() + 1000, heartbeat: 5, left: true },
      // a removal of c by a member that is not one
      forge({ peerId: c.peerId, addresses: [], incarnation: Date.now() + 1000, heartbeat: 5, left: true, removedBy: testIdentity().peerId }),
      // a removal of c signed by the liar, a member, while c is alive: only a down member may be removed
      forge({ peerId: c.peerId, addresses: [], incarnation: Date.now() + 1000, heartbeat: 5, left: true, removedBy: liar.peerId }, liar),
      // an invented member, its record signed by the liar's key
      forge({ peerId: testIdentity().peerId, addresses: ['/ip4/10.0.0.1/tcp/1'], incarnation: Date.now(), heartbeat: 1 }, liar),
      // five invented members, each record signed by its own key: still none joined by itself
      ...Array.from({ length: 5 }, () => { const sybil = testIdentity(); return forge({ peerId: sybil.peerId, addresses: [`/memory/${sybil.peerId}`], incarnation: Date.now(), heartbeat: 1 }, sybil) })
    ]
    await viewOf(liar, b.peerId, [join, ...lies])
    expect(b.membership.stateOf(c.peerId)).toBe('alive')
    expect(b.membership.members()).toHaveLength(4)
    expect(b.membership.ringMembers()).toHaveLength(4)
    // Nothing false spreads: after more gossip rounds every member still counts c as alive. The liar is a
    // member only of b, which it joined; a and c hear of it through b but it never answered them.
    const sent = net.network.delivered.membership ?? 0
    await waitFor('a dozen more gossip messages', () => (net!.network.delivered.membership ?? 0) >= sent + 12, 5000, 10)
    for (const n of [a, b, c]) {
      expect(n.membership.stateOf(c.peerId)).toBe('alive')
      expect(n.membership.members().map((m: any) => m.peerId).sort()).toEqual([a.peerId, b.peerId, c.peerId, ...(n === b ? [liar.peerId] : [])].sort())
    }
  })

  it('refuses counters out of range, so that a rebuttal always exists', async () => {
    net = await createTestnet(2)
    await net.converge(2)
    const [, b] = net.nodes as [any, any]
    const far = testIdentity()
    await expect(viewOf(far, b.peerId, [forge({ peerId: far.peerId, addresses: [], incarnation: 2 ** 53 - 1, heartbeat: 1 }, far)])).rejects.toMatchObject({ code: 'FORBIDDEN' })
    const ok = testIdentity()
    await viewOf(ok, b.peerId, [forge({ peerId: ok.peerId, addresses: [], incarnation: Date.now(), heartbeat: 1 }, ok)])
    expect(b.membership.stateOf(ok.peerId)).toBe('alive')
    // Its own later claim with a heartbeat past the bound is refused; the record stays as it was.
    await viewOf(ok, b.peerId, [forge({ peerId: ok.peerId, addresses: [], incarnation: Date.now(), heartbeat: 2 ** 41 }, ok)])
    expect(b.membership.members().find((m: any) => m.peerId === ok.peerId)).toBeDefined()
    expect(b.membership.stateOf(ok.peerId)).toBe('alive')
  })
})

describe('rebalance and catch-up', () => {
  const where = async (n: Testnet['nodes'][number], i: number): Promise<boolean> =>
    (await n.store.get('patient_records', tokenOf(`patient_id:${i}`), String(i))) !== undefined

  it('a member that joins is handed the records it now owns, and copies that moved away are dropped', async () => {
    net = await createTestnet(3, { replicas: 2 })
    await net.converge(3)
    const count = 150
    for (let i = 1; i <= count; i++) await net.nodes[i % 3]!.db.insert('patient_records', patient(i))
    const fresh = await net.add()
    await net.converge(4)
    await net.settled()
    let onFresh = 0
    for (let i = 1; i <= count; i++) {
      const owners = fresh.coordinator.owners('patient_records', tokenOf(`patient_id:${i}`))
      const holders = []
      for (const n of net.nodes) if (await where(n, i)) holders.push(n.peerId)
      expect(holders.sort(), `patient ${i}`).toEqual([...owners].sort())
      if (owners.includes(fresh.peerId)) onFresh++
    }
    // The newcomer owns about N/members of the keys: it was handed them, none were written through it.
    expect(onFresh).toBeGreaterThan(count * 0.25)
    expect(onFresh).toBeLessThan(count * 0.75)
    const last = fresh.coordinator.rebalanceStatus()
    expect(last.pending).toBe(false)
    // The ring the records are now placed for is kept with them: a restart does not move them again.
    for (const n of net.nodes) expect(((await n.store.getMeta<string[]>('placedFor')) ?? []).sort()).toEqual(net.nodes.map(x => x.peerId).sort())
    // Every row reads back through the newcomer, as written.
    for (let i = 1; i <= count; i += 7) expect((await fresh.db.get('patient_records', String(i))).row.patient_name).toBe(`Patient ${i}`)
  })

  it('a newcomer to a network smaller than N gets every record, with its history', async () => {
    net = await createTestnet(2, { replicas: 3, writeQuorum: 2, readQuorum: 2 })
    await net.converge(2)
    const count = 50
    for (let i = 1; i <= count; i++) {
      const db = net.nodes[i % 2]!.db
      await db.insert('patient_records', patient(i))
      await db.patch('patient_records', String(i), { address: `Moved ${i}` })
    }
    const fresh = await net.add()
    await net.converge(3)
    await net.settled()
    // No old owner lost its place, so only the pushes to the newcomer can have put the rows there.
    for (let i = 1; i <= count; i++) {
      const token = tokenOf(`patient_id:${i}`)
      const state = await fresh.store.get('patient_records', token, String(i))
      expect(state?.heads[0]?.row?.address, `patient ${i}`).toBe(`Moved ${i}`)
      expect(await fresh.store.versions('patient_records', token, String(i))).toHaveLength(2)
    }
  })

  it('a primary that missed an update catches up from the other owners before it orders the next', async () => {
    net = await createTestnet(3, { replicas: 3, writeQuorum: 2, readQuorum: 2, handoffIntervalMs: 60_000 })
    await net.converge(3)
    const [p, b, c] = net.nodes as [Testnet['nodes'][number], Testnet['nodes'][number], Testnet['nodes'][number]]
    let i = 1
    while (p.coordinator.owners('patient_records', tokenOf(`patient_id:${i}`))[0] !== p.peerId) i++
    const token = tokenOf(`patient_id:${i}`)
    const first = await b.db.insert('patient_records', patient(i))
    const deadline = Date.now() + 3000
    while (!await where(p, i)) {
      if (Date.now() > deadline) throw new Error('timed out waiting for the insert to reach the primary')
      await new Promise(resolve => setTimeout(resolve, 10))
    }
    // The primary is cut off for one update (its hint is held for a minute), then comes back.
    net.network.down(p.peerId)
    const second = await b.coordinator.write([{ op: 'put', table: 'patient_records', id: String(i), shard: `patient_id:${i}`, row: { ...patient(i), address: 'Second' }, ifMatch: [first.version] }])
    net.network.up(p.peerId)
    expect((await p.store.get('patient_records', token, String(i)))?.heads.map(h => h.version)).toEqual([first.version])
    const back = Date.now() + 3000
    while (!net.nodes.every(n => n.membership.isAlive(p.peerId))) {
      if (Date.now() > back) throw new Error('timed out waiting for every node to see the primary alive')
      await new Promise(resolve => setTimeout(resolve, 10))
    }
    // A write naming the current version, sent through the stale primary, is ordered after it: no 412, no fork.
    const [third] = await c.coordinator.write([{ op: 'put', table: 'patient_records', id: String(i), shard: `patient_id:${i}`, row: { ...patient(i), address: 'Second', contact_number: '0999999999' }, ifMatch: [second[0]!.version] }])
    const r = await c.db.get('patient_records', String(i), { consistency: 'all' })
    expect(r.version).toBe(third!.version)
    expect(r.conflicts).toEqual([])
    expect(r.row).toMatchObject({ address: 'Second', contact_number: '0999999999' })
    const history = await c.db.history('patient_records', String(i), { consistency: 'all' })
    expect(history.map(h => h.version)).toEqual([first.version, second[0]!.version, third!.version])
  })

  it('a merged state is durable, idempotent, and never brings back a replaced version', async () => {
    net = await createTestnet(1)
    const [n] = net.nodes as [Testnet['nodes'][number]]
    const v1 = await n.db.insert('patient_records', patient(9))
    const v2 = await n.db.patch('patient_records', '9', { address: 'Two' })
    const token = tokenOf('patient_id:9')
    const state = (await n.store.get('patient_records', token, '9'))!
    // A store that knows only the latest state (as a newcomer would) ...
    const { Store } = await import('../../src/storage/store.js')
    const { mkdtemp, rm } = await import('node:fs/promises')
    const { tmpdir } = await import('node:os')
    const { join } = await import('node:path')
    const dir = await mkdtemp(join(tmpdir(), 'ntk-merge-'))
    const { randomBytes } = await import('node:crypto')
    const other = new Store({ path: dir, sync: false, indexes: { patient_records: ['email'] }, dataKey: randomBytes(32) })
    await other.open()
    try {
      expect(await other.merge([state])).toEqual(['merged'])
      expect(await other.merge([state])).toEqual(['known'])
      expect(await other.countRows()).toEqual({ patient_records: 1 })
      // ... then receives the first version late (a slow hint): it goes to history, once, and never becomes a head.
      const old = { table: 'patient_records', id: '9', token, version: v1.version, parents: [], row: patient(9) as any }
      expect(await other.apply([old])).toEqual(['history'])
      expect(await other.apply([old])).toEqual(['duplicate'])
      expect((await other.versions('patient_records', token, '9')).map(v => v.version)).toEqual([v1.version, v2.version])
      const got = (await other.get('patient_records', token, '9'))!
      expect(got.heads.map(h => h.version)).toEqual([v2.version])
      expect((await other.scan('patient_records', { where: { email: 'p9@example.org' }, limit: 10 })).rows).toHaveLength(1)
      // A copy is dropped only as it was read; the row, its history and index entries go with it.
      expect(await other.drop({ ...state, seen: [v2.version] })).toBe(false)
      expect(await other.drop(got)).toBe(true)
      expect(await other.get('patient_records', token, '9')).toBeUndefined()
      expect(await other.countRows()).toEqual({})
      expect((await other.scan('patient_records', { where: { email: 'p9@example.org' }, limit: 10 })).rows).toHaveLength(0)
      expect(await other.versions('patient_records', token, '9')).toEqual([])
    } finally {
      await other.close()
      await rm(dir, { recursive: true, force: true })
    }
  })
})

describe('retries after a silent primary', () => {
  it('a write the primary applied but could not answer is not applied twice when the next owner takes the retry', async () => {
    net = await createTestnet(3, { replicas: 3, writeQuorum: 2, readQuorum: 2 })
    await net.converge(3)
    const [a, b, c] = net.nodes as [Testnet['nodes'][number], Testnet['nodes'][number], Testnet['nodes'][number]]
    // A key whose primary is b, written through a.
    let i = 1
    while (a.coordinator.owners('patient_records', tokenOf(`patient_id:${i}`))[0] !== b.peerId) i++
    net.network.loseReplies(a.peerId, b.peerId)
    const first = await a.db.insert('patient_records', patient(i))
    // b applied it and replicated it; a retried on the next owner, which recognised the write as its own.
    const r = await c.db.get('patient_records', String(i), { consistency: 'all' })
    expect(r.version).toBe(first.version)
    expect(r.conflicts).toEqual([])
    expect((await c.db.history('patient_records', String(i), { consistency: 'all' })).map(h => h.version)).toEqual([first.version])

    // The same for an update naming its version, and for a delete.
    net.network.loseReplies(a.peerId, b.peerId)
    const second = await a.db.patch('patient_records', String(i), { address: 'Second' })
    net.network.loseReplies(a.peerId, b.peerId)
    await a.db.delete('patient_records', String(i), { ifMatch: [second.version] })
    const versions = (await c.db.history('patient_records', String(i), { consistency: 'all' })).map(h => h.version)
    expect(versions).toHaveLength(3)
    expect(versions.slice(0, 2)).toEqual([first.version, second.version])
    await expect(c.db.get('patient_records', String(i), { consistency: 'all' })).rejects.toMatchObject({ code: 'NOT_FOUND' })

    // A plain second insert of an existing key is still refused.
    await expect(a.db.insert('patient_records', patient(i + 100000))).resolves.toBeDefined()
    await expect(c.db.insert('patient_records', patient(i + 100000))).rejects.toMatchObject({ code: 'CONFLICT' })
  })
})

describe('removing a member that is gone for good', () => {
  it('passes its share to the others, copies its records to their new owners, and drops its hints', async () => {
    net = await createTestnet(5, { replicas: 2, writeQuorum: 1 })
    await net.converge(5)
    const [a] = net.nodes as [Testnet['nodes'][number]]
    const gone = net.nodes[3]!
    const count = 120
    for (let i = 1; i <= count; i++) await net.nodes[i % 5]!.db.insert('patient_records', patient(i))
    net.network.down(gone.peerId)
    // A write it misses while down becomes a hint somewhere.
    let k = count + 1
    while (!a.coordinator.owners('patient_records', tokenOf(`patient_id:${k}`)).includes(gone.peerId)) k++
    await a.db.insert('patient_records', patient(k))
    const deadline = Date.now() + 5000
    while (a.membership.stateOf(gone.peerId) !== 'down') {
      if (Date.now() > deadline) throw new Error('timed out waiting for the member to be marked down')
      await new Promise(resolve => setTimeout(resolve, 20))
    }
    expect(() => a.membership.remove(net!.nodes[1]!.peerId)).toThrow(/only a down member/)
    expect(() => a.membership.remove('12D3KooWnosuchpeer')).toThrow(/No member/)
    expect(a.membership.remove(gone.peerId).state).toBe('left')
    const rest = net.nodes.filter(n => n !== gone)
    await net.converge(4, 5000, rest)
    await net.settled()
    for (const i of [...Array.from({ length: count }, (_, j) => j + 1), k]) {
      const owners = a.coordinator.owners('patient_records', tokenOf(`patient_id:${i}`))
      expect(owners).not.toContain(gone.peerId)
      const holders = []
      for (const n of rest) if (await n.store.get('patient_records', tokenOf(`patient_id:${i}`), String(i)) !== undefined) holders.push(n.peerId)
      expect(holders.sort(), `patient ${i}`).toEqual([...owners].sort())
    }
    const hintsGone = Date.now() + 3000
    while (rest.some(n => n.store.hintCount(gone.peerId) > 0)) {
      if (Date.now() > hintsGone) throw new Error('timed out waiting for hints for the removed member to be dropped')
      await new Promise(resolve => setTimeout(resolve, 20))
    }
    // The machine was only cut off: when it is back it refutes the removal and is a member again, for good.
    net.network.up(gone.peerId)
    await net.converge(5)
    const stable = Date.now() + 1000
    while (Date.now() < stable) {
      for (const n of net.nodes) expect(n.membership.stateOf(gone.peerId)).not.toBe('left')
      await new Promise(resolve => setTimeout(resolve, 50))
    }
  })
})

describe('a removal kept across restarts', () => {
  const timing = { heartbeatMs: 30, suspectAfterMs: 150, downAfterMs: 400 }
  const until = async (what: string, cond: () => boolean): Promise<void> => { await waitFor(what, cond, 5000, 10) }

  it('saves a removed member as left; a restarted node knows it as left, and the member can still refute it', async () => {
    const network = new MemoryNetwork()
    const keys = [testIdentity(), testIdentity(), testIdentity()]
    const [A, B, C] = keys.map(k => k.peerId) as [string, string, string]
    let saved: SavedMember[] = []
    const member = (peerId: string, persist?: (m: SavedMember[]) => Promise<void>): Membership =>
      new Membership({ transport: network.transport(peerId), peerId, sign: keys.find(k => k.peerId === peerId)!.sign, addresses: () => [`/memory/${peerId}`], ...(persist === undefined ? {} : { persist }) }, timing)
    const a = member(A, async m => { saved = m })
    const b = member(B)
    const c = member(C)
    const all = [a, b, c]
    try {
      b.addCandidate(A)
      c.addCandidate(A)
      for (const m of all) m.start()
      await until('A to see B and C alive', () => a.isAlive(B) && a.isAlive(C))
      network.down(B)
      await until('A to mark B down', () => a.stateOf(B) === 'down')
      a.remove(B)
      await until('A to save B as left', () => saved.some(m => m.peerId === B && m.left === true))
      const leftRecord = saved.find(m => m.peerId === B) as SavedMember
      expect(Number.isSafeInteger(leftRecord.incarnation) && Number.isSafeInteger(leftRecord.heartbeat)).toBe(true)
      expect(saved.find(m => m.peerId === C)).toEqual({ peerId: C, addresses: [`/memory/${C}`] })

      // A restarts (every node could): from its saved file alone it knows B left, and C is a candidate.
      a.stop()
      const a2 = member(A)
      all.push(a2)
      const bad = { peerId: 'not a peer id!', addresses: [], left: true as const, incarnation: 1, heartbeat: 1 }
      a2.restore([...saved, { peerId: '12D3KooWoldfileentry', addresses: [], left: true }, bad])
      expect(a2.stateOf(B)).toBe('left')
      expect(a2.members().find(m => m.peerId === B)?.lastSeen).toBe(leftRecord.lastSeen)
      // a saved record peers would refuse in gossip is not taken in (it would spoil every view sent)
      expect(a2.members().some(m => m.peerId === bad.peerId)).toBe(false)
      expect(a2.ringMembers()).not.toContain(B)
      // an entry marked left without its incarnation (or an old file's entry) is only a candidate
      expect(a2.stateOf('12D3KooWoldfileentry')).toBeUndefined()
      a2.start()
      await until('the restarted A to reach C', () => a2.isAlive(C))
      expect(a2.stateOf(B)).toBe('left')

      // B was only cut off: back, it hears of its removal and refutes it with a new incarnation.
      network.up(B)
      await until('B to be a member again at the restarted A', () => a2.isAlive(B))
    } finally {
      for (const m of all) m.stop()
    }
  })
})

describe('unique values across nodes', () => {
  it('two nodes cannot give one user name to two users at once; renames and deletes give names back', async () => {
    net = await createTestnet(3, { replicas: 3, writeQuorum: 2, readQuorum: 2 })
    await net.converge(3)
    const [a, b, c] = net.nodes as [Testnet['nodes'][number], Testnet['nodes'][number], Testnet['nodes'][number]]
    const role = await a.db.insert('user_roles', { role_name: 'nurse' })
    const user = (name: string): Record<string, unknown> => ({ user_name: name, role_id: Number(role.id) })
    // Each node's own check sees no such user yet: only the claim through the ring can refuse two of them.
    const results = await Promise.allSettled([a, b, c].map(async n => await n.db.insert('users', user('thabo'))))
    const won = results.filter((r): r is PromiseFulfilledResult<Awaited<ReturnType<Database['insert']>>> => r.status === 'fulfilled')
    expect(won).toHaveLength(1)
    for (const r of results) {
      if (r.status === 'rejected') expect(r.reason).toMatchObject({ code: 'CONFLICT', column: 'user_name' })
    }
    expect((await c.db.list('users', { user_name: 'thabo' }, { consistency: 'all' })).rows).toHaveLength(1)
    const thabo = won[0]!.value

    // A rename frees the old name and takes the new one; a delete frees its name.
    await a.db.patch('users', thabo.id, { user_name: 'thabo.m' })
    const second = await b.db.insert('users', user('thabo'))
    await expect(c.db.insert('users', user('thabo.m'))).rejects.toMatchObject({ code: 'CONFLICT', column: 'user_name' })
    await b.db.delete('users', thabo.id)
    await c.db.insert('users', user('thabo.m'))
    await expect(a.db.replace('users', second.id, user('thabo.m'))).rejects.toMatchObject({ code: 'CONFLICT', column: 'user_name' })
    // A batch takes names the same way.
    await expect(a.db.batch([{ op: 'insert', table: 'users', row: user('thabo') }])).rejects.toMatchObject({ code: 'CONFLICT', column: 'user_name' })
    await a.db.batch([{ op: 'insert', table: 'users', row: user('lerato') }])
    await expect(b.db.insert('users', user('lerato'))).rejects.toMatchObject({ code: 'CONFLICT' })

    // A refused write gives back only claims it made. Here the name is already claimed for user 7
    // (say by a write of user 7 still on its way), so an insert of another user 7 with that name
    // takes the claim as its own without making it; the insert is refused (user 7 exists) and the
    // claim stays.
    const users = findTable('users')!
    const claimOf = async (name: string): Promise<unknown> => {
      const id = uniqueClaimId(users, 'user_name', name)
      const state = await c.coordinator.read(UNIQUE_TABLE, id, `unique:${id}`, { consistency: 'all' })
      return state?.heads.find(h => h.row !== null)?.row?.owner
    }
    const seven = await a.db.insert('users', { ...user('seven'), user_id: 7 })
    const claim = uniqueClaimId(users, 'user_name', 'kept')
    await a.coordinator.write([{ op: 'insert', table: UNIQUE_TABLE, id: claim, shard: `unique:${claim}`, row: { owner: seven.id } }])
    await expect(b.db.insert('users', { ...user('kept'), user_id: 7 })).rejects.toMatchObject({ code: 'CONFLICT' })
    expect(await claimOf('kept')).toBe(seven.id)
    // Deleting a user gives back the claims naming it.
    await b.db.delete('users', seven.id)
    expect(await claimOf('seven')).toBeUndefined()
  })

  it('a claim left by a write that never landed is taken over only after the grace period', async () => {
    net = await createTestnet(3, { replicas: 3, writeQuorum: 2, readQuorum: 2 })
    await net.converge(3)
    const [a, b] = net.nodes as [Testnet['nodes'][number], Testnet['nodes'][number]]
    const role = await a.db.insert('user_roles', { role_name: 'clerk' })
    const users = findTable('users')!
    const id = uniqueClaimId(users, 'user_name', 'ghost')
    // The claim of a user 424242 whose own write never happened.
    await a.coordinator.write([{ op: 'insert', table: UNIQUE_TABLE, id, shard: `unique:${id}`, row: { owner: '424242' } }])
    await expect(b.db.insert('users', { user_name: 'ghost', role_id: Number(role.id) })).rejects.toThrow(/already used by users 424242/)
    const impatient = new Database({ coordinator: b.coordinator, peerId: b.peerId, claimGraceMs: 0 })
    const ghost = await impatient.insert('users', { user_name: 'ghost', role_id: Number(role.id) })
    // Now a real row holds the name: nobody takes it, however old the claim.
    await expect(new Database({ coordinator: a.coordinator, peerId: a.peerId, claimGraceMs: 0 }).insert('users', { user_name: 'ghost', role_id: Number(role.id) }))
      .rejects.toThrow(new RegExp(`already used by users ${ghost.id}`))
  })
})

describe('leaving the network', () => {
  it('a member that leaves hands every record to its owners and keeps none', async () => {
    net = await createTestnet(4, { replicas: 2 })
    await net.converge(4)
    const count = 100
    for (let i = 1; i <= count; i++) await net.nodes[i % 4]!.db.insert('patient_records', patient(i))
    const leaver = net.nodes[2]!
    const held = Object.values(await leaver.store.countRows()).reduce((a, b) => a + b, 0)
    expect(held).toBeGreaterThan(0)
    await leaver.membership.leave()
    const { handedOff } = await leaver.coordinator.drain(10_000)
    expect(handedOff).toBe(held)
    expect(await leaver.store.countRows()).toEqual({})
    const rest = net.nodes.filter(n => n !== leaver)
    await net.converge(3, 5000, rest)
    await net.settled()
    for (const n of rest) expect(n.membership.stateOf(leaver.peerId)).toBe('left')
    for (let i = 1; i <= count; i++) {
      const owners = rest[0]!.coordinator.owners('patient_records', tokenOf(`patient_id:${i}`))
      expect(owners).not.toContain(leaver.peerId)
      const holders = []
      for (const n of rest) if (await n.store.get('patient_records', tokenOf(`patient_id:${i}`), String(i)) !== undefined) holders.push(n.peerId)
      expect(holders.sort(), `patient ${i}`).toEqual([...owners].sort())
    }
    // The node that left reads nothing more from the others (its daemon stops once it has handed everything over).
    await expect(leaver.db.get('patient_records', '7')).rejects.toMatchObject({ code: 'UNAVAILABLE' })
    const t = net.network.transport(leaver.peerId)
    await expect(t.request(rest[0]!.peerId, 'replica', { type: 'scan', table: 'patient_records', where: {}, limit: 10 })).rejects.toMatchObject({ code: 'FORBIDDEN' })
  })
})

describe('clock skew', () => {
  it('logs a member whose clock runs 75 s ahead, once a minute, shows its offset, and keeps it a member', async () => {
    const network = new MemoryNetwork()
    const keys = [testIdentity(), testIdentity(), testIdentity()]
    const [A, B, C] = keys.map(k => k.peerId) as [string, string, string]
    const warned = new Map<string, string[]>([[A, []], [B, []], [C, []]])
    const ms = keys.map(({ peerId, sign }) => new Membership({
      transport: network.transport(peerId),
      peerId,
      sign,
      addresses: () => [`/memory/${peerId}`],
      warn: line => { warned.get(peerId)?.push(line) },
      ...(peerId === C ? { now: () => Date.now() + 75_000 } : {})
    }, { heartbeatMs: 20, suspectAfterMs: 400, downAfterMs: 1000 }))
    const [a, b, c] = ms as [Membership, Membership, Membership]
    b.addCandidate(A)
    c.addCandidate(A)
    for (const m of ms) m.start()
    try {
      await waitFor('A and B to measure C\'s clock, and C theirs', () =>
        warned.get(A)!.some(l => l.includes(C)) && warned.get(B)!.some(l => l.includes(C)) &&
        warned.get(C)!.some(l => l.includes(A)) && warned.get(C)!.some(l => l.includes(B)), 5000, 10)
      for (const m of [a, b]) expect(m.isAlive(C) && c.isAlive(A) && c.isAlive(B)).toBe(true)
      expect(warned.get(A)).toEqual([`member ${C}'s clock is 75 s ahead of this node's (the network tolerates 60 s): its writes win conflicts they should not; fix its time (NTP)`])
      expect(warned.get(C)?.find(l => l.includes(A))).toMatch(/^member \S+'s clock is 75 s behind this node's \(the network tolerates 60 s\)/)
      const offsets = new Map(a.members().map(m => [m.peerId, m.clockOffsetMs]))
      expect(Math.abs((offsets.get(C) ?? 0) - 75_000)).toBeLessThan(1000)
      expect(Math.abs(offsets.get(B) ?? Infinity)).toBeLessThan(1000)
      // Many rounds later, still one line per member per minute.
      await new Promise(resolve => setTimeout(resolve, 200))
      expect(warned.get(A)).toHaveLength(1)
      expect(warned.get(B)).toHaveLength(1)
    } finally {
      for (const m of ms) m.stop()
    }
  })

  it('a node 75 s ahead is logged by the others, and a write over its version still sorts above it', async () => {
    const warned: Array<[number, string]> = []
    net = await createTestnet(3, { replicas: 3, writeQuorum: 2, readQuorum: 2 }, undefined, { clockAheadMs: i => i === 2 ? 75_000 : 0, warn: (i, line) => { warned.push([i, line]) } })
    await net.converge(3)
    const ahead = net.nodes[2]!
    await waitFor('nodes 0 and 1 to log node 2\'s clock', () => [0, 1].every(i => warned.some(([j, l]) => j === i && l.startsWith(`member ${ahead.peerId}'s clock is 75 s ahead`))), 5000, 10)
    let i = 1
    while (ahead.coordinator.owners('patient_records', tokenOf(`patient_id:${i}`))[0] !== ahead.peerId) i++
    const first = await net.nodes[0]!.db.insert('patient_records', patient(i))
    // The primary is cut off: the next owner, on real time, orders the update over the version from the future.
    net.network.down(ahead.peerId)
    const second = await net.nodes[0]!.db.patch('patient_records', String(i), { address: 'New address' })
    expect(second.version > first.version).toBe(true)
    const r = await net.nodes[1]!.db.get('patient_records', String(i))
    expect(r.row.address).toBe('New address')
    expect(r.version).toBe(second.version)
    net.network.up(ahead.peerId)
  })

  it('accepts gossip without a clock reading (older nodes) and refuses a malformed one', async () => {
    const { parseGossipMessage } = await import('../../src/cluster/membership.js')
    const peer = testIdentity().peerId
    const view = [{ peerId: peer, addresses: [], incarnation: 1, heartbeat: 0 }]
    expect(parseGossipMessage({ type: 'gossip', view })).toEqual({ view })
    expect(parseGossipMessage({ type: 'gossip', view, now: 1_700_000_000_000 })).toEqual({ view, now: 1_700_000_000_000 })
    for (const now of ['1', 1.5, -1, Number.MAX_SAFE_INTEGER + 2, null]) {
      expect(() => parseGossipMessage({ type: 'gossip', view, now })).toThrow(/clock reading/)
    }
  })
})

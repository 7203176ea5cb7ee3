import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { NtsoekheClient } from '../../src/client/index.js'
import { adminToken, cli, json, startDaemon, type TestDaemon } from '../helpers/daemon.js'
import { e2ePatient, waitForValue } from '../helpers/wait.js'

/**
 * Five real daemons on 127.0.0.1 over TCP + Noise, each bootstrapped from the
 * first, with the default N=3, W=2, R=2.
 */
const SIZE = 5
const ROWS = 1000
let daemons: TestDaemon[] = []
let clients: NtsoekheClient[] = []
/** The first admin's token (from the first home), good on every member */
let token = ''

const patient = e2ePatient

const waitFor = waitForValue

async function pool<T> (count: number, concurrency: number, fn: (i: number) => Promise<T>): Promise<T[]> {
  const out = new Array<T>(count)
  let next = 0
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (next < count) { const i = next++; out[i] = await fn(i) }
  }))
  return out
}

/** Which daemons hold the row in their own shard (`get --local` through the socket) */
async function holders (table: string, id: string | number, among = clients): Promise<number[]> {
  const out: number[] = []
  for (const [i, c] of among.entries()) {
    try {
      await c.get(table, id, { local: true })
      out.push(i)
    } catch (err) {
      if ((err as { code?: string }).code !== 'NOT_FOUND') throw err
    }
  }
  return out
}

beforeAll(async () => {
  const first = await startDaemon()
  daemons.push(first)
  // Only the first home created the network and its admin: the others join it with its invite and take its users.
  token = await adminToken(first.home)
  const firstClient = new NtsoekheClient({ socket: first.socket, token })
  const { invite } = await firstClient.invite()
  const rest = await Promise.all(Array.from({ length: SIZE - 1 }, async () => await startDaemon({ args: ['--join', invite] })))
  daemons = [first, ...rest]
  clients = daemons.map(d => new NtsoekheClient({ socket: d.socket, token }))
}, 60_000)

afterAll(async () => {
  await Promise.all(daemons.map(async d => await d.stop().catch(() => {})))
}, 30_000)

describe('a five-node network', () => {
  it('every node sees five alive members', async () => {
    await waitFor('every daemon to see 5 alive members', async () => {
      const all = await Promise.all(clients.map(async c => await c.status()))
      return all.every(s => s.members.filter((m: { state: string }) => m.state === 'alive').length === SIZE)
    })
    const status = json(await cli(['status', '--json'], { home: daemons[2]!.home, token }))
    expect(status.members).toHaveLength(SIZE)
    for (const m of status.members) expect(m).toMatchObject({ peerId: expect.any(String), state: 'alive' })
    expect(status.underReplicated).toBe(false)
  }, 40_000)

  it('a user made on one node works on every node; revoked on another, it stops working everywhere within seconds', async () => {
    const made = json(await cli(['user', 'add', 'mpho', '--role', 'nurse', '--json'], { home: daemons[0]!.home, token }))
    expect(made).toEqual({ user: 'mpho', role: 'nurse', token: expect.any(String) })
    for (const d of daemons) {
      const r = await cli(['query', 'patient_records', '--limit', '1', '--json'], { home: d.home, token: made.token })
      expect(r.code, r.stderr).toBe(0)
    }
    expect((await cli(['user', 'revoke', 'mpho'], { home: daemons[1]!.home, token })).code).toBe(0)
    const nurse = daemons.map(d => new NtsoekheClient({ socket: d.socket, token: made.token }))
    await waitFor('the revoked token to be refused on every node', async () => {
      const refused = await Promise.all(nurse.map(async c => await c.status().then(() => false, (err: { code?: string }) => err.code === 'UNAUTHORIZED')))
      return refused.every(Boolean)
    }, 5000)
    for (const c of nurse) c.close()
  })

  it('1,000 rows written through node 1 are read through node 5, each on exactly N nodes', async () => {
    await pool(ROWS, 32, async i => await clients[0]!.insert('patient_records', patient(i + 1)))
    const got = await pool(ROWS, 32, async i => await clients[4]!.get('patient_records', i + 1))
    got.forEach((r, i) => expect(r.row.patient_name).toBe(`Patient ${i + 1}`))

    // Every row has exactly three holders, and the shares add up to N copies of everything
    // (W=2 acknowledged each write: the third copy may land a moment later).
    await waitFor(`${ROWS * 3} patient_records copies across the network`, async () => {
      const perNode = await Promise.all(clients.map(async c => (await c.ring()).localRows.patient_records ?? 0))
      const total = perNode.reduce((a: number, b: number) => a + b, 0)
      if (total > ROWS * 3) throw new Error(`${total} copies: more than N of some rows`)
      return total === ROWS * 3
    }, 15_000)
    for (const id of [1, 250, 500, 777, 1000]) expect(await holders('patient_records', id)).toHaveLength(3)


    // The CLI's --local says the same: exit 0 where the row lives, 1 elsewhere.
    const codes = await Promise.all(daemons.map(async d => (await cli(['get', 'patient_records', '42', '--local', '--json'], { home: d.home, token })).code))
    expect(codes.filter(c => c === 0)).toHaveLength(3)
    expect(codes.filter(c => c === 1)).toHaveLength(2)

    // A listing through any node sees the whole network once.
    const seen = new Set<number>()
    let cursor: string | undefined
    for (let page = 0; page < 20; page++) {
      const r = await clients[3]!.query('patient_records', {}, { limit: 400, ...(cursor === undefined ? {} : { cursor }) })
      for (const row of r.rows) seen.add(Number(row.patient_id))
      if (r.next === null) break
      cursor = r.next
    }
    expect(seen.size).toBe(ROWS)
  }, 120_000)

  it("keeps a patient's rows in every co-located table on the same owners", async () => {
    const c = clients[1]!
    // A new patient's first visit, one batch through the CLI: the history and lab rows refer to rows the batch itself inserts.
    const visit = await cli(['batch', JSON.stringify({ operations: [
      { op: 'insert', table: 'patient_records', row: patient(5001) },
      { op: 'insert', table: 'medical_history', row: { history_id: 50011, patient_id: 5001, diagnosis: 'Flu', treatment: 'Rest', date_of_visit: '2026-01-02T12:00:00+02:00' } },
      { op: 'insert', table: 'lab_results', row: { result_id: 50012, record_id: 50011, patient_id: 5001, test_name: 'CBC', test_date: '2026-01-03', test_result: 'Normal' } }
    ] }), '--json'], { home: daemons[1]!.home, token })
    expect(visit.code, visit.stderr).toBe(0)
    const [, h, l] = json<{ results: Array<{ id: number }> }>(visit).results as [unknown, { id: number }, { id: number }]
    expect([h.id, l.id]).toEqual([50011, 50012])
    expect((await clients[3]!.get('medical_history', 50011)).row.date_of_visit).toBe('2026-01-02T10:00:00.000Z')
    await c.insert('medications', { medication_id: 9001, name: 'Aspirin', dosage: '100 mg', manufacturer: 'Acme' })
    const b = await c.insert('billing_insurance', { patient_id: 5001, amount: '12.50', date: '2026-01-02', insurance_provider: 'X', insurance_policy_number: 'P1' })
    await c.insert('patient_medications', { patient_id: 5001, medication_id: 9001 })
    const threeHolders = async (table: string, id: string | number): Promise<number[]> =>
      await waitFor(`${table} ${id} on 3 nodes`, async () => { const h = await holders(table, id); return h.length === 3 ? h : undefined }, 10_000)
    const owners = await threeHolders('patient_records', 5001)
    expect(await threeHolders('medical_history', h.id)).toEqual(owners)
    expect(await threeHolders('billing_insurance', b.id)).toEqual(owners)
    expect(await threeHolders('patient_medications', '5001:9001')).toEqual(owners)
    expect(await threeHolders('lab_results', l.id)).toEqual(owners)
  }, 60_000)

  it('with one node killed, writes and reads still succeed', async () => {
    const victim = daemons[2]!
    await victim.kill9()
    const live = clients.filter((_, i) => i !== 2)
    // At once, before failure detection has marked it down.
    await pool(100, 16, async i => await live[i % live.length]!.insert('patient_records', patient(2001 + i)))
    const fresh = await pool(100, 16, async i => await live[(i + 1) % live.length]!.get('patient_records', 2001 + i))
    fresh.forEach((r, i) => expect(r.row.patient_id).toBe(2001 + i))
    const old = await pool(ROWS, 32, async i => await live[i % live.length]!.get('patient_records', i + 1))
    old.forEach((r, i) => expect(r.row.patient_id).toBe(i + 1))
    const u = await live[0]!.update('patient_records', 1, { address: 'Moved' })
    expect(u.row?.address).toBe('Moved')
    // And the survivors come to see it down.
    await waitFor('the killed node to be marked suspect or down', async () => {
      const s = await live[0]!.status()
      return s.members.some((m: { peerId: string, state: string }) => m.state !== 'alive')
    }, 20_000)
  }, 120_000)

  it('the killed node, restarted without --bootstrap, rejoins from its saved members and gets what it missed', async () => {
    const restarted = await startDaemon({ home: daemons[2]!.home })
    daemons[2] = restarted
    clients[2] = new NtsoekheClient({ socket: restarted.socket, token })
    await waitFor('the restarted node to see all 5 members alive again', async () => {
      const s = await clients[2]!.status()
      return s.members.filter((m: { state: string }) => m.state === 'alive').length === SIZE
    })
    // Hinted handoff: every row written while it was down reaches it, so each row is on exactly 3 nodes again.
    const expected = (ROWS + 100 + 1) * 3
    await waitFor(`hinted handoff to restore ${expected} patient_records copies`, async () => {
      const perNode = await Promise.all(clients.map(async c => (await c.ring()).localRows.patient_records ?? 0))
      return perNode.reduce((a: number, b: number) => a + b, 0) === expected
    }, 30_000)
    for (const id of [1, 2001, 2050, 2100]) {
      await waitFor(`patient ${id} on 3 nodes`, async () => (await holders('patient_records', id)).length === 3, 10_000)
    }
    const owners = await holders('patient_records', 1)
    for (const i of owners) expect((await clients[i]!.get('patient_records', 1, { local: true })).row.address).toBe('Moved')
  }, 90_000)

  it('a sixth node that joins is handed its share: every row stays on exactly N nodes and reads and updates through it', async () => {
    const { invite } = await clients[0]!.invite()
    const sixth = await startDaemon({ args: ['--join', invite] })
    daemons.push(sixth)
    clients.push(new NtsoekheClient({ socket: sixth.socket, token }))
    const c6 = clients[SIZE]!
    await waitFor('every node to see 6 alive members', async () => {
      const all = await Promise.all(clients.map(async c => (await c.status()).members.filter((m: { state: string }) => m.state === 'alive').length))
      return all.every(n => n === SIZE + 1)
    })
    const expected = (ROWS + 100 + 1) * 3
    const perNode = await waitFor(`the rebalance to leave exactly ${expected} patient_records copies with a share on the newcomer`, async () => {
      const statuses = await Promise.all(clients.map(async c => await c.status()))
      if (statuses.some(s => s.replication.rebalance.pending === true)) return false
      const counts = await Promise.all(clients.map(async c => (await c.ring()).localRows.patient_records ?? 0))
      return counts.reduce((a: number, b: number) => a + b, 0) === expected && (counts[SIZE] ?? 0) > 0 ? counts : false
    }, 45_000)
    // Three copies of each of the six members' shares: the newcomer holds about half of the rows.
    expect(perNode[SIZE]).toBeGreaterThan((ROWS + 101) * 0.3)
    for (const id of [1, 250, 500, 777, 1000, 2050]) expect(await holders('patient_records', id)).toHaveLength(3)
    const got = await pool(200, 16, async i => await c6.get('patient_records', i * 5 + 1))
    got.forEach((r, i) => expect(r.row.patient_name).toBe(`Patient ${i * 5 + 1}`))
    // An update through the newcomer of rows it now holds: ordered after the handed-off versions.
    for (const id of [3, 4, 5, 6, 7, 8]) {
      const w = await c6.update('patient_records', id, { address: 'After the join' })
      const r = await clients[0]!.get('patient_records', id)
      expect(r.version).toBe(w.version)
      expect(r.row.address).toBe('After the join')
    }
  }, 120_000)

  it('ntsoekhe leave on the sixth node hands its records to the others, and its daemon stops', async () => {
    const sixth = daemons[SIZE]!
    const exited = new Promise<number | null>(resolve => { sixth.proc.once('exit', code => { resolve(code) }) })
    const r = await cli(['leave', '--json'], { home: sixth.home, token })
    expect(r.code, r.stderr).toBe(0)
    // Said once, now that the leave was allowed (a refused one never says it: test/e2e/cli.test.ts).
    expect(r.stderr.match(/handing off every record this node holds/g)).toHaveLength(1)
    const body = json<{ peerId: string, state: string, handedOff: number }>(r)
    expect(body.state).toBe('left')
    expect(body.handedOff).toBeGreaterThan(0)
    await Promise.race([exited, new Promise((_resolve, reject) => setTimeout(() => { reject(new Error('timed out after 15 s waiting for the daemon that left to exit')) }, 15_000))])
    daemons.pop()
    clients.pop()
    const expected = (ROWS + 100 + 1) * 3
    await waitFor(`every remaining node to see the sixth as left and exactly ${expected} copies among the five`, async () => {
      const statuses = await Promise.all(clients.map(async c => await c.status()))
      if (!statuses.every(s => s.members.some((m: { peerId: string, state: string }) => m.peerId === body.peerId && m.state === 'left'))) return false
      if (statuses.some(s => s.replication.rebalance.pending === true)) return false
      const counts = await Promise.all(clients.map(async c => (await c.ring()).localRows.patient_records ?? 0))
      return counts.reduce((a: number, b: number) => a + b, 0) === expected
    }, 45_000)
    for (const id of [1, 250, 500, 777, 1000, 2050]) expect(await holders('patient_records', id)).toHaveLength(3)
    expect((await clients[1]!.get('patient_records', 3)).row.address).toBe('After the join')
  }, 120_000)

  it('a node killed for good and then removed with ntsoekhe remove: its records are copied back to N nodes', async () => {
    const victim = daemons[4]!
    const peerId = (await clients[4]!.status()).peerId as string
    await victim.kill9()
    daemons.splice(4, 1)
    clients.splice(4, 1)
    // At once it still looks alive (suspect after 3 s, down after 10 s): removing it is refused.
    const early = await cli(['remove', peerId], { home: daemons[0]!.home, token })
    expect(early.code).toBe(1)
    expect(early.stderr).toMatch(/only a down member/)
    await waitFor('the killed node to be marked down', async () => {
      const s = await clients[0]!.status()
      return s.members.some((m: { peerId: string, state: string }) => m.peerId === peerId && (m.state === 'down' || m.state === 'left'))
    }, 30_000)
    // As a person pastes it from a display that cut it short: a unique prefix names the member.
    const r = await cli(['remove', peerId.slice(0, 20), '--json'], { home: daemons[0]!.home, token })
    expect(r.code, r.stderr).toBe(0)
    expect(json<{ peerId: string, state: string }>(r)).toMatchObject({ peerId, state: 'left' })
    const expected = (ROWS + 100 + 1) * 3
    await waitFor(`every node to drop the removed member and hold exactly ${expected} copies again`, async () => {
      const statuses = await Promise.all(clients.map(async c => await c.status()))
      if (!statuses.every(s => s.members.some((m: { peerId: string, state: string }) => m.peerId === peerId && m.state === 'left'))) return false
      if (statuses.some(s => s.replication.rebalance.pending === true)) return false
      const counts = await Promise.all(clients.map(async c => (await c.ring()).localRows.patient_records ?? 0))
      return counts.reduce((a: number, b: number) => a + b, 0) === expected
    }, 45_000)
    for (const id of [1, 250, 500, 777, 1000, 2050]) expect(await holders('patient_records', id)).toHaveLength(3)
  }, 120_000)
})

import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import type { Coordinator, RequestOptions } from '../../src/cluster/coordinator.js'
import { AUDIT_TABLE, checkEntry, checkMutation } from '../../src/cluster/messages.js'
import { tokenOf } from '../../src/cluster/token.js'
import { InvalidMessageError } from '../../src/errors/index.js'
import { findTable, shardValue } from '../../src/schema/index.js'
import { GENESIS, auditShard, hashEntry, toLink, verifyChains, type AuditBody, type AuditRow, type ChainLink } from '../../src/security/audit-entry.js'
import { AuditTrail, HEAD_KEY, storeHead } from '../../src/security/audit.js'
import type { AccessEvent } from '../../src/security/principal.js'
import { alterStoredEntry } from '../helpers/audit.js'
import { testIdentity } from '../helpers/identity.js'
import { openLocalNode, tempDir, type LocalNode, type TempDir } from '../helpers/temp.js'

let dir: TempDir
let node: LocalNode
let trail: AuditTrail

const read = (patientId: string, user = 'dr.moshoeshoe'): AccessEvent => ({
  principal: { user, role: 'doctor' }, action: 'read', table: 'patient_records', id: patientId, patientId, outcome: 'ok', status: 200
})

async function openTrail (init: ConstructorParameters<typeof AuditTrail>[1] = {}, coordinator: Coordinator = node.coordinator): Promise<AuditTrail> {
  const t = new AuditTrail({ coordinator, peerId: node.peerId, head: storeHead(node.store) }, { flushIntervalMs: 10_000, ...init })
  await t.start()
  return t
}

/** The node's coordinator, but its audit writes fail while `down()` says so */
function failing (down: () => boolean): Coordinator {
  const real: Coordinator = node.coordinator
  return Object.assign(Object.create(real) as Coordinator, {
    insertOnce: async (groups: Parameters<Coordinator['insertOnce']>[0], options?: RequestOptions) => {
      if (down()) throw new Error('no replica answered')
      return await real.insertOnce(groups, options)
    }
  })
}

beforeEach(async () => {
  dir = await tempDir('ntk-audit-')
  node = await openLocalNode(dir.path)
  trail = await openTrail()
})

afterEach(async () => {
  await trail.stop()
  await node.close()
  await dir.remove()
})

describe('audit chain', () => {
  it('appends entries with seq, prev and hash, and verifies them', async () => {
    for (let i = 1; i <= 5; i++) trail.record(read(String(i)))
    trail.record({ action: 'login', outcome: 'unauthenticated', status: 401, reason: 'unknown token' })
    await trail.flush()
    expect(trail.status()).toMatchObject({ recorded: 6, written: 6, pending: 0, dropped: 0, lastSeq: 6 })

    const { entries } = await trail.query()
    expect(entries.map(e => e.seq).sort((a, b) => a - b)).toEqual([1, 2, 3, 4, 5, 6])
    const bySeq = new Map(entries.map(e => [e.seq, e]))
    expect(bySeq.get(1)?.prev).toBe(GENESIS)
    for (let s = 2; s <= 6; s++) expect(bySeq.get(s)?.prev).toBe(bySeq.get(s - 1)?.hash)
    expect(bySeq.get(1)).toMatchObject({ node: node.peerId, user: 'dr.moshoeshoe', role: 'doctor', action: 'read', table: 'patient_records', key: '1', patient_id: '1', outcome: 'ok', status: 200, break_glass: 0 })
    expect(bySeq.get(6)).toMatchObject({ user: null, action: 'login', outcome: 'unauthenticated', status: 401, reason: 'unknown token', patient_id: null })

    expect(await trail.verify()).toEqual({ ok: true, checked: 6, nodes: 1, broken: null })
  })

  it('filters by patient, user and time', async () => {
    trail.record(read('42', 'nurse.lineo'))
    trail.record(read('42'))
    trail.record(read('7'))
    await trail.flush()
    expect((await trail.query({ patient: '42' })).entries.map(e => e.user)).toEqual(['nurse.lineo', 'dr.moshoeshoe'])
    expect((await trail.query({ user: 'nurse.lineo' })).entries).toHaveLength(1)
    expect((await trail.query({ patient: '42', user: 'dr.moshoeshoe' })).entries).toHaveLength(1)
    expect((await trail.query({ since: '2999-01-01T00:00:00Z' })).entries).toHaveLength(0)
    expect((await trail.query({ since: '2000-01-01' })).entries).toHaveLength(3)
    await expect(trail.query({ since: 'yesterday' })).rejects.toMatchObject({ code: 'INVALID' })
    // A time names its zone, as a TIMESTAMP column's value does: one without names no moment (it was read in the daemon machine's zone).
    await expect(trail.query({ since: '2000-01-01T10:00' })).rejects.toMatchObject({ code: 'INVALID', message: expect.stringMatching(/no time zone/) })
    expect((await trail.query({ since: '2000-01-01T12:00:00+02:00' })).entries).toHaveLength(3)
    expect((await trail.query({ since: '2999-01-01 00:00+0100' })).entries).toHaveLength(0)
  })

  it('names a removed entry as the missing link', async () => {
    for (let i = 1; i <= 4; i++) trail.record(read(String(i)))
    await trail.flush()
    const state = await node.store.get(AUDIT_TABLE, tokenOf('patient_id:3'), `${node.peerId}.3`)
    expect(state, 'entry 3 is stored in patient 3\'s shard').toBeDefined()
    expect(await node.store.drop(state!)).toBe(true)
    expect(await trail.verify()).toMatchObject({ ok: false, checked: 2, broken: { node: node.peerId, seq: 3, problem: 'missing' } })
  })

  it('finds the removal of this node\'s last entry from its own head', async () => {
    for (let i = 1; i <= 3; i++) trail.record(read(String(i)))
    await trail.flush()
    const state = await node.store.get(AUDIT_TABLE, tokenOf('patient_id:3'), `${node.peerId}.3`)
    await node.store.drop(state!)
    expect((await trail.verify()).broken).toMatchObject({ seq: 3, problem: 'missing' })
  })

  it('names an altered entry, kept as its one version in the store', async () => {
    for (let i = 1; i <= 4; i++) trail.record(read(String(i)))
    await trail.stop()
    await node.close()
    expect(await alterStoredEntry(join(dir.path, 'store'), `${node.peerId}.2`, 'user', 'someone.else')).toBe('dr.moshoeshoe')
    node = await openLocalNode(dir.path)
    trail = await openTrail()
    const result = await trail.verify()
    expect(result).toMatchObject({ ok: false, checked: 1, broken: { node: node.peerId, seq: 2, problem: 'altered' } })
    expect(result.broken?.message).toContain('entry 2')
  })

  it('names an entry rewritten through the coordinator (a second version)', async () => {
    for (let i = 1; i <= 2; i++) trail.record(read(String(i)))
    await trail.flush()
    const [entry] = (await trail.query({ patient: '1' })).entries
    await node.coordinator.write([{ op: 'put', table: AUDIT_TABLE, id: `${node.peerId}.1`, shard: 'patient_id:1', row: { ...entry!, reason: 'nothing to see' } }])
    expect((await trail.verify()).broken).toMatchObject({ seq: 1, problem: 'altered' })
  })

  it('names a second version of an entry that arrives as a first version (a peer\'s forged copy)', async () => {
    for (let i = 1; i <= 2; i++) trail.record(read('1'))
    await trail.flush()
    const token = tokenOf('patient_id:1')
    const held = await node.store.get(AUDIT_TABLE, token, `${node.peerId}.1`)
    const head = held!.heads[0]!
    // The same version again is the same entry: nothing changes.
    expect(await node.store.insertOnce([head])).toEqual(['duplicate'])
    expect(await trail.verify()).toMatchObject({ ok: true, checked: 2 })
    const forged = { ...head, version: head.version.replace(/^\d{15}/, v => String(Number(v) + 1).padStart(15, '0')), row: { ...head.row!, reason: 'nothing to see' } }
    expect(await node.store.insertOnce([forged])).toEqual(['applied'])
    expect((await node.store.get(AUDIT_TABLE, token, `${node.peerId}.1`))!.heads).toHaveLength(2)
    expect((await trail.verify()).broken).toMatchObject({ seq: 1, problem: 'altered' })
  })

  it('finds a patient\'s entries by the patient\'s ring token, without an index', async () => {
    for (let i = 1; i <= 30; i++) trail.record(read(String(i % 3)))
    await trail.flush()
    const page = await node.store.scan(AUDIT_TABLE, { where: { patient_id: '2' }, token: tokenOf('patient_id:2'), limit: 4 })
    expect(page.rows).toHaveLength(4)
    expect(page.rows.every(r => r.state.token === tokenOf('patient_id:2'))).toBe(true)
    const rest = await node.store.scan(AUDIT_TABLE, { where: { patient_id: '2' }, token: tokenOf('patient_id:2'), limit: 100, after: page.next! })
    expect(rest.rows).toHaveLength(6)
    expect((await trail.query({ patient: '2' })).entries.map(e => e.seq)).toEqual([2, 5, 8, 11, 14, 17, 20, 23, 26, 29])
  })

  it('names an entry whose previous hash is wrong', () => {
    const rows: AuditRow[] = []
    let prev = GENESIS
    for (let seq = 1; seq <= 3; seq++) {
      const body: AuditBody = { node: 'n1', seq, prev: seq === 3 ? GENESIS : prev, time: '2026-01-01T00:00:00.000Z', user: 'u', role: 'doctor', action: 'read', table: 't', key: String(seq), columns: null, outcome: 'ok', status: 200, reason: null, break_glass: 0, patient_id: null }
      const row = { ...body, hash: hashEntry(body) }
      rows.push(row)
      prev = row.hash
    }
    const links = new Map([['n1', new Map<number, ChainLink>(rows.map(r => [r.seq, toLink(r)]))]])
    expect(verifyChains(links).broken).toMatchObject({ node: 'n1', seq: 3, problem: 'wrong-prev' })
  })

  it('continues the chain after a restart, never reusing a seq', async () => {
    for (let i = 1; i <= 3; i++) trail.record(read(String(i)))
    await trail.stop()
    await node.close()
    node = await openLocalNode(dir.path)
    trail = await openTrail()
    expect(trail.status().lastSeq).toBe(3)
    trail.record(read('4'))
    await trail.flush()
    const { entries } = await trail.query()
    expect(entries.map(e => e.seq)).toEqual([1, 2, 3, 4])
    expect(await trail.verify()).toMatchObject({ ok: true, checked: 4 })
  })

  it('after an unclean stop, skips the seqs that may have been sent and says so', async () => {
    trail.record(read('1'))
    await trail.flush()
    expect(await node.store.getMeta(HEAD_KEY)).toMatchObject({ seq: 1 })
    await trail.stop()
    expect(await node.store.getMeta(HEAD_KEY)).toMatchObject({ seq: 1, written: 1 })
    // As if seqs 2..3 had been given out and their journal lost (a store without fsync and a power cut).
    await node.store.putMeta(HEAD_KEY, { seq: 3, hash: 'a'.repeat(64), written: 1 })
    trail = await openTrail()
    await trail.flush()
    const entries = (await trail.query()).entries
    expect(entries.map(e => e.seq)).toEqual([1, 4])
    expect(entries[1]).toMatchObject({ action: 'admin', prev: 'a'.repeat(64) })
    expect(entries[1]?.reason).toContain('2..3')
    expect((await trail.verify()).broken).toMatchObject({ seq: 2, problem: 'missing' })
  })
})

describe('audit seals', () => {
  it('a node seals each batch with its key: verify accepts its chain, and names a forged seal and an entry no seal follows', async () => {
    const me = testIdentity()
    const sealedDir = await tempDir('ntk-audit-seal-')
    const mine = await openLocalNode(sealedDir.path, { peerId: me.peerId })
    const sealed = new AuditTrail({ coordinator: mine.coordinator, peerId: me.peerId, head: storeHead(mine.store), sign: me.sign }, { flushIntervalMs: 10_000 })
    try {
      await sealed.start()
      for (let i = 1; i <= 3; i++) sealed.record(read(String(i)))
      await sealed.flush()
      sealed.record(read('4'))
      await sealed.flush()
      // Two batches, each closed by a seal: seqs 4 and 6. The trail lists accesses only.
      expect(sealed.status().lastSeq).toBe(6)
      expect((await sealed.query()).entries.map(e => e.seq).sort()).toEqual([1, 2, 3, 5])
      expect(await sealed.verify()).toMatchObject({ ok: true, checked: 6 })

      const links = async (): Promise<Map<string, Map<number, ChainLink>>> => {
        const chain = new Map<number, ChainLink>()
        for (let seq = 1; seq <= 6; seq++) {
          const token = seq === 4 || seq === 6 ? tokenOf(`audit:${me.peerId}`) : tokenOf(`patient_id:${seq === 5 ? 4 : seq}`)
          const state = await mine.store.get(AUDIT_TABLE, token, `${me.peerId}.${seq}`)
          chain.set(seq, toLink(state!.heads[0]!.row as AuditRow))
        }
        return new Map([[me.peerId, chain]])
      }
      const honest = await links()
      expect(verifyChains(honest)).toMatchObject({ ok: true })
      // Another member appends to this node's chain: the links hold, but no seal of the node follows.
      const last = honest.get(me.peerId)!.get(6)!
      const forgedRow: AuditBody = { node: me.peerId, seq: 7, prev: last.hash, time: new Date(Date.now() - 120_000).toISOString(), user: 'mallory', role: 'admin', action: 'read', table: 'patient_records', key: '9', columns: null, outcome: 'ok', status: 200, reason: null, break_glass: 0, patient_id: '9' }
      honest.get(me.peerId)!.set(7, toLink({ ...forgedRow, hash: hashEntry(forgedRow) }))
      expect(verifyChains(honest).broken).toMatchObject({ seq: 7, problem: 'unsealed' })
      // Within the grace a batch may still be on its way to its seal.
      expect(verifyChains(honest, new Map(), Date.now() - 100_000).ok).toBe(true)
      // A seal signed by another key.
      const other = testIdentity()
      const fake: AuditBody = { ...forgedRow, seq: 8, prev: honest.get(me.peerId)!.get(7)!.hash, action: 'seal', reason: `seal:${Buffer.from(other.sign(new Uint8Array([1]))).toString('base64')}`, patient_id: null }
      honest.get(me.peerId)!.set(8, toLink({ ...fake, hash: hashEntry(fake) }))
      expect(verifyChains(honest).broken).toMatchObject({ seq: 8, problem: 'forged' })
    } finally {
      await sealed.stop()
      await mine.close()
      await sealedDir.remove()
    }
  })
})

describe('audit journal', () => {
  it('entries journaled but not written when the node died are sent at the next start: the chain stays whole', async () => {
    await trail.stop()
    let down = true
    const flaky = failing(() => down)
    const dying = await openTrail({}, flaky)
    for (let i = 1; i <= 4; i++) dying.record(read(String(i)))
    await dying.flush()
    expect(dying.status()).toMatchObject({ written: 0, pending: 4, lastSeq: 4 })
    // The process dies here: nothing of `dying` runs again. A new trail on the same store finds the journal.
    trail = await openTrail()
    expect(trail.status()).toMatchObject({ pending: 4, lastSeq: 4 })
    await trail.flush()
    expect(trail.status()).toMatchObject({ written: 4, pending: 0 })
    expect(await trail.verify()).toMatchObject({ ok: true, checked: 4 })
    expect((await trail.query()).entries.map(e => e.seq)).toEqual([1, 2, 3, 4])
    // Written entries leave the journal with the next save of the head.
    await trail.flush()
    expect(await storeHead(node.store).journal()).toEqual([])
    down = false
    await dying.stop()
  })

  it('a stop that cannot write in time keeps what is left in the journal instead of dropping it', async () => {
    await trail.stop()
    let down = true
    const flaky = failing(() => down)
    let t = 0
    const stopping = new AuditTrail({ coordinator: flaky, peerId: node.peerId, head: storeHead(node.store), now: () => (t += 1000) }, { flushIntervalMs: 10_000 })
    await stopping.start()
    for (let i = 1; i <= 3; i++) stopping.record(read(String(i)))
    await stopping.stop()
    expect(stopping.status().dropped).toBe(0)
    expect((await storeHead(node.store).journal()).map(e => e.row.seq)).toEqual([1, 2, 3])
    down = false
    trail = await openTrail()
    await trail.flush()
    expect(await trail.verify()).toMatchObject({ ok: true, checked: 3 })
  })
})

describe('audit placement', () => {
  it('keeps an entry about patient 42 in patient 42\'s shard, and others in the node\'s own', async () => {
    trail.record(read('42'))
    trail.record({ principal: { user: 'admin', role: 'admin' }, action: 'admin', outcome: 'ok', status: 200 })
    await trail.flush()
    const chart = shardValue(findTable('patient_records')!, { patient_id: 42 })
    expect(chart).toBe('patient_id:42')
    expect(await node.store.get(AUDIT_TABLE, tokenOf(chart), `${node.peerId}.1`)).toMatchObject({ token: tokenOf(chart) })
    expect(await node.store.get(AUDIT_TABLE, tokenOf(`audit:${node.peerId}`), `${node.peerId}.2`)).toBeDefined()
  })
})

describe('audit buffer', () => {
  it('keeps entries the network refuses, up to its bound, counts what it drops, and writes the rest once the network is back', async () => {
    await trail.stop()
    let down = true
    const flaky = failing(() => down)
    trail = await openTrail({ maxPending: 5, maxBatch: 2 }, flaky)
    for (let i = 1; i <= 8; i++) trail.record(read(String(i)))
    await trail.flush()
    expect(trail.status()).toMatchObject({ recorded: 5, written: 0, pending: 5, dropped: 3 })
    // Full: the API refuses data routes until entries can be written again (see api-audit.test.ts).
    expect(trail.accepting).toBe(false)
    expect(trail.status().failedWrites).toBeGreaterThan(0)
    down = false
    for (let round = 0; round < 5 && trail.pending > 0; round++) await trail.flush()
    expect(trail.status()).toMatchObject({ written: 5, pending: 0, dropped: 3, lastSeq: 5 })
    expect(trail.accepting).toBe(true)
    expect(await trail.verify()).toMatchObject({ ok: true, checked: 5 })
  })

  it('a write retried after it had landed stores the entry once, as one version', async () => {
    await trail.stop()
    let lose = true
    const real: Coordinator = node.coordinator
    const lossy: Coordinator = Object.assign(Object.create(real) as Coordinator, {
      // The entries land, then the answer is lost: the trail must try again.
      insertOnce: async (groups: Parameters<Coordinator['insertOnce']>[0], options?: RequestOptions) => {
        const outcomes = await real.insertOnce(groups, options)
        if (lose) { lose = false; throw new Error('the answer was lost') }
        return outcomes
      }
    })
    trail = await openTrail({}, lossy)
    for (let i = 1; i <= 3; i++) trail.record(read('42'))
    await trail.flush()
    expect(trail.status()).toMatchObject({ written: 0, pending: 3, failedWrites: 1 })
    await trail.flush()
    expect(trail.status()).toMatchObject({ written: 3, pending: 0 })
    const state = await node.store.get(AUDIT_TABLE, tokenOf('patient_id:42'), `${node.peerId}.2`)
    expect(state).toMatchObject({ seen: [state!.heads[0]!.version], superseded: [] })
    expect(state!.heads).toHaveLength(1)
    expect(await trail.verify()).toMatchObject({ ok: true, checked: 3 })
  })

  it('record() never throws, even stopped', async () => {
    await trail.stop()
    expect(() => { trail.record(read('1')) }).not.toThrow()
    expect(trail.status().dropped).toBe(1)
  })
})

describe('audit rows from peers', () => {
  const entry = (patient: string | null): AuditRow => {
    const body: AuditBody = { node: 'nodeA', seq: 1, prev: GENESIS, time: '2026-01-01T00:00:00.000Z', user: 'u', role: 'doctor', action: 'read', table: 'patient_records', key: '42', columns: null, outcome: 'ok', status: 200, reason: null, break_glass: 0, patient_id: patient }
    return { ...body, hash: hashEntry(body) }
  }
  const mutation = (row: unknown, shard = 'patient_id:42', op = 'insert', id = 'nodeA.1'): unknown => ({ op, table: AUDIT_TABLE, id, shard, row })
  const version = '001767225600000.000000.abcdefghij'

  it('accepts a well-formed entry in its patient\'s shard, or its node\'s', () => {
    expect(checkMutation(mutation(entry('42'))).row).toEqual(entry('42'))
    expect(auditShard(entry(null))).toBe('audit:nodeA')
    expect(checkMutation(mutation(entry(null), 'audit:nodeA')).shard).toBe('audit:nodeA')
    expect(checkEntry({ table: AUDIT_TABLE, id: 'nodeA.1', token: tokenOf('patient_id:42'), version, parents: [], row: entry('42') }).row).toEqual(entry('42'))
  })

  it.each([
    ['a shard other than the patient\'s', mutation(entry('42'), 'patient_id:43')],
    ['an id that is not node.seq', mutation(entry('42'), 'patient_id:42', 'insert', 'nodeA')],
    ['an id that does not match the entry', mutation(entry('42'), 'patient_id:42', 'insert', 'nodeA.2')],
    ['a put', mutation(entry('42'), 'patient_id:42', 'put')],
    ['a delete', mutation(undefined, 'patient_id:42', 'delete')],
    ['an extra field', mutation({ ...entry('42'), extra: 1 })],
    ['a missing field', mutation({ ...entry('42'), reason: undefined })],
    ['an overlong user', mutation({ ...entry('42'), user: 'x'.repeat(51) })],
    ['a numeric user', mutation({ ...entry('42'), user: 5 })],
    ['an unknown action', mutation({ ...entry('42'), action: 'steal' })],
    ['a malformed hash', mutation({ ...entry('42'), hash: 'zz' })],
    ['a malformed time', mutation({ ...entry('42'), time: 'now' })],
    ['a status out of range', mutation({ ...entry('42'), status: 9999 })],
    ['a non-integer patient', mutation({ ...entry('42'), patient_id: '4x' }, 'patient_id:4x')]
  ])('refuses %s', (_what, m) => {
    expect(() => checkMutation(m)).toThrow(InvalidMessageError)
  })

  it('refuses an entry under another token, a tombstone, or a second version', () => {
    const base = { table: AUDIT_TABLE, id: 'nodeA.1', token: tokenOf('patient_id:42'), version, parents: [], row: entry('42') }
    expect(() => checkEntry({ ...base, token: tokenOf('patient_id:43') })).toThrow(InvalidMessageError)
    expect(() => checkEntry({ ...base, row: null })).toThrow(InvalidMessageError)
    expect(() => checkEntry({ ...base, parents: [version] })).toThrow(InvalidMessageError)
  })
})

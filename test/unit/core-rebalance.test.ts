import { createHash } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { REBALANCE_BATCH, REBALANCE_WINDOW, RebalanceRun, type RebalanceEffect, type RebalanceRunInit, type ScannedRecord } from '../../src/cluster/core/rebalance.js'
import type { MemberStatus } from '../../src/cluster/coordinator.js'
import { HashRing } from '../../src/cluster/ring.js'
import type { Hint, RecordState, VersionEntry } from '../../src/storage/store.js'
import { HANDOFF_BATCH, HandoffRound, type HandoffEffect } from '../../src/cluster/core/handoff.js'

/**
 * The rebalance core driven by hand: no transport, no store, no timers. The
 * test plays the driver: it hands the run pages of records, their
 * histories, the peers' answers and the drops, and checks what the run asks
 * for in return.
 */

const VNODES = 16

/** A record as the scan gives it; `opened` counts how often the run decoded it */
function record (id: string, token: string): ScannedRecord & { opened: number, state: RecordState } {
  const state: RecordState = {
    table: 'patient_records',
    id,
    token,
    seen: [`v-${id}`],
    superseded: [],
    heads: [{ table: 'patient_records', id, token, version: `v-${id}`, parents: [], row: { patient_id: id } }]
  }
  const r = { table: state.table, token, state, opened: 0, open: () => { r.opened++; return state } }
  return r
}

/** Tokens owned by `owner` on a ring of `members` (replicas 1): the records that move to it */
function tokensOwnedBy (owner: string, members: string[], count: number): string[] {
  const ring = new HashRing({ vnodes: VNODES })
  ring.setMembers(members.map(peerId => ({ peerId })))
  const out: string[] = []
  for (let i = 0; out.length < count; i++) {
    const token = createHash('sha256').update(String(i)).digest('hex').slice(0, 16)
    if (ring.preferenceList(token, 1)[0] === owner && !out.includes(token)) out.push(token)
  }
  return out
}

function run (init: Partial<RebalanceRunInit> & Pick<RebalanceRunInit, 'members' | 'placedFor'>, states: Record<string, MemberStatus['state']> = {}): RebalanceRun {
  return new RebalanceRun({
    self: 'a',
    replicas: 2,
    vnodes: VNODES,
    stateOf: p => states[p] ?? 'alive',
    failures: 0,
    delayMs: 2000,
    intervalMs: 600_000,
    ...init
  })
}

const ofType = <T extends RebalanceEffect['type']>(effects: RebalanceEffect[], type: T): Array<Extract<RebalanceEffect, { type: T }>> =>
  effects.filter((e): e is Extract<RebalanceEffect, { type: T }> => e.type === type)

/** Answers every `history` effect with empty histories (the records' states hold all they have) */
function giveHistories (r: RebalanceRun, effects: RebalanceEffect[]): RebalanceEffect[] {
  for (const h of ofType(effects, 'history')) r.history(h.batch, h.states.map(() => []))
  return r.ready()
}

/** A `records` acknowledgement of every record of a request */
const acked = (n: number): unknown => ({ results: Array.from({ length: n }, () => ({ ok: true })) })

describe('RebalanceRun (rebalance with no I/O)', () => {
  it('sends a record whose owners changed once to each owner, after asking which it holds, and drops the copy only when every owner acknowledged it', () => {
    // This node (a) left the ring: every record it holds goes to its owners, b and c, and then goes from here.
    const r = run({ members: ['b', 'c'], placedFor: ['a', 'b', 'c'] }, { a: 'left' })
    const rec = record('1', '00000000000000aa')
    r.start()
    expect(r.ready()).toEqual([{ type: 'read' }])
    expect(r.progress()).toEqual({ records: 0, sent: 0, dropped: 0, failed: 0 })
    r.page([rec])
    r.scanEnded()
    const afterScan = r.ready()
    expect(ofType(afterScan, 'history')).toEqual([{ type: 'history', batch: 0, states: [rec.state] }])
    // How far the run is, as status and the metrics show a rebalance under way.
    expect(r.progress()).toEqual({ records: 1, sent: 0, dropped: 0, failed: 0 })
    // b and c were members when the records were placed: each is asked first which records it holds.
    const questions = ofType(giveHistories(r, afterScan), 'send')
    expect(questions.map(q => [q.peer, q.message.type]).sort()).toEqual([['b', 'holds'], ['c', 'holds']])
    expect(questions[0]?.message.records).toEqual([{ table: 'patient_records', token: rec.token, id: '1', seen: ['v-1'], superseded: [], versions: ['v-1'] }])
    for (const q of questions) r.answer(q.id, { results: [{ holds: false }] })
    const sends = ofType(r.ready(), 'send')
    expect(sends.map(s => [s.peer, s.message.type]).sort()).toEqual([['b', 'records'], ['c', 'records']])
    expect(sends[0]?.message.records).toEqual([{ state: rec.state, versions: [] }])
    const [first, second] = sends as [typeof sends[0], typeof sends[0]]
    r.answer(first.id, acked(1))
    // One owner has it durable, the other not yet: the copy stays.
    expect(r.ready()).toEqual([])
    r.answer(second.id, acked(1))
    const end = r.ready()
    expect(end).toEqual([{ type: 'drop', batch: 0, states: [rec.state] }])
    expect(r.progress()).toEqual({ records: 1, sent: 1, dropped: 0, failed: 0 })
    r.dropped(0, 1)
    expect(r.progress()).toEqual({ records: 1, sent: 1, dropped: 1, failed: 0 })
    expect(r.ready()).toEqual([{ type: 'done', counts: { records: 1, sent: 1, dropped: 1, failed: 0 }, placedFor: ['b', 'c'] }])
    expect(rec.opened).toBe(1)
  })

  it('sends nothing to an owner that holds the record already, and still drops the copy', () => {
    const r = run({ members: ['b', 'c'], placedFor: ['a', 'b', 'c'] })
    r.start()
    r.page([record('1', '00000000000000aa')])
    r.scanEnded()
    const questions = ofType(giveHistories(r, r.ready()), 'send')
    for (const q of questions) r.answer(q.id, { results: [{ holds: q.peer === 'b' }] })
    const sends = ofType(r.ready(), 'send')
    expect(sends.map(s => s.peer)).toEqual(['c'])
    r.answer((sends[0] as { id: number }).id, acked(1))
    expect(ofType(r.ready(), 'drop')).toHaveLength(1)
  })

  it('keeps the copy when an owner fails, counts the record failed, and asks for a retry that backs off', () => {
    const r = run({ members: ['b', 'c'], placedFor: ['a', 'b', 'c'], failures: 1 })
    r.start()
    r.page([record('1', '00000000000000aa')])
    r.scanEnded()
    const questions = ofType(giveHistories(r, r.ready()), 'send')
    for (const q of questions) r.answer(q.id, { results: [{ holds: false }] })
    const sends = ofType(r.ready(), 'send')
    for (const s of sends) {
      if (s.peer === 'b') r.answer(s.id, acked(1))
      else r.failure(s.id, new Error('c: connection refused'))
    }
    const end = r.ready()
    expect(ofType(end, 'drop')).toEqual([])
    expect(ofType(end, 'log').map(l => l.msg)).toEqual(['hand-off of %d records to %s failed: %s'])
    // The second failure in a row: twice the first retry's wait (5 × the quiet time), and the count goes on.
    expect(ofType(end, 'done')).toEqual([{ type: 'done', counts: { records: 1, sent: 1, dropped: 0, failed: 1 }, retry: { ms: 2000 * 5 * 2, failures: 2 } }])
  })

  it('a record whose new owner is down is kept and counts as failed, so the run is retried', () => {
    const r = run({ members: ['b', 'c'], placedFor: ['a', 'b', 'c'] }, { c: 'down' })
    r.start()
    r.page([record('1', '00000000000000aa')])
    r.scanEnded()
    const questions = ofType(giveHistories(r, r.ready()), 'send')
    expect(questions.map(q => q.peer)).toEqual(['b'])
    r.answer((questions[0] as { id: number }).id, { results: [{ holds: false }] })
    const sends = ofType(r.ready(), 'send')
    r.answer((sends[0] as { id: number }).id, acked(1))
    const end = r.ready()
    expect(ofType(end, 'drop')).toEqual([])
    expect(ofType(end, 'done')[0]).toMatchObject({ counts: { sent: 1, failed: 1 }, retry: { ms: 10_000, failures: 1 } })
  })

  it('sends a copy it gives up straight to a member that joined since the last placement, without a holds question; a retry asks first', () => {
    // Replicas 1: d joined; the records it now owns leave a, which sends them to d and drops them.
    const tokens = tokensOwnedBy('d', ['a', 'd'], 3)
    const first = run({ replicas: 1, members: ['a', 'd'], placedFor: ['a'] })
    first.start()
    first.page(tokens.map((t, i) => record(String(i), t)))
    first.scanEnded()
    const sends = ofType(giveHistories(first, first.ready()), 'send')
    expect(sends.map(s => [s.peer, s.message.type, s.message.records.length])).toEqual([['d', 'records', 3]])
    first.answer((sends[0] as { id: number }).id, acked(3))
    expect(ofType(first.ready(), 'drop')[0]?.states).toHaveLength(3)

    const retry = run({ replicas: 1, members: ['a', 'd'], placedFor: ['a'], failures: 1 })
    retry.start()
    retry.page(tokens.map((t, i) => record(String(i), t)))
    retry.scanEnded()
    const asked = ofType(giveHistories(retry, retry.ready()), 'send')
    expect(asked.map(s => [s.peer, s.message.type])).toEqual([['d', 'holds']])
  })

  it('leaves alone, unopened, a record that stays where it is', () => {
    const tokens = tokensOwnedBy('a', ['a', 'd'], 2)
    const r = run({ replicas: 1, members: ['a', 'd'], placedFor: ['a'] })
    const records = tokens.map((t, i) => record(String(i), t))
    r.start()
    r.ready()
    r.page(records)
    r.scanEnded()
    expect(r.ready()).toEqual([{ type: 'read' }, { type: 'done', counts: { records: 2, sent: 0, dropped: 0, failed: 0 }, placedFor: ['a', 'd'] }])
    expect(records.map(x => x.opened)).toEqual([0, 0])
  })

  it('reads a page at a time and stops reading while REBALANCE_WINDOW batches are out; a finished batch lets the scan go on', () => {
    // Every record moves (a left the ring; d owns them all): each REBALANCE_BATCH records make a batch.
    const r = run({ replicas: 1, members: ['d'], placedFor: ['a', 'd'] })
    let n = 0
    const page = (size: number): ScannedRecord[] => Array.from({ length: size }, () => { n++; return record(String(n), n.toString(16).padStart(16, '0')) })
    r.start()
    expect(r.ready()).toEqual([{ type: 'read' }])
    const histories: RebalanceEffect[] = []
    for (let i = 0; i < REBALANCE_WINDOW - 1; i++) {
      r.page(page(REBALANCE_BATCH))
      const effects = r.ready()
      histories.push(...ofType(effects, 'history'))
      // A batch is out, fewer than the window: the next page is asked for.
      expect(effects.map(e => e.type)).toEqual(['history', 'read'])
    }
    r.page(page(REBALANCE_BATCH))
    const full = r.ready()
    histories.push(...ofType(full, 'history'))
    expect(full.map(e => e.type)).toEqual(['history'])
    expect(r.inflight).toBe(REBALANCE_WINDOW)
    // The histories come in: one `holds` question per batch (d was placed for), none of them answered yet.
    const questions = ofType(giveHistories(r, histories), 'send')
    expect(questions).toHaveLength(REBALANCE_WINDOW)
    expect(questions.every(q => q.peer === 'd' && q.message.type === 'holds' && q.message.records.length === REBALANCE_BATCH)).toBe(true)
    // d holds every record of the first batch: nothing to send; the batch's copies are dropped.
    r.answer((questions[0] as { id: number }).id, { results: Array.from({ length: REBALANCE_BATCH }, () => ({ holds: true })) })
    const drop = r.ready()
    expect(drop.map(e => e.type)).toEqual(['drop'])
    // Still REBALANCE_WINDOW out until the drop is done; then the scan reads on.
    r.dropped(0, REBALANCE_BATCH)
    expect(r.ready()).toEqual([{ type: 'read' }])
    expect(r.inflight).toBe(REBALANCE_WINDOW - 1)
    expect(r.status).toEqual({ records: REBALANCE_WINDOW * REBALANCE_BATCH, sent: REBALANCE_BATCH, dropped: REBALANCE_BATCH, failed: 0 })
  })

  it('a cut-short scan (the node stops) does not send what it batched; a failed scan counts as a failure', () => {
    const stopped = run({ replicas: 1, members: ['d'], placedFor: ['a', 'd'] })
    stopped.start()
    stopped.page([record('1', '00000000000000aa')])
    stopped.scanEnded(true)
    expect(ofType(stopped.ready(), 'history')).toEqual([])

    const broken = run({ replicas: 1, members: ['d'], placedFor: ['a', 'd'] })
    broken.start()
    broken.scanFailed(new Error('read error'))
    expect(ofType(broken.ready(), 'done')[0]).toMatchObject({ counts: { failed: 1 }, retry: { ms: 10_000, failures: 1 } })
  })

  it('keeps a member that is not on the ring now but never left among those the records are placed for', () => {
    const r = run({ members: ['a', 'b'], placedFor: ['a', 'b', 'c', 'e'] }, { e: 'left' })
    r.start()
    r.scanEnded()
    expect(ofType(r.ready(), 'done')[0]?.placedFor).toEqual(['a', 'b', 'c'])
  })
})

describe('HandoffRound (hinted handoff with no I/O)', () => {
  const entry = (id: string, version: string): VersionEntry => ({ table: 'patient_records', id, token: '00000000000000aa', version, parents: [], row: { patient_id: id } })
  const hint = (key: string, version: string): Hint => ({ key, entries: [entry(key, version)] })
  const purge = (key: string): Hint => ({ key, entries: [], purge: { table: 'patient_records', id: key, token: '00000000000000aa', version: 'p1', time: 5 } })
  const round = (peers: string[], states: Record<string, MemberStatus['state']>, sloppyHeld = false): HandoffRound =>
    new HandoffRound({ peers, stateOf: p => states[p], sloppyHeld })
  const steps = (effects: HandoffEffect[]): HandoffEffect[] => effects.filter(e => e.type !== 'log')

  it('drops the hints of a member that left, waits for one that is down, and hands an alive one its purges first, then its versions; a hint goes only once acknowledged', () => {
    const r = round(['gone', 'down', 'back'], { gone: 'left', down: 'down', back: 'alive' }, true)
    r.start()
    expect(r.ready()).toEqual([{ type: 'dropHints', peer: 'gone' }])
    r.hintsDropped(3)
    expect(r.ready()).toEqual([{ type: 'log', msg: 'dropped %d hints for %s, which left', args: [3, 'gone'] }, { type: 'readHints', peer: 'back', limit: HANDOFF_BATCH }])
    r.hints([hint('h1', 'v1'), purge('h2'), hint('h3', 'v3')])
    // The purge goes first, without its local time.
    expect(r.ready()).toEqual([{ type: 'send', peer: 'back', message: { type: 'purge', table: 'patient_records', id: 'h2', token: '00000000000000aa', version: 'p1' } }])
    r.answer({ ok: true })
    expect(r.ready()).toEqual([{ type: 'deleteHints', keys: ['h2'] }])
    r.deleted()
    expect(steps(r.ready())).toEqual([{ type: 'send', peer: 'back', message: { type: 'apply', groups: [[entry('h1', 'v1')], [entry('h3', 'v3')]] } }])
    // Only the acknowledged group's hint is deleted; the other stays for the next round.
    r.answer({ results: [{ ok: true }, { error: { message: 'disk full' } }] })
    expect(r.ready()).toEqual([{ type: 'deleteHints', keys: ['h1'] }])
    r.deleted()
    // A delivered version while sloppy copies are held here: a rebalance moves them.
    expect(r.ready()).toEqual([{ type: 'log', msg: 'handed %d of %d hints to %s', args: [1, 2, 'back'] }, { type: 'rebalance' }, { type: 'done' }])
  })

  it('a purge the peer does not acknowledge keeps every hint of that peer and moves on to the next peer', () => {
    const r = round(['a', 'b'], { a: 'alive', b: 'alive' })
    r.start()
    r.ready()
    r.hints([purge('h1'), hint('h2', 'v2')])
    r.ready()
    r.answer({ nope: true })
    const effects = r.ready()
    expect(effects.filter(e => e.type === 'deleteHints')).toEqual([])
    expect(effects).toContainEqual({ type: 'log', msg: 'purge handoff to %s failed: %s', args: ['a', 'replica: malformed purge reply'] })
    expect(steps(effects)).toEqual([{ type: 'readHints', peer: 'b', limit: HANDOFF_BATCH }])
  })

  it('an unreachable peer keeps its hints; a failed store read ends the round', () => {
    const r = round(['a', 'b'], { a: 'alive', b: 'alive' })
    r.start()
    r.ready()
    r.hints([hint('h1', 'v1')])
    r.ready()
    r.failure(new Error('connection refused'))
    expect(steps(r.ready())).toEqual([{ type: 'readHints', peer: 'b', limit: HANDOFF_BATCH }])
    r.readFailed(new Error('store closed'))
    expect(r.ready()).toEqual([{ type: 'log', msg: 'handoff round failed: %s', args: ['store closed'] }, { type: 'done' }])
  })
})

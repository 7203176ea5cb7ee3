import { describe, expect, it } from 'vitest'
import { ConflictError, ForbiddenError, NtsoekheError, StorageFullError, TimeoutError, UnavailableError } from '../../src/errors/index.js'
import { HEDGE_MS, QuorumAsk, type AskEffect } from '../../src/cluster/core/ask.js'
import { WriteQuorum } from '../../src/cluster/core/write-quorum.js'
import { batchAnswerStands, batchFailure, groupsByPrimary, WriteRoute, type WriteRouteInit } from '../../src/cluster/core/route.js'
import { catchUpPlan, readPlan, repairsFor, sameVersions } from '../../src/cluster/core/read.js'
import type { RecordState, VersionEntry, WholeRecord } from '../../src/storage/store.js'
import type { Mutation } from '../../src/cluster/coordinator.js'
import { MemberView, type MemberEffect } from '../../src/cluster/core/members.js'
import { PrimaryBatch, PrimaryWrite, type BatchEffect, type PrimaryEffect, type PrimaryWriteInit } from '../../src/cluster/core/primary.js'
import { HybridClock } from '../../src/storage/version.js'
import { differingLeaves, recordsToPull, recordsToPush, type PeerDigest } from '../../src/cluster/core/sync.js'
import { SyncRound, type LocalDigest, type SyncEffect, type SyncRoundResult } from '../../src/cluster/core/sync-round.js'
import { SendBudget } from '../../src/cluster/core/budget.js'
import { InsertBatch } from '../../src/cluster/core/insert.js'
import { SloppyWrite } from '../../src/cluster/core/sloppy.js'
import { PurgeFanOut } from '../../src/cluster/core/purge.js'
import { RowCount, type CountEffect } from '../../src/cluster/core/count.js'
import { MAX_COUNT_RANGES } from '../../src/cluster/messages.js'
import { SyncAnswer, type ServeEffect } from '../../src/cluster/core/sync-serve.js'
import { tokenOf } from '../../src/cluster/token.js'
import { testIdentity, type TestIdentity } from '../helpers/identity.js'

/**
 * The cluster core driven by hand: no transport, no store, no timers. Each
 * test feeds a machine its inputs (answers, failures, timer fires, disk
 * results) and checks the effects it gives back, as a driver would see them.
 */

const asks = <T>(effects: Array<AskEffect<T>>): string[] => effects.flatMap(e => e.type === 'ask' ? [e.peer] : [])
const timerOf = <T>(effects: Array<AskEffect<T>>): number => {
  const t = effects.find(e => e.type === 'setTimer')
  if (t?.type !== 'setTimer') throw new Error('no hedge timer set')
  return t.id
}

describe('QuorumAsk', () => {
  it('asks as many owners as answers are needed, and a quorum met by the first two answers decides without waiting for the third', () => {
    const round = new QuorumAsk<string>(['a', 'b', 'c'], 2, 'patients')
    expect(asks(round.start())).toEqual(['a', 'b'])
    // One answer in, one owner still asked: the free slot waits out a hedge rather than asking c at once.
    const first = round.answer('a', 'A')
    expect(asks(first)).toEqual([])
    expect(first.find(e => e.type === 'setTimer')).toEqual({ type: 'setTimer', id: expect.any(Number), ms: HEDGE_MS })
    const second = round.answer('b', 'B')
    expect(second).toEqual([{ type: 'clearTimer', id: timerOf(first) }, { type: 'done', answers: new Map([['a', 'A'], ['b', 'B']]) }])
    expect(round.settled).toBe(true)
  })

  it('an owner that hangs costs a hedge: when the timer fires the next owner is asked, and its answer makes the quorum', () => {
    const round = new QuorumAsk<string>(['a', 'hung', 'c'], 2, 'patients')
    round.start()
    const timer = timerOf(round.answer('a', 'A'))
    expect(asks(round.hedge(timer))).toEqual(['c'])
    expect(round.answer('c', 'C')).toEqual([{ type: 'done', answers: new Map([['a', 'A'], ['c', 'C']]) }])
    // The hung owner answers at last: the round is decided, so its answer only feeds repair.
    expect(round.answer('hung', 'old')).toEqual([{ type: 'late', peer: 'hung', answer: 'old' }])
  })

  it('an owner that fails is replaced at once by the next; a stale hedge timer does nothing', () => {
    const round = new QuorumAsk<string>(['a', 'b', 'c'], 2, 'patients')
    round.start()
    const timer = timerOf(round.answer('a', 'A'))
    const failed = round.failure('b', new UnavailableError('b is unreachable'), false)
    // The failure frees b's slot (which asks c at once) and wakes the hedging slot, which has no one left.
    expect(asks(failed)).toEqual(['c'])
    expect(failed).toContainEqual({ type: 'clearTimer', id: timer })
    expect(round.hedge(timer)).toEqual([])
    expect(round.answer('c', 'C')).toEqual([{ type: 'done', answers: new Map([['a', 'A'], ['c', 'C']]) }])
  })

  it('fails with what each owner said once too few can answer', () => {
    const round = new QuorumAsk<string>(['a', 'b'], 2, 'patients')
    round.start()
    round.answer('a', 'A')
    const out = round.failure('b', new TimeoutError('b: no answer within 5000 ms'), false)
    const failed = out.find(e => e.type === 'failed')
    expect(failed?.type === 'failed' && (failed.error as Error).message).toBe('patients: 1 of 2 replicas answered (b: b: no answer within 5000 ms)')
    expect(failed?.type === 'failed' && failed.error).toBeInstanceOf(UnavailableError)
  })

  it('a fatal error (a bug, not a missing answer) fails the round with that error; later answers are late', () => {
    const round = new QuorumAsk<string>(['a', 'b'], 2, 'patients')
    round.start()
    const bug = new TypeError('boom')
    expect(round.failure('a', bug, true)).toEqual([{ type: 'failed', error: bug }])
    expect(round.answer('b', 'B')).toEqual([{ type: 'late', peer: 'b', answer: 'B' }])
  })

  it('needing no answers is done at once; needing some with no owners fails at once', () => {
    expect(new QuorumAsk<string>(['a'], 0, 't').start()).toEqual([{ type: 'done', answers: new Map() }])
    const out = new QuorumAsk<string>([], 2, 't').start()
    expect(out[0]?.type).toBe('failed')
  })
})

describe('WriteQuorum', () => {
  const base = { what: 'patient_id:1', self: 'self', empty: false }

  it('sends to every other owner; this node\'s commit and one owner\'s answer make W = 2, and a later failure only leaves a hint', () => {
    const round = new WriteQuorum({ ...base, peers: [{ peer: 'b', down: false }, { peer: 'c', down: false }], need: 2, local: true })
    expect(round.start()).toEqual([{ type: 'send', peer: 'b' }, { type: 'send', peer: 'c' }])
    expect(round.committed()).toEqual([])
    expect(round.ack('b')).toEqual([{ type: 'done' }])
    expect(round.failure('c', new UnavailableError('c is unreachable'), false)).toEqual([{ type: 'hint', peer: 'c', reason: 'c is unreachable' }])
    expect(round.hinted('c')).toEqual([])
  })

  it('an owner known to be down is not sent to: it gets a hint at once', () => {
    const round = new WriteQuorum({ ...base, peers: [{ peer: 'b', down: true }, { peer: 'c', down: false }], need: 2, local: true })
    expect(round.start()).toEqual([{ type: 'hint', peer: 'b', reason: 'b is down' }, { type: 'send', peer: 'c' }])
  })

  it('one durable copy where two were required, the others unreachable: a 503 with durable 1, required 2, outcome partial, once every owner has answered', () => {
    const round = new WriteQuorum({ ...base, peers: [{ peer: 'b', down: false }, { peer: 'c', down: false }], need: 2, local: true })
    round.start()
    round.committed()
    round.failure('b', new UnavailableError('b is unreachable'), false)
    expect(round.hinted('b')).toEqual([])
    round.failure('c', new UnavailableError('c is unreachable'), false)
    const out = round.hinted('c')
    expect(out).toEqual([{ type: 'short', shortfall: expect.objectContaining({ durable: 1, required: 2, outcome: 'partial' }) }])
    expect(out[0]?.type === 'short' && out[0].shortfall.message).toMatch(/^patient_id:1: the write is durable on 1 of the 2 owners required; it will reach the others when they return .*\[b: b is unreachable; c: c is unreachable\]$/)
  })

  it('an owner that timed out may have it: the outcome is then unknown', () => {
    const round = new WriteQuorum({ ...base, peers: [{ peer: 'b', down: false }, { peer: 'c', down: false }], need: 3, local: true })
    round.start()
    round.committed()
    round.ack('b')
    round.failure('c', new TimeoutError('c: no answer within 5000 ms'), true)
    expect(round.hinted('c')).toEqual([{ type: 'short', shortfall: expect.objectContaining({ durable: 2, required: 3, outcome: 'unknown' }) }])
  })

  it('this node\'s failed commit counts as a missing owner whose outcome is unknown', () => {
    const round = new WriteQuorum({ ...base, peers: [{ peer: 'b', down: false }], need: 2, local: true })
    round.start()
    round.ack('b')
    expect(round.commitFailed(new Error('disk full'))).toEqual([{ type: 'short', shortfall: expect.objectContaining({ durable: 1, required: 2, outcome: 'unknown' }) }])
  })

  it('with no other owner, this node\'s commit decides alone: enough at one, short by the rest above', () => {
    const one = new WriteQuorum({ ...base, peers: [], need: 1, local: true })
    expect(one.start()).toEqual([])
    expect(one.committed()).toEqual([{ type: 'done' }])
    const quorum = new WriteQuorum({ ...base, peers: [], need: 2, local: true })
    quorum.start()
    expect(quorum.committed()).toEqual([{ type: 'short', shortfall: { durable: 1, required: 2, outcome: 'partial', message: 'patient_id:1: 1 more replicas needed but none are members' } }])
    const failing = new WriteQuorum({ ...base, peers: [], need: 1, local: true })
    failing.start()
    const err = new Error('disk full')
    expect(failing.commitFailed(err)).toEqual([{ type: 'localFailed', error: err }])
  })

  it('without a pending commit (this node\'s copy is durable) `need` counts the other owners only', () => {
    const round = new WriteQuorum({ ...base, peers: [{ peer: 'b', down: false }, { peer: 'c', down: false }], need: 1, local: false })
    round.start()
    round.failure('b', new UnavailableError('b is unreachable'), false)
    round.hinted('b')
    round.failure('c', new UnavailableError('c is unreachable'), false)
    expect(round.hinted('c')).toEqual([{ type: 'short', shortfall: expect.objectContaining({ durable: 1, required: 2, outcome: 'partial' }) }])
  })
})

describe('WriteRoute', () => {
  const init = (over: Partial<WriteRouteInit> = {}): WriteRouteInit => ({ order: ['a', 'b', 'c'], self: 'x', one: false, required: 2, shard: 'patient_id:1', timeoutMs: 5000, forwardTimeoutMs: 11_000, now: 0, ...over })

  it('coordinates here when this node is the first owner to try', () => {
    expect(new WriteRoute(init({ order: ['x', 'a'] })).start(0)).toEqual({ type: 'local', retry: false })
  })

  it('passes over an unreachable primary to the next owner, telling it the write may have landed; a refusal there is an unknown outcome', () => {
    const route = new WriteRoute(init())
    expect(route.start(0)).toEqual({ type: 'forward', peer: 'a', retry: false, timeoutMs: 11_000, bounded: false })
    expect(route.failed(new UnavailableError('a is unreachable'), 10)).toEqual({ type: 'forward', peer: 'b', retry: true, timeoutMs: 11_000, bounded: false })
    const step = route.failed(new ConflictError('patient 1 already exists'), 20)
    expect(step.type).toBe('fail')
    expect(step.type === 'fail' && step.error).toMatchObject({ code: 'UNAVAILABLE', durable: 0, required: 2, outcome: 'unknown' })
  })

  it('a refusal by the first primary is the answer as it is', () => {
    const route = new WriteRoute(init())
    route.start(0)
    const refusal = new ConflictError('patient 1 already exists')
    expect(route.failed(refusal, 5)).toEqual({ type: 'fail', error: refusal })
  })

  it('a primary that timed out above one may have applied it: the outcome is unknown and no other owner is tried', () => {
    const route = new WriteRoute(init())
    route.start(0)
    const step = route.failed(new TimeoutError('a: no answer'), 11_000)
    expect(step.type === 'fail' && step.error).toMatchObject({ code: 'UNAVAILABLE', durable: 0, required: 2, outcome: 'unknown' })
  })

  it('at one the owners share one replication timeout; past it the write is kept here (sloppy), and a refusal there after a silence is unknown', () => {
    const route = new WriteRoute(init({ one: true, required: 1 }))
    expect(route.start(0)).toEqual({ type: 'forward', peer: 'a', retry: false, timeoutMs: 5000, bounded: true })
    expect(route.failed(new UnavailableError('a is unreachable'), 1000)).toEqual({ type: 'forward', peer: 'b', retry: true, timeoutMs: 4000, bounded: true })
    expect(route.failed(new TimeoutError('b: no answer'), 5000)).toEqual({ type: 'sloppy', retry: true })
    expect(route.own(new ConflictError('exists'))).toMatchObject({ code: 'UNAVAILABLE', required: 1, outcome: 'unknown' })
    const other = new Error('disk')
    expect(route.own(other)).toBe(other)
  })

  it('with no owner left above one it fails naming the shard; with no members at all it says so', () => {
    const route = new WriteRoute(init({ order: ['a'] }))
    route.start(0)
    const step = route.failed(new UnavailableError('a is unreachable'), 1)
    expect(step.type === 'fail' && (step.error as NtsoekheError).message).toBe('No owner of patient_id:1 could take the write')
    const empty = new WriteRoute(init({ order: [] })).start(0)
    expect(empty.type === 'fail' && (empty.error as NtsoekheError).message).toBe('No members on the ring yet')
  })
})

describe('PrimaryWrite', () => {
  const row = { patient_id: 1, patient_name: 'Patient 1', date_of_birth: '1980-01-02', gender: 'F', address: '1 Main St', contact_number: '0123456789', email: 'p1@example.org' }
  const insert: Mutation = { op: 'insert', table: 'patient_records', id: '1', shard: 'patient_id:1', row }
  const init = (over: Partial<PrimaryWriteInit> = {}): PrimaryWriteInit => ({
    self: 'p', owners: ['p', 'b', 'c'], down: () => false, mutations: [insert], level: undefined, writeQuorum: 2, readQuorum: 2, retry: false, missed: () => false, ...over
  })
  const clock = (): HybridClock => new HybridClock('p', () => 1_700_000_000_000)
  const none = { get: () => undefined }
  const types = (effects: PrimaryEffect[]): string[] => effects.map(e => e.type === 'send' || e.type === 'hint' ? `${e.type} ${e.peer}` : e.type)

  it('a node that does not own the key refuses it', () => {
    const effects = new PrimaryWrite(init({ owners: ['b', 'c', 'd'] })).start()
    expect(effects).toEqual([{ type: 'fail', error: expect.objectContaining({ code: 'NOT_OWNER' }) }])
  })

  it('checks the disk, skips the catch-up for a fresh insert, orders, sends while committing, and answers once W owners have it', () => {
    const w = new PrimaryWrite(init({ down: p => p === 'c' }))
    expect(types(w.start())).toEqual(['checkWritable'])
    expect(types(w.writable())).toEqual(['recall'])
    expect(types(w.recalled(new Map()))).toEqual(['order'])
    const { entries, effects } = w.order(none, clock())
    expect(entries).toHaveLength(1)
    expect(types(effects)).toEqual(['send b', 'hint c'])
    // The other owner's answer comes before this node's own fsync: with it, W = 2 is met.
    expect(w.ack('b')).toEqual([])
    expect(w.committed()).toEqual([{ type: 'answer', results: [expect.objectContaining({ id: '1', version: entries[0]?.version })] }])
  })

  it('an update is caught up from R - 1 other owners first; a failed catch-up is the answer', () => {
    const put: Mutation = { ...insert, op: 'put' }
    const w = new PrimaryWrite(init({ mutations: [put] }))
    w.start()
    expect(w.writable()).toEqual([{ type: 'catchUp', need: 1, keys: [{ table: 'patient_records', id: '1', token: expect.any(String), required: true }] }])
    const err = new UnavailableError('patient_records: 0 of 1 replicas answered')
    expect(w.failed(err)).toEqual([{ type: 'fail', error: err }])
  })

  it('a refusal while ordering is the answer, with nothing sent', () => {
    const w = new PrimaryWrite(init())
    w.start(); w.writable(); w.recalled(new Map())
    const exists = { get: () => ({ table: 'patient_records', id: '1', token: 't', seen: ['v'], superseded: [], heads: [{ table: 'patient_records', id: '1', token: 't', version: '000001700000000000.000000.x', parents: [], row }] }) }
    let refusal: unknown
    try { w.order(exists, clock()) } catch (err) { refusal = err }
    expect(refusal).toBeInstanceOf(ConflictError)
    expect(w.commitFailed(refusal)).toEqual([{ type: 'fail', error: refusal }])
  })

  it('this node\'s commit failing after the ordering marks the record missed, and the write still answers when W others have it', () => {
    const w = new PrimaryWrite(init({ level: 'quorum', owners: ['p', 'b', 'c'] }))
    w.start(); w.writable(); w.recalled(new Map())
    w.order(none, clock())
    const disk = new Error('disk full')
    expect(types(w.commitFailed(disk))).toEqual(['missed'])
    w.ack('b')
    expect(types(w.ack('c'))).toEqual(['answer'])
  })

  it('short of W once every owner answered: the 503 says durable 1, required 2, outcome partial', () => {
    const w = new PrimaryWrite(init())
    w.start(); w.writable(); w.recalled(new Map())
    w.order(none, clock())
    w.committed()
    w.failure('b', new UnavailableError('b is unreachable'), false)
    w.hinted('b')
    w.failure('c', new UnavailableError('c is unreachable'), false)
    const [last] = w.hinted('c')
    expect(last?.type === 'fail' && last.error).toMatchObject({ code: 'UNAVAILABLE', durable: 1, required: 2, outcome: 'partial' })
  })
})

describe('PrimaryBatch', () => {
  const row = (i: number): Record<string, unknown> => ({ patient_id: i, patient_name: `Patient ${i}`, date_of_birth: '1980-01-02', gender: 'F', address: `${i} Main St`, contact_number: '0123456789', email: `p${i}@example.org` })
  const insert = (i: number): Mutation => ({ op: 'insert', table: 'patient_records', id: String(i), shard: `patient_id:${i}`, row: row(i) as Mutation['row'] })
  const put = (i: number): Mutation => ({ ...insert(i), op: 'put' })
  const clock = (): HybridClock => new HybridClock('p', () => 1_700_000_000_000)
  const none = { get: () => undefined }
  const batch = (groups: Mutation[][], ownersOf: string[][]): PrimaryBatch => new PrimaryBatch({ self: 'p', groups, ownersOf, down: () => false, level: undefined, writeQuorum: 2, readQuorum: 2, missed: () => false })
  const kinds = (effects: BatchEffect[]): string[] => effects.map(e => e.type === 'send' || e.type === 'hint' ? `${e.type} ${e.group} ${e.peer}` : e.type === 'catchUp' ? `catchUp ${e.group}` : e.type)

  it('refuses groups it does not own, catches up the update, orders the rest in one batch and answers each group by its own count', () => {
    const b = batch([[insert(1)], [put(2)], [insert(3)]], [['p', 'b', 'c'], ['p', 'c', 'd'], ['x', 'y', 'z']])
    expect(kinds(b.start())).toEqual(['checkWritable'])
    expect(kinds(b.writable())).toEqual(['catchUp 1'])
    expect(kinds(b.caughtUp(1))).toEqual(['order'])
    const { entries, effects } = b.order(none, clock())
    // The put of a record nobody has is refused while ordering (404): only the insert is sent.
    expect(entries).toHaveLength(1)
    expect(kinds(effects)).toEqual(['send 0 b', 'send 0 c'])
    expect(b.ack(0, 'b')).toEqual([])
    const [answer] = b.committed()
    expect(answer?.type).toBe('answer')
    const outcomes = answer?.type === 'answer' ? answer.outcomes : []
    expect(outcomes[0]).toMatchObject({ ok: true })
    expect(outcomes[1]).toMatchObject({ ok: false, error: { code: 'NOT_FOUND' } })
    expect(outcomes[2]).toMatchObject({ ok: false, error: { code: 'NOT_OWNER' } })
  })

  it('a group whose catch-up fails fails alone; a full disk fails every group it owns; a failed commit fails the batch', () => {
    const b = batch([[put(1)], [insert(2)]], [['p', 'b', 'c'], ['p', 'b', 'c']])
    b.start()
    b.writable()
    expect(kinds(b.catchUpFailed(0, new UnavailableError('0 of 1 replicas answered')))).toEqual(['order'])
    b.order(none, clock())
    const err = new Error('I/O error')
    expect(b.commitFailed(err)).toEqual([{ type: 'fail', error: err }])
    const full = batch([[insert(1)]], [['p', 'b', 'c']])
    full.start()
    const [answer] = full.notWritable(new StorageFullError('disk full'))
    expect(answer?.type === 'answer' && answer.outcomes).toEqual([{ ok: false, error: { code: 'UNAVAILABLE', message: 'disk full' } }])
  })

  it('a group short of W once every other owner answered gets the 503 fields as its outcome', () => {
    const b = batch([[insert(1)]], [['p', 'b', 'c']])
    b.start(); b.writable()
    b.order(none, clock())
    b.committed()
    b.failure(0, 'b', new UnavailableError('b is unreachable'), false)
    b.hinted(0, 'b')
    b.failure(0, 'c', new UnavailableError('c is unreachable'), false)
    const [answer] = b.hinted(0, 'c')
    expect(answer?.type === 'answer' && answer.outcomes[0]).toMatchObject({ ok: false, error: { code: 'UNAVAILABLE', durable: 1, required: 2, outcome: 'partial' } })
  })
})

describe('batched writes', () => {
  it('split by primary, one message each; an empty group is answered at once, one without owners fails at once', () => {
    const primaries: Record<string, string | undefined> = { p1: 'a', p2: 'b', p3: 'a', p4: undefined }
    const { byPrimary, answered } = groupsByPrimary([['p1'], ['p2'], [], ['p3'], ['p4']], first => primaries[first])
    expect([...byPrimary]).toEqual([['a', [0, 3]], ['b', [1]]])
    expect(answered.get(2)).toEqual({ ok: true, results: [] })
    expect(answered.get(4)).toEqual({ ok: false, error: { code: 'UNAVAILABLE', message: 'No members on the ring yet' } })
  })

  it('a primary that timed out leaves its groups unknown (not tried elsewhere); an unreachable one passes them on; a refusal is thrown', () => {
    const timedOut = batchFailure(new TimeoutError('a: no answer'))
    expect(timedOut).toEqual({ ok: false, error: { code: 'UNAVAILABLE', message: 'a: no answer' } })
    expect(batchAnswerStands(timedOut)).toBe(true)
    const unreachable = batchFailure(new UnavailableError('a is unreachable'))
    expect(batchAnswerStands(unreachable)).toBe(false)
    expect(batchFailure(new ConflictError('exists'))).toBeUndefined()
    expect(batchAnswerStands(undefined)).toBe(false)
    expect(batchAnswerStands({ ok: false, error: { code: 'CONFLICT', message: 'exists' } })).toBe(true)
  })
})

describe('read and catch-up plans', () => {
  const state = (heads: string[], superseded: string[] = []): RecordState => ({
    table: 'patient_records', id: '1', token: '0123456789abcdef', seen: [...superseded, ...heads], superseded,
    heads: heads.map(version => ({ table: 'patient_records', id: '1', token: '0123456789abcdef', version, parents: [], row: null }))
  })

  it('an owner reads its own copy first; a non-owner at one reads the copy it keeps too', () => {
    expect(readPlan({ owners: ['a', 'self', 'b'], self: 'self', level: undefined, quorum: 2, isAlive: () => true, random: () => 0 }))
      .toEqual({ peers: ['self', 'b', 'a'], need: 2, mine: true, held: false })
    expect(readPlan({ owners: ['a', 'b', 'c'], self: 'x', level: 'one', quorum: 2, isAlive: p => p !== 'a', random: () => 0 }))
      .toEqual({ peers: ['c', 'b', 'a'], need: 1, mine: false, held: true })
  })

  it('repairs the copies that lack a head or a replaced version of the merged state, and none that has it all', () => {
    const merged = state(['v2'], ['v1'])
    const answers = new Map<string, RecordState | undefined>([['a', state(['v2'], ['v1'])], ['b', state(['v1'])], ['c', undefined], ['d', state(['v2'])]])
    expect(repairsFor(answers, merged)).toEqual(['b', 'c', 'd'])
  })

  it('heads compare as sets', () => {
    expect(sameVersions(['a', 'b'], ['b', 'a'])).toBe(true)
    expect(sameVersions(['a'], null)).toBe(false)
    expect(sameVersions(null, null)).toBe(true)
  })

  it('a primary looks up updates and deletes, and inserts only when retried or after a failed local commit', () => {
    const m = (op: Mutation['op'], id: string): Mutation => ({ op, table: 'patient_records', id, shard: `patient_id:${id}` })
    const mutations = [m('insert', '1'), m('put', '2'), m('delete', '3'), m('insert', '4')]
    const plan = catchUpPlan(mutations, undefined, 2, 3, false, key => key === 'patient_records/4')
    expect(plan.need).toBe(1)
    expect([...plan.keys.values()].map(k => [k.id, k.required])).toEqual([['2', true], ['3', true], ['4', true]])
    const retried = catchUpPlan([m('insert', '1')], undefined, 2, 3, true, () => false)
    expect([...retried.keys.values()].map(k => [k.id, k.required])).toEqual([['1', false]])
    expect(catchUpPlan(mutations, 'one', 2, 3, false, () => false).keys.size).toBe(0)
  })
})

describe('MemberView (membership and failure detection, no I/O)', () => {
  const timing = { suspectAfterMs: 3000, downAfterMs: 10_000, fanout: 3 }
  const view = (id: TestIdentity, now: number): MemberView => new MemberView({ peerId: id.peerId, sign: id.sign, now, ...timing })
  const gossipTargets = (effects: MemberEffect[]): string[] => effects.flatMap(e => e.type === 'gossip' ? [e.peer] : [])
  /** One push-pull exchange, as the driver performs it: `from` sends its message, `to` answers, `from` takes the answer */
  const exchange = (from: MemberView, fromId: string, to: MemberView, toId: string, now: number): void => {
    const reply = to.receive(from.message(now).view, fromId, now)
    from.answered(toId, reply, now, now)
  }

  it('a candidate is gossiped with on the next heartbeat; once it answered both know each other as alive, and the change is announced and saved', () => {
    const [a, b] = [testIdentity(), testIdentity()]
    const va = view(a, 1000)
    const vb = view(b, 1000)
    va.addCandidate(b.peerId, ['/ip4/127.0.0.1/tcp/1'])
    va.tick(2000, [], () => 0)
    expect(gossipTargets(va.ready())).toEqual([b.peerId])
    exchange(va, a.peerId, vb, b.peerId, 2000)
    expect(vb.ready().map(e => e.type)).toEqual(['changed', 'persist'])
    va.roundDone(2000)
    const effects = va.ready()
    expect(effects.map(e => e.type)).toEqual(['changed', 'persist'])
    expect(effects[1]).toEqual({ type: 'persist', members: [{ peerId: b.peerId, addresses: [] }] })
    expect(va.stateOf(b.peerId, 2000)).toBe('alive')
    expect(vb.stateOf(a.peerId, 2000)).toBe('alive')
  })

  it('a member that falls silent is suspect past suspectAfterMs and down past downAfterMs, as time alone says; it is revisited every fifth round', () => {
    const [a, b] = [testIdentity(), testIdentity()]
    const va = view(a, 1000)
    const vb = view(b, 1000)
    exchange(vb, b.peerId, va, a.peerId, 1000)
    va.ready()
    expect(va.stateOf(b.peerId, 1000 + 3000)).toBe('alive')
    expect(va.stateOf(b.peerId, 1000 + 3001)).toBe('suspect')
    expect(va.stateOf(b.peerId, 1000 + 10_001)).toBe('down')
    va.roundDone(1000 + 3001)
    expect(va.ready().some(e => e.type === 'changed')).toBe(true)
    // Down: not among the random targets, but asked every fifth round to see it return.
    const rounds: string[][] = []
    for (let r = 1; r <= 5; r++) {
      va.tick(20_000 + r * 1000, [], () => 0)
      rounds.push(gossipTargets(va.ready()))
    }
    expect(rounds).toEqual([[], [], [], [], [b.peerId]])
  })

  it('gossips with at most `fanout` live members a round, in an order the random draw decides', () => {
    const ids = Array.from({ length: 6 }, () => testIdentity())
    const [a, ...others] = ids as [TestIdentity, ...TestIdentity[]]
    const va = view(a, 1000)
    for (const o of others) exchange(view(o, 1000), o.peerId, va, a.peerId, 1000)
    va.ready()
    va.tick(1500, [], () => 0)
    const first = gossipTargets(va.ready())
    va.tick(2000, [], () => 0.999)
    const second = gossipTargets(va.ready())
    expect(first).toHaveLength(3)
    expect(second).toHaveLength(3)
    expect(first).not.toEqual(second)
  })

  it('refuses gossip from a peer that is not a member and brings no signed join, reporting it once a minute', () => {
    const [a, stranger, other] = [testIdentity(), testIdentity(), testIdentity()]
    const va = view(a, 1000)
    const forged = view(other, 1000).message(1000).view
    expect(() => va.receive(forged, stranger.peerId, 1000)).toThrow(ForbiddenError)
    expect(va.ready()).toEqual([{ type: 'warn', line: expect.stringContaining(`refused membership gossip from ${stranger.peerId}`) }])
    expect(() => va.receive(forged, stranger.peerId, 30_000)).toThrow(ForbiddenError)
    expect(va.ready()).toEqual([])
    expect(va.stateOf(other.peerId, 30_000)).toBeUndefined()
  })

  it('a member that leaves is known as left by those it told, and loses its place among the ring\'s members', () => {
    const [a, b] = [testIdentity(), testIdentity()]
    const va = view(a, 1000)
    const vb = view(b, 1000)
    exchange(va, a.peerId, vb, b.peerId, 1000)
    va.leave(2000)
    expect(va.leaving).toBe(true)
    expect(va.ready().some(e => e.type === 'changed')).toBe(true)
    exchange(va, a.peerId, vb, b.peerId, 2000)
    expect(vb.stateOf(a.peerId, 2000)).toBe('left')
    expect(vb.members(2000, []).filter(m => m.state !== 'left').map(m => m.peerId)).toEqual([b.peerId])
  })

  it('only a down member can be removed; the removal is gossiped to the live members', () => {
    const [a, b, c] = [testIdentity(), testIdentity(), testIdentity()]
    const va = view(a, 1000)
    exchange(view(b, 1000), b.peerId, va, a.peerId, 1000)
    exchange(view(c, 1000), c.peerId, va, a.peerId, 20_000)
    va.ready()
    expect(() => va.remove(c.peerId, 20_000, () => 0)).toThrow(ConflictError)
    expect(va.remove(b.peerId, 20_000, () => 0)).toMatchObject({ peerId: b.peerId, state: 'left' })
    const effects = va.ready()
    expect(gossipTargets(effects)).toEqual([c.peerId])
    expect(va.stateOf(b.peerId, 20_000)).toBe('left')
  })
})

describe('anti-entropy decisions', () => {
  it('narrows differing ranges to their differing leaves, numbered across the ring', () => {
    const mine: Record<number, string[]> = { 3: ['a', 'b', 'c'], 7: ['x', 'y'] }
    expect(differingLeaves([3, 7], [['a', 'B', 'c'], ['x']], b => mine[b] ?? [], 256)).toEqual([3 * 256 + 1, 7 * 256 + 1])
  })

  it('pulls what differs unless this node holds every head of the peer\'s copy; pushes what the peer lacks or still differs after the pull', () => {
    const mine = new Map([['same', 'd1'], ['newer-here', 'd2'], ['stale-here', 'd3'], ['only-here', 'd4']])
    const theirs = new Map<string, PeerDigest>([
      ['same', { digest: 'd1' }],
      ['newer-here', { digest: 'old', heads: ['v1'] }],
      ['stale-here', { digest: 'new', heads: ['v9'] }],
      ['only-there', { digest: 'd5' }]
    ])
    const held = new Set(['newer-here/v1'])
    const pull = recordsToPull(mine, theirs, (k, heads) => heads.every(h => held.has(`${k}/${h}`)))
    expect(pull).toEqual(['stale-here', 'only-there'])
    // After the pull, the stale copy here is the peer's: it does not go back.
    const now: Record<string, string> = { 'stale-here': 'new', 'newer-here': 'd2' }
    expect(recordsToPush(mine, theirs, k => now[k])).toEqual(['newer-here', 'only-here'])
  })
})

describe('SyncRound', () => {
  const SELF = 'self'
  const clock = new HybridClock('peer')
  const hex = (c: string, n: number): string => c.repeat(n)
  /** 256 range digests, all alike but the one given */
  const summary = (differ?: number): string[] => Array.from({ length: 256 }, (_, b) => hex(b === differ ? 'b' : 'a', 64))
  const leafOf = (token: string): number => parseInt(token.slice(0, 4), 16)
  // Two real patients whose records fall in one leaf: their whole states pass the checks a fetched record must pass.
  const [p, q] = ((): [number, number] => {
    const seen = new Map<number, number>()
    for (let i = 1; ; i++) {
      const leaf = leafOf(tokenOf(`patient_id:${i}`))
      const other = seen.get(leaf)
      if (other !== undefined) return [other, i]
      seen.set(leaf, i)
    }
  })()
  const L = leafOf(tokenOf(`patient_id:${p}`))
  const B = Math.floor(L / 256)
  const keyOf = (i: number, token = tokenOf(`patient_id:${i}`)): string => `${token}!patient_records!${i}`
  /** A record of the same leaf that only this node's store lists (its token need not be the patient's) */
  const localKey = (i: number): string => keyOf(i, `${L.toString(16).padStart(4, '0')}${String(i).padStart(12, '0')}`)
  const whole = (key: string): WholeRecord => {
    const [token, table, id] = key.split('!') as [string, string, string]
    const head = { table, id, token, version: clock.tick(), parents: [], row: { patient_id: Number(id), patient_name: `Patient ${id}`, date_of_birth: '1980-01-02', gender: 'F', address: '1 Main St', contact_number: '0123456789', email: `p${id}@example.org` } }
    return { state: { table, id, token, heads: [head], seen: [head.version], superseded: [] }, versions: [] }
  }
  const local = (key: string, digest: string, heads = ['v']): LocalDigest => ({ key, table: 'patient_records', token: key.slice(0, 16), digest, heads })
  const roundOf = (peers: string[], budget = new SendBudget(1e9, 0)): SyncRound =>
    new SyncRound({ self: SELF, peers, owners: () => [SELF, 'b', 'c', 'd'], budget, timeoutMs: 5000, bandwidthMbps: 10 })
  /** The one step of some effects that waits on an input */
  const stepOf = (effects: SyncEffect[]): Extract<SyncEffect, { id: number }> => {
    const steps = effects.filter((e): e is Extract<SyncEffect, { id: number }> => 'id' in e)
    if (steps.length !== 1) throw new Error(`expected one step, got ${JSON.stringify(effects.map(e => e.type))}`)
    return steps[0] as Extract<SyncEffect, { id: number }>
  }
  const doneOf = (effects: SyncEffect[]): SyncRoundResult => {
    const done = effects.find(e => e.type === 'done')
    if (done?.type !== 'done') throw new Error(`the round is not done: ${JSON.stringify(effects.map(e => e.type))}`)
    return done.result
  }
  /** Leaf digests of range B, alike but for leaf L when `differ` */
  const leaves = (differ: boolean): string[] => Array.from({ length: 256 }, (_, k) => hex(differ && B * 256 + k === L ? 'b' : 'a', 64))

  /** Drives a round with one peer up to the comparison of leaf L's records: this node lists `mine` */
  const toLeaf = (round: SyncRound, mine: LocalDigest[]): Extract<SyncEffect, { id: number }> => {
    let s = stepOf(round.start(0))
    expect(s).toMatchObject({ type: 'ask', peer: 'b', msg: { type: 'summary' } })
    s = stepOf(round.answered(s.id, { buckets: summary(B) }, 1))
    expect(s.type).toBe('readSummary')
    s = stepOf(round.summaryRead(s.id, summary(), 2))
    // Only the range whose digests differ is narrowed, and only the leaf whose digests differ is listed.
    expect(s).toMatchObject({ type: 'ask', peer: 'b', msg: { type: 'leaves', buckets: [B] } })
    s = stepOf(round.answered(s.id, { leaves: [leaves(true)] }, 3))
    expect(s).toEqual({ type: 'readLeaves', id: s.id, buckets: [B] })
    s = stepOf(round.leavesRead(s.id, [leaves(false)], 4))
    expect(s).toEqual({ type: 'readDigests', id: s.id, leaf: L, through: L, limit: 1000 })
    s = stepOf(round.digestsRead(s.id, mine, 5))
    expect(s).toMatchObject({ type: 'ask', peer: 'b', msg: { type: 'digests', leaves: [L], limit: 1000 } })
    return s
  }

  it('two replicas whose summaries differ in one leaf: only that leaf\'s differing records are asked for and sent, each the one way it must go', () => {
    const round = roundOf(['b'])
    const same = localKey(900001)
    const newerHere = localKey(900002)
    const onlyHere = localKey(900003)
    const staleHere = keyOf(p)
    const onlyThere = keyOf(q)
    let s = toLeaf(round, [local(same, hex('1', 64)), local(newerHere, hex('2', 64)), local(staleHere, hex('3', 64)), local(onlyHere, hex('4', 64))])
    s = stepOf(round.answered(s.id, {
      records: [[same, hex('1', 32)], [newerHere, hex('5', 32), [clock.tick()]], [staleHere, hex('6', 32), [clock.tick()]], [onlyThere, hex('7', 32)]]
    }, 6))
    // The records both hold differently: does this node hold every head of the peer's copy?
    expect(s.type === 'checkHeads' && s.records.map(r => r.key)).toEqual([newerHere, staleHere])
    s = stepOf(round.headsHeld(s.id, [newerHere], 7))
    // Pulled: the copy stale here and the one only there; not the one newer here, nor the one alike.
    expect(s).toMatchObject({ type: 'ask', peer: 'b', msg: { type: 'fetch', keys: [staleHere, onlyThere] } })
    const fetched = [whole(staleHere), whole(onlyThere)]
    s = stepOf(round.answered(s.id, { records: fetched, missing: [] }, 8))
    // Taken as checked (the rows as the schema stores them): the two records fetched.
    expect(s.type === 'write' && s.records.map(r => r.state.heads[0]?.version)).toEqual(fetched.map(r => r.state.heads[0]?.version))
    s = stepOf(round.written(s.id, 9))
    expect(s).toEqual({ type: 'readDigestsNow', id: s.id, keys: [newerHere, staleHere] })
    // After the merge the stale copy here is the peer's: it does not go back.
    s = stepOf(round.digestsNow(s.id, new Map([[newerHere, hex('2', 64)], [staleHere, hex('6', 64)]]), 10))
    expect(s).toEqual({ type: 'readRecords', id: s.id, keys: [newerHere, onlyHere] })
    const pushed = [whole(newerHere), whole(onlyHere)]
    s = stepOf(round.recordsRead(s.id, pushed, 11))
    expect(s).toMatchObject({ type: 'push', peer: 'b', msg: { type: 'records', records: pushed }, timeoutMs: 10_000 })
    const end = round.answered(s.id, { results: [{ ok: true }, { ok: true }] }, 1500)
    expect(doneOf(end)).toEqual({ ranges: 256, rangesDiffering: 1, recordsCompared: 5, recordsSent: 4, peers: 1, failed: 0, failures: [], seconds: 1.5 })
    expect(end).toContainEqual({ type: 'progress', done: 256, total: 256 })
    expect(round.finished).toBe(true)
    // An input for a step long past changes nothing.
    expect(round.answered(s.id, { results: [] }, 1600)).toEqual([])
  })

  it('a peer that fails mid-round (no answer, then a malformed one) fails its own part only: the round goes on with the others and reports each', () => {
    const round = roundOf(['b', 'c', 'd'])
    let s = stepOf(round.start(0))
    s = stepOf(round.answered(s.id, { buckets: summary(5) }, 1))
    s = stepOf(round.summaryRead(s.id, summary(), 2))
    expect(s).toMatchObject({ type: 'ask', peer: 'b', msg: { type: 'leaves', buckets: [5] } })
    let out = round.failed(s.id, new TimeoutError('b: no answer within 5000 ms'), 3)
    expect(out).toContainEqual({ type: 'log', msg: 'anti-entropy with %s failed: %s', args: ['b', 'b: no answer within 5000 ms'] })
    expect(out).toContainEqual({ type: 'progress', done: 256, total: 768 })
    s = stepOf(out)
    expect(s).toMatchObject({ type: 'ask', peer: 'c', msg: { type: 'summary' } })
    out = round.answered(s.id, { buckets: ['not a digest'] }, 4)
    s = stepOf(out)
    expect(s).toMatchObject({ type: 'ask', peer: 'd', msg: { type: 'summary' } })
    s = stepOf(round.answered(s.id, { buckets: summary() }, 5))
    const result = doneOf(round.summaryRead(s.id, summary(), 6))
    expect(result).toMatchObject({ ranges: 512, rangesDiffering: 1, recordsSent: 0, peers: 1, failed: 2 })
    expect(result.failures).toEqual([{ peer: 'b', reason: 'b: no answer within 5000 ms' }, { peer: 'c', reason: 'sync: malformed summary reply' }])
  })

  it('the bandwidth budget holds a push back by ticks, not timers: it goes once the time it asked for has come', () => {
    const budget = new SendBudget(1000, 0)
    // This node's replies to another node's round spent the budget and more: its own pushes queue behind that debt.
    expect(budget.take(1500, 0)).toBe(500)
    const round = roundOf(['b'], budget)
    const onlyHere = localKey(900004)
    let s = toLeaf(round, [local(onlyHere, hex('4', 64))])
    s = stepOf(round.answered(s.id, { records: [] }, 6))
    expect(s).toEqual({ type: 'readRecords', id: s.id, keys: [onlyHere] })
    const record = whole(onlyHere)
    const bytes = JSON.stringify({ type: 'records', records: [record] }).length
    const out = round.recordsRead(s.id, [record], 10)
    // Nothing is sent: the round asks to be woken when the debt is paid.
    const wait = Math.ceil((500 - 10 + bytes) * 1000 / 1000)
    expect(out).toEqual([{ type: 'wake', ms: wait }])
    expect(round.tick(10 + wait - 1)).toEqual([{ type: 'wake', ms: 1 }])
    s = stepOf(round.tick(10 + wait))
    expect(s).toMatchObject({ type: 'push', peer: 'b', msg: { records: [record] } })
    expect(round.tick(10 + wait + 5)).toEqual([])
    expect(doneOf(round.answered(s.id, { results: [{ ok: true }] }, 10 + wait + 20))).toMatchObject({ recordsSent: 1, failed: 0 })
  })

  it('a peer that does not take what was pushed fails; a stop ends the round after the step under way', () => {
    const round = roundOf(['b', 'c'])
    const onlyHere = localKey(900005)
    let s = toLeaf(round, [local(onlyHere, hex('4', 64))])
    s = stepOf(round.answered(s.id, { records: [] }, 6))
    s = stepOf(round.recordsRead(s.id, [whole(onlyHere)], 7))
    s = stepOf(round.answered(s.id, { results: [{ ok: false, error: { message: 'disk full' } }] }, 8))
    expect(s).toMatchObject({ type: 'ask', peer: 'c', msg: { type: 'summary' } })
    round.stop()
    s = stepOf(round.answered(s.id, { buckets: summary(9) }, 9))
    expect(s.type).toBe('readSummary')
    const result = doneOf(round.summaryRead(s.id, summary(), 10))
    // c's differing range is not narrowed: the round stopped.
    expect(result).toMatchObject({ ranges: 512, rangesDiffering: 2, peers: 1, failed: 1, failures: [{ peer: 'b', reason: 'b did not take 1 of 1 records' }] })
  })
})

describe('InsertBatch', () => {
  const entry = (id: string): VersionEntry => ({ table: 'patient_records', id, token: tokenOf(`patient_id:${id}`), version: new HybridClock('self').tick(), parents: [], row: null })
  const init = { self: 'self', down: (p: string) => p === 'gone', level: undefined, writeQuorum: 2 }

  it('commits this node\'s share of the groups it owns in one batch, counted once for each of them; a group it does not own counts its owners only', () => {
    const a = entry('1')
    const b = entry('2')
    const c = entry('3')
    const batch = new InsertBatch({ ...init, groups: [[a], [b], [c]], ownersOf: [['self', 'x', 'y'], ['x', 'y', 'z'], ['y', 'self', 'gone']] })
    const start = batch.start()
    expect(start[0]).toEqual({ type: 'commit', entries: [a, c] })
    expect(start.slice(1)).toEqual([
      { type: 'send', group: 0, peer: 'x' }, { type: 'send', group: 0, peer: 'y' },
      { type: 'send', group: 1, peer: 'x' }, { type: 'send', group: 1, peer: 'y' }, { type: 'send', group: 1, peer: 'z' },
      { type: 'send', group: 2, peer: 'y' }, { type: 'hint', group: 2, peer: 'gone', reason: 'gone is down' }
    ])
    expect(batch.entriesOf(1)).toEqual([b])
    // One other owner and this node's commit make W = 2 for groups 0 and 2; group 1 needs two of its own owners.
    expect(batch.ack(0, 'x')).toEqual([])
    expect(batch.ack(1, 'x')).toEqual([])
    expect(batch.ack(2, 'y')).toEqual([])
    expect(batch.hinted(2, 'gone')).toEqual([])
    expect(batch.committed()).toEqual([])
    expect(batch.failure(1, 'y', new UnavailableError('y is unreachable'), false)).toEqual([{ type: 'hint', group: 1, peer: 'y', reason: 'y is unreachable' }])
    expect(batch.ack(1, 'z')).toEqual([{ type: 'answer', outcomes: [{ ok: true }, { ok: true }, { ok: true }] }])
  })

  it('a group this node does not own, short of W: the 503 counts its owners only (this node holds no copy of it)', () => {
    const batch = new InsertBatch({ ...init, groups: [[entry('5')]], ownersOf: [['x', 'y', 'z']] })
    expect(batch.start()).toEqual([{ type: 'send', group: 0, peer: 'x' }, { type: 'send', group: 0, peer: 'y' }, { type: 'send', group: 0, peer: 'z' }])
    batch.ack(0, 'x')
    for (const p of ['y', 'z']) {
      batch.failure(0, p, new UnavailableError(`${p} is unreachable`), false)
    }
    expect(batch.hinted(0, 'y')).toEqual([])
    const out = batch.hinted(0, 'z')
    expect(out).toEqual([{ type: 'answer', outcomes: [{ ok: false, error: expect.objectContaining({ code: 'UNAVAILABLE', durable: 1, required: 2, outcome: 'partial' }) }] }])
    const error = out[0]?.type === 'answer' ? out[0].outcomes[0] : undefined
    expect(error?.ok === false && error.error.message).toMatch(/durable on 1 of the 2 owners required/)
  })

  it('this node\'s failed commit fails the groups that had nothing else counted, with its error; empty groups pass, no owners fail', () => {
    const a = entry('1')
    const batch = new InsertBatch({ ...init, writeQuorum: 1, groups: [[a], [], [entry('4')]], ownersOf: [['self'], [], []] })
    expect(batch.start()).toEqual([{ type: 'commit', entries: [a] }])
    const out = batch.commitFailed(new StorageFullError('the disk is full'))
    expect(out[0]).toEqual({ type: 'log', msg: 'local commit of %d first versions failed: %s', args: [1, 'the disk is full'] })
    expect(out[1]).toEqual({ type: 'answer', outcomes: [{ ok: false, error: expect.objectContaining({ message: 'the disk is full' }) }, { ok: true }, { ok: false, error: { code: 'UNAVAILABLE', message: 'No members on the ring yet' } }] })
  })
})

describe('SloppyWrite', () => {
  const mutation: Mutation = { op: 'insert', table: 'patient_records', id: '7', shard: 'patient_id:7', row: { patient_id: 7, patient_name: 'Patient 7' } }
  const states = { get: () => undefined }

  it('checks the disk, recalls keyed writes, orders against this node\'s copy, then keeps a hint for every owner before it answers', () => {
    const write = new SloppyWrite({ mutations: [mutation], owners: ['a', 'b'], retry: false })
    expect(write.start()).toEqual([{ type: 'checkWritable' }])
    expect(write.writable()).toEqual([{ type: 'recall' }])
    expect(write.recalled(new Map())).toEqual([{ type: 'order' }])
    const entries = write.order(states, new HybridClock('self'))
    expect(entries).toHaveLength(1)
    expect(write.committed()).toEqual([{ type: 'held' }, { type: 'hint', peer: 'a' }, { type: 'hint', peer: 'b' }])
    expect(write.hinted('a')).toEqual([])
    const out = write.hinted('b')
    expect(out[0]).toMatchObject({ type: 'log', args: ['patient_id:7', 'a, b'] })
    expect(out[1]).toMatchObject({ type: 'answer', results: [{ id: '7', version: entries[0]?.version }] })
    expect(write.hinted('b')).toEqual([])
  })

  it('a full disk is the answer, with nothing ordered or hinted', () => {
    const write = new SloppyWrite({ mutations: [mutation], owners: ['a'], retry: false })
    write.start()
    const full = new StorageFullError('the disk is full')
    expect(write.failed(full)).toEqual([{ type: 'fail', error: full }])
    expect(write.failed(full)).toEqual([])
  })
})

describe('PurgeFanOut', () => {
  it('sends the purge to every member; one down, silent or answering anything but ok gets it as a hint; the answer counts the nodes that purged it now', () => {
    const fan = new PurgeFanOut({ table: 'patient_records', id: '7', members: [{ peer: 'a', down: false }, { peer: 'b', down: true }, { peer: 'c', down: false }, { peer: 'd', down: false }] })
    expect(fan.start()).toEqual([
      { type: 'send', peer: 'a' },
      { type: 'log', msg: 'purge of %s %s did not reach %s (%s); keeping it as a hint', args: ['patient_records', '7', 'b', 'b is down'] },
      { type: 'hint', peer: 'b' },
      { type: 'send', peer: 'c' },
      { type: 'send', peer: 'd' }
    ])
    expect(fan.answered('a', { ok: true })).toEqual([])
    expect(fan.failed('c', new TimeoutError('c: no answer within 5000 ms'))).toEqual([
      { type: 'log', msg: 'purge of %s %s did not reach %s (%s); keeping it as a hint', args: ['patient_records', '7', 'c', 'c: no answer within 5000 ms'] },
      { type: 'hint', peer: 'c' }
    ])
    expect(fan.answered('d', { ok: 'yes' })).toEqual([
      { type: 'log', msg: 'purge of %s %s did not reach %s (%s); keeping it as a hint', args: ['patient_records', '7', 'd', 'replica: malformed purge reply'] },
      { type: 'hint', peer: 'd' }
    ])
    expect(fan.hinted('b')).toEqual([])
    expect(fan.hinted('c')).toEqual([])
    expect(fan.hinted('d')).toEqual([{ type: 'answer', reached: 2 }])
  })

  it('a hint that cannot be written fails the purge; with no other members it is answered at once', () => {
    const fan = new PurgeFanOut({ table: 'patient_records', id: '7', members: [{ peer: 'b', down: true }] })
    fan.start()
    const full = new StorageFullError('the disk is full')
    expect(fan.hintFailed('b', full)).toEqual([{ type: 'fail', error: full }])
    expect(new PurgeFanOut({ table: 'patient_records', id: '7', members: [] }).start()).toEqual([{ type: 'answer', reached: 1 }])
  })
})

describe('RowCount', () => {
  const ranges = [
    { from: '', to: '4', owners: ['a', 'b'] },
    { from: '4', to: '8', owners: ['b', 'c'] },
    { from: '8', to: '', owners: ['c', 'a'] }
  ]
  const counts = (effects: CountEffect[]): Array<[string, Array<[string, string]>]> => effects.flatMap(e => e.type === 'count' ? [[e.peer, e.ranges] as [string, Array<[string, string]>]] : [])

  it('counts each range once, on its first owner not down; a silent member\'s ranges go to their next owners after the wave, all of them', () => {
    const count = new RowCount({ ranges, down: p => p === 'c' })
    // c is down: its range goes to a, which counts it with its own (touching ranges are not joined across the ring's end).
    expect(counts(count.start())).toEqual([['a', [['', '4'], ['8', '']]], ['b', [['4', '8']]]])
    const silent = count.failed('b', new TimeoutError('b: no answer within 5000 ms'))
    expect(silent).toEqual([{ type: 'log', msg: 'row count on %s failed (%s): its ranges go to their next owners', args: ['b', 'b: no answer within 5000 ms'] }])
    // The next wave starts once a has answered: b's range has no owner left that is neither down nor silent.
    const end = count.counted('a', { tables: { patient_records: 7, lab_results: 2 } })
    expect(end).toEqual([{ type: 'done', counts: { tables: { lab_results: 2, patient_records: 7 }, complete: false, unanswered: ['b'] } }])
  })

  it('a malformed answer is a missing one; a refusal that is not (a bug) fails the count', () => {
    const count = new RowCount({ ranges, down: () => false })
    expect(counts(count.start())).toEqual([['a', [['', '4']]], ['b', [['4', '8']]], ['c', [['8', '']]]])
    expect(count.counted('a', { tables: { patient_records: -1 } })[0]).toMatchObject({ type: 'log', args: ['a', 'replica: malformed count reply'] })
    expect(count.counted('b', { tables: { patient_records: 3 } })).toEqual([])
    // The wave is over: a's range goes to b, its next owner.
    expect(counts(count.counted('c', { tables: { patient_records: 4 } }))).toEqual([['b', [['', '4']]]])
    expect(count.counted('b', { tables: { patient_records: 5 } })).toEqual([{ type: 'done', counts: { tables: { patient_records: 12 }, complete: true, unanswered: ['a'] } }])
    // More ranges than one request carries: asked one chunk after another, added only once all are counted.
    const many = Array.from({ length: MAX_COUNT_RANGES + 1 }, (_, i) => ({ from: `${i}`.padStart(5, '0') + 'a', to: `${i}`.padStart(5, '0') + 'b', owners: ['a'] }))
    const big = new RowCount({ ranges: many, down: () => false })
    expect(counts(big.start()).map(([p, r]) => [p, r.length])).toEqual([['a', MAX_COUNT_RANGES]])
    expect(counts(big.counted('a', { tables: { patient_records: 1 } })).map(([p, r]) => [p, r.length])).toEqual([['a', 1]])
    expect(big.counted('a', { tables: { patient_records: 1 } })).toEqual([{ type: 'done', counts: { tables: { patient_records: 2 }, complete: true, unanswered: [] } }])
    const broken = new RowCount({ ranges, down: () => false })
    broken.start()
    const bug = new TypeError('boom')
    expect(broken.failed('a', bug)).toEqual([{ type: 'fail', error: bug }])
    expect(broken.counted('b', { tables: {} })).toEqual([])
  })
})

describe('SyncAnswer', () => {
  const clock = new HybridClock('self')
  const key = (i: number): string => `${tokenOf(`patient_id:${i}`)}!patient_records!${i}`
  const digest = (i: number, heads = [clock.tick()]): LocalDigest => ({ key: key(i), table: 'patient_records', token: tokenOf(`patient_id:${i}`), digest: String(i % 10).repeat(64), heads })
  // b owns every record but 3; c owns none.
  const owners = (_table: string, token: string): string[] => token === tokenOf('patient_id:3') ? ['self', 'c'] : ['self', 'b']
  const answerFor = (from: string): SyncAnswer => new SyncAnswer({ self: 'self', from, owners })
  const readOf = (effects: ServeEffect[]): Extract<ServeEffect, { id: number }> => {
    const e = effects[0]
    if (e === undefined || !('id' in e)) throw new Error(`expected a read, got ${JSON.stringify(effects)}`)
    return e
  }

  it('a digest page lists only the records the asker owns too, counts every record read toward its limit, and gives the cursor of the last one read', () => {
    const answer = answerFor('b')
    const [l1, l3, l4] = [1, 3, 4].map(i => parseInt(tokenOf(`patient_id:${i}`).slice(0, 4), 16)) as [number, number, number]
    const leaves = [...new Set([l1, l3, l4])].sort((x, y) => x - y)
    let read = readOf(answer.start({ type: 'digests', leaves, limit: 2 }))
    expect(read).toMatchObject({ type: 'readDigests', limit: 2 })
    const first = [digest(1), digest(3)]
    let out = answer.digestsRead(read.id, first)
    // Two read, the limit: the page ends there, whatever other leaves were asked for.
    expect(out).toEqual([{ type: 'reply', reply: { records: [[key(1), '1'.repeat(32), first[0]?.heads]], next: key(3) } }])
    // A record with more heads than a message carries is listed without them.
    const wide = digest(4, Array.from({ length: 101 }, () => clock.tick()))
    const again = answerFor('b')
    read = readOf(again.start({ type: 'digests', leaves: [l4], limit: 10 }))
    out = again.digestsRead(read.id, [wide])
    expect(out).toEqual([{ type: 'reply', reply: { records: [[key(4), '4'.repeat(32)]] } }])
  })

  it('a fetch gives whole records the asker owns and names the rest missing; a malformed request or a failed read is refused', () => {
    const answer = answerFor('b')
    const record = { state: { table: 'patient_records', id: '1', token: tokenOf('patient_id:1'), heads: [], seen: [], superseded: [] }, versions: [] } as unknown as WholeRecord
    let read = readOf(answer.start({ type: 'fetch', keys: [key(1), key(3), key(5)] }))
    expect(read).toEqual({ type: 'readRecord', id: read.id, key: key(1) })
    read = readOf(answer.recordRead(read.id, record))
    // 3 is not b's: it is not read at all. 5 is not held here.
    expect(read).toEqual({ type: 'readRecord', id: read.id, key: key(5) })
    expect(answer.recordRead(read.id, undefined)).toEqual([{ type: 'reply', reply: { records: [record], missing: [key(3), key(5)] } }])
    const bad = answerFor('b').start({ type: 'fetch', keys: ['nonsense'] })
    expect(bad[0]?.type === 'refuse' && (bad[0].error as NtsoekheError).code).toBe('INVALID_MESSAGE')
    const failing = answerFor('b')
    read = readOf(failing.start({ type: 'summary' }))
    expect(read.type).toBe('readSummary')
    const err = new Error('the store is closed')
    expect(failing.failed(read.id, err)).toEqual([{ type: 'refuse', error: err }])
  })
})

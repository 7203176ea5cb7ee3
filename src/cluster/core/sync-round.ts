import { BUCKETS, bucketOfLeaf, LEAVES_PER_BUCKET } from '../../storage/range-summary.js'
import type { WholeRecord } from '../../storage/store.js'
import { chunkWhole, resultOk } from '../apply-batcher.js'
import { differingIndexes } from '../decisions.js'
import {
  checkDigestPage, checkFetchReply, checkLeavesReply, checkRecordKey, checkSummaryReply,
  MAX_SYNC_BUCKETS, MAX_SYNC_DIGESTS, MAX_SYNC_FETCH, MAX_SYNC_LEAVES, SYNC_DIGEST_HEX, type SyncMessage
} from '../messages.js'
import type { SendBudget } from './budget.js'
import { differingLeaves, recordsToPull, recordsToPush, type PeerDigest } from './sync.js'
import { PendingStep, type LogEffect, type WithoutId } from './effects.js'

/** Records read for one push; they go in as few `records` messages as fit (see chunkWhole) */
export const PUSH_BATCH = 512
/** Pages of one leaf (or one range's leaves) a round reads before it gives up on them (a leaf is 1/65536 of the records) */
export const MAX_PAGES_PER_LEAF = 10_000
/** Bytes of records one fetch reply carries, under the transport's frame limit */
export const FETCH_REPLY_BYTES = 2 * 1024 * 1024

/** A record of this node's store as a digest listing gives it */
export interface LocalDigest {
  key: string
  table: string
  token: string
  /** Hex digest of the record's key and heads (see recordDigest) */
  digest: string
  heads: string[]
}

/** What one round compared and sent */
export interface SyncRoundResult {
  /** Token ranges compared, summed over the peers compared with */
  ranges: number
  /** Of those, ranges whose summaries differed */
  rangesDiffering: number
  /** Records whose digests were compared in ranges that differed */
  recordsCompared: number
  /** Records whose whole state went from one owner to the other (either way) */
  recordsSent: number
  /** Peers compared with to the end, and those that could not be (each with what went wrong) */
  peers: number
  failed: number
  failures: Array<{ peer: string, reason: string }>
  seconds: number
}

/**
 * What a round wants done. The steps that carry an `id` each wait for one
 * input with that id (or failed(id)); at most one is pending at a time.
 */
export type SyncEffect =
  /** Ask `peer` on the sync protocol (answered(id, reply) or failed(id)) */
  | { type: 'ask', id: number, peer: string, msg: SyncMessage, timeoutMs: number }
  /** Send whole records to `peer` on the replica protocol (answered(id, reply) or failed(id)) */
  | { type: 'push', id: number, peer: string, msg: { type: 'records', records: WholeRecord[] }, timeoutMs: number }
  /** This node's range digests (summaryRead) */
  | { type: 'readSummary', id: number }
  /** This node's leaf digests of some ranges (leavesRead) */
  | { type: 'readLeaves', id: number, buckets: number[] }
  /** Up to `limit` of this node's records in leaves `leaf`..`through`, after the key `after` (digestsRead) */
  | { type: 'readDigests', id: number, leaf: number, through: number, limit: number, after?: string }
  /** Which of these records' peer heads this node holds every one of (headsHeld) */
  | { type: 'checkHeads', id: number, records: Array<{ key: string, heads: string[] }> }
  /** The digests of these records as this node holds them now (digestsNow) */
  | { type: 'readDigestsNow', id: number, keys: string[] }
  /** Whole records (state and history) of these keys that this node holds (recordsRead) */
  | { type: 'readRecords', id: number, keys: string[] }
  /** Take these whole records from the peer into the store, seeing their versions on the node's clock (written) */
  | { type: 'write', id: number, records: WholeRecord[] }
  /** A send waits on the bandwidth budget: call tick() in `ms` */
  | { type: 'wake', ms: number }
  /** Ranges done of those to compare, for the status */
  | { type: 'progress', done: number, total: number }
  | LogEffect
  /** The round is over */
  | { type: 'done', result: SyncRoundResult }

type Step = Extract<SyncEffect, { id: number }>
/** A step as the round's body yields it; the machine gives it its id (and holds a push on the budget) */
type Op = WithoutId<Step>
/** The round's body: yields the steps it waits on, each resumed with its input */
type Body<T> = Generator<Op, T, unknown>

export interface SyncRoundInit {
  self: string
  /** The members to compare with, in order: live ring members other than this node */
  peers: string[]
  /** A record's owners, in preference order (the ring: a lookup, no I/O) */
  owners: (table: string, token: string) => string[]
  /** The node's bandwidth budget for what it sends, shared with its sync replies */
  budget: SendBudget
  /** Wait for one peer's answer, ms (a peer's throttled reply gets more: see askTimeout) */
  timeoutMs: number
  /** The configured bandwidth, megabits per second (how long a peer's throttled reply may take) */
  bandwidthMbps: number
}

/**
 * One anti-entropy round as a state machine with no I/O. It compares this
 * node with each peer in turn: the peer's range digests with this node's,
 * then the leaf digests of the ranges that differ, then the records of the
 * differing leaves that both own (key and head digest, pages of a few
 * hundred leaves); it pulls what the peer holds differently (unless this
 * node holds every head of the peer's copy), then pushes what still
 * differs or the peer lacks, whole states with history (core/sync.ts
 * decides which). A peer that fails (no answer, a malformed one, records
 * it did not take, a read here that failed) fails its part only: the round
 * goes on with the next and reports it. Every push draws on the bandwidth
 * budget first; one the budget holds back waits for tick(), not a timer.
 *
 * Inputs: start(now); answered(id, reply, now) for asks and pushes; the
 * local reads' results (summaryRead, leavesRead, digestsRead, headsHeld,
 * digestsNow, recordsRead) and written(id, now); failed(id, error, now);
 * tick(now); stop(). Each returns the effects to perform, in order.
 *
 * The round's body is written as the sequence it is (a generator that
 * yields each step it waits on); the class around it numbers the steps,
 * checks that each input answers the step pending, and keeps the budget.
 */
export class SyncRound {
  private readonly init: SyncRoundInit
  private readonly body: Body<void>
  private readonly stats: SyncRoundResult = { ranges: 0, rangesDiffering: 0, recordsCompared: 0, recordsSent: 0, peers: 0, failed: 0, failures: [], seconds: 0 }
  private out: SyncEffect[] = []
  private readonly pending = new PendingStep<Step>()
  /** A push the budget holds back, and when it may go */
  private held?: { op: Extract<Op, { type: 'push' }>, at: number }
  private startedAt = 0
  private now = 0
  private done = 0
  private total = 0
  private stopped = false
  private over = false

  constructor (init: SyncRoundInit) {
    this.init = init
    this.body = this.run()
  }

  /** The round is over (done was given) */
  get finished (): boolean { return this.over }

  start (now: number): SyncEffect[] {
    this.startedAt = now
    this.now = now
    return this.advance({ value: undefined })
  }

  /** A peer's answer to the ask or push `id` (checked here: a malformed one fails the peer) */
  answered (id: number, reply: unknown, now: number): SyncEffect[] { return this.resume(id, ['ask', 'push'], reply, now) }
  summaryRead (id: number, buckets: string[], now: number): SyncEffect[] { return this.resume(id, ['readSummary'], buckets, now) }
  leavesRead (id: number, leaves: string[][], now: number): SyncEffect[] { return this.resume(id, ['readLeaves'], leaves, now) }
  digestsRead (id: number, records: LocalDigest[], now: number): SyncEffect[] { return this.resume(id, ['readDigests'], records, now) }
  /** `held`: the keys of those asked whose every peer head this node holds */
  headsHeld (id: number, held: Iterable<string>, now: number): SyncEffect[] { return this.resume(id, ['checkHeads'], new Set(held), now) }
  /** Each key asked with its digest now (undefined when not held) */
  digestsNow (id: number, digests: ReadonlyMap<string, string | undefined>, now: number): SyncEffect[] { return this.resume(id, ['readDigestsNow'], digests, now) }
  /** The whole records held of the keys asked (those not held, or with no heads, left out) */
  recordsRead (id: number, records: WholeRecord[], now: number): SyncEffect[] { return this.resume(id, ['readRecords'], records, now) }
  written (id: number, now: number): SyncEffect[] { return this.resume(id, ['write'], undefined, now) }

  /** The step `id` failed (the peer did not answer, or a read or write here failed): the peer's part of the round fails */
  failed (id: number, error: unknown, now: number): SyncEffect[] {
    if (!this.pending.answer(id)) return []
    this.now = now
    return this.advance({ error })
  }

  /** The time now: a push the budget held back goes once its time has come */
  tick (now: number): SyncEffect[] {
    this.now = Math.max(this.now, now)
    const held = this.held
    if (held === undefined) return []
    if (now < held.at) return [{ type: 'wake', ms: held.at - now }]
    this.held = undefined
    return [this.issue(held.op)]
  }

  /** The node stops: the round ends after the step under way, with what it did so far */
  stop (): void {
    this.stopped = true
  }

  private resume (id: number, kinds: Array<Step['type']>, value: unknown, now: number): SyncEffect[] {
    // A stale or repeated input (not the step pending) changes nothing.
    if (!this.pending.answer(id, kinds, 'SyncRound')) return []
    this.now = now
    return this.advance({ value })
  }

  /** Runs the body on to its next step (or its end) and hands out what it did */
  private advance (input: { value: unknown } | { error: unknown }): SyncEffect[] {
    const next = 'error' in input ? this.body.throw(input.error) : this.body.next(input.value)
    if (next.done === true) {
      this.over = true
      this.finish()
    } else if (next.value.type === 'push') {
      const op = next.value
      const wait = this.init.budget.take(JSON.stringify(op.msg).length, this.now)
      if (wait > 0) {
        this.held = { op, at: this.now + wait }
        this.out.push({ type: 'wake', ms: wait })
      } else {
        this.out.push(this.issue(op))
      }
    } else {
      this.out.push(this.issue(next.value))
    }
    const out = this.out
    this.out = []
    return out
  }

  private issue (op: Op): Step {
    return this.pending.issue(op)
  }

  private finish (): void {
    const s = this.stats
    s.seconds = Math.round(this.now - this.startedAt) / 1000
    if (s.recordsSent > 0 || s.failed > 0) {
      this.log('anti-entropy with %d peers: %d of %d ranges differed, %d records compared, %d sent, %d peers failed', this.init.peers.length, s.rangesDiffering, s.ranges, s.recordsCompared, s.recordsSent, s.failed)
    }
    this.out.push({ type: 'done', result: { ...s, failures: [...s.failures] } })
  }

  private log (msg: string, ...args: unknown[]): void {
    this.out.push({ type: 'log', msg, args })
  }

  private progress (done: number): void {
    if (done === this.done) return
    this.done = done
    this.out.push({ type: 'progress', done, total: this.total })
  }

  /** The timeout of an ask: the peer's reply waits on its own budget, so it gets time for a full page at the configured rate */
  private get askTimeout (): number {
    return this.init.timeoutMs + Math.ceil(FETCH_REPLY_BYTES * 8 / (this.init.bandwidthMbps * 1000))
  }

  private coOwned (peer: string, table: string, token: string): boolean {
    const owners = this.init.owners(table, token)
    return owners.includes(this.init.self) && owners.includes(peer)
  }

  // The round's body: each `yield` is a step the driver performs, resumed with its result.

  private * run (): Body<void> {
    const peers = this.init.peers.filter(p => p !== this.init.self)
    this.total = peers.length * BUCKETS
    this.out.push({ type: 'progress', done: 0, total: this.total })
    for (const peer of peers) {
      if (this.stopped) break
      const before = this.done
      try {
        yield * this.syncWith(peer)
        this.stats.peers++
      } catch (err) {
        const reason = (err as Error)?.message ?? String(err)
        this.stats.failed++
        this.stats.failures.push({ peer, reason })
        this.log('anti-entropy with %s failed: %s', peer, reason)
      }
      this.progress(before + BUCKETS)
    }
  }

  private * ask (peer: string, msg: SyncMessage): Body<unknown> {
    return yield { type: 'ask', peer, msg, timeoutMs: this.askTimeout }
  }

  /**
   * Brings this node and `peer` to the same state for every record both
   * own: the differing ranges narrowed to their differing leaves first,
   * then the records of those leaves compared a few hundred leaves at a
   * time (a round trip per page, not per range).
   */
  private * syncWith (peer: string): Body<void> {
    const remote = checkSummaryReply(yield * this.ask(peer, { type: 'summary' }))
    const local = (yield { type: 'readSummary' }) as string[]
    const differing = differingIndexes(local, remote)
    this.stats.ranges += BUCKETS
    this.stats.rangesDiffering += differing.length
    this.progress(this.done + BUCKETS - differing.length)
    const leaves: number[] = []
    for (let i = 0; i < differing.length && !this.stopped; i += MAX_SYNC_BUCKETS) {
      const buckets = differing.slice(i, i + MAX_SYNC_BUCKETS)
      const replies = checkLeavesReply(yield * this.ask(peer, { type: 'leaves', buckets }), buckets.length)
      const mine = (yield { type: 'readLeaves', buckets }) as string[][]
      leaves.push(...differingLeaves(buckets, replies, b => mine[buckets.indexOf(b)] ?? [], LEAVES_PER_BUCKET))
    }
    const base = this.done
    for (let i = 0; i < leaves.length && !this.stopped; i += MAX_SYNC_LEAVES) {
      const some = leaves.slice(i, i + MAX_SYNC_LEAVES)
      yield * this.syncLeaves(peer, some)
      // Progress in ranges: those whose differing leaves are all done.
      const last = bucketOfLeaf(some[some.length - 1] as number)
      this.progress(base + differing.filter(b => b <= last).length)
    }
  }

  /** Records of some leaves that both this node and `peer` own, with this node's digests of them */
  private * localDigests (peer: string, leaves: number[]): Body<Map<string, string>> {
    const out = new Map<string, string>()
    // A run of consecutive leaves is one key range: one read, not one a leaf.
    for (const [leaf, through] of leafRuns(leaves)) {
      let after: string | undefined
      for (let page = 0; ; page++) {
        if (page >= MAX_PAGES_PER_LEAF) throw new Error(`leaves ${leaf}..${through} have more records than a round reads`)
        const records = (yield { type: 'readDigests', leaf, through, limit: MAX_SYNC_DIGESTS, ...(after === undefined ? {} : { after }) }) as LocalDigest[]
        for (const r of records) {
          if (this.coOwned(peer, r.table, r.token)) out.set(r.key, r.digest.slice(0, SYNC_DIGEST_HEX))
        }
        if (records.length < MAX_SYNC_DIGESTS) break
        after = records[records.length - 1]?.key
      }
    }
    return out
  }

  /** The peer's digests (and heads, when it sends them) of the records of some leaves that this node owns too */
  private * remoteDigests (peer: string, leaves: number[]): Body<Map<string, PeerDigest>> {
    const out = new Map<string, PeerDigest>()
    let after: string | undefined
    for (let page = 0; page < MAX_PAGES_PER_LEAF; page++) {
      const reply = checkDigestPage(yield * this.ask(peer, { type: 'digests', leaves, limit: MAX_SYNC_DIGESTS, ...(after === undefined ? {} : { after }) }), leaves, after)
      for (const [key, digest, heads] of reply.records) {
        const { table, token } = checkRecordKey(key)
        // Only what this node owns too: the peer's view of the ring may differ from ours for a while.
        if (this.coOwned(peer, table, token)) out.set(key, heads === undefined ? { digest } : { digest, heads })
      }
      if (reply.next === undefined) return out
      after = reply.next
    }
    throw new Error(`leaves ${leaves[0] ?? ''}.. of ${peer} have more records than a round reads`)
  }

  /**
   * Compares the records of some differing leaves and moves those that
   * differ: first pulls what the peer holds differently and merges it, then
   * pushes only the records whose digest still differs from the peer's.
   */
  private * syncLeaves (peer: string, leaves: number[]): Body<void> {
    const mine = yield * this.localDigests(peer, leaves)
    const theirs = yield * this.remoteDigests(peer, leaves)
    // Whether this node holds every head of the peer's copy matters only for a record both hold differently.
    const ask = [...theirs].filter(([k, t]) => mine.has(k) && mine.get(k) !== t.digest && t.heads !== undefined)
    const held = ask.length === 0
      ? new Set<string>()
      : (yield { type: 'checkHeads', records: ask.map(([key, t]) => ({ key, heads: t.heads as string[] })) }) as Set<string>
    const pull = recordsToPull(mine, theirs, k => held.has(k))
    this.stats.recordsCompared += new Set([...mine.keys(), ...theirs.keys()]).size
    const pulled = pull.length > 0 ? yield * this.pull(peer, pull) : new Set<string>()
    // Merged from the peer just now: what this node holds now is what counts.
    const differ = [...mine].filter(([k, d]) => theirs.has(k) && theirs.get(k)?.digest !== d).map(([k]) => k)
    const now = differ.length === 0
      ? new Map<string, string | undefined>()
      : (yield { type: 'readDigestsNow', keys: differ }) as ReadonlyMap<string, string | undefined>
    const push = recordsToPush(mine, theirs, k => now.get(k)?.slice(0, SYNC_DIGEST_HEX))
    const pushed = push.length > 0 ? yield * this.push(peer, push) : new Set<string>()
    this.stats.recordsSent += new Set([...pulled, ...pushed]).size
  }

  /** Fetches records from the peer and has them taken whole; returns the keys received */
  private * pull (peer: string, keys: string[]): Body<Set<string>> {
    const received = new Set<string>()
    let remaining = keys
    // Each reply settles at least one key (or the peer fails), so this runs at most keys.length times.
    for (let turn = 0; remaining.length > 0 && turn < keys.length && !this.stopped; turn++) {
      const asked = remaining.slice(0, MAX_SYNC_FETCH)
      const reply = checkFetchReply(yield * this.ask(peer, { type: 'fetch', keys: asked }), asked)
      if (reply.records.length === 0 && reply.missing.length === 0) throw new Error(`${peer} answered a fetch with nothing`)
      if (reply.records.length > 0) yield { type: 'write', records: reply.records }
      const got = reply.records.map(r => `${r.state.token}!${r.state.table}!${r.state.id}`)
      for (const k of got) received.add(k)
      const settled = new Set([...reply.missing, ...got])
      remaining = remaining.filter(k => !settled.has(k))
    }
    return received
  }

  /** Whole records (history and state) in one `records` message per part; returns the keys sent */
  private * push (peer: string, keys: string[]): Body<Set<string>> {
    const sent = new Set<string>()
    for (let i = 0; i < keys.length && !this.stopped; i += PUSH_BATCH) {
      const items = (yield { type: 'readRecords', keys: keys.slice(i, i + PUSH_BATCH) }) as WholeRecord[]
      for (const part of chunkWhole(items)) {
        const reply = yield { type: 'push', peer, msg: { type: 'records', records: part }, timeoutMs: this.init.timeoutMs * 2 }
        const failed = part.filter((_, j) => !resultOk(reply, j)).length
        if (failed > 0) throw new Error(`${peer} did not take ${failed} of ${part.length} records`)
        for (const r of part) sent.add(`${r.state.token}!${r.state.table}!${r.state.id}`)
      }
    }
    return sent
  }
}

/** Ascending leaves as runs of consecutive ones, `[first, last]` */
export function leafRuns (leaves: number[]): Array<[number, number]> {
  const runs: Array<[number, number]> = []
  for (const leaf of leaves) {
    const run = runs[runs.length - 1]
    if (run !== undefined && leaf === run[1] + 1) run[1] = leaf
    else runs.push([leaf, leaf])
  }
  return runs
}

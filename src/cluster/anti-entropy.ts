import { ForbiddenError } from '../errors/index.js'
import type { Store, WholeRecord } from '../storage/store.js'
import { checkRecordKey } from './messages.js'
import { SendBudget } from './core/budget.js'
import { leafRuns, SyncRound, type SyncEffect, type SyncRoundResult } from './core/sync-round.js'
import { SyncAnswer } from './core/sync-serve.js'
import { ByteThrottle } from './throttle.js'
import type { PeerTransport } from './transport.js'
import { REAL_ENV, sleep, type Environment, type TimerHandle } from '../util/env.js'

// Kept here too: hand-off's tests import it from this module.
export { leafRuns }

export interface AntiEntropyComponents {
  store: Store
  transport: PeerTransport
  peerId: string
  /** The members to compare with now: live ring members other than this node */
  peers: () => string[]
  /** A record's owners, in preference order */
  owners: (table: string, token: string) => string[]
  /** Whether a peer may use the sync protocol at all (a current member); reports a refusal itself */
  mayServe: (peerId: string) => boolean
  /** Whether a peer may read through sync (a member that left may not) */
  mayRead?: (peerId: string) => boolean
  /** Whether this node runs rounds now (not while it hands everything off to leave) */
  active?: () => boolean
  /** Sees every version that arrives (the node's hybrid clock) */
  observe?: (version: string) => void
  log?: (msg: string, ...args: unknown[]) => void
  /** The clock and timers (rounds, the byte throttle). @default REAL_ENV */
  env?: Environment
}

export interface AntiEntropyInit {
  /** How often a background round runs, ms. @default 600000 */
  intervalMs?: number
  /** Bytes this node sends for anti-entropy (replies and records), in megabits per second. @default 10 */
  bandwidthMbps?: number
  /** Wait for one peer's answer, ms (a throttled reply gets this much more). @default 5000 */
  timeoutMs?: number
}

/** What one round compared and sent */
export interface RepairResult {
  /** Token ranges compared, summed over the peers compared with */
  ranges: number
  /** Records whose digests were compared in ranges that differed */
  recordsCompared: number
  /** Records whose whole state went from one owner to the other (either way) */
  recordsSent: number
  seconds: number
}

export interface AntiEntropyStatus {
  running: boolean
  intervalMs: number
  bandwidthMbps: number
  /** When the last round finished, ms since the epoch; null before the first */
  lastRoundAt: number | null
  ranges: number
  /** Of those, ranges whose summaries differed */
  rangesDiffering: number
  recordsCompared: number
  recordsSent: number
  seconds: number
  /** Peers compared with in the last round, and those that could not be */
  peers: number
  failed: number
  /** While a round runs: ranges done of those to compare */
  progress?: { done: number, total: number }
}

export const DEFAULT_ANTI_ENTROPY_INTERVAL_MS = 600_000
export const DEFAULT_SYNC_BANDWIDTH_MBPS = 10
type Round = Omit<AntiEntropyStatus, 'running' | 'intervalMs' | 'bandwidthMbps' | 'lastRoundAt' | 'progress'>

/**
 * Anti-entropy: every owner of a record ends up with the same state of it,
 * whatever hints were lost. Each store keeps a hash summary of its records by
 * token range (RangeSummary), up to date with every commit. A round compares
 * this node's summary with each live member's, narrows each differing range
 * to its differing leaves, lists the records of those leaves that both nodes
 * own (key and head digest), and moves only the records whose digests differ:
 * whole states with every version, pushed with the replica protocol's `apply`
 * and `merge`, pulled with `fetch`. Merging never loses a head, so a record
 * both sides changed ends as a visible conflict, as a read repair would.
 * Everything sent (replies and records) draws on one bandwidth budget.
 *
 * The round's decisions are a SyncRound (core/sync-round.ts), which does no
 * I/O; this class is its driver: it performs the round's requests, store
 * reads and writes and budget waits and feeds back what came of them, runs
 * a round every `intervalMs`, and serves the sync protocol to its peers.
 */
export class AntiEntropy {
  private readonly c: AntiEntropyComponents
  private readonly intervalMs: number
  private readonly bandwidthMbps: number
  private readonly timeoutMs: number
  private readonly budget: SendBudget
  private readonly throttle: ByteThrottle
  /** The round under way */
  private machine?: SyncRound
  private readonly env: Environment
  private timer?: TimerHandle
  private current?: Promise<RepairResult>
  private progress?: { done: number, total: number }
  private last?: Round & { finishedAt: number }
  private stopped = false

  constructor (components: AntiEntropyComponents, init: AntiEntropyInit = {}) {
    this.c = components
    this.intervalMs = init.intervalMs ?? DEFAULT_ANTI_ENTROPY_INTERVAL_MS
    this.bandwidthMbps = init.bandwidthMbps ?? DEFAULT_SYNC_BANDWIDTH_MBPS
    this.timeoutMs = init.timeoutMs ?? 5000
    const env = components.env ?? REAL_ENV
    this.env = env
    // One budget for what this node sends: its rounds' pushes and its replies to others' rounds.
    this.budget = new SendBudget(this.bandwidthMbps * 1_000_000 / 8, env.now())
    this.throttle = new ByteThrottle({ bytesPerSecond: this.bandwidthMbps * 1_000_000 / 8, now: env.now, sleep: async ms => { await sleep(env, ms) }, budget: this.budget })
    components.transport.handle('sync', async (msg, from) => await this.onMessage(msg, from), { accept: peer => components.mayServe(peer) })
  }

  start (): void {
    this.stopped = false
    this.timer = this.env.setInterval(() => {
      if (this.current !== undefined || this.c.active?.() === false) return
      void this.repair().catch(err => { this.c.log?.('anti-entropy round failed: %s', (err as Error).message) })
    }, this.intervalMs)
    this.timer.unref?.()
  }

  async stop (): Promise<void> {
    this.stopped = true
    this.machine?.stop()
    if (this.timer !== undefined) this.env.clearInterval(this.timer)
    await this.current?.catch(() => {})
  }

  /** Runs one round now (after the one under way, if any) and says what it did */
  async repair (): Promise<RepairResult> {
    const before = this.current
    const round = (async () => {
      await before?.catch(() => {})
      return await this.round()
    })()
    this.current = round
    try {
      return await round
    } finally {
      if (this.current === round) this.current = undefined
    }
  }

  status (): AntiEntropyStatus {
    const last = this.last
    return {
      running: this.current !== undefined,
      intervalMs: this.intervalMs,
      bandwidthMbps: this.bandwidthMbps,
      lastRoundAt: last?.finishedAt ?? null,
      ranges: last?.ranges ?? 0,
      rangesDiffering: last?.rangesDiffering ?? 0,
      recordsCompared: last?.recordsCompared ?? 0,
      recordsSent: last?.recordsSent ?? 0,
      seconds: last?.seconds ?? 0,
      peers: last?.peers ?? 0,
      failed: last?.failed ?? 0,
      ...(this.progress === undefined ? {} : { progress: { ...this.progress } })
    }
  }

  /** Runs one round: feeds a SyncRound (core/sync-round.ts) and performs what it asks for, one step at a time */
  private async round (): Promise<RepairResult> {
    const round = new SyncRound({
      self: this.c.peerId,
      peers: this.c.peers().filter(p => p !== this.c.peerId),
      owners: this.c.owners,
      budget: this.budget,
      timeoutMs: this.timeoutMs,
      bandwidthMbps: this.bandwidthMbps
    })
    this.machine = round
    if (this.stopped) round.stop()
    let effects = round.start(this.env.now())
    try {
      for (;;) {
        const next: SyncEffect[] = []
        for (const e of effects) {
          if (e.type === 'done') return this.finished(e.result)
          next.push(...await this.perform(round, e))
        }
        // The round always waits on one step or is over: nothing to do and not done is a bug in it.
        if (next.length === 0) throw new Error('anti-entropy round stalled')
        effects = next
      }
    } finally {
      this.machine = undefined
      this.progress = undefined
    }
  }

  private finished (result: SyncRoundResult): RepairResult {
    const { failures: _failures, ...round } = result
    this.last = { ...round, finishedAt: this.env.now() }
    return { ranges: result.ranges, recordsCompared: result.recordsCompared, recordsSent: result.recordsSent, seconds: result.seconds }
  }

  /** Performs one effect of the round; returns what the round wants next */
  private async perform (round: SyncRound, e: Exclude<SyncEffect, { type: 'done' }>): Promise<SyncEffect[]> {
    const { store, transport } = this.c
    switch (e.type) {
      case 'progress':
        this.progress = { done: e.done, total: e.total }
        return []
      case 'log':
        this.c.log?.(e.msg, ...e.args)
        return []
      case 'wake': {
        // Node measures timers on its loop's cached clock, which can lag the wall clock: a timer that
        // fires a little early by Date.now has still waited what was asked, and is on time.
        const due = this.env.now() + e.ms
        await sleep(this.env, e.ms)
        return round.tick(Math.max(this.env.now(), due))
      }
      case 'ask':
        return await this.settle(round, e.id, async () => await transport.request(e.peer, 'sync', e.msg, { timeout: e.timeoutMs }), r => round.answered(e.id, r, this.env.now()))
      case 'push':
        return await this.settle(round, e.id, async () => await transport.request(e.peer, 'replica', e.msg, { timeout: e.timeoutMs }), r => round.answered(e.id, r, this.env.now()))
      case 'readSummary':
        return await this.settle(round, e.id, () => store.summary.bucketDigests(), d => round.summaryRead(e.id, d, this.env.now()))
      case 'readLeaves':
        return await this.settle(round, e.id, () => e.buckets.map(b => store.summary.leafDigests(b)), l => round.leavesRead(e.id, l, this.env.now()))
      case 'readDigests':
        return await this.settle(round, e.id, async () => await store.recordDigests(e.leaf, { through: e.through, limit: e.limit, ...(e.after === undefined ? {} : { after: e.after }) }), r => round.digestsRead(e.id, r, this.env.now()))
      case 'checkHeads':
        return await this.settle(round, e.id, () => e.records.filter(r => store.holdsHeads(r.key, r.heads)).map(r => r.key), held => round.headsHeld(e.id, held, this.env.now()))
      case 'readDigestsNow':
        return await this.settle(round, e.id, () => new Map(e.keys.map(k => [k, store.digestOf(k)])), d => round.digestsNow(e.id, d, this.env.now()))
      case 'readRecords':
        return await this.settle(round, e.id, async () => (await Promise.all(e.keys.map(async key => await this.wholeRecord(key)))).filter((r): r is WholeRecord => r !== undefined), r => round.recordsRead(e.id, r, this.env.now()))
      case 'write':
        return await this.settle(round, e.id, async () => {
          for (const r of e.records) {
            for (const h of r.state.heads) this.c.observe?.(h.version)
            for (const v of r.versions) this.c.observe?.(v.version)
          }
          await store.receive(e.records)
        }, () => round.written(e.id, this.env.now()))
    }
  }

  /** Runs a step's I/O and feeds its result to the round, or its error: a failure is the round's input, not the driver's */
  private async settle<T> (round: SyncRound, id: number, step: () => T | Promise<T>, feed: (value: T) => SyncEffect[]): Promise<SyncEffect[]> {
    let value: T
    try {
      value = await step()
    } catch (err) {
      return round.failed(id, err, this.env.now())
    }
    return feed(value)
  }

  /** A record's state and its history (the heads travel in the state only) */
  private async wholeRecord (key: string): Promise<WholeRecord | undefined> {
    const { table, token, id } = checkRecordKey(key)
    const state = await this.c.store.get(table, token, id)
    if (state === undefined || state.heads.length === 0) return undefined
    return { state, versions: await this.c.store.historyOf(state) }
  }

  /** Serves the sync protocol: to members only; a member that left reads nothing more. The answer is a SyncAnswer's (core/sync-serve.ts) */
  private async onMessage (raw: unknown, from: string): Promise<unknown> {
    if (!this.c.mayServe(from)) throw new ForbiddenError(`${from} is not a member of this network`)
    if (this.c.mayRead?.(from) === false) throw new ForbiddenError(`${from} has left the network`)
    const answer = new SyncAnswer({ self: this.c.peerId, from, owners: this.c.owners })
    const { store } = this.c
    for (let effects = answer.start(raw); ;) {
      const e = effects[0]
      if (e === undefined) throw new Error('sync answer stalled')
      switch (e.type) {
        case 'reply':
          await this.throttle.take(JSON.stringify(e.reply).length)
          return e.reply
        case 'refuse':
          throw e.error
        case 'readSummary':
          effects = answer.summaryRead(e.id, store.summary.bucketDigests())
          break
        case 'readLeaves':
          effects = answer.leavesRead(e.id, e.buckets.map(b => store.summary.leafDigests(b)))
          break
        case 'readDigests':
          try {
            effects = answer.digestsRead(e.id, await store.recordDigests(e.leaf, { through: e.through, limit: e.limit, ...(e.after === undefined ? {} : { after: e.after }) }))
          } catch (err) {
            effects = answer.failed(e.id, err)
          }
          break
        case 'readRecord':
          try {
            effects = answer.recordRead(e.id, await this.wholeRecord(e.key))
          } catch (err) {
            effects = answer.failed(e.id, err)
          }
          break
      }
    }
  }
}

import { ForbiddenError } from '../errors/index.js'
import type { Store, WholeRecord } from '../storage/store.js'
import { BUCKETS, bucketOfLeaf, LEAVES_PER_BUCKET, leafPrefix } from '../storage/range-summary.js'
import { chunkWhole, MAX_ENTRIES_PER_MESSAGE, resultOk } from './apply-batcher.js'
import {
  checkDigestPage, checkFetchReply, checkLeavesReply, checkRecordKey, checkSummaryReply,
  MAX_PARENTS, MAX_SYNC_BUCKETS, MAX_SYNC_DIGESTS, MAX_SYNC_FETCH, MAX_SYNC_LEAVES, parseSyncMessage, SYNC_DIGEST_HEX, type SyncMessage
} from './messages.js'
import { differingIndexes } from './decisions.js'
import { differingLeaves, recordsToPull, recordsToPush } from './core/sync.js'
import { ByteThrottle } from './throttle.js'
import type { PeerTransport } from './transport.js'
import { REAL_ENV, sleep, type Environment, type TimerHandle } from '../util/env.js'

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
/** Records read for one push; they go in as few `records` messages as fit (see chunkWhole) */
const PUSH_BATCH = 512
/** Pages of one leaf (or one range's leaves) a round reads before it gives up on them (a leaf is 1/65536 of the records) */
const MAX_PAGES_PER_LEAF = 10_000
/** Bytes of records one fetch reply carries, under the transport's frame limit */
const FETCH_REPLY_BYTES = 2 * 1024 * 1024

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
 * Everything sent (replies and records) passes one byte throttle.
 */
export class AntiEntropy {
  private readonly c: AntiEntropyComponents
  private readonly intervalMs: number
  private readonly bandwidthMbps: number
  private readonly timeoutMs: number
  private readonly throttle: ByteThrottle
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
    this.throttle = new ByteThrottle({ bytesPerSecond: this.bandwidthMbps * 1_000_000 / 8, now: env.now, sleep: async ms => { await sleep(env, ms) } })
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

  private async round (): Promise<RepairResult> {
    const started = this.env.now()
    const peers = this.c.peers().filter(p => p !== this.c.peerId)
    const stats: Round = { ranges: 0, rangesDiffering: 0, recordsCompared: 0, recordsSent: 0, seconds: 0, peers: 0, failed: 0 }
    this.progress = { done: 0, total: peers.length * BUCKETS }
    try {
      for (const peer of peers) {
        if (this.stopped) break
        const doneBefore = this.progress.done
        try {
          await this.syncWith(peer, stats)
          stats.peers++
        } catch (err) {
          stats.failed++
          this.c.log?.('anti-entropy with %s failed: %s', peer, (err as Error).message)
        }
        this.progress.done = doneBefore + BUCKETS
      }
    } finally {
      this.progress = undefined
    }
    stats.seconds = Math.round(this.env.now() - started) / 1000
    this.last = { ...stats, finishedAt: this.env.now() }
    if (stats.recordsSent > 0 || stats.failed > 0) {
      this.c.log?.('anti-entropy with %d peers: %d of %d ranges differed, %d records compared, %d sent, %d peers failed', peers.length, stats.rangesDiffering, stats.ranges, stats.recordsCompared, stats.recordsSent, stats.failed)
    }
    return { ranges: stats.ranges, recordsCompared: stats.recordsCompared, recordsSent: stats.recordsSent, seconds: stats.seconds }
  }

  private async ask (peer: string, msg: SyncMessage): Promise<unknown> {
    // The peer's reply waits on its own throttle: give it time for a full page at the configured rate.
    const timeout = this.timeoutMs + Math.ceil(FETCH_REPLY_BYTES * 8 / (this.bandwidthMbps * 1000))
    return await this.c.transport.request(peer, 'sync', msg, { timeout })
  }

  /**
   * Brings this node and `peer` to the same state for every record both own.
   * The differing ranges are narrowed to their differing leaves first, then
   * the records of those leaves compared a few hundred leaves at a time (a
   * round trip per page, not per range).
   */
  private async syncWith (peer: string, stats: Round): Promise<void> {
    const remote = checkSummaryReply(await this.ask(peer, { type: 'summary' }))
    const local = this.c.store.summary.bucketDigests()
    const differing = differingIndexes(local, remote)
    stats.ranges += BUCKETS
    stats.rangesDiffering += differing.length
    const progress = this.progress as { done: number }
    progress.done += BUCKETS - differing.length
    const leaves: number[] = []
    for (let i = 0; i < differing.length && !this.stopped; i += MAX_SYNC_BUCKETS) {
      const buckets = differing.slice(i, i + MAX_SYNC_BUCKETS)
      const replies = checkLeavesReply(await this.ask(peer, { type: 'leaves', buckets }), buckets.length)
      leaves.push(...differingLeaves(buckets, replies, b => this.c.store.summary.leafDigests(b), LEAVES_PER_BUCKET))
    }
    const base = progress.done
    for (let i = 0; i < leaves.length && !this.stopped; i += MAX_SYNC_LEAVES) {
      const some = leaves.slice(i, i + MAX_SYNC_LEAVES)
      await this.syncLeaves(peer, some, stats)
      // Progress in ranges: those whose differing leaves are all done.
      const last = bucketOfLeaf(some[some.length - 1] as number)
      progress.done = base + differing.filter(b => b <= last).length
    }
  }

  /** Records of some leaves that both this node and `peer` own, with this node's digests of them */
  private async localDigests (peer: string, leaves: number[]): Promise<Map<string, string>> {
    const out = new Map<string, string>()
    // A run of consecutive leaves is one key range: one LevelDB iterator, not one a leaf.
    for (const [leaf, through] of leafRuns(leaves)) {
      let after: string | undefined
      for (let page = 0; ; page++) {
        if (page >= MAX_PAGES_PER_LEAF) throw new Error(`leaves ${leaf}..${through} have more records than a round reads`)
        const records = await this.c.store.recordDigests(leaf, { through, limit: MAX_SYNC_DIGESTS, ...(after === undefined ? {} : { after }) })
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
  private async remoteDigests (peer: string, leaves: number[]): Promise<Map<string, { digest: string, heads?: string[] }>> {
    const out = new Map<string, { digest: string, heads?: string[] }>()
    let after: string | undefined
    for (let page = 0; page < MAX_PAGES_PER_LEAF; page++) {
      const reply = checkDigestPage(await this.ask(peer, { type: 'digests', leaves, limit: MAX_SYNC_DIGESTS, ...(after === undefined ? {} : { after }) }), leaves, after)
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

  private coOwned (peer: string, table: string, token: string): boolean {
    const owners = this.c.owners(table, token)
    return owners.includes(this.c.peerId) && owners.includes(peer)
  }

  /**
   * Compares the records of some differing leaves and moves those that
   * differ: first pulls what the peer holds differently and merges it, then
   * pushes only the records whose digest still differs from the peer's (this
   * node had something the peer lacks). A record that was merely stale here
   * travels once, not both ways.
   */
  private async syncLeaves (peer: string, leaves: number[], stats: Round): Promise<void> {
    const mine = await this.localDigests(peer, leaves)
    const theirs = await this.remoteDigests(peer, leaves)
    // Pulled: what differs, unless every head of the peer's copy is known here (this copy is then the newer).
    const pull = recordsToPull(mine, theirs, (k, heads) => this.c.store.holdsHeads(k, heads))
    stats.recordsCompared += new Set([...mine.keys(), ...theirs.keys()]).size
    const pulled = pull.length > 0 ? await this.pull(peer, pull) : new Set<string>()
    // Merged from the peer just now: what this node holds now is what counts.
    const push = recordsToPush(mine, theirs, k => this.c.store.digestOf(k)?.slice(0, SYNC_DIGEST_HEX))
    const pushed = push.length > 0 ? await this.push(peer, push) : new Set<string>()
    stats.recordsSent += new Set([...pulled, ...pushed]).size
  }

  /** Whole records (history and state) in one `records` message per batch; returns the keys sent */
  private async push (peer: string, keys: string[]): Promise<Set<string>> {
    const sent = new Set<string>()
    for (let i = 0; i < keys.length && !this.stopped; i += PUSH_BATCH) {
      const items = (await Promise.all(keys.slice(i, i + PUSH_BATCH).map(async key => await this.wholeRecord(key))))
        .filter((r): r is WholeRecord => r !== undefined)
      for (const part of chunkWhole(items)) {
        const msg = { type: 'records', records: part }
        await this.throttle.take(JSON.stringify(msg).length)
        const reply = await this.c.transport.request(peer, 'replica', msg, { timeout: this.timeoutMs * 2 })
        const failed = part.filter((_, j) => !resultOk(reply, j)).length
        if (failed > 0) throw new Error(`${peer} did not take ${failed} of ${part.length} records`)
        for (const r of part) sent.add(`${r.state.token}!${r.state.table}!${r.state.id}`)
      }
    }
    return sent
  }

  /** Fetches records from the peer and takes them whole; returns the keys received */
  private async pull (peer: string, keys: string[]): Promise<Set<string>> {
    const received = new Set<string>()
    let remaining = keys
    // Each reply settles at least one key (or the loop ends), so this runs at most keys.length times.
    for (let turn = 0; remaining.length > 0 && turn < keys.length && !this.stopped; turn++) {
      const asked = remaining.slice(0, MAX_SYNC_FETCH)
      const reply = checkFetchReply(await this.ask(peer, { type: 'fetch', keys: asked }), asked)
      if (reply.records.length === 0 && reply.missing.length === 0) throw new Error(`${peer} answered a fetch with nothing`)
      for (const r of reply.records) {
        for (const h of r.state.heads) this.c.observe?.(h.version)
        for (const e of r.versions) this.c.observe?.(e.version)
      }
      if (reply.records.length > 0) await this.c.store.receive(reply.records)
      const got = reply.records.map(r => `${r.state.token}!${r.state.table}!${r.state.id}`)
      for (const k of got) received.add(k)
      const settled = new Set([...reply.missing, ...got])
      remaining = remaining.filter(k => !settled.has(k))
    }
    return received
  }

  /** A record's state and its history (the heads travel in the state only) */
  /** A record's state and its history (the heads travel in the state only) */
  private async wholeRecord (key: string): Promise<WholeRecord | undefined> {
    const { table, token, id } = checkRecordKey(key)
    const state = await this.c.store.get(table, token, id)
    if (state === undefined || state.heads.length === 0) return undefined
    return { state, versions: await this.c.store.historyOf(state) }
  }

  /** Serves the sync protocol: to members only; a member that left reads nothing more */
  private async onMessage (raw: unknown, from: string): Promise<unknown> {
    if (!this.c.mayServe(from)) throw new ForbiddenError(`${from} is not a member of this network`)
    if (this.c.mayRead?.(from) === false) throw new ForbiddenError(`${from} has left the network`)
    const msg = parseSyncMessage(raw)
    const reply = await this.answer(msg, from)
    await this.throttle.take(JSON.stringify(reply).length)
    return reply
  }

  private async answer (msg: SyncMessage, from: string): Promise<unknown> {
    switch (msg.type) {
      case 'summary':
        return { buckets: this.c.store.summary.bucketDigests() }
      case 'leaves':
        return { leaves: msg.buckets.map(b => this.c.store.summary.leafDigests(b)) }
      case 'digests': {
        // Pages count the records scanned, shared or not, so a page's work stays bounded.
        const scanned: Array<{ key: string, token: string, table: string, digest: string, heads: string[] }> = []
        for (const [leaf, through] of leafRuns(msg.leaves)) {
          const left = msg.limit - scanned.length
          if (left <= 0) break
          if (msg.after !== undefined && leafPrefix(through) < msg.after.slice(0, 4)) continue
          scanned.push(...await this.c.store.recordDigests(leaf, { through, limit: left, ...(msg.after === undefined ? {} : { after: msg.after }) }))
        }
        const last = scanned[scanned.length - 1]
        return {
          // The heads let the asker tell a copy of its own that is merely newer (it pushes) from one it must pull.
          records: scanned.filter(r => this.coOwned(from, r.table, r.token)).map(r => r.heads.length > MAX_PARENTS ? [r.key, r.digest.slice(0, SYNC_DIGEST_HEX)] : [r.key, r.digest.slice(0, SYNC_DIGEST_HEX), r.heads]),
          ...(scanned.length === msg.limit && last !== undefined ? { next: last.key } : {})
        }
      }
      case 'fetch': {
        const records: WholeRecord[] = []
        const missing: string[] = []
        let bytes = 0
        let versions = 0
        for (const key of msg.keys) {
          const { table, token } = checkRecordKey(key)
          // Only records the asker owns: it has no business with the others.
          const record = this.coOwned(from, table, token) ? await this.wholeRecord(key) : undefined
          if (record === undefined) { missing.push(key); continue }
          const size = JSON.stringify(record).length
          if (records.length > 0 && (bytes + size > FETCH_REPLY_BYTES || versions + record.versions.length + record.state.heads.length > MAX_ENTRIES_PER_MESSAGE)) break
          records.push(record)
          bytes += size
          versions += record.versions.length + record.state.heads.length
        }
        return { records, missing }
      }
    }
  }
}
